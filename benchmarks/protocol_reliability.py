"""Reliability figures for the protocol layer (issue 14), measured, not asserted.

Full run (about 30 min on 2 cores; the figures in docs/reliability.md):

    python benchmarks/protocol_reliability.py --out reliability.json

Quick run:

    python benchmarks/protocol_reliability.py --fuzz 2000 --coverage-seconds 20 --clients 8 --requests 3 --skip-mpc

Every HE server here runs in a process of its own (``--serve``, below), with TLS, a
client registry (SQLite state file) and an audit log, serving the zoo ``cryptonets``
trained on digits (latency mode, N=8192), so that a server crash is seen as what it is:
a dead process.

1. Live fuzzing (``--fuzz`` cases in all; ``--frame-share`` of them on the legacy frames):

   * gRPC over TLS with a valid token: mutated valid protobuf messages and random bytes,
     sent as raw bytes to each method of ``inference.proto`` (and to a method that does
     not exist, and with the wrong call arity). Most Evaluate cases carry the valid session
     with intact framing, so mutated ciphertexts (SEAL's zstd serialization as a client
     sends it, and the same object uncompressed) reach the ciphertext loader; KeyChunk
     streams carry mutated relinearization keys, Galois keys and TenSEAL contexts so they
     reach the key loaders. Every call has a deadline (``--fuzz-deadline``). The fuzzing
     identity's budget lets ``--fuzz-evaluations`` mutated requests that pass every check
     be evaluated; later ones are refused when the budget is charged, after the loaders
     ran (a mutated ciphertext that still loads is valid, and evaluating it costs 0.2-0.4 s
     and tests no decoder).
   * the legacy frame server (:class:`protocols.he.FrameServer`, same handler) with
     :func:`protocols.common.fuzz.fuzz_cases`, each case on a fresh connection.

   A crash is: the server's ``stats.internal_errors`` grew, its process died, or its
   gRPC health check stopped answering. A hang is a call that hit the client's deadline
   (DEADLINE_EXCEEDED without the server's own ``secure-infer-code``), or a frame
   connection the server did not close within the deadline. Inputs behind an internal
   error or a hang are saved under ``WORK/findings``.
2. Coverage-guided fuzzing: ``run_campaign`` from ``benchmarks/fuzz_decoders.py``
   (atheris/libFuzzer over the frame codec, protobuf parsing, the ciphertext loader and
   the key loaders) for ``--coverage-seconds``.
3. Concurrency: ``--clients`` threads, each its own :class:`HEClient` over gRPC+TLS with
   its own token and a budget of exactly ``--requests`` inputs; all sessions open before
   the first query; every answer's argmax checked against the plaintext model; every
   client's budget must then read exactly ``--requests`` used.
4. Restart: a client with a budget spends part of it, the server is killed (SIGKILL),
   a new server on the same state file must show the same ``used``; the client spends
   the rest, then a query sent past the client's own pre-check must be refused by the
   server with code ``budget-exhausted``, and ``used`` must not move.
5. Key material per session against bytes per query.
6. MPC (``--skip-mpc`` skips): a party killed during inference, and a party frozen
   (SIGSTOP) during inference; how long until every other party exited on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import queue
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

import secure_infer as si  # noqa: E402
from protocols.he import ClientTLS, HEClient, ServerState  # noqa: E402
from protocols.he.proto import inference_pb2 as pb  # noqa: E402
from protocols.he.server import CODE_KEY, SERVICE  # noqa: E402
from secure_infer import ProtocolError  # noqa: E402

METHOD = {name: f"/{SERVICE}/{name}" for name in ("GetLayout", "UploadKeys", "Resume", "Evaluate", "GetBudget")}
STYLE = {"GetLayout": "unary", "Resume": "unary", "GetBudget": "unary", "UploadKeys": "stream_unary",
         "Evaluate": "stream_stream"}
ODD_PATHS = [f"/{SERVICE}/Nope", "/grpc.health.v1.Health/Check", "/secureinfer.he.v1.Inference/Evaluate"]
SEAL_MAGIC = b"\x5e\xa1"
CHUNK = 1 << 20  # the server's default chunk_bytes
MODEL = "cryptonets"


def rss_mb() -> float:
    try:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return 0.0


# -- the server, in a process of its own ------------------------------------------------------
def serve_main(config_path: str) -> None:
    """``--serve CONFIG``: an HEServer (and optionally a FrameServer on its handler) until SIGTERM."""
    from protocols.he import FrameServer, HEServer, ServerTLS

    cfg = json.loads(Path(config_path).read_text())
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    data = si.datasets.load("digits")
    z = si.zoo.load_model(cfg["model"])
    server = HEServer.from_model(z.model.eval(), data.x_train[:1], calibration=data.x_train, name=MODEL,
                                 tls=ServerTLS(Path(cfg["cert"]), Path(cfg["key"])), state=cfg["state"],
                                 audit_log=cfg["audit"], workers=cfg["workers"], max_sessions=cfg["max_sessions"])
    frames = FrameServer(server.handler).start() if cfg["frames"] else None
    frames_port = frames.address[1] if frames is not None else None
    status = Path(cfg["status"])

    def write(final: bool = False) -> None:
        s = server.stats
        doc = {"pid": os.getpid(), "port": server.address[1], "frames_port": frames_port,
               "time": time.time(), "final": final, "rss_mb": round(rss_mb(), 1),
               "stats": {"connections": s.connections, "queries": s.queries, "errors": dict(s.errors),
                         "internal_errors": s.internal_errors}}
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, status)

    write()
    while not stop.wait(0.5):
        write()
        if os.getppid() != parent:  # the benchmark died: do not outlive it
            break
    if frames is not None:
        frames.close()
    server.close()
    write(final=True)


class ServerProcess:
    """Start ``--serve`` in a child process and watch it: status file, health check, exit."""

    def __init__(self, work: Path, name: str, *, model: Path, state: Path, pki: Path, frames: bool = False,
                 workers: int = 2, max_sessions: int = 64) -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.status_file = self.dir / "status.json"
        self.status_file.unlink(missing_ok=True)
        config = {"model": str(model), "state": str(state), "cert": str(pki / "server.pem"),
                  "key": str(pki / "server.key"), "audit": str(self.dir / "audit.jsonl"), "frames": frames,
                  "workers": workers, "max_sessions": max_sessions, "status": str(self.status_file)}
        (self.dir / "config.json").write_text(json.dumps(config, indent=1))
        self.log = open(self.dir / "server.log", "wb")  # noqa: SIM115  (closed in stop)
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve",
                                      str(self.dir / "config.json")], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        started = time.monotonic()
        while not self.status_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {name} server exited with {self.proc.returncode} before serving: "
                                   f"{self.log_tail()}")
            if time.monotonic() - started > 900:
                self.stop(kill=True)
                raise RuntimeError(f"the {name} server did not start within 900 s: {self.log_tail()}")
            time.sleep(0.2)
        self.start_s = time.monotonic() - started
        first = self.status()
        self.address = ("127.0.0.1", int(first["port"]))
        self.frames_address = ("127.0.0.1", int(first["frames_port"])) if first.get("frames_port") else None
        self.tls = ClientTLS(pki / "ca.pem")
        self._health_channel = secure_channel(self.address, pki / "ca.pem")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                return json.loads(self.status_file.read_text())  # type: ignore[no-any-return]
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError(f"cannot read {self.status_file}")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user + system)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def healthy(self, timeout: float = 10.0) -> bool:
        stub = health_pb2_grpc.HealthStub(self._health_channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self, *, kill: bool = False) -> dict[str, Any] | None:
        """SIGKILL (``kill``) or SIGTERM and wait; the final status when the server wrote one."""
        with contextlib.suppress(Exception):
            self._health_channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with contextlib.suppress(RuntimeError):
            doc = self.status()
            return doc if doc.get("final") else None
        return None


def secure_channel(address: tuple[str, int], ca: Path) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(f"{address[0]}:{address[1]}", creds, options=options)


# -- mutations ---------------------------------------------------------------------------------
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00" * 8, b"\xff" * 8, struct.pack("<Q", 1 << 63),
               struct.pack("<Q", 1), struct.pack("<Q", 0xFFFFFFFF), struct.pack("<Q", 1 << 32),
               struct.pack("<d", float("nan")), struct.pack("<d", float("inf")), struct.pack("<d", 2.0 ** 26)]


def mutate(data: bytes, rng: random.Random, *, head: int = 64, head_share: float = 0.5, max_ops: int = 6) -> bytes:
    """1..max_ops byte-level mutations; ``head_share`` of the positions fall within the first ``head`` bytes."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        if not buf:
            buf.extend(rng.randbytes(rng.randint(1, 32)))
            continue
        n = len(buf)
        at = rng.randrange(min(n, head)) if rng.random() < head_share else rng.randrange(n)
        op = rng.random()
        if op < 0.5:
            buf[at] = rng.randrange(256)
        elif op < 0.62:
            buf[at] ^= 1 << rng.randrange(8)
        elif op < 0.74:
            value = rng.choice(INTERESTING)
            buf[at : at + len(value)] = value
        elif op < 0.82:
            buf[at:at] = rng.randbytes(rng.randint(1, 32))
        elif op < 0.89:
            del buf[at : at + rng.randint(1, 64)]
        elif op < 0.95:
            span = bytes(buf[at : at + rng.randint(1, 64)])
            where = rng.randrange(len(buf) + 1)
            buf[where:where] = span
        else:
            del buf[rng.randrange(n + 1):]
    return bytes(buf)


