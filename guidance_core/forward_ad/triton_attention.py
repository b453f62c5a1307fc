"""Attention and its forward-mode tangent in one tiled Triton pass (FlashAttention-2 style).

With S = scale q k^T, P = softmax(S), out = P v, a JVP needs
    S_t   = scale (q_t k^T + q k_t^T)
    out_t = P v_t + (P * (S_t - rowsum(P * S_t))) v.
Per query block the kernel walks the key blocks once with the online softmax (running max m; p = exp(S - m),
everything rescaled by exp(m_old - m_new) when m grows) and keeps
    l = sum p,  acc = sum p v,  c = sum p S_t / l,  acc_t = sum p v_t + sum p (S_t - c) v,
re-centring acc_t on each key block by -(c_new - c_old) acc, so that S_t - c, not S_t, is rounded to the
input dtype for the product with v (a large common offset in S_t would otherwise eat the tangent's precision).
At the end out = acc / l and out_t = acc_t / l. No score matrix reaches memory, so memory is that of the
inputs and outputs; the tangent costs up to four more matrix products per tile than the forward
(q_t k^T, q k_t^T, p (S_t - c) v, p v_t), each skipped when the tangent it needs is absent.

Limits: (batch, heads, tokens, head dim) tensors with equal heads for q, k, v (no GQA, no masks but causal,
no dropout), query and key lengths may differ (cross-attention), head dims up to 256 (q/k and v may differ;
padded to the next power of two in registers only, with masks), float16 / bfloat16 / float32 inputs with
float32 accumulation (float32 matrix products use TF32 only where torch.backends.cuda.matmul.allow_tf32 does),
causal masks aligned top-left as in torch's SDPA. No backward: outputs carry no autograd history, so
`supported` refuses inputs that require grad while grad mode is on. Triton is imported on first use; without
Triton or CUDA `supported` says why and callers keep chunked MATH (guidance_core/attention.py). CPU tensors
run only under Triton's interpreter (TRITON_INTERPRET=1), which the unit tests use.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import torch.autograd.forward_ad as fwAD

MAX_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages). By default one tile per call is compiled, no timing:
# the first of `ranked_tiles`, the largest tile that fits, which is what autotuning over these lists picked in
# all 15 shapes the H200 timed (benchmarks/results/jvp_attention.json: Wan, SD1.5, CogVideoX, LTX-2, bf16, head
# dims 40-160). Autotuning compiles and times every candidate per head dim, tangent set and length class, about
# 0.5-1.2 s of compile each (sm_90 from this machine's CPU), which the first prompt pays; TITAN_TRITON_AUTOTUNE=1
# brings it back. The lists were chosen from sm_90 compiles of the all-tangents kernel with Triton 3.5 and 3.6
# (`python -m benchmarks.jvp_attention --lowering`: registers, spills, shared memory): bf16 at head dim 128,
# 128 x 32 tiles with 8 warps use ~225 registers and spill nothing, 128 x 64 and 64 x 64 spill up to ~100 bytes,
# 128-wide key tiles hundreds (kept for head dim 64 only, where they fit).
_TUNING = (
    (128, 32, 8, 4),
    (128, 32, 8, 3),
    (128, 32, 8, 2),
    (128, 64, 8, 2),
    (128, 64, 8, 3),
    (64, 64, 4, 3),
    (128, 128, 8, 2),
)
# head dim 256 (SD1.5's 160 padded) or float32 at head dim >= 128: twice the bytes per tile
_NARROW_TUNING = (
    (128, 32, 8, 2),
    (64, 32, 4, 2),
    (64, 32, 4, 1),
    (32, 32, 4, 2),
)
AUTOTUNE_ENV = "TITAN_TRITON_AUTOTUNE"
SHARED_MEMORY_BYTES = 232_448  # per block on Hopper (227 KiB), where the device does not say
_INTERPRETER_TILE = (16, 16, 4, 1)  # small tiles so tiny test shapes still cross block edges


def _autotuning() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "0") == "1"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_error() -> str | None:
    """Why Triton cannot be imported, or None."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising anything else
        return f"Triton is not importable ({type(error).__name__}: {error})"
    return None


