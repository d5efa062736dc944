"""Encrypted scoring of a data set: in order, resumable, and nothing secret sent to a worker."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import secure_infer as si
from secure_infer import zoo
from secure_infer.backends.tenseal._seal import to_bytes
from secure_infer.engine import LocalEngine, audit_outgoing
from secure_infer.scoring import MANIFEST, BlockStore, ScoreResult, score


@pytest.fixture(scope="module")
def wrapped() -> tuple[nn.Module, si.EncryptedModel, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), zoo.Square(), nn.Linear(6, 3)).eval()
    x = torch.rand(4100, 1, 4, 4)  # two blocks of 4096 slots
    enc = si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x)
    assert enc.program.params.slots < len(x)
    return model, enc, x


def test_score_returns_every_output_in_order_and_writes_blocks(wrapped, tmp_path: Path) -> None:
    model, enc, x = wrapped
    with LocalEngine(1) as engine:
        result = score(enc, x, engine, out=tmp_path)
    with torch.no_grad():
        assert float((result.outputs - model(x)).abs().max()) < 1e-2
    assert result.inputs == len(x) and result.blocks == 2 and result.resumed == 0 and result.retried == 0
    assert sum(result.per_node.values()) == 2
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["blocks"] == [[0, 4096], [4096, 4100]] and sorted(manifest["done"]) == ["0", "1"]
    assert np.load(tmp_path / "block-00001.npy").shape == (4, 3)


def test_an_interrupted_job_resumes_from_its_finished_blocks(wrapped, tmp_path: Path) -> None:
    model, enc, x = wrapped
    with LocalEngine(1) as engine:
        first = score(enc, x, engine, out=tmp_path)
        (tmp_path / "block-00000.npy").unlink()  # as if the job had stopped before block 0 was written
        again = score(enc, x, engine, out=tmp_path)
        assert again.resumed == 1 and again.inputs == 4096 and sum(again.per_node.values()) == 1
        assert torch.equal(again.outputs[4096:], first.outputs[4096:])  # block 1 read back, not recomputed
        with torch.no_grad():
            assert float((again.outputs - model(x)).abs().max()) < 1e-2
        fresh = score(enc, x, engine, out=tmp_path, fresh=True)
        assert fresh.resumed == 0 and fresh.inputs == len(x)
        with pytest.raises(si.ParameterError, match="another job"):
            score(enc, x[:4097], engine, out=tmp_path)


def test_no_secret_key_or_plaintext_reaches_a_worker(wrapped) -> None:
    _, enc, x = wrapped
    sent: list[bytes] = []
    with audit_outgoing(sent.append), LocalEngine(1) as engine:
        score(enc, x, engine)
    secret = to_bytes(enc.program.client.keys._secret_key)
    flat = x.double().reshape(len(x), -1).numpy()
    needles = [secret[len(secret) // 2 : len(secret) // 2 + 64]]
    needles += [flat[:, j].tobytes()[:64] for j in range(flat.shape[1])]  # a feature column, as encrypted
    needles += [x.numpy().tobytes()[:64], flat[0].tobytes()]
    assert len(sent) == 3  # the worker spec once, then one payload per block
    for blob in sent:
        assert not any(needle in blob for needle in needles)
    spec = pickle.loads(sent[0])
    assert sorted(spec.key_blobs) == ["relin_keys"]  # evaluation keys only
    assert all(isinstance(c, bytes) for c in pickle.loads(sent[1]))  # ciphertexts


def test_score_refuses_models_it_cannot_block(wrapped) -> None:
    model, _, x = wrapped
    latency = si.wrap(model, "tenseal", sample_input=x[:1], mode="latency", calibration=x[:64])
    with LocalEngine(1) as engine:
        with pytest.raises(si.ParameterError, match="batch"):
            score(latency, x[:2], engine)
        with pytest.raises(si.ParameterError, match="no inputs"):
            score(si.wrap(model, "tenseal", sample_input=x[:1], mode="batch", calibration=x[:64]), x[:0], engine)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_score_on_local_ray_matches_plaintext(wrapped) -> None:
    pytest.importorskip("ray")
    from secure_infer.engine import RayEngine

    model, enc, x = wrapped
    engine = RayEngine("local", 2)
    try:
        result = score(enc, x, engine)
    finally:
        engine.shutdown()
    with torch.no_grad():
        assert float((result.outputs - model(x)).abs().max()) < 1e-2
    assert sum(result.per_node.values()) == 2


def test_block_store_without_a_folder_keeps_blocks_in_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = BlockStore(None, "job", [range(0, 2), range(2, 3)])
    assert store.pending() == [(0, range(0, 2)), (1, range(2, 3))]
    store.save(1, np.array([[3.0]]))
    with pytest.raises(si.SecureInferError, match=r"blocks \[0\]"):
        store.load()
    store.save(0, np.array([[1.0], [2.0]]))
    assert store.pending() == []
    np.testing.assert_array_equal(store.load(), [[1.0], [2.0], [3.0]])
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_score_summary_names_what_its_bytes_count() -> None:
    he = ScoreResult(torch.empty(0), 1.0, 4, 1, 0, bytes_in=10, bytes_out=2).summary()
    mpc = ScoreResult(torch.empty(0), 1.0, 4, 1, 0, bytes_in=10, traffic="share").summary()
    assert he["ciphertext_bytes_in"] == 10 and he["ciphertext_bytes_out"] == 2
    assert mpc["party_bytes_sent"] == 10 and not any(k.startswith("ciphertext") for k in mpc)
