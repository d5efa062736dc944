"""The ``secure-infer`` command line.

Each subcommand is a thin shell over the library: it parses, validates at the
boundary, shows progress for anything slow (on stderr, with the time left),
and prints its tables through :mod:`secure_infer._output`: styled in a
terminal, full-width Markdown when piped, never a number cut. A long command
ends with one ``report: ...`` line. Errors the user caused come out as one
line (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from secure_infer import baselines, datasets, zoo
from secure_infer._errors import SecureInferError
from secure_infer._output import Output, Progress, TextTable

if TYPE_CHECKING:
    from secure_infer._wrap import Evaluation
    from secure_infer.attacks.suite import AttackReport, SuiteConfig

app = typer.Typer(
    help="Run PyTorch models on data nobody else may see, and measure what it costs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Reference models: list them, train and save one.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

NO_FILE = "report: not saved to a file; the tables above are the results (--json FILE keeps them)"
"""The demo's last line when it wrote no file: says so, so a log never leaves the reader looking for one."""

Timed = tuple[zoo.ZooModel, baselines.BaselineResult, baselines.BaselineResult, baselines.BaselineResult]


def _train_with_bar(progress: Progress, name: str, data: datasets.Dataset, seed: int) -> zoo.ZooModel:
    cfg = zoo.default_config(name)
    task = progress.add_task(f"train {name} on {data.label}", total=cfg.epochs)
    result = zoo.pretrained(
        name, data, seed=seed, on_epoch=lambda _epoch, _loss: progress.advance(task)
    )
    progress.complete(task)
    return result


def _fmt_ms(result: baselines.BaselineResult, notes: dict[str, str]) -> str:
    """Milliseconds per input, or 'not measured' with the reason as a numbered note."""
    per_input = result.per_input_s
    if not result.measured or per_input is None:
        mark = notes.setdefault(result.reason, f"[{len(notes) + 1}]")
        return f"not measured {mark}"
    return f"{per_input * 1e3:.4f}"


@app.command()
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
        trained = [_train_with_bar(progress, name, data, seed) for name in names]
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
    from secure_infer import _cli_parties

    if task not in ("infer", "train") or split not in ("rows", "features"):
        raise typer.BadParameter("--task must be infer or train, --split rows or features")
    image = len(data.input_shape) == 3
    if what == "mpc":
        if parties < 2:
            raise typer.BadParameter("demo mpc needs --parties 2 or more")
        z = None
        if task == "infer":
            with printer.progress() as progress:
                z = _train_with_bar(progress, "lenet" if image else "mlp", data, seed)
        result = _cli_parties.demo_mpc(printer, z, data, parties=parties, dealer=dealer, task=task, split=split,
                                       limit=limit, seed=seed)
    else:
        import threading

        from protocols.he import HEServer

        with printer.progress() as progress:
            z = _train_with_bar(progress, "cryptonets" if image else "mlp", data, seed)
        server = HEServer.from_model(z.model, data.x_train[:1], calibration=data.x_train, name=z.name)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host, port = server.address
        try:
            n = min(limit or 10, len(data.x_test))
            result = _cli_parties.query(printer, f"{host}:{port}", f"{data.label}:0-{n}", timeout=300, seed=seed)
        finally:
            server.close()
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, default=str))
        printer.report(json_out)
    else:
        printer.line(NO_FILE)


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


@zoo_app.command("list")
def zoo_list() -> None:
    """List the zoo's models with their size on the digits data."""
    data = datasets.load_digits()
    table = TextTable("secure-infer zoo (sizes on 8x8 digits)")
    table.add_column("name")
    table.add_column("params", right=True)
    table.add_column("layers")
    for name in zoo.available():
        model = zoo.build(name, data.input_shape, data.num_classes)
        layers = ", ".join(type(m).__name__ for m in model.children())
        table.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}", layers)
    Output().table(table)


