"""Compile the IR into HE stages: affine maps and element-wise polynomials, with sound bounds.

A TenSEAL program is a DAG of stages over flat vectors (one per input):

* an :class:`AffineStage` is ``y = sum_k M_k v_k + b`` over one or more earlier
  values ``v_k`` (the input, or a polynomial stage's output): every run of
  affine ops between them (linear, conv, pooling, reshapes, residual ``+``,
  ``torch.cat``, products with constants) is composed into one matrix per
  input by probing it in float64;
* a :class:`PolyStage` applies a polynomial element-wise: ``x**2`` and user
  polynomials exactly, other activations by per-element Chebyshev
  interpolants (:mod:`._poly`).

Soundness: from the accepted input range (the calibration range plus a
margin; the client refuses anything outside it) interval arithmetic gives
every value's range for *every* accepted input, not just the calibration
samples. Each activation is fitted on exactly the interval its input can
reach, and a worst-case error is carried along: an affine stage sums its
inputs' errors through ``|M|``, an activation adds its interpolation error
to its input error times its Lipschitz constant. :attr:`Compiled.error_bound`
is the result at the output. The degree is the smallest that brings the
error on the calibration outputs under the tolerance within the depth the
largest 128-bit ring allows; a model that cannot is refused with the numbers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from secure_infer._errors import UnsupportedModelError
from secure_infer.backends.tenseal import _poly
from secure_infer.backends.tenseal._rules import POLYNOMIAL, RULES
from secure_infer.ir import Conversion, Graph, Node, plaintext

INPUT = -1
"""The value id of the program's input; other values are stage indices."""

TOLERANCE = 0.02
"""Default tolerance for fitted activations: this fraction of the calibration outputs' standard deviation."""

PROBE_LIMIT = 60_000_000
"""Largest probe (rows x output values, float64) composed into one matrix: ~0.5 GB."""


@dataclass
class AffineStage:
    """``y = sum_k blocks[k] @ v[inputs[k]] + bias`` on flat vectors."""

    inputs: list[int]
    blocks: list[np.ndarray]  # per input (out, in_k), float64
    bias: np.ndarray  # (out,)
    paths: list[str]
    raw: tuple[list[np.ndarray], np.ndarray] | None = field(default=None, repr=False)  # before normalisation
    # which entries the architecture can make nonzero (weights drawn at random): the first stage's
    # connectivity, which a client may be told without learning any weight (None: not computed)
    structure: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def matrix(self) -> np.ndarray:
        """All blocks side by side (the one block of a single-input stage)."""
        return self.blocks[0] if len(self.blocks) == 1 else np.hstack(self.blocks)

    @matrix.setter
    def matrix(self, value: np.ndarray) -> None:
        widths = np.cumsum([b.shape[1] for b in self.blocks])[:-1]
        self.blocks = list(np.split(value, widths, axis=1))

    @property
    def in_size(self) -> int:
        return int(sum(b.shape[1] for b in self.blocks))

    @property
    def out_size(self) -> int:
        return int(self.bias.shape[0])


@dataclass
class PolyStage:
    """An element-wise polynomial on value ``input``.

    Exact polynomials (``x**2``, user polynomials) are in ``coefficients``
    (power basis, lowest first, shared by every element). Approximated
    activations carry a per-element Chebyshev :class:`~._poly.Fit` in ``fit``;
    their input stage already maps each element to ``[-1, 1]``.
    """

    input: int
    coefficients: np.ndarray
    path: str
    exact: bool
    size: int = 0
    fit: _poly.Fit | None = None
    activation: nn.Module | None = None

    @property
    def degree(self) -> int:
        return self.fit.degree if self.fit is not None else len(self.coefficients) - 1

    @property
    def chebyshev(self) -> bool:
        return self.fit is not None

    @property
    def out_size(self) -> int:
        return self.size


Stage = AffineStage | PolyStage


def stage_depth(stage: Stage, last: bool = False) -> int:
    """Rescales a stage consumes (see the executors)."""
    if isinstance(stage, AffineStage):
        return 1
    if stage.fit is not None:
        return _poly.depth(stage.degree)
    if stage.degree <= 1:
        return 1
    if stage.degree == 2 and stage.coefficients[2] == 1.0:
        return 1  # x*x + c1*x at one level (see _fold_leading_coefficients)
    return stage.degree  # Horner


