"""Fast CPU checks of benchmarks/fidelity.py: the Frechet distance against closed forms and real clips, the
selection rule, the JSON row layout of a `--smoke` run (incl. the default and unguided rows), the Pareto picture."""
import json
import math

import pytest
import torch

from benchmarks import fidelity

ROW_KEYS = {"method", "target", "strength", "success_rate", "frechet_target", "frechet", "hf_ratio",
            "frame_diff_ratio", "consistency", "peak_gb", "seconds", "n", "default"}


@pytest.fixture(scope="module")
def models():
    return fidelity.load_models("cpu")


def test_frechet_real_vs_real_below_real_vs_noise(models):
    reference = fidelity.judge_readout(models.judge, fidelity.real_clips(96, seed=11))["features"]
    other_world = fidelity.judge_readout(models.judge, fidelity.real_clips(96, seed=12))["features"]
    noise = torch.rand((96,) + tuple(fidelity.real_clips(1).shape[1:]), generator=torch.Generator().manual_seed(0))
    noise_features = fidelity.judge_readout(models.judge, noise)["features"]
    assert 0.0 <= fidelity.frechet_distance(other_world, reference) < fidelity.frechet_distance(noise_features, reference)


def test_frechet_matches_closed_form_for_gaussians():
    gen = torch.Generator().manual_seed(0)
    a = 1.0 + 2.0 * torch.randn(200000, 1, generator=gen, dtype=torch.float64)
    b = -0.5 + 0.5 * torch.randn(200000, 1, generator=gen, dtype=torch.float64)
    assert fidelity.frechet_distance(a, b) == pytest.approx(1.5**2 + 1.5**2, rel=0.02)
    with pytest.raises(ValueError):
        fidelity.frechet_distance(a, b[:, :0])


def test_real_clips_with_a_target_have_it():
    from embedded import world
    clips = fidelity.real_clips_with({"colour": "red"}, 64)
    batch = world.make_batch(fidelity.REAL_WORLD_SEED, 0, 64)
    assert clips.shape[0] == int((batch.labels["colour"] == 0).sum()) > 0


def test_selection_rule_takes_the_best_success_among_clean_points():
    def row(success, hf, fd, frechet):
        return dict(status="ok", success_rate=success, hf_ratio=hf, frame_diff_ratio=fd, frechet_target=frechet)
    rows = [row(0.99, 1.5, 1.0, 10.0), row(0.95, 1.1, 1.31, 10.0), row(0.9, 1.2, 1.3, 30.0), row(0.9, 1.0, 1.0, 20.0)]
    assert fidelity.select(rows) is rows[3]  # the damaged ones are out; ties go to the lower Frechet distance
    assert fidelity.select(rows[:2]) is None


def test_every_sweep_has_at_least_six_strengths():
    assert all(len(sweep) >= 6 for _, sweep, _ in fidelity.SWEEPS.values())
    assert set(fidelity.CORE_METHODS) <= set(fidelity.PAPER_RUN_METHODS) <= set(fidelity.SWEEPS)


def test_smoke_command_writes_the_row_layout_and_the_pictures(tmp_path):
    out = tmp_path / "fidelity.json"
    fidelity.main(["--smoke", "--methods", "titan_sampled_gradient", "freedom", "--videos", "2", "--steps", "2",
                   "--out", str(out), "--figures", str(tmp_path)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["device"] == "cpu" and result["settings"]["smoke"] is True
    assert [r["method"] for r in rows] == ["unguided", "titan_default"] + ["titan_sampled_gradient"] * 2 + ["freedom"] * 2
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["status"] == "ok" and r["target"] == "colour=red" and r["n"] == 2
        assert 0 <= r["success_rate"] <= 1 and math.isfinite(r["hf_ratio"]) and math.isfinite(r["frechet_target"])
    assert [r["default"] for r in rows].count(True) == 1 and rows[1]["default"]
    assert rows[1]["strength"] == fidelity.gc.Titan.strength and rows[1]["update"] == fidelity.gc.Titan.optimizer
    assert rows[0]["hf_ratio"] == rows[0]["frame_diff_ratio"] == 1.0
    for name in ("titan_sampled_gradient", "freedom"):
        assert sum(r["selected"] for r in rows if r["method"] == name) <= 1
    assert (tmp_path / "fidelity_pareto.png").stat().st_size > 0
    assert (tmp_path / "fidelity_grid_colour-red.png").stat().st_size > 0


def test_append_replaces_the_new_runs_rows_and_refuses_other_settings():
    def result(targets, steps=12, device="cpu", methods=("unguided", "titan_default"), run=0):
        settings = {"videos": 4, "steps": steps, "seed": 0, "real_clips": 64, "smoke": False,
                    "targets": {t: {"command": f"run {run}"} for t in targets}}
        rows = [{"method": m, "target": t, "run": run} for t in targets for m in methods]
        return {"device": device, "rows": rows, "settings": settings}
    sweep = result(["colour=red", "direction=left"], methods=("unguided", "titan_default", "freedom"))
    merged = fidelity.merge_results(sweep, result(["direction=left"], run=1))  # a defaults-only refresh of left
    assert [(r["target"], r["method"], r["run"]) for r in merged["rows"]] == [
        ("colour=red", "unguided", 0), ("colour=red", "titan_default", 0), ("colour=red", "freedom", 0),
        ("direction=left", "freedom", 0), ("direction=left", "unguided", 1), ("direction=left", "titan_default", 1)]
    assert merged["settings"]["targets"]["direction=left"]["commands"] == ["run 0", "run 1"]
    with pytest.raises(ValueError, match="steps"):
        fidelity.merge_results(result(["colour=red"]), result(["direction=left"], steps=30))
    with pytest.raises(ValueError, match="device"):
        fidelity.merge_results(result(["colour=red"]), result(["direction=left"], device="NVIDIA H200"))


def test_bad_command_lines_are_refused(tmp_path):
    for argv in (["--smoke", "--targets", "colour=purple"], ["--smoke", "--methods", "nonsense"],
                 ["--smoke", "--append", "--out", str(tmp_path / "missing.json")], ["--smoke", "--steps", "0"]):
        with pytest.raises(SystemExit):
            fidelity.main(argv)


def test_committed_results_meet_the_layout_and_mark_one_default_per_target():
    result = json.loads((fidelity.RESULTS / "fidelity.json").read_text())
    targets = {r["target"] for r in result["rows"]}
    assert {"colour=red", "direction=left"} <= targets and any(t.startswith("shape=") for t in targets)
    for target in targets:
        rows = [r for r in result["rows"] if r["target"] == target]
        assert sum(r["default"] for r in rows) == 1 and any(r["method"] == "unguided" for r in rows)
        assert all(ROW_KEYS <= set(r) for r in rows) and all(r["n"] >= 256 for r in rows)
        default = next(r for r in rows if r["default"])
        assert (default["strength"], default["update"]) == (fidelity.gc.Titan.strength, fidelity.gc.Titan.optimizer)
        # the bar for the shipped default, at <= half of FreeDoM's peak memory
        assert default["success_rate"] >= 0.93 and default["frechet_target"] <= 20, default
        assert default["hf_ratio"] <= 1.2 and default["frame_diff_ratio"] <= 1.3, default
        freedom_peak = max(r["peak_gb"] for r in rows if r["method"] == "freedom")
        assert default["peak_gb"] <= 0.5 * freedom_peak, (default["peak_gb"], freedom_peak)
