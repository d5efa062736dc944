"""CrypTen parties over mutually-authenticated TLS: right answers, ciphertext on the wire, who is refused.

Computations run in separate party processes (multiprocessing spawn); the
refusal and failure cases need no CrypTen and run each party's mesh in a
thread of the test process, which keeps them fast.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from secure_infer._errors import ParameterError, PartyFailure, ProtocolError
from secure_infer.backends.crypten._tls import (
    FRAME_MAGIC,
    KIND_OBJECT,
    KIND_TENSOR,
    TLSLinks,
    TLSMesh,
    decode_object,
    encode_frame,
    encode_object,
    frame_tensor,
    init_tls_communicator,
    read_frame,
    shutdown_tls_communicator,
)
from secure_infer.certs import make_pki

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

_gen = torch.Generator().manual_seed(0)
W = torch.randn(5, 3, generator=_gen)
X = torch.randn(4, 5, generator=_gen)
MARKER = "PLAINTEXT-MARKER-6f1d2c"
PATTERN = torch.full((64,), 0x5EC12E7_5EC12E7, dtype=torch.int64)  # 512 recognisable bytes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_pki(folder, parties=3)
    return folder


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA's party certificates: right names, wrong signer."""
    folder = tmp_path_factory.mktemp("rogue")
    make_pki(folder, parties=3)
    return folder


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _peers(n: int) -> list[str]:
    return [f"127.0.0.1:{p}" for p in _ports(n)]


# --- party processes -------------------------------------------------------------------------

def _party(rank: int, folder: str, peers: list[str], listen: str | None, results: Any) -> None:
    """One party: encrypted x @ W then ReLU, an object and a plain tensor sent, all over TLS."""
    try:
        torch.set_num_threads(1)
        links = TLSLinks.from_folder(folder, rank, peers, timeout=60, listen=listen)
        crypten = init_tls_communicator(rank, links)
        comm = crypten.communicator.get()
        comm.reset_communication_stats()
        w = crypten.cryptensor(W if rank == 0 else torch.empty(W.shape), src=0)
        x = crypten.cryptensor(X if rank == 1 else torch.empty(X.shape), src=1)
        z = x.matmul(w).relu()
        my_share = z.share.clone()  # rank 0 sends exactly this to the others when z is opened
        y = z.get_plain_text()
        marker = comm.broadcast_obj(MARKER if rank == 0 else None, src=0)
        size = comm.broadcast_obj(torch.Size([2, 3]) if rank == 1 else None, src=1)
        if rank == 0:
            comm.send(PATTERN, 1)
            pattern_ok = True
        elif rank == 1:
            pattern_ok = bool(torch.equal(comm.recv(torch.empty_like(PATTERN), 0), PATTERN))
        else:
            pattern_ok = True
        comm.barrier()
        stats = comm.get_communication_stats()
        shutdown_tls_communicator()
        results.put((rank, "ok", {  # plain data: tensors would cross as shared memory of an exited process
            "y": y.tolist(), "share": my_share.numpy().tobytes(), "marker": marker, "size": tuple(size),
            "pattern_ok": pattern_ok, "stats": stats,
            "restored": crypten.communicator.DistributedCommunicator.__name__,
        }))
    except BaseException as exc:  # reported to the test, which fails with it
        results.put((rank, "error", f"{type(exc).__name__}: {exc}"))


