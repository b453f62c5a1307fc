"""The sampler loop every guidance method plugs into, in the spirit of k-diffusion's `sampling.py`.

A method is an object with `guide(x, i, ctx) -> (x_next, report | None)` that takes the latent at sigmas[i]
to sigmas[i + 1]; `ctx.plain_step` is the unguided step. Methods that optimise the whole trajectory (DOODL)
provide `sample(x, ctx) -> (x0, reports)` instead.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser, vp_input_scale
from .layout import Layout
from .packed import WholeLatent
from .steps import STEPS, ancestral_step, derived_seed, heun_step
from .validation import check_latent, finite


@dataclass
class SamplingContext:
    """Everything shared by the steps of one sampling run."""

    denoise: Denoiser
    sigmas: Tensor
    loss: Callable[..., Tensor] | None = None
    layout: Layout = field(default_factory=Layout)
    step: str = "euler"
    eta: float = 0.0
    generator: torch.Generator | None = None
    latent_scale: Callable[[Tensor], Tensor] = vp_input_scale
    callback: Callable[[dict], None] | None = None
    observer: Callable[..., None] | None = None
    noise_generator: torch.Generator | None = None  # ancestral step noise; default: derived from `generator`
    state: dict = field(default_factory=dict)  # what a method keeps across the steps of this run (an optimiser)
    sampler_knob: str = "'cfg'"  # the widget that makes an unguided sampler step non-finite (named in the error)
    # the part of x guidance acts on (packed.PackedPart: the video of LTX-2's packed audio+video latent); `layout`
    # and `loss` describe that part, the denoiser and the steps the whole x
    part: object = field(default_factory=WholeLatent)

    def __post_init__(self):
        # Step noise gets its own stream, so guidance's random draws (tangents, frame choices) do not shift it:
        # with eta > 0 a guided run and an unguided run from the same seed see the same step noise.
        if self.noise_generator is None and self.generator is not None:
            self.noise_generator = torch.Generator(device=self.generator.device).manual_seed(
                derived_seed(self.generator.initial_seed(), 1))

    def run_state(self, owner: object, build: Callable[[], object]) -> object:
        """`owner`'s state for this run, built on first use (a method object may serve several runs)."""
        key = id(owner)
        if key not in self.state:
            self.state[key] = build()
        return self.state[key]

    @property
    def steps(self) -> int:
        """Number of sampler steps."""
        return len(self.sigmas) - 1

    def plain_step(self, x: Tensor, i: int, denoised: Tensor | None = None) -> Tensor:
        """The unguided step from sigmas[i] to sigmas[i+1] (reports progress through the callback)."""
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        with torch.no_grad():
            denoised = self.denoise(x, sigma) if denoised is None else denoised
            if self.step == "heun":
                x_next = heun_step(self.denoise, x, sigma, sigma_next, denoised)
            else:
                x_next = ancestral_step(denoised, x, sigma, sigma_next, self.eta, self.noise_generator)
        if self.callback is not None:
            self.callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        return x_next


@dataclass
class SampleResult:
    """Final latent and one report per guided step."""

    x: Tensor
    reports: list[dict]


def sample(denoise: Denoiser, x: Tensor, sigmas: Tensor, method=None, **context) -> SampleResult:
    """Sample from noise `x` at sigmas[0] down the schedule `sigmas` (ending in 0), guided by `method`."""
    ctx = SamplingContext(denoise, sigmas, **context)
    if ctx.step not in STEPS:
        raise ValueError(f"unknown sampler step {ctx.step!r}; choose one of {STEPS}")
    if ctx.step == "heun" and ctx.eta:
        raise ValueError("eta > 0 (stochastic steps) is only available with the euler / ddim step")
    if not ctx.part.whole and method is not None and not getattr(method, "guides_parts", False):
        raise ValueError(f"{type(method).__name__} cannot guide one part of a packed latent yet "
                         f"({ctx.part.describe()}); use the TITAN or exact-gradient method")
    ctx.layout.check(ctx.part.get(x))
    check_latent(x, "the input latent", "check the node that made it (or the input image / video it encodes)")
    knob = getattr(method, "knob", "'strength'")  # the widget that scales the method's updates
    if method is not None and hasattr(method, "sample"):
        x, reports = method.sample(x, ctx)
        check_latent(x, f"the {type(method).__name__} result", f"lower {knob} or {ctx.sampler_knob}")
        return SampleResult(x, reports)
    reports = []
    for i in range(ctx.steps):
        x_next, report = (ctx.plain_step(x, i), None) if method is None else method.guide(x, i, ctx)
        if not finite(x_next):  # never hand on a non-finite latent: take the step unguided, or say what to change
            x_next = ctx.plain_step(x, i) if report is not None else x_next
            check_latent(x_next, f"the latent after the sampler's unguided step {i} (sigma {float(ctx.sigmas[i]):.4g})",
                         f"no guidance update caused this: lower {ctx.sampler_knob}, or check the model and the "
                         "input latent")
            report["skipped"] = (f"the guidance update made the latent non-finite (NaN or infinite): step taken "
                                 f"without guidance; lower {knob}")
            warnings.warn(f"guidance step {i}: the update made the latent non-finite, so the step was taken without "
                          f"guidance; lower {knob}")
        if report is not None:
            reports.append(report)
        x = x_next
    return SampleResult(x, reports)
