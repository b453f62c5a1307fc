"""ComfyUI's side of a guided run: the denoiser (ComfyUI's sampler model), the differentiable VAE decode, the
model sampling's input scaling, and what ComfyUI's model management holds for the run.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Sequence

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.samplers
import comfy.sd
from comfy.ldm.modules.attention import attention_pytorch
from comfy.ldm.modules.diffusionmodules.model import AttnBlock

from ..guidance_core.forward_ad import attributes_replaced, spatial_attention
from ..guidance_core.inference_tensors import InferenceTensorClones
from ..objectives.base import forward_ad_safe_attention


def _forward_ad_attention_override(func, *args, **kwargs):
    """`optimized_attention_override` inside forward-mode passes: attention_pytorch, whose SDPA is guidance_core's
    forward-AD router there. Fused kernels (xformers, sage, flash-attn) have no forward derivative; the split and
    sub-quadratic variants size chunks for a plain forward, and a forward-mode pass needs about twice that."""
    return attention_pytorch(*args, **kwargs)


def vae_forward_ad_attention(vae_model: torch.nn.Module):
    """Scope in which the VAE's attention blocks (AttnBlock) use explicit SDPA attention (restored afterwards)."""
    blocks = [m for m in vae_model.modules() if isinstance(m, AttnBlock) and "optimized_attention" in m.__dict__]
    return attributes_replaced(blocks, "optimized_attention", spatial_attention)


class ComfyDenoiser:
    """`denoise(x, sigma) -> x0` through ComfyUI's sampler model (CFG, patches, wrappers, inpainting mask), with an
    interrupt check before every call. Inside `forward_ad_scope()` (every JVP) the model options route attention
    to `attention_pytorch` (guidance_core's forward-AD SDPA); plain steps keep the user's attention. `call_scope`
    is entered around every call (native_video.model_call_scope)."""

    def __init__(self, model: Callable, extra_args: dict, clones: InferenceTensorClones,
                 model_sampling: ModelSampling | None = None, call_scope: Callable = contextlib.nullcontext):
        self.model, self.extra_args, self.clones, self.call_scope = model, extra_args, clones, call_scope
        self.forward_ad_depth = 0
        self.calls = 0
        # Native CogVideoX (V_PREDICTION_DDPM) reads x in its training space x0 sqrt(a) + noise sqrt(1 - a); ComfyUI
        # hands samplers x = x0 + sigma noise (KSampler feeds that to the model unscaled; VOIDSampler does not)
        self.vp_input = isinstance(model_sampling, getattr(comfy.model_sampling, "V_PREDICTION_DDPM", ()))
        if self.vp_input and extra_args.get("denoise_mask") is not None:
            raise ValueError("a latent noise mask (e.g. SetLatentNoiseMask) is not supported with native CogVideoX "
                             "(V_PREDICTION_DDPM) yet; remove the mask from the latent")

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
        with self.clones.scope(), self.call_scope():
            x_in = x * (1 + sigma ** 2) ** -0.5 if self.vp_input else x
            return self.model(x_in, sigma * x.new_ones([x.shape[0]]), **extra_args)

    @contextlib.contextmanager
    def forward_ad_scope(self):
        """Scope of one forward-mode pass: attention override on (ComfyUI's backend-priority context around SDPA
        needs no undoing: the router selects MATH itself)."""
        self.forward_ad_depth += 1
        try:
            with forward_ad_safe_attention():
                yield
        finally:
            self.forward_ad_depth -= 1


def vae_decoder(vae, base_model, clones: InferenceTensorClones) -> Callable[[torch.Tensor], torch.Tensor]:
    """Differentiable decode of sampler-space latents (N, C, h, w) to pixels (N, 3, H, W) in [0, 1]: the steps of
    comfy.sd.VAE.decode (latent out-scaling, VAE dtype / device, `process_output`) minus its no-grad fallbacks."""
    def decode(z: torch.Tensor) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        with clones.scope():
            latent = base_model.process_latent_out(z)
            pixels = vae.first_stage_model.decode(latent.to(vae.vae_dtype).to(vae.device))
            return vae.process_output(pixels.float())
    return decode


ModelSampling = comfy.model_sampling.EPS | comfy.model_sampling.CONST  # a model's model_sampling object


