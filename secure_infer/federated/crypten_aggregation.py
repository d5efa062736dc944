"""Secure aggregation of federated-learning updates by CrypTen aggregator parties.

What: each client encodes ``weight * update`` and ``weight`` (its number of
examples) in CrypTen's fixed-point ring (16 fractional bits, int64 with
wrap-around), splits the vector into one additive share per aggregator with
the operating system's CSPRNG, and seals share ``i`` to aggregator ``i``
(ephemeral X25519, HKDF-SHA256, ChaCha20-Poly1305; round, client, aggregator
index, party count and shapes are authenticated as associated data). The
aggregators run as real CrypTen party processes (:class:`PartyPool`); each
receives only its own sealed shares and its own private key, opens them, and
the parties sum the clients' shared vectors inside CrypTen and open the sum to
rank 0. The weighted FedAvg average is that sum divided by the summed weight.

Why: a Flower server that averages plaintext updates sees every client's
update, and an update can give a client's training data away (gradient
inversion, membership inference). Here the server only relays sealed bytes.

Threat model:

* the aggregators are semi-honest and do not collude: any ``parties - 1`` of
  them together see only uniform ring elements (each share alone is
  independent of the update);
* the relaying server sees sealed bytes and their public header (round,
  client id, aggregator index, shapes), never an update or a client's weight;
  it cannot open, swap, replay (another round, client or aggregator) or alter
  a share without the aggregator noticing, and a :class:`CrypTenAggregator`
  aggregates each round number once, so the server cannot difference two
  aggregates of one round over different client subsets (the record is in
  memory: a restarted aggregator should take new keys);
* clients are trusted to share well-formed values: a client can poison the
  average (as in any FedAvg); nothing here proves its shares are in range.

What is revealed: the weighted sum of the included clients' updates and their
total weight (the total number of examples, which plain FedAvg makes public
anyway); the average is the one divided by the other. Given the total, the sum
and the average determine each other, so revealing the sum discloses nothing
the average does not; dividing in the clear (float64) rather than inside
CrypTen is exact, where CrypTen's public-divisor truncation adds a rounding
error and, between two parties, a small chance per element of a wrap-around
that makes that element wildly wrong. Individual clients' weights stay hidden.

Dropped clients: a client whose share for any aggregator is missing, malformed
or fails authentication is excluded by every aggregator (they agree on the set
in one all-gather round before anything is revealed) and reported in
:attr:`AggregationResult.dropped`; it is never averaged in as zeros. If fewer
than ``min_clients`` remain the parties reveal nothing and
:meth:`CrypTenAggregator.aggregate` raises :class:`ProtocolError`.

Deployment: :class:`CrypTenAggregator` starts all aggregator parties on this
host, so the process that holds it holds every aggregator's private key; it
stands for the aggregators together and must not be the relaying server.
Aggregators on separate hosts each hold one private key and run
:class:`AggregationJob` through ``run_crypten_party`` (see ``protocols.mpc``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.backends.crypten import PartyJob

FRACTION_BITS = 16  # CrypTen's default encoder: x is held as round(x * 2**16) in int64
SCALE = 1 << FRACTION_BITS
# |weight * update| and weight per client: encoded below 2**47, so 2**15 clients' sum fits in int64
MAX_ABS = float(1 << 31)
MAX_CLIENTS = 1 << 15
MAGIC = b"SIAG"  # secure-infer aggregation share, format 1
VERSION = 1
MAX_HEADER = 1 << 16
_INFO = b"secure-infer crypten-aggregation share v1"
_KEY_BYTES = 32


@dataclass(frozen=True)
class AggregatorKey:
    """The public key a client seals aggregator ``index``'s share to (one of ``parties``).

    ``public`` is the raw 32-byte X25519 public key: it can travel in a Flower
    config as bytes (``AggregatorKey(index, parties, raw)`` on the client).
    """

    index: int
    parties: int
    public: bytes

    def __post_init__(self) -> None:
        if len(self.public) != _KEY_BYTES:
            raise ParameterError(f"an X25519 public key is 32 bytes, got {len(self.public)}")
        if not 0 <= self.index < self.parties:
            raise ParameterError(f"aggregator index {self.index} is outside 0..{self.parties - 1}")

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of SHA-256 of the key, for logs and out-of-band checks."""
        return hashlib.sha256(self.public).hexdigest()[:16]


