"""The TenSEAL layer-rule registry: which layers are affine, which are polynomial.

Affine layers (Linear, Conv, AvgPool, Flatten, unfolded BatchNorm) are not
translated one by one: each run of consecutive affine layers is composed into
one matrix and bias by probing it in plaintext, so a conv followed by average
pooling costs one multiplicative level, not two. Activations become
polynomials: exact ones (x**2, fitted polynomials) and approximated ones.
"""

from __future__ import annotations

from torch import nn

from secure_infer.approximations import APPROXIMABLE, PolyActivation
from secure_infer.backends.base import LayerRules
from secure_infer.zoo import Square

AFFINE = "affine"
POLYNOMIAL = "polynomial"

RULES: LayerRules[str] = LayerRules(
    "tenseal",
    suggestions={
        nn.MaxPool2d: "Use AvgPool2d instead (rewrites=['maxpool-to-avgpool'] and fine-tune), or backend='crypten'.",
        nn.AdaptiveMaxPool2d: "Use AdaptiveAvgPool2d, or backend='crypten'.",
        nn.Softmax: "Drop the final Softmax: the logits have the same argmax; or use backend='crypten'.",
        nn.LogSoftmax: "Drop the final LogSoftmax: the logits have the same argmax; or use backend='crypten'.",
        nn.LayerNorm: "LayerNorm needs a division per input; use BatchNorm (folded exactly) instead.",
    },
)

_COMPOSED = "composed with neighbouring affine layers into one plaintext matrix (exact)"
RULES.register(nn.Linear, nn.Conv1d, nn.Conv2d, detail=_COMPOSED)(AFFINE)
RULES.register(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, detail=_COMPOSED)(AFFINE)
RULES.register(nn.Flatten, nn.Unflatten, detail="slot layout is already flat (C, H, W order)")(AFFINE)
RULES.register(nn.BatchNorm1d, nn.BatchNorm2d, detail="per-channel scale and shift, " + _COMPOSED)(AFFINE)
RULES.register(Square, detail="x**2: one ciphertext multiplication, exact")(POLYNOMIAL)
RULES.register(PolyActivation, detail="fitted polynomial, evaluated exactly")(POLYNOMIAL)
RULES.register(*APPROXIMABLE, kind="approximated",
               detail="least-squares polynomial on the calibration range")(POLYNOMIAL)
