"""What a guided run is configured with, checked once: the gradient guess, the guidance method and the sampler
knobs (the values behind the TITAN_GUESS / TITAN_METHOD sockets and the sampler widgets), and the checks that
need the latent and the schedule (`check_run`). Plain Python: the nodes translate widgets into these.
"""
from __future__ import annotations

import dataclasses

from . import baselines
from . import update as core_update
from .guesses import EXPANSIONS, FRAME_CHOICES, GUESS_KINDS, make_guess
from .forward_gradient import DEFAULT_ESTIMATOR, FORWARD_MODE_ESTIMATORS
from .titan import Titan
from .steps import STEPS, derived_seed
from .update import strength_schedule


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
        if self.choice not in FRAME_CHOICES:
            raise ValueError(f"unknown frame choice {self.choice!r}; choose one of {FRAME_CHOICES}")
        if self.choice == "fixed" and not self.indices:
            raise ValueError("frame choice 'fixed' needs frame indices, e.g. '0, 8, 15'")
        if self.expand not in EXPANSIONS:
            raise ValueError(f"unknown expansion {self.expand!r}; choose one of {EXPANSIONS}")
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

    def build(self):
        """A fresh guidance_core guess object."""
        if self.kind in ("random", "orthogonal"):
            return make_guess(self.kind, k=self.k)
        if self.kind == "antithetic":
            return make_guess(self.kind, pairs=self.k)
        if self.kind == "score":
            return make_guess(self.kind)
        sampled = make_guess("sampled_gradient", frames=None if self.frames == 0 else self.frames,
                             choice=self.choice, indices=list(self.indices) or None, expand=self.expand)
        return sampled if self.kind == "sampled_gradient" else make_guess("mixed", base=sampled,
                                                                           random_weight=self.random_weight)

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



BASELINES = {"freedom": baselines.FreeDoM, "mpgd": baselines.MPGD, "tfg": baselines.TFG, "doodl": baselines.DOODL}
METHOD_KINDS = ("titan", "exact_gradient") + tuple(BASELINES)
METHOD_DESCRIPTIONS = {
    "titan": "forward gradients from one forward-mode pass per tangent (no backprop, low memory)",
    "exact_gradient": "backprop through the same look-ahead, decode and objective (reference; "
                      "high memory)",
    "freedom": "FreeDoM, backprop through the denoiser at the Tweedie estimate, optional time travel",
    "mpgd": "MPGD, gradient steps on the clean estimate through decoder and objective only",
    "tfg": "TFG, variance + mean guidance with implicit-dynamics smoothing and recurrence",
    "doodl": "DOODL, optimises the initial noise through an invertible EDICT sampler",
}


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

    def build(self, settings: "GuidanceSettings", guess, cuda_graph: bool = False):
        """The guidance_core method object (`cuda_graph`: TITAN's JVP estimator replays CUDA graphs)."""
        o = self.settings
        window = {"start": settings.start, "end": settings.end}
        if self.kind in ("titan", "exact_gradient"):
            common = dict(lookahead=settings.lookahead_value, strength=settings.strength,
                          schedule=settings.schedule, optimizer=settings.optimizer, iterations=settings.iterations,
                          max_grad_norm=settings.max_grad_norm or None, per_frame=settings.per_frame, **window)
            if self.kind == "titan":
                estimator = o.get("estimator", DEFAULT_ESTIMATOR)
                return Titan(guess=guess, estimator=estimator,
                             cuda_graph=cuda_graph and estimator in FORWARD_MODE_ESTIMATORS, **common)
            return baselines.ExactGradient(checkpointed=self.checkpointed, **common)
        # node option name -> constructor argument; absent options keep the baseline's own default
        renames = {"freedom": {"freedom_rho": "rho", "freedom_schedule": "rho_schedule", "freedom_repeats": "repeats"},
                   "mpgd": {"mpgd_scale": "scale", "mpgd_schedule": "schedule", "mpgd_iterations": "iterations"},
                   "tfg": {"tfg_rho": "rho", "tfg_mu": "mu", "tfg_gamma": "gamma", "tfg_recurrence": "n_recur",
                           "tfg_iterations": "n_iter", "tfg_mc_samples": "mc_samples"},
                   "doodl": {"doodl_iterations": "iterations", "doodl_lr": "lr", "doodl_mix": "mix"}}[self.kind]
        arguments = {target: o[name] for name, target in renames.items() if name in o}
        if self.kind in ("freedom", "tfg"):
            arguments["checkpointed"] = self.checkpointed
        if self.kind in ("freedom", "mpgd", "tfg"):
            arguments["update"] = o.get("baseline_update", "plain")
        if self.kind != "doodl":
            arguments.update(window)
        return BASELINES[self.kind](**arguments)

    def describe(self) -> str:
        """Short description for the report."""
        keys = METHOD_OPTION_KEYS[self.kind]
        shown = [f"{k}={v}" for k, v in self.options if k in keys]
        return self.kind + (f" ({', '.join(shown)})" if shown else "")


