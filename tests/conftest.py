"""Shared, seeded fixtures: data sets and small trained models, built once per session."""

from __future__ import annotations

import pytest
import torch

from secure_infer import datasets, zoo


@pytest.fixture(scope="session")
def digits() -> datasets.Dataset:
    return datasets.load_digits(seed=0)


@pytest.fixture(scope="session")
def trained_zoo(digits: datasets.Dataset) -> dict[str, zoo.ZooModel]:
    torch.manual_seed(0)
    return {name: zoo.pretrained(name, digits, seed=0) for name in zoo.available()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
