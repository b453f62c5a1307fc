"""Attention (and the few other ops) that forward-mode AD can pass through.

PyTorch's fused SDPA kernels (flash, memory-efficient, cuDNN, CPU flash) have no forward derivative and raise
under a JVP, so every JVP runs inside `forward_ad_attention()`, which selects the MATH backend and lets hosts
(ComfyUI, AnimateDiff-Evolved) install their own forward-AD-capable attention for the same scope.
group_norm's forward-AD rule views its tangent, which fails when the tangent is strided while the primal is
contiguous (after attention's transposes), so inside the scope group_norm gets a contiguous copy; and
layer_norm's forward-AD rule returns a float32 tangent for fp16/bf16 inputs on CUDA, so half-precision
layer norms run in float32 there and are cast back.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

_host_contexts: list[Callable[[], ContextManager]] = []


def register_attention_context(factory: Callable[[], ContextManager]) -> Callable[[], None]:
    """Add a context manager factory entered inside every `forward_ad_attention()`; returns an unregister."""
    _host_contexts.append(factory)
    return lambda: _host_contexts.remove(factory) if factory in _host_contexts else None


@contextlib.contextmanager
def _contiguous_group_norm() -> Iterator[None]:
    original = F.group_norm

    def group_norm(input, *args, **kwargs):
        return original(input.clone(memory_format=torch.contiguous_format), *args, **kwargs)

    F.group_norm = group_norm
    try:
        yield
    finally:
        F.group_norm = original


@contextlib.contextmanager
def _float32_layer_norm() -> Iterator[None]:
    original = F.layer_norm

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
        if input.dtype not in (torch.float16, torch.bfloat16):
            return original(input, normalized_shape, weight, bias, eps)
        up = (lambda t: None if t is None else t.float())
        return original(input.float(), normalized_shape, up(weight), up(bias), eps).to(input.dtype)

    F.layer_norm = layer_norm
    try:
        yield
    finally:
        F.layer_norm = original


@contextlib.contextmanager
def forward_ad_attention() -> Iterator[None]:
    """Scope in which attention has a forward derivative (MATH SDPA plus host overrides)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(_contiguous_group_norm())
        stack.enter_context(_float32_layer_norm())
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
