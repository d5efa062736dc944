"""secure-infer's CKKS latency and batch throughput beside Orion's, interleaved, in one table.

    python benchmarks/orion_table.py --rounds 2 --images 16 --out DIR

Networks and inputs are :mod:`orion_anchor`'s (the TenSEAL tutorial ConvNet
and Orion's LoLA MNIST net, random weights, inputs uniform in [0, 1]). Each
round runs, for each network, Orion (in its own process, through
``orion_anchor.py``) and then secure-infer's latency mode at both schedules,
and the default schedule with its Galois keys capped (``--rotation-keys``),
so that all see the same machine state; the table reports the median over
all rounds of each per-image time (encrypt + evaluate + decrypt) and the
largest absolute logit error against the torch module. A batch section times
the tutorial network in batch mode: the evaluation of one block of 4096
images and end to end (encrypt, evaluate, decrypt) on 8192 images, in process
and on two local workers (this process encrypting), and with
``encrypt_on="workers"``: two workers that each run whole blocks, evaluation
timed inside each worker while both run (two blocks, one each) and end to end
on 16384 images.

Orion is optional: with no interpreter that imports ``orion`` (see
``orion_anchor.py`` for the install, and ``--orion-python`` or
``$ORION_PYTHON``), its column says why it is missing and the rest still
runs. Writes ``orion_table.json`` and ``orion_table.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orion_anchor  # noqa: E402

import secure_infer as si  # noqa: E402
from secure_infer.engine import LocalEngine  # noqa: E402

SCHEDULES = ("levels", "square-chain")
ORION_CAP_S = 900.0


def orion_round(python: str, net: str, images: int) -> dict | str:
    """One Orion run of ``images`` images; its JSON, or why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "orion.json"
        cmd = [sys.executable, str(Path(orion_anchor.__file__)), "--net", net, "--images", str(images),
               "--out", str(out), "--python", python]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=ORION_CAP_S, check=False)
        if not out.exists():
            return f"orion_anchor.py failed (rc {done.returncode}): {done.stderr.strip()[-300:]}"
        data = json.loads(out.read_text())
    if "skipped" in data:
        return str(data["skipped"])
    return data["nets"][net]


def secure_infer_round(model: torch.nn.Module, x: torch.Tensor, calibration: torch.Tensor,
                       schedule: str, rotation_keys: int | None = None) -> dict:
    """Per-image latency of one schedule: wrap once, one warm-up image, then every image timed."""
    started = time.perf_counter()
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="latency", calibration=calibration, schedule=schedule,
                  rotation_keys=rotation_keys)
    wrap_s = time.perf_counter() - started
    program = enc.program
    enc(x[:1])
    totals, evaluates, errors = [], [], []
    with torch.no_grad():
        reference = model(x)
    for i in range(len(x)):
        started = time.perf_counter()
        y = enc(x[i : i + 1])
        totals.append(1e3 * (time.perf_counter() - started))
        evaluates.append(1e3 * program.last_run.compute_s)
        errors.append(float((y - reference[i : i + 1]).abs().max()))
    return {"per_image_ms_all": totals, "evaluate_ms_all": evaluates, "max_abs_logit_error": max(errors),
            "wrap_s": wrap_s, "key_bytes": sum(program.key_bytes.values()),
            "params": program.params.describe(), "input_ciphertexts": program.plan.chunks,
            "rotation_keys": list(program.published.rotation_steps)}


def batch_cells(model: torch.nn.Module, calibration: torch.Tensor) -> dict:
    """The tutorial network in batch mode: evaluation of one full block, and end to end on two blocks."""
    x = orion_anchor.make_inputs(8192, seed=3)
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=calibration)
    program = enc.program
    slots = program.params.slots
    flat = x[:slots].reshape(slots, -1).double().numpy()
    cts = [program.client.keys.encrypt(flat[:, j]) for j in range(flat.shape[1])]
    program.evaluate(cts)
    pipelines = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=calibration, workers=2,
                        encrypt_on="workers")
    both = torch.cat([x, orion_anchor.make_inputs(8192, seed=4)])
    pipelines(x)  # starts the workers
    pipeline_eval, pipeline_e2e = [], []
    for _ in range(2):
        pipelines(x)  # one block per worker, started together: their evaluations overlap
        run = pipelines.last_run
        assert run is not None
        pipeline_eval.append(run.compute_s / 2)  # each worker's evaluation seconds, on its own core
        started = time.perf_counter()
        pipelines(both)
        pipeline_e2e.append(time.perf_counter() - started)
    with torch.no_grad():
        pipeline_error = float((pipelines(x[:slots]) - model(x[:slots])).abs().max())
    pipelines.close()
    evaluate = []
    for _ in range(2):
        started = time.perf_counter()
        program.evaluate(cts)
        evaluate.append(time.perf_counter() - started)
    enc(x)
    in_process = []
    for _ in range(2):
        started = time.perf_counter()
        enc(x)
        in_process.append(time.perf_counter() - started)
    two = []
    with LocalEngine(2) as engine:
        engine.start(program.worker_spec(same_host=True))
        list(program.stream(x[:slots], engine))
        for _ in range(2):
            started = time.perf_counter()
            list(program.stream(x, engine))
            two.append(time.perf_counter() - started)
    with torch.no_grad():
        error = float((enc(x[:slots]) - model(x[:slots])).abs().max())
    return {"slots": slots, "evaluate_images_per_s": slots / min(evaluate),
            "end_to_end_images_per_s": len(x) / min(in_process),
            "end_to_end_2_workers_images_per_s": len(x) / min(two), "max_abs_logit_error": error,
            "evaluate_2_pipelines_images_per_s": len(x) / min(pipeline_eval),
            "end_to_end_2_pipelines_images_per_s": len(both) / min(pipeline_e2e),
            "end_to_end_2_pipelines_images": len(both), "max_abs_logit_error_pipelines": pipeline_error,
            "params": program.params.describe()}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _configs(caps: list[int]) -> list[tuple[str, str, int | None]]:
    """(cell name, schedule, rotation-key cap) of every secure-infer configuration timed."""
    return [(s, s, None) for s in SCHEDULES] + [(f"levels-{k}-keys", "levels", k) for k in caps]


