"""Fidelity of guided videos on the embedded tiny video model: success, distribution quality, consistency, cost.

Every method samples the same N videos from the same initial noise (one noise tensor drawn once, then split
into batches), guided toward a target attribute by the guiding classifier (objectives.attribute_classifier,
embedded_classifier.safetensors). Everything measured afterwards uses only the independent judge
(embedded_judge.safetensors: another architecture, trained on another world seed), which guidance never sees:

* success_rate: fraction of videos whose judge argmax equals every target value;
* frechet: Frechet distance between Gaussians fitted to the judge's penultimate features (the 96-d input of
  its heads, read with a forward pre-hook, since the judge class has no features method) of the generated
  clips and of >= 1024 real clips rendered by embedded.world (world seed REAL_WORLD_SEED, never used in
  training); lower = closer to the data distribution;
* consistency: mean cosine similarity between consecutive frames' judge feature maps (output of the judge's
  second stage, (C, 16, 16) per frame, flattened; read with a forward hook); real clips give the reference
  value in settings; frame_diff: mean absolute pixel difference of consecutive frames (pixels in [0, 1]);
* peak_gb: torch.cuda.max_memory_allocated during the method's sampling (model weights included; None on
  CPU); seconds: wall time to sample all of the method's videos.

Sampling: DDIM (eta 0) on the SD1.5 schedule, `steps` timesteps evenly spaced (DiscreteSchedule.spaced_sigmas).
TITAN is run as in scripts/demo.py (look-ahead 1, Adam, guidance on the first 75 % of the steps), but like
every method its strength is picked from a small grid (TUNE_GRID) on a separate seed and TUNE_VIDEOS
videos by judge success rate (ties broken by the judge's mean probability of the target), as
benchmarks/toy_moons.py's `tune` does. MPGD runs without the AE projection: the codec is exact, so
encode(decode(x0)) = x0 and the projection would be the identity.

    python -m benchmarks.fidelity --device cuda          # writes benchmarks/results/fidelity.{json,_grid.png}
    python -m benchmarks.fidelity --smoke                # CPU, 8 videos, 4 steps, a subset of methods
"""
from __future__ import annotations

import argparse
import dataclasses
import gc as python_gc
import json
import math
import pathlib
import time
import traceback
import warnings

import torch

import guidance_core as gc
from embedded import codec, world
from embedded.classifier import load_classifier
from embedded.unet import alphas_cumprod, load_embedded_unet
from objectives.attribute_classifier import (AttributeClassifierLoss, default_classifier_path,
                                             load_attribute_classifier, parse_attribute_targets)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
MODELS = pathlib.Path(__file__).resolve().parents[1] / "models" / "titan_guide"
REAL_WORLD_SEED = 11  # training used world seeds 0-3; this one is held out
TITAN = dict(lookahead=1, strength=0.1, optimizer="adam", start=0.0, end=0.75)  # as scripts/demo.py
ORTHOGONAL_K = 4
DOODL_ITERATIONS = 4
TUNE_VIDEOS = 64
TUNE_GRID = {  # method: (field(s), values)
    "titan": ("strength", (0.003, 0.01, 0.03, 0.1)),
    "exact": ("strength", (0.01, 0.03, 0.1, 0.3)),
    "freedom": ("rho", (0.1, 1.0, 10.0, 100.0)),
    "mpgd": ("scale", (0.1, 1.0, 10.0, 100.0)),
    "tfg": (("rho", "mu"), (0.1, 1.0, 10.0, 100.0)),
    "doodl": ("lr", (0.1, 0.5, 2.0)),
}
ALL_METHODS = ("unguided", "titan_random", "titan_score", "titan_sampled_gradient", f"titan_orthogonal_k{ORTHOGONAL_K}",
               "freedom", "mpgd", "tfg", "doodl", "exact")
SMOKE_METHODS = ("unguided", "titan_random", "freedom", "doodl")
GRID_METHODS = ("unguided", "titan_sampled_gradient", "titan_random", "freedom", "exact", "doodl")


def method_table(names=ALL_METHODS) -> dict:
    """Fresh method objects by name (None = unguided); baselines at their defaults until tuned."""
    table = {
        "unguided": lambda: None,
        "titan_random": lambda: gc.Titan(guess=gc.RandomGuess(), **TITAN),
        "titan_score": lambda: gc.Titan(guess=gc.ScoreGuess(), **TITAN),
        "titan_sampled_gradient": lambda: gc.Titan(guess=gc.SampledGradientGuess(frames=None), **TITAN),
        f"titan_orthogonal_k{ORTHOGONAL_K}": lambda: gc.Titan(guess=gc.OrthogonalGuess(k=ORTHOGONAL_K), **TITAN),
        "exact": lambda: gc.baselines.ExactGradient(**TITAN),
        "freedom": lambda: gc.baselines.FreeDoM(end=TITAN["end"]),
        "mpgd": lambda: gc.baselines.MPGD(end=TITAN["end"]),
        "tfg": lambda: gc.baselines.TFG(end=TITAN["end"]),
        "doodl": lambda: gc.baselines.DOODL(iterations=DOODL_ITERATIONS),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(table)}")
    return {name: table[name]() for name in names}


