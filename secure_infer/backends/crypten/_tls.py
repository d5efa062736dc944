"""CrypTen parties over mutually-authenticated TLS 1.3 links (a CrypTen communicator).

CrypTen's own communicator meets over torch.distributed (gloo): a TCP
rendezvous with no peer authentication and no encryption, and this torch
build's gloo has no TLS transport. :func:`init_tls_communicator` puts a
communicator of our own in its place, whose every link is TLS 1.3 with a
certificate on both ends:

* **Who may join.** Every party holds ``party-R.pem``/``party-R.key`` signed
  by the deployment's CA (``secure-infer certs DIR --parties N``) and trusts
  only that CA. A party whose certificate another CA signed cannot complete a
  handshake. A certificate's common name is a rank: a peer that presents
  ``party-1`` may only ever be rank 1, so party 1 cannot pose as party 0.
  Host names are not checked (the rank in the certificate is the identity).
* **Addresses.** ``peers`` lists one ``HOST:PORT`` per rank, the same list at
  every party. Each party listens at its own entry (or at ``listen``, e.g.
  ``0.0.0.0:PORT`` behind NAT) and dials every other entry.
* **Mesh.** Between two parties there are two connections, one per direction:
  rank i dials rank j and only ever *writes* to that connection, j only ever
  *reads* it. All reading and writing happens in the thread that calls the
  communicator, on non-blocking sockets: while a send waits for room, and
  while a receive waits for its frame, every incoming link is read into
  memory, so two parties sending to each other at once never deadlock. (A
  background reader thread was measured 3x slower: it has to win the GIL
  back from CrypTen's Python code for every 16 KB TLS record.)
* **Framing.** Tensors travel as raw little-endian bytes after a header
  (magic, kind, dtype code, shape); nothing received is ever unpickled.
  ``send_obj``/``broadcast_obj`` carry JSON-like values only (None, bool,
  int, float, str, list, tuple, dict with string keys, ``torch.Size``): what
  CrypTen sends through them when it shares a tensor of unknown size. Other
  objects (``crypten.load_from_party``'s models) are refused with a
  :class:`ParameterError`, and so is the trusted dealer (provider ``TTP``):
  CrypTen's dealer talks through torch.distributed directly and pickles its
  requests.
* **Failures.** Joining, each handshake, each send and each wait for a
  message are bounded by ``timeout``: a peer that is dead, refused or silent
  makes :class:`PartyFailure` name it (rank and address) instead of hanging.
  While joining, a peer whose certificate the CA did not sign, or that
  claims a rank its certificate does not name, is refused and fails the
  join at once, on both the dialing and the accepting side (an operator
  learns of a misconfigured or foreign party at once, not after a timeout).
  Connections that are not TLS at all (a port scan, a health check) are
  ignored.
* **Counting.** Bytes and rounds are counted by CrypTen's own accounting
  (the ``_logging`` decorator of its communicators, 8 bytes per element), so
  reports over TLS and over gloo compare; ``wire_bytes_sent`` and
  ``wire_bytes_received`` add what actually went through the TLS layer
  (headers included, TLS records not).

:func:`shutdown_tls_communicator` closes the links and gives CrypTen back its
own communicator.
"""

from __future__ import annotations

import importlib
import json
import math
import queue
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from secure_infer._errors import ParameterError, PartyFailure, ProtocolError

__all__ = [
    "TLSGroup",
    "TLSLinks",
    "TLSMesh",
    "init_tls_communicator",
    "shutdown_tls_communicator",
    "tls_communicator_active",
]

# --- wire format -----------------------------------------------------------------------------

