"""The runner behind ``secure-infer bench``: one matrix, one run, one report.

Every cell (model x execution x batch size) is measured in the same process
and run as its plaintext-CPU baseline, so overhead ratios are like for like on
a shared machine. Cells that cannot run here (no CUDA, a layer the backend
lacks) are kept, with the reason, rather than dropped. Results go to
``report.json`` (with seeds, versions, CPU and thread counts), ``report.md``
and PNG plots.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from secure_infer import baselines, datasets, zoo

__all__ = ["Cell", "PRESETS", "run_matrix", "write_report"]

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "models": ["logreg", "mlp", "cryptonets", "lenet"],
        "executions": ["plaintext-cpu", "plaintext-gpu", "crypten-2p", "tenseal-latency", "tenseal-batch"],
        "batches": [1, 16],
        "repeats": 3,
    },
    "full": {
        "models": ["logreg", "mlp", "cryptonets", "lenet"],
        "executions": ["plaintext-cpu", "plaintext-gpu", "crypten-2p", "crypten-3p", "crypten-gpu",
                       "tenseal-latency", "tenseal-batch"],
        "batches": [1, 16, 64, "slots"],
        "repeats": 5,
    },
}


@dataclass
class Cell:
    """One measurement. ``status`` is ``measured`` or ``not run`` (then ``reason`` says why)."""

    model: str
    execution: str
    batch: int | str
    status: str = "measured"
    reason: str = ""
    p50_s: float | None = None
    p95_s: float | None = None
    per_input_s: float | None = None
    throughput: float | None = None
    overhead_vs_cpu: float | None = None
    agreement: float | None = None
    max_abs_error: float | None = None
    bytes_per_input: float | None = None
    rounds: int | None = None
    ciphertext_bytes_in: int | None = None
    key_bytes: int | None = None
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # Linux reports KiB


def _time(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    out = fn()  # warm-up, also the output we score
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples, out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _inputs(data: datasets.Dataset, batch: int) -> torch.Tensor:
    x = data.x_test
    if len(x) < batch:
        x = x.repeat((batch + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))
    return x[:batch]


def _encrypted_cell(model_name: str, execution: str, batch: int | str, z: zoo.ZooModel,
                    data: datasets.Dataset, repeats: int, cpu: dict[int, float]) -> Cell:
    import secure_infer as si

    backend = "crypten" if execution.startswith("crypten") else "tenseal"
    options: dict[str, Any] = {}
    if execution == "crypten-3p":
        options["parties"] = 3
    elif execution == "crypten-gpu":
        return Cell(model_name, execution, batch, "not run",
                    "CrypTen on CUDA is not implemented in secure-infer yet" if torch.cuda.is_available()
                    else "no CUDA device on this machine")
    elif backend == "tenseal":
        options["mode"] = execution.split("-")[1]
        options["calibration"] = data.x_train[:256]
    report = si.check(z.model, backend, sample_input=data.x_test[:1])
    if not report.ok:
        return Cell(model_name, execution, batch, "not run", str(report.problems[0]).split(". ")[0])
    with si.wrap(z.model, backend, sample_input=data.x_test[:1], **options) as enc:
        if batch == "slots":
            if execution != "tenseal-batch":
                return Cell(model_name, execution, batch, "not run", "the full-slot batch applies to tenseal-batch only")
            size = enc.program.params.slots
        else:
            size = int(batch)
        x = _inputs(data, size)
        reps = 1 if size > 64 else repeats
        samples, y = _time(lambda: enc(x), reps)
        run = enc.last_run
        plain = z.model(x).detach()
        p50 = statistics.median(samples)
        cell = Cell(
            model_name, execution, batch, p50_s=p50, p95_s=_percentile(samples, 0.95), per_input_s=p50 / size,
            throughput=size / p50, agreement=float((y.argmax(1) == plain.argmax(1)).float().mean()),
            max_abs_error=float((y - plain).abs().max()), peak_rss_mb=_peak_rss_mb(),
            extra={"batch_size": size},
        )
        if size in cpu:
            cell.overhead_vs_cpu = p50 / cpu[size]
        if backend == "crypten":
            cell.bytes_per_input = (run.bytes_sent or 0) / size
            cell.rounds = run.rounds
        else:
            cell.ciphertext_bytes_in = run.extra["ciphertext_bytes_in"]
            cell.bytes_per_input = (run.bytes_sent or 0) / size
            cell.key_bytes = run.extra["public_key_material_bytes"]
            cell.extra.update(depth=run.extra["depth_used"], slots=run.extra["slots"],
                              encrypt_s=run.encrypt_s, compute_s=run.compute_s, decrypt_s=run.decrypt_s)
        return cell


def run_matrix(preset: str = "quick", *, seed: int = 0, models: list[str] | None = None,
               on_cell: Callable[[Cell], None] | None = None) -> dict[str, Any]:
    """Measure the preset's matrix on the digits data; returns the report as a dict."""
    if preset not in PRESETS:
        from secure_infer._errors import ParameterError

        raise ParameterError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    data = datasets.load_digits(seed=seed)
    cells: list[Cell] = []
    started = time.perf_counter()
    for model_name in models or spec["models"]:
        z = zoo.pretrained(model_name, data, seed=seed)
        cpu: dict[int, float] = {}
        for execution in spec["executions"]:
            for batch in spec["batches"]:
                if execution.startswith("plaintext"):
                    if batch == "slots":
                        continue
                    device = "cuda" if execution.endswith("gpu") else "cpu"
                    r = baselines.time_plaintext(z.model, _inputs(data, int(batch)), device=device, repeats=20)
                    if not r.measured:
                        cell = Cell(model_name, execution, batch, "not run", r.reason)
                    else:
                        cell = Cell(model_name, execution, batch, p50_s=r.p50_s, p95_s=r.p95_s,
                                    per_input_s=r.per_input_s, throughput=r.throughput, agreement=1.0,
                                    max_abs_error=0.0, peak_rss_mb=_peak_rss_mb())
                        if device == "cpu":
                            cpu[int(batch)] = r.p50_s
                            cell.overhead_vs_cpu = 1.0
                        else:
                            cell.overhead_vs_cpu = r.p50_s / cpu[int(batch)] if int(batch) in cpu else None
                else:
                    cell = _encrypted_cell(model_name, execution, batch, z, data, spec["repeats"], cpu)
                cell.extra.setdefault("plaintext_test_accuracy", z.test_accuracy)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
    return {
        "preset": preset,
        "seconds": time.perf_counter() - started,
        "environment": environment(seed),
        "dataset": data.description,
        "cells": [asdict(c) for c in cells],
    }


