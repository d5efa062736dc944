"""The ``secure-infer`` command line.

Each subcommand is a thin shell over the library: it parses, validates at the
boundary, shows progress for anything slow (on stderr, with the time left),
and prints its tables through :mod:`secure_infer._output`: styled in a
terminal, full-width Markdown when piped, never a number cut. A long command
ends with one ``report: ...`` line. Errors the user caused come out as one
line (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from secure_infer import baselines, datasets, zoo
from secure_infer._errors import ParameterError, SecureInferError
from secure_infer._output import Output, Progress, TextTable

if TYPE_CHECKING:
    from secure_infer.attacks.suite import AttackReport, SuiteConfig

app = typer.Typer(
    help="Run PyTorch models on data nobody else may see, and measure what it costs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Reference models: list them, train and save one.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


def train_with_bar(progress: Progress, name: str, data: datasets.Dataset, seed: int) -> zoo.ZooModel:
    cfg = zoo.default_config(name)
    task = progress.add_task(f"train {name} on {data.label}", total=cfg.epochs)
    result = zoo.pretrained(
        name, data, seed=seed, on_epoch=lambda _epoch, _loss: progress.advance(task)
    )
    progress.complete(task)
    return result


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
        z = train_with_bar(progress, name, data, seed)
    zoo.save_model(z, out)
    printer.line(f"{z.name}: test accuracy {z.test_accuracy:.4f} on {z.dataset}; saved to {out}")



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
            z = train_with_bar(progress, model, data, seed)
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
    cluster: Annotated[str | None, typer.Option(help="a Ray cluster ADDRESS: its encrypted-scoring cell joins "
                                                     "the scale-out section")] = None,
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
        task = progress.add_task(f"bench --{preset}", total=runner.count_steps(preset, chosen, cluster=bool(cluster)))
        report = runner.run_matrix(
            preset, seed=seed, models=chosen,
            on_cell=lambda c: progress.advance(task, description=f"{c.model} {c.execution} b={c.batch}"),
            on_step=lambda what: progress.advance(task, description=what), cluster=cluster,
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


def _step_counter(progress: Progress, task: int) -> Callable[[str], None]:
    """An ``on_step`` callback: each step is counted done when the next one starts."""
    started = False

    def on_step(what: str) -> None:
        nonlocal started
        progress.advance(task, 1 if started else 0, description=what)
        started = True

    return on_step


def _run_attack_suite(printer: Output, config: SuiteConfig) -> AttackReport:
    """Run the suite with a progress bar: each step is counted done when the next one starts."""
    from secure_infer.attacks import suite

    with printer.progress() as progress:
        task = progress.add_task("attacks", total=suite.count_steps(config))
        result = suite.run_suite(config, on_step=_step_counter(progress, task))
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


@app.command()
def certs(
    folder: Annotated[Path, typer.Argument(help="where the PEM files go (created; an existing CA there is reused)")],
    host: Annotated[list[str] | None, typer.Option(
        help="a DNS name or IP address the server/parties are reached at (repeat; default localhost, 127.0.0.1)")] = None,
    client: Annotated[list[str] | None, typer.Option(help="a client identity for mutual TLS (repeat)")] = None,
    parties: Annotated[int, typer.Option(help="MPC parties: one certificate per rank")] = 0,
    days: Annotated[int, typer.Option(help="validity of new certificates, days")] = 825,
) -> None:
    """Make a development CA and TLS certificates for the server, clients and MPC parties in one step."""
    from secure_infer.certs import make_pki

    issued = make_pki(folder, hosts=host, clients=client, parties=parties, days=days)
    printer = Output()
    table = TextTable(f"certificates in {folder}")
    table.add_column("file")
    table.add_column("status")
    for path in issued.written:
        table.add_row(path.name, "written")
    for path in issued.kept:
        table.add_row(path.name, "kept (already there)")
    printer.table(table)
    printer.line(f"give clients and parties {issued.ca}; keep {folder / 'ca.key'} and every other .key private")


@app.command("datasets")
def datasets_cmd() -> None:
    """List the data sets that work offline."""
    table = TextTable("data sets")
    table.add_column("name")
    table.add_column("description")
    for name in datasets.available():
        if name == "mnist":
            desc = "MNIST from local files: --mnist-path FOLDER of IDX files, or mnist.pkl.gz (not bundled)"
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



@app.command()
def fl(
    out: Annotated[Path, typer.Option(help="folder for report.md, report.json and the plots")] = Path("fl-report"),
    quick: Annotated[bool, typer.Option("--quick", help="fewer rounds and configurations: a few minutes on 2 cores")] = False,
    clients: Annotated[int, typer.Option(help="simulated clients; above 20, one in ten trains each round")] = 10,
    rounds: Annotated[int | None, typer.Option(help="FedAvg rounds (default: 50, or 20 with --quick)")] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet label skew; 0 splits IID")] = 0.5,
    model: Annotated[str, typer.Option(help=f"zoo model: {', '.join(zoo.available())}")] = "mlp",
    dataset: Annotated[str, typer.Option(help="digits, or mnist with --mnist-path")] = "digits",
    mnist_path: Annotated[Path | None, typer.Option(help="folder with the MNIST IDX files, or the mnist.pkl.gz file")] = None,
    aggregators: Annotated[int, typer.Option(help="CrypTen aggregator parties: 2 or 3")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Federated learning on Flower: FedAvg/FedProx, SecAgg+, CrypTen aggregators and DP-FedAvg, attacked."""
    import dataclasses

    from secure_infer.federated import experiment

    if clients < 2:
        raise typer.BadParameter("--clients: at least 2")
    if model not in zoo.available():
        raise typer.BadParameter(f"--model: unknown {model!r}; choose one of {', '.join(zoo.available())}")
    if dataset == "mnist":
        if mnist_path is None:
            raise typer.BadParameter("--dataset mnist needs --mnist-path: the folder of IDX files or the mnist.pkl.gz file (nothing is downloaded)")
        data = datasets.load_mnist(mnist_path, limit_train=20_000, limit_test=2_000)
    else:
        data = datasets.load(dataset, seed=seed)
    plan = experiment.QUICK if quick else experiment.FULL
    plan = dataclasses.replace(plan, clients=clients, alpha=alpha or None, model=model, seed=seed,
                               aggregators=aggregators, rounds=rounds or plan.rounds)
    printer = Output()
    with printer.progress() as progress:
        task = progress.add_task("federated", total=experiment.count_steps(plan))
        on_step = _step_counter(progress, task)

        def on_round(label: str, rnd: int, total: int, accuracy: float) -> None:
            progress.advance(task, 0, description=f"{label}: round {rnd}/{total}, accuracy {accuracy:.3f}")

        report = experiment.run_experiment(plan, data, on_step=on_step, on_round=on_round,
                                           on_note=lambda text: progress.advance(task, 0, description=text))
        progress.complete(task, description="federated")
    table = TextTable("federated training")
    for name in ("configuration", "accuracy", "vs centralised", "epsilon", "dropped"):
        table.add_column(name)
    for r in report["runs"]:
        if "error" in r:
            table.add_row(r["label"], "failed", r["error"].splitlines()[0], "-", "-")
            continue
        table.add_row(r["label"], f"{r['accuracy']:.4f}", f"{r['delta_vs_centralised']:+.4f}",
                      "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}", str(len(r["dropped"])))
    printer.table(table)
    written = experiment.write_report(report, out)
    printer.line(f"wrote {', '.join(p.name for p in written)} in {out}")
    printer.report(out / "report.md")


