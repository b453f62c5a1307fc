"""The Triton JVP attention kernel under Triton's interpreter (CPU) against float64 autograd.

The reference is `torch.func.jvp` of plain softmax attention in float64 on the same (rounded) inputs; the
kernel runs at tiny shapes that still cross its 16 x 16 tile edges (ragged query and key tails, padded head
dims). TRITON_INTERPRET=1 is set per test (monkeypatch restores it), so other tests never see it.
"""
import pytest
import torch

pytest.importorskip("triton")

from guidance_core.forward_ad import triton_attention as ta  # noqa: E402

TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}  # of max |reference|


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def attention64(q, k, v, causal=False, scale=None):
    """softmax(q k^T scale) v in float64, causal aligned top-left as torch SDPA."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if causal:
        future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1) @ v.double()


def reference(q, k, v, q_t, k_t, v_t, causal=False, scale=None):
    zero = torch.zeros_like
    tangents = tuple((zero(p) if t is None else t).double() for p, t in ((q, q_t), (k, k_t), (v, v_t)))
    return torch.func.jvp(lambda a, b, c: attention64(a, b, c, causal, scale),
                          (q.double(), k.double(), v.double()), tangents)


def inputs(len_q, len_k, dim, dim_v=None, dtype=torch.float32, seed=0, batch=2, heads=2):
    g = torch.Generator().manual_seed(seed)
    dim_v = dim if dim_v is None else dim_v
    shapes = [(len_q, dim), (len_k, dim), (len_k, dim_v)] * 2
    return [torch.randn(batch, heads, length, d, generator=g).to(dtype) for length, d in shapes]


def relative_error(actual, expected):
    return float((actual.double() - expected).abs().max() / expected.abs().max())


def check(len_q, len_k, dim, dim_v=None, causal=False, dtype=torch.float32, present="qkv", scale=None):
    q, k, v, q_t, k_t, v_t = inputs(len_q, len_k, dim, dim_v, dtype)
    q_t, k_t, v_t = (t if name in present else None for name, t in zip("qkv", (q_t, k_t, v_t)))
    out, out_t = ta.jvp_attention(q, k, v, q_t, k_t, v_t, scale=scale, causal=causal)
    expected, expected_t = reference(q, k, v, q_t, k_t, v_t, causal, scale)
    assert out.dtype == dtype and out_t.dtype == dtype
    assert out.shape == out_t.shape == expected.shape
    tolerance = TOLERANCE[dtype]
    assert relative_error(out, expected) < tolerance
    if present:
        assert relative_error(out_t, expected_t) < tolerance
    else:
        assert not out_t.any()


@pytest.mark.parametrize("len_q, len_k, dim, causal", [
    (37, 37, 40, False),   # self-attention, ragged tails, head dim padded 40 -> 64
    (37, 37, 64, True),
    (33, 20, 80, False),   # cross-attention: fewer keys than queries
    (20, 45, 64, True),    # causal with more keys than queries
    (17, 17, 128, False),
    (1, 7, 16, True),      # one query (causal: it sees key 0 only)
    (5, 1, 32, False),     # one key
])
def test_primal_and_tangent_match_float64_autograd(len_q, len_k, dim, causal):
    check(len_q, len_k, dim, causal=causal)


def test_value_head_dim_may_differ_and_scale_is_honoured():
    check(21, 19, 32, dim_v=48, scale=0.3)


@pytest.mark.parametrize("present", ["q", "k", "v", "qk", "kv", ""])
def test_absent_tangents_count_as_zero(present):
    check(19, 23, 40, present=present)


@pytest.mark.parametrize("dtype, causal", [(torch.bfloat16, False), (torch.float16, True)])
def test_half_inputs_accumulate_in_float32(dtype, causal):
    check(35, 29, 64, causal=causal, dtype=dtype)


def test_tangent_keeps_fp16_precision_when_scores_share_a_large_offset():
    """Keys sharing a direction that the query tangent points along give S_t a large common offset per row;
    the kernel rounds S_t - (its running mean), so the fp16 tangent stays at fp16 rounding (3.8e-4 here;
    rounding S_t itself gave 2.7e-3)."""
    q, k, v, q_t, k_t, v_t = inputs(96, 96, 64, seed=1, batch=1)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(2))
    direction = direction / direction.norm()
    k, q_t = k + 12 * direction, q_t + 64 * direction
    q, k, v, q_t, k_t, v_t = (t.half() for t in (q, k, v, q_t, k_t, v_t))
    _, out_t = ta.jvp_attention(q, k, v, q_t, k_t, v_t)
    assert relative_error(out_t, reference(q, k, v, q_t, k_t, v_t)[1]) < 1e-3


def test_tolerance_catches_a_tangent_without_the_softmax_centering():
    """The tangent without its - rowsum(P * S_t) term is far outside the float32 tolerance, so a kernel
    that dropped it would fail the checks above."""
    q, k, v, q_t, k_t, v_t = inputs(19, 23, 40)
    _, expected_t = reference(q, k, v, q_t, k_t, v_t)
    probabilities = ((q.double() @ k.double().transpose(-1, -2)) * 40 ** -0.5).softmax(-1)
    scores_t = (q_t.double() @ k.double().transpose(-1, -2) + q.double() @ k_t.double().transpose(-1, -2))
    uncentred = probabilities @ v_t.double() + (probabilities * scores_t * 40 ** -0.5) @ v.double()
    assert relative_error(uncentred, expected_t) > 100 * TOLERANCE[torch.float32]


def test_strided_inputs_keep_their_layout():
    """(B, L, H, D) storage seen as (B, H, L, D), as transformers hand it over: same values, and the output
    comes back in the same layout so the caller's reshape to (B, L, H*D) is free."""
    q, k, v, q_t, k_t, v_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs(21, 21, 64))
    out, out_t = ta.jvp_attention(q, k, v, q_t, k_t, v_t)
    expected, expected_t = reference(q, k, v, q_t, k_t, v_t)
    assert out.stride() == q.stride()
    assert relative_error(out, expected) < 2e-5 and relative_error(out_t, expected_t) < 2e-5


