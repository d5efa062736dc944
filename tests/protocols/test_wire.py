"""The wire codec: decode(encode(frame)) == frame, and no byte string crashes the decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.common.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    Frame,
    MessageType,
    decode,
    decode_header,
    encode,
)
from secure_infer import ProtocolError

json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20) | \
    st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
frames = st.builds(
    Frame,
    st.sampled_from(list(MessageType)),
    st.dictionaries(st.text(max_size=10).filter(lambda k: k != "blobs"), json_values, max_size=5),
    st.lists(st.binary(max_size=300), max_size=4).map(tuple),
)


@given(frames)
def test_decode_inverts_encode(frame: Frame) -> None:
    assert decode(encode(frame)) == frame


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_protocol_error_only(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert exc.code


@settings(max_examples=300)
@given(frames, st.data())
def test_corrupted_frames_raise_protocol_error_only(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decode(bytes(raw[:cut]))
    except ProtocolError as exc:
        assert exc.code


def test_header_refuses_oversize_frames_before_reading_them() -> None:
    header = struct.pack(">4sBBHII", MAGIC, 1, int(MessageType.QUERY), 0, 10, 2**31)
    with pytest.raises(ProtocolError) as info:
        decode_header(header, max_frame=1 << 20)
    assert info.value.code == "frame-too-large" and str(1 << 20) in str(info.value)


@pytest.mark.parametrize(("field", "value", "code"), [
    ("magic", b"HTTP", "bad-magic"), ("version", 2, "bad-version"), ("flags", 1, "bad-flags"),
])
def test_header_fields_are_checked(field: str, value: object, code: str) -> None:
    parts = {"magic": MAGIC, "version": 1, "flags": 0}
    parts[field] = value
    header = struct.pack(">4sBBHII", parts["magic"], parts["version"], 1, parts["flags"], 0, 0)
    assert len(header) == HEADER_SIZE
    with pytest.raises(ProtocolError) as info:
        decode_header(header)
    assert info.value.code == code


@pytest.mark.parametrize("meta", [
    '{"id":%s}', '{"blobs":[%s]}', '[%s]', '{"a":{"b":[1,-%s]}}',
], ids=["value", "blob-size", "not-an-object", "nested-negative"])
def test_huge_json_integers_are_bad_meta(meta: str) -> None:
    """Python refuses to parse an integer of more than 4,300 digits (ValueError): a malformed frame, not a crash."""
    raw = (meta % ("9" * 5000)).encode()
    frame = HEADER.pack(MAGIC, 1, int(MessageType.QUERY), 0, len(raw), 0) + raw
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code == "bad-meta"
    fits = (meta % ("9" * 4000)).encode()  # below the limit: parsed (and then checked like any metadata)
    try:
        decode(HEADER.pack(MAGIC, 1, int(MessageType.QUERY), 0, len(fits), 0) + fits)
    except ProtocolError as exc:
        assert exc.code == "bad-meta" and "not UTF-8 JSON" not in str(exc)


def test_blob_sizes_must_match_the_body() -> None:
    raw = bytearray(encode(Frame(MessageType.QUERY, {"id": 1}, (b"abc",))))
    with pytest.raises(ProtocolError, match="sums to"):
        decode(_patch_body_len(raw, -1))


def _patch_body_len(raw: bytearray, delta: int) -> bytes:
    magic, version, kind, flags, meta_len, body_len = struct.unpack(">4sBBHII", raw[:HEADER_SIZE])
    head = struct.pack(">4sBBHII", magic, version, kind, flags, meta_len, body_len + delta)
    return head + bytes(raw[HEADER_SIZE:len(raw) + delta])
