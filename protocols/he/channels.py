"""How an HE client's calls reach a server: gRPC (default) or the legacy frame protocol.

A :class:`Channel` has four calls (hello, upload_keys, resume, evaluate) and
a budget query; :class:`~protocols.he.client.HEClient` does everything else
(keys, checks, packing) the same way over either. Server refusals surface as
:class:`~secure_infer.ProtocolError` with the server's code, so a caller can
tell ``budget-exhausted`` from ``unauthenticated`` from a network failure.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from protocols.common.address import is_loopback
from protocols.common.transport import FrameSocket
from protocols.common.wire import DEFAULT_MAX_FRAME, Frame, MessageType, raise_if_error
from protocols.he.proto import inference_pb2 as pb
from protocols.he.proto import inference_pb2_grpc as pb_grpc
from protocols.he.server import CODE_KEY, DEFAULT_CHUNK
from secure_infer._errors import ParameterError, ProtocolError

GRPC_PROTOCOL = 2
FRAME_PROTOCOL = 1
# gRPC statuses without a secure-infer code (the server never answered, or gRPC itself refused)
_STATUS_CODES = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "timeout",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "too-large",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.UNIMPLEMENTED: "bad-version",
}


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)``; ``ParameterError`` naming the field otherwise."""
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParameterError(f"server address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:8750)")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ClientTLS:
    """The CA that signed the server's certificate, and (mutual TLS) this client's certificate and key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # check the server's certificate for this name instead of the address's host

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ParameterError("give --tls-cert and --tls-key together (this client's certificate and its key)")
        try:
            ca = self.ca.read_bytes()
            cert = self.cert.read_bytes() if self.cert is not None else None
            key = self.key.read_bytes() if self.key is not None else None
        except OSError as exc:
            raise ParameterError(f"TLS file {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


@dataclass(frozen=True)
class Welcome:
    model: str
    layout: Any
    budget: dict[str, Any] | None = None


@dataclass(frozen=True)
class Opened:
    session_id: str
    bytes_sent: int
    budget: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    blobs: list[bytes]
    compute_s: float
    bytes_sent: int
    bytes_received: int
    extra: dict[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    def hello(self) -> Welcome: ...
    def upload_keys(self, fmt: str, blobs: list[tuple[str, bytes]]) -> Opened: ...
    def resume(self, session_id: str) -> Opened: ...
    def evaluate(self, session_id: str, request_id: int, blobs: list[bytes]) -> Reply: ...
    def budget(self) -> dict[str, Any] | None: ...
    def close(self, *, bye: bool = True) -> None: ...


def _budget(msg: pb.Budget) -> dict[str, Any] | None:
    if not msg.client:
        return None
    return {"client": msg.client, "limit": msg.limit, "used": msg.used, "rate_per_minute": msg.rate_per_minute}


class GrpcChannel:
    """The gRPC service in ``protocols/he/proto/inference.proto``, over TLS unless the server is on loopback."""

    def __init__(self, address: tuple[str, int], *, timeout: float, tls: ClientTLS | None, token: str | None,
                 insecure: bool = False, chunk_bytes: int = DEFAULT_CHUNK) -> None:
        host, port = address
        self.address = address
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        if tls is None and not insecure and not is_loopback(host):
            raise ParameterError(f"{host}:{port} is not loopback: connect with TLS (--tls-ca, the CA that signed the "
                                 "server's certificate) or, on a network you trust, --insecure")
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise ParameterError("--token must be one word (as `secure-infer clients add` printed it)")
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                   ("grpc.keepalive_time_ms", 30_000)]
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = tls is not None

    def _error(self, exc: grpc.RpcError) -> ProtocolError:
        status = exc.code()  # type: ignore[attr-defined]
        code = dict(exc.trailing_metadata() or ()).get(CODE_KEY)  # type: ignore[attr-defined]
        details = exc.details() or status.name  # type: ignore[attr-defined]
        host, port = self.address
        if code is None and status is grpc.StatusCode.UNAVAILABLE:
            return ProtocolError(f"cannot reach the server at {host}:{port}{' over TLS' if self._tls else ''} "
                                 f"({details}); is `secure-infer serve` running there"
                                 f"{', and does --tls-ca hold the CA that signed its certificate' if self._tls else ''}?",
                                 code="unreachable")
        return ProtocolError(f"server: {details}", code=str(code or _STATUS_CODES.get(status, "server-error")))

    def _call(self, fn: Any, request: Any) -> Any:
        try:
            return fn(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def hello(self) -> Welcome:
        reply = self._call(self._stub.GetLayout, pb.LayoutRequest(protocol=GRPC_PROTOCOL, client_software="secure-infer"))
        try:
            layout = json.loads(reply.layout_json)
        except ValueError as exc:
            raise ProtocolError(f"the server's layout is not JSON: {exc}", code="bad-meta") from None
        self.chunk_bytes = min(self.chunk_bytes, reply.chunk_bytes or self.chunk_bytes)
        return Welcome(reply.model or "model", layout, _budget(reply.budget))

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        for at in range(0, max(len(data), 1), self.chunk_bytes):
            yield bytes(view[at : at + self.chunk_bytes])

    def upload_keys(self, fmt: str, blobs: list[tuple[str, bytes]]) -> Opened:
        sent = [0]

        def chunks() -> Iterator[pb.KeyChunk]:
            first = True
            for name, data in blobs:
                for piece in self._pieces(data):
                    msg = pb.KeyChunk(format=fmt if first else "", name=name, data=piece)
                    first = False
                    sent[0] += msg.ByteSize()
                    yield msg

        reply = self._call(self._stub.UploadKeys, chunks())
        return Opened(reply.session_id, sent[0], _budget(reply.budget))

    def resume(self, session_id: str) -> Opened:
        reply = self._call(self._stub.Resume, pb.ResumeRequest(session_id=session_id))
        return Opened(reply.session_id, 0, _budget(reply.budget))

    def evaluate(self, session_id: str, request_id: int, blobs: list[bytes]) -> Reply:
        sent = [0]

        def chunks() -> Iterator[pb.CiphertextChunk]:
            first = True
            for index, data in enumerate(blobs):
                for piece in self._pieces(data):
                    msg = pb.CiphertextChunk(index=index, data=piece)
                    if first:
                        msg.session_id, msg.request_id, first = session_id, request_id, False
                    sent[0] += msg.ByteSize()
                    yield msg

        out: list[bytearray] = []
        received, compute_s, seen_first = 0, 0.0, False
        try:
            for msg in self._stub.Evaluate(chunks(), timeout=self.timeout, metadata=self._metadata):
                received += msg.ByteSize()
                if not seen_first:
                    if msg.request_id != request_id:
                        raise ProtocolError("the server answered another request", code="unexpected-message")
                    compute_s, seen_first = msg.compute_s, True
                if msg.index == len(out):
                    out.append(bytearray())
                elif msg.index != len(out) - 1:
                    raise ProtocolError("the server's reply chunks are out of order", code="unexpected-message")
                out[-1].extend(msg.data)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return Reply([bytes(b) for b in out], compute_s, sent[0], received)

    def budget(self) -> dict[str, Any] | None:
        return _budget(self._call(self._stub.GetBudget, pb.BudgetRequest()))

    def close(self, *, bye: bool = True) -> None:
        self._channel.close()


class FrameChannel:
    """The legacy frame protocol over plain TCP (``protocols/common/wire.py``)."""

    def __init__(self, address: tuple[str, int], *, timeout: float, insecure: bool = False,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        host, port = address
        if not insecure and not is_loopback(host):
            raise ParameterError(f"the legacy frame protocol has no TLS: {host}:{port} is not loopback; use the gRPC "
                                 "transport, or insecure=True on a network you trust")
        try:
            sock = socket.create_connection((host, port), timeout=min(timeout, 30.0))
        except OSError as exc:
            raise ProtocolError(f"cannot reach the server at {host}:{port} ({exc.strerror or exc}); is "
                                "`secure-infer serve` running there?", code="unreachable") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = FrameSocket(sock, peer=f"server {host}:{port}", max_frame=max_frame, idle_timeout=timeout,
                                 frame_timeout=timeout)

    def _exchange(self, frame: Frame, expect: MessageType) -> Frame:
        self._conn.send(frame)
        reply = raise_if_error(self._conn.receive())
        if reply.type is not expect:
            raise ProtocolError(f"expected {expect.name} from the server, got {reply.type.name}", code="unexpected-message")
        return reply

    def hello(self) -> Welcome:
        w = self._exchange(Frame(MessageType.HELLO, {"protocol": FRAME_PROTOCOL, "client": "secure-infer"}),
                           MessageType.WELCOME)
        return Welcome(str(w.meta.get("model", "model")), w.meta.get("layout"))

    def upload_keys(self, fmt: str, blobs: list[tuple[str, bytes]]) -> Opened:
        frame = Frame(MessageType.KEYS, {"format": fmt, "names": [n for n, _ in blobs]}, tuple(b for _, b in blobs))
        reply = self._exchange(frame, MessageType.SESSION)
        return Opened(str(reply.meta["session"]), frame.size)

    def resume(self, session_id: str) -> Opened:
        reply = self._exchange(Frame(MessageType.RESUME, {"session": session_id}), MessageType.SESSION)
        return Opened(str(reply.meta["session"]), 0)

    def evaluate(self, session_id: str, request_id: int, blobs: list[bytes]) -> Reply:
        before_in, before_out = self._conn.bytes_in, self._conn.bytes_out
        reply = self._exchange(Frame(MessageType.QUERY, {"id": request_id}, tuple(blobs)), MessageType.RESULT)
        if reply.meta.get("id") != request_id:
            raise ProtocolError("the server answered another request", code="unexpected-message")
        return Reply(list(reply.blobs), float(reply.meta.get("compute_s", 0.0)), self._conn.bytes_out - before_out,
                     self._conn.bytes_in - before_in)

    def budget(self) -> dict[str, Any] | None:
        return None

    def close(self, *, bye: bool = True) -> None:
        if bye:
            try:
                self._conn.send(Frame(MessageType.BYE))
            except ProtocolError:
                pass
        self._conn.close()