def test_dual_attention_under_torch_func_jvp():
    q, k, v, q_t, k_t, v_t = inputs(23, 18, 40)
    out, out_t = torch.func.jvp(ta.dual_attention, (q, k, v), (q_t, k_t, v_t))
    expected, expected_t = reference(q, k, v, q_t, k_t, v_t)
    assert relative_error(out, expected) < 2e-5 and relative_error(out_t, expected_t) < 2e-5
    # only q carries a tangent; k and v are constants closed over
    out, out_t = torch.func.jvp(lambda a: ta.dual_attention(a, k, v, is_causal=True), (q,), (q_t,))
    expected, expected_t = reference(q, k, v, q_t, None, None, causal=True)
    assert relative_error(out, expected) < 2e-5 and relative_error(out_t, expected_t) < 2e-5


def test_dual_attention_under_autograd_forward_ad():
    """The default estimator ("dual") hands the kernel autograd.forward_ad duals, not torch.func's wrappers."""
    fwAD = torch.autograd.forward_ad
    q, k, v, q_t, k_t, v_t = inputs(23, 18, 40)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(ta.dual_attention(fwAD.make_dual(q, q_t), fwAD.make_dual(k, k_t), v))
    expected, expected_t = reference(q, k, v, q_t, k_t, None)
    assert relative_error(out.primal, expected) < 2e-5 and relative_error(out.tangent, expected_t) < 2e-5


def test_dual_attention_without_tangents_returns_the_plain_output():
    q, k, v, *_ = inputs(18, 18, 32)
    out = ta.dual_attention(q, k, v)
    assert torch.autograd.forward_ad.unpack_dual(out).tangent is None
    assert relative_error(out, attention64(q, k, v)) < 2e-5


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q[0], k[0], v[0]), "(batch, heads, tokens, head dim)"),
    (lambda q, k, v: (torch.randn(1, 2, 8, 300), torch.randn(1, 2, 8, 300), torch.randn(1, 2, 8, 300)),
     "head dim up to 256"),
    (lambda q, k, v: (q, k, v.double()), "float16/bfloat16/float32"),
    (lambda q, k, v: (q, k[:, :1], v[:, :1]), "no broadcasting or GQA"),
    (lambda q, k, v: (q, k, v[:, :, :5]), "same number of tokens"),
])
def test_bad_inputs_raise_errors_that_say_what_is_wrong(change, message):
    q, k, v, *_ = inputs(8, 8, 16)
    with pytest.raises(ValueError, match=pytest.importorskip("re").escape(message)):
        ta.jvp_attention(*change(q, k, v))


def test_supported_explains_why_not(monkeypatch):
    q, k, v, q_t, *_ = inputs(8, 8, 16)
    assert ta.supported(q, k, v) is None  # CPU under the interpreter
    assert "head dim up to 256" in ta.supported(*(torch.randn(1, 1, 4, 320) for _ in range(3)))
    assert "q_t must match" in ta.supported(q, k, v, q_t=q_t[..., :8])
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "CUDA" in ta.supported(q, k, v)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with torch.enable_grad():
        assert "no backward" in ta.supported(q.requires_grad_(), k, v)


