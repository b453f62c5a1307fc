"""Tiny random-weight checkpoints that real ComfyUI loaders accept, for host tests.

``build_tiny_sd15_checkpoint`` writes a .safetensors file in the original
SD1.5 single-file layout (``model.diffusion_model.``, ``first_stage_model.``,
``cond_stage_model.transformer.``) that ComfyUI's ``CheckpointLoaderSimple``
detects as SD15. Key names and shapes come from ComfyUI's own classes:
the UNet from ``comfy.supported_models.SD15`` with a one-level config (ComfyUI
only requires model_channels 320 and context_dim 768 for SD15 detection), the
VAE and the CLIP-L text encoder at their fixed full size (ComfyUI builds
those from fixed configs, so they cannot be shrunk).

The build imports ``comfy`` and therefore runs in a subprocess with the host's
folder on ``sys.path``; test processes never import ComfyUI themselves (its
top-level ``nodes`` module would shadow this repository's ``nodes`` package).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

# Bump when the layout or the initialisation changes, so cached files are rebuilt.
FORMAT_VERSION = "1"

TINY_SD15_FILENAME = "titan_guide_tiny_sd15.safetensors"

# The config ComfyUI's model_detection.detect_unet_config derives from the file.
TINY_SD15_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "channel_mult": [1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

# The real SD1.5 UNet (860 M parameters), for GPU runs at full size (benchmarks/host_gpu.py, --full).
FULL_SD15_UNET_CONFIG = dict(TINY_SD15_UNET_CONFIG, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                             transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                             transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], num_heads=8,
                             image_size=64)

# ComfyUI's fixed SD1.x VAE config (comfy/sd.py, "default SD1.x/SD2.x VAE parameters").
SD_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}

METADATA_KEY = "titan_guide_tiny_checkpoint"


def comfyui_version(comfy_dir) -> str:
    """Return the version string in ComfyUI's comfyui_version.py ("unknown" if absent)."""
    version_file = Path(comfy_dir) / "comfyui_version.py"
    if not version_file.is_file():
        return "unknown"
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", version_file.read_text(encoding="utf-8"))
    return match.group(1) if match else "unknown"


def expected_metadata(seed: int, comfy_dir) -> dict:
    """Return the safetensors metadata identifying a tiny SD1.5 checkpoint for ``seed`` and this ComfyUI."""
    identity = {"kind": "sd15", "seed": seed, "format": FORMAT_VERSION, "comfyui": comfyui_version(comfy_dir)}
    return {METADATA_KEY: json.dumps(identity, sort_keys=True)}


def read_metadata(path) -> dict:
    """Return the string metadata stored in a .safetensors file header."""
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
    return header.get("__metadata__", {})


def build_tiny_sd15_checkpoint(comfy_dir, out_path, seed: int = 0, python=None, timeout: float = 600) -> Path:
    """Write (or reuse) a tiny SD1.5-layout checkpoint at ``out_path``; returns its path.

    Runs this module as a script under ``python`` (default: the current
    interpreter) with ComfyUI at ``comfy_dir`` importable.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"out_path must end in .safetensors, got {out_path}")
    comfy_dir = Path(comfy_dir)
    if not (comfy_dir / "comfy").is_dir():
        raise FileNotFoundError(f"{comfy_dir} is not a ComfyUI folder (no comfy/ inside); run scripts/setup.sh")
    if out_path.is_file() and read_metadata(out_path) == expected_metadata(seed, comfy_dir):
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = [python or sys.executable, os.path.abspath(__file__),
               "--comfy-dir", str(comfy_dir), "--out", str(out_path), "--seed", str(seed)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"building the tiny SD1.5 checkpoint failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return out_path


def _fill_random_(state_dict: dict, norm_param_names: set, seed: int, dtype) -> dict:
    """Return a copy of ``state_dict`` (meta tensors) filled deterministically from ``seed``.

    Norm layers get weight 1 / bias 0, other biases 0, other weights
    N(0, 1/fan_in) so activations stay O(1) through the random network.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    filled = {}
    for name in sorted(state_dict):
        meta = state_dict[name]
        if name in norm_param_names:
            value = torch.ones(meta.shape) if name.endswith("weight") else torch.zeros(meta.shape)
        elif name.endswith("bias"):
            value = torch.zeros(meta.shape)
        elif name.endswith("logit_scale"):
            value = torch.full(meta.shape, math.log(1 / 0.07))
        elif meta.dim() >= 2:
            fan_in = math.prod(meta.shape[1:])
            std = 0.02 if "embedding" in name else 1.0 / math.sqrt(fan_in)
            value = torch.randn(meta.shape, generator=generator) * std
        else:
            value = torch.randn(meta.shape, generator=generator) * 0.02
        filled[name] = value.to(dtype).contiguous()
    return filled