def table(results: dict) -> str:
    caps = results.get("rotation_key_caps", [])
    lines = ["| network | Orion | secure-infer `levels` (default) | secure-infer `square-chain` | "
             + "".join(f"`levels`, `rotation_keys={k}` | " for k in caps) + "default / Orion |",
             "|---|---|---|---|" + "---|" * len(caps) + "---|"]
    for net, cells in results["latency"].items():
        orion = cells["orion"]
        if isinstance(orion, str):
            o_cell, ratio = f"not run: {orion[:80]}", "n/a"
        else:
            o_ms = _median(orion["per_image_ms_all"])
            o_cell = f"{o_ms:.0f} ms, err {orion['max_abs_logit_error']:.1e}"
        row = [net, o_cell]
        for name, _, _ in _configs(caps):
            mine = cells[name]
            row.append(f"{_median(mine['per_image_ms_all']):.0f} ms, err {mine['max_abs_logit_error']:.1e}, "
                       f"keys {mine['key_bytes'] / 1e6:.1f} MB")
        if not isinstance(orion, str):
            ratio = f"{_median(cells['levels']['per_image_ms_all']) / o_ms:.2f}x"
        row.append(ratio)
        lines.append("| " + " | ".join(row) + " |")
    b = results.get("batch")
    if b:
        lines += ["", f"Batch mode, tutorial network ({b['params']}): evaluation of {b['slots']} images "
                  f"{b['evaluate_images_per_s']:.0f} images/s (one process); end to end on 8192 images "
                  f"{b['end_to_end_images_per_s']:.0f} images/s in process, "
                  f"{b['end_to_end_2_workers_images_per_s']:.0f} images/s on two local workers; "
                  f"max abs logit error {b['max_abs_logit_error']:.1e}."]
        if "end_to_end_2_pipelines_images_per_s" in b:
            lines += ["", "Both cores, `encrypt_on=\"workers\"` (two workers, each encrypting, evaluating and decrypting "
                      f"whole blocks under its own keys): evaluation {b['evaluate_2_pipelines_images_per_s']:.0f} "
                      "images/s (two blocks, one per worker, evaluation timed inside each while both ran); end to "
                      f"end on {b['end_to_end_2_pipelines_images']} images "
                      f"{b['end_to_end_2_pipelines_images_per_s']:.0f} images/s; max abs logit error "
                      f"{b['max_abs_logit_error_pipelines']:.1e}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=16, help="images per network, schedule and round")
    ap.add_argument("--orion-python", default=os.environ.get("ORION_PYTHON", sys.executable))
    ap.add_argument("--no-batch", action="store_true", help="skip the batch-mode cells")
    ap.add_argument("--rotation-keys", default="",
                    help="comma-separated Galois-key caps to time the default schedule at too, e.g. 4,3")
    ap.add_argument("--out", default="orion-table")
    args = ap.parse_args(argv)
    caps = sorted({int(k) for k in args.rotation_keys.split(",") if k.strip()}, reverse=True)
    if any(k < 1 for k in caps):
        ap.error(f"--rotation-keys: each cap must be >= 1, got {args.rotation_keys!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = orion_anchor.make_inputs(256, seed=2)
    x = orion_anchor.make_inputs(args.images)
    latency: dict[str, dict] = {}
    for r in range(args.rounds):
        for net, build in orion_anchor.BUILDERS.items():
            cells = latency.setdefault(net, {})
            orion = orion_round(args.orion_python, net, args.images)
            if isinstance(orion, str) or isinstance(cells.get("orion"), str):
                cells["orion"] = orion if isinstance(orion, str) else cells["orion"]
            else:
                prior = cells.get("orion")
                if prior:
                    orion["per_image_ms_all"] = prior["per_image_ms_all"] + orion["per_image_ms_all"]
                    orion["max_abs_logit_error"] = max(prior["max_abs_logit_error"], orion["max_abs_logit_error"])
                cells["orion"] = orion
            model = build()
            for name, schedule, cap in _configs(caps):
                mine = secure_infer_round(model, x, calibration, schedule, cap)
                prior = cells.get(name)
                if prior:
                    mine["per_image_ms_all"] = prior["per_image_ms_all"] + mine["per_image_ms_all"]
                    mine["evaluate_ms_all"] = prior["evaluate_ms_all"] + mine["evaluate_ms_all"]
                    mine["max_abs_logit_error"] = max(prior["max_abs_logit_error"], mine["max_abs_logit_error"])
                cells[name] = mine
            print(f"round {r + 1}/{args.rounds} {net}: done", flush=True)
    results: dict = {"rounds": args.rounds, "images": args.images, "latency": latency, "rotation_key_caps": caps,
                     "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if not args.no_batch:
        results["batch"] = batch_cells(orion_anchor.tutorial_net(), calibration)
    (out / "orion_table.json").write_text(json.dumps(results, indent=1, default=float))
    text = table(results)
    (out / "orion_table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
