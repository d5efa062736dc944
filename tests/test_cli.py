from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from secure_infer.cli import app

runner = CliRunner()


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for sub in ("demo", "zoo", "baseline", "bench", "datasets", "env"):
        assert sub in result.output


def test_each_subcommand_has_help() -> None:
    for sub in (["demo"], ["zoo", "list"], ["zoo", "train"], ["baseline"], ["bench"], ["datasets"], ["env"]):
        result = runner.invoke(app, [*sub, "--help"])
        assert result.exit_code == 0, (sub, result.output)


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_demo_reports_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    result = runner.invoke(app, ["demo", "--models", "logreg,mlp", "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    names = [m["name"] for m in payload["models"]]
    assert names == ["logreg", "mlp"]
    assert all(m["test_accuracy"] > 0.9 for m in payload["models"])
    gpu = payload["models"][0]["plaintext"][2]
    assert gpu["device"] == "cuda" and (gpu["measured"] or "CUDA" in gpu["reason"])
    for m in payload["models"]:
        assert m["crypten"]["agreement"] >= 0.99  # 2 real parties
        assert m["tenseal"]["supported"] and m["tenseal"]["agreement"] >= 0.95


def test_zoo_train_saves_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    result = runner.invoke(app, ["zoo", "train", "logreg", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "test accuracy" in result.output
    result = runner.invoke(app, ["baseline", str(out), "--batch-sizes", "1,4"])
    assert result.exit_code == 0, result.output
    assert "not measured" in result.output or "cuda" in result.output