def _run_parties(folder: Path, peers: list[str], listen: list[str | None]) -> dict[int, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_party, args=(r, str(folder), peers, listen[r], results), daemon=True)
             for r in range(len(peers))]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    try:
        while len(got) < len(procs):
            rank, status, payload = results.get(timeout=120)
            assert status == "ok", f"party {rank}: {payload}"
            got[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return got


def _expected() -> torch.Tensor:
    return torch.relu(X @ W)


class _Tap:
    """A TCP relay in front of one party that keeps every byte it forwards."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.streams: list[bytearray] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                down.close()  # the party behind the relay is not listening yet: the dialer retries
                continue
            for a, b in ((down, up), (up, down)):
                record = bytearray()
                self.streams.append(record)
                threading.Thread(target=self._pump, args=(a, b, record), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while chunk := src.recv(65536):
                record += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


def test_two_parties_compute_over_tls_and_the_wire_carries_only_ciphertext(pki: Path) -> None:
    real = _ports(2)
    taps = [_Tap(port) for port in real]
    try:
        peers = [f"127.0.0.1:{tap.port}" for tap in taps]  # everyone reaches everyone through a tap
        got = _run_parties(pki, peers, [f"127.0.0.1:{port}" for port in real])
    finally:
        for tap in taps:
            tap.close()
    for rank in (0, 1):
        assert torch.allclose(torch.tensor(got[rank]["y"]), _expected(), atol=1e-3), got[rank]["y"]
        assert got[rank]["marker"] == MARKER and got[rank]["size"] == (2, 3)
        assert got[rank]["pattern_ok"]
        stats = got[rank]["stats"]
        assert stats["rounds"] > 10 and stats["bytes"] > 0 and stats["transport"] == "tls (TLSv1.3)"
        assert stats["wire_bytes_sent"] > 0 and stats["wire_bytes_received"] > 0
        assert got[rank]["restored"] == "DistributedCommunicator"  # CrypTen has its own communicator back

    streams = [bytes(s) for tap in taps for s in tap.streams if s]
    assert len(streams) >= 4  # two links (one per direction), each with traffic both ways
    wire = b"\n".join(streams)
    assert len(wire) > got[0]["stats"]["wire_bytes_sent"]  # everything went through the taps
    assert all(s.startswith(b"\x16\x03") for s in streams)  # every connection opens with a TLS handshake record
    share = got[0]["share"]
    secrets = {"marker": MARKER.encode(), "pattern": PATTERN.numpy().tobytes(), "share of z": share,
               "frame magic": FRAME_MAGIC, "certificate name": b"party-0"}
    # positive control: the same values in our frames, without TLS, are in plain sight
    header, payload = encode_frame(KIND_OBJECT, torch.frombuffer(bytearray(encode_object(MARKER)), dtype=torch.uint8))
    assert MARKER.encode() in header + payload.tobytes()
    assert share in b"".join(b for b in encode_frame(KIND_TENSOR, torch.frombuffer(bytearray(share), dtype=torch.int64)))
    seen = [name for name, secret in secrets.items() if secret in wire]
    assert not seen, f"in the clear on the wire: {seen}"


@pytest.mark.slow
def test_three_parties_compute_over_tls(pki: Path) -> None:
    got = _run_parties(pki, _peers(3), [None, None, None])
    for rank in range(3):
        assert torch.allclose(torch.tensor(got[rank]["y"]), _expected(), atol=1e-3)
        assert got[rank]["stats"]["rounds"] > 10


# --- who may join (meshes in threads) ----------------------------------------------------------

def _join_all(links: dict[int, TLSLinks], late: int | None = None) -> tuple[dict[int, Any], dict[int, float]]:
    """Each rank's ``TLSMesh.connect`` in a thread: its mesh or the exception it raised, and how long it took.

    ``late`` starts 0.3 s after the others (they are listening by then).
    """
    out: dict[int, Any] = {}
    took: dict[int, float] = {}

    def join(rank: int) -> None:
        if rank == late:
            time.sleep(0.3)
        start = time.monotonic()
        try:
            out[rank] = TLSMesh.connect(rank, links[rank])
        except Exception as exc:
            out[rank] = exc
        took[rank] = time.monotonic() - start

    threads = [threading.Thread(target=join, args=(rank,)) for rank in links]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for value in out.values():
        if isinstance(value, TLSMesh):
            value.close()
    return out, took


def test_a_party_certified_by_another_ca_is_refused_and_the_others_fail_fast(pki: Path, rogue: Path) -> None:
    peers = _peers(3)
    links = {r: TLSLinks.from_folder(pki, r, peers, timeout=30) for r in (0, 1)}
    # the stranger knows the deployment's CA certificate (it is public) but its own was signed elsewhere
    links[2] = TLSLinks(tuple(peers), rogue / "party-2.pem", rogue / "party-2.key", pki / "ca.pem", timeout=30)
    out, took = _join_all(links, late=2)
    assert all(isinstance(out[r], PartyFailure) for r in range(3)), out
    for r in (0, 1):  # each refused the stranger when it dialed in, or when dialing it (whichever came first)
        assert "certificate that the deployment's CA did not sign" in str(out[r]), out[r]
        assert took[r] < 15  # a clear failure, well before the 30 s join timeout
    assert "refused this party's certificate" in str(out[2]), out[2]


def test_a_party_cannot_join_as_another_rank(pki: Path) -> None:
    """Rank 0's seat taken by a holder of party-1's certificate: the real party 1 refuses it."""
    peers = _peers(2)
    impostor = TLSLinks(tuple(peers), pki / "party-1.pem", pki / "party-1.key", pki / "ca.pem", timeout=2)
    with pytest.raises(ParameterError, match="certificate of 'party-1', not party-0"):
        impostor.validate(0)  # our own code refuses at once; a modified party would skip this check
    out, took = _join_all({0: impostor, 1: TLSLinks.from_folder(pki, 1, peers, timeout=30)})
    assert isinstance(out[1], PartyFailure), out
    message = str(out[1])  # refused when it dialed the impostor, or when the impostor dialed in: whichever came first
    assert (f"party 0 at {peers[0]} presented the certificate of 'party-1', not 'party-0'" in message
            or "with the certificate of 'party-1': it claims rank 0, which its certificate does not name" in message)
    assert took[1] < 15
    assert isinstance(out[0], PartyFailure)  # the impostor fails too (at once, or after its own 2 s)


def test_a_dialer_claiming_a_rank_not_in_its_certificate_is_refused(pki: Path) -> None:
    """The accepting side checks too: party-1's certificate claiming rank 0 is refused, and the join fails."""
    peers = _peers(2)
    elsewhere = f"127.0.0.1:{_ports(1)[0]}"  # the impostor does not sit at rank 0's address: only dials
    impostor = TLSLinks(tuple(peers), pki / "party-1.pem", pki / "party-1.key", pki / "ca.pem", timeout=30,
                        listen=elsewhere)
    out, took = _join_all({0: impostor, 1: TLSLinks.from_folder(pki, 1, peers, timeout=30)}, late=0)
    assert isinstance(out[0], PartyFailure) and "refused this party: it claims rank 0" in str(out[0]), out[0]
    assert isinstance(out[1], PartyFailure), out[1]
    assert "with the certificate of 'party-1': it claims rank 0, which its certificate does not name" in str(out[1])
    assert max(took.values()) < 15


def test_a_missing_peer_fails_the_join_within_the_timeout(pki: Path) -> None:
    peers = _peers(2)
    out, took = _join_all({0: TLSLinks.from_folder(pki, 0, peers, timeout=2)})
    assert isinstance(out[0], PartyFailure)
    assert str(out[0]).startswith(f"party 0 could not join its peers within 2 s: party 1 at {peers[1]} did not "
                                  "accept a connection (connection refused); party 1 did not connect"), out[0]
    assert took[0] < 10


# --- failures after joining -------------------------------------------------------------------------

@pytest.fixture
def pair(pki: Path) -> Any:
    peers = _peers(2)
    meshes: dict[int, TLSMesh] = {}
    errors: list[BaseException] = []

    def join(rank: int) -> None:
        try:
            meshes[rank] = TLSMesh.connect(rank, TLSLinks.from_folder(pki, rank, peers, timeout=2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=join, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(meshes) == 2, errors
    yield meshes, peers
    for mesh in meshes.values():
        mesh.close()


def test_a_silent_peer_fails_with_its_name(pair: Any) -> None:
    meshes, peers = pair
    start = time.monotonic()
    with pytest.raises(PartyFailure, match=rf"waited 2 s for a tensor \(recv\) from party 1 \({peers[1]}\)"):
        meshes[0].receive(1, "a tensor (recv)")
    assert time.monotonic() - start < 10


def test_a_dead_peer_fails_at_once_after_what_it_sent(pair: Any) -> None:
    meshes, peers = pair
    meshes[1].send(0, KIND_TENSOR, torch.arange(3))
    meshes[1].close()  # as its process exiting would
    assert torch.equal(frame_tensor(meshes[0].receive(1, "x")), torch.arange(3))  # what it sent still arrives
    start = time.monotonic()
    with pytest.raises(PartyFailure, match=rf"party 1 \({peers[1]}\) closed its link"):
        meshes[0].receive(1, "y")
    assert time.monotonic() - start < 1
    with pytest.raises(PartyFailure, match="party 1"):
        for _ in range(100):  # the first writes may still land in the kernel's buffer
            meshes[0].send(1, KIND_TENSOR, torch.zeros(1 << 16))
            time.sleep(0.01)


# --- what crosses: frames and objects ---------------------------------------------------------------

def test_objects_travel_as_json_and_nothing_else_does() -> None:
    value = {"size": torch.Size([2, 3]), "pair": (1, "a"), "list": [None, True, 1.5], "nested": {"k": ()}}
    assert decode_object(encode_object(value)) == value
    assert isinstance(decode_object(encode_object(torch.Size([4]))), torch.Size)
    with pytest.raises(ParameterError, match="load_from_party"):
        encode_object(torch.nn.Linear(2, 2))
    with pytest.raises(ParameterError):
        encode_object(float("nan"))
    for hostile in (b'{"__reduce__": ["os.system", "true"]}', b'{"S": [-1]}', b"\x80\x04\x95", b"[" * 100000):
        with pytest.raises(ProtocolError):
            decode_object(hostile)


def test_frames_are_checked_before_anything_is_allocated() -> None:
    a, b = socket.socketpair()
    with a, b:
        header, payload = encode_frame(KIND_TENSOR, torch.arange(6, dtype=torch.int32).reshape(2, 3))
        a.sendall(header + payload.tobytes())
        frame = read_frame(b, max_bytes=1 << 20)
        assert frame is not None and torch.equal(frame_tensor(frame), torch.arange(6, dtype=torch.int32).reshape(2, 3))
        header, _ = encode_frame(KIND_TENSOR, torch.zeros(1 << 20))
        a.sendall(header)
        with pytest.raises(ProtocolError, match="more than the") as info:
            read_frame(b, max_bytes=1 << 20)
        assert info.value.code == "frame-too-large"
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"GET / HTTP/1.1\r\n")
        with pytest.raises(ProtocolError) as info:
            read_frame(b, max_bytes=1 << 20)
        assert info.value.code == "bad-magic"
    a, b = socket.socketpair()
    with b:
        a.close()
        assert read_frame(b, max_bytes=1) is None  # a peer that closed between frames: a clean end


def test_the_trusted_dealer_is_refused_over_tls(pki: Path) -> None:
    from secure_infer._crypten_compat import load_crypten

    crypten = load_crypten()
    before = crypten.cfg.mpc.provider
    crypten.cfg.mpc.provider = "TTP"
    try:
        with pytest.raises(ParameterError, match="trusted dealer"):
            init_tls_communicator(0, TLSLinks.from_folder(pki, 0, _peers(2), timeout=1))
    finally:
        crypten.cfg.mpc.provider = before
