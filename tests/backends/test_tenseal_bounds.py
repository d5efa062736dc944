"""TenSEAL soundness: polynomial activations fitted where every accepted input can take them, and a bound that holds.

The adversarial searches run on the compiled CKKS program computed in float64
(the same polynomials and weights, without CKKS noise), which is what the
approximation bound covers; the worst inputs found then run under real
encryption, where the reported worst-case error (approximation bound plus the
measured noise allowance) must hold too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import secure_infer as si
from secure_infer.backends.tenseal._compile import INPUT, AffineStage, Compiled
from secure_infer.backends.tenseal._poly import (
    Chebyshev,
    NumpyArithmetic,
    activation_fn,
    evaluate_series,
    fit,
)

pytestmark = pytest.mark.timeout(900)


def program_torch(compiled: Compiled, x: torch.Tensor) -> torch.Tensor:
    """The compiled program in differentiable float64 torch (for gradient search)."""
    values = {INPUT: x}
    for i, stage in enumerate(compiled.stages):
        if isinstance(stage, AffineStage):
            values[i] = sum(values[k] @ torch.from_numpy(b).T for k, b in zip(stage.inputs, stage.blocks, strict=True)) \
                + torch.from_numpy(stage.bias)
        elif stage.fit is not None:
            c = torch.from_numpy(stage.fit.coefficients)
            u = values[stage.input]
            b1, b2 = torch.zeros_like(u), torch.zeros_like(u)
            for k in range(c.shape[1] - 1, 0, -1):
                b1, b2 = 2.0 * u * b1 - b2 + c[:, k], b1
            values[i] = u * b1 - b2 + c[:, 0]
        else:
            out = torch.zeros_like(values[stage.input])
            for coefficient in reversed(stage.coefficients.tolist()):
                out = out * values[stage.input] + coefficient
            values[i] = out
    return values[compiled.output]


def adversarial_inputs(model: nn.Module, compiled: Compiled, seed: int = 0) -> torch.Tensor:
    """1,000+ accepted inputs: random, corners (each pixel at the range's end the sign of a first-layer row
    picks), and gradient-searched for the largest |program - model|."""
    lo, hi = compiled.input_range
    n = compiled.input_size
    g = torch.Generator().manual_seed(seed)
    rand = lo + (hi - lo) * torch.rand(600, n, generator=g, dtype=torch.float64)
    first = next(s for s in compiled.stages if isinstance(s, AffineStage))
    rows = torch.from_numpy(first.raw[0][0] if first.raw else first.blocks[0])
    corners = torch.cat([torch.where(rows > 0, hi, lo), torch.where(rows > 0, lo, hi)]).double()
    start = lo + (hi - lo) * torch.rand(300, n, generator=g, dtype=torch.float64)
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05 * (hi - lo))
    model = model.double()
    for _ in range(60):
        xc = x.clamp(lo, hi)
        gap = (program_torch(compiled, xc) - model(xc.reshape(len(xc), 1, 8, 8) if n == 64 else xc)).abs()
        loss = -gap.max(dim=1).values.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.float()
    searched = x.detach().clamp(lo, hi)
    return torch.cat([rand, corners, searched])


@pytest.fixture(scope="module")
def mlp_he(trained_zoo, digits):
    z = trained_zoo["mlp"]
    enc = si.wrap(z.model, "tenseal", sample_input=digits.x_test[:1], calibration=digits.x_train, mode="latency")
    yield z.model, enc
    enc.close()


@pytest.mark.slow
def test_zoo_mlp_is_accurate_on_the_whole_test_split(mlp_he, digits) -> None:
    model, enc = mlp_he
    compiled = enc.program.compiled
    out = compiled.run_plain(digits.x_test.reshape(len(digits.x_test), -1).double().numpy())
    with torch.no_grad():
        plain = model(digits.x_test).double().numpy()
    assert np.abs(out - plain).max() <= 0.25
    assert (out.argmax(1) == plain.argmax(1)).mean() >= 0.995
    relu = next(c for c in enc.report().conversions if c.layer == "ReLU")
    lo, hi = compiled.input_range
    assert relu.bound is not None and "[" in relu.detail  # the fitted interval is stated
    # each unit's fitted interval covers what the first layer gives it for any accepted input, not just the data
    first = compiled.stages[0]
    w, b = first.raw[0][0], first.raw[1]
    middle = w @ np.full(w.shape[1], (hi + lo) / 2) + b
    half = np.abs(w) @ np.full(w.shape[1], (hi - lo) / 2)
    fitted = compiled.stages[1].fit
    assert np.all(fitted.center - fitted.radius <= middle - half + 1e-9)
    assert np.all(fitted.center + fitted.radius >= middle + half - 1e-9)


@pytest.mark.slow
def test_no_accepted_input_breaks_the_bound_or_flips_the_argmax_unannounced(mlp_he) -> None:
    model, enc = mlp_he
    compiled = enc.program.compiled
    x = adversarial_inputs(model, compiled)
    assert len(x) >= 1000
    out = compiled.run_plain(x.numpy())
    with torch.no_grad():
        plain = model(x.float().reshape(len(x), 1, 8, 8)).double().numpy()
    bound = compiled.errors[compiled.output]  # per output
    assert np.all(np.abs(out - plain) <= bound + 1e-6), float((np.abs(out - plain) - bound).max())
    flipped = out.argmax(1) != plain.argmax(1)
    top2 = np.sort(plain, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    # an argmax can change only where the reported bound says it could
    assert np.all(gap[flipped] <= 2 * compiled.error_bound)
    # the worst inputs under real encryption: within the reported worst case (bound + noise allowance)
    worst = np.argsort(-np.abs(out - plain).max(axis=1))[:3]
    y = enc(x[worst].float().reshape(-1, 1, 8, 8))
    assert float((y.double().numpy() - plain[worst]).__abs__().max()) <= enc.program.worst_case_error


@pytest.mark.slow
def test_bounds_hold_through_several_layers_and_a_residual() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.a(x))
            h = h + nn.functional.gelu(self.b(h))
            return self.c(torch.sigmoid(h))

    torch.manual_seed(0)
    model = Net().eval()
    calib = torch.rand(200, 6)
    enc = si.wrap(model, "tenseal", sample_input=calib[:1], calibration=calib, mode="batch")
    compiled = enc.program.compiled
    lo, hi = compiled.input_range
    x = lo + (hi - lo) * torch.rand(3000, 6, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([[lo] * 6, [hi] * 6], dtype=torch.float64)])
    with torch.no_grad():
        plain = model.double()(x).numpy()
    assert np.all(np.abs(compiled.run_plain(x.numpy()) - plain) <= compiled.errors[compiled.output] + 1e-9)
    y = enc(calib[:20])
    with torch.no_grad():
        assert float((y - model.float()(calib[:20])).abs().max()) <= enc.program.worst_case_error


def test_interpolation_error_bound_is_an_upper_bound() -> None:
    rng = np.random.default_rng(0)
    low = rng.uniform(-20, 0, 5)
    high = low + rng.uniform(0.1, 30, 5)
    for module in (nn.ReLU(), nn.GELU(), nn.Sigmoid(), nn.SiLU(), nn.Hardswish()):
        f = activation_fn(module)
        for degree in (3, 15, 63):
            found = fit(f, low, high, degree)
            u = np.linspace(-1, 1, 200_001)
            x = found.center[:, None] + found.radius[:, None] * u[None, :]
            err = np.abs(evaluate_series(u[None, :].repeat(5, 0).T, found.coefficients).T - f(x)).max(axis=1)
            assert np.all(err <= found.error), (type(module).__name__, degree)
            lo_line = found.relaxation[0][:, None] * u + found.relaxation[1][:, None]
            hi_line = found.relaxation[2][:, None] * u + found.relaxation[3][:, None]
            p = evaluate_series(u[None, :].repeat(5, 0).T, found.coefficients).T
            assert np.all(lo_line <= p + 1e-12) and np.all(p <= hi_line + 1e-12)


@pytest.mark.parametrize("degree", [1, 2, 3, 7, 8, 31, 63])
def test_chebyshev_series_evaluate_the_same_in_every_arithmetic(degree: int) -> None:
    from numpy.polynomial import chebyshev as C

    rng = np.random.default_rng(degree)
    coefficients = rng.normal(size=(4, degree + 1)) / np.arange(1, degree + 2)
    u = rng.uniform(-1, 1, 4)
    got = Chebyshev(degree).evaluate(NumpyArithmetic(), u, list(coefficients.T))
    assert np.allclose(got, [C.chebval(u[j], coefficients[j]) for j in range(4)], atol=1e-12)


@pytest.mark.parametrize("degree", [3, 8, 31])
def test_chebyshev_series_under_ckks_match_numpy_per_slot(degree: int) -> None:
    """Per-slot coefficient vectors (latency mode) and exact scale management through the recursion."""
    from secure_infer.backends.tenseal._execute import _Ops
    from secure_infer.backends.tenseal._params import choose
    from secure_infer.backends.tenseal._poly import depth
    from secure_infer.backends.tenseal._seal import ClientKeys, ServerContext

    params = choose(depth(degree), max_abs_output=4.0, slots_needed=1, min_scale_bits=30)
    keys = ClientKeys(params, ())
    server = ServerContext(params, None)
    server.load_keys(keys.public_blobs, ())
    rng = np.random.default_rng(0)
    u = rng.uniform(-1, 1, params.slots)
    coefficients = rng.normal(size=(degree + 1, params.slots)) / np.arange(1, degree + 2)[:, None]
    out = Chebyshev(degree).evaluate(_Ops(server, {}), keys.encrypt(u), list(coefficients), 2.0 ** params.scale_bits)
    want = Chebyshev(degree).evaluate(NumpyArithmetic(), u, list(coefficients))
    assert np.abs(keys.decrypt(out) - want).max() < 1e-3


def test_weights_that_round_to_zero_are_skipped_not_fatal() -> None:
    """A weight of 1e-6 rounds to 0 at its encoding scale: SEAL would refuse the transparent product."""
    model = nn.Sequential(nn.Linear(4, 3), si.zoo.Square(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e-6, 0.3, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0], [0.5, 1e-7, 0.1, 0.0]]))
        model[2].weight[1].zero_()
    x = torch.rand(5, 4)
    for mode in ("batch", "latency"):
        enc = si.wrap(model, "tenseal", sample_input=x[:1], calibration=x, mode=mode)
        with torch.no_grad():
            assert float((enc(x) - model(x)).abs().max()) < 1e-2, mode
