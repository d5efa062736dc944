"""Encrypted training: an MLP trained on secret shares matches plaintext SGD."""

from __future__ import annotations

import pytest

import secure_infer as si
from secure_infer.backends.crypten.training import plaintext_sgd, train_mlp

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def breast_cancer() -> si.datasets.Dataset:
    return si.datasets.load_breast_cancer(seed=0)


@pytest.mark.parametrize("split, weights_to", [("labels", 1), ("rows", 0)])
def test_mpc_training_matches_plaintext(breast_cancer, split: str, weights_to: int) -> None:
    result = train_mlp(breast_cancer, split=split, epochs=2, batch_size=64, hidden=8, lr=0.2,
                       weights_to=weights_to)
    assert result.test_accuracy >= 0.85  # far above the 63% majority class
    assert abs(result.accuracy_gap) <= 2.0
    assert len(result.loss_curve) == 2 and result.loss_curve[1] < result.loss_curve[0]
    assert result.bytes_sent > 0 and result.rounds > 0 and len(result.per_party) == 2
    assert result.weights_to == weights_to


def test_plaintext_reference_is_deterministic(breast_cancer) -> None:
    a = plaintext_sgd(breast_cancer, hidden=8, epochs=1, lr=0.1, batch_size=64, seed=3)
    b = plaintext_sgd(breast_cancer, hidden=8, epochs=1, lr=0.1, batch_size=64, seed=3)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"split": "diagonal"}, "split"), ({"weights_to": 2}, "weights_to"), ({"lr": 0}, "lr")],
)
def test_bad_training_arguments(breast_cancer, kwargs, match) -> None:
    with pytest.raises(si.ParameterError, match=match):
        train_mlp(breast_cancer, **kwargs)
