"""Gradient inversion: one client's update gives its images away; a sum over ten does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from secure_infer import zoo
from secure_infer._errors import ParameterError
from secure_infer.attacks import (
    GradientInversionResult,
    client_gradient,
    gradient_inversion_attack,
    invert_gradient,
    match_images,
    psnr,
    reconstruction_grid,
    recover_labels,
)

DIGIT = (1, 8, 8)


@pytest.fixture(scope="module")
def untrained_mlp() -> nn.Module:
    """The default FL model as the first round sends it: the zoo MLP, untrained (seed 3)."""
    return zoo.build("mlp", DIGIT, 10, seed=3)


def test_client_gradient_is_the_cross_entropy_gradient_and_leaves_the_model_alone(
    untrained_mlp, digits
) -> None:
    x, y = digits.x_train[:5], digits.y_train[:5]
    gradient = client_gradient(untrained_mlp, x, y)
    assert all(p.grad is None for p in untrained_mlp.parameters())
    nn.functional.cross_entropy(untrained_mlp(x), y).backward()
    for g, p in zip(gradient, untrained_mlp.parameters(), strict=True):
        assert p.grad is not None and torch.allclose(g, p.grad, atol=1e-7)
        p.grad = None


@pytest.mark.parametrize("method", ["dlg", "cosine"])
@pytest.mark.parametrize("trained", [False, True], ids=["untrained", "trained"])
def test_one_clients_update_reveals_its_image(
    method, trained, untrained_mlp, trained_zoo, digits
) -> None:
    """Batch 1, zoo MLP: the reconstruction is the image (measured SSIM ~1.0; the bar is 0.5)."""
    model = trained_zoo["mlp"].model if trained else untrained_mlp
    x, y = digits.x_test[7:8], digits.y_test[7:8]
    result = gradient_inversion_attack(model, x, y, method=method, reference=digits.x_train[:200])
    assert result.clients_in_view == 1 and result.batch_size == 1 and result.reconstructed == 1
    assert result.mean_ssim >= 0.5, result
    assert result.mean_ssim > result.chance_ssim + 0.3
    assert result.mean_psnr > 15.0  # dB; a random digit scores ~6
    assert result.label_accuracy == 1.0  # iDLG: the one negative bias gradient entry
    assert result.images.shape == result.truth.shape == (1, *DIGIT)
    assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0


def test_labels_come_from_the_last_layer(untrained_mlp, trained_zoo, digits) -> None:
    x, y = digits.x_test[:1], digits.y_test[:1]
    trained = trained_zoo["mlp"].model
    assert (
        recover_labels(
            trained, client_gradient(trained, x, y), batch_size=1, num_classes=10
        ).tolist()
        == y.tolist()
    )
    x, y = digits.x_test[10:14], digits.y_test[10:14]
    got = recover_labels(
        untrained_mlp, client_gradient(untrained_mlp, x, y), batch_size=4, num_classes=10
    )
    assert got is not None and sorted(got.tolist()) == sorted(y.tolist())
    assert (
        recover_labels(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 5)),
            [torch.zeros(5, 64), torch.zeros(5)],
            batch_size=2,
            num_classes=10,
        )
        is None
    )  # no 10-way linear layer: nothing to read


@pytest.mark.slow
def test_a_batch_of_four_is_recovered_with_its_labels(untrained_mlp, digits) -> None:
    """Batch 4, untrained MLP: SSIM ~1.0 (a trained MLP gets ~0.5, labels 50-60%: reported only)."""
    x, y = digits.x_test[20:24], digits.y_test[20:24]
    result = gradient_inversion_attack(
        untrained_mlp, x, y, method="cosine", reference=digits.x_train[:200]
    )
    assert result.batch_size == 4 and len(result.ssim) == len(result.psnr) == 4
    assert result.label_accuracy == 1.0
    assert result.mean_ssim >= 0.8, result
    assert result.mean_ssim > result.chance_ssim + 0.3
    # the images come back in the truth's order: each is closest to its own true image
    for i in range(4):
        assert (
            max(range(4), key=lambda j: float(-((result.images[i] - result.truth[j]) ** 2).sum()))
            == i
        )


@pytest.mark.slow
def test_without_a_readable_last_layer_labels_are_optimised_jointly(digits) -> None:
    """DLG's original joint label optimisation, for a model whose logits come from a convolution."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 10, kernel_size=8), nn.Flatten())
    x, y = digits.x_test[3:4], digits.y_test[3:4]
    gradient = client_gradient(model, x, y)
    assert recover_labels(model, gradient, batch_size=1, num_classes=10) is None
    rec = invert_gradient(
        model, gradient, batch_size=1, input_shape=DIGIT, num_classes=10, method="dlg"
    )
    assert rec.labels_from == "optimised" and rec.labels.tolist() == y.tolist()
    assert match_images(rec.images, x).mean_ssim >= 0.5  # measured 1.0


