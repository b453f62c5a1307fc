"""Baselines (FreeDoM, MPGD, TFG, DOODL) against exact references on 2-D toys, in float64 on CPU.

The toy denoiser is the exact Tweedie estimate of a Gaussian mixture on two rings (radius 1 and 0.5), so
x0(x) is known in closed form; the objective (x^2 + y^2 - 0.3)^2 prefers the inner ring.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import guidance_core as core
from core_fixtures import video_problem
from guidance_core.baselines import DOODL, MPGD, TFG, FreeDoM
from guidance_core.baselines.tfg import smoothed_loss, tfg_schedule
from guidance_core.sampling import SamplingContext

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run far faster on one thread, above all on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Rings:
    """Exact E[x0 | x] for a mixture of N(mu_k, s^2 I): 6 means on the unit circle, 3 at radius 0.5."""

    def __init__(self, s: float = 0.05):
        outer = torch.arange(6, dtype=F64) * (2 * math.pi / 6)
        inner = torch.arange(3, dtype=F64) * (2 * math.pi / 3) + 0.3
        self.means = torch.cat([torch.stack([outer.cos(), outer.sin()], 1),
                                0.5 * torch.stack([inner.cos(), inner.sin()], 1)])
        self.s2 = s * s

    def __call__(self, x, sigma):
        var = self.s2 + sigma**2
        d = x[:, None, :] - self.means[None]
        r = torch.softmax(-(d**2).sum(-1) / (2 * var), dim=1)
        return (r[..., None] * (self.means[None] + (self.s2 / var) * d)).sum(1)


class TinyMLP(nn.Module):
    """Random eps-model (2 hidden layers of 64, ReLU) on z = x / sqrt(1 + sigma^2), as a k-diffusion denoiser."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).double()

    def forward(self, x, sigma):
        z = x * core.vp_input_scale(sigma)
        eps = self.net(torch.cat([z, sigma.log().expand(len(x), 1)], 1))
        return x - sigma * eps


def ring_loss(x0, frame_indices=None, per_frame=False):
    """(x^2 + y^2 - 0.3)^2 per point."""
    return ((x0**2).sum(1) - 0.3) ** 2


def ring_grad(x0):
    """Closed-form gradient of ring_loss."""
    return 4 * ((x0**2).sum(1, keepdim=True) - 0.3) * x0


def sigmas_for(steps, high=20.0, low=0.02):
    """Geometric sigmas from `high` to `low`, then 0."""
    return torch.cat([torch.logspace(math.log10(high), math.log10(low), steps, dtype=F64), torch.zeros(1, dtype=F64)])


