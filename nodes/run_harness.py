"""The one run harness of every sampler node (TitanGuideSampler, TitanGuideSamplerSelect, the CogVideoX sampler):
validation, the guidance session (ExitStack, out-of-memory message, RunRecord, per-step callback), and
`GuidedSampler`, the KSAMPLER function that runs `guidance_core.sample` inside ComfyUI's own sampling path
(CFGGuider -> KSAMPLER), so model patches, LoRAs, hooks and wrappers apply to every model call."""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

import comfy.model_management as model_management
import comfy.samplers
import comfy.sd
from ..comfy_v3 import io

from .. import guidance_core as core
from ..guidance_core import video_frames
from ..guidance_core.inference_tensors import InferenceTensorClones
from ..guidance_core.report import RunRecord, format_report, peak_memory
from ..guidance_core.validation import (SENT_VALUES, Widget, check_widgets, in_place_backprop_message,
                                        is_in_place_backprop_error, is_out_of_memory, out_of_memory_message)
from ..guidance_core.run_config import (GuessSpec, GuidanceSettings, MethodSpec, check_method, check_run,
                                        guess_and_method, guidance_seed)
from ..objectives.combination import ObjectiveSet
from . import comfy_model, native_video
from .sockets import LOG, guidance_inputs

MAX_SCHEDULE_STEPS = 10000  # the 'steps' widget's maximum; a denoise schedule may not be longer either


def core_widget(widget: io.Input) -> Widget:
    """The widget as guidance_core.validation checks it (named as the UI shows it)."""
    kind = {io.Boolean.Input: "bool", io.Int.Input: "int", io.Float.Input: "float"}.get(type(widget), "other")
    return Widget(widget.display_name or widget.id, kind, getattr(widget, "min", None), getattr(widget, "max", None))


def checked_inputs(node: type[io.ComfyNode], values: dict) -> dict:
    """`values` of `node`'s widgets checked, each as the API sent it where known (ComfyUI converts in place before
    a node runs: bool("false") is True, int(6.7) is 6; the on-prompt handler kept the sent ones in SENT_VALUES)."""
    hidden = getattr(node, "hidden", None)
    sent = SENT_VALUES.of_node(getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None))
    widgets = {widget.id: core_widget(widget) for widget in node.define_schema().inputs}
    return {**values, **check_widgets(widgets, values, sent)}


def validated_inputs(objective, guess, method, widgets: Mapping[str, Any], **replaced
                     ) -> tuple[ObjectiveSet, GuessSpec, MethodSpec, GuidanceSettings]:
    """The one validation layer of every sampler node: the TITAN_OBJECTIVE / TITAN_GUESS / TITAN_METHOD values
    (defaults for unconnected ones) and the `guidance_inputs()` widgets as GuidanceSettings, checked against each
    other. `replaced`: widget values a node decides itself (the CogVideoX scheduler's step and eta).
    Checks that need the latent and the schedule follow in `run_config.check_run`."""
    if not isinstance(objective, ObjectiveSet):
        raise ValueError(f"'objective' must come from a TITAN-Guide objective node, got {type(objective).__name__}")
    guess, method = guess_and_method(guess, method)
    values = {**widgets, **replaced}
    settings = GuidanceSettings.from_widgets({w.id: core_widget(w).check(values[w.id]) for w in guidance_inputs()})
    check_method(settings, objective, method)
    return objective, guess, method, settings


@contextlib.contextmanager
def guidance_session(record: RunRecord, device: torch.device, clones: InferenceTensorClones,
                     forward_ad_scope: Callable[[], contextlib.AbstractContextManager], what: str,
                     progress: Callable[[dict], None] | None = None) -> Iterator[Callable[[dict], None]]:
    """Around `guidance_core.sample`: inference mode off, `forward_ad_scope` in every forward-mode pass, inference-
    tensor clones, warnings gathered; out of memory becomes a message naming the knobs; the record gets time, peak
    memory and warnings. Yields the per-step callback: clones dropped, ComfyUI's interrupt, then `progress`."""
    def step_callback(info: dict) -> None:
        clones.clear()  # the step's backward passes are done
        model_management.throw_exception_if_processing_interrupted()
        if progress is not None:
            progress(info)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    LOG.info("TITAN-Guide: guided sampling started (%s, %s)", record.method, what)
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.callback(core.register_attention_context(forward_ad_scope))
            stack.enter_context(clones.scope())  # for the few operations outside the wrappers
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            try:
                yield step_callback
            finally:
                record.warnings = [str(w.message) for w in caught]
    except BaseException as error:  # warnings so far go to the log (also on Cancel: 0.33's interrupt is a
        # BaseException) and, for out of memory, into the message
        for message in dict.fromkeys(record.warnings):
            LOG.warning("TITAN-Guide (before the error): %s", message)
        if is_out_of_memory(error):  # a CUDA OutOfMemoryError or a failed CPU allocation: one message, one type
            raise torch.OutOfMemoryError(out_of_memory_message(record.method, what, error, record.warnings)) from error
        if is_in_place_backprop_error(error):
            raise RuntimeError(in_place_backprop_message(record.method, error)) from error
        raise
    finally:
        clones.clear()
    record.seconds = time.perf_counter() - started
    record.peak_memory_bytes, record.memory_source = peak_memory(device)
    for message in record.warnings:
        LOG.warning("TITAN-Guide: %s", message)
    LOG.info("TITAN-Guide run finished:\n%s", format_report(record))


