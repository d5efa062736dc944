"""The compatibility layer makes crypten 0.4.1 import and convert on torch 2.13."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from secure_infer._crypten_compat import is_patched, load_crypten


def test_plain_import_fails_without_the_layer() -> None:
    # Guards the premise: if crypten ever imports cleanly, the layer can go.
    proc = subprocess.run(
        [sys.executable, "-c", "import crypten"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "registration" in proc.stderr


def test_load_crypten_imports_and_is_idempotent() -> None:
    crypten = load_crypten()
    assert is_patched()
    assert load_crypten() is crypten


def test_from_pytorch_converts_and_computes() -> None:
    crypten = load_crypten()
    crypten.init()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4)
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    enc = crypten.nn.from_pytorch(model, x[:1]).encrypt()
    out = enc(crypten.cryptensor(x)).get_plain_text()
    assert out.shape == (2, 4)
    assert float((out - model(x)).abs().max()) < 1e-2


def test_deduplicated_initializers_convert() -> None:
    """Two equal biases become an ONNX Identity; raw CrypTen rejects it (issue #418)."""
    crypten = load_crypten()
    crypten.init()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)).eval()
    with torch.no_grad():
        model[0].bias.zero_()
        model[2].bias.zero_()
    x = torch.randn(3, 4)
    enc = crypten.nn.from_pytorch(model, x[:1]).encrypt()
    out = enc(crypten.cryptensor(x)).get_plain_text()
    assert float((out - model(x).detach()).abs().max()) < 1e-2


@pytest.mark.parametrize("value", [-5.99995, -0.25, -1.0, -123.99999, 0.0, 3.5, 7.99999])
def test_fixed_point_decode_is_exact(value: float) -> None:
    """CrypTen 0.4.1 decodes -5.99995 as -6.99995; the layer fixes it."""
    load_crypten()
    from crypten.encoder import FixedPointEncoder

    enc = FixedPointEncoder(precision_bits=16)
    x = torch.tensor([value])
    assert float((enc.decode(enc.encode(x)) - x).abs().max()) < 2**-15


def test_comparison_results_decode() -> None:
    """Comparisons return precision-0 tensors (scale 1); their decode path must import and round."""
    crypten = load_crypten()
    crypten.init()
    try:
        a, b = crypten.cryptensor(torch.tensor([1.0, 3.0, 2.0])), crypten.cryptensor(torch.tensor([2.0, 1.0, 2.0]))
        assert (a >= b).get_plain_text().tolist() == [0, 1, 1]
    finally:
        crypten.uninit()


def test_matmul_has_no_unit_errors() -> None:
    """The decode bug showed up as rare errors of exactly 1.0 in matmul outputs."""
    crypten = load_crypten()
    crypten.init()
    torch.manual_seed(0)
    x, w = torch.rand(256, 64) * 5, torch.randn(64, 100) * 0.3
    y = crypten.cryptensor(x).matmul(crypten.cryptensor(w)).get_plain_text()
    assert float((y - x @ w).abs().max()) < 1e-2
