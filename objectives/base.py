"""Common contract, input validation and forward-AD helpers for guidance objectives.

Every objective is a frozen ``torch.nn.Module`` that maps a batch of videos to a
per-video loss (lower is better) and is differentiable in reverse mode
(``torch.autograd``) and in forward mode (``torch.func.jvp``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, FrozenSet, Hashable, Iterator, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .function_transforms import capturing, outside_function_transforms

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
    """Raise ValueError if a tensor holds NaN or infinite values (not checked while a CUDA graph is captured)."""
    if capturing(tensor):  # the eager call before every capture saw the same computation
        return
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
    if capturing(video):  # values cannot be read back during capture; the eager call before it checked them
        return
    low, high = _describe_range(video)
    if low < -range_tolerance or high > 1.0 + range_tolerance:
        raise ValueError(
            f"{name} values must lie in [0, 1] (tolerance {range_tolerance}); got range [{low:.4g}, {high:.4g}]. "
            "Convert [-1, 1] data with (x + 1) / 2 and [0, 255] data with x / 255."
        )


def clamp_for_scoring(video: torch.Tensor, tolerance: Optional[float], name: str) -> torch.Tensor:
    """A decoded guidance estimate as an objective scores it: unchanged (bitwise) inside [-tolerance, 1 + tolerance],
    else clamped to that range with a warning. An estimate that overshoots further (early steps of a small model,
    a high strength or objective weight) is a state of the guidance, not bad user data: the clamped pixels give no
    gradient, the others still guide. NaN is left for the objective's finiteness check."""
    if tolerance is None or capturing(video):
        return video
    low, high = _describe_range(video)
    if not (low < -tolerance or high > 1.0 + tolerance):
        return video
    import warnings

    warnings.warn(f"the decoded estimate overshot the [{-tolerance:g}, {1 + tolerance:g}] range that {name} scores "
                  "(a high 'strength' or objective 'weight', or a small model's early estimates); guidance clamped it "
                  "to that range for scoring")
    return video.clamp(-tolerance, 1.0 + tolerance)


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