@zoo_app.command("train")
def zoo_train(
    name: Annotated[str, typer.Argument(help="a zoo model, see `secure-infer zoo list`")],
    out: Annotated[Path, typer.Option(help="where to save the trained model")],
    dataset: Annotated[str, typer.Option(help="digits or breast_cancer")] = "digits",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train one zoo model and save it for `wrap`, `serve` or `bench`."""
    printer = Output()
    data = datasets.load(dataset, seed=seed)
    with printer.progress() as progress:
        z = _train_with_bar(progress, name, data, seed)
    zoo.save_model(z, out)
    printer.line(f"{z.name}: test accuracy {z.test_accuracy:.4f} on {z.dataset}; saved to {out}")


@app.command()
def serve(
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
    from secure_infer import _cli_parties

    printer = Output()

    def train(name: str, data: datasets.Dataset) -> zoo.ZooModel:
        with printer.progress() as progress:
            return _train_with_bar(progress, name, data, seed)

    z, data = _cli_parties.model_from_arg(model, dataset, seed, train)
    _cli_parties.serve(printer, z, data, host=host, port=port, mode=mode, max_frame_mb=max_frame_mb,
                       idle_timeout=idle_timeout, schedule=schedule)


@app.command()
def query(
    address: Annotated[str, typer.Argument(help="the server, HOST:PORT")],
    inputs: Annotated[str, typer.Argument(metavar="INPUT", help="a .npy file, or DATASET:INDEX / DATASET:START-END (test split)")],
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 300.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the summary here")] = None,
    seed: Annotated[int, typer.Option(help="seed of the data-set split")] = 0,
) -> None:
    """Encrypt INPUT here, have the server evaluate it, decrypt the answer here."""
    from secure_infer import _cli_parties

    printer = Output()
    summary = _cli_parties.query(printer, address, inputs, timeout=timeout, seed=seed)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2))
        printer.report(json_out)


@app.command()
def party(
    rank: Annotated[int, typer.Option(help="this party's rank; the dealer is rank = world size")],
    world_size: Annotated[int, typer.Option(help="computing parties (the dealer not counted)")],
    master: Annotated[str, typer.Option(help="HOST:PORT of rank 0's rendezvous")],
    role: Annotated[str, typer.Option(help="model-owner, data-owner, helper or dealer")],
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
    """Run one MPC party; start one per rank, on this host or others (torch.distributed rendezvous)."""
    from protocols.mpc import PartyConfig
    from secure_infer import _cli_parties

    config = PartyConfig(rank=rank, world_size=world_size, master=master, role=role, task=task, model=model,
                         input=inputs, output=output, data=data, dealer=dealer, timeout=timeout, hidden=hidden,
                         epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, weights_to=weights_to)
    _cli_parties.party(Output(), config, summary)


@app.command()
def baseline(
    model: Annotated[str, typer.Argument(help="a zoo model name or a file from `zoo train`")],
    dataset: Annotated[str, typer.Option(help="digits or breast_cancer")] = "digits",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,16,64",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Time a model in plaintext on CPU and, when CUDA exists, GPU."""
    printer = Output()
    data = datasets.load(dataset, seed=seed)
    if Path(model).is_file():
        z = zoo.load_model(model)
    else:
        with printer.progress() as progress:
            z = _train_with_bar(progress, model, data, seed)
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--batch-sizes must be integers, got {batch_sizes!r}") from None
    table = TextTable(f"plaintext baseline: {z.name}")
    for col in ("device", "batch", "p50 ms", "p95 ms", "inputs/s"):
        table.add_column(col, right=True)
    for device in ("cpu", "cuda"):
        for b in sizes:
            x = data.x_test[:b]
            if len(x) < b:
                x = x.repeat((b + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:b]
            r = baselines.time_plaintext(z.model, x, device=device)
            if r.measured and r.p50_s is not None and r.p95_s is not None and r.throughput is not None:
                table.add_row(device, str(b), f"{r.p50_s * 1e3:.4f}", f"{r.p95_s * 1e3:.4f}", f"{r.throughput:,.0f}")
            else:
                table.add_row(device, str(b), f"not measured ({r.reason})", "", "")
    printer.table(table)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="folder for report.json, report.md and the plots")] = Path("bench-report"),
    quick: Annotated[bool, typer.Option("--quick", help="a few minutes on 2 cores (default)")] = False,
    full: Annotated[bool, typer.Option("--full", help="the whole matrix: more batch sizes and executions")] = False,
    models: Annotated[str, typer.Option(help="comma-separated zoo models (default: the preset's)")] = "",
    preset: Annotated[str, typer.Option(help="quick, full or gpu (the cells the GPU script runs)")] = "",
    seed: Annotated[int, typer.Option()] = 0,
    attacks: Annotated[bool, typer.Option("--attacks", help="also run the attack suite (quick) and add its section")] = False,
) -> None:
    """Measure encryption overhead against plaintext, side by side, in one run."""
    from secure_infer import bench as runner

    if sum(map(bool, (quick, full, preset))) > 1:
        raise typer.BadParameter("choose one of --quick, --full or --preset")
    preset = preset or ("full" if full else "quick")
    if preset not in runner.PRESETS:
        raise typer.BadParameter(f"--preset must be one of {', '.join(runner.PRESETS)}")
    chosen = [m.strip() for m in models.split(",") if m.strip()] or None
    printer = Output()
    with printer.progress() as progress:
        task = progress.add_task(f"bench --{preset}", total=runner.count_steps(preset, chosen))
        report = runner.run_matrix(
            preset, seed=seed, models=chosen,
            on_cell=lambda c: progress.advance(task, description=f"{c.model} {c.execution} b={c.batch}"),
            on_step=lambda what: progress.advance(task, description=what),
        )
        progress.complete(task, description=f"bench --{preset}")
    paths = runner.write_report(report, out)
    printer.line(f"wrote {', '.join(p.name for p in paths)} in {out}")
    if attacks:
        from secure_infer.attacks import suite

        result = _run_attack_suite(printer, suite.QUICK)
        written = suite.write_report(result, out / "attacks")
        printer.line(f"wrote {', '.join(p.name for p in written)} in {out / 'attacks'}")
        section = suite.markdown(result).replace("## Attack resistance", "## Attack resistance (attacks/report.md)")
        with open(out / "report.md", "a") as fh:
            fh.write("\n" + section + "\n![ROC](attacks/mia_roc.png)\n![extraction](attacks/extraction.png)\n"
                     "![inversion](attacks/inversion.png)\n")
    printer.report(out / "report.md")


