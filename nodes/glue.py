"""ComfyUI <-> guidance_core bridge: everything the TITAN-Guide nodes need from ComfyUI, in one place.

* the socket types (TITAN_OBJECTIVE, TITAN_GUESS, TITAN_METHOD) and their values (ObjectiveSet, GuessSpec,
  MethodSpec);
* `GuidedRun`: a `comfy.samplers.KSAMPLER` sampler function that runs `guidance_core.sample` inside
  ComfyUI's own sampling path (CFGGuider -> KSAMPLER), so model patches, LoRAs, hooks and wrappers
  (AnimateDiff-Evolved) apply to every model call, guided or not;
* the denoiser (ComfyUI's model wrapper, with an interrupt check before every call and a forward-AD-safe
  attention override during JVPs), the differentiable decode (VAE decoder applied to
  `process_latent_out(x0)`, not `VAE.decode`, which runs without gradients), the objective -> latent loss,
  progress / previews, peak memory, the OOM message, the text report and the loss plot.

ComfyUI executes nodes under `torch.inference_mode()`. Guidance runs under `torch.inference_mode(False)`;
tensors created in inference mode (model weights, conditioning, sigmas) stay "inference tensors", which
autograd refuses to save for backward. `InferenceTensorClones` substitutes cached normal clones for
them only in operations autograd records (backprop methods, the sampled-gradient guess); forward-mode AD
saves nothing and needs no clones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import resource
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.overrides import TorchFunctionMode

import comfy.model_management as model_management
import comfy.model_sampling
import comfy.samplers
from comfy.ldm.modules.attention import attention_pytorch
from comfy.ldm.modules.diffusionmodules.model import AttnBlock
from comfy_api.latest import io

from .. import guidance_core as core
from ..guidance_core import guesses as core_guesses
from ..guidance_core import update as core_update
from ..guidance_core.forward_gradient import ESTIMATORS
from ..objectives.base import forward_ad_safe_attention

# Forward AD loads its TorchScript decompositions on first use, which parses Python source with `ast`. On
# CPython 3.11.7 that can fail with "SystemError: AST constructor recursion depth mismatch" when it happens
# deep inside ComfyUI's sampling stack; loading them here, at import time on a shallow stack, avoids it.
if os.environ.get("PYTORCH_JIT", "1") == "1" and __debug__:
    from torch._decomp import decompositions_for_jvp  # noqa: F401

LOG = logging.getLogger("titan_guide")

CATEGORY = "sampling/titan_guide"
ADDITIONAL_MODELS_KEY = "titan_guide"  # ModelPatcher.set_additional_models key of the guidance models

TitanObjective = io.Custom("TITAN_OBJECTIVE")
TitanGuess = io.Custom("TITAN_GUESS")
TitanMethod = io.Custom("TITAN_METHOD")

SAMPLER_STEPS = ("euler", "ddim", "heun")
MEMORY_KNOBS = ("set 'decode chunk frames' to 1 or 2 (decodes fewer frames at once)",
                "lower 'look-ahead steps' (fewer model calls inside each forward-mode pass; 0 = Tweedie estimate)",
                "use the 'random' or 'score' gradient guess with k = 1 (sampled_gradient / mixed backpropagate "
                "through the VAE decoder; k > 1 repeats the forward pass)",
                "turn 'per-frame derivatives' off",
                "for exact gradient / FreeDoM / TFG enable 'checkpoint' (or use titan, which keeps no activations)")


# ---------------------------------------------------------------------------------------------------------
# Objectives (TITAN_OBJECTIVE)
# ---------------------------------------------------------------------------------------------------------
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

    def takes_frame_indices(self) -> bool:
        """Whether forward / frame_losses accept `frame_indices` (which frames of the video they see)."""
        return "frame_indices" in inspect.signature(self.module.forward).parameters

    def losses(self, video: torch.Tensor, per_frame: bool, frame_indices: torch.Tensor | None) -> torch.Tensor:
        """Weighted per-video (B,) or per-frame (B, F) losses."""
        kwargs = {"frame_indices": frame_indices} if frame_indices is not None and self.takes_frame_indices() else {}
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


# ---------------------------------------------------------------------------------------------------------
# Gradient guesses (TITAN_GUESS) and methods (TITAN_METHOD)
# ---------------------------------------------------------------------------------------------------------
GUESS_KINDS = ("random", "score", "sampled_gradient", "orthogonal", "antithetic", "mixed")


def parse_frame_indices(text: str) -> tuple:
    """"0, 3, 7" -> (0, 3, 7); raises a clear error for anything else."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        indices = tuple(int(p) for p in parts)
    except ValueError as error:
        raise ValueError(f"frame indices must be whole numbers separated by commas (e.g. '0, 8, 15'), "
                         f"got {text!r}") from error
    if any(i < 0 for i in indices):
        raise ValueError(f"frame indices must be >= 0, got {text!r}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"frame indices must not repeat, got {text!r}")
    return tuple(sorted(indices))


@dataclasses.dataclass(frozen=True)
class GuessSpec:
    """The TITAN_GUESS value: which gradient guess V to use and its options."""

    kind: str = "random"
    k: int = 1
    frames: int = 2
    choice: str = "even"
    indices: tuple = ()
    expand: str = "tile"
    random_weight: float = 0.5

    def __post_init__(self):
        if self.kind not in GUESS_KINDS:
            raise ValueError(f"unknown gradient guess {self.kind!r}; choose one of {GUESS_KINDS}")
        if self.k < 1:
            raise ValueError(f"k (number of tangents) must be >= 1, got {self.k}")
        if self.frames < 0:
            raise ValueError(f"sampled frames must be >= 0 (0 = all frames), got {self.frames}")
        if self.choice not in core_guesses.FRAME_CHOICES:
            raise ValueError(f"unknown frame choice {self.choice!r}; choose one of {core_guesses.FRAME_CHOICES}")
        if self.choice == "fixed" and not self.indices:
            raise ValueError("frame choice 'fixed' needs frame indices, e.g. '0, 8, 15'")
        if self.expand not in core_guesses.EXPANSIONS:
            raise ValueError(f"unknown expansion {self.expand!r}; choose one of {core_guesses.EXPANSIONS}")
        if not 0.0 <= self.random_weight <= 1.0:
            raise ValueError(f"random weight must be in [0, 1], got {self.random_weight}")
        self.build()  # the core validates the rest

    @property
    def samples_frames(self) -> bool:
        """Whether the guess backpropagates through a subset of frames."""
        return self.kind in ("sampled_gradient", "mixed")

    def sampled_frame_count(self, total: int) -> int:
        """How many frames the sampled-gradient part sees in a video of `total` frames."""
        if self.choice == "fixed":
            return len(self.indices)
        return total if self.frames == 0 else self.frames

    def check_frames(self, total: int) -> None:
        """Raise if the sampled frames do not fit a video of `total` frames."""
        if not self.samples_frames:
            return
        if self.choice == "fixed":
            outside = [i for i in self.indices if i >= total]
            if outside:
                raise ValueError(f"sampled-gradient frame indices {list(outside)} are outside the {total} frames of "
                                 f"each video (valid: 0..{total - 1}); change 'frame indices'")
        elif self.frames > total:
            raise ValueError(f"sampled frames ({self.frames}) exceed the {total} latent frames of each video; "
                             f"use at most {total} (0 = all frames)")

    def _sampled(self) -> core.SampledGradientGuess:
        return core.SampledGradientGuess(frames=None if self.frames == 0 else self.frames, choice=self.choice,
                                         indices=list(self.indices) or None, expand=self.expand)

    def build(self):
        """A fresh guidance_core guess object."""
        if self.kind == "random":
            return core.RandomGuess(self.k)
        if self.kind == "orthogonal":
            return core.OrthogonalGuess(self.k)
        if self.kind == "antithetic":
            return core.AntitheticGuess(self.k)
        if self.kind == "score":
            return core.ScoreGuess()
        if self.kind == "sampled_gradient":
            return self._sampled()
        return core.MixedGuess(self._sampled(), self.random_weight)

    def describe(self) -> str:
        """Short description for the report."""
        if self.kind in ("random", "orthogonal"):
            return f"{self.kind} (k={self.k})"
        if self.kind == "antithetic":
            return f"antithetic ({self.k} pair(s))"
        if self.samples_frames:
            frames = f"frames {list(self.indices)}" if self.choice == "fixed" else \
                f"{self.frames or 'all'} {self.choice} frames"
            extra = f", random weight {self.random_weight:g}" if self.kind == "mixed" else ""
            return f"{self.kind} ({frames}, {self.expand}{extra})"
        return self.kind


METHOD_KINDS = ("titan", "exact_gradient") + tuple(
    name for name, cls in (("freedom", "FreeDoM"), ("mpgd", "MPGD"), ("tfg", "TFG"), ("doodl", "DOODL"))
    if hasattr(core.baselines, cls))


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """The TITAN_METHOD value: titan (forward gradients) or a baseline, with its own hyperparameters.

    titan and exact_gradient use the sampler's guidance knobs (strength, look-ahead, optimiser, ...);
    FreeDoM, MPGD and TFG use only the sampler's guidance window; DOODL optimises the initial noise.
    """

    kind: str = "titan"
    options: tuple = ()  # sorted (name, value) pairs, hashable so ComfyUI can cache on it

    def __post_init__(self):
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"unknown guidance method {self.kind!r}; choose one of {METHOD_KINDS}")

    @property
    def settings(self) -> dict:
        """The method's own options as a dict."""
        return dict(self.options)

    @property
    def uses_lookahead(self) -> bool:
        """Whether the sampler's look-ahead / strength / optimiser knobs apply."""
        return self.kind in ("titan", "exact_gradient")

    @property
    def uses_guess(self) -> bool:
        """Whether the gradient guess applies."""
        return self.kind == "titan"

    @property
    def checkpointed(self) -> bool:
        """Whether backprop recomputes activations (also used for the decode)."""
        return bool(self.settings.get("checkpoint", False)) and self.kind in ("exact_gradient", "freedom", "tfg")

    def build(self, settings: "GuidanceSettings", guess):
        """The guidance_core method object."""
        o = self.settings
        window = {"start": settings.start, "end": settings.end}
        if self.kind in ("titan", "exact_gradient"):
            common = dict(lookahead=settings.lookahead_value, strength=settings.strength,
                          schedule=settings.schedule, optimizer=settings.optimizer, iterations=settings.iterations,
                          max_grad_norm=settings.max_grad_norm or None, per_frame=settings.per_frame, **window)
            if self.kind == "titan":
                return core.Titan(guess=guess, estimator=o.get("estimator", "jvp"), **common)
            return core.baselines.ExactGradient(checkpointed=self.checkpointed, **common)
        # node option name -> constructor argument; absent options keep the baseline's own default
        renames = {"freedom": {"freedom_rho": "rho", "freedom_schedule": "rho_schedule", "freedom_repeats": "repeats"},
                   "mpgd": {"mpgd_scale": "scale", "mpgd_schedule": "schedule", "mpgd_iterations": "iterations"},
                   "tfg": {"tfg_rho": "rho", "tfg_mu": "mu", "tfg_gamma": "gamma", "tfg_recurrence": "n_recur",
                           "tfg_iterations": "n_iter", "tfg_mc_samples": "mc_samples"},
                   "doodl": {"doodl_iterations": "iterations", "doodl_lr": "lr", "doodl_mix": "mix"}}[self.kind]
        arguments = {target: o[name] for name, target in renames.items() if name in o}
        if self.kind in ("freedom", "tfg"):
            arguments["checkpointed"] = self.checkpointed
        if self.kind != "doodl":
            arguments.update(window)
        cls = {"freedom": "FreeDoM", "mpgd": "MPGD", "tfg": "TFG", "doodl": "DOODL"}[self.kind]
        return getattr(core.baselines, cls)(**arguments)

    def describe(self) -> str:
        """Short description for the report."""
        keys = METHOD_OPTION_KEYS[self.kind]
        shown = [f"{k}={v}" for k, v in self.options if k in keys]
        return self.kind + (f" ({', '.join(shown)})" if shown else "")


