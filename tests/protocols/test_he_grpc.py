"""The gRPC HE server under hostile and unlucky clients: every refusal's status, its code, and service after it.

Each refusal is checked three ways: the gRPC status, the ``secure-infer-code`` trailing metadata (or the
``ProtocolError.code`` the client raises), and a real client that still gets the model's answers from
the same server afterwards. Requests are built by hand (raw stubs, or identity serializers for bytes
that are not protobuf at all) wherever a well-behaved client would refuse to send them.

One compiled program (the digits logistic regression) is served by several servers, each configured
for what its tests need: anonymous, strict limits, a client registry, TLS, mutual TLS.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocols.he import ClientTLS, HEClient, HEServer, ServerState, ServerTLS
from protocols.he.channels import GrpcChannel
from protocols.he.proto import inference_pb2 as pb
from protocols.he.proto import inference_pb2_grpc as pb_grpc
from protocols.he.server import CODE_KEY, SERVICE
from secure_infer import ParameterError, ProtocolError
from secure_infer.backends.tenseal import to_bytes
from secure_infer.backends.tenseal._params import CKKSParameters
from secure_infer.backends.tenseal._seal import ClientKeys
from secure_infer.certs import make_pki

pytestmark = pytest.mark.multiprocess

PATIENT_S = 30.0  # waits that end as soon as the answer comes; long only so that a loaded machine cannot fail them
STRICT_IDLE_S = 1.0  # the strict server's time limit between chunks
STRICT_REQUEST_S = 2.5  # ... and for a whole request stream
STRICT_CHUNK = 64 << 10  # the strict server's largest message payload
STRICT_MAX_REQUEST = 2 << 20  # ... and largest stream (the logreg's keys take about 0.95 MB)


# -- servers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def program(logreg_program) -> Any:
    return logreg_program[0]


@pytest.fixture(scope="module")
def model(logreg_program) -> torch.nn.Module:
    return logreg_program[1]


@pytest.fixture(scope="module")
def open_server(program) -> Iterator[HEServer]:
    """Anonymous, loopback plaintext, generous limits."""
    with HEServer(program, name="logreg", idle_timeout=PATIENT_S) as server:
        yield server


@pytest.fixture(scope="module")
def strict_server(program) -> Iterator[HEServer]:
    """Anonymous, with small message, stream and time limits."""
    with HEServer(program, idle_timeout=STRICT_IDLE_S, request_timeout=STRICT_REQUEST_S, chunk_bytes=STRICT_CHUNK,
                  max_request_bytes=STRICT_MAX_REQUEST) as server:
        yield server


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[tuple[ServerState, dict[str, str]]]:
    """Registered clients (tokens): alice and bob unlimited, ratey limited to 1 input per minute."""
    state = ServerState(tmp_path_factory.mktemp("registry") / "state.db")
    tokens = {"alice": state.add_client("alice"), "bob": state.add_client("bob"),
              "ratey": state.add_client("ratey", rate_per_minute=1)}
    yield state, tokens
    state.close()


@pytest.fixture(scope="module")
def metered_server(program, registry) -> Iterator[HEServer]:
    """Loopback plaintext with a client registry: a token is required (no anonymous callers)."""
    state, _ = registry
    with HEServer(program, state=state, idle_timeout=PATIENT_S) as server:
        assert not server.handler.allow_anonymous
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """``ours``: the CA the servers use, with client certificates; ``theirs``: a stranger's CA, same client names."""
    root = tmp_path_factory.mktemp("pki")
    make_pki(root / "ours", clients=["alice", "bob", "carol", "dave"])
    make_pki(root / "theirs", clients=["alice"])
    return root


def _tls(pki: Path, *, ca: str = "ours", cert: str | None = None, issuer: str = "ours") -> ClientTLS:
    """Trust ``ca``'s CA; present ``cert`` (a client certificate issued by ``issuer``'s CA), if any."""
    if cert is None:
        return ClientTLS(pki / ca / "ca.pem")
    return ClientTLS(pki / ca / "ca.pem", pki / issuer / f"client-{cert}.pem", pki / issuer / f"client-{cert}.key")


@pytest.fixture(scope="module")
def tls_server(program, pki) -> Iterator[HEServer]:
    """TLS (server certificate only), anonymous callers."""
    with HEServer(program, tls=ServerTLS(pki / "ours" / "server.pem", pki / "ours" / "server.key"),
                  idle_timeout=PATIENT_S) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_registry(tmp_path_factory) -> Iterator[tuple[ServerState, dict[str, str]]]:
    state = ServerState(tmp_path_factory.mktemp("mtls") / "state.db")
    tokens = {name: state.add_client(name) for name in ("alice", "bob", "dave")}
    yield state, tokens
    state.close()


def _mtls(program: Any, pki: Path, state: ServerState, **kwargs: Any) -> HEServer:
    tls = ServerTLS(pki / "ours" / "server.pem", pki / "ours" / "server.key", client_ca=pki / "ours" / "ca.pem")
    return HEServer(program, tls=tls, state=state, idle_timeout=PATIENT_S, **kwargs)


