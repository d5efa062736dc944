"""MPC scoring on Ray: party i of every block placed where party i's resource is, results as on one machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import secure_infer as si

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_parties_run_in_their_own_bundles_and_agree_with_the_local_parties(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import ray

    from secure_infer.scoring_mpc import PARTY_RESOURCE, score_mpc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(10, 1, 4, 4)
    with si.wrap(model, "crypten", sample_input=x[:1]) as enc:
        local = enc.logits(x)
        try:
            result, blocks = score_mpc(enc, x, block=4, out=tmp_path)
        finally:
            ray.shutdown()
    assert result.inputs == 10 and result.blocks == 3 and [b.index for b in blocks] == [0, 1, 2]
    assert float((result.outputs - local).abs().max()) < 0.05  # fixed-point shares: the same answers
    assert torch.equal(result.outputs.argmax(1), local.argmax(1))
    for b in blocks:
        assert sorted(b.nodes) == [0, 1] and b.bytes > 0 and b.rounds > 0
        for rank, held in b.resources.items():  # Ray's record: party r held party r's label, no other
            labels = {name for name in held if name.startswith("secure_infer_party_")}
            assert labels and all(name.startswith(PARTY_RESOURCE.format(rank)) for name in labels), held
    assert (tmp_path / "manifest.json").is_file()


def test_a_cluster_without_a_party_resource_is_refused() -> None:
    pytest.importorskip("ray")
    import ray

    from secure_infer.engine import connect
    from secure_infer.scoring_mpc import score_mpc

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(2, 1, 2, 2)
    connect("local", cpus=2)  # no party resources on this node
    try:
        with si.wrap(model, "crypten", sample_input=x[:1]) as enc, \
                pytest.raises(si.EngineError, match="secure_infer_party_0"):
            score_mpc(enc, x)
    finally:
        ray.shutdown()