# Which TitanGuidanceMethod options each method reads.
METHOD_OPTION_KEYS = {
    "titan": ("estimator",),
    "exact_gradient": ("checkpoint",),
    "freedom": ("freedom_rho", "freedom_schedule", "freedom_repeats", "checkpoint", "baseline_update"),
    "mpgd": ("mpgd_scale", "mpgd_schedule", "mpgd_iterations", "baseline_update"),
    "tfg": ("tfg_rho", "tfg_mu", "tfg_gamma", "tfg_recurrence", "tfg_iterations", "tfg_mc_samples", "checkpoint",
            "baseline_update"),
    "doodl": ("doodl_iterations", "doodl_lr", "doodl_mix"),
}



# Sampler widget names that differ from GuidanceSettings' field names.
WIDGET_FIELDS = {"strength_schedule": "schedule", "guidance_start": "start", "guidance_end": "end"}


@dataclasses.dataclass(frozen=True)
class GuidanceSettings:
    """The sampler-side guidance knobs (validated on construction)."""

    sampler: str = "euler"
    eta: float = 0.0
    strength: float = Titan.strength  # the shipped guidance defaults live on the core method
    schedule: str = Titan.schedule
    lookahead: int = Titan.lookahead
    start: float = Titan.start
    end: float = Titan.end
    iterations: int = Titan.iterations
    optimizer: str = Titan.optimizer
    max_grad_norm: float = 0.0
    per_frame: bool = False
    decode_chunk_frames: int = 0
    frames_per_video: int = 0

    def __post_init__(self):
        if self.sampler not in STEPS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {STEPS}")
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
        strength_schedule(self.schedule, 1)
        core_update.make_optimizer(self.optimizer, self.strength)
        if self.iterations < 1:
            raise ValueError(f"iterations per step must be >= 1, got {self.iterations}")

    @classmethod
    def from_widgets(cls, values: dict) -> "GuidanceSettings":
        """Settings from the sampler widgets' values, keyed by widget name (other keys are ignored)."""
        fields = {field.name for field in dataclasses.fields(cls)}
        renamed = {WIDGET_FIELDS.get(name, name): value for name, value in values.items()}
        return cls(**{name: value for name, value in renamed.items() if name in fields})

    @property
    def lookahead_value(self) -> int | str:
        """The core's look-ahead: an int or "all"."""
        return "all" if self.lookahead == -1 else self.lookahead



def guess_and_method(guess, method) -> tuple[GuessSpec, MethodSpec]:
    """The TITAN_GUESS / TITAN_METHOD values of a run, defaults for unconnected ones."""
    guess = GuessSpec() if guess is None else guess
    method = MethodSpec() if method is None else method
    if not isinstance(guess, GuessSpec) or not isinstance(method, MethodSpec):
        raise ValueError("'guess' and 'method' must come from the TITAN Gradient Guess and TITAN Guidance Method nodes")
    return guess, method


def guidance_seed(seed: int) -> int:
    """A seed for the guidance RNG derived from the noise seed, so tangents are not the initial noise itself."""
    return derived_seed(seed, 1442695040888963407)


def check_method(settings: GuidanceSettings, objective, method: MethodSpec,
                 deterministic_hint: str = "use sampler euler or ddim with eta 0") -> None:
    """What the method needs of the objective and the sampler knobs (known before the latent is)."""
    objective.check_inputs()
    if settings.per_frame and method.uses_lookahead and not objective.has_frame_losses:
        names = [s.name for s in objective.specs if not s.has_frame_losses]
        raise ValueError(f"per-frame derivatives need per-frame losses, which {', '.join(names)} does not have "
                         "(e.g. the colour objective in 'video' mode); turn 'per_frame' off")
    if method.kind == "doodl" and (settings.sampler not in ("euler", "ddim") or settings.eta):
        raise ValueError(f"DOODL inverts deterministic steps: {deterministic_hint}")


def check_run(settings: GuidanceSettings, objective, guess: GuessSpec, method: MethodSpec, steps: int, frames: int,
              decoded_frames=None, more_frames: str = "set 'frames_per_video' or use more frames",
              deterministic_hint: str = "use sampler euler or ddim with eta 0") -> int:
    """Everything about a run that depends on its objective, schedule and latent, checked before any model call.

    `frames`: latent frames per video; `decoded_frames(n)`: the frames n latent frames decode to (default: n),
    what the objective sees. `objective` is an objectives.ObjectiveSet. Returns the decoded frames per video.
    """
    decoded_frames = decoded_frames or (lambda n: n)
    check_method(settings, objective, method, deterministic_hint)
    after_first = max(steps - 1, 0)
    if method.uses_lookahead and settings.lookahead > after_first:
        raise ValueError(f"look-ahead of {settings.lookahead} steps exceeds the {after_first} steps after the "
                         f"first of {steps}; use at most {after_first}, or -1 for all remaining steps")
    seen = decoded_frames(frames)
    if seen < objective.min_frames:
        raise ValueError(f"the objective needs videos of at least {objective.min_frames} frames, but each video has "
                         f"{seen}; {more_frames}")
    if method.uses_guess:
        guess.check_frames(frames)
        if guess.samples_frames:
            sampled = guess.sampled_frame_count(frames)
            if decoded_frames(sampled) < objective.min_frames:
                raise ValueError(f"the sampled-gradient guess shows the objective {decoded_frames(sampled)} frame(s) "
                                 f"({sampled} latent frame(s)), but it needs at least {objective.min_frames}; "
                                 "raise 'sampled frames'")
    return seen
