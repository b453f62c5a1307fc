"""JVP attention side by side at the shapes guided models make (GPU; --quick is a CPU smoke under Triton's
interpreter).

Per shape and dtype, one attention call with tangents on q, k and v:
* flash_fwd: PyTorch's fused SDPA forward alone (flash; memory-efficient for float32), the yardstick;
* ours: guidance_core.forward_ad.triton_attention.jvp_attention (primal + tangent, one Triton pass);
* ours_dual: the same through dual_attention under torch.func.jvp (what the pack calls: adds the
  autograd.Function's Python cost);
* math: guidance_core.attention.chunked_math_sdpa under torch.func.jvp (today's fallback);
* jvpfa: jvp-flash-attention 0.14.0 (JVPAttn.fwd_dual, head dims zero-padded as guidance_core.attention
  does), self-attention only, if importable.
Median milliseconds of repeats (CUDA events), peak memory above the inputs, and the max error of primal and
tangent relative to max |reference|, the reference being float64 autograd on a subsample (the first batch
element, up to 4 heads, 64 query rows spread over the sequence; a row depends only on its query).

    python -m benchmarks.jvp_attention --groups wan,wan-cross,ltx2 --dtypes bf16 --fresh
    python -m benchmarks.jvp_attention --groups sd15,cogvideox --dtypes bf16      # merged into the same JSON
    python -m benchmarks.jvp_attention --groups fp32 --dtypes fp32
    python -m benchmarks.jvp_attention --check   # compiled kernel against float64, small shapes, every variant
    python -m benchmarks.jvp_attention --table                         # the JSON's rows as a markdown table
    python -m benchmarks.jvp_attention --quick --out /tmp/jvp_attention_smoke.json   # CPU, seconds
Each (shape group, dtype) set compiles the kernel's default tile once per head dim and tangent set (about a second);
ours_autotuned (CUDA) times every candidate tile first (TITAN_TRITON_AUTOTUNE=1); the first call's time (compile,
and autotuning there) is in the JSON as first_call_s, the tile each ran in "tile".
    python -m benchmarks.jvp_attention --compile-cost --out benchmarks/results/jvp_attention_compile.json
compiles the shipped workflow's attention calls for sm_90 on any machine: autotuned tiles against default ones.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from unittest import mock

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from guidance_core.forward_ad import triton_attention

try:  # the router, wherever it lives (guidance_core/forward_ad/ after the forward-AD package split)
    from guidance_core.forward_ad import attention
except ImportError:
    from guidance_core import attention

# name -> (batch, heads, query tokens, key tokens, head dim); batch is one guided call's (CFG halves apart)
SHAPES = {
    "sd15": [  # SD1.5 UNet spatial attention, 16 AnimateDiff frames: 512 px level 1, 2, 3 and 1024 px level 2
        ("SD1.5 64x64 d40", (16, 8, 4096, 4096, 40)),
        ("SD1.5 32x32 d80", (16, 8, 1024, 1024, 80)),
        ("SD1.5 64x64 d80", (16, 8, 4096, 4096, 80)),
        ("SD1.5 32x32 d160", (16, 8, 1024, 1024, 160)),
    ],
    "cogvideox": [  # joint text+video self-attention: 2B (30 heads) at 256x384, 5B (48 heads) at 720x480 49 f
        ("CogVideoX-2B 256x384", (1, 30, 3682, 3682, 64)),
        ("CogVideoX-5B 720x480", (1, 48, 17776, 17776, 64)),
    ],
    "wan": [  # Wan 2.1/2.2 self-attention: 1.3B (12 heads) 832x480 33 and 81 frames; 14B (40 heads) 81 frames
        ("Wan 1.3B 33f", (1, 12, 14040, 14040, 128)),
        ("Wan 1.3B 81f", (1, 12, 32760, 32760, 128)),
        ("Wan 14B 480p 81f", (1, 40, 32760, 32760, 128)),
    ],
    "wan-large": [("Wan 14B 720p 81f", (1, 40, 75600, 75600, 128))],
    "wan-cross": [  # video queries on 512 text tokens
        ("Wan 1.3B 33f cross", (1, 12, 14040, 512, 128)),
        ("Wan 1.3B 81f cross", (1, 12, 32760, 512, 128)),
        ("Wan 14B 720p cross", (1, 40, 75600, 512, 128)),
    ],
    "ltx2": [  # LTX-2 video stream, 32 heads x 128 (comfy/ldm/lightricks/av_model.py); latent /32 px, /8 frames
        ("LTX-2 768x512 121f", (1, 32, 6144, 6144, 128)),
        ("LTX-2 1216x704 121f", (1, 32, 13376, 13376, 128)),
        ("LTX-2 1216x704 cross", (1, 32, 13376, 1024, 128)),  # text context length assumed 1,024
    ],
    "fp32": [  # the float32 sample: one shape per family, small enough for float32 MATH
        ("SD1.5 64x64 d40", (16, 8, 4096, 4096, 40)),
        ("CogVideoX-2B 256x384", (1, 30, 3682, 3682, 64)),
        ("Wan 1.3B 33f", (1, 12, 14040, 14040, 128)),
        ("Wan 1.3B 33f cross", (1, 12, 14040, 512, 128)),
    ],
    "quick": [  # CPU interpreter smoke: ragged, cross, padded head dim
        ("tiny self d40", (1, 2, 40, 40, 40)),
        ("tiny cross d64", (1, 2, 33, 20, 64)),
    ],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMPLEMENTATIONS = ("flash_fwd", "ours", "ours_dual", "ours_autotuned", "math", "jvpfa")


def jvpfa_kernel():
    """jvp-flash-attention's JVPAttn, or None (not installed, no CUDA)."""
    return attention.fused_kernel()