def run(method, points=128, steps=15, seed=0, method_seed=None, denoise=None, loss=ring_loss, eta=0.0):
    """Sample `points` 2-D points; the initial noise comes from `seed`, the methods' randomness from `method_seed`."""
    sigmas = sigmas_for(steps)
    x = torch.randn(points, 2, dtype=F64, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    gen = torch.Generator().manual_seed(seed if method_seed is None else method_seed)
    return core.sample(denoise or Rings(), x, sigmas, method, loss=loss, layout=core.Layout(samples=points),
                     generator=gen, eta=eta)


def context(points=4, steps=15, denoise=None, loss=ring_loss, seed=0):
    """A sampling context and a latent at sigmas[5] for single-step checks."""
    sigmas = sigmas_for(steps)
    ctx = SamplingContext(denoise or Rings(), sigmas, loss=loss, layout=core.Layout(samples=points),
                          generator=torch.Generator().manual_seed(seed))
    x = torch.randn(points, 2, dtype=F64, generator=torch.Generator().manual_seed(seed + 1)) * sigmas[5]
    return ctx, x


# ---- all baselines ------------------------------------------------------------------------------------------
LOWERING = {
    "freedom": (lambda: FreeDoM(rho=0.05, repeats=3), {}),
    "mpgd": (lambda: MPGD(scale=0.5), {}),
    "tfg": (lambda: TFG(rho=0.05, mu=0.5, gamma=0.01, n_recur=2), {}),
    # EDICT needs small steps (see doodl.py); clipped steps as the authors use
    "doodl": (lambda: DOODL(iterations=8, lr=10.0, clip_value=0.05, renormalize=False), {"steps": 40}),
}


@pytest.mark.parametrize("name", list(LOWERING))
def test_each_baseline_lowers_the_objective_against_unguided_at_the_same_seed(name):
    make, options = LOWERING[name]
    unguided = ring_loss(run(None, **options).x).mean()
    result = run(make(), **options)
    guided = ring_loss(result.x).mean()
    assert torch.isfinite(result.x).all()
    assert guided < 0.6 * unguided, (name, float(guided), float(unguided))
    assert result.reports and all(r["skipped"] is None for r in result.reports)


RANDOMISED = {
    "freedom_time_travel": lambda: FreeDoM(rho=0.05, repeats=2, travel_start=0.0, travel_end=1.0),
    "mpgd_eta": lambda: MPGD(scale=0.5),
    "tfg_implicit_dynamics": lambda: TFG(rho=0.05, mu=0.5, gamma=0.1, n_recur=2),
    "doodl_perturbed": lambda: DOODL(iterations=2, lr=1.0, clip_value=0.05, perturbation=1e-2),
}


@pytest.mark.parametrize("name", list(RANDOMISED))
def test_same_seed_is_bit_identical_and_the_generator_drives_the_randomness(name):
    options = {"points": 16, "steps": 12, "eta": 0.5 if name == "mpgd_eta" else 0.0}
    first = run(RANDOMISED[name](), method_seed=7, **options).x
    again = run(RANDOMISED[name](), method_seed=7, **options).x
    other = run(RANDOMISED[name](), method_seed=8, **options).x  # same initial noise, other generator
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("make", [lambda: FreeDoM(rho=0.05, repeats=2, travel_start=0.0), lambda: MPGD(),
                                  lambda: TFG(gamma=0.1, n_recur=2)])
def test_without_a_loss_every_per_step_baseline_is_the_unguided_sampler(make):
    assert torch.equal(run(make(), loss=None, points=16, eta=0.3).x, run(None, loss=None, points=16, eta=0.3).x)


def test_samples_are_guided_independently_on_a_video_latent():
    """(B*F, C, H, W) latents with two samples: each sample's result equals guiding it alone."""
    denoise, loss, layout, sigmas, x = video_problem(samples=2, frames=4, chunk=2)
    denoise1, loss1, layout1, _, _ = video_problem(samples=1, frames=4, chunk=2)
    methods = [lambda: FreeDoM(rho=0.5), lambda: MPGD(scale=0.5, iterations=2), lambda: TFG(gamma=0.0),
               lambda: DOODL(iterations=2, lr=1.0, perturbation=0.0)]
    for make in methods:
        both = core.sample(denoise, x, sigmas, make(), loss=loss, layout=layout, generator=torch.Generator()).x
        for s in range(2):
            alone = core.sample(denoise1, x[4 * s:4 * s + 4], sigmas, make(), loss=loss1, layout=layout1,
                              generator=torch.Generator()).x
            torch.testing.assert_close(both[4 * s:4 * s + 4], alone, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(both, core.sample(denoise, x, sigmas, None, layout=layout).x)


def test_bad_hyperparameters_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="schedule"):
        FreeDoM(rho_schedule="sometimes")
    with pytest.raises(ValueError, match="repeats"):
        FreeDoM(repeats=0)
    with pytest.raises(ValueError, match="both encode and decode"):
        MPGD(encode=lambda t: t)
    with pytest.raises(ValueError, match="N_recur"):
        TFG(n_recur=0)
    with pytest.raises(ValueError, match="rho, mu and gamma"):
        TFG(mu=-1.0)
    with pytest.raises(ValueError, match="mixing weight"):
        DOODL(mix=0.4)
    with pytest.raises(ValueError, match="deterministic DDIM"):
        run(DOODL(iterations=0), points=4, eta=0.5)
    ctx, x = context()
    ctx.loss = lambda x0, **_: x0.sum()  # a scalar for 4 samples
    with pytest.raises(ValueError, match="one value per sample"):
        MPGD().guide(x, 5, ctx)


# ---- FreeDoM --------------------------------------------------------------------------------------------------
def test_freedom_gradient_is_autograd_through_tweedie_checked_by_finite_differences():
    ctx, x = context()
    i, sigma = 5, context()[0].sigmas[5]
    loss, grad, x0 = FreeDoM().gradient(x, i, ctx)
    f = lambda t: ring_loss(ctx.denoise(t, sigma)).sum()  # noqa: E731
    h = 1e-6
    numeric = torch.zeros_like(x)
    for idx in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[idx] = h
        numeric.view(-1)[idx] = (f(x + e.view_as(x)) - f(x - e.view_as(x))) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss, ring_loss(ctx.denoise(x, sigma)))
    assert grad.abs().max() > 1e-3  # a real gradient, not a vanishing one


