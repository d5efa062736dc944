"""MPC/HE-aware rewrites: offered, never applied silently.

Comparisons (ReLU, max) dominate secret-shared inference; HE cannot do them at
all. These graph rewrites trade a little fidelity, or none, for speed:

* ``pool-before-relu``: ``ReLU -> MaxPool`` becomes ``MaxPool -> ReLU``. Max and
  ReLU commute, so this is exact and runs ReLU on 1/k² as many values. Applied
  to ``ReLU -> AvgPool`` it is *not* exact and is reported as a replacement.
* ``maxpool-to-avgpool``: MaxPool2d becomes AvgPool2d of the same window: no
  comparisons at all, but a different function, so fine-tune afterwards
  (:func:`fine_tune`) to win the accuracy back.

Every change is recorded as a :class:`~secure_infer.graph.Conversion`, with its
measured effect on the sample input, and ``wrap(..., rewrites=[...])`` lists it
in ``report()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from secure_infer._errors import ParameterError
from secure_infer.datasets import Dataset
from secure_infer.graph import Conversion, Graph, GraphModule, trace
from secure_infer.layers import AvgPool, MaxPool

__all__ = ["AVAILABLE", "RewriteResult", "apply", "fine_tune", "rewrite_model"]


def _maxpool_to_avgpool(graph: Graph) -> list[Conversion]:
    changes = []
    for node in graph.nodes:
        if node.op == "max_pool":
            mp = node.module
            assert isinstance(mp, MaxPool)
            if any(d != 1 for d in mp.dilation):
                continue  # average pooling has no dilation: leave this one as it is
            node.op = "avg_pool"
            node.module = AvgPool(mp.dims, mp.kernel_size, mp.stride, mp.padding, ceil_mode=mp.ceil_mode)
            changes.append(Conversion(node.path, "MaxPool", "replaced",
                                      "maxpool-to-avgpool: average pooling of the same window (no comparisons)"))
    return changes


def _pool_before_relu(graph: Graph) -> list[Conversion]:
    changes = []
    for pool in list(graph.nodes):
        if pool.op not in ("max_pool", "avg_pool"):
            continue
        relu = graph.node(pool.inputs[0])
        if relu.op != "relu" or len(graph.users(relu.name)) != 1:
            continue
        # relu(x) -> pool  ==>  pool(x) -> relu ; users of pool now read relu
        for user in graph.users(pool.name):
            user.inputs = tuple(relu.name if i == pool.name else i for i in user.inputs)
        pool.inputs, relu.inputs = relu.inputs, (pool.name,)
        relu.shape = pool.shape
        i, j = graph.nodes.index(relu), graph.nodes.index(pool)
        graph.nodes[i], graph.nodes[j] = graph.nodes[j], graph.nodes[i]
        exact = pool.op == "max_pool"
        changes.append(Conversion(
            relu.path, "ReLU", "reordered" if exact else "replaced",
            f"pool-before-relu: ReLU moved after {pool.type_name} {pool.path}"
            + (" (exact: max and ReLU commute)" if exact else " (not exact for average pooling)"),
        ))
    return changes


AVAILABLE: dict[str, Callable[[Graph], list[Conversion]]] = {
    "maxpool-to-avgpool": _maxpool_to_avgpool,
    "pool-before-relu": _pool_before_relu,
}
_ORDER = list(AVAILABLE)  # replacing max pools first lets pool-before-relu see the new pools


def apply(graph: Graph, rewrites: Sequence[str], sample_input: torch.Tensor | None = None) -> Graph:
    """A rewritten copy of ``graph``; each change is appended to its conversions.

    With ``sample_input``, each change records the whole model's max abs output
    change on it, measured in plaintext.
    """
    if isinstance(rewrites, str):
        rewrites = [rewrites]
    unknown = [r for r in rewrites if r not in AVAILABLE]
    if unknown:
        raise ParameterError(f"unknown rewrite(s) {unknown}; choose from {', '.join(AVAILABLE)}")
    out = copy.deepcopy(graph)
    reference = graph.run(sample_input) if sample_input is not None else None
    for name in sorted(set(rewrites), key=_ORDER.index):
        changes = AVAILABLE[name](out)
        if reference is not None and sample_input is not None and changes:
            err = float((out.run(sample_input) - reference).abs().max())
            changes = [Conversion(c.path, c.layer, c.kind, c.detail, err) for c in changes]
        out.conversions.extend(changes)
    return out


@dataclass
class RewriteResult:
    """A rewritten model, ready to fine-tune or wrap, and what changed."""

    model: GraphModule
    changes: list[Conversion]


def rewrite_model(model: nn.Module, sample_input: torch.Tensor, rewrites: Sequence[str]) -> RewriteResult:
    """Apply ``rewrites`` to a PyTorch model, returning a trainable module.

    The original model is untouched. Wrap the result like any model.
    """
    graph = trace(model, sample_input)
    before = len(graph.conversions)
    rewritten = apply(graph, rewrites, sample_input)
    return RewriteResult(GraphModule(rewritten), rewritten.conversions[before:])


def fine_tune(model: nn.Module, data: Dataset, *, epochs: int = 20, lr: float = 5e-3, seed: int = 0) -> nn.Module:
    """Retrain ``model`` (for instance after ``maxpool-to-avgpool``) on ``data``, in place.

    The defaults are the zoo's LeNet training settings: on the digits data they
    bring ``maxpool-to-avgpool`` back to within a fraction of a point.
    """
    from secure_infer.zoo import TrainConfig, train

    return train(model, data, TrainConfig(epochs=epochs, lr=lr), seed=seed)