@dataclass
class Compiled:
    """The stages, their bounds over every accepted input, and the plaintext reference of the HE program."""

    stages: list[Stage]
    input_size: int
    output_size: int
    output: int
    input_range: tuple[float, float]
    conversions: list[Conversion] = field(default_factory=list)
    intervals: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    errors: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.levels()[self.output]

    def levels(self, weight_bits: int = 0) -> dict[int, int]:
        """Rescales done when each value is ready (``weight_bits``: the square chain's shared rescales)."""
        out = {INPUT: 0}
        for i, stage in enumerate(self.stages):
            if isinstance(stage, AffineStage):
                out[i] = max(out[k] for k in stage.inputs) + (0 if weight_bits else 1)
            else:
                out[i] = out[stage.input] + stage_depth(stage)
        return out

    def users(self, value: int) -> list[int]:
        return [i for i, s in enumerate(self.stages)
                if (s.inputs if isinstance(s, AffineStage) else [s.input]).count(value)]

    @property
    def is_chain(self) -> bool:
        """Each stage reads the previous one (the input first) and the last is the output."""
        for i, s in enumerate(self.stages):
            if (s.inputs if isinstance(s, AffineStage) else [s.input]) != [i - 1 if i else INPUT]:
                return False
        return self.output == len(self.stages) - 1

    @property
    def error_bound(self) -> float:
        """Worst-case |HE output - model output| from the approximations, over every accepted input
        (CKKS rounding noise not included: see the program's measured allowance)."""
        return float(self.errors[self.output].max()) if self.output in self.errors else 0.0

    @property
    def output_bound(self) -> float:
        """Largest |output| the HE program can produce for an accepted input."""
        lo, hi = self.intervals[self.output]
        return float(max(np.abs(lo).max(), np.abs(hi).max()))

    def run_plain(self, x: np.ndarray, exact: frozenset[int] = frozenset()) -> np.ndarray:
        """The HE program in float64 plaintext (approximations included): ``(n, input_size)`` in.

        Approximated stages named in ``exact`` compute their true activation instead.
        """
        values = {INPUT: np.asarray(x, dtype=np.float64).reshape(len(x), -1)}
        for i, stage in enumerate(self.stages):
            if isinstance(stage, AffineStage):
                values[i] = sum(values[k] @ b.T for k, b in zip(stage.inputs, stage.blocks, strict=True)) + stage.bias
            elif stage.fit is not None and i in exact:
                assert stage.activation is not None
                raw = stage.fit.center + stage.fit.radius * values[stage.input]
                values[i] = _poly.activation_fn(stage.activation)(raw)
            elif stage.fit is not None:
                values[i] = _poly.evaluate_series(values[stage.input], stage.fit.coefficients)
            else:
                values[i] = np.polynomial.polynomial.polyval(values[stage.input], stage.coefficients)
        return values[self.output]


# ---------------------------------------------------------------------------
# Building the stages


def _kinds(graph: Graph) -> dict[str, str]:
    return {n.name: RULES.find(n).rule(n, graph) for n in graph.layers()}


def _sources(graph: Graph, target: str, kinds: dict[str, str]) -> list[str]:
    """The materialised values (input, polynomial outputs) an affine expression reads, in graph order."""
    found: set[str] = set()
    stack, seen = [target], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.node(name)
        if node.op == "input" or kinds.get(name) == POLYNOMIAL:
            found.add(name)
        else:
            stack.extend(node.inputs)
    return [n.name for n in graph.nodes if n.name in found]


def _cone(graph: Graph, target: str, sources: list[str]) -> list[Node]:
    """The affine nodes between ``sources`` and ``target`` (inclusive), in graph order."""
    needed, stack = set(), [target]
    while stack:
        name = stack.pop()
        if name in needed or name in sources:
            continue
        needed.add(name)
        stack.extend(graph.node(name).inputs)
    return [n for n in graph.nodes if n.name in needed]


def _flat_size(node: Node) -> int:
    return int(math.prod(node.feature_shape))


def _generic(module: nn.Module) -> nn.Module:
    """``module`` with every float parameter and buffer drawn from U(0.5, 1.5): its structure, none of its values."""
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=rng, dtype=tensor.dtype))
    return module


