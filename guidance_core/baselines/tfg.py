"""TFG (Ye et al., NeurIPS 2024): the unified training-free guidance design space, behind TITAN's interface.

One guided step (their Alg. 1), for r in 1..N_recur:
  variance guidance  Delta_t = -rho_t grad_{z_t} L~(x0(z_t))   (backprop through the denoiser, like FreeDoM)
  mean guidance      x0 <- x0 - mu_t grad_{x0} L~(x0), N_iter times   (no denoiser backprop, like MPGD)
  implicit dynamics  L~(x0) = -log E_d exp(-L(x0 + gamma_t d)), d ~ N(0, I), Monte-Carlo over `mc_samples`
  step               DDIM step with the guided x0 (noise estimate unchanged) plus Delta_t / sqrt(alpha_t)
  recurrence         re-noise the result back to sigma_t with fresh noise and repeat.

Differences from the paper / their code: the latent lives in the k-diffusion convention x = z / c(sigma) with
c = ctx.latent_scale (c^2 = abar for VP models); every VP formula is converted exactly, so rho/mu/gamma and the
schedules mean what they mean in their code. The step is `ctx.plain_step` (DDIM with ctx.eta, or Heun, whose
correction then uses a fresh model call at the guided Euler point) rather than their DDIM-with-eta. Losses are
minimised (their log-probability is -loss). Their optional per-element gradient clipping (`clip_scale`, only
active for molecules) is not reproduced. Defaults are their config's (rho=mu=1, gamma=0.01, 4 MC samples,
"increase" schedules); the TITAN authors' video runs used rho=0.5, mu=2, gamma=0.1, 1 MC sample, N_recur=1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sampling import SamplingContext
from ..update import guided_steps
from .common import (BaselineKnobs, TFG_SCHEDULES, check_schedule, finite_or_warn, grad_of, gradient_step, new_report,
                     observe, record, renoise, sample_losses, tfg_schedule)
from ..steps import noise_like, with_checkpointing

GAMMA_SCHEDULES = ("decrease", "constant")


def smoothed_loss(ctx: SamplingContext, x0: Tensor, noises: list[Tensor] | None) -> Tensor:
    """L~(x0) = -log mean_k exp(-L(x0 + noise_k)) per sample; L(x0) itself when `noises` is None."""
    if noises is None:
        return sample_losses(ctx, x0)
    losses = torch.stack([sample_losses(ctx, x0 + n) for n in noises])  # (K, samples), one call per draw
    return -(torch.logsumexp(-losses, dim=0) - math.log(len(noises)))


@dataclass
class TFG(BaselineKnobs):
    """Training-Free Guidance: variance (rho), mean (mu), implicit dynamics (gamma), N_recur, N_iter.

    `n_recur` and `n_iter` are the paper's N_recur and N_iter; `mc_samples` is their `eps_bsz`. Guidance runs on
    the steps inside the window [start, end) (fractions of the steps); `checkpointed` recomputes the denoiser's
    activations in the backward pass of variance guidance.
    """

    knob = "'tfg_rho' or 'tfg_mu'"  # the widget that scales its updates (named when an update turns the latent non-finite)

    rho: float = 1.0
    mu: float = 1.0
    gamma: float = 0.01
    n_recur: int = 1
    n_iter: int = 1
    mc_samples: int = 4
    rho_schedule: str = "increase"
    mu_schedule: str = "increase"
    gamma_schedule: str = "decrease"
    checkpointed: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.n_recur < 1 or self.n_iter < 0 or self.mc_samples < 1:
            raise ValueError(f"need N_recur >= 1, N_iter >= 0 and mc_samples >= 1; got N_recur={self.n_recur}, "
                             f"N_iter={self.n_iter}, mc_samples={self.mc_samples}")
        if min(self.rho, self.mu, self.gamma) < 0:
            raise ValueError(f"rho, mu and gamma must be >= 0; got rho={self.rho}, mu={self.mu}, gamma={self.gamma}")
        check_schedule(self.rho_schedule, TFG_SCHEDULES)
        check_schedule(self.mu_schedule, TFG_SCHEDULES)
        check_schedule(self.gamma_schedule, GAMMA_SCHEDULES)

    def strengths(self, i: int, ctx: SamplingContext) -> tuple[float, float, float]:
        """(rho_t, mu_t, gamma_t) at step i."""
        rho_t = self.rho * float(tfg_schedule(self.rho_schedule, ctx)[i])
        mu_t = self.mu * float(tfg_schedule(self.mu_schedule, ctx)[i])
        c = float(ctx.latent_scale(ctx.sigmas[i]))
        gamma_t = self.gamma * (math.sqrt(max(1 - c * c, 0.0)) if self.gamma_schedule == "decrease" else 1.0)
        return rho_t, mu_t, gamma_t

    def mc_noise(self, x: Tensor, gamma_t: float, ctx: SamplingContext) -> list[Tensor] | None:
        """The implicit-dynamics perturbations gamma_t * d_k of x0 (None when gamma_t = 0: no smoothing)."""
        if gamma_t == 0:
            return None
        return [gamma_t * noise_like(x, ctx.generator) for _ in range(self.mc_samples)]

    def guide(self, x: Tensor, i: int, ctx: SamplingContext) -> tuple[Tensor, dict | None]:
        """Guide the latent at sigmas[i] and step to sigmas[i+1]."""
        if ctx.loss is None or i not in guided_steps(ctx.steps, self.start, self.end):
            return ctx.plain_step(x, i), None
        sigma = ctx.sigmas[i]
        rho_t, mu_t, gamma_t = self.strengths(i, ctx)
        report = new_report(i, ctx)
        report.update(rho=rho_t, mu=mu_t, gamma=gamma_t)
        denoise = self._denoiser(ctx)
        x_next = x
        for r in range(self.n_recur):
            noises = self.mc_noise(x, gamma_t, ctx)
            loss_fn = lambda x0: smoothed_loss(ctx, x0, noises)  # noqa: E731
            variance_grad = None
            if rho_t != 0:
                # clone: hosts build sigmas in inference mode, and those cannot be saved for backward
                loss, grad_x, x0 = grad_of(loss_fn, x, through=lambda t: denoise(t, sigma.clone()))
                record(report, loss, grad_x, ctx)
                observe(ctx, i, x, grad_x, self)
                if finite_or_warn(i, report, loss, grad_x):
                    variance_grad = grad_x
            else:
                with torch.no_grad():
                    x0 = ctx.denoise(x, sigma)
            x0_guided = x0
            for _ in range(self.n_iter if mu_t != 0 else 0):
                loss, grad_0, _ = grad_of(loss_fn, x0_guided)
                record(report, loss, grad_0, ctx)
                if not finite_or_warn(i, report, loss, grad_0):
                    break
                x0_guided = x0_guided + gradient_step(x0_guided, grad_0, mu_t, self.update, ctx)
            # DDIM with the guided x0 and the model's noise estimate: shift x by the same amount as x0
            x_next = ctx.plain_step(x + (x0_guided - x0), i, denoised=x0_guided)
            if variance_grad is not None:
                x_next = x_next + self.variance_step(x_next, variance_grad, rho_t, i, ctx)
            if r < self.n_recur - 1:
                x = renoise(x_next, i, ctx)
        return x_next, report

    def variance_step(self, x_next: Tensor, grad_x: Tensor, rho_t: float, i: int, ctx: SamplingContext) -> Tensor:
        """Delta_t in x: plain, VP z_prev += -rho_t grad_z L / sqrt(alpha_t), i.e. -rho_t grad_x L / c_t^2 in x = z / c;
        normalized, a step of rho_t times the norm of z_{t-1} = c_next x_next against the gradient."""
        if self.update == "plain":
            return -rho_t * grad_x / ctx.latent_scale(ctx.sigmas[i]) ** 2
        c_next = ctx.latent_scale(ctx.sigmas[i + 1])
        return gradient_step(c_next * x_next, grad_x, rho_t, self.update, ctx) / c_next

    def _denoiser(self, ctx: SamplingContext):
        """The denoiser, wrapped in activation checkpointing when asked."""
        return with_checkpointing(ctx.denoise) if self.checkpointed else ctx.denoise