@pytest.fixture(scope="module")
def mtls_server(program, pki, mtls_registry) -> Iterator[HEServer]:
    """Mutual TLS with a client registry; the default identity there: a certificate and a token, same client."""
    with _mtls(program, pki, mtls_registry[0]) as server:
        assert server.handler.identity == "both"
        yield server


# -- helpers ------------------------------------------------------------------------------------

def _still_serves(server: HEServer, model: torch.nn.Module, digits: Any, **client: Any) -> None:
    """A real client connects (keys and all) and gets the model's answers, value for value."""
    x = digits.x_test[:2]
    with HEClient(server.address, timeout=PATIENT_S, **client) as c:
        y = c.predict(x)
    with torch.no_grad():
        error = float((y - model(x)).abs().max())
    assert error < 1e-2, f"decrypted outputs differ from the plaintext model's by {error:.3g}"
    assert server.stats.internal_errors == 0


def _target(server: HEServer) -> str:
    host, port = server.address
    return f"{host}:{port}"


class _Raw:
    """A hand-driven connection: the generated stub, and identity-serialized methods for arbitrary bytes."""

    def __init__(self, server: HEServer, *, token: str | None = None, tls: ClientTLS | None = None) -> None:
        target = _target(server)
        options = [("grpc.max_send_message_length", 64 << 20)]
        self.channel = (grpc.secure_channel(target, tls.credentials(), options=options) if tls is not None
                        else grpc.insecure_channel(target, options=options))
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> _Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def call(self, method: str, request: Any) -> Any:
        """A generated-stub call; streams take a list (or iterator) of messages and are drained."""
        fn = getattr(self.stub, method)
        if method in ("UploadKeys", "Evaluate"):
            reply = fn(iter(request), timeout=PATIENT_S, metadata=self.metadata)
            return list(reply) if method == "Evaluate" else reply
        return fn(request, timeout=PATIENT_S, metadata=self.metadata)

    def call_bytes(self, method: str, payloads: list[bytes]) -> Any:
        """``method`` with these exact message bytes (no serializer: they need not be protobuf)."""
        path = f"/{SERVICE}/{method}"
        if method == "UploadKeys":
            return self.channel.stream_unary(path)(iter(payloads), timeout=PATIENT_S, metadata=self.metadata)
        if method == "Evaluate":
            return list(self.channel.stream_stream(path)(iter(payloads), timeout=PATIENT_S, metadata=self.metadata))
        (payload,) = payloads
        return self.channel.unary_unary(path)(payload, timeout=PATIENT_S, metadata=self.metadata)


def _refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str | None, str]:
    """The status, ``secure-infer-code`` and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), dict(err.trailing_metadata() or ()).get(CODE_KEY), err.details() or ""


def _client_refusal(call: Callable[[], Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        call()
    return info.value


def _ciphertexts(client: HEClient, x: torch.Tensor) -> list[bytes]:
    """One real request's ciphertext bytes, as ``client`` would send them."""
    return [to_bytes(c) for c in next(client.cipher.requests(client.cipher.check_input(x)))[1]]


def _request(session: str, blobs: list[bytes], *, request_id: int = 1) -> list[pb.CiphertextChunk]:
    return [pb.CiphertextChunk(session_id=session if i == 0 else "", request_id=request_id, index=i, data=b)
            for i, b in enumerate(blobs)]


def _key_chunks(blobs: dict[str, bytes], fmt: str = "seal", piece: int = 60 << 10) -> list[pb.KeyChunk]:
    chunks = []
    for name, data in blobs.items():
        for at in range(0, max(len(data), 1), piece):
            chunks.append(pb.KeyChunk(format=fmt if not chunks else "", name=name, data=data[at : at + piece]))
    return chunks


@pytest.fixture(scope="module")
def keyed(open_server) -> Iterator[HEClient]:
    """A client holding a session on the open server (its keys make ciphertexts for hand-built requests)."""
    with HEClient(open_server.address, timeout=PATIENT_S) as client:
        yield client


# -- malformed messages -------------------------------------------------------------------------

GARBAGE = {
    "truncated": b"\x0a\xff",  # field 1, length 255, then nothing
    "wire-type-7": b"\x0f\x00",  # no such wire type
    "bad-utf8": b"\x0a\x01\xff",  # field 1 as a string that is not UTF-8 (unknown bytes where field 1 is a number)
}
METHODS = ["GetLayout", "UploadKeys", "Resume", "Evaluate", "GetBudget"]


# field 1 of LayoutRequest is a number and BudgetRequest has no field: bad UTF-8 there is an unknown field
MALFORMED = [(m, g) for m in METHODS for g in GARBAGE if not (g == "bad-utf8" and m in ("GetLayout", "GetBudget"))]


@pytest.mark.parametrize(("method", "garbage"), MALFORMED, ids=[f"{m}-{g}" for m, g in MALFORMED])
def test_malformed_protobuf_is_a_bad_request(open_server, model, digits, method, garbage) -> None:
    payloads = [GARBAGE[garbage]]
    if method == "UploadKeys":  # a good message first: the bad one comes mid-stream
        payloads.insert(0, pb.KeyChunk(format="seal", name="relin_keys", data=b"x").SerializeToString())
    elif method == "Evaluate":
        payloads.insert(0, pb.CiphertextChunk(session_id="00" * 16, data=b"x").SerializeToString())
    before = open_server.stats.errors["bad-request"]
    with _Raw(open_server) as raw:
        status, code, details = _refusal(lambda: raw.call_bytes(method, payloads))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "bad-request"), details
    assert "not valid protobuf" in details
    assert open_server.stats.errors["bad-request"] == before + 1
    _still_serves(open_server, model, digits)


