"""Guidance-network architectures read from checkpoint files (tensor names and shapes, without loading the
weights): DOVER's sizes, open_clip's model config, and the builders the loader nodes call with a path and a dtype.
Plain PyTorch (no ComfyUI): the loader nodes add folders, caching and model management.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from . import dover as dover_objective
from . import imagebind_audio, style_clip
from ._swin3d import relative_position_index

LOG = logging.getLogger("titan_guide")
AUTO_ARCHITECTURE = "auto"  # detect the open_clip architecture from the checkpoint


@dataclass(frozen=True)
class WeightFiles:
    """What a guidance network's weight file is, for listings, tooltips and missing-file messages."""

    what: str
    expected: str
    source: str
    licence: str

    def missing_message(self, name: str, where: str) -> str:
        """Clear message for a file that is not in the folder `where`: what, where to put it, where to get it."""
        asked = f"'{name}' was not found" if name else "no file is selected"
        return (f"{self.what} weights: {asked}. Put {self.expected} into {where}, then refresh the node list (press "
                f"'r'). Get it from {self.source}. Licence: {self.licence}")

    def tooltip(self, where: str) -> str:
        """Tooltip of a file list read from the folder `where`."""
        return f"{self.what} weights, listed from {where}. Expected: {self.expected}. Source: {self.source}. " \
               f"Licence: {self.licence}"


DOVER_WEIGHTS = WeightFiles(
    what="DOVER", expected=dover_objective.DOVER_WEIGHTS_FILENAME,
    source=f"{dover_objective.DOVER_WEIGHTS_SOURCE}, also https://huggingface.co/teowu/DOVER",
    licence=("weights released with DOVER v0.1.0 under MIT; the VQAssessment/DOVER repository is now under the "
             "S-Lab License 1.0 (non-commercial use only): check its terms before use."))
IMAGEBIND_WEIGHTS = WeightFiles(
    what="ImageBind", expected="imagebind_huge.pth (4.8 GB)",
    source="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
    licence="CC-BY-NC-SA 4.0 (non-commercial use only).")
CLIP_WEIGHTS = WeightFiles(
    what="CLIP",
    expected=("a Hugging Face-layout CLIP vision file such as CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (image "
              "tower; style images only) or an open_clip checkpoint such as open_clip_model.safetensors of ViT-H-14 "
              "(image and text tower; needed for text targets)"),
    source=("https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (model.safetensors = Hugging Face layout, "
            "rename it; open_clip_model.safetensors = open_clip layout)"),
    licence="MIT (laion/CLIP-ViT-H-14-laion2B-s32B-b79K model card; open_clip code MIT).")


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# Reading checkpoint layouts without loading the weights
# ---------------------------------------------------------------------------------------------------------
class CheckpointView:
    """Tensor names and shapes of a checkpoint (safetensors header or a memory-mapped torch file)."""

    def __init__(self, path: str):
        self.path = path
        self._tensors: Optional[Mapping[str, torch.Tensor]] = None
        if path.lower().endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as handle:
                self.shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping):
                for wrapper in ("state_dict", "model"):
                    if isinstance(state.get(wrapper), Mapping):
                        state = state[wrapper]
                        break
            if not isinstance(state, Mapping):
                raise ValueError(f"'{path}' does not hold a state dict")
            tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors and all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module."):]: v for k, v in tensors.items()}
            self._tensors = tensors
            self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor's values."""
        if self._tensors is not None:
            return self._tensors[key]
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as handle:
            return handle.get_tensor(key)

    def indices(self, pattern: str) -> list[int]:
        """Sorted distinct integers captured by `pattern` (a regex with one group) over the tensor names."""
        regex = re.compile(pattern)
        return sorted({int(m.group(1)) for key in self.shapes if (m := regex.match(key))})


