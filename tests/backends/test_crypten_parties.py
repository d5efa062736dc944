"""Real party processes: agreement, statistics, lifecycle and failures."""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import secure_infer as si
from secure_infer import zoo
from secure_infer.backends.crypten import PartyPool, weightless
from secure_infer.graph import trace

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]


# Each trained model on its own: the whole zoo (the session's trained_zoo) takes minutes on a loaded machine.
@pytest.fixture(scope="module")
def lenet(digits) -> zoo.ZooModel:
    return zoo.pretrained("lenet", digits, seed=0)


@pytest.fixture(scope="module")
def mlp(digits) -> zoo.ZooModel:
    return zoo.pretrained("mlp", digits, seed=0)


@pytest.fixture(scope="module")
def lenet_two_parties(lenet, digits):
    enc = si.wrap(lenet.model, "crypten", sample_input=digits.x_test[:1], parties=2)
    yield enc
    enc.close()


def fixed_point_error_bound(model: nn.Sequential, x: torch.Tensor, precision_bits: int) -> float:
    """Worst case of |encrypted - plaintext| on ``x`` for a Linear/Conv/ReLU/MaxPool/Flatten stack in CrypTen.

    One unit in the last place is ``ulp = 2**-precision_bits``. Encoding rounds
    every input, weight and bias by at most ulp/2. A layer amplifies the error
    of its input by its largest row L1 norm; a weight's rounding error meets the
    input, adding (largest L1 norm of a receptive field) * ulp/2; the secret
    product (Beaver triple, then each of the 2 shares truncated locally) adds at
    most 2 ulp. ReLU and max pooling select with exact comparisons of the encoded
    values (1-Lipschitz); each selection's product may add 2 ulp.
    """
    ulp = 2.0 ** -precision_bits
    err = ulp / 2
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                w, fields = layer.weight, x.abs()
            elif isinstance(layer, nn.Conv2d):
                w = layer.weight.reshape(layer.weight.shape[0], -1)
                fields = nn.functional.unfold(x.abs(), layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                fields = fields.transpose(1, 2)
            elif isinstance(layer, nn.ReLU):
                w = None
                err += 2 * ulp
            elif isinstance(layer, nn.MaxPool2d):
                w = None
                window = layer.kernel_size if isinstance(layer.kernel_size, int) else max(layer.kernel_size)
                err += 2 * ulp * math.ceil(math.log2(window * window))
            elif isinstance(layer, nn.Flatten):
                w = None
            else:
                raise TypeError(f"no fixed-point bound for {type(layer).__name__}")
            if w is not None:
                amplification = float(w.abs().sum(1).max())
                err = amplification * err + float(fields.sum(-1).max()) * ulp / 2 + ulp / 2 + 2 * ulp
            x = layer(x)
    return err


def test_two_parties_agree_with_plaintext(lenet_two_parties, lenet, digits) -> None:
    x = digits.x_test[:16]
    y = lenet_two_parties(x, compare=True)
    model = lenet.model
    with torch.no_grad():
        plain = model(x)
    run = lenet_two_parties.last_run
    assert not run.simulated and run.batch_size == 16
    assert [p["role"] for p in run.per_party] == ["model-owner", "data-owner"]
    assert all(p["bytes"] > 0 and p["rounds"] > 0 for p in run.per_party)
    assert run.bytes_sent == sum(p["bytes"] for p in run.per_party)
    # nothing is approximated in LeNet under CrypTen: fixed point is the only source of error
    assert not lenet_two_parties.report().approximations
    error = float((y - plain).abs().max())
    assert run.max_abs_error == pytest.approx(error)
    bound = fixed_point_error_bound(model, x, precision_bits=16)  # about 0.7; measured about 4e-3
    assert error <= bound
    # where the plaintext top-2 margin exceeds twice the bound, no error within the bound can flip the argmax
    top2 = plain.topk(2, dim=1).values
    sure = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert int(sure.sum()) >= 15  # the bound is tight enough to say something about these inputs
    assert torch.equal(y.argmax(1)[sure], plain.argmax(1)[sure])
    assert float((y.argmax(1) == plain.argmax(1)).float().mean()) >= 15 / 16


def test_pool_stays_up_across_calls(lenet_two_parties, digits) -> None:
    first = lenet_two_parties(digits.x_test[:2])
    second = lenet_two_parties(digits.x_test[:2])
    assert first.shape == second.shape == (2, 10)
    assert torch.equal(first.argmax(1), second.argmax(1))
    assert "2 party processes" in str(lenet_two_parties.report())


@pytest.mark.slow
def test_three_parties_with_dealer(mlp, digits) -> None:
    z = mlp
    x = digits.x_test[:8]
    with si.wrap(z.model, "crypten", sample_input=x[:1], parties=3, dealer=True) as enc:
        y = enc(x)
        run = enc.last_run
        assert [p["role"] for p in run.per_party] == ["model-owner", "data-owner", "helper"]
        assert "trusted dealer" in str(enc.report())
    assert torch.equal(y.argmax(1), z.model(x).argmax(1))


def _logreg() -> nn.Module:
    """An untrained 8x8-digits classifier: the failure tests need party processes, not accuracy."""
    return zoo.build("logreg", (1, 8, 8), 10, seed=0).eval()


def test_closed_pool_refuses_calls(digits) -> None:
    enc = si.wrap(_logreg(), "crypten", sample_input=digits.x_test[:1])
    enc.close()
    enc.close()  # idempotent
    with pytest.raises(si.PartyFailure, match="closed"):
        enc(digits.x_test[:1])


def test_dead_party_is_named_with_its_exit_code(digits) -> None:
    enc = si.wrap(_logreg(), "crypten", sample_input=digits.x_test[:1], timeout=60)
    enc.program.kill_party(1)
    with pytest.raises(si.PartyFailure, match=r"party 1 \(data-owner\) exited with code -9 \(killed by SIGKILL\)"):
        enc(digits.x_test[:4])
    with pytest.raises(si.PartyFailure, match="closed"):  # every party was stopped with it
        enc(digits.x_test[:4])
    enc.close()


def _alive_children(pids: dict[int, int]) -> list[int]:
    """Ranks whose process is still this process's unreaped child (running, stopped or zombie)."""
    alive = []
    for rank, pid in pids.items():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped by the pool: gone
        alive.append(rank)
    return alive


@pytest.fixture
def logreg_pool(digits) -> Iterator[PartyPool]:
    """Two parties holding an untrained logistic regression, one call already made; cleaned up in any case."""
    graph = trace(_logreg(), digits.x_test[:1])
    pool = PartyPool([graph, weightless(graph)], timeout=120)  # start-up on a loaded machine is slow
    pids = pool.pids
    try:
        pool.run(digits.x_test[:2])
        yield pool
    finally:
        pool.close(force=True)
        for rank in _alive_children(pids):  # only if the pool failed to: never leave a party behind
            os.kill(pids[rank], signal.SIGKILL)
            os.kill(pids[rank], signal.SIGCONT)
            os.waitpid(pids[rank], 0)


@pytest.mark.timeout(240)
def test_party_killed_mid_call_is_reported_from_its_exit_not_by_a_peer(logreg_pool, digits) -> None:
    """Party 0 is frozen, so no peer can fail in gloo: only the pool itself can notice party 1's death."""
    pids = logreg_pool.pids
    logreg_pool.timeout = 60  # the poll()/EOF check answers at once; without it this would time out
    os.kill(pids[0], signal.SIGSTOP)
    killer = threading.Timer(1.0, os.kill, (pids[1], signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(si.PartyFailure, match=r"party 1 \(data-owner\) exited with code -9 \(killed by SIGKILL\)") as info:
            logreg_pool.run(digits.x_test[:4])
    finally:
        killer.join()
    assert "did not answer" not in str(info.value)
    assert "Start the parties again" in str(info.value)
    assert _alive_children(pids) == []  # the frozen party 0 was killed too
    with pytest.raises(si.PartyFailure, match="closed"):
        logreg_pool.run(digits.x_test[:4])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hung_party_is_reported_within_the_timeout_and_every_party_is_stopped(logreg_pool, digits) -> None:
    pids = logreg_pool.pids
    logreg_pool.timeout = 5
    os.kill(pids[1], signal.SIGSTOP)
    with pytest.raises(si.PartyFailure) as info:
        logreg_pool.run(digits.x_test[:4])
    message = str(info.value)
    assert "party 1 (data-owner) is stopped (SIGSTOP" in message
    assert "did not answer within 5 s during inference" in message
    assert "(party 0 (model-owner) waited on it)" in message
    assert _alive_children(pids) == []  # the stopped one included
    assert logreg_pool.pids == {}


def test_busy_port_is_reported(digits) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(si.ParameterError, match=f"{port} is busy"):
            si.wrap(_logreg(), "crypten", sample_input=digits.x_test[:1], port=port)


def test_weightless_copy_holds_no_weights(lenet, digits) -> None:
    g = trace(lenet.model, digits.x_test[:1])
    blank = weightless(g)
    for node in blank.nodes:
        if node.module is not None:
            for t in (*node.module.parameters(), *node.module.buffers()):
                assert not t.any()
    # the original keeps its weights
    assert any(p.abs().sum() > 0 for n in g.nodes if n.module is not None for p in n.module.parameters())


@pytest.mark.slow
def test_a_rendezvous_port_taken_before_rank_0_listens_costs_a_restart(digits, monkeypatch) -> None:
    from secure_infer.backends.crypten import _pool

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]  # the first port handed out is already someone else's
    real = _pool.free_port

    def free_port(host: str = "127.0.0.1") -> int:
        return ports.pop() if ports else real(host)

    monkeypatch.setattr(_pool, "free_port", free_port)
    graph = trace(_logreg(), digits.x_test[:1])
    try:
        pool = PartyPool([graph, weightless(graph)], timeout=120)
        try:
            assert not ports and pool.address != f"127.0.0.1:{taken.getsockname()[1]}"
            assert pool.run(digits.x_test[:2])[0].shape == (2, 10)
        finally:
            pool.close()
    finally:
        taken.close()
