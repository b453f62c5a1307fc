"""Gradient guesses V: the tangent directions of the forward gradient G = <grad f, V> V (paper section 4.2).

Each guess returns K tangents of shape (K, *x.shape); the estimate averages h_k V_k over them. Per guess, one
line on bias and variance of the resulting G as an estimate of grad f.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .denoiser import to_d
from .steps import noise_like
from .layout import Layout

FRAME_CHOICES = ("even", "random", "fixed")
EXPANSIONS = ("tile", "nearest", "interpolate")


@dataclass
class GuessContext:
    """What a guess may look at: the latent, its noise level, the Tweedie estimate and the latent loss."""

    x: Tensor
    sigma: Tensor
    denoised: Tensor
    loss: Callable[..., Tensor] | None
    layout: Layout
    generator: torch.Generator | None = None
    memory: dict | None = None  # per-run scratch of the guess (MomentumGuess keeps its running estimate here)


class RandomGuess:
    """V ~ N(0, I): unbiased (E[V V^T] = I), variance grows with the latent's dimension."""

    uses_denoised = False

    def __init__(self, k: int = 1):
        if k < 1:
            raise ValueError(f"number of tangents must be >= 1, got {k}")
        self.k = k

    def __call__(self, ctx: GuessContext) -> Tensor:
        return noise_like(ctx.x, ctx.generator, (self.k, *ctx.x.shape))


def frames_view(t: Tensor, layout: Layout) -> Tensor:
    """`t` as (samples, frames, *rest) for latents with frames along dim 0 (B*F, ...) or one sample per row."""
    if layout.frame_dim == 0:
        return t.reshape(layout.samples, layout.frames(t), *t.shape[1:])
    if t.shape[0] != layout.samples:
        raise ValueError(f"a latent of shape {tuple(t.shape)} with frames along dim {layout.frame_dim} must hold one "
                         f"sample per row ({layout.samples} samples)")
    return t.movedim(layout.frame_dim, 1)


def from_frames_view(v: Tensor, like: Tensor, layout: Layout) -> Tensor:
    """Inverse of `frames_view`."""
    if layout.frame_dim == 0:
        return v.reshape(like.shape)
    return v.movedim(1, layout.frame_dim)


