"""Privacy accounting for PATE: the data-dependent Renyi-DP analysis of Papernot et al. (ICLR 2018).

What: per answered query, GNMax costs at most ``alpha / sigma^2`` of Renyi
divergence at order ``alpha`` (data-independent: one teacher moving its vote
changes the histogram by sqrt(2) in L2). When the teachers agree, the noisy
argmax almost surely returns the plurality label, and Theorem 6 of the paper
bounds the cost far lower from ``q``, an upper bound on the chance of any
other label (Proposition 7). Confident-GNMax's threshold check releases one
bit per query; its cost is the Renyi divergence between that bit's
distribution and its distribution when the largest count moves by one
(exact for two Bernoullis), at most ``alpha / (2 sigma_1^2)``. Costs add over
queries (composition); :func:`epsilon` converts the total to
(epsilon, delta)-DP with Opacus' RDP conversion (Balle et al. 2020, slightly
tighter than the conversion the paper used).

Why it is written here: no maintained accountant on this stack computes it.
Opacus and Google's dp-accounting cover the (subsampled) Gaussian mechanism,
not PATE's data-dependent bound; autodp's ``RDP_depend_pate_gaussian`` calls
``np.asscalar`` (removed in NumPy 1.23) and cannot run here; TensorFlow
Privacy's research code needs TensorFlow. The tests check each bound against
the exact Renyi divergence of the released label, computed numerically for
small vote histograms and every neighbouring histogram.

Who the numbers are for: :func:`epsilon` states the cost for whoever sees
the released labels (the student, everyone outside the silos), at the noise
those labels carry; with the noise split among silos it adds what a curious
silo, which knows its own share, is guaranteed (data-independent, at the
noise it does not know).

Neighbouring data sets differ by adding or removing one private example, as
for DP-SGD: :func:`~secure_infer.pate.teachers.train_teachers` assigns each
example to a teacher by a keyed hash of its content, so adding or removing
one changes one teacher's share and nothing else.

What the numbers mean: the data-dependent epsilon is a function of the
private votes, as in the paper's tables, so publishing it as is discloses a
little about them. :func:`secure_infer.pate.smooth.release` publishes it as
the paper does, through smooth-sensitivity noise. The data-independent
epsilon (:attr:`PrivacyCost.epsilon_data_independent`) needs no such step
and is reported beside it. As in the paper, a query the
threshold declined is charged for the check only. The noise shares are
rounded to CrypTen's 2^-16 grid; the analysis treats the noise as the
Gaussian it is to within that rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from secure_infer._errors import ParameterError
from secure_infer.pate.aggregation import Aggregator

# Renyi orders searched: dense where PATE's optimum usually lies, sparse up to 10^4.
ORDERS = np.unique(np.concatenate([np.arange(1.25, 2.0, 0.25), np.arange(2, 65, 1.0),
                                   np.round(np.logspace(np.log10(65), 4, 40))]))

__all__ = [
    "ORDERS",
    "PrivacyCost",
    "cumulative_epsilon",
    "epsilon",
    "log_q_gnmax",
    "query_costs",
    "rdp_gnmax",
    "rdp_gnmax_data_independent",
    "rdp_threshold",
    "rdp_threshold_data_independent",
    "released",
    "spent",
]


def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0, accurately on both ends."""
    if x > 0:
        raise ParameterError(f"log(1 - exp(x)) needs x <= 0, got {x}")
    if x == 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


def _orders(orders: np.ndarray | None) -> np.ndarray:
    out = ORDERS if orders is None else np.atleast_1d(np.asarray(orders, dtype=np.float64))
    if np.any(out <= 1):
        raise ParameterError(f"Renyi orders must all be > 1; got {out[out <= 1][:3].tolist()}: drop them "
                             "(orders=None uses the built-in grid)")
    return out


def rdp_gnmax_data_independent(sigma: float, orders: np.ndarray | None = None) -> np.ndarray:
    """GNMax's RDP whatever the votes: the Gaussian mechanism with L2 sensitivity sqrt(2)."""
    return _orders(orders) / sigma**2


def rdp_threshold_data_independent(sigma: float, orders: np.ndarray | None = None) -> np.ndarray:
    """The threshold check's RDP whatever the votes: the largest count has sensitivity 1."""
    return _orders(orders) / (2 * sigma**2)


def log_q_gnmax(votes: np.ndarray, sigma: float) -> float:
    """log of Proposition 7's bound on Pr[GNMax does not return the plurality label].

    Union over the other classes of Pr[n_i + Z_i >= n_* + Z_*]; capped at
    log(1 - 1/classes), beyond which the bound carries no information.
    """
    votes = np.asarray(votes, dtype=np.float64)
    top = int(np.argmax(votes))
    gaps = np.delete(votes[top] - votes, top)
    logs = stats.norm.logsf(gaps / (math.sqrt(2) * sigma))
    return float(min(special.logsumexp(logs), math.log1p(-1.0 / len(votes))))


