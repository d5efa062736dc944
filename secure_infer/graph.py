"""The front end: trace a ``torch.nn.Module`` once into the canonical layer IR.

Both backends compile from the IR (:mod:`secure_infer.ir`), never from the
module itself, so "what does secure-infer think this model computes?" has one
answer, and a backend rule is written once per operation, not once per
spelling. :func:`trace` sees operations, not spellings:

* ``x * x``, ``x ** 2``, ``x.pow(2)``, ``torch.square(x)`` are one ``square``;
  ``F.relu``, ``nn.ReLU``, ``x.relu()`` one ``relu``; ``view``, ``reshape``,
  ``flatten``, ``squeeze``, ``nn.Flatten`` one ``reshape``; ``+``,
  ``torch.add``, ``x.add`` one ``add``; ``F.max_pool2d(x, 2)``,
  ``nn.MaxPool1d((3,))``... one ``max_pool`` with tuple settings;
  ``nn.AdaptiveAvgPool2d(1)`` and ``x.mean((2, 3), keepdim=True)`` one ``mean``;
* ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention`` are expanded
  into the same linear/matmul/softmax nodes a hand-written attention traces to;
* values that do not depend on the input (a class token, ``x + self.pos_embed``)
  become ``constant`` nodes holding model-owner data; numbers written in the
  code (``* 0.125``) are public ``scale_shift`` settings;
* a trailing softmax/log_softmax/sigmoid/argmax becomes the client-side
  epilogue, and an ``nn.Embedding`` on integer input a one-hot prologue.

The model is run twice (at the sample's batch size and one more) to find the
batch dimension of every value, so reshapes and permutes that move it are
followed exactly and ones that mix inputs of a batch are refused. Every node
is checked against the model's own values on the sample as it is built: a
canonical op that does not reproduce the model is a refusal, not a silent
change. Exact passes (BatchNorm folding, Dropout/Identity removal) follow,
each recorded as a :class:`~secure_infer.ir.Conversion`.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from secure_infer import layers
from secure_infer._errors import ParameterError, UnsupportedModelError
from secure_infer.ir import Conversion, Graph, GraphModule, Node, interpret, plaintext, structural

__all__ = ["Conversion", "Graph", "GraphModule", "Node", "interpret", "structural", "trace"]


# ---------------------------------------------------------------------------
# Tracing


class _Tracer(fx.Tracer):
    """Stop at torch.nn layers and secure-infer's own layers; trace through the rest.

    A user's custom module is traced into the ops it performs, so a backend
    needs rules for canonical ops only. Each node remembers the module whose
    ``forward`` produced it, for messages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        return type(m).__module__.startswith("torch.nn") or type(m).__module__ == layers.__name__

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["scope"] = getattr(getattr(self, "scope", None), "module_path", "") or ""
        return node


def _concrete_defaults(model: nn.Module) -> dict[str, Any]:
    """forward()'s parameters after the first that have defaults (``mask=None``): traced at their default."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params[1:]
            if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _trace_fx(model: nn.Module) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model, concrete_args=_concrete_defaults(model) or None)
    except Exception as exc:  # fx raises TraceError, TypeError, AttributeError...
        raise UnsupportedModelError(
            f"could not trace {type(model).__name__}: {exc}. secure-infer needs a forward() "
            "without data-dependent control flow (no `if x.sum() > 0`); move such logic "
            "outside the model or make it static",
            module_path="",
            module_type=type(model).__name__,
        ) from exc
    return fx.GraphModule(model, graph)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_clone(v) for v in value)
    return value


class _Recorder(fx.Interpreter):
    """Runs the traced model and keeps a copy of every node's value (in-place ops cannot change them)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = _clone(out)
        return out


def _record(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, Any]:
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(x)
    return recorder.values


# ---------------------------------------------------------------------------
# What an fx value stands for while converting


@dataclass
class _Data:
    """A value that depends on the input: an IR node."""

    name: str


@dataclass
class _Const:
    """A value that does not depend on the input: its value at both batch sizes."""

    a: Any
    b: Any


@dataclass
class _Split:
    """The tuple a chunk/split/unbind of data returns: pieces of ``source`` along ``dim``."""

    source: str
    dim: int
    pieces: list[Any]  # an int (unbind) or a slice per piece


@dataclass
class _Tuple:
    """A tuple of values (nn.MultiheadAttention's (output, weights)); None marks an unsupported item."""

    items: list[Any]
    why: str = ""


_Ref = _Data | _Const | _Split | _Tuple

_SIZE_QUERIES = {"size", "dim", "numel", "nelement", "ndimension"}
_SIZE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}


class _Unsupported(Exception):
    """Raised by a handler; turned into an UnsupportedModelError naming the node."""


@dataclass
class _Call:
    """One fx call being converted, with helpers to read its arguments."""

    conv: _Converter
    node: fx.Node
    path: str

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        args, kwargs = self.node.args, self.node.kwargs
        if name in kwargs:
            return kwargs[name]
        return args[index] if len(args) > index else default

    def value(self, raw: Any) -> Any:
        """A python value for a non-data argument (at the sample's batch size)."""
        return self.conv.value(raw)

    def data(self, raw: Any) -> str:
        ref = self.conv.ref(raw)
        if not isinstance(ref, _Data):
            raise _Unsupported("expected a value computed from the input here")
        return ref.name

    def is_data(self, raw: Any) -> bool:
        return isinstance(self.conv.ref(raw), _Data)


def _dim(dim: int, ndim: int) -> int:
    d = int(dim)
    if not -ndim <= d < max(ndim, 1):
        raise _Unsupported(f"dimension {dim} out of range for {ndim} dimensions")
    return d % ndim if ndim else 0


