"""Shipped workflows in the real ComfyUI 0.33.0 host on a GPU, side by side with their baselines, dynamic VRAM on
and off.

`--workflows` (default the first): the SD1.5-based shipped workflows, each with full-size random-init weights built
by the project's own builders under the names the workflow expects:
  aesthetic_dover_animatediff  AnimateDiff + DOVER (objectives.dover.dover_full, DOVER.pth's layout, 56 M),
  audio_imagebind_animatediff  AnimateDiff + ImageBind audio (imagebind_huge with random init, the official file's
            layout, 1.2 B; the target is a 4 s chirp in input/target_audio.wav),
  style_clip_animatediff  AnimateDiff + CLIP style (ViT-H-14 as the Hugging Face clip_vision file, 632 M; the
            reference is a colour gradient in input/style_reference.png),
  sd15_image_titan  a plain SD1.5 image batch with the CLIP style objective (no motion module),
with the SD1.5 checkpoint (tests/tiny_checkpoints.py --full: the real 860 M-parameter UNet, CLIP-L, VAE; fp16) and,
for video workflows, the AnimateDiff v2 motion module (tests/tiny_motion_module.py: mm_sd_v15_v2's keys and
shapes). The CogVideoX workflows are not here: their text encoder (T5-XXL, 4.8 B) and transformer would be built and
written per run; benchmarks/paper_scale.py measures CogVideoX in the core. Each workflow is converted to a prompt
with the host's /object_info (scripts/demo.py's workflow_to_api, as the frontend does) and run as these methods:
  ksampler  the same graph with ComfyUI's KSampler in place of TitanGuideSampler (no guidance),
  titan     as shipped (TITAN-Guide defaults: forward-mode, sampled-gradient guess on 2 frames),
  titan_restarted  the same graph in another fresh host: run after `titan`, its first prompt is a restarted
            ComfyUI's, with the JVP attention kernels already in Triton's on-disk cache,
  titan_autotune  the same graph in a fresh host with TITAN_TRITON_AUTOTUNE=1 and its own empty Triton cache: the JVP
            attention kernel times every candidate tile per call class, as before the default tile (its first prompt
            against titan's shows what autotuning costs, its warm runs what it gains),
  titan_graph  the same graph in a host started with TITAN_CUDA_GRAPH=1 and --disable-cuda-malloc (the JVP
            replayed as a CUDA graph, checked once against the eager JVP; the pack refuses graphs under ComfyUI's
            default cudaMallocAsync allocator; the report's "forward mode" line says whether it ran),
  freedom   as shipped plus a TitanGuidanceMethod node set to FreeDoM (backprop through the denoiser),
  mpgd      the same with MPGD (manifold-preserving: backprop through the decoder and scorer only),
  exact     the same with the exact gradient (TITAN's look-ahead and update, G by backprop),
each in a fresh host per (dynamic VRAM mode, method): `seconds_first` is the time from queueing to the outputs in
that fresh host (models loaded from disk), `seconds_warm` the median of --warm-runs more runs of the same graph with
the next seeds (models already loaded; each run's time in `seconds_warm_runs`). `peak_gb` is the peak GPU memory nvidia-smi reports (sampled every 50 ms while the prompt runs: the whole
GPU, i.e. CUDA context, weights, allocator cache, activations; the machine runs nothing else); `report_peak_gb` is
the pack's report line (on CUDA torch.cuda.max_memory_allocated during sampling, on the CPU the process peak RSS; with
dynamic VRAM on, weights streamed by
comfy-aimdo may not show there). `model_calls` is the report's count (KSampler: the steps, one CFG-batched call each).

Each row: {"case", "workflow", "method", "dynamic_vram", "peak_gb", "report_peak_gb", "seconds_warm",
"seconds_first", "model_calls", "host"} (plus "error" if the row failed), and for TITAN rows `seconds_first_sampler` /
`seconds_warm_sampler` (the sampler node's own time from its report: the rest of a prompt is loading and the
other nodes), `triton_cache_entries` (files in Triton's on-disk kernel cache when the row's host started: 0 means
the first prompt compiled the JVP attention kernels), `forward_ad` (the report's attention-route / CUDA-graph
line) and `decode_chunk` (the report's frames per VAE call); titan_autotune's `autotune_choices` are the
autotuner's picks from its Triton cache. `--decode-chunks 16 8 4` runs one more warm prompt per value in the titan
row with `decode_chunk_frames` set (`decode_chunk_runs`: time and peaks against the automatic chunk). `--profile`
runs one more prompt in the titan and titan_graph rows, profiled (guidance_core/profiling.py), and keeps its summary
in the row (`profile`): on the CPU torch.profiler's phases and operators, on CUDA each phase's time between device
synchronisations and the allocated peak it raised (torch.profiler hung ComfyUI's prompt thread on an H200, CPU
activity alone too). `--dynamic-vram on|off` picks the mode(s) of ComfyUI
0.33 (off = --disable-dynamic-vram; on is 0.33's default on CUDA); hosts without the flag (0.3.x) run `off` only.

On the H200 (no internet): first, with internet, `bash benchmarks/gpu_prepare.sh` (the missing packages, the lean
ComfyUI 0.33.0 and ADE d8d163c archives into .gpu/), then run the command in docs/pending/host_gpu_command.txt,
carrying [".gpu"]. Workflows, then methods, run in the order given (default methods TITAN, KSampler, FreeDoM,
MPGD, exact, ...), each with dynamic VRAM on, then off; the JSON is rewritten after every row and no row starts past
--max-minutes (a prompt may overrun it by at most 2 minutes, then it is recorded as an error), so a cut run still
reports the rows it finished.

`--smoke`: CPU, 4 frames of 32x32, 2 steps, dynamic VRAM off, tiny SD1.5 UNet, tiny ImageBind and CLIP (the
objective tests' sizes, same layouts): checks the whole path (weights in the real layouts, host, workflow
conversion, the methods, the JSON) with no figures worth reading; tests/host/test_host_gpu_smoke.py runs it in CI
for the TITAN and KSampler rows of the DOVER workflow and the TITAN rows of the ImageBind and SD1.5 image
workflows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for extra in (REPO_ROOT / "tests" / "unit", REPO_ROOT / "tests", REPO_ROOT / "scripts", REPO_ROOT):
    sys.path.insert(0, str(extra))

from testing.comfy_host import ComfyHost  # noqa: E402

MOTION_MODULE = "mm_sd_v15_v2.ckpt"
# objective -> (models/ folder, weight file, input file or None): the names the shipped workflows' loaders ask for
OBJECTIVE_FILES = {
    "dover": ("dover", "DOVER.pth", None),
    "imagebind": ("imagebind", "imagebind_huge.pth", "target_audio.wav"),
    "clip": ("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "style_reference.png"),
}


@dataclasses.dataclass(frozen=True)
class Workflow:
    """A shipped SD1.5-based workflow the harness runs: its checkpoint name, objective, and whether it is an
    AnimateDiff video (frames = the latent batch) or a batch of images (the workflow's own batch)."""

    checkpoint: str
    objective: str
    video: bool


WORKFLOWS = {
    "aesthetic_dover_animatediff": Workflow("epicrealism_naturalSinRC1VAE.safetensors", "dover", True),
    "audio_imagebind_animatediff": Workflow("epicrealism_naturalSinRC1VAE.safetensors", "imagebind", True),
    "style_clip_animatediff": Workflow("epicrealism_naturalSinRC1VAE.safetensors", "clip", True),
    "sd15_image_titan": Workflow("v1-5-pruned-emaonly.safetensors", "clip", False),
}
DEFAULT_WORKFLOW = "aesthetic_dover_animatediff"
# ViT-H-14 (laion2B-s32B-b79K) as the Hugging Face CLIPVisionModelWithProjection file ComfyUI users have
CLIP_VISION_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
METHODS = ("titan", "ksampler", "freedom", "mpgd", "exact", "titan_restarted", "titan_autotune", "titan_graph")
ROW_ENV = {"titan_graph": {"TITAN_CUDA_GRAPH": "1"},  # the host inherits these; other rows get the defaults
           "titan_autotune": {"TITAN_TRITON_AUTOTUNE": "1",
                              "TRITON_CACHE_DIR": "{work}/triton_cache_autotune_{workflow}"}}
ROW_FLAGS = {"titan_graph": ["--disable-cuda-malloc"]}  # CUDA graphs need PyTorch's native allocator
BASELINES = {"freedom": "freedom", "mpgd": "mpgd", "exact": "exact_gradient"}  # row -> TitanGuidanceMethod method
VRAM_FLAGS = {"on": [], "off": ["--disable-dynamic-vram"]}


def build_weights(models: Path, comfyui: Path, smoke: bool, workflows: list[str],
                  tiny_base: Path | None = None) -> None:
    """Write the weight files `workflows` load under models/<folder>/: full size with random init (`smoke`: tiny
    ones in the same layouts), each file once."""
    started = time.monotonic()
    specs = [WORKFLOWS[name] for name in workflows]
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    base = None
    if smoke:
        base = tiny_base or models.parent / "tiny_sd15.safetensors"
        if not base.is_file():
            subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "tiny_checkpoints.py"), "--comfy-dir",
                            str(comfyui), "--out", str(base)], check=True,
                           env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    full = None  # full size, every workflow's checkpoint is the same SD1.5 file under its name: built once
    for checkpoint, video in sorted({(spec.checkpoint, spec.video) for spec in specs}):
        target = models / "checkpoints" / checkpoint
        if full is not None:
            target.symlink_to(full)
            continue
        write_checkpoint(target, comfyui, video, base)
        full = None if smoke else target
    if any(spec.video for spec in specs):
        import tiny_motion_module as tmm

        tmm.write_tiny_motion_module(models / "animatediff_models" / MOTION_MODULE, seed=0, version="v2")
    for objective in sorted({spec.objective for spec in specs}):
        folder, name, _ = OBJECTIVE_FILES[objective]
        (models / folder).mkdir(parents=True, exist_ok=True)
        write_objective_weights(objective, models / folder / name, smoke)
    print(f"[host_gpu] weights built in {time.monotonic() - started:.0f} s (smoke={smoke})", flush=True)


