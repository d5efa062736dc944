"""HE client/server over gRPC (loopback plaintext): answers, key handling, client refusals, no secret key served.

The legacy frame transport's own tests (frames, timeouts, fuzzing) are in test_he_legacy.py; the gRPC
server's hardening (statuses, identities, budgets, TLS, limits) in test_he_grpc.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from protocols.he import HEClient, HEServer
from protocols.he.channels import GrpcChannel
from protocols.he.proto import inference_pb2 as pb
from protocols.he.server import SERVICE
from secure_infer import ParameterError, ProtocolError

pytestmark = pytest.mark.multiprocess


# Generous on purpose: four clients making keys at once on a loaded 2-core machine can take over a
# second between calls; the slow-peer tests (test_he_grpc.py, test_he_legacy.py) use short ones.
PATIENT_S = 30.0


@pytest.fixture(scope="module")
def served(logreg_program) -> Iterator[tuple[HEServer, torch.nn.Module]]:
    """The digits logistic regression served in latency mode over gRPC on loopback."""
    program, model = logreg_program
    with HEServer(program, name="logreg", idle_timeout=PATIENT_S) as server:
        yield server, model


def test_client_gets_the_models_answers(served, digits) -> None:
    server, model = served
    x = digits.x_test[:6]
    with HEClient(server.address) as client:
        assert client.model_name == "logreg" and client.budget is None  # an unmetered server
        y = client.predict(x)
        stats = client.last_query
        keys = sum(len(b) for b in client.cipher.keys.public_blobs.values())
        assert keys <= client.key_upload_bytes < keys + 4096  # seeded keys go up once, per session
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(y.argmax(1), ref.argmax(1))
    assert float((y - ref).abs().max()) < 1e-2
    assert stats.requests == 6 and stats.bytes_up > 0 and stats.bytes_down > 0
    assert stats.bytes_up + stats.bytes_down < client.key_upload_bytes  # per query far below the key upload


@pytest.mark.slow
def test_batch_mode_server(trained_zoo, digits) -> None:
    model = trained_zoo["mlp"].model
    with HEServer.from_model(model, digits.x_train[:1], calibration=digits.x_train, mode="batch",
                             poly_degree=15) as server:  # a low degree keeps this fast
        with HEClient(server.address) as client:
            y = client.predict(digits.x_test[:50])
    with torch.no_grad():
        ref = model(digits.x_test[:50])
    assert (y.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
    assert client.last_query.requests == 1  # 50 inputs in one SIMD request


def test_the_model_epilogue_runs_at_the_client(digits) -> None:
    """A trailing log_softmax is published in the layout and applied after decryption, exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.LogSoftmax(dim=1)).eval()
    with HEServer.from_model(model, digits.x_train[:1], calibration=digits.x_train) as server:
        with HEClient(server.address) as client:
            assert client.layout.epilogue == ({"op": "log_softmax", "dim": 1},)
            y = client.predict(digits.x_test[:3])
            logits = client.predict(digits.x_test[:3], epilogue=False)
    with torch.no_grad():
        ref = model(digits.x_test[:3])
    assert torch.allclose(y.exp().sum(1), torch.ones(3), atol=1e-5)  # normalised exactly at the client
    assert float((y - ref).abs().max()) < 1e-2
    assert torch.allclose(torch.log_softmax(logits, dim=1), y, atol=1e-6)


def test_session_keys_are_kept_across_connections(served, digits, assert_answers) -> None:
    server, model = served
    client = HEClient(server.address)
    try:
        first = client.predict(digits.x_test[:1])
        connections, sessions, session = server.stats.connections, len(server.handler._sessions), client.session_id
        client.reconnect()  # a new channel, Resume: no second key upload
        second = client.predict(digits.x_test[:1])
        assert server.stats.connections == connections + 1
        assert client.session_id == session and len(server.handler._sessions) == sessions
        assert_answers(first, model, digits.x_test[:1])
        assert_answers(second, model, digits.x_test[:1])  # the resumed keys still evaluate correctly
    finally:
        client.close()


