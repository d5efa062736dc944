"""What the server sees: the plaintext input gives the label away; ciphertexts and shares do not."""

from __future__ import annotations

import pytest

from secure_infer.attacks.input_privacy import (
    attack_view,
    ciphertext_view,
    plaintext_view,
    share_view,
)


@pytest.fixture(scope="module")
def clients(digits):
    x, y = digits.x_test[:240], digits.y_test[:240].numpy()
    return x, y, x.reshape(len(x), -1).numpy()


def test_plaintext_view_reveals_the_label(clients) -> None:
    x, y, inputs = clients
    result = attack_view("plaintext", plaintext_view(x), y, inputs)
    assert result.accuracy > 0.8 and result.z_above_chance > 10 and result.reconstruction_r2 > 0.95


def test_ciphertexts_are_at_chance(clients, trained_zoo, digits) -> None:
    x, y, inputs = clients
    result = attack_view("ciphertext", ciphertext_view(trained_zoo["logreg"].model, x, digits.x_train[:1]), y, inputs)
    assert result.z_above_chance < 4 and result.reconstruction_r2 < 0.1  # 4 standard errors: not a flaky bound


@pytest.mark.multiprocess
def test_mpc_shares_are_at_chance(clients) -> None:
    x, y, inputs = clients
    result = attack_view("shares", share_view(x), y, inputs)  # fresh random shares on every run
    assert result.z_above_chance < 4 and result.reconstruction_r2 < 0.1
