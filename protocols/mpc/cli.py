"""The MPC party command: ``secure-infer party``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from protocols.mpc.party import PartyConfig, run_party
from secure_infer._errors import PartyFailure
from secure_infer._output import Output


def run_one_party(printer: Output, config: PartyConfig, summary: Path | None) -> None:
    """Run one party; exit 0 on success, 1 (with a one-line error) when a peer or this party fails."""
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


def party_command(
    rank: Annotated[int, typer.Option(help="this party's rank; the dealer is rank = world size")],
    world_size: Annotated[int, typer.Option(help="computing parties (the dealer not counted)")],
    role: Annotated[str, typer.Option(help="model-owner, data-owner, helper or dealer")],
    master: Annotated[str, typer.Option(
        help="HOST:PORT of rank 0's gloo rendezvous (unauthenticated, unencrypted: loopback only unless "
             "--insecure); not with --tls-*")] = "",
    insecure: Annotated[bool, typer.Option(
        help="allow the gloo rendezvous off loopback (only on a network you trust)")] = False,
    peers: Annotated[str, typer.Option(
        help="TLS: every computing party's HOST:PORT, comma-separated in rank order, the same list at "
             "every party; this party listens at its own entry")] = "",
    tls_cert: Annotated[Path | None, typer.Option(
        help="TLS: this party's certificate, party-RANK.pem from `secure-infer certs DIR --parties N`")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS: this party's private key, party-RANK.key")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="TLS: the deployment's ca.pem; only parties with a certificate it signed for their rank may join")] = None,
    tls_listen: Annotated[str | None, typer.Option(
        help="TLS: HOST:PORT to listen at instead of this party's --peers entry (e.g. 0.0.0.0:PORT behind NAT)")] = None,
    task: Annotated[str, typer.Option(help="infer or train")] = "infer",
    model: Annotated[Path | None, typer.Option(help="model owner: a file from `zoo train`")] = None,
    inputs: Annotated[str | None, typer.Option("--input", help="data owner: .npy or DATASET:START-END")] = None,
    output: Annotated[Path | None, typer.Option(help="data owner: logits .npy; train: the weights' owner's model file")] = None,
    data: Annotated[Path | None, typer.Option(help="train: this party's .npz part (x and/or y)")] = None,
    dealer: Annotated[bool, typer.Option(help="a dealer process takes part (every party must say so)")] = False,
    timeout: Annotated[float, typer.Option(help="seconds any step may wait for a peer")] = 120.0,
    hidden: Annotated[int, typer.Option(help="train: hidden units")] = 16,
    epochs: Annotated[int, typer.Option(help="train: epochs")] = 5,
    lr: Annotated[float, typer.Option(help="train: SGD learning rate")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="train: mini-batch size")] = 32,
    seed: Annotated[int, typer.Option(help="train: public seed of the initialisation and batch order")] = 0,
    weights_to: Annotated[int, typer.Option(help="train: the rank that receives the weights")] = 0,
    summary: Annotated[Path | None, typer.Option(help="write this party's outcome as JSON")] = None,
) -> None:
    """Run one MPC party; start one per rank, on this host or others.

    Parties meet at rank 0's --master (torch.distributed's gloo rendezvous: no
    authentication, no encryption), or over mutually authenticated TLS 1.3
    links with --tls-cert/--tls-key/--tls-ca and --peers (no dealer then).
    """
    config = PartyConfig(rank=rank, world_size=world_size, master=master, role=role, task=task, model=model,
                         input=inputs, output=output, data=data, dealer=dealer, timeout=timeout, hidden=hidden,
                         epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, weights_to=weights_to,
                         peers=tuple(p.strip() for p in peers.split(",") if p.strip()), tls_cert=tls_cert,
                         tls_key=tls_key, tls_ca=tls_ca, tls_listen=tls_listen, insecure=insecure)
    run_one_party(Output(), config, summary)



def register(app: typer.Typer) -> None:
    """Add ``party`` to the ``secure-infer`` app."""
    app.command("party")(party_command)
