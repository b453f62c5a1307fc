"""ComfyUI's native video models (latents (B, C, T, h, w): Wan 2.1 / 2.2, CogVideoX, and any model whose VAE
compresses time causally the same way) in the guided samplers, and the Wan 2.2 14B expert pair as one MODEL.

The VAE's time compression comes from comfy.sd.VAE itself (`upscale_index_formula`, set by ComfyUI for each
video VAE it detects); guidance_core.video_frames does the frame arithmetic and the loss.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

import comfy.ldm.hunyuan_video.model
import comfy.model_management as model_management
import comfy.sd
from ..comfy_v3 import io

from ..guidance_core.forward_ad import attributes_replaced, spatial_attention
from ..guidance_core.inference_tensors import InferenceTensorClones
from ..guidance_core.video_frames import CausalTime, CausalVideoLoss
from .sockets import node_schema


FRAME_RULES = {"AutoencoderKLCogVideoX": "causal_odd"}  # VAE class -> CausalTime rule (default 'causal')


def frame_rule(vae: comfy.sd.VAE) -> str:
    """The CausalTime rule of `vae`'s decode. HunyuanVideo 1.5's VAE and HunyuanImage 2.1's refiner VAE are both a
    generic AutoencodingEngine around vae_refiner.Decoder, told apart by its config: the video VAE (refiner_vae on)
    keeps the first frame alone, the refiner's (off) gives 4 frames per latent frame."""
    if getattr(getattr(vae.first_stage_model, "decoder", None), "refiner_vae", True) is False:
        return "uniform"
    return FRAME_RULES.get(type(vae.first_stage_model).__name__, "causal")


def causal_time(vae: comfy.sd.VAE, shape) -> CausalTime:
    """The causal time compression of `vae` for a 5-D latent of `shape`; a clear error for a VAE that does not
    decode such latents (an image VAE given a video latent)."""
    formula = getattr(vae, "upscale_index_formula", None)
    if getattr(vae, "latent_dim", 2) != 3 or not isinstance(formula, tuple) or not callable(vae.upscale_ratio[0]):
        raise ValueError(f"the latent is a video latent {tuple(shape)} (B, C, T, H, W), but the VAE "
                         f"({type(vae.first_stage_model).__name__}) does not decode video latents; connect the video "
                         "model's own VAE (e.g. wan_2.1_vae.safetensors for Wan 2.1 and the Wan 2.2 14B pair, "
                         "wan2.2_vae.safetensors for Wan 2.2 5B)")
    if shape[1] != vae.latent_channels:
        raise ValueError(f"the latent has {shape[1]} channels but the VAE decodes {vae.latent_channels}: connect the "
                         "VAE that belongs to the model (Wan 2.1 / 14B: 16 channels, Wan 2.2 5B: 48, "
                         "HunyuanVideo 1.5: 32)")
    name = type(vae.first_stage_model).__name__
    time = CausalTime(int(formula[0]), frame_rule(vae))
    time.check_video(shape[2], name)
    # ComfyUI's formula says 1 + 4 (T - 1) for the 'uniform' refiner VAE too; its decode (VAEDecode's frames) rules
    if time.rule != "uniform" and vae.upscale_ratio[0](shape[2]) != time.decoded_frames(shape[2]):
        raise ValueError(f"{type(vae.first_stage_model).__name__} decodes {shape[2]} latent frames to "
                         f"{vae.upscale_ratio[0](shape[2])} frames, not 1 + {time.ratio} (T - 1): not a causal "
                         "video VAE these nodes support")
    return time


def video_decoder(vae: comfy.sd.VAE, base_model, clones: InferenceTensorClones) -> Callable[[torch.Tensor], torch.Tensor]:
    """Differentiable decode of sampler-space video latents (n, C, T, h, w) to (n, T', 3, H, W) in [0, 1]: the
    steps of comfy.sd.VAE.decode (latent out-scaling, VAE dtype / device, the VAE's own causal decode in one call,
    `process_output`) minus its no-grad fallbacks."""
    def decode(z: torch.Tensor) -> torch.Tensor:
        model_management.throw_exception_if_processing_interrupted()
        with clones.scope():
            latent = base_model.process_latent_out(z)
            pixels = vae.first_stage_model.decode(latent.to(vae.vae_dtype).to(vae.device))
            return vae.process_output(pixels.float()).movedim(1, 2).to(z.device)
    return decode


def vae_attention_scope(vae: comfy.sd.VAE):
    """Scope in which every attention block of the VAE (Wan's AttentionBlock holds `optimized_attention` like
    ComfyUI's AttnBlock) uses explicit SDPA attention, which has forward derivatives (restored afterwards)."""
    blocks = [m for m in vae.first_stage_model.modules() if "optimized_attention" in m.__dict__]
    return attributes_replaced(blocks, "optimized_attention", spatial_attention)


def model_call_scope(base_model) -> Callable[[], contextlib.AbstractContextManager]:
    """Scope of every diffusion-model call of a guided run. HunyuanVideo's (flux-style) blocks add to a tensor in
    place after a norm saved it for backward, which autograd refuses in backprop (FreeDoM, exact gradient, ...): there
    it saves copies of such activations (more memory in backprop only; plain and forward-mode calls save nothing)."""
    if not isinstance(base_model.diffusion_model, comfy.ldm.hunyuan_video.model.HunyuanVideo):
        return contextlib.nullcontext
    return lambda: torch.autograd.graph.saved_tensors_hooks(
        lambda saved: saved if saved.grad_fn is None else saved.clone(), lambda saved: saved)