# Which TitanGuidanceMethod options each method reads.
METHOD_OPTION_KEYS = {
    "titan": ("estimator",),
    "exact_gradient": ("checkpoint",),
    "freedom": ("freedom_rho", "freedom_schedule", "freedom_repeats", "checkpoint"),
    "mpgd": ("mpgd_scale", "mpgd_schedule", "mpgd_iterations"),
    "tfg": ("tfg_rho", "tfg_mu", "tfg_gamma", "tfg_recurrence", "tfg_iterations", "tfg_mc_samples", "checkpoint"),
    "doodl": ("doodl_iterations", "doodl_lr", "doodl_mix"),
}


# ---------------------------------------------------------------------------------------------------------
# Guidance knobs shared by both sampler nodes
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GuidanceSettings:
    """The sampler-side guidance knobs (validated on construction)."""

    sampler: str = "euler"
    eta: float = 0.0
    strength: float = 0.1
    schedule: str = "constant"
    lookahead: int = 1
    start: float = 0.0
    end: float = 1.0
    iterations: int = 1
    optimizer: str = "adam"
    max_grad_norm: float = 0.0
    per_frame: bool = False
    decode_chunk_frames: int = 0
    frames_per_video: int = 0

    def __post_init__(self):
        if self.sampler not in SAMPLER_STEPS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLER_STEPS}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.sampler == "heun" and self.eta:
            raise ValueError("eta > 0 (stochastic steps) needs the euler or ddim sampler; set eta to 0 for heun")
        if self.lookahead < -1:
            raise ValueError(f"look-ahead must be >= 0, or -1 for all remaining steps; got {self.lookahead}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max grad norm must be >= 0 (0 = off), got {self.max_grad_norm}")
        if self.decode_chunk_frames < 0:
            raise ValueError(f"decode chunk frames must be >= 0 (0 = automatic), got {self.decode_chunk_frames}")
        if self.frames_per_video < 0:
            raise ValueError(f"frames per video must be >= 0 (0 = the whole batch is one video), "
                             f"got {self.frames_per_video}")
        core_update.guided_steps(1, self.start, self.end)
        core.strength_schedule(self.schedule, 1)
        core_update.make_optimizer(self.optimizer, self.strength)
        if self.iterations < 1:
            raise ValueError(f"iterations per step must be >= 1, got {self.iterations}")

    @property
    def lookahead_value(self) -> int | str:
        """The core's look-ahead: an int or "all"."""
        return "all" if self.lookahead == -1 else self.lookahead


