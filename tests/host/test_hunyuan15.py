"""HunyuanVideo 1.5 (ComfyUI's native comfy/ldm/hunyuan_video, rectified flow) with TitanGuideSampler, through the
real host on the CPU.

Tiny random-init files in ComfyUI's key layout (tests/tiny_video_models.py: a 1 double + 1 single block
HunyuanVideo15 transformer and the full-size HunyuanVideo 1.5 VAE, which ComfyUI builds from a fixed config) load
through the official template's nodes: UNETLoader, ModelSamplingSD3 (shift 7), VAELoader,
EmptyHunyuanVideo15Latent / HunyuanVideo15ImageToVideo (32 channels, 4x time, 16x space), VAEDecode. Prompts are
encoded by the tiny SD1.5 checkpoint's CLIP-L (the tiny transformer takes 768-wide text; the real one Qwen2.5-VL 7B
and ByT5, which cannot be made tiny).

The VAE's frames: ComfyUI builds the 1.5 VAE (keys decoder.conv_in.conv.*) as vae_refiner with refiner_vae on, whose
first latent frame decodes to one frame: T latent frames give 1 + 4 (T - 1) frames (VAEDecode here: 3 -> 9), the
'causal' rule, as ComfyUI's upscale_ratio says.

The module runs on a host of its own on two threads (conftest's full_vae_video_host): the full-size VAE's decodes and
forward-mode passes take most of the time, and that host's VAE leaves memory with it.
"""

from __future__ import annotations

import pytest
import torch

import graphs
from objectives.color import ColorLoss
from testing.comfy_host import ComfyExecutionError
from tiny_checkpoints import TINY_SD15_FILENAME
from video_graphs import (GUESSES, add_guided_variants, add_sampler, add_select_in_custom_advanced,
                          assert_guided_below_unguided, assert_select_matches_the_sampler_node, guesses_for, report,
                          saved_latent, video_of)

# The full-size VAE's cost grows with the frames it decodes (2 latent frames: about half of 3's), so every guess
# type runs on 5 frames; one sampled-gradient run on 9 frames keeps the 3-latent-frame decode and frame mapping.
SHORT = 5
# Measured gap (issue #16 (c)): the score guess (eps / ||eps||) barely moves the objective here (|G| 3e-4 to 8e-5; the
# video's ColorLoss 0.30645 against 0.30681 unguided, under the tests' 1e-3 margin). Checked: it runs, is reported and
# moves the latent.
NOT_LOWER = ("score",)


def hunyuan15_sources(prompt: graphs.Prompt, *, length=9, width=32, height=32) -> dict:
    """Loader nodes of the official HunyuanVideo 1.5 text-to-video template; returns the links TitanGuideSampler
    takes."""
    prompt.add("ckpt", "CheckpointLoaderSimple", ckpt_name=TINY_SD15_FILENAME)
    prompt.add("positive", "CLIPTextEncode", text="a red car", clip=graphs.link("ckpt", 1))
    prompt.add("negative", "CLIPTextEncode", text="", clip=graphs.link("ckpt", 1))
    prompt.add("unet", "UNETLoader", unet_name="tiny_hunyuan15_t2v.safetensors", weight_dtype="default")
    prompt.add("shift", "ModelSamplingSD3", model=graphs.link("unet"), shift=7.0)
    prompt.add("vae", "VAELoader", vae_name="tiny_hunyuan15_vae.safetensors")
    prompt.add("latent", "EmptyHunyuanVideo15Latent", width=width, height=height, length=length, batch_size=1)
    return {"model": graphs.link("shift"), "positive": graphs.link("positive"), "negative": graphs.link("negative"),
            "latent": graphs.link("latent"), "vae": graphs.link("vae")}


def add_ksampler(prompt: graphs.Prompt, name: str, sources: dict) -> None:
    """ComfyUI's own KSampler (euler, the sampler TitanGuideSampler runs unguided) at the tests' seed and steps."""
    prompt.add(name, "KSampler", model=sources["model"], seed=5, steps=3, cfg=1.0, sampler_name="euler",
               scheduler="normal", positive=sources["positive"], negative=sources["negative"],
               latent_image=sources["latent"], denoise=1.0)
    prompt.add(f"{name}_save", "SaveLatent", samples=graphs.link(name), filename_prefix=f"hunyuan15/{name}")


