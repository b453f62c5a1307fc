"""Video attribute classifiers for the embedded world: a guiding classifier and an independent judge.

Both take videos (B, 16, 3, 32, 32) in [0, 1] and return a dict ``attribute -> logits (B, K)``
with one head per attribute of ``world.ATTRIBUTES`` (colour, shape, direction, speed).

* ``VideoAttributeClassifier`` (guiding): a small 3-D convolutional network (space-time kernels,
  GroupNorm, SiLU, global average pooling), trained with noise, label smoothing and L2
  adversarial examples so that its input gradients change what the video shows.
* ``VideoJudgeClassifier`` (evaluation only): a different architecture -- a factorised (2+1)-D
  network (per-frame 2-D convolutions alternating with 1-D temporal convolutions, GELU), mean+max
  pooling, LayerNorm.  Trained on another world seed with another init seed, so
  guidance that merely fools the guiding classifier does not automatically fool the judge.

Both are forward-mode AD friendly (no in-place activation ops, only ops with JVP rules).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .codec import PIXEL_MEAN, PIXEL_STD
from .files import safetensors_metadata, safetensors_tensors
from .world import ATTRIBUTES, IMAGE_SIZE, NUM_CHANNELS, NUM_FRAMES

VIDEO_SHAPE = (NUM_FRAMES, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
HEAD_SIZES = {name: len(values) for name, values in ATTRIBUTES.items()}


def check_classifier_input(video: torch.Tensor) -> None:
    """Raise ValueError unless video has shape (B, 16, 3, 32, 32)."""
    if video.ndim != 5 or tuple(video.shape[1:]) != VIDEO_SHAPE:
        raise ValueError(f"attribute classifiers expect videos of shape (B, {', '.join(map(str, VIDEO_SHAPE))}) "
                         f"in [0, 1], got {tuple(video.shape)}")


def _heads(in_features: int) -> nn.ModuleDict:
    return nn.ModuleDict({name: nn.Linear(in_features, size) for name, size in HEAD_SIZES.items()})


@dataclass(frozen=True)
class ClassifierConfig:
    """Widths of a classifier; the meaning of each entry depends on the architecture."""

    widths: tuple[int, ...]
    feature_dim: int
    norm_groups: int = 8

    def to_json(self) -> str:
        """JSON form of the config."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        """Rebuild a config from JSON."""
        raw = json.loads(text)
        raw["widths"] = tuple(raw["widths"])
        return cls(**raw)


class VideoAttributeClassifier(nn.Module):
    """Guiding classifier: small 3-D conv net over (time, height, width), one linear head per attribute.

    Trained adversarially (see ``training.train_classifier``): a plainly trained classifier reached
    100 % accuracy but its input gradients were adversarial -- descending them drove its loss to
    zero while the clips did not visibly change -- so guidance had nothing to follow.
    """

    default_config = ClassifierConfig(widths=(24, 48), feature_dim=96)

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or self.default_config
        channels = (NUM_CHANNELS,) + tuple(config.widths) + (config.feature_dim,)
        blocks = []
        for index in range(len(channels) - 1):
            # (time, height, width) strides: 16x32x32 -> 16x16x16 -> 8x8x8 -> 4x4x4 for the default
            stride = (1, 2, 2) if index == 0 else (2, 2, 2)
            blocks.append(nn.Sequential(
                nn.Conv3d(channels[index], channels[index + 1], 3, stride=stride, padding=1),
                nn.GroupNorm(config.norm_groups, channels[index + 1]),
                nn.SiLU(),
            ))
        self.blocks = nn.Sequential(*blocks)
        self.heads = _heads(config.feature_dim)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for videos (B, 16, 3, 32, 32) in [0, 1]."""
        check_classifier_input(video)
        x = ((video - PIXEL_MEAN) / PIXEL_STD).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        features = self.blocks(x).mean(dim=(2, 3, 4))
        return {name: head(features) for name, head in self.heads.items()}


