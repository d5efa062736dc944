"""Batch-mode evaluation spread over workers: the client encrypts and decrypts, workers evaluate blocks.

A block is up to ``slots`` inputs, one ciphertext per input feature. What a
worker receives is :class:`BlockEvaluator` (parameters, the compiled
program, the evaluation keys' seeded bytes) once, then each block's
ciphertexts: SEAL's compressed, seeded bytes for workers on other hosts, the
raw coefficients (:func:`._raw.to_bytes`, a copy instead of about 3 ms of
compression per ciphertext) for workers on this one. The secret key and the
plaintext inputs stay in the client process (:func:`stream`).

:class:`BlockPipeline` is the other split, for one machine: each worker
runs whole blocks (encrypt, evaluate, decrypt) under a key pair it makes
itself, so encryption, which SEAL runs under Python's lock, uses every core
too. The caller's plaintext goes to its own processes; no key crosses a
process boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_infer.backends.tenseal import _raw
from secure_infer.backends.tenseal._client import Layout, LayoutClient, batch_columns
from secure_infer.backends.tenseal._compile import Compiled
from secure_infer.backends.tenseal._execute import BatchPlan
from secure_infer.backends.tenseal._params import CKKSParameters
from secure_infer.backends.tenseal._seal import ServerContext, from_bytes, serialized_size, to_bytes
from secure_infer.engine import Done, Engine


@dataclass(frozen=True)
class BlockEvaluator:
    """A worker's whole state, from public material only (see :mod:`secure_infer.engine`)."""

    params: CKKSParameters
    compiled: Compiled
    weight_bits: int
    key_blobs: dict[str, bytes]
    rotation_steps: tuple[int, ...]
    raw: bool = False  # ciphertexts travel as raw coefficients (workers on this host)

    def build(self) -> BatchPlan:
        server = ServerContext(self.params, None)
        server.load_keys(self.key_blobs, self.rotation_steps)
        return BatchPlan(self.compiled, server, self.params.slots, self.weight_bits)

    def run(self, plan: BatchPlan, payload: list[bytes]) -> list[bytes]:
        assert plan.server is not None
        context = plan.server.context
        outputs = plan.run([self.load(context, blob) for blob in payload])
        return [self.dump(ct) for ct in outputs]

    def load(self, context: Any, blob: bytes) -> Any:
        return _raw.from_bytes(context, blob) if self.raw else from_bytes("Ciphertext", context, blob)

    def dump(self, ct: Any) -> bytes:
        return _raw.to_bytes(ct) if self.raw else to_bytes(ct)


@dataclass(frozen=True)
class PipelineResult:
    """One block run whole on a worker: its decrypted outputs and the seconds of each phase there."""

    outputs: np.ndarray
    encrypt_s: float
    evaluate_s: float
    decrypt_s: float
    ciphertexts_in: int
    ciphertexts_out: int
    output_bytes: int  # one output ciphertext, serialized


@dataclass(frozen=True)
class BlockPipeline:
    """A worker that encrypts, evaluates and decrypts whole blocks (see the module's docstring).

    Each worker makes its own key pair when it starts (``build``), so what it
    receives is the published layout, the compiled program and plaintext
    rows: for engines on this machine only (:attr:`Engine.same_host`), as the
    rows are the caller's inputs in the clear.
    """

    params: CKKSParameters
    compiled: Compiled
    weight_bits: int
    layout: Layout

    def build(self) -> tuple[LayoutClient, BatchPlan]:
        client = LayoutClient(self.layout)  # a fresh key pair, made here and kept here
        server = ServerContext(self.params, None)
        server.load_keys(client.keys.public_blobs, client.keys.rotation_steps)
        return client, BatchPlan(self.compiled, server, self.params.slots, self.weight_bits)

    def run(self, state: tuple[LayoutClient, BatchPlan], rows: np.ndarray) -> PipelineResult:
        client, plan = state
        if len(rows) > self.params.slots:
            raise ValueError(f"a block holds at most {self.params.slots} inputs (the slots), got {len(rows)}")
        t0 = time.perf_counter()
        ((n, cts),) = list(client.requests(rows))
        t1 = time.perf_counter()
        outs = plan.run(cts)
        t2 = time.perf_counter()
        y = client.decrypt(outs, n)
        t3 = time.perf_counter()
        return PipelineResult(y, t1 - t0, t2 - t1, t3 - t2, len(cts), len(outs), serialized_size(outs[0]))


@dataclass
class BlockResult:
    """One block's decrypted outputs and what it cost."""

    index: int
    rows: range
    outputs: np.ndarray
    encrypt_s: float
    decrypt_s: float
    bytes_in: int
    bytes_out: int
    node: str
    worker: int
    attempts: int
    sample: Any  # one output ciphertext, for its size


def stream(client: LayoutClient, spec: BlockEvaluator, flat: np.ndarray, engine: Engine, *,
           blocks: list[tuple[int, range]], context: Any,
           on_encrypted: Callable[[int], None] | None = None) -> Iterator[BlockResult]:
    """Encrypt ``blocks`` of ``flat`` here, evaluate them on ``engine``, decrypt here; in completion order.

    ``blocks`` are ``(index, rows)`` pairs (rows at most ``slots`` long).
    Encryption is pulled by the engine as workers free up, so at most a few
    blocks of ciphertexts are held at once.
    """
    encrypt_s: dict[int, float] = {}
    sizes: dict[int, int] = {}
    rows_of = dict(blocks)

    def encrypted() -> Iterator[tuple[int, list[bytes]]]:
        for index, rows in blocks:
            started = time.perf_counter()
            columns = batch_columns(flat[rows.start : rows.stop])
            if spec.raw:
                payload = [_raw.to_bytes(client.keys.encrypt(column)) for column in columns]
            else:
                payload = [to_bytes(client.keys.encrypt_for_wire(column)) for column in columns]
            encrypt_s[index] = time.perf_counter() - started
            sizes[index] = sum(map(len, payload))
            if on_encrypted is not None:
                on_encrypted(index)
            yield index, payload

    done: Done
    for done in engine.run(spec, encrypted()):
        started = time.perf_counter()
        rows = rows_of[done.index]
        outs = [spec.load(context, blob) for blob in done.result]
        y = client.decrypt(outs, len(rows))
        yield BlockResult(done.index, rows, y, encrypt_s.pop(done.index), time.perf_counter() - started,
                          sizes.pop(done.index), sum(map(len, done.result)), done.node, done.worker, done.attempts, outs[0])
