"""Differentiable DOVER view sampling: technical fragments and the aesthetic resized view.

All functions take ``video`` of shape (B, F, 3, H, W), float RGB in [0, 1], and return model
inputs of shape (B, 3, T, h, w) normalised exactly like upstream DOVER, i.e. on 0-255 pixel
values: ``(255 * x - mean) / std`` with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375).
Everything is built from gathers and bilinear interpolation, so gradients (and forward-mode
tangents) flow to exactly the pixels that the views read.

Relation to upstream (``dover/datasets/dover_datasets.py``, config ``dover.yml``):

* Technical view ("fragments"): a 7x7 grid of 32x32 patches stitched into 224x224. The frame is cut
  into 7x7 cells (cell height ``H // 7``); each patch's top-left corner is the cell corner plus an
  offset drawn uniformly from ``[0, cell - 32)`` (0 when the cell is <= 32 px), with the corner
  clamped to ``H - 32``. One set of positions is used for all frames of a clip (upstream re-draws
  per 32-frame "aligned" chunk; our clips are a single chunk). ``sampling="random"`` draws offsets
  with the same ``torch.randint`` calls as upstream, from ``generator`` (seeded => deterministic;
  with a ``torch.Generator`` seeded ``s`` the positions equal upstream's after ``torch.manual_seed(s)``);
  ``sampling="center"`` uses the middle offset ``(cell - 32) // 2``.
  Frames smaller than the view are first upsampled bilinearly by ``1 / min(H/224, W/224)`` as
  upstream does (output size rounded, never below 224); unlike upstream (which computes the grid
  from the size *before* upsampling and so only samples the top-left part) we place the grid on
  the upsampled frame.
  No uint8 rounding: the float pipeline is kept differentiable.
* Aesthetic view: bilinear resize of every frame to 224x224 (aspect ratio not preserved),
  ``align_corners=False``. Upstream used ``torchvision.transforms.Resize`` on uint8 tensors with
  torch~=1.13, where tensor resizing is *not* antialiased; ``antialias=False`` is therefore the
  default here (set ``aesthetic_antialias=True`` for a smoother, alias-free downscale).
* Time: upstream feeds 32-frame clips (technical: 3 clips of 32 frames at interval 2; aesthetic:
  32 frames spread over the video). For short generated videos we resample the F frames to
  ``clip_len`` frames by nearest index ``floor(i * F / clip_len)`` (16 -> 32 repeats every frame
  twice), so the backbones see the token grid they were trained on (16 temporal tokens, two
  temporal windows with shifted windows). ``clip_len=None`` feeds the native frame count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .function_transforms import constant, outside_function_transforms

DOVER_MEAN_255 = (123.675, 116.28, 103.53)
DOVER_STD_255 = (58.395, 57.12, 57.375)

SAMPLING_MODES = ("random", "center")


@dataclass(frozen=True)
class DoverViewConfig:
    """Sizes of the two DOVER views; the defaults are the official ``dover.yml`` values."""

    fragments_h: int = 7
    fragments_w: int = 7
    fragment_size_h: int = 32
    fragment_size_w: int = 32
    aesthetic_size_h: int = 224
    aesthetic_size_w: int = 224
    technical_clip_len: Optional[int] = 32
    aesthetic_clip_len: Optional[int] = 32
    aesthetic_antialias: bool = False

    def __post_init__(self) -> None:
        for name in ("fragments_h", "fragments_w", "fragment_size_h", "fragment_size_w", "aesthetic_size_h", "aesthetic_size_w"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DoverViewConfig.{name} must be a positive int, got {value!r}")
        for name in ("technical_clip_len", "aesthetic_clip_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ValueError(f"DoverViewConfig.{name} must be None (native length) or an int >= 2, got {value!r}")

    @property
    def technical_size(self) -> Tuple[int, int]:
        """(height, width) of the stitched fragment view."""
        return self.fragments_h * self.fragment_size_h, self.fragments_w * self.fragment_size_w

    @property
    def min_frame_size(self) -> Tuple[int, int]:
        """Smallest accepted (height, width) of input frames: one fragment."""
        return self.fragment_size_h, self.fragment_size_w


def normalize_for_dover(frames: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
    """Map [0, 1] RGB to DOVER's input space, ``(255 * x - mean) / std`` along ``channel_dim``."""
    shape = [1] * frames.ndim
    shape[channel_dim] = 3
    mean = constant(DOVER_MEAN_255, frames.device, frames.dtype).reshape(shape)
    std = constant(DOVER_STD_255, frames.device, frames.dtype).reshape(shape)
    return (frames * 255.0 - mean) / std


def temporal_indices(num_frames: int, clip_len: Optional[int]) -> torch.Tensor:
    """Frame indices ``floor(i * num_frames / clip_len)`` for i < clip_len (all frames if clip_len is None)."""
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if clip_len is None:
        return torch.arange(num_frames)
    return torch.div(torch.arange(clip_len) * num_frames, clip_len, rounding_mode="floor")


