#!/usr/bin/env python3
"""Generate the shareable UI-format workflows in workflows/ from compact node tables.

    .venv/bin/python scripts/workflows.py            # start a ComfyUI host, write every workflows/*.json
    .venv/bin/python scripts/workflows.py --check    # exit 1 if a committed file differs from the tables

Widget order comes from the live /object_info of a test host (testing/comfy_host.py, with AnimateDiff-Evolved and
the CogVideoXWrapper loaded), so it follows the nodes' declarations exactly: the widget inputs in input order
(required, then optional), a "fixed" control_after_generate value after every seed widget that has one, linked
inputs never as widgets. Unset widgets take the node's default. tests/host/test_workflows.py validates the files and
tests/browser/test_browser.py opens them in the real frontend (layout included: above a node's pos sit its 30 px title bar
and, for custom-node packs, a 20 px source badge, so stacked nodes are 60 px apart and a group's first row starts at
y = 100, below the group's title).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from guidance_core.run_config import GuidanceSettings  # noqa: E402  (plain Python: the defaults, no torch work)

WORKFLOW_DIR = REPO_ROOT / "workflows"

# Weight files the workflows expect (the names users have), and where they go under ComfyUI/models.
SD15_CHECKPOINT = "epicrealism_naturalSinRC1VAE.safetensors"
SD15_BASE_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
MOTION_MODULE = "mm_sd_v15_v2.ckpt"
DOVER_WEIGHTS = "DOVER.pth"
IMAGEBIND_WEIGHTS = "imagebind_huge.pth"
CLIP_STYLE_WEIGHTS = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
T5_ENCODER = "t5xxl_fp16.safetensors"
COGVIDEO_MODEL = "THUDM/CogVideoX-5b"
# Wan (ComfyUI's native comfy/ldm/wan), the files of ComfyUI's official Wan templates.
WAN_TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN21_VAE = "wan_2.1_vae.safetensors"
WAN21_1_3B = "wan2.1_t2v_1.3B_fp16.safetensors"
WAN22_T2V_EXPERTS = ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
                     "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors")
WAN22_I2V_EXPERTS = ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
                     "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors")
# LTX (native comfy/ldm/lightricks), the files of ComfyUI's official LTX-Video and LTX-2 templates.
LTXV_CHECKPOINT = "ltx-video-2b-v0.9.5.safetensors"
LTX2_CHECKPOINT = "ltx-2-19b-dev-fp8.safetensors"
LTX2_TEXT_ENCODER = "gemma_3_12B_it_fp4_mixed.safetensors"
# HunyuanVideo 1.5 (native comfy/ldm/hunyuan_video), the files of ComfyUI's official 720p text-to-video template.
HUNYUAN15_T2V = "hunyuanvideo1.5_720p_t2v_fp16.safetensors"
HUNYUAN15_VAE = "hunyuanvideo15_vae_fp16.safetensors"
HUNYUAN15_TEXT_ENCODERS = ("qwen_2.5_vl_7b_fp8_scaled.safetensors", "byt5_small_glyphxl_fp16.safetensors")
# Files the workflows read from ComfyUI/input.
STYLE_IMAGE = "style_reference.png"
TARGET_AUDIO = "target_audio.wav"
FIRST_KEYFRAME = "first_frame.png"
LAST_KEYFRAME = "last_frame.png"

# (combo input) -> folder under ComfyUI/models, or "input" for ComfyUI/input; used by the test's placeholders.
FILE_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ADE_LoadAnimateDiffModel", "model_name"): "animatediff_models",
    ("TitanDoverLoader", "weights_name"): "dover",
    ("TitanImageBindLoader", "weights_name"): "imagebind",
    ("TitanClipStyleLoader", "clip_name"): "clip_vision",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("VAELoader", "vae_name"): "vae",
    ("LTXAVTextEncoderLoader", "text_encoder"): "text_encoders",
    ("LTXVAudioVAELoader", "ckpt_name"): "checkpoints",
    ("LoadImage", "image"): "input",
    ("LoadAudio", "audio"): "input",
}
# Widget position of a file combo that is not its node's first widget (the test's placeholders read it there).
FILE_WIDGET_INDEX = {("DualCLIPLoader", "clip_name2"): 1}
FRONTEND_ONLY_TYPES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# Paper settings (TITAN-Guide, AnimateDiff): 16 frames at 256x256, 20 steps, 8 fps, look-ahead 1, sampled-gradient
# guess on 2 frames; the update rule, strength and window are the pack's shipped defaults (benchmarks/fidelity.py).
SEED = 42
FRAMES = 16
SIZE = 256
STEPS = 20
FPS = 8.0
SHIPPED = GuidanceSettings()
TITAN_KNOBS = {"sampler": "ddim", "eta": 0.0, "strength": SHIPPED.strength, "strength_schedule": SHIPPED.schedule,
               "lookahead": SHIPPED.lookahead, "guidance_start": SHIPPED.start, "guidance_end": SHIPPED.end,
               "iterations": 1, "optimizer": SHIPPED.optimizer,
               "max_grad_norm": 0.0, "per_frame": False, "decode_chunk_frames": 0, "frames_per_video": FRAMES}
GUESS_KNOBS = {"kind": "sampled_gradient", "k": 1, "sampled_frames": 2, "frame_choice": "even",
               "frame_indices": "", "expansion": "tile", "random_weight": 0.5}
NEGATIVE_TEXT = "blurry, low quality, watermark, text, deformed"


def node(node_id: int, node_type: str, pos, size=(320, 120), links=None, title=None, **widgets) -> dict:
    """One table row: id, type, layout, links {input: (source id, output slot)}, widget values by name."""
    row = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "links": dict(links or {}),
           "widgets": widgets}
    if title:
        row["title"] = title
    return row


def note(node_id: int, pos, text: str, size=(420, 360)) -> dict:
    """A frontend-only Note node holding `text`."""
    return {"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "text": text}


def group(title: str, bounding, color="#3f789e") -> dict:
    """A frame around nodes on the canvas."""
    return {"title": title, "bounding": list(bounding), "color": color}


# ---------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------
def animatediff_backbone(prompt: str, checkpoint: str = SD15_CHECKPOINT) -> list:
    """Nodes 1-7: SD1.5 checkpoint, prompts, 16-frame latent, AnimateDiff-Evolved Gen2 motion model."""
    return [
        node(1, "CheckpointLoaderSimple", (20, 100), (320, 100), ckpt_name=checkpoint),
        node(2, "CLIPTextEncode", (380, 100), (400, 160), {"clip": (1, 1)}, "Positive prompt", text=prompt),
        node(3, "CLIPTextEncode", (380, 320), (400, 130), {"clip": (1, 1)}, "Negative prompt", text=NEGATIVE_TEXT),
        node(4, "EmptyLatentImage", (380, 510), (320, 110), title="16 frames, 256x256",
             width=SIZE, height=SIZE, batch_size=FRAMES),
        node(5, "ADE_LoadAnimateDiffModel", (20, 260), (320, 80), model_name=MOTION_MODULE),
        node(6, "ADE_ApplyAnimateDiffModelSimple", (20, 400), (320, 130), {"motion_model": (5, 0)}),
        node(7, "ADE_UseEvolvedSampling", (20, 590), (320, 120), {"model": (1, 0), "m_models": (6, 0)},
             beta_schedule="autoselect"),
    ]


def titan_sampler(node_id: int, pos, objective: int, *, model=(7, 0), guess=None, method=None, title=None,
                  seed: int = SEED, cfg: float = 7.5, **knobs) -> dict:
    """A TitanGuideSampler on the AnimateDiff backbone (nodes 2-4 and the checkpoint's VAE)."""
    links = {"model": model, "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0), "vae": (1, 2),
             "objective": (objective, 0)}
    if guess is not None:
        links["guess"] = (guess, 0)
    if method is not None:
        links["method"] = (method, 0)
    return node(node_id, "TitanGuideSampler", pos, (340, 640), links, title, seed=seed, steps=STEPS, cfg=cfg,
                scheduler="normal", denoise=1.0, **{**TITAN_KNOBS, **knobs})


def video_outputs(first_id: int, sampler: int, pos, prefix: str, title="Guided video") -> list:
    """VAEDecode -> SaveAnimatedWEBP (8 fps) plus the sampler's loss plot and report."""
    x, y = pos
    return [
        node(first_id, "VAEDecode", (x, y), (210, 50), {"samples": (sampler, 0), "vae": (1, 2)}),
        node(first_id + 1, "SaveAnimatedWEBP", (x + 240, y), (340, 380), {"images": (first_id, 0)}, title,
             filename_prefix=prefix, fps=FPS, lossless=False, quality=90, method="default"),
        node(first_id + 2, "SaveImage", (x, y + 440), (340, 300), {"images": (sampler, 2)}, "Loss per step",
             filename_prefix=prefix + "_loss"),
        node(first_id + 3, "PreviewAny", (x + 360, y + 440), (340, 300), {"source": (sampler, 1)},
             "Guidance report"),
    ]


def weights_note(task: str, files: list, extra: str = "") -> str:
    """The Note text: what the workflow does and which weight files go where."""
    lines = [task, "", "Weight files this workflow expects (put them in these ComfyUI folders, then press R in "
             "the canvas to refresh the lists):"]
    lines += [f"- {where}/{name}  ({source})" for name, where, source in files]
    if extra:
        lines += ["", extra]
    lines += ["", f"Shipped defaults: {SHIPPED.optimizer} strength {SHIPPED.strength}, guidance on the first "
              f"{SHIPPED.end:.0%} of the steps, look-ahead 1, sampled-gradient guess on 2 frames, 20 steps (the "
              "authors' code: optimizer adam_per_step, strength 0.1, guidance_end 1). Lower decode_chunk_frames or "
              "use per_frame if memory runs out."]
    return "\n".join(lines)


ANIMATEDIFF_FILES = [
    (SD15_CHECKPOINT, "models/checkpoints", "epiCRealism, the paper's SD1.5 base; any SD1.5 checkpoint works"),
    (MOTION_MODULE, "models/animatediff_models", "AnimateDiff v2 motion module, huggingface.co/guoyww/animatediff"),
]
BACKBONE_GROUP = group("SD1.5 + AnimateDiff-Evolved (16 frames, 256x256)", (0, 0, 800, 730))


# ---------------------------------------------------------------------------------------------------------
# The workflows
# ---------------------------------------------------------------------------------------------------------
def aesthetic_dover_animatediff() -> dict:
    """AnimateDiff video guided by DOVER's aesthetic + technical quality score."""
    nodes = animatediff_backbone("a lighthouse on a cliff at sunset, waves crashing, cinematic")
    nodes += [
        node(8, "TitanDoverLoader", (20, 800), (320, 90), weights_name=DOVER_WEIGHTS, dtype="fp32"),
        node(9, "TitanAestheticObjective", (20, 950), (320, 180), {"dover": (8, 0)}, mode="fused", weight=1.0,
             fragment_sampling="random", fragment_seed=0, technical_samples=1),
        node(10, "TitanGradientGuess", (380, 800), (320, 220), **GUESS_KNOBS),
        titan_sampler(11, (820, 100), 9, guess=10, title="TITAN-Guide: DOVER aesthetics"),
        *video_outputs(12, 11, (1200, 100), "titan/aesthetic_dover"),
    ]
    files = ANIMATEDIFF_FILES + [(DOVER_WEIGHTS, "models/dover", "github.com/VQAssessment/DOVER release DOVER.pth")]
    text = weights_note("TITAN-Guide: aesthetic guidance with DOVER on AnimateDiff", files)
    return {"nodes": nodes + [note(16, (1200, 900), text)], "groups": [BACKBONE_GROUP]}


def style_clip_animatediff() -> dict:
    """AnimateDiff video guided towards a reference image's style (and an optional text) through CLIP."""
    nodes = animatediff_backbone("a city street at night with neon lights, people walking")
    nodes += [
        node(8, "TitanClipStyleLoader", (20, 800), (320, 150), clip_name=CLIP_STYLE_WEIGHTS, architecture="auto",
             pretrained_tag="", dtype="fp32"),
        node(9, "LoadImage", (20, 1010), (320, 320), title="Style reference", image=STYLE_IMAGE),
        node(10, "TitanStyleObjective", (380, 800), (340, 330), {"clip": (8, 0), "style_image": (9, 0)},
             loss_kind="cosine", weight=1.0, text="", style_weight=1.0, text_weight=1.0, content_weight=0.0,
             gram_layer=-2, frames_per_chunk=0),
        node(11, "TitanGradientGuess", (380, 1190), (320, 220), **GUESS_KNOBS),
        titan_sampler(12, (820, 100), 10, guess=11, title="TITAN-Guide: CLIP style"),
        *video_outputs(13, 12, (1200, 100), "titan/style_clip"),
    ]
    files = ANIMATEDIFF_FILES + [
        (CLIP_STYLE_WEIGHTS, "models/clip_vision", "open_clip ViT-H-14 laion2b_s32b_b79k, the CLIP vision file "
         "ComfyUI users already have"),
        (STYLE_IMAGE, "input", "your style image; any size"),
    ]
    text = weights_note("TITAN-Guide: style guidance (Style-CLIP) on AnimateDiff", files,
                        "Optional: type a target text in the objective's text box (text_weight sets its share).")
    return {"nodes": nodes + [note(17, (1200, 900), text)], "groups": [BACKBONE_GROUP]}


def audio_imagebind_animatediff() -> dict:
    """AnimateDiff video aligned with an audio clip through ImageBind."""
    nodes = animatediff_backbone("a dog barking in a backyard")
    nodes += [
        node(8, "TitanImageBindLoader", (20, 800), (320, 90), weights_name=IMAGEBIND_WEIGHTS, dtype="fp32"),
        node(9, "LoadAudio", (20, 950), (320, 140), title="Target audio", audio=TARGET_AUDIO),
        node(10, "TitanAudioObjective", (380, 800), (340, 330), {"imagebind": (8, 0), "audio": (9, 0)}, fps=FPS,
             audio_start=0.0, weight=1.0, text="", audio_weight=1.0, text_weight=1.0, vision_clips="pairs",
             spatial_crops="3", clips_per_chunk=0),
        node(11, "TitanGradientGuess", (380, 1190), (320, 220), **GUESS_KNOBS),
        titan_sampler(12, (820, 100), 10, guess=11, title="TITAN-Guide: ImageBind audio"),
        *video_outputs(13, 12, (1200, 100), "titan/audio_imagebind"),
    ]
    files = ANIMATEDIFF_FILES + [
        (IMAGEBIND_WEIGHTS, "models/imagebind", "dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"),
        (TARGET_AUDIO, "input", "your audio; the 2 s from audio_start are matched to the 16 frames at 8 fps"),
    ]
    text = weights_note("TITAN-Guide: audio-video alignment with ImageBind on AnimateDiff", files)
    return {"nodes": nodes + [note(17, (1200, 900), text)], "groups": [BACKBONE_GROUP]}


def frame_interpolation_animatediff() -> dict:
    """AnimateDiff video whose first and last frames are pulled towards two keyframe images."""
    nodes = animatediff_backbone("a flower blooming, time-lapse, studio light")
    nodes += [
        node(8, "LoadImage", (20, 800), (320, 300), title="First keyframe", image=FIRST_KEYFRAME),
        node(9, "LoadImage", (380, 800), (320, 300), title="Last keyframe", image=LAST_KEYFRAME),
        node(10, "ImageBatch", (20, 1160), (210, 50), {"image1": (8, 0), "image2": (9, 0)}),
        node(11, "ImageScale", (380, 1160), (320, 150), {"image": (10, 0)}, title="Keyframes to 256x256",
             upscale_method="bilinear", width=SIZE, height=SIZE, crop="center"),
        node(12, "TitanFrameInterpolationObjective", (820, 800), (340, 150), {"keyframes": (11, 0)},
             frame_indices="0, -1", space="pixels", weight=1.0),
        node(13, "TitanGradientGuess", (820, 1010), (340, 220), **GUESS_KNOBS),
        titan_sampler(14, (820, 100), 12, guess=13, title="TITAN-Guide: keyframe interpolation"),
        *video_outputs(15, 14, (1200, 100), "titan/frame_interpolation"),
    ]
    files = ANIMATEDIFF_FILES + [
        (FIRST_KEYFRAME, "input", "the first frame you want"),
        (LAST_KEYFRAME, "input", "the last frame you want (scaled to the first one's size, then to 256x256)"),
    ]
    text = weights_note("TITAN-Guide: frame interpolation (given first and last frames) on AnimateDiff", files)
    return {"nodes": nodes + [note(19, (1200, 900), text)], "groups": [BACKBONE_GROUP]}


def cogvideox_titan() -> dict:
    """CogVideoX-5b (kijai's wrapper) guided by DOVER: 33 frames at 384x256, as the paper's CogVideoX runs."""
    nodes = [
        node(1, "DownloadAndLoadCogVideoModel", (20, 100), (340, 250), model=COGVIDEO_MODEL, precision="bf16",
             quantization="disabled", enable_sequential_cpu_offload=False, attention_mode="sdpa",
             load_device="main_device"),
        node(2, "CLIPLoader", (20, 410), (340, 110), title="T5-XXL text encoder", clip_name=T5_ENCODER,
             type="sd3", device="default"),
        node(3, "CogVideoTextEncode", (400, 100), (400, 200), {"clip": (2, 0)}, "Positive prompt",
             prompt="a golden retriever running on a beach at sunset, slow motion", strength=1.0,
             force_offload=True),
        node(4, "CogVideoTextEncode", (400, 360), (400, 160), {"clip": (3, 1)}, "Negative prompt",
             prompt=NEGATIVE_TEXT, strength=1.0, force_offload=True),
        node(5, "EmptyLatentImage", (400, 580), (320, 110), title="384x256 (frames are set on the sampler)",
             width=384, height=256, batch_size=1),
        node(6, "TitanDoverLoader", (20, 580), (340, 90), weights_name=DOVER_WEIGHTS, dtype="fp32"),
        node(7, "TitanAestheticObjective", (20, 730), (340, 180), {"dover": (6, 0)}, mode="fused", weight=1.0,
             fragment_sampling="random", fragment_seed=0, technical_samples=1),
        node(8, "TitanGradientGuess", (400, 750), (320, 220), **GUESS_KNOBS),
        node(9, "TitanGuideCogVideoSampler", (840, 100), (340, 620),
             {"model": (1, 0), "vae": (1, 1), "positive": (3, 0), "negative": (4, 0), "objective": (7, 0),
              "samples": (5, 0), "guess": (8, 0)}, "TITAN-Guide: CogVideoX + DOVER",
             num_frames=33, steps=50, cfg=6.0, seed=SEED, scheduler="CogVideoXDDIM", strength=SHIPPED.strength,
             strength_schedule=SHIPPED.schedule, lookahead=1, guidance_start=SHIPPED.start, guidance_end=SHIPPED.end,
             iterations=1, optimizer=SHIPPED.optimizer, max_grad_norm=0.0, per_frame=False, decode_chunk_frames=0, denoise_strength=1.0),
        node(10, "CogVideoDecode", (1220, 100), (340, 250), {"vae": (1, 1), "samples": (9, 0)},
             enable_vae_tiling=True, tile_sample_min_height=240, tile_sample_min_width=360,
             tile_overlap_factor_height=0.2, tile_overlap_factor_width=0.2, auto_tile_size=True),
        node(11, "SaveAnimatedWEBP", (1600, 100), (360, 380), {"images": (10, 0)}, "Guided video",
             filename_prefix="titan/cogvideox_dover", fps=16.0, lossless=False, quality=90, method="default"),
        node(12, "SaveImage", (1220, 540), (340, 300), {"images": (9, 2)}, "Loss per step",
             filename_prefix="titan/cogvideox_dover_loss"),
        node(13, "PreviewAny", (1600, 540), (360, 300), {"source": (9, 1)}, "Guidance report"),
    ]
    files = [
        (COGVIDEO_MODEL.split("/")[-1], "models/CogVideo", "the wrapper downloads it there on first run "
         "(huggingface.co/THUDM/CogVideoX-5b), or put the diffusers folder there yourself"),
        (T5_ENCODER, "models/text_encoders", "T5-XXL, the same file SD3 / Flux users have "
         "(t5xxl_fp8_e4m3fn.safetensors also works)"),
        (DOVER_WEIGHTS, "models/dover", "github.com/VQAssessment/DOVER release DOVER.pth"),
    ]
    text = weights_note("TITAN-Guide on CogVideoX-5b (kijai's ComfyUI-CogVideoXWrapper): aesthetic guidance "
                        "with DOVER, 33 frames at 384x256 (the paper's CogVideoX setting)", files,
                        "Swap the objective for any other TITAN objective node; the sampler takes the "
                        "wrapper's MODEL/VAE and CogVideoTextEncode conditionings.")
    return {"nodes": nodes + [note(14, (1220, 900), text, (740, 340))],
            "groups": [group("CogVideoX-5b (kijai wrapper)", (0, 0, 820, 990))]}


def sd15_image_titan() -> dict:
    """A single SD1.5 image guided towards a reference image's style."""
    nodes = [
        node(1, "CheckpointLoaderSimple", (20, 100), (320, 100), ckpt_name=SD15_BASE_CHECKPOINT),
        node(2, "CLIPTextEncode", (380, 100), (400, 160), {"clip": (1, 1)}, "Positive prompt",
             text="a cosy cabin in a snowy forest, warm light in the windows"),
        node(3, "CLIPTextEncode", (380, 320), (400, 130), {"clip": (1, 1)}, "Negative prompt", text=NEGATIVE_TEXT),
        node(4, "EmptyLatentImage", (380, 510), (320, 110), width=512, height=512, batch_size=1),
        node(5, "TitanClipStyleLoader", (20, 260), (320, 150), clip_name=CLIP_STYLE_WEIGHTS, architecture="auto",
             pretrained_tag="", dtype="fp32"),
        node(6, "LoadImage", (20, 470), (320, 320), title="Style reference", image=STYLE_IMAGE),
        node(7, "TitanStyleObjective", (380, 680), (340, 330), {"clip": (5, 0), "style_image": (6, 0)},
             loss_kind="cosine", weight=1.0, text="", style_weight=1.0, text_weight=1.0, content_weight=0.0,
             gram_layer=-2, frames_per_chunk=0),
        node(8, "TitanGradientGuess", (20, 850), (320, 220), title="Gradient guess (image: all of it)",
             **{**GUESS_KNOBS, "sampled_frames": 0}),
        node(9, "TitanGuideSampler", (820, 100), (340, 640),
             {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0), "vae": (1, 2),
              "objective": (7, 0), "guess": (8, 0)}, "TITAN-Guide: CLIP style",
             seed=SEED, steps=STEPS, cfg=7.5, scheduler="normal", denoise=1.0,
             **{**TITAN_KNOBS, "frames_per_video": 0}),
        node(10, "VAEDecode", (1200, 100), (210, 50), {"samples": (9, 0), "vae": (1, 2)}),
        node(11, "SaveImage", (1440, 100), (400, 440), {"images": (10, 0)}, "Guided image",
             filename_prefix="titan/sd15_style"),
        node(12, "SaveImage", (1200, 600), (340, 300), {"images": (9, 2)}, "Loss per step",
             filename_prefix="titan/sd15_style_loss"),
        node(13, "PreviewAny", (1560, 600), (340, 300), {"source": (9, 1)}, "Guidance report"),
    ]
    files = [
        (SD15_BASE_CHECKPOINT, "models/checkpoints", "Stable Diffusion 1.5; any SD1.5 checkpoint works"),
        (CLIP_STYLE_WEIGHTS, "models/clip_vision", "open_clip ViT-H-14 laion2b_s32b_b79k"),
        (STYLE_IMAGE, "input", "your style image; any size"),
    ]
    text = weights_note("TITAN-Guide on a plain SD1.5 image (no video model): style guidance through CLIP",
                        files, "frames_per_video 0 and sampled_frames 0: the batch is images, not a video.")
    return {"nodes": nodes + [note(14, (820, 800), text, (340, 420))],
            "groups": [group("SD1.5 image", (0, 0, 800, 1090))]}


