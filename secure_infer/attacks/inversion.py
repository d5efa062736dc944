"""Model inversion: reconstruct a class representative from the served confidences.

Fredrikson et al. (2015) recover a recognisable face for a name by gradient
descent on the input, maximising the model's confidence in that class. Here
the attacker has query access only (the same as against encrypted serving),
so the gradient is estimated from the answers by central finite differences:
``2 x input size`` queries per step, sent as one batch. Success is measured
against the true class mean of the training data: MSE and SSIM. Under a query
budget the ascent stops at the first refused step and keeps what it reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from secure_infer._errors import ProtocolError
from secure_infer.attacks.membership import Query, is_budget_refusal


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0, window: int = 3) -> float:
    """Mean structural similarity of two 2-D images (Wang et al. 2004), uniform ``window`` x ``window``."""
    from scipy.ndimage import uniform_filter

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return uniform_filter(z, size=window, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


@dataclass(frozen=True)
class InversionResult:
    """Reconstructions per class and their similarity to the class means."""

    images: np.ndarray = field(repr=False)  # (classes, H, W)
    class_means: np.ndarray = field(repr=False)
    mse: tuple[float, ...]
    ssim: tuple[float, ...]
    queries: int
    baseline_ssim: float  # SSIM of the mean of all training images to each class mean, averaged
    baseline_mse: float
    identified: float  # share of classes whose reconstruction is closest (MSE) to its own class mean; chance 1/classes

    @property
    def mean_mse(self) -> float:
        return float(np.mean(self.mse))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))


def invert_classes(query: Query, targets: list[int], shape: tuple[int, ...], *, steps: int = 30, lr: float = 0.02,
                   eps: float = 0.05, bounds: tuple[float, float] = (0.0, 1.0), start: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, int]:
    """Gradient ascent on log p(target | x) for each target, gradients from finite differences.

    Every step sends one batch: ``2 x input size`` probes per target, so an
    encrypted server evaluates all of them in one request. Each pixel moves by
    at most ``lr`` per step (normalised by the largest gradient entry).
    Returns the reconstructions ``(len(targets), *shape)`` and the queries used
    (fewer than ``steps`` steps' worth when a budget refuses a step: the
    reconstructions are then where the last answered step left them).
    """
    low, high = bounds
    first = start.reshape(-1).double() if start is not None else torch.full((math.prod(shape),), (low + high) / 2)
    x = first.double().repeat(len(targets), 1)  # (targets, d)
    d = x.shape[1]
    basis = torch.eye(d, dtype=torch.float64) * eps
    queries = 0
    for _ in range(steps):
        probes = torch.cat([torch.cat([row + basis, row - basis]) for row in x]).clamp(low, high)
        try:
            with torch.no_grad():
                out = torch.log_softmax(query(probes.reshape(len(probes), *shape).float()).double(), dim=1)
        except ProtocolError as exc:
            if is_budget_refusal(exc):
                break
            raise
        queries += len(probes)
        for t, target in enumerate(targets):
            block = out[t * 2 * d : (t + 1) * 2 * d, target]
            grad = (block[:d] - block[d:]) / (2 * eps)
            x[t] = (x[t] + lr * grad / (grad.abs().max() + 1e-12)).clamp(low, high)
    return x.reshape(len(targets), *shape).float(), queries


def inversion_attack(query: Query, x_train: torch.Tensor, y_train: torch.Tensor, *, classes: int,
                     steps: int = 30, lr: float = 0.02) -> InversionResult:
    """Invert every class and compare with the class means of ``x_train`` (images shaped (n, 1, H, W))."""
    shape = tuple(x_train.shape[1:])
    means = np.stack([x_train[y_train == c].mean(0).reshape(shape[-2:]).numpy() for c in range(classes)])
    overall = x_train.mean(0).reshape(shape[-2:]).numpy()
    bounds = (float(x_train.min()), float(x_train.max()))
    start = torch.from_numpy(overall).reshape(shape)  # the attacker knows what an average input looks like
    found, used = invert_classes(query, list(range(classes)), shape, steps=steps, lr=lr, bounds=bounds, start=start)
    images_arr = found.reshape(classes, *shape[-2:]).numpy()
    span = bounds[1] - bounds[0]
    return InversionResult(
        images=images_arr, class_means=means,
        mse=tuple(float(((i - m) ** 2).mean()) for i, m in zip(images_arr, means, strict=True)),
        ssim=tuple(ssim(i, m, data_range=span) for i, m in zip(images_arr, means, strict=True)),
        queries=used, baseline_ssim=float(np.mean([ssim(overall, m, data_range=span) for m in means])),
        baseline_mse=float(np.mean([((overall - m) ** 2).mean() for m in means])),
        identified=float(np.mean([np.argmin(((means - i) ** 2).mean(axis=(1, 2))) == c for c, i in enumerate(images_arr)])),
    )