def write_checkpoint(target: Path, comfyui: Path, video: bool, tiny_base: Path | None) -> None:
    """The SD1.5 checkpoint: full size (fp16, tests/tiny_checkpoints.py --full), or for the smoke the tiny one,
    made AnimateDiff-compatible for video workflows."""
    if tiny_base is None:
        subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "tiny_checkpoints.py"), "--comfy-dir",
                        str(comfyui), "--out", str(target), "--full"],
                       check=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    elif video:  # the ADE-compatible tiny UNet with its CLIP and VAE
        import tiny_motion_module as tmm

        tmm.build_tiny_ade_sd15_checkpoint(comfyui, tiny_base, target, seed=0, python=sys.executable)
    else:
        shutil.copyfile(tiny_base, target)


def write_objective_weights(objective: str, target: Path, smoke: bool) -> None:
    """DOVER.pth, imagebind_huge.pth or the CLIP ViT-H-14 vision file in its real layout, random init (`smoke`: the
    objective tests' tiny sizes for ImageBind and CLIP; DOVER is full size either way, as before)."""
    import torch

    torch.manual_seed(0)
    if objective == "dover":
        from objectives.dover import dover_full

        torch.save(dover_full().state_dict(), target)
    elif objective == "imagebind":
        if smoke:
            from tiny_objectives import write_tiny_imagebind

            write_tiny_imagebind(target)
        else:
            from objectives.imagebind_audio import import_imagebind_model

            torch.save(import_imagebind_model().imagebind_huge(pretrained=False).state_dict(), target)
    elif smoke:
        from tiny_objectives import write_tiny_clip_vision

        write_tiny_clip_vision(target)
    else:
        from safetensors.torch import save_file
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION_H14))
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(target))