def _bucket(length: int) -> int:
    """Sequence length class for autotuning: the next power of two, at least 64, at most 65,536."""
    return min(max(64, 1 << max(0, length - 1).bit_length()), 1 << 16)


def _block_dim(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())  # tl.dot needs >= 16


def _value_block(dim_v: int, interpret: bool = False) -> int:
    """Value columns per program: wider value heads split over programs (grid axis 2), since two float32
    accumulators of 256 columns spill registers on Hopper; each program recomputes the scores."""
    return min(_block_dim(dim_v), 32 if interpret else 128)  # interpreter: exercise the split at tiny dims


def input_error(q, k, v, q_t=None, k_t=None, v_t=None) -> str | None:
    """What is wrong with these inputs for the kernel (shapes, dtypes, devices), or None."""
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return "q, k and v must be tensors"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return (f"expects (batch, heads, tokens, head dim) tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                f"v {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        return (f"batch and heads must match (no broadcasting or GQA): q {tuple(q.shape)}, k {tuple(k.shape)}, "
                f"v {tuple(v.shape)}")
    if k.shape[2] != v.shape[2]:
        return f"k and v need the same number of tokens: k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[3] != k.shape[3]:
        return f"q and k need the same head dim: q {tuple(q.shape)}, k {tuple(k.shape)}"
    if q.shape[3] > MAX_HEAD_DIM or v.shape[3] > MAX_HEAD_DIM:
        return f"head dim up to {MAX_HEAD_DIM}: q/k {q.shape[3]}, v {v.shape[3]}"
    if 0 in q.shape or 0 in k.shape or 0 in v.shape:
        return f"empty input: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.dtype not in DTYPES or not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v must share one of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}"
    if not (q.device == k.device == v.device):
        return f"q, k, v on different devices: {q.device}, {k.device}, {v.device}"
    for name, tangent, primal in (("q_t", q_t, q), ("k_t", k_t, k), ("v_t", v_t, v)):
        if tangent is None:
            continue
        if tangent.shape != primal.shape or tangent.dtype != primal.dtype or tangent.device != primal.device:
            return (f"{name} must match its primal: {tuple(tangent.shape)} {tangent.dtype} {tangent.device} "
                    f"against {tuple(primal.shape)} {primal.dtype} {primal.device}")
    return None


def supported(q, k, v, q_t=None, k_t=None, v_t=None, causal: bool = False) -> str | None:
    """None if `jvp_attention` can run these inputs here, else the reason (for the router and its logs)."""
    del causal  # both settings run
    error = input_error(q, k, v, q_t, k_t, v_t)
    if error:
        return error
    if q.device.type != "cuda" and not (q.device.type == "cpu" and _interpreting()):
        return f"tensors on {q.device}: the Triton kernel runs on CUDA (CPU only under TRITON_INTERPRET=1)"
    if q.device.type == "cuda" and torch.version.hip is not None:
        return "ROCm: the kernel's tiles were tuned and tested on NVIDIA GPUs only"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, q_t, k_t, v_t)):
        return "inputs require grad: the kernel has no backward"
    error = _triton_error()
    if error:
        return error
    return None


def sdpa_supported(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                   scale: float | None = None, enable_gqa: bool = False) -> str | None:
    """None if `dual_attention` can stand in for this `F.scaled_dot_product_attention` call (inputs possibly
    forward-AD duals), else the reason; for the router, which decides where it pays."""
    del scale  # any scale runs
    if attn_mask is not None:
        return "attention masks are not supported (causal is)"
    if dropout_p:
        return "dropout is not supported"
    if enable_gqa and key.dim() == 4 and key.shape[1] != query.shape[1]:
        return "grouped-query attention is not supported"
    (q, q_t), (k, k_t), (v, v_t) = (fwAD.unpack_dual(t) for t in (query, key, value))
    return supported(q, k, v, q_t, k_t, v_t, is_causal)


