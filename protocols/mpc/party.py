"""One MPC party, run on its own (``secure-infer party``): on this host or another.

Parties find each other through torch.distributed's own TCP rendezvous at
``--master HOST:PORT`` (rank 0 listens there; no authentication, no
encryption), or, with ``--tls-cert/--tls-key/--tls-ca`` and ``--peers``, over
mutually authenticated TLS 1.3 links: every party listens at its own
``--peers`` entry, dials the others, and admits only certificates the
deployment's CA signed for the rank they claim (``secure-infer certs DIR
--parties N``). No other cluster layer. Each party reads only its own files:

* task ``infer``: rank 0, the **model owner**, reads the model file (a zoo
  model saved by ``secure-infer zoo train``); rank 1, the **data owner**, reads
  the input and alone receives the output; ranks 2.. are **helpers** holding
  shares only; with ``--dealer`` a trusted **dealer** (rank = world size)
  hands out Beaver triples. Public metadata (architecture name and shapes,
  input shape) is exchanged as JSON; weights and inputs only as shares.
* task ``train``: every party with ``--data`` (an ``.npz`` holding ``x``
  and/or ``y``) is a **data owner**. If every data owner holds rows with
  labels the split is horizontal; if they hold columns of the same rows (one
  of them with the labels) it is vertical. An MLP is trained under MPC and only
  ``--weights-to`` receives the weights.

A peer that dies makes the others fail with a :class:`PartyFailure` naming
the phase within ``--timeout`` seconds (gloo's own default is 30 minutes).
Over TLS there is no dealer (``--dealer`` is refused: CrypTen's dealer
pickles its requests over torch.distributed).

Each party prints one line as it enters each phase (``rendezvous``, then
``inference``/``training`` or ``dealing``, then ``shutdown``), e.g.
``[secure-infer] party 1 (data-owner) phase: inference``: a launcher or an
operator can see how far every party got, and a failure drill can strike at a
known point instead of after a guessed number of seconds.

Joining the peers, the phases, teardown and the errors are the CrypTen
backend's party runtime (``run_crypten_party``), the same one the party
processes of ``wrap(..., backend="crypten")`` run; this module adds the tasks,
their files and their checks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocols.common.address import is_loopback
from protocols.common.collective import broadcast_json, gather_json
from secure_infer._errors import DatasetError, ParameterError
from secure_infer.backends.crypten import (
    DATA_OWNER,
    MODEL_OWNER,
    ROLES,
    PartySession,
    PartySettings,
    TLSLinks,
    role_of,
    run_crypten_party,
)

TASKS = ("infer", "train")
# the task phase each task announces between ``rendezvous`` and ``shutdown``
TASK_PHASES = {"infer": "inference", "train": "training"}


@dataclass(frozen=True)
class PartyConfig:
    """Everything one party needs; validated before it contacts anyone.

    Attributes:
        rank: this party's rank (0..world_size-1; world_size for the dealer).
        world_size: computing parties (the dealer not counted).
        master: ``HOST:PORT`` of rank 0's gloo rendezvous (``""`` over TLS).
        role: ``model-owner``, ``data-owner``, ``helper`` or ``dealer``.
        task: ``infer`` or ``train``.
        model, input, output, data: this party's own files (see module doc).
        timeout: seconds any collective may wait for a peer.
        peers: over TLS, ``HOST:PORT`` of every computing party in rank order
            (the same list at every party); this party listens at its own entry.
        tls_cert, tls_key, tls_ca: this party's certificate and key (common
            name ``party-RANK``) and the deployment's CA; all three switch TLS on.
        tls_listen: ``HOST:PORT`` to listen at instead of this party's ``peers``
            entry (``0.0.0.0:PORT`` behind NAT).
        insecure: allow the unauthenticated gloo rendezvous at a ``master`` off loopback.
    """

    rank: int
    world_size: int
    master: str
    role: str
    task: str = "infer"
    model: Path | None = None
    input: str | None = None
    output: Path | None = None
    data: Path | None = None
    dealer: bool = False
    timeout: float = 120.0
    hidden: int = 16
    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 32
    seed: int = 0
    weights_to: int = 0
    threads: int = 1
    peers: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_listen: str | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        """Whether this party meets the others over TLS links (any ``--tls-*`` given)."""
        return any(v is not None for v in (self.tls_cert, self.tls_key, self.tls_ca))

    @property
    def address(self) -> tuple[str, int]:
        """The gloo rendezvous; over TLS, rank 0's ``--peers`` entry (informational)."""
        where, flag = (self.peers[0], "--peers") if self.tls and self.peers else (self.master, "--master")
        host, sep, port = where.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ParameterError(f"{flag} {where!r} must look like HOST:PORT (rank 0's address)")
        return host.removeprefix("[").removesuffix("]"), int(port)

    def tls_links(self) -> TLSLinks | None:
        """The TLS links of this party, or None for the gloo rendezvous."""
        if not self.tls:
            return None
        return TLSLinks(tuple(self.peers), Path(str(self.tls_cert)), Path(str(self.tls_key)), Path(str(self.tls_ca)),
                        timeout=self.timeout, listen=self.tls_listen)

    def _validate_transport(self) -> None:
        if not self.tls:
            if self.peers or self.tls_listen:
                raise ParameterError("--peers and --tls-listen are for TLS links: add --tls-cert, --tls-key and "
                                     "--tls-ca (or leave them out and use --master)")
            if not self.master:
                raise ParameterError("give --master HOST:PORT (the gloo rendezvous) or the TLS options "
                                     "--tls-cert/--tls-key/--tls-ca with --peers")
            host = self.master.rpartition(":")[0]
            if host and not is_loopback(host) and not self.insecure:
                raise ParameterError(f"--master {self.master} is not loopback: the gloo rendezvous and links are "
                                     "unauthenticated and unencrypted. Use TLS links (--tls-cert/--tls-key/--tls-ca "
                                     "with --peers; `secure-infer certs DIR --parties N` makes the certificates), "
                                     "or --insecure on a network you trust")
            return
        missing = [flag for flag, v in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                                        ("--tls-ca", self.tls_ca)) if v is None]
        if missing:
            raise ParameterError(f"TLS links need --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}")
        if self.master:
            raise ParameterError("--master is the unauthenticated gloo rendezvous; over TLS the parties meet at "
                                 "--peers instead: drop --master")
        if self.dealer or self.role == "dealer":
            raise ParameterError("--dealer cannot run over TLS links: CrypTen's trusted dealer pickles its requests "
                                 "over torch.distributed. Run without the dealer")
        if len(self.peers) != self.world_size:
            raise ParameterError(f"--peers lists {len(self.peers)} addresses for --world-size {self.world_size}: "
                                 "give one HOST:PORT per rank, in rank order, the same list at every party")
        links = self.tls_links()
        assert links is not None
        if 0 <= self.rank < self.world_size:
            links.validate(self.rank)  # addresses, files, and that the certificate is this rank's

    def validate(self) -> None:
        self._validate_transport()
        self.address  # noqa: B018  (parses, raising on a bad value)
        if self.task not in TASKS:
            raise ParameterError(f"--task must be one of {TASKS}, got {self.task!r}")
        if self.role not in ROLES:
            raise ParameterError(f"--role must be one of {ROLES}, got {self.role!r}")
        if self.world_size < 2:
            raise ParameterError("--world-size must be at least 2 computing parties")
        top = self.world_size if self.dealer else self.world_size - 1
        if not 0 <= self.rank <= top:
            raise ParameterError(f"--rank must be in 0..{top} for world size {self.world_size}"
                                 + (" plus the dealer" if self.dealer else " (add --dealer for a dealer rank)"))
        if self.role == "dealer" or self.rank == self.world_size:
            if not (self.role == "dealer" and self.rank == self.world_size):
                raise ParameterError(f"the dealer runs as rank {self.world_size} (= --world-size) with --role dealer")
            return
        if self.task == "infer":
            expected = role_of(self.rank, self.world_size)
            if self.role != expected:
                raise ParameterError(f"in task infer rank {self.rank} is the {expected} (got --role {self.role}); "
                                     "rank 0 holds the model, rank 1 the input, others are helpers")
            if self.role == "model-owner" and (self.model is None or not Path(self.model).is_file()):
                raise DatasetError(f"the model owner needs --model FILE (a saved zoo model); got {self.model}")
            if self.role == "data-owner" and not self.input:
                raise ParameterError("the data owner needs --input (a .npy file or DATASET:START-END)")
        else:
            if self.role == "data-owner" and (self.data is None or not Path(self.data).is_file()):
                raise DatasetError(f"a data owner in task train needs --data FILE.npz; got {self.data}")
            if self.role == "helper" and self.data is not None:
                raise ParameterError("a helper holds no data: use --role data-owner with --data")
            if self.role == "model-owner":
                raise ParameterError("task train has no model owner: parties are data owners or helpers")
            if not 0 <= self.weights_to < self.world_size:
                raise ParameterError(f"--weights-to must be a computing party's rank (0..{self.world_size - 1})")
            if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1 or self.lr <= 0:
                raise ParameterError("--epochs, --batch-size and --hidden must be >= 1, --lr > 0")


