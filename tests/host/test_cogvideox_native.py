"""Native CogVideoX (ComfyUI's comfy/ldm/cogvideo, V_PREDICTION_DDPM with zero-terminal-SNR sigmas) with
TitanGuideSampler, through the real host on the CPU.

Tiny random-init files in ComfyUI's key layout (tests/tiny_video_models.py: a 1-block CogVideoXTransformer3DModel and
the full-size CogVideoX VAE that ComfyUI builds from a fixed config) load through core nodes only: UNETLoader,
VAELoader, EmptyHunyuanLatentVideo (16 channels, 4x time, 8x space: CogVideoX's latent), VAEDecode. Prompts are
encoded by the tiny SD1.5 checkpoint's CLIP-L (the tiny transformer takes 768-wide text; the real one T5-XXL).
"""

from __future__ import annotations

import pytest
import torch

import graphs
from testing.comfy_host import ComfyExecutionError
from tiny_checkpoints import TINY_SD15_FILENAME
from video_graphs import (GUESSES, add_guided_variants, add_sampler, add_select_in_custom_advanced,
                          assert_guided_below_unguided, assert_select_matches_the_sampler_node, report, saved_latent,
                          video_of)

# Every guess type; the sampled gradient on decoded frames 0 and 8 (latent frames 0 and 2, an even subset that
# CogVideoX's VAE decodes to 4 frames each)
COGVIDEOX_GUESSES = {**GUESSES, "sampled_gradient": {"kind": "sampled_gradient", "frame_choice": "fixed",
                                                     "frame_indices": "0, 8"}}
# Measured gap (issue #16 (c)): the score guess (eps / ||eps||) does not lower the objective on native CogVideoX here:
# its forward gradient is ~0 at the first, zero-terminal-SNR sigma (|G| 9e-11 at sigma 4519, 2e-4 and 6e-4 after) and
# the video ends slightly less red than unguided (ColorLoss 0.2916 against 0.2888). Checked: it runs, is reported and
# moves the latent.
NOT_LOWER = ("score",)


def cogvideox_sources(prompt: graphs.Prompt, *, length=9, width=32, height=32) -> dict:
    """Core loader nodes of a native CogVideoX graph; returns the links TitanGuideSampler takes."""
    prompt.add("ckpt", "CheckpointLoaderSimple", ckpt_name=TINY_SD15_FILENAME)
    prompt.add("positive", "CLIPTextEncode", text="a red car", clip=graphs.link("ckpt", 1))
    prompt.add("negative", "CLIPTextEncode", text="", clip=graphs.link("ckpt", 1))
    prompt.add("unet", "UNETLoader", unet_name="tiny_cogvideox_t2v.safetensors", weight_dtype="default")
    prompt.add("vae", "VAELoader", vae_name="tiny_cogvideox_vae.safetensors")
    prompt.add("latent", "EmptyHunyuanLatentVideo", width=width, height=height, length=length, batch_size=1)
    return {"model": graphs.link("unet"), "positive": graphs.link("positive"), "negative": graphs.link("negative"),
            "latent": graphs.link("latent"), "vae": graphs.link("vae")}