class VideoJudgeClassifier(nn.Module):
    """Evaluation-only judge: factorised (2+1)-D net -- per-frame 2-D convs, then 1-D temporal convs."""

    default_config = ClassifierConfig(widths=(24, 48, 64, 96), feature_dim=96)

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or self.default_config
        groups = config.norm_groups
        stages = []
        channels = NUM_CHANNELS
        for index, width in enumerate(config.widths):
            spatial_stride = 1 if index == 0 else 2
            temporal_stride = 2 if index >= 2 else 1
            stages.append(nn.Sequential(
                # 2-D convolution applied to every frame on its own ...
                nn.Conv3d(channels, width, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1)),
                nn.GroupNorm(groups, width), nn.GELU(),
                # ... then a 1-D convolution over time at every position.
                nn.Conv3d(width, width, (3, 1, 1), stride=(temporal_stride, 1, 1), padding=(1, 0, 0)),
                nn.GroupNorm(groups, width), nn.GELU(),
            ))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.projection = nn.Linear(2 * channels, config.feature_dim)
        self.norm = nn.LayerNorm(config.feature_dim)
        self.heads = _heads(config.feature_dim)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for videos (B, 16, 3, 32, 32) in [0, 1]."""
        check_classifier_input(video)
        x = ((video - PIXEL_MEAN) / PIXEL_STD).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        maps = self.stages(x)
        pooled = torch.cat([maps.mean(dim=(2, 3, 4)), maps.amax(dim=(2, 3, 4))], dim=1)
        features = F.gelu(self.norm(self.projection(pooled)))
        return {name: head(features) for name, head in self.heads.items()}


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "VideoAttributeClassifier": VideoAttributeClassifier,
    "VideoJudgeClassifier": VideoJudgeClassifier,
}
CLASSIFIER_FORMAT = "titan_guide.embedded_classifier"


def augment_for_training(video: torch.Tensor, generator: torch.Generator | None = None,
                         noise_max: float = 0.08) -> torch.Tensor:
    """Random pixel noise (std up to ``noise_max``) and blur, so classifiers also read imperfect x0 estimates."""
    batch = video.shape[0]
    shape = (batch, 1, 1, 1, 1)
    uniform = torch.rand((batch, 3), generator=generator, device=video.device)
    frames = video.reshape(-1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    blurred = F.avg_pool2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), 3, stride=1).reshape(video.shape)
    blur_weight = (uniform[:, 0] * (uniform[:, 1] < 0.5)).reshape(shape)
    noise_std = (noise_max * uniform[:, 2]).reshape(shape)
    noise = torch.randn(video.shape, generator=generator, device=video.device)
    return video * (1 - blur_weight) + blurred * blur_weight + noise * noise_std


def save_classifier(model: nn.Module, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Save a classifier's float32 weights with its architecture name and config."""
    from safetensors.torch import save_file

    metadata = {"format": CLASSIFIER_FORMAT, "architecture": type(model).__name__, "config": model.config.to_json(),
                "attributes": json.dumps({name: list(values) for name, values in ATTRIBUTES.items()})}
    metadata.update(extra_metadata or {})
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a classifier saved by ``save_classifier`` (strict), in eval mode."""
    path = Path(path)
    where = ("the committed files live in models/titan_guide/ (embedded_classifier.safetensors, "
             "embedded_judge.safetensors; restore them from the repository)")
    metadata = safetensors_metadata(path, "classifier", where)
    if metadata.get("format") != CLASSIFIER_FORMAT or metadata.get("architecture") not in ARCHITECTURES:
        raise ValueError(f"{path} is not an embedded attribute classifier (format={metadata.get('format')!r}, "
                         f"architecture={metadata.get('architecture')!r}); expected a file written by "
                         "scripts/train_embedded.py such as models/titan_guide/embedded_classifier.safetensors")
    stored_attributes = json.loads(metadata.get("attributes", "{}"))
    expected_attributes = {name: list(values) for name, values in ATTRIBUTES.items()}
    if stored_attributes != expected_attributes:
        raise ValueError(f"{path} was trained for attributes {stored_attributes}, but this code defines "
                         f"{expected_attributes}; retrain with scripts/train_embedded.py")
    model = ARCHITECTURES[metadata["architecture"]](ClassifierConfig.from_json(metadata["config"]))
    try:
        model.load_state_dict(safetensors_tensors(path, "classifier", where), strict=True)
    except RuntimeError as error:
        raise ValueError(f"weights in {path} do not match {metadata['architecture']}: {error}") from error
    return model.to(device).eval()
