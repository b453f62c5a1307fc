"""Common contract, input validation and forward-AD helpers for guidance objectives.

Every objective is a frozen ``torch.nn.Module`` that maps a batch of videos to a
per-video loss (lower is better) and is differentiable in reverse mode
(``torch.autograd``) and in forward mode (``torch.func.jvp``).
"""

from __future__ import annotations

import contextlib
from typing import FrozenSet, Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# Decoded videos may overshoot [0, 1] slightly (an unclamped VAE decode); anything
# further out means a wrong value range (e.g. [-1, 1] or [0, 255]).
VIDEO_RANGE_TOLERANCE = 0.25
# User images (ComfyUI IMAGE) are exact [0, 1] data.
IMAGE_RANGE_TOLERANCE = 1e-3


def _describe_range(tensor: torch.Tensor) -> tuple[float, float]:
    """Return (min, max) of a tensor as Python floats without recording AD history."""
    with torch.no_grad():
        values = tensor.detach()
        return float(values.min()), float(values.max())


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError if a tensor holds NaN or infinite values."""
    with torch.no_grad():
        finite = bool(torch.isfinite(tensor.detach()).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values; check the upstream computation.")


def check_video(
    video: torch.Tensor,
    min_frames: int = 1,
    range_tolerance: float = VIDEO_RANGE_TOLERANCE,
    name: str = "video",
) -> None:
    """Validate a video batch (B, F, 3, H, W), float RGB in [0, 1]; raise ValueError if not."""
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, F, 3, H, W), got {type(video).__name__}.")
    if video.ndim != 5:
        raise ValueError(
            f"{name} must have 5 dimensions (B, F, 3, H, W), got shape {tuple(video.shape)}. "
            "A ComfyUI IMAGE batch (F, H, W, 3) must be converted with image.movedim(-1, 1).unsqueeze(0)."
        )
    if not video.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {video.dtype}.")
    if video.shape[2] != 3:
        raise ValueError(
            f"{name} must have 3 RGB channels in dimension 2 (B, F, 3, H, W), got shape {tuple(video.shape)}."
        )
    if video.shape[0] < 1 or video.shape[3] < 1 or video.shape[4] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(video.shape)}.")
    if video.shape[1] < min_frames:
        raise ValueError(f"{name} has {video.shape[1]} frame(s) but this objective needs at least {min_frames}.")
    check_finite(video, name)
    low, high = _describe_range(video)
    if low < -range_tolerance or high > 1.0 + range_tolerance:
        raise ValueError(
            f"{name} values must lie in [0, 1] (tolerance {range_tolerance}); got range [{low:.4g}, {high:.4g}]. "
            "Convert [-1, 1] data with (x + 1) / 2 and [0, 255] data with x / 255."
        )


def check_latents(latents: torch.Tensor, min_frames: int = 1, name: str = "latents") -> None:
    """Validate a latent video batch (B, F, C, h, w); raise ValueError if not."""
    if not isinstance(latents, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, F, C, h, w), got {type(latents).__name__}.")
    if latents.ndim != 5:
        raise ValueError(f"{name} must have 5 dimensions (B, F, C, h, w), got shape {tuple(latents.shape)}.")
    if not latents.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {latents.dtype}.")
    if latents.shape[1] < min_frames:
        raise ValueError(f"{name} has {latents.shape[1]} frame(s) but this objective needs at least {min_frames}.")
    check_finite(latents, name)


TORCH_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_weights_file(path, what: str, missing_hint: str) -> dict:
    """Load a state dict with safetensors or ``torch.load(weights_only=True)``; clear errors otherwise.

    ``what`` names the model for messages; ``missing_hint`` says where the file
    belongs and where to get it (appended to the FileNotFoundError).
    """
    import os

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights not found: '{path}'. {missing_hint}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            checkpoint = load_file(path, device="cpu")
        except Exception as error:  # corrupt or truncated file
            raise ValueError(f"could not read '{path}' as a safetensors file ({error}); re-download it.") from error
    elif suffix in TORCH_WEIGHT_SUFFIXES:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"could not load '{path}' with torch.load(weights_only=True) ({error}). Only plain tensor "
                "checkpoints are accepted (no pickled code, no TorchScript archives); convert it to .safetensors."
            ) from error
    else:
        raise ValueError(
            f"unsupported weights file type '{suffix}' for '{path}'; expected .safetensors or one of "
            f"{', '.join(TORCH_WEIGHT_SUFFIXES)}."
        )
    if isinstance(checkpoint, dict):
        for wrapper_key in ("state_dict", "model"):
            inner = checkpoint.get(wrapper_key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                checkpoint = inner
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"'{path}' does not contain a state dict (name -> tensor mapping).")
    tensors = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"'{path}' contains no tensors.")
    if all(key.startswith("module.") for key in tensors):  # saved from DistributedDataParallel
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


def describe_key_mismatch(missing, unexpected, limit: int = 5) -> str:
    """One-line summary of missing/unexpected state-dict keys for error messages."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(sorted(missing)[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(sorted(unexpected)[:limit])})")
    return "; ".join(parts) if parts else "no key differences"


