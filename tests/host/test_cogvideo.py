"""CogVideoX (kijai's ComfyUI-CogVideoXWrapper) with TITAN-Guide: adapter numerics and the real host graph.

Direct tests build tiny random CogVideoX models with diffusers' own classes and check, in float64, that the
forward-mode pass through transformer + look-ahead + causal VAE equals autograd, that the unguided loop equals
diffusers' scheduler steps, and what is and is not exact about the VAE's temporal chunking. Host tests save the
tiny models in the folder layout the wrapper's DownloadAndLoadCogVideoModel reads, load them through the real
wrapper nodes and run loader -> CogVideoTextEncode -> TitanGuideCogVideoSampler -> CogVideoDecode -> save.
"""

import json
import math
import os
import shutil
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import guidance_core as core
from testing.comfy_host import ComfyExecutionError
from integrations import cogvideox as cx
from objectives.color import ColorLoss

# diffusers is installed by scripts/setup.sh (the CogVideoXWrapper needs it): a missing one must fail, not skip
import diffusers  # noqa: E402
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.embeddings import get_3d_rotary_pos_embed  # noqa: E402

# The wrapper's configs/scheduler_config_5b.json (CogVideoX-5b): v-prediction, zero terminal SNR, trailing steps.
SCHEDULER_CONFIG_5B = {
    "_class_name": "CogVideoXDDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "sample_max_value": 1.0,
    "set_alpha_to_one": True, "snr_shift_scale": 1.0, "steps_offset": 0, "timestep_spacing": "trailing",
    "trained_betas": None,
}
LATENT_FRAMES, LATENT_SIZE, HEAD_DIM = 3, 4, 16  # 9 video frames of 32 x 32


def tiny_transformer(rotary: bool, seed: int = 0, text_dim: int = 4096) -> CogVideoXTransformer3DModel:
    """A one-block CogVideoX transformer (2 heads of 16) with random weights."""
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=HEAD_DIM, in_channels=16, out_channels=16, time_embed_dim=32,
        text_embed_dim=text_dim, num_layers=1, sample_width=LATENT_SIZE, sample_height=LATENT_SIZE,
        sample_frames=4 * (LATENT_FRAMES - 1) + 1, max_text_seq_length=77,
        use_rotary_positional_embeddings=rotary).eval()


def tiny_vae(seed: int = 1) -> AutoencoderKLCogVideoX:
    """A CogVideoX VAE with the real layout (8x space, 4x time, 16 latent channels) and 8 channels per block."""
    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                                  latent_channels=16, sample_height=32, sample_width=32, scaling_factor=0.7).eval()


def rotary_embeddings(frames: int = LATENT_FRAMES, size: int = LATENT_SIZE):
    """diffusers' 3-D RoPE for a (frames, size/2, size/2) token grid (as its CogVideoX pipeline builds it)."""
    grid = size // 2
    return get_3d_rotary_pos_embed(embed_dim=HEAD_DIM, crops_coords=((0, 0), (grid, grid)), grid_size=(grid, grid),
                                   temporal_size=frames)


# --------------------------------------------------------------------------------------------------------
# Direct tests (no host)
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rotary", [False, True], ids=["sincos-2b", "rope-5b"])
def test_jvp_through_transformer_lookahead_and_vae_equals_autograd(rotary, one_thread):
    """f = colour(decode(look-ahead x0(x))) through the CFG'd transformer and the causal VAE, in float64."""
    transformer, vae = tiny_transformer(rotary).double(), tiny_vae().double()
    generator = torch.Generator().manual_seed(5)
    # 77 tokens: the sin-cos (2b-style) model adds positional embeddings for max_text_seq_length text tokens
    positive = torch.randn(1, 77, 4096, generator=generator, dtype=torch.float64) * 0.3
    negative = torch.zeros(1, 60, 4096, dtype=torch.float64)  # shorter: zero-padded as the wrapper does
    rope = tuple(r.double() for r in rotary_embeddings()) if rotary else None
    schedule = cx.build_schedule("CogVideoXDDIM", SCHEDULER_CONFIG_5B, 4)
    velocity = cx.CogVideoXVelocity(transformer, positive, negative, 6.0, image_rotary_emb=rope)
    denoise = core.VDenoiser(velocity, schedule.alphas_cumprod)
    decoder = cx.CogVideoXDecoder(vae)
    objective = ColorLoss((1.0, 0.2, 0.0))
    sigmas = core.lookahead_sigmas(schedule.sigmas[1:], 1)  # from the second step, one step ahead, then Tweedie

    def f(x):
        return objective(decoder(core.unroll(denoise, x, sigmas)))

    x = torch.randn(1, LATENT_FRAMES, 16, LATENT_SIZE, LATENT_SIZE, generator=generator, dtype=torch.float64)
    x = x * float(schedule.sigmas[1])
    tangent = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    loss, grad = core.exact_gradient(f, x)
    reference = (grad * tangent).sum()
    # diffusers' RoPE computes in float32 (x.float() in apply_rotary_emb), so the rotary model agrees to ~1e-7
    rtol = 1e-5 if rotary else 1e-9
    for estimator in ("jvp", "dual"):
        value, derivative = core.directional_derivative(f, x, tangent, estimator)
        assert torch.allclose(value, loss, rtol=1e-12)
        assert torch.allclose(derivative, reference, rtol=rtol, atol=0), (estimator, derivative, reference)
    assert abs(float(reference)) > 1e-6  # a real derivative, not zero through a dead path