def _to_model_layout(frames: torch.Tensor, clip_len: Optional[int]) -> torch.Tensor:
    """(B, F, 3, h, w) -> temporally resampled, normalised (B, 3, T, h, w)."""
    if clip_len is not None:
        indices = [i * frames.shape[1] // clip_len for i in range(clip_len)]  # temporal_indices, in Python
        frames = frames.index_select(1, constant(indices, frames.device, torch.long))
    return normalize_for_dover(frames).permute(0, 2, 1, 3, 4)


def upsample_to_cover(video: torch.Tensor, min_h: int, min_w: int) -> torch.Tensor:
    """Bilinearly upsample (B, F, 3, H, W) by ``1 / min(H/min_h, W/min_w)`` when that ratio is < 1 (upstream rule).

    The output size is rounded (upstream floors, which can land one pixel short of the view)
    and never below (min_h, min_w).
    """
    batch, frames, channels, height, width = video.shape
    ratio = min(height / min_h, width / min_w)
    if ratio >= 1:
        return video
    size = (max(min_h, round(height / ratio)), max(min_w, round(width / ratio)))
    flat = F.interpolate(video.reshape(batch * frames, channels, height, width), size=size, mode="bilinear", align_corners=False)
    return flat.reshape(batch, frames, channels, *size)


def fragment_positions(
    height: int,
    width: int,
    config: DoverViewConfig,
    sampling: str = "random",
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (tops, lefts), each (fragments_h, fragments_w) long, of the fragments in an H x W frame."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    gh, gw = config.fragments_h, config.fragments_w
    fh, fw = config.fragment_size_h, config.fragment_size_w
    if height < fh or width < fw:
        raise ValueError(f"frame {height}x{width} is smaller than one {fh}x{fw} fragment")
    cell_h, cell_w = height // gh, width // gw
    grid_h = torch.tensor([min(cell_h * i, height - fh) for i in range(gh)])
    grid_w = torch.tensor([min(cell_w * j, width - fw) for j in range(gw)])

    def offsets(cell: int, size: int) -> torch.Tensor:
        if cell <= size:
            return torch.zeros(gh, gw, dtype=torch.long)
        if sampling == "center":
            return torch.full((gh, gw), (cell - size) // 2, dtype=torch.long)
        # Same call (shape and bound) as upstream, so a seeded generator reproduces upstream positions.
        return torch.randint(cell - size, (gh, gw, 1), generator=generator)[..., 0]

    off_h = offsets(cell_h, fh)
    off_w = offsets(cell_w, fw)
    return grid_h[:, None] + off_h, grid_w[None, :] + off_w


def fragment_gather_index(width: int, tops: torch.Tensor, lefts: torch.Tensor, fragment_h: int, fragment_w: int) -> torch.Tensor:
    """Flat (row * width + col) source index of every pixel of the stitched view, row-major."""
    rows = tops[:, :, None] + torch.arange(fragment_h)  # gh, gw, fh
    cols = lefts[:, :, None] + torch.arange(fragment_w)  # gh, gw, fw
    flat = rows[:, :, :, None] * width + cols[:, :, None, :]  # gh, gw, fh, fw
    return flat.permute(0, 2, 1, 3).reshape(-1)  # stitched order: (gh, fh, gw, fw)


def technical_view(
    video: torch.Tensor,
    config: DoverViewConfig,
    sampling: str = "random",
    generator: Optional[torch.Generator] = None,
    positions: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Fragment view (B, 3, T, gh*fh, gw*fw), normalised; ``positions`` overrides the sampled corners."""
    video = upsample_to_cover(video, *config.technical_size)
    batch, frames, channels, height, width = video.shape
    # plain CPU index arithmetic: outside torch.func's wrapping, so the index can key a cached device copy
    with outside_function_transforms():
        if positions is None:
            positions = fragment_positions(height, width, config, sampling, generator)
        tops, lefts = positions
    fh, fw = config.fragment_size_h, config.fragment_size_w
    grid = (config.fragments_h, config.fragments_w)
    if tuple(tops.shape) != grid or tuple(lefts.shape) != grid:
        raise ValueError(f"fragment positions must be two {grid} tensors, got {tuple(tops.shape)} and {tuple(lefts.shape)}")
    with outside_function_transforms():
        if tops.min() < 0 or lefts.min() < 0 or tops.max() + fh > height or lefts.max() + fw > width:
            raise ValueError(f"fragment positions fall outside the {height}x{width} frame")
        flat_index = fragment_gather_index(width, tops, lefts, fh, fw).tolist()
    index = constant(flat_index, video.device, torch.long)
    view_h, view_w = config.technical_size
    stitched = video.reshape(batch, frames, channels, height * width).index_select(-1, index)
    return _to_model_layout(stitched.reshape(batch, frames, channels, view_h, view_w), config.technical_clip_len)


def aesthetic_view(video: torch.Tensor, config: DoverViewConfig) -> torch.Tensor:
    """Resized view (B, 3, T, aesthetic_size_h, aesthetic_size_w), normalised."""
    batch, frames, channels, height, width = video.shape
    size = (config.aesthetic_size_h, config.aesthetic_size_w)
    flat = video.reshape(batch * frames, channels, height, width)
    if (height, width) != size:
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=config.aesthetic_antialias)
    return _to_model_layout(flat.reshape(batch, frames, channels, *size), config.aesthetic_clip_len)
