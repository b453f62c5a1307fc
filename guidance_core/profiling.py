"""Where a guided run's time goes: torch.profiler around one run, on request, summarised by phase and operator.

A run is profiled when the folder named by TITAN_PROFILE_DIR holds a file `profile_next` (removed when the
run starts, so one request profiles one run: benchmarks/host_gpu.py asks for its last warm run). The summary
goes to `profile.json` and `profile.txt` in that folder. Phases are the `phase` labels (record_function) that
guidance_core puts around its parts (titan.py, decode.py, video_frames.py); nested phases overlap
(titan.forward_gradient holds titan.lookahead and titan.decode_and_objective, which holds titan.decode). On
CUDA a profiled run also times each phase between device synchronisations (`phase_seconds_synchronised`): the
GPU work a CPU-only profile cannot see, at the price of the synchronisations.

On a CUDA machine torch.profiler is not started unless TITAN_PROFILE_CUDA=1: inside ComfyUI's prompt worker
thread its start failed on an H200 ("External init callback must run in same thread as registerClient") and the
prompt hung, with CPU activity alone too. There a profiled run records only the synchronised phase times
below; operator counts come from a CPU run of the same networks (benchmarks/host_gpu.py --cpu), since they do
not depend on the device. `cuda_sync_s` is the time spent waiting for the GPU in synchronising calls.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from .steps import reads_forbidden

PHASES = ("titan.guess_denoise", "titan.guess", "titan.forward_gradient", "titan.lookahead",
          "titan.decode_and_objective", "titan.decode", "titan.sampler_step")
REQUEST = "profile_next"


# while a profiled CUDA run times its phases with synchronisation (see `phase`): {"seconds": {phase: s},
# "peak_raised_gb": {phase: GB}}, else None
_synchronised_log: ContextVar[dict | None] = ContextVar("titan_phase_log", default=None)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A `record_function` label for the profiler; in a profiled CUDA run also the phase's wall time between
    device synchronisations (GPU work included, which a CPU-only profile cannot see; not while capturing or in
    GraphedJvp's probe pass, where a synchronisation would fail), and the allocated-memory peak the phase raised
    the run's to, if it did (the phase that sets the run's peak is the one with the highest)."""
    log = _synchronised_log.get()
    if log is None or reads_forbidden():
        with record_function(name):
            yield
        return
    torch.cuda.synchronize()
    started, peak_before = time.perf_counter(), torch.cuda.max_memory_allocated()
    with record_function(name):
        yield
    torch.cuda.synchronize()
    times, raised = log["seconds"], log["peak_raised_gb"]
    times[name] = times.get(name, 0.0) + time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated()
    if peak > peak_before:
        raised[name] = max(raised.get(name, 0.0), round(peak / 2**30, 3))


def _device_us(event, self_only: bool = False) -> float:
    # torch >= 2.4 names it device time; older builds say cuda
    names = ("self_device_time_total", "self_cuda_time_total") if self_only else \
        ("device_time_total", "cuda_time_total")
    return next((float(getattr(event, n)) for n in names if hasattr(event, n)), 0.0)


def aten_ops_by_phase(events, names: dict | None = None) -> dict:
    """aten operator calls per innermost phase label ("other": outside every phase), from profiler.events();
    `names`, if given, receives {phase: {operator: calls}}."""
    counts: dict = {}
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("titan."):
            parent = parent.cpu_parent
        phase = parent.name if parent is not None else "other"
        counts[phase] = counts.get(phase, 0) + 1
        if names is not None:
            by_name = names.setdefault(phase, {})
            by_name[event.name] = by_name.get(event.name, 0) + 1
    return counts


def summarize(events, wall_seconds: float, top: int = 15, ops_by_phase: dict | None = None) -> dict:
    """Phase totals, kernel launches and the operators with the most device and CPU time, from key_averages()."""
    events = list(events)
    by_key = {e.key: e for e in events}
    ops_by_phase = ops_by_phase or {}
    phases = {name: {"calls": by_key[name].count, "cpu_s": by_key[name].cpu_time_total / 1e6,
                     "device_s": _device_us(by_key[name]) / 1e6, "own_aten_ops": ops_by_phase.get(name, 0)}
              for name in PHASES if name in by_key}
    launches = sum(e.count for e in events if "LaunchKernel" in e.key or "cuLaunch" in e.key)
    aten_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    sync = sum(e.self_cpu_time_total for e in events if "synchronize" in e.key.lower() or e.key in (
        "aten::_local_scalar_dense", "aten::item")) / 1e6
    device_busy = sum(_device_us(e, self_only=True) for e in events) / 1e6
    operators = [e for e in events if not e.key.startswith("titan.") and not e.key.startswith("ProfilerStep")]

    def row(e):
        return {"op": e.key, "calls": e.count, "self_device_s": _device_us(e, True) / 1e6,
                "self_cpu_s": e.self_cpu_time_total / 1e6}
    return {"wall_s": wall_seconds, "device_busy_s": device_busy, "kernel_launches": launches, "aten_ops": aten_ops,
            "cuda_sync_s": sync, "phases": phases, "aten_ops_outside_phases": ops_by_phase.get("other", 0),
            "top_device": [row(e) for e in sorted(operators, key=lambda e: -_device_us(e, True))[:top]],
            "top_cpu": [row(e) for e in sorted(operators, key=lambda e: -e.self_cpu_time_total)[:top]]}


