"""CogVideoX (diffusers / kijai's ComfyUI-CogVideoXWrapper) as a v-prediction model for guidance_core.

Latents follow the wrapper's layout: (B, F, C, h, w), already multiplied by the VAE's scaling factor, B samples
(guidance_core ``Layout(samples=B, frame_dim=1)``). The transformer predicts v in the variance-preserving
convention, so ``guidance_core.VDenoiser(CogVideoXVelocity(...), schedule.alphas_cumprod)`` is its k-diffusion
denoiser; ``CogVideoXDecoder`` is the differentiable causal 3-D VAE decode.

Schedulers: the wrapper lets the user pick a diffusers scheduler class. ``build_schedule`` takes that class's own
``alphas_cumprod`` and the timesteps its ``set_timesteps`` visits, and maps its update rule onto guidance_core's
steps (see ``WRAPPER_SCHEDULERS``). Timesteps, noise levels and the model calls are those of the wrapper; the
update is exact for the first-order schedulers (deterministic and ancestral) and Heun, and the first-order
(Euler / DDIM) integrator of the same noise levels for the higher-order multistep solvers. diffusers' DDIM-type
steps go from timestep t to t - 1000 // steps while the next step starts from the next listed ("trailing")
timestep; the two agree when steps divides 1000 (e.g. the default 50). Otherwise this module steps to the
listed timestep, one training timestep away from diffusers' intermediate target.

diffusers is imported only when a schedule is built (it is a dependency of the wrapper, not of this pack).
"""
from __future__ import annotations

import contextlib
import importlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Sequence

import torch
from torch import Tensor

# Zero-terminal-SNR tables (rescale_betas_zero_snr) end in alphas_cumprod = 0, an infinite k-diffusion sigma.
# Such entries are lifted to this value (sigma = 1e6): the first step then differs from diffusers' exact
# zero-SNR step by sqrt(1e-12) = 1e-6 relative, below float32 resolution of the latents.
MIN_ALPHAS_CUMPROD = 1e-12


@dataclass(frozen=True)
class SchedulerMapping:
    """How one of the wrapper's scheduler choices runs on guidance_core's steps."""

    diffusers_class: str
    step: str  # guidance_core step: "ddim" / "euler" (identical) or "heun"
    eta: float  # 0: deterministic; 1: ancestral (fresh noise each step)
    exact: bool  # True when the update equals diffusers' own step (up to float rounding)
    dynamic_cfg: bool = False  # the wrapper's pipeline rescales cfg per timestep for this scheduler
    note: str = ""


# The wrapper's scheduler names (nodes.py: scheduler_mapping), in its order, without LCMScheduler.
WRAPPER_SCHEDULERS: dict[str, SchedulerMapping] = {
    "DPM++": SchedulerMapping(
        "DPMSolverMultistepScheduler", "ddim", 0.0, False,
        note="DPM-Solver++ (2M, deterministic): first-order DDIM update on its timesteps and alphas"),
    "Euler": SchedulerMapping("EulerDiscreteScheduler", "euler", 0.0, True, note="Euler: exact"),
    "Euler A": SchedulerMapping(
        "EulerAncestralDiscreteScheduler", "euler", 1.0, True,
        note="Euler ancestral: exact, the step noise continues the seeded noise stream as in the wrapper"),
    "PNDM": SchedulerMapping(
        "PNDMScheduler", "ddim", 0.0, False,
        note="PNDM (Runge-Kutta warm-up + PLMS): first-order DDIM update on every noise level it visits"),
    "DDIM": SchedulerMapping("DDIMScheduler", "ddim", 0.0, True, note="DDIM (eta 0): exact"),
    "CogVideoXDDIM": SchedulerMapping("CogVideoXDDIMScheduler", "ddim", 0.0, True,
                                      note="CogVideoX DDIM (eta 0, SNR-shifted alphas): exact"),
    "CogVideoXDPMScheduler": SchedulerMapping(
        "CogVideoXDPMScheduler", "euler", 1.0, False, dynamic_cfg=True,
        note="CogVideoX DPM-Solver++ (2M SDE): its first-order SDE update (ancestral Euler, eta 1) "
             "without the second-order correction; the wrapper's per-timestep cfg rescaling is kept"),
    "SASolverScheduler": SchedulerMapping(
        "SASolverScheduler", "ddim", 0.0, False,
        note="SA-Solver (stochastic predictor-corrector): first-order deterministic DDIM update"),
    "UniPCMultistepScheduler": SchedulerMapping(
        "UniPCMultistepScheduler", "ddim", 0.0, False,
        note="UniPC (multistep predictor-corrector): first-order DDIM update on its timesteps and alphas"),
    "HeunDiscreteScheduler": SchedulerMapping(
        "HeunDiscreteScheduler", "heun", 0.0, True, note="Heun (2nd order): exact"),
    "DEISMultistepScheduler": SchedulerMapping(
        "DEISMultistepScheduler", "ddim", 0.0, False,
        note="DEIS (multistep): first-order DDIM update on its timesteps and alphas"),
}
SCHEDULER_NAMES = tuple(WRAPPER_SCHEDULERS)
DEFAULT_SCHEDULER = "CogVideoXDDIM"
UNSUPPORTED_SCHEDULERS = {
    "LCMScheduler": "LCM is a consistency-model sampler (it re-noises every x0 estimate completely) for "
                    "LCM-distilled weights, which CogVideoX does not have; pick CogVideoXDDIM or DDIM",
}