def test_another_protocol_version_is_refused(open_server, model, digits) -> None:
    with _Raw(open_server) as raw:
        for version in (0, 1, 3):
            status, code, _ = _refusal(lambda v=version: raw.call("GetLayout", pb.LayoutRequest(protocol=v)))
            assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION, "bad-version")
    _still_serves(open_server, model, digits)


@pytest.mark.parametrize(("chunks", "code"), [
    (lambda s, ct: [pb.CiphertextChunk(index=0, data=ct)], "bad-request"),  # no session named
    (lambda s, ct: [], "bad-request"),  # an empty stream
    (lambda s, ct: [pb.CiphertextChunk(session_id=s, index=1, data=ct)], "bad-request"),  # starts at 1
    (lambda s, ct: [pb.CiphertextChunk(session_id=s, index=0, data=ct[:9]),
                    pb.CiphertextChunk(index=2, data=ct[9:])], "bad-request"),  # a gap
    (lambda s, ct: [pb.CiphertextChunk(session_id=s, index=0, data=ct),
                    pb.CiphertextChunk(index=1, data=ct)], "bad-query"),  # two ciphertexts; the layout takes one
], ids=["no-session", "empty", "starts-at-1", "gap", "too-many"])
def test_badly_chunked_requests_are_refused(open_server, keyed, model, digits, chunks, code) -> None:
    (ct,) = _ciphertexts(keyed, digits.x_test[:1])
    queries = open_server.stats.queries
    with _Raw(open_server) as raw:
        status, got, details = _refusal(lambda: raw.call("Evaluate", chunks(keyed.session_id, ct)))
    assert (status, got) == (grpc.StatusCode.INVALID_ARGUMENT, code), details
    assert open_server.stats.queries == queries
    _still_serves(open_server, model, digits)


# -- ciphertexts and keys under the wrong parameters ----------------------------------------------

def _transparent_in_ntt_form(keys: ClientKeys) -> bytes:
    """A ciphertext that looks fresh (first level, NTT form, the published scale) but whose mask is zero.

    SEAL refuses to make one (``Evaluator`` throws on a transparent result) and its Python API has no
    write access to a ciphertext's data, so the bytes are written here in SEAL's uncompressed
    serialization: a 16-byte header (magic, header size, version, compression 0, total size), then the
    ciphertext's members (parms_id, NTT flag, size, degree, number of primes, scale, correction factor)
    and its data array (own header, length, values): c0 from a real encryption, c1 all zero.
    """
    real = keys.encrypt(np.ones(8))
    n, primes, size = real.poly_modulus_degree(), real.coeff_modulus_size(), real.size()
    data = real.dyn_array()
    c0 = [data.at(i) for i in range(n * primes)]
    version = to_bytes(real)[:5]  # magic, header size, SEAL's major and minor version, as SEAL writes them

    def serialized(payload: bytes) -> bytes:
        return version + struct.pack("<BHQ", 0, 0, 16 + len(payload)) + payload  # compression none, reserved, size

    array = struct.pack("<Q", size * n * primes) + struct.pack(f"<{n * primes}Q", *c0) + bytes(8 * n * primes)
    members = (struct.pack("<4Q", *real.parms_id()) + b"\x01" + struct.pack("<QQQdQ", size, n, primes, real.scale, 1)
               + serialized(array))
    return serialized(members)


def _zero_ciphertext(keys: ClientKeys) -> bytes:
    import tenseal.sealapi as seal

    ct = seal.Ciphertext()
    ct.resize(keys.context, 2)  # two zero polynomials at the first level (not NTT form, scale 1)
    return to_bytes(ct)


def _lower_level(keys: ClientKeys) -> bytes:
    import tenseal.sealapi as seal

    ct = keys.encrypt(np.ones(8))
    seal.Evaluator(keys.context).mod_switch_to_next_inplace(ct)
    return to_bytes(ct)


BAD_CIPHERTEXTS: dict[str, tuple[Callable[[ClientKeys], bytes], str]] = {
    "other-ring": (lambda k: to_bytes(ClientKeys(CKKSParameters(8192, (60, 40, 40, 60), 40), ())
                                      .encrypt_for_wire(np.ones(8))), "not a valid SEAL Ciphertext"),
    "other-primes": (lambda k: to_bytes(ClientKeys(CKKSParameters(4096, (40, 20, 40), 20), ())
                                        .encrypt_for_wire(np.ones(8))), "not a valid SEAL Ciphertext"),
    "other-scale": (lambda k: to_bytes(ClientKeys(CKKSParameters(4096, (39, 29, 39), 20), ())
                                       .encrypt_for_wire(np.ones(8))), "not a fresh encryption"),
    "lower-level": (_lower_level, "not a fresh encryption"),
    "transparent": (_transparent_in_ntt_form, "transparent"),
    "all-zero": (_zero_ciphertext, "transparent"),
}


