"""What the HE server does, apart from how bytes arrive: identities, sessions, keys, queries.

:class:`InferenceHandler` knows clients, sessions and queries but not
sockets. The gRPC service (:mod:`protocols.he.server`) and the legacy frame
transport (:mod:`protocols.he.legacy`) are thin adapters over it: they turn
their bytes into calls here and the :class:`~secure_infer.ProtocolError`
codes raised here into their own error replies. Every refusal has one code
(table in ``docs/wire-format.md``), whatever the transport.

Checks, in order, for a query: the caller is authenticated (token,
certificate or, where the operator allows it, anonymous); the session exists
and belongs to the caller; the request has the layout's number of
ciphertexts, each a fresh, non-transparent encryption at the published scale
under the published parameters; then the caller's budget and rate limit are
charged; then the program runs. One audit line per query records who, when,
how many inputs and the outcome, never data.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.he.state import Client, ServerState
from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.backends.tenseal import (
    SecretKeyInContext,
    ServerContext,
    from_bytes,
    galois_element,
    screen_tenseal_context,
    to_bytes,
)

PROTOCOL = 2
# what a client may upload: evaluation keys only; a public key is accepted and dropped (the server never encrypts)
KEY_NAMES = ("relin_keys", "galois_keys", "public_key")
ANONYMOUS = "anonymous"
IDENTITIES = ("any", "token", "certificate", "both")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the client's name and how it proved it (token, certificate or anonymous)."""

    name: str
    via: str
    peer: str = ""


@dataclass
class Session:
    """One client's uploaded public key material, kept across its connections."""

    session_id: str
    owner: str
    server_context: Any
    key_bytes: int
    created: float = field(default_factory=time.time)
    queries: int = 0


@dataclass
class ServerStats:
    """What the server has seen since it started (for tests and the CLI's last line)."""

    connections: int = 0
    queries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    internal_errors: int = 0


