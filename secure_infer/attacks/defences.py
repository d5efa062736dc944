"""Output-side defences: what the server lets the client see.

Each wraps a query function (inputs -> logits) and returns log-probabilities
of what it reveals, so every attack reads them as it reads logits. They do not
change the top-1 answer, only what comes with it. :func:`budgeted` limits
how much is answered instead: a query budget, as the HE server enforces it.
"""

from __future__ import annotations

import torch

from secure_infer._errors import ParameterError, ProtocolError
from secure_infer.attacks.membership import BUDGET_EXHAUSTED, Query

_FLOOR = 1e-6  # probability given to what is not revealed, so logs stay finite


def label_only(query: Query) -> Query:
    """Reveal only the predicted class."""

    def served(x: torch.Tensor) -> torch.Tensor:
        out = query(x).float()
        probs = torch.full_like(out, _FLOOR)
        probs[torch.arange(len(x)), out.argmax(1)] = 1.0
        return probs.log()

    return served


def rounded(query: Query, decimals: int = 1) -> Query:
    """Reveal the softmax rounded to ``decimals`` decimal places."""
    scale = 10.0**decimals

    def served(x: torch.Tensor) -> torch.Tensor:
        probs = torch.round(torch.softmax(query(x).float(), 1) * scale) / scale
        return probs.clamp_min(_FLOOR).log()

    return served


def top_k(query: Query, k: int = 1) -> Query:
    """Reveal the ``k`` largest probabilities; the rest read as zero."""

    def served(x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(query(x).float(), 1)
        keep = probs.topk(k, dim=1).indices
        masked = torch.full_like(probs, _FLOOR).scatter(1, keep, probs.gather(1, keep))
        return masked.log()

    return served


class Budgeted:
    """A query interface with a budget of ``budget`` inputs in all: see :func:`budgeted`.

    Attributes:
        budget: inputs it answers in all.
        used: inputs answered so far.
        refused: requests refused so far.
    """

    def __init__(self, query: Query, budget: int) -> None:
        if budget < 0:
            raise ParameterError(f"a query budget is a number of inputs >= 0, got {budget}")
        self.query = query
        self.budget = int(budget)
        self.used = 0
        self.refused = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        inputs = len(x)
        if self.used + inputs > self.budget:
            self.refused += 1
            raise ProtocolError(f"this client has used {self.used} of its budget of {self.budget} inputs; this "
                                f"request needs {inputs}", code=BUDGET_EXHAUSTED)
        out = self.query(x)
        self.used += inputs
        return out


def budgeted(query: Query, budget: int) -> Budgeted:
    """Answer ``budget`` inputs in all, then refuse: the per-client budget of ``secure-infer serve --state``.

    Each call is one request charged one input per row (the server's latency
    mode). A request that would go over the budget is refused whole, nothing
    of it answered and nothing charged, with a :class:`~secure_infer.ProtocolError`
    whose ``code`` is ``"budget-exhausted"``, the code the HE client raises for
    the server's refusal; a later request that still fits is answered, as the
    server does. The attacks stop at the first refused single input, so each
    uses at most ``budget`` inputs and reports what it achieved with them.
    """
    return Budgeted(query, budget)
