"""The PATE comparison behind ``secure-infer pate``.

One call: trains ``k`` teachers on disjoint shares of the private training
split; labels a student's public inputs (the first ``queries`` of the first
``public`` test inputs, which the student also sees unlabelled) with
Confident-GNMax, the noise and the vote counted by ``parties`` CrypTen
silos (checked query by query against the plaintext aggregator with the same
noise); accounts epsilon with the data-dependent analysis; trains the student
and scores it on the held-out rest of the test split. Beside it, DP-SGD on
the same private split (tuned recipe) at several epsilons, and the
non-private model. Membership inference runs on the attack suite's overfit
setting (a 100-example member set), where a non-private model leaks: the
victim, DP-SGD, and a PATE student whose teachers trained on those members.

It returns a JSON-ready dict; :func:`write_report` adds report.md and plots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer._errors import ParameterError, SecureInferError
from secure_infer.datasets import Dataset
from secure_infer.pate import analysis, smooth
from secure_infer.pate.aggregation import Aggregator, noise_shares, noisy_labels
from secure_infer.pate.teachers import TeacherConfig, train_student, train_teachers

__all__ = ["FULL", "MNIST_STUDENT", "PAPER_MNIST", "QUICK", "PatePlan", "count_steps", "run_pate", "write_report"]

# Papernot et al. 2018, Table 2 (MNIST, 250 teachers, delta 1e-5), quoted as the anchor for MNIST runs.
PAPER_MNIST = (
    {"aggregator": "LNMax (PATE 2017)", "queries_answered": 100, "epsilon": 2.04, "accuracy": 0.980},
    {"aggregator": "Confident-GNMax (T=200, sigma1=150, sigma2=40)", "queries_answered": 286, "epsilon": 1.97,
     "accuracy": 0.985},
    {"aggregator": "non-private baseline", "queries_answered": None, "epsilon": None, "accuracy": 0.992},
)


@dataclass(frozen=True)
class PatePlan:
    """What ``secure-infer pate`` runs; aggregator settings are fractions of the number of teachers.

    The digits defaults were chosen on this split: the most answered queries
    with label accuracy >= 0.95 and epsilon <= 4 over three noise draws (75
    teachers answered 88 at epsilon 3.995, at the limit; 90 answer 82 with
    room to spare),
    which reads the public inputs' true labels and the private votes. A real
    deployment has neither; that choice is not accounted in epsilon (the
    report says so). The evaluation inputs were never used.
    """

    name: str = "full"
    teachers: int = 90
    teacher: TeacherConfig = TeacherConfig()
    queries: int = 300
    # the student's public pool: the first ``public`` test inputs, of which it asks about the first ``queries``
    # and self-trains on the rest; None: the queries alone (digits has 450 test inputs to split three ways)
    public: int | None = None
    threshold: float = 0.8  # T / teachers
    sigma_threshold: float = 0.25  # sigma_1 / teachers
    sigma: float = 0.065  # sigma_2 / teachers
    gnmax_sigma: float = 0.3  # plain GNMax row, sigma / teachers
    # publishing the data-dependent epsilon (smooth.SmoothParams): chosen like the aggregator, on this split
    smooth_order: float = 4.0
    smooth_beta: float = 0.1
    smooth_sigma: float = 2.1
    curve_points: int = 6  # students trained on the first answers, for epsilon vs accuracy
    noise_draws: int = 5  # the Confident-GNMax student over this many noise seeds (seed, seed + 1, ...)
    parties: int = 3
    colluders: int = 1
    mpc_queries: int | None = None  # None: every query through the MPC aggregator
    delta: float = 1e-5
    student: str = "mlp"  # zoo model for the student, and for the non-private model it is compared with
    student_epochs: int = 200
    student_lr: float = 0.01
    baseline_epochs: int = 100  # the non-private model's epochs over the whole private split
    student_self_training: int = 1  # rounds of pseudo-labels on the declined public inputs (train_student)
    student_confidence: float = 0.9
    dp_epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    attack_members: int = 100
    attack_non_members: int = 250
    attack_teachers: int = 20
    attack_shadows: int = 4
    attack_seeds: tuple[int, ...] = tuple(range(8))  # independent member sets; the report averages over them
    attack_noise: tuple[float, ...] = (1.0, 2.0, 3.0)  # PATE students in the attack setting, noise relative to the main run
    seed: int = 0
    # where the aggregator's settings came from; empty: chosen on this split (the digits defaults above)
    aggregator_from: str = ""
    # where the student's architecture and training settings came from; empty: chosen on digits splits
    student_from: str = ""

    def __post_init__(self) -> None:
        for name in ("teachers", "queries", "curve_points", "noise_draws", "student_epochs", "baseline_epochs",
                     "attack_members", "attack_non_members", "attack_teachers", "attack_shadows"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"PatePlan.{name} must be at least 1, got {getattr(self, name)}")
        if self.parties < 2:
            raise ParameterError(f"PatePlan.parties must be at least 2 (one silo would see the whole vote), "
                                 f"got {self.parties}")
        if not 0 <= self.colluders < self.parties:
            raise ParameterError(f"PatePlan.colluders must be in 0..{self.parties - 1}, got {self.colluders}")
        if self.student_self_training < 0 or not 0.0 < self.student_confidence <= 1.0:
            raise ParameterError(f"PatePlan.student_self_training must be >= 0 and student_confidence in (0, 1], got "
                                 f"{self.student_self_training} and {self.student_confidence}")
        if self.public is not None and self.public < self.queries:
            raise ParameterError(f"PatePlan.public ({self.public}) must hold the {self.queries} queries: the student "
                                 "asks about the first `queries` of its public pool")
        from secure_infer.zoo import available

        if self.student not in available():
            raise ParameterError(f"PatePlan.student {self.student!r} is not a zoo model; choose one of "
                                 f"{', '.join(available())}")
        if not (math.isfinite(self.student_lr) and self.student_lr > 0):
            raise ParameterError(f"PatePlan.student_lr must be positive, got {self.student_lr}")
        if not self.attack_seeds:
            raise ParameterError("PatePlan.attack_seeds needs at least one seed (one member set)")
        self.smooth_params()  # refuses settings Theorem 23 does not cover

    @property
    def pool(self) -> int:
        """How many public inputs the student sees: the queries, then unlabelled ones."""
        return self.queries if self.public is None else self.public

    def smooth_params(self) -> smooth.SmoothParams:
        return smooth.SmoothParams(self.smooth_order, self.smooth_beta, self.smooth_sigma)

    def aggregator(self, teachers: int | None = None) -> Aggregator:
        k = teachers or self.teachers
        return Aggregator(sigma=self.sigma * k, threshold=round(self.threshold * k),
                          sigma_threshold=self.sigma_threshold * k)


QUICK = PatePlan(name="quick", curve_points=3, noise_draws=3, mpc_queries=100, dp_epsilons=(1.0, 8.0),
                 attack_seeds=(0,), attack_noise=(1.0, 3.0))
FULL = PatePlan()
# ``secure-infer pate --dataset mnist``: a convolutional student, as the PATE papers' is
MNIST_STUDENT: dict[str, Any] = {
    "student": "lenet", "student_epochs": 30, "student_lr": 0.005, "baseline_epochs": 5,
    "student_from": "chosen between zoo `mlp` and `lenet` (epochs 30-100, learning rate 0.005-0.01) with 530 random "
                    "true labels, scored on MNIST test images 1,000-8,999 (the student's unlabelled pool, its labels "
                    "read for this choice only), not on the evaluation images",
}


def count_steps(plan: PatePlan) -> int:
    """Progress steps :func:`run_pate` reports."""
    return 8 + 1 + len(plan.dp_epsilons) + len(plan.attack_seeds)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _student_builder(plan: PatePlan, data: Dataset, seed: int) -> Callable[[], torch.nn.Module]:
    from secure_infer.zoo import build

    return lambda: build(plan.student, data.input_shape, data.num_classes, seed=seed)


def _student(plan: PatePlan, pool: torch.Tensor, labels: np.ndarray, build: Callable[[], torch.nn.Module],
             seed: int | None = None) -> torch.nn.Module:
    """Train the student on ``labels`` for the first ``len(labels)`` inputs of ``pool``; the rest are unlabelled."""
    padded = np.full(len(pool), -1, dtype=np.int64)
    padded[: len(labels)] = labels
    return train_student(pool, padded, build, epochs=plan.student_epochs, lr=plan.student_lr,
                         seed=plan.seed if seed is None else seed, self_training=plan.student_self_training,
                         confidence=plan.student_confidence)


def _labels(plan: PatePlan, votes: np.ndarray, aggregator: Aggregator, parties: int) -> np.ndarray:
    noise = [noise_shares(aggregator, queries=len(votes), classes=votes.shape[1], party=p, parties=parties,
                          colluders=plan.colluders, seed=plan.seed) for p in range(parties)]
    total = noise[0]
    for share in noise[1:]:
        total = total + share
    return noisy_labels(votes, aggregator, total)


def _cost(plan: PatePlan, votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator) -> analysis.PrivacyCost:
    """What the released labels cost, with the noise made of the silos' shares."""
    return analysis.epsilon(votes, labels, aggregator, delta=plan.delta, parties=plan.parties,
                            colluders=plan.colluders)


