"""``secure-infer demo``: the main job, from plaintext tables to real parties.

``demo`` (all) trains the zoo, times it in plaintext and runs it under CrypTen
and TenSEAL through ``secure_infer.wrap``; ``demo mpc`` runs every MPC party as
its own ``secure-infer party`` process and ``demo he`` serves a model and
queries it as a separate client. It lives with the protocols because the last
two start real parties.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
import typer

from protocols.he import HEServer
from protocols.he.cli import run_query
from protocols.mpc import launch_local, local_parties
from secure_infer import baselines, datasets, zoo
from secure_infer._errors import ParameterError, PartyFailure
from secure_infer._output import Output, TextTable
from secure_infer.cli import train_with_bar

if TYPE_CHECKING:
    from secure_infer._wrap import Evaluation

Timed = tuple[zoo.ZooModel, baselines.BaselineResult, baselines.BaselineResult, baselines.BaselineResult]

NO_FILE = "report: not saved to a file; the tables above are the results (--json FILE keeps them)"
"""The demo's last line when it wrote no file: says so, so a log never leaves the reader looking for one."""

def _fmt_ms(result: baselines.BaselineResult, notes: dict[str, str]) -> str:
    """Milliseconds per input, or 'not measured' with the reason as a numbered note."""
    per_input = result.per_input_s
    if not result.measured or per_input is None:
        mark = notes.setdefault(result.reason, f"[{len(notes) + 1}]")
        return f"not measured {mark}"
    return f"{per_input * 1e3:.4f}"


def _fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _demo_encrypted(printer: Output, rows: list[Timed], data: datasets.Dataset, parties: int,
                    limit: int) -> dict[str, Evaluation]:
    """Classify the test split under CrypTen for every trained model; print a table."""
    import secure_infer as si

    x = data.x_test[:limit] if limit else data.x_test
    y = data.y_test[: len(x)]
    results: dict[str, Evaluation] = {}
    with printer.progress() as progress:
        for z, *_ in rows:
            task_id = progress.add_task(f"CrypTen {parties}-party {z.name}", total=len(x))

            def advance(n: int, task_id: int = task_id) -> None:
                progress.advance(task_id, n)

            with si.wrap(z.model, "crypten", sample_input=x[:1], parties=parties) as enc:
                results[z.name] = enc.evaluate(x, y, on_batch=advance)
            progress.complete(task_id)
    table = TextTable(f"CrypTen, {parties} parties (model owner, data owner{', helpers' if parties > 2 else ''}), "
                      f"{len(x)} test inputs in batches of 64")
    for col in ("model", "enc acc", "plain acc", "argmax agree", "max abs err", "ms/img", "MB/img", "rounds/batch"):
        table.add_column(col, right=col != "model")
    for name, ev in results.items():
        table.add_row(
            name, _fmt_acc(ev.accuracy), _fmt_acc(ev.plaintext_accuracy), f"{ev.agreement:.4f}",
            f"{ev.max_abs_error:.2e}", f"{ev.seconds_per_input * 1e3:.2f}", f"{ev.bytes_per_input / 1e6:.2f}",
            f"{ev.rounds_per_batch:.0f}",
        )
    table.notes.append("MB/img counts the traffic of all parties together.")
    printer.table(table)
    return results


DEMO_DEGREE = 15
"""The demo's polynomial degree under CKKS: keeps the demo to a minute; accuracy stays within a point."""


