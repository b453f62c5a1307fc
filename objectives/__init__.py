"""Differentiable guidance objectives (plain PyTorch; never imports comfy).

Every objective follows the contract of ``objectives.base.VideoObjective``:
video (B, F, 3, H, W) RGB in [0, 1] -> per-video loss (B,), differentiable in
reverse and forward mode.
"""

from .base import (
    IMAGE_RANGE_TOLERANCE,
    VIDEO_RANGE_TOLERANCE,
    VideoObjective,
    check_latents,
    check_video,
    forward_ad_safe_attention,
    freeze,
)
from .attribute_classifier import AttributeClassifierLoss, load_attribute_classifier
from .color import ColorLoss
from .dover import DoverLoss, load_dover
from .frame_interpolation import FrameInterpolationLoss, LatentFrameInterpolationLoss
from .imagebind_audio import ImageBindAudioLoss, load_imagebind
from .style_clip import ClipModel, StyleLoss, load_clip_vision, load_open_clip

__all__ = [
    "AttributeClassifierLoss",
    "ClipModel",
    "ColorLoss",
    "DoverLoss",
    "FrameInterpolationLoss",
    "IMAGE_RANGE_TOLERANCE",
    "ImageBindAudioLoss",
    "LatentFrameInterpolationLoss",
    "StyleLoss",
    "VIDEO_RANGE_TOLERANCE",
    "VideoObjective",
    "check_latents",
    "check_video",
    "forward_ad_safe_attention",
    "freeze",
    "load_attribute_classifier",
    "load_clip_vision",
    "load_dover",
    "load_imagebind",
    "load_open_clip",
]
