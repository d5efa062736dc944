"""``secure-infer party`` over mutually authenticated TLS links: the options, checked early, and a real job."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from protocols.cli import app
from protocols.mpc import PartyConfig, launch_local, local_parties
from secure_infer import ParameterError, zoo
from secure_infer.certs import make_pki

PEERS = ("127.0.0.1:29610", "127.0.0.1:29611")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_pki(folder, parties=2)
    return folder


def _tls(pki: Path, rank: int) -> dict:
    return {"peers": PEERS, "tls_cert": pki / f"party-{rank}.pem", "tls_key": pki / f"party-{rank}.key",
            "tls_ca": pki / "ca.pem"}


@pytest.mark.parametrize(("change", "message"), [
    ({"tls_key": None}, "missing --tls-key"),
    ({"master": "127.0.0.1:29500"}, "drop --master"),
    ({"dealer": True}, "--dealer cannot run over TLS"),
    ({"peers": PEERS[:1]}, "--peers lists 1 addresses for --world-size 2"),
    ({"peers": (PEERS[0], PEERS[0])}, "two ranks share an address"),
    ({"peers": ("127.0.0.1", PEERS[1])}, "must look like HOST:PORT"),
    ({"tls_cert": "PKI/party-1.pem", "tls_key": "PKI/party-1.key"}, "certificate of 'party-1', not party-0"),
    ({"tls_ca": "PKI/none.pem"}, "does not exist"),
])
def test_tls_options_are_checked_before_contacting_anyone(pki: Path, tmp_path: Path, change: dict,
                                                          message: str) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    change = {k: Path(str(v).replace("PKI", str(pki))) if isinstance(v, str) and v.startswith("PKI") else v
              for k, v in change.items()}
    fields = {"rank": 0, "world_size": 2, "master": "", "role": "model-owner", "model": model, **_tls(pki, 0)}
    with pytest.raises(ParameterError, match=re.escape(message)):
        PartyConfig(**(fields | change)).validate()


def test_peers_without_certificates_are_refused() -> None:
    with pytest.raises(ParameterError, match="--peers and --tls-listen are for TLS links"):
        PartyConfig(rank=1, world_size=2, master="127.0.0.1:29500", role="data-owner", input="digits:0-1",
                    peers=PEERS).validate()
    with pytest.raises(ParameterError, match="give --master HOST:PORT"):
        PartyConfig(rank=1, world_size=2, master="", role="data-owner", input="digits:0-1").validate()


def test_party_help_documents_the_tls_options() -> None:
    text = CliRunner().invoke(app, ["party", "--help"], env={"COLUMNS": "200", "TERM": "dumb"}).output
    for flag in ("--tls-cert", "--tls-key", "--tls-ca", "--peers", "--tls-listen", "--master"):
        assert flag in text, flag
    assert "secure-infer certs" in text


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_two_parties_infer_over_tls(digits, pki: Path, tmp_path: Path) -> None:
    # an untrained MLP: the job's answer against plaintext is the point, not its accuracy (no training wait)
    shape, classes = tuple(digits.x_test.shape[1:]), int(digits.y_test.max()) + 1
    model = zoo.ZooModel("mlp", zoo.build("mlp", shape, classes, seed=0), "digits", shape, classes, 0.0, 0.0, 0)
    path = zoo.save_model(model, tmp_path / "mlp.pt")
    out = tmp_path / "logits.npy"
    configs = local_parties(2, task="infer", timeout=60, tls=pki, per_rank={
        0: {"model": path}, 1: {"input": "digits:0-8", "output": out}})
    assert all(c.tls and not c.master for c in configs)
    result = launch_local(configs, tmp_path / "logs")
    assert result.ok, result.errors
    logits = torch.from_numpy(np.load(out))
    with torch.no_grad():
        plain = model.model(digits.x_test[:8])
    assert float((logits - plain).abs().max()) < 0.05
    assert result.outcomes[1].result["inputs"] == 8
    assert result.outcomes[0].result == {}  # the model owner learns nothing
    assert all(o.bytes_sent > 0 and o.rounds > 0 for o in result.outcomes.values())