def write_inputs(input_dir: Path, workflow: str) -> None:
    """The input file the workflow's LoadAudio / LoadImage names: a 4 s chirp (16 kHz mono), or a 512x384 colour
    gradient as the style image."""
    _, _, name = OBJECTIVE_FILES[WORKFLOWS[workflow].objective]
    if name is None:
        return
    input_dir.mkdir(parents=True, exist_ok=True)
    if name.endswith(".wav"):
        from tiny_objectives import write_wav

        write_wav(input_dir / name, seconds=4.0, sample_rate=16000, channels=1)
    else:
        import numpy as np
        from PIL import Image

        ramp = np.linspace(0, 255, 512, dtype=np.uint8)
        image = np.stack([np.broadcast_to(ramp[None, :], (384, 512)), np.broadcast_to(ramp[::-1][None, :], (384, 512)),
                          np.broadcast_to(np.linspace(0, 255, 384, dtype=np.uint8)[:, None], (384, 512))], axis=-1)
        Image.fromarray(np.ascontiguousarray(image)).save(input_dir / name)


def empty_frontend(root: Path) -> Path:
    """A stand-in frontend folder (--front-end-root): the benchmark talks to the API only."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<!doctype html><title>titan-guide host_gpu</title>\n", encoding="utf-8")
    return root


def prompts(object_info: dict, frames: int, size: int, steps: int, seed: int, smoke: bool = False,
            workflow: str = DEFAULT_WORKFLOW) -> dict:
    """Method name -> API prompt of the shipped `workflow` (see the module docstring). Video workflows get
    `frames` latent frames; the image workflow keeps its own batch."""
    from demo import workflow_to_api

    spec = WORKFLOWS[workflow]
    shipped = REPO_ROOT / "workflows" / f"{workflow}.json"
    base = workflow_to_api(json.loads(shipped.read_text(encoding="utf-8")), object_info)
    by_type = {}
    for node_id, node in base.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    (latent,), (sampler,) = by_type["EmptyLatentImage"], by_type["TitanGuideSampler"]
    base[latent]["inputs"].update(width=size, height=size, **({"batch_size": frames} if spec.video else {}))
    base[sampler]["inputs"].update(steps=steps, seed=seed)
    if base[sampler]["inputs"].get("frames_per_video"):  # the shipped value must divide the latent batch
        base[sampler]["inputs"]["frames_per_video"] = frames
    if smoke and spec.video:  # the tiny ADE checkpoint's one level fits only the 320-wide temporal modules
        _smoke_motion_blocks(base, by_type, object_info)
    rows = {"titan": base, "titan_graph": base, "titan_restarted": base, "titan_autotune": base}

    # KSampler instead of TitanGuideSampler; nodes fed by its report / loss plot go.
    stock = json.loads(json.dumps(base))
    titan = stock[sampler]["inputs"]
    stock[sampler] = {"class_type": "KSampler", "inputs": {
        "model": titan["model"], "positive": titan["positive"], "negative": titan["negative"],
        "latent_image": titan["latent_image"], "seed": seed, "steps": steps, "cfg": titan["cfg"],
        "sampler_name": titan.get("sampler", "ddim"), "scheduler": titan["scheduler"], "denoise": titan["denoise"]}}
    if stock[sampler]["inputs"]["sampler_name"] not in object_info["KSampler"]["input"]["required"]["sampler_name"][0]:
        stock[sampler]["inputs"]["sampler_name"] = "ddim"
    for node_id in [n for n, node in stock.items()
                    if any(isinstance(v, list) and v[:1] == [sampler] and v[1] != 0 for v in node["inputs"].values())]:
        del stock[node_id]
    rows["ksampler"] = stock

    # Baselines: the method node with its defaults and the row's method, into the sampler's `method` input.
    for row, method in BASELINES.items():
        graph = json.loads(json.dumps(base))
        graph[f"{row}_method"] = with_defaults(object_info, "TitanGuidanceMethod", method=method)
        graph[sampler]["inputs"]["method"] = [f"{row}_method", 0]
        rows[row] = graph
    return rows


def with_decode_chunk(prompt: dict, frames: int) -> dict:
    """`prompt` with the guided sampler's decode_chunk_frames set to `frames` (0: automatic)."""
    (sampler,) = [node for node in prompt.values() if node["class_type"] == "TitanGuideSampler"]
    sampler["inputs"]["decode_chunk_frames"] = frames
    return prompt


