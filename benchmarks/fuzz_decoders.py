"""Coverage-guided fuzzing of every decoder that reads network bytes (issue 14, item 6).

Run: python benchmarks/fuzz_decoders.py --seconds 600 --out DIR [--targets wire,proto] [--timeout 10]

Targets (each a libFuzzer/atheris campaign of its own, with its own corpus):

==================  =====================================================================
wire                the legacy frame codec, ``protocols.common.wire.decode``
proto               protobuf parsing of every request message of ``inference.proto``
                    (LayoutRequest, KeyChunk, ResumeRequest, CiphertextChunk, BudgetRequest)
ciphertext          ``InferenceHandler.load_request``: SEAL ciphertext loader, freshness checks
relin_keys          ``InferenceHandler.open_session("seal", ...)``: the RelinKeys loader
galois_keys         ``InferenceHandler.open_session("seal", ...)``: the GaloisKeys loader
tenseal_context     ``InferenceHandler.open_session("tenseal-context", ...)``: the screen
                    (``screen_tenseal_context``), then TenSEAL's context parser (protobuf,
                    EncryptionParameters, PublicKey, both key sets)
==================  =====================================================================

The handler targets run on a real compiled program: the digits logistic
regression wrapped for TenSEAL in latency mode as ``HEServer.from_model``
builds it (untrained weights: no decoder reads them), client keys dropped,
behind an ``InferenceHandler``. Seeds are valid
serializations made with that program's parameters, so mutations start deep
inside the parsers: SEAL objects as a client sends them (zstd), the same
bytes recompressed with zlib, and uncompressed (the zstd payload unpacked
through the system's libzstd), so that byte flips land in SEAL's member
parsing rather than in a decompressor's checksum. Custom mutators keep the
SEAL header's size field and TenSEAL's protobuf lengths consistent after a
mutation most of the time, for the same reason.

Coverage: ``atheris.instrument_imports`` instruments ``protocols`` and
``json``, ``atheris.instrument_func`` the SEAL layer
(``secure_infer/backends/tenseal/_seal.py``). SEAL, TenSEAL and upb parse in
native code no Python instrumentation sees, so two instrumented probes give
libFuzzer a signal from them: each refusal's reason (SEAL's message: how far
parsing got) is hashed to one of 256 tiny functions, and each parsed protobuf
message goes through :func:`server_view`, which branches as the server's
adapter does. An input that fails somewhere new, or parses to a message the
server treats differently, is new coverage and stays in the corpus.

A target may raise only :class:`~secure_infer.ProtocolError` (protobuf's
``DecodeError`` for the proto target): anything else is a bug, and a native
crash (segfault, abort, out of memory) is what the issue is about. One
"zygote" process builds the program once, instruments, runs every seed once
in a forked child, then forks one libFuzzer worker per target in turn.
libFuzzer writes every crashing, hanging (``-timeout``, default 10 s per
input) or memory-exhausting (``-rss_limit_mb``) input to
``OUT/crashes/TARGET/``, with the worker's log tail beside it; the zygote
restarts a dead worker on the same corpus until the target's time is spent,
so one crash does not end the campaign. :func:`run_campaign` (for
``benchmarks/protocol_reliability.py`` to call) returns the summary that is
also written to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    description: str
    weight: float  # share of the campaign's seconds
    max_len: int = 0  # 0: the largest seed plus a margin


TARGETS: dict[str, Target] = {
    # fast, pure-Python or upb targets get less time than the native loaders the issue is about
    "wire": Target("legacy frame codec: protocols.common.wire.decode", 0.5, 16384),
    "proto": Target("protobuf FromString of LayoutRequest, KeyChunk, ResumeRequest, CiphertextChunk, "
                    "BudgetRequest", 0.5, 16384),
    "ciphertext": Target("InferenceHandler.load_request: SEAL Ciphertext loader and freshness checks", 1.0),
    "relin_keys": Target("InferenceHandler.open_session('seal'): SEAL RelinKeys loader", 2.0),
    "galois_keys": Target("InferenceHandler.open_session('seal'): SEAL GaloisKeys loader", 2.0),
    "tenseal_context": Target("InferenceHandler.open_session('tenseal-context'): screen, then TenSEAL's "
                              "context parser", 2.0),
}

SEAL_MAGIC = b"\x5e\xa1"
SEAL_HEADER = 16
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
PROTO_TYPES = ("LayoutRequest", "KeyChunk", "ResumeRequest", "CiphertextChunk", "BudgetRequest")


# -- byte formats the seeds and mutators need ------------------------------------------------
def _zstd_decompress(data: bytes) -> bytes | None:
    """The system's libzstd through ctypes (no Python binding is installed); None if unavailable."""
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    lib.ZSTD_decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    capacity = max(1 << 16, 8 * len(data))
    while capacity <= 1 << 28:
        out = ctypes.create_string_buffer(capacity)
        n = lib.ZSTD_decompress(out, capacity, data, len(data))
        if not lib.ZSTD_isError(n):
            return out.raw[:n]
        capacity *= 4
    return None


