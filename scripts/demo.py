#!/usr/bin/env python3
"""Headless TITAN-Guide demo on the pack's embedded tiny video model, through a real ComfyUI host.

    .venv/bin/python scripts/demo.py            # ~2-4 min on a 2-core CPU
    .venv/bin/python scripts/demo.py --quick    # fewer videos and steps (~1 min)
    .venv/bin/python scripts/demo.py --write-workflow   # regenerate workflows/demo_embedded.json

Starts ComfyUI with the pack (testing/comfy_host.py), queues the graph of workflows/demo_embedded.json in API
format (the same node table builds both, see DEMO_NODES), shows per-node and per-step progress from the
websocket, and writes to outputs/demo/: unguided.webp and guided.webp (same seed, all videos one after the
other), loss_plot.png, guidance_report.txt. It then measures the change in the objective with the
independent judge classifier (models/titan_guide/embedded_judge.safetensors) on the saved frames:
probability of the target attribute and success rate, unguided vs guided. Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from guidance_core.run_config import GuidanceSettings  # noqa: E402

WORKFLOW_PATH = REPO_ROOT / "workflows" / "demo_embedded.json"
OUTPUT_DIR = REPO_ROOT / "outputs" / "demo"
FRAMES_PER_VIDEO = 16
JUDGE_FILENAME = "embedded_judge.safetensors"

# Full and quick settings; the workflow file holds the full ones.
FULL = {"videos": 8, "steps": 12}
QUICK = {"videos": 2, "steps": 6}
SEED = 7
TARGET = {"colour": "red", "shape": "any", "direction": "any", "speed": "any"}

SHIPPED = GuidanceSettings()  # the sampler node's shipped defaults
MAX_HF_RATIO = 1.5  # guided frames noisier than this (vs unguided) mean guidance damaged the videos

GUIDANCE = {  # TitanGuideSampler widgets after `denoise`, in the node's input order
    "sampler": "ddim", "eta": 0.0, "strength": SHIPPED.strength, "strength_schedule": SHIPPED.schedule,
    "lookahead": SHIPPED.lookahead, "guidance_start": SHIPPED.start, "guidance_end": SHIPPED.end, "iterations": 1,
    "optimizer": SHIPPED.optimizer, "max_grad_norm": 0.0,
    "per_frame": False, "decode_chunk_frames": 0, "frames_per_video": FRAMES_PER_VIDEO,
}

NOTE_TEXT = (
    "TITAN-Guide on the embedded tiny video model\n\n"
    "The pack ships a self-trained, UNCONDITIONAL video diffusion model (16 frames, 32x32 RGB, a coloured shape "
    "moving over a dim background) with its weights in models/titan_guide/ - nothing to download, runs on a CPU.\n\n"
    "Both samplers start from the same seed. The top one is unguided (strength 0: it only reports the "
    "objective); the bottom one is steered by TITAN-Guide (forward-mode gradient of the attribute classifier's "
    "loss, one JVP per step; gradient guess = the loss gradient at the denoised estimate) towards the attribute chosen in 'TITAN Attribute Objective' (here colour = red). "
    "Since the model has no prompt, any change of colour / shape / direction / speed is the guidance's doing.\n\n"
    "Outputs: two animated WEBPs (all videos of the batch one after another) and the guided run's loss plot. "
    "scripts/demo.py runs this graph headless and scores both with an independent judge classifier.")


def widget(name, value):
    """A (name, value) widget entry of DEMO_NODES."""
    return (name, value)


def _sampler(title, strength, pos):
    return {
        "type": "TitanGuideSampler", "title": title, "pos": pos, "size": [330, 630],
        "links": {"model": ("1", 0), "positive": ("1", 2), "negative": ("1", 3), "latent_image": ("2", 0),
                  "vae": ("1", 1), "objective": ("3", 0), "guess": ("13", 0)},
        "widgets": [widget("seed", SEED), widget("steps", FULL["steps"]), widget("cfg", 1.0),
                    widget("scheduler", "normal"), widget("denoise", 1.0),
                    *[widget(k, strength if k == "strength" else v) for k, v in GUIDANCE.items()]],
    }


# The demo graph: node id -> type, links {input: (source id, output slot)}, widgets in input order, layout.
DEMO_NODES = {
    "1": {"type": "TitanEmbeddedModelLoader", "pos": [40, 100], "size": [320, 130], "links": {},
          "widgets": [widget("unet_name", "embedded_unet.safetensors")]},
    "2": {"type": "TitanEmbeddedEmptyLatent", "pos": [40, 290], "size": [320, 60], "links": {},
          "widgets": [widget("videos", FULL["videos"])]},
    "3": {"type": "TitanAttributeObjective", "pos": [40, 410], "size": [320, 200], "links": {},
          "widgets": [widget("colour", TARGET["colour"]), widget("shape", TARGET["shape"]),
                      widget("direction", TARGET["direction"]), widget("speed", TARGET["speed"]),
                      widget("weight", 1.0), widget("classifier_name", "embedded_classifier.safetensors")]},
    "4": _sampler("Unguided (strength 0)", 0.0, [420, 100]),
    "5": _sampler("Guided: colour = red", SHIPPED.strength, [420, 790]),
    "6": {"type": "VAEDecode", "pos": [800, 100], "size": [210, 50], "links": {"samples": ("4", 0), "vae": ("1", 1)},
          "widgets": []},
    "7": {"type": "VAEDecode", "pos": [800, 790], "size": [210, 50], "links": {"samples": ("5", 0), "vae": ("1", 1)},
          "widgets": []},
    "8": {"type": "SaveAnimatedWEBP", "title": "Unguided videos", "pos": [1060, 100], "size": [320, 340],
          "links": {"images": ("6", 0)},
          "widgets": [widget("filename_prefix", "titan_demo/unguided"), widget("fps", 8.0), widget("lossless", True),
                      widget("quality", 100), widget("method", "default")]},
    "9": {"type": "SaveAnimatedWEBP", "title": "Guided videos", "pos": [1060, 790], "size": [320, 340],
          "links": {"images": ("7", 0)},
          "widgets": [widget("filename_prefix", "titan_demo/guided"), widget("fps", 8.0), widget("lossless", True),
                      widget("quality", 100), widget("method", "default")]},
    "10": {"type": "SaveImage", "title": "Guided loss per step", "pos": [800, 1190], "size": [420, 330],
           "links": {"images": ("5", 2)}, "widgets": [widget("filename_prefix", "titan_demo/loss_plot")]},
    "11": {"type": "PreviewAny", "title": "Guided report", "pos": [1240, 1190], "size": [420, 330],
           "links": {"source": ("5", 1)}, "widgets": []},
    "12": {"type": "PreviewAny", "title": "Unguided report", "pos": [1420, 100], "size": [420, 330],
           "links": {"source": ("4", 1)}, "widgets": []},
    # Sampled-gradient guess on all 16 frames (the classifier needs whole clips): V = the loss gradient at
    # the Tweedie estimate, through the codec and classifier only; the JVP then measures <grad f, V> through
    # the look-ahead. Measured: a single random tangent barely moves 98k-dimensional latents.
    "13": {"type": "TitanGradientGuess", "pos": [40, 670], "size": [320, 230], "links": {},
           "widgets": [widget("kind", "sampled_gradient"), widget("k", 1), widget("sampled_frames", 0),
                       widget("frame_choice", "even"), widget("frame_indices", ""), widget("expansion", "tile"),
                       widget("random_weight", 0.5)]},
}
# Output slots of the node types (UI links need the socket type).
OUTPUT_TYPES = {
    "TitanEmbeddedModelLoader": ["MODEL", "VAE", "CONDITIONING", "CONDITIONING"],
    "TitanEmbeddedEmptyLatent": ["LATENT"],
    "TitanAttributeObjective": ["TITAN_OBJECTIVE"],
    "TitanGuideSampler": ["LATENT", "STRING", "IMAGE"],
    "VAEDecode": ["IMAGE"],
    "TitanGradientGuess": ["TITAN_GUESS"],
}
OUTPUT_NAMES = {
    "TitanEmbeddedModelLoader": ["model", "vae", "positive", "negative"],
    "TitanEmbeddedEmptyLatent": ["latent"], "TitanAttributeObjective": ["objective"],
    "TitanGuideSampler": ["latent", "report", "loss_plot"], "VAEDecode": ["IMAGE"],
    "TitanGradientGuess": ["guess"],
}
NOTE_NODE_ID = 14
# Frontend-only node types (not in /object_info; the frontend never sends them to the server).
FRONTEND_ONLY_TYPES = ("Note", "MarkdownNote")
# Widgets followed by a frontend "control_after_generate" value in widgets_values.
SEED_WIDGETS = {("TitanGuideSampler", "seed")}
# Widgets the ComfyUI frontend (1.27) adds by itself after every declared widget, with values in widgets_values
# but no input on the server: "audioUI" (extension Comfy.AudioWidget, on these node types; the UI sends it in its
# prompt and the server ignores it) and one "upload" button (Comfy.UploadImage for an image/video upload combo,
# Comfy.UploadAudio for an audio_upload combo). A LoadImage saved by the UI has widgets_values [file, "image"], a
# LoadAudio [file, null, ""].
# Only LoadAudio's audio widget is saved: PreviewAudio and SaveAudio save no value for theirs (0.33.0's frontend,
# the browser test of ltx2_t2v_dover.json)
AUDIO_UI_NODE_TYPES = ("LoadAudio",)
MEDIA_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


def api_prompt(videos: int = FULL["videos"], steps: int = FULL["steps"], seed: int = SEED) -> dict:
    """The demo graph in API format ({id: {class_type, inputs}}), with videos / steps / seed overridden."""
    prompt = {}
    for node_id, node in DEMO_NODES.items():
        inputs = {name: [source, slot] for name, (source, slot) in node["links"].items()}
        for name, value in node["widgets"]:
            inputs[name] = value
        if node["type"] == "TitanEmbeddedEmptyLatent":
            inputs["videos"] = videos
        if node["type"] == "TitanGuideSampler":
            inputs["steps"], inputs["seed"] = steps, seed
        prompt[node_id] = {"class_type": node["type"], "inputs": inputs}
    return copy.deepcopy(prompt)


def ui_workflow() -> dict:
    """The demo graph in the frontend's workflow format (what users drag onto the canvas)."""
    links, nodes = [], []
    outgoing: dict = {}
    for node_id, node in DEMO_NODES.items():
        for input_name, (source, slot) in node["links"].items():
            link_id = len(links) + 1
            link_type = OUTPUT_TYPES[DEMO_NODES[source]["type"]][slot]
            links.append([link_id, int(source), slot, int(node_id), list(node["links"]).index(input_name), link_type])
            outgoing.setdefault((source, slot), []).append(link_id)
    for order, (node_id, node) in enumerate(DEMO_NODES.items()):
        widgets_values = []
        for name, value in node["widgets"]:
            widgets_values.append(value)
            if (node["type"], name) in SEED_WIDGETS:
                widgets_values.append("fixed")
        inputs = [{"name": name, "type": OUTPUT_TYPES[DEMO_NODES[source]["type"]][slot],
                   "link": next(l[0] for l in links if l[3] == int(node_id) and l[4] == index)}
                  for index, (name, (source, slot)) in enumerate(node["links"].items())]
        outputs = [{"name": out_name, "type": out_type, "links": outgoing.get((node_id, slot), []),
                    "slot_index": slot}
                   for slot, (out_name, out_type) in enumerate(zip(OUTPUT_NAMES.get(node["type"], []),
                                                                   OUTPUT_TYPES.get(node["type"], [])))]
        entry = {"id": int(node_id), "type": node["type"], "pos": node["pos"], "size": node["size"], "flags": {},
                 "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                 "properties": {"Node name for S&R": node["type"]}, "widgets_values": widgets_values}
        if "title" in node:
            entry["title"] = node["title"]
        nodes.append(entry)
    nodes.append({"id": NOTE_NODE_ID, "type": "Note", "pos": [40, 980], "size": [340, 420], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                  "widgets_values": [NOTE_TEXT], "color": "#432", "bgcolor": "#653"})
    return {
        "id": "7c1f3a52-5e0b-4f43-9a61-2f6d7e8a9b01", "revision": 0,
        "last_node_id": NOTE_NODE_ID, "last_link_id": len(links),
        "nodes": nodes, "links": links,
        "groups": [{"id": 1, "title": "Model, latent, objective", "bounding": [20, 0, 360, 920],
                    "color": "#3f789e", "font_size": 24, "flags": {}},
                   {"id": 2, "title": "Same seed: unguided vs TITAN-Guide", "bounding": [400, 0, 1460, 1540],
                    "color": "#8A8", "font_size": 24, "flags": {}}],
        "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [0, 0]}}, "version": 0.4,
    }


def frontend_only_widgets(node_type: str, info: dict) -> list:
    """Names of the widgets the frontend appends to a node of this type beyond its /object_info inputs."""
    required = info["input"].get("required", {})
    names = ["audioUI"] if node_type in AUDIO_UI_NODE_TYPES else []
    for name, spec in required.items():
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        is_combo = isinstance(spec[0], list) or spec[0] == "COMBO"
        if is_combo and (any(options.get(key) is True for key in MEDIA_UPLOAD_OPTIONS)
                         or (name == "audio" and options.get("audio_upload") is True)):
            names.append("upload")
            break  # the frontend adds one upload button per node
    return names


def workflow_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI workflow to API format the way the frontend does, using /object_info's input order."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        if node["type"] not in object_info:
            raise ValueError(f"node {node['id']} has type {node['type']!r}, which the server does not know")
        info = object_info[node["type"]]
        order = info.get("input_order", {})
        names = list(order.get("required", [])) + list(order.get("optional", []))
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        connected = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name in names:
            kind = specs[name][0]
            options = specs[name][1] if len(specs[name]) > 1 else {}
            widget_kinds = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")  # or a multi-type input's widget type
            is_widget = isinstance(kind, list) or kind in widget_kinds or \
                options.get("widgetType") in widget_kinds
            if name in connected:
                link = connected[name]
                inputs[name] = [str(link[1]), link[2]]
            elif is_widget:
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}) has too few widget values (at {name!r})")
                inputs[name] = values.pop(0)
            if is_widget and name not in connected and options.get("control_after_generate"):
                values.pop(0)
        # What is left can only be values of frontend-only widgets: none in files written by scripts/workflows.py,
        # all of them in a workflow saved by the UI (fewer when its last ones are not serialised).
        extras = frontend_only_widgets(node["type"], info)
        if len(values) > len(extras):
            raise ValueError(f"node {node['id']} ({node['type']}) has {len(values)} widget value(s) left after its "
                             f"inputs, more than its {len(extras)} frontend-only widget(s) {extras}: {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------
async def run_with_progress(host, prompt: dict, timeout: float) -> str:
    """Queue `prompt` with a websocket open and print node / step progress; returns the prompt id."""
    import aiohttp

    client_id = uuid.uuid4().hex
    started = time.monotonic()
    types = {node_id: node["class_type"] for node_id, node in prompt.items()}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{host.port}/ws?clientId={client_id}", heartbeat=30) as ws:
            prompt_id = host.queue(prompt, client_id=client_id)
            last_percent = {}
            while True:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    host.interrupt()
                    raise TimeoutError(f"the demo graph did not finish within {timeout:.0f} s (interrupted)")
                try:
                    message = await ws.receive(timeout=min(remaining, 5.0))
                except asyncio.TimeoutError:
                    if not host.is_running():
                        raise RuntimeError("ComfyUI exited while running the demo; log tail:\n" + host.log_tail(40))
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise RuntimeError("the websocket to ComfyUI closed during the demo")
                    continue  # binary preview frames
                event = json.loads(message.data)
                kind, data = event.get("type"), event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                elapsed = time.monotonic() - started
                if kind == "executing" and data.get("node") is not None:
                    node = data["node"]
                    print(f"[{elapsed:6.1f} s] node {node} ({types.get(node, '?')}) running", flush=True)
                elif kind == "progress":
                    node, value, maximum = data.get("node"), data.get("value", 0), data.get("max", 1) or 1
                    percent = int(100 * value / maximum)
                    if percent != last_percent.get(node):
                        last_percent[node] = percent
                        print(f"[{elapsed:6.1f} s]   node {node}: step {value}/{maximum} ({percent}%)", flush=True)
                elif kind == "execution_cached" and data.get("nodes"):
                    print(f"[{elapsed:6.1f} s] cached nodes: {', '.join(data['nodes'])}", flush=True)
                elif kind == "execution_error":
                    raise RuntimeError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                                       f"{data.get('exception_type')}: {data.get('exception_message')}")
                elif kind == "execution_interrupted":
                    raise RuntimeError("the demo run was interrupted")
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                     and data.get("prompt_id") == prompt_id):
                    print(f"[{elapsed:6.1f} s] graph finished", flush=True)
                    return prompt_id


