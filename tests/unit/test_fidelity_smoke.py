"""Fast CPU checks of benchmarks/fidelity.py: metrics of a tiny run are finite and in range, the Frechet
distance in the judge's feature space tells real clips from noise, and the `--smoke` command line writes the
JSON layout the fidelity table is built from (both targets, DOODL's own step count, grid-edge flags)."""
import json
import math

import pytest
import torch

from benchmarks import fidelity

ROW_KEYS = {"method", "target", "n", "steps", "status", "success_rate", "target_probability", "guide_success_rate",
            "frechet", "consistency", "frame_diff", "peak_gb", "seconds", "seconds_per_video", "strength"}


@pytest.fixture(scope="module")
def models():
    return fidelity.load_models("cpu")


def test_smoke_rows_have_finite_metrics(models):
    real = fidelity.judge_readout(models.judge, fidelity.real_clips(32))["features"]
    table = fidelity.method_table(("unguided", "freedom"))
    rows = fidelity.evaluate_methods(models, table, videos=4, steps=2, seed=0, batch=4,
                                     targets={"colour": "red"}, real_features=real, steps_overrides={"freedom": 3})
    assert [r["method"] for r in rows] == ["unguided", "freedom"]
    assert [r["steps"] for r in rows] == [2, 3]
    for row in rows:
        assert row["status"] == "ok", row["status"]
        assert row["n"] == 4 and row["target"] == "colour=red"
        assert 0.0 <= row["success_rate"] <= 1.0
        for key in ("frechet", "consistency", "frame_diff", "seconds", "target_probability"):
            assert math.isfinite(row[key]), (row["method"], key, row[key])
        assert -1.0 <= row["consistency"] <= 1.0
        assert row["peak_gb"] is None  # CPU


def test_frechet_real_vs_real_below_real_vs_noise(models):
    reference = fidelity.judge_readout(models.judge, fidelity.real_clips(96, seed=11))["features"]
    other_world = fidelity.judge_readout(models.judge, fidelity.real_clips(96, seed=12))["features"]
    noise = torch.rand((96,) + tuple(fidelity.real_clips(1).shape[1:]), generator=torch.Generator().manual_seed(0))
    noise_features = fidelity.judge_readout(models.judge, noise)["features"]
    real_vs_real = fidelity.frechet_distance(other_world, reference)
    real_vs_noise = fidelity.frechet_distance(noise_features, reference)
    assert 0.0 <= real_vs_real < real_vs_noise


def test_frechet_matches_closed_form_for_gaussians():
    # 1-D Gaussians: FD = (mu_a - mu_b)^2 + (s_a - s_b)^2; large samples, loose tolerance
    gen = torch.Generator().manual_seed(0)
    a = 1.0 + 2.0 * torch.randn(200000, 1, generator=gen, dtype=torch.float64)
    b = -0.5 + 0.5 * torch.randn(200000, 1, generator=gen, dtype=torch.float64)
    assert fidelity.frechet_distance(a, b) == pytest.approx(1.5**2 + 1.5**2, rel=0.02)
    with pytest.raises(ValueError):
        fidelity.frechet_distance(a, b[:, :0])


def test_grid_edge_flags_the_ends_of_a_grid_only():
    grid = fidelity.TUNE_GRID["titan"][1]
    assert fidelity.grid_edge(grid, grid[0]) == "bottom"
    assert fidelity.grid_edge(grid, grid[-1]) == "top"
    assert all(fidelity.grid_edge(grid, value) is None for value in grid[1:-1])
    with pytest.raises(ValueError, match="not one of the grid's values"):
        fidelity.grid_edge(grid, 123.0)
    # the grids reach past the strengths the 12-step H100 run picked at the top of the old grids
    assert max(fidelity.TUNE_GRID["titan"][1]) > 0.1
    assert max(fidelity.TUNE_GRID["freedom"][1]) > 100 and max(fidelity.TUNE_GRID["mpgd"][1]) > 100