def compare_same_seed() -> dict:
    """Unguided, TITAN-Guide, FreeDoM and TFG on AnimateDiff + DOVER, all from the same seed."""
    nodes = animatediff_backbone("a lighthouse on a cliff at sunset, waves crashing, cinematic")
    nodes += [
        node(8, "TitanDoverLoader", (20, 800), (320, 90), weights_name=DOVER_WEIGHTS, dtype="fp32"),
        node(9, "TitanAestheticObjective", (20, 950), (320, 180), {"dover": (8, 0)}, mode="fused", weight=1.0,
             fragment_sampling="random", fragment_seed=0, technical_samples=1),
        node(10, "TitanGradientGuess", (20, 1190), (320, 220), **GUESS_KNOBS),
        node(11, "TitanGuidanceMethod", (380, 800), (340, 520), title="FreeDoM", method="freedom"),
        node(12, "TitanGuidanceMethod", (740, 800), (340, 520), title="TFG", method="tfg"),
    ]
    # The four samplers side by side, each above its decode, video and report.
    columns = {13: 1120, 14: 1500, 15: 1880, 16: 2260}
    nodes += [
        titan_sampler(13, (columns[13], 100), 9, guess=10, title="Unguided (strength 0, same seed)", strength=0.0),
        titan_sampler(14, (columns[14], 100), 9, guess=10, title="TITAN-Guide"),
        titan_sampler(15, (columns[15], 100), 9, method=11, title="FreeDoM (backprop)"),
        titan_sampler(16, (columns[16], 100), 9, method=12, title="TFG (backprop)"),
    ]
    next_id = 17
    for sampler, label in ((13, "unguided"), (14, "titan"), (15, "freedom"), (16, "tfg")):
        x = columns[sampler]
        nodes += [
            node(next_id, "VAEDecode", (x, 800), (210, 50), {"samples": (sampler, 0), "vae": (1, 2)}),
            node(next_id + 1, "SaveAnimatedWEBP", (x, 910), (340, 340), {"images": (next_id, 0)}, label,
                 filename_prefix=f"titan/compare_{label}", fps=FPS, lossless=False, quality=90, method="default"),
            node(next_id + 2, "PreviewAny", (x, 1310), (340, 250), {"source": (sampler, 1)}, f"{label} report"),
        ]
        next_id += 3
    files = ANIMATEDIFF_FILES + [(DOVER_WEIGHTS, "models/dover", "github.com/VQAssessment/DOVER release DOVER.pth")]
    text = weights_note(
        "Same seed, four ways: unguided, TITAN-Guide (forward-mode, no backprop), FreeDoM and TFG (both "
        "backpropagate through the denoiser and need far more memory) on AnimateDiff with the DOVER objective",
        files, "Each report shows the objective per step. FreeDoM / TFG use only the method node's own "
        "strengths (freedom_rho, tfg_rho / tfg_mu); strength / optimiser knobs on their samplers are ignored. "
        "Mute (Ctrl+M) a sampler to skip it.")
    return {"nodes": nodes + [note(next_id, (380, 1380), text, (700, 200))],
            "groups": [BACKBONE_GROUP, group("Same seed: unguided / TITAN / FreeDoM / TFG", (1100, 0, 1520, 1590),
                                             "#8A8")]}