def test_tile_candidates_fit_the_shape_class_and_the_card():
    """What a call may run (the autotuner times them all, the default launch takes the first of `ranked_tiles`):
    tiles within the card's shared memory, narrow ones at head dim 256 or float32 at 128, none of 128 queries for
    64 queries."""
    tiles = (lambda kept: {(m, n, s) for m, n, _, s in kept})
    long = dict(has_qt=True, has_kt=True, has_vt=True, lq_bucket=16384, lk_bucket=16384)
    wan = tiles(ta.tile_candidates(2, 128, 128, **long))
    assert (128, 32, 3) in wan and (128, 64, 3) not in wan and all(n <= 64 for _, n, _ in wan)
    cog = tiles(ta.tile_candidates(2, 64, 64, **long))
    assert (128, 128, 2) in cog and (128, 64, 3) in cog
    narrow = {(m, n, s) for m, n, _, s in ta._NARROW_TUNING}
    assert tiles(ta.tile_candidates(4, 128, 128, **long)) <= narrow
    assert tiles(ta.tile_candidates(2, 256, 128, **long)) <= narrow
    short = tiles(ta.tile_candidates(2, 64, 64, **dict(long, lq_bucket=64)))
    assert short and all(m <= 64 for m, _, _ in short)
    # a card with 99 KiB per block (Ada, Ampere consumer parts): the 128 x 128 tile's 160 KiB is not offered
    ada = ta.ranked_tiles(2, 64, 64, **long, shared_memory=101_376)
    assert (128, 128, 8, 2) not in ada and ada[0] == (128, 64, 8, 2)
    # the autotuner's pruning is the same function, with the launch's arguments
    configs = ta._prune(None, {"Q": torch.empty(1, dtype=torch.bfloat16), "BLOCK_D": 64, "BLOCK_DV": 64,
                               "HAS_QT": True, "HAS_KT": True, "HAS_VT": True, "LQ_BUCKET": 16384,
                               "LK_BUCKET": 16384})
    assert [ta._tile_of(c) for c in configs] == ta.tile_candidates(2, 64, 64, **long)


