"""Update rules (guidance_core/update.py), the normalised option of the baselines, the backward-free guesses and
the realism read-outs: each against a reference written out here or torch.optim's own Adam, on random float64."""
import math

import pytest
import torch

import guidance_core as gc
from core_fixtures import video_problem
from embedded.realism import frame_difference, high_frequency_energy, realism_ratios
from guidance_core.update import OPTIMIZERS, Adam, apply_update, make_optimizer

GEN = torch.Generator().manual_seed(0)


def rand(*shape, scale=1.0):
    return scale * torch.randn(*shape, dtype=torch.float64, generator=GEN)


def per_video_norms(t, layout):
    return layout.flat(t).norm(dim=1)


def test_normalized_step_moves_every_video_by_strength_times_its_norm_against_the_gradient():
    layout = gc.Layout(samples=3, frame_dim=0)
    z = torch.cat([rand(2, 4, 5, 5, scale=s) for s in (0.5, 1.0, 4.0)])  # videos of very different norms
    grad = torch.cat([rand(2, 4, 5, 5, scale=s) for s in (1e-6, 1.0, 30.0)])
    delta = make_optimizer("normalized", 0.05, layout).delta(z, grad, 0.05)
    assert torch.allclose(per_video_norms(delta, layout), 0.05 * per_video_norms(z, layout), rtol=1e-12)
    cos = layout.dot(delta, -grad) / (per_video_norms(delta, layout) * per_video_norms(grad, layout))
    assert torch.allclose(cos, torch.ones(3, dtype=torch.float64), atol=1e-12)
    zero = make_optimizer("normalized", 0.05, layout).delta(z, torch.zeros_like(grad), 0.05)
    assert torch.equal(zero, torch.zeros_like(zero))  # no gradient, no move (no 0/0)


def test_normalized_relative_scales_each_video_by_its_gradient_norm_over_its_history():
    layout = gc.Layout(samples=2, frame_dim=0)
    rule = make_optimizer("normalized_relative", 0.1, layout)
    z = rand(4, 3, 4, 4)
    norms = []
    for scales in ((1.0, 2.0), (0.5, 2.0), (0.25, 4.0)):  # video 0 fades, video 1 grows
        grad = torch.cat([rand(2, 3, 4, 4) for _ in scales])
        grad = grad * layout.per_sample(torch.tensor(scales, dtype=torch.float64) / per_video_norms(grad, layout), grad)
        norms.append(torch.tensor(scales, dtype=torch.float64))
        delta = rule.delta(z, grad, 0.1)
        history = torch.stack(norms)
        expected_ratio = history[-1] / history.pow(2).mean(0).sqrt()
        assert torch.allclose(per_video_norms(delta, layout), 0.1 * per_video_norms(z, layout) * expected_ratio,
                              rtol=1e-12)
    assert expected_ratio[0] < 1 < expected_ratio[1]


