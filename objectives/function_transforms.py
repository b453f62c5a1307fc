"""Working from inside torch.func transforms: suspending them for constants and integer labels, constant tensors
made once with device copies per (device, dtype), and whether a CUDA graph is being captured.

Besides saving a host-to-device copy per call, this keeps an objective usable inside a captured CUDA graph
(guidance_core.GraphedJvp): no copy from pageable host memory is allowed while a graph is captured, and
the eager call that precedes every capture fills the cache.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch


def inside_function_transform() -> bool:
    """Whether a torch.func transform (jvp, grad, vmap, ...) is active around the caller."""
    return torch._C._functorch.maybe_current_level() is not None


_BUILTIN_SDPA = torch.nn.functional.scaled_dot_product_attention


def sdpa_usable() -> bool:
    """Whether F.scaled_dot_product_attention can be called here: outside every torch.func transform and dual level
    (PyTorch's fused kernels have no forward-mode rule), or replaced by a router that has one (guidance_core's,
    inside its forward-mode scope)."""
    if torch.nn.functional.scaled_dot_product_attention is not _BUILTIN_SDPA:
        return True
    return not inside_function_transform() and torch.autograd.forward_ad._current_level < 0


@contextlib.contextmanager
def outside_function_transforms() -> Iterator[bool]:
    """Suspend the torch.func transforms active around the caller for the body; yields whether it could.

    Inside a transform every result is wrapped for that transform's level and must not outlive it; a
    constant computed in this scope is a plain tensor that may be cached. Uses torch's own helper for
    suspending the transform stack (private API); where it is missing the body runs inside the transforms
    and this yields False.
    """
    if not inside_function_transform():
        yield True
        return
    try:
        from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
    except ImportError:
        yield False
        return
    with temporarily_clear_interpreter_stack():
        yield True


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
            with outside_function_transforms() as outside:  # a plain tensor, even when asked for inside torch.func
                cpu = torch.tensor(key[0], dtype=dtype)
            if not outside:  # tied to the transform around the caller: not cached
                return cpu.to(device=device, dtype=dtype)
            _values[key] = cpu
    return on_device(cpu, device, dtype)


def capturing(tensor: torch.Tensor) -> bool:
    """Whether no check may read values back: a CUDA graph is being captured on the current stream, or PyTorch's
    sync debug mode is "error" (GraphedJvp's probe pass before a capture, which must see what the capture sees)."""
    return tensor.is_cuda and (torch.cuda.is_current_stream_capturing() or torch.cuda.get_sync_debug_mode() == 2)
