"""DOVER video-quality objective (Wu et al., "Exploring Video Quality Assessment on User Generated
Contents from Aesthetic and Technical Perspectives", ICCV 2023).

Independent PyTorch re-implementation of the two-branch DOVER evaluator so that the official
``DOVER.pth`` (381 state-dict keys, 56.2 M parameters) loads with ``strict=True``:

* technical branch: Swin3D-T (embed 96, depths 2-2-6-2, heads 3-6-12-24, window (8,7,7), patch
  (2,4,4)) with DOVER's fragment-gated relative position bias in stages 1-3, fed the 7x7 grid of
  32x32 fragments (224x224);
* aesthetic branch: ConvNeXt-T inflated to 3-D (temporal kernels "131"), fed the frames resized
  to 224x224;
* two VQA heads (Conv3d 768->64, GELU, 64->1, dropout 0.5) scoring every output token; a branch
  score is the mean over tokens (and clips).

Fused score (upstream ``evaluate_one_video.py``)::

    sigmoid( (tech - 0.1107) / 0.07355 * 0.6104 + (aes + 0.08285) / 0.03774 * 0.3896 )

``DoverLoss`` turns a video (B, F, 3, H, W), float RGB in [0, 1], into a loss (B,) = -score that is
differentiable in reverse and forward mode (``torch.func.jvp``). See ``objectives/views.py`` for
how the views are sampled (and how short clips are handled).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ._convnext3d import ConvNeXt3D
from ._swin3d import SwinTransformer3D, relative_position_index
from .base import VIDEO_RANGE_TOLERANCE, VideoObjective, freeze, torch_load_weights
from .base import check_video as check_video_batch
from .views import DoverViewConfig, aesthetic_view, technical_view

OFFICIAL_ARCHITECTURE = "DOVER (technical Swin3D-T + aesthetic ConvNeXt-T), 381 keys"
DOVER_WEIGHTS_FILENAME = "DOVER.pth"
DOVER_MODEL_FOLDER = "ComfyUI/models/dover"
DOVER_WEIGHTS_SOURCE = "https://github.com/VQAssessment/DOVER/releases (release v0.1.0, asset DOVER.pth)"
DOVER_LICENCE_NOTE = (
    "Licence: the DOVER code was MIT-licensed when DOVER.pth was released (v0.1.0); since August 2024 the "
    "VQAssessment/DOVER repository, which distributes the weights, is under the S-Lab License 1.0 "
    "(non-commercial use only). Check those terms before use."
)

# Score-level fusion constants of upstream evaluate_one_video.py (tech/aes normalisation, weights).
TECHNICAL_SCORE_MEAN = 0.1107
TECHNICAL_SCORE_STD = 0.07355
AESTHETIC_SCORE_MEAN = -0.08285
AESTHETIC_SCORE_STD = 0.03774
TECHNICAL_FUSION_WEIGHT = 0.6104
AESTHETIC_FUSION_WEIGHT = 0.3896

LOSS_MODES = ("fused", "aesthetic", "technical")
MIN_FRAMES = 2

FULL_CONFIG: Dict[str, object] = dict(
    technical_embed_dim=96,
    technical_depths=(2, 2, 6, 2),
    technical_num_heads=(3, 6, 12, 24),
    technical_window_size=(8, 7, 7),
    technical_patch_size=(2, 4, 4),
    technical_fragment_biases=(True, True, True, False),
    aesthetic_depths=(3, 3, 9, 3),
    aesthetic_dims=(96, 192, 384, 768),
    aesthetic_inflate_strategy="131",
    head_hidden_channels=64,
    head_dropout=0.5,
)


def fuse_dover_scores(technical: torch.Tensor, aesthetic: torch.Tensor) -> torch.Tensor:
    """Official DOVER fusion of raw branch scores into an overall quality in (0, 1)."""
    logit = (technical - TECHNICAL_SCORE_MEAN) / TECHNICAL_SCORE_STD * TECHNICAL_FUSION_WEIGHT + (
        aesthetic - AESTHETIC_SCORE_MEAN
    ) / AESTHETIC_SCORE_STD * AESTHETIC_FUSION_WEIGHT
    return torch.sigmoid(logit)


class VQAHead(nn.Module):
    """Per-token quality regressor: dropout -> Conv3d(C, hidden, 1) -> GELU -> dropout -> Conv3d(hidden, 1, 1)."""

    def __init__(self, in_channels: int = 768, hidden_channels: int = 64, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, kernel_size=1)
        self.gelu = nn.GELU()
        self.fc_last = nn.Conv3d(hidden_channels, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, C, T, H, W) -> token scores (B, 1, T, H, W)."""
        return self.fc_last(self.dropout(self.gelu(self.fc_hid(self.dropout(features)))))


