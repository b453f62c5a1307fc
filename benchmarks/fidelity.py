"""Fidelity of guided videos on the embedded tiny video model: success against realism, every method swept.

A guidance method is only worth having if the guided video still looks like a video, and a success rate alone
rewards breaking everything it does not measure. So every method is swept over >= 6 strengths, and every point
is read out both ways. Every point samples the same N videos from the same initial noise (drawn once, split into
batches); everything measured uses only the independent judge (embedded_judge.safetensors: another
architecture, trained on another world seed), which guidance never sees:

* success_rate: fraction of videos whose judge argmax equals every target value;
* frechet_target: Frechet distance between Gaussians fitted to the judge's penultimate features (96-d) of the
  generated clips and of the real clips that HAVE the target (held-out world seed 11): a successful, clean
  guidance lowers it; "frechet": the same against all real clips (any successful guidance must raise it);
* hf_ratio / frame_diff_ratio: high-frequency energy (mean |4p - four neighbours|) and frame difference
  (mean |frame[t+1] - frame[t]|) of the guided videos over the unguided videos' (embedded/realism.py): speckle
  and flicker, the damage a dense latent perturbation leaves;
* consistency: mean cosine similarity of consecutive frames' judge stage-2 feature maps;
* peak_gb: torch.cuda.max_memory_allocated while sampling (weights included; None on CPU); seconds: wall time.

One selection rule for every method: the best success among its points with hf_ratio <= 1.2 and
frame_diff_ratio <= 1.3 (ties: lower frechet_target); "selected": true marks it. The row with "default": true is
run with the sampler node's shipped defaults (guidance_core.Titan's field defaults, which the nodes read) and
the demo workflow's guess (sampled gradient on all 16 frames, which the embedded classifier needs).

Sampling: DDIM (eta 0) on the SD1.5 schedule, `--steps` timesteps evenly spaced. DOODL is not swept: its EDICT
chains need about 30 steps (guidance_core/baselines/doodl.py), 2.5x every other method's cost per point.

    python -m benchmarks.fidelity --device cuda --targets colour=red --methods paper
    python -m benchmarks.fidelity --device cuda --targets direction=left shape=triangle --methods core --append
    python -m benchmarks.fidelity --smoke                                                   # CPU, tiny

JSON: {"device", "rows": [{"method", "target", "strength", "success_rate", "frechet_target", "frechet", "hf_ratio",
"frame_diff_ratio", "consistency", "peak_gb", "seconds", "n", "default", "selected", "update", "steps",
"status", "target_probability", "hf", "frame_diff"}], "settings": {...}}; PNGs: the Pareto picture (success vs
frechet_target, one curve per method, one panel per target) and one picture grid per target.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc as python_gc
import json
import math
import pathlib
import sys
import time
import traceback
import warnings
from typing import Callable

import torch

import guidance_core as gc
from embedded import codec, world
from embedded.classifier import load_classifier
from embedded.realism import frame_difference, high_frequency_energy
from embedded.unet import alphas_cumprod, load_embedded_unet
from objectives.attribute_classifier import (AttributeClassifierLoss, default_classifier_path,
                                             load_attribute_classifier, parse_attribute_targets)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
MODELS = pathlib.Path(__file__).resolve().parents[1] / "models" / "titan_guide"
REAL_WORLD_SEED = 11  # training used world seeds 0-3; this one is held out
DEFAULT_TARGETS = ("colour=red", "direction=left", "shape=triangle")
HF_RATIO_LIMIT, FRAME_DIFF_RATIO_LIMIT = 1.2, 1.3  # the selection rule's realism bounds
ALL_FRAMES = dict(frames=None)  # the embedded classifier needs whole clips

# Strength sweeps (>= 6 points): for the normalised rules, the fraction of each video's latent norm moved per
# guided step (at most, for normalized_relative); Adam's learning rate on z otherwise.
DEFAULT_RULE_SWEEP = (0.02, 0.035, 0.05, 0.06, 0.07, 0.1, 0.15)
NORMALIZED_SWEEP = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1)
BACKWARD_FREE_SWEEP = (0.02, 0.035, 0.05, 0.07, 0.1, 0.2)  # guesses without a backward pass point less well
EXACT_SWEEP = (0.01, 0.02, 0.035, 0.05, 0.07, 0.1)
ADAM_SWEEP = (0.003, 0.01, 0.03, 0.05, 0.1, 0.3)
RULE = gc.Titan.optimizer  # TITAN and the exact gradient run the shipped update rule


def titan(guess: Callable[[], object], **knobs) -> Callable[[float], object]:
    """A builder of TITAN at a strength: the shipped defaults with `knobs` overridden."""
    return lambda strength: gc.Titan(guess=guess(), **{**knobs, "strength": strength})


def baseline(cls, field: str | tuple[str, ...], **knobs) -> Callable[[float], object]:
    """A builder of a baseline whose strength field(s) take the swept value; guidance window as TITAN's."""
    fields = (field,) if isinstance(field, str) else field
    return lambda value: cls(**{"start": gc.Titan.start, "end": gc.Titan.end, **knobs, **{f: value for f in fields}})


