"""Inversion: reconstructions look like their class, and not like the other classes."""

from __future__ import annotations

import numpy as np
import torch

from secure_infer.attacks import inversion_attack, ssim
from secure_infer.attacks.defences import label_only


def test_inversion_identifies_classes_from_confidences(trained_zoo, digits) -> None:
    result = inversion_attack(trained_zoo["mlp"].model, digits.x_train, digits.y_train, classes=10, steps=20)
    assert result.identified >= 0.6  # chance 0.1; measured 1.0
    assert result.mean_ssim > result.baseline_ssim and result.mean_mse < result.baseline_mse
    assert result.queries == 20 * 10 * 2 * 64


def test_label_only_outputs_starve_the_inversion(trained_zoo, digits) -> None:
    result = inversion_attack(label_only(trained_zoo["mlp"].model), digits.x_train, digits.y_train, classes=10,
                              steps=20)
    assert result.identified <= 0.3  # no gradient signal in a constant label


def test_ssim_is_one_for_identical_images_and_lower_for_noise() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((8, 8))
    assert abs(ssim(image, image) - 1.0) < 1e-9
    assert ssim(image, rng.random((8, 8))) < 0.5
    assert torch.is_tensor(torch.tensor(ssim(image, image)))
