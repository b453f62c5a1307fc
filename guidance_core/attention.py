"""Attention that forward-mode AD can pass through.

PyTorch's fused SDPA kernels (flash, memory-efficient, cuDNN, CPU flash) have no forward derivative and raise
under a JVP, so every JVP runs inside `forward_ad_attention()`, which selects the MATH backend and lets hosts
(ComfyUI, AnimateDiff-Evolved) install their own forward-AD-capable attention for the same scope.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

_host_contexts: list[Callable[[], ContextManager]] = []


def register_attention_context(factory: Callable[[], ContextManager]) -> Callable[[], None]:
    """Add a context manager factory entered inside every `forward_ad_attention()`; returns an unregister."""
    _host_contexts.append(factory)
    return lambda: _host_contexts.remove(factory) if factory in _host_contexts else None


@contextlib.contextmanager
def forward_ad_attention() -> Iterator[None]:
    """Scope in which attention has a forward derivative (MATH SDPA plus host overrides)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        for factory in list(_host_contexts):
            stack.enter_context(factory())
        yield


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                   mask: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """Explicit softmax(q k^T * scale) v over (..., tokens, dim), optionally chunked over queries to bound memory."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if chunk is None or chunk >= q.shape[-2]:
        w = (q @ k.transpose(-1, -2)) * scale
        if mask is not None:
            w = w + mask
        return w.softmax(dim=-1) @ v
    outs = []
    for s in range(0, q.shape[-2], chunk):
        m = None if mask is None else mask[..., s:s + chunk, :]
        outs.append(math_attention(q[..., s:s + chunk, :], k, v, scale, m))
    return torch.cat(outs, dim=-2)
