"""The CrypTen backend: secret-shared inference between real party processes.

``compile`` starts a :class:`PartyPool` (default: 2 parties, model owner and
data owner) that stays up across calls. ``parties=1`` runs CrypTen inside the
caller's process: a simulation for debugging, labelled as such in every report
and run.

Public names for code outside this package (``protocols.mpc``, attacks,
benchmarks); its underscore modules are its own:

* the party runtime every CrypTen party process runs, however it was started:
  :func:`run_crypten_party` with :class:`PartySettings`, handing the work a
  :class:`PartySession`; :data:`ROLES`, :func:`role_of`, :func:`phase_line`,
  :func:`parse_phase_line` and :func:`free_port` around it;
* :class:`PartyPool` and :class:`PartyJob`: party processes started from this
  process, kept up across calls or running one job;
* :class:`PartyProgram` and :func:`weightless`: a graph evaluated on shares,
  and the weightless copy every party but the model owner builds it from;
* :class:`TLSLinks`, :func:`init_tls_communicator` and
  :func:`shutdown_tls_communicator`: parties that meet over mutually
  authenticated TLS 1.3 links instead of the gloo rendezvous
  (``PartySettings(tls=...)``); :class:`TLSGroup` is their group for public
  metadata, :func:`tls_communicator_active` says whether CrypTen uses them.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from secure_infer._errors import ParameterError, PartyFailure, UnsupportedModelError
from secure_infer.backends import register_backend
from secure_infer.backends.base import Backend, Program, RunStats
from secure_infer.backends.crypten._pool import NativeSpec, PartyJob, PartyPool
from secure_infer.backends.crypten._program import PartyProgram, native_onnx, weightless
from secure_infer.backends.crypten._rules import RULES
from secure_infer.backends.crypten._runtime import (
    DATA_OWNER,
    MODEL_OWNER,
    ROLES,
    PartySession,
    PartySettings,
    free_port,
    parse_phase_line,
    phase_line,
    role_of,
    run_crypten_party,
)
from secure_infer.backends.crypten._tls import (
    TLSGroup,
    TLSLinks,
    init_tls_communicator,
    shutdown_tls_communicator,
    tls_communicator_active,
)
from secure_infer.ir import Conversion, Graph

_OPTIONS = {"parties", "dealer", "port", "master_addr", "timeout", "threads", "precision_bits", "calibration"}


class CryptenProgram(Program):
    """A model compiled to CrypTen: call it like the model."""

    def __init__(self, graph: Graph, *, parties: int = 2, dealer: bool = False, port: int | None = None,
                 master_addr: str = "127.0.0.1", timeout: float = 300.0, threads: int = 1,
                 precision_bits: int = 16, native_model: torch.nn.Module | None = None) -> None:
        if not isinstance(parties, int) or parties < 1:
            raise ParameterError(f"parties must be an integer >= 1, got {parties!r}")
        if dealer and parties < 2:
            raise ParameterError("dealer=True needs parties >= 2 (the dealer serves real parties)")
        if not 8 <= precision_bits <= 24:
            raise ParameterError(f"precision_bits must be between 8 and 24, got {precision_bits}")
        self.graph = graph
        self.parties = parties
        self.dealer = dealer
        self.precision_bits = precision_bits
        self.simulated = parties == 1
        self._pool: PartyPool | None = None
        self._local: PartyProgram | None = None
        if self.simulated:
            self._crypten = _init_in_process(precision_bits)
            self._local = PartyProgram(graph, self._crypten)
        else:
            owner: Graph | NativeSpec = graph
            blank: Graph | NativeSpec = weightless(graph)
            if native_model is not None:
                real, zeroed = native_onnx(native_model, torch.zeros(1, *graph.input_shape[1:]))
                owner, blank = NativeSpec(real), NativeSpec(zeroed)
            self._pool = PartyPool(
                [owner] + [blank] * (parties - 1), dealer=dealer, port=port,
                master_addr=master_addr, timeout=timeout, threads=threads, precision_bits=precision_bits,
            )

    def run(self, x: torch.Tensor, reveal: frozenset[str] = frozenset()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Evaluate ``x``; ``reveal`` opens named intermediate values (calibration only)."""
        started = time.perf_counter()
        if self._local is not None:
            comm = self._crypten.communicator.get()
            comm.reset_communication_stats()
            x_enc = self._crypten.cryptensor(x, src=0)
            y_enc, revealed = self._local(x_enc, reveal=reveal)
            y = y_enc.get_plain_text()
            s = comm.get_communication_stats()
            per_party: tuple[dict[str, Any], ...] = (
                {"rank": 0, "role": "all roles (simulation)", "bytes": s["bytes"], "rounds": s["rounds"],
                 "seconds": time.perf_counter() - started},
            )
        else:
            if self._pool is None:
                raise PartyFailure("the party processes are closed; wrap the model again to restart them")
            y, revealed, stats = self._pool.run(x, reveal)
            per_party = tuple(
                {"rank": r, "role": role_of(r, self.parties), "bytes": s["bytes"], "rounds": s["rounds"],
                 "seconds": s["seconds"]}
                for r, s in sorted(stats.items())
            )
        wall = time.perf_counter() - started
        self.last_run = RunStats(
            backend="crypten",
            batch_size=int(x.shape[0]),
            wall_s=wall,
            compute_s=max(p["seconds"] for p in per_party),
            # each party counts what it sends; the sum is the traffic on the wire
            bytes_sent=sum(int(p["bytes"]) for p in per_party),
            rounds=max(int(p["rounds"]) for p in per_party),
            per_party=per_party,
            simulated=self.simulated,
            extra={"parties": self.parties, "dealer": self.dealer, "precision_bits": self.precision_bits},
        )
        return y, revealed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def kill_party(self, rank: int) -> None:
        """Kill one party process abruptly: for testing failure handling."""
        if self._pool is None:
            raise ParameterError("kill_party needs real parties (parties >= 2)")
        self._pool.kill(rank)

    def describe(self) -> dict[str, Any]:
        if self.simulated:
            mode = "SIMULATION: all parties in the caller's process (debugging only, no separation)"
        else:
            mode = f"{self.parties} party processes over TCP (gloo)" + (" + trusted dealer" if self.dealer else "")
        roles = "rank 0 model owner, rank 1 data owner" + (", ranks 2.. helpers" if self.parties > 2 else "")
        return {
            "backend": "crypten",
            "mode": mode,
            "roles": roles if not self.simulated else "simulated",
            "address": self._pool.address if self._pool is not None else "in-process",
            "fixed point": f"{self.precision_bits} fractional bits",
            "threat model": "semi-honest parties; outputs revealed to the data owner only",
        }