@dataclass(frozen=True)
class CogVideoXSchedule:
    """Noise levels of one sampling run in guidance_core's terms."""

    alphas_cumprod: Tensor  # float64 table of the chosen scheduler, zeros lifted to MIN_ALPHAS_CUMPROD
    timesteps: Tensor  # int64, the discrete timesteps visited, descending
    sigmas: Tensor  # float64, k-diffusion sigma of every visited timestep, then 0
    step: str
    eta: float
    dynamic_cfg: bool
    steps: int  # the requested number of steps (the wrapper's num_inference_steps)
    noise_scale: float  # x at sigmas[0] = noise_scale * unit noise for a run from pure noise


def scheduler_mapping(name: str) -> SchedulerMapping:
    """The mapping of a wrapper scheduler name; clear error for names this sampler does not run."""
    if name in WRAPPER_SCHEDULERS:
        return WRAPPER_SCHEDULERS[name]
    if name in UNSUPPORTED_SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not supported by the guided CogVideoX sampler: "
                         f"{UNSUPPORTED_SCHEDULERS[name]}")
    raise ValueError(f"unknown CogVideoX scheduler {name!r}; choose one of {SCHEDULER_NAMES}")


def sigmas_of(alphas_cumprod: Tensor) -> Tensor:
    """k-diffusion sigma = sqrt((1 - abar) / abar) of every entry."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def build_schedule(scheduler_name: str, scheduler_config: dict, steps: int,
                   denoise_strength: float = 1.0) -> CogVideoXSchedule:
    """The schedule the wrapper's sampler would run for `scheduler_name`, `steps` and `denoise_strength`.

    `scheduler_config` is the wrapper's model["scheduler_config"] (a diffusers scheduler config dict).
    `denoise_strength` < 1 keeps the last int(steps * strength) steps, as the wrapper's vid2vid does.
    """
    mapping = scheduler_mapping(scheduler_name)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 < denoise_strength <= 1.0:
        raise ValueError(f"denoise strength must be in (0, 1], got {denoise_strength}")
    if not isinstance(scheduler_config, dict):
        raise ValueError(f"the model's scheduler_config must be a dict of diffusers scheduler settings, "
                         f"got {type(scheduler_config).__name__}")
    import diffusers.schedulers

    scheduler_class = getattr(diffusers.schedulers, mapping.diffusers_class)
    scheduler = scheduler_class.from_config(scheduler_config)
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "v_prediction":
        raise ValueError(f"the model's scheduler config predicts {prediction!r}; CogVideoX models predict "
                         "'v_prediction' (check the model's scheduler_config)")
    try:
        scheduler.set_timesteps(steps, device="cpu")
    except (ValueError, IndexError) as error:  # e.g. PNDM's warm-up cannot fit some step counts
        raise ValueError(f"diffusers' {mapping.diffusers_class} cannot make {steps} steps with this model's "
                         f"scheduler config ({error}); pick another number of steps or another scheduler") from error
    # second-order and PNDM schedulers list a timestep once per model call; keep each noise level once
    timesteps = torch.unique_consecutive(scheduler.timesteps.double().round().long())
    if denoise_strength < 1.0:
        kept = min(int(steps * denoise_strength), steps)
        if kept < 1:
            raise ValueError(f"denoise strength {denoise_strength} keeps no step of {steps}; raise the strength "
                             f"to at least {1 / steps:.3f} or use more steps")
        timesteps = timesteps[round((steps - kept) * len(timesteps) / steps):]
    table = scheduler.alphas_cumprod.double().clamp_min(MIN_ALPHAS_CUMPROD)
    sigmas = torch.cat([sigmas_of(table)[timesteps], table.new_zeros(1)])
    # Schedulers with init_noise_sigma 1 (DDIM family, multistep solvers) hold z_T = noise, i.e.
    # x = noise * sqrt(1 + sigma^2); the Euler family holds x = noise * init_noise_sigma (sigma_max when trailing).
    init_noise_sigma = float(scheduler.init_noise_sigma)
    noise_scale = float((1 + sigmas[0] ** 2).sqrt()) if init_noise_sigma == 1.0 else init_noise_sigma
    return CogVideoXSchedule(table, timesteps, sigmas, mapping.step, mapping.eta, mapping.dynamic_cfg, steps,
                             noise_scale)


def dynamic_guidance_scale(cfg: float, timestep: float, steps: int) -> float:
    """The cfg the wrapper's pipeline uses at `timestep` with CogVideoXDPMScheduler (its formula, as is)."""
    return 1 + cfg * (1 - math.cos(math.pi * ((steps - timestep) / steps) ** 5.0)) / 2