def jvp_attention(q, k, v, q_t=None, k_t=None, v_t=None, scale: float | None = None, causal: bool = False):
    """(softmax(q k^T scale) v, its tangent) for (B, H, L, D) inputs; an absent tangent counts as zero."""
    error = input_error(q, k, v, q_t, k_t, v_t)
    if error:
        raise ValueError(f"jvp_attention: {error}")
    reason = supported(q, k, v, q_t, k_t, v_t, causal)
    if reason:
        raise RuntimeError(f"jvp_attention cannot run: {reason}")
    out, out_t = _launch(q, k, v, q_t, k_t, v_t, scale, causal, want_tangent=True)
    return out, out_t


def dual_attention(q, k, v, scale: float | None = None, is_causal: bool = False):
    """Attention of possibly forward-AD dual tensors (torch.func.jvp or fwAD levels), returned as a dual."""
    (q_p, q_t), (k_p, k_t), (v_p, v_t) = (fwAD.unpack_dual(t) for t in (q, k, v))
    error = input_error(q_p, k_p, v_p, q_t, k_t, v_t)
    if error:
        raise ValueError(f"dual_attention: {error}")
    reason = supported(q_p, k_p, v_p, q_t, k_t, v_t, is_causal)
    if reason:
        raise RuntimeError(f"dual_attention cannot run: {reason}")
    if q_t is None and k_t is None and v_t is None:  # no forward-mode pass through this call: forward only
        return _launch(q_p, k_p, v_p, None, None, None, scale, is_causal, want_tangent=False)[0]
    return _DualAttention.apply(q, k, v, q_t, k_t, v_t, scale, is_causal)[0]


class _DualAttention(torch.autograd.Function):
    """Carries the kernel through forward AD. Under torch.func.jvp the unpacked primals are still functorch
    wrappers without storage; an autograd.Function's forward sees the plain tensors. The tangents go in as
    ordinary arguments so forward computes both in one pass, and jvp hands back the saved tangent."""

    @staticmethod
    def forward(q, k, v, q_t, k_t, v_t, scale, causal):
        return _launch(q, k, v, q_t, k_t, v_t, scale, causal, want_tangent=True)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        ctx.mark_non_differentiable(outputs[1])
        ctx.save_for_forward(outputs[1])

    @staticmethod
    def jvp(ctx, *tangents):
        return ctx.saved_for_forward[0], None


def _row_alignment(tensors) -> int:
    """The largest of 16, 8, 4, 2, 1 elements that every row stride is a multiple of."""
    return next(a for a in (16, 8, 4, 2, 1) if all(t.stride(2) % a == 0 for t in tensors))


def _last_dim_dense(t: torch.Tensor) -> torch.Tensor:
    # the kernel assumes unit stride along the head dim (vector loads); other strides are taken as given
    return t if t.stride(-1) == 1 else t.contiguous()


def _output_like(q: torch.Tensor, dim_v: int) -> torch.Tensor:
    if dim_v == q.shape[-1]:  # same layout as q, e.g. (B, L, H, D) storage seen as (B, H, L, D), like SDPA
        return torch.empty_like(q)
    return q.new_empty(q.shape[:-1] + (dim_v,))


