"""Activations under CrypTen.

ReLU is a secure comparison on binary shares (exact sign, fixed-point value).
Sigmoid, Tanh, Softmax and LogSoftmax use CrypTen's numerical approximations
(exponential by repeated squaring, Newton-Raphson reciprocal), so they are
listed as approximated and their error on the sample input is measured.
"""

from __future__ import annotations

from torch import nn

from secure_infer.backends.crypten._rules import RULES, Apply, Share
from secure_infer.graph import Node
from secure_infer.zoo import Square


@RULES.register(nn.ReLU, detail="secure comparison (A2B conversion); exact sign")
def relu(module: nn.Module, node: Node, share: Share) -> Apply:
    return lambda x: x.relu()


@RULES.register(Square, detail="one Beaver square; exact up to fixed point")
def square(module: nn.Module, node: Node, share: Share) -> Apply:
    return lambda x: x.square()


@RULES.register(nn.Sigmoid, kind="approximated", detail="CrypTen sigmoid via exp and Newton-Raphson reciprocal")
def sigmoid(module: nn.Module, node: Node, share: Share) -> Apply:
    return lambda x: x.sigmoid()


@RULES.register(nn.Tanh, kind="approximated", detail="CrypTen tanh = 2*sigmoid(2x) - 1")
def tanh(module: nn.Module, node: Node, share: Share) -> Apply:
    return lambda x: x.tanh()


@RULES.register(nn.Softmax, kind="approximated", detail="CrypTen softmax: max-shifted exp, NR reciprocal")
def softmax(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.Softmax)
    dim = module.dim if module.dim is not None else -1
    return lambda x: x.softmax(dim)


@RULES.register(nn.LogSoftmax, kind="approximated", detail="CrypTen log_softmax: max-shifted exp, log by iteration")
def log_softmax(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.LogSoftmax)
    dim = module.dim if module.dim is not None else -1
    return lambda x: x.log_softmax(dim)
