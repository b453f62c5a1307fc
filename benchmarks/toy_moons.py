"""The paper's toy (Fig. 4): a DDPM on Moons guided onto the circle x^2 + y^2 = 0.3.

Loss per point: (x^2 + y^2 - 0.3)^2; reported objective: mean |x^2 + y^2 - 0.3|. Every method samples the
same 2,000 starting points with the same deterministic DDIM schedule; cosines compare the gradient each
method applies with the exact gradient of the full traverse to 0 (paper Eq. 7) at the same latent.
Each method's strength is picked from a small grid on a separate seed and 300 points (the authors'
defaults are tuned for image losses of another scale and diverge here), then fixed for the measured run.
Like with like: TITAN, the exact gradient and FreeDoM / MPGD / TFG all take the same normalised update rule
(each point moves by strength x its norm along -G/|G| per guided step, `guidance_core/update.py`) over the
whole schedule, tuned on the same grid; the baselines' own plain gradient steps are kept as "*_plain" rows,
whose best grid values (1e-5..1e-7: larger ones diverge on this loss) barely move the samples.

    python -m benchmarks.toy_moons            # writes benchmarks/results/toy_moons.{json,png}
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
import math
import pathlib
import time

import torch
from torch import nn

import guidance_core as core

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
RADIUS2 = 0.3


def make_moons(n: int, generator: torch.Generator, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles, standardised (as sklearn's make_moons, without sklearn)."""
    t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (pts - torch.tensor([0.5, 0.25], dtype=torch.float64)) / torch.tensor([0.87, 0.5], dtype=torch.float64)


class ToyEps(nn.Module):
    """eps-model: two hidden layers of 64 with ReLU (paper section 8), input point + timestep features."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0, math.log(1000), 8, dtype=z.dtype, device=z.device))
        angles = (t.to(z.dtype).reshape(-1, 1) / 1000) * freqs
        feats = torch.cat([angles.sin(), angles.cos()], 1).expand(z.shape[0], -1)
        return self.net(torch.cat([z, feats], 1))


def ddpm_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    """DDPM's linear beta schedule (1e-4 to 0.02)."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)


