"""The real ComfyUI host: starts with this pack loaded and runs core graphs on the tiny checkpoint."""

import json
import os
import struct
import subprocess

import pytest
from PIL import Image

from testing.comfy_host import (PACK_NAME, REPO_ROOT, ComfyExecutionError, ComfyHostError, ComfyValidationError,
                        find_comfyui_dir)
from tiny_checkpoints import TINY_SD15_FILENAME, read_metadata


def sd15_text_to_image_prompt(ckpt_name: str, seed: int, prefix: str) -> dict:
    """Return the API-format prompt of a plain SD1.5 txt2img graph (64x64, 2 steps)."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["ckpt", 0], "positive": ["positive", 0], "negative": ["negative", 0],
                "latent_image": ["latent", 0], "seed": seed, "steps": 2, "cfg": 7.0,
                "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }


def write_safetensors_without_model(path) -> None:
    """Write a valid .safetensors file holding one tensor that no model layout matches."""
    header = json.dumps({"unrelated.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<f", 1.0))


@pytest.mark.host_compat
def test_pack_and_vendored_packs_import_without_error(comfy_host):
    """The host imports titan-guide and both vendored packs, and serves their nodes."""
    import_lines = comfy_host.pack_import_lines()
    ours = [line for line in import_lines if line.rstrip().endswith(f"custom_nodes/{PACK_NAME}")]
    assert len(ours) == 1, f"titan-guide missing from the import report: {import_lines}"
    assert "IMPORT FAILED" not in ours[0]
    failed = [line for line in import_lines if "IMPORT FAILED" in line]
    assert not failed, f"node packs failed to import: {failed}"
    log = comfy_host.log_text()
    assert "Error while calling comfy_entrypoint" not in log
    assert "Cannot import" not in log

    info = comfy_host.object_info()
    assert "KSampler" in info and "CheckpointLoaderSimple" in info
    assert any(name.startswith("ADE_") for name in info), "AnimateDiff-Evolved nodes are not registered"
    assert "CogVideoSampler" in info, "CogVideoXWrapper nodes are not registered"
    ckpt_names = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert TINY_SD15_FILENAME in ckpt_names


def test_model_folders_are_registered_with_weight_extensions(comfy_host):
    """register_model_folders adds titan_guide/dover/imagebind, listing only .safetensors/.pth files."""
    folders = comfy_host.get_json("/models")
    for name in ("titan_guide", "dover", "imagebind", "checkpoints", "animatediff_models"):
        assert name in folders
    target = comfy_host.models_dir / "titan_guide" / "host_test"
    target.mkdir(exist_ok=True)
    created = [target / "weights.safetensors", target / "weights.pth", target / "notes.txt"]
    for path in created:
        path.write_bytes(b"x")
    try:
        listed = comfy_host.get_json("/models/titan_guide")
        assert "host_test/weights.safetensors" in listed
        assert "host_test/weights.pth" in listed
        assert "host_test/notes.txt" not in listed  # extension filter set by register_model_folders
    finally:
        for path in created:
            path.unlink()
        target.rmdir()


def test_tiny_checkpoint_carries_its_identity(tiny_sd15_checkpoint):
    """The cached tiny checkpoint records what it is, so stale caches get rebuilt."""
    identity = json.loads(read_metadata(tiny_sd15_checkpoint)["titan_guide_tiny_checkpoint"])
    assert identity["kind"] == "sd15" and identity["seed"] == 0


def test_core_sd15_graph_runs_and_saves_an_image(comfy_host):
    """A plain core txt2img graph runs on the tiny checkpoint, proving it loads as SD1.5."""
    prompt = sd15_text_to_image_prompt(TINY_SD15_FILENAME, seed=1, prefix="host_test/sd15")
    outputs = comfy_host.run(prompt, timeout=300)
    files = comfy_host.output_files(outputs)
    assert len(files) == 1 and files[0].is_file(), outputs
    with Image.open(files[0]) as image:
        assert image.size == (64, 64)
        low, high = image.convert("L").getextrema()
    assert high > low, "decoded image is constant: the random checkpoint produced no signal (NaN?)"
    # The checkpoint went through ComfyUI's SD1.x path (SD15 model, SD1 CLIP-L text encoder).
    assert "Requested to load SD1ClipModel" in comfy_host.log_text()


def test_invalid_prompt_is_rejected_and_server_keeps_serving(comfy_host):
    """Invalid prompts give validation errors and the server still runs valid ones."""
    bad = sd15_text_to_image_prompt("no_such_checkpoint.safetensors", seed=1, prefix="host_test/bad")
    with pytest.raises(ComfyValidationError) as caught:
        comfy_host.queue(bad)
    node_errors = caught.value.response["node_errors"]
    assert "ckpt" in node_errors
    assert node_errors["ckpt"]["errors"][0]["type"] == "value_not_in_list"

    with pytest.raises(ComfyValidationError) as caught:
        comfy_host.queue({"1": {"class_type": "NoSuchNodeType", "inputs": {}}})
    assert "NoSuchNodeType" in json.dumps(caught.value.response)

    assert comfy_host.is_running()
    assert "EmptyImage" in comfy_host.object_info()
    ok = {
        "image": {"class_type": "EmptyImage",
                  "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["image", 0], "filename_prefix": "host_test/ok"}},
    }
    files = comfy_host.output_files(comfy_host.run(ok, timeout=60))
    with Image.open(files[0]) as image:
        assert image.size == (8, 8)
        assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_execution_error_is_raised_with_the_node_and_message(comfy_host):
    """A prompt failing at run time raises ComfyExecutionError naming the node and cause."""
    broken = comfy_host.models_dir / "checkpoints" / "host_test_not_a_model.safetensors"
    write_safetensors_without_model(broken)
    try:
        prompt = {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": broken.name}},
            "save": {"class_type": "PreviewAny", "inputs": {"source": ["ckpt", 0]}},
        }
        with pytest.raises(ComfyExecutionError) as caught:
            comfy_host.run(prompt, timeout=60)
        assert caught.value.details["node_type"] == "CheckpointLoaderSimple"
        assert "detect model type" in caught.value.details["exception_message"]
    finally:
        broken.unlink()
    assert comfy_host.is_running()


def test_comfyui_path_that_is_not_comfyui_is_refused(tmp_path, monkeypatch):
    """A COMFYUI_PATH without main.py and comfy/ is refused by the tests and by setup.sh."""
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(ComfyHostError, match="scripts/setup.sh"):
        find_comfyui_dir()
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path), CI="true")
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup.sh")], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI install" in result.stderr
