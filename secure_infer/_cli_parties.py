"""The command line's party commands: serve, query, party, and the mpc/he demos.

Kept apart from :mod:`secure_infer.cli` because these are the only commands
that use ``protocols`` (the CLI, like the façade, may use both packages).
They print through the CLI's :class:`~secure_infer._output.Output`, so their
tables follow the same terminal/pipe rules as every other command.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.markup import escape

from secure_infer import datasets, zoo
from secure_infer._errors import ParameterError, PartyFailure
from secure_infer._output import Output, TextTable, report_table

if TYPE_CHECKING:
    from protocols.mpc import PartyConfig


@dataclass(frozen=True)
class Training:
    """The MPC training demo's settings (the parties and the plaintext reference use the same)."""

    hidden: int = 16
    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 32


TRAINING = Training()


def model_from_arg(model: str, dataset: str | None, seed: int,
                   train: Callable[[str, datasets.Dataset], zoo.ZooModel]) -> tuple[zoo.ZooModel, datasets.Dataset]:
    """A zoo model file, or a zoo name trained now (``train(name, data)`` shows progress)."""
    if Path(model).is_file():
        z = zoo.load_model(model)
        return z, datasets.load(dataset or z.dataset, seed=seed)
    if model not in zoo.available():
        raise ParameterError(f"MODEL {model!r} is neither a file nor a zoo model ({', '.join(zoo.available())})")
    data = datasets.load(dataset or "digits", seed=seed)
    return train(model, data), data


def serve(printer: Output, z: zoo.ZooModel, data: datasets.Dataset, *, host: str, port: int, mode: str,
          max_frame_mb: int, idle_timeout: float, schedule: str | None = None) -> None:
    """Compile ``z`` for CKKS and serve it until interrupted."""
    from protocols.he import HEServer

    printer.line(f"compiling {z.name} for CKKS ({mode} mode), calibrated on {len(data.x_train)} training inputs...")
    server = HEServer.from_model(z.model, data.x_train[:1], calibration=data.x_train, mode=mode, name=z.name,
                                 host=host, port=port, max_frame=max_frame_mb << 20, idle_timeout=idle_timeout,
                                 schedule=schedule)
    printer.table(report_table(server.report))
    layout = server.program.published
    bound_host, bound_port = server.address
    printer.line(f"serving {z.name} on {bound_host}:{bound_port}: input shape {layout.input_shape}, "
                  f"N={layout.params.poly_modulus_degree}, rotation keys {list(layout.rotation_steps)}. "
                  f"Query with `secure-infer query {bound_host}:{bound_port} {z.dataset}:0-9`; Ctrl-C or SIGTERM stops.")
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (systemd, docker, kill) stops as gracefully as Ctrl-C; SIGINT may be ignored in background jobs.
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        printer.line(f"stopped after {server.stats.connections} connections, {server.stats.queries} queries; "
                      f"errors by kind: {dict(server.stats.errors) or 'none'}")


