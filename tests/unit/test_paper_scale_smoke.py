"""CPU checks of benchmarks/paper_scale.py: failure rows, the time budget, the JSON layout and its jvp_profile hook,
the attention switch, the decode-chunk plans, and one tiny CogVideoX case end to end."""
import dataclasses
import json

import pytest
import torch

from benchmarks import paper_scale as ps
from guidance_core.forward_ad import attention

ROW_KEYS = {"backbone", "frames", "height", "width", "dtype", "scorer", "method", "lookahead", "peak_gb",
            "weights_gb", "step_s", "video_s", "status", "attention", "cuda_graph", "decode_chunk", "route_counts"}


class FakeContext:
    """Stands in for a SamplingContext: plain steps leave x as it is."""

    def __init__(self, denoise, sigmas, **kwargs):
        self.sigmas = sigmas

    def plain_step(self, x, i):
        return x


class FakeProblem:
    """The attributes run_row reads, without a model."""

    x = torch.zeros(1, 4, 2, 2, 2)
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    denoise = None
    chunk = 2

    def context_kwargs(self):
        return {}


class RaisingMethod:
    """A guidance method whose step raises `error` and records the attention setting it ran under."""

    def __init__(self, error):
        self.error, self.fused_seen = error, []

    def guide(self, x, i, ctx):
        self.fused_seen.append(attention.current_settings().fused)
        raise self.error


@pytest.fixture
def fake_rows(monkeypatch):
    """run_row on FakeProblem with make_method replaced by a raising method."""
    monkeypatch.setattr(ps.core, "SamplingContext", FakeContext)

    def run(error, spec):
        method = RaisingMethod(error)
        monkeypatch.setattr(ps, "make_method", lambda spec: method)
        options = ps.Options(torch.device("cpu"), guided_step=1)
        return ps.run_row(FakeProblem(), spec, options), method
    return run


def test_out_of_memory_is_a_result_and_other_failures_are_error_rows(fake_rows):
    row, _ = fake_rows(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), ps.titan(1))
    assert row["status"] == "oom" and row["oom_in"] == "step"
    row, _ = fake_rows(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), ps.RowSpec("freedom"))
    assert row["status"] == "oom"
    row, _ = fake_rows(KeyError("boom"), ps.RowSpec("mpgd"))
    assert row["status"] == "error: KeyError: 'boom'"
    assert row["step_s"] is None and row["peak_gb"] is None


def test_math_attention_row_turns_the_fused_kernel_off_and_restores_it(fake_rows):
    with attention.settings_override(fused=True):
        row, method = fake_rows(ValueError("x"), ps.titan(1, math_attention=True))
        assert method.fused_seen == [False] and attention.current_settings().fused is True
        assert row["attention"] == "math"
        row, method = fake_rows(ValueError("x"), ps.titan(1))
        assert method.fused_seen == [True]


def test_time_budget_skips_every_row_without_building_models(tmp_path, monkeypatch):
    monkeypatch.setattr(ps, "setup_case", lambda case, options: pytest.fail("a case was set up past the budget"))
    out = tmp_path / "out.json"
    cases = [(name, ps.CASES[name]) for name in ("ad256_dover", "cogvideox2b_dover")]
    options = ps.Options(torch.device("cpu"), max_minutes=0.0)
    rows = ps.run_benchmark(cases, options, out, "cmd", profile_path=None, started=0.0)
    assert len(rows) == len(ps.CASES["ad256_dover"].rows) + len(ps.CASES["cogvideox2b_dover"].rows)
    assert {r["status"] for r in rows} == {"skipped: time budget"}
    written = json.loads(out.read_text())
    assert set(written) == {"device", "torch", "command", "rows"} and written["command"] == "cmd"
    assert all(ROW_KEYS <= set(r) for r in written["rows"])
    assert [r["cuda_graph"] for r in rows[:2]] == [False, True]
    assert rows[2]["attention"] == "math"  # the MATH-attention row says so even when skipped


def test_jvp_profile_attention_section_is_copied_when_present(tmp_path):
    out, profile = tmp_path / "out.json", tmp_path / "jvp_profile.json"
    ps.write(out, [], "cmd", "cpu", profile_path=profile)
    assert "attention" not in json.loads(out.read_text())
    profile.write_text(json.dumps({"attention": {"fused_ms": 1.5}, "other": 1}))
    ps.write(out, [], "cmd", "cpu", profile_path=profile)
    assert json.loads(out.read_text())["attention"] == {"fused_ms": 1.5}