def test_hunyuan15_every_guess_below_unguided_and_unguided_equals_ksampler(full_vae_video_host):
    """Every guess type (the score guess excepted, see NOT_LOWER) and FreeDoM on 5 frames (2 latent frames; mixed on
    decoded frames 0 and 4): the guided videos are redder than the unguided one at the same seed, and each report
    counts 2 latent frames -> 5 frames. On 9 frames (3 latent frames): a sampled-gradient guess on decoded frames 0
    and 8 (latent frames 0 and 2, decoded on their own to 1 + 4 frames) is redder than unguided too; unguided,
    TitanGuideSampler gives KSampler's (euler) latent. VAEDecode turns 3 latent frames into 9 frames and 2 into 5,
    and the objective's decode counted the same (the report lines; a different count is an error). All samplers share
    one prompt, so the models load once."""
    host = full_vae_video_host
    prompt = graphs.Prompt()
    sources = hunyuan15_sources(prompt, length=SHORT)
    objective = graphs.add_color_objective(prompt)
    guesses = guesses_for(SHORT)
    guided = add_guided_variants(prompt, sources, objective, guesses=guesses, methods=("freedom",),
                                 prefix="hunyuan15")
    prompt.add("latent9", "EmptyHunyuanVideo15Latent", width=32, height=32, length=9, batch_size=1)
    nine = {**sources, "latent": graphs.link("latent9")}
    add_sampler(prompt, "sampled9", nine, objective, strength=0.15, prefix="hunyuan15",
                guess={"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 8"})
    add_sampler(prompt, "plain9", nine, objective, guidance_end=0.0, prefix="hunyuan15")
    add_ksampler(prompt, "ksampler9", nine)
    outputs = host.run(prompt.build(), timeout=1500)

    assert guided == [*GUESSES, "freedom"]
    assert video_of(host, outputs, "plain_save_images").shape == (1, SHORT, 3, 32, 32)  # 1 + 4 (2 - 1) frames
    losses = assert_guided_below_unguided(host, outputs, guided, guesses,
                                          "2 latent frame(s) -> 5 frame(s) per video in one VAE call",
                                          not_lower=NOT_LOWER)
    # the gap is real while it lasts: once the score guess lowers the objective here, NOT_LOWER must lose it
    assert losses["score"] >= losses["plain"] - 1e-3, losses
    assert "frames [0, 4]" in report(outputs, "mixed")

    plain9 = video_of(host, outputs, "plain9_save_images")
    assert plain9.shape == (1, 9, 3, 32, 32)  # VAEDecode: 1 + 4 (3 - 1) frames
    text = report(outputs, "sampled9")
    assert "3 latent frame(s) -> 9 frame(s) per video in one VAE call" in text and "frames [0, 8]" in text, text
    color = ColorLoss()
    sampled9 = float(color(video_of(host, outputs, "sampled9_save_images")))
    assert sampled9 < float(color(plain9)) - 1e-3, (sampled9, float(color(plain9)), text)

    ours, official = saved_latent(host, outputs, "plain9_save_latent"), saved_latent(host, outputs, "ksampler9_save")
    assert ours.shape == (1, 32, 3, 2, 2)
    assert torch.allclose(ours, official, atol=1e-4), float((ours - official).abs().max())


def test_hunyuan15_image_to_video_keeps_the_image_conditioning(full_vae_video_host):
    """HunyuanVideo15ImageToVideo's start image (concat latent + mask on the conditioning): unguided,
    TitanGuideSampler gives KSampler's latent on that conditioning and not the text-only one; guided with the
    sampled-gradient guess it is redder than unguided."""
    host = full_vae_video_host
    prompt = graphs.Prompt()
    sources = hunyuan15_sources(prompt, length=5)
    prompt.add("start", "EmptyImage", width=32, height=32, batch_size=1, color=0x2080C0)
    prompt.add("i2v", "HunyuanVideo15ImageToVideo", positive=sources["positive"], negative=sources["negative"],
               vae=sources["vae"], width=32, height=32, length=5, batch_size=1, start_image=graphs.link("start"))
    i2v = {**sources, "positive": graphs.link("i2v", 0), "negative": graphs.link("i2v", 1),
           "latent": graphs.link("i2v", 2)}
    objective = graphs.add_color_objective(prompt)
    add_sampler(prompt, "guided", i2v, objective, strength=0.15, prefix="hunyuan15",
                guess={"kind": "sampled_gradient", "sampled_frames": 2})
    add_sampler(prompt, "plain", i2v, objective, guidance_end=0.0, prefix="hunyuan15")
    add_sampler(prompt, "text_only", sources, objective, guidance_end=0.0, save_images=False, prefix="hunyuan15")
    add_ksampler(prompt, "ksampler", i2v)
    outputs = host.run(prompt.build(), timeout=1500)

    assert "2 latent frame(s) -> 5 frame(s)" in report(outputs, "guided")
    plain = video_of(host, outputs, "plain_save_images")
    assert plain.shape == (1, 5, 3, 32, 32)
    color = ColorLoss()
    assert float(color(video_of(host, outputs, "guided_save_images"))) < float(color(plain)) - 1e-3
    ours, official = saved_latent(host, outputs, "plain_save_latent"), saved_latent(host, outputs, "ksampler_save")
    assert ours.shape == (1, 32, 2, 2, 2)
    assert torch.allclose(ours, official, atol=1e-4), float((ours - official).abs().max())
    text_only = saved_latent(host, outputs, "text_only_save_latent")
    assert not torch.allclose(ours, text_only, atol=1e-3)  # the image conditioning reached the model


def test_hunyuan15_through_sampler_custom_advanced_matches_the_sampler_node(full_vae_video_host):
    """TitanGuideSamplerSelect in SamplerCustomAdvanced (CFGGuider on the HunyuanVideo 1.5 model, ModelSamplingSD3's
    shift) gives the same guided latent as TitanGuideSampler at the same seed, and guidance moves it from the
    unguided one."""
    prompt = graphs.Prompt()
    sources = hunyuan15_sources(prompt, length=SHORT)
    add_select_in_custom_advanced(prompt, sources, graphs.add_color_objective(prompt), prefix="hunyuan15")
    outputs = full_vae_video_host.run(prompt.build(), timeout=900)
    assert_select_matches_the_sampler_node(full_vae_video_host, outputs, (1, 32, 2, 2, 2))


@pytest.mark.parametrize("overrides, message", [
    ({"guess": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 9"}},
     r"frame indices \[9\] map to no latent frame: the video has 9 decoded frames \(0..8\) from 3 latent frames"),
    ({"decode_chunk_frames": 1}, "compresses time causally and decodes a video exactly only in one call"),
])
def test_hunyuan15_bad_input_gives_a_clear_error(full_vae_video_host, overrides, message):
    prompt = graphs.Prompt()
    sources = hunyuan15_sources(prompt)
    add_sampler(prompt, "bad", sources, graphs.add_color_objective(prompt), save_images=False, prefix="hunyuan15",
                **overrides)
    with pytest.raises(ComfyExecutionError, match=message):
        full_vae_video_host.run(prompt.build(), timeout=300)
