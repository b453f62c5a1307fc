"""DOODL (Wallace et al., 2023): optimise the initial noise through an exactly invertible EDICT sampler.

EDICT (Wallace et al., CVPR 2023) keeps two coupled chains (x, y). One step from sigma to sigma_next, with the
DDIM/Euler update a(u, v) = u + (sigma_next - sigma) eps(v, sigma) and eps(v) = (v - denoise(v, sigma)) / sigma:
  x' = a(x, y),  y' = a(y, x')          (the chain updated first alternates every step, as in DOODL's code)
  x'' = p x' + (1 - p) y',  y'' = p y' + (1 - p) x''        (mixing, p = 0.93)
Each half is invertible in closed form, so the inputs of a step can be rebuilt from its outputs. The loss is
taken at the end of both chains, J = (L(x_0) + L(y_0)) / 2, and its gradient with respect to the (tied) initial
latent is computed by walking the chain backwards: rebuild a step's inputs by inversion, recompute that step
with the graph and backpropagate through it alone. Memory is O(1) in the number of steps (one step's graph).

Each iteration then updates the normalised latent z = c(sigma_0) x as the authors do: g = clip(-lr grad_z J)
element-wise, momentum b <- 0.9 b + g, z <- z + b + perturbation * N(0, I), and z is rescaled to the norm of
the initial Gaussian draw (per sample), keeping it on the shell where Gaussian noise lives.

Differences from the paper / their code: k-diffusion convention (x = x0 + sigma noise; the EDICT step is
identical to theirs after dividing by sqrt(abar)); the two chains stay tied at the start (their default
`tied_latents`); the loss is the caller's (their CLIP / aesthetic losses used random crops). Their `grad_scale`
multiplies the loss and their step is -0.5 grad of the summed pair loss: `lr` = 0.5 * grad_scale here
(default 0.5 = their grad_scale 1). Their default is 50 iterations; ours is 10. Only deterministic steps
(euler / ddim, eta = 0) can be inverted. EDICT needs small steps: when sigma_next / sigma is far below 1 (few
steps over a wide sigma range, e.g. 15 steps from 20 to 0.02) the coupled chains drift apart and the sample
degrades; the authors used 50 steps. The final report's `chain_gap` (largest |x - y| at the end) shows it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sampling import SamplingContext
from ..denoiser import to_d
from ..steps import noise_like
from .common import sample_losses


@dataclass
class DOODL:
    """DOODL: gradient steps on the initial latent through an invertible EDICT sampler; `sample` returns x0."""

    knob = "'doodl_lr'"  # the widget that scales its updates (named when an update turns the latent non-finite)

    iterations: int = 10
    lr: float = 0.5
    mix: float = 0.93
    momentum: float = 0.9
    clip_value: float | None = 1e-3
    perturbation: float = 1e-4
    renormalize: bool = True

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"DOODL iterations must be >= 0, got {self.iterations}")
        if not 0.5 < self.mix <= 1.0:
            # p <= 0.5 makes the mixing layer ill-conditioned (its inverse divides by p)
            raise ValueError(f"EDICT mixing weight p must be in (0.5, 1], got {self.mix}")
        if self.lr < 0 or self.perturbation < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need lr >= 0, perturbation >= 0 and 0 <= momentum < 1; got lr={self.lr}, "
                             f"perturbation={self.perturbation}, momentum={self.momentum}")
        if self.clip_value is not None and self.clip_value <= 0:
            raise ValueError(f"gradient clip value must be > 0 (or None for no clipping), got {self.clip_value}")

    # ---- EDICT ------------------------------------------------------------------------------------------
    @staticmethod
    def _eps(v: Tensor, sigma: Tensor, ctx: SamplingContext) -> tuple[Tensor, Tensor]:
        denoised = ctx.denoise(v, sigma)
        return to_d(v, sigma, denoised), denoised

    def edict_step(self, x: Tensor, y: Tensor, i: int, ctx: SamplingContext,
                   report_progress: bool = False) -> tuple[Tensor, Tensor]:
        """One EDICT step of the pair (x, y) from sigmas[i] to sigmas[i+1] (coupled updates, then mixing)."""
        # clone: hosts build sigmas in inference mode, and those cannot be saved for backward
        sigma, d = ctx.sigmas[i].clone(), ctx.sigmas[i + 1] - ctx.sigmas[i]
        p, x_in = self.mix, x
        if i % 2 == 0:
            eps, denoised = self._eps(y, sigma, ctx)
            x = x + d * eps
            y = y + d * self._eps(x, sigma, ctx)[0]
        else:
            eps, denoised = self._eps(x, sigma, ctx)
            y = y + d * eps
            x = x + d * self._eps(y, sigma, ctx)[0]
        x = p * x + (1 - p) * y
        y = p * y + (1 - p) * x
        if report_progress and ctx.callback is not None:
            ctx.callback({"x": x_in, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        return x, y

    def edict_inverse(self, x: Tensor, y: Tensor, i: int, ctx: SamplingContext) -> tuple[Tensor, Tensor]:
        """The inputs of `edict_step(., ., i)` rebuilt exactly (up to rounding) from its outputs."""
        sigma, d = ctx.sigmas[i], ctx.sigmas[i + 1] - ctx.sigmas[i]
        p = self.mix
        y = (y - (1 - p) * x) / p
        x = (x - (1 - p) * y) / p
        if i % 2 == 0:
            y = y - d * self._eps(x, sigma, ctx)[0]
            x = x - d * self._eps(y, sigma, ctx)[0]
        else:
            x = x - d * self._eps(y, sigma, ctx)[0]
            y = y - d * self._eps(x, sigma, ctx)[0]
        return x, y

    def run_chain(self, x: Tensor, y: Tensor, ctx: SamplingContext,
                  report_progress: bool = False) -> tuple[Tensor, Tensor]:
        """Both chains from sigmas[0] to the final sigma, without a graph."""
        with torch.no_grad():
            for i in range(ctx.steps):
                x, y = self.edict_step(x, y, i, ctx, report_progress)
        return x, y

    def invert_chain(self, x: Tensor, y: Tensor, ctx: SamplingContext) -> tuple[Tensor, Tensor]:
        """The initial pair rebuilt from the final pair by inverting every step."""
        with torch.no_grad():
            for i in reversed(range(ctx.steps)):
                x, y = self.edict_inverse(x, y, i, ctx)
        return x, y

    # ---- gradient ---------------------------------------------------------------------------------------
    def gradient(self, latent: Tensor, ctx: SamplingContext) -> tuple[Tensor, Tensor, Tensor, float]:
        """(per-sample J, dJ/d latent, final x chain, reconstruction error) with O(1) memory in the steps.

        J = (L(x_final) + L(y_final)) / 2 with both chains starting at `latent`; the reconstruction error is
        the largest deviation of the rebuilt initial pair from `latent` (rounding drift of the inversion).
        """
        x_end, y_end = self.run_chain(latent, latent, ctx)
        with torch.inference_mode(False), torch.enable_grad():
            xe, ye = x_end.clone().requires_grad_(True), y_end.clone().requires_grad_(True)
            loss = (sample_losses(ctx, xe) + sample_losses(ctx, ye)) / 2
            gx, gy = torch.autograd.grad(loss.sum(), (xe, ye), allow_unused=True, materialize_grads=True)
            x, y = x_end, y_end
            for i in reversed(range(ctx.steps)):
                with torch.no_grad():
                    x, y = self.edict_inverse(x, y, i, ctx)
                xi, yi = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
                xo, yo = self.edict_step(xi, yi, i, ctx)
                gx, gy = torch.autograd.grad((xo, yo), (xi, yi), (gx, gy), allow_unused=True,
                                             materialize_grads=True)
        error = float(torch.maximum((x - latent).abs().max(), (y - latent).abs().max()))
        return loss.detach(), (gx + gy).detach(), x_end, error

    # ---- optimisation -----------------------------------------------------------------------------------
    def optimize(self, latent: Tensor, ctx: SamplingContext) -> tuple[Tensor, list[dict]]:
        """Run `iterations` DOODL updates of the initial latent; returns it with one report per iteration."""
        layout = ctx.layout
        scale = ctx.latent_scale(ctx.sigmas[0])
        z = latent * scale
        initial_norm = layout.flat(z).norm(dim=1)
        velocity = None
        reports = []
        for m in range(self.iterations):
            loss, grad, _, error = self.gradient(z / scale, ctx)
            grad_z = grad / scale
            report = {"iteration": m, "loss": float(loss.float().mean()),
                      "grad_norm": float(layout.flat(grad_z).norm(dim=1).float().mean()),
                      "reconstruction_error": error, "skipped": None}
            reports.append(report)
            if not (torch.isfinite(loss).all() and torch.isfinite(grad_z).all()):
                report["skipped"] = "non-finite loss or gradient: optimisation stopped"
                warnings.warn(f"DOODL iteration {m}: non-finite loss or gradient, optimisation stopped")
                break
            step = -self.lr * grad_z
            if self.clip_value is not None:
                step = step.clamp(-self.clip_value, self.clip_value)
            velocity = step if velocity is None else self.momentum * velocity + step
            z = z + velocity
            if self.perturbation:
                z = z + self.perturbation * noise_like(z, ctx.generator)
            if self.renormalize:
                z = z * layout.per_sample(initial_norm / layout.flat(z).norm(dim=1).clamp_min(1e-30), z)
        return z / scale, reports

    def sample(self, x: Tensor, ctx: SamplingContext) -> tuple[Tensor, list[dict]]:
        """Optimise the initial latent `x` (at sigmas[0]), then sample it with EDICT: (x0, reports)."""
        if ctx.eta != 0 or ctx.step not in ("euler", "ddim"):
            raise ValueError("DOODL samples with EDICT, which inverts deterministic DDIM steps only; "
                             f"use step 'euler' or 'ddim' with eta 0 (got step={ctx.step!r}, eta={ctx.eta})")
        if float(ctx.sigmas[-1]) != 0.0 or bool((ctx.sigmas[:-1] <= 0).any()):
            raise ValueError("DOODL needs a schedule of positive sigmas ending in 0")
        reports: list[dict] = []
        if ctx.loss is not None:
            x, reports = self.optimize(x, ctx)
        x_end, y_end = self.run_chain(x, x, ctx, report_progress=True)
        if ctx.loss is not None:
            with torch.no_grad():
                final = (sample_losses(ctx, x_end) + sample_losses(ctx, y_end)) / 2
            reports.append({"iteration": len(reports), "loss": float(final.float().mean()), "grad_norm": None,
                            "reconstruction_error": None, "skipped": None, "final": True,
                            "chain_gap": float((x_end - y_end).abs().max())})
        return x_end, reports