def test_concurrent_clients_each_get_their_own_answers(served, digits) -> None:
    server, model = served

    def one_client(index: int) -> float:
        with HEClient(server.address) as client:
            worst = 0.0
            for r in range(3):
                x = digits.x_test[index * 3 + r : index * 3 + r + 1]
                with torch.no_grad():
                    worst = max(worst, float((client.predict(x) - model(x)).abs().max()))
            return worst

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one_client, range(4), timeout=120))
    assert max(results) < 1e-2, results  # each client got its own input's logits, not another's


def _channel(server: HEServer) -> GrpcChannel:
    return GrpcChannel(server.address, timeout=PATIENT_S, tls=None, token=None)


@pytest.mark.parametrize("name", ["secret_key", "SecretKey", "relin_keys\x00secret"])
def test_secret_keys_are_refused(served, digits, assert_answers, name) -> None:
    server, model = served
    channel = _channel(server)
    try:
        channel.hello()
        with pytest.raises(ProtocolError) as refused:
            channel.upload_keys("seal", [("relin_keys", b"x" * 10), (name, b"x" * 10)])
        assert refused.value.code == "secret-key-refused" and "never a secret key" in str(refused.value)
    finally:
        channel.close()
    with HEClient(server.address) as client:  # refused, not broken
        assert_answers(client.predict(digits.x_test[:1]), model, digits.x_test[:1])


def test_tenseal_context_keys_accepted_only_without_the_secret_key(served, digits, assert_answers) -> None:
    import tenseal as ts

    from secure_infer.backends.tenseal import LayoutClient

    server, model = served
    params = server.program.params
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.generate_galois_keys()
    channel = _channel(server)
    try:
        channel.hello()
        with pytest.raises(ProtocolError) as refused:
            channel.upload_keys("tenseal-context", [("context", ctx.serialize(save_secret_key=True))])
        assert refused.value.code == "secret-key-refused"
        opened = channel.upload_keys("tenseal-context", [("context", ctx.serialize(save_secret_key=False))])
        # TenSEAL's evaluation keys really evaluate: encrypt under the context's own secret key, compare
        cipher = LayoutClient(server.program.published, _TenSEALKeys(ctx, params), for_wire=True)
        assert_answers(_queries_over(channel, opened.session_id, cipher, digits.x_test[:2]), model, digits.x_test[:2])
    finally:
        channel.close()


def _queries_over(channel: GrpcChannel, session: str, cipher: Any, x: torch.Tensor) -> torch.Tensor:
    """One Evaluate call per input of ``x`` in ``session``, with ``cipher`` (a ``LayoutClient``); the logits."""
    from secure_infer.backends.tenseal import from_bytes, to_bytes

    def remote(cts: list) -> list:
        reply = channel.evaluate(session, 1, [to_bytes(c) for c in cts])
        return [from_bytes("Ciphertext", cipher.keys.context, b) for b in reply.blobs]

    y, _ = cipher.run(cipher.check_input(x), remote)
    return torch.from_numpy(y).float()


class _TenSEALKeys:
    """A TenSEAL context's secret key, moved into SEAL's API, with what ``LayoutClient`` uses of ``ClientKeys``.

    Lets a test check that evaluation keys made by TenSEAL (uploaded as a public TenSEAL context)
    compute the right answers, not just that the server accepts them.
    """

    def __init__(self, context: Any, params: Any) -> None:
        import tempfile

        import tenseal.sealapi as seal

        from secure_infer.backends.tenseal._seal import seal_context

        self.context = seal_context(params)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "secret_key")
            context.data.secret_key().save(path)
            secret = seal.SecretKey()
            secret.load(self.context, path)
        self._seal = seal
        self._encoder = seal.CKKSEncoder(self.context)
        self._encryptor = seal.Encryptor(self.context, secret)
        self._decryptor = seal.Decryptor(self.context, secret)
        self._scale = float(2**params.scale_bits)

    def encrypt_for_wire(self, values: np.ndarray) -> Any:
        plain = self._seal.Plaintext()
        self._encoder.encode(np.asarray(values, dtype=np.float64), self._scale, plain)
        return self._encryptor.encrypt_symmetric(plain)

    def decrypt(self, ciphertext: Any) -> np.ndarray:
        plain = self._seal.Plaintext()
        self._decryptor.decrypt(ciphertext, plain)
        return np.asarray(self._encoder.decode_double(plain))


