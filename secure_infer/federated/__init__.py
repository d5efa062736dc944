"""Federated learning with the privacy side measured.

Training runs on Flower (its ServerApp/ClientApp, strategies and simulation
engine); what this package adds is what a curious server learns from the
clients' updates, and what secure aggregation (Flower's SecAgg+, or CrypTen
aggregator parties) and client-level differential privacy buy against it.
Needs the ``fl`` extra: ``pip install 'secure-infer[fl]'``.
"""

from secure_infer.federated.data import Partition, partition
from secure_infer.federated.training import (
    AGGREGATIONS,
    STRATEGIES,
    ClientDropped,
    DPSettings,
    FederatedConfig,
    FederatedResult,
    RoundRecord,
    dp_epsilon,
    replay_fedavg,
    run_federated,
)

__all__ = [
    "AGGREGATIONS",
    "STRATEGIES",
    "ClientDropped",
    "DPSettings",
    "FederatedConfig",
    "FederatedResult",
    "Partition",
    "RoundRecord",
    "dp_epsilon",
    "partition",
    "replay_fedavg",
    "run_federated",
]
