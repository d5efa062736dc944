"""Legacy: the version-1 frame protocol over plain TCP, as an adapter over the same handler.

The HE service speaks gRPC (:class:`protocols.he.HEServer`). :class:`FrameServer`
keeps the earlier hand-made frame format (``protocols/common/wire.py``) for
clients written against it and for the transport benchmark that compares the
two; it has no TLS and no client identities, so it listens only on loopback
unless ``insecure=True``. Sessions, key checks, ciphertext checks and
evaluation are :class:`~protocols.he.handler.InferenceHandler`'s, exactly as
over gRPC; this module only moves frames. Connections are capped
(``max_connections``): one more is answered ``busy`` and closed.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from protocols.common.address import is_loopback
from protocols.common.transport import FrameSocket, PeerGone, PeerTimeout
from protocols.common.wire import DEFAULT_MAX_FRAME, Frame, MessageType, error_frame
from protocols.he.handler import Caller, InferenceHandler, ServerStats
from secure_infer._errors import ParameterError, ProtocolError

log = logging.getLogger(__name__)

PROTOCOL = 1
# a broken header means the stream's framing is lost: answer, then hang up
FATAL_CODES = {"bad-magic", "bad-version", "bad-flags", "frame-too-large", "truncated", "secret-key-refused", "busy"}


class FrameServer:
    """Serve a program (or an existing handler) over the legacy frame protocol.

    Args:
        program: a ``TensealProgram`` whose client keys were dropped, or an :class:`InferenceHandler`.
        name: the model name announced to clients.
        host, port: where to listen (``port=0`` picks a free port).
        insecure: listen off loopback (plaintext, no identities: for a network you trust).
        max_frame: largest frame accepted, in bytes.
        idle_timeout: seconds a connection may sit without starting a frame.
        frame_timeout: seconds a started frame may take to arrive in full.
        max_connections: connections served at once (one thread each).
    """

    def __init__(self, program: Any, *, name: str = "model", host: str = "127.0.0.1", port: int = 0,
                 insecure: bool = False, max_frame: int = DEFAULT_MAX_FRAME, idle_timeout: float = 60.0,
                 frame_timeout: float = 120.0, max_connections: int = 64, max_sessions: int = 64) -> None:
        if not insecure and not is_loopback(host):
            raise ParameterError(f"the legacy frame server has no TLS: it listens on loopback only (host {host!r}); "
                                 "serve with HEServer (gRPC + TLS), or pass insecure=True on a network you trust")
        if isinstance(program, InferenceHandler):
            self.handler = program
        else:
            if getattr(program, "published", None) is None or not hasattr(program, "evaluate"):
                raise ParameterError("FrameServer needs a TenSEAL program or an InferenceHandler")
            self.handler = InferenceHandler(program, name=name, max_sessions=max_sessions, max_request_bytes=max_frame)
        self.program = self.handler.program
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ParameterError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another port") from None
        self._sock.listen(128)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._conns: set[FrameSocket] = set()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def stats(self) -> ServerStats:
        return self.handler.stats

    def welcome(self) -> Frame:
        return Frame(MessageType.WELCOME, {
            "protocol": PROTOCOL, "model": self.handler.name, "layout": self.handler.layout(),
            "max_frame": self.max_frame, "idle_timeout_s": self.idle_timeout,
        })

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FrameServer:
        """Accept connections in a background thread; returns at once."""
        self._thread = threading.Thread(target=self.serve_forever, name="he-frame-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Accept connections until :meth:`close`."""
        try:
            self._sock.settimeout(0.2)
        except OSError:  # closed before this thread got going
            return
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._slots.acquire(blocking=False):
                fs = FrameSocket(conn, peer=f"client {peer[0]}:{peer[1]}", frame_timeout=5.0)
                self.handler.count_error("busy")
                self._try_send(fs, error_frame("busy", "the server is at its connection limit: retry later", fatal=True))
                fs.close()
                continue
            threading.Thread(target=self._handle, args=(conn, f"client {peer[0]}:{peer[1]}"), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for fs in list(self._conns):
            fs.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FrameServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one connection --------------------------------------------------------------------
    def _handle(self, conn: socket.socket, peer: str) -> None:
        fs = FrameSocket(conn, peer=peer, max_frame=self.max_frame, idle_timeout=self.idle_timeout,
                         frame_timeout=self.frame_timeout)
        self.handler.count_connection()
        with self._lock:
            self._conns.add(fs)
        caller = Caller("anonymous", "anonymous", peer)
        state: dict[str, Any] = {"session": None}
        try:
            while not self._closed.is_set():
                try:
                    frame = fs.receive()
                    reply = self._dispatch(frame, caller, state)
                except (PeerGone, PeerTimeout) as exc:
                    self.handler.count_error(exc.code)
                    if isinstance(exc, PeerTimeout):
                        self._try_send(fs, error_frame("timeout", str(exc), fatal=True))
                    return
                except ProtocolError as exc:
                    self.handler.refused(exc, caller=caller, peer=peer, method="frame")
                    fatal = exc.code in FATAL_CODES
                    self._try_send(fs, error_frame(exc.code, str(exc), fatal=fatal))
                    if fatal:
                        return
                    continue
                if reply is None:  # BYE
                    return
                fs.send(reply)
        except (PeerGone, PeerTimeout) as exc:
            self.handler.count_error(exc.code)
        except Exception as exc:  # a bug must not take the server down: report it, drop this connection
            log.exception("internal error serving %s", peer)
            self.handler.count_internal_error()
            self._try_send(fs, error_frame("internal-error", f"{type(exc).__name__}: {exc}", fatal=True))
        finally:
            with self._lock:
                self._conns.discard(fs)
            fs.close()
            self._slots.release()

    @staticmethod
    def _try_send(fs: FrameSocket, frame: Frame) -> None:
        try:
            fs.send(frame)
        except (ProtocolError, OSError):
            pass

    def _dispatch(self, frame: Frame, caller: Caller, state: dict[str, Any]) -> Frame | None:
        kind = frame.type
        handler = self.handler
        if kind is MessageType.HELLO:
            if frame.meta.get("protocol") != PROTOCOL:
                raise ProtocolError(f"client speaks protocol {frame.meta.get('protocol')!r}; this server speaks {PROTOCOL}",
                                    code="bad-version")
            return self.welcome()
        if kind is MessageType.KEYS:
            fmt = frame.meta.get("format")
            if fmt == "seal":
                names = frame.meta.get("names")
                if not isinstance(names, list) or len(names) != len(frame.blobs) or not all(isinstance(n, str) for n in names):
                    raise ProtocolError("KEYS meta.names must name each blob", code="bad-keys")
                blobs = list(zip(names, frame.blobs, strict=True))
            else:
                blobs = [("", b) for b in frame.blobs]
            session = handler.open_session(caller, str(fmt), blobs)
            state["session"] = session.session_id
            return Frame(MessageType.SESSION, {"session": session.session_id, "key_bytes": session.key_bytes})
        if kind is MessageType.RESUME:
            resumed = handler.resume(caller, frame.meta.get("session"))  # type: ignore[arg-type]
            state["session"] = resumed.session_id
            return Frame(MessageType.SESSION, {"session": resumed.session_id, "key_bytes": resumed.key_bytes})
        if kind is MessageType.QUERY:
            if state["session"] is None:
                raise ProtocolError("no keys yet: send KEYS (or RESUME a session) before QUERY", code="no-session")
            request_id = frame.meta.get("id", 0)
            if not isinstance(request_id, int) or isinstance(request_id, bool):
                raise ProtocolError("QUERY meta.id must be an integer", code="bad-query")
            outs, compute_s = handler.evaluate(caller, state["session"], request_id, list(frame.blobs))
            return Frame(MessageType.RESULT, {"id": request_id, "compute_s": compute_s}, tuple(outs))
        if kind is MessageType.BYE:
            return None
        raise ProtocolError(f"a client does not send {kind.name}", code="unexpected-message")
