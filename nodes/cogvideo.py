"""TITAN-Guide for CogVideoX graphs of kijai's ComfyUI-CogVideoXWrapper (COGVIDEOMODEL: its diffusers pipeline).

`TitanGuideCogVideoSampler` takes CogVideoSampler's inputs plus a VAE and the TITAN-Guide knobs, runs
guidance_core's loop over the pipeline's transformer with the chosen scheduler's own noise levels
(integrations.cogvideox) and returns the wrapper's latent dict, so CogVideoDecode works downstream.
"""

from __future__ import annotations

import contextlib

import torch

import comfy.model_management as model_management
import comfy.utils
from ..comfy_v3 import io

from .. import guidance_core as core
from ..guidance_core.inference_tensors import InferenceTensorClones
from ..guidance_core.report import RunRecord, format_report, plot_losses
from ..guidance_core.run_config import check_run, guidance_seed
from ..integrations import cogvideox as cx
from ..objectives.base import forward_ad_safe_attention
from .run_harness import checked_inputs, guidance_session, validated_inputs
from .sockets import (SENT_VALUE_INPUTS, TitanObjective, guess_and_method_inputs, guidance_inputs, node_schema,
                      report_outputs)

CogVideoModel = io.Custom("COGVIDEOMODEL")

# Decided by the scheduler choice (sampler, eta) or by the wrapper's latent layout (frames_per_video);
# decode_chunk_frames gets a CogVideoX-specific meaning below.
_REPLACED_KNOBS = ("sampler", "eta", "frames_per_video", "decode_chunk_frames")


def guidance_knob_inputs() -> list:
    """The shared TITAN-Guide knobs (guidance_inputs) as they apply to CogVideoX."""
    inputs = [knob for knob in guidance_inputs() if knob.id not in _REPLACED_KNOBS]
    inputs.append(io.Int.Input(
        "decode_chunk_frames", default=0, min=0, max=4096,
        tooltip="Latent frames per call of the CogVideoX VAE decoder inside the objective. 0 = the VAE's own "
                "default (2), which decodes exactly like CogVideoDecode and needs the least memory. The causal "
                "convolutions carry their context between calls, but the VAE's GroupNorms normalise over the "
                "frames of one call, so other values decode differently from CogVideoDecode. Must be even or "
                "cover all frames."))
    return inputs


