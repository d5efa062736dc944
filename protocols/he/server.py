"""The model owner's side of HE inference: a compiled CKKS program served over TCP.

The server holds the weights and a program compiled without any key
(``keys=False``). Each client uploads its public key material once per
session (relinearization keys and the Galois keys the layout names, seeded)
and then sends ciphertexts; the server evaluates and returns ciphertexts. It
never holds a secret key and refuses one if offered.

Robustness (each is tested): frames over ``max_frame`` are refused before
they are read, idle and slow peers time out, a peer that disconnects
mid-frame only ends its own connection, malformed input gets an ERROR frame
rather than a crash, and clients are served concurrently (one thread each).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.common.transport import FrameSocket, PeerGone, PeerTimeout
from protocols.common.wire import DEFAULT_MAX_FRAME, Frame, MessageType, error_frame
from secure_infer._errors import ParameterError, ProtocolError

log = logging.getLogger("secure_infer.protocols.he.server")

PROTOCOL = 1
# evaluation keys only; a public key is accepted and dropped (the server never encrypts)
KEY_NAMES = ("relin_keys", "galois_keys", "public_key")
# a broken header means the stream's framing is lost: answer, then hang up
FATAL_CODES = {"bad-magic", "bad-version", "bad-flags", "frame-too-large", "truncated", "secret-key-refused"}


@dataclass
class Session:
    """One client's uploaded public key material, kept across its connections."""

    session_id: str
    server_context: Any
    key_bytes: int
    created: float = field(default_factory=time.time)
    queries: int = 0


@dataclass
class ServerStats:
    """What the server has seen since it started (for tests and the CLI's log line)."""

    connections: int = 0
    queries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    internal_errors: int = 0


