"""scripts/convert_cogvideox.py: a diffusers CogVideoX transformer converted to ComfyUI's native layout loads through
ComfyUI's own loader as native CogVideoX and computes what diffusers computes.

A tiny random diffusers CogVideoXTransformer3DModel (rotary positions, as CogVideoX 5B) is saved in diffusers'
layout, converted, and loaded by comfy.sd.load_diffusion_model (what UNETLoader calls) in a subprocess with the
host's ComfyUI importable; both models then denoise the same latent: velocities equal to float32 accuracy.
"""

import json
import subprocess
import sys

import pytest

from testing.comfy_host import REPO_ROOT, default_python

CHECK = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from comfy.cli_args import args
args.cpu = True
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from safetensors.torch import save_file
import comfy.sd, comfy.model_sampling

work = sys.argv[2]
torch.manual_seed(0)
d = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=64, time_embed_dim=64, text_embed_dim=96,
                                num_layers=2, use_rotary_positional_embeddings=True).eval()
with torch.no_grad():
    for p in d.parameters():
        p.normal_(0, 0.05)
import os
os.makedirs(f"{work}/transformer", exist_ok=True)
save_file({k: v.contiguous() for k, v in d.state_dict().items()}, f"{work}/transformer/diffusion_pytorch_model.safetensors")
sys.path.insert(0, sys.argv[3])
import convert_cogvideox
convert_cogvideox.convert(__import__("pathlib").Path(f"{work}/transformer"), __import__("pathlib").Path(f"{work}/native.safetensors"))
patcher = comfy.sd.load_diffusion_model(f"{work}/native.safetensors")
base = patcher.model
frames, h, w = 3, 8, 12  # latent (B, C, T, h, w)
x = torch.randn(1, 16, frames, h, w)
context = torch.randn(1, 7, 96)
t = torch.tensor([600.0])
grid = (h // 2, w // 2)
crops = get_resize_crop_region_for_grid(grid, d.config.sample_width // 2, d.config.sample_height // 2)
rotary = get_3d_rotary_pos_embed(embed_dim=64, crops_coords=crops, grid_size=grid, temporal_size=frames)
with torch.no_grad():
    ours = base.diffusion_model(x, t, context).float()
    theirs = d(hidden_states=x.permute(0, 2, 1, 3, 4), encoder_hidden_states=context, timestep=t,
               image_rotary_emb=rotary, return_dict=False)[0].permute(0, 2, 1, 3, 4)
print(json.dumps({"config": type(patcher.model.model_config).__name__,
                  "v_prediction_ddpm": isinstance(base.model_sampling, comfy.model_sampling.V_PREDICTION_DDPM),
                  "max_diff": float((ours - theirs).abs().max()), "scale": float(theirs.abs().max())}))
'''


def test_converted_diffusers_cogvideox_loads_natively_and_matches_diffusers(comfyui_dir, tmp_path):
    pytest.importorskip("diffusers")
    result = subprocess.run([default_python(), "-c", CHECK, str(comfyui_dir), str(tmp_path), str(REPO_ROOT / "scripts")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["config"] == "CogVideoX_T2V" and found["v_prediction_ddpm"], found
    assert found["max_diff"] < 1e-4 * max(1.0, found["scale"]), found


def test_converter_refuses_what_it_cannot_convert(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"blocks.0.q.weight": torch.zeros(2, 2)}, str(tmp_path / "native.safetensors"))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_cogvideox.py"),
                             str(tmp_path / "native.safetensors"), str(tmp_path / "out.safetensors")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "already in ComfyUI's layout" in result.stderr
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_cogvideox.py"), str(tmp_path),
                             str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no diffusion_pytorch_model" in result.stderr