def with_defaults(object_info: dict, class_type: str, **given) -> dict:
    """An API node of `class_type`: its widgets' defaults, then `given`."""
    spec = object_info[class_type]["input"]
    inputs = {name: options[1]["default"] for group in ("required", "optional")
              for name, options in spec.get(group, {}).items()
              if len(options) > 1 and isinstance(options[1], dict) and "default" in options[1]}
    return {"class_type": class_type, "inputs": dict(inputs, **given)}


def _smoke_motion_blocks(prompt: dict, by_type: dict, object_info: dict) -> None:
    """Smoke runs only: the temporal modules the tiny ADE checkpoint has no width for get effect 0 through ADE's
    per-block keyframe (as tests/host/test_animatediff.py's ade_models does)."""
    import tiny_motion_module as tmm

    prompt["smoke_effect_off"] = with_defaults(object_info, "ADE_MultivalDynamic", float_val=0.0)
    prompt["smoke_block_off"] = with_defaults(object_info, "ADE_ADBlockCombo", effect=["smoke_effect_off", 0])
    prompt["smoke_per_block"] = with_defaults(object_info, "ADE_PerBlock_SD15_MidLevel",
                                              **{name: ["smoke_block_off", 0] for name in tmm.INACTIVE_BLOCKS})
    prompt["smoke_keyframe"] = with_defaults(object_info, "ADE_AnimateDiffKeyframe", start_percent=0.0,
                                             per_block_replace=["smoke_per_block", 0])
    for node_id in by_type["ADE_ApplyAnimateDiffModelSimple"]:
        prompt[node_id]["inputs"]["ad_keyframes"] = ["smoke_keyframe", 0]


