"""The legacy frame transport (FrameServer, protocols/common/wire.py) over real TCP sockets.

Frame-level robustness lives here: oversize frames refused unread, idle and slow peers timed out,
malformed, truncated and fuzzed frames answered or closed without crashing or hanging the server.
Sessions, key and ciphertext checks are the InferenceHandler's, shared with the gRPC server
(test_he.py, test_he_grpc.py); a few of them are checked here through frames too.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from protocols.common.transport import FrameSocket
from protocols.common.wire import HEADER, MAGIC, Frame, MessageType, encode
from protocols.he import FrameServer, HEClient, HEServer
from protocols.he.channels import FrameChannel
from protocols.he.legacy import FATAL_CODES
from secure_infer import ParameterError, ProtocolError

pytestmark = pytest.mark.multiprocess

# Generous on purpose (a loaded 2-core machine); only the timeout test uses short ones, on its own server.
PATIENT_S = 30.0


@pytest.fixture(scope="module")
def served(logreg_program) -> Iterator[tuple[FrameServer, torch.nn.Module]]:
    """The digits logistic regression served in latency mode over the frame protocol."""
    program, model = logreg_program
    with FrameServer(program, name="logreg", idle_timeout=PATIENT_S, frame_timeout=PATIENT_S,
                     max_frame=64 << 20) as server:
        yield server, model


def _raw(server: FrameServer) -> socket.socket:
    return socket.create_connection(server.address, timeout=5)


def _read_reply(sock: socket.socket) -> Frame | None:
    """One frame from the server, or None when it closed the connection."""
    fs = FrameSocket(sock, idle_timeout=PATIENT_S, frame_timeout=PATIENT_S)
    try:
        return fs.receive()
    except ProtocolError as exc:
        if exc.code == "peer-gone":
            return None
        raise


def test_client_over_frames_gets_the_models_answers_and_resumes(served, digits, assert_answers) -> None:
    server, model = served
    with HEClient(server.address, transport="frames") as client:
        assert client.model_name == "logreg" and client.budget is None
        assert_answers(client.predict(digits.x_test[:3]), model, digits.x_test[:3])
        sessions, connections = len(server.handler._sessions), server.stats.connections
        client.reconnect()  # RESUME on a new connection: no second key upload
        assert_answers(client.predict(digits.x_test[3:5]), model, digits.x_test[3:5])
        assert len(server.handler._sessions) == sessions and server.stats.connections == connections + 1
        assert client.remaining_budget() is None  # the frame protocol has no budgets


def test_one_handler_serves_both_transports(logreg_program, digits, assert_answers) -> None:
    """A FrameServer over an HEServer's handler: a session opened over gRPC is resumed over frames."""
    program, model = logreg_program
    with HEServer(program) as grpc_server, FrameServer(grpc_server.handler) as frame_server:
        with HEClient(grpc_server.address) as client:
            session = client.session_id
            assert_answers(client.predict(digits.x_test[:1]), model, digits.x_test[:1])
        channel = FrameChannel(frame_server.address, timeout=PATIENT_S)
        try:
            channel.hello()
            assert channel.resume(session).session_id == session
            with pytest.raises(ProtocolError) as refused:
                channel.evaluate(session, 5, [b"\x00" * 64])
            assert refused.value.code == "bad-ciphertext"  # the session was found; only the ciphertext is refused
        finally:
            channel.close()
        assert grpc_server.stats.queries == 1 and grpc_server.stats.errors["bad-ciphertext"] == 1


def test_secret_keys_are_refused(served) -> None:
    server, _ = served
    with _raw(server) as sock:
        sock.sendall(encode(Frame(MessageType.KEYS, {"format": "seal", "names": ["secret_key"]}, (b"x" * 10,))))
        reply = _read_reply(sock)
        assert reply is not None and reply.type is MessageType.ERROR and reply.meta["code"] == "secret-key-refused"
        assert reply.meta["fatal"] and "secret-key-refused" in FATAL_CODES
        assert _read_reply(sock) is None  # fatal: the server hung up