def jvpfa_route(q, k, v) -> bool:
    """Whether the router would send this call to jvp-flash-attention when that kernel is selected."""
    with attention.settings_override(kernel="jvp-flash-attention"):
        return attention.attention_route(q, k, v, kernel_available=True) == "fused"


def timed(fn, device: torch.device, budget_s: float) -> tuple[float, float | None, float, object]:
    """(median ms, peak MB above the start or None off CUDA, first call s, last result) of fn(); repeats
    fill about budget_s, at least 3 (1 with no budget: the CPU smoke) and at most 25."""
    cuda = device.type == "cuda"
    start = time.perf_counter()
    result = fn()  # compile, autotune, lazy init
    if cuda:
        torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    del result
    if cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    least = 3 if budget_s > 0 else 1
    result = None
    while len(times) < least or (sum(times) < budget_s * 1e3 and len(times) < 25):
        result = None  # the previous outputs are not part of this call's peak
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            result = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            begin = time.perf_counter()
            result = fn()
            times.append((time.perf_counter() - begin) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return statistics.median(times), peak, first_s, result


def reference(q, k, v, q_t, k_t, v_t, rows: torch.Tensor, heads: int):
    """float64 autograd JVP of softmax attention for batch 0, the first `heads` heads, the query `rows`."""
    def attention64(a, b, c):
        return ((a @ b.transpose(-1, -2)) * a.shape[-1] ** -0.5).softmax(-1) @ c

    pick_q = (lambda t: t[:1, :heads, rows].double())
    pick_kv = (lambda t: t[:1, :heads].double())
    return torch.func.jvp(attention64, (pick_q(q), pick_kv(k), pick_kv(v)), (pick_q(q_t), pick_kv(k_t), pick_kv(v_t)))


def relative_error(actual, expected, rows, heads) -> float:
    actual = actual[:1, :heads, rows].double()
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def flash_forward(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    if q.device.type != "cuda":
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]  # CPU smoke: any forward
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v)


