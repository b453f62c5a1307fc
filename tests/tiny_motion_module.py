"""Small random AnimateDiff-Evolved test assets: a v2-layout SD1.5 motion module and a checkpoint it fits.

What ComfyUI-AnimateDiff-Evolved (90fb133, animatediff/motion_module_ad.py and model_injection.py) fixes:

* ``normalize_ad_state_dict``: the largest ``down_blocks.<i>`` index is 3 -> SD1.5; any ``mid_block.`` key
  -> AnimateDiff v2; ``pos_encoder.pe`` of shape (1, L, C) gives the longest video L the module encodes.
* ``AnimateDiffModel`` hard-codes the SD1.5 widths (320, 640, 1280, 1280), a 1280-wide mid block, one
  transformer block with two ``Temporal_Self`` attention blocks per temporal module, and
  ``verify_load_result`` refuses missing or unexpected keys. Channels are NOT read from the file, so no
  SD1.5 motion module ADE accepts is narrower than the real one (454 M parameters).
* ``AnimateDiffModel.inject`` places its 8 down / 12 up / 1 mid temporal modules one per UNet
  input / output / middle block that holds a ResBlock or SpatialTransformer, in order, and fails when the
  UNet runs out of blocks. A temporal module runs at the width it was built for.

Hence two assets:

* the motion module (``build_motion_module_state_dict``): the real mm_sd_v15_v2 key set and shapes (or, with
  ``version="v1"``, the v1 layout: no mid block, 24-frame position encodings) with random weights (non-zero
  ``proj_out``, so the module changes the UNet's output) and sinusoidal position encodings. Tensors of equal
  fan-in are views into one shared random buffer, which ``torch.save`` stores once: about 50 MB on disk
  instead of 0.9 GB (in memory ADE still holds 1.8 GB in float32). ADE reads ``.ckpt`` files with
  ``torch.load(weights_only=True)``;
* an SD1.5 checkpoint (``build_tiny_ade_sd15_checkpoint``) whose UNet is one 320-channel level with 11
  res blocks: 11 input blocks, 12 output blocks and a middle block, so every temporal module has a slot.
  Only the 320-wide temporal modules (down_0 and up_3: five modules) match its width; the test graphs switch
  the others off with ADE's own per-block effect (``ADE_PerBlock_SD15_MidLevel``), under which a temporal
  module returns its input untouched. CLIP and VAE tensors come from the tiny SD1.5 checkpoint of
  tests/tiny_checkpoints.py.

The checkpoint build imports ``comfy`` and runs in a subprocess (see tiny_checkpoints.py for why).
"""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

import tiny_checkpoints

# Bump when a layout or an initialisation changes, so cached files are rebuilt.
FORMAT_VERSION = "1"

TINY_MOTION_MODULE_FILENAME = f"titan_guide_tiny_mm_sd15_v2_fmt{FORMAT_VERSION}.ckpt"
TINY_MOTION_MODULE_V1_FILENAME = f"titan_guide_tiny_mm_sd15_v1_fmt{FORMAT_VERSION}.ckpt"
TINY_ADE_SD15_FILENAME = "titan_guide_tiny_sd15_ade.safetensors"

SD15_LAYER_CHANNELS = (320, 640, 1280, 1280)
MID_CHANNELS = 1280
DOWN_MODULES_PER_BLOCK, UP_MODULES_PER_BLOCK = 2, 3
# mm_sd_v15_v2 encodes 32 frames; v1 modules (mm_sd_v14 / mm_sd_v15) 24 and have no mid block.
POSITION_ENCODING_LENGTHS = {"v1": 24, "v2": 32}
FF_MULT = 4  # GEGLU feed-forward: proj (2 * 4 * C, C), out (C, 4 * C)

# The only temporal-module width the tiny UNet has; ADE's per-block ids of the modules at that width.
UNET_WIDTH = 320
ACTIVE_BLOCKS = ("down_0", "up_3")
INACTIVE_BLOCKS = ("down_1", "down_2", "down_3", "mid", "up_0", "up_1", "up_2")

# One level of 320 channels (SD15 detection needs model_channels 320 and a 768-wide cross-attention
# somewhere: the first block's SpatialTransformer) with enough blocks for ADE's 8 / 12 / 1 injections.
TINY_ADE_SD15_UNET_CONFIG = dict(
    tiny_checkpoints.TINY_SD15_UNET_CONFIG,
    num_res_blocks=[11],
    transformer_depth=[1] + [0] * 10,
    transformer_depth_output=[0] * 12,
    transformer_depth_middle=-1,
)
DOWN_SLOTS_NEEDED = len(SD15_LAYER_CHANNELS) * DOWN_MODULES_PER_BLOCK
UP_SLOTS_NEEDED = len(SD15_LAYER_CHANNELS) * UP_MODULES_PER_BLOCK


