"""Score a whole data set under encryption, block by block, on local workers or a Ray cluster.

:func:`score` cuts the inputs into slot-sized blocks (CKKS batch mode: one
input per slot), has an :class:`~secure_infer.engine.Engine` evaluate them,
and writes each finished block to an output folder with a manifest, so an
interrupted job resumes from the blocks it finished instead of starting over.
The client side (keys, encryption, decryption) stays in the calling process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer._errors import ParameterError
from secure_infer._wrap import EncryptedModel
from secure_infer.engine import Engine, split

MANIFEST = "manifest.json"


def fingerprint(enc: EncryptedModel, x: torch.Tensor, block: int) -> str:
    """Names one job: the inputs, the model's plaintext outputs on a few of them, and the block size."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes())
    with torch.no_grad():
        probe = enc.reference.run_core(x[: min(16, len(x))])
    digest.update(np.round(probe.double().numpy(), 6).tobytes())
    digest.update(f"{enc.backend}:{block}:{tuple(x.shape)}".encode())
    return digest.hexdigest()


class BlockStore:
    """An output folder of finished blocks (``block-00000.npy`` ...) and a manifest naming the job.

    Each block is written to a temporary name and renamed, then the manifest
    is rewritten the same way, so a job killed at any point leaves only whole
    blocks that the manifest lists. ``folder=None`` keeps the blocks in memory
    (a job that need not survive its process): one code path either way.
    """

    def __init__(self, folder: str | Path | None, job: str, blocks: list[range], *, fresh: bool = False) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.job = job
        self.blocks = blocks
        self.done: dict[int, str] = {}
        self._memory: dict[int, np.ndarray] = {}  # folder None: blocks kept here, nothing written
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / MANIFEST
        if path.exists() and not fresh:
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ParameterError(f"{path} is not a readable manifest ({exc}); remove it or use another folder") \
                    from None
            if manifest.get("job") != job:
                raise ParameterError(f"{self.folder} holds blocks of another job (other inputs, model or block size); "
                                     "use another output folder, or --fresh to start this job over there")
            self.done = {int(k): v for k, v in manifest.get("done", {}).items()
                         if (self.folder / v).is_file()}
        self._write_manifest()

    def pending(self) -> list[tuple[int, range]]:
        return [(i, rows) for i, rows in enumerate(self.blocks) if i not in self.done]

    def save(self, index: int, outputs: np.ndarray, **info: Any) -> None:
        name = f"block-{index:05d}.npy"
        if self.folder is None:
            self._memory[index] = outputs
            self.done[index] = name
            return
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, outputs)
        os.replace(tmp, self.folder / name)
        self.done[index] = name
        self._write_manifest()

    def load(self) -> np.ndarray:
        missing = [i for i in range(len(self.blocks)) if i not in self.done]
        if missing:
            raise ParameterError(f"blocks {missing[:5]} are not finished yet")
        if self.folder is None:
            return np.concatenate([self._memory[i] for i in range(len(self.blocks))])
        return np.concatenate([np.load(self.folder / self.done[i]) for i in range(len(self.blocks))])

    def _write_manifest(self) -> None:
        if self.folder is None:
            return
        manifest = {"job": self.job, "blocks": [[r.start, r.stop] for r in self.blocks],
                    "done": {str(k): v for k, v in sorted(self.done.items())}}
        tmp = self.folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.folder / MANIFEST)


@dataclass
class ScoreResult:
    """What :func:`score` computed and what it cost."""

    outputs: torch.Tensor
    seconds: float
    inputs: int
    blocks: int
    resumed: int  # blocks found finished in the output folder
    per_node: dict[str, int] = field(default_factory=dict)  # blocks evaluated per node (this run)
    retried: int = 0  # blocks that ran more than once (a lost worker)
    encrypt_s: float = 0.0
    decrypt_s: float = 0.0
    bytes_in: int = 0  # HE: input ciphertexts sent to the workers; MPC: bytes all parties sent (shares)
    bytes_out: int = 0  # HE: output ciphertexts sent back; MPC: 0
    traffic: str = "ciphertext"  # what bytes_in counts: "ciphertext" (HE) or "share" (MPC)

    @property
    def throughput(self) -> float:
        """Inputs per second over the blocks evaluated in this run."""
        done = self.inputs
        return done / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "blocks": self.blocks, "resumed_blocks": self.resumed,
                "seconds": round(self.seconds, 3), "inputs_per_s": round(self.throughput, 1),
                "blocks_per_node": dict(self.per_node), "retried_blocks": self.retried,
                "encrypt_s": round(self.encrypt_s, 3), "decrypt_s": round(self.decrypt_s, 3),
                **self._traffic()}

    def _traffic(self) -> dict[str, int]:
        if self.traffic == "share":
            return {"party_bytes_sent": self.bytes_in}
        return {"ciphertext_bytes_in": self.bytes_in, "ciphertext_bytes_out": self.bytes_out}


def score(enc: EncryptedModel, x: torch.Tensor, engine: Engine, *, out: str | Path | None = None,
          fresh: bool = False, on_block: Callable[[int, int], None] | None = None) -> ScoreResult:
    """Evaluate every input of ``x`` encrypted on ``engine``; outputs in input order (the model's core output).

    ``enc`` must be a TenSEAL model wrapped with ``mode="batch"``: blocks are
    its slot count. With ``out``, finished blocks go to that folder and a
    second call with the same model and inputs evaluates only the missing
    ones (``fresh=True`` discards them). ``on_block(inputs, blocks)`` is
    called as each block finishes (progress bars).
    """
    program = enc.program
    stream = getattr(program, "stream", None)
    if stream is None or getattr(program, "mode", None) != "batch":
        raise ParameterError("score() runs TenSEAL batch-mode models: wrap with backend='tenseal', mode='batch'")
    if len(x) == 0:
        raise ParameterError("x holds no inputs")
    slots = int(program.params.slots)  # type: ignore[attr-defined]
    blocks = split(len(x), slots)
    job = fingerprint(enc, x, slots)
    store = BlockStore(out, job, blocks, fresh=fresh)
    pending = store.pending()
    result = ScoreResult(torch.empty(0), 0.0, 0, len(blocks), len(blocks) - len(pending))
    nodes: Counter[str] = Counter()
    started = time.perf_counter()
    for block in stream(x, engine, blocks=pending):
        store.save(block.index, block.outputs)
        nodes[block.node] += 1
        result.inputs += len(block.rows)
        result.retried += block.attempts > 1
        result.encrypt_s += block.encrypt_s
        result.decrypt_s += block.decrypt_s
        result.bytes_in += block.bytes_in
        result.bytes_out += block.bytes_out
        if on_block is not None:
            on_block(len(block.rows), 1)
    result.seconds = time.perf_counter() - started
    result.per_node = dict(nodes)
    y = store.load()
    core = enc.graph.output
    outputs = torch.from_numpy(y).float().reshape(len(y), *core.feature_shape)
    result.outputs = outputs.movedim(0, core.batch_dim) if core.batch_dim else outputs
    return result
