"""Compile the IR into HE stages: affine maps and element-wise polynomials.

A TenSEAL program is a chain ``affine -> polynomial -> affine -> ...``. Each
affine stage is one plaintext matrix and bias (composed from consecutive
affine layers); each polynomial stage is an activation (exact, or fitted on
the calibration range). Both execution modes run the same stages.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from secure_infer._errors import UnsupportedModelError
from secure_infer.approximations import APPROXIMABLE, PolyActivation, fit
from secure_infer.backends.tenseal._rules import AFFINE, RULES
from secure_infer.graph import Conversion, Graph, Node, apply_node
from secure_infer.zoo import Square


@dataclass
class AffineStage:
    """``y = matrix @ x + bias`` on flat vectors."""

    matrix: np.ndarray  # (out, in), float64
    bias: np.ndarray  # (out,)
    paths: list[str]

    @property
    def in_size(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def out_size(self) -> int:
        return int(self.matrix.shape[0])


@dataclass
class PolyStage:
    """Element-wise polynomial, coefficients lowest degree first."""

    coefficients: np.ndarray
    path: str
    exact: bool
    scale_next: float = 1.0  # leading coefficient folded into the next affine stage

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1


@dataclass
class Compiled:
    stages: list[AffineStage | PolyStage]
    input_size: int
    output_size: int
    approximated: Graph  # the graph with polynomials in place: the HE reference in plaintext
    conversions: list[Conversion] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return sum(stage_depth(s, i == len(self.stages) - 1) for i, s in enumerate(self.stages))


def stage_depth(stage: AffineStage | PolyStage, last: bool) -> int:
    """Rescales a stage consumes (see the executors)."""
    if isinstance(stage, AffineStage) or stage.degree <= 1:
        return 1
    if stage.degree == 2 and stage.coefficients[2] == 1.0:
        return 1  # x*x + c1*x at one level (see _fold_leading_coefficients)
    return stage.degree  # Horner


def _chain(graph: Graph) -> list[Node]:
    """The layers in order; HE programs here are chains (no residuals yet)."""
    layers = []
    previous = graph.nodes[0].name
    for node in graph.nodes[1:]:
        if node.op not in ("module", "reshape", "output") or node.inputs != (previous,):
            raise UnsupportedModelError(
                f"{node.label}: the tenseal backend runs sequential models; "
                f"'{node.op}' joining several branches is not supported yet. Use backend='crypten' "
                "for residual or concatenating models",
                module_path=node.path or node.name,
                module_type=node.op,
            )
        if node.op != "output":
            layers.append(node)
        previous = node.name
    return layers


def _affine_of(nodes: list[Node], in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Compose affine layers into (matrix, bias) by probing them in float64."""
    n = int(np.prod(in_shape))
    probe = torch.cat([torch.zeros(1, n), torch.eye(n)]).double().reshape(n + 1, *in_shape)
    with torch.no_grad():
        out = probe
        for node in nodes:
            layer = copy.deepcopy(node.module).double() if node.module is not None else None
            out = apply_node(node, [out], None, layer)
    out = out.reshape(n + 1, -1)
    bias = out[0].numpy().copy()
    matrix = (out[1:] - out[0]).T.numpy().copy()
    return matrix, bias


def compile_graph(graph: Graph, calibration: torch.Tensor, *, degree: int | None = None,
                  margin: float = 0.1) -> Compiled:
    """Stages for ``graph``; activations fitted on ``calibration`` inputs."""
    layers = _chain(graph)
    approximated = copy.deepcopy(graph)
    values = graph.evaluate(calibration)
    conversions: list[Conversion] = []
    stages: list[AffineStage | PolyStage] = []
    run: list[Node] = []
    run_shape = graph.input_shape[1:]
    for node in layers:
        is_affine = node.op == "reshape" or RULES.find(node).rule == AFFINE
        if is_affine:
            if not run:
                run_shape = tuple(values[node.inputs[0]].shape[1:])
            run.append(node)
            continue
        if run:
            stages.append(AffineStage(*_affine_of(run, run_shape), [n.path or n.name for n in run]))
            run = []
        module = node.module
        assert module is not None
        if isinstance(module, Square):
            coeffs, exact = np.array([0.0, 0.0, 1.0]), True
        elif isinstance(module, PolyActivation):
            coeffs, exact = module.coefficients.detach().double().numpy(), True
        else:
            x = values[node.inputs[0]]
            lo, hi = float(x.min()), float(x.max())
            pad = margin * max(hi - lo, 1e-3)
            poly = fit(module, lo - pad, hi + pad, degree or APPROXIMABLE[type(module)])
            with torch.no_grad():
                err = float((poly(x.double()) - module(x.double())).abs().max())
            conversions.append(Conversion(
                node.path, type(module).__name__, "approximated",
                f"degree-{poly.degree} least-squares polynomial on [{lo - pad:.3g}, {hi + pad:.3g}] "
                f"(calibration range + {margin:.0%})", err,
            ))
            approximated.node(node.name).module = poly
            coeffs, exact = poly.coefficients.detach().double().numpy(), False
        stages.append(PolyStage(np.asarray(coeffs, dtype=np.float64), node.path or node.name, exact))
    if run:
        stages.append(AffineStage(*_affine_of(run, run_shape), [n.path or n.name for n in run]))
    _fold_leading_coefficients(stages)
    input_size = int(np.prod(graph.input_shape[1:]))
    output_size = int(np.prod(graph.output_shape[1:]))
    return Compiled(stages, input_size, output_size, approximated, conversions)


def _fold_leading_coefficients(stages: list[AffineStage | PolyStage]) -> None:
    """a*x^2 + b*x + c = a*(x^2 + (b/a)*x + c/a): push ``a`` into the next matrix.

    Saves one level per quadratic activation: the square and the linear term
    are then computed at the same level.
    """
    for i, stage in enumerate(stages):
        if not isinstance(stage, PolyStage) or stage.degree != 2 or i + 1 >= len(stages):
            continue
        nxt = stages[i + 1]
        a = float(stage.coefficients[2])
        if not isinstance(nxt, AffineStage) or a == 0.0 or a == 1.0:
            continue
        stage.coefficients = stage.coefficients / a
        stage.scale_next = a
        nxt.matrix = nxt.matrix * a


def square_chain(compiled: Compiled) -> int:
    """``k`` when the stages are ``affine (x^2 + c1 x + c0, affine) x k``, else 0.

    Such programs (CryptoNets and its kind) can share one rescale between
    each affine stage and the square after it (see ``choose_square_chain``).
    """
    stages = compiled.stages
    if len(stages) < 3 or len(stages) % 2 == 0:
        return 0
    for i, stage in enumerate(stages):
        if i % 2 == 0 and not isinstance(stage, AffineStage):
            return 0
        if i % 2 == 1 and not (isinstance(stage, PolyStage) and stage.degree == 2 and stage.coefficients[2] == 1.0):
            return 0
    return len(stages) // 2
