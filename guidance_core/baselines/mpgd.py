"""MPGD (He et al., ICLR 2024): manifold-preserving guidance on the clean estimate only.

At a guided step: x0 = denoise(x_t) (no graph), then `iterations` times x0 <- x0 - c_t grad_{x0} L(x0), where
the gradient goes through the decoder and objective but never through the denoiser; optionally each update is
projected back onto the data manifold with a caller-given autoencoder, x0 <- encode(decode(x0)) (MPGD-AE). The
DDIM step then uses the guided x0 with the model's noise estimate: x_{t-1} = x0' + sigma_{t-1} eps.

Step size c_t = scale * w_t with w_t = 1 ("constant", as TFG and the TITAN authors ran MPGD) or
w_t = 1 / sqrt(abar_t) = 1 / ctx.latent_scale(sigma_t) ("inverse_sqrt_alpha", the authors' linear-inverse code).

Differences from the paper / their code: the step is `ctx.plain_step` with the guided x0 (DDIM with ctx.eta,
or Heun, whose correction then makes a fresh model call at the guided Euler point). MPGD-AE follows the paper's
algorithm (project after the gradient step); the authors' code instead differentiates the loss at D(E(x0)) and
uses a 0.0075x smaller step inside the projection window. For a latent model, `decode` maps latents to pixels and
`encode` maps back (the projection is encode(decode(x0))); for a pixel model with an autoencoder pass the AE's
encoder as `decode` and its decoder as `encode`. Projection runs on steps [project_start, project_end).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..sampling import SamplingContext
from ..update import guided_steps
from .common import BaselineKnobs, finite_or_warn, grad_of, gradient_step, new_report, observe, record, sample_losses

MPGD_SCHEDULES = ("constant", "inverse_sqrt_alpha")


@dataclass
class MPGD(BaselineKnobs):
    """MPGD guidance: x0' = x0 - c_t grad_{x0} L(x0) (optionally AE-projected), then the DDIM step with x0'."""

    knob = "'mpgd_scale'"  # the widget that scales its updates (named when an update turns the latent non-finite)

    scale: float = 1.0
    schedule: str = "constant"
    iterations: int = 1
    encode: Callable[[Tensor], Tensor] | None = None
    decode: Callable[[Tensor], Tensor] | None = None
    project_start: float = 0.0
    project_end: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.scale < 0:
            raise ValueError(f"MPGD step scale must be >= 0, got {self.scale}")
        if self.iterations < 1:
            raise ValueError(f"MPGD iterations per step must be >= 1, got {self.iterations}")
        if self.schedule not in MPGD_SCHEDULES:
            raise ValueError(f"unknown MPGD step schedule {self.schedule!r}; choose one of {MPGD_SCHEDULES}")
        if (self.encode is None) != (self.decode is None):
            raise ValueError("MPGD-AE needs both encode and decode (or neither, for plain MPGD)")
        guided_steps(1, self.project_start, self.project_end)

    def step_size(self, i: int, ctx: SamplingContext) -> float:
        """c_t at step i."""
        if self.schedule == "inverse_sqrt_alpha":
            return self.scale / float(ctx.latent_scale(ctx.sigmas[i]))
        return self.scale

    def gradient(self, x0: Tensor, ctx: SamplingContext) -> tuple[Tensor, Tensor]:
        """(per-sample loss, grad of the summed loss wrt the clean estimate x0) - no denoiser backprop."""
        loss, grad, _ = grad_of(lambda t: sample_losses(ctx, t), x0)
        return loss, grad

    def project(self, x0: Tensor) -> Tensor:
        """The autoencoder manifold projection encode(decode(x0))."""
        with torch.no_grad():
            return self.encode(self.decode(x0))

    def guide(self, x: Tensor, i: int, ctx: SamplingContext) -> tuple[Tensor, dict | None]:
        """Guide the latent at sigmas[i] and step to sigmas[i+1]."""
        if ctx.loss is None or i not in guided_steps(ctx.steps, self.start, self.end):
            return ctx.plain_step(x, i), None
        projecting = self.encode is not None and i in guided_steps(ctx.steps, self.project_start, self.project_end)
        c_t = self.step_size(i, ctx)
        report = new_report(i, ctx)
        report.update(step_size=c_t, projected=projecting)
        with torch.no_grad():
            x0 = ctx.denoise(x, ctx.sigmas[i])
        x0_guided = x0
        for _ in range(self.iterations):
            loss, grad = self.gradient(x0_guided, ctx)
            record(report, loss, grad, ctx)
            observe(ctx, i, x, grad, self)
            if not finite_or_warn(i, report, loss, grad):
                break
            x0_guided = x0_guided + gradient_step(x0_guided, grad, c_t, self.update, ctx)
            if projecting:
                x0_guided = self.project(x0_guided)
        # x_t rebuilt from the guided x0 and the model's noise: x0' + sigma_t eps, then the DDIM step
        return ctx.plain_step(x + (x0_guided - x0), i, denoised=x0_guided), report