# ---------------------------------------------------------------------------------------------------------
# Wan (native in ComfyUI 0.33): the official templates' loaders, TitanGuideSampler instead of KSampler(Advanced)
# ---------------------------------------------------------------------------------------------------------
WAN_FPS = 16.0
WAN_TITAN_KNOBS = {**TITAN_KNOBS, "sampler": "euler", "frames_per_video": 0}
WAN_FILES = [
    (WAN_TEXT_ENCODER, "models/text_encoders", "UMT5-XXL, huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged"),
    (WAN21_VAE, "models/vae", "the Wan 2.1 VAE (also Wan 2.2 14B's), same repository"),
]


def wan_text_and_vae(prompt: str, first_id: int, x: int = 380) -> list:
    """CLIPLoader (UMT5-XXL, type wan), positive / negative CLIPTextEncode, VAELoader: ids first_id .. + 3."""
    return [
        node(first_id, "CLIPLoader", (x, 100), (400, 110), title="UMT5-XXL text encoder", clip_name=WAN_TEXT_ENCODER,
             type="wan", device="default"),
        node(first_id + 1, "CLIPTextEncode", (x, 270), (400, 160), {"clip": (first_id, 0)}, "Positive prompt",
             text=prompt),
        node(first_id + 2, "CLIPTextEncode", (x, 490), (400, 130), {"clip": (first_id, 0)}, "Negative prompt",
             text=NEGATIVE_TEXT),
        node(first_id + 3, "VAELoader", (x, 680), (400, 80), vae_name=WAN21_VAE),
    ]


