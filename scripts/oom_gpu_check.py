"""GPU out-of-memory check (issue #18, item 4): drive TitanGuideSampler through a real ComfyUI host on a CUDA GPU
into a real CUDA out-of-memory error, check that the error names the widgets that lower memory as the UI shows them,
then check that the next prompt runs (finite latent) and that ComfyUI reacted to the OOM (unloaded its models).

The server's CUDA memory is capped with torch.cuda.set_per_process_memory_fraction (a tiny custom node set up here
applies it at start), and the embedded video model guides ever larger batches (--videos) until one runs out of
memory. ComfyUI's own planning does not see the cap (it reads the device's free memory), so the OOM happens inside
guidance, where the node's message is made. Prints what it saw and writes JSON (--json, default
benchmarks/results/oom_gpu.json). Needs no internet: docs/pending/oom_gpu_command.txt says how to run it on a device
machine. Exit status 0 when every check passed.

    python scripts/oom_gpu_check.py [--cap-mib 768] [--videos 8 32 128 256] [--comfyui DIR] [--python PY]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from testing.comfy_host import PACK_NAME, ComfyExecutionError, ComfyHost  # noqa: E402

WIDGETS = ("'decode_chunk_frames'", "'lookahead'", "'per_frame'", "'k'", "'checkpoint'")
CAP_NODE = '''"""Caps this process's CUDA memory (titan-guide's OOM check)."""
import logging, os
import torch
if torch.cuda.is_available():
    total = torch.cuda.get_device_properties(0).total_memory
    cap = int(os.environ.get("TITAN_OOM_CAP_MIB", "768")) * 2**20
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
    logging.info("titan_oom_cap: CUDA memory capped at %d of %d MiB", cap >> 20, total >> 20)
NODE_CLASS_MAPPINGS = {}
'''
# Packages ComfyUI only needs to serve its web UI: stubbed where not installed (the check uses the HTTP API only).
UI_PACKAGES = {"comfyui_frontend_package": "static", "comfyui_workflow_templates": "templates",
               "comfyui_embedded_docs": "docs"}


class GpuHost(ComfyHost):
    """The test host without --cpu: ComfyUI runs on the GPU."""

    def command(self) -> list:
        return [arg for arg in super().command() if arg != "--cpu"]


def prompt(videos: int, steps: int, tag: str) -> dict:
    """Embedded model, `videos` videos of 16 frames, guided toward red (titan, random guess, look-ahead 1)."""
    return {
        "load": {"class_type": "TitanEmbeddedModelLoader", "inputs": {"unet_name": "embedded_unet.safetensors"}},
        "latent": {"class_type": "TitanEmbeddedEmptyLatent", "inputs": {"videos": videos}},
        "objective": {"class_type": "TitanAttributeObjective", "inputs": {
            "colour": "red", "shape": "any", "direction": "any", "speed": "any", "weight": 1.0,
            "classifier_name": "embedded_classifier.safetensors"}},
        "sampler": {"class_type": "TitanGuideSampler", "inputs": {
            "model": ["load", 0], "positive": ["load", 2], "negative": ["load", 3], "latent_image": ["latent", 0],
            "vae": ["load", 1], "objective": ["objective", 0], "seed": 1, "steps": steps, "cfg": 1.0,
            "scheduler": "normal", "denoise": 1.0, "sampler": "euler", "eta": 0.0, "strength": 0.07,
            "strength_schedule": "constant", "lookahead": 1, "guidance_start": 0.0, "guidance_end": 0.75,
            "iterations": 1, "optimizer": "normalized_relative", "max_grad_norm": 0.0, "per_frame": False,
            "decode_chunk_frames": 0, "frames_per_video": 16}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": f"oom/{tag}"}},
    }


def ui_package_stubs(python: str, folder: Path) -> list:
    """Stub packages for the UI-only packages `python` cannot import; returns their names."""
    stubbed = []
    for name, data in UI_PACKAGES.items():
        if subprocess.run([python, "-c", f"import {name}"], capture_output=True).returncode != 0:
            (folder / name / data).mkdir(parents=True, exist_ok=True)
            (folder / name / "__init__.py").write_text('"""Stub (titan-guide OOM check): no web UI served."""\n')
            if data == "static":
                (folder / name / data / "index.html").write_text("<html><body>stub</body></html>\n")
            stubbed.append(name)
    return stubbed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap-mib", type=int, default=768, help="CUDA memory cap of the server process (MiB)")
    parser.add_argument("--videos", type=int, nargs="+", default=[8, 32, 128, 256],
                        help="batch sizes tried in turn until one runs out of memory")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or .host/ComfyUI)")
    parser.add_argument("--python", help="the server's interpreter (default: $COMFYUI_PYTHON or .venv/bin/python)")
    parser.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(REPO_ROOT / "benchmarks" / "results" / "oom_gpu.json"))
    args = parser.parse_args()

    import torch
    if args.cpu_smoke:  # checks this script's own plumbing on a machine without a GPU (no OOM is expected)
        GpuHost.command = ComfyHost.command
    elif not torch.cuda.is_available():
        print("OOM CHECK FAILED: no CUDA device visible", file=sys.stderr)
        return 1
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "python": platform.python_version(),
              "cap_mib": args.cap_mib, "attempts": [], "passed": False}
    os.environ["TITAN_OOM_CAP_MIB"] = str(args.cap_mib)
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # the test host hides GPUs unless told otherwise
    with tempfile.TemporaryDirectory(prefix="titan_oom_check_") as workdir:
        work = Path(workdir)
        nodes = work / "custom_nodes"
        (nodes / "titan_oom_cap").mkdir(parents=True)
        (nodes / "titan_oom_cap" / "__init__.py").write_text(CAP_NODE)
        (nodes / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        host = GpuHost(work / "host", comfyui_dir=args.comfyui, python=args.python, custom_node_dirs=[nodes])
        stubs = work / "stubs"
        result["ui_stubs"] = ui_package_stubs(host.python, stubs)
        if result["ui_stubs"]:
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs), os.environ.get("PYTHONPATH")]))
        print(f"[oom] {result['device']}, torch {result['torch']}, server CUDA memory capped at {args.cap_mib} MiB"
              + (f"; UI packages stubbed: {', '.join(result['ui_stubs'])}" if result["ui_stubs"] else ""), flush=True)
        host.start_or_print_log()
        try:
            oom = None
            for videos in args.videos:
                started = time.perf_counter()
                try:
                    host.run(prompt(videos, args.steps, f"v{videos}"), timeout=540)
                    outcome, message = "ran", ""
                except ComfyExecutionError as error:
                    outcome = error.details.get("exception_type", "?")
                    message = error.details.get("exception_message", "")
                seconds = round(time.perf_counter() - started, 2)
                result["attempts"].append({"videos": videos, "outcome": outcome, "seconds": seconds,
                                           "message": message})
                print(f"[oom] {videos} video(s) x 16 frames: {outcome} in {seconds} s", flush=True)
                if outcome.endswith("OutOfMemoryError"):
                    oom = message
                    break
                if outcome != "ran":
                    print(f"[oom] unexpected error: {message}", flush=True)
                    break
            result["oom_message"] = oom
            result["widgets_named"] = {w: bool(oom and w in oom) for w in WIDGETS}
            result["says_gpu"] = bool(oom and "out of memory on the GPU" in oom)
            result["comfyui_unloaded_models"] = "Got an OOM, unloading all loaded models" in host.log_text()
            started = time.perf_counter()
            try:
                outputs = host.run(prompt(1, 2, "after_oom"), timeout=300)
                (path,) = host.output_files({"save": outputs["save"]}, key="latents")
                from safetensors.torch import load_file
                latent = load_file(str(path))["latent_tensor"]
                result["next_prompt"] = {"ok": bool(torch.isfinite(latent).all()), "shape": list(latent.shape),
                                         "seconds": round(time.perf_counter() - started, 2)}
            except Exception as error:  # noqa: BLE001 - reported, not raised: the JSON must be written
                result["next_prompt"] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        finally:
            result["server_log_tail"] = host.log_tail(40)
            host.stop()
    result["passed"] = bool(result.get("oom_message") and all(result.get("widgets_named", {0: 0}).values())
                            and result.get("says_gpu") and result.get("next_prompt", {}).get("ok"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"[oom] OOM message: {result.get('oom_message')}")
    print(f"[oom] widgets named: {result.get('widgets_named')}; ComfyUI unloaded its models: "
          f"{result.get('comfyui_unloaded_models')}; next prompt: {result.get('next_prompt')}")
    print(f"[oom] {'PASSED' if result['passed'] else 'FAILED'}; JSON: {args.json}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