def format_summary(summary: dict) -> str:
    """The summary as a plain-text table."""
    wall = summary["wall_s"]
    synchronised = summary.get("phase_seconds_synchronised") or {}
    raised = summary.get("phase_peak_raised_gb") or {}
    timing = ["phase wall time between device synchronisations (GPU work included); allocated peak the phase "
              "raised the run's to:"] + [
        f"  {name:28} {seconds:8.2f} s" + (f"   peak -> {raised[name]:.2f} GiB" if name in raised else "")
        for name, seconds in synchronised.items()] if synchronised else []
    if "aten_ops" not in summary:  # a CUDA run without torch.profiler
        return "\n".join([f"profiled run: {wall:.2f} s wall (synchronised phases, no torch.profiler)"] + timing)
    lines = [f"profiled run: {wall:.2f} s wall (profiler on), {summary['aten_ops']} aten ops, waiting in "
             f"synchronising calls {summary['cuda_sync_s']:.2f} s; device busy {summary['device_busy_s']:.2f} s, "
             f"{summary['kernel_launches']} kernel launches (0 without TITAN_PROFILE_CUDA=1)",
             f"{'phase':28} {'calls':>6} {'CPU s':>8} {'device s':>9} {'own aten ops':>13}"]
    lines += [f"{name:28} {p['calls']:6d} {p['cpu_s']:8.2f} {p['device_s']:9.2f} {p['own_aten_ops']:13d}"
              for name, p in summary["phases"].items()]
    lines.append(f"aten ops outside every phase: {summary['aten_ops_outside_phases']}")
    lines += timing
    tables = (("top_device", "self device time"),) if summary["device_busy_s"] > 0 else ()
    for key, title in tables + (("top_cpu", "self CPU time"),):
        lines += ["", f"operators by {title}:", f"{'op':48} {'calls':>7} {'device s':>9} {'CPU s':>8}"]
        lines += [f"{r['op'][:48]:48} {r['calls']:7d} {r['self_device_s']:9.3f} {r['self_cpu_s']:8.3f}"
                  for r in summary[key]]
    return "\n".join(lines)


@contextlib.contextmanager
def profiled_if_requested(folder: str | None = None) -> Iterator[None]:
    """Profile the enclosed run if `folder` (default $TITAN_PROFILE_DIR) holds a `profile_next` request."""
    folder = folder or os.environ.get("TITAN_PROFILE_DIR")
    request = Path(folder, REQUEST) if folder else None
    if request is None or not request.exists():
        yield
        return
    request.unlink()
    on_gpu = torch.cuda.is_available()
    use_profiler = not on_gpu or os.environ.get("TITAN_PROFILE_CUDA") == "1"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    started = time.perf_counter()
    log = {"seconds": {}, "peak_raised_gb": {}} if on_gpu else None
    token = _synchronised_log.set(log)
    try:
        with profile(activities=activities) if use_profiler else contextlib.nullcontext() as profiler:
            yield
            if on_gpu:
                torch.cuda.synchronize()
    finally:
        _synchronised_log.reset(token)
    wall = time.perf_counter() - started
    names: dict = {}
    summary = summarize(profiler.key_averages(), wall, ops_by_phase=aten_ops_by_phase(profiler.events(), names)) \
        if use_profiler else {"wall_s": wall, "phases": {}}
    for phase_name, by_name in names.items():  # each phase's most frequent operators
        if phase_name in summary["phases"]:
            summary["phases"][phase_name]["top_ops"] = dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:12])
    summary["phase_seconds_synchronised"] = None if log is None else log["seconds"]
    summary["phase_peak_raised_gb"] = None if log is None else log["peak_raised_gb"]
    Path(folder, "profile.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    Path(folder, "profile.txt").write_text(format_summary(summary) + "\n", encoding="utf-8")