def test_default_tile_is_what_autotuning_picked_in_every_shape_the_h200_timed():
    """The default launch compiles one tile, the first of `ranked_tiles`, instead of timing every candidate.
    benchmarks/results/jvp_attention.json holds the autotuner's pick per shape from an H200 run (all tangents,
    bf16): the rule must give the same tile in every one of them."""
    import json
    import pathlib
    import re

    saved = json.loads((pathlib.Path(__file__).parents[2] / "benchmarks/results/jvp_attention.json").read_text())
    checked = 0
    for row in saved["rows"]:
        ours = row.get("ours_autotuned") or row.get("ours", {})
        if "config" in ours:  # runs before the default tile: Triton's Config string
            found = dict(re.findall(r"(BLOCK_M|BLOCK_N|num_warps|num_stages): (\d+)", ours["config"]))
            picked = tuple(int(found[k]) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
        elif "tile" in ours:
            picked = tuple(ours["tile"])
        else:
            continue
        batch, heads, len_q, len_k, dim = row["dims"]
        size = {"bfloat16": 2, "float16": 2, "float32": 4}[row["dtype"]]
        default = ta.ranked_tiles(size, ta._block_dim(dim), ta._value_block(dim), True, True, True, ta._bucket(len_q),
                                  ta._bucket(len_k))[0]
        assert default == picked, (row["shape"], default, picked)
        checked += 1
    assert checked >= 15


def test_default_launch_falls_back_to_the_next_tile_when_the_card_refuses_one():
    """Shared-memory figures are estimates: a tile the card cannot hold fails when Triton compiles it
    (OutOfResources, nothing has run), and the launch takes the next tile; any other error is raised."""
    class OutOfResources(Exception):
        pass

    launched = []

    class Kernel:
        def __getitem__(self, grid):
            def launch(*args, BLOCK_M, BLOCK_N, num_warps, num_stages, **meta):
                if BLOCK_N == 128:
                    raise OutOfResources("shared memory")
                launched.append((BLOCK_M, BLOCK_N, num_warps, num_stages))
            return launch

    tile = ta._launch_first_that_fits(Kernel(), None, (), {}, [(128, 128, 8, 2), (128, 64, 8, 2), (64, 64, 4, 3)])
    assert launched == [(128, 64, 8, 2)] and tile == ta.last_tile["tile"] == (128, 64, 8, 2)
    with pytest.raises(OutOfResources):
        ta._launch_first_that_fits(Kernel(), None, (), {}, [(128, 128, 8, 2)])

    class Broken(Kernel):
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise ValueError("not a resource problem")
            return launch

    with pytest.raises(ValueError):
        ta._launch_first_that_fits(Broken(), None, (), {}, [(128, 128, 8, 2), (128, 64, 8, 2)])


def in_fresh_compiler_process(code: str, **env):
    """Run `code` (the repository on sys.path, json imported) in a new Python without TRITON_INTERPRET: running the
    interpreter patches triton.language for the rest of a process, so sm_90 compiles need their own."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run([sys.executable, "-c", f"import sys, json; sys.path[:0] = [{str(root)!r}]\n{code}"],
                          env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", [
    dict(),  # Wan's shape class: bf16, head dim 128, all tangents
    dict(dtype="fp16", dim=40, tile=(64, 64, 4, 3), tangents=(True, False, True), causal=True),
])
def test_kernel_lowers_for_hopper_within_shared_memory(case):
    """The interpreter checks the maths, not the lowering: this compiles for sm_90 (no GPU needed), in a fresh
    process because running the interpreter patches triton.language for the rest of a process."""
    import json

    done = in_fresh_compiler_process("from benchmarks.jvp_attention import compile_for_hopper\n"
                                     f"print('SHARED', compile_for_hopper(**json.loads({json.dumps(json.dumps(case))}))"
                                     ".metadata.shared)")
    if done.returncode and "GPUTarget" in done.stderr + done.stdout and "ImportError" in done.stderr:
        pytest.skip("this Triton build cannot compile for sm_90 here")
    assert done.returncode == 0, done.stderr[-3000:]
    shared = int(done.stdout.split("SHARED")[-1])
    assert 0 < shared <= ta.SHARED_MEMORY_BYTES


def test_compile_cost_benchmark_compiles_every_candidate_and_the_default_tile(tmp_path):
    """`benchmarks.jvp_attention --compile-cost` on one of the node path's call classes (sm_90, no GPU; a fresh
    process, as above): every candidate the autotuner would time is compiled, the default launch's tile among them."""
    import json

    done = in_fresh_compiler_process("from benchmarks import jvp_attention as bench\n"
                                     "bench.NODE_PATH_CALLS = bench.NODE_PATH_CALLS[1:2]\n"
                                     "print('RESULT', json.dumps(bench.compile_cost()))",
                                     TRITON_CACHE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT")[-1])
    (row,) = result["rows"]
    assert row["call"] == "SD1.5 cross, 32x32 latent" and row["tangents"] == [True, False, False]
    call = (2, 64, 64, True, False, False, 1024, 128)
    assert row["autotune_tiles"] == len(ta.tile_candidates(*call)) > 1
    assert tuple(row["default_tile"]) == ta.ranked_tiles(*call)[0]
    assert 0 < row["default_compile_s"] < row["autotune_compile_s"]


def test_sdpa_supported_takes_the_sdpa_signature_and_duals():
    q, k, v, q_t, k_t, v_t = inputs(8, 8, 16)
    assert ta.sdpa_supported(q, k, v, is_causal=True, scale=0.2) is None
    assert "masks" in ta.sdpa_supported(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    assert "dropout" in ta.sdpa_supported(q, k, v, dropout_p=0.1)
    assert "grouped-query" in ta.sdpa_supported(q, k[:, :1], v[:, :1], enable_gqa=True)
    reasons = []
    torch.func.jvp(lambda a, b, c: reasons.append(ta.sdpa_supported(a, b, c)) or a, (q, k, v), (q_t, k_t, v_t))
    assert reasons == [None]
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(q, q_t)
        assert ta.sdpa_supported(dual, k, v) is None


def test_router_sends_forward_mode_sdpa_through_the_kernel():
    """Inside forward_ad_attention, F.scaled_dot_product_attention under torch.func.jvp takes our kernel (the
    interpreter stands in for CUDA) for self- and cross-attention, and matches float64 autograd."""
    import torch.nn.functional as F
    from guidance_core.forward_ad import attention

    for len_q, len_k in ((300, 300), (290, 37)):
        q, k, v, q_t, k_t, v_t = inputs(len_q, len_k, 24, batch=1)
        before = attention.route_counts["triton"]
        with attention.forward_ad_attention():
            out, out_t = torch.func.jvp(lambda a, b, c: F.scaled_dot_product_attention(a, b, c),
                                        (q, k, v), (q_t, k_t, v_t))
        assert attention.route_counts["triton"] == before + 1
        expected, expected_t = reference(q, k, v, q_t, k_t, v_t)
        assert relative_error(out, expected) < TOLERANCE[torch.float32]
        assert relative_error(out_t, expected_t) < TOLERANCE[torch.float32]