def torch_load_weights(path) -> object:
    """`torch.load(weights_only=True)`, memory-mapped where the file allows: tensors are read from the page cache
    as a state-dict load copies them, not copied once more first (imagebind_huge.pth, 4.8 GB: 3.2 -> 0.3 s on this
    machine with the file cached). Files in the pre-1.6 format cannot be mapped and are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


class _RandomInitSkipped(TorchFunctionMode):
    """See `random_init_skipped`. Some of torch.nn.init's initialisers dispatch to the mode themselves (the tensor
    may come as a keyword), the others end in Tensor.uniform_ / normal_. Matched by name: transformers replaces
    torch.nn.init's functions with wrappers of the same name while it builds a model."""

    FILLS = frozenset({"uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                       "xavier_normal_", "trunc_normal_", "orthogonal_"})
    FACTORIES = (torch.randn, torch.rand)  # e.g. CLIP's class embedding, nn.Parameter(torch.randn(width))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.FILLS:
            return args[0] if args else kwargs["tensor"]
        if func in self.FACTORIES:
            return torch.empty(*args, **{k: v for k, v in (kwargs or {}).items() if k != "generator"})
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def random_init_skipped() -> Iterator[None]:
    """Build modules whose weights a strict state-dict load overwrites next, without drawing random weights first:
    random fills and torch.randn / rand leave the memory as allocated (ImageBind huge: 8-20 s of its loader on this
    machine's 2 cores -> 0.1 s). Deterministic fills (masks, position tables, constants) run as usual. A module that
    kept random numbers in a non-persistent buffer would keep uninitialised memory there; ImageBind has no such
    buffer, and CLIP's are deterministic. Thread-local (a torch function mode), so other threads build their
    modules untouched."""
    with _RandomInitSkipped():
        yield


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
            raise ValueError(
                f"could not read the {what} weights file '{os.path.basename(path)}' in the folder "
                f"'{os.path.dirname(os.path.abspath(path))}' as a safetensors file ({error}): it is truncated or not "
                f"a safetensors file; re-download it. {missing_hint}") from error
    elif suffix in TORCH_WEIGHT_SUFFIXES:
        try:
            checkpoint = torch_load_weights(path)
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


class ConstantTargets:
    """Cache of an objective's constant targets (embeddings of a fixed audio, image or text).

    ``get(key, compute)`` runs ``compute()`` once per key, without gradient, outside inference mode (so
    the value is a normal tensor) and outside any torch.func transform around the caller, so that a
    forward-mode pass only runs the branch of the objective that depends on its input. Keys should include
    the dtype and device the value was computed for.
    """

    def __init__(self):
        self._values: dict = {}

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached value for ``key``, computed by ``compute()`` on first use."""
        value = self._values.get(key)
        if value is not None:
            return value
        with outside_function_transforms() as outside, torch.inference_mode(False), torch.no_grad():
            value = compute()
        if outside:  # a value made inside a transform is tied to it: recompute next time instead
            self._values[key] = value
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list:
        """The cached keys, in insertion order."""
        return list(self._values)

    def clear(self) -> None:
        """Forget every cached value."""
        self._values.clear()


FrameIndices = Union[torch.Tensor, Sequence[int], None]


def subset_frame_indices(frame_indices: FrameIndices, shown_frames: int,
                         total_frames: Optional[int] = None) -> Optional[tuple[int, ...]]:
    """Validate the frames (F',) of a full video that a frame subset holds, as ints; None when there is no subset.

    ``frame_indices`` says which frames of the full video the ``shown_frames`` frames of the input are
    (the sampled-gradient guess passes a subset). A subset that is all of ``total_frames`` frames in order
    is returned as None, so objectives skip every gather and the full-video path runs unchanged.
    """
    if frame_indices is None:
        return None
    # Plain Python from here: inside torch.func transforms every tensor op's result is wrapped for the
    # transform and its values cannot be read back.
    if isinstance(frame_indices, torch.Tensor):
        if frame_indices.dtype.is_floating_point or frame_indices.dtype == torch.bool or frame_indices.ndim != 1:
            raise ValueError(f"frame_indices must be a 1-D sequence of whole numbers, got shape "
                             f"{tuple(frame_indices.shape)} and dtype {frame_indices.dtype}.")
        with outside_function_transforms():  # integer labels: no derivative, read them outside any transform
            while torch._C._functorch.is_functorch_wrapped_tensor(frame_indices):
                frame_indices = torch._C._functorch.get_unwrapped(frame_indices)
            values = frame_indices.tolist()
    else:
        values = list(frame_indices)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"frame_indices must be a 1-D sequence of whole numbers, got {values!r}.")
    if len(values) != shown_frames:
        raise ValueError(f"frame_indices names {len(values)} frame(s) but the video holds {shown_frames}; "
                         "give one index per frame of the video.")
    if values and min(values) < 0:
        raise ValueError(f"frame_indices must be >= 0, got {values}.")
    if any(later <= earlier for earlier, later in zip(values, values[1:])):
        raise ValueError(f"frame_indices must be strictly increasing (frames in video order), got {values}.")
    if total_frames is not None:
        if values and max(values) >= total_frames:
            raise ValueError(f"frame_indices {values} reach past the {total_frames} frames of the full video.")
        if shown_frames == total_frames:
            return None  # strictly increasing within [0, total): exactly 0..total-1
    return tuple(int(v) for v in values)


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
    * ``range_tolerance``: how far outside [0, 1] ``forward`` accepts values (None: any);
      guidance clamps estimates beyond it for scoring (``clamp_for_scoring``).
    * ``input_space`` is ``"pixels"`` for decoded videos and ``"latent"`` for
      objectives that read latents (B, F, C, h, w) directly (no VAE decode).
    * Everything is differentiable in reverse mode and in forward mode
      (``torch.func.jvp``): no in-place ops on tangent-carrying tensors, attention
      only through decomposed kernels (see ``forward_ad_safe_attention``).
    * Guidance networks inside an objective are frozen (eval mode, no parameter
      gradients). Constant targets (embeddings of a reference image, audio or
      text) are computed once, outside forward-mode passes: at construction, or
      in ``prepare(num_frames)`` where they depend on the video's length, and
      cached (``ConstantTargets``), so a JVP only runs the input's branch.
    * ``frame_indices`` (optional keyword of ``forward`` / ``frame_losses`` where
      supported): the input holds only these frames of the full video (the
      sampled-gradient guess); ``subset_frame_indices`` validates them and
      turns a subset that covers every frame into None.
    """

    needs: FrozenSet[str] = frozenset()
    input_space: str = "pixels"
    has_frame_losses: bool = False
    min_frames: int = 1
    accepts_frame_subsets: bool = False  # forward / frame_losses take `frame_indices`

    def check_video(self, video: torch.Tensor) -> None:
        """Validate this objective's input (video or latents) and raise ValueError if unusable."""
        if self.input_space == "latent":
            check_latents(video, min_frames=self.min_frames)
        else:
            check_video(video, min_frames=self.min_frames)

    def prepare(self, num_frames: int) -> None:
        """Compute the constant targets for videos of ``num_frames`` frames before guidance (default: none)."""

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