def _compose(graph: Graph, target: str, sources: list[str],
             generic: bool = False) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Blocks and bias of the affine map from ``sources`` to ``target``, by probing in float64.

    ``generic``: with every module's weights drawn at random, so that the
    blocks' zero pattern is the architecture's (which outputs read which
    inputs), not an accident of the trained values.
    """
    sizes = [_flat_size(graph.node(s)) for s in sources]
    rows = 1 + sum(sizes)
    target_node = graph.node(target)
    if rows * max(_flat_size(target_node), 1) > PROBE_LIMIT:
        raise UnsupportedModelError(
            f"{target_node.path or target}: composing this layer for HE needs a {rows} x "
            f"{_flat_size(target_node)} matrix; the model is too large for this backend. Use smaller "
            "inputs/layers, or backend='crypten'", module_path=target_node.path, module_type=target_node.type_name)
    values: dict[str, torch.Tensor] = {}
    offset = 1
    for name, size in zip(sources, sizes, strict=True):
        node = graph.node(name)
        probe = torch.zeros(rows, size, dtype=torch.float64)
        probe[offset : offset + size] = torch.eye(size, dtype=torch.float64)
        offset += size
        shaped = probe.reshape(rows, *node.feature_shape)
        values[name] = shaped.movedim(0, node.batch_dim) if node.batch_dim else shaped
    cone = _cone(graph, target, sources)
    with torch.no_grad():
        for node in cone:
            if node.op == "output":
                continue
            step = copy.copy(node)
            if node.module is not None:
                step.module = copy.deepcopy(node.module).double()
                if generic:
                    step.module = _generic(step.module)
            values[node.name] = plaintext(step, [values[i] for i in node.inputs], rows).double()
    out = values[target]
    if target_node.batch_dim:
        out = out.movedim(target_node.batch_dim, 0)
    flat = out.reshape(rows, -1).numpy()
    bias = flat[0].copy()
    blocks, offset = [], 1
    for size in sizes:
        blocks.append((flat[offset : offset + size] - flat[0]).T.copy())
        offset += size
    return blocks, bias, [n.path or n.name for n in cone if n.op != "output"]


def _build(graph: Graph, kinds: dict[str, str]) -> tuple[list[Stage], int, dict[int, Node]]:
    """The stage DAG (approximations not fitted yet) and, per approximated stage, its node."""
    stages: list[Stage] = []
    value: dict[str, int] = {graph.nodes[0].name: INPUT}
    approximated: dict[int, Node] = {}

    def affine(target: str) -> int:
        sources = _sources(graph, target, kinds)
        blocks, bias, paths = _compose(graph, target, sources)
        stage = AffineStage([value[s] for s in sources], blocks, bias, paths)
        if sources == [graph.nodes[0].name]:  # reads the client's input: its packing may follow the structure
            structure = [b != 0 for b in _compose(graph, target, sources, generic=True)[0]]
            if all(not (real & ~known).any() for real, known in zip([b != 0 for b in blocks], structure, strict=True)):
                stage.structure = structure
        stages.append(stage)
        return len(stages) - 1

    for node in graph.layers():
        if kinds[node.name] != POLYNOMIAL:
            continue
        src = node.inputs[0]
        exact = node.op in ("square", "poly")
        if exact and src in value:
            inp = value[src]
        else:
            inp = affine(src)
        size = _flat_size(node)
        if node.op == "square":
            stage = PolyStage(inp, np.array([0.0, 0.0, 1.0]), node.path or node.name, True, size)
        elif node.op == "poly":
            assert node.module is not None
            coefficients = node.module.coefficients.detach().double().numpy().copy()  # type: ignore[operator]
            stage = PolyStage(inp, coefficients, node.path or node.name, True, size)
        else:
            stage = PolyStage(inp, np.zeros(0), node.path or node.name, False, size, activation=node.module)
            approximated[len(stages)] = node
        stages.append(stage)
        value[node.name] = len(stages) - 1
    out = graph.output.inputs[0]
    output = value[out] if out in value and value[out] != INPUT else affine(out)
    for built in stages:
        if isinstance(built, AffineStage):
            built.raw = ([b.copy() for b in built.blocks], built.bias.copy())
    return stages, output, approximated


# ---------------------------------------------------------------------------
# Bounds and fits


def _affine_bounds(stage: AffineStage, intervals: dict[int, tuple[np.ndarray, np.ndarray]],
                   errors: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    center = stage.bias.copy()
    radius = np.zeros_like(center)
    error = np.zeros_like(center)
    for k, block in zip(stage.inputs, stage.blocks, strict=True):
        lo, hi = intervals[k]
        center += block @ ((lo + hi) / 2.0)
        radius += np.abs(block) @ ((hi - lo) / 2.0)
        error += np.abs(block) @ errors[k]
    return center - radius, center + radius, error


def _exact_poly_bounds(stage: PolyStage, lo: np.ndarray, hi: np.ndarray,
                       error: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    poly = np.polynomial.Polynomial(stage.coefficients)
    deriv = poly.deriv()
    critical = [r.real for r in deriv.roots() if abs(r.imag) < 1e-12] if stage.degree > 1 else []
    out_lo, out_hi = np.minimum(poly(lo), poly(hi)), np.maximum(poly(lo), poly(hi))
    for r in critical:
        inside = (lo < r) & (r < hi)
        out_lo = np.where(inside, np.minimum(out_lo, poly(r)), out_lo)
        out_hi = np.where(inside, np.maximum(out_hi, poly(r)), out_hi)
    # |p(x~) - p(x)| <= sup |p'| over the interval widened by the input error, times that error
    wide_lo, wide_hi = lo - error, hi + error
    slope = np.maximum(np.abs(deriv(wide_lo)), np.abs(deriv(wide_hi)))
    for r in ([r.real for r in deriv.deriv().roots() if abs(r.imag) < 1e-12] if stage.degree > 2 else []):
        inside = (wide_lo < r) & (r < wide_hi)
        slope = np.where(inside, np.maximum(slope, abs(deriv(r))), slope)
    return out_lo, out_hi, slope * error


RANGE_SLACK = 1e-5
"""Inputs this fraction of the range's span outside it are still accepted (float32 rounding at its ends);
the bounds cover them."""


def accepted_bounds(input_range: tuple[float, float]) -> tuple[float, float]:
    """The interval the client's check lets through: the published range plus :data:`RANGE_SLACK`."""
    slack = RANGE_SLACK * max(input_range[1] - input_range[0], 1e-12)
    return input_range[0] - slack, input_range[1] + slack


