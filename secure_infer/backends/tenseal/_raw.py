"""Batch-mode affine stages as integer matrix products on SEAL's ciphertext buffers.

In batch mode an affine stage is ``y_r = sum_i W[r, i] * x_i`` over whole
ciphertexts. SEAL encodes a scalar weight at scale ``D`` as the constant
``c = round(W * D)`` at every NTT point, so ``multiply_plain`` then
``add_inplace`` compute, for every prime ``q`` of the level and every
coefficient, ``sum_i c_i * x_i mod q``. One call per weight does that at
about 4 ns per coefficient; the same sums as a matrix product ``C @ X`` run
in BLAS at a fraction of the time. This module does exactly that and gives
the same bits as SEAL (``tests/backends/test_tenseal_raw.py`` compares them):

- ``C`` and ``X`` are cut into limbs small enough that every partial product
  sum is an exact integer in float64 (``|sum| < 2^52``);
- each partial sum is reduced mod ``q`` and multiplied by its limb weight
  ``2^k mod q`` with a floating-point quotient estimate, exact for primes
  below ``2^56`` (the batch square chain's are 52-54 bits); a level with a
  larger prime is left to SEAL;
- rows that read the same inputs (a convolution's output channels at one
  position) share one product, so a convolution costs its kernel's
  multiply-adds, not a dense matrix's.

TenSEAL's SEAL binding gives no pointer to a ciphertext's coefficients, so
:func:`buffer` finds it inside the C++ object (behind the pybind11 instance)
and checks the find against the binding's own accessors (the fields, sample
coefficients read through ``dyn_array().at``, and a write seen through it)
before any use; if anything differs (another
TenSEAL build), :func:`available` is False and SEAL does the work.
"""

from __future__ import annotations

import ctypes
import math
from functools import lru_cache
from typing import Any

import numpy as np

MAX_PRIME_BITS = 56
"""Largest prime the floating-point quotient estimate reduces exactly (see ``_mulmod``)."""
EXACT_BITS = 52
"""float64 holds every integer below 2^53: partial sums are kept below 2^52."""
COLUMNS = 2048
"""Coefficients per product: small enough that a chunk of every input stays in cache."""

# seal::Ciphertext (SEAL 4.x): parms_id_ (4 x u64), is_ntt_form_, size_, poly_modulus_degree_,
# coeff_modulus_size_, scale_, correction_factor_, then DynArray data_ {pool_ (shared_ptr), capacity_,
# size_, Pointer data_}. Offsets in bytes; checked by _verify before use.
_NTT, _SIZE, _DEGREE, _PRIMES, _SCALE, _COUNT, _DATA = 32, 40, 48, 56, 64, 104, 112
_HOLDER = 16  # pybind11 instance: PyObject_HEAD, then the value pointer (simple layout)


def _readable() -> list[tuple[int, int]]:
    """Readable address ranges of this process (so a wrong guess is never dereferenced)."""
    ranges = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                span, perms = line.split()[:2]
                if perms.startswith("r"):
                    lo, hi = span.split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return ranges


def _inside(address: int, size: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= address and address + size <= hi for lo, hi in ranges)


def _u64(address: int) -> int:
    return int(ctypes.c_uint64.from_address(address).value)


def _address(ct: Any) -> int:
    return int(ctypes.c_void_p.from_address(id(ct) + _HOLDER).value or 0)


def _view(ct: Any) -> np.ndarray:
    count = ct.size() * ct.coeff_modulus_size() * ct.poly_modulus_degree()
    pointer = _u64(_address(ct) + _DATA)
    return np.ctypeslib.as_array((ctypes.c_uint64 * count).from_address(pointer))


