"""PATE's vote aggregation on secret shares: GNMax and Confident-GNMax between CrypTen parties.

What: in cross-silo PATE each party (a silo) holds some of the teachers, hence
its own vote histogram (queries x classes) over the student's queries. The
silos run as CrypTen parties (:class:`~secure_infer.backends.crypten.PartyPool`,
one OS process each). Every party secret-shares its histogram and its own
noise shares (:func:`~secure_infer.pate.aggregation.noise_shares`, drawn from
its own generator with, by default, its own secret seed: no party knows the
total noise); the parties sum them on shares and, per query:

* Confident-GNMax: take the maximum count over classes of the noise-free
  summed votes, add the threshold noise, compare with ``T``, and open only the
  one answered/declined bit; then, for the answered queries only, take the
  argmax of votes + argmax noise and open only that label;
* GNMax: open the argmax label of every query.

Nothing else is ever opened: not the histogram, not a maximum count, not any
noise. Labels and answered bits go to every party (they are the mechanism's
public output, the student's training labels).

Why: the plaintext aggregator (:func:`~secure_infer.pate.aggregation.noisy_labels`)
needs one party that sees every silo's votes and the noise; a party that knew
the noise could subtract it and the privacy analysis would not hold.

Whose seed: a silo's noise share is a function of (its seed, its index, the
query's index) (:func:`~secure_infer.pate.aggregation.noise_shares`), so whoever
knows a silo's seed knows its share, and whoever knows every silo's seed knows
the whole noise and can undo it. By default (``seed=None``) each silo's party
draws its own seed from the operating system's CSPRNG inside its process, and
nobody else ever holds it. An integer ``seed`` (every silo uses it) or one seed
per silo makes the labels reproducible (:func:`plaintext_labels`), for tests
and simulations: whoever holds those seeds holds the noise.

Exactness: votes are small integers and every noise share lies on the 2^-16
grid of CrypTen's fixed-point encoding (16 fractional bits, the pool's
default), so the shared sums are exactly the float64 sums the plaintext
aggregator forms. Only additions, comparisons and products with comparison
bits (scale 1: no truncation) are used, so every comparison agrees with the
plaintext one: given the same seeds and ``offset``, :func:`plaintext_labels`
returns the same labels, -1s included, query for query. Ties (only possible
without noise, or by a 2^-16 coincidence) go to the lowest class, as
``numpy.argmax``: the parties compare ``classes * x - index`` (in units of
2^-16) instead of ``x``, which makes every value in a row distinct; CrypTen's
own ``argmax`` would break a tie at random. The maximum is a tree of pairwise
comparisons (``classes - 1`` per query, ``ceil(log2 classes)`` layers).

Threat model:

* the silos are semi-honest (they follow the protocol) and up to
  ``colluders`` of them may pool what they know: each noise share has variance
  ``sigma^2 / (parties - colluders)``, so the noise unknown to any
  ``colluders`` silos still has standard deviation ``sigma`` (the privacy
  analysis' sigma); CrypTen's additive sharing hides a silo's votes from any
  ``parties - 1`` of the others;
* multiplication triples: with ``dealer=True`` (the default) a separate
  trusted dealer process (CrypTen's TTP) deals them; the openings travel in
  the silos' own group, so it sees no vote or noise. With ``dealer=False`` CrypTen's TFP
  provider has rank 0 (silo 0) draw every triple itself, so silo 0 could
  recover every value multiplied (the summed votes and noise among them) from
  the openings of the Beaver protocol: it must then be trusted as the dealer
  would be. ``dealer=False`` saves a process and rounds (see the costs below);
* the parties' links (gloo over TCP on this host) are not encrypted: this
  module starts every silo on one host (:class:`MPCVoteAggregator`, which
  therefore holds every silo's votes: it stands for the silos together, for
  experiments and measurement); silos on separate hosts each run their own
  :class:`VoteAggregationJob` through ``run_crypten_party`` (over TLS links).

Cost (3 silos, Confident-GNMax, 10 classes, 200 queries in one chunk, half
answered; 2 shared CPU cores): about 55.7 kB sent per query over all parties,
3.2 rounds per query (635 rounds a chunk for rank 0, which also talks to the
dealer; 161 for the others), 11 ms of MPC work per query, and 0.074 s per query
wall time, most of it the parties' start-up (about 12 s per call). Without the
dealer: 51.2 kB, 0.8 rounds (161 a chunk) and 8 ms per query. Bytes grow with
queries and classes, rounds with chunks; `secure-infer pate` reports the figures of its own run.

Each party checks, in one all-gather before anything is shared, that all of
them were given the same public job (aggregator, offset, parties, colluders,
shape, chunk; not the seeds, which are each silo's own), and that every silo's
votes are valid counts. Queries are processed in chunks of ``chunk`` so memory stays bounded; the
rounds grow with the number of chunks, the bytes with the number of queries.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.backends.crypten import PartyJob
from secure_infer.pate.aggregation import (
    RESOLUTION,
    Aggregator,
    NoiseShares,
    noise_shares,
    noisy_labels,
)

PRECISION_BITS = 16  # CrypTen's fixed-point fractional bits: the grid of the noise shares
MAX_VOTES = 1 << 20  # per silo, query and class: far below what the 64-bit ring holds
# |classes * (votes + noise)| must stay below this (in units, not ring elements) for comparisons
_RING_UNITS = float(1 << 44)
_NOISE_BOUND = 64.0  # |noise| < 64 sigma: a Gaussian exceeds it with probability ~1e-890

__all__ = [
    "MAX_VOTES",
    "MPCVoteAggregator",
    "MPCVoteResult",
    "VoteAggregationJob",
    "plaintext_labels",
]


def _check_int(name: str, value: Any, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ParameterError(f"{name} must be an integer >= {low} ({what}), got {value!r}")
    return int(value)


def _check_setting(aggregator: Any, parties: Any, colluders: Any, offset: Any) -> tuple[int, int, int]:
    """Validate the public parameters every caller shares; return them as ints."""
    if not isinstance(aggregator, Aggregator):
        raise ParameterError(f"aggregator must be a secure_infer.pate.aggregation.Aggregator, got "
                             f"{type(aggregator).__name__}")
    parties = _check_int("parties", parties, 2, "one CrypTen party per silo; one silo needs no MPC: "
                         "use aggregation.noisy_labels")
    colluders = _check_int("colluders", colluders, 0, "how many silos may pool their noise shares")
    if colluders >= parties:
        raise ParameterError(f"colluders must be below parties: {colluders} colluders of {parties} silos "
                             "would know all the noise. Lower colluders or add silos")
    offset = _check_int("offset", offset, 0, "the index of the first query, for the noise")
    return parties, colluders, offset


def _check_seeds(seed: Any, parties: int, *, private: bool) -> tuple[int | None, ...]:
    """One seed per silo from ``seed``: an int for all, one int each, or (``private``) None: each draws its own."""
    if seed is None and private:
        return (None,) * parties
    if isinstance(seed, Sequence) and not isinstance(seed, str | bytes):
        if len(seed) != parties:
            raise ParameterError(f"seed holds {len(seed)} seeds for {parties} silos: give one per silo, one "
                                 "integer for all, or None (each silo draws a secret seed)")
        return tuple(_check_int(f"seed[{i}]", s, 0, "silo's noise seed") for i, s in enumerate(seed))
    what = "the noise seed of every silo; None: each silo draws a secret one" if private else \
        "the noise seed of every silo, or one per silo"
    return (_check_int("seed", seed, 0, what),) * parties


def _check_votes(silo_votes: Any, parties: int) -> list[np.ndarray]:
    """Each silo's histogram as int64 (queries, classes): same shape, non-negative integer counts."""
    if isinstance(silo_votes, np.ndarray) and silo_votes.ndim == 3:
        silo_votes = list(silo_votes)
    if not isinstance(silo_votes, Sequence) or isinstance(silo_votes, str | bytes):
        raise ParameterError("silo_votes must be a sequence with one (queries, classes) vote histogram per "
                             f"silo, got {type(silo_votes).__name__}")
    if len(silo_votes) != parties:
        raise ParameterError(f"silo_votes holds {len(silo_votes)} histograms for {parties} parties: give one "
                             "(queries, classes) histogram per silo, in rank order")
    out: list[np.ndarray] = []
    for i, votes in enumerate(silo_votes):
        try:
            array = np.asarray(votes)
        except Exception as exc:
            raise ParameterError(f"silo_votes[{i}] is not an array of counts: {exc}") from None
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
            raise ParameterError(f"silo_votes[{i}] must be (queries, classes) with at least 1 query and 2 "
                                 f"classes, got shape {array.shape}; vote_histograms() builds it from the "
                                 "teachers' predictions")
        if out and array.shape != out[0].shape:
            raise ParameterError(f"silo_votes[{i}] has shape {array.shape} but silo_votes[0] has "
                                 f"{out[0].shape}: every silo votes on the same queries and classes")
        if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                           or np.issubdtype(array.dtype, np.floating)):
            raise ParameterError(f"silo_votes[{i}] must hold integer vote counts, got dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all() or (array != np.round(array)).any():
                raise ParameterError(f"silo_votes[{i}] must hold whole vote counts; it holds non-integer or "
                                     "non-finite values")
        if array.min() < 0 or array.max() > MAX_VOTES:
            raise ParameterError(f"silo_votes[{i}] must hold counts in 0..{MAX_VOTES}, got "
                                 f"{array.min()}..{array.max()}")
        out.append(array.astype(np.int64))
    return out


def _check_ring(aggregator: Aggregator, classes: int, most_votes: float, parties: int, colluders: int) -> None:
    """Refuse settings whose tie-broken values could overflow CrypTen's 64-bit ring.

    The summed noise has the released sigmas (every silo's share), larger
    than ``aggregator``'s by sqrt(parties / (parties - colluders)).
    """
    total = math.sqrt(parties / (parties - colluders))
    noise = _NOISE_BOUND * total * max(aggregator.sigma, aggregator.sigma_threshold)
    if classes * (most_votes + noise) >= _RING_UNITS:
        raise ParameterError(f"classes * (votes + 64 sigma) = {classes * (most_votes + noise):.3g} does not fit "
                             f"CrypTen's fixed-point ring (limit {_RING_UNITS:.3g}); lower sigma or the counts")


def _digest(description: dict[str, Any]) -> int:
    """A signed 64-bit digest of the public job: every party must hold the same one."""
    text = json.dumps(description, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)


def _tree_max(x: Any, crypten: Any) -> Any:
    """Row maxima of the shared (rows, k) ``x``: pairwise ``b + [a >= b] (a - b)`` layers, exact."""
    while x.size(1) > 1:
        half = x.size(1) // 2
        a, b = x[:, :half], x[:, half:2 * half]
        larger = b + (a >= b) * (a - b)  # the bit has scale 1: the product is not truncated
        x = crypten.cat([larger, x[:, 2 * half:]], dim=1) if x.size(1) % 2 else larger
    return x[:, 0]


def _bits(shared: Any, what: str) -> Any:
    """Open a shared 0/1 tensor (scale 1) to every party, as a bool tensor."""
    raw = shared.reveal()  # raw ring elements: the bits themselves
    if not bool(((raw == 0) | (raw == 1)).all()):
        raise ProtocolError(f"the opened {what} are not bits; the parties' shares are inconsistent",
                            code="bad-reveal")
    return raw == 1


@dataclass
class VoteAggregationJob(PartyJob):
    """Silo ``index``'s work: share its votes and noise, and open only the labels.

    It carries this silo's own votes (queries, classes) and the public
    parameters; the noise is drawn inside the party, from (``seed``,
    ``index``, query). ``seed`` is this silo's own (None: a secret one drawn
    from the operating system inside the party). Runs inside a CrypTen party
    (:class:`PartyPool`, or ``run_crypten_party`` on the silo's own host).
    ``parties=1`` runs it alone (one in-process party: for tests).
    """

    index: int
    parties: int
    votes: np.ndarray
    aggregator: Aggregator
    colluders: int
    seed: int | None
    offset: int = 0
    chunk: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.parties:
            raise ParameterError(f"silo index {self.index} is outside 0..{self.parties - 1}")
        if not 0 <= self.colluders < self.parties:
            raise ParameterError(f"colluders must be in 0..{self.parties - 1}, got {self.colluders}")
        if self.chunk < 1 or self.offset < 0:
            raise ParameterError(f"chunk must be >= 1 and offset >= 0, got {self.chunk} and {self.offset}")

    def description(self) -> dict[str, Any]:
        """The public job every silo must agree on (no votes in it)."""
        agg = self.aggregator
        return {
            "aggregator": [agg.sigma, agg.threshold, agg.sigma_threshold],
            "parties": self.parties,
            "colluders": self.colluders,
            "offset": self.offset,
            "shape": list(np.shape(self.votes)),
            "chunk": self.chunk,
        }

    def _valid_votes(self) -> bool:
        votes = np.asarray(self.votes)
        return bool(votes.ndim == 2 and np.issubdtype(votes.dtype, np.integer) and votes.size
                    and votes.min() >= 0 and votes.max() <= MAX_VOTES)

    def run(self, crypten: Any, rank: int) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        if rank != self.index:
            raise ProtocolError(f"silo {self.index}'s job was started as rank {rank}")
        if int(crypten.cfg.encoder.precision_bits) != PRECISION_BITS:
            raise ProtocolError(f"the noise shares lie on the 2^-{PRECISION_BITS} grid; CrypTen runs with "
                                f"{crypten.cfg.encoder.precision_bits} fractional bits")
        _check_ring(self.aggregator, int(np.shape(self.votes)[-1]), float(self.parties * MAX_VOTES), self.parties,
                    self.colluders)
        comm = crypten.communicator.get()
        # one round: every silo's public job digest and whether its own votes are valid counts
        mine = torch.tensor([_digest(self.description()), int(self._valid_votes())], dtype=torch.long)
        everyone = comm.all_gather(mine)
        if any(int(t[0]) != int(mine[0]) for t in everyone):
            raise ProtocolError("the silos were given different aggregators, offsets, party counts, "
                                "colluders, shapes or chunks; nothing was shared. Give every silo the same "
                                "public job", code="job-mismatch")
        invalid = [p for p, t in enumerate(everyone) if not int(t[1])]
        if invalid:
            raise ProtocolError(f"silo(s) {invalid} hold votes that are not counts in 0..{MAX_VOTES}; nothing "
                                "was shared", code="bad-votes")
        votes = np.asarray(self.votes, dtype=np.int64)
        queries, classes = votes.shape
        seed = self.seed if self.seed is not None else secrets.randbits(63)  # known to this party alone
        agg = self.aggregator
        # ties to the lowest class: compare classes * x - index (index in units of 2^-16)
        tie_break = torch.arange(classes, dtype=torch.float64) * RESOLUTION
        threshold = None
        if agg.threshold is not None:  # x >= T on the grid is x >= T rounded up to the grid
            threshold = math.ceil(float(agg.threshold) / RESOLUTION) * RESOLUTION
        labels = np.full(queries, -1, dtype=np.int64)
        for start in range(0, queries, self.chunk):
            stop = min(queries, start + self.chunk)
            rows = stop - start
            noise = noise_shares(agg, queries=rows, classes=classes, party=rank, parties=self.parties,
                                 colluders=self.colluders, seed=seed, offset=self.offset + start)
            counts = votes[start:stop].astype(np.float64)
            if threshold is None:
                own = counts + noise.argmax
            else:
                own = np.concatenate([counts, noise.argmax, noise.threshold[:, None]], axis=1)
            total = None
            for p in range(self.parties):  # sharing from p is local (pseudo-random zero shares)
                data = torch.from_numpy(own) if p == rank else torch.zeros(own.shape, dtype=torch.float64)
                shared = crypten.cryptensor(data, src=p)
                total = shared if total is None else total + shared
            assert total is not None
            if threshold is None:
                picked = torch.arange(rows)
                noisy = total
            else:
                count, noise_argmax, noise_threshold = (
                    total[:, :classes], total[:, classes:2 * classes], total[:, 2 * classes])
                answered = _bits((_tree_max(count, crypten) + noise_threshold) >= threshold,
                                 "answered bits")
                picked = torch.nonzero(answered).flatten()
                if picked.numel() == 0:
                    continue
                noisy = (count + noise_argmax)[picked]
            distinct = noisy * classes - tie_break
            one_hot = _bits(distinct >= _tree_max(distinct, crypten).unsqueeze(1), "argmax one-hots")
            if not bool((one_hot.sum(dim=1) == 1).all()):
                raise ProtocolError("an opened argmax is not one-hot; the parties' shares are inconsistent",
                                    code="bad-reveal")
            labels[start + picked.numpy()] = one_hot.long().argmax(dim=1).numpy()
        return {"labels": labels, "mpc_seconds": time.perf_counter() - started}


@dataclass(frozen=True)
class MPCVoteResult:
    """The released labels of one call and what they cost.

    Attributes:
        labels: int64 (queries,), the noisy argmax per query, -1 where
            Confident-GNMax declined to answer.
        answered: how many queries were answered.
        queries: how many queries were asked.
        offset: the index of the first query in the noise generators (pass it
            to :func:`plaintext_labels` to reproduce the labels).
        seconds: wall time of the whole call, party start-up and shut-down included.
        mpc_seconds: the parties' work alone (agreeing, sharing, comparing,
            opening), slowest party.
        bytes_per_party: bytes each silo party sent (CrypTen's communicator counts).
        rounds: communication rounds (the most any party took part in).
        per_party: one dict per silo: rank, role, bytes, rounds, mpc_seconds,
            party_seconds (from its CrypTen start to its result).
    """

    labels: np.ndarray
    answered: int
    queries: int
    offset: int
    seconds: float
    mpc_seconds: float
    bytes_per_party: tuple[int, ...]
    rounds: int
    per_party: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    @property
    def seconds_per_query(self) -> float:
        """Wall time of the whole call (party start-up included) per query."""
        return self.seconds / self.queries

    @property
    def bytes_per_query(self) -> float:
        """Bytes all silos together sent, per query."""
        return sum(self.bytes_per_party) / self.queries

    @property
    def rounds_per_query(self) -> float:
        """Communication rounds per query; chunks amortise them, so this falls as queries grow."""
        return self.rounds / self.queries


class MPCVoteAggregator:
    """``parties`` silos as CrypTen parties on this host, started for each call.

    :meth:`labels` starts one :class:`PartyPool` per call (one process per
    silo, plus the trusted dealer unless ``dealer=False``: see the module's
    threat model), gives each party only its own histogram, and returns the
    labels every party opened. ``chunk``: queries shared and compared at once
    (memory grows with it, rounds with the number of chunks).

    ``seed``: None (the default) has every silo draw a secret seed of its own
    inside its party, per call; an integer (all silos) or one per silo makes
    the labels reproducible by whoever holds the seeds (tests, simulations; see
    the module's note on seeds). Successive calls draw fresh noise even with
    fixed seeds: each call's queries take the next query indices in the noise
    generators (:attr:`offset` advances), so two calls of one instance never
    reuse the noise of one query index (reused noise on different votes could
    be differenced away). A new instance with the same fixed seeds starts at
    ``offset`` again: keep one instance, or pass the offset on, when seeds
    are fixed. A call that fails keeps its offset, although a failure after
    some chunks were opened has used their noise: start the next call past
    them (or use secret seeds, the default, where none of this arises).
    """

    job_class: type[VoteAggregationJob] = VoteAggregationJob

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        parties: int = 3,
        colluders: int = 1,
        seed: int | Sequence[int] | None = None,
        offset: int = 0,
        chunk: int = 256,
        dealer: bool = True,
        timeout: float = 300.0,
    ) -> None:
        self.parties, self.colluders, self.offset = _check_setting(aggregator, parties, colluders, offset)
        self.seeds = _check_seeds(seed, self.parties, private=True)
        self.aggregator = aggregator
        self.chunk = _check_int("chunk", chunk, 1, "queries shared and compared at once")
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ParameterError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.dealer = bool(dealer)

    def jobs(self, silo_votes: Sequence[np.ndarray]) -> list[VoteAggregationJob]:
        """Each silo's job for the next call: its own votes and the public parameters."""
        votes = _check_votes(silo_votes, self.parties)
        _check_ring(self.aggregator, votes[0].shape[1], float(sum(v.max() for v in votes)), self.parties,
                    self.colluders)
        return [
            self.job_class(i, self.parties, votes[i], self.aggregator, self.colluders, self.seeds[i],
                           self.offset, self.chunk)
            for i in range(self.parties)
        ]

    def labels(self, silo_votes: Sequence[np.ndarray]) -> MPCVoteResult:
        """The noisy labels of the silos' summed votes; ``silo_votes[i]`` is silo ``i``'s (queries, classes).

        Raises:
            ParameterError: the histograms are not one per silo, of one shape,
                of non-negative integer counts (before any party starts).
            ProtocolError: the parties disagreed on the job or on what they opened.
            PartyFailure: a silo's party died, failed or timed out (the message names it).
        """
        from secure_infer.backends.crypten import PartyPool

        started = time.perf_counter()
        jobs = self.jobs(silo_votes)
        queries = int(jobs[0].votes.shape[0])
        pool = PartyPool(jobs, dealer=self.dealer, timeout=self.timeout,
                         roles=[f"silo {i}" for i in range(self.parties)])
        try:
            setup = {rank: dict(pool.setup[rank]) for rank in range(self.parties)}
        finally:
            pool.close()
        results = [setup[r]["result"] for r in range(self.parties)]
        labels = np.asarray(results[0]["labels"], dtype=np.int64)
        if any(not np.array_equal(np.asarray(r["labels"]), labels) for r in results[1:]):
            raise ProtocolError("the silos opened different labels; their shares are inconsistent",
                                code="bad-reveal")
        offset = self.offset
        self.offset += queries  # the next call draws fresh noise
        sent = tuple(int(setup[r]["bytes"]) for r in range(self.parties))
        rounds = tuple(int(setup[r]["rounds"]) for r in range(self.parties))
        alone = tuple(float(results[r]["mpc_seconds"]) for r in range(self.parties))
        per_party = tuple(
            {
                "rank": r,
                "role": f"silo {r}",
                "bytes": sent[r],
                "rounds": rounds[r],
                "mpc_seconds": alone[r],
                "party_seconds": float(setup[r]["seconds"]),
            }
            for r in range(self.parties)
        )
        return MPCVoteResult(
            labels=labels,
            answered=int((labels >= 0).sum()),
            queries=queries,
            offset=offset,
            seconds=time.perf_counter() - started,
            mpc_seconds=max(alone),
            bytes_per_party=sent,
            rounds=max(rounds),
            per_party=per_party,
        )


