from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocols.cli import app
from secure_infer import ParameterError

runner = CliRunner()

# what `secure-infer ... | cat` sees at 80 columns: not a terminal, nothing forcing rich to treat it as one
PIPED = {"COLUMNS": "80", "TTY_COMPATIBLE": None, "FORCE_COLOR": None}


def _last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


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


@pytest.mark.slow
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
    assert _last_line(result.stdout) == f"report: {out}"


def test_zoo_train_saves_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    result = runner.invoke(app, ["zoo", "train", "logreg", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "test accuracy" in result.output
    result = runner.invoke(app, ["baseline", str(out), "--batch-sizes", "1,4"])
    assert result.exit_code == 0, result.output
    assert "not measured" in result.output or "cuda" in result.output


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_serve_and_query_from_the_command_line(tmp_path: Path) -> None:
    """`secure-infer serve` in its own process, `secure-infer query` in another, as a user would run them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from secure_infer.backends.crypten import free_port

    model = tmp_path / "logreg.pt"
    assert runner.invoke(app, ["zoo", "train", "logreg", "--out", str(model)]).exit_code == 0
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    server = subprocess.Popen([sys.executable, "-m", "protocols.cli", "serve", str(model), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        output = ""
        while f"serving logreg on 127.0.0.1:{port}" not in " ".join(output.split()):
            line = server.stdout.readline()
            assert line and time.monotonic() < deadline, output
            output += line
        out = tmp_path / "q.json"
        result = subprocess.run([sys.executable, "-m", "protocols.cli", "query", f"127.0.0.1:{port}",
                                 "digits:0-5", "--json", str(out)], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        summary = json.loads(out.read_text())
        assert summary["inputs"] == 5 and summary["accuracy"] >= 0.8 and summary["key_upload_mb_once"] > 0
        bad = subprocess.run([sys.executable, "-m", "protocols.cli", "query", f"127.0.0.1:{port}",
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


def test_serve_refuses_a_bad_rotation_key_cap_before_training() -> None:
    result = runner.invoke(app, ["serve", "mlp", "--rotation-keys", "0"])
    assert result.exit_code != 0 and "rotation-keys" in result.output.replace("\n", "")
    result = runner.invoke(app, ["serve", "mlp", "--mode", "batch", "--rotation-keys", "2"])
    assert isinstance(result.exception, ParameterError) and "--mode latency only" in str(result.exception)


def test_query_names_an_unreachable_server() -> None:
    from secure_infer import ProtocolError

    result = runner.invoke(app, ["query", "127.0.0.1:1", "digits:0"])
    assert isinstance(result.exception, ProtocolError) and "cannot reach the server" in str(result.exception)


@pytest.mark.slow
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


def test_piped_zoo_list_keeps_every_row_on_one_line() -> None:
    """Piped at 80 columns, each model's whole layer list stays on its row (rich wrapped it over lines)."""
    from secure_infer import datasets, zoo

    result = runner.invoke(app, ["zoo", "list"], env=PIPED)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout and "\x1b" not in result.stdout
    data = datasets.load_digits()
    for name in zoo.available():
        model = zoo.build(name, data.input_shape, data.num_classes)
        layers = ", ".join(type(m).__name__ for m in model.children())
        params = f"{sum(p.numel() for p in model.parameters()):,}"
        assert any(line.startswith(f"| {name} ") and params in line and layers in line for line in lines), (name, lines)
    assert max(len(line) for line in lines) > 80  # full width, not folded to the 80 columns


@pytest.mark.timeout(300)
def test_piped_demo_prints_markdown_in_full_and_says_no_file_was_written() -> None:
    result = runner.invoke(app, ["demo", "--models", "logreg", "--parties", "0", "--no-tenseal"], env=PIPED)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "…" not in out and "━" not in out  # no truncation, no progress bars among the results
    row = next(line for line in out.splitlines() if line.startswith("| logreg "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "650" and len(cells) == 7
    assert float(cells[3]) > 0.9 and len(cells[3]) == 6  # test accuracy, all four decimals
    assert all(c.startswith("not measured [") or float(c) >= 0 for c in cells[4:])
    assert _last_line(out).startswith("report: not saved to a file")
    assert "train logreg on digits: 30/30 done in" in result.stderr  # progress went to stderr


@pytest.mark.timeout(300)
def test_bench_ends_with_the_report_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_infer import bench

    monkeypatch.setitem(bench.PRESETS, "tiny", {"models": ["logreg"], "executions": ["plaintext-cpu"],
                                                "batches": [1, 4], "repeats": 1, "widths": [], "depths": [],
                                                "degrees": []})
    result = runner.invoke(app, ["bench", "--preset", "tiny", "--out", str(tmp_path / "b")], env=PIPED)
    assert result.exit_code == 0, result.output
    last = _last_line(result.stdout)
    assert last == f"report: {tmp_path / 'b' / 'report.md'}"
    assert Path(last.removeprefix("report: ")).is_file()
    assert "report.json" in result.stdout and "bench --tiny: 2/2 done in" in result.stderr


def _canned_attack_report(config: object, on_step: object = None) -> object:
    """A finished suite's results without running it (the suite's own test runs it)."""
    import numpy as np

    from secure_infer.attacks import suite
    from secure_infer.attacks.extraction import ExtractionPoint
    from secure_infer.attacks.input_privacy import InputPrivacyResult
    from secure_infer.attacks.inversion import InversionResult
    from secure_infer.attacks.membership import MembershipResult

    assert isinstance(config, suite.SuiteConfig) and callable(on_step)
    for k in range(suite.count_steps(config)):
        on_step(f"step {k}")
    member = np.array([1] * 10 + [0] * 10)
    mia = {k: MembershipResult(k, 0.8123, 0.7, 0.2345, 0.1234, 10, 10, np.linspace(0, 1, 20), member)
           for k in ("loss", "shadow", "lira")}
    images = np.zeros((10, 8, 8))
    inversion = InversionResult(images, images, (0.0125,) * 10, (0.5,) * 10, 100, 0.4, 0.03, 0.9)
    privacy = InputPrivacyResult("the input (plaintext)", 0.9123, 0.1, "knn", 0.98, 64, 100, 30)
    points = [ExtractionPoint(b, "confidences", 0.8765, 0.7) for b in config.budgets]
    names = ["plaintext, full confidences", "DP-SGD (epsilon 7.9, delta 1e-05), full confidences"]
    rows = [suite.ServingRow(n, 0.9512, mia, points, inversion, privacy) for n in names]
    return suite.AttackReport(config, rows, points, [], 1.0, {})


def test_attack_prints_every_row_in_full_and_ends_with_the_report(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_infer.attacks import suite

    monkeypatch.setattr(suite, "run_suite", _canned_attack_report)
    result = runner.invoke(app, ["attack", "--backends", "none", "--out", str(tmp_path / "a")], env=PIPED)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout
    for name in ("plaintext, full confidences", "DP-SGD (epsilon 7.9, delta 1e-05), full confidences"):
        row = next(line for line in lines if line.startswith(f"| {name} "))
        for figure in ("| 0.951 ", "0.812 / 0.812 / 0.812", "0.234", "0.123", "0.88 / 0.88 / 0.88",
                       "0.500 (0.0125), 0.9", "the input (plaintext)", "0.912 (0.100; "):
            assert figure in row, (figure, row)
    assert any(line.startswith("- Extraction from top-1 labels only") and line.endswith("with full confidences.")
               for line in lines)  # a note on one line, not wrapped at 80 columns
    last = _last_line(result.stdout)
    assert last == f"report: {tmp_path / 'a' / 'report.md'}" and Path(last.removeprefix("report: ")).is_file()
    steps = suite.count_steps(suite.SuiteConfig(dp_epsilons=suite.QUICK.dp_epsilons, backends=()))
    assert f"attacks: {steps}/{steps} done in" in result.stderr


@pytest.mark.multiprocess
def test_score_writes_outputs_and_a_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "score"
    result = runner.invoke(app, ["score", "logreg", "digits:0-100", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "score.json").read_text())
    assert summary["inputs"] == 100 and summary["blocks"] == 1 and summary["argmax_agreement"] >= 0.99
    assert (out / "outputs.npy").is_file() and (out / "block-00000.npy").is_file()
    again = runner.invoke(app, ["score", "logreg", "digits:0-100", "--workers", "1", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "score.json").read_text())["resumed_blocks"] == 1
    bad = runner.invoke(app, ["score", "logreg", "--backend", "seal", "--out", str(out)])
    assert bad.exit_code == 2 and "tenseal or crypten" in bad.output


@pytest.mark.slow
@pytest.mark.multiprocess
def test_score_with_crypten_places_parties_and_agrees(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import ray

    out = tmp_path / "mpc"
    try:
        result = runner.invoke(app, ["score", "logreg", "digits:0-12", "--backend", "crypten", "--block", "6",
                                     "--out", str(out)])
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "score.json").read_text())
    assert summary["inputs"] == 12 and summary["blocks"] == 2 and summary["argmax_agreement"] == 1.0
    assert [sorted(b["nodes"]) for b in summary["party_nodes"]] == [["0", "1"], ["0", "1"]]
