"""Differentiable input preprocessing matching the official CLIP and ImageBind pipelines.

The official pipelines work on PIL images or uint8 tensors and therefore round
pixels to 1/255 (and clip them to [0, 1]) after resizing; ComfyUI's
``clip_preprocess`` rounds as well. Rounding has zero gradient, so everything
here stays in floating point and never clamps; otherwise each step follows the
official geometry exactly (output sizes, crop offsets, interpolation kernels).
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .base import IMAGE_RANGE_TOLERANCE, check_finite
from .function_transforms import constant

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ImageBind audio constants (imagebind/data.py: load_and_transform_audio_data).
IMAGEBIND_SAMPLE_RATE = 16000
IMAGEBIND_CLIP_DURATION_S = 2
IMAGEBIND_AUDIO_CLIPS_PER_VIDEO = 3
IMAGEBIND_VIDEO_CLIPS_PER_VIDEO = 5
IMAGEBIND_NUM_MEL_BINS = 128
IMAGEBIND_AUDIO_TARGET_LENGTH = 204
IMAGEBIND_AUDIO_MEAN = -4.268
IMAGEBIND_AUDIO_STD = 9.138
IMAGEBIND_FRAME_LENGTH_MS = 25
IMAGEBIND_FRAME_SHIFT_MS = 10
IMAGEBIND_IMAGE_SIZE = 224

CROP_ROUNDINGS = ("round", "floor")


def image_to_nchw(
    image: torch.Tensor,
    name: str = "image",
    range_tolerance: float = IMAGE_RANGE_TOLERANCE,
) -> torch.Tensor:
    """Convert an image or image batch to (N, 3, H, W), checking layout and [0, 1] range.

    Accepts ComfyUI IMAGE layout (N, H, W, 3) or (H, W, 3), and channels-first
    (N, 3, H, W) or (3, H, W). When both the first and last axes could be
    channels, the ComfyUI channels-last reading wins.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(image).__name__}.")
    if image.ndim not in (3, 4):
        raise ValueError(
            f"{name} must have shape (H, W, 3), (N, H, W, 3), (3, H, W) or (N, 3, H, W); got {tuple(image.shape)}."
        )
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor in [0, 1], got dtype {image.dtype}.")
    batched = image if image.ndim == 4 else image.unsqueeze(0)
    if batched.shape[-1] == 3:
        batched = batched.movedim(-1, 1)
    elif batched.shape[1] != 3:
        raise ValueError(
            f"{name} must have 3 RGB channels (last axis for ComfyUI images, or first axis channels-first); "
            f"got shape {tuple(image.shape)}."
        )
    if batched.shape[0] < 1 or batched.shape[2] < 1 or batched.shape[3] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(image.shape)}.")
    check_finite(batched, name)
    with torch.no_grad():
        low, high = float(batched.detach().min()), float(batched.detach().max())
    if low < -range_tolerance or high > 1.0 + range_tolerance:
        raise ValueError(
            f"{name} values must lie in [0, 1]; got range [{low:.4g}, {high:.4g}]. "
            "Convert [0, 255] data with x / 255."
        )
    return batched


def normalize_channels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalise channel dimension 1 with per-channel mean and std (out of place)."""
    shape = [1, len(mean)] + [1] * (images.ndim - 2)
    mean_t = constant(mean, images.device, images.dtype).view(shape)
    std_t = constant(std, images.device, images.dtype).view(shape)
    return (images - mean_t) / std_t


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) when the shortest side is resized to ``size`` (torchvision/HF truncation)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def center_crop_offsets(height: int, width: int, size: int, rounding: str = "round") -> tuple[int, int]:
    """Top/left offsets of a centred ``size`` crop.

    ``rounding="round"`` follows torchvision ``CenterCrop`` (open_clip);
    ``"floor"`` follows transformers ``CLIPImageProcessor``. They differ by one
    pixel when the excess is an odd number with an odd half (e.g. 3 -> 2 vs 1).
    """
    if rounding not in CROP_ROUNDINGS:
        raise ValueError(f"crop rounding must be one of {CROP_ROUNDINGS}, got {rounding!r}.")
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} out of a {height}x{width} image.")
    if rounding == "round":
        return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return (height - size) // 2, (width - size) // 2


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    crop_rounding: str = "round",
) -> torch.Tensor:
    """Differentiable CLIP preprocessing of (N, 3, H, W) images in [0, 1].

    Shortest side to ``size`` (bicubic, antialiased, the kernel torchvision and
    PIL use), centre crop ``size`` x ``size``, normalise with ``mean``/``std``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"clip_preprocess expects images of shape (N, 3, H, W), got {tuple(images.shape)}.")
    height, width = images.shape[-2:]
    new_height, new_width = shortest_side_size(height, width, size)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(
            images, size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False
        )
    top, left = center_crop_offsets(new_height, new_width, size, crop_rounding)
    images = images[:, :, top : top + size, left : left + size]
    return normalize_channels(images, mean, std)