def read_webp_videos(path: Path):
    """Frames of an animated WEBP as videos (N, 16, 3, 32, 32) float in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        frames = [np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0 for frame in ImageSequence.Iterator(image)]
    if len(frames) % FRAMES_PER_VIDEO:
        raise RuntimeError(f"{path} has {len(frames)} frames, not a multiple of {FRAMES_PER_VIDEO}")
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    return video.reshape(-1, FRAMES_PER_VIDEO, *video.shape[1:])


def judge_scores(videos, target: dict) -> dict:
    """Judge probability of each target value and whether the judge's top class is the target, per video."""
    import torch

    from embedded import load_classifier
    from embedded.world import ATTRIBUTES

    judge = load_classifier(REPO_ROOT / "models" / "titan_guide" / JUDGE_FILENAME)
    with torch.no_grad():
        logits = judge(videos)
    scores = {}
    for name, value in target.items():
        if value == "any":
            continue
        index = ATTRIBUTES[name].index(value)
        probabilities = logits[name].softmax(dim=1)
        scores[f"{name}={value}"] = {"probability": probabilities[:, index].tolist(),
                                     "hit": (probabilities.argmax(dim=1) == index).tolist()}
    return scores


def summarise(unguided: dict, guided: dict) -> list:
    """Lines comparing the judge's scores."""
    lines = []
    for key in guided:
        pu, pg = unguided[key]["probability"], guided[key]["probability"]
        hu, hg = unguided[key]["hit"], guided[key]["hit"]
        lines.append(f"judge p({key}) per video, unguided: " + ", ".join(f"{p:.3f}" for p in pu))
        lines.append(f"judge p({key}) per video, guided:   " + ", ".join(f"{p:.3f}" for p in pg))
        lines.append(f"mean judge p({key}): unguided {sum(pu) / len(pu):.3f} -> guided {sum(pg) / len(pg):.3f} "
                     f"(change {sum(pg) / len(pg) - sum(pu) / len(pu):+.3f})")
        lines.append(f"judge says {key}: unguided {sum(hu)}/{len(hu)} videos, guided {sum(hg)}/{len(hg)} videos")
    return lines