def with_strength(method, names, value):
    """A copy of `method` with the strength field(s) `names` set to `value`."""
    names = (names,) if isinstance(names, str) else names
    return dataclasses.replace(method, **{n: value for n in names})


@dataclasses.dataclass
class Models:
    """The embedded UNet as a denoiser, the guiding classifier and the independent judge, on one device."""

    unet: torch.nn.Module
    guide: torch.nn.Module
    judge: torch.nn.Module
    device: torch.device

    @property
    def denoise(self):
        """k-diffusion denoiser around the eps UNet."""
        return gc.EpsDenoiser(self.unet, alphas_cumprod(torch.float64).to(self.device))


def load_models(device: str | torch.device) -> Models:
    """Load the committed UNet, guiding classifier and judge (safetensors) onto `device`."""
    device = torch.device(device)
    unet = load_embedded_unet(MODELS / "embedded_unet.safetensors").to(device).eval().requires_grad_(False)
    guide = load_attribute_classifier(default_classifier_path(), device=device)
    judge = load_classifier(MODELS / "embedded_judge.safetensors", device=device).requires_grad_(False)
    return Models(unet, guide, judge, device)


# ---------------------------------------------------------------------------------------------------------
# Judge read-outs
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def judge_readout(judge: torch.nn.Module, videos: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """Judge logits per attribute, penultimate features (B, 96) and frame consistency (B,) for videos in [0, 1].

    Features are the input of the judge's heads (forward pre-hook); consistency is the mean cosine similarity
    of consecutive frames' maps after the judge's second stage (forward hook), both without editing the judge.
    """
    if videos.ndim != 5 or tuple(videos.shape[1:]) != (world.NUM_FRAMES, 3, world.IMAGE_SIZE, world.IMAGE_SIZE):
        raise ValueError(f"videos must be (B, {world.NUM_FRAMES}, 3, {world.IMAGE_SIZE}, {world.IMAGE_SIZE}), "
                         f"got {tuple(videos.shape)}")
    captured = {}
    first_head = next(iter(judge.heads.values()))
    hooks = [first_head.register_forward_pre_hook(lambda m, args: captured.__setitem__("features", args[0])),
             judge.stages[1].register_forward_hook(lambda m, args, out: captured.__setitem__("maps", out))]
    device = next(judge.parameters()).device
    out = {"features": [], "consistency": [], "logits": {}}
    try:
        for start in range(0, videos.shape[0], batch):
            chunk = videos[start:start + batch].to(device, torch.float32)
            logits = judge(chunk)
            for name, value in logits.items():
                out["logits"].setdefault(name, []).append(value.float().cpu())
            out["features"].append(captured["features"].float().cpu())
            maps = captured["maps"].float()  # (b, C, T, H, W)
            per_frame = maps.permute(0, 2, 1, 3, 4).flatten(2)  # (b, T, C*H*W)
            cos = torch.nn.functional.cosine_similarity(per_frame[:, 1:], per_frame[:, :-1], dim=2)
            out["consistency"].append(cos.mean(1).cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return {"features": torch.cat(out["features"]).double(), "consistency": torch.cat(out["consistency"]),
            "logits": {name: torch.cat(v) for name, v in out["logits"].items()}}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, d) and b (m, d), in float64.

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), eigen-decompositions only.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"need two feature sets (n >= 2, d) of the same width, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))  # 1-D features give 0-d
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return float(value.clamp_min(0))