def fix_seal_size(data: bytes) -> bytes:
    """Make a SEAL header's size field match the bytes present, so that SEAL parses past its size check."""
    if len(data) >= 16 and data[:2] == SEAL_MAGIC:
        return data[:8] + struct.pack("<Q", len(data)) + data[16:]
    return data


def mutate_seal(blob: bytes, rng: random.Random, *, head: int = 160, head_share: float = 0.5) -> bytes:
    out = mutate(blob, rng, head=head, head_share=head_share)
    return fix_seal_size(out) if rng.random() < 0.5 else out


def pieces(data: bytes, step: int = CHUNK) -> list[bytes]:
    return [data[at : at + step] for at in range(0, max(len(data), 1), step)]


def printable(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.randrange(33, 127)) for _ in range(n))


@dataclass
class Seeds:
    """Valid material the mutations start from: a session, its keys, ciphertexts as a client sends them."""

    token: str
    session: str
    ciphertexts: dict[str, bytes]  # label -> a SEAL serialization of one request's ciphertext
    relin: dict[str, bytes]
    galois: bytes
    context: bytes  # a public TenSEAL context (relinearization keys) at the served parameters
    lock: threading.Lock = field(default_factory=threading.Lock)
    refreshes: int = 0


@dataclass
class Case:
    kind: str
    path: str
    style: str  # unary | stream_unary | stream_stream
    messages: list[bytes]
    metadata: tuple[tuple[str, str], ...]
    session: str = ""  # set when the session field is the valid one and the framing is intact


def _cipher_chunks(session: str, request_id: int, blobs: list[bytes]) -> list[bytes]:
    out, first = [], True
    for index, blob in enumerate(blobs):
        for piece in pieces(blob):
            msg = pb.CiphertextChunk(index=index, data=piece)
            if first:
                msg.session_id, msg.request_id, first = session, request_id, False
            out.append(msg.SerializeToString())
    return out


def _key_chunks(fmt: str, blobs: list[tuple[str, bytes]]) -> list[bytes]:
    out = []
    for name, data in blobs:
        for piece in pieces(data):
            out.append(pb.KeyChunk(format=fmt if not out else "", name=name, data=piece).SerializeToString())
    return out