@app.command()
def pate(
    out: Annotated[Path, typer.Option(help="folder for report.md, report.json and the plot")] = Path("pate-report"),
    quick: Annotated[bool, typer.Option("--quick", help="fewer MPC queries, curve points and DP-SGD runs")] = False,
    teachers: Annotated[int | None, typer.Option(min=1, help="teachers (default 90 on digits, 250 on MNIST)")] = None,
    queries: Annotated[int | None, typer.Option(min=1, help="public inputs the student asks about "
                                                            "(default 300 on digits, 1000 on MNIST)")] = None,
    public: Annotated[int | None, typer.Option(min=1, help="public inputs the student sees, the queries first and the "
                                                           "rest unlabelled (default: the queries on digits, 9000 on "
                                                           "MNIST, as in the PATE papers)")] = None,
    student: Annotated[str | None, typer.Option(help=f"zoo model for the student and the non-private model: "
                                                     f"{', '.join(zoo.available())} (default mlp on digits, lenet "
                                                     "on MNIST)")] = None,
    parties: Annotated[int, typer.Option(help="CrypTen silos that count the vote (2 or more)")] = 3,
    dataset: Annotated[str, typer.Option(help="digits, or mnist with --mnist-path")] = "digits",
    mnist_path: Annotated[Path | None, typer.Option(help="folder with the MNIST IDX files, or the mnist.pkl.gz file")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """PATE: teachers, Confident-GNMax counted by CrypTen silos, data-dependent epsilon, DP-SGD beside it, attacked."""
    import dataclasses

    from secure_infer.pate import experiment

    if parties < 2:
        raise typer.BadParameter("--parties: at least 2 (one silo would see the whole vote)")
    plan = experiment.QUICK if quick else experiment.FULL
    if dataset == "mnist":
        if mnist_path is None:
            raise typer.BadParameter("--dataset mnist needs --mnist-path: the folder of IDX files or the mnist.pkl.gz file (nothing is downloaded)")
        paper = "Papernot et al. 2018's Confident-GNMax settings for MNIST (T=200, sigma1=150, sigma2=40"
        source = f"{paper} at 250 teachers)" if teachers in (None, 250) else f"{paper}, scaled to {teachers} teachers)"
        plan = dataclasses.replace(plan, teachers=250, queries=1000, public=9000, threshold=0.8, sigma_threshold=0.6,
                                   sigma=0.16, aggregator_from=source, **experiment.MNIST_STUDENT)
        if public is None and queries is not None:
            public = max(plan.pool, queries)
        if public not in (None, plan.pool) or queries not in (None, plan.queries):
            plan = dataclasses.replace(plan, student_from=f"{plan.student_from}; this run's --public or --queries "
                                                          "moved that split, so some of those images may now be "
                                                          "queried or scored")
    given = (("teachers", teachers), ("queries", queries), ("public", public), ("student", student))
    chosen: dict[str, Any] = {name: value for name, value in given if value is not None}
    if student is not None and student != plan.student:
        chosen["student_from"] = "given on the command line (--student), with the recipe's other settings unchanged"
    try:
        plan = dataclasses.replace(plan, parties=parties, seed=seed, **chosen)
    except ParameterError as exc:
        message = str(exc)
        for name in chosen:  # name the command-line option the user typed
            message = message.replace(f"PatePlan.{name} ", f"--{name} ")
        raise typer.BadParameter(message) from None
    data = (datasets.load_mnist(mnist_path) if dataset == "mnist" and mnist_path is not None
            else datasets.load(dataset, seed=seed))
    printer = Output()
    with printer.progress() as progress:
        task = progress.add_task("pate", total=experiment.count_steps(plan))
        report = experiment.run_pate(plan, data, on_step=_step_counter(progress, task))
        progress.complete(task, description="pate")
    table = TextTable("PATE student vs non-private")
    for name in ("model", "answered", "epsilon", "epsilon published", "accuracy"):
        table.add_column(name)
    table.add_row("non-private", "-", "-", "-", f"{report['nonprivate_accuracy']:.4f}")
    for r in report["rows"]:
        table.add_row(r["aggregator"], str(r["answered"]), f"{r['epsilon']:.2f}",
                      f"{r['epsilon_published']:.2f}", f"{r['accuracy']:.4f}")
    for r in report["dp_sgd"][1:]:
        if "error" not in r:
            table.add_row(f"DP-SGD (target {r['target_epsilon']:g})", "-", f"{r['epsilon']:.2f}", f"{r['epsilon']:.2f}",
                          f"{r['accuracy']:.4f}")
    printer.table(table)
    written = experiment.write_report(report, out)
    printer.line(f"wrote {', '.join(p.name for p in written)} in {out}")
    printer.report(out / "report.md")


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="a zoo model name (trained now) or a file from `zoo train`")],
    data: Annotated[str | None, typer.Argument(help="a .npy file, or DATASET:START-END (test split); "
                                                    "default: the whole test split")] = None,
    dataset: Annotated[str | None, typer.Option(help="data set of a zoo name (default: digits)")] = None,
    repeat: Annotated[int, typer.Option(min=1, help="score the inputs this many times over (a larger job)")] = 1,
    backend: Annotated[str, typer.Option(help="tenseal (CKKS batch mode) or crypten (parties placed on "
                                              "the hosts labelled secure_infer_party_<rank>, through Ray)")] = "tenseal",
    cluster: Annotated[str | None, typer.Option(help="a Ray cluster: ADDRESS (ray start --head prints it) or "
                                                     "'local'; default: worker processes on this machine "
                                                     "(crypten: a local Ray)")] = None,
    workers: Annotated[int, typer.Option(min=0, help="tenseal worker processes (Ray: actors; 0: 2 here, or the "
                                                     "cluster's CPUs)")] = 0,
    block: Annotated[int, typer.Option(min=1, help="crypten: inputs per block (tenseal: the slot count)")] = 64,
    out: Annotated[Path, typer.Option(help="folder for finished blocks, the manifest, outputs.npy and "
                                           "score.json; a rerun resumes from it")] = Path("score-out"),
    fresh: Annotated[bool, typer.Option("--fresh", help="discard finished blocks in --out and start over")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Score a data set encrypted, block by block, on local workers or a Ray cluster; resumable."""
    import json
    import time

    import numpy as np
    import torch

    import secure_infer as si
    from secure_infer import engine as engines
    from secure_infer.scoring import score as run_score

    if backend not in ("tenseal", "crypten"):
        raise typer.BadParameter(f"--backend must be tenseal or crypten, got {backend!r}")
    printer = Output()
    with printer.progress() as progress:
        z, ds = model_from_arg(model, dataset, seed, lambda name, d: train_with_bar(progress, name, d, seed))
    labels: torch.Tensor | None
    if data is None:
        x, labels = ds.x_test, ds.y_test
    else:
        x, labels = datasets.load_inputs(data, seed=seed)
    if repeat > 1:
        x = x.repeat(repeat, *([1] * (x.dim() - 1)))
        labels = None if labels is None else labels.repeat(repeat)
    extra: dict[str, object] = {}
    with printer.progress() as progress:
        task = progress.add_task("score", total=len(x))
        started = time.perf_counter()
        count = [0]

        def on_block(inputs: int, _blocks: int) -> None:
            count[0] += inputs
            rate = count[0] / max(1e-9, time.perf_counter() - started)
            progress.advance(task, inputs, description=f"score ({rate:,.0f} inputs/s)")

        if backend == "crypten":
            from secure_infer.scoring_mpc import score_mpc

            with si.wrap(z.model, "crypten", sample_input=x[:1]) as enc:
                result, placed = score_mpc(enc, x, address=cluster or "local", block=block, out=out, fresh=fresh,
                                           on_block=on_block)
            extra["party_nodes"] = [{"block": b.index, "nodes": b.nodes, "seconds": round(b.seconds, 3),
                                     "bytes": b.bytes, "rounds": b.rounds} for b in placed]
        else:
            enc = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="batch", calibration=ds.x_train)
            engine: engines.Engine = (engines.LocalEngine(workers or 2) if cluster is None
                                      else engines.RayEngine(cluster, workers or None))
            try:
                result = run_score(enc, x, engine, out=out, fresh=fresh, on_block=on_block)
            finally:
                engine.close()
        progress.complete(task)
    np.save(out / "outputs.npy", result.outputs.numpy())
    summary = {**result.summary(), **extra}
    plain = enc.reference.run_core(x)
    summary["argmax_agreement"] = float((result.outputs.argmax(1) == plain.argmax(1)).float().mean())
    summary["max_abs_error"] = float((result.outputs - plain).abs().max())
    if labels is not None:
        summary["accuracy"] = float((result.outputs.argmax(1) == labels).float().mean())
    (out / "score.json").write_text(json.dumps(summary, indent=1))
    table = TextTable(f"encrypted scoring: {z.name}")
    for name in ("inputs", "blocks (resumed)", "seconds", "inputs/s", "agreement", "blocks per node"):
        table.add_column(name)
    table.add_row(str(len(x)), f"{result.blocks} ({result.resumed})", f"{result.seconds:.2f}",
                  f"{result.throughput:,.0f}", f"{summary['argmax_agreement']:.4f}",
                  ", ".join(f"{k[:8]}: {v}" for k, v in result.per_node.items()))
    printer.table(table)
    printer.report(out / "score.json")


if __name__ == "__main__":
    main()