@contextlib.contextmanager
def module_moves_skipped(diffusion_model: torch.nn.Module, device):
    """HunyuanVideo 1.5's forward moves `cond_type_embedding` with `.to(txt.device)`, and nn.Module.to inside
    torch.func.jvp (every forward-gradient pass) kills the process (PyTorch 2.9: segfault in Module._apply). In this
    scope the embedding is on `device` (moved once, as that call would) and its `to` does nothing; restored after."""
    embedding = getattr(diffusion_model, "cond_type_embedding", None)
    if not isinstance(diffusion_model, comfy.ldm.hunyuan_video.model.HunyuanVideo) or embedding is None:
        yield
        return
    embedding.to(device)
    embedding.to = lambda *args, **kwargs: embedding
    try:
        yield
    finally:
        del embedding.to


@contextlib.contextmanager
def differentiable_ops():
    """ComfyUI's training switch for the run: its models then take their differentiable code paths (plain-torch
    RoPE instead of comfy_kitchen's fused op, which has no autograd formula: backprop baselines fail through it)."""
    previous, model_management.in_training = model_management.in_training, True
    try:
        yield
    finally:
        model_management.in_training = previous


def video_loss(vae: comfy.sd.VAE, base_model, objective, time: CausalTime, clones: InferenceTensorClones
               ) -> CausalVideoLoss:
    """guidance_core's loss for a native video latent, decoding through `vae`."""
    return CausalVideoLoss(video_decoder(vae, base_model, clones), objective, time,
                           latent_out=base_model.process_latent_out, scope=clones.scope,
                           before_call=model_management.throw_exception_if_processing_interrupted)


def plan_decode(loss: CausalVideoLoss, vae: comfy.sd.VAE, x: torch.Tensor, setting: int) -> str:
    """Videos per VAE call from the device's free memory (forward mode holds values and tangents: twice ComfyUI's
    own decode estimate per video); all at once on the CPU. Returns the report line."""
    device = torch.device(vae.device)
    per_video = 2 * vae.memory_used_decode((1, *x.shape[1:]), vae.vae_dtype)
    free = None if device.type == "cpu" else model_management.get_free_memory(device)
    return loss.plan_chunk(x, x.shape[2], setting, bytes_per_video=per_video, free_bytes=free)


class TitanWanExperts(io.ComfyNode):
    """Joins Wan 2.2 14B's high-noise and low-noise experts into one MODEL that calls the high-noise expert at noise
    levels (sigma) at or above the boundary and the low-noise expert below it, as Wan 2.2's own sampler switches
    them. ComfyUI's official workflow switches with two KSamplerAdvanced at a step; TITAN-Guide's look-ahead runs
    the model at later noise levels inside one step, so it needs the switch inside the model call: connect this
    MODEL to one TitanGuideSampler (or a CFGGuider for TitanGuideSamplerSelect). Apply ModelSamplingSD3 (shift) to
    both experts first, as the official workflow does; the low-noise expert is loaded together with the high one."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN-Guide Wan 2.2 Expert Pair", inputs=[
                io.Model.Input("high_noise_model", tooltip="Wan 2.2 14B high-noise expert (e.g. "
                                                           "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors)."),
                io.Model.Input("low_noise_model", tooltip="Wan 2.2 14B low-noise expert (e.g. "
                                                          "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors)."),
                io.Float.Input("boundary", default=0.875, min=0.0, max=1.0, step=0.001,
                               tooltip="Noise level (sigma, = timestep / 1000) where the low-noise expert takes over: "
                                       "0.875 for text-to-video and 0.9 for image-to-video in Wan 2.2's own code."),
            ],
            outputs=[io.Model.Output("model", tooltip="One MODEL that calls the expert of each noise level.")])

    @classmethod
    def execute(cls, high_noise_model, low_noise_model, boundary) -> io.NodeOutput:
        high_base, low_base = high_noise_model.model, low_noise_model.model
        if type(high_base) is not type(low_base) or high_base.latent_format.latent_channels != \
                low_base.latent_format.latent_channels:
            raise ValueError(f"the experts must be one family: got {type(high_base).__name__} and "
                             f"{type(low_base).__name__}")
        model = high_noise_model.clone()
        previous, boundary = model.model_options.get("model_function_wrapper"), float(boundary)

        def expert_switch(apply_model, args: dict):
            """model_function_wrapper: every model call of a sampler (plain steps, Tweedie estimates, each look-ahead
            step inside a forward-mode pass) gets the expert the sampler uses at that call's sigma."""
            sigma = args["timestep"]
            if float(sigma.flatten()[0]) >= boundary:
                return previous(apply_model, args) if previous else apply_model(args["input"], sigma, **args["c"])
            return low_noise_model.model.apply_model(args["input"], sigma, **args["c"])

        model.set_model_unet_function_wrapper(expert_switch)
        model.set_additional_models("titan_wan_low_noise_expert", [low_noise_model])
        return io.NodeOutput(model)


NODE_CLASSES = [TitanWanExperts]
