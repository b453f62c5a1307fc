"""Property-based fuzzing of the widget values of TitanGuideSampler, TitanGradientGuess and TitanGuidanceMethod on
the embedded model through a real ComfyUI host (issue #18, item 5).

Each example starts from valid, cheap values (1-3 steps, at most 2 iterations / tangents / repeats) and corrupts up
to two widgets with what an API client can send: NaN, infinities, out-of-range numbers, non-integral floats for ints,
strings and numbers for booleans, unknown choices. For every prompt: the host refuses it with a readable message,
or the node fails with a readable message (a ValueError and its kin, never a raw ZeroDivisionError or "cannot
convert float NaN to integer"), or it succeeds and the latent is finite. After every failure the next valid
prompt equals a clean run bit for bit. Bounded: a fixed number of derandomized examples (the same ones in every
run), under 90 s on 2 cores.
"""

from __future__ import annotations

import math
import tempfile
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_hardening import embedded_prompt, latent_of
from testing.comfy_host import PACK_LINK_DIR, ComfyExecutionError, ComfyHost, ComfyValidationError

EXAMPLES = 50
BUDGET_SECONDS = 60.0

BAD_INT = st.sampled_from([math.nan, math.inf, 2.5, True, "3", -7, 10**7, None])
BAD_FLOAT = st.sampled_from([math.nan, math.inf, -math.inf, "0.5", "nan", True, -1.0, 1e9, None])
BAD_BOOL = st.sampled_from(["false", "true", 0, 1, None, "no"])
BAD_CHOICE = st.sampled_from(["nonsense", 3, None])


def ints(low: int, high: int):
    return st.integers(low, high), BAD_INT


def floats(low: float, high: float):
    return st.floats(low, high, allow_nan=False, allow_infinity=False), BAD_FLOAT


def choices(*options):
    return st.sampled_from(options), BAD_CHOICE


BOOL = (st.booleans(), BAD_BOOL)
# (node, widget) -> (valid and cheap values, bad values)
SPACE = {
    ("sampler", "seed"): ints(0, 2**32), ("sampler", "steps"): ints(1, 3), ("sampler", "cfg"): floats(0.0, 100.0),
    ("sampler", "denoise"): (st.sampled_from([1.0, 0.5, 0.0]), BAD_FLOAT),
    ("sampler", "sampler"): choices("euler", "ddim", "heun"), ("sampler", "eta"): floats(0.0, 1.0),
    ("sampler", "strength"): floats(0.0, 10.0),
    ("sampler", "strength_schedule"): choices("constant", "increasing", "decreasing"),
    ("sampler", "lookahead"): ints(-1, 1), ("sampler", "guidance_start"): floats(0.0, 0.5),
    ("sampler", "guidance_end"): floats(0.5, 1.0), ("sampler", "iterations"): ints(1, 2),
    ("sampler", "optimizer"): choices("normalized", "normalized_relative", "adam", "sgd", "adam_per_step"),
    ("sampler", "max_grad_norm"): floats(0.0, 1e6), ("sampler", "per_frame"): BOOL,
    ("sampler", "decode_chunk_frames"): ints(0, 16), ("sampler", "frames_per_video"): (st.sampled_from([0, 16, 8]),
                                                                                     st.sampled_from([3, 2.5, "16"])),
    ("guess", "kind"): choices("random", "score", "sampled_gradient", "orthogonal", "antithetic", "mixed"),
    ("guess", "k"): ints(1, 2), ("guess", "sampled_frames"): ints(0, 16),
    ("guess", "frame_choice"): choices("even", "random", "fixed"),
    ("guess", "frame_indices"): (st.sampled_from(["", "0, 8, 15", "3"]), st.sampled_from(["one", "0, 99", "-1"])),
    ("guess", "expansion"): choices("tile", "nearest", "interpolate"), ("guess", "random_weight"): floats(0.0, 1.0),
    ("method", "method"): choices("titan", "exact_gradient", "freedom", "mpgd", "tfg", "doodl"),
    ("method", "estimator"): choices("jvp", "dual", "central_difference"), ("method", "checkpoint"): BOOL,
    ("method", "baseline_update"): choices("plain", "normalized"),
    ("method", "freedom_rho"): floats(0.0, 1000.0), ("method", "freedom_repeats"): ints(1, 2),
    ("method", "mpgd_scale"): floats(0.0, 1000.0), ("method", "mpgd_iterations"): ints(1, 2),
    ("method", "tfg_rho"): floats(0.0, 1000.0), ("method", "tfg_mu"): floats(0.0, 1000.0),
    ("method", "tfg_gamma"): floats(0.0, 10.0), ("method", "tfg_recurrence"): ints(1, 2),
    ("method", "tfg_iterations"): ints(0, 2), ("method", "tfg_mc_samples"): ints(1, 2),
    ("method", "doodl_iterations"): ints(0, 2), ("method", "doodl_lr"): floats(0.0, 100.0),
    ("method", "doodl_mix"): floats(0.51, 1.0),
}
# What a readable failure raises, and what a raw one says (each was seen before issue #18's checks).
READABLE = ("ValueError", "NonFiniteLatentError", "FileNotFoundError", "OutOfMemoryError")
RAW = ("cannot convert float NaN to integer", "division by zero", "object has no attribute", "unsupported operand",
       "Traceback", "list index out of range")


