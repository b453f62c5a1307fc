"""How a gradient estimate moves the latent: strength schedules, SGD / Adam, clipping and the guidance window.

Updates act on the normalised latent z = x * c(sigma) (the VP z_t for eps / v models, c = 1/sqrt(1+sigma^2)),
so strengths mean the same at every noise level and match the paper's values (lambda = 0.1, Adam lr 0.08-0.1).
With z = c x, grad_z f = grad_x f / c.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .layout import Layout

SCHEDULES = ("constant", "increasing", "decreasing")
OPTIMIZERS = ("sgd", "adam")


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
    if max_norm <= 0:
        raise ValueError(f"max gradient norm must be > 0, got {max_norm}")
    norm = layout.flat(g).norm(dim=1)
    return g * layout.per_sample((max_norm / norm.clamp_min(1e-12)).clamp(max=1.0), g)


class Sgd:
    """z <- z - lr * grad_z."""

    def __init__(self, lr: float):
        self.lr = lr

    def step(self, z: Tensor, grad: Tensor) -> Tensor:
        """One update."""
        return z - self.lr * grad


class Adam:
    """Adam on z (the authors' choice); state lives for the iterations of one sampler step.

    With one iteration per step the update is lr * sign(grad) up to eps: a per-element step of size lr.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = self.v = None
        self.t = 0

    def step(self, z: Tensor, grad: Tensor) -> Tensor:
        """One update."""
        b1, b2 = self.betas
        self.t += 1
        self.m = (1 - b1) * grad if self.m is None else b1 * self.m + (1 - b1) * grad
        self.v = (1 - b2) * grad**2 if self.v is None else b2 * self.v + (1 - b2) * grad**2
        m_hat, v_hat = self.m / (1 - b1**self.t), self.v / (1 - b2**self.t)
        return z - self.lr * m_hat / (v_hat.sqrt() + self.eps)


def make_optimizer(kind: str, lr: float) -> Sgd | Adam:
    """A fresh optimiser for one sampler step."""
    if lr < 0:
        raise ValueError(f"guidance strength must be >= 0, got {lr}")
    if kind == "sgd":
        return Sgd(lr)
    if kind == "adam":
        return Adam(lr)
    raise ValueError(f"unknown optimizer {kind!r}; choose one of {OPTIMIZERS}")


def apply_update(x: Tensor, grad_x: Tensor, optimizer: Sgd | Adam, scale: Tensor) -> Tensor:
    """Update x through the normalised latent z = scale * x."""
    z = optimizer.step(x * scale, grad_x / scale)
    return z / scale
