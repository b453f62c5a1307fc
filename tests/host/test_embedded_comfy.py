"""The embedded tiny video model inside a real ComfyUI host: loader, core KSampler, guidance, demo, workflow.

One host (this pack only, no vendored packs: faster start) serves the module. Judged with the independent
judge classifier (models/titan_guide/embedded_judge.safetensors), never the guiding one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from testing.comfy_host import PACK_LINK_DIR, REPO_ROOT, ComfyExecutionError, ComfyHost, ComfyValidationError

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import demo  # noqa: E402

from embedded import codec, load_classifier  # noqa: E402

FRAMES = 16
JUDGE = REPO_ROOT / "models" / "titan_guide" / "embedded_judge.safetensors"


@pytest.fixture(scope="module")
def embedded_host():
    """A ComfyUI server with only titan-guide loaded."""
    with tempfile.TemporaryDirectory(prefix="titan_embedded_host_") as workdir:
        host = ComfyHost(workdir, custom_node_dirs=[PACK_LINK_DIR])
        host.start_or_print_log()
        yield host
        host.stop()


@pytest.fixture(scope="module")
def judge():
    """The evaluation-only judge classifier."""
    return load_classifier(JUDGE)


def saved_latent(host, outputs, node):
    """Tensor written by a SaveLatent node."""
    (path,) = host.output_files({node: outputs[node]}, key="latents")
    return load_file(str(path))["latent_tensor"]


def saved_frames(host, outputs, node) -> torch.Tensor:
    """Frames written by a SaveImage node, (N, 3, H, W) in [0, 1], in batch order."""
    paths = sorted(host.output_files({node: outputs[node]}))
    return torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
                                      for p in paths])).permute(0, 3, 1, 2)


def test_loader_gives_a_model_core_ksampler_samples_and_an_exact_codec_vae(embedded_host, judge):
    prompt = {
        "load": {"class_type": "TitanEmbeddedModelLoader", "inputs": {"unet_name": "embedded_unet.safetensors"}},
        "latent": {"class_type": "TitanEmbeddedEmptyLatent", "inputs": {"videos": 2}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["load", 0], "positive": ["load", 2], "negative": ["load", 3], "latent_image": ["latent", 0],
            "seed": 3, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["load", 1]}},
        "save_images": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "emb"}},
        "save_latent": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "emb"}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["decode", 0], "vae": ["load", 1]}},
        "save_encoded": {"class_type": "SaveLatent", "inputs": {"samples": ["encode", 0],
                                                               "filename_prefix": "emb_re"}},
    }
    outputs = embedded_host.run(prompt, timeout=120)
    latent = saved_latent(embedded_host, outputs, "save_latent")
    assert latent.shape == (2 * FRAMES, 12, 16, 16)
    assert torch.isfinite(latent).all()
    frames = saved_frames(embedded_host, outputs, "save_images")
    assert frames.shape == (2 * FRAMES, 3, 32, 32)

    # VAEDecode is the exact codec (up to 8-bit PNG rounding and the IMAGE clamp to [0, 1]).
    reference = codec.decode(latent.float()).reshape(2 * FRAMES, 3, 32, 32)
    assert (frames - reference.clamp(0, 1)).abs().max() < 1.0 / 255 + 1e-4
    # VAEEncode inverts it exactly where nothing was clamped.
    encoded = saved_latent(embedded_host, outputs, "save_encoded")
    inside = ((reference > 0) & (reference < 1)).all(dim=1, keepdim=True)
    inside = torch.nn.functional.pixel_unshuffle(inside.float(), 2).bool().all(dim=1, keepdim=True).expand_as(latent)
    assert inside.float().mean() > 0.95
    assert torch.allclose(encoded[inside], latent.float()[inside], atol=1e-4)

    # A sample of the trained model through ComfyUI's own schedule is a clear clip of the world: the judge is
    # confident about its colour (a broken schedule, timestep or prediction type gives grey noise instead).
    with torch.no_grad():
        colour = judge(frames.reshape(2, FRAMES, 3, 32, 32))["colour"].softmax(dim=1)
    assert (colour.max(dim=1).values > 0.8).all(), colour


@pytest.mark.host_compat
def test_titan_guidance_with_the_attribute_objective_raises_the_judges_probability(embedded_host, judge):
    prompt = demo.api_prompt(videos=2, steps=6, seed=11)
    outputs = embedded_host.run(prompt, timeout=180)
    (unguided_path,) = embedded_host.output_files({"8": outputs["8"]})
    (guided_path,) = embedded_host.output_files({"9": outputs["9"]})
    unguided = demo.read_webp_videos(unguided_path)
    guided = demo.read_webp_videos(guided_path)
    assert unguided.shape == guided.shape == (2, FRAMES, 3, 32, 32)
    red = 0
    with torch.no_grad():
        p_unguided = judge(unguided)["colour"].softmax(dim=1)[:, red]
        p_guided = judge(guided)["colour"].softmax(dim=1)[:, red]
    assert p_guided.mean() > p_unguided.mean() + 0.5, (p_unguided, p_guided)
    assert (p_guided > 0.5).all(), p_guided
    # The guided report shows the loss falling below the unguided run's at the last guided step.
    guided_report, unguided_report = outputs["11"]["text"][0], outputs["12"]["text"][0]
    def last_loss(report):
        rows = [line.split() for line in report.splitlines() if line[:1].isdigit()]
        return float(rows[-1][3])
    assert last_loss(guided_report) < last_loss(unguided_report)


def test_pixel_frame_interpolation_runs_on_the_embedded_model_and_pulls_the_end_frames(embedded_host):
    """Pixel keyframes on the embedded model: the codec's decoded Tweedie estimates overshoot [0, 1] early in
    sampling, which the objective must accept here; the first and last frames move towards the keyframes."""
    from objectives.frame_interpolation import FrameInterpolationLoss

    def build(strength: float, tag: str) -> dict:
        graph = {
            "load": {"class_type": "TitanEmbeddedModelLoader", "inputs": {"unet_name": "embedded_unet.safetensors"}},
            "latent": {"class_type": "TitanEmbeddedEmptyLatent", "inputs": {"videos": 1}},
            "red": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                           "color": 0xFF0000}},
            "blue": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1,
                                                            "color": 0x0000FF}},
            "keys": {"class_type": "ImageBatch", "inputs": {"image1": ["red", 0], "image2": ["blue", 0]}},
            "objective": {"class_type": "TitanFrameInterpolationObjective", "inputs": {
                "keyframes": ["keys", 0], "frame_indices": "0, 15", "space": "pixels", "weight": 1.0}},
            "guess": {"class_type": "TitanGradientGuess", "inputs": {
                "kind": "sampled_gradient", "k": 1, "sampled_frames": 0, "frame_choice": "even",
                "frame_indices": "", "expansion": "tile", "random_weight": 0.5}},
            "sampler": {"class_type": "TitanGuideSampler", "inputs": {
                "model": ["load", 0], "positive": ["load", 2], "negative": ["load", 3], "latent_image": ["latent", 0],
                "vae": ["load", 1], "objective": ["objective", 0], "guess": ["guess", 0], "seed": 5, "steps": 6,
                "cfg": 1.0, "scheduler": "normal", "denoise": 1.0, "sampler": "ddim", "eta": 0.0,
                "strength": strength, "strength_schedule": "constant", "lookahead": 0, "guidance_start": 0.0,
                "guidance_end": 1.0, "iterations": 1, "optimizer": "adam_per_step", "max_grad_norm": 0.0,
                "per_frame": False, "decode_chunk_frames": 0, "frames_per_video": FRAMES}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["load", 1]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                           "filename_prefix": f"embedded_interp/{tag}"}},
            "report": {"class_type": "PreviewAny", "inputs": {"source": ["sampler", 1]}},
        }
        return graph

    keyframes = torch.zeros(2, 32, 32, 3)
    keyframes[0, ..., 0] = 1
    keyframes[1, ..., 2] = 1
    loss = FrameInterpolationLoss(keyframes, indices=[0, FRAMES - 1])
    errors = {}
    for tag, strength in (("unguided", 0.0), ("guided", 0.3)):
        outputs = embedded_host.run(build(strength, tag), timeout=300)
        report = outputs["report"]["text"][0]
        assert "guided entries: 6, skipped (non-finite loss or gradient): 0" in report, report
        frames = saved_frames(embedded_host, outputs, "save")
        assert frames.shape == (FRAMES, 3, 32, 32)
        errors[tag] = float(loss(frames.permute(0, 2, 3, 1)[None].permute(0, 1, 4, 2, 3)))
    assert errors["guided"] < 0.5 * errors["unguided"], errors


def test_attribute_objective_without_targets_is_a_clear_error(embedded_host):
    prompt = demo.api_prompt(videos=1, steps=2)
    prompt["3"]["inputs"]["colour"] = "any"
    with pytest.raises(Exception, match="choose at least one target"):
        embedded_host.run(prompt, timeout=60)
    prompt["3"]["inputs"]["colour"] = "purple"  # refused by validation or by the objective, naming the value
    with pytest.raises((ComfyValidationError, ComfyExecutionError), match="purple"):
        embedded_host.run(prompt, timeout=60)


@pytest.mark.host_compat
def test_demo_workflow_file_matches_object_info_and_the_demo_graph(embedded_host):
    workflow = json.loads((REPO_ROOT / "workflows" / "demo_embedded.json").read_text(encoding="utf-8"))
    assert workflow == json.loads(json.dumps(demo.ui_workflow())), "regenerate with scripts/demo.py --write-workflow"
    info = embedded_host.object_info()
    types = {node["type"] for node in workflow["nodes"]}
    assert "Note" in types
    for node_type in types - set(demo.FRONTEND_ONLY_TYPES):
        assert node_type in info, node_type

    converted = demo.workflow_to_api(workflow, info)
    assert converted == demo.api_prompt()

    for node_id, node in converted.items():
        spec = info[node["class_type"]]["input"]
        specs = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, value in node["inputs"].items():
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            if isinstance(value, list):  # a link: the source's output type must be what the input takes
                source = converted[value[0]]["class_type"]
                assert kind == "*" or info[source]["output"][value[1]] == kind, (node_id, name)
            elif isinstance(kind, list) or kind == "COMBO":
                choices = kind if isinstance(kind, list) else options["options"]
                assert value in choices, (node_id, name, value)
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (node_id, name)
                assert options.get("min", -np.inf) <= value <= options.get("max", np.inf), (node_id, name, value)
                if kind == "INT":
                    assert isinstance(value, int), (node_id, name)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), (node_id, name)
            elif kind == "STRING":
                assert isinstance(value, str), (node_id, name)
    # The seed widgets carry the frontend's control_after_generate value right after them.
    for node in workflow["nodes"]:
        if node["type"] == "TitanGuideSampler":
            assert node["widgets_values"][1] in ("fixed", "increment", "decrement", "randomize")


def test_demo_script_runs_end_to_end_in_quick_mode(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--quick", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("unguided.webp", "guided.webp", "loss_plot.png", "guidance_report.txt", "judge_scores.json"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert demo.read_webp_videos(tmp_path / "guided.webp").shape == (demo.QUICK["videos"], FRAMES, 3, 32, 32)
    assert "mean judge p(colour=red)" in result.stdout and "step 6/6" in result.stdout
    scores = json.loads((tmp_path / "judge_scores.json").read_text())
    assert np.mean(scores["guided"]["colour=red"]["probability"]) > \
        np.mean(scores["unguided"]["colour=red"]["probability"])
    assert "TITAN-Guide report" in (tmp_path / "guidance_report.txt").read_text()


def test_demo_exits_non_zero_with_a_message_when_the_run_fails(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--quick", "--timeout", "0.01",
                             "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                            cwd=str(REPO_ROOT))
    assert result.returncode == 1
    assert "DEMO FAILED" in result.stderr
