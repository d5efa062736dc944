"""The PATE accountant: each bound holds against the exact Renyi divergence of the released label."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import special, stats

from secure_infer import ParameterError
from secure_infer.pate import analysis
from secure_infer.pate.aggregation import Aggregator

ALPHAS = np.array([1.5, 2.0, 4.0, 8.0, 16.0, 32.0])


def log_label_distribution(votes: np.ndarray, sigma: float) -> np.ndarray:
    """log Pr[argmax(votes + N(0, sigma^2 I)) = i] for every class, by quadrature (accurate in the tails)."""
    t = np.linspace(-45, 45, 36001)
    dt = t[1] - t[0]
    out = np.empty(len(votes))
    for i in range(len(votes)):
        # class i wins when every other noisy count is below its own: integrate over i's noise
        logs = stats.norm.logpdf(t)
        for j in range(len(votes)):
            if j != i:
                logs = logs + stats.norm.logcdf((votes[i] - votes[j]) / sigma + t)
        out[i] = special.logsumexp(logs) + math.log(dt)
    return out


def renyi(log_p: np.ndarray, log_q: np.ndarray, alpha: float) -> float:
    return float(special.logsumexp(alpha * log_p + (1 - alpha) * log_q) / (alpha - 1))


def neighbours(votes: np.ndarray):
    """Every histogram one teacher's changed vote can produce."""
    for a, b in itertools.permutations(range(len(votes)), 2):
        if votes[a] > 0:
            moved = votes.copy()
            moved[a] -= 1
            moved[b] += 1
            yield moved


@pytest.mark.parametrize("votes,sigma", [
    (np.array([40.0, 3.0, 2.0]), 6.0),    # strong consensus: the data-dependent bound applies
    (np.array([25.0, 14.0, 1.0]), 4.0),   # a runner-up close enough to matter
    (np.array([60.0, 0.0, 0.0, 0.0]), 10.0),
])
def test_gnmax_bound_holds_against_exact_divergence(votes, sigma):
    bound = analysis.rdp_gnmax(analysis.log_q_gnmax(votes, sigma), sigma, ALPHAS)
    here = log_label_distribution(votes, sigma)
    exact = np.array([max(renyi(here, log_label_distribution(n, sigma), a) for n in neighbours(votes))
                      for a in ALPHAS])
    assert np.all(exact <= bound * (1 + 1e-6) + 1e-12), (exact, bound)
    assert np.all(bound <= analysis.rdp_gnmax_data_independent(sigma, ALPHAS) + 1e-15)


def test_consensus_costs_far_less_than_the_data_independent_bound():
    sigma = 6.0
    bound = analysis.rdp_gnmax(analysis.log_q_gnmax(np.array([40.0, 3.0, 2.0]), sigma), sigma, ALPHAS)
    assert np.all(bound[:3] < 0.01 * analysis.rdp_gnmax_data_independent(sigma, ALPHAS)[:3])


def test_split_vote_falls_back_to_the_data_independent_bound():
    sigma = 6.0
    votes = np.array([10.0, 9.0, 9.0])
    np.testing.assert_allclose(analysis.rdp_gnmax(analysis.log_q_gnmax(votes, sigma), sigma, ALPHAS),
                               analysis.rdp_gnmax_data_independent(sigma, ALPHAS))


def test_log_q_is_the_union_bound_and_is_capped():
    sigma = 5.0
    votes = np.array([30.0, 20.0, 10.0])
    union = 0.5 * special.erfc(10 / (2 * sigma)) + 0.5 * special.erfc(20 / (2 * sigma))
    assert analysis.log_q_gnmax(votes, sigma) == pytest.approx(math.log(union))
    assert analysis.log_q_gnmax(np.array([5.0, 5.0, 5.0]), sigma) == pytest.approx(math.log(2 / 3))


@pytest.mark.parametrize("votes,threshold,sigma", [
    (np.array([40.0, 6.0, 4.0]), 30.0, 5.0),   # far above T
    (np.array([20.0, 18.0, 12.0]), 30.0, 5.0),  # below T, runner-up close: a moved vote can change which class is top
    (np.array([30.0, 10.0, 10.0]), 30.0, 8.0),  # at T
    (np.array([17.0, 17.0, 16.0]), 18.0, 3.0),  # a tie at the top
])
def test_threshold_bound_holds_for_every_neighbouring_histogram(votes, threshold, sigma):
    """The answered bit's exact divergence against each histogram one moved vote produces."""
    bound = analysis.rdp_threshold(float(votes.max()), threshold, sigma, ALPHAS)

    def bit(v: np.ndarray) -> np.ndarray:
        p = stats.norm.sf((threshold - v.max()) / sigma)
        return np.log([p, 1 - p])

    exact = np.array([max(renyi(bit(votes), bit(n), a) for n in neighbours(votes)) for a in ALPHAS])
    assert np.all(exact <= bound * (1 + 1e-9) + 1e-15), (exact, bound)
    assert np.all(bound <= ALPHAS / (2 * sigma**2) + 1e-15)
    if votes.max() != threshold:  # away from T the data-dependent cost is below the data-independent one
        assert bound[0] < ALPHAS[0] / (2 * sigma**2)