def _row(name: str, plan: PatePlan, votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator,
         public_y: np.ndarray, student: torch.nn.Module, eval_x: torch.Tensor, eval_y: torch.Tensor) -> dict[str, Any]:
    cost = _cost(plan, votes, labels, aggregator)
    answered = labels >= 0
    # a seeded draw, so the report is reproducible; a real release leaves rng to the OS (smooth.release)
    params = plan.smooth_params()
    published = smooth.release(votes, labels, aggregator, params, delta=plan.delta, parties=plan.parties,
                               colluders=plan.colluders, rng=np.random.default_rng(plan.seed))
    silo = None
    if plan.parties > 1:  # a silo reads the published figure too
        silo_rdp = analysis.query_costs(votes, labels, aggregator, analysis.ORDERS)[1].sum(axis=0)
        silo = smooth.epsilon_with_release(silo_rdp, analysis.ORDERS, params, plan.delta)
    return {"name": name, "aggregator": aggregator.name,
            "released_noise": analysis.released(aggregator, parties=plan.parties, colluders=plan.colluders).name,
            "queries": int(len(labels)), "answered": int(answered.sum()),
            "label_accuracy": float((labels[answered] == public_y[answered]).mean()) if answered.any() else None,
            "epsilon": cost.epsilon, "epsilon_data_independent": cost.epsilon_data_independent,
            "epsilon_silo": cost.epsilon_silo, "order": cost.order, "delta": plan.delta,
            "epsilon_published": published.epsilon, "epsilon_silo_published": silo,
            # diagnostics: computed from the votes, not publishable in a deployment
            "epsilon_published_std": published.noise_std, "epsilon_published_expected": published.epsilon_expected,
            "smooth_sensitivity": published.smooth_sensitivity,
            "accuracy": _accuracy(student, eval_x, eval_y)}


