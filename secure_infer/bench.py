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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from secure_infer import baselines, datasets, zoo
from secure_infer._errors import SecureInferError

if TYPE_CHECKING:
    from secure_infer.backends.base import Program, RunStats
    from secure_infer.backends.tenseal import TensealProgram

__all__ = ["Cell", "PRESETS", "count_steps", "run_matrix", "write_report"]

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "models": ["logreg", "mlp", "cryptonets", "lenet", "vit", "reference28", "lenet28"],
        "executions": ["plaintext-cpu", "plaintext-gpu", "raw-crypten-2p", "crypten-2p", "tenseal-handwritten",
                       "tenseal-latency", "tenseal-latency-chain", "tenseal-batch"],
        "batches": [1, 16],
        "repeats": 2,
        "scale_out": {"repeat": 20},
    },
    "full": {
        "models": ["logreg", "mlp", "cryptonets", "lenet", "vit", "reference28", "lenet28"],
        "executions": ["plaintext-cpu", "plaintext-gpu", "raw-crypten-2p", "crypten-2p", "crypten-3p",
                       "crypten-gpu", "tenseal-handwritten", "tenseal-latency", "tenseal-latency-chain",
                       "tenseal-batch", "tenseal-batch-2w", "tenseal-batch-2p"],
        "batches": [1, 16, 64, "slots"],
        "repeats": 5,
        "scale_out": {"repeat": 20},
    },
}

PRESETS["gpu"] = {
    "models": ["logreg", "mlp", "cryptonets", "lenet", "vit", "reference28", "lenet28"],
    "executions": ["plaintext-cpu", "plaintext-gpu", "crypten-gpu"],
    "batches": [1, 16, 64],
    "repeats": 5,
    "widths": [],
    "depths": [],
    "degrees": [],
}

# Models on generated 28x28 inputs (timing only): the backend issues' reference networks.
GENERATED = {"reference28": "cryptonets", "lenet28": "lenet"}
ANCHORS = {"raw-crypten-2p": "raw CrypTen 0.4.1 (its own from_pytorch), 2 parties",
           "tenseal-handwritten": "TenSEAL by hand, tutorial method and parameters"}


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


def _time(fn: Callable[[], Any], repeats: int, *, warmup: bool = True) -> tuple[list[float], Any]:
    """Timed calls of ``fn``; with ``warmup`` one untimed call first. Returns (seconds, first output)."""
    samples = []
    out = fn() if warmup else None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
        out = result if out is None else out
    return samples, out


# Cells whose single call takes seconds and has no warm-up effect worth waiting for.
_SLOW = {"tenseal-batch", "tenseal-batch-2w", "tenseal-batch-2p", "tenseal-handwritten"}
# tenseal-latency-chain: schedule="square-chain"; tenseal-batch-2w: workers=2 (both cores), whose "slots"
# batch is two full blocks, one per worker (workers evaluate whole blocks, this process encrypts);
# tenseal-batch-2p: the same with encrypt_on="workers" (each worker encrypts, evaluates and decrypts its blocks)
_TENSEAL_VARIANTS: dict[str, dict[str, Any]] = {"chain": {"schedule": "square-chain"}, "2w": {"workers": 2},
                                                "2p": {"workers": 2, "encrypt_on": "workers"}}


def _stats(run: RunStats | None, what: str) -> RunStats:
    """The figures of the call just made (every program records them; a missing one is a bug worth naming)."""
    if run is None:
        raise SecureInferError(f"{what} recorded no statistics for its last call")
    return run


