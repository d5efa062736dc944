"""Plaintext baselines: what the same model costs with no protection at all.

Every encrypted figure secure-infer reports is set against these, measured in
the same process and run, because on a shared 2-core machine only ratios are
stable. The GPU baseline runs where ``torch.cuda.is_available()``; elsewhere
the result says "not measured" and why, rather than inventing a number.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from secure_infer._errors import ParameterError

__all__ = ["BaselineResult", "cuda_available", "time_plaintext"]


@dataclass(frozen=True)
class BaselineResult:
    """Timing of one model on one device at one batch size.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: inputs per call.
        measured: False when the device is absent; then ``reason`` says why and
            every timing field is None.
        p50_s, p95_s: per-call latency percentiles in seconds.
        throughput: inputs per second at the median latency.
        repeats: timed calls behind the percentiles.
        device_name: the CPU or GPU model, for reports.
    """

    device: str
    batch_size: int
    measured: bool
    reason: str = ""
    p50_s: float | None = None
    p95_s: float | None = None
    throughput: float | None = None
    repeats: int = 0
    device_name: str = ""

    @property
    def per_input_s(self) -> float | None:
        return None if self.p50_s is None else self.p50_s / self.batch_size

    def describe(self) -> str:
        if not self.measured:
            return f"not measured ({self.reason})"
        assert self.p50_s is not None and self.throughput is not None  # set whenever measured
        return f"{self.p50_s * 1e3:.3f} ms/batch, {self.throughput:,.0f} inputs/s"


def cuda_available() -> bool:
    """Whether a CUDA device can run the GPU baseline here."""
    return torch.cuda.is_available()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    import platform

    return platform.processor() or platform.machine()


@torch.no_grad()
def time_plaintext(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    device: str = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    min_seconds: float = 0.0,
) -> BaselineResult:
    """Time ``model(inputs)`` in eval mode on ``device``.

    The model is copied to the device, so the caller's model is untouched.
    Runs at least ``repeats`` timed calls, and keeps going until ``min_seconds``
    have passed, after ``warmup`` untimed ones.
    """
    if device not in ("cpu", "cuda"):
        raise ParameterError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if repeats < 1:
        raise ParameterError(f"repeats must be at least 1, got {repeats}")
    batch = int(inputs.shape[0])
    if device == "cuda" and not cuda_available():
        return BaselineResult(device, batch, measured=False, reason="no CUDA device on this machine")
    import copy

    runner = copy.deepcopy(model).to(device).eval()
    x = inputs.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        runner(x)
    sync()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        runner(x)
        sync()
        samples.append(time.perf_counter() - t0)
    p50 = statistics.median(samples)
    return BaselineResult(
        device=device,
        batch_size=batch,
        measured=True,
        p50_s=p50,
        p95_s=_percentile(samples, 0.95),
        throughput=batch / p50 if p50 > 0 else float("inf"),
        repeats=len(samples),
        device_name=_device_name(device),
    )
