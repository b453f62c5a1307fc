"""Memory and time of every guidance method at the paper's scale, side by side in one run per case (GPU).

Full-size architectures with random weights: SD1.5 UNet + AnimateDiff v1-5-2-shaped motion module (diffusers
UNetMotionModel, 1.3 B parameters) with the SD VAE, or a CogVideoX-2B-sized transformer (diffusers
CogVideoXTransformer3DModel, default config) with the CogVideoX VAE; scorers at their real sizes (DOVER,
ImageBind-huge, open_clip ViT-H-14 / ViT-L-14 style loss). CFG is on (batch 2 through the denoiser), 20 steps.

Per row: peak `torch.cuda.max_memory_allocated` (weights included) and the weights alone, the median seconds of
one guidance step at step 5 of 20 (DOODL: one optimisation iteration plus the EDICT chain, i.e. a whole video),
and for some rows a complete guided 20-step video including the final decode. TITAN variants: "+graph"
(`Titan(cuda_graph=True)`) and "math attention" (`guidance_core.forward_ad.settings_override(fused=False)` for that row
only). The decode chunk is planned once per case (`guidance_core.plan_chunk_frames`, before anything is
measured, because it resets the peak counter; a case with a memory target, such as 16x384x384 for a 24 GB card,
plans for that card's free memory) unless `--chunk` fixes it. The first forward-mode row and the first backprop
row of a case get one untimed warm-up call (kernel compilation), CUDA-graph rows two (eager call, capture).
Out-of-memory is a result ("oom"); any other failure of a row is an "error: ..." row and the run goes on. The
JSON is rewritten after every row; `--max-minutes` starts no new row past the budget ("skipped: time budget").

    python -m benchmarks.paper_scale [--cases NAME ...] [--chunk auto|N] [--max-minutes M] [--out PATH]
    python -m benchmarks.paper_scale --smoke      # tiny models on the CPU: every code path, no figures
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import inspect
import json
import pathlib
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

import guidance_core as core
from guidance_core.forward_ad import attention

STEPS, GUIDED_STEP = 20, 5
ANIMATEDIFF_CFG, COGVIDEOX_CFG = 7.5, 6.0  # AnimateDiff's usual 7.5; CogVideoX pipelines' default 6
SAMPLED_FRAMES = 2  # the paper's sampled-gradient frames
PLAN_FREE_FRACTION = 0.5  # share of free memory one decode chunk's forward-mode pass may take
MAX_TIMED_SECONDS = 20.0  # stop repeating a timed call once this much was timed (after the first)
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
JVP_PROFILE = RESULTS_DIR / "jvp_profile.json"  # written by benchmarks/jvp_profile.py; its "attention" is copied

# CogVideoX-2B's scheduler: CogVideoXDDIMScheduler defaults with these settings.
COGVIDEOX_2B_SCHEDULER = {
    "prediction_type": "v_prediction", "snr_shift_scale": 3.0, "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "clip_sample": False, "set_alpha_to_one": True,
}

# Tiny sizes for --smoke (same classes as the real runs).
SMOKE_DOVER = dict(technical_embed_dim=8, technical_depths=(2, 2, 2, 2), technical_num_heads=(1, 2, 2, 2),
                   technical_window_size=(2, 2, 2), aesthetic_depths=(1, 1, 3, 1), aesthetic_dims=(8, 8, 16, 16),
                   head_hidden_channels=4)
SMOKE_DOVER_VIEWS = dict(fragments_h=2, fragments_w=2, fragment_size_h=16, fragment_size_w=16, aesthetic_size_h=32,
                         aesthetic_size_w=32, technical_clip_len=8, aesthetic_clip_len=8)
SMOKE_IMAGEBIND = dict(kernel_size=(2, 56, 56), audio_kernel_size=16, audio_stride=10, out_embed_dim=16,
                       vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=16, audio_embed_dim=24,
                       audio_num_blocks=1, audio_num_heads=12, text_embed_dim=32, text_num_blocks=1,
                       text_num_heads=16, depth_embed_dim=16, depth_kernel_size=56, depth_num_blocks=1,
                       depth_num_heads=8, thermal_embed_dim=24, thermal_kernel_size=56, thermal_num_blocks=1,
                       thermal_num_heads=12, imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=8)
SMOKE_OPEN_CLIP = dict(embed_dim=16,
                       vision_cfg={"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
                       text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2})
SMOKE_COGVIDEOX = dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=32, num_layers=1)
SMOKE_COGVIDEOX_VAE = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)


@dataclass(frozen=True)
class RowSpec:
    """One row of a case: a method, its look-ahead, whether a whole video is timed, and the TITAN variant."""

    method: str
    lookahead: int | str | None = None
    video: bool = False
    cuda_graph: bool = False
    math_attention: bool = False
    chunk: int | None = None  # this row's decode chunk instead of the case's planned one


@dataclass(frozen=True)
class Case:
    """A backbone at one video size and dtype with one scorer, and the rows measured on it."""

    backbone: str  # "animatediff" | "cogvideox"
    frames: int  # video frames
    height: int
    width: int
    dtype: torch.dtype
    scorer: str  # "dover" | "imagebind_huge" | "clip_h" | "clip_l"
    rows: tuple[RowSpec, ...]
    memory_target_gb: float | None = None  # plan the auto decode chunk for a card of this size


def titan(lookahead=1, video=False, cuda_graph=False, math_attention=False, guess="sampled_gradient",
          chunk=None) -> RowSpec:
    """A TITAN row."""
    return RowSpec(f"titan_{guess}", lookahead, video, cuda_graph, math_attention, chunk)


def ad_case(frames, size, dtype, scorer, rows, memory_target_gb=None) -> Case:
    """An AnimateDiff case of square frames."""
    return Case("animatediff", frames, size, size, dtype, scorer, tuple(rows), memory_target_gb)


CASES: dict[str, Case] = {
    "ad256_dover": ad_case(16, 256, torch.float32, "dover", [
        titan(1, video=True), titan(1, video=True, cuda_graph=True), titan(1, math_attention=True),
        titan(1, chunk=1), titan(1, guess="random"), titan(1, guess="score"), titan(5), titan("all"),
        RowSpec("exact", 1, video=True), RowSpec("exact", "all"),
        RowSpec("freedom", video=True), RowSpec("mpgd", video=True), RowSpec("tfg", video=True),
        RowSpec("doodl", video=True)]),
    "ad256_imagebind": ad_case(16, 256, torch.float32, "imagebind_huge", [
        titan(1), titan(1, cuda_graph=True), RowSpec("freedom"), RowSpec("mpgd")]),
    "ad256_clip_h": ad_case(16, 256, torch.float32, "clip_h", [titan(1), RowSpec("freedom"), RowSpec("mpgd")]),
    "ad256_clip_l": ad_case(16, 256, torch.float32, "clip_l", [titan(1), RowSpec("freedom"), RowSpec("mpgd")]),
    "ad384_imagebind": ad_case(16, 384, torch.float32, "imagebind_huge", [
        titan(1), titan(1, cuda_graph=True), titan(1, math_attention=True), RowSpec("freedom")],
        memory_target_gb=24.0),
    "ad256_dover_bf16": ad_case(16, 256, torch.bfloat16, "dover", [
        titan(1, video=True), titan(1, cuda_graph=True), RowSpec("freedom")]),
    # 33 frames = the paper's "32 frames" (CogVideoX needs 4k + 1); bf16, as CogVideoX-2B runs in half precision
    "cogvideox2b_dover": Case("cogvideox", 33, 256, 384, torch.bfloat16, "dover", (
        titan(1, video=True), titan(1, video=True, cuda_graph=True), RowSpec("freedom"), RowSpec("mpgd"))),
}


@dataclass
class Options:
    """How the cases run: device, schedule length, timing repeats, decode chunk, smoke sizes, time budget."""

    device: torch.device
    steps: int = STEPS
    guided_step: int = GUIDED_STEP
    repeats: int = 2
    chunk: int | None = None  # None: planned per case
    smoke: bool = False
    max_minutes: float | None = None

    @property
    def cuda(self) -> bool:
        """Whether memory statistics and synchronisation apply."""
        return self.device.type == "cuda"


def smoke_case(case: Case) -> Case:
    """The same case at a size tiny models handle quickly on the CPU."""
    if case.backbone == "cogvideox":
        return dataclasses.replace(case, frames=9, height=32, width=48)
    return dataclasses.replace(case, frames=4, height=case.height // 4, width=case.width // 4)


# ---- models ---------------------------------------------------------------------------------------------


def sd15_alphas_cumprod() -> torch.Tensor:
    """SD1.5's scaled-linear schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def build_animatediff(device, dtype, smoke: bool = False):
    """UNetMotionModel (SD1.5 UNet + default motion adapter, as AnimateDiff v1-5-2) and the SD VAE."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    unet_cfg = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    adapter_cfg = dict(motion_max_seq_length=32)
    vae_blocks = (128, 256, 512, 512)
    if smoke:
        unet_cfg.update(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, norm_num_groups=8)
        adapter_cfg.update(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                           motion_num_attention_heads=2)
        vae_blocks = (16, 32, 32, 32)
    with torch.device(device):
        unet2d = UNet2DConditionModel(**unet_cfg)
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**adapter_cfg))
        del unet2d
        vae = AutoencoderKL(block_out_channels=vae_blocks, latent_channels=4, layers_per_block=1 if smoke else 2,
                            norm_num_groups=8 if smoke else 32,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return unet.to(dtype).eval().requires_grad_(False), vae.to(dtype).eval().requires_grad_(False)


def build_cogvideox(device, dtype, smoke: bool = False):
    """CogVideoXTransformer3DModel (default config = CogVideoX-2B) and AutoencoderKLCogVideoX (default config)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    with torch.device(device):
        transformer = CogVideoXTransformer3DModel(**(SMOKE_COGVIDEOX if smoke else {}))
        vae = AutoencoderKLCogVideoX(**(SMOKE_COGVIDEOX_VAE if smoke else {}))
    return transformer.to(dtype).eval().requires_grad_(False), vae.to(dtype).eval().requires_grad_(False)


