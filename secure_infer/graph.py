"""The front end: trace a ``torch.nn.Module`` once into a small layer IR.

Both backends compile from this IR, never from the module itself, so "what does
secure-infer think this model computes?" has one answer. The IR is a list of
:class:`Node` in execution order; every node has the shape it produced on the
sample input. Functional calls are normalised to their module form
(``F.relu`` -> ``nn.ReLU``, ``x.view(n, -1)`` -> a reshape) so each backend
only needs one rule per layer type.

Front-end passes that are exact for every backend live here too:
folding BatchNorm into the preceding Conv/Linear and dropping Dropout and
Identity, each recorded as a :class:`Conversion` for the report.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from secure_infer._errors import ParameterError, UnsupportedModelError

__all__ = ["Conversion", "Graph", "GraphModule", "Node", "apply_node", "trace"]


@dataclass
class Node:
    """One step of the program.

    Attributes:
        name: unique value name.
        op: ``"input"``, ``"module"`` (a layer, see ``module``), ``"reshape"``,
            ``"add"``, ``"mul"``, ``"cat"`` or ``"output"``.
        inputs: names of the nodes whose values this one consumes.
        module: the layer for ``op == "module"`` (a private copy, safe to edit).
        path: dotted module path inside the user's model, for messages.
        attrs: op parameters (``dim`` for cat, ``shape`` for reshape).
        shape: output shape on the sample input, batch dimension included.
    """

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    module: nn.Module | None = None
    path: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """Human name: module path and type, or the op."""
        if self.op == "module" and self.module is not None:
            return f"{self.path or self.name} ({type(self.module).__name__})"
        return f"{self.name} ({self.op})"


@dataclass(frozen=True)
class Conversion:
    """What happened to one layer on the way to a backend program.

    ``kind`` is ``exact``, ``folded``, ``removed``, ``approximated`` or
    ``replaced``; ``max_abs_error`` is measured on the sample input where the
    change is not exact.
    """

    path: str
    layer: str
    kind: str
    detail: str
    max_abs_error: float | None = None


@dataclass
class Graph:
    """A traced model: nodes in execution order plus the conversions applied."""

    nodes: list[Node]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    conversions: list[Conversion] = field(default_factory=list)

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

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the IR in plaintext: the reference every backend is checked against."""
        return self.evaluate(x)[self.output.name]

    def evaluate(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Plaintext value of every node, by node name (for per-layer error measurement)."""
        values: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n in self.nodes:
                values[n.name] = apply_node(n, [values[i] for i in n.inputs], x, n.module)
        return values


def apply_node(node: Node, args: list[Any], graph_input: Any, layer: Any, cat: Any = torch.cat) -> Any:
    """One step of the IR on any tensor type that has the torch methods used.

    ``layer`` computes a module node (the module itself, or a backend's rule);
    ``cat`` concatenates (``crypten.cat`` for CrypTensors). Every interpreter of
    the IR (plaintext, trainable, CrypTen) goes through here.
    """
    if node.op == "input":
        return graph_input
    if node.op == "module":
        return layer(args[0])
    if node.op == "reshape":
        return args[0].reshape(args[0].size(0), *node.attrs["shape"])
    if node.op == "add":
        return args[0] + args[1]
    if node.op == "mul":
        return args[0] * args[1]
    if node.op == "cat":
        return cat(args, dim=node.attrs["dim"])
    if node.op == "output":
        return args[0]
    raise AssertionError(f"unknown IR op {node.op!r}")  # the front end emits only the ops above


# Functional calls and their module equivalents (built from the call's arguments).
_FUNCTIONAL_MODULES: dict[Any, Any] = {
    F.relu: lambda a, k: nn.ReLU(),
    torch.relu: lambda a, k: nn.ReLU(),
    "relu": lambda a, k: nn.ReLU(),
    torch.sigmoid: lambda a, k: nn.Sigmoid(),
    F.sigmoid: lambda a, k: nn.Sigmoid(),
    "sigmoid": lambda a, k: nn.Sigmoid(),
    torch.tanh: lambda a, k: nn.Tanh(),
    F.tanh: lambda a, k: nn.Tanh(),
    "tanh": lambda a, k: nn.Tanh(),
    F.gelu: lambda a, k: nn.GELU(),
    F.softmax: lambda a, k: nn.Softmax(dim=k.get("dim", a[1] if len(a) > 1 else -1)),
    torch.softmax: lambda a, k: nn.Softmax(dim=k.get("dim", a[1] if len(a) > 1 else -1)),
    "softmax": lambda a, k: nn.Softmax(dim=k.get("dim", a[1] if len(a) > 1 else -1)),
    F.log_softmax: lambda a, k: nn.LogSoftmax(dim=k.get("dim", a[1] if len(a) > 1 else -1)),
    torch.log_softmax: lambda a, k: nn.LogSoftmax(dim=k.get("dim", a[1] if len(a) > 1 else -1)),
    "log_softmax": lambda a, k: nn.LogSoftmax(dim=k.get("dim", a[1] if len(a) > 1 else -1)),
}
_RESHAPES = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_ADDS = {operator.add, torch.add, "add", operator.iadd}
_MULS = {operator.mul, torch.mul, "mul", operator.imul}
_CATS = {torch.cat, torch.concat}
_SHAPE_QUERIES = {"size", "dim"}


class _Tracer(fx.Tracer):
    """Stop at torch.nn layers and secure-infer's own layers; trace through the rest.

    A user's custom module is traced into the ops it performs, so a backend
    needs rules for standard layers only.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        from secure_infer.approximations import PolyActivation
        from secure_infer.zoo import Square

        return type(m).__module__.startswith("torch.nn") or isinstance(m, Square | PolyActivation)


def _trace_fx(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, AttributeError...
        raise UnsupportedModelError(
            f"could not trace {type(model).__name__}: {exc}. secure-infer needs a forward() "
            "without data-dependent control flow (no `if x.sum() > 0`); move such logic "
            "outside the model or make it static",
            module_path="",
            module_type=type(model).__name__,
        ) from exc
    return fx.GraphModule(model, graph)


def _shape_of(meta: dict[str, Any]) -> tuple[int, ...]:
    tm = meta.get("tensor_meta")
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else ()


def trace(model: nn.Module, sample_input: torch.Tensor) -> Graph:
    """Trace ``model`` on ``sample_input`` into a :class:`Graph`, and fold/remove exactly.

    The model is not modified; the graph holds copies of its layers.

    Raises:
        ParameterError: the sample input is not a float tensor with a batch dimension
            or the model does not accept it.
        UnsupportedModelError: the model cannot be traced or uses an operation no
            backend knows, naming where.
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(sample_input, torch.Tensor) or not sample_input.is_floating_point():
        raise ParameterError("sample_input must be a float torch.Tensor shaped (batch, ...)")
    if sample_input.dim() < 2:
        raise ParameterError(
            f"sample_input must have a batch dimension, got shape {tuple(sample_input.shape)}; "
            "use x[:1] rather than x[0]"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                expected = model(sample_input)
            except Exception as exc:
                raise ParameterError(
                    f"the model does not accept sample_input of shape {tuple(sample_input.shape)}: {exc}"
                ) from exc
        # A bare layer (nn.Linear itself) is a leaf: trace it as a one-layer model.
        root_is_leaf = _Tracer().is_leaf_module(model, "")
        gm = _trace_fx(nn.Sequential(model) if root_is_leaf else model)
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(sample_input)
        graph = _to_ir(gm, gm if root_is_leaf else model, tuple(sample_input.shape))
        if root_is_leaf:
            for n in graph.nodes:
                if n.path == "0":
                    n.path = "(model)"
    finally:
        model.train(was_training)
    if not isinstance(expected, torch.Tensor):
        raise UnsupportedModelError(
            "the model must return one tensor; wrap it so forward() returns the logits",
            module_type=type(model).__name__,
        )
    _fold_batchnorm(graph)
    _drop_identities(graph)
    return graph


def _to_ir(gm: fx.GraphModule, model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    nodes: list[Node] = []
    alias: dict[str, str] = {}  # fx names of dropped nodes -> the value they forward
    consts: dict[str, Any] = {}
    modules = dict(model.named_modules())
    input_seen = False

    def src(arg: Any) -> str:
        if not isinstance(arg, fx.Node):
            raise TypeError("not a node")
        return alias.get(arg.name, arg.name)

    for fxn in gm.graph.nodes:
        shape = _shape_of(fxn.meta)
        where = fxn.stack_trace.strip().splitlines()[-1].strip() if fxn.stack_trace else str(fxn.target)
        if fxn.op == "placeholder":
            if input_seen:
                raise UnsupportedModelError(
                    f"forward() takes more than one input ({fxn.name}); secure-infer wraps "
                    "single-input models: combine the inputs into one tensor",
                    module_type=type(model).__name__,
                )
            input_seen = True
            nodes.append(Node(fxn.name, "input", shape=input_shape))
        elif fxn.op == "get_attr":
            consts[fxn.name] = fxn.target
        elif fxn.op == "call_module":
            mod = modules[fxn.target]
            nodes.append(
                Node(fxn.name, "module", (src(fxn.args[0]),), copy.deepcopy(mod), fxn.target, shape=shape)
            )
        elif fxn.op in ("call_function", "call_method"):
            target = fxn.target
            tensor_args = [a for a in fxn.args if isinstance(a, fx.Node)]
            if target in _SHAPE_QUERIES or (fxn.op == "call_function" and target is getattr):
                alias[fxn.name] = fxn.name  # shape arithmetic, consumed by reshapes only
                continue
            if target in _FUNCTIONAL_MODULES:
                mod = _FUNCTIONAL_MODULES[target](fxn.args, fxn.kwargs)
                nodes.append(Node(fxn.name, "module", (src(fxn.args[0]),), mod, f"<{fxn.name}>", shape=shape))
            elif target in _RESHAPES:
                nodes.append(Node(fxn.name, "reshape", (src(fxn.args[0]),), attrs={"shape": shape[1:]}, shape=shape))
            elif target in _CATS:
                parts = fxn.args[0]
                dim = fxn.kwargs.get("dim", fxn.args[1] if len(fxn.args) > 1 else 0)
                nodes.append(Node(fxn.name, "cat", tuple(src(p) for p in parts), attrs={"dim": dim}, shape=shape))
            elif (target in _ADDS or target in _MULS) and len(tensor_args) == 2 and not set(
                a.name for a in tensor_args
            ) & set(consts):
                op = "add" if target in _ADDS else "mul"
                nodes.append(Node(fxn.name, op, tuple(src(a) for a in tensor_args), shape=shape))
            else:
                name = getattr(target, "__name__", str(target))
                raise UnsupportedModelError(
                    f"operation {name!r} at `{where}` is not supported; supported tensor ops are "
                    "nn layers, relu/sigmoid/tanh/softmax, flatten/view/reshape, "
                    "tensor + tensor, tensor * tensor and torch.cat",
                    module_path=fxn.name,
                    module_type=name,
                )
        elif fxn.op == "output":
            out = fxn.args[0]
            if not isinstance(out, fx.Node):
                raise UnsupportedModelError(
                    "the model must return one tensor; wrap it so forward() returns the logits",
                    module_type=type(model).__name__,
                )
            nodes.append(Node("output", "output", (src(out),), shape=_shape_of(out.meta)))
    return Graph(nodes, input_shape, nodes[-1].shape)


def _replace_uses(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        n.inputs = tuple(new if i == old else i for i in n.inputs)


def _fold_batchnorm(graph: Graph) -> None:
    """Fold each BatchNorm that directly follows a Conv/Linear used only by it."""
    for bn in list(graph.nodes):
        if bn.op != "module" or not isinstance(bn.module, nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        prev = graph.node(bn.inputs[0])
        if prev.op != "module" or not isinstance(prev.module, nn.Conv1d | nn.Conv2d | nn.Linear):
            continue
        if len(graph.users(prev.name)) != 1 or bn.module.running_var is None:
            continue
        layer = prev.module
        scale = bn.module.weight.detach() if bn.module.affine else torch.ones_like(bn.module.running_var)
        shift = bn.module.bias.detach() if bn.module.affine else torch.zeros_like(bn.module.running_var)
        factor = scale / torch.sqrt(bn.module.running_var + bn.module.eps)
        with torch.no_grad():
            w = layer.weight.detach()
            layer.weight.copy_(w * factor.reshape(-1, *([1] * (w.dim() - 1))))
            bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(factor)
            new_bias = (bias - bn.module.running_mean) * factor + shift
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias)
            else:
                layer.bias.copy_(new_bias)
        graph.conversions.append(
            Conversion(bn.path, type(bn.module).__name__, "folded", f"folded into {prev.path} (exact)")
        )
        _replace_uses(graph, bn.name, prev.name)
        graph.nodes.remove(bn)


def _drop_identities(graph: Graph) -> None:
    """Remove layers that compute the identity in eval mode."""
    for n in list(graph.nodes):
        if n.op == "module" and isinstance(n.module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Identity):
            graph.conversions.append(
                Conversion(n.path, type(n.module).__name__, "removed", "identity at inference (eval mode)")
            )
            _replace_uses(graph, n.name, n.inputs[0])
            graph.nodes.remove(n)


class GraphModule(nn.Module):
    """An ``nn.Module`` that runs a :class:`Graph`: trainable, so a rewritten
    graph can be fine-tuned with ordinary PyTorch before it is wrapped."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = copy.deepcopy(graph)
        self.layers = nn.ModuleDict(
            {n.name: n.module for n in self.graph.nodes if n.op == "module" and n.module is not None}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for n in self.graph.nodes:
            layer = self.layers[n.name] if n.name in self.layers else None
            values[n.name] = apply_node(n, [values[i] for i in n.inputs], x, layer)
        return values[self.graph.output.name]