def imagebind_short_side_size(height: int, width: int, size: int = IMAGEBIND_IMAGE_SIZE) -> tuple[int, int]:
    """Output (height, width) of pytorchvideo ``ShortSideScale`` (floor of the long side)."""
    if width < height:
        return int(math.floor((float(height) / width) * size)), size
    return size, int(math.floor((float(width) / height) * size))


def imagebind_crop_offsets(
    height: int, width: int, size: int = IMAGEBIND_IMAGE_SIZE, num_crops: int = 3
) -> list[tuple[int, int]]:
    """Top/left offsets of ImageBind's ``SpatialCrop`` (3 crops: start, centre, end; 1 crop: centre)."""
    if num_crops not in (1, 3):
        raise ValueError(f"ImageBind uses 1 or 3 spatial crops, got {num_crops}.")
    spatial_indices = [0, 1, 2] if num_crops == 3 else [1]
    offsets = []
    for spatial_index in spatial_indices:
        top = int(math.ceil((height - size) / 2))
        left = int(math.ceil((width - size) / 2))
        if height > width:
            top = {0: 0, 1: top, 2: height - size}[spatial_index]
        else:
            left = {0: 0, 1: left, 2: width - size}[spatial_index]
        offsets.append((top, left))
    return offsets


def imagebind_vision_frames(frames: torch.Tensor, size: int = IMAGEBIND_IMAGE_SIZE) -> torch.Tensor:
    """ImageBind video-frame transform of (N, 3, H, W) in [0, 1]: ShortSideScale (bilinear) + CLIP normalise."""
    height, width = frames.shape[-2:]
    new_height, new_width = imagebind_short_side_size(height, width, size)
    if (new_height, new_width) != (height, width):
        frames = F.interpolate(frames, size=(new_height, new_width), mode="bilinear", align_corners=False)
    return normalize_channels(frames, CLIP_MEAN, CLIP_STD)


def constant_clip_windows(
    duration_s: Fraction | float, clip_duration_s: Fraction | float, clips_per_video: int
) -> list[tuple[Fraction, Fraction]]:
    """(start, end) seconds of pytorchvideo's ``ConstantClipsPerVideoSampler`` over ``duration_s``.

    Starts are ``i * max(duration - clip, 0) / clips_per_video`` for
    ``i < clips_per_video`` (the last clip does not reach the end; short
    inputs give identical clips starting at 0), each ``clip_duration_s`` long.
    """
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}.")
    duration = Fraction(duration_s)
    clip = Fraction(clip_duration_s)
    step = Fraction(max(duration - clip, 0), clips_per_video)
    return [(step * index, step * index + clip) for index in range(clips_per_video)]


def imagebind_clip_frame_pairs(
    num_frames: int,
    fps: float,
    mode: str = "pairs",
    clips_per_video: int = IMAGEBIND_VIDEO_CLIPS_PER_VIDEO,
) -> list[tuple[int, int]]:
    """Frame indices of the 2-frame vision clips that ImageBind sees for a video of ``num_frames``.

    ``mode="pairs"``: consecutive non-overlapping pairs (0, 1), (2, 3), ...; an
    odd last frame becomes the clip (F-1, F-1), like ImageBind's image-to-video
    padding. Every frame receives gradient.

    ``mode="official"``: ImageBind's video loader: ``clips_per_video`` windows of
    2 s from ``ConstantClipsPerVideoSampler`` over the F / fps seconds; in each,
    the frames with timestamps k / fps in [start, end) are subsampled uniformly
    to 2 (first and last). Frames between those get no gradient.
    """
    if num_frames < 1:
        raise ValueError(f"the video needs at least one frame, got {num_frames}.")
    if mode == "pairs":
        pairs = [(index, index + 1) for index in range(0, num_frames - 1, 2)]
        if num_frames % 2 == 1:
            pairs.append((num_frames - 1, num_frames - 1))
        return pairs
    if mode != "official":
        raise ValueError(f"vision clip mode must be 'pairs' or 'official', got {mode!r}.")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    rate = Fraction(fps)
    windows = constant_clip_windows(Fraction(num_frames) / rate, IMAGEBIND_CLIP_DURATION_S, clips_per_video)
    pairs = []
    for start, end in windows:
        inside = [index for index in range(num_frames) if start <= Fraction(index) / rate < end]
        if not inside:
            raise ValueError(f"no frame falls in the clip window [{float(start)}, {float(end)}) s.")
        pairs.append((inside[0], inside[-1]))
    return pairs


def count_unique(items: Sequence) -> tuple[list, list[int]]:
    """Unique items in first-seen order and how often each occurs."""
    counts = Counter(items)
    unique = list(dict.fromkeys(items))
    return unique, [counts[item] for item in unique]