EXACT_SCHEDULERS = [name for name, m in cx.WRAPPER_SCHEDULERS.items() if m.exact]


@pytest.mark.parametrize("name", EXACT_SCHEDULERS)
def test_unguided_loop_equals_diffusers_scheduler(name, one_thread):
    """Same noise stream, timesteps and model calls: guidance_core's steps give diffusers' samples.

    float32, as the node runs (its latents are float32; the ancestral noise is drawn in float32 by both).
    """
    mapping = cx.WRAPPER_SCHEDULERS[name]
    transformer = tiny_transformer(rotary=True)
    generator = torch.Generator().manual_seed(11)
    positive = torch.randn(1, 7, 4096, generator=generator) * 0.3
    negative = torch.randn(1, 7, 4096, generator=generator) * 0.3
    velocity = cx.CogVideoXVelocity(transformer, positive, negative, 6.0,
                                    image_rotary_emb=rotary_embeddings())
    shape = (1, LATENT_FRAMES, 16, LATENT_SIZE, LATENT_SIZE)

    scheduler = getattr(diffusers.schedulers, mapping.diffusers_class).from_config(SCHEDULER_CONFIG_5B)
    scheduler.set_timesteps(4)
    stream = torch.Generator().manual_seed(3)
    z = torch.randn(shape, generator=stream) * scheduler.init_noise_sigma
    takes_generator = "generator" in scheduler.step.__code__.co_varnames
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = velocity(scheduler.scale_model_input(z, t), torch.as_tensor(float(t), dtype=torch.float64))
            z = scheduler.step(v, t, z, return_dict=False, **({"generator": stream} if takes_generator else {}))[0]

    schedule = cx.build_schedule(name, SCHEDULER_CONFIG_5B, 4)
    assert schedule.timesteps.tolist() == torch.unique_consecutive(scheduler.timesteps.round().long()).tolist()
    stream = torch.Generator().manual_seed(3)
    x = cx.initial_latent(torch.randn(shape, generator=stream), schedule)
    # the step noise continues the initial noise's stream, as the wrapper's pipeline draws it
    out = core.sample(core.VDenoiser(velocity, schedule.alphas_cumprod), x, schedule.sigmas, step=schedule.step,
                    eta=schedule.eta, layout=core.Layout(1, 1), generator=torch.Generator().manual_seed(99),
                    noise_generator=stream).x
    # Euler's sigma table is float32 in diffusers; the zero-SNR entry is lifted to 1e-12 here (see MIN_ALPHAS_CUMPROD)
    assert torch.allclose(out, z, atol=1e-4 * float(z.abs().max()), rtol=0), float((out - z).abs().max())


