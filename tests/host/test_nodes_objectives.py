"""Objective nodes with guidance networks (nodes/objectives.py) in the real ComfyUI host.

Tiny random networks are saved in their official file formats into the host's model folders (dover/,
imagebind/, clip_vision/) and go through the loader nodes. Each objective node then feeds TitanGuideSampler
(tiny SD1.5 checkpoint, 32x32 frames, 4 frames in the batch, 3 steps, sampled-gradient guess); the decoded
frames are saved and the same objective, built in this process from the same file with the same code, must be
lower than for the run with guidance off at the same seed. 32x32 rather than 64x64 because the forward-mode
pass through the full-size SD VAE decoder dominates: a 64x64 run costs about 3x the CPU time. Bad inputs must
fail with a clear message while the server keeps serving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from testing.comfy_host import PACK_LINK_DIR, PACK_NAME, ComfyExecutionError, ComfyValidationError, default_python
from graphs import Prompt, add_color_objective, add_guess, add_titan_sampler, link, sd15_inputs
from objectives.dover import DoverLoss, load_dover
from objectives.frame_interpolation import FrameInterpolationLoss, LatentFrameInterpolationLoss
from objectives.imagebind_audio import ImageBindAudioLoss, load_imagebind
from objectives.style_clip import StyleLoss, load_open_clip
from tiny_checkpoints import TINY_SD15_FILENAME
from tiny_objectives import (
    TINY_DOVER_CONFIG,
    read_wav,
    write_bundled_open_clip_layout,
    write_official_layout_dover,
    write_tiny_clip_vision,
    write_tiny_dover,
    write_tiny_imagebind,
    write_tiny_open_clip,
    write_wav,
)

SIZE, FRAMES, STEPS, SEED, STRENGTH = 32, 4, 3, 7, 0.3
# A guided run must lower its objective by at least this fraction (PNG rounding moves losses far less).
MIN_IMPROVEMENT = 0.02
DOVER_FILE = "titan_test_tiny_dover.pth"
IMAGEBIND_FILE = "titan_test_tiny_imagebind.pth"
CLIP_VISION_FILE = "titan_test_tiny_clip_vision.safetensors"
OPEN_CLIP_FILE = "titan_test_tiny_open_clip.safetensors"
AUDIO_FILE = "titan_test_chirp.wav"
STYLE_FILE = "titan_test_style.png"
FPS = 8.0
EMPTY_LISTINGS: dict = {}  # loader COMBO options seen before the test files were written


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def host(comfy_host):
    """The shared host with the tiny guidance networks, a chirp WAV and a style PNG in its folders."""
    models = comfy_host.models_dir
    for node_type in ("TitanDoverLoader", "TitanImageBindLoader"):  # before any file is there
        EMPTY_LISTINGS[node_type] = combo_options(comfy_host.object_info(node_type), "weights_name")
    write_tiny_dover(models / "dover" / DOVER_FILE)
    write_tiny_imagebind(models / "imagebind" / IMAGEBIND_FILE)
    write_tiny_clip_vision(models / "clip_vision" / CLIP_VISION_FILE)
    write_tiny_open_clip(models / "clip_vision" / OPEN_CLIP_FILE)
    write_wav(comfy_host.input_dir / AUDIO_FILE, seconds=2.0, sample_rate=22050, channels=2)
    style = np.zeros((40, 56, 3), dtype=np.uint8)  # another size than the video: a blue-yellow gradient
    style[..., 0] = np.linspace(0, 255, 56, dtype=np.uint8)[None, :]
    style[..., 1] = np.linspace(0, 255, 56, dtype=np.uint8)[None, :]
    style[..., 2] = np.linspace(255, 0, 40, dtype=np.uint8)[:, None]
    Image.fromarray(style).save(comfy_host.input_dir / STYLE_FILE)
    return comfy_host


# ---------------------------------------------------------------------------------------------------------
# Graph helpers
# ---------------------------------------------------------------------------------------------------------
def guided_prompt(prefix: str, add_objective, *, guided: bool = True, frames: int = FRAMES, **knobs) -> dict:
    """tiny SD1.5 -> TitanGuideSampler (objective from `add_objective(prompt, sources)`) -> decoded PNG frames."""
    prompt = Prompt()
    sources = sd15_inputs(prompt, TINY_SD15_FILENAME, SIZE, SIZE, frames)
    objective = add_objective(prompt, sources)
    add_titan_sampler(prompt, "sampler", sources, objective, seed=SEED, steps=STEPS, guess=add_sampled_guess(prompt),
                      **guidance_knobs(guided, knobs))
    prompt.add("decode", "VAEDecode", samples=link("sampler", 0), vae=sources["vae"])
    prompt.add("save", "SaveImage", images=link("decode"), filename_prefix=prefix)
    prompt.add("report", "PreviewAny", source=link("sampler", 1))
    return prompt.build()


def add_sampled_guess(prompt: Prompt) -> list:
    """The sampled-gradient guess over all frames: a clear descent direction, so 3 steps show an effect."""
    return add_guess(prompt, "guess", kind="sampled_gradient", sampled_frames=0)


def guidance_knobs(guided: bool, knobs: dict) -> dict:
    """Sampler knobs: strength 0.3 when guided; guidance_end 0 (start = end: guidance off) otherwise."""
    return {"strength": STRENGTH, **knobs, **({} if guided else {"guidance_end": 0.0})}


def run_frames(host, prompt: dict, timeout: float = 300) -> tuple[torch.Tensor, str]:
    """Run a guided_prompt graph; returns the saved frames as a video (1, F, 3, H, W) and the sampler report."""
    outputs = host.run(prompt, timeout=timeout)
    files = sorted(host.output_files(outputs, "images"))
    frames = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255) for f in files]
    report = outputs["report"]["text"][0]
    return torch.stack(frames).permute(0, 3, 1, 2).unsqueeze(0), report


@pytest.fixture(scope="module")
def unguided(host):
    """Frames of the guidance-off run (same seed, sampler and latent as every guided run here)."""
    video, report = run_frames(host, guided_prompt("objectives/unguided", lambda p, s: add_color_objective(p),
                                                   guided=False))
    assert video.shape == (1, FRAMES, 3, SIZE, SIZE)
    assert video.std() > 0.01, "the unguided decode is flat: the tiny checkpoint produced no signal"
    return video


def assert_lowered(before: float, after: float, report: str) -> None:
    """The guided run's loss is lower than the unguided one by at least MIN_IMPROVEMENT of its size."""
    assert after < before - MIN_IMPROVEMENT * abs(before), (f"unguided {before:.5f}, guided {after:.5f}", report)


