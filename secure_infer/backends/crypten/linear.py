"""Linear, convolution and unfolded BatchNorm under CrypTen: exact in fixed point.

The weights are secret-shared by the model owner, so every product is a
Beaver-triple multiplication of two shared values (one round each).
"""

from __future__ import annotations

from torch import nn

from secure_infer.backends.crypten._rules import RULES, Apply, Share
from secure_infer.graph import Node

_FIXED_POINT = "exact up to CrypTen's 16-bit fixed-point encoding"


@RULES.register(nn.Linear, detail=f"shared weights, x @ W^T + b; {_FIXED_POINT}")
def linear(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.Linear)
    weight_t = share(module.weight.detach().t().contiguous())
    bias = share(module.bias.detach()) if module.bias is not None else None

    def apply(x):
        y = x.matmul(weight_t)
        return y + bias if bias is not None else y

    return apply


@RULES.register(nn.Conv1d, nn.Conv2d, detail=f"shared kernels, stride/padding/dilation/groups; {_FIXED_POINT}")
def conv(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        from secure_infer._errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{node.path}: {type(module).__name__} with padding={module.padding!r}, "
            f"padding_mode={module.padding_mode!r}; use integer zero padding",
            module_path=node.path,
            module_type=type(module).__name__,
        )
    kernel = share(module.weight.detach())
    bias = share(module.bias.detach()) if module.bias is not None else None
    two_d = isinstance(module, nn.Conv2d)
    kwargs = {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
    }

    def apply(x):
        y = x.conv2d(kernel, **kwargs) if two_d else x.conv1d(kernel, **kwargs)
        if bias is None:
            return y
        return y + bias.reshape(1, -1, *([1] * (y.dim() - 2)))

    return apply


@RULES.register(
    nn.BatchNorm1d, nn.BatchNorm2d,
    detail=f"not foldable here: per-channel scale and shift from running statistics; {_FIXED_POINT}",
)
def batchnorm(module: nn.Module, node: Node, share: Share) -> Apply:
    assert isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
    import torch

    var, mean = module.running_var, module.running_mean
    if var is None or mean is None:
        var, mean = torch.ones(module.num_features), torch.zeros(module.num_features)
    weight = module.weight.detach() if module.affine else torch.ones_like(var)
    bias = module.bias.detach() if module.affine else torch.zeros_like(var)
    scale_plain = weight / torch.sqrt(var + module.eps)
    scale = share(scale_plain)
    shift = share(bias - mean * scale_plain)

    def apply(x):
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return x * scale.reshape(shape) + shift.reshape(shape)

    return apply
