"""Fixtures shared by the HE transport tests (gRPC, legacy frames): one compiled program, one answer check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from secure_infer import datasets, zoo

# The digits logistic regression is affine (one plaintext-weight product, one rescale), so the only
# error is CKKS's encoding and rescaling noise. Its parameters (N=4096, primes [39, 29, 39], scale
# 2^29; at 2^28 the max error was 2.7e-5 per logit over 40 test inputs, logits up to 20); 1e-2 leaves that a
# margin of several hundred, yet any wrong answer (a logit off by 0.5, another input's answer, a stale
# result) exceeds it.
TOLERANCE = 1e-2


@pytest.fixture(scope="session")
def logreg_program(trained_zoo: dict[str, zoo.ZooModel], digits: datasets.Dataset) -> tuple[Any, torch.nn.Module]:
    """The digits logistic regression compiled once for latency mode, client keys dropped (as a server holds it).

    Servers of every transport and configuration serve this one program; compiling is what
    ``HEServer.from_model`` would repeat for each.
    """
    import secure_infer as si

    model = trained_zoo["logreg"].model
    enc = si.wrap(model, backend="tenseal", sample_input=digits.x_train[:1], calibration=digits.x_train,
                  mode="latency")
    program = enc.program
    program.forget_client_keys()
    return program, model


def _assert_answers(y: torch.Tensor, model: torch.nn.Module, x: torch.Tensor) -> None:
    """The decrypted predictions are the plaintext model's, value for value (not just the shape)."""
    with torch.no_grad():
        ref = model(x)
    assert y.shape == ref.shape
    error = float((y - ref).abs().max())
    assert error < TOLERANCE, f"decrypted outputs differ from the plaintext model's by {error:.3g}"


@pytest.fixture(scope="session")
def assert_answers() -> Callable[[torch.Tensor, torch.nn.Module, torch.Tensor], None]:
    return _assert_answers
