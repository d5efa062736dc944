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

Under a query budget (a server that answers a client's first B inputs and then
refuses, as ``secure-infer serve --state`` does; :func:`.defences.budgeted`
models it) an attack asks about the candidates in a random order, one order
for all three attacks, and scores the ones it was answered about. What it
learns about *all* candidates is what the metrics report: every candidate it
could not ask about gets the same score, the median of the scores it did get
(a "don't know" in the middle of its ranking), so with a coverage of c the AUC
moves towards 0.5 roughly in proportion to 1 - c, and the TPR at a low FPR
roughly by the factor c. ``queried`` and ``auc_queried`` say how many
candidates were asked about and how well they were ranked among themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.attacks.metrics import attack_metrics
from secure_infer.datasets import Dataset

Query = Callable[[torch.Tensor], torch.Tensor]

BUDGET_EXHAUSTED = "budget-exhausted"  # the ProtocolError code of a server's (or .defences.budgeted's) refusal


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
    queried: int | None = None  # candidates the query budget let the attack ask about; None: all of them
    auc_queried: float | None = None  # AUC among the queried candidates alone; None: they hold only one class

    @property
    def coverage(self) -> float:
        """Share of the candidates the attack could query (1.0 without a budget)."""
        total = self.members + self.non_members
        return 1.0 if self.queried is None or total == 0 else self.queried / total


@dataclass(frozen=True)
class _Answers:
    """The served outputs on the candidates (members first) the attack could ask about."""

    x: torch.Tensor  # every candidate
    y: torch.Tensor
    is_member: np.ndarray
    asked: np.ndarray  # indices into the candidates, in the order asked
    outputs: torch.Tensor  # the answers, one row per entry of ``asked``

    @property
    def asked_y(self) -> torch.Tensor:
        return self.y[self.asked]


def _ask(query: Query, members: tuple[torch.Tensor, torch.Tensor], non_members: tuple[torch.Tensor, torch.Tensor],
         *, seed: int, batch_size: int = 1024) -> _Answers:
    """Ask ``query`` about the candidates in a seeded random order until it has answered them all or refuses.

    The attacker does not know who is a member, so under a budget it reaches a
    random subset; every attack given the same ``seed`` reaches the same one
    (the answers one client with that budget would get, shared by its attacks).
    """
    x = torch.cat([members[0], non_members[0]])
    y = torch.cat([members[1], non_members[1]])
    is_member = np.r_[np.ones(len(members[0])), np.zeros(len(non_members[0]))]
    order = np.random.default_rng(seed).permutation(len(x))
    outputs = _answered(query, x[torch.from_numpy(order)], batch_size)
    return _Answers(x, y, is_member, order[: len(outputs)], outputs)


def loss_threshold_attack(query: Query, members: tuple[torch.Tensor, torch.Tensor],
                          non_members: tuple[torch.Tensor, torch.Tensor], *, batch_size: int = 1024,
                          seed: int = 0) -> MembershipResult:
    """Score members and non-members by their (negative) loss under ``query``'s outputs.

    ``seed`` orders the candidates, which matters only when a budget stops the queries.
    """
    got = _ask(query, members, non_members, seed=seed, batch_size=batch_size)
    if not len(got.asked):
        return _result("loss threshold", got, np.zeros(0))
    return _result("loss threshold", got,
                   -nn.functional.cross_entropy(got.outputs, got.asked_y, reduction="none").numpy())


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


def is_budget_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is a server's "budget exhausted" refusal (nothing else is caught as one)."""
    return isinstance(exc, ProtocolError) and exc.code == BUDGET_EXHAUSTED


