"""The objective a guided run minimises: one or more weighted objectives (the TITAN_OBJECTIVE value), and the
wrapper that lets a host's model management place an objective's guidance network.

Frame subsets are decided here once: an objective declares `accepts_frame_subsets` (or takes a
`frame_indices` keyword); `ManagedObjective` turns a subset that covers every frame into no subset.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from .base import VIDEO_RANGE_TOLERANCE, VideoObjective, clamp_for_scoring, subset_frame_indices


def accepts_frame_subsets(objective: Any) -> bool:
    """The objective's declared `accepts_frame_subsets`, else whether its forward takes `frame_indices` (read once
    per objective class, not per loss call)."""
    declared = getattr(objective, "accepts_frame_subsets", None)
    return bool(declared) if declared is not None else _forward_takes_frame_indices(type(objective))


@functools.lru_cache(maxsize=None)
def _forward_takes_frame_indices(cls: type) -> bool:
    return "frame_indices" in inspect.signature(cls.forward).parameters


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """One guidance objective and how it enters the loss.

    `module` follows objectives.base.VideoObjective: forward(video (B, F, 3, H, W) in [0, 1]) -> (B,),
    `frame_losses(video)` -> (B, F) where `has_frame_losses`; `input_space` "latent" objectives read the
    latents (B, F, C, h, w) instead of decoded pixels. `needs` names extra inputs the objective requires
    (e.g. "audio"), `supplied` those its node was given; a missing one is an error before sampling.
    """

    module: torch.nn.Module
    weight: float = 1.0
    name: str = ""
    needs: frozenset = frozenset()
    supplied: frozenset = frozenset()

    def __post_init__(self):
        if not isinstance(self.module, torch.nn.Module):
            raise ValueError(f"an objective must be a torch.nn.Module, got {type(self.module).__name__}")
        if not math.isfinite(self.weight):
            raise ValueError(f"objective weight must be a finite number, got {self.weight}")
        object.__setattr__(self, "needs", frozenset(self.needs) | frozenset(getattr(self.module, "needs", ())))
        object.__setattr__(self, "supplied", frozenset(self.supplied))
        if not self.name:
            object.__setattr__(self, "name", type(self.module).__name__)

    @property
    def input_space(self) -> str:
        """"pixels" (decoded video) or "latent"."""
        return getattr(self.module, "input_space", "pixels")

    @property
    def has_frame_losses(self) -> bool:
        """Whether the objective has per-frame losses (needed for per-frame derivatives)."""
        return bool(getattr(self.module, "has_frame_losses", False))

    @property
    def min_frames(self) -> int:
        """Fewest frames the objective accepts."""
        return int(getattr(self.module, "min_frames", 1))

    @property
    def accepts_frame_subsets(self) -> bool:
        """Whether forward / frame_losses accept `frame_indices` (which frames of the video they see)."""
        return accepts_frame_subsets(self.module)

    @property
    def range_tolerance(self) -> float | None:
        """How far outside [0, 1] the objective scores decoded pixels (None: any values)."""
        inner = getattr(self.module, "objective", self.module)  # a ManagedObjective's objective
        return getattr(self.module, "range_tolerance", getattr(inner, "range_tolerance", VIDEO_RANGE_TOLERANCE))

    def losses(self, video: torch.Tensor, per_frame: bool, frame_indices: torch.Tensor | None) -> torch.Tensor:
        """Weighted per-video (B,) or per-frame (B, F) losses; decoded estimates beyond the range the objective
        scores are clamped to it for scoring (a guidance decision, warned about)."""
        if self.input_space == "pixels":
            video = clamp_for_scoring(video, self.range_tolerance, f"the objective '{self.name}'")
        kwargs = {"frame_indices": frame_indices} if frame_indices is not None and self.accepts_frame_subsets else {}
        out = self.module.frame_losses(video, **kwargs) if per_frame else self.module(video, **kwargs)
        return self.weight * out


@dataclasses.dataclass(frozen=True)
class ObjectiveSet:
    """The TITAN_OBJECTIVE value: a weighted sum of one or more objectives."""

    specs: tuple

    def __post_init__(self):
        if not self.specs:
            raise ValueError("an objective combination needs at least one objective")
        for spec in self.specs:
            if not isinstance(spec, ObjectiveSpec):
                raise ValueError(f"TITAN_OBJECTIVE holds {type(spec).__name__}, not an ObjectiveSpec")

    @classmethod
    def single(cls, module: torch.nn.Module, name: str = "", needs: Iterable[str] = (),
               supplied: Iterable[str] = ()) -> "ObjectiveSet":
        """One objective with weight 1."""
        return cls((ObjectiveSpec(module, 1.0, name, frozenset(needs), frozenset(supplied)),))

    @classmethod
    def combine(cls, weighted: Sequence[tuple["ObjectiveSet", float]]) -> "ObjectiveSet":
        """Weighted sum of objective sets (weights multiply the weights already inside each set)."""
        specs = []
        for objective, weight in weighted:
            if not isinstance(objective, ObjectiveSet):
                raise ValueError(f"expected a TITAN_OBJECTIVE, got {type(objective).__name__}")
            specs += [dataclasses.replace(spec, weight=spec.weight * float(weight)) for spec in objective.specs]
        return cls(tuple(specs))

    @property
    def spaces(self) -> set:
        """Input spaces the objectives read ("pixels", "latent")."""
        return {spec.input_space for spec in self.specs}

    @property
    def has_frame_losses(self) -> bool:
        """True when every objective has per-frame losses."""
        return all(spec.has_frame_losses for spec in self.specs)

    @property
    def min_frames(self) -> int:
        """Fewest frames every objective accepts."""
        return max(spec.min_frames for spec in self.specs)

    def describe(self) -> str:
        """Human-readable "w * name + ..."."""
        return " + ".join(f"{spec.weight:g} * {spec.name}" for spec in self.specs)

    def check_inputs(self) -> None:
        """Raise if an objective needs an input (audio, ...) its node was not given."""
        for spec in self.specs:
            missing = sorted(spec.needs - spec.supplied)
            if missing:
                raise ValueError(f"objective {spec.name} needs {', '.join(missing)} but none was supplied; connect "
                                 f"the {'/'.join(m.upper() for m in missing)} input of its node")

    def to(self, pixel_device: torch.device, latent_device: torch.device) -> None:
        """Move each objective to the device of what it reads."""
        for spec in self.specs:
            spec.module.to(latent_device if spec.input_space == "latent" else pixel_device)

    def comfy_patchers(self) -> list[tuple[str, Any]]:
        """(objective name, ModelPatcher) of every guidance network the objectives run (each patcher once)."""
        found = []
        for spec in self.specs:
            for patcher in getattr(spec.module, "comfy_patchers", ()):
                if all(patcher is not known for _, known in found):
                    found.append((spec.name, patcher))
        return found

    def prepare(self, num_frames: int) -> None:
        """Before guidance, outside forward-mode passes: every objective computes its constant targets (e.g. the
        audio embedding) for videos of `num_frames` frames, the length frame subsets refer to."""
        for spec in self.specs:
            prepare = getattr(spec.module, "prepare", None)
            if prepare is not None:
                prepare(num_frames)

    def loss(self, pixels: torch.Tensor | None, latents: torch.Tensor | None, per_frame: bool = False,
             frame_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum of the objectives on pixels (B, F, 3, H, W) and / or latents (B, F, C, h, w)."""
        total = None
        for spec in self.specs:
            seen = latents if spec.input_space == "latent" else pixels
            term = spec.losses(seen, per_frame, frame_indices)
            total = term if total is None else total + term.to(total)
        return total



