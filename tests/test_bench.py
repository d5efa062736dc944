"""The bench runner: every cell measured or explained, and a readable report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_infer import bench


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_small_matrix_writes_a_complete_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.PRESETS, "tiny", {
        "models": ["logreg"],
        "executions": ["plaintext-cpu", "plaintext-gpu", "crypten-2p", "tenseal-latency", "tenseal-latency-chain",
                       "tenseal-batch", "tenseal-batch-2w"],
        "batches": [1, 4],
        "repeats": 1,
        "widths": [8, 32],
        "depths": [1, 2],
        "degrees": [3, 5],
        "sweep_degree": 3,
    })
    steps: list[str] = []
    report = bench.run_matrix("tiny", on_cell=lambda c: steps.append(c.execution), on_step=steps.append)
    cells = report["cells"]
    assert len(cells) == 14  # nothing silently dropped
    assert len(steps) == bench.count_steps("tiny") == 14 + 3 * 4 + 1 + 2  # the progress bar's total is right
    for c in cells:
        assert c["status"] in ("measured", "not run")
        if c["status"] == "not run":
            assert c["reason"]
        else:
            assert c["per_input_s"] > 0 and c["agreement"] >= 0.99
    cpu = [c for c in cells if c["execution"] == "plaintext-cpu"]
    assert all(c["overhead_vs_cpu"] == 1.0 for c in cpu)
    mpc = [c for c in cells if c["execution"] == "crypten-2p"]
    assert all(c["overhead_vs_cpu"] > 1 and c["rounds"] > 0 and c["bytes_per_input"] > 0 for c in mpc)
    he = [c for c in cells if c["execution"].startswith("tenseal") and c["status"] == "measured"]
    assert all(c["key_bytes"] > 0 and c["ciphertext_bytes_in"] > 0 for c in he)
    assert {c["execution"] for c in he} == {"tenseal-latency", "tenseal-batch", "tenseal-batch-2w"}
    chain = [c for c in cells if c["execution"] == "tenseal-latency-chain"]
    assert all(c["status"] == "not run" and "x**2" in c["reason"] for c in chain)  # logreg has no square
    env = report["environment"]
    assert env["seed"] == 0 and env["versions"]["torch"].startswith("2.13") and env["cpu_count"] >= 1

    fits = report["scaling"]["fits"]
    assert set(fits) == {"plaintext-cpu", "crypten-2p", "tenseal-batch"}
    assert set(report["scaling"]["depth_fits"]) == set(fits)
    assert "logreg / crypten-2p" in report["batch_scaling"]
    assert [r["degree"] for r in report["polynomial_degree"]["rows"]] == [3, 5]
    assert all(r["encrypted_accuracy"] > 0.85 for r in report["polynomial_degree"]["rows"])

    paths = bench.write_report(report, tmp_path)
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "latency_vs_batch.png", "overhead.png", "scaling.png",
            "accuracy_vs_degree.png"} <= names
    assert json.loads((tmp_path / "report.json").read_text())["preset"] == "tiny"
    md = (tmp_path / "report.md").read_text()
    assert "crypten-2p" in md and ("not run" in md or "plaintext-gpu" in md)


def test_unknown_preset() -> None:
    from secure_infer._errors import ParameterError

    with pytest.raises(ParameterError, match="quick"):
        bench.run_matrix("everything")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_scale_out_section_times_one_and_two_workers_and_predicts_a_cluster(tmp_path: Path) -> None:
    from secure_infer import datasets

    steps: list[str] = []
    digits = datasets.load_digits(seed=0)
    scale = bench.scale_out_sweep(0, digits, repeat=10, on_step=steps.append)  # 4500 inputs: 2 blocks
    assert len(steps) == 4 and scale["blocks"] == 2
    names = [r["execution"] for r in scale["rows"]]
    assert names == ["in process (1 worker)", "local processes (cold)", "local processes"]
    assert all(r["agreement"] >= 0.99 and r["inputs_per_s"] > 0 for r in scale["rows"])
    assert sum(scale["rows"][-1]["blocks_per_node"].values()) == 2
    pred = scale["prediction"]["rows"]
    assert [r["workers"] for r in pred] == [1, 2, 4, 8, 16, 32]
    assert all(a["seconds"] >= b["seconds"] for a, b in zip(pred, pred[1:], strict=False))  # never slower with more
    report = {"preset": "t", "seconds": 1.0, "dataset": "d", "cells": [], "scale_out": scale,
              "environment": bench.environment(0)}
    bench.write_report(report, tmp_path)
    assert "## Scale-out" in (tmp_path / "report.md").read_text()