def _answered(query: Query, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``query``'s outputs on the longest prefix of ``x`` it answers: all of it, unless a budget runs out.

    A refused batch is charged nothing (as the server does), so on a refusal
    the batch is halved and retried; a refused single input ends the queries.
    This reaches exactly the remaining budget with a few refused requests, and
    without a budget it is :func:`_outputs`. Other errors propagate.
    """
    answers = []
    done, size = 0, batch_size
    with torch.no_grad():
        while done < len(x):
            try:
                answers.append(query(x[done : done + size]).float())
            except ProtocolError as exc:
                if not is_budget_refusal(exc):
                    raise
                if size == 1:
                    break
                size //= 2
                continue
            done += len(answers[-1])
    return torch.cat(answers) if answers else torch.zeros(0, 0)


def _result(name: str, got: _Answers, asked_scores: np.ndarray) -> MembershipResult:
    """Metrics over every candidate; those not asked about share the median of the scores obtained."""
    n_in = int(got.is_member.sum())
    scores = np.full(len(got.is_member), float(np.median(asked_scores)) if len(asked_scores) else 0.0)
    scores[got.asked] = asked_scores
    m = attack_metrics(scores, got.is_member)
    asked_labels = got.is_member[got.asked]
    auc_queried = None
    if len(got.asked) == len(scores):
        auc_queried = m["auc"]
    elif 0 < asked_labels.sum() < len(asked_labels):
        auc_queried = attack_metrics(asked_scores, asked_labels)["auc"]
    return MembershipResult(name, m["auc"], m["balanced_accuracy"], m["tpr_at_1pct_fpr"], m["tpr_at_0.1pct_fpr"],
                            n_in, len(scores) - n_in, scores, got.is_member, len(got.asked), auc_queried)


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
    """Shokri et al.: an attack classifier learnt on the shadows' outputs for their members and non-members.

    ``seed`` also orders the candidates, which matters only when a budget stops the queries.
    """
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
    got = _ask(query, members, non_members, seed=seed)
    if not len(got.asked):
        return _result("shadow models", got, np.zeros(0))
    return _result("shadow models", got, attack.predict_proba(confidence_features(got.outputs, got.asked_y))[:, 1])


def lira_offline(query: Query, members: tuple[torch.Tensor, torch.Tensor],
                 non_members: tuple[torch.Tensor, torch.Tensor], shadows: ShadowModels, *,
                 seed: int = 0) -> MembershipResult:
    """Carlini et al.'s likelihood-ratio attack, offline: only shadows that never saw the targets.

    Per target, a Gaussian is fitted to the shadows' scaled confidence; the
    score is the victim's value in standard deviations above its mean (a
    one-sided test). With few shadows the variance is pooled over targets,
    as the paper recommends. ``seed`` orders the candidates, which matters
    only when a budget stops the queries.
    """
    got = _ask(query, members, non_members, seed=seed)
    if not len(got.asked):
        return _result("LiRA (offline)", got, np.zeros(0))
    x, y = got.x[torch.from_numpy(got.asked)], got.asked_y
    observed = scaled_confidence(got.outputs, y)
    reference = np.stack([scaled_confidence(_outputs(m, x), y) for m in shadows.models])
    mean = reference.mean(axis=0)
    std = reference.std() if len(shadows.models) < 16 else reference.std(axis=0) + 1e-6
    return _result("LiRA (offline)", got, (observed - mean) / (std + 1e-6))


def attack_split(data: Dataset, members: int, non_members: int, *, seed: int = 0
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor],
                            tuple[torch.Tensor, torch.Tensor]]:
    """Who holds what in an attack experiment: (members, non-members, the attacker's pool) of the training split.

    A seeded permutation: the first ``members`` examples train the victim, the
    next ``non_members`` are the attack's negatives, the rest is the
    attacker's own data (shadow models, extraction queries).
    """
    if members + non_members >= len(data.x_train):
        raise ParameterError(f"{members} members and {non_members} non-members leave no pool for the attacker in "
                             f"{len(data.x_train)} training examples")
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    parts = order[:members], order[members : members + non_members], order[members + non_members :]
    a, b, c = ((data.x_train[i], data.y_train[i]) for i in parts)
    return a, b, c


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
