"""The layer IR every backend compiles from: canonical operations, and what each one means.

A :class:`Graph` is a list of :class:`Node` in execution order. ``Node.op`` is
a canonical operation: the front end (:func:`secure_infer.graph.trace`) maps
every spelling of an operation to one op (``x * x``, ``x ** 2``, ``x.pow(2)``,
``torch.square(x)`` and ``Square()`` are all ``"square"``), so a backend writes
one rule per op. The ops:

========================  =============================================================
op                        meaning (``module`` holds the weights where there are any)
========================  =============================================================
``input`` / ``output``    the model's input (after the prologue) and its core output
``linear`` ``conv``       ``nn.Linear``; ``nn.Conv1d``/``nn.Conv2d``
``batch_norm``            an ``nn.BatchNorm1d/2d`` that could not be folded into a conv/linear
``layer_norm``            ``nn.LayerNorm``
``max_pool`` ``avg_pool`` :class:`~secure_infer.layers.MaxPool` / :class:`~secure_infer.layers.AvgPool` (1-d or 2-d)
``adaptive_avg_pool``     :class:`~secure_infer.layers.AdaptiveAvgPool` (uneven windows only)
activations               ``relu`` ``hardtanh`` ``leaky_relu`` ``sigmoid`` ``tanh`` ``gelu``
                          ``silu`` ``elu`` ``softplus`` ``mish`` ``hardswish`` ``hardsigmoid``
                          ``softmax`` ``log_softmax`` (the ``nn`` module of that name)
``square`` ``poly``       :class:`~secure_infer.layers.Square`; :class:`~secure_infer.layers.PolyActivation`
``constant``              :class:`~secure_infer.layers.Constant`: a value independent of the input
``reshape``               ``attrs["shape"]``, with ``-1`` where the batch dimension is
``permute``               ``attrs["dims"]``
``expand``                broadcast to ``attrs["shape"]`` (``-1`` keeps a dimension, as in torch)
``getitem``               ``attrs["index"]``: basic indexing (ints, slices) that keeps the batch
``cat``                   ``attrs["dim"]``
``add``                   ``a + alpha * b`` (``attrs["alpha"]``, default 1)
``mul`` ``matmul``        element-wise and matrix product of two values
``scale_shift``           ``x * attrs["scale"] + attrs["shift"]`` (numbers written in the model's code)
``mean`` ``sum``          over ``attrs["dims"]`` (never the batch dimension), ``attrs["keepdim"]``
``module``                a layer no canonical op covers: every backend refuses it, naming it
========================  =============================================================

Every value keeps its inputs apart: the batch dimension (``Node.batch_dim``,
usually 0) is never merged or reduced, so each input's result depends on that
input alone.

A model's trailing ``softmax``, ``log_softmax``, ``sigmoid`` or ``argmax`` is
not part of the core graph: it is the :attr:`Graph.epilogue`, which runs where
the result is decrypted (exactly, in plaintext). An ``nn.Embedding`` on the
model's integer input becomes a one-hot prologue (:attr:`Graph.one_hot`) and a
``linear`` node.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "EPILOGUE_OPS",
    "STRUCTURAL_OPS",
    "Conversion",
    "Graph",
    "GraphModule",
    "Node",
    "apply_epilogue",
    "interpret",
    "structural",
]

ACTIVATIONS = frozenset({
    "relu", "hardtanh", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "elu", "softplus", "mish",
    "hardswish", "hardsigmoid",
})
"""Element-wise activations (the ``nn`` module of that name is in ``Node.module``)."""

STRUCTURAL_OPS = frozenset({
    "reshape", "permute", "expand", "getitem", "cat", "add", "mul", "matmul", "scale_shift", "mean", "sum",
})
"""Ops without weights, computed by :func:`structural` on any tensor type with torch's methods."""

EPILOGUE_OPS = frozenset({"softmax", "log_softmax", "sigmoid", "argmax"})
"""Ops that may run after decryption when they end the model."""


