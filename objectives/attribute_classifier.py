"""Attribute-classifier guidance objective for the embedded synthetic world.

loss(video) = sum over the requested targets of -log p(target value | video) under the
embedded guiding classifier (``embedded.classifier.VideoAttributeClassifier``), e.g. the targets
"colour=red" or "colour=red, direction=left".  Lower is better; differentiable in reverse and
forward mode.  The judge classifier (``embedded_judge.safetensors``) is for evaluation only and
should not be used to guide.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import VideoObjective, check_video, freeze

# Decoded x0 estimates of the embedded model at high noise overshoot [0, 1] by about 2 unguided (the
# codec is linear and unclamped) and by more under guidance (measured: [-3.4, 3.3] with the score guess
# at strength 0.3, 6 steps, look-ahead 1, which a tolerance of 3 turned into a ValueError mid-sampling);
# the classifier still reads them, so only data in another convention (e.g. [0, 255]) is refused.
RANGE_TOLERANCE = 20.0
MODELS_SUBFOLDER = "models/titan_guide"
CLASSIFIER_FILENAME = "embedded_classifier.safetensors"
JUDGE_FILENAME = "embedded_judge.safetensors"
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def _embedded(module: str):
    """Import ``embedded.<module>`` next to this package (top-level in tests, a sub-package in ComfyUI)."""
    parent = (__package__ or "objectives").rpartition(".")[0]
    return importlib.import_module(f"{parent}.embedded.{module}" if parent else f"embedded.{module}")


def default_classifier_path(filename: str = CLASSIFIER_FILENAME) -> Path:
    """Path of a committed embedded classifier file in this repository's models/titan_guide/."""
    return REPOSITORY_ROOT / MODELS_SUBFOLDER / filename


def load_attribute_classifier(path: str | Path | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Load an embedded attribute classifier strictly from safetensors, frozen and in eval mode."""
    path = Path(path) if path is not None else default_classifier_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"attribute classifier weights not found: '{path}'. The file {CLASSIFIER_FILENAME} ships in this "
            f"repository's {MODELS_SUBFOLDER}/ folder; put it into ComfyUI's {MODELS_SUBFOLDER}/ folder, or "
            "re-create it with scripts/train_embedded.py.")
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"'{path}' is not a .safetensors file; attribute classifiers load only from safetensors "
                         f"files such as {MODELS_SUBFOLDER}/{CLASSIFIER_FILENAME}.")
    try:
        model = _embedded("classifier").load_classifier(path, device=device)
    except ValueError as error:
        raise ValueError(f"could not load the attribute classifier '{path}' (expected {CLASSIFIER_FILENAME} "
                         f"from {MODELS_SUBFOLDER}/): {error}") from error
    return freeze(model)


def parse_attribute_targets(targets: str | Sequence[str] | Mapping[str, str]) -> dict[str, int]:
    """Turn "colour=red, direction=left" (or a list, or a dict) into {attribute: class index}."""
    world = _embedded("world")
    if isinstance(targets, str):
        items = [part for part in (piece.strip() for piece in targets.replace(";", ",").split(",")) if part]
    elif isinstance(targets, Mapping):
        items = [f"{name}={value}" for name, value in targets.items()]
    else:
        items = [str(item).strip() for item in targets]
    if not items:
        vocabulary = "; ".join(f"{name}: {', '.join(values)}" for name, values in world.ATTRIBUTES.items())
        raise ValueError(f"no attribute target given; write e.g. 'colour=red' or 'colour=red, direction=left' "
                         f"({vocabulary})")
    parsed: dict[str, int] = {}
    for item in items:
        name, index = world.parse_attribute_value(item)
        if name in parsed and parsed[name] != index:
            raise ValueError(f"attribute {name!r} is given twice with different values in {targets!r}; "
                             "request one value per attribute")
        parsed[name] = index
    return parsed


class AttributeClassifierLoss(VideoObjective):
    """Negative log-probability of target attribute values under the embedded guiding classifier.

    ``forward(video)`` takes (B, 16, 3, 32, 32) in [0, 1] (overshoot up to ``RANGE_TOLERANCE``
    allowed, no clamping, so gradients survive) and returns (B,): the sum over targets of the
    cross-entropy.
    """

    min_frames = 16
    range_tolerance = RANGE_TOLERANCE

    def __init__(self, classifier: nn.Module, targets: str | Sequence[str] | Mapping[str, str]) -> None:
        super().__init__()
        self.classifier = freeze(classifier)
        self.targets = parse_attribute_targets(targets)
        world = _embedded("world")
        self.target_names = {name: world.ATTRIBUTES[name][index] for name, index in self.targets.items()}

    def check_video(self, video: torch.Tensor) -> None:
        """Validate (B, 16, 3, 32, 32) input, allowing the overshoot of early x0 estimates."""
        check_video(video, min_frames=self.min_frames, range_tolerance=RANGE_TOLERANCE)
        _embedded("classifier").check_classifier_input(video)

    def extra_repr(self) -> str:
        """Targets in words."""
        return ", ".join(f"{name}={value}" for name, value in self.target_names.items())

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Per-video loss (B,): sum over targets of -log p(target | video)."""
        self.check_video(video)
        logits = self.classifier(video)
        loss = video.new_zeros(video.shape[0])
        for name, index in self.targets.items():
            loss = loss - F.log_softmax(logits[name], dim=1)[:, index]
        return loss

    @torch.no_grad()
    def probabilities(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probability (B,) of each target value, for reporting."""
        logits = self.classifier(video)
        return {name: logits[name].softmax(dim=1)[:, index] for name, index in self.targets.items()}
