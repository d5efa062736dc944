"""Publishing PATE's data-dependent epsilon: smooth sensitivity (Papernot et al. 2018, Appendix C).

What: the data-dependent epsilon of :func:`secure_infer.pate.analysis.epsilon`
is computed from the private votes, so publishing it as is discloses a little
about them. :func:`release` publishes it the way the paper does: at one Renyi
order ``lambda`` the data-dependent RDP ``f(D)`` (a sum over queries) is
released as ``f(D) + SS(D) * sigma * Z`` with ``Z ~ N(0, 1)``, where ``sigma`` is
fixed in advance and ``SS`` is a beta-smooth upper bound on ``f``'s local
sensitivity (Nissim, Raskhodnikova and Smith 2007). That release is itself (lambda, eps_ss)-RDP (Theorem 23 of
the paper), and the figure published is the noisy RDP plus that cost,
converted to (epsilon, delta).

Why a bound of our own for the local sensitivity: the paper's Algorithm 3-5
walk vote histograms along one path and rest on monotonicity conditions
checked symbolically per parameter set. Here the bound is built so that it
holds by construction, at a small cost in tightness:

- A teacher changing its vote moves every query's histogram by one vote;
  ``d`` changed teachers move each by at most ``d``. Over all histograms
  within ``d`` moves, Proposition 7's ``q`` lies in an interval computed from
  the gaps between the top count and the others (at most ``d`` votes leave the
  top class and at most ``d`` reach the others; the whole range once the top
  class could change).
- Proposition 13's bounds ``bl(q) <= q' <= bu(q)`` on a neighbour's ``q`` and a
  monotone (non-decreasing in ``q``) version of Theorem 6's bound ``H`` give,
  on each cell ``[a, b]`` of a fine grid of ``q``, the bound
  ``max(H(bu(b)) - H(a), H(b) - H(bl(a)))`` on the local sensitivity of any
  histogram whose ``q`` lies in the cell; the bound at distance ``d`` is the
  largest over the cells the interval meets.
- The threshold check's cost depends only on the top count, which ``d``
  moves change by at most ``d``: its bound is the largest one-vote change of
  that cost over the reachable top counts, computed exactly.

Bounds at distance ``d`` never exceed those of a neighbouring data set at
``d + 1`` (intervals only grow), which is what makes
``SS(D) = max_d exp(-beta d) U(D, d)`` beta-smooth. The tests check the bound
against the exact local sensitivity of every histogram within reach, for
small ensembles.

What must not depend on the votes: the order, ``beta`` and ``sigma``
(:class:`SmoothParams`). Theorem 23 holds for a ``sigma`` fixed in advance;
chosen on the votes to be published (as the paper's tuning code does, which
says its results cannot be released), the noise scale itself would disclose
them. So they are an input, and :func:`suggest` sizes them from a smooth
sensitivity measured elsewhere. Only ``epsilon`` is published; the smooth
sensitivity and the noise's deviation are diagnostics. The monotone ``H``
may exceed Theorem 6's bound where that bound is not monotone, which only
raises the figure.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from secure_infer._errors import ParameterError
from secure_infer.pate import analysis
from secure_infer.pate.aggregation import Aggregator

__all__ = ["SmoothParams", "SmoothRelease", "epsilon_with_release", "local_sensitivity", "rdp_gnss", "release",
           "smooth_sensitivity", "suggest"]

_STEP = 0.005  # grid step in the equal-gap coordinate z = gap / (sqrt(2) sigma)


@dataclass(frozen=True)
class SmoothParams:
    """How the release adds noise, fixed before the votes are seen (Theorem 23 needs them fixed).

    Attributes:
        order: the Renyi order the data-dependent RDP is released at.
        beta: the smoothness of the sensitivity bound; ``2 * order * beta < 1``.
        sigma: the noise is ``sigma`` times the smooth sensitivity.

    The trade-off: a larger ``sigma`` costs less privacy (``order e^(2 beta) / sigma^2``)
    but adds more noise to the published figure. Choosing them on the votes
    to be published would itself disclose the votes; choose them from other
    data or a previous run (:func:`suggest` gives the best ones for a given
    smooth sensitivity).
    """

    order: float
    beta: float
    sigma: float

    def __post_init__(self) -> None:
        if not (self.order > 1 and self.beta >= 0 and 2 * self.order * self.beta < 1 and self.sigma > 0):
            raise ParameterError(f"smooth-sensitivity parameters need order > 1, beta >= 0, 2 * order * beta < 1 and "
                                 f"sigma > 0 (Theorem 23); got order {self.order}, beta {self.beta}, "
                                 f"sigma {self.sigma}")


@dataclass(frozen=True)
class SmoothRelease:
    """A data-dependent epsilon published through smooth-sensitivity noise.

    Publishable: ``epsilon``, ``params``, ``delta``, ``release_rdp`` (none of
    them reads the votes except through ``epsilon``'s noise). The rest are
    diagnostics computed from the votes, for experiments; publishing them
    would disclose the votes.

    Attributes:
        epsilon: the published figure: the data-dependent RDP at ``params.order``
            plus noise plus the release's own cost, as (epsilon, delta).
        params: the noise settings.
        delta: the delta every epsilon is stated at.
        release_rdp: what publishing ``epsilon`` costs, in RDP at ``params.order``
            (data-independent; everyone's cost, a curious silo's included, grows by it).
        epsilon_expected: diagnostic: the figure's mean.
        noise_std: diagnostic: the standard deviation of the figure's noise.
        epsilon_unreleased: diagnostic: the data-dependent epsilon at ``params.order`` before the release.
        smooth_sensitivity: diagnostic: ``SS(D)``, in RDP units at ``params.order``.
    """

    epsilon: float
    params: SmoothParams
    delta: float
    release_rdp: float
    epsilon_expected: float
    noise_std: float
    epsilon_unreleased: float
    smooth_sensitivity: float


def rdp_gnss(beta: float, sigma: float, order: float) -> float:
    """Theorem 23: RDP at ``order`` of releasing ``f + SS * sigma * N(0, 1)`` with a beta-smooth ``SS``."""
    if not (beta >= 0 and 1 < order and 2 * order * beta < 1):
        raise ParameterError(f"Theorem 23 needs order > 1 and 0 <= beta < 1 / (2 order); got order {order}, "
                             f"beta {beta}")
    first = 0.0 if math.isinf(sigma) else order * math.exp(2 * beta) / sigma**2
    return first + (beta * order - 0.5 * math.log1p(-2 * order * beta)) / (order - 1)


class _GNMaxCells:
    """Theorem 6's bound on a grid of q, made monotone, and each grid cell's local-sensitivity bound.

    The grid runs in the equal-gap coordinate z (q = (m - 1) P[N(0,1) > z]) from
    the cap on q (:func:`analysis.log_q_gnmax`) to past every gap the distances
    reach. ``H`` at any q is the monotone bound at the grid point just above q
    (q rounded up); that step function is what :func:`_bounds` sums and bounds.
    """

    def __init__(self, sigma: float, classes: int, teachers: int, orders: np.ndarray) -> None:
        self.sigma, self.m = sigma, classes
        self.log_cap = math.log1p(-1.0 / classes)
        self.shift = math.sqrt(2) / sigma  # one vote moves every gap by at most 2: z by 2 / (sqrt(2) sigma)
        z_cap = float(stats.norm.isf((1.0 - 1.0 / classes) / (classes - 1)))
        top = (3 * teachers + 2) / (math.sqrt(2) * sigma) + 1.0  # beyond every gap + 2d the distances reach
        self.z = np.arange(z_cap, max(top, z_cap + 1.0) + _STEP, _STEP)
        self.log_q = self._log_q(self.z)  # decreasing in z
        self.neg = -self.log_q  # increasing, for searchsorted
        raw = np.array([analysis.rdp_gnmax(float(lq), sigma, orders) for lq in self.log_q])  # (grid, orders)
        self.h = np.maximum.accumulate(raw[::-1], axis=0)[::-1]  # h[j] = max over q <= q_j: monotone in q
        up = self.at(self._log_q(self.z - self.shift))  # H(bu(q_j)), Proposition 13
        down = self.at(self._log_q(self.z + self.shift))  # H(bl(q_j))
        # cell j < K spans q_{j+1}..q_j; cell K spans (0, q_K], where H is h[K] throughout
        low_h = np.vstack([self.h[1:], self.h[-1:]])
        low_down = np.vstack([down[1:], self.h[-1:]])
        self.cells = np.maximum(up - low_h, self.h - low_down)  # (cells, orders)

    def _log_q(self, z: np.ndarray) -> np.ndarray:
        """Proposition 7's q for m - 1 equal gaps at z, capped as :func:`analysis.log_q_gnmax` caps it."""
        return np.minimum(math.log(self.m - 1) + stats.norm.logsf(z), self.log_cap)

    def at(self, log_q: np.ndarray) -> np.ndarray:
        """The step function H at these log q: the monotone bound at the grid point just above each (rows)."""
        idx = np.searchsorted(self.neg, -np.asarray(log_q, dtype=np.float64), side="right") - 1
        return self.h[np.clip(idx, 0, len(self.h) - 1)]

    def cell_range(self, log_hi: float, log_lo: float) -> tuple[int, int]:
        """First and last cell whose q-range meets [exp(log_lo), exp(log_hi)]."""
        first = max(int(np.searchsorted(self.neg, -log_hi, side="left")) - 1, 0)
        last = int(np.searchsorted(self.neg, -log_lo, side="right")) - 1
        return first, max(min(last, len(self.neg) - 1), first)


@functools.lru_cache(maxsize=8)
def _cells(sigma: float, classes: int, teachers: int, orders: tuple[float, ...]) -> _GNMaxCells:
    """One grid per noise, ensemble and orders: the release and repeated analyses share it."""
    return _GNMaxCells(sigma, classes, teachers, np.array(orders))


def _q_interval(gaps: np.ndarray, sigma: float, distances: np.ndarray, log_cap: float) -> tuple[np.ndarray, np.ndarray]:
    """log q bounds over every histogram within d moves: (upper, lower), one per d.

    d moves take at most d votes from the top class (every gap shrinks by
    that much) and give at most d votes to the others (the gaps of the
    classes receiving them shrink by as much again, d in all). While no gap
    can close, each term of q is convex in its gap, so the largest q gives all
    d extra votes to one class. Conversely each gap grows by at most 2 per move.
    """
    scale = math.sqrt(2) * sigma
    d = distances[:, None]
    base = stats.norm.logsf((gaps[None, :] - d) / scale)  # (distances, classes - 1)
    extra = stats.norm.logsf((gaps[None, :] - 2 * d) / scale)
    total = special.logsumexp(base, axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        gain = extra + np.log(-np.expm1(np.minimum(base - extra, 0.0)))  # log(Phi(extra) - Phi(base)) per class
    hi = np.minimum(np.logaddexp(total, gain).max(axis=1), log_cap)
    lo = special.logsumexp(stats.norm.logsf((gaps[None, :] + 2 * d) / scale), axis=1)
    can_flip = 2 * distances >= gaps.min()  # the top class could change (or tie): q anywhere
    hi[can_flip] = log_cap
    lo[can_flip] = -math.inf
    return hi, lo


def _grown_max(values: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """max(values[first[d] : last[d] + 1]) for ranges that only grow with d: (len(first), columns)."""
    a, b = int(first[0]), int(last[0])
    left = np.maximum.accumulate(values[: a + 1][::-1], axis=0)[::-1]  # left[j] = max(values[j : a + 1])
    right = np.maximum.accumulate(values[b:], axis=0)  # right[t] = max(values[b : b + t + 1])
    middle = values[a : b + 1].max(axis=0)
    return np.maximum(np.maximum(left[first], right[last - b]), middle)


def _bounds(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator,
            alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query data-dependent RDP as released (queries, orders) and ``U(D, d)`` (d = 0..teachers, orders)."""
    votes = np.asarray(votes, dtype=np.float64)
    labels = np.asarray(labels)
    if votes.ndim != 2 or len(labels) != len(votes) or votes.shape[1] < 2 or len(votes) == 0:
        raise ParameterError(f"votes must be (queries >= 1, classes >= 2) with one label per query; got votes "
                             f"{votes.shape} and {len(labels)} labels")
    teachers = int(round(votes[0].sum()))
    if np.any(np.abs(votes.sum(axis=1) - teachers) > 1e-9):
        raise ParameterError("every query's votes must add up to the same number of teachers")
    d = np.arange(teachers + 1)
    costs = np.zeros((len(votes), len(alphas)))
    bound = np.zeros((teachers + 1, len(alphas)))
    if aggregator.confident:
        g = np.array([analysis.rdp_threshold(float(v), float(aggregator.threshold),  # type: ignore[arg-type]
                                             aggregator.sigma_threshold, alphas) for v in d])
        step = np.abs(np.diff(g, axis=0))  # step[v] = |g(v + 1) - g(v)|
        pad = np.zeros((1, len(alphas)))
        one = np.maximum(np.vstack([step, pad]), np.vstack([pad, step]))  # the largest one-vote change from v
        for i, most in enumerate(votes.max(axis=1).round().astype(int)):
            costs[i] += g[most]
            bound += _grown_max(one, np.clip(most - d, 0, teachers), np.clip(most + d, 0, teachers))
    answered = np.flatnonzero(labels >= 0)
    if len(answered):
        cells = _cells(aggregator.sigma, votes.shape[1], teachers, tuple(alphas.tolist()))
        for query in answered.tolist():
            row = votes[query]
            costs[query] += cells.at(np.array([analysis.log_q_gnmax(row, aggregator.sigma)]))[0]
            winner = int(np.argmax(row))
            log_hi, log_lo = _q_interval(np.delete(row[winner] - row, winner), aggregator.sigma, d.astype(float),
                                         cells.log_cap)
            ranges = np.array([cells.cell_range(h, lo) for h, lo in zip(log_hi, log_lo, strict=True)])
            bound += _grown_max(cells.cells, np.minimum.accumulate(ranges[:, 0]),
                                np.maximum.accumulate(ranges[:, 1]))
    return costs, bound


def local_sensitivity(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator,
                      orders: np.ndarray | float) -> np.ndarray:
    """``U(D, d)``, (d = 0..teachers, orders): a bound on the local sensitivity of the summed data-dependent RDP.

    Bounds ``|f(D'') - f(D')|`` over every ``D''`` within ``d`` changed teachers of
    ``D`` and every neighbour ``D'`` of ``D''``, where ``f`` is the data-dependent
    RDP with ``aggregator``'s noise that :func:`release` publishes. ``labels``
    say which queries were answered (-1: declined), as released.
    """
    alphas = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    return _bounds(votes, labels, aggregator, alphas)[1]


def smooth_sensitivity(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator, *, order: float,
                       beta: float) -> float:
    """``SS(D) = max_d exp(-beta d) U(D, d)`` at one order: a beta-smooth bound on the local sensitivity."""
    return _discounted_max(local_sensitivity(votes, labels, aggregator, order)[:, 0], beta)


def _discounted_max(bound: np.ndarray, beta: float) -> float:
    """max over d of exp(-beta d) bound[d]: the smooth sensitivity from the bounds at each distance."""
    return float(np.max(np.exp(-beta * np.arange(len(bound))) * bound))


def suggest(order: float, smooth_sensitivity: float, beta: float | None = None) -> SmoothParams:
    """The sigma (and, by default, beta = 0.4 / order) minimising the release cost plus two noise deviations.

    Give it a smooth sensitivity measured on other data (a previous run, a
    public proxy): computed on the votes to be published, the choice would
    depend on them.
    """
    beta = 0.4 / order if beta is None else beta
    if smooth_sensitivity <= 0:
        raise ParameterError(f"smooth_sensitivity must be > 0 to size the noise, got {smooth_sensitivity}")
    # minimises order e^(2 beta) / sigma^2 + 2 SS sigma
    return SmoothParams(order, beta, (order * math.exp(2 * beta) / smooth_sensitivity) ** (1 / 3))


def release(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator, params: SmoothParams, *,
            delta: float = 1e-5, parties: int = 1, colluders: int = 0,
            rng: np.random.Generator | None = None) -> SmoothRelease:
    """Publish the data-dependent epsilon of these released labels through smooth-sensitivity noise.

    ``params`` must be fixed without looking at these votes (see
    :class:`SmoothParams`). ``parties``/``colluders`` as for
    :func:`analysis.epsilon`. ``rng`` draws the noise; leave it None (fresh OS
    entropy) for a real release, so that nobody can subtract it; a seeded
    generator is for reproducible experiments. Computing the release reads
    the vote histograms: in the cross-silo setting it is for whoever may see
    them (running it under MPC is not implemented).
    """
    if not 0 < delta < 1:
        raise ParameterError(f"delta must be in (0, 1), got {delta}")
    seen = analysis.released(aggregator, parties=parties, colluders=colluders)
    order = np.array([float(params.order)])
    costs, bound = _bounds(votes, labels, seen, order)
    if parties > 1:  # as analysis.epsilon: no query costs more than a curious silo's data-independent bound
        costs = np.minimum(costs, analysis.query_costs(votes, labels, aggregator, order)[1])
    f = float(costs.sum())
    ss = _discounted_max(bound[:, 0], params.beta)
    cost = rdp_gnss(params.beta, params.sigma, params.order)
    std = ss * params.sigma
    draw = float((rng if rng is not None else np.random.default_rng()).standard_normal())
    return SmoothRelease(epsilon=_epsilon_at(params.order, f + cost + std * draw, delta), params=params,
                         delta=delta, release_rdp=cost, epsilon_expected=_epsilon_at(params.order, f + cost, delta),
                         noise_std=std, epsilon_unreleased=_epsilon_at(params.order, f, delta), smooth_sensitivity=ss)


def epsilon_with_release(rdp: np.ndarray, orders: np.ndarray, params: SmoothParams, delta: float) -> float:
    """Epsilon of a mechanism with RDP ``rdp`` at ``orders`` once the release is published too (composition).

    Theorem 23 holds at every order below ``1 / (2 beta)``, so the two add order
    by order there (a curious silo's guarantee, for example).
    """
    alphas = np.asarray(orders, dtype=np.float64)
    keep = (alphas > 1) & (2 * alphas * params.beta < 1)
    if not keep.any():
        raise ParameterError(f"no order below 1 / (2 beta) = {1 / (2 * params.beta):g} to compose at")
    total = np.asarray(rdp, dtype=np.float64)[keep] + np.array([rdp_gnss(params.beta, params.sigma, a)
                                                                 for a in alphas[keep]])
    return analysis.spent(alphas[keep], total, delta)[0]


def _epsilon_at(order: float, rdp: float, delta: float) -> float:
    """(epsilon, delta) from RDP at one order, by the conversion :func:`analysis.epsilon` uses (linear in rdp)."""
    return analysis.spent(np.array([order]), np.array([rdp]), delta)[0]
