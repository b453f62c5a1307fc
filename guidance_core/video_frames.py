"""Latent frames and pixel frames of video VAEs that compress time causally (Wan, LTX, HunyuanVideo, ...).

Such a VAE decodes T latent frames of a video (B, C, T, h, w) to 1 + r (T - 1) frames: latent frame 0 to pixel
frame 0, latent frame k >= 1 to pixel frames r (k - 1) + 1 .. r k (Wan, HunyuanVideo 1.5: r = 4; LTX: r = 8). Two
variants of the rule exist among ComfyUI's VAEs (`CausalTime.rule`): CogVideoX's VAE keeps the first frame alone
only when it decodes an odd number of latent frames (an even number gives r frames each), and HunyuanImage 2.1's
refiner VAE (ComfyUI's vae_refiner decoder with refiner_vae off; HunyuanVideo 1.5's VAE has it on) gives r frames
for every latent frame (one frame when it decodes a single latent frame).
It decodes in its own causal chunks (Wan 2.1: one latent frame, then two at a time; Wan 2.2: one at a time),
carrying a cache of the causal convolutions' last inputs from chunk to chunk inside one call. Decoding a prefix
of the latent frames gives exactly the prefix of the whole decode; decoding frames in separate calls without the
cache does not (every call restarts the video). So the differentiable decode here decodes whole videos, one
call per group of videos, and plans how many videos go into a call from free memory. Under forward mode the
VAE's own chunking keeps one chunk's activations at a time: its memory hardly grows with the frame count.

`CausalVideoLoss` is the loss guidance_core's samplers call for (B, C, T, h, w) latents (frames along dim 2):
pixel objectives see (B, 1 + r (T - 1), 3, H, W), latent objectives (B, T, C, h, w). A subset of latent frames
(the sampled-gradient guess) is decoded on its own and its frames are labelled with their full-video indices;
per-frame pixel losses are summed onto the latent frames that produced them.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
from torch import Tensor

from .layout import Layout
from .profiling import phase


RULES = ("causal", "causal_odd", "uniform")


@dataclass(frozen=True)
class CausalTime:
    """Time compression r of a causal video VAE and its rule for grouping decoded frames by latent frame:
    'causal' (Wan, LTX, HunyuanVideo 1.5): the first latent frame decodes to one frame, every later one to r;
    'causal_odd' (CogVideoX): the same for an odd number of latent frames, r frames each for an even number;
    'uniform' (HunyuanImage 2.1's refiner VAE): r frames each (a single latent frame: one frame, the last of its r)."""

    ratio: int
    rule: str = "causal"

    def __post_init__(self):
        if self.ratio < 1:
            raise ValueError(f"time compression must be >= 1, got {self.ratio}")
        if self.rule not in RULES:
            raise ValueError(f"unknown frame rule {self.rule!r}; expected one of {RULES}")

    def group_sizes(self, latent_frames: int) -> list[int]:
        """Frames that each latent frame yields when `latent_frames` latent frames are decoded in one call."""
        if latent_frames < 1:
            return []
        if latent_frames == 1:
            return [1]
        if self.rule == "causal" or (self.rule == "causal_odd" and latent_frames % 2):
            return [1] + [self.ratio] * (latent_frames - 1)
        return [self.ratio] * latent_frames

    def decoded_frames(self, latent_frames: int) -> int:
        """Pixel frames that `latent_frames` latent frames decode to."""
        return sum(self.group_sizes(latent_frames))

    def latent_frames(self, pixel_frames: int) -> int:
        """Latent frames of a video of `pixel_frames` frames (as ComfyUI's empty video latents count them)."""
        return (pixel_frames - 1) // self.ratio + 1

    def check_video(self, latent_frames: int, vae_name: str = "the VAE") -> None:
        """A whole video must group its frames as `pixel_group` says: under 'causal_odd' an odd frame count."""
        if self.rule == "causal_odd" and latent_frames > 1 and latent_frames % 2 == 0:
            raise ValueError(f"{vae_name} decodes an even number of latent frames ({latent_frames}) without its "
                             f"first-frame rule, to {self.decoded_frames(latent_frames)} frames that do not line "
                             f"up with the frames of other lengths; use an odd number of latent frames: a length "
                             f"of {self.decoded_frames(latent_frames - 1)} or {self.decoded_frames(latent_frames + 1)} "
                             "frames (CogVideoX's own: 49)")

    def pixel_group(self, latent_index: int) -> range:
        """The pixel frames latent frame `latent_index` produces in a whole video of more than one latent frame."""
        if self.rule == "uniform":
            return range(self.ratio * latent_index, self.ratio * (latent_index + 1))
        if latent_index == 0:
            return range(0, 1)
        return range(self.ratio * (latent_index - 1) + 1, self.ratio * latent_index + 1)

    def latent_of_pixel(self, pixel_index: int) -> int:
        """The latent frame that produces pixel frame `pixel_index`."""
        if self.rule == "uniform":
            return pixel_index // self.ratio
        return 0 if pixel_index == 0 else (pixel_index - 1) // self.ratio + 1

    def latent_indices_for_pixels(self, pixel_indices: Sequence[int], latent_frames: int) -> tuple[int, ...]:
        """The latent frames (sorted, each once) that produce the pixel frames `pixel_indices` of a video of
        `latent_frames` latent frames; a pixel frame the video does not have maps to no latent frame: error."""
        total = self.decoded_frames(latent_frames)
        bad = [int(p) for p in pixel_indices if not 0 <= int(p) < total]
        if bad:
            raise ValueError(f"frame indices {bad} map to no latent frame: the video has {total} decoded frames "
                             f"(0..{total - 1}) from {latent_frames} latent frames (this VAE turns latent frame k "
                             f"into frames {self._group_text(0)}, {self._group_text(1)}, ...); change 'frame indices'")
        if not len(pixel_indices):
            raise ValueError("no frame indices given")
        return tuple(sorted({self.latent_of_pixel(int(p)) for p in pixel_indices}))

    def _group_text(self, latent_index: int) -> str:
        group = self.pixel_group(latent_index)
        return f"{group[0]}" if len(group) == 1 else f"{group[0]}-{group[-1]}"

    def subset_frames(self, latent_indices: Sequence[int]) -> tuple[list[int], Tensor]:
        """(positions, labels) for the latent frames `latent_indices` (increasing) decoded on their own: which decoded
        frames the objective sees and their full-video pixel indices. Each latent frame's frames are labelled with the
        last frames of its whole-video group; frames beyond that group's size are left out, the last ones kept
        (CogVideoX's latent frame 0 in an even subset yields r frames where the whole video has one)."""
        positions: list[int] = []
        labels: list[int] = []
        start = 0
        for size, j in zip(self.group_sizes(len(latent_indices)), (int(i) for i in latent_indices)):
            group = list(self.pixel_group(j))
            kept = min(size, len(group))
            positions += range(start + size - kept, start + size)
            labels += group[len(group) - kept:]
            start += size
        return positions, torch.tensor(labels, dtype=torch.long)

    def latent_frame_losses(self, pixel_losses: Tensor, pixel_indices: Sequence[int] | None = None) -> Tensor:
        """Per-latent-frame losses (B, T) from per-pixel-frame losses (B, T') of a mean-over-frames loss: latent
        frame k gets the sum of its frames' losses over T', so the T values sum to the video's loss. With
        `pixel_indices` (a decoded subset) frames are grouped by the latent frame their full-video index maps to."""
        frames = pixel_losses.shape[1]
        owners = [self.latent_of_pixel(int(p)) for p in (range(frames) if pixel_indices is None else pixel_indices)]
        if len(owners) != frames:
            raise ValueError(f"{len(owners)} frame indices for {frames} frame losses")
        order = sorted(set(owners))
        parts = [pixel_losses[:, [i for i, o in enumerate(owners) if o == k]].sum(dim=1, keepdim=True) / frames
                 for k in order]
        return torch.cat(parts, dim=1)


def video_layout(shape, frames_per_video: int = 0) -> tuple[Layout, int]:
    """(layout, latent frames per video) of a (B, C, T, h, w) latent: one video per batch row, frames along dim 2
    (`frames_per_video`, for frame-batch latents, must be 0 here)."""
    if frames_per_video:
        raise ValueError(f"'frames_per_video' ({frames_per_video}) splits frame-batch latents into videos; this "
                         f"latent {tuple(shape)} already holds one video per batch row: set it to 0")
    return Layout(samples=shape[0], frame_dim=2), shape[2]


def latent_guess(guess, time: CausalTime, latent_frames: int):
    """A run_config.GuessSpec with 'fixed' frame indices read as decoded (pixel) frames and mapped to the latent
    frames that produce them (an index the video does not have is an error)."""
    if not guess.samples_frames or guess.choice != "fixed":
        return guess
    return dataclasses.replace(guess, indices=time.latent_indices_for_pixels(guess.indices, latent_frames))


def plan_videos_per_call(free_bytes: float | None, bytes_per_video: float, videos: int,
                         free_fraction: float = 0.5) -> int:
    """Videos per decoder call whose forward-mode decode fits in `free_fraction` of `free_bytes` (None: no limit,
    e.g. on the CPU); at least one."""
    if videos < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if free_bytes is None:
        return videos
    return max(1, min(videos, int(free_bytes * free_fraction // max(bytes_per_video, 1))))


class CausalVideoLoss:
    """loss(x0) for latents (B, C, T, h, w) of a causal video VAE: per-video (B,) or per-latent-frame (B, T) values.

    `decode_videos(z)` decodes whole videos (n, C, T, h, w) -> (n, T', 3, H, W) (the host's VAE with its own
    causal chunks); `objective` is an objectives.ObjectiveSet; `latent_out` maps x0 to what latent objectives read;
    `scope` is entered around every call; `before_call` runs first (the host's interrupt check).
    """

    def __init__(self, decode_videos: Callable[[Tensor], Tensor], objective, time: CausalTime,
                 latent_out: Callable[[Tensor], Tensor] | None = None,
                 scope: Callable[[], ContextManager] = contextlib.nullcontext,
                 before_call: Callable[[], None] = lambda: None, videos_per_call: int = 0):
        self.decode_videos, self.time, self.scope, self.before_call = decode_videos, time, scope, before_call
        self.latent_out = latent_out or (lambda x0: x0)
        self.videos_per_call = videos_per_call
        self.objective = objective
        pixel_specs = tuple(s for s in objective.specs if s.input_space != "latent")
        latent_specs = tuple(s for s in objective.specs if s.input_space == "latent")
        self.pixel = type(objective)(pixel_specs) if pixel_specs else None
        self.latent = type(objective)(latent_specs) if latent_specs else None

    def prepare(self, latent_frames: int) -> None:
        """Before guidance: every objective's constant targets, for the frames it sees (decoded or latent)."""
        if self.pixel is not None:
            self.pixel.prepare(self.time.decoded_frames(latent_frames))
        if self.latent is not None:
            self.latent.prepare(latent_frames)

    def decode(self, z: Tensor) -> Tensor:
        """(B, C, T, h, w) -> (B, T', 3, H, W), `videos_per_call` videos per decoder call (0: all)."""
        step = self.videos_per_call or z.shape[0]
        parts = [self.decode_videos(z[i:i + step]) for i in range(0, z.shape[0], step)]
        pixels = parts[0] if len(parts) == 1 else torch.cat(parts)
        if pixels.shape[1] != self.time.decoded_frames(z.shape[2]):
            raise ValueError(f"the VAE decoded {z.shape[2]} latent frames to {pixels.shape[1]} frames, not "
                             f"{self.time.decoded_frames(z.shape[2])} (time compression {self.time.ratio}, rule "
                             f"'{self.time.rule}'): its frames cannot be matched to latent frames; guidance does not "
                             "support this VAE yet")
        return pixels

    def __call__(self, x0: Tensor, frame_indices: Tensor | None = None, per_frame: bool = False) -> Tensor:
        if x0.dim() != 5:
            raise ValueError(f"video latents must be (B, C, T, h, w), got {tuple(x0.shape)}")
        self.before_call()
        with self.scope():
            total = None
            if self.pixel is not None:
                with phase("titan.decode"):
                    pixels = self.decode(x0)
                indices = None
                if frame_indices is not None:  # a subset decoded on its own (decode checked its frame count)
                    positions, indices = self.time.subset_frames(frame_indices.tolist())
                    pixels = pixels if len(positions) == pixels.shape[1] else pixels[:, positions]
                term = self.pixel.loss(pixels, None, per_frame=per_frame, frame_indices=indices)
                total = self.time.latent_frame_losses(term, None if indices is None else indices.tolist()) \
                    if per_frame else term
            if self.latent is not None:
                latents = self.latent_out(x0).movedim(2, 1)
                term = self.latent.loss(None, latents, per_frame=per_frame, frame_indices=frame_indices)
                total = term if total is None else total + term.to(total)
            return total

    def plan_chunk(self, x: Tensor, frames: int, setting: int, bytes_per_video: float = 0,
                   free_bytes: float | None = None) -> str:
        """Set `videos_per_call` from free memory; returns the report line. `setting` (decode_chunk_frames) must be
        0 or cover every frame: the causal VAE decodes a video exactly only in its own chunks, within one call."""
        if setting and setting < frames:
            raise ValueError(f"decode_chunk_frames {setting}: this VAE compresses time causally and decodes a video "
                             f"exactly only in one call (its own causal chunks carry a cache from chunk to chunk; "
                             f"separate calls would each restart the video); set 'decode chunk frames' to 0")
        if self.pixel is None:
            return ""
        videos = x.shape[0]
        self.videos_per_call = plan_videos_per_call(free_bytes, bytes_per_video, videos)
        where = "all at once on the CPU" if free_bytes is None else \
            f"planned from {free_bytes / 2**30:.1f} GiB free, {bytes_per_video / 2**30:.2f} GiB per video"
        return (f"{frames} latent frame(s) -> {self.time.decoded_frames(frames)} frame(s) per video in one VAE call "
                f"(the VAE's own causal chunks, exact), {self.videos_per_call} of {videos} video(s) per call ({where})")