def test_every_wrapper_scheduler_builds_and_lcm_is_refused():
    for name in cx.SCHEDULER_NAMES:
        schedule = cx.build_schedule(name, SCHEDULER_CONFIG_5B, 5)
        assert schedule.sigmas[-1] == 0 and bool((schedule.sigmas[:-1] > 0).all())
        assert bool((schedule.sigmas[:-2] > schedule.sigmas[1:-1]).all()), name  # strictly decreasing
        assert torch.isfinite(schedule.sigmas).all()
    assert cx.DEFAULT_SCHEDULER in cx.SCHEDULER_NAMES
    with pytest.raises(ValueError, match="LCM"):
        cx.build_schedule("LCMScheduler", SCHEDULER_CONFIG_5B, 4)
    with pytest.raises(ValueError, match="unknown CogVideoX scheduler"):
        cx.build_schedule("euler_ancestral", SCHEDULER_CONFIG_5B, 4)
    with pytest.raises(ValueError, match="v_prediction"):
        cx.build_schedule("DDIM", {**SCHEDULER_CONFIG_5B, "prediction_type": "epsilon"}, 4)
    with pytest.raises(ValueError, match="cannot make 3 steps"):
        cx.build_schedule("PNDM", SCHEDULER_CONFIG_5B, 3)  # diffusers' PNDM warm-up fails for 3 trailing steps
    with pytest.raises(ValueError, match="keeps no step"):
        cx.build_schedule("DDIM", SCHEDULER_CONFIG_5B, 4, denoise_strength=0.1)
    partial = cx.build_schedule("CogVideoXDDIM", SCHEDULER_CONFIG_5B, 4, denoise_strength=0.5)
    assert partial.timesteps.tolist() == [499, 249]  # the wrapper's get_timesteps keeps the last int(4 * 0.5)


def test_dynamic_cfg_of_cogvideox_dpm_is_applied_per_timestep():
    """CogVideoXDPMScheduler: the wrapper's pipeline mixes v with 1 + cfg (1 - cos(pi ((n - t) / n)^5)) / 2."""
    cond_out, uncond_out = torch.full((1, 1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1, 1), 1.0)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, hidden_states, encoder_hidden_states, timestep, image_rotary_emb=None, return_dict=False):
            # batch 2 = [negative, positive] (cfg > 1); batch 1 = positive only
            out = torch.cat([uncond_out, cond_out]) if hidden_states.shape[0] == 2 else cond_out
            return (out.expand(hidden_states.shape),)

    embeds = torch.zeros(1, 3, 8)
    velocity = cx.CogVideoXVelocity(Fixed(), embeds, embeds, 6.0, dynamic_cfg=True, steps=50)
    for t in (999.0, 520.0, 19.0):
        v = velocity(torch.zeros(1, 1, 1, 1, 1), torch.tensor(t))
        expected = 1 + 6.0 * (1 - math.cos(math.pi * ((50 - t) / 50) ** 5.0)) / 2
        assert float(v) == pytest.approx(1.0 + expected * 1.0)
    assert float(cx.CogVideoXVelocity(Fixed(), embeds, embeds, 6.0)(torch.zeros(1, 1, 1, 1, 1),
                                                                   torch.tensor(5.0))) == pytest.approx(7.0)
    assert float(cx.CogVideoXVelocity(Fixed(), embeds, embeds, 1.0)(torch.zeros(1, 1, 1, 1, 1),
                                                                   torch.tensor(5.0))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="more than the positive"):
        cx.CogVideoXVelocity(Fixed(), torch.zeros(1, 3, 8), torch.zeros(1, 4, 8), 6.0)
    with pytest.raises(ValueError, match="CogVideoTextEncode"):
        cx.CogVideoXVelocity(Fixed(), [[torch.zeros(1, 3, 8), {}]], embeds, 6.0)