Relaxation = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # slope/offset below, slope/offset above


def _backward_bounds(stages: list[Stage], target: int, intervals: dict[int, tuple[np.ndarray, np.ndarray]],
                     relaxations: dict[int, Relaxation]) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of affine stage ``target``'s output by back-substitution to the input (CROWN).

    Each earlier polynomial stage is replaced by linear bounds on its input
    interval (one line below, one above), so the correlations interval
    arithmetic loses between the elements of a layer are kept: much tighter
    bounds after the first activation.
    """
    return _backward(stages, target, intervals, relaxations, upper=False), \
        _backward(stages, target, intervals, relaxations, upper=True)


def _backward(stages: list[Stage], target: int, intervals: dict[int, tuple[np.ndarray, np.ndarray]],
              relaxations: dict[int, Relaxation], upper: bool) -> np.ndarray:
    stage = stages[target]
    assert isinstance(stage, AffineStage)
    coefs: dict[int, np.ndarray] = {}
    for k, block in zip(stage.inputs, stage.blocks, strict=True):
        coefs[k] = coefs.get(k, 0) + block
    const = stage.bias.copy()
    while any(k != INPUT for k in coefs):
        value = max(k for k in coefs if k != INPUT)  # a value's users all come later: they are done
        lam = coefs.pop(value)
        source = stages[value]
        if isinstance(source, AffineStage):
            for k, block in zip(source.inputs, source.blocks, strict=True):
                coefs[k] = coefs.get(k, 0) + lam @ block
            const = const + lam @ source.bias
            continue
        slope_lo, off_lo, slope_hi, off_hi = relaxations[value]
        pos, neg = np.maximum(lam, 0.0), np.minimum(lam, 0.0)
        # an upper bound takes the line above where the coefficient is positive, below where negative
        s_pos, o_pos, s_neg, o_neg = ((slope_hi, off_hi, slope_lo, off_lo) if upper
                                      else (slope_lo, off_lo, slope_hi, off_hi))
        const = const + pos @ o_pos + neg @ o_neg
        coefs[source.input] = coefs.get(source.input, 0) + pos * s_pos[None, :] + neg * s_neg[None, :]
    lam_input = coefs.get(INPUT)
    if lam_input is None or np.isscalar(lam_input):
        return const
    lo, hi = intervals[INPUT]
    center, radius = (lo + hi) / 2.0, (hi - lo) / 2.0
    return const + lam_input @ center + (1.0 if upper else -1.0) * (np.abs(lam_input) @ radius)


def _relaxation(stage: PolyStage, lo: np.ndarray, hi: np.ndarray) -> Relaxation:
    if stage.fit is not None:  # in the normalised variable u, on [-1, 1] (which contains [lo, hi])
        return stage.fit.relaxation
    return _poly.relax_power_series(stage.coefficients, lo, hi)


def propagate(stages: list[Stage], input_size: int, input_range: tuple[float, float], degrees: dict[int, int],
              output: int | None = None) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, np.ndarray],
                                                   dict[int, float]]:
    """Interval and worst-case error of every value; fits each activation on its interval.

    ``degrees`` gives each approximated stage's degree. An affine stage's range
    is the tighter of interval arithmetic and back-substitution
    (:func:`_backward_bounds`). An approximated stage's input stage is
    rescaled in place so that each element's interval becomes [-1, 1], the
    domain of its interpolant. Also returns how much of the worst-case output
    error each approximated stage causes (its fit error carried to the output).
    """
    low, high = accepted_bounds(input_range)
    intervals = {INPUT: (np.full(input_size, low), np.full(input_size, high))}
    errors = {INPUT: np.zeros(input_size)}
    shares: dict[int, dict[int, np.ndarray]] = {INPUT: {}}  # value -> approximated stage -> its part of the error
    relaxations: dict[int, Relaxation] = {}
    bounded = {s.input for s in stages if isinstance(s, PolyStage)} | ({output} if output is not None else set())
    for i, stage in enumerate(stages):
        if isinstance(stage, AffineStage):
            assert stage.raw is not None
            stage.blocks, stage.bias = [b.copy() for b in stage.raw[0]], stage.raw[1].copy()
            lo, hi, err = _affine_bounds(stage, intervals, errors)
            part: dict[int, np.ndarray] = {}
            for k, block in zip(stage.inputs, stage.blocks, strict=True):
                for src, e in shares[k].items():
                    part[src] = part.get(src, 0) + np.abs(block) @ e
            if i in bounded and relaxations:
                back_lo, back_hi = _backward_bounds(stages, i, intervals, relaxations)
                lo, hi = np.maximum(lo, back_lo), np.minimum(hi, back_hi)
        elif stage.exact:
            lo, hi, err = _exact_poly_bounds(stage, *intervals[stage.input], errors[stage.input])
            gain = err / np.maximum(errors[stage.input], 1e-300)
            part = {src: gain * e for src, e in shares[stage.input].items()}
        else:
            assert stage.activation is not None
            source = stages[stage.input]
            assert isinstance(source, AffineStage)
            a, b = intervals[stage.input]
            found = _poly.fit(_poly.activation_fn(stage.activation), a, b, degrees[i])
            stage.fit = found
            c, r = found.center, found.radius
            source.blocks = [blk / r[:, None] for blk in source.blocks]
            source.bias = (source.bias - c) / r
            err_in = errors[stage.input]
            intervals[stage.input] = ((a - c) / r, (b - c) / r)
            errors[stage.input] = err_in / r
            lo, hi, err = found.low, found.high, found.error + found.lipschitz * err_in
            part = {src: found.lipschitz * e for src, e in shares[stage.input].items()}
            part[i] = found.error.copy()
        if isinstance(stage, PolyStage):
            relaxations[i] = _relaxation(stage, *intervals[stage.input])
        intervals[i], errors[i], shares[i] = (lo, hi), err, part
    final = shares.get(output if output is not None else len(stages) - 1, {})
    return intervals, errors, {src: float(np.max(e)) for src, e in final.items()}


# ---------------------------------------------------------------------------
# The entry point


def compile_graph(graph: Graph, calibration: torch.Tensor, *, degree: int | None = None, margin: float = 0.1,
                  tolerance: float | None = None,
                  feasible: Callable[[int, float], bool] | None = None) -> Compiled:
    """Stages for ``graph``, with every activation fitted on the interval its input can reach.

    ``calibration`` sets the accepted input range (its min and max, widened by
    ``margin`` of the span) and is where the approximation error is measured.
    ``degree`` fixes the degree of every fitted activation; by default each gets
    its own, from :data:`~._poly.DEGREES`: starting low, the degree of the
    activation that contributes most to the worst-case output error is raised
    until the error on the calibration outputs is at most ``tolerance``
    (default: :data:`TOLERANCE` of their standard deviation), as long as
    ``feasible(depth, max_abs_output)`` accepts the program's depth.

    Raises:
        UnsupportedModelError: an op CKKS cannot run here, or no degree fits.
    """
    kinds = _kinds(graph)
    calib = graph.prepare(calibration).double()
    low, high = float(calib.min()), float(calib.max())
    pad = margin * max(high - low, 1e-3)
    input_range = (low - pad, high + pad)
    stages, output, approximated = _build(graph, kinds)
    _fold_leading_coefficients(stages, output)
    input_size = int(math.prod(graph.input_shape[1:]))
    output_size = int(math.prod(graph.output.feature_shape))
    compiled = Compiled(stages, input_size, output_size, output, input_range)
    with torch.no_grad():
        truth = graph.run_core(calibration).double()
    core_out = graph.output
    if core_out.batch_dim:
        truth = truth.movedim(core_out.batch_dim, 0)
    truth_flat = truth.reshape(len(truth), -1).numpy()
    flat_in = calib.reshape(len(calib), -1).numpy()
    if tolerance is None:
        tolerance = max(TOLERANCE * float(truth_flat.std()), 1e-3)
    if not approximated:
        compiled.intervals, compiled.errors, _ = propagate(stages, input_size, input_range, {}, output)
        return compiled
    # Per stage, the smallest degree that does the job: start low, and raise the degree of the
    # activation whose error costs most on the calibration outputs (measured by computing it
    # exactly instead), until they are within tolerance: smooth activations stop early,
    # ReLU-like ones go higher.
    ladder = list(_poly.DEGREES)
    degrees = {i: degree if degree is not None else ladder[0] for i in approximated}
    tried: list[str] = []
    while True:
        if feasible is not None and not feasible(_depth(compiled, degrees), float(np.abs(truth_flat).max())):
            tried.append(f"degrees {sorted(set(degrees.values()))}: depth {_depth(compiled, degrees)} "
                         "(does not fit the largest ring)")
            break
        compiled.intervals, compiled.errors, _ = propagate(stages, input_size, input_range, degrees, output)
        calib_error = float(np.abs(compiled.run_plain(flat_in) - truth_flat).max())
        depth = compiled.depth
        fits = feasible is None or feasible(depth, max(compiled.output_bound, float(np.abs(truth_flat).max())))
        tried.append(f"degrees {sorted(set(degrees.values()))}: depth {depth}, calibration error {calib_error:.3g}, "
                     f"worst case {compiled.error_bound:.3g}{'' if fits else ' (does not fit the largest ring)'}")
        if fits and (degree is not None or calib_error <= tolerance):
            compiled.conversions = _conversions(compiled, approximated, graph, calib, calib_error)
            return compiled
        raisable = [i for i in approximated if degrees[i] < ladder[-1]]
        if not fits or degree is not None or not raisable:
            break
        if len(raisable) == 1:
            worst = raisable[0]
        else:
            worst = min(raisable, key=lambda i: float(np.abs(compiled.run_plain(flat_in, frozenset([i]))
                                                             - truth_flat).max()))
        degrees[worst] = ladder[ladder.index(degrees[worst]) + 1]
    ranges = "; ".join(
        f"{node.path or node.name} ({node.type_name}) sees inputs in "
        f"[{float(stages[i].fit.center.min() - stages[i].fit.radius.max()):.3g}, "  # type: ignore[union-attr]
        f"{float(stages[i].fit.center.max() + stages[i].fit.radius.max()):.3g}]"  # type: ignore[union-attr]
        for i, node in approximated.items() if stages[i].fit is not None)  # type: ignore[union-attr]
    first = next(iter(approximated.values()))
    raise UnsupportedModelError(
        f"no polynomial degrees make this model's activations accurate over every accepted input within the "
        f"depth a 128-bit CKKS ring allows (tolerance {tolerance:.3g} on the calibration outputs). Tried: "
        f"{'; '.join(tried[-4:])}. Over the accepted input range [{input_range[0]:.3g}, {input_range[1]:.3g}]: "
        f"{ranges}. Narrow the accepted range (calibration= closer to the real inputs, margin=0), raise tolerance=, "
        "replace the activations by x**2 and fine-tune (si.approximations.polynomial_model), or use backend='crypten'",
        module_path=first.path, module_type=first.type_name)


def _depth(compiled: Compiled, degrees: dict[int, int]) -> int:
    """The program's depth with these activation degrees (no fitting needed)."""
    levels = {INPUT: 0}
    for i, stage in enumerate(compiled.stages):
        if isinstance(stage, AffineStage):
            levels[i] = max(levels[k] for k in stage.inputs) + 1
        elif i in degrees:
            levels[i] = levels[stage.input] + _poly.depth(degrees[i])
        else:
            levels[i] = levels[stage.input] + stage_depth(stage)
    return levels[compiled.output]