def seal_recompress(blob: bytes, mode: int) -> bytes | None:
    """A SEAL serialization re-packed with another compression mode (none or zlib); None if impossible."""
    if len(blob) < SEAL_HEADER or blob[:2] != SEAL_MAGIC or blob[5] != COMPR_ZSTD:
        return None
    raw = _zstd_decompress(blob[SEAL_HEADER:])
    if raw is None:
        return None
    payload = raw if mode == COMPR_NONE else zlib.compress(raw, 6)
    header = bytearray(blob[:SEAL_HEADER])
    header[5] = mode
    header[8:16] = struct.pack("<Q", SEAL_HEADER + len(payload))
    return bytes(header) + payload


def _fix_seal_size(data: bytes) -> bytes:
    """Make a SEAL header's size field match the bytes present (else SEAL stops at the size check)."""
    if len(data) >= SEAL_HEADER and data[:2] == SEAL_MAGIC:
        return data[:8] + struct.pack("<Q", len(data)) + data[16:]
    return data


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _put_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


Field = tuple[int, int, Any]  # field number, wire type, value (int or bytes)


def pb_fields(data: bytes) -> list[Field] | None:
    """Top-level fields of a protobuf message (a minimal wire-format reader); None if malformed."""
    fields: list[Field] = []
    at = 0
    try:
        while at < len(data):
            key, at = _varint(data, at)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, at = _varint(data, at)
                fields.append((number, wire, value))
            elif wire == 2:
                size, at = _varint(data, at)
                if at + size > len(data):
                    return None
                fields.append((number, wire, data[at : at + size]))
                at += size
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if at + width > len(data):
                    return None
                fields.append((number, wire, data[at : at + width]))
                at += width
            else:
                return None
    except ValueError:
        return None
    return fields


def pb_encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += _put_varint(number << 3 | wire)
        if wire == 0:
            out += _put_varint(int(value))
        elif wire == 2:
            out += _put_varint(len(value)) + value
        else:
            out += value
    return bytes(out)


def pb_replace(data: bytes, number: int, value: bytes | int, *, wire: int = 2) -> bytes:
    fields = [f for f in pb_fields(data) or [] if f[0] != number]
    return pb_encode([*fields, (number, wire, value)])


# -- mutators --------------------------------------------------------------------------------
def _mutate_seal(data: bytes, max_size: int, rng: random.Random) -> bytes:
    import atheris

    out: bytes = atheris.Mutate(data, max_size)
    if rng.random() < 0.75:
        out = _fix_seal_size(out)
    return out