@dataclass
class PartyOutcome:
    """What one party did: written as JSON by ``--summary`` for launchers and reports."""

    rank: int
    role: str
    task: str
    seconds: float
    bytes_sent: int = 0
    rounds: int = 0
    result: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def run_party(config: PartyConfig, *, on_phase: Callable[[PartyConfig, str], None] | None = None) -> PartyOutcome:
    """Run one party to completion; raises :class:`PartyFailure` if a peer fails or times out.

    The backend's party runtime (:func:`~secure_infer.backends.crypten.run_crypten_party`)
    joins the peers and tears down; this adds the task. ``on_phase(config, phase)``
    is called as the party enters each phase (by default the marker line
    :func:`~secure_infer.backends.crypten.phase_line` is printed); ``rendezvous`` comes before the party has joined its peers, the
    task's phase only once all of them have.
    """
    config.validate()
    host, port = config.address
    started = time.perf_counter()
    settings = PartySettings(config.rank, config.world_size, host, port, dealer=config.dealer,
                             timeout=config.timeout, threads=config.threads, role=config.role,
                             tls=config.tls_links())
    task = _infer if config.task == "infer" else _train

    def work(session: PartySession) -> tuple[dict[str, Any], dict[str, Any]]:
        result = task(config, session.crypten, session.group)
        return result, session.stats()

    done = run_crypten_party(settings, work, phase=TASK_PHASES[config.task],
                             on_phase=None if on_phase is None else (lambda phase: on_phase(config, phase)))
    seconds = time.perf_counter() - started
    if done is None:  # the dealer: it dealt triples and holds no result
        return PartyOutcome(config.rank, config.role, config.task, seconds)
    result, stats = done
    return PartyOutcome(config.rank, config.role, config.task, seconds, int(stats["bytes"]), int(stats["rounds"]),
                        result)


