"""Inputs found while fuzzing the HE server's decoders (benchmarks/fuzz_decoders.py), kept as regressions.

TenSEAL's ``context_from`` builds whatever a serialized context asks for, before
the server can look at it: a context that carries a secret key and sets the
``galois_keys_generated`` flag makes TenSEAL *generate* every power-of-two
Galois key, at whatever parameters the bytes name. A 0.9 MB upload at
N=16384 cost 3.7 s and 538 MB on the server; N=32768 runs to gigabytes per
request. The handler now screens the outer protobuf first
(:func:`secure_infer.backends.tenseal.screen_tenseal_context`): private
members are refused unparsed, and only the layout's own parameters reach TenSEAL.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import secure_infer as si
from protocols.he.handler import Caller, InferenceHandler
from secure_infer import ProtocolError, zoo
from secure_infer.backends.tenseal import screen_tenseal_context
from secure_infer.backends.tenseal._seal import _proto_fields

ts = pytest.importorskip("tenseal")

CALLER = Caller("fuzz", "anonymous")


@pytest.fixture(scope="module")
def program(digits):
    """The digits logistic regression as the HE server serves it (weights untrained: no decoder reads them)."""
    torch.manual_seed(0)
    model = zoo.build("logreg", digits.input_shape, digits.num_classes, seed=0)
    prog = si.wrap(model, backend="tenseal", sample_input=digits.x_train[:1], mode="latency",
                   calibration=digits.x_train).program
    prog.forget_client_keys()
    return prog


@pytest.fixture()
def handler(program):
    return InferenceHandler(program, max_sessions=2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _encode(fields: list[tuple[int, int, bytes | int]]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += _varint(number << 3 | wire)
        if isinstance(value, int):
            out += _varint(value)
        else:
            out += _varint(len(value)) + value
    return bytes(out)


def _keygen_flagged(n: int, bits: list[int]) -> bytes:
    """The input: a private context, no keys but the secret one, both key-generation flags set."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits)
    private = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False,
                            save_relin_keys=False)
    fields = _proto_fields(private)
    inner = next(v for number, _, v in fields if number == 3)
    assert isinstance(inner, bytes)
    flagged = _encode([*_proto_fields(inner), (2, 0, 1), (3, 0, 1)])  # relin_keys_generated, galois_keys_generated
    return _encode([f for f in fields if f[0] != 3] + [(3, 2, flagged)])


def _refuse_parsing(monkeypatch) -> None:
    def parse(*args, **kwargs):
        raise AssertionError("TenSEAL parsed a context the screen should have refused")
    monkeypatch.setattr(ts, "context_from", parse)


def test_tenseal_itself_generates_keys_for_a_flagged_private_context(program) -> None:
    """Why the screen exists: the bytes carry no Galois keys, TenSEAL makes them (all of them) while parsing."""
    params = program.params
    blob = _keygen_flagged(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    loaded = ts.context_from(blob)
    assert loaded.has_galois_keys() and loaded.is_private()


@pytest.mark.parametrize("n, bits", [(None, None), (8192, [60, 40, 40, 60])])
def test_flagged_private_context_is_refused_before_tenseal_parses_it(handler, program, monkeypatch, n, bits) -> None:
    params = program.params
    blob = _keygen_flagged(n or params.poly_modulus_degree, bits or list(params.coeff_mod_bit_sizes))
    _refuse_parsing(monkeypatch)
    with pytest.raises(ProtocolError) as err:
        handler.open_session(CALLER, "tenseal-context", [("context", blob)])
    assert err.value.code == "secret-key-refused"


def test_other_parameters_are_refused_before_tenseal_parses_them(handler, program, monkeypatch) -> None:
    bigger = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    bfv = ts.context(ts.SCHEME_TYPE.BFV, program.params.poly_modulus_degree, plain_modulus=1032193)
    blobs = {name: c.serialize(save_secret_key=False, save_galois_keys=False) for name, c in
             (("N=8192", bigger), ("BFV", bfv))}
    _refuse_parsing(monkeypatch)
    for name, blob in blobs.items():
        with pytest.raises(ProtocolError) as err:
            handler.open_session(CALLER, "tenseal-context", [("context", blob)])
        assert err.value.code == "bad-keys", name
        assert "not the layout's" in str(err.value), name


def test_a_public_context_for_the_layout_still_opens_a_session(handler, program) -> None:
    params = program.params
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.generate_galois_keys()
    session = handler.open_session(CALLER, "tenseal-context", [("context", ctx.serialize(save_secret_key=False))])
    assert session.key_bytes > 0


@pytest.mark.parametrize("blob", [b"", b"\x0a", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                                  b"\x0a\x03abc", b"\x0b", b"\x00\x00", b"\x1a\x00", b"\x12\x00"])
def test_screen_refuses_garbage_with_a_reason(program, blob) -> None:
    with pytest.raises(ValueError):
        screen_tenseal_context(blob, program.server.context)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_protobuf_reader_never_crashes(data) -> None:
    try:
        fields = _proto_fields(data)
    except ValueError:
        return
    assert all(number > 0 and wire in (0, 1, 2, 5) for number, wire, _ in fields)
