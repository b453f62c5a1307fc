"""A reduced run of the paper's toy: every TITAN variant pulls samples toward the circle."""
import pytest
import torch

from benchmarks import toy_moons


@pytest.fixture(scope="module")
def toy_results():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threading costs more than it gives
    try:
        model = toy_moons.train_toy(iterations=1500, seed=0)
        names = ["unguided", "titan_random", "titan_score", "titan_sampled_gradient", "titan_orthogonal_k2",
                 "titan_mixed", "exact"]
        return toy_moons.run(model, points=200, steps=20, seed=0, names=names)
    finally:
        torch.set_num_threads(threads)


def test_every_titan_variant_lowers_the_objective_against_unguided(toy_results):
    unguided = toy_results["unguided"]["objective"]
    for name, r in toy_results.items():
        if name.startswith("titan"):
            assert r["objective"] < 0.5 * unguided, (name, r["objective"], unguided)


def test_exact_gradient_has_cosine_one_and_random_guess_is_a_projection(toy_results):
    assert toy_results["exact"]["cosine_to_exact"] == pytest.approx(1.0, abs=1e-9)
    # in 2-D, E|cos| of a random Gaussian direction with a fixed vector is 2/pi
    assert toy_results["titan_random"]["cosine_to_exact"] == pytest.approx(2 / torch.pi, abs=0.08)
    assert toy_results["titan_orthogonal_k2"]["cosine_to_exact"] == pytest.approx(1.0, abs=1e-9)


def test_moons_are_deterministic_and_standardised():
    a = toy_moons.make_moons(4000, torch.Generator().manual_seed(0))
    b = toy_moons.make_moons(4000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.mean(0).abs().max() < 0.1 and (a.std(0) - 1).abs().max() < 0.2
