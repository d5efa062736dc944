"""Who may query the server, and how much: clients, tokens and budgets in SQLite.

The extraction and membership attacks in :mod:`secure_infer.attacks` need
many queries; a budget caps what one client can learn, and it is only worth
something if a restart does not reset it. :class:`ServerState` keeps each
client's token (only its SHA-256 is stored), budget, inputs used so far,
rate limit and expiry in one SQLite file, and charges budgets in a single
``UPDATE ... WHERE used + n <= limit`` so concurrent requests cannot
overdraw. Rate limits are token buckets held in memory (a restart refills
them, which is harmless: the budget still holds).

Manage it with ``secure-infer clients add/list/revoke --state FILE``.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.certs import check_client_name

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT UNIQUE,
    budget INTEGER NOT NULL,          -- inputs in all; -1: no limit
    used INTEGER NOT NULL DEFAULT 0,
    rate_per_minute REAL NOT NULL DEFAULT 0,
    expires_at REAL,                  -- unix time; NULL: never
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Client:
    """One registered client (no secret: the token is stored hashed)."""

    name: str
    budget: int
    used: int
    rate_per_minute: float
    expires_at: float | None
    revoked: bool

    @property
    def remaining(self) -> int | None:
        return None if self.budget < 0 else max(self.budget - self.used, 0)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ServerState:
    """The server's persistent state: one SQLite file, safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ParameterError(f"--state {self.path}: not a secure-infer state file ({exc}); "
                                 "give another path (it is created if missing)") from None
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill time)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- administration ------------------------------------------------------------------
    def add_client(self, name: str, *, budget: int = -1, rate_per_minute: float = 0.0,
                   expires_in_s: float | None = None) -> str:
        """Register ``name``; returns its new API token (shown once, stored only hashed)."""
        check_client_name(name)
        if budget < -1:
            raise ParameterError(f"--budget must be -1 (no limit) or >= 0, got {budget}")
        if rate_per_minute < 0:
            raise ParameterError(f"--rate must be >= 0 (0: no rate limit), got {rate_per_minute}")
        token = "si_" + secrets.token_urlsafe(32)
        expires = None if expires_in_s is None else time.time() + expires_in_s
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO clients (name, token_sha256, budget, rate_per_minute, expires_at, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (name, _hash(token), budget, rate_per_minute, expires, time.time()))
            except sqlite3.IntegrityError:
                raise ParameterError(f"client {name!r} exists already (a revoked name stays taken): pick another name") from None
        return token

    def revoke(self, name: str) -> None:
        with self._lock:
            cur = self._db.execute("UPDATE clients SET revoked = 1 WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise ParameterError(f"no client named {name!r} in {self.path}")

    _COLUMNS = "name, budget, used, rate_per_minute, expires_at, revoked"

    def _select(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Client]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM clients {where} ORDER BY name", args).fetchall()
        return [Client(r[0], int(r[1]), int(r[2]), float(r[3]), r[4], bool(r[5])) for r in rows]

    def clients(self) -> list[Client]:
        return self._select()

    def client(self, name: str) -> Client | None:
        found = self._select("WHERE name = ?", (name,))
        return found[0] if found else None

    def has_clients(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM clients WHERE revoked = 0 LIMIT 1").fetchone() is not None

    # -- serving ---------------------------------------------------------------------------
    def by_token(self, token: str) -> Client:
        """The client holding ``token``; ``ProtocolError('unauthenticated')`` if none may use it now."""
        found = self._select("WHERE token_sha256 = ?", (_hash(token),))
        return self._usable(found[0] if found else None, "this API token")

    def by_name(self, name: str) -> Client:
        """The client a certificate names; refused like a token if it is not registered and usable."""
        return self._usable(self.client(name), f"client certificate {name!r}")

    @staticmethod
    def _usable(client: Client | None, what: str) -> Client:
        if client is None:
            raise ProtocolError(f"{what} is not registered with this server: ask its operator for access "
                                "(`secure-infer clients add`)", code="unauthenticated")
        if client.revoked:
            raise ProtocolError(f"{what} was revoked", code="unauthenticated")
        if client.expires_at is not None and time.time() > client.expires_at:
            raise ProtocolError(f"{what} expired at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(client.expires_at))}: "
                                "ask the server's operator for a new token", code="unauthenticated")
        return client

    def charge(self, name: str, inputs: int) -> None:
        """Take ``inputs`` from ``name``'s budget and rate allowance, or refuse without charging."""
        client = self.client(name)
        if client is None:
            raise ProtocolError(f"client {name!r} is no longer registered", code="unauthenticated")
        with self._lock:
            if client.rate_per_minute > 0:
                capacity = max(client.rate_per_minute, float(inputs))
                tokens, last = self._buckets.get(name, (capacity, time.monotonic()))
                now = time.monotonic()
                tokens = min(capacity, tokens + (now - last) * client.rate_per_minute / 60.0)
                if tokens < inputs:
                    wait = (inputs - tokens) * 60.0 / client.rate_per_minute
                    self._buckets[name] = (tokens, now)
                    raise ProtocolError(f"client {name!r} is limited to {client.rate_per_minute:g} inputs per "
                                        f"minute: retry in {wait:.1f} s", code="rate-limited")
            cur = self._db.execute("UPDATE clients SET used = used + ? WHERE name = ? AND (budget < 0 OR used + ? <= budget)",
                                   (inputs, name, inputs))
            if cur.rowcount == 0:
                raise ProtocolError(f"client {name!r} has used {client.used} of its budget of {client.budget} inputs; "
                                    f"this request needs {inputs}: ask the server's operator for more",
                                    code="budget-exhausted")
            if client.rate_per_minute > 0:
                self._buckets[name] = (tokens - inputs, now)

    def refund(self, name: str, inputs: int) -> None:
        """Give back a charge for a request the server failed to evaluate (its own fault, not the client's)."""
        with self._lock:
            self._db.execute("UPDATE clients SET used = MAX(used - ?, 0) WHERE name = ?", (inputs, name))
