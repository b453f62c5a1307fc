"""Device copies of constant tensors, made once per (device, dtype) instead of on every call.

Besides saving a host-to-device copy per call, this keeps an objective usable inside a captured CUDA graph
(guidance_core.GraphedJvp): no copy from pageable host memory is allowed while a graph is captured, and
the eager call that precedes every capture fills the cache.
"""
from __future__ import annotations

import threading
from typing import Sequence

import torch

_lock = threading.Lock()
_copies: dict = {}


def on_device(cpu: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`cpu.to(device, dtype)`, cached; `cpu` must be a long-lived constant (it keys the cache)."""
    dtype = cpu.dtype if dtype is None else dtype
    if cpu.device == torch.device(device) and cpu.dtype == dtype:
        return cpu
    if torch._C._functorch.is_functorch_wrapped_tensor(cpu):  # lives only inside one transform: never cache
        return cpu.to(device=device, dtype=dtype)
    key = (id(cpu), torch.device(device), dtype)
    with _lock:
        entry = _copies.get(key)
        if entry is None or entry[0] is not cpu:
            entry = (cpu, cpu.to(device=device, dtype=dtype))
            _copies[key] = entry
        return entry[1]


_values: dict = {}


def constant(values: Sequence[float] | Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D constant tensor of `values` on `device`, made once per (values, device, dtype)."""
    key = (tuple(values), dtype)
    with _lock:
        cpu = _values.get(key)
        if cpu is None:
            with torch._C._DisableFuncTorch():  # a plain tensor, even when first asked for inside torch.func
                cpu = _values[key] = torch.tensor(key[0], dtype=dtype)
    return on_device(cpu, device, dtype)


def capturing(tensor: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured on the current stream (then no check may read values back)."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()
