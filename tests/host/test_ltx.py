"""LTX (ComfyUI's native comfy/ldm/lightricks) with TitanGuideSampler, through the real host on the CPU.

LTX-Video (LTXV): tiny random-init files in ComfyUI's key layout (tests/tiny_video_models.py: a 1-block LTXVModel and
LTX's VideoVAE at 8 base channels, its config in the file's metadata as ComfyUI reads it) load through core nodes
only: UNETLoader, VAELoader, EmptyLTXVLatentVideo / LTXVImgToVideo (128 channels, 8x time, 32x space),
LTXVConditioning, VAEDecode. Prompts are encoded by the tiny SD1.5 checkpoint's CLIP-L (the tiny transformer's
caption projection takes 768-wide text; the real one T5-XXL, whose fixed 4.7 B configuration cannot be made tiny).
LTXV's transformer requires the text attention mask that T5 returns and CLIP-L does not: a test-only node
(tests/host_nodes/text_attention_mask) adds it, so these tests run on their own host with that node folder. Another
(tests/host_nodes/model_inputs) records the MODEL's plain calls, to check that guidance leaves LTX-2's audio alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import graphs
from objectives.color import ColorLoss
from objectives.imagebind_audio import ImageBindAudioLoss, load_imagebind
from tiny_objectives import read_wav, write_wav
from test_wan import add_sampler, report, video_of
from testing.comfy_host import HOST_DIR, ComfyExecutionError, ComfyHost, default_custom_node_dirs, default_python
from tiny_checkpoints import TINY_SD15_FILENAME
from tiny_objectives import write_tiny_imagebind
from tiny_video_models import FILES, LTX_NAMES, build_tiny_video_files

TEST_NODES = Path(__file__).resolve().parents[1] / "host_nodes"

SIZE = 64  # pixels: a 2 x 2 latent (LTX's VAE pads by reflection, which needs at least 2 latent pixels)


@pytest.fixture(scope="module")
def ltx_host(tmp_path_factory, comfyui_dir, tiny_sd15_checkpoint):
    """A ComfyUI server with this pack, the vendored packs and tests/host_nodes, the tiny SD1.5 checkpoint and the
    tiny LTX files."""
    host = ComfyHost(tmp_path_factory.mktemp("ltx_host"), comfyui_dir=comfyui_dir,
                     custom_node_dirs=[*default_custom_node_dirs(), TEST_NODES])
    host.prepare()
    links = {host.models_dir / "checkpoints" / TINY_SD15_FILENAME: tiny_sd15_checkpoint}
    paths = build_tiny_video_files(comfyui_dir, HOST_DIR / "test-cache" / "wan", python=default_python(),
                                   names=LTX_NAMES)
    links.update({host.models_dir / FILES[name][0] / name: path for name, path in paths.items()})
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
    host.start_or_print_log()
    yield host
    host.stop()


def ltxv_sources(prompt: graphs.Prompt, *, length=17, start_image=False) -> dict:
    """Core loader nodes of the official LTXV graph (text- or image-to-video); returns the links TitanGuideSampler
    takes."""
    prompt.add("ckpt", "CheckpointLoaderSimple", ckpt_name=TINY_SD15_FILENAME)
    for name, text in (("positive", "a red car"), ("negative", "")):
        prompt.add(f"{name}_clip", "CLIPTextEncode", text=text, clip=graphs.link("ckpt", 1))
        prompt.add(f"{name}_text", "TestTextAttentionMask", conditioning=graphs.link(f"{name}_clip"))
    prompt.add("unet", "UNETLoader", unet_name="tiny_ltxv.safetensors", weight_dtype="default")
    prompt.add("vae", "VAELoader", vae_name="tiny_ltxv_vae.safetensors")
    positive, negative = graphs.link("positive_text"), graphs.link("negative_text")
    if start_image:
        prompt.add("start", "EmptyImage", width=SIZE, height=SIZE, batch_size=1, color=0x2080C0)
        prompt.add("latent", "LTXVImgToVideo", positive=positive, negative=negative, vae=graphs.link("vae"),
                   image=graphs.link("start"), width=SIZE, height=SIZE, length=length, batch_size=1, strength=1.0)
        positive, negative, latent = graphs.link("latent", 0), graphs.link("latent", 1), graphs.link("latent", 2)
    else:
        prompt.add("latent", "EmptyLTXVLatentVideo", width=SIZE, height=SIZE, length=length, batch_size=1)
        latent = graphs.link("latent")
    prompt.add("conditioning", "LTXVConditioning", positive=positive, negative=negative, frame_rate=25.0)
    return {"model": graphs.link("unet"), "positive": graphs.link("conditioning", 0),
            "negative": graphs.link("conditioning", 1), "latent": latent, "vae": graphs.link("vae")}


def saved_latent(host, outputs, node) -> torch.Tensor:
    (path,) = host.output_files({node: outputs[node]}, key="latents")
    return load_file(str(path))["latent_tensor"]


def test_ltxv_guided_below_unguided_and_unguided_equals_comfyui_samplers(ltx_host):
    """Sampled-gradient guess on decoded frames 0 and 16 (latent frames 0 and 2 of 3), alone and mixed with a random
    direction: the guided videos are redder than the unguided one at the same seed. The decode has 1 + 8 (3 - 1) = 17
    frames (VAEDecode).
    Unguided, TitanGuideSampler gives KSampler's latent (euler, normal), and TitanGuideSamplerSelect gives the
    official template's SamplerCustom latent (euler, LTXVScheduler): the model path is ComfyUI's own."""
    prompt = graphs.Prompt()
    sources = ltxv_sources(prompt)
    objective = graphs.add_color_objective(prompt)
    add_sampler(prompt, "sampled", sources, objective, strength=0.3,
                guess={"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 16"})
    add_sampler(prompt, "mixed", sources, objective, strength=0.3,
                guess={"kind": "mixed", "frame_choice": "fixed", "frame_indices": "0, 16", "random_weight": 0.3})
    add_sampler(prompt, "plain", sources, objective, guidance_end=0.0)
    common = dict(cfg=1.0, positive=sources["positive"], negative=sources["negative"])
    prompt.add("ksampler", "KSampler", model=sources["model"], seed=5, steps=3, sampler_name="euler",
               scheduler="normal", latent_image=sources["latent"], denoise=1.0, **common)
    prompt.add("ksampler_save", "SaveLatent", samples=graphs.link("ksampler"), filename_prefix="ltxv/ksampler")
    # the official template: SamplerCustom with euler and LTXVScheduler; TITAN's SAMPLER in SamplerCustomAdvanced
    prompt.add("scheduler", "LTXVScheduler", steps=3, max_shift=2.05, base_shift=0.95, stretch=True, terminal=0.1,
               latent=sources["latent"])
    prompt.add("euler", "KSamplerSelect", sampler_name="euler")
    prompt.add("official", "SamplerCustom", model=sources["model"], add_noise=True, noise_seed=5,
               sampler=graphs.link("euler"), sigmas=graphs.link("scheduler"), latent_image=sources["latent"], **common)
    prompt.add("official_save", "SaveLatent", samples=graphs.link("official", 0), filename_prefix="ltxv/official")
    prompt.add("noise", "RandomNoise", noise_seed=5)
    prompt.add("guider", "CFGGuider", model=sources["model"], **common)
    prompt.add("titan", "TitanGuideSamplerSelect", objective=objective, vae=sources["vae"],
               **{**graphs.PROMPT_KNOBS, "lookahead": 0, "guidance_end": 0.0})
    prompt.add("custom", "SamplerCustomAdvanced", noise=graphs.link("noise"), guider=graphs.link("guider"),
               sampler=graphs.link("titan"), sigmas=graphs.link("scheduler"), latent_image=sources["latent"])
    prompt.add("custom_save", "SaveLatent", samples=graphs.link("custom", 0), filename_prefix="ltxv/custom")
    outputs = ltx_host.run(prompt.build(), timeout=1500)

    plain = video_of(ltx_host, outputs, "plain_save_images")
    assert plain.shape == (1, 17, 3, SIZE, SIZE)  # VAEDecode: 8 * 3 - 7 frames
    color = ColorLoss()
    for name in ("sampled", "mixed"):
        text = report(outputs, name)
        assert "3 latent frame(s) -> 17 frame(s) per video in one VAE call" in text, text
        guided = float(color(video_of(ltx_host, outputs, f"{name}_save_images")))
        assert guided < float(color(plain)) - 1e-3, (name, guided, float(color(plain)), text)
    assert "frames [0, 16]" in report(outputs, "sampled")

    ours = saved_latent(ltx_host, outputs, "plain_save_latent")
    assert ours.shape == (1, 128, 3, 2, 2)
    ksampler = saved_latent(ltx_host, outputs, "ksampler_save")
    assert torch.allclose(ours, ksampler, atol=1e-4), float((ours - ksampler).abs().max())
    custom, official = saved_latent(ltx_host, outputs, "custom_save"), saved_latent(ltx_host, outputs,
                                                                                       "official_save")
    assert torch.allclose(custom, official, atol=1e-4), float((custom - official).abs().max())
    assert not torch.allclose(custom, ours, atol=1e-3)  # the two schedules differ: the comparisons are not vacuous


def test_ltxv_image_to_video_keeps_the_start_frame(ltx_host):
    """LTXVImgToVideo (strength 1): the start image's latent frame stays as encoded under guidance (its noise mask
    keeps it), guidance moves the other frames and the guided video is redder than the unguided one."""
    prompt = graphs.Prompt()
    sources = ltxv_sources(prompt, length=9, start_image=True)
    prompt.add("input_save", "SaveLatent", samples=sources["latent"], filename_prefix="ltxv/i2v_input")
    objective = graphs.add_color_objective(prompt)
    add_sampler(prompt, "guided", sources, objective, strength=0.3,
                guess={"kind": "sampled_gradient", "sampled_frames": 2})
    add_sampler(prompt, "plain", sources, objective, guidance_end=0.0)
    outputs = ltx_host.run(prompt.build(), timeout=1500)

    assert "2 latent frame(s) -> 9 frame(s)" in report(outputs, "guided")
    color = ColorLoss()
    plain = video_of(ltx_host, outputs, "plain_save_images")
    assert float(color(video_of(ltx_host, outputs, "guided_save_images"))) < float(color(plain)) - 1e-3
    start, guided = (saved_latent(ltx_host, outputs, n) for n in ("input_save", "guided_save_latent"))
    assert guided.shape == start.shape == (1, 128, 2, 2, 2)
    assert torch.allclose(guided[:, :, 0], start[:, :, 0], atol=1e-4), float((guided - start)[:, :, 0].abs().max())
    assert not torch.allclose(guided[:, :, 1], saved_latent(ltx_host, outputs, "plain_save_latent")[:, :, 1],
                              atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    ({"guess": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 17"}},
     r"frame indices \[17\] map to no latent frame: the video has 17 decoded frames"),
    ({"vae": "sd15"}, "does not decode video latents"),
    # ComfyUI's LTX blocks add to x in place after reading it: autograd refuses, forward mode does not
    ({"method": {"method": "exact_gradient"}}, "this model's code updates tensors in place.*Use the 'titan' method"),
])
def test_ltxv_bad_input_gives_a_clear_error(ltx_host, overrides, message):
    prompt = graphs.Prompt()
    sources = ltxv_sources(prompt)
    if overrides.pop("vae", None):
        sources["vae"] = graphs.link("ckpt", 2)
    add_sampler(prompt, "bad", sources, graphs.add_color_objective(prompt), save_images=False, **overrides)
    with pytest.raises(ComfyExecutionError, match=message):
        ltx_host.run(prompt.build(), timeout=300)


def ltx2_sources(prompt: graphs.Prompt, *, length=17, start_image=False) -> dict:
    """Core nodes of the LTX-2 graph (video and audio latents joined by LTXVConcatAVLatent; with `start_image`, the
    template's image-to-video: LTXVImgToVideoInplace on the video latent); returns the links TitanGuideSampler
    takes."""
    prompt.add("ckpt", "CheckpointLoaderSimple", ckpt_name=TINY_SD15_FILENAME)
    prompt.add("positive_text", "CLIPTextEncode", text="a red car", clip=graphs.link("ckpt", 1))
    prompt.add("negative_text", "CLIPTextEncode", text="", clip=graphs.link("ckpt", 1))
    prompt.add("unet", "UNETLoader", unet_name="tiny_ltx2_av.safetensors", weight_dtype="default")
    prompt.add("vae", "VAELoader", vae_name="tiny_ltxv_vae.safetensors")
    prompt.add("audio_vae", "LTXVAudioVAELoader", ckpt_name="tiny_ltx2_audio_vae.safetensors")
    prompt.add("video_latent", "EmptyLTXVLatentVideo", width=SIZE, height=SIZE, length=length, batch_size=1)
    video_latent = graphs.link("video_latent")
    if start_image:
        prompt.add("start", "EmptyImage", width=SIZE, height=SIZE, batch_size=1, color=0x2080C0)
        prompt.add("i2v", "LTXVImgToVideoInplace", vae=graphs.link("vae"), image=graphs.link("start"),
                   latent=video_latent, strength=1.0, bypass=False)
        video_latent = graphs.link("i2v")
    prompt.add("audio_latent", "LTXVEmptyLatentAudio", frames_number=length, frame_rate=25.0, batch_size=1,
               audio_vae=graphs.link("audio_vae"))
    prompt.add("latent", "LTXVConcatAVLatent", video_latent=video_latent, audio_latent=graphs.link("audio_latent"))
    prompt.add("conditioning", "LTXVConditioning", positive=graphs.link("positive_text"),
               negative=graphs.link("negative_text"), frame_rate=25.0)
    return {"model": graphs.link("unet"), "positive": graphs.link("conditioning", 0),
            "negative": graphs.link("conditioning", 1), "latent": graphs.link("latent"), "vae": graphs.link("vae")}


def add_av_outputs(prompt: graphs.Prompt, name: str, samples: list, vae: list, images: bool = True) -> None:
    """LTXVSeparateAVLatent, then the video decoded (VAEDecode) and both latents saved."""
    prompt.add(f"{name}_split", "LTXVSeparateAVLatent", av_latent=samples)
    for index, stream in enumerate(("video", "audio")):
        prompt.add(f"{name}_{stream}", "SaveLatent", samples=graphs.link(f"{name}_split", index),
                   filename_prefix=f"ltx2/{name}_{stream}")
    if images:
        prompt.add(f"{name}_decode", "VAEDecode", samples=graphs.link(f"{name}_split", 0), vae=vae)
        prompt.add(f"{name}_save_images", "SaveImage", images=graphs.link(f"{name}_decode"),
                   filename_prefix=f"ltx2/{name}_frames")


def test_ltx2_guides_the_video_of_its_audio_video_latent(ltx_host):
    """LTX-2 (LTXAV): TitanGuideSampler receives the audio+video latent packed into one tensor by ComfyUI's sampler
    and guides its video part (sampled-gradient on decoded frames 0 and 16, and mixed): the guided videos are redder
    than the unguided one; the audio latent is sampled with it (same shape, finite). Unguided, both latents equal
    KSampler's (euler) at the same seed: every model call is ComfyUI's joint audio+video call."""
    prompt = graphs.Prompt()
    sources = ltx2_sources(prompt)
    objective = graphs.add_color_objective(prompt)
    runs = {"sampled": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 16"},
            "mixed": {"kind": "mixed", "frame_choice": "fixed", "frame_indices": "0, 16", "random_weight": 0.3},
            "plain": None}
    for name, guess in runs.items():
        graphs.add_titan_sampler(prompt, name, sources, objective, seed=5, steps=3, lookahead=0, strength=0.3,
                                 guess=graphs.add_guess(prompt, f"{name}_guess", **guess) if guess else None,
                                 **({"guidance_end": 0.0} if guess is None else {}))
        prompt.add(f"{name}_report", "PreviewAny", source=graphs.link(name, 1))
        add_av_outputs(prompt, name, graphs.link(name, 0), sources["vae"])
    prompt.add("ksampler", "KSampler", model=sources["model"], seed=5, steps=3, cfg=1.0, sampler_name="euler",
               scheduler="normal", positive=sources["positive"], negative=sources["negative"],
               latent_image=sources["latent"], denoise=1.0)
    add_av_outputs(prompt, "ksampler", graphs.link("ksampler"), sources["vae"], images=False)
    outputs = ltx_host.run(prompt.build(), timeout=1500)

    plain = video_of(ltx_host, outputs, "plain_save_images")
    assert plain.shape == (1, 17, 3, SIZE, SIZE)
    color = ColorLoss()
    for name in ("sampled", "mixed"):
        text = report(outputs, name)
        assert "3 latent frame(s) -> 17 frame(s) per video in one VAE call" in text, text
        guided = float(color(video_of(ltx_host, outputs, f"{name}_save_images")))
        assert guided < float(color(plain)) - 1e-3, (name, guided, float(color(plain)), text)
    assert "frames [0, 16]" in report(outputs, "sampled")

    latents = {(name, stream): saved_latent(ltx_host, outputs, f"{name}_{stream}")
               for name in ("sampled", "plain", "ksampler") for stream in ("video", "audio")}
    assert latents["plain", "video"].shape == (1, 128, 3, 2, 2)
    assert latents["plain", "audio"].shape == (1, 8, 17, 16)  # 17 frames at 25 fps: 17 audio latents of 16 bins
    for stream in ("video", "audio"):
        ours, theirs = latents["plain", stream], latents["ksampler", stream]
        assert torch.allclose(ours, theirs, atol=1e-4), (stream, float((ours - theirs).abs().max()))
    assert torch.isfinite(latents["sampled", "audio"]).all()
    # no guidance update touches the audio, but it is denoised with the guided video (joint attention): it follows
    assert not torch.equal(latents["sampled", "audio"], latents["plain", "audio"])


def test_ltx2_image_to_video_and_sampler_custom_advanced(ltx_host):
    """LTX-2 image-to-video as the template builds it (LTXVImgToVideoInplace on the video latent, then
    LTXVConcatAVLatent, whose nested noise mask keeps the start frame): under guidance the start frame's latent stays
    as encoded and the other frames move. TitanGuideSamplerSelect in SamplerCustomAdvanced (CFGGuider, as the LTX-2
    template samples) gives TitanGuideSampler's guided latents at the same seed."""
    prompt = graphs.Prompt()
    sources = ltx2_sources(prompt, length=9, start_image=True)
    prompt.add("input_save", "SaveLatent", samples=graphs.link("i2v"), filename_prefix="ltx2/i2v_input")
    objective = graphs.add_color_objective(prompt)
    knobs = {**graphs.PROMPT_KNOBS, "lookahead": 0, "strength": 0.3}
    guess = graphs.add_guess(prompt, "guess", kind="sampled_gradient", sampled_frames=2)
    for name, end in (("guided", 1.0), ("plain", 0.0)):
        graphs.add_titan_sampler(prompt, name, sources, objective, seed=5, steps=3, guess=guess,
                                 **{**knobs, "guidance_end": end})
        add_av_outputs(prompt, name, graphs.link(name, 0), sources["vae"], images=False)
    prompt.add("noise", "RandomNoise", noise_seed=5)
    prompt.add("scheduler", "BasicScheduler", model=sources["model"], scheduler="normal", steps=3, denoise=1.0)
    prompt.add("guider", "CFGGuider", model=sources["model"], positive=sources["positive"],
               negative=sources["negative"], cfg=1.0)
    prompt.add("titan", "TitanGuideSamplerSelect", objective=objective, vae=sources["vae"], guess=guess, **knobs)
    prompt.add("custom", "SamplerCustomAdvanced", noise=graphs.link("noise"), guider=graphs.link("guider"),
               sampler=graphs.link("titan"), sigmas=graphs.link("scheduler"), latent_image=sources["latent"])
    add_av_outputs(prompt, "custom", graphs.link("custom", 0), sources["vae"], images=False)
    outputs = ltx_host.run(prompt.build(), timeout=1500)

    start = saved_latent(ltx_host, outputs, "input_save")
    guided, plain = (saved_latent(ltx_host, outputs, f"{n}_video") for n in ("guided", "plain"))
    assert guided.shape == start.shape == (1, 128, 2, 2, 2)
    assert torch.allclose(guided[:, :, 0], start[:, :, 0], atol=1e-4), float((guided - start)[:, :, 0].abs().max())
    assert not torch.allclose(guided[:, :, 1], plain[:, :, 1], atol=1e-3)
    for stream in ("video", "audio"):
        node, custom = (saved_latent(ltx_host, outputs, f"{n}_{stream}") for n in ("guided", "custom"))
        assert torch.allclose(node, custom, atol=1e-4), (stream, float((node - custom).abs().max()))


@pytest.mark.parametrize("overrides, message", [
    ({"guess": {"kind": "sampled_gradient", "frame_choice": "fixed", "frame_indices": "0, 17"}},
     r"frame indices \[17\] map to no latent frame: the video has 17 decoded frames"),
    ({"method": {"method": "freedom"}}, r"FreeDoM cannot guide one part of a packed latent yet \(video "
                                        r"\(1, 128, 3, 2, 2\), audio \(1, 8, 17, 16\)\); use the TITAN"),
])
def test_ltx2_bad_input_gives_a_clear_error(ltx_host, overrides, message):
    prompt = graphs.Prompt()
    sources = ltx2_sources(prompt)
    add_sampler(prompt, "bad", sources, graphs.add_color_objective(prompt), save_images=False, **overrides)
    with pytest.raises(ComfyExecutionError, match=message):
        ltx_host.run(prompt.build(), timeout=300)


IMAGEBIND_FILE, AUDIO_FILE, LTX2_FPS = "titan_test_tiny_imagebind_ltx2.pth", "titan_test_ltx2_chirp.wav", 25.0


def add_imagebind_audio(prompt: graphs.Prompt, host, audio_file: str = AUDIO_FILE) -> list:
    """ImageBind audio objective on a WAV through core LoadAudio (the tiny ImageBind and the WAV written into the
    host's folders first); returns its link."""
    write_tiny_imagebind(host.models_dir / "imagebind" / IMAGEBIND_FILE)
    write_wav(host.input_dir / AUDIO_FILE, seconds=1.0, sample_rate=22050, channels=2)
    prompt.add("imagebind", "TitanImageBindLoader", weights_name=IMAGEBIND_FILE, dtype="fp32")
    prompt.add("audio", "LoadAudio", audio=audio_file)
    prompt.add("objective", "TitanAudioObjective", imagebind=graphs.link("imagebind"), audio=graphs.link("audio"),
               fps=LTX2_FPS, audio_start=0.0, weight=1.0, text="", audio_weight=1.0, text_weight=1.0,
               vision_clips="pairs", spatial_crops="3", clips_per_chunk=0)
    return graphs.link("objective")


def test_ltx2_video_follows_a_loaded_sound_with_imagebind_and_the_audio_stays_unguided(ltx_host):
    """LTX-2 + ImageBind: a WAV through core LoadAudio is the target of TitanAudioObjective (fps 25, LTX-2's frame
    rate); TitanGuideSampler guides the video part of the packed audio+video latent (sampled-gradient guess, all
    frames). The decoded guided video is closer to the sound than the unguided one at the same seed, by ImageBind's
    audio-video distance as the objective measures it (built here from the same file and WAV); 3 latent frames decode
    to 17 frames. Every plain model call is recorded (a test node wraps the MODEL): the two runs start from the same
    packed latent, and within each guided step the update moves the video part of the model's input while its audio
    part stays bit-identical (the audio gets no guidance update; it only changes by the sampler's steps)."""
    prompt = graphs.Prompt()
    sources = ltx2_sources(prompt)
    objective = add_imagebind_audio(prompt, ltx_host)
    for name, end in (("guided", 1.0), ("plain", 0.0)):
        prompt.add(f"{name}_model", "TestRecordModelInputs", model=sources["model"],
                   filename=f"ltx2_audio/{name}_inputs.pt")
        guess = graphs.add_guess(prompt, f"{name}_guess", kind="sampled_gradient", sampled_frames=0)
        graphs.add_titan_sampler(prompt, name, {**sources, "model": graphs.link(f"{name}_model")}, objective,
                                 seed=5, steps=3, lookahead=0, strength=0.3, guidance_end=end, guess=guess)
        prompt.add(f"{name}_report", "PreviewAny", source=graphs.link(name, 1))
        add_av_outputs(prompt, name, graphs.link(name, 0), sources["vae"])
    outputs = ltx_host.run(prompt.build(), timeout=900)

    text = report(outputs, "guided")
    assert "3 latent frame(s) -> 17 frame(s) per video in one VAE call" in text, text
    videos = {name: video_of(ltx_host, outputs, f"{name}_save_images") for name in ("guided", "plain")}
    assert videos["plain"].shape == videos["guided"].shape == (1, 17, 3, SIZE, SIZE)
    loss = ImageBindAudioLoss(load_imagebind(ltx_host.models_dir / "imagebind" / IMAGEBIND_FILE),
                              read_wav(ltx_host.input_dir / AUDIO_FILE), LTX2_FPS)
    with torch.no_grad():
        guided, plain = (float(loss(videos[name])) for name in ("guided", "plain"))
    assert guided < plain - 0.02 * abs(plain), (guided, plain, text)

    video_size = 128 * 3 * 2 * 2  # the video latent's elements come first in the packed (1, 1, N) latent
    calls = {name: torch.load(ltx_host.output_dir / "ltx2_audio" / f"{name}_inputs.pt")
             for name in ("guided", "plain")}
    assert len(calls["plain"]) == 3 and len(calls["guided"]) == 6, {k: len(v) for k, v in calls.items()}
    assert torch.equal(calls["guided"][0]["input"], calls["plain"][0]["input"])  # same seed, same packed noise
    for step in range(3):  # per guided step: the estimate's call at x, then the step's call at the updated x
        before, after = calls["guided"][2 * step]["input"], calls["guided"][2 * step + 1]["input"]
        assert before.shape == (1, 1, video_size + 8 * 17 * 16), before.shape
        assert torch.equal(calls["guided"][2 * step]["timestep"], calls["guided"][2 * step + 1]["timestep"])
        assert torch.equal(before[..., video_size:], after[..., video_size:]), step  # the audio: untouched
        assert not torch.allclose(before[..., :video_size], after[..., :video_size], atol=1e-4), step  # video moved


def test_ltx2_imagebind_audio_shorter_than_the_video_gives_a_clear_error(ltx_host):
    """17 frames at LTX-2's 25 fps span 0.68 s: a 0.5 s WAV is refused with the lengths and what to change."""
    write_wav(ltx_host.input_dir / "titan_test_ltx2_short.wav", seconds=0.5, sample_rate=16000, channels=1)
    prompt = graphs.Prompt()
    sources = ltx2_sources(prompt)
    objective = add_imagebind_audio(prompt, ltx_host, audio_file="titan_test_ltx2_short.wav")
    add_sampler(prompt, "bad", sources, objective, save_images=False)
    with pytest.raises(ComfyExecutionError, match=r"the audio is 0\.500 s long but the video spans 0\.680 s starting "
                                                  r"at 0\.000 s; provide audio at least 0\.680 s long"):
        ltx_host.run(prompt.build(), timeout=300)
