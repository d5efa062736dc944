"""Real party processes: agreement, statistics, lifecycle and failures."""

from __future__ import annotations

import socket
import time

import pytest
import torch

import secure_infer as si
from secure_infer.backends.crypten._program import weightless
from secure_infer.graph import trace

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lenet_two_parties(trained_zoo, digits):
    z = trained_zoo["lenet"]
    enc = si.wrap(z.model, "crypten", sample_input=digits.x_test[:1], parties=2)
    yield enc
    enc.close()


def test_two_parties_agree_with_plaintext(lenet_two_parties, trained_zoo, digits) -> None:
    x = digits.x_test[:16]
    y = lenet_two_parties(x, compare=True)
    plain = trained_zoo["lenet"].model(x).detach()
    assert float((y.argmax(1) == plain.argmax(1)).float().mean()) >= 15 / 16
    run = lenet_two_parties.last_run
    assert not run.simulated and run.batch_size == 16
    assert [p["role"] for p in run.per_party] == ["model owner", "data owner"]
    assert all(p["bytes"] > 0 and p["rounds"] > 0 for p in run.per_party)
    assert run.bytes_sent == sum(p["bytes"] for p in run.per_party)
    assert run.max_abs_error is not None


def test_pool_stays_up_across_calls(lenet_two_parties, digits) -> None:
    first = lenet_two_parties(digits.x_test[:2])
    second = lenet_two_parties(digits.x_test[:2])
    assert first.shape == second.shape == (2, 10)
    assert torch.equal(first.argmax(1), second.argmax(1))
    assert "2 party processes" in str(lenet_two_parties.report())


def test_three_parties_with_dealer(trained_zoo, digits) -> None:
    z = trained_zoo["mlp"]
    x = digits.x_test[:8]
    with si.wrap(z.model, "crypten", sample_input=x[:1], parties=3, dealer=True) as enc:
        y = enc(x)
        run = enc.last_run
        assert [p["role"] for p in run.per_party] == ["model owner", "data owner", "helper"]
        assert "trusted dealer" in str(enc.report())
    assert torch.equal(y.argmax(1), z.model(x).argmax(1))


def test_closed_pool_refuses_calls(trained_zoo, digits) -> None:
    enc = si.wrap(trained_zoo["logreg"].model, "crypten", sample_input=digits.x_test[:1])
    enc.close()
    enc.close()  # idempotent
    with pytest.raises(si.PartyFailure, match="closed"):
        enc(digits.x_test[:1])


def test_dead_party_fails_fast_and_clearly(trained_zoo, digits) -> None:
    enc = si.wrap(trained_zoo["logreg"].model, "crypten", sample_input=digits.x_test[:1], timeout=60)
    enc.program.kill_party(1)
    started = time.monotonic()
    with pytest.raises(si.PartyFailure, match=r"party 1 \(data owner\)"):
        enc(digits.x_test[:4])
    assert time.monotonic() - started < 30
    enc.close()


def test_busy_port_is_reported(trained_zoo, digits) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(si.ParameterError, match=f"{port} is busy"):
            si.wrap(trained_zoo["logreg"].model, "crypten", sample_input=digits.x_test[:1], port=port)


def test_weightless_copy_holds_no_weights(trained_zoo, digits) -> None:
    g = trace(trained_zoo["lenet"].model, digits.x_test[:1])
    blank = weightless(g)
    for node in blank.nodes:
        if node.module is not None:
            for t in (*node.module.parameters(), *node.module.buffers()):
                assert not t.any()
    # the original keeps its weights
    assert any(p.abs().sum() > 0 for n in g.nodes if n.module is not None for p in n.module.parameters())
