"""secure-infer's own layers: one home for the front end, both backends, the zoo and the approximations.

The front end (:mod:`secure_infer.graph`) turns every spelling of an operation
into one canonical node; where PyTorch has several modules or functions for
one operation (``nn.MaxPool1d``, ``nn.MaxPool2d``, ``F.max_pool2d`` with an int
or a tuple kernel...), the node carries one of the modules here, with its
settings normalised to tuples. Each is an ordinary ``nn.Module``, so a traced
graph still runs in plaintext (the reference every backend is checked
against) and can be fine-tuned.

* :class:`Square` - ``x * x``, ``x ** 2``, ``x.pow(2)``, ``torch.square(x)``.
* :class:`PolyActivation` - an element-wise polynomial (exact under HE); also
  what integer powers ``x ** n`` become.
* :class:`MaxPool`, :class:`AvgPool`, :class:`AdaptiveAvgPool` - 1-d and 2-d pooling.
* :class:`Constant` - a value that does not depend on the input (a class token,
  a positional embedding, a constant computed from weights): model-owner data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveAvgPool", "AvgPool", "Constant", "MaxPool", "PolyActivation", "Square"]


class Square(nn.Module):
    """The activation x -> x**2 (CryptoNets): exact under HE, one multiplication deep."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class PolyActivation(nn.Module):
    """Element-wise polynomial ``sum(c[i] * x**i)``; exact under CKKS.

    ``coefficients`` are lowest degree first. ``source`` names what it replaces;
    ``interval`` is where it was fitted (``(0, 0)`` for an exact polynomial).
    """

    def __init__(self, coefficients: Sequence[float], source: str = "",
                 interval: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.coefficients = nn.Parameter(torch.tensor([float(c) for c in coefficients]))
        self.source = source
        self.interval = interval

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.coefficients.to(x.dtype)
        out = torch.zeros_like(x) + coefficients[-1]
        for c in reversed(coefficients[:-1]):
            out = out * x + c
        return out

    def extra_repr(self) -> str:
        coeffs = ", ".join(f"{float(c):.4g}" for c in self.coefficients)
        return f"[{coeffs}] for {self.source} on [{self.interval[0]:.3g}, {self.interval[1]:.3g}]"


def _tuple(value: int | Sequence[int], dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    out = tuple(int(v) for v in value)
    return out * dims if len(out) == 1 else out


class _Pool(nn.Module):
    """Shared settings of the 1-d and 2-d pools: every size is a tuple of ``dims`` ints."""

    def __init__(self, dims: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, ceil_mode: bool = False) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"pooling over {dims} dimensions; 1 or 2 are supported")
        self.dims = dims
        self.kernel_size = _tuple(kernel_size, dims)
        self.stride = _tuple(stride if stride not in (None, [], ()) else kernel_size, dims)
        self.padding = _tuple(padding, dims)
        self.ceil_mode = bool(ceil_mode)

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, ceil_mode={self.ceil_mode}")


class MaxPool(_Pool):
    """Max pooling over the last ``dims`` dimensions (``nn.MaxPool1d/2d``, ``F.max_pool1d/2d``)."""

    def __init__(self, dims: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, ceil_mode: bool = False) -> None:
        super().__init__(dims, kernel_size, stride, padding, ceil_mode)
        self.dilation = _tuple(dilation, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool1d if self.dims == 1 else F.max_pool2d
        return pool(x, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode)


class AvgPool(_Pool):
    """Average pooling over the last ``dims`` dimensions (``nn.AvgPool1d/2d``, ``F.avg_pool1d/2d``)."""

    def __init__(self, dims: int, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None) -> None:
        super().__init__(dims, kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1:
            if self.divisor_override is not None:
                return F.avg_pool2d(x.unsqueeze(-2), (1, *self.kernel_size), (1, *self.stride), (0, *self.padding),
                                    self.ceil_mode, self.count_include_pad, self.divisor_override).squeeze(-2)
            return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)


class AdaptiveAvgPool(nn.Module):
    """Adaptive average pooling whose windows do not tile the input evenly.

    (Even tilings become :class:`AvgPool`, and an output of size 1 a mean.) It is
    a fixed linear map: :meth:`matrix` gives it per dimension, which is how both
    backends run it.
    """

    def __init__(self, output_size: Sequence[int]) -> None:
        super().__init__()
        self.output_size = tuple(int(s) for s in output_size)
        self.dims = len(self.output_size)

    @staticmethod
    def matrix(in_size: int, out_size: int) -> torch.Tensor:
        """``(out_size, in_size)``: row ``i`` averages PyTorch's ``i``-th adaptive window."""
        m = torch.zeros(out_size, in_size)
        for i in range(out_size):
            start, end = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
            m[i, start:end] = 1.0 / (end - start)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1:
            return F.adaptive_avg_pool1d(x, self.output_size)
        return F.adaptive_avg_pool2d(x, cast("tuple[int, int]", self.output_size))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Constant(nn.Module):
    """A value that does not depend on the input, broadcast over the batch.

    ``batch_dim`` is where the batch dimension goes (the value is stored with
    size 1 there), or None when the value has no batch dimension and reaches
    the data by broadcasting (``x + self.pos_embed``). It is model-owner data:
    MPC parties other than the model owner see zeros of its shape.
    """

    value: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, value: torch.Tensor, batch_dim: int | None) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())
        self.batch_dim = batch_dim

    def forward(self, batch: int) -> torch.Tensor:
        value = self.value
        if self.batch_dim is None:
            return value
        shape = list(value.shape)
        shape[self.batch_dim] = batch
        return value.expand(*shape)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape)}, batch_dim={self.batch_dim}"
