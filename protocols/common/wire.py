"""The legacy secure-infer frame format, version 1: framing and message codec.

Legacy: the HE service speaks gRPC (``protocols/he/proto/inference.proto``,
version 2). This frame format survives for :class:`protocols.he.legacy.FrameServer`
(plain TCP, loopback or ``insecure=True`` only), kept so existing clients and
the transport benchmark can still use it.

This docstring is the specification (``docs/wire-format.md`` repeats it with
an example session); a client written from it alone can talk to the server.
Nothing on the wire is pickled: metadata is JSON, payloads are SEAL's own
serialization of keys and ciphertexts.

Frame
-----
Every message is one frame: a 16-byte header, then ``meta_len`` bytes of
metadata, then ``body_len`` bytes of body. All integers are big-endian.

======  ======  ==========  ==================================================
offset  size    field       meaning
======  ======  ==========  ==================================================
0       4       magic       ASCII ``SINF``
4       1       version     ``1``
5       1       type        message type (table below)
6       2       flags       reserved, must be ``0``
8       4       meta_len    length of the metadata (UTF-8 JSON object)
12      4       body_len    length of the body
======  ======  ==========  ==================================================

The body is zero or more binary blobs back to back; ``meta["blobs"]`` lists
their lengths in order (it must sum to ``body_len``; omitted when the body is
empty). A receiver refuses a frame whose ``16 + meta_len + body_len`` exceeds
its limit (the server announces its own in WELCOME as ``max_frame``) before
reading the rest.

Messages
--------
====  ========  =========  =====================================================
type  name      direction  metadata (besides ``blobs``) and blobs
====  ========  =========  =====================================================
1     HELLO     c -> s     ``{"protocol": 1, "client": str}``
2     WELCOME   s -> c     ``{"protocol": 1, "model": str, "layout": {...},
                           "max_frame": int, "idle_timeout_s": float}``;
                           layout: mode, input_shape, output_size, input_range,
                           output_bound, poly_modulus_degree,
                           coeff_mod_bit_sizes, scale_bits, period,
                           rotation_steps (the Galois keys the server needs),
                           chunks, output_chunks (latency: ciphertexts per
                           input and per output, usually 1), block, width
                           (latency: the blocked input packing, 0 if periodic),
                           gather (latency, optional: the tap packing, one
                           list of input indices per input ciphertext, -1
                           for a zero slot),
                           output_shape, epilogue (the model's trailing
                           softmax/log_softmax/sigmoid/argmax, run by the client)
3     KEYS      c -> s     ``{"format": "seal", "names": [...]}`` with blobs
                           named ``relin_keys`` and (latency mode)
                           ``galois_keys``, each SEAL-serialized (seeded form
                           welcome); a ``public_key`` is accepted and dropped; or
                           ``{"format": "tenseal-context"}`` with one blob, a
                           TenSEAL context serialized *without* its secret key
4     SESSION   s -> c     ``{"session": hex str, "key_bytes": int}``
5     RESUME    c -> s     ``{"session": hex str}``: reuse keys uploaded on an
                           earlier connection; answered by SESSION or ERROR
6     QUERY     c -> s     ``{"id": int}``; blobs: SEAL ciphertexts for one
                           input, ``chunks`` of them (latency), or one per
                           input value (batch, one input per slot)
7     RESULT    s -> c     ``{"id": int, "compute_s": float}``; blobs: output
                           ciphertexts (``output_chunks`` in latency mode, one
                           per output value in batch mode)
8     ERROR     s -> c     ``{"code": str, "message": str, "fatal": bool}``;
                           after a fatal error the server closes the connection
9     BYE       c -> s     ``{}``; the server closes the connection
====  ========  =========  =====================================================

A secret key is never accepted: a KEYS frame naming any blob other than the
three above, or a TenSEAL context that carries a secret key, is refused with
``secret-key-refused`` (fatal).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from secure_infer._errors import ProtocolError

MAGIC = b"SINF"
VERSION = 1
HEADER = struct.Struct(">4sBBHII")
HEADER_SIZE = HEADER.size  # 16
DEFAULT_MAX_FRAME = 256 * 1024 * 1024


class MessageType(IntEnum):
    HELLO = 1
    WELCOME = 2
    KEYS = 3
    SESSION = 4
    RESUME = 5
    QUERY = 6
    RESULT = 7
    ERROR = 8
    BYE = 9


@dataclass(frozen=True)
class Frame:
    """One decoded message: its type, JSON metadata and binary blobs."""

    type: MessageType
    meta: dict[str, Any] = field(default_factory=dict)
    blobs: tuple[bytes, ...] = ()

    @property
    def size(self) -> int:
        return len(encode(self))


def encode(frame: Frame) -> bytes:
    """The frame's bytes on the wire (header, metadata, body)."""
    meta = dict(frame.meta)
    meta.pop("blobs", None)
    if frame.blobs:
        meta["blobs"] = [len(b) for b in frame.blobs]
    meta_bytes = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode("utf-8")
    body = b"".join(frame.blobs)
    return HEADER.pack(MAGIC, VERSION, int(frame.type), 0, len(meta_bytes), len(body)) + meta_bytes + body