def _mutate_context(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """Mutate one field of a TenSEAL context (possibly nested) and re-encode the lengths around it."""
    fields = pb_fields(data)
    if fields is None or not fields or rng.random() < 0.15:
        return _mutate_seal(data, max_size, rng)
    i = rng.randrange(len(fields))
    number, wire, value = fields[i]
    room = max(max_size - len(data) + (len(value) if isinstance(value, bytes) else 0), 1)
    if wire == 0:
        value = rng.choice([0, 1, 2, 3, rng.getrandbits(32), rng.getrandbits(64)])
    elif wire == 2 and number in (2, 3) and rng.random() < 0.8:  # public_context / private_context
        value = _mutate_context(value, room, rng)
    elif wire == 2:
        value = _mutate_seal(value, room, rng) if value else os.urandom(rng.randrange(1, 64))
    r = rng.random()
    if r < 0.05:
        del fields[i]
    elif r < 0.08:
        fields.insert(rng.randrange(len(fields) + 1), (number, wire, value))
    else:
        fields[i] = (number, wire, value)
    out = pb_encode(fields)
    return out if len(out) <= max_size else out[:max_size]


# -- the program and the seeds ---------------------------------------------------------------
def build_program() -> Any:
    """The digits logistic regression compiled for TenSEAL (latency mode), client keys still held.

    Built as ``HEServer.from_model`` builds it, from an untrained model (seeded): the weights change
    no decoder, and training would cost every campaign ~20 s of two cores.
    """
    import torch

    import secure_infer as si
    from secure_infer import datasets, zoo

    data = datasets.load_digits(seed=0)
    torch.manual_seed(0)
    model = zoo.build("logreg", data.input_shape, data.num_classes, seed=0)
    enc = si.wrap(model, backend="tenseal", sample_input=data.x_train[:1], mode="latency",
                  calibration=data.x_train)
    return enc.program


def make_seeds(program: Any) -> dict[str, dict[str, bytes]]:
    """Named seed inputs for every target, from the program's own client keys (before they are dropped)."""
    import numpy as np
    import tenseal as ts

    from protocols.common.wire import Frame, MessageType, encode
    from protocols.he.proto import inference_pb2 as pb
    from secure_infer.backends.tenseal import to_bytes

    keys = program.client.keys
    params = program.params
    relin, galois = keys.public_blobs["relin_keys"], keys.public_blobs.get("galois_keys", b"")
    x = np.linspace(-0.5, 0.5, params.slots)
    ct = to_bytes(keys.encrypt_for_wire(x))  # seeded, as a client sends it
    ct_full = to_bytes(keys.encrypt(x))
    seal_seed = program.server.evaluator
    ct_low = keys.encrypt(x)
    seal_seed.mod_switch_to_next_inplace(ct_low)  # a ciphertext one level down: "not fresh"

    def variants(prefix: str, blob: bytes) -> dict[str, bytes]:
        out = {f"{prefix}-zstd": blob}
        for name, mode in (("none", COMPR_NONE), ("zlib", COMPR_ZLIB)):
            other = seal_recompress(blob, mode)
            if other is not None:
                out[f"{prefix}-{name}"] = other
        return out

    seeds: dict[str, dict[str, bytes]] = {
        "ciphertext": {**variants("seeded", ct), **variants("full", ct_full),
                       "lower-level": to_bytes(ct_low), "truncated": ct[:300]},
        "relin_keys": {**variants("relin", relin), "galois-as-relin": galois[:4096]},
        "galois_keys": {**variants("galois", galois), "relin-as-galois": relin[:4096]},
    }

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    public = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                           save_relin_keys=True)
    private = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                            save_relin_keys=True)
    del ctx
    fields = pb_fields(public) or []
    inner = next((v for n, w, v in fields if n == 2 and w == 2), b"")
    with_galois = pb_replace(public, 2, pb_replace(inner, 5, galois)) if galois else public
    # a private context asking TenSEAL to generate keys (what screen_tenseal_context refuses unparsed), and
    # a public one under other parameters (refused before TenSEAL builds a context of that size)
    private_inner = next((v for n, w, v in pb_fields(private) or [] if n == 3 and w == 2), b"")
    flagged = pb_replace(private, 3, pb_replace(pb_replace(private_inner, 2, 1, wire=0), 3, 1, wire=0))
    other = ts.context(ts.SCHEME_TYPE.CKKS, 2 * params.poly_modulus_degree, coeff_mod_bit_sizes=[60, 40, 40, 60])
    foreign = other.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                              save_relin_keys=True)
    del other
    contexts = {"public": public, "public-galois": with_galois, "private": private, "private-keygen": flagged,
                "other-parameters": foreign, "symmetric": pb_replace(public, 4, 1, wire=0)}
    # the same contexts with every SEAL object inside uncompressed
    flat_inner = pb_encode([(n, w, (seal_recompress(v, COMPR_NONE) or v) if w == 2 else v)
                            for n, w, v in pb_fields(inner) or []])
    flat = pb_encode([(n, w, (seal_recompress(v, COMPR_NONE) or v) if n == 1 else flat_inner if n == 2 else v)
                      for n, w, v in fields])
    contexts["public-uncompressed"] = flat
    if galois:
        galois_flat = seal_recompress(galois, COMPR_NONE) or galois
        contexts["public-galois-uncompressed"] = pb_replace(flat, 2, pb_replace(flat_inner, 5, galois_flat))
    seeds["tenseal_context"] = contexts

    seeds["proto"] = {
        "layout": b"\x00" + pb.LayoutRequest(protocol=2, client_software="secure-infer").SerializeToString(),
        "keys-first": b"\x01" + pb.KeyChunk(format="seal", name="relin_keys", data=relin[:2048]).SerializeToString(),
        "keys-context": b"\x01" + pb.KeyChunk(format="tenseal-context", data=public[:2048]).SerializeToString(),
        "resume": b"\x02" + pb.ResumeRequest(session_id="ab" * 16).SerializeToString(),
        "chunk": b"\x03" + pb.CiphertextChunk(session_id="ab" * 16, request_id=7, index=0,
                                              data=ct[:2048]).SerializeToString(),
        "chunk-next": b"\x03" + pb.CiphertextChunk(index=1, data=ct[-512:], compute_s=0.25).SerializeToString(),
        "budget": b"\x04" + pb.BudgetRequest().SerializeToString(),
    }

    frames: dict[str, tuple[MessageType, dict[str, Any], tuple[bytes, ...]]] = {
        "hello": (MessageType.HELLO, {"protocol": 1, "client": "fuzz"}, ()),
        "keys-seal": (MessageType.KEYS, {"format": "seal", "names": ["relin_keys", "galois_keys"]},
                      (relin[:400], galois[:400])),
        "keys-context": (MessageType.KEYS, {"format": "tenseal-context"}, (public[:600],)),
        "resume": (MessageType.RESUME, {"session": "ab" * 16}, ()),
        "query": (MessageType.QUERY, {"id": 3}, (ct[:1024],)),
        "result": (MessageType.RESULT, {"id": 3, "compute_s": 0.5}, (ct[:256], ct[256:512])),
        "error": (MessageType.ERROR, {"code": "bad-keys", "message": "no", "fatal": True}, ()),
        "bye": (MessageType.BYE, {}, ()),
    }
    seeds["wire"] = {name: encode(Frame(t, m, b)) for name, (t, m, b) in frames.items()}
    return seeds