def build_open_clip(model_name: str, device, dtype, smoke: bool = False):
    """open_clip `model_name` (image and text tower) with random weights, wrapped as the style objective uses it."""
    import open_clip
    from objectives.preprocess import CLIP_MEAN, CLIP_STD
    from objectives.style_clip import OpenClip
    with torch.device(device):
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False, pretrained_image=False,
                                       pretrained_text=False, device=device, **(SMOKE_OPEN_CLIP if smoke else {}))
    preprocess = open_clip.get_model_preprocess_cfg(model)
    size = preprocess.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean, std = preprocess.get("mean", CLIP_MEAN), preprocess.get("std", CLIP_STD)
    clip = OpenClip(model, open_clip.get_tokenizer(model_name), size, mean, std, crop_rounding="round")
    return clip.to(device=device, dtype=dtype)


def build_scorer(name: str, device, dtype, frames: int, smoke: bool = False):
    """A scorer at its real size (or tiny for --smoke) with random weights: (B, F, 3, H, W) in [0, 1] -> (B,)."""
    gen = torch.Generator().manual_seed(2)
    if name == "dover":
        from objectives.dover import DoverLoss, DoverModel, dover_full
        from objectives.views import DoverViewConfig
        with torch.device(device):
            model = DoverModel(**SMOKE_DOVER) if smoke else dover_full()
        views = DoverViewConfig(**SMOKE_DOVER_VIEWS) if smoke else None
        return DoverLoss(model.to(dtype), views=views).to(device)
    if name == "imagebind_huge":
        from objectives.imagebind_audio import ImageBindAudioLoss, import_imagebind_model
        module = import_imagebind_model()
        with torch.device(device):
            model = module.ImageBindModel(**SMOKE_IMAGEBIND) if smoke else module.imagebind_huge(pretrained=False)
        model = model.to(dtype).eval().requires_grad_(False)
        audio = {"waveform": torch.randn(1, 1, 16000 * 4, generator=gen), "sample_rate": 16000}
        return ImageBindAudioLoss(model, audio, fps=8.0, num_frames=frames).to(device)
    if name in ("clip_h", "clip_l"):
        from objectives.style_clip import StyleLoss
        clip = build_open_clip({"clip_h": "ViT-H-14", "clip_l": "ViT-L-14"}[name], device, dtype, smoke)
        style_image = torch.rand(1, 224, 224, 3, generator=gen)  # ComfyUI IMAGE layout
        return StyleLoss(clip, style_image=style_image).to(device)
    raise ValueError(f"unknown scorer {name!r}; choose dover, imagebind_huge, clip_h or clip_l")


