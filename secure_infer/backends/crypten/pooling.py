"""Pooling under CrypTen, 1-d and 2-d (a 1-d pool runs as a 2-d pool of height 1).

Average pooling is a public linear map (local, no communication); max-pooling
needs a tree of secure comparisons and is the costliest layer in LeNet-style
networks, which is why the MPC-aware rewrites offer AvgPool instead.
"""

from __future__ import annotations

from typing import Any

from secure_infer.backends.crypten._rules import RULES, Apply, Share, module_of, unsupported
from secure_infer.ir import Node
from secure_infer.layers import AdaptiveAvgPool


def _as_2d(module: Any) -> tuple[tuple[int, ...], ...]:
    """(kernel, stride, padding) as 2-d tuples: 1-d pools get a height of 1."""
    if module.dims == 2:
        return module.kernel_size, module.stride, module.padding
    return (1, *module.kernel_size), (1, *module.stride), (0, *module.padding)


def _run_2d(x: Any, dims: int, pool: Any) -> Any:
    if dims == 2:
        return pool(x)
    return pool(x.unsqueeze(-2)).squeeze(-2)


@RULES.register("max_pool", detail="log-reduction tree of secure comparisons; exact")
def max_pool(node: Node, share: Share) -> Apply:
    module = module_of(node)
    if module.ceil_mode:
        raise unsupported(node, "(ceil_mode=True) is not supported; pad the input instead and use ceil_mode=False")
    if any(module.padding):
        raise unsupported(node, "with padding is not supported (CrypTen pads with zeros, PyTorch with -inf); "
                                "pad before a ReLU, or pool without padding")
    if any(d != 1 for d in module.dilation):
        raise unsupported(node, "with dilation is not supported")
    kernel, stride, _ = _as_2d(module)
    return lambda args, batch: _run_2d(args[0], module.dims, lambda t: t.max_pool2d(kernel, stride=stride))


@RULES.register("avg_pool", detail="public linear map, no communication; exact up to fixed point")
def avg_pool(node: Node, share: Share) -> Apply:
    module = module_of(node)
    if module.ceil_mode:
        raise unsupported(node, "(ceil_mode=True) is not supported; pad the input instead and use ceil_mode=False")
    if any(module.padding) and not module.count_include_pad:
        raise unsupported(node, "(count_include_pad=False) with padding is not supported")
    kernel, stride, padding = _as_2d(module)
    area = kernel[0] * kernel[1]
    factor = area / module.divisor_override if module.divisor_override else 1.0

    def apply(args: list[Any], batch: int) -> Any:
        y = _run_2d(args[0], module.dims, lambda t: t.avg_pool2d(kernel, stride=stride, padding=padding))
        return y * factor if factor != 1.0 else y

    return apply


@RULES.register("adaptive_avg_pool", detail="public averaging matrix per dimension, local; exact up to fixed point")
def adaptive_avg_pool(node: Node, share: Share) -> Apply:
    module = module_of(node)
    out_sizes = module.output_size

    def apply(args: list[Any], batch: int) -> Any:
        x = args[0]
        sizes = tuple(x.size())[-module.dims:]
        for k, (n, m) in enumerate(zip(sizes, out_sizes, strict=True)):
            matrix = AdaptiveAvgPool.matrix(n, m).t()
            axis = x.dim() - module.dims + k
            if axis == x.dim() - 1:
                x = x.matmul(matrix)
            else:
                x = x.transpose(axis, -1).matmul(matrix).transpose(axis, -1)
        return x

    return apply