class GuidedSampler:
    """A guided sampling configuration; `ksampler()` gives the SAMPLER that runs it inside ComfyUI and `record`
    holds the last run's RunRecord."""

    def __init__(self, widgets: Mapping[str, Any], objective, vae: comfy.sd.VAE, guess=None, method=None,
                 seed: int | None = None):
        self.objective, self.guess, self.method, self.settings = validated_inputs(objective, guess, method, widgets)
        if vae is None or getattr(vae, "first_stage_model", None) is None:
            raise ValueError("the VAE input is missing or invalid (a checkpoint without a VAE?); connect a VAE")
        self.vae, self.seed = vae, seed
        self.record = RunRecord()

    def ksampler(self) -> comfy.samplers.KSAMPLER:
        """A KSAMPLER whose sampler function is this run."""
        return comfy.samplers.KSAMPLER(self.sample)

    def comfy_models(self) -> list[tuple[str, Any]]:
        """(role, ModelPatcher) of the models guidance adds to sampling: the VAE and the objectives' networks
        (TitanGuideSampler makes them additional models of the diffusion model, loaded and planned with it)."""
        return [("VAE", self.vae.patcher)] + self.objective.comfy_patchers()

    def validate(self, shape: Sequence[int], steps: int,
                 model_sampling: comfy_model.ModelSampling | None = None) -> tuple[core.Layout, int]:
        """Check everything that depends on the latent and the schedule; returns (layout, frames)."""
        self.run_guess, decoded = self.guess, None
        if len(shape) == 5:  # a native video model (Wan, ...): nodes/native_video.py
            time = native_video.causal_time(self.vae, shape)
            layout, frames = video_frames.video_layout(shape, self.settings.frames_per_video)
            self.run_guess, decoded = video_frames.latent_guess(self.guess, time, frames), time.decoded_frames
        else:
            layout, frames = core.Layout.of_frame_batch(shape, self.settings.frames_per_video)
        check_run(self.settings, self.objective, self.run_guess, self.method, steps, frames, decoded_frames=decoded)
        if model_sampling is not None and comfy_model.is_flow(model_sampling) and self.settings.eta:
            raise ValueError("eta > 0 (stochastic steps) is not available for flow-matching models; set eta to 0")
        return layout, frames

    def sample(self, model, x: torch.Tensor, sigmas: torch.Tensor, extra_args=None, callback=None, disable=None):
        """KSAMPLER sampler function: guided sampling of `x` (noise at sigmas[0]) down `sigmas`."""
        extra_args = {} if extra_args is None else extra_args
        guider = model.inner_model
        base_model = guider.inner_model
        steps = len(sigmas) - 1
        # LTX-2: ComfyUI packs its video and audio latents into one x and records their shapes on the model
        part = core.packed.video_part(getattr(base_model, "latent_shapes", None))
        shape = x.shape if part.whole else part.shape
        layout, frames = self.validate(shape, steps, base_model.model_sampling)
        seed = self.seed if self.seed is not None else int(extra_args.get("seed") or 0)
        s = self.settings
        record = self.record = RunRecord.of_run(self.objective, self.guess, self.method, layout.samples, frames,
                                                 steps)
        if steps < 1:
            return x

        decoded_rows = layout.samples * min(s.decode_chunk_frames, frames) if s.decode_chunk_frames else shape[0]
        decode_memory = self.vae.memory_used_decode((decoded_rows, *shape[1:]), self.vae.vae_dtype)
        run_models, loaded_late = comfy_model.load_run_models(guider, self.comfy_models(), self.vae, decode_memory)
        self.objective.to(self.vae.device, x.device)
        record.loaded_models = comfy_model.describe_loaded_models(run_models, loaded_late)
        clones = InferenceTensorClones()
        video = len(shape) == 5
        denoiser = comfy_model.ComfyDenoiser(model, extra_args, clones, base_model.model_sampling,
                                             native_video.model_call_scope(base_model) if video else
                                             contextlib.nullcontext)
        if video:
            loss = native_video.video_loss(self.vae, base_model, self.objective,
                                           native_video.causal_time(self.vae, shape), clones)
        else:
            loss = core.DecodedLoss(comfy_model.vae_decoder(self.vae, base_model, clones), self.objective, layout,
                                    s.decode_chunk_frames, self.method.checkpointed,
                                    latent_out=base_model.process_latent_out, scope=clones.scope)
        method = self.method.build(s, self.run_guess.build(), x.is_cuda and part.whole and core.cuda_graph_requested())
        routes = core.attention_routes()
        generator = torch.Generator(device="cpu").manual_seed(guidance_seed(seed))
        with guidance_session(record, x.device, clones, denoiser.forward_ad_scope,
                              f"{steps} step(s), {layout.samples} video(s) x {frames} frame(s)", callback) as step_callback:
            (loss if video else self.objective).prepare(frames)  # constant targets, once before any JVP
            with native_video.vae_attention_scope(self.vae) if video else \
                    comfy_model.vae_forward_ad_attention(self.vae.first_stage_model), \
                    native_video.differentiable_ops() if video else contextlib.nullcontext(), \
                    native_video.module_moves_skipped(base_model.diffusion_model, x.device), \
                    core.profiling.profiled_if_requested():
                record.decode_chunk = native_video.plan_decode(loss, self.vae, part.get(x), s.decode_chunk_frames) \
                    if video else loss.plan_chunk(x, frames, s.decode_chunk_frames)
                result = core.sample(denoiser, x.clone(), sigmas.clone(), method, loss=loss, layout=layout,
                                     step=s.sampler, eta=s.eta, generator=generator, part=part,
                                     latent_scale=comfy_model.latent_scale_of(base_model.model_sampling),
                                     callback=step_callback)
            record.model_calls, record.forward_ad = denoiser.calls, core.forward_ad_line(routes, method)
            record.reports = result.reports
        return result.x
