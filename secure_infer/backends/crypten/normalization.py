"""BatchNorm (when it cannot be folded) and LayerNorm under CrypTen.

BatchNorm at inference is a fixed per-channel scale and shift (shared weights).
LayerNorm divides each input by its own standard deviation: the mean and the
variance are local sums and one Beaver square, and the inverse square root is
computed by Newton-Raphson iterations started below the smallest answer, so
they rise monotonically to it. The iteration count is chosen from the range of
variances the layer sees on the sample (``attrs["variance_range"]``, set when
the program is built), widened on both sides; the report states that range.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from secure_infer.backends.crypten._rules import RULES, Apply, Share, module_of
from secure_infer.backends.crypten.linear import FIXED_POINT
from secure_infer.ir import Node

WIDEN = 16.0
"""The variance range a LayerNorm handles: the sample's, widened this many times on each side."""


@RULES.register(
    "batch_norm", detail=f"not foldable here: per-channel scale and shift from running statistics; {FIXED_POINT}",
)
def batchnorm(node: Node, share: Share) -> Apply:
    module = module_of(node)
    assert isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
    var, mean = module.running_var, module.running_mean
    if var is None or mean is None:
        var, mean = torch.ones(module.num_features), torch.zeros(module.num_features)
    weight = module.weight.detach() if module.affine else torch.ones_like(var)
    bias = module.bias.detach() if module.affine else torch.zeros_like(var)
    scale_plain = weight / torch.sqrt(var + module.eps)
    scale = share(scale_plain)
    shift = share(bias - mean * scale_plain)

    def apply(args: list[Any], batch: int) -> Any:
        x = args[0]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return x * scale.reshape(shape) + shift.reshape(shape)

    return apply


def newton_iterations(low: float, high: float, tolerance: float = 1e-4) -> int:
    """Iterations of ``y <- y (3 - v y^2) / 2`` from ``y0 = 1/sqrt(high)`` until every ``v`` in
    ``[low, high]`` has relative error below ``tolerance`` (the slowest is ``v = low``)."""
    t, steps = math.sqrt(low / high), 0
    while 1.0 - t > tolerance and steps < 60:
        t, steps = t * (3.0 - t * t) / 2.0, steps + 1
    return steps


def variance_bounds(node: Node) -> tuple[float, float]:
    """The variance range the rule is built for: the sample's, widened by :data:`WIDEN`."""
    low, high = node.attrs.get("variance_range", (1e-2, 1e2))
    module = module_of(node)
    low = max(float(low), 0.0) + float(module.eps)
    return low / WIDEN, max(float(high) + float(module.eps), low) * WIDEN


@RULES.register("layer_norm", kind="approximated",
                detail="mean and variance on shares, inverse square root by Newton-Raphson")
def layer_norm(node: Node, share: Share) -> Apply:
    module = module_of(node)
    assert isinstance(module, nn.LayerNorm)
    dims = tuple(range(-len(module.normalized_shape), 0))
    low, high = variance_bounds(node)
    steps = newton_iterations(low, high)
    y0 = 1.0 / math.sqrt(high)
    weight = share(module.weight.detach()) if module.weight is not None else None
    bias = share(module.bias.detach()) if module.bias is not None else None
    eps = float(module.eps)

    def apply(args: list[Any], batch: int) -> Any:
        x = args[0]
        centered = x - x.mean(dim=dims, keepdim=True)
        v = (centered * centered).mean(dim=dims, keepdim=True) + eps
        y = (v * (-y0 * y0) + 3.0) * (y0 / 2.0)  # first step: y0 is public, so no multiplication of shares
        for _ in range(steps - 1):
            y = y * ((v * (y * y)) * -0.5 + 1.5)
        out = centered * y
        if weight is not None:
            out = out * weight
        return out + bias if bias is not None else out

    return apply
