"""The HE serving commands: ``secure-infer serve`` and ``secure-infer query``."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from protocols.he.client import HEClient
from protocols.he.server import HEServer
from secure_infer import datasets, zoo
from secure_infer._errors import ParameterError
from secure_infer._output import Output, TextTable, report_table
from secure_infer.cli import model_from_arg, train_with_bar


def run_server(printer: Output, z: zoo.ZooModel, data: datasets.Dataset, *, host: str, port: int, mode: str,
          max_frame_mb: int, idle_timeout: float, schedule: str | None = None) -> None:
    """Compile ``z`` for CKKS and serve it until interrupted."""
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


def run_query(printer: Output, address: str, spec: str, *, timeout: float, seed: int) -> dict[str, Any]:
    """Encrypt the inputs named by ``spec``, query the server, print decrypted predictions."""
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


def serve_command(
    model: Annotated[str, typer.Argument(help="a zoo model name (trained now) or a file from `zoo train`")],
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one)")] = 8750,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    mode: Annotated[str, typer.Option(help="latency (one input per ciphertext) or batch (one per slot)")] = "latency",
    schedule: Annotated[str | None, typer.Option(
        help="levels (most precise) or square-chain (fewer primes: faster, smaller keys; x**2 models only); "
             "default: square-chain in batch mode, levels in latency mode")] = None,
    dataset: Annotated[str | None, typer.Option(help="calibration data (default: the model file's, else digits)")] = None,
    max_frame_mb: Annotated[int, typer.Option(help="largest frame accepted, MiB")] = 256,
    idle_timeout: Annotated[float, typer.Option(help="seconds a client may stay silent")] = 60.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Serve a model for HE inference: clients send only public keys and ciphertexts."""
    printer = Output()

    def train(name: str, data: datasets.Dataset) -> zoo.ZooModel:
        with printer.progress() as progress:
            return train_with_bar(progress, name, data, seed)

    z, data = model_from_arg(model, dataset, seed, train)
    run_server(printer, z, data, host=host, port=port, mode=mode, max_frame_mb=max_frame_mb,
                       idle_timeout=idle_timeout, schedule=schedule)


def query_command(
    address: Annotated[str, typer.Argument(help="the server, HOST:PORT")],
    inputs: Annotated[str, typer.Argument(metavar="INPUT", help="a .npy file, or DATASET:INDEX / DATASET:START-END (test split)")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 300.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the summary here")] = None,
    seed: Annotated[int, typer.Option(help="seed of the data-set split")] = 0,
) -> None:
    """Encrypt INPUT here, have the server evaluate it, decrypt the answer here."""
    printer = Output()
    summary = run_query(printer, address, inputs, timeout=timeout, seed=seed)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2))
        printer.report(json_out)



def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``query`` to the ``secure-infer`` app."""
    app.command("serve")(serve_command)
    app.command("query")(query_command)
