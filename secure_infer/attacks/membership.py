"""Membership inference: was this example in the training set?

The loss-threshold attack (Yeom et al. 2018) scores each example by the
negative loss the served model gives it: training examples tend to have lower
loss. It needs only the served outputs, so encryption of the inputs does not
stop it; label-only or rounded outputs and DP training are what weaken it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from secure_infer.attacks.metrics import attack_metrics
from secure_infer.datasets import Dataset

Query = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MembershipResult:
    """An attack's scores on members and non-members, with its metrics."""

    attack: str
    auc: float
    balanced_accuracy: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    members: int
    non_members: int
    scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    is_member: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def _scores(query: Query, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = query(x[start : start + batch_size]).float()
            loss = nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="none")
            out.append(-loss.numpy())
    return np.concatenate(out)


def loss_threshold_attack(query: Query, members: tuple[torch.Tensor, torch.Tensor],
                          non_members: tuple[torch.Tensor, torch.Tensor], *, batch_size: int = 256) -> MembershipResult:
    """Score members and non-members by their (negative) loss under ``query``'s outputs."""
    s_in = _scores(query, *members, batch_size)
    s_out = _scores(query, *non_members, batch_size)
    scores = np.concatenate([s_in, s_out])
    labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    m = attack_metrics(scores, labels)
    return MembershipResult("loss threshold", m["auc"], m["balanced_accuracy"], m["tpr_at_1pct_fpr"],
                            m["tpr_at_0.1pct_fpr"], len(s_in), len(s_out), scores, labels)


def overfit_victim(data: Dataset, *, members: int = 50, epochs: int = 300, seed: int = 0) -> tuple[nn.Module, Dataset]:
    """A deliberately overfit MLP: trained long on a small member set, so attacks have something to find.

    Returns the model and a Dataset whose train split is exactly the members.
    """
    from secure_infer.zoo import TrainConfig, build, train

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[:members]
    subset = Dataset(f"{data.name}-members", data.x_train[idx], data.y_train[idx], data.x_test, data.y_test,
                     data.num_classes, data.input_shape, description=f"{members} members of {data.name}")
    model = build("mlp", data.input_shape, data.num_classes, seed=seed)
    train(model, subset, TrainConfig(epochs=epochs, lr=0.01, batch_size=32), seed=seed)
    model.eval()
    return model, subset