class GpuMemorySampler:
    """Peak `nvidia-smi` memory.used (MiB, GPU 0) while in the `with` block; None where nvidia-smi is absent."""

    def __init__(self, period: float = 0.05):
        self.period, self.peak, self._stop, self._thread = period, None, threading.Event(), None

    def _read(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _loop(self):
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def report_value(outputs: dict, pattern: str):
    """The first match of `pattern` (one group, a number) in the pack's report (a PreviewAny output), or None."""
    for node_output in outputs.values():
        for text in node_output.get("text", []):
            match = re.search(pattern, str(text))
            if match:
                return float(match.group(1))
    return None


def report_line(outputs: dict, prefix: str) -> str | None:
    """The rest of the report line starting with `prefix`, or None."""
    for node_output in outputs.values():
        for text in node_output.get("text", []):
            match = re.search(rf"^{re.escape(prefix)}(.*)$", str(text), re.MULTILINE)
            if match:
                return match.group(1).strip()
    return None


def set_row_env(method: str, defaults: dict, work: Path, workflow: str = DEFAULT_WORKFLOW) -> None:
    """The environment a row's host inherits: ROW_ENV's values for this row, `defaults` for the rest (None: unset)."""
    for name, default in defaults.items():
        value = ROW_ENV.get(method, {}).get(name, default)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value.format(work=work, workflow=workflow)


def autotune_choices(cache: Path) -> list:
    """The autotuner's results in a Triton cache folder (`cache_results=True` writes one JSON per tuned key)."""
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(cache.rglob("*.autotune.json"))]


def triton_cache_entries() -> int:
    """Files in Triton's on-disk kernel cache (TRITON_CACHE_DIR or ~/.triton/cache)."""
    folder = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def run_prompt(host: ComfyHost, prompt: dict, timeout: float) -> dict:
    """Queue one prompt; seconds to its outputs, peak GPU memory, the report's peak and model calls."""
    with GpuMemorySampler() as memory:
        started = time.monotonic()
        outputs = host.run(prompt, timeout=timeout)
        seconds = time.monotonic() - started
    torch_peak_mib = report_value(outputs, r"peak memory: ([\d.]+) MiB")
    calls = report_value(outputs, r"model calls: (\d+)")
    return {"seconds": round(seconds, 2), "peak_gb": None if memory.peak is None else round(memory.peak / 1024, 2),
            "report_peak_gb": None if torch_peak_mib is None else round(torch_peak_mib / 1024, 2),
            "model_calls": None if calls is None else int(calls),
            "sampler_seconds": report_value(outputs, r"time: ([\d.]+) s"), "forward_ad": report_line(outputs, "forward mode:"),
            "decode_chunk": report_line(outputs, "decode chunk:")}