def _infer(config: PartyConfig, crypten: Any, group: Any) -> dict[str, Any]:
    from secure_infer import datasets, zoo
    from secure_infer.backends.crypten import PartyProgram, weightless
    from secure_infer.graph import trace

    rank = config.rank
    owned = zoo.load_model(Path(str(config.model))) if rank == MODEL_OWNER else None  # validated: a file
    arch = broadcast_json(
        {"name": owned.name, "input_shape": list(owned.input_shape), "num_classes": owned.num_classes}
        if owned else None, src=MODEL_OWNER, rank=rank, group=group)
    input_shape = tuple(int(s) for s in arch["input_shape"])
    x = labels = None
    if rank == DATA_OWNER:
        x, labels = datasets.load_inputs(str(config.input))
        if x.shape == input_shape:
            x = x[None]
    x_shape = broadcast_json(list(x.shape) if x is not None else None, src=DATA_OWNER, rank=rank, group=group)
    if tuple(x_shape[1:]) != input_shape:
        raise ParameterError(f"the data owner's input has shape {tuple(x_shape)}; the model takes "
                             f"(batch, {', '.join(map(str, input_shape))})")
    model = owned.model if owned else zoo.build(arch["name"], input_shape, int(arch["num_classes"]))
    graph = trace(model, torch.zeros(1, *input_shape))
    if rank != MODEL_OWNER:
        graph = weightless(graph)  # shapes only: the weights arrive as shares
    program = PartyProgram(graph, crypten)
    x_enc = crypten.cryptensor(x if rank == DATA_OWNER else torch.empty(x_shape), src=DATA_OWNER)
    y_enc, _ = program(x_enc)
    y = y_enc.get_plain_text(dst=DATA_OWNER)
    if rank != DATA_OWNER:
        return {}
    output = graph.finish(y)  # the model's trailing softmax/argmax, if any, runs here after the reveal
    out: dict[str, Any] = {"inputs": int(x_shape[0]), "predictions": y.argmax(1).tolist()}
    if labels is not None:
        out["accuracy"] = float((y.argmax(1) == labels).float().mean())
    if config.output is not None:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        np.save(config.output, output.numpy())
        out["output"] = str(config.output)
    return out