def _demo_tenseal(printer: Output, rows: list[Timed], data: datasets.Dataset, limit: int) -> dict[str, dict[str, Any]]:
    """Classify the test split under CKKS (batch mode) and time latency mode; print a table."""
    import secure_infer as si
    from secure_infer.backends.tenseal import TensealProgram

    x = data.x_test[:limit] if limit else data.x_test
    y = data.y_test[: len(x)]
    calibration = data.x_train[:256]
    results: dict[str, dict[str, Any]] = {}
    with printer.progress() as progress:
        task = progress.add_task("TenSEAL (CKKS) batch + latency", total=len(rows))
        for z, *_ in rows:
            report = si.check(z.model, "tenseal", sample_input=x[:1])
            if not report.ok:
                results[z.name] = {"supported": False, "reason": str(report.problems[0]).split(". ")[0]}
                progress.advance(task)
                continue
            options = {"calibration": calibration, "poly_degree": DEMO_DEGREE}
            batch = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="batch", **options)
            assert isinstance(batch.program, TensealProgram)  # what wrap(..., "tenseal") builds
            ev = batch.evaluate(x, y, batch_size=batch.program.params.slots)
            latency = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="latency", **options)
            latency(x[:2])
            run = latency.last_run
            assert run is not None and isinstance(latency.program, TensealProgram)  # set by the call above
            approximated = [c.layer for c in latency.report().conversions if c.kind == "approximated"]
            results[z.name] = {
                "supported": True, "accuracy": ev.accuracy, "plaintext_accuracy": ev.plaintext_accuracy,
                "agreement": ev.agreement, "max_abs_error": ev.max_abs_error,
                "batch_ms_per_image": ev.seconds_per_input * 1e3,
                "latency_ms_per_image": run.per_input_s * 1e3,
                "latency_key_mb": run.extra["public_key_material_bytes"] / 1e6,
                "approximated": approximated,
                "worst_case_error": latency.program.worst_case_error,
            }
            progress.advance(task)
    table = TextTable(f"TenSEAL CKKS: batch mode over {len(x)} test inputs, latency mode per image")
    for col in ("model", "enc acc", "plain acc", "agree", "max abs err", "batch ms/img", "latency ms/img", "keys MB",
                "approximated"):
        table.add_column(col, right=col not in ("model", "approximated"))
    for name, r in results.items():
        if not r["supported"]:
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", f"not supported: {r['reason']}")
            continue
        table.add_row(
            name, _fmt_acc(r["accuracy"]), _fmt_acc(r["plaintext_accuracy"]), f"{r['agreement']:.4f}",
            f"{r['max_abs_error']:.2e}", f"{r['batch_ms_per_image']:.2f}", f"{r['latency_ms_per_image']:.1f}",
            f"{r['latency_key_mb']:.1f}", ", ".join(r["approximated"]) or "none (exact)",
        )
    table.notes += [
        "batch mode packs one input per slot; its cost per batch is flat up to the slot count, "
        "so ms/img falls with larger batches.",
        f"activations other than x**2 run as degree-{DEMO_DEGREE} polynomials fitted on every input's "
        "reachable range (the library picks the degree by tolerance when not given: higher for ReLU, slower).",
    ]
    printer.table(table)
    return results


@dataclass(frozen=True)
class Training:
    """The MPC training demo's settings (the parties and the plaintext reference use the same)."""

    hidden: int = 16
    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 32


TRAINING = Training()


