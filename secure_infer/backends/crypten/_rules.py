"""The CrypTen rule registry, keyed by the canonical ops of :mod:`secure_infer.ir`.

A rule runs inside every party. It receives the node (its module carries real
weights at the model owner, zeros of the same shape elsewhere) and ``share``,
which secret-shares a tensor from the model owner; it returns
``apply(args, batch)``, which maps the input CrypTensors to the output. Every
party builds the rules in the same order with the same shapes, so the weights
are shared once per program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from secure_infer.backends.base import LayerRules
from secure_infer.ir import Node

Share = Callable[[torch.Tensor], Any]
Apply = Callable[[list[Any], int], Any]
CryptenRule = Callable[[Node, Share], Apply]

RULES: LayerRules[CryptenRule] = LayerRules(
    "crypten",
    suggestions={
        "argmax": "An argmax inside the model is not supported; end the model with it (it then runs at the "
                  "data owner, after the reveal) or drop it.",
        "GroupNorm": "Use BatchNorm (folded exactly) or LayerNorm instead.",
        "InstanceNorm2d": "Use BatchNorm (folded exactly) or LayerNorm instead.",
        "LSTM": "Recurrent layers are not supported; unroll them with nn.Linear, or use an attention block.",
        "GRU": "Recurrent layers are not supported; unroll them with nn.Linear, or use an attention block.",
        "Conv3d": "Only 1-d and 2-d convolutions are supported.",
    },
)


def module_of(node: Node) -> Any:
    """The node's layer (every rule that needs weights has one)."""
    assert node.module is not None, node.op
    return node.module


def unsupported(node: Node, why: str) -> Exception:
    """An UnsupportedModelError naming the node, for settings a rule cannot run."""
    from secure_infer._errors import UnsupportedModelError

    return UnsupportedModelError(f"{node.path}: {node.type_name} {why}", module_path=node.path,
                                 module_type=node.type_name)
