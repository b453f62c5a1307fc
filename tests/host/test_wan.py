"""Wan 2.1 / 2.2 (ComfyUI's native comfy/ldm/wan) with TitanGuideSampler, through the real host on the CPU.

Tiny random-init files in the official key layouts (tests/tiny_video_models.py, built from ComfyUI's own classes)
go into the host's diffusion_models/ and vae/ folders (the video_host fixture) and load through the official
workflow's nodes: UNETLoader, ModelSamplingSD3 (shift 8), VAELoader, EmptyHunyuanLatentVideo /
Wan22ImageToVideoLatent, VAEDecode. Prompts are encoded by the tiny SD1.5 checkpoint's CLIP-L (the tiny Wan files
take 768-wide context; see tiny_video_models.py).
"""

from __future__ import annotations

import pytest
import torch

import graphs
from objectives.color import ColorLoss
from testing.comfy_host import ComfyExecutionError
from tiny_checkpoints import TINY_SD15_FILENAME
from video_graphs import (GUESSES, METHODS, add_guided_variants, add_sampler, add_select_in_custom_advanced,
                          assert_guided_below_unguided, assert_select_matches_the_sampler_node, report, saved_latent,
                          video_of)


def wan_sources(prompt: graphs.Prompt, unet: str, vae: str, *, width=32, height=32, length=9, five_b=False,
                shift=8.0, prefix="") -> dict:
    """Loader nodes of the official Wan workflow; returns the links TitanGuideSampler takes."""
    prompt.add(f"{prefix}ckpt", "CheckpointLoaderSimple", ckpt_name=TINY_SD15_FILENAME)
    prompt.add(f"{prefix}positive", "CLIPTextEncode", text="a red car", clip=graphs.link(f"{prefix}ckpt", 1))
    prompt.add(f"{prefix}negative", "CLIPTextEncode", text="", clip=graphs.link(f"{prefix}ckpt", 1))
    prompt.add(f"{prefix}unet", "UNETLoader", unet_name=unet, weight_dtype="default")
    prompt.add(f"{prefix}shift", "ModelSamplingSD3", model=graphs.link(f"{prefix}unet"), shift=shift)
    prompt.add(f"{prefix}vae", "VAELoader", vae_name=vae)
    if five_b:
        prompt.add(f"{prefix}latent", "Wan22ImageToVideoLatent", vae=graphs.link(f"{prefix}vae"), width=width,
                   height=height, length=length, batch_size=1)
    else:
        prompt.add(f"{prefix}latent", "EmptyHunyuanLatentVideo", width=width, height=height, length=length,
                   batch_size=1)
    return {"model": graphs.link(f"{prefix}shift"), "positive": graphs.link(f"{prefix}positive"),
            "negative": graphs.link(f"{prefix}negative"), "latent": graphs.link(f"{prefix}latent"),
            "vae": graphs.link(f"{prefix}vae")}


def test_wan21_every_guess_lowers_the_objective_frames_and_mapping(video_host):
    """Wan 2.1 T2V: for every guess type (and the backprop baselines exact gradient and FreeDoM, which need
    ComfyUI's differentiable RoPE) the guided video is redder than the unguided one at the same seed; the decode
    gives 9 frames from 3 latent frames; the mixed guess's pixel frames 0 and 8 map to latent frames 0, 2."""
    prompt = graphs.Prompt()
    sources = wan_sources(prompt, "tiny_wan21_t2v.safetensors", "tiny_wan21_vae.safetensors")
    objective = graphs.add_color_objective(prompt)
    guided = add_guided_variants(prompt, sources, objective)
    assert guided == [*GUESSES, *METHODS]
    outputs = video_host.run(prompt.build(), timeout=1500)

    assert video_of(video_host, outputs, "plain_save_images").shape == (1, 9, 3, 32, 32)  # VAEDecode: 1 + 4 (3 - 1)
    assert_guided_below_unguided(video_host, outputs, guided, GUESSES,
                                 "3 latent frame(s) -> 9 frame(s) per video in one VAE call")
    assert "frames [0, 8]" in report(outputs, "mixed")  # as typed: decoded frames
    assert saved_latent(video_host, outputs, "plain_save_latent").shape == (1, 16, 3, 4, 4)