def check_text_embeds(positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Validate the wrapper's CONDITIONING tensors (B, tokens, dim); zero-pad a shorter negative as it does."""
    for name, embeds in (("positive", positive), ("negative", negative)):
        if not isinstance(embeds, Tensor) or embeds.dim() != 3:
            shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must be CogVideoX text embeds (batch, tokens, dim) from CogVideoTextEncode, "
                             f"got {shape}; ComfyUI's CLIPTextEncode conditioning does not fit this model")
    if positive.shape[0] != negative.shape[0] or positive.shape[2] != negative.shape[2]:
        raise ValueError(f"positive {tuple(positive.shape)} and negative {tuple(negative.shape)} embeds differ in "
                         "batch or width; encode both with the same text encoder")
    if negative.shape[1] < positive.shape[1]:
        pad = negative.new_zeros(negative.shape[0], positive.shape[1] - negative.shape[1], negative.shape[2])
        negative = torch.cat([negative, pad.to(negative.device)], dim=1)
    elif negative.shape[1] > positive.shape[1]:
        raise ValueError(f"the negative prompt has {negative.shape[1]} tokens, more than the positive's "
                         f"{positive.shape[1]}; shorten the negative prompt")
    return positive, negative


class CogVideoXVelocity:
    """v(z_t, t) of a CogVideoX transformer on latents (B, F, C, h, w), with classifier-free guidance.

    Works with diffusers' CogVideoXTransformer3DModel and the wrapper's own copy of it: both take
    (hidden_states, encoder_hidden_states, timestep, image_rotary_emb). As in the wrapper's pipeline, cfg > 1
    runs the negative and positive prompts in one batch and mixes v; cfg <= 1 runs the positive prompt only.
    """

    def __init__(self, transformer: torch.nn.Module, positive: Tensor, negative: Tensor, cfg: float,
                 image_rotary_emb: tuple[Tensor, Tensor] | None = None, dynamic_cfg: bool = False,
                 steps: int | None = None, dtype: torch.dtype | None = None):
        if cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {cfg}")
        if dynamic_cfg and not steps:
            raise ValueError("the dynamic cfg of CogVideoXDPMScheduler needs the number of steps")
        positive, negative = check_text_embeds(positive, negative)
        self.transformer, self.cfg, self.dynamic_cfg, self.steps = transformer, float(cfg), dynamic_cfg, steps
        self.use_cfg = cfg > 1.0
        embeds = torch.cat([negative, positive]) if self.use_cfg else positive
        parameter = next(transformer.parameters())
        self.dtype = dtype or parameter.dtype
        self.embeds = embeds.to(parameter.device, self.dtype)
        self.image_rotary_emb = image_rotary_emb
        self.samples = positive.shape[0]

    def guidance_scale(self, timestep: Tensor) -> float:
        """The cfg mix weight at `timestep`."""
        if not self.dynamic_cfg:
            return self.cfg
        return dynamic_guidance_scale(self.cfg, float(timestep.reshape(-1)[0].round()), self.steps)

    def __call__(self, z: Tensor, timestep: Tensor) -> Tensor:
        if z.dim() != 5 or z.shape[0] != self.samples:
            raise ValueError(f"CogVideoX latents must be (B={self.samples}, frames, channels, h, w), "
                             f"got {tuple(z.shape)}")
        batch = torch.cat([z, z]) if self.use_cfg else z
        t = timestep.reshape(-1)[:1].to(z.device).expand(batch.shape[0])
        v = self.transformer(hidden_states=batch.to(self.dtype), encoder_hidden_states=self.embeds, timestep=t,
                             image_rotary_emb=self.image_rotary_emb, return_dict=False)[0].to(z.dtype)
        if not self.use_cfg:
            return v
        uncond, cond = v.chunk(2)
        return uncond + self.guidance_scale(timestep) * (cond - uncond)