def test_silo_shares_released_noise_and_the_silo_guarantee():
    agg = Aggregator(sigma=10.0, threshold=30.0, sigma_threshold=8.0)
    seen = analysis.released(agg, parties=3, colluders=1)
    assert seen.sigma == pytest.approx(10.0 * math.sqrt(1.5)) and seen.sigma_threshold == pytest.approx(8.0 * math.sqrt(1.5))
    votes = np.array([[45, 3, 2], [20, 18, 12], [48, 1, 1], [31, 10, 9]] * 25, dtype=float)
    labels = np.where(votes.max(1) > 30, votes.argmax(1), -1)
    silo = analysis.epsilon(votes, labels, agg, parties=3, colluders=1)
    alone = analysis.epsilon(votes, labels, agg)
    outside = analysis.epsilon(votes, labels, seen)
    # a silo's guarantee: the data-independent one at the noise it does not know
    assert silo.epsilon_silo == pytest.approx(alone.epsilon_data_independent)
    # the labels cost no more than the silo's view, and no more than the released noise's own analysis
    assert silo.epsilon <= min(silo.epsilon_silo, outside.epsilon) + 1e-9
    assert silo.epsilon_data_independent <= outside.epsilon_data_independent + 1e-9
    assert alone.epsilon_silo is None
    with pytest.raises(ParameterError, match="colluders"):
        analysis.released(agg, parties=2, colluders=2)


def test_epsilon_composes_and_charges_declined_queries_for_the_check_only():
    agg = Aggregator(sigma=10.0, threshold=30.0, sigma_threshold=8.0)
    votes = np.array([[45, 3, 2], [20, 18, 12], [48, 1, 1]] * 20, dtype=float)
    labels = np.where(votes.max(1) > 30, votes.argmax(1), -1)
    dependent, independent = analysis.query_costs(votes, labels, agg, ALPHAS)
    declined = labels < 0
    np.testing.assert_allclose(independent[declined], np.tile(ALPHAS / (2 * 8.0**2), (declined.sum(), 1)))
    np.testing.assert_allclose(independent[~declined], np.tile(ALPHAS / (2 * 8.0**2) + ALPHAS / 10.0**2,
                                                               ((~declined).sum(), 1)))
    cost = analysis.epsilon(votes, labels, agg, delta=1e-5)
    assert cost.answered == int((~declined).sum()) and cost.queries == len(votes)
    assert 0 < cost.epsilon < cost.epsilon_data_independent
    fewer = analysis.epsilon(votes[:30], labels[:30], agg, delta=1e-5)
    assert fewer.epsilon < cost.epsilon  # more queries never cost less
    running = analysis.cumulative_epsilon(votes, labels, agg, delta=1e-5)
    assert np.all(np.diff(running) >= -1e-12) and running[-1] == pytest.approx(cost.epsilon)


def test_data_independent_epsilon_matches_the_gaussian_mechanism():
    """n answered GNMax queries at sigma are one Gaussian mechanism with sensitivity sqrt(2 n)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    agg = Aggregator(sigma=40.0)
    votes = np.tile([[250.0, 0.0]], (640, 1))
    cost = analysis.epsilon(votes, np.zeros(640, dtype=int), agg, delta=1e-5)
    expected, _ = get_privacy_spent(orders=analysis.ORDERS, rdp=analysis.ORDERS * 640 / 40.0**2, delta=1e-5)
    assert cost.epsilon_data_independent == pytest.approx(expected)
    assert cost.epsilon < 0.1 * cost.epsilon_data_independent  # 250-0 at sigma 40: one teacher hardly matters


def test_bad_input_is_refused():
    with pytest.raises(ParameterError):
        analysis.rdp_gnmax(0.5, 1.0)
    with pytest.raises(ParameterError):
        analysis.epsilon(np.ones((2, 3)), np.zeros(2, dtype=int), Aggregator(sigma=1.0), delta=0.0)
    with pytest.raises(ParameterError):
        analysis.query_costs(np.ones((2, 3)), np.zeros(3, dtype=int), Aggregator(sigma=1.0))