def frame_difference(videos: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel difference of consecutive frames, per video (B,)."""
    return (videos[:, 1:] - videos[:, :-1]).abs().flatten(1).mean(1)


def real_clips(count: int, seed: int = REAL_WORLD_SEED, start: int = 0) -> torch.Tensor:
    """`count` clips (count, 16, 3, 32, 32) of the procedural world, on the CPU."""
    return world.make_batch(seed, start, count).video


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------
def initial_noise(videos: int, seed: int) -> torch.Tensor:
    """Unit Gaussian latents (videos * 16, 12, 16, 16), drawn once on the CPU so every method shares them."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((videos * world.NUM_FRAMES,) + codec.LATENT_SHAPE, generator=gen)


def guidance_loss(models: Models, targets: dict, samples: int) -> gc.DecodedLoss:
    """loss(x0) = -log p_guide(targets | decode(x0)) per video, for `samples` videos stacked frame-major."""
    objective = AttributeClassifierLoss(models.guide, targets)
    layout = gc.Layout(samples=samples, frame_dim=0)

    def score(pixels, frame_indices=None):
        # AttributeClassifierLoss's cross-entropy without its [0, 1] range guard: x0 estimates of early steps
        # (DOODL's EDICT chain most of all) overshoot its tolerance, and the guard would abort a whole batch
        logits = objective.classifier(pixels)
        loss = pixels.new_zeros(pixels.shape[0])
        for name, index in objective.targets.items():
            loss = loss - torch.log_softmax(logits[name], dim=1)[:, index]
        return loss

    return gc.DecodedLoss(lambda z: codec.decode(z), score, layout)


def sync(device: torch.device) -> None:
    """Wait for the device (timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(models: Models, method, noise: torch.Tensor, targets: dict, steps: int, batch: int,
             seed: int) -> dict:
    """Sample the videos of `noise` with `method` in batches of `batch` videos; videos in [0, 1] on the CPU."""
    device = models.device
    sigmas = gc.DiscreteSchedule(alphas_cumprod(torch.float64)).spaced_sigmas(steps).to(device, torch.float32)
    videos_total = noise.shape[0] // world.NUM_FRAMES
    denoise = models.denoise
    outputs = []
    python_gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for index, first in enumerate(range(0, videos_total, batch)):
        count = min(batch, videos_total - first)
        x = noise[first * world.NUM_FRAMES:(first + count) * world.NUM_FRAMES].to(device) * sigmas[0]
        layout = gc.Layout(samples=count, frame_dim=0)
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + index + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = gc.sample(denoise, x, sigmas, method=method, step="euler",
                               loss=guidance_loss(models, targets, count), layout=layout, generator=generator)
        outputs.append(codec.decode(result.x.detach()).clamp(0, 1).float().cpu())
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"videos": torch.cat(outputs), "seconds": seconds, "peak_gb": peak}


def success(logits: dict[str, torch.Tensor], targets: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-video success: argmax equals every target, per-video product of target probabilities)."""
    indices = parse_attribute_targets(targets)
    hit = torch.ones(next(iter(logits.values())).shape[0], dtype=torch.bool)
    prob = torch.ones(hit.shape[0], dtype=torch.float64)
    for name, index in indices.items():
        hit &= logits[name].argmax(1) == index
        prob *= logits[name].double().softmax(1)[:, index]
    return hit, prob


def evaluate_methods(models: Models, table: dict, videos: int, steps: int, seed: int, batch: int, targets: dict,
                     real_features: torch.Tensor | None, batch_overrides: dict | None = None,
                     videos_overrides: dict | None = None, keep_videos: int = 0) -> list[dict]:
    """Sample every method of `table` from the same noise and measure it; one row per method.

    `real_features` (judge features of real clips) enables the Frechet distance; `videos_overrides` runs a
    method on the first n videos only (n recorded); `keep_videos` keeps that many videos per row for figures.
    """
    noise = initial_noise(videos, seed)
    rows = []
    for name, method in table.items():
        n = min(videos, (videos_overrides or {}).get(name, videos))
        row = {"method": name, "n": n}
        try:
            out = generate(models, method, noise[:n * world.NUM_FRAMES], targets, steps,
                           (batch_overrides or {}).get(name, batch), seed)
        except Exception as error:  # a method that breaks is a result, the run goes on
            traceback.print_exc()
            row.update(status=f"error: {type(error).__name__}: {error}"[:300], success_rate=0.0)
            rows.append(row)
            continue
        readout = judge_readout(models.judge, out["videos"])
        hit, prob = success(readout["logits"], targets)
        guide_logits = judge_like_logits(models.guide, out["videos"])
        guide_hit, _ = success(guide_logits, targets)
        finite = torch.isfinite(readout["features"]).all(1)
        row.update(
            status="ok",
            success_rate=float(hit.double().mean()),
            target_probability=float(prob.mean()),
            guide_success_rate=float(guide_hit.double().mean()),
            frechet=(frechet_distance(readout["features"][finite], real_features)
                     if real_features is not None and int(finite.sum()) >= 2 else None),
            consistency=float(readout["consistency"].mean()),
            frame_diff=float(frame_difference(out["videos"]).mean()),
            peak_gb=out["peak_gb"], seconds=out["seconds"], seconds_per_video=out["seconds"] / n)
        if keep_videos:
            row["videos"] = out["videos"][:keep_videos]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "videos"}), flush=True)
    return rows


