"""The ``secure-infer`` command line.

Each subcommand is a thin shell over the library: it parses, validates at the
boundary, shows progress for anything slow, and prints a table. Errors the
user caused come out as one line (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from secure_infer import baselines, datasets, zoo
from secure_infer._errors import SecureInferError

app = typer.Typer(
    help="Run PyTorch models on data nobody else may see, and measure what it costs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Reference models: list them, train and save one.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

console = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _train_with_bar(progress: Progress, name: str, data: datasets.Dataset, seed: int) -> zoo.ZooModel:
    cfg = zoo.default_config(name)
    task = progress.add_task(f"train {name} on {data.label}", total=cfg.epochs)
    result = zoo.pretrained(
        name, data, seed=seed, on_epoch=lambda _epoch, _loss: progress.advance(task)
    )
    return result


def _fmt_ms(result: baselines.BaselineResult, notes: dict[str, str]) -> str:
    """Milliseconds per input, or 'not measured' with the reason as a numbered note."""
    if not result.measured:
        mark = notes.setdefault(result.reason, f"[{len(notes) + 1}]")
        return f"not measured {mark}"
    return f"{result.per_input_s * 1e3:.4f}"


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="digits or breast_cancer")] = "digits",
    seed: Annotated[int, typer.Option(help="seed for the split, initialisation and training")] = 0,
    models: Annotated[
        str, typer.Option(help="comma-separated zoo models (default: all that fit the data)")
    ] = "",
    json_out: Annotated[Path | None, typer.Option("--json", help="also write results here")] = None,
    parties: Annotated[int, typer.Option(help="CrypTen parties (separate processes); 0 skips encryption")] = 2,
    limit: Annotated[int, typer.Option(help="test inputs to run encrypted (0 = the whole test split)")] = 0,
    tenseal: Annotated[bool, typer.Option(help="also run TenSEAL (CKKS) in batch and latency mode")] = True,
) -> None:
    """Train the zoo on embedded data; run it in plaintext and under CrypTen MPC.

    Each model is secret-shared between a model owner and a data owner (real
    processes talking over TCP), the test split is classified encrypted, and
    accuracy, cost and agreement with plaintext are set side by side.
    """
    data = datasets.load(dataset, seed=seed)
    names = [m.strip() for m in models.split(",") if m.strip()] or [
        n for n in zoo.available() if len(data.input_shape) == 3 or n in ("logreg", "mlp")
    ]
    rows = []
    with _progress() as progress:
        trained = [_train_with_bar(progress, name, data, seed) for name in names]
        task = progress.add_task("time plaintext CPU/GPU", total=len(trained))
        for z in trained:
            cpu1 = baselines.time_plaintext(z.model, data.x_test[:1], repeats=50)
            cpu64 = baselines.time_plaintext(z.model, data.x_test[:64], repeats=20)
            gpu64 = baselines.time_plaintext(z.model, data.x_test[:64], device="cuda", repeats=20)
            rows.append((z, cpu1, cpu64, gpu64))
            progress.advance(task)

    table = Table(title=f"secure-infer demo: plaintext on {data.description}")
    for col in ("model", "params", "train s", "test acc", "CPU ms/img (b=1)", "CPU ms/img (b=64)", "GPU ms/img (b=64)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    notes: dict[str, str] = {}
    for z, cpu1, cpu64, gpu64 in rows:
        table.add_row(
            z.name, f"{z.num_parameters:,}", f"{z.train_seconds:.2f}", f"{z.test_accuracy:.4f}",
            _fmt_ms(cpu1, notes), _fmt_ms(cpu64, notes), _fmt_ms(gpu64, notes),
        )
    console.print(table)
    for reason, mark in notes.items():
        console.print(f"{mark} {reason}")
    encrypted = _demo_encrypted(rows, data, parties, limit) if parties else {}
    he = _demo_tenseal(rows, data, limit) if tenseal else {}
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
        console.print(f"wrote {json_out}")


def _demo_encrypted(rows: list, data: datasets.Dataset, parties: int, limit: int) -> dict:
    """Classify the test split under CrypTen for every trained model; print a table."""
    import secure_infer as si

    x = data.x_test[:limit] if limit else data.x_test
    y = data.y_test[: len(x)]
    results = {}
    with _progress() as progress:
        for z, *_ in rows:
            task = progress.add_task(f"CrypTen {parties}-party {z.name}", total=len(x))
            with si.wrap(z.model, "crypten", sample_input=x[:1], parties=parties) as enc:
                results[z.name] = enc.evaluate(x, y, on_batch=lambda n, t=task: progress.advance(t, n))
    table = Table(title=f"CrypTen, {parties} parties (model owner, data owner{', helpers' if parties > 2 else ''}), "
                  f"{len(x)} test inputs in batches of 64")
    for col in ("model", "enc acc", "plain acc", "argmax agree", "max |err|", "ms/img", "MB/img", "rounds/batch"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, ev in results.items():
        table.add_row(
            name, f"{ev.accuracy:.4f}", f"{ev.plaintext_accuracy:.4f}", f"{ev.agreement:.4f}",
            f"{ev.max_abs_error:.2e}", f"{ev.seconds_per_input * 1e3:.2f}", f"{ev.bytes_per_input / 1e6:.2f}",
            f"{ev.rounds_per_batch:.0f}",
        )
    console.print(table)
    console.print("MB/img counts the traffic of all parties together.")
    return results


def _demo_tenseal(rows: list, data: datasets.Dataset, limit: int) -> dict:
    """Classify the test split under CKKS (batch mode) and time latency mode; print a table."""
    import secure_infer as si

    x = data.x_test[:limit] if limit else data.x_test
    y = data.y_test[: len(x)]
    calibration = data.x_train[:256]
    results: dict[str, dict] = {}
    with _progress() as progress:
        task = progress.add_task("TenSEAL (CKKS) batch + latency", total=len(rows))
        for z, *_ in rows:
            report = si.check(z.model, "tenseal", sample_input=x[:1])
            if not report.ok:
                results[z.name] = {"supported": False, "reason": str(report.problems[0]).split(". ")[0]}
                progress.advance(task)
                continue
            batch = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="batch", calibration=calibration)
            ev = batch.evaluate(x, y, batch_size=batch.program.params.slots)
            latency = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="latency", calibration=calibration)
            latency(x[:2])
            run = latency.last_run
            approximated = [c.layer for c in latency.report().conversions if c.kind == "approximated"]
            results[z.name] = {
                "supported": True, "accuracy": ev.accuracy, "plaintext_accuracy": ev.plaintext_accuracy,
                "agreement": ev.agreement, "max_abs_error": ev.max_abs_error,
                "batch_ms_per_image": ev.seconds_per_input * 1e3,
                "latency_ms_per_image": run.per_input_s * 1e3,
                "latency_key_mb": run.extra["public_key_material_bytes"] / 1e6,
                "approximated": approximated,
            }
            progress.advance(task)
    table = Table(title=f"TenSEAL CKKS: batch mode over {len(x)} test inputs, latency mode per image")
    for col in ("model", "enc acc", "plain acc", "agree", "max |err|", "batch ms/img", "latency ms/img", "keys MB", "approximated"):
        table.add_column(col, justify="right" if col not in ("model", "approximated") else "left")
    for name, r in results.items():
        if not r["supported"]:
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", f"not supported: {r['reason']}")
            continue
        table.add_row(
            name, f"{r['accuracy']:.4f}", f"{r['plaintext_accuracy']:.4f}", f"{r['agreement']:.4f}",
            f"{r['max_abs_error']:.2e}", f"{r['batch_ms_per_image']:.2f}", f"{r['latency_ms_per_image']:.1f}",
            f"{r['latency_key_mb']:.1f}", ", ".join(r["approximated"]) or "none (exact)",
        )
    console.print(table)
    console.print("batch mode packs one input per slot; its cost per batch is flat up to the slot count, "
                  "so ms/img falls with larger batches.")
    return results


@zoo_app.command("list")
def zoo_list() -> None:
    """List the zoo's models with their size on the digits data."""
    data = datasets.load_digits()
    table = Table(title="secure-infer zoo (sizes on 8x8 digits)")
    table.add_column("name")
    table.add_column("params", justify="right")
    table.add_column("layers")
    for name in zoo.available():
        model = zoo.build(name, data.input_shape, data.num_classes)
        layers = ", ".join(type(m).__name__ for m in model.children())
        table.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}", layers)
    console.print(table)


