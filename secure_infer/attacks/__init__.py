"""Attacks that measure what a way of serving a model protects.

Every attack takes a *query function* (inputs -> logits), so the same code
attacks a plaintext model, a CrypTen-wrapped one or a TenSEAL-wrapped one:
output-based attacks see the same outputs either way, and the numbers show it.
"""

from __future__ import annotations

from secure_infer.attacks.membership import MembershipResult, loss_threshold_attack, overfit_victim
from secure_infer.attacks.metrics import attack_metrics

__all__ = ["MembershipResult", "attack_metrics", "loss_threshold_attack", "overfit_victim"]