def test_wan21_keyframes_through_a_sampled_subset_of_latent_frames(video_host):
    """Frame interpolation toward red keyframes at video frames 0 and 8 (of 9), sampled-gradient guess on latent
    frames 0 and 2 decoded on their own: the objective gets their frames' full-video indices, and the guided
    keyframes end closer to the target than unguided ones."""
    prompt = graphs.Prompt()
    sources = wan_sources(prompt, "tiny_wan21_t2v.safetensors", "tiny_wan21_vae.safetensors")
    prompt.add("red", "EmptyImage", width=32, height=32, batch_size=2, color=0xFF0000)
    prompt.add("keys", "TitanFrameInterpolationObjective", keyframes=graphs.link("red"), frame_indices="0, -1",
               space="pixels", weight=1.0)
    for name, end in (("keyed", 1.0), ("plain", 0.0)):
        add_sampler(prompt, name, sources, graphs.link("keys"), strength=0.15, guidance_end=end,
                    guess={"kind": "sampled_gradient", "sampled_frames": 2})
    outputs = video_host.run(prompt.build(), timeout=900)
    target = torch.tensor([1.0, 0.0, 0.0])[:, None, None]

    def key_error(name):
        video = video_of(video_host, outputs, f"{name}_save_images")[0]
        return float(((video[[0, 8]] - target) ** 2).mean())

    assert "sampled_gradient (2 even frames, tile)" in report(outputs, "keyed")
    assert key_error("keyed") < key_error("plain") - 1e-3, (key_error("keyed"), key_error("plain"))


@pytest.mark.parametrize("overrides, message", [
    ({"guess": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "2, 9"}},
     r"frame indices \[9\] map to no latent frame: the video has 9 decoded frames"),
    ({"decode_chunk_frames": 1}, "compresses time causally and decodes a video exactly only in one call"),
    ({"vae": "sd15"}, "does not decode video latents"),
    ({"frames_per_video": 3}, "already holds one video per batch row: set it to 0"),
])
def test_wan_bad_input_gives_a_clear_error(video_host, overrides, message):
    prompt = graphs.Prompt()
    sources = wan_sources(prompt, "tiny_wan21_t2v.safetensors", "tiny_wan21_vae.safetensors")
    if overrides.pop("vae", None):
        sources["vae"] = graphs.link("ckpt", 2)
    objective = graphs.add_color_objective(prompt)
    add_sampler(prompt, "bad", sources, objective, save_images=False, **overrides)
    with pytest.raises(ComfyExecutionError, match=message):
        video_host.run(prompt.build(), timeout=300)


def test_wan22_5b_guided_below_unguided_with_its_48_channel_vae(video_host):
    """Wan 2.2 TI2V 5B layout (48 channels, the Wan 2.2 VAE at 16x space), image-to-video from a start image:
    guided redder than unguided, the start image's latent frame kept."""
    prompt = graphs.Prompt()
    sources = wan_sources(prompt, "tiny_wan22_ti2v.safetensors", "tiny_wan22_vae.safetensors", five_b=True,
                          length=5)
    prompt.add("start", "EmptyImage", width=32, height=32, batch_size=1, color=0x2080C0)
    prompt.nodes["latent"]["inputs"]["start_image"] = graphs.link("start")  # image-to-video
    prompt.add("input_save", "SaveLatent", samples=sources["latent"], filename_prefix="wan/i2v_input")
    objective = graphs.add_color_objective(prompt)
    add_sampler(prompt, "guided", sources, objective, guess={"kind": "sampled_gradient", "sampled_frames": 2},
                strength=0.15)
    add_sampler(prompt, "plain", sources, objective, guidance_end=0.0)
    outputs = video_host.run(prompt.build(), timeout=1500)
    plain = video_of(video_host, outputs, "plain_save_images")
    assert plain.shape == (1, 5, 3, 32, 32)
    assert "2 latent frame(s) -> 5 frame(s)" in report(outputs, "guided")
    color = ColorLoss()
    assert float(color(video_of(video_host, outputs, "guided_save_images"))) < float(color(plain)) - 1e-3

    def latent(node):
        return saved_latent(video_host, outputs, node)

    start, guided = latent("input_save"), latent("guided_save_latent")
    assert guided.shape == start.shape == (1, 48, 2, 2, 2)
    # the start image's latent frame stays as encoded (the denoise mask keeps it), guidance moves the others
    assert torch.allclose(guided[:, :, 0], start[:, :, 0], atol=1e-4), float((guided - start)[:, :, 0].abs().max())
    assert not torch.allclose(guided[:, :, 1], latent("plain_save_latent")[:, :, 1], atol=1e-3)