class HEServer:
    """Serve one compiled TenSEAL program to many clients.

    Args:
        program: a ``TensealProgram`` (``si.wrap(model, backend="tenseal", ...).program``).
        name: the model name announced to clients.
        host, port: where to listen (``port=0`` picks a free port; see :attr:`address`).
        max_frame: largest frame accepted, in bytes.
        idle_timeout: seconds a connection may sit without starting a frame.
        frame_timeout: seconds a started frame may take to arrive in full.
        max_sessions: key sets kept at once; the least recently used is dropped.
    """

    def __init__(self, program: Any, *, name: str = "model", host: str = "127.0.0.1", port: int = 0,
                 max_frame: int = DEFAULT_MAX_FRAME, idle_timeout: float = 60.0, frame_timeout: float = 120.0,
                 max_sessions: int = 64) -> None:
        if getattr(program, "published", None) is None or not hasattr(program, "evaluate"):
            raise ParameterError("HEServer needs a TenSEAL program: HEServer.from_model(model, sample_input), or "
                                 "si.wrap(model, backend='tenseal', ...).program")
        self.program = program
        self.name = name
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_sessions = max_sessions
        self.stats = ServerStats()
        self.report: Any = None
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ParameterError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
        self._sock.listen(64)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._conns: set[FrameSocket] = set()

    @classmethod
    def from_model(cls, model: torch.nn.Module, sample_input: torch.Tensor, *, mode: str = "latency",
                   calibration: torch.Tensor | None = None, schedule: str | None = None,
                   poly_degree: int | None = None, tolerance: float | None = None, **kwargs: Any) -> HEServer:
        """Compile ``model``, measure its approximations on ``sample_input``, and serve it.

        The local key pair ``wrap`` used for that measurement is dropped before
        serving: the server holds no secret key. ``schedule``, ``poly_degree`` and
        ``tolerance`` are ``wrap``'s. The server evaluates with one process per
        request (its threads serve clients concurrently).
        """
        import secure_infer as si
        from secure_infer.backends.tenseal import TensealProgram

        enc = si.wrap(model, backend="tenseal", sample_input=sample_input, mode=mode, calibration=calibration,
                      schedule=schedule, poly_degree=poly_degree, tolerance=tolerance)
        assert isinstance(enc.program, TensealProgram)  # what wrap(..., "tenseal") builds
        enc.program.forget_client_keys()
        server = cls(enc.program, **kwargs)
        server.report = enc.report()
        return server

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def welcome(self) -> Frame:
        return Frame(MessageType.WELCOME, {
            "protocol": PROTOCOL, "model": self.name, "layout": self.program.published.to_json(),
            "max_frame": self.max_frame, "idle_timeout_s": self.idle_timeout,
        })

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> HEServer:
        """Accept connections in a background thread; returns at once."""
        self._thread = threading.Thread(target=self.serve_forever, name="he-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Accept connections until :meth:`close`; one thread per connection."""
        try:
            self._sock.settimeout(0.2)
        except OSError:  # closed before this thread got going (start() then close() at once)
            return
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handle, args=(conn, f"client {peer[0]}:{peer[1]}"), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for fs in list(self._conns):
            fs.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HEServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one connection --------------------------------------------------------------------
    def _handle(self, conn: socket.socket, peer: str) -> None:
        fs = FrameSocket(conn, peer=peer, max_frame=self.max_frame, idle_timeout=self.idle_timeout,
                         frame_timeout=self.frame_timeout)
        with self._lock:
            self.stats.connections += 1
            self._conns.add(fs)
        state: dict[str, Any] = {"session": None}
        try:
            while not self._closed.is_set():
                try:
                    frame = fs.receive()
                    reply = self._dispatch(frame, state)
                except (PeerGone, PeerTimeout) as exc:
                    self._count(exc.code)
                    if isinstance(exc, PeerTimeout):
                        self._try_send(fs, error_frame("timeout", str(exc), fatal=True))
                    return
                except ProtocolError as exc:
                    self._count(exc.code)
                    fatal = exc.code in FATAL_CODES
                    self._try_send(fs, error_frame(exc.code, str(exc), fatal=fatal))
                    if fatal:
                        return
                    continue
                if reply is None:  # BYE
                    return
                fs.send(reply)
        except (PeerGone, PeerTimeout) as exc:
            self._count(exc.code)
        except Exception as exc:  # a bug must not take the server down: report it, drop this connection
            log.exception("internal error serving %s", peer)
            with self._lock:
                self.stats.internal_errors += 1
            self._try_send(fs, error_frame("internal-error", f"{type(exc).__name__}: {exc}", fatal=True))
        finally:
            with self._lock:
                self._conns.discard(fs)
            fs.close()

    def _count(self, code: str) -> None:
        with self._lock:
            self.stats.errors[code] += 1

    @staticmethod
    def _try_send(fs: FrameSocket, frame: Frame) -> None:
        try:
            fs.send(frame)
        except (ProtocolError, OSError):
            pass

    def _dispatch(self, frame: Frame, state: dict[str, Any]) -> Frame | None:
        kind = frame.type
        if kind is MessageType.HELLO:
            if frame.meta.get("protocol") != PROTOCOL:
                raise ProtocolError(f"client speaks protocol {frame.meta.get('protocol')!r}; this server speaks {PROTOCOL}",
                                    code="bad-version")
            return self.welcome()
        if kind is MessageType.KEYS:
            session = self._new_session(frame)
            state["session"] = session
            return Frame(MessageType.SESSION, {"session": session.session_id, "key_bytes": session.key_bytes})
        if kind is MessageType.RESUME:
            sid = frame.meta.get("session")
            with self._lock:
                resumed = self._sessions.get(sid) if isinstance(sid, str) else None
                if resumed is not None:
                    self._sessions.move_to_end(resumed.session_id)
            if resumed is None:
                raise ProtocolError("unknown or expired session: upload the keys again (KEYS)", code="unknown-session")
            state["session"] = resumed
            return Frame(MessageType.SESSION, {"session": resumed.session_id, "key_bytes": resumed.key_bytes})
        if kind is MessageType.QUERY:
            if state["session"] is None:
                raise ProtocolError("no keys yet: send KEYS (or RESUME a session) before QUERY", code="no-session")
            return self._query(frame, state["session"])
        if kind is MessageType.BYE:
            return None
        raise ProtocolError(f"a client does not send {kind.name}", code="unexpected-message")

    def _new_session(self, frame: Frame) -> Session:
        from secure_infer.backends.tenseal._seal import ServerContext, galois_element, to_bytes

        program = self.program
        fmt = frame.meta.get("format")
        if fmt == "seal":
            names = frame.meta.get("names")
            if not isinstance(names, list) or len(names) != len(frame.blobs):
                raise ProtocolError("KEYS meta.names must name each blob", code="bad-keys")
            refused = [n for n in names if n not in KEY_NAMES]
            if refused:
                raise ProtocolError(f"refusing key material {refused!r}: the server accepts only "
                                    f"{sorted(KEY_NAMES)} and never a secret key", code="secret-key-refused")
            raw = dict(zip(names, frame.blobs, strict=True))
        elif fmt == "tenseal-context":
            raw = self._from_tenseal_context(frame, to_bytes)
        else:
            raise ProtocolError("KEYS meta.format must be 'seal' or 'tenseal-context'", code="bad-keys")
        raw.pop("public_key", None)
        if "relin_keys" not in raw:
            raise ProtocolError("KEYS is missing relin_keys", code="bad-keys")
        steps = program.published.rotation_steps
        context = ServerContext(program.params, None)
        try:
            public = context.load_keys(raw, tuple(steps))
        except ValueError as exc:
            raise ProtocolError(f"KEYS: {exc}", code="bad-keys") from None
        n = program.params.poly_modulus_degree
        galois = public.galois_keys
        missing = [s for s in steps if galois is None or not galois.has_key(galois_element(s, n))]
        if missing:
            raise ProtocolError(f"KEYS lacks Galois keys for rotation steps {missing} (the layout's rotation_steps)",
                                code="bad-keys")
        session = Session(os.urandom(16).hex(), context, key_bytes=sum(len(b) for b in raw.values()))
        with self._lock:
            self._sessions[session.session_id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    @staticmethod
    def _from_tenseal_context(frame: Frame, to_bytes: Any) -> dict[str, bytes]:
        import tenseal as ts

        if len(frame.blobs) != 1:
            raise ProtocolError("a tenseal-context KEYS frame carries exactly one blob", code="bad-keys")
        try:
            ctx = ts.context_from(frame.blobs[0])
        except Exception as exc:  # TenSEAL raises several types on bad bytes
            raise ProtocolError(f"KEYS blob is not a TenSEAL context: {exc}", code="bad-keys") from None
        if ctx.is_private():
            raise ProtocolError("the uploaded TenSEAL context carries a secret key: serialize it with "
                                "save_secret_key=False (or call make_context_public()) and send it again",
                                code="secret-key-refused")
        raw = {"relin_keys": to_bytes(ctx.data.relin_keys())}
        if ctx.has_galois_keys():
            raw["galois_keys"] = to_bytes(ctx.data.galois_keys())
        return raw

    def _load(self, kind: str, blob: bytes, what: str) -> Any:
        from secure_infer.backends.tenseal._seal import from_bytes

        try:
            return from_bytes(kind, self.program.server.context, blob)
        except ValueError as exc:
            raise ProtocolError(f"{what}: {exc}", code="bad-keys" if kind != "Ciphertext" else "bad-ciphertext") from None

    def _query(self, frame: Frame, session: Session) -> Frame:
        from secure_infer.backends.tenseal._seal import to_bytes

        program = self.program
        request_id = frame.meta.get("id", 0)
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise ProtocolError("QUERY meta.id must be an integer", code="bad-query")
        expected = program.published.chunks if program.mode == "latency" else program.compiled.input_size
        if len(frame.blobs) != expected:
            raise ProtocolError(f"QUERY carries {len(frame.blobs)} ciphertexts; a {program.mode}-mode request takes "
                                f"{expected}", code="bad-query")
        context = program.server.context
        first = context.first_parms_id()
        scale = float(2 ** program.params.scale_bits)
        cts = []
        for i, blob in enumerate(frame.blobs):
            ct = self._load("Ciphertext", blob, f"QUERY ciphertext {i}")
            if ct.parms_id() != first or ct.size() != 2 or abs(ct.scale - scale) > 1e-6 * scale:
                raise ProtocolError(f"QUERY ciphertext {i} is not a fresh encryption at scale 2^{program.params.scale_bits} "
                                    "under the published parameters", code="bad-ciphertext")
            cts.append(ct)
        started = time.perf_counter()
        outs = program.evaluate(cts, session.server_context)
        compute_s = time.perf_counter() - started
        with self._lock:
            session.queries += 1
            self.stats.queries += 1
        return Frame(MessageType.RESULT, {"id": request_id, "compute_s": compute_s},
                     tuple(to_bytes(o) for o in outs))