def _verify(ct: Any) -> bool:
    """Whether the offsets above describe ``ct`` exactly (fields, coefficients, and a write)."""
    ranges = _readable()
    obj = _address(ct)
    if not obj or not _inside(obj, _DATA + 8, ranges):
        return False
    size, degree, primes = ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size()
    count = size * degree * primes
    if (_u64(obj + _SIZE), _u64(obj + _DEGREE), _u64(obj + _PRIMES), _u64(obj + _COUNT)) != (size, degree, primes, count):
        return False
    if ctypes.c_double.from_address(obj + _SCALE).value != ct.scale or _u64(obj + _NTT) & 0xFF != ct.is_ntt_form():
        return False
    pointer = _u64(obj + _DATA)
    if not _inside(pointer, 8 * count, ranges):
        return False
    data = _view(ct)
    probes = sorted({0, 1, degree, count // 2, count - 1})
    if any(int(data[i]) != int(ct.dyn_array().at(i)) for i in probes):
        return False
    if any(int(data[p * degree * primes]) != int(ct.data(p)) for p in range(size)):  # data(p): poly p's first
        return False
    saved = int(data[count - 1])
    data[count - 1] = saved ^ 1
    seen = int(ct.dyn_array().at(count - 1))
    data[count - 1] = saved
    return seen == saved ^ 1 and int(ct.dyn_array().at(count - 1)) == saved


@lru_cache(maxsize=1)
def _checked() -> bool:
    import tenseal.sealapi as seal

    from secure_infer.backends.tenseal._params import CKKSParameters
    from secure_infer.backends.tenseal._seal import seal_context

    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    try:
        context = seal_context(CKKSParameters(8192, (40, 30, 40), 30))
        encoder, keys = seal.CKKSEncoder(context), seal.KeyGenerator(context)
        plain, ct = seal.Plaintext(), seal.Ciphertext(context)
        encoder.encode([0.25] * 4096, 2.0**30, plain)
        seal.Encryptor(context, keys.secret_key()).encrypt_symmetric(plain, ct)
        fresh = seal.Ciphertext(context)
        fresh.resize(context, context.first_parms_id(), 2)
        return _verify(ct) and ct.is_ntt_form() and _verify(fresh) and not fresh.is_ntt_form()
    except Exception:  # noqa: BLE001 - any surprise means: leave the work to SEAL
        return False


def available() -> bool:
    """Whether ciphertext buffers can be read and written here (checked once per process)."""
    return _checked()


def buffer(ct: Any) -> np.ndarray:
    """``ct``'s coefficients, ``(size, primes, degree)`` uint64, writable in place (keep ``ct`` alive)."""
    if not available():
        raise RuntimeError("ciphertext buffers are not accessible in this TenSEAL build")
    return _view(ct).reshape(ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())


def seal_round(values: np.ndarray) -> np.ndarray:
    """What SEAL's scalar encoder puts in the plaintext: ``std::round`` (halves away from zero), as int64."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def _mulmod(r: np.ndarray, factor: int, q: int) -> np.ndarray:
    """``r * factor mod q`` for ``0 <= r, factor < q < 2^56``: the quotient from float64 is off by at most
    a few units, so the wrapped 64-bit remainder is the true one, within (-2^61, 2^61), then reduced."""
    quotient = np.floor(r.astype(np.float64) * (factor / q)).astype(np.uint64)
    rest = (r * np.uint64(factor) - quotient * np.uint64(q)).view(np.int64)
    return np.mod(rest, np.int64(q)).view(np.uint64)


def _limbs(bits: int, width: int) -> list[int]:
    """Shifts that cut a ``bits``-bit number into limbs of ``width`` bits."""
    return list(range(0, max(bits, 1), width))


def _groups(c: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows with the same nonzero columns, as ``(rows, columns)``: each group is one dense product."""
    by_pattern: dict[bytes, list[int]] = {}
    mask = c != 0
    for r in range(c.shape[0]):
        if mask[r].any():
            by_pattern.setdefault(np.packbits(mask[r]).tobytes(), []).append(r)
    return [(np.array(rows), np.flatnonzero(mask[rows[0]])) for rows in by_pattern.values()]


def _widths(groups: list[tuple[np.ndarray, np.ndarray]], cbits: int, xbits: int) -> tuple[int, list[int]]:
    """Limb widths for the inputs (shared) and each group's weights with the fewest multiply-adds,
    every partial sum below 2^52 (``columns * 2^cw * 2^xw``)."""
    best: tuple[float, int, list[int]] | None = None
    for xw in range(8, EXACT_BITS - 8):
        cws = [EXACT_BITS - max(len(cols), 1).bit_length() - xw for _, cols in groups]
        if min(cws) < 1:
            continue
        work = sum(len(rows) * len(cols) * len(_limbs(cbits, cw)) for (rows, cols), cw in zip(groups, cws, strict=True))
        work *= len(_limbs(xbits, xw))
        if best is None or work < best[0]:
            best = (work, xw, cws)
    assert best is not None
    return best[1], best[2]


def lincomb(c: np.ndarray, x: list[np.ndarray], moduli: list[int]) -> np.ndarray:
    """``c @ x`` modulo each prime: ``c`` (rows, inputs) int64, ``x`` one (polys, primes, degree) uint64
    buffer per input, prime ``l``'s residues below ``moduli[l]``. Returns (rows, polys, primes, degree)
    uint64; rows whose weights are all zero come back zero."""
    rows = c.shape[0]
    polys, primes, degree = x[0].shape
    if max(moduli).bit_length() > MAX_PRIME_BITS:
        raise ValueError(f"primes above {MAX_PRIME_BITS} bits need SEAL's arithmetic")
    out = np.zeros((rows, polys, primes, degree), dtype=np.uint64)
    groups = _groups(c)
    if not groups:
        return out
    cbits = max(int(np.abs(c).max()).bit_length(), 1)
    xw, cws = _widths(groups, cbits, max(moduli).bit_length())
    plans = []
    for (members, columns), cw in zip(groups, cws, strict=True):
        block = c[np.ix_(members, columns)]
        sign, magnitude = np.sign(block), np.abs(block)
        limbs = {a: (sign * ((magnitude >> a) & ((1 << cw) - 1))).astype(np.float64) for a in _limbs(cbits, cw)}
        dense = len(columns) == len(x) and bool((columns == np.arange(len(x))).all())
        plans.append((members, None if dense else columns, limbs))
    chunk = np.empty((len(x), min(COLUMNS, degree)), dtype=np.uint64)
    mask = np.uint64((1 << xw) - 1)
    for level, q in enumerate(moduli):
        x_shifts = _limbs(q.bit_length(), xw)
        factors = {s: pow(2, s, q) for s in range(0, 2 * EXACT_BITS + q.bit_length())}
        for p in range(polys):
            for start in range(0, degree, COLUMNS):
                stop = min(start + COLUMNS, degree)
                values = chunk[:, : stop - start]
                for i, buf in enumerate(x):
                    values[i] = buf[p, level, start:stop]
                x_limbs = {k: ((values >> np.uint64(k)) & mask).astype(np.float64) for k in x_shifts}
                for members, read, limbs in plans:
                    total = np.zeros((len(members), stop - start), dtype=np.uint64)
                    for a, c_limb in limbs.items():
                        for k, x_limb in x_limbs.items():
                            part = c_limb @ (x_limb if read is None else x_limb[read])  # exact: every sum < 2^52
                            residue = np.mod(part.astype(np.int64), np.int64(q)).view(np.uint64)
                            if factors[a + k] != 1:
                                residue = _mulmod(residue, factors[a + k], q)
                            total += residue  # a few terms below 2^56: no wrap
                    out[members, p, level, start:stop] = total % np.uint64(q)
    return out


_MAGIC = b"SIRAWCT1"
_HEADER = np.dtype([("magic", "S8"), ("parms_id", "<u8", 4), ("scale", "<f8"), ("size", "<u8"),
                    ("primes", "<u8"), ("degree", "<u8")])


def to_bytes(ct: Any) -> bytes:
    """A ciphertext as its level, scale and raw coefficients: no compression, for processes on one host
    (SEAL's own format compresses, at about 3 ms a ciphertext; this is a copy)."""
    header = np.zeros((), dtype=_HEADER)
    header["magic"], header["parms_id"], header["scale"] = _MAGIC, list(ct.parms_id()), ct.scale
    header["size"], header["primes"], header["degree"] = ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree()
    return header.tobytes() + buffer(ct).tobytes()


def from_bytes(context: Any, data: bytes) -> Any:
    """The ciphertext :func:`to_bytes` wrote, checked as SEAL checks a load: a level of ``context``, sizes that
    match it, every coefficient below its prime. ``ValueError`` otherwise."""
    import tenseal.sealapi as seal

    if len(data) < _HEADER.itemsize:
        raise ValueError("not a raw ciphertext: too short")
    header = np.frombuffer(data, dtype=_HEADER, count=1)[0]
    if bytes(header["magic"]) != _MAGIC:
        raise ValueError("not a raw ciphertext: bad magic")
    parms_id = [int(v) for v in header["parms_id"]]
    context_data = context.get_context_data(parms_id)
    if context_data is None:
        raise ValueError("a raw ciphertext at a level these parameters do not have")
    moduli = [int(m.value()) for m in context_data.parms().coeff_modulus()]
    size, primes, degree = int(header["size"]), int(header["primes"]), int(header["degree"])
    scale = float(header["scale"])
    if (primes != len(moduli) or degree != context_data.parms().poly_modulus_degree() or not 2 <= size <= 3
            or len(data) != _HEADER.itemsize + 8 * size * primes * degree or not 0 < scale < 2.0 ** 600):
        raise ValueError("a raw ciphertext whose sizes or scale do not match its level")
    values = np.frombuffer(data, dtype="<u8", offset=_HEADER.itemsize).reshape(size, primes, degree)
    if (values >= np.array(moduli, dtype=np.uint64)[None, :, None]).any():
        raise ValueError("a raw ciphertext with a coefficient outside its prime")
    ct = seal.Ciphertext(context)
    ct.resize(context, parms_id, size)
    buffer(ct)[...] = values
    ct.scale = scale
    ctypes.c_bool.from_address(_address(ct) + _NTT).value = True  # CKKS ciphertexts live in NTT form
    return ct


def moduli_at(context: Any, parms_id: Any) -> list[int]:
    """The primes of the level ``parms_id`` names."""
    return [int(m.value()) for m in context.get_context_data(parms_id).parms().coeff_modulus()]


def fits(context: Any, parms_id: Any) -> bool:
    """Whether :func:`lincomb` computes exactly at this level (and buffers are accessible)."""
    return available() and max(moduli_at(context, parms_id)).bit_length() <= MAX_PRIME_BITS


def log2_total(moduli: list[int]) -> float:
    return sum(math.log2(q) for q in moduli)
