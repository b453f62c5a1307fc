"""Memory of the parts of TITAN's forward-mode pass on the shipped AnimateDiff + DOVER workflow, counted on the CPU.

The GPU peak of a guided run is set inside its forward-mode pass (values and tangents alive together); which part
sets it decides what to chunk. This counts the bytes of every tensor an operator returns from its creation until
it is freed (a dispatch mode; constants cached by the networks are built before counting) for:
  vae_decode_frame  one frame through the full-size SD1.5 VAE decoder (ComfyUI's class, random init), in the dtype
                    ComfyUI decodes in on a recent GPU (bf16); the automatic decode chunk is planned from it
  dover             DOVER (full size) on --frames frames, fp32, window attention a few windows at a time (as
                    shipped) and all windows at once (as before)
  unet_jvp_frame    one frame's CFG pair through the full-size SD1.5 UNet (no motion module), fp32; half of it
                    per frame in fp16
and the decode chunk the planner picks for --frames frames with --free-gib free: half the free memory (as before)
against about guidance_core.decode.DECODE_CALL_BYTES per call (as shipped). CUDA's caching allocator rounds blocks
up and adds workspaces, so GPU figures are somewhat higher; this is for which part dominates and by how much.

    python -m benchmarks.forward_mode_memory --size 256 --frames 16

Prints a table and writes the run into benchmarks/results/forward_mode_memory.json (one run per size and frames).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import weakref
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


class LiveBytes(TorchDispatchMode):
    """Peak bytes of CPU tensor storages that operators return while the mode is on, each counted until freed;
    storages of `existing` tensors (weights, inputs: an operator may return them or a view of them) are not."""

    def __init__(self, existing=()):
        super().__init__()
        self.live, self.peak = 0, 0
        self._existing = {t.untyped_storage().data_ptr() for t in existing}
        self._storages = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, (tuple, list)) else (result,):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            try:
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError):  # zero tensors and other storage-less results
                continue
            if size == 0 or key in self._storages or key in self._existing:
                continue
            self._storages.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)
        return result

    def _free(self, key, size):
        self._storages.discard(key)
        self.live -= size


def forward_mode_peak(function, primal: torch.Tensor, module: torch.nn.Module) -> tuple[float, float]:
    """(peak live bytes, seconds) of one forward-mode pass of `function` (running `module`) at `primal` along a
    random tangent; the module's weights and the inputs are not counted."""
    from guidance_core.forward_ad.attention import forward_ad_attention

    tangent = torch.randn_like(primal)
    with torch.no_grad(), forward_ad_attention(), fwAD.dual_level():
        function(fwAD.make_dual(primal, tangent))  # cached constants (masks, gates, tables) are not part of a pass
        counter = LiveBytes([*module.parameters(), *module.buffers(), primal, tangent])
        started = time.perf_counter()
        with counter:
            function(fwAD.make_dual(primal, tangent))
    return counter.peak, time.perf_counter() - started


def sd_vae(dtype: torch.dtype):
    import comfy.ldm.models.autoencoder
    from tiny_checkpoints import SD_VAE_DDCONFIG

    torch.manual_seed(0)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE_DDCONFIG, embed_dim=4).to(dtype).eval()
    return vae.requires_grad_(False)