def check_decode_chunk(latent_frames_per_call: int, frames: int) -> None:
    """Reject decode chunks CogVideoX's causal VAE cannot decode consistently (see CogVideoXDecoder)."""
    if latent_frames_per_call < 0:
        raise ValueError(f"decode chunk must be >= 0 latent frames, got {latent_frames_per_call}")
    if 0 < latent_frames_per_call < frames and latent_frames_per_call % 2:
        raise ValueError(
            f"decode chunk {latent_frames_per_call} is odd: CogVideoX's VAE treats an odd-length chunk as the "
            f"start of a video (its first frame is not upsampled in time), so every chunk after the first must "
            f"have an even number of latent frames; use 0 (the VAE's default of 2), an even number, or at least "
            f"{frames} (all frames in one call)")


@contextlib.contextmanager
def vae_decode_settings(vae: torch.nn.Module, latent_frames_per_call: int) -> Iterator[None]:
    """Decode whole frames (no spatial tiling) `latent_frames_per_call` latent frames per decoder call."""
    saved = {name: getattr(vae, name) for name in ("use_tiling", "num_latent_frames_batch_size") if hasattr(vae, name)}
    try:
        vae.use_tiling = False
        if latent_frames_per_call:
            vae.num_latent_frames_batch_size = latent_frames_per_call
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