class _Converter:
    """FX graph -> canonical IR, node by node, checked against the model's own values."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module, rec_a: dict[str, Any], rec_b: dict[str, Any],
                 batch_a: int, batch_b: int, one_hot: int) -> None:
        self.gm = gm
        self.modules = dict(model.named_modules())
        self.rec_a, self.rec_b = rec_a, rec_b
        self.batch_a, self.batch_b = batch_a, batch_b
        self.one_hot = one_hot
        self.nodes: list[Node] = []
        self.vals_a: dict[str, Any] = {}
        self.vals_b: dict[str, Any] = {}
        self.env: dict[str, _Ref] = {}
        self.conversions: list[Conversion] = []
        self._names: set[str] = set()
        self._consts: dict[int, str] = {}

    # -- values -------------------------------------------------------------

    def ref(self, raw: Any) -> _Ref:
        if isinstance(raw, fx.Node):
            return self.env[raw.name]
        return _Const(raw, raw)

    def value(self, raw: Any) -> Any:
        if isinstance(raw, tuple | list):
            return type(raw)(self.value(r) for r in raw)
        if isinstance(raw, slice):
            return slice(self.value(raw.start), self.value(raw.stop), self.value(raw.step))
        ref = self.ref(raw)
        if not isinstance(ref, _Const):
            raise _Unsupported("a value computed from the input is used where a constant is needed "
                               "(a size, a dimension, an index): it must not depend on the data")
        return ref.a

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.vals_a[name].shape)

    def node_of(self, name: str) -> Node:
        for n in reversed(self.nodes):
            if n.name == name:
                return n
        raise KeyError(name)

    def _batch_dim(self, a: torch.Tensor, b: torch.Tensor) -> int | None:
        sa, sb = tuple(a.shape), tuple(b.shape)
        diffs = [i for i in range(min(len(sa), len(sb))) if sa[i] != sb[i]]
        if len(sa) == len(sb) and not diffs:
            return None
        if len(sa) == len(sb) and len(diffs) == 1 and sb[diffs[0]] - sa[diffs[0]] == self.batch_b - self.batch_a:
            return diffs[0]
        raise _Unsupported(f"the batch dimension is merged with another one (shape {sa} at batch size "
                           f"{self.batch_a}, {sb} at {self.batch_b}): keep it separate, e.g. reshape to "
                           "(B, N, -1) rather than (B * N, -1)")

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def emit(self, op: str, inputs: list[str], *, module: nn.Module | None = None, attrs: dict[str, Any] | None = None,
             path: str, name: str, check: fx.Node | None = None) -> str:
        """Add an IR node, compute its value at both batch sizes, and (``check``) compare with the model's."""
        node = Node(self._unique(name), op, tuple(inputs), module, path, dict(attrs or {}))
        try:
            with torch.no_grad():
                a = plaintext(node, [self.vals_a[i] for i in inputs], self.batch_a)
                b = plaintext(node, [self.vals_b[i] for i in inputs], self.batch_b)
        except Exception as exc:
            raise _Unsupported(f"{op} could not be evaluated on the sample ({type(exc).__name__}: {exc})") from exc
        node.batch_dim = self._batch_dim(a, b)
        if node.batch_dim is None:
            raise _Unsupported("the result no longer has a batch dimension: the model combines the inputs of "
                               "a batch (a mean or sum over dimension 0?); each input must be computed alone")
        node.shape = tuple(a.shape)
        if check is not None:
            expected = self.rec_a.get(check.name)
            if isinstance(expected, torch.Tensor) and not _close(a, expected):
                raise _Unsupported(f"secure-infer's {op} does not reproduce this operation on the sample "
                                   f"(max difference {_diff(a, expected):.3g})")
        self.vals_a[node.name], self.vals_b[node.name] = a, b
        self.nodes.append(node)
        return node.name

    def constant(self, ref: _Const, path: str, name: str) -> str:
        """An IR constant node for a tensor that does not depend on the input (emitted once per value)."""
        key = id(ref)
        if key in self._consts:
            return self._consts[key]
        a, b = ref.a, ref.b
        if not isinstance(a, torch.Tensor):
            a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        a, b = a.detach().float(), b.detach().float()
        if tuple(a.shape) == tuple(b.shape):
            batch_dim, value = None, a
        else:
            batch_dim = self._batch_dim(a, b)
            assert batch_dim is not None
            value = a.narrow(batch_dim, 0, 1)
            if not torch.equal(a, value.expand_as(a)):
                raise _Unsupported("a constant differs between inputs of the batch")
        node = Node(self._unique(name), "constant", (), layers.Constant(value, batch_dim), path)
        node.batch_dim = batch_dim
        self.vals_a[node.name] = node.module(self.batch_a)  # type: ignore[misc]
        self.vals_b[node.name] = node.module(self.batch_b)  # type: ignore[misc]
        node.shape = tuple(self.vals_a[node.name].shape)
        self.nodes.append(node)
        self._consts[key] = node.name
        return node.name

    def operand(self, raw: Any, path: str, name: str) -> str:
        """An IR name for a data or constant-tensor operand."""
        ref = self.ref(raw)
        if isinstance(ref, _Data):
            return ref.name
        if isinstance(ref, _Const):
            return self.constant(ref, path, name + "_const")
        raise _Unsupported("a tuple is used where a tensor is expected")

    # -- driving ------------------------------------------------------------

    def run(self) -> tuple[list[Node], str]:
        output = None
        for n in self.gm.graph.nodes:
            try:
                output = self._convert(n) or output
            except _Unsupported as exc:
                raise _refusal(n, str(exc)) from None
        assert output is not None
        return self.nodes, output

    def _convert(self, n: fx.Node) -> str | None:
        if n.op == "placeholder":
            if self.nodes:
                # a second input traced at its default (mask=None): a constant
                self.env[n.name] = _Const(self.rec_a.get(n.name), self.rec_b.get(n.name))
                return None
            x_a, x_b = self.rec_a[n.name], self.rec_b[n.name]
            if self.one_hot:
                x_a, x_b = F.one_hot(x_a.long(), self.one_hot).float(), F.one_hot(x_b.long(), self.one_hot).float()
            node = Node(self._unique(n.name), "input", shape=tuple(x_a.shape))
            self.vals_a[node.name], self.vals_b[node.name] = x_a, x_b
            self.nodes.append(node)
            self.env[n.name] = _Data(node.name)
            return None
        if n.op == "get_attr":
            self.env[n.name] = _Const(self.rec_a[n.name], self.rec_b[n.name])
            return None
        if n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node) or not isinstance(self.env.get(out.name), _Data):
                raise _Unsupported("the model must return one tensor computed from its input; wrap it so "
                                   "forward() returns the logits")
            src = self.env[out.name]
            assert isinstance(src, _Data)
            name = self.emit_output(src.name)
            return name
        inputs = [a for a in n.all_input_nodes]
        if not any(isinstance(self.env[a.name], _Data | _Split | _Tuple) for a in inputs) or _is_size_query(n):
            self.env[n.name] = _Const(self.rec_a.get(n.name), self.rec_b.get(n.name))
            return None
        call = _Call(self, n, _path_of(n))
        handler = self._handler(n)
        if handler is None:
            raise _Unsupported(_unsupported_message(n, self.modules))
        self.env[n.name] = handler(call)
        return None

    def emit_output(self, name: str) -> str:
        node = Node(self._unique("output"), "output", (name,), shape=self.shape(name))
        node.batch_dim = self.node_of(name).batch_dim
        self.vals_a[node.name], self.vals_b[node.name] = self.vals_a[name], self.vals_b[name]
        self.nodes.append(node)
        return node.name

    def _handler(self, n: fx.Node) -> Callable[[_Call], _Ref] | None:
        if n.op == "call_module":
            module = self.modules[str(n.target)]
            for cls in type(module).__mro__:
                if cls in _MODULES:
                    return lambda call: _MODULES[cls](call, module)
            return lambda call: _opaque_module(call, module)
        if n.op == "call_function":
            if n.target is operator.getitem:
                return _getitem
            if n.target is getattr:
                return _getattr
            return _FUNCTIONS.get(n.target)
        if n.op == "call_method":
            return _METHODS.get(str(n.target))
        return None


def _is_size_query(n: fx.Node) -> bool:
    if n.op == "call_method" and n.target in _SIZE_QUERIES:
        return True
    return n.op == "call_function" and n.target is getattr and len(n.args) > 1 and n.args[1] in _SIZE_ATTRS


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if tuple(a.shape) != tuple(b.shape):
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b.to(a.dtype)))
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5 * scale))


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if tuple(a.shape) != tuple(b.shape):
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _where(n: fx.Node) -> str:
    lines = (n.stack_trace or "").strip().splitlines()
    return lines[-1].strip() if lines else ""


def _path_of(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    scope = n.meta.get("scope", "")
    return f"{scope}.<{n.name}>" if scope else f"<{n.name}>"


def _refusal(n: fx.Node, why: str) -> UnsupportedModelError:
    path = _path_of(n)
    where = _where(n)
    name = getattr(n.target, "__name__", str(n.target))
    return UnsupportedModelError(f"{path}: {name}{f' at `{where}`' if where else ''}: {why}",
                                 module_path=path, module_type=name)


def _unsupported_message(n: fx.Node, modules: dict[str, nn.Module]) -> str:
    name = getattr(n.target, "__name__", str(n.target))
    return (f"operation {name!r} is not supported; the front end knows nn layers, activations, "
            "pooling, mean/sum, flatten/view/reshape/permute/indexing, +, -, *, / by constants, @ and "
            "torch.cat/stack: rewrite it with those, or keep it outside the wrapped model")


# ---------------------------------------------------------------------------
# Handlers: one per family of spellings, each emitting canonical nodes.


def _unary(call: _Call, op: str, module: nn.Module | None = None, attrs: dict[str, Any] | None = None,
           source: Any = None) -> _Data:
    x = call.data(call.node.args[0] if source is None else source)
    return _Data(call.conv.emit(op, [x], module=module, attrs=attrs, path=call.path, name=call.node.name,
                                check=call.node))


_ACTIVATION_OPS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.Hardtanh: "hardtanh", nn.LeakyReLU: "leaky_relu", nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh", nn.GELU: "gelu", nn.SiLU: "silu", nn.ELU: "elu", nn.Softplus: "softplus",
    nn.Mish: "mish", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
}


def _activation_module(call: _Call, module: nn.Module) -> _Ref:
    for cls in type(module).__mro__:
        if cls in _ACTIVATION_OPS:
            return _unary(call, _ACTIVATION_OPS[cls], copy.deepcopy(module))
    raise AssertionError(type(module))


