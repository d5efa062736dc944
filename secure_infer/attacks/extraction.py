"""Model extraction: an attacker with query access trains a surrogate from the answers.

The attacker sends inputs from its own (unlabelled) pool, keeps what comes
back (full confidences, or only the top label), and trains a surrogate on
that. Fidelity is the surrogate's argmax agreement with the victim on held-out
inputs; utility is its own test accuracy. Both are reported against the query
budget (Tramèr et al. 2016; Orekondy et al. 2019 for soft-label training).
Encrypting the queries changes none of this: the answers are the same. A
server that caps a client's queries does: the attack gets as many answers as
the cap allows and reports its fidelity there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from secure_infer._errors import ParameterError
from secure_infer.attacks.membership import Query, _answered

ANSWERS = ("confidences", "labels")


@dataclass(frozen=True)
class ExtractionPoint:
    """One budget's result."""

    budget: int
    answers: str
    agreement: float
    surrogate_accuracy: float


def train_surrogate(x: torch.Tensor, answers: torch.Tensor, soft: bool, build: Callable[[], nn.Module], *,
                    epochs: int = 150, lr: float = 0.01, seed: int = 0) -> nn.Module:
    """Fit a surrogate to the victim's answers: soft targets (KL to the softmax) or hard labels."""
    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    targets = torch.softmax(answers, dim=1) if soft else answers.argmax(1)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            out = model(x[idx])
            if soft:
                loss = nn.functional.kl_div(torch.log_softmax(out, 1), targets[idx], reduction="batchmean")
            else:
                loss = nn.functional.cross_entropy(out, targets[idx])
            loss.backward()
            opt.step()
    return model.eval()


def extraction_attack(query: Query, pool: torch.Tensor, *, budgets: Sequence[int], victim_on_eval: torch.Tensor,
                      eval_x: torch.Tensor, eval_y: torch.Tensor, build: Callable[[], nn.Module],
                      answers: str = "confidences", epochs: int = 150, seed: int = 0) -> list[ExtractionPoint]:
    """Query ``query`` on the first ``max(budgets)`` pool inputs once, then train a surrogate per budget.

    When ``query`` refuses with ``budget-exhausted`` (a capped client, see
    :func:`.defences.budgeted`), the attack keeps the answers it got: the
    budgets beyond them are dropped and one point is added at the number of
    answers, so the last point is the fidelity at the cap. No answer at all
    gives no point.

    Args:
        victim_on_eval: the victim's outputs on ``eval_x`` (the measurement's
            reference, not part of the attacker's budget).
        build: makes a fresh surrogate (the attacker's guess at an architecture).
        answers: ``"confidences"`` (the served vector) or ``"labels"`` (top-1 only).
    """
    if answers not in ANSWERS:
        raise ParameterError(f"answers must be one of {ANSWERS}")
    budgets = sorted(int(b) for b in budgets)
    if not budgets or budgets[0] < 1 or budgets[-1] > len(pool):
        raise ParameterError(f"budgets must lie in 1..{len(pool)} (the attacker's pool)")
    replies = _answered(query, pool[: budgets[-1]])
    if len(replies) < budgets[-1]:  # capped: what the answers obtained can train
        budgets = [b for b in budgets if b < len(replies)] + ([len(replies)] if len(replies) else [])
    reference = victim_on_eval.argmax(1)
    points = []
    for budget in budgets:
        surrogate = train_surrogate(pool[:budget], replies[:budget], answers == "confidences", build,
                                    epochs=epochs, seed=seed)
        with torch.no_grad():
            predicted = surrogate(eval_x).argmax(1)
        points.append(ExtractionPoint(budget, answers, float((predicted == reference).float().mean()),
                                      float((predicted == eval_y).float().mean())))
    return points
