"""The data owner's side of HE inference: keys stay here, only ciphertexts leave.

:class:`HEClient` connects, reads the server's published layout (shapes,
packing, CKKS parameters, the rotation keys it needs), re-checks that the
parameters are 128-bit secure, creates keys, uploads the public part once per
session, and then encrypts, queries and decrypts. It packs with the same
:class:`~secure_infer.backends.tenseal.LayoutClient` as ``si.wrap``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from protocols.common.transport import FrameSocket
from protocols.common.wire import DEFAULT_MAX_FRAME, Frame, MessageType, raise_if_error
from secure_infer._errors import ParameterError, ProtocolError

if TYPE_CHECKING:
    from secure_infer.backends.tenseal._client import Layout

PROTOCOL = 1


@dataclass(frozen=True)
class QueryStats:
    """One :meth:`HEClient.predict` call, measured at the client.

    ``round_trip_s`` covers sending, the server's evaluation and receiving,
    ciphertext (de)serialization included; ``server_compute_s`` is the
    server's own evaluation time as it reports it.
    """

    inputs: int
    requests: int
    encrypt_s: float
    round_trip_s: float
    server_compute_s: float
    decrypt_s: float
    bytes_up: int
    bytes_down: int

    @property
    def bytes_per_input(self) -> float:
        return (self.bytes_up + self.bytes_down) / max(self.inputs, 1)


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)``; ``ParameterError`` naming the field otherwise."""
    if isinstance(address, tuple):
        return str(address[0]), int(address[1])
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParameterError(f"server address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:8750)")
    return host, int(port)


def check_published_bounds(layout: Layout) -> None:
    """Refuse a layout whose published ranges would switch the client's own checks off.

    Inputs are refused outside ``layout.input_range`` and decrypted outputs above
    ``layout.output_bound``; a NaN or infinite bound (JSON allows both), or a range
    whose low end is above its high end, makes those comparisons meaningless.
    ``ParameterError`` names the field.
    """
    low, high = layout.input_range
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ParameterError(f"layout.input_range [{low}, {high}] must be two finite numbers, low <= high: the "
                             "client refuses inputs outside it and cannot check them against this one")
    bound = layout.output_bound
    if not (np.isfinite(bound) and bound > 0):
        raise ParameterError(f"layout.output_bound {bound} must be a finite positive number: the client refuses "
                             "decrypted outputs above it and cannot check them against this one")