def _activation(make: Callable[[_Call], nn.Module]) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        return _activation_module(call, make(call))

    return handler


def _softmax_dim(call: _Call, raw: Any, ndim: int) -> int:
    dim = call.value(raw)
    if dim is None:  # PyTorch's legacy implicit dimension
        dim = 0 if ndim in (0, 1, 3) else 1
    return _dim(dim, ndim)


def _softmax_like(kind: type[nn.Module]) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        x = call.data(call.node.args[0])
        ndim = len(call.conv.shape(x))
        dim = _softmax_dim(call, call.arg(1, "dim"), ndim)
        return _softmax_node(call, kind, dim)

    return handler


def _softmax_node(call: _Call, kind: type[nn.Module], dim: int, source: Any = None) -> _Data:
    x = call.data(call.node.args[0] if source is None else source)
    if call.conv.node_of(x).batch_dim == dim:
        raise _Unsupported("softmax over the batch dimension mixes inputs")
    op = "softmax" if kind is nn.Softmax else "log_softmax"
    return _Data(call.conv.emit(op, [x], module=kind(dim=dim), attrs={"dim": dim}, path=call.path,
                                name=call.node.name, check=call.node))


def _softmax_module(call: _Call, module: nn.Module) -> _Ref:
    x = call.data(call.node.args[0])
    ndim = len(call.conv.shape(x))
    if isinstance(module, nn.Softmax2d):
        return _softmax_node(call, nn.Softmax, _dim(-3, ndim))
    assert isinstance(module, nn.Softmax | nn.LogSoftmax)  # _MODULES sends only these three here
    dim = module.dim if module.dim is not None else (0 if ndim in (0, 1, 3) else 1)
    return _softmax_node(call, type(module) if type(module) in (nn.Softmax, nn.LogSoftmax) else nn.Softmax,
                         _dim(dim, ndim))


def _alias(call: _Call) -> _Ref:
    return call.conv.ref(call.node.args[0])


def _removed_module(call: _Call, module: nn.Module) -> _Ref:
    call.conv.conversions.append(Conversion(call.path, type(module).__name__, "removed",
                                            "identity at inference (eval mode)"))
    return _alias(call)


def _reshape(call: _Call, source: Any = None) -> _Ref:
    """Any reshape-like call: the target shape is read off the model's own values."""
    conv = call.conv
    x = call.data(call.node.args[0] if source is None else source)
    out_a, out_b = conv.rec_a[call.node.name], conv.rec_b[call.node.name]
    bd_out = conv._batch_dim(out_a, out_b)
    bd_in = conv.node_of(x).batch_dim
    if bd_out is None or bd_in is None:
        raise _Unsupported("the reshape removes the batch dimension")
    in_shape = conv.shape(x)
    if math.prod(in_shape[:bd_in]) != math.prod(out_a.shape[:bd_out]):
        raise _Unsupported("the reshape moves values between inputs of the batch")
    if tuple(out_a.shape) == tuple(in_shape):
        return _Data(x)
    shape = list(out_a.shape)
    shape[bd_out] = -1
    return _Data(conv.emit("reshape", [x], attrs={"shape": tuple(shape)}, path=call.path, name=call.node.name,
                           check=call.node))


def _reshape_module(call: _Call, module: nn.Module) -> _Ref:
    return _reshape(call)


def _permute_node(call: _Call, x: str, dims: list[int]) -> _Data:
    ndim = len(call.conv.shape(x))
    dims = [_dim(d, ndim) for d in dims]
    if sorted(dims) != list(range(ndim)):
        raise _Unsupported(f"{dims} is not a permutation of {ndim} dimensions")
    return _Data(call.conv.emit("permute", [x], attrs={"dims": tuple(dims)}, path=call.path, name=call.node.name,
                                check=call.node))


def _permute(call: _Call) -> _Ref:
    x = call.data(call.node.args[0])
    rest = call.node.args[1:] or (call.node.kwargs.get("dims"),)
    dims = call.value(rest[0]) if len(rest) == 1 and isinstance(call.value(rest[0]), tuple | list) else [
        call.value(d) for d in rest]
    return _permute_node(call, x, list(dims))


