"""Objective nodes with guidance networks: DOVER, CLIP style, ImageBind audio, and frame interpolation.

Loaders read weights from ComfyUI model folders (dover/, imagebind/, clip_vision/) through the objectives' own
loaders (safetensors or `torch.load(weights_only=True)`), build the networks outside inference mode (so
backprop-based guesses and baselines can differentiate through them) and hand them to ComfyUI's model
management as a `GuidanceNetworkPatcher` (a ModelPatcher that loads and unloads the network whole): the
guided samplers pass it to `load_models_gpu` together with the diffusion model and the VAE, which puts it on
the VAE's device for the run and lets ComfyUI offload it (or other models) under memory pressure. Loaded
networks are cached per (file, dtype, options), so re-running a graph does not read the weights again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import logging
import os
import re
import time
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import folder_paths
from comfy_api.latest import io

from . import glue
from ..objectives import dover as dover_objective
from ..objectives import imagebind_audio, style_clip
from ..objectives._swin3d import relative_position_index
from ..objectives.base import VideoObjective, subset_frame_indices
from ..objectives.frame_interpolation import (DECODED_RANGE_TOLERANCE, FrameInterpolationLoss,
                                              LatentFrameInterpolationLoss)

LOG = logging.getLogger("titan_guide")

TitanDoverModel = io.Custom("TITAN_DOVER_MODEL")
TitanImageBindModel = io.Custom("TITAN_IMAGEBIND_MODEL")
TitanClipModel = io.Custom("TITAN_CLIP_MODEL")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_TOOLTIP = ("Weight dtype. fp32 as in the paper (most accurate); bf16 / fp16 halve the weights' memory "
                 "(fp16 can overflow; on CPU both are slower than fp32).")
WEIGHT_TOOLTIP = "Weight of this objective in the guidance loss (a TITAN Combine Objectives node multiplies it)."
AUTO_ARCHITECTURE = "auto"


# ---------------------------------------------------------------------------------------------------------
# Weight folders
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightsFolder:
    """A ComfyUI model folder and what belongs in it (for listings, tooltips and missing-file messages)."""

    folder: str
    what: str
    expected: str
    source: str
    licence: str

    def folders(self) -> list[str]:
        """Absolute folders ComfyUI searches, in search order."""
        try:
            return [os.path.abspath(p) for p in folder_paths.get_folder_paths(self.folder)]
        except KeyError:
            return []

    def files(self) -> list[str]:
        """Weight files ComfyUI lists in the folder (names relative to it)."""
        try:
            return folder_paths.get_filename_list(self.folder)
        except KeyError:
            return []

    def where(self) -> str:
        """'<first folder>' plus the other searched folders, for messages."""
        folders = list(dict.fromkeys(self.folders())) or [f"<ComfyUI>/models/{self.folder} (not registered)"]
        others = f" (ComfyUI also searches {', '.join(folders[1:])})" if len(folders) > 1 else ""
        return folders[0] + others

    def missing_message(self, name: str) -> str:
        """Clear message for a file that is not there: what, where to put it, where to get it, licence."""
        asked = f"'{name}' was not found" if name else "no file is selected"
        return (f"{self.what} weights: {asked}. Put {self.expected} into {self.where()}, then refresh the node "
                f"list (press 'r'). Get it from {self.source}. Licence: {self.licence}")

    def tooltip(self) -> str:
        """Tooltip of the file COMBO."""
        return (f"{self.what} weights, listed from {self.where()}. Expected: {self.expected}. Source: "
                f"{self.source}. Licence: {self.licence}")

    def path_of(self, name: str) -> str:
        """Absolute path of a listed file; FileNotFoundError with the full message if absent."""
        path = folder_paths.get_full_path(self.folder, name) if name else None
        if path is None:
            raise FileNotFoundError(self.missing_message(name))
        return path

    def validate(self, name: str) -> bool | str:
        """True if `name` is a listed file, else the missing-file message (shown by ComfyUI before running)."""
        return True if name and name in self.files() else self.missing_message(name)


DOVER_FOLDER = WeightsFolder(
    folder="dover", what="DOVER", expected=dover_objective.DOVER_WEIGHTS_FILENAME,
    source=f"{dover_objective.DOVER_WEIGHTS_SOURCE}, also https://huggingface.co/teowu/DOVER",
    licence=("weights released with DOVER v0.1.0 under MIT; the VQAssessment/DOVER repository is now under the "
             "S-Lab License 1.0 (non-commercial use only): check its terms before use."))
IMAGEBIND_FOLDER = WeightsFolder(
    folder="imagebind", what="ImageBind", expected="imagebind_huge.pth (4.8 GB)",
    source="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
    licence="CC-BY-NC-SA 4.0 (non-commercial use only).")
CLIP_FOLDER = WeightsFolder(
    folder="clip_vision", what="CLIP",
    expected=("a Hugging Face-layout CLIP vision file such as CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (image "
              "tower; style images only) or an open_clip checkpoint such as open_clip_model.safetensors of ViT-H-14 "
              "(image and text tower; needed for text targets)"),
    source=("https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K (model.safetensors = Hugging Face layout, "
            "rename it; open_clip_model.safetensors = open_clip layout)"),
    licence="MIT (laion/CLIP-ViT-H-14-laion2B-s32B-b79K model card; open_clip code MIT).")


# ---------------------------------------------------------------------------------------------------------
# Loaded networks under ComfyUI's model management, and their cache
# ---------------------------------------------------------------------------------------------------------
class GuidanceNetwork(torch.nn.Module):
    """What the ModelPatcher manages: one guidance network (the patcher keeps its bookkeeping on this wrapper)."""

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype, kind: str = ""):
        super().__init__()
        self.network = network
        self.weight_dtype = dtype
        self.kind = kind

    def get_dtype(self) -> torch.dtype:
        """Weight dtype (ModelPatcher.model_dtype reads it)."""
        return self.weight_dtype


# ComfyUI's own "load everything" amount for partially_load (LoadedModel.model_load uses 1e32 too).
FULL_LOAD_MEMORY = 1e32


class GuidanceNetworkPatcher(comfy.model_patcher.ModelPatcher):
    """ModelPatcher of a plain-PyTorch guidance network: loaded and unloaded whole, never in part.

    Under memory pressure ComfyUI loads only part of a model and runs the rest from the offload device through
    comfy.ops layers, which cast their weights on the fly. DOVER, ImageBind and CLIP use plain torch layers, which
    would meet weights on two devices. So this patcher always loads all of the network (ComfyUI makes the room by
    offloading other models first) and, asked to free part of it, frees nothing, after which ComfyUI unloads it
    completely.
    """

    def partially_load(self, device_to, extra_memory=0, *args, **kwargs):
        """Load the whole network, whatever amount ComfyUI offers."""
        return super().partially_load(device_to, FULL_LOAD_MEMORY, *args, **kwargs)

    def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs):
        """Free nothing (a partial unload would split the network across devices); ComfyUI unloads it whole."""
        return 0


def _same_device(a, b) -> bool:
    """Whether two device specs name the same device ('cuda' matches 'cuda:0')."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _make_tensors_normal(module: torch.nn.Module) -> None:
    """Replace inference-mode parameters / buffers (made by moves under ComfyUI's inference mode) by normal ones.

    Autograd refuses to save inference tensors, and backprop-based guesses and baselines differentiate through
    the network; one clone per affected tensor.
    """
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    sub._buffers[name] = buffer.clone()