@pytest.mark.slow
def test_the_sum_over_ten_clients_drops_to_chance(untrained_mlp, digits) -> None:
    """Secure aggregation's view: the target's image is lost (measured SSIM ~0.1, chance ~0.3)."""
    single, summed, chance = [], [], []
    for t in range(2):
        x, y = digits.x_test[30 + t : 31 + t], digits.y_test[30 + t : 31 + t]
        others = [
            (
                digits.x_test[40 + 10 * t + k : 41 + 10 * t + k],
                digits.y_test[40 + 10 * t + k : 41 + 10 * t + k],
            )
            for k in range(9)
        ]
        single.append(gradient_inversion_attack(untrained_mlp, x, y, method="dlg").mean_ssim)
        result = gradient_inversion_attack(
            untrained_mlp, x, y, others=others, method="dlg", reference=digits.x_train[:300], seed=t
        )
        assert result.clients_in_view == 10 and result.reconstructed == 1
        summed.append(result.mean_ssim)
        chance.append(result.chance_ssim)
    assert np.mean(single) >= 0.9
    assert np.mean(summed) < np.mean(chance) + 0.15, (summed, chance)
    assert np.mean(summed) < np.mean(single) - 0.4


def test_match_images_undoes_the_batch_order_and_scores_psnr(digits) -> None:
    truth = digits.x_test[:4]
    match = match_images(truth[[2, 0, 3, 1]], truth)
    assert match.order == (1, 3, 0, 2)
    assert match.ssim == pytest.approx((1.0,) * 4) and all(p == float("inf") for p in match.psnr)
    noisy = (
        truth + 0.1 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    ).clamp(0, 1)
    assert 15.0 < match_images(noisy, truth).mean_psnr < 30.0
    assert psnr(np.zeros((8, 8)), np.full((8, 8), 0.1)) == pytest.approx(20.0)


def test_bad_input_is_refused_with_what_to_do(untrained_mlp, digits) -> None:
    x, y = digits.x_test[:2], digits.y_test[:2]
    gradient = client_gradient(untrained_mlp, x, y)
    common = {"batch_size": 2, "input_shape": DIGIT, "num_classes": 10}
    with pytest.raises(ParameterError, match="method"):
        invert_gradient(untrained_mlp, gradient, method="gauss", **common)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="model.parameters"):
        invert_gradient(untrained_mlp, gradient[:-1], **common)
    with pytest.raises(ParameterError, match=r"gradient\[0\]"):
        invert_gradient(untrained_mlp, [gradient[0][:, :10], *gradient[1:]], **common)
    with pytest.raises(ParameterError, match="labels"):
        invert_gradient(untrained_mlp, gradient, labels=y[:1], **common)
    with pytest.raises(ParameterError, match="one label per input"):
        gradient_inversion_attack(untrained_mlp, x, y[:1])
    with pytest.raises(ParameterError, match="one label per input"):
        client_gradient(untrained_mlp, x, y[:1])
    with pytest.raises(ParameterError, match="reconstruct"):
        gradient_inversion_attack(untrained_mlp, x, y, reconstruct=1)
    with pytest.raises(ParameterError, match="at least as many"):
        match_images(x[:1], x)


def test_reconstruction_grid_writes_a_png(tmp_path, digits) -> None:
    truth = digits.x_test[:3]
    results = [
        GradientInversionResult(
            method="dlg",
            batch_size=3,
            clients_in_view=k,
            reconstructed=3,
            ssim=(0.9,) * 3,
            psnr=(20.0,) * 3,
            label_accuracy=1.0,
            chance_ssim=0.3,
            seconds=1.0,
            loss=0.0,
            images=truth.flip(-1),
            truth=truth,
        )
        for k in (1, 10)
    ]
    path = reconstruction_grid(results, tmp_path / "grid" / "inversion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
    with pytest.raises(ParameterError, match="results"):
        reconstruction_grid([], tmp_path / "empty.png")


def test_dp_clipping_and_noise_take_the_image_out_of_the_update(untrained_mlp, digits) -> None:
    """DP-FedAvg's treatment of one update: clipping alone leaves the image (direction survives);
    noise at a DP level (z = 1) leaves nothing closer than chance."""
    x, y = digits.x_test[3:4], digits.y_test[3:4]
    clipped = gradient_inversion_attack(untrained_mlp, x, y, clip_norm=0.5, reference=digits.x_train[:200])
    noised = gradient_inversion_attack(untrained_mlp, x, y, clip_norm=0.5, noise_std=0.5,
                                       reference=digits.x_train[:200])
    assert clipped.mean_ssim >= 0.5 and "clipped to 0.5" in clipped.view
    assert noised.mean_ssim < noised.chance_ssim + 0.15 < clipped.mean_ssim
    assert noised.noise_std == 0.5 and "DP noise std 0.5" in noised.view
    with pytest.raises(ParameterError, match="noise_std must be >= 0"):
        gradient_inversion_attack(untrained_mlp, x, y, noise_std=-1.0)