@dataclass
class Node:
    """One step of the program.

    Attributes:
        name: unique value name.
        op: the canonical operation (see the module docstring).
        inputs: names of the nodes whose values this one consumes, in order.
        module: the layer with the weights (a private copy, safe to edit), if any.
        path: dotted module path inside the user's model (or ``<name>`` for a
            functional call), for messages and reports.
        attrs: op settings (``dims``, ``shape``, ``index``...).
        shape: the value's shape on the sample input, batch dimension included.
        batch_dim: where the batch dimension is in ``shape`` (None: a constant
            without one, which broadcasts).
    """

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    module: nn.Module | None = None
    path: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    batch_dim: int | None = 0

    @property
    def label(self) -> str:
        """Human name: module path and type, or the op."""
        if self.module is not None:
            return f"{self.path or self.name} ({type(self.module).__name__})"
        return f"{self.path or self.name} ({self.op})"

    @property
    def type_name(self) -> str:
        """The layer's class name, or the op for nodes without a module."""
        return type(self.module).__name__ if self.module is not None else self.op

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one input's value (the batch dimension removed)."""
        if self.batch_dim is None:
            return self.shape
        return self.shape[: self.batch_dim] + self.shape[self.batch_dim + 1 :]


@dataclass(frozen=True)
class Conversion:
    """What happened to one layer on the way to a backend program.

    ``kind`` is ``exact``, ``folded``, ``removed``, ``approximated``,
    ``replaced``, ``reordered`` or ``epilogue``; ``max_abs_error`` is measured on
    the sample input where the change is not exact, ``bound`` is a worst-case
    bound over every input the program accepts, where one is known.
    """

    path: str
    layer: str
    kind: str
    detail: str
    max_abs_error: float | None = None
    bound: float | None = None


Impl = Callable[[Node, list[Any], int], Any]


def structural(node: Node, args: list[Any], cat: Callable[..., Any] = torch.cat) -> Any:
    """One weightless op on any tensor type that has torch's methods (torch, CrypTen).

    ``cat`` concatenates (``crypten.cat`` for CrypTensors).
    """
    op, attrs = node.op, node.attrs
    if op == "reshape":
        return args[0].reshape(*attrs["shape"])
    if op == "permute":
        return args[0].permute(*attrs["dims"])
    if op == "expand":
        return args[0].expand(*attrs["shape"])
    if op == "getitem":
        return args[0][attrs["index"]]
    if op == "cat":
        return cat(args, dim=attrs["dim"])
    if op == "add":
        alpha = attrs.get("alpha", 1.0)
        return args[0] + args[1] if alpha == 1.0 else args[0] + args[1] * alpha
    if op == "mul":
        return args[0] * args[1]
    if op == "matmul":
        return args[0].matmul(args[1])
    if op == "scale_shift":
        out = args[0] * attrs["scale"] if attrs["scale"] != 1.0 else args[0]
        return out + attrs["shift"] if attrs["shift"] != 0.0 else out
    if op in ("mean", "sum"):
        reduce = args[0].mean if op == "mean" else args[0].sum
        return reduce(dim=tuple(attrs["dims"]), keepdim=attrs["keepdim"])
    raise AssertionError(f"{op!r} is not a structural op")  # the front end emits only the ops above


def plaintext(node: Node, args: list[Any], batch: int) -> Any:
    """The reference meaning of every op, on torch tensors."""
    if node.op in STRUCTURAL_OPS:
        return structural(node, args)
    if node.op == "constant":
        assert node.module is not None
        return node.module(batch)
    if node.op == "argmax":
        return args[0].argmax(dim=node.attrs["dim"], keepdim=node.attrs.get("keepdim", False))
    assert node.module is not None, node.op
    return node.module(*args)


def apply_epilogue(spec: list[dict[str, Any]] | tuple[dict[str, Any], ...], y: torch.Tensor) -> torch.Tensor:
    """Run an epilogue given as data (``[{"op": "log_softmax", "dim": 1}, ...]``) on decrypted outputs.

    This is the form the epilogue travels in (an HE server publishes it in its
    layout, so a remote client finishes the result exactly as the model would).
    """
    with torch.no_grad():
        for step in spec:
            op = step["op"]
            if op == "softmax":
                y = torch.softmax(y, dim=step["dim"])
            elif op == "log_softmax":
                y = torch.log_softmax(y, dim=step["dim"])
            elif op == "sigmoid":
                y = torch.sigmoid(y)
            elif op == "argmax":
                y = y.argmax(dim=step["dim"], keepdim=bool(step.get("keepdim", False)))
            else:
                raise ValueError(f"unknown epilogue op {op!r}")
    return y


