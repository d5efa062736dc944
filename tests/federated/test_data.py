"""Client splits: every example goes to exactly one client; alpha controls the label skew."""

from __future__ import annotations

import numpy as np
import pytest

from secure_infer._errors import ParameterError
from secure_infer.federated.data import partition

LABELS = np.repeat(np.arange(10), 60)


def _disjoint_cover(parts: tuple[np.ndarray, ...], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_iid_split_covers_every_example_once_in_near_equal_parts() -> None:
    split = partition(LABELS, 7, seed=1)
    assert split.scheme == "iid" and split.alpha is None
    assert _disjoint_cover(split.indices, len(LABELS))
    assert max(split.sizes()) - min(split.sizes()) <= 1


def _skew(alpha: float) -> float:
    """Mean share of a client's data held by its most common label (0.1 is perfectly balanced)."""
    split = partition(LABELS, 10, alpha=alpha, seed=0)
    assert _disjoint_cover(split.indices, len(LABELS))
    hist = split.label_histogram(LABELS, 10)
    return float((hist.max(axis=1) / hist.sum(axis=1)).mean())


def test_small_alpha_gives_clients_few_dominant_labels_and_large_alpha_approaches_iid() -> None:
    assert _skew(0.1) > 0.5
    assert _skew(1000.0) < 0.2
    assert _skew(0.1) > _skew(0.5) > _skew(1000.0)


def test_splits_are_deterministic_for_a_seed_and_respect_the_minimum_size() -> None:
    a = partition(LABELS, 10, alpha=0.3, seed=4, min_size=5)
    b = partition(LABELS, 10, alpha=0.3, seed=4, min_size=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices, strict=True))
    assert min(a.sizes()) >= 5


@pytest.mark.parametrize(("clients", "kwargs", "needle"), [
    (0, {}, "clients must be at least 1"),
    (10, {"alpha": 0.0}, "alpha must be positive"),
    (400, {"min_size": 2}, "cannot give 400 clients"),
])
def test_bad_requests_say_what_to_change(clients: int, kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ParameterError, match=needle):
        partition(LABELS, clients, **kwargs)  # type: ignore[arg-type]
