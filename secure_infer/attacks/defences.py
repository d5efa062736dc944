"""Output-side defences: what the server lets the client see.

Each wraps a query function (inputs -> logits) and returns log-probabilities
of what it reveals, so every attack reads them as it reads logits. They do not
change the top-1 answer, only what comes with it.
"""

from __future__ import annotations

import torch

from secure_infer.attacks.membership import Query

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