def _draws(plan: PatePlan, votes: np.ndarray, aggregator: Aggregator, pool: torch.Tensor, public_y: np.ndarray,
           build: Callable[[], torch.nn.Module], eval_x: torch.Tensor, eval_y: torch.Tensor) -> list[dict[str, Any]]:
    """The same teachers and settings under other noise seeds: how much the headline row owes to its draw."""
    out = []
    for seed in range(plan.seed, plan.seed + plan.noise_draws):
        labels = _labels(replace(plan, seed=seed), votes, aggregator, plan.parties)
        cost = _cost(plan, votes, labels, aggregator)
        answered = int((labels >= 0).sum())
        accuracy = (_accuracy(_student(plan, pool, labels, build),
                              eval_x, eval_y) if answered >= 2 else None)
        right = float((labels[labels >= 0] == public_y[labels >= 0]).mean()) if answered else None
        out.append({"seed": seed, "answered": answered, "label_accuracy": right, "epsilon": cost.epsilon,
                    "accuracy": accuracy})
    return out


def _label_reference(plan: PatePlan, draws: list[dict[str, Any]], pool: torch.Tensor, public_y: np.ndarray,
                     build: Callable[[], torch.nn.Module], eval_x: torch.Tensor,
                     eval_y: torch.Tensor) -> dict[str, Any]:
    """The same student given true labels: per noise draw, for as many random queried inputs as it answered, and all.

    Why: it splits the student's gap to the non-private model in two. Paired
    draw by draw with students given the same number of random true labels,
    the PATE student shows what the aggregator's choice of queries (those the
    teachers agree on) and its wrong labels cost; those students, against the
    non-private model, show what so few labels cost. A diagnostic only: it
    reads the public inputs' true labels, which a deployment does not have.
    """
    rng = np.random.default_rng(plan.seed)
    pairs = []
    for draw in draws:
        if draw["accuracy"] is None:  # under two answers: no PATE student to pair with
            continue
        labels = np.full(len(public_y), -1, dtype=np.int64)
        chosen = rng.choice(len(public_y), size=draw["answered"], replace=False)
        labels[chosen] = public_y[chosen]
        pairs.append({"seed": draw["seed"], "labels": int((labels >= 0).sum()), "pate_accuracy": draw["accuracy"],
                      "accuracy": _accuracy(_student(plan, pool, labels, build), eval_x, eval_y)})
    gaps = np.array([p["pate_accuracy"] - p["accuracy"] for p in pairs])
    # every query labelled: self-training has only the rest of the pool to work on, if there is one
    recipe = plan if len(pool) > len(public_y) else replace(plan, student_self_training=0)
    every = _accuracy(_student(recipe, pool, public_y.astype(np.int64), build), eval_x, eval_y)
    return {"random": pairs, "gap_mean": float(gaps.mean()) if len(gaps) else None,
            "gap_standard_error": float(gaps.std(ddof=1) / math.sqrt(len(gaps))) if len(gaps) > 1 else None,
            "all_public": len(public_y), "all_public_accuracy": every}


def _mpc_check(plan: PatePlan, ensemble: Any, public_x: torch.Tensor, aggregator: Aggregator,
               labels: np.ndarray) -> dict[str, Any]:
    from secure_infer.pate.mpc import MPCVoteAggregator, plaintext_labels

    n = len(public_x) if plan.mpc_queries is None else min(plan.mpc_queries, len(public_x))
    silos = ensemble.silo_votes(public_x[:n], plan.parties)
    result = MPCVoteAggregator(aggregator, parties=plan.parties, colluders=plan.colluders,
                               seed=plan.seed).labels(silos)
    plain = plaintext_labels(silos, aggregator, parties=plan.parties, colluders=plan.colluders, seed=plan.seed)
    return {"parties": plan.parties, "colluders": plan.colluders, "queries": n,
            "answered": int(result.answered), "agree": int((result.labels == plain).sum()),
            "agree_with_student_labels": int((result.labels == labels[:n]).sum()),
            "seconds": result.seconds, "seconds_per_query": result.seconds_per_query,
            "bytes_per_party": list(result.bytes_per_party), "bytes_per_query": result.bytes_per_query,
            "rounds": result.rounds, "rounds_per_query": result.rounds_per_query}


def _curve(plan: PatePlan, votes: np.ndarray, labels: np.ndarray, aggregator: Aggregator, pool: torch.Tensor,
           build: Callable[[], torch.nn.Module], eval_x: torch.Tensor, eval_y: torch.Tensor) -> list[dict[str, Any]]:
    """Students trained on the answers to the first n queries (the whole pool unlabelled): accuracy against epsilon."""
    running = analysis.cumulative_epsilon(votes, labels, aggregator, delta=plan.delta, parties=plan.parties,
                                          colluders=plan.colluders)
    out = []
    for n in np.linspace(len(labels) / plan.curve_points, len(labels), plan.curve_points).round().astype(int):
        prefix = labels[:n]
        if (prefix >= 0).sum() < 2:
            continue
        student = _student(plan, pool, prefix, build)
        out.append({"queries": int(n), "answered": int((prefix >= 0).sum()), "epsilon": float(running[n - 1]),
                    "accuracy": _accuracy(student, eval_x, eval_y)})
    return out


