"""The HE serving commands: ``secure-infer serve``, ``query`` and ``clients``.

``serve`` listens with TLS (``--tls-cert/--tls-key``, optional ``--client-ca``
for mutual TLS) and plaintext only on loopback or with ``--insecure``; with
``--state FILE`` it knows its clients (``secure-infer clients add``), meters
their budgets across restarts and writes an audit line per query.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from protocols.common.address import is_loopback
from protocols.he.channels import ClientTLS
from protocols.he.client import HEClient
from protocols.he.server import HEServer, ServerTLS
from protocols.he.state import ServerState
from secure_infer import datasets, zoo
from secure_infer._errors import ParameterError
from secure_infer._output import Output, TextTable, report_table
from secure_infer.cli import model_from_arg, train_with_bar


def run_server(printer: Output, z: zoo.ZooModel, data: datasets.Dataset, *, host: str, port: int, mode: str,
               schedule: str | None = None, tls: ServerTLS | None = None, insecure: bool = False,
               state: Path | None = None, audit_log: Path | None = None, rotation_keys: int | None = None,
               **limits: Any) -> None:
    """Compile ``z`` for CKKS and serve it until interrupted (``limits``: HEServer's size/time/worker limits)."""
    if tls is None and not insecure and not is_loopback(host):
        raise ParameterError(f"--host {host} is not loopback: give --tls-cert and --tls-key (make them with "
                             f"`secure-infer certs DIR --host {host}`), or --insecure on a network you trust")
    store = ServerState(state) if state is not None else None
    if store is not None and audit_log is None:
        audit_log = state.with_suffix(".audit.jsonl") if state is not None else None
    if not is_loopback(host) and (store is None or not store.has_clients()) and tls is not None and tls.client_ca is None:
        raise ParameterError(f"serving on {host} to anyone: register clients (`secure-infer clients add NAME --state "
                             "FILE`, then --state FILE) or require client certificates (--client-ca)")
    printer.line(f"compiling {z.name} for CKKS ({mode} mode), calibrated on {len(data.x_train)} training inputs...")
    server = HEServer.from_model(z.model, data.x_train[:1], calibration=data.x_train, mode=mode, name=z.name,
                                 host=host, port=port, schedule=schedule, rotation_keys=rotation_keys, tls=tls,
                                 insecure=insecure, state=store,
                                 audit_log=audit_log, **limits)
    printer.table(report_table(server.report))
    layout = server.program.published
    bound_host, bound_port = server.address
    security = ("TLS" + (" with client certificates" if tls.client_ca else "") if tls is not None
                else "plaintext (loopback)" if is_loopback(host) else "PLAINTEXT (--insecure)")
    access = ("anonymous clients allowed (no client registered)" if server.handler.allow_anonymous
              else f"registered clients only ({store.path if store else 'client certificates'})")
    query_hint = f"secure-infer query {bound_host}:{bound_port} {z.dataset}:0-9"
    if tls is not None:
        query_hint += " --tls-ca CA.pem"
    if not server.handler.allow_anonymous:
        query_hint += " --token TOKEN"
    printer.line(f"serving {z.name} on {bound_host}:{bound_port} over gRPC, {security}; {access}"
                 f"{'; audit log ' + str(audit_log) if audit_log else ''}. Input shape {layout.input_shape}, "
                 f"N={layout.params.poly_modulus_degree}, rotation keys {list(layout.rotation_steps)}. "
                 f"Query with `{query_hint}`; Ctrl-C or SIGTERM stops.")

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
        if store is not None:
            store.close()
        printer.line(f"stopped after {server.stats.connections} connections, {server.stats.queries} queries; "
                     f"errors by kind: {dict(server.stats.errors) or 'none'}")


def run_query(printer: Output, address: str, spec: str, *, timeout: float, seed: int, tls: ClientTLS | None = None,
              token: str | None = None, insecure: bool = False) -> dict[str, Any]:
    """Encrypt the inputs named by ``spec``, query the server, print decrypted predictions."""
    x, labels = datasets.load_inputs(spec, seed=seed)
    with HEClient(address, timeout=timeout, tls=tls, token=token, insecure=insecure) as client:
        y = client.predict(x, epilogue=False).reshape(len(x), -1)
        stats = client.last_query
        keys = client.key_upload_bytes
        budget = client.remaining_budget()
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
    if budget is not None:
        summary["budget_used"] = budget["used"]
        summary["budget_limit"] = budget["limit"]
    printer.line(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary


def _tls_path(value: Path | None, flag: str) -> Path | None:
    if value is not None and not value.is_file():
        raise ParameterError(f"{flag} {value}: no such file (make certificates with `secure-infer certs DIR`)")
    return value


def serve_command(
    model: Annotated[str, typer.Argument(help="a zoo model name (trained now) or a file from `zoo train`")],
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one)")] = 8750,
    host: Annotated[str, typer.Option(help="address to listen on; off loopback TLS is required")] = "127.0.0.1",
    mode: Annotated[str, typer.Option(help="latency (one input per ciphertext) or batch (one per slot)")] = "latency",
    schedule: Annotated[str | None, typer.Option(
        help="levels (most precise) or square-chain (fewer primes: faster, smaller keys; x**2 models only); "
             "default: square-chain in batch mode, levels in latency mode")] = None,
    rotation_keys: Annotated[int | None, typer.Option(
        min=1, help="latency mode: at most this many Galois keys in each client's key upload (other rotations are "
             "composed of them: smaller upload, slower inference); default: one per rotation step")] = None,
    dataset: Annotated[str | None, typer.Option(help="calibration data (default: the model file's, else digits)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="this server's certificate (PEM), e.g. DIR/server.pem")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="its private key (PEM), e.g. DIR/server.key")] = None,
    client_ca: Annotated[Path | None, typer.Option(
        help="mutual TLS: accept only clients with a certificate from this CA; its common name is the client")] = None,
    insecure: Annotated[bool, typer.Option(help="serve plaintext off loopback (only on a network you trust)")] = False,
    state: Annotated[Path | None, typer.Option(
        help="SQLite file of clients, tokens and budgets (`secure-infer clients add`); budgets survive restarts")] = None,
    audit_log: Annotated[Path | None, typer.Option(
        help="JSON lines, one per query and refusal (default with --state: STATE.audit.jsonl)")] = None,
    identity: Annotated[str | None, typer.Option(
        help="what registered clients present: token, certificate, both or any (default: both with --client-ca, "
             "else token)")] = None,
    max_request_mb: Annotated[int, typer.Option(help="largest key upload or request, MiB")] = 256,
    idle_timeout: Annotated[float, typer.Option(help="seconds a request may go without data; idle connections close")] = 60.0,
    workers: Annotated[int, typer.Option(help="threads evaluating requests (0: one per CPU)")] = 0,
    max_concurrent: Annotated[int, typer.Option(help="calls in progress at once; more are refused")] = 256,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Serve a model for HE inference over gRPC: clients send only public keys and ciphertexts."""
    printer = Output()
    if (tls_cert is None) != (tls_key is None):
        raise ParameterError("give --tls-cert and --tls-key together")
    if rotation_keys is not None and mode != "latency":
        raise ParameterError(f"--rotation-keys applies to --mode latency only (batch mode rotates nothing), "
                             f"got --mode {mode}")
    if client_ca is not None and tls_cert is None:
        raise ParameterError("--client-ca (mutual TLS) needs --tls-cert and --tls-key too")
    tls = None
    if tls_cert is not None and tls_key is not None:
        tls = ServerTLS(_tls_path(tls_cert, "--tls-cert"), _tls_path(tls_key, "--tls-key"),  # type: ignore[arg-type]
                        _tls_path(client_ca, "--client-ca"))

    def train(name: str, data: datasets.Dataset) -> zoo.ZooModel:
        with printer.progress() as progress:
            return train_with_bar(progress, name, data, seed)

    z, data = model_from_arg(model, dataset, seed, train)
    run_server(printer, z, data, host=host, port=port, mode=mode, schedule=schedule, rotation_keys=rotation_keys,
               tls=tls, insecure=insecure, state=state, audit_log=audit_log, max_request_bytes=max_request_mb << 20,
               idle_timeout=idle_timeout, workers=workers or None, max_concurrent_rpcs=max_concurrent,
               identity=identity)


def query_command(
    address: Annotated[str, typer.Argument(help="the server, HOST:PORT")],
    inputs: Annotated[str, typer.Argument(metavar="INPUT", help="a .npy file, or DATASET:INDEX / DATASET:START-END (test split)")],
    tls_ca: Annotated[Path | None, typer.Option(help="the CA that signed the server's certificate (PEM); off loopback required")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="mutual TLS: this client's certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="mutual TLS: this client's key (PEM)")] = None,
    server_name: Annotated[str | None, typer.Option(help="the name the server's certificate must carry, if not the address's host")] = None,
    token: Annotated[str | None, typer.Option(
        help="API token from `secure-infer clients add` (default: $SECURE_INFER_TOKEN)", show_default=False)] = None,
    insecure: Annotated[bool, typer.Option(help="plaintext to a server off loopback (only on a network you trust)")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 300.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the summary here")] = None,
    seed: Annotated[int, typer.Option(help="seed of the data-set split")] = 0,
) -> None:
    """Encrypt INPUT here, have the server evaluate it, decrypt the answer here."""
    printer = Output()
    if (tls_cert is not None or tls_key is not None or server_name) and tls_ca is None:
        raise ParameterError("--tls-cert/--tls-key/--server-name need --tls-ca (the CA that signed the server's certificate)")
    tls = None
    if tls_ca is not None:
        tls = ClientTLS(_tls_path(tls_ca, "--tls-ca"), _tls_path(tls_cert, "--tls-cert"),  # type: ignore[arg-type]
                        _tls_path(tls_key, "--tls-key"), server_name)
    token = token or os.environ.get("SECURE_INFER_TOKEN") or None
    summary = run_query(printer, address, inputs, timeout=timeout, seed=seed, tls=tls, token=token, insecure=insecure)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2))
        printer.report(json_out)


clients_app = typer.Typer(help="Who may query `secure-infer serve --state FILE`: tokens and budgets.",
                          no_args_is_help=True)

STATE_OPTION = typer.Option(help="the server's SQLite state file (created if missing)")


@clients_app.command("add")
def clients_add(
    name: Annotated[str, typer.Argument(help="the client's name (for mutual TLS: its certificate's common name)")],
    state: Annotated[Path, STATE_OPTION],
    budget: Annotated[int, typer.Option(help="inputs it may have evaluated in all (-1: no limit)")] = -1,
    rate: Annotated[float, typer.Option(help="inputs per minute (0: no rate limit)")] = 0.0,
    expires_days: Annotated[float | None, typer.Option(help="the token expires after this many days")] = None,
) -> None:
    """Register a client and print its API token (shown once; only its hash is stored)."""
    store = ServerState(state)
    try:
        token = store.add_client(name, budget=budget, rate_per_minute=rate,
                                 expires_in_s=None if expires_days is None else expires_days * 86400)
    finally:
        store.close()
    printer = Output()
    printer.line(f"client {name}: budget {'unlimited' if budget < 0 else f'{budget} inputs'}, "
                 f"rate {'unlimited' if rate <= 0 else f'{rate:g}/min'}"
                 f"{f', expires in {expires_days:g} days' if expires_days is not None else ''}. Its token (give it to "
                 "the client; it is not shown again):")
    printer.line(token)


@clients_app.command("list")
def clients_list(state: Annotated[Path, STATE_OPTION]) -> None:
    """Every registered client with its budget, usage and expiry (never tokens)."""
    if not state.is_file():
        raise ParameterError(f"--state {state}: no such file; add a client first (`secure-infer clients add`)")
    store = ServerState(state)
    try:
        rows = store.clients()
    finally:
        store.close()
    table = TextTable(f"clients in {state}")
    for col in ("client", "budget", "used", "rate/min", "expires", "status"):
        table.add_column(col, right=col in ("budget", "used", "rate/min"))
    for c in rows:
        expires = "-" if c.expires_at is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.expires_at))
        status = ("revoked" if c.revoked else "expired" if c.expires_at is not None and c.expires_at < time.time()
                  else "active")
        table.add_row(c.name, "unlimited" if c.budget < 0 else str(c.budget), str(c.used),
                      "-" if c.rate_per_minute <= 0 else f"{c.rate_per_minute:g}", expires, status)
    Output().table(table)


@clients_app.command("revoke")
def clients_revoke(name: Annotated[str, typer.Argument()], state: Annotated[Path, STATE_OPTION]) -> None:
    """Revoke a client's token: its next call is refused (a running server sees it at once)."""
    if not state.is_file():
        raise ParameterError(f"--state {state}: no such file")
    store = ServerState(state)
    try:
        store.revoke(name)
    finally:
        store.close()
    Output().line(f"client {name} revoked")


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``query`` and ``clients`` to the ``secure-infer`` app."""
    app.command("serve")(serve_command)
    app.command("query")(query_command)
    app.add_typer(clients_app, name="clients")