def test_native_cogvideox_every_guess_below_unguided_and_unguided_equals_void_ddim(full_vae_video_host):
    """For every guess type (the sampled gradient on decoded frames 0 and 8, latent frames 0 and 2; the score guess
    excepted, see NOT_LOWER) and FreeDoM, the guided video is redder than the unguided one at the same seed.
    Unguided, TitanGuideSampler (euler = DDIM at eta 0, in x = x0 + sigma noise) gives the latent of ComfyUI's
    VOIDSampler (CogVideoX's DDIM in its training space x0 sqrt(a) + noise sqrt(1 - a)): the model sees the input it
    was trained on (ComfyUI's KSampler hands it x unscaled, about 1,400x too large at the first of the
    zero-terminal-SNR sigmas). The decode has 1 + 4 (3 - 1) = 9 frames. All samplers share one prompt, so the models
    load once."""
    host = full_vae_video_host
    prompt = graphs.Prompt()
    sources = cogvideox_sources(prompt)
    objective = graphs.add_color_objective(prompt)
    guided = add_guided_variants(prompt, sources, objective, guesses=COGVIDEOX_GUESSES, methods=("freedom",),
                                 prefix="cogvideox")
    # ComfyUI's own sampler for native CogVideoX: VOIDSampler (CogVideoX's DDIM in its training space)
    prompt.add("noise", "RandomNoise", noise_seed=5)
    prompt.add("scheduler", "BasicScheduler", model=sources["model"], scheduler="normal", steps=3, denoise=1.0)
    prompt.add("guider", "CFGGuider", model=sources["model"], positive=sources["positive"],
               negative=sources["negative"], cfg=1.0)
    prompt.add("void", "VOIDSampler")
    prompt.add("custom", "SamplerCustomAdvanced", noise=graphs.link("noise"), guider=graphs.link("guider"),
               sampler=graphs.link("void"), sigmas=graphs.link("scheduler"), latent_image=sources["latent"])
    prompt.add("void_save", "SaveLatent", samples=graphs.link("custom", 0), filename_prefix="cogvideox/void")
    outputs = host.run(prompt.build(), timeout=1500)

    assert video_of(host, outputs, "plain_save_images").shape == (1, 9, 3, 32, 32)
    assert guided == [*GUESSES, "freedom"]
    losses = assert_guided_below_unguided(host, outputs, guided, COGVIDEOX_GUESSES,
                                          "3 latent frame(s) -> 9 frame(s) per video in one VAE call",
                                          not_lower=NOT_LOWER)
    # the gap is real while it lasts: once the score guess lowers the objective here, NOT_LOWER must lose it
    assert losses["score"] >= losses["plain"] - 1e-3, losses
    assert "frames [0, 8]" in report(outputs, "sampled_gradient")
    assert "frames [0, 8]" in report(outputs, "mixed")

    ours, void = saved_latent(host, outputs, "plain_save_latent"), saved_latent(host, outputs, "void_save")
    assert ours.shape == (1, 16, 3, 4, 4)
    assert torch.allclose(ours, void, atol=1e-3), float((ours - void).abs().max())


def test_native_cogvideox_through_sampler_custom_advanced_matches_the_sampler_node(full_vae_video_host):
    """TitanGuideSamplerSelect in SamplerCustomAdvanced (CFGGuider on the native CogVideoX model) gives the same
    guided latent as TitanGuideSampler at the same seed, and guidance moves it from the unguided one."""
    prompt = graphs.Prompt()
    sources = cogvideox_sources(prompt)
    add_select_in_custom_advanced(prompt, sources, graphs.add_color_objective(prompt), prefix="cogvideox")
    outputs = full_vae_video_host.run(prompt.build(), timeout=900)
    assert_select_matches_the_sampler_node(full_vae_video_host, outputs, (1, 16, 3, 4, 4))


@pytest.mark.parametrize("overrides, message", [
    ({"length": 5}, r"AutoencoderKLCogVideoX decodes an even number of latent frames \(2\).*use an odd number"),
    ({"guess": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 9"}},
     r"frame indices \[9\] map to no latent frame: the video has 9 decoded frames"),
])
def test_native_cogvideox_bad_input_gives_a_clear_error(full_vae_video_host, overrides, message):
    prompt = graphs.Prompt()
    sources = cogvideox_sources(prompt, length=overrides.pop("length", 9))
    add_sampler(prompt, "bad", sources, graphs.add_color_objective(prompt), save_images=False, prefix="cogvideox",
                **overrides)
    with pytest.raises(ComfyExecutionError, match=message):
        full_vae_video_host.run(prompt.build(), timeout=300)