@dataclasses.dataclass(eq=False)
class LoadedGuidanceModel:
    """The value of the loader outputs: a guidance network, the file it came from and its ModelPatcher."""

    kind: str
    path: str
    dtype_name: str
    patcher: comfy.model_patcher.ModelPatcher
    summary: str

    @property
    def network(self) -> torch.nn.Module:
        """The guidance network (frozen, eval mode)."""
        return self.patcher.model.network

    @property
    def device(self) -> torch.device:
        """Where the network runs when loaded (ComfyUI's VAE device)."""
        return torch.device(self.patcher.load_device)

    def is_loaded(self) -> bool:
        """Whether ComfyUI's model management holds the whole network on its load device now."""
        patcher = self.patcher
        managed = any(entry.model is not None and (entry.model is patcher or patcher.is_clone(entry.model))
                      for entry in model_management.current_loaded_models)
        where = getattr(patcher.model, "device", None)  # set by ModelPatcher.load
        return (managed and where is not None and _same_device(where, patcher.load_device)
                and patcher.loaded_size() >= patcher.model_size())

    def load(self, device=None) -> None:
        """Load the network onto its device through ComfyUI (may offload other models to make room).

        Nothing is loaded when it is there already (the guided samplers load it together with the diffusion
        model and the VAE): a second `load_models_gpu` call would free memory for it again, possibly offloading
        part of those models.
        """
        if device is not None and not _same_device(device, self.patcher.load_device):
            raise ValueError(
                f"the {self.kind} network is managed for {self.patcher.load_device} (ComfyUI's VAE device) but the "
                f"guided run decodes on {device}; load the VAE on ComfyUI's default VAE device")
        if not self.is_loaded():
            with torch.inference_mode(False):
                model_management.load_models_gpu([self.patcher], force_full_load=True)
        _make_tensors_normal(self.patcher.model)

    def __str__(self) -> str:
        return f"{self.kind} from {self.path} ({self.dtype_name}; {self.summary})"


