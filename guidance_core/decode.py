"""Differentiable decoding of a latent video, chunked over frames.

Under a JVP no activations are kept for a backward pass, so decoding a few frames at a time bounds the peak
memory of the whole guidance step by the cost of one chunk: decoding dominates JVP memory for video models.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .forward_gradient import directional_derivative
from .layout import Layout


def chunked_decode(decode: Callable[[Tensor], Tensor], z: Tensor, chunk_frames: int | None,
                   layout: Layout = Layout(), checkpointed: bool = False) -> Tensor:
    """Decode `z` a chunk of frames at a time along the frame axis and concatenate (None or 0: all at once).

    Frame-independent decoders (image VAEs) give exactly the same result as one call. `checkpointed`
    recomputes each chunk in the backward pass, for the backprop baselines.
    """
    run = (lambda t: checkpoint(decode, t, use_reentrant=False)) if checkpointed else decode
    frames = layout.frames(z)
    if not chunk_frames or chunk_frames >= frames:
        return run(z)
    if chunk_frames < 0:
        raise ValueError(f"decode chunk must be >= 0 frames, got {chunk_frames}")
    parts = []
    for start in range(0, frames, chunk_frames):
        idx = torch.arange(start, min(start + chunk_frames, frames), device=z.device)
        parts.append(run(layout.select_frames(z, idx)))
    if layout.frame_dim == 0 and layout.samples > 1:
        # chunks hold frames [s] of every sample; restore sample-major order
        per_chunk = [p.reshape(layout.samples, -1, *p.shape[1:]) for p in parts]
        return torch.cat(per_chunk, dim=1).reshape(-1, *parts[0].shape[1:])
    return torch.cat(parts, dim=0 if layout.frame_dim == 0 else layout.frame_dim)


class DecodedLoss:
    """loss(x0) = score(decode(x0)): the guidance objective seen from the latent.

    `score(pixels, frame_indices)` returns per-sample losses (samples,); `frame_score`, where the objective has
    one, returns per-frame losses (samples, frames). `frame_indices` tells a frame-aware objective which frames
    of the video it is given when it sees a subset (sampled-gradient guess).
    """

    def __init__(self, decode: Callable[[Tensor], Tensor], score: Callable[..., Tensor], layout: Layout = Layout(),
                 chunk_frames: int | None = None, checkpointed: bool = False,
                 frame_score: Callable[..., Tensor] | None = None):
        self.decode, self.score, self.frame_score, self.layout = decode, score, frame_score, layout
        self.chunk_frames, self.checkpointed = chunk_frames, checkpointed

    def __call__(self, x0: Tensor, frame_indices: Tensor | None = None, per_frame: bool = False) -> Tensor:
        if per_frame and self.frame_score is None:
            raise ValueError("this objective has no per-frame loss; turn per-frame derivatives off")
        pixels = chunked_decode(self.decode, x0, self.chunk_frames, self.layout, self.checkpointed)
        return (self.frame_score if per_frame else self.score)(pixels, frame_indices)


def plan_chunk_frames(decode: Callable[[Tensor], Tensor], z: Tensor, layout: Layout = Layout(),
                      free_fraction: float = 0.5) -> int:
    """Frames per decode chunk whose forward-mode pass fits in `free_fraction` of free CUDA memory.

    Measures one frame's JVP decode (its peak above what is allocated now) and divides the free memory (the
    device's plus the caching allocator's unused blocks) by it. Resets CUDA's peak-memory counter. On the
    CPU, where no allocator statistics exist, every frame is decoded at once.
    """
    if not 0 < free_fraction <= 1:
        raise ValueError(f"free_fraction must be in (0, 1], got {free_fraction}")
    frames = layout.frames(z)
    if not z.is_cuda:
        return frames
    one = layout.select_frames(z, torch.zeros(1, dtype=torch.long, device=z.device))
    torch.cuda.synchronize(z.device)
    base = torch.cuda.memory_allocated(z.device)
    torch.cuda.reset_peak_memory_stats(z.device)
    directional_derivative(decode, one, torch.randn_like(one))
    per_frame = max(torch.cuda.max_memory_allocated(z.device) - base, 1)
    free = torch.cuda.mem_get_info(z.device)[0] + torch.cuda.memory_reserved(z.device) \
        - torch.cuda.memory_allocated(z.device)
    return max(1, min(frames, int(free * free_fraction // per_frame)))
