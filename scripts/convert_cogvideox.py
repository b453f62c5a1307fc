#!/usr/bin/env python3
"""Convert a CogVideoX transformer from diffusers' key layout to ComfyUI's native one (comfy/ldm/cogvideo), so
ComfyUI's UNETLoader loads it as a native CogVideoX model (ComfyUI >= 0.3x has no converter of its own).

    .venv/bin/python scripts/convert_cogvideox.py \\
        ComfyUI/models/CogVideo/CogVideoX-5b/transformer  ComfyUI/models/diffusion_models/cogvideox_5b.safetensors

IN is a diffusers transformer folder (diffusion_pytorch_model*.safetensors, sharded or not: what the
CogVideoXWrapper downloads to models/CogVideo/) or one .safetensors file; OUT is written as one .safetensors file
in the input's dtype (or --dtype). Only names change: ComfyUI's CogVideoX port keeps diffusers' tensors and shapes.
The VAE needs no conversion: ComfyUI's VAELoader reads diffusers' vae/diffusion_pytorch_model.safetensors as is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# diffusers name part -> ComfyUI name part (per block: attn1.* and ff.net.* became flat names)
BLOCK_RENAMES = {
    "attn1.to_q.": "q.", "attn1.to_k.": "k.", "attn1.to_v.": "v.", "attn1.norm_q.": "norm_q.",
    "attn1.norm_k.": "norm_k.", "attn1.to_out.0.": "attn_out.", "ff.net.0.proj.": "ff_proj.", "ff.net.2.": "ff_out.",
}
TOP_RENAMES = {"time_embedding.linear_": "time_embedding_linear_", "ofs_embedding.linear_": "ofs_embedding_linear_"}


def native_key(name: str) -> str:
    """ComfyUI's name of diffusers' CogVideoXTransformer3DModel parameter `name`."""
    if name.startswith("transformer_blocks."):
        _, index, rest = name.split(".", 2)
        for old, new in BLOCK_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return f"blocks.{index}.{rest}"
    for old, new in TOP_RENAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def input_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    index = source / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():  # sharded: the index names every shard
        return [source / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    files = sorted(source.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise SystemExit(f"{source}: no diffusion_pytorch_model*.safetensors here; give the diffusers transformer "
                         "folder (e.g. models/CogVideo/CogVideoX-5b/transformer) or one .safetensors file")
    return files


def convert(source: Path, out: Path, dtype: str = "") -> int:
    """Write OUT from SOURCE; returns the number of tensors."""
    import torch
    from safetensors.torch import load_file, save_file

    state = {}
    for path in input_files(source):
        state.update(load_file(str(path)))
    if not any(k.startswith("transformer_blocks.") for k in state):
        raise SystemExit(f"{source}: not a diffusers CogVideoX transformer (no transformer_blocks.* keys); a file "
                         "with blocks.* keys is already in ComfyUI's layout")
    converted = {native_key(k): v for k, v in state.items()}
    if len(converted) != len(state):
        raise SystemExit(f"{source}: two keys map to one native name; not a CogVideoX transformer")
    if dtype:
        target = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        converted = {k: v.to(target) if v.is_floating_point() else v for k, v in converted.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out), metadata={"format": "pt", "converted_from": "diffusers CogVideoXTransformer3DModel"})
    return len(converted)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="diffusers transformer folder or .safetensors file")
    parser.add_argument("out", type=Path, help="output .safetensors (e.g. in models/diffusion_models/)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="", help="cast floating tensors")
    options = parser.parse_args(argv)
    count = convert(options.source, options.out, options.dtype)
    print(f"wrote {options.out} ({count} tensors, ComfyUI's native CogVideoX layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
