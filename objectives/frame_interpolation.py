"""Frame interpolation objective (paper eq. 11): match known frames, let guidance fill the rest.

The paper maximises ``exp(-||A(X0) - y||)`` where ``A`` selects the known
frames of the clean video ``X0`` and ``y`` holds them. Here the loss uses the
squared error (smooth at zero, so its gradient does not blow up near the
target), normalised per element:

* ``frame_losses[b, f] = mean over (3, H, W) of (X0[b, f] - y_f)^2`` for a known
  frame f, and 0 for unknown frames;
* ``forward(video) = frame_losses.mean(dim=1)`` i.e.
  ``||A(X0) - y||^2 / (F * 3 * H * W)``.

``LatentFrameInterpolationLoss`` is the same on latents (B, F, C, h, w) against
keyframe latents encoded once by the caller's VAE: no decode, much cheaper.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import torch

from .base import VIDEO_RANGE_TOLERANCE, VideoObjective, check_finite, check_video
from .preprocess import image_to_nchw

# A range tolerance for decoders that overshoot [0, 1] by more than an image VAE: the embedded model's exact,
# unclamped linear codec decodes the x0 estimate of the first step of an unguided 6-step run to [-1.8, 2.1],
# and guided runs reach a few units more. The squared error is defined for any values; this tolerance still
# refuses [0, 255] data (but no longer [-1, 1] data, which the default tolerance catches).
DECODED_RANGE_TOLERANCE = 20.0


def _as_index_list(indices) -> list[int]:
    """Validate frame indices (ints, negatives count from the end) and return them as a list."""
    if isinstance(indices, torch.Tensor):
        if indices.dtype == torch.bool or indices.is_floating_point():
            raise ValueError("frame indices must be integers; pass a boolean mask as mask= instead.")
        indices = indices.flatten().tolist()
    indices = list(indices)
    if not indices:
        raise ValueError("give at least one known frame index.")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"frame indices must be ints, got {index!r}.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"frame indices must be distinct, got {indices}.")
    return indices


def _mask_to_indices(mask) -> tuple[list[int], int]:
    """Known-frame indices and total frame count from a boolean mask over frames."""
    mask_tensor = torch.as_tensor(mask)
    if mask_tensor.ndim != 1 or mask_tensor.dtype != torch.bool:
        raise ValueError("mask must be a 1-D boolean sequence over the video's frames (True = known frame).")
    indices = torch.nonzero(mask_tensor).flatten().tolist()
    if not indices:
        raise ValueError("mask marks no frame as known.")
    return indices, int(mask_tensor.shape[0])


class _KnownFrameMSE(VideoObjective):
    """Shared logic: per-frame mean squared error against targets at known frame indices."""

    has_frame_losses = True
    target_name = "keyframes"

    def __init__(self, targets: torch.Tensor, indices=None, mask=None):
        super().__init__()
        if (indices is None) == (mask is None):
            raise ValueError("give exactly one of indices (list of ints) or mask (booleans over frames).")
        if mask is not None:
            self.indices, self.mask_frames = _mask_to_indices(mask)
        else:
            self.indices, self.mask_frames = _as_index_list(indices), None
        if targets.shape[0] != len(self.indices):
            raise ValueError(
                f"got {targets.shape[0]} {self.target_name} but {len(self.indices)} known frame indices "
                f"{self.indices}; each {self.target_name[:-1]} needs exactly one index."
            )
        check_finite(targets, self.target_name)
        self.register_buffer("targets", targets.detach().clone())

    def resolved_indices(self, num_frames: int) -> list[int]:
        """Known-frame indices as non-negative positions in a video of ``num_frames`` frames."""
        if self.mask_frames is not None and self.mask_frames != num_frames:
            raise ValueError(f"the mask covers {self.mask_frames} frames but the video has {num_frames}.")
        resolved = []
        for index in self.indices:
            if not -num_frames <= index < num_frames:
                raise ValueError(
                    f"known frame index {index} is out of range for a video of {num_frames} frames "
                    f"(valid: 0..{num_frames - 1}, or negative from the end)."
                )
            resolved.append(index % num_frames)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"indices {self.indices} name the same frame twice in a {num_frames}-frame video.")
        return resolved

    def frame_losses(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame squared error (B, F): mean over elements at known frames, 0 elsewhere."""
        self.check_video(video)
        batch, num_frames = video.shape[:2]
        if video.shape[2:] != self.targets.shape[1:]:
            raise ValueError(
                f"{self.target_name} have per-frame shape {tuple(self.targets.shape[1:])} but the video frames "
                f"have {tuple(video.shape[2:])}; {self.mismatch_advice}"
            )
        indices = self.resolved_indices(num_frames)
        selected = video[:, indices]
        known = (selected - self.targets.to(video.dtype)).square().mean(dim=(2, 3, 4))
        # (B, K) -> (B, F) through a one-hot map: no in-place writes on tangent-carrying tensors.
        placement = torch.zeros(len(indices), num_frames, dtype=video.dtype, device=video.device)
        placement[torch.arange(len(indices)), torch.tensor(indices)] = 1
        return known @ placement