@torch.no_grad()
def judge_like_logits(classifier: torch.nn.Module, videos: torch.Tensor, batch: int = 256) -> dict:
    """Logits of any embedded classifier over videos, batched (CPU outputs)."""
    device = next(classifier.parameters()).device
    parts: dict = {}
    for start in range(0, videos.shape[0], batch):
        for name, value in classifier(videos[start:start + batch].to(device)).items():
            parts.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(v) for name, v in parts.items()}


def tune(models: Models, table: dict, steps: int, seed: int, batch: int, targets: dict, videos: int,
         grid_values: int | None = None) -> dict:
    """Pick each method's strength from TUNE_GRID by judge success on a separate seed (ties: target prob).

    `grid_values` (smoke runs) keeps only the grid's ends.
    """
    chosen = {}
    for name, method in table.items():
        key = name.split("_")[0]
        if method is None or key not in TUNE_GRID:
            continue
        field, grid = TUNE_GRID[key]
        grid = grid if grid_values is None else grid[:: max(1, len(grid) - 1)][:grid_values]
        scores = {}
        for value in grid:
            trial = {name: with_strength(method, field, value)}
            row = evaluate_methods(models, trial, videos, steps, seed, batch, targets, None)[0]
            ok = row["status"] == "ok" and math.isfinite(row.get("target_probability", float("nan")))
            scores[value] = (row["success_rate"], row["target_probability"]) if ok else (-1.0, -1.0)
        best = max(scores, key=scores.get)
        chosen[name] = {"field": field, "value": best, "grid": {str(v): s[0] for v, s in scores.items()}}
        print(f"tuned {name}: {field}={best}  (judge success per value: {chosen[name]['grid']})", flush=True)
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------
def save_grid(rows: list[dict], path: pathlib.Path, frames=(0, 5, 10, 15), videos: int = 4) -> None:
    """PNG: one row per method (same seeds), `videos` videos x `frames` frames each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [r for r in rows if "videos" in r]
    order = {name: i for i, name in enumerate(GRID_METHODS)}
    shown.sort(key=lambda r: order.get(r["method"], len(order)))
    count = min(videos, min(r["videos"].shape[0] for r in shown))
    pad = 2
    fig, axes = plt.subplots(len(shown), 1, figsize=(1.0 * count * len(frames), 1.25 * len(shown) + 0.3))
    axes = [axes] if len(shown) == 1 else list(axes)
    for ax, row in zip(axes, shown):
        strip = []
        for v in range(count):
            clip = row["videos"][v, list(frames)]  # (f, 3, H, W)
            strip.append(torch.cat([torch.cat([f, torch.ones(3, f.shape[1], 1)], 2) for f in clip], 2))
            strip.append(torch.ones(3, clip.shape[2], pad * 3))
        image = torch.cat(strip[:-1], 2).permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{row['method']}  (judge success {row['success_rate']:.2f})", fontsize=9, loc="left")
    fig.suptitle(f"same initial noise per column group; {count} videos x frames {list(frames)}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(rows: list[dict], real: dict) -> None:
    """Fixed-width table of the rows."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    print(f"\n{'method':26s} {'n':>4s} {'success':>8s} {'p(target)':>9s} {'guide ok':>8s} {'frechet':>9s} "
          f"{'consist.':>8s} {'frame diff':>10s} {'peak GB':>8s} {'seconds':>8s}  status")
    for r in rows:
        print(f"{r['method']:26s} {r['n']:4d} {fmt(r.get('success_rate'), '8.3f')} "
              f"{fmt(r.get('target_probability'), '9.3f')} {fmt(r.get('guide_success_rate'), '8.3f')} "
              f"{fmt(r.get('frechet'), '9.2f')} {fmt(r.get('consistency'), '8.4f')} "
              f"{fmt(r.get('frame_diff'), '10.4f')} {fmt(r.get('peak_gb'), '8.2f')} {fmt(r.get('seconds'), '8.1f')}"
              f"  {r['status']}")
    print(f"{'real clips':26s} {real['n']:4d} {fmt(real.get('success_rate'), '8.3f')} {'':9s} {'':8s} "
          f"{fmt(real['frechet_real_vs_real'], '9.2f')} {real['consistency']:8.4f} {real['frame_diff']:10.4f}"
          "  (frechet: second real set vs reference)")


