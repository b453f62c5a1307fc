"""What a guided run reports: the RunRecord a sampler node fills, its text report and its loss plot.

Every guidance method's step reports (guidance_core.sampling.SampleResult.reports) are dicts with "step" (or
"iteration" for DOODL, which optimises the initial noise), "sigma", "loss", "grad_norm" and optional
"lookahead", "skipped", "final"; `StepReport.of` reads any of them the same way.
"""
from __future__ import annotations

import dataclasses
import math
import resource
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


@dataclasses.dataclass(frozen=True)
class StepReport:
    """One guided step (or DOODL iteration) as the report shows it: losses before and after its updates."""

    index: int | None
    per_iteration: bool  # DOODL: `index` counts optimisation iterations, not sampler steps
    sigma: float | None = None
    lookahead: int | str | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    grad_norm: float | None = None
    skipped: str = ""
    final: bool = False

    @classmethod
    def of(cls, report: dict) -> "StepReport":
        """The typed view of a method's report dict."""
        per_iteration = "iteration" in report and "step" not in report
        index = report.get("iteration") if per_iteration else report.get("step")
        return cls(index=None if index is None else int(index), per_iteration=per_iteration,
                   sigma=_last(report.get("sigma")), lookahead=report.get("lookahead"),
                   first_loss=_first(report.get("loss")), last_loss=_last(report.get("loss")),
                   grad_norm=_last(report.get("grad_norm")), skipped=str(report.get("skipped") or ""),
                   final=bool(report.get("final")))

    @property
    def note(self) -> str:
        return self.skipped or ("final EDICT sample" if self.final else "")


def _first(values) -> float | None:
    if isinstance(values, (list, tuple)):
        values = [v for v in values if v is not None]
        return float(values[0]) if values else None
    return None if values is None else float(values)


def _last(values) -> float | None:
    if isinstance(values, (list, tuple)):
        values = [v for v in values if v is not None]
        return float(values[-1]) if values else None
    return None if values is None else float(values)


@dataclasses.dataclass
class RunRecord:
    """What one guided sampling run reports."""

    method: str = ""
    guess: str = ""
    objective: str = ""
    videos: int = 0
    frames: int = 0
    steps: int = 0
    reports: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    model_calls: int = 0
    peak_memory_bytes: int = 0
    memory_source: str = ""
    loaded_models: list = dataclasses.field(default_factory=list)  # lines from describe_loaded_models
    decode_chunk: str = ""  # frames per decode inside the objective, and how they were chosen
    forward_ad: str = ""  # attention routes inside forward-mode passes, CUDA graph use

    @classmethod
    def of_run(cls, objective, guess, method, videos: int, frames: int, steps: int) -> "RunRecord":
        """The record of a run before it starts (`objective`: objectives.ObjectiveSet; guess and method:
        run_config.GuessSpec and MethodSpec)."""
        return cls(method=method.describe(), guess=guess.describe() if method.uses_guess else "",
                   objective=objective.describe(), videos=videos, frames=frames, steps=steps)

    def step_reports(self) -> list[StepReport]:
        """The methods' step reports, typed."""
        return [StepReport.of(report) for report in self.reports]



def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA peak allocated since the run started, else the process peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), f"torch.cuda.max_memory_allocated on {device} during the run"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return rss_bytes, ("process peak RSS of the ComfyUI server since it started (ru_maxrss; "
                       f"the latent is on {device.type}, so no per-run GPU figure exists)")


def step_losses(record: RunRecord) -> list[tuple[int, float]]:
    """(step or iteration, loss before its update) for every report with a finite loss."""
    return [(step.index, step.first_loss) for step in record.step_reports()
            if step.index is not None and step.first_loss is not None and math.isfinite(step.first_loss)]


def _fmt(value, width: int = 11) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:.5g}".rjust(width)


