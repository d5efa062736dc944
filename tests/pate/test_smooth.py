"""Publishing the data-dependent epsilon: the local-sensitivity bound holds against every reachable histogram."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from secure_infer import ParameterError
from secure_infer.pate import analysis, smooth
from secure_infer.pate.aggregation import Aggregator

ORDERS = np.array([2.0, 5.0, 12.0])


def histograms(teachers: int, classes: int):
    """Every vote histogram of ``teachers`` votes over ``classes``."""
    for cuts in itertools.combinations(range(teachers + classes - 1), classes - 1):
        edges = (-1, *cuts, teachers + classes - 1)
        yield np.array([edges[i + 1] - edges[i] - 1 for i in range(classes)], dtype=np.float64)


def moves(a: np.ndarray, b: np.ndarray) -> int:
    """Teachers that must change their vote to turn histogram a into b."""
    return int(np.abs(a - b).sum() // 2)


def costs(rows: list[np.ndarray], aggregator: Aggregator, answered: bool) -> np.ndarray:
    """The per-query RDP the release publishes, one row per histogram."""
    label = 0 if answered else -1
    return smooth._bounds(np.array(rows), np.full(len(rows), label), aggregator, ORDERS)[0]


@pytest.mark.parametrize("aggregator,teachers,classes,answered", [
    (Aggregator(sigma=1.0, threshold=6, sigma_threshold=1.5), 8, 3, True),  # little noise: data-dependent regime
    (Aggregator(sigma=1.0, threshold=6, sigma_threshold=1.5), 8, 3, False),  # declined: the check's cost only
    (Aggregator(sigma=2.0, threshold=9, sigma_threshold=2.0), 12, 3, True),
    (Aggregator(sigma=2.0, threshold=9, sigma_threshold=2.0), 12, 3, False),
    (Aggregator(sigma=0.8), 7, 4, True),  # plain GNMax
])
def test_bound_covers_every_histogram_within_reach_and_its_neighbours(aggregator, teachers, classes, answered):
    every = list(histograms(teachers, classes))
    f = dict(zip((tuple(h) for h in every), costs(every, aggregator, answered), strict=True))
    checked = 0
    for start in every[:: max(1, len(every) // 12)]:
        bound = smooth.local_sensitivity(start[None, :], np.array([0 if answered else -1]), aggregator, ORDERS)
        for d in range(0, 4):
            worst = np.zeros(len(ORDERS))
            for mid in every:
                if moves(start, mid) > d:
                    continue
                for end in every:
                    if moves(mid, end) == 1:
                        worst = np.maximum(worst, np.abs(f[tuple(mid)] - f[tuple(end)]))
            assert np.all(worst <= bound[d] + 1e-12), (start, d, worst, bound[d])
            checked += 1
    assert checked > 20
    # the bound is not vacuous: somewhere a histogram's cost changes
    assert max(np.abs(a - b).max() for a in f.values() for b in f.values()) > 0


@pytest.mark.parametrize("aggregator", [Aggregator(sigma=1.5, threshold=10, sigma_threshold=2.0),
                                        Aggregator(sigma=3.0)])
def test_bound_at_distance_d_never_exceeds_a_neighbours_at_d_plus_one(aggregator):
    """What makes max_d exp(-beta d) U(D, d) beta-smooth."""
    rng = np.random.default_rng(0)
    for _ in range(15):
        row = rng.multinomial(16, rng.dirichlet(np.ones(4) * 0.5)).astype(np.float64)
        here = smooth.local_sensitivity(row[None, :], np.array([0]), aggregator, ORDERS)
        for other in (h for h in histograms(16, 4) if moves(h, row) == 1):
            there = smooth.local_sensitivity(other[None, :], np.array([0]), aggregator, ORDERS)
            assert np.all(here[:-1] <= there[1:] + 1e-12)


def test_released_cost_is_at_least_the_accountants():
    """The step function the release sums never undercuts Theorem 6's bound (it rounds q up)."""
    rng = np.random.default_rng(1)
    aggregator = Aggregator(sigma=4.0, threshold=30, sigma_threshold=5.0)
    votes = np.array([rng.multinomial(40, rng.dirichlet(np.ones(10) * 0.2)) for _ in range(60)], dtype=np.float64)
    labels = np.where(votes.max(1) >= 30, votes.argmax(1), -1)
    ours = smooth._bounds(votes, labels, aggregator, ORDERS)[0]
    theirs = analysis.query_costs(votes, labels, aggregator, ORDERS)[0]
    assert np.all(ours >= theirs - 1e-12)
    assert np.allclose(ours, theirs, rtol=0.05, atol=1e-9)  # and stays close to it