def query(printer: Output, address: str, spec: str, *, timeout: float, seed: int) -> dict[str, Any]:
    """Encrypt the inputs named by ``spec``, query the server, print decrypted predictions."""
    from protocols.he import HEClient

    x, labels = datasets.load_inputs(spec, seed=seed)
    with HEClient(address, timeout=timeout) as client:
        y = client.predict(x, epilogue=False).reshape(len(x), -1)
        stats = client.last_query
        keys = client.key_upload_bytes
    if stats is None:  # predict() records its query before it returns
        raise ParameterError(f"{address}: the query recorded no statistics")
    table = TextTable(f"{client.model_name} at {address} ({client.layout.mode} mode), decrypted here")
    for col in ("input", "prediction", "label", "top logit"):
        table.add_column(col, right=True)
    for i in range(len(y)):
        table.add_row(str(i), str(int(y[i].argmax())), str(int(labels[i])) if labels is not None else "-",
                      f"{float(y[i].max()):.3f}")
    printer.table(table)
    summary: dict[str, Any] = {
        "inputs": stats.inputs, "key_upload_mb_once": keys / 1e6,
        "mb_per_input": stats.bytes_per_input / 1e6, "encrypt_s": stats.encrypt_s,
        "round_trip_s": stats.round_trip_s, "server_compute_s": stats.server_compute_s, "decrypt_s": stats.decrypt_s,
    }
    if labels is not None:
        summary["accuracy"] = float((y.argmax(1) == labels).float().mean())
    printer.line(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary


def party(printer: Output, config: PartyConfig, summary: Path | None) -> None:
    """Run one party; exit 0 on success, 1 (with a one-line error) when a peer or this party fails."""
    from protocols.mpc import run_party

    try:
        outcome = run_party(config)
    except PartyFailure as exc:
        printer.status.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # gloo's threads may still be blocked on the dead peer: do not wait for them
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(outcome.to_json())
    result = {k: v for k, v in outcome.result.items() if k != "predictions"}
    printer.line(f"party {outcome.rank} ({outcome.role}) done in {outcome.seconds:.2f} s: "
                  f"{outcome.bytes_sent / 1e6:.2f} MB sent, {outcome.rounds} rounds {json.dumps(result) if result else ''}")


def demo_mpc(printer: Output, z: zoo.ZooModel | None, data: datasets.Dataset, *, parties: int, dealer: bool,
             task: str, split: str, limit: int, seed: int) -> dict[str, Any]:
    """Every party as its own `secure-infer party` process on this host, then the results side by side."""
    from protocols.mpc import launch_local, local_parties

    workdir = Path(tempfile.mkdtemp(prefix="secure-infer-mpc-"))
    if task == "infer":
        if z is None:
            raise ParameterError("demo mpc --task infer needs a trained model")
        model_file = zoo.save_model(z, workdir / "model.pt")
        n = min(limit or 64, len(data.x_test))
        configs = local_parties(parties, task="infer", dealer=dealer, per_rank={
            0: {"model": model_file}, 1: {"input": f"{data.label}:0-{n}", "output": workdir / "logits.npy"}})
    else:
        per_rank = _split_training_data(data, parties, split, workdir)
        per_rank[0]["output"] = workdir / "trained.pt"  # rank 0 is entitled to the weights
        configs = local_parties(parties, task="train", dealer=dealer, weights_to=0, seed=seed,
                                hidden=TRAINING.hidden, epochs=TRAINING.epochs, lr=TRAINING.lr,
                                batch_size=TRAINING.batch_size, per_rank=per_rank)
    printer.line(f"starting {len(configs)} party processes ({', '.join(c.role for c in configs)}); logs in {workdir}")
    result = launch_local(configs, workdir / "logs")
    if not result.ok:
        problems = "; ".join(f"party {r}: {msg}" for r, msg in sorted(result.errors.items()))
        raise PartyFailure(f"the MPC {task} job failed: {problems}")
    table = TextTable(f"MPC {task}: {parties} parties{' + dealer' if dealer else ''}, each its own process over TCP")
    for col in ("rank", "role", "seconds", "MB sent", "rounds"):
        table.add_column(col, right=col != "role")
    for rank, outcome in sorted(result.outcomes.items()):
        table.add_row(str(rank), outcome.role, f"{outcome.seconds:.2f}", f"{outcome.bytes_sent / 1e6:.2f}",
                      str(outcome.rounds))
    printer.table(table)
    summary: dict[str, Any] = {"wall_s": result.wall_s}
    if z is not None and task == "infer":
        logits = torch.from_numpy(np.load(workdir / "logits.npy"))
        x, y = data.x_test[: len(logits)], data.y_test[: len(logits)]
        with torch.no_grad():
            plain = z.model(x)
        summary.update(accuracy=float((logits.argmax(1) == y).float().mean()),
                       plaintext_accuracy=float((plain.argmax(1) == y).float().mean()),
                       agreement=float((logits.argmax(1) == plain.argmax(1)).float().mean()),
                       max_abs_error=float((logits - plain).abs().max()))
        printer.line(f"data owner decrypted {len(logits)} outputs: accuracy {summary['accuracy']:.4f} "
                      f"(plaintext {summary['plaintext_accuracy']:.4f}), argmax agreement {summary['agreement']:.4f}, "
                      f"max |error| {summary['max_abs_error']:.2e}")
    else:
        from protocols.mpc.party import load_trained
        from secure_infer.backends.crypten.training import plaintext_sgd

        owner = result.outcomes[0].result
        model = load_trained(Path(owner["output"]))
        x_test = data.x_test.reshape(len(data.x_test), -1)
        # the parties concatenate rows (or columns) in rank order, which is the original order
        reference = plaintext_sgd(data, seed=seed, hidden=TRAINING.hidden, epochs=TRAINING.epochs, lr=TRAINING.lr,
                                  batch_size=TRAINING.batch_size)
        summary.update(split=owner["split"], accuracy=zoo.accuracy(model, x_test, data.y_test),
                       plaintext_accuracy=zoo.accuracy(reference, x_test, data.y_test))
        printer.line(f"{owner['split']} split over {len(owner['data_owners'])} data owners; only rank 0 received the "
                      f"weights: test accuracy {summary['accuracy']:.4f} vs plaintext SGD on the same schedule "
                      f"{summary['plaintext_accuracy']:.4f}")
    return summary


def _split_training_data(data: datasets.Dataset, parties: int, split: str, workdir: Path) -> dict[int, dict[str, Any]]:
    """Write each party's own part of the training data: rows with labels, or columns (labels at rank 0)."""
    x = data.x_train.reshape(len(data.x_train), -1).numpy()
    y = data.y_train.numpy().astype(np.int64)
    per_rank: dict[int, dict[str, Any]] = {}
    for rank, idx in enumerate(np.array_split(np.arange(len(x) if split == "rows" else x.shape[1]), parties)):
        path = workdir / f"data-{rank}.npz"
        if split == "rows":
            np.savez(path, x=x[idx], y=y[idx])
        elif rank == 0:
            np.savez(path, x=x[:, idx], y=y)
        else:
            np.savez(path, x=x[:, idx])
        per_rank[rank] = {"data": path}
    return per_rank