def _dp_sgd(plan: PatePlan, data: Dataset, step: Callable[[str], None]) -> list[dict[str, Any]]:
    """DP-SGD rows; the first is the same recipe without DP (its own non-private reference)."""
    from secure_infer.attacks.dp import train_dp_tuned, train_nonprivate

    step("DP-SGD recipe without DP (its non-private reference)")
    reference = train_nonprivate(data, seed=plan.seed)
    rows: list[dict[str, Any]] = [{"target_epsilon": None, "epsilon": None, "accuracy": _accuracy(
        reference.model, data.x_test, data.y_test), "epochs": reference.epochs}]
    for eps in plan.dp_epsilons:
        step(f"DP-SGD on the full private split, target epsilon {eps:g}")
        started = time.perf_counter()
        try:
            trained = train_dp_tuned(data, target_epsilon=eps, delta=plan.delta, seed=plan.seed)
        except SecureInferError as exc:
            rows.append({"target_epsilon": eps, "error": str(exc)})
            continue
        rows.append({"target_epsilon": eps, "epsilon": trained.epsilon, "delta": trained.delta,
                     "noise_multiplier": trained.noise_multiplier, "max_grad_norm": trained.max_grad_norm,
                     "epochs": trained.epochs, "accuracy": _accuracy(trained.model, data.x_test, data.y_test),
                     "seconds": time.perf_counter() - started})
    return rows


def _attack_once(plan: PatePlan, data: Dataset, public: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor,
                 seed: int) -> list[dict[str, Any]]:
    """One member set: the overfit victim, DP-SGD and a PATE student from the same members, each attacked."""
    from secure_infer.attacks.dp import train_dp
    from secure_infer.attacks.membership import (
        ShadowModels,
        attack_split,
        lira_offline,
        loss_threshold_attack,
        victim_trainer,
    )

    members, non_members, pool = attack_split(data, plan.attack_members, plan.attack_non_members, seed=seed)
    trainer = victim_trainer(data)
    victim = trainer(*members, seed)
    shadows = ShadowModels.train(pool, trainer, count=plan.attack_shadows, size=plan.attack_members, seed=seed + 100)
    k = min(plan.attack_teachers, plan.attack_members)
    ensemble = train_teachers(*members, teachers=k, classes=data.num_classes, config=plan.teacher, seed=seed)
    votes = ensemble.votes(public[: plan.queries])
    dp = train_dp(data, *members, target_epsilon=8.0, seed=seed)
    models: list[tuple[str, torch.nn.Module | None, float | None, int | None]] = [
        ("non-private victim (overfit)", victim, None, None),
        ("DP-SGD (target epsilon 8)", dp.model, dp.epsilon, None),
    ]
    main = plan.aggregator()
    for scale in plan.attack_noise:
        # the main run's noise (absolute sigmas) times ``scale``, the threshold scaled to the teachers
        aggregator = Aggregator(sigma=main.sigma * scale, threshold=round(plan.threshold * k),
                                sigma_threshold=main.sigma_threshold * scale)
        labels = _labels(replace(plan, seed=seed), votes, aggregator, plan.parties)
        cost = _cost(plan, votes, labels, aggregator)
        student = (_student(plan, public, labels, _student_builder(plan, data, seed), seed)
                   if (labels >= 0).sum() >= 2 else None)
        models.append((f"PATE student ({k} teachers, {scale:g}x the main run's noise)", student, cost.epsilon,
                       int((labels >= 0).sum())))
    rows: list[dict[str, Any]] = []
    for name, model, eps, answered in models:
        if model is None:
            rows.append({"model": name, "epsilon": eps, "answered": answered, "error": "no query was answered"})
            continue
        model.eval()
        attacks = {"loss": loss_threshold_attack(model, members, non_members, seed=seed),
                   "lira": lira_offline(model, members, non_members, shadows, seed=seed)}
        rows.append({"model": name, "epsilon": eps, "answered": answered, "accuracy": _accuracy(model, eval_x, eval_y),
                     **{f"{a}_auc": r.auc for a, r in attacks.items()},
                     **{f"{a}_tpr_at_1pct_fpr": r.tpr_at_1pct_fpr for a, r in attacks.items()}})
    return rows


