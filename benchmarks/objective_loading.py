"""How long the objective loaders take on full-size files: as shipped against the same loaders without their two
speed-ups, side by side in one run (CPU; loading runs on the CPU in ComfyUI too, in a workflow's first prompt).

The files are the harness's (benchmarks/host_gpu.py: random init in the official layouts, ImageBind huge 4.8 GB,
the CLIP ViT-H-14 vision file 2.5 GB, DOVER 0.2 GB), written once into --dir. Rows per objective:
  shipped   `objectives.checkpoint_layouts.build_*` as the loader nodes call them: modules built without random
            initialisation before the strict load (`objectives.base.random_init_skipped`), torch checkpoints
            memory-mapped (`objectives.base.torch_load_weights`);
  baseline  the same calls with both undone: random initialisation, then the whole file read into memory.
Median of --repeats calls each, alternating, after one untimed call of each (imports, the page cache).

    python -m benchmarks.objective_loading                      # full size, about 3 min on 2 cores
    python -m benchmarks.objective_loading --smoke --out /tmp/objective_loading.json   # tiny files, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
for extra in (REPO_ROOT / "tests" / "unit", REPO_ROOT / "tests", REPO_ROOT / "benchmarks", REPO_ROOT):
    sys.path.insert(0, str(extra))

OBJECTIVES = ("imagebind", "clip", "dover")


def loader(objective: str, path: pathlib.Path):
    """The loader node's call for `objective` (float32 on the CPU)."""
    from objectives import checkpoint_layouts

    if objective == "imagebind":
        return lambda: checkpoint_layouts.build_imagebind(str(path), torch.float32)
    if objective == "clip":
        return lambda: checkpoint_layouts.build_clip(str(path), torch.float32, "auto", "")
    return lambda: checkpoint_layouts.build_dover(str(path), torch.float32)


@contextlib.contextmanager
def without_speedups():
    """Random initialisation before the load and whole-file torch.load, where the loaders import them."""
    from objectives import base, dover, imagebind_audio, style_clip

    def read_whole(path):
        return torch.load(path, map_location="cpu", weights_only=True)

    patched = [(base, "torch_load_weights", read_whole), (dover, "torch_load_weights", read_whole),
               (imagebind_audio, "random_init_skipped", contextlib.nullcontext),
               (style_clip, "random_init_skipped", contextlib.nullcontext)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def write_files(folder: pathlib.Path, objectives, smoke: bool) -> dict:
    """objective -> weight file in `folder` (written unless it is there)."""
    import host_gpu

    files = {}
    for objective in objectives:
        _, name, _ = host_gpu.OBJECTIVE_FILES[objective]
        path = folder / (f"smoke_{name}" if smoke else name)
        if not path.is_file():
            if smoke and objective == "dover":
                from tiny_objectives import write_tiny_dover

                write_tiny_dover(path)
            else:
                host_gpu.write_objective_weights(objective, path, smoke)
        files[objective] = path
    return files


def measure(objective: str, path: pathlib.Path, repeats: int) -> dict:
    load = loader(objective, path)
    model, description = load()
    parameters = sum(p.numel() for p in model.parameters())
    del model
    with without_speedups():
        load()[0]
    times = {"shipped": [], "baseline": []}
    for _ in range(repeats):
        for mode in times:
            with without_speedups() if mode == "baseline" else contextlib.nullcontext():
                start = time.perf_counter()
                model = load()[0]
                times[mode].append(time.perf_counter() - start)
                del model
    return {"objective": objective, "file": path.name, "file_gb": path.stat().st_size / 1e9,
            "parameters_m": parameters / 1e6, "description": description,
            "shipped_s": statistics.median(times["shipped"]), "baseline_s": statistics.median(times["baseline"]),
            "shipped_runs": times["shipped"], "baseline_runs": times["baseline"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--dir", type=pathlib.Path, help="where the weight files are kept (default: a temp folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="the objective tests' tiny files")
    parser.add_argument("--out", type=pathlib.Path,
                        default=REPO_ROOT / "benchmarks" / "results" / "objective_loading.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    with contextlib.ExitStack() as stack:
        folder = args.dir or pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        files = write_files(folder, args.objectives, args.smoke)
        rows = []
        for objective in args.objectives:
            rows.append(measure(objective, files[objective], args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    command = " ".join(["python -m benchmarks.objective_loading"] + (argv if argv is not None else sys.argv[1:]))
    result = {"command": command, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "smoke": args.smoke, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("| objective | file | parameters | shipped s | baseline s (random init, whole read) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['objective']} | {row['file']} ({row['file_gb']:.2f} GB) | {row['parameters_m']:.1f} M "
              f"| {row['shipped_s']:.2f} | {row['baseline_s']:.2f} |")
    return result


if __name__ == "__main__":
    main()
