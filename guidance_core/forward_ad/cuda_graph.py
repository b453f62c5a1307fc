"""Replaying a captured forward-mode pass: a CUDA graph per look-ahead shape removes the CPU dispatch bound.

A JVP through a video UNet launches about ten thousand small kernels, and in eager mode the CPU issues them
more slowly than the GPU runs them. A CUDA graph records the launches of one JVP and replays them as one
call. What changes from step to step (latent, tangent, look-ahead sigmas) lives in static buffers copied in
before each replay; everything else the traverse reads (weights, conditioning) must stay in place, and the
traverse must not synchronise with the CPU (guidance_core's unroll, denoisers, decode and attention don't).

A shape is captured the second time it is seen: the first call runs eagerly on the capture stream (lazy
initialisation, kernel autotuning, objectives filling their constant caches), so a key seen once (the last
step's shorter look-ahead) costs nothing extra. The second call runs eagerly too, under PyTorch's sync debug
mode set to "error": a traverse that reads a value back to the CPU (`.item()`, `bool(t)`, a blocking copy) would
fail the capture, so it is never captured, and the reason names the line. Then the graph is captured (capture
records, it computes nothing: that step's values are the eager pass's). The first replay, at the next step's
inputs, is checked against an eager pass (`check_error`, relative): a graph that baked in something outside its
static buffers (a Python float of sigma, a host's weights that moved) differs there and is dropped. One graph
is kept at a time: its memory pool holds one JVP's peak. Any failure is kept in `failure`, a warning says so,
and every later call runs eagerly.
"""
from __future__ import annotations

import os
import traceback
import warnings

import torch
from torch import Tensor

from .. import forward_gradient  # a module: forward_gradient imports this package while it loads


def requested() -> bool:
    """Whether TITAN_CUDA_GRAPH asks the node path for CUDA-graph replay of its JVPs ("1"; "0" or unset: eager)."""
    value = os.environ.get("TITAN_CUDA_GRAPH", "0")
    if value not in ("0", "1"):
        raise ValueError(f"TITAN_CUDA_GRAPH must be 0 or 1, got {value!r}")
    return value == "1"


