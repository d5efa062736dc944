"""Inversion: reconstructions look like their class, and not like the other classes."""

from __future__ import annotations

import numpy as np

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
    noise = rng.random((8, 8))
    assert ssim(image, noise) < 0.5
    assert ssim(image, noise) == ssim(noise, image)  # a similarity: symmetric
    # more noise, less similar; and an inverted image is anti-similar (structure term negative)
    mild, strong = (np.clip(image + s * rng.standard_normal((8, 8)), 0, 1) for s in (0.05, 0.3))
    assert 1.0 > ssim(image, mild) > ssim(image, strong) > 0.0 > ssim(image, 1.0 - image)


def test_ssim_of_flat_images_is_the_luminance_term() -> None:
    """Constant images have no variance or covariance: SSIM reduces to (2ab + C1) / (a^2 + b^2 + C1)."""
    c1 = (0.01 * 1.0) ** 2  # Wang et al.'s K1 = 0.01 at data_range 1
    a, b = 0.2, 0.6
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert abs(ssim(np.full((8, 8), a), np.full((8, 8), b)) - expected) < 1e-12
    assert abs(ssim(np.full((8, 8), 2 * a), np.full((8, 8), 2 * b), data_range=2.0) - expected) < 1e-12
