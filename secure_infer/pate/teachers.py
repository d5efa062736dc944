"""Teachers on disjoint shares of the private data, and the student that learns from their noisy vote.

What: :func:`train_teachers` splits the private training set into ``k``
disjoint parts and trains one small classifier per part. All ``k`` are one
batched network (their weights stacked along a leading teacher axis), so 250
teachers train in seconds on a CPU. Disjointness is what the privacy analysis
rests on: adding or removing one private example changes one teacher (each
example's teacher is a keyed hash of its content, :func:`assign`), hence
moves at most one vote per query. :func:`train_student` trains an ordinary model on
the public inputs the aggregator labelled; the student is what gets released.

Why small teachers: each sees only ``n / k`` examples, so a linear or
one-hidden-layer model is as accurate as a larger one and the ensemble's
agreement (what makes answers cheap in privacy) comes from their number.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from secure_infer._errors import ParameterError
from secure_infer.pate.aggregation import vote_histograms

__all__ = ["TeacherConfig", "TeacherEnsemble", "assign", "train_student", "train_teachers"]


@dataclass(frozen=True)
class TeacherConfig:
    """How each teacher is trained: a ``hidden``-unit MLP (0: softmax regression), full-batch Adam."""

    hidden: int = 32
    steps: int = 300
    lr: float = 0.02
    weight_decay: float = 1e-3


class _Stacked(nn.Module):
    """``k`` MLPs evaluated at once: weights (k, in, out), inputs (k, n, in)."""

    def __init__(self, k: int, features: int, hidden: int, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        sizes = [features, hidden, classes] if hidden else [features, classes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter((torch.rand(k, fan_in, fan_out, generator=generator) * 2 - 1) * bound))
            self.biases.append(nn.Parameter(torch.zeros(k, 1, fan_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x


@dataclass
class TeacherEnsemble:
    """``k`` trained teachers and which private examples each one saw.

    Attributes:
        net: the stacked teachers.
        parts: per teacher, the indices (into the private set) it trained on; disjoint.
        classes: number of labels.
    """

    net: _Stacked
    parts: tuple[np.ndarray, ...]
    classes: int

    @property
    def size(self) -> int:
        return len(self.parts)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, teachers: Sequence[int] | None = None) -> np.ndarray:
        """Each teacher's label for each input: (teachers, inputs)."""
        flat = x.reshape(len(x), -1).float()
        logits = self.net(flat.unsqueeze(0).expand(self.size, -1, -1))
        labels = logits.argmax(-1).numpy()
        return labels if teachers is None else labels[np.asarray(teachers)]

    def votes(self, x: torch.Tensor, teachers: Sequence[int] | None = None) -> np.ndarray:
        """The vote histogram per input, (inputs, classes), over all or the given teachers."""
        return vote_histograms(self.predict(x, teachers), self.classes)

    def silo_votes(self, x: torch.Tensor, silos: int) -> list[np.ndarray]:
        """The histograms each of ``silos`` parties computes from its own teachers (contiguous blocks)."""
        if not 1 <= silos <= self.size:
            raise ParameterError(f"silos must be between 1 and the {self.size} teachers, got {silos}")
        labels = self.predict(x)
        return [vote_histograms(block, self.classes) for block in np.array_split(labels, silos)]

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Each teacher's accuracy on ``(x, y)``."""
        return (self.predict(x) == y.numpy()[None, :]).mean(axis=1)


def assign(x: torch.Tensor, y: torch.Tensor, teachers: int, *, seed: int = 0) -> np.ndarray:
    """Which teacher each example goes to: a keyed hash of its content (input and label).

    Adding or removing one example then changes that example's teacher and no
    other, which is the neighbouring relation DP-SGD's epsilon is stated
    for; a shuffled equal split would reshuffle every share.
    """
    key = seed.to_bytes(8, "little", signed=True)
    xs = x.reshape(len(x), -1).float().numpy()
    ys = y.numpy().astype(np.int64)
    owner = np.empty(len(xs), dtype=np.int64)
    for i, (row, label) in enumerate(zip(xs, ys, strict=True)):
        digest = hashlib.blake2b(row.tobytes() + label.tobytes(), digest_size=8, key=key).digest()
        owner[i] = int.from_bytes(digest, "little") % teachers
    return owner


