"""Memory and time of every guidance method at the paper's scale, side by side in one run (GPU).

Full-size architectures with random weights: SD1.5 UNet + AnimateDiff v1-5-2-shaped motion module
(diffusers UNetMotionModel, 1.3 B parameters), the SD VAE, and scorers at their real sizes (DOVER,
ImageBind-huge vision + audio). CFG is on (batch 2 through the UNet), 20 DDIM steps, fp32 unless a case
says otherwise. Per case: peak `torch.cuda.max_memory_allocated` (weights included, and the weights alone),
median seconds of one guidance step at step 5 of 20 (DOODL: one optimisation iteration over the whole
chain), and for some cases a complete guided video. Out-of-memory is a result.

    python -m benchmarks.paper_scale --out benchmarks/results/paper_scale.json [--cases NAME ...]
"""
from __future__ import annotations

import argparse
import gc as python_gc
import json
import math
import pathlib
import statistics
import time
import traceback

import torch

import guidance_core as gc

STEPS, GUIDED_STEP, CFG = 20, 5, 7.5


def sd15_alphas_cumprod() -> torch.Tensor:
    """SD1.5's scaled-linear schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def build_animatediff(device, dtype, smoke: bool = False):
    """UNetMotionModel (SD1.5 UNet + default motion adapter, as AnimateDiff v1-5-2) and the SD VAE.

    `smoke` builds the same classes at a tiny size, to check the script's code paths on the CPU.
    """
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    unet_cfg = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    adapter_cfg = dict(motion_max_seq_length=32)
    vae_blocks = (128, 256, 512, 512)
    if smoke:
        unet_cfg.update(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, norm_num_groups=8)
        adapter_cfg.update(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                           motion_num_attention_heads=2)
        vae_blocks = (16, 32, 32, 32)
    with torch.device(device):
        unet2d = UNet2DConditionModel(**unet_cfg)
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**adapter_cfg))
        del unet2d
        vae = AutoencoderKL(block_out_channels=vae_blocks, latent_channels=4, layers_per_block=2 if not smoke else 1,
                            norm_num_groups=32 if not smoke else 8,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return unet.to(dtype).eval().requires_grad_(False), vae.to(dtype).eval().requires_grad_(False)


def build_scorer(name: str, device, dtype, frames: int):
    """A scorer at its real size with random weights: (B, F, 3, H, W) in [0, 1] -> loss (B,)."""
    if name == "dover":
        from objectives.dover import DoverLoss, dover_full
        with torch.device(device):
            model = dover_full()
        return DoverLoss(model.to(dtype)).to(device)
    if name == "imagebind_huge":
        from objectives.imagebind_audio import ImageBindAudioLoss, import_imagebind_model
        with torch.device(device):
            model = import_imagebind_model().imagebind_huge(pretrained=False)
        model = model.to(dtype).eval().requires_grad_(False)
        audio = {"waveform": torch.randn(1, 1, 16000 * 4, generator=torch.Generator().manual_seed(0)),
                 "sample_rate": 16000}
        loss = ImageBindAudioLoss(model, audio, fps=8.0, num_frames=frames)
        return loss.to(device)
    if name == "color":  # smoke tests only
        from objectives.color import ColorLoss
        return ColorLoss().to(device)
    raise ValueError(f"unknown scorer {name!r}")


class Problem:
    """Denoiser with CFG, differentiable chunked decode and scorer, wired the way the nodes wire ComfyUI."""

    def __init__(self, unet, vae, scorer, frames, size, dtype, device, chunk):
        self.frames, self.dtype, self.device = frames, dtype, device
        gen = torch.Generator().manual_seed(0)
        # diffusers' UNetMotionModel takes text embeddings already repeated per frame (as its pipeline does)
        text = torch.randn(2, 77, 768, generator=gen).to(device, dtype).repeat_interleave(frames, dim=0)

        def eps_model(z, t):
            out = unet(torch.cat([z, z]), t.to(device), encoder_hidden_states=text).sample
            uncond, cond = out.chunk(2)
            return uncond + CFG * (cond - uncond)

        self.denoise = gc.EpsDenoiser(eps_model, sd15_alphas_cumprod().to(device))
        self.layout = gc.Layout(samples=1, frame_dim=2)

        def decode(z):  # (1, 4, k, h, w) -> (1, 3, k, H, W) in [-1, 1]
            k = z.shape[2]
            # contiguous: group_norm's forward-AD rule views its tangent, which a permute leaves strided
            frames_first = z.permute(0, 2, 1, 3, 4).reshape(k, 4, *z.shape[-2:]).contiguous()
            img = vae.decode(frames_first / 0.18215).sample
            return img.reshape(1, k, 3, *img.shape[-2:]).permute(0, 2, 1, 3, 4)

        def score(pixels, frame_indices=None):
            video = ((pixels.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)
            return scorer(video)

        self.decode, self.score = decode, score
        self.loss = gc.DecodedLoss(decode, score, self.layout, chunk)
        sched = gc.DiscreteSchedule(sd15_alphas_cumprod())
        self.sigmas = sched.spaced_sigmas(STEPS).to(device, torch.float32)
        latent = size // 8
        self.x = (torch.randn(1, 4, frames, latent, latent, generator=gen) * float(self.sigmas[0])).to(device, dtype)

    def context(self, checkpointed_loss=False):
        """Sampling context for this problem."""
        loss = self.loss
        if checkpointed_loss:
            loss = gc.DecodedLoss(self.decode, self.score, self.layout, self.loss.chunk_frames, checkpointed=True)
        return gc.SamplingContext(self.denoise, self.sigmas, loss=loss, layout=self.layout,
                                  generator=torch.Generator(device=self.device).manual_seed(1))


def methods(lookahead: int | str):
    """The methods compared, by name, at one look-ahead for the look-ahead methods."""
    common = dict(lookahead=lookahead, strength=0.1, optimizer="adam")
    return {
        "titan_random": lambda: gc.Titan(guess=gc.RandomGuess(), **common),
        "titan_score": lambda: gc.Titan(guess=gc.ScoreGuess(), **common),
        "titan_sampled_gradient": lambda: gc.Titan(guess=gc.SampledGradientGuess(frames=2), **common),
        "exact": lambda: gc.baselines.ExactGradient(**common),
        "freedom": lambda: gc.baselines.FreeDoM(),
        "mpgd": lambda: gc.baselines.MPGD(),
        "tfg": lambda: gc.baselines.TFG(),
        "doodl": lambda: gc.baselines.DOODL(iterations=1),
    }


def measure(fn, repeats: int) -> tuple[float | None, float]:
    """(peak GB, median seconds) of fn() over `repeats` runs, peak reset before the first (None off CUDA)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return (torch.cuda.max_memory_allocated() / 2**30 if cuda else None), statistics.median(times)