def test_garbage_ciphertexts_are_rejected_not_evaluated(served, digits, assert_answers) -> None:
    server, model = served
    with HEClient(server.address) as client:
        queries = server.stats.queries
        for blob in (b"", b"\x00" * 64, np.random.default_rng(0).bytes(5000)):
            with pytest.raises(ProtocolError) as refused:
                client._conn.evaluate(client.session_id, 7, [blob])
            assert refused.value.code == "bad-ciphertext"
        assert server.stats.queries == queries and server.stats.internal_errors == 0
        assert_answers(client.predict(digits.x_test[:1]), model, digits.x_test[:1])  # the session still works


# 5,000 inputs: 3 ciphertexts at N=4096; 20,000 outputs exceed the largest ring's 16,384 slots: 2 results
@pytest.mark.parametrize(("width_in", "width_out", "field", "count"),
                         [(5000, 3, "chunks", 3), (4, 20000, "output_chunks", 2)], ids=["wide-input", "wide-output"])
def test_server_and_client_with_vectors_split_across_ciphertexts(width_in, width_out, field, count) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(width_in, width_out).eval()
    x = torch.rand(3, width_in)
    with HEServer.from_model(model, x[:1], calibration=x) as server:
        assert getattr(server.program.published, field) == count
        with HEClient(server.address) as client:
            y = client.predict(x)
    with torch.no_grad():
        assert y.shape == (3, width_out) and float((y - model(x)).abs().max()) < 1e-3


def test_batch_mode_square_chain_over_the_network(trained_zoo, digits) -> None:
    """The square-chain schedule (fewer, larger primes) serves remote clients like any program."""
    model = trained_zoo["cryptonets"].model
    with HEServer.from_model(model, digits.x_train[:1], calibration=digits.x_train, mode="batch") as server:
        assert server.program.weight_bits > 0 and server.program.params.depth == 2
        with HEClient(server.address) as client:
            y = client.predict(digits.x_test[:30])
    with torch.no_grad():
        ref = model(digits.x_test[:30])
    assert torch.equal(y.argmax(1), ref.argmax(1)) and float((y - ref).abs().max()) < 0.1


def test_latency_square_chain_over_the_network(trained_zoo, digits) -> None:
    model = trained_zoo["cryptonets"].model
    with HEServer.from_model(model, digits.x_train[:1], calibration=digits.x_train, schedule="square-chain") as server:
        assert server.program.weight_bits > 0
        with HEClient(server.address) as client:
            y = client.predict(digits.x_test[:5])
    with torch.no_grad():
        ref = model(digits.x_test[:5])
    assert torch.equal(y.argmax(1), ref.argmax(1)) and float((y - ref).abs().max()) < 1.0  # logits up to ~90