def test_wan22_expert_pair_switches_by_noise_level_like_the_official_two_samplers(video_host):
    """TitanWanExperts: unguided, it reproduces the official workflow (KSamplerAdvanced on the high-noise expert
    for the first steps, then on the low-noise expert) when the boundary lies between those steps' sigmas; with
    the boundary at 0 / above 1 it is the high / low expert alone; guided, it lowers the objective."""
    prompt = graphs.Prompt()
    high = wan_sources(prompt, "tiny_wan22_high.safetensors", "tiny_wan21_vae.safetensors", prefix="h_")
    prompt.add("low_unet", "UNETLoader", unet_name="tiny_wan22_low.safetensors", weight_dtype="default")
    prompt.add("low", "ModelSamplingSD3", model=graphs.link("low_unet"), shift=8.0)
    objective = graphs.add_color_objective(prompt)
    # 4 steps, shift 8, "normal": sigmas 1, 0.942, 0.804, 0.060, 0 -> boundary 0.9 switches after step 2 of 4
    for name, boundary in (("pair", 0.9), ("all_high", 0.0), ("all_low", 1.0)):
        prompt.add(f"{name}_model", "TitanWanExperts", high_noise_model=high["model"],
                   low_noise_model=graphs.link("low"), boundary=boundary)
        sources = {**high, "model": graphs.link(f"{name}_model")}
        graphs.add_titan_sampler(prompt, name, sources, objective, seed=5, steps=4, guidance_end=0.0)
        graphs.add_outputs(prompt, name, f"wan/{name}", high["vae"], report=False)
    sources = {**high, "model": graphs.link("pair_model")}
    graphs.add_titan_sampler(prompt, "guided", sources, objective, seed=5, steps=4, lookahead=-1, strength=0.15,
                             guess=graphs.add_guess(prompt, "guided_guess", kind="sampled_gradient"))
    graphs.add_outputs(prompt, "guided", "wan/guided", high["vae"], images=True)
    graphs.add_titan_sampler(prompt, "pair_plain", sources, objective, seed=5, steps=4, guidance_end=0.0)
    graphs.add_outputs(prompt, "pair_plain", "wan/pair_plain", high["vae"], images=True, report=False)
    common = dict(noise_seed=5, steps=4, cfg=1.0, sampler_name="euler", scheduler="normal",
                  positive=high["positive"], negative=high["negative"])
    prompt.add("ks_high", "KSamplerAdvanced", model=high["model"], add_noise="enable", latent_image=high["latent"],
               start_at_step=0, end_at_step=2, return_with_leftover_noise="enable", **common)
    prompt.add("ks_low", "KSamplerAdvanced", model=graphs.link("low"), add_noise="disable",
               latent_image=graphs.link("ks_high"), start_at_step=2, end_at_step=4,
               return_with_leftover_noise="disable", **common)
    prompt.add("ks_save", "SaveLatent", samples=graphs.link("ks_low"), filename_prefix="wan/official")
    prompt.add("ksh", "KSampler", model=high["model"], seed=5, steps=4, cfg=1.0, sampler_name="euler",
               scheduler="normal", positive=high["positive"], negative=high["negative"],
               latent_image=high["latent"], denoise=1.0)
    prompt.add("ksh_save", "SaveLatent", samples=graphs.link("ksh"), filename_prefix="wan/high_only")
    outputs = video_host.run(prompt.build(), timeout=1500)

    def latent(node):
        return saved_latent(video_host, outputs, node)

    official, pair = latent("ks_save"), latent("pair_save_latent")
    assert torch.allclose(pair, official, atol=1e-4), float((pair - official).abs().max())
    assert torch.allclose(latent("all_high_save_latent"), latent("ksh_save"), atol=1e-4)
    assert not torch.allclose(latent("all_low_save_latent"), latent("all_high_save_latent"), atol=1e-3)
    assert not torch.allclose(pair, latent("all_high_save_latent"), atol=1e-3)
    color = ColorLoss()
    guided = float(color(video_of(video_host, outputs, "guided_save_images")))
    plain = float(color(video_of(video_host, outputs, "pair_plain_save_images")))
    assert guided < plain - 1e-3, (guided, plain)


def test_wan_through_sampler_custom_advanced_matches_the_sampler_node(video_host):
    """TitanGuideSamplerSelect in SamplerCustomAdvanced (CFGGuider on the Wan model, the expert pair's MODEL too)
    gives the same guided latent as TitanGuideSampler at the same seed."""
    prompt = graphs.Prompt()
    sources = wan_sources(prompt, "tiny_wan21_t2v.safetensors", "tiny_wan21_vae.safetensors")
    add_select_in_custom_advanced(prompt, sources, graphs.add_color_objective(prompt))
    outputs = video_host.run(prompt.build(), timeout=900)
    assert_select_matches_the_sampler_node(video_host, outputs, (1, 16, 3, 4, 4))


def test_wan_gpu_benchmark_runs_every_row_on_tiny_files(comfyui_dir, tmp_path):
    """benchmarks/wan_gpu.py --tiny (the GPU command's script, on the CPU): KSampler, TITAN and FreeDoM rows run
    through ComfyUI's node classes and decode 5 frames."""
    import json
    import subprocess
    import sys

    from testing.comfy_host import REPO_ROOT, default_python

    out = tmp_path / "wan_gpu.json"
    result = subprocess.run([default_python(), "-m", "benchmarks.wan_gpu", "--comfyui", str(comfyui_dir), "--tiny",
                             "--steps", "2", "--scratch", str(tmp_path / "weights"), "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["row"], r["result"], r["decoded_frames"]) for r in rows] == [
        ("ksampler", "ok", 5), ("titan", "ok", 5), ("freedom", "ok", 5)]
    assert "method titan" in rows[1]["report"] and "method freedom" in rows[2]["report"]