def load_state_dict_checked(model: nn.Module, weights, source, expected: str) -> None:
    """Load `weights` strictly into `model`, or raise a ValueError naming `source`, `expected` and the mismatch."""
    reference = model.state_dict()
    missing = set(reference) - set(weights)
    unexpected = set(weights) - set(reference)
    wrong_shape = [key for key in set(reference) & set(weights) if reference[key].shape != weights[key].shape]
    if missing or unexpected or wrong_shape:
        detail = describe_key_mismatch(missing, unexpected)
        if wrong_shape:
            key = sorted(wrong_shape)[0]
            detail += (f"; {len(wrong_shape)} with other shapes (e.g. {key}: file {tuple(weights[key].shape)} vs "
                       f"model {tuple(reference[key].shape)})")
        raise ValueError(f"{source} does not match {expected}: {detail}.")
    model.load_state_dict(weights, strict=True)


def freeze(module: nn.Module) -> nn.Module:
    """Put a module in eval mode and stop gradients into its parameters; return it."""
    module.eval()
    module.requires_grad_(False)
    return module


@contextlib.contextmanager
def forward_ad_safe_attention() -> Iterator[None]:
    """Route attention through decomposed kernels that have forward-mode derivatives.

    Fused SDPA kernels (flash, memory-efficient, CPU flash) and the fused
    ``nn.MultiheadAttention`` fast path have no forward derivative, so
    ``torch.func.jvp`` would fail inside third-party models that use them.
    """
    previous_fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # Fused SDPA kernels have no forward derivative; MATH is plain matmul/softmax.
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous_fastpath)


class VideoObjective(nn.Module):
    """Base class of guidance objectives (losses; lower is better).

    Contract:

    * ``forward(video)`` takes ``video`` of shape (B, F, 3, H, W), floating point,
      RGB in [0, 1] (values up to ``VIDEO_RANGE_TOLERANCE`` outside are accepted,
      since an unclamped decode overshoots a little), and returns a per-video loss
      of shape (B,).
    * ``frame_losses(video)`` (only where ``has_frame_losses`` is True) returns
      per-frame terms of shape (B, F) with ``forward(video) ==
      frame_losses(video).mean(dim=1)``; used for per-frame JVPs.
    * ``needs`` names extra inputs the objective is built from (e.g.
      ``{"audio", "fps"}``); nodes must supply them at construction.
    * ``input_space`` is ``"pixels"`` for decoded videos and ``"latent"`` for
      objectives that read latents (B, F, C, h, w) directly (no VAE decode).
    * Everything is differentiable in reverse mode and in forward mode
      (``torch.func.jvp``): no in-place ops on tangent-carrying tensors, attention
      only through decomposed kernels (see ``forward_ad_safe_attention``).
    * Guidance networks inside an objective are frozen (eval mode, no parameter
      gradients); targets are computed once at construction.
    """

    needs: FrozenSet[str] = frozenset()
    input_space: str = "pixels"
    has_frame_losses: bool = False
    min_frames: int = 1

    def check_video(self, video: torch.Tensor) -> None:
        """Validate this objective's input (video or latents) and raise ValueError if unusable."""
        if self.input_space == "latent":
            check_latents(video, min_frames=self.min_frames)
        else:
            check_video(video, min_frames=self.min_frames)

    def frame_losses(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame loss terms (B, F); objectives without per-frame terms raise NotImplementedError."""
        raise NotImplementedError(
            f"{type(self).__name__} has no per-frame losses (has_frame_losses is False); use forward(video)."
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Per-video loss (B,); by default the mean of ``frame_losses`` over frames."""
        if not self.has_frame_losses:
            raise NotImplementedError(f"{type(self).__name__} must implement forward(video).")
        return self.frame_losses(video).mean(dim=1)
