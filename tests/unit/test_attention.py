"""guidance_core's forward-AD attention router: the chunked-MATH path is exact, the routing rules hold.

The fused flash JVP kernel needs CUDA; its agreement with MATH-attention JVPs is checked on the GPU by
`benchmarks/jvp_profile.py` (errors in benchmarks/results/jvp_profile.json). Here: the CPU path, the shape
rules that pick the kernel, and the zero-padding of head dims it relies on.
"""
import pytest
import torch
import torch.nn.functional as F

import guidance_core as core
from guidance_core.forward_ad import attention


def _qkv(shape_q, keys=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = shape_q[-2] if keys is None else keys
    shape_k = (*shape_q[:-2], keys, shape_q[-1])
    return (torch.randn(shape_q, generator=g, dtype=dtype), torch.randn(shape_k, generator=g, dtype=dtype),
            torch.randn(shape_k, generator=g, dtype=dtype))


def _explicit(q, k, v, mask=None, scale=None):
    w = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        w = w + mask
    return w.softmax(-1) @ v


@pytest.mark.parametrize("with_mask", [False, True])
def test_chunked_math_jvp_equals_autograd_in_float64(with_mask):
    """Forced into many query chunks, the routed SDPA's JVP equals the autograd directional derivative."""
    q, k, v = _qkv((2, 3, 50, 8), keys=37)
    mask = torch.randn(2, 1, 50, 37, dtype=torch.float64) if with_mask else None
    tq, tk, tv = _qkv((2, 3, 50, 8), keys=37, seed=1)
    weights = torch.randn(2, 3, 50, 8, dtype=torch.float64)
    budget = 7 * 6 * 37 * 8 * 4  # 7 query rows per chunk: 8 chunks, the last one short

    def f(q, k, v):
        return (attention.chunked_math_sdpa(q, k, v, mask, scale=0.3, max_score_bytes=budget) * weights).sum()

    value, derivative = torch.func.jvp(f, (q, k, v), (tq, tk, tv))
    reference_value = (_explicit(q, k, v, mask, 0.3) * weights).sum()
    grads = torch.autograd.grad(
        (_explicit(*(t.requires_grad_() for t in (q, k, v)), mask, 0.3) * weights).sum(), (q, k, v))
    reference = sum((g * t).sum() for g, t in zip(grads, (tq, tk, tv)))
    assert torch.allclose(value, reference_value, rtol=1e-12)
    assert torch.allclose(derivative, reference, rtol=1e-10)
    assert abs(float(reference)) > 1e-3


def _lean_jvp_checked_against_autograd(with_tangent: str, mask):
    """The routed MATH SDPA's value and JVP (tangents on the inputs named in `with_tangent`, forced into query
    chunks) against autograd in float64; returns (aten ops of its JVP, of the builtin MATH rule's JVP)."""
    from torch.profiler import ProfilerActivity, profile
    q, k, v = _qkv((2, 3, 50, 8), keys=37)
    tangents = dict(zip("qkv", _qkv((2, 3, 50, 8), keys=37, seed=1)))
    weights = torch.randn(2, 3, 50, 8, dtype=torch.float64)
    inputs, names = {"q": q, "k": k, "v": v}, list(with_tangent)

    def f(*duals, budget=7 * 6 * 37 * 8 * 4):
        args = dict(inputs, **dict(zip(names, duals)))
        return (attention.chunked_math_sdpa(args["q"], args["k"], args["v"], mask, scale=0.3,
                                            max_score_bytes=budget) * weights).sum()

    value, derivative = torch.func.jvp(f, tuple(inputs[n] for n in names), tuple(tangents[n] for n in names))
    leaves = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    grads = torch.autograd.grad((_explicit(leaves["q"], leaves["k"], leaves["v"], mask, 0.3) * weights).sum(),
                                [leaves[n] for n in names])
    reference = sum((g * tangents[n]).sum() for g, n in zip(grads, names))
    assert torch.allclose(value, (_explicit(q, k, v, mask, 0.3) * weights).sum(), rtol=1e-12)
    assert torch.allclose(derivative, reference, rtol=1e-10) and abs(float(reference)) > 1e-3

    def ops(attend):
        primals, tans = tuple(inputs[n] for n in names), tuple(tangents[n] for n in names)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.func.jvp(lambda *d: attend(**dict(inputs, **dict(zip(names, d)))), primals, tans)
        return sum(1 for e in prof.events() if e.name.startswith("aten::"))
    lean = ops(lambda q, k, v: attention.chunked_math_sdpa(q, k, v, mask, scale=0.3))
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        builtin = ops(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, scale=0.3))
    return lean, builtin