WIRE_DICT = ['"SINF"', '"\\x01"', '"{}"', '"blobs"', '"format"', '"names"', '"seal"', '"tenseal-context"',
             '"relin_keys"', '"galois_keys"', '"public_key"', '"session"', '"protocol"', '"id"', '"code"',
             '"message"', '"fatal"', '"true"', '"null"', '"1e999"', '"-0"', '"\\xef\\xbb\\xbf"']


# -- the targets -----------------------------------------------------------------------------
def server_view(msg: Any) -> int:
    """Branch on a parsed request the way the server's adapter does (formats, names, indices, protocol).

    upb parses in native code that libFuzzer cannot see; this function is instrumented, so inputs that
    parse to messages the server treats differently are new coverage and stay in the corpus.
    """
    kind = type(msg).__name__
    seen = 0
    for field, value in msg.ListFields():  # every set field, strings decoded as UTF-8
        seen += 1
        name = field.name
        if name == "format":
            seen += 2 if value == "seal" else 3 if value == "tenseal-context" else 4
        elif name == "name":
            seen += 5 if value in ("relin_keys", "galois_keys", "public_key") else 6
        elif name == "session_id":
            seen += 7 if len(value) == 32 else 8
        elif name == "index":
            seen += 9 if value == 0 else 10 if value == 1 else 11
        elif name == "protocol":
            seen += 12 if value == 2 else 13
        elif name == "data":
            seen += 14 if value[:2] == SEAL_MAGIC else 15
        elif name in ("request_id", "compute_s", "client_software"):
            seen += 16
    return seen if kind in PROTO_TYPES else -1


def _make_outcome_probes(buckets: int = 256) -> list[Callable[[], int]]:
    """One tiny function per bucket (generated, then instrumented like the decoders).

    SEAL and TenSEAL fail in native code, invisible to libFuzzer; the reason they give (the refusal's
    message) says how far parsing got. Hashing it to a bucket and calling that bucket's function turns
    each new reason into one new edge, so inputs that fail somewhere new stay in the corpus and get
    mutated further.
    """
    probes = []
    for i in range(buckets):
        namespace: dict[str, Any] = {}
        exec(compile(f"def outcome_{i}():\n    return {i}\n", f"<outcome {i}>", "exec"), namespace)
        probes.append(namespace[f"outcome_{i}"])
    return probes


OUTCOME_PROBES = _make_outcome_probes()


OUTCOMES: Counter[str] = Counter()  # this worker's refusal reasons, for the summary


def outcome(message: str) -> int:
    """Feed a refusal's reason (digits dropped: sizes and offsets are not new behaviour) to its probe."""
    reason = re.sub(r"\d+", "#", message)[:300]
    OUTCOMES[reason[:160]] += 1
    return OUTCOME_PROBES[zlib.crc32(reason.encode()) % len(OUTCOME_PROBES)]()