def _tenseal(program: Program) -> TensealProgram:
    """``program`` as the TenSEAL program that ``wrap(..., "tenseal")`` builds."""
    from secure_infer.backends.tenseal import TensealProgram

    if not isinstance(program, TensealProgram):
        raise SecureInferError(f"expected a TenSEAL program, got {type(program).__name__}")
    return program


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

    if execution in ANCHORS:
        return _anchor_cell(model_name, execution, batch, z, data, repeats, cpu)
    backend = "crypten" if execution.startswith("crypten") else "tenseal"
    options: dict[str, Any] = {}
    if execution == "crypten-3p":
        options["parties"] = 3
    elif execution == "crypten-gpu":
        return Cell(model_name, execution, batch, "not run",
                    "CrypTen on CUDA is not implemented in secure-infer yet" if torch.cuda.is_available()
                    else "no CUDA device on this machine")
    elif backend == "tenseal":
        parts = execution.split("-")
        options["mode"] = parts[1]
        options["calibration"] = data.x_train[:256]
        for part in parts[2:]:
            options.update(_TENSEAL_VARIANTS[part])
    report = si.check(z.model, backend, sample_input=data.x_test[:1])
    if not report.ok:
        return Cell(model_name, execution, batch, "not run", str(report.problems[0]).split(". ")[0])
    if batch == "slots" and not execution.startswith("tenseal-batch"):
        return Cell(model_name, execution, batch, "not run", "the full-slot batch applies to tenseal-batch only")
    try:
        enc = si.wrap(z.model, backend, sample_input=data.x_test[:1], **options)
    except si.UnsupportedModelError as exc:  # e.g. no polynomial degree fits the largest ring
        return Cell(model_name, execution, batch, "not run", str(exc).split(". ")[0])
    except si.ParameterError as exc:
        if "schedule" not in options:
            raise
        return Cell(model_name, execution, batch, "not run", str(exc).split(";")[0])
    with enc:
        size = _tenseal(enc.program).params.slots if batch == "slots" else int(batch)
        if batch == "slots" and options.get("workers", 1) > 1:
            size *= options["workers"]
        x = _inputs(data, size)
        reps = 1 if size > 64 or execution in _SLOW else repeats
        samples, y = _time(partial(enc, x), reps, warmup=execution not in _SLOW)
        run = _stats(enc.last_run, execution)
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
                              encrypt_s=run.encrypt_s, compute_s=run.compute_s, decrypt_s=run.decrypt_s,
                              worst_case_error=_tenseal(enc.program).worst_case_error)
        return cell


def _anchor_cell(model_name: str, execution: str, batch: int | str, z: zoo.ZooModel,
                 data: datasets.Dataset, repeats: int, cpu: dict[int, float]) -> Cell:
    """The same cell without secure-infer: raw CrypTen, or TenSEAL by hand."""
    if batch == "slots":
        return Cell(model_name, execution, batch, "not run", "the full-slot batch applies to tenseal-batch only")
    size = int(batch)
    if execution == "tenseal-handwritten":
        from secure_infer.anchors import TutorialPipeline, TutorialProgram

        if not isinstance(z.model, torch.nn.Sequential) or not TutorialPipeline.supports(z.model, z.input_shape):
            return Cell(model_name, execution, batch, "not run",
                        "the tutorial method covers conv -> x^2 -> fc -> x^2 -> fc only")
        program: Any = TutorialProgram(z.model)
        size = min(size, 4)  # one image at a time: a few are enough to time it
    else:
        import secure_infer as si
        from secure_infer.backends.crypten import native_crypten

        if not si.check(z.model, "crypten", sample_input=data.x_test[:1]).ok:
            return Cell(model_name, execution, batch, "not run", "raw CrypTen cannot convert this model")
        try:
            program = native_crypten(z.model, data.x_test[:1])
        except Exception as exc:  # the anchor's own failure is a result, not a crash
            return Cell(model_name, execution, batch, "not run", f"raw CrypTen failed: {_last_line(exc)}")
    try:
        x = _inputs(data, size)
        slow = execution in _SLOW
        samples, y = _time(lambda: program(x), 1 if slow or size > 16 else repeats, warmup=not slow)
    except Exception as exc:
        return Cell(model_name, execution, batch, "not run", f"{ANCHORS[execution]} failed: {_last_line(exc)}")
    finally:
        program.close()
    plain = z.model(x).detach()
    p50 = statistics.median(samples)
    cell = Cell(model_name, execution, batch, p50_s=p50, p95_s=_percentile(samples, 0.95), per_input_s=p50 / size,
                throughput=size / p50, agreement=float((y.argmax(1) == plain.argmax(1)).float().mean()),
                max_abs_error=float((y - plain).abs().max()), peak_rss_mb=_peak_rss_mb(),
                extra={"batch_size": size, "anchor": ANCHORS[execution]})
    if size in cpu:
        cell.overhead_vs_cpu = p50 / cpu[size]
    if execution == "tenseal-handwritten":
        cell.key_bytes = program.key_bytes
        cell.ciphertext_bytes_in = int(program.last_phases["input_ciphertext_bytes"]) * size
        cell.bytes_per_input = float(program.last_phases["input_ciphertext_bytes"])
    else:
        run = _stats(program.last_run, execution)
        cell.bytes_per_input = (run.bytes_sent or 0) / size
        cell.rounds = run.rounds
    return cell


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _model_and_data(name: str, seed: int, digits: datasets.Dataset) -> tuple[zoo.ZooModel, datasets.Dataset]:
    if name in GENERATED:
        data = datasets.mnist_shaped(64, n_train=256, seed=seed)
        model = zoo.build(GENERATED[name], data.input_shape, data.num_classes, seed=seed).eval()
        return zoo.ZooModel(name, model, data.label, data.input_shape, 10, float("nan"), 0.0, seed), data
    return zoo.pretrained(name, digits, seed=seed), digits


