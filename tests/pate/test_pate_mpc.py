"""PATE's vote aggregation between CrypTen silo parties: the same labels as in the clear.

The silos' labels must equal :func:`plaintext_labels` (the plaintext
aggregator given the same noise shares) query for query, declined queries
included; a silo that dies must be named; bad inputs must be refused before
any party starts. Real party processes are started only a few times: each
multi-process fixture runs one aggregation that several tests read. The
comparison logic (ties, a threshold met exactly, chunk boundaries) is also
checked on one in-process CrypTen party, without starting any process.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest

from secure_infer._errors import ParameterError, PartyFailure, ProtocolError
from secure_infer.pate.aggregation import Aggregator, noise_shares, noisy_labels, vote_histograms
from secure_infer.pate.mpc import (
    MAX_VOTES,
    MPCVoteAggregator,
    VoteAggregationJob,
    plaintext_labels,
)

CLASSES = 10
PARTY_MODULE = b"secure_infer.backends.crypten._party"


def _silo_votes(queries: int, parties: int, *, teachers: int = 20, seed: int = 0) -> list[np.ndarray]:
    """Each silo's histogram from its teachers' predictions: even queries confident, odd ones split."""
    rng = np.random.default_rng(seed)
    probs = []
    for q in range(queries):
        if q % 2 == 0:  # the teachers agree on one class
            p = np.full(CLASSES, 0.02 / (CLASSES - 1))
            p[rng.integers(CLASSES)] = 0.98
        else:  # the teachers disagree
            p = rng.dirichlet(np.ones(CLASSES))
        probs.append(p / p.sum())
    return [
        vote_histograms(np.array([[rng.choice(CLASSES, p=p) for p in probs] for _ in range(teachers)]),
                        CLASSES)
        for _ in range(parties)
    ]


CONFIDENT = Aggregator(sigma=4.0, threshold=40.0, sigma_threshold=6.0)
SEEDS = (11, 12, 13)


@pytest.fixture(scope="module")
def three_silos() -> dict[str, Any]:
    """Three silos of 20 teachers each, Confident-GNMax on 80 queries (one party start, with the dealer).

    Each silo has its own seed, given here so that the test can reproduce the noise.
    """
    votes = _silo_votes(80, 3)
    agg = MPCVoteAggregator(CONFIDENT, parties=3, colluders=1, seed=SEEDS, chunk=32, timeout=180)
    result = agg.labels(votes)
    return {"agg": agg, "votes": votes, "result": result}


@pytest.fixture(scope="module")
def two_silos() -> dict[str, Any]:
    """Two silos, plain GNMax on 60 queries, without the dealer (silo 0 draws the triples)."""
    votes = _silo_votes(60, 2, seed=1)
    aggregator = Aggregator(sigma=3.0)
    agg = MPCVoteAggregator(aggregator, parties=2, colluders=1, seed=5, dealer=False, timeout=180)
    return {"aggregator": aggregator, "votes": votes, "result": agg.labels(votes)}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_three_silos_release_the_plaintext_confident_gnmax_labels(three_silos) -> None:
    result, votes = three_silos["result"], three_silos["votes"]
    want = plaintext_labels(votes, CONFIDENT, parties=3, colluders=1, seed=SEEDS, offset=result.offset)
    assert result.labels.dtype == np.int64 and result.labels.shape == (80,)
    assert np.array_equal(result.labels, want), np.flatnonzero(result.labels != want)
    # a mix: confident queries answered, split ones declined, and the labels are the teachers' choice
    assert 10 < result.answered < 70 and result.answered == int((want >= 0).sum())
    answered = result.labels >= 0
    total = np.sum(votes, axis=0)
    assert (result.labels[answered] == total[answered].argmax(axis=1)).mean() > 0.9
    assert result.queries == 80 and result.offset == 0


@pytest.mark.multiprocess
@pytest.mark.slow
def test_each_call_draws_fresh_noise(three_silos) -> None:
    """The next call's queries take the next noise indices: no query's noise is used twice."""
    agg = three_silos["agg"]
    assert agg.offset == 80
    votes = three_silos["votes"]
    again = plaintext_labels(votes, CONFIDENT, parties=3, colluders=1, seed=SEEDS, offset=agg.offset)
    assert not np.array_equal(again, three_silos["result"].labels)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_cost_is_reported(three_silos) -> None:
    result = three_silos["result"]
    assert result.seconds > result.mpc_seconds > 0
    assert len(result.bytes_per_party) == 3 and all(b > 0 for b in result.bytes_per_party)
    assert result.rounds >= 1
    assert result.bytes_per_query == pytest.approx(sum(result.bytes_per_party) / 80)
    assert result.rounds_per_query == pytest.approx(result.rounds / 80)
    assert result.seconds_per_query == pytest.approx(result.seconds / 80)
    assert [p["role"] for p in result.per_party] == ["silo 0", "silo 1", "silo 2"]
    assert result.rounds == max(p["rounds"] for p in result.per_party)
    assert tuple(p["bytes"] for p in result.per_party) == result.bytes_per_party


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_silos_release_the_plaintext_gnmax_labels(two_silos) -> None:
    result, votes = two_silos["result"], two_silos["votes"]
    want = plaintext_labels(votes, two_silos["aggregator"], parties=2, colluders=1, seed=5)
    assert np.array_equal(result.labels, want), np.flatnonzero(result.labels != want)
    assert result.answered == result.queries == 60 and (result.labels >= 0).all()
    assert len(result.bytes_per_party) == 2 and all(b > 0 for b in result.bytes_per_party)


def _children_running(module: bytes) -> dict[int, int]:
    """Rank -> pid of this process's children running ``python -m <module> <rank>``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and module in argv and argv.index(module) + 1 < len(argv):
            found[int(argv[argv.index(module) + 1])] = int(entry)
    return found


