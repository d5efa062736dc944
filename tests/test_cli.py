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
    for sub in ("demo", "zoo", "baseline", "bench", "datasets", "env", "serve", "query", "party", "attack"):
        assert sub in result.output


def test_each_subcommand_has_help() -> None:
    for sub in (["demo"], ["zoo", "list"], ["zoo", "train"], ["baseline"], ["bench"], ["datasets"], ["env"],
                ["serve"], ["query"], ["party"], ["attack"]):
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


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_serve_and_query_from_the_command_line(tmp_path: Path) -> None:
    """`secure-infer serve` in its own process, `secure-infer query` in another, as a user would run them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from secure_infer.backends.crypten._pool import free_port

    model = tmp_path / "logreg.pt"
    assert runner.invoke(app, ["zoo", "train", "logreg", "--out", str(model)]).exit_code == 0
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    server = subprocess.Popen([sys.executable, "-m", "secure_infer.cli", "serve", str(model), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        output = ""
        while f"serving logreg on 127.0.0.1:{port}" not in " ".join(output.split()):
            line = server.stdout.readline()
            assert line and time.monotonic() < deadline, output
            output += line
        out = tmp_path / "q.json"
        result = subprocess.run([sys.executable, "-m", "secure_infer.cli", "query", f"127.0.0.1:{port}",
                                 "digits:0-5", "--json", str(out)], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        summary = json.loads(out.read_text())
        assert summary["inputs"] == 5 and summary["accuracy"] >= 0.8 and summary["key_upload_mb_once"] > 0
        bad = subprocess.run([sys.executable, "-m", "secure_infer.cli", "query", f"127.0.0.1:{port}",
                              "digits:0-99999"], capture_output=True, text=True, env=env, timeout=120)
        assert bad.returncode == 2 and "test split has indices" in bad.stderr
    finally:
        server.send_signal(signal.SIGTERM)  # what a service manager sends; SIGINT is ignored in background jobs
        try:
            tail = server.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0 and "stopped after" in tail


def test_party_refuses_a_bad_command_line() -> None:
    result = runner.invoke(app, ["party", "--rank", "1", "--world-size", "2", "--master", "127.0.0.1:1",
                                 "--role", "model-owner"])
    assert result.exit_code != 0
    assert "rank 1 is the data-owner" in str(result.exception) + result.output


def test_query_names_an_unreachable_server() -> None:
    from secure_infer import ProtocolError

    result = runner.invoke(app, ["query", "127.0.0.1:1", "digits:0"])
    assert isinstance(result.exception, ProtocolError) and "cannot reach the server" in str(result.exception)


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_demo_he_and_mpc(tmp_path: Path) -> None:
    out = tmp_path / "he.json"
    result = runner.invoke(app, ["demo", "he", "--limit", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["accuracy"] >= 0.66
    out = tmp_path / "mpc.json"
    result = runner.invoke(app, ["demo", "mpc", "--parties", "3", "--limit", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["agreement"] == 1.0


def test_attack_refuses_an_unknown_backend() -> None:
    result = runner.invoke(app, ["attack", "--backends", "paillier"])
    assert result.exit_code == 2 and "unknown" in result.output