FRAME_MAGIC = b"SIT1"
_HEADER = struct.Struct("!4sBBB")  # magic, kind, dtype code, number of dimensions
KIND_TENSOR, KIND_OBJECT, KIND_BARRIER = 1, 2, 3
_KIND_NAMES = {KIND_TENSOR: "a tensor", KIND_OBJECT: "an object", KIND_BARRIER: "a barrier"}
_DTYPES: dict[int, torch.dtype] = {
    1: torch.int64, 2: torch.int32, 3: torch.int16, 4: torch.int8, 5: torch.uint8, 6: torch.bool,
    7: torch.float64, 8: torch.float32, 9: torch.float16, 10: torch.bfloat16,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_MAX_DIMS = 16
MAX_OBJECT_BYTES = 16 << 20

HELLO_MAGIC = b"SIMPCTLS"
_HELLO = struct.Struct("!8sII")  # magic, claimed rank, world size
_REPLY = struct.Struct("!2sH")  # b"OK"/b"NO", length of the reason that follows
_HANDSHAKE_S = 10.0  # one connection's handshake and hello, at most (within the join timeout)
_WRITE_CHUNK = 1 << 20  # bytes per write call: large enough to amortise, small enough to interleave reads


@dataclass(frozen=True)
class _Frame:
    kind: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    payload: bytearray

    def describe(self) -> str:
        if self.kind == KIND_TENSOR:
            return f"a {str(self.dtype).removeprefix('torch.')} tensor of shape {self.shape}"
        return _KIND_NAMES.get(self.kind, f"a frame of kind {self.kind}")


def encode_frame(kind: int, tensor: torch.Tensor) -> tuple[bytes, memoryview]:
    """Header and payload of one frame: ``tensor``'s raw bytes after magic, kind, dtype and shape."""
    code = _CODES.get(tensor.dtype)
    if code is None:
        raise ParameterError(f"a {tensor.dtype} tensor cannot travel over TLS links; "
                             f"supported: {', '.join(str(d) for d in _CODES)}")
    if tensor.dim() > _MAX_DIMS:
        raise ParameterError(f"a tensor with {tensor.dim()} dimensions cannot travel (at most {_MAX_DIMS})")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    header = _HEADER.pack(FRAME_MAGIC, kind, code, tensor.dim()) + struct.pack(f"!{tensor.dim()}Q", *tensor.shape)
    payload = flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")
    return header, payload


def _recv_into(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False if the connection ended before the first byte, EOFError mid-way."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            if got == 0:
                return False
            raise EOFError(f"the connection ended {len(view) - got} bytes short")
        got += n
    return True


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    if n and not _recv_into(sock, memoryview(buf)):
        raise EOFError("the connection ended")
    return bytes(buf)


def read_frame(sock: socket.socket, max_bytes: int) -> _Frame | None:
    """One frame from ``sock``; None where the peer closed the connection between frames.

    The header is checked before anything is allocated: the magic, a known
    kind and dtype, at most 16 dimensions, at most ``max_bytes`` of payload.
    """
    head = bytearray(_HEADER.size)
    if not _recv_into(sock, memoryview(head)):
        return None
    kind, code, ndim = _check_header(head)
    shape = _check_shape(kind, code, _read_exact(sock, 8 * ndim), max_bytes)
    payload = bytearray(_payload_size(code, shape))
    if payload and not _recv_into(sock, memoryview(payload)):
        raise EOFError("the connection ended inside a frame")
    return _Frame(kind, _DTYPES[code], shape, payload)


def _check_header(head: bytes | bytearray) -> tuple[int, int, int]:
    magic, kind, code, ndim = _HEADER.unpack(head)
    if magic != FRAME_MAGIC:
        raise ProtocolError(f"a frame starts with {bytes(magic)!r}, not {FRAME_MAGIC!r}", code="bad-magic")
    if kind not in _KIND_NAMES or code not in _DTYPES or ndim > _MAX_DIMS:
        raise ProtocolError(f"a frame has kind {kind}, dtype code {code}, {ndim} dimensions: not one this "
                            "party sends", code="bad-header")
    return kind, code, ndim


def _payload_size(code: int, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * _DTYPES[code].itemsize


def _check_shape(kind: int, code: int, dims: bytes | bytearray, max_bytes: int) -> tuple[int, ...]:
    shape = tuple(struct.unpack(f"!{len(dims) // 8}Q", dims))
    limit = MAX_OBJECT_BYTES if kind == KIND_OBJECT else max_bytes
    if _payload_size(code, shape) > limit:
        raise ProtocolError(f"a frame announces {_payload_size(code, shape)} bytes, more than the {limit} allowed",
                            code="frame-too-large")
    return shape


class _PeerClosed(Exception):
    """The peer closed its link between two frames."""


class _Link:
    """One incoming link, read without blocking: whatever has arrived, frame by frame, into an inbox."""

    def __init__(self, sock: ssl.SSLSocket, max_bytes: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_bytes = max_bytes
        self.done = False  # ended or failed: not read again
        self._stage = 0  # 0: fixed header, 1: dimensions, 2: payload
        self._buf = bytearray(_HEADER.size)
        self._got = 0
        self._kind = self._code = 0
        self._shape: tuple[int, ...] = ()

    def pump(self, inbox: _Inbox) -> int:
        """Read until nothing more has arrived; complete frames go to ``inbox``. Returns the bytes read.

        Raises:
            _PeerClosed: the peer closed the link between frames.
            EOFError: it closed the link inside a frame.
            ProtocolError: a malformed frame.
        """
        total = 0
        while True:
            if self._got < len(self._buf):
                try:
                    n = self.sock.recv_into(memoryview(self._buf)[self._got:], len(self._buf) - self._got)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    return total
                if n == 0:
                    if self._stage == 0 and self._got == 0:
                        raise _PeerClosed()
                    raise EOFError("the link ended inside a frame")
                self._got += n
                total += n
                continue
            if self._stage == 0:
                self._kind, self._code, ndim = _check_header(self._buf)
                self._stage, self._buf = 1, bytearray(8 * ndim)
            elif self._stage == 1:
                self._shape = _check_shape(self._kind, self._code, self._buf, self.max_bytes)
                self._stage, self._buf = 2, bytearray(_payload_size(self._code, self._shape))
            else:
                inbox.put(_Frame(self._kind, _DTYPES[self._code], self._shape, self._buf))
                self._stage, self._buf = 0, bytearray(_HEADER.size)
            self._got = 0


def frame_tensor(frame: _Frame) -> torch.Tensor:
    """The tensor a tensor frame carries (its own memory: the frame's buffer)."""
    if not frame.payload:
        return torch.empty(frame.shape, dtype=frame.dtype)
    if frame.dtype == torch.bool:  # any nonzero byte is True; never reinterpret arbitrary bytes as bool
        return torch.frombuffer(frame.payload, dtype=torch.uint8).ne(0).reshape(frame.shape)
    return torch.frombuffer(frame.payload, dtype=frame.dtype).reshape(frame.shape)


# --- objects: JSON with three tags, never pickle -----------------------------------------------

def _tagged(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ParameterError(f"{obj} cannot travel as an object over TLS links (not finite)")
        return obj
    if isinstance(obj, torch.Size):
        return {"S": [int(s) for s in obj]}
    if isinstance(obj, tuple):
        return {"t": [_tagged(v) for v in obj]}
    if isinstance(obj, list):
        return [_tagged(v) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ParameterError("only dicts with string keys can travel as objects over TLS links")
        return {"d": {k: _tagged(v) for k, v in obj.items()}}
    raise ParameterError(
        f"a {type(obj).__module__}.{type(obj).__qualname__} cannot travel over TLS links: CrypTen's "
        "send_obj/broadcast_obj carry only None, bool, int, float, str, list, tuple, dict and torch.Size "
        "there (nothing is pickled). crypten.load_from_party (models) and the trusted dealer are not "
        "supported over TLS; share tensors with crypten.cryptensor instead")


def encode_object(obj: Any) -> bytes:
    """``obj`` as UTF-8 JSON, tuples, dicts and ``torch.Size`` tagged; refuses anything else."""
    return json.dumps(_tagged(obj), allow_nan=False, separators=(",", ":")).encode("utf-8")


def _untagged(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "S" and isinstance(inner, list) and all(type(s) is int and s >= 0 for s in inner):
            return torch.Size(inner)
        if tag == "t" and isinstance(inner, list):
            return tuple(_untagged(v) for v in inner)
        if tag == "d" and isinstance(inner, dict):
            return {k: _untagged(v) for k, v in inner.items()}
    raise ProtocolError(f"an object frame holds {str(value)[:80]!r}, which no party sends", code="bad-object")


def decode_object(data: bytes | bytearray) -> Any:
    try:
        return _untagged(json.loads(bytes(data).decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"an object frame is not the JSON this party sends ({exc})", code="bad-object") from None


# --- configuration ------------------------------------------------------------------------------

def parse_address(text: str, what: str = "a peer address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port = str(text).rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParameterError(f"{what} {text!r} must look like HOST:PORT")
    return host, int(port)


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class TLSLinks:
    """How one party reaches the others over TLS.

    Attributes:
        peers: ``HOST:PORT`` of every rank, in rank order, the same list at
            every party; a party listens at its own entry and dials the others.
        cert, key: this party's certificate (common name ``party-RANK``) and key.
        ca: the deployment's CA certificate; only certificates it signed are accepted.
        timeout: seconds for joining the mesh, and for any one send or wait for a
            peer's message; a peer silent for longer fails with :class:`PartyFailure`.
        listen: ``HOST:PORT`` to bind instead of this rank's ``peers`` entry
            (``0.0.0.0:PORT`` on a host whose public address is not its own, e.g. behind NAT).
        max_frame_bytes: largest tensor a peer may announce (a sanity bound on allocation).
    """

    peers: tuple[str, ...]
    cert: Path
    key: Path
    ca: Path
    timeout: float = 60.0
    listen: str | None = None
    max_frame_bytes: int = 8 << 30

    @classmethod
    def from_folder(cls, folder: str | Path, rank: int, peers: Sequence[str], **options: Any) -> TLSLinks:
        """``ca.pem`` and ``party-RANK.pem``/``.key`` from a folder written by ``secure-infer certs``."""
        base = Path(folder)
        return cls(tuple(peers), base / f"party-{rank}.pem", base / f"party-{rank}.key", base / "ca.pem", **options)

    @property
    def world_size(self) -> int:
        return len(self.peers)

    def addresses(self) -> list[tuple[str, int]]:
        return [parse_address(p, f"peer address of rank {r}") for r, p in enumerate(self.peers)]

    def validate(self, rank: int) -> None:
        """Raise :class:`ParameterError` for anything that cannot work, before any peer is contacted."""
        if isinstance(self.peers, str) or len(self.peers) < 2:
            raise ParameterError(f"TLS links need one HOST:PORT per rank, at least 2; got {self.peers!r}")
        if not 0 <= rank < len(self.peers):
            raise ParameterError(f"rank {rank} has no entry in the {len(self.peers)} peer addresses")
        addresses = self.addresses()
        if len(set(addresses)) != len(addresses):
            raise ParameterError(f"two ranks share an address in {list(self.peers)}: each party needs its own port")
        if self.listen is not None:
            parse_address(self.listen, "the listen address")
        if not self.timeout > 0:
            raise ParameterError(f"timeout must be > 0 seconds, got {self.timeout}")
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA certificate", self.ca)):
            if not Path(path).is_file():
                raise ParameterError(f"the TLS {what} {path} does not exist; `secure-infer certs DIR --parties N` "
                                     "writes ca.pem and party-R.pem/party-R.key")
        from secure_infer.certs import common_name

        try:
            name = common_name(Path(self.cert).read_bytes())
        except ValueError as exc:
            raise ParameterError(f"{self.cert} is not a PEM certificate ({exc})") from None
        if name != f"party-{rank}":
            raise ParameterError(f"{self.cert} is the certificate of {name!r}, not party-{rank}: each party joins "
                                 "with its own rank's certificate (the others refuse any other)")


def _contexts(links: TLSLinks) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts: TLS 1.3 only, certificate required on both ends, our CA only."""
    made = []
    for side in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(side)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if side == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False  # the identity is the rank in the certificate, checked after the handshake
        else:
            ctx.num_tickets = 0  # no session tickets: a dialer never has to read anything but the hello reply
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=str(links.ca))
        except (ssl.SSLError, OSError) as exc:
            raise ParameterError(f"the CA certificate {links.ca} cannot be loaded ({exc})") from None
        try:
            ctx.load_cert_chain(str(links.cert), str(links.key))
        except (ssl.SSLError, OSError) as exc:
            raise ParameterError(f"the certificate {links.cert} and key {links.key} cannot be loaded together "
                                 f"({exc}): is the key the certificate's own?") from None
        made.append(ctx)
    return made[0], made[1]


def _peer_name(sock: ssl.SSLSocket) -> str:
    cert: Any = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc.reason or exc)
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


# --- the mesh -------------------------------------------------------------------------------------

class _Inbox:
    """Frames from one peer, in arrival order; each wait takes the frame of its ticket."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frames: dict[int, _Frame] = {}
        self.arrived = 0
        self.issued = 0
        self.error: str | None = None

    def put(self, frame: _Frame) -> None:
        with self.cond:
            self.frames[self.arrived] = frame
            self.arrived += 1
            self.cond.notify_all()

    def fail(self, reason: str) -> None:
        with self.cond:
            if self.error is None:
                self.error = reason
            self.cond.notify_all()

    def ticket(self) -> int:
        with self.cond:
            self.issued += 1
            return self.issued - 1

    def take(self, ticket: int, timeout: float) -> _Frame | None:
        """The frame for ``ticket``; None after ``timeout`` s; raises :class:`PartyFailure` once the link failed."""
        with self.cond:
            self.cond.wait_for(lambda: ticket in self.frames or self.error is not None, timeout)
            if ticket in self.frames:
                return self.frames.pop(ticket)
            if self.error is not None:
                raise PartyFailure(self.error)
            return None


class _Join:
    """State shared by the threads that build one party's mesh."""

    def __init__(self, rank: int, world: int, timeout: float) -> None:
        self.rank, self.world, self.timeout = rank, world, timeout
        self.deadline = time.monotonic() + timeout
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.joined: set[int] = set()

    def left(self) -> float:
        return self.deadline - time.monotonic()


class TLSMesh:
    """A full mesh of TLS 1.3 links between ``world_size`` parties, one per direction per pair.

    Build one with :meth:`connect`; CrypTen uses it through the communicator
    :func:`init_tls_communicator` installs. Tests and tools may use it alone.
    """

    def __init__(self, rank: int, addresses: list[tuple[str, int]], incoming: dict[int, ssl.SSLSocket],
                 outgoing: dict[int, ssl.SSLSocket], *, timeout: float, max_frame_bytes: int) -> None:
        self.rank = rank
        self.world_size = len(addresses)
        self.addresses = addresses
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self.version = next(iter(outgoing.values())).version() or ""
        self.wire_bytes_sent = 0
        self.wire_bytes_received = 0
        self._incoming = incoming
        self._outgoing = outgoing
        for sock in outgoing.values():
            sock.setblocking(False)
        self._links = {src: _Link(sock, max_frame_bytes) for src, sock in incoming.items()}
        self._inboxes = {src: _Inbox() for src in incoming}
        self._io = threading.RLock()  # CrypTen calls from one thread; this keeps other callers safe
        self._closed = False

    # -- joining --

    @classmethod
    def connect(cls, rank: int, links: TLSLinks) -> TLSMesh:
        """Listen, dial every other party, accept every other party; all within ``links.timeout``.

        Raises:
            ParameterError: a bad address list, or this party cannot listen at its address.
            PartyFailure: a peer presented a certificate the CA did not sign or of
                another rank, refused this party, or did not connect in time.
        """
        addresses = links.addresses()
        world = len(addresses)
        if not 0 <= rank < world:
            raise ParameterError(f"rank {rank} has no entry in the {world} peer addresses")
        server_ctx, client_ctx = _contexts(links)
        bind = parse_address(links.listen, "the listen address") if links.listen else addresses[rank]
        try:
            listener = socket.create_server(bind)
        except OSError as exc:
            raise ParameterError(f"party {rank} cannot listen at {_show(bind)} ({_why(exc)}): another program "
                                 "(or party) uses the port, or the address is not this host's; pass listen= "
                                 "(--tls-listen) to bind another address") from None
        listener.settimeout(0.2)
        join = _Join(rank, world, links.timeout)
        dialers = [threading.Thread(target=_dial, args=(join, client_ctx, dst, addresses[dst]), daemon=True)
                   for dst in range(world) if dst != rank]
        for thread in [threading.Thread(target=_accept_loop, args=(join, listener, server_ctx), daemon=True),
                       *dialers]:
            thread.start()
        incoming: dict[int, ssl.SSLSocket] = {}
        outgoing: dict[int, ssl.SSLSocket] = {}
        refused: list[str] = []
        last_error: dict[int, str] = {}
        try:
            while len(incoming) < world - 1 or len(outgoing) < world - 1:
                if join.left() <= 0:
                    raise PartyFailure(_join_timeout(rank, links.timeout, addresses, incoming, outgoing,
                                                     last_error, refused))
                try:
                    event = join.events.get(timeout=min(join.left(), 0.2))
                except queue.Empty:
                    continue
                kind = event[0]
                if kind == "in":
                    incoming[event[1]] = event[2]
                elif kind == "out":
                    outgoing[event[1]] = event[2]
                elif kind == "retry":
                    last_error[event[1]] = event[2]
                elif kind == "refused":
                    refused.append(event[1])
                else:  # "fatal"
                    raise PartyFailure(f"party {rank} cannot join: {event[1]}")
        except BaseException:
            join.stop.set()
            grace = time.monotonic() + 1.0  # let first attempts in flight finish (see _dial)
            for dialer in dialers:
                dialer.join(max(0.0, grace - time.monotonic()))
            listener.close()
            for sock in [*incoming.values(), *outgoing.values()]:
                sock.close()
            _close_late(join)
            raise
        join.stop.set()
        listener.close()
        return cls(rank, addresses, incoming, outgoing, timeout=links.timeout,
                   max_frame_bytes=links.max_frame_bytes)

    # -- moving frames --

    def _name(self, peer: int) -> str:
        return f"party {peer} ({_show(self.addresses[peer])})"

    def _check_peer(self, peer: int, what: str) -> None:
        if self._closed:
            raise PartyFailure(f"party {self.rank}'s TLS links are closed; cannot {what} party {peer}")
        if not isinstance(peer, int) or peer == self.rank or not 0 <= peer < self.world_size:
            raise ParameterError(f"party {self.rank} cannot {what} rank {peer!r} (world size {self.world_size})")

    def send(self, dst: int, kind: int, tensor: torch.Tensor) -> None:
        """Send one frame to ``dst``; :class:`PartyFailure` if it takes nothing for ``timeout`` s.

        While the link is full, every incoming link is read meanwhile: a peer
        that sends to this party at the same moment is never left blocked.
        """
        self._check_peer(dst, "send to")
        header, payload = encode_frame(kind, tensor)
        with self._io:
            if len(payload) <= 65536:  # one write, one TLS record for the small messages of most rounds
                self._write(dst, memoryview(header + payload.tobytes()))
            else:
                self._write(dst, memoryview(header))
                self._write(dst, payload)
            self.wire_bytes_sent += len(header) + len(payload)

    def _write(self, dst: int, data: memoryview) -> None:
        sock = self._outgoing[dst]
        done, progress = 0, time.monotonic()
        while done < len(data):
            try:
                done += sock.send(data[done:done + _WRITE_CHUNK])  # the same bytes again after a would-block
                progress = time.monotonic()
                continue
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
            except (OSError, ValueError) as exc:
                raise PartyFailure(f"party {self.rank}: the link to {self._name(dst)} cannot be written to "
                                   f"({_why(exc)}); it exited or failed") from None
            left = progress + self.timeout - time.monotonic()
            if left <= 0:
                raise PartyFailure(f"party {self.rank}: {self._name(dst)} took no data for {self.timeout:.0f} s "
                                   "(stopped, overloaded or stuck)")
            self._wait(min(left, 1.0), writable=sock)

    def ticket(self, src: int) -> int:
        """Reserve the next frame from ``src`` (receives complete in the order they were posted)."""
        self._check_peer(src, "receive from")
        return self._inboxes[src].ticket()

    def take(self, src: int, ticket: int, what: str) -> _Frame:
        """Wait for the frame of ``ticket`` from ``src``: at most ``timeout`` s without a byte from it.

        Reads every incoming link while it waits (frames for later tickets, or
        from other peers, wait in their inboxes).
        """
        inbox = self._inboxes[src]
        with self._io:
            progress = time.monotonic()
            while True:
                frame = inbox.take(ticket, 0)
                if frame is not None:
                    return frame
                if self._pump(src):
                    progress = time.monotonic()
                    continue
                left = progress + self.timeout - time.monotonic()
                if left <= 0:
                    raise PartyFailure(
                        f"party {self.rank} waited {self.timeout:.0f} s for {what} from {self._name(src)}, which "
                        "sent nothing: it is stopped, overloaded or stuck. Stop every party and start again "
                        "(with a larger timeout if the model legitimately needs longer)")
                self._wait(min(left, 1.0))

    def _pump(self, src: int) -> int:
        """Read what has arrived from ``src``; a link that ended or failed marks its inbox."""
        link, inbox = self._links[src], self._inboxes[src]
        if link.done:
            return 0
        try:
            n = link.pump(inbox)
        except _PeerClosed:
            link.done = True
            inbox.fail(f"party {self.rank}: {self._name(src)} closed its link (it exited or failed; see its own log)")
            return 0
        except ProtocolError as exc:
            link.done = True
            inbox.fail(f"party {self.rank}: {self._name(src)} sent a malformed frame ({exc})")
            return 0
        except (OSError, EOFError, ValueError) as exc:
            link.done = True
            inbox.fail(f"party {self.rank}: the link from {self._name(src)} broke ({_why(exc)}); it exited or failed")
            return 0
        self.wire_bytes_received += n
        return n

    def _wait(self, seconds: float, writable: ssl.SSLSocket | None = None) -> None:
        """Sleep until an incoming link has data (read it) or ``writable`` can take more, at most ``seconds``."""
        readers = {link.sock: src for src, link in self._links.items() if not link.done}
        try:
            ready, _, _ = select.select(list(readers), [writable] if writable is not None else [], [], seconds)
        except (OSError, ValueError):
            return
        for sock in ready:
            self._pump(readers[sock])

    def receive(self, src: int, what: str) -> _Frame:
        return self.take(src, self.ticket(src), what)

    def close(self) -> None:
        """Close every link; later sends and waits fail with :class:`PartyFailure`."""
        if self._closed:
            return
        self._closed = True
        for sock in self._outgoing.values():
            try:
                socket.socket.shutdown(sock, socket.SHUT_WR)  # what was sent still arrives, then EOF
            except OSError:
                pass
            sock.close()
        for sock in self._incoming.values():
            sock.close()
        for inbox in self._inboxes.values():
            inbox.fail(f"party {self.rank}'s TLS links are closed")

    def __enter__(self) -> TLSMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _join_timeout(rank: int, timeout: float, addresses: list[tuple[str, int]], incoming: dict[int, Any],
                  outgoing: dict[int, Any], last_error: dict[int, str], refused: list[str]) -> str:
    missing = []
    for peer in range(len(addresses)):
        if peer == rank:
            continue
        if peer not in outgoing:
            missing.append(f"party {peer} at {_show(addresses[peer])} did not accept a connection "
                           f"({last_error.get(peer, 'no answer')})")
        if peer not in incoming:
            missing.append(f"party {peer} did not connect to this party")
    text = f"party {rank} could not join its peers within {timeout:.0f} s: " + "; ".join(missing)
    if refused:
        text += ". Refused connections: " + "; ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
    return text + ". Start every party (with the same peer list), or check their logs"


def _close_late(join: _Join) -> None:
    """Close sockets that joined after the mesh gave up."""
    while True:
        try:
            event = join.events.get_nowait()
        except queue.Empty:
            return
        if event[0] in ("in", "out"):
            event[2].close()


def _accept_loop(join: _Join, listener: socket.socket, ctx: ssl.SSLContext) -> None:
    while not join.stop.is_set():
        try:
            raw, address = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return  # the listener was closed
        threading.Thread(target=_admit, args=(join, ctx, raw, address), daemon=True).start()


def _admit(join: _Join, ctx: ssl.SSLContext, raw: socket.socket, address: Any) -> None:
    """Handshake with one dialer, check that its certificate names the rank it claims, answer its hello."""
    who = _show((str(address[0]), int(address[1])))
    try:
        raw.settimeout(max(0.1, min(join.left(), _HANDSHAKE_S)))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        sock.do_handshake()
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        reason = str(getattr(exc, "reason", "") or "")
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE" in reason:
            # a TLS client with a certificate our CA did not sign (or none): a party from another
            # deployment; fail now rather than wait for a peer that will never be admitted
            join.events.put(("fatal", f"a party at {who} presented a certificate that the deployment's CA did "
                                      f"not sign ({_why(exc)}); refused. Every party needs a certificate "
                                      "from this deployment's `secure-infer certs` folder"))
        elif "ALERT" in reason:  # the dialer aborted the handshake: it does not accept this party's certificate
            join.events.put(("fatal", f"the party at {who} refused this party's certificate ({reason}): is it "
                                      "signed by the deployment's CA, and does the peer trust that CA?"))
        else:  # not TLS, or gone mid-handshake (a port scan, a health check): ignored
            join.events.put(("refused", f"{who} failed the TLS handshake ({_why(exc)})"))
        return
    name = _peer_name(sock)
    try:
        magic, claimed, world = _HELLO.unpack(_read_exact(sock, _HELLO.size))
    except (ssl.SSLError, OSError, EOFError, struct.error) as exc:
        sock.close()
        join.events.put(("refused", f"{who} ({name}) sent no hello ({_why(exc)})"))
        return
    problem = None
    if magic != HELLO_MAGIC:
        problem = "it is not a secure-infer party (bad hello)"
    elif world != join.world:
        problem = f"it runs with {world} parties, this party with {join.world}"
    elif not 0 <= claimed < join.world or claimed == join.rank:
        problem = f"it claims rank {claimed}, which is no other party's rank"
    elif name != f"party-{claimed}":
        problem = (f"it claims rank {claimed}, which its certificate does not name (a party may only join "
                   "under its own certificate's rank)")
    else:
        with join.lock:
            if claimed in join.joined:
                problem = f"party {claimed} is already connected"
            else:
                join.joined.add(claimed)
    answer = (problem or "").encode("utf-8")[:1000]
    try:
        sock.sendall(_REPLY.pack(b"NO" if problem else b"OK", len(answer)) + answer)
    except (ssl.SSLError, OSError) as exc:
        if not problem:
            sock.close()
            with join.lock:
                join.joined.discard(claimed)
            join.events.put(("refused", f"{who} ({name}) left during the hello ({_why(exc)})"))
            return
    if problem:
        sock.close()  # a certified party, misconfigured or lying about its rank: fail now, saying so
        join.events.put(("fatal", f"refused the party at {who} with the certificate of {name!r}: {problem}"))
        return
    sock.settimeout(None)  # its reader blocks until data or EOF; waits are bounded where frames are taken
    if join.stop.is_set():
        sock.close()
        return
    join.events.put(("in", claimed, sock))


def _dial(join: _Join, ctx: ssl.SSLContext, dst: int, address: tuple[str, int]) -> None:
    """Connect to ``dst`` (retrying while it is not up yet), check its certificate, introduce this party."""
    where = f"party {dst} at {_show(address)}"
    attempted = False
    # one attempt even once the join has failed: a refused party still shows itself to every peer
    # that is listening, so each of them fails at once too instead of waiting for its timeout
    while not attempted or (not join.stop.is_set() and join.left() > 0):
        attempted = True
        try:
            raw = socket.create_connection(address, timeout=max(0.1, min(join.left(), _HANDSHAKE_S)))
        except OSError as exc:
            join.events.put(("retry", dst, _why(exc)))
            join.stop.wait(0.1)
            continue
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = ctx.wrap_socket(raw, do_handshake_on_connect=False)
            sock.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            join.events.put(("fatal", f"{where} presented a certificate that the deployment's CA did not sign "
                                      f"({_why(exc)}); refused"))
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError) as exc:
            raw.close()  # the peer is (re)starting: try again
            join.events.put(("retry", dst, _why(exc)))
            join.stop.wait(0.1)
            continue
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            join.events.put(("fatal", f"the TLS handshake with {where} failed ({_why(exc)})"))
            return
        name = _peer_name(sock)
        if name != f"party-{dst}":
            sock.close()
            join.events.put(("fatal", f"{where} presented the certificate of {name!r}, not 'party-{dst}'; refused "
                                      "(a party may only join under its own certificate's rank)"))
            return
        try:
            sock.sendall(_HELLO.pack(HELLO_MAGIC, join.rank, join.world))
            status, length = _REPLY.unpack(_read_exact(sock, _REPLY.size))
            reason = _read_exact(sock, length).decode("utf-8", "replace")
        except (ssl.SSLError, OSError, EOFError) as exc:
            sock.close()
            join.events.put(("fatal", f"{where} refused this party's certificate or hello ({_why(exc)}): is this "
                                      "party's certificate signed by the deployment's CA and still valid?"))
            return
        if status != b"OK":
            sock.close()
            join.events.put(("fatal", f"{where} refused this party: {reason}"))
            return
        sock.settimeout(join.timeout)  # bounds every later send: a stopped peer's full buffer fails, not hangs
        if join.stop.is_set():
            sock.close()
            return
        join.events.put(("out", dst, sock))
        return


# --- the CrypTen communicator -----------------------------------------------------------------------

class _Done:
    """An ``isend`` request: the frame was written when it was made."""

    def wait(self) -> None:
        return None

    def is_completed(self) -> bool:
        return True


class _Receive:
    """An ``irecv`` request: its place in the peer's stream is fixed when it is posted."""

    def __init__(self, comm: _TLSCommunicatorMethods, tensor: torch.Tensor, src: int) -> None:
        self.comm, self.tensor, self.src = comm, tensor, src
        self.ticket = comm.mesh.ticket(src)
        self.done = False

    def wait(self) -> None:
        if not self.done:
            frame = self.comm.mesh.take(self.src, self.ticket, "a tensor (irecv)")
            self.tensor.data.copy_(self.comm._tensor_from(frame, self.src, self.tensor.shape, self.tensor.dtype))
            self.done = True

    def is_completed(self) -> bool:
        return self.done


def _combine(op: Any, acc: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    from torch.distributed import ReduceOp

    if op is None or op == ReduceOp.SUM:
        return acc + part  # int64 wraps around, like gloo's sum: shares live in the ring Z/2^64
    if op == ReduceOp.BXOR:
        return acc ^ part
    if op == ReduceOp.PRODUCT:
        return acc * part
    if op == ReduceOp.MIN:
        return torch.minimum(acc, part)
    if op == ReduceOp.MAX:
        return torch.maximum(acc, part)
    if op == ReduceOp.BAND:
        return acc & part
    if op == ReduceOp.BOR:
        return acc | part
    raise ParameterError(f"reduce operation {op} is not available over TLS links")


class TLSGroup:
    """The computing parties' group over TLS links: the communicator's ``main_group`` there.

    No torch.distributed process group exists over TLS; code that moves
    public metadata with ``torch.distributed`` (as JSON in a byte tensor)
    moves it through :meth:`broadcast_json` instead, still as JSON.
    """

    def __init__(self, comm: _TLSCommunicatorMethods) -> None:
        self._comm = comm

    def broadcast_json(self, value: Any, *, src: int) -> Any:
        """``value`` (JSON-able) from rank ``src`` to every party; others pass anything (None).

        Public metadata, not counted in the communication statistics (as over gloo).
        """
        comm = self._comm
        if comm.rank == src:
            data = _bytes_tensor(json.dumps(value, allow_nan=False).encode("utf-8"))
            for dst in comm._others():
                comm.mesh.send(dst, KIND_OBJECT, data)
            return value
        frame = comm.mesh.receive(src, "public metadata (JSON)")
        if frame.kind != KIND_OBJECT:
            raise ProtocolError(f"party {comm.rank} expected public metadata from party {src} but got "
                                f"{frame.describe()}", code="unexpected-message")
        try:
            return json.loads(bytes(frame.payload).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"party {src} sent metadata that is not JSON ({exc})", code="bad-object") from None


class _TLSCommunicatorMethods:
    """CrypTen's communicator interface over a :class:`TLSMesh`.

    The class CrypTen calls is made from this one by :func:`_communicator_class`:
    it adds CrypTen's ``Communicator`` base and wraps the communicating methods
    in CrypTen's own byte/round accounting.
    """

    BYTES_PER_ELEMENT = 8
    instance: Any = None
    pending: Any = None
    comm_rounds: int
    comm_bytes: float
    comm_time: float

    def __init__(self, mesh: TLSMesh) -> None:
        self.mesh = mesh
        self.rank = mesh.rank
        self.world_size = mesh.world_size
        self.main_group = TLSGroup(self)  # no torch.distributed group exists: see TLSGroup
        self.ttp_initialized = False
        self._name = f"rank{mesh.rank}"
        self.reset_communication_stats()

    # -- life cycle, as crypten.communicator calls it --

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def get(cls) -> Any:
        return cls.instance

    @classmethod
    def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
        if init_ttp:
            raise ParameterError(DEALER_REFUSED)
        if cls.pending is None:
            raise ParameterError("the TLS communicator starts with init_tls_communicator(rank, links), "
                                 "not crypten.init() alone")
        cls.instance, cls.pending = cls.pending, None

    @classmethod
    def shutdown(cls) -> None:
        if cls.instance is not None:
            cls.instance.mesh.close()
        cls.instance = None

    # -- statistics --

    def reset_communication_stats(self) -> None:
        self.comm_rounds = 0
        self.comm_bytes = 0
        self.comm_time = 0.0
        self.mesh.wire_bytes_sent = 0
        self.mesh.wire_bytes_received = 0

    def get_communication_stats(self) -> dict[str, Any]:
        """CrypTen's ``rounds``/``bytes``/``time``, plus the bytes that went through the TLS layer."""
        return {"rounds": self.comm_rounds, "bytes": self.comm_bytes, "time": self.comm_time,
                "wire_bytes_sent": self.mesh.wire_bytes_sent, "wire_bytes_received": self.mesh.wire_bytes_received,
                "transport": f"tls ({self.mesh.version})"}

    # -- helpers --

    def _src(self, src: int | None) -> int:
        if src is None:
            if self.world_size != 2:
                raise ParameterError("recv without src needs exactly 2 parties over TLS links")
            return 1 - self.rank
        return src

    def _group(self, group: Any) -> None:
        if group is not None and group is not self.main_group:
            raise ParameterError("process groups other than the parties' own (the trusted dealer's) do not "
                                 "exist over TLS links: " + DEALER_REFUSED)

    def _others(self) -> list[int]:
        return [r for r in range(self.world_size) if r != self.rank]

    def _tensor_from(self, frame: _Frame, src: int, shape: Any, dtype: torch.dtype,
                     device: Any = None) -> torch.Tensor:
        # like gloo, the element count must match, not the shape (CrypTen sends a () seed into a (1,) buffer)
        if frame.kind != KIND_TENSOR or frame.dtype != dtype or math.prod(frame.shape) != math.prod(shape):
            raise ProtocolError(
                f"party {self.rank} expected a {str(dtype).removeprefix('torch.')} tensor of shape {tuple(shape)} "
                f"from party {src} but got {frame.describe()}: the parties are not running the same program",
                code="unexpected-message")
        tensor = frame_tensor(frame).reshape(tuple(shape))
        return tensor if device is None or torch.device(device).type == "cpu" else tensor.to(device)

    def _recv_like(self, like: torch.Tensor, src: int, what: str) -> torch.Tensor:
        frame = self.mesh.receive(src, what)
        return self._tensor_from(frame, src, like.shape, like.dtype, like.device)

    # -- point to point --

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self.mesh.send(dst, KIND_TENSOR, tensor)

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        return self._recv_like(tensor, self._src(src), "a tensor (recv)")

    def isend(self, tensor: torch.Tensor, dst: int) -> _Done:
        self.mesh.send(dst, KIND_TENSOR, tensor)
        return _Done()

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _Receive:
        return _Receive(self, tensor, self._src(src))

    # -- collectives: every party sends its part to whoever needs it; parts combine in rank order --

    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None, device: Any = None) -> torch.Tensor:
        if self.rank == src:
            for dst in self._others():
                self.mesh.send(dst, KIND_TENSOR, scatter_list[dst])
            return scatter_list[self.rank]
        if size is None:
            size = scatter_list[self.rank].size()
        if device is None and scatter_list:
            device = getattr(scatter_list[self.rank], "device", None)
        return self._tensor_from(self.mesh.receive(src, "a scattered tensor"), src, size, torch.long, device)

    def _reduce_parts(self, tensors: list[torch.Tensor], op: Any, to: list[int], what: str) -> list[torch.Tensor]:
        for dst in to:
            for tensor in tensors:
                self.mesh.send(dst, KIND_TENSOR, tensor)
        parts = {r: [self._recv_like(t, r, what) for t in tensors] for r in self._others()}
        parts[self.rank] = tensors  # not modified: every combine makes a new tensor (world size >= 2)
        results = []
        for i in range(len(tensors)):
            acc = parts[0][i]
            for r in range(1, self.world_size):
                acc = _combine(op, acc, parts[r][i])
            results.append(acc)
        return results

    def reduce(self, input: Any, dst: int, op: Any = None, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        if self.rank != dst:
            for tensor in tensors:
                self.mesh.send(dst, KIND_TENSOR, tensor)
            return None
        results = self._reduce_parts(tensors, op, [], "a part of a reduce")
        return results if batched else results[0]

    def all_reduce(self, input: Any, op: Any = None, batched: bool = False) -> Any:
        tensors = list(input) if batched else [input]
        results = self._reduce_parts(tensors, op, self._others(), "a part of an all_reduce")
        return results if batched else results[0]

    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        if self.rank != dst:
            self.mesh.send(dst, KIND_TENSOR, tensor)
            return [None]
        return [tensor.clone() if r == self.rank else self._recv_like(tensor, r, "a part of a gather")
                for r in range(self.world_size)]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        for dst in self._others():
            self.mesh.send(dst, KIND_TENSOR, tensor)
        return [tensor.clone() if r == self.rank else self._recv_like(tensor, r, "a part of an all_gather")
                for r in range(self.world_size)]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        self._group(group)
        tensors = list(input) if batched else [input]
        if self.rank == src:
            for dst in self._others():
                for tensor in tensors:
                    self.mesh.send(dst, KIND_TENSOR, tensor)
        else:
            for tensor in tensors:
                tensor.data.copy_(self._recv_like(tensor, src, "a broadcast tensor"))
        return input

    def barrier(self) -> None:
        empty = torch.empty(0, dtype=torch.uint8)
        for dst in self._others():
            self.mesh.send(dst, KIND_BARRIER, empty)
        for src in self._others():
            frame = self.mesh.receive(src, "the barrier")
            if frame.kind != KIND_BARRIER:
                raise ProtocolError(f"party {self.rank} expected the barrier from party {src} but got "
                                    f"{frame.describe()}: the parties are not running the same program",
                                    code="unexpected-message")

    # -- objects (JSON, see encode_object) --

    def _object_from(self, src: int, what: str) -> Any:
        frame = self.mesh.receive(src, what)
        if frame.kind != KIND_OBJECT:
            raise ProtocolError(f"party {self.rank} expected an object from party {src} but got "
                                f"{frame.describe()}", code="unexpected-message")
        return decode_object(frame.payload)

    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        self._group(group)
        self.mesh.send(dst, KIND_OBJECT, _bytes_tensor(encode_object(obj)))

    def recv_obj(self, src: int, group: Any = None) -> Any:
        self._group(group)
        return self._object_from(src, "an object (recv_obj)")

    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        self._group(group)
        if self.rank == src:
            data = _bytes_tensor(encode_object(obj))
            for dst in self._others():
                self.mesh.send(dst, KIND_OBJECT, data)
            return obj
        return self._object_from(src, "a broadcast object")

    # -- identity --

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        raise ParameterError(DEALER_REFUSED)

    def set_name(self, name: str) -> None:
        if not isinstance(name, str):
            raise ParameterError(f"party name must be a string, got {type(name).__name__}")
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "tls"


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


DEALER_REFUSED = ("the trusted dealer (CrypTen provider TTP) cannot run over TLS links: CrypTen's dealer "
                   "talks to the parties through torch.distributed directly and pickles its requests. Run "
                   "without the dealer (provider TFP, the default) or over the gloo rendezvous")

# methods CrypTen's accounting wraps, as it wraps DistributedCommunicator's
_COUNTED = ("send", "recv", "isend", "irecv", "scatter", "reduce", "all_reduce", "gather", "all_gather",
            "broadcast", "barrier", "send_obj", "recv_obj", "broadcast_obj")
_STATE: dict[str, Any] = {"class": None, "original": None}
_STATE_LOCK = threading.Lock()


def _communicator_class() -> Any:
    """``TLSCommunicator``: our methods on CrypTen's ``Communicator`` base, counted by CrypTen's ``_logging``."""
    if _STATE["class"] is None:
        from crypten.communicator.communicator import Communicator, _logging

        namespace = {name: _logging(getattr(_TLSCommunicatorMethods, name)) for name in _COUNTED}
        namespace["__doc__"] = _TLSCommunicatorMethods.__doc__
        namespace["__module__"] = __name__
        _STATE["class"] = type("TLSCommunicator", (_TLSCommunicatorMethods, Communicator), namespace)
    return _STATE["class"]


def tls_communicator_active() -> bool:
    """Whether CrypTen in this process talks over TLS links now."""
    cls = _STATE["class"]
    return cls is not None and cls.instance is not None


def init_tls_communicator(rank: int, links: TLSLinks) -> ModuleType:
    """Join the other parties over TLS and leave CrypTen ready (``crypten.init()`` done) for ``rank``.

    CrypTen's ``crypten.communicator`` module then hands out a TLS communicator
    instead of its torch.distributed one, until :func:`shutdown_tls_communicator`.
    Byte and round counting is switched on (``cfg.communicator.verbose``).

    Args:
        rank: this party's rank, ``0..len(links.peers) - 1``.
        links: addresses, this party's certificate and key, the CA, the timeout.

    Returns:
        The ``crypten`` module (compatibility fixes applied), ready for
        ``crypten.cryptensor`` and ``crypten.nn``.

    Raises:
        ParameterError: bad addresses or files, a certificate of another rank,
            CrypTen already initialized here, or the trusted dealer configured.
        PartyFailure: a peer is refused, refuses this party, or does not join
            within ``links.timeout``.
    """
    from secure_infer._crypten_compat import load_crypten

    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise ParameterError("TLS links send tensors as little-endian bytes; this host is big-endian")
    links.validate(rank)
    crypten = load_crypten()
    comm: Any = importlib.import_module("crypten.communicator")
    if crypten.mpc.ttp_required():  # a configuration error, whatever state this process is in
        raise ParameterError(DEALER_REFUSED)
    if comm.is_initialized():
        raise ParameterError("CrypTen is already initialized in this process; call crypten.uninit() "
                             "(or shutdown_tls_communicator()) before joining over TLS")
    mesh = TLSMesh.connect(rank, links)
    with _STATE_LOCK:
        cls = _communicator_class()
        cls.pending = cls(mesh)
        if comm.DistributedCommunicator is not cls:
            _STATE["original"] = comm.DistributedCommunicator
            comm.DistributedCommunicator = cls  # what crypten.communicator.get() hands out
    crypten.cfg.communicator.verbose = True  # count bytes and rounds, as the gloo parties do
    try:
        crypten.init()  # initializes the communicator (adopts the mesh) and shares the PRNG seeds over it
    except BaseException:
        shutdown_tls_communicator()
        mesh.close()
        raise
    return crypten


def shutdown_tls_communicator() -> None:
    """Close the TLS links and give CrypTen its own communicator back; safe to call twice."""
    with _STATE_LOCK:
        cls = _STATE["class"]
        if cls is None:
            return
        comm: Any = sys.modules.get("crypten.communicator")
        if cls.instance is not None:
            if comm is not None and comm.DistributedCommunicator is cls:
                comm.uninit()  # crypten.uninit(): shuts the communicator (our mesh) down
            else:
                cls.shutdown()
        if cls.pending is not None:
            cls.pending.mesh.close()
            cls.pending = None
        if comm is not None and _STATE["original"] is not None and comm.DistributedCommunicator is cls:
            comm.DistributedCommunicator = _STATE["original"]