class ManagedObjective(VideoObjective):
    """An objective whose guidance network (if any) a host's model management places.

    `model` is the host's handle of the network (nodes.guidance_models.LoadedGuidanceModel: `.patcher`,
    `.load(device)`), or None for objectives without a network.

    `comfy_patchers` lists the ModelPatchers the guided samplers load together with the diffusion model and the
    VAE; `to(device)` (called after that load) makes sure the network is there and moves the objective's own
    tensors (targets, embeddings). `prepare(num_frames)` computes the constant targets before guidance and sets
    the full video length frame subsets (`frame_indices`) refer to; a subset covering every frame is passed on
    as no subset.
    """

    def __init__(self, objective: VideoObjective, model=None):
        super().__init__()
        self.objective = objective
        self.guidance_model = model
        self.needs = frozenset(objective.needs)
        self.input_space = objective.input_space
        self.has_frame_losses = bool(objective.has_frame_losses)
        self.min_frames = int(objective.min_frames)
        self.video_frames: Optional[int] = None

    @property
    def comfy_patchers(self) -> list:
        """ModelPatchers of the guidance networks this objective runs."""
        return [] if self.guidance_model is None else [self.guidance_model.patcher]

    def to(self, *args, **kwargs) -> "ManagedObjective":
        """Load the network onto `device` through ComfyUI (if not there) and move the objective's tensors there."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            raise ValueError("a guidance objective keeps the weight dtype chosen in its loader node")
        if device is not None and self.guidance_model is not None:
            self.guidance_model.load(device)
        with torch.inference_mode(False):
            self.objective.to(*args, **kwargs)
        return self

    def prepare(self, num_frames: int) -> None:
        """Before guidance: the full video has `num_frames` frames; compute the objective's constant targets."""
        self.video_frames = int(num_frames)
        inner = getattr(self.objective, "prepare", None)
        if inner is not None:
            inner(self.video_frames)

    def check_video(self, video: torch.Tensor) -> None:
        """The wrapped objective's input checks."""
        self.objective.check_video(video)

    def subset(self, video: torch.Tensor, frame_indices) -> Optional[tuple[int, ...]]:
        """Validated `frame_indices` of the frames `video` holds; None for no subset or one covering every frame."""
        return subset_frame_indices(frame_indices, video.shape[1], self.video_frames)

    accepts_frame_subsets = True

    def _call(self, method: Callable, video: torch.Tensor, frame_indices) -> torch.Tensor:
        indices = self.subset(video, frame_indices)
        if indices is not None and accepts_frame_subsets(self.objective):
            return method(video, frame_indices=indices)
        return method(video)  # objectives without frame positions see a subset as a shorter video

    def frame_losses(self, video: torch.Tensor, frame_indices=None) -> torch.Tensor:
        """Per-frame losses (B, F) of the wrapped objective; `frame_indices`: which frames of the video it holds."""
        return self._call(self.objective.frame_losses, video, frame_indices)

    def forward(self, video: torch.Tensor, frame_indices=None) -> torch.Tensor:
        """Per-video loss (B,) of the wrapped objective; `frame_indices`: which frames of the video it holds."""
        return self._call(self.objective.forward, video, frame_indices)