def test_freedom_step_is_the_plain_step_minus_rho_t_times_the_gradient():
    ctx, x = context()
    i = 5
    c, c_next = ctx.latent_scale(ctx.sigmas[i]), ctx.latent_scale(ctx.sigmas[i + 1])
    _, grad, _ = FreeDoM().gradient(x, i, ctx)
    x_next, report = FreeDoM(rho=0.3).guide(x, i, ctx)
    # rho_t = rho * sqrt(abar_t) = rho * c_t acting on z = c x
    torch.testing.assert_close(x_next, ctx.plain_step(x, i) - 0.3 * c * grad / (c * c_next), rtol=1e-12, atol=1e-14)
    assert report["rho"] == pytest.approx(0.3 * float(c))
    checkpointed, _ = FreeDoM(rho=0.3, checkpointed=True).guide(x, i, ctx)
    torch.testing.assert_close(checkpointed, x_next, rtol=1e-13, atol=1e-15)


def test_freedom_time_travel_redoes_the_step_inside_the_travel_window_only():
    result = run(FreeDoM(rho=0.05, repeats=3, travel_start=0.2, travel_end=0.4), points=8, steps=10)
    repeats = {r["step"]: r["repeats"] for r in result.reports}
    assert repeats == {i: (3 if i in (2, 3) else 1) for i in range(10)}
    assert all(len(r["loss"]) == r["repeats"] for r in result.reports)


# ---- MPGD -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["constant", "inverse_sqrt_alpha"])
def test_mpgd_moves_the_clean_estimate_along_minus_the_gradient_wrt_x0(schedule):
    ctx, x = context()
    i = 5
    x0 = ctx.denoise(x, ctx.sigmas[i])
    c_t = 0.3 if schedule == "constant" else 0.3 / float(ctx.latent_scale(ctx.sigmas[i]))
    x_next, report = MPGD(scale=0.3, schedule=schedule).guide(x, i, ctx)
    # DDIM with x0' and the model's noise: x_next - unguided = x0' - x0 = -c_t grad_{x0} L (no denoiser Jacobian)
    torch.testing.assert_close(x_next - ctx.plain_step(x, i), -c_t * ring_grad(x0), rtol=1e-10, atol=1e-13)
    assert report["step_size"] == pytest.approx(c_t)