@dataclass(frozen=True)
class ShareHeader:
    """The public, authenticated metadata of one sealed share."""

    round: int
    client: str
    aggregator: int
    parties: int
    shapes: tuple[tuple[int, ...], ...]
    fraction_bits: int = FRACTION_BITS

    @property
    def elements(self) -> int:
        """Ring elements in the share: the weight, then every array flattened."""
        return 1 + sum(math.prod(s) for s in self.shapes)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": VERSION,
                "round": self.round,
                "client": self.client,
                "aggregator": self.aggregator,
                "parties": self.parties,
                "shapes": [list(s) for s in self.shapes],
                "fraction_bits": self.fraction_bits,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()


def _bad(message: str, code: str) -> ProtocolError:
    return ProtocolError(message, code=code)


def read_header(sealed: bytes) -> tuple[ShareHeader, int]:
    """The header of a sealed share (NOT authenticated yet) and where its sealed body starts.

    Raises:
        ProtocolError: code ``share-malformed`` for anything that is not a share.
    """
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise _bad(f"a sealed share is bytes, got {type(sealed).__name__}", "share-malformed")
    sealed = bytes(sealed)
    if len(sealed) < len(MAGIC) + 4 or not sealed.startswith(MAGIC):
        raise _bad("not a sealed aggregation share (bad magic)", "share-malformed")
    (size,) = struct.unpack_from(">I", sealed, len(MAGIC))
    start = len(MAGIC) + 4
    if size > MAX_HEADER or start + size + _KEY_BYTES + 16 > len(sealed):
        raise _bad(f"share header of {size} bytes does not fit the share", "share-malformed")
    try:
        raw = json.loads(sealed[start : start + size])
        shapes = tuple(tuple(int(d) for d in s) for s in raw["shapes"])
        header = ShareHeader(
            int(raw["round"]),
            str(raw["client"]),
            int(raw["aggregator"]),
            int(raw["parties"]),
            shapes,
            int(raw["fraction_bits"]),
        )
        version = int(raw["v"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad(f"share header is not valid: {exc}", "share-malformed") from None
    if version != VERSION or any(d < 0 for s in header.shapes for d in s):
        raise _bad(
            f"share header version {version} or its shapes are not supported", "share-malformed"
        )
    return header, start + size


def _keystream(shared: bytes, ephemeral: bytes, recipient: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    """AEAD key and nonce for one share: fresh per share, as the ephemeral key is."""
    okm = HKDF(
        algorithm=hashes.SHA256(), length=32 + 12, salt=ephemeral + recipient, info=_INFO
    ).derive(shared)
    return ChaCha20Poly1305(okm[:32]), okm[32:]


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def seal_share(share: np.ndarray, key: AggregatorKey, header: ShareHeader) -> bytes:
    """Seal one int64 share vector to ``key``; ``header`` is sent in the clear and authenticated."""
    ephemeral = X25519PrivateKey.generate()
    eph_pub = _raw_public(ephemeral.public_key())
    aead, nonce = _keystream(
        ephemeral.exchange(X25519PublicKey.from_public_bytes(key.public)), eph_pub, key.public
    )
    head = header.to_bytes()
    aad = MAGIC + struct.pack(">I", len(head)) + head + eph_pub
    body = np.ascontiguousarray(share, dtype="<i8").tobytes()
    return aad + aead.encrypt(nonce, body, aad)


def open_share(
    sealed: bytes,
    private_key: bytes,
    *,
    index: int,
    parties: int,
    round: int,
    client: str,
    shapes: Sequence[Sequence[int]],
) -> np.ndarray:
    """Open aggregator ``index``'s share of ``client``'s update for ``round``.

    Returns the int64 share vector: the weight's share, then every array's
    share flattened in order. Only the holder of ``private_key`` can open it.

    Raises:
        ProtocolError: ``share-malformed`` (not a share), ``share-mismatch``
            (a share for another round, client, aggregator or shapes) or
            ``share-authentication`` (another aggregator's share, or altered).
    """
    header, start = read_header(sealed)
    expected = ShareHeader(
        round, client, index, parties, tuple(tuple(int(d) for d in s) for s in shapes)
    )
    if header != expected:
        diffs = [
            f"{name} {getattr(header, name)!r} (expected {getattr(expected, name)!r})"
            for name in ("round", "client", "aggregator", "parties", "shapes", "fraction_bits")
            if getattr(header, name) != getattr(expected, name)
        ]
        raise _bad(f"share is for another {', '.join(diffs)}", "share-mismatch")
    sealed = bytes(sealed)
    eph_pub = sealed[start : start + _KEY_BYTES]
    aad = sealed[: start + _KEY_BYTES]
    me = X25519PrivateKey.from_private_bytes(private_key)
    try:
        aead, nonce = _keystream(
            me.exchange(X25519PublicKey.from_public_bytes(eph_pub)),
            eph_pub,
            _raw_public(me.public_key()),
        )
        body = aead.decrypt(nonce, sealed[start + _KEY_BYTES :], aad)
    except (InvalidTag, ValueError):
        raise _bad(
            f"share failed authentication: sealed to another aggregator's key or altered "
            f"(aggregator {index})",
            "share-authentication",
        ) from None
    if len(body) != 8 * expected.elements:
        raise _bad(
            f"share holds {len(body)} bytes, expected {8 * expected.elements}", "share-malformed"
        )
    return np.frombuffer(body, dtype="<i8").astype(np.int64)


def encode(values: np.ndarray) -> np.ndarray:
    """Real values -> CrypTen's fixed-point ring (round to nearest, 16 fractional bits, int64)."""
    return np.rint(np.asarray(values, dtype=np.float64) * SCALE).astype(np.int64)


def split(
    encoded: np.ndarray, parties: int, rng: Callable[[int], bytes] | None = None
) -> list[np.ndarray]:
    """Additive shares of ``encoded`` modulo 2**64: ``parties - 1`` uniform masks and the remainder.

    ``rng(n)`` returns ``n`` random bytes; it must be a cryptographically
    secure generator (the default is ``os.urandom``).
    """
    draw = os.urandom if rng is None else rng
    n = encoded.size
    masks = []
    for _ in range(parties - 1):
        noise = draw(8 * n)
        if len(noise) != 8 * n:
            raise ParameterError(f"rng({8 * n}) returned {len(noise)} bytes")
        masks.append(np.frombuffer(noise, dtype="<i8").astype(np.int64))
    last = encoded.astype(np.int64).copy()
    for mask in masks:
        last -= mask  # numpy int64 arrays wrap around: arithmetic modulo 2**64, as CrypTen's ring
    return [*masks, last]


def share_update(
    arrays: Sequence[np.ndarray],
    weight: float,
    aggregators: Sequence[AggregatorKey],
    *,
    client: str,
    round: int,
    rng: Callable[[int], bytes] | None = None,
) -> list[bytes]:
    """A client's sealed shares of its update: share ``i`` is for aggregator ``i`` (via the server).

    ``arrays`` is the update (or the model after local training: whatever is
    to be averaged), ``weight`` its FedAvg weight (number of examples, > 0).
    ``weight * array`` and ``weight`` are encoded and shared; every share is
    sealed to its aggregator's key with ``client`` and ``round`` authenticated.

    Raises:
        ParameterError: keys not for 0..N-1 of one set, a non-finite value, a
            weight that is not positive, or ``weight * |value|`` of 2**31 or
            more (it would not fit the ring once summed over clients).
    """
    parties = len(aggregators)
    if (
        parties < 2
        or sorted(k.index for k in aggregators) != list(range(parties))
        or any(k.parties != parties for k in aggregators)
    ):
        raise ParameterError(
            f"give the public keys of all aggregators 0..N-1 of one set (N >= 2), got "
            f"indices {[k.index for k in aggregators]}"
        )
    if not isinstance(client, str) or not client:
        raise ParameterError(f"client must be a non-empty string id, got {client!r}")
    weight = float(weight)
    if not math.isfinite(weight) or not 0 < weight < MAX_ABS:
        raise ParameterError(
            f"weight must be a positive number of examples below 2**31, got {weight}"
        )
    flat = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    values = np.concatenate([[1.0], *flat]) * weight
    if not np.isfinite(values).all():
        raise ParameterError(
            f"client {client}'s update holds NaN or infinite values; they cannot be averaged"
        )
    if np.abs(values).max() >= MAX_ABS:
        raise ParameterError(
            f"weight * |update| reaches {np.abs(values).max():.3g} for client {client}; it "
            "must stay below 2**31 to fit CrypTen's fixed-point ring. Clip the update"
        )
    shapes = tuple(tuple(int(d) for d in np.shape(a)) for a in arrays)
    shares = split(encode(values), parties, rng)
    by_index = sorted(aggregators, key=lambda k: k.index)
    return [
        seal_share(shares[k.index], k, ShareHeader(int(round), client, k.index, parties, shapes))
        for k in by_index
    ]


def _digest(round: int, clients: Sequence[str], shapes: Sequence[Sequence[int]]) -> int:
    """A signed 64-bit digest of the public job description: every party must hold the same one."""
    text = json.dumps([round, list(clients), [list(s) for s in shapes]]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)


@dataclass
class AggregationJob(PartyJob):
    """Aggregator ``index``'s work: open its shares, agree on the clients, sum, reveal to rank 0.

    It carries only this party's own sealed shares (``None`` where the client
    delivered none) and its own private key. Runs inside a CrypTen party
    (:class:`PartyPool`, or ``run_crypten_party`` on the aggregator's own host).
    """

    index: int
    parties: int
    private_key: bytes
    round: int
    clients: tuple[str, ...]
    shares: tuple[bytes | None, ...]
    shapes: tuple[tuple[int, ...], ...]
    min_clients: int = 2

    def open_all(self) -> tuple[list[np.ndarray | None], dict[str, str]]:
        """This party's share vector per client (None where it failed), and why each failed."""
        opened: list[np.ndarray | None] = []
        reasons: dict[str, str] = {}
        for client, sealed in zip(self.clients, self.shares, strict=True):
            if sealed is None:
                opened.append(None)
                reasons[client] = f"aggregator {self.index}: no share delivered"
                continue
            try:
                opened.append(
                    open_share(
                        sealed,
                        self.private_key,
                        index=self.index,
                        parties=self.parties,
                        round=self.round,
                        client=client,
                        shapes=self.shapes,
                    )
                )
            except ProtocolError as exc:
                opened.append(None)
                reasons[client] = f"aggregator {self.index}: {exc} [{exc.code}]"
        return opened, reasons

    def run(self, crypten: Any, rank: int) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        if rank != self.index:
            raise ProtocolError(f"aggregator {self.index}'s job was started as rank {rank}")
        comm = crypten.communicator.get()
        opened, reasons = self.open_all()
        # one round: every party's public job digest and which clients it could open
        mine = torch.tensor(
            [_digest(self.round, self.clients, self.shapes)] + [int(v is not None) for v in opened],
            dtype=torch.long,
        )
        everyone = comm.all_gather(mine)
        if any(int(t[0]) != int(mine[0]) for t in everyone):
            raise ProtocolError(
                "the aggregators were given different rounds, clients or shapes; nothing "
                "was opened. Give every aggregator the same job"
            )
        included = [i for i in range(len(self.clients)) if all(int(t[1 + i]) for t in everyone)]
        out: dict[str, Any] = {
            "included": [self.clients[i] for i in included],
            "reasons": reasons,
            "sum": None,
            "refused": len(included) < self.min_clients,
        }
        if not out["refused"]:
            total = None
            for i in included:
                vector = opened[i]
                assert vector is not None
                share = crypten.mpc.MPCTensor.from_shares(
                    torch.from_numpy(vector), precision=FRACTION_BITS
                )
                total = share if total is None else total + share  # local: additive shares add
            assert total is not None
            revealed = total.reveal(dst=0)  # raw ring elements, to rank 0 only
            if rank == 0:
                out["sum"] = revealed.numpy().astype(np.int64)
        out["aggregate_seconds"] = time.perf_counter() - started
        return out


@dataclass(frozen=True)
class AggregationResult:
    """One round's average and what it cost.

    Attributes:
        arrays: the weighted FedAvg average, float32, in the clients' shapes.
        clients: ids of the clients averaged.
        dropped: id -> why, for clients left out (every aggregator left them out).
        total_weight: the included clients' summed weight (revealed, as in FedAvg).
        seconds: wall time of the whole call, party start-up and shut-down included.
        aggregate_seconds: the aggregation alone (opening, agreeing, summing, revealing), slowest
            party.
        bytes_per_party: bytes each aggregator party sent (CrypTen's communicator counts).
        rounds: communication rounds (the most any party took part in).
        upload_bytes: sealed bytes the clients uploaded, over all shares received.
    """

    arrays: list[np.ndarray]
    clients: tuple[str, ...]
    dropped: dict[str, str]
    total_weight: float
    seconds: float
    aggregate_seconds: float
    bytes_per_party: tuple[int, ...]
    rounds: int
    upload_bytes: int
    per_party: tuple[dict[str, Any], ...] = field(default=(), repr=False)


class CrypTenAggregator:
    """``parties`` CrypTen aggregator parties on this host, started for each round's aggregation.

    Clients seal their shares to :attr:`keys`; :meth:`aggregate` starts one
    :class:`PartyPool` per round (its start-up is most of the cost), gives
    each party only its own sealed shares and private key, and returns the
    average. Each round number is aggregated at most once.
    """

    job_class: type[AggregationJob] = AggregationJob

    def __init__(
        self,
        parties: int = 2,
        *,
        min_clients: int = 2,
        timeout: float = 120.0,
        private_keys: Sequence[bytes] | None = None,
    ) -> None:
        if not isinstance(parties, int) or parties < 2:
            raise ParameterError(
                f"secure aggregation needs at least 2 aggregator parties, got {parties!r}"
            )
        if not isinstance(min_clients, int) or min_clients < 1:
            raise ParameterError(f"min_clients must be an integer >= 1, got {min_clients!r}")
        if private_keys is not None and len(private_keys) != parties:
            raise ParameterError(
                f"give one private key per aggregator: {len(private_keys)} for {parties}"
            )
        self.parties = parties
        self.min_clients = min_clients
        self.timeout = timeout
        privates = (
            [X25519PrivateKey.from_private_bytes(bytes(k)) for k in private_keys]
            if private_keys is not None
            else [X25519PrivateKey.generate() for _ in range(parties)]
        )
        self._private = [
            k.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            for k in privates
        ]
        self.keys: tuple[AggregatorKey, ...] = tuple(
            AggregatorKey(i, parties, _raw_public(k.public_key())) for i, k in enumerate(privates)
        )
        self._done: set[int] = set()

    def _shapes(self, sealed: Mapping[str, Sequence[bytes | None]]) -> tuple[tuple[int, ...], ...]:
        """The shapes most well-formed headers name (headers are public; parties check them)."""
        seen: Counter[tuple[tuple[int, ...], ...]] = Counter()
        for shares in sealed.values():
            for blob in shares:
                if blob is None:
                    continue
                try:
                    seen[read_header(blob)[0].shapes] += 1
                except ProtocolError:
                    pass
        if not seen:
            raise ProtocolError(
                "no client sent a well-formed share; nothing to aggregate", code="no-shares"
            )
        return seen.most_common(1)[0][0]

    def jobs(
        self,
        sealed: Mapping[str, Sequence[bytes | None]],
        *,
        round: int,
        shapes: Sequence[Sequence[int]] | None = None,
    ) -> list[AggregationJob]:
        """Each aggregator's job: its own shares (clients in sorted id order) and its own key."""
        clients = tuple(sorted(str(c) for c in sealed))
        by_id = {str(c): list(v) for c, v in sealed.items()}
        if len(by_id) != len(sealed):
            raise ParameterError("two clients have the same id once written as strings")
        fixed = (
            tuple(tuple(int(d) for d in s) for s in shapes)
            if shapes is not None
            else self._shapes(sealed)
        )
        return [
            self.job_class(
                i,
                self.parties,
                self._private[i],
                int(round),
                clients,
                tuple(by_id[c][i] if i < len(by_id[c]) else None for c in clients),
                fixed,
                self.min_clients,
            )
            for i in range(self.parties)
        ]

    def aggregate(
        self,
        sealed: Mapping[str, Sequence[bytes | None]],
        *,
        round: int,
        shapes: Sequence[Sequence[int]] | None = None,
    ) -> AggregationResult:
        """The weighted average of the clients' shared updates for ``round``.

        ``sealed`` maps each client id to its sealed shares as relayed, element
        ``i`` for aggregator ``i`` (None or absent where it sent none).
        ``shapes``: the arrays' shapes; by default the ones most shares' headers name.

        Raises:
            ProtocolError: the round was aggregated already (``round-replayed``),
                or fewer than ``min_clients`` clients delivered valid shares to
                every aggregator (``too-few-clients``; nothing is revealed then).
            PartyFailure: an aggregator party died, failed or timed out.
        """
        from secure_infer.backends.crypten import PartyPool

        started = time.perf_counter()
        round = int(round)
        if round in self._done:
            raise ProtocolError(
                f"round {round} was aggregated already; each round is aggregated once, so "
                "two aggregates over different client subsets cannot be differenced. "
                "Use a new round number (clients seal to it)",
                code="round-replayed",
            )
        if len(sealed) > MAX_CLIENTS:
            raise ParameterError(
                f"{len(sealed)} clients in one round; at most {MAX_CLIENTS} fit the ring"
            )
        upload = sum(len(b) for shares in sealed.values() for b in shares if b is not None)
        complete = [
            c
            for c, shares in sealed.items()
            if len(shares) >= self.parties and all(b is not None for b in shares[: self.parties])
        ]
        if len(complete) < self.min_clients:  # known before any party starts
            missing = {
                str(c): "did not deliver a share to every aggregator"
                for c in sealed
                if c not in complete
            }
            raise self._too_few(len(complete), len(sealed), missing)
        jobs = self.jobs(sealed, round=round, shapes=shapes)
        pool = PartyPool(jobs, timeout=self.timeout, roles=[f"aggregator {i}" for i in range(self.parties)])
        try:
            setup = {rank: dict(pool.setup[rank]) for rank in range(self.parties)}
        finally:
            pool.close()
        results = [setup[r]["result"] for r in range(self.parties)]
        reasons: dict[str, list[str]] = {}
        for result in results:
            for client, why in result["reasons"].items():
                reasons.setdefault(client, []).append(why)
        included = tuple(results[0]["included"])
        dropped = {c: "; ".join(why) for c, why in sorted(reasons.items())}
        if results[0]["refused"]:
            raise self._too_few(len(included), len(jobs[0].clients), dropped)
        self._done.add(round)
        total = np.asarray(results[0]["sum"], dtype=np.int64)
        if total[0] <= 0:
            raise ProtocolError(
                "the clients' summed weight is not positive: a client sent shares of a "
                "negative or oversized weight",
                code="bad-weight",
            )
        average = total[1:].astype(np.float64) / float(total[0])
        arrays, at = [], 0
        for shape in jobs[0].shapes:
            n = math.prod(shape)
            arrays.append(average[at : at + n].reshape(shape).astype(np.float32))
            at += n
        sent = tuple(int(setup[r]["bytes"]) for r in range(self.parties))
        rounds = tuple(int(setup[r]["rounds"]) for r in range(self.parties))
        alone = tuple(float(results[r]["aggregate_seconds"]) for r in range(self.parties))
        per_party = tuple(
            {
                "rank": r,
                "bytes": sent[r],
                "rounds": rounds[r],
                "aggregate_seconds": alone[r],
                "party_seconds": float(setup[r]["seconds"]),
            }
            for r in range(self.parties)
        )
        return AggregationResult(
            arrays=arrays,
            clients=included,
            dropped=dropped,
            total_weight=float(total[0]) / SCALE,
            seconds=time.perf_counter() - started,
            aggregate_seconds=max(alone),
            bytes_per_party=sent,
            rounds=max(rounds),
            upload_bytes=upload,
            per_party=per_party,
        )

    def _too_few(self, left: int, offered: int, dropped: Mapping[str, str]) -> ProtocolError:
        names = "; ".join(f"{c} ({why})" for c, why in sorted(dropped.items())) or "none"
        return ProtocolError(
            f"only {left} of {offered} clients delivered valid shares to every aggregator, fewer "
            f"than min_clients={self.min_clients}; nothing was revealed. Dropped: {names}. Ask "
            "those clients to seal their update again to the current aggregator keys for this "
            "round, or lower min_clients",
            code="too-few-clients",
        )


__all__ = [
    "FRACTION_BITS",
    "AggregationJob",
    "AggregationResult",
    "AggregatorKey",
    "CrypTenAggregator",
    "ShareHeader",
    "encode",
    "open_share",
    "read_header",
    "seal_share",
    "share_update",
    "split",
]