# The newest load of each kind (DOVER, ImageBind, CLIP) stays in memory, so a graph that ran before reuses it;
# other loads live only while something (ComfyUI's output cache, an objective) still references them.
_RECENT: dict[str, LoadedGuidanceModel] = {}
_ALIVE: "weakref.WeakValueDictionary[tuple, LoadedGuidanceModel]" = weakref.WeakValueDictionary()


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


def cached_load(kind: str, path: str, dtype_name: str, options: tuple,
                build: Callable[[str, torch.dtype], tuple[torch.nn.Module, str]]) -> LoadedGuidanceModel:
    """Load (or reuse) a guidance network; `build(path, dtype)` returns (network, summary)."""
    if dtype_name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype_name!r}; choose one of {tuple(DTYPES)}")
    stat = os.stat(path)
    key = (kind, os.path.realpath(path), stat.st_mtime_ns, stat.st_size, dtype_name, options)
    loaded = _ALIVE.get(key)
    if loaded is not None:
        LOG.info("TITAN-Guide: reusing the loaded %s network from %s (%s)", kind, path, dtype_name)
        _RECENT[kind] = loaded
        return loaded
    started = time.perf_counter()
    with torch.inference_mode(False):
        network, summary = build(path, DTYPES[dtype_name])
        network.eval().requires_grad_(False)
    patcher = GuidanceNetworkPatcher(GuidanceNetwork(network, DTYPES[dtype_name], kind),
                                     load_device=model_management.vae_device(),
                                     offload_device=model_management.vae_offload_device())
    loaded = LoadedGuidanceModel(kind, path, dtype_name, patcher, summary)
    _RECENT[kind] = loaded
    _ALIVE[key] = loaded
    LOG.info("TITAN-Guide: loaded the %s network from %s (%s; %s) in %.2f s", kind, path, dtype_name, summary,
             time.perf_counter() - started)
    return loaded


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


# ---------------------------------------------------------------------------------------------------------
# Objectives handed to the sampler
# ---------------------------------------------------------------------------------------------------------
class ManagedObjective(VideoObjective):
    """An objective whose guidance network (if any) ComfyUI's model management places.

    `comfy_patchers` lists the ModelPatchers the guided samplers load together with the diffusion model and the
    VAE; `to(device)` (called after that load) makes sure the network is there and moves the objective's own
    tensors (targets, embeddings). `prepare(num_frames)` computes the constant targets before guidance and sets
    the full video length frame subsets (`frame_indices`) refer to; a subset covering every frame is passed on
    as no subset.
    """

    def __init__(self, objective: VideoObjective, model: Optional[LoadedGuidanceModel] = None):
        super().__init__()
        self.objective = objective
        self.guidance_model = model
        self.needs = frozenset(objective.needs)
        self.input_space = objective.input_space
        self.has_frame_losses = bool(objective.has_frame_losses)
        self.min_frames = int(objective.min_frames)
        self.video_frames: Optional[int] = None

    @property
    def comfy_patchers(self) -> list:
        """ModelPatchers of the guidance networks this objective runs."""
        return [] if self.guidance_model is None else [self.guidance_model.patcher]

    def to(self, *args, **kwargs) -> "ManagedObjective":
        """Load the network onto `device` through ComfyUI (if not there) and move the objective's tensors there."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None:
            raise ValueError("a guidance objective keeps the weight dtype chosen in its loader node")
        if device is not None and self.guidance_model is not None:
            self.guidance_model.load(device)
        with torch.inference_mode(False):
            self.objective.to(*args, **kwargs)
        return self

    def prepare(self, num_frames: int) -> None:
        """Before guidance: the full video has `num_frames` frames; compute the objective's constant targets."""
        self.video_frames = int(num_frames)
        inner = getattr(self.objective, "prepare", None)
        if inner is not None:
            inner(self.video_frames)

    def check_video(self, video: torch.Tensor) -> None:
        """The wrapped objective's input checks."""
        self.objective.check_video(video)

    def subset(self, video: torch.Tensor, frame_indices) -> Optional[tuple[int, ...]]:
        """Validated `frame_indices` of the frames `video` holds; None for no subset or one covering every frame."""
        return subset_frame_indices(frame_indices, video.shape[1], self.video_frames)

    def _call(self, method: Callable, video: torch.Tensor, frame_indices) -> torch.Tensor:
        indices = self.subset(video, frame_indices)
        if indices is not None and "frame_indices" in inspect.signature(method).parameters:
            return method(video, frame_indices=indices)
        return method(video)  # objectives without frame positions see a subset as a shorter video

    def frame_losses(self, video: torch.Tensor, frame_indices=None) -> torch.Tensor:
        """Per-frame losses (B, F) of the wrapped objective; `frame_indices`: which frames of the video it holds."""
        return self._call(self.objective.frame_losses, video, frame_indices)

    def forward(self, video: torch.Tensor, frame_indices=None) -> torch.Tensor:
        """Per-video loss (B,) of the wrapped objective; `frame_indices`: which frames of the video it holds."""
        return self._call(self.objective.forward, video, frame_indices)


