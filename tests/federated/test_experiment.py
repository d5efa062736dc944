"""``secure-infer fl``: the comparison's report, with a tiny plan (two short Flower runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocols.cli import app
from secure_infer._errors import SecureInferError
from secure_infer.datasets import load_digits
from secure_infer.federated import experiment

DATA = load_digits()
TINY = dataclasses.replace(
    experiment.QUICK, clients=3, rounds=2, local_epochs=1, crypten_rounds=0, secagg=False,
    dp_epsilons=(8.0,), dp_rounds=2, inversion_batches=(1,), aggregate_over=3, drop=((2, 1),))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_tiny_comparison_trains_attacks_and_writes_the_report(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    steps: list[str] = []
    report = experiment.run_experiment(TINY, DATA, on_step=steps.append)
    assert len(steps) == experiment.count_steps(TINY)
    fedavg, dp = report["runs"]
    assert fedavg["label"] == "FedAvg" and fedavg["rounds"] == 2
    assert fedavg["dropped"] == [{"round": 2, "why": "client 1 dropped out of round 2 (scheduled)"}]
    assert dp["epsilon"] == pytest.approx(8.0, abs=0.05) and dp["noise_multiplier"] > 0
    views = {r["view"]: r for r in report["inversion"]["rows"]}
    noised = next(v for k, v in views.items() if k.startswith("client update, clipped + DP noise"))
    assert views["client update"]["mean_ssim"] > 0.5
    assert views["secure aggregate of 3"]["mean_ssim"] < views["client update"]["mean_ssim"]
    assert noised["mean_ssim"] < views["client update"]["mean_ssim"]
    assert {m["label"] for m in report["membership"]} == {"centralised", "FedAvg", dp["label"]}

    written = experiment.write_report(report, tmp_path)
    names = {p.name for p in written}
    assert {"report.json", "report.md", "accuracy_vs_round.png", "epsilon_vs_accuracy.png",
            "reconstructions.png"} <= names
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Training", "## Gradient inversion", "## Membership inference"):
        assert heading in md
    assert "client 1 dropped out of round 2" in md
    assert json.loads((tmp_path / "report.json").read_text())["runs"][1]["epsilon"] == dp["epsilon"]


@pytest.mark.slow
def test_a_failing_run_becomes_a_row_and_the_rest_is_still_reported(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(config, data, **_):  # type: ignore[no-untyped-def]
        raise SecureInferError(f"federated run {config.label!r} failed: simulated")

    monkeypatch.setattr(experiment, "run_federated", refuse)
    plan = dataclasses.replace(TINY, inversion_batches=(1,), dp_epsilons=())
    report = experiment.run_experiment(plan, DATA)
    assert [r["error"] for r in report["runs"]] == ["federated run 'FedAvg' failed: simulated"]
    assert report["inversion"]["rows"] and report["membership"][0]["label"] == "centralised"
    experiment.write_report(report, tmp_path)
    assert "| FedAvg | - | failed: federated run 'FedAvg' failed: simulated" in (tmp_path / "report.md").read_text()


def test_fl_command_refuses_bad_options_before_training() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["fl", "--help"]).exit_code == 0
    result = runner.invoke(app, ["fl", "--clients", "1"])
    assert result.exit_code == 2 and "at least 2" in result.output
    result = runner.invoke(app, ["fl", "--dataset", "mnist"])
    assert result.exit_code == 2 and "--mnist-path" in result.output
