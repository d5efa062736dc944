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
    assert "ReLU" in types  # functional calls became canonical nodes
    assert "BatchNorm2d" not in types and "Dropout" not in types
    assert [n.op for n in g.epilogue] == ["log_softmax"]  # the trailing log_softmax runs at the client
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


# -- one op per operation, whatever the spelling ---------------------------------------------


def _ops(model: nn.Module, x: torch.Tensor) -> list[str]:
    g = trace(model.eval(), x[:1])
    with torch.no_grad():
        assert torch.allclose(g.run(x), model(x), atol=1e-5)
    return [n.op for n in g.layers()]


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


SQUARES = [lambda x: x * x, lambda x: x**2, lambda x: x.pow(2), lambda x: torch.square(x), lambda x: x.square(),
           lambda x: torch.pow(x, 2), lambda x: torch.mul(x, x)]
RELUS = [F.relu, torch.relu, lambda x: x.relu(), lambda x: F.relu(x, inplace=True), nn.ReLU(), nn.ReLU(inplace=True)]
FLATTENS = [lambda x: x.view(x.size(0), -1), lambda x: x.reshape(x.shape[0], -1), lambda x: torch.flatten(x, 1),
            lambda x: x.flatten(1), nn.Flatten(), lambda x: x.view(-1, 8)]
ADDS = [lambda x: x + x.tanh(), lambda x: torch.add(x, x.tanh()), lambda x: x.add(x.tanh())]


@pytest.mark.parametrize("fn", SQUARES)
def test_every_square_is_one_square_node(fn) -> None:
    assert _ops(Lambda(fn), torch.randn(3, 4)) == ["square"]


@pytest.mark.parametrize("fn", RELUS)
def test_every_relu_is_one_relu_node(fn) -> None:
    assert _ops(fn if isinstance(fn, nn.Module) else Lambda(fn), torch.randn(3, 4)) == ["relu"]


@pytest.mark.parametrize("fn", FLATTENS)
def test_every_flatten_is_one_reshape(fn) -> None:
    assert _ops(fn if isinstance(fn, nn.Module) else Lambda(fn), torch.randn(3, 2, 2, 2)) == ["reshape"]


@pytest.mark.parametrize("fn", ADDS)
def test_every_add_is_one_add(fn) -> None:
    assert _ops(Lambda(fn), torch.randn(3, 4)) == ["tanh", "add"]


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2), nn.MaxPool2d((2, 2)), nn.MaxPool2d(kernel_size=2, stride=2), Lambda(lambda x: F.max_pool2d(x, 2)),
    Lambda(lambda x: F.max_pool2d(x, (2, 2))), Lambda(lambda x: F.max_pool2d(x, kernel_size=2, stride=(2, 2))),
])
def test_max_pool_spellings_are_one_node_with_tuple_settings(pool: nn.Module) -> None:
    g = trace(pool.eval(), torch.randn(1, 2, 6, 6))
    (node,) = g.layers()
    assert node.op == "max_pool" and node.module.kernel_size == (2, 2) and node.module.stride == (2, 2)


@pytest.mark.parametrize("pool, op", [
    (nn.AvgPool1d(2), "avg_pool"), (Lambda(lambda x: F.avg_pool1d(x, 2)), "avg_pool"),
    (nn.MaxPool1d(3, stride=1), "max_pool"), (nn.AdaptiveAvgPool1d(1), "mean"),
    (nn.AdaptiveAvgPool1d(3), "avg_pool"), (nn.AdaptiveAvgPool1d(4), "adaptive_avg_pool"),
])
def test_one_d_pools_share_the_ops_of_two_d_pools(pool: nn.Module, op: str) -> None:
    assert _ops(pool, torch.randn(3, 2, 6)) == [op]


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(2), nn.AdaptiveAvgPool2d((2, 2)),
                                  Lambda(lambda x: F.adaptive_avg_pool2d(x, 2)), nn.AvgPool2d(3)])
def test_adaptive_pools_with_an_int_size_become_plain_pools(pool: nn.Module) -> None:
    assert _ops(pool, torch.randn(3, 2, 6, 6)) == ["avg_pool"]