class ManagedInterpolationObjective(ManagedObjective):
    """Frame interpolation that also accepts a frame subset (sampled-gradient guess) and keeps keyframes aligned."""

    def _known_frames(self, frame_indices: Sequence[int]) -> dict[int, int]:
        """{full-video frame index: keyframe row} for the keyframes (negative indices need the full frame count)."""
        objective = self.objective
        if self.video_frames is not None:  # set by prepare(): the full video's length resolves every index
            return {frame: row for row, frame in enumerate(objective.resolved_indices(self.video_frames))}
        if objective.mask_frames is not None:
            if max(frame_indices) >= objective.mask_frames:
                raise ValueError(f"the mask covers {objective.mask_frames} frames but the video has at least "
                                 f"{max(frame_indices) + 1}")
            return {frame: row for row, frame in enumerate(objective.indices)}
        if any(index < 0 for index in objective.indices):
            raise ValueError(
                f"keyframe indices {objective.indices} count from the end, but the sampled-gradient guess shows the "
                f"objective only frames {list(frame_indices)} of the video; give non-negative indices "
                "(e.g. '0, 15') or a MASK, or use another gradient guess")
        return {frame: row for row, frame in enumerate(objective.indices)}

    def frame_losses(self, video: torch.Tensor, frame_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-frame losses (B, F'); `frame_indices` (F',) says which frames of the full video `video` holds."""
        frame_indices = self.subset(video, frame_indices)
        if frame_indices is None:
            return self.objective.frame_losses(video)
        self.objective.check_video(video)
        known = self._known_frames(frame_indices)
        pairs = [(position, known[frame]) for position, frame in enumerate(frame_indices) if frame in known]
        if not pairs:  # no keyframe among the shown frames: zero loss that still depends on the input
            return (video * 0).sum(dim=tuple(range(2, video.ndim)))
        targets = self.objective.targets[[row for _, row in pairs]]
        extra = {"range_tolerance": self.objective.range_tolerance} if hasattr(self.objective, "range_tolerance") else {}
        subset = type(self.objective)(targets, indices=[position for position, _ in pairs], **extra)
        return subset.frame_losses(video)

    def forward(self, video: torch.Tensor, frame_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-video loss (B,): mean of the per-frame losses."""
        return self.frame_losses(video, frame_indices).mean(dim=1)


def objective_output(module: ManagedObjective, weight: float, name: str, supplied: Sequence[str] = ()) -> io.NodeOutput:
    """TITAN_OBJECTIVE output holding one weighted objective."""
    spec = glue.ObjectiveSpec(module, float(weight), name, supplied=frozenset(supplied))
    return io.NodeOutput(glue.ObjectiveSet((spec,)))


def _text_prompt(text: str) -> Optional[str]:
    """The prompt, or None when the field is empty."""
    return text.strip() or None


# ---------------------------------------------------------------------------------------------------------
# Loader nodes
# ---------------------------------------------------------------------------------------------------------
def _dtype_input() -> io.Combo.Input:
    """The loaders' weight dtype choice."""
    return io.Combo.Input("dtype", options=list(DTYPES), default="fp32", tooltip=DTYPE_TOOLTIP)


class TitanDoverLoader(io.ComfyNode):
    """Load DOVER (video quality: aesthetic and technical branches) from models/dover."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanDoverLoader",
            display_name="TITAN Load DOVER",
            category=glue.CATEGORY,
            description=("Loads the DOVER video-quality evaluator (Wu et al., ICCV 2023) for the TITAN Aesthetic "
                         "Objective. " + DOVER_FOLDER.tooltip()),
            inputs=[
                io.Combo.Input("weights_name", options=DOVER_FOLDER.files(), tooltip=DOVER_FOLDER.tooltip()),
                _dtype_input(),
            ],
            outputs=[TitanDoverModel.Output("dover", tooltip="DOVER network (managed by ComfyUI's model management).")],
        )

    @classmethod
    def validate_inputs(cls, weights_name) -> bool | str:
        """Before running: the selected file must be listed; otherwise say where to put it and where to get it."""
        return DOVER_FOLDER.validate(weights_name)

    @classmethod
    def execute(cls, weights_name, dtype) -> io.NodeOutput:
        """Load (or reuse) the selected DOVER file."""
        path = DOVER_FOLDER.path_of(weights_name)
        return io.NodeOutput(cached_load("DOVER", path, dtype, (), build_dover))


class TitanImageBindLoader(io.ComfyNode):
    """Load ImageBind (vision, audio and text towers) from models/imagebind."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanImageBindLoader",
            display_name="TITAN Load ImageBind",
            category=glue.CATEGORY,
            description=("Loads ImageBind (Girdhar et al., CVPR 2023; vision, audio and text towers) for the TITAN "
                         "Audio Objective. " + IMAGEBIND_FOLDER.tooltip()),
            inputs=[
                io.Combo.Input("weights_name", options=IMAGEBIND_FOLDER.files(), tooltip=IMAGEBIND_FOLDER.tooltip()),
                _dtype_input(),
            ],
            outputs=[TitanImageBindModel.Output("imagebind", tooltip="ImageBind network (managed by ComfyUI).")],
        )

    @classmethod
    def validate_inputs(cls, weights_name) -> bool | str:
        """Before running: the selected file must be listed; otherwise say where to put it and where to get it."""
        return IMAGEBIND_FOLDER.validate(weights_name)

    @classmethod
    def execute(cls, weights_name, dtype) -> io.NodeOutput:
        """Load (or reuse) the selected ImageBind file."""
        path = IMAGEBIND_FOLDER.path_of(weights_name)
        return io.NodeOutput(cached_load("ImageBind", path, dtype, (), build_imagebind))


