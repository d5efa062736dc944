"""The data owner's half of a compiled TenSEAL program.

Everything the client does (check the input, pack it, encrypt, decrypt, check
the output) needs only the :class:`Layout` the server publishes: shapes, the
packing and the CKKS parameters, never a weight. The in-process
:class:`~secure_infer.backends.tenseal.TensealProgram` and the network client
in ``protocols.he`` both use this one class, so they pack identically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secure_infer._errors import ParameterError
from secure_infer.backends.tenseal._compile import RANGE_SLACK
from secure_infer.backends.tenseal._execute import layout_index, pack_latency
from secure_infer.backends.tenseal._params import CKKSParameters
from secure_infer.backends.tenseal._seal import ClientKeys

MODES = ("latency", "batch")


@dataclass(frozen=True)
class Layout:
    """What the server publishes about a compiled program: enough to encrypt for it, no weights.

    Attributes:
        mode: ``"latency"`` (one input per ciphertext) or ``"batch"`` (one input per slot).
        input_shape: one input's shape, without the batch dimension.
        output_size: values per output.
        input_range: the calibrated range every input element must lie in.
        output_bound: largest |output| the first prime holds; larger decrypts are garbage.
        params: the CKKS parameters (128-bit secure; the client re-checks).
        period: latency mode: the padded input length repeated across the slots.
        rotation_steps: latency mode: the Galois keys the server needs.
        chunks: latency mode: ciphertexts per input (more than 1 when the input is
            wider than one ciphertext; then ``period`` equals the slot count).
        output_chunks: latency mode: output ciphertexts per input (more than 1 when
            the output is wider than one ciphertext: ``slots`` values each).
        block, width: latency mode: 0 for the periodic packing (the padded input
            repeated across the slots), else the blocked packing: block ``t`` (of
            ``block`` slots) repeats input values ``t*width .. t*width+width-1``
            (see ``layout_index``). They depend on layer widths only, never on a weight.
        gather: latency mode, the tap packing (empty otherwise): ciphertext ``c``'s slot
            ``s`` holds input value ``gather[c][s]`` (0 where it is -1), one
            ciphertext per entry (``chunks`` of them, ``period`` = slots). It tells
            the client which inputs each first-layer output reads (a convolution's
            kernel size, stride and padding), never a weight; wrap with
            ``packing="dense"`` to publish widths only.
        output_shape: one output's shape (``(output_size,)`` when absent).
        epilogue: the model's trailing softmax/log_softmax/sigmoid/argmax, which the
            client runs after decrypting (see ``secure_infer.ir.apply_epilogue``).
    """

    mode: str
    input_shape: tuple[int, ...]
    output_size: int
    input_range: tuple[float, float]
    output_bound: float
    params: CKKSParameters
    period: int = 0
    rotation_steps: tuple[int, ...] = ()
    chunks: int = 1
    output_chunks: int = 1
    block: int = 0
    width: int = 0
    gather: tuple[tuple[int, ...], ...] = ()
    output_shape: tuple[int, ...] = ()
    epilogue: tuple[dict[str, Any], ...] = ()

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def slots(self) -> int:
        return self.params.slots

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "input_shape": list(self.input_shape), "output_size": self.output_size,
            "input_range": list(self.input_range), "output_bound": self.output_bound,
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.params.coeff_mod_bit_sizes), "scale_bits": self.params.scale_bits,
            "period": self.period, "rotation_steps": list(self.rotation_steps), "chunks": self.chunks,
            "output_chunks": self.output_chunks, "block": self.block, "width": self.width,
            **({"gather": [list(g) for g in self.gather]} if self.gather else {}),
            "output_shape": list(self.output_shape or (self.output_size,)), "epilogue": [dict(e) for e in self.epilogue],
        }

    @classmethod
    def from_json(cls, data: Any) -> Layout:
        """Parse and validate a published layout; ``ParameterError`` names the bad field."""
        if not isinstance(data, dict):
            raise ParameterError("layout: expected a JSON object")

        def ints(name: str) -> tuple[int, ...]:
            value = data.get(name)
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ParameterError(f"layout.{name}: expected a list of integers")
            return tuple(value)

        def number(name: str, kind: type = float) -> Any:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                raise ParameterError(f"layout.{name}: expected a {'number' if kind is float else 'integer'}")
            return kind(value)

        mode = data.get("mode")
        if mode not in MODES:
            raise ParameterError(f"layout.mode: expected one of {MODES}")
        rng = data.get("input_range")
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)):
            raise ParameterError("layout.input_range: expected [low, high]")
        params = CKKSParameters(number("poly_modulus_degree", int), ints("coeff_mod_bit_sizes"),
                                number("scale_bits", int))
        params.validate()  # a client never encrypts under parameters weaker than 128-bit
        layout = cls(mode=mode, input_shape=ints("input_shape"), output_size=number("output_size", int),
                     input_range=(float(rng[0]), float(rng[1])), output_bound=number("output_bound"),
                     params=params, period=number("period", int), rotation_steps=ints("rotation_steps"),
                     chunks=number("chunks", int) if "chunks" in data else 1,
                     output_chunks=number("output_chunks", int) if "output_chunks" in data else 1,
                     block=number("block", int) if "block" in data else 0,
                     width=number("width", int) if "width" in data else 0,
                     gather=_gather(data["gather"]) if "gather" in data else (),
                     output_shape=ints("output_shape") if "output_shape" in data else (),
                     epilogue=_epilogue(data.get("epilogue", [])))
        if layout.output_shape and math.prod(layout.output_shape) != layout.output_size:
            raise ParameterError("layout.output_shape: its product must be output_size")
        if min(layout.input_shape, default=0) < 1 or layout.output_size < 1:
            raise ParameterError("layout: input_shape and output_size must be positive")
        if mode == "latency" and not (layout.input_size <= layout.period * layout.chunks
                                      and 0 < layout.period <= layout.slots and layout.slots % layout.period == 0):
            raise ParameterError("layout.period: must be a power of two between the input size and the slot count")
        if layout.chunks < 1 or (layout.chunks > 1 and layout.period != layout.slots):
            raise ParameterError("layout.chunks: must be >= 1, and several chunks fill whole ciphertexts (period = slots)")
        if mode == "latency" and layout.output_chunks != -(-layout.output_size // layout.slots):
            raise ParameterError("layout.output_chunks: must be the output size over the slot count, rounded up")
        if layout.block or layout.width:
            try:
                if layout.chunks != 1 or layout.width > layout.period:
                    raise ValueError("one ciphertext per input, width <= period")
                layout_index(layout.period, layout.block, layout.width, layout.slots)
            except (ValueError, ZeroDivisionError) as exc:
                raise ParameterError(f"layout.block/width: not a blocked packing of this input: {exc}") from None
        if layout.gather:
            if mode != "latency" or layout.block or layout.width or layout.period != layout.slots:
                raise ParameterError("layout.gather: only in latency mode, with period = slots and no block/width")
            if len(layout.gather) != layout.chunks or any(len(g) != layout.slots for g in layout.gather):
                raise ParameterError(f"layout.gather: expected chunks ({layout.chunks}) lists of slots "
                                     f"({layout.slots}) input indices")
            if not all(-1 <= v < layout.input_size for g in layout.gather for v in g):
                raise ParameterError(f"layout.gather: every index must be -1 or an input position below "
                                     f"{layout.input_size}")
        return layout


def _gather(value: Any) -> tuple[tuple[int, ...], ...]:
    """A published tap packing: a list of lists of integers (validated against the layout by the caller)."""
    if not isinstance(value, list) or not all(
            isinstance(g, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in g) for g in value):
        raise ParameterError("layout.gather: expected a list of lists of integers")
    return tuple(tuple(g) for g in value)


def _epilogue(value: Any) -> tuple[dict[str, Any], ...]:
    """Validate a published epilogue: a list of ``{"op": ..., "dim": ...}`` (see ``apply_epilogue``)."""
    ops = ("softmax", "log_softmax", "sigmoid", "argmax")
    if not isinstance(value, list):
        raise ParameterError("layout.epilogue: expected a list")
    out = []
    for step in value:
        if not isinstance(step, dict) or step.get("op") not in ops:
            raise ParameterError(f"layout.epilogue: each step must be an object with op in {ops}")
        if step["op"] != "sigmoid" and (not isinstance(step.get("dim"), int) or isinstance(step.get("dim"), bool)):
            raise ParameterError(f"layout.epilogue: {step['op']} needs an integer dim")
        out.append({k: step[k] for k in ("op", "dim", "keepdim") if k in step})
    return tuple(out)


@dataclass
class RunTotals:
    """What one :meth:`LayoutClient.run` cost: seconds per phase and ciphertext counts."""

    encrypt_s: float = 0.0
    evaluate_s: float = 0.0
    decrypt_s: float = 0.0
    requests: int = 0
    ciphertexts_in: int = 0
    ciphertexts_out: int = 0
    sample_out: Any = None  # one output ciphertext, for its size (inputs: ClientKeys.wire_size)
    sample_out_bytes: int = 0  # that size, when the outputs were decrypted elsewhere (a worker)


def batch_columns(block: np.ndarray) -> np.ndarray:
    """A batch-mode block ``(inputs, features)`` as one contiguous row per feature, each one ciphertext's
    slots (SEAL's encoder copies its argument element by element: a strided column costs about 20% more)."""
    return np.ascontiguousarray(block.T)


class LayoutClient:
    """Encrypts inputs for, and decrypts outputs of, a program with a given :class:`Layout`."""

    def __init__(self, layout: Layout, keys: ClientKeys | None = None, *, for_wire: bool = False) -> None:
        """``for_wire``: encrypt to seeded ciphertexts that only serialize (half the bytes), for a remote server."""
        self.layout = layout
        self.keys = keys or ClientKeys(layout.params, layout.rotation_steps)
        self._encrypt = self.keys.encrypt_for_wire if for_wire else self.keys.encrypt
        self._gather = np.asarray(layout.gather, dtype=np.int64) if layout.gather else None

    def check_input(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Validate shape, dtype and range at the boundary; return inputs as flat float64 rows."""
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise ParameterError(f"input dtype {arr.dtype} is not numeric; pass float values")
        shape = self.layout.input_shape
        if arr.shape == shape:
            arr = arr[None]
        if tuple(arr.shape[1:]) != shape or arr.shape[0] < 1:
            raise ParameterError(f"input shape {tuple(arr.shape)} does not match the model's (batch, "
                                 f"{', '.join(map(str, shape))})")
        if not np.isfinite(arr).all():
            raise ParameterError("input contains NaN or infinite values")
        low, high = self.layout.input_range
        slack = RANGE_SLACK * max(high - low, 1e-12)  # float32 rounding at the ends; the bounds cover it
        if float(arr.min()) < low - slack or float(arr.max()) > high + slack:
            raise ParameterError(
                f"input values span [{float(arr.min()):.3g}, {float(arr.max()):.3g}], outside the calibrated range "
                f"[{low:.3g}, {high:.3g}]; the polynomial approximations and CKKS parameters would give garbage: "
                "wrap again with calibration= covering such inputs"
            )
        return arr.astype(np.float64).reshape(len(arr), -1)

    def requests(self, flat: np.ndarray) -> Iterator[tuple[int, list[Any]]]:
        """Encrypt ``flat`` rows unit by unit: ``(rows in this unit, ciphertexts)``.

        Latency mode: one input per request (``chunks`` ciphertexts, usually 1). Batch mode: up to ``slots``
        inputs at once, one ciphertext per input feature.
        """
        if self.layout.mode == "latency":
            for row in flat:
                packed = pack_latency(row, self.layout.period, self.layout.slots, self.layout.chunks, self.layout.block,
                                      self.layout.width, self._gather)
                yield 1, [self._encrypt(v) for v in packed]
        else:
            for start in range(0, len(flat), self.layout.slots):
                columns = batch_columns(flat[start : start + self.layout.slots])
                yield columns.shape[1], [self._encrypt(column) for column in columns]

    def run(self, flat: np.ndarray, evaluate: Callable[[list[Any]], list[Any]]) -> tuple[np.ndarray, RunTotals]:
        """Encrypt ``flat`` request by request, have ``evaluate`` compute each, decrypt; outputs and totals.

        ``evaluate`` is the program itself in process, or a network round trip.
        """
        totals = RunTotals()
        outputs = []
        units = self.requests(flat)
        while True:
            t0 = time.perf_counter()
            unit = next(units, None)
            if unit is None:
                break
            rows, cts = unit
            t1 = time.perf_counter()
            outs = evaluate(cts)
            t2 = time.perf_counter()
            outputs.append(self.decrypt(outs, rows))
            t3 = time.perf_counter()
            totals.encrypt_s += t1 - t0
            totals.evaluate_s += t2 - t1
            totals.decrypt_s += t3 - t2
            totals.requests += 1
            totals.ciphertexts_in += len(cts)
            totals.ciphertexts_out += len(outs)
            if totals.sample_out is None:
                totals.sample_out = outs[0]
        return np.concatenate(outputs), totals

    def decrypt(self, outputs: list[Any], rows: int) -> np.ndarray:
        """Decrypt one unit's output ciphertexts into ``(rows, output_size)``."""
        if self.layout.mode == "latency":
            if len(outputs) != self.layout.output_chunks:
                raise ParameterError(f"expected {self.layout.output_chunks} output ciphertext(s), got {len(outputs)}")
            parts = [self.keys.decrypt(o)[: self.layout.slots] for o in outputs]  # chunks hold slots values each
            y = np.concatenate(parts)[None, : self.layout.output_size]
        else:
            if len(outputs) != self.layout.output_size:
                raise ParameterError(f"expected {self.layout.output_size} output ciphertexts, got {len(outputs)}")
            y = np.stack([self.keys.decrypt(o)[:rows] for o in outputs], axis=1)
        self.check_output(y)
        return y

    def check_output(self, y: np.ndarray) -> None:
        if not np.isfinite(y).all() or np.abs(y).max() > self.layout.output_bound:
            raise ParameterError(
                f"decrypted outputs exceed what the CKKS parameters can hold (|y| <= {self.layout.output_bound:.3g}): "
                "the result would be garbage. Calibrate with inputs like this one, or give a larger first prime"
            )