def interpret(graph: Graph, x: Any, impl: Impl, *, free: bool = False) -> dict[str, Any]:
    """Run ``graph`` on ``x`` with ``impl(node, args, batch)`` computing each step.

    Every interpreter of the IR (plaintext, trainable, CrypTen parties, the
    HE compiler's probes) goes through here. ``free=True`` drops each value
    after its last use (only the output is kept).
    """
    batch = x.shape[0] if hasattr(x, "shape") else x.size(0)  # no int(): stays symbolic when traced
    values: dict[str, Any] = {}
    last_use = _last_use(graph) if free else {}
    for step, node in enumerate(graph.nodes):
        if node.op == "input":
            values[node.name] = x
        elif node.op == "output":
            values[node.name] = values[node.inputs[0]]
        else:
            values[node.name] = impl(node, [values[i] for i in node.inputs], batch)
        for name in last_use.get(step, ()):
            del values[name]
    return values


def _last_use(graph: Graph) -> dict[int, list[str]]:
    last: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = step
    out: dict[int, list[str]] = {}
    for name, step in last.items():
        out.setdefault(step, []).append(name)
    return out


@dataclass
class Graph:
    """A traced model: nodes in execution order, the conversions applied, and the client-side steps.

    Attributes:
        nodes: the core program, ``input`` first and ``output`` last.
        input_shape: the core program's input shape on the sample (batch first;
            one-hot encoded when :attr:`one_hot` is set).
        output_shape: the core output's shape on the sample.
        conversions: exact changes made on the way (folds, removals, epilogue).
        epilogue: trailing ops run after decryption, in order (plaintext, exact).
        one_hot: the vocabulary size when the model takes integer indices: the
            data owner one-hot encodes them before encrypting (0: float input).
    """

    nodes: list[Node]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    conversions: list[Conversion] = field(default_factory=list)
    epilogue: list[Node] = field(default_factory=list)
    one_hot: int = 0

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def users(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def layers(self) -> list[Node]:
        return [n for n in self.nodes if n.op not in ("input", "output")]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The prologue: integer indices one-hot encoded (the data owner's side); float input as is."""
        if self.one_hot and not x.is_floating_point():
            return F.one_hot(x.long(), self.one_hot).float()
        return x

    def epilogue_spec(self) -> list[dict[str, Any]]:
        """The epilogue as data (see :func:`apply_epilogue`)."""
        return [{"op": n.op, **{k: v for k, v in n.attrs.items() if k in ("dim", "keepdim")}} for n in self.epilogue]

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """The epilogue: trailing softmax/log_softmax/sigmoid/argmax on decrypted outputs (exact)."""
        return apply_epilogue(self.epilogue_spec(), y)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """What the model computes, prologue and epilogue included: the reference for the user."""
        return self.finish(self.run_core(x))

    def run_core(self, x: torch.Tensor) -> torch.Tensor:
        """What a backend computes (prologue applied, no epilogue): the reference for programs."""
        return self.evaluate(x)[self.output.name]

    def evaluate(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Plaintext value of every core node, by node name (for per-layer error measurement)."""
        with torch.no_grad():
            return interpret(self, self.prepare(x), plaintext)


class GraphModule(nn.Module):
    """An ``nn.Module`` that runs a :class:`Graph`: trainable, so a rewritten
    graph can be fine-tuned with ordinary PyTorch before it is wrapped."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = copy.deepcopy(graph)
        self.layers = nn.ModuleDict(
            {n.name: n.module for n in self.graph.nodes + self.graph.epilogue if n.module is not None}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def impl(node: Node, args: list[Any], batch: int) -> Any:
            if node.name in self.layers:
                node = copy.copy(node)
                node.module = self.layers[node.name]
            return plaintext(node, args, batch)

        core = interpret(self.graph, self.graph.prepare(x), impl)[self.graph.output.name]
        batch = core.shape[0]
        for node in self.graph.epilogue:
            core = impl(node, [core], batch)
        return core