class GraphedJvp:
    """`(f(x), <grad f(x), v>)` for a traverse `f` with `.sigmas`, `.with_sigmas()` and `.graph_key()`."""

    def __init__(self, estimator: str = "dual"):
        self.estimator = estimator  # "dual" or "jvp" (forward_gradient.directional_derivative's)
        self.key = None
        self.pending = None
        self.graph = None
        self.stream = None
        self.static: dict[str, Tensor] = {}
        self.captures = self.replays = self.eager_calls = 0
        self.failure: str | None = None
        self.check_error: float | None = None
        self.checked = False
        self.tolerance = 1e-2  # relative; a stale graph is off by O(1), kernel reordering by far less than this

    def __call__(self, f, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not x.is_cuda:
            raise ValueError("CUDA graphs need the latent on a CUDA device; turn cuda_graph off on the CPU")
        key = (f.graph_key(), tuple(x.shape), x.dtype, x.device, v.dtype, tuple(f.sigmas.shape))
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=x.device)
            self.failure = capture_refusal()
        if key == self.key:
            return self._replay(f, x, v) if self.checked else self._checked_replay(f, x, v)
        if self.failure is not None or key != self.pending:
            self.pending = key
            return self._eager(f, x, v)
        try:
            result = self._eager(f, x, v, sync_debug=True)
        except RuntimeError as error:
            if "synchronizing" not in str(error):
                raise
            self.pending, self.failure = None, f"the traverse reads a value back from the GPU ({_where(error)})"
            warnings.warn(f"no CUDA graph for the guidance JVP: {self.failure}; running it eagerly")
            return self._eager(f, x, v)
        try:
            self._capture(f, x, v, key)
        except Exception as error:  # the traverse is not capturable: run eagerly from now on, and say so
            self.graph, self.static, self.key = None, {}, None
            first_line = str(error).splitlines()[0] if str(error) else ""
            self.failure = f"{type(error).__name__} at {_where(error)}: {first_line}"
            warnings.warn(f"CUDA graph capture of the guidance JVP failed ({self.failure}); running it eagerly")
            torch.cuda.synchronize(x.device)
        return result

    def _checked_replay(self, f, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        loss, h = self._replay(f, x, v)
        eager_loss, eager_h = self._eager(f, x, v)
        self.check_error = max(relative_error(loss, eager_loss), relative_error(h, eager_h))
        self.checked = True
        if not self.check_error <= self.tolerance:
            self.graph, self.static, self.key = None, {}, None
            self.failure = f"the replay differs from the eager JVP by {self.check_error:.2e} (relative)"
            warnings.warn(f"CUDA graph of the guidance JVP dropped: {self.failure}; running it eagerly")
        return eager_loss, eager_h

    def describe(self) -> str:
        """One report line: captures, replays, eager calls, the capture check, or why graphs are off."""
        check = "" if self.check_error is None else f", replay vs eager {self.check_error:.1e}"
        state = f"off: {self.failure}" if self.failure else "on"
        return (f"CUDA graph {state} ({self.captures} capture(s), {self.replays} replay(s), "
                f"{self.eager_calls} eager JVP(s){check})")

    def _eager(self, f, x: Tensor, v: Tensor, sync_debug: bool = False) -> tuple[Tensor, Tensor]:
        """One eager forward-mode pass on the capture stream (`sync_debug`: any synchronisation raises)."""
        self.eager_calls += 1
        self.stream.wait_stream(torch.cuda.current_stream())
        previous = torch.cuda.get_sync_debug_mode()
        try:
            with torch.cuda.stream(self.stream):
                if sync_debug:
                    torch.cuda.set_sync_debug_mode("error")
                loss, h = forward_gradient.directional_derivative(f, x, v, self.estimator)
                loss, h = loss.detach().clone(), h.detach().clone()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            torch.cuda.current_stream().wait_stream(self.stream)
        return loss, h

    def _capture(self, f, x: Tensor, v: Tensor, key) -> None:
        self.graph, self.static, self.key = None, {}, None  # free the previous pool first
        torch.cuda.synchronize(x.device)
        torch.cuda.empty_cache()
        static = {"x": x.detach().clone(), "v": v.detach().clone(), "sigmas": f.sigmas.detach().clone()}
        traverse = f.with_sigmas(static["sigmas"])
        graph = torch.cuda.CUDAGraph()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.graph(graph, stream=self.stream):
            static["loss"], static["h"] = forward_gradient.directional_derivative(traverse, static["x"], static["v"],
                                                                                            self.estimator)
        torch.cuda.current_stream().wait_stream(self.stream)
        self.graph, self.static, self.key, self.pending, self.checked = graph, static, key, None, False
        self.captures += 1

    def _replay(self, f, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.static["x"].copy_(x)
        self.static["v"].copy_(v)
        self.static["sigmas"].copy_(f.sigmas)
        self.graph.replay()
        self.replays += 1
        return self.static["loss"].clone(), self.static["h"].clone()


def capture_refusal() -> str | None:
    """Why no capture is tried in this process, or None. With PyTorch's cudaMallocAsync allocator (ComfyUI 0.33's
    default on CUDA) a failed capture of the node path's JVP left the allocator broken: the eager retry aborted
    the whole ComfyUI server on an H200 (Fatal Python error: Aborted). ComfyUI's --disable-cuda-malloc selects the
    native allocator, whose graph pools PyTorch supports."""
    backend = torch.cuda.get_allocator_backend()
    if backend == "cudaMallocAsync":
        return ("PyTorch runs the cudaMallocAsync allocator (ComfyUI's default on CUDA), where a failed capture "
                "aborted the server; start ComfyUI with --disable-cuda-malloc to allow CUDA graphs")
    return None


def _where(error: BaseException) -> str:
    """file:line of the innermost frame outside torch in an exception's traceback."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/torch/" not in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def relative_error(a: Tensor, b: Tensor) -> float:
    """|a - b| / |b| in float64 (0 when both are zero; inf when either is not finite)."""
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    diff, norm = float((a - b).norm()), float(b.norm())
    return 0.0 if diff == 0 else diff / max(norm, 1e-300)
