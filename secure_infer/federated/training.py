"""Federated training on Flower, with secure aggregation and DP-FedAvg as options.

One run is one :class:`FederatedConfig`: N clients, an IID or Dirichlet split of
a bundled data set, FedAvg or FedProx, and how updates are combined:

* ``"plain"``: the server sees every client's update (Flower's default workflow);
* ``"secagg+"``: Flower's SecAgg+ workflow and ``secaggplus_mod``: the server
  learns only the sum; dropped clients' masks are removed from their neighbours'
  key shares;
* ``"crypten"``: each client seals additive shares of its update to two or three
  non-colluding CrypTen aggregator parties
  (:mod:`secure_infer.federated.crypten_aggregation`); the server relays sealed
  bytes, the aggregators reveal only the average.

``dp=DPSettings(...)`` adds DP-FedAvg (McMahan et al. 2018): clients clip their
update (Flower's ``fixedclipping_mod``), the server adds Gaussian noise to the
average (Flower's ``DifferentialPrivacyClientSideFixedClipping``), and Opacus'
RDP accountant turns noise, sampling rate and rounds into epsilon, per round.

The runtime is Flower's: ServerApp, ClientApp, strategies and the Ray-backed
simulation engine (``run_simulation``). What this module adds is the record a
privacy report needs: accuracy, who was aggregated and who dropped, epsilon and
bytes per round.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secure_infer._errors import BackendUnavailableError, ParameterError, SecureInferError
from secure_infer.datasets import Dataset
from secure_infer.federated.data import Partition, partition

__all__ = [
    "AGGREGATIONS",
    "STRATEGIES",
    "ClientDropped",
    "DPSettings",
    "FederatedConfig",
    "FederatedResult",
    "RoundRecord",
    "dp_epsilon",
    "client_seed",
    "get_weights",
    "noise_for_epsilon",
    "replay_fedavg",
    "run_federated",
    "set_weights",
]

AGGREGATIONS = ("plain", "secagg+", "crypten")
STRATEGIES = ("fedavg", "fedprox")


class ClientDropped(SecureInferError):
    """A simulated client left the round (scheduled by ``FederatedConfig.drop``)."""


@dataclass(frozen=True)
class DPSettings:
    """Client-level DP-FedAvg: clip each update to ``clipping_norm``, noise the average.

    The Gaussian noise added to the average has standard deviation
    ``noise_multiplier * clipping_norm / clients_per_round``.
    """

    noise_multiplier: float
    clipping_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise ParameterError(f"dp noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.clipping_norm <= 0:
            raise ParameterError(f"dp clipping_norm must be positive, got {self.clipping_norm}")
        if not 0 < self.delta < 1:
            raise ParameterError(f"dp delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class FederatedConfig:
    """One federated training run.

    ``alpha=None`` splits IID; a positive ``alpha`` draws a Dirichlet label skew.
    ``fraction`` of the clients train in each round (at least ``min_clients``).
    ``drop`` lists ``(round, client)`` pairs that fail mid-round, to show that
    a run survives and reports them.
    """

    label: str = "FedAvg"
    model: str = "mlp"
    clients: int = 10
    rounds: int = 50
    fraction: float = 1.0
    min_clients: int = 2
    local_epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    alpha: float | None = 0.5
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    aggregation: str = "plain"
    aggregators: int = 2
    secagg_shares: float = 0.6
    secagg_threshold: float = 0.6
    dp: DPSettings | None = None
    drop: tuple[tuple[int, int], ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ParameterError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ParameterError(
                f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.clients < 2:
            raise ParameterError(f"clients must be at least 2, got {self.clients}")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ParameterError("rounds, local_epochs and batch_size must be at least 1")
        if not 0 < self.fraction <= 1:
            raise ParameterError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.aggregation == "crypten" and self.aggregators not in (2, 3):
            raise ParameterError(f"aggregators must be 2 or 3, got {self.aggregators}")
        if self.aggregation == "crypten" and self.dp is not None:
            raise ParameterError("dp with aggregation='crypten' is not supported yet; "
                                 "use aggregation='secagg+' or 'plain' with dp")
        for rnd, client in self.drop:
            if not (1 <= rnd <= self.rounds and 0 <= client < self.clients):
                raise ParameterError(f"drop entry ({rnd}, {client}) is outside rounds 1..{self.rounds} "
                                     f"and clients 0..{self.clients - 1}")

    @property
    def clients_per_round(self) -> int:
        return max(self.min_clients, int(round(self.fraction * self.clients)))


@dataclass
class RoundRecord:
    """What one round produced and cost."""

    round: int
    accuracy: float
    loss: float
    aggregated: list[int]
    dropped: list[str]
    seconds: float
    epsilon: float | None = None
    upload_bytes: int = 0
    download_bytes: int = 0
    aggregation: dict[str, Any] = field(default_factory=dict)


@dataclass
class FederatedResult:
    """A finished run: its config, every round, and the final global model."""

    config: FederatedConfig
    rounds: list[RoundRecord]
    model: nn.Module
    partition: Partition
    initial_accuracy: float
    seconds: float
    history: list[list[np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else self.initial_accuracy

    @property
    def epsilon(self) -> float | None:
        return self.rounds[-1].epsilon if self.rounds else None

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self.config)
        return {"config": config, "accuracy": self.accuracy, "epsilon": self.epsilon,
                "initial_accuracy": self.initial_accuracy, "seconds": self.seconds,
                "client_sizes": self.partition.sizes(),
                "rounds": [asdict(r) for r in self.rounds]}


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's parameters and buffers as float32 arrays, in state_dict order."""
    return [v.detach().cpu().numpy().astype(np.float32, copy=True) for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays from :func:`get_weights` (or an aggregate of them) into ``model``."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ParameterError(f"got {len(weights)} arrays for a model with {len(state)} tensors")
    new = {}
    for (name, old), w in zip(state.items(), weights, strict=True):
        if tuple(old.shape) != tuple(np.shape(w)):
            raise ParameterError(f"array for {name} has shape {np.shape(w)}, the model needs {tuple(old.shape)}")
        new[name] = torch.as_tensor(np.asarray(w)).to(old.dtype)
    model.load_state_dict(new)


# Opacus' default RDP orders stop at 63; strong noise over few rounds needs higher ones
# for a tight bound (Opacus warns "optimal RDP order is the largest alpha" otherwise).
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024]


