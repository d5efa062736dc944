"""Evaluate compiled stages on ciphertexts, in the two packings.

``latency``: one input per ciphertext. An affine stage with ``m`` outputs
(padded to a power of two) computes ``sum_k P_k * rot(x, k)`` over ``K``
generalized diagonals ``P_k[s] = M[s mod m, in(s + k)]``, where ``in`` maps a
slot to the input value it holds; baby-step/giant-step rotations (keys for
steps 1 and g only) form the sum, and rotate-and-add folds over strides
``m, 2m, ...`` add up the partial sums. The output comes out repeated with
period ``m``, which is the next stage's input layout ("periodic": ``in(s) = s
mod p``, ``K = m`` diagonals, folds up to ``p``).

The client's own input can be packed more cleverly ("blocked", see
:func:`layout_index`): a span of the slots is cut into blocks of ``m``, block
``t`` repeating the ``t``-th run of ``w = p * m / span`` input values. The
copies then multiply different columns (in the periodic layout every copy of
the input multiplies the same ones), so the first stage needs only ``w``
diagonals instead of ``m``, at the price of folding over the whole span. The
plan picks the span with the fewest rotations, multiplications and new
rotation keys (on the reference network: 18 rotations and 64 products
instead of 32 and 256).

``batch``: one ciphertext per input feature, one input per slot (CryptoNets'
SIMD packing): affine stages are scalar multiply-adds, no rotations at all.

Every plaintext factor is encoded at a scale equal to the prime the following
rescale removes, so ciphertext scales stay put across affine stages. In the
square-chain schedule (``weight_bits`` > 0, see ``choose_square_chain``) an
affine stage's factors are encoded at ``sqrt(prime / scale)`` instead and the
square after it does the one rescale for both. A vector wider than one
ciphertext is split into chunks of ``slots`` values in either mode.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_infer.backends.tenseal._compile import AffineStage, Compiled, PolyStage
from secure_infer.backends.tenseal._params import RING_DEGREES
from secure_infer.backends.tenseal._seal import ServerContext


def pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _seal() -> Any:
    import tenseal.sealapi as seal

    return seal


class _Ops:
    """Level-aware ciphertext arithmetic shared by both packings."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.ev = server.evaluator

    def new(self) -> Any:
        return _seal().Ciphertext()

    def mul_scalar_pending(self, ct: Any, value: float) -> Any:
        """ct * value, not yet rescaled (scale grows by the next prime)."""
        out = self.new()
        plain = self.server.encode(float(value), ct.parms_id(), self.server.prime_at(ct.parms_id()))
        self.ev.multiply_plain(ct, plain, out)
        return out

    def add_scalar(self, ct: Any, value: float) -> None:
        if value != 0.0:
            self.ev.add_plain_inplace(ct, self.server.encode(float(value), ct.parms_id(), ct.scale))

    def rescale(self, ct: Any) -> None:
        self.ev.rescale_to_next_inplace(ct)

    def mod_to(self, ct: Any, like: Any) -> Any:
        out = self.new()
        self.ev.mod_switch_to(ct, like.parms_id(), out)
        return out

    def dot(self, pairs: Any) -> Any | None:
        """Sum of ciphertext x plaintext products (not rescaled); None for an empty sum."""
        acc = None
        for ct, plain in pairs:
            term = self.new()
            self.ev.multiply_plain(ct, plain, term)
            if acc is None:
                acc = term
            else:
                self.ev.add_inplace(acc, term)
        return acc

    def mul(self, a: Any, b: Any) -> Any:
        out = self.new()
        self.ev.multiply(a, b, out)
        self.ev.relinearize_inplace(out, self.server.public.relin_keys)
        return out

    def polynomial(self, ct: Any, stage: PolyStage, last: bool) -> Any:
        c = stage.coefficients
        if stage.degree == 1:
            out = self.mul_scalar_pending(ct, c[1])
            self.rescale(out)
            self.add_scalar(out, c[0])
            return out
        if stage.degree == 2 and c[2] == 1.0:
            square = self.new()
            self.ev.square(ct, square)
            self.ev.relinearize_inplace(square, self.server.public.relin_keys)
            if c[1] != 0.0:
                linear = self.new()
                plain = self.server.encode(float(c[1]), ct.parms_id(), ct.scale)
                self.ev.multiply_plain(ct, plain, linear)  # scale = ct.scale**2, like the square
                self.ev.add_inplace(square, linear)
            self.rescale(square)
            self.add_scalar(square, c[0])
            return square
        # Horner: ((c_d x + c_{d-1}) x + ...) x + c_0, one level per degree
        acc = self.mul_scalar_pending(ct, c[-1])
        self.rescale(acc)
        self.add_scalar(acc, c[-2])
        for coeff in c[-3::-1]:
            acc = self.mul(acc, self.mod_to(ct, acc))
            self.rescale(acc)
            self.add_scalar(acc, coeff)
        return acc


