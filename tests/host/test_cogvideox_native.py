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
from safetensors.torch import load_file

import graphs
from objectives.color import ColorLoss
from test_wan import add_sampler, report, video_of
from testing.comfy_host import ComfyExecutionError
from tiny_checkpoints import TINY_SD15_FILENAME


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


def test_native_cogvideox_guided_below_unguided_and_unguided_equals_void_ddim(video_host):
    """Sampled-gradient guess on decoded frames 0 and 8 (latent frames 0 and 2, an even subset that CogVideoX's VAE
    decodes to 4 frames each), a random guess and FreeDoM: the guided videos are redder than the unguided one at the
    same seed. Unguided, TitanGuideSampler (euler = DDIM at eta 0, in x = x0 + sigma noise) gives the latent of
    ComfyUI's VOIDSampler (CogVideoX's DDIM in its training space x0 sqrt(a) + noise sqrt(1 - a)): the model sees
    the input it was trained on (ComfyUI's KSampler hands it x unscaled, about 1,400x too large at the first of the
    zero-terminal-SNR sigmas). The decode has 1 + 4 (3 - 1) = 9 frames."""
    prompt = graphs.Prompt()
    sources = cogvideox_sources(prompt)
    objective = graphs.add_color_objective(prompt)
    add_sampler(prompt, "sampled", sources, objective, strength=0.15,
                guess={"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 8"})
    add_sampler(prompt, "random", sources, objective, strength=0.15, guess={"kind": "random", "k": 2})
    add_sampler(prompt, "freedom", sources, objective, method={"method": "freedom", "freedom_rho": 20.0})
    add_sampler(prompt, "plain", sources, objective, guidance_end=0.0)
    # ComfyUI's own sampler for native CogVideoX: VOIDSampler (CogVideoX's DDIM in its training space)
    prompt.add("noise", "RandomNoise", noise_seed=5)
    prompt.add("scheduler", "BasicScheduler", model=sources["model"], scheduler="normal", steps=3, denoise=1.0)
    prompt.add("guider", "CFGGuider", model=sources["model"], positive=sources["positive"],
               negative=sources["negative"], cfg=1.0)
    prompt.add("void", "VOIDSampler")
    prompt.add("custom", "SamplerCustomAdvanced", noise=graphs.link("noise"), guider=graphs.link("guider"),
               sampler=graphs.link("void"), sigmas=graphs.link("scheduler"), latent_image=sources["latent"])
    prompt.add("void_save", "SaveLatent", samples=graphs.link("custom", 0), filename_prefix="cogvideox/void")
    outputs = video_host.run(prompt.build(), timeout=1500)

    plain = video_of(video_host, outputs, "plain_save_images")
    assert plain.shape == (1, 9, 3, 32, 32)
    color = ColorLoss()
    for name in ("sampled", "random", "freedom"):
        text = report(outputs, name)
        assert "3 latent frame(s) -> 9 frame(s) per video in one VAE call" in text, text
        guided = float(color(video_of(video_host, outputs, f"{name}_save_images")))
        assert guided < float(color(plain)) - 1e-3, (name, guided, float(color(plain)), text)
    assert "frames [0, 8]" in report(outputs, "sampled")

    def latent(node):
        (path,) = video_host.output_files({node: outputs[node]}, key="latents")
        return load_file(str(path))["latent_tensor"]

    ours, void = latent("plain_save_latent"), latent("void_save")
    assert ours.shape == (1, 16, 3, 4, 4)
    assert torch.allclose(ours, void, atol=1e-3), float((ours - void).abs().max())


@pytest.mark.parametrize("overrides, message", [
    ({"length": 5}, r"AutoencoderKLCogVideoX decodes an even number of latent frames \(2\).*use an odd number"),
    ({"guess": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 9"}},
     r"frame indices \[9\] map to no latent frame: the video has 9 decoded frames"),
])
def test_native_cogvideox_bad_input_gives_a_clear_error(video_host, overrides, message):
    prompt = graphs.Prompt()
    sources = cogvideox_sources(prompt, length=overrides.pop("length", 9))
    add_sampler(prompt, "bad", sources, graphs.add_color_objective(prompt), save_images=False, **overrides)
    with pytest.raises(ComfyExecutionError, match=message):
        video_host.run(prompt.build(), timeout=300)
