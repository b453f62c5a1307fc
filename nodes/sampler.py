"""TITAN-Guide sampler nodes: a KSampler-like guided sampler and a SAMPLER for SamplerCustomAdvanced."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from ..comfy_v3 import io

from ..guidance_core.report import format_report, plot_losses
from ..guidance_core.validation import denoise_schedule_length
from .comfy_model import resident_clone, resident_vae
from .run_harness import MAX_SCHEDULE_STEPS, GuidedSampler, checked_inputs
from .sockets import (ADDITIONAL_MODELS_KEY, SENT_VALUE_INPUTS, TitanObjective, guess_and_method_inputs,
                      guidance_inputs, node_schema, report_outputs)


def _schedule_sigmas(model, scheduler: str, steps: int, denoise: float):
    """Sigmas as KSampler computes them (denoise < 1 keeps the last `steps` of a longer schedule), refusing a
    schedule longer than MAX_SCHEDULE_STEPS (KSampler would build millions of steps for a tiny denoise)."""
    model_sampling = model.get_model_object("model_sampling")
    if denoise >= 0.9999:
        return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()
    total = denoise_schedule_length(steps, denoise, MAX_SCHEDULE_STEPS)
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, total).cpu()[-(steps + 1):]


class TitanGuideSampler(io.ComfyNode):
    """Samples like KSampler through ComfyUI's own sampling path (model patches, LoRAs and wrappers such as AnimateDiff
    apply) and, at the guided steps, moves the latent along a forward gradient of the objective measured on the
    decoded look-ahead estimate."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN-Guide Sampler", hidden=SENT_VALUE_INPUTS, inputs=[
                io.Model.Input("model", tooltip="The diffusion model (cloned; the input model is not changed)."),
                io.Conditioning.Input("positive", tooltip="Conditioning describing what to include."),
                io.Conditioning.Input("negative", tooltip="Conditioning describing what to exclude."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (frames of a video sit in the batch)."),
                io.Vae.Input("vae", tooltip="VAE that decodes the look-ahead estimate for the objective."),
                TitanObjective.Input("objective", tooltip="What to minimise (TITAN-Guide objective nodes)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (as KSampler) and, derived from it, of every random "
                                     "tangent and stochastic step of the guidance."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Number of sampler steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (1 = one model evaluation per call)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                               tooltip="ComfyUI noise schedule (comfy.samplers.calculate_sigmas)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run, as in KSampler (1 = from pure noise; "
                                       "0 returns the input latent)."),
                *guidance_inputs(),
                *guess_and_method_inputs(),
            ],
            outputs=[
                io.Latent.Output("latent", tooltip="The guided, denoised latent."),
                *report_outputs(),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, vae, objective, seed, steps, cfg, scheduler, denoise,
                guess=None, method=None, **knobs) -> io.NodeOutput:
        knobs = checked_inputs(cls, dict(knobs, seed=seed, steps=steps, cfg=cfg, denoise=denoise))
        seed, steps, cfg, denoise = knobs["seed"], knobs["steps"], knobs["cfg"], knobs["denoise"]
        run = GuidedSampler(knobs, objective, resident_vae(vae), guess, method, seed=seed)
        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        if denoise == 0.0:  # as the tooltip says (KSampler would divide by it)
            latent["samples"] = samples
            return io.NodeOutput(latent, "denoise is 0: the latent was returned unchanged",
                                 plot_losses(run.record))
        sigmas = _schedule_sigmas(model, scheduler, steps, denoise)
        run.validate(samples.shape, len(sigmas) - 1, model.get_model_object("model_sampling"))
        noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
        diffusion_model = resident_clone(model)
        # The VAE and the objectives' networks run at every guided step: as additional models of the diffusion
        # model, ComfyUI's prepare_sampling loads them in one load_models_gpu call with it and plans memory for all.
        diffusion_model.set_additional_models(ADDITIONAL_MODELS_KEY, [p for _, p in run.comfy_models()])
        guider = comfy.samplers.CFGGuider(diffusion_model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        callback = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1)
        out = guider.sample(noise, samples, run.ksampler(), sigmas, denoise_mask=latent_image.get("noise_mask"),
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        latent["samples"] = out.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(latent, format_report(run.record), plot_losses(run.record))


class TitanGuideSamplerSelect(io.ComfyNode):
    """A SAMPLER that runs TITAN-Guide inside SamplerCustomAdvanced, so it composes with any GUIDER, SIGMAS and NOISE.
    Guidance randomness is seeded from the NOISE seed. The report goes to the server log (this node's outputs exist
    before sampling runs)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN-Guide Sampler (SAMPLER)", hidden=SENT_VALUE_INPUTS, inputs=[
                TitanObjective.Input("objective", tooltip="What to minimise (TITAN-Guide objective nodes)."),
                io.Vae.Input("vae", tooltip="VAE that decodes the look-ahead estimate for the objective."),
                *guidance_inputs(),
                *guess_and_method_inputs(),
            ],
            outputs=[io.Sampler.Output("titan_sampler", display_name="sampler",
                                       tooltip="Connect to SamplerCustomAdvanced's sampler input.")],
        )

    @classmethod
    def execute(cls, objective, vae, guess=None, method=None, **knobs) -> io.NodeOutput:
        run = GuidedSampler(checked_inputs(cls, knobs), objective, resident_vae(vae), guess, method)
        return io.NodeOutput(run.ksampler())


NODE_CLASSES = [TitanGuideSampler, TitanGuideSamplerSelect]
