"""The node path's speed instruments: the on-request profile of one run, the forward-mode report line, the
CUDA-graph switch and its replay check (the capture itself needs a GPU: benchmarks/host_gpu.py's titan_graph row)."""
import json
from collections import Counter

import pytest
import torch

import guidance_core as core
from guidance_core.forward_ad import attention, cuda_graph


def _run(method, steps=4):
    denoise = core.EpsDenoiser(lambda z, t: z * 0.1, torch.linspace(0.99, 0.01, 1000, dtype=torch.float64))
    sigmas = core.DiscreteSchedule(torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)).spaced_sigmas(steps).float()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    return core.sample(denoise, x, sigmas, method, loss=lambda x0, per_frame=False: x0.square().mean(dim=(1, 2, 3)),
                       generator=torch.Generator().manual_seed(0))


def test_one_requested_run_is_profiled_by_phase(tmp_path):
    with core.profiling.profiled_if_requested(str(tmp_path)):
        _run(core.Titan())
    assert not list(tmp_path.iterdir())  # no request: nothing profiled, nothing written
    (tmp_path / "profile_next").touch()
    with core.profiling.profiled_if_requested(str(tmp_path)):
        _run(core.Titan(end=1.0), steps=4)
    assert not (tmp_path / "profile_next").exists()  # one request, one run
    summary = json.loads((tmp_path / "profile.json").read_text())
    phases = summary["phases"]
    assert phases["titan.forward_gradient"]["calls"] == 4 and phases["titan.guess_denoise"]["calls"] == 4
    assert phases["titan.guess"]["calls"] == 4
    # every aten op is counted once, under its innermost phase: the unroll's under titan.lookahead
    assert phases["titan.lookahead"]["own_aten_ops"] > 0 and phases["titan.sampler_step"]["own_aten_ops"] > 0
    assert sum(p["own_aten_ops"] for p in phases.values()) + summary["aten_ops_outside_phases"] == summary["aten_ops"]
    assert phases["titan.sampler_step"]["calls"] == 4
    assert phases["titan.lookahead"]["calls"] >= 4 and phases["titan.decode_and_objective"]["calls"] >= 4
    assert phases["titan.forward_gradient"]["cpu_s"] >= phases["titan.lookahead"]["cpu_s"] > 0
    assert summary["aten_ops"] > 0 and summary["top_cpu"] and all(not r["op"].startswith("titan.") for r in summary["top_cpu"])
    assert "titan.forward_gradient" in (tmp_path / "profile.txt").read_text()


def test_forward_mode_report_line_counts_routes_since_the_run_began():
    before = core.attention_routes()
    attention.route_counts["math"] += 3
    try:
        assert core.forward_ad_line(before, core.Titan()) == "attention calls math 3"
        graphs = cuda_graph.GraphedJvp()
        graphs.captures, graphs.replays, graphs.eager_calls, graphs.check_error = 1, 9, 2, 3e-6
        line = core.forward_ad_line(before, type("M", (), {"graphs": graphs})())
        assert line == "attention calls math 3; CUDA graph on (1 capture(s), 9 replay(s), 2 eager JVP(s), " \
                       "replay vs eager 3.0e-06)"
        graphs.failure = "RuntimeError at x.py:1: operation not permitted when stream is capturing"
        assert "CUDA graph off: RuntimeError at x.py:1" in core.forward_ad_line(Counter(), type(
            "M", (), {"graphs": graphs})())
    finally:
        attention.route_counts["math"] -= 3


def test_cuda_graph_switch_reads_the_environment_and_refuses_other_values(monkeypatch):
    monkeypatch.delenv("TITAN_CUDA_GRAPH", raising=False)
    assert core.cuda_graph_requested() is False
    monkeypatch.setenv("TITAN_CUDA_GRAPH", "1")
    assert core.cuda_graph_requested() is True
    monkeypatch.setenv("TITAN_CUDA_GRAPH", "yes")
    with pytest.raises(ValueError, match="TITAN_CUDA_GRAPH must be 0 or 1, got 'yes'"):
        core.cuda_graph_requested()


def test_method_spec_builds_graphs_only_for_forward_mode_estimators():
    settings = core.GuidanceSettings()
    guess = core.RandomGuess()
    graphs = core.MethodSpec("titan", ()).build(settings, guess, cuda_graph=True).graphs
    assert graphs is not None and graphs.estimator == "dual"  # the default estimator
    assert core.MethodSpec("titan", ()).build(settings, guess).graphs is None
    assert core.MethodSpec("titan", (("estimator", "jvp"),)).build(settings, guess, cuda_graph=True).graphs.estimator \
        == "jvp"
    assert core.MethodSpec("titan", (("estimator", "central_difference"),)).build(
        settings, guess, cuda_graph=True).graphs is None


def test_replay_check_error_is_relative_and_flags_non_finite_values():
    b = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert cuda_graph.relative_error(b.clone(), b) == 0.0
    assert cuda_graph.relative_error(b + torch.tensor([0.0, 0.05], dtype=torch.float64), b) == pytest.approx(0.01)
    assert cuda_graph.relative_error(torch.tensor([float("nan"), 0.0]), b) == float("inf")
    assert cuda_graph.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0


def test_no_capture_is_tried_under_the_cuda_malloc_async_allocator(monkeypatch):
    """A failed capture under cudaMallocAsync aborted the ComfyUI server on an H200: graphs are refused there up
    front, with the reason in the report, and allowed with the native allocator."""
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "cudaMallocAsync")
    assert "--disable-cuda-malloc" in cuda_graph.capture_refusal()
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "native")
    assert cuda_graph.capture_refusal() is None


def test_synchronised_phases_record_their_time_and_the_peak_they_raise(monkeypatch):
    """On CUDA a profiled run times each phase between synchronisations and notes the allocated peak a phase
    raised the run's to, so the phase that sets the peak is named (the counter here is a stand-in for CUDA's)."""
    from guidance_core import profiling
    gib = 2**30
    allocator = {"peak": 1 * gib}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: allocator["peak"])
    monkeypatch.setattr(profiling, "reads_forbidden", lambda: False)
    log = {"seconds": {}, "peak_raised_gb": {}}
    token = profiling._synchronised_log.set(log)
    try:
        with profiling.phase("titan.guess"):
            pass
        with profiling.phase("titan.lookahead"):
            allocator["peak"] = 3 * gib
        with profiling.phase("titan.decode_and_objective"), profiling.phase("titan.decode"):
            allocator["peak"] = 5.5 * gib
        with profiling.phase("titan.lookahead"):
            pass
    finally:
        profiling._synchronised_log.reset(token)
    assert log["peak_raised_gb"] == {"titan.lookahead": 3.0, "titan.decode": 5.5, "titan.decode_and_objective": 5.5}
    assert set(log["seconds"]) == {"titan.guess", "titan.lookahead", "titan.decode", "titan.decode_and_objective"}
    text = profiling.format_summary({"wall_s": 1.0, "phases": {}, "phase_seconds_synchronised": log["seconds"],
                                     "phase_peak_raised_gb": log["peak_raised_gb"]})
    assert "titan.decode" in text and "peak -> 5.50 GiB" in text and "peak -> 3.00 GiB" in text