@pytest.mark.parametrize("fn", [lambda x: x.mean((2, 3)), lambda x: x.mean(dim=[-1, -2], keepdim=True),
                                lambda x: torch.mean(x, (2, 3)), nn.AdaptiveAvgPool2d(1),
                                lambda x: F.adaptive_avg_pool2d(x, (1, 1))])
def test_global_average_pooling_is_a_mean(fn) -> None:
    assert _ops(fn if isinstance(fn, nn.Module) else Lambda(fn), torch.randn(3, 2, 4, 4)) == ["mean"]


def test_numbers_in_the_code_are_public_settings_and_tensors_are_constants() -> None:
    class Affine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.gamma * (x / 2.0 + 1.0) - 3) * 0.5

    g = trace(Affine(), torch.randn(1, 4))
    ops = [n.op for n in g.layers()]
    assert ops.count("constant") == 1 and ops.count("mul") == 1 and "scale_shift" in ops
    constant = next(n for n in g.layers() if n.op == "constant")
    assert constant.batch_dim is None and constant.module.value.shape == (4,)  # model data, broadcast


def test_attention_in_every_spelling_traces_to_matmul_and_softmax() -> None:
    torch.manual_seed(0)

    class Library(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    class Hand(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
            return ((q @ k.transpose(-2, -1)) * (c // 2) ** -0.5).softmax(dim=-1) @ v

    x = torch.randn(3, 5, 8)
    for model in (Library(), Hand(),
                  Lambda(lambda t: F.scaled_dot_product_attention(t, t, t))):
        ops = _ops(model, x)
        assert ops.count("matmul") == 2 and "softmax" in ops and "module" not in ops


def test_a_permute_may_move_the_batch_dimension_and_back() -> None:
    g = trace(Lambda(lambda x: x.unsqueeze(0).permute(1, 0, 2)[:, 0] * 2), torch.randn(1, 4))
    assert any(n.batch_dim == 1 for n in g.nodes)


def test_trailing_softmax_log_softmax_sigmoid_argmax_become_the_epilogue() -> None:
    for head, op in ((nn.Softmax(dim=1), "softmax"), (nn.LogSoftmax(dim=-1), "log_softmax"),
                     (nn.Sigmoid(), "sigmoid"), (Lambda(lambda x: x.argmax(dim=1)), "argmax")):
        model = nn.Sequential(nn.Linear(4, 3), head).eval()
        g = trace(model, torch.randn(1, 4))
        assert [n.op for n in g.epilogue] == [op] and [n.op for n in g.layers()] == ["linear"]
        x = torch.randn(5, 4)
        assert torch.equal(g.run(x), model(x)) or torch.allclose(g.run(x), model(x), atol=1e-6)
        assert any(c.kind == "epilogue" for c in g.conversions)
    # a softmax inside the model stays where it is
    inner = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1), nn.Linear(3, 2)).eval()
    assert not trace(inner, torch.randn(1, 4)).epilogue


def test_embeddings_of_integer_input_become_a_one_hot_prologue() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).eval()
    tokens = torch.randint(0, 10, (5, 3))
    g = trace(model, tokens[:1])
    assert g.one_hot == 10 and g.input_shape == (1, 3, 10)
    assert [n.op for n in g.layers()][0] == "linear"
    assert torch.allclose(g.run(tokens), model(tokens), atol=1e-6)
    with pytest.raises(UnsupportedModelError, match="embedding"):
        trace(Lambda(lambda t: t.float() * 2), tokens[:1])


@pytest.mark.parametrize("fn, match", [
    (lambda x: x.mean(), "batch"),
    (lambda x: x.view(-1), "batch"),
    (lambda x: x / x.sum(1, keepdim=True), "division"),
    (lambda x: x[0], "batch"),
    (lambda x: torch.exp(x), "exp"),
    (lambda x: torch.einsum("bi,bj->bij", x, x), "einsum"),
    (lambda x: x ** 0.5, "integer powers"),
    (lambda x: x[x > 0], "indexing"),
])
def test_what_the_ir_cannot_express_is_refused_naming_it(fn, match: str) -> None:
    with pytest.raises(UnsupportedModelError, match=match):
        trace(Lambda(fn), torch.randn(2, 4))


def test_a_model_that_needs_batch_size_one_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="batch size"):
        trace(Lambda(lambda x: x.view(1, -1)), torch.randn(1, 4))