def load_training_part(path: Path) -> dict[str, np.ndarray]:
    """A data owner's part: ``x`` (rows x its features) and/or ``y`` (integer labels)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            part = {k: npz[k] for k in npz.files if k in ("x", "y")}
    except (ValueError, OSError) as exc:
        raise DatasetError(f"--data {path}: not a readable .npz ({exc})") from None
    if not part:
        raise DatasetError(f"--data {path}: holds neither 'x' nor 'y'")
    if "x" in part and part["x"].ndim != 2:
        raise DatasetError(f"--data {path}: x must be 2-D (rows, features), got shape {part['x'].shape}")
    if "y" in part and (part["y"].ndim != 1 or not np.issubdtype(part["y"].dtype, np.integer)):
        raise DatasetError(f"--data {path}: y must be 1-D integer labels")
    if "x" in part and "y" in part and len(part["x"]) != len(part["y"]):
        raise DatasetError(f"--data {path}: x has {len(part['x'])} rows but y has {len(part['y'])}")
    return part


def _train(config: PartyConfig, crypten: Any, group: Any) -> dict[str, Any]:
    from secure_infer.backends.crypten.training import mlp, train_on_shares

    rank = config.rank
    part = load_training_part(Path(config.data)) if config.data is not None else {}
    mine = {"x": list(part["x"].shape) if "x" in part else None,
            "y": [len(part["y"]), int(part["y"].max()) + 1] if "y" in part else None}
    shapes = gather_json(mine, rank=rank, world_size=config.world_size, group=group)
    x_owners = [r for r, s in enumerate(shapes) if s["x"]]
    y_owners = [r for r, s in enumerate(shapes) if s["y"]]
    if not x_owners or not y_owners:
        raise ParameterError("task train needs features (x) and labels (y) among the data owners")
    horizontal = x_owners == y_owners and len(x_owners) > 1 and len({shapes[r]["x"][1] for r in x_owners}) == 1
    if not horizontal:
        rows = {shapes[r]["x"][0] for r in x_owners} | {shapes[r]["y"][0] for r in y_owners}
        if len(rows) != 1 or len(y_owners) != 1:
            raise ParameterError("data owners must hold either whole rows with labels (horizontal split) or "
                                 "columns of the same rows with exactly one label holder (vertical split)")
    classes = max(shapes[r]["y"][1] for r in y_owners)

    def share(name: str, owner: int, shape: list[int], local: np.ndarray | None) -> Any:
        mine_t = torch.from_numpy(local).float() if rank == owner and local is not None else torch.empty(shape)
        return crypten.cryptensor(mine_t, src=owner)

    onehot = (torch.nn.functional.one_hot(torch.from_numpy(part["y"]).long(), classes).float().numpy()
              if "y" in part else None)
    xs = [share("x", r, shapes[r]["x"], part.get("x")) for r in x_owners]
    ys = [share("y", r, [shapes[r]["y"][0], classes], onehot) for r in y_owners]
    x = crypten.cat(xs, dim=0 if horizontal else 1)
    y = crypten.cat(ys, dim=0) if len(ys) > 1 else ys[0]
    in_features = int(x.size(1))
    result = train_on_shares(crypten, x, y, rank=rank, hidden=config.hidden, classes=classes, epochs=config.epochs,
                             lr=config.lr, batch_size=config.batch_size, seed=config.seed, weights_to=config.weights_to)
    summary: dict[str, Any] = {"split": "horizontal" if horizontal else "vertical", "rows": int(x.size(0)),
                               "features": in_features, "classes": classes, "data_owners": sorted(set(x_owners + y_owners))}
    if result is None:
        return summary
    model = mlp(in_features, config.hidden, classes, config.seed)
    model.load_state_dict(result["state_dict"])
    summary["loss_curve"] = result["loss_curve"]
    if config.output is not None:
        save_trained(model, config.output, loss_curve=result["loss_curve"])
        summary["output"] = str(config.output)
    return summary


def save_trained(model: torch.nn.Sequential, path: Path, *, loss_curve: list[float]) -> None:
    """Write the MPC-trained MLP (weights only, loadable with ``weights_only=True``)."""
    first, last = model[0], model[2]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "secure-infer-mpc-mlp/1", "in_features": first.in_features, "hidden": first.out_features,
                "classes": last.out_features, "state_dict": model.state_dict(), "loss_curve": loss_curve}, path)


def load_trained(path: Path) -> torch.nn.Module:
    """Read an MLP written by :func:`save_trained`."""
    from secure_infer.backends.crypten.training import mlp

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "secure-infer-mpc-mlp/1":
        raise ParameterError(f"{path} is not an MPC-trained model file")
    model = mlp(int(blob["in_features"]), int(blob["hidden"]), int(blob["classes"]), 0)
    model.load_state_dict(blob["state_dict"])
    return model.eval()