def _run_attack_suite(printer: Output, config: SuiteConfig) -> AttackReport:
    """Run the suite with a progress bar: each step is counted done when the next one starts."""
    from secure_infer.attacks import suite

    with printer.progress() as progress:
        task = progress.add_task("attacks", total=suite.count_steps(config))
        started = False

        def on_step(what: str) -> None:
            nonlocal started
            progress.advance(task, 1 if started else 0, description=what)
            started = True

        result = suite.run_suite(config, on_step=on_step)
        progress.complete(task, description="attacks")
    return result


@app.command()
def attack(
    out: Annotated[Path, typer.Option(help="folder for report.md, report.json and the plots")] = Path("attack-report"),
    full: Annotated[bool, typer.Option("--full", help="8 shadow models, 5 budgets, two DP epsilons (default: quick)")] = False,
    backends: Annotated[str, typer.Option(help="encrypted serving rows: crypten, tenseal, both, or none")] = "crypten,tenseal",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Run membership inference, extraction, inversion and input-privacy attacks against each way of serving."""
    import dataclasses

    from secure_infer.attacks import suite

    chosen = tuple(b.strip() for b in backends.split(",") if b.strip() and b.strip() != "none")
    unknown = set(chosen) - {"crypten", "tenseal"}
    if unknown:
        raise typer.BadParameter(f"--backends: unknown {sorted(unknown)}; use crypten, tenseal or none")
    config = dataclasses.replace(suite.FULL if full else suite.QUICK, backends=chosen, seed=seed)
    printer = Output()
    result = _run_attack_suite(printer, config)
    printer.line(suite.summary(result))
    printer.line()
    printer.table(suite.table(result))
    written = suite.write_report(result, out)
    printer.line(f"wrote {', '.join(p.name for p in written)} in {out}")
    printer.report(out / "report.md")


@app.command("datasets")
def datasets_cmd() -> None:
    """List the data sets that work offline."""
    table = TextTable("data sets")
    table.add_column("name")
    table.add_column("description")
    for name in datasets.available():
        if name == "mnist":
            desc = "MNIST from local IDX files: --mnist-path FOLDER (not bundled)"
        else:
            desc = datasets.load(name).description
        table.add_row(name, desc)
    Output().table(table)


@app.command()
def env() -> None:
    """Show the versions and devices that results depend on."""
    import numpy
    import torch

    rows = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "torch threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
    }
    for pkg in ("crypten", "tenseal", "sklearn"):
        try:
            mod = __import__(pkg) if pkg != "crypten" else None
            if pkg == "crypten":
                from importlib.metadata import version

                rows[pkg] = version("crypten")
            else:
                rows[pkg] = getattr(mod, "__version__", "installed")
        except Exception as exc:  # report, never fail, on a missing optional part
            rows[pkg] = f"unavailable ({type(exc).__name__})"
    Output().lines(f"{k:>14}: {v}" for k, v in rows.items())


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line."""
    try:
        app()
    except SecureInferError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