class CogVideoXDecoder:
    """Differentiable decode of scaled latents (B, F, C, h, w) to a video (B, T, 3, H, W) in [0, 1], unclamped.

    diffusers' AutoencoderKLCogVideoX decodes `latent_frames_per_call` latent frames at a time (0: its default,
    2) and carries each causal convolution's last inputs to the next call (conv cache), so the convolutions see
    exactly the whole video (tested to 1e-12 with frame-local norms). Its GroupNorms, however, normalise over
    the frames of one call, so decodes with different chunk sizes differ (by up to 0.4 in [0, 1] pixel units on
    a random tiny VAE; not measured with trained weights); chunk 0 reproduces CogVideoDecode exactly. `skip_frames` drops the
    padding frames CogVideoX 1.5 adds in front (the wrapper's "additional_frames"), as CogVideoDecode does.
    The clamp to [0, 1] of CogVideoDecode's post-processing is left out so gradients do not vanish.
    """

    def __init__(self, vae: torch.nn.Module, latent_frames_per_call: int = 0, skip_frames: int = 0):
        config = getattr(vae, "config", None)
        if not callable(getattr(vae, "decode", None)) or config is None or not hasattr(config, "scaling_factor"):
            raise ValueError(f"the VAE must be the CogVideoX VAE (diffusers AutoencoderKLCogVideoX) from the "
                             f"CogVideoX loaders, got {type(vae).__name__}")
        if skip_frames < 0:
            raise ValueError(f"skip_frames must be >= 0, got {skip_frames}")
        if latent_frames_per_call < 0:
            raise ValueError(f"decode chunk must be >= 0 latent frames, got {latent_frames_per_call}")
        self.vae, self.chunk, self.skip = vae, latent_frames_per_call, skip_frames
        self.scaling_factor = float(config.scaling_factor)
        self.time_ratio = int(getattr(config, "temporal_compression_ratio", 4))

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the VAE computes in."""
        return next(self.vae.parameters()).dtype

    def __call__(self, latents: Tensor) -> Tensor:
        if latents.dim() != 5:
            raise ValueError(f"CogVideoX latents must be (B, frames, channels, h, w), got {tuple(latents.shape)}")
        z = latents[:, self.skip:]
        if z.shape[1] < 1:
            raise ValueError(f"no latent frame left to decode after skipping {self.skip} padding frames")
        check_decode_chunk(self.chunk, z.shape[1])
        device = next(self.vae.parameters()).device
        z = (z.permute(0, 2, 1, 3, 4) / self.scaling_factor).to(device, self.dtype)
        with vae_decode_settings(self.vae, self.chunk):
            frames = self.vae.decode(z).sample  # (B, 3, T, H, W) in [-1, 1]
        return (frames.to(latents.dtype) / 2 + 0.5).permute(0, 2, 1, 3, 4).to(latents.device)

    def pixel_frame_groups(self, latent_frames: int, pixel_frames: int) -> list[range]:
        """Which decoded frames each decoded latent frame produced (first frame alone when the count is odd)."""
        r = self.time_ratio
        if pixel_frames == 1 + r * (latent_frames - 1):
            return [range(0, 1)] + [range(1 + r * (j - 1), 1 + r * j) for j in range(1, latent_frames)]
        if pixel_frames == r * latent_frames:
            return [range(r * j, r * (j + 1)) for j in range(latent_frames)]
        raise ValueError(f"{latent_frames} latent frames decoded to {pixel_frames} frames, which matches neither "
                         f"1 + {r}(F - 1) nor {r}F; cannot assign frame losses to latent frames")

    def decoded_frame_indices(self, latent_indices: Tensor, pixel_frames: int) -> Tensor:
        """Full-video frame index of each of the `pixel_frames` frames decoded from `latent_indices` alone.

        A latent frame j >= 1 of the whole video decodes to frames 1 + r(j-1) .. r j (frame 0 to frame 0). When
        a subset is decoded on its own, each of its latent frames yields its own group of frames; they are
        matched to the last frames of the full-video group (the first frame of an odd-length decode is one
        frame), repeating frame 0 where the subset yields more frames than the full video has for it.
        """
        r = self.time_ratio
        indices = [int(i) - self.skip for i in latent_indices]
        groups = self.pixel_frame_groups(len(indices), pixel_frames)
        out = []
        for j, group in zip(indices, groups):
            full = [0] if j == 0 else list(range(1 + r * (j - 1), 1 + r * j))
            n = len(group)
            out += full[-n:] if n <= len(full) else [full[0]] * (n - len(full)) + full
        return torch.tensor(out, dtype=torch.long)

    def latent_frame_losses(self, pixel_losses: Tensor, latent_frames: int) -> Tensor:
        """Per-latent-frame losses (B, F) from per-decoded-frame losses (B, T) of the mean-over-frames loss.

        Latent frame j gets the sum of its decoded frames' losses divided by T, so the F values sum to the
        video loss; padding frames skipped by the decode get 0.
        """
        decoded = latent_frames - self.skip
        groups = self.pixel_frame_groups(decoded, pixel_losses.shape[1])
        total = pixel_losses.shape[1]
        parts = [pixel_losses.new_zeros(pixel_losses.shape[0], self.skip)] if self.skip else []
        parts += [pixel_losses[:, g.start:g.stop].sum(dim=1, keepdim=True) / total for g in groups]
        return torch.cat(parts, dim=1)


def initial_latent(noise: Tensor, schedule: CogVideoXSchedule, init: Tensor | None = None,
                   denoise_strength: float = 1.0) -> Tensor:
    """The k-diffusion latent x at schedule.sigmas[0] that the wrapper's pipeline starts from.

    No `init`: the scheduler's initial noise, noise * schedule.noise_scale. With `init` and strength 1 the
    wrapper uses `init` itself as the initial latent (scaled like the noise); with strength < 1 (vid2vid) `init`
    is noised to sigmas[0]: x = init + sigma noise (the wrapper additionally multiplies this by the Euler
    schedulers' init_noise_sigma, which over-scales it; that is not reproduced).
    """
    if init is None:
        return noise * schedule.noise_scale
    if init.shape != noise.shape:
        raise ValueError(f"input samples have shape {tuple(init.shape)} but this run needs {tuple(noise.shape)} "
                         "(batch, frames, channels, h, w); match num_frames and size to the input latents")
    init = init.to(noise)
    if denoise_strength >= 1.0:
        return init * schedule.noise_scale
    return init + float(schedule.sigmas[0]) * noise


def _torch_attention(comfy_layout: bool):
    """Attention through torch SDPA (forward-differentiable under the MATH backend), in a processor's layout."""
    def attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, attn_mask: Tensor | None = None) -> Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        if comfy_layout:  # the wrapper's "comfy" mode returns (batch, tokens, heads * dim) already
            out = out.transpose(1, 2).reshape(q.shape[0], -1, q.shape[1] * q.shape[3])
        return out
    return attention