def guidance_inputs() -> list:
    """The guidance knobs' inputs, shared by TitanGuideSampler and TitanGuideSamplerSelect."""
    return [
        io.Combo.Input("sampler", options=list(SAMPLER_STEPS), default="euler",
                       tooltip="Sampler step for the plain and look-ahead steps. euler and ddim are the same "
                               "deterministic step in k-diffusion form (eta adds noise); heun is 2nd order "
                               "(2 model calls per step)."),
        io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Noise fraction of each euler/ddim step (0 = deterministic DDIM, 1 = ancestral). "
                               "Must be 0 for heun, flow models and DOODL. The look-ahead is always deterministic. "
                               "The step noise has its own seeded stream, so guided and unguided runs at one seed "
                               "get the same noise."),
        io.Float.Input("strength", default=0.1, min=0.0, max=10.0, step=0.005,
                       tooltip="Guidance strength (learning rate of the update on the normalised latent "
                               "z = x / sqrt(1 + sigma^2)); the paper uses 0.1 (Adam 0.08-0.1). 0 = no update. "
                               "Used by titan and exact gradient."),
        io.Combo.Input("strength_schedule", options=list(core_update.SCHEDULES), default="constant",
                       tooltip="How the strength varies over the guided steps (normalised to mean 1)."),
        io.Int.Input("lookahead", default=1, min=-1, max=1000,
                     tooltip="Look-ahead steps: sampler steps run inside the forward-mode pass before the Tweedie "
                             "estimate that is decoded. 0 = Tweedie estimate at the current step, 1 = one step "
                             "ahead (paper default), -1 = all remaining steps (most accurate, slowest). Late steps "
                             "look ahead to the end. Must not exceed steps - 1."),
        io.Float.Input("guidance_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="First guided step, as a fraction of the steps (0 = from the first step)."),
        io.Float.Input("guidance_end", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="End of guidance, as a fraction of the steps (exclusive; 1 = to the last step). "
                               "start = end turns guidance off."),
        io.Int.Input("iterations", default=1, min=1, max=100,
                     tooltip="Guidance updates per guided step (each one re-estimates the gradient)."),
        io.Combo.Input("optimizer", options=list(core_update.OPTIMIZERS), default="adam",
                       tooltip="Update rule: adam (the authors' choice; one iteration = a step of size strength "
                               "per element in the gradient's sign direction) or sgd (step = strength * gradient)."),
        io.Float.Input("max_grad_norm", default=0.0, min=0.0, max=1e6, step=0.1,
                       tooltip="Clip each video's gradient estimate to this L2 norm before the update (0 = off)."),
        io.Boolean.Input("per_frame", default=False,
                         tooltip="Per-frame derivatives: one directional derivative per frame's loss from the same "
                                 "forward pass, so each frame is steered by its own loss (objectives with per-frame "
                                 "losses only)."),
        io.Int.Input("decode_chunk_frames", default=0, min=0, max=4096,
                     tooltip="Decode this many frames at a time inside the objective. 0 = automatic: on a GPU "
                             "the most frames whose forward-mode decode fits in half the free memory (measured "
                             "on one frame at the start), on the CPU all at once. Lower values lower peak "
                             "memory; the result is the same for image VAEs."),
        io.Int.Input("frames_per_video", default=0, min=0, max=4096,
                     tooltip="Frames of one video in the latent batch (AnimateDiff-style latents keep frames in the "
                             "batch). 0 = the whole batch is one video. The batch must be a multiple of it."),
    ]