def _launch(q, k, v, q_t, k_t, v_t, scale, causal, want_tangent: bool):
    q, k, v = (_last_dim_dense(t) for t in (q, k, v))
    q_t, k_t, v_t = (None if t is None else _last_dim_dense(t) for t in (q_t, k_t, v_t))
    batch, heads, len_q, dim = q.shape
    len_k, dim_v = k.shape[2], v.shape[3]
    scale = dim ** -0.5 if scale is None else float(scale)
    out = _output_like(q, dim_v)
    out_t = _output_like(q, dim_v) if want_tangent else out  # pointer placeholder when no tangent is written
    has_tangent = want_tangent and not (q_t is None and k_t is None and v_t is None)
    if want_tangent and not has_tangent:
        out_t.zero_()
    placeholder = q  # never read: the matching HAS_* flag is off
    tensors = [q, k, v, q_t if q_t is not None else placeholder, k_t if k_t is not None else placeholder,
               v_t if v_t is not None else placeholder, out, out_t]
    row_align = _row_alignment(tensors)
    strides = [s // row_align if i == 2 else s for t in tensors for i, s in enumerate(t.stride()[:3])]
    if q.dtype == torch.float32 and q.is_cuda and not torch.backends.cuda.matmul.allow_tf32:
        precision = "ieee"
    else:
        precision = "tf32"  # ignored for half inputs; TF32 for float32 where torch allows it
    interpret = q.device.type == "cpu"
    meta = dict(HAS_QT=has_tangent and q_t is not None, HAS_KT=has_tangent and k_t is not None,
                HAS_VT=has_tangent and v_t is not None, WRITE_T=has_tangent, CAUSAL=bool(causal),
                BLOCK_D=_block_dim(dim), BLOCK_DV=_value_block(dim_v, interpret), DOT_PRECISION=precision,
                # Triton 3.5's interpreter multiplies bfloat16 bit patterns as integers: products in float32 there
                UPCAST=interpret and q.dtype == torch.bfloat16, ROW_ALIGN=row_align)
    grid = lambda cfg: (math.ceil(len_q / cfg["BLOCK_M"]), batch * heads,  # noqa: E731
                        math.ceil(dim_v / cfg["BLOCK_DV"]))
    args = (*tensors, *strides, heads, len_q, len_k, dim, dim_v, scale, _bucket(len_q), _bucket(len_k))
    autotune = not interpret and _autotuning()
    kernel = _kernel(interpret, autotune)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        if autotune:
            kernel[grid](*args, **meta)
            last_tile["tile"] = _tile_of(kernel.best_config)
        elif interpret:
            _launch_first_that_fits(kernel, grid, args, meta, [_INTERPRETER_TILE])
        else:
            call = (q.element_size(), meta["BLOCK_D"], meta["BLOCK_DV"], meta["HAS_QT"], meta["HAS_KT"],
                    meta["HAS_VT"], _bucket(len_q), _bucket(len_k), _shared_memory(q.device))
            known = _launched_tiles.get(call)
            tiles = [known] if known else ranked_tiles(*call)
            _launched_tiles[call] = _launch_first_that_fits(kernel, grid, args, meta, tiles)
    return out, (out_t if want_tangent else None)


last_tile: dict = {"tile": None}  # (BLOCK_M, BLOCK_N, num_warps, num_stages) of the last launch, for benchmarks
_launched_tiles: dict = {}  # call class -> the tile that launched, so a refused tile is not compiled again


def _launch_first_that_fits(kernel, grid, args, meta, tiles) -> tuple:
    """Launch with the first tile the device can hold: the shared-memory estimate is close, not exact, and a
    smaller card refuses a tile when it is compiled (Triton's OutOfResources), before anything runs. Returns it."""
    for index, tile in enumerate(tiles):
        try:
            kernel[grid](*args, **meta, BLOCK_M=tile[0], BLOCK_N=tile[1], num_warps=tile[2], num_stages=tile[3])
        except Exception as error:
            if type(error).__name__ != "OutOfResources" or index == len(tiles) - 1:
                raise
            continue
        last_tile["tile"] = tile
        return tile


def _tile_of(config) -> tuple:
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


@functools.lru_cache(maxsize=None)
def _shared_memory(device: torch.device) -> int:
    """Shared memory one block may use on this device (its opt-in maximum); Hopper's where it cannot be read."""
    if device.type != "cuda":
        return SHARED_MEMORY_BYTES
    properties = torch.cuda.get_device_properties(device)
    return int(getattr(properties, "shared_memory_per_block_optin", 0) or SHARED_MEMORY_BYTES)


_built: dict = {}  # {"interpret": bool, "kernel": the jit kernel, "autotuned": its autotuner once asked for}


def _kernel(interpret: bool, autotune: bool = False):
    """The Triton kernel, built on first use (compiled, or for the interpreter); in Triton's autotuner if asked."""
    if _built.get("interpret") is not interpret:
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"  # triton.jit reads it when it decorates
        try:
            kernel = _define()
        finally:
            if previous is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = previous
        if interpret:
            _index_scalars_for_numpy2()
        _built.clear()
        _built.update(interpret=interpret, kernel=kernel, autotuned=None)
    if not autotune:
        return _built["kernel"]
    if _built["autotuned"] is None:
        import triton

        configs = [_config(*tile) for tile in _TUNING]
        _built["autotuned"] = triton.autotune(
            configs, key=["BLOCK_D", "BLOCK_DV", "CAUSAL", "HAS_QT", "HAS_KT", "HAS_VT", "WRITE_T", "DOT_PRECISION",
                          "LQ_BUCKET", "LK_BUCKET"],
            prune_configs_by={"early_config_prune": _prune},
            # tuned tiles persist in Triton's cache: a restarted host does not re-time them
            cache_results=True)(_built["kernel"])
    return _built["autotuned"]


def _index_scalars_for_numpy2():
    """Triton 3.5's interpreter turns loop bounds into ints with int(1-element array), which NumPy >= 2.3
    refuses; index through .item() instead (interpreter only, so only tests and the CPU smoke see it)."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_numpy2_index", False):
        return

    def patch_lang_tensor(tensor):
        original(tensor)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])

    patch_lang_tensor._numpy2_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def tile_candidates(element_size: int, block_d: int, block_dv: int, has_qt: bool, has_kt: bool, has_vt: bool,
                    lq_bucket: int, lk_bucket: int, shared_memory: int = SHARED_MEMORY_BYTES) -> list[tuple]:
    """Tiles worth running for a call: narrow tiles for wide heads and float32, no key tiles of 128 above head
    dim 64 (they spill), none whose pipelined tiles overflow shared memory, none longer than the sequence they
    tile; the smallest if none is left."""
    wide = block_d >= 256 or (element_size >= 4 and block_d >= 128)
    tiles = _NARROW_TUNING if wide else _TUNING
    key_tiles, value_tiles, query_tiles = 1 + bool(has_kt), 1 + bool(has_vt), 1 + bool(has_qt)

    def shared_bytes(tile):  # num_stages copies of the key-side tiles, plus q (and q_t) held for the loop
        m, n, _, stages = tile
        return element_size * (stages * n * (block_d * key_tiles + block_dv * value_tiles) + m * block_d * query_tiles)

    kept = [t for t in tiles
            if shared_bytes(t) <= shared_memory
            and not (t[1] > 64 and block_d > 64)
            and not (t[0] > 64 and lq_bucket <= 64)
            and not (t[1] > 64 and lk_bucket <= 64)]
    return kept or [min(tiles, key=shared_bytes)]


def default_tile_order(tile: tuple) -> tuple:
    """Sort key, best first when descending: most query rows, then the widest key tile (what autotuning picked on
    the H200 wherever it fit), most warps, then stages nearest two (no timing told stages apart: among the
    tiles that fit, each of those shape classes had a single tile of the winning size)."""
    block_m, block_n, warps, stages = tile
    return block_m, block_n, warps, -abs(stages - 2)


def ranked_tiles(*call, **named) -> list[tuple]:
    """`tile_candidates(*call)` in the order the default launch tries them: `default_tile_order`, descending."""
    return sorted(tile_candidates(*call, **named), key=default_tile_order, reverse=True)


def _prune(configs, named_args, **kwargs):
    """The autotuner's view of `tile_candidates` (Triton hands it the launch's arguments)."""
    del configs  # the candidates depend on the call: narrow tiles replace the list for wide heads
    args = {**named_args, **kwargs}
    q = args["Q"]
    tiles = tile_candidates(q.element_size(), args["BLOCK_D"], args["BLOCK_DV"], args["HAS_QT"], args["HAS_KT"],
                            args["HAS_VT"], args["LQ_BUCKET"], args["LK_BUCKET"], _shared_memory(q.device))
    return [_config(*tile) for tile in tiles]


def _config(block_m, block_n, num_warps, num_stages):
    import triton

    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


def _define():
    """Define the jit kernels as module globals (Triton resolves `tl` and `_tile` through the kernel's
    globals), inside a function so importing this module needs no Triton; returns the launcher."""
    global triton, tl, _maximum, _add, _tile, jvp_attention_kernel
    import triton
    import triton.language as tl

    # Triton's own @jit helpers (tl.zeros, tl.max, tl.sum, ...) are compiled or interpreted as TRITON_INTERPRET
    # was when triton was imported; the kernel uses builtins and these reductions only, so the interpreter
    # (CPU tests) runs it whatever was imported first.
    @triton.jit
    def _maximum(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _add(a, b):
        return a + b

    @triton.jit
    def _tile(acc, acc_t, l_i, m_i, c_i, q, q_t, offs_m, start_n,
              k_base, kt_base, v_base, vt_base, stride_kn, stride_ktn, stride_vn, stride_vtn,
              len_q, len_k, dv_start, dim: tl.constexpr, dim_v: tl.constexpr, scale, qk_scale,
              HAS_QT: tl.constexpr, HAS_KT: tl.constexpr, HAS_VT: tl.constexpr, CAUSAL: tl.constexpr,
              MASK_N: tl.constexpr, EVEN_D: tl.constexpr, EVEN_DV: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr,
              UPCAST: tl.constexpr):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        kv_mask = offs_n[:, None] < len_k
        k_mask = kv_mask & (offs_d[None, :] < dim)
        v_mask = kv_mask & ((dv_start + offs_dv)[None, :] < dim_v)
        k_ptrs = offs_n[:, None] * stride_kn + offs_d[None, :]
        # masked loads only where the tile crosses an edge (key tail, padded head dim)
        if MASK_N or not EVEN_D:
            k = tl.load(k_base + k_ptrs, mask=k_mask, other=0.0)
        else:
            k = tl.load(k_base + k_ptrs)
        if UPCAST:
            k = k.to(tl.float32)
        # order: forward first, then each tangent product, so the score tile is dead before S_t is formed
        # (two BLOCK_M x BLOCK_N float32 tiles at once would spill registers at head dim 128)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2 domain for exp2
        if MASK_N:
            s = tl.where(offs_n[None, :] < len_k, s, float("-inf"))
        if CAUSAL:  # top-left aligned like torch SDPA: query i sees keys j <= i
            s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _maximum))  # finite: key 0 is in every row's first tile
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _add)
        v_ptrs = offs_n[:, None] * stride_vn + offs_dv[None, :]
        if MASK_N or not EVEN_DV:
            v = tl.load(v_base + v_ptrs, mask=v_mask, other=0.0)
        else:
            v = tl.load(v_base + v_ptrs)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None]
        if HAS_QT or HAS_KT or HAS_VT:
            acc_t = acc_t * alpha[:, None]
        if HAS_QT or HAS_KT:
            if HAS_QT:
                s_t = tl.dot(q_t, tl.trans(k), input_precision=DOT_PRECISION)
            if HAS_KT:
                kt_ptrs = offs_n[:, None] * stride_ktn + offs_d[None, :]
                if MASK_N or not EVEN_D:
                    k_t = tl.load(kt_base + kt_ptrs, mask=k_mask, other=0.0)
                else:
                    k_t = tl.load(kt_base + kt_ptrs)
                if UPCAST:
                    k_t = k_t.to(tl.float32)
                if HAS_QT:
                    s_t = tl.dot(q, tl.trans(k_t), s_t, input_precision=DOT_PRECISION)
                else:
                    s_t = tl.dot(q, tl.trans(k_t), input_precision=DOT_PRECISION)
            # S_t is kept centred on its running P-weighted row mean c before p * (S_t - c) is rounded to the
            # input dtype for the product with v: a large common offset in S_t (keys sharing a direction)
            # would otherwise cost the tangent its precision. Moving c by `shift` moves the part of acc_t
            # already summed by -shift * (sum p v so far), and the centred sum of p (S_t - c) stays 0.
            # (Masked keys have p == 0 and finite s_t from zero-filled loads.)
            s_t = s_t * scale - c_i[:, None]
            shift = tl.reduce(p * s_t, 1, _add) / l_i
            acc_t = acc_t - shift[:, None] * acc
            c_i = c_i + shift
            p_st = p * (s_t - shift[:, None])
            acc_t = tl.dot(p_st.to(v.dtype), v, acc_t, input_precision=DOT_PRECISION)
        if HAS_VT:
            vt_ptrs = offs_n[:, None] * stride_vtn + offs_dv[None, :]
            if MASK_N or not EVEN_DV:
                v_t = tl.load(vt_base + vt_ptrs, mask=v_mask, other=0.0)
            else:
                v_t = tl.load(vt_base + vt_ptrs)
            if UPCAST:
                v_t = v_t.to(tl.float32)
            acc_t = tl.dot(p.to(v_t.dtype), v_t, acc_t, input_precision=DOT_PRECISION)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        return acc, acc_t, l_i, m_new, c_i

    @triton.heuristics({
        "EVEN_D": lambda a: a["dim"] == a["BLOCK_D"],
        "EVEN_DV": lambda a: a["dim_v"] % a["BLOCK_DV"] == 0,
    })
    # sequence lengths are not specialised on (divisibility by 16, == 1): every length shares one compile per
    # tile config, which keeps autotuning over many shapes affordable; the key loop tests its tail at run time
    @triton.jit(do_not_specialize=["len_q", "len_k", "LQ_BUCKET", "LK_BUCKET"])
    def jvp_attention_kernel(
            Q, K, V, QT, KT, VT, OUT, OUT_T,
            stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
            stride_qtb, stride_qth, stride_qtm, stride_ktb, stride_kth, stride_ktn,
            stride_vtb, stride_vth, stride_vtn, stride_ob, stride_oh, stride_om, stride_otb, stride_oth, stride_otm,
            heads, len_q, len_k, dim: tl.constexpr, dim_v: tl.constexpr, scale, LQ_BUCKET, LK_BUCKET,
            HAS_QT: tl.constexpr, HAS_KT: tl.constexpr, HAS_VT: tl.constexpr, WRITE_T: tl.constexpr,
            CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            BLOCK_DV: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_D: tl.constexpr,
            EVEN_DV: tl.constexpr, ROW_ALIGN: tl.constexpr):
        # head dims are compile-time constants (one compile per head dim anyway, through BLOCK_D): the masks of a
        # padded head dim (40 of 64) are then known constant over 8-element groups and the loads vectorise.
        # Row strides arrive divided by ROW_ALIGN: multiplying back by a constant tells the compiler rows start
        # on ROW_ALIGN-element boundaries (head dim 40: 80-byte rows), so tiles load as 16-byte vectors and
        # pipeline asynchronously; Triton itself only knows an int argument is a multiple of 16 or not
        stride_qm = stride_qm * ROW_ALIGN
        stride_kn = stride_kn * ROW_ALIGN
        stride_vn = stride_vn * ROW_ALIGN
        stride_qtm = stride_qtm * ROW_ALIGN
        stride_ktn = stride_ktn * ROW_ALIGN
        stride_vtn = stride_vtn * ROW_ALIGN
        stride_om = stride_om * ROW_ALIGN
        stride_otm = stride_otm * ROW_ALIGN
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // heads).to(tl.int64)  # 64-bit offsets: long videos x many heads pass 2**31 elements
        h = (pid_bh % heads).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        dv_start = tl.program_id(2) * BLOCK_DV  # value columns of this program (head dims over 128 split)
        offs_dv = dv_start + tl.arange(0, BLOCK_DV)
        q_mask = (offs_m[:, None] < len_q) & (offs_d[None, :] < dim)
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        q = tl.load(q_ptrs, mask=q_mask, other=0.0)  # once per program: the mask costs nothing
        if UPCAST:
            q = q.to(tl.float32)
        if HAS_QT:
            qt_ptrs = QT + b * stride_qtb + h * stride_qth + offs_m[:, None] * stride_qtm + offs_d[None, :]
            q_t = tl.load(qt_ptrs, mask=q_mask, other=0.0)
            if UPCAST:
                q_t = q_t.to(tl.float32)
        else:
            q_t = q  # unused
        k_base = K + b * stride_kb + h * stride_kh
        kt_base = KT + b * stride_ktb + h * stride_kth
        v_base = V + b * stride_vb + h * stride_vh + dv_start
        vt_base = VT + b * stride_vtb + h * stride_vth + dv_start
        qk_scale = scale * 1.4426950408889634  # log2(e)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
        c_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)  # centre of S_t (see _tile)
        acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, dtype=tl.float32)
        acc_t = tl.full([BLOCK_M, BLOCK_DV], 0.0, dtype=tl.float32)

        if CAUSAL:
            end = tl.minimum(len_k, (pid_m + 1) * BLOCK_M)
        else:
            end = len_k
        # full key tiles without the key-edge mask, then the tail if any (causal tiles always mask)
        full_end = (end // BLOCK_N) * BLOCK_N
        for start_n in range(0, full_end, BLOCK_N):
            acc, acc_t, l_i, m_i, c_i = _tile(
                acc, acc_t, l_i, m_i, c_i, q, q_t, offs_m, start_n, k_base, kt_base, v_base, vt_base,
                stride_kn, stride_ktn, stride_vn, stride_vtn, len_q, len_k, dv_start, dim, dim_v, scale, qk_scale,
                HAS_QT, HAS_KT, HAS_VT, CAUSAL, False, EVEN_D, EVEN_DV, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_PRECISION,
                UPCAST)
        if full_end < end:
            acc, acc_t, l_i, m_i, c_i = _tile(
                acc, acc_t, l_i, m_i, c_i, q, q_t, offs_m, full_end, k_base, kt_base, v_base, vt_base,
                stride_kn, stride_ktn, stride_vn, stride_vtn, len_q, len_k, dv_start, dim, dim_v, scale, qk_scale,
                HAS_QT, HAS_KT, HAS_VT, CAUSAL, True, EVEN_D, EVEN_DV, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_PRECISION,
                UPCAST)

        inv_l = 1.0 / l_i
        out = acc * inv_l[:, None]
        o_mask = (offs_m[:, None] < len_q) & (offs_dv[None, :] < dim_v)
        o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :]
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=o_mask)
        if WRITE_T:
            out_t = acc_t * inv_l[:, None]  # acc_t holds p (S_t - c) with c the row's P-mean of S_t: centred
            ot_ptrs = OUT_T + b * stride_otb + h * stride_oth + offs_m[:, None] * stride_otm + offs_dv[None, :]
            tl.store(ot_ptrs, out_t.to(OUT_T.dtype.element_ty), mask=o_mask)

    return jvp_attention_kernel