def implementations(q, k, v, q_t, k_t, v_t) -> dict:
    """name -> (callable returning (out, out_t or None), or the reason it does not apply here)."""
    runs = {"flash_fwd": lambda: (flash_forward(q, k, v), None)}
    reason = triton_attention.supported(q, k, v, q_t, k_t, v_t)
    if reason is None:
        runs["ours"] = lambda: triton_attention.jvp_attention(q, k, v, q_t, k_t, v_t)
        runs["ours_dual"] = lambda: torch.func.jvp(triton_attention.dual_attention, (q, k, v), (q_t, k_t, v_t))
        if q.is_cuda:
            def autotuned():
                with autotune_env():
                    return triton_attention.jvp_attention(q, k, v, q_t, k_t, v_t)
            runs["ours_autotuned"] = autotuned
        else:
            runs["ours_autotuned"] = "autotuning runs on CUDA only (the interpreter has one tile)"
    else:
        runs["ours"] = runs["ours_dual"] = runs["ours_autotuned"] = reason
    runs["math"] = lambda: torch.func.jvp(attention.chunked_math_sdpa, (q, k, v), (q_t, k_t, v_t))
    if jvpfa_kernel() is None:
        runs["jvpfa"] = "jvp-flash-attention not importable (or no CUDA)"
    elif not jvpfa_route(q, k, v):
        runs["jvpfa"] = "outside jvp-flash-attention's route (self-attention, even length, >= 256 tokens)"
    else:
        def jvpfa():
            with fwAD.dual_level():
                dual = attention.fused_attention(*(fwAD.make_dual(p, t) for p, t in ((q, q_t), (k, k_t), (v, v_t))))
                out, out_t = fwAD.unpack_dual(dual)
            return out, out_t
        runs["jvpfa"] = jvpfa
    return runs


def measure(name: str, dims: tuple, dtype: torch.dtype, device: torch.device, budget_s: float) -> dict:
    batch, heads, len_q, len_k, dim = dims
    g = torch.Generator(device=device).manual_seed(0)
    shapes = [(batch, heads, n, dim) for n in (len_q, len_k, len_k)] * 2
    q, k, v, q_t, k_t, v_t = (torch.randn(s, generator=g, device=device, dtype=torch.float32).to(dtype)
                              for s in shapes)
    rows = torch.linspace(0, len_q - 1, min(64, len_q), device=device).round().long().unique()
    ref_heads = min(4, heads)
    expected, expected_t = reference(q, k, v, q_t, k_t, v_t, rows, ref_heads)
    row = {"shape": name, "dims": list(dims), "dtype": str(dtype).replace("torch.", ""),
           "tflop_fwd": 4 * batch * heads * len_q * len_k * dim / 1e12}
    for impl, run in implementations(q, k, v, q_t, k_t, v_t).items():
        if isinstance(run, str):
            row[impl] = {"skipped": run}
            continue
        try:
            ms, peak, first_s, (out, out_t) = timed(run, device, budget_s)
        except Exception as error:  # out of memory, a kernel that does not compile: report it, go on
            row[impl] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        result = {"ms": ms, "peak_mb": peak, "first_call_s": first_s,
                  "primal_err": relative_error(out, expected, rows, ref_heads)}
        if out_t is not None:
            result["tangent_err"] = relative_error(out_t, expected_t, rows, ref_heads)
        if impl in ("ours", "ours_autotuned") and device.type == "cuda":
            result["tile"] = list(triton_attention.last_tile["tile"])  # BLOCK_M, BLOCK_N, warps, stages
        row[impl] = result
        del out, out_t
        if device.type == "cuda":
            torch.cuda.empty_cache()
    flash_ms = row["flash_fwd"].get("ms")
    for impl in IMPLEMENTATIONS[1:]:
        if flash_ms and "ms" in row[impl]:
            row[impl]["x_flash_fwd"] = row[impl]["ms"] / flash_ms
    return row


CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}  # of max |reference|
# (batch, heads, len_q, len_k, dim, dim_v, causal, tangents present, dtype): every compiled variant the routed
# calls can make, at small ragged shapes against a full float64 reference
CHECK_CASES = [  # each runs its default tile; under TITAN_TRITON_AUTOTUNE=1 every candidate (few after the first)
    ((2, 3, 300, 300, 128, 128), False, "qkv", torch.bfloat16),  # Wan's class, the benchmark's tiles
    ((2, 3, 64, 77, 128, 128), False, "q", torch.bfloat16),      # cross-attention: text k, v are constants
    ((1, 4, 61, 257, 64, 64), True, "qkv", torch.float16),
    ((1, 2, 50, 333, 40, 40), True, "v", torch.float16),
    ((1, 2, 64, 256, 80, 80), False, "kv", torch.bfloat16),
    ((1, 2, 60, 200, 160, 160), False, "qkv", torch.bfloat16),
    ((1, 2, 64, 300, 64, 64), False, "qkv", torch.float32),
    ((1, 2, 33, 77, 128, 128), False, "qk", torch.float32),
    ((1, 2, 40, 150, 64, 32), False, "qkv", torch.bfloat16),
    ((1, 2, 64, 200, 128, 128), False, "", torch.bfloat16),
]


def check(device: torch.device) -> list[dict]:
    """The compiled kernel (and dual_attention under torch.func.jvp) against float64 autograd on the GPU."""
    results = []
    for dims, causal, present, dtype in CHECK_CASES:
        batch, heads, len_q, len_k, dim, dim_v = dims
        g = torch.Generator(device=device).manual_seed(len(results))
        shapes = [(batch, heads, n, d) for n, d in ((len_q, dim), (len_k, dim), (len_k, dim_v))] * 2
        q, k, v, q_t, k_t, v_t = (torch.randn(s, generator=g, device=device).to(dtype) for s in shapes)
        q_t, k_t, v_t = (t if name in present else None for name, t in zip("qkv", (q_t, k_t, v_t)))

        def attention64(a, b, c):
            scores = (a @ b.transpose(-1, -2)) * dim ** -0.5
            if causal:
                scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool,
                                                       device=device).triu(1), float("-inf"))
            return scores.softmax(-1) @ c

        tangents = tuple((torch.zeros_like(p) if t is None else t).double()
                         for p, t in ((q, q_t), (k, k_t), (v, v_t)))
        expected, expected_t = torch.func.jvp(attention64, (q.double(), k.double(), v.double()), tangents)
        row = {"dims": list(dims), "causal": causal, "tangents": present, "dtype": str(dtype).replace("torch.", "")}
        try:
            out, out_t = triton_attention.jvp_attention(q, k, v, q_t, k_t, v_t, causal=causal)
            dual_out, dual_t = torch.func.jvp(
                lambda a, b, c: triton_attention.dual_attention(a, b, c, is_causal=causal),
                (q, k, v), tuple(t.to(dtype) for t in tangents))
            scale = (lambda t: float(t.abs().max().clamp_min(1e-30)))
            row["primal_err"] = float((out.double() - expected).abs().max()) / scale(expected)
            row["tangent_err"] = float((out_t.double() - expected_t).abs().max()) / scale(expected_t) \
                if present else float(out_t.abs().max())
            row["dual_err"] = float((dual_t.double() - out_t.double()).abs().max()) / scale(out_t) if present else 0.0
            row["ok"] = max(row["primal_err"], row["tangent_err"], row["dual_err"]) < CHECK_TOLERANCE[dtype]
        except Exception as error:
            row.update(ok=False, error=f"{type(error).__name__}: {str(error)[:300]}")
        print(("ok   " if row["ok"] else "FAIL ") + json.dumps(row), file=sys.stderr, flush=True)
        results.append(row)
    return results


