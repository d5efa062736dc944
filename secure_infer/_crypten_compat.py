"""Make crypten 0.4.1 import and convert models on torch >= 2.9.

CrypTen 0.4.1 (the last release, 2022) breaks on current PyTorch in two places:

* ``crypten.nn.onnx_converter`` imports ``torch.onnx._internal.registration``,
  which moved to ``torch.onnx._internal.torchscript_exporter.registration``;
* ``torch.onnx.export`` now defaults to the dynamo exporter, whose graphs
  CrypTen's converter does not understand; the TorchScript exporter must be
  asked for with ``dynamo=False``;
* the exporter deduplicates equal initializers (two all-zero biases, say) and
  links them with ONNX ``Identity`` nodes, which CrypTen's converter rejects
  ("CrypTen does not support ONNX op Identity", CrypTen issue #418): an
  Identity module is registered for it;
* ``FixedPointEncoder.decode`` divides negative values by ``scale - 1``: a
  negative value whose fraction lies within ``|x| / 2**16`` of the next
  integer decodes 1.0 too low (-5.99995 -> -6.99995). With 16-bit precision
  about one logit in 10^4 came back off by exactly 1.0. ``decode`` is replaced
  by an exact floor-division split.

:func:`load_crypten` applies these fixes once, explicitly, and returns the
``crypten`` module. Nothing is patched at import time of secure_infer.
"""

from __future__ import annotations

import importlib
import io
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

from secure_infer._errors import BackendUnavailableError

_LOCK = threading.Lock()
_OPSET_VERSION = 17


def _alias_moved_registration() -> None:
    legacy = "torch.onnx._internal.registration"
    if legacy in sys.modules:
        return
    try:
        importlib.import_module(legacy)
        return
    except ImportError:
        pass
    try:
        moved = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise BackendUnavailableError(
            "this torch build has neither torch.onnx._internal.registration nor its "
            "torchscript_exporter successor; install torch==2.13.0 as the README says"
        ) from exc
    sys.modules[legacy] = moved


def _export_with_torchscript(f: io.BytesIO, pytorch_model: Any, dummy_input: Any) -> io.BytesIO:
    """CrypTen's ``_export_pytorch_model`` with the TorchScript exporter forced."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            pytorch_model,
            dummy_input,
            f,  # type: ignore[arg-type]  # torch's stub says a path; the TorchScript exporter writes to file objects
            do_constant_folding=False,
            export_params=True,
            input_names=["input"],
            output_names=["output"],
            opset_version=_OPSET_VERSION,
            dynamo=False,
        )
    return f


def load_crypten() -> ModuleType:
    """Import crypten with the torch compatibility fixes applied.

    Returns:
        The ``crypten`` module, ready for ``crypten.init()`` and
        ``crypten.nn.from_pytorch``.

    Raises:
        BackendUnavailableError: crypten is not installed.
    """
    converter: Any  # crypten ships no type information; its module attributes are patched below
    with _LOCK:
        _alias_moved_registration()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crypten = importlib.import_module("crypten")
                converter = importlib.import_module("crypten.nn.onnx_converter")
        except ImportError as exc:
            raise BackendUnavailableError(
                f"crypten could not be imported ({exc}); install it with "
                "`pip install --no-deps crypten==0.4.1` (scripts/in-env.sh does this)"
            ) from exc
        if converter._export_pytorch_model is not _export_with_torchscript:
            converter._export_pytorch_model = _export_with_torchscript
        if "Identity" not in converter.ONNX_TO_CRYPTEN:
            converter.ONNX_TO_CRYPTEN["Identity"] = _identity_module_class(crypten)
        encoder = importlib.import_module("crypten.encoder").FixedPointEncoder
        if encoder.decode is not _decode_fixed_point:
            encoder.decode = _decode_fixed_point
        return crypten


def _decode_fixed_point(self: Any, tensor: Any) -> Any:
    """Exact decode: integer part by floor division, fraction from the remainder."""
    import torch

    if tensor is None:
        return None
    if tensor.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError("FixedPointEncoder.decode needs an integer tensor")
    scale = self._scale
    if scale > 1:
        whole = tensor.div(scale, rounding_mode="floor")
        fraction = tensor - whole * scale  # in [0, scale)
        return (whole.float() + fraction.float() / scale).data
    from crypten.encoder import nearest_integer_division

    return nearest_integer_division(tensor, scale).data


def _identity_module_class(crypten: ModuleType) -> type:
    """A crypten.nn module for ONNX ``Identity``: passes its input through."""

    class OnnxIdentity(crypten.nn.Module):  # type: ignore[name-defined,misc]
        def forward(self, x: Any) -> Any:
            return x

        @staticmethod
        def from_onnx(attributes: dict[str, Any] | None = None) -> OnnxIdentity:
            return OnnxIdentity()

    return OnnxIdentity


def is_patched() -> bool:
    """Whether :func:`load_crypten` has already installed its fixes."""
    converter = sys.modules.get("crypten.nn.onnx_converter")
    return converter is not None and converter._export_pytorch_model is _export_with_torchscript