def _spec(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        from secure_infer._errors import ParameterError

        raise ParameterError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def count_steps(preset: str = "quick", models: list[str] | None = None, *, cluster: bool = False) -> int:
    """How many progress steps :func:`run_matrix` reports: one per cell, per sweep measurement.

    The command line sizes its progress bar (and so its estimate of the time
    left) with this, so the sweeps after the matrix are counted too.
    """
    spec = _spec(preset)
    cells = 0
    for execution in spec["executions"]:
        skip_slots = execution.startswith("plaintext") and "slots" in spec["batches"]
        cells += len(spec["batches"]) - skip_slots
    cells *= len(models or spec["models"])
    widths, depths = spec.get("widths", [16, 64, 256]), spec.get("depths", [1, 2, 3])
    degrees = spec.get("degrees", [7, 15, 31, 63])
    scaling = 3 * (len(widths) + len(depths)) if widths else 0  # plaintext, CrypTen, TenSEAL per model
    # the model, one worker, two local workers cold then warm, and a cluster's cold then warm
    scale_out = (4 + 2 * cluster) if spec.get("scale_out") else 0
    return cells + scaling + (1 + len(degrees) if degrees else 0) + scale_out  # training the MLP, then each degree


def run_matrix(preset: str = "quick", *, seed: int = 0, models: list[str] | None = None,
               on_cell: Callable[[Cell], None] | None = None,
               on_step: Callable[[str], None] | None = None, cluster: str | None = None) -> dict[str, Any]:
    """Measure the preset's matrix on the digits data; returns the report as a dict.

    ``on_cell(cell)`` follows each cell, ``on_step(what)`` each measurement of
    the sweeps after the matrix (see :func:`count_steps`): progress bars.
    ``cluster``: a Ray address whose scale-out cell joins the local ones.
    """
    spec = _spec(preset)
    digits = datasets.load_digits(seed=seed)
    cells: list[Cell] = []
    started = time.perf_counter()
    for model_name in models or spec["models"]:
        z, data = _model_and_data(model_name, seed, digits)
        cpu: dict[int, float] = {}
        for execution in spec["executions"]:
            for batch in spec["batches"]:
                if execution.startswith("plaintext"):
                    if batch == "slots":
                        continue
                    device = "cuda" if execution.endswith("gpu") else "cpu"
                    r = baselines.time_plaintext(z.model, _inputs(data, int(batch)), device=device, repeats=20)
                    if not r.measured or r.p50_s is None:
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
                cell.extra.setdefault("data", data.label)
                if not data.synthetic:
                    cell.extra.setdefault("plaintext_test_accuracy", z.test_accuracy)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
    widths, degree_list = spec.get("widths", [16, 64, 256]), spec.get("degrees", [7, 15, 31, 63])
    depths = spec.get("depths", [1, 2, 3])
    scaling = (scaling_sweep(seed, digits, widths=widths, depths=depths,
                             degree=spec.get("sweep_degree", SWEEP_DEGREE), on_step=on_step) if widths else None)
    degrees = degree_sweep(seed, digits, degrees=degree_list, on_step=on_step) if degree_list else None
    scale = (scale_out_sweep(seed, digits, repeat=spec["scale_out"]["repeat"], cluster=cluster, on_step=on_step)
             if spec.get("scale_out") else None)
    return {
        "preset": preset,
        "seconds": time.perf_counter() - started,
        "scaling": scaling,
        "batch_scaling": batch_fits([asdict(c) for c in cells]),
        "polynomial_degree": degrees,
        "scale_out": scale,
        "environment": environment(seed),
        "dataset": digits.description + "; reference28/lenet28 on generated 28x28 inputs (timing only)",
        "cells": [asdict(c) for c in cells],
    }


def scale_out_sweep(seed: int, data: datasets.Dataset, *, repeat: int = 20, cluster: str | None = None,
                    on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Encrypted scoring of the test split ``repeat`` times over: one worker, two local workers, a Ray cluster.

    One worker is the program in this process (encrypt, evaluate, decrypt in
    turn); workers evaluate whole slot-sized blocks while this process
    encrypts and decrypts (:func:`secure_infer.scoring.score`). Two-worker
    runs are timed cold (worker start-up included) and warm. The fit
    ``seconds = startup + ceil(blocks / workers) * per_block`` predicts a
    cluster of N such workers.
    """
    import math

    import secure_infer as si
    from secure_infer.engine import Engine, LocalEngine, RayEngine
    from secure_infer.scoring import score

    step = on_step or (lambda _what: None)
    z = zoo.pretrained("cryptonets", data, seed=seed)
    x = data.x_test.repeat(repeat, *([1] * (data.x_test.dim() - 1)))
    enc = si.wrap(z.model, "tenseal", sample_input=x[:1], mode="batch", calibration=data.x_train)
    slots = _tenseal(enc.program).params.slots
    blocks = math.ceil(len(x) / slots)
    plain = z.model(x).detach()
    step("scale-out: model")
    rows: list[dict[str, Any]] = []

    def row(name: str, workers: int, seconds: float, y: torch.Tensor, per_node: dict[str, int] | None = None) -> None:
        rows.append({"execution": name, "workers": workers, "seconds": seconds, "inputs_per_s": len(x) / seconds,
                     "agreement": float((y.argmax(1) == plain.argmax(1)).float().mean()),
                     "blocks_per_node": per_node or {}})

    started = time.perf_counter()
    y = enc.logits(x)
    row("in process (1 worker)", 1, time.perf_counter() - started, y)
    step("scale-out: one worker")

    def engine_row(name: str, engine: Engine, runs: int) -> None:
        for run in range(runs):
            result = score(enc, x, engine)
            row(f"{name}{' (cold)' if runs > 1 and run == 0 else ''}", engine.workers, result.seconds,
                result.outputs, result.per_node)
            step(f"scale-out: {name}")

    with LocalEngine(2) as local:
        engine_row("local processes", local, 2)
    if cluster:
        ray_engine = RayEngine(cluster)
        try:
            engine_row(f"Ray cluster {cluster}", ray_engine, 2)
        finally:
            ray_engine.shutdown()
    one = rows[0]["seconds"]
    warm = next(r for r in rows if r["execution"] == "local processes")
    per_block = one / blocks
    # what two warm workers spent beyond their share of blocks: hand-off, encryption competing for the cores
    overhead = max(0.0, warm["seconds"] - math.ceil(blocks / 2) * per_block)
    cold = next(r for r in rows if r["execution"] == "local processes (cold)")
    big = 100_000
    big_blocks = math.ceil(big / slots)
    predicted = [{"workers": n, "seconds": overhead + math.ceil(big_blocks / n) * per_block,
                  "inputs_per_s": big / (overhead + math.ceil(big_blocks / n) * per_block)}
                 for n in (1, 2, 4, 8, 16, 32)]
    return {"model": "cryptonets (digits), CKKS batch mode", "inputs": len(x), "slots": slots, "blocks": blocks,
            "rows": rows, "speedup_2_workers": one / warm["seconds"], "per_block_s": per_block,
            "overhead_s": overhead, "startup_s": max(0.0, cold["seconds"] - warm["seconds"]),
            "prediction": {"inputs": big, "blocks": big_blocks, "rows": predicted}}


SWEEP_DEGREE = 7
"""The scaling sweeps' untrained ReLU MLPs run under CKKS with degree-7 polynomials: cost is what they measure."""


def _mlp(width: int, seed: int, depth: int = 1) -> torch.nn.Module:
    from torch import nn

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Flatten()]
        features = 64
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, 10))
        return nn.Sequential(*layers).eval()