def plaintext_labels(
    silo_votes: Sequence[np.ndarray],
    aggregator: Aggregator,
    *,
    parties: int,
    colluders: int,
    seed: int | Sequence[int],
    offset: int = 0,
) -> np.ndarray:
    """What :class:`MPCVoteAggregator` opens, computed in the clear (for tests and simulation).

    ``noisy_labels`` of the summed votes with the sum of every silo's
    ``noise_shares`` (party ``p`` of ``parties``, same ``colluders`` and
    ``offset``; ``seed`` one integer for all silos or one per silo, as given
    to :class:`MPCVoteAggregator`): the same noise the parties add on shares,
    so the same labels, query for query.
    """
    parties, colluders, offset = _check_setting(aggregator, parties, colluders, offset)
    seeds = [s for s in _check_seeds(seed, parties, private=False) if s is not None]
    votes = _check_votes(silo_votes, parties)
    queries, classes = votes[0].shape
    noise: NoiseShares | None = None
    for p in range(parties):
        share = noise_shares(aggregator, queries=queries, classes=classes, party=p, parties=parties,
                             colluders=colluders, seed=seeds[p], offset=offset)
        noise = share if noise is None else noise + share
    assert noise is not None
    return noisy_labels(np.sum(votes, axis=0), aggregator, noise)
