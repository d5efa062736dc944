"""Linear and convolution layers under CrypTen: exact in fixed point.

The weights are secret-shared by the model owner, so every product is a
Beaver-triple multiplication of two shared values (one round each).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from secure_infer.backends.crypten._rules import RULES, Apply, Share, module_of, unsupported
from secure_infer.ir import Node

FIXED_POINT = "exact up to CrypTen's 16-bit fixed-point encoding"


@RULES.register("linear", detail=f"shared weights, x @ W^T + b; {FIXED_POINT}")
def linear(node: Node, share: Share) -> Apply:
    module = module_of(node)
    assert isinstance(module, nn.Linear)
    weight_t = share(module.weight.detach().t().contiguous())
    bias = share(module.bias.detach()) if module.bias is not None else None

    def apply(args: list[Any], batch: int) -> Any:
        y = args[0].matmul(weight_t)
        return y + bias if bias is not None else y

    return apply


def _padding(node: Node, module: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    if module.padding_mode != "zeros":
        raise unsupported(node, f"with padding_mode={module.padding_mode!r}; use zero padding")
    if module.padding == "valid":
        return (0,) * len(module.kernel_size)
    if module.padding == "same":
        spans = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(s % 2 for s in spans):
            raise unsupported(node, "with padding='same' and an even kernel pads unevenly; give integer padding")
        return tuple(s // 2 for s in spans)
    return tuple(module.padding)  # type: ignore[arg-type]


@RULES.register("conv", detail=f"shared kernels, stride/padding/dilation/groups; {FIXED_POINT}")
def conv(node: Node, share: Share) -> Apply:
    module = module_of(node)
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    padding = _padding(node, module)
    kernel = share(module.weight.detach())
    bias = share(module.bias.detach()) if module.bias is not None else None
    two_d = isinstance(module, nn.Conv2d)
    kwargs = {"stride": module.stride, "padding": padding, "dilation": module.dilation, "groups": module.groups}

    def apply(args: list[Any], batch: int) -> Any:
        x = args[0]
        y = x.conv2d(kernel, **kwargs) if two_d else x.conv1d(kernel, **kwargs)
        if bias is None:
            return y
        return y + bias.reshape(1, -1, *([1] * (y.dim() - 2)))

    return apply