def rdp_gnmax(log_q: float, sigma: float, orders: np.ndarray | None = None) -> np.ndarray:
    """Theorem 6's data-dependent RDP bound for GNMax, given ``log_q`` from :func:`log_q_gnmax`.

    The two higher orders are Proposition 10's choice, mu_2 = sigma sqrt(-log q)
    and mu_1 = mu_2 + 1; where the theorem's conditions fail, or at orders
    beyond mu_1, the data-independent bound is returned.
    """
    alphas = _orders(orders)
    baseline = rdp_gnmax_data_independent(sigma, alphas)
    if log_q > 0:
        raise ParameterError(f"log_q must be <= 0, got {log_q}")
    if log_q == -math.inf:
        return np.zeros_like(alphas)  # the label is certain: nothing depends on any one teacher
    mu2 = sigma * math.sqrt(-log_q)
    mu1 = mu2 + 1
    eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
    applies = (mu2 > 1 and -log_q > eps2
               and log_q <= (mu2 - 1) * eps2 - mu2 * (math.log1p(1 / (mu1 - 1)) + math.log1p(1 / (mu2 - 1))))
    if not applies:
        return baseline
    log_1q = _log1mexp(log_q)
    log_a = log_1q - _log1mexp((log_q + eps2) * (1 - 1 / mu2))
    log_b = eps1 - log_q / (mu1 - 1)
    out = baseline.copy()
    mask = alphas < mu1
    a = alphas[mask]
    bound = np.logaddexp(log_1q + (a - 1) * log_a, log_q + (a - 1) * log_b) / (a - 1)
    out[mask] = np.minimum(baseline[mask], np.maximum(bound, 0.0))
    return out


def _rdp_bernoulli(log_p: float, log_p2: float, alphas: np.ndarray) -> np.ndarray:
    """Exact D_alpha(Bern(p) || Bern(p2)) from logs of p and p2."""
    log_1p, log_1p2 = _log1mexp(log_p), _log1mexp(log_p2)
    terms = np.logaddexp(alphas * log_p + (1 - alphas) * log_p2, alphas * log_1p + (1 - alphas) * log_1p2)
    return np.maximum(terms / (alphas - 1), 0.0)


def rdp_threshold(top_votes: float, threshold: float, sigma: float,
                  orders: np.ndarray | None = None) -> np.ndarray:
    """The threshold check's data-dependent RDP: the answered bit against it when the top count moves by one."""
    alphas = _orders(orders)
    baseline = rdp_threshold_data_independent(sigma, alphas)

    def log_answer(top: float) -> float:
        return float(stats.norm.logsf((threshold - top) / sigma))

    here = log_answer(top_votes)
    worst = np.zeros_like(alphas)
    for neighbour in (top_votes - 1, top_votes + 1):
        other = log_answer(neighbour)
        if here == 0.0 or other == 0.0 or not np.isfinite(here) or not np.isfinite(other):
            return baseline  # a bit whose probability rounds to 0 or 1: fall back to the safe bound
        worst = np.maximum(worst, _rdp_bernoulli(here, other, alphas))
    return np.minimum(baseline, worst)


@dataclass(frozen=True)
class PrivacyCost:
    """What a run of PATE queries spent, as (epsilon, delta)-DP, for whoever sees the released labels.

    Attributes:
        epsilon: data-dependent epsilon (the paper's analysis) at ``delta``.
        epsilon_data_independent: the bound that holds whatever the votes were.
        delta: the delta every epsilon is stated at.
        order: the Renyi order at which ``epsilon`` is attained.
        queries: queries the student asked.
        answered: queries that got a label (all of them under plain GNMax).
        epsilon_silo: with the noise split among silos, what a curious silo
            (which knows its own share) is guaranteed: data-independent, at the
            noise it does not know. None for a single aggregator.
    """

    epsilon: float
    epsilon_data_independent: float
    delta: float
    order: float
    queries: int
    answered: int
    epsilon_silo: float | None = None


