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
every method its strength is picked from a log-spaced grid (TUNE_GRID) on a separate seed and TUNE_VIDEOS
videos by judge success rate (ties broken by the judge's mean probability of the target), as
benchmarks/toy_moons.py's `tune` does. The grids reach past the strengths where samples break (TITAN: Adam's
per-element step of 1.0 on the normalised latent already destroys the clips), so a chosen value should be
interior; when it sits at either end of its grid, the row's "strength" says so ("at_grid_edge": "top" or
"bottom") and the printed table marks it, because the best value may then lie outside the grid. MPGD runs
without the AE projection: the codec is exact, so encode(decode(x0)) = x0 and the projection would be the
identity.

Targets: every target (default colour=red and direction=left) gets its own tuning and its own rows; each row
carries "target". Steps: DOODL runs with its own step count (`--doodl-steps`, default 30; each row records its
"steps"), because its EDICT chains drift apart when sigma_next / sigma is far below 1 (at 12 steps every
DOODL sample was noise: judge success 0, Frechet 113), while the other methods are local to each step and run
at `--steps` (12). Sampling everything at 30 steps instead would multiply the run's time by 2.5 and give up
the comparison with the earlier 12-step results; an extra "unguided_<n>_steps" row samples the same noise
unguided at DOODL's step count, its reference for Frechet distance and consistency.

    python -m benchmarks.fidelity --device cuda          # both targets: results/fidelity.json, fidelity_grid_*.png
    python -m benchmarks.fidelity --device cuda --targets colour=red          # one target ...
    python -m benchmarks.fidelity --device cuda --targets direction=left --append   # ... merged into the same JSON
    python -m benchmarks.fidelity --smoke                # CPU, tiny: a subset of methods, both targets