@dataclass
class _LatencyAffine:
    stage: AffineStage
    m_pad: int
    giant: int
    blocks: list[list[tuple[int, Any]]]  # per giant step a: [(baby b, plaintext)]
    fold_steps: list[int]
    bias_cache: dict[float, Any] = field(default_factory=dict)


ROTATION_VS_MULTIPLY = 12.0  # a key switch costs about this many plaintext multiply-adds (N=8192, measured)


def _giant(diagonals: int) -> int:
    return min(pow2(math.isqrt(diagonals - 1) + 1), diagonals) if diagonals > 1 else 1


def _steps(diagonals: int, m_pad: int, fold_to: int) -> tuple[int, set[int]]:
    """Key switches of one diagonal product (baby steps, giant steps, folds), and the rotation keys it uses."""
    giant = _giant(diagonals)
    giants = -(-diagonals // giant)
    folds = {m_pad << j for j in range(max(0, int(math.log2(fold_to // m_pad))))}
    keys = folds | ({1} if giant > 1 else set()) | ({giant} if giants > 1 else set())
    return (giant - 1) + (giants - 1) + len(folds), keys


def weight_scale(server: ServerContext, parms_id: Any, input_scale: float, weight_bits: int, last: bool) -> float:
    """The scale an affine stage's plaintext factors are encoded at.

    One prime per multiplication (``weight_bits`` 0): the prime the following
    rescale removes. Square chain: ``sqrt(prime / input_scale)``, so that the
    square's single rescale restores ``input_scale``; the last stage, never
    rescaled, at ``2^weight_bits``.
    """
    prime = server.prime_at(parms_id)
    if not weight_bits:
        return prime
    return 2.0 ** weight_bits if last else math.sqrt(prime / input_scale)


def layout_index(period: int, block: int, width: int, slots: int) -> np.ndarray:
    """The input value each slot holds in the blocked packing.

    Within each span of ``period * block / width`` slots, block ``t`` (of
    ``block`` slots) repeats input values ``t*width .. t*width+width-1``; the
    span repeats across the ciphertext. ``block = width = period`` is the
    plain periodic packing (the padded input repeated).
    """
    span = period * block // width
    if width < 1 or block % width or span % block or slots % span:
        raise ValueError(f"block {block}, width {width} do not tile {slots} slots for period {period}")
    q = np.arange(slots)
    return q % width + width * ((q % span) // block)


class LatencyPlan:
    """Diagonals encoded once per program, at the level each stage runs.

    A vector wider than one ciphertext (the input, or any layer's output) is
    split into chunks of ``slots`` values, one ciphertext each: an affine stage
    sums one diagonal product per input chunk for each output chunk, and
    polynomials act on every chunk.
    """

    def __init__(self, compiled: Compiled, server: ServerContext | None, slots: int, weight_bits: int = 0,
                 data_primes: int = 0) -> None:
        self.compiled = compiled
        self.slots = slots
        self.weight_bits = weight_bits  # > 0: the square-chain schedule, as in BatchPlan
        self.data_primes = data_primes  # for the cost model: a key switch gets cheaper as primes are used up
        self.chunks = self._chunks(compiled.input_size)
        self.input_period = min(pow2(compiled.input_size), slots)
        self.input_block = self.input_width = 0  # 0: the periodic packing; else see layout_index
        self.server = server
        # per affine stage: per output chunk, per input chunk, one diagonal product
        self.affine: dict[int, list[list[_LatencyAffine]]] = {}
        self.rotation_steps: set[int] = set()
        affine = [i for i, stage in enumerate(compiled.stages) if isinstance(stage, AffineStage)]
        levels = self.levels()
        chunks, period = self.chunks, self.input_period
        for n, i in enumerate(affine):  # later stages first: the first one's packing weighs their keys
            stage = compiled.stages[i]
            out_chunks = self._chunks(stage.out_size)
            out_period = min(pow2(stage.out_size), slots)
            if n and n == len(affine) - 1 and chunks == out_chunks == 1:
                self.affine[i] = self._plan_last(stage, period, levels[i])
                out_period = self.affine[i][0][0].m_pad
            elif n:
                self.affine[i] = self._plan_chunked(stage, chunks, period, out_chunks)
            chunks, period = out_chunks, out_period
        self.output_chunks, self.output_period = chunks, period
        if affine:
            self._plan_first(affine[0])

    def _chunks(self, size: int) -> int:
        return 1 if pow2(size) <= self.slots else -(-size // self.slots)

    def levels(self) -> dict[int, int]:
        """Rescales done before each stage runs (the level its plaintexts are encoded at)."""
        from secure_infer.backends.tenseal._compile import stage_depth

        out, level, last = {}, 0, len(self.compiled.stages) - 1
        for i, stage in enumerate(self.compiled.stages):
            out[i] = level
            if isinstance(stage, AffineStage):
                level += 0 if self.weight_bits else 1  # a square chain shares the next square's rescale
            else:
                level += stage_depth(stage, i == last)
        return out

    def _costs(self, level: int) -> tuple[float, float]:
        """(key switch, plaintext multiply-add) at ``level``, in top-level multiply-adds."""
        primes = self.data_primes
        if not primes:
            return ROTATION_VS_MULTIPLY, 1.0
        left = max(primes - level, 1)
        return ROTATION_VS_MULTIPLY * left * (left + 1) / (primes * (primes + 1)), left / primes

    def _cost(self, diagonals: int, m_pad: int, fold_to: int, level: int) -> float:
        """Time of one diagonal product at ``level``, plus one top-level rotation per new rotation key."""
        rotation, multiply = self._costs(level)
        rotations, keys = _steps(diagonals, m_pad, fold_to)
        return rotations * rotation + diagonals * multiply + len(keys - self.rotation_steps) * ROTATION_VS_MULTIPLY

    def _plan_last(self, stage: AffineStage, period: int, level: int) -> list[list[_LatencyAffine]]:
        """The last stage's output layout is free: padding it to a longer period needs more
        diagonals but fewer folds and rotation keys; pick the cheapest."""
        m_pad = pow2(stage.out_size)
        candidates = [m_pad << j for j in range(int(math.log2(max(period, m_pad) // m_pad)) + 1)]
        m = min(candidates, key=lambda m: self._cost(min(m, period), m, max(period, m), level))
        return [[self._plan_affine(stage, np.arange(self.slots) % period, min(m, period), max(period, m), m)]]

    def _plan_chunked(self, stage: AffineStage, chunks: int, period: int, out_chunks: int) -> list[list[_LatencyAffine]]:
        """Diagonal products for every (output chunk, input chunk) pair of ``stage``."""
        slots = self.slots
        m_pad = slots if out_chunks > 1 else pow2(stage.out_size)
        width = slots if chunks > 1 else stage.in_size
        plans = []
        for r in range(out_chunks):
            rows = slice(r * slots, (r + 1) * slots) if out_chunks > 1 else slice(None)
            part = AffineStage(stage.matrix[rows], stage.bias[rows], stage.paths)
            plans.append([self._plan_affine(AffineStage(_columns(part.matrix, c * width, width), part.bias, stage.paths),
                                            np.arange(slots) % period, min(m_pad, period), max(period, m_pad), m_pad)
                          for c in range(chunks)])
        return plans

    def _plan_first(self, i: int) -> None:
        """The first affine stage reads the client's packing, which can be chosen freely: pick the cheapest."""
        stage, slots = self.compiled.stages[i], self.slots
        assert isinstance(stage, AffineStage)
        out_chunks = self._chunks(stage.out_size)
        if self.chunks > 1 or out_chunks > 1:
            self.affine[i] = self._plan_chunked(stage, self.chunks, self.input_period, out_chunks)
            return
        m_pad, n_pad = pow2(stage.out_size), self.input_period
        level = self.levels()[i]
        spans = [s for s in (max(n_pad, m_pad) << j for j in range(int(math.log2(slots)) + 1))
                 if s <= slots and n_pad * m_pad >= s]
        span = min(spans, key=lambda s: self._cost(n_pad * m_pad // s, m_pad, s, level))
        width = n_pad * m_pad // span
        if span > max(n_pad, m_pad):  # otherwise the blocked packing is the periodic one
            self.input_block, self.input_width = m_pad, width
        self.affine[i] = [[self._plan_affine(stage, layout_index(n_pad, m_pad, width, slots), width, span, m_pad)]]

    @staticmethod
    def periods_fit(compiled: Compiled) -> int:
        """The slots that hold the program's widest vector in one ciphertext, up to the largest ring's.

        The input itself is not counted when an affine stage consumes it: a wide
        input is split across several ciphertexts instead of forcing a larger
        ring; so is any vector wider than the largest ring.
        """
        affine = [stage for stage in compiled.stages if isinstance(stage, AffineStage)]
        need = 1 if affine else pow2(compiled.input_size)
        for n, stage in enumerate(affine):
            need = max(need, pow2(stage.out_size), pow2(stage.in_size) if n else 1)
        return min(need, RING_DEGREES[-1] // 2)  # wider vectors are split across ciphertexts

    def _plan_affine(self, stage: AffineStage, in_index: np.ndarray, diagonals: int, fold_to: int,
                     m_pad: int) -> _LatencyAffine:
        """Generalized diagonals of ``stage`` for an input whose slot ``s`` holds value ``in_index[s]``.

        The output has period ``m_pad``; folds add the partial sums of the
        strides ``m_pad .. fold_to / 2``.
        """
        padded = np.zeros((m_pad, max(int(in_index.max()) + 1, stage.in_size)))
        padded[: stage.out_size, : stage.in_size] = stage.matrix
        giant = _giant(diagonals)
        slots = np.arange(self.slots)
        rows = slots % m_pad
        blocks: list[list[tuple[int, Any]]] = []
        for a in range(0, diagonals, giant):
            block = []
            for b in range(giant):
                k = a + b
                if k >= diagonals:
                    break
                diagonal = padded[rows, in_index[(slots + k) % self.slots]]
                if not diagonal.any():
                    continue  # a zero diagonal costs nothing
                block.append((b, np.roll(diagonal, a)))
            blocks.append(block)
        fold_steps = []
        step = m_pad
        while step < fold_to:
            fold_steps.append(step)
            step *= 2
        if giant > 1:
            self.rotation_steps.add(1)
        if len(blocks) > 1:
            self.rotation_steps.add(giant)
        self.rotation_steps.update(fold_steps)
        return _LatencyAffine(stage, m_pad, giant, blocks, fold_steps)

    def encode_weights(self, server: ServerContext) -> None:
        """Turn the diagonals into plaintexts at each stage's level (server side)."""
        self.server = server
        last = len(self.compiled.stages) - 1
        for i, level in self.levels().items():
            if i in self.affine:
                parms = server.parms_id_after(level)
                # in a square chain the input scale is 2^scale_bits before every affine stage
                scale = weight_scale(server, parms, 2.0 ** server.params.scale_bits, self.weight_bits, i == last)
                for row in self.affine[i]:
                    for plan in row:
                        plan.blocks = [[(b, server.encode(d, parms, scale)) for b, d in block] for block in plan.blocks]

    def run(self, cts: list[Any], server: ServerContext | None = None) -> list[Any]:
        """Evaluate one input (``chunks`` packed ciphertexts) with ``server``'s keys; ``output_chunks`` out.

        The diagonals were encoded once; plaintexts depend only on the CKKS
        parameters, so one encoding serves every client's keys.
        """
        if len(cts) != self.chunks:
            raise ValueError(f"expected {self.chunks} ciphertexts per input, got {len(cts)}")
        ops = _Ops(server or self._server())
        last = len(self.compiled.stages) - 1
        for i, stage in enumerate(self.compiled.stages):
            if isinstance(stage, AffineStage):
                cts = [self._run_affine(ops, row, cts) for row in self.affine[i]]
            else:
                cts = [ops.polynomial(ct, stage, i == last) for ct in cts]
        return cts

    def _server(self) -> ServerContext:
        if self.server is None:
            raise RuntimeError("the plan has no server context: call encode_weights first")
        return self.server

    def _run_affine(self, ops: _Ops, plans: list[_LatencyAffine], cts: list[Any]) -> Any:
        """One affine stage: per input chunk a diagonal product, summed, folded, rescaled, plus the bias.

        The chunks of a wide input share one fold. The fold comes before the
        rescale: folding after it would be cheaper but sums the rescale's
        rounding error once per fold copy (8e-3 instead of 6e-4 on the
        reference network's logits, measured).
        """
        result = None
        for plan, ct in zip(plans, cts, strict=True):
            if not any(plan.blocks):
                continue  # a chunk whose columns are all zero contributes nothing
            part = self._diagonal_product(ops, plan, ct)
            if result is None:
                result = part
            else:
                ops.ev.add_inplace(result, part)
        if result is None:  # an all-zero matrix
            result = ops.mul_scalar_pending(cts[0], 0.0)
        plan = plans[0]
        for step in plan.fold_steps:
            rotated = ops.new()
            ops.ev.rotate_vector(result, step, ops.server.public.galois_keys, rotated)
            ops.ev.add_inplace(result, rotated)
        if not self.weight_bits:  # a square chain leaves the rescale to the square that follows
            ops.rescale(result)
        scale = result.scale
        if scale not in plan.bias_cache:
            bias = np.zeros(plan.m_pad)
            bias[: plan.stage.out_size] = plan.stage.bias
            plan.bias_cache[scale] = ops.server.encode(np.tile(bias, self.slots // plan.m_pad), result.parms_id(), scale)
        ops.ev.add_plain_inplace(result, plan.bias_cache[scale])
        return result

    def _diagonal_product(self, ops: _Ops, plan: _LatencyAffine, ct: Any) -> Any:
        """matrix @ x by the diagonal method with baby-step/giant-step rotations, not yet folded or rescaled."""
        ev, keys = ops.ev, ops.server.public.galois_keys
        babies = {0: ct}
        for b in range(1, plan.giant):
            babies[b] = ops.new()
            ev.rotate_vector(babies[b - 1], 1, keys, babies[b])
        result = None
        for block in reversed(plan.blocks):  # Horner over giant steps: one key for step g
            inner = ops.dot((babies[b], plain) for b, plain in block)
            if result is not None:
                ev.rotate_vector_inplace(result, plan.giant, keys)
                if inner is not None:
                    ev.add_inplace(result, inner)
            else:
                result = inner
        assert result is not None  # the caller skips all-zero matrices
        return result

    def layout_fields(self) -> dict[str, int]:
        """The packing the client must use, as :class:`~._client.Layout` fields (widths only, no weight)."""
        return {"period": self.input_period, "chunks": self.chunks, "output_chunks": self.output_chunks,
                "block": self.input_block, "width": self.input_width}

    def pack(self, x: np.ndarray) -> list[np.ndarray]:
        return pack_latency(x, self.input_period, self.slots, self.chunks, self.input_block, self.input_width)


def _columns(matrix: np.ndarray, start: int, width: int) -> np.ndarray:
    """Columns ``start:start+width`` of ``matrix``, zero-padded to ``width``."""
    block = np.zeros((matrix.shape[0], width))
    part = matrix[:, start : start + width]
    block[:, : part.shape[1]] = part
    return block


def pack_latency(x: np.ndarray, period: int, slots: int, chunks: int = 1, block: int = 0,
                 width: int = 0) -> list[np.ndarray]:
    """Client side of latency mode: one flat input as ``chunks`` slot vectors.

    One chunk: the input zero-padded to ``period`` and repeated across the
    slots, or, with ``block`` and ``width``, in the blocked packing (see
    :func:`layout_index`). Several (an input wider than one ciphertext): consecutive
    runs of ``slots`` values, zero-padded. Needs only the published layout,
    never the model.
    """
    if x.size > period * chunks or slots % period or (chunks > 1 and (period != slots or block)):
        raise ValueError(f"an input of {x.size} values does not fit {chunks} x period {period} in {slots} slots")
    padded = np.zeros(period * chunks)
    padded[: x.size] = x.reshape(-1)
    if chunks > 1:
        return [padded[c * slots : (c + 1) * slots] for c in range(chunks)]
    if block:
        return [padded[layout_index(period, block, width, slots)]]
    return [np.tile(padded, slots // period)]


class BatchPlan:
    """CryptoNets packing: ciphertext j holds feature j of every input in the batch.

    ``weight_bits`` > 0 selects the square-chain schedule (see
    ``choose_square_chain``): each affine stage's weights are encoded at
    ``sqrt(prime / scale)`` and it shares the following square's rescale; the
    last affine stage's weights are encoded at ``2^weight_bits`` and never
    rescaled.

    ``workers`` > 1 splits each affine stage's output rows (and the activation
    after it) across that many processes: ``workers - 1`` forked children
    compute their rows and hand the ciphertexts back through files in
    ``/dev/shm``. SEAL holds Python's lock for every operation, so processes
    are the only way to use a second core. Fork only from a single-threaded
    program (the threaded HE server evaluates with one worker).
    """

    def __init__(self, compiled: Compiled, server: ServerContext | None, slots: int, weight_bits: int = 0,
                 workers: int = 1) -> None:
        self.compiled = compiled
        self.server = server
        self.slots = slots
        self.weight_bits = weight_bits
        self.workers = workers

    def run(self, cts: list[Any], server: ServerContext | None = None) -> list[Any]:
        """Evaluate on one ciphertext per input feature (one input per slot)."""
        server = server or self.server
        if server is None:
            raise RuntimeError("the plan has no server context")
        ops = _Ops(server)
        stages = self.compiled.stages
        last = len(stages) - 1
        i = 0
        while i <= last:
            stage = stages[i]
            if not isinstance(stage, AffineStage):
                cts = [ops.polynomial(ct, stage, i == last) for ct in cts]
                i += 1
                continue
            scale = weight_scale(server, cts[0].parms_id(), cts[0].scale, self.weight_bits, i == last)
            after = stages[i + 1] if i < last else None
            poly = after if isinstance(after, PolyStage) else None

            def rows(lo: int, hi: int, stage: AffineStage = stage, inputs: list[Any] = cts, scale: float = scale,
                     poly: PolyStage | None = poly, poly_last: bool = i + 1 == last) -> list[Any]:
                out = self._run_affine(ops, stage, inputs, scale, range(lo, hi))
                return [ops.polynomial(ct, poly, poly_last) for ct in out] if poly is not None else out

            # bytes of one uncompressed ciphertext at this level: outputs are never larger
            size = cts[0].size() * cts[0].coeff_modulus_size() * cts[0].poly_modulus_degree() * 8
            cts = self._split_rows(rows, stage.out_size, server, size)
            i += 2 if poly is not None else 1
        return cts

    def _split_rows(self, compute: Any, n: int, server: ServerContext, ciphertext_bytes: int = 0) -> list[Any]:
        """``compute(lo, hi)`` for rows ``0..n``, over ``workers`` processes; results in row order.

        A worker that fails has its rows recomputed here, so a crash costs
        time, never a wrong or missing answer. Results go through ``/dev/shm``
        when it has room for them (containers often give it 64 MB), else
        through the temporary directory.
        """
        workers = min(self.workers, n)
        if workers <= 1:
            return compute(0, n)
        bounds = [n * w // workers for w in range(workers + 1)]
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        if shm and shutil.disk_usage(shm).free < 2 * n * ciphertext_bytes:
            shm = None
        tmp = tempfile.mkdtemp(prefix="secure-infer-", dir=shm)
        children: dict[int, int] = {}
        try:
            for w in range(1, workers):
                pid = os.fork()
                if pid == 0:  # the child: its rows to files, then leave without unwinding the caller's stack
                    code = 1
                    try:
                        for k, ct in enumerate(compute(bounds[w], bounds[w + 1])):
                            ct.save(os.path.join(tmp, str(bounds[w] + k)))
                        code = 0
                    finally:
                        os._exit(code)
                children[w] = pid
            out = compute(bounds[0], bounds[1])
            for w in range(1, workers):
                _, status = os.waitpid(children.pop(w), 0)
                lo, hi = bounds[w], bounds[w + 1]
                if os.waitstatus_to_exitcode(status) != 0:
                    warnings.warn(f"batch worker {w} failed (exit status {status}); computing its rows here",
                                  RuntimeWarning, stacklevel=2)
                    out += compute(lo, hi)
                    continue
                for r in range(lo, hi):
                    ct = _seal().Ciphertext()
                    ct.load(server.context, os.path.join(tmp, str(r)))
                    out.append(ct)
            return out
        finally:
            for pid in children.values():  # only if this process failed midway
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            shutil.rmtree(tmp, ignore_errors=True)

    def _run_affine(self, ops: _Ops, stage: AffineStage, cts: list[Any], scale: float, rows: range) -> list[Any]:
        """Output ``rows`` of ``stage``, weights encoded at ``scale``; rescaled unless in a square chain."""
        parms = cts[0].parms_id()
        ev, encode = ops.ev, ops.server.encode
        block = stage.matrix[rows.start : rows.stop]
        accs: list[Any] = [None] * len(rows)
        term = ops.new()
        # Column by column: each input ciphertext is read from memory once and stays in
        # cache while it is added into every row that uses it (row by row streams all
        # inputs once per row). Scalar plaintexts are cheap to encode and large to keep.
        for j in np.flatnonzero(block.any(axis=0)):
            ct, column = cts[j], block[:, j]
            for k in np.flatnonzero(column):
                plain = encode(float(column[k]), parms, scale)
                if accs[k] is None:
                    accs[k] = ops.new()
                    ev.multiply_plain(ct, plain, accs[k])
                else:
                    ev.multiply_plain(ct, plain, term)
                    ev.add_inplace(accs[k], term)
        out = []
        for k, r in enumerate(rows):
            acc = accs[k]
            if acc is None:  # an all-zero row
                acc = ops.new()
                ev.multiply_plain(cts[0], encode(0.0, parms, scale), acc)
            if not self.weight_bits:
                ops.rescale(acc)
            ops.add_scalar(acc, float(stage.bias[r]))
            out.append(acc)
        return out