def wan_expert_pair(files: tuple, boundary: float) -> list:
    """Nodes 1-5: the Wan 2.2 14B experts, ModelSamplingSD3 (shift 8) on each, TitanWanExperts joining them."""
    return [
        node(1, "UNETLoader", (20, 100), (320, 110), title="High-noise expert", unet_name=files[0],
             weight_dtype="default"),
        node(2, "UNETLoader", (20, 270), (320, 110), title="Low-noise expert", unet_name=files[1],
             weight_dtype="default"),
        node(3, "ModelSamplingSD3", (20, 440), (320, 80), {"model": (1, 0)}, shift=8.0),
        node(4, "ModelSamplingSD3", (20, 580), (320, 80), {"model": (2, 0)}, shift=8.0),
        node(5, "TitanWanExperts", (20, 720), (320, 110), {"high_noise_model": (3, 0), "low_noise_model": (4, 0)},
             boundary=boundary),
    ]


def wan_sampler(node_id: int, links: dict, title: str, cfg: float) -> dict:
    """A TitanGuideSampler as the official Wan templates sample (20 steps, euler, simple schedule)."""
    return node(node_id, "TitanGuideSampler", (820, 100), (340, 640), links, title, seed=SEED, steps=STEPS, cfg=cfg,
                scheduler="simple", denoise=1.0, **WAN_TITAN_KNOBS)


def wan_outputs(first_id: int, sampler: int, vae: int, prefix: str, fps: float = WAN_FPS) -> list:
    """VAEDecode -> SaveAnimatedWEBP (Wan: 16 fps), the loss plot and the report."""
    return [
        node(first_id, "VAEDecode", (1200, 100), (210, 50), {"samples": (sampler, 0), "vae": (vae, 0)}),
        node(first_id + 1, "SaveAnimatedWEBP", (1440, 100), (340, 380), {"images": (first_id, 0)}, "Guided video",
             filename_prefix=prefix, fps=fps, lossless=False, quality=90, method="default"),
        node(first_id + 2, "SaveImage", (1200, 540), (340, 300), {"images": (sampler, 2)}, "Loss per step",
             filename_prefix=prefix + "_loss"),
        node(first_id + 3, "PreviewAny", (1560, 540), (340, 300), {"source": (sampler, 1)}, "Guidance report"),
    ]


WAN_NOTE = ("Frames: Wan's VAE turns latent frame 0 into frame 0 and latent frame k into frames 4k-3..4k, so 81 "
            "frames are 21 latent frames; 'sampled frames' counts latent frames, and 'frame indices' of a fixed "
            "frame choice are video frames (mapped to the latent frames that make them). The decode inside the "
            "objective runs the VAE's own causal chunks (exact); decode_chunk_frames must stay 0.")


def wan22_t2v_dover() -> dict:
    """Wan 2.2 14B text-to-video (high / low-noise experts) guided by DOVER's aesthetic score."""
    nodes = wan_expert_pair(WAN22_T2V_EXPERTS, 0.875)
    nodes += wan_text_and_vae("a lighthouse on a cliff at sunset, waves crashing, cinematic", 6)
    nodes += [
        node(10, "EmptyHunyuanLatentVideo", (380, 820), (320, 130), title="81 frames, 640x640", width=640,
             height=640, length=81, batch_size=1),
        node(11, "TitanDoverLoader", (20, 1050), (320, 90), weights_name=DOVER_WEIGHTS, dtype="fp32"),
        node(12, "TitanAestheticObjective", (20, 1200), (320, 180), {"dover": (11, 0)}, mode="fused", weight=1.0,
             fragment_sampling="random", fragment_seed=0, technical_samples=1),
        node(13, "TitanGradientGuess", (380, 1050), (320, 220), **GUESS_KNOBS),
        wan_sampler(14, {"model": (5, 0), "positive": (7, 0), "negative": (8, 0), "latent_image": (10, 0),
                         "vae": (9, 0), "objective": (12, 0), "guess": (13, 0)}, "TITAN-Guide: DOVER aesthetics", 3.5),
        *wan_outputs(15, 14, 9, "titan/wan22_t2v_dover"),
    ]
    files = [(WAN22_T2V_EXPERTS[0], "models/diffusion_models", "huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged"),
             (WAN22_T2V_EXPERTS[1], "models/diffusion_models", "same repository"), *WAN_FILES,
             (DOVER_WEIGHTS, "models/dover", "github.com/VQAssessment/DOVER release DOVER.pth")]
    text = weights_note("TITAN-Guide on Wan 2.2 14B text-to-video: aesthetic guidance with DOVER. ComfyUI's official "
                        "template runs the high-noise expert for steps 0-10 and the low-noise one for 10-20 with two "
                        "KSamplerAdvanced; TitanWanExperts makes one MODEL that picks the expert by noise level "
                        "(boundary 0.875, Wan 2.2's own), so TITAN's look-ahead calls the right expert too.", files,
                        WAN_NOTE)
    return {"nodes": nodes + [note(19, (1200, 900), text, (700, 480))],
            "groups": [group("Wan 2.2 14B text-to-video (expert pair)", (0, 0, 800, 990))]}