def settings_from_inputs(values: Mapping[str, Any]) -> GuidanceSettings:
    """GuidanceSettings from a node's input values (names as in `guidance_inputs`)."""
    return GuidanceSettings(
        sampler=values["sampler"], eta=float(values["eta"]), strength=float(values["strength"]),
        schedule=values["strength_schedule"], lookahead=int(values["lookahead"]),
        start=float(values["guidance_start"]), end=float(values["guidance_end"]),
        iterations=int(values["iterations"]), optimizer=values["optimizer"],
        max_grad_norm=float(values["max_grad_norm"]), per_frame=bool(values["per_frame"]),
        decode_chunk_frames=int(values["decode_chunk_frames"]), frames_per_video=int(values["frames_per_video"]))


# ---------------------------------------------------------------------------------------------------------
# Autograd through ComfyUI's inference tensors
# ---------------------------------------------------------------------------------------------------------
def _any_requires_grad(values: Iterable) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                return True
        elif isinstance(value, (list, tuple)):
            if any(isinstance(v, torch.Tensor) and v.requires_grad for v in value):
                return True
    return False


class InferenceTensorClones:
    """Normal clones of inference tensors for operations autograd records, one clone per tensor per step.

    Weights, conditioning and schedules that ComfyUI created under inference mode cannot be saved for
    backward. `scope()` substitutes a cached normal clone for each such tensor in every operation that has
    an input requiring grad; the clones live until `clear()` (once per sampler step), so a backprop pass
    holds at most one copy of the weights it touches. Under no_grad and in forward-mode AD (which saves
    nothing) the scope is a no-op. The denoiser, decode and loss each enter a scope themselves, so activation
    checkpointing, which recomputes them during backward (outside any mode entered by the caller), is covered.
    """

    def __init__(self):
        self._clones: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        """Drop the cached clones (their memory is freed once no graph holds them)."""
        self._clones.clear()

    def normal(self, value):
        """`value` with inference tensors (also inside a list / tuple) replaced by their clones."""
        if isinstance(value, torch.Tensor):
            if value.is_inference():
                entry = self._clones.get(id(value))
                if entry is None or entry[0] is not value:
                    entry = (value, value.clone())
                    self._clones[id(value)] = entry
                return entry[1]
            return value
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(self.normal(v) for v in value)
        return value

    def scope(self):
        """Context in which autograd-recorded operations see normal clones (no-op without grad)."""
        return _CloneInferenceTensors(self) if torch.is_grad_enabled() else contextlib.nullcontext()