class FrameInterpolationLoss(_KnownFrameMSE):
    """Keyframe matching in pixel space: video (B, F, 3, H, W) vs keyframes at given frame indices.

    ``keyframes``: ComfyUI IMAGE batch (K, H, W, 3) or (K, 3, H, W), in [0, 1],
    the same size as the video frames (mismatched sizes are refused, not
    resized: resize the keyframes before, e.g. with ComfyUI's Upscale Image).
    ``indices``: K distinct ints (negative counts from the end, e.g. [0, -1]
    for first and last) or ``mask``: booleans over the F frames with K True.
    The same keyframes apply to every video of the batch. ``range_tolerance``:
    how far the video may leave [0, 1] (default 0.25, an image VAE's overshoot;
    ``DECODED_RANGE_TOLERANCE`` for the embedded model's unclamped codec).
    """

    target_name = "keyframes"
    mismatch_advice = "resize the keyframes to the video size (e.g. ComfyUI 'Upscale Image') first."

    def __init__(self, keyframes: torch.Tensor, indices: Optional[Sequence[int]] = None, mask=None,
                 range_tolerance: float = VIDEO_RANGE_TOLERANCE):
        if not range_tolerance >= 0:
            raise ValueError(f"range_tolerance must be >= 0, got {range_tolerance}")
        super().__init__(image_to_nchw(keyframes, name="keyframes"), indices=indices, mask=mask)
        self.range_tolerance = float(range_tolerance)

    def check_video(self, video: torch.Tensor) -> None:
        """Validate (B, F, 3, H, W) in [0, 1] up to ``range_tolerance`` outside."""
        check_video(video, min_frames=self.min_frames, range_tolerance=self.range_tolerance)


class LatentFrameInterpolationLoss(_KnownFrameMSE):
    """Keyframe matching in latent space: latents (B, F, C, h, w) vs keyframe latents (K, C, h, w).

    The caller encodes the keyframes once with the model's VAE; ``indices``
    refer to LATENT frames (with a temporally compressing video VAE, pixel
    frame 4k+1 maps to latent frame k+1 — convert before). Costs no decode.
    ``input_space`` is "latent": ``forward`` takes latents, not pixels.
    """

    input_space = "latent"
    target_name = "key latents"
    mismatch_advice = "encode keyframes of the video's size with the same VAE."

    def __init__(self, key_latents: torch.Tensor, indices: Optional[Sequence[int]] = None, mask=None):
        if not isinstance(key_latents, torch.Tensor) or key_latents.ndim != 4 or not key_latents.is_floating_point():
            shape = tuple(key_latents.shape) if isinstance(key_latents, torch.Tensor) else type(key_latents).__name__
            raise ValueError(f"key_latents must be a float tensor (K, C, h, w), got {shape}.")
        super().__init__(key_latents, indices=indices, mask=mask)


def parse_keyframe_indices(text: str) -> list[int]:
    """'0, 8, -1' -> [0, 8, -1] (negative counts from the end); clear error otherwise."""
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    if not parts:
        raise ValueError("frame_indices is empty: give one frame index per keyframe (e.g. '0, -1') or connect a mask")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"frame_indices must be whole numbers separated by commas (e.g. '0, 8, -1'), got {text!r}") \
            from None


def mask_to_known_frames(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK with one mask per video frame -> boolean (F,): True where the frame's mask is all 1."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"mask must be a ComfyUI MASK (frames, H, W), got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    per_frame = mask.reshape(mask.shape[0] if mask.ndim == 3 else 1, -1).float()
    low, high = per_frame.min(dim=1).values, per_frame.max(dim=1).values
    mixed = [f for f in range(per_frame.shape[0])
             if not ((high[f] <= 1e-3) or (low[f] >= 1 - 1e-3))]
    if mixed:
        raise ValueError(f"mask frames {mixed} are neither all 0 nor all 1; the mask marks whole frames (1 = known "
                         "keyframe, 0 = to generate), one mask per video frame")
    return low >= 1 - 1e-3


def keyframe_objective(keyframes: torch.Tensor, frame_indices: str, space: str, mask: Optional[torch.Tensor] = None,
                       encode=None) -> tuple[torch.nn.Module, str]:
    """(loss, description) of keyframe matching from a ComfyUI IMAGE batch of keyframes (K, H, W, 3), placed by
    `frame_indices` text (e.g. '0, -1') or a per-frame MASK: on the decoded video (space "pixels"), or on latents
    against `encode(keyframes)` (space "latent"; `encode` is the sampler VAE's, so the latents are in the space the
    sampler hands latent objectives)."""
    if not isinstance(keyframes, torch.Tensor) or keyframes.ndim != 4 or keyframes.shape[-1] != 3:
        shape = tuple(keyframes.shape) if isinstance(keyframes, torch.Tensor) else type(keyframes).__name__
        raise ValueError(f"keyframes must be a ComfyUI IMAGE batch (K, H, W, 3), got {shape}")
    selection = {"mask": mask_to_known_frames(mask)} if mask is not None else \
        {"indices": parse_keyframe_indices(frame_indices)}
    where = "mask" if mask is not None else f"frames {selection['indices']}"
    if space == "latent":
        if encode is None:
            raise ValueError("space 'latent' needs the vae input (the sampler's VAE) to encode the keyframes; "
                             "connect it or use space 'pixels'")
        # VAE space, as the sampler hands latent objectives process_latent_out(x0).
        key_latents = encode(keyframes)
        if key_latents.ndim != 4 or key_latents.shape[0] != keyframes.shape[0]:
            raise ValueError(
                f"the VAE encoded {keyframes.shape[0]} keyframes to latents of shape {tuple(key_latents.shape)}; "
                "space 'latent' needs an image VAE (one latent per frame): use space 'pixels'")
        with torch.inference_mode(False):  # normal tensors: backprop-based guesses may save them
            loss = LatentFrameInterpolationLoss(key_latents.float().clone(), **selection)
    else:
        with torch.inference_mode(False):
            # the video comes from the sampler's own decode (fixed convention); early Tweedie estimates of
            # unclamped decoders (the embedded codec) overshoot [0, 1] by far more than the default allows
            loss = FrameInterpolationLoss(keyframes.float().clone(), range_tolerance=DECODED_RANGE_TOLERANCE,
                                          **selection)
    name = f"frame interpolation ({space}, {keyframes.shape[0]} keyframe(s) at {where})"
    return loss, name