def test_mpgd_iterations_and_autoencoder_projection():
    ctx, x = context()
    i = 5
    x0 = ctx.denoise(x, ctx.sigmas[i])
    decode = lambda z: z[:, :1] * 2.0  # noqa: E731  latent -> "pixels" (keeps the first coordinate)
    encode = lambda p: torch.cat([p / 2.0, torch.zeros_like(p)], 1)  # noqa: E731  back to a latent, y = 0
    expected = x0
    for _ in range(2):
        expected = expected - 0.2 * ring_grad(expected)
        expected = encode(decode(expected))
    x_next, report = MPGD(scale=0.2, iterations=2, encode=encode, decode=decode).guide(x, i, ctx)
    torch.testing.assert_close(x_next - ctx.plain_step(x, i), expected - x0, rtol=1e-10, atol=1e-13)
    assert report["projected"] and len(report["loss"]) == 2


# ---- TFG ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_tfg_without_guidance_is_the_unguided_sampler_bit_for_bit(eta):
    tfg = TFG(rho=0.0, mu=0.0, gamma=0.0, n_recur=1)
    assert torch.equal(run(tfg, points=32, eta=eta).x, run(None, points=32, eta=eta).x)


def test_tfg_mean_guidance_alone_is_mpgd():
    tfg = TFG(rho=0.0, mu=0.4, gamma=0.0, mu_schedule="constant", n_iter=2)
    assert torch.equal(run(tfg, points=32).x, run(MPGD(scale=0.4, iterations=2), points=32).x)


def test_tfg_variance_guidance_step_is_the_vp_formula_in_k_diffusion_form():
    ctx, x = context()
    i = 5
    c = ctx.latent_scale(ctx.sigmas[i])
    _, grad, _ = FreeDoM().gradient(x, i, ctx)
    x_next, _ = TFG(rho=0.3, mu=0.0, gamma=0.0, rho_schedule="constant").guide(x, i, ctx)
    # VP: z_prev += -rho grad_z L / sqrt(alpha_t)  <=>  x_next += -rho grad_x L / c_t^2
    torch.testing.assert_close(x_next, ctx.plain_step(x, i) - 0.3 * grad / c**2, rtol=1e-12, atol=1e-14)


def test_tfg_implicit_dynamics_is_the_log_mean_exp_smoothed_loss():
    ctx, x = context()
    x0 = ctx.denoise(x, ctx.sigmas[5])
    noises = [0.1 * torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    direct = -torch.log(torch.stack([torch.exp(-ring_loss(x0 + n)) for n in noises]).mean(0))
    torch.testing.assert_close(smoothed_loss(ctx, x0, noises), direct, rtol=1e-12, atol=1e-15)
    assert torch.equal(smoothed_loss(ctx, x0, None), ring_loss(x0))
    rho_t, mu_t, gamma_t = TFG(gamma=0.1).strengths(5, ctx)
    assert gamma_t == pytest.approx(0.1 * math.sqrt(1 - float(ctx.latent_scale(ctx.sigmas[5])) ** 2))


def test_tfg_schedules_follow_alpha_t_and_are_normalised_to_mean_one():
    ctx, _ = context()
    abar = core.vp_input_scale(ctx.sigmas) ** 2
    alpha = abar[:-1] / abar[1:]
    for kind, raw in [("increase", alpha), ("decrease", 1 - alpha), ("constant", torch.ones_like(alpha))]:
        w = tfg_schedule(kind, ctx)
        assert w.mean() == pytest.approx(1.0)
        torch.testing.assert_close(w, raw / raw.mean())
    torch.testing.assert_close(tfg_schedule("increasing", ctx), tfg_schedule("increase", ctx))
    with pytest.raises(ValueError, match="unknown schedule"):
        tfg_schedule("up", ctx)


def test_tfg_recurrence_and_iterations_are_counted_in_the_report():
    result = run(TFG(rho=0.05, mu=0.1, n_recur=3, n_iter=2), points=8, steps=6)
    assert len(result.reports) == 6 and all(r["skipped"] is None for r in result.reports)
    assert all(len(r["loss"]) == 3 * (1 + 2) for r in result.reports)


# ---- DOODL ----------------------------------------------------------------------------------------------------
def test_edict_chain_inverts_to_the_initial_pair_in_float64():
    ctx, _ = context(points=5, steps=12, denoise=TinyMLP())
    ctx.sigmas = sigmas_for(12, high=5.0, low=0.05)
    gen = torch.Generator().manual_seed(3)
    x, y = (torch.randn(5, 2, dtype=F64, generator=gen) * 5.0 for _ in range(2))  # an untied pair
    doodl = DOODL()
    x_end, y_end = doodl.run_chain(x, y, ctx)
    assert (x_end - x).abs().max() > 1.0  # the chain really moved
    x_back, y_back = doodl.invert_chain(x_end, y_end, ctx)
    assert (x_back - x).abs().max() < 1e-10 and (y_back - y).abs().max() < 1e-10


def test_doodl_gradient_equals_plain_autograd_through_the_same_edict_chain():
    ctx, _ = context(points=3, steps=10, denoise=TinyMLP(seed=1))
    ctx.sigmas = sigmas_for(10, high=5.0, low=0.05)
    latent = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(4)) * 5.0
    doodl = DOODL()
    loss, grad, x_end, error = doodl.gradient(latent, ctx)
    leaf = latent.clone().requires_grad_(True)
    x, y = leaf, leaf
    for i in range(ctx.steps):
        x, y = doodl.edict_step(x, y, i, ctx)
    reference_loss = (ring_loss(x) + ring_loss(y)) / 2
    (reference,) = torch.autograd.grad(reference_loss.sum(), leaf)
    torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss, reference_loss.detach())
    torch.testing.assert_close(x_end, x.detach())
    assert error < 1e-10 and reference.abs().max() > 1e-3