@pytest.mark.parametrize("iterations_per_step", [1, 3])
def test_adam_matches_torch_optim_adam_and_per_step_adam_restarts(iterations_per_step):
    steps, lr = 4, 0.03
    grads = [rand(2, 3, 4, 4) for _ in range(steps * iterations_per_step)]
    param = torch.zeros(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([param], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    persistent, per_step = Adam(per_step=False), Adam(per_step=True)
    z = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    for step in range(steps):
        persistent.begin_step()
        per_step.begin_step()
        fresh = Adam()
        for it in range(iterations_per_step):
            g = grads[step * iterations_per_step + it]
            param.grad = g.clone()
            before = param.detach().clone()
            reference.step()
            assert torch.allclose(persistent.delta(z, g, lr), param.detach() - before, rtol=1e-10, atol=1e-15)
            assert torch.equal(per_step.delta(z, g, lr), fresh.delta(z, g, lr))  # restarted every sampler step
    # one iteration of a fresh Adam is lr * sign(g) up to eps: the dense perturbation the default avoids
    g = rand(2, 3, 4, 4)
    assert torch.allclose(Adam(per_step=True).delta(z, g, lr), -lr * g / (g.abs() + 1e-8), rtol=1e-12)


def test_sgd_and_bad_rules_and_strengths():
    g = rand(2, 3)
    assert torch.equal(make_optimizer("sgd", 0.3).delta(g, g, 0.3), -0.3 * g)
    for bad in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="finite number >= 0"):
            make_optimizer("normalized", bad)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lion", 0.1)
    with pytest.raises(ValueError, match="finite number >= 0"):
        gc.Titan(strength=float("nan"))


@pytest.mark.parametrize("rule", OPTIMIZERS)
def test_strength_zero_returns_exactly_the_unguided_sample(rule):
    denoise, loss, layout, sigmas, x = video_problem(samples=2)
    unguided = gc.sample(denoise, x, sigmas, None, loss=loss, layout=layout)
    guided = gc.sample(denoise, x, sigmas, gc.Titan(strength=0.0, optimizer=rule, end=1.0), loss=loss, layout=layout,
                       generator=torch.Generator().manual_seed(1))
    assert len(guided.reports) == len(sigmas) - 1  # it did run every guided step
    assert torch.equal(guided.x, unguided.x)


def test_apply_update_goes_through_the_normalised_latent():
    x, g, scale = rand(3, 4), rand(3, 4), torch.tensor(0.3, dtype=torch.float64)
    out = apply_update(x, g, make_optimizer("sgd", 0.2), 0.2, scale)
    assert torch.allclose(out, (scale * x - 0.2 * g / scale) / scale, rtol=1e-12)


def test_shipped_defaults_are_the_normalised_relative_rule():
    titan = gc.Titan()
    assert (titan.optimizer, titan.strength, titan.end, titan.lookahead) == ("normalized_relative", 0.06, 0.75, 1)


@pytest.mark.parametrize("method", ["freedom", "mpgd", "tfg"])
def test_baselines_normalised_option_moves_each_video_by_rho_times_its_norm(method):
    denoise, loss, layout, sigmas, x = video_problem(samples=2)
    ctx = gc.SamplingContext(denoise, sigmas, loss=loss, layout=layout, generator=torch.Generator().manual_seed(0))
    plain_next = ctx.plain_step(x, 1)
    if method == "freedom":
        guided, _ = gc.baselines.FreeDoM(rho=0.04, rho_schedule="constant", update="normalized").guide(x, 1, ctx)
        c_next = ctx.latent_scale(sigmas[2])
        moved = c_next * (guided - plain_next)
        assert torch.allclose(per_video_norms(moved, layout), 0.04 * per_video_norms(c_next * plain_next, layout),
                              rtol=1e-10)
    elif method == "mpgd":
        mpgd = gc.baselines.MPGD(scale=0.04, update="normalized")
        with torch.no_grad():
            x0 = denoise(x, sigmas[1])
        guided, _ = mpgd.guide(x, 1, ctx)
        # the DDIM step with x0' = x0 + d moves x_next by d: its norm is 0.04 ||x0|| per video
        assert torch.allclose(per_video_norms(guided - plain_next, layout), 0.04 * per_video_norms(x0, layout),
                              rtol=1e-8)
    else:
        tfg = gc.baselines.TFG(rho=0.04, mu=0.0, update="normalized", rho_schedule="constant", gamma=0.0)
        guided, _ = tfg.guide(x, 1, ctx)
        c_next = ctx.latent_scale(sigmas[2])
        moved = c_next * (guided - plain_next)
        assert torch.allclose(per_video_norms(moved, layout), 0.04 * per_video_norms(c_next * plain_next, layout),
                              rtol=1e-10)
    with pytest.raises(ValueError, match="unknown baseline update"):
        gc.baselines.FreeDoM(update="sign")


def test_smooth_random_guess_is_low_frequency_frame_correlated_and_has_gaussian_norm():
    layout = gc.Layout(samples=2, frame_dim=0)
    x = rand(2 * 8, 4, 16, 16)
    ctx = gc.GuessContext(x, torch.tensor(1.0), None, None, layout, torch.Generator().manual_seed(0))
    smooth = gc.SmoothRandomGuess(k=3, downscale=4, frame_correlation=0.9)(ctx)
    white = gc.RandomGuess(k=3)(ctx)
    assert smooth.shape == (3, *x.shape)
    d = layout.flat(x).shape[1]
    assert torch.allclose(torch.stack([per_video_norms(v, layout) for v in smooth]),
                          torch.full((3, 2), d**0.5, dtype=torch.float64), rtol=1e-12)

    def laplacian_energy(v):
        return high_frequency_energy(v.reshape(-1, 1, *v.shape[-3:]).float())

    assert laplacian_energy(smooth).mean() < 0.3 * laplacian_energy(white).mean()
    frames = smooth[0].reshape(2, 8, -1)
    between = torch.nn.functional.cosine_similarity(frames[:, 1:], frames[:, :-1], dim=-1).mean()
    frames_white = white[0].reshape(2, 8, -1)
    assert between > 0.5 > torch.nn.functional.cosine_similarity(frames_white[:, 1:], frames_white[:, :-1], dim=-1).abs().mean()


def test_momentum_guess_turns_towards_the_running_estimate():
    layout = gc.Layout(samples=2, frame_dim=0)
    x = rand(2 * 4, 3, 8, 8)
    memory = {}
    guess = gc.MomentumGuess(gc.RandomGuess(), random_weight=0.5, decay=0.9)
    ctx = gc.GuessContext(x, torch.tensor(1.0), None, None, layout, torch.Generator().manual_seed(0), memory)
    first = guess(ctx)[0]  # nothing remembered yet: the base tangent
    assert torch.allclose(per_video_norms(first, layout), torch.full((2,), layout.flat(x).shape[1] ** 0.5,
                                                                     dtype=torch.float64))
    g1, g2 = rand(*x.shape), rand(*x.shape)
    guess.after_estimate(memory, g1, layout)
    guess.after_estimate(memory, g2, layout)
    running = 0.9 * layout.normalize(g1) + layout.normalize(g2)
    v = guess(ctx)[0]
    cos = layout.dot(v, running) / (per_video_norms(v, layout) * per_video_norms(running, layout))
    assert torch.allclose(cos, torch.full((2,), math.cos(0.5 * math.pi / 2), dtype=torch.float64), atol=1e-10)


def test_titan_feeds_its_estimates_to_a_momentum_guess_per_run():
    denoise, loss, layout, sigmas, x = video_problem(samples=1)
    guess = gc.MomentumGuess(gc.RandomGuess())
    seen = []
    original = guess.after_estimate
    guess.after_estimate = lambda memory, g, lay: (seen.append(id(memory)), original(memory, g, lay))
    method = gc.Titan(guess=guess, end=1.0)
    gc.sample(denoise, x, sigmas, method, loss=loss, layout=layout, generator=torch.Generator().manual_seed(0))
    gc.sample(denoise, x, sigmas, method, loss=loss, layout=layout, generator=torch.Generator().manual_seed(0))
    steps = len(sigmas) - 1
    assert len(seen) == 2 * steps and len(set(seen[:steps])) == 1 and seen[0] != seen[steps]  # fresh per run


def test_realism_readouts_on_known_images():
    flat = torch.full((2, 3, 3, 8, 8), 0.5)
    assert torch.equal(high_frequency_energy(flat), torch.zeros(2))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2
    video = checker.float().expand(1, 3, 3, 8, 8)  # every interior pixel differs from its 4 neighbours by 1
    assert torch.allclose(high_frequency_energy(video), torch.tensor([4.0]))
    moving = torch.stack([torch.full((3, 4, 4), t / 10) for t in range(5)])[None]
    assert torch.allclose(frame_difference(moving), torch.tensor([0.1]))
    ratios = realism_ratios(video.expand(2, -1, -1, -1, -1) * 0.5 + 0.25, video.expand(2, -1, -1, -1, -1))
    assert ratios["hf_ratio"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="videos must be"):
        high_frequency_energy(torch.zeros(3, 8, 8))
