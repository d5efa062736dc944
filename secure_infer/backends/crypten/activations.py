"""Activations under CrypTen.

ReLU, hardtanh/ReLU6, leaky ReLU, hardswish and hardsigmoid are secure
comparisons on binary shares: exact sign, fixed-point values. Sigmoid, tanh,
softmax, log-softmax, GELU, SiLU, ELU, softplus and mish use CrypTen's
numerical approximations (exponential by repeated squaring, Newton-Raphson
reciprocal), so they are listed as approximated and their error on the sample
input is measured. GELU uses its tanh form: CrypTen's erf diverges outside a
small interval. Polynomials (``x**2``, fitted polynomials) are products of
shares, exact in fixed point.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from secure_infer.backends.crypten._rules import RULES, Apply, Share, module_of
from secure_infer.ir import Node


def _elementwise(fn: Any) -> Any:
    def rule(node: Node, share: Share) -> Apply:
        module = module_of(node)
        return lambda args, batch: fn(args[0], module)

    return rule


def _softplus(x: Any, beta: float = 1.0) -> Any:
    # relu(x) + log(1 + exp(-|x|)): the exponential only sees values <= 0, where CrypTen's is accurate
    bx = x * beta if beta != 1.0 else x
    positive = bx.relu()
    magnitude = positive * 2 - bx
    out = positive + ((magnitude * -1).exp() + 1).log()
    return out * (1.0 / beta) if beta != 1.0 else out


def _gelu(x: Any, module: nn.Module) -> Any:
    inner = (x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)
    return x * (inner.tanh() + 1) * 0.5


RULES.register("relu", detail="secure comparison (A2B conversion); exact sign")(
    _elementwise(lambda x, m: x.relu()))
RULES.register("hardtanh", detail="two secure comparisons (clamp); exact")(
    _elementwise(lambda x, m: x.hardtanh(m.min_val, m.max_val)))
RULES.register("leaky_relu", detail="secure comparison: (1 - a) relu(x) + a x; exact")(
    _elementwise(lambda x, m: x.relu() * (1.0 - m.negative_slope) + x * m.negative_slope))
RULES.register("hardswish", detail="secure comparisons: x * clamp(x + 3, 0, 6) / 6; exact")(
    _elementwise(lambda x, m: x * (x + 3.0).hardtanh(0.0, 6.0) * (1.0 / 6.0)))
RULES.register("hardsigmoid", detail="secure comparisons: clamp(x + 3, 0, 6) / 6; exact")(
    _elementwise(lambda x, m: (x + 3.0).hardtanh(0.0, 6.0) * (1.0 / 6.0)))
RULES.register("sigmoid", kind="approximated", detail="CrypTen sigmoid via exp and Newton-Raphson reciprocal")(
    _elementwise(lambda x, m: x.sigmoid()))
RULES.register("tanh", kind="approximated", detail="CrypTen tanh = 2*sigmoid(2x) - 1")(
    _elementwise(lambda x, m: x.tanh()))
RULES.register("gelu", kind="approximated",
               detail="tanh form 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) with CrypTen tanh")(
    _elementwise(_gelu))
RULES.register("silu", kind="approximated", detail="x * sigmoid(x), CrypTen sigmoid")(
    _elementwise(lambda x, m: x * x.sigmoid()))
RULES.register("elu", kind="approximated", detail="relu(x) + a (exp(min(x, 0)) - 1), CrypTen exp")(
    _elementwise(lambda x, m: x.relu() + ((x - x.relu()).exp() - 1.0) * m.alpha))
RULES.register("softplus", kind="approximated", detail="relu(x) + log(1 + exp(-|x|)), CrypTen exp and log")(
    _elementwise(lambda x, m: _softplus(x, float(m.beta))))
RULES.register("mish", kind="approximated", detail="x * tanh(softplus(x)), CrypTen exp, log and tanh")(
    _elementwise(lambda x, m: x * _softplus(x).tanh()))
RULES.register("square", detail="one Beaver square; exact up to fixed point")(
    _elementwise(lambda x, m: x.square()))


@RULES.register("poly", detail="Horner's rule with shared coefficients; exact up to fixed point")
def polynomial(node: Node, share: Share) -> Apply:
    coefficients = [share(c.reshape(1)) for c in module_of(node).coefficients.detach()]

    def apply(args: list[Any], batch: int) -> Any:
        x = args[0]
        out = x * coefficients[-1]
        for c in reversed(coefficients[1:-1]):
            out = (out + c) * x
        return out + coefficients[0]

    return apply


@RULES.register("softmax", kind="approximated", detail="CrypTen softmax: max-shifted exp, NR reciprocal")
def softmax(node: Node, share: Share) -> Apply:
    dim = node.attrs["dim"]
    return lambda args, batch: args[0].softmax(dim)


@RULES.register("log_softmax", kind="approximated", detail="CrypTen log_softmax: max-shifted exp, log by iteration")
def log_softmax(node: Node, share: Share) -> Apply:
    dim = node.attrs["dim"]
    return lambda args, batch: args[0].log_softmax(dim)