def demo(
    what: Annotated[str, typer.Argument(help="all (the default tables), mpc (party processes) or he (client/server)")] = "all",
    dataset: Annotated[str, typer.Option(help="digits or breast_cancer")] = "digits",
    seed: Annotated[int, typer.Option(help="seed for the split, initialisation and training")] = 0,
    models: Annotated[
        str, typer.Option(help="comma-separated zoo models (default: all that fit the data)")
    ] = "",
    json_out: Annotated[Path | None, typer.Option("--json", help="also write results here")] = None,
    parties: Annotated[int, typer.Option(help="CrypTen parties (separate processes); 0 skips encryption")] = 2,
    limit: Annotated[int, typer.Option(help="test inputs to run encrypted (0 = the whole test split)")] = 0,
    tenseal: Annotated[bool, typer.Option(help="also run TenSEAL (CKKS) in batch and latency mode")] = True,
    dealer: Annotated[bool, typer.Option(help="mpc: add a trusted dealer process for Beaver triples")] = False,
    task: Annotated[str, typer.Option(help="mpc: infer, or train (data owners train an MLP together)")] = "infer",
    split: Annotated[str, typer.Option(help="mpc train: rows (horizontal) or features (vertical)")] = "rows",
) -> None:
    """Train the zoo on embedded data; run it in plaintext and under CrypTen MPC and TenSEAL.

    Each model is secret-shared between a model owner and a data owner (real
    processes talking over TCP), the test split is classified encrypted, and
    accuracy, cost and agreement with plaintext are set side by side.

    `demo mpc --parties 3` runs every party as its own `secure-infer party`
    process instead (add `--task train` for training between data owners);
    `demo he` serves a model over TCP and queries it as a separate client.
    """
    if what not in ("all", "mpc", "he"):
        raise typer.BadParameter("WHAT must be all, mpc or he")
    printer = Output()
    data = datasets.load(dataset, seed=seed)
    if what != "all":
        _demo_parties(printer, what, data, parties=parties, dealer=dealer, task=task, split=split, limit=limit,
                      seed=seed, json_out=json_out)
        return
    names = [m.strip() for m in models.split(",") if m.strip()] or [
        n for n in zoo.available() if len(data.input_shape) == 3 or n in ("logreg", "mlp")
    ]
    rows: list[Timed] = []
    with printer.progress() as progress:
        trained = [train_with_bar(progress, name, data, seed) for name in names]
        timing = progress.add_task("time plaintext CPU/GPU", total=len(trained))
        for z in trained:
            cpu1 = baselines.time_plaintext(z.model, data.x_test[:1], repeats=50)
            cpu64 = baselines.time_plaintext(z.model, data.x_test[:64], repeats=20)
            gpu64 = baselines.time_plaintext(z.model, data.x_test[:64], device="cuda", repeats=20)
            rows.append((z, cpu1, cpu64, gpu64))
            progress.advance(timing)

    table = TextTable(f"secure-infer demo: plaintext on {data.description}")
    for col in ("model", "params", "train s", "test acc", "CPU ms/img (b=1)", "CPU ms/img (b=64)", "GPU ms/img (b=64)"):
        table.add_column(col, right=col != "model")
    notes: dict[str, str] = {}
    for z, cpu1, cpu64, gpu64 in rows:
        table.add_row(
            z.name, f"{z.num_parameters:,}", f"{z.train_seconds:.2f}", f"{z.test_accuracy:.4f}",
            _fmt_ms(cpu1, notes), _fmt_ms(cpu64, notes), _fmt_ms(gpu64, notes),
        )
    table.notes = [f"{mark} {reason}" for reason, mark in notes.items()]
    printer.table(table)
    encrypted = _demo_encrypted(printer, rows, data, parties, limit) if parties else {}
    he = _demo_tenseal(printer, rows, data, limit) if tenseal else {}
    if json_out is not None:
        payload = {
            "dataset": data.description,
            "seed": seed,
            "models": [
                {
                    "name": z.name,
                    "params": z.num_parameters,
                    "train_seconds": z.train_seconds,
                    "test_accuracy": z.test_accuracy,
                    "plaintext": [vars(r) for r in (cpu1, cpu64, gpu64)],
                    "crypten": vars(encrypted[z.name]) if z.name in encrypted else None,
                    "tenseal": he.get(z.name),
                }
                for z, cpu1, cpu64, gpu64 in rows
            ],
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2))
        printer.report(json_out)
    else:
        printer.line(NO_FILE)


def _demo_parties(printer: Output, what: str, data: datasets.Dataset, *, parties: int, dealer: bool, task: str,
                  split: str, limit: int, seed: int, json_out: Path | None) -> None:
    if task not in ("infer", "train") or split not in ("rows", "features"):
        raise typer.BadParameter("--task must be infer or train, --split rows or features")
    image = len(data.input_shape) == 3
    if what == "mpc":
        if parties < 2:
            raise typer.BadParameter("demo mpc needs --parties 2 or more")
        z = None
        if task == "infer":
            with printer.progress() as progress:
                z = train_with_bar(progress, "lenet" if image else "mlp", data, seed)
        result = demo_mpc(printer, z, data, parties=parties, dealer=dealer, task=task, split=split,
                                       limit=limit, seed=seed)
    else:
        import threading

        with printer.progress() as progress:
            z = train_with_bar(progress, "cryptonets" if image else "mlp", data, seed)
        server = HEServer.from_model(z.model, data.x_train[:1], calibration=data.x_train, name=z.name)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host, port = server.address
        try:
            n = min(limit or 10, len(data.x_test))
            result = run_query(printer, f"{host}:{port}", f"{data.label}:0-{n}", timeout=300, seed=seed)
        finally:
            server.close()
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, default=str))
        printer.report(json_out)
    else:
        printer.line(NO_FILE)


def demo_mpc(printer: Output, z: zoo.ZooModel | None, data: datasets.Dataset, *, parties: int, dealer: bool,
             task: str, split: str, limit: int, seed: int) -> dict[str, Any]:
    """Every party as its own `secure-infer party` process on this host, then the results side by side."""
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
