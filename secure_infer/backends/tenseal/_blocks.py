"""Batch-mode evaluation spread over workers: the client encrypts and decrypts, workers evaluate blocks.

A block is up to ``slots`` inputs, one ciphertext per input feature. What a
worker receives is :class:`BlockEvaluator` (parameters, the compiled
program, the evaluation keys' seeded bytes) once, then each block's
ciphertexts: SEAL's compressed, seeded bytes for workers on other hosts, the
raw coefficients (:func:`._raw.to_bytes`, a copy instead of about 3 ms of
compression per ciphertext) for workers on this one. The secret key and the
plaintext inputs stay in the client process (:func:`stream`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_infer.backends.tenseal import _raw
from secure_infer.backends.tenseal._client import LayoutClient
from secure_infer.backends.tenseal._compile import Compiled
from secure_infer.backends.tenseal._execute import BatchPlan
from secure_infer.backends.tenseal._params import CKKSParameters
from secure_infer.backends.tenseal._seal import ServerContext, from_bytes, to_bytes
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
    import time

    encrypt_s: dict[int, float] = {}
    sizes: dict[int, int] = {}
    rows_of = dict(blocks)

    def encrypted() -> Iterator[tuple[int, list[bytes]]]:
        for index, rows in blocks:
            started = time.perf_counter()
            block = flat[rows.start : rows.stop]
            if spec.raw:
                payload = [_raw.to_bytes(client.keys.encrypt(block[:, j])) for j in range(block.shape[1])]
            else:
                payload = [to_bytes(client.keys.encrypt_for_wire(block[:, j])) for j in range(block.shape[1])]
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