class CaseMaker:
    """Fuzz cases for the gRPC service, drawn by weight from the kinds below; deterministic in the seed."""

    # Key uploads cost the server ~50 ms of CPU each (a SEAL context per upload, then the loader), the rest
    # a few ms; the key loaders get their depth from the coverage-guided campaign, the live server its breadth.
    WEIGHTS = {
        "layout": 0.08, "budget": 0.06, "resume": 0.08,
        "evaluate-data": 0.30, "evaluate-proto": 0.17, "evaluate-chunks": 0.06,
        "keys-relin": 0.03, "keys-galois": 0.003, "keys-galois-head": 0.012, "keys-context": 0.01,
        "keys-proto": 0.015, "random": 0.08, "confused": 0.04, "metadata": 0.05,
    }

    def __init__(self, seeds: Seeds, seed: int) -> None:
        self.s = seeds
        self.rng = random.Random(seed)
        self.kinds = list(self.WEIGHTS)
        self.weights = [self.WEIGHTS[k] for k in self.kinds]
        self.auth = (("authorization", f"Bearer {seeds.token}"),)

    def session(self) -> str:
        with self.s.lock:
            return self.s.session

    def other_session(self) -> str:
        r = self.rng
        return r.choice([lambda: os.urandom(16).hex(), lambda: "", lambda: printable(r, r.randint(1, 80)),
                         lambda: self.session()[:-1] + "0", lambda: self.session().upper()])()

    def next(self) -> Case:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        return getattr(self, "_" + kind.replace("-", "_"))(kind)

    def _unary(self, kind: str, method: str, msg: bytes) -> Case:
        return Case(kind, METHOD[method], "unary", [msg], self.auth)

    def _layout(self, kind: str) -> Case:
        r = self.rng
        msg = pb.LayoutRequest(protocol=r.choice([2, 2, 2, 1, 3, 0, 2**32 - 1]),
                               client_software=printable(r, r.randint(0, 40))).SerializeToString()
        return self._unary(kind, "GetLayout", mutate(msg, r, head=16) if r.random() < 0.8 else msg)

    def _budget(self, kind: str) -> Case:
        r = self.rng
        return self._unary(kind, "GetBudget", r.randbytes(r.randint(0, 64)) if r.random() < 0.8 else b"")

    def _resume(self, kind: str) -> Case:
        r = self.rng
        sid = self.session() if r.random() < 0.5 else self.other_session()
        msg = pb.ResumeRequest(session_id=sid).SerializeToString()
        return self._unary(kind, "Resume", mutate(msg, r, head=40) if r.random() < 0.7 else msg)

    def _evaluate_data(self, kind: str) -> Case:
        """Valid framing and session; the ciphertext bytes mutated: these reach SEAL's loader."""
        r = self.rng
        label = r.choice(list(self.s.ciphertexts))
        # The coefficients are uniformly random, so even zstd stores them as raw blocks: a flip among them
        # mostly leaves a valid ciphertext, which the server then evaluates (0.2-0.4 s of its time for nothing
        # a decoder sees). Aim most mutations at the header, the members and the compressed frame's start.
        blob = mutate_seal(self.s.ciphertexts[label], r, head=128, head_share=0.9)
        sid = self.session()
        return Case(f"{kind}:{label}", METHOD["Evaluate"], "stream_stream",
                    _cipher_chunks(sid, r.randrange(2**32), [blob]), self.auth, session=sid)

    def _evaluate_proto(self, kind: str) -> Case:
        """The serialized chunks mutated (field tags, lengths, indices); a valid session half of the time."""
        r = self.rng
        sid = self.session() if r.random() < 0.5 else self.other_session()
        blob = self.s.ciphertexts[r.choice(list(self.s.ciphertexts))]
        if r.random() < 0.5:
            blob = blob[: r.randint(0, 4096)]
        msgs = _cipher_chunks(sid, r.randrange(2**32), [blob])
        at = r.randrange(len(msgs))
        msgs[at] = mutate(msgs[at], r, head=96)
        return Case(kind, METHOD["Evaluate"], "stream_stream", msgs, self.auth)

    def _evaluate_chunks(self, kind: str) -> Case:
        """Structure: split ciphertexts, indices out of order or with gaps, too many ciphertexts, no session."""
        r = self.rng
        blob = self.s.ciphertexts[r.choice(list(self.s.ciphertexts))]
        sid = self.session() if r.random() < 0.5 else self.other_session()
        msgs: list[pb.CiphertextChunk] = []
        count = r.choice([0, 1, 2, 3, 5, 40])
        for i in range(count):
            parts = r.randint(1, 4)
            step = max(len(blob) // parts, 1)
            for at in range(0, len(blob), step):
                index = i if r.random() < 0.85 else r.choice([i + 1, i + 2, max(i - 1, 0), 2**31, 2**32 - 1])
                msgs.append(pb.CiphertextChunk(index=index, data=blob[at : at + step]))
        if msgs and r.random() < 0.85:
            msgs[0].session_id, msgs[0].request_id = sid, r.randrange(2**64)
        if msgs and r.random() < 0.2:
            msgs[-1].session_id = self.other_session()
        if r.random() < 0.1:
            msgs.append(pb.CiphertextChunk(compute_s=r.choice([float("nan"), -1.0, 1e308])))
        return Case(kind, METHOD["Evaluate"], "stream_stream", [m.SerializeToString() for m in msgs], self.auth)

    def _keys_relin(self, kind: str) -> Case:
        """Mutated relinearization keys, then a Galois stub: the relin loader runs, no session can open."""
        r = self.rng
        label = r.choice(list(self.s.relin))
        relin = mutate_seal(self.s.relin[label], r)
        stub = self.s.galois[: r.randint(0, 4096)]
        return Case(f"{kind}:{label}", METHOD["UploadKeys"], "stream_unary",
                    _key_chunks("seal", [("relin_keys", relin), ("galois_keys", stub)]), self.auth)

    def _keys_galois(self, kind: str) -> Case:
        """The full Galois keys (16 MB) mutated, loaded first, then a relin stub."""
        r = self.rng
        galois = mutate_seal(self.s.galois, r, head=256)
        stub = self.s.relin["zstd"][: r.randint(0, 4096)]
        return Case(kind, METHOD["UploadKeys"], "stream_unary",
                    _key_chunks("seal", [("galois_keys", galois), ("relin_keys", stub)]), self.auth)

    def _keys_galois_head(self, kind: str) -> Case:
        """The Galois keys' first bytes only (header and compressed stream start) mutated: cheap."""
        r = self.rng
        galois = mutate_seal(self.s.galois[: r.randint(16, 1 << 16)], r, head=64)
        return Case(kind, METHOD["UploadKeys"], "stream_unary",
                    _key_chunks("seal", [("galois_keys", galois), ("relin_keys", self.s.relin["zstd"][:64])]),
                    self.auth)

    def _keys_context(self, kind: str) -> Case:
        r = self.rng
        ctx = mutate(self.s.context, r, head=256)
        return Case(kind, METHOD["UploadKeys"], "stream_unary", _key_chunks("tenseal-context", [("", ctx)]),
                    self.auth)

    def _keys_proto(self, kind: str) -> Case:
        """KeyChunk structure: odd formats and names, secret keys, names twice, empty streams; raw mutation."""
        r = self.rng
        names = ["relin_keys", "galois_keys", "public_key", "secret_key", "", "relin_keys\x00", "RELIN_KEYS",
                 printable(r, r.randint(1, 30))]
        formats = ["seal", "tenseal-context", "", "SEAL", "pickle", printable(r, r.randint(1, 30))]
        msgs = []
        for i in range(r.choice([0, 1, 2, 3, 6])):
            source = r.choice([self.s.relin["zstd"], self.s.galois, self.s.context])
            fmt = r.choice(formats) if i == 0 or r.random() < 0.2 else ""
            msgs.append(pb.KeyChunk(format=fmt, name=r.choice(names), data=source[: r.randint(0, 1 << 14)])
                        .SerializeToString())
        if msgs and r.random() < 0.5:
            at = r.randrange(len(msgs))
            msgs[at] = mutate(msgs[at], r, head=48)
        return Case(kind, METHOD["UploadKeys"], "stream_unary", msgs, self.auth)

    def _random(self, kind: str) -> Case:
        r = self.rng
        path = r.choice(list(METHOD.values()) + ODD_PATHS)
        style = STYLE.get(path.rsplit("/", 1)[-1], r.choice(["unary", "stream_unary", "stream_stream"]))
        msgs = [r.randbytes(r.choice([0, 1, 2, 7, 64, 512, 4096])) for _ in range(r.choice([1, 1, 2, 3]))]
        return Case(kind, path, style, msgs if style != "unary" else msgs[:1], self.auth)

    def _confused(self, kind: str) -> Case:
        """One method's valid message to another method, in any call style."""
        r = self.rng
        sample = r.choice([
            pb.LayoutRequest(protocol=2).SerializeToString(),
            pb.ResumeRequest(session_id=self.session()).SerializeToString(),
            _cipher_chunks(self.session(), 1, [self.s.ciphertexts["zstd"][:2048]])[0],
            pb.KeyChunk(format="seal", name="relin_keys", data=self.s.relin["zstd"][:2048]).SerializeToString(),
            pb.Budget(client="fuzz", limit=10**9).SerializeToString(),
        ])
        style = r.choice(["unary", "stream_unary", "stream_stream"])
        return Case(kind, r.choice(list(METHOD.values())), style, [sample] * r.randint(1, 3), self.auth)

    def _metadata(self, kind: str) -> Case:
        """Valid requests under odd credentials: none, wrong scheme, a mangled or foreign token, two tokens."""
        r = self.rng
        token = self.s.token
        choices: list[tuple[tuple[str, str], ...]] = [
            (), (("authorization", "Bearer "),), (("authorization", f"Basic {token}"),),
            (("authorization", f"bearer {token}"),), (("authorization", f"Bearer {token}x"),),
            (("authorization", f"Bearer {token[:-1]}"),), (("authorization", f"Bearer si_{printable(r, 43)}"),),
            (("authorization", f"Bearer {printable(r, r.randint(1, 2000))}"),),
            (("authorization", f"Bearer {token}"), ("authorization", "Bearer other")),
            (("authorization", f"Bearer  {token}  "),), (("x-secure-infer", printable(r, 50)),),
        ]
        metadata = r.choice(choices)
        method = r.choice(["GetLayout", "GetBudget", "Resume", "Evaluate"])
        if method == "Evaluate":
            msgs = _cipher_chunks(self.session(), 5, [self.s.ciphertexts["zstd"]])
        elif method == "Resume":
            msgs = [pb.ResumeRequest(session_id=self.session()).SerializeToString()]
        elif method == "GetLayout":
            msgs = [pb.LayoutRequest(protocol=2).SerializeToString()]
        else:
            msgs = [b""]
        return Case(kind, METHOD[method], STYLE[method], msgs, metadata)


# -- 1a. live gRPC fuzzing -----------------------------------------------------------------------
@dataclass
class FuzzTally:
    cases: int = 0
    messages: int = 0
    bytes_sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    kind_seconds: Counter[str] = field(default_factory=Counter)
    kind_ok: Counter[str] = field(default_factory=Counter)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    internal: list[dict[str, Any]] = field(default_factory=list)
    client_errors: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # status -> the first case that got it
    lock: threading.Lock = field(default_factory=threading.Lock)


def save_finding(folder: Path, what: str, case: Case, detail: str) -> dict[str, Any]:
    digest = hashlib.sha256(b"".join(case.messages)).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{what}-{case.kind.replace(':', '_')}-{digest}"
    with open(stem.with_suffix(".bin"), "wb") as fh:  # each message: 4-byte length, then the bytes
        for msg in case.messages:
            fh.write(struct.pack(">I", len(msg)) + msg)
    info = {"kind": case.kind, "path": case.path, "style": case.style, "messages": len(case.messages),
            "bytes": sum(map(len, case.messages)), "metadata": [k for k, _ in case.metadata], "detail": detail,
            "file": str(stem.with_suffix(".bin"))}
    stem.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return info


def send_case(channel: grpc.Channel, case: Case, deadline: float) -> tuple[str, str, str]:
    """One call; ``(status name, secure-infer code or '', details)``."""
    if case.style == "unary":
        call = channel.unary_unary(case.path, request_serializer=None, response_deserializer=None)
        payload: Any = case.messages[0] if case.messages else b""
    elif case.style == "stream_unary":
        call = channel.stream_unary(case.path, request_serializer=None, response_deserializer=None)
        payload = iter(case.messages)
    else:
        call = channel.stream_stream(case.path, request_serializer=None, response_deserializer=None)
        payload = iter(case.messages)
    try:
        result = call(payload, timeout=deadline, metadata=case.metadata)
        if case.style == "stream_stream":
            for _ in result:
                pass
        return "OK", "", ""
    except grpc.RpcError as exc:
        code = dict(exc.trailing_metadata() or ()).get(CODE_KEY, "")  # type: ignore[attr-defined]
        return exc.code().name, str(code), str(exc.details() or "")  # type: ignore[attr-defined]


def refresh_session(server: ServerProcess, seeds: Seeds, blobs: dict[str, bytes], stale: str) -> None:
    """Our session was dropped (fuzzed uploads that succeeded pushed it out of the LRU): open another."""
    from protocols.he.channels import GrpcChannel

    with seeds.lock:
        if seeds.session != stale:
            return
        conn = GrpcChannel(server.address, timeout=120, tls=server.tls, token=seeds.token)
        try:
            seeds.session = conn.upload_keys("seal", list(blobs.items())).session_id
            seeds.refreshes += 1
        finally:
            conn.close()


def fuzz_grpc(server: ServerProcess, seeds: Seeds, blobs: dict[str, bytes], cases: int, *, threads: int,
              deadline: float, findings: Path, seed: int = 7) -> dict[str, Any]:
    tally = FuzzTally()
    before = server.status()
    health_failures: list[float] = []
    died_at: list[float] = []
    stop = threading.Event()
    started = time.monotonic()
    cpu0 = (server.cpu_s(), time.process_time())

    def worker(index: int, count: int) -> None:
        maker = CaseMaker(seeds, seed * 1000 + index)
        channel = secure_channel(server.address, server.pki / "ca.pem")
        try:
            for _ in range(count):
                if stop.is_set():
                    return
                case = maker.next()
                t0 = time.monotonic()
                try:
                    status, code, details = send_case(channel, case, deadline)
                except Exception as exc:  # the client library refused to send it: our side, not the server
                    with tally.lock:
                        tally.client_errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                    continue
                spent = time.monotonic() - t0
                label = status + (f"/{code}" if code else "")
                with tally.lock:
                    if label not in tally.examples:
                        tally.examples[label] = f"{case.kind} -> {case.path}: {details[:160]}"
                    tally.cases += 1
                    tally.messages += len(case.messages)
                    tally.bytes_sent += sum(map(len, case.messages))
                    tally.statuses[label] += 1
                    base = case.kind.split(":")[0]
                    tally.kinds[case.kind] += 1
                    tally.kind_seconds[base] += spent
                    if status == "OK":
                        tally.kind_ok[case.kind] += 1
                    if status == "DEADLINE_EXCEEDED" and not code:
                        tally.hangs.append(save_finding(findings, "hang", case, f"{spent:.1f} s: {details}"))
                    if code == "internal-error":
                        tally.internal.append(save_finding(findings, "internal", case, details[:300]))
                if status == "UNAVAILABLE" and not server.alive():
                    died_at.append(time.monotonic() - started)
                    stop.set()
                    return
                if case.session and code == "unknown-session":
                    refresh_session(server, seeds, blobs, case.session)
        finally:
            channel.close()

    shares = [cases // threads + (1 if i < cases % threads else 0) for i in range(threads)]
    pool = [threading.Thread(target=worker, args=(i, n), daemon=True) for i, n in enumerate(shares)]
    for t in pool:
        t.start()
    last_health = last_print = time.monotonic()
    rss = [before.get("rss_mb", 0.0)]
    while any(t.is_alive() for t in pool):
        time.sleep(1.0)
        now = time.monotonic()
        if not server.alive():
            died_at.append(now - started)
            stop.set()
            break
        rss.append(server.status().get("rss_mb", 0.0))
        if now - last_health > 10:
            last_health = now
            if not server.healthy():
                health_failures.append(now - started)
        if now - last_print > 30:
            last_print = now
            print(f"  gRPC fuzz: {tally.cases}/{cases} cases, {tally.cases / (now - started):.0f}/s, "
                  f"server rss {rss[-1]:.0f} MB", flush=True)
    for t in pool:
        t.join(timeout=deadline + 30)
    wall = time.monotonic() - started
    cpu = {"server": round(server.cpu_s() - cpu0[0], 1), "client": round(time.process_time() - cpu0[1], 1)}
    alive = server.alive()
    healthy_after = alive and server.healthy()
    if alive and not healthy_after:
        health_failures.append(wall)
    after = server.status()
    internal = after["stats"]["internal_errors"] - before["stats"]["internal_errors"]
    crashes = internal + (0 if alive else 1) + len(health_failures)
    return {
        "cases": tally.cases, "messages": tally.messages, "bytes_sent": tally.bytes_sent, "seconds": round(wall, 1),
        "cases_per_s": round(tally.cases / wall, 1), "threads": threads, "deadline_s": deadline,
        "cpu_s": cpu, "server_cpu_ms_per_case": round(1000 * cpu["server"] / max(tally.cases, 1), 2),
        "crashes": crashes, "hangs": len(tally.hangs),
        "crash_detail": {"internal_errors": internal, "server_died": not alive, "died_at_s": died_at[:1],
                         "health_check_failures_at_s": health_failures},
        "status_codes": dict(tally.statuses.most_common()), "status_examples": tally.examples,
        "server_error_codes": {k: v - before["stats"]["errors"].get(k, 0) for k, v in after["stats"]["errors"].items()
                               if v - before["stats"]["errors"].get(k, 0)},
        "queries_evaluated": after["stats"]["queries"] - before["stats"]["queries"],
        "cases_by_kind": dict(sorted(tally.kinds.items())), "accepted_by_kind": dict(sorted(tally.kind_ok.items())),
        "seconds_by_kind": {k: round(v, 1) for k, v in sorted(tally.kind_seconds.items())},
        "session_refreshes": seeds.refreshes,
        "client_side_refusals": dict(tally.client_errors),
        "hang_cases": tally.hangs[:20], "internal_error_cases": tally.internal[:20],
        "server_rss_mb": {"start": rss[0], "max": max(rss), "end": after.get("rss_mb", 0.0)},
    }


# -- 1b. legacy frame fuzzing --------------------------------------------------------------------
def fuzz_frames(server: ServerProcess, cases: int, *, threads: int, deadline: float, findings: Path,
                seed: int = 7) -> dict[str, Any]:
    from protocols.common.fuzz import fuzz_cases, send_and_wait_for_close
    from secure_infer.backends.tenseal import to_bytes

    assert server.frames_address is not None
    data = si.datasets.load("digits")
    with HEClient(server.frames_address, transport="frames", timeout=120) as client:
        packed = next(client.cipher.requests(client.cipher.check_input(data.x_test[:1])))[1][0]
        session, ciphertext = client.session_id, to_bytes(packed)
    assert session is not None
    before = server.status()
    todo: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
    hangs: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    sent = [0, 0]  # cases, bytes
    lock = threading.Lock()

    def worker() -> None:
        while (data_ := todo.get()) is not None:
            try:
                closed = send_and_wait_for_close(server.frames_address, data_, timeout=deadline)
            except OSError as exc:
                with lock:
                    errors[f"{type(exc).__name__}: {exc}"[:100]] += 1
                continue
            with lock:
                sent[0] += 1
                sent[1] += len(data_)
                if not closed:
                    digest = hashlib.sha256(data_).hexdigest()[:16]
                    findings.mkdir(parents=True, exist_ok=True)
                    (findings / f"hang-frames-{digest}.bin").write_bytes(data_)
                    hangs.append({"bytes": len(data_), "file": str(findings / f"hang-frames-{digest}.bin")})

    started = time.monotonic()
    cpu0 = (server.cpu_s(), time.process_time())
    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    last_print = started
    for data_ in fuzz_cases(cases, session=session, ciphertext=ciphertext, seed=seed):
        todo.put(data_)
        if time.monotonic() - last_print > 30:
            last_print = time.monotonic()
            print(f"  frame fuzz: {sent[0]}/{cases} cases, {sent[0] / (last_print - started):.0f}/s", flush=True)
        if not server.alive():
            break
    for _ in pool:
        todo.put(None)
    for t in pool:
        t.join()
    wall = time.monotonic() - started
    cpu = {"server": round(server.cpu_s() - cpu0[0], 1), "client": round(time.process_time() - cpu0[1], 1)}
    alive = server.alive()
    healthy = alive and server.healthy()
    after = server.status()
    internal = after["stats"]["internal_errors"] - before["stats"]["internal_errors"]
    return {
        "cases": sent[0], "bytes_sent": sent[1], "seconds": round(wall, 1), "cases_per_s": round(sent[0] / wall, 1),
        "threads": threads, "deadline_s": deadline, "cpu_s": cpu,
        "crashes": internal + (0 if alive else 1) + (0 if healthy or not alive else 1), "hangs": len(hangs),
        "crash_detail": {"internal_errors": internal, "server_died": not alive, "healthy_after": healthy},
        "server_error_codes": {k: v - before["stats"]["errors"].get(k, 0) for k, v in after["stats"]["errors"].items()
                               if v - before["stats"]["errors"].get(k, 0)},
        "queries_evaluated": after["stats"]["queries"] - before["stats"]["queries"],
        "client_socket_errors": dict(errors), "hang_cases": hangs[:20],
    }


def fuzz_seeds(server: ServerProcess, token: str, data: Any) -> tuple[Seeds, dict[str, bytes], dict[str, Any]]:
    """A real client's session, keys and ciphertexts; also the key and per-query byte figures."""
    import numpy as np
    import tenseal as ts

    from secure_infer.backends.tenseal import to_bytes

    fd = load_fuzz_decoders()
    recompress = getattr(fd, "seal_recompress", None) if fd is not None else None
    with HEClient(server.address, tls=server.tls, token=token, timeout=120) as client:
        client.predict(data.x_test[:1])
        stats = client.last_query
        assert stats is not None and client.session_id is not None
        keys_figure = {"key_upload_bytes_once": client.key_upload_bytes,
                       "key_blobs": {k: len(v) for k, v in client.cipher.keys.public_blobs.items()},
                       "bytes_per_query": stats.bytes_up + stats.bytes_down, "bytes_up": stats.bytes_up,
                       "bytes_down": stats.bytes_down, "query_round_trip_s": round(stats.round_trip_s, 4),
                       "server_compute_s": round(stats.server_compute_s, 4)}
        keys = client.cipher.keys
        params = client.layout.params
        seeded = to_bytes(next(client.cipher.requests(client.cipher.check_input(data.x_test[1:2])))[1][0])
        full = to_bytes(keys.encrypt(np.linspace(-0.5, 0.5, params.slots)))
        blobs = dict(keys.public_blobs)
        session = client.session_id
    cts = {"zstd": seeded, "full-zstd": full}
    relin = {"zstd": blobs["relin_keys"]}
    if recompress is not None:
        for label, blob in (("none", seeded), ("full-none", full)):
            other = recompress(blob, 0)
            if other is not None:
                cts[label] = other
        other = recompress(blobs["relin_keys"], 0)
        if other is not None:
            relin["none"] = other
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    context = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                            save_relin_keys=True)
    seeds = Seeds(token=token, session=session, ciphertexts=cts, relin=relin,
                  galois=blobs.get("galois_keys", b""), context=context)
    keys_figure["seed_sizes"] = {"ciphertexts": {k: len(v) for k, v in cts.items()},
                                 "relin": {k: len(v) for k, v in relin.items()}, "galois": len(seeds.galois),
                                 "tenseal_context": len(context)}
    return seeds, blobs, keys_figure


def still_answers(server: ServerProcess, token: str, model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """After the fuzzing: a fresh client over gRPC (and frames) gets the plaintext model's answers."""
    with torch.no_grad():
        ref = model(x).argmax(1)
    out: dict[str, Any] = {}
    with HEClient(server.address, tls=server.tls, token=token, timeout=120) as client:
        out["grpc_correct"] = int((client.predict(x).argmax(1) == ref).sum())
    if server.frames_address is not None:
        with HEClient(server.frames_address, transport="frames", timeout=120) as client:
            out["frames_correct"] = int((client.predict(x).argmax(1) == ref).sum())
    out["of"] = len(x)
    return out


# -- 2. coverage-guided -------------------------------------------------------------------------
def load_fuzz_decoders() -> Any:
    path = Path(__file__).with_name("fuzz_decoders.py")
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("fuzz_decoders", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_decoders", module)
    spec.loader.exec_module(module)
    return module


def coverage_campaign(seconds: float, out: Path) -> dict[str, Any]:
    fd = load_fuzz_decoders()
    if fd is None or not hasattr(fd, "run_campaign"):
        return {"error": "benchmarks/fuzz_decoders.py (run_campaign) is not there"}
    kwargs: dict[str, Any] = {}
    if "echo" in inspect.signature(fd.run_campaign).parameters:
        kwargs["echo"] = False  # libFuzzer's own lines go to OUT/logs
    started = time.monotonic()
    summary = fd.run_campaign(seconds=seconds, out=out, **kwargs)
    summary["out"] = str(out)
    summary["benchmark_wall_s"] = round(time.monotonic() - started, 1)
    return dict(summary)


# -- 3. concurrency -----------------------------------------------------------------------------
def concurrency(server: ServerProcess, state_path: Path, tokens: dict[str, str], model: torch.nn.Module,
                x: torch.Tensor, requests: int) -> dict[str, Any]:
    names = list(tokens)
    clients = len(names)
    with torch.no_grad():
        ref = model(x).argmax(1)
    wrong: list[tuple[int, int]] = []
    errors: list[str] = []
    latencies: list[float] = []
    connect_s: list[float] = []
    answers = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    phase: dict[str, float] = {}

    def run(index: int) -> None:
        try:
            t0 = time.monotonic()
            with HEClient(server.address, tls=server.tls, token=tokens[names[index]], timeout=600) as client:
                with lock:
                    connect_s.append(time.monotonic() - t0)
                try:
                    if barrier.wait(timeout=900) == 0:
                        phase["queries_start"] = time.monotonic()
                        phase["client_process_rss_mb"] = rss_mb()
                except threading.BrokenBarrierError:
                    pass  # another client failed to connect: query anyway
                for r in range(requests):
                    i = (index * requests + r) % len(x)
                    q0 = time.monotonic()
                    y = client.predict(x[i : i + 1])
                    with lock:
                        latencies.append(time.monotonic() - q0)
                        answers[0] += 1
                        if int(y.argmax()) != int(ref[i]):
                            wrong.append((index, r))
        except Exception as exc:
            barrier.abort()
            with lock:
                errors.append(f"client {index}: {type(exc).__name__}: {exc}"[:300])

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ended = time.monotonic()
    state = ServerState(state_path)
    try:
        used = {n: state.client(n).used for n in names}  # type: ignore[union-attr]
    finally:
        state.close()
    time.sleep(1.0)  # the server writes its status every 0.5 s
    status = server.status()
    lat = sorted(latencies)
    return {
        "clients": clients, "requests_each": requests, "answers": answers[0], "expected": clients * requests,
        "wrong": len(wrong), "wrong_cases": wrong[:20], "errors": errors,
        "seconds": round(ended - started, 1),
        "connect_phase_s": round(phase.get("queries_start", ended) - started, 1),
        "query_phase_s": round(ended - phase.get("queries_start", started), 1),
        "connect_s": {"median": round(statistics.median(connect_s), 2), "max": round(max(connect_s), 2)}
        if connect_s else {},
        "query_latency_s": {"median": round(statistics.median(lat), 3), "p95": round(lat[int(0.95 * (len(lat) - 1))], 3),
                            "max": round(lat[-1], 3)} if lat else {},
        "client_process_rss_mb_all_connected": round(phase.get("client_process_rss_mb", 0.0)),
        "budget_used_exactly_requests": sum(u == requests for u in used.values()),
        "budget_mismatches": {n: u for n, u in used.items() if u != requests},
        "server": {"queries": status["stats"]["queries"], "internal_errors": status["stats"]["internal_errors"],
                   "errors": status["stats"]["errors"], "rss_mb": status.get("rss_mb")},
    }


# -- 4. restart ---------------------------------------------------------------------------------
def restart_drill(work: Path, model_file: Path, state_path: Path, pki: Path, token: str, name: str, budget: int,
                  model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    from protocols.he.channels import GrpcChannel
    from secure_infer.backends.tenseal import to_bytes

    with torch.no_grad():
        ref = model(x).argmax(1)
    first = budget // 2
    out: dict[str, Any] = {"client": name, "budget": budget, "spent_before_restart": first}

    def used_in_file() -> int:
        state = ServerState(state_path)
        try:
            return state.client(name).used  # type: ignore[union-attr]
        finally:
            state.close()

    correct = 0
    a = ServerProcess(work, "restart-a", model=model_file, state=state_path, pki=pki)
    try:
        with HEClient(a.address, tls=a.tls, token=token, timeout=120) as client:
            for i in range(first):
                correct += int(client.predict(x[i : i + 1]).argmax()) == int(ref[i])
            out["used_before_restart"] = (client.remaining_budget() or {}).get("used")
    finally:
        a.stop(kill=True)
    out["stop"] = "SIGKILL"
    out["used_in_state_file_while_down"] = used_in_file()
    b = ServerProcess(work, "restart-b", model=model_file, state=state_path, pki=pki)
    try:
        with HEClient(b.address, tls=b.tls, token=token, timeout=120) as client:
            out["used_after_restart"] = (client.remaining_budget() or {}).get("used")
            for i in range(first, budget):
                correct += int(client.predict(x[i : i + 1]).argmax()) == int(ref[i])
            out["used_after_spending_the_rest"] = (client.remaining_budget() or {}).get("used")
            try:
                client.predict(x[:1])
                out["client_precheck"] = "sent (not refused)"
            except ProtocolError as exc:
                out["client_precheck"] = f"refused before sending: {exc.code}"
            blob = to_bytes(next(client.cipher.requests(client.cipher.check_input(x[:1])))[1][0])
            conn = GrpcChannel(b.address, timeout=120, tls=b.tls, token=token)
            try:
                conn.evaluate(client.session_id or "", 10_000, [blob])
                out["server_refusal"] = "answered: the budget did NOT hold"
            except ProtocolError as exc:
                out["server_refusal"] = exc.code
            finally:
                conn.close()
            out["used_after_refusal"] = (client.remaining_budget() or {}).get("used")
        out["server_internal_errors"] = b.status()["stats"]["internal_errors"]
    finally:
        b.stop()
    out["answers_correct"] = f"{correct}/{budget}"
    out["ok"] = (out["used_before_restart"] == first and out["used_in_state_file_while_down"] == first
                 and out["used_after_restart"] == first and out["used_after_spending_the_rest"] == budget
                 and out["server_refusal"] == "budget-exhausted" and out["used_after_refusal"] == budget
                 and correct == budget)
    return out


# -- 6. MPC -------------------------------------------------------------------------------------
def mpc_drills(work: Path, timeout: float) -> dict[str, Any]:
    from protocols.mpc import launch_local, local_parties, parse_phase_line

    data = si.datasets.load("digits")
    z = si.zoo.pretrained("lenet", data)
    work.mkdir(parents=True, exist_ok=True)
    model = si.zoo.save_model(z, work / "lenet.pt")
    out: dict[str, Any] = {}

    def configs() -> list[Any]:
        return local_parties(3, task="infer", timeout=timeout, per_rank={
            0: {"model": model}, 1: {"input": "digits:0-360", "output": work / "y.npy"}})

    for victim in (0, 1, 2):
        r = launch_local(configs(), work / f"kill-{victim}", kill_when=(victim, "inference"), grace=timeout + 100)
        out[f"kill rank {victim} during inference"] = {
            "killed_at_s": r.killed_at_s, "others_exited_after_s": r.others_exited_after_s,
            "exit_codes": r.exit_codes, "killed_by_launcher": r.killed_by_launcher,
            "errors": {k: v[:200] for k, v in r.errors.items()}}
    # a frozen party: alive but silent; only the collective timeout can end the others
    folder = work / "freeze"
    pid_file = folder / "rank2.pid"
    folder.mkdir(parents=True, exist_ok=True)
    pid_file.unlink(missing_ok=True)
    frozen: dict[str, Any] = {}

    def prefix(config: Any) -> list[str]:  # rank 2 writes its pid (exec keeps it) so only it is stopped
        return ["sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pid_file)] if config.rank == 2 else []

    def freeze() -> None:
        started = time.monotonic()
        while time.monotonic() - started < 300:
            phases = set()
            for rank in (0, 1, 2):
                with contextlib.suppress(OSError):
                    for line in (folder / f"party-{rank}.log").read_text(errors="replace").splitlines():
                        parsed = parse_phase_line(line)
                        if parsed is not None and parsed[1] == "inference":
                            phases.add(rank)
            if phases == {0, 1, 2} and pid_file.exists():
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGSTOP)
                frozen.update(pid=pid, at_s=round(time.monotonic() - started, 1))
                return
            time.sleep(0.05)

    t = threading.Thread(target=freeze)
    t.start()
    r = launch_local(configs(), folder, grace=15, prefix=prefix)
    t.join()
    if "pid" in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen["pid"], signal.SIGCONT)
    out["freeze rank 2 (SIGSTOP) during inference"] = {
        "frozen": frozen, "first_failure_s": r.first_failure_s,
        "first_failure_after_freeze_s": (round(r.first_failure_s - frozen["at_s"], 1)
                                         if r.first_failure_s is not None and "at_s" in frozen else None),
        "collective_timeout_s": timeout, "wall_s": round(r.wall_s, 1),
        "exit_codes": r.exit_codes, "killed_by_launcher": r.killed_by_launcher,
        "errors": {k: v[:200] for k, v in r.errors.items()}}
    return out


# -- main ---------------------------------------------------------------------------------------
def summary_lines(report: dict[str, Any]) -> Iterator[str]:
    f = report.get("fuzz")
    if f:
        g, fr = f["grpc"], f["frames"]
        yield (f"live fuzzing: {f['cases']} cases ({g['cases']} gRPC+TLS calls carrying {g['messages']} messages, "
               f"{fr['cases']} legacy frame connections) in {f['seconds']:.0f} s: {f['crashes']} crashes, "
               f"{f['hangs']} hangs; server still answers: {f.get('after', {})}")
        yield (f"  gRPC {g['cases_per_s']}/s, {g['queries_evaluated']} fuzzed requests evaluated; "
               f"frames {fr['cases_per_s']}/s")
    c = report.get("coverage_guided")
    if c:
        if "error" in c:
            yield f"coverage-guided fuzzing: {c['error']}"
        else:
            yield (f"coverage-guided fuzzing: {c['fuzz_seconds'] / 60:.1f} min over {len(c['targets'])} targets, "
                   f"{c['executions']} executions: {c['crashes']} crashes, {c['hangs']} hangs")
    k = report.get("concurrency")
    if k:
        yield (f"concurrency: {k['clients']} clients x {k['requests_each']} queries: {k['answers']}/{k['expected']} "
               f"answers, {k['wrong']} wrong, {len(k['errors'])} errors, {k['seconds']:.0f} s "
               f"(queries {k['query_phase_s']:.0f} s); budgets exact for {k['budget_used_exactly_requests']}")
    r = report.get("restart")
    if r:
        yield (f"restart: used {r['used_before_restart']} -> (SIGKILL) -> {r['used_after_restart']}; after "
               f"{r['budget']}: server refusal {r['server_refusal']!r}, used {r['used_after_refusal']}; ok={r['ok']}")
    keys = report.get("keys")
    if keys:
        yield (f"keys: {keys['key_upload_bytes_once']} bytes once per session; {keys['bytes_per_query']} bytes "
               f"per query")
    for name, drill in (report.get("mpc") or {}).items():
        if "frozen" in drill:
            yield (f"mpc {name}: the others failed {drill['first_failure_after_freeze_s']} s after the freeze "
                   f"(collective timeout {drill['collective_timeout_s']:.0f} s), exit codes {drill['exit_codes']}, "
                   f"the frozen party killed by the launcher: {drill['killed_by_launcher']}")
        else:
            yield (f"mpc {name}: the others exited {drill['others_exited_after_s']:.1f} s after the kill, exit "
                   f"codes {drill['exit_codes']}, killed by launcher {drill['killed_by_launcher']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fuzz", type=int, default=100_000, help="live fuzz cases in all, gRPC and frames (0: skip)")
    parser.add_argument("--frame-share", type=float, default=0.2, help="share of --fuzz sent to the frame server")
    parser.add_argument("--fuzz-threads", type=int, default=4)
    parser.add_argument("--fuzz-evaluations", type=int, default=100,
                        help="fuzzed requests the server may evaluate; later ones that pass every check are "
                             "refused budget-exhausted, after the decoders ran")
    parser.add_argument("--fuzz-deadline", type=float, default=30.0, help="seconds per call before it is a hang")
    parser.add_argument("--coverage-seconds", type=float, default=600, help="coverage-guided fuzzing (0: skip)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (0: skip)")
    parser.add_argument("--requests", type=int, default=20, help="queries per concurrent client")
    parser.add_argument("--restart-budget", type=int, default=6, help="budget of the restart drill (0: skip)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="server evaluation threads")
    parser.add_argument("--mpc-timeout", type=float, default=20.0)
    parser.add_argument("--skip-mpc", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="servers' logs, findings, corpora (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_main(args.serve)
        return
    from secure_infer.certs import make_pki

    started = time.monotonic()
    work = (args.work or Path(tempfile.mkdtemp(prefix="si-reliability-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "grpc": grpc.__version__},
        "model": f"zoo {MODEL} trained on digits, latency mode", "work": str(work),
    }
    print(f"work folder: {work}", flush=True)
    data = si.datasets.load("digits")
    z = si.zoo.pretrained(MODEL, data)
    model = z.model.eval()
    model_file = si.zoo.save_model(z, work / f"{MODEL}.pt")
    pki = work / "pki"
    make_pki(pki)
    x = data.x_test

    def save() -> None:
        report["wall_s"] = round(time.monotonic() - started, 1)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=str))

    if args.fuzz > 0:
        state_path = work / "fuzz-state.db"
        state = ServerState(state_path)
        # the fuzzing identity may have `--fuzz-evaluations` mutated requests evaluated; past that, a request
        # that passes every check is refused when its budget is charged (after the loaders ran) instead of
        # costing 0.2-0.4 s of evaluation for nothing a decoder sees
        token = state.add_client("fuzz", budget=1 + args.fuzz_evaluations)
        checker = state.add_client("checker")
        state.close()
        server = ServerProcess(work, "fuzz-server", model=model_file, state=state_path, pki=pki, frames=True,
                               workers=args.workers)
        try:
            seeds, blobs, report["keys"] = fuzz_seeds(server, token, data)
            n_frames = int(round(args.fuzz * args.frame_share))
            print(f"live fuzzing: {args.fuzz - n_frames} gRPC cases, then {n_frames} frame cases", flush=True)
            g = fuzz_grpc(server, seeds, blobs, args.fuzz - n_frames, threads=args.fuzz_threads,
                          deadline=args.fuzz_deadline, findings=work / "findings")
            fr = fuzz_frames(server, n_frames, threads=args.fuzz_threads, deadline=args.fuzz_deadline,
                             findings=work / "findings")
            after = still_answers(server, checker, model, x[:4]) if server.alive() else {"server": "dead"}
        finally:
            final = server.stop()
        report["fuzz"] = {"cases": g["cases"] + fr["cases"], "messages": g["messages"] + fr["cases"],
                          "seconds": g["seconds"] + fr["seconds"], "crashes": g["crashes"] + fr["crashes"],
                          "hangs": g["hangs"] + fr["hangs"], "after": after,
                          "server_final_stats": final and final["stats"], "grpc": g, "frames": fr}
        save()
    if args.coverage_seconds > 0:
        print(f"coverage-guided fuzzing: {args.coverage_seconds:.0f} s", flush=True)
        try:
            report["coverage_guided"] = coverage_campaign(args.coverage_seconds, work / "coverage")
        except Exception as exc:
            report["coverage_guided"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        save()
    if args.clients > 0:
        print(f"concurrency: {args.clients} clients x {args.requests} queries", flush=True)
        state_path = work / "concurrency-state.db"
        state = ServerState(state_path)
        tokens = {f"client-{i:02d}": state.add_client(f"client-{i:02d}", budget=args.requests)
                  for i in range(args.clients)}
        state.close()
        server = ServerProcess(work, "concurrency-server", model=model_file, state=state_path, pki=pki,
                               workers=args.workers, max_sessions=args.clients + 8)
        try:
            report["concurrency"] = concurrency(server, state_path, tokens, model, x, args.requests)
        finally:
            server.stop()
        save()
    if args.restart_budget > 0:
        print("restart drill", flush=True)
        state_path = work / "restart-state.db"
        state = ServerState(state_path)
        token = state.add_client("metered", budget=args.restart_budget)
        state.close()
        report["restart"] = restart_drill(work, model_file, state_path, pki, token, "metered", args.restart_budget,
                                          model, x)
        save()
    if not args.skip_mpc:
        print("MPC drills", flush=True)
        report["mpc"] = mpc_drills(work / "mpc", args.mpc_timeout)
    save()
    print(json.dumps(report, indent=2, default=str) if not args.out else f"report: {args.out}")
    print("\n".join(summary_lines(report)))


if __name__ == "__main__":
    main()
