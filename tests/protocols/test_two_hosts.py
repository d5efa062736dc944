"""`secure-infer serve` and `secure-infer query` on two hosts: two network namespaces joined by a veth pair.

The server listens on 10.77.0.1 in one namespace with TLS, client certificates
and a client registry; the client runs in the other namespace at 10.77.0.2,
as a second host would. Needs root and iproute2 (``ip netns``); skipped with
the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocols.he.state import ServerState
from secure_infer import datasets, zoo
from secure_infer.certs import make_pki

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

SERVER_IP, CLIENT_IP, PORT = "10.77.0.1", "10.77.0.2", 8750


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, str]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    tag = f"{os.getpid() % 100000}"
    a, b = f"si-srv-{tag}", f"si-cli-{tag}"
    va, vb = f"sis{tag}", f"sic{tag}"
    made = _ip("netns", "add", a)
    if made.returncode != 0:
        pytest.skip(f"cannot make network namespaces here (needs root): {made.stderr.strip()}")
    try:
        steps = [("netns", "add", b), ("link", "add", va, "type", "veth", "peer", "name", vb),
                 ("link", "set", va, "netns", a), ("link", "set", vb, "netns", b),
                 ("-n", a, "addr", "add", f"{SERVER_IP}/24", "dev", va), ("-n", b, "addr", "add", f"{CLIENT_IP}/24", "dev", vb),
                 ("-n", a, "link", "set", va, "up"), ("-n", b, "link", "set", vb, "up"),
                 ("-n", a, "link", "set", "lo", "up"), ("-n", b, "link", "set", "lo", "up")]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` failed: {done.stderr.strip()}")
        yield a, b
    finally:
        _ip("netns", "del", a)
        _ip("netns", "del", b)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _cli(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "protocols.cli", *args]


def _start_server(ns: str, tmp: Path, model: Path) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        _cli(ns, "serve", str(model), "--host", SERVER_IP, "--port", str(PORT),
             "--tls-cert", str(tmp / "pki" / "server.pem"), "--tls-key", str(tmp / "pki" / "server.key"),
             "--client-ca", str(tmp / "pki" / "ca.pem"), "--state", str(tmp / "state.db")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline, output = time.monotonic() + 180, ""
    while "serving" not in output:
        line = server.stdout.readline() if server.stdout else ""
        assert line and time.monotonic() < deadline, output
        output += line
    return server


def _stop(server: subprocess.Popen[str]) -> str:
    server.send_signal(signal.SIGTERM)
    try:
        return server.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        server.kill()
        raise


def _query(ns: str, tmp: Path, spec: str, *, token: str | None, cert: str | None,
           out: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ["query", f"{SERVER_IP}:{PORT}", spec, "--tls-ca", str(tmp / "pki" / "ca.pem"), "--timeout", "60"]
    if cert is not None:
        args += ["--tls-cert", str(tmp / "pki" / f"client-{cert}.pem"), "--tls-key", str(tmp / "pki" / f"client-{cert}.key")]
    if token is not None:
        args += ["--token", token]
    if out is not None:
        args += ["--json", str(out)]
    return subprocess.run(_cli(ns, *args), capture_output=True, text=True, env=_env(), timeout=180)


def test_tls_tokens_certificates_and_budgets_across_two_hosts(hosts: tuple[str, str], tmp_path: Path) -> None:
    server_ns, client_ns = hosts
    make_pki(tmp_path / "pki", hosts=[SERVER_IP], clients=["alice", "bob"])
    state = ServerState(tmp_path / "state.db")
    alice = state.add_client("alice", budget=4)
    state.add_client("bob")
    state.close()
    data = datasets.load("digits", seed=0)
    model = zoo.save_model(zoo.pretrained("logreg", data), tmp_path / "logreg.pt")

    server = _start_server(server_ns, tmp_path, model)
    try:
        ok = _query(client_ns, tmp_path, "digits:0-3", token=alice, cert="alice", out=tmp_path / "q.json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        summary = json.loads((tmp_path / "q.json").read_text())
        assert summary["inputs"] == 3 and summary["accuracy"] >= 2 / 3 and summary["budget_used"] == 3

        no_token = _query(client_ns, tmp_path, "digits:0", token=None, cert="alice")
        assert no_token.returncode == 2 and "needs an API token" in no_token.stderr, no_token.stderr
        wrong_cert = _query(client_ns, tmp_path, "digits:0", token=alice, cert="bob")
        assert wrong_cert.returncode == 2 and "token belongs to another client" in wrong_cert.stderr, wrong_cert.stderr
        no_cert = _query(client_ns, tmp_path, "digits:0", token=alice, cert=None)
        assert no_cert.returncode == 2 and "cannot reach" in no_cert.stderr, no_cert.stderr
        plaintext = subprocess.run(_cli(client_ns, "query", f"{SERVER_IP}:{PORT}", "digits:0", "--token", alice),
                                   capture_output=True, text=True, env=_env(), timeout=120)
        assert plaintext.returncode == 2 and "not loopback" in plaintext.stderr, plaintext.stderr
        over = _query(client_ns, tmp_path, "digits:0-2", token=alice, cert="alice")
        assert over.returncode == 2 and "budget" in over.stderr and "nothing was sent" in over.stderr, over.stderr
    finally:
        first_log = _stop(server)
    assert "stopped after" in first_log

    # a restart keeps alice's budget: one input left, then refused with the budget status
    server = _start_server(server_ns, tmp_path, model)
    try:
        last = _query(client_ns, tmp_path, "digits:5", token=alice, cert="alice", out=tmp_path / "last.json")
        assert last.returncode == 0, last.stdout + last.stderr
        assert json.loads((tmp_path / "last.json").read_text())["budget_used"] == 4
        spent = _query(client_ns, tmp_path, "digits:6", token=alice, cert="alice")
        assert spent.returncode == 2 and "used 4 of its budget of 4" in spent.stderr, spent.stderr
    finally:
        _stop(server)
    audit = [json.loads(line) for line in (tmp_path / "state.audit.jsonl").read_text().splitlines()]
    assert {e["client"] for e in audit if e["event"] == "query"} == {"alice"}
    assert sum(e["inputs"] for e in audit if e["event"] == "query" and e["outcome"] == "ok") == 4
    assert all("data" not in e for e in audit)