class TitanClipStyleLoader(io.ComfyNode):
    """Load a CLIP model for the style objective from models/clip_vision (ComfyUI's folder)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanClipStyleLoader",
            display_name="TITAN Load CLIP (style)",
            category=glue.CATEGORY,
            description=("Loads a CLIP model for the TITAN Style Objective: a Hugging Face-layout clip_vision file "
                         "(image tower: style images) or an open_clip checkpoint (image and text tower: style images "
                         "and text targets). " + CLIP_FOLDER.tooltip()),
            inputs=[
                io.Combo.Input("clip_name", options=CLIP_FOLDER.files(), tooltip=CLIP_FOLDER.tooltip()),
                io.Combo.Input("architecture", options=[AUTO_ARCHITECTURE, *bundled_open_clip_configs()],
                               default=AUTO_ARCHITECTURE,
                               tooltip=("open_clip architecture of an open_clip checkpoint (not used for Hugging Face "
                                        "clip_vision files, which describe themselves). auto: the open_clip config "
                                        "saved as <file name>.json next to the checkpoint if there is one, else the "
                                        "bundled config whose sizes match the file (GELU variant; QuickGELU when the "
                                        "file name contains 'openai'). Pick it by hand when auto cannot tell.")),
                io.String.Input("pretrained_tag", default="",
                                tooltip=("Optional open_clip pretrained tag of the weights (e.g. laion2b_s32b_b79k, "
                                         "openai): selects open_clip's bundled preprocessing and QuickGELU setting for "
                                         "that release; nothing is downloaded. Empty = the architecture's defaults.")),
                _dtype_input(),
            ],
            outputs=[TitanClipModel.Output("clip", tooltip="CLIP model (managed by ComfyUI's model management).")],
        )

    @classmethod
    def validate_inputs(cls, clip_name) -> bool | str:
        """Before running: the selected file must be listed; otherwise say where to put it and where to get it."""
        return CLIP_FOLDER.validate(clip_name)

    @classmethod
    def execute(cls, clip_name, architecture, pretrained_tag, dtype) -> io.NodeOutput:
        """Load (or reuse) the selected CLIP file."""
        path = CLIP_FOLDER.path_of(clip_name)
        tag = pretrained_tag.strip()

        def build(file_path: str, weight_dtype: torch.dtype):
            return build_clip(file_path, weight_dtype, architecture, tag)

        return io.NodeOutput(cached_load("CLIP", path, dtype, (architecture, tag), build))


# ---------------------------------------------------------------------------------------------------------
# Objective nodes
# ---------------------------------------------------------------------------------------------------------
def _weight_input() -> io.Float.Input:
    """The objectives' weight input."""
    return io.Float.Input("weight", default=1.0, min=0.0, max=100.0, step=0.01, tooltip=WEIGHT_TOOLTIP)


def _require(model, socket: str, loader: str) -> LoadedGuidanceModel:
    """The loaded model, or a clear error when the socket carries something else."""
    if not isinstance(model, LoadedGuidanceModel):
        raise ValueError(f"'{socket}' must come from a {loader} node, got {type(model).__name__}")
    return model


