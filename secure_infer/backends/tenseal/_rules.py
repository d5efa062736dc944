"""The TenSEAL rule registry, keyed by the canonical ops of :mod:`secure_infer.ir`.

CKKS evaluates additions and multiplications. A rule says what an op is under
CKKS for this node: ``"affine"`` (composed with its affine neighbours into one
plaintext matrix per input vector, by probing: linear, conv, average pooling,
mean/sum, reshapes, indexing, concatenation, residual ``+``, products with
constants) or ``"polynomial"`` (element-wise: ``x**2`` and user polynomials
exactly, other activations by a polynomial fitted on the interval its input
can reach for every accepted input). A rule raises
:class:`~secure_infer.UnsupportedModelError` with the alternative for what CKKS
cannot do here (max pooling, a softmax inside the model, LayerNorm,
attention).
"""

from __future__ import annotations

from collections.abc import Callable

from secure_infer._errors import UnsupportedModelError
from secure_infer.backends.base import LayerRules
from secure_infer.ir import ACTIVATIONS, Graph, Node

AFFINE = "affine"
POLYNOMIAL = "polynomial"

TensealRule = Callable[[Node, Graph], str]

RULES: LayerRules[TensealRule] = LayerRules(
    "tenseal",
    suggestions={
        "max_pool": "Use average pooling instead (rewrites=['maxpool-to-avgpool'] and fine-tune), or backend='crypten'.",
        "softmax": "A softmax inside the model needs division and exp; as the model's last step it runs at the "
                   "client (automatically). Otherwise use backend='crypten'.",
        "log_softmax": "As the model's last step it runs at the client (automatically); inside the model use "
                       "backend='crypten'.",
        "layer_norm": "LayerNorm divides by a per-input standard deviation; use BatchNorm (folded exactly), or "
                      "backend='crypten'.",
        "argmax": "An argmax inside the model is not supported; end the model with it (it then runs at the client).",
        "GroupNorm": "Use BatchNorm (folded exactly), or backend='crypten'.",
    },
)


def _constant(graph: Graph, name: str) -> bool:
    return graph.node(name).op == "constant"


def _refuse(node: Node, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{node.path or node.name}: {node.type_name} {why}", module_path=node.path,
                                 module_type=node.type_name)


def _affine(node: Node, graph: Graph) -> str:
    return AFFINE


def _polynomial(node: Node, graph: Graph) -> str:
    return POLYNOMIAL


_COMPOSED = "composed with neighbouring affine layers into one plaintext matrix per input (exact)"
RULES.register("linear", "conv", "avg_pool", "adaptive_avg_pool", "batch_norm", detail=_COMPOSED)(_affine)
RULES.register("mean", "sum", detail="a fixed averaging matrix, " + _COMPOSED)(_affine)
RULES.register("reshape", "permute", "expand", "getitem", "cat", "add", "scale_shift", "constant", listed=False,
               detail="a fixed linear map, " + _COMPOSED)(_affine)
RULES.register("square", detail="x**2: one ciphertext multiplication, exact")(_polynomial)
RULES.register("poly", detail="polynomial, evaluated exactly")(_polynomial)
RULES.register(*sorted(ACTIVATIONS), kind="approximated",
               detail="Chebyshev interpolant per element, on the interval its input can reach")(_polynomial)


@RULES.register("mul", "matmul", detail="product with a constant: " + _COMPOSED)
def product(node: Node, graph: Graph) -> str:
    if any(_constant(graph, name) for name in node.inputs):
        return AFFINE
    what = ("a product of two encrypted values (attention scores, gating)" if node.op == "matmul"
            else "an element-wise product of two encrypted values")
    raise _refuse(node, f"is {what}, which this backend does not evaluate yet; use backend='crypten'")
