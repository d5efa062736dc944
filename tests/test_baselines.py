from __future__ import annotations

import pytest
import torch

from secure_infer import baselines
from secure_infer._errors import ParameterError


def test_cpu_baseline_measures(trained_zoo, digits) -> None:
    model = trained_zoo["mlp"].model
    r = baselines.time_plaintext(model, digits.x_test[:16], repeats=5)
    assert r.measured and r.batch_size == 16 and r.repeats >= 5
    assert 0 < r.p50_s <= r.p95_s
    assert r.throughput == pytest.approx(16 / r.p50_s)


def test_baseline_does_not_touch_callers_model(trained_zoo, digits) -> None:
    model = trained_zoo["logreg"].model
    before = [p.clone() for p in model.parameters()]
    baselines.time_plaintext(model, digits.x_test[:4], repeats=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA report")
def test_gpu_baseline_says_not_measured_without_cuda(trained_zoo, digits) -> None:
    r = baselines.time_plaintext(trained_zoo["mlp"].model, digits.x_test[:4], device="cuda")
    assert not r.measured and r.p50_s is None and "CUDA" in r.reason
    assert r.describe().startswith("not measured")


@pytest.mark.gpu
def test_gpu_baseline_measures_with_cuda(trained_zoo, digits) -> None:
    r = baselines.time_plaintext(trained_zoo["mlp"].model, digits.x_test[:64], device="cuda")
    assert r.measured and r.device_name


def test_bad_device_is_rejected(trained_zoo, digits) -> None:
    with pytest.raises(ParameterError, match="device"):
        baselines.time_plaintext(trained_zoo["mlp"].model, digits.x_test[:1], device="tpu")
