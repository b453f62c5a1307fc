"""FreeDoM (Yu et al., ICCV 2023): energy guidance through the Tweedie estimate, with time travel.

At a guided step: x0 = denoise(x_t) with the graph kept, g = grad_{x_t} L(x0(x_t)) by backpropagation through
the denoiser (and decoder and objective), then x_{t-1} = plain_step(x_t) - rho_t g. With time travel the result
is re-noised back to sigma_t with fresh noise and the step is redone, `repeats` times inside the travel window.
Backpropagating through the denoiser is the memory bill TITAN avoids, so nothing is checkpointed by default.

Strength rho_t = rho * w_t acts in the VP latent z = c x (c = ctx.latent_scale, sqrt(abar) for VP models), as in
the authors' code: z_{t-1} -= rho_t grad_{z_t} L, i.e. x_{t-1} -= rho_t grad_x L / (c_t c_{t-1}).
w_t = sqrt(abar_t) = c_t ("sqrt_alpha", the authors' Face-GD code) or TFG's normalised "increase" / "decrease" /
"constant" (how TFG and the TITAN authors ran FreeDoM).

Differences from the paper / their code: the step is `ctx.plain_step` (DDIM / Euler, with ctx.eta noise, or
Heun) instead of their DDPM posterior step; the energy is the caller's loss (their code uses the residual
norm); their adaptive strength for CLIP/style (a fixed fraction of the noise-prediction norm over the gradient
norm) is not reproduced. The authors' Stable Diffusion settings were guidance on steps [0.3, 0.7) of the
schedule and 3 repeats on [0.3, 0.6); the defaults here guide every step without time travel.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..sampling import SamplingContext
from ..steps import with_checkpointing
from ..update import guided_steps
from .common import (BaselineKnobs, TFG_SCHEDULES, check_schedule, finite_or_warn, grad_of, gradient_step,
                     new_report, observe, record, renoise, sample_losses, tfg_schedule)

FREEDOM_SCHEDULES = ("sqrt_alpha",) + TFG_SCHEDULES


@dataclass
class FreeDoM(BaselineKnobs):
    """FreeDoM guidance: x_{t-1} = plain step - rho_t grad_{x_t} L(x0(x_t)), with optional time travel.

    `repeats` > 1 re-noises and redoes the step on the steps inside [travel_start, travel_end) (fractions of
    the steps); guidance itself runs inside [start, end). `checkpointed` recomputes the denoiser's activations
    during backward (less memory, one extra model forward).
    """

    knob = "'freedom_rho'"  # the widget that scales its updates (named when an update turns the latent non-finite)

    rho: float = 1.0
    rho_schedule: str = "sqrt_alpha"
    repeats: int = 1
    travel_start: float = 0.3
    travel_end: float = 0.6
    checkpointed: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.rho < 0:
            raise ValueError(f"rho must be >= 0, got {self.rho}")
        if self.repeats < 1:
            raise ValueError(f"time-travel repeats must be >= 1, got {self.repeats}")
        check_schedule(self.rho_schedule, FREEDOM_SCHEDULES)
        guided_steps(1, self.travel_start, self.travel_end)

    def strength(self, i: int, ctx: SamplingContext) -> float:
        """rho_t at step i."""
        if self.rho_schedule == "sqrt_alpha":
            return self.rho * float(ctx.latent_scale(ctx.sigmas[i]))
        return self.rho * float(tfg_schedule(self.rho_schedule, ctx)[i])

    def gradient(self, x: Tensor, i: int, ctx: SamplingContext) -> tuple[Tensor, Tensor, Tensor]:
        """(per-sample loss at the Tweedie estimate, grad_x of the summed loss through the denoiser, x0)."""
        sigma = ctx.sigmas[i]
        denoise = with_checkpointing(ctx.denoise) if self.checkpointed else ctx.denoise
        # clone: hosts build sigmas in inference mode, and those cannot be saved for backward
        through = lambda t: denoise(t, sigma.clone())  # noqa: E731
        return grad_of(lambda x0: sample_losses(ctx, x0), x, through)

    def guide(self, x: Tensor, i: int, ctx: SamplingContext) -> tuple[Tensor, dict | None]:
        """Guide the latent at sigmas[i] and step to sigmas[i+1]."""
        if ctx.loss is None or i not in guided_steps(ctx.steps, self.start, self.end):
            return ctx.plain_step(x, i), None
        travel = guided_steps(ctx.steps, self.travel_start, self.travel_end)
        repeats = self.repeats if i in travel else 1
        rho_t = self.strength(i, ctx)
        c, c_next = ctx.latent_scale(ctx.sigmas[i]), ctx.latent_scale(ctx.sigmas[i + 1])
        report = new_report(i, ctx)
        report.update(rho=rho_t, repeats=repeats)
        x_next = x
        for r in range(repeats):
            loss, grad, x0 = self.gradient(x, i, ctx)
            record(report, loss, grad, ctx)
            observe(ctx, i, x, grad, self)
            x_next = ctx.plain_step(x, i, denoised=x0)
            if finite_or_warn(i, report, loss, grad):
                # z_{t-1} = c_next x_{t-1} moves against grad_z L = grad_x L / c
                x_next = x_next + gradient_step(c_next * x_next, grad / c, rho_t, self.update, ctx) / c_next
            if r < repeats - 1:
                x = renoise(x_next, i, ctx)
        return x_next, report