class _CloneInferenceTensors(TorchFunctionMode):
    """The torch-function mode behind `InferenceTensorClones.scope()`."""

    def __init__(self, clones: InferenceTensorClones):
        super().__init__()
        self.clones = clones

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled() and (_any_requires_grad(args) or _any_requires_grad(kwargs.values())):
            args = tuple(self.clones.normal(a) for a in args)
            kwargs = {k: self.clones.normal(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Attention with forward derivatives
# ---------------------------------------------------------------------------------------------------------
def _forward_ad_attention_override(func, *args, **kwargs):
    """`optimized_attention_override` for guidance model calls: ComfyUI's SDPA attention, routed by guidance_core.

    Fused kernels (SDPA flash / efficient / cuDNN, xformers, sage, flash-attn) have no forward derivative.
    attention_pytorch calls torch's SDPA, which inside a forward-mode pass is guidance_core's
    `forward_ad_sdpa`: the fused flash JVP kernel for long self-attention on CUDA, chunked MATH elsewhere.
    The split and sub-quadratic variants are not used: they size chunks from free memory for a plain
    forward, and a forward-mode pass needs about twice that.
    """
    return attention_pytorch(*args, **kwargs)


def _vae_math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention over the spatial positions of (B, C, *spatial) maps, as the VAE's AttnBlock."""
    shape = q.shape
    b, c = shape[0], shape[1]
    q, k, v = (t.reshape(b, 1, c, -1).transpose(2, 3) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # forward_ad_sdpa inside a JVP
    return out.transpose(2, 3).reshape(shape)


@contextlib.contextmanager
def vae_forward_ad_attention(vae_model: torch.nn.Module):
    """Route the VAE's attention blocks through explicit attention for the run (restored afterwards)."""
    swapped = []
    for module in vae_model.modules():
        if isinstance(module, AttnBlock) and "optimized_attention" in module.__dict__:
            swapped.append((module, module.__dict__["optimized_attention"]))
            module.optimized_attention = _vae_math_attention
    try:
        yield
    finally:
        for module, original in swapped:
            module.optimized_attention = original


# ---------------------------------------------------------------------------------------------------------
# Denoiser, decode and loss
# ---------------------------------------------------------------------------------------------------------
class ComfyDenoiser:
    """`denoise(x, sigma) -> x0` through ComfyUI's sampler model (CFG, patches, wrappers, inpainting mask).

    Checks for an interrupt before every model call. Inside `forward_ad_scope()` (entered by guidance_core
    around every JVP) the calls get a copy of the model options whose transformer_options route attention to
    `attention_pytorch` (and so to guidance_core's forward-AD SDPA); plain steps keep the user's attention.
    """

    def __init__(self, model: Callable, extra_args: dict, clones: InferenceTensorClones):
        self.model, self.extra_args, self.clones = model, extra_args, clones
        self.forward_ad_depth = 0
        self.calls = 0

    def _guided_extra_args(self) -> dict:
        extra_args = dict(self.extra_args)
        model_options = dict(extra_args.get("model_options", {}))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["optimized_attention_override"] = _forward_ad_attention_override
        model_options["transformer_options"] = transformer_options
        extra_args["model_options"] = model_options
        return extra_args

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        self.calls += 1
        extra_args = self._guided_extra_args() if self.forward_ad_depth else self.extra_args
        with self.clones.scope():
            return self.model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)

    @contextlib.contextmanager
    def forward_ad_scope(self):
        """Scope of one forward-mode pass: attention override on.

        ComfyUI's backend-priority context around SDPA needs no undoing: inside the pass torch's SDPA is
        guidance_core's router, which selects MATH itself where it does not take the fused JVP kernel.
        """
        self.forward_ad_depth += 1
        try:
            with forward_ad_safe_attention():
                yield
        finally:
            self.forward_ad_depth -= 1


def vae_decoder(vae, base_model, clones: InferenceTensorClones) -> Callable[[torch.Tensor], torch.Tensor]:
    """Differentiable decode of sampler-space latents (N, C, h, w) to pixels (N, 3, H, W) in [0, 1].

    The same steps as comfy.sd.VAE.decode (latent out-scaling, VAE dtype / device, float output,
    `process_output`), minus its no-grad batching and tiling fallbacks.
    """
    def decode(z: torch.Tensor) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        with clones.scope():
            latent = base_model.process_latent_out(z)
            pixels = vae.first_stage_model.decode(latent.to(vae.vae_dtype).to(vae.device))
            return vae.process_output(pixels.float())
    return decode


class GuidanceLoss:
    """The loss guidance_core differentiates: latent x0 (sampler space) -> per-video (B,) or per-frame (B, F).

    Called as loss(x0, frame_indices=None, per_frame=False): `frame_indices` says which frames of each video
    x0 holds when the sampled-gradient guess passes a subset. With `frames` (frames per video) given, a subset
    that is every frame in order is passed on as None, so the objectives gather nothing.
    """

    def __init__(self, objective: ObjectiveSet, decode: Callable, process_latent_out: Callable,
                 layout: core.Layout, chunk_frames: int, checkpointed: bool, clones: InferenceTensorClones,
                 frames: int | None = None):
        self.objective, self.decode, self.process_latent_out = objective, decode, process_latent_out
        self.clones = clones
        self.layout, self.chunk_frames, self.checkpointed = layout, chunk_frames, checkpointed
        self.frames = frames

    def covers_all_frames(self, frame_indices: torch.Tensor) -> bool:
        """Whether `frame_indices` is 0, 1, ..., frames - 1 (no subset at all)."""
        return (self.frames is not None and frame_indices.numel() == self.frames
                and torch.equal(frame_indices.detach().flatten().cpu().long(), torch.arange(self.frames)))

    def __call__(self, x0: torch.Tensor, frame_indices: torch.Tensor | None = None,
                 per_frame: bool = False) -> torch.Tensor:
        if frame_indices is not None and self.covers_all_frames(frame_indices):
            frame_indices = None
        samples = self.layout.samples
        pixels = latents = None
        if "pixels" in self.objective.spaces:
            decoded = core.chunked_decode(self.decode, x0, self.chunk_frames, self.layout, self.checkpointed)
            pixels = decoded.reshape(samples, -1, *decoded.shape[1:])
        with self.clones.scope():
            if "latent" in self.objective.spaces:
                out = self.process_latent_out(x0)
                latents = out.reshape(samples, -1, *out.shape[1:])
            return self.objective.loss(pixels, latents, per_frame=per_frame, frame_indices=frame_indices)


def latent_scale_of(model_sampling) -> Callable[[torch.Tensor], torch.Tensor]:
    """Update normalisation c(sigma) = the model's own input scaling: 1/sqrt(1+sigma^2) (EPS / V), 1 (flow)."""
    def scale(sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        ones = torch.ones((1, 1), dtype=sigma.dtype, device=sigma.device)
        return model_sampling.calculate_input(sigma.reshape(1), ones).reshape(())
    return scale


def is_flow(model_sampling) -> bool:
    """True for rectified-flow models (CONST model sampling)."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def guidance_seed(seed: int) -> int:
    """A seed for the guidance RNG derived from the noise seed, so tangents are not the initial noise itself."""
    return (int(seed) * 6364136223846793005 + 1442695040888963407) % (2**63)


# ---------------------------------------------------------------------------------------------------------
# The guided run
# ---------------------------------------------------------------------------------------------------------
def plan_decode_chunk(loss: "GuidanceLoss", x: torch.Tensor, layout: core.Layout, frames: int, setting: int) -> str:
    """Set `loss.chunk_frames` (0 = automatic: the most frames whose forward-mode decode fits half the free GPU
    memory, measured on one frame; all frames on the CPU); returns the report line."""
    if "pixels" not in loss.objective.spaces:
        return ""
    if setting:
        loss.chunk_frames = setting
        return f"{min(setting, frames)} of {frames} frame(s) per VAE call (set by decode_chunk_frames)"
    loss.chunk_frames = core.plan_chunk_frames(loss.decode, x, layout)
    how = "planned from free GPU memory" if x.is_cuda else "all at once on the CPU"
    return f"{loss.chunk_frames} of {frames} frame(s) per VAE call (automatic: {how})"


@dataclasses.dataclass
class RunRecord:
    """What one guided sampling run reports."""

    method: str = ""
    guess: str = ""
    objective: str = ""
    videos: int = 0
    frames: int = 0
    steps: int = 0
    reports: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    model_calls: int = 0
    peak_memory_bytes: int = 0
    memory_source: str = ""
    loaded_models: list = dataclasses.field(default_factory=list)  # lines from describe_loaded_models
    decode_chunk: str = ""  # frames per decode inside the objective, and how they were chosen


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA peak allocated since the run started, else the process peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), f"torch.cuda.max_memory_allocated on {device} during the run"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return rss_bytes, ("process peak RSS of the ComfyUI server since it started (ru_maxrss; "
                       f"the latent is on {device.type}, so no per-run GPU figure exists)")


def managed_entry(patcher):
    """ComfyUI's LoadedModel entry holding `patcher` (or a clone of it), or None when it is not loaded."""
    for entry in model_management.current_loaded_models:
        loaded = entry.model
        if loaded is not None and (loaded is patcher or patcher.is_clone(loaded)):
            return entry
    return None


def describe_loaded_models(models: Sequence[tuple[str, Any]], loaded_late: Sequence = ()) -> list[str]:
    """One line per (role, ModelPatcher): what ComfyUI's model management holds of it now, and where.

    `loaded_late`: patchers that were not loaded with the diffusion model and had to be loaded when guidance
    started (ComfyUI did not plan memory for them together).
    """
    lines = []
    for role, patcher in models:
        entry = managed_entry(patcher)
        size = patcher.model_size() / 2**20
        kind = type(patcher.model).__name__
        if entry is None:
            lines.append(f"{role} ({kind}, {size:.1f} MiB): not loaded")
            continue
        late = any(patcher is other for other in loaded_late)
        lines.append(f"{role} ({kind}): {entry.model_loaded_memory() / 2**20:.1f} of {size:.1f} MiB on "
                     f"{entry.device}" + (", loaded separately when guidance started" if late else ""))
    return lines


class GuidedRun:
    """One guided sampling configuration; `ksampler()` gives the SAMPLER that runs it inside ComfyUI."""

    def __init__(self, settings: GuidanceSettings, objective: ObjectiveSet, vae, guess: GuessSpec | None = None,
                 method: MethodSpec | None = None, seed: int | None = None):
        if not isinstance(objective, ObjectiveSet):
            raise ValueError(f"'objective' must come from a TITAN-Guide objective node, got {type(objective).__name__}")
        if vae is None or getattr(vae, "first_stage_model", None) is None:
            raise ValueError("the VAE input is missing or invalid (a checkpoint without a VAE?); connect a VAE")
        self.settings, self.objective, self.vae = settings, objective, vae
        self.guess = guess if guess is not None else GuessSpec()
        self.method = method if method is not None else MethodSpec()
        self.seed = seed
        self.record = RunRecord()
        objective.check_inputs()
        if settings.per_frame and self.method.uses_lookahead and not objective.has_frame_losses:
            names = [s.name for s in objective.specs if not s.has_frame_losses]
            raise ValueError(f"per-frame derivatives need per-frame losses, which {', '.join(names)} does not have "
                             "(e.g. the colour objective in 'video' mode); turn 'per_frame' off")
        if self.method.kind == "doodl" and (settings.sampler not in ("euler", "ddim") or settings.eta):
            raise ValueError("DOODL inverts deterministic steps: use sampler euler or ddim with eta 0")

    def ksampler(self) -> comfy.samplers.KSAMPLER:
        """A KSAMPLER whose sampler function is this run."""
        return comfy.samplers.KSAMPLER(self.sample)

    def comfy_models(self) -> list[tuple[str, Any]]:
        """(role, ModelPatcher) of the models guidance adds to sampling: the VAE and the objectives' networks.

        TitanGuideSampler registers them as additional models of the diffusion model, so ComfyUI's
        `prepare_sampling` loads them in one `load_models_gpu` call with it and plans memory for all of them.
        """
        return [("VAE", self.vae.patcher)] + self.objective.comfy_patchers()

    def load_models(self, guider, decode_memory: int) -> tuple[list[tuple[str, Any]], list]:
        """Make sure the VAE and the objectives' networks are loaded, keeping the models sampling runs on.

        Models not loaded yet (TitanGuideSamplerSelect, whose GUIDER comes from elsewhere; or offloaded since)
        are loaded in one `load_models_gpu` call. Memory for the guidance activations is then freed from idle
        models only: every model of this run is kept. Returns (role, patcher) of all of them for the report,
        and the patchers that had to be loaded here.
        """
        guidance = self.comfy_models()
        sampling = [("diffusion model", guider.model_patcher)] if getattr(guider, "model_patcher", None) else []
        for extra in getattr(guider, "loaded_models", None) or ():  # controlnets etc. (and ours, listed once)
            if hasattr(extra, "model_size") and not any(extra is p or extra.is_clone(p) for _, p in guidance):
                sampling.append(("additional model", extra))
        missing = [patcher for _, patcher in guidance if managed_entry(patcher) is None]
        if missing:
            model_management.load_models_gpu(missing, memory_required=decode_memory)
        device = torch.device(self.vae.patcher.load_device)
        if device.type != "cpu":
            keep = [entry for entry in (managed_entry(p) for _, p in sampling + guidance) if entry is not None]
            needed = max(model_management.minimum_inference_memory(),
                         decode_memory + model_management.extra_reserved_memory())  # as load_models_gpu reserves
            model_management.free_memory(needed, device, keep_loaded=keep)
        return sampling + guidance, missing

    def layout_for(self, shape: Sequence[int]) -> tuple[core.Layout, int]:
        """(layout, frames per video) for a latent of `shape`; raises if the batch cannot hold whole videos."""
        if len(shape) != 4:
            raise ValueError(f"TITAN-Guide samples latents of shape (batch * frames, C, H, W); got {tuple(shape)}. "
                             "Video models with 5-D latents (B, C, T, H, W) are not supported by these nodes")
        batch = shape[0]
        frames = self.settings.frames_per_video or batch
        if batch % frames:
            raise ValueError(f"the latent batch of {batch} cannot be split into videos of {frames} frames: "
                             f"set 'frames_per_video' to a divisor of {batch} (0 = the whole batch is one video)")
        return core.Layout(samples=batch // frames, frame_dim=0), frames

    def validate(self, shape: Sequence[int], steps: int, model_sampling=None) -> tuple[core.Layout, int]:
        """Check everything that depends on the latent and the schedule; returns (layout, frames)."""
        layout, frames = self.layout_for(shape)
        s = self.settings
        if self.method.uses_lookahead and s.lookahead > max(steps - 1, 0):
            raise ValueError(f"look-ahead of {s.lookahead} steps exceeds the {max(steps - 1, 0)} steps after the "
                             f"first of {steps}; use at most {max(steps - 1, 0)}, or -1 for all remaining steps")
        if frames < self.objective.min_frames:
            raise ValueError(f"the objective needs videos of at least {self.objective.min_frames} frames, but each "
                             f"video has {frames}; set 'frames_per_video' or use more frames")
        if self.method.uses_guess:
            self.guess.check_frames(frames)
            if self.guess.samples_frames:
                sampled = self.guess.sampled_frame_count(frames)
                if sampled < self.objective.min_frames:
                    raise ValueError(f"the sampled-gradient guess shows the objective {sampled} frame(s), but it "
                                     f"needs at least {self.objective.min_frames}; raise 'sampled frames'")
        if model_sampling is not None and is_flow(model_sampling) and s.eta:
            raise ValueError("eta > 0 (stochastic steps) is not available for flow-matching models; set eta to 0")
        return layout, frames

    # --- the sampler function (called by KSAMPLER.sample inside CFGGuider.sample) -------------------------
    def sample(self, model, x: torch.Tensor, sigmas: torch.Tensor, extra_args=None, callback=None, disable=None):
        """KSAMPLER sampler function: guided sampling of `x` (noise at sigmas[0]) down `sigmas`."""
        extra_args = {} if extra_args is None else extra_args
        guider = model.inner_model
        base_model = guider.inner_model
        model_sampling = base_model.model_sampling
        steps = len(sigmas) - 1
        layout, frames = self.validate(x.shape, steps, model_sampling)
        seed = self.seed if self.seed is not None else int(extra_args.get("seed") or 0)
        s = self.settings
        record = RunRecord(method=self.method.describe(), guess=self.guess.describe() if self.method.uses_guess else "",
                           objective=self.objective.describe(), videos=layout.samples, frames=frames, steps=steps)
        self.record = record
        if steps < 1:
            return x

        decoded_rows = layout.samples * min(s.decode_chunk_frames, frames) if s.decode_chunk_frames else x.shape[0]
        decode_shape = (decoded_rows, *x.shape[1:])
        run_models, loaded_late = self.load_models(guider, self.vae.memory_used_decode(decode_shape,
                                                                                      self.vae.vae_dtype))
        self.objective.to(self.vae.device, x.device)
        record.loaded_models = describe_loaded_models(run_models, loaded_late)
        clones = InferenceTensorClones()
        denoiser = ComfyDenoiser(model, extra_args, clones)
        loss = GuidanceLoss(self.objective, vae_decoder(self.vae, base_model, clones), base_model.process_latent_out,
                            layout, s.decode_chunk_frames, self.method.checkpointed, clones, frames=frames)
        method = self.method.build(s, self.guess.build())
        generator = torch.Generator(device="cpu").manual_seed(guidance_seed(seed))

        def step_callback(info: dict) -> None:
            clones.clear()  # the step's backward passes are done
            model_management.throw_exception_if_processing_interrupted()
            if callback is not None:
                callback(info)

        if x.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(x.device)
        LOG.info("TITAN-Guide: guided sampling started (%s, %d step(s), %d video(s) x %d frame(s))",
                 record.method, steps, layout.samples, frames)
        started = time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.inference_mode(False))
                self.objective.prepare(frames)  # constant targets, computed once before any forward-mode pass
                stack.enter_context(vae_forward_ad_attention(self.vae.first_stage_model))
                stack.callback(core.register_attention_context(denoiser.forward_ad_scope))
                stack.enter_context(clones.scope())  # for the few operations outside the wrappers
                record.decode_chunk = plan_decode_chunk(loss, x, layout, frames, s.decode_chunk_frames)
                caught = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("always")
                result = core.sample(denoiser, x.clone(), sigmas.clone(), method, loss=loss, layout=layout,
                                     step=s.sampler, eta=s.eta, generator=generator,
                                     latent_scale=latent_scale_of(model_sampling), callback=step_callback)
                record.warnings = [str(w.message) for w in caught]
        except torch.OutOfMemoryError as error:
            clones.clear()
            raise torch.OutOfMemoryError(
                f"out of memory during TITAN-Guide guidance ({record.method}, {layout.samples} video(s) x {frames} "
                f"frame(s)): {error}. To lower memory: " + "; ".join(MEMORY_KNOBS) + ".") from error
        finally:
            clones.clear()
        record.seconds = time.perf_counter() - started
        record.model_calls = denoiser.calls
        record.reports = result.reports
        record.peak_memory_bytes, record.memory_source = peak_memory(x.device)
        for message in record.warnings:
            LOG.warning("TITAN-Guide: %s", message)
        LOG.info("TITAN-Guide run finished:\n%s", format_report(record))
        return result.x


# ---------------------------------------------------------------------------------------------------------
# Report and plot
# ---------------------------------------------------------------------------------------------------------
def _first(values) -> float | None:
    if isinstance(values, (list, tuple)):
        values = [v for v in values if v is not None]
        return float(values[0]) if values else None
    return None if values is None else float(values)


def _last(values) -> float | None:
    if isinstance(values, (list, tuple)):
        values = [v for v in values if v is not None]
        return float(values[-1]) if values else None
    return None if values is None else float(values)


def step_losses(record: RunRecord) -> list[tuple[int, float]]:
    """(step or iteration, loss before its update) for every report with a finite loss."""
    points = []
    for report in record.reports:
        index = report.get("step", report.get("iteration"))
        loss = _first(report.get("loss"))
        if index is not None and loss is not None and math.isfinite(loss):
            points.append((int(index), loss))
    return points


def _fmt(value, width: int = 11) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:.5g}".rjust(width)


def format_report(record: RunRecord) -> str:
    """The node's report: one line per guided step (loss, |G|, look-ahead) and the totals."""
    lines = [f"TITAN-Guide report: method {record.method}" + (f", guess {record.guess}" if record.guess else ""),
             f"objective: {record.objective}",
             f"{record.videos} video(s) x {record.frames} frame(s), {record.steps} sampler step(s)"]
    doodl = any("iteration" in r and "step" not in r for r in record.reports)
    lines.append(("iteration" if doodl else "step").ljust(10) + "sigma".rjust(11) + "look-ahead".rjust(11)
                 + "loss".rjust(11) + "last loss".rjust(11) + "|G|".rjust(11) + "  note")
    skipped = 0
    for report in record.reports:
        index = report.get("step", report.get("iteration"))
        note = report.get("skipped") or ("final EDICT sample" if report.get("final") else "")
        if report.get("skipped"):
            skipped += 1
        lookahead = report.get("lookahead")
        lines.append(str(index).ljust(10) + _fmt(report.get("sigma"))
                     + str("-" if lookahead is None else lookahead).rjust(11)
                     + _fmt(_first(report.get("loss"))) + _fmt(_last(report.get("loss")))
                     + _fmt(_last(report.get("grad_norm"))) + (f"  {note}" if note else ""))
    if not record.reports:
        lines.append("(no guided steps: the guidance window is empty, or no objective was evaluated)")
    lines.append(f"guided entries: {len(record.reports)}, skipped (non-finite loss or gradient): {skipped}")
    for message in dict.fromkeys(record.warnings):
        lines.append(f"warning: {message}")
    if record.decode_chunk:
        lines.append(f"decode chunk: {record.decode_chunk}")
    lines.append(f"time: {record.seconds:.2f} s, model calls: {record.model_calls}")
    lines.append(f"peak memory: {record.peak_memory_bytes / 2**20:.1f} MiB ({record.memory_source})")
    if record.loaded_models:
        lines.append("models in ComfyUI's model management for this run:")
        lines += [f"  {line}" for line in record.loaded_models]
    return "\n".join(lines)


def plot_losses(record: RunRecord, width: int = 512, height: int = 320) -> torch.Tensor:
    """IMAGE (1, H, W, 3) in [0, 1]: the loss at each guided step (before its update)."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    points = step_losses(record)
    left, right, top, bottom = 70, width - 20, 30, height - 40
    x_label = "DOODL iteration" if any("iteration" in r and "step" not in r for r in record.reports) else "sampler step"
    draw.text((left, 8), f"TITAN-Guide loss per guided step ({record.method})"[:70], fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    draw.text(((left + right) // 2 - 40, bottom + 20), x_label, fill="black", font=font)
    if not points:
        draw.text((left + 20, (top + bottom) // 2), "no guided steps", fill="black", font=font)
    else:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        x_lo, x_hi = min(xs), max(xs)
        y_lo, y_hi = min(ys), max(ys)
        if y_hi - y_lo < 1e-12:
            y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) + 1e-6), y_hi + 0.5 * (abs(y_hi) + 1e-6)
        def to_px(xv, yv):
            px = left + (right - left) * (0.5 if x_hi == x_lo else (xv - x_lo) / (x_hi - x_lo))
            py = bottom - (bottom - top) * (yv - y_lo) / (y_hi - y_lo)
            return px, py
        pixels = [to_px(xv, yv) for xv, yv in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=(200, 30, 30), width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(200, 30, 30))
        for value, py in ((y_hi, top), (y_lo, bottom)):
            draw.text((4, py - 6), f"{value:.4g}", fill="black", font=font)
        for xv in sorted(set([x_lo, x_hi])):
            px, _ = to_px(xv, y_lo)
            draw.text((px - 4, bottom + 4), str(xv), fill="black", font=font)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]