def wan22_i2v_style() -> dict:
    """Wan 2.2 14B image-to-video guided towards a reference image's style through CLIP."""
    nodes = wan_expert_pair(WAN22_I2V_EXPERTS, 0.9)
    nodes += wan_text_and_vae("the woman turns her head and smiles, gentle wind, film look", 6)
    nodes += [
        node(10, "LoadImage", (20, 1150), (320, 320), title="Start image", image=FIRST_KEYFRAME),
        node(11, "WanImageToVideo", (380, 820), (320, 190),
             {"positive": (7, 0), "negative": (8, 0), "vae": (9, 0), "start_image": (10, 0)},
             width=640, height=640, length=81, batch_size=1),
        node(12, "TitanClipStyleLoader", (380, 1150), (320, 150), clip_name=CLIP_STYLE_WEIGHTS,
             architecture="auto", pretrained_tag="", dtype="fp32"),
        node(13, "LoadImage", (820, 1080), (340, 320), title="Style reference", image=STYLE_IMAGE),
        node(14, "TitanStyleObjective", (380, 1360), (340, 330), {"clip": (12, 0), "style_image": (13, 0)},
             loss_kind="cosine", weight=1.0, text="", style_weight=1.0, text_weight=1.0, content_weight=0.0,
             gram_layer=-2, frames_per_chunk=0),
        node(15, "TitanGradientGuess", (820, 800), (340, 220), **GUESS_KNOBS),
        wan_sampler(16, {"model": (5, 0), "positive": (11, 0), "negative": (11, 1), "latent_image": (11, 2),
                         "vae": (9, 0), "objective": (14, 0), "guess": (15, 0)}, "TITAN-Guide: CLIP style", 3.5),
        *wan_outputs(17, 16, 9, "titan/wan22_i2v_style"),
    ]
    files = [(WAN22_I2V_EXPERTS[0], "models/diffusion_models", "huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged"),
             (WAN22_I2V_EXPERTS[1], "models/diffusion_models", "same repository"), *WAN_FILES,
             (CLIP_STYLE_WEIGHTS, "models/clip_vision", "open_clip ViT-H-14 laion2b_s32b_b79k"),
             (FIRST_KEYFRAME, "input", "the start image (WanImageToVideo keeps it as the first frame)"),
             (STYLE_IMAGE, "input", "your style image; any size")]
    text = weights_note("TITAN-Guide on Wan 2.2 14B image-to-video: style guidance through CLIP. WanImageToVideo's "
                        "image conditioning stays on every model call; TitanWanExperts switches the experts by noise "
                        "level (boundary 0.9, Wan 2.2's own for image-to-video).", files, WAN_NOTE)
    return {"nodes": nodes + [note(21, (1200, 900), text, (700, 480))],
            "groups": [group("Wan 2.2 14B image-to-video (expert pair)", (0, 0, 800, 1080))]}