def test_a_private_tenseal_context_is_refused(served) -> None:
    import tenseal as ts

    server, _ = served
    params = server.program.params
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    with _raw(server) as sock:
        sock.sendall(encode(Frame(MessageType.KEYS, {"format": "tenseal-context"},
                                  (ctx.serialize(save_secret_key=True),))))
        reply = _read_reply(sock)
        assert reply is not None and reply.meta["code"] == "secret-key-refused"


def test_oversize_frames_are_refused_unread(served) -> None:
    server, _ = served
    with _raw(server) as sock:
        sock.sendall(struct.pack(">4sBBHII", MAGIC, 1, int(MessageType.QUERY), 0, 2, 1 << 30))
        reply = _read_reply(sock)
        assert reply is not None and reply.meta["code"] == "frame-too-large" and reply.meta["fatal"]
        assert _read_reply(sock) is None


def test_idle_and_slow_peers_time_out(served) -> None:
    """The server answers "timeout" and hangs up; how long that takes is in benchmarks/test_responsiveness.py."""
    with FrameServer(served[0].program, idle_timeout=1.0, frame_timeout=1.0) as server:
        with _raw(server) as sock:  # idle: says nothing
            reply = _read_reply(sock)
            assert reply is not None and reply.type is MessageType.ERROR
            assert reply.meta["code"] == "timeout" and reply.meta["fatal"]
            assert _read_reply(sock) is None
        with _raw(server) as sock:  # slow: starts a frame and stalls
            sock.sendall(encode(Frame(MessageType.HELLO, {"protocol": 1}))[:10])
            reply = _read_reply(sock)
            assert reply is not None and reply.meta["code"] == "timeout" and reply.meta["fatal"]
            assert _read_reply(sock) is None
        assert server.stats.errors["timeout"] == 2 and server.stats.internal_errors == 0


def _query_over(fs: FrameSocket, x: torch.Tensor) -> torch.Tensor:
    """A whole session by hand on an open connection: HELLO, KEYS, one QUERY per input; the decrypted logits."""
    from secure_infer.backends.tenseal import Layout, LayoutClient, from_bytes, to_bytes

    fs.send(Frame(MessageType.HELLO, {"protocol": 1}))
    welcome = fs.receive()
    assert welcome.type is MessageType.WELCOME
    cipher = LayoutClient(Layout.from_json(welcome.meta["layout"]), for_wire=True)
    names = list(cipher.keys.public_blobs)
    fs.send(Frame(MessageType.KEYS, {"format": "seal", "names": names},
                  tuple(cipher.keys.public_blobs[n] for n in names)))
    assert fs.receive().type is MessageType.SESSION

    def remote(cts: list) -> list:
        fs.send(Frame(MessageType.QUERY, {"id": 1}, tuple(to_bytes(c) for c in cts)))
        reply = fs.receive()
        assert reply.type is MessageType.RESULT, reply.meta
        return [from_bytes("Ciphertext", cipher.keys.context, b) for b in reply.blobs]

    y, _ = cipher.run(cipher.check_input(x), remote)
    return torch.from_numpy(y).float()


def test_malformed_frames_get_errors_and_the_connection_survives(served, digits, assert_answers) -> None:
    server, model = served
    bad_meta = bytearray(encode(Frame(MessageType.HELLO, {"protocol": 1})))
    bad_meta[16] = ord("[")  # metadata no longer a JSON object
    with _raw(server) as sock:
        fs = FrameSocket(sock, idle_timeout=PATIENT_S, frame_timeout=PATIENT_S)
        sock.sendall(bytes(bad_meta))
        assert fs.receive().meta["code"] == "bad-meta"
        fs.send(Frame(MessageType.QUERY, {"id": 0}, (b"junk",)))
        assert fs.receive().meta["code"] == "no-session"
        fs.send(Frame(MessageType.RESULT, {"id": 0}))
        assert fs.receive().meta["code"] == "unexpected-message"
        # still serving this connection, with the right answers
        assert_answers(_query_over(fs, digits.x_test[:2]), model, digits.x_test[:2])
    with _raw(server) as sock:  # another protocol version: answered, then the server hangs up
        sock.sendall(encode(Frame(MessageType.HELLO, {"protocol": 2})))
        reply = _read_reply(sock)
        assert reply is not None and reply.meta["code"] == "bad-version" and reply.meta["fatal"]
        assert _read_reply(sock) is None