class SmoothRandomGuess:
    """Gaussian tangents drawn on a grid `downscale` times coarser in space and correlated across frames.

    Frame t's tangent is rho * shared + sqrt(1 - rho^2) * own, upsampled bilinearly, then scaled to the norm of
    an isotropic Gaussian. E[V V^T] = Sigma != I, so G estimates Sigma grad f: the gradient with its
    low-frequency, temporally coherent part kept, the part the denoiser cannot wash out. No backward pass.
    """

    uses_denoised = False

    def __init__(self, k: int = 1, downscale: int = 4, frame_correlation: float = 0.5):
        if k < 1:
            raise ValueError(f"number of tangents must be >= 1, got {k}")
        if downscale < 1:
            raise ValueError(f"downscale must be >= 1, got {downscale}")
        if not 0.0 <= frame_correlation <= 1.0:
            raise ValueError(f"frame correlation must be in [0, 1], got {frame_correlation}")
        self.k, self.downscale, self.frame_correlation = k, downscale, frame_correlation

    def __call__(self, ctx: GuessContext) -> Tensor:
        layout, x = ctx.layout, ctx.x
        view = frames_view(x, layout)  # (samples, frames, ..., H, W)
        *lead, height, width = view.shape
        coarse = (max(1, height // self.downscale), max(1, width // self.downscale))
        rho = self.frame_correlation
        shared = noise_like(x, ctx.generator, (self.k, lead[0], 1, *lead[2:], *coarse))
        own = noise_like(x, ctx.generator, (self.k, *lead, *coarse))
        v = rho * shared + (1 - rho**2) ** 0.5 * own
        v = torch.nn.functional.interpolate(v.reshape(-1, 1, *coarse), size=(height, width), mode="bilinear",
                                            align_corners=False).reshape(self.k, *view.shape)
        v = torch.stack([from_frames_view(t, x, layout) for t in v])
        d = layout.flat(x).shape[1]
        return torch.stack([layout.normalize(t) for t in v]) * d**0.5


class MomentumGuess:
    """The direction of a running sum of this run's earlier estimates G, mixed with a fresh tangent.

    Each G = <grad f, V> V is an estimate of (a smoothed) grad f, so their running sum M turns towards it over the
    steps; V = cos(a) M/|M| + sin(a) r with r a fresh `base` tangent orthogonal to M. Until a first estimate
    exists, V is the base tangent alone. No backward pass; biased towards directions that helped before.
    """

    uses_denoised = False

    k = 1

    def __init__(self, base: object | None = None, random_weight: float = 0.5, decay: float = 0.9):
        if not 0.0 <= random_weight <= 1.0:
            raise ValueError(f"random weight must be in [0, 1], got {random_weight}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.base, self.random_weight, self.decay = base or SmoothRandomGuess(), random_weight, decay

    def __call__(self, ctx: GuessContext) -> Tensor:
        layout = ctx.layout
        r = layout.normalize(self.base(ctx)[0])
        running = None if ctx.memory is None else ctx.memory.get("momentum")
        if running is None:
            return r[None] * layout.flat(r).shape[1] ** 0.5
        m = layout.normalize(running)
        r = layout.normalize(r - layout.per_sample(layout.dot(r, m), m) * m)
        w = torch.as_tensor(self.random_weight * torch.pi / 2)
        return (layout.normalize(torch.cos(w) * m + torch.sin(w) * r) * layout.flat(r).shape[1] ** 0.5)[None]

    def after_estimate(self, memory: dict, gradient: Tensor, layout: Layout) -> None:
        """Fold this step's estimate into the running direction (each estimate at unit norm per sample)."""
        g = layout.normalize(gradient)
        previous = memory.get("momentum")
        memory["momentum"] = g if previous is None else self.decay * previous + g


class OrthogonalGuess:
    """K orthonormal directions per sample (QR of Gaussians) scaled by sqrt(d): unbiased, less variance than K i.i.d."""

    uses_denoised = False

    def __init__(self, k: int = 4):
        if k < 1:
            raise ValueError(f"number of tangents must be >= 1, got {k}")
        self.k = k

    def __call__(self, ctx: GuessContext) -> Tensor:
        layout, x = ctx.layout, ctx.x
        d = layout.flat(x).shape[1]
        if self.k > d:
            raise ValueError(f"cannot draw {self.k} orthogonal tangents in a {d}-dimensional sample")
        g = noise_like(x, ctx.generator, (layout.samples, d, self.k))
        q, _ = torch.linalg.qr(g.double() if x.dtype != torch.float64 else g)  # (samples, d, K), orthonormal columns
        # E[sum_k q_k q_k^T] = (K/d) I, so V_k = sqrt(d) q_k makes the K-average unbiased
        v = (q.to(x.dtype) * d**0.5).permute(2, 0, 1)
        return v.reshape(self.k, *x.shape)


class AntitheticGuess:
    """Pairs (V, -V) of Gaussians: with an exact JVP each pair gives the same G as V alone (h V = (-h)(-V)).

    It only reduces error with the central-difference estimator, where the pair cancels the even-order terms.
    """

    uses_denoised = False

    def __init__(self, pairs: int = 1):
        self.random = RandomGuess(pairs)

    def __call__(self, ctx: GuessContext) -> Tensor:
        v = self.random(ctx)
        return torch.stack([v, -v], dim=1).reshape(-1, *ctx.x.shape)


class ScoreGuess:
    """V = eps / ||eps|| (paper Eq. 9): deterministic, zero variance, biased to grad f's projection on eps."""

    uses_denoised = True

    k = 1

    def __call__(self, ctx: GuessContext) -> Tensor:
        eps = to_d(ctx.x, ctx.sigma, ctx.denoised)
        return ctx.layout.normalize(eps)[None]


class SampledGradientGuess:
    """Gradient of the loss at the Tweedie estimate on a few frames, spread to all frames and normalised.

    Backprop runs through decode + objective only (not the denoiser), on `frames` frames: cheap and low
    variance, biased where the denoiser's Jacobian or the unsampled frames matter.
    """

    uses_denoised = True

    k = 1

    def __init__(self, frames: int | None = 2, choice: str = "even", indices: Sequence[int] | None = None,
                 expand: str = "tile"):
        if choice not in FRAME_CHOICES:
            raise ValueError(f"unknown frame choice {choice!r}; choose one of {FRAME_CHOICES}")
        if expand not in EXPANSIONS:
            raise ValueError(f"unknown expansion {expand!r}; choose one of {EXPANSIONS}")
        if choice == "fixed" and not indices:
            raise ValueError("frame choice 'fixed' needs the frame indices")
        if frames is not None and frames < 1:
            raise ValueError(f"sampled frames must be >= 1, got {frames}")
        self.frames, self.choice, self.indices, self.expand = frames, choice, indices, expand

    def frame_indices(self, total: int, generator: torch.Generator | None) -> Tensor:
        """Which frames to backpropagate through."""
        if self.choice == "fixed":
            idx = torch.as_tensor(list(self.indices), dtype=torch.long)
            if idx.min() < 0 or idx.max() >= total:
                raise ValueError(f"sampled-gradient frames {idx.tolist()} are outside the video's {total} frames")
            return idx
        k = total if self.frames is None else self.frames
        if k > total:
            raise ValueError(f"sampled-gradient frames ({k}) exceed the latent's {total} frames; use at most {total}")
        if self.choice == "even":
            return torch.linspace(0, total - 1, k).round().long()
        return torch.randperm(total, generator=generator, device=generator.device if generator else "cpu")[:k].sort().values.cpu()

    def __call__(self, ctx: GuessContext) -> Tensor:
        if ctx.loss is None:
            raise ValueError("the sampled-gradient guess needs the objective's loss")
        layout = ctx.layout
        total = layout.frames(ctx.x)
        idx = self.frame_indices(total, ctx.generator)
        every = torch.equal(idx, torch.arange(total))  # the whole video in order: no gather, no subset
        with torch.inference_mode(False), torch.enable_grad():
            x0 = (ctx.denoised if every else layout.select_frames(ctx.denoised, idx)).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.loss(x0, None if every else idx).sum(), x0)
        return layout.normalize(self.spread(g, idx, total, layout))[None]

    def spread(self, g: Tensor, idx: Tensor, total: int, layout: Layout) -> Tensor:
        """Expand the gradient on the sampled frames `idx` to all `total` frames."""
        k = len(idx)
        frames = torch.arange(total)
        if k == total and torch.equal(idx.sort().values, frames):  # every frame once, maybe out of order
            return g if torch.equal(idx, frames) else layout.select_frames(g, torch.argsort(idx))
        if self.expand == "tile":
            return layout.select_frames(g, frames % k)
        pos = (frames[:, None] - idx[None]).abs().float()
        if self.expand == "nearest":
            return layout.select_frames(g, pos.argmin(dim=1))
        hi = torch.searchsorted(idx, frames).clamp(1, k - 1) if k > 1 else torch.zeros(total, dtype=torch.long)
        lo = (hi - 1).clamp(min=0)
        span = (idx[hi] - idx[lo]).clamp(min=1).float()
        w = ((frames - idx[lo]).float() / span).clamp(0, 1) if k > 1 else torch.zeros(total)
        return layout.blend_frames(g, lo, hi, w)


class MixedGuess:
    """cos(a)·sampled-gradient + sin(a)·random part orthogonal to it: keeps a prior direction, explores the rest.

    Less biased than the sampled gradient alone (the random part reaches every direction), less variance than
    a pure random guess.
    """

    uses_denoised = True

    k = 1

    def __init__(self, base: SampledGradientGuess | None = None, random_weight: float = 0.5):
        if not 0.0 <= random_weight <= 1.0:
            raise ValueError(f"random weight must be in [0, 1], got {random_weight}")
        self.base, self.random_weight = base or SampledGradientGuess(), random_weight

    def __call__(self, ctx: GuessContext) -> Tensor:
        layout = ctx.layout
        g = self.base(ctx)[0]
        r = noise_like(g, ctx.generator, g.shape)
        r = layout.normalize(r - layout.per_sample(layout.dot(r, g), g) * g)
        w = torch.as_tensor(self.random_weight * torch.pi / 2)
        return layout.normalize(torch.cos(w) * g + torch.sin(w) * r)[None]


GUESS_CLASSES = {"random": RandomGuess, "score": ScoreGuess, "sampled_gradient": SampledGradientGuess,
                 "orthogonal": OrthogonalGuess, "antithetic": AntitheticGuess, "mixed": MixedGuess}
# SmoothRandomGuess and MomentumGuess stay out of the nodes' choices: measured, they steer too weakly to ship
# (benchmarks/fidelity.py: 0.56-0.61 judge success on the embedded model against 0.94 for sampled_gradient)
GUESS_KINDS = tuple(GUESS_CLASSES)


def make_guess(kind: str, **options) -> object:
    """Build a guess by name (GUESS_KINDS)."""
    if kind not in GUESS_CLASSES:
        raise ValueError(f"unknown gradient guess {kind!r}; choose one of {GUESS_KINDS}")
    return GUESS_CLASSES[kind](**options)