def sd15_unet():
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.supported_models
    from tiny_checkpoints import FULL_SD15_UNET_CONFIG

    # ComfyUI's attention on CUDA (SDPA, which the pack routes in forward mode); on the CPU it picks sub-quadratic
    comfy_attention.optimized_attention = comfy_attention.attention_pytorch
    config = comfy.supported_models.SD15(dict(FULL_SD15_UNET_CONFIG))  # as tests/tiny_checkpoints.py builds it
    config.set_inference_dtype(torch.float32, None)
    torch.manual_seed(0)
    unet = config.get_model({}).diffusion_model
    for parameter in unet.parameters():
        parameter.data.normal_(0, 0.02)
    return unet.requires_grad_(False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=REPO_ROOT / ".host" / "ComfyUI")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--free-gib", type=float, default=130.0, help="free GPU memory the planner sees (H200)")
    parser.add_argument("--skip-unet", action="store_true", help="leave out the UNet (minutes on two cores)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "forward_mode_memory.json")
    options = parser.parse_args(argv)
    if options.size % 8 or options.size < 64 or options.frames < 2:
        parser.error("size must be a multiple of 8, >= 64; frames >= 2")
    for path in (options.comfyui, REPO_ROOT / "tests", REPO_ROOT):
        sys.path.insert(0, str(path))
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = True

    from guidance_core.decode import DECODE_CALL_BYTES, frames_per_chunk
    from objectives import _swin3d
    from objectives.dover import DoverLoss, dover_full

    latent = options.size // 8
    rows = []

    def row(part: str, peak: float, seconds: float, **extra):
        rows.append(dict(part=part, peak_gib=round(peak / GIB, 3), seconds=round(seconds, 1), **extra))
        print(f"[forward_mode_memory] {rows[-1]}", flush=True)

    vae = sd_vae(torch.bfloat16)
    per_frame, seconds = forward_mode_peak(vae.decode, torch.randn(1, 4, latent, latent, dtype=torch.bfloat16), vae)
    row("vae_decode_frame", per_frame, seconds, dtype="bfloat16")
    del vae

    torch.manual_seed(0)
    dover = DoverLoss(dover_full().eval())
    dover.requires_grad_(False)
    video = torch.rand(1, options.frames, 3, options.size, options.size)
    shipped = _swin3d.WINDOW_SCORE_BYTES
    try:
        for label, budget in (("dover_all_windows_at_once", 2**62), ("dover", shipped)):
            _swin3d.WINDOW_SCORE_BYTES = budget
            peak, seconds = forward_mode_peak(dover, video, dover)
            row(label, peak, seconds, frames=options.frames, window_score_bytes=budget)
    finally:
        _swin3d.WINDOW_SCORE_BYTES = shipped
    del dover

    if not options.skip_unet:
        unet = sd15_unet()
        context = torch.randn(2, 77, 768)
        timestep = torch.tensor([500.0, 500.0])
        peak, seconds = forward_mode_peak(lambda x: unet(x, timestep, context=context),
                                          torch.randn(2, 4, latent, latent), unet)
        row("unet_jvp_frame", peak, seconds, dtype="float32", batch="one frame's CFG pair")
        del unet

    free = options.free_gib * GIB
    plans = {"half_the_free_memory": frames_per_chunk(options.frames, per_frame, free, call_bytes=math.inf),
             "shipped": frames_per_chunk(options.frames, per_frame, free, call_bytes=DECODE_CALL_BYTES)}
    plan_rows = {name: {"frames_per_call": chunk, "decode_gib": round(chunk * per_frame / GIB, 2)}
                 for name, chunk in plans.items()}
    result = {"size": options.size, "frames": options.frames, "free_gib": options.free_gib, "device": "cpu",
              "torch": torch.__version__, "parts": rows, "decode_plans": plan_rows}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(options.out.read_text(encoding="utf-8"))["runs"] if options.out.is_file() else []
    runs = [r for r in runs if (r["size"], r["frames"]) != (options.size, options.frames)] + [result]
    options.out.write_text(json.dumps({"runs": sorted(runs, key=lambda r: (r["size"], r["frames"]))}, indent=2)
                           + "\n", encoding="utf-8")

    print(f"\nforward-mode pass, {options.frames} frames {options.size}x{options.size} (CPU, live tensor bytes)")
    print(f"{'part':28} {'peak GiB':>9} {'s':>6}")
    for r in rows:
        print(f"{r['part']:28} {r['peak_gib']:9.3f} {r['seconds']:6.1f}")
    for name, plan in plan_rows.items():
        print(f"decode chunk, {name:22}: {plan['frames_per_call']:3d} frames per call, {plan['decode_gib']:.2f} GiB")
    print(f"JSON: {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
