from __future__ import annotations

import pytest
import torch
from torch import nn

import secure_infer as si
from secure_infer import rewrites
from secure_infer.graph import GraphModule, trace
from secure_infer.layers import AvgPool, MaxPool


def test_pool_before_relu_is_exact_for_maxpool(trained_zoo, digits) -> None:
    model = trained_zoo["lenet"].model
    x = digits.x_test[:32]
    result = rewrites.rewrite_model(model, x[:1], ["pool-before-relu"])
    assert [c.kind for c in result.changes] == ["reordered", "reordered"]
    assert all(c.max_abs_error == 0.0 for c in result.changes)
    assert torch.allclose(result.model(x), model(x), atol=1e-6)
    # ReLUs now follow the pools
    kinds = [type(n.module).__name__ for n in result.model.graph.nodes if n.module is not None]
    assert kinds[:3] == ["Conv2d", "MaxPool", "ReLU"]


def test_maxpool_to_avgpool_is_reported_and_fine_tunable(trained_zoo, digits) -> None:
    model = trained_zoo["lenet"].model
    result = rewrites.rewrite_model(model, digits.x_test[:1], ["maxpool-to-avgpool"])
    assert {c.kind for c in result.changes} == {"replaced"}
    assert all(c.max_abs_error is not None and c.max_abs_error > 0 for c in result.changes)
    assert not any(isinstance(m, MaxPool) for m in result.model.modules())
    assert any(isinstance(m, AvgPool) for m in result.model.modules())
    before = si.zoo.accuracy(result.model, digits.x_test, digits.y_test)
    rewrites.fine_tune(result.model, digits, epochs=10)
    after = si.zoo.accuracy(result.model, digits.x_test, digits.y_test)
    assert after > max(before, 0.9)
    # the original is untouched
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_graph_module_traces_back_to_the_same_graph(trained_zoo, digits) -> None:
    model = trained_zoo["lenet"].model
    gm = GraphModule(trace(model, digits.x_test[:1]))
    again = trace(gm, digits.x_test[:1])
    assert [n.op for n in again.nodes] == [n.op for n in trace(model, digits.x_test[:1]).nodes]
    assert torch.allclose(again.run(digits.x_test[:4]), model(digits.x_test[:4]), atol=1e-6)


def test_wrap_lists_rewrites(trained_zoo, digits) -> None:
    model = trained_zoo["lenet"].model
    x = digits.x_test[:8]
    with si.wrap(model, "crypten", sample_input=x[:1], parties=1, rewrites=["pool-before-relu"]) as enc:
        y = enc(x, compare=True)
        report = enc.report()
    assert sum(c.kind == "reordered" for c in report.conversions) == 2
    assert torch.equal(y.argmax(1), model(x).argmax(1))


def test_unknown_rewrite() -> None:
    with pytest.raises(si.ParameterError, match="maxpool-to-avgpool"):
        rewrites.rewrite_model(nn.Linear(2, 2), torch.randn(1, 2), ["fast-please"])
