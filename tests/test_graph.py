"""The front end: tracing, normalisation, exact folding, clear refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secure_infer import zoo
from secure_infer._errors import ParameterError, UnsupportedModelError
from secure_infer.graph import trace


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv1(x)))
        h = torch.cat([h, self.conv2(h) + h], dim=1)
        h = self.drop(h)
        return F.log_softmax(self.fc(h.view(h.size(0), -1)), dim=1)


@pytest.fixture()
def residual() -> nn.Module:
    torch.manual_seed(0)
    m = Residual()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def test_trace_normalises_and_matches_model(residual: nn.Module) -> None:
    x = torch.randn(3, 1, 8, 8)
    g = trace(residual, x[:1])
    ops = [n.op for n in g.nodes]
    assert ops[0] == "input" and ops[-1] == "output"
    assert {"add", "cat", "reshape"} <= set(ops)
    types = {type(n.module).__name__ for n in g.nodes if n.module is not None}
    assert "ReLU" in types and "LogSoftmax" in types  # functional calls became modules
    assert "BatchNorm2d" not in types and "Dropout" not in types
    assert torch.allclose(g.run(x), residual(x), atol=1e-5)


def test_folding_is_reported(residual: nn.Module) -> None:
    g = trace(residual, torch.randn(1, 1, 8, 8))
    kinds = {(c.path, c.kind) for c in g.conversions}
    assert ("bn", "folded") in kinds and ("drop", "removed") in kinds


def test_trace_leaves_the_model_untouched(residual: nn.Module) -> None:
    before = {k: v.clone() for k, v in residual.state_dict().items()}
    residual.train()
    trace(residual, torch.randn(1, 1, 8, 8))
    assert residual.training
    assert all(torch.equal(before[k], v) for k, v in residual.state_dict().items())


def test_zoo_models_trace_exactly() -> None:
    x = torch.rand(4, 1, 8, 8)
    for name in zoo.available():
        model = zoo.build(name, (1, 8, 8), 10).eval()
        assert torch.allclose(trace(model, x[:1]).run(x), model(x), atol=1e-6), name


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class UsesExp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def test_untraceable_model_gets_clear_error() -> None:
    with pytest.raises(UnsupportedModelError, match="control flow"):
        trace(DataDependent(), torch.randn(1, 4))


def test_unknown_function_names_where() -> None:
    with pytest.raises(UnsupportedModelError, match="exp"):
        trace(UsesExp(), torch.randn(1, 4))


@pytest.mark.parametrize(
    "bad, match",
    [(torch.randn(4), "batch dimension"), (torch.ones(1, 4, dtype=torch.int64), "float"), ([1.0], "float")],
)
def test_bad_sample_input(bad: object, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        trace(nn.Linear(4, 2), bad)  # type: ignore[arg-type]


def test_model_that_rejects_sample_shape() -> None:
    with pytest.raises(ParameterError, match="does not accept"):
        trace(nn.Linear(4, 2), torch.randn(1, 5))