def _sockets(pid: int) -> int:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_silo_killed_mid_run_raises_party_failure_naming_it() -> None:
    """SIGKILL silo 2 (as the OOM killer would) once it has joined its peers and is comparing."""
    votes = _silo_votes(640, 3, seed=2)  # 32 chunks of 20: about 30 s of comparisons on 2 cores
    agg = MPCVoteAggregator(CONFIDENT, parties=3, colluders=1, chunk=20, dealer=False, timeout=120)
    killed: dict[str, float] = {}

    def kill_silo_2() -> None:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            pid = _children_running(PARTY_MODULE).get(2)
            # a party with its gloo links to both peers open has finished crypten.init(): the job runs
            if pid is not None and _sockets(pid) >= 6:
                time.sleep(1.5)
                os.kill(pid, signal.SIGKILL)
                killed["at"] = time.monotonic()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_silo_2, daemon=True)
    killer.start()
    with pytest.raises(PartyFailure, match=r"party 2 \(silo 2\)") as info:
        agg.labels(votes)
    killer.join(5)
    assert "at" in killed, "the test never found silo 2's process"
    assert time.monotonic() - killed["at"] < 20  # reported from its exit, not after the timeout
    assert "SIGKILL" in str(info.value)
    assert _children_running(PARTY_MODULE) == {}  # every other party was stopped too
    assert agg.offset == 0  # nothing was released: the noise indices were not used up


def _no_pool(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no party should start")


@pytest.mark.parametrize(
    ("votes", "match"),
    [
        ([np.ones((4, 3), int)] * 2, "2 histograms for 3 parties"),
        ([np.ones((4, 3), int), np.ones((4, 3), int), np.ones((5, 3), int)], r"silo_votes\[2\] has shape"),
        ([np.ones((4, 3), int), np.ones((4, 3), int), -np.ones((4, 3), int)], r"silo_votes\[2\] must hold counts"),
        ([np.full((4, 3), 1.5)] * 3, "whole vote counts"),
        ([np.full((4, 3), np.nan)] * 3, "whole vote counts"),
        ([np.ones(3, int)] * 3, r"\(queries, classes\)"),
        ([np.ones((4, 1), int)] * 3, "2 classes"),
        ([np.ones((0, 3), int)] * 3, "at least 1 query"),
        ([np.ones((4, 3), bool)] * 3, "integer vote counts"),
        ([np.full((4, 3), MAX_VOTES + 1)] * 3, "counts in 0"),
        ("votes", "one \\(queries, classes\\) vote histogram per silo"),
    ],
)
def test_bad_votes_are_refused_before_any_party_starts(votes, match, monkeypatch) -> None:
    import secure_infer.backends.crypten as backend

    monkeypatch.setattr(backend, "PartyPool", _no_pool)
    with pytest.raises(ParameterError, match=match):
        MPCVoteAggregator(CONFIDENT, parties=3).labels(votes)
    with pytest.raises(ParameterError, match=match):
        plaintext_labels(votes, CONFIDENT, parties=3, colluders=1, seed=0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"parties": 1}, "parties must be an integer >= 2"),
        ({"parties": 3, "colluders": 3}, "colluders must be below parties"),
        ({"colluders": -1}, "colluders must be an integer >= 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": (1, 2)}, "seed holds 2 seeds for 3 silos"),
        ({"seed": (1, 2, -3)}, r"seed\[2\] must be an integer >= 0"),
        ({"chunk": 0}, "chunk must be an integer >= 1"),
        ({"timeout": 0}, "timeout must be a positive"),
        ({"aggregator": "gnmax"}, "aggregator must be a secure_infer.pate.aggregation.Aggregator"),
    ],
)
def test_bad_settings_are_refused(options, match) -> None:
    aggregator = options.pop("aggregator", CONFIDENT)
    with pytest.raises(ParameterError, match=match):
        MPCVoteAggregator(aggregator, **options)