def _conversions(compiled: Compiled, approximated: dict[int, Node], graph: Graph, calib: torch.Tensor,
                 calib_error: float) -> list[Conversion]:
    values = graph.evaluate(calib.float())
    out = []
    for i, node in approximated.items():
        stage = compiled.stages[i]
        assert isinstance(stage, PolyStage) and stage.fit is not None
        fit = stage.fit
        x = values[node.inputs[0]].double()
        if node.batch_dim:
            x = x.movedim(node.batch_dim, 0)
        x_flat = x.reshape(len(x), -1).numpy()
        with torch.no_grad():
            truth = _poly.activation_fn(stage.activation)(x_flat)  # type: ignore[arg-type]
        measured = float(np.abs(fit(x_flat) - truth).max())
        lo = float((fit.center - fit.radius).min())
        hi = float((fit.center + fit.radius).max())
        out.append(Conversion(
            node.path or node.name, node.type_name, "approximated",
            f"degree-{stage.degree} Chebyshev interpolant per element, each on the interval its input can reach for "
            f"any accepted input (together [{lo:.3g}, {hi:.3g}]); measured on the calibration data",
            measured, float(fit.error.max()),
        ))
    return out


def _fold_leading_coefficients(stages: list[Stage], output: int) -> None:
    """a*x^2 + b*x + c = a*(x^2 + (b/a)*x + c/a): push ``a`` into the affine stages that read it.

    Saves one level per quadratic activation: the square and the linear term
    are then computed at the same level.
    """
    for i, stage in enumerate(stages):
        if not isinstance(stage, PolyStage) or not stage.exact or stage.degree != 2 or i == output:
            continue
        a = float(stage.coefficients[2])
        users = [s for s in stages if isinstance(s, AffineStage) and i in s.inputs]
        if a in (0.0, 1.0) or not users or any(isinstance(s, PolyStage) and s.input == i for s in stages):
            continue
        stage.coefficients = stage.coefficients / a
        for user in users:
            for k, block in enumerate(user.blocks):
                if user.inputs[k] == i:
                    user.blocks[k] = block * a
            user.raw = ([b.copy() for b in user.blocks], user.bias.copy())


def square_chain(compiled: Compiled) -> int:
    """``k`` when the stages are a chain ``affine (x^2 + c1 x + c0, affine) x k``, else 0.

    Such programs (CryptoNets and its kind) can share one rescale between
    each affine stage and the square after it (see ``choose_square_chain``).
    """
    stages = compiled.stages
    if len(stages) < 3 or len(stages) % 2 == 0 or not compiled.is_chain:
        return 0
    for i, stage in enumerate(stages):
        if i % 2 == 0 and not isinstance(stage, AffineStage):
            return 0
        if i % 2 == 1 and not (isinstance(stage, PolyStage) and stage.exact and stage.degree == 2
                               and stage.coefficients[2] == 1.0):
            return 0
    return len(stages) // 2
