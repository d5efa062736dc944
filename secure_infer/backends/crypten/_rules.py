"""The CrypTen layer-rule registry.

A rule runs inside every party. It receives the layer (with real weights at the
model owner, zeros of the same shape elsewhere) and ``share``, which
secret-shares a tensor from the model owner; it returns the function that
maps a CrypTensor to a CrypTensor. Every party calls ``share`` in the same
order with the same shapes, so the weights are shared once per program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from secure_infer.backends.base import LayerRules
from secure_infer.graph import Node

Share = Callable[[torch.Tensor], Any]
Apply = Callable[[Any], Any]
CryptenRule = Callable[[nn.Module, Node, Share], Apply]

RULES: LayerRules[CryptenRule] = LayerRules(
    "crypten",
    suggestions={
        nn.GELU: "Replace GELU with ReLU and fine-tune, or use backend='tenseal' (polynomial GELU).",
        nn.LayerNorm: "LayerNorm needs a secure inverse square root per input; use BatchNorm (folded exactly) instead.",
        nn.MaxPool1d: "Use MaxPool2d on a (N, C, 1, L) view, or AvgPool1d.",
    },
)
