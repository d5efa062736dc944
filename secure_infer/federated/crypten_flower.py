"""CrypTen aggregators inside a Flower run: the server relays sealed shares.

The server side publishes the aggregators' public keys in every round's fit
config; each client seals one share of its model per aggregator
(:func:`~secure_infer.federated.crypten_aggregation.share_update`) and returns
the sealed bytes in place of its parameters, so the Flower server only ever
holds ciphertexts. The strategy hands them to :class:`CrypTenAggregator`,
whose parties reveal only the weighted average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from secure_infer.federated.crypten_aggregation import (
    AggregatorKey,
    CrypTenAggregator,
    share_update,
)

if TYPE_CHECKING:
    from secure_infer.federated.training import FederatedConfig

__all__ = ["CrypTenRelay", "SealingClient"]

_KEY = "secure-infer.aggregator-key-"


@dataclass(frozen=True)
class SealingClient:
    """The client's half: seal the trained model's shares to the keys in the fit config."""

    parties: int

    def seal(self, weights: list[np.ndarray], weight: float, config: dict[str, Any], client: int) -> list[np.ndarray]:
        keys = [AggregatorKey(i, self.parties, bytes(config[f"{_KEY}{i}"])) for i in range(self.parties)]
        sealed = share_update(weights, weight, keys, client=str(client), round=int(config["round"]))
        return [np.frombuffer(blob, dtype=np.uint8).copy() for blob in sealed]


class CrypTenRelay:
    """The server's half: publish keys, hand each round's sealed shares to the aggregator parties."""

    def __init__(self, config: FederatedConfig) -> None:
        self.parties = config.aggregators
        self.aggregator = CrypTenAggregator(config.aggregators, min_clients=config.min_clients)

    def fit_config(self, rnd: int) -> dict[str, Any]:
        return {f"{_KEY}{k.index}": k.public for k in self.aggregator.keys}

    def client_side(self) -> SealingClient:
        return SealingClient(self.parties)

    def start(self) -> None:
        """Nothing to start: the aggregator parties run for each round's aggregation."""

    def close(self) -> None:
        """Nothing held between rounds."""

    def aggregate(self, rnd: int, results: list[tuple[Any, Any]]) -> tuple[Any, dict[str, Any], dict[str, Any],
                                                                          list[BaseException]]:
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

        sealed = {str(res.metrics["client"]): [arr.tobytes() for arr in parameters_to_ndarrays(res.parameters)]
                  for _, res in results}
        out = self.aggregator.aggregate(sealed, round=rnd)
        info = {"clients": sorted(int(c) for c in out.clients), "seconds": out.seconds,
                "aggregate_seconds": out.aggregate_seconds,
                "bytes_per_party": float(np.mean(out.bytes_per_party)), "rounds": out.rounds,
                "upload_bytes": out.upload_bytes}
        failures: list[BaseException] = [RuntimeError(f"client {c}: {why}") for c, why in out.dropped.items()]
        return ndarrays_to_parameters(out.arrays), {}, info, failures
