"""A client written in JavaScript from inference.proto alone talks to the server: the .proto is the contract.

Needs Node.js and npm (the test installs examples/node-client's two packages
from the npm registry the first time); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from protocols.he import HEServer, ServerState, ServerTLS
from secure_infer.certs import make_pki

pytestmark = pytest.mark.multiprocess

CLIENT = Path(__file__).resolve().parents[2] / "examples" / "node-client"


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed")
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=CLIENT,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"npm install failed (no registry?): {done.stderr.strip()[-300:]}")
    return CLIENT / "client.js"


def test_a_javascript_client_reads_the_layout_and_its_budget_over_tls(node_client: Path, logreg_program,
                                                                       tmp_path: Path) -> None:
    program, _ = logreg_program
    make_pki(tmp_path, clients=["alice"])
    state = ServerState(tmp_path / "state.db")
    token = state.add_client("alice", budget=7)
    with HEServer(program, name="logreg", tls=ServerTLS(tmp_path / "server.pem", tmp_path / "server.key"),
                  state=state) as server:
        host, port = server.address
        done = subprocess.run(["node", str(node_client), f"localhost:{port}", str(tmp_path / "ca.pem"), token],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["layout"]["model"] == "logreg" and out["layout"]["mode"] == program.mode
        assert out["layout"]["input_shape"] == list(program.published.input_shape)
        assert out["budget"]["client"] == "alice" and int(out["budget"]["limit"]) == 7
        assert out["refused"] == {"status": "NOT_FOUND", "code": "unknown-session",
                                  "message": out["refused"]["message"]}
        anonymous = subprocess.run(["node", str(node_client), f"localhost:{port}", str(tmp_path / "ca.pem")],
                                   capture_output=True, text=True, timeout=120)
        assert json.loads(anonymous.stdout)["refused"]["code"] == "unauthenticated"
    state.close()
