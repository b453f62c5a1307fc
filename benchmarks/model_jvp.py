"""One model call as a forward-mode JVP, per attention route: what the JVP attention kernel does end to end (GPU).

Models (random weights, diffusers classes, the sizes people run):
  wan     Wan 2.1 1.3B transformer (12 heads x 128, 30 layers, ffn 8960) at 832x480, bf16, text 512 x 4096
  sd15    SD1.5 UNet + AnimateDiff motion module (UNetMotionModel), 16 frames at 512x512, CFG batch 2, fp16

Per (model, frames, attention): no-grad forward and JVP (`torch.func.jvp` inside `forward_ad_attention()`),
median seconds of repeats after a warm-up, peak GB, the JVP as a multiple of the forward, the route counts, and
the tangent's relative error against the first attention listed (so list the reference first). Attention:
"triton" (our kernel, the default route), "jvp-flash-attention" (the route before it), "math" (chunked MATH
everywhere: slow, the reference).

    python -m benchmarks.model_jvp --models wan --frames 33 --attention math triton jvp-flash-attention
    python -m benchmarks.model_jvp --smoke        # tiny models on the CPU: the code paths only
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import statistics
import sys
import time

import torch

import guidance_core as core
from guidance_core.forward_ad import attention

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ATTENTION = ("triton", "jvp-flash-attention", "math")
WAN_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
WAN_SMOKE = dict(num_attention_heads=2, attention_head_dim=8, ffn_dim=32, num_layers=1, text_dim=16,
                 freq_dim=16, in_channels=16, out_channels=16)


def build_wan(device, frames: int, smoke: bool):
    """(f(z), z, tangent, description) for the Wan 2.1 1.3B transformer at 832x480 (latent 16 x T x 60 x 104)."""
    from diffusers import WanTransformer3DModel
    dtype = torch.float32 if smoke else torch.bfloat16
    height, width, text, text_dim = (8, 8, 8, 16) if smoke else (60, 104, 512, 4096)
    with torch.device(device):
        model = WanTransformer3DModel(**(WAN_SMOKE if smoke else WAN_1_3B))
    model = model.to(dtype).eval().requires_grad_(False)
    latent_frames = (frames - 1) // 4 + 1
    gen = torch.Generator(device).manual_seed(0)
    z = torch.randn(1, 16, latent_frames, height, width, device=device, dtype=dtype, generator=gen)
    v = torch.randn(z.shape, device=device, dtype=dtype, generator=gen)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, text, text_dim, device=device, dtype=dtype, generator=gen)
    tokens = latent_frames * (height // 2) * (width // 2)
    return (lambda x: model(x, t, context, return_dict=False)[0]), z, v, f"{tokens} tokens, {dtype}"


def build_sd15(device, frames: int, smoke: bool):
    """(f(z), z, tangent, description) for SD1.5 + motion module, 16 frames at 512x512, CFG batch 2."""
    from benchmarks.paper_scale import build_animatediff
    dtype = torch.float32 if smoke else torch.float16
    unet, _ = build_animatediff(device, dtype, smoke=smoke)
    size = 8 if smoke else 64
    gen = torch.Generator(device).manual_seed(0)
    z = torch.randn(2, 4, frames, size, size, device=device, dtype=dtype, generator=gen)
    v = torch.randn(z.shape, device=device, dtype=dtype, generator=gen)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(2, 77, 768, device=device, dtype=dtype, generator=gen).repeat_interleave(frames, dim=0)
    return (lambda x: unet(x, t, encoder_hidden_states=context).sample), z, v, f"{size * size} spatial tokens, {dtype}"


MODELS = {"wan": build_wan, "sd15": build_sd15}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, float | None, object]:
    """(median seconds after one warm-up, peak GB over the calls or None off CUDA, last result)."""
    result = fn()
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return statistics.median(times), peak, result


def route_settings(name: str):
    """The forward-AD settings of one attention route."""
    if name == "math":
        return attention.settings_override(fused=False)
    return attention.settings_override(fused=True, kernel=name)


def measure_model(name: str, frames: int, routes: list[str], device, repeats: int, smoke: bool) -> list[dict]:
    """Forward once, then the JVP per route; the first route's tangent is the reference."""
    f, z, v, description = MODELS[name](device, frames, smoke)
    with torch.no_grad():
        forward_s, forward_peak, _ = timed(lambda: f(z), repeats)
    rows, reference = [], None
    for route in routes:
        def jvp():
            with torch.no_grad(), core.forward_ad_attention():
                return torch.func.jvp(f, (z,), (v,))[1]
        row = {"model": name, "frames": frames, "shape": description, "attention": route,
               "forward_s": forward_s, "forward_peak_gb": forward_peak}
        try:
            with route_settings(route):
                attention.route_counts.clear()
                jvp_s, jvp_peak, tangent = timed(jvp, 1 if route == "math" else repeats)
                row["route_counts"] = {k: c // (2 if route == "math" else repeats + 1)
                                       for k, c in attention.route_counts.items()}
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
            rows.append(row)
            continue
        tangent = tangent.double()
        if reference is None:
            reference = tangent
        error = float((tangent - reference).norm() / reference.norm().clamp_min(1e-30))
        row.update(status="ok", jvp_s=jvp_s, jvp_peak_gb=jvp_peak, jvp_over_forward=jvp_s / forward_s,
                   tangent_error_vs_first=error, finite=bool(torch.isfinite(tangent).all()))
        print(json.dumps(row), flush=True)
        rows.append(row)
        del tangent
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | frames | attention | forward s | JVP s (x forward) | JVP peak GB | tangent error vs first | routes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("status") != "ok":
            print(f"| {r['model']} | {r['frames']} | {r['attention']} | {r['forward_s']:.3f} | {r.get('status')} | | | |")
            continue
        peak = "-" if r["jvp_peak_gb"] is None else f"{r['jvp_peak_gb']:.1f}"
        print(f"| {r['model']} | {r['frames']} | {r['attention']} | {r['forward_s']:.3f} | {r['jvp_s']:.3f} "
              f"({r['jvp_over_forward']:.1f}x) | {peak} | {r['tangent_error_vs_first']:.1e} | {r['route_counts']} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--frames", type=int, default=81, help="pixel frames (Wan: 4k+1; SD1.5 always uses 16)")
    parser.add_argument("--attention", nargs="+", default=["triton", "jvp-flash-attention"], choices=ATTENTION,
                        help="routes in order; the first one's tangent is the error reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (math only)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "model_jvp.json")
    parser.add_argument("--append", action="store_true", help="add the rows to --out instead of replacing it")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be >= 1")
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or --smoke for the CPU code paths")
    routes = ["math"] if args.smoke else args.attention
    rows = []
    for name in args.models:
        frames = 16 if name == "sd15" else args.frames
        rows += measure_model(name, 4 if args.smoke and name == "sd15" else frames, routes, device, args.repeats,
                              args.smoke)
    print_table(rows)
    meta = {"command": "python -m benchmarks.model_jvp " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    previous = json.loads(args.out.read_text())["rows"] if args.append and args.out.is_file() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": previous + [dict(r, **meta) for r in rows]}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
