"""How a gradient estimate moves the latent: update rules, strength schedules, clipping and the guidance window.

Updates act on the normalised latent z = x * c(sigma) (the VP z_t for eps / v models, c = 1/sqrt(1+sigma^2)),
so strengths mean the same at every noise level. With z = c x, grad_z f = grad_x f / c.

What `strength` means under each rule (one guided iteration, per video):
  normalized     the video's latent moves by strength * ||z_video|| along -G / ||G_video||: a step of known size
  normalized_relative   the same, scaled by ||G_video|| over the root mean square of the video's earlier
                 gradient norms in this run: full steps while the objective pulls as hard as before, smaller
                 ones once the video meets it
  adam           Adam whose moments persist across the sampler's steps, as an optimiser normally runs;
                 strength is its learning rate on z
  sgd            z <- z - strength * G
  adam_per_step  Adam restarted at every sampler step (the authors' code, AdamW lr 0.08-0.1): with one
                 iteration its update is strength * sign(G), every element moved by +-strength
"""
from __future__ import annotations

import torch
from torch import Tensor

from .layout import Layout

SCHEDULES = ("constant", "increasing", "decreasing")
OPTIMIZERS = ("normalized", "normalized_relative", "adam", "sgd", "adam_per_step")


def strength_schedule(kind: str, steps: int) -> Tensor:
    """Per-step multipliers over `steps` guided steps, normalised to mean 1 (as TFG does)."""
    if steps < 1:
        raise ValueError(f"a strength schedule needs at least one step, got {steps}")
    ramp = torch.linspace(1, steps, steps, dtype=torch.float64)
    if kind == "constant":
        w = torch.ones(steps, dtype=torch.float64)
    elif kind == "increasing":
        w = ramp
    elif kind == "decreasing":
        w = ramp.flip(0)
    else:
        raise ValueError(f"unknown strength schedule {kind!r}; choose one of {SCHEDULES}")
    return w / w.mean()


def guided_steps(total: int, start: float, end: float) -> range:
    """Indices of the sampler steps inside the guidance window [start, end) given as fractions of the steps."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"guidance window must satisfy 0 <= start <= end <= 1, got start={start}, end={end}")
    first, last = round(start * total), round(end * total)
    return range(first, last)


def clip_per_sample(g: Tensor, max_norm: float | None, layout: Layout) -> Tensor:
    """Scale each sample's gradient down to at most `max_norm` (None: unchanged)."""
    if max_norm is None:
        return g
    if not max_norm > 0:  # also refuses NaN
        raise ValueError(f"max gradient norm must be > 0, got {max_norm}")
    norm = layout.flat(g).norm(dim=1)
    return g * layout.per_sample((max_norm / norm.clamp_min(1e-12)).clamp(max=1.0), g)


def normalized_direction(z: Tensor, grad: Tensor, layout: Layout) -> Tensor:
    """-||z|| * grad / ||grad|| per sample: a step of one latent norm (zero where the gradient is zero)."""
    z_norm = layout.flat(z).norm(dim=1)
    grad_norm = layout.flat(grad).norm(dim=1)
    ratio = torch.where(grad_norm > 0, z_norm / grad_norm.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)
    return -grad * layout.per_sample(ratio, grad)


class NormalizedStep:
    """z <- z - lr * ||z|| * G / ||G|| for every sample.

    `relative`: the step is further scaled per sample by ||G|| over the root mean square of that sample's
    earlier gradient norms in this run (1 at the first step): a video whose gradient has faded, because it
    already meets the objective, is no longer pushed by a full step of noise-like direction.
    """

    def __init__(self, layout: Layout, relative: bool = False):
        self.layout, self.relative = layout, relative
        self.sum_sq, self.count = None, 0

    def begin_step(self) -> None:
        """Nothing to reset: the history lives for the whole run."""

    def delta(self, z: Tensor, grad: Tensor, lr: float) -> Tensor:
        """The change of z for one iteration."""
        step = lr * normalized_direction(z, grad, self.layout)
        if not self.relative:
            return step
        norm_sq = self.layout.flat(grad).double().pow(2).sum(dim=1)
        self.sum_sq = norm_sq if self.sum_sq is None else self.sum_sq + norm_sq
        self.count += 1
        rms = (self.sum_sq / self.count).sqrt()
        ratio = torch.where(rms > 0, norm_sq.sqrt() / rms.clamp_min(1e-300), 0.0).to(step.dtype)
        return step * self.layout.per_sample(ratio, step)


class Sgd:
    """z <- z - lr * G."""

    def begin_step(self) -> None:
        """Nothing to reset: the rule has no state."""

    def delta(self, z: Tensor, grad: Tensor, lr: float) -> Tensor:
        """The change of z for one iteration."""
        return -lr * grad


class Adam:
    """Adam on z. `per_step`: moments restart at every sampler step (the authors' code); otherwise they persist
    over the whole run, so the step adapts to the gradient's history rather than collapsing to sign(G)."""

    def __init__(self, per_step: bool = False, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.per_step, self.betas, self.eps = per_step, betas, eps
        self.m = self.v = None
        self.t = 0

    def begin_step(self) -> None:
        """Restart the moments when they live for one sampler step."""
        if self.per_step:
            self.m = self.v = None
            self.t = 0

    def delta(self, z: Tensor, grad: Tensor, lr: float) -> Tensor:
        """The change of z for one iteration."""
        b1, b2 = self.betas
        self.t += 1
        self.m = (1 - b1) * grad if self.m is None else b1 * self.m + (1 - b1) * grad
        self.v = (1 - b2) * grad**2 if self.v is None else b2 * self.v + (1 - b2) * grad**2
        m_hat, v_hat = self.m / (1 - b1**self.t), self.v / (1 - b2**self.t)
        return -lr * m_hat / (v_hat.sqrt() + self.eps)


UpdateRule = NormalizedStep | Sgd | Adam


def check_strength(strength: float, name: str = "strength") -> None:
    """Raise a clear error unless `strength` is a finite number >= 0."""
    if not (isinstance(strength, (int, float)) and 0 <= float(strength) < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {strength!r}")


def make_optimizer(kind: str, lr: float, layout: Layout | None = None) -> UpdateRule:
    """A fresh update rule of `kind` (validated with its strength `lr`); one per sampling run."""
    check_strength(lr)
    if kind in ("normalized", "normalized_relative"):
        return NormalizedStep(layout or Layout(), relative=kind == "normalized_relative")
    if kind == "sgd":
        return Sgd()
    if kind in ("adam", "adam_per_step"):
        return Adam(per_step=kind == "adam_per_step")
    raise ValueError(f"unknown optimizer {kind!r}; choose one of {OPTIMIZERS}")


def apply_update(x: Tensor, grad_x: Tensor, rule: UpdateRule, lr: float, scale: Tensor) -> Tensor:
    """Update x through the normalised latent z = scale * x (x itself when the step is zero: no round trip)."""
    delta_z = rule.delta(x * scale, grad_x / scale, lr)
    return x + delta_z / scale