class HEClient:
    """A connection to an :class:`~protocols.he.server.HEServer`.

    Args:
        address: ``"HOST:PORT"`` or ``(host, port)``.
        timeout: seconds to wait for the server (connect, and each reply).
        max_frame: largest reply accepted, in bytes.

    Keys are uploaded in SEAL's own format; the server also accepts a public
    TenSEAL context (see the wire format), for clients built on TenSEAL.

    Raises:
        ParameterError: the server's layout is refused before any key is made:
            CKKS parameters below 128-bit security (or a ring smaller than 4096),
            or a NaN/infinite/inverted ``input_range`` or ``output_bound``. The
            connection is closed. :meth:`predict` refuses, before anything is
            sent, inputs of the wrong shape, with NaN or infinite values, or
            outside the published ``input_range``.
        ProtocolError: the server cannot be reached or answers out of protocol.
    """

    def __init__(self, address: str | tuple[str, int], *, timeout: float = 300.0,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.address = parse_address(address)
        self.timeout = timeout
        self.max_frame = max_frame
        self.last_query: QueryStats | None = None
        self._next_id = 0
        self._conn: FrameSocket | None = None
        self.session_id: str | None = None
        self.key_upload_bytes = 0
        self._connect()
        try:
            self._start()
        except BaseException:
            self.close(bye=False)  # a refused or failed start leaves no connection open
            raise

    def _start(self) -> None:
        """Read the layout, refuse it if it is weak or incoherent, then make and upload keys."""
        from secure_infer.backends.tenseal._client import Layout, LayoutClient

        welcome = self._hello()
        self.model_name = str(welcome.meta.get("model", "model"))
        try:
            self.layout = Layout.from_json(welcome.meta.get("layout"))  # refuses < 128-bit parameters
            check_published_bounds(self.layout)
        except ParameterError as exc:
            self.close()  # BYE: this client will not send keys under this layout
            host, port = self.address
            raise ParameterError(
                f"the server at {host}:{port} published a layout this client refuses: {exc}. No key was made or "
                "sent; ask the server's operator to serve at 128-bit-secure CKKS parameters with a finite "
                "calibrated input range, or connect to another server"
            ) from None
        self.cipher = LayoutClient(self.layout, for_wire=True)
        self._upload_keys()

    # -- connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        host, port = self.address
        try:
            sock = socket.create_connection((host, port), timeout=min(self.timeout, 30.0))
        except OSError as exc:
            raise ProtocolError(f"cannot reach the server at {host}:{port} ({exc.strerror or exc}); is "
                                "`secure-infer serve` running there?", code="unreachable") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = FrameSocket(sock, peer=f"server {host}:{port}", max_frame=self.max_frame,
                                 idle_timeout=self.timeout, frame_timeout=self.timeout)

    def _exchange(self, frame: Frame, expect: MessageType) -> Frame:
        if self._conn is None:
            raise ProtocolError("the client is closed", code="closed")
        self._conn.send(frame)
        reply = raise_if_error(self._conn.receive())
        if reply.type is not expect:
            raise ProtocolError(f"expected {expect.name} from the server, got {reply.type.name}", code="unexpected-message")
        return reply

    def _hello(self) -> Frame:
        return self._exchange(Frame(MessageType.HELLO, {"protocol": PROTOCOL, "client": "secure-infer"}),
                              MessageType.WELCOME)

    def _upload_keys(self) -> None:
        names = list(self.cipher.keys.public_blobs)
        blobs = tuple(self.cipher.keys.public_blobs[n] for n in names)
        frame = Frame(MessageType.KEYS, {"format": "seal", "names": names}, blobs)
        reply = self._exchange(frame, MessageType.SESSION)
        self.session_id = str(reply.meta["session"])
        self.key_upload_bytes = frame.size

    def reconnect(self) -> None:
        """Open a new connection and resume the session: keys are not uploaded again."""
        self.close(bye=False)
        self._connect()
        self._hello()
        self._exchange(Frame(MessageType.RESUME, {"session": self.session_id}), MessageType.SESSION)

    def close(self, *, bye: bool = True) -> None:
        if self._conn is None:
            return
        if bye:
            try:
                self._conn.send(Frame(MessageType.BYE))
            except ProtocolError:
                pass
        self._conn.close()
        self._conn = None

    def __enter__(self) -> HEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------
    def predict(self, x: torch.Tensor | np.ndarray, *, epilogue: bool = True) -> torch.Tensor:
        """Encrypt ``x`` (one input or a batch), have the server evaluate it, decrypt the outputs.

        The result is shaped like the model's output; with ``epilogue`` (default)
        the model's trailing softmax/log-softmax/sigmoid/argmax, published in the
        layout, runs here on the decrypted values; without it you get the logits.
        """
        from secure_infer.backends.tenseal._seal import from_bytes, to_bytes
        from secure_infer.ir import apply_epilogue

        if self._conn is None:
            raise ProtocolError("the client is closed; create a new HEClient", code="closed")
        flat = self.cipher.check_input(x)
        conn, context = self._conn, self.cipher.keys.context
        traffic = {"up": 0, "down": 0, "compute_s": 0.0}

        def remote(cts: list[Any]) -> list[Any]:
            """One QUERY/RESULT round trip, (de)serialization included."""
            frame = Frame(MessageType.QUERY, {"id": self._next_id}, tuple(to_bytes(c) for c in cts))
            before_in, before_out = conn.bytes_in, conn.bytes_out
            reply = self._exchange(frame, MessageType.RESULT)
            if reply.meta.get("id") != self._next_id:
                raise ProtocolError("the server answered another request", code="unexpected-message")
            self._next_id += 1
            traffic["up"] += conn.bytes_out - before_out
            traffic["down"] += conn.bytes_in - before_in
            traffic["compute_s"] += float(reply.meta.get("compute_s", 0.0))
            try:
                return [from_bytes("Ciphertext", context, blob) for blob in reply.blobs]
            except ValueError as exc:
                raise ProtocolError(f"the server returned a bad ciphertext: {exc}", code="bad-ciphertext") from None

        y, totals = self.cipher.run(flat, remote)
        self.last_query = QueryStats(len(flat), totals.requests, totals.encrypt_s, totals.evaluate_s,
                                     float(traffic["compute_s"]), totals.decrypt_s, int(traffic["up"]),
                                     int(traffic["down"]))
        out = torch.from_numpy(y).float().reshape(len(y), *(self.layout.output_shape or (self.layout.output_size,)))
        return apply_epilogue(self.layout.epilogue, out) if epilogue else out

    def describe(self) -> dict[str, Any]:
        return {"server": f"{self.address[0]}:{self.address[1]}", "model": self.model_name,
                "mode": self.layout.mode, "session": self.session_id, "key_upload_bytes": self.key_upload_bytes}