def run_case(problem: Problem, method_name: str, lookahead, repeats: int, video: bool) -> dict:
    """One row: a guidance step (or a DOODL iteration) and optionally a whole guided video."""
    method = methods(lookahead)[method_name]()
    row = {"method": method_name, "lookahead": lookahead if method_name in ("exact",) or
           method_name.startswith("titan") else None}
    try:
        if hasattr(method, "sample"):
            ctx = problem.context()
            row["peak_gb"], row["step_s"] = measure(lambda: method.sample(problem.x.clone(), ctx), 1)
        else:
            ctx = problem.context()
            x = problem.x.clone()
            for i in range(GUIDED_STEP):  # reach step 5 unguided, as a run would
                x = ctx.plain_step(x, i)
            row["peak_gb"], row["step_s"] = measure(lambda: method.guide(x, GUIDED_STEP, ctx), repeats)
        if video and not hasattr(method, "sample"):
            ctx = problem.context()
            _, row["video_s"] = measure(lambda: gc.sample(problem.denoise, problem.x.clone(), problem.sigmas,
                                                          method=method, loss=ctx.loss, layout=problem.layout,
                                                          generator=ctx.generator), 1)
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row["status"] = "oom"
        row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as error:  # recorded, the run goes on
        row["status"] = f"error: {type(error).__name__}: {error}"[:300]
        traceback.print_exc()
    python_gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


