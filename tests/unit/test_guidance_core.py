"""guidance_core against exact references: autograd in float64, finite differences, diffusers' DDIM."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest
import torch

import guidance_core as core
from core_fixtures import linear_alphas_cumprod, video_problem

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _f(denoise, loss, sigmas, lookahead, step="euler", per_frame=False):
    s = core.lookahead_sigmas(sigmas, lookahead)
    return lambda z: loss(core.unroll(denoise, z, s, step), per_frame=per_frame)


@pytest.mark.parametrize("lookahead,step", [(0, "euler"), (2, "euler"), ("all", "euler"), (2, "heun")])
def test_jvp_matches_autograd_through_unroll_and_chunked_decode(lookahead, step):
    denoise, loss, layout, sigmas, x = video_problem(samples=1, frames=4, chunk=2)
    f = _f(denoise, loss, sigmas[1:], lookahead, step)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    value, h = core.directional_derivative(f, x, v)
    ref_value, grad = core.exact_gradient(f, x)
    expected = (grad * v).sum()
    assert torch.allclose(value, ref_value, rtol=0, atol=0)
    assert abs(h.sum() - expected) / abs(expected) < 1e-9


def test_dual_estimator_matches_jvp_and_central_difference_is_close():
    denoise, loss, layout, sigmas, x = video_problem()
    f = _f(denoise, loss, sigmas[1:], 1)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    _, h_jvp = core.directional_derivative(f, x, v, "jvp")
    _, h_dual = core.directional_derivative(f, x, v, "dual")
    _, h_fd = core.directional_derivative(f, x, v, "central_difference", delta=1e-5)
    assert torch.allclose(h_jvp, h_dual, rtol=1e-12, atol=0)
    assert torch.allclose(h_jvp, h_fd, rtol=1e-6, atol=0)


def test_per_sample_derivatives_are_independent_across_samples():
    denoise, loss, layout, sigmas, x = video_problem(samples=3, frames=4)
    f = _f(denoise, loss, sigmas[1:], 1)
    v = torch.randn((1, *x.shape), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    est = core.forward_gradient(f, x, v, layout)
    _, grad = core.exact_gradient(f, x)
    expected = layout.dot(grad, v[0])
    assert est.derivatives.shape == (1, 3)
    assert torch.allclose(est.derivatives[0], expected, rtol=1e-9, atol=0)
    assert torch.allclose(est.gradient, layout.per_sample(expected, x) * v[0], rtol=1e-9, atol=1e-300)


def test_per_frame_derivatives_equal_each_frame_loss_derivative():
    denoise, loss, layout, sigmas, x = video_problem(samples=2, frames=4)
    f = _f(denoise, loss, sigmas[1:], 1, per_frame=True)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    est = core.forward_gradient(f, x, v[None], layout)
    jac = torch.autograd.functional.jacobian(f, x)  # (samples, frames, *x.shape)
    expected = (jac * v).flatten(2).sum(-1)
    assert est.derivatives.shape == (1, 2, 4)
    assert torch.allclose(est.derivatives[0], expected, rtol=1e-9, atol=0)
    # frame j of G is h_j times frame j of V
    assert torch.allclose(est.gradient, expected.reshape(-1, 1, 1, 1) * v, rtol=1e-9, atol=1e-300)


def _quadratic_problem(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, dtype=torch.float64, generator=g)
    b = torch.randn(d, dtype=torch.float64, generator=g)
    x = torch.randn(1, d, dtype=torch.float64, generator=g)
    f = lambda z: ((z @ a).tanh() * b).sum(1)
    return f, x


@pytest.mark.parametrize("guess", [core.RandomGuess(k=1), core.OrthogonalGuess(k=3)])
def test_unbiased_guesses_average_to_the_gradient(guess):
    f, x = _quadratic_problem()
    _, grad = core.exact_gradient(f, x)
    gen, n = torch.Generator().manual_seed(1), 4000
    ctx = core.GuessContext(x, torch.tensor(1.0), None, None, core.Layout(), gen)
    estimates = torch.stack([core.forward_gradient(f, x, guess(ctx)).gradient for _ in range(n)])
    mean, stderr = estimates.mean(0), estimates.std(0) / n**0.5
    z = ((mean - grad) / stderr).abs().max()
    assert z < 4.5, f"estimator looks biased: max z-score {z:.2f}"
    # the same bound rejects a wrongly scaled estimator
    assert ((1.3 * mean - grad) / (1.3 * stderr)).abs().max() > 4.5


def test_orthogonal_tangents_are_orthogonal_with_norm_sqrt_d():
    x = torch.zeros(2 * 3, 5, dtype=torch.float64)
    layout = core.Layout(samples=2)
    v = core.OrthogonalGuess(k=4)(core.GuessContext(x, torch.tensor(1.0), None, None, layout, torch.Generator().manual_seed(0)))
    flat = v.reshape(4, 2, -1).permute(1, 0, 2)  # samples, K, d
    gram = flat @ flat.transpose(1, 2)
    assert torch.allclose(gram, 15 * torch.eye(4, dtype=torch.float64).expand(2, 4, 4), atol=1e-9)


def test_antithetic_pairs_give_the_same_gradient_as_one_tangent_with_an_exact_jvp():
    f, x = _quadratic_problem()
    ctx = core.GuessContext(x, torch.tensor(1.0), None, None, core.Layout(), torch.Generator().manual_seed(3))
    pair = core.AntitheticGuess(pairs=1)(ctx)
    assert torch.equal(pair[0], -pair[1])
    both = core.forward_gradient(f, x, pair).gradient
    single = core.forward_gradient(f, x, pair[:1]).gradient
    assert torch.allclose(both, single, rtol=1e-12, atol=0)


def test_score_and_sampled_gradient_guesses_have_unit_norm_and_latent_shape():
    denoise, loss, layout, sigmas, x = video_problem(samples=2, frames=4)
    sigma = sigmas[1]
    denoised = denoise(x, sigma)
    ctx = core.GuessContext(x, sigma, denoised, loss, layout, torch.Generator().manual_seed(0))
    guesses = [core.ScoreGuess(), core.MixedGuess()] + [core.SampledGradientGuess(frames=2, choice=c, expand=e)
                                                   for c in ("even", "random") for e in ("tile", "nearest", "interpolate")]
    for guess in guesses:
        v = guess(ctx)
        assert v.shape == (1, *x.shape)
        assert torch.allclose(layout.flat(v[0]).norm(dim=1), torch.ones(2, dtype=torch.float64), atol=1e-12)
    eps = (x - denoised) / sigma
    assert torch.allclose(core.ScoreGuess()(ctx)[0], layout.normalize(eps))


def test_sampled_gradient_is_the_tweedie_gradient_on_the_chosen_frames():
    denoise, loss, layout, sigmas, x = video_problem(samples=1, frames=4)
    denoised = denoise(x, sigmas[1]).detach()
    guess = core.SampledGradientGuess(frames=2, choice="fixed", indices=[1, 3], expand="tile")
    v = guess(core.GuessContext(x, sigmas[1], denoised, loss, layout))[0]
    sub = denoised[[1, 3]].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(sub).sum(), sub)
    tiled = torch.cat([g, g])
    assert torch.allclose(v, tiled / tiled.norm(), atol=1e-12)
    with pytest.raises(ValueError, match="exceed"):
        core.SampledGradientGuess(frames=5)(core.GuessContext(x, sigmas[1], denoised, loss, layout))


def test_sampled_gradient_on_every_frame_is_the_full_gradient_in_any_order():
    """All frames: no subset reaches the loss, and fixed indices in another order land on their own frames."""
    denoise, loss, layout, sigmas, x = video_problem(samples=1, frames=4)
    denoised = denoise(x, sigmas[1]).detach()
    seen = []

    def recording_loss(x0, frame_indices=None, per_frame=False):
        seen.append(frame_indices)
        return loss(x0, frame_indices, per_frame)

    full = denoised.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(full).sum(), full)
    expected = g / g.norm()
    for guess in (core.SampledGradientGuess(frames=4),
                  core.SampledGradientGuess(frames=4, choice="fixed", indices=[3, 1, 0, 2], expand="tile")):
        v = guess(core.GuessContext(x, sigmas[1], denoised, recording_loss, layout))[0]
        assert torch.allclose(v, expected, atol=1e-12)
    assert seen[0] is None and seen[1].tolist() == [3, 1, 0, 2]


def test_lookahead_zero_is_the_tweedie_estimate():
    denoise, loss, layout, sigmas, x = video_problem()
    s = core.lookahead_sigmas(sigmas[2:], 0)
    assert s.tolist() == [float(sigmas[2]), 0.0]
    assert torch.equal(core.unroll(denoise, x, s), denoise(x, sigmas[2]))


def test_lookahead_schedule_semantics_and_errors():
    sigmas = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.0])
    assert core.lookahead_sigmas(sigmas, 1).tolist() == [8.0, 4.0, 0.0]
    assert core.lookahead_sigmas(sigmas, 2).tolist() == [8.0, 4.0, 0.5, 0.0]
    assert core.lookahead_sigmas(sigmas, "all").tolist() == sigmas.tolist()
    with pytest.raises(ValueError, match="exceeds"):
        core.lookahead_sigmas(sigmas, 5)


def test_ddim_step_matches_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler
    ac = linear_alphas_cumprod()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, timestep_spacing="leading", steps_offset=1)
    sched.set_timesteps(20)
    assert torch.allclose(sched.alphas_cumprod.double(), ac, rtol=1e-6)
    # same alphas on both sides, in float64, so the comparison tests the formulas rather than float32 rounding
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    ac = sched.alphas_cumprod
    gen = torch.Generator().manual_seed(0)
    ts = sched.timesteps
    for t, t_prev in zip(ts[:-1], ts[1:]):
        z = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
        eps = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
        expected = sched.step(eps, int(t), z).prev_sample
        a, a_prev = ac[int(t)], ac[int(t_prev)]
        sigma, sigma_prev = ((1 - a) / a).sqrt(), ((1 - a_prev) / a_prev).sqrt()
        x = z / a.sqrt()
        x_prev = core.euler_step(lambda *_: x - sigma * eps, x, sigma, sigma_prev)
        assert torch.allclose(x_prev * a_prev.sqrt(), expected, atol=1e-6, rtol=0)


def test_eps_and_v_denoisers_agree_on_the_same_underlying_prediction():
    ac = linear_alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    eps = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    sched = core.DiscreteSchedule(ac)
    sigma = sched.sigma(400.0)
    a = ac[400]
    x = x0 + sigma * eps
    eps_model = lambda z, t: eps
    v_model = lambda z, t: a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(core.EpsDenoiser(eps_model, ac)(x, sigma), x0, atol=1e-10)
    assert torch.allclose(core.VDenoiser(v_model, ac)(x, sigma), x0, atol=1e-10)
    assert abs(float(sched.timestep(sigma)) - 400.0) < 1e-6


def test_chunked_decode_equals_whole_decode_for_several_samples():
    from core_fixtures import TinyDecoder
    dec = TinyDecoder()
    z = torch.randn(2 * 5, 3, 4, 4, dtype=torch.float64)
    layout = core.Layout(samples=2)
    whole = dec(z)
    for chunk in (1, 2, 3, 5):
        assert torch.allclose(core.chunked_decode(dec, z, chunk, layout), whole, atol=1e-14)
    z5 = z.reshape(2, 5, 3, 4, 4)
    dec5 = lambda t: dec(t.flatten(0, 1)).reshape(t.shape[0], t.shape[1], 3, 8, 8)
    assert torch.allclose(core.chunked_decode(dec5, z5, 2, core.Layout(2, frame_dim=1)), whole.reshape(2, 5, 3, 8, 8))


def test_strength_schedules_have_mean_one():
    for kind in ("constant", "increasing", "decreasing"):
        w = core.strength_schedule(kind, 7)
        assert abs(float(w.mean()) - 1) < 1e-12
    assert core.strength_schedule("increasing", 3)[0] < core.strength_schedule("increasing", 3)[2]


def _run(method, samples=2, seed=0, **kw):
    denoise, loss, layout, sigmas, x = video_problem(samples=samples, frames=4)
    return core.sample(denoise, x, sigmas[1:], method=method, loss=loss, layout=layout,
                     generator=torch.Generator().manual_seed(seed), **kw), loss


def test_same_seed_same_result_bit_for_bit():
    a, _ = _run(core.Titan(guess=core.RandomGuess(), lookahead=2))
    b, _ = _run(core.Titan(guess=core.RandomGuess(), lookahead=2))
    c, _ = _run(core.Titan(guess=core.RandomGuess(), lookahead=2), seed=1)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_step_noise_does_not_depend_on_guidance_draws():
    """eta > 0: guidance at strength 0 draws tangents but must leave the ancestral noise, hence x, unchanged."""
    denoise, loss, layout, sigmas, x = video_problem(samples=2, frames=4)
    runs = {}
    for name, method in (("plain", None), ("zero_strength", core.Titan(guess=core.RandomGuess(k=2), strength=0.0,
                                                                      optimizer="sgd"))):
        runs[name] = core.sample(denoise, x.clone(), sigmas, method, loss=loss, layout=layout, eta=1.0,
                               generator=torch.Generator().manual_seed(4)).x
    # equal up to the update's round trip through the normalised latent (a shifted noise stream differs by O(1))
    assert torch.allclose(runs["plain"], runs["zero_strength"], rtol=1e-12, atol=1e-12)
    other = core.sample(denoise, x.clone(), sigmas, None, loss=loss, layout=layout, eta=1.0,
                      generator=torch.Generator().manual_seed(5)).x
    assert not torch.equal(runs["plain"], other)  # the step noise still follows the seed


def test_non_finite_loss_skips_the_update_and_never_writes_nan():
    denoise, loss, layout, sigmas, x = video_problem()
    bad = lambda x0, frame_indices=None, per_frame=False: loss(x0) * float("nan")
    plain = core.sample(denoise, x, sigmas[1:], layout=layout)
    with pytest.warns(UserWarning, match="non-finite"):
        guided = core.sample(denoise, x, sigmas[1:], method=core.Titan(guess=core.ScoreGuess()), loss=bad, layout=layout)
    assert torch.isfinite(guided.x).all()
    assert torch.equal(guided.x, plain.x)
    assert all(r["skipped"] for r in guided.reports)


def test_guidance_window_and_iterations():
    method = core.Titan(guess=core.ScoreGuess(), start=0.4, end=0.8, iterations=2)
    result, _ = _run(method)
    assert [r["step"] for r in result.reports] == [2, 3]
    assert all(len(r["loss"]) == 2 for r in result.reports)


def test_bad_knobs_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="optimizer"):
        core.Titan(optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule"):
        core.Titan(schedule="zigzag")
    with pytest.raises(ValueError, match="window"):
        _run(core.Titan(start=0.8, end=0.2))
    with pytest.raises(ValueError, match="samples"):
        core.Layout(samples=3).check(torch.zeros(4, 2))


def test_guidance_core_never_imports_comfy():
    for path in (ROOT / "guidance_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes")
                           for n in names), f"{path} imports {names}"
    code = "import sys, guidance_core; sys.exit(any(m.split('.')[0].startswith('comfy') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_every_public_function_has_a_docstring():
    import inspect
    missing = []
    for name in core.__all__:
        obj = getattr(core, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(name)
            if inspect.isclass(obj):
                missing += [f"{name}.{m}" for m, f in vars(obj).items()
                            if inspect.isfunction(f) and not m.startswith("_") and not (f.__doc__ or "").strip()
                            and not any(m in vars(b) for b in obj.__mro__[1:])]
    assert not missing, missing


def test_forward_ad_scope_op_fixes_are_exact_and_restored():
    import torch.nn.functional as F
    original_gn, original_ln = F.group_norm, F.layer_norm
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    tangent = torch.randn(2, 4, 4, 8, dtype=torch.float64).permute(0, 3, 1, 2)  # strided tangent
    ref = torch.func.jvp(lambda t: F.group_norm(t, 4), (x,), (tangent.contiguous(),))
    with core.forward_ad_attention():
        got = torch.func.jvp(lambda t: F.group_norm(t, 4), (x,), (tangent,))
        half = torch.randn(3, 16).bfloat16()
        weight, bias = torch.randn(16).bfloat16(), torch.randn(16).bfloat16()
        out = F.layer_norm(half, (16,), weight, bias)  # no tangent: the builtin norm, untouched
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, original_ln(half, (16,), weight, bias))
    assert torch.allclose(got[0], ref[0]) and torch.allclose(got[1], ref[1], rtol=1e-12, atol=1e-12)
    assert F.group_norm is original_gn and F.layer_norm is original_ln
    with pytest.raises(RuntimeError, match="boom"), core.forward_ad_attention():
        raise RuntimeError("boom")
    assert F.group_norm is original_gn and F.layer_norm is original_ln


def test_lean_norm_rules_equal_the_builtin_rules_and_autograd():
    """group_norm / layer_norm / rms_norm inside the scope: value and tangent equal the builtin rule's (float64,
    random inputs, with and without affine parameters, strided tangents, video-shaped inputs) and autograd's."""
    import torch.nn.functional as F
    from guidance_core.forward_ad import rules
    g = torch.Generator().manual_seed(3)
    rand = (lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64))
    x5, x3 = rand(2, 8, 3, 4, 5), rand(2, 6, 16)
    w8, b8, w16, b16 = rand(8), rand(8), rand(16), rand(16)
    cases = [
        (lambda t: F.group_norm(t, 4, w8, b8, 1e-5), x5),
        (lambda t: F.group_norm(t, 2), x5[:, :, 0]),
        (lambda t: F.layer_norm(t, (16,), w16, b16), x3),
        (lambda t: F.layer_norm(t, [6, 16], None, None, 1e-6), x3),
        (lambda t: F.rms_norm(t, (16,), w16, 1e-6), x3),
        (lambda t: F.rms_norm(t, [16]), x3),
    ]
    for norm, x in cases:
        tangent = rand(*x.shape[::-1]).permute(*range(x.dim() - 1, -1, -1))  # strided, as after a transpose
        ref = torch.func.jvp(norm, (x,), (tangent.contiguous(),))
        with core.forward_ad_attention():
            assert F.group_norm is rules.LEAN_NORMS["group_norm"]
            got = torch.func.jvp(norm, (x,), (tangent,))
        assert torch.allclose(got[0], ref[0], rtol=1e-12, atol=1e-12)
        assert torch.allclose(got[1], ref[1], rtol=1e-10, atol=1e-10)
        xr = x.clone().requires_grad_()
        weights = rand(*x.shape)
        (grad,) = torch.autograd.grad((norm(xr) * weights).sum(), xr)
        assert torch.allclose((got[1] * weights).sum(), (grad * tangent).sum(), rtol=1e-9)
    assert F.group_norm is rules._norm_builtin["group_norm"]


