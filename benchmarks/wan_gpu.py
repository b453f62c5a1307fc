"""Wan 2.1 1.3B and Wan 2.2 5B on the GPU through ComfyUI 0.33.0's own nodes: stock sampler vs TITAN-Guide
(shipped defaults) vs FreeDoM, peak memory and time per video, side by side in one run.

Full-size random-init weights in the official files' layouts (no download): the Wan 2.1 1.3B transformer (dim
1536, 30 blocks, ffn 8960) and the Wan 2.2 TI2V 5B one (dim 3072, 30 blocks, ffn 14336, 48 channels) from
comfy.ldm.wan.model.WanModel, the Wan 2.1 VAE (dim 96) and the Wan 2.2 VAE from comfy.ldm.wan.vae / vae2_2,
written as bf16 safetensors into a scratch folder and loaded by UNETLoader / VAELoader. The pack is loaded the
way ComfyUI loads a custom node (nodes.load_custom_node) and every node runs in-process through its own class:
ModelSamplingSD3 (shift 8 for 2.1, 5 for 2.2 5B as the official templates), EmptyHunyuanLatentVideo /
Wan22ImageToVideoLatent, then per row
  ksampler  ComfyUI's KSampler (no guidance),
  titan     TitanGuideSampler with its defaults and no guess / method input (random guess k=1, look-ahead 1,
            strength 0.06 on the first 75 % of the steps),
  freedom   TitanGuideSampler + TitanGuidanceMethod(freedom) (backprop through the denoiser and the decode),
each followed by VAEDecode. The text encoder is left out (UMT5-XXL is offloaded before sampling in the
official workflow): positive / negative are random (1, 512, 4096) CONDITIONING tensors. The objective is the
pack's colour objective (tiny: the memory is the model's and the decode's). Peak memory is
torch.cuda.max_memory_allocated over the sampler call (weights included), time the sampler call's seconds.
Out of memory is a result ("oom"); the JSON is rewritten after every row; no row starts past --max-minutes.

    python3 -m benchmarks.wan_gpu --comfyui /tmp/h/ComfyUI --out $OUT/wan_gpu.json [--cases wan21 wan22_5b]
    python3 -m benchmarks.wan_gpu --comfyui DIR --tiny      # CPU: tiny files, every code path, no figures
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# name: (transformer config, VAE kind, width, height, frames, shift, steps)
CASES = {
    "wan21": ({"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "in_dim": 16, "out_dim": 16},
              "vae21", 832, 480, 81, 8.0),
    "wan22_5b": ({"dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30, "in_dim": 48, "out_dim": 48},
                 "vae22", 1280, 704, 121, 5.0),
}
TINY = {"wan21": ({"dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 1, "in_dim": 16, "out_dim": 16},
                  "vae21_tiny", 32, 32, 5, 8.0)}
ROWS = ("ksampler", "titan", "freedom")


def write_files(folder: Path, config: dict, vae_kind: str, dtype) -> tuple[str, str]:
    """Random-init transformer and VAE files (official key layouts) in folder; returns their names."""
    import torch
    import comfy.ldm.wan.model
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2
    import comfy.ops
    from safetensors.torch import save_file

    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = (f"random_wan_{config['dim']}_{config['in_dim']}.safetensors", f"random_{vae_kind}.safetensors")
    if vae_kind == "vae21":
        vae = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                       temperal_downsample=[False, True, True])
    elif vae_kind == "vae21_tiny":
        vae = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                       temperal_downsample=[False, True, True])
    else:
        vae = comfy.ldm.wan.vae2_2.WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                          attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    with torch.device("meta"):
        model = comfy.ldm.wan.model.WanModel(model_type="t2v", operations=comfy.ops.disable_weight_init, **config)
    generator = torch.Generator(device=device).manual_seed(0)
    for module, name in ((model, names[0]), (vae, names[1])):
        if (folder / name).is_file():
            continue
        state = {}
        for key, meta in module.state_dict().items():
            if key.endswith(("gamma", "norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")) or \
                    "norm_" in key and key.endswith("weight"):
                value = torch.ones(meta.shape, device=device)
            elif key.endswith("bias") or meta.dim() < 2:
                value = torch.zeros(meta.shape, device=device)
            else:
                fan_in = max(1, meta[0].numel())
                value = torch.randn(meta.shape, generator=generator, device=device) / fan_in ** 0.5
            if "modulation" in key:
                value = value * 0.02
            state[key] = value.to(dtype).cpu().contiguous()
        save_file(state, str(folder / name))
        del state
    return names


def call(mappings: dict, node_type: str, **inputs):
    """Run one node through its own class (V1: FUNCTION, V3: execute) under inference mode, as ComfyUI's executor
    runs nodes (VAEDecode's in-place output scaling needs it); returns its outputs tuple."""
    import torch

    cls = mappings[node_type]
    with torch.inference_mode():
        if hasattr(cls, "define_schema"):  # widgets not given take their declared defaults, as the UI would
            defaults = {i.id: i.default for i in cls.define_schema().inputs
                        if getattr(i, "default", None) is not None and i.id not in inputs}
            return tuple(cls.execute(**defaults, **inputs).args)
        return getattr(cls(), cls.FUNCTION)(**inputs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True, help="ComfyUI 0.33.0 folder")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=0, help="override the case's frame count")
    parser.add_argument("--max-minutes", type=float, default=9.0)
    parser.add_argument("--scratch", default="", help="folder for the random weight files (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "wan_gpu.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny files on the CPU: checks the path, no figures")
    parser.add_argument("--dynamic-vram", action="store_true",
                        help="keep ComfyUI 0.33's dynamic VRAM (weights streamed by comfy-aimdo, which torch's peak "
                             "counter may not see); off by default so the peak includes the weights")
    options = parser.parse_args(argv)
    started = time.monotonic()

    sys.argv = [sys.argv[0]] + (["--cpu"] if options.tiny else []) + \
        ([] if options.dynamic_vram or options.tiny else ["--disable-dynamic-vram"])
    sys.path.insert(0, str(Path(options.comfyui).resolve()))
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = options.tiny
    import torch
    import folder_paths
    import nodes as comfy_nodes

    asyncio.run(comfy_nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(comfy_nodes.load_custom_node(str(REPO_ROOT))):
        raise SystemExit("the titan-guide pack failed to load (see the log above)")
    mappings = comfy_nodes.NODE_CLASS_MAPPINGS
    scratch = Path(options.scratch or tempfile.mkdtemp(prefix="wan_gpu_"))
    scratch.mkdir(parents=True, exist_ok=True)
    for kind in ("diffusion_models", "vae"):
        folder_paths.add_model_folder_path(kind, str(scratch))
    cuda = torch.cuda.is_available() and not options.tiny
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "steps": options.steps, "dynamic_vram": options.dynamic_vram, "rows": []}
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = TINY if options.tiny else {name: CASES[name] for name in options.cases}
    for case, (config, vae_kind, width, height, frames, shift) in cases.items():
        frames = options.frames or frames
        unet_name, vae_name = write_files(scratch, {**config, "text_dim": 4096}, vae_kind, torch.bfloat16)
        (model,) = call(mappings, "UNETLoader", unet_name=unet_name, weight_dtype="default")
        (model,) = call(mappings, "ModelSamplingSD3", model=model, shift=shift)
        (vae,) = call(mappings, "VAELoader", vae_name=vae_name)
        if config["in_dim"] == 48:
            (latent,) = call(mappings, "Wan22ImageToVideoLatent", vae=vae, width=width, height=height, length=frames,
                             batch_size=1)
        else:
            (latent,) = call(mappings, "EmptyHunyuanLatentVideo", width=width, height=height, length=frames,
                             batch_size=1)
        generator = torch.Generator().manual_seed(1)
        positive = [[torch.randn(1, 512, 4096, generator=generator) * 0.1, {}]]
        negative = [[torch.randn(1, 512, 4096, generator=generator) * 0.1, {}]]
        (objective,) = call(mappings, "TitanColorObjective", red=1.0, green=0.0, blue=0.0, color_weight=1.0,
                            brightness=0.5, brightness_weight=0.0, mode="frame")
        (freedom,) = call(mappings, "TitanGuidanceMethod", method="freedom")
        common = dict(model=model, positive=positive, negative=negative, latent_image=latent, seed=7,
                      steps=options.steps, cfg=5.0, scheduler="simple", denoise=1.0)
        for row in options.rows:
            entry = {"case": case, "row": row, "size": f"{width}x{height}x{frames}",
                     "latent": list(latent["samples"].shape)}
            if (time.monotonic() - started) / 60 > options.max_minutes:
                entry["result"] = "skipped: time budget"
            else:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                try:
                    if row == "ksampler":
                        (samples,) = call(mappings, "KSampler", sampler_name="euler", **{
                            k: v for k, v in common.items()})
                    else:
                        extra = {"method": freedom} if row == "freedom" else {}
                        samples, report, _ = call(mappings, "TitanGuideSampler", vae=vae, objective=objective,
                                                  sampler="euler", **common, **extra)
                        entry["report"] = report
                    if cuda:
                        torch.cuda.synchronize()
                    entry["seconds"] = round(time.perf_counter() - t0, 2)
                    entry["seconds_per_step"] = round(entry["seconds"] / options.steps, 2)
                    if cuda:
                        entry["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    (pixels,) = call(mappings, "VAEDecode", samples=samples, vae=vae)
                    entry["decoded_frames"] = int(pixels.shape[0])
                    entry["result"] = "ok"
                except torch.OutOfMemoryError as error:
                    entry["result"] = "oom"
                    entry["error"] = str(error)[:400]
                    if cuda:
                        entry["peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                except Exception as error:  # a failed row is a result; the run goes on
                    entry["result"] = f"error: {type(error).__name__}: {error}"[:600]
                    entry["traceback"] = traceback.format_exc()[-12000:]
                    print(entry["traceback"], file=sys.stderr, flush=True)
            print(json.dumps({k: v for k, v in entry.items() if k not in ("report", "traceback")}), flush=True)
            results["rows"].append(entry)
            out.write_text(json.dumps(results, indent=1))
        del model, vae
    print(f"wrote {out}")
    return 0 if all(r["result"] in ("ok", "oom", "skipped: time budget") for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