CASES = {
    # name: (frames, size, dtype, scorer, [(method, lookahead, video)])
    "ad256_dover": (16, 256, torch.float32, "dover", [
        ("titan_random", 1, False), ("titan_score", 1, False), ("titan_sampled_gradient", 1, True),
        ("titan_sampled_gradient", 5, False), ("titan_sampled_gradient", "all", False),
        ("exact", 1, False), ("freedom", None, False), ("mpgd", None, False), ("tfg", None, False),
        ("doodl", None, False)]),
    "ad256_imagebind": (16, 256, torch.float32, "imagebind_huge", [
        ("titan_sampled_gradient", 1, False), ("freedom", None, False), ("mpgd", None, False)]),
    "ad384_imagebind": (16, 384, torch.float32, "imagebind_huge", [
        ("titan_sampled_gradient", 1, False), ("titan_sampled_gradient", 5, False), ("freedom", None, False)]),
    "ad256_dover_bf16": (16, 256, torch.bfloat16, "dover", [
        ("titan_sampled_gradient", 1, True), ("freedom", None, False)]),
}


def write(path: pathlib.Path, rows: list, cases: list) -> None:
    """Write the results so far (a run cut short still leaves its finished rows)."""
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": STEPS, "cfg": CFG,
              "guided_step": GUIDED_STEP, "command": "python -m benchmarks.paper_scale --cases " + " ".join(cases),
              "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    """Run the chosen cases, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--chunk", type=int, default=4, help="decode chunk (frames) inside the objective")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/paper_scale.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the code paths only")
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as in the paper
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for case in args.cases:
        frames, size, dtype, scorer_name, runs = CASES[case]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        unet, vae = build_animatediff(device, dtype)
        scorer = build_scorer(scorer_name, device, dtype, frames)
        weights_gb = torch.cuda.memory_allocated() / 2**30
        problem = Problem(unet, vae, scorer, frames, size, dtype, device, args.chunk)
        for method_name, lookahead, video in runs:
            row = run_case(problem, method_name, lookahead, args.repeats, video)
            row.update(backbone="animatediff", frames=frames, height=size, width=size,
                       dtype=str(dtype).replace("torch.", ""), scorer=scorer_name, weights_gb=weights_gb,
                       decode_chunk=args.chunk)
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args.out, rows, args.cases)
        del unet, vae, scorer, problem
        python_gc.collect()
        torch.cuda.empty_cache()
    write(args.out, rows, args.cases)
    print(f"\n{'case':38s} {'method':24s} {'look':>5s} {'peak GB':>8s} {'no-wt GB':>8s} {'step s':>7s} {'video s':>8s} status")
    for r in rows:
        case = f"{r['backbone']} {r['frames']}x{r['height']}x{r['width']} {r['dtype']} {r['scorer']}"
        peak = r.get("peak_gb")
        peak_s = "-" if peak is None else f"{peak:.1f}"
        free_s = "-" if peak is None else f"{peak - r['weights_gb']:.1f}"
        look = "-" if r["lookahead"] is None else str(r["lookahead"])
        print(f"{case:38s} {r['method']:24s} {look:>5s} {peak_s:>8s} {free_s:>8s} "
              f"{r.get('step_s', float('nan')):7.2f} {r.get('video_s', float('nan')):8.1f} {r['status']}")


def smoke() -> None:
    """Every method once on tiny models on the CPU (no figures: a check that the benchmark runs)."""
    unet, vae = build_animatediff("cpu", torch.float32, smoke=True)
    problem = Problem(unet, vae, build_scorer("color", "cpu", torch.float32, 4), 4, 64, torch.float32, "cpu", 2)
    for method_name, lookahead, video in CASES["ad256_dover"][4]:
        row = run_case(problem, method_name, lookahead, 1, False)
        print(json.dumps(row), flush=True)
        if row["status"] != "ok":
            raise SystemExit(f"{method_name} failed: {row['status']}")


if __name__ == "__main__":
    main()
