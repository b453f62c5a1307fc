"""Differentiable decoding of a latent video, chunked over frames.

Under a JVP no activations are kept for a backward pass, so decoding a few frames at a time bounds the peak
memory of the whole guidance step by the cost of one chunk: decoding dominates JVP memory for video models.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager

import torch
from torch import Tensor

from .forward_gradient import directional_derivative
from .layout import Layout
from .profiling import phase
from .steps import with_checkpointing


def chunked_decode(decode: Callable[[Tensor], Tensor], z: Tensor, chunk_frames: int | None,
                   layout: Layout = Layout(), checkpointed: bool = False) -> Tensor:
    """Decode `z` a chunk of frames at a time along the frame axis and concatenate (None or 0: all at once).

    Frame-independent decoders (image VAEs) give exactly the same result as one call. `checkpointed`
    recomputes each chunk in the backward pass, for the backprop baselines.
    """
    run = with_checkpointing(decode) if checkpointed else decode
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


class PixelScore:
    """An objective given as plain functions of the decoded pixels: `score(pixels, frame_indices)` -> (samples,),
    `frame_score` (optional) -> (samples, frames). The shape `DecodedLoss` expects of an objective."""

    spaces = frozenset({"pixels"})

    def __init__(self, score: Callable[..., Tensor], frame_score: Callable[..., Tensor] | None = None):
        self.score, self.frame_score = score, frame_score

    def loss(self, pixels: Tensor, latents: Tensor | None, per_frame: bool = False,
             frame_indices: Tensor | None = None) -> Tensor:
        """`score(pixels, frame_indices)`, or `frame_score` for per-frame losses (latents are not read)."""
        if per_frame and self.frame_score is None:
            raise ValueError("this objective has no per-frame loss; turn per-frame derivatives off")
        return (self.frame_score if per_frame else self.score)(pixels, frame_indices)


class DecodedLoss:
    """loss(x0) = objective(decode(x0)): the guidance objective seen from the latent; the one loss type every
    sampler path, benchmark and test hands guidance_core.

    `objective` has `spaces` ("pixels" and / or "latent") and `loss(pixels, latents, per_frame, frame_indices)`
    returning per-sample (samples,) or per-frame (samples, frames) losses, with pixels and latents shaped
    (samples, frames, ...) (objectives.ObjectiveSet); a plain `score(pixels, frame_indices)` function (with
    `frame_score` for per-frame losses) is wrapped in a `PixelScore` and sees the decoder's output as it is.
    `latent_out` maps x0 to what latent objectives read; `scope` is entered around every call (the host's
    inference-tensor clones). `frame_indices` tells a frame-aware objective which frames of the video it is
    given when it sees a subset (sampled-gradient guess).
    """

    def __init__(self, decode: Callable[[Tensor], Tensor], objective, layout: Layout = Layout(),
                 chunk_frames: int | None = None, checkpointed: bool = False,
                 frame_score: Callable[..., Tensor] | None = None, latent_out: Callable[[Tensor], Tensor] | None = None,
                 scope: Callable[[], ContextManager] = contextlib.nullcontext):
        self.by_video = hasattr(objective, "loss")  # an ObjectiveSet: pixels and latents grouped per video
        self.objective = objective if self.by_video else PixelScore(objective, frame_score)
        self.decode, self.layout, self.chunk_frames, self.checkpointed = decode, layout, chunk_frames, checkpointed
        self.latent_out, self.scope = latent_out or (lambda x0: x0), scope

    def _per_video(self, t: Tensor) -> Tensor:
        return t.reshape(self.layout.samples, -1, *t.shape[1:]) if self.by_video else t

    def __call__(self, x0: Tensor, frame_indices: Tensor | None = None, per_frame: bool = False) -> Tensor:
        pixels = latents = None
        if "pixels" in self.objective.spaces:
            with phase("titan.decode"):
                pixels = self._per_video(chunked_decode(self.decode, x0, self.chunk_frames, self.layout,
                                                        self.checkpointed))
        with self.scope():
            if "latent" in self.objective.spaces:
                latents = self._per_video(self.latent_out(x0))
            return self.objective.loss(pixels, latents, per_frame=per_frame, frame_indices=frame_indices)

    def plan_chunk(self, x: Tensor, frames: int, setting: int) -> str:
        """Set `chunk_frames` (`setting`, or 0 = automatic: `plan_chunk_frames`, measured on one frame; all frames
        on the CPU); returns the report line."""
        if "pixels" not in self.objective.spaces:
            return ""
        if setting:
            self.chunk_frames = setting
            return f"{min(setting, frames)} of {frames} frame(s) per VAE call (set by decode_chunk_frames)"
        self.chunk_frames = plan_chunk_frames(self.decode, x, self.layout)
        how = f"about {DECODE_CALL_BYTES / 2**30:g} GiB of forward-mode decode per call, at most half the free GPU " \
            "memory" if x.is_cuda else "all at once on the CPU"
        return f"{self.chunk_frames} of {frames} frame(s) per VAE call (automatic: {how})"


# Forward-mode decode per VAE call, the memory-first default. A decode's time is its arithmetic, which grows with
# the frames, plus a fixed cost of dispatching each call; both the arithmetic and the memory of a frame grow with
# its pixels, so calls of a fixed size in bytes keep the dispatch share fixed at every resolution. Half the free
# memory put all 16 frames of the shipped workflow in one call on an H200 (3.5 GiB, TITAN's peak); at 2 GiB they
# take two calls, an estimated 0.6-0.9 s more per video there (one more call of ~2,800 operators per guided step;
# benchmarks/forward_mode_memory.py, README "Node path on a GPU"), not yet measured on a GPU.
DECODE_CALL_BYTES = 2 * 2**30


def frames_per_chunk(frames: int, per_frame_bytes: float, free_bytes: float, free_fraction: float = 0.5,
                     call_bytes: float = DECODE_CALL_BYTES) -> int:
    """Frames per decode call: enough to fill `call_bytes`, no more than fit in `free_fraction` of `free_bytes`,
    at least one; then evened out over the calls (16 frames at 7 per call: 6, 6, 4, not 7, 7, 2)."""
    if not 0 < free_fraction <= 1:
        raise ValueError(f"free_fraction must be in (0, 1], got {free_fraction}")
    per_frame = max(per_frame_bytes, 1)
    filling = frames if call_bytes >= frames * per_frame else math.ceil(call_bytes / per_frame)
    chunk = max(1, min(frames, int(free_bytes * free_fraction // per_frame), filling))
    calls = math.ceil(frames / chunk)
    return math.ceil(frames / calls)


def plan_chunk_frames(decode: Callable[[Tensor], Tensor], z: Tensor, layout: Layout = Layout(),
                      free_fraction: float = 0.5, call_bytes: float = DECODE_CALL_BYTES) -> int:
    """Frames per decode chunk (`frames_per_chunk`) from one frame's forward-mode decode on CUDA.

    Measures one frame's JVP decode (its peak above what is allocated now) and the free memory (the device's plus
    the caching allocator's unused blocks). Resets CUDA's peak-memory counter. On the CPU, where no allocator
    statistics exist, every frame is decoded at once.
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
    return frames_per_chunk(frames, per_frame, free, free_fraction, call_bytes)
