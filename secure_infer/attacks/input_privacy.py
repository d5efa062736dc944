"""Input privacy: what the evaluating party observes, and what it can learn from it.

For each way of serving, collect exactly what the server (or an MPC party
other than the data owner) receives for each client input:

* plaintext serving: the input itself;
* TenSEAL: the serialized CKKS ciphertext, as it arrives on the wire;
* CrypTen: the model owner's additive share of the input (64-bit ring elements).

Then train the strongest of a few standard classifiers on those observations
to predict the client's label, and a ridge regression to reconstruct the
input; both are scored on held-out inputs against chance (the majority class,
and predicting the mean input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from secure_infer.backends.crypten import PartyJob

VIEW_BYTES = 4096  # leading bytes of each ciphertext used as features


@dataclass(frozen=True)
class InputPrivacyResult:
    """How much one view reveals about the client's inputs."""

    view: str
    accuracy: float  # of predicting the client's label from the view, held out
    chance: float  # majority-class rate on the same held-out inputs
    classifier: str
    reconstruction_r2: float  # R^2 of reconstructing the input from the view (0 = no better than the mean)
    features: int
    examples: int
    held_out: int  # inputs the accuracy was measured on

    @property
    def z_above_chance(self) -> float:
        """Standard errors by which the accuracy exceeds chance (binomial); about 0 for a useless view."""
        spread = (self.chance * (1 - self.chance) / max(self.held_out, 1)) ** 0.5
        return (self.accuracy - self.chance) / max(spread, 1e-12)


def plaintext_view(x: torch.Tensor) -> np.ndarray:
    """Plaintext serving: the server sees the input."""
    return x.reshape(len(x), -1).numpy().astype(np.float64)


def ciphertext_view(model: torch.nn.Module, x: torch.Tensor, sample: torch.Tensor) -> np.ndarray:
    """TenSEAL latency mode: the bytes of each input's ciphertext, as the server receives them."""
    import secure_infer as si
    from secure_infer.backends.tenseal import TensealProgram, to_bytes

    enc = si.wrap(model, "tenseal", sample_input=sample, mode="latency", calibration=x)
    assert isinstance(enc.program, TensealProgram)  # what wrap(..., "tenseal") builds
    client = enc.program.client
    assert client is not None  # a fresh program holds its client keys
    rows = []
    for _, cts in client.requests(client.check_input(x)):
        blob = to_bytes(cts[0])
        head = np.frombuffer(blob[:VIEW_BYTES], dtype=np.uint8).astype(np.float64)
        rows.append(np.concatenate([head, np.zeros(VIEW_BYTES - len(head)), [len(blob)]]))
    enc.close()
    return np.stack(rows)


@dataclass
class _ShareJob(PartyJob):
    """Secret-share inputs from the data owner; the model owner reports the share it holds."""

    x: torch.Tensor | None
    shape: tuple[int, ...]

    def run(self, crypten: Any, rank: int) -> Any:
        shared = crypten.cryptensor(self.x if rank == 1 else torch.empty(self.shape), src=1)
        return shared.share.clone() if rank == 0 else None


def share_view(x: torch.Tensor, *, timeout: float = 300.0) -> np.ndarray:
    """CrypTen, 2 real parties: party 0's share of each input (int64 ring elements, scaled to [-1, 1))."""
    from secure_infer.backends.crypten import PartyPool

    flat = x.reshape(len(x), -1).float()
    jobs = [_ShareJob(None, tuple(flat.shape)), _ShareJob(flat, tuple(flat.shape))]
    pool = PartyPool(jobs, timeout=timeout)
    try:
        share = pool.setup[0]["result"]
    finally:
        pool.close()
    return share.double().numpy() / 2.0**63


def attack_view(view: str, features: np.ndarray, labels: np.ndarray, inputs: np.ndarray, *,
                seed: int = 0) -> InputPrivacyResult:
    """Best of logistic regression, random forest and k-NN (picked by cross-validation) at predicting labels."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import cross_val_score, train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_tr, f_te, y_tr, y_te, x_tr, x_te = train_test_split(features, labels, inputs, test_size=0.3,
                                                          random_state=seed, stratify=labels)
    candidates = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "random forest": RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
        "k-NN": make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5)),
    }
    scores = {name: cross_val_score(clf, f_tr, y_tr, cv=3).mean() for name, clf in candidates.items()}
    best = max(scores, key=lambda name: scores[name])
    accuracy = float(candidates[best].fit(f_tr, y_tr).score(f_te, y_te))
    chance = float(np.bincount(y_te).max() / len(y_te))
    ridge = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(f_tr, x_tr)
    residual = ((ridge.predict(f_te) - x_te) ** 2).sum()
    total = ((x_te - x_tr.mean(axis=0)) ** 2).sum()
    return InputPrivacyResult(view, accuracy, chance, best, float(1 - residual / total), features.shape[1],
                              len(labels), len(y_te))