def save_picture(unguided, guided, path: Path, videos: int = 4, frames=(0, 5, 10, 15)) -> None:
    """PNG for the README: frames of the first videos, unguided (left) and guided (right), one video a row."""
    import numpy as np
    import torch
    from PIL import Image

    def strip(clip):
        tiles = [torch.nn.functional.pad(clip[f], (1, 1, 1, 1), value=1.0) for f in frames]
        return torch.cat(tiles, dim=2)

    count = min(videos, unguided.shape[0], guided.shape[0])
    rows = [torch.cat([strip(unguided[v]), torch.ones(3, 34, 8), strip(guided[v])], dim=2) for v in range(count)]
    image = (torch.cat(rows, dim=1).permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    picture = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST).save(path)


def run_demo(options) -> int:
    """Start the host, run the graph, collect outputs, score them; returns the exit code."""
    from testing.comfy_host import PACK_LINK_DIR, PACK_NAME, ComfyHost

    settings = QUICK if options.quick else FULL
    prompt = api_prompt(videos=settings["videos"], steps=settings["steps"], seed=options.seed)
    output_dir = Path(options.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="titan_demo_host_"))
    pack_link = PACK_LINK_DIR / PACK_NAME
    if not pack_link.is_dir() or pack_link.resolve() != REPO_ROOT:
        raise RuntimeError(f"{pack_link} does not link to {REPO_ROOT}: run `bash scripts/setup.sh` first")
    host = ComfyHost(workdir, custom_node_dirs=[PACK_LINK_DIR])
    print(f"starting ComfyUI with titan-guide (log: {host.log_path}) ...", flush=True)
    try:
        host.start()
        print(f"ComfyUI ready at {host.url} after {time.monotonic() - started:.1f} s; running "
              f"{settings['videos']} video(s) x {FRAMES_PER_VIDEO} frames, {settings['steps']} steps, seed "
              f"{options.seed}, target " + ", ".join(f"{k}={v}" for k, v in TARGET.items() if v != "any"),
              flush=True)
        prompt_id = asyncio.run(run_with_progress(host, prompt, options.timeout))
        outputs = host.wait(prompt_id, timeout=60)
        files = {}
        for node_id, name in (("8", "unguided.webp"), ("9", "guided.webp"), ("10", "loss_plot.png")):
            (source,) = host.output_files({node_id: outputs[node_id]})
            files[name] = output_dir / name
            shutil.copyfile(source, files[name])
        guided_report = outputs["11"]["text"][0]
        unguided_report = outputs["12"]["text"][0]
    except BaseException:
        print("----- ComfyUI log tail -----\n" + host.log_tail(60), file=sys.stderr)
        raise
    finally:
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    unguided_videos, guided_videos = read_webp_videos(files["unguided.webp"]), read_webp_videos(files["guided.webp"])
    unguided = judge_scores(unguided_videos, TARGET)
    guided = judge_scores(guided_videos, TARGET)
    from embedded.realism import realism_ratios
    ratios = realism_ratios(guided_videos, unguided_videos)
    summary = summarise(unguided, guided) + [
        f"realism, guided vs unguided (1.0 = as clean): high-frequency energy x{ratios['hf_ratio']:.2f}, "
        f"frame difference x{ratios['frame_diff_ratio']:.2f}"]
    report_path = output_dir / "guidance_report.txt"
    report_path.write_text("\n".join(["== judge (independent classifier, on the saved frames) ==", *summary, "",
                                      "== guided run ==", guided_report, "",
                                      "== unguided run (strength 0; loss reported only) ==", unguided_report]) + "\n",
                           encoding="utf-8")
    (output_dir / "judge_scores.json").write_text(json.dumps({"unguided": unguided, "guided": guided, **ratios},
                                                              indent=1), encoding="utf-8")
    files["guidance_report.txt"] = report_path
    print("\n".join(["", *summary, "", "outputs:", *(f"  {path}" for path in files.values()),
                     f"  {output_dir / 'judge_scores.json'}", f"total wall time {time.monotonic() - started:.1f} s"]),
          flush=True)
    if options.picture:
        save_picture(unguided_videos, guided_videos, Path(options.picture))
        print(f"  {options.picture}", flush=True)
    if ratios["hf_ratio"] > MAX_HF_RATIO:
        raise RuntimeError(f"the guided frames carry {ratios['hf_ratio']:.2f}x the unguided high-frequency energy "
                           f"(limit {MAX_HF_RATIO}): guidance damaged the videos; lower 'strength' or use the "
                           "'normalized_relative' optimizer")
    return 0


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"fewer videos and steps ({QUICK})")
    parser.add_argument("--seed", type=int, default=SEED, help="noise seed of both samplers")
    parser.add_argument("--output-dir", default=str(OUTPUT_DIR), help="where the outputs go")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for the graph")
    parser.add_argument("--picture", default=None,
                        help="also write a PNG of frames 0/5/10/15 of four videos, unguided | guided (the README's "
                             "docs/demo_guided_vs_unguided.png)")
    parser.add_argument("--write-workflow", action="store_true",
                        help=f"write {WORKFLOW_PATH.relative_to(REPO_ROOT)} from DEMO_NODES and exit")
    options = parser.parse_args(argv)
    if options.seed < 0:
        parser.error("--seed must be >= 0")
    if options.write_workflow:
        WORKFLOW_PATH.parent.mkdir(parents=True, exist_ok=True)
        WORKFLOW_PATH.write_text(json.dumps(ui_workflow(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {WORKFLOW_PATH}")
        return 0
    try:
        return run_demo(options)
    except Exception as error:  # noqa: BLE001 - the demo reports any failure and exits non-zero
        print(f"\nDEMO FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