def loader_graph(node_type: str, **inputs) -> dict:
    """A loader node whose output PreviewAny prints (the loaded model's description)."""
    prompt = Prompt()
    prompt.add("loader", node_type, **inputs)
    prompt.add("show", "PreviewAny", source=link("loader"))
    return prompt.build()


def loader_text(host, node_type: str, **inputs) -> str:
    """What PreviewAny shows for a loader node's output."""
    return host.run(loader_graph(node_type, **inputs), timeout=120)["show"]["text"][0]


def guided_report_lines(report: str) -> list[str]:
    """Report rows of guided steps (step number, sigma, look-ahead, loss, ...)."""
    return [line for line in report.splitlines() if re.match(r"^\d+\s+[\d.e+-]+\s", line)]


# ---------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------
def combo_options(info: dict, name: str) -> list:
    """Options of a COMBO input in /object_info (plain list or V3 'COMBO' with options)."""
    spec = info["input"]["required"][name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


@pytest.mark.host_compat
def test_loaders_list_and_load_their_files(host):
    """Each loader lists its file from its folder and loads it (fp32 default, bf16 on request), once."""
    for node_type, name_input, filename in (("TitanDoverLoader", "weights_name", DOVER_FILE),
                                            ("TitanImageBindLoader", "weights_name", IMAGEBIND_FILE),
                                            ("TitanClipStyleLoader", "clip_name", CLIP_VISION_FILE)):
        info = host.object_info(node_type)
        assert filename in combo_options(info, name_input), node_type
        assert combo_options(info, "dtype") == ["fp32", "bf16", "fp16"]
    assert OPEN_CLIP_FILE in combo_options(host.object_info("TitanClipStyleLoader"), "clip_name")

    text = loader_text(host, "TitanDoverLoader", weights_name=DOVER_FILE, dtype="fp32")
    assert DOVER_FILE in text and "fp32" in text and "custom DOVER configuration" in text
    assert "'technical_window_size': (2, 2, 2)" in text and "'aesthetic_dims': (8, 8, 16, 16)" in text
    text = loader_text(host, "TitanImageBindLoader", weights_name=IMAGEBIND_FILE, dtype="bf16")
    assert IMAGEBIND_FILE in text and "bf16" in text and "vision width 32" in text
    text = loader_text(host, "TitanClipStyleLoader", clip_name=CLIP_VISION_FILE, architecture="auto",
                       pretrained_tag="", dtype="fp32")
    assert "Hugging Face CLIP vision, image tower only (width 128, 2 blocks, 32 px)" in text
    text = loader_text(host, "TitanClipStyleLoader", clip_name=OPEN_CLIP_FILE, architecture="auto",
                       pretrained_tag="", dtype="fp32")
    assert "open_clip titan_test_tiny_open_clip, image and text tower (32 px)" in text

    # A second loader node of the same file and dtype reuses the loaded network.
    log_before = host.log_text().count(f"loaded the DOVER network from")
    prompt = Prompt()
    for node in ("a", "b"):
        prompt.add(node, "TitanDoverLoader", weights_name=DOVER_FILE, dtype="fp32")
        prompt.add(f"show_{node}", "PreviewAny", source=link(node))
    host.run(prompt.build(), timeout=120)
    assert host.log_text().count("loaded the DOVER network from") == log_before
    assert "reusing the loaded DOVER network" in host.log_text()


def test_official_dover_layout_loads_with_the_official_configuration(host):
    """A file with DOVER.pth's exact keys and shapes loads as the official architecture (56.2 M parameters)."""
    path = host.models_dir / "dover" / "DOVER.pth"
    write_official_layout_dover(path)
    try:
        text = loader_text(host, "TitanDoverLoader", weights_name="DOVER.pth", dtype="bf16")
    finally:
        path.unlink()
    assert "official DOVER configuration, 56.218 M parameters" in text


def test_open_clip_architecture_is_found_from_the_file_or_refused_clearly(host):
    """'auto' matches an open_clip checkpoint's shapes to open_clip's bundled configs; a wrong choice is refused."""
    architectures = combo_options(host.object_info("TitanClipStyleLoader"), "architecture")
    assert architectures[0] == "auto" and {"ViT-H-14", "ViT-L-14-quickgelu", "ViT-S-32"} <= set(architectures)
    path = host.models_dir / "clip_vision" / "titan_test_vit_s_32.safetensors"
    write_bundled_open_clip_layout(path, "ViT-S-32")
    try:
        text = loader_text(host, "TitanClipStyleLoader", clip_name=path.name, architecture="auto", pretrained_tag="",
                           dtype="fp16")
        assert "open_clip ViT-S-32, image and text tower (224 px)" in text and "fp16" in text
        with pytest.raises(ComfyExecutionError) as caught:
            loader_text(host, "TitanClipStyleLoader", clip_name=path.name, architecture="ViT-S-16",
                        pretrained_tag="", dtype="fp16")
        assert "does not match the open_clip architecture 'ViT-S-16'" in caught.value.details["exception_message"]
    finally:
        path.unlink()
    assert host.is_running()


def test_missing_weights_name_the_file_folder_and_source(host):
    """Empty folders give empty lists; a file that is not there fails validation with the folder ComfyUI
    searches and the download source (ComfyUI shows the message on the node)."""
    assert EMPTY_LISTINGS == {"TitanDoverLoader": [], "TitanImageBindLoader": []}
    cases = (("TitanDoverLoader", "weights_name", "DOVER.pth", "dover", "github.com/VQAssessment/DOVER"),
             ("TitanImageBindLoader", "weights_name", "imagebind_huge.pth", "imagebind",
              "dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"),
             ("TitanClipStyleLoader", "clip_name", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision",
              "huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"))
    for node_type, name_input, filename, folder, source in cases:
        inputs = {name_input: filename, "dtype": "fp32"}
        if node_type == "TitanClipStyleLoader":
            inputs.update(architecture="auto", pretrained_tag="")
        with pytest.raises(ComfyValidationError) as caught:
            host.queue(loader_graph(node_type, **inputs))
        message = str(caught.value)
        assert f"'{filename}' was not found" in message, message
        assert str(host.models_dir / folder) in message, message
        assert source in message, message
        tooltip = host.object_info(node_type)["input"]["required"][name_input][1]["tooltip"]
        assert str(host.models_dir / folder) in tooltip and source in tooltip
    assert host.is_running()


PATCHER_CHECK = """
import importlib, json, sys
comfy_dir, packs_dir, pack = sys.argv[1:4]
sys.path[:] = [comfy_dir, packs_dir] + [p for p in sys.path if p not in ("", "tests")]
import torch
from comfy.cli_args import args
args.cpu = True
import comfy.model_patcher
guidance_models = importlib.import_module(pack + ".nodes.guidance_models")

def patcher(cls):
    network = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    wrapped = guidance_models.GuidanceNetworkPatcher.GuidanceNetwork(network, torch.float32, "test")
    return cls(wrapped, load_device=torch.device("cpu"), offload_device=torch.device("cpu")), network

def devices(network):
    return sorted({p.device.type for p in network.parameters()})

result = {}
for name, cls in (("guidance", guidance_models.GuidanceNetworkPatcher), ("plain", comfy.model_patcher.ModelPatcher)):
    model, network = patcher(cls)
    model.partially_load(torch.device("meta"), extra_memory=1)  # ComfyUI offers one byte of room
    result[name] = {"devices": devices(network), "loaded": model.loaded_size(), "size": model.model_size()}
    if name == "guidance":
        result[name]["freed"] = model.partially_unload(torch.device("cpu"), 1)
        result[name]["after_unload"] = devices(network)
print("RESULT " + json.dumps(result))
"""


def test_guidance_network_patcher_loads_and_unloads_only_whole_networks(comfyui_dir):
    """ComfyUI loads part of a model under memory pressure; a plain-torch guidance network must not be split.

    Offered one byte of room (on the meta device, to see where weights go on a CPU-only machine), ComfyUI's own
    ModelPatcher leaves a plain network's weights where they were while reporting it loaded; the guidance
    patcher moves all of it. Asked to free part of it, the guidance patcher frees nothing (ComfyUI then unloads
    it whole)."""
    completed = subprocess.run([default_python(), "-c", PATCHER_CHECK, str(comfyui_dir), str(PACK_LINK_DIR),
                                PACK_NAME], capture_output=True, text=True, timeout=300,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stdout[-3000:] + completed.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["plain"]["devices"] == ["cpu"] and result["plain"]["loaded"] == 0  # why the override exists
    assert result["guidance"]["devices"] == ["meta"]
    assert result["guidance"]["loaded"] == result["guidance"]["size"] == (4 * 4 + 4 + 4 * 2 + 2) * 4
    assert result["guidance"]["freed"] == 0 and result["guidance"]["after_unload"] == ["meta"]


# ---------------------------------------------------------------------------------------------------------
# Objectives guide the sampler
# ---------------------------------------------------------------------------------------------------------
def add_dover(prompt: Prompt, sources: dict) -> list:
    prompt.add("dover", "TitanDoverLoader", weights_name=DOVER_FILE, dtype="fp32")
    prompt.add("objective", "TitanAestheticObjective", dover=link("dover"), mode="fused", weight=1.0,
               fragment_sampling="random", fragment_seed=3, technical_samples=1)
    return link("objective")


@pytest.mark.host_compat
def test_aesthetic_objective_lowers_dover_loss(host, unguided):
    """DOVER-guided frames score better on the same tiny DOVER than the unguided frames."""
    guided, report = run_frames(host, guided_prompt("objectives/dover", add_dover))
    assert len(guided_report_lines(report)) == STEPS, report
    assert "Requested to load GuidanceNetwork" in host.log_text()  # went through ComfyUI's model management
    model = load_dover(host.models_dir / "dover" / DOVER_FILE, model_kwargs=TINY_DOVER_CONFIG)
    loss = DoverLoss(model, mode="fused", fragment_sampling="random", fragment_seed=3)
    with torch.no_grad():
        before, after = loss(unguided).item(), loss(guided).item()
    assert_lowered(before, after, report)


def style_image_tensor(host) -> torch.Tensor:
    """The style PNG as LoadImage gives it: (1, H, W, 3) in [0, 1]."""
    pixels = np.asarray(Image.open(host.input_dir / STYLE_FILE).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels)[None]


def add_style(prompt: Prompt, sources: dict, clip_file: str = OPEN_CLIP_FILE, text: str = "a blue sky") -> list:
    prompt.add("clip", "TitanClipStyleLoader", clip_name=clip_file, architecture="auto", pretrained_tag="",
               dtype="fp32")
    prompt.add("style_image", "LoadImage", image=STYLE_FILE)
    prompt.add("objective", "TitanStyleObjective", clip=link("clip"), loss_kind="cosine", weight=1.0, text=text,
               style_weight=1.0, text_weight=0.5, content_weight=0.0, gram_layer=-2, frames_per_chunk=0,
               style_image=link("style_image"))
    return link("objective")


@pytest.mark.host_compat
def test_style_objective_with_text_lowers_style_loss(host, unguided):
    """Style image (another size than the video) plus a text target through open_clip: the loss goes down."""
    guided, report = run_frames(host, guided_prompt("objectives/style", add_style))
    assert len(guided_report_lines(report)) == STEPS, report
    clip = load_open_clip(host.models_dir / "clip_vision" / OPEN_CLIP_FILE, OPEN_CLIP_FILE.rsplit(".", 1)[0])
    loss = StyleLoss(clip, style_image=style_image_tensor(host), text="a blue sky", mode="cosine", text_weight=0.5)
    with torch.no_grad():
        before, after = loss(unguided).item(), loss(guided).item()
    assert_lowered(before, after, report)


def add_audio(prompt: Prompt, sources: dict, audio_file: str = AUDIO_FILE, weights: str = IMAGEBIND_FILE) -> list:
    prompt.add("imagebind", "TitanImageBindLoader", weights_name=weights, dtype="fp32")
    prompt.add("audio", "LoadAudio", audio=audio_file)
    prompt.add("objective", "TitanAudioObjective", imagebind=link("imagebind"), audio=link("audio"), fps=FPS,
               audio_start=0.5, weight=1.0, text="", audio_weight=1.0, text_weight=1.0, vision_clips="pairs",
               spatial_crops="3", clips_per_chunk=0)
    return link("objective")


def managed_models(report: str) -> dict[str, str]:
    """The report's "models in ComfyUI's model management" lines: {role (class): what is loaded where}."""
    lines = report.split("models in ComfyUI's model management for this run:\n", 1)[-1].splitlines()
    return dict(line.strip().split(": ", 1) for line in lines if line.startswith("  "))


@pytest.mark.host_compat
def test_audio_objective_lowers_imagebind_loss(host, unguided):
    """A 22.05 kHz stereo WAV (resampled, averaged to mono) through LoadAudio guides the video towards it. The
    ImageBind network runs under ComfyUI's model management, loaded with the diffusion model and the VAE: the
    report lists what the memory manager holds during the run, the whole network included."""
    fresh = "titan_test_tiny_imagebind_fresh.pth"  # a network no earlier test loaded: its first load happens here
    shutil.copyfile(host.models_dir / "imagebind" / IMAGEBIND_FILE, host.models_dir / "imagebind" / fresh)
    guided, report = run_frames(host, guided_prompt("objectives/audio", lambda p, s: add_audio(p, s, weights=fresh)))
    assert len(guided_report_lines(report)) == STEPS, report
    model = load_imagebind(host.models_dir / "imagebind" / IMAGEBIND_FILE)
    loss = ImageBindAudioLoss(model, read_wav(host.input_dir / AUDIO_FILE), FPS, audio_start_s=0.5)
    with torch.no_grad():
        before, after = loss(unguided).item(), loss(guided).item()
    assert_lowered(before, after, report)

    managed = managed_models(report)
    network_mib = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    # The whole network, loaded by ComfyUI's prepare_sampling in one load_models_gpu call with the diffusion
    # model (as its additional model), not separately once guidance started.
    assert managed[f"ImageBind audio ({FPS:g} fps from 0.5 s) (GuidanceNetwork)"] == \
        f"{network_mib:.1f} of {network_mib:.1f} MiB on cpu", report
    assert re.fullmatch(r"([\d.]+) of \1 MiB on cpu", managed["diffusion model (BaseModel)"]), report
    assert re.fullmatch(r"([\d.]+) of \1 MiB on cpu", managed["VAE (AutoencoderKL)"]), report


def test_audio_objective_with_a_frame_subset_uses_the_whole_videos_audio(host, unguided):
    """The sampled-gradient guess on 2 of the 4 frames: ImageBind sees a frame subset, places it in the full
    video (whose length the sampler passes before guiding) and still lowers the full video's loss."""
    prompt = guided_prompt("objectives/audio_subset", add_audio)
    prompt["guess"]["inputs"]["sampled_frames"] = 2
    guided, report = run_frames(host, prompt)
    assert len(guided_report_lines(report)) == STEPS, report
    assert "skipped (non-finite loss or gradient): 0" in report, report
    model = load_imagebind(host.models_dir / "imagebind" / IMAGEBIND_FILE)
    loss = ImageBindAudioLoss(model, read_wav(host.input_dir / AUDIO_FILE), FPS, audio_start_s=0.5)
    with torch.no_grad():
        before, after = loss(unguided).item(), loss(guided).item()
    assert_lowered(before, after, report)


def add_keyframes(prompt: Prompt) -> list:
    """Red and blue keyframes of the video's size, batched (K = 2)."""
    prompt.add("red", "EmptyImage", width=SIZE, height=SIZE, batch_size=1, color=0xFF0000)
    prompt.add("blue", "EmptyImage", width=SIZE, height=SIZE, batch_size=1, color=0x0000FF)
    prompt.add("keyframes", "ImageBatch", image1=link("red"), image2=link("blue"))
    return link("keyframes")


def keyframes_tensor() -> torch.Tensor:
    """The keyframes add_keyframes builds, (2, H, W, 3)."""
    keyframes = torch.zeros(2, SIZE, SIZE, 3)
    keyframes[0, ..., 0] = 1
    keyframes[1, ..., 2] = 1
    return keyframes


def add_pixel_interpolation(prompt: Prompt, sources: dict, indices: str = "0, 3") -> list:
    prompt.add("objective", "TitanFrameInterpolationObjective", keyframes=add_keyframes(prompt),
               frame_indices=indices, space="pixels", weight=1.0)
    return link("objective")


@pytest.mark.host_compat
def test_pixel_frame_interpolation_lowers_keyframe_error(host, unguided):
    """First and last frame move towards the red and blue keyframes."""
    guided, report = run_frames(host, guided_prompt("objectives/interp", add_pixel_interpolation))
    assert len(guided_report_lines(report)) == STEPS, report
    loss = FrameInterpolationLoss(keyframes_tensor(), indices=[0, 3])
    before, after = loss(unguided).item(), loss(guided).item()
    assert_lowered(before, after, report)


def read_latent(path) -> torch.Tensor:
    """The samples of a SaveLatent file (VAE space, as LATENT values are)."""
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"]


def test_latent_frame_interpolation_with_a_mask_lowers_latent_error(host):
    """Latent space: keyframes encoded once by the VAE input, known frames from a per-frame MASK [1, 0, 0, 1]."""
    def build(guided: bool) -> dict:
        prompt = Prompt()
        sources = sd15_inputs(prompt, TINY_SD15_FILENAME, SIZE, SIZE, FRAMES)
        keyframes = add_keyframes(prompt)
        prompt.add("white", "EmptyImage", width=SIZE, height=SIZE, batch_size=1, color=0xFFFFFF)
        prompt.add("black", "EmptyImage", width=SIZE, height=SIZE, batch_size=2, color=0x000000)
        prompt.add("known_1", "ImageBatch", image1=link("white"), image2=link("black"))
        prompt.add("known_2", "ImageBatch", image1=link("known_1"), image2=link("white"))
        prompt.add("mask", "ImageToMask", image=link("known_2"), channel="red")
        prompt.add("objective", "TitanFrameInterpolationObjective", keyframes=keyframes, frame_indices="",
                   space="latent", weight=1.0, mask=link("mask"), vae=sources["vae"])
        add_titan_sampler(prompt, "sampler", sources, link("objective"), seed=SEED, steps=STEPS,
                          guess=add_sampled_guess(prompt), **guidance_knobs(guided, {}))
        prompt.add("save", "SaveLatent", samples=link("sampler", 0), filename_prefix=f"objectives/latent_{guided}")
        prompt.add("encode", "VAEEncode", pixels=keyframes, vae=sources["vae"])
        prompt.add("save_keys", "SaveLatent", samples=link("encode"), filename_prefix="objectives/key_latents")
        return prompt.build()

    latents = {}
    for guided in (False, True):
        outputs = host.run(build(guided), timeout=300)
        files = host.output_files(outputs, "latents")
        latents[guided] = read_latent([p for p in files if "latent_" in p.name][0])
        key_latents = read_latent([p for p in files if "key_latents" in p.name][0])
    assert key_latents.shape == (2, 4, SIZE // 8, SIZE // 8)
    loss = LatentFrameInterpolationLoss(key_latents, mask=torch.tensor([True, False, False, True]))
    before, after = (loss(latents[g].unsqueeze(0)).item() for g in (False, True))
    assert_lowered(before, after, "")


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors, and the server keeps serving
# ---------------------------------------------------------------------------------------------------------
def assert_execution_error(host, prompt: dict, node_id: str, *fragments: str) -> None:
    """Running `prompt` fails in `node_id` with a message containing every fragment; the server lives on."""
    with pytest.raises(ComfyExecutionError) as caught:
        host.run(prompt, timeout=300)
    details = caught.value.details
    message = details.get("exception_message", "")
    assert details.get("node_id") == node_id, (details.get("node_id"), message)
    for fragment in fragments:
        assert fragment in message, message
    assert host.is_running()
    assert "TitanAestheticObjective" in host.object_info()


def test_dover_refuses_a_single_frame_video(host):
    """DOVER needs at least 2 frames: the sampler says so before sampling."""
    assert_execution_error(host, guided_prompt("objectives/bad_dover", add_dover, frames=1), "sampler",
                           "at least 2 frames", "frames_per_video")


def test_text_target_with_an_image_only_clip_is_refused(host):
    """A Hugging Face clip_vision file has no text tower: the style node says what to load instead."""
    prompt = guided_prompt("objectives/bad_style", lambda p, s: add_style(p, s, clip_file=CLIP_VISION_FILE))
    assert_execution_error(host, prompt, "objective", "text target needs CLIP's text tower",
                           CLIP_VISION_FILE, "open_clip checkpoint")


def test_audio_shorter_than_the_video_is_refused(host):
    """0.3 s of audio cannot cover 4 frames at 8 fps (0.5 s) from 0.5 s on: the error names both lengths."""
    write_wav(host.input_dir / "titan_test_short.wav", seconds=0.3, sample_rate=16000, channels=1)
    prompt = guided_prompt("objectives/bad_audio", lambda p, s: add_audio(p, s, "titan_test_short.wav"))
    assert_execution_error(host, prompt, "sampler", "the audio is 0.300 s long", "video spans 0.500 s")


def test_keyframe_count_and_indices_mismatch_is_refused(host):
    """Two keyframes but three indices: the objective node names both counts."""
    prompt = guided_prompt("objectives/bad_interp", lambda p, s: add_pixel_interpolation(p, s, "0, 1, 3"))
    assert_execution_error(host, prompt, "objective", "got 2 keyframes but 3 known frame indices")


def test_negative_keyframe_index_with_a_frame_subset_is_placed_in_the_full_video(host, unguided):
    """'0, -1' with the sampled-gradient guess on 2 frames: the sampler tells the objective the video's length,
    so '-1' is the last frame even though the objective is shown a subset, and the keyframe error goes down."""
    prompt = guided_prompt("objectives/interp_subset", lambda p, s: add_pixel_interpolation(p, s, "0, -1"))
    prompt["guess"]["inputs"]["sampled_frames"] = 2
    guided, report = run_frames(host, prompt)
    assert len(guided_report_lines(report)) == STEPS, report
    loss = FrameInterpolationLoss(keyframes_tensor(), indices=[0, 3])
    before, after = loss(unguided).item(), loss(guided).item()
    assert_lowered(before, after, report)
