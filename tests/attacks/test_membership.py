"""Membership inference beats chance on an overfit victim, and only there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import secure_infer as si
from secure_infer.attacks import attack_metrics, loss_threshold_attack, overfit_victim


@pytest.fixture(scope="module")
def victim(digits):
    return overfit_victim(digits, members=50, epochs=300)


def test_loss_attack_finds_members_of_an_overfit_model(victim, digits) -> None:
    model, members = victim
    non_members = (digits.x_test[:50], digits.y_test[:50])
    result = loss_threshold_attack(model, (members.x_train, members.y_train), non_members)
    assert result.auc > 0.7 and result.balanced_accuracy > 0.7  # measured 0.80 / 0.83
    assert result.members == result.non_members == 50


def test_same_attack_through_encrypted_serving(victim, digits) -> None:
    """Encrypting the inputs does not hide the outputs: the attack works the same."""
    model, members = victim
    non_members = (digits.x_test[:50], digits.y_test[:50])
    plain = loss_threshold_attack(model, (members.x_train, members.y_train), non_members)
    with si.wrap(model, "crypten", sample_input=digits.x_test[:1], parties=1) as enc:
        encrypted = loss_threshold_attack(enc, (members.x_train, members.y_train), non_members)
    assert abs(encrypted.auc - plain.auc) < 0.02


def test_an_uninformative_score_is_at_chance() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(2000), np.zeros(2000)]
    m = attack_metrics(rng.random(4000), labels)
    assert abs(m["auc"] - 0.5) < 0.03 and m["tpr_at_0.1pct_fpr"] < 0.02


def test_a_perfect_score_is_perfect() -> None:
    labels = np.r_[np.ones(50), np.zeros(50)]
    m = attack_metrics(labels + 0.0, labels)
    assert m["auc"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["tpr_at_1pct_fpr"] == 1.0
    assert torch.is_tensor(torch.tensor(m["auc"]))
