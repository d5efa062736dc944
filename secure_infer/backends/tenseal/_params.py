"""CKKS parameters chosen from the program, always at 128-bit security.

The coefficient modulus is ``[first, scale x depth, special]``: one prime per
rescale, a first prime wide enough for the largest output value at the chosen
precision, and the special (key-switching) prime. The ring degree is the
smallest that fits those bits under the 128-bit bound of the HE security
standard (SEAL's ``CoeffModulus.MaxBitCount``) and holds the packed vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from secure_infer._errors import ParameterError

RING_DEGREES = (4096, 8192, 16384, 32768)


def max_bits_128(poly_modulus_degree: int) -> int:
    """Largest total coefficient-modulus size with 128-bit security (HE standard)."""
    import tenseal.sealapi as seal

    return int(seal.CoeffModulus.MaxBitCount(poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128))


@dataclass(frozen=True)
class CKKSParameters:
    """What the program runs under; shown in the report.

    Attributes:
        poly_modulus_degree: ring degree N (slots = N / 2).
        coeff_mod_bit_sizes: prime sizes, first to special.
        scale_bits: log2 of the encoding scale (precision of each level).
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Rescales available: primes minus the first and the special one."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    def validate(self) -> None:
        """Refuse anything that is not 128-bit secure or cannot run."""
        if self.poly_modulus_degree not in RING_DEGREES:
            raise ParameterError(
                f"poly_modulus_degree must be one of {RING_DEGREES}, got {self.poly_modulus_degree}"
            )
        bound = max_bits_128(self.poly_modulus_degree)
        if self.total_bits > bound:
            raise ParameterError(
                f"coeff_mod_bit_sizes {list(self.coeff_mod_bit_sizes)} total {self.total_bits} bits; "
                f"poly_modulus_degree={self.poly_modulus_degree} allows at most {bound} bits at "
                "128-bit security. Use a larger poly_modulus_degree or fewer/smaller primes; "
                "secure-infer does not run below 128-bit security"
            )
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ParameterError("coeff_mod_bit_sizes needs at least a first, one level and a special prime")
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bit_sizes):
            raise ParameterError("each CKKS prime must be between 20 and 60 bits")
        if self.coeff_mod_bit_sizes[-1] < self.coeff_mod_bit_sizes[0]:
            raise ParameterError("the special (last) prime must be at least as large as the first")

    def describe(self) -> str:
        return (f"N={self.poly_modulus_degree} ({self.slots} slots), primes {list(self.coeff_mod_bit_sizes)} "
                f"= {self.total_bits} bits (<= {max_bits_128(self.poly_modulus_degree)} for 128-bit security), "
                f"scale 2^{self.scale_bits}, depth {self.depth}")


def choose(depth: int, *, max_abs_output: float, slots_needed: int, scale_bits: int | None = None,
           min_scale_bits: int = 25) -> CKKSParameters:
    """The smallest 128-bit-secure parameters for ``depth`` rescales.

    ``max_abs_output`` (seen on calibration data, with margin) sizes the first
    prime so decryption cannot wrap around; ``slots_needed`` the ring.
    ``min_scale_bits`` is the coarsest scale accepted (high-degree polynomial
    series amplify rounding: programs with fitted activations ask for 30).
    """
    if depth < 0:
        raise ParameterError("depth must be >= 0")
    headroom = max(1, math.ceil(math.log2(max(max_abs_output, 1.0) * 4)))  # 4x margin
    for n in RING_DEGREES:
        if n // 2 < slots_needed:
            continue
        bound = max_bits_128(n)
        for scale in ([scale_bits] if scale_bits else [b for b in (40, 36, 33, 30, 29, 28, 27, 26, 25) if b >= min_scale_bits]):
            first = scale + headroom + 1
            if first > 60:
                continue  # the output would not fit above this scale

            special = max(first, min(60, scale + 10))
            sizes = (first, *([scale] * depth), special)
            if sum(sizes) <= bound:
                params = CKKSParameters(n, sizes, scale)
                params.validate()
                return params
    raise ParameterError(
        f"no 128-bit-secure CKKS parameters fit depth {depth} with {slots_needed} slots; "
        "reduce the model's multiplicative depth (fewer layers, lower polynomial degree)"
    )


def choose_square_chain(pairs: int, *, max_abs_output: float, slots_needed: int = 1,
                        candidates: tuple[tuple[int, int], ...] | None = None) -> tuple[CKKSParameters, int] | None:
    """Fewer, larger primes for batch-mode square networks: ``affine (x^2 affine) x pairs``.

    With scalar weights encoded at a modest scale ``2^w`` (rounding error
    ``2^-(w+1)`` per weight), an affine layer and the square after it can
    share one rescale by a prime of ``s + 2w`` bits, instead of one prime
    each; the last affine layer is not rescaled at all. The CryptoNets-shaped
    reference network then runs on 4 primes instead of 7: every operation
    touches about half the data. The special prime gets the bits left under
    the bound: latency mode rotates inputs at scale ``2^s``, where a key
    switch's noise (about ``N * q / P`` for data prime ``q`` and special prime
    ``P``) is what limits precision; on the tutorial ConvNet three more bits
    took the max logit error from 2.4e-3 to 7.6e-4-9.3e-4 (four runs), at no
    cost in time. Returns the parameters and ``w``, or None when no such
    chain fits under 128-bit security (the caller falls back to
    :func:`choose`).
    """
    if pairs < 1:
        return None
    headroom = max(1, math.ceil(math.log2(max(max_abs_output, 1.0) * 4)))
    for n in RING_DEGREES:  # the smallest ring first: it decides the cost of every operation
        if n // 2 < slots_needed:
            continue
        for s, w in candidates or ((26, 17), (24, 17), (22, 17), (22, 16), (21, 16), (20, 16)):
            merged = s + 2 * w
            first = s + w + headroom + 1
            if merged > 60 or first > 60:
                continue
            body = (first, *([merged] * pairs))
            # the special prime takes whatever bits the bound leaves (up to 60): each bit it has over the
            # data primes halves the noise of a key switch, which here acts on inputs at only 2^s
            sizes = (*body, max(first, merged, min(60, max_bits_128(n) - sum(body))))
            if sum(sizes) <= max_bits_128(n):
                params = CKKSParameters(n, sizes, s)
                params.validate()
                return params, w
    return None
