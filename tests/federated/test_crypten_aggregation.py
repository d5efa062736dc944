"""CrypTen aggregator parties average sealed shares of updates: FedAvg with no update in the clear.

The average must equal plaintext weighted FedAvg; a share must be opened only
by its own aggregator and must not reveal the update (uniform, uncorrelated);
a client with a missing or altered share is left out by every aggregator, not
averaged as zeros. Real party processes are started only a few times: each
multi-process fixture runs one aggregation that several tests read.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest

from secure_infer._errors import ParameterError, PartyFailure, ProtocolError, SecureInferError
from secure_infer.federated.crypten_aggregation import (
    AggregationJob,
    CrypTenAggregator,
    encode,
    open_share,
    read_header,
    share_update,
)

SHAPES = [(64, 64), (64,), (10, 64), (10,)]  # the digits MLP: 4,810 parameters
CLIENTS = 10


def _updates(seed: int) -> dict[str, tuple[list[np.ndarray], int]]:
    """Ten clients' updates (different scales) and example counts."""
    rng = np.random.default_rng(seed)
    return {
        f"client-{c}": (
            [rng.normal(0.0, 0.05 * (1 + c), s).astype(np.float32) for s in SHAPES],
            int(rng.integers(10, 400)),
        )
        for c in range(CLIENTS)
    }


def _fedavg(
    updates: dict[str, tuple[list[np.ndarray], int]], clients: list[str]
) -> list[np.ndarray]:
    total = sum(updates[c][1] for c in clients)
    return [
        sum(updates[c][1] * updates[c][0][i].astype(np.float64) for c in clients) / total
        for i in range(len(SHAPES))
    ]


def _max_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert [a.shape for a in got] == [w.shape for w in want] and all(
        a.dtype == np.float32 for a in got
    )
    return max(float(np.abs(a - w).max()) for a, w in zip(got, want, strict=True))


def _seal_all(
    agg: CrypTenAggregator, updates: dict[str, tuple[list[np.ndarray], int]], round: int
) -> dict[str, list[bytes | None]]:
    return {
        c: list(share_update(u, w, agg.keys, client=c, round=round))
        for c, (u, w) in updates.items()
    }


