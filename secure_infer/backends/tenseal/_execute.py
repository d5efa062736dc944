"""Evaluate compiled stages on ciphertexts, in the two packings.

``latency``: one input per ciphertext. An affine stage with ``m`` outputs
(padded to a power of two) computes ``sum_k P_k * rot(x, k)`` over ``K``
generalized diagonals ``P_k[s] = M[s mod m, in(s + k)]``, where ``in`` maps a
slot to the input value it holds; baby-step/giant-step rotations (keys for
steps 1 and g only) form the sum, and rotate-and-add folds over strides
``m, 2m, ...`` add up the partial sums. The output comes out repeated with
period ``m``, which is the next stage's input layout ("periodic": ``in(s) = s
mod p``, ``K = m`` diagonals, folds up to ``p``). A stage that reads several
values (a residual ``+``, a ``torch.cat``) sums one diagonal product per
input before the shared folds; a part that needs fewer folds than the others
has its diagonals divided by the extra folds' factor, since folding a vector
of period ``m`` again only doubles it.

The client's own input can be packed more cleverly ("blocked", see
:func:`layout_index`): a span of the slots is cut into blocks of ``m``, block
``t`` repeating the ``t``-th run of ``w = p * m / span`` input values. The
copies then multiply different columns (in the periodic layout every copy of
the input multiplies the same ones), so the first stage needs only ``w``
diagonals instead of ``m``, at the price of folding over the whole span. The
plan picks the span with the fewest rotations, multiplications and new
rotation keys (on the reference network: 18 rotations and 64 products
instead of 32 and 256).

When the first stage is sparse (a convolution: each output reads the ``T``
inputs under its kernel), the client can instead send the "tap" packing:
per output slot, the input one kernel tap reads, ``group`` taps per
ciphertext in ``ceil(T / group)`` ciphertexts (see ``_choose_taps``). The
stage is then one plaintext product per ciphertext and ``log2(group)`` folds,
no diagonal product; with one tap per ciphertext the output can even come
out in the blocked layout the next affine stage reads cheapest. On LoLA's
MNIST network (conv 2x2 stride 2) that is 4 products instead of 256
diagonals and 30 rotations. The published gather shows which inputs each
first-layer output reads (the kernel geometry), computed with random weights
so that no trained value, not even a zero, shows in it.

``batch``: one ciphertext per input feature, one input per slot (CryptoNets'
SIMD packing): affine stages are scalar multiply-adds, no rotations at all.

Every plaintext factor is encoded at a scale equal to the prime the following
rescale removes, so ciphertext scales stay put across affine stages. In the
square-chain schedule (``weight_bits`` > 0, see ``choose_square_chain``) an
affine stage's factors are encoded at ``sqrt(prime / scale)`` instead and the
square after it does the one rescale for both. A vector wider than one
ciphertext is split into chunks of ``slots`` values in either mode. Values
that meet (a residual, the terms of a polynomial) are brought to the deeper
level by modulus switching; their scales then differ by the ratio of two
primes near ``2^scale_bits`` (about 1e-6), which is set aside. Approximated
activations run as per-element Chebyshev series (:class:`~._poly.Chebyshev`):
per-slot coefficient vectors in latency mode, per-ciphertext numbers in batch
mode. A weight or coefficient that rounds to zero at its encoding scale is
skipped (SEAL refuses the all-zero "transparent" ciphertext a product with it
would give).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secure_infer.backends.tenseal import _raw
from secure_infer.backends.tenseal._compile import INPUT, AffineStage, Compiled, PolyStage
from secure_infer.backends.tenseal._params import RING_DEGREES
from secure_infer.backends.tenseal._poly import Chebyshev
from secure_infer.backends.tenseal._seal import ServerContext

SCALE_MISMATCH = 1e-9
"""Largest relative difference of two scales set equal before an addition: floating-point rounding only."""


def pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _seal() -> Any:
    import tenseal.sealapi as seal

    return seal


class _Ops:
    """Level-aware ciphertext arithmetic shared by both packings (also the :class:`~._poly.Arithmetic` of SEAL).

    ``cache`` keeps encoded coefficient vectors across calls (they depend on
    the parameters only, so one cache serves every client's keys).
    """

    def __init__(self, server: ServerContext, cache: dict[Any, Any] | None = None) -> None:
        self.server = server
        self.ev = server.evaluator
        self.cache = cache

    def new(self) -> Any:
        return _seal().Ciphertext()

    def rotate(self, ct: Any, step: int, keys: tuple[int, ...], out: Any | None = None) -> Any:
        """``ct`` rotated left by ``step`` slots with the Galois keys of ``keys`` only (a missing
        step is a sum of present ones, largest first: see :func:`compose`); into ``out`` when given."""
        galois = self.server.keys.galois_keys
        first, *rest = compose(step, keys)
        if out is None:
            out = ct
            self.ev.rotate_vector_inplace(out, first, galois)
        else:
            self.ev.rotate_vector(ct, first, galois, out)
        for k in rest:
            self.ev.rotate_vector_inplace(out, k, galois)
        return out

    # -- encoding -----------------------------------------------------------------

    def encode(self, values: Any, parms_id: Any, scale: float) -> Any:
        """A plaintext; vectors are cached by content, level and scale."""
        if isinstance(values, np.ndarray) and values.ndim and self.cache is not None:
            key = (hash(values.tobytes()), tuple(parms_id), scale)
            plain = self.cache.get(key)
            if plain is None:
                plain = self.cache[key] = self.server.encode(values, parms_id, scale)
            return plain
        return self.server.encode(float(values) if not isinstance(values, np.ndarray) else values, parms_id, scale)

    def tiny(self, ct: Any, scale: float) -> Any:
        """``ct`` times about ``1 / scale`` at scale ``ct.scale * scale``: a zero that SEAL accepts (not transparent)."""
        out = self.new()
        self.ev.multiply_plain(ct, self.server.encode(1.0 / scale, ct.parms_id(), scale), out)
        return out

    # -- levels and scales --------------------------------------------------------

    def chain_index(self, ct: Any) -> int:
        return int(self.server.context.get_context_data(ct.parms_id()).chain_index())

    def level(self, ct: Any) -> int:
        """Rescales done on ``ct``."""
        top = self.server.context.first_context_data().chain_index()
        return int(top) - self.chain_index(ct)

    def deepest(self, cts: list[Any]) -> Any:
        return min(cts, key=self.chain_index).parms_id()

    def copy(self, ct: Any) -> Any:
        out = self.new()
        self.ev.mod_switch_to(ct, ct.parms_id(), out)
        return out

    def lower(self, ct: Any, parms_id: Any) -> Any:
        """``ct`` at level ``parms_id`` (modulus switching; the same object when already there)."""
        if list(ct.parms_id()) == list(parms_id):
            return ct
        out = self.new()
        self.ev.mod_switch_to(ct, parms_id, out)
        return out

    @staticmethod
    def match_scale(ct: Any, scale: float) -> None:
        """Scales that differ by floating-point rounding only (the plaintexts were encoded to make them
        equal) are made identical, as SEAL's addition requires."""
        if ct.scale != scale:
            if abs(ct.scale / scale - 1.0) > SCALE_MISMATCH:
                raise RuntimeError(f"scales {ct.scale:.17g} and {scale:.17g} cannot be added")  # a planning bug
            ct.scale = scale

    # -- the Arithmetic protocol (Chebyshev series, see _poly) -----------------------

    def mul(self, a: Any, b: Any) -> Any:
        pid = self.deepest([a, b])
        out = self.new()
        self.ev.multiply(self.lower(a, pid), self.lower(b, pid), out)
        self.ev.relinearize_inplace(out, self.server.keys.relin_keys)
        self.ev.rescale_to_next_inplace(out)
        return out

    def add(self, a: Any, b: Any) -> Any:
        pid = self.deepest([a, b])
        a2, b2 = self.lower(a, pid), self.lower(b, pid)
        if b2.scale != a2.scale:
            if b2 is b:
                b2 = self.copy(b)
            self.match_scale(b2, a2.scale)
        out = self.new()
        self.ev.add(a2, b2, out)
        return out

    def product_minus(self, a: Any, b: Any, c: Any | None) -> Any:
        """``2ab - c`` (``c`` None: ``2ab - 1``), subtracting before the one rescale so the scales agree."""
        pid = self.deepest([a, b] if c is None else [a, b, c])
        out = self.new()
        self.ev.multiply(self.lower(a, pid), self.lower(b, pid), out)
        self.ev.relinearize_inplace(out, self.server.keys.relin_keys)
        doubled = self.new()
        self.ev.add(out, out, doubled)
        out = doubled
        if c is None:
            self.ev.add_plain_inplace(out, self.server.encode(-1.0, pid, out.scale))
        else:
            c2 = self.lower(c, pid)
            term = self.new()
            self.ev.multiply_plain(c2, self.server.encode(1.0, pid, out.scale / c2.scale), term)
            self.match_scale(term, out.scale)
            self.ev.sub_inplace(out, term)
        self.ev.rescale_to_next_inplace(out)
        return out

    def target_for(self, target: float, factor: Any, level: int) -> float:
        """The scale a value must have so that its product with ``factor`` at ``level`` has scale ``target``."""
        return target * self.server.prime_at(self.server.parms_id_after(level)) / factor.scale

    def lincomb(self, terms: list[tuple[Any, Any]], const: Any, like: Any, target: float) -> Any:
        """``const + sum coefficient * value`` at scale ``target``, one level below the deepest value."""
        pid = self.deepest([like] + [ct for ct, _ in terms])
        prime = self.server.prime_at(pid)
        acc = None
        for ct, coefficient in terms:
            ct2 = self.lower(ct, pid)
            plain = self.encode(coefficient, pid, target * prime / ct2.scale)
            if plain.is_zero():
                continue
            term = self.new()
            self.ev.multiply_plain(ct2, plain, term)
            if acc is None:
                acc = term
            else:
                self.match_scale(term, acc.scale)
                self.ev.add_inplace(acc, term)
        if acc is None:
            base = self.lower(like, pid)
            acc = self.tiny(base, target * prime / base.scale)
        self.ev.rescale_to_next_inplace(acc)
        return self.add_const(acc, const)

    def add_const(self, a: Any, value: Any) -> Any:
        plain = self.encode(value, a.parms_id(), a.scale)
        if plain.is_zero():
            return a
        out = self.new()
        self.ev.add_plain(a, plain, out)
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

    def mul_scalar_pending(self, ct: Any, value: float) -> Any:
        """ct * value, not yet rescaled (scale grows by the next prime)."""
        prime = self.server.prime_at(ct.parms_id())
        plain = self.server.encode(float(value), ct.parms_id(), prime)
        if plain.is_zero():
            return self.tiny(ct, prime)
        out = self.new()
        self.ev.multiply_plain(ct, plain, out)
        return out

    def add_scalar(self, ct: Any, value: float) -> None:
        if value != 0.0:
            plain = self.server.encode(float(value), ct.parms_id(), ct.scale)
            if not plain.is_zero():
                self.ev.add_plain_inplace(ct, plain)

    def rescale(self, ct: Any) -> None:
        self.ev.rescale_to_next_inplace(ct)

    def mod_to(self, ct: Any, like: Any) -> Any:
        return self.lower(ct, like.parms_id())

    def relinearized_product(self, a: Any, b: Any) -> Any:
        out = self.new()
        self.ev.multiply(a, b, out)
        self.ev.relinearize_inplace(out, self.server.keys.relin_keys)
        return out

    def polynomial(self, ct: Any, stage: PolyStage, coefficients: Any = None) -> Any:
        """An element-wise polynomial stage on one ciphertext (``coefficients``: this ciphertext's Chebyshev
        coefficients, per slot or per ciphertext, for approximated activations)."""
        if stage.fit is not None:
            return Chebyshev(stage.degree).evaluate(self, ct, coefficients, 2.0 ** self.server.params.scale_bits)
        c = stage.coefficients
        if stage.degree == 1:
            out = self.mul_scalar_pending(ct, c[1])
            self.rescale(out)
            self.add_scalar(out, c[0])
            return out
        if stage.degree == 2 and c[2] == 1.0:
            square = self.new()
            self.ev.square(ct, square)
            self.ev.relinearize_inplace(square, self.server.keys.relin_keys)
            if c[1] != 0.0:
                plain = self.server.encode(float(c[1]), ct.parms_id(), ct.scale)
                if not plain.is_zero():
                    linear = self.new()
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
            acc = self.relinearized_product(acc, self.mod_to(ct, acc))
            self.rescale(acc)
            self.add_scalar(acc, coeff)
        return acc

    def aligned(self, cts: list[Any]) -> list[Any]:
        """``cts`` at the deepest level among them (for sums across values; scales are
        reconciled by the weights each is multiplied by)."""
        pid = self.deepest(cts)
        return [self.lower(ct, pid) for ct in cts]

ROTATION_VS_MULTIPLY = 12.0  # a key switch costs about this many plaintext multiply-adds (N=8192, measured)
ENCRYPT_VS_MULTIPLY = 6.0  # one more input ciphertext: the client encodes, encrypts and sends it (half a key switch, measured)
MAX_TAP_CIPHERTEXTS = 8
"""The tap packing sends at most this many ciphertexts per input (upload grows with each)."""


def compose(step: int, keys: tuple[int, ...]) -> list[int]:
    """``step`` as a sum of rotation ``keys``, largest first (every step the planner uses is a
    power of two, and ``keys`` always holds the smallest, so the sum is exact)."""
    if not keys or step in keys:
        return [step]
    parts, left = [], step
    for k in sorted(keys, reverse=True):
        while left >= k:
            parts.append(k)
            left -= k
    if left:
        raise ValueError(f"rotation by {step} is not a sum of the rotation keys {sorted(keys)}")
    return parts


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


@dataclass
class _Part:
    """One input vector's (or input chunk's) diagonal product inside an affine stage's output chunk."""

    source: int  # value id
    chunk: int  # which ciphertext of that value
    giant: int
    blocks: list[list[tuple[int, Any]]]  # per giant step a: [(baby b, plaintext or diagonal)]
    fold_to: int
    by_scale: dict[float, list[list[tuple[int, Any]]]] | None = None  # another value's part: encoded per scale


@dataclass
class _Row:
    """One output ciphertext of an affine stage: the parts, the shared folds, the bias."""

    stage: AffineStage
    rows: slice
    m_pad: int
    parts: list[_Part]
    fold_steps: list[int]
    bias_cache: dict[float, Any] = field(default_factory=dict)
    out_index: np.ndarray | None = None  # the output value each slot holds (-1: none); None: period m_pad

    @property
    def blocks(self) -> list[list[tuple[int, Any]]]:  # for reports: every diagonal of every part
        return [block for part in self.parts for block in part.blocks]


@dataclass
class _Taps:
    """The first stage's tap packing (see ``LatencyPlan._choose_taps``)."""

    stage: int
    group: int  # taps per ciphertext, folded
    span: int  # the period of the folded sum
    out_index: np.ndarray | None  # the output value each slot holds, when not periodic in m_pad


@dataclass
class _Layout:
    """How one value sits in its ciphertexts in latency mode."""

    chunks: int
    period: int  # output value i is in slot i mod period (chunked: period = slots, chunk c holds c*slots..)
    block: int = 0  # the blocked packing, see layout_index
    width: int = 0
    gather: np.ndarray | None = None  # the tap packing (the input only): (chunks, slots) input index, -1 for 0

    def index(self, slots: int) -> np.ndarray:
        """The value each slot of a single-chunk layout holds."""
        if self.block:
            return layout_index(self.period, self.block, self.width, slots)
        return np.arange(slots) % self.period


class LatencyPlan:
    """Diagonals encoded once per program, at the level each stage runs.

    A vector wider than one ciphertext (the input, or any layer's output) is
    split into chunks of ``slots`` values, one ciphertext each: an affine stage
    sums one diagonal product per input chunk for each output chunk, and
    polynomials act on every chunk.
    """

    def __init__(self, compiled: Compiled, server: ServerContext | None, slots: int, weight_bits: int = 0,
                 data_primes: int = 0, taps: bool = True, max_rotation_keys: int | None = None) -> None:
        """``taps``: allow the tap packing, which tells the client the first layer's connectivity.
        ``max_rotation_keys``: at most this many Galois keys; other rotations are composed of them."""
        self.compiled = compiled
        self.slots = slots
        self.weight_bits = weight_bits  # > 0: the square-chain schedule, as in BatchPlan
        self.data_primes = data_primes  # for the cost model: a key switch gets cheaper as primes are used up
        self.server = server
        self.cache: dict[Any, Any] = {}
        stages = compiled.stages
        self.value_levels = compiled.levels(weight_bits)
        self.layouts: dict[int, _Layout] = {INPUT: self._layout(compiled.input_size)}
        for i, stage in enumerate(stages):
            self.layouts[i] = self._layout(stage.out_size) if isinstance(stage, AffineStage) else \
                self.layouts[stage.input]
        self.affine: dict[int, list[_Row]] = {}
        self.rotation_steps: set[int] = set()
        readers = compiled.users(INPUT)
        first = readers[0] if len(readers) == 1 else None
        if first is not None:
            stage = stages[first]
            if not (isinstance(stage, AffineStage) and stage.inputs == [INPUT] and self.layouts[first].chunks == 1):
                first = None
        tapped = self._choose_taps(first) if first is not None and taps else None
        if first is not None and tapped is None and self.layouts[INPUT].chunks > 1:
            first = None  # neither packing applies: an input split into chunks, read like any other value
        # later stages first: the first one's packing weighs their rotation keys
        for i in reversed(range(len(stages))):
            stage = stages[i]
            if isinstance(stage, AffineStage) and i != first:
                self.affine[i] = self._plan_stage(i, stage)
        if tapped is not None:
            self._plan_taps(tapped)
        elif first is not None:
            self._plan_first(first)
        self.chebyshev = {i: self._coefficient_vectors(stage) for i, stage in enumerate(stages)
                          if isinstance(stage, PolyStage) and stage.fit is not None}
        out = self.layouts[compiled.output]
        self.output_chunks, self.output_period = out.chunks, out.period
        self.key_steps: tuple[int, ...] = ()  # () : a Galois key per rotation step
        if max_rotation_keys is not None and len(self.rotation_steps) > max_rotation_keys:
            self.key_steps = self._choose_keys(max_rotation_keys)
            if self.key_steps:  # () : no smaller set composes every rotation, so every key is kept
                self.rotation_steps = set(self.key_steps)

    def rotation_uses(self) -> dict[int, float]:
        """Per rotation step, the key switches that rotate by it, weighted by their cost at their level."""
        uses: dict[int, float] = {}
        for i, rows in self.affine.items():
            cost = self._costs(self.stage_level(i))[0]
            for row in rows:
                for step in row.fold_steps:
                    uses[step] = uses.get(step, 0.0) + cost
                for part in row.parts:
                    if part.giant > 1:
                        uses[1] = uses.get(1, 0.0) + cost * (part.giant - 1)
                    if len(part.blocks) > 1:
                        uses[part.giant] = uses.get(part.giant, 0.0) + cost * (len(part.blocks) - 1)
        return uses

    def _choose_keys(self, count: int) -> tuple[int, ...]:
        """The ``count`` rotation keys (the smallest step among them) that compose every step the
        plan rotates by with the least weighted key switching."""
        uses = self.rotation_uses()
        if not uses:
            return ()
        steps = sorted(uses)
        smallest, rest = steps[0], steps[1:]
        best: tuple[float, tuple[int, ...]] | None = None
        for extra in itertools.combinations(rest, max(0, min(count, len(steps)) - 1)):
            keys = (smallest, *extra)
            try:
                cost = sum(u * len(compose(s, keys)) for s, u in uses.items())
            except ValueError:  # some step is not a sum of these keys
                continue
            if best is None or cost < best[0]:
                best = (cost, keys)
        if best is None:  # no set of that size composes every step: keep them all
            return ()
        return tuple(sorted(best[1]))

    # -- layouts and levels ---------------------------------------------------------

    def _chunks(self, size: int) -> int:
        return 1 if pow2(size) <= self.slots else -(-size // self.slots)

    def _layout(self, size: int) -> _Layout:
        chunks = self._chunks(size)
        return _Layout(chunks, self.slots if chunks > 1 else pow2(size))

    @property
    def input_layout(self) -> _Layout:
        """The client's packing of the input (chunks, period and, when blocked, block and width)."""
        return self.layouts[INPUT]

    @property
    def chunks(self) -> int:
        return self.layouts[INPUT].chunks

    def stage_level(self, i: int) -> int:
        """Rescales done before stage ``i`` runs (the level its plaintexts are encoded at)."""
        stage = self.compiled.stages[i]
        if isinstance(stage, AffineStage):
            return max(self.value_levels[k] for k in stage.inputs)
        return self.value_levels[stage.input]

    def levels(self) -> dict[int, int]:
        return {i: self.stage_level(i) for i in range(len(self.compiled.stages))}

    # -- the cost model ---------------------------------------------------------------

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

    # -- planning ---------------------------------------------------------------------

    def _plan_stage(self, i: int, stage: AffineStage) -> list[_Row]:
        """Diagonal products for every (output chunk, input value, input chunk) of ``stage``."""
        slots = self.slots
        out = self.layouts[i]
        single = len(stage.inputs) == 1 and out.chunks == 1 and self.layouts[stage.inputs[0]].chunks == 1
        if single and i == self.compiled.output and not self.layouts[stage.inputs[0]].block:
            return [self._plan_last(stage, self.layouts[stage.inputs[0]], self.stage_level(i))]
        m_pad = out.period
        rows_out = []
        for r in range(out.chunks):
            rows = slice(r * slots, (r + 1) * slots) if out.chunks > 1 else slice(None)
            parts = []
            for k, block in zip(stage.inputs, stage.blocks, strict=True):
                src = self.layouts[k]
                part_rows = block[rows]
                if src.chunks > 1:
                    for c in range(src.chunks):
                        parts.append(self._plan_part(k, c, _columns(part_rows, c * slots, slots),
                                                     np.arange(slots), m_pad, slots, m_pad))
                elif src.block:  # laid out for this stage by the tap packing (see _choose_taps)
                    parts.append(self._plan_part(k, 0, part_rows, src.index(slots), src.width,
                                                 src.period * src.block // src.width, m_pad))
                else:
                    parts.append(self._plan_part(k, 0, part_rows, src.index(slots), min(m_pad, src.period),
                                                 max(src.period, m_pad), m_pad))
            rows_out.append(self._row(stage, rows, m_pad, parts))
        return rows_out

    def _row(self, stage: AffineStage, rows: slice, m_pad: int, parts: list[_Part]) -> _Row:
        fold_to = max(p.fold_to for p in parts)
        for part in parts:  # a part folded more than it needs comes out multiplied by the extra folds
            if part.fold_to < fold_to:
                factor = part.fold_to / fold_to
                part.blocks = [[(b, d * factor) for b, d in block] for block in part.blocks]
        fold_steps, step = [], m_pad
        while step < fold_to:
            fold_steps.append(step)
            step *= 2
        self.rotation_steps.update(fold_steps)
        return _Row(stage, rows, m_pad, parts, fold_steps)

    def _plan_last(self, stage: AffineStage, src: _Layout, level: int) -> _Row:
        """The last stage's output layout is free: padding it to a longer period needs more
        diagonals but fewer folds and rotation keys; pick the cheapest."""
        period = src.period
        m_pad = pow2(stage.out_size)
        candidates = [m_pad << j for j in range(int(math.log2(max(period, m_pad) // m_pad)) + 1)]
        m = min(candidates, key=lambda m: self._cost(min(m, period), m, max(period, m), level))
        self.layouts[self.compiled.output] = _Layout(1, m)
        part = self._plan_part(stage.inputs[0], 0, stage.blocks[0], src.index(self.slots), min(m, period),
                               max(period, m), m)
        return self._row(stage, slice(None), m, [part])

    def _plan_first(self, i: int) -> None:
        """The first affine stage reads the client's packing, which can be chosen freely: pick the cheapest."""
        stage, slots = self.compiled.stages[i], self.slots
        assert isinstance(stage, AffineStage)
        m_pad, n_pad = self.layouts[i].period, self.layouts[INPUT].period
        span, _ = self._cheapest_span(n_pad, m_pad, self.stage_level(i))
        width = n_pad * m_pad // span
        if span > max(n_pad, m_pad):  # otherwise the blocked packing is the periodic one
            self.layouts[INPUT] = _Layout(1, n_pad, m_pad, width)
        part = self._plan_part(INPUT, 0, stage.blocks[0], layout_index(n_pad, m_pad, width, slots), width, span, m_pad)
        self.affine[i] = [self._row(stage, slice(None), m_pad, [part])]

    def _consumer(self, i: int) -> tuple[int | None, list[int]]:
        """The one affine stage reading ``i``'s value through polynomials only, and the values on the way."""
        stages, chain, value = self.compiled.stages, [i], i
        while value != self.compiled.output:
            users = self.compiled.users(value)
            if len(users) != 1:
                break
            user = stages[users[0]]
            if isinstance(user, PolyStage):
                value = users[0]
                chain.append(value)
                continue
            if user.inputs == [value] and self.layouts[users[0]].chunks == 1:
                return users[0], chain
            break
        return None, chain

    def _cheapest_span(self, n: int, m: int, level: int) -> tuple[int, float]:
        """The blocked packing's span (``n * m / span`` diagonals, folds up to it) for an ``m``-row stage
        reading a value of period ``n`` at ``level``, with the fewest costed operations, and that cost."""
        spans = [s for s in (max(n, m) << j for j in range(int(math.log2(self.slots)) + 1))
                 if s <= self.slots and n * m >= s]
        span = min(spans, key=lambda s: self._cost(n * m // s, m, s, level))
        return span, self._cost(n * m // span, m, span, level)

    def _blocked_for(self, k: int, n: int) -> tuple[float, _Layout | None]:
        """The cheapest blocked layout for stage ``k`` to read a value of period ``n``, and its cost."""
        m = self.layouts[k].period
        span, cost = self._cheapest_span(n, m, self.stage_level(k))
        return cost, (_Layout(1, n, m, n * m // span) if span > max(n, m) else None)

    def _choose_taps(self, i: int) -> _Taps | None:
        """The tap packing for the first stage, when the cost model prefers it to the blocked one.

        Each output reads at most ``T`` inputs (a convolution: its kernel's
        taps). The client sends, per output slot, the input each tap reads:
        ``group`` taps per ciphertext, in ``ceil(T / group)`` ciphertexts, so
        the stage is one plaintext product per ciphertext and ``log2(group)``
        folds, instead of a diagonal product. With one tap per ciphertext there
        is no fold, and the output can sit in whatever layout the next affine
        stage reads cheapest (the blocked one). The client learns the stage's
        connectivity (the generic structure, see ``AffineStage.structure``),
        never a weight.
        """
        stage = self.compiled.stages[i]
        assert isinstance(stage, AffineStage)
        if stage.structure is None:
            return None
        columns = [np.flatnonzero(row) for row in stage.structure[0]]
        taps = max((len(c) for c in columns), default=0)
        m_pad, slots, level = self.layouts[i].period, self.slots, self.stage_level(i)
        if not taps or m_pad > slots:
            return None
        rotation, multiply = self._costs(level)
        consumer, chain = self._consumer(i)
        periodic = blocked = 0.0
        blocked_layout = None
        if consumer is not None:
            k_layout = self.layouts[consumer]
            periodic = self._cost(min(k_layout.period, m_pad), k_layout.period, max(m_pad, k_layout.period),
                                  self.stage_level(consumer))
            blocked, blocked_layout = self._blocked_for(consumer, m_pad)
        best, best_cost = None, math.inf
        if self.layouts[INPUT].chunks == 1:  # the blocked (or periodic) packing of _plan_first
            best_cost = self._cheapest_span(self.layouts[INPUT].period, m_pad, level)[1] + periodic
        for j in range(int(math.log2(slots // m_pad)) + 1):
            # the products' sum has period `span` after log2(group) folds: the next stage reads it
            # periodic (span = m_pad), blocked over `span`, or, with no fold, in its cheapest layout
            span = m_pad << j
            group = slots // span
            count = -(-taps // group)
            if count > MAX_TAP_CIPHERTEXTS:
                continue
            layout: _Layout | None = None
            if group == 1 and blocked_layout is not None:
                layout, after = blocked_layout, blocked
            elif span == m_pad or group == 1:
                after = periodic
            elif consumer is not None and span >= self.layouts[consumer].period and \
                    m_pad * self.layouts[consumer].period >= span:
                m_k = self.layouts[consumer].period
                layout = _Layout(1, m_pad, m_k, m_pad * m_k // span)
                after = self._cost(layout.width, m_k, span, self.stage_level(consumer))
            else:
                continue
            folds = math.log2(group)  # each a rotation, and a rotation key as _cost counts them
            cost = count * multiply + folds * (rotation + ROTATION_VS_MULTIPLY) + (count - 1) * ENCRYPT_VS_MULTIPLY + after
            if cost < best_cost:
                best, best_cost = (span, group, count, layout), cost
        if best is None:
            return None
        span, group, count, layout = best
        if layout is not None:
            for value in chain:
                self.layouts[value] = layout
            out_index = layout.index(slots)
        else:
            out_index = np.arange(slots) % m_pad
        table = np.full((m_pad, count * group), -1, dtype=np.int64)
        for row, cols in enumerate(columns):
            table[row, : len(cols)] = cols
        tap = (np.arange(slots) // span) % group
        gather = np.stack([table[out_index, c * group + tap] for c in range(count)])
        self.layouts[INPUT] = _Layout(count, slots, gather=gather)
        return _Taps(i, group, span, out_index if layout is not None else None)

    def _plan_taps(self, taps: _Taps) -> None:
        """The first stage in the tap packing: a plaintext product per input ciphertext, summed and folded."""
        stage, layout = self.compiled.stages[taps.stage], self.layouts[INPUT]
        assert isinstance(stage, AffineStage) and layout.gather is not None
        matrix, m_pad = stage.blocks[0], self.layouts[taps.stage].period
        rows = taps.out_index if taps.out_index is not None else np.arange(self.slots) % m_pad
        parts = []
        for c, gather in enumerate(layout.gather):
            held = (gather >= 0) & (rows < matrix.shape[0])
            diagonal = np.where(held, matrix[np.where(held, rows, 0), np.where(held, gather, 0)], 0.0)
            parts.append(_Part(INPUT, c, 1, [[(0, diagonal)]], taps.span * taps.group))
        row = self._row(stage, slice(None), taps.span, parts)  # folds from the span up
        row.out_index = taps.out_index
        self.affine[taps.stage] = [row]

    def _plan_part(self, source: int, chunk: int, matrix: np.ndarray, in_index: np.ndarray, diagonals: int,
                   fold_to: int, m_pad: int) -> _Part:
        """Generalized diagonals of ``matrix`` for an input whose slot ``s`` holds value ``in_index[s]``.

        The output has period ``m_pad``; folds up to ``fold_to`` add the partial sums.
        """
        padded = np.zeros((m_pad, max(int(in_index.max()) + 1, matrix.shape[1])))
        padded[: matrix.shape[0], : matrix.shape[1]] = matrix
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
        if giant > 1:
            self.rotation_steps.add(1)
        if len(blocks) > 1:
            self.rotation_steps.add(giant)
        return _Part(source, chunk, giant, blocks, fold_to)

    def _coefficient_vectors(self, stage: PolyStage) -> list[list[np.ndarray]]:
        """Per input chunk, the Chebyshev coefficients laid out like the values they multiply."""
        assert stage.fit is not None
        layout, slots = self.layouts[stage.input], self.slots
        coefficients = stage.fit.coefficients  # (elements, degree + 1)
        size = coefficients.shape[0]
        out = []
        for c in range(layout.chunks):
            element = c * slots + np.arange(slots) if layout.chunks > 1 else layout.index(slots)
            valid = element < size
            vectors = np.zeros((coefficients.shape[1], slots))
            vectors[:, valid] = coefficients[element[valid]].T
            out.append(list(vectors))
        return out

    @staticmethod
    def periods_fit(compiled: Compiled) -> int:
        """The slots that hold the program's widest vector in one ciphertext, up to the largest ring's.

        The input itself is not counted when only affine stages read it: a wide
        input is split across several ciphertexts instead of forcing a larger
        ring; so is any vector wider than the largest ring.
        """
        need = 1
        for stage in compiled.stages:
            if isinstance(stage, AffineStage):
                need = max(need, pow2(stage.out_size))
                for k in stage.inputs:
                    if k != INPUT:
                        need = max(need, pow2(compiled.stages[k].out_size))
            elif stage.input == INPUT:
                need = max(need, pow2(compiled.input_size))
        if compiled.output == INPUT:
            need = max(need, pow2(compiled.input_size))
        return min(need, RING_DEGREES[-1] // 2)  # wider vectors are split across ciphertexts

    # -- encoding and running -----------------------------------------------------------

    def encode_weights(self, server: ServerContext) -> None:
        """Turn the diagonals into plaintexts at each stage's level (server side); drop those that round to 0."""
        self.server = server
        last = len(self.compiled.stages) - 1
        for i, rows in self.affine.items():
            parms = server.parms_id_after(self.stage_level(i))
            # in a square chain the input scale is 2^scale_bits before every affine stage
            scale = weight_scale(server, parms, 2.0 ** server.params.scale_bits, self.weight_bits, i == last)
            for row in rows:
                for part in row.parts:
                    if part.source != row.parts[0].source:
                        part.by_scale = {}  # its scale is only known at run time: encoded then, once
                        continue
                    part.blocks = _encode_blocks(server, part.blocks, parms, scale)

    def run(self, cts: list[Any], server: ServerContext | None = None) -> list[Any]:
        """Evaluate one input (``chunks`` packed ciphertexts) with ``server``'s keys; ``output_chunks`` out.

        The diagonals were encoded once; plaintexts depend only on the CKKS
        parameters, so one encoding serves every client's keys.
        """
        if len(cts) != self.chunks:
            raise ValueError(f"expected {self.chunks} ciphertexts per input, got {len(cts)}")
        ops = _Ops(server or self._server(), self.cache)
        values: dict[int, list[Any]] = {INPUT: list(cts)}
        for i, stage in enumerate(self.compiled.stages):
            if isinstance(stage, AffineStage):
                parms = ops.server.parms_id_after(self.stage_level(i))
                lowered: dict[tuple[int, int], Any] = {}
                for k in stage.inputs:
                    for c, ct in enumerate(values[k]):
                        lowered[(k, c)] = ops.lower(ct, parms)
                values[i] = [self._run_affine(ops, row, lowered) for row in self.affine[i]]
            elif stage.fit is not None:
                values[i] = [ops.polynomial(ct, stage, vectors)
                             for ct, vectors in zip(values[stage.input], self.chebyshev[i], strict=True)]
            else:
                values[i] = [ops.polynomial(ct, stage) for ct in values[stage.input]]
        return values[self.compiled.output]

    def _server(self) -> ServerContext:
        if self.server is None:
            raise RuntimeError("the plan has no server context: call encode_weights first")
        return self.server

    def _run_affine(self, ops: _Ops, row: _Row, inputs: dict[tuple[int, int], Any]) -> Any:
        """One output chunk: per input part a diagonal product, summed, folded, rescaled, plus the bias.

        The parts share one fold. The fold comes before the rescale: folding
        after it would be cheaper but sums the rescale's rounding error once per
        fold copy (8e-3 instead of 6e-4 on the reference network's logits, measured).
        """
        result = None
        first = inputs[(row.parts[0].source, row.parts[0].chunk)]
        for part in row.parts:
            if not any(part.blocks):
                continue  # a part whose columns are all zero contributes nothing
            ct = inputs[(part.source, part.chunk)]
            blocks = part.blocks
            if part.by_scale is not None:  # another value: its weights bring it to the first one's scale
                scale = ops.server.prime_at(ct.parms_id()) * first.scale / ct.scale
                if scale not in part.by_scale:
                    part.by_scale[scale] = _encode_blocks(ops.server, part.blocks, ct.parms_id(), scale)
                blocks = part.by_scale[scale]
            product = self._diagonal_product(ops, part, ct, blocks)
            if result is None:
                result = product
            else:
                ops.match_scale(product, result.scale)
                ops.ev.add_inplace(result, product)
        if result is None:  # an all-zero matrix
            first = row.parts[0]
            ct = inputs[(first.source, first.chunk)]
            result = ops.tiny(ct, ops.server.prime_at(ct.parms_id()))
        for step in row.fold_steps:
            rotated = ops.rotate(result, step, self.key_steps, ops.new())
            ops.ev.add_inplace(result, rotated)
        if not self.weight_bits:  # a square chain leaves the rescale to the square that follows
            ops.rescale(result)
        scale = result.scale
        if scale not in row.bias_cache:
            part_bias = row.stage.bias[row.rows]
            if row.out_index is not None:
                held = (row.out_index >= 0) & (row.out_index < len(part_bias))
                vector = np.where(held, part_bias[np.where(held, row.out_index, 0)], 0.0)
            else:
                bias = np.zeros(row.m_pad)
                bias[: len(part_bias)] = part_bias
                vector = np.tile(bias, self.slots // row.m_pad)
            row.bias_cache[scale] = ops.server.encode(vector, result.parms_id(), scale)
        if not row.bias_cache[scale].is_zero():
            ops.ev.add_plain_inplace(result, row.bias_cache[scale])
        return result

    def _diagonal_product(self, ops: _Ops, part: _Part, ct: Any, blocks: list[list[tuple[int, Any]]]) -> Any:
        """matrix @ x by the diagonal method with baby-step/giant-step rotations, not yet folded or rescaled."""
        ev, keys = ops.ev, self.key_steps
        babies = {0: ct}
        for b in range(1, part.giant):
            babies[b] = ops.rotate(babies[b - 1], 1, keys, ops.new())
        result = None
        for block in reversed(blocks):  # Horner over giant steps: one key for step g
            inner = ops.dot((babies[b], plain) for b, plain in block)
            if result is not None:
                ops.rotate(result, part.giant, keys)
                if inner is not None:
                    ev.add_inplace(result, inner)
            else:
                result = inner
        if result is None:  # every diagonal rounded to zero
            result = ops.tiny(ct, ops.server.prime_at(ct.parms_id()))
        return result

    def layout_fields(self) -> dict[str, Any]:
        """The packing the client must use, as :class:`~._client.Layout` fields (widths only, no weight)."""
        layout = self.input_layout
        gather = () if layout.gather is None else tuple(tuple(int(v) for v in g) for g in layout.gather)
        return {"period": layout.period, "chunks": layout.chunks, "output_chunks": self.output_chunks,
                "block": layout.block, "width": layout.width, "gather": gather}

    def pack(self, x: np.ndarray) -> list[np.ndarray]:
        layout = self.input_layout
        return pack_latency(x, layout.period, self.slots, layout.chunks, layout.block, layout.width, layout.gather)


def _encode_blocks(server: ServerContext, blocks: list[list[tuple[int, Any]]], parms_id: Any,
                   scale: float) -> list[list[tuple[int, Any]]]:
    """Diagonals as plaintexts at ``scale``; those that round to zero are dropped."""
    out = []
    for block in blocks:
        plains = [(b, server.encode(d, parms_id, scale)) for b, d in block]
        out.append([(b, p) for b, p in plains if not p.is_zero()])
    return out


def _columns(matrix: np.ndarray, start: int, width: int) -> np.ndarray:
    """Columns ``start:start+width`` of ``matrix``, zero-padded to ``width``."""
    block = np.zeros((matrix.shape[0], width))
    part = matrix[:, start : start + width]
    block[:, : part.shape[1]] = part
    return block


def pack_latency(x: np.ndarray, period: int, slots: int, chunks: int = 1, block: int = 0,
                 width: int = 0, gather: Any = None) -> list[np.ndarray]:
    """Client side of latency mode: one flat input as ``chunks`` slot vectors.

    One chunk: the input zero-padded to ``period`` and repeated across the
    slots, or, with ``block`` and ``width``, in the blocked packing (see
    :func:`layout_index`). Several (an input wider than one ciphertext): consecutive
    runs of ``slots`` values, zero-padded. ``gather`` (the tap packing):
    ciphertext ``c``'s slot ``s`` holds input value ``gather[c][s]``, 0 where
    that is -1. Needs only the published layout, never the model.
    """
    if gather is not None and len(gather):
        index = np.asarray(gather, dtype=np.int64)
        if index.shape != (chunks, slots) or index.min() < -1 or index.max() >= x.size:
            raise ValueError(f"a gather of shape {index.shape} does not index {chunks} x {slots} slots "
                             f"of an input of {x.size} values")
        padded = np.append(x.reshape(-1).astype(np.float64), 0.0)  # index -1: the appended zero
        return [padded[g] for g in index]
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

    Several workers evaluate separate blocks (see :mod:`secure_infer.engine`),
    never parts of one block: a block's stages share nothing but their inputs.
    """

    def __init__(self, compiled: Compiled, server: ServerContext | None, slots: int, weight_bits: int = 0) -> None:
        self.compiled = compiled
        self.server = server
        self.slots = slots
        self.weight_bits = weight_bits
        self.raw = _raw.available()  # affine stages as integer matrix products (see _raw)

    def run(self, cts: list[Any], server: ServerContext | None = None) -> list[Any]:
        """Evaluate on one ciphertext per input feature (one input per slot)."""
        server = server or self.server
        if server is None:
            raise RuntimeError("the plan has no server context")
        ops = _Ops(server)
        stages = self.compiled.stages
        last = len(stages) - 1
        values: dict[int, list[Any]] = {INPUT: list(cts)}
        i = 0
        while i <= last:
            stage = stages[i]
            if not isinstance(stage, AffineStage):
                values[i] = self._poly_rows(ops, stage, values[stage.input], 0, len(values[stage.input]))
                i += 1
                continue
            inputs = ops.aligned([ct for k in stage.inputs for ct in values[k]])
            scale = weight_scale(server, inputs[0].parms_id(), inputs[0].scale, self.weight_bits, i == last)
            after = stages[i + 1] if i < last else None
            # the activation right after, when it reads only this stage, runs in the same worker
            poly = after if (isinstance(after, PolyStage) and after.input == i
                             and self.compiled.users(i) == [i + 1] and self.compiled.output != i) else None

            def rows(lo: int, hi: int, stage: AffineStage = stage, inputs: list[Any] = inputs, scale: float = scale,
                     poly: PolyStage | None = poly) -> list[Any]:
                out = self._run_affine(ops, stage, inputs, scale, range(lo, hi))
                return self._poly_rows(ops, poly, out, lo, hi) if poly is not None else out

            out = rows(0, stage.out_size)
            if poly is not None:
                values[i], values[i + 1] = [], out
                i += 2
            else:
                values[i] = out
                i += 1
        return values[self.compiled.output]

    @staticmethod
    def _poly_rows(ops: _Ops, stage: PolyStage, cts: list[Any], lo: int, hi: int) -> list[Any]:
        """``stage`` on the ciphertexts of elements ``lo..hi`` (each with its own coefficients when fitted)."""
        if stage.fit is None:
            return [ops.polynomial(ct, stage) for ct in cts]
        coefficients = stage.fit.coefficients[lo:hi]
        return [ops.polynomial(ct, stage, list(c)) for ct, c in zip(cts, coefficients, strict=True)]

    def _run_affine(self, ops: _Ops, stage: AffineStage, cts: list[Any], scale: float, rows: range) -> list[Any]:
        """Output ``rows`` of ``stage``, weights encoded at ``scale``; rescaled unless in a square chain.

        Weights that round to zero at ``scale`` are skipped; a row left with none
        is a near-zero ciphertext SEAL accepts, plus the bias. Where the
        ciphertext buffers are accessible, the products run as one integer
        matrix product (:mod:`._raw`, the same bits as SEAL's calls below).
        """
        parms = cts[0].parms_id()
        block = stage.matrix[rows.start : rows.stop]
        if self.raw and all(ct.size() == 2 for ct in cts) and _raw.fits(ops.server.context, parms):
            accs = self._products_raw(ops, block, cts, scale)
        else:
            accs = self._products(ops, block, cts, scale)
        out = []
        for i, r in enumerate(rows):
            acc = accs[i]
            if acc is None:  # every weight of the row is (or rounds to) zero
                acc = ops.tiny(cts[0], scale)
            if not self.weight_bits:
                ops.rescale(acc)
            ops.add_scalar(acc, float(stage.bias[r]))
            out.append(acc)
        return out

    @staticmethod
    def _products_raw(ops: _Ops, block: np.ndarray, cts: list[Any], scale: float) -> list[Any]:
        """``block @ cts`` with every weight rounded as SEAL's scalar encoder does, by :func:`._raw.lincomb`."""
        parms = cts[0].parms_id()
        scales = np.array([scale * cts[0].scale / ct.scale for ct in cts])
        weights = _raw.seal_round(block * scales[None, :])
        used = np.flatnonzero(np.abs(weights).max(axis=0) > 0)
        out: list[Any] = [None] * len(block)
        if not len(used):
            return out
        product_scale = cts[0].scale * scale
        moduli = _raw.moduli_at(ops.server.context, parms)
        if math.log2(product_scale) >= _raw.log2_total(moduli):
            raise ValueError("scale out of bounds")  # what SEAL's multiply_plain would say
        sums = _raw.lincomb(weights[:, used], [_raw.buffer(cts[j]) for j in used], moduli)
        for r in np.flatnonzero(np.abs(weights[:, used]).max(axis=1) > 0):
            acc = ops.copy(cts[used[0]])
            _raw.buffer(acc)[...] = sums[r]
            acc.scale = product_scale
            out[r] = acc
        return out

    @staticmethod
    def _products(ops: _Ops, block: np.ndarray, cts: list[Any], scale: float) -> list[Any]:
        """``block @ cts`` by SEAL's multiply_plain and add_inplace, column by column."""
        parms = cts[0].parms_id()
        ev, encode = ops.ev, ops.server.encode
        accs: list[Any] = [None] * len(block)
        term = ops.new()
        # Column by column: each input ciphertext is read from memory once and stays in
        # cache while it is added into every row that uses it (row by row streams all
        # inputs once per row). Scalar plaintexts are cheap to encode and large to keep.
        # Inputs from different values (a residual) can differ in scale: each column's weights
        # are encoded to bring its products to the first column's scale.
        scales = np.array([scale * cts[0].scale / ct.scale for ct in cts])
        for j in np.flatnonzero(np.abs(block).max(axis=0) * scales >= 0.5):
            ct, column = cts[j], block[:, j]
            for k in np.flatnonzero(np.abs(column) * scales[j] >= 0.5):
                plain = encode(float(column[k]), parms, float(scales[j]))
                if plain.is_zero():
                    continue
                if accs[k] is None:
                    accs[k] = ops.new()
                    ev.multiply_plain(ct, plain, accs[k])
                else:
                    ev.multiply_plain(ct, plain, term)
                    if term.scale != accs[k].scale:
                        ops.match_scale(term, accs[k].scale)
                    ev.add_inplace(accs[k], term)
        return accs
