"""Where a UNet JVP's time goes, and what the fused attention and CUDA graphs do about it (GPU).

Full-size SD1.5 UNet + AnimateDiff motion module (diffusers UNetMotionModel, random weights), 16 frames at
256x256, CFG batch 2, strict fp32 (no TF32) unless noted. Measures, in one run:

* attention kernels alone: MATH-backend JVP against the fused flash JVP kernel (`jvp-flash-attention`,
  head dims zero-padded) per shape: median ms, peak MB, error against a float64 reference;
* the UNet: no-grad forward, forward of a doubled batch (the floor for a fused primal+tangent pass), JVP
  with MATH attention, JVP with the router (fused where it applies), the same replayed as a CUDA graph;
  median seconds and peak GB, and the replay's agreement with the eager JVP;
* a torch.profiler summary of the eager JVPs: operator calls, CPU time, GPU kernel time;
* bf16: the UNet JVP in bf16 against fp32 (checks guidance_core's layer_norm / group_norm fixes on CUDA).

    python -m benchmarks.jvp_profile --out benchmarks/results/jvp_profile.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F

import guidance_core as core
from guidance_core.forward_ad import attention
from benchmarks.paper_scale import add_precision_argument, build_animatediff, set_precision

CFG = 7.5


def timed(fn, repeats: int) -> tuple[float, float | None, object]:
    """(median seconds, peak GB above the start or None off CUDA, last result) of fn()."""
    cuda = torch.cuda.is_available()
    result = fn()  # warm-up (autotuning, lazy init)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
    return statistics.median(times), peak, result


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def attention_kernels(device, repeats: int) -> list[dict]:
    """MATH vs fused JVP of single attention calls at the shapes an SD1.5 video UNet makes."""
    shapes = [  # (batch*frames, heads, tokens, head dim), from the UNet at 256 and 384 px with CFG
        ("256px level 1", (32, 8, 1024, 40)), ("256px level 2", (32, 8, 256, 80)),
        ("384px level 1", (32, 8, 2304, 40)), ("384px level 2", (32, 8, 576, 80)),
        ("CogVideoX joint 256x384", (2, 30, 3682, 64)),
    ]
    rows = []
    for name, shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v, tq, tk, tv = (torch.randn(shape, generator=g, device=device) for _ in range(6))
            f = (lambda a, b, c: F.scaled_dot_product_attention(a, b, c))
            cast = [t.to(dtype) for t in (q, k, v, tq, tk, tv)]
            row = {"shape": name, "dims": list(shape), "dtype": str(dtype).replace("torch.", "")}
            with core.forward_ad_attention():
                with scope_settings(fused=False):
                    row["math_ms"], row["math_peak_gb"], math_out = timed(
                        lambda: torch.func.jvp(f, tuple(cast[:3]), tuple(cast[3:])), repeats)
                with scope_settings(fused=True):
                    row["route"] = attention.attention_route(*cast[:3])
                    row["fused_ms"], row["fused_peak_gb"], fused_out = timed(
                        lambda: torch.func.jvp(f, tuple(cast[:3]), tuple(cast[3:])), repeats)
            row["math_ms"] *= 1e3
            row["fused_ms"] *= 1e3
            if shape[2] <= 2304:  # float64 reference (MATH) where it fits comfortably
                with core.forward_ad_attention(), scope_settings(fused=False):
                    ref = torch.func.jvp(f, tuple(t.double() for t in (q, k, v)),
                                         tuple(t.double() for t in (tq, tk, tv)))
                for label, out in (("math", math_out), ("fused", fused_out)):
                    row[f"{label}_err_out"] = rel_error(out[0], ref[0])
                    row[f"{label}_err_tangent"] = rel_error(out[1], ref[1])
                del ref
            rows.append(row)
            print(json.dumps(row), flush=True)
            del q, k, v, tq, tk, tv, cast, math_out, fused_out
            torch.cuda.empty_cache()
    return rows


class UNetCall:
    """eps(z) of the CFG UNet at a timestep held in a tensor (`sigmas`, so GraphedJvp can swap the buffer)."""

    def __init__(self, unet, text, timestep):
        self.unet, self.text, self.sigmas = unet, text, timestep

    def __call__(self, z):
        out = self.unet(torch.cat([z, z]), self.sigmas, encoder_hidden_states=self.text).sample
        uncond, cond = out.chunk(2)
        return uncond + CFG * (cond - uncond)

    def with_sigmas(self, sigmas):
        """The same call reading its timestep from `sigmas`."""
        return UNetCall(self.unet, self.text, sigmas)

    def graph_key(self):
        """Nothing besides the static inputs changes between calls."""
        return ("unet", id(self.unet))


def unet_profile(device, repeats: int, frames: int, size: int, smoke: bool) -> dict:
    """Forward, doubled-batch forward, JVP (MATH / routed / graph) of the CFG UNet; profiler summary."""
    unet, _ = build_animatediff(device, torch.float32, smoke=smoke)
    g = torch.Generator().manual_seed(0)
    latent = size // 8
    text = torch.randn(2, 77, 768, generator=g).to(device).repeat_interleave(frames, dim=0)
    x = torch.randn(1, 4, frames, latent, latent, generator=g).to(device)
    v = torch.randn(x.shape, generator=g).to(device)
    call = UNetCall(unet, text, torch.tensor([500.0], device=device))
    out: dict = {"frames": frames, "size": size, "dtype": "float32"}

    def forward():
        with torch.no_grad():
            return call(x)

    def forward_doubled():
        with torch.no_grad():
            return unet(torch.cat([x, x, v, v]), call.sigmas, encoder_hidden_states=torch.cat([text, text])).sample

    def jvp():
        with torch.no_grad(), core.forward_ad_attention():
            return torch.func.jvp(call, (x,), (v,))

    out["forward_s"], out["forward_peak_gb"], _ = timed(forward, repeats)
    out["forward_doubled_batch_s"], out["forward_doubled_peak_gb"], _ = timed(forward_doubled, repeats)
    with scope_settings(fused=False, lean_linear=False):  # the path before this work: MATH, builtin rules
        out["jvp_baseline_s"], out["jvp_baseline_peak_gb"], baseline = timed(jvp, repeats)
    with scope_settings(fused=False):
        out["jvp_math_s"], out["jvp_math_peak_gb"], math_result = timed(jvp, repeats)
    with scope_settings(lean_linear=False):
        out["jvp_builtin_rules_s"], out["jvp_builtin_rules_peak_gb"], _ = timed(jvp, repeats)
    out["lean_vs_builtin_tangent_err"] = rel_error(math_result[1], baseline[1])
    before = dict(attention.route_counts)
    out["jvp_s"], out["jvp_peak_gb"], eager = timed(jvp, repeats)
    out["jvp_route_counts"] = {k: (attention.route_counts[k] - before.get(k, 0)) // (repeats + 1)
                               for k in attention.route_counts}
    out["fused_vs_math_tangent_err"] = rel_error(eager[1], math_result[1])
    if torch.cuda.is_available():
        graphed = core.GraphedJvp()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        graphed(call, x, v)  # eager on the capture stream
        graphed(call, x, v)  # capture + replay
        out["jvp_graph_capture_peak_gb"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        out["jvp_graph_s"], _, replay = timed(lambda: graphed(call, x, v), repeats)
        out["graph_vs_eager_err"] = rel_error(replay[1], eager[1])
        out["graph_captures"], out["graph_replays"] = graphed.captures, graphed.replays
        del graphed
        torch.cuda.empty_cache()
    out["jvp_over_forward"] = out["jvp_s"] / out["forward_s"]
    out["jvp_math_over_forward"] = out["jvp_math_s"] / out["forward_s"]
    if "jvp_graph_s" in out:
        out["jvp_graph_over_forward"] = out["jvp_graph_s"] / out["forward_s"]
    out["jvp_baseline_over_forward"] = out["jvp_baseline_s"] / out["forward_s"]
    out["profile"] = {}
    with scope_settings(fused=False, lean_linear=False):
        out["profile"]["jvp_before"] = profile_summary(jvp)
    out["profile"]["jvp_after"] = profile_summary(jvp)
    out["profile"]["forward"] = profile_summary(forward)
    if torch.cuda.is_available() and not smoke:
        out["bf16"] = bf16_check(unet, call, x, v, eager[1])
    return out


@contextlib.contextmanager
def scope_settings(**values):
    """Change the forward-AD attention settings for the scope."""
    with attention.settings_override(**values):
        yield


def titan_video(device, frames: int, size: int, smoke: bool, steps: int = 20, order=("eager", "graph")) -> dict:
    """A 20-step TITAN video (look-ahead 1, sampled-gradient guess, DOVER, CFG), eager against CUDA graph."""
    from benchmarks.paper_scale import sd15_alphas_cumprod
    from objectives.dover import DoverLoss, dover_full
    unet, vae = build_animatediff(device, torch.float32, smoke=smoke)
    with torch.device(device):
        scorer = DoverLoss(dover_full()).to(device) if not smoke else None
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 77, 768, generator=g).to(device).repeat_interleave(frames, dim=0)

    def eps_model(z, t):
        out = unet(torch.cat([z, z]), t, encoder_hidden_states=text).sample
        uncond, cond = out.chunk(2)
        return uncond + CFG * (cond - uncond)

    def decode(z):  # (1, 4, k, h, w) -> (1, 3, k, H, W)
        k = z.shape[2]
        img = vae.decode(z.permute(0, 2, 1, 3, 4).reshape(k, 4, *z.shape[-2:]).contiguous() / 0.18215).sample
        return img.reshape(1, k, 3, *img.shape[-2:]).permute(0, 2, 1, 3, 4)

    def score(pixels, frame_indices=None):
        video = ((pixels.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)
        return scorer(video) if scorer is not None else video.mean(dim=(1, 2, 3, 4))

    layout = core.Layout(samples=1, frame_dim=2)
    denoise = core.EpsDenoiser(eps_model, sd15_alphas_cumprod().to(device))
    sigmas = core.DiscreteSchedule(sd15_alphas_cumprod()).spaced_sigmas(steps).to(device, torch.float32)
    x = (torch.randn(1, 4, frames, size // 8, size // 8, generator=g) * float(sigmas[0])).to(device)
    chunk = core.plan_chunk_frames(decode, x, layout)
    loss = core.DecodedLoss(decode, score, layout, chunk)
    out = {"frames": frames, "size": size, "decode_chunk": chunk, "steps": steps}
    results = {}
    for label, graph in ((label, label == "graph") for label in order):
        if graph and not torch.cuda.is_available():
            continue
        method = core.Titan(guess=core.SampledGradientGuess(frames=2), lookahead=1, strength=0.1, optimizer="adam",
                          cuda_graph=graph)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            result = core.sample(denoise, x.clone(), sigmas, method, loss=loss, layout=layout,
                               generator=torch.Generator(device=device).manual_seed(1))
        except Exception as error:  # recorded: the run goes on
            out[f"{label}_error"] = f"{type(error).__name__}: {error}"[:400]
            continue
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            out[f"{label}_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        out[f"{label}_video_s"] = time.perf_counter() - start
        results[label] = result.x
        if graph:
            out["graph_captures"], out["graph_replays"] = method.graphs.captures, method.graphs.replays
            out["graph_failure"] = method.graphs.failure
    if len(results) == 2:
        out["graph_vs_eager_final_latent_err"] = rel_error(results["graph"], results["eager"])
    return out


def profile_summary(fn) -> dict:
    """Operator calls, total CPU time of top-level ops and GPU kernel time of one call of fn."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    fn()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    from torch.autograd import DeviceType
    events = prof.key_averages()
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::"))
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # kernels and copies, counted once
    gpu_us = sum(e.self_device_time_total for e in kernels)
    ops = [e for e in events if e.key.startswith("aten::")]
    top = sorted(ops, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:10]
    return {"wall_s": wall, "aten_calls": aten_calls, "gpu_kernel_s": gpu_us / 1e6,
            "kernel_launches": sum(e.count for e in kernels),
            "top_gpu_ops": [{"op": e.key, "calls": e.count, "gpu_s": getattr(e, "self_device_time_total", 0) / 1e6}
                            for e in top]}


