"""Weightless ops under CrypTen: reshapes, indexing, sums, products, and constants.

Data movement (reshape, permute, indexing, concatenation) and sums are local
to each party: no communication. Numbers written in the model's code
(``scale_shift``) are public, so multiplying by them is local too. A product
of two secret values (``mul``, ``matmul``: attention scores, a gate) is a
Beaver-triple multiplication, one round. Constants (a class token, a
positional embedding) are model-owner data, shared once like weights.
"""

from __future__ import annotations

from typing import Any

from secure_infer.backends.crypten._rules import RULES, Apply, Share, module_of
from secure_infer.ir import Node, structural


def _crypten() -> Any:
    from secure_infer._crypten_compat import load_crypten

    return load_crypten()


@RULES.register("reshape", "permute", "expand", "getitem", "cat", "add", "scale_shift", listed=False,
                detail="local to each party")
def local(node: Node, share: Share) -> Apply:
    cat = _crypten().cat if node.op == "cat" else None
    return lambda args, batch: structural(node, args, cat=cat) if cat else structural(node, args)


@RULES.register("mean", "sum", detail="sum of shares, local; the mean divides by a public count")
def reduce(node: Node, share: Share) -> Apply:
    return lambda args, batch: structural(node, args)


@RULES.register("mul", "matmul", detail="product of two secret values: Beaver triples, one round; exact up to fixed point")
def product(node: Node, share: Share) -> Apply:
    return lambda args, batch: structural(node, args)


@RULES.register("constant", detail="model-owner constant, secret-shared once", listed=False)
def constant(node: Node, share: Share) -> Apply:
    layer = module_of(node)
    value = share(layer.value)
    batch_dim = layer.batch_dim

    def apply(args: list[Any], batch: int) -> Any:
        if batch_dim is None:
            return value
        shape = list(value.size())
        shape[batch_dim] = batch
        return value.expand(*shape)

    return apply