@dataclass(frozen=True)
class Header:
    type: int
    meta_len: int
    body_len: int

    @property
    def frame_size(self) -> int:
        return HEADER_SIZE + self.meta_len + self.body_len


def decode_header(data: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Header:
    """Validate the 16-byte header; ``ProtocolError`` with the reason's code otherwise."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"a frame header is {HEADER_SIZE} bytes, got {len(data)}", code="truncated")
    magic, version, msg_type, flags, meta_len, body_len = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a secure-infer peer (expected {MAGIC!r})", code="bad-magic")
    if version != VERSION:
        raise ProtocolError(f"wire version {version} is not supported (this peer speaks {VERSION})",
                            code="bad-version")
    if flags != 0:
        raise ProtocolError(f"flags must be 0 in version {VERSION}, got {flags}", code="bad-flags")
    header = Header(msg_type, meta_len, body_len)
    if header.frame_size > max_frame:
        raise ProtocolError(f"frame of {header.frame_size} bytes exceeds the limit of {max_frame} bytes",
                            code="frame-too-large")
    return header


def decode_payload(header: Header, meta_bytes: bytes, body: bytes) -> Frame:
    """Decode metadata and body of a frame whose header already passed :func:`decode_header`."""
    try:
        msg_type = MessageType(header.type)
    except ValueError:
        raise ProtocolError(f"unknown message type {header.type}", code="unknown-type") from None
    try:
        meta = json.loads(meta_bytes.decode("utf-8")) if meta_bytes else {}
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or an integer of thousands of digits
        raise ProtocolError(f"metadata is not UTF-8 JSON: {exc}", code="bad-meta") from None
    if not isinstance(meta, dict):
        raise ProtocolError("metadata must be a JSON object", code="bad-meta")
    sizes = meta.pop("blobs", [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes):
        raise ProtocolError("meta.blobs must be a list of non-negative integers", code="bad-meta")
    if sum(sizes) != len(body):
        raise ProtocolError(f"meta.blobs sums to {sum(sizes)} bytes but the body has {len(body)}", code="bad-meta")
    blobs, at = [], 0
    for size in sizes:
        blobs.append(body[at : at + size])
        at += size
    return Frame(msg_type, meta, tuple(blobs))


def decode(data: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one whole frame held in memory (the inverse of :func:`encode`)."""
    header = decode_header(data[:HEADER_SIZE], max_frame=max_frame)
    if len(data) != header.frame_size:
        raise ProtocolError(f"frame should be {header.frame_size} bytes, got {len(data)}", code="truncated")
    meta_end = HEADER_SIZE + header.meta_len
    return decode_payload(header, data[HEADER_SIZE:meta_end], data[meta_end:])


def error_frame(code: str, message: str, *, fatal: bool = False) -> Frame:
    return Frame(MessageType.ERROR, {"code": code, "message": message, "fatal": fatal})


def raise_if_error(frame: Frame) -> Frame:
    """Turn a received ERROR frame into ``ProtocolError`` (with the server's code and message)."""
    if frame.type is MessageType.ERROR:
        raise ProtocolError(f"server: {frame.meta.get('message', '(no message)')}",
                            code=str(frame.meta.get("code", "server-error")))
    return frame