class ManagedInterpolationObjective(ManagedObjective):
    """Frame interpolation that also accepts a frame subset (sampled-gradient guess) and keeps keyframes aligned."""

    def _known_frames(self, frame_indices: Sequence[int]) -> dict[int, int]:
        """{full-video frame index: keyframe row} for the keyframes (negative indices need the full frame count)."""
        objective = self.objective
        if self.video_frames is not None:  # set by prepare(): the full video's length resolves every index
            return {frame: row for row, frame in enumerate(objective.resolved_indices(self.video_frames))}
        if objective.mask_frames is not None:
            if max(frame_indices) >= objective.mask_frames:
                raise ValueError(f"the mask covers {objective.mask_frames} frames but the video has at least "
                                 f"{max(frame_indices) + 1}")
            return {frame: row for row, frame in enumerate(objective.indices)}
        if any(index < 0 for index in objective.indices):
            raise ValueError(
                f"keyframe indices {objective.indices} count from the end, but the sampled-gradient guess shows the "
                f"objective only frames {list(frame_indices)} of the video; give non-negative indices "
                "(e.g. '0, 15') or a MASK, or use another gradient guess")
        return {frame: row for row, frame in enumerate(objective.indices)}

    def frame_losses(self, video: torch.Tensor, frame_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-frame losses (B, F'); `frame_indices` (F',) says which frames of the full video `video` holds."""
        frame_indices = self.subset(video, frame_indices)
        if frame_indices is None:
            return self.objective.frame_losses(video)
        self.objective.check_video(video)
        known = self._known_frames(frame_indices)
        pairs = [(position, known[frame]) for position, frame in enumerate(frame_indices) if frame in known]
        if not pairs:  # no keyframe among the shown frames: zero loss that still depends on the input
            return (video * 0).sum(dim=tuple(range(2, video.ndim)))
        targets = self.objective.targets[[row for _, row in pairs]]
        extra = {"range_tolerance": self.objective.range_tolerance} if hasattr(self.objective, "range_tolerance") else {}
        subset = type(self.objective)(targets, indices=[position for position, _ in pairs], **extra)
        return subset.frame_losses(video)

    def forward(self, video: torch.Tensor, frame_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-video loss (B,): mean of the per-frame losses."""
        return self.frame_losses(video, frame_indices).mean(dim=1)
