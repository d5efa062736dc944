"""Polynomial approximations of activations, for homomorphic encryption.

CKKS evaluates additions and multiplications only, so ReLU, Sigmoid, Tanh and
GELU are replaced by least-squares polynomials fitted on the range of values
each activation actually sees on calibration data. :class:`PolyActivation`
is an ordinary ``nn.Module``: a model with the polynomials in place can be
evaluated in plaintext (to measure the accuracy effect before encrypting) and
fine-tuned (HE-aware training) with :func:`polynomial_model`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from secure_infer._errors import ParameterError
from secure_infer.layers import PolyActivation

__all__ = ["APPROXIMABLE", "PolyActivation", "fit", "polynomial_model"]

APPROXIMABLE: dict[type[nn.Module], int] = {nn.ReLU: 2, nn.Sigmoid: 3, nn.Tanh: 3, nn.GELU: 2, nn.SiLU: 2}
"""Activations with a polynomial replacement, and their default degree."""


def fit(activation: nn.Module, low: float, high: float, degree: int) -> PolyActivation:
    """Least-squares polynomial for ``activation`` on ``[low, high]`` (Chebyshev nodes)."""
    if degree < 1:
        raise ParameterError(f"polynomial degree must be >= 1, got {degree}")
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        low, high = min(low, -1.0), max(high, 1.0)
    k = np.arange(4 * (degree + 1) + 64)
    nodes = np.cos(np.pi * (k + 0.5) / len(k))
    xs = (low + high) / 2 + (high - low) / 2 * nodes
    with torch.no_grad():
        ys = activation(torch.tensor(xs, dtype=torch.float64)).numpy()
    coeffs = np.polynomial.polynomial.polyfit(xs, ys, degree)
    return PolyActivation(coeffs.tolist(), type(activation).__name__, (float(low), float(high)))


def polynomial_model(model: nn.Module, sample_input: torch.Tensor, *, degree: int | None = None,
                     margin: float = 0.1) -> nn.Module:
    """A trainable copy of ``model`` with every approximable activation replaced.

    Ranges come from ``sample_input`` (pass a calibration batch), widened by
    ``margin``. Fine-tune the result with ordinary PyTorch (HE-aware training),
    then wrap it: its polynomials are evaluated exactly under CKKS.
    """
    from secure_infer.graph import GraphModule, trace

    graph = trace(model, sample_input)
    values = graph.evaluate(sample_input)
    for node in graph.nodes:
        if node.module is not None and type(node.module) in APPROXIMABLE:
            x = values[node.inputs[0]]
            lo, hi = float(x.min()), float(x.max())
            pad = margin * max(hi - lo, 1e-3)
            node.module = fit(node.module, lo - pad, hi + pad, degree or APPROXIMABLE[type(node.module)])
    return GraphModule(graph)