@contextlib.contextmanager
def torch_attention_functions(transformer: torch.nn.Module) -> Iterator[int]:
    """Route the wrapper's pluggable attention (sage, comfy, sdpa) through torch SDPA; yields how many were swapped.

    SageAttention kernels have no derivatives and ComfyUI's CPU attention writes into buffers in place, so a
    forward-mode pass uses SDPA instead (selected to MATH by guidance_core's forward_ad_attention).
    """
    swapped = []
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and callable(getattr(processor, "attn_func", None)):
            swapped.append((processor, processor.attn_func))
            processor.attn_func = _torch_attention(getattr(processor, "attention_mode", "sdpa") == "comfy")
    try:
        yield len(swapped)
    finally:
        for processor, original in swapped:
            processor.attn_func = original


def reset_wrapper_state(transformer: torch.nn.Module) -> None:
    """Turn off the wrapper's FasterCache / TeaCache state a previous CogVideoSampler run may have left on."""
    if hasattr(transformer, "use_fastercache"):
        transformer.use_fastercache = False
        transformer.fastercache_counter = 0
    if hasattr(transformer, "use_teacache"):
        transformer.use_teacache = False
        if hasattr(transformer, "accumulated_rel_l1_distance"):
            del transformer.accumulated_rel_l1_distance


def latent_shape(batch: int, num_frames: int, height: int, width: int, channels: int = 16,
                 time_ratio: int = 4, space_ratio: int = 8, patch_size_t: int | None = None) -> tuple[Sequence[int], int]:
    """(latent shape, padding frames) the wrapper's pipeline uses for `num_frames` video frames of height x width."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height % space_ratio or width % space_ratio:
        raise ValueError(f"height and width must be multiples of {space_ratio}, got {height}x{width}")
    frames = (num_frames - 1) // time_ratio + 1
    padding = (patch_size_t - frames % patch_size_t) if patch_size_t and frames % patch_size_t else 0
    return (batch, frames + padding, channels, height // space_ratio, width // space_ratio), padding


def decoded_frames(latent_frames: int, time_ratio: int) -> int:
    """Frames the CogVideoX VAE decodes from `latent_frames` latent frames (the first alone when the count is odd)."""
    return 1 + time_ratio * (latent_frames - 1) if latent_frames % 2 else time_ratio * latent_frames


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
    their frames (CogVideoXDecoder.latent_frame_losses).

    `objective` is an objectives.ObjectiveSet; `before_call` runs before every call (the host's interrupt check)
    and `scope` is entered around it (the host's inference-tensor clones: the VAE's weights are inference
    tensors, and backprop needs normal clones).
    """

    def __init__(self, objective, decoder: CogVideoXDecoder, before_call: Callable[[], None] = lambda: None,
                 scope: Callable[[], ContextManager] = contextlib.nullcontext):
        self.decoder, self.before_call, self.scope = decoder, before_call, scope
        pixel_specs = tuple(s for s in objective.specs if s.input_space != "latent")
        latent_specs = tuple(s for s in objective.specs if s.input_space == "latent")
        self.pixel = type(objective)(pixel_specs) if pixel_specs else None
        self.latent = type(objective)(latent_specs) if latent_specs else None

    def __call__(self, x0: torch.Tensor, frame_indices: torch.Tensor | None = None,
                 per_frame: bool = False) -> torch.Tensor:
        self.before_call()
        with self.scope():
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
        subset = CogVideoXDecoder(self.decoder.vae, self.decoder.chunk, 0)
        pixels = subset(x0[:, keep.to(x0.device)])
        return pixels, subset.decoded_frame_indices(frame_indices[keep] - skip, pixels.shape[1])


def wrapper_start(pipe, shape: Sequence[int], seed: int, dtype: torch.dtype, device: torch.device,
                  schedule: CogVideoXSchedule, init: Tensor | None, strength: float
                  ) -> tuple[Tensor, torch.Generator, Tensor | None]:
    """Where the wrapper's CogVideoSampler starts: (initial latent from its seeded noise, the CPU generator that
    continues that stream for ancestral steps, rotary embeddings or None), with the transformer's leftover
    wrapper state (a previous sampler's caches, Enhance-A-Video) reset."""
    transformer = pipe.transformer
    reset_wrapper_state(transformer)
    disable_wrapper_enhance(transformer)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device, torch.float32)
    x = initial_latent(noise, schedule, None if init is None else init.to(device, torch.float32), strength)
    height, width = shape[-2] * 8, shape[-1] * 8
    rotary = (pipe._prepare_rotary_positional_embeddings(height, width, shape[1], device)
              if transformer.config.use_rotary_positional_embeddings else None)
    return x, generator, rotary