def bf16_check(unet, call, x, v, fp32_tangent) -> dict:
    """UNet JVP in bf16 against fp32: finite and close (layer_norm / group_norm fixes active)."""
    unet16 = unet.to(torch.bfloat16)
    call16 = UNetCall(unet16, call.text.to(torch.bfloat16), call.sigmas)
    try:
        with torch.no_grad(), core.forward_ad_attention():
            _, tangent = torch.func.jvp(call16, (x.to(torch.bfloat16),), (v.to(torch.bfloat16),))
        return {"finite": bool(torch.isfinite(tangent).all()), "dtype": str(tangent.dtype),
                "rel_error_vs_fp32": rel_error(tangent.float(), fp32_tangent),
                "cosine_vs_fp32": float(F.cosine_similarity(tangent.float().flatten(), fp32_tangent.flatten(), 0))}
    except Exception as error:  # recorded: this is a check
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    finally:
        unet.to(torch.float32)


def main() -> None:
    """Run the profile, print a summary, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/jvp_profile.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny UNet on the CPU: checks the code paths only")
    parser.add_argument("--titan-only", type=int, metavar="STEPS", help="only the TITAN video check, STEPS steps, "
                        "graph first (debugging capture)")
    add_precision_argument(parser)
    args = parser.parse_args()
    if args.titan_only:
        print(json.dumps(titan_video(torch.device("cuda"), 16, 256, False, args.titan_only, ("graph", "eager"))))
        return
    if args.smoke:
        result = unet_profile("cpu", 1, 4, 64, smoke=True)
        result["titan_video"] = titan_video("cpu", 4, 64, smoke=True)
        print(json.dumps(result, indent=1))
        if "eager_video_s" not in result["titan_video"]:
            raise SystemExit(f"TITAN video failed: {result['titan_video']}")
        return
    device = torch.device("cuda")
    set_precision(args.precision)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "command": "python -m benchmarks.jvp_profile " + " ".join(sys.argv[1:]), "precision": args.precision,
              "attention": {}}
    result["attention"]["kernels"] = attention_kernels(device, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    result["attention"].update(unet_profile(device, args.repeats, 16, 256, smoke=False))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    torch.cuda.empty_cache()
    result["titan_video"] = titan_video(device, 16, 256, smoke=False)
    print(json.dumps(result["titan_video"]), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    a = result["attention"]
    print(f"\nUNet 16x256 CFG fp32 on {result['device']}: forward {a['forward_s']:.3f} s, doubled batch "
          f"{a['forward_doubled_batch_s']:.3f} s, JVP before (MATH, builtin rules) {a['jvp_baseline_s']:.3f} s "
          f"({a['jvp_baseline_over_forward']:.1f}x), lean rules + MATH {a['jvp_math_s']:.3f} s "
          f"({a['jvp_math_over_forward']:.1f}x), builtin rules + fused {a['jvp_builtin_rules_s']:.3f} s, "
          f"JVP routed {a['jvp_s']:.3f} s ({a['jvp_over_forward']:.1f}x), graph {a.get('jvp_graph_s', float('nan')):.3f} s "
          f"({a.get('jvp_graph_over_forward', float('nan')):.1f}x)")
    for label, p in a["profile"].items():
        print(f"  {label:10s} wall {p['wall_s']:.3f} s  aten calls {p['aten_calls']}  kernel launches "
              f"{p['kernel_launches']}  GPU kernels {p['gpu_kernel_s']:.3f} s")


if __name__ == "__main__":
    main()