def sampled_gradient() -> object:
    """The demo workflow's guess: the loss gradient at the Tweedie estimate on all 16 frames."""
    return gc.SampledGradientGuess(**ALL_FRAMES)


# method: (builder(strength) -> method, sweep, update rule label)
SWEEPS: dict[str, tuple[Callable[[float], object], tuple[float, ...], str]] = {
    "titan_sampled_gradient": (titan(sampled_gradient), DEFAULT_RULE_SWEEP, RULE),
    "titan_mixed": (titan(lambda: gc.MixedGuess(sampled_gradient())), NORMALIZED_SWEEP, RULE),
    "titan_smooth_random": (titan(lambda: gc.SmoothRandomGuess(k=1, downscale=4, frame_correlation=0.5)),
                            BACKWARD_FREE_SWEEP, RULE),
    "exact": (lambda s: gc.baselines.ExactGradient(strength=s), EXACT_SWEEP, RULE),
    "freedom": (baseline(gc.baselines.FreeDoM, "rho", update="normalized", rho_schedule="constant"),
                (0.005, 0.01, 0.015, 0.02, 0.03, 0.05), "normalized"),
    "mpgd": (baseline(gc.baselines.MPGD, "scale", update="normalized"), (0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
             "normalized"),
    "tfg": (baseline(gc.baselines.TFG, ("rho", "mu"), update="normalized", rho_schedule="constant",
                     mu_schedule="constant", mc_samples=1), NORMALIZED_SWEEP, "normalized"),
    # the update rules side by side with the sampled-gradient guess, and the guesses without a backward pass
    "titan_sampled_gradient_normalized": (titan(sampled_gradient, optimizer="normalized"), NORMALIZED_SWEEP,
                                          "normalized"),
    "titan_sampled_gradient_adam_per_step": (titan(sampled_gradient, optimizer="adam_per_step"), ADAM_SWEEP,
                                             "adam_per_step"),
    "titan_sampled_gradient_adam": (titan(sampled_gradient, optimizer="adam"), ADAM_SWEEP, "adam"),
    "titan_momentum": (titan(lambda: gc.MomentumGuess(gc.SmoothRandomGuess(k=1, downscale=4, frame_correlation=0.5))),
                       BACKWARD_FREE_SWEEP, RULE),
    "titan_random": (titan(lambda: gc.RandomGuess()), BACKWARD_FREE_SWEEP, RULE),
    "titan_orthogonal_k4": (titan(lambda: gc.OrthogonalGuess(k=4)), BACKWARD_FREE_SWEEP, RULE),
    "titan_score": (titan(lambda: gc.ScoreGuess()), BACKWARD_FREE_SWEEP, RULE),
}
CORE_METHODS = ("titan_sampled_gradient", "titan_mixed", "titan_smooth_random", "exact", "freedom", "mpgd", "tfg")
PAPER_RUN_METHODS = CORE_METHODS + ("titan_sampled_gradient_normalized", "titan_sampled_gradient_adam_per_step",
                                    "titan_sampled_gradient_adam", "titan_momentum", "titan_random")
METHOD_GROUPS = {"core": CORE_METHODS, "paper": PAPER_RUN_METHODS, "all": tuple(SWEEPS)}
SMOKE_SETTINGS = {"videos": 3, "steps": 3, "batch": 3, "real": 64, "points": 2,
                  "methods": ["titan_sampled_gradient", "titan_momentum", "freedom"],
                  "targets": ["colour=red"], "out": pathlib.Path("/tmp/fidelity_smoke.json"),
                  "figures": pathlib.Path("/tmp/fidelity_smoke")}


def shipped_default() -> object:
    """TITAN as the sampler node ships it (Titan's field defaults) with the demo workflow's guess."""
    return gc.Titan(guess=sampled_gradient())


def default_strength_text() -> str:
    """The shipped rule and strength, for tables."""
    return f"{gc.Titan.optimizer} {gc.Titan.strength:g}, look-ahead {gc.Titan.lookahead}, window " \
           f"[{gc.Titan.start:g}, {gc.Titan.end:g})"



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


def real_clips(count: int, seed: int = REAL_WORLD_SEED, start: int = 0) -> torch.Tensor:
    """`count` clips (count, 16, 3, 32, 32) of the procedural world, on the CPU."""
    return world.make_batch(seed, start, count).video


def real_clips_with(targets: dict, count: int, seed: int = REAL_WORLD_SEED) -> torch.Tensor:
    """The real clips among the first `count` of the world whose labels have every target value."""
    batch = world.make_batch(seed, 0, count)
    keep = torch.ones(count, dtype=torch.bool)
    for name, value in targets.items():
        keep &= batch.labels[name] == world.ATTRIBUTES[name].index(value)
    return batch.video[keep]


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




# ---------------------------------------------------------------------------------------------------------
# Points and rows
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Reference:
    """What every point of one target is compared with: real-clip features and the unguided videos' read-outs."""

    real_features: torch.Tensor
    target_features: torch.Tensor
    unguided_hf: float
    unguided_frame_diff: float
    target_clips: int


def measure(models: Models, videos: torch.Tensor, targets: dict, reference: Reference | None) -> dict:
    """The read-outs of one point's videos (B, 16, 3, 32, 32) in [0, 1]."""
    readout = judge_readout(models.judge, videos)
    hit, prob = success(readout["logits"], targets)
    features = readout["features"][torch.isfinite(readout["features"]).all(1)]
    enough = features.shape[0] >= 2
    hf, frame_diff = float(high_frequency_energy(videos).mean()), float(frame_difference(videos).mean())
    row = dict(success_rate=float(hit.double().mean()), target_probability=float(prob.mean()),
               consistency=float(readout["consistency"].mean()), hf=hf, frame_diff=frame_diff,
               frechet_target=None, frechet=None, hf_ratio=None, frame_diff_ratio=None)
    if reference is not None:
        row.update(hf_ratio=hf / reference.unguided_hf, frame_diff_ratio=frame_diff / reference.unguided_frame_diff)
        if enough:
            row.update(frechet_target=frechet_distance(features, reference.target_features),
                       frechet=frechet_distance(features, reference.real_features))
    return row


def run_point(models: Models, method, name: str, strength, update: str, noise: torch.Tensor, targets: dict,
              args, reference: Reference | None, default: bool = False) -> dict:
    """Sample one (method, strength) point and measure it; a method that breaks is a row, the run goes on."""
    n = noise.shape[0] // world.NUM_FRAMES
    row = {"method": name, "target": target_text(targets), "strength": strength, "update": update, "n": n,
           "steps": args.steps, "default": default, "selected": False}
    try:
        out = generate(models, method, noise, targets, args.steps, args.batch, args.seed)
    except Exception as error:  # noqa: BLE001 - recorded in the row
        traceback.print_exc()
        row.update(status=f"error: {type(error).__name__}: {error}"[:300], success_rate=0.0)
        return row
    row.update(status="ok", peak_gb=out["peak_gb"], seconds=out["seconds"],
               **measure(models, out["videos"], targets, reference))
    row["videos"] = out["videos"][:4]
    print(json.dumps(printable(row)), flush=True)
    return row


def printable(row: dict) -> dict:
    """The row without its videos (what the JSON keeps)."""
    return {k: v for k, v in row.items() if k != "videos"}


def realistic(row: dict) -> bool:
    """Whether a point passes the selection rule's realism bounds."""
    return (row.get("status") == "ok" and row.get("hf_ratio") is not None
            and row["hf_ratio"] <= HF_RATIO_LIMIT and row["frame_diff_ratio"] <= FRAME_DIFF_RATIO_LIMIT)


def select(rows: list[dict]) -> dict | None:
    """The best success among the realistic points (ties: lower frechet_target); None if none is realistic."""
    candidates = [r for r in rows if realistic(r)]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["success_rate"], -(r["frechet_target"] or math.inf)))