def _transpose(call: _Call) -> _Ref:
    x = call.data(call.node.args[0])
    ndim = len(call.conv.shape(x))
    a = _dim(call.value(call.arg(1, "dim0")), ndim)
    b = _dim(call.value(call.arg(2, "dim1")), ndim)
    dims = list(range(ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return _permute_node(call, x, dims)


def _t(call: _Call) -> _Ref:
    x = call.data(call.node.args[0])
    return _permute_node(call, x, list(range(len(call.conv.shape(x))))[::-1])


def _expand(call: _Call) -> _Ref:
    """``expand``/``expand_as``/``broadcast_to`` of a value: the target shape from the model's own values."""
    conv = call.conv
    x = call.data(call.node.args[0])
    out_a, out_b = conv.rec_a[call.node.name], conv.rec_b[call.node.name]
    bd = conv._batch_dim(out_a, out_b)
    if bd is None or bd != conv.node_of(x).batch_dim or out_a.dim() != len(conv.shape(x)):
        raise _Unsupported("expand may not add or move the batch dimension")
    shape = list(out_a.shape)
    shape[bd] = -1
    if tuple(out_a.shape) == conv.shape(x):
        return _Data(x)
    return _Data(conv.emit("expand", [x], attrs={"shape": tuple(shape)}, path=call.path, name=call.node.name,
                           check=call.node))


def _getattr(call: _Call) -> _Ref:
    attr = call.node.args[1]
    x = call.data(call.node.args[0])
    ndim = len(call.conv.shape(x))
    if attr == "T":
        return _permute_node(call, x, list(range(ndim))[::-1])
    if attr == "mT":
        dims = list(range(ndim))
        dims[-1], dims[-2] = dims[-2], dims[-1]
        return _permute_node(call, x, dims)
    raise _Unsupported(f"attribute {attr!r} of a value computed from the input")


def _index_spec(call: _Call, x: str, raw: Any) -> tuple[Any, ...]:
    idx = call.value(raw)
    idx = idx if isinstance(idx, tuple) else (idx,)
    ndim = len(call.conv.shape(x))
    consumed = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out: list[Any] = []
    for i in idx:
        if i is Ellipsis:
            out.extend([slice(None)] * (ndim - consumed))
        elif isinstance(i, bool) or not (i is None or isinstance(i, int | slice)):
            raise _Unsupported("only basic indexing (integers and slices) is supported, not tensor or mask indexing")
        else:
            out.append(i)
    bd = call.conv.node_of(x).batch_dim
    real = [i for i in out if i is not None]
    if bd is not None and bd < len(real) and real[bd] != slice(None):
        raise _Unsupported("indexing the batch dimension picks inputs of the batch; index the other dimensions")
    for i in real:
        if isinstance(i, slice) and i.step not in (None, 1) and not (isinstance(i.step, int) and i.step > 0):
            raise _Unsupported("slices need a positive step")
    return tuple(out)


def _getitem(call: _Call) -> _Ref:
    conv = call.conv
    src = conv.ref(call.node.args[0])
    if isinstance(src, _Split):
        k = call.value(call.node.args[1])
        piece = src.pieces[k]
        ndim = len(conv.shape(src.source))
        index = tuple([slice(None)] * src.dim + [piece] + [slice(None)] * (ndim - src.dim - 1))
        return _Data(conv.emit("getitem", [src.source], attrs={"index": index}, path=call.path, name=call.node.name,
                               check=call.node))
    if isinstance(src, _Tuple):
        k = call.value(call.node.args[1])
        item = src.items[k]
        if item is None:
            raise _Unsupported(src.why)
        return item
    assert isinstance(src, _Data)
    index = _index_spec(call, src.name, call.node.args[1])
    return _Data(conv.emit("getitem", [src.name], attrs={"index": index}, path=call.path, name=call.node.name,
                           check=call.node))


def _split(kind: str) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        x = call.data(call.node.args[0])
        shape = call.conv.shape(x)
        default_dim = 0
        dim = _dim(call.value(call.arg(2 if kind != "unbind" else 1, "dim", default_dim)), len(shape))
        if call.conv.node_of(x).batch_dim == dim:
            raise _Unsupported(f"{kind} along the batch dimension separates inputs of the batch")
        size = shape[dim]
        pieces: list[Any]
        if kind == "unbind":
            pieces = list(range(size))
        elif kind == "chunk":
            chunks = int(call.value(call.arg(1, "chunks")))
            step = -(-size // chunks)
            pieces = [slice(s, min(s + step, size)) for s in range(0, size, step)]
        else:
            sections = call.value(call.arg(1, "split_size_or_sections"))
            if isinstance(sections, int):
                pieces = [slice(s, min(s + sections, size)) for s in range(0, size, sections)]
            else:
                starts = [sum(sections[:i]) for i in range(len(sections))]
                pieces = [slice(s, s + n) for s, n in zip(starts, sections, strict=True)]
        return _Split(x, dim, pieces)

    return handler


def _cat(call: _Call) -> _Ref:
    raw = call.arg(0, "tensors")
    conv = call.conv
    parts = [conv.operand(r, call.path, f"{call.node.name}_{i}") for i, r in enumerate(raw)]
    ndim = len(conv.shape(parts[0]))
    dim = _dim(call.value(call.arg(1, "dim", 0)), ndim)
    return _Data(conv.emit("cat", parts, attrs={"dim": dim}, path=call.path, name=call.node.name, check=call.node))


def _stack(call: _Call) -> _Ref:
    raw = call.arg(0, "tensors")
    conv = call.conv
    parts = [conv.operand(r, call.path, f"{call.node.name}_{i}") for i, r in enumerate(raw)]
    ndim = len(conv.shape(parts[0])) + 1
    dim = _dim(call.value(call.arg(1, "dim", 0)), ndim)
    expanded = []
    for i, p in enumerate(parts):
        shape = list(conv.shape(p))
        bd = conv.node_of(p).batch_dim
        shape.insert(dim, 1)
        if bd is not None:
            shape[bd + (1 if dim <= bd else 0)] = -1
        expanded.append(conv.emit("reshape", [p], attrs={"shape": tuple(shape)}, path=call.path,
                                  name=f"{call.node.name}_unsqueeze{i}"))
    return _Data(conv.emit("cat", expanded, attrs={"dim": dim}, path=call.path, name=call.node.name,
                           check=call.node))


def _number(call: _Call, raw: Any) -> float | None:
    """A public number written in the code (not a tensor, which is model data)."""
    ref = call.conv.ref(raw)
    if isinstance(ref, _Const) and isinstance(ref.a, int | float) and not isinstance(ref.a, bool):
        if ref.a != ref.b:
            raise _Unsupported("a number in the computation depends on the batch size")
        return float(ref.a)
    return None


def _scale_shift(call: _Call, x: str, scale: float, shift: float) -> _Data:
    if scale == 1.0 and shift == 0.0:
        return _Data(x)
    return _Data(call.conv.emit("scale_shift", [x], attrs={"scale": scale, "shift": shift}, path=call.path,
                                name=call.node.name, check=call.node))


def _binary(kind: str) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        conv = call.conv
        a_raw, b_raw = call.node.args[0], call.arg(1, "other")
        a_data, b_data = call.is_data(a_raw), call.is_data(b_raw)
        a_num, b_num = _number(call, a_raw), _number(call, b_raw)
        alpha = call.value(call.node.kwargs.get("alpha", 1))
        if kind in ("add", "sub"):
            sign = -1.0 if kind == "sub" else 1.0
            if a_data and b_num is not None:
                return _scale_shift(call, call.data(a_raw), 1.0, sign * alpha * b_num)
            if b_data and a_num is not None:
                if sign < 0 or alpha != 1:
                    x = call.data(b_raw)
                    return _scale_shift(call, x, sign * alpha, a_num)
                return _scale_shift(call, call.data(b_raw), 1.0, a_num)
            left = conv.operand(a_raw, call.path, call.node.name + "_a")
            right = conv.operand(b_raw, call.path, call.node.name + "_b")
            return _Data(conv.emit("add", [left, right], attrs={"alpha": float(sign * alpha)}, path=call.path,
                                   name=call.node.name, check=call.node))
        if kind == "mul":
            if a_data and b_num is not None:
                return _scale_shift(call, call.data(a_raw), b_num, 0.0)
            if b_data and a_num is not None:
                return _scale_shift(call, call.data(b_raw), a_num, 0.0)
            if a_data and b_data and call.data(a_raw) == call.data(b_raw):
                return _unary(call, "square", layers.Square(), source=a_raw)
            left = conv.operand(a_raw, call.path, call.node.name + "_a")
            right = conv.operand(b_raw, call.path, call.node.name + "_b")
            return _Data(conv.emit("mul", [left, right], path=call.path, name=call.node.name, check=call.node))
        # division
        if not a_data:
            raise _Unsupported("division by a value computed from the input is not supported; "
                               "multiply by a constant instead")
        rounding = call.node.kwargs.get("rounding_mode")
        if rounding is not None:
            raise _Unsupported("rounding division is not supported")
        if b_num is not None:
            return _scale_shift(call, call.data(a_raw), 1.0 / b_num, 0.0)
        ref = conv.ref(b_raw)
        if not isinstance(ref, _Const):
            raise _Unsupported("division by a value computed from the input is not supported")
        inverse = _Const(1.0 / torch.as_tensor(ref.a).float(), 1.0 / torch.as_tensor(ref.b).float())
        right = conv.constant(inverse, call.path, call.node.name + "_reciprocal")
        return _Data(conv.emit("mul", [call.data(a_raw), right], path=call.path, name=call.node.name,
                               check=call.node))

    return handler


def _neg(call: _Call) -> _Ref:
    return _scale_shift(call, call.data(call.node.args[0]), -1.0, 0.0)


def _pow(call: _Call) -> _Ref:
    base, exponent = call.node.args[0], call.arg(1, "exponent")
    if not call.is_data(base):
        raise _Unsupported("a constant raised to a power computed from the input is not supported")
    e = _number(call, exponent)
    if e is None or e != int(e) or e < 1:
        raise _Unsupported(f"only positive integer powers are supported (got {e if e is not None else 'a tensor'})")
    if e == 1:
        return call.conv.ref(base)
    if e == 2:
        return _unary(call, "square", layers.Square(), source=base)
    coefficients = [0.0] * int(e) + [1.0]
    return _unary(call, "poly", layers.PolyActivation(coefficients, f"x**{int(e)}"), source=base)


def _square(call: _Call) -> _Ref:
    return _unary(call, "square", layers.Square())


def _matmul(call: _Call) -> _Ref:
    conv = call.conv
    a_raw, b_raw = call.node.args[0], call.arg(1, "other", call.node.kwargs.get("mat2"))
    a_data, b_data = call.is_data(a_raw), call.is_data(b_raw)
    if a_data and not b_data:
        ref = conv.ref(b_raw)
        if isinstance(ref, _Const) and isinstance(ref.a, torch.Tensor) and ref.a.dim() == 2 and torch.equal(
                torch.as_tensor(ref.a), torch.as_tensor(ref.b)):
            weight = ref.a.detach().float()
            layer = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
            with torch.no_grad():
                layer.weight.copy_(weight.t())
            return _unary(call, "linear", layer, source=a_raw)
    left = conv.operand(a_raw, call.path, call.node.name + "_a")
    right = conv.operand(b_raw, call.path, call.node.name + "_b")
    return _Data(conv.emit("matmul", [left, right], path=call.path, name=call.node.name, check=call.node))


def _reduce(op: str) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        x = call.data(call.node.args[0])
        shape = call.conv.shape(x)
        raw = call.arg(1, "dim")
        dims = call.value(raw)
        if dims is None or dims == []:
            raise _Unsupported(f"{op} over every dimension combines the inputs of a batch; give dim=")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted({_dim(d, len(shape)) for d in dims})
        if call.conv.node_of(x).batch_dim in dims:
            raise _Unsupported(f"{op} over the batch dimension combines the inputs of a batch")
        keepdim = bool(call.value(call.arg(2, "keepdim", False)))
        if call.node.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with dtype=")
        return _Data(call.conv.emit(op, [x], attrs={"dims": tuple(dims), "keepdim": keepdim}, path=call.path,
                                    name=call.node.name, check=call.node))

    return handler


def _argmax(call: _Call) -> _Ref:
    x = call.data(call.node.args[0])
    shape = call.conv.shape(x)
    dim = call.value(call.arg(1, "dim"))
    if dim is None:
        raise _Unsupported("argmax without dim= flattens the batch; give dim=")
    dim = _dim(dim, len(shape))
    keepdim = bool(call.value(call.arg(2, "keepdim", False)))
    return _Data(call.conv.emit("argmax", [x], attrs={"dim": dim, "keepdim": keepdim}, path=call.path,
                                name=call.node.name, check=call.node))


# -- layers written as functions with weights -----------------------------------


def _tensor_arg(call: _Call, raw: Any, what: str) -> torch.Tensor | None:
    if raw is None:
        return None
    ref = call.conv.ref(raw)
    if not isinstance(ref, _Const) or not isinstance(ref.a, torch.Tensor):
        raise _Unsupported(f"the {what} must be a weight of the model, not computed from the input")
    return ref.a.detach().float()


def _linear_fn(call: _Call) -> _Ref:
    weight = _tensor_arg(call, call.arg(1, "weight"), "weight")
    bias = _tensor_arg(call, call.arg(2, "bias"), "bias")
    assert weight is not None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return _unary(call, "linear", layer)


def _conv_fn(dims: int) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        weight = _tensor_arg(call, call.arg(1, "weight"), "weight")
        bias = _tensor_arg(call, call.arg(2, "bias"), "bias")
        assert weight is not None
        stride, padding = call.value(call.arg(3, "stride", 1)), call.value(call.arg(4, "padding", 0))
        dilation, groups = call.value(call.arg(5, "dilation", 1)), int(call.value(call.arg(6, "groups", 1)))
        in_channels, out_channels, kernel = weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:])
        layer: nn.Conv1d | nn.Conv2d
        if dims == 1:
            layer = nn.Conv1d(in_channels, out_channels, (kernel[0],), stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias is not None)
        else:
            layer = nn.Conv2d(in_channels, out_channels, (kernel[0], kernel[1]), stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                assert layer.bias is not None  # made with bias=True just above
                layer.bias.copy_(bias)
        return _unary(call, "conv", layer)

    return handler


def _layer_norm_fn(call: _Call) -> _Ref:
    shape = call.value(call.arg(1, "normalized_shape"))
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    weight = _tensor_arg(call, call.arg(2, "weight"), "weight")
    bias = _tensor_arg(call, call.arg(3, "bias"), "bias")
    eps = float(call.value(call.arg(4, "eps", 1e-5)))
    layer = nn.LayerNorm(shape, eps=eps, elementwise_affine=weight is not None, bias=bias is not None)
    with torch.no_grad():
        if weight is not None:
            layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return _unary(call, "layer_norm", layer)


def _batch_norm_fn(call: _Call) -> _Ref:
    mean = _tensor_arg(call, call.arg(1, "running_mean"), "running mean")
    var = _tensor_arg(call, call.arg(2, "running_var"), "running variance")
    weight = _tensor_arg(call, call.arg(3, "weight"), "weight")
    bias = _tensor_arg(call, call.arg(4, "bias"), "bias")
    training = bool(call.value(call.arg(5, "training", False)))
    eps = float(call.value(call.arg(7, "eps", 1e-5)))
    if mean is None or var is None or training:
        raise _Unsupported("batch_norm with batch statistics mixes the inputs of a batch; use running statistics")
    x = call.data(call.node.args[0])
    cls = nn.BatchNorm2d if len(call.conv.shape(x)) == 4 else nn.BatchNorm1d
    layer = cls(mean.numel(), eps=eps, affine=weight is not None or bias is not None).eval()
    # track_running_stats defaults to True, so the running buffers exist
    assert layer.running_mean is not None and layer.running_var is not None
    with torch.no_grad():
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
        if layer.affine:
            layer.weight.copy_(weight if weight is not None else torch.ones_like(mean))
            layer.bias.copy_(bias if bias is not None else torch.zeros_like(mean))
    return _unary(call, "batch_norm", layer)


def _embedding(call: _Call, weight: torch.Tensor, padding_idx: Any = None, max_norm: Any = None) -> _Ref:
    conv = call.conv
    x = call.data(call.node.args[0])
    if max_norm is not None:
        raise _Unsupported("Embedding(max_norm=...) renormalises rows per lookup; not supported")
    if conv.node_of(x).op != "input" or not conv.one_hot:
        raise _Unsupported("an embedding must read the model's own integer input (the data owner one-hot "
                           "encodes it); embeddings of computed indices are not supported")
    if weight.shape[0] != conv.one_hot:
        raise _Unsupported("every embedding of the input must have the same vocabulary size")
    layer = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight.t())
    return _unary(call, "linear", layer)


def _embedding_fn(call: _Call) -> _Ref:
    weight = _tensor_arg(call, call.arg(1, "weight"), "weight")
    assert weight is not None
    return _embedding(call, weight, max_norm=call.value(call.arg(3, "max_norm")))


def _embedding_module(call: _Call, module: nn.Module) -> _Ref:
    assert isinstance(module, nn.Embedding)
    return _embedding(call, module.weight.detach().float(), module.padding_idx, module.max_norm)


# -- pooling ---------------------------------------------------------------------


def _pool_node(call: _Call, kind: str, dims: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
               ceil_mode: bool, count_include_pad: bool = True, divisor_override: Any = None) -> _Ref:
    if kind == "max":
        module: nn.Module = layers.MaxPool(dims, kernel, stride, padding, dilation, ceil_mode)
        return _unary(call, "max_pool", module)
    module = layers.AvgPool(dims, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return _unary(call, "avg_pool", module)


def _pool_fn(kind: str, dims: int) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        kernel = call.value(call.arg(1, "kernel_size"))
        stride = call.value(call.arg(2, "stride"))
        padding = call.value(call.arg(3, "padding", 0))
        if kind == "max":
            dilation = call.value(call.arg(4, "dilation", 1))
            ceil_mode = bool(call.value(call.arg(5, "ceil_mode", False)))
            if call.value(call.arg(6, "return_indices", False)):
                raise _Unsupported("max pooling with return_indices=True")
            return _pool_node(call, kind, dims, kernel, stride, padding, dilation, ceil_mode)
        ceil_mode = bool(call.value(call.arg(4, "ceil_mode", False)))
        count_include_pad = bool(call.value(call.arg(5, "count_include_pad", True)))
        divisor = call.value(call.arg(6, "divisor_override")) if dims == 2 else None
        return _pool_node(call, kind, dims, kernel, stride, padding, 1, ceil_mode, count_include_pad, divisor)

    return handler


def _pool_module(call: _Call, module: nn.Module) -> _Ref:
    dims = 1 if isinstance(module, nn.MaxPool1d | nn.AvgPool1d) else 2
    if isinstance(module, nn.MaxPool1d | nn.MaxPool2d):
        if module.return_indices:
            raise _Unsupported("max pooling with return_indices=True")
        return _pool_node(call, "max", dims, module.kernel_size, module.stride, module.padding, module.dilation,
                          module.ceil_mode)
    assert isinstance(module, nn.AvgPool1d | nn.AvgPool2d)
    return _pool_node(call, "avg", dims, module.kernel_size, module.stride, module.padding, 1, module.ceil_mode,
                      module.count_include_pad, getattr(module, "divisor_override", None))


def _adaptive(call: _Call, kind: str, dims: int, output_size: Any) -> _Ref:
    x = call.data(call.node.args[0])
    shape = call.conv.shape(x)
    spatial = shape[-dims:]
    sizes = [output_size] * dims if isinstance(output_size, int) or output_size is None else list(output_size)
    if len(sizes) != dims:
        raise _Unsupported(f"output_size {output_size} for {dims}-d pooling")
    out = tuple(int(s) if s is not None else int(n) for s, n in zip(sizes, spatial, strict=True))
    if all(o == 1 for o in out):
        if kind == "avg":
            keep = {"dims": tuple(range(len(shape) - dims, len(shape))), "keepdim": True}
            return _Data(call.conv.emit("mean", [x], attrs=keep, path=call.path, name=call.node.name,
                                        check=call.node))
        return _pool_node(call, "max", dims, spatial, spatial, 0, 1, False)
    if all(n % o == 0 for n, o in zip(spatial, out, strict=True)):
        kernel = tuple(n // o for n, o in zip(spatial, out, strict=True))
        return _pool_node(call, kind, dims, kernel, kernel, 0, 1, False)
    if kind == "max":
        raise _Unsupported(f"adaptive max pooling from {spatial} to {out} has uneven windows; pool to a size "
                           "that divides the input, or use average pooling")
    return _unary(call, "adaptive_avg_pool", layers.AdaptiveAvgPool(out))


def _adaptive_fn(kind: str, dims: int) -> Callable[[_Call], _Ref]:
    def handler(call: _Call) -> _Ref:
        if kind == "max" and call.value(call.arg(2, "return_indices", False)):
            raise _Unsupported("adaptive max pooling with return_indices=True")
        return _adaptive(call, kind, dims, call.value(call.arg(1, "output_size")))

    return handler


def _adaptive_module(call: _Call, module: nn.Module) -> _Ref:
    kind = "max" if isinstance(module, nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d) else "avg"
    dims = 1 if isinstance(module, nn.AdaptiveMaxPool1d | nn.AdaptiveAvgPool1d) else 2
    if kind == "max" and module.return_indices:
        raise _Unsupported("adaptive max pooling with return_indices=True")
    return _adaptive(call, kind, dims, module.output_size)


# -- modules kept as they are ------------------------------------------------------


def _module_as(op: str) -> Callable[[_Call, nn.Module], _Ref]:
    def handler(call: _Call, module: nn.Module) -> _Ref:
        return _unary(call, op, copy.deepcopy(module))

    return handler


def _batch_norm_module(call: _Call, module: nn.Module) -> _Ref:
    assert isinstance(module, nn.modules.batchnorm._BatchNorm)
    if module.running_mean is None or module.running_var is None:
        raise _Unsupported(f"{type(module).__name__}(track_running_stats=False) normalises by each batch's own "
                           "statistics, which mixes inputs; train it with running statistics")
    return _unary(call, "batch_norm", copy.deepcopy(module).eval())


def _opaque_module(call: _Call, module: nn.Module) -> _Ref:
    """A torch.nn layer with no canonical op: kept, and refused by every backend with its name."""
    return _unary(call, "module", copy.deepcopy(module))


# -- attention ---------------------------------------------------------------------


def _attention(call: _Call, q: str, k: str, v: str, scale: float | None, prefix: str) -> str:
    """softmax(q @ k^T * scale) @ v over the last two dimensions, as canonical nodes."""
    conv, path = call.conv, call.path
    ndim = len(conv.shape(q))
    dims = list(range(ndim))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    kt = conv.emit("permute", [k], attrs={"dims": tuple(dims)}, path=path, name=f"{prefix}_kT")
    scores = conv.emit("matmul", [q, kt], path=path, name=f"{prefix}_scores")
    d = conv.shape(q)[-1]
    factor = 1.0 / math.sqrt(d) if scale is None else float(scale)
    scaled = conv.emit("scale_shift", [scores], attrs={"scale": factor, "shift": 0.0}, path=path,
                       name=f"{prefix}_scaled")
    last = ndim - 1
    weights = conv.emit("softmax", [scaled], module=nn.Softmax(dim=last), attrs={"dim": last}, path=path,
                        name=f"{prefix}_softmax")
    return conv.emit("matmul", [weights, v], path=path, name=f"{prefix}_context")


def _sdpa(call: _Call) -> _Ref:
    q, k, v = (call.data(call.arg(i, n)) for i, n in enumerate(("query", "key", "value")))
    if call.value(call.arg(3, "attn_mask")) is not None or call.value(call.arg(5, "is_causal", False)):
        raise _Unsupported("attention masks (attn_mask, is_causal) are not supported yet")
    if call.value(call.arg(7, "enable_gqa", False)):
        raise _Unsupported("grouped-query attention is not supported")
    out = _attention(call, q, k, v, call.value(call.arg(6, "scale")), call.node.name)
    if not _close(call.conv.vals_a[out], call.conv.rec_a[call.node.name]):
        raise _Unsupported("the expanded attention does not reproduce scaled_dot_product_attention")
    return _Data(out)


def _mha_module(call: _Call, module: nn.Module) -> _Ref:
    assert isinstance(module, nn.MultiheadAttention)
    conv, path, name = call.conv, call.path, call.node.name
    if module.bias_k is not None or module.add_zero_attn:
        raise _Unsupported("MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
    for key in ("key_padding_mask", "attn_mask"):
        if call.value(call.node.kwargs.get(key)) is not None:
            raise _Unsupported(f"MultiheadAttention with {key} is not supported yet")
    if call.value(call.node.kwargs.get("is_causal", False)):
        raise _Unsupported("MultiheadAttention with is_causal=True is not supported yet")
    args = call.node.args
    query = call.data(args[0])
    key = call.data(args[1] if len(args) > 1 else call.node.kwargs["key"])
    value = call.data(args[2] if len(args) > 2 else call.node.kwargs["value"])
    e, h = module.embed_dim, module.num_heads
    d = e // h
    if module._qkv_same_embed_dim:
        assert module.in_proj_weight is not None
        weights = module.in_proj_weight.detach().float().chunk(3)
    else:
        weights = tuple(w.detach().float() for w in (module.q_proj_weight, module.k_proj_weight,
                                                     module.v_proj_weight))
    biases = (module.in_proj_bias.detach().float().chunk(3) if module.in_proj_bias is not None
              else (None, None, None))
    heads = []
    for tag, src, w, b in zip("qkv", (query, key, value), weights, biases, strict=True):
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
        projected = conv.emit("linear", [src], module=layer, path=f"{path}.{tag}_proj", name=f"{name}_{tag}")
        seq = conv.shape(projected)[0 if not module.batch_first else 1]
        if module.batch_first:  # (B, L, E) -> (B, L, H, d) -> (B, H, L, d)
            split = conv.emit("reshape", [projected], attrs={"shape": (-1, seq, h, d)}, path=path,
                              name=f"{name}_{tag}_heads")
            heads.append(conv.emit("permute", [split], attrs={"dims": (0, 2, 1, 3)}, path=path,
                                   name=f"{name}_{tag}_bhld"))
        else:  # (L, B, E) -> (L, B, H, d) -> (B, H, L, d)
            split = conv.emit("reshape", [projected], attrs={"shape": (seq, -1, h, d)}, path=path,
                              name=f"{name}_{tag}_heads")
            heads.append(conv.emit("permute", [split], attrs={"dims": (1, 2, 0, 3)}, path=path,
                                   name=f"{name}_{tag}_bhld"))
    context = _attention(call, heads[0], heads[1], heads[2], None, name)
    seq = conv.shape(context)[2]
    if module.batch_first:
        merged = conv.emit("permute", [context], attrs={"dims": (0, 2, 1, 3)}, path=path, name=f"{name}_blhd")
        merged = conv.emit("reshape", [merged], attrs={"shape": (-1, seq, e)}, path=path, name=f"{name}_merge")
    else:
        merged = conv.emit("permute", [context], attrs={"dims": (2, 0, 1, 3)}, path=path, name=f"{name}_lbhd")
        merged = conv.emit("reshape", [merged], attrs={"shape": (seq, -1, e)}, path=path, name=f"{name}_merge")
    out_proj = nn.Linear(e, e, bias=module.out_proj.bias is not None)
    out_proj.load_state_dict(module.out_proj.state_dict())
    out = conv.emit("linear", [merged], module=out_proj, path=f"{path}.out_proj", name=f"{name}_out")
    expected = conv.rec_a[call.node.name]
    if not _close(conv.vals_a[out], expected[0] if isinstance(expected, tuple) else expected):
        raise _Unsupported("the expanded attention does not reproduce nn.MultiheadAttention on the sample")
    return _Tuple([_Data(out), None], "MultiheadAttention's attention weights are not supported: "
                                      "call it with need_weights=False and use only the output")


# ---------------------------------------------------------------------------
# The spelling tables


def _act(cls: type[nn.Module], **params: tuple[int, Any]) -> Callable[[_Call], _Ref]:
    """An activation written as a function: ``params`` maps keyword -> (position after the input, default)."""

    def make(call: _Call) -> nn.Module:
        kwargs = {k: call.value(call.arg(i, k, default)) for k, (i, default) in params.items()}
        return cls(**kwargs)

    return _activation(make)


_relu = _act(nn.ReLU)
_sigmoid = _act(nn.Sigmoid)
_tanh = _act(nn.Tanh)
_softmax = _softmax_like(nn.Softmax)
_log_softmax = _softmax_like(nn.LogSoftmax)
_add, _sub, _mul, _div = _binary("add"), _binary("sub"), _binary("mul"), _binary("div")

_FUNCTIONS: dict[Any, Callable[[_Call], _Ref]] = {
    F.relu: _relu, torch.relu: _relu, F.relu_: _relu, torch.relu_: _relu,
    F.relu6: _act(nn.ReLU6), F.hardtanh: _act(nn.Hardtanh, min_val=(1, -1.0), max_val=(2, 1.0)),
    F.leaky_relu: _act(nn.LeakyReLU, negative_slope=(1, 0.01)),
    torch.sigmoid: _sigmoid, F.sigmoid: _sigmoid, torch.tanh: _tanh, F.tanh: _tanh,
    F.gelu: _act(nn.GELU, approximate=(1, "none")), F.silu: _act(nn.SiLU), F.elu: _act(nn.ELU, alpha=(1, 1.0)),
    F.softplus: _act(nn.Softplus, beta=(1, 1.0), threshold=(2, 20.0)), F.mish: _act(nn.Mish),
    F.hardswish: _act(nn.Hardswish), F.hardsigmoid: _act(nn.Hardsigmoid),
    F.softmax: _softmax, torch.softmax: _softmax, F.log_softmax: _log_softmax, torch.log_softmax: _log_softmax,
    torch.flatten: _reshape, torch.reshape: _reshape, torch.squeeze: _reshape, torch.unsqueeze: _reshape,
    torch.permute: _permute, torch.transpose: _transpose, torch.swapaxes: _transpose, torch.t: _t,
    torch.broadcast_to: _expand,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.stack: _stack,
    torch.chunk: _split("chunk"), torch.split: _split("split"), torch.unbind: _split("unbind"),
    operator.add: _add, operator.iadd: _add, torch.add: _add,
    operator.sub: _sub, operator.isub: _sub, torch.sub: _sub, torch.subtract: _sub,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul, torch.multiply: _mul,
    operator.truediv: _div, operator.itruediv: _div, torch.div: _div, torch.true_divide: _div,
    operator.neg: _neg, torch.neg: _neg, operator.pow: _pow, torch.pow: _pow, torch.square: _square,
    operator.matmul: _matmul, torch.matmul: _matmul, torch.mm: _matmul, torch.bmm: _matmul,
    torch.mean: _reduce("mean"), torch.sum: _reduce("sum"), torch.argmax: _argmax,
    F.linear: _linear_fn, F.conv1d: _conv_fn(1), F.conv2d: _conv_fn(2), F.layer_norm: _layer_norm_fn,
    F.batch_norm: _batch_norm_fn, F.embedding: _embedding_fn,
    F.max_pool1d: _pool_fn("max", 1), F.max_pool2d: _pool_fn("max", 2), torch.max_pool1d: _pool_fn("max", 1),
    torch.max_pool2d: _pool_fn("max", 2), F.avg_pool1d: _pool_fn("avg", 1), F.avg_pool2d: _pool_fn("avg", 2),
    torch.avg_pool1d: _pool_fn("avg", 1),
    F.adaptive_avg_pool1d: _adaptive_fn("avg", 1), F.adaptive_avg_pool2d: _adaptive_fn("avg", 2),
    torch.adaptive_avg_pool1d: _adaptive_fn("avg", 1),
    F.adaptive_max_pool1d: _adaptive_fn("max", 1), F.adaptive_max_pool2d: _adaptive_fn("max", 2),
    F.scaled_dot_product_attention: _sdpa,
    F.dropout: _alias, F.dropout1d: _alias, F.dropout2d: _alias, F.alpha_dropout: _alias, torch.dropout: _alias,
    torch.clone: _alias, torch.detach: _alias,
}

_METHODS: dict[str, Callable[[_Call], _Ref]] = {
    "relu": _relu, "relu_": _relu, "sigmoid": _sigmoid, "sigmoid_": _sigmoid, "tanh": _tanh, "tanh_": _tanh,
    "softmax": _softmax, "log_softmax": _log_softmax,
    "flatten": _reshape, "view": _reshape, "reshape": _reshape, "squeeze": _reshape, "unsqueeze": _reshape,
    "view_as": _reshape, "reshape_as": _reshape, "squeeze_": _reshape, "unsqueeze_": _reshape,
    "permute": _permute, "transpose": _transpose, "swapaxes": _transpose, "t": _t,
    "expand": _expand, "expand_as": _expand, "broadcast_to": _expand,
    "chunk": _split("chunk"), "split": _split("split"), "unbind": _split("unbind"),
    "add": _add, "add_": _add, "__add__": _add, "__radd__": _add, "sub": _sub, "sub_": _sub,
    "mul": _mul, "mul_": _mul, "div": _div, "div_": _div, "neg": _neg, "pow": _pow, "square": _square,
    "matmul": _matmul, "mm": _matmul, "bmm": _matmul,
    "mean": _reduce("mean"), "sum": _reduce("sum"), "argmax": _argmax,
    "contiguous": _alias, "clone": _alias, "float": _alias, "to": _alias, "detach": _alias, "cpu": _alias,
    "requires_grad_": _alias, "type_as": _alias,
}

_MODULES: dict[type[nn.Module], Callable[[_Call, nn.Module], _Ref]] = {
    **{cls: _activation_module for cls in _ACTIVATION_OPS},
    nn.Softmax: _softmax_module, nn.LogSoftmax: _softmax_module, nn.Softmax2d: _softmax_module,
    nn.Linear: _module_as("linear"), nn.Conv1d: _module_as("conv"), nn.Conv2d: _module_as("conv"),
    nn.BatchNorm1d: _batch_norm_module, nn.BatchNorm2d: _batch_norm_module,
    nn.LayerNorm: _module_as("layer_norm"), nn.Embedding: _embedding_module,
    nn.MaxPool1d: _pool_module, nn.MaxPool2d: _pool_module, nn.AvgPool1d: _pool_module, nn.AvgPool2d: _pool_module,
    nn.AdaptiveAvgPool1d: _adaptive_module, nn.AdaptiveAvgPool2d: _adaptive_module,
    nn.AdaptiveMaxPool1d: _adaptive_module, nn.AdaptiveMaxPool2d: _adaptive_module,
    nn.Flatten: _reshape_module, nn.Unflatten: _reshape_module,
    nn.Dropout: _removed_module, nn.Dropout1d: _removed_module, nn.Dropout2d: _removed_module,
    nn.Dropout3d: _removed_module, nn.AlphaDropout: _removed_module, nn.FeatureAlphaDropout: _removed_module,
    nn.Identity: _removed_module, nn.MultiheadAttention: _mha_module,
    layers.Square: _module_as("square"), layers.PolyActivation: _module_as("poly"),
    layers.MaxPool: _module_as("max_pool"), layers.AvgPool: _module_as("avg_pool"),
    layers.AdaptiveAvgPool: _module_as("adaptive_avg_pool"),
}


# ---------------------------------------------------------------------------
# The entry point


def _validate(model: Any, sample_input: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ParameterError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(sample_input, torch.Tensor) or sample_input.dtype == torch.bool or sample_input.is_complex():
        raise ParameterError("sample_input must be a float torch.Tensor shaped (batch, ...) "
                             "(or integer token indices for a model that starts with nn.Embedding)")
    if sample_input.is_floating_point() and sample_input.dim() < 2:
        raise ParameterError(
            f"sample_input must have a batch dimension, got shape {tuple(sample_input.shape)}; "
            "use x[:1] rather than x[0]"
        )
    if sample_input.dim() < 1 or sample_input.shape[0] < 1:
        raise ParameterError("sample_input must hold at least one input (shape (batch, ...))")


def _vocabulary(gm: fx.GraphModule, modules: dict[str, nn.Module], sample: torch.Tensor) -> int:
    """For integer input: the vocabulary of the embeddings that read it (all must agree)."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    sizes: set[int] = set()
    for user in placeholder.users:
        if user.op == "call_module" and isinstance(embedding := modules.get(str(user.target)), nn.Embedding):
            sizes.add(embedding.num_embeddings)
        elif user.op == "call_function" and user.target is F.embedding:
            weight = user.args[1] if len(user.args) > 1 else user.kwargs.get("weight")
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                sizes.add(int(_get_attr(gm, str(weight.target)).shape[0]))
        else:
            raise UnsupportedModelError(
                "the model takes integer input but uses it outside an nn.Embedding "
                f"({user.name}); secure-infer one-hot encodes token indices for embeddings only",
                module_path=_path_of(user), module_type="input")
    if len(sizes) != 1:
        raise UnsupportedModelError("integer input must be read by embeddings of one vocabulary size",
                                    module_type="Embedding")
    vocabulary = sizes.pop()
    if int(sample.min()) < 0 or int(sample.max()) >= vocabulary:
        raise ParameterError(f"sample_input holds indices outside the vocabulary [0, {vocabulary})")
    return vocabulary


def _get_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def trace(model: nn.Module, sample_input: torch.Tensor) -> Graph:
    """Trace ``model`` on ``sample_input`` into a canonical :class:`~secure_infer.ir.Graph`.

    The model is not modified (the graph holds copies of its layers); it is
    put in eval mode for the trace and restored afterwards.

    Raises:
        ParameterError: the sample input is not a tensor with a batch dimension,
            or the model does not accept it.
        UnsupportedModelError: the model cannot be traced or uses an operation
            the front end does not know, naming where and what to do instead.
    """
    _validate(model, sample_input)
    was_training = model.training
    model.eval()
    try:
        sample_a = sample_input.detach()
        sample_b = torch.cat([sample_a, sample_a[:1]])
        with torch.no_grad():
            try:
                expected = model(sample_a)
            except Exception as exc:
                hint = ("" if sample_input.is_floating_point() else
                        "; integer input is for models that start with nn.Embedding, pass a float tensor otherwise")
                raise ParameterError(
                    f"the model does not accept sample_input of shape {tuple(sample_input.shape)}: {exc}{hint}"
                ) from exc
        root_is_leaf = _Tracer().is_leaf_module(model, "")
        root = nn.Sequential(model) if root_is_leaf else model
        gm = _trace_fx(root)
        rec_a = _record(gm, sample_a)
        try:
            rec_b = _record(gm, sample_b)
        except Exception as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} runs at batch size {len(sample_a)} but not {len(sample_b)} ({exc}); "
                "secure-infer needs a model that takes any batch size: reshape with x.size(0) or -1, "
                "not a fixed batch", module_type=type(model).__name__) from exc
        modules = dict(root.named_modules())
        one_hot = 0 if sample_a.is_floating_point() else _vocabulary(gm, modules, sample_a)
        converter = _Converter(gm, root, rec_a, rec_b, len(sample_a), len(sample_b), one_hot)
        nodes, _ = converter.run()
        if root_is_leaf:
            for n in nodes:
                if n.path == "0":
                    n.path = "(model)"
    finally:
        model.train(was_training)
    if not isinstance(expected, torch.Tensor):
        raise UnsupportedModelError(
            "the model must return one tensor; wrap it so forward() returns the logits",
            module_type=type(model).__name__,
        )
    graph = Graph(nodes, nodes[0].shape, nodes[-1].shape, list(converter.conversions), one_hot=one_hot)
    _prune(graph)
    _fold_batchnorm(graph)
    _silu(graph)
    _split_epilogue(graph)
    got = graph.run(sample_a)
    if tuple(got.shape) != tuple(expected.shape) or not _close(got, expected):
        raise UnsupportedModelError(
            f"the traced program differs from {type(model).__name__} on the sample (max difference "
            f"{_diff(got, expected):.3g}); please report this model", module_type=type(model).__name__)
    return graph


# ---------------------------------------------------------------------------
# Exact passes


def _replace_uses(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        n.inputs = tuple(new if i == old else i for i in n.inputs)


def _prune(graph: Graph) -> None:
    """Drop nodes nothing on the way to the output uses (attention weights, unused chunks)."""
    live = {graph.output.name}
    for node in reversed(graph.nodes):
        if node.name in live:
            live.update(node.inputs)
    graph.nodes = [n for n in graph.nodes if n.name in live or n.op == "input"]


def _fold_batchnorm(graph: Graph) -> None:
    """Fold each BatchNorm that directly follows a Conv/Linear used only by it."""
    for bn in list(graph.nodes):
        if bn.op != "batch_norm":
            continue
        assert isinstance(bn.module, nn.modules.batchnorm._BatchNorm)
        prev = graph.node(bn.inputs[0])
        if prev.op not in ("conv", "linear") or len(graph.users(prev.name)) != 1:
            continue
        if prev.op == "linear" and len(bn.shape) != 2:
            continue  # BatchNorm1d over (B, C, L) normalises dim 1, a linear's output is its last dim
        assert bn.module.running_var is not None and bn.module.running_mean is not None
        layer = prev.module
        assert isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d)
        var, mean = bn.module.running_var, bn.module.running_mean
        scale = bn.module.weight.detach() if bn.module.affine else torch.ones_like(var)
        shift = bn.module.bias.detach() if bn.module.affine else torch.zeros_like(var)
        factor = scale / torch.sqrt(var + bn.module.eps)
        with torch.no_grad():
            w = layer.weight.detach()
            layer.weight.copy_(w * factor.reshape(-1, *([1] * (w.dim() - 1))))
            bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(factor)
            new_bias = (bias - mean) * factor + shift
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias)
            else:
                layer.bias.copy_(new_bias)
        graph.conversions.append(
            Conversion(bn.path, type(bn.module).__name__, "folded", f"folded into {prev.path} (exact)")
        )
        _replace_uses(graph, bn.name, prev.name)
        graph.nodes.remove(bn)


def _silu(graph: Graph) -> None:
    """``x * sigmoid(x)`` is SiLU: one activation instead of a product of two values."""
    for node in list(graph.nodes):
        if node.op != "mul":
            continue
        a, b = (graph.node(i) for i in node.inputs)
        for x, s in ((a, b), (b, a)):
            if s.op == "sigmoid" and s.inputs == (x.name,) and len(graph.users(s.name)) == 1:
                node.op, node.inputs, node.module = "silu", (x.name,), nn.SiLU()
                graph.nodes.remove(s)
                break


def _split_epilogue(graph: Graph) -> None:
    """Move a trailing softmax/log_softmax/sigmoid/argmax chain out of the core: it runs after decryption."""
    from secure_infer.ir import EPILOGUE_OPS

    epilogue: list[Node] = []
    while True:
        out = graph.output
        prev = graph.node(out.inputs[0])
        if prev.op not in EPILOGUE_OPS or len(graph.users(prev.name)) != 1:
            break
        source = graph.node(prev.inputs[0])
        if source.op == "input":
            break  # nothing would be left to encrypt
        epilogue.insert(0, prev)
        graph.nodes.remove(prev)
        out.inputs = (source.name,)
        out.shape, out.batch_dim = source.shape, source.batch_dim
    graph.output_shape = graph.output.shape
    graph.epilogue = epilogue
    for node in epilogue:
        graph.conversions.append(Conversion(
            node.path, node.type_name if node.module is not None else node.op, "epilogue",
            "runs where the result is decrypted (client side), in plaintext: exact"))
