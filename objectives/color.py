"""Mean-colour objective: how far a video's average colour (and brightness) is from a target.

A simple, honest pixel objective that needs no weights, so it works with any model, including random test
checkpoints. Differentiable in reverse and forward mode (means, squares and a dot product only).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import VideoObjective

# Rec. 709 luma weights: brightness of a linear RGB colour.
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)

MODES = ("video", "frame")


class ColorLoss(VideoObjective):
    """Squared distance of the mean colour to `target_rgb`, plus an optional brightness term.

    mode "video": the colour averaged over all frames and pixels is compared with the target (one term per
    video; no per-frame losses). mode "frame": every frame's mean colour is compared with the target and the
    per-video loss is the mean of the per-frame terms (so per-frame derivatives are available).
    colour term = mean over R, G, B of (mean colour - target)^2; brightness term = (luma - brightness)^2.
    Values are not range-checked: a non-finite decode yields a non-finite loss, which guidance skips.
    """

    def __init__(self, target_rgb: Sequence[float] = (1.0, 0.0, 0.0), color_weight: float = 1.0,
                 brightness: float = 0.5, brightness_weight: float = 0.0, mode: str = "frame"):
        super().__init__()
        target = [float(c) for c in target_rgb]
        if len(target) != 3 or not all(0.0 <= c <= 1.0 for c in target):
            raise ValueError(f"target colour must be three values in [0, 1] (R, G, B), got {list(target_rgb)}")
        if not 0.0 <= brightness <= 1.0:
            raise ValueError(f"brightness target must be in [0, 1], got {brightness}")
        if color_weight < 0 or brightness_weight < 0:
            raise ValueError(f"weights must be >= 0, got colour {color_weight}, brightness {brightness_weight}")
        if color_weight == 0 and brightness_weight == 0:
            raise ValueError("colour weight and brightness weight are both 0: the objective would be constant; "
                             "set at least one above 0")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.has_frame_losses = mode == "frame"
        self.color_weight, self.brightness_weight = float(color_weight), float(brightness_weight)
        self.brightness = float(brightness)
        self.register_buffer("target", torch.tensor(target, dtype=torch.float64), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA_WEIGHTS, dtype=torch.float64), persistent=False)

    def _check(self, video: torch.Tensor) -> None:
        """Shape and dtype checks only (see the class docstring for why values are not checked)."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[2] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"ColorLoss expects a video (B, F, 3, H, W) with RGB in [0, 1], got {shape}")
        if not video.is_floating_point():
            raise ValueError(f"ColorLoss expects a floating-point video, got dtype {video.dtype}")

    def _distance(self, mean_rgb: torch.Tensor) -> torch.Tensor:
        """Loss of mean colours (..., 3) -> (...)."""
        target = self.target.to(mean_rgb)
        loss = self.color_weight * (mean_rgb - target).square().mean(dim=-1)
        if self.brightness_weight:
            luma = (mean_rgb * self.luma.to(mean_rgb)).sum(dim=-1)
            loss = loss + self.brightness_weight * (luma - self.brightness).square()
        return loss

    def frame_losses(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame terms (B, F): each frame's mean colour against the target (mode "frame" only)."""
        if not self.has_frame_losses:
            raise NotImplementedError("ColorLoss in mode 'video' compares the whole video's mean colour and has "
                                      "no per-frame losses; use mode 'frame' or turn per-frame derivatives off")
        self._check(video)
        return self._distance(video.mean(dim=(3, 4)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Per-video loss (B,)."""
        if self.has_frame_losses:
            return self.frame_losses(video).mean(dim=1)
        self._check(video)
        return self._distance(video.mean(dim=(1, 3, 4)))