def test_lean_norm_rules_keep_half_dtypes_and_dispatch_fewer_ops():
    """Half inputs: value and tangent in the input's dtype (CUDA's fused builtin rules gave a float32 tangent, which
    SDPA refused inside an H200 JVP of fp16 Wan 2.1), close to float64; the group_norm JVP dispatches under a
    quarter of the builtin rule's aten ops (37 against 187 on PyTorch 2.9)."""
    import contextlib
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile
    norms = (lambda a, w: F.rms_norm(a, (16,), w, 1e-6), lambda a, w: F.layer_norm(a, (16,), w, w),
             lambda a, w: F.group_norm(a.reshape(3, 16, 1), 4, w, w))
    for dtype in (torch.bfloat16, torch.float16):
        x, t, w = torch.randn(3, 16).to(dtype), torch.randn(3, 16).to(dtype), torch.randn(16).to(dtype)
        for norm in norms:
            with core.forward_ad_attention():
                out, out_t = torch.func.jvp(lambda a: norm(a, w), (x,), (t,))
            ref, ref_t = torch.func.jvp(lambda a: norm(a, w.double()), (x.double(),), (t.double(),))
            assert out.dtype == out_t.dtype == dtype
            assert torch.allclose(out.double(), ref, atol=0.05) and torch.allclose(out_t.double(), ref_t, atol=0.1)

    x, t = torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8)
    counts = []
    for scope in (contextlib.nullcontext, core.forward_ad_attention):
        with scope(), profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.func.jvp(lambda a: F.group_norm(a, 8, torch.ones(64), torch.zeros(64)), (x,), (t,))
        counts.append(sum(1 for e in prof.events() if e.name.startswith("aten::")))
    assert counts[1] * 4 < counts[0], counts
    # the affine part rides in the value's norm kernel, as in the builtin: no separate scale-and-shift kernel,
    # one product for the tangent's scale
    import collections
    for norm in (lambda a: F.group_norm(a, 8, torch.rand(64), torch.rand(64)),
                 lambda a: F.layer_norm(a, (8,), torch.rand(8), torch.rand(8))):
        with core.forward_ad_attention(), profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.func.jvp(norm, (x,), (t,))
        names = collections.Counter(e.name for e in prof.events())
        assert names["aten::addcmul"] == names["aten::add"] == 0 and names["aten::mul"] == 1, names