@pytest.mark.parametrize("with_tangent", ["qkv", "q", "k", "v", "kv"])
def test_lean_math_attention_equals_autograd_and_dispatches_fewer_ops(with_tangent):
    """Without a mask the MATH route writes the attention JVP out (lean_math_attention): equal to autograd in
    float64 whichever inputs carry tangents (cross-attention: only the query), over query chunks, in at least a
    quarter fewer aten ops than the builtin MATH rule (130 against 183 with three tangents: its safe softmax's
    masks and scalar tensors are gone; the compute kernels drop from about 25 to 8 plus the products)."""
    lean, builtin = _lean_jvp_checked_against_autograd(with_tangent, None)
    assert lean * 4 <= builtin * 3, (lean, builtin)


@pytest.mark.parametrize("mask_shape", [(2, 3, 50, 37), (3, 50, 37), (1, 37), (2, 1, 50, 1)])
@pytest.mark.parametrize("with_tangent", ["qkv", "q", "kv"])
def test_lean_math_attention_with_an_additive_mask_equals_autograd(mask_shape, with_tangent):
    """A constant additive float mask (DOVER's window biases, shifted-window masks) keeps the written-out rule,
    broadcast as SDPA broadcasts it, over query chunks: value and tangent equal autograd in float64, and fewer aten
    ops than the builtin MATH rule."""
    mask = torch.randn(mask_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lean, builtin = _lean_jvp_checked_against_autograd(with_tangent, mask)
    assert lean < builtin, (lean, builtin)


def test_lean_math_attention_gives_a_fully_masked_row_zeros_as_the_builtin_does():
    """A query row whose mask is -inf everywhere: value and tangent 0, as the builtin MATH rule's safe softmax
    gives (a plain softmax would give NaN); the other rows as the builtin."""
    q, k, v = _qkv((1, 2, 6, 8), keys=5)
    tangents = _qkv((1, 2, 6, 8), keys=5, seed=1)
    mask = torch.zeros(1, 1, 6, 5, dtype=torch.float64)
    mask[..., 2, :] = float("-inf")
    mask[..., 4, 1:] = float("-inf")
    lean = torch.func.jvp(lambda *a: attention.chunked_math_sdpa(*a, mask), (q, k, v), tangents)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        builtin = torch.func.jvp(lambda *a: F.scaled_dot_product_attention(*a, mask), (q, k, v), tangents)
    for a, b in zip(lean, builtin):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert (lean[0][..., 2, :] == 0).all() and (lean[1][..., 2, :] == 0).all()


@pytest.mark.parametrize("with_tangent", ["qkv", "q"])
def test_lean_math_attention_copies_each_head_split_input_once(with_tangent):
    """Attention inputs arrive as head-split views (b, n, h, d) -> (b, h, n, d), which cannot fold into one batch
    dim: the lean rule copies each such input (value or tangent) once, not once per product it enters (it did:
    the query went into two products, the keys and values into two each). Values and tangents stay exact."""
    from torch.profiler import ProfilerActivity, profile
    import torch.autograd.forward_ad as fwAD
    g = torch.Generator().manual_seed(3)

    def head_split(tokens):
        return torch.randn(2, tokens, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2)
    q, k, v = head_split(20), head_split(11), head_split(11)
    tangents = {"q": head_split(20), "k": head_split(11), "v": head_split(11)}

    def attend():
        with fwAD.dual_level():
            duals = {n: fwAD.make_dual(t, tangents[n]) if n in with_tangent else t
                     for n, t in zip("qkv", (q, k, v))}
            out = attention.chunked_math_sdpa(duals["q"], duals["k"], duals["v"], scale=0.3)
            return fwAD.unpack_dual(out)
    value, tangent = attend()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        attend()
    copies = sum(1 for e in prof.events() if e.name == "aten::copy_" and not any(
        p.name == "aten::baddbmm_" for p in [e.cpu_parent] if p is not None))  # CPU's baddbmm_ copies its result
    assert copies <= 3 + len(with_tangent), copies
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = _explicit(*leaves, None, 0.3)
    assert torch.allclose(value, out.detach(), rtol=1e-12)
    reference = torch.autograd.functional.jvp(lambda *a: _explicit(*a, None, 0.3), (q, k, v),
                                              tuple(tangents[n] if n in with_tangent else torch.zeros_like(t)
                                                    for n, t in zip("qkv", (q, k, v))))[1]
    assert torch.allclose(tangent, reference, rtol=1e-10, atol=1e-12)


def test_routed_sdpa_inside_the_scope_only_and_counts_math_on_cpu():
    """Inside forward_ad_attention F.scaled_dot_product_attention is the router (CPU: MATH); restored after."""
    original = F.scaled_dot_product_attention
    q, k, v = _qkv((1, 2, 300, 40), dtype=torch.float32)
    before = dict(attention.route_counts)
    with core.forward_ad_attention():
        assert F.scaled_dot_product_attention is core.forward_ad_sdpa
        _, tangent = torch.func.jvp(lambda a: F.scaled_dot_product_attention(a, k, v), (q,), (torch.ones_like(q),))
    assert F.scaled_dot_product_attention is original
    assert attention.route_counts["math"] == before.get("math", 0) + 1
    assert attention.route_counts.get("fused", 0) == before.get("fused", 0)
    assert tangent.abs().sum() > 0
    with pytest.raises(RuntimeError, match="boom"), core.forward_ad_attention():
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is original


class _CudaLike:
    """Shape/dtype stand-in with is_cuda=True: the routing rules read nothing else."""

    def __init__(self, shape, dtype=torch.float32):
        self.shape, self.dtype, self.is_cuda = torch.Size(shape), dtype, True

    def dim(self):
        return len(self.shape)


@pytest.mark.parametrize("q_shape, k_shape, dtype, kwargs, expected", [
    ((32, 8, 1024, 40), (32, 8, 1024, 40), torch.float32, {}, "fused"),       # SD1.5 spatial self-attention, 256 px
    ((32, 8, 2304, 80), (32, 8, 2304, 80), torch.bfloat16, {}, "fused"),      # 384 px, second level
    ((2, 48, 1576, 64), (2, 48, 1576, 64), torch.float16, {}, "fused"),       # CogVideoX joint attention
    ((32, 8, 1024, 40), (32, 8, 77, 40), torch.float32, {}, "math"),          # cross-attention to the text
    ((2048, 8, 16, 40), (2048, 8, 16, 40), torch.float32, {}, "math"),        # temporal attention, 16 frames
    ((16, 1, 1024, 512), (16, 1, 1024, 512), torch.float32, {}, "math"),      # VAE mid-block: head dim 512
    ((32, 8, 1023, 40), (32, 8, 1023, 40), torch.float32, {}, "math"),        # odd length
    ((32, 8, 1024, 40), (32, 8, 1024, 40), torch.float64, {}, "math"),        # no float64 kernel
    ((32, 8, 1024, 40), (32, 8, 1024, 40), torch.float32, {"is_causal": True}, "math"),
    ((32, 8, 1024, 40), (32, 8, 1024, 40), torch.float32, {"attn_mask": object()}, "math"),
    ((8, 1024, 40), (8, 1024, 40), torch.float32, {}, "math"),                # not (batch, heads, tokens, dim)
])
def test_jvp_flash_attention_route_rules(q_shape, k_shape, dtype, kwargs, expected):
    """jvp-flash-attention, when selected, is picked exactly for long, unmasked self-attention with a supported
    dtype and head dim."""
    q, k = _CudaLike(q_shape, dtype), _CudaLike(k_shape, dtype)
    with attention.settings_override(kernel="jvp-flash-attention"):
        assert attention.attention_route(q, k, k, kernel_available=True, **kwargs) == expected
        assert attention.attention_route(q, k, k, kernel_available=False, **kwargs) == "math"


@pytest.mark.parametrize("q_shape, k_shape, v_dim, dtype, kwargs, expected", [
    ((32, 8, 1024, 40), (32, 8, 1024, 40), 40, torch.float32, {}, "triton"),       # SD1.5 spatial, 256 px
    ((32, 8, 1024, 40), (32, 8, 77, 40), 40, torch.float16, {}, "triton"),         # cross-attention to the text
    ((1, 12, 32760, 128), (1, 12, 512, 128), 128, torch.bfloat16, {}, "triton"),   # Wan cross-attention
    ((1, 12, 14041, 128), (1, 12, 14041, 128), 128, torch.bfloat16, {}, "triton"),  # odd length
    ((1, 4, 1024, 64), (1, 4, 1024, 64), 64, torch.float16, {"is_causal": True}, "triton"),
    ((1, 4, 1024, 64), (1, 4, 1024, 64), 32, torch.float16, {}, "triton"),         # value width differs
    ((2048, 8, 16, 40), (2048, 8, 16, 40), 40, torch.float32, {}, "math"),         # temporal attention, 16 frames
    ((16, 1, 1024, 512), (16, 1, 1024, 512), 512, torch.float32, {}, "math"),      # VAE mid-block: head dim 512
    ((32, 8, 1024, 40), (32, 8, 1024, 40), 40, torch.float64, {}, "math"),         # no float64 kernel
    ((32, 8, 1024, 40), (32, 8, 1024, 40), 40, torch.float32, {"attn_mask": object()}, "math"),
    ((32, 8, 1024, 40), (32, 2, 1024, 40), 40, torch.float32, {"enable_gqa": True}, "math"),  # grouped heads
    ((8, 1024, 40), (8, 1024, 40), 40, torch.float32, {}, "math"),                 # not (batch, heads, tokens, dim)
])
def test_triton_route_rules(q_shape, k_shape, v_dim, dtype, kwargs, expected):
    """Our kernel (the default) takes self- and cross-attention, causal and ragged lengths up to head dim 256."""
    q, k = _CudaLike(q_shape, dtype), _CudaLike(k_shape, dtype)
    v = _CudaLike(k_shape[:-1] + (v_dim,), dtype)
    assert attention.current_settings().kernel == "triton"
    assert attention.attention_route(q, k, v, kernel_available=True, **kwargs) == expected
    assert attention.attention_route(q, k, v, kernel_available=False, **kwargs) == "math"


def test_unknown_kernel_names_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown forward-mode attention kernel 'flash'"):
        attention.settings_override(kernel="flash").__enter__()
    monkeypatch.setenv("TITAN_FORWARD_AD_KERNEL", "flash")
    with pytest.raises(ValueError, match="TITAN_FORWARD_AD_KERNEL='flash'"):
        attention.ForwardADAttentionSettings()
    monkeypatch.setenv("TITAN_FORWARD_AD_KERNEL", "jvp-flash-attention")
    assert attention.ForwardADAttentionSettings().kernel == "jvp-flash-attention"


def test_route_respects_settings_and_short_sequences():
    """Below fused_min_tokens MATH is cheaper; `settings_override(fused=False)` turns the kernel off."""
    q = _CudaLike((32, 8, 128, 64))
    assert attention.attention_route(q, q, q, kernel_available=True) == "math"
    long = _CudaLike((32, 8, 4096, 64))
    with attention.settings_override(fused=False):
        assert attention.attention_route(long, long, long, kernel_available=True) == "math"
    assert attention.attention_route(long, long, long, kernel_available=True) == "triton"
    with attention.settings_override(kernel="jvp-flash-attention"):
        assert attention.attention_route(long, long, long, kernel_available=True) == "fused"


@pytest.mark.parametrize("dim", [40, 80, 160, 8])
def test_zero_padded_head_dims_leave_attention_and_its_jvp_unchanged(dim):
    """The kernel only compiles head dims 16..256: zero-padding q, k, v with the original scale is exact."""
    padded = attention.padded_head_dim(dim)
    assert padded in attention.FUSED_HEAD_DIMS and padded >= dim
    q, k, v = _qkv((2, 2, 64, dim))
    tq, tk, tv = _qkv((2, 2, 64, dim), seed=3)
    pad = (lambda t: F.pad(t, (0, padded - dim)))

    def plain(q, k, v):
        return _explicit(q, k, v)

    def via_padding(q, k, v):
        return _explicit(pad(q), pad(k), pad(v), scale=dim ** -0.5)[..., :dim]

    out, tangent = torch.func.jvp(plain, (q, k, v), (tq, tk, tv))
    out_p, tangent_p = torch.func.jvp(via_padding, (q, k, v), (tq, tk, tv))
    assert torch.allclose(out, out_p, rtol=1e-12) and torch.allclose(tangent, tangent_p, rtol=1e-10)
    assert attention.padded_head_dim(257) is None


def test_fused_attention_refuses_the_cpu_clearly():
    """Asked for directly on a machine without CUDA, the fused path says what it needs."""
    if torch.cuda.is_available():
        pytest.fail("this CPU test expects no CUDA device (CI has none)")
    q, k, v = _qkv((1, 1, 64, 16), dtype=torch.float32)
    with pytest.raises(RuntimeError, match="needs CUDA and `pip install jvp-flash-attention`"):
        attention.fused_attention(q, k, v)


def test_graphed_jvp_refuses_cpu_latents():
    """CUDA graphs on the CPU are an error that names the knob, not a silent eager fallback."""
    denoise = core.EpsDenoiser(lambda z, t: z * 0.1, torch.linspace(0.99, 0.01, 1000, dtype=torch.float64))
    sigmas = core.DiscreteSchedule(torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)).spaced_sigmas(4).float()
    x = torch.randn(1, 4, 8, 8) * sigmas[0]
    with pytest.raises(ValueError, match="turn cuda_graph off"):
        core.sample(denoise, x, sigmas, core.Titan(cuda_graph=True), loss=lambda x0, per_frame=False: x0.square().mean(
            dim=(1, 2, 3)), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="needs estimator 'dual' or 'jvp'"):
        core.Titan(cuda_graph=True, estimator="central_difference")