# ---------------------------------------------------------------------------------------------------------
# DOVER
# ---------------------------------------------------------------------------------------------------------
def _swin_window(index: torch.Tensor, table_rows: int) -> tuple[int, int, int]:
    """The Swin3D window whose relative-position index equals `index` (N x N) and table has `table_rows` rows."""
    tokens = index.shape[0]
    for depth in range(1, tokens + 1):
        if tokens % depth:
            continue
        for height in range(1, tokens // depth + 1):
            if (tokens // depth) % height:
                continue
            window = (depth, height, tokens // depth // height)
            rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
            if rows == table_rows and torch.equal(index.long(), relative_position_index(window)):
                return window
    raise ValueError(f"no Swin3D window matches a relative-position index of {tokens} tokens")


def _temporal_kernel_pattern(kernels_per_stage: Sequence[Sequence[int]]) -> str:
    """Shortest inflate strategy string (e.g. '131') that reproduces every block's temporal kernel."""
    longest = max(kernels_per_stage, key=len)
    for period in range(1, len(longest) + 1):
        pattern = longest[:period]
        if all(k == pattern[j % period] for stage in kernels_per_stage for j, k in enumerate(stage)):
            if all(1 <= k <= 9 for k in pattern):
                return "".join(str(k) for k in pattern)
    raise ValueError("temporal kernel sizes do not follow a repeating inflate strategy")


def dover_config_from_checkpoint(view: CheckpointView) -> dict:
    """`DoverModel` keyword arguments read from a DOVER-layout checkpoint's tensor shapes (the official file
    gives `objectives.dover.FULL_CONFIG`)."""
    shapes = view.shapes
    tech, aes = "technical_backbone.", "aesthetic_backbone."
    patch = shapes[tech + "patch_embed.proj.weight"]
    layers = view.indices(r"technical_backbone\.layers\.(\d+)\.")
    if not layers or layers != list(range(len(layers))):
        raise ValueError("technical_backbone.layers.N are missing or not contiguous")
    depths, heads, fragment_biases = [], [], []
    for layer in layers:
        depths.append(len(view.indices(rf"technical_backbone\.layers\.{layer}\.blocks\.(\d+)\.")))
        attention = f"{tech}layers.{layer}.blocks.0.attn."
        heads.append(shapes[attention + "relative_position_bias_table"][1])
        fragment_biases.append(attention + "fragment_position_bias_table" in shapes)
    first = f"{tech}layers.0.blocks.0.attn."
    window = _swin_window(view.tensor(first + "relative_position_index"),
                          shapes[first + "relative_position_bias_table"][0])
    stages = view.indices(r"aesthetic_backbone\.stages\.(\d+)\.")
    if stages != [0, 1, 2, 3]:
        raise ValueError("aesthetic_backbone.stages.0-3 are missing")
    kernels = []
    for stage in stages:
        blocks = view.indices(rf"aesthetic_backbone\.stages\.{stage}\.(\d+)\.")
        kernels.append([shapes[f"{aes}stages.{stage}.{block}.dwconv.weight"][2] for block in blocks])
    dims = [shapes[f"{aes}downsample_layers.0.0.weight"][0]] + [
        shapes[f"{aes}downsample_layers.{i}.1.weight"][0] for i in (1, 2, 3)]
    return dict(
        technical_embed_dim=patch[0], technical_depths=tuple(depths), technical_num_heads=tuple(heads),
        technical_window_size=window, technical_patch_size=tuple(patch[2:]),
        technical_fragment_biases=tuple(fragment_biases), aesthetic_depths=tuple(len(k) for k in kernels),
        aesthetic_dims=tuple(dims), aesthetic_inflate_strategy=_temporal_kernel_pattern(kernels),
        head_hidden_channels=shapes["technical_head.fc_hid.weight"][0],
        head_dropout=dover_objective.FULL_CONFIG["head_dropout"])


def build_dover(path: str, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    """DOVER network of a checkpoint, with the architecture its shapes describe (official file: official sizes)."""
    try:
        config = dover_config_from_checkpoint(CheckpointView(path))
    except Exception as error:  # not a readable DOVER layout: load_dover reports what is wrong with the file
        LOG.debug("TITAN-Guide: DOVER layout of %s not inferred (%s); trying the official layout", path, error)
        config = None
    model = dover_objective.load_dover(path, dtype=dtype, model_kwargs=config)
    size = "official DOVER configuration" if model.is_official_size else f"custom DOVER configuration {model.config}"
    return model, f"{size}, {parameter_count(model) / 1e6:.3f} M parameters"


# ---------------------------------------------------------------------------------------------------------
# ImageBind
# ---------------------------------------------------------------------------------------------------------
def build_imagebind(path: str, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    """ImageBind vision, audio and text towers of a checkpoint (sizes read from its shapes)."""
    model = imagebind_audio.load_imagebind(path, dtype=dtype)
    width = model.modality_preprocessors["vision"].rgbt_stem.proj[1].weight.shape[0]
    return model, (f"vision / audio / text towers, vision width {width}, "
                   f"{parameter_count(model) / 1e6:.3f} M parameters")


# ---------------------------------------------------------------------------------------------------------
# CLIP (Hugging Face clip_vision files and open_clip checkpoints)
# ---------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def bundled_open_clip_configs() -> dict[str, dict]:
    """open_clip's bundled ViT model configs usable offline, read from its package files (no import)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return {}
    configs = {}
    for folder in spec.submodule_search_locations:
        for config_file in sorted(Path(folder, "model_configs").glob("*.json")):
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
            plain_vit = isinstance(vision.get("layers"), int) and "timm_model_name" not in vision
            offline_text = not any(key in text for key in ("hf_model_name", "hf_tokenizer_name"))
            if plain_vit and offline_text and "embed_dim" in config and "siglip" not in config_file.stem.lower():
                configs[config_file.stem] = config
    return dict(sorted(configs.items(), key=lambda item: item[0].lower()))


def _image_size(vision: dict) -> int:
    """Square input size of an open_clip vision config."""
    size = vision.get("image_size", 224)
    return size[0] if isinstance(size, (list, tuple)) else int(size)


def open_clip_signature(view: CheckpointView) -> dict:
    """Architecture sizes visible in an open_clip ViT checkpoint's shapes."""
    shapes = view.shapes
    width, _, patch, _ = shapes["visual.conv1.weight"]
    grid = round((shapes["visual.positional_embedding"][0] - 1) ** 0.5)
    return dict(
        vision_width=width, patch_size=patch, image_size=grid * patch,
        vision_layers=len(view.indices(r"visual\.transformer\.resblocks\.(\d+)\.")),
        mlp_width=shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0],
        embed_dim=shapes["visual.proj"][1],
        text_width=shapes["token_embedding.weight"][1], vocab_size=shapes["token_embedding.weight"][0],
        context_length=shapes["positional_embedding"][0],
        text_layers=len(view.indices(r"transformer\.resblocks\.(\d+)\.")))


def config_signature(config: dict) -> dict:
    """The same sizes as `open_clip_signature`, from an open_clip model config."""
    vision, text = config["vision_cfg"], config["text_cfg"]
    return dict(
        vision_width=vision["width"], patch_size=vision["patch_size"], image_size=_image_size(vision),
        vision_layers=vision["layers"], mlp_width=int(vision["width"] * vision.get("mlp_ratio", 4.0)),
        embed_dim=config["embed_dim"], text_width=text.get("width", 512), vocab_size=text.get("vocab_size", 49408),
        context_length=text.get("context_length", 77), text_layers=text.get("layers", 12))


_REGISTERED_SIDECARS: set = set()


def sidecar_open_clip_config(path: str) -> Optional[str]:
    """Register `<checkpoint name>.json` (an open_clip model config) next to the file; returns its name."""
    config_path = Path(path).with_suffix(".json")
    if not config_path.is_file():
        return None
    import open_clip

    name = config_path.stem
    identity = (str(config_path.resolve()), config_path.stat().st_mtime_ns)
    if identity not in _REGISTERED_SIDECARS:
        open_clip.add_model_config(config_path)  # registered under the file's stem
        _REGISTERED_SIDECARS.add(identity)
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"{config_path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    return name


def detect_open_clip_architecture(path: str, view: CheckpointView) -> str:
    """open_clip architecture of a checkpoint: its sidecar JSON config, else the bundled config with its shapes."""
    sidecar = sidecar_open_clip_config(path)
    if sidecar is not None:
        return sidecar
    try:
        signature = open_clip_signature(view)
    except KeyError as error:
        raise ValueError(f"'{path}' is not an open_clip ViT checkpoint (tensor {error} is missing); choose the "
                         "architecture explicitly") from None
    matches = []
    for name, config in bundled_open_clip_configs().items():
        try:
            if config_signature(config) == signature:
                matches.append(name)
        except (KeyError, TypeError):
            continue
    if len(matches) > 1:  # X and X-quickgelu have the same shapes: OpenAI weights use QuickGELU
        quick = [m for m in matches if m.endswith("-quickgelu")]
        plain = [m for m in matches if not m.endswith("-quickgelu")]
        preferred = quick if "openai" in os.path.basename(path).lower() else plain
        matches = preferred or matches
    if len(matches) != 1:
        found = ", ".join(f"{k}={v}" for k, v in signature.items())
        candidates = f"candidates: {', '.join(matches)}" if matches else "no bundled open_clip config matches"
        raise ValueError(
            f"cannot tell the open_clip architecture of '{os.path.basename(path)}' ({found}); {candidates}. Choose "
            f"it in 'architecture', or put its open_clip config as {Path(path).with_suffix('.json').name} next to it.")
    return matches[0]


def build_clip(path: str, dtype: torch.dtype, architecture: str, pretrained_tag: str) -> tuple[torch.nn.Module, str]:
    """A CLIP model from a clip_vision-folder file: Hugging Face layout (image tower) or open_clip (both towers)."""
    try:
        view = CheckpointView(path)
    except Exception:  # unreadable: the objectives' loader names the problem
        view = None
    if view is not None and any(key.startswith("vision_model.") for key in view.shapes):
        clip = style_clip.load_clip_vision(path, dtype=dtype)
        config = clip.model.config
        return clip, (f"Hugging Face CLIP vision, image tower only (width {config.hidden_size}, "
                      f"{config.num_hidden_layers} blocks, {clip.image_size} px), "
                      f"{parameter_count(clip) / 1e6:.3f} M parameters; style images only, no text targets")
    if view is not None and any(key.startswith("visual.") for key in view.shapes):
        name = detect_open_clip_architecture(path, view) if architecture == AUTO_ARCHITECTURE else architecture
        clip = style_clip.load_open_clip(path, name, pretrained_tag=pretrained_tag or None, dtype=dtype)
        tag = f", tag {pretrained_tag}" if pretrained_tag else ""
        return clip, (f"open_clip {name}{tag}, image and text tower ({clip.image_size} px), "
                      f"{parameter_count(clip) / 1e6:.3f} M parameters")
    # Neither layout: the Hugging Face loader explains what it expected.
    clip = style_clip.load_clip_vision(path, dtype=dtype)
    return clip, f"{parameter_count(clip) / 1e6:.3f} M parameters"


