"""Pooling and reshaping under CrypTen.

Average pooling is a public linear map (local, no communication); max-pooling
needs a tree of secure comparisons and is the costliest layer in LeNet-style
networks, which is why the MPC-aware rewrites offer AvgPool instead.
"""

from __future__ import annotations

from torch import nn

from secure_infer._errors import UnsupportedModelError
from secure_infer.backends.crypten._rules import RULES, Apply, Share
from secure_infer.graph import Node


def _no_ceil(module: nn.Module, node: Node) -> None:
    if getattr(module, "ceil_mode", False):
        raise UnsupportedModelError(
            f"{node.path}: {type(module).__name__}(ceil_mode=True) is not supported; "
            "pad the input instead and use ceil_mode=False",
            module_path=node.path,
            module_type=type(module).__name__,
        )


@RULES.register(nn.MaxPool2d, detail="log-reduction tree of secure comparisons; exact")
def max_pool(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.MaxPool2d)
    _no_ceil(module, node)
    stride = module.stride if module.stride is not None else module.kernel_size
    kwargs = {"padding": module.padding, "stride": stride, "dilation": module.dilation}
    return lambda x: x.max_pool2d(module.kernel_size, **kwargs)


@RULES.register(nn.AvgPool2d, detail="public linear map, no communication; exact up to fixed point")
def avg_pool(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.AvgPool2d)
    _no_ceil(module, node)
    if module.padding and module.count_include_pad is False:
        raise UnsupportedModelError(
            f"{node.path}: AvgPool2d(count_include_pad=False) with padding is not supported",
            module_path=node.path,
            module_type="AvgPool2d",
        )
    stride = module.stride if module.stride is not None else module.kernel_size
    return lambda x: x.avg_pool2d(module.kernel_size, stride=stride, padding=module.padding)


@RULES.register(nn.AdaptiveAvgPool2d, detail="public linear map; exact up to fixed point")
def adaptive_avg_pool(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.AdaptiveAvgPool2d)
    return lambda x: x.adaptive_avg_pool2d(module.output_size)


@RULES.register(nn.AdaptiveMaxPool2d, detail="secure comparisons per window; exact")
def adaptive_max_pool(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.AdaptiveMaxPool2d)
    return lambda x: x.adaptive_max_pool2d(module.output_size)


@RULES.register(nn.Flatten, nn.Unflatten, detail="reshape of shares, local")
def flatten(module: nn.Module, node: Node, share: Share) -> Apply:
    feature_shape = node.shape[1:]
    return lambda x: x.reshape(x.size(0), *feature_shape)
