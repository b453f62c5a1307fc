"""Tiny random guidance networks saved in their official file formats, for host tests of the objective nodes.

The sizes come from the objectives' own tests (tests/unit/test_objective_*.py), so the nodes load exactly the
layouts those tests check: DOVER (plain torch state dict, like DOVER.pth), ImageBind (plain torch state dict,
like imagebind_huge.pth), CLIP vision (Hugging Face safetensors, like ComfyUI's clip_vision files) and open_clip
(safetensors checkpoint plus its model config as <name>.json next to it).
"""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from objectives.dover import FULL_CONFIG, DoverModel
from objectives._swin3d import relative_position_index
from test_objective_dover import TINY_MODEL as TINY_DOVER_CONFIG
from test_objective_dover import tiny_model as tiny_dover_model
from test_objective_imagebind import TINY as TINY_IMAGEBIND_CONFIG
from test_objective_style import tiny_hf_vision_model

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_dover(seed: int = 0) -> DoverModel:
    """Tiny float32 DOVER (the objective tests' sizes) with perturbed weights and unsaturated fused score."""
    return tiny_dover_model(seed, torch.float32)


def write_tiny_dover(path: Path, seed: int = 0) -> DoverModel:
    """Save a tiny DOVER as a plain torch state dict (DOVER.pth's format); returns the model."""
    model = tiny_dover(seed)
    torch.save(model.state_dict(), path)
    return model


def write_official_layout_dover(path: Path) -> None:
    """Save zero weights (fp16) with the official DOVER.pth keys and shapes (56.2 M parameters, 112 MB)."""
    with torch.device("meta"):
        layout = DoverModel(**FULL_CONFIG).state_dict()
    state = {}
    for key, value in layout.items():
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index(FULL_CONFIG["technical_window_size"])
        else:
            state[key] = torch.zeros(value.shape, dtype=torch.float16)
    torch.save(state, path)


def tiny_imagebind(seed: int = 0) -> torch.nn.Module:
    """Tiny real ImageBindModel (the objective tests' sizes), random weights."""
    from objectives.imagebind_audio import import_imagebind_model

    torch.manual_seed(seed)
    return import_imagebind_model().ImageBindModel(**TINY_IMAGEBIND_CONFIG).eval()


def write_tiny_imagebind(path: Path, seed: int = 0) -> torch.nn.Module:
    """Save a tiny ImageBind as a plain torch state dict (imagebind_huge.pth's format); returns the model."""
    model = tiny_imagebind(seed)
    torch.save(model.state_dict(), path)
    return model


def write_tiny_clip_vision(path: Path, seed: int = 0) -> torch.nn.Module:
    """Save a tiny Hugging Face CLIPVisionModelWithProjection as .safetensors (clip_vision layout)."""
    model = tiny_hf_vision_model(seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def write_tiny_open_clip(path: Path, seed: int = 0) -> str:
    """Save a tiny open_clip CLIP (.safetensors) and its config as <stem>.json beside it; returns the config name."""
    import open_clip

    config_path = path.with_suffix(".json")
    config_path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG), encoding="utf-8")
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(config_path.stem, pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return config_path.stem


def write_bundled_open_clip_layout(path: Path, name: str = "ViT-S-32") -> None:
    """Save zero weights (fp16) with the keys and shapes of open_clip's bundled architecture `name`."""
    import open_clip

    with torch.device("meta"):
        layout = open_clip.create_model(name, pretrained=None, device=torch.device("meta")).state_dict()
    save_file({key: torch.zeros(value.shape, dtype=torch.float16) for key, value in layout.items()}, str(path))


def write_wav(path, seconds: float, sample_rate: int, channels: int) -> None:
    """16-bit PCM chirp with a little noise (the standard library writes it; LoadAudio reads it with PyAV)."""
    generator = np.random.default_rng(0)
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = np.sin(2 * math.pi * (300 + 400 * time) * time)
    samples = np.stack([tone + 0.05 * generator.standard_normal(time.shape) for _ in range(channels)], axis=1)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


def read_wav(path) -> dict:
    """A WAV file as the ComfyUI AUDIO dict LoadAudio makes of it (int16 / 2**15, (1, C, N))."""
    with wave.open(str(path), "rb") as handle:
        channels, rate = handle.getnchannels(), handle.getframerate()
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").reshape(-1, channels)
    return {"waveform": torch.from_numpy(pcm.T.astype(np.float32) / 2**15)[None], "sample_rate": rate}