class AuditLog:
    """One JSON line per query and per refusal: client, time, inputs, outcome; never data."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **entry: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}, separators=(",", ":"))
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


class InferenceHandler:
    """Serve one compiled TenSEAL program to many clients, whatever the transport.

    Args:
        program: a ``TensealProgram`` whose client keys were dropped.
        name: the model name announced to clients.
        state: clients, tokens and budgets (SQLite); None serves without identities or budgets.
        allow_anonymous: accept callers with neither token nor certificate (they are not metered).
        max_sessions: key sets kept at once; the least recently used is dropped.
        max_request_bytes: largest key upload or request, all chunks together.
        audit: where the audit lines go (None: nowhere).
        identity: what a caller must present when ``state`` is given: ``"token"``, ``"certificate"``
            (a verified client certificate whose common name is a registered client), ``"both"`` (a token
            and a certificate naming the same client), or ``"any"`` (either).
    """

    def __init__(self, program: Any, *, name: str = "model", state: ServerState | None = None,
                 allow_anonymous: bool = True, max_sessions: int = 64, max_request_bytes: int = 256 << 20,
                 audit: AuditLog | None = None, identity: str = "any") -> None:
        if identity not in IDENTITIES:
            raise ParameterError(f"identity must be one of {', '.join(IDENTITIES)}, got {identity!r}")
        self.identity = identity
        self.program = program
        self.name = name
        self.state = state
        self.allow_anonymous = allow_anonymous
        self.max_sessions = max_sessions
        self.max_request_bytes = max_request_bytes
        self.audit = audit or AuditLog(None)
        self.stats = ServerStats()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    # -- identity --------------------------------------------------------------------------
    def authenticate(self, *, token: str | None, certificate_name: str | None, peer: str = "") -> Caller:
        """The caller behind a token and/or a verified client certificate's common name.

        With both, they must name the same client: a token does not lend its
        budget to someone else's certificate. What is required depends on ``identity``.
        """
        if self.state is not None and (token or certificate_name):
            need_token = self.identity in ("token", "both")
            need_cert = self.identity in ("certificate", "both")
            if need_token and not token:
                raise ProtocolError("this server needs an API token as well (--token, or SECURE_INFER_TOKEN)",
                                    code="unauthenticated")
            if need_cert and not certificate_name:
                raise ProtocolError("this server needs a client certificate (--tls-cert/--tls-key)",
                                    code="unauthenticated")
            if token and self.identity != "certificate":
                client = self.state.by_token(token)
                if certificate_name and certificate_name != client.name:
                    raise ProtocolError(f"the client certificate names {certificate_name!r} but the token belongs to "
                                        "another client: use your own token and certificate", code="permission-denied")
                return Caller(client.name, "token", peer)
            if certificate_name:
                return Caller(self.state.by_name(certificate_name).name, "certificate", peer)
        if token and self.state is None:
            raise ProtocolError("this server has no client registry (--state): it accepts no tokens",
                                code="unauthenticated")
        if not self.allow_anonymous:
            raise ProtocolError("this server needs credentials: an API token (--token, or SECURE_INFER_TOKEN) "
                                "or a client certificate", code="unauthenticated")
        return Caller(ANONYMOUS, "anonymous", peer)

    def budget(self, caller: Caller) -> Client | None:
        return self.state.client(caller.name) if self.state is not None and caller.via != "anonymous" else None

    # -- layout ----------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        return self.program.published.to_json()  # type: ignore[no-any-return]

    # -- sessions --------------------------------------------------------------------------
    def open_session(self, caller: Caller, fmt: str, blobs: list[tuple[str, bytes]]) -> Session:
        """Load a client's public evaluation keys; refuse anything that is not exactly what the layout needs."""
        if fmt == "seal":
            names = [n for n, _ in blobs]
            refused = [n for n in names if n not in KEY_NAMES]
            if refused:
                raise ProtocolError(f"refusing key material {refused!r}: the server accepts only "
                                    f"{sorted(KEY_NAMES)} and never a secret key", code="secret-key-refused")
            if len(set(names)) != len(names):
                raise ProtocolError(f"key blobs named twice: {names}", code="bad-keys")
            raw = dict(blobs)
        elif fmt == "tenseal-context":
            if len(blobs) != 1:
                raise ProtocolError("a tenseal-context key upload carries exactly one blob", code="bad-keys")
            try:  # before TenSEAL parses it: TenSEAL builds (even generates) whatever the bytes ask for
                screen_tenseal_context(blobs[0][1], self.program.server.context)
            except SecretKeyInContext as exc:
                raise ProtocolError(str(exc), code="secret-key-refused") from None
            except ValueError as exc:
                raise ProtocolError(f"the key blob is not a TenSEAL context for this layout: {exc}",
                                    code="bad-keys") from None
            raw = self._from_tenseal_context(blobs[0][1])
        else:
            raise ProtocolError(f"key format {fmt!r}: must be 'seal' or 'tenseal-context'", code="bad-keys")
        raw.pop("public_key", None)
        if "relin_keys" not in raw:
            raise ProtocolError("the key upload is missing relin_keys", code="bad-keys")
        program = self.program
        steps = tuple(program.published.rotation_steps)
        if steps and "galois_keys" not in raw:
            raise ProtocolError(f"the key upload lacks galois_keys: this layout rotates by {list(steps)}",
                                code="bad-keys")
        context = ServerContext(program.params, None)
        try:
            public = context.load_keys(raw, steps)
        except ValueError as exc:
            raise ProtocolError(f"keys: {exc}", code="bad-keys") from None
        n = program.params.poly_modulus_degree
        galois = public.galois_keys
        missing = [s for s in steps if galois is None or not galois.has_key(galois_element(s, n))]
        if missing:
            raise ProtocolError(f"the Galois keys lack rotation steps {missing} (the layout's rotation_steps)",
                                code="bad-keys")
        session = Session(os.urandom(16).hex(), caller.name, context, key_bytes=sum(len(b) for b in raw.values()))
        with self._lock:
            self._sessions[session.session_id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self.audit.write(client=caller.name, via=caller.via, peer=caller.peer, event="keys",
                         key_bytes=session.key_bytes, outcome="ok")
        return session

    def resume(self, caller: Caller, session_id: str) -> Session:
        """The caller's own session; another client's session is as unknown as a made-up one."""
        with self._lock:
            session = self._sessions.get(session_id) if isinstance(session_id, str) else None
            if session is not None and session.owner == caller.name:
                self._sessions.move_to_end(session.session_id)
                return session
        raise ProtocolError("unknown or expired session: upload the keys again", code="unknown-session")

    @staticmethod
    def _from_tenseal_context(blob: bytes) -> dict[str, bytes]:
        import tenseal as ts

        try:
            ctx = ts.context_from(blob)
        except Exception as exc:  # TenSEAL raises several types on bad bytes
            raise ProtocolError(f"the key blob is not a TenSEAL context: {exc}", code="bad-keys") from None
        if ctx.is_private():
            raise ProtocolError("the uploaded TenSEAL context carries a secret key: serialize it with "
                                "save_secret_key=False (or call make_context_public()) and send it again",
                                code="secret-key-refused")
        try:
            raw = {"relin_keys": to_bytes(ctx.data.relin_keys())}
        except Exception as exc:  # a context without relinearization keys
            raise ProtocolError(f"the TenSEAL context has no relinearization keys: {exc}", code="bad-keys") from None
        if ctx.has_galois_keys():
            raw["galois_keys"] = to_bytes(ctx.data.galois_keys())
        return raw

    # -- queries ---------------------------------------------------------------------------
    @property
    def ciphertexts_per_request(self) -> int:
        program = self.program
        return int(program.published.chunks if program.mode == "latency" else program.compiled.input_size)

    @property
    def inputs_per_request(self) -> int:
        """What one request is charged: 1 input in latency mode, every slot in batch mode (the server cannot
        see how many slots a client filled, so it charges what the request could hold)."""
        return 1 if self.program.mode == "latency" else int(self.program.params.slots)

    def load_request(self, blobs: list[bytes]) -> list[Any]:
        """Ciphertexts from a request's blobs, each checked to be a fresh encryption under the layout."""
        program = self.program
        expected = self.ciphertexts_per_request
        if len(blobs) != expected:
            raise ProtocolError(f"the request carries {len(blobs)} ciphertexts; a {program.mode}-mode request takes "
                                f"{expected}", code="bad-query")
        context = program.server.context
        first = context.first_parms_id()
        scale = float(2 ** program.params.scale_bits)
        cts = []
        for i, blob in enumerate(blobs):
            try:
                ct = from_bytes("Ciphertext", context, blob)
            except ValueError as exc:
                raise ProtocolError(f"ciphertext {i}: {exc}", code="bad-ciphertext") from None
            if ct.is_transparent():
                raise ProtocolError(f"ciphertext {i} is transparent (its mask is zero, so it encrypts nothing): "
                                    "encrypt under your secret key", code="bad-ciphertext")
            if (ct.parms_id() != first or ct.size() != 2 or not ct.is_ntt_form()
                    or abs(ct.scale - scale) > 1e-6 * scale):
                raise ProtocolError(f"ciphertext {i} is not a fresh encryption at scale 2^{program.params.scale_bits} "
                                    "under the published parameters", code="bad-ciphertext")
            cts.append(ct)
        return cts

    def evaluate(self, caller: Caller, session_id: str, request_id: int, blobs: list[bytes]) -> tuple[list[bytes], float]:
        """Check, charge and evaluate one request; returns the output ciphertexts' bytes and the compute time."""
        inputs = self.inputs_per_request
        session = self.resume(caller, session_id)
        cts = self.load_request(blobs)
        if self.state is not None and caller.via != "anonymous":
            self.state.charge(caller.name, inputs)
        started = time.perf_counter()
        try:
            outs = self.program.evaluate(cts, session.server_context)
            out_bytes = [to_bytes(o) for o in outs]
        except Exception:
            if self.state is not None and caller.via != "anonymous":
                self.state.refund(caller.name, inputs)  # the server's failure: not charged
            self.audit.write(client=caller.name, via=caller.via, peer=caller.peer, event="query", request=request_id,
                             inputs=inputs, outcome="internal-error")
            raise
        compute_s = time.perf_counter() - started
        with self._lock:
            session.queries += 1
            self.stats.queries += 1
        self.audit.write(client=caller.name, via=caller.via, peer=caller.peer, event="query", request=request_id,
                         inputs=inputs, outcome="ok", compute_s=round(compute_s, 4))
        return out_bytes, compute_s

    def refused(self, exc: ProtocolError, *, caller: Caller | None, peer: str, method: str) -> None:
        """Count a refusal and write its audit line (the transports call this for every refusal they send)."""
        self.count_error(exc.code)
        self.audit.write(client=caller.name if caller else "unknown", via=caller.via if caller else "none",
                         peer=caller.peer if caller else peer, event="refused", method=method, outcome=exc.code)

    def count_error(self, code: str) -> None:
        with self._lock:
            self.stats.errors[code] += 1

    def count_internal_error(self) -> None:
        with self._lock:
            self.stats.internal_errors += 1

    def count_connection(self) -> None:
        with self._lock:
            self.stats.connections += 1
