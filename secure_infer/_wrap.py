"""The façade: ``wrap`` a model for encrypted inference, or ``check`` it first."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from secure_infer._errors import ParameterError, UnsupportedModelError
from secure_infer.backends import get_backend
from secure_infer.backends.base import Program, RunStats
from secure_infer.graph import Conversion, Graph, trace

__all__ = ["CheckReport", "EncryptedModel", "Evaluation", "Report", "check", "wrap"]


@dataclass(frozen=True)
class Report:
    """How a model was converted: one row per layer, plus the backend's facts."""

    backend: str
    conversions: tuple[Conversion, ...]
    facts: dict[str, Any] = field(default_factory=dict)
    sample_max_abs_error: float | None = None

    @property
    def approximations(self) -> list[Conversion]:
        return [c for c in self.conversions if c.kind in ("approximated", "replaced")]

    def __str__(self) -> str:
        lines = [f"secure-infer report: backend={self.backend}"]
        for key, value in self.facts.items():
            lines.append(f"  {key}: {value}")
        width = max([len(c.path) for c in self.conversions] + [5])
        lines.append(f"  {'layer'.ljust(width)}  {'type':<14} {'how':<13} detail")
        for c in self.conversions:
            err = f" (max abs error on sample {c.max_abs_error:.2e})" if c.max_abs_error is not None else ""
            if c.bound is not None:
                err += f" (worst case over accepted inputs <= {c.bound:.2e})"
            lines.append(f"  {c.path.ljust(width)}  {c.layer:<14} {c.kind:<13} {c.detail}{err}")
        if self.sample_max_abs_error is not None:
            lines.append(f"  whole model: max abs error vs plaintext on sample_input = {self.sample_max_abs_error:.3e}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Evaluation:
    """An encrypted pass over a data set, set against plaintext on the same inputs.

    ``bytes_per_input`` counts all parties' traffic (MPC) or ciphertexts (HE).
    """

    n: int
    batch_size: int
    agreement: float
    accuracy: float | None
    plaintext_accuracy: float | None
    max_abs_error: float
    seconds_per_input: float
    bytes_per_input: float
    rounds_per_batch: float


@dataclass(frozen=True)
class CheckReport:
    """What ``check`` found without converting: ``ok`` and the problems, if any."""

    backend: str
    ok: bool
    problems: tuple[UnsupportedModelError, ...]
    conversions: tuple[Conversion, ...]

    def __str__(self) -> str:
        if self.ok:
            kinds = ", ".join(sorted({c.kind for c in self.conversions}))
            return f"{self.backend}: convertible ({len(self.conversions)} layers; {kinds})"
        return f"{self.backend}: NOT convertible\n" + "\n".join(f"  - {p}" for p in self.problems)


def _validate_input(x: Any, graph: Graph, where: str) -> torch.Tensor:
    """Check one call's input at the boundary; return it ready for the program (one-hot encoded when
    the model takes token indices)."""
    if not isinstance(x, torch.Tensor):
        raise ParameterError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if graph.one_hot and not x.is_floating_point() and x.dtype != torch.bool:
        expected = graph.input_shape[1:-1]
        if x.dim() != len(graph.input_shape) - 1 or tuple(x.shape[1:]) != tuple(expected):
            raise ParameterError(f"{where}: expected token indices shaped (batch, {', '.join(map(str, expected))}), "
                                 f"got {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= graph.one_hot):
            raise ParameterError(f"{where}: token indices must lie in [0, {graph.one_hot})")
        return graph.prepare(x)
    if not x.is_floating_point():
        kind = "token indices (integers)" if graph.one_hot else "a float tensor"
        raise ParameterError(f"{where}: expected {kind}, got dtype {x.dtype}; convert with x.float()")
    expected = graph.input_shape[1:]
    if x.dim() != len(graph.input_shape) or tuple(x.shape[1:]) != tuple(expected):
        raise ParameterError(
            f"{where}: expected inputs shaped (batch, {', '.join(map(str, expected))}) like sample_input, "
            f"got {tuple(x.shape)}"
        )
    if x.shape[0] < 1:
        raise ParameterError(f"{where}: empty batch")
    if not torch.isfinite(x).all():
        raise ParameterError(f"{where}: input contains NaN or infinity")
    return x.detach().to("cpu", torch.float32)


class EncryptedModel:
    """A model that computes on encrypted data; call it like the original.

    Use as a context manager, or call :meth:`close`, to stop party processes.
    """

    def __init__(self, backend: str, graph: Graph, program: Program, conversions: list[Conversion],
                 sample_error: float | None, reference: Graph | None = None) -> None:
        self.backend = backend
        self.graph = graph
        # what the caller's own model computes (before any opt-in rewrite)
        self.reference = reference or graph
        self.program = program
        self._conversions = conversions
        self._sample_error = sample_error

    def __call__(self, x: torch.Tensor, *, compare: bool = False) -> torch.Tensor:
        """Run encrypted; with ``compare=True`` also record max abs error vs plaintext.

        The program computes the model's core; a trailing softmax, log-softmax,
        sigmoid or argmax (the epilogue, listed in ``report()``) runs here, where
        the result is decrypted. The error is measured on the core's output.
        """
        return self.graph.finish(self.logits(x, compare=compare))

    def logits(self, x: torch.Tensor, *, compare: bool = False) -> torch.Tensor:
        """The encrypted program's output, before the client-side epilogue."""
        x = _validate_input(x, self.graph, "input")
        y = self.program(x)
        if compare and self.program.last_run is not None:
            err = float((y - self.reference.run_core(x)).abs().max())
            self.program.last_run = dataclasses.replace(self.program.last_run, max_abs_error=err)
        return y

    def evaluate(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> Evaluation:
        """Run a whole data set encrypted, batch by batch, against plaintext.

        ``on_batch(n)`` is called after each batch of ``n`` inputs (progress bars).
        """
        if batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        outputs, seconds, sent, rounds = [], 0.0, 0, 0
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            outputs.append(self.logits(chunk))
            run = self.program.last_run
            assert run is not None
            seconds += run.wall_s
            sent += run.bytes_sent or 0
            rounds += run.rounds or 0
            if on_batch is not None:
                on_batch(len(chunk))
        encrypted = torch.cat(outputs)
        plain = self.reference.run_core(_validate_input(x, self.graph, "x"))
        n = len(x)
        return Evaluation(
            n=n,
            batch_size=batch_size,
            agreement=float((encrypted.argmax(1) == plain.argmax(1)).float().mean()),
            accuracy=None if y is None else float((encrypted.argmax(1) == y).float().mean()),
            plaintext_accuracy=None if y is None else float((plain.argmax(1) == y).float().mean()),
            max_abs_error=float((encrypted - plain).abs().max()),
            seconds_per_input=seconds / n,
            bytes_per_input=sent / n,
            rounds_per_batch=rounds / max(1, -(-n // batch_size)),
        )

    @property
    def last_run(self) -> RunStats | None:
        """Figures of the last call: seconds, bytes, rounds, per party..."""
        return self.program.last_run

    def report(self) -> Report:
        return Report(self.backend, tuple(self._conversions), self.program.describe(), self._sample_error)

    def close(self) -> None:
        self.program.close()

    def __enter__(self) -> EncryptedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _front_end(model: nn.Module, sample_input: torch.Tensor, rewrites: Any) -> tuple[Graph, Graph]:
    """(graph to compile, graph of the caller's model as given)."""
    original = trace(model, sample_input)
    if not rewrites:
        return original, original
    from secure_infer.rewrites import apply

    return apply(original, rewrites, sample_input), original


def check(model: nn.Module, backend: str = "crypten", *, sample_input: torch.Tensor,
          rewrites: Any = (), **options: Any) -> CheckReport:
    """Say whether ``model`` converts for ``backend``, without starting anything."""
    graph, _ = _front_end(model, sample_input, rewrites)
    impl = get_backend(backend)
    problems = impl.check(graph, **options)
    conversions = list(graph.conversions) + ([] if problems else impl.conversions(graph))
    return CheckReport(backend, not problems, tuple(problems), tuple(conversions))


def wrap(model: nn.Module, backend: str = "crypten", *, sample_input: torch.Tensor,
         rewrites: Any = (), **options: Any) -> EncryptedModel:
    """Compile ``model`` for encrypted inference with ``backend``.

    The model is traced once on ``sample_input`` (shape ``(batch, ...)``), the
    backend program is built (CrypTen: party processes start; TenSEAL: keys),
    and the sample is run encrypted once to measure the error of every
    approximated layer, which ``report()`` lists.

    ``rewrites`` opts in to graph rewrites (see :mod:`secure_infer.rewrites`),
    e.g. ``["pool-before-relu"]``; each is listed in ``report()`` with its effect.

    Raises:
        UnsupportedModelError: a layer the backend cannot run, naming its path.
        ParameterError: bad sample input or options.
    """
    graph, original = _front_end(model, sample_input, rewrites)
    impl = get_backend(backend)
    program = impl.compile(graph, sample_input, **options)
    conversions = program.conversions or (list(graph.conversions) + impl.conversions(graph))
    try:
        sample = _validate_input(sample_input, graph, "sample_input")
        approx_nodes = {n.name: n for n in graph.nodes if n.module is not None
                        and any(c.path == n.path and c.kind == "approximated" for c in conversions)}
        y, revealed = program.run(sample, frozenset(approx_nodes))
        reference = graph.evaluate(sample)
        sample_error = float((y - original.run_core(sample)).abs().max())
        measured = {approx_nodes[name].path: float((value - reference[name]).abs().max())
                    for name, value in revealed.items()}
        conversions = [
            dataclasses.replace(c, max_abs_error=measured.get(c.path, c.max_abs_error)) for c in conversions
        ]
    except BaseException:
        program.close()
        raise
    return EncryptedModel(backend, graph, program, conversions, sample_error, original)