def test_smoke_command_writes_both_targets_with_doodl_steps_and_grid_edges(tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    # smaller still than --smoke's own settings (options given explicitly win), to keep this test fast
    smoke = dict(videos=2, steps=3, doodl_steps=4, doodl_videos=1)
    fidelity.main(["--smoke", "--methods", "unguided", "titan_random", "doodl", "--tune-videos", "1",
                   "--videos", "2", "--steps", "3", "--doodl-steps", "4", "--doodl-videos", "1",
                   "--out", str(out), "--grid", str(tmp_path / "grid_{target}.png")])
    result = json.loads(out.read_text())
    settings, rows = result["settings"], result["rows"]
    assert result["device"] == "cpu" and settings["smoke"] is True
    assert settings["doodl_iterations"] == fidelity.SMOKE_SETTINGS["doodl_iterations"]  # the smoke default
    assert set(settings["targets"]) == {"colour=red", "direction=left"}
    reference = f"unguided_{smoke['doodl_steps']}_steps"
    for target in ("colour=red", "direction=left"):
        by_method = {r["method"]: r for r in rows if r["target"] == target}
        assert list(by_method) == ["unguided", "titan_random", "doodl", reference]
        for row in by_method.values():
            assert ROW_KEYS <= set(row), (target, row["method"], ROW_KEYS - set(row))
            assert row["status"] == "ok", row["status"]
            assert 0.0 <= row["success_rate"] <= 1.0 and math.isfinite(row["consistency"])
            assert row["n"] == 1 or math.isfinite(row["frechet"])  # one video has no covariance
        assert by_method["unguided"]["steps"] == by_method["titan_random"]["steps"] == smoke["steps"]
        assert by_method["doodl"]["steps"] == by_method[reference]["steps"] == smoke["doodl_steps"]
        assert by_method["doodl"]["n"] == by_method[reference]["n"] == smoke["doodl_videos"]
        # smoke runs tune on the two ends of each grid, so the chosen value is always at an edge
        for name in ("titan_random", "doodl"):
            strength = by_method[name]["strength"]
            assert strength["at_grid_edge"] in ("bottom", "top"), strength
            assert set(strength["grid"]) == set(strength["grid_target_probability"])
        assert by_method["unguided"]["strength"] is None
        assert (tmp_path / f"grid_{target.replace('=', '-')}.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "edge)" in printed and "chosen strength at an edge of its grid" in printed


def _result(targets, steps=12, device="cpu"):
    rows = [{"method": "unguided", "target": t, "n": 4} for t in targets]
    settings = {key: 1 for key in fidelity.MERGE_KEYS}
    settings.update(steps=steps, targets={t: {"seconds": 1.0} for t in targets})
    return {"device": device, "rows": rows, "settings": settings}


def test_append_replaces_the_new_targets_rows_and_keeps_the_others():
    merged = fidelity.merge_results(_result(["colour=red", "direction=left"]), _result(["direction=left"]))
    assert [r["target"] for r in merged["rows"]] == ["colour=red", "direction=left"]
    assert set(merged["settings"]["targets"]) == {"colour=red", "direction=left"}
    with pytest.raises(ValueError, match="steps"):
        fidelity.merge_results(_result(["colour=red"]), _result(["direction=left"], steps=30))
    with pytest.raises(ValueError, match="device"):
        fidelity.merge_results(_result(["colour=red"]), _result(["direction=left"], device="NVIDIA H100"))


def test_bad_command_lines_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        fidelity.main(["--smoke", "--targets", "colour=purple"])
    with pytest.raises(SystemExit):
        fidelity.main(["--smoke", "--methods", "nonsense"])
    with pytest.raises(SystemExit):
        fidelity.main(["--smoke", "--append", "--out", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit):
        fidelity.main(["--smoke", "--doodl-steps", "0"])