class TitanAestheticObjective(io.ComfyNode):
    """DOVER video quality as a guidance objective (loss = -score)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanAestheticObjective",
            display_name="TITAN Aesthetic Objective (DOVER)",
            category=glue.CATEGORY,
            description=("Loss = -DOVER score of the decoded video (B, F >= 2 frames of at least 32x32 px). fused: "
                         "the official fused quality in (0, 1); aesthetic / technical: that branch's raw score."),
            inputs=[
                TitanDoverModel.Input("dover", tooltip="DOVER network from TITAN Load DOVER."),
                io.Combo.Input("mode", options=list(dover_objective.LOSS_MODES), default="fused",
                               tooltip=("fused: official fusion of both branches (paper's aesthetic guidance uses "
                                        "DOVER's score); aesthetic: ConvNeXt branch on resized frames (composition, "
                                        "content); technical: Swin branch on 32x32 fragments (sharpness, noise).")),
                _weight_input(),
                io.Combo.Input("fragment_sampling", options=["random", "center"], default="random",
                               tooltip=("Where the technical branch's 32x32 fragments are cut in each grid cell: "
                                        "random offsets (as upstream, fixed by the seed) or the cell centres.")),
                io.Int.Input("fragment_seed", default=0, min=0, max=2**31 - 1,
                             tooltip=("Seed of the fragment positions; fixed so every evaluation of a step sees the "
                                      "same fragments.")),
                io.Int.Input("technical_samples", default=1, min=1, max=8,
                             tooltip=("Average the technical score over this many fragment samplings (upstream "
                                      "averages 3); each one costs a technical-branch pass.")),
            ],
            outputs=[glue.TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, dover, mode, weight, fragment_sampling, fragment_seed, technical_samples) -> io.NodeOutput:
        """Build the DOVER objective."""
        model = _require(dover, "dover", "TITAN Load DOVER")
        with torch.inference_mode(False):
            loss = dover_objective.DoverLoss(model.network, mode=mode, fragment_sampling=fragment_sampling,
                                             fragment_seed=int(fragment_seed), technical_samples=int(technical_samples))
        return objective_output(ManagedObjective(loss, model), weight, f"DOVER {mode}")


class TitanStyleObjective(io.ComfyNode):
    """CLIP style guidance: frames towards a style image and/or a text, optionally keeping content."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanStyleObjective",
            display_name="TITAN Style Objective (CLIP)",
            category=glue.CATEGORY,
            description=("Per frame: style_weight * style term (cosine: 1 - cos(CLIP(frame), CLIP(style)); gram: Gram "
                         "matrix distance of patch tokens) + text_weight * (1 - cos(CLIP(frame), CLIP(text))) + "
                         "content_weight * (1 - cos(CLIP(frame), CLIP(reference frame))); averaged over frames."),
            inputs=[
                TitanClipModel.Input("clip", tooltip="CLIP model from TITAN Load CLIP (style)."),
                io.Combo.Input("loss_kind", options=list(style_clip.STYLE_MODES), default="cosine",
                               tooltip=("cosine: match the style image's CLIP embedding (paper's Style-CLIP "
                                        "objective); gram: match Gram matrices of the patch tokens at gram_layer "
                                        "(texture; needs a ViT image tower and a style image).")),
                _weight_input(),
                io.Image.Input("style_image", optional=True,
                               tooltip=("Style reference image(s), any size (each is resized and centre-cropped on "
                                        "its own); several images are averaged.")),
                io.String.Input("text", default="", multiline=True,
                                tooltip=("Optional text target (needs an open_clip checkpoint with a text tower). "
                                         "Empty = none.")),
                io.Float.Input("style_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the style-image term (used when a style image is connected)."),
                io.Float.Input("text_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the text term (used when text is given)."),
                io.Float.Input("content_weight", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip=("Weight of the content term: keeps each frame's CLIP embedding near the same "
                                        "frame of content_reference. 0 = off.")),
                io.Image.Input("content_reference", optional=True,
                               tooltip=("Reference frames for the content term (e.g. the decoded unguided video), as "
                                        "many frames as each generated video. Needed when content_weight > 0.")),
                io.Int.Input("gram_layer", default=-2, min=-64, max=63,
                             tooltip="Image-tower block whose patch tokens the gram loss compares (-2 = penultimate)."),
                io.Int.Input("frames_per_chunk", default=0, min=0, max=4096,
                             tooltip="Frames sent through CLIP at once (0 = all). Lower values lower peak memory."),
            ],
            outputs=[glue.TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, clip, loss_kind, weight, text, style_weight, text_weight, content_weight, gram_layer,
                frames_per_chunk, style_image=None, content_reference=None) -> io.NodeOutput:
        """Build the CLIP style objective (style / text embeddings are computed here, once)."""
        model = _require(clip, "clip", "TITAN Load CLIP (style)")
        prompt = _text_prompt(text)
        if style_image is None and prompt is None:
            raise ValueError("the style objective needs a target: connect a style_image, enter a text, or both")
        if prompt is not None and not model.network.has_text:
            raise ValueError(
                f"a text target needs CLIP's text tower, but {os.path.basename(model.path)} is a Hugging Face "
                "clip_vision file (image tower only). Load an open_clip checkpoint (e.g. open_clip_model.safetensors "
                "of ViT-H-14) in TITAN Load CLIP (style), or clear the text.")
        if content_weight > 0 and content_reference is None:
            raise ValueError("content_weight > 0 needs the content_reference frames; connect them or set the "
                             "content weight to 0")
        model.load()
        device = model.device
        with torch.inference_mode(False):
            reference = None if content_reference is None or content_weight <= 0 else content_reference.to(device)
            loss = style_clip.StyleLoss(
                model.network, style_image=style_image, text=prompt, mode=loss_kind, style_weight=style_weight,
                text_weight=text_weight, content_weight=content_weight, content_video=reference,
                gram_layer=int(gram_layer), frames_per_chunk=int(frames_per_chunk) or None)
        parts = (["style image"] if style_image is not None else []) + ([f"text {prompt!r}"] if prompt else [])
        name = f"CLIP style {loss_kind} ({', '.join(parts)}" + (f"; content {content_weight:g}" if reference is not None
                                                                  else "") + ")"
        return objective_output(ManagedObjective(loss, model), weight, name)