def test_the_hand_made_transparent_ciphertext_is_otherwise_fresh(open_server, keyed) -> None:
    """The transparent case refutes only transparency: SEAL loads it at the published level and scale."""
    from secure_infer.backends.tenseal import from_bytes

    context = open_server.program.server.context
    ct = from_bytes("Ciphertext", context, _transparent_in_ntt_form(keyed.cipher.keys))
    assert ct.is_transparent() and ct.is_ntt_form() and ct.size() == 2
    assert ct.parms_id() == context.first_parms_id() and ct.scale == 2.0 ** open_server.program.params.scale_bits
    real = from_bytes("Ciphertext", context, to_bytes(keyed.cipher.keys.encrypt(np.ones(8))))
    assert not real.is_transparent()


@pytest.mark.parametrize("case", list(BAD_CIPHERTEXTS))
def test_ciphertexts_off_the_published_parameters_are_refused(open_server, keyed, model, digits, case) -> None:
    make, reason = BAD_CIPHERTEXTS[case]
    blob = make(keyed.cipher.keys)
    queries = open_server.stats.queries
    with _Raw(open_server) as raw:
        status, code, details = _refusal(lambda: raw.call("Evaluate", _request(keyed.session_id, [blob])))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "bad-ciphertext"), details
    assert reason in details
    refused = _client_refusal(lambda: keyed._conn.evaluate(keyed.session_id, 2, [blob]))
    assert refused.code == "bad-ciphertext"
    assert open_server.stats.queries == queries  # nothing was evaluated
    _still_serves(open_server, model, digits)


def _keys(params: tuple[int, tuple[int, ...], int], steps: Iterable[int]) -> dict[str, bytes]:
    return ClientKeys(CKKSParameters(*params), tuple(steps)).public_blobs


LOGREG = (4096, (39, 29, 39), 29)
STEPS = (16, 32, 64, 128, 256, 512)  # the logreg layout's rotation steps (checked in the test)
BAD_KEYS: dict[str, tuple[Callable[[], list[pb.KeyChunk]], str, str]] = {
    "other-ring": (lambda: _key_chunks(_keys((8192, (60, 40, 40, 60), 40), STEPS)), "bad-keys", "keys:"),
    "other-primes": (lambda: _key_chunks(_keys((4096, (40, 20, 40), 20), STEPS)), "bad-keys", "keys:"),
    "relin-only": (lambda: _key_chunks({"relin_keys": _keys(LOGREG, STEPS)["relin_keys"]}), "bad-keys",
                   "lacks galois_keys"),
    "galois-other-steps": (lambda: _key_chunks(_keys(LOGREG, (1, 2, 3))), "bad-keys", "lack rotation steps [16"),
    "galois-one-step-short": (lambda: _key_chunks(_keys(LOGREG, STEPS[:-1])), "bad-keys", "lack rotation steps [512]"),
    "no-relin": (lambda: _key_chunks({"galois_keys": _keys(LOGREG, STEPS)["galois_keys"]}), "bad-keys",
                 "missing relin_keys"),
    "garbage": (lambda: _key_chunks({"relin_keys": b"\x5e\xa1" * 500, "galois_keys": b"x" * 100}), "bad-keys", "keys:"),
    "swapped": (lambda: _key_chunks(dict(zip(("galois_keys", "relin_keys"),
                                             _keys(LOGREG, STEPS).values(), strict=True))), "bad-keys",
                "lack rotation steps"),  # SEAL loads either as the other (both are key-switching keys)
    "format": (lambda: _key_chunks(_keys(LOGREG, STEPS), fmt="pickle"), "bad-keys", "must be 'seal'"),
    "format-changes": (lambda: [*_key_chunks(_keys(LOGREG, STEPS))[:1], pb.KeyChunk(format="tenseal-context")],
                       "bad-keys", "format must match"),
    "secret-key": (lambda: _key_chunks({**_keys(LOGREG, STEPS), "secret_key": b"s" * 64}), "secret-key-refused",
                   "never a secret key"),
    "not-a-tenseal-context": (lambda: _key_chunks({"context": b"junk"}, fmt="tenseal-context"), "bad-keys",
                              "not a TenSEAL context"),
}


def test_the_logreg_layout_rotates(program) -> None:
    assert tuple(program.published.rotation_steps) == STEPS
    assert (program.params.poly_modulus_degree, tuple(program.params.coeff_mod_bit_sizes),
            program.params.scale_bits) == LOGREG


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_keys_off_the_layout_are_refused(open_server, model, digits, case) -> None:
    make, expected, reason = BAD_KEYS[case]
    sessions = len(open_server.handler._sessions)
    with _Raw(open_server) as raw:
        status, code, details = _refusal(lambda: raw.call("UploadKeys", make()))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, expected), details
    assert reason in details
    assert len(open_server.handler._sessions) == sessions  # no session was opened
    _still_serves(open_server, model, digits)


