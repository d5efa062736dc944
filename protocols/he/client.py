"""The data owner's side of HE inference: keys stay here, only ciphertexts leave.

:class:`HEClient` connects, reads the server's published layout (shapes,
packing, CKKS parameters, the rotation keys it needs), re-checks that the
parameters are 128-bit secure, creates keys, uploads the public part once per
session, and then encrypts, queries and decrypts. It packs with the same
:class:`~secure_infer.backends.tenseal.LayoutClient` as ``si.wrap``.

How bytes move is a :class:`~protocols.he.channels.Channel`: gRPC (with TLS
and a token or client certificate; the default) or the legacy frame protocol
(``transport="frames"``). The client's checks do not depend on which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protocols.he.channels import Channel, ClientTLS, FrameChannel, GrpcChannel, parse_address
from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.backends.tenseal import Layout, LayoutClient, from_bytes, to_bytes


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
    """A connection to an HE server (:class:`~protocols.he.HEServer`, gRPC; or the legacy frame server).

    Args:
        address: ``"HOST:PORT"`` or ``(host, port)``.
        timeout: seconds to wait for the server (connect, and each call).
        tls: the CA to trust (and this client's certificate for mutual TLS); required off loopback.
        token: this client's API token (``secure-infer clients add``), sent as call metadata.
        insecure: talk plaintext to a server off loopback anyway.
        transport: ``"grpc"`` (default) or ``"frames"`` (the legacy protocol: no TLS, no identities).

    Keys are uploaded in SEAL's own format; the server also accepts a public
    TenSEAL context (see the wire format), for clients built on TenSEAL.

    Raises:
        ParameterError: the server's layout is refused before any key is made:
            CKKS parameters below 128-bit security (or a ring smaller than 4096),
            or a NaN/infinite/inverted ``input_range`` or ``output_bound``. The
            connection is closed. :meth:`predict` refuses, before anything is
            sent, inputs of the wrong shape, with NaN or infinite values, or
            outside the published ``input_range``.
        ProtocolError: the server cannot be reached, refuses this client (code
            ``unauthenticated``, ``permission-denied``, ``budget-exhausted``,
            ``rate-limited``, ...), or answers out of protocol.
    """

    def __init__(self, address: str | tuple[str, int], *, timeout: float = 300.0, tls: ClientTLS | None = None,
                 token: str | None = None, insecure: bool = False, transport: str = "grpc") -> None:
        self.address = parse_address(address)
        self.timeout = timeout
        if transport not in ("grpc", "frames"):
            raise ParameterError(f"transport must be 'grpc' or 'frames', got {transport!r}")
        self._open = lambda: (GrpcChannel(self.address, timeout=timeout, tls=tls, token=token, insecure=insecure)
                              if transport == "grpc" else FrameChannel(self.address, timeout=timeout, insecure=insecure))
        self.last_query: QueryStats | None = None
        self._next_id = 0
        self._conn: Channel | None = self._open()
        self.session_id: str | None = None
        self.key_upload_bytes = 0
        self.budget: dict[str, Any] | None = None
        try:
            self._start()
        except BaseException:
            self.close(bye=False)  # a refused or failed start leaves no connection open
            raise

    def _start(self) -> None:
        """Read the layout, refuse it if it is weak or incoherent, then make and upload keys."""
        welcome = self._channel().hello()
        self.model_name = welcome.model
        self.budget = welcome.budget
        try:
            self.layout = Layout.from_json(welcome.layout)  # refuses < 128-bit parameters
            check_published_bounds(self.layout)
        except ParameterError as exc:
            self.close()  # this client will not send keys under this layout
            host, port = self.address
            raise ParameterError(
                f"the server at {host}:{port} published a layout this client refuses: {exc}. No key was made or "
                "sent; ask the server's operator to serve at 128-bit-secure CKKS parameters with a finite "
                "calibrated input range, or connect to another server"
            ) from None
        self.cipher = LayoutClient(self.layout, for_wire=True)
        names = list(self.cipher.keys.public_blobs)
        session = self._channel().upload_keys("seal", [(n, self.cipher.keys.public_blobs[n]) for n in names])
        self.session_id = session.session_id
        self.key_upload_bytes = session.bytes_sent
        self.budget = session.budget or self.budget

    def _channel(self) -> Channel:
        if self._conn is None:
            raise ProtocolError("the client is closed; create a new HEClient", code="closed")
        return self._conn

    def reconnect(self) -> None:
        """Open a new connection and resume the session: keys are not uploaded again."""
        self.close(bye=False)
        self._conn = self._open()
        self._conn.hello()
        assert self.session_id is not None
        self._conn.resume(self.session_id)

    def close(self, *, bye: bool = True) -> None:
        if self._conn is None:
            return
        self._conn.close(bye=bye)
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
        from secure_infer.ir import apply_epilogue

        conn = self._channel()
        flat = self.cipher.check_input(x)
        self._check_budget(len(flat))
        context = self.cipher.keys.context
        traffic = {"up": 0, "down": 0, "compute_s": 0.0}

        def remote(cts: list[Any]) -> list[Any]:
            """One request/reply round trip, (de)serialization included."""
            assert self.session_id is not None
            reply = conn.evaluate(self.session_id, self._next_id, [to_bytes(c) for c in cts])
            self._next_id += 1
            traffic["up"] += reply.bytes_sent
            traffic["down"] += reply.bytes_received
            traffic["compute_s"] += reply.compute_s
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

    def _check_budget(self, inputs: int) -> None:
        """Refuse, before encrypting anything, a batch the server would stop answering part-way."""
        if self.budget is None or int(self.budget.get("limit", -1)) < 0:
            return
        budget = self.remaining_budget() or {}
        limit, used = int(budget.get("limit", -1)), int(budget.get("used", 0))
        slots = self.layout.params.slots
        needed = inputs if self.layout.mode == "latency" else -(-inputs // slots) * slots
        if limit >= 0 and used + needed > limit:
            raise ProtocolError(f"this client ({budget.get('client')}) has used {used} of its budget of {limit} "
                                f"inputs; these {inputs} inputs need {needed}: nothing was sent. Ask the server's "
                                "operator for more", code="budget-exhausted")

    def remaining_budget(self) -> dict[str, Any] | None:
        """The server's view of this client's budget now (None from an unmetered or legacy server)."""
        self.budget = self._channel().budget()
        return self.budget

    def describe(self) -> dict[str, Any]:
        return {"server": f"{self.address[0]}:{self.address[1]}", "model": self.model_name,
                "mode": self.layout.mode, "session": self.session_id, "key_upload_bytes": self.key_upload_bytes,
                "budget": self.budget}
