"""Every listed layer agrees with plaintext under CrypTen.

Run in the in-process simulation (parties=1): the arithmetic is the same as
with real parties, which test_crypten_parties.py covers separately.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import secure_infer as si
from secure_infer import zoo
from secure_infer.layers import PolyActivation


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.a(x)) + self.b(x)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), torch.tanh(self.b(x))], dim=1)


def _bn(features: int, two_d: bool) -> nn.Module:
    bn = nn.BatchNorm2d(features) if two_d else nn.BatchNorm1d(features)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


class Attention(nn.Module):
    """Hand-written multi-head self-attention, the timm way (the batch dimension moves and comes back)."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Library(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mha(x, x, x, need_weights=False)[0])


class ClassToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.pos = nn.Parameter(torch.randn(1, 4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return x[:, 0] * 2.0 - x.mean(dim=1)


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x).mean(dim=1))


# (id, model, input shape, tolerance)
CASES = [
    ("linear", lambda: nn.Linear(6, 4), (6,), 5e-3),
    ("conv1d", lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 9), 5e-3),
    ("conv2d-stride-pad", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 7), 5e-3),
    ("conv2d-groups", lambda: nn.Conv2d(4, 4, 3, groups=2), (4, 6, 6), 5e-3),
    ("batchnorm-folded", lambda: nn.Sequential(nn.Conv2d(2, 3, 3), _bn(3, True)), (2, 6, 6), 5e-3),
    ("batchnorm-alone", lambda: nn.Sequential(nn.ReLU(), _bn(2, True)), (2, 4, 4), 5e-3),
    ("batchnorm1d", lambda: nn.Sequential(nn.Linear(6, 4), _bn(4, False)), (6,), 5e-3),
    ("relu", lambda: nn.Sequential(nn.Linear(6, 6), nn.ReLU()), (6,), 5e-3),
    ("sigmoid", lambda: nn.Sequential(nn.Linear(6, 6), nn.Sigmoid()), (6,), 2e-2),
    ("tanh", lambda: nn.Sequential(nn.Linear(6, 6), nn.Tanh()), (6,), 2e-2),
    ("softmax", lambda: nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=1)), (6,), 2e-2),
    ("log-softmax", lambda: nn.Sequential(nn.Linear(6, 4), nn.LogSoftmax(dim=1)), (6,), 5e-2),
    ("maxpool", lambda: nn.MaxPool2d(2), (2, 6, 6), 5e-3),
    ("avgpool", lambda: nn.AvgPool2d(2), (2, 6, 6), 5e-3),
    ("adaptive-avgpool", lambda: nn.AdaptiveAvgPool2d((2, 2)), (2, 6, 6), 5e-3),
    ("flatten", lambda: nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 2)), (2, 3, 3), 5e-3),
    ("dropout-identity", lambda: nn.Sequential(nn.Dropout(0.3), nn.Identity(), nn.Linear(6, 2)), (6,), 5e-3),
    ("square", lambda: nn.Sequential(nn.Linear(6, 4), zoo.Square()), (6,), 1e-2),
    ("residual-add", Residual, (2, 5, 5), 5e-3),
    ("concat", Concat, (6,), 2e-2),
    ("gelu", lambda: nn.Sequential(nn.Linear(6, 6), nn.GELU()), (6,), 1e-2),
    ("gelu-tanh", lambda: nn.Sequential(nn.Linear(6, 6), nn.GELU(approximate="tanh")), (6,), 1e-2),
    ("silu", lambda: nn.Sequential(nn.Linear(6, 6), nn.SiLU()), (6,), 1e-2),
    ("leaky-relu-relu6-hardswish", lambda: nn.Sequential(nn.Linear(6, 6), nn.LeakyReLU(0.1), nn.ReLU6(),
                                                         nn.Hardswish(), nn.Hardsigmoid()), (6,), 5e-3),
    ("elu-softplus-mish", lambda: nn.Sequential(nn.Linear(6, 6), nn.ELU(), nn.Softplus(), nn.Mish()), (6,), 3e-2),
    ("layernorm", lambda: nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6)), (3, 6), 2e-2),
    ("avgpool1d", lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.AvgPool1d(2)), (2, 9), 5e-3),
    ("maxpool1d", lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.MaxPool1d(2)), (2, 9), 5e-3),
    ("adaptive-avgpool-int", lambda: nn.AdaptiveAvgPool2d(2), (2, 6, 6), 5e-3),
    ("adaptive-avgpool-uneven", lambda: nn.AdaptiveAvgPool2d(4), (2, 6, 6), 5e-3),
    ("adaptive-avgpool1d", lambda: nn.AdaptiveAvgPool1d(4), (2, 7), 5e-3),
    ("attention-by-hand", Attention, (5, 8), 2e-2),
    ("multihead-attention-layernorm", Library, (5, 8), 3e-2),
    ("class-token-positional", ClassToken, (3, 6), 5e-3),
    ("polynomial", lambda: nn.Sequential(nn.Linear(6, 4), PolyActivation([0.1, 0.5, 0.2, -0.05])), (6,), 1e-2),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_agrees_with_plaintext(case) -> None:
    _, make, shape, tol = case
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(4, *shape)
    with si.wrap(model, "crypten", sample_input=x[:1], parties=1) as enc:
        y = enc(x, compare=True)
        assert y.shape == model(x).shape
        assert enc.last_run.max_abs_error is not None and enc.last_run.max_abs_error <= tol
        assert torch.allclose(y, model(x).detach(), atol=tol)