def host_version(comfyui: Path) -> str:
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", (comfyui / "comfyui_version.py").read_text(encoding="utf-8"))
    return match.group(1) if match else "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=REPO_ROOT / ".host" / "ComfyUI", help="ComfyUI 0.33.0 folder")
    parser.add_argument("--packs", type=Path, default=REPO_ROOT / ".host" / "custom_nodes_vendor",
                        help="folder holding ComfyUI-AnimateDiff-Evolved")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workflows", nargs="+", choices=list(WORKFLOWS), default=[DEFAULT_WORKFLOW],
                        help="shipped workflows to run, each with every --methods row")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--dynamic-vram", nargs="+", choices=list(VRAM_FLAGS), default=list(VRAM_FLAGS),
                        help="ComfyUI 0.33's dynamic VRAM: on (its CUDA default), off (--disable-dynamic-vram)")
    parser.add_argument("--max-minutes", type=float, default=8.0, help="start no new row past this budget")
    parser.add_argument("--warm-runs", type=int, default=3, help="warm runs per row (their median is seconds_warm)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "host_gpu.json")
    parser.add_argument("--smoke", action="store_true", help="CPU, 4 frames 32x32, 2 steps, tiny UNet, VRAM off")
    parser.add_argument("--tiny-base", type=Path, help="--smoke: reuse this tiny SD1.5 checkpoint (tests' cache)")
    parser.add_argument("--profile", action="store_true", help="one more profiled prompt per TITAN row")
    parser.add_argument("--decode-chunks", type=int, nargs="*", default=[],
                        help="the titan row also runs one warm prompt per value with decode_chunk_frames set to it "
                             "(time and peak against the automatic chunk: `decode_chunk_runs`)")
    parser.add_argument("--cpu", action="store_true", help="full-size weights on the CPU (operator counts of the "
                        "real architecture for --profile at a small --size / --frames; times are the CPU's)")
    options = parser.parse_args(argv)
    if options.smoke:
        options.frames, options.size, options.steps, options.dynamic_vram, options.warm_runs = 4, 32, 2, ["off"], 1
    if options.cpu:
        options.dynamic_vram = ["off"]
    if not (options.comfyui / "main.py").is_file():
        parser.error(f"{options.comfyui} is not a ComfyUI folder")
    if not (options.packs / "ComfyUI-AnimateDiff-Evolved").is_dir():
        parser.error(f"{options.packs} holds no ComfyUI-AnimateDiff-Evolved")
    if min(options.frames, options.size, options.steps, options.warm_runs) < 1 or options.size % 8:
        parser.error("frames, steps and warm runs must be >= 1 and size a positive multiple of 8")
    version = host_version(options.comfyui)
    if version.startswith("0.3.") and "on" in options.dynamic_vram:
        print(f"[host_gpu] ComfyUI {version} has no dynamic VRAM: running 'off' only", flush=True)
        options.dynamic_vram = ["off"]
    budget_end = time.monotonic() + 60 * options.max_minutes

    work = Path(tempfile.mkdtemp(prefix="titan_host_gpu_"))
    build_weights(work / "models", options.comfyui, options.smoke, options.workflows, options.tiny_base)
    (work / "pack").mkdir()
    (work / "pack" / "titan-guide").symlink_to(REPO_ROOT)
    run = RunContext(options, work, version, budget_end, empty_frontend(work / "frontend"),
                     defaults={"TITAN_CUDA_GRAPH": "0", "TITAN_TRITON_AUTOTUNE": "0",
                               "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR")})
    results = {"host": version, "workflows": options.workflows, "device": None, "rows": []}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    failed = False
    for workflow in options.workflows:
        batch = f"{options.frames}x" if WORKFLOWS[workflow].video else ""
        case = f"{workflow} {batch}{options.size}x{options.size} {options.steps} steps"
        for method in options.methods:
            for vram in options.dynamic_vram:
                row = {"case": case, "workflow": workflow, "method": method, "dynamic_vram": vram, "host": version}
                if time.monotonic() > budget_end:
                    row["skipped"] = "time budget"
                else:
                    failed |= not run_row(run, row, results)
                results["rows"].append(row)
                options.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
                print(f"[host_gpu] {json.dumps(row)}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    print(f"\nComfyUI {version} on {results['device']}")
    print(f"{'case':48} {'method':15} {'VRAM':4} {'first s':>8} {'warm s':>8} {'peak GB':>8} {'report GB':>9} "
          f"{'calls':>6}")
    for row in results["rows"]:
        head = f"{row['case']:48} {row['method']:15} {row['dynamic_vram']:4}"
        if "seconds_warm" not in row:
            print(f"{head} {(row.get('error') or row.get('skipped') or '').splitlines()[0][:200]}")
            continue
        print(f"{head} {row['seconds_first']:8.1f} {row['seconds_warm']:8.1f} {row['peak_gb']!s:>8} "
              f"{row['report_peak_gb']!s:>9} {row['model_calls']!s:>6}")
    print(f"JSON: {options.out}")
    return 1 if failed else 0


@dataclasses.dataclass
class RunContext:
    """What every row of one harness run shares."""

    options: argparse.Namespace
    work: Path
    version: str
    budget_end: float
    frontend: Path
    defaults: dict


def run_row(run: RunContext, row: dict, results: dict) -> bool:
    """One (workflow, method, VRAM mode) row in a fresh host: first prompt, warm runs, and for TITAN rows the
    extras asked for; fills `row` (an "error" on failure) and returns whether it ran."""
    options, work, workflow, method, vram = run.options, run.work, row["workflow"], row["method"], row["dynamic_vram"]
    extra = ["--front-end-root", str(run.frontend), *ROW_FLAGS.get(method, [])] + \
        ([] if run.version.startswith("0.3.") else VRAM_FLAGS[vram])
    set_row_env(method, run.defaults, work, workflow)
    os.environ["TITAN_PROFILE_DIR"] = str(work / f"profile_{workflow}_{vram}_{method}")
    titan_row = method.startswith("titan")
    if titan_row:
        row["triton_cache_entries"] = triton_cache_entries()
    host = ComfyHost(work / f"host_{workflow}_{vram}_{method}", comfyui_dir=options.comfyui, python=sys.executable,
                     custom_node_dirs=[work / "pack", options.packs], cpu=options.smoke or options.cpu,
                     extra_args=extra)
    host.prepare()
    for folder in (work / "models").iterdir():
        for weight in folder.iterdir():
            (host.models_dir / folder.name / weight.name).symlink_to(weight)
    write_inputs(host.input_dir, workflow)

    def graph(seed: int) -> dict:
        return prompts(info, options.frames, options.size, options.steps, seed, options.smoke, workflow)[method]

    ok = True
    try:
        host.start()
        stats = host.get_json("/system_stats")
        results["device"] = results["device"] or stats.get("devices", [{}])[0].get("name")
        left = lambda: max(60.0, run.budget_end - time.monotonic() + 120)  # noqa: E731
        info = host.object_info()
        first = run_prompt(host, graph(42), timeout=left())
        warm_runs = [run_prompt(host, graph(43 + i), timeout=left()) for i in range(options.warm_runs)]
        warm = warm_runs[-1]
        peaks = [p for p in (first["peak_gb"], *(w["peak_gb"] for w in warm_runs)) if p is not None]
        row.update(peak_gb=max(peaks) if peaks else None, report_peak_gb=warm["report_peak_gb"],
                   seconds_warm=statistics.median(w["seconds"] for w in warm_runs),
                   seconds_warm_runs=[w["seconds"] for w in warm_runs], seconds_first=first["seconds"],
                   model_calls=options.steps if method == "ksampler" else warm["model_calls"])
        row["vram_log"] = [line.strip() for line in host.log_text().splitlines()
                           if "vram" in line.lower()][:6]  # what ComfyUI says about its VRAM mode
        if titan_row:
            sampler_runs = [w["sampler_seconds"] for w in warm_runs]
            row.update(seconds_first_sampler=first["sampler_seconds"], forward_ad=warm["forward_ad"],
                       decode_chunk=warm["decode_chunk"],
                       seconds_warm_sampler=None if None in sampler_runs else statistics.median(sampler_runs))
        for chunk in options.decode_chunks if method == "titan" else ():
            result = run_prompt(host, with_decode_chunk(graph(43), chunk), timeout=left())
            row.setdefault("decode_chunk_runs", []).append(dict(result, decode_chunk_frames=chunk))
            print(f"[host_gpu] decode chunk {chunk}: {json.dumps(result)}", flush=True)
        if method in ("titan", "titan_graph") and options.profile:  # restarted / autotune: titan's prompts
            folder = Path(os.environ["TITAN_PROFILE_DIR"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "profile_next").touch()
            # on CUDA only synchronised phases (a profiled prompt past twice the slowest warm run has hung);
            # torch.profiler on the CPU runs a prompt at up to 2.5x its time
            slack = 5 if options.smoke or options.cpu else 2
            run_prompt(host, graph(99), timeout=min(left(), slack * max(w["seconds"] for w in warm_runs) + 60))
            row["profile"] = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
            print(f"[host_gpu] profile of one warm {method} run:\n" + (folder / "profile.txt").read_text(), flush=True)
    except Exception as error:  # one row failing (OOM, ...) is a result; the others still run
        ok = False
        row["error"] = f"{type(error).__name__}: {str(error)[:2000]}"
        print(f"[host_gpu] {workflow}/{method}/{vram} failed: {str(error).splitlines()[0][:500]}", flush=True)
        print(host.log_tail(60), flush=True)
    finally:
        host.stop()
    if method == "titan_autotune":  # what the autotuner picked per call class (its cache is removed after the run)
        row["autotune_choices"] = autotune_choices(Path(os.environ["TRITON_CACHE_DIR"]))
    return ok


if __name__ == "__main__":
    sys.exit(main())