def environment(seed: int) -> dict[str, Any]:
    """What the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("secure-infer", "torch", "crypten", "tenseal", "numpy", "scikit-learn"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "seed": seed, "python": platform.python_version(), "versions": versions, "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}{unit}"
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the plots; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=str))
    env = report["environment"]
    lines = [
        f"# secure-infer benchmark ({report['preset']})",
        "",
        f"{report['dataset']}; seed {env['seed']}; CPU {env['cpu']} ({env['cpu_count']} cores, "
        f"torch threads {env['torch_threads']}); CUDA: {env['cuda']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        "| model | execution | batch | ms/input | inputs/s | x plaintext CPU | argmax agree | max abs err | bytes/input | rounds | key MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        if c["status"] != "measured":
            lines.append(f"| {c['model']} | {c['execution']} | {c['batch']} | not run: {c['reason']} |||||||")
            continue
        lines.append(
            f"| {c['model']} | {c['execution']} | {c['batch']} | {_fmt(c['per_input_s'] * 1e3)} | "
            f"{_fmt(c['throughput'])} | {_fmt(c['overhead_vs_cpu'])} | {_fmt(c['agreement'])} | "
            f"{_fmt(c['max_abs_error'])} | {_fmt(c['bytes_per_input'])} | {_fmt(c['rounds'])} | "
            f"{_fmt(c['key_bytes'] / 1e6 if c['key_bytes'] else None)} |"
        )
    lines += ["", f"Measured in {report['seconds']:.0f} s. Regenerate: `secure-infer bench --{report['preset']} --out DIR`.", ""]
    plots = _plots(report, out)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    paths[1].write_text("\n".join(lines) + "\n")
    return paths + plots


def _plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [c for c in report["cells"] if c["status"] == "measured"]
    models = sorted({c["model"] for c in measured})
    written = []
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for execution in sorted({c["execution"] for c in measured if c["model"] == model}):
            pts = sorted((c["extra"].get("batch_size", c["batch"]), c["per_input_s"]) for c in measured
                         if c["model"] == model and c["execution"] == execution)
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=execution)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per input")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "latency_vs_batch.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    enc = [c for c in measured if c["overhead_vs_cpu"] and not c["execution"].startswith("plaintext")]
    if enc:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(enc)), 4))
        labels = [f"{c['model']}\n{c['execution']}\nb={c['batch']}" for c in enc]
        ax.bar(range(len(enc)), [c["overhead_vs_cpu"] for c in enc])
        ax.set_yscale("log")
        ax.set_xticks(range(len(enc)), labels, fontsize=6)
        ax.set_ylabel("time / plaintext CPU (same run)")
        fig.tight_layout()
        path = out / "overhead.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    sized = [c for c in measured if c["bytes_per_input"]]
    if sized:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(sized)), 4))
        ax.bar(range(len(sized)), [c["bytes_per_input"] / 1e6 for c in sized])
        ax.set_yscale("log")
        ax.set_xticks(range(len(sized)), [f"{c['model']}\n{c['execution']}\nb={c['batch']}" for c in sized], fontsize=6)
        ax.set_ylabel("MB on the wire per input")
        fig.tight_layout()
        path = out / "bytes_per_input.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