def test_keys_missing_a_rotation_are_refused_through_the_client_channel(open_server, model, digits) -> None:
    channel = GrpcChannel(open_server.address, timeout=PATIENT_S, tls=None, token=None)
    try:
        channel.hello()
        keys = _keys(LOGREG, STEPS[1:])
        refused = _client_refusal(lambda: channel.upload_keys("seal", list(keys.items())))
        assert refused.code == "bad-keys" and "[16]" in str(refused)
    finally:
        channel.close()
    _still_serves(open_server, model, digits)


# -- sizes and time -----------------------------------------------------------------------------

def test_a_message_over_chunk_bytes_is_refused_by_grpc(strict_server, model, digits) -> None:
    """gRPC itself refuses it (no code: the service never sees it); the client reports it as too-large."""
    with _Raw(strict_server) as raw:
        for method, chunks in (("UploadKeys", [pb.KeyChunk(format="seal", name="relin_keys",
                                                           data=b"x" * (2 * STRICT_CHUNK))]),
                               ("Evaluate", [pb.CiphertextChunk(session_id="00" * 16, data=b"x" * (2 * STRICT_CHUNK))])):
            status, code, details = _refusal(lambda m=method, c=chunks: raw.call(m, c))
            assert (status, code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, None), details
            assert "larger than max" in details
    channel = GrpcChannel(strict_server.address, timeout=PATIENT_S, tls=None, token=None)  # chunking as it pleases
    try:
        refused = _client_refusal(lambda: channel.upload_keys("seal", [("relin_keys", b"x" * (4 * STRICT_CHUNK))]))
        assert refused.code == "too-large"
    finally:
        channel.close()
    _still_serves(strict_server, model, digits)