@zoo_app.command("train")
def zoo_train(
    name: Annotated[str, typer.Argument(help="a zoo model, see `secure-infer zoo list`")],
    out: Annotated[Path, typer.Option(help="where to save the trained model")],
    dataset: Annotated[str, typer.Option(help="digits or breast_cancer")] = "digits",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train one zoo model and save it for `wrap`, `serve` or `bench`."""
    data = datasets.load(dataset, seed=seed)
    with _progress() as progress:
        z = _train_with_bar(progress, name, data, seed)
    zoo.save_model(z, out)
    console.print(f"{z.name}: test accuracy {z.test_accuracy:.4f} on {z.dataset}; saved to {out}")


@app.command()
def baseline(
    model: Annotated[str, typer.Argument(help="a zoo model name or a file from `zoo train`")],
    dataset: Annotated[str, typer.Option(help="digits or breast_cancer")] = "digits",
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,16,64",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Time a model in plaintext on CPU and, when CUDA exists, GPU."""
    data = datasets.load(dataset, seed=seed)
    if Path(model).is_file():
        z = zoo.load_model(model)
    else:
        with _progress() as progress:
            z = _train_with_bar(progress, model, data, seed)
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--batch-sizes must be integers, got {batch_sizes!r}") from None
    table = Table(title=f"plaintext baseline: {z.name}")
    for col in ("device", "batch", "p50 ms", "p95 ms", "inputs/s"):
        table.add_column(col, justify="right")
    for device in ("cpu", "cuda"):
        for b in sizes:
            x = data.x_test[:b]
            if len(x) < b:
                x = x.repeat((b + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:b]
            r = baselines.time_plaintext(z.model, x, device=device)
            if r.measured:
                table.add_row(device, str(b), f"{r.p50_s * 1e3:.4f}", f"{r.p95_s * 1e3:.4f}", f"{r.throughput:,.0f}")
            else:
                table.add_row(device, str(b), f"not measured ({r.reason})", "", "")
    console.print(table)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="folder for report.json, report.md and the plots")] = Path("bench-report"),
    quick: Annotated[bool, typer.Option("--quick", help="a few minutes on 2 cores (default)")] = False,
    full: Annotated[bool, typer.Option("--full", help="the whole matrix: more batch sizes and executions")] = False,
    models: Annotated[str, typer.Option(help="comma-separated zoo models (default: the preset's)")] = "",
    preset: Annotated[str, typer.Option(help="quick, full or gpu (the cells the GPU script runs)")] = "",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Measure encryption overhead against plaintext, side by side, in one run."""
    from secure_infer import bench as runner

    if sum(map(bool, (quick, full, preset))) > 1:
        raise typer.BadParameter("choose one of --quick, --full or --preset")
    preset = preset or ("full" if full else "quick")
    if preset not in runner.PRESETS:
        raise typer.BadParameter(f"--preset must be one of {', '.join(runner.PRESETS)}")
    chosen = [m.strip() for m in models.split(",") if m.strip()] or None
    spec = runner.PRESETS[preset]
    n_models = len(chosen or spec["models"])
    total = n_models * len(spec["executions"]) * len(spec["batches"])  # plus the sweeps, after
    with _progress() as progress:
        task = progress.add_task(f"bench --{preset}", total=total)
        report = runner.run_matrix(
            preset, seed=seed, models=chosen,
            on_cell=lambda c: progress.update(task, advance=1, description=f"{c.model} {c.execution} b={c.batch}"),
        )
        progress.update(task, completed=total)
    for path in runner.write_report(report, out):
        console.print(f"wrote {path}")


@app.command("datasets")
def datasets_cmd() -> None:
    """List the data sets that work offline."""
    table = Table(title="data sets")
    table.add_column("name")
    table.add_column("description")
    for name in datasets.available():
        if name == "mnist":
            desc = "MNIST from local IDX files: --mnist-path FOLDER (not bundled)"
        else:
            desc = datasets.load(name).description
        table.add_row(name, desc)
    console.print(table)


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
    for k, v in rows.items():
        console.print(f"{k:>14}: {v}")


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line."""
    try:
        app()
    except SecureInferError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
