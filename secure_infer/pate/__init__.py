"""PATE: private aggregation of teacher ensembles (Papernot et al. 2017, 2018).

Teachers train on disjoint shares of the private data; a student learns from
public inputs labelled by the teachers' noisy vote (GNMax, or Confident-GNMax
which answers only when the teachers agree); the data-dependent RDP analysis
turns the answers into (epsilon, delta), published through smooth-sensitivity
noise (:mod:`secure_infer.pate.smooth`). The vote can be counted by CrypTen
silo parties (:mod:`secure_infer.pate.mpc`) so that no party sees the votes
or the noise. ``secure-infer pate`` runs the comparison
(:mod:`secure_infer.pate.experiment`).
"""

from secure_infer.pate import analysis, smooth
from secure_infer.pate.aggregation import (
    Aggregator,
    NoiseShares,
    noise_shares,
    noisy_labels,
    vote_histograms,
)
from secure_infer.pate.analysis import PrivacyCost
from secure_infer.pate.teachers import TeacherConfig, TeacherEnsemble, train_student, train_teachers

__all__ = [
    "Aggregator",
    "NoiseShares",
    "PrivacyCost",
    "TeacherConfig",
    "TeacherEnsemble",
    "analysis",
    "noise_shares",
    "noisy_labels",
    "smooth",
    "train_student",
    "train_teachers",
    "vote_histograms",
]