class TitanAudioObjective(io.ComfyNode):
    """ImageBind audio-video alignment (optionally also towards a text)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanAudioObjective",
            display_name="TITAN Audio Objective (ImageBind)",
            category=glue.CATEGORY,
            description=("Loss = audio_weight * (1 - cos(ImageBind(video), ImageBind(audio span))) + text_weight * "
                         "(1 - cos(ImageBind(video), ImageBind(text))). A video of F frames at fps covers F / fps "
                         "seconds of the audio from audio_start; the audio must be that long. Any sample rate "
                         "(resampled to 16 kHz) and channel count (averaged to mono)."),
            inputs=[
                TitanImageBindModel.Input("imagebind", tooltip="ImageBind network from TITAN Load ImageBind."),
                io.Audio.Input("audio", tooltip="Audio to align the video with (e.g. from Load Audio)."),
                io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.01,
                               tooltip="Frame rate of the generated video: maps frames to audio time."),
                io.Float.Input("audio_start", default=0.0, min=0.0, max=86400.0, step=0.01,
                               tooltip="Second of the audio where the video starts."),
                _weight_input(),
                io.String.Input("text", default="", multiline=True,
                                tooltip=("Optional text the video should also match (ImageBind text tower). "
                                         "Empty = none.")),
                io.Float.Input("audio_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the audio term."),
                io.Float.Input("text_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the text term (used when text is given)."),
                io.Combo.Input("vision_clips", options=["pairs", "official"], default="pairs",
                               tooltip=("Which frames form ImageBind's 2-frame clips. pairs: consecutive pairs "
                                        "covering every frame (every frame gets guidance); official: ImageBind's 5 "
                                        "clips of 2 s (first and last frame of each).")),
                io.Combo.Input("spatial_crops", options=["3", "1"], default="3",
                               tooltip="Square crops per frame (3 = ImageBind's left/centre/right, 1 = centre only)."),
                io.Int.Input("clips_per_chunk", default=0, min=0, max=4096,
                             tooltip="Clips sent through the vision tower at once (0 = all). Lower = less memory."),
            ],
            outputs=[glue.TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, imagebind, audio, fps, audio_start, weight, text, audio_weight, text_weight, vision_clips,
                spatial_crops, clips_per_chunk) -> io.NodeOutput:
        """Build the ImageBind audio objective."""
        model = _require(imagebind, "imagebind", "TITAN Load ImageBind")
        prompt = _text_prompt(text)
        if prompt is not None:
            model.load()  # the text embedding is computed once, here
        with torch.inference_mode(False):
            loss = imagebind_audio.ImageBindAudioLoss(
                model.network, audio, float(fps), text=prompt, audio_weight=audio_weight, text_weight=text_weight,
                audio_start_s=float(audio_start), vision_clips=vision_clips, spatial_crops=int(spatial_crops),
                clips_per_chunk=int(clips_per_chunk) or None)
        name = f"ImageBind audio ({fps:g} fps from {audio_start:g} s" + (f"; text {prompt!r}" if prompt else "") + ")"
        return objective_output(ManagedObjective(loss, model), weight, name, supplied=("audio", "fps"))


def parse_keyframe_indices(text: str) -> list[int]:
    """'0, 8, -1' -> [0, 8, -1] (negative counts from the end); clear error otherwise."""
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    if not parts:
        raise ValueError("frame_indices is empty: give one frame index per keyframe (e.g. '0, -1') or connect a mask")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"frame_indices must be whole numbers separated by commas (e.g. '0, 8, -1'), got {text!r}") \
            from None


def mask_to_known_frames(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK with one mask per video frame -> boolean (F,): True where the frame's mask is all 1."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ValueError(f"mask must be a ComfyUI MASK (frames, H, W), got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    per_frame = mask.reshape(mask.shape[0] if mask.ndim == 3 else 1, -1).float()
    low, high = per_frame.min(dim=1).values, per_frame.max(dim=1).values
    mixed = [f for f in range(per_frame.shape[0])
             if not ((high[f] <= 1e-3) or (low[f] >= 1 - 1e-3))]
    if mixed:
        raise ValueError(f"mask frames {mixed} are neither all 0 nor all 1; the mask marks whole frames (1 = known "
                         "keyframe, 0 = to generate), one mask per video frame")
    return low >= 1 - 1e-3


class TitanFrameInterpolationObjective(io.ComfyNode):
    """Keyframe matching (paper eq. 11): known frames fixed, guidance fills the frames between."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs, outputs and descriptions shown in ComfyUI."""
        return io.Schema(
            node_id="TitanFrameInterpolationObjective",
            display_name="TITAN Frame Interpolation Objective",
            category=glue.CATEGORY,
            description=("Loss = mean squared error between the known frames of the video and the keyframes (0 for "
                         "the other frames), averaged over frames. pixels: on the decoded video (keyframes the video's "
                         "size); latent: on latents against the keyframes encoded once with the VAE (no decode)."),
            inputs=[
                io.Image.Input("keyframes", tooltip="The known frames, in order, the same size as the video."),
                io.String.Input("frame_indices", default="0, -1",
                                tooltip=("Video frame index of each keyframe, comma separated (negative counts from "
                                         "the end: '0, -1' = first and last; with the sampled_gradient guess on a "
                                         "subset of frames use non-negative indices). Ignored when a mask is "
                                         "connected.")),
                io.Combo.Input("space", options=["pixels", "latent"], default="pixels",
                               tooltip=("pixels: compare decoded frames (accurate, decodes every guided step); latent: "
                                        "compare latents with the encoded keyframes (cheap; needs the vae input; "
                                        "image VAEs only).")),
                _weight_input(),
                io.Mask.Input("mask", optional=True,
                              tooltip=("Alternative to frame_indices: one mask per video frame, all 1 for known frames "
                                       "(in keyframe order) and all 0 for the frames to generate.")),
                io.Vae.Input("vae", optional=True,
                             tooltip="VAE that encodes the keyframes for space 'latent' (the sampler's VAE)."),
            ],
            outputs=[glue.TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, keyframes, frame_indices, space, weight, mask=None, vae=None) -> io.NodeOutput:
        """Build the keyframe objective (latent space: encode the keyframes once)."""
        if not isinstance(keyframes, torch.Tensor) or keyframes.ndim != 4 or keyframes.shape[-1] != 3:
            shape = tuple(keyframes.shape) if isinstance(keyframes, torch.Tensor) else type(keyframes).__name__
            raise ValueError(f"keyframes must be a ComfyUI IMAGE batch (K, H, W, 3), got {shape}")
        selection = {"mask": mask_to_known_frames(mask)} if mask is not None else \
            {"indices": parse_keyframe_indices(frame_indices)}
        where = "mask" if mask is not None else f"frames {selection['indices']}"
        if space == "latent":
            if vae is None:
                raise ValueError("space 'latent' needs the vae input (the sampler's VAE) to encode the keyframes; "
                                 "connect it or use space 'pixels'")
            # VAE space, as the sampler hands latent objectives process_latent_out(x0).
            key_latents = vae.encode(keyframes)
            if key_latents.ndim != 4 or key_latents.shape[0] != keyframes.shape[0]:
                raise ValueError(
                    f"the VAE encoded {keyframes.shape[0]} keyframes to latents of shape {tuple(key_latents.shape)}; "
                    "space 'latent' needs an image VAE (one latent per frame): use space 'pixels'")
            with torch.inference_mode(False):  # normal tensors: backprop-based guesses may save them
                loss = LatentFrameInterpolationLoss(key_latents.float().clone(), **selection)
        else:
            with torch.inference_mode(False):
                # the video comes from the sampler's own decode (fixed convention); early Tweedie estimates of
                # unclamped decoders (the embedded codec) overshoot [0, 1] by far more than the default allows
                loss = FrameInterpolationLoss(keyframes.float().clone(), range_tolerance=DECODED_RANGE_TOLERANCE,
                                              **selection)
        name = f"frame interpolation ({space}, {keyframes.shape[0]} keyframe(s) at {where})"
        return objective_output(ManagedInterpolationObjective(loss), weight, name)


NODE_CLASSES = [TitanDoverLoader, TitanImageBindLoader, TitanClipStyleLoader, TitanAestheticObjective,
                TitanStyleObjective, TitanAudioObjective, TitanFrameInterpolationObjective]
