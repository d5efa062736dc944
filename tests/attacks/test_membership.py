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


@pytest.mark.slow
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
    assert m["tpr_at_0.1pct_fpr"] == 1.0
    # higher score means "member": the same scores reversed are perfectly wrong, not perfect again
    reversed_m = attack_metrics(-labels, labels)
    assert reversed_m["auc"] == 0.0 and reversed_m["tpr_at_1pct_fpr"] == 0.0


def _tpr_at_low_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = 0.01) -> np.ndarray:
    """TPR at ``fpr`` for each row of ``is_member`` (one labelling per row), vectorised.

    At most ``floor(fpr * non-members)`` false alarms are allowed, so the best
    threshold sits just above the non-member score ranked one past that: the TPR
    is the share of members scoring strictly above it (ties would add a false alarm).
    """
    labels = np.atleast_2d(is_member).astype(bool)
    negatives = int((~labels[0]).sum())
    allowed = int(np.floor(fpr * negatives + 1e-9))
    neg_scores = np.sort(np.where(labels, -np.inf, scores[None, :]), axis=1)  # members pushed to the front
    cut = neg_scores[:, -(allowed + 1)]
    return ((scores[None, :] > cut[:, None]) & labels).sum(axis=1) / labels[0].sum()


@pytest.fixture(scope="module")
def attacker(victim, digits):
    """The attacker's own data (training examples that are not members) and shadows trained like the victim."""
    from secure_infer.attacks import ShadowModels, victim_trainer

    member_set = {tuple(row.tolist()) for row in victim[1].x_train.reshape(50, -1)}
    outside = torch.tensor([tuple(r.tolist()) not in member_set for r in digits.x_train.reshape(len(digits.x_train), -1)])
    pool = (digits.x_train[outside], digits.y_train[outside])
    return ShadowModels.train(pool, victim_trainer(digits), count=3, size=50, seed=1)


@pytest.mark.slow
def test_shadow_and_lira_attacks_beat_chance(victim, digits, attacker) -> None:
    from secure_infer.attacks import lira_offline, shadow_model_attack

    model, members = victim
    non_members = (digits.x_test[:100], digits.y_test[:100])
    shadow = shadow_model_attack(model, (members.x_train, members.y_train), non_members, attacker)
    lira = lira_offline(model, (members.x_train, members.y_train), non_members, attacker)
    assert shadow.auc > 0.7 and lira.auc > 0.7  # measured 0.84 / 0.84 with 8 shadows
    # LiRA's point: some members found with almost no false alarms. With 50 members and 100
    # non-members, scores that know nothing exceed a fixed 0.02 about a quarter of the time, so
    # the bar is the same metric on the same scores with the member labels shuffled.
    assert _tpr_at_low_fpr(lira.scores, lira.is_member)[0] == lira.tpr_at_1pct_fpr  # the fast metric is attack_metrics'
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(lira.is_member) for _ in range(2000)])
    null = _tpr_at_low_fpr(lira.scores, shuffled)
    p_value = (1 + int((null >= lira.tpr_at_1pct_fpr).sum())) / (1 + len(null))
    # measured: 0.32 against a 99.9% null quantile of 0.14; p = 1/2001
    assert lira.tpr_at_1pct_fpr > np.quantile(null, 0.999) and p_value < 0.005, (lira.tpr_at_1pct_fpr, p_value)


def test_shadow_attack_is_at_chance_on_a_model_that_never_saw_the_members(digits, attacker) -> None:
    from secure_infer.attacks import shadow_model_attack, victim_trainer

    fresh = victim_trainer(digits)(digits.x_test[200:250], digits.y_test[200:250], 5)  # trained on other data
    fake_members = (digits.x_test[:50], digits.y_test[:50])
    result = shadow_model_attack(fresh, fake_members, (digits.x_test[50:100], digits.y_test[50:100]), attacker)
    assert abs(result.auc - 0.5) < 0.15


def test_dp_training_lowers_membership_auc_at_a_reported_cost(victim, digits) -> None:
    from secure_infer.attacks.dp import train_dp

    model, members = victim
    non_members = (digits.x_test[:100], digits.y_test[:100])
    plain = loss_threshold_attack(model, (members.x_train, members.y_train), non_members)
    private = train_dp(digits, members.x_train, members.y_train, target_epsilon=1.0, epochs=30)
    dp = loss_threshold_attack(private.model, (members.x_train, members.y_train), non_members)
    assert private.epsilon <= 1.0 + 1e-6 and private.noise_multiplier > 1.0  # the accountant's figure
    assert dp.auc < plain.auc - 0.1
    assert si.zoo.accuracy(private.model, digits.x_test, digits.y_test) < si.zoo.accuracy(model, digits.x_test, digits.y_test)
