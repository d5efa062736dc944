"""The party-side program: the IR evaluated on CrypTensors.

Every party builds the same :class:`PartyProgram` from the same graph; only the
model owner's copy carries real weights (:func:`weightless` makes the others').
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from secure_infer.backends.crypten import activations, linear, normalization, pooling, structural  # noqa: F401
from secure_infer.backends.crypten._rules import RULES, Apply
from secure_infer.backends.crypten._runtime import DATA_OWNER, MODEL_OWNER
from secure_infer.ir import Graph, Node, interpret

__all__ = ["DATA_OWNER", "MODEL_OWNER", "NativeProgram", "PartyProgram", "native_onnx", "weightless"]


def weightless(graph: Graph) -> Graph:
    """A copy of ``graph`` whose parameters and buffers are all zero: shapes without secrets."""
    blank = copy.deepcopy(graph)
    with torch.no_grad():
        for node in blank.nodes:
            if node.module is not None:
                for tensor in (*node.module.parameters(), *node.module.buffers()):
                    tensor.zero_()
    return blank


class PartyProgram:
    """The graph compiled for one party: weights shared once, then callable many times."""

    def __init__(self, graph: Graph, crypten: Any, *, model_owner: int = MODEL_OWNER) -> None:
        self.graph = graph
        self._crypten = crypten

        def share(tensor: torch.Tensor) -> Any:
            return crypten.cryptensor(tensor.detach().clone(), src=model_owner)

        self._apply: dict[str, Apply] = {node.name: RULES.find(node).rule(node, share) for node in graph.layers()}

    def __call__(self, x_enc: Any, *, reveal: frozenset[str] = frozenset(), dst: int | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
        """Evaluate on shares; ``reveal`` names nodes whose values are opened to ``dst``.

        Revealing intermediate values is only for calibration on the caller's own
        sample input (to measure per-layer approximation error), never for user data.
        Each value is freed after its last use: shares of a batch of 64 images are
        large, and holding every intermediate to the end slowed parties by ~10%.
        """
        rank = self._crypten.communicator.get().get_rank()
        revealed: dict[str, torch.Tensor] = {}

        def step(node: Node, args: list[Any], batch: int) -> Any:
            out = self._apply[node.name](args, batch)
            if node.name in reveal:
                plain = out.get_plain_text(dst=dst)
                if dst is None or rank == dst:  # elsewhere a reduce leaves a meaningless partial
                    revealed[node.name] = plain
            return out

        values = interpret(self.graph, x_enc, step, free=True)
        return values[self.graph.output.name], revealed


class NativeProgram:
    """CrypTen's own ONNX-based converter, run as a party program (benchmark anchor)."""

    def __init__(self, spec: Any, crypten: Any, *, model_owner: int = MODEL_OWNER) -> None:
        import io

        self._model = crypten.nn.from_onnx(io.BytesIO(spec.onnx_bytes))
        self._model.encrypt(src=model_owner)
        self._model.eval()

    def __call__(self, x_enc: Any, *, reveal: frozenset[str] = frozenset(), dst: int | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
        return self._model(x_enc), {}


def native_onnx(model: torch.nn.Module, sample_input: torch.Tensor) -> tuple[bytes, bytes]:
    """CrypTen's export of ``model``: (with weights, with every initializer zeroed)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from secure_infer._crypten_compat import load_crypten

    load_crypten()
    from crypten.nn.onnx_converter import _from_pytorch_to_bytes

    with torch.no_grad():
        real = _from_pytorch_to_bytes(model, sample_input).getvalue()
    proto = onnx.load_from_string(real)
    for init in proto.graph.initializer:
        zero = numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name)
        init.CopyFrom(zero)
    return real, proto.SerializeToString()
