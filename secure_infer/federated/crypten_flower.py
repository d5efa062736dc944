"""CrypTen aggregators inside a Flower run: the server relays sealed shares.

The server side publishes the aggregators' public keys in every round's fit
config; each client seals one share of its model per aggregator
(:func:`~secure_infer.federated.crypten_aggregation.share_update`) and returns
the sealed bytes in place of its parameters, so the Flower server only ever
holds ciphertexts. The strategy hands them to the aggregators, whose CrypTen
parties reveal only the weighted average.

The aggregators' private keys never enter the server's process: a
:class:`CrypTenAggregator` runs in a process of its own
(``python -m secure_infer.federated.crypten_flower``), which makes the keys,
starts the CrypTen parties each round and returns only the average. That
process stands for the aggregators together (one host); aggregators on
separate hosts would each hold one key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

import numpy as np

from secure_infer._errors import ParameterError, PartyFailure, ProtocolError, SecureInferError
from secure_infer.federated.crypten_aggregation import (
    AggregatorKey,
    CrypTenAggregator,
    share_update,
)

__all__ = ["AggregatorProcess", "CrypTenRelay", "SealingClient"]

_KEY = "secure-infer.aggregator-key-"


@dataclass(frozen=True)
class SealingClient:
    """The client's half: seal the trained model's shares to the keys in the fit config."""

    parties: int

    def seal(self, weights: list[np.ndarray], weight: float, config: dict[str, Any], client: int) -> list[np.ndarray]:
        keys = [AggregatorKey(i, self.parties, bytes(config[f"{_KEY}{i}"])) for i in range(self.parties)]
        sealed = share_update(weights, weight, keys, client=str(client), round=int(config["round"]))
        return [np.frombuffer(blob, dtype=np.uint8).copy() for blob in sealed]


class AggregatorProcess:
    """The aggregators together, in their own process; this side holds public keys and sealed bytes only."""

    def __init__(self, parties: int, *, min_clients: int = 2, timeout: float = 120.0) -> None:
        if not isinstance(parties, int) or parties < 2:
            raise ParameterError(f"secure aggregation needs at least 2 aggregator parties, got {parties!r}")
        authkey = os.urandom(32)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        host, port = listener.address
        env = {**os.environ, "SECURE_INFER_AGGREGATOR": f"{host}:{port}:{authkey.hex()}",
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.timeout = timeout
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "secure_infer.federated.crypten_flower", str(parties), str(min_clients),
             str(timeout)], env=env, stdin=subprocess.DEVNULL)
        accepted: list[Connection] = []
        waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        waiter.start()
        deadline = time.monotonic() + timeout
        while waiter.is_alive() and self._proc.poll() is None and time.monotonic() < deadline:
            waiter.join(0.2)  # a process that dies at start-up is reported at once, not after the timeout
        listener.close()
        if not accepted:
            code = self._proc.poll()
            self._proc.kill()
            self._proc.wait()
            why = f"exited with code {code}" if code is not None else f"did not connect within {timeout:.0f} s"
            raise PartyFailure(f"the aggregator process {why} before it was ready; see its output above")
        self._conn = accepted[0]
        publics = self._receive("start-up")
        self.keys = tuple(AggregatorKey(i, parties, bytes(p)) for i, p in enumerate(publics))

    def _receive(self, what: str) -> Any:
        if not self._conn.poll(self.timeout * 2):
            raise PartyFailure(f"the aggregator process did not answer ({what}) within {self.timeout * 2:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            raise PartyFailure(f"the aggregator process exited during {what} "
                               f"(exit code {self._proc.wait(5)})") from None
        if kind == "error":
            name, message, code = payload
            if name == "ProtocolError":
                raise ProtocolError(message, code=code)
            if name == "PartyFailure":
                raise PartyFailure(message)
            raise SecureInferError(f"aggregator process, {name}: {message}")
        return payload

    def aggregate(self, sealed: dict[str, list[bytes]], *, round: int) -> Any:
        """The weighted average of ``round`` (an ``AggregationResult``), computed by the CrypTen parties."""
        self._conn.send(("aggregate", sealed, round))
        return self._receive(f"round {round}")

    def close(self) -> None:
        try:
            self._conn.send(("close", None, 0))
            self._conn.close()
        except OSError:
            pass
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _serve(address: str, parties: int, min_clients: int, timeout: float) -> None:
    host, port, key = address.split(":")
    conn = Client((host, int(port)), authkey=bytes.fromhex(key))
    try:
        aggregator = CrypTenAggregator(parties, min_clients=min_clients, timeout=timeout)
    except SecureInferError as exc:
        conn.send(("error", (type(exc).__name__, str(exc), getattr(exc, "code", ""))))
        return
    conn.send(("ok", [k.public for k in aggregator.keys]))
    while True:
        try:
            kind, sealed, rnd = conn.recv()
        except EOFError:
            return
        if kind == "close":
            return
        try:
            conn.send(("ok", aggregator.aggregate(sealed, round=rnd)))
        except SecureInferError as exc:
            conn.send(("error", (type(exc).__name__, str(exc), getattr(exc, "code", ""))))


class CrypTenRelay:
    """The server's half: publish keys, hand each round's sealed shares to the aggregator parties."""

    def __init__(self, parties: int, *, min_clients: int = 2) -> None:
        self.parties = parties
        self.min_clients = min_clients
        self.aggregator: AggregatorProcess | None = None

    def fit_config(self, rnd: int) -> dict[str, Any]:
        assert self.aggregator is not None, "start() first"
        return {f"{_KEY}{k.index}": k.public for k in self.aggregator.keys}

    def client_side(self) -> SealingClient:
        return SealingClient(self.parties)

    def start(self) -> None:
        """Start the aggregators' process (it makes their keys); their CrypTen parties run each round."""
        self.aggregator = AggregatorProcess(self.parties, min_clients=self.min_clients)

    def close(self) -> None:
        if self.aggregator is not None:
            self.aggregator.close()
            self.aggregator = None

    def aggregate(self, rnd: int, results: list[tuple[Any, Any]]) -> tuple[Any, dict[str, Any], dict[str, Any],
                                                                          list[BaseException]]:
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

        sealed = {str(res.metrics["client"]): [arr.tobytes() for arr in parameters_to_ndarrays(res.parameters)]
                  for _, res in results}
        assert self.aggregator is not None, "start() first"
        out = self.aggregator.aggregate(sealed, round=rnd)
        info = {"clients": sorted(int(c) for c in out.clients), "seconds": out.seconds,
                "aggregate_seconds": out.aggregate_seconds,
                "bytes_per_party": float(np.mean(out.bytes_per_party)), "rounds": out.rounds,
                "upload_bytes": out.upload_bytes}
        failures: list[BaseException] = [RuntimeError(f"client {c}: {why}") for c, why in out.dropped.items()]
        return ndarrays_to_parameters(out.arrays), {}, info, failures


if __name__ == "__main__":  # the aggregators' process, started by AggregatorProcess
    _serve(os.environ["SECURE_INFER_AGGREGATOR"], int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
