"""Output defences keep the answer and reveal only what they say."""

from __future__ import annotations

import pytest
import torch

from secure_infer import ParameterError, ProtocolError, zoo
from secure_infer.attacks import extraction_attack
from secure_infer.attacks.defences import Budgeted, budgeted, label_only, rounded, top_k


def _logits() -> torch.Tensor:
    return torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])


def test_each_defence_keeps_the_top_answer() -> None:
    query = lambda x: x  # noqa: E731  (the "model" returns its input as logits)
    for defended in (label_only(query), rounded(query, 1), top_k(query, 1), top_k(query, 2)):
        assert torch.equal(defended(_logits()).argmax(1), _logits().argmax(1))


def test_what_each_defence_reveals() -> None:
    query = lambda x: x  # noqa: E731
    label = torch.softmax(label_only(query)(_logits()), 1)
    assert torch.allclose(label.max(1).values, torch.ones(2), atol=1e-4)  # a one-hot answer, nothing else
    coarse = torch.exp(rounded(query, 1)(_logits()))
    assert torch.allclose(coarse * 10, torch.round(coarse * 10), atol=1e-4)  # multiples of 0.1
    kept = torch.exp(top_k(query, 2)(_logits()))
    assert ((kept > 1e-5).sum(1) == 2).all()  # two probabilities revealed per row


# A query budget: what `secure-infer serve --state` enforces per client, modelled for the attacks.

def _identity_budget(budget: int) -> Budgeted:
    return budgeted(lambda x: x.float(), budget)


def test_a_budget_answers_exactly_its_inputs_then_refuses() -> None:
    served = _identity_budget(5)
    for _ in range(5):
        served(torch.zeros(1, 3))
    assert served.used == 5 and served.remaining == 0
    with pytest.raises(ProtocolError) as refused:
        served(torch.zeros(1, 3))
    assert refused.value.code == "budget-exhausted" and served.used == 5


def test_a_batch_straddling_the_cap_is_refused_whole_and_not_charged() -> None:
    calls: list[int] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.float()

    served = budgeted(model, 10)
    served(torch.zeros(7, 3))
    with pytest.raises(ProtocolError, match="budget of 10") as refused:
        served(torch.zeros(4, 3))  # 7 + 4 > 10: nothing of it answered, nothing charged
    assert refused.value.code == "budget-exhausted"
    assert calls == [7] and served.used == 7 and served.refused == 1
    assert served(torch.zeros(3, 3)).shape == (3, 3)  # what still fits is answered, as the server does
    with pytest.raises(ProtocolError):
        served(torch.zeros(1, 3))
    assert calls == [7, 3] and served.used == 10


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ParameterError, match="budget"):
        budgeted(lambda x: x, -1)


def test_the_attacks_take_exactly_the_budget_in_batches() -> None:
    """Halving refused batches reaches the remaining budget exactly, whatever it is."""
    from secure_infer.attacks.membership import _answered

    for budget in (0, 1, 37, 200, 1000):
        served = _identity_budget(budget)
        out = _answered(served, torch.arange(300.0)[:, None], batch_size=128)
        assert len(out) == min(budget, 300) and served.used == min(budget, 300)
        assert torch.equal(out.flatten(), torch.arange(float(len(out))))  # a prefix, in order


def test_other_errors_are_not_taken_for_a_refusal() -> None:
    from secure_infer.attacks.membership import _answered

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ProtocolError("the server answered another request", code="unexpected-message")

    with pytest.raises(ProtocolError, match="another request"):
        _answered(broken, torch.zeros(4, 3))


def test_extraction_under_a_cap_stops_there(trained_zoo, digits) -> None:
    victim = trained_zoo["mlp"].model
    reference = victim(digits.x_test).detach()
    build = lambda: zoo.build("mlp", digits.input_shape, digits.num_classes, seed=3)  # noqa: E731
    kwargs = dict(budgets=[20, 60, 120], victim_on_eval=reference, eval_x=digits.x_test, eval_y=digits.y_test,
                  build=build, epochs=15)
    free = extraction_attack(victim, digits.x_train, **kwargs)
    served = budgeted(victim, 60)
    capped = extraction_attack(served, digits.x_train, **kwargs)
    assert served.used <= 60 and [p.budget for p in capped] == [20, 60]
    assert capped == free[:2]  # the same seed: a cap buys exactly the uncapped curve up to it
    assert capped[-1].agreement <= max(p.agreement for p in free)
    off_grid = budgeted(victim, 45)
    assert [p.budget for p in extraction_attack(off_grid, digits.x_train, **kwargs)] == [20, 45]
    assert off_grid.used == 45
    assert extraction_attack(budgeted(victim, 0), digits.x_train, **kwargs) == []


def test_membership_under_a_tiny_cap_is_near_chance(digits) -> None:
    from secure_infer.attacks import loss_threshold_attack, overfit_victim

    model, subset = overfit_victim(digits, members=50, epochs=200)
    members = (subset.x_train, subset.y_train)
    non_members = (digits.x_test[:150], digits.y_test[:150])
    free = loss_threshold_attack(model, members, non_members)
    assert free.auc > 0.7 and free.queried == 200 and free.coverage == 1.0 and free.auc_queried == free.auc
    results = {}
    for cap in (100, 4):
        served = budgeted(model, cap)
        results[cap] = r = loss_threshold_attack(served, members, non_members)
        assert served.used == cap and r.queried == cap and r.coverage == cap / 200
        assert r.members == 50 and r.non_members == 150 and len(r.scores) == 200  # every candidate is scored
    assert abs(results[4].auc - 0.5) < 0.05
    assert 0.5 < results[100].auc < free.auc  # half the candidates: in between
    assert results[100].auc_queried is not None and results[100].auc_queried > 0.65  # those it asked about: as well as ever