class FrameGroupNorm(torch.nn.Module):
    """The same GroupNorm applied to each frame on its own (statistics over one frame, not over the call)."""

    def __init__(self, norm: torch.nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        if x.dim() != 5:
            return self.norm(x)
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _frame_local_norms(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm):
            setattr(module, name, FrameGroupNorm(child))
        else:
            _frame_local_norms(child)


def test_chunked_decode_exactness_of_the_causal_vae(one_thread):
    """Chunk 0 = vae.decode (CogVideoDecode); conv caches make chunking exact; only GroupNorm statistics differ."""
    vae = tiny_vae().double()
    latents = torch.randn(1, 9, 16, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)
    decoded = {n: cx.CogVideoXDecoder(vae, n)(latents) for n in (0, 4, 9)}
    assert decoded[9].shape == (1, 33, 3, 32, 32)  # 1 + 4 * (9 - 1) frames
    reference = vae.decode(latents.permute(0, 2, 1, 3, 4) / 0.7).sample.permute(0, 2, 1, 3, 4) / 2 + 0.5
    assert torch.equal(decoded[0], reference)  # the VAE's own 2-frame batches, as CogVideoDecode decodes
    # Measured with these random weights: GroupNorm statistics over 2 vs 9 latent frames move pixels by ~0.4
    assert float((decoded[0] - decoded[9]).abs().max()) > 1e-2
    assert float((decoded[4] - decoded[9]).abs().max()) > 1e-2
    _frame_local_norms(vae)  # same weights, but every norm sees one frame: chunking must not matter at all
    frame_local = {n: cx.CogVideoXDecoder(vae, n)(latents) for n in (0, 4, 9)}
    for n in (0, 4):
        assert torch.allclose(frame_local[n], frame_local[9], atol=1e-12, rtol=0), n
    with pytest.raises(ValueError, match="odd"):
        cx.CogVideoXDecoder(vae, 3)(latents)


def test_frame_bookkeeping_between_latent_and_decoded_frames():
    decoder = cx.CogVideoXDecoder(tiny_vae())
    assert [list(g) for g in decoder.pixel_frame_groups(3, 9)] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert [list(g) for g in decoder.pixel_frame_groups(2, 8)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="matches neither"):
        decoder.pixel_frame_groups(3, 10)
    losses = torch.rand(2, 9, generator=torch.Generator().manual_seed(0))
    per_latent = decoder.latent_frame_losses(losses, 3)
    assert per_latent.shape == (2, 3)
    assert torch.allclose(per_latent.sum(dim=1), losses.mean(dim=1))  # sums to the mean-over-frames video loss
    assert torch.allclose(per_latent[:, 1], losses[:, 1:5].sum(dim=1) / 9)
    padded = cx.CogVideoXDecoder(tiny_vae(), skip_frames=1)
    assert torch.equal(padded.latent_frame_losses(losses, 4)[:, 0], torch.zeros(2))
    # latent frames 0 and 2 decoded alone (3 frames as [0], [1..4]) -> full-video frames 0 and 5..8
    assert decoder.decoded_frame_indices(torch.tensor([0, 2]), 8).tolist() == [0, 0, 0, 0, 5, 6, 7, 8]
    assert decoder.decoded_frame_indices(torch.tensor([1, 2, 3]), 9).tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="even"):
        cx.check_decode_chunk(1, 13)
    cx.check_decode_chunk(13, 13)


# --------------------------------------------------------------------------------------------------------
# Host tests: the wrapper's real loader, text encoder, decoder and the real ComfyUI server
# --------------------------------------------------------------------------------------------------------
TINY_MODEL_FORMAT = "1"
TINY_CLIP_L_NAME = "titan_guide_tiny_clip_l.safetensors"
WRAPPER_MODEL = "THUDM/CogVideoX-5b"  # DownloadAndLoadCogVideoModel reads models/CogVideo/CogVideoX-5b/{transformer,vae}
NUM_FRAMES, STEPS, SEED = 9, 4, 7
HOST_SIZE = 16  # pixels: a 2 x 2 latent, one transformer token per latent frame
TARGET = (1.0, 0.0, 0.0)