def test_a_capped_key_upload_over_the_network() -> None:
    """The server's rotation-key cap reaches the client: it uploads only those keys, and the answers agree."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Linear(24, 3)).eval()
    x = torch.rand(3, 40)
    with HEServer.from_model(model, x[:1], calibration=x, rotation_keys=1) as server:
        assert len(server.program.published.rotation_steps) == 1 and server.program.plan.key_steps  # capped
        with HEClient(server.address) as client:
            y = client.predict(x)
            assert client.cipher.keys.rotation_steps == server.program.published.rotation_steps
    with torch.no_grad():
        assert float((y - model(x)).abs().max()) < 1e-3


# -- the client's own refusals ------------------------------------------------------------------

class _FakeServer:
    """A gRPC server that publishes ``layout`` and records what the client sends; no evaluation.

    The layout JSON is written with ``json.dumps`` allowing NaN/Infinity, since a misbehaving server
    need not use the project's encoder. UploadKeys is answered with a session, so a client that accepts
    the layout finishes connecting. The client reaches it through a TCP relay that sees the client hang
    up: a refusal must close the connection at once, not leave it to the garbage collector.
    """

    def __init__(self, layout: dict) -> None:
        self.layout = layout
        self.received: list[str] = []
        self.key_names: list[str] = []
        handlers = {
            "GetLayout": grpc.unary_unary_rpc_method_handler(
                self._get_layout, request_deserializer=pb.LayoutRequest.FromString,
                response_serializer=pb.LayoutReply.SerializeToString),
            "UploadKeys": grpc.stream_unary_rpc_method_handler(
                self._upload_keys, request_deserializer=pb.KeyChunk.FromString,
                response_serializer=pb.Session.SerializeToString),
        }
        self._server = grpc.server(ThreadPoolExecutor(2))
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self._relay = _Relay(("127.0.0.1", port))
        self.address = self._relay.address

    def _get_layout(self, request: pb.LayoutRequest, context: Any) -> pb.LayoutReply:
        self.received.append("GetLayout")
        return pb.LayoutReply(protocol=2, model="fake", layout_json=json.dumps(self.layout),
                              max_request_bytes=1 << 28, chunk_bytes=1 << 20)

    def _upload_keys(self, chunks: Any, context: Any) -> pb.Session:
        self.received.append("UploadKeys")
        for chunk in chunks:
            if not self.key_names or chunk.name != self.key_names[-1]:
                self.key_names.append(chunk.name)
        return pb.Session(session_id="00" * 16)

    def wait_closed(self) -> bool:
        """Whether the client hung up every connection it opened (a wait, not a timing assertion)."""
        try:
            return self._relay.wait_closed(timeout=30)
        finally:
            self._relay.close()
            self._server.stop(None)


class _Relay:
    """Forwards TCP connections to ``target``; counts those the client side closed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = self._sock.getsockname()[:2]
        self._lock = threading.Condition()
        self.opened = 0
        self.closed_by_client = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.opened += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        if from_client:
            with self._lock:
                self.closed_by_client += 1
                self._lock.notify_all()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_closed(self, *, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: 0 < self.opened == self.closed_by_client, timeout=timeout)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def published(served) -> dict:
    """The served model's real layout, as JSON, to be altered into bad ones."""
    server, _ = served
    return server.program.published.to_json()


def test_fake_server_with_the_real_layout_gets_public_keys_only(published) -> None:
    """Positive control for the refusal tests below: the same fake server, an honest layout, a keyed session."""
    fake = _FakeServer(published)
    client = HEClient(fake.address, timeout=30)
    assert client.session_id == "00" * 16
    client.close()
    assert fake.wait_closed()
    assert fake.received == ["GetLayout", "UploadKeys"]
    assert set(fake.key_names) == {"relin_keys", "galois_keys"}  # evaluation keys only, never a secret key


@pytest.mark.parametrize(("change", "field"), [
    ({"poly_modulus_degree": 1024, "coeff_mod_bit_sizes": [20, 20, 20]}, "poly_modulus_degree"),  # a tiny ring
    ({"poly_modulus_degree": 2048, "coeff_mod_bit_sizes": [20, 20, 20]}, "poly_modulus_degree"),
    # the HE standard's 128-bit bound: 109 bits at N=4096, 218 at N=8192; one bit over is refused
    ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [40, 30, 40]}, "coeff_mod_bit_sizes"),
    ({"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 50, 49, 60]}, "coeff_mod_bit_sizes"),
], ids=["ring-1024", "ring-2048", "4096-110-bits", "8192-219-bits"])
def test_client_refuses_parameters_below_128_bit_security(published, change, field) -> None:
    fake = _FakeServer({**published, **change})
    with pytest.raises(ParameterError, match=field) as refused:
        HEClient(fake.address, timeout=30)
    message = str(refused.value)
    assert ("128-bit" in message or "must be one of" in message) and "No key was made or sent" in message
    # the client hung up by itself (the exception, still held here, keeps it from being garbage collected)...
    assert fake.wait_closed()
    assert fake.received == ["GetLayout"]  # ...without making or sending any key