def make_targets(handler: Any, relin_seed: bytes, galois_seed: bytes) -> dict[str, Callable[[bytes], None]]:
    """One function per target: returns on success or a documented refusal, raises on a bug.

    ``relin_seed``, ``galois_seed``: the program's valid keys, sent after the fuzzed blob of the other
    kind (a layout that rotates refuses an upload without Galois keys before loading anything).
    """
    from google.protobuf.message import DecodeError

    from protocols.common.wire import decode
    from protocols.he.handler import Caller
    from protocols.he.proto import inference_pb2 as pb
    from secure_infer._errors import ProtocolError

    caller = Caller("fuzz", "anonymous")
    classes = [getattr(pb, name) for name in PROTO_TYPES]

    def wire(data: bytes) -> None:
        try:
            frame = decode(data, max_frame=64 << 20)
        except ProtocolError:
            return
        assert sum(len(b) for b in frame.blobs) <= len(data)

    def proto(data: bytes) -> None:
        if not data:
            return
        cls = classes[data[0] % len(classes)]
        try:
            msg = cls.FromString(data[1:])
        except DecodeError:
            return
        msg.ByteSize()  # the server counts every field's bytes against max_request_bytes
        server_view(msg)

    def ciphertext(data: bytes) -> None:
        try:
            handler.load_request([data])
        except ProtocolError as exc:
            outcome(str(exc))
            return
        outcome("ok")

    def session(blobs: list[tuple[str, bytes]], fmt: str = "seal") -> None:
        try:
            handler.open_session(caller, fmt, blobs)
        except ProtocolError as exc:
            outcome(str(exc))
            return
        outcome("ok")

    def relin_keys(data: bytes) -> None:
        session([("relin_keys", data), ("galois_keys", galois_seed)])  # relin first: it is the one that fails

    def galois_keys(data: bytes) -> None:
        session([("galois_keys", data), ("relin_keys", relin_seed)])  # galois first: it is the one that fails

    def tenseal_context(data: bytes) -> None:
        session([("context", data)], "tenseal-context")

    return {"wire": wire, "proto": proto, "ciphertext": ciphertext, "relin_keys": relin_keys,
            "galois_keys": galois_keys, "tenseal_context": tenseal_context}


MUTATORS: dict[str, Callable[[bytes, int, random.Random], bytes]] = {
    "ciphertext": _mutate_seal, "relin_keys": _mutate_seal, "galois_keys": _mutate_seal,
    "tenseal_context": _mutate_context,
}


# -- the zygote: build once, fork a libFuzzer worker per target ---------------------------------
def _instrumented_imports() -> None:
    """Import the decoders under atheris's coverage instrumentation (before anything else imports them)."""
    import atheris

    # google.protobuf (upb) and tenseal parse in native code, which no Python instrumentation sees
    with atheris.instrument_imports(include=["protocols", "json"]):
        import json as _json  # noqa: F401

        import protocols.common.wire  # noqa: F401
        import protocols.he.handler  # noqa: F401
        import protocols.he.proto.inference_pb2  # noqa: F401
    import secure_infer._errors
    from secure_infer.backends.tenseal import from_bytes

    # the module behind the backend's public SEAL helpers, reached through a public name
    seal_layer = sys.modules[from_bytes.__module__]

    atheris.instrument_func(server_view)
    for probe in OUTCOME_PROBES:
        atheris.instrument_func(probe)

    for module in (seal_layer, secure_infer._errors):
        for obj in list(vars(module).values()):
            funcs = [obj] if callable(obj) and hasattr(obj, "__code__") else []
            if isinstance(obj, type) and obj.__module__ == module.__name__:
                funcs = [f for f in vars(obj).values() if hasattr(f, "__code__")]
            for f in funcs:
                if getattr(f, "__module__", None) == module.__name__:
                    atheris.instrument_func(f)


