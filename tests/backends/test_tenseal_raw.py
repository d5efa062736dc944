"""Batch-mode affine stages as integer matrix products: the same bits as SEAL's own calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import secure_infer as si
from secure_infer import zoo
from secure_infer.backends.tenseal import _raw

pytestmark = pytest.mark.skipif(not _raw.available(), reason="ciphertext buffers not accessible in this TenSEAL build")


def _reference(c: np.ndarray, x: list[np.ndarray], moduli: list[int]) -> np.ndarray:
    """The same sums in Python integers."""
    out = np.zeros((c.shape[0], *x[0].shape), dtype=np.uint64)
    for level, q in enumerate(moduli):
        for r in range(c.shape[0]):
            total = np.zeros(x[0].shape[0:1] + x[0].shape[2:], dtype=object)
            for i in np.flatnonzero(c[r]):
                total = total + int(c[r, i]) * x[i][:, level, :].astype(object)
            out[r, :, level, :] = (total % q).astype(np.uint64)
    return out


@pytest.mark.parametrize("weight_bits", [12, 40])  # the square chain's weights; the levels schedule's
def test_lincomb_is_exact_modular_arithmetic(weight_bits: int) -> None:
    rng = np.random.default_rng(weight_bits)
    moduli = [(1 << 54) - 33, (1 << 52) - 47, (1 << 30) - 35]
    degree = 16
    x = [np.stack([np.stack([rng.integers(0, q, degree, dtype=np.uint64) for q in moduli]) for _ in range(2)])
         for _ in range(9)]
    c = rng.integers(-(1 << weight_bits), 1 << weight_bits, (6, 9))
    c[0] = 0  # a row without weights
    c[1, :5] = 0  # rows with different columns
    c[2, 3] = (1 << weight_bits) - 1  # the extremes
    c[3, 4] = -(1 << weight_bits)
    assert np.array_equal(_raw.lincomb(c, x, moduli), _reference(c, x, moduli))


def test_lincomb_refuses_primes_it_cannot_reduce_exactly() -> None:
    x = [np.zeros((2, 1, 4), dtype=np.uint64)]
    with pytest.raises(ValueError, match="56 bits"):
        _raw.lincomb(np.ones((1, 1), dtype=np.int64), x, [(1 << 59) - 55])


def test_seal_round_rounds_halves_away_from_zero() -> None:
    assert list(_raw.seal_round(np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49]))) == [1, -1, 2, 3, -3, 0]


def _outputs(program, cts):  # noqa: ANN001, ANN202
    return [_raw.buffer(ct).copy() for ct in program.evaluate(cts)]


@pytest.mark.parametrize("schedule", ["square-chain", "levels"])
def test_batch_mode_gives_the_same_ciphertexts_as_seal(schedule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A convolution, a dense layer and a residual sum: every output coefficient equal to SEAL's path."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 2, 3, stride=2), nn.Linear(18, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x).flatten(1)
            h = self.fc1(h * h)
            return self.fc2(h * h)

    model = Net().eval()
    x = torch.rand(64, 1, 7, 7)
    program = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x, schedule=schedule).program
    flat = x.reshape(64, -1).double().numpy()
    cts = [program.client.keys.encrypt(flat[:, j]) for j in range(flat.shape[1])]
    calls = []
    lincomb = _raw.lincomb
    monkeypatch.setattr(_raw, "lincomb", lambda *a: calls.append(1) or lincomb(*a))
    fast = _outputs(program, cts)
    assert len(calls) == 3  # every affine stage took the matrix-product path
    program.plan.raw = False
    slow = _outputs(program, cts)
    assert len(fast) == len(slow) == 3
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    program.plan.raw = True
    with torch.no_grad():
        assert float((program(x) - model(x)).abs().max()) < 5e-2


@pytest.mark.slow
def test_the_reference_network_in_batch_mode_agrees_with_plaintext() -> None:
    torch.manual_seed(0)
    model = zoo.build("cryptonets", (1, 28, 28), 10).eval()
    x = torch.rand(32, 1, 28, 28)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x)
    assert enc.program.plan.raw
    with torch.no_grad():
        assert float((enc(x) - model(x)).abs().max()) < 1e-2


def test_raw_bytes_carry_a_ciphertext_between_processes_and_refuse_anything_else() -> None:
    from secure_infer.backends.tenseal._params import CKKSParameters
    from secure_infer.backends.tenseal._seal import ClientKeys, ServerContext

    params = CKKSParameters(8192, (52, 54, 54, 54), 22)
    keys, server = ClientKeys(params, ()), ServerContext(params, None)
    values = np.linspace(-1, 1, params.slots)
    blob = _raw.to_bytes(keys.encrypt(values))
    back = _raw.from_bytes(server.context, blob)  # another context object, as in a worker
    assert back.is_ntt_form() and np.abs(keys.decrypt(back)[: params.slots] - values).max() < 1e-3
    header = _raw._HEADER.itemsize
    data = np.frombuffer(blob, dtype="<u8", offset=header).copy()
    data[7] = np.uint64((1 << 54) - 1)  # above every prime of the level
    with pytest.raises(ValueError, match="outside its prime"):
        _raw.from_bytes(server.context, blob[:header] + data.tobytes())
    with pytest.raises(ValueError, match="bad magic"):
        _raw.from_bytes(server.context, b"X" + blob[1:])
    with pytest.raises(ValueError, match="sizes or scale"):
        _raw.from_bytes(server.context, blob[:-8])
    other = ServerContext(CKKSParameters(8192, (50, 54, 54, 54), 22), None)
    with pytest.raises(ValueError, match="level these parameters do not have"):
        _raw.from_bytes(other.context, blob)
