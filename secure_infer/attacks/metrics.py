"""Scores of a membership-style attack: AUC, balanced accuracy, TPR at low FPR.

Low-FPR figures follow Carlini et al. (2022): an attack that is right on a few
members with almost no false alarms matters more than its average accuracy.
"""

from __future__ import annotations

import numpy as np


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """Higher score = "member". Returns auc, balanced_accuracy, tpr_at_1pct_fpr, tpr_at_0.1pct_fpr."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member).astype(bool)
    fpr, tpr, _ = roc_curve(is_member, scores)
    balanced = float(np.max((tpr + (1 - fpr)) / 2))

    def tpr_at(limit: float) -> float:
        ok = fpr <= limit
        return float(tpr[ok].max()) if ok.any() else 0.0

    return {
        "auc": float(roc_auc_score(is_member, scores)),
        "balanced_accuracy": balanced,
        "tpr_at_1pct_fpr": tpr_at(0.01),
        "tpr_at_0.1pct_fpr": tpr_at(0.001),
    }