def native_crypten(model: torch.nn.Module, sample_input: torch.Tensor, *, parties: int = 2, **options: Any) -> CryptenProgram:
    """Raw CrypTen (its own ``from_pytorch`` converter) in the same party processes.

    For benchmarks only: it is the anchor the wrapper's overhead is measured
    against. It has none of ``wrap``'s checks, reports or error translation.
    """
    from secure_infer.graph import trace

    if parties < 2:
        raise ParameterError("native_crypten runs real parties: parties must be >= 2")
    return CryptenProgram(trace(model, sample_input), parties=parties, native_model=model.eval(), **options)


def _init_in_process(precision_bits: int) -> Any:
    from secure_infer._crypten_compat import load_crypten

    crypten = load_crypten()
    crypten.cfg.communicator.verbose = True
    crypten.cfg.encoder.precision_bits = precision_bits
    if not crypten.is_initialized():
        import os

        # A private, single-party world; never joins another process group.
        for key, value in {"WORLD_SIZE": "1", "RANK": "0"}.items():
            os.environ.setdefault(key, value)
        crypten.init()
    return crypten


class CryptenBackend(Backend):
    name = "crypten"
    options = frozenset(_OPTIONS)
    rules = RULES

    def model_problems(self, graph: Graph, **options: Any) -> list[UnsupportedModelError]:
        # Build every rule once with plaintext "shares": rules reject the layer
        # settings they cannot run (ceil_mode, padding='same'...) while building.
        problems: list[UnsupportedModelError] = []
        for node in graph.layers():
            try:
                RULES.find(node).rule(node, lambda t: t)
            except UnsupportedModelError as exc:
                problems.append(exc)
        return problems

    def build(self, graph: Graph, sample_input: torch.Tensor, **options: Any) -> CryptenProgram:
        calibration = options.pop("calibration", None)
        annotate_ranges(graph, sample_input if calibration is None else calibration)
        program = CryptenProgram(graph, **options)
        program.conversions = list(graph.conversions) + self.conversions(graph)
        return program

    def conversions(self, graph: Graph) -> list[Conversion]:
        out = []
        for node in graph.layers():
            entry = RULES.find(node)
            if not entry.listed:
                continue
            detail = entry.detail
            if node.op == "layer_norm" and "variance_range" in node.attrs:
                from secure_infer.backends.crypten.normalization import (
                    newton_iterations,
                    variance_bounds,
                )

                low, high = variance_bounds(node)
                detail += (f" ({newton_iterations(low, high)} iterations, accurate for variances in "
                           f"[{low:.3g}, {high:.3g}]: the sample's range widened 16x each way)")
            out.append(Conversion(node.path, node.type_name, entry.kind, detail))
        return out


def annotate_ranges(graph: Graph, x: torch.Tensor) -> None:
    """Record, on each LayerNorm node, the range of variances it sees on ``x`` (sample or calibration data).

    The Newton-Raphson inverse square root is built for that range, widened
    (see :mod:`.normalization`); the two numbers travel with the graph to every party.
    """
    if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != tuple(graph.input_shape[1:]) and not graph.one_hot:
        raise ParameterError(f"calibration must be a tensor shaped (n, {', '.join(map(str, graph.input_shape[1:]))})")
    norms = [n for n in graph.nodes if n.op == "layer_norm"]
    if not norms:
        return
    values = graph.evaluate(x)
    for node in norms:
        assert isinstance(node.module, torch.nn.LayerNorm)
        dims = tuple(range(-len(node.module.normalized_shape), 0))
        var = values[node.inputs[0]].double().var(dim=dims, unbiased=False)
        node.attrs["variance_range"] = (float(var.min()), float(var.max()))


@register_backend("crypten")
def _factory() -> Backend:
    return CryptenBackend()


__all__ = [
    "DATA_OWNER",
    "MODEL_OWNER",
    "ROLES",
    "CryptenBackend",
    "CryptenProgram",
    "PartyJob",
    "PartyPool",
    "PartyProgram",
    "PartySession",
    "PartySettings",
    "TLSGroup",
    "TLSLinks",
    "free_port",
    "init_tls_communicator",
    "native_crypten",
    "parse_phase_line",
    "phase_line",
    "role_of",
    "run_crypten_party",
    "shutdown_tls_communicator",
    "tls_communicator_active",
    "weightless",
]
