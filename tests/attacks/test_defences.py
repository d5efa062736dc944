"""Output defences keep the answer and reveal only what they say."""

from __future__ import annotations

import torch

from secure_infer.attacks.defences import label_only, rounded, top_k


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
