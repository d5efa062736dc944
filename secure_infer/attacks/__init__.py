"""Attacks that measure what a way of serving a model protects.

Every attack takes a *query function* (inputs -> logits), so the same code
attacks a plaintext model, a CrypTen-wrapped one or a TenSEAL-wrapped one:
output-based attacks see the same outputs either way, and the numbers show it.

* :mod:`.membership` — loss threshold, shadow models (Shokri et al.), LiRA offline (Carlini et al.)
* :mod:`.extraction` — surrogate training from the answers, against the query budget
* :mod:`.inversion` — class representatives from confidences (Fredrikson et al.), MSE and SSIM
* :mod:`.input_privacy` — what the server observes (input, ciphertext, shares) and what it reveals
* :mod:`.defences` — label-only, rounded, top-k outputs, a per-client query budget; :mod:`.dp` — DP-SGD through Opacus
* :mod:`.suite` — all of them against every serving configuration (``secure-infer attack``)
"""

from __future__ import annotations

from secure_infer.attacks.extraction import ExtractionPoint, extraction_attack
from secure_infer.attacks.gradient_inversion import (
    GradientInversionResult,
    ImageMatch,
    Reconstruction,
    client_gradient,
    gradient_inversion_attack,
    invert_gradient,
    match_images,
    psnr,
    reconstruction_grid,
    recover_labels,
)
from secure_infer.attacks.input_privacy import InputPrivacyResult, attack_view
from secure_infer.attacks.inversion import InversionResult, inversion_attack, ssim
from secure_infer.attacks.membership import (
    MembershipResult,
    ShadowModels,
    lira_offline,
    loss_threshold_attack,
    overfit_victim,
    shadow_model_attack,
    victim_trainer,
)
from secure_infer.attacks.metrics import attack_metrics

__all__ = [
    "ExtractionPoint",
    "InputPrivacyResult",
    "InversionResult",
    "MembershipResult",
    "ShadowModels",
    "attack_metrics",
    "attack_view",
    "extraction_attack",
    "inversion_attack",
    "lira_offline",
    "loss_threshold_attack",
    "overfit_victim",
    "shadow_model_attack",
    "ssim",
    "victim_trainer",
    "GradientInversionResult",
    "ImageMatch",
    "Reconstruction",
    "client_gradient",
    "gradient_inversion_attack",
    "invert_gradient",
    "match_images",
    "psnr",
    "reconstruction_grid",
    "recover_labels",
]