@pytest.mark.parametrize(("change", "field"), [
    ({"input_range": [0.0, float("inf")]}, "input_range"),  # every input would pass the range check
    ({"input_range": [float("nan"), 1.0]}, "input_range"),  # NaN compares false: no check at all
    ({"input_range": [1.0, 0.0]}, "input_range"),
    ({"output_bound": float("nan")}, "output_bound"),  # garbage decryptions would be returned
    ({"output_bound": float("inf")}, "output_bound"),
    ({"output_bound": -1.0}, "output_bound"),
], ids=["range-inf", "range-nan", "range-inverted", "bound-nan", "bound-inf", "bound-negative"])
def test_client_refuses_a_layout_that_disables_its_range_checks(published, change, field) -> None:
    fake = _FakeServer({**published, **change})
    with pytest.raises(ParameterError, match=f"layout.{field}") as refused:
        HEClient(fake.address, timeout=30)
    assert "No key was made or sent" in str(refused.value)
    assert fake.wait_closed() and fake.received == ["GetLayout"]  # closed by the client, not by GC


def _record_sends(client: HEClient) -> list[tuple]:
    """The Evaluate calls ``client`` makes from now on (its channel's calls, recorded)."""
    calls: list[tuple] = []
    channel = client._conn
    real = channel.evaluate

    def evaluate(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    channel.evaluate = evaluate  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_client_refuses_non_finite_inputs_before_sending_anything(served, digits, assert_answers, bad) -> None:
    server, model = served
    with HEClient(server.address) as client:
        x = digits.x_test[:2].clone()
        x[1, 0, 3, 4] = bad
        sends, queries = _record_sends(client), server.stats.queries
        with pytest.raises(ParameterError, match="NaN or infinite"):
            client.predict(x)
        assert sends == [] and server.stats.queries == queries  # nothing left the client
        assert_answers(client.predict(x[:1]), model, x[:1])  # and the client still works
        assert len(sends) == 1


def test_client_refuses_inputs_the_program_cannot_hold(served, digits, assert_answers) -> None:
    server, model = served
    with HEClient(server.address) as client:
        low, high = client.layout.input_range  # published by the server: calibration range plus a margin
        span = high - low
        sends = _record_sends(client)
        with pytest.raises(ParameterError, match="shape"):
            client.predict(torch.zeros(1, 3, 8, 8))
        for outside in (low - 0.05 * span, high + 0.05 * span, 50.0):  # below the minimum, above the maximum
            x = digits.x_test[:1].clone()
            x[0, 0, 0, 0] = outside
            with pytest.raises(ParameterError, match="calibrated range"):
                client.predict(x)
        assert sends == []  # refused at the client: nothing was sent
        edge = digits.x_test[:1].clone()
        edge[0, 0, 0, 0], edge[0, 0, 0, 1] = low, high  # the bounds themselves are accepted
        assert_answers(client.predict(edge), model, edge)


# -- no secret key anywhere on the server -----------------------------------------------------

def test_the_secret_key_walk_finds_planted_keys(secret_key_material) -> None:
    """The walk is not vacuous: a key buried in containers and attributes, and a private context, are found."""
    import types

    import tenseal as ts

    from secure_infer.backends.tenseal._params import CKKSParameters
    from secure_infer.backends.tenseal._seal import ClientKeys, ServerContext

    params = CKKSParameters(4096, (40, 20, 40), 20)
    keys = ClientKeys(params, ())
    public_only = types.SimpleNamespace(server=ServerContext(params, keys.server_material()), blobs=[b"x"])
    assert secret_key_material(public_only)[0] == []
    planted = types.SimpleNamespace(a=[{"k": (1, types.SimpleNamespace(b=keys._secret_key))}])
    assert any("SecretKey" in f for f in secret_key_material(planted)[0])
    assert any("ClientKeys" in f for f in secret_key_material(types.SimpleNamespace(c=keys))[0])
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    assert any("private" in f for f in secret_key_material([{"ctx": context}])[0])
    context.make_context_public()
    assert secret_key_material([{"ctx": context}])[0] == []


def test_no_secret_key_is_reachable_from_the_server(served, digits, assert_answers, secret_key_material) -> None:
    """Walk the server's whole object graph while a keyed client is connected, and after it left."""
    server, model = served
    with HEClient(server.address) as client:
        assert_answers(client.predict(digits.x_test[:1]), model, digits.x_test[:1])
        assert client.session_id in server.handler._sessions  # the walk covers a live session's keys
        found, visited = secret_key_material(server)
        assert found == [], found
        assert visited > 100  # it did walk the program, sessions and the gRPC service
    assert secret_key_material(server)[0] == []