def query_costs(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator,
                orders: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-query RDP, (queries, orders): data-dependent and data-independent.

    ``labels`` are the released ones (-1: declined by the threshold); only
    whether a query was answered matters here, not which label it got.
    """
    votes = np.asarray(votes, dtype=np.float64)
    labels = np.asarray(labels)
    alphas = _orders(orders)
    if votes.ndim != 2 or len(labels) != len(votes):
        raise ParameterError(f"votes must be (queries, classes) with one label per query; got votes {votes.shape} "
                             f"and {len(labels)} labels")
    dependent = np.zeros((len(votes), len(alphas)))
    independent = np.zeros_like(dependent)
    for i, (row, label) in enumerate(zip(votes, labels, strict=True)):
        if aggregator.confident:
            dependent[i] += rdp_threshold(float(row.max()), float(aggregator.threshold),  # type: ignore[arg-type]
                                          aggregator.sigma_threshold, alphas)
            independent[i] += rdp_threshold_data_independent(aggregator.sigma_threshold, alphas)
        if label >= 0:
            dependent[i] += rdp_gnmax(log_q_gnmax(row, aggregator.sigma), aggregator.sigma, alphas)
            independent[i] += rdp_gnmax_data_independent(aggregator.sigma, alphas)
    return dependent, independent


def released(aggregator: Aggregator, *, parties: int = 1, colluders: int = 0) -> Aggregator:
    """The noise the released labels carry when ``parties`` silos each add a share.

    Shares are sized so the noise unknown to any ``colluders`` silos has
    ``aggregator``'s sigmas (see :func:`~secure_infer.pate.aggregation.noise_shares`);
    the sum of all of them, which is what anyone outside the silos sees, is
    Gaussian with sigmas larger by sqrt(parties / (parties - colluders)).
    """
    if parties < 1 or not 0 <= colluders < parties:
        raise ParameterError(f"colluders must be in 0..{max(parties - 1, 0)} for {parties} parties, got {colluders}")
    scale = math.sqrt(parties / (parties - colluders))
    return Aggregator(sigma=aggregator.sigma * scale, threshold=aggregator.threshold,
                      sigma_threshold=aggregator.sigma_threshold * scale)


def _composed(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator, parties: int, colluders: int,
              alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-query RDP for the released labels (data-dependent, data-independent) and, with silos, a silo's.

    A silo's view (its share, then the labels) has the labels of a mechanism
    whose unknown noise has ``aggregator``'s sigmas around a histogram shifted
    by the share; the shift does not depend on the data, so the Gaussian
    mechanism's data-independent RDP bounds it. The labels alone are a
    function of that view, so their cost is at most the silo's too (the
    data-dependent bound is not monotone in sigma; the smaller of the two is
    taken order by order).
    """
    seen = released(aggregator, parties=parties, colluders=colluders)
    dependent, independent = query_costs(votes, labels, seen, alphas)
    if parties == 1:
        return dependent, independent, None
    _, silo = query_costs(votes, labels, aggregator, alphas)
    return np.minimum(dependent, silo), np.minimum(independent, silo), silo


def epsilon(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator, *, delta: float = 1e-5,
            parties: int = 1, colluders: int = 0, orders: np.ndarray | None = None) -> PrivacyCost:
    """The (epsilon, delta) a student's queries cost, from the composed per-query RDP.

    ``parties``/``colluders``: how the noise was made (see :func:`released`);
    the default is one aggregator adding all of it.
    """
    if not 0 < delta < 1:
        raise ParameterError(f"delta must be in (0, 1), got {delta}")
    alphas = _orders(orders)
    dependent, independent, silo = _composed(votes, labels, aggregator, parties, colluders, alphas)
    eps, order = spent(alphas, dependent.sum(axis=0), delta)
    eps_di, _ = spent(alphas, independent.sum(axis=0), delta)
    eps_silo = None if silo is None else spent(alphas, silo.sum(axis=0), delta)[0]
    labels = np.asarray(labels)
    return PrivacyCost(float(eps), float(eps_di), delta, float(order), len(labels), int((labels >= 0).sum()),
                       eps_silo)


def cumulative_epsilon(votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator, *, delta: float = 1e-5,
                       parties: int = 1, colluders: int = 0, orders: np.ndarray | None = None) -> np.ndarray:
    """Data-dependent epsilon of the released labels after each query (epsilon against answers obtained)."""
    alphas = _orders(orders)
    dependent, _, _ = _composed(votes, labels, aggregator, parties, colluders, alphas)
    running = np.cumsum(dependent, axis=0)
    return np.array([spent(alphas, r, delta)[0] for r in running])


def spent(alphas: np.ndarray, rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """Opacus' RDP to (epsilon, delta) conversion, minimised over ``alphas``.

    When the cost is tiny the best order is the largest one searched; the
    bound is then valid but slightly loose, and Opacus' warning about it is
    silenced (orders run to 10^4 already).
    """
    import warnings

    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        if len(alphas) == 1:  # one order asked for (a release fixed at it): it is both ends of the range
            warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        eps, order = get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)
    return float(eps), float(order)
