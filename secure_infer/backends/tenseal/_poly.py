"""Polynomial activations for CKKS: fitted per element, bounded over every accepted input, evaluated at low depth.

An activation ``f`` whose input element ``j`` can take any value in
``[a_j, b_j]`` (found by bound propagation from the accepted input range, see
``_compile``) is replaced by the Chebyshev interpolant of
``g_j(u) = f(c_j + r_j u)`` on ``u`` in ``[-1, 1]``, with ``c_j, r_j`` the
interval's centre and half-width. The map ``x -> u`` is folded into the affine
stage before the activation, so every element uses its own interval and the
polynomial never sees a value it was not fitted for. Chebyshev interpolation
is within a small factor of the best polynomial of its degree, and its
coefficients stay small, which CKKS needs.

:func:`fit` returns the coefficients and, per element, the worst-case error
``sup |p_j - g_j|`` on the interval (on a dense grid, plus the most the error
can change between grid points), the range of ``p_j`` there and the
Lipschitz constant of ``f``: what bound propagation needs.

:class:`Chebyshev` evaluates a degree-``d`` Chebyshev series with
baby-step/giant-step recursion (as Paterson-Stockmeyer does for the power
basis): about ``2 sqrt(d) + log2(d)`` ciphertext products at depth
``ceil(log2(d + 1)) + 1``. It runs on any arithmetic given as an
:class:`Arithmetic` (numpy arrays in tests, levels for the depth, SEAL
ciphertexts), so the depth used to choose the parameters and the program that
runs are the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.polynomial import chebyshev as C
from torch import nn

GRID = 8193
"""Points per element where the interpolation error is measured (on [-1, 1])."""

DEGREES = (3, 7, 15, 31, 63, 127, 255)
"""The degrees tried, cheapest first: 2^k - 1 uses the whole depth ceil(log2(d + 1)) + 1."""


def activation_fn(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The activation as a float64 numpy function (the module itself, on a double tensor)."""

    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module.double()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()

    return f


@dataclass
class Fit:
    """Per-element Chebyshev interpolants and what bound propagation needs from them.

    Attributes:
        center, radius: the input interval of element ``j`` is ``center[j] +- radius[j]``
            (the interpolant reads ``u = (x - center) / radius``).
        coefficients: ``(elements, degree + 1)``, Chebyshev basis, in ``u``.
        error: per element, ``sup |p_j(u) - f(center + radius u)|`` over ``u`` in [-1, 1].
        low, high: per element, the range of ``p_j`` over [-1, 1].
        lipschitz: per element, ``sup |f'|`` on the interval.
        relaxation: linear bounds of ``p_j`` on [-1, 1], ``(slope_low, offset_low,
            slope_high, offset_high)`` with ``slope_low u + offset_low <= p_j(u) <=
            slope_high u + offset_high`` (for bound propagation).
    """

    center: np.ndarray
    radius: np.ndarray
    coefficients: np.ndarray
    error: np.ndarray
    low: np.ndarray
    high: np.ndarray
    lipschitz: np.ndarray
    relaxation: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    @property
    def degree(self) -> int:
        return int(self.coefficients.shape[1]) - 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The interpolants on raw inputs ``x`` shaped ``(n, elements)``."""
        u = (x - self.center) / self.radius
        return evaluate_series(u, self.coefficients)


def evaluate_series(u: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``sum_k c[j, k] T_k(u[..., j])`` by Clenshaw's recurrence; ``u`` is ``(..., elements)``."""
    b1 = np.zeros_like(u)
    b2 = np.zeros_like(u)
    for k in range(coefficients.shape[1] - 1, 0, -1):
        b1, b2 = 2.0 * u * b1 - b2 + coefficients[:, k], b1
    return u * b1 - b2 + coefficients[:, 0]