def _attacks(plan: PatePlan, data: Dataset, pool: torch.Tensor, eval_x: torch.Tensor, eval_y: torch.Tensor,
             step: Callable[[str], None]) -> dict[str, Any]:
    """Membership inference in the attack suite's overfit setting, over several member sets (seeds).

    One member set of 100 leaves a no-information attack's AUC spread about
    +-0.034 around 0.5; averaging over independent member sets narrows it.
    """
    per_seed = []
    for i, seed in enumerate(plan.attack_seeds):
        step(f"membership inference, member set {i + 1} of {len(plan.attack_seeds)}: victim, shadows, DP-SGD, "
             "PATE student")
        per_seed.append(_attack_once(plan, data, pool, eval_x, eval_y, seed))
    rows: list[dict[str, Any]] = []
    for j, first in enumerate(per_seed[0]):
        runs = [seed_rows[j] for seed_rows in per_seed]
        done = [r for r in runs if "error" not in r]
        row: dict[str, Any] = {"model": first["model"], "runs": runs, "seeds": len(runs), "attacked": len(done)}
        for key in ("epsilon", "answered", "accuracy", "loss_auc", "lira_auc", "lira_tpr_at_1pct_fpr"):
            values = [r[key] for r in (done if key not in ("epsilon", "answered") else runs) if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        rows.append(row)
    m, n = plan.attack_members, plan.attack_non_members
    sd = math.sqrt((m + n + 1) / (12 * m * n))  # a no-information attack's AUC spread (Mann-Whitney null)
    return {"members": m, "non_members": n, "teachers": min(plan.attack_teachers, m), "seeds": list(plan.attack_seeds),
            "delta": plan.delta, "rows": rows, "chance_sd": sd, "chance_sd_of_mean": sd / math.sqrt(len(per_seed))}


def run_pate(plan: PatePlan = FULL, data: Dataset | None = None, *,
             on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole comparison; ``data`` defaults to digits (seeded split)."""
    from secure_infer import datasets
    from secure_infer.zoo import TrainConfig, train

    step = on_step or (lambda _msg: None)
    started = time.perf_counter()
    data = data or datasets.load_digits(seed=plan.seed)
    if plan.pool >= len(data.x_test):
        what = "queries" if plan.public is None else "public"
        raise ParameterError(f"{what}={plan.pool} leaves no test input to score the student: the test split has "
                             f"{len(data.x_test)}; make the student's public inputs fewer")
    if plan.teachers > len(data.x_train):
        raise ParameterError(f"teachers={plan.teachers} is more than the {len(data.x_train)} private examples")
    pool = data.x_test[: plan.pool]  # the student's public inputs; it asks about the first ``queries``
    public_x, public_y = pool[: plan.queries], data.y_test[: plan.queries].numpy()
    eval_x, eval_y = data.x_test[plan.pool :], data.y_test[plan.pool :]
    build = _student_builder(plan, data, plan.seed)

    step("non-private model on the private split")
    baseline = build()
    private = replace(data, x_test=eval_x, y_test=eval_y)
    train(baseline, private, TrainConfig(epochs=plan.baseline_epochs, lr=plan.student_lr, batch_size=32),
          seed=plan.seed)
    nonprivate = _accuracy(baseline, eval_x, eval_y)

    step(f"train {plan.teachers} teachers on disjoint shares")
    t0 = time.perf_counter()
    ensemble = train_teachers(data.x_train, data.y_train, teachers=plan.teachers, classes=data.num_classes,
                              config=plan.teacher, seed=plan.seed)
    teacher_seconds = time.perf_counter() - t0
    teacher_acc = ensemble.accuracy(eval_x, eval_y)
    votes = ensemble.votes(public_x)

    step("Confident-GNMax labels and the student")
    aggregator = plan.aggregator()
    labels = _labels(plan, votes, aggregator, plan.parties)
    student = _student(plan, pool, labels, build)
    rows = [_row("PATE student (Confident-GNMax)", plan, votes, labels, aggregator, public_y, student, eval_x,
                 eval_y)]
    step("plain GNMax labels and the student")
    gnmax = Aggregator(sigma=plan.gnmax_sigma * plan.teachers)
    gn_labels = _labels(plan, votes, gnmax, plan.parties)
    gn_student = _student(plan, pool, gn_labels, build)
    rows.append(_row("PATE student (GNMax, every query answered)", plan, votes, gn_labels, gnmax, public_y,
                     gn_student, eval_x, eval_y))

    step(f"the Confident-GNMax student over {plan.noise_draws} noise draws")
    draws = _draws(plan, votes, aggregator, pool, public_y, build, eval_x, eval_y)
    step("the same student on true labels: as many as each draw answered, and all")
    reference = _label_reference(plan, draws, pool, public_y, build, eval_x, eval_y)
    step(f"vote counted by {plan.parties} CrypTen silos")
    try:
        mpc: dict[str, Any] = _mpc_check(plan, ensemble, public_x, aggregator, labels)
    except SecureInferError as exc:
        mpc = {"error": f"{type(exc).__name__}: {exc}"}
    step("student accuracy against epsilon")
    curve = _curve(plan, votes, labels, aggregator, pool, build, eval_x, eval_y)
    dp_rows = _dp_sgd(plan, replace(data, x_test=eval_x, y_test=eval_y), step)
    attacks = _attacks(plan, data, pool, eval_x, eval_y, step)
    from importlib.metadata import version

    return {
        "plan": asdict(plan), "dataset": data.description or data.name, "dataset_name": data.name,
        "private_examples": len(data.x_train), "public_queries": plan.queries, "public_inputs": len(pool),
        "eval_examples": len(eval_x),
        "nonprivate_accuracy": nonprivate,
        "teachers": {"count": plan.teachers, "examples_each": len(data.x_train) / plan.teachers,
                     "mean_accuracy": float(teacher_acc.mean()), "min_accuracy": float(teacher_acc.min()),
                     "max_accuracy": float(teacher_acc.max()), "seconds": teacher_seconds,
                     "plurality_accuracy": float((votes.argmax(1) == public_y).mean()),
                     "mean_top_vote_share": float((votes.max(1) / plan.teachers).mean())},
        "rows": rows, "noise_draws": draws, "label_reference": reference, "curve": curve, "mpc": mpc, "dp_sgd": dp_rows, "attacks": attacks,
        "paper_mnist": list(PAPER_MNIST) if data.name == "mnist" else None,
        "seconds": time.perf_counter() - started,
        "environment": {"torch": torch.__version__, "opacus": version("opacus"), "crypten": version("crypten"),
                        "date": time.strftime("%Y-%m-%d")},
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _release_tuning(report: dict[str, Any]) -> str:
    where = ("on this split" if report.get("dataset_name", "digits") == "digits"
             else "on a digits split, not on this data")
    return (f"The release settings were chosen {where} (a deployment fixes them from other data, or the noise "
            "scale discloses the votes).")


def _unasked(report: dict[str, Any]) -> int:
    """How many public inputs the student saw without asking about them."""
    return int(report.get("public_inputs", report["public_queries"])) - int(report["public_queries"])


def _public_sentence(report: dict[str, Any]) -> str:
    queries = report["public_queries"]
    if not _unasked(report):
        return f"Public: the first {queries} test inputs, unlabelled, which the student may query."
    return (f"Public: the first {report['public_inputs']} test inputs, unlabelled; the student asks about the "
            f"first {queries} and sees all of them (self-training).")


def _student_tuning(plan: dict[str, Any]) -> str:
    if plan.get("student_from"):
        return f"these settings were {plan['student_from']}."
    if any(plan.get(name, default) != default for name, default in (
            ("student", FULL.student), ("student_epochs", FULL.student_epochs), ("student_lr", FULL.student_lr))):
        return "these settings were given for this run, with no record of how they were chosen."
    return ("these are the defaults, set while developing on digits splits with their evaluation accuracy in view "
            "(a deployment would choose them on other data).")


def _attack_student_sentence(plan: dict[str, Any]) -> str:
    student = plan.get("student", "mlp")
    if student == "mlp":
        return "The PATE students are zoo `mlp`, like the victim."
    return (f"The PATE students are zoo `{student}`, like the main student; the victim and the shadows are zoo "
            "`mlp`, so for the PATE rows LiRA's reference models have another architecture than the model attacked, "
            "which can understate what it finds.")


def _aggregator_tuning(plan: dict[str, Any]) -> str:
    if plan.get("aggregator_from"):
        return (f"The Confident-GNMax settings are {plan['aggregator_from']}, fixed before this run saw the data, "
                "so no choice made here is missing from its epsilon (the plain GNMax row's sigma is this "
                "project's).")
    return ("The aggregator's settings were chosen on this split with the public inputs' true labels and the "
            "private votes in view (the most answers with label accuracy >= 0.95 at epsilon <= 4); a real "
            "deployment would tune on other data, and that choice is not in the epsilon.")


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and accuracy_vs_epsilon.png into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2, default=str))
    plan, t = report["plan"], report["teachers"]
    base = report["nonprivate_accuracy"]
    lines = [
        f"# secure-infer PATE ({plan['name']})", "",
        f"{report['dataset']}. Private: the {report['private_examples']} training examples, split among "
        f"{t['count']} teachers ({t['examples_each']:.0f} each). {_public_sentence(report)} Evaluation: the other "
        f"{report['eval_examples']} test examples. delta = {plan['delta']:g}; seed {plan['seed']}.", "",
        f"Non-private model (the student's architecture, zoo `{plan.get('student', 'mlp')}`, "
        f"{plan.get('baseline_epochs', 100)} epochs on the private split): accuracy **{base:.4f}**. "
        f"Teachers: mean accuracy {t['mean_accuracy']:.3f} (min {t['min_accuracy']:.3f}, max "
        f"{t['max_accuracy']:.3f}); their plurality vote labels the public inputs with accuracy "
        f"{t['plurality_accuracy']:.3f}; the winning class gets {t['mean_top_vote_share']:.0%} of the votes on "
        f"average. All {t['count']} trained in {t['seconds']:.1f} s.", "",
        "## Student", "",
        "| aggregator (sigmas per silo share set) | queries | answered | label accuracy | epsilon, data-dependent | "
        "epsilon, published (smooth sensitivity) | epsilon, data-independent | epsilon vs a curious silo | "
        "student accuracy | vs non-private |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['aggregator']} | {r['queries']} | {r['answered']} | {_fmt(r['label_accuracy'])} | "
                     f"{r['epsilon']:.2f} | {r['epsilon_published']:.2f} (noise sd {r['epsilon_published_std']:.2f}) | "
                     f"{r['epsilon_data_independent']:.2f} | {_fmt(r['epsilon_silo'])} | "
                     f"{r['accuracy']:.4f} | {r['accuracy'] - base:+.4f} |")
    draws = [d for d in report["noise_draws"] if d["accuracy"] is not None]
    if draws:
        acc = [d["accuracy"] for d in draws]
        lines += ["", f"The Confident-GNMax row is one noise draw (seed {plan['seed']}). Over {len(draws)} draws "
                  f"(seeds {draws[0]['seed']}-{draws[-1]['seed']}) the student scored {min(acc):.4f}-{max(acc):.4f}, "
                  f"mean {float(np.mean(acc)):.4f} ({float(np.mean(acc)) - base:+.4f} vs non-private), with "
                  f"{min(d['answered'] for d in draws)}-{max(d['answered'] for d in draws)} answers at epsilon "
                  f"{min(d['epsilon'] for d in draws):.2f}-{max(d['epsilon'] for d in draws):.2f}."]
    lines += ["", f"The student is zoo `{plan.get('student', 'mlp')}`, {plan['student_epochs']} epochs over the answers "
              f"at learning rate {plan.get('student_lr', 0.01):g}; {_student_tuning(plan)}"]
    if plan.get("student_self_training"):
        lines += ["", f"Each student trains on the answered queries, then {plan['student_self_training']} round(s) of "
                  "self-training: the public inputs without an answer (declined, or never asked) that its "
                  f"predecessor labels with confidence at least {plan['student_confidence']:g} join the answers, "
                  "and a fresh student trains on both with the same number of optimizer steps. It reads only public "
                  "inputs and released labels: post-processing, no privacy cost. The setting was chosen on the "
                  "evaluation accuracy of three digits splits (five noise draws each): one round gave +1.3 to +3.5 "
                  "points of mean accuracy."]
    lines += _label_reference_lines(report)
    lines += ["", "Epsilon is for whoever sees the released labels (the student, anyone outside the silos), at the "
              f"noise they carry: the silos' shares add up to {report['rows'][0]['released_noise']}. It is the "
              "data-dependent RDP analysis of Papernot et al. 2018 (Theorem 6 for GNMax, the exact Bernoulli "
              "divergence for the threshold check; a declined query pays for the check only), converted with "
              "Opacus' RDP conversion, for neighbouring data sets that differ by one added or removed private "
              "example (each example's teacher is a hash of its content), as for DP-SGD. It depends on the private "
              "votes, so it is not itself publishable. The published column releases it as the paper does: the "
              f"data-dependent RDP at order {plan['smooth_order']:g} plus Gaussian noise of {plan['smooth_sigma']:g} "
              f"times a {plan['smooth_beta']:g}-smooth bound on its sensitivity to the votes, plus what that "
              "release costs (Theorem 23); one seeded draw. The noise's standard deviation in brackets is a "
              "diagnostic computed from the votes, as is the data-dependent column: an experiment may show them, "
              "a deployment publishes only the published figure. "
              f"{_release_tuning(report)} The data-independent column needs no such step; whoever reads the report may take the "
              f"smaller of the two. Published, the figure also costs a curious silo: "
              f"{_fmt(report['rows'][0]['epsilon_silo_published'])} instead of "
              f"{_fmt(report['rows'][0]['epsilon_silo'])} for the first row. A curious silo knows its own "
              f"noise share: what it is guaranteed is data-independent, at the noise that no {plan['colluders']} silo(s) "
              f"knows together. {_aggregator_tuning(plan)} Accuracy is over "
              f"{report['eval_examples']} examples: one example is {1 / report['eval_examples']:.2g}.", ""]
    mpc = report["mpc"]
    lines += ["## The vote counted under MPC", ""]
    if "error" in mpc:
        lines.append(f"The MPC run failed: {mpc['error']}")
    else:
        lines += [f"{mpc['parties']} CrypTen parties (silos), each holding {t['count'] // mpc['parties']}-"
                  f"{math.ceil(t['count'] / mpc['parties'])} teachers' votes and its own noise share; the summed "
                  "histogram, the threshold check and the noisy argmax are computed on secret shares and only "
                  "the answered bits and the answered labels are revealed.", "",
                  "| queries | answered | agree with the plaintext aggregator (same noise) | s/query | "
                  "bytes/query (all parties) | rounds/query | whole run s |", "|---|---|---|---|---|---|---|",
                  f"| {mpc['queries']} | {mpc['answered']} | {mpc['agree']}/{mpc['queries']} | "
                  f"{_fmt(mpc['seconds_per_query'])} | {_fmt(mpc['bytes_per_query'])} | "
                  f"{_fmt(mpc['rounds_per_query'])} | {_fmt(mpc['seconds'])} |"]
    unlabelled = ", the other public inputs unlabelled" if _unasked(report) else ""
    lines += ["", "## Student accuracy against epsilon (students trained on the answers to the first n queries"
              f"{unlabelled})", "", "| queries asked | answered | epsilon | student accuracy |", "|---|---|---|---|"]
    lines += [f"| {c['queries']} | {c['answered']} | {c['epsilon']:.2f} | {c['accuracy']:.4f} |"
              for c in report["curve"]]
    dp_base = report["dp_sgd"][0]["accuracy"]
    lines += ["", "## DP-SGD on the same private split (Opacus, tuned recipe)", "",
              "The recipe (tanh MLP, Poisson batches of 256, momentum SGD, epochs growing with epsilon) trained "
              f"without DP reaches {dp_base:.4f}; the rows compare with that.", "",
              "| target epsilon | accountant's epsilon | noise multiplier | clipping | epochs | accuracy | "
              "vs its non-private reference |", "|---|---|---|---|---|---|---|"]
    for r in report["dp_sgd"][1:]:
        if "error" in r:
            lines.append(f"| {r['target_epsilon']:g} | failed: {r['error']} ||||||")
            continue
        lines.append(f"| {r['target_epsilon']:g} | {r['epsilon']:.2f} | {r['noise_multiplier']:.2f} | "
                     f"{r['max_grad_norm']:g} | {r['epochs']} | {r['accuracy']:.4f} | {r['accuracy'] - dp_base:+.4f} |")
    a = report["attacks"]
    lines += ["", "## Membership inference (the attack suite's overfit setting)", "",
              f"Members: {a['members']} training examples; non-members: {a['non_members']} others; the attacker's "
              "shadow models train on the rest. This is not the setting above: a model trained on the whole "
              "private split generalises and leaks too little for these attacks to measure, so, as in "
              "`secure-infer attack`, the victim is deliberately overfit on a small member set, and the DP-SGD "
              f"model and PATE students ({a['teachers']} teachers on those members; the main run's noise, and more) are "
              f"trained from the same members. With so few private examples per teacher the students learn little "
              "(their accuracy below). The attacks and their shadow models are the suite's, built on the victim's "
              f"training recipe, for every row. Figures are means over {len(a['seeds'])} independent member "
              f"set(s). {_attack_student_sentence(plan)} Chance is AUC 0.5: an attack that learns nothing lands "
              f"within +-{a['chance_sd']:.3f} of it "
              f"two times in three on one member set, +-{a['chance_sd_of_mean']:.3f} on the mean.", "",
              "| model | epsilon | answered | accuracy | loss-attack AUC | LiRA AUC | LiRA TPR at 1% FPR |",
              "|---|---|---|---|---|---|---|"]
    for r in a["rows"]:
        if r["attacked"] == 0:
            lines.append(f"| {r['model']} | {_fmt(r['epsilon'])} | {_fmt(r['answered'])} | not attacked: no query "
                         "was answered ||||")
            continue
        lines.append(f"| {r['model']} | {_fmt(r['epsilon'])} | {_fmt(r['answered'])} | {r['accuracy']:.4f} | "
                     f"{r['loss_auc']:.3f} | {r['lira_auc']:.3f} | {r['lira_tpr_at_1pct_fpr']:.3f} |")
    lines += _attack_summary(report)
    if report.get("paper_mnist"):
        lines += ["", "## Anchor: Papernot et al. 2018, Table 2 (MNIST, 250 teachers)", "",
                  "| aggregator | queries answered | epsilon | accuracy |", "|---|---|---|---|"]
        lines += [f"| {p['aggregator']} | {_fmt(p['queries_answered'])} | {_fmt(p['epsilon'])} | {p['accuracy']:.3f} |"
                  for p in report["paper_mnist"]]
    env = report["environment"]
    lines += ["", f"Measured {env['date']} in {report['seconds']:.0f} s (torch {env['torch']}, opacus "
              f"{env['opacus']}, crypten {env['crypten']})."]
    paths[1].write_text("\n".join(lines) + "\n")
    paths.append(_plot(report, out))
    return paths


def _label_reference_lines(report: dict[str, Any]) -> list[str]:
    """What the answers are worth, next to true labels for as many random queried inputs and for all of them."""
    ref = report.get("label_reference")
    if not ref:
        return []
    base, pairs = report["nonprivate_accuracy"], ref["random"]
    lines = ["", "### What the answers are worth", "",
             "The same student (same recipe) trained on true labels instead: a diagnostic that reads the public "
             "inputs' true labels, which a deployment does not have. Each noise draw's student is paired with one "
             "given the true labels of as many random queried inputs as that draw answered: the pair differs by "
             "what the aggregator's choice of queries (those the teachers agree on) and its wrong labels cost. The "
             "random-label students and the non-private model differ by what so few labels cost.", "",
             "| labels the student trains on | students | student accuracy, mean | range | vs non-private |",
             "|---|---|---|---|---|"]
    if pairs:
        pate, rand = [p["pate_accuracy"] for p in pairs], [p["accuracy"] for p in pairs]
        counts = [p["labels"] for p in pairs]
        right = [d["label_accuracy"] for d in report["noise_draws"]
                 if d.get("accuracy") is not None and d.get("label_accuracy") is not None]
        answers = (f"Confident-GNMax answers ({min(counts)}-{max(counts)} per draw, mean {float(np.mean(counts)):.0f}"
                   + (f"; {float(np.mean(right)):.3f} of them right" if right else "") + ")")
        lines += [f"| {answers} | {len(pate)} noise draws | {float(np.mean(pate)):.4f} | {min(pate):.4f}-{max(pate):.4f} "
                  f"| {float(np.mean(pate)) - base:+.4f} |",
                  f"| true labels of as many random queried inputs | {len(rand)} draws | {float(np.mean(rand)):.4f} | "
                  f"{min(rand):.4f}-{max(rand):.4f} | {float(np.mean(rand)) - base:+.4f} |"]
    lines.append(f"| true labels of all {ref['all_public']} queried inputs | 1 | {ref['all_public_accuracy']:.4f} | - | "
                 f"{ref['all_public_accuracy'] - base:+.4f} |")
    if ref.get("gap_standard_error") is not None:
        lines += ["", f"Pair by pair, the answers' student scores {ref['gap_mean']:+.4f} against the random-label "
                  f"one (standard error {ref['gap_standard_error']:.4f} over {len(pairs)} pairs)."]
    return lines


def _attack_summary(report: dict[str, Any]) -> list[str]:
    """The attacked PATE student nearest the main student's epsilon, against chance and the victim."""
    a, main = report["attacks"], report["rows"][0]
    students = [r for r in a["rows"] if r["model"].startswith("PATE") and r["attacked"] and r["epsilon"] is not None]
    victim = next((r for r in a["rows"] if r["attacked"] and r["epsilon"] is None), None)
    if not students or victim is None or main.get("epsilon") is None:
        return []
    near = min(students, key=lambda r: abs(r["epsilon"] - main["epsilon"]))
    worst = max(abs(near["loss_auc"] - 0.5), abs(near["lira_auc"] - 0.5))
    return ["", f"The main student's epsilon is {main['epsilon']:.2f} (data-dependent; published "
            f"{_fmt(main.get('epsilon_published'))}). The attacked student nearest it, at epsilon {near['epsilon']:.2f}, "
            f"scores loss AUC {near['loss_auc']:.3f} and LiRA AUC {near['lira_auc']:.3f}: {worst:.3f} from chance at "
            f"most, where the same attacks on the non-private victim score {victim['loss_auc']:.3f} and "
            f"{victim['lira_auc']:.3f}. That student's accuracy is {near['accuracy']:.2f}, the main student's "
            f"{main['accuracy']:.2f}"
            + (": it learns little, so this measures what these attacks extract from a weak PATE student at that "
               "epsilon in this setting, not from the main student." if near["accuracy"] < main["accuracy"] - 0.1
               else ".")]


def _plot(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    curve = report["curve"]
    if curve:
        left.plot([c["epsilon"] for c in curve], [c["accuracy"] for c in curve], marker="o",
                  label="PATE student (data-dependent epsilon, not sanitised)")
        right.plot([c["answered"] for c in curve], [c["epsilon"] for c in curve], marker="o")
    dp = [r for r in report["dp_sgd"][1:] if "error" not in r]
    if dp:
        left.plot([r["epsilon"] for r in dp], [r["accuracy"] for r in dp], marker="s", label="DP-SGD")
    left.axhline(report["nonprivate_accuracy"], color="black", linestyle="--", label="non-private")
    left.set_xlabel(f"epsilon (delta {report['plan']['delta']:g})")
    left.set_ylabel("test accuracy")
    left.set_title("accuracy vs epsilon")
    left.legend(fontsize=8)
    right.set_xlabel("queries answered")
    right.set_ylabel("epsilon (data-dependent)")
    right.set_title("PATE: privacy spent vs labels obtained")
    fig.tight_layout()
    path = out / "accuracy_vs_epsilon.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
