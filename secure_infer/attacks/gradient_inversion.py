"""Gradient inversion: reconstruct a federated client's training images from its model update.

In federated learning the server never sees a client's data, only its update.
For one FedSGD step (or one local step) the update is ``-lr * gradient`` of the
loss on the client's batch, and that gradient is a function of the batch that
an honest-but-curious server can invert:

* **DLG** — Zhu, Liu & Han (2019), *Deep Leakage from Gradients*: optimise
  dummy inputs so that their gradient matches the observed one in L2, with
  L-BFGS. Labels come from the last layer's gradient instead of being
  optimised jointly where that is possible: for one image the sign trick of
  Zhao, Mopuri & Bilen (2020), *iDLG* (only the true class has a negative
  gradient), for a batch the negative entries and their sizes (Wainakh et al.
  2022, *User-Level Label Leakage from Gradients*); a model without a
  recognisable last linear layer falls back to DLG's joint soft-label
  optimisation. One change to the paper: L-BFGS runs in short rounds with the
  images put back into [0, 1] between them, and stuck starts give way to new
  ones: on a *trained* ReLU MLP plain DLG stalls in poor minima (see
  :func:`_dlg`).
* **cosine** — Geiping, Bauermeister, Dröge & Moeller (2020), *Inverting
  Gradients*: minimise ``1 - cos(dummy gradient, observed gradient)`` plus a
  total-variation prior with signed Adam steps, images kept in the data range
  [0, 1], a few random restarts keeping the best matching loss. The cosine is
  blind to the update's scale, so a learning rate or a sum over clients does
  not throw it off.

Success is measured as it is for :mod:`.inversion`: SSIM (and PSNR) of each
reconstruction to the client's true image, under the best one-to-one
assignment (a batch's order is not revealed by its gradient), next to a
*chance* level: the same matching applied to random other images of the data
set. Under secure aggregation the server sees only the sum of K clients'
updates; :func:`gradient_inversion_attack` measures how far that drives the
reconstruction of one client's images towards chance. On average it does; a
client whose sample dominates the sum (one the trained model gets badly wrong
has by far the largest gradient) can still be recovered from it.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from secure_infer._errors import ParameterError
from secure_infer.attacks.inversion import ssim

Method = Literal["dlg", "cosine"]
METHODS: tuple[str, ...] = ("dlg", "cosine")

# Defaults per method: a batch-1 attack on the digits MLP takes a few seconds on one core.
_DEFAULT_STEPS = {"dlg": 400, "cosine": 400}
_DEFAULT_RESTARTS = {"dlg": 6, "cosine": 4}
# A matching loss this low is a solved start (float32 gradients leave ~1e-9): no more restarts.
_SOLVED = {"dlg": 1e-7, "cosine": 1e-5}
_LBFGS_ROUND = 20
_PATIENCE = 3  # L-BFGS rounds without a 0.1% better loss that end a DLG start


@dataclass(frozen=True)
class Reconstruction:
    """What :func:`invert_gradient` recovered from one gradient.

    Attributes:
        images: ``(batch_size, *input_shape)`` in [0, 1], in the optimiser's order.
        labels: the label used for each image (recovered from the gradient, or optimised).
        loss: the final gradient-matching loss of the best restart (lower is a closer match).
        seconds: wall-clock time of the whole inversion, all restarts.
        labels_from: ``"last layer"`` (read from the gradient), ``"optimised"`` or ``"given"``.
    """

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor
    loss: float
    seconds: float
    labels_from: str


@dataclass(frozen=True)
class ImageMatch:
    """Reconstructions paired one-to-one with true images, maximising total SSIM.

    ``order[i]`` is the index of the reconstruction assigned to true image ``i``.
    """

    order: tuple[int, ...]
    ssim: tuple[float, ...]
    psnr: tuple[float, ...]

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))


@dataclass(frozen=True)
class GradientInversionResult:
    """One gradient-inversion attack against one target client, measured against the truth.

    Attributes:
        method: ``"dlg"`` or ``"cosine"``.
        batch_size: the target client's batch size (images to recover).
        clients_in_view: K, the number of clients whose gradients the server saw summed
            (1: the target's own update; > 1: a secure-aggregation view).
        ssim, psnr: per true image, against its assigned reconstruction.
        label_accuracy: share of the target's labels recovered (as a multiset: order-free).
            Under aggregation this compares the recovered labels with the target's alone.
        chance_ssim: mean SSIM, under the same one-to-one matching, of random reference
            images of the same data set to the target images; ``nan`` without references.
        seconds: time of the inversion.
        images: reconstructions, reordered so that ``images[i]`` is matched to ``truth[i]``.
        truth: the target's true images.
        loss: the final gradient-matching loss.
        reconstructed: how many images the attack recovered: ``batch_size`` (the default,
            also what 0 stands for) unless it attacked an aggregate as one batch of all
            clients' images.
        clip_norm, noise_std: the DP-FedAvg treatment of what the server saw (each client's
            gradient clipped to ``clip_norm``, Gaussian noise of ``noise_std`` on the sum);
            ``None`` and 0.0 without it.
    """

    method: str
    batch_size: int
    clients_in_view: int
    ssim: tuple[float, ...]
    psnr: tuple[float, ...]
    label_accuracy: float
    chance_ssim: float
    seconds: float
    loss: float
    images: torch.Tensor = field(repr=False)
    truth: torch.Tensor = field(repr=False)
    reconstructed: int = 0
    clip_norm: float | None = None
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.reconstructed == 0:
            object.__setattr__(self, "reconstructed", self.batch_size)

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def view(self) -> str:
        """A short description of what the server saw, for reports."""
        view = (
            "one client's update"
            if self.clients_in_view == 1
            else f"sum of {self.clients_in_view} clients' updates"
        )
        if self.noise_std > 0 or self.clip_norm is not None:
            view += f", clipped to {self.clip_norm:.3g} + DP noise std {self.noise_std:.3g}"
        if self.reconstructed != self.batch_size:
            view += f", {self.reconstructed} images recovered"
        return view


# --------------------------------------------------------------------------- gradients


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for integer labels or for a ``(batch, classes)`` distribution."""
    if labels.dtype.is_floating_point:
        return -(labels * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, labels)


def client_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy on ``(x, y)`` w.r.t. every parameter of ``model``.

    This is what one FedSGD round, or a single local step, reveals to the server:
    the update is ``-lr * gradient``. The order is ``model.parameters()``'s.
    ``model`` is left untouched (no ``.grad`` is written, its mode is kept).
    """
    if x.shape[0] != y.shape[0]:
        raise ParameterError(
            f"x has {x.shape[0]} rows but y has {y.shape[0]} labels; pass one label per input"
        )
    params = dict(model.named_parameters())
    detached = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    logits = torch.func.functional_call(model, detached, (x,))
    grads = torch.autograd.grad(
        _cross_entropy(logits, y), list(detached.values()), allow_unused=True
    )
    return [
        torch.zeros_like(p) if g is None else g.detach()
        for p, g in zip(detached.values(), grads, strict=True)
    ]


def _check_gradient(model: nn.Module, gradient: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(model.parameters())
    if len(gradient) != len(params):
        raise ParameterError(
            f"gradient has {len(gradient)} tensors but the model has {len(params)} parameters; "
            "pass one tensor per model.parameters() entry, in that order (as client_gradient "
            "returns them)"
        )
    for i, (g, p) in enumerate(zip(gradient, params, strict=True)):
        if tuple(g.shape) != tuple(p.shape):
            raise ParameterError(
                f"gradient[{i}] has shape {tuple(g.shape)} but parameter {i} of the model has "
                f"{tuple(p.shape)}; the gradient must come from this model's architecture"
            )
    return [g.detach().to(torch.float64) for g in gradient]


# --------------------------------------------------------------------------- labels


def _last_layer(model: nn.Module, num_classes: int) -> tuple[int, int | None] | None:
    """Indices in ``model.parameters()`` of the last ``num_classes``-way Linear's weight, bias."""
    last: nn.Linear | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            last = module
    if last is None:
        return None
    index = {id(p): i for i, p in enumerate(model.parameters())}
    weight = index.get(id(last.weight))
    if weight is None:
        return None
    bias = index.get(id(last.bias)) if last.bias is not None else None
    return weight, bias


def recover_labels(
    model: nn.Module, gradient: Sequence[torch.Tensor], *, batch_size: int, num_classes: int
) -> torch.Tensor | None:
    """The batch's labels read from the last linear layer's gradient, or ``None`` without one.

    With mean cross-entropy the last layer's bias gradient is ``mean_n(p_n - onehot(y_n))``
    and its weight gradient ``mean_n((p_n - onehot(y_n)) h_n^T)``. With ``h_n >= 0`` (after
    a ReLU, or digits pixels for a linear model) the rows of the true labels are the
    only ones pulled negative. One image (iDLG): the label is the most negative entry.
    A batch: every class with a negative entry is present; the remaining slots go,
    greedily, to the class still most negative after removing the average impact of one
    occurrence (Wainakh et al. 2022's LLG). Signals: the bias gradient if the layer has
    a bias, else the weight rows' sums.
    """
    layer = _last_layer(model, num_classes)
    if layer is None:
        return None
    weight, bias = layer
    signal = (gradient[bias] if bias is not None else gradient[weight].sum(dim=1)).double().clone()
    if batch_size == 1:
        return signal.argmin().reshape(1)
    negative = signal < 0
    if not bool(negative.any()):
        return None
    impact = (
        float(signal[negative].sum()) / batch_size
    )  # the average pull of one occurrence (negative)
    labels: list[int] = []
    for c in torch.argsort(signal).tolist():
        if bool(negative[c]) and len(labels) < batch_size:
            labels.append(c)
            signal[c] -= impact
    while len(labels) < batch_size:
        c = int(signal.argmin())
        labels.append(c)
        signal[c] -= impact
    return torch.tensor(sorted(labels), dtype=torch.int64)


# --------------------------------------------------------------------------- inversion


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (Rudin et al.'s TV, anisotropic)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


class _Matcher:
    """Dummy gradients of a float64 copy of the model and their distance to the observed one."""

    def __init__(self, model: nn.Module, target: list[torch.Tensor], method: str) -> None:
        self.model = copy.deepcopy(model).to(torch.float64)
        self.params = [p.requires_grad_(True) for p in self.model.parameters()]
        self.target = target
        self.method = method
        self.norm2 = sum(float((t * t).sum()) for t in target) or 1.0
        self.target_norm = math.sqrt(self.norm2)

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        grads = torch.autograd.grad(
            _cross_entropy(logits, labels), self.params, create_graph=True, allow_unused=True
        )
        pairs = [(g, t) for g, t in zip(grads, self.target, strict=True) if g is not None]
        if self.method == "dlg":
            # L2 distance over ||observed||^2: the update's scale does not set the tolerances
            return torch.stack([((g - t) ** 2).sum() for g, t in pairs]).sum() / self.norm2
        dot = torch.stack([(g * t).sum() for g, t in pairs]).sum()
        norm = torch.sqrt(torch.stack([(g * g).sum() for g, _ in pairs]).sum() + 1e-30)
        return 1.0 - dot / (norm * self.target_norm)


def _targets(labels: torch.Tensor | None, label_logits: torch.Tensor | None) -> torch.Tensor:
    """The fixed labels, or the soft labels being optimised (DLG's joint optimisation)."""
    if label_logits is not None:
        return F.softmax(label_logits, dim=1)
    assert labels is not None
    return labels


def _dlg(
    matcher: _Matcher,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    label_logits: torch.Tensor | None,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Zhu et al.'s L-BFGS on the L2 gradient distance, in rounds of 20 iterations.

    After each round the images are put back into [0, 1] and L-BFGS starts afresh:
    a ReLU network's matching loss is piecewise smooth, and stale curvature from
    another activation pattern (or pixels far outside the data range, which switch
    units the true image never does) is what leaves plain DLG in a poor local
    minimum on a trained ReLU MLP. Clamping makes the loss non-monotone, so the best
    round is kept; three rounds in a row that do not beat it by 0.1% end this start
    (stuck: the next restart is the better use of the time).
    """
    variables = [x] + ([label_logits] if label_logits is not None else [])

    def closure() -> torch.Tensor:
        for v in variables:
            v.grad = None
        value = matcher.loss(x, _targets(labels, label_logits))
        value.backward()
        return value

    best, best_x, best_l, stale = math.inf, x.detach().clone(), label_logits, 0
    for _ in range(max(1, steps // _LBFGS_ROUND)):
        opt = torch.optim.LBFGS(
            variables,
            lr=1.0,
            max_iter=_LBFGS_ROUND,
            history_size=100,
            tolerance_grad=1e-14,
            tolerance_change=1e-16,
            line_search_fn="strong_wolfe",
        )
        opt.step(closure)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        loss = float(matcher.loss(x, _targets(labels, label_logits)).detach())
        if not math.isfinite(loss):
            break
        stale = stale + 1 if loss > 0.999 * best else 0
        if loss < best:
            best, best_x = loss, x.detach().clone()
            best_l = None if label_logits is None else label_logits.detach().clone()
        if best < _SOLVED["dlg"] or stale >= _PATIENCE:
            break
    return best_x, best_l, best


def _cosine(
    matcher: _Matcher,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    label_logits: torch.Tensor | None,
    steps: int,
    lr: float,
    tv: float,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Geiping et al.: signed Adam on cosine distance + TV in [0, 1], step / 10 at 3/8, 5/8, 7/8."""
    variables = [x] + ([label_logits] if label_logits is not None else [])
    opt = torch.optim.Adam(variables, lr=lr)
    milestones = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    best, best_x, best_l = float("inf"), x.detach().clone(), label_logits
    for _ in range(steps):
        opt.zero_grad()
        match = matcher.loss(x, _targets(labels, label_logits))
        (match + tv * _total_variation(x)).backward()
        with torch.no_grad():
            value = float(match)
            if value < best:
                best, best_x = value, x.detach().clone()
                best_l = None if label_logits is None else label_logits.detach().clone()
            assert x.grad is not None
            x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return best_x, best_l, best


def invert_gradient(
    model: nn.Module,
    gradient: Sequence[torch.Tensor],
    *,
    batch_size: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    method: Method = "cosine",
    steps: int | None = None,
    restarts: int | None = None,
    labels: torch.Tensor | None = None,
    tv: float = 1e-4,
    lr: float = 0.1,
    seed: int = 0,
) -> Reconstruction:
    """Reconstruct ``batch_size`` inputs whose gradient on ``model`` matches ``gradient``.

    Args:
        model: the model the gradient was computed on (the server has it: it sent it).
        gradient: one tensor per ``model.parameters()`` entry, the gradient of the mean
            cross-entropy (:func:`client_gradient`; an update is ``-lr`` times it). The
            cosine ignores the scale, DLG's L2 distance needs this one.
        batch_size, input_shape, num_classes: what to reconstruct.
        method: ``"cosine"`` (cosine + TV + signed Adam in [0, 1], Geiping et al.) or ``"dlg"``
            (L2 + L-BFGS, Zhu et al.). Both recover a batch-1 digits MLP update (SSIM ~1);
            the cosine is the default as it does better on LeNet (SSIM 0.65-0.92 against
            DLG's 0.3-0.45) and on batches of a trained model.
        steps: optimiser iterations (L-BFGS: inner iterations, in rounds of 20); default per method.
        restarts: random initialisations; the one with the lowest matching loss is kept.
        labels: known labels; by default they are recovered from the last layer's
            gradient (:func:`recover_labels`) or, where that is impossible, optimised jointly.
        tv: total-variation weight (cosine only). Small: on 8x8 digits a stronger prior
            blurs the strokes (1e-2 cost LeNet 0.05-0.25 SSIM against 1e-4 or 0).
        lr: Adam's initial step (cosine only), divided by 10 at 3/8, 5/8 and 7/8 of the steps.
        seed: seeds the random initialisations.

    Returns:
        The best restart's images, clamped to [0, 1], with its labels and matching loss.
    """
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if batch_size < 1:
        raise ParameterError(f"batch_size must be at least 1, got {batch_size}")
    if num_classes < 2:
        raise ParameterError(f"num_classes must be at least 2, got {num_classes}")
    n_steps = _DEFAULT_STEPS[method] if steps is None else steps
    n_restarts = _DEFAULT_RESTARTS[method] if restarts is None else restarts
    if n_steps < 1 or n_restarts < 1:
        raise ParameterError(
            f"steps and restarts must be at least 1, got steps={n_steps}, restarts={n_restarts}"
        )
    target = _check_gradient(model, gradient)
    known: torch.Tensor | None
    if labels is not None:
        if labels.shape != (batch_size,):
            raise ParameterError(
                f"labels has shape {tuple(labels.shape)}; pass one label per image: ({batch_size},)"
            )
        known, source = labels.to(torch.int64), "given"
    else:
        known = recover_labels(model, target, batch_size=batch_size, num_classes=num_classes)
        source = "last layer" if known is not None else "optimised"

    started = time.perf_counter()
    matcher = _Matcher(model, target, method)
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(n_restarts):
        x = torch.rand(
            (batch_size, *input_shape), generator=gen, dtype=torch.float64
        ).requires_grad_(True)
        logits = None
        if known is None:
            logits = torch.randn((batch_size, num_classes), generator=gen, dtype=torch.float64)
            logits.requires_grad_(True)
        if method == "dlg":
            out, out_logits, loss = _dlg(matcher, x, known, logits, n_steps)
        else:
            out, out_logits, loss = _cosine(matcher, x, known, logits, n_steps, lr, tv)
        if not math.isfinite(loss) or not bool(torch.isfinite(out).all()):
            continue  # L-BFGS diverged from this start (DLG's known failure mode): try the next
        got = _targets(known, out_logits)
        got = got.argmax(dim=1) if got.dtype.is_floating_point else got
        if best is None or loss < best[0]:
            best = (loss, out, got)
        if loss < _SOLVED[method]:
            break
    if best is None:
        loss, out, got = (
            float("nan"),
            torch.full((batch_size, *input_shape), 0.5, dtype=torch.float64),
            torch.zeros(batch_size, dtype=torch.int64),
        )
    else:
        loss, out, got = best
    return Reconstruction(
        images=out.clamp(0.0, 1.0).float(),
        labels=got,
        loss=loss,
        seconds=time.perf_counter() - started,
        labels_from=source,
    )


# --------------------------------------------------------------------------- measuring


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; ``inf`` if identical."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def _planes(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as ``(channels, H, W)``."""
    arr = np.asarray(
        image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image, dtype=np.float64
    )
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return arr
    raise ParameterError(f"an image must be (H, W) or (C, H, W), got shape {arr.shape}")


def _image_ssim(a: np.ndarray, b: np.ndarray, window: int) -> float:
    return float(np.mean([ssim(pa, pb, window=window) for pa, pb in zip(a, b, strict=True)]))


def match_images(
    reconstructed: torch.Tensor, truth: torch.Tensor, *, window: int = 3
) -> ImageMatch:
    """Pair each true image with one reconstruction, maximising the total SSIM (Hungarian method).

    A batch's gradient does not say which image came first, so each true image is
    scored against the reconstruction assigned to it. There may be more
    reconstructions than true images (the surplus goes unassigned). SSIM uses
    :func:`.inversion.ssim` with a ``window`` x ``window`` window (3 suits 8x8 digits);
    images are in [0, 1], several channels are averaged.
    """
    from scipy.optimize import linear_sum_assignment

    if reconstructed.ndim < 3 or truth.ndim < 3:
        raise ParameterError(
            "pass batches of images, (N, [C,] H, W); got reconstructed "
            f"{tuple(reconstructed.shape)}"
            f" and truth {tuple(truth.shape)}"
        )
    if reconstructed.shape[1:] != truth.shape[1:]:
        raise ParameterError(
            f"reconstructed images are {tuple(reconstructed.shape[1:])} but true images are "
            f"{tuple(truth.shape[1:])}; reconstruct with the true input_shape"
        )
    if len(reconstructed) < len(truth):
        raise ParameterError(
            f"{len(reconstructed)} reconstructions cannot be matched to {len(truth)} true images; "
            "reconstruct at least as many images as the batch has"
        )
    rec = [_planes(r) for r in reconstructed]
    tru = [_planes(t) for t in truth]
    scores = np.array([[_image_ssim(t, r, window) for r in rec] for t in tru])
    rows, cols = linear_sum_assignment(scores, maximize=True)
    order = tuple(int(c) for _, c in sorted(zip(rows, cols, strict=True)))
    return ImageMatch(
        order=order,
        ssim=tuple(float(scores[i, order[i]]) for i in range(len(tru))),
        psnr=tuple(psnr(rec[order[i]], tru[i]) for i in range(len(tru))),
    )


def chance_ssim(
    truth: torch.Tensor,
    reference: torch.Tensor,
    *,
    images: int | None = None,
    draws: int = 20,
    seed: int = 0,
    window: int = 3,
) -> float:
    """Mean SSIM to ``truth`` of random ``reference`` images under the same one-to-one matching.

    The chance level of a reconstruction that knows nothing of the target: ``images``
    (default ``len(truth)``) reference images drawn at random, matched to the truth as
    :func:`match_images` matches reconstructions, averaged over ``draws`` draws.
    Reference images identical to a target image are left out.
    """
    k = len(truth) if images is None else images
    flat_t = truth.reshape(len(truth), -1).float()
    flat_r = reference.reshape(len(reference), -1).float()
    if flat_r.shape[1] != flat_t.shape[1]:
        raise ParameterError(
            f"reference images are {tuple(reference.shape[1:])} but the targets are "
            f"{tuple(truth.shape[1:])}; pass images of the same data set"
        )
    keep = ~(torch.cdist(flat_r, flat_t) < 1e-9).any(dim=1)
    pool = reference[keep]
    if len(pool) < k:
        raise ParameterError(
            f"reference has {len(pool)} usable images, fewer than the {k} needed; pass more"
        )
    gen = torch.Generator().manual_seed(seed)
    means = [
        match_images(
            pool[torch.randperm(len(pool), generator=gen)[:k]], truth, window=window
        ).mean_ssim
        for _ in range(draws)
    ]
    return float(np.mean(means))


def _label_accuracy(recovered: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the true labels among the recovered ones, as multisets (a batch has no order)."""
    got, want = Counter(recovered.tolist()), Counter(truth.tolist())
    return sum((got & want).values()) / max(len(truth), 1)


def gradient_inversion_attack(
    model: nn.Module,
    x_target: torch.Tensor,
    y_target: torch.Tensor,
    *,
    others: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    method: Method = "cosine",
    reconstruct: int | None = None,
    reference: torch.Tensor | None = None,
    steps: int | None = None,
    restarts: int | None = None,
    clip_norm: float | None = None,
    noise_std: float = 0.0,
    seed: int = 0,
) -> GradientInversionResult:
    """Reconstruct the target client's batch from what the server sees, and score it.

    With no ``others`` the server sees the target's own gradient (a plain FedSGD update).
    With ``others`` (the other clients' batches in the round) it sees only the *sum* of
    all K = 1 + len(others) gradients, which is what secure aggregation reveals. K is
    known to the server, so it inverts the sum divided by K (FedAvg's mean update: the
    same information, at a single client's scale, which DLG's L2 distance needs).

    ``reconstruct``: how many images to recover, by default the target's batch size
    (the server treats the aggregate as one client's update). ``K * batch`` attacks the
    aggregate as one batch of every client's images; each target image is then matched
    to its best reconstruction and :attr:`~GradientInversionResult.chance_ssim` uses as many
    random images, so the comparison stays fair.
    ``reference``: images of the same data set, not the target's, for the chance level;
    when omitted the other clients' images serve (``nan`` when there are none).
    ``clip_norm`` and ``noise_std``: DP-FedAvg's view: every client's gradient is clipped
    to L2 norm ``clip_norm`` before the sum, and Gaussian noise of standard deviation
    ``noise_std`` (``z * clip_norm`` for noise multiplier ``z``) is added to the sum.
    """
    if clip_norm is not None and not clip_norm > 0:
        raise ParameterError(f"clip_norm must be positive (or None for no clipping), got {clip_norm}")
    if not noise_std >= 0:
        raise ParameterError(f"noise_std must be >= 0, got {noise_std}")
    if x_target.ndim < 2 or x_target.shape[0] != y_target.shape[0]:
        raise ParameterError(
            f"x_target has shape {tuple(x_target.shape)} and y_target {tuple(y_target.shape)}; "
            "pass a batch of inputs and one label per input"
        )
    batch = len(x_target)
    count = batch if reconstruct is None else reconstruct
    if count < batch:
        raise ParameterError(
            f"reconstruct={count} is fewer than the target's {batch} images; pass at least {batch}"
        )
    input_shape = tuple(x_target.shape[1:])
    num_classes = _num_classes(model, x_target)
    def seen(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        grad = client_gradient(model, x, y)
        if clip_norm is None:
            return grad
        norm = float(torch.sqrt(sum(((g.double() ** 2).sum() for g in grad), torch.zeros((), dtype=torch.float64))))
        return [g * min(1.0, clip_norm / max(norm, 1e-12)) for g in grad]

    gradient = seen(x_target, y_target)
    for i, (x, y) in enumerate(others):
        if tuple(x.shape[1:]) != input_shape:
            raise ParameterError(
                f"others[{i}] has inputs of shape {tuple(x.shape[1:])}, the target {input_shape}; "
                "every client trains the same model on the same kind of input"
            )
        gradient = [a + b for a, b in zip(gradient, seen(x, y), strict=True)]
    if noise_std > 0:
        gen = torch.Generator().manual_seed(seed + 7_919)
        gradient = [g + noise_std * torch.randn(g.shape, generator=gen, dtype=g.dtype) for g in gradient]
    clients = 1 + len(others)
    observed = [g / clients for g in gradient]
    rec = invert_gradient(
        model,
        observed,
        batch_size=count,
        input_shape=input_shape,
        num_classes=num_classes,
        method=method,
        steps=steps,
        restarts=restarts,
        seed=seed,
    )
    truth = x_target.detach().float().clamp(0.0, 1.0)
    match = match_images(rec.images, truth)
    if reference is None and others:
        reference = torch.cat([x for x, _ in others])
    chance = (
        math.nan if reference is None else chance_ssim(truth, reference, images=count, seed=seed)
    )
    return GradientInversionResult(
        method=method,
        batch_size=batch,
        clients_in_view=clients,
        reconstructed=count,
        ssim=match.ssim,
        psnr=match.psnr,
        label_accuracy=_label_accuracy(rec.labels, y_target),
        chance_ssim=chance,
        seconds=rec.seconds,
        loss=rec.loss,
        images=rec.images[list(match.order)],
        truth=truth,
        clip_norm=clip_norm,
        noise_std=noise_std,
    )


@torch.no_grad()
def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    return int(model(x[:1]).shape[1])


def reconstruction_grid(results: Sequence[GradientInversionResult], path: str | Path) -> Path:
    """A PNG with one row per result: the true images, then the reconstructions, labelled with
    the view, method and mean SSIM against chance."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ParameterError("results is empty; pass at least one GradientInversionResult")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = max(r.batch_size for r in results)
    fig, axes = plt.subplots(len(results), 2 * cols, figsize=(2 * cols * 1.0 + 3.2, len(results) * 1.25 + 0.4),
                             squeeze=False)
    for i, r in enumerate(results):
        for half, images in enumerate((r.truth, r.images)):
            for c in range(cols):
                ax = axes[i, half * cols + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c < len(images):
                    planes = _planes(images[c])
                    ax.imshow(planes[0] if len(planes) == 1 else planes.transpose(1, 2, 0),
                              cmap="gray", vmin=0.0, vmax=1.0)
                else:
                    ax.axis("off")
        chance = "" if math.isnan(r.chance_ssim) else f" (chance {r.chance_ssim:.2f})"
        label = f"{r.view}; {r.method}, batch {r.batch_size}: SSIM {r.mean_ssim:.2f}{chance}"
        axes[i, 0].set_ylabel(textwrap.fill(label, 30), fontsize=7, rotation=0, ha="right", va="center")
    axes[0, 0].set_title("truth", fontsize=8, loc="left")
    axes[0, cols].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
