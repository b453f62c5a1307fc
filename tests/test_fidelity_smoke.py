"""Fast CPU check of benchmarks/fidelity.py's core: metrics of a tiny run are finite and in range, and the
Frechet distance in the judge's feature space tells real clips from noise."""
import math

import pytest
import torch

from benchmarks import fidelity


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(2)
    return fidelity.load_models("cpu")


def test_smoke_rows_have_finite_metrics(models):
    real = fidelity.judge_readout(models.judge, fidelity.real_clips(32))["features"]
    table = fidelity.method_table(("unguided", "freedom"))
    rows = fidelity.evaluate_methods(models, table, videos=4, steps=2, seed=0, batch=4,
                                     targets={"colour": "red"}, real_features=real)
    assert [r["method"] for r in rows] == ["unguided", "freedom"]
    for row in rows:
        assert row["status"] == "ok", row["status"]
        assert row["n"] == 4
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