def _tamper(blob: bytes) -> bytes:
    """Flip one bit in the ciphertext (the last bytes are the tag's, the middle the share's)."""
    body = bytearray(blob)
    body[len(body) // 2] ^= 0x01
    return bytes(body)


@pytest.fixture(scope="module")
def two_parties() -> dict[str, Any]:
    """Two aggregators average ten clients' sealed updates (one party start)."""
    updates = _updates(0)
    agg = CrypTenAggregator(2)
    sealed = _seal_all(agg, updates, round=1)
    return {
        "agg": agg,
        "updates": updates,
        "sealed": sealed,
        "result": agg.aggregate(sealed, round=1),
    }


@pytest.fixture(scope="module")
def three_parties_with_faults() -> dict[str, Any]:
    """Three aggregators; the relay alters one share, loses one, and swaps one between clients."""
    updates = _updates(1)
    agg = CrypTenAggregator(3)
    sealed = _seal_all(agg, updates, round=7)
    sealed["client-2"][1] = _tamper(sealed["client-2"][1] or b"")
    sealed["client-5"][0] = None
    sealed["client-8"][2] = sealed["client-9"][2]  # valid bytes, sealed for client-9
    return {
        "agg": agg,
        "updates": updates,
        "sealed": sealed,
        "result": agg.aggregate(sealed, round=7),
    }


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_parties_equal_plaintext_fedavg(two_parties) -> None:
    result = two_parties["result"]
    updates = two_parties["updates"]
    assert result.clients == tuple(sorted(updates)) and result.dropped == {}
    error = _max_error(result.arrays, _fedavg(updates, list(updates)))
    assert error < 1e-4, (
        error
    )  # measured ~4e-8: float32 output rounding, the ring's 2**-16 divided by the total
    assert result.total_weight == sum(w for _, w in updates.values())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_cost_is_reported(two_parties) -> None:
    result = two_parties["result"]
    assert result.seconds > result.aggregate_seconds > 0
    assert len(result.bytes_per_party) == 2 and all(b > 0 for b in result.bytes_per_party)
    assert result.rounds >= 1
    # every client uploads one sealed share per aggregator: 4,811 ring elements and a small header
    elements = 1 + sum(int(np.prod(s)) for s in SHAPES)
    assert 2 * CLIENTS * 8 * elements < result.upload_bytes < 2 * CLIENTS * (8 * elements + 400)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_round_is_aggregated_once(two_parties, monkeypatch) -> None:
    """A relay re-running a round over fewer clients could difference the two averages."""
    import secure_infer.backends.crypten as backend

    monkeypatch.setattr(backend, "PartyPool", _no_pool)
    sealed = dict(two_parties["sealed"])
    del sealed["client-0"]
    with pytest.raises(ProtocolError, match="round 1 was aggregated already") as info:
        two_parties["agg"].aggregate(sealed, round=1)
    assert info.value.code == "round-replayed"


@pytest.mark.multiprocess
@pytest.mark.slow
def test_three_parties_drop_faulty_clients_and_average_the_rest(three_parties_with_faults) -> None:
    result = three_parties_with_faults["result"]
    updates = three_parties_with_faults["updates"]
    faulty = {"client-2", "client-5", "client-8"}
    assert set(result.dropped) == faulty
    assert (
        "aggregator 1" in result.dropped["client-2"]
        and "authentication" in result.dropped["client-2"]
    )
    assert "aggregator 0: no share delivered" in result.dropped["client-5"]
    assert "aggregator 2" in result.dropped["client-8"] and "client-9" in result.dropped["client-8"]
    remaining = sorted(set(updates) - faulty)
    assert result.clients == tuple(remaining)
    error = _max_error(result.arrays, _fedavg(updates, remaining))
    assert error < 1e-4, error
    assert result.total_weight == sum(updates[c][1] for c in remaining)
    # the faulty clients were left out, not averaged in as zeros (that would shrink the average)
    as_zeros = [
        a * result.total_weight / sum(w for _, w in updates.values())
        for a in _fedavg(updates, remaining)
    ]
    assert _max_error(result.arrays, as_zeros) > 100 * error
    assert len(result.bytes_per_party) == 3 and all(b > 0 for b in result.bytes_per_party)


def _no_pool(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no party should start")


def test_missing_shares_below_min_clients_fail_before_any_party_starts(monkeypatch) -> None:
    import secure_infer.backends.crypten as backend

    monkeypatch.setattr(backend, "PartyPool", _no_pool)
    updates = dict(list(_updates(2).items())[:3])
    agg = CrypTenAggregator(2, min_clients=3)
    sealed = _seal_all(agg, updates, round=0)
    sealed["client-1"] = sealed["client-1"][:1]
    with pytest.raises(ProtocolError, match="client-1") as info:
        agg.aggregate(sealed, round=0)
    assert info.value.code == "too-few-clients" and isinstance(info.value, SecureInferError)
    assert "min_clients=3" in str(info.value) and "nothing was revealed" in str(info.value)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_aggregators_reveal_nothing_when_authentication_leaves_too_few_clients() -> None:
    """Only the aggregators can tell a share was altered: they refuse together, before revealing."""
    updates = dict(list(_updates(3).items())[:3])
    agg = CrypTenAggregator(2, min_clients=3)
    sealed = _seal_all(agg, updates, round=4)
    sealed["client-0"][0] = _tamper(sealed["client-0"][0] or b"")
    with pytest.raises(ProtocolError, match="only 2 of 3 clients") as info:
        agg.aggregate(sealed, round=4)
    assert info.value.code == "too-few-clients" and "client-0" in str(info.value)
    assert "authentication" in str(info.value)


class _DyingJob(AggregationJob):
    """Aggregator 1 is killed (as by the OOM killer) after it opened its shares."""

    def run(self, crypten: Any, rank: int) -> dict[str, Any]:
        if rank == 1:
            self.open_all()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(crypten, rank)


class _DyingAggregator(CrypTenAggregator):
    job_class = _DyingJob


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_dead_aggregator_raises_party_failure() -> None:
    updates = dict(list(_updates(4).items())[:2])
    agg = _DyingAggregator(2, timeout=60)
    sealed = _seal_all(agg, updates, round=0)
    started = time.perf_counter()
    with pytest.raises(PartyFailure, match=r"party 1 \(aggregator 1\)") as info:
        agg.aggregate(sealed, round=0)
    assert "SIGKILL" in str(info.value)
    assert time.perf_counter() - started < 45  # reported from its exit, not after the timeout


def test_only_its_own_aggregator_opens_a_share() -> None:
    updates = _updates(5)
    agg = CrypTenAggregator(3)
    u, w = updates["client-0"]
    shares = share_update(u, w, agg.keys, client="client-0", round=3)
    keys = agg._private
    where = {"parties": 3, "round": 3, "client": "client-0", "shapes": SHAPES}
    opened = [open_share(s, keys[i], index=i, **where) for i, s in enumerate(shares)]
    expected = encode(np.concatenate([[float(w)], *[w * a.astype(np.float64).ravel() for a in u]]))
    assert np.array_equal(opened[0] + opened[1] + opened[2], expected)  # shares add up modulo 2**64
    with pytest.raises(ProtocolError) as info:  # aggregator 1's key on aggregator 0's share
        open_share(shares[0], keys[1], index=0, **where)
    assert info.value.code == "share-authentication"
    with pytest.raises(
        ProtocolError
    ) as info:  # presented as aggregator 1's share: the header says otherwise
        open_share(shares[0], keys[1], index=1, **where)
    assert info.value.code == "share-mismatch"
    for field, value in (
        ("round", 4),
        ("client", "client-1"),
    ):  # replayed to another round or client
        with pytest.raises(ProtocolError) as info:
            open_share(shares[0], keys[0], index=0, **{**where, field: value})
        assert info.value.code == "share-mismatch"
    header, _ = read_header(shares[0])  # what the relay sees in the clear: metadata only
    assert header.shapes == tuple(SHAPES) and header.aggregator == 0


def _byte_chi2(vector: np.ndarray) -> np.ndarray:
    """Chi-square of each of the 8 bytes of the ring elements against uniform over 0..255."""
    counts = np.stack(
        [np.bincount(column, minlength=256) for column in vector.view(np.uint8).reshape(-1, 8).T]
    )
    expected = len(vector) / 256
    return ((counts - expected) ** 2 / expected).sum(axis=1)


def _looks_uniform(vector: np.ndarray) -> bool:
    """Every byte of the elements is uniform: chi-square (255 dof) below its mean + 6 sd."""
    return bool(_byte_chi2(vector).max() < 255 + 6 * np.sqrt(2 * 255))


@pytest.mark.parametrize("parties", [2, 3])
def test_what_each_party_process_sees_does_not_reveal_the_update(parties: int) -> None:
    updates = _updates(6)
    agg = CrypTenAggregator(parties)
    sealed = _seal_all(agg, updates, round=2)
    jobs = agg.jobs(sealed, round=2)
    u, w = updates["client-3"]
    update = np.concatenate([[1.0], *[a.astype(np.float64).ravel() for a in u]]) * w
    encoded = encode(update)
    # the checks can fail: the plain encoding's high bytes are 0x00 or 0xff; it tracks the update
    assert not _looks_uniform(encoded)
    assert abs(np.corrcoef(encoded.astype(np.float64), update)[0, 1]) > 0.99
    views = []
    for rank, job in enumerate(jobs):
        # each party holds its own key and shares sealed to it alone
        assert job.private_key == agg._private[rank] and all(
            k not in job.__dict__.values() for i, k in enumerate(agg._private) if i != rank
        )
        assert all(read_header(s)[0].aggregator == rank for s in job.shares if s is not None)
        opened, reasons = job.open_all()
        assert reasons == {}
        view = opened[job.clients.index("client-3")]
        assert view is not None
        views.append(view)
        assert (view != encoded).mean() > 0.999
        assert _looks_uniform(view), _byte_chi2(view)
        # uncorrelated with the update: |r| within 5 standard errors of 0
        r = np.corrcoef(view.astype(np.float64), update)[0, 1]
        assert abs(r) < 5 / np.sqrt(len(view)), r
    # any parties - 1 colluding see uniform values too; all of them together hold the encoding
    assert _looks_uniform(np.sum(views[:-1], axis=0))
    assert np.array_equal(np.sum(views, axis=0), encoded)
    # a fresh sharing of the same update shares nothing with the first
    again = open_share(
        share_update(u, w, agg.keys, client="client-3", round=2)[0],
        agg._private[0],
        index=0,
        parties=parties,
        round=2,
        client="client-3",
        shapes=SHAPES,
    )
    assert (again != views[0]).mean() > 0.999


@pytest.mark.parametrize(
    ("arrays", "weight", "match"),
    [
        ([np.array([1.0, np.nan])], 10, "NaN"),
        ([np.ones(3)], 0, "positive"),
        ([np.ones(3)], float("inf"), "positive"),
        ([np.full(3, 1e5)], 1e5, "2\\*\\*31"),
    ],
)
def test_updates_that_cannot_be_shared_are_refused(arrays, weight, match) -> None:
    agg = CrypTenAggregator(2)
    with pytest.raises(ParameterError, match=match):
        share_update(arrays, weight, agg.keys, client="c", round=0)


def test_keys_of_one_full_set_are_required() -> None:
    first, second = CrypTenAggregator(2), CrypTenAggregator(3)
    with pytest.raises(ParameterError, match="all aggregators"):
        share_update([np.ones(2)], 1, first.keys[:1], client="c", round=0)
    with pytest.raises(ParameterError, match="all aggregators"):
        share_update([np.ones(2)], 1, [first.keys[0], second.keys[1]], client="c", round=0)
