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


def test_backprop_baselines_steer_under_the_normalised_step():
    """Item 7 of #13: with the same normalised rule as TITAN, FreeDoM / MPGD / TFG visibly pull the samples
    to the circle (their plain steps at usable strengths barely move them)."""
    torch.set_num_threads(1)
    model = toy_moons.train_toy(iterations=1500, seed=0)
    table = toy_moons.methods()
    names = ["unguided", "freedom", "mpgd", "tfg", "freedom_plain"]
    table = {n: m if m is None else toy_moons.with_strength(m, toy_moons.strength_grid(n)[0],
                                                             1e-5 if n.endswith("_plain") else 0.2)
             for n, m in table.items() if n in names}
    results = toy_moons.run(model, points=200, steps=20, seed=0, table=table, observe_cosines=False)
    unguided = results["unguided"]["objective"]
    for name in ("freedom", "mpgd", "tfg"):
        assert results[name]["objective"] < 0.5 * unguided, (name, results[name]["objective"], unguided)
    assert results["freedom_plain"]["objective"] > 0.9 * unguided