def main(argv=None) -> None:
    """Tune the baselines, sample every method, print the table, write the JSON and the grid PNG."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=128, help="videos per sampling batch")
    parser.add_argument("--real", type=int, default=1024, help="real clips for the Frechet reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="colour=red", help="e.g. 'colour=red' or 'direction=left'")
    parser.add_argument("--methods", nargs="*", default=list(ALL_METHODS))
    parser.add_argument("--doodl-videos", type=int, default=64, help="DOODL is slow: videos it samples")
    parser.add_argument("--tune-videos", type=int, default=TUNE_VIDEOS)
    parser.add_argument("--no-tune", action="store_true", help="use the baselines' default strengths")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "fidelity.json")
    parser.add_argument("--grid", type=pathlib.Path, default=RESULTS / "fidelity_grid.png")
    parser.add_argument("--smoke", action="store_true", help="CPU, 8 videos, 4 steps, a subset of methods")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.videos, args.steps, args.batch, args.real = "cpu", 8, 4, 8, 64
        args.methods, args.tune_videos, args.doodl_videos = list(SMOKE_METHODS), 4, 8
        if args.out == RESULTS / "fidelity.json":
            args.out = pathlib.Path("/tmp/fidelity_smoke.json")
        if args.grid == RESULTS / "fidelity_grid.png":
            args.grid = pathlib.Path("/tmp/fidelity_smoke_grid.png")
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    targets = parse_attribute_targets(args.target)
    targets = {name: world.ATTRIBUTES[name][index] for name, index in targets.items()}
    t0 = time.perf_counter()
    models = load_models(args.device)

    reference = judge_readout(models.judge, real_clips(args.real))
    second = judge_readout(models.judge, real_clips(args.real, start=args.real))
    real_videos = real_clips(min(args.real, 256))
    real_hit, _ = success(judge_readout(models.judge, real_videos)["logits"], targets)
    real = {"n": args.real, "world_seed": REAL_WORLD_SEED,
            "frechet_real_vs_real": frechet_distance(second["features"], reference["features"]),
            "consistency": float(reference["consistency"].mean()),
            "frame_diff": float(frame_difference(real_videos).mean()),
            "success_rate": float(real_hit.double().mean())}

    table = method_table(args.methods)
    tune_seconds = time.perf_counter()
    chosen = {} if args.no_tune else tune(models, table, args.steps, args.seed + 100, args.batch, targets,
                                          args.tune_videos, 2 if args.smoke else None)
    tune_seconds = time.perf_counter() - tune_seconds
    table = {name: m if name not in chosen else with_strength(m, chosen[name]["field"], chosen[name]["value"])
             for name, m in table.items()}
    rows = evaluate_methods(models, table, args.videos, args.steps, args.seed, args.batch, targets,
                            reference["features"], videos_overrides={"doodl": args.doodl_videos}, keep_videos=4)
    for row in rows:
        row["strength"] = chosen.get(row["method"])
    print_table(rows, real)

    device_name = torch.cuda.get_device_name(models.device) if models.device.type == "cuda" else "cpu"
    settings = {
        "target": targets, "videos": args.videos, "steps": args.steps, "seed": args.seed,
        "tune_seed": args.seed + 100, "tune_videos": args.tune_videos, "tune_grid": {
            k: {"field": f, "values": list(v)} for k, (f, v) in TUNE_GRID.items()},
        "tune_criterion": "judge success rate, ties by mean judge probability of the target",
        "tune_seconds": tune_seconds, "batch_videos": args.batch, "titan": TITAN, "orthogonal_k": ORTHOGONAL_K,
        "doodl_iterations": DOODL_ITERATIONS, "doodl_videos": args.doodl_videos,
        "sampler": "DDIM (euler, eta 0), SD1.5 schedule, timesteps evenly spaced (DiscreteSchedule.spaced_sigmas)",
        "real": real, "frechet": "Frechet distance of judge penultimate features (96-d) vs the real clips",
        "consistency": "mean cosine similarity of consecutive frames' judge stage-2 feature maps",
        "frame_diff": "mean |frame[t+1] - frame[t]| of pixels in [0, 1]",
        "success": "judge argmax equals every target value", "peak_gb": "torch.cuda.max_memory_allocated, "
        "weights included", "torch": torch.__version__, "total_seconds": time.perf_counter() - t0,
        "command": "python -m benchmarks.fidelity " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "smoke": args.smoke,
    }
    clean = [{k: v for k, v in r.items() if k != "videos"} for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device_name, "rows": clean, "settings": settings}, indent=2) + "\n")
    save_grid([r for r in rows if r["method"] in GRID_METHODS], args.grid)
    print(f"wrote {args.out} and {args.grid} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
