"""GNMax and Confident-GNMax: the noisy vote, its noise shares, and the histograms."""

from __future__ import annotations

import numpy as np
import pytest

from secure_infer import ParameterError
from secure_infer.pate.aggregation import (
    RESOLUTION,
    Aggregator,
    noise_shares,
    noisy_labels,
    vote_histograms,
)


def test_histograms_count_each_teachers_vote():
    predictions = np.array([[0, 1, 2], [0, 1, 1], [2, 1, 1]])
    np.testing.assert_array_equal(vote_histograms(predictions, 3), [[2, 0, 1], [0, 3, 0], [0, 2, 1]])
    with pytest.raises(ParameterError, match="labels in 0..2"):
        vote_histograms(np.array([[0, 3]]), 3)


def test_shares_sum_to_the_calibrated_noise_and_sit_on_the_fixed_point_grid():
    agg = Aggregator(sigma=4.0, threshold=10, sigma_threshold=6.0)
    shares = [noise_shares(agg, queries=4000, classes=3, party=p, parties=3, colluders=1, seed=5) for p in range(3)]
    for s in shares:
        np.testing.assert_array_equal(s.argmax, np.round(s.argmax / RESOLUTION) * RESOLUTION)
        # each share alone: variance sigma^2 / (parties - colluders)
        assert s.argmax.std() == pytest.approx(4.0 / np.sqrt(2), rel=0.05)
        assert s.threshold.std() == pytest.approx(6.0 / np.sqrt(2), rel=0.05)
    # what any one party does not know (the other two shares) has the stated sigma
    unknown = shares[1].argmax + shares[2].argmax
    assert unknown.std() == pytest.approx(4.0, rel=0.05)
    assert not np.allclose(shares[0].argmax, shares[1].argmax)  # parties draw independently


def test_batches_compose_to_one_run():
    agg = Aggregator(sigma=2.0)
    whole = noise_shares(agg, queries=10, classes=4, seed=3)
    tail = noise_shares(agg, queries=4, classes=4, seed=3, offset=6)
    np.testing.assert_array_equal(whole.argmax[6:], tail.argmax)


def test_confident_gnmax_declines_split_votes_and_labels_consensus():
    agg = Aggregator(sigma=1.0, threshold=30, sigma_threshold=2.0)
    votes = np.array([[45, 3, 2], [18, 17, 15], [2, 1, 47]])
    labels = noisy_labels(votes, agg, noise_shares(agg, queries=3, classes=3, seed=0))
    np.testing.assert_array_equal(labels, [0, -1, 2])


def test_gnmax_noise_changes_close_calls_at_the_expected_rate():
    agg = Aggregator(sigma=3.0)
    votes = np.tile([[11, 10]], (4000, 1))
    labels = noisy_labels(votes, agg, noise_shares(agg, queries=4000, classes=2, seed=1))
    from scipy.stats import norm

    # Pr[class 1 wins] = Pr[N(0, 2 sigma^2) > 1]
    assert (labels == 1).mean() == pytest.approx(norm.sf(1 / (3.0 * np.sqrt(2))), abs=0.025)
    assert set(np.unique(labels)) <= {0, 1}


def test_bad_settings_are_refused():
    with pytest.raises(ParameterError, match="sigma"):
        Aggregator(sigma=0)
    with pytest.raises(ParameterError, match="sigma_threshold"):
        Aggregator(sigma=1.0, threshold=5)
    with pytest.raises(ParameterError, match="colluders"):
        noise_shares(Aggregator(sigma=1.0), queries=1, classes=2, parties=2, colluders=2)
    with pytest.raises(ParameterError, match="votes must be"):
        noisy_labels(np.ones((2, 3)), Aggregator(sigma=1.0), noise_shares(Aggregator(sigma=1.0), queries=3, classes=3))
