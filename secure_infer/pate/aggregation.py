"""The teachers' vote and its noisy release: GNMax and Confident-GNMax (Papernot et al. 2018).

What: each query's vote histogram (how many teachers chose each class) is
released only as a label, chosen by the noisy argmax ``argmax(n + N(0, s2^2))``
(GNMax). Confident-GNMax first checks ``max(n) + N(0, s1^2) >= T`` and answers
only queries the teachers agree on, which is where the data-dependent privacy
analysis (:mod:`secure_infer.pate.analysis`) charges little.

Why the noise is made of shares: in the cross-silo setting several parties
(silos) each hold some teachers, and no party may see the histogram or the
noise (a party that knew the noise could subtract it). Each party ``p`` draws
its own noise share from its own generator (``seed``, ``p``); the noise added is
the sum of all shares. In a deployment every silo's seed is its own secret
(the MPC aggregator draws one per silo from the OS by default): anyone who
knows a silo's seed can rebuild its share. A seed shared by all is for
reproducible experiments and for checking the MPC result against this module. Shares are calibrated so that the noise unknown to any
``colluders`` parties together still has standard deviation ``sigma``: each
share has variance ``sigma^2 / (parties - colluders)``. The privacy analysis
uses ``sigma`` (the least noise any observer faces); the student sees labels
drawn with the full sum, which only adds noise. With one party (the plain
aggregator) the one share is the whole noise.

Shares are rounded to multiples of 2^-16, the resolution of CrypTen's
fixed-point encoding, so the MPC aggregator (:mod:`secure_infer.pate.mpc`)
adds exactly the values this module adds and, given the same ``seed``,
answers the same queries with the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secure_infer._errors import ParameterError

RESOLUTION = 2.0**-16  # CrypTen's default fixed-point step: shares on this grid are encoded exactly

__all__ = [
    "Aggregator",
    "NoiseShares",
    "noise_shares",
    "noisy_labels",
    "vote_histograms",
]


@dataclass(frozen=True)
class Aggregator:
    """How the votes are turned into labels.

    Attributes:
        sigma: standard deviation of the argmax noise (GNMax's sigma, sigma_2 in the paper).
        threshold: Confident-GNMax's T; None answers every query (plain GNMax).
        sigma_threshold: standard deviation of the threshold check's noise (sigma_1).
    """

    sigma: float
    threshold: float | None = None
    sigma_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ParameterError(f"Aggregator.sigma must be > 0, got {self.sigma}")
        if self.threshold is not None and not self.sigma_threshold > 0:
            raise ParameterError("Aggregator.sigma_threshold must be > 0 when a threshold is set (Confident-GNMax); "
                                 f"got {self.sigma_threshold}")

    @property
    def confident(self) -> bool:
        return self.threshold is not None

    @property
    def name(self) -> str:
        if self.threshold is None:
            return f"GNMax (sigma={self.sigma:.4g})"
        return f"Confident-GNMax (T={self.threshold:.4g}, sigma1={self.sigma_threshold:.4g}, sigma2={self.sigma:.4g})"


@dataclass(frozen=True)
class NoiseShares:
    """One party's noise for a batch of queries: ``threshold`` (queries,) and ``argmax`` (queries, classes)."""

    threshold: np.ndarray
    argmax: np.ndarray

    def __add__(self, other: NoiseShares) -> NoiseShares:
        return NoiseShares(self.threshold + other.threshold, self.argmax + other.argmax)


def _on_grid(values: np.ndarray) -> np.ndarray:
    return np.round(values / RESOLUTION) * RESOLUTION


def noise_shares(aggregator: Aggregator, *, queries: int, classes: int, party: int = 0, parties: int = 1,
                 colluders: int = 0, seed: int = 0, offset: int = 0) -> NoiseShares:
    """Party ``party``'s noise share for queries ``offset .. offset + queries - 1``.

    ``colluders``: how many parties may pool what they know; the noise none of
    them knows keeps standard deviation ``sigma``. Needs ``colluders < parties``.
    ``offset`` lets a long run draw its queries in batches with the same result
    as one batch: each query's noise depends only on (seed, party, query index).
    """
    if parties < 1 or not 0 <= party < parties:
        raise ParameterError(f"party must be in 0..{parties - 1}, got {party}")
    if not 0 <= colluders < parties:
        raise ParameterError(f"colluders must be in 0..{parties - 1} for {parties} parties, got {colluders}")
    scale = 1.0 / np.sqrt(parties - colluders)
    threshold = np.empty(queries)
    argmax = np.empty((queries, classes))
    for i in range(queries):  # one generator per (seed, party, query): batches compose
        rng = np.random.default_rng([seed, party, offset + i])
        threshold[i] = rng.normal(0.0, aggregator.sigma_threshold * scale) if aggregator.confident else 0.0
        argmax[i] = rng.normal(0.0, aggregator.sigma * scale, size=classes)
    return NoiseShares(_on_grid(threshold), _on_grid(argmax))


def vote_histograms(predictions: np.ndarray, classes: int) -> np.ndarray:
    """Per query, how many teachers chose each class: ``predictions`` is (teachers, queries) of labels."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ParameterError(f"predictions must be (teachers, queries), got shape {predictions.shape}")
    if predictions.size and (predictions.min() < 0 or predictions.max() >= classes):
        raise ParameterError(f"predictions must be labels in 0..{classes - 1}")
    counts = np.zeros((predictions.shape[1], classes), dtype=np.int64)
    for row in predictions:
        counts[np.arange(len(row)), row] += 1
    return counts


def noisy_labels(votes: np.ndarray, aggregator: Aggregator, noise: NoiseShares) -> np.ndarray:
    """The released labels: the noisy argmax per query, -1 where Confident-GNMax declined to answer.

    ``noise`` is the sum of every party's :func:`noise_shares` (one party: its own).
    """
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or noise.argmax.shape != votes.shape:
        raise ParameterError(f"votes must be (queries, classes) matching the noise {noise.argmax.shape}, "
                             f"got {votes.shape}")
    labels = np.argmax(votes + noise.argmax, axis=1).astype(np.int64)
    if aggregator.confident:
        answered = votes.max(axis=1) + noise.threshold >= float(aggregator.threshold)  # type: ignore[arg-type]
        labels[~answered] = -1
    return labels