class ScorerCall:
    """scorer(video, frame_indices) for scorers that take the sampled frames' indices, scorer(video) otherwise."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.takes_indices = "frame_indices" in inspect.signature(scorer.forward).parameters

    def __call__(self, video, frame_indices=None):
        if self.takes_indices and frame_indices is not None:
            return self.scorer(video, frame_indices=frame_indices)
        return self.scorer(video)


# ---- problems: denoiser with CFG, differentiable decode, objective ---------------------------------------


class AnimateDiffProblem:
    """AnimateDiff (eps-prediction) on latents (1, 4, F, h, w), decoded frame-wise by the SD VAE."""

    backbone = "animatediff"

    def __init__(self, unet, vae, scorer, case: Case, options: Options):
        device, dtype, frames = options.device, case.dtype, case.frames
        self.device, self.step, self.eta = device, "euler", 0.0
        gen = torch.Generator().manual_seed(0)
        # diffusers' UNetMotionModel takes text embeddings already repeated per frame (as its pipeline does)
        text = torch.randn(2, 77, 768, generator=gen).to(device, dtype).repeat_interleave(frames, dim=0)

        def eps_model(z, t):
            out = unet(torch.cat([z, z]), t.to(device), encoder_hidden_states=text).sample
            uncond, cond = out.chunk(2)
            return uncond + ANIMATEDIFF_CFG * (cond - uncond)

        self.vae, self.layout, self.latent_frames = vae, core.Layout(samples=1, frame_dim=2), frames
        self.denoise = core.EpsDenoiser(eps_model, sd15_alphas_cumprod().to(device))
        self.score_video = ScorerCall(scorer)
        self.sigmas = core.DiscreteSchedule(sd15_alphas_cumprod()).spaced_sigmas(options.steps).to(device, torch.float32)
        latent = (case.height // 8, case.width // 8)
        self.x = (torch.randn(1, 4, frames, *latent, generator=gen) * float(self.sigmas[0])).to(device, dtype)
        self.set_decode_chunk(frames)

    def decode(self, z):
        """(1, 4, k, h, w) -> (1, 3, k, H, W) in [-1, 1]."""
        k = z.shape[2]
        # contiguous: group_norm's forward-AD rule views its tangent, which a permute leaves strided
        frames_first = z.permute(0, 2, 1, 3, 4).reshape(k, 4, *z.shape[-2:]).contiguous()
        img = self.vae.decode(frames_first / 0.18215).sample
        return img.reshape(1, k, 3, *img.shape[-2:]).permute(0, 2, 1, 3, 4)

    def score(self, pixels, frame_indices=None):
        """Objective of decoded frames (latent frames = video frames here, so indices pass through)."""
        video = ((pixels.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)
        return self.score_video(video, frame_indices)

    def plan_decode_chunk(self, free_fraction: float) -> int:
        """Frames per decode chunk whose forward-mode pass fits `free_fraction` of the free memory."""
        return core.plan_chunk_frames(self.decode, self.x, self.layout, free_fraction)

    def set_decode_chunk(self, chunk: int) -> None:
        """Decode `chunk` frames per VAE call inside the objective."""
        if chunk < 1:
            raise ValueError(f"decode chunk must be >= 1 frame, got {chunk}")
        self.chunk = chunk
        self.loss = core.DecodedLoss(self.decode, self.score, self.layout, chunk)

    def decode_video(self, x):
        """The final decode of a sampled latent (no gradient)."""
        with torch.no_grad():
            return core.chunked_decode(self.decode, x, self.chunk, self.layout)

    def context_kwargs(self) -> dict:
        """SamplingContext fields besides denoiser and sigmas."""
        return dict(loss=self.loss, layout=self.layout, step=self.step, eta=self.eta,
                    generator=torch.Generator(device=self.device).manual_seed(1))


class CogVideoXProblem:
    """CogVideoX (v-prediction, CogVideoXDDIM) on latents (1, F, 16, h, w), decoded by the causal 3-D VAE."""

    backbone = "cogvideox"

    def __init__(self, transformer, vae, scorer, case: Case, options: Options):
        from integrations import cogvideox as cx
        self.cx, self.vae, self.device = cx, vae, options.device
        config = transformer.config
        if config.use_rotary_positional_embeddings:
            raise ValueError("this benchmark builds CogVideoX-2B (sin-cos positions); a rotary-embedding model "
                             "(CogVideoX-5B) would need the pipeline's rotary embeddings")
        self.schedule = cx.build_schedule("CogVideoXDDIM", COGVIDEOX_2B_SCHEDULER, options.steps)
        shape, padding = cx.latent_shape(1, case.frames, case.height, case.width, channels=config.in_channels,
                                         patch_size_t=config.patch_size_t)
        if padding:
            raise ValueError(f"{case.frames} frames need {padding} padding latent frames; use 4k + 1 frames")
        gen = torch.Generator().manual_seed(0)
        tokens, width = config.max_text_seq_length, config.text_embed_dim
        positive = torch.randn(1, tokens, width, generator=gen).to(self.device)
        negative = torch.randn(1, tokens, width, generator=gen).to(self.device)
        velocity = cx.CogVideoXVelocity(transformer, positive, negative, COGVIDEOX_CFG, dtype=case.dtype)
        self.denoise = core.VDenoiser(velocity, self.schedule.alphas_cumprod)
        self.sigmas = self.schedule.sigmas.to(self.device)
        self.step, self.eta = self.schedule.step, self.schedule.eta
        self.layout, self.latent_frames = core.Layout(samples=1, frame_dim=1), shape[1]
        noise = torch.randn(tuple(shape), generator=gen)
        self.x = cx.initial_latent(noise, self.schedule).to(self.device, torch.float32)
        self.score_video = ScorerCall(scorer)
        self.whole = cx.CogVideoXDecoder(vae, 0)  # the VAE's own 2 latent frames per call
        self.set_decode_chunk(self.latent_frames)

    def score(self, pixels, frame_indices=None):
        """Objective of decoded frames; sampled latent-frame indices become the indices of their decoded frames."""
        if frame_indices is not None and self.score_video.takes_indices:
            frame_indices = self.decoder.decoded_frame_indices(frame_indices, pixels.shape[1])
        return self.score_video(pixels.clamp(0, 1), frame_indices)

    def pair_probe(self, z):
        """Decode one latent frame as a pair (an even decoder call, the cost of every call after the first)."""
        return self.whole(torch.cat([z, z], dim=1))

    def plan_decode_chunk(self, free_fraction: float) -> int:
        """Even latent frames per VAE call (or all of them) whose forward-mode pass fits the free memory.

        diffusers decodes `c` latent frames per call, the first call `c + F % c`; the plan keeps that call
        within what the probe of one even pair says fits.
        """
        pairs = core.plan_chunk_frames(self.pair_probe, self.x, self.layout, free_fraction)
        capacity, frames = 2 * pairs, self.latent_frames
        if capacity >= frames:
            return frames
        fitting = [c for c in range(2, capacity + 1, 2) if c + frames % c <= capacity]
        return max(fitting, default=2)

    def set_decode_chunk(self, chunk: int) -> None:
        """Decode `chunk` latent frames per VAE call (the causal convolutions carry context between calls)."""
        self.cx.check_decode_chunk(chunk, self.latent_frames)
        self.chunk = chunk
        self.decoder = self.cx.CogVideoXDecoder(self.vae, chunk)
        self.loss = core.DecodedLoss(self.decoder, self.score, self.layout, None)

    def decode_video(self, x):
        """The final decode of a sampled latent (no gradient)."""
        with torch.no_grad():
            return self.decoder(x)

    def context_kwargs(self) -> dict:
        """SamplingContext fields besides denoiser and sigmas."""
        return dict(loss=self.loss, layout=self.layout, step=self.step, eta=self.eta,
                    generator=torch.Generator(device=self.device).manual_seed(1))


# ---- measurement --------------------------------------------------------------------------------------------


def make_method(spec: RowSpec):
    """The guidance method of a row."""
    common = dict(lookahead=spec.lookahead, strength=0.1, optimizer="adam")
    guesses = {"titan_random": core.RandomGuess, "titan_score": core.ScoreGuess,
               "titan_sampled_gradient": lambda: core.SampledGradientGuess(frames=SAMPLED_FRAMES)}
    if spec.method in guesses:
        return core.Titan(guess=guesses[spec.method](), cuda_graph=spec.cuda_graph, **common)
    if spec.cuda_graph or spec.math_attention:
        raise ValueError(f"{spec.method}: the CUDA-graph and attention variants are TITAN's (forward mode) only")
    if spec.method == "exact":
        return core.baselines.ExactGradient(**common)
    others = {"freedom": core.baselines.FreeDoM, "mpgd": core.baselines.MPGD, "tfg": core.baselines.TFG,
              "doodl": lambda: core.baselines.DOODL(iterations=1)}
    if spec.method not in others:
        raise ValueError(f"unknown method {spec.method!r}")
    return others[spec.method]()


def uses_lookahead(method_name: str) -> bool:
    """Whether the method differentiates through a look-ahead traverse."""
    return method_name == "exact" or method_name.startswith("titan_")


def attention_mode(spec: RowSpec) -> str:
    """"fused" where forward-mode attention may use the flash JVP kernel in this row, else "math"."""
    if spec.math_attention or not attention.current_settings().fused or attention.fused_kernel() is None:
        return "math"
    return "fused"


def is_oom(error: BaseException) -> bool:
    """Out of device memory, however the library reported it."""
    text = str(error)
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def peak_gb(cuda: bool) -> float | None:
    """Peak allocated GB since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def release(cuda: bool) -> None:
    """Free what the last row left behind."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def measure(fn: Callable[[], object], cuda: bool, repeats: int = 1,
            warmups: int = 0) -> tuple[float | None, float, int]:
    """(peak GB over warm-ups and timed calls, median seconds, timed calls) of fn().

    The peak counter is reset before the warm-ups (a CUDA graph's capture counts). Timed calls stop after
    `repeats`, or earlier once MAX_TIMED_SECONDS were timed.
    """
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmups):
        fn()
    times: list[float] = []
    while len(times) < max(repeats, 1) and (not times or sum(times) < MAX_TIMED_SECONDS):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return peak_gb(cuda), statistics.median(times), len(times)


def warmup_family(spec: RowSpec) -> str:
    """Rows of one family run the same kernels: the first row of a family in a case gets a warm-up call."""
    return "forward" if spec.method.startswith("titan_") else "backward"


def graph_stats(method) -> dict | None:
    """Captures, replays and eager calls of a TITAN method's CUDA graphs (None without graphs)."""
    graphs = getattr(method, "graphs", None)
    if graphs is None:
        return None
    return {"captures": graphs.captures, "replays": graphs.replays, "eager_calls": graphs.eager_calls}


def run_row(problem, spec: RowSpec, options: Options, warmed: set | None = None) -> dict:
    """Measure one row: a guidance step at GUIDED_STEP (DOODL: a whole sample) and optionally a whole video."""
    warmed = set() if warmed is None else warmed
    cuda = options.cuda
    row = {"peak_gb": None, "step_s": None, "video_s": None, "status": None, "route_counts": {}}
    overrides = contextlib.ExitStack()  # closed in `finally`: the row's settings do not outlive it
    method, phase = None, "step"
    try:
        row["attention"] = attention_mode(spec)
        method = make_method(spec)
        if spec.math_attention:
            overrides.enter_context(attention.settings_override(fused=False))
        attention.route_counts.clear()
        if hasattr(method, "sample"):  # DOODL: optimises the initial latent, then samples: the step is a video
            ctx = core.SamplingContext(problem.denoise, problem.sigmas, **problem.context_kwargs())
            result = []
            row["peak_gb"], row["step_s"], row["timed_calls"] = measure(
                lambda: result.append(method.sample(problem.x.clone(), ctx)[0]), cuda)
            row["route_counts"] = dict(attention.route_counts)
            if spec.video:
                phase = "video"
                _, decode_s, _ = measure(lambda: problem.decode_video(result[-1]), cuda)
                row["video_s"] = row["step_s"] + decode_s
        else:
            ctx = core.SamplingContext(problem.denoise, problem.sigmas, **problem.context_kwargs())
            x = problem.x.clone()
            for i in range(options.guided_step):  # reach the guided step unguided, as a run would
                x = ctx.plain_step(x, i)
            family = warmup_family(spec)
            warmups = 2 if spec.cuda_graph else (0 if family in warmed else 1)  # graphs: eager call, then capture
            row["peak_gb"], row["step_s"], row["timed_calls"] = measure(
                lambda: method.guide(x, options.guided_step, ctx), cuda, options.repeats, warmups)
            warmed.add(family)
            row["route_counts"] = dict(attention.route_counts)
            if spec.video:
                phase = "video"
                if spec.cuda_graph:
                    row["graph_stats"] = graph_stats(method)
                del ctx, x
                method = make_method(spec)  # a fresh one: the step's CUDA graph (and its memory pool) goes

                def video():
                    result = core.sample(problem.denoise, problem.x.clone(), problem.sigmas, method=method,
                                       **problem.context_kwargs())
                    problem.decode_video(result.x)
                row["video_peak_gb"], row["video_s"], _ = measure(video, cuda)
        row["status"] = "ok"
    except Exception as error:  # recorded, the run goes on
        if is_oom(error):
            row["status"], row["oom_in"] = "oom", phase
            if phase == "step":
                row["peak_gb"] = peak_gb(cuda)
        else:
            row["status"] = f"error: {type(error).__name__}: {error}"[:300]
            traceback.print_exc()
        if not row["route_counts"]:
            row["route_counts"] = dict(attention.route_counts)
    finally:
        overrides.close()
    stats = graph_stats(method)
    if stats is not None:
        row["video_graph_stats" if phase == "video" else "graph_stats"] = stats
    del method
    release(cuda)
    return row


# ---- cases, budget, output ----------------------------------------------------------------------------------


def plan_free_fraction(case: Case, options: Options) -> float:
    """Share of the device's free memory a decode chunk may take: scaled down to a smaller card's where set."""
    if case.memory_target_gb is None or not options.cuda:
        return PLAN_FREE_FRACTION
    allocated = torch.cuda.memory_allocated()
    device_free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - allocated
    target_free = case.memory_target_gb * 2**30 - allocated
    if target_free <= 0:
        raise ValueError(f"the weights alone ({allocated / 2**30:.1f} GB) exceed the case's "
                         f"{case.memory_target_gb} GB target")
    return min(1.0, PLAN_FREE_FRACTION * target_free / device_free)


def setup_case(case: Case, options: Options) -> tuple[object, float | None]:
    """Build the case's models and problem, plan the decode chunk; (problem, weights GB)."""
    device, cuda = options.device, options.cuda
    release(cuda)  # what a failed previous case left (its traceback held its models)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if case.backbone == "animatediff":
        denoiser_model, vae = build_animatediff(device, case.dtype, options.smoke)
        problem_class = AnimateDiffProblem
    elif case.backbone == "cogvideox":
        denoiser_model, vae = build_cogvideox(device, case.dtype, options.smoke)
        problem_class = CogVideoXProblem
    else:
        raise ValueError(f"unknown backbone {case.backbone!r}")
    scorer = build_scorer(case.scorer, device, case.dtype, case.frames, options.smoke)
    release(cuda)
    weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else None
    problem = problem_class(denoiser_model, vae, scorer, case, options)
    # planned before anything is measured: plan_chunk_frames resets the peak counter
    chunk = options.chunk if options.chunk is not None else problem.plan_decode_chunk(plan_free_fraction(case, options))
    problem.set_decode_chunk(chunk)
    release(cuda)
    return problem, weights_gb


def row_fields(name: str, case: Case, spec: RowSpec) -> dict:
    """The fields a row has whatever happened to it."""
    return {"case": name, "backbone": case.backbone, "frames": case.frames, "height": case.height,
            "width": case.width, "dtype": str(case.dtype).replace("torch.", ""), "scorer": case.scorer,
            "method": spec.method, "lookahead": spec.lookahead if uses_lookahead(spec.method) else None,
            "attention": "math" if spec.math_attention else None, "cuda_graph": spec.cuda_graph,
            "video": spec.video, "decode_chunk": None, "memory_target_gb": case.memory_target_gb,
            "peak_gb": None, "weights_gb": None, "step_s": None, "video_s": None, "status": None,
            "route_counts": {}}


def write(path: pathlib.Path, rows: list, command: str, device_name: str,
          profile_path: pathlib.Path | None = JVP_PROFILE) -> None:
    """Write the results so far (a run cut short still leaves its finished rows)."""
    result = {"device": device_name, "torch": torch.__version__, "command": command, "rows": rows}
    if profile_path is not None and profile_path.exists():
        try:
            profile = json.loads(profile_path.read_text())
        except (OSError, ValueError) as error:
            print(f"warning: {profile_path} unreadable ({error}); no 'attention' section", file=sys.stderr)
        else:
            if isinstance(profile, dict) and "attention" in profile:
                result["attention"] = profile["attention"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def run_benchmark(cases: list[tuple[str, Case]], options: Options, out: pathlib.Path, command: str,
                  profile_path: pathlib.Path | None = JVP_PROFILE, started: float | None = None,
                  on_setup: Callable | None = None, prior_rows: list[dict] = ()) -> list[dict]:
    """Run the cases in order, one row at a time, writing JSON (after `prior_rows`) after every row; returns rows."""
    started = time.monotonic() if started is None else started
    device_name = torch.cuda.get_device_name(options.device) if options.cuda else str(options.device)
    rows: list[dict] = []

    def over_budget() -> bool:
        return options.max_minutes is not None and time.monotonic() - started > options.max_minutes * 60

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(out, [*prior_rows, *rows], command, device_name, profile_path)

    for name, case in cases:
        if over_budget():
            for spec in case.rows:
                record({**row_fields(name, case, spec), "status": "skipped: time budget"})
            continue
        try:
            problem, weights_gb = setup_case(case, options)
            if on_setup is not None:
                on_setup(problem)
        except Exception as error:  # the case's rows say why none ran
            status = "oom" if is_oom(error) else f"error: setup: {type(error).__name__}: {error}"[:300]
            if not is_oom(error):
                traceback.print_exc()
            for spec in case.rows:
                record({**row_fields(name, case, spec), "status": status})
            release(options.cuda)
            continue
        warmed: set = set()
        for spec in case.rows:
            planned = problem.chunk
            if spec.chunk is not None:
                problem.set_decode_chunk(spec.chunk)
            fields = {**row_fields(name, case, spec), "decode_chunk": problem.chunk, "weights_gb": weights_gb}
            try:
                if over_budget():
                    record({**fields, "status": "skipped: time budget"})
                    continue
                record({**fields, **run_row(problem, spec, options, warmed)})
            finally:
                if spec.chunk is not None:
                    problem.set_decode_chunk(planned)
        del problem
        release(options.cuda)
    return rows


def fmt(value, spec: str) -> str:
    """A number in a table cell, or '-'."""
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    """The results as a text table."""
    header = (f"{'case':18s} {'method':24s} {'look':>5s} {'attn':>5s} {'graph':>5s} {'chunk':>5s} "
              f"{'peak GB':>8s} {'-weights':>8s} {'step s':>7s} {'video s':>8s} status")
    print("\n" + header)
    for r in rows:
        # rows without a forward-mode attention call (the backprop baselines) show "-"
        used_attention = r["attention"] if r["route_counts"] or r["status"] != "ok" else "-"
        free = None if r["peak_gb"] is None or r["weights_gb"] is None else r["peak_gb"] - r["weights_gb"]
        print(f"{r['case']:18s} {r['method']:24s} {fmt(r['lookahead'], ''):>5s} {used_attention or '-':>5s} "
              f"{'yes' if r['cuda_graph'] else 'no':>5s} {fmt(r['decode_chunk'], 'd'):>5s} "
              f"{fmt(r['peak_gb'], '.1f'):>8s} {fmt(free, '.1f'):>8s} {fmt(r['step_s'], '.2f'):>7s} "
              f"{fmt(r['video_s'], '.1f'):>8s} {r['status']}")


# ---- entry points -------------------------------------------------------------------------------------------


def chunk_argument(text: str) -> int | None:
    """--chunk: 'auto' (planned per case) or a positive number of frames."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--chunk must be 'auto' or a whole number of frames, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"--chunk must be >= 1 frame, got {value}")
    return value


PRECISIONS = ("default", "strict")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision, shared with benchmarks/jvp_profile.py."""
    parser.add_argument("--precision", choices=PRECISIONS, default="default",
                        help="fp32 math: 'default' = PyTorch's defaults (TF32 inside cuDNN convolutions, full fp32 "
                             "matmuls), what ComfyUI runs; 'strict' = no TF32 anywhere (cuDNN then picks "
                             "convolution algorithms with a ~14 GB workspace on the SD1.5 UNet)")


def set_precision(precision: str) -> None:
    """fp32 math mode of the run (see --precision)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = precision == "default"


def main() -> None:
    """Run the chosen cases, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE",
                        help=f"cases in the order to run (default: all): {', '.join(CASES)}")
    parser.add_argument("--chunk", type=chunk_argument, default=None, metavar="auto|N",
                        help="decode chunk inside the objective (frames; CogVideoX: latent frames per VAE call, even "
                             "or all); default auto: planned per case with guidance_core.plan_chunk_frames")
    parser.add_argument("--repeats", type=int, default=2,
                        help=f"timed guidance steps per row (fewer once {MAX_TIMED_SECONDS:.0f} s were timed)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new row after this many minutes; the rest are recorded as skipped")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR / "paper_scale.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of other cases already in --out (a run split over several sessions)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the code paths only")
    add_precision_argument(parser)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.smoke:
        return smoke()
    if not torch.cuda.is_available():
        raise SystemExit("the paper-scale benchmark needs a CUDA GPU; use --smoke on the CPU")
    started = time.monotonic()
    set_precision(args.precision)
    options = Options(torch.device("cuda"), repeats=args.repeats, chunk=args.chunk, max_minutes=args.max_minutes)
    command = "python -m benchmarks.paper_scale " + " ".join(sys.argv[1:])
    if "--precision" not in sys.argv:
        command += f" (precision {args.precision})"
    prior_rows, command = merged_rows(args.out, args.cases, command) if args.merge else ([], command)
    rows = run_benchmark([(name, CASES[name]) for name in args.cases], options, args.out, command, started=started,
                         prior_rows=prior_rows)
    print_table([*prior_rows, *rows])