def _worker(name: str, fn: Callable[[bytes], None], cfg: dict[str, Any], seconds: int, run: int) -> None:
    """In a forked child: fuzz ``fn`` with libFuzzer until ``seconds`` pass, a crash, or a hang."""
    import atheris

    OUTCOMES.clear()  # the zygote's own, from checking the seeds
    out = Path(cfg["out"])
    log = os.open(out / "logs" / f"{name}.{run}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    stats_path = out / "logs" / f"{name}.{run}.count"
    count = [0, time.monotonic()]

    def one(data: bytes) -> None:
        count[0] += 1
        now = time.monotonic()
        if now - count[1] > 0.5 or count[0] < 64:  # survives a native crash (libFuzzer's count may not print)
            count[1] = now
            stats_path.write_text(json.dumps({"executions": count[0], "outcomes": dict(OUTCOMES)}))
        fn(data)

    args = [sys.argv[0], str(out / "corpus" / name), str(out / "seeds" / name),
            f"-max_total_time={seconds}", f"-timeout={cfg['timeout']}", f"-rss_limit_mb={cfg['rss_limit_mb']}",
            f"-max_len={cfg['max_len'][name]}", "-print_final_stats=1", "-print_pcs=0", "-reload=0",
            f"-artifact_prefix={out / 'crashes' / name}/", f"-seed={cfg['seed'] + run}"]
    if name in ("wire", "proto"):
        args.append(f"-dict={out / 'seeds' / 'wire.dict'}")
    mutator = MUTATORS.get(name)
    kwargs: dict[str, Any] = {}
    if mutator is not None:
        def custom(data: bytes, max_size: int, seed: int) -> bytes:
            return mutator(data, max_size, random.Random(seed))
        kwargs["custom_mutator"] = custom
    atheris.Setup(args, one, **kwargs)
    atheris.Fuzz()
    os._exit(0)  # pragma: no cover - Fuzz exits


STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
FINAL = re.compile(r"^stat::number_of_executed_units: (\d+)", re.M)


def _parse_log(text: str) -> dict[str, Any]:
    runs, cov, ft, corp = 0, 0, 0, 0
    for line in text.splitlines():
        m = STATUS.match(line)
        if m:
            runs, cov, ft, corp = (int(g) for g in m.groups())
    final = FINAL.search(text)
    if final:
        runs = max(runs, int(final.group(1)))
    outcome = "ok"
    if "ERROR: libFuzzer: timeout" in text:
        outcome = "hang"
    elif "out-of-memory" in text:
        outcome = "oom"
    elif "Uncaught Python exception" in text or "deadly signal" in text or "ERROR: libFuzzer" in text:
        outcome = "crash"
    return {"executions": runs, "cov": cov, "ft": ft, "corpus": corp, "outcome": outcome}


def _reason(text: str) -> str:
    """One line saying what killed a worker."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Uncaught Python exception" in line and i + 1 < len(lines):
            return lines[i + 1].strip()[:300]
    for key in ("ERROR: libFuzzer:", "==ERROR", "terminate called", "Fatal Python error", "SUMMARY:"):
        for line in lines:
            if key in line:
                return line.strip()[:300]
    return "worker died without a libFuzzer report"


def _fuzz_target(name: str, fn: Callable[[bytes], None], cfg: dict[str, Any], seconds: int) -> dict[str, Any]:
    out = Path(cfg["out"])
    crash_dir = out / "crashes" / name
    crash_dir.mkdir(parents=True, exist_ok=True)
    (out / "corpus" / name).mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"description": TARGETS[name].description, "seconds": seconds, "executions": 0,
                              "cov": 0, "ft": 0, "corpus": 0, "crashes": 0, "hangs": 0, "restarts": 0,
                              "findings": []}
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    run = 0
    while True:
        left = seconds if run == 0 else int(seconds - (time.monotonic() - started))
        if left < 1 or run > cfg["max_restarts"]:
            break
        before = set(os.listdir(crash_dir))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _worker(name, fn, cfg, left, run)
            except BaseException:
                # atheris printed the exception and let it out of Fuzz(); C's exit() runs libFuzzer's exit
                # hook, which saves the input (os._exit would skip it, sys.exit would unwind into the zygote)
                ctypes.CDLL(None).exit(1)
            finally:
                os._exit(70)
        deadline = time.monotonic() + left + cfg["timeout"] + 120
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:  # libFuzzer's own timeout did not fire: a hang of the worker
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                killed, status = True, -1
                break
            time.sleep(0.1)
        log = out / "logs" / f"{name}.{run}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        parsed = _parse_log(text)
        count_file = out / "logs" / f"{name}.{run}.count"
        counted = json.loads(count_file.read_text()) if count_file.exists() else {}
        result["executions"] += max(parsed["executions"], counted.get("executions", 0))
        outcomes.update(counted.get("outcomes", {}))
        for key in ("cov", "ft", "corpus"):
            result[key] = max(result[key], parsed[key])
        written = re.findall(r"Test unit written to (\S+)", text)  # the same input again keeps its old file
        new = sorted({Path(w).name for w in written} | (set(os.listdir(crash_dir)) - before))
        new = [f for f in new if not f.endswith(".txt")]
        outcome = "hang" if killed else parsed["outcome"]
        exited = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 if not killed else False
        if outcome == "ok" and not exited:
            outcome = "crash"
        if outcome != "ok":
            if outcome == "hang":
                result["hangs"] += 1
            else:
                result["crashes"] += 1
            reason = "worker killed after its deadline" if killed else _reason(text)
            for f in new:
                (crash_dir / f"{f}.txt").write_text(text[-8000:])
            result["findings"].append({"kind": outcome, "reason": reason, "inputs": [str(crash_dir / f) for f in new],
                                       "log": str(log)})
            result["restarts"] += 1
        run += 1
        if outcome == "ok":
            break
    result["refusal_reasons"] = len(outcomes)
    result["accepted"] = outcomes.get("ok", 0)  # inputs the decoder took (may rank below the top refusals)
    result["top_refusals"] = dict(outcomes.most_common(12))
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["execs_per_s"] = round(result["executions"] / max(result["wall_s"], 1e-9), 1)
    return result


def _check_seeds(name: str, fn: Callable[[bytes], None], named: dict[str, bytes], out: Path,
                 timeout: int) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Run every seed once, in forked children: a seed that crashes natively must not take the zygote down.

    Returns one line per failing seed, and the failing seeds' labels with (kind, reason).
    """
    errors: list[str] = []
    bad: dict[str, tuple[str, str]] = {}
    labels = list(named)
    progress = out / "logs" / f"seeds.{name}.json"
    start = 0
    while start < len(labels):
        progress.write_text(json.dumps({"running": None, "done": False, "errors": {}}))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                failed: dict[str, str] = {}
                for label in labels[start:]:
                    progress.write_text(json.dumps({"running": label, "done": False, "errors": failed}))
                    signal.alarm(timeout)  # SIGALRM's default action ends the child: the seed hangs
                    try:
                        fn(named[label])
                    except Exception as exc:
                        failed[label] = f"{type(exc).__name__}: {exc}"[:500]
                    signal.alarm(0)
                progress.write_text(json.dumps({"running": None, "done": True, "errors": failed}))
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60 + timeout * (len(labels) - start)
        status, killed = 0, False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                killed = True
                break
            time.sleep(0.05)
        state = json.loads(progress.read_text())
        for label, reason in state["errors"].items():
            bad[label] = ("crash", reason)
            errors.append(f"{name}/{label}: {reason}")
        if state["done"]:
            break
        running = state["running"] or labels[start]
        if killed or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM):
            killed, reason = True, f"hung (no answer within {timeout} s)"
        elif os.WIFSIGNALED(status):
            reason = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            reason = f"exited {os.WEXITSTATUS(status)}"
        bad[running] = ("hang" if killed else "crash", reason)
        errors.append(f"{name}/{running}: {reason}")
        start = labels.index(running) + 1
    return errors, bad