def _sweep_rows(models: list[tuple[dict[str, Any], torch.nn.Module]], data: datasets.Dataset,
                x: torch.Tensor, degree: int, on_step: Callable[[str], None]) -> list[dict[str, Any]]:
    import secure_infer as si

    rows = []
    for info, model in models:
        label = f"{info['sweep']} sweep, MLP width {info['width']} depth {info['depth']}"
        cpu = baselines.time_plaintext(model, x, repeats=20)
        rows.append({**info, "execution": "plaintext-cpu", "seconds": cpu.p50_s})
        on_step(f"{label}: plaintext-cpu")
        runs: tuple[tuple[str, str, dict[str, Any]], ...] = (
            ("crypten-2p", "crypten", {}),
            ("tenseal-batch", "tenseal", {"mode": "batch", "calibration": data.x_train[:256], "poly_degree": degree}),
        )
        for execution, backend, options in runs:
            with si.wrap(model, backend, sample_input=x[:1], **options) as enc:
                samples, _ = _time(partial(enc, x), 1 if backend == "tenseal" else 3, warmup=backend != "tenseal")
            rows.append({**info, "execution": execution, "seconds": statistics.median(samples)})
            on_step(f"{label}: {execution}")
    return rows


def scaling_sweep(seed: int, data: datasets.Dataset, *, widths: list[int], depths: list[int] | None = None,
                  batch: int = 16, degree: int = SWEEP_DEGREE,
                  on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cost against model size, so a bigger model's cost can be predicted before running it.

    Width: MLPs 64-width-10, log-log slope of time against parameters
    (time ~ exp(intercept) * params ** slope). Depth: MLPs with 1..k hidden
    layers of width 64, linear slope in seconds per extra layer. ``on_step``
    follows each measurement (three per model).
    """
    import numpy as np

    x = _inputs(data, batch)
    by_width = [({"sweep": "width", "width": w, "depth": 1, "params": sum(p.numel() for p in _mlp(w, seed).parameters())},
                 _mlp(w, seed)) for w in widths]
    by_depth = [({"sweep": "depth", "width": 64, "depth": d, "params": sum(p.numel() for p in _mlp(64, seed, d).parameters())},
                 _mlp(64, seed, d)) for d in (depths or [])]
    rows = _sweep_rows(by_width + by_depth, data, x, degree, on_step or (lambda _what: None))
    fits: dict[str, dict[str, float]] = {}
    depth_fits: dict[str, dict[str, float]] = {}
    for execution in sorted({r["execution"] for r in rows}):
        pts = [(r["params"], r["seconds"]) for r in rows if r["execution"] == execution and r["sweep"] == "width"]
        if len(pts) >= 2:
            slope, intercept = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
            fits[execution] = {"slope": float(slope), "intercept": float(intercept)}
        pts = [(r["depth"], r["seconds"]) for r in rows if r["execution"] == execution and r["sweep"] == "depth"]
        if len(pts) >= 2:
            slope, intercept = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
            depth_fits[execution] = {"seconds_per_layer": float(slope), "intercept": float(intercept)}
    return {"batch": batch, "rows": rows, "fits": fits, "depth_fits": depth_fits,
            "note": f"time ~ exp(intercept) * params ** slope, MLP 64-width-10 on digits, one batch; "
                    f"under CKKS the ReLUs are degree-{degree} polynomials"}


def batch_fits(cells: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Log-log slope of time per call against batch size, per model and execution (1 = linear)."""
    import numpy as np

    out = {}
    for key in sorted({(c["model"], c["execution"]) for c in cells if c["status"] == "measured"}):
        pts = [(c["extra"].get("batch_size", c["batch"]), c["p50_s"]) for c in cells
               if (c["model"], c["execution"]) == key and c["status"] == "measured"]
        pts = [(int(b), t) for b, t in pts if isinstance(b, int)]
        if len({b for b, _ in pts}) >= 2:
            slope, _ = np.polyfit(np.log([b for b, _ in pts]), np.log([t for _, t in pts]), 1)
            out[f"{key[0]} / {key[1]}"] = {"slope": float(slope)}
    return out


def degree_sweep(seed: int, data: datasets.Dataset, *, degrees: list[int],
                 on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Accuracy of the ReLU MLP under CKKS with its ReLU replaced by polynomials of each degree.

    ``on_step`` follows the training and each degree.
    """
    import secure_infer as si

    step = on_step or (lambda _what: None)
    z = zoo.pretrained("mlp", data, seed=seed)
    step("degree sweep: trained the MLP")
    rows = []
    for degree in degrees:
        enc = si.wrap(z.model, "tenseal", sample_input=data.x_test[:1], mode="batch",
                      calibration=data.x_train[:256], poly_degree=degree)
        program = _tenseal(enc.program)
        ev = enc.evaluate(data.x_test, data.y_test, batch_size=program.params.slots)
        rows.append({"degree": degree, "encrypted_accuracy": ev.accuracy, "agreement": ev.agreement,
                     "depth": program.compiled.depth, "seconds_per_input": ev.seconds_per_input})
        step(f"degree sweep: degree {degree}")
    return {"model": "mlp (ReLU)", "plaintext_accuracy": z.test_accuracy, "rows": rows}


def environment(seed: int) -> dict[str, Any]:
    """What the numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    import secure_infer

    versions = {"secure-infer": secure_infer.__version__}
    for pkg in ("torch", "crypten", "tenseal", "numpy", "scikit-learn"):
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
        "Executions: `tenseal-latency` one input per ciphertext (schedule \"levels\"), `-chain` with "
        "schedule=\"square-chain\"; `tenseal-batch` one input per slot, `-2w` with workers=2 (both cores: they "
        "evaluate, this process encrypts), `-2p` with encrypt_on=\"workers\" too (each worker runs whole blocks); "
        "`raw-crypten-2p` and `tenseal-handwritten` are the libraries used by hand.",
        "",
        "| model | execution | batch | ms/input | inputs/s | x plaintext CPU | argmax agree | max abs err | bytes/input | rounds | key MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cells"]:
        if c["status"] != "measured":
            lines.append(f"| {c['model']} | {c['execution']} | {c['batch']} | not run: {c['reason']} |||||||")
            continue
        timed = c["extra"].get("batch_size", c["batch"])
        batch = c["batch"] if timed == c["batch"] else f"{c['batch']} ({timed} timed)"
        lines.append(
            f"| {c['model']} | {c['execution']} | {batch} | {_fmt(c['per_input_s'] * 1e3)} | "
            f"{_fmt(c['throughput'])} | {_fmt(c['overhead_vs_cpu'])} | {_fmt(c['agreement'])} | "
            f"{_fmt(c['max_abs_error'])} | {_fmt(c['bytes_per_input'])} | {_fmt(c['rounds'])} | "
            f"{_fmt(c['key_bytes'] / 1e6 if c['key_bytes'] else None)} |"
        )
    scaling = report.get("scaling")
    if scaling:
        lines += ["", f"## Scaling with model size ({scaling['note']})", "",
                  "| execution | fitted slope (log time vs log params) |", "|---|---|"]
        lines += [f"| {k} | {v['slope']:.2f} |" for k, v in scaling["fits"].items()]
        if scaling.get("depth_fits"):
            lines += ["", "| execution | seconds per extra hidden layer (width 64, one batch) |", "|---|---|"]
            lines += [f"| {k} | {v['seconds_per_layer']:.3g} |" for k, v in scaling["depth_fits"].items()]
    if report.get("batch_scaling"):
        lines += ["", "## Scaling with batch size (log-log slope of time per call; 1 = linear, 0 = flat)", "",
                  "| model / execution | slope |", "|---|---|"]
        lines += [f"| {k} | {v['slope']:.2f} |" for k, v in report["batch_scaling"].items()]
    degrees = report.get("polynomial_degree")
    if degrees:
        lines += ["", f"## ReLU replaced by polynomials under CKKS ({degrees['model']}, plaintext accuracy "
                  f"{degrees['plaintext_accuracy']:.4f})", "",
                  "| degree | encrypted accuracy | argmax agreement | depth |", "|---|---|---|---|"]
        lines += [f"| {r['degree']} | {r['encrypted_accuracy']:.4f} | {r['agreement']:.4f} | {r['depth']} |"
                  for r in degrees["rows"]]
    scale = report.get("scale_out")
    if scale:
        lines += ["", f"## Scale-out: encrypted scoring of {scale['inputs']} inputs ({scale['model']}, "
                  f"{scale['blocks']} blocks of {scale['slots']})", "",
                  "| execution | workers | seconds | inputs/s | argmax agree | blocks per node |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['execution']} | {r['workers']} | {r['seconds']:.2f} | {r['inputs_per_s']:,.0f} | "
                  f"{r['agreement']:.4f} | {', '.join(f'{k[:8]}: {v}' for k, v in r['blocks_per_node'].items())} |"
                  for r in scale["rows"]]
        pred = scale["prediction"]
        lines += ["", f"Two warm workers: {scale['speedup_2_workers']:.2f}x one. Blocks are the unit of work, so "
                  f"{scale['blocks']} blocks on 2 workers take {-(-scale['blocks'] // 2)} block times. Fit: "
                  f"{scale['per_block_s']:.2f} s per block, {scale['overhead_s']:.2f} s overhead per job, "
                  f"{scale['startup_s']:.2f} s worker start-up. Predicted for {pred['inputs']:,} inputs "
                  f"({pred['blocks']} blocks) on N such workers:", "",
                  "| workers | seconds | inputs/s |", "|---|---|---|"]
        lines += [f"| {r['workers']} | {r['seconds']:.1f} | {r['inputs_per_s']:,.0f} |" for r in pred["rows"]]
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
    written: list[Path] = []
    if not models:  # nothing measured (every cell not run): no plot to draw
        return written
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

    def grouped_bars(value: Callable[[dict[str, Any]], float | None], ylabel: str, name: str) -> None:
        rows = [c for c in measured if value(c)]
        if not rows:
            return
        model_names = sorted({c["model"] for c in rows})
        fig, axes = plt.subplots(1, len(model_names), figsize=(3.2 * len(model_names), 3.8), squeeze=False)
        for ax, model in zip(axes[0], model_names, strict=True):
            cells = [c for c in rows if c["model"] == model]
            executions = sorted({c["execution"] for c in cells})
            batches = sorted({str(c["batch"]) for c in cells})
            width = 0.8 / len(batches)
            for k, batch in enumerate(batches):
                heights = [next((value(c) for c in cells if c["execution"] == e and str(c["batch"]) == batch), 0)
                           for e in executions]
                ax.bar([i + k * width for i in range(len(executions))], heights, width, label=f"batch {batch}")
            ax.set_yscale("log")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(executions))], executions, rotation=45,
                          ha="right", fontsize=7)
            ax.set_title(model, fontsize=9)
        axes[0][0].set_ylabel(ylabel)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    grouped_bars(lambda c: None if c["execution"].startswith("plaintext") else c["overhead_vs_cpu"],
                 "time / plaintext CPU (same run)", "overhead.png")

    scaling = report.get("scaling")
    if scaling:
        fig, ax = plt.subplots(figsize=(5, 4))
        for execution in sorted({r["execution"] for r in scaling["rows"]}):
            pts = sorted((r["params"], r["seconds"]) for r in scaling["rows"]
                         if r["execution"] == execution and r.get("sweep", "width") == "width")
            fit = scaling["fits"].get(execution, {})
            label = f"{execution} (slope {fit['slope']:.2f})" if fit else execution
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(f"seconds per batch of {scaling['batch']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "scaling.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    degrees = report.get("polynomial_degree")
    if degrees:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r["degree"] for r in degrees["rows"]], [r["encrypted_accuracy"] for r in degrees["rows"]],
                marker="o", label="CKKS, ReLU -> polynomial")
        ax.axhline(degrees["plaintext_accuracy"], color="gray", linestyle="--", label="plaintext ReLU")
        ax.set_xlabel("polynomial degree")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "accuracy_vs_degree.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    grouped_bars(lambda c: c["bytes_per_input"] / 1e6 if c["bytes_per_input"] else None,
                 "MB on the wire per input", "bytes_per_input.png")
    return written