def _temporal_module_shapes(prefix: str, channels: int, length: int) -> dict:
    """Key -> shape of one VanillaTemporalModule of width `channels` (position encodings of `length`)."""
    c = channels
    t = f"{prefix}.temporal_transformer"
    shapes = {f"{t}.norm.weight": (c,), f"{t}.norm.bias": (c,),
              f"{t}.proj_in.weight": (c, c), f"{t}.proj_in.bias": (c,)}
    block = f"{t}.transformer_blocks.0"
    for a in range(2):
        attention = f"{block}.attention_blocks.{a}"
        shapes.update({f"{attention}.to_q.weight": (c, c), f"{attention}.to_k.weight": (c, c),
                       f"{attention}.to_v.weight": (c, c), f"{attention}.to_out.0.weight": (c, c),
                       f"{attention}.to_out.0.bias": (c,),
                       f"{attention}.pos_encoder.pe": (1, length, c)})
        shapes.update({f"{block}.norms.{a}.weight": (c,), f"{block}.norms.{a}.bias": (c,)})
    shapes.update({f"{block}.ff.net.0.proj.weight": (2 * FF_MULT * c, c), f"{block}.ff.net.0.proj.bias": (2 * FF_MULT * c,),
                   f"{block}.ff.net.2.weight": (c, FF_MULT * c), f"{block}.ff.net.2.bias": (c,),
                   f"{block}.ff_norm.weight": (c,), f"{block}.ff_norm.bias": (c,),
                   f"{t}.proj_out.weight": (c, c), f"{t}.proj_out.bias": (c,)})
    return shapes


def motion_module_layout(version: str = "v2") -> dict:
    """Key -> shape of an AnimateDiff SD1.5 motion module: "v2" (mm_sd_v15_v2) or "v1" (no mid block)."""
    if version not in POSITION_ENCODING_LENGTHS:
        raise ValueError(f"unknown motion module version {version!r}; choose one of {tuple(POSITION_ENCODING_LENGTHS)}")
    length = POSITION_ENCODING_LENGTHS[version]
    shapes = {}
    for block, c in enumerate(SD15_LAYER_CHANNELS):
        for module in range(DOWN_MODULES_PER_BLOCK):
            shapes.update(_temporal_module_shapes(f"down_blocks.{block}.motion_modules.{module}", c, length))
    if version == "v2":
        shapes.update(_temporal_module_shapes("mid_block.motion_modules.0", MID_CHANNELS, length))
    for block, c in enumerate(reversed(SD15_LAYER_CHANNELS)):
        for module in range(UP_MODULES_PER_BLOCK):
            shapes.update(_temporal_module_shapes(f"up_blocks.{block}.motion_modules.{module}", c, length))
    return shapes


def sinusoidal_position_encoding(length: int, channels: int) -> torch.Tensor:
    """(1, length, channels) sine / cosine encoding as AnimateDiff's PositionalEncoding stores it."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float64) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels, dtype=torch.float64)
    pe[0, :, 0::2] = torch.sin(position * frequency)
    pe[0, :, 1::2] = torch.cos(position * frequency)
    return pe


def build_motion_module_state_dict(seed: int = 0, dtype=torch.float16, version: str = "v2") -> dict:
    """Random-weight motion module whose tensors share storage per fan-in (see the module docstring).

    Weights are N(0, 1 / fan_in) (views at different offsets of one buffer per fan-in), biases 0, norms 1 / 0,
    position encodings sinusoidal. `proj_out` is random, unlike a freshly initialised AnimateDiff module.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    layout = motion_module_layout(version)
    spread = 4096  # offsets between views of one buffer
    largest = {}
    for shape in layout.values():
        if len(shape) == 2:
            largest[shape[1]] = max(largest.get(shape[1], 0), math.prod(shape))
    buffers = {}
    for fan_in, numel in sorted(largest.items()):
        generator = torch.Generator().manual_seed(seed * 100003 + fan_in)
        buffers[fan_in] = (torch.randn(numel + spread, generator=generator) / math.sqrt(fan_in)).to(dtype)
    widest = max(max(SD15_LAYER_CHANNELS), MID_CHANNELS)
    ones, zeros = torch.ones(8 * widest, dtype=dtype), torch.zeros(8 * widest, dtype=dtype)
    encodings = {}
    state_dict = {}
    for index, (key, shape) in enumerate(layout.items()):
        if key.endswith("pos_encoder.pe"):
            if shape[2] not in encodings:
                encodings[shape[2]] = sinusoidal_position_encoding(shape[1], shape[2]).to(dtype)
            state_dict[key] = encodings[shape[2]]
        elif len(shape) == 2:
            offset = (index * 97) % spread
            state_dict[key] = buffers[shape[1]][offset:offset + math.prod(shape)].view(shape)
        elif key.endswith(".weight"):  # GroupNorm / LayerNorm scales
            state_dict[key] = ones[:shape[0]]
        else:
            state_dict[key] = zeros[:shape[0]]
    return state_dict