@pytest.mark.parametrize("pairs, frames, expected", [(2, 9, 2), (3, 9, 4), (4, 9, 4), (5, 9, 9), (1, 9, 2),
                                                     (3, 13, 4), (6, 13, 6), (9, 13, 13)])
def test_cogvideox_chunk_plan_is_even_and_bounds_the_first_call(monkeypatch, pairs, frames, expected):
    """diffusers' first call decodes c + F % c latent frames; it must fit the probe's 2 * pairs."""
    problem = object.__new__(ps.CogVideoXProblem)
    problem.latent_frames, problem.x, problem.layout = frames, None, None
    monkeypatch.setattr(ps.core, "plan_chunk_frames", lambda decode, x, layout, fraction: pairs)
    chunk = problem.plan_decode_chunk(0.5)
    assert chunk == expected
    assert chunk == frames or (chunk % 2 == 0 and (chunk + frames % chunk <= 2 * pairs or chunk == 2))


def test_memory_target_scales_the_planned_share(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 10 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 12 * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (68 * gib, 80 * gib))
    options = ps.Options(torch.device("cuda"))
    case = ps.CASES["ad384_imagebind"]
    # free on the device: 68 + 12 - 10 = 70 GiB; on a 24 GB card: 14 GiB; half of that of the 70
    assert ps.plan_free_fraction(case, options) == pytest.approx(0.5 * 14 / 70)
    assert ps.plan_free_fraction(ps.CASES["ad256_dover"], options) == ps.PLAN_FREE_FRACTION
    with pytest.raises(ValueError, match="exceed the case's 4.0 GB target"):
        ps.plan_free_fraction(dataclasses.replace(case, memory_target_gb=4.0), options)


def test_tiny_cogvideox_case_runs_titan_video_and_freedom(tmp_path):
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        case = ps.smoke_case(ps.CASES["cogvideox2b_dover"])
        case = dataclasses.replace(case, rows=(ps.titan(1, video=True), ps.RowSpec("freedom")))
        options = ps.Options(torch.device("cpu"), steps=3, guided_step=1, repeats=1, smoke=True)
        rows = ps.run_benchmark([("cogvideox2b_dover", case)], options, tmp_path / "o.json", "cmd", profile_path=None)
    finally:
        torch.set_num_threads(previous)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    titan_row, freedom_row = rows
    assert titan_row["decode_chunk"] == 3  # auto on the CPU: all 3 latent frames in one VAE call
    assert titan_row["step_s"] > 0 and titan_row["video_s"] > 0 and titan_row["route_counts"].get("math", 0) > 0
    assert freedom_row["route_counts"] == {} and freedom_row["lookahead"] is None


def test_merge_keeps_rows_of_other_cases_and_both_commands(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    old_rows = [{"case": "ad256_dover", "status": "ok"}, {"case": "ad256_clip_l", "status": "ok"}]
    out.write_text(json.dumps({"device": "d", "torch": "t", "command": "run 1", "rows": old_rows}))
    kept, command = ps.merged_rows(out, ["ad256_clip_l", "cogvideox2b_dover"], "run 2")
    assert kept == old_rows[:1] and command == "run 1 ; run 2"
    monkeypatch.setattr(ps, "setup_case", lambda case, options: pytest.fail("set up past the budget"))
    options = ps.Options(torch.device("cpu"), max_minutes=0.0)
    ps.run_benchmark([("ad256_clip_l", ps.CASES["ad256_clip_l"])], options, out, command, profile_path=None,
                     started=0.0, prior_rows=kept)
    written = json.loads(out.read_text())
    assert [r["case"] for r in written["rows"]] == ["ad256_dover"] + ["ad256_clip_l"] * 3
    out.write_text("not json")
    with pytest.raises(SystemExit, match="not a results file"):
        ps.merged_rows(out, ["ad256_clip_l"], "run 3")
    assert ps.merged_rows(tmp_path / "missing.json", ["ad256_clip_l"], "run 4") == ([], "run 4")
