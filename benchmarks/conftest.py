"""Shared fixtures for the benchmark suites (run: python -m pytest benchmarks/)."""

from __future__ import annotations

import pytest

from secure_infer import datasets, zoo


@pytest.fixture(scope="session")
def digits() -> datasets.Dataset:
    return datasets.load_digits(seed=0)


@pytest.fixture(scope="session")
def digits_lenet(digits: datasets.Dataset) -> zoo.ZooModel:
    return zoo.pretrained("lenet", digits, seed=0)