@st.composite
def widget_values(draw) -> dict:
    """Valid cheap values for every widget, then up to two of them corrupted."""
    values = {key: draw(valid) for key, (valid, _) in SPACE.items()}
    for key in draw(st.lists(st.sampled_from(sorted(SPACE)), max_size=2, unique=True)):
        values[key] = draw(SPACE[key][1])
    return values


def fuzz_prompt(values: dict, tag: str) -> dict:
    node = {name: {w: v for (n, w), v in values.items() if n == name} for name in ("sampler", "guess", "method")}
    return embedded_prompt(tag=tag, guess=node["guess"], method=node["method"], **node["sampler"])


@pytest.fixture(scope="module")
def fuzz_host():
    """A ComfyUI server with only titan-guide loaded."""
    with tempfile.TemporaryDirectory(prefix="titan_fuzz_host_") as workdir:
        server = ComfyHost(workdir, custom_node_dirs=[PACK_LINK_DIR])
        server.start_or_print_log()
        yield server
        server.stop()


def test_fuzzed_widgets_give_a_readable_error_or_a_finite_latent_and_never_change_the_next_prompt(fuzz_host):
    clean = latent_of(fuzz_host, fuzz_host.run(embedded_prompt(tag="fuzz_clean"), timeout=300))
    started = time.monotonic()
    seen, messages = {"rejected": 0, "failed": 0, "ran": 0, "skipped (time)": 0}, []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(values=widget_values())
    def check(values):
        if time.monotonic() - started > BUDGET_SECONDS:  # bounded in time as well as in count
            seen["skipped (time)"] += 1
            return
        try:
            outputs = fuzz_host.run(fuzz_prompt(values, "fuzz"), timeout=120)
        except ComfyValidationError as error:  # the host's own checks: its messages name the input
            seen["rejected"] += 1
            assert error.response.get("node_errors") or error.response.get("error"), error.response
        except ComfyExecutionError as error:
            seen["failed"] += 1
            kind, message = error.details["exception_type"], error.details["exception_message"]
            assert kind.endswith(READABLE), f"{kind}: {message}\n{values}"
            assert len(message) > 20 and not any(raw in message for raw in RAW), f"{kind}: {message}\n{values}"
            messages.append(message.splitlines()[0][:150])
        else:
            seen["ran"] += 1
            assert torch.isfinite(latent_of(fuzz_host, outputs)).all(), values
            return
        after = latent_of(fuzz_host, fuzz_host.run(embedded_prompt(tag="fuzz_after"), timeout=300))
        assert torch.equal(after, clean), f"the valid prompt after a failure differs from a clean run\n{values}"

    check()
    print(f"fuzz outcomes: {seen} in {time.monotonic() - started:.1f} s", *sorted(set(messages)), sep="\n  ")
    assert seen["rejected"] + seen["failed"] > 0 and seen["ran"] > 0, seen