def dp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Client-level epsilon after ``rounds`` of the subsampled Gaussian mechanism (Opacus' RDP accountant)."""
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(min(sample_rate, 1.0)), int(rounds))]
    return float(accountant.get_epsilon(delta=delta, alphas=RDP_ORDERS))


def noise_for_epsilon(epsilon: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier whose :func:`dp_epsilon` is at most ``epsilon`` (bisection, 1e-3)."""
    if not epsilon > 0:
        raise ParameterError(f"target epsilon must be positive, got {epsilon}")
    low, high = 0.0, 1.0
    while dp_epsilon(high, sample_rate, rounds, delta) > epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ParameterError(f"no noise multiplier reaches epsilon {epsilon} over {rounds} rounds")
    while high - low > 1e-3:
        mid = (low + high) / 2
        if dp_epsilon(mid, sample_rate, rounds, delta) > epsilon:
            low = mid
        else:
            high = mid
    return high


def _require_flwr() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise BackendUnavailableError(
            "federated learning needs Flower: pip install 'secure-infer[fl]'") from exc


def _local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
                 lr: float, mu: float, seed: int) -> float:
    """Plain SGD on one client's data; ``mu > 0`` adds FedProx's proximal term."""
    anchor = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            if mu > 0:
                loss = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                                                     strict=True))
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    model.eval()
    return total / max(seen, 1)


def client_seed(config: FederatedConfig, rnd: int, client: int) -> int:
    """The seed of ``client``'s local training in round ``rnd`` (so a round can be replayed)."""
    return config.seed * 100_003 + rnd * 1_009 + client


def replay_fedavg(result: FederatedResult, data: Dataset, rnd: int) -> list[np.ndarray]:
    """Plaintext FedAvg of round ``rnd``, recomputed from each aggregated client's own training.

    Local training is deterministic, so this is what the round's aggregate must
    equal however it was computed (secure aggregation, CrypTen parties); it
    reruns the clients outside the protocol, for checking only.
    """
    config = result.config
    if not 1 <= rnd <= len(result.rounds) or len(result.history) <= rnd:
        raise ParameterError(f"round {rnd} was not recorded (the run has {len(result.rounds)} rounds)")
    record = result.rounds[rnd - 1]
    net = copy.deepcopy(result.model)
    total: list[np.ndarray] | None = None
    weight_sum = 0.0
    for client in record.aggregated:
        idx = torch.as_tensor(result.partition.indices[client])
        set_weights(net, result.history[rnd - 1])
        _local_train(net, data.x_train[idx], data.y_train[idx], epochs=config.local_epochs,
                     batch_size=config.batch_size, lr=config.lr,
                     mu=config.proximal_mu if config.strategy == "fedprox" else 0.0,
                     seed=client_seed(config, rnd, client))
        w = 1.0 if config.dp is not None else float(len(idx))
        weights = get_weights(net)
        total = [w * a for a in weights] if total is None else [t + w * a for t, a in zip(total, weights, strict=True)]
        weight_sum += w
    if total is None:
        raise ParameterError(f"round {rnd} aggregated no client")
    return [(t / weight_sum).astype(np.float32) for t in total]


def _payload_bytes(content: Any) -> int:
    """Bytes of arrays and config values in a Flower RecordDict (the payload, not gRPC framing)."""
    size = 0
    for record in content.array_records.values():
        for arr in record.values():
            size += len(arr.data)
    for record in content.config_records.values():
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            for v in items:
                size += len(v) if isinstance(v, bytes | str) else 8
    for record in content.metric_records.values():
        size += 8 * len(record)
    return size


def _traffic_mod(log_dir: str) -> Callable[..., Any]:
    """A client mod that appends every message's payload size to ``log_dir`` (one file per process)."""

    def mod(msg: Any, ctxt: Any, call_next: Callable[..., Any]) -> Any:
        down = _payload_bytes(msg.content) if msg.has_content() else 0
        out = call_next(msg, ctxt)
        up = _payload_bytes(out.content) if out.has_content() else 0
        line = json.dumps({"round": msg.metadata.group_id, "type": msg.metadata.message_type,
                           "down": down, "up": up})
        with open(os.path.join(log_dir, f"traffic-{os.getpid()}.jsonl"), "a") as fh:
            fh.write(line + "\n")
        return out

    return mod


def _read_traffic(log_dir: str) -> dict[int, tuple[int, int]]:
    per_round: dict[int, list[int]] = {}
    for path in Path(log_dir).glob("traffic-*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if not str(row["round"]).isdigit() or not str(row["type"]).startswith("train"):
                continue
            acc = per_round.setdefault(int(row["round"]), [0, 0])
            acc[0] += int(row["up"])
            acc[1] += int(row["down"])
    return {r: (v[0], v[1]) for r, v in per_round.items()}


class _Tracker:
    """Collects what the server side observed, round by round (lives in the server's process)."""

    def __init__(self, config: FederatedConfig, on_round: Callable[[RoundRecord], None] | None) -> None:
        self.config = config
        self.on_round = on_round
        self.records: list[RoundRecord] = []
        self.pending: dict[int, dict[str, Any]] = {}
        self.round_started = time.perf_counter()
        self.final_weights: list[np.ndarray] | None = None
        self.history: list[list[np.ndarray]] = []
        self.initial: tuple[float, float] | None = None
        self.error: BaseException | None = None

    def fit_done(self, rnd: int, results: list[tuple[Any, Any]], failures: list[Any],
                 aggregation: dict[str, Any] | None = None) -> None:
        aggregated = sorted(int(res.metrics.get("client", -1)) for _, res in results)
        dropped = list(dict.fromkeys(_failure_text(f) for f in failures))  # SecAgg+ stages repeat one
        self.pending[rnd] = {"aggregated": aggregated, "dropped": dropped,
                             "aggregation": aggregation or {}}

    def evaluated(self, rnd: int, weights: list[np.ndarray], loss: float, accuracy: float) -> None:
        self.history.append([w.copy() for w in weights])
        if rnd == 0:
            self.initial = (loss, accuracy)
            self.round_started = time.perf_counter()
            return
        info = self.pending.pop(rnd, {"aggregated": [], "dropped": [], "aggregation": {}})
        now = time.perf_counter()
        cfg = self.config
        epsilon = None
        if cfg.dp is not None:
            epsilon = dp_epsilon(cfg.dp.noise_multiplier, cfg.clients_per_round / cfg.clients, rnd, cfg.dp.delta)
        record = RoundRecord(rnd, accuracy, loss, info["aggregated"], info["dropped"],
                             now - self.round_started, epsilon, aggregation=info["aggregation"])
        self.round_started = now
        self.records.append(record)
        self.final_weights = [w.copy() for w in weights]
        if self.on_round is not None:
            self.on_round(record)


def _failure_text(failure: Any) -> str:
    """One line saying which client failed and why, out of Flower's or Ray's wrapped error."""
    if isinstance(failure, BaseException):
        text = str(failure)
    else:
        _, res = failure
        text = f"client {res.metrics.get('client', '?')}: {res.status.message}"
    found = re.search(r"Message: ([^\n'\"\\]+)", text)
    if found:
        return found.group(1).strip()[:200]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "failed"


def _build_strategy(config: FederatedConfig, initial: list[np.ndarray], tracker: _Tracker,
                    evaluate: Callable[[list[np.ndarray]], tuple[float, float]],
                    aggregator: Any) -> Any:
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx

    per_round = config.clients_per_round

    def fit_config(rnd: int) -> dict[str, Any]:
        out: dict[str, Any] = {"round": rnd}
        if aggregator is not None:
            out.update(aggregator.fit_config(rnd))
        return out

    def server_eval(rnd: int, weights: list[np.ndarray], _cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        loss, acc = evaluate(weights)
        tracker.evaluated(rnd, weights, loss, acc)
        return loss, {"accuracy": acc}

    common: dict[str, Any] = dict(
        fraction_fit=per_round / config.clients, fraction_evaluate=0.0,
        min_fit_clients=per_round, min_evaluate_clients=0, min_available_clients=config.clients,
        evaluate_fn=server_eval, on_fit_config_fn=fit_config,
        initial_parameters=ndarrays_to_parameters(initial), accept_failures=True)
    base: type = FedProx if config.strategy == "fedprox" else FedAvg
    if config.strategy == "fedprox":
        common["proximal_mu"] = config.proximal_mu
    strategy: Any = _tracked(base, tracker, aggregator)(**common)
    if config.dp is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=config.dp.noise_multiplier,
            clipping_norm=config.dp.clipping_norm, num_sampled_clients=per_round)
    return strategy


def _tracked(base: type, tracker: _Tracker, aggregator: Any) -> type:
    """``base`` (a Flower strategy) that reports each round's survivors and drop-outs to ``tracker``."""

    class Tracked(base):  # type: ignore[misc, valid-type]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            tracker.round_started = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            if aggregator is not None:
                params, metrics, info, extra_failures = aggregator.aggregate(server_round, results)
                tracker.fit_done(server_round, [r for r in results if r[1].metrics.get("client") in
                                                info["clients"]], list(failures) + extra_failures, info)
                return params, metrics
            tracker.fit_done(server_round, results, failures)
            return super().aggregate_fit(server_round, results, failures)

    Tracked.__name__ = base.__name__
    return Tracked


def run_federated(config: FederatedConfig, data: Dataset, *, model: nn.Module | None = None,
                  on_round: Callable[[RoundRecord], None] | None = None,
                  ray_init_args: dict[str, Any] | None = None) -> FederatedResult:
    """Train ``model`` (default: the zoo model ``config.model``) across simulated Flower clients.

    Clients run as Flower ClientApps on the Ray-backed simulation engine; the
    server side runs in this process and calls ``on_round`` after every round.
    """
    _require_flwr()
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import fixedclipping_mod, secaggplus_mod
    from flwr.common import Context
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    from secure_infer import zoo

    if data.synthetic:
        raise ParameterError(f"{data.label}: federated training needs a real data set")
    started = time.perf_counter()
    split = partition(data.y_train, config.clients, alpha=config.alpha, seed=config.seed,
                      min_size=max(2, config.batch_size // 4))
    template = copy.deepcopy(model) if model is not None else zoo.build(
        config.model, data.input_shape, data.num_classes, seed=config.seed)
    template.eval()
    initial = get_weights(template)
    x_train, y_train = data.x_train, data.y_train
    shards = [(x_train[torch.as_tensor(i)], y_train[torch.as_tensor(i)]) for i in split.indices]

    aggregator = None
    if config.aggregation == "crypten":
        from secure_infer.federated.crypten_flower import CrypTenRelay

        aggregator = CrypTenRelay(config.aggregators, min_clients=config.min_clients)

    tracker = _Tracker(config, on_round)
    evaluator = copy.deepcopy(template)

    def evaluate(weights: list[np.ndarray]) -> tuple[float, float]:
        set_weights(evaluator, weights)
        with torch.no_grad():
            logits = evaluator(data.x_test)
            loss = float(nn.functional.cross_entropy(logits, data.y_test))
            acc = float((logits.argmax(1) == data.y_test).float().mean())
        return loss, acc

    strategy = _build_strategy(config, initial, tracker, evaluate, aggregator)
    drops = set(config.drop)
    client_public = aggregator.client_side() if aggregator is not None else None
    dp_uniform = config.dp is not None

    class _Client(NumPyClient):  # type: ignore[misc]
        def __init__(self, cid: int) -> None:
            self.cid = cid
            self.net = copy.deepcopy(template)

        def fit(self, parameters: list[np.ndarray], cfg: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            rnd = int(cfg.get("round", 0))
            if (rnd, self.cid) in drops:
                raise ClientDropped(f"client {self.cid} dropped out of round {rnd} (scheduled)")
            torch.set_num_threads(1)
            set_weights(self.net, parameters)
            x, y = shards[self.cid]
            loss = _local_train(self.net, x, y, epochs=config.local_epochs, batch_size=config.batch_size,
                                lr=config.lr, mu=float(cfg.get("proximal_mu", 0.0)),
                                seed=client_seed(config, rnd, self.cid))
            weights = get_weights(self.net)
            # DP-FedAvg averages clipped updates uniformly: a client's weight must not scale
            # its influence past the clipping norm.
            n = 1 if dp_uniform else len(x)
            metrics = {"client": self.cid, "loss": loss}
            if client_public is not None:
                return client_public.seal(weights, n, cfg, self.cid), n, metrics
            return weights, n, metrics

    def client_fn(context: Context) -> Any:
        return _Client(int(context.node_config["partition-id"])).to_client()

    traffic_dir = tempfile.mkdtemp(prefix="secure-infer-fl-")
    mods: list[Any] = [_traffic_mod(traffic_dir)]
    if config.aggregation == "secagg+":
        mods.append(secaggplus_mod)
    if config.dp is not None:
        mods.append(fixedclipping_mod)
    client_app = ClientApp(client_fn=client_fn, mods=mods)
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=config.rounds), strategy=strategy)
        fit_workflow = None
        if config.aggregation == "secagg+":
            fit_workflow = SecAggPlusWorkflow(num_shares=config.secagg_shares,
                                              reconstruction_threshold=config.secagg_threshold,
                                              timeout=120.0)
        try:
            DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
        except BaseException as exc:  # reported after the simulation returns
            tracker.error = exc
            raise

    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                      "logging_level": logging.ERROR, "log_to_driver": False, **(ray_init_args or {})},
    }
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_logger = logging.getLogger("flwr")
    old_level = flwr_logger.level
    flwr_logger.setLevel(logging.CRITICAL)  # client failures are reported per round
    # Flower's DP wrappers draw the server's Gaussian noise from numpy's global generator:
    # seed it for the run (and put the caller's state back after) so a run is reproducible.
    numpy_state = np.random.get_state()
    np.random.seed(config.seed)
    try:
        if aggregator is not None:
            aggregator.start()
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=config.clients,
                       backend_config=backend_config)  # type: ignore[arg-type]
    finally:
        np.random.set_state(numpy_state)
        flwr_logger.setLevel(old_level)
        if aggregator is not None:
            aggregator.close()
    if tracker.error is not None:
        raise SecureInferError(f"federated run {config.label!r} failed: {tracker.error}") from tracker.error
    if len(tracker.records) != config.rounds or tracker.final_weights is None or tracker.initial is None:
        raise SecureInferError(
            f"federated run {config.label!r} finished {len(tracker.records)} of {config.rounds} rounds; "
            "the simulation engine stopped early (see the log above)")
    traffic = _read_traffic(traffic_dir)
    shutil.rmtree(traffic_dir, ignore_errors=True)
    for record in tracker.records:
        record.upload_bytes, record.download_bytes = traffic.get(record.round, (0, 0))
    final = copy.deepcopy(template)
    set_weights(final, tracker.final_weights)
    final.eval()
    return FederatedResult(replace(config), tracker.records, final, split, tracker.initial[1],
                           time.perf_counter() - started, tracker.history)