def make_reference(models: Models, real: int, targets: dict, unguided_videos: torch.Tensor,
                   real_features: torch.Tensor) -> Reference:
    """The references of one target: real clips with it among the first `real`, the unguided read-outs."""
    real_target = real_clips_with(targets, real)
    if real_target.shape[0] < 2:
        raise ValueError(f"only {real_target.shape[0]} of {real} real clips have {target_text(targets)}; raise --real")
    return Reference(real_features, judge_readout(models.judge, real_target)["features"],
                     float(high_frequency_energy(unguided_videos).mean()),
                     float(frame_difference(unguided_videos).mean()), int(real_target.shape[0]))


def run_target(models: Models, args, targets: dict, noise: torch.Tensor, unguided_videos: torch.Tensor,
               real_features: torch.Tensor) -> tuple[list[dict], dict]:
    """Every method's sweep for one target, plus its unguided and default rows: (rows with videos, settings)."""
    started = time.perf_counter()
    reference = make_reference(models, args.real, targets, unguided_videos, real_features)
    rows = [dict(method="unguided", target=target_text(targets), strength=0.0, update=None, n=args.videos,
                 steps=args.steps, default=False, selected=False, status="ok", peak_gb=args.unguided["peak_gb"],
                 seconds=args.unguided["seconds"], videos=unguided_videos[:4],
                 **measure(models, unguided_videos, targets, reference))]
    rows.append(run_point(models, shipped_default(), "titan_default", gc.Titan.strength, gc.Titan.optimizer, noise,
                          targets, args, reference, default=True))
    for name in args.methods:
        build, sweep, update = SWEEPS[name]
        points = [run_point(models, build(value), name, value, update, noise, targets, args, reference)
                  for value in sweep[:args.points]]
        best = select(points)
        if best is not None:
            best["selected"] = True
        rows += points
    real_hit, _ = success(judge_readout(models.judge, real_clips(min(args.real, 512)))["logits"], targets)
    settings = {"real_target_clips": reference.target_clips, "real_success_rate": float(real_hit.double().mean()),
                "frechet_target_real_vs_all_real": frechet_distance(real_features, reference.target_features),
                "seconds": time.perf_counter() - started}
    return rows, settings


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    """Fixed-width table, one block per target; '*' marks the selected point, 'D' the default row."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    print(f"\n{'target':16s} {'method':38s} {'strength':>8s} {'':2s} {'success':>7s} {'F_target':>8s} {'F_all':>7s} "
          f"{'hf_ratio':>8s} {'fd_ratio':>8s} {'consist':>7s} {'peak GB':>7s} {'sec':>6s}")
    for r in rows:
        mark = ("D" if r.get("default") else "") + ("*" if r.get("selected") else "")
        print(f"{r['target']:16s} {r['method'] + ' (' + str(r.get('update')) + ')':38s} {fmt(r['strength'], '8.3g')} "
              f"{mark:2s} {fmt(r.get('success_rate'), '7.3f')} {fmt(r.get('frechet_target'), '8.2f')} "
              f"{fmt(r.get('frechet'), '7.2f')} {fmt(r.get('hf_ratio'), '8.2f')} {fmt(r.get('frame_diff_ratio'), '8.2f')} "
              f"{fmt(r.get('consistency'), '7.3f')} {fmt(r.get('peak_gb'), '7.2f')} {fmt(r.get('seconds'), '6.1f')}"
              + ("" if r.get("status", "ok") == "ok" else f"  {r['status']}"))


def save_pareto(rows: list[dict], path: pathlib.Path) -> None:
    """Success vs frechet_target, one curve per method (its sweep in strength order), one panel per target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(dict.fromkeys(r["target"] for r in rows))
    names = list(dict.fromkeys(r["method"] for r in rows if r["method"] not in ("unguided", "titan_default")))
    palette = plt.get_cmap("tab20")
    colours = {name: palette(i % 20) for i, name in enumerate(names)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, len(targets), figsize=(6.2 * len(targets), 5.4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        here = [r for r in rows if r["target"] == target and r.get("frechet_target") is not None]
        for name in dict.fromkeys(r["method"] for r in here if r["method"] in colours):
            pts = sorted((r for r in here if r["method"] == name), key=lambda r: r["strength"])
            line, = ax.plot([r["frechet_target"] for r in pts], [r["success_rate"] for r in pts], "-o", ms=3,
                            lw=1, color=colours[name], label=name)
            for r in pts:
                if not realistic(r):  # breaks the realism bounds: hollow marker
                    ax.plot(r["frechet_target"], r["success_rate"], "o", ms=6, mfc="white", mec=line.get_color())
                if r.get("selected"):
                    ax.plot(r["frechet_target"], r["success_rate"], "*", ms=12, color=line.get_color())
        for r in here:
            if r["method"] == "unguided":
                ax.plot(r["frechet_target"], r["success_rate"], "kx", ms=9, label="unguided")
            if r.get("default"):
                ax.plot(r["frechet_target"], r["success_rate"], "kD", ms=8, mfc="gold", label="shipped default")
        ax.set_xscale("log")
        ax.set_xlabel("Frechet distance to real clips with the target (judge features; lower = more real)")
        ax.set_ylabel("judge success")
        ax.set_title(f"target {target}", fontsize=10)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower center", ncol=min(8, len(handles)))
    fig.suptitle("hollow: hf_ratio > 1.2 or frame_diff_ratio > 1.3 (damaged); star: selected point per method",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_grid(rows: list[dict], path: pathlib.Path, frames=(0, 5, 10, 15), videos: int = 4, note: str = "") -> None:
    """PNG: unguided, the shipped default and each method's selected point, 4 videos x 4 frames each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [r for r in rows if "videos" in r and (r["method"] == "unguided" or r.get("default") or r.get("selected"))]
    if not shown:
        return
    count = min(videos, min(r["videos"].shape[0] for r in shown))
    fig, axes = plt.subplots(len(shown), 1, figsize=(1.0 * count * len(frames), 1.25 * len(shown) + 0.3), squeeze=False)
    for ax, row in zip(axes[:, 0], shown):
        strip = []
        for v in range(count):
            clip = row["videos"][v, list(frames)]
            strip.append(torch.cat([torch.cat([f, torch.ones(3, f.shape[1], 1)], 2) for f in clip], 2))
            strip.append(torch.ones(3, clip.shape[2], 6))
        ax.imshow(torch.cat(strip[:-1], 2).permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        label = "shipped default" if row.get("default") else ("selected" if row.get("selected") else "")
        ax.set_title(f"{row['method']} {row.get('update') or ''} {row['strength']:g} {label}: success "
                     f"{row['success_rate']:.2f}, F_target {row.get('frechet_target') or float('nan'):.1f}, hf x"
                     f"{row.get('hf_ratio') or float('nan'):.2f}, flicker x{row.get('frame_diff_ratio') or float('nan'):.2f}",
                     fontsize=8, loc="left")
    fig.suptitle(f"target {shown[0]['target']}; same initial noise in every row; frames {list(frames)}{note}",
                 fontsize=9)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.2 + 0.15 * note.count("\n")) / height))  # room for the title lines
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redraw_grids(result: dict, targets: list[dict], args, videos: int = 4) -> None:
    """The grids of `targets` from a finished sweep (`result`, fidelity.json): each shown row's first `videos`
    videos sampled again from the sweep's noise on args.device, with the row's figures from `result`. The shipped
    default is drawn at today's strength and must have a row at it (run the defaults command first)."""
    models = load_models(args.device)
    settings = result["settings"]
    noise = initial_noise(videos, settings["seed"])  # the sweep's first videos: the noise is drawn video-major
    for target in targets:
        name = target_text(target)
        rows = [r for r in result["rows"] if r.get("target") == name and r.get("status") == "ok"]
        default = [r for r in rows if r.get("default")]
        if not default or default[0]["strength"] != gc.Titan.strength:
            raise ValueError(f"{args.out} has no default row for {name} at the shipped strength "
                             f"{gc.Titan.strength:g}; run the defaults command (--methods none --append) first")
        shown = []
        order = {"unguided": 0}  # unguided, the shipped default, then the methods in the sweep's order
        for row in sorted(rows, key=lambda r: order.get(r["method"], 1 if r.get("default") else 2)):
            if row["method"] == "unguided":
                method = None
            elif row.get("default"):
                method = shipped_default()
            elif row.get("selected") and row["method"] in SWEEPS:
                method = SWEEPS[row["method"]][0](row["strength"])
            else:
                continue
            out = generate(models, method, noise, target, settings["steps"], videos, settings["seed"])
            shown.append(dict(row, videos=out["videos"]))
            print(f"[grid] {name}: {row['method']} {row['strength']:g} re-sampled in {out['seconds']:.1f} s",
                  flush=True)
        device = "the GPU" if models.device.type == "cuda" else "the CPU"
        save_grid(shown, args.figures / f"fidelity_grid_{slug(name)}.png",
                  note=f"\npictures: the first {videos} videos re-sampled on {device}; figures: {result['device']}, "
                       f"{settings['videos']} videos per point")


def merge_results(previous: dict, new: dict) -> dict:
    """`new` merged into an earlier result: its (target, method) rows replace those of the earlier one, the rest
    stay; per target the commands accumulate; settings must agree (ValueError)."""
    keys = ("videos", "steps", "seed", "real_clips", "smoke")
    old_settings, new_settings = previous.get("settings", {}), json.loads(json.dumps(new["settings"]))
    clashes = [k for k in keys if old_settings.get(k) != new_settings.get(k)]
    if previous.get("device") != new["device"]:
        clashes.append("device")
    if clashes:
        raise ValueError(f"cannot --append to a result with other settings ({', '.join(clashes)}); "
                         "write to another --out or run without --append")
    replaced = {(r.get("target"), r.get("method")) for r in new["rows"]}
    rows = [r for r in previous["rows"] if (r.get("target"), r.get("method")) not in replaced] + new["rows"]
    targets = dict(old_settings.get("targets", {}))
    for name, settings in new_settings["targets"].items():
        old = targets.get(name, {})
        commands = old.get("commands", [old["command"]] if "command" in old else [])
        new_command = [settings["command"]] if "command" in settings else []
        targets[name] = {k: v for k, v in settings.items() if k != "command"} | {"commands": commands + new_command}
    return {"device": new["device"], "rows": rows, "settings": dict(new_settings, targets=targets)}


def slug(target: str) -> str:
    """"colour=red" -> "colour-red" (file names)."""
    return target.replace(", ", "+").replace("=", "-")


def main(argv=None) -> None:
    """Sweep every method per target, print the table, write the JSON, the Pareto picture and the grids."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--videos", type=int, default=256, help="videos per point (same noise for every point)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256, help="videos per sampling batch")
    parser.add_argument("--real", type=int, default=2048, help="real clips for the Frechet references")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", "--target", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--methods", nargs="+", default=["all"],
                        help=f"method names or groups {list(METHOD_GROUPS)}; from {list(SWEEPS)}; 'none': only "
                             "the unguided and default rows (with --append: refresh them after a default change)")
    parser.add_argument("--points", type=int, default=None, help="only the first N strengths of each sweep")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "fidelity.json")
    parser.add_argument("--figures", type=pathlib.Path, default=RESULTS,
                        help="folder of fidelity_pareto.png and fidelity_grid_<target>.png")
    parser.add_argument("--append", action="store_true", help="merge into an existing --out (other targets stay)")
    parser.add_argument("--smoke", action="store_true", help=f"CPU, tiny: {SMOKE_SETTINGS}")
    parser.add_argument("--plot-only", action="store_true", help="redraw the Pareto picture from --out and exit")
    parser.add_argument("--grid-only", action="store_true",
                        help="redraw the picture grids of --targets from --out: the rows a grid shows (unguided, the "
                             "shipped default, each method's selected point) re-sampled for their first 4 videos on "
                             "--device at their recorded strength (the default at today's), titled with --out's "
                             "figures; then exit")
    args = parser.parse_args(argv)
    if args.plot_only:
        save_pareto(json.loads(args.out.read_text())["rows"], args.figures / "fidelity_pareto.png")
        return
    if args.grid_only:
        redraw_grids(json.loads(args.out.read_text()), [parse_target(t) for t in args.targets], args)
        return
    if args.smoke:
        args.device = "cpu"
        for name, value in SMOKE_SETTINGS.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    for name in ("videos", "steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.points is not None and args.points < 1:
        parser.error(f"--points must be >= 1, got {args.points}")
    if args.real < 16:
        parser.error(f"--real must be >= 16, got {args.real}")
    methods = []
    for name in args.methods:
        if name == "none":
            continue
        if name in METHOD_GROUPS:
            methods += METHOD_GROUPS[name]
        elif name in SWEEPS:
            methods.append(name)
        else:
            parser.error(f"unknown method {name!r}; choose from {list(SWEEPS)} or a group {list(METHOD_GROUPS)}")
    args.methods = list(dict.fromkeys(methods))
    try:
        targets = [parse_target(text) for text in args.targets]
    except ValueError as error:
        parser.error(str(error))
    if args.append and not args.out.is_file():
        parser.error(f"--append: {args.out} does not exist yet; run once without --append")
    if args.device == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    models = load_models(args.device)
    real_features = judge_readout(models.judge, real_clips(args.real))["features"]
    noise = initial_noise(args.videos, args.seed)
    unguided = generate(models, None, noise, targets[0], args.steps, args.batch, args.seed)
    args.unguided = {"peak_gb": unguided["peak_gb"], "seconds": unguided["seconds"]}
    rows, per_target = [], {}
    command = "python -m benchmarks.fidelity " + " ".join(argv if argv is not None else sys.argv[1:])
    for target in targets:
        target_rows, settings = run_target(models, args, target, noise, unguided["videos"], real_features)
        rows += target_rows
        per_target[target_text(target)] = dict(settings, command=command)
        if args.methods:  # a defaults-only run keeps the sweep's grid
            save_grid(target_rows, args.figures / f"fidelity_grid_{slug(target_text(target))}.png")
    print_table(rows)
    device_name = torch.cuda.get_device_name(models.device) if models.device.type == "cuda" else "cpu"
    settings = {
        "videos": args.videos, "steps": args.steps, "seed": args.seed, "batch_videos": args.batch,
        "real_clips": args.real, "real_world_seed": REAL_WORLD_SEED, "smoke": args.smoke, "methods": args.methods,
        "sweeps": {name: list(SWEEPS[name][1][:args.points]) for name in args.methods},
        "selection": f"best success with hf_ratio <= {HF_RATIO_LIMIT} and frame_diff_ratio <= "
                     f"{FRAME_DIFF_RATIO_LIMIT} (ties: lower frechet_target)",
        "default": default_strength_text() + "; guess: sampled gradient on all 16 frames (the demo workflow's)",
        "sampler": "DDIM (euler, eta 0), SD1.5 schedule, timesteps evenly spaced",
        "torch": torch.__version__, "total_seconds": time.perf_counter() - t0, "targets": per_target,
    }
    result = {"device": device_name, "rows": [printable(r) for r in rows], "settings": settings}
    if args.append:
        result = merge_results(json.loads(args.out.read_text()), result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    save_pareto(result["rows"], args.figures / "fidelity_pareto.png")
    print(f"wrote {args.out}, {args.figures / 'fidelity_pareto.png'} and the grids in "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