def _series_on_grid(t: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``(elements, len(t))``: each element's series on the common grid ``t``."""
    vander = C.chebvander(t, coefficients.shape[1] - 1)  # (grid, degree + 1)
    return coefficients @ vander.T


def fit(f: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray, degree: int,
        widen: float = 1e-3) -> Fit:
    """Interpolate ``f`` on each element's interval ``[low[j], high[j]]`` (widened by ``widen``).

    The widening keeps CKKS rounding noise (far smaller) from pushing an input
    just outside the fitted interval, where Chebyshev series grow fast.
    """
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    center = (low + high) / 2.0
    radius = (high - low) / 2.0
    radius = np.maximum(radius * (1.0 + widen), 1e-6 * np.maximum(1.0, np.abs(center)))
    k = np.arange(degree + 1)
    theta = np.pi * (k + 0.5) / (degree + 1)
    nodes = np.cos(theta)  # Chebyshev points of the first kind
    values = f(center[:, None] + radius[:, None] * nodes[None, :])  # (elements, degree + 1)
    basis = np.cos(np.outer(k, theta))  # T_k(nodes)
    coefficients = values @ basis.T * (2.0 / (degree + 1))
    coefficients[:, 0] /= 2.0
    t = np.linspace(-1.0, 1.0, GRID)
    h = t[1] - t[0]
    error = np.empty(len(center))
    out_low, out_high, lipschitz = np.empty_like(error), np.empty_like(error), np.empty_like(error)
    relaxation = (np.empty_like(error), np.empty_like(error), np.empty_like(error), np.empty_like(error))
    deriv = C.chebder(coefficients, axis=1) if degree > 0 else np.zeros((len(center), 1))
    step = max(1, 2_000_000 // GRID)
    for start in range(0, len(center), step):
        part = slice(start, start + step)
        p = _series_on_grid(t, coefficients[part])
        x = center[part, None] + radius[part, None] * t[None, :]
        fx = f(x)
        slope_p = np.abs(_series_on_grid(t, deriv[part])).max(axis=1)  # |dp/du|
        slope_f = np.abs(np.diff(fx, axis=1)).max(axis=1) / h  # |df/du| = r |f'|, between grid points
        # between grid points the error changes by at most h/2 * (|p'| + |g'|)
        slack = h / 2.0 * (slope_p + slope_f) * 1.01
        error[part] = np.abs(p - fx).max(axis=1) + slack
        out_low[part] = p.min(axis=1) - h / 2.0 * slope_p * 1.01
        out_high[part] = p.max(axis=1) + h / 2.0 * slope_p * 1.01
        lipschitz[part] = slope_f / radius[part] * 1.01
        ends = C.chebvander(np.array([-1.0, 1.0]), deriv.shape[1] - 1) @ deriv[part].T  # p' at -1 and +1
        for i, value in enumerate(linear_bounds(t, p, ends, slope_p, h)):
            relaxation[i][part] = value
    return Fit(center, radius, coefficients, error, out_low, out_high, lipschitz, relaxation)


def linear_bounds(x: np.ndarray, p: np.ndarray, end_slopes: np.ndarray, steepest: np.ndarray,
                  step: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, lines below and above ``p`` sampled at ``x`` (rows: elements), as CROWN chooses them.

    The candidates are the chord, slope 0 and the slopes at both ends; below and
    above, each row keeps the candidate that lies closest to ``p`` on average.
    Between samples ``p`` moves by at most ``step / 2 * steepest``, which the
    offsets allow for. ``x`` is ``(samples,)`` or ``(rows, samples)``.
    """
    xs = np.broadcast_to(x, p.shape)
    width = np.maximum(xs[:, -1] - xs[:, 0], 1e-300)
    chord = (p[:, -1] - p[:, 0]) / width
    candidates = np.stack([chord, np.zeros_like(chord), end_slopes[0], end_slopes[1]])  # (4, rows)
    best: list[np.ndarray] = []
    for below in (True, False):
        rest = p[None, :, :] - candidates[:, :, None] * xs[None, :, :]
        offset = rest.min(axis=2) if below else rest.max(axis=2)
        slack = np.asarray(step) / 2.0 * (steepest + np.abs(candidates)) * 1.01
        offset = offset - slack if below else offset + slack
        mean_line = candidates * xs.mean(axis=1)[None, :] + offset
        pick = mean_line.argmax(axis=0) if below else mean_line.argmin(axis=0)
        rows = np.arange(p.shape[0])
        best += [candidates[pick, rows], offset[pick, rows]]
    return best[0], best[1], best[2], best[3]


def relax_power_series(coefficients: np.ndarray, low: np.ndarray, high: np.ndarray,
                       grid: int = 2049) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear bounds (see :func:`linear_bounds`) of one power-basis polynomial on each ``[low[j], high[j]]``."""
    poly = np.polynomial.Polynomial(coefficients)
    deriv = poly.deriv() if len(coefficients) > 1 else np.polynomial.Polynomial([0.0])
    t = np.linspace(0.0, 1.0, grid)
    x = low[:, None] + (high - low)[:, None] * t[None, :]
    step = (high - low) / (grid - 1)
    return linear_bounds(x, poly(x), np.stack([deriv(low), deriv(high)]), np.abs(deriv(x)).max(axis=1), step)


class Arithmetic(Protocol):
    """What :class:`Chebyshev` needs from a number system (numpy, depth counting, CKKS).

    CKKS values carry a level and a scale; additions need equal scales. The
    evaluation keeps them equal by construction: ``product_minus`` subtracts
    before its one rescale, and ``lincomb`` encodes each coefficient so every
    term lands on the ``target`` scale, which ``target_for`` chooses so that a
    later product lands on the scale its sibling was given.
    """

    def level(self, a: Any) -> int: ...
    def mul(self, a: Any, b: Any) -> Any: ...
    def add(self, a: Any, b: Any) -> Any: ...
    def product_minus(self, a: Any, b: Any, c: Any | None) -> Any: ...
    def lincomb(self, terms: list[tuple[Any, Any]], const: Any, like: Any, target: float) -> Any: ...
    def target_for(self, target: float, factor: Any, level: int) -> float: ...


class Chebyshev:
    """Baby-step/giant-step evaluation of a Chebyshev series of fixed degree.

    ``coefficients`` are ``(degree + 1, ...)``: entry ``k`` multiplies
    ``T_k`` and may be a number or a per-slot vector (one polynomial per
    element). The result has scale ``target``.
    """

    def __init__(self, degree: int) -> None:
        if degree < 1:
            raise ValueError("degree must be >= 1")
        self.degree = degree
        self.baby = 1 << max(1, math.ceil(math.log2(degree + 1) / 2))
        self.giants = []
        k = self.baby
        while k <= degree:
            self.giants.append(k)
            k *= 2

    def evaluate(self, ops: Arithmetic, x: Any, coefficients: Any, target: float = 1.0) -> Any:
        """``sum_k coefficients[k] T_k(x)``."""
        powers = {1: x}
        for i in range(2, min(self.baby - 1, self.degree) + 1):
            half = i // 2
            if i % 2 == 0:  # T_2j = 2 T_j^2 - 1
                powers[i] = ops.product_minus(powers[half], powers[half], None)
            else:  # T_2j+1 = 2 T_j T_j+1 - T_1
                powers[i] = ops.product_minus(powers[half], powers[half + 1], x)
        for k in self.giants:
            powers[k] = ops.product_minus(powers[k // 2], powers[k // 2], None)
        levels = {i: ops.level(v) for i, v in powers.items()}
        return self._eval(ops, powers, levels, list(coefficients), x, target)

    def _split(self, c: list[Any]) -> tuple[int, list[Any], list[Any]]:
        """``p = q T_k + r`` in the Chebyshev basis (``T_k T_j = (T_k+j + T_k-j) / 2``)."""
        n = len(c) - 1
        k = max(g for g in self.giants if g <= n)
        q = [c[k]] + [2.0 * c[k + j] for j in range(1, n - k + 1)]
        r = list(c[:k])
        for j in range(1, n - k + 1):
            r[k - j] = r[k - j] - c[k + j]
        return k, q, r

    def _level(self, levels: dict[int, int], n: int, base: int) -> int:
        """The level ``_eval`` reaches for a series of degree ``n``."""
        if n < self.baby:
            return max([base, *(levels[i] for i in range(1, n + 1))]) + 1
        k = max(g for g in self.giants if g <= n)
        return max(self._level(levels, n - k, base), levels[k]) + 1

    def _eval(self, ops: Arithmetic, powers: dict[int, Any], levels: dict[int, int], c: list[Any], x: Any,
              target: float) -> Any:
        n = len(c) - 1
        if n < self.baby:
            return ops.lincomb([(powers[i], c[i]) for i in range(1, n + 1)], c[0], x, target)
        k, q, r = self._split(c)
        level = max(self._level(levels, len(q) - 1, levels[1]), levels[k])
        quotient = self._eval(ops, powers, levels, q, x, ops.target_for(target, powers[k], level))
        return ops.add(ops.mul(quotient, powers[k]), self._eval(ops, powers, levels, r, x, target))


class NumpyArithmetic:
    """Plain float64 arithmetic: the reference the CKKS evaluation is tested against."""

    def level(self, a: Any) -> int:
        return 0

    def mul(self, a: Any, b: Any) -> Any:
        return a * b

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def product_minus(self, a: Any, b: Any, c: Any | None) -> Any:
        return 2.0 * a * b - (1.0 if c is None else c)

    def lincomb(self, terms: list[tuple[Any, Any]], const: Any, like: Any, target: float) -> Any:
        out = np.zeros_like(like) + const
        for value, coefficient in terms:
            out = out + value * coefficient
        return out

    def target_for(self, target: float, factor: Any, level: int) -> float:
        return target


class DepthArithmetic:
    """Counts rescales: a value is its level; products and plaintext combinations cost one."""

    def level(self, a: int) -> int:
        return a

    def mul(self, a: int, b: int) -> int:
        return max(a, b) + 1

    def add(self, a: int, b: int) -> int:
        return max(a, b)

    def product_minus(self, a: int, b: int, c: int | None) -> int:
        return max(a, b) + 1

    def lincomb(self, terms: list[tuple[int, Any]], const: Any, like: int, target: float) -> int:
        return max([like, *(level for level, _ in terms)]) + 1

    def target_for(self, target: float, factor: Any, level: int) -> float:
        return target


def depth(degree: int) -> int:
    """Rescales :class:`Chebyshev` uses for ``degree``, counted by running it."""
    return int(Chebyshev(degree).evaluate(DepthArithmetic(), 0, [0.0] * (degree + 1)))