class WrapperVelocity:
    """The wrapper transformer's velocity, with ComfyUI's interrupt check before every call, a call counter, and the
    clones scope (weights loaded under inference mode; backprop baselines need normal clones). `forward_ad_scope`
    (entered in every forward-mode pass) routes the transformer's attention through torch's SDPA."""

    def __init__(self, velocity: cx.CogVideoXVelocity, transformer, clones: InferenceTensorClones):
        self.velocity, self.transformer, self.clones, self.calls = velocity, transformer, clones, 0

    def __call__(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        self.calls += 1
        with self.clones.scope():
            return self.velocity(z, timestep)

    @contextlib.contextmanager
    def forward_ad_scope(self):
        with cx.torch_attention_functions(self.transformer), forward_ad_safe_attention():
            yield


class TitanGuideCogVideoSampler(io.ComfyNode):
    """Samples a CogVideoX model from ComfyUI-CogVideoXWrapper like CogVideoSampler (same noise, timesteps and cfg) and,
    at the guided steps, moves the latent along a forward gradient of the objective measured on the VAE-decoded
    look-ahead estimate. Unguided, CogVideoXDDIM, DDIM, Euler, Euler A and Heun take diffusers' own steps (DDIM-type
    ones exactly when steps divides 1000, e.g. 50); the multistep solvers take first-order steps on their own noise
    levels. Its output goes to CogVideoDecode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN-Guide CogVideoX Sampler", hidden=SENT_VALUE_INPUTS, inputs=[
                CogVideoModel.Input("model", tooltip="COGVIDEOMODEL from a CogVideoX loader (text-to-video model, "
                                                     "quantization disabled)."),
                io.Vae.Input("vae", tooltip="The CogVideoX VAE (from the same loader or CogVideoX VAE Loader); it "
                                            "decodes the look-ahead estimate for the objective."),
                io.Conditioning.Input("positive", tooltip="Text embeds from CogVideoTextEncode."),
                io.Conditioning.Input("negative", tooltip="Negative text embeds from CogVideoTextEncode (shorter ones "
                                                          "are zero-padded, as CogVideoSampler does)."),
                TitanObjective.Input("objective", tooltip="What to minimise (TITAN-Guide objective nodes)."),
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
                *guess_and_method_inputs(),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="samples",
                                 tooltip="CogVideoX latents in the wrapper's layout, for CogVideoDecode."),
                *report_outputs(),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, negative, objective, samples=None, guess=None, method=None, **knobs):
        knobs = checked_inputs(cls, {"denoise_strength": 1.0, **knobs})  # every widget, as the API sent it
        num_frames, steps, cfg, seed, scheduler, denoise_strength = (knobs[k] for k in (
            "num_frames", "steps", "cfg", "seed", "scheduler", "denoise_strength"))
        pipe, transformer, dtype, scheduler_config = cx.pipeline_parts(model)
        height, width, init = cx.video_size(samples, transformer)
        positive, negative = cx.check_text_embeds(positive, negative)
        shape, padding = cx.latent_shape(positive.shape[0], num_frames, height, width,
                                         channels=transformer.config.in_channels,
                                         patch_size_t=getattr(transformer.config, "patch_size_t", None))
        strength = float(denoise_strength) if init is not None else 1.0
        schedule = cx.build_schedule(scheduler, scheduler_config, int(steps), strength)
        objective, guess, method, settings = validated_inputs(objective, guess, method, knobs, sampler=schedule.step,
                                                              eta=schedule.eta, frames_per_video=0)
        decoder = cx.CogVideoXDecoder(vae, settings.decode_chunk_frames, padding)
        cx.check_decode_chunk(settings.decode_chunk_frames, shape[1] - padding)
        pixel_frames = check_run(
            settings, objective, guess, method, len(schedule.sigmas) - 1, shape[1],
            # the whole latent includes CogVideoX 1.5's padding frames, which are not decoded
            decoded_frames=lambda n: cx.decoded_frames(n - padding if n == shape[1] else n, decoder.time_ratio),
            more_frames="raise num_frames", deterministic_hint="pick a deterministic scheduler (CogVideoXDDIM, DDIM, "
            "Euler or a multistep solver), not an ancestral one or Heun")
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
        x, generator, rotary = cx.wrapper_start(pipe, shape, int(seed), dtype, device, schedule, init, strength)
        clones = InferenceTensorClones()
        velocity = WrapperVelocity(cx.CogVideoXVelocity(
            transformer, positive.to(device), negative.to(device), cfg, image_rotary_emb=rotary,
            dynamic_cfg=schedule.dynamic_cfg, steps=int(steps), dtype=dtype), transformer, clones)
        denoiser = core.VDenoiser(velocity, schedule.alphas_cumprod)
        loss = cx.CogVideoXLoss(objective, decoder, model_management.throw_exception_if_processing_interrupted,
                                clones.scope)
        layout = core.Layout(samples=shape[0], frame_dim=1)
        guided = method.build(settings, guess.build())
        record = RunRecord.of_run(objective, guess, method, shape[0], shape[1], len(schedule.sigmas) - 1)
        progress = comfy.utils.ProgressBar(record.steps)
        what = (f"CogVideoX, scheduler {scheduler} ({cx.WRAPPER_SCHEDULERS[scheduler].note}), {record.steps} "
                f"step(s), latent {tuple(shape)}")
        try:
            with guidance_session(record, device, clones, velocity.forward_ad_scope, what,
                                  lambda info: progress.update(1)) as step_callback:
                # ancestral noise continues the initial noise's stream, as the wrapper's sampler draws it;
                # guidance draws (tangents, frame choices) come from their own stream and do not shift it
                result = core.sample(denoiser, x, schedule.sigmas.to(device), guided, loss=loss, layout=layout,
                                     step=schedule.step, eta=schedule.eta, noise_generator=generator,
                                     generator=torch.Generator(device="cpu").manual_seed(guidance_seed(seed)),
                                     callback=step_callback)
                record.model_calls = velocity.calls
                record.reports = result.reports
        finally:
            if manual_offloading:
                transformer.to(offload_device)
            if uses_pixels:
                vae.to(offload_device)
            model_management.soft_empty_cache()
        latents = {"samples": result.x.to(dtype), "additional_frames": padding}
        return io.NodeOutput(latents, format_report(record), plot_losses(record))


NODE_CLASSES = [TitanGuideCogVideoSampler]