def wan21_frame_interpolation() -> dict:
    """Wan 2.1 1.3B text-to-video pulled through a first and a last keyframe."""
    nodes = [
        node(1, "UNETLoader", (20, 100), (320, 110), unet_name=WAN21_1_3B, weight_dtype="default"),
        node(2, "ModelSamplingSD3", (20, 270), (320, 80), {"model": (1, 0)}, shift=8.0),
        *wan_text_and_vae("a flower blooming, time-lapse, studio light", 3),
        node(7, "EmptyHunyuanLatentVideo", (380, 820), (320, 130), title="81 frames, 832x480", width=832,
             height=480, length=81, batch_size=1),
        node(8, "LoadImage", (20, 1050), (320, 300), title="First keyframe", image=FIRST_KEYFRAME),
        node(9, "LoadImage", (380, 1050), (320, 300), title="Last keyframe", image=LAST_KEYFRAME),
        node(10, "ImageBatch", (20, 1410), (210, 50), {"image1": (8, 0), "image2": (9, 0)}),
        node(11, "ImageScale", (380, 1410), (320, 150), {"image": (10, 0)}, title="Keyframes to 832x480",
             upscale_method="bilinear", width=832, height=480, crop="center"),
        node(12, "TitanFrameInterpolationObjective", (820, 800), (340, 150), {"keyframes": (11, 0)},
             frame_indices="0, -1", space="pixels", weight=1.0),
        node(13, "TitanGradientGuess", (820, 1010), (340, 220), **GUESS_KNOBS),
        wan_sampler(14, {"model": (2, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (7, 0),
                         "vae": (6, 0), "objective": (12, 0), "guess": (13, 0)}, "TITAN-Guide: keyframes", 6.0),
        *wan_outputs(15, 14, 6, "titan/wan21_frame_interpolation"),
    ]
    files = [(WAN21_1_3B, "models/diffusion_models", "huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged"),
             *WAN_FILES, (FIRST_KEYFRAME, "input", "the first frame you want"),
             (LAST_KEYFRAME, "input", "the last frame you want")]
    text = weights_note("TITAN-Guide on Wan 2.1 1.3B text-to-video: frame interpolation through a first and a last "
                        "keyframe (frames 0 and 80 of 81)", files, WAN_NOTE)
    return {"nodes": nodes + [note(19, (1200, 900), text, (700, 480))],
            "groups": [group("Wan 2.1 1.3B text-to-video", (0, 0, 800, 990))]}


COGVIDEOX_NATIVE_UNET = "cogvideox_5b.safetensors"
COGVIDEOX_VAE = "cogvideox_vae.safetensors"


def cogvideox_native_style() -> dict:
    """CogVideoX 5B on ComfyUI's native nodes (no wrapper) guided towards a reference image's style through CLIP."""
    nodes = [
        node(1, "UNETLoader", (20, 100), (320, 110), title="CogVideoX 5B (native layout)",
             unet_name=COGVIDEOX_NATIVE_UNET, weight_dtype="default"),
        node(2, "CLIPLoader", (380, 100), (400, 110), title="T5-XXL text encoder", clip_name=T5_ENCODER,
             type="cogvideox", device="default"),
        node(3, "CLIPTextEncode", (380, 270), (400, 160), {"clip": (2, 0)}, "Positive prompt",
             text="a paper boat drifting down a rain-soaked street, reflections, cinematic"),
        node(4, "CLIPTextEncode", (380, 490), (400, 130), {"clip": (2, 0)}, "Negative prompt", text=NEGATIVE_TEXT),
        node(5, "VAELoader", (380, 680), (400, 80), vae_name=COGVIDEOX_VAE),
        node(6, "EmptyHunyuanLatentVideo", (20, 270), (320, 130), title="49 frames, 720x480", width=720, height=480,
             length=49, batch_size=1),
        node(7, "TitanClipStyleLoader", (20, 1050), (320, 150), clip_name=CLIP_STYLE_WEIGHTS, architecture="auto",
             pretrained_tag="", dtype="fp32"),
        node(8, "LoadImage", (20, 1260), (320, 320), title="Style reference", image=STYLE_IMAGE),
        node(9, "TitanStyleObjective", (380, 1050), (340, 330), {"clip": (7, 0), "style_image": (8, 0)},
             loss_kind="cosine", weight=1.0, text="", style_weight=1.0, text_weight=1.0, content_weight=0.0,
             gram_layer=-2, frames_per_chunk=0),
        node(10, "TitanGradientGuess", (380, 1440), (320, 220), **GUESS_KNOBS),
        node(11, "TitanGuideSampler", (820, 100), (340, 640),
             {"model": (1, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (6, 0), "vae": (5, 0),
              "objective": (9, 0), "guess": (10, 0)}, "TITAN-Guide: CLIP style", seed=SEED, steps=30, cfg=6.0,
             scheduler="simple", denoise=1.0, **WAN_TITAN_KNOBS),
        node(12, "VAEDecode", (1200, 100), (210, 50), {"samples": (11, 0), "vae": (5, 0)}),
        node(13, "SaveAnimatedWEBP", (1440, 100), (340, 380), {"images": (12, 0)}, "Guided video",
             filename_prefix="titan/cogvideox_native_style", fps=FPS, lossless=False, quality=90, method="default"),
        node(14, "SaveImage", (1200, 540), (340, 300), {"images": (11, 2)}, "Loss per step",
             filename_prefix="titan/cogvideox_native_style_loss"),
        node(15, "PreviewAny", (1560, 540), (340, 300), {"source": (11, 1)}, "Guidance report"),
    ]
    files = [(COGVIDEOX_NATIVE_UNET, "models/diffusion_models", "THUDM/CogVideoX-5b's transformer converted by "
              "scripts/convert_cogvideox.py (the CogVideoXWrapper downloads it to models/CogVideo/CogVideoX-5b)"),
             (T5_ENCODER, "models/text_encoders", "huggingface.co/comfyanonymous/flux_text_encoders"),
             (COGVIDEOX_VAE, "models/vae", "huggingface.co/Comfy-Org/void-model (vae/), or CogVideoX-5b's "
              "vae/diffusion_pytorch_model.safetensors as is"),
             (CLIP_STYLE_WEIGHTS, "models/clip_vision", "open_clip ViT-H-14 laion2b_s32b_b79k"),
             (STYLE_IMAGE, "input", "your style image; any size")]
    text = weights_note(
        "TITAN-Guide on native CogVideoX 5B (ComfyUI's own CogVideoX, V_PREDICTION_DDPM): style guidance through "
        "CLIP. TitanGuideSampler feeds the model its training-space input, as ComfyUI's VOIDSampler does (a plain "
        "KSampler does not for this model).", files,
        "Frames: CogVideoX's VAE turns 13 latent frames into 49 frames (latent frame 0 into frame 0, latent frame k "
        "into frames 4k-3..4k) only for odd latent counts: keep the length at 4k+1 with k even (49, 33, 17).")
    return {"nodes": nodes + [note(19, (1200, 900), text, (700, 480))],
            "groups": [group("CogVideoX 5B, native nodes", (0, 0, 800, 790))]}


# ---------------------------------------------------------------------------------------------------------
# LTX (native in ComfyUI 0.33): the official templates' loaders and conditioning, TitanGuideSampler instead of
# SamplerCustom(Advanced)
# ---------------------------------------------------------------------------------------------------------
LTX_FPS = 25.0
LTX_TITAN_KNOBS = {**WAN_TITAN_KNOBS}
LTX_NOTE = ("Frames: LTX's VAE turns latent frame 0 into frame 0 and latent frame k into frames 8k-7..8k, so 97 "
            "frames are 13 latent frames; 'frame indices' of a fixed frame choice are video frames. The decode inside "
            "the objective runs the VAE's own causal chunks (exact); decode_chunk_frames must stay 0. Use the 'titan' "
            "method: ComfyUI's LTX blocks update activations in place, which the backprop baselines cannot "
            "differentiate. For the templates' LTXVScheduler, put TitanGuideSamplerSelect into SamplerCustomAdvanced.")


def ltx_outputs(first_id: int, sampler: int, samples: tuple, vae: tuple, prefix: str, x: int = 1200) -> list:
    """VAEDecode of `samples` -> SaveAnimatedWEBP (25 fps), the loss plot and the report of node `sampler`."""
    return [
        node(first_id, "VAEDecode", (x, 100), (210, 50), {"samples": samples, "vae": vae}),
        node(first_id + 1, "SaveAnimatedWEBP", (x + 240, 100), (340, 380), {"images": (first_id, 0)}, "Guided video",
             filename_prefix=prefix, fps=LTX_FPS, lossless=False, quality=90, method="default"),
        node(first_id + 2, "SaveImage", (x, 540), (340, 300), {"images": (sampler, 2)}, "Loss per step",
             filename_prefix=prefix + "_loss"),
        node(first_id + 3, "PreviewAny", (x + 360, 540), (340, 300), {"source": (sampler, 1)}, "Guidance report"),
    ]


def ltxv_i2v_style() -> dict:
    """LTX-Video 2B image-to-video guided towards a reference image's style through CLIP."""
    nodes = [
        node(1, "CheckpointLoaderSimple", (20, 100), (320, 100), ckpt_name=LTXV_CHECKPOINT),
        node(2, "CLIPLoader", (20, 260), (320, 110), title="T5-XXL text encoder", clip_name=T5_ENCODER, type="ltxv",
             device="default"),
        node(3, "CLIPTextEncode", (380, 100), (400, 160), {"clip": (2, 0)}, "Positive prompt",
             text="a red fox walking through fresh snow, steam rising from its breath, soft winter light"),
        node(4, "CLIPTextEncode", (380, 320), (400, 130), {"clip": (2, 0)}, "Negative prompt",
             text="low quality, worst quality, deformed, distorted, motion smear, motion artifacts"),
        node(5, "LoadImage", (20, 430), (320, 320), title="Start image", image=FIRST_KEYFRAME),
        node(6, "LTXVImgToVideo", (380, 510), (320, 190), {"positive": (3, 0), "negative": (4, 0), "vae": (1, 2),
                                                            "image": (5, 0)},
             width=768, height=512, length=97, batch_size=1, strength=1.0),
        node(7, "LTXVConditioning", (380, 760), (320, 80), {"positive": (6, 0), "negative": (6, 1)},
             frame_rate=LTX_FPS),
        node(8, "TitanClipStyleLoader", (20, 820), (320, 150), clip_name=CLIP_STYLE_WEIGHTS, architecture="auto",
             pretrained_tag="", dtype="fp32"),
        node(9, "LoadImage", (20, 1030), (320, 320), title="Style reference", image=STYLE_IMAGE),
        node(10, "TitanStyleObjective", (380, 900), (340, 330), {"clip": (8, 0), "style_image": (9, 0)},
             loss_kind="cosine", weight=1.0, text="", style_weight=1.0, text_weight=1.0, content_weight=0.0,
             gram_layer=-2, frames_per_chunk=0),
        node(11, "TitanGradientGuess", (820, 800), (340, 220), **GUESS_KNOBS),
        node(12, "TitanGuideSampler", (820, 100), (340, 640),
             {"model": (1, 0), "positive": (7, 0), "negative": (7, 1), "latent_image": (6, 2), "vae": (1, 2),
              "objective": (10, 0), "guess": (11, 0)}, "TITAN-Guide: CLIP style", seed=SEED, steps=30, cfg=3.0,
             scheduler="normal", denoise=1.0, **LTX_TITAN_KNOBS),
        *ltx_outputs(13, 12, (12, 0), (1, 2), "titan/ltxv_i2v_style"),
    ]
    files = [(LTXV_CHECKPOINT, "models/checkpoints", "huggingface.co/Lightricks/LTX-Video (model and VAE)"),
             (T5_ENCODER, "models/text_encoders", "huggingface.co/comfyanonymous/flux_text_encoders"),
             (CLIP_STYLE_WEIGHTS, "models/clip_vision", "open_clip ViT-H-14 laion2b_s32b_b79k"),
             (FIRST_KEYFRAME, "input", "the start image (LTXVImgToVideo keeps it as the first frame at strength 1)"),
             (STYLE_IMAGE, "input", "your style image; any size")]
    text = weights_note("TITAN-Guide on LTX-Video image-to-video: style guidance through CLIP. LTXVImgToVideo's "
                        "start-frame latent and noise mask stay in place on every model call.", files, LTX_NOTE)
    return {"nodes": nodes + [note(17, (1200, 900), text, (700, 480))],
            "groups": [group("LTX-Video 2B image-to-video", (0, 0, 800, 1370))]}


LTX2_FILES = [(LTX2_CHECKPOINT, "models/checkpoints", "huggingface.co/Lightricks/LTX-2 (model, video and audio VAE)"),
              (LTX2_TEXT_ENCODER, "models/text_encoders", "huggingface.co/Comfy-Org/ltx-2 split_files/text_encoders")]


def ltx2_av_inputs(prompt: str) -> list:
    """Nodes 1-9 of an LTX-2 text-to-audio+video graph: checkpoint (1: model, video VAE), Gemma text encoder,
    prompts into LTXVConditioning (5), the audio VAE (6) and the packed empty video+audio latent (9)."""
    return [
        node(1, "CheckpointLoaderSimple", (20, 100), (320, 100), ckpt_name=LTX2_CHECKPOINT),
        node(2, "LTXAVTextEncoderLoader", (20, 260), (320, 110), title="Gemma 3 text encoder",
             text_encoder=LTX2_TEXT_ENCODER, ckpt_name=LTX2_CHECKPOINT, device="default"),
        node(3, "CLIPTextEncode", (380, 100), (400, 160), {"clip": (2, 0)}, "Positive prompt",
             text=prompt),
        node(4, "CLIPTextEncode", (380, 320), (400, 130), {"clip": (2, 0)}, "Negative prompt",
             text="blurry, low quality, still frame, watermark, overlay, titles, subtitles"),
        node(5, "LTXVConditioning", (380, 510), (320, 80), {"positive": (3, 0), "negative": (4, 0)},
             frame_rate=LTX_FPS),
        node(6, "LTXVAudioVAELoader", (20, 430), (320, 80), ckpt_name=LTX2_CHECKPOINT),
        node(7, "EmptyLTXVLatentVideo", (20, 570), (320, 130), title="97 frames, 768x512", width=768, height=512,
             length=97, batch_size=1),
        node(8, "LTXVEmptyLatentAudio", (20, 760), (320, 130), {"audio_vae": (6, 0)}, frames_number=97,
             frame_rate=LTX_FPS, batch_size=1),
        node(9, "LTXVConcatAVLatent", (380, 650), (320, 60), {"video_latent": (7, 0), "audio_latent": (8, 0)}),
    ]


def ltx2_av_outputs(first_id: int, sampler: int, prefix: str, audio_title: str) -> list:
    """LTXVSeparateAVLatent of `sampler`'s latent, the video outputs (ltx_outputs) and the decoded, previewed audio."""
    return [
        node(first_id, "LTXVSeparateAVLatent", (820, 800), (320, 60), {"av_latent": (sampler, 0)}),
        *ltx_outputs(first_id + 1, sampler, (first_id, 0), (1, 2), prefix),
        node(first_id + 5, "LTXVAudioVAEDecode", (820, 920), (320, 60),
             {"samples": (first_id, 1), "audio_vae": (6, 0)}),
        node(first_id + 6, "PreviewAudio", (820, 1040), (320, 120), {"audio": (first_id + 5, 0)}, audio_title),
    ]


def ltx2_t2v_dover() -> dict:
    """LTX-2 text-to-audio+video: the video guided by DOVER's aesthetic score, the audio sampled with it."""
    nodes = [
        *ltx2_av_inputs("waves breaking on a rocky shore at sunset, seagulls calling, the roar of the surf"),
        node(10, "TitanDoverLoader", (20, 950), (320, 90), weights_name=DOVER_WEIGHTS, dtype="fp32"),
        node(11, "TitanAestheticObjective", (20, 1100), (320, 180), {"dover": (10, 0)}, mode="fused", weight=1.0,
             fragment_sampling="random", fragment_seed=0, technical_samples=1),
        node(12, "TitanGradientGuess", (380, 950), (320, 220), **GUESS_KNOBS),
        node(13, "TitanGuideSampler", (820, 100), (340, 640),
             {"model": (1, 0), "positive": (5, 0), "negative": (5, 1), "latent_image": (9, 0), "vae": (1, 2),
              "objective": (11, 0), "guess": (12, 0)}, "TITAN-Guide: DOVER aesthetics (video)", seed=SEED,
             steps=STEPS, cfg=4.0, scheduler="normal", denoise=1.0, **LTX_TITAN_KNOBS),
        *ltx2_av_outputs(14, 13, "titan/ltx2_t2v_dover", "Audio (sampled unguided)"),
    ]
    files = [*LTX2_FILES,
             (DOVER_WEIGHTS, "models/dover", "github.com/VQAssessment/DOVER release DOVER.pth")]
    text = weights_note("TITAN-Guide on LTX-2 text-to-audio+video: aesthetic guidance of the video with DOVER. "
                        "ComfyUI samples LTX-2's video and audio latents packed into one tensor; TitanGuideSampler "
                        "guides the video part only, while every model call (plain steps and the look-ahead) stays "
                        "ComfyUI's joint audio+video call, so the audio follows the guided video unguided.", files,
                        LTX_NOTE)
    return {"nodes": nodes + [note(21, (1200, 900), text, (700, 480))],
            "groups": [group("LTX-2 19B text-to-audio+video", (0, 0, 800, 1300))]}


def ltx2_imagebind_audio() -> dict:
    """LTX-2 text-to-audio+video: the video aligned with a loaded sound through ImageBind, LTX-2's own audio sampled
    with it unguided."""
    nodes = [
        *ltx2_av_inputs("a drummer playing a fast rhythm on a drum kit in a small club, stage lights"),
        node(10, "TitanImageBindLoader", (20, 950), (320, 90), weights_name=IMAGEBIND_WEIGHTS, dtype="fp32"),
        node(11, "LoadAudio", (20, 1100), (320, 140), title="Target audio", audio=TARGET_AUDIO),
        node(12, "TitanAudioObjective", (380, 950), (340, 330), {"imagebind": (10, 0), "audio": (11, 0)},
             fps=LTX_FPS, audio_start=0.0, weight=1.0, text="", audio_weight=1.0, text_weight=1.0,
             vision_clips="pairs", spatial_crops="3", clips_per_chunk=0),
        node(13, "TitanGradientGuess", (820, 1220), (340, 220), **GUESS_KNOBS),
        node(14, "TitanGuideSampler", (820, 100), (340, 640),
             {"model": (1, 0), "positive": (5, 0), "negative": (5, 1), "latent_image": (9, 0), "vae": (1, 2),
              "objective": (12, 0), "guess": (13, 0)}, "TITAN-Guide: ImageBind audio (video)", seed=SEED,
             steps=STEPS, cfg=4.0, scheduler="normal", denoise=1.0, **LTX_TITAN_KNOBS),
        *ltx2_av_outputs(15, 14, "titan/ltx2_imagebind_audio", "LTX-2's audio (sampled unguided)"),
    ]
    files = [*LTX2_FILES,
             (IMAGEBIND_WEIGHTS, "models/imagebind", "dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"),
             (TARGET_AUDIO, "input", "your audio, at least 3.88 s from audio_start: 97 frames at 25 fps")]
    text = weights_note("TITAN-Guide on LTX-2 text-to-audio+video: the video aligned with a loaded sound through "
                        "ImageBind. TitanGuideSampler guides the video part of LTX-2's packed audio+video latent; "
                        "LTX-2's own audio gets no guidance update and follows the guided video through the joint "
                        "model calls. The target is the loaded audio, not LTX-2's own: guiding toward the generated "
                        "audio would need the audio latent decoded (audio VAE + vocoder) inside the objective at "
                        "every step, which this pack does not do yet.", files, LTX_NOTE)
    return {"nodes": nodes + [note(22, (1200, 900), text, (700, 480))],
            "groups": [group("LTX-2 19B text-to-audio+video", (0, 0, 800, 1300))]}


def hunyuan15_t2v_dover() -> dict:
    """HunyuanVideo 1.5 720p text-to-video (the official template's files and sampling) guided by DOVER."""
    nodes = [
        node(1, "UNETLoader", (20, 100), (320, 110), unet_name=HUNYUAN15_T2V, weight_dtype="default"),
        node(2, "ModelSamplingSD3", (20, 270), (320, 80), {"model": (1, 0)}, shift=7.0),
        node(3, "DualCLIPLoader", (380, 100), (400, 130), title="Qwen2.5-VL 7B + ByT5 text encoders",
             clip_name1=HUNYUAN15_TEXT_ENCODERS[0], clip_name2=HUNYUAN15_TEXT_ENCODERS[1], type="hunyuan_video_15",
             device="default"),
        node(4, "CLIPTextEncode", (380, 290), (400, 160), {"clip": (3, 0)}, "Positive prompt",
             text="a paper airplane gliding between skyscrapers toward the sunset, golden light, cinematic"),
        node(5, "CLIPTextEncode", (380, 510), (400, 130), {"clip": (3, 0)}, "Negative prompt", text=NEGATIVE_TEXT),
        node(6, "VAELoader", (380, 700), (400, 80), vae_name=HUNYUAN15_VAE),
        node(7, "EmptyHunyuanVideo15Latent", (20, 410), (320, 130), title="61 frames, 1280x720", width=1280,
             height=720, length=61, batch_size=1),
        node(8, "TitanDoverLoader", (20, 1050), (320, 90), weights_name=DOVER_WEIGHTS, dtype="fp32"),
        node(9, "TitanAestheticObjective", (20, 1200), (320, 180), {"dover": (8, 0)}, mode="fused", weight=1.0,
             fragment_sampling="random", fragment_seed=0, technical_samples=1),
        node(10, "TitanGradientGuess", (380, 1050), (320, 220), **GUESS_KNOBS),
        wan_sampler(11, {"model": (2, 0), "positive": (4, 0), "negative": (5, 0), "latent_image": (7, 0),
                         "vae": (6, 0), "objective": (9, 0), "guess": (10, 0)}, "TITAN-Guide: DOVER aesthetics", 6.0),
        *wan_outputs(12, 11, 6, "titan/hunyuan15_t2v_dover", fps=24.0),
    ]
    files = [(HUNYUAN15_T2V, "models/diffusion_models", "huggingface.co/Comfy-Org/HunyuanVideo_1.5_repackaged"),
             (HUNYUAN15_TEXT_ENCODERS[0], "models/text_encoders", "same repository"),
             (HUNYUAN15_TEXT_ENCODERS[1], "models/text_encoders", "same repository"),
             (HUNYUAN15_VAE, "models/vae", "same repository"),
             (DOVER_WEIGHTS, "models/dover", "github.com/VQAssessment/DOVER release DOVER.pth")]
    text = weights_note("TITAN-Guide on HunyuanVideo 1.5 720p text-to-video: aesthetic guidance with DOVER. The "
                        "official template's loaders and sampling (ModelSamplingSD3 shift 7, CFG 6, euler, simple, "
                        "20 steps, 24 fps), TitanGuideSampler instead of SamplerCustomAdvanced; 61 of the "
                        "template's 121 frames, as the guided decode holds a forward-mode pass of its VAE.", files,
                        "Frames: the HunyuanVideo 1.5 VAE turns latent frame 0 into frame 0 and latent frame k into "
                        "frames 4k-3..4k (61 frames are 16 latent frames); 'frame indices' of a fixed frame choice "
                        "are video frames. decode_chunk_frames must stay 0.")
    return {"nodes": nodes + [note(16, (1200, 900), text, (700, 480))],
            "groups": [group("HunyuanVideo 1.5 720p text-to-video", (0, 0, 800, 990))]}


WORKFLOWS = {
    "aesthetic_dover_animatediff.json": aesthetic_dover_animatediff,
    "style_clip_animatediff.json": style_clip_animatediff,
    "audio_imagebind_animatediff.json": audio_imagebind_animatediff,
    "frame_interpolation_animatediff.json": frame_interpolation_animatediff,
    "cogvideox_titan.json": cogvideox_titan,
    "sd15_image_titan.json": sd15_image_titan,
    "compare_same_seed.json": compare_same_seed,
    "wan22_t2v_dover.json": wan22_t2v_dover,
    "wan22_i2v_style.json": wan22_i2v_style,
    "wan21_frame_interpolation.json": wan21_frame_interpolation,
    "cogvideox_native_style.json": cogvideox_native_style,
    "ltxv_i2v_style.json": ltxv_i2v_style,
    "ltx2_t2v_dover.json": ltx2_t2v_dover,
    "ltx2_imagebind_audio.json": ltx2_imagebind_audio,
    "hunyuan15_t2v_dover.json": hunyuan15_t2v_dover,
}


# ---------------------------------------------------------------------------------------------------------
# Table -> UI workflow
# ---------------------------------------------------------------------------------------------------------
def input_specs(info: dict) -> list:
    """[(name, spec list)] of a node's inputs in /object_info order, required then optional."""
    order = info.get("input_order", {})
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    return [(name, specs[name]) for name in list(order.get("required", [])) + list(order.get("optional", []))]


def is_widget_spec(spec: list) -> bool:
    """True for inputs the frontend shows as widgets (numbers, strings, booleans, combos), multi-type inputs with a
    widget included ("FLOAT,INT" with widgetType FLOAT: LTXVEmptyLatentAudio's frame_rate)."""
    return (isinstance(spec[0], list) or spec[0] in WIDGET_KINDS
            or spec_options(spec).get("widgetType") in WIDGET_KINDS)


def spec_options(spec: list) -> dict:
    """The options dict of an input spec ({} when absent)."""
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widgets_values(row: dict, info: dict) -> list:
    """The node's widgets_values in frontend order; unset widgets take the declared default."""
    given = dict(row["widgets"])
    values = []
    for name, spec in input_specs(info):
        if name in row["links"] or not is_widget_spec(spec):
            continue
        options = spec_options(spec)
        if name in given:
            value = given.pop(name)
        elif "default" in options:
            value = options["default"]
        else:
            raise ValueError(f"{row['type']} node {row['id']}: widget {name!r} has no default; set it in the table")
        values.append(value)
        if options.get("control_after_generate"):
            values.append("fixed")
    if given:
        raise ValueError(f"{row['type']} node {row['id']}: {sorted(given)} are not widgets of the node")
    return values


def build_workflow(table: dict, object_info: dict, workflow_id: str) -> dict:
    """Turn a node table into the frontend's workflow JSON (version 0.4)."""
    rows = {row["id"]: row for row in table["nodes"]}
    for row in table["nodes"]:
        if row["type"] not in FRONTEND_ONLY_TYPES and row["type"] not in object_info:
            raise ValueError(f"node {row['id']}: type {row['type']!r} is not in /object_info")
    links, outgoing, nodes = [], {}, []
    socket_inputs = {}
    for row in table["nodes"]:
        if row["type"] in FRONTEND_ONLY_TYPES:
            continue
        sockets = [(name, spec) for name, spec in input_specs(object_info[row["type"]])
                   if not is_widget_spec(spec)]
        unknown = set(row["links"]) - {name for name, _ in sockets}
        if unknown:
            raise ValueError(f"{row['type']} node {row['id']}: {sorted(unknown)} are not socket inputs")
        entries = []
        for slot, (name, spec) in enumerate(sockets):
            entry = {"name": name, "type": spec[0], "link": None}
            if name in row["links"]:
                source, output = row["links"][name]
                source_info = object_info[rows[source]["type"]]
                link_type = source_info["output"][output]
                link_id = len(links) + 1
                links.append([link_id, source, output, row["id"], slot, link_type])
                outgoing.setdefault((source, output), []).append(link_id)
                entry["link"] = link_id
            if spec_options(spec).get("optional") or name in object_info[row["type"]]["input"].get("optional", {}):
                entry["shape"] = 7  # the frontend's hollow dot for optional sockets
            entries.append(entry)
        socket_inputs[row["id"]] = entries
    for order, row in enumerate(table["nodes"]):
        if row["type"] in FRONTEND_ONLY_TYPES:
            nodes.append({"id": row["id"], "type": row["type"], "pos": row["pos"], "size": row["size"],
                          "flags": {}, "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                          "widgets_values": [row["text"]], "color": "#432", "bgcolor": "#653"})
            continue
        info = object_info[row["type"]]
        outputs = [{"name": out_name, "type": out_type, "links": outgoing.get((row["id"], slot), []),
                    "slot_index": slot}
                   for slot, (out_name, out_type) in enumerate(zip(info["output_name"], info["output"]))]
        entry = {"id": row["id"], "type": row["type"], "pos": row["pos"], "size": row["size"], "flags": {},
                 "order": order, "mode": 0, "inputs": socket_inputs[row["id"]], "outputs": outputs,
                 "properties": {"Node name for S&R": row["type"]}, "widgets_values": widgets_values(row, info)}
        if "title" in row:
            entry["title"] = row["title"]
        nodes.append(entry)
    groups = [{"id": index + 1, "title": g["title"], "bounding": g["bounding"], "color": g["color"],
               "font_size": 24, "flags": {}} for index, g in enumerate(table.get("groups", []))]
    return {"id": workflow_id, "revision": 0, "last_node_id": max(rows), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": groups, "config": {},
            "extra": {"ds": {"scale": 0.65, "offset": [0, 0]}}, "version": 0.4}


def workflow_uuid(name: str) -> str:
    """A stable id per workflow file (the frontend wants a UUID)."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "titan-guide/workflows/" + name))


def build_all(object_info: dict) -> dict:
    """file name -> workflow JSON for every table in WORKFLOWS."""
    return {name: build_workflow(make(), object_info, workflow_uuid(name)) for name, make in WORKFLOWS.items()}


def dump(workflow: dict) -> str:
    """The file text of a workflow (2-space indented JSON)."""
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def live_object_info() -> dict:
    """/object_info of a throw-away test host with this pack and the vendored packs."""
    sys.path.insert(0, str(REPO_ROOT))
    from testing.comfy_host import ComfyHost

    with tempfile.TemporaryDirectory(prefix="titan_workflows_") as workdir:
        with ComfyHost(workdir) as host:
            return host.object_info()


def main() -> int:
    """Write (or --check) every workflow file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    parser.add_argument("--object-info", type=Path, help="use this saved /object_info JSON instead of a host")
    args = parser.parse_args()
    info = json.loads(args.object_info.read_text()) if args.object_info else live_object_info()
    stale = []
    for name, workflow in build_all(info).items():
        path = WORKFLOW_DIR / name
        text = dump(workflow)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    if stale:
        print("out of date (run scripts/workflows.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