def test_doodl_update_is_clipped_momentum_sgd_renormalised_to_the_initial_norm():
    ctx, _ = context(points=6, steps=10)
    ctx.sigmas = sigmas_for(10, high=5.0, low=0.05)
    latent = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(5)) * 5.0
    doodl = DOODL(iterations=2, lr=0.7, clip_value=0.05, momentum=0.9, perturbation=0.0, renormalize=True)
    optimised, reports = doodl.optimize(latent, ctx)
    scale = ctx.latent_scale(ctx.sigmas[0])
    z, norm0 = latent * scale, (latent * scale).norm(dim=1, keepdim=True)
    velocity = None
    for _ in range(2):
        grad_z = doodl.gradient(z / scale, ctx)[1] / scale
        step = (-0.7 * grad_z).clamp(-0.05, 0.05)
        velocity = step if velocity is None else 0.9 * velocity + step
        z = z + velocity
        z = z * norm0 / z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(optimised, z / scale, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close((optimised * scale).norm(dim=1, keepdim=True), norm0)
    assert not torch.allclose(optimised, latent)
    assert [r["iteration"] for r in reports] == [0, 1] and all(r["reconstruction_error"] < 1e-10 for r in reports)


def test_baselines_run_under_inference_mode_like_a_host_and_match():
    """ComfyUI samples inside torch.inference_mode(); its sigmas and latents are inference tensors."""
    denoise, loss, layout, sigmas, x = video_problem(samples=1, frames=4, chunk=2)
    methods = [lambda: FreeDoM(rho=0.5, repeats=2, travel_start=0.0), lambda: MPGD(scale=0.5),
               lambda: TFG(gamma=0.1, n_recur=2), lambda: DOODL(iterations=1, lr=1.0)]
    for make in methods:
        outside = core.sample(denoise, x, sigmas, make(), loss=loss, layout=layout,
                            generator=torch.Generator().manual_seed(0)).x
        with torch.inference_mode():
            inside = core.sample(denoise, x.clone(), sigmas.clone(), make(), loss=loss, layout=layout,
                               generator=torch.Generator().manual_seed(0)).x
        assert inside.is_inference() and torch.equal(inside, outside)
