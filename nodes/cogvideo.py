"""TITAN-Guide for CogVideoX graphs built with kijai's ComfyUI-CogVideoXWrapper.

ComfyUI has no native CogVideoX; the wrapper's loaders return COGVIDEOMODEL (a dict holding its diffusers
CogVideoXPipeline) and its sampler runs its own diffusers loop. `TitanGuideCogVideoSampler` takes the same
inputs as the wrapper's CogVideoSampler plus a VAE and the TITAN-Guide knobs, runs guidance_core's loop over
the pipeline's transformer (v-prediction, classifier-free guidance) with the chosen diffusers scheduler's own
noise levels (integrations.cogvideox), decodes the look-ahead estimate with the CogVideoX VAE inside the
objective, and returns the wrapper's latent dict, so CogVideoDecode works downstream.
"""

from __future__ import annotations

import contextlib
import importlib
import time
import warnings

import torch

import comfy.model_management as model_management
import comfy.utils
from comfy_api.latest import io

from . import glue
from .. import guidance_core as core
from ..integrations import cogvideox as cx
from ..objectives.base import forward_ad_safe_attention

CogVideoModel = io.Custom("COGVIDEOMODEL")

# Decided by the scheduler choice (sampler, eta) or by the wrapper's latent layout (frames_per_video);
# decode_chunk_frames gets a CogVideoX-specific meaning below.
_REPLACED_KNOBS = ("sampler", "eta", "frames_per_video", "decode_chunk_frames")


def guidance_knob_inputs() -> list:
    """The shared TITAN-Guide knobs (glue.guidance_inputs) as they apply to CogVideoX."""
    inputs = [knob for knob in glue.guidance_inputs() if knob.id not in _REPLACED_KNOBS]
    inputs.append(io.Int.Input(
        "decode_chunk_frames", default=0, min=0, max=4096,
        tooltip="Latent frames per call of the CogVideoX VAE decoder inside the objective. 0 = the VAE's own "
                "default (2), which decodes exactly like CogVideoDecode and needs the least memory. The causal "
                "convolutions carry their context between calls, but the VAE's GroupNorms normalise over the "
                "frames of one call, so other values decode differently from CogVideoDecode. Must be even or "
                "cover all frames."))
    return inputs


def pipeline_parts(model) -> tuple:
    """(pipe, transformer, dtype, scheduler_config) of a COGVIDEOMODEL, with clear errors for what is not supported."""
    if not isinstance(model, dict) or "pipe" not in model or "scheduler_config" not in model:
        raise ValueError("'model' must come from a CogVideoX loader of ComfyUI-CogVideoXWrapper (a COGVIDEOMODEL dict "
                         f"with 'pipe' and 'scheduler_config'), got {type(model).__name__}")
    pipe = model["pipe"]
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ValueError("the COGVIDEOMODEL's pipeline has no transformer")
    quantization = str(model.get("quantization", "disabled"))
    if quantization != "disabled":
        raise ValueError(f"the guided CogVideoX sampler needs an unquantized transformer (bf16 / fp16 / fp32), but this "
                         f"model is loaded with quantization {quantization!r}; reload it with quantization 'disabled'")
    config = transformer.config
    if config.in_channels != config.out_channels or getattr(config, "ofs_embed_dim", None):
        raise ValueError(f"this CogVideoX transformer takes {config.in_channels} input channels for "
                         f"{config.out_channels} output channels: an image-to-video, Fun or interpolation model. "
                         "The guided sampler supports text-to-video models (and video-to-video via 'samples')")
    dtype = model.get("dtype") or next(transformer.parameters()).dtype
    return pipe, transformer, dtype, model["scheduler_config"]


def video_size(samples, transformer) -> tuple[int, int, torch.Tensor | None]:
    """(height, width, init latents or None) from the optional samples input, as CogVideoSampler reads them."""
    if samples is None:
        # CogVideoSampler needs samples for the size; without them, use the model's native resolution
        return int(transformer.config.sample_height) * 8, int(transformer.config.sample_width) * 8, None
    latents = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(latents, torch.Tensor) or latents.dim() not in (4, 5):
        raise ValueError("'samples' must be a LATENT: an empty latent (B, C, h, w) that sets the size, or CogVideoX "
                         "latents (B, frames, C, h, w) for video-to-video")
    if latents.dim() == 4:
        return latents.shape[-2] * 8, latents.shape[-1] * 8, None
    return latents.shape[-2] * 8, latents.shape[-1] * 8, latents


