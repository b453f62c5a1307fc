"""What the baselines (FreeDoM, MPGD, TFG, DOODL) share: their step report, per-sample losses and backprop
gradients, the non-finite guard, noise draws and re-noising, and the TFG strength schedules FreeDoM also offers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..sampling import SamplingContext
from ..steps import noise_like
from ..update import guided_steps, normalized_direction

TFG_SCHEDULES = ("increase", "decrease", "constant")
# "plain": the authors' update (strength times the gradient); "normalized": strength times the latent's norm
# along the gradient's direction, per sample (guidance_core.update), so every method can run with TITAN's rule
BASELINE_UPDATES = ("plain", "normalized")


def check_update(kind: str) -> None:
    """Raise a clear error for an update rule outside BASELINE_UPDATES."""
    if kind not in BASELINE_UPDATES:
        raise ValueError(f"unknown baseline update {kind!r}; choose one of {BASELINE_UPDATES}")


@dataclass
class BaselineKnobs:
    """What FreeDoM, MPGD and TFG share: the window of guided steps [start, end) (fractions of the steps) and
    the update rule of their gradient steps (BASELINE_UPDATES)."""

    start: float = 0.0
    end: float = 1.0
    update: str = "plain"

    def __post_init__(self):
        check_update(self.update)
        guided_steps(1, self.start, self.end)  # validates the window


def gradient_step(z: Tensor, grad: Tensor, strength: float, kind: str, ctx: SamplingContext) -> Tensor:
    """The change of z for a descent step: -strength * grad ("plain") or a normalised step ("normalized")."""
    if kind == "normalized":
        return strength * normalized_direction(z, grad, ctx.layout)
    return -strength * grad
_ALIASES = {"increasing": "increase", "decreasing": "decrease"}


def renoise(x_next: Tensor, i: int, ctx: SamplingContext) -> Tensor:
    """Time travel: take a latent at sigmas[i+1] back to sigmas[i] with fresh noise (x = x0 + sigma * noise)."""
    sigma, sigma_next = ctx.sigmas[i], ctx.sigmas[i + 1]
    return x_next + (sigma**2 - sigma_next**2).sqrt() * noise_like(x_next, ctx.generator)


def tfg_schedule(kind: str, ctx: SamplingContext) -> Tensor:
    """TFG's per-step strength multipliers over all steps, normalised to mean 1.

    "increase" is alpha_t = abar_t / abar_prev, "decrease" is beta_t = 1 - alpha_t, "constant" is 1, with
    abar = latent_scale(sigma)^2 (exact for VP models). "increasing"/"decreasing" are accepted as aliases.
    """
    kind = _ALIASES.get(kind, kind)
    if kind not in TFG_SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {TFG_SCHEDULES}")
    abar = torch.stack([torch.as_tensor(ctx.latent_scale(s), dtype=torch.float64) for s in ctx.sigmas]) ** 2
    alpha = abar[:-1] / abar[1:]
    w = {"increase": alpha, "decrease": 1 - alpha, "constant": torch.ones_like(alpha)}[kind]
    if not float(w.sum()) > 0:
        raise ValueError(f"schedule {kind!r} is zero at every step for this model's latent scale; use 'constant'")
    return w / w.mean()


def check_schedule(kind: str, allowed: tuple[str, ...]) -> None:
    """Raise a clear error for a schedule name outside `allowed` (aliases included)."""
    if _ALIASES.get(kind, kind) not in allowed:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {allowed}")


def sample_losses(ctx: SamplingContext, x0: Tensor) -> Tensor:
    """ctx.loss(x0) checked to be per-sample (samples,)."""
    loss = ctx.loss(x0)
    if loss.dim() == 0 and ctx.layout.samples == 1:
        return loss.reshape(1)
    if loss.shape != (ctx.layout.samples,):
        raise ValueError(f"the loss must return one value per sample, shape ({ctx.layout.samples},); "
                         f"got {tuple(loss.shape)}")
    return loss


def grad_of(loss_fn: Callable[[Tensor], Tensor], inputs: Tensor,
            through: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(per-sample loss, grad of the summed loss wrt `inputs`, through(inputs) detached) by backprop.

    `through` (e.g. the denoiser) maps the inputs to what the loss sees; identity when None.
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaf = inputs.detach().clone().requires_grad_(True)  # clone: hosts may hand in inference tensors
        seen = leaf if through is None else through(leaf)
        loss = loss_fn(seen)
        (grad,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
    grad = torch.zeros_like(leaf) if grad is None else grad
    return loss.detach(), grad.detach(), seen.detach()


def finite_or_warn(i: int, report: dict, *tensors: Tensor) -> bool:
    """True if all tensors are finite; otherwise mark the report and warn (the update is then skipped)."""
    if all(bool(torch.isfinite(t).all()) for t in tensors):
        return True
    report["skipped"] = "non-finite loss or gradient: update skipped"
    warnings.warn(f"guidance step {i}: non-finite loss or gradient, update skipped")
    return False


def new_report(i: int, ctx: SamplingContext) -> dict:
    """The per-step report every baseline fills (same keys as TITAN's, minus the look-ahead)."""
    return {"step": i, "sigma": float(ctx.sigmas[i]), "loss": [], "grad_norm": [], "skipped": None}


def record(report: dict, loss: Tensor, grad: Tensor, ctx: SamplingContext) -> None:
    """Append the mean loss and mean per-sample gradient norm to a report."""
    report["loss"].append(float(loss.float().mean()))
    report["grad_norm"].append(float(ctx.layout.flat(grad).norm(dim=1).float().mean()))


def observe(ctx: SamplingContext, i: int, x: Tensor, grad: Tensor, method) -> None:
    """Show the gradient a method is about to apply at latent x to the context's observer (benchmarks)."""
    if ctx.observer is not None:
        ctx.observer(i=i, x=x, gradient=grad, method=method)