def test_unroll_refuses_sigmas_with_a_zero_before_the_end():
    """unroll's contract (positive sigmas, one final 0) is checked outside graph capture."""
    denoise = core.EpsDenoiser(lambda z, t: z * 0.1, torch.linspace(0.99, 0.01, 1000, dtype=torch.float64))
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="positive sigmas ending in one 0"):
        core.unroll(denoise, x, torch.tensor([2.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one sigma"):
        core.unroll(denoise, x, torch.tensor([0.0]))


def test_plan_chunk_frames_on_cpu_decodes_everything_and_checks_its_input():
    """Without CUDA allocator statistics the plan is all frames; a bad fraction is an error."""
    layout = core.Layout(samples=1, frame_dim=2)
    z = torch.randn(1, 4, 6, 8, 8)
    assert core.plan_chunk_frames(lambda t: t, z, layout) == 6
    with pytest.raises(ValueError, match="free_fraction"):
        core.plan_chunk_frames(lambda t: t, z, layout, free_fraction=0)


def test_decode_chunks_fill_a_fixed_size_in_bytes_not_the_free_memory():
    """On a card with memory to spare the automatic decode chunk stops at about DECODE_CALL_BYTES per call (the
    H200 planned all 16 frames of the shipped workflow into one call from half its free memory), evened out over
    the calls; free memory still caps it, and one frame is the floor."""
    from guidance_core.decode import DECODE_CALL_BYTES, frames_per_chunk
    gib = 2**30
    assert DECODE_CALL_BYTES == 2 * gib
    assert frames_per_chunk(16, 0.3 * gib, 100 * gib) == 6  # 7 frames fill 2 GiB: 3 calls of 6, 6, 4
    assert frames_per_chunk(16, 0.1 * gib, 100 * gib) == 16  # 20 frames would fill it: one call
    assert frames_per_chunk(16, 1.5 * gib, 100 * gib) == 2  # the budget is reached, not stopped short of
    assert frames_per_chunk(16, 0.3 * gib, 2 * gib) == 3  # half of 2 GiB free holds 3 frames
    assert frames_per_chunk(16, 5 * gib, 1 * gib) == 1
    assert frames_per_chunk(16, 0.3 * gib, 100 * gib, call_bytes=float("inf")) == 16
    with pytest.raises(ValueError, match="free_fraction"):
        frames_per_chunk(16, gib, gib, free_fraction=1.5)


def _layers_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 8, 3, stride=2, padding="valid"),
        torch.nn.Flatten(1), torch.nn.LazyLinear(5)).double()


def test_lean_linear_layers_jvp_equals_autograd_and_builtin_rule():
    """Inside the scope conv/linear take the lean forward rule; the JVP equals autograd and the builtin rule."""
    from guidance_core.forward_ad import rules as forward_rules
    net = _layers_net()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    net(x)  # materialise the lazy layer
    v = torch.randn_like(x)
    builtin = torch.func.jvp(net, (x,), (v,))
    with forward_rules.lean_linear_layers():
        assert F.conv2d is forward_rules.LEAN["conv2d"] and F.linear is forward_rules.LEAN["linear"]
        lean = torch.func.jvp(net, (x,), (v,))
        conv1d = torch.func.jvp(lambda a: F.conv1d(a, torch.ones(4, 3, 2, dtype=torch.float64), None, 1, 1),
                                (x[:, :, 0],), (v[:, :, 0],))
    assert F.conv2d is torch.conv2d or F.conv2d.__name__ == "conv2d"
    assert F.linear is forward_rules._builtin["linear"]
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(net(xr), xr, torch.ones(2, 5, dtype=torch.float64))
    assert torch.allclose(lean[0], builtin[0], rtol=1e-13)
    assert torch.allclose(lean[1], builtin[1], rtol=1e-11)
    assert torch.allclose(lean[1].sum(), (grad * v).sum(), rtol=1e-10)
    ref = torch.func.jvp(lambda a: torch.conv1d(a, torch.ones(4, 3, 2, dtype=torch.float64), None, 1, 1),
                         (x[:, :, 0],), (v[:, :, 0],))
    assert torch.allclose(conv1d[1], ref[1], rtol=1e-12)


def test_lean_rule_with_tangents_on_weights_and_bias():
    """Weight and bias tangents (a network differentiated in its parameters) are kept, not dropped."""
    from guidance_core.forward_ad import rules as forward_rules
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w, b = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    tx, tw, tb = torch.randn_like(x), torch.randn_like(w), torch.randn_like(b)
    f = (lambda a, c, d: F.conv2d(a, c, d, padding=1))
    reference = torch.func.jvp(lambda a, c, d: torch.conv2d(a, c, d, 1, 1), (x, w, b), (tx, tw, tb))
    with forward_rules.lean_linear_layers():
        lean = torch.func.jvp(f, (x, w, b), (tx, tw, tb))
        only_bias = torch.func.jvp(lambda d: F.conv2d(x, w, d, padding=1), (b,), (tb,))
        lw, lb = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
        linear = torch.func.jvp(lambda c, d: F.linear(x[..., :3], c, d), (lw, lb), (torch.ones_like(lw), tb[:1].expand(5)))
    assert torch.allclose(lean[1], reference[1], rtol=1e-11)
    assert torch.allclose(only_bias[1], tb.reshape(1, 4, 1, 1).expand_as(only_bias[1]))
    ref_linear = torch.func.jvp(lambda c, d: torch.nn.functional.linear(x[..., :3], c, d), (lw, lb),
                                (torch.ones_like(lw), tb[:1].expand(5)))
    assert torch.allclose(linear[1], ref_linear[1], rtol=1e-12)


def test_mixed_input_dtypes_are_promoted_and_their_jvp_is_exact():
    """A float32 query against float16 keys / values (PyTorch's SDPA refuses the mix; seen inside a JVP of fp16 Wan
    2.1 on a GPU): the router computes in the common dtype, and the JVP equals float64 autograd's to float32 accuracy."""
    q, k, v = _qkv((1, 2, 40, 8), keys=24)
    tq, tk, tv = _qkv((1, 2, 40, 8), keys=24, seed=1)
    k16, v16, tk16, tv16 = (t.to(torch.float16) for t in (k, v, tk, tv))
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q.float(), k16, v16)
    value, derivative = torch.func.jvp(lambda a, b, c: attention.forward_ad_sdpa(a, b, c),
                                       (q.float(), k16, v16), (tq.float(), tk16, tv16))
    assert value.dtype == derivative.dtype == torch.float32
    kd, vd, tkd, tvd = (t.double() for t in (k16, v16, tk16, tv16))
    ref_value, ref_derivative = torch.func.jvp(_explicit, (q, kd, vd), (tq, tkd, tvd))
    assert torch.allclose(value.double(), ref_value, atol=1e-5)
    assert torch.allclose(derivative.double(), ref_derivative, atol=1e-4)