def train_toy(iterations: int = 4000, seed: int = 0, batch: int = 512) -> ToyEps:
    """Fit the eps-model to Moons with the DDPM loss (float64, CPU)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyEps().double()
    ac = ddpm_alphas_cumprod()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    for _ in range(iterations):
        x0 = make_moons(batch, gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        eps = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
        a = ac[t].unsqueeze(1)
        loss = (model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t.double()) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


def circle_loss(x0: torch.Tensor, frame_indices=None, per_frame: bool = False) -> torch.Tensor:
    """Per-point loss (x^2 + y^2 - 0.3)^2."""
    return (x0.pow(2).sum(1) - RADIUS2).pow(2)


def methods() -> dict:
    """Every method of Fig. 4 plus K tangents and the backprop baselines, at the toy's settings.

    In 2-D, K = 2 orthogonal tangents span the whole space, so that estimator is exact here by construction.
    """
    common = dict(lookahead="all", strength=0.05, optimizer="normalized", start=0.0, end=1.0)
    window = dict(start=0.0, end=1.0)
    table = {
        "unguided": None,
        "titan_random": core.Titan(guess=core.RandomGuess(), **common),
        "titan_score": core.Titan(guess=core.ScoreGuess(), **common),
        "titan_sampled_gradient": core.Titan(guess=core.SampledGradientGuess(frames=None), **common),
        "titan_orthogonal_k2": core.Titan(guess=core.OrthogonalGuess(k=2), **common),
        "titan_mixed": core.Titan(guess=core.MixedGuess(core.SampledGradientGuess(frames=None)), **common),
        "exact": core.baselines.ExactGradient(**common),
    }
    for name in ("FreeDoM", "MPGD", "TFG"):
        cls = getattr(core.baselines, name)
        table[name.lower()] = cls(update="normalized", **window)
    for name in ("FreeDoM", "MPGD", "TFG"):
        table[f"{name.lower()}_plain"] = getattr(core.baselines, name)(update="plain", **window)
    table["doodl"] = core.baselines.DOODL()
    return table


LOG_GRID = tuple(10.0**e for e in range(-7, 1))  # plain gradient steps
NORMALIZED_GRID = (0.01, 0.02, 0.05, 0.1, 0.2)  # fraction of each point's norm per guided step
STRENGTH_FIELD = {"titan": "strength", "exact": "strength", "freedom": "rho", "mpgd": "scale", "tfg": ("rho", "mu"),
                  "doodl": "lr"}


def strength_grid(name: str) -> tuple[str | tuple[str, ...], tuple[float, ...]]:
    """(strength field(s), grid) of a method of `methods()`."""
    family = name.split("_")[0]
    if family == "doodl":
        return "lr", (0.01, 0.03, 0.1, 0.3, 1.0)
    return STRENGTH_FIELD[family], LOG_GRID if name.endswith("_plain") else NORMALIZED_GRID


def with_strength(method, names, value):
    """A copy of `method` with the strength field(s) `names` set to `value`."""
    names = (names,) if isinstance(names, str) else names
    return dataclasses.replace(method, **{n: value for n in names})


def tune(model: ToyEps, table: dict, steps: int, seed: int, points: int = 300) -> dict:
    """Pick each method's strength from STRENGTH_GRID by the objective on a separate seed."""
    chosen = {}
    for name, method in table.items():
        if method is None:
            continue
        field, grid = strength_grid(name)
        scores = {}
        for value in grid:
            trial = {name: with_strength(method, field, value)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = run(model, points, steps, seed, table=trial, observe_cosines=False)[name]["objective"]
            scores[value] = r if math.isfinite(r) else float("inf")
        chosen[name] = (field, min(scores, key=scores.get))
    return chosen


def run(model: ToyEps, points: int = 2000, steps: int = 50, seed: int = 0, names: list[str] | None = None,
        table: dict | None = None, observe_cosines: bool = True) -> dict:
    """Sample every method from the same noise; returns per-method samples, objective, cosine and seconds."""
    ac = ddpm_alphas_cumprod()
    denoise = core.EpsDenoiser(model, ac)
    sigmas = core.DiscreteSchedule(ac).spaced_sigmas(steps)
    layout = core.Layout(samples=points)
    x = torch.randn(points, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    out = {}
    for name, method in (table or methods()).items():
        if names is not None and name not in names:
            continue
        cosines = []

        def observe(i, x, gradient, **_):
            # exact gradient of the full traverse to 0 at the same latent: the paper's "true gradient"
            ref = core.exact_gradient(lambda z: circle_loss(core.unroll(denoise, z, sigmas[i:])), x)[1]
            cosines.append(float(core.cosine(gradient, ref, layout).mean()))

        start = time.perf_counter()
        result = core.sample(denoise, x, sigmas, method=method, loss=circle_loss, layout=layout,
                           generator=torch.Generator().manual_seed(seed + 1),
                           observer=observe if observe_cosines else None)
        seconds = time.perf_counter() - start
        objective = float((result.x.pow(2).sum(1) - RADIUS2).abs().mean())
        out[name] = {"samples": result.x, "objective": objective, "seconds": seconds,
                     "cosine_to_exact": sum(cosines) / len(cosines) if cosines else None}
    return out


def plot(results: dict, data: torch.Tensor, path: pathlib.Path) -> None:
    """Top row laid out like Fig. 4 (unguided, random, score, sampled gradient, exact gradient); bottom row the
    backprop baselines: FreeDoM's plain step at its best grid value, then FreeDoM / MPGD / TFG normalised, DOODL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("unguided", "(a) data and unguided samples"), ("titan_random", "(b) TITAN, random guess"),
              ("titan_score", "(c) TITAN, score guess"), ("titan_sampled_gradient", "(d) TITAN, sampled gradient"),
              ("exact", "(e) exact gradient"),
              ("freedom_plain", "(f) FreeDoM, plain step"), ("freedom", "(g) FreeDoM, normalised step"),
              ("mpgd", "(h) MPGD, normalised step"), ("tfg", "(i) TFG, normalised step"), ("doodl", "(j) DOODL")]
    panels = [(name, title) for name, title in panels if name in results]
    fig, axes = plt.subplots(2, 5, figsize=(20, 8.6))
    axes = axes.reshape(-1)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    theta = torch.linspace(0, 2 * math.pi, 200)
    for ax, (name, title) in zip(axes, panels):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="tab:blue", alpha=0.4)
        pts = results[name]["samples"]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:orange", alpha=0.6)
        ax.plot(RADIUS2**0.5 * theta.cos(), RADIUS2**0.5 * theta.sin(), c="tab:red", lw=1.5)
        ax.set_title(f"{title}\nmean |x²+y²-0.3| = {results[name]['objective']:.3f}", fontsize=10)
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    """Train, sample every method, print the table, write JSON and the PNG."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train-iterations", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny ops: threading costs more than it gives
    t0 = time.perf_counter()
    model = train_toy(args.train_iterations, args.seed)
    train_s = time.perf_counter() - t0
    table = methods()
    chosen = tune(model, table, args.steps, args.seed + 100)
    table = {name: m if m is None else with_strength(m, *chosen[name]) for name, m in table.items()}
    results = run(model, args.points, args.steps, args.seed, table=table)
    rows = [{"method": name, "objective": r["objective"], "cosine_to_exact": r["cosine_to_exact"],
             "seconds": r["seconds"], "strength": None if name not in chosen else
             {"field": chosen[name][0], "value": chosen[name][1]}} for name, r in results.items()]
    print(f"trained in {train_s:.1f} s; {args.points} points, {args.steps} DDIM steps, loss (x²+y²-0.3)²")
    print(f"{'method':24s} {'mean |x²+y²-0.3|':>18s} {'cosine to exact':>16s} {'seconds':>8s}  strength")
    for row in rows:
        cos = "-" if row["cosine_to_exact"] is None else f"{row['cosine_to_exact']:.3f}"
        strength = "" if row["strength"] is None else f"{row['strength']['field']}={row['strength']['value']}"
        print(f"{row['method']:24s} {row['objective']:18.4f} {cos:>16s} {row['seconds']:8.2f}  {strength}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"points": args.points, "steps": args.steps, "train_iterations": args.train_iterations, "seed": args.seed,
            "train_seconds": train_s, "loss": "(x^2 + y^2 - 0.3)^2 per point", "objective": "mean |x^2 + y^2 - 0.3|",
            "command": "python -m benchmarks.toy_moons", "torch": torch.__version__}
    (args.out / "toy_moons.json").write_text(json.dumps({"rows": rows, "settings": meta}, indent=2) + "\n")
    data = make_moons(args.points, torch.Generator().manual_seed(args.seed + 7))
    plot(results, data, args.out / "toy_moons.png")
    print(f"wrote {args.out / 'toy_moons.json'} and {args.out / 'toy_moons.png'}")


if __name__ == "__main__":
    main()