def _norm_param_names(module, prefix: str) -> set:
    """Return state-dict names of LayerNorm/GroupNorm parameters inside ``module``."""
    import torch

    names = set()
    for module_name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            for param_name, _ in sub.named_parameters(recurse=False):
                full = f"{module_name}.{param_name}" if module_name else param_name
                names.add(prefix + full)
    return names


def _build_in_this_process(out_path: Path, seed: int, comfy_dir, full: bool = False) -> None:
    """Build the checkpoint with ComfyUI importable in this process (script entry); `full`: real SD1.5 UNet."""
    import torch
    from comfy.cli_args import args

    args.cpu = True  # model_management probes for CUDA at import otherwise
    import comfy.ldm.models.autoencoder
    import comfy.model_detection
    import comfy.sd1_clip
    import comfy.supported_models
    from safetensors.torch import save_file

    model_config = comfy.supported_models.SD15(FULL_SD15_UNET_CONFIG if full else TINY_SD15_UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):
        unet = model_config.get_model({}).diffusion_model
        clip = comfy.sd1_clip.SD1ClipModel(device="meta")
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE_DDCONFIG, embed_dim=4)

    parts = [(unet, "unet"), (clip, "clip"), (vae, "vae")]
    checkpoint = {}
    for part_seed, (module, kind) in enumerate(parts):
        filled = _fill_random_(module.state_dict(), _norm_param_names(module, ""), seed * 1000 + part_seed,
                               torch.float16)
        if kind == "unet":
            checkpoint.update(model_config.process_unet_state_dict_for_saving(filled))
        elif kind == "clip":
            checkpoint.update(model_config.process_clip_state_dict_for_saving(filled))
        else:
            checkpoint.update(model_config.process_vae_state_dict_for_saving(filled))

    detected = comfy.model_detection.detect_unet_config(checkpoint, "model.diffusion_model.")
    detected_class = comfy.model_detection.model_config_from_unet_config(detected, checkpoint)
    if type(detected_class) is not comfy.supported_models.SD15:
        raise RuntimeError(f"ComfyUI detects the tiny checkpoint as {type(detected_class).__name__}, not SD15")

    # Unique partial name: concurrent test sessions may build the same cached file.
    tmp_path = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    metadata = expected_metadata(seed, comfy_dir)
    if full:  # never mistaken for the cached tiny file
        metadata = {METADATA_KEY: json.dumps(dict(json.loads(metadata[METADATA_KEY]), kind="sd15_full"),
                                             sort_keys=True)}
    save_file(checkpoint, str(tmp_path), metadata=metadata)
    os.replace(tmp_path, out_path)


def builder_options(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The options of a checkpoint-builder script (--comfy-dir, --out, --seed and the parser's own), with ComfyUI's
    folder checked and put first on sys.path, and tests/ (which must not shadow ComfyUI's modules) taken off it."""
    parser.add_argument("--comfy-dir", required=True, help="ComfyUI folder (holds main.py and comfy/)")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    options.comfy_dir = os.path.abspath(options.comfy_dir)
    if not os.path.isdir(os.path.join(options.comfy_dir, "comfy")):
        parser.error(f"{options.comfy_dir} has no comfy/ folder; pass the ComfyUI folder (run scripts/setup.sh)")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
    sys.path.insert(0, options.comfy_dir)
    return options


def main(argv=None) -> int:
    """Command-line entry: build one tiny SD1.5 checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the real SD1.5 UNet size (GPU benchmarks)")
    options = builder_options(parser, argv)
    _build_in_this_process(Path(options.out), options.seed, options.comfy_dir, full=options.full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
