"""Membership inference: was this example in the training set?

Three attacks of increasing strength, all needing only the served outputs (so
encrypting the inputs does not stop them; label-only or rounded outputs and DP
training are what weaken them):

* loss threshold (Yeom et al. 2018): score = minus the loss on the example;
* shadow models (Shokri et al. 2017): the attacker trains models like the
  victim on its own data, where it knows who is a member, and learns an attack
  classifier on their outputs;
* LiRA, offline variant (Carlini et al. 2022): per example, the distribution
  of the logit-scaled true-class confidence under shadow models that did *not*
  train on it; score = how far above that distribution the victim's value lies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from secure_infer._errors import ParameterError
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
    """Minus the loss of each example under ``query``'s outputs."""
    return -nn.functional.cross_entropy(_outputs(query, x, batch_size), y, reduction="none").numpy()


def loss_threshold_attack(query: Query, members: tuple[torch.Tensor, torch.Tensor],
                          non_members: tuple[torch.Tensor, torch.Tensor], *, batch_size: int = 1024) -> MembershipResult:
    """Score members and non-members by their (negative) loss under ``query``'s outputs."""
    return _result("loss threshold", _scores(query, *members, batch_size), _scores(query, *non_members, batch_size))


def confidence_features(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per example: the three largest probabilities (sorted), the true-class probability, the loss."""
    probs = torch.softmax(logits.float(), dim=1)
    top = probs.sort(dim=1, descending=True).values[:, :3]
    true = probs.gather(1, y[:, None])
    loss = nn.functional.cross_entropy(logits.float(), y, reduction="none")[:, None]
    return torch.cat([top, true, loss], dim=1).numpy()


def scaled_confidence(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """LiRA's statistic: log(p_y / (1 - p_y)), computed stably from logits."""
    logits = logits.double()
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def _outputs(query: Query, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``query`` over ``x`` in large batches (encrypted serving amortises per batch)."""
    with torch.no_grad():
        return torch.cat([query(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])


def _result(name: str, s_in: np.ndarray, s_out: np.ndarray) -> MembershipResult:
    scores = np.concatenate([s_in, s_out])
    labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    m = attack_metrics(scores, labels)
    return MembershipResult(name, m["auc"], m["balanced_accuracy"], m["tpr_at_1pct_fpr"], m["tpr_at_0.1pct_fpr"],
                            len(s_in), len(s_out), scores, labels)


Trainer = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]


@dataclass(frozen=True)
class ShadowModels:
    """Models the attacker trained like the victim, on its own data: who was in each is known.

    Attributes:
        models: the shadow models.
        members: per model, the indices (into the attacker's pool) it trained on.
    """

    models: tuple[nn.Module, ...]
    members: tuple[np.ndarray, ...]
    pool_x: torch.Tensor
    pool_y: torch.Tensor

    @classmethod
    def train(cls, pool: tuple[torch.Tensor, torch.Tensor], trainer: Trainer, *, count: int, size: int,
              seed: int = 0, on_model: Callable[[int], None] | None = None) -> ShadowModels:
        """Train ``count`` shadows, each on a random ``size``-subset of the attacker's ``pool``."""
        x, y = pool
        if size * 2 > len(x):
            raise ParameterError(f"a shadow needs {size} members and as many non-members; the pool has {len(x)}")
        rng = np.random.default_rng(seed)
        models, members = [], []
        for k in range(count):
            idx = np.sort(rng.choice(len(x), size=size, replace=False))
            models.append(trainer(x[idx], y[idx], seed + 1 + k))
            members.append(idx)
            if on_model:
                on_model(k)
        return cls(tuple(models), tuple(members), x, y)


def shadow_model_attack(query: Query, members: tuple[torch.Tensor, torch.Tensor],
                        non_members: tuple[torch.Tensor, torch.Tensor], shadows: ShadowModels, *,
                        seed: int = 0) -> MembershipResult:
    """Shokri et al.: an attack classifier learnt on the shadows' outputs for their members and non-members."""
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for model, idx in zip(shadows.models, shadows.members, strict=True):
        outside = np.setdiff1d(np.arange(len(shadows.pool_x)), idx)
        out_idx = rng.choice(outside, size=len(idx), replace=False)
        for chosen, label in ((idx, 1), (out_idx, 0)):
            feats.append(confidence_features(_outputs(model, shadows.pool_x[chosen]), shadows.pool_y[chosen]))
            labels.append(np.full(len(chosen), label))
    attack = GradientBoostingClassifier(random_state=seed).fit(np.concatenate(feats), np.concatenate(labels))
    s_in = attack.predict_proba(confidence_features(_outputs(query, members[0]), members[1]))[:, 1]
    s_out = attack.predict_proba(confidence_features(_outputs(query, non_members[0]), non_members[1]))[:, 1]
    return _result("shadow models", s_in, s_out)


def lira_offline(query: Query, members: tuple[torch.Tensor, torch.Tensor],
                 non_members: tuple[torch.Tensor, torch.Tensor], shadows: ShadowModels) -> MembershipResult:
    """Carlini et al.'s likelihood-ratio attack, offline: only shadows that never saw the targets.

    Per target, a Gaussian is fitted to the shadows' scaled confidence; the
    score is the victim's value in standard deviations above its mean (a
    one-sided test). With few shadows the variance is pooled over targets,
    as the paper recommends.
    """
    def scores(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        observed = scaled_confidence(_outputs(query, x), y)
        reference = np.stack([scaled_confidence(_outputs(m, x), y) for m in shadows.models])
        mean = reference.mean(axis=0)
        std = reference.std() if len(shadows.models) < 16 else reference.std(axis=0) + 1e-6
        return (observed - mean) / (std + 1e-6)

    return _result("LiRA (offline)", scores(*members), scores(*non_members))


def victim_trainer(data: Dataset, *, epochs: int = 300, lr: float = 0.01) -> Trainer:
    """The victim's training recipe (zoo MLP, Adam), as a trainer the attacker can reuse for shadows."""
    from secure_infer.zoo import TrainConfig, build, train

    def trainer(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        subset = Dataset(f"{data.name}-shadow", x, y, x[:1], y[:1], data.num_classes, data.input_shape,
                         description="attacker's shadow data")
        model = build("mlp", data.input_shape, data.num_classes, seed=seed)
        train(model, subset, TrainConfig(epochs=epochs, lr=lr, batch_size=32), seed=seed)
        return model.eval()

    return trainer


def overfit_victim(data: Dataset, *, members: int = 50, epochs: int = 300, seed: int = 0) -> tuple[nn.Module, Dataset]:
    """A deliberately overfit MLP: trained long on a small member set, so attacks have something to find.

    Returns the model and a Dataset whose train split is exactly the members.
    """
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[:members]
    subset = Dataset(f"{data.name}-members", data.x_train[idx], data.y_train[idx], data.x_test, data.y_test,
                     data.num_classes, data.input_shape, description=f"{members} members of {data.name}")
    return victim_trainer(data, epochs=epochs)(subset.x_train, subset.y_train, seed), subset
