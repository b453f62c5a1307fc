"""Where independent samples and frames sit inside a latent tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Layout:
    """Samples are equal contiguous chunks along dim 0; frames lie along `frame_dim` inside a sample.

    ComfyUI / AnimateDiff latents are (B*F, C, H, W): samples=B, frame_dim=0.
    CogVideoX wrapper latents are (B, F, C, H, W): samples=B, frame_dim=1.
    Point sets such as the toy's (N, 2): samples=N, frame_dim=0 (one "frame" per sample).
    """

    samples: int = 1
    frame_dim: int = 0

    @classmethod
    def of_frame_batch(cls, shape, frames_per_video: int = 0) -> tuple["Layout", int]:
        """(layout, frames per video) of a ComfyUI / AnimateDiff latent (batch * frames, C, H, W) whose videos hold
        `frames_per_video` frames (0: the whole batch is one video); raises if the batch cannot hold whole videos."""
        if len(shape) != 4:
            raise ValueError(f"TITAN-Guide samples latents of shape (batch * frames, C, H, W); got {tuple(shape)}. "
                             "Video models with 5-D latents (B, C, T, H, W) are not supported by these nodes")
        batch = shape[0]
        frames = frames_per_video or batch
        if batch % frames:
            raise ValueError(f"the latent batch of {batch} cannot be split into videos of {frames} frames: "
                             f"set 'frames_per_video' to a divisor of {batch} (0 = the whole batch is one video)")
        return cls(samples=batch // frames, frame_dim=0), frames

    def check(self, x: Tensor) -> None:
        """Raise a clear error if `x` cannot hold `samples` equal chunks along dim 0."""
        if self.samples < 1 or x.shape[0] % self.samples:
            raise ValueError(
                f"latent of shape {tuple(x.shape)} cannot be split into {self.samples} samples along dim 0; "
                "the batch must be a multiple of the number of samples")
        if not 0 <= self.frame_dim < x.dim():
            raise ValueError(f"frame_dim {self.frame_dim} is not a dimension of a {x.dim()}-D latent")

    def frames(self, x: Tensor) -> int:
        """Number of frames per sample."""
        return x.shape[0] // self.samples if self.frame_dim == 0 else x.shape[self.frame_dim]

    def flat(self, t: Tensor) -> Tensor:
        """View a latent-shaped tensor as (samples, everything else)."""
        return t.reshape(self.samples, -1)

    def per_sample(self, s: Tensor, like: Tensor) -> Tensor:
        """Broadcast per-sample scalars (samples,) against latent-shaped `like`."""
        rows = s.repeat_interleave(like.shape[0] // self.samples)
        return rows.reshape(like.shape[0], *([1] * (like.dim() - 1)))

    def per_frame(self, h: Tensor, like: Tensor) -> Tensor:
        """Broadcast per-frame scalars (samples, frames) against latent-shaped `like`."""
        if self.frame_dim == 0:
            return h.reshape(like.shape[0], *([1] * (like.dim() - 1)))
        shape = [1] * like.dim()
        shape[0], shape[self.frame_dim] = like.shape[0], like.shape[self.frame_dim]
        return h.repeat_interleave(like.shape[0] // self.samples, dim=0).reshape(shape)

    def normalize(self, t: Tensor, eps: float = 1e-12) -> Tensor:
        """Scale every sample of `t` to unit L2 norm."""
        return t / self.per_sample(self.flat(t).norm(dim=1).clamp_min(eps), t)

    def dot(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample inner products (samples,)."""
        return (self.flat(a) * self.flat(b)).sum(dim=1)

    def select_frames(self, x: Tensor, indices: Tensor) -> Tensor:
        """Frames `indices` of every sample, in the same layout."""
        indices = indices.to(x.device)
        if self.frame_dim == 0:
            f = self.frames(x)
            rows = (torch.arange(self.samples, device=x.device)[:, None] * f + indices[None]).reshape(-1)
            return x.index_select(0, rows)
        return x.index_select(self.frame_dim, indices)

    def blend_frames(self, x_sub: Tensor, lo: Tensor, hi: Tensor, w: Tensor) -> Tensor:
        """Full-length latent: frame j = (1-w[j]) * sub[lo[j]] + w[j] * sub[hi[j]] (temporal interpolation)."""
        a, b = self.select_frames(x_sub, lo), self.select_frames(x_sub, hi)
        weight = self.per_frame(w.to(x_sub)[None].expand(self.samples, -1), a)
        return a + weight * (b - a)
