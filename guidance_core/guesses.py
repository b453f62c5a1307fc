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


class RandomGuess:
    """V ~ N(0, I): unbiased (E[V V^T] = I), variance grows with the latent's dimension."""

    uses_denoised = False

    def __init__(self, k: int = 1):
        if k < 1:
            raise ValueError(f"number of tangents must be >= 1, got {k}")
        self.k = k

    def __call__(self, ctx: GuessContext) -> Tensor:
        return noise_like(ctx.x, ctx.generator, (self.k, *ctx.x.shape))


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
GUESS_KINDS = tuple(GUESS_CLASSES)


def make_guess(kind: str, **options) -> object:
    """Build a guess by name: random, orthogonal, antithetic, score, sampled_gradient, mixed."""
    if kind not in GUESS_CLASSES:
        raise ValueError(f"unknown gradient guess {kind!r}; choose one of {GUESS_KINDS}")
    return GUESS_CLASSES[kind](**options)