@pytest.mark.parametrize("where", ["value", "blob-size"])
def test_huge_metadata_integers_are_bad_meta(served, digits, assert_answers, where) -> None:
    """An integer of thousands of digits (Python refuses to parse it) is a malformed frame, not a crash."""
    server, model = served
    digits_5000 = "9" * 5000
    meta = (f'{{"protocol":{digits_5000}}}' if where == "value" else f'{{"blobs":[{digits_5000}]}}').encode()
    with _raw(server) as sock:
        fs = FrameSocket(sock, idle_timeout=PATIENT_S, frame_timeout=PATIENT_S)
        sock.sendall(HEADER.pack(MAGIC, 1, int(MessageType.HELLO), 0, len(meta), 0) + meta)
        reply = fs.receive()
        assert reply.type is MessageType.ERROR and reply.meta["code"] == "bad-meta" and not reply.meta["fatal"]
        assert_answers(_query_over(fs, digits.x_test[:1]), model, digits.x_test[:1])  # the connection survives
    assert server.stats.internal_errors == 0


def test_garbage_ciphertexts_are_rejected_not_evaluated(served, digits, assert_answers) -> None:
    server, model = served
    with HEClient(server.address, transport="frames") as client:
        queries = server.stats.queries
        for blob in (b"", b"\x00" * 64, np.random.default_rng(0).bytes(5000)):
            with pytest.raises(ProtocolError) as refused:
                client._conn.evaluate(client.session_id, 7, [blob])
            assert refused.value.code == "bad-ciphertext"
        assert server.stats.queries == queries
        assert_answers(client.predict(digits.x_test[:1]), model, digits.x_test[:1])  # the session still works