class DoverModel(nn.Module):
    """Two-branch DOVER evaluator with the official state-dict layout; defaults are the official sizes."""

    def __init__(
        self,
        technical_embed_dim: int = 96,
        technical_depths: Sequence[int] = (2, 2, 6, 2),
        technical_num_heads: Sequence[int] = (3, 6, 12, 24),
        technical_window_size: Tuple[int, int, int] = (8, 7, 7),
        technical_patch_size: Tuple[int, int, int] = (2, 4, 4),
        technical_fragment_biases: Sequence[bool] = (True, True, True, False),
        aesthetic_depths: Sequence[int] = (3, 3, 9, 3),
        aesthetic_dims: Sequence[int] = (96, 192, 384, 768),
        aesthetic_inflate_strategy: str = "131",
        head_hidden_channels: int = 64,
        head_dropout: float = 0.5,
    ):
        super().__init__()
        self.config = dict(
            technical_embed_dim=technical_embed_dim,
            technical_depths=tuple(technical_depths),
            technical_num_heads=tuple(technical_num_heads),
            technical_window_size=tuple(technical_window_size),
            technical_patch_size=tuple(technical_patch_size),
            technical_fragment_biases=tuple(bool(b) for b in technical_fragment_biases),
            aesthetic_depths=tuple(aesthetic_depths),
            aesthetic_dims=tuple(aesthetic_dims),
            aesthetic_inflate_strategy=aesthetic_inflate_strategy,
            head_hidden_channels=head_hidden_channels,
            head_dropout=head_dropout,
        )
        self.technical_backbone = SwinTransformer3D(
            embed_dim=technical_embed_dim,
            depths=technical_depths,
            num_heads=technical_num_heads,
            window_size=technical_window_size,
            patch_size=technical_patch_size,
            fragment_biases=technical_fragment_biases,
        )
        self.aesthetic_backbone = ConvNeXt3D(depths=aesthetic_depths, dims=aesthetic_dims, inflate_strategy=aesthetic_inflate_strategy)
        self.technical_head = VQAHead(self.technical_backbone.num_features, head_hidden_channels, head_dropout)
        self.aesthetic_head = VQAHead(self.aesthetic_backbone.num_features, head_hidden_channels, head_dropout)

    @property
    def is_official_size(self) -> bool:
        """True when this model has the official DOVER configuration."""
        return self.config == {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in FULL_CONFIG.items()}

    def technical_score(self, view: torch.Tensor) -> torch.Tensor:
        """Raw technical score (B,) of normalised fragment clips (B, 3, T, H, W)."""
        return self.technical_head(self.technical_backbone(view)).mean(dim=(1, 2, 3, 4))

    def aesthetic_score(self, view: torch.Tensor) -> torch.Tensor:
        """Raw aesthetic score (B,) of normalised resized clips (B, 3, T, H, W)."""
        return self.aesthetic_head(self.aesthetic_backbone(view)).mean(dim=(1, 2, 3, 4))

    def forward(self, technical_view: torch.Tensor, aesthetic_view: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(technical, aesthetic) raw scores, each (B,)."""
        return self.technical_score(technical_view), self.aesthetic_score(aesthetic_view)


def dover_full() -> DoverModel:
    """A randomly initialised DoverModel with the official DOVER configuration (load weights with load_dover)."""
    return DoverModel(**FULL_CONFIG)


class DoverLoss(VideoObjective):
    """Loss (B,) = -DOVER score of ``video`` (B, F, 3, H, W), float RGB in [0, 1], F >= 2.

    ``mode``: "fused" -> -(official fused sigmoid score, in (0, 1)); "technical" / "aesthetic" ->
    -(that branch's raw head output averaged over tokens; unbounded, centred near 0.11 / -0.08
    on the training data).
    Input checks (ValueError): 5-D float tensor, 3 channels in dim 2, at least 2 frames, frames at
    least one fragment large (32x32 for the official views), finite values within
    [-range_tolerance, 1 + range_tolerance]. In-tolerance overshoot is passed on unchanged (never
    clamped, so no gradient is cut); ``range_tolerance=None`` disables the range check.
    ``fragment_seed`` fixes the fragment positions (same positions on every call, so repeated
    evaluations, e.g. a JVP and a later re-evaluation, see the same view); ``None`` draws fresh
    positions from the global RNG on each call. ``technical_samples`` > 1 averages the technical
    score over that many fragment samplings (seeds ``fragment_seed + i``), as upstream averages
    3 clips. The wrapped model is frozen and always runs in eval mode (dropout off), like
    upstream inference. The video is cast to the model's dtype and must be on its device.
    """

    min_frames = MIN_FRAMES

    def __init__(
        self,
        model: DoverModel,
        mode: str = "fused",
        views: Optional[DoverViewConfig] = None,
        fragment_sampling: str = "random",
        fragment_seed: Optional[int] = 0,
        technical_samples: int = 1,
        range_tolerance: Optional[float] = VIDEO_RANGE_TOLERANCE,
    ):
        super().__init__()
        if not isinstance(model, DoverModel):
            raise TypeError(f"DoverLoss wraps a DoverModel (see load_dover), got {type(model).__name__}")
        if mode not in LOSS_MODES:
            raise ValueError(f"DoverLoss mode must be one of {LOSS_MODES}, got {mode!r}")
        if fragment_sampling not in ("random", "center"):
            raise ValueError(f"fragment_sampling must be 'random' or 'center', got {fragment_sampling!r}")
        if not isinstance(technical_samples, int) or technical_samples < 1:
            raise ValueError(f"technical_samples must be a positive int, got {technical_samples!r}")
        if range_tolerance is not None and not range_tolerance >= 0:
            raise ValueError(f"range_tolerance must be >= 0 or None, got {range_tolerance}")
        self.model = freeze(model)
        self.mode = mode
        self.views = views if views is not None else DoverViewConfig()
        self.fragment_sampling = fragment_sampling
        self.fragment_seed = fragment_seed
        self.technical_samples = technical_samples
        self.range_tolerance = range_tolerance

    def train(self, mode: bool = True) -> "DoverLoss":
        """Keep the wrapped evaluator in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.model.eval()
        return self

    def check_video(self, video: torch.Tensor) -> None:
        """Raise ValueError unless ``video`` is a usable (B, F>=2, 3, H, W) RGB video in [0, 1]."""
        tolerance = float("inf") if self.range_tolerance is None else self.range_tolerance
        check_video_batch(video, min_frames=self.min_frames, range_tolerance=tolerance)
        min_h, min_w = self.views.min_frame_size
        if video.shape[3] < min_h or video.shape[4] < min_w:
            raise ValueError(
                f"video frames of {video.shape[3]}x{video.shape[4]} px are too small for DOVER: at least one "
                f"{min_h}x{min_w} fragment is needed (smaller frames than the {self.views.technical_size[0]}x"
                f"{self.views.technical_size[1]} view are upsampled)"
            )

    def _prepare(self, video: torch.Tensor) -> torch.Tensor:
        self.check_video(video)
        weight = next(self.model.parameters())
        if video.device != weight.device:
            raise ValueError(f"video is on {video.device} but the DOVER model is on {weight.device}; move one of them")
        return video.to(weight.dtype)

    def _technical(self, video: torch.Tensor) -> torch.Tensor:
        total = None
        for sample in range(self.technical_samples):
            generator = None
            if self.fragment_seed is not None:
                generator = torch.Generator().manual_seed(int(self.fragment_seed) + sample)
            view = technical_view(video, self.views, self.fragment_sampling, generator)
            score = self.model.technical_score(view)
            total = score if total is None else total + score
        return total / self.technical_samples

    def scores(self, video: torch.Tensor) -> Dict[str, torch.Tensor]:
        """All three scores (B,): "technical", "aesthetic" (raw) and "fused" (in (0, 1))."""
        video = self._prepare(video)
        technical = self._technical(video)
        aesthetic = self.model.aesthetic_score(aesthetic_view(video, self.views))
        return {"technical": technical, "aesthetic": aesthetic, "fused": fuse_dover_scores(technical, aesthetic)}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Loss (B,) = -score for ``video`` (B, F, 3, H, W), float RGB in [0, 1]; lower is better."""
        video = self._prepare(video)
        if self.mode == "technical":
            return -self._technical(video)
        aesthetic = self.model.aesthetic_score(aesthetic_view(video, self.views))
        if self.mode == "aesthetic":
            return -aesthetic
        return -fuse_dover_scores(self._technical(video), aesthetic)


def _missing_weights_message(path: Path) -> str:
    return (
        f"DOVER weights not found: '{path}'. Put the official {DOVER_WEIGHTS_FILENAME} into "
        f"{DOVER_MODEL_FOLDER}/{DOVER_WEIGHTS_FILENAME}. Get it from {DOVER_WEIGHTS_SOURCE} "
        f"(also on huggingface.co/teowu/DOVER). {DOVER_LICENCE_NOTE}"
    )


def _read_state_dict(path: Path) -> Mapping:
    """Read a .safetensors file or a torch checkpoint (weights_only) and unwrap a top-level "state_dict"."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise ValueError(
                f"could not read the DOVER weights file '{path.name}' in the folder '{path.resolve().parent}' as a "
                f"safetensors file ({error}): it is truncated or not a safetensors file; expected the official "
                f"{DOVER_WEIGHTS_FILENAME} (or a conversion of it) in {DOVER_MODEL_FOLDER}/") from error
    else:
        try:
            state = torch_load_weights(str(path))
        except Exception as error:  # torch.load raises many types (UnpicklingError, RuntimeError, IndexError...)
            raise ValueError(
                f"could not read '{path}' as a PyTorch checkpoint (loaded with weights_only=True); "
                f"expected the official {DOVER_WEIGHTS_FILENAME}: {error}"
            ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors; expected {OFFICIAL_ARCHITECTURE}")
    return state


def _preview(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(sorted(names)[:count])
    return shown + (", ..." if len(names) > count else "")


def _check_state_dict(state: Mapping, model: DoverModel, path: Path) -> None:
    """Raise ValueError naming the expected architecture unless keys and shapes match exactly."""
    expected = model.state_dict()
    architecture = OFFICIAL_ARCHITECTURE if model.is_official_size else f"DOVER with a custom config ({len(expected)} keys)"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"'{path.name}' is not a {architecture} checkpoint: it has {len(state)} keys"]
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {_preview(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {_preview(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} with wrong shapes (e.g. {_preview(mismatched, 3)})")
        raise ValueError("; ".join(parts) + f". Use the official {DOVER_WEIGHTS_FILENAME} from {DOVER_WEIGHTS_SOURCE}.")


def load_dover(
    path: Union[str, os.PathLike],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    model_kwargs: Optional[Dict[str, object]] = None,
) -> DoverModel:
    """Load DOVER weights (.pth via torch.load(weights_only=True), or .safetensors) into a DoverModel in eval mode.

    ``model_kwargs`` selects a non-official DoverModel configuration (tests); default is the official one.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_missing_weights_message(path))
    state = _read_state_dict(path)
    kwargs = dict(FULL_CONFIG if model_kwargs is None else model_kwargs)
    with torch.device("meta"):
        model = DoverModel(**kwargs)
    _check_state_dict(state, model, path)
    model.load_state_dict(state, strict=True, assign=True)
    for name, module in model.technical_backbone.named_modules():
        if hasattr(module, "relative_position_index"):
            loaded = module.relative_position_index
            if loaded.dtype.is_floating_point or not torch.equal(loaded.cpu().long(), relative_position_index(module.window)):
                raise ValueError(
                    f"'{path.name}': technical_backbone.{name}.relative_position_index does not match window "
                    f"{module.window}; expected {OFFICIAL_ARCHITECTURE if model.is_official_size else 'the configured window'}"
                )
            module.relative_position_index = loaded.long()
    return model.to(device=device, dtype=dtype).eval()