def test_zoo_models_agree(trained_zoo, digits, zoo_name: str) -> None:
    z = trained_zoo[zoo_name]
    x = digits.x_test[:32]
    with si.wrap(z.model, "crypten", sample_input=x[:1], parties=1) as enc:
        y = enc(x)
    plain = z.model(x).detach()
    agreement = float((y.argmax(1) == plain.argmax(1)).float().mean())
    assert agreement >= 31 / 32
    # fixed point with 16 bits: errors stay far below the logit scale
    assert float((y - plain).abs().median()) < 0.05


def test_report_lists_every_layer_and_measures_approximations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 6)
    with si.wrap(model, "crypten", sample_input=x[:1], parties=1) as enc:
        report = enc.report()
    kinds = {c.layer: c for c in report.conversions}
    assert kinds["BatchNorm1d"].kind == "folded"
    assert kinds["Sigmoid"].kind == "approximated"
    assert kinds["Sigmoid"].max_abs_error is not None and kinds["Sigmoid"].max_abs_error < 2e-2
    assert kinds["Linear"].kind == "exact"
    assert report.sample_max_abs_error is not None
    assert "SIMULATION" in str(report) and "Sigmoid" in str(report)


def test_token_indices_are_one_hot_encoded_by_the_data_owner() -> None:
    torch.manual_seed(0)
    model = Tokens().eval()
    tokens = torch.randint(0, 12, (4, 5))
    with si.wrap(model, "crypten", sample_input=tokens[:1], parties=1) as enc:
        y = enc(tokens, compare=True)
        assert enc.last_run.max_abs_error < 5e-3
        with pytest.raises(si.ParameterError, match=r"\[0, 12\)"):
            enc(torch.full((1, 5), 12))
    assert torch.allclose(y, model(tokens).detach(), atol=5e-3)


def test_a_trailing_log_softmax_runs_exactly_at_the_data_owner() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.LogSoftmax(dim=1)).eval()
    x = torch.randn(5, 6)
    with si.wrap(model, "crypten", sample_input=x[:1], parties=1) as enc:
        y = enc(x)
        kinds = {c.layer: c.kind for c in enc.report().conversions}
    assert kinds["LogSoftmax"] == "epilogue"
    assert torch.allclose(y.exp().sum(1), torch.ones(5), atol=1e-5)  # exact normalisation, no MPC approximation
    assert torch.equal(y.argmax(1), model(x).argmax(1))


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Conv2d(1, 1, 2, padding="same")), "padding='same'"),
        (nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")), "padding_mode"),
        (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), "ceil_mode"),
        (nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1)), "padding"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2)), "GroupNorm"),
    ],
)
def test_unsupported_layers_are_named(model: nn.Module, match: str) -> None:
    x = torch.randn(1, 1, 6, 6)
    report = si.check(model, "crypten", sample_input=x)
    assert not report.ok and report.problems
    with pytest.raises(si.UnsupportedModelError, match=match):
        si.wrap(model, "crypten", sample_input=x, parties=1)


def test_check_ok_model() -> None:
    report = si.check(zoo.build("lenet", (1, 8, 8), 10), "crypten", sample_input=torch.rand(1, 1, 8, 8))
    assert report.ok and not report.problems and "convertible" in str(report)


def test_bad_call_inputs_are_clear() -> None:
    model = nn.Linear(4, 2).eval()
    with si.wrap(model, "crypten", sample_input=torch.randn(1, 4), parties=1) as enc:
        with pytest.raises(si.ParameterError, match=r"\(batch, 4\)"):
            enc(torch.randn(2, 5))
        with pytest.raises(si.ParameterError, match="float"):
            enc(torch.ones(2, 4, dtype=torch.int64))
        with pytest.raises(si.ParameterError, match="NaN"):
            enc(torch.full((1, 4), float("nan")))


def test_bad_options_are_clear() -> None:
    model = nn.Linear(4, 2).eval()
    with pytest.raises(si.ParameterError, match="unknown option"):
        si.wrap(model, "crypten", sample_input=torch.randn(1, 4), partys=2)
    with pytest.raises(si.ParameterError, match="parties"):
        si.wrap(model, "crypten", sample_input=torch.randn(1, 4), parties=0)
    with pytest.raises(si.ParameterError, match="unknown backend"):
        si.wrap(model, "paillier", sample_input=torch.randn(1, 4))
