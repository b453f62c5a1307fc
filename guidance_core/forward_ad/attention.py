"""Attention (and the few other ops) that forward-mode AD can pass through.

PyTorch's fused SDPA kernels (flash, memory-efficient, cuDNN, CPU flash) have no forward derivative and raise
under a JVP, so every JVP runs inside `forward_ad_attention()`, which selects the MATH backend and lets hosts
(ComfyUI, AnimateDiff-Evolved) install their own forward-AD-capable attention for the same scope.
Convolutions, linear layers and the norms take lean forward rules inside the scope (`rules.py`): the builtin
rules compute tangents of the frozen weights, and two of them fail on inputs hosts produce.

Inside the scope `torch.nn.functional.scaled_dot_product_attention` is `forward_ad_sdpa`, which picks a path per
call by shape: on CUDA our own primal+tangent Triton kernel (`triton_attention.py`: one tiled pass, no score
matrix in memory; self- and cross-attention, causal, head dims up to 256), which beat chunked MATH by 10-40x
and `jvp-flash-attention` 0.14.0 by 3-9x at every shape of `benchmarks/jvp_attention.py` on an H200 (and
jvp-flash-attention's tangent was wrong at Wan's and CogVideoX's lengths there); elsewhere (CPU, short
sequences, masks, float64) MATH chunked over queries, so the score matrix of one chunk bounds memory.
`jvp-flash-attention` stays selectable (settings `kernel`, or TITAN_FORWARD_AD_KERNEL) for before/after runs.
"""
from __future__ import annotations

import contextlib
import functools
import math
import dataclasses
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import os

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import triton_attention
from .rules import lean_linear_layers, lean_norms, replaced_functions

_host_contexts: list[Callable[[], ContextManager]] = []
# the builtin, whatever F.scaled_dot_product_attention is bound to while a scope is active
_builtin_sdpa = torch._C._nn.scaled_dot_product_attention

FUSED_HEAD_DIMS = (16, 32, 64, 128, 256)  # what jvp-flash-attention compiles for; others are zero-padded up
KERNELS = ("triton", "jvp-flash-attention")  # ours (triton_attention.py), the package's


def _default_kernel() -> str:
    kernel = os.environ.get("TITAN_FORWARD_AD_KERNEL", "triton")
    if kernel not in KERNELS:
        raise ValueError(f"TITAN_FORWARD_AD_KERNEL={kernel!r} is not a forward-mode attention kernel; use one of "
                         f"{KERNELS} (or unset it)")
    return kernel


@dataclass(frozen=True)
class ForwardADAttentionSettings:
    """Forward-AD scope settings: fused kernel on/off and which one, the shortest sequence worth it, MATH chunk
    budget, and the lean conv/linear forward rules on/off (the switches exist so benchmarks can show each one's
    effect)."""

    fused: bool = True
    fused_min_tokens: int = 256
    max_score_bytes: int = 1 << 30
    lean_linear: bool = True  # rules.lean_linear_layers inside the scope
    kernel: str = dataclasses.field(default_factory=_default_kernel)

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown forward-mode attention kernel {self.kernel!r}; choose one of {KERNELS}")


# The settings in force: the defaults, or a settings_override() scope's (per thread / task, restored on exit).
_settings: ContextVar[ForwardADAttentionSettings] = ContextVar("forward_ad_settings",
                                                               default=ForwardADAttentionSettings())
route_counts: Counter = Counter()  # calls per path, for benchmarks and tests; `.clear()` resets it


def current_settings() -> ForwardADAttentionSettings:
    """The forward-AD settings in force here."""
    return _settings.get()


@contextlib.contextmanager
def settings_override(**changes) -> Iterator[ForwardADAttentionSettings]:
    """Scope in which the forward-AD settings differ by `changes` (e.g. fused=False); nothing outlives it."""
    token = _settings.set(dataclasses.replace(_settings.get(), **changes))
    try:
        yield _settings.get()
    finally:
        _settings.reset(token)


def triton_kernel_available() -> bool:
    """Whether our Triton kernel can run here: an importable Triton and CUDA (or, on the CPU, its interpreter)."""
    return triton_attention._triton_error() is None and (torch.cuda.is_available() or triton_attention._interpreting())


@functools.lru_cache(maxsize=None)
def fused_kernel():
    """The `jvp-flash-attention` kernel class, or None where it cannot run (no package, no Triton, no CUDA)."""
    if not torch.cuda.is_available():
        return None
    try:
        from jvp_flash_attention.jvp_attention import JVPAttn
    except ImportError:
        return None
    return JVPAttn


def register_attention_context(factory: Callable[[], ContextManager]) -> Callable[[], None]:
    """Add a context manager factory entered inside every `forward_ad_attention()`; returns an unregister."""
    _host_contexts.append(factory)
    return lambda: _host_contexts.remove(factory) if factory in _host_contexts else None


def padded_head_dim(dim: int) -> int | None:
    """The smallest head dim the fused kernel compiles for that holds `dim` (None if none does)."""
    return next((d for d in FUSED_HEAD_DIMS if d >= dim), None)