def merged_rows(path: pathlib.Path, cases: list[str], command: str) -> tuple[list[dict], str]:
    """(rows of other cases already in `path`, the commands of both runs) for --merge."""
    if not path.exists():
        return [], command
    try:
        previous = json.loads(path.read_text())
        rows, previous_command = previous["rows"], previous["command"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--merge: {path} is not a results file of this benchmark ({error}); "
                         "choose another --out or drop --merge")
    kept = [r for r in rows if r.get("case") not in cases]
    return kept, f"{previous_command} ; {command}" if kept else command


def smoke() -> None:
    """Every case and row on tiny models on the CPU, with checks (no figures: a check that the benchmark runs)."""
    torch.manual_seed(0)
    options = Options(torch.device("cpu"), steps=4, guided_step=1, repeats=1, smoke=True)
    cases = [(name, smoke_case(case)) for name, case in CASES.items()]
    # an explicit even chunk below the CogVideoX latent length: several VAE calls, the first one odd
    cog = smoke_case(CASES["cogvideox2b_dover"])
    chunk_cases = [("cogvideox2b_dover", dataclasses.replace(cog, frames=17, rows=cog.rows[:1]))]
    probes = []

    def check_probe(problem) -> None:  # the CUDA-only chunk planner's probe must be forward-differentiable
        if isinstance(problem, CogVideoXProblem):
            one = problem.x[:, :1]
            with torch.no_grad(), core.forward_ad_attention():
                _, tangent = torch.func.jvp(problem.pair_probe, (one,), (torch.randn_like(one),))
            probes.append(tuple(tangent.shape))

    fused_before = attention.current_settings().fused
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(folder) / "paper_scale_smoke.json"
        profile = pathlib.Path(folder) / "jvp_profile.json"
        profile.write_text(json.dumps({"attention": {"smoke": True}}))
        rows = run_benchmark(cases, options, out, "smoke", profile_path=profile, on_setup=check_probe)
        written = json.loads(out.read_text())
        chunk_options = dataclasses.replace(options, chunk=2)
        chunk_rows = run_benchmark(chunk_cases, chunk_options, out, "smoke --chunk 2", profile_path=None)
        chunk_written = json.loads(out.read_text())
    print_table(rows + chunk_rows)
    problems = check_smoke_rows(rows + chunk_rows)
    if set(written) != {"device", "torch", "command", "rows", "attention"} or written["attention"] != {"smoke": True}:
        problems.append(f"JSON top level {sorted(written)} (attention {written.get('attention')!r})")
    if "attention" in chunk_written or len(written["rows"]) != len(rows):
        problems.append("JSON rows or the jvp_profile hook wrong")
    if attention.current_settings().fused != fused_before:
        problems.append("the fused attention setting was not restored")
    if len(probes) != 1 or probes[0][1] != 8:  # one latent frame decoded as an even pair: 2 x 4 video frames
        problems.append(f"CogVideoX chunk probe decoded {probes}, expected one (1, 8, 3, h, w) pair")
    if [r["decode_chunk"] for r in chunk_rows] != [2]:
        problems.append(f"--chunk 2 not applied: {[r['decode_chunk'] for r in chunk_rows]}")
    if problems:
        raise SystemExit("smoke failed:\n  " + "\n  ".join(problems))
    print(f"\nsmoke ok: {len(rows) + len(chunk_rows)} rows")