def latent_scale_of(model_sampling: ModelSampling) -> Callable[[torch.Tensor], torch.Tensor]:
    """Update normalisation c(sigma) = the model's own input scaling: 1/sqrt(1+sigma^2) (EPS / V), 1 (flow); native
    CogVideoX (V_PREDICTION_DDPM) feeds x = x0 + sigma noise to the model unscaled, so it gets 1/sqrt(1+sigma^2)."""
    unscaled_ve = isinstance(model_sampling, getattr(comfy.model_sampling, "V_PREDICTION_DDPM", ()))

    def scale(sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        if unscaled_ve:
            return (1 + sigma.reshape(()) ** 2) ** -0.5
        ones = torch.ones((1, 1), dtype=sigma.dtype, device=sigma.device)
        return model_sampling.calculate_input(sigma.reshape(1), ones).reshape(())
    return scale


def is_flow(model_sampling: ModelSampling) -> bool:
    """True for rectified-flow models (CONST model sampling)."""
    return isinstance(model_sampling, comfy.model_sampling.CONST)


def resident_clone(patcher: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
    """A clone of a MODEL / VAE patcher for a guided run. Dynamic VRAM (ComfyUI 0.3x on CUDA) streams weights into
    scratch buffers inside each layer call, which backprop and forward-mode passes cannot hold on to; as ComfyUI's own
    torch.compile node does, guidance takes the host's non-dynamic copy (loaded once, then cached by the host)."""
    if not isinstance(patcher, getattr(comfy.model_patcher, "ModelPatcherDynamic", ())):  # 0.3.x has none
        return patcher.clone()
    try:
        if hasattr(patcher, "get_non_dynamic_delegate"):
            return patcher.get_non_dynamic_delegate()
        return patcher.clone(disable_dynamic=True)
    except RuntimeError as error:
        raise RuntimeError(f"{type(patcher.model).__name__} streams its weights (dynamic VRAM) and its loader left no "
                           f"way to load it without ({error}); load it with a core loader or start ComfyUI with "
                           "--disable-dynamic-vram to guide it") from error


def resident_vae(vae: comfy.sd.VAE) -> comfy.sd.VAE:
    """`vae` itself, or a shallow copy on a non-dynamic patcher (see resident_clone) when its weights stream."""
    if not isinstance(vae.patcher, getattr(comfy.model_patcher, "ModelPatcherDynamic", ())):
        return vae
    resident = copy.copy(vae)
    resident.patcher = resident_clone(vae.patcher)
    resident.first_stage_model = resident.patcher.model
    resident.vae_dtype = next(resident.first_stage_model.parameters()).dtype  # the reload may pick another dtype
    return resident


def managed_entry(patcher):
    """ComfyUI's LoadedModel entry holding `patcher` (or a clone of it), or None when it is not loaded."""
    for entry in model_management.current_loaded_models:
        loaded = entry.model
        if loaded is not None and (loaded is patcher or patcher.is_clone(loaded)):
            return entry
    return None


def describe_loaded_models(models: Sequence[tuple[str, Any]], loaded_late: Sequence = ()) -> list[str]:
    """One line per (role, ModelPatcher): what ComfyUI's model management holds of it now, and where;
    `loaded_late`: those loaded only when guidance started (ComfyUI did not plan memory for them together)."""
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


def load_run_models(guider: comfy.samplers.CFGGuider, guidance: list[tuple[str, Any]], vae: comfy.sd.VAE,
                    decode_memory: int) -> tuple[list[tuple[str, Any]], list]:
    """Load the VAE and the objectives' networks where they are not (TitanGuideSamplerSelect's GUIDER comes from
    elsewhere; or they were offloaded since) in one `load_models_gpu` call, then free memory for the guidance
    activations from idle models only. Returns (role, patcher) of every model of the run, and those loaded here."""
    if getattr(getattr(guider, "model_patcher", None), "is_dynamic", lambda: False)():
        raise RuntimeError("the GUIDER's model streams its weights (ComfyUI's dynamic VRAM), which guidance cannot "
                           "differentiate through: use TitanGuideSampler (it guides a resident copy) or start ComfyUI "
                           "with --disable-dynamic-vram")
    sampling = [("diffusion model", guider.model_patcher)] if getattr(guider, "model_patcher", None) else []
    for extra in getattr(guider, "loaded_models", None) or ():  # controlnets etc. (and ours, listed once)
        if hasattr(extra, "model_size") and not any(extra is p or extra.is_clone(p) for _, p in guidance):
            sampling.append(("additional model", extra))
    missing = [patcher for _, patcher in guidance if managed_entry(patcher) is None]
    if missing:
        model_management.load_models_gpu(missing, memory_required=decode_memory)
    device = torch.device(vae.patcher.load_device)
    if device.type != "cpu":
        keep = [entry for entry in (managed_entry(p) for _, p in sampling + guidance) if entry is not None]
        needed = max(model_management.minimum_inference_memory(),
                     decode_memory + model_management.extra_reserved_memory())  # as load_models_gpu reserves
        model_management.free_memory(needed, device, keep_loaded=keep)
    return sampling + guidance, missing
