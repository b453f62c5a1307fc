"""Autograd through tensors a host created under `torch.inference_mode()`.

ComfyUI executes nodes under inference mode. Guidance runs under `torch.inference_mode(False)`; tensors created
in inference mode (model weights, conditioning, sigmas) stay "inference tensors", which autograd refuses to save
for backward. `InferenceTensorClones` substitutes cached normal clones for them only in operations autograd
records (backprop methods, the sampled-gradient guess); forward-mode AD saves nothing and needs no clones.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch.overrides import TorchFunctionMode


def _any_requires_grad(values: Iterable) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                return True
        elif isinstance(value, (list, tuple)):
            if any(isinstance(v, torch.Tensor) and v.requires_grad for v in value):
                return True
    return False


class InferenceTensorClones:
    """Normal clones of inference tensors for operations autograd records, one clone per tensor per step.

    Weights, conditioning and schedules that ComfyUI created under inference mode cannot be saved for
    backward. `scope()` substitutes a cached normal clone for each such tensor in every operation that has
    an input requiring grad; the clones live until `clear()` (once per sampler step), so a backprop pass
    holds at most one copy of the weights it touches. Under no_grad and in forward-mode AD (which saves
    nothing) the scope is a no-op. The denoiser, decode and loss each enter a scope themselves, so activation
    checkpointing, which recomputes them during backward (outside any mode entered by the caller), is covered.
    """

    def __init__(self):
        self._clones: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        """Drop the cached clones (their memory is freed once no graph holds them)."""
        self._clones.clear()

    def normal(self, value):
        """`value` with inference tensors (also inside a list / tuple) replaced by their clones."""
        if isinstance(value, torch.Tensor):
            if value.is_inference():
                entry = self._clones.get(id(value))
                if entry is None or entry[0] is not value:
                    entry = (value, value.clone())
                    self._clones[id(value)] = entry
                return entry[1]
            return value
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(self.normal(v) for v in value)
        return value

    def scope(self):
        """Context in which autograd-recorded operations see normal clones (no-op without grad)."""
        return _CloneInferenceTensors(self) if torch.is_grad_enabled() else contextlib.nullcontext()


class _CloneInferenceTensors(TorchFunctionMode):
    """The torch-function mode behind `InferenceTensorClones.scope()`."""

    def __init__(self, clones: InferenceTensorClones):
        super().__init__()
        self.clones = clones

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled() and (_any_requires_grad(args) or _any_requires_grad(kwargs.values())):
            args = tuple(self.clones.normal(a) for a in args)
            kwargs = {k: self.clones.normal(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def same_device(a, b) -> bool:
    """Whether two device specs name the same device ('cuda' matches 'cuda:0')."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def make_tensors_normal(module: torch.nn.Module) -> None:
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
