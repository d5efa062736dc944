"""Plaintext baselines in pytest-benchmark form: one group per model.

Encrypted backends add their benchmark to the same group, so
``--benchmark-compare`` reads as overhead against plaintext.
Run: ``python -m pytest benchmarks/ --benchmark-json=out.json``.
"""

from __future__ import annotations

import pytest
import torch

from secure_infer import datasets, zoo  # noqa: F401


@pytest.mark.parametrize("name", zoo.available())
@pytest.mark.parametrize("batch", [1, 64])
def test_plaintext_cpu(benchmark, digits: datasets.Dataset, name: str, batch: int) -> None:
    z = zoo.pretrained(name, digits, seed=0)
    x = digits.x_test[:batch]
    benchmark.group = f"{name}-b{batch}"
    benchmark.extra_info["test_accuracy"] = z.test_accuracy
    with torch.no_grad():
        out = benchmark(z.model, x)
    assert out.shape == (batch, digits.num_classes)