def disable_wrapper_enhance(transformer) -> None:
    """Switch off the wrapper's Enhance-A-Video global, which a previous CogVideoSampler run may have left on."""
    package = getattr(importlib.import_module(type(transformer).__module__), "__package__", None)
    if not package:
        return
    try:
        flags = importlib.import_module(f"{package}.enhance_a_video.globals")
    except ImportError:
        return  # diffusers' own transformer: no such global
    if callable(getattr(flags, "disable_enhance", None)):
        flags.disable_enhance()


class CogVideoXLoss:
    """latent x0 (B, F, C, h, w) -> per-video (B,) or per-latent-frame (B, F) objective values.

    Pixel objectives see the CogVideoX VAE decode (B, T, 3, H, W); latent objectives see x0 divided by the VAE
    scaling factor (the raw VAE latent). Per-frame pixel losses are assigned to the latent frames that produced
    their frames (integrations.cogvideox.CogVideoXDecoder.latent_frame_losses).
    """

    def __init__(self, objective: glue.ObjectiveSet, decoder: cx.CogVideoXDecoder,
                 clones: glue.InferenceTensorClones):
        self.decoder, self.clones = decoder, clones
        pixel_specs = tuple(s for s in objective.specs if s.input_space != "latent")
        latent_specs = tuple(s for s in objective.specs if s.input_space == "latent")
        self.pixel = glue.ObjectiveSet(pixel_specs) if pixel_specs else None
        self.latent = glue.ObjectiveSet(latent_specs) if latent_specs else None

    def __call__(self, x0: torch.Tensor, frame_indices: torch.Tensor | None = None,
                 per_frame: bool = False) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        with self.clones.scope():  # the VAE's weights are inference tensors; backprop needs normal clones
            return self._losses(x0, frame_indices, per_frame)

    def _losses(self, x0: torch.Tensor, frame_indices: torch.Tensor | None, per_frame: bool) -> torch.Tensor:
        total = None
        if self.pixel is not None:
            if frame_indices is None:
                pixels, pixel_indices = self.decoder(x0), None
            else:
                pixels, pixel_indices = self.decode_subset(x0, frame_indices)
            term = self.pixel.loss(pixels, None, per_frame=per_frame, frame_indices=pixel_indices)
            total = self.decoder.latent_frame_losses(term, x0.shape[1]) if per_frame else term
        if self.latent is not None:
            term = self.latent.loss(None, x0 / self.decoder.scaling_factor, per_frame=per_frame,
                                    frame_indices=frame_indices)
            total = term if total is None else total + term.to(total)
        return total

    def decode_subset(self, x0: torch.Tensor, frame_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the latent frames `frame_indices` of a video on their own; (pixels, their full-video indices)."""
        skip = self.decoder.skip
        keep = frame_indices >= skip  # CogVideoX 1.5 padding frames are never decoded
        if not bool(keep.any()):
            raise ValueError("the sampled-gradient frames are all padding frames; sample more frames")
        subset = cx.CogVideoXDecoder(self.decoder.vae, self.decoder.chunk, 0)
        pixels = subset(x0[:, keep.to(x0.device)])
        return pixels, subset.decoded_frame_indices(frame_indices[keep] - skip, pixels.shape[1])


class CountingVelocity:
    """The velocity model with an interrupt check before every call and a call counter for the report.

    Calls run inside the clones scope: the wrapper loads weights under ComfyUI's inference mode, and the
    backprop baselines (and checkpoint recomputation in backward) need normal clones of them.
    """

    def __init__(self, velocity: cx.CogVideoXVelocity, clones: glue.InferenceTensorClones):
        self.velocity, self.clones, self.calls = velocity, clones, 0

    def __call__(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        self.calls += 1
        with self.clones.scope():
            return self.velocity(z, timestep)


def forward_ad_scope_factory(transformer):
    """Factory for guidance_core.register_attention_context: SDPA attention inside every forward-mode pass."""
    @contextlib.contextmanager
    def scope():
        with cx.torch_attention_functions(transformer), forward_ad_safe_attention():
            yield
    return scope


def validate_run(settings: glue.GuidanceSettings, objective: glue.ObjectiveSet, guess: glue.GuessSpec,
                 method: glue.MethodSpec, schedule: cx.CogVideoXSchedule, latent_frames: int, padding: int,
                 decoder: cx.CogVideoXDecoder) -> None:
    """Everything that depends on the schedule and the latent size, checked before any model call."""
    objective.check_inputs()
    steps = len(schedule.sigmas) - 1
    if method.uses_lookahead and settings.lookahead > max(steps - 1, 0):
        raise ValueError(f"look-ahead of {settings.lookahead} steps exceeds the {max(steps - 1, 0)} steps after the "
                         f"first of {steps}; use at most {max(steps - 1, 0)}, or -1 for all remaining steps")
    if settings.per_frame and not objective.has_frame_losses:
        names = [s.name for s in objective.specs if not s.has_frame_losses]
        raise ValueError(f"per-frame derivatives need per-frame losses, which {', '.join(names)} does not have "
                         "(e.g. the colour objective in 'video' mode); turn 'per_frame' off")
    if method.kind == "doodl" and (schedule.eta or schedule.step not in ("euler", "ddim")):
        raise ValueError("DOODL inverts deterministic steps: pick a deterministic scheduler (CogVideoXDDIM, DDIM, "
                         "Euler or a multistep solver), not an ancestral one or Heun")
    decoded = latent_frames - padding
    cx.check_decode_chunk(settings.decode_chunk_frames, decoded)
    pixel_frames = 1 + decoder.time_ratio * (decoded - 1) if decoded % 2 else decoder.time_ratio * decoded
    if pixel_frames < objective.min_frames:
        raise ValueError(f"the objective needs videos of at least {objective.min_frames} frames, but the decode has "
                         f"{pixel_frames}; raise num_frames")
    if method.uses_guess:
        guess.check_frames(latent_frames)
        if guess.samples_frames:
            sampled = guess.sampled_frame_count(latent_frames)
            sampled_pixels = 1 + decoder.time_ratio * (sampled - 1) if sampled % 2 else decoder.time_ratio * sampled
            if sampled_pixels < objective.min_frames:
                raise ValueError(f"the sampled-gradient guess decodes {sampled} latent frame(s) to {sampled_pixels} "
                                 f"frame(s), but the objective needs at least {objective.min_frames}; raise "
                                 "'sampled frames'")
    return pixel_frames


class TitanGuideCogVideoSampler(io.ComfyNode):
    """CogVideoSampler with TITAN-Guide: guided text-to-video (and video-to-video) sampling of CogVideoX."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TitanGuideCogVideoSampler",
            display_name="TITAN-Guide CogVideoX Sampler",
            category=glue.CATEGORY,
            description=(
                "Samples a CogVideoX model from ComfyUI-CogVideoXWrapper like CogVideoSampler (same noise, "
                "timesteps and cfg) and, at the guided steps, moves the latent along a forward gradient of the "
                "objective measured on the VAE-decoded look-ahead estimate. Unguided, CogVideoXDDIM, DDIM, Euler, "
                "Euler A and Heun take diffusers' own steps (DDIM-type ones exactly when steps divides 1000, e.g. "
                "50); the multistep solvers take first-order steps on their own noise levels. Its output goes to "
                "CogVideoDecode."),
            inputs=[
                CogVideoModel.Input("model", tooltip="COGVIDEOMODEL from a CogVideoX loader (text-to-video model, "
                                                     "quantization disabled)."),
                io.Vae.Input("vae", tooltip="The CogVideoX VAE (from the same loader or CogVideoX VAE Loader); it "
                                            "decodes the look-ahead estimate for the objective."),
                io.Conditioning.Input("positive", tooltip="Text embeds from CogVideoTextEncode."),
                io.Conditioning.Input("negative", tooltip="Negative text embeds from CogVideoTextEncode (shorter ones "
                                                          "are zero-padded, as CogVideoSampler does)."),
                glue.TitanObjective.Input("objective", tooltip="What to minimise (TITAN-Guide objective nodes)."),
                io.Int.Input("num_frames", default=49, min=1, max=1024,
                             tooltip="Video frames; the latent has (num_frames - 1) // 4 + 1 frames."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Number of sampler steps."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=30.0, step=0.01,
                               tooltip="Classifier-free guidance scale (<= 1: positive prompt only)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (the same noise as CogVideoSampler) and, continuing "
                                     "the same stream, of ancestral steps and random tangents."),
                io.Combo.Input("scheduler", options=list(cx.SCHEDULER_NAMES), default=cx.DEFAULT_SCHEDULER,
                               tooltip="The wrapper's scheduler choices (LCM excluded). Its alphas_cumprod and "
                                       "timesteps are used as diffusers sets them; CogVideoXDDIM, DDIM, Euler, Euler A "
                                       "and Heun step exactly as diffusers; DPM++, UniPC, DEIS, SA-Solver and PNDM "
                                       "take first-order DDIM steps on their noise levels; CogVideoXDPMScheduler takes "
                                       "its first-order stochastic step with the wrapper's dynamic cfg."),
                *guidance_knob_inputs(),
                io.Latent.Input("samples", optional=True,
                                tooltip="As CogVideoSampler: an empty latent (e.g. EmptyLatentImage) sets width and "
                                        "height; CogVideoX latents (B, frames, C, h, w) are the video-to-video input. "
                                        "Not connected: the model's native resolution."),
                io.Float.Input("denoise_strength", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Video-to-video only: the fraction of the steps to run on the noised input "
                                       "latents. At 1 the input latents are used as the initial noise, as "
                                       "CogVideoSampler does."),
                glue.TitanGuess.Input("guess", optional=True,
                                      tooltip="Gradient guess V (TITAN Gradient Guess node); default: random "
                                              "Gaussian, one tangent."),
                glue.TitanMethod.Input("method", optional=True,
                                       tooltip="Guidance method (TITAN Guidance Method node); default: titan."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="samples",
                                 tooltip="CogVideoX latents in the wrapper's layout, for CogVideoDecode."),
                io.String.Output("report", tooltip="Per guided step: loss, |G| and look-ahead; totals: time and peak "
                                                   "memory (and what was measured)."),
                io.Image.Output("loss_plot", tooltip="Plot of the loss at each guided step."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, negative, objective, num_frames, steps, cfg, seed, scheduler,
                samples=None, denoise_strength=1.0, guess=None, method=None, **knobs) -> io.NodeOutput:
        if not isinstance(objective, glue.ObjectiveSet):
            raise ValueError(f"'objective' must come from a TITAN-Guide objective node, got {type(objective).__name__}")
        guess = guess if guess is not None else glue.GuessSpec()
        method = method if method is not None else glue.MethodSpec()
        pipe, transformer, dtype, scheduler_config = pipeline_parts(model)
        height, width, init = video_size(samples, transformer)
        positive, negative = cx.check_text_embeds(positive, negative)
        shape, padding = cx.latent_shape(positive.shape[0], num_frames, height, width,
                                         channels=transformer.config.in_channels,
                                         patch_size_t=getattr(transformer.config, "patch_size_t", None))
        strength = float(denoise_strength) if init is not None else 1.0
        schedule = cx.build_schedule(scheduler, scheduler_config, int(steps), strength)
        settings = glue.settings_from_inputs({**knobs, "sampler": schedule.step, "eta": schedule.eta,
                                              "frames_per_video": 0})
        decoder = cx.CogVideoXDecoder(vae, settings.decode_chunk_frames, padding)
        pixel_frames = validate_run(settings, objective, guess, method, schedule, shape[1], padding, decoder)
        if init is not None and tuple(init.shape) != tuple(shape):
            raise ValueError(f"the input samples have shape {tuple(init.shape)} but num_frames={num_frames} at "
                             f"{width}x{height} needs {tuple(shape)}; set num_frames to match the input video")

        model_management.unload_all_models()
        model_management.soft_empty_cache()
        device = model_management.get_torch_device()
        offload_device = model_management.unet_offload_device()
        manual_offloading = not model.get("cpu_offloading", False) and model.get("manual_offloading", True)
        if manual_offloading:
            transformer.to(device)
        uses_pixels = "pixels" in objective.spaces
        if uses_pixels:
            vae.to(device)
        objective.to(device, device)
        with torch.inference_mode(False):  # as the guided loop: its constants must not be inference tensors
            objective.prepare(pixel_frames)  # constant targets (ImageBind's audio), once, before any JVP
        cx.reset_wrapper_state(transformer)
        disable_wrapper_enhance(transformer)

        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device, torch.float32)
        x = cx.initial_latent(noise, schedule, None if init is None else init.to(device, torch.float32), strength)
        rotary = (pipe._prepare_rotary_positional_embeddings(height, width, shape[1], device)
                  if transformer.config.use_rotary_positional_embeddings else None)
        clones = glue.InferenceTensorClones()
        velocity = CountingVelocity(cx.CogVideoXVelocity(
            transformer, positive.to(device), negative.to(device), cfg, image_rotary_emb=rotary,
            dynamic_cfg=schedule.dynamic_cfg, steps=int(steps), dtype=dtype), clones)
        denoiser = core.VDenoiser(velocity, schedule.alphas_cumprod)
        loss = CogVideoXLoss(objective, decoder, clones)
        layout = core.Layout(samples=shape[0], frame_dim=1)
        guided = method.build(settings, guess.build())
        record = glue.RunRecord(method=method.describe(), guess=guess.describe() if method.uses_guess else "",
                                objective=objective.describe(), videos=shape[0], frames=shape[1],
                                steps=len(schedule.sigmas) - 1)
        progress = comfy.utils.ProgressBar(len(schedule.sigmas) - 1)

        def step_callback(info: dict) -> None:
            clones.clear()  # the step's backward passes are done
            model_management.throw_exception_if_processing_interrupted()
            progress.update(1)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        glue.LOG.info("TITAN-Guide CogVideoX: %s, scheduler %s (%s), %d step(s), latent %s",
                      record.method, scheduler, cx.WRAPPER_SCHEDULERS[scheduler].note, record.steps, tuple(shape))
        started = time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.inference_mode(False))
                stack.callback(core.register_attention_context(forward_ad_scope_factory(transformer)))
                stack.enter_context(clones.scope())  # for the few operations outside the wrappers
                caught = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("always")
                # ancestral noise continues the initial noise's stream, as the wrapper's sampler draws it;
                # guidance draws (tangents, frame choices) come from their own stream and do not shift it
                result = core.sample(denoiser, x, schedule.sigmas.to(device), guided, loss=loss, layout=layout,
                                     step=schedule.step, eta=schedule.eta, noise_generator=generator,
                                     generator=torch.Generator(device="cpu").manual_seed(glue.guidance_seed(seed)),
                                     callback=step_callback)
                record.warnings = [str(w.message) for w in caught]
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(
                f"out of memory during TITAN-Guide CogVideoX guidance ({record.method}, latent {tuple(shape)}): "
                f"{error}. To lower memory: " + "; ".join(glue.MEMORY_KNOBS) + ".") from error
        finally:
            clones.clear()
            if manual_offloading:
                transformer.to(offload_device)
            if uses_pixels:
                vae.to(offload_device)
            model_management.soft_empty_cache()
        record.seconds = time.perf_counter() - started
        record.model_calls = velocity.calls
        record.reports = result.reports
        record.peak_memory_bytes, record.memory_source = glue.peak_memory(device)
        for message in record.warnings:
            glue.LOG.warning("TITAN-Guide: %s", message)
        report = glue.format_report(record)
        glue.LOG.info("TITAN-Guide CogVideoX run finished:\n%s", report)
        latents = {"samples": result.x.to(dtype), "additional_frames": padding}
        return io.NodeOutput(latents, report, glue.plot_losses(record))


NODE_CLASSES = [TitanGuideCogVideoSampler]