def train_teachers(x: torch.Tensor, y: torch.Tensor, *, teachers: int, classes: int,
                   config: TeacherConfig = TeacherConfig(), seed: int = 0,
                   on_step: Callable[[int, int], None] | None = None) -> TeacherEnsemble:
    """Train ``teachers`` models, each on its own disjoint share of ``(x, y)``.

    Shares come from :func:`assign` (sizes vary around ``len(x) / teachers``).
    ``on_step(done, total)`` reports training progress.
    """
    if teachers < 1 or teachers > len(x):
        raise ParameterError(f"teachers must be between 1 and the {len(x)} private examples, got {teachers}")
    if len(x) != len(y):
        raise ParameterError(f"private inputs and labels differ in length: {len(x)} inputs, {len(y)} labels")
    generator = torch.Generator().manual_seed(seed)
    owner = assign(x, y, teachers, seed=seed)
    parts = tuple(np.flatnonzero(owner == t) for t in range(teachers))
    size = max(max(len(p) for p in parts), 1)
    flat = x.reshape(len(x), -1).float()
    batch = torch.zeros(teachers, size, flat.shape[1])
    targets = torch.zeros(teachers, size, dtype=torch.long)
    mask = torch.zeros(teachers, size)
    for t, idx in enumerate(parts):
        batch[t, : len(idx)] = flat[idx]
        targets[t, : len(idx)] = y[idx]
        mask[t, : len(idx)] = 1.0
    net = _Stacked(teachers, flat.shape[1], config.hidden, classes, generator)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    counts = mask.sum(1).clamp(min=1)  # a teacher the hash gave nothing keeps its initial weights
    for step in range(config.steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(batch).reshape(-1, classes), targets.reshape(-1), reduction="none")
        # every teacher's mean loss, summed: teachers do not share gradients
        (loss.reshape(teachers, size) * mask).sum(1).div(counts).sum().backward()
        opt.step()
        if on_step and (step + 1) % 50 == 0:
            on_step(step + 1, config.steps)
    return TeacherEnsemble(net.eval(), parts, classes)


def train_student(x: torch.Tensor, labels: np.ndarray, build: Callable[[], nn.Module], *, epochs: int = 200,
                  lr: float = 0.01, seed: int = 0, self_training: int = 0, confidence: float = 0.9) -> nn.Module:
    """Train ``build()`` on the public inputs that got a label (-1: the aggregator declined).

    ``self_training`` rounds then pseudo-label the declined inputs on which
    the current student is at least ``confidence`` sure, and train a fresh
    student on the answers plus those (the answers always keep the
    aggregator's label). The semi-supervised step the PATE papers use, in its
    simplest form: it reads only public inputs and released labels, so it is
    post-processing and costs no privacy. Each round runs as many optimizer
    steps as the first student (fewer epochs over the larger set), so a
    round costs about one student.
    """
    from secure_infer.datasets import Dataset
    from secure_infer.zoo import TrainConfig, train

    if self_training < 0 or not 0.0 < confidence <= 1.0:
        raise ParameterError(f"self_training must be >= 0 and confidence in (0, 1], got {self_training} and "
                             f"{confidence}")
    labels = np.asarray(labels)
    answered = labels >= 0
    if not answered.any():
        raise ParameterError("no query was answered, so the student has nothing to learn from; lower the "
                             "threshold or raise the number of queries")
    batch = 32

    def fit(targets: np.ndarray, rounds_epochs: int) -> nn.Module:
        keep = np.flatnonzero(targets >= 0)
        xs, ys = x[torch.from_numpy(keep)], torch.from_numpy(targets[keep]).long()
        model = build()
        classes = int(max(int(targets.max()) + 1, 2))  # a pseudo-label may name a class no answer did
        data = Dataset("pate-student", xs, ys, xs[:1], ys[:1], classes, tuple(x.shape[1:]),
                       description="public inputs labelled by the teachers' noisy vote")
        torch.manual_seed(seed)
        train(model, data, TrainConfig(epochs=rounds_epochs, lr=lr, batch_size=batch), seed=seed)
        return model.eval()

    model = fit(labels, epochs)
    steps = epochs * math.ceil(int(answered.sum()) / batch)
    for _ in range(self_training):
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1).numpy()
        sure = probs.max(axis=1) >= confidence
        targets = np.where(answered, labels, np.where(sure, probs.argmax(axis=1), -1))
        model = fit(targets, max(1, round(steps / math.ceil(int((targets >= 0).sum()) / batch))))
    return model
