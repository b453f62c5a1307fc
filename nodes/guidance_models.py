"""Guidance networks (DOVER, ImageBind, CLIP) under ComfyUI's model management: the weight folders they are
listed from, their ModelPatcher (loaded whole, never in part), the loader outputs' value and the load cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import weakref
from typing import Callable

import torch

import comfy.model_management as model_management
import comfy.model_patcher
import folder_paths

from ..guidance_core.inference_tensors import make_tensors_normal, same_device
from ..objectives.checkpoint_layouts import CLIP_WEIGHTS, DOVER_WEIGHTS, IMAGEBIND_WEIGHTS, WeightFiles
from .comfy_model import managed_entry

LOG = logging.getLogger("titan_guide")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class WeightsFolder:
    """A ComfyUI model folder and what belongs in it (for listings, tooltips and missing-file messages)."""

    folder: str
    weights: WeightFiles  # what belongs in it

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
        return self.weights.missing_message(name, self.where())

    def tooltip(self) -> str:
        """Tooltip of the file COMBO."""
        return self.weights.tooltip(self.where())

    def path_of(self, name: str) -> str:
        """Absolute path of a listed file; FileNotFoundError with the full message if absent."""
        path = folder_paths.get_full_path(self.folder, name) if name else None
        if path is None:
            raise FileNotFoundError(self.missing_message(name))
        return path

    def validate(self, name: str) -> bool | str:
        """True if `name` is a listed file, else the missing-file message (shown by ComfyUI before running)."""
        return True if name and name in self.files() else self.missing_message(name)


DOVER_FOLDER = WeightsFolder("dover", DOVER_WEIGHTS)
IMAGEBIND_FOLDER = WeightsFolder("imagebind", IMAGEBIND_WEIGHTS)
CLIP_FOLDER = WeightsFolder("clip_vision", CLIP_WEIGHTS)


# ComfyUI's own "load everything" amount for partially_load (LoadedModel.model_load uses 1e32 too).
FULL_LOAD_MEMORY = 1e32


class GuidanceNetworkPatcher(comfy.model_patcher.ModelPatcher):
    """ModelPatcher of a plain-PyTorch guidance network: loaded and unloaded whole, never in part.

    ComfyUI loads part of a model under memory pressure and runs the rest through comfy.ops layers, which cast
    weights on the fly; plain torch layers (DOVER, ImageBind, CLIP) would meet weights on two devices. So this
    patcher loads all of it (ComfyUI offloads other models first) and frees nothing of it when asked to free part,
    after which ComfyUI unloads it whole."""

    def partially_load(self, device_to, extra_memory=0, *args, **kwargs):
        """Load the whole network, whatever amount ComfyUI offers."""
        return super().partially_load(device_to, FULL_LOAD_MEMORY, *args, **kwargs)

    def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs):
        """Free nothing (a partial unload would split the network across devices); ComfyUI unloads it whole."""
        return 0

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
        where = getattr(patcher.model, "device", None)  # set by ModelPatcher.load
        return (managed_entry(patcher) is not None and where is not None and same_device(where, patcher.load_device)
                and patcher.loaded_size() >= patcher.model_size())

    def load(self, device=None) -> None:
        """Load the network onto its device through ComfyUI (may offload other models to make room), unless it
        is there already: a second `load_models_gpu` call would free memory again, maybe offloading the others."""
        if device is not None and not same_device(device, self.patcher.load_device):
            raise ValueError(
                f"the {self.kind} network is managed for {self.patcher.load_device} (ComfyUI's VAE device) but the "
                f"guided run decodes on {device}; load the VAE on ComfyUI's default VAE device")
        if not self.is_loaded():
            with torch.inference_mode(False):
                model_management.load_models_gpu([self.patcher], force_full_load=True)
        make_tensors_normal(self.patcher.model)

    def __str__(self) -> str:
        return f"{self.kind} from {self.path} ({self.dtype_name}; {self.summary})"


# The newest load of each kind (DOVER, ImageBind, CLIP) stays in memory, so a graph that ran before reuses it;
# other loads live only while something (ComfyUI's output cache, an objective) still references them.
_RECENT: dict[str, LoadedGuidanceModel] = {}
_ALIVE: "weakref.WeakValueDictionary[tuple, LoadedGuidanceModel]" = weakref.WeakValueDictionary()


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
    patcher = GuidanceNetworkPatcher(GuidanceNetworkPatcher.GuidanceNetwork(network, DTYPES[dtype_name], kind),
                                     load_device=model_management.vae_device(),
                                     offload_device=model_management.vae_offload_device())
    loaded = LoadedGuidanceModel(kind, path, dtype_name, patcher, summary)
    _RECENT[kind] = loaded
    _ALIVE[key] = loaded
    LOG.info("TITAN-Guide: loaded the %s network from %s (%s; %s) in %.2f s", kind, path, dtype_name, summary,
             time.perf_counter() - started)
    return loaded