def check_smoke_rows(rows: list[dict]) -> list[str]:
    """What is wrong with the rows of a CPU smoke run (graph rows must fail cleanly: graphs need CUDA)."""
    problems = []
    for r in rows:
        label = f"{r['case']} {r['method']} la={r['lookahead']} graph={r['cuda_graph']} attn={r['attention']}"
        if r["cuda_graph"]:
            if not (r["status"].startswith("error: ValueError") and "CUDA" in r["status"]):
                problems.append(f"{label}: expected the CPU's CUDA-graph error row, got {r['status']}")
            continue
        if r["status"] != "ok":
            problems.append(f"{label}: {r['status']}")
            continue
        if r["step_s"] is None or (r["video"] and r["video_s"] is None):
            problems.append(f"{label}: missing timings")
        if r["method"].startswith("titan_") and not r["route_counts"]:
            problems.append(f"{label}: no attention call went through the forward-AD router")
        if r["attention"] == "math" and set(r["route_counts"]) - {"math"}:
            problems.append(f"{label}: MATH row routed {r['route_counts']}")
        frames = r["frames"] if r["backbone"] == "animatediff" else (r["frames"] - 1) // 4 + 1
        if r["case"] != "cogvideox2b_dover" or r["frames"] == 9:  # auto plan on the CPU: all frames at once
            if r["decode_chunk"] != frames:
                problems.append(f"{label}: auto decode chunk {r['decode_chunk']}, expected {frames} on the CPU")
    return problems


if __name__ == "__main__":
    main()