def _zygote(config_path: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    t0 = time.monotonic()
    _instrumented_imports()
    from protocols.he.handler import InferenceHandler

    program = build_program()
    seeds = make_seeds(program)
    blobs = dict(program.client.keys.public_blobs)
    program.forget_client_keys()
    handler = InferenceHandler(program, name="fuzz", max_sessions=4)
    targets = make_targets(handler, blobs["relin_keys"], blobs.get("galois_keys", b""))
    out = Path(cfg["out"])
    cfg["max_len"] = {}
    seed_errors: list[str] = []
    seed_findings: dict[str, list[dict[str, Any]]] = {}
    for name in cfg["slices"]:
        named = seeds[name]
        errors, bad = _check_seeds(name, targets[name], named, out, cfg["timeout"])
        seed_errors += errors
        folder = out / "seeds" / name
        folder.mkdir(parents=True, exist_ok=True)
        for label, blob in named.items():
            if label in bad:  # a seed that fails is a finding, and no input to start from
                path = out / "crashes" / name / f"seed-{label}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)
                seed_findings.setdefault(name, []).append({"kind": bad[label][0], "reason": bad[label][1],
                                                           "inputs": [str(path)], "log": ""})
            else:
                (folder / label).write_bytes(blob)
        cfg["max_len"][name] = TARGETS[name].max_len or max(len(b) for b in named.values()) + 4096
    (out / "seeds" / "wire.dict").write_text("\n".join(WIRE_DICT) + "\n")
    import gc

    gc.collect()
    setup_s = time.monotonic() - t0
    print(f"zygote ready in {setup_s:.1f} s: N={program.params.poly_modulus_degree} "
          f"primes={list(program.params.coeff_mod_bit_sizes)} rotation_steps={list(program.published.rotation_steps)}",
          flush=True)
    results: dict[str, Any] = {}
    for name, seconds in cfg["slices"].items():
        results[name] = r = _fuzz_target(name, targets[name], cfg, seconds)
        for finding in seed_findings.get(name, []):
            r["findings"].insert(0, finding)
            r["hangs" if finding["kind"] == "hang" else "crashes"] += 1
        print(f"{name:16s} {r['executions']:9d} execs {r['execs_per_s']:9.1f}/s  cov {r['cov']:5d}  ft {r['ft']:6d}  "
              f"corpus {r['corpus']:4d}  crashes {r['crashes']}  hangs {r['hangs']}", flush=True)
    summary = {"setup_s": round(setup_s, 1), "seed_errors": seed_errors, "targets": results}
    (out / "zygote.json").write_text(json.dumps(summary, indent=1))


# -- the campaign ----------------------------------------------------------------------------
def _slices(seconds: float, names: list[str]) -> dict[str, int]:
    weights = {n: TARGETS[n].weight for n in names}
    total = sum(weights.values())
    slices = {n: max(1, int(seconds * w / total)) for n, w in weights.items()}
    spare = int(seconds) - sum(slices.values())
    for n in sorted(names, key=lambda n: -weights[n])[: max(spare, 0)]:
        slices[n] += 1
    return slices


def run_campaign(seconds: float, out: str | Path, *, targets: list[str] | None = None, timeout: int = 10,
                 rss_limit_mb: int = 3072, seed: int = 1, max_restarts: int = 50, echo: bool = True) -> dict[str, Any]:
    """Fuzz every target (or ``targets``) for ``seconds`` in all, split by weight; returns the summary.

    Runs in a child process (the zygote), so it is safe to call from a process with servers and threads
    of its own. The summary is also written to ``OUT/summary.json``: per target executions, coverage
    (libFuzzer's ``cov``: instrumented Python edges, and ``ft``: features), corpus size, crashes,
    hangs and each finding's reason and saved input; totals over all targets.
    """
    names = list(targets or TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        raise ValueError(f"unknown fuzz targets {unknown}; choose from {sorted(TARGETS)}")
    out = Path(out).resolve()
    for sub in ("logs", "seeds", "corpus", "crashes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cfg = {"out": str(out), "slices": _slices(seconds, names), "timeout": timeout, "rss_limit_mb": rss_limit_mb,
           "seed": seed, "max_restarts": max_restarts}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("OMP_NUM_THREADS", "1")
    zygote_log = out / "logs" / "zygote.log"  # atheris's "Instrumenting ..." lines and any traceback
    with open(zygote_log, "w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--zygote", str(out / "config.json")],
                              cwd=ROOT, env=env, stdout=None if echo else subprocess.DEVNULL, stderr=log)
    zygote_file = out / "zygote.json"
    if proc.returncode != 0 or not zygote_file.exists():
        raise RuntimeError(f"the fuzzing zygote failed (exit {proc.returncode}): "
                           f"{zygote_log.read_text(errors='replace')[-2000:]}")
    zygote = json.loads(zygote_file.read_text())
    results = zygote["targets"]
    summary = {
        "command": " ".join(sys.argv) if sys.argv else "",
        "seconds_requested": seconds,
        "fuzz_seconds": sum(r["wall_s"] for r in results.values()),
        "wall_s": round(time.monotonic() - started, 1),
        "setup_s": zygote["setup_s"],
        "seed_errors": zygote["seed_errors"],
        "executions": sum(r["executions"] for r in results.values()),
        "crashes": sum(r["crashes"] for r in results.values()),
        "hangs": sum(r["hangs"] for r in results.values()),
        "targets": results,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="fuzzing time over all targets (default 600)")
    parser.add_argument("--out", default=None, help="corpus, crashes, logs and summary.json (default: a temp dir)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=3072)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--zygote", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zygote:
        _zygote(args.zygote)
        return
    import tempfile

    out = args.out or tempfile.mkdtemp(prefix="si-fuzz-")
    summary = run_campaign(args.seconds, out, targets=[t for t in args.targets.split(",") if t],
                           timeout=args.timeout, rss_limit_mb=args.rss_limit_mb, seed=args.seed)
    print(f"total: {summary['executions']} executions in {summary['fuzz_seconds']:.0f} s of fuzzing "
          f"({summary['wall_s']:.0f} s wall), {summary['crashes']} crashes, {summary['hangs']} hangs; "
          f"seed errors: {len(summary['seed_errors'])}")
    for name, r in summary["targets"].items():
        for finding in r["findings"]:
            print(f"  {name}: {finding['kind']}: {finding['reason']} -> {', '.join(finding['inputs']) or finding['log']}")
    print(f"summary: {Path(out) / 'summary.json'}")


if __name__ == "__main__":
    main()