def test_release_of_a_confident_ensemble_beats_the_data_independent_bound():
    """The paper's MNIST setting (250 teachers, T=200, sigma1=150, sigma2=40) with near-unanimous votes."""
    aggregator = Aggregator(sigma=40.0, threshold=200, sigma_threshold=150.0)
    labels = np.zeros(100, dtype=int)
    strong = np.tile(np.array([[240.0, 4, 3, 2, 1, 0, 0, 0, 0, 0]]), (100, 1))
    weaker = np.tile(np.array([[205.0, 30, 10, 5, 0, 0, 0, 0, 0, 0]]), (100, 1))
    # sized from a previous run's votes, not from the votes released
    earlier = np.tile(np.array([[235.0, 8, 4, 2, 1, 0, 0, 0, 0, 0]]), (100, 1))
    params = smooth.suggest(20.0, smooth.smooth_sensitivity(earlier, labels, aggregator, order=20.0, beta=0.02))
    before = analysis.epsilon(strong, labels, aggregator)
    out = smooth.release(strong, labels, aggregator, params, rng=np.random.default_rng(0))
    assert out.epsilon_unreleased < out.epsilon_expected < before.epsilon_data_independent
    assert out.epsilon_expected + 2 * out.noise_std < before.epsilon_data_independent
    less_sure = smooth.release(weaker, labels, aggregator, params, rng=np.random.default_rng(0))
    assert less_sure.smooth_sensitivity > out.smooth_sensitivity
    assert less_sure.epsilon_expected > out.epsilon_expected


def test_published_figure_is_the_expected_one_plus_gaussian_noise():
    rng = np.random.default_rng(2)
    votes = np.array([rng.multinomial(30, [0.6, 0.3, 0.1]) for _ in range(40)], dtype=np.float64)
    aggregator = Aggregator(sigma=2.0)
    labels = votes.argmax(1)
    params = smooth.SmoothParams(order=6.0, beta=0.05, sigma=3.0)
    draws = [smooth.release(votes, labels, aggregator, params, rng=np.random.default_rng(seed)) for seed in range(60)]
    first = draws[0]
    assert first.smooth_sensitivity > 0
    assert first.noise_std == pytest.approx(3.0 * first.smooth_sensitivity)
    assert first.release_rdp == pytest.approx(smooth.rdp_gnss(0.05, 3.0, 6.0))
    assert first.epsilon_expected > first.epsilon_unreleased
    z = np.array([(d.epsilon - d.epsilon_expected) / d.noise_std for d in draws])
    assert abs(z.mean()) < 0.5 and 0.6 < z.std() < 1.5  # standard normal, 60 draws
    # the same seed gives the same figure; no seed gives fresh noise
    assert smooth.release(votes, labels, aggregator, params, rng=np.random.default_rng(0)) == first
    assert len({smooth.release(votes, labels, aggregator, params).epsilon for _ in range(3)}) == 3


def test_a_silo_pays_for_the_published_figure_too():
    params = smooth.SmoothParams(order=8.0, beta=0.05, sigma=2.0)
    rdp = analysis.ORDERS / 10.0**2  # a Gaussian mechanism
    without = analysis.spent(analysis.ORDERS, rdp, 1e-5)[0]
    with_release = smooth.epsilon_with_release(rdp, analysis.ORDERS, params, 1e-5)
    assert with_release > without
    assert with_release <= analysis.spent(np.array([8.0]), np.array([8.0 / 100 + smooth.rdp_gnss(0.05, 2.0, 8.0)]),
                                          1e-5)[0] + 1e-12


def test_gnss_cost_and_bad_input():
    # Theorem 23 at beta = 0, sigma = infinity costs nothing; the range of beta is enforced
    assert smooth.rdp_gnss(0.0, float("inf"), 4.0) == 0.0
    assert smooth.rdp_gnss(0.05, 3.0, 4.0) > smooth.rdp_gnss(0.05, 6.0, 4.0)
    with pytest.raises(ParameterError, match="1 / \\(2 order\\)"):
        smooth.rdp_gnss(0.2, 3.0, 4.0)
    with pytest.raises(ParameterError, match="2 \\* order \\* beta < 1"):
        smooth.SmoothParams(order=4.0, beta=0.2, sigma=1.0)
    with pytest.raises(ParameterError, match="smooth_sensitivity must be > 0"):
        smooth.suggest(4.0, 0.0)
    with pytest.raises(ParameterError, match="same number of teachers"):
        smooth.local_sensitivity(np.array([[3.0, 1.0], [2.0, 1.0]]), np.array([0, 0]), Aggregator(sigma=1.0), 2.0)
    with pytest.raises(ParameterError, match="delta"):
        smooth.release(np.array([[3.0, 1.0]]), np.array([0]), Aggregator(sigma=1.0),
                       smooth.SmoothParams(2.0, 0.1, 1.0), delta=0.0)