def compile_for_hopper(dtype="bf16", dim=128, tile=(128, 32, 8, 3), tangents=(True, True, True), causal=False):
    """Lower the compiled (not interpreted) kernel to an sm_90 cubin on this machine (no GPU needed); returns
    the compiled kernel (.metadata.shared, .asm["cubin"]). Run it in a process that has not run the
    interpreter, which patches triton.language for the rest of a process."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ta = triton_attention
    ta._kernel(False)  # the compiled build; an interpreted call later rebuilds the interpreter one
    fn = ta.jvp_attention_kernel.fn  # under the heuristics wrapper
    block_m, block_n, warps, stages = tile
    constants = dict(HAS_QT=tangents[0], HAS_KT=tangents[1], HAS_VT=tangents[2], WRITE_T=any(tangents),
                     CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=ta._block_dim(dim),
                     BLOCK_DV=ta._value_block(dim), DOT_PRECISION="tf32", UPCAST=False,
                     EVEN_D=ta._block_dim(dim) == dim, EVEN_DV=dim % ta._value_block(dim) == 0,
                     ROW_ALIGN=next(a for a in (16, 8, 4, 2, 1) if dim % a == 0), dim=dim, dim_v=dim)
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("Q", "K", "V", "QT", "KT", "VT", "OUT", "OUT_T"):
            signature[name] = "*" + dtype
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name == "scale" else "i32"
            # what a launch specialises on for contiguous (B, H, L, D) tensors: strides and head dims divisible
            # by 16 where they are (row strides are the head dim); lengths are never specialised
            row_stride = dim // constants["ROW_ALIGN"] if name.startswith("stride") and name.endswith(("m", "n")) \
                else None
            value = row_stride if row_stride is not None else (16 if name.startswith("stride") else 1)
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "num_stages": stages})


def resources(dtype: str, dim: int, tile: tuple, **variant) -> dict:
    """Shared memory, registers per thread and spilled bytes of one sm_90 compile (no GPU needed)."""
    import re
    import subprocess
    import tempfile

    import triton

    compiled = compile_for_hopper(dtype, dim, tile, **variant)
    row = {"dtype": dtype, "dim": dim, "tile": list(tile), "shared": compiled.metadata.shared}
    cuobjdump = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
    if found:
        row.update(registers=int(found.group(1)), spill_bytes=int(found.group(2)))
    return row


def lowering(dtypes: list[str], dims: list[int]) -> list[dict]:
    """resources() of every tile the autotuner may time, per dtype and head dim (all tangents, long sequences):
    what to look at when changing the tile lists, on any machine."""
    rows = []
    for dtype in dtypes:
        for dim in dims:
            size = DTYPES[dtype].itemsize
            for tile in triton_attention.tile_candidates(size, triton_attention._block_dim(dim),
                                                         triton_attention._value_block(dim), True, True, True,
                                                         1 << 14, 1 << 14):
                row = resources(dtype, dim, tile)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


# The calls the shipped AnimateDiff + DOVER workflow routes to the kernel (16 frames 256x256, SD1.5: 8 heads;
# 32x32 latent tokens at head dim 40, 16x16 at 80; 8x8 is under the router's 256 tokens and takes MATH; the text
# context's 77 tokens carry no tangent): 4 compiled variants, 20 calls per UNet JVP (600 per video on the H200).
NODE_PATH_CALLS = (  # (name, head dim, query tokens, key tokens, tangents on q, k, v)
    ("SD1.5 self, 32x32 latent", 40, 1024, 1024, (True, True, True)),
    ("SD1.5 cross, 32x32 latent", 40, 1024, 77, (True, False, False)),
    ("SD1.5 self, 16x16 latent", 80, 256, 256, (True, True, True)),
    ("SD1.5 cross, 16x16 latent", 80, 256, 77, (True, False, False)),
)


def compile_cost(dtype: str = "fp16") -> dict:
    """Seconds of sm_90 compiles (this machine's CPU, empty Triton cache) that a first prompt spends on the
    node path's attention calls: every tile the autotuner times against the one tile the default launch compiles.
    Timing the candidates on the GPU comes on top (do_bench per tile and length class), not counted here."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as cache, scoped_env(TRITON_CACHE_DIR=cache):
        compile_for_hopper(dtype, 64, (16, 16, 4, 1))  # Triton's own first-use cost, not any tile's
        for name, dim, len_q, len_k, tangents in NODE_PATH_CALLS:
            size = DTYPES[dtype].itemsize
            call = (size, triton_attention._block_dim(dim), triton_attention._value_block(dim), *tangents,
                    triton_attention._bucket(len_q), triton_attention._bucket(len_k))
            seconds = {}
            for tile in triton_attention.tile_candidates(*call):
                start = time.perf_counter()
                compile_for_hopper(dtype, dim, tile, tangents=tangents)
                seconds[tile] = time.perf_counter() - start
            default = triton_attention.ranked_tiles(*call)[0]
            row = {"call": name, "dim": dim, "len_q": len_q, "len_k": len_k, "tangents": list(tangents),
                   "autotune_tiles": len(seconds), "autotune_compile_s": sum(seconds.values()),
                   "default_tile": list(default), "default_compile_s": seconds[default]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    total = {key: sum(r[key] for r in rows) for key in ("autotune_tiles", "autotune_compile_s", "default_compile_s")}
    print(f"| call | tiles autotuned | autotune compile s | default tile | default compile s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['call']} | {r['autotune_tiles']} | {r['autotune_compile_s']:.1f} | {tuple(r['default_tile'])} "
              f"| {r['default_compile_s']:.1f} |")
    print(f"| all | {total['autotune_tiles']} | {total['autotune_compile_s']:.1f} | {len(rows)} tiles "
          f"| {total['default_compile_s']:.1f} |")
    return {"dtype": dtype, "target": "sm_90", "cpu": platform.processor() or platform.machine(),
            "triton": __import__("triton").__version__, "rows": rows, "total": total}


def cell(result: dict, key: str, fmt: str) -> str:
    if "skipped" in result:
        return "n/a"
    if "error" in result:
        return "error"
    value = result.get(key)
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    head = ("| shape | dtype | flash fwd ms | ours ms (x fwd) | ours dual ms | ours autotuned ms | MATH ms "
            "| jvp-flash-attn ms "
            "| ours peak MB | MATH peak MB | ours err primal / tangent | MATH err tangent | jvpfa err tangent |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    missing = {"skipped": "not measured"}
    for r in rows:
        ours, flash, math_, jvpfa, dual, tuned = (r.get(impl, missing) for impl in
                                                  ("ours", "flash_fwd", "math", "jvpfa", "ours_dual", "ours_autotuned"))
        ratio = f" ({ours['x_flash_fwd']:.1f}x)" if "x_flash_fwd" in ours else ""
        lines.append(" | ".join([
            f"| {r['shape']} {tuple(r.get('dims', ()))}", r["dtype"], cell(flash, "ms", ".2f"),
            cell(ours, "ms", ".2f") + ratio, cell(dual, "ms", ".2f"), cell(tuned, "ms", ".2f"),
            cell(math_, "ms", ".2f"),
            cell(jvpfa, "ms", ".2f"), cell(ours, "peak_mb", ".0f"), cell(math_, "peak_mb", ".0f"),
            f"{cell(ours, 'primal_err', '.1e')} / {cell(ours, 'tangent_err', '.1e')}",
            cell(math_, "tangent_err", ".1e"), cell(jvpfa, "tangent_err", ".1e")]) + " |")
    return "\n".join(lines)


def scoped_env(**values: str):
    """Environment variables set for a `with` block, the whole environment as it was after it."""
    return mock.patch.dict(os.environ, values)


def autotune_env():
    """TITAN_TRITON_AUTOTUNE=1 for one call: the kernel times every candidate tile instead of the default one."""
    return scoped_env(**{triton_attention.AUTOTUNE_ENV: "1"})


def interpreter_env(on: bool):
    """TRITON_INTERPRET=1 for the CPU smoke only, restored after."""
    return scoped_env(TRITON_INTERPRET="1") if on else contextlib.nullcontext()


def run_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def run(groups: list[str], dtypes: list[str], device: torch.device, budget_s: float, quick: bool,
        on_row=lambda row: None) -> list[dict]:
    """Measure every (shape, dtype); on_row(row) after each (the file is saved as it goes)."""
    rows = []
    with interpreter_env(quick):
        for group in groups:
            for name, dims in SHAPES[group]:
                for dtype in dtypes:
                    start = time.perf_counter()
                    rows.append(dict(measure(name, dims, DTYPES[dtype], device, budget_s), group=group))
                    print(f"{name} {dtype}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
                    on_row(rows[-1])
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--groups", default="sd15,cogvideox,wan,wan-cross,ltx2",
                        help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma-separated, of fp32, bf16, fp16")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds of timed repeats per implementation")
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU under Triton's interpreter")
    parser.add_argument("--out", default="benchmarks/results/jvp_attention.json",
                        help="JSON; rows of other shapes already in it are kept (see --fresh)")
    parser.add_argument("--fresh", action="store_true", help="overwrite --out instead of merging into it")
    parser.add_argument("--check", action="store_true", help="only check the compiled kernel against float64 on "
                        "small shapes (every variant); exit status 1 if any case fails")
    parser.add_argument("--lowering", action="store_true", help="sm_90 compile of every candidate tile for "
                        "--dtypes and the benchmark's head dims: shared memory, registers, spills (no GPU)")
    parser.add_argument("--compile-cost", action="store_true", help="sm_90 compile seconds of the node path's "
                        "attention variants, autotuned tiles against the default tile (no GPU); JSON to --out")
    parser.add_argument("--table", action="store_true", help="print the table of --out's rows (for the README), "
                        "measure nothing")
    args = parser.parse_args(argv)
    if args.table:
        saved = json.loads(pathlib.Path(args.out).read_text())
        print(table(saved["rows"]))
        return saved
    groups = ["quick"] if args.quick else args.groups.split(",")
    dtypes = ["bf16"] if args.quick else args.dtypes.split(",")
    unknown = [g for g in groups if g not in SHAPES] + [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown group or dtype: {', '.join(unknown)}")
    device = torch.device("cpu" if args.quick else args.device)
    if args.compile_cost:
        result = dict(compile_cost(), command=" ".join(["python -m benchmarks.jvp_attention"] + (
            argv if argv is not None else sys.argv[1:])))
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
        return result
    if args.lowering:
        return {"lowering": lowering(args.dtypes.split(","), [40, 64, 80, 128, 160])}
    if args.check:
        results = check(device)
        failed = [r for r in results if not r["ok"]]
        print(f"{len(results) - len(failed)} of {len(results)} checks pass")
        if failed:
            sys.exit(1)
        return {"check": results}
    command = " ".join(["python -m benchmarks.jvp_attention"] + (argv if argv is not None else sys.argv[1:]))
    out = pathlib.Path(args.out)
    saved = {"runs": [], "rows": []}
    if out.exists() and not args.fresh:  # several commands (shape groups) fill one file; re-measured rows replace
        saved = json.loads(out.read_text())
    saved["runs"] = saved.get("runs", []) + [dict(run_info(device), command=command)]
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(row):  # after every row, so a command stopped by a time limit keeps what it measured
        row["command"] = command
        saved["rows"] = [r for r in saved.get("rows", []) if (r["shape"], r["dtype"]) != (row["shape"], row["dtype"])]
        saved["rows"].append(row)
        out.write_text(json.dumps(saved, indent=1))

    rows = run(groups, dtypes, device, 0.0 if args.quick else args.budget, args.quick, on_row=save)
    print(table(rows))
    return saved


if __name__ == "__main__":
    main()