def write_tiny_motion_module(out_path, seed: int = 0, version: str = "v2") -> Path:
    """Write (or reuse) the tiny motion module of `version` at `out_path` (a .ckpt); returns its path."""
    out_path = Path(out_path)
    if out_path.suffix != ".ckpt":
        raise ValueError(f"the motion module is written with torch.save and must end in .ckpt, got {out_path}")
    if out_path.is_file():
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    torch.save(build_motion_module_state_dict(seed, version=version), tmp_path)
    os.replace(tmp_path, out_path)
    return out_path


# --- the SD1.5 checkpoint ADE can inject into -------------------------------------------------------------
def expected_checkpoint_metadata(seed: int, comfy_dir, base_checkpoint) -> dict:
    """Metadata identifying a tiny ADE-compatible checkpoint (seed, format, ComfyUI, base checkpoint)."""
    identity = {"kind": "sd15_ade", "seed": seed, "format": FORMAT_VERSION,
                "comfyui": tiny_checkpoints.comfyui_version(comfy_dir),
                "base": tiny_checkpoints.read_metadata(base_checkpoint).get(tiny_checkpoints.METADATA_KEY, "")}
    return {tiny_checkpoints.METADATA_KEY: json.dumps(identity, sort_keys=True)}


def build_tiny_ade_sd15_checkpoint(comfy_dir, base_checkpoint, out_path, seed: int = 0, python=None,
                                   timeout: float = 600) -> Path:
    """Write (or reuse) the ADE-compatible tiny SD1.5 checkpoint at `out_path`; returns its path.

    `base_checkpoint` is a tiny SD1.5 checkpoint (tests/tiny_checkpoints.py) whose CLIP and VAE are reused.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out_path, base_checkpoint, comfy_dir = Path(out_path), Path(base_checkpoint), Path(comfy_dir)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"out_path must end in .safetensors, got {out_path}")
    if not base_checkpoint.is_file():
        raise FileNotFoundError(f"base checkpoint {base_checkpoint} does not exist; build the tiny SD1.5 checkpoint first")
    if out_path.is_file() and tiny_checkpoints.read_metadata(out_path) == expected_checkpoint_metadata(
            seed, comfy_dir, base_checkpoint):
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = [python or sys.executable, os.path.abspath(__file__), "--comfy-dir", str(comfy_dir),
               "--base", str(base_checkpoint), "--out", str(out_path), "--seed", str(seed)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"building the ADE-compatible tiny SD1.5 checkpoint failed (exit {result.returncode}):\n"
                           f"{result.stdout}\n{result.stderr}")
    return out_path


def _injection_slots(blocks) -> int:
    """Blocks ADE can put a temporal module after (holding a ResBlock or SpatialTransformer)."""
    return sum(any(type(m).__name__ in ("ResBlock", "SpatialTransformer") for m in block) for block in blocks)


def _build_checkpoint_in_this_process(base: Path, out_path: Path, seed: int, comfy_dir) -> None:
    """Build the checkpoint with ComfyUI importable in this process (script entry)."""
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_detection
    import comfy.supported_models
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_config = comfy.supported_models.SD15(TINY_ADE_SD15_UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):
        unet = model_config.get_model({}).diffusion_model
    down, up = _injection_slots(unet.input_blocks), _injection_slots(unet.output_blocks)
    if down < DOWN_SLOTS_NEEDED or up < UP_SLOTS_NEEDED:
        raise RuntimeError(f"the UNet has {down} input / {up} output slots; ADE injects {DOWN_SLOTS_NEEDED} / "
                           f"{UP_SLOTS_NEEDED} temporal modules")
    filled = tiny_checkpoints._fill_random_(unet.state_dict(), tiny_checkpoints._norm_param_names(unet, ""),
                                            seed * 1000 + 7, torch.float16)
    checkpoint = model_config.process_unet_state_dict_for_saving(filled)
    with safe_open(str(base), framework="pt") as f:
        for key in f.keys():
            if not key.startswith("model.diffusion_model."):
                checkpoint[key] = f.get_tensor(key)
    detected = comfy.model_detection.detect_unet_config(checkpoint, "model.diffusion_model.")
    detected_class = comfy.model_detection.model_config_from_unet_config(detected, checkpoint)
    if type(detected_class) is not comfy.supported_models.SD15:
        raise RuntimeError(f"ComfyUI detects the checkpoint as {type(detected_class).__name__}, not SD15")
    tmp_path = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    save_file(checkpoint, str(tmp_path), metadata=expected_checkpoint_metadata(seed, comfy_dir, base))
    os.replace(tmp_path, out_path)


def main(argv=None) -> int:
    """Command-line entry: build the ADE-compatible tiny SD1.5 checkpoint."""
    parser = argparse.ArgumentParser(description="Build the ADE-compatible tiny SD1.5 checkpoint.")
    parser.add_argument("--base", required=True, help="tiny SD1.5 checkpoint whose CLIP and VAE are reused")
    options = tiny_checkpoints.builder_options(parser, argv)  # tiny_checkpoints is imported before tests/ leaves
    _build_checkpoint_in_this_process(Path(options.base), Path(options.out), options.seed, options.comfy_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