def audio_to_mono(audio: Mapping, target_sample_rate: int = IMAGEBIND_SAMPLE_RATE) -> torch.Tensor:
    """ComfyUI AUDIO {"waveform": (B, C, N), "sample_rate": int} -> mono (B, N) float32 at ``target_sample_rate``.

    Channels are averaged; other sample rates are resampled with
    ``torchaudio.functional.resample`` (the official loader's call).
    """
    if audio is None:
        raise ValueError("no audio given: connect a ComfyUI AUDIO input (e.g. from a Load Audio node).")
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError('audio must be a ComfyUI AUDIO dict {"waveform": (B, C, N) tensor, "sample_rate": int}.')
    waveform = audio["waveform"]
    sample_rate = audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"audio['waveform'] must be a tensor of shape (B, C, N), got {shape}.")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"audio['sample_rate'] must be a positive int, got {sample_rate!r}.")
    if waveform.shape[0] < 1 or waveform.shape[1] < 1 or waveform.shape[2] < 1:
        raise ValueError(f"the audio is empty: waveform shape {tuple(waveform.shape)}.")
    if not waveform.is_floating_point():
        raise ValueError(f"audio['waveform'] must be floating point, got {waveform.dtype}.")
    check_finite(waveform, "audio waveform")
    mono = waveform.detach().to(torch.float32).mean(dim=1)
    if sample_rate != target_sample_rate:
        import torchaudio

        mono = torchaudio.functional.resample(mono, orig_freq=sample_rate, new_freq=target_sample_rate)
    return mono


def imagebind_melspec(
    clip_waveform: torch.Tensor,
    sample_rate: int = IMAGEBIND_SAMPLE_RATE,
    num_mel_bins: int = IMAGEBIND_NUM_MEL_BINS,
    target_length: int = IMAGEBIND_AUDIO_TARGET_LENGTH,
) -> torch.Tensor:
    """Normalised log-mel filterbank (1, mel, target_length) of one mono clip (N,), as ImageBind's data.py.

    Kaldi fbank (25 ms Hanning frames, 10 ms shift, HTK mel, no dither, no
    energy) of the mean-removed clip, zero-padded or cropped to
    ``target_length`` frames, then ``(x - (-4.268)) / 9.138``.
    """
    import torchaudio

    if clip_waveform.ndim != 1:
        raise ValueError(f"expected a mono clip (N,), got shape {tuple(clip_waveform.shape)}.")
    min_samples = int(sample_rate * IMAGEBIND_FRAME_LENGTH_MS / 1000)
    if clip_waveform.shape[0] < min_samples:
        raise ValueError(
            f"an audio clip of {clip_waveform.shape[0]} samples is shorter than one 25 ms analysis frame "
            f"({min_samples} samples at {sample_rate} Hz)."
        )
    centred = (clip_waveform - clip_waveform.mean()).unsqueeze(0)
    fbank = torchaudio.compliance.kaldi.fbank(
        centred,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_length=IMAGEBIND_FRAME_LENGTH_MS,
        frame_shift=IMAGEBIND_FRAME_SHIFT_MS,
    ).transpose(0, 1)
    missing = target_length - fbank.shape[1]
    if missing > 0:
        fbank = F.pad(fbank, (0, missing), mode="constant", value=0.0)
    elif missing < 0:
        fbank = fbank[:, :target_length]
    return ((fbank - IMAGEBIND_AUDIO_MEAN) / IMAGEBIND_AUDIO_STD).unsqueeze(0)


def imagebind_audio_clips(
    mono: torch.Tensor,
    start_s: float,
    duration_s: float,
    clips_per_video: int = IMAGEBIND_AUDIO_CLIPS_PER_VIDEO,
    sample_rate: int = IMAGEBIND_SAMPLE_RATE,
) -> torch.Tensor:
    """Mel clips (clips, 1, mel, 204) of a mono waveform (N,) over [start_s, start_s + duration_s].

    Windows come from ``ConstantClipsPerVideoSampler`` (2 s each) over the span,
    shifted by ``start_s``; sample bounds use the official ``int(t * rate)``.
    A window running past the end of the audio is read as far as the audio
    goes and its filterbank zero-padded, as in the official loader.
    """
    if start_s < 0:
        raise ValueError(f"audio start must be >= 0 s, got {start_s}.")
    available_s = mono.shape[-1] / sample_rate
    if available_s + 1e-9 < start_s + duration_s:
        raise ValueError(
            f"the audio is {float(available_s):.3f} s long but the video spans {float(duration_s):.3f} s starting at "
            f"{float(start_s):.3f} s; provide audio at least {float(start_s + duration_s):.3f} s long "
            "(or lower the audio start offset / shorten the video)."
        )
    offset = Fraction(start_s)
    clips = []
    for start, end in constant_clip_windows(duration_s, IMAGEBIND_CLIP_DURATION_S, clips_per_video):
        first = int((offset + start) * sample_rate)
        last = int((offset + end) * sample_rate)
        clips.append(imagebind_melspec(mono[first:last], sample_rate))
    return torch.stack(clips, dim=0)