def test_disconnect_mid_frame_does_not_disturb_others(served, digits, assert_answers) -> None:
    server, model = served
    before = server.stats.errors["peer-gone"]
    with _raw(server) as sock:
        sock.sendall(encode(Frame(MessageType.QUERY, {"id": 0}, (b"x" * 1000,)))[:500])  # then hang up
    deadline = time.monotonic() + PATIENT_S  # a wait, not a bound: it ends as soon as the count moves
    while server.stats.errors["peer-gone"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stats.errors["peer-gone"] > before
    with HEClient(server.address, transport="frames") as client:
        assert_answers(client.predict(digits.x_test[:1]), model, digits.x_test[:1])
    assert server.stats.internal_errors == 0


def test_fuzzed_frames_never_crash_or_hang_the_server(served, digits, assert_answers) -> None:
    """Mutated and random frames, before and inside a keyed session: always an answer or a clean close.

    No crash (internal error) and no hang (PATIENT_S without the server closing: every case half-closes,
    so a working server hangs up at once; the wait is long only so that a loaded machine cannot fake a hang).
    SECURE_INFER_FUZZ_CASES sets the number of cases (the closing note's figure used 2,000).
    """
    from protocols.common.fuzz import fuzz_cases, send_and_wait_for_close
    from secure_infer.backends.tenseal import to_bytes

    server, model = served
    with HEClient(server.address, transport="frames") as client:
        packed = next(client.cipher.requests(client.cipher.check_input(digits.x_test[:1])))[1][0]
        session, ciphertext = client.session_id, to_bytes(packed)
    cases = int(os.environ.get("SECURE_INFER_FUZZ_CASES", "150"))
    hung = sum(not send_and_wait_for_close(server.address, data, timeout=PATIENT_S)
               for data in fuzz_cases(cases, session=session, ciphertext=ciphertext))
    print("server error codes after fuzzing:", dict(server.stats.errors), "queries:", server.stats.queries)
    assert hung == 0 and server.stats.internal_errors == 0
    assert server.stats.errors["bad-ciphertext"] > 0  # the fuzzing reached SEAL's loader, not just the header
    with HEClient(server.address, transport="frames") as client:  # the server still answers, and correctly
        assert_answers(client.predict(digits.x_test[2:4]), model, digits.x_test[2:4])


def test_connections_past_the_limit_are_told_busy(served, digits, assert_answers) -> None:
    server, model = served
    with FrameServer(server.program, max_connections=1, idle_timeout=PATIENT_S) as limited:
        with HEClient(limited.address, transport="frames") as first:  # holds the only slot
            with _raw(limited) as sock:
                reply = _read_reply(sock)
                assert reply is not None and reply.meta["code"] == "busy" and reply.meta["fatal"]
                assert _read_reply(sock) is None
            assert_answers(first.predict(digits.x_test[:1]), model, digits.x_test[:1])  # the holder is unaffected


def test_plaintext_off_loopback_is_refused_without_insecure(served) -> None:
    server, _ = served
    with pytest.raises(ParameterError, match="no TLS"):
        FrameServer(server.program, host="0.0.0.0")
    with pytest.raises(ParameterError, match="not loopback"):
        HEClient("192.0.2.1:8750", transport="frames", timeout=1)  # refused before connecting


# -- the client's own refusals, through the frame transport ---------------------------------------

class _FakeFrameServer:
    """One connection: answers HELLO with a WELCOME carrying ``layout``, then records what the client sends.

    The WELCOME is written by hand (``json.dumps`` with NaN/Infinity allowed), since a misbehaving server
    need not use the project's encoder. KEYS is answered with a SESSION.
    """

    def __init__(self, layout: dict) -> None:
        self.layout = layout
        self.received: list[MessageType] = []
        self.closed_by_client = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = self._sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._sock.accept()
        fs = FrameSocket(conn, idle_timeout=30, frame_timeout=30)
        try:
            while True:
                frame = fs.receive()
                self.received.append(frame.type)
                if frame.type is MessageType.HELLO:
                    meta = json.dumps({"protocol": 1, "model": "fake", "layout": self.layout,
                                       "max_frame": 1 << 28, "idle_timeout_s": 30}).encode()
                    conn.sendall(HEADER.pack(MAGIC, 1, int(MessageType.WELCOME), 0, len(meta), 0) + meta)
                elif frame.type is MessageType.KEYS:
                    fs.send(Frame(MessageType.SESSION, {"session": "00" * 16, "key_bytes": 0}))
        except ProtocolError as exc:
            if exc.code == "peer-gone":
                self.closed_by_client.set()
        finally:
            fs.close()
            self._sock.close()

    def wait_closed(self) -> bool:
        """Whether the client hung up (waits for the server thread; not a timing assertion)."""
        self._thread.join(timeout=30)
        return self.closed_by_client.is_set()


@pytest.mark.parametrize(("change", "expected"), [
    ({}, None),  # the positive control: an honest layout gets keys, then BYE
    ({"poly_modulus_degree": 1024, "coeff_mod_bit_sizes": [20, 20, 20]}, "poly_modulus_degree"),
    ({"output_bound": float("nan")}, "layout.output_bound"),
], ids=["honest", "ring-1024", "bound-nan"])
def test_client_over_frames_refuses_bad_layouts_and_hangs_up(served, change: dict[str, Any], expected) -> None:
    fake = _FakeFrameServer({**served[0].program.published.to_json(), **change})
    if expected is None:
        HEClient(fake.address, transport="frames", timeout=30).close()
        assert fake.wait_closed() and fake.received == [MessageType.HELLO, MessageType.KEYS, MessageType.BYE]
        return
    with pytest.raises(ParameterError, match=expected) as refused:
        HEClient(fake.address, transport="frames", timeout=30)
    assert "No key was made or sent" in str(refused.value)
    assert fake.wait_closed() and MessageType.KEYS not in fake.received  # closed by the client, not by GC