def test_votes_that_would_overflow_the_ring_are_refused(monkeypatch) -> None:
    import secure_infer.backends.crypten as backend

    monkeypatch.setattr(backend, "PartyPool", _no_pool)
    with pytest.raises(ParameterError, match="does not fit"):
        MPCVoteAggregator(Aggregator(sigma=1e12), parties=2).labels([np.ones((2, 3), int)] * 2)


@pytest.fixture(scope="module")
def crypten_in_process() -> Any:
    """CrypTen in this process as a world of one party: the job's comparisons without a pool."""
    from secure_infer.backends.crypten import _init_in_process

    return _init_in_process(16)


@pytest.mark.parametrize(
    "aggregator",
    [
        Aggregator(sigma=2.0**-18),  # most noise rounds to 0 on the 2^-16 grid: exact ties and 1-step gaps
        # threshold noise of 0 or one grid step: max + 0 meets T exactly; max - 2^-16 falls short
        Aggregator(sigma=2.0**-18, threshold=3.0, sigma_threshold=2.0**-17),
        Aggregator(sigma=2.0**-18, threshold=3.0 - 2.0**-17, sigma_threshold=2.0**-17),  # T off the grid
        Aggregator(sigma=2.0, threshold=4.5, sigma_threshold=1.5),
    ],
    ids=["ties", "threshold-met-exactly", "threshold-off-grid", "noisy"],
)
def test_the_job_compares_exactly_and_breaks_ties_like_numpy(crypten_in_process, aggregator) -> None:
    rng = np.random.default_rng(3)
    votes = rng.integers(0, 4, size=(45, 5))
    votes[:12] = [3, 3, 1, 3, 0]  # tied maxima: numpy takes the first
    job = VoteAggregationJob(0, 1, votes, aggregator, colluders=0, seed=7, offset=13, chunk=8)
    got = job.run(crypten_in_process, 0)["labels"]
    want = noisy_labels(votes, aggregator, noise_shares(aggregator, queries=45, classes=5, seed=7, offset=13))
    assert np.array_equal(got, want), np.flatnonzero(got != want)
    noise = noise_shares(aggregator, queries=45, classes=5, seed=7, offset=13)
    if aggregator.sigma < 1e-3:  # where the noise is exactly 0, ties go to the lowest class
        quiet = (noise.argmax[:12] == 0).all(axis=1) & (got[:12] >= 0)
        assert quiet.any() and (got[:12][quiet] == 0).all()
    if aggregator.threshold is not None and aggregator.sigma_threshold < 1e-3:
        top = votes.max(axis=1)
        met, short = (top == 3) & (noise.threshold == 0), (top == 3) & (noise.threshold < 0)
        assert met.any() and short.any()
        assert (got[met] >= 0).all() and (got[short] == -1).all()


def test_a_job_started_as_another_rank_refuses(crypten_in_process) -> None:
    job = VoteAggregationJob(1, 2, np.ones((2, 3), int), CONFIDENT, colluders=1, seed=0)
    with pytest.raises(ProtocolError, match="silo 1's job was started as rank 0"):
        job.run(crypten_in_process, 0)


def test_each_silo_job_holds_only_its_own_seed_and_agrees_without_it() -> None:
    votes = _silo_votes(4, 3)
    secret = MPCVoteAggregator(CONFIDENT, parties=3).jobs(votes)
    assert [job.seed for job in secret] == [None] * 3  # each party draws its own, inside its process
    given = MPCVoteAggregator(CONFIDENT, parties=3, seed=SEEDS).jobs(votes)
    assert [job.seed for job in given] == list(SEEDS)
    assert all(np.array_equal(job.votes, votes[i]) for i, job in enumerate(given))
    # the public job the silos compare names no seed: a silo's seed is its own
    assert len({json.dumps(job.description()) for job in secret + given}) == 1
    assert "seed" not in json.dumps(given[0].description())


def test_a_job_without_a_seed_draws_a_secret_one_each_time(crypten_in_process) -> None:
    votes = np.random.default_rng(4).integers(0, 4, size=(40, 5))
    aggregator = Aggregator(sigma=50.0)
    runs = [VoteAggregationJob(0, 1, votes, aggregator, colluders=0, seed=None).run(crypten_in_process, 0)
            for _ in range(2)]
    assert not np.array_equal(runs[0]["labels"], runs[1]["labels"])