def format_report(record: RunRecord) -> str:
    """The node's report: one line per guided step (loss, |G|, look-ahead) and the totals."""
    lines = [f"TITAN-Guide report: method {record.method}" + (f", guess {record.guess}" if record.guess else ""),
             f"objective: {record.objective}",
             f"{record.videos} video(s) x {record.frames} frame(s), {record.steps} sampler step(s)"]
    steps = record.step_reports()
    per_iteration = any(step.per_iteration for step in steps)
    lines.append(("iteration" if per_iteration else "step").ljust(10) + "sigma".rjust(11) + "look-ahead".rjust(11)
                 + "loss".rjust(11) + "last loss".rjust(11) + "|G|".rjust(11) + "  note")
    for step in steps:
        lines.append(str(step.index).ljust(10) + _fmt(step.sigma)
                     + str("-" if step.lookahead is None else step.lookahead).rjust(11)
                     + _fmt(step.first_loss) + _fmt(step.last_loss) + _fmt(step.grad_norm)
                     + (f"  {step.note}" if step.note else ""))
    skipped = sum(1 for step in steps if step.skipped)
    if not record.reports:
        lines.append("(no guided steps: the guidance window is empty, or no objective was evaluated)")
    lines.append(f"guided entries: {len(record.reports)}, skipped (non-finite loss or gradient): {skipped}")
    for message in dict.fromkeys(record.warnings):
        lines.append(f"warning: {message}")
    if record.decode_chunk:
        lines.append(f"decode chunk: {record.decode_chunk}")
    if record.forward_ad:
        lines.append(f"forward mode: {record.forward_ad}")
    lines.append(f"time: {record.seconds:.2f} s, model calls: {record.model_calls}")
    lines.append(f"peak memory: {record.peak_memory_bytes / 2**20:.1f} MiB ({record.memory_source})")
    if record.loaded_models:
        lines.append("models in ComfyUI's model management for this run:")
        lines += [f"  {line}" for line in record.loaded_models]
    return "\n".join(lines)


def plot_losses(record: RunRecord, width: int = 512, height: int = 320) -> torch.Tensor:
    """IMAGE (1, H, W, 3) in [0, 1]: the loss at each guided step (before its update)."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    points = step_losses(record)
    left, right, top, bottom = 70, width - 20, 30, height - 40
    x_label = "DOODL iteration" if any(step.per_iteration for step in record.step_reports()) else "sampler step"
    draw.text((left, 8), f"TITAN-Guide loss per guided step ({record.method})"[:70], fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    draw.text(((left + right) // 2 - 40, bottom + 20), x_label, fill="black", font=font)
    if not points:
        draw.text((left + 20, (top + bottom) // 2), "no guided steps", fill="black", font=font)
    else:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        x_lo, x_hi = min(xs), max(xs)
        y_lo, y_hi = min(ys), max(ys)
        if y_hi - y_lo < 1e-12:
            y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) + 1e-6), y_hi + 0.5 * (abs(y_hi) + 1e-6)
        def to_px(xv, yv):
            px = left + (right - left) * (0.5 if x_hi == x_lo else (xv - x_lo) / (x_hi - x_lo))
            py = bottom - (bottom - top) * (yv - y_lo) / (y_hi - y_lo)
            return px, py
        pixels = [to_px(xv, yv) for xv, yv in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=(200, 30, 30), width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(200, 30, 30))
        for value, py in ((y_hi, top), (y_lo, bottom)):
            draw.text((4, py - 6), f"{value:.4g}", fill="black", font=font)
        for xv in sorted(set([x_lo, x_hi])):
            px, _ = to_px(xv, y_lo)
            draw.text((px - 4, bottom + 4), str(xv), fill="black", font=font)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def attention_routes() -> Counter:
    """A copy of the forward-mode attention calls per route so far (for `forward_ad_line`)."""
    from .forward_ad.attention import route_counts
    return Counter(route_counts)


def forward_ad_line(routes_before: Counter, method) -> str:
    """Attention calls per route (triton / fused / math) since `routes_before` and the method's CUDA graph state."""
    routes = {name: count for name, count in (attention_routes() - routes_before).items() if count}
    graphs = getattr(method, "graphs", None)
    parts = [("attention calls " + ", ".join(f"{n} {c}" for n, c in sorted(routes.items()))) if routes else ""]
    parts.append(graphs.describe() if graphs is not None else "")
    return "; ".join(p for p in parts if p)