def attention_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
                    is_causal: bool = False, enable_gqa: bool = False, kernel_available: bool | None = None) -> str:
    """"triton" (ours) or "fused" (jvp-flash-attention, when selected) where a fused JVP kernel applies on CUDA,
    else "math". Decided from shapes and dtypes alone; `kernel_available` overrides the import check (tests)."""
    settings = current_settings()
    ours = settings.kernel == "triton"
    if kernel_available is None:
        kernel_available = triton_kernel_available() if ours else fused_kernel() is not None
    on_device = q.is_cuda or (ours and triton_attention._interpreting())  # the CPU only under the interpreter (tests)
    if not (settings.fused and kernel_available and on_device and q.dim() == 4 and k.dim() == 4 and v.dim() == 4):
        return "math"
    if attn_mask is not None or dropout_p:
        return "math"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not (q.dtype == k.dtype == v.dtype):
        return "math"
    if q.shape[-2] < max(settings.fused_min_tokens, 32):
        return "math"
    if ours:  # self- and cross-attention, causal, ragged lengths, head dims up to 256; equal heads
        if q.shape[:2] != k.shape[:2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
            return "math"
        if max(q.shape[-1], v.shape[-1]) > triton_attention.MAX_HEAD_DIM:
            return "math"
        return "triton"
    if is_causal or enable_gqa or k.shape != q.shape or v.shape != q.shape:  # the package needs equal shapes
        return "math"
    if q.shape[-2] % 2 or padded_head_dim(q.shape[-1]) is None:
        return "math"
    return "fused"


def _pad_head(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t if t.shape[-1] == dim else F.pad(t, (0, dim - t.shape[-1]))


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T scale) v and its tangent in one flash kernel; head dims zero-padded (scores unchanged)."""
    kernel = fused_kernel()
    if kernel is None:
        raise RuntimeError("the fused forward-mode attention needs CUDA and `pip install jvp-flash-attention`")
    dim = q.shape[-1]
    scale = dim ** -0.5 if scale is None else scale
    padded = padded_head_dim(dim)
    primals, tangents = zip(*(fwAD.unpack_dual(t) for t in (q, k, v)))
    if all(t is None for t in tangents):  # no forward-mode pass through this call
        return _builtin_sdpa(q, k, v, scale=scale)
    # the kernel computes all three tangents together: a constant input gets a zero tangent
    q, k, v = (fwAD.make_dual(p, torch.zeros_like(p)) if t is None else d
               for d, p, t in zip((q, k, v), primals, tangents))
    out = kernel.fwd_dual(*(_pad_head(t, padded) for t in (q, k, v)), sm_scale=scale)
    return out[..., :dim]


def chunked_math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                      max_score_bytes: int | None = None):
    """MATH SDPA over query chunks whose score matrix fits `max_score_bytes` (same result, bounded memory).

    MATH is selected here, not only by the scope, so a host's backend-priority context around the call
    cannot bring back a kernel without a forward derivative.
    """
    with sdpa_kernel([SDPBackend.MATH]):
        return _chunked_math(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, max_score_bytes)


def _chunked_math(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, max_score_bytes):
    budget = current_settings().max_score_bytes if max_score_bytes is None else max_score_bytes
    queries = q.shape[-2]
    rows = math.prod(q.shape[:-2]) if q.dim() > 2 else 1
    per_query = rows * k.shape[-2] * q.element_size() * 4  # scores, probabilities and two tangent-sized terms
    chunk = max(1, budget // max(per_query, 1))
    kwargs = dict(dropout_p=dropout_p, scale=scale, enable_gqa=enable_gqa)
    additive = attn_mask is None or (attn_mask.is_floating_point() and attn_mask.dim() >= 2
                                     and fwAD.unpack_dual(attn_mask).tangent is None)
    plain = additive and not dropout_p and not is_causal and not enable_gqa and k.shape[:-2] == q.shape[:-2]
    duals = [fwAD.unpack_dual(t) for t in (q, k, v)]
    if plain and any(d.tangent is not None for d in duals):
        return lean_math_attention(*duals, chunk, scale, attn_mask)
    if chunk >= queries or is_causal:  # causal masks depend on absolute query positions: one call
        return _builtin_sdpa(q, k, v, attn_mask, is_causal=is_causal, **kwargs)
    outs = []
    for start in range(0, queries, chunk):
        mask = attn_mask
        if mask is not None and mask.dim() >= 2 and mask.shape[-2] == queries:
            mask = mask[..., start:start + chunk, :]
        outs.append(_builtin_sdpa(q[..., start:start + chunk, :], k, v, mask, **kwargs))
    return torch.cat(outs, dim=-2)


def lean_math_attention(q, k, v, chunk: int, scale: float | None, mask: torch.Tensor | None = None):
    """softmax(q k^T s + mask) v and its tangent, `chunk` query rows at a time, written out (q, k, v: unpacked
    duals with equal leading dims; `mask` None or an additive constant broadcastable to the scores): dS = (dq k^T +
    q dk^T) s, dP = P * (dS - rowsum(P * dS)), dO = dP v + P dv. The
    builtin MATH rule dispatches several times the kernels (scale applied to q and k with zero-tangent scalars, a
    safe softmax with its masks, products with zero tangents for cross-attention's constant keys and values).
    Each input is flattened to (batch, tokens, dim) once: a head-split view (b, h, n, d) cannot fold into one
    batch dim, and every matmul would copy it again; the scale and the sums ride in baddbmm."""
    (qp, qt), (kp, kt), (vp, vt) = q, k, v
    lead, queries = qp.shape[:-2], qp.shape[-2]
    scale = qp.shape[-1] ** -0.5 if scale is None else scale
    qp, qt, kp, kt, vp, vt = (None if t is None else t.reshape(-1, *t.shape[-2:]) for t in (qp, qt, kp, kt, vp, vt))
    kp_t, kt_t = kp.transpose(1, 2), None if kt is None else kt.transpose(1, 2)
    if mask is not None:  # (batch, queries or 1, keys), a view where the mask already has the scores' batch
        mask = mask.to(qp.dtype).expand(*lead, *mask.shape[-2:]).reshape(-1, *mask.shape[-2:])
    outs, out_ts = [], []
    for start in range(0, queries, chunk):
        rows = slice(start, start + chunk)
        q_rows = qp[:, rows]
        add = None if mask is None else mask[:, rows] if mask.shape[1] > 1 else mask
        probs = torch.softmax(_scaled_bmm(add, q_rows, kp_t, scale, in_place=False), dim=-1)
        if add is not None:  # a row the mask hides entirely attends to nothing, as the builtin's safe softmax
            probs = probs.nan_to_num_(nan=0.0)
        outs.append(torch.bmm(probs, vp))
        scores_t = None if qt is None else _scaled_bmm(None, qt[:, rows], kp_t, scale)
        if kt_t is not None:
            scores_t = _scaled_bmm(scores_t, q_rows, kt_t, scale)
        out_t = None
        if scores_t is not None:
            weighted = probs * scores_t
            out_t = torch.bmm(torch.addcmul(weighted, probs, weighted.sum(-1, keepdim=True), value=-1), vp)
        if vt is not None:
            out_t = torch.bmm(probs, vt) if out_t is None else out_t.baddbmm_(probs, vt)
        out_ts.append(out_t)
    out, out_t = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1) for parts in (outs, out_ts))
    return fwAD.make_dual(out.reshape(*lead, queries, -1), out_t.reshape(*lead, queries, -1))


def _scaled_bmm(add, a, b, scale: float, in_place: bool = True):
    """add + scale * (a @ b) in one kernel (add None: scale * (a @ b)); in place into `add` (a tensor of ours)
    unless `in_place` is False (a mask of the caller's, broadcast over rows or batch)."""
    if add is None:
        return torch.baddbmm(a.new_empty(a.shape[0], a.shape[1], b.shape[2]), a, b, beta=0, alpha=scale)
    return add.baddbmm_(a, b, alpha=scale) if in_place else torch.baddbmm(add, a, b, alpha=scale)


def forward_ad_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """`F.scaled_dot_product_attention` with a forward derivative: a fused JVP kernel or chunked MATH, by shape.
    Mixed input dtypes (seen inside a JVP of fp16 Wan 2.1 on a GPU: a float32 query against half keys) are brought
    to their common dtype, as elementwise ops promote; PyTorch's SDPA would refuse them."""
    if not query.dtype == key.dtype == value.dtype:
        common = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
        query, key, value = (t.to(common) for t in (query, key, value))
    route = attention_route(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    if route == "triton" and triton_attention.sdpa_supported(query, key, value, attn_mask, dropout_p, is_causal,
                                                              scale, enable_gqa) is not None:
        route = "math"  # what shapes cannot tell: inputs that need a backward, a Triton that fails to load
    route_counts[route] += 1
    if route == "triton":
        return triton_attention.dual_attention(query, key, value, scale, is_causal)
    if route == "fused":
        return fused_attention(query, key, value, scale)
    return chunked_math_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


@contextlib.contextmanager
def forward_ad_attention() -> Iterator[None]:
    """Scope in which attention has a forward derivative (routed SDPA, MATH backend, host overrides)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(replaced_functions({"scaled_dot_product_attention": forward_ad_sdpa}))
        if current_settings().lean_linear:
            stack.enter_context(lean_linear_layers())
        stack.enter_context(lean_norms())
        for factory in list(_host_contexts):
            stack.enter_context(factory())
        yield


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention over the spatial positions of (B, C, *spatial) maps (a VAE's attention block), through
    `F.scaled_dot_product_attention`, which is `forward_ad_sdpa` inside a forward-mode pass."""
    shape = q.shape
    b, c = shape[0], shape[1]
    q, k, v = (t.reshape(b, 1, c, -1).transpose(2, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(2, 3).reshape(shape)
