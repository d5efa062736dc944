"""The small interface every backend implements, and the per-layer rule registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from secure_infer._errors import UnsupportedModelError
from secure_infer.ir import Conversion, Graph, Node

Rule = TypeVar("Rule")


@dataclass(frozen=True)
class RunStats:
    """What one encrypted call cost.

    Attributes:
        backend: backend name.
        batch_size: inputs in the call.
        wall_s: end-to-end seconds seen by the caller.
        encrypt_s, compute_s, decrypt_s: phases where the backend can separate them.
        bytes_sent: bytes on the wire, all parties together (MPC) or in+out ciphertexts (HE).
        rounds: communication rounds (MPC; the maximum over parties).
        per_party: per-party figures (rank, role, bytes, rounds, seconds) for MPC.
        max_abs_error: against plaintext on the same input, when the caller asked for it.
        simulated: True when no real separation of parties took place.
        extra: backend-specific figures (depth, slots, key bytes...).
    """

    backend: str
    batch_size: int
    wall_s: float
    encrypt_s: float | None = None
    compute_s: float | None = None
    decrypt_s: float | None = None
    bytes_sent: int | None = None
    rounds: int | None = None
    per_party: tuple[dict[str, Any], ...] = ()
    max_abs_error: float | None = None
    simulated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_input_s(self) -> float:
        return self.wall_s / max(self.batch_size, 1)


class Program(ABC):
    """A compiled model: call it on plaintext inputs, get plaintext outputs back.

    A program computes the graph's core (no epilogue): ``wrap`` applies the
    epilogue where the result is decrypted. ``conversions`` says how each layer
    was carried out; a backend that measures or bounds approximations sets it
    with those figures, otherwise it is the registry's description.
    """

    last_run: RunStats | None = None
    conversions: list[Conversion] | None = None

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def run(self, x: torch.Tensor, reveal: frozenset[str] = frozenset()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Evaluate ``x``; a backend that can also return the named intermediate values
        (calibration on the caller's own sample, to measure each approximation) overrides this."""
        return self(x), {}

    def close(self) -> None:
        """Release processes, sockets or keys the program holds (nothing by default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Backend facts for the report (parties, parameters, ...)."""
        return {}


class Backend(ABC):
    """Turns a traced graph into a :class:`Program`.

    Subclasses name their accepted ``options`` and layer ``rules`` and
    implement :meth:`build`; :meth:`compile` validates options and refuses
    unsupported models first. A backend with checks beyond "every layer has a
    rule" adds them in :meth:`model_problems`.
    """

    name: str
    options: frozenset[str] = frozenset()
    rules: LayerRules[Any]

    def compile(self, graph: Graph, sample_input: torch.Tensor, **options: Any) -> Program:
        """Validate, then build the program; may start party processes or generate keys."""
        unknown = set(options) - self.options
        if unknown:
            from secure_infer._errors import ParameterError

            raise ParameterError(
                f"unknown option(s) for backend={self.name!r}: {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(sorted(self.options))}"
            )
        problems = self.check(graph, **options)
        if problems:
            raise problems[0]
        return self.build(graph, sample_input, **options)

    @abstractmethod
    def build(self, graph: Graph, sample_input: torch.Tensor, **options: Any) -> Program:
        """Build the program for a graph that passed :meth:`check`."""

    def check(self, graph: Graph, **options: Any) -> list[UnsupportedModelError]:
        """Problems that would stop :meth:`compile`, without building anything."""
        return self.rules.problems(graph) or self.model_problems(graph, **options)

    def model_problems(self, graph: Graph, **options: Any) -> list[UnsupportedModelError]:
        """Problems of a graph whose every layer has a rule (layer settings, graph shape); none by default."""
        return []

    def conversions(self, graph: Graph) -> list[Conversion]:
        """How each remaining layer is carried out (exact, approximated...)."""
        return self.rules.conversions(graph)


@dataclass(frozen=True)
class LayerRule(Generic[Rule]):
    """One registered conversion: the rule plus how exact it is.

    ``listed`` rules (layers, products) get a row in ``report()``; data
    movement (reshape, permute, indexing...) does not.
    """

    ops: tuple[str, ...]
    rule: Rule
    kind: str
    detail: str
    listed: bool = True


class LayerRules(Generic[Rule]):
    """Per-backend registry from canonical op (see :mod:`secure_infer.ir`) to conversion rule.

    An op without a rule is exactly the :class:`UnsupportedModelError` case;
    ``suggestions`` (keyed by op, or by layer class name for ops the front end
    keeps as opaque ``module`` nodes) turns that error into advice.
    """

    def __init__(self, backend: str, suggestions: dict[str, str] | None = None) -> None:
        self.backend = backend
        self._rules: dict[str, LayerRule[Rule]] = {}
        self.suggestions = dict(suggestions or {})

    def register(self, *ops: str, kind: str = "exact", detail: str = "",
                 listed: bool = True) -> Callable[[Rule], Rule]:
        def deco(rule: Rule) -> Rule:
            entry = LayerRule(ops, rule, kind, detail, listed)
            for op in ops:
                if op in self._rules:
                    raise ValueError(f"{self.backend}: a rule for {op!r} is already registered")
                self._rules[op] = entry
            return rule

        return deco

    def supported(self) -> list[str]:
        return sorted(self._rules)

    def find(self, node: Node) -> LayerRule[Rule]:
        entry = self._rules.get(node.op) if node.op != "module" else None
        if entry is not None:
            return entry
        hint = self.suggestions.get(node.type_name, self.suggestions.get(node.op, ""))
        what = node.type_name if node.module is not None else f"operation {node.op!r}"
        raise UnsupportedModelError(
            f"{node.path or node.name}: {what} is not supported by the {self.backend} backend. "
            f"{hint + ' ' if hint else ''}Supported operations: {', '.join(self.supported())}",
            module_path=node.path,
            module_type=node.type_name,
        )

    def problems(self, graph: Graph) -> list[UnsupportedModelError]:
        found = []
        for node in graph.layers():
            try:
                self.find(node)
            except UnsupportedModelError as exc:
                found.append(exc)
        return found

    def conversions(self, graph: Graph) -> list[Conversion]:
        out = []
        for node in graph.layers():
            entry = self.find(node)
            if entry.listed:
                out.append(Conversion(node.path, node.type_name, entry.kind, entry.detail))
        return out
