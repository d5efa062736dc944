"""Client-level DP accounting: epsilon from the RDP accountant, and the noise for a target epsilon."""

from __future__ import annotations

import warnings

import pytest

from secure_infer._errors import ParameterError
from secure_infer.federated import dp_epsilon
from secure_infer.federated.training import noise_for_epsilon


@pytest.mark.parametrize(("epsilon", "rate"), [(1.0, 1.0), (8.0, 1.0), (8.0, 0.1), (2.0, 0.5)])
def test_noise_for_a_target_epsilon_meets_it_tightly_without_accountant_warnings(epsilon: float, rate: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Opacus' "optimal RDP order is the largest alpha"
        z = noise_for_epsilon(epsilon, rate, 20, 1e-5)
        got = dp_epsilon(z, rate, 20, 1e-5)
        assert epsilon * 0.98 <= got <= epsilon
        assert dp_epsilon(z * 0.95, rate, 20, 1e-5) > epsilon  # not more noise than needed


def test_epsilon_grows_with_rounds_and_sampling_and_shrinks_with_noise() -> None:
    assert dp_epsilon(1.0, 0.1, 10, 1e-5) < dp_epsilon(1.0, 0.1, 50, 1e-5) < dp_epsilon(1.0, 1.0, 50, 1e-5)
    assert dp_epsilon(4.0, 1.0, 50, 1e-5) < dp_epsilon(1.0, 1.0, 50, 1e-5)
    assert dp_epsilon(0.0, 1.0, 1, 1e-5) == float("inf")


def test_an_impossible_target_is_refused() -> None:
    with pytest.raises(ParameterError, match="target epsilon must be positive"):
        noise_for_epsilon(0.0, 1.0, 10, 1e-5)