JSON: {"device", "rows": [{"method", "target", "n", "steps", "success_rate", "target_probability",
"guide_success_rate", "frechet", "consistency", "frame_diff", "peak_gb", "seconds", "seconds_per_video",
"status", "strength": {"field", "value", "grid", "grid_target_probability", "at_grid_edge"} or null}],
"settings": {..., "targets": {target: {"real": ..., "tune_seconds", "seconds", "command"}}}}.
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
DOODL_STEPS = 30  # EDICT needs small steps (guidance_core/baselines/doodl.py)
TUNE_VIDEOS = 64
DEFAULT_TARGETS = ("colour=red", "direction=left")
# method: (field(s), values), log-spaced. The first H100 run picked the top of the old grids for TITAN random,
# score and K = 4 orthogonal (0.1), FreeDoM (rho 100) and MPGD (scale 100); these grids go past the point
# where samples break (TITAN random: frame difference 0.48 against 0.02 unguided at strength 1.0 in a 6-step
# CPU run; 0.09 at 0.3).
TUNE_GRID = {
    "titan": ("strength", (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
    "exact": ("strength", (0.01, 0.03, 0.1, 0.3)),
    "freedom": ("rho", (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)),
    "mpgd": ("scale", (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)),
    "tfg": (("rho", "mu"), (0.1, 1.0, 10.0, 100.0)),
    # DOODL clips each element of lr * gradient to 1e-3, so large rates saturate rather than break
    "doodl": ("lr", (0.1, 0.5, 2.0)),
}
ALL_METHODS = ("unguided", "titan_random", "titan_score", "titan_sampled_gradient", "titan_mixed",
               f"titan_orthogonal_k{ORTHOGONAL_K}", "freedom", "mpgd", "tfg", "doodl", "exact")
SMOKE_METHODS = ("unguided", "titan_random", "freedom", "doodl")
SMOKE_SETTINGS = {"videos": 4, "steps": 4, "batch": 4, "real": 48, "methods": list(SMOKE_METHODS), "tune_videos": 2,
                  "doodl_videos": 2, "doodl_steps": 5, "doodl_iterations": 1,
                  "out": pathlib.Path("/tmp/fidelity_smoke.json"),
                  "grid": pathlib.Path("/tmp/fidelity_smoke_grid_{target}.png")}
GRID_METHODS = ("unguided", "titan_sampled_gradient", "titan_random", "freedom", "exact", "doodl")  # + DOODL's unguided
# settings that must agree before --append merges a run into an earlier JSON
MERGE_KEYS = ("videos", "steps", "doodl_steps", "seed", "tune_seed", "tune_videos", "tune_grid", "batch_videos",
              "titan", "orthogonal_k", "doodl_iterations", "doodl_videos", "real_clips", "smoke")


def method_table(names=ALL_METHODS, doodl_iterations: int = DOODL_ITERATIONS) -> dict:
    """Fresh method objects by name (None = unguided); baselines at their defaults until tuned."""
    table = {
        "unguided": lambda: None,
        "titan_random": lambda: gc.Titan(guess=gc.RandomGuess(), **TITAN),
        "titan_score": lambda: gc.Titan(guess=gc.ScoreGuess(), **TITAN),
        "titan_sampled_gradient": lambda: gc.Titan(guess=gc.SampledGradientGuess(frames=None), **TITAN),
        # the classifier needs all 16 frames, so the sampled-gradient part backpropagates through every frame
        "titan_mixed": lambda: gc.Titan(guess=gc.MixedGuess(gc.SampledGradientGuess(frames=None)), **TITAN),
        f"titan_orthogonal_k{ORTHOGONAL_K}": lambda: gc.Titan(guess=gc.OrthogonalGuess(k=ORTHOGONAL_K), **TITAN),
        "exact": lambda: gc.baselines.ExactGradient(**TITAN),
        "freedom": lambda: gc.baselines.FreeDoM(end=TITAN["end"]),
        "mpgd": lambda: gc.baselines.MPGD(end=TITAN["end"]),
        "tfg": lambda: gc.baselines.TFG(end=TITAN["end"]),
        "doodl": lambda: gc.baselines.DOODL(iterations=doodl_iterations),
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


def target_text(targets: dict) -> str:
    """{"colour": "red"} -> "colour=red" (several targets joined by ", ")."""
    return ", ".join(f"{name}={value}" for name, value in targets.items())


def parse_target(text: str) -> dict:
    """"colour=red" (or "colour=red, direction=left" for a joint target) -> {"colour": "red", ...}."""
    indices = parse_attribute_targets(text)
    return {name: world.ATTRIBUTES[name][index] for name, index in indices.items()}


def evaluate_methods(models: Models, table: dict, videos: int, steps: int, seed: int, batch: int, targets: dict,
                     real_features: torch.Tensor | None, batch_overrides: dict | None = None,
                     videos_overrides: dict | None = None, keep_videos: int = 0,
                     steps_overrides: dict | None = None) -> list[dict]:
    """Sample every method of `table` from the same noise and measure it; one row per method.

    `real_features` (judge features of real clips) enables the Frechet distance; `videos_overrides` runs a
    method on the first n videos only (n recorded); `steps_overrides` gives a method its own step count
    (recorded); `keep_videos` keeps that many videos per row for figures.
    """
    noise = initial_noise(videos, seed)
    rows = []
    for name, method in table.items():
        n = min(videos, (videos_overrides or {}).get(name, videos))
        method_steps = (steps_overrides or {}).get(name, steps)
        row = {"method": name, "target": target_text(targets), "n": n, "steps": method_steps}
        try:
            out = generate(models, method, noise[:n * world.NUM_FRAMES], targets, method_steps,
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


def grid_edge(grid, value) -> str | None:
    """"bottom" or "top" when `value` is the smallest or largest of `grid` (then the best may lie outside it)."""
    if value not in grid:
        raise ValueError(f"{value!r} is not one of the grid's values {list(grid)}")
    if len(grid) < 2:
        return "only value"
    if value == min(grid):
        return "bottom"
    if value == max(grid):
        return "top"
    return None


def tune(models: Models, table: dict, steps: int, seed: int, batch: int, targets: dict, videos: int,
         grid_values: int | None = None, steps_overrides: dict | None = None) -> dict:
    """Pick each method's strength from TUNE_GRID by judge success on a separate seed (ties: target prob).

    `grid_values` (smoke runs) keeps only the grid's ends. The result records the whole grid's scores and
    whether the chosen value sits at an edge of its grid.
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
            row = evaluate_methods(models, trial, videos, steps, seed, batch, targets, None,
                                   steps_overrides=steps_overrides)[0]
            ok = row["status"] == "ok" and math.isfinite(row.get("target_probability", float("nan")))
            scores[value] = (row["success_rate"], row["target_probability"]) if ok else (-1.0, -1.0)
        best = max(scores, key=scores.get)
        chosen[name] = {"field": field, "value": best, "grid": {str(v): s[0] for v, s in scores.items()},
                        "grid_target_probability": {str(v): s[1] for v, s in scores.items()},
                        "at_grid_edge": grid_edge(grid, best)}
        edge = f"  AT THE {chosen[name]['at_grid_edge'].upper()} OF THE GRID" if chosen[name]["at_grid_edge"] else ""
        print(f"tuned {name} ({target_text(targets)}): {field}={best}{edge}  "
              f"(judge success per value: {chosen[name]['grid']})", flush=True)
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
    if not shown:
        return
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
        ax.set_title(f"{row['method']}, {row['steps']} steps, {strength_text(row.get('strength'))}  "
                     f"(judge success {row['success_rate']:.2f})", fontsize=9, loc="left")
    fig.suptitle(f"target {shown[0]['target']}; same initial noise per column group; {count} videos x frames "
                 f"{list(frames)}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def strength_text(strength: dict | None) -> str:
    """"strength=0.1" with "(top edge)" / "(bottom edge)" when the chosen value is at an end of its grid."""
    if not strength:
        return "-"
    field = strength["field"] if isinstance(strength["field"], str) else "/".join(strength["field"])
    edge = f" ({strength['at_grid_edge']} edge)" if strength.get("at_grid_edge") else ""
    return f"{field}={strength['value']:g}{edge}"


def print_table(rows: list[dict], real: dict) -> None:
    """Fixed-width table of the rows, one block per target; `real` maps target -> real-clip statistics."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    print(f"\n{'target':16s} {'method':26s} {'n':>4s} {'steps':>5s} {'success':>8s} {'p(target)':>9s} {'guide ok':>8s} "
          f"{'frechet':>9s} {'consist.':>8s} {'frame diff':>10s} {'peak GB':>8s} {'seconds':>8s}  "
          f"{'strength (tuned)':26s} status")
    for target in dict.fromkeys(r["target"] for r in rows):
        for r in (r for r in rows if r["target"] == target):
            print(f"{target:16s} {r['method']:26s} {r['n']:4d} {r['steps']:5d} {fmt(r.get('success_rate'), '8.3f')} "
                  f"{fmt(r.get('target_probability'), '9.3f')} {fmt(r.get('guide_success_rate'), '8.3f')} "
                  f"{fmt(r.get('frechet'), '9.2f')} {fmt(r.get('consistency'), '8.4f')} "
                  f"{fmt(r.get('frame_diff'), '10.4f')} {fmt(r.get('peak_gb'), '8.2f')} {fmt(r.get('seconds'), '8.1f')}"
                  f"  {strength_text(r.get('strength')):26s} {r['status']}")
        stats = real[target]
        print(f"{target:16s} {'real clips':26s} {stats['n']:4d} {'':5s} {fmt(stats.get('success_rate'), '8.3f')} "
              f"{'':9s} {'':8s} {fmt(stats['frechet_real_vs_real'], '9.2f')} {stats['consistency']:8.4f} "
              f"{stats['frame_diff']:10.4f}  (frechet: second real set vs reference)")
    edges = [f"{r['target']} {r['method']}" for r in rows if (r.get("strength") or {}).get("at_grid_edge")]
    if edges:
        print("chosen strength at an edge of its grid (the best value may lie outside it): " + "; ".join(edges))


def grid_path(template: pathlib.Path, target: str, several: bool) -> pathlib.Path:
    """The figure path for `target`: "{target}" in the template becomes e.g. "colour-red"."""
    slug = target.replace(", ", "+").replace("=", "-")
    text = str(template)
    if "{target}" in text:
        return pathlib.Path(text.replace("{target}", slug))
    return template.with_name(f"{template.stem}_{slug}{template.suffix}") if several else template


def merge_results(previous: dict, new: dict) -> dict:
    """`new` merged into an earlier result: its targets' rows replace theirs; settings must agree (ValueError)."""
    # compare as stored: JSON turns tuples into lists
    old_settings, new_settings = previous.get("settings", {}), json.loads(json.dumps(new["settings"]))
    clashes = [key for key in MERGE_KEYS if old_settings.get(key) != new_settings.get(key)]
    if previous.get("device") != new["device"]:
        clashes.append("device")
    if clashes:
        raise ValueError(f"cannot --append to a result with other settings ({', '.join(clashes)}): "
                         + "; ".join(f"{k}: {old_settings.get(k, previous.get(k))!r} vs "
                                     f"{new_settings.get(k, new.get(k))!r}" for k in clashes)
                         + "; write to another --out or run without --append")
    replaced = set(new_settings["targets"])
    rows = [r for r in previous["rows"] if r.get("target") not in replaced] + new["rows"]
    settings = dict(new_settings, targets={**old_settings.get("targets", {}), **new_settings["targets"]})
    return {"device": new["device"], "rows": rows, "settings": settings}


def run_target(models: Models, args, targets: dict) -> tuple[list[dict], dict, list[dict]]:
    """Tune and sample every method for one target: (rows for the JSON, per-target settings, rows with videos)."""
    started = time.perf_counter()
    real_videos = real_clips(min(args.real, 256))
    real_hit, _ = success(judge_readout(models.judge, real_videos)["logits"], targets)
    table = method_table(args.methods, args.doodl_iterations)
    steps_overrides = {"doodl": args.doodl_steps}
    tune_started = time.perf_counter()
    chosen = {} if args.no_tune else tune(models, table, args.steps, args.seed + 100, args.batch, targets,
                                          args.tune_videos, 2 if args.smoke else None, steps_overrides)
    tune_seconds = time.perf_counter() - tune_started
    table = {name: m if name not in chosen else with_strength(m, chosen[name]["field"], chosen[name]["value"])
             for name, m in table.items()}
    reference_name = f"unguided_{args.doodl_steps}_steps"
    if "doodl" in table and args.doodl_steps != args.steps:
        table[reference_name] = None  # the unguided reference at DOODL's step count, on DOODL's videos
        steps_overrides[reference_name] = args.doodl_steps
    rows = evaluate_methods(models, table, args.videos, args.steps, args.seed, args.batch, targets,
                            args.reference_features, videos_overrides={"doodl": args.doodl_videos,
                                                                       reference_name: args.doodl_videos},
                            keep_videos=4, steps_overrides=steps_overrides)
    for row in rows:
        row["strength"] = chosen.get(row["method"])
    settings = {"real": dict(args.real_stats, success_rate=float(real_hit.double().mean())),
                "tune_seconds": tune_seconds, "seconds": time.perf_counter() - started}
    return [{k: v for k, v in r.items() if k != "videos"} for r in rows], settings, rows


def main(argv=None) -> None:
    """Tune every method per target, sample, print the table, write the JSON and one grid PNG per target."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="sampler steps of every method but DOODL")
    parser.add_argument("--doodl-steps", type=int, default=DOODL_STEPS,
                        help="DOODL's sampler steps (EDICT needs about 30+); an unguided row at this count is added")
    parser.add_argument("--batch", type=int, default=128, help="videos per sampling batch")
    parser.add_argument("--real", type=int, default=1024, help="real clips for the Frechet reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", "--target", nargs="+", default=list(DEFAULT_TARGETS),
                        help="one or more targets, each tuned and sampled on its own, e.g. colour=red "
                             "direction=left ('colour=red, direction=left' in quotes is one joint target)")
    parser.add_argument("--methods", nargs="*", default=list(ALL_METHODS))
    parser.add_argument("--doodl-videos", type=int, default=64, help="DOODL is slow: videos it samples")
    parser.add_argument("--doodl-iterations", type=int, default=DOODL_ITERATIONS,
                        help="DOODL's optimisation iterations (each one samples and walks back the whole chain)")
    parser.add_argument("--tune-videos", type=int, default=TUNE_VIDEOS)
    parser.add_argument("--no-tune", action="store_true", help="use the baselines' default strengths")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "fidelity.json")
    parser.add_argument("--grid", type=pathlib.Path, default=RESULTS / "fidelity_grid_{target}.png",
                        help="figure path; '{target}' becomes the target, e.g. colour-red")
    parser.add_argument("--append", action="store_true",
                        help="merge into an existing --out: this run's targets replace their rows, others stay")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU and, for options left at their defaults, SMOKE_SETTINGS: 4 videos, 4 steps (DOODL: "
                             "2 videos, 5 steps, 1 iteration), a subset of methods")
    args = parser.parse_args(argv)
    if args.smoke:  # tiny CPU settings for every option left at its default
        args.device = "cpu"
        for name, value in SMOKE_SETTINGS.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    for name, value in (("--videos", args.videos), ("--steps", args.steps), ("--doodl-steps", args.doodl_steps),
                        ("--batch", args.batch), ("--tune-videos", args.tune_videos),
                        ("--doodl-videos", args.doodl_videos), ("--doodl-iterations", args.doodl_iterations)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.real < 2:
        parser.error(f"--real must be >= 2 (a covariance needs two clips), got {args.real}")
    try:
        targets = [parse_target(text) for text in args.targets]
        method_table(args.methods)
    except ValueError as error:
        parser.error(str(error))
    if len({target_text(t) for t in targets}) != len(targets):
        parser.error(f"--targets names a target twice: {args.targets}")
    if args.append and not args.out.is_file():
        parser.error(f"--append: {args.out} does not exist yet; run once without --append")
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    models = load_models(args.device)

    reference = judge_readout(models.judge, real_clips(args.real))
    second = judge_readout(models.judge, real_clips(args.real, start=args.real))
    args.reference_features = reference["features"]
    args.real_stats = {"n": args.real, "world_seed": REAL_WORLD_SEED,
                       "frechet_real_vs_real": frechet_distance(second["features"], reference["features"]),
                       "consistency": float(reference["consistency"].mean()),
                       "frame_diff": float(frame_difference(real_clips(min(args.real, 256))).mean())}
    command = "python -m benchmarks.fidelity " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    rows, per_target, figures = [], {}, {}
    for targets_of_run in targets:
        name = target_text(targets_of_run)
        target_rows, target_settings, shown = run_target(models, args, targets_of_run)
        rows += target_rows
        per_target[name] = dict(target_settings, command=command)
        figures[name] = shown
    print_table(rows, {name: settings["real"] for name, settings in per_target.items()})

    device_name = torch.cuda.get_device_name(models.device) if models.device.type == "cuda" else "cpu"
    settings = {
        "videos": args.videos, "steps": args.steps, "doodl_steps": args.doodl_steps, "seed": args.seed,
        "tune_seed": args.seed + 100, "tune_videos": args.tune_videos, "tune_grid": {
            k: {"field": f, "values": list(v)} for k, (f, v) in TUNE_GRID.items()},
        "tune_criterion": "judge success rate, ties by mean judge probability of the target",
        "batch_videos": args.batch, "titan": TITAN, "orthogonal_k": ORTHOGONAL_K,
        "doodl_iterations": args.doodl_iterations, "doodl_videos": args.doodl_videos, "real_clips": args.real,
        "sampler": "DDIM (euler, eta 0), SD1.5 schedule, timesteps evenly spaced (DiscreteSchedule.spaced_sigmas)",
        "frechet": "Frechet distance of judge penultimate features (96-d) vs the real clips",
        "consistency": "mean cosine similarity of consecutive frames' judge stage-2 feature maps",
        "frame_diff": "mean |frame[t+1] - frame[t]| of pixels in [0, 1]",
        "success": "judge argmax equals every target value", "peak_gb": "torch.cuda.max_memory_allocated, "
        "weights included", "torch": torch.__version__, "total_seconds": time.perf_counter() - t0,
        "smoke": args.smoke, "targets": per_target,
    }
    result = {"device": device_name, "rows": rows, "settings": settings}
    if args.append:
        result = merge_results(json.loads(args.out.read_text()), result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    written = [args.out]
    for name, shown in figures.items():
        path = grid_path(args.grid, name, len(targets) > 1)
        save_grid([r for r in shown if r["method"] in GRID_METHODS + (f"unguided_{args.doodl_steps}_steps",)], path)
        written.append(path)
    print(f"wrote {', '.join(map(str, written))} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