def _build_tiny_cogvideox(folder) -> None:
    """Save the tiny transformer (RoPE, 5b layout) and VAE with save_pretrained, atomically."""
    if (folder / "READY").is_file() and (folder / "READY").read_text() == TINY_MODEL_FORMAT:
        return
    tmp = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.partial")
    tiny_transformer(rotary=True, seed=0).save_pretrained(tmp / "transformer")
    tiny_vae(seed=1).save_pretrained(tmp / "vae")
    (tmp / "READY").write_text(TINY_MODEL_FORMAT)
    try:
        os.replace(tmp, folder) if not folder.exists() else shutil.rmtree(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another session finished the same build first


def _extract_clip_l(sd15_checkpoint, out_path) -> None:
    """The CLIP-L text encoder of the tiny SD1.5 checkpoint as a standalone text-encoder file."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tiny_checkpoints import read_metadata

    identity = json.dumps(read_metadata(sd15_checkpoint), sort_keys=True)
    if out_path.is_file() and read_metadata(out_path).get("source") == identity:
        return
    prefix = "cond_stage_model.transformer."
    with safe_open(str(sd15_checkpoint), framework="pt") as source:
        tensors = {key[len(prefix):]: source.get_tensor(key) for key in source.keys() if key.startswith(prefix)}
    tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    save_file(tensors, str(tmp), metadata={"source": identity})
    os.replace(tmp, out_path)


@pytest.fixture(scope="module")
def cogvideo_host(comfy_host, tiny_sd15_checkpoint):
    """The host with the tiny CogVideoX in models/CogVideo and a CLIP-L text encoder in models/text_encoders."""
    from conftest import TINY_CHECKPOINT_CACHE

    TINY_CHECKPOINT_CACHE.mkdir(parents=True, exist_ok=True)
    model_cache = TINY_CHECKPOINT_CACHE / f"cogvideox_tiny_v{TINY_MODEL_FORMAT}"
    _build_tiny_cogvideox(model_cache)
    clip_cache = TINY_CHECKPOINT_CACHE / TINY_CLIP_L_NAME
    _extract_clip_l(tiny_sd15_checkpoint, clip_cache)
    links = [(model_cache, comfy_host.models_dir / "CogVideo" / WRAPPER_MODEL.split("/")[-1]),
             (clip_cache, comfy_host.models_dir / "text_encoders" / TINY_CLIP_L_NAME)]
    for target, link in links:
        if not link.exists():
            os.symlink(target, link)
    return comfy_host


def _base_graph() -> dict:
    """Loader, text encoding, size and colour objective shared by every prompt."""
    return {
        "loader": {"class_type": "DownloadAndLoadCogVideoModel", "inputs": {
            "model": WRAPPER_MODEL, "precision": "fp32", "quantization": "disabled",
            "enable_sequential_cpu_offload": False, "attention_mode": "sdpa", "load_device": "main_device"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": TINY_CLIP_L_NAME, "type": "sd3"}},
        "positive": {"class_type": "CogVideoTextEncode", "inputs": {
            "clip": ["clip", 0], "prompt": "a red ball rolling", "strength": 1.0, "force_offload": True}},
        "negative": {"class_type": "CogVideoTextEncode", "inputs": {
            "clip": ["positive", 1], "prompt": "", "strength": 1.0, "force_offload": True}},
        "size": {"class_type": "EmptyLatentImage", "inputs": {"width": HOST_SIZE, "height": HOST_SIZE,
                                                               "batch_size": 1}},
        "colour": {"class_type": "TitanColorObjective", "inputs": {
            "red": TARGET[0], "green": TARGET[1], "blue": TARGET[2], "color_weight": 1.0, "brightness": 0.5,
            "brightness_weight": 0.0, "mode": "frame"}},
    }


def _titan_sampler(strength: float, start: float = 0.0, end: float = 1.0, guess=None, **overrides) -> dict:
    inputs = {
        "model": ["loader", 0], "vae": ["loader", 1], "positive": ["positive", 0], "negative": ["negative", 0],
        "objective": ["colour", 0], "num_frames": NUM_FRAMES, "steps": STEPS, "cfg": 6.0, "seed": SEED,
        "scheduler": "CogVideoXDDIM", "samples": ["size", 0],
        "strength": strength, "strength_schedule": "constant", "lookahead": 1, "guidance_start": start,
        "guidance_end": end, "iterations": 1, "optimizer": "adam_per_step", "max_grad_norm": 0.0, "per_frame": False,
        "decode_chunk_frames": 0,
    }
    if guess is not None:
        inputs["guess"] = guess
    inputs.update(overrides)
    return {"class_type": "TitanGuideCogVideoSampler", "inputs": inputs}


def _decode_and_save(graph: dict, name: str, latent_source: str) -> None:
    graph[f"{name}_decode"] = {"class_type": "CogVideoDecode", "inputs": {
        "vae": ["loader", 1], "samples": [latent_source, 0], "enable_vae_tiling": False,
        "tile_sample_min_height": 240, "tile_sample_min_width": 360, "tile_overlap_factor_height": 0.2,
        "tile_overlap_factor_width": 0.2, "auto_tile_size": True}}
    graph[f"{name}_images"] = {"class_type": "SaveImage", "inputs": {
        "images": [f"{name}_decode", 0], "filename_prefix": f"cog_{name}_{uuid.uuid4().hex[:8]}"}}


def _video(host, outputs: dict, node: str) -> np.ndarray:
    """Frames saved by SaveImage node `node` as (F, H, W, 3) floats in [0, 1]."""
    paths = host.output_files({node: outputs[node]})
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in sorted(paths)])


def _colour_loss(video: np.ndarray) -> float:
    """The colour objective (mode "frame") on saved frames."""
    tensor = torch.from_numpy(video).permute(0, 3, 1, 2)[None]
    return float(ColorLoss(TARGET)(tensor))


def _latent(host, outputs: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    (path,) = host.output_files({node: outputs[node]}, key="latents")
    return load_file(str(path))["latent_tensor"]


@pytest.mark.host_compat
def test_cogvideo_graph_unguided_equals_wrapper_and_guidance_lowers_the_objective(cogvideo_host):
    host = cogvideo_host
    graph = _base_graph()
    graph["wrapper"] = {"class_type": "CogVideoSampler", "inputs": {
        "model": ["loader", 0], "positive": ["positive", 0], "negative": ["negative", 0], "num_frames": NUM_FRAMES,
        "steps": STEPS, "cfg": 6.0, "seed": SEED, "scheduler": "CogVideoXDDIM", "samples": ["size", 0]}}
    graph["wrapper_latent"] = {"class_type": "SaveLatent", "inputs": {
        "samples": ["wrapper", 0], "filename_prefix": f"latents/cog_wrapper_{uuid.uuid4().hex[:8]}"}}
    graph["plain"] = _titan_sampler(0.3, start=0.0, end=0.0)  # empty guidance window: plain steps only
    graph["plain_latent"] = {"class_type": "SaveLatent", "inputs": {
        "samples": ["plain", 0], "filename_prefix": f"latents/cog_plain_{uuid.uuid4().hex[:8]}"}}
    _decode_and_save(graph, "plain", "plain")
    # TITAN with Gaussian tangents (2 forward-mode passes per step)
    graph["random_guess"] = {"class_type": "TitanGradientGuess", "inputs": {
        "kind": "random", "k": 2, "sampled_frames": 2, "frame_choice": "even", "frame_indices": "",
        "expansion": "tile", "random_weight": 0.5}}
    graph["guided"] = _titan_sampler(0.3, guess=["random_guess", 0])
    _decode_and_save(graph, "guided", "guided")
    graph["guided_report"] = {"class_type": "PreviewAny", "inputs": {"source": ["guided", 1]}}
    outputs = host.run(graph, timeout=600)

    wrapper, plain = _latent(host, outputs, "wrapper_latent"), _latent(host, outputs, "plain_latent")
    assert wrapper.shape == plain.shape == (1, 3, 16, HOST_SIZE // 8, HOST_SIZE // 8)
    assert torch.allclose(plain, wrapper, atol=1e-4 * float(wrapper.abs().max()), rtol=0), \
        float((plain - wrapper).abs().max())

    plain_video, guided_video = _video(host, outputs, "plain_images"), _video(host, outputs, "guided_images")
    assert plain_video.shape == guided_video.shape == (NUM_FRAMES, HOST_SIZE, HOST_SIZE, 3)
    plain_loss, guided_loss = _colour_loss(plain_video), _colour_loss(guided_video)
    assert guided_loss < plain_loss - 0.005, (guided_loss, plain_loss)
    report = "".join(outputs["guided_report"]["text"])
    assert f"guided entries: {STEPS}, skipped (non-finite loss or gradient): 0" in report, report


GUESS_KINDS = ("random", "score", "sampled_gradient", "orthogonal", "antithetic", "mixed")


def _node_defaults(host, node_type: str) -> dict:
    """The default value of every required input of a node, from /object_info."""
    defaults = {}
    for name, spec in host.object_info(node_type)["input"]["required"].items():
        options = spec[1] if len(spec) > 1 else {}
        if "default" in options:
            defaults[name] = options["default"]
        elif spec[0] == "COMBO":
            defaults[name] = options["options"][0]
        elif isinstance(spec[0], list):
            defaults[name] = spec[0][0]
    return defaults


def test_every_gradient_guess_kind_guides_the_cogvideo_graph(cogvideo_host):
    host = cogvideo_host
    spec = host.object_info("TitanGradientGuess")["input"]["required"]["kind"]
    offered = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 nodes list combos as ("COMBO", {options})
    assert set(offered) == set(GUESS_KINDS), offered
    graph = _base_graph()
    window = {"start": 0.25, "end": 0.75}  # guide steps 1 and 2 of 4: half the forward-mode passes
    graph["plain"] = _titan_sampler(0.3, start=0.0, end=0.0)
    _decode_and_save(graph, "plain", "plain")
    for kind in GUESS_KINDS:
        graph[f"{kind}_guess"] = {"class_type": "TitanGradientGuess", "inputs": {
            "kind": kind, "k": 2 if kind == "orthogonal" else 1, "sampled_frames": 2, "frame_choice": "even", "frame_indices": "",
            "expansion": "tile", "random_weight": 0.5}}
        graph[kind] = _titan_sampler(0.3, guess=[f"{kind}_guess", 0], **window)
        _decode_and_save(graph, kind, kind)
        graph[f"{kind}_report"] = {"class_type": "PreviewAny", "inputs": {"source": [kind, 1]}}
    # The loop's "random_guess" (k=1) again: the same tangents through torch.autograd.forward_ad instead of
    # torch.func.jvp, per-frame derivatives, and the exact-gradient baseline (backprop through the wrapper's
    # transformer, whose weights were loaded as inference tensors)
    method_defaults = _node_defaults(host, "TitanGuidanceMethod")
    for name, method, extra in (("dual", "titan", {}), ("per_frame", "titan", {"per_frame": True}),
                                ("exact", "exact_gradient", {})):
        graph[f"{name}_method"] = {"class_type": "TitanGuidanceMethod", "inputs": {
            **method_defaults, "method": method, "estimator": "dual" if name == "dual" else "jvp"}}
        graph[name] = _titan_sampler(0.3, guess=["random_guess", 0], method=[f"{name}_method", 0], **window, **extra)
        _decode_and_save(graph, name, name)
        graph[f"{name}_report"] = {"class_type": "PreviewAny", "inputs": {"source": [name, 1]}}
    outputs = host.run(graph, timeout=600)

    plain_video = _video(host, outputs, "plain_images")
    plain_loss = _colour_loss(plain_video)
    losses = {}
    for kind in GUESS_KINDS:
        video = _video(host, outputs, f"{kind}_images")
        assert video.shape == plain_video.shape and np.isfinite(video).all(), kind
        assert np.abs(video - plain_video).max() > 2 / 255, f"{kind}: guidance left the video unchanged"
        report = "".join(outputs[f"{kind}_report"]["text"])
        assert "guided entries: 2, skipped (non-finite loss or gradient): 0" in report, (kind, report)
        losses[kind] = _colour_loss(video)
    for name in ("dual", "per_frame", "exact"):
        video = _video(host, outputs, f"{name}_images")
        assert video.shape == plain_video.shape and np.isfinite(video).all(), name
        report = "".join(outputs[f"{name}_report"]["text"])
        assert "guided entries: 2, skipped (non-finite loss or gradient): 0" in report, (name, report)
        losses[name] = _colour_loss(video)
    # forward_ad and torch.func.jvp give the same derivatives along the same tangents
    assert np.abs(_video(host, outputs, "dual_images") - _video(host, outputs, "random_images")).max() <= 1.5 / 255
    assert losses["exact"] < plain_loss - 0.005, (losses, plain_loss)
    # descent directions by construction (gradient of decode + objective at the Tweedie estimate)
    for kind in ("sampled_gradient", "mixed"):
        assert losses[kind] < plain_loss - 0.005, (kind, losses, plain_loss)
    assert np.mean(list(losses.values())) < plain_loss, (losses, plain_loss)


def test_cogvideo_sampler_rejects_bad_inputs_clearly(cogvideo_host):
    cases = [({"decode_chunk_frames": 1}, "decode chunk 1 is odd"),  # odd chunk below the 3 latent frames
             ({"lookahead": 4}, "look-ahead of 4 steps exceeds"),
             ({"per_frame": True, "objective": ["video_colour", 0]}, "per-frame derivatives need per-frame losses")]
    for overrides, message in cases:
        graph = _base_graph()
        graph["video_colour"] = {"class_type": "TitanColorObjective",
                                 "inputs": {**graph["colour"]["inputs"], "mode": "video"}}
        graph["bad"] = _titan_sampler(0.3, **overrides)
        graph["bad_report"] = {"class_type": "PreviewAny", "inputs": {"source": ["bad", 1]}}
        with pytest.raises(ComfyExecutionError, match=message):
            cogvideo_host.run(graph, timeout=300)
