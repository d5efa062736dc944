"""The model owner's side of HE inference, served over gRPC (TLS outside loopback).

:class:`HEServer` is a thin adapter from the gRPC service in
``protocols/he/proto/inference.proto`` to :class:`~protocols.he.handler.InferenceHandler`:
it reassembles chunked keys and ciphertexts, reads credentials from the call
(``authorization: Bearer TOKEN`` metadata, or a verified client certificate),
and turns the handler's refusals into gRPC statuses with the precise reason in
the trailing metadata ``secure-infer-code``. Limits come from gRPC itself:
message size (``chunk_bytes``), concurrent calls (``max_concurrent_rpcs``),
keep-alive and idle-connection reaping; the adapter adds what gRPC does not
know: a cap on a whole stream's bytes, a time limit between chunks and per
request (slow clients), and a bounded pool of evaluation threads. The
standard gRPC health service answers for ``secureinfer.he.v2.Inference``.

Plaintext is served only on loopback, or when the operator says
``insecure=True`` (``--insecure``); anywhere else TLS is required.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protocols.common.address import is_loopback
from protocols.he.handler import PROTOCOL, AuditLog, Caller, InferenceHandler, ServerStats
from protocols.he.proto import inference_pb2 as pb
from protocols.he.proto import inference_pb2_grpc as pb_grpc
from protocols.he.state import Client, ServerState
from secure_infer._errors import ParameterError, ProtocolError

log = logging.getLogger(__name__)

SERVICE = "secureinfer.he.v2.Inference"
CODE_KEY = "secure-infer-code"
DEFAULT_CHUNK = 1 << 20
# a refusal's code -> the gRPC status it travels as
STATUS = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "permission-denied": grpc.StatusCode.PERMISSION_DENIED,
    "budget-exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "rate-limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too-large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unknown-session": grpc.StatusCode.NOT_FOUND,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "bad-version": grpc.StatusCode.FAILED_PRECONDITION,
    "internal-error": grpc.StatusCode.INTERNAL,
}  # everything else (bad-keys, bad-ciphertext, bad-query, bad-request, secret-key-refused): INVALID_ARGUMENT

T = TypeVar("T")


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate and key, and (mutual TLS) the CA its clients' certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as exc:
            raise ParameterError(f"TLS file {exc.filename}: {exc.strerror}; make them with `secure-infer certs DIR`") from None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class _Malformed:
    """A request message that is not valid protobuf for its type (stands in for it; the method refuses it).

    gRPC's own deserializers raise on such bytes, and gRPC answers UNKNOWN or
    INTERNAL (as if the server were broken); the bytes are the client's fault.
    """

    def __init__(self, kind: str, error: str) -> None:
        self.kind = kind
        self.error = error


def _lenient(message: Any) -> Callable[[bytes], Any]:
    """A deserializer for ``message`` that returns a :class:`_Malformed` instead of raising."""
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception as exc:  # DecodeError, or anything else the parser raises on hostile bytes
            return _Malformed(message.DESCRIPTOR.name, str(exc) or type(exc).__name__)
    return parse


def _well_formed(message: T) -> T:
    if isinstance(message, _Malformed):
        raise ProtocolError(f"a {message.kind} message that is not valid protobuf: {message.error}",
                            code="bad-request")
    return message


def _add_service(service: _Service, server: grpc.aio.Server) -> None:
    """``add_InferenceServicer_to_server``, with deserializers that let a malformed message reach the method."""
    handlers = {
        "GetLayout": grpc.unary_unary_rpc_method_handler(
            service.GetLayout, request_deserializer=_lenient(pb.LayoutRequest),
            response_serializer=pb.LayoutReply.SerializeToString),
        "UploadKeys": grpc.stream_unary_rpc_method_handler(
            service.UploadKeys, request_deserializer=_lenient(pb.KeyChunk),
            response_serializer=pb.Session.SerializeToString),
        "Resume": grpc.unary_unary_rpc_method_handler(
            service.Resume, request_deserializer=_lenient(pb.ResumeRequest),
            response_serializer=pb.Session.SerializeToString),
        "Evaluate": grpc.stream_stream_rpc_method_handler(
            service.Evaluate, request_deserializer=_lenient(pb.CiphertextChunk),
            response_serializer=pb.CiphertextChunk.SerializeToString),
        "GetBudget": grpc.unary_unary_rpc_method_handler(
            service.GetBudget, request_deserializer=_lenient(pb.BudgetRequest),
            response_serializer=pb.Budget.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class _Service(pb_grpc.InferenceServicer):
    """gRPC methods -> handler calls; runs on the server's event loop, evaluates in its thread pool."""

    def __init__(self, server: HEServer) -> None:
        self.server = server
        self.handler = server.handler

    # -- plumbing --------------------------------------------------------------------------
    async def _fail(self, context: grpc.aio.ServicerContext, exc: ProtocolError, who: dict[str, Caller],
                    method: str) -> None:
        self.handler.refused(exc, caller=who.get("caller"), peer=str(context.peer()), method=method)
        status = STATUS.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT)
        await context.abort(status, str(exc), trailing_metadata=((CODE_KEY, exc.code),))

    async def _guard(self, context: grpc.aio.ServicerContext, method: str,
                     work: Callable[[dict[str, Caller]], Awaitable[T]]) -> T:
        who: dict[str, Caller] = {}  # the caller, once known, for the audit line of a refusal
        try:
            return await work(who)
        except ProtocolError as exc:
            await self._fail(context, exc, who, method)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # a bug must not take the server down: report it, fail this call only
            log.exception("internal error in %s", context.peer())
            self.handler.count_internal_error()
            await self._fail(context, ProtocolError(f"{type(exc).__name__}: {exc}", code="internal-error"), who, method)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _caller(self, context: grpc.aio.ServicerContext, who: dict[str, Caller]) -> Caller:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                scheme, _, rest = str(value).partition(" ")
                if scheme.lower() != "bearer" or not rest.strip():
                    raise ProtocolError("authorization metadata must be 'Bearer TOKEN'", code="unauthenticated")
                token = rest.strip()
        names = (context.auth_context() or {}).get("x509_common_name") or []
        cert_name = names[0].decode("utf-8", "replace") if names else None
        who["caller"] = self.handler.authenticate(token=token, certificate_name=cert_name, peer=str(context.peer()))
        return who["caller"]

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.server._executor, fn, *args)

    async def _chunks(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The request stream, with a time limit between chunks and for the whole stream, and a byte cap."""
        loop = asyncio.get_running_loop()
        srv = self.server
        deadline = loop.time() + srv.request_timeout
        total = 0
        it = requests.__aiter__()
        while True:
            wait = min(srv.idle_timeout, deadline - loop.time())
            if wait <= 0:
                raise ProtocolError(f"the request did not finish within {srv.request_timeout:g} s", code="timeout")
            try:
                chunk = await asyncio.wait_for(it.__anext__(), wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if wait < srv.idle_timeout:  # the wait was cut short by the whole-request limit
                    raise ProtocolError(f"the request did not finish within {srv.request_timeout:g} s",
                                        code="timeout") from None
                raise ProtocolError(f"no data for {srv.idle_timeout:g} s in the middle of a request",
                                    code="timeout") from None
            chunk = _well_formed(chunk)
            total += chunk.ByteSize()  # every field: names and session ids count too, not only data
            if total > self.handler.max_request_bytes:
                raise ProtocolError(f"the request exceeds {self.handler.max_request_bytes} bytes (max_request_bytes "
                                    "in the layout reply)", code="too-large")
            yield chunk

    def _budget(self, client: Client | None) -> pb.Budget | None:
        if client is None:
            return None
        return pb.Budget(client=client.name, limit=client.budget, used=client.used,
                         rate_per_minute=client.rate_per_minute)

    # -- methods ---------------------------------------------------------------------------
    async def GetLayout(self, request: pb.LayoutRequest, context: grpc.aio.ServicerContext) -> pb.LayoutReply:
        async def work(who: dict[str, Caller]) -> pb.LayoutReply:
            _well_formed(request)
            if request.protocol != PROTOCOL:
                raise ProtocolError(f"client speaks protocol {request.protocol}; this server speaks {PROTOCOL}",
                                    code="bad-version")
            caller = self._caller(context, who)
            self.handler.count_connection()
            return pb.LayoutReply(protocol=PROTOCOL, model=self.handler.name,
                                  layout_json=json.dumps(self.handler.layout()),
                                  max_request_bytes=self.handler.max_request_bytes, chunk_bytes=self.server.chunk_bytes,
                                  budget=self._budget(self.handler.budget(caller)))
        return await self._guard(context, "GetLayout", work)

    async def UploadKeys(self, request_iterator: AsyncIterator[pb.KeyChunk],
                         context: grpc.aio.ServicerContext) -> pb.Session:
        async def work(who: dict[str, Caller]) -> pb.Session:
            caller = self._caller(context, who)
            fmt = ""
            blobs: list[tuple[str, bytearray]] = []
            async for chunk in self._chunks(request_iterator):
                if not fmt:
                    fmt = chunk.format
                elif chunk.format and chunk.format != fmt:
                    raise ProtocolError("every KeyChunk's format must match the first one's", code="bad-keys")
                if not blobs or chunk.name != blobs[-1][0]:
                    blobs.append((chunk.name, bytearray()))
                blobs[-1][1].extend(chunk.data)
            session = await self._run(self.handler.open_session, caller, fmt,
                                      [(name, bytes(data)) for name, data in blobs])
            return pb.Session(session_id=session.session_id, key_bytes=session.key_bytes,
                              budget=self._budget(self.handler.budget(caller)))
        return await self._guard(context, "UploadKeys", work)

    async def Resume(self, request: pb.ResumeRequest, context: grpc.aio.ServicerContext) -> pb.Session:
        async def work(who: dict[str, Caller]) -> pb.Session:
            caller = self._caller(context, who)
            session = self.handler.resume(caller, _well_formed(request).session_id)
            return pb.Session(session_id=session.session_id, key_bytes=session.key_bytes,
                              budget=self._budget(self.handler.budget(caller)))
        return await self._guard(context, "Resume", work)

    async def GetBudget(self, request: pb.BudgetRequest, context: grpc.aio.ServicerContext) -> pb.Budget:
        async def work(who: dict[str, Caller]) -> pb.Budget:
            _well_formed(request)
            budget = self._budget(self.handler.budget(self._caller(context, who)))
            return budget if budget is not None else pb.Budget(client="anonymous", limit=-1)
        return await self._guard(context, "GetBudget", work)

    async def Evaluate(self, request_iterator: AsyncIterator[pb.CiphertextChunk],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CiphertextChunk]:
        async def work(who: dict[str, Caller]) -> tuple[list[bytes], float, int]:
            caller = self._caller(context, who)
            session_id, request_id = "", 0
            blobs: list[bytearray] = []
            async for chunk in self._chunks(request_iterator):
                if not blobs and not session_id:
                    session_id, request_id = chunk.session_id, chunk.request_id
                if chunk.index == len(blobs):
                    blobs.append(bytearray())
                elif chunk.index != len(blobs) - 1:
                    raise ProtocolError(f"ciphertext chunk index {chunk.index} out of order (expected "
                                        f"{max(len(blobs) - 1, 0)} or {len(blobs)})", code="bad-request")
                if len(blobs) > self.handler.ciphertexts_per_request:
                    raise ProtocolError(f"more than {self.handler.ciphertexts_per_request} ciphertexts in one request",
                                        code="bad-query")
                blobs[-1].extend(chunk.data)
            if not session_id:
                raise ProtocolError("the request's first chunk must name its session_id", code="bad-request")
            outs, compute_s = await self._run(self.handler.evaluate, caller, session_id, request_id,
                                              [bytes(b) for b in blobs])
            return outs, compute_s, request_id

        outs, compute_s, request_id = await self._guard(context, "Evaluate", work)
        step = self.server.chunk_bytes
        first = True
        for index, blob in enumerate(outs):
            for at in range(0, max(len(blob), 1), step):
                msg = pb.CiphertextChunk(index=index, data=blob[at : at + step])
                if first:
                    msg.request_id, msg.compute_s, first = request_id, compute_s, False
                yield msg


class HEServer:
    """Serve one compiled TenSEAL program to many clients over gRPC.

    Args:
        program: a ``TensealProgram`` (``si.wrap(model, backend="tenseal", ...).program``).
        name: the model name announced to clients.
        host, port: where to listen (``port=0`` picks a free port; see :attr:`address`).
        tls: the server's certificate (and client CA for mutual TLS); required off loopback.
        insecure: serve plaintext off loopback anyway (for a network you trust; says so in logs).
        state: a :class:`~protocols.he.state.ServerState` or its SQLite path: client tokens and budgets.
        allow_anonymous: accept callers without credentials; default: only when ``state`` has no client.
        audit_log: a JSON-lines file receiving one line per query and refusal.
        chunk_bytes: largest payload per gRPC message, both ways.
        max_request_bytes: largest key upload or request, all chunks together.
        idle_timeout: seconds a request may go without a chunk; idle connections are closed after it.
        request_timeout: seconds a whole request may take to arrive.
        workers: threads evaluating requests (default: the CPU count).
        max_concurrent_rpcs: calls in progress at once; more are refused (RESOURCE_EXHAUSTED).
        max_sessions: key sets kept at once; the least recently used is dropped.
        identity: what registered clients present: ``"token"``, ``"certificate"``, ``"both"`` or ``"any"``
            (default: ``"both"`` with mutual TLS, else ``"token"``).
    """

    def __init__(self, program: Any, *, name: str = "model", host: str = "127.0.0.1", port: int = 0,
                 tls: ServerTLS | None = None, insecure: bool = False, state: ServerState | str | Path | None = None,
                 allow_anonymous: bool | None = None, audit_log: str | Path | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK, max_request_bytes: int = 256 << 20, idle_timeout: float = 60.0,
                 request_timeout: float = 300.0, workers: int | None = None, max_concurrent_rpcs: int = 256,
                 max_sessions: int = 64, identity: str | None = None) -> None:
        if getattr(program, "published", None) is None or not hasattr(program, "evaluate"):
            raise ParameterError("HEServer needs a TenSEAL program: HEServer.from_model(model, sample_input), or "
                                 "si.wrap(model, backend='tenseal', ...).program")
        if tls is None and not insecure and not is_loopback(host):
            raise ParameterError(f"--host {host} is not loopback: serve with TLS (--tls-cert/--tls-key, make them with "
                                 "`secure-infer certs DIR --host " + host + "`) or, on a network you trust, --insecure")
        if not 4096 <= chunk_bytes <= 64 << 20:
            raise ParameterError(f"chunk_bytes must be between 4 KiB and 64 MiB, got {chunk_bytes}")
        self._owns_state = isinstance(state, str | Path)
        if isinstance(state, str | Path):
            state = ServerState(state)
        if allow_anonymous is None:
            allow_anonymous = state is None or not state.has_clients()
        self.program = program
        self.handler = InferenceHandler(program, name=name, state=state, allow_anonymous=allow_anonymous,
                                        max_sessions=max_sessions, max_request_bytes=max_request_bytes,
                                        audit=AuditLog(audit_log),
                                        identity=identity or ("both" if tls is not None and tls.client_ca else "token"))
        self.name = name
        self.tls = tls
        self.chunk_bytes = chunk_bytes
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.report: Any = None
        self._executor = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="he-eval")
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._port = 0
        self._host = host
        self._options = [
            ("grpc.max_receive_message_length", chunk_bytes + (64 << 10)),
            ("grpc.max_send_message_length", chunk_bytes + (64 << 10)),
            ("grpc.so_reuseport", 0),  # a taken port is an error, not a silent second listener
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_connection_idle_ms", int(idle_timeout * 1000)),
            ("grpc.max_concurrent_streams", 32),
        ]
        self._max_rpcs = max_concurrent_rpcs
        self._thread = threading.Thread(target=self._loop_main, args=(port,), name="he-grpc", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._executor.shutdown(wait=False)
            raise self._error

    @classmethod
    def from_model(cls, model: torch.nn.Module, sample_input: torch.Tensor, *, mode: str = "latency",
                   calibration: torch.Tensor | None = None, schedule: str | None = None,
                   poly_degree: int | None = None, tolerance: float | None = None, rotation_keys: int | None = None,
                   **kwargs: Any) -> HEServer:
        """Compile ``model``, measure its approximations on ``sample_input``, and serve it.

        The local key pair ``wrap`` used for that measurement is dropped before
        serving: the server holds no secret key. ``schedule``, ``poly_degree``,
        ``tolerance`` and ``rotation_keys`` are ``wrap``'s; other keywords are :class:`HEServer`'s.
        """
        import secure_infer as si
        from secure_infer.backends.tenseal import TensealProgram

        enc = si.wrap(model, backend="tenseal", sample_input=sample_input, mode=mode, calibration=calibration,
                      schedule=schedule, poly_degree=poly_degree, tolerance=tolerance, rotation_keys=rotation_keys)
        assert isinstance(enc.program, TensealProgram)  # what wrap(..., "tenseal") builds
        enc.program.forget_client_keys()
        server = cls(enc.program, **kwargs)
        server.report = enc.report()
        return server

    # -- the event loop thread -------------------------------------------------------------
    def _loop_main(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(port))
        except BaseException as exc:  # a failure to bind is reported to the constructor
            if not self._ready.is_set():
                self._error = exc
        finally:
            self._ready.set()
            self._stopped.set()

    async def _serve(self, port: int) -> None:
        server = grpc.aio.server(options=self._options, maximum_concurrent_rpcs=self._max_rpcs)
        _add_service(_Service(self), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        target = f"[{self._host}]:{port}" if ":" in self._host else f"{self._host}:{port}"
        try:
            if self.tls is not None:
                bound = server.add_secure_port(target, self.tls.credentials())
            else:
                bound = server.add_insecure_port(target)
        except RuntimeError as exc:
            raise ParameterError(f"cannot listen on {self._host}:{port} ({exc}); choose another --port") from None
        if not bound:
            raise ParameterError(f"cannot listen on {self._host}:{port}; choose another --port")
        self._port = bound
        await server.start()
        for service in (SERVICE, ""):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=2.0)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def stats(self) -> ServerStats:
        return self.handler.stats

    def start(self) -> HEServer:
        """The server accepts calls from construction on; kept so ``with HEServer(...)`` reads naturally."""
        return self

    def serve_forever(self) -> None:
        """Block until :meth:`close` (from another thread or a signal handler)."""
        while not self._stopped.wait(0.5):
            pass

    def close(self) -> None:
        if self._stop is not None and not self._stopped.is_set():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_state and self.handler.state is not None:
            self.handler.state.close()

    def __enter__(self) -> HEServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