@pytest.mark.parametrize("what", ["keys", "keys-names-only", "ciphertexts"])
def test_a_stream_over_max_request_bytes_is_refused(strict_server, model, digits, what) -> None:
    """Messages each within chunk_bytes, but more bytes in all than max_request_bytes; every field counts."""
    piece = STRICT_CHUNK - 1024
    count = STRICT_MAX_REQUEST // piece + 2
    sent = [0]

    def chunks() -> Iterator[Any]:
        for i in range(count):
            sent[0] += 1
            if what == "keys":
                yield pb.KeyChunk(format="seal" if i == 0 else "", name="relin_keys", data=b"x" * piece)
            elif what == "keys-names-only":  # a new, empty blob per message: only the names are large
                yield pb.KeyChunk(format="seal" if i == 0 else "", name=f"{i:06d}" + "n" * piece)
            else:
                yield pb.CiphertextChunk(session_id="00" * 16 if i == 0 else "", index=0, data=b"x" * piece)

    before = strict_server.stats.errors["too-large"]
    with _Raw(strict_server) as raw:
        method = "Evaluate" if what == "ciphertexts" else "UploadKeys"
        status, code, details = _refusal(lambda: raw.call(method, chunks()))
    assert (status, code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too-large"), details
    assert strict_server.stats.errors["too-large"] == before + 1
    _still_serves(strict_server, model, digits)


def test_slow_loris_streams_time_out_while_others_are_served(strict_server, model, digits) -> None:
    """Streams that send one chunk and stall: DEADLINE_EXCEEDED/timeout after the idle limit, not a blocked server."""
    release = threading.Event()

    def stall(first: Any) -> Iterator[Any]:
        yield first
        release.wait(PATIENT_S)

    raws = [_Raw(strict_server) for _ in range(6)]
    try:
        with HEClient(strict_server.address, timeout=PATIENT_S) as client:  # keys made and uploaded beforehand
            started = time.monotonic()
            lorises = [raw.stub.UploadKeys.future(stall(pb.KeyChunk(format="seal", name="relin_keys", data=b"x")),
                                                  timeout=PATIENT_S) for raw in raws[:3]]
            lorises += [raw.stub.Evaluate(stall(pb.CiphertextChunk(session_id=client.session_id, data=b"x")),
                                          timeout=PATIENT_S) for raw in raws[3:]]
            y = client.predict(digits.x_test[:2])
            stalled = sum(not loris.done() for loris in lorises)
            served_after = time.monotonic() - started
        with torch.no_grad():
            assert float((y - model(digits.x_test[:2])).abs().max()) < 1e-2
        assert stalled == len(lorises), f"served after {served_after:.2f} s, once the stalled streams had timed out"
        for loris in lorises:
            status, code, details = _refusal(loris.result)
            assert (status, code) == (grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"), details
            assert "no data for" in details
    finally:
        release.set()
        for raw in raws:
            raw.channel.close()
    _still_serves(strict_server, model, digits)


def test_a_stream_that_drips_past_the_request_limit_times_out(strict_server, model, digits) -> None:
    """A chunk every 0.4 s never trips the idle limit (1 s); the whole-request limit (2.5 s) ends it."""
    def drip() -> Iterator[pb.KeyChunk]:
        for i in range(int(3 * STRICT_REQUEST_S / 0.4)):
            yield pb.KeyChunk(format="seal" if i == 0 else "", name="relin_keys", data=b"x")
            time.sleep(0.4)

    started = time.monotonic()
    with _Raw(strict_server) as raw:
        status, code, details = _refusal(lambda: raw.call("UploadKeys", drip()))
    assert (status, code) == (grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"), details
    assert "did not finish within" in details and time.monotonic() - started < 2 * STRICT_REQUEST_S
    _still_serves(strict_server, model, digits)


def _established(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is ``port`` (the server's side), from /proc."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def test_a_thousand_idle_connections_do_not_starve_a_real_client(open_server, model, digits) -> None:
    """1,000 raw TCP sockets that never speak, and 1,000 gRPC channels connected but idle, at once."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:  # both ends of 2,000 connections live in this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    port = open_server.address[1]
    before = _established(port)
    sockets: list[socket.socket] = []
    channels: list[grpc.Channel] = []
    try:
        sockets = [socket.create_connection(open_server.address, timeout=PATIENT_S) for _ in range(1000)]
        target = _target(open_server)
        # a local subchannel pool: each channel its own connection (by default they share one)
        channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(1000)]
        for ready in [grpc.channel_ready_future(c) for c in channels]:
            ready.result(timeout=PATIENT_S)
        if Path("/proc/net/tcp").exists():
            assert _established(port) >= before + 2000  # the server really holds them all
        _still_serves(open_server, model, digits)
    finally:
        for c in channels:
            c.close()
        for s in sockets:
            s.close()
    _still_serves(open_server, model, digits)


def test_health_service_answers_serving(open_server) -> None:
    with grpc.insecure_channel(_target(open_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in (SERVICE, ""):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=PATIENT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        status, _, _ = _refusal(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=PATIENT_S))
        assert status is grpc.StatusCode.NOT_FOUND


# -- identities, sessions and budgets -----------------------------------------------------------

def test_no_credentials_are_refused_when_clients_are_registered(metered_server, registry, model, digits) -> None:
    _, tokens = registry
    refused = _client_refusal(lambda: HEClient(metered_server.address, timeout=PATIENT_S))
    assert refused.code == "unauthenticated" and "needs credentials" in str(refused)
    for token, reason in ((None, "needs credentials"), ("si_not-a-token", "not registered")):
        with _Raw(metered_server, token=token) as raw:
            for method, request in (("GetLayout", pb.LayoutRequest(protocol=2)), ("GetBudget", pb.BudgetRequest()),
                                    ("Resume", pb.ResumeRequest(session_id="00" * 16))):
                status, code, details = _refusal(lambda m=method, r=request: raw.call(m, r))
                assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"), details
                assert reason in details
    with _Raw(metered_server) as raw:
        basic = (("authorization", f"Basic {tokens['alice']}"),)
        status, code, details = _refusal(lambda: raw.stub.GetBudget(pb.BudgetRequest(), metadata=basic,
                                                                     timeout=PATIENT_S))
        assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated") and "Bearer" in details
    _still_serves(metered_server, model, digits, token=tokens["alice"])


def test_unknown_and_other_clients_sessions_are_not_found(metered_server, open_server, registry, model, digits) -> None:
    state, tokens = registry
    with HEClient(metered_server.address, token=tokens["alice"], timeout=PATIENT_S) as alice:
        (ct,) = _ciphertexts(alice, digits.x_test[:1])
        used = {name: state.client(name).used for name in ("alice", "bob")}
        for token, session in ((tokens["alice"], "00" * 16), (tokens["alice"], ""), (tokens["bob"], alice.session_id)):
            with _Raw(metered_server, token=token) as raw:
                status, code, details = _refusal(lambda s=session: raw.call("Resume", pb.ResumeRequest(session_id=s)))
                assert (status, code) == (grpc.StatusCode.NOT_FOUND, "unknown-session"), details
                if session:
                    status, code, details = _refusal(lambda s=session: raw.call("Evaluate", _request(s, [ct])))
                    assert (status, code) == (grpc.StatusCode.NOT_FOUND, "unknown-session"), details
        # bob's own client, pointed at alice's session: the same answer as a made-up one
        with HEClient(metered_server.address, token=tokens["bob"], timeout=PATIENT_S) as bob:
            bob.session_id = alice.session_id
            assert _client_refusal(lambda: bob.predict(digits.x_test[:1])).code == "unknown-session"
            assert _client_refusal(lambda: bob.reconnect()).code == "unknown-session"
        assert {name: state.client(name).used for name in ("alice", "bob")} == used  # nobody was charged
        y = alice.predict(digits.x_test[:1])  # alice's session is untouched
        with torch.no_grad():
            assert float((y - model(digits.x_test[:1])).abs().max()) < 1e-2
    with _Raw(open_server) as raw:  # anonymous callers too
        status, code, _ = _refusal(lambda: raw.call("Resume", pb.ResumeRequest(session_id="ff" * 16)))
        assert (status, code) == (grpc.StatusCode.NOT_FOUND, "unknown-session")
    _still_serves(metered_server, model, digits, token=tokens["alice"])


def test_an_expired_token_is_refused(metered_server, registry, model, digits) -> None:
    state, tokens = registry
    token = state.add_client("brief", expires_in_s=0.01)
    time.sleep(0.05)
    refused = _client_refusal(lambda: HEClient(metered_server.address, token=token, timeout=PATIENT_S))
    assert refused.code == "unauthenticated" and "expired" in str(refused)
    with _Raw(metered_server, token=token) as raw:
        status, code, details = _refusal(lambda: raw.call("GetBudget", pb.BudgetRequest()))
        assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated") and "expired" in details
    _still_serves(metered_server, model, digits, token=tokens["alice"])


def test_a_revoked_token_is_refused_even_mid_session(metered_server, registry, model, digits) -> None:
    state, tokens = registry
    token = state.add_client("leaver")
    with HEClient(metered_server.address, token=token, timeout=PATIENT_S) as client:
        client.predict(digits.x_test[:1])
        state.revoke("leaver")
        refused = _client_refusal(lambda: client.predict(digits.x_test[:1]))
        assert refused.code == "unauthenticated" and "revoked" in str(refused)
        with _Raw(metered_server, token=token) as raw:
            (ct,) = _ciphertexts(client, digits.x_test[:1])
            status, code, _ = _refusal(lambda: raw.call("Evaluate", _request(client.session_id, [ct])))
            assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
    assert state.client("leaver").used == 1
    assert _client_refusal(lambda: HEClient(metered_server.address, token=token, timeout=PATIENT_S)).code == \
        "unauthenticated"
    _still_serves(metered_server, model, digits, token=tokens["alice"])


def test_the_rate_limit_refuses_without_charging(metered_server, registry, model, digits) -> None:
    state, tokens = registry
    with HEClient(metered_server.address, token=tokens["ratey"], timeout=PATIENT_S) as client:
        client.predict(digits.x_test[:1])  # the bucket holds one input a minute
        refused = _client_refusal(lambda: client.predict(digits.x_test[:1]))
        assert refused.code == "rate-limited" and "per minute" in str(refused)
        with _Raw(metered_server, token=tokens["ratey"]) as raw:
            (ct,) = _ciphertexts(client, digits.x_test[:1])
            status, code, _ = _refusal(lambda: raw.call("Evaluate", _request(client.session_id, [ct])))
            assert (status, code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate-limited")
    assert state.client("ratey").used == 1  # refused requests are not charged
    _still_serves(metered_server, model, digits, token=tokens["alice"])


def test_an_exhausted_budget_is_refused_and_survives_a_restart(program, model, digits, tmp_path) -> None:
    import json

    path = tmp_path / "state.db"
    state = ServerState(path)
    tiny, other = state.add_client("tiny", budget=2), state.add_client("other")
    state.close()
    audit = tmp_path / "audit.jsonl"

    def refused_by_the_server(server: HEServer) -> None:
        with HEClient(server.address, token=tiny, timeout=PATIENT_S) as client:  # connecting is free
            assert client.budget is not None and (client.budget["limit"], client.budget["used"]) == (2, 2)
            queries = server.stats.queries
            early = _client_refusal(lambda: client.predict(digits.x_test[:1]))  # the client's own check
            assert early.code == "budget-exhausted" and "nothing was sent" in str(early)
            (ct,) = _ciphertexts(client, digits.x_test[:1])
            late = _client_refusal(lambda: client._conn.evaluate(client.session_id, 9, [ct]))  # past that check
            assert late.code == "budget-exhausted"
            with _Raw(server, token=tiny) as raw:
                status, code, details = _refusal(lambda: raw.call("Evaluate", _request(client.session_id, [ct])))
                assert (status, code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "budget-exhausted"), details
                assert "used 2 of its budget of 2" in details
            assert server.stats.queries == queries

    with HEServer(program, state=path, audit_log=audit) as server:
        with HEClient(server.address, token=tiny, timeout=PATIENT_S) as client:
            client.predict(digits.x_test[:1])
            client.predict(digits.x_test[1:2])
            assert client.remaining_budget() == {"client": "tiny", "limit": 2, "used": 2, "rate_per_minute": 0.0}
        refused_by_the_server(server)
    with HEServer(program, state=path, audit_log=audit) as restarted:  # a new server on the same state file
        refused_by_the_server(restarted)
        _still_serves(restarted, model, digits, token=other)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["outcome"] for e in lines if e["event"] == "query" and e["client"] == "tiny"] == ["ok", "ok"]
    refusals = [(e["method"], e["outcome"]) for e in lines if e["event"] == "refused" and e["client"] == "tiny"]
    assert refusals == [("Evaluate", "budget-exhausted")] * 4  # two per server; the client's own refusal sent nothing


# -- plaintext and TLS --------------------------------------------------------------------------

def test_plaintext_off_loopback_is_refused_without_insecure(program) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        with pytest.raises(ParameterError, match="not loopback"):
            HEServer(program, host=host)  # refused before anything is bound
    for address in ("192.0.2.1:8750", "[2001:db8::1]:8750", "example.com:8750"):
        with pytest.raises(ParameterError, match="not loopback"):
            HEClient(address, timeout=1)  # refused before connecting
    for address in ("127.0.0.1:1", "localhost:1", "[::1]:1"):  # loopback: allowed (nothing listens there)
        assert _client_refusal(lambda a=address: HEClient(a, timeout=5)).code in ("unreachable", "timeout")
    assert _client_refusal(lambda: HEClient("192.0.2.1:8750", timeout=1, insecure=True)).code in (
        "unreachable", "timeout")  # the operator's choice; it only fails to connect


def test_tls_client_trusting_another_ca_cannot_connect(tls_server, pki, model, digits) -> None:
    refused = _client_refusal(lambda: HEClient(tls_server.address, tls=_tls(pki, ca="theirs"), timeout=PATIENT_S))
    assert refused.code == "unreachable" and "--tls-ca" in str(refused)
    with _Raw(tls_server, tls=_tls(pki, ca="theirs")) as raw:
        status, code, _ = _refusal(lambda: raw.call("GetLayout", pb.LayoutRequest(protocol=2)))
        assert (status, code) == (grpc.StatusCode.UNAVAILABLE, None)
    assert _client_refusal(lambda: HEClient(tls_server.address, timeout=PATIENT_S)).code == "unreachable"  # plaintext
    _still_serves(tls_server, model, digits, tls=_tls(pki))


def test_tls_client_trusting_the_servers_ca_is_served(tls_server, pki, model, digits) -> None:
    _still_serves(tls_server, model, digits, tls=_tls(pki))
    with HEClient(tls_server.address, tls=_tls(pki, cert="alice"), timeout=PATIENT_S) as client:  # ignored certificate
        assert client.budget is None  # no registry: anonymous


@pytest.mark.parametrize("case", ["no-certificate", "stranger-ca-certificate"])
def test_mutual_tls_refuses_clients_without_a_certificate_from_its_ca(mtls_server, mtls_registry, pki, model,
                                                                      digits, case) -> None:
    _, tokens = mtls_registry
    tls = _tls(pki) if case == "no-certificate" else _tls(pki, cert="alice", issuer="theirs")
    refused = _client_refusal(lambda: HEClient(mtls_server.address, tls=tls, token=tokens["alice"],
                                               timeout=PATIENT_S))
    assert refused.code == "unreachable"
    with _Raw(mtls_server, tls=tls, token=tokens["alice"]) as raw:
        status, code, _ = _refusal(lambda: raw.call("GetLayout", pb.LayoutRequest(protocol=2)))
        assert (status, code) == (grpc.StatusCode.UNAVAILABLE, None)
    _still_serves(mtls_server, model, digits, tls=_tls(pki, cert="alice"), token=tokens["alice"])


def test_mutual_tls_with_the_registered_certificate_and_token_is_served_and_metered(
        mtls_server, mtls_registry, pki, digits) -> None:
    state, tokens = mtls_registry
    before = state.client("alice").used
    with HEClient(mtls_server.address, tls=_tls(pki, cert="alice"), token=tokens["alice"], timeout=PATIENT_S) as c:
        c.predict(digits.x_test[:3])
        assert c.remaining_budget()["used"] == before + 3  # latency mode: one input per request
    assert state.client("alice").used == before + 3


@pytest.mark.parametrize(("cert", "token", "status", "code", "reason"), [
    ("alice", "bob", grpc.StatusCode.PERMISSION_DENIED, "permission-denied", "token belongs to another client"),
    ("carol", "alice", grpc.StatusCode.PERMISSION_DENIED, "permission-denied", "token belongs to another client"),
    ("alice", None, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "needs an API token"),
], ids=["another-clients-token", "unregistered-certificate-with-a-token", "certificate-without-token"])
def test_mutual_tls_refuses_a_certificate_and_token_that_disagree(mtls_server, mtls_registry, pki, model, digits,
                                                                  cert, token, status, code, reason) -> None:
    state, tokens = mtls_registry
    used = {c.name: c.used for c in state.clients()}
    secret = tokens[token] if token else None
    refused = _client_refusal(lambda: HEClient(mtls_server.address, tls=_tls(pki, cert=cert), token=secret,
                                               timeout=PATIENT_S))
    assert refused.code == code and reason in str(refused)
    with _Raw(mtls_server, tls=_tls(pki, cert=cert), token=secret) as raw:
        got, got_code, details = _refusal(lambda: raw.call("GetBudget", pb.BudgetRequest()))
        assert (got, got_code) == (status, code) and reason in details
    assert {c.name: c.used for c in state.clients()} == used
    _still_serves(mtls_server, model, digits, tls=_tls(pki, cert="alice"), token=tokens["alice"])


def test_mutual_tls_with_certificates_as_the_identity(program, pki, mtls_registry, model, digits) -> None:
    """identity="certificate": the registered common name alone is the client (and is metered)."""
    state, _ = mtls_registry
    with _mtls(program, pki, state, identity="certificate") as server:
        before = state.client("bob").used
        with HEClient(server.address, tls=_tls(pki, cert="bob"), timeout=PATIENT_S) as client:
            assert client.budget is not None and client.budget["client"] == "bob"
            client.predict(digits.x_test[:2])
        assert state.client("bob").used == before + 2
        refused = _client_refusal(lambda: HEClient(server.address, tls=_tls(pki, cert="carol"), timeout=PATIENT_S))
        assert refused.code == "unauthenticated" and "'carol' is not registered" in str(refused)
        state.revoke("dave")
        with _Raw(server, tls=_tls(pki, cert="dave")) as raw:
            status, code, details = _refusal(lambda: raw.call("GetLayout", pb.LayoutRequest(protocol=2)))
            assert (status, code) == (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated") and "revoked" in details
        _still_serves(server, model, digits, tls=_tls(pki, cert="alice"))
