"""Shared, seeded fixtures: data sets and small trained models, built once per session."""

from __future__ import annotations

import pytest
import torch

from secure_infer import datasets, zoo


@pytest.fixture(scope="session")
def digits() -> datasets.Dataset:
    return datasets.load_digits(seed=0)


class _TrainedOnDemand(dict[str, zoo.ZooModel]):
    """Zoo models trained the first time a test asks for one: a test of the MLP never waits for the ViT."""

    def __init__(self, data: datasets.Dataset) -> None:
        super().__init__()
        self._data = data

    def __missing__(self, name: str) -> zoo.ZooModel:
        torch.manual_seed(0)
        self[name] = model = zoo.pretrained(name, self._data, seed=0)
        return model


@pytest.fixture(scope="session")
def trained_zoo(digits: datasets.Dataset) -> dict[str, zoo.ZooModel]:
    return _TrainedOnDemand(digits)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
