"""Encrypted training between data owners: an MLP trained on secret shares.

The data never leaves its owners in the clear: each party secret-shares its own
part (features, labels, or rows), the MLP is trained by SGD on the shares, and
only the party entitled to the model gets the weights, revealed once at the
end. Nothing is opened during training (CrypTen's gradient threshold aside,
which zeroes rare wrap-around errors without revealing anything).

Splits:

* ``"labels"``   (vertical) party 0 holds every feature, party 1 the labels;
* ``"features"`` (vertical) the feature columns are divided between party 0
  and party 1, and party 1 also holds the labels;
* ``"rows"``     (horizontal) each party holds whole rows with their labels.

Initial weights come from a public seed, as does the mini-batch order, so
the same SGD run can be repeated in plaintext for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from secure_infer._errors import DatasetError, ParameterError
from secure_infer.backends.crypten._pool import PartyJob, PartyPool
from secure_infer.datasets import Dataset
from secure_infer.zoo import accuracy

__all__ = ["TrainingResult", "mlp", "plaintext_sgd", "train_mlp", "train_on_shares"]

SPLITS = ("labels", "features", "rows")


def mlp(in_features: int, hidden: int, classes: int, seed: int) -> nn.Sequential:
    """The trained architecture, initialised from the public ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def _batches(n: int, epochs: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The public mini-batch schedule: index tensors, epoch by epoch."""
    gen = torch.Generator().manual_seed(seed + 1)
    out: list[torch.Tensor] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        out.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return out


@dataclass
class _TrainJob(PartyJob):
    """What one party brings: its own pieces of the data, plus the public plan."""

    pieces: dict[str, torch.Tensor | None]  # name -> tensor at its owner, None elsewhere
    piece_shapes: dict[str, tuple[int, ...]]
    piece_owner: dict[str, int]
    layout: str
    in_features: int
    hidden: int
    classes: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    weights_to: int

    def run(self, crypten: Any, rank: int) -> Any:
        shares = {}
        for name, shape in self.piece_shapes.items():
            mine = self.pieces.get(name)
            owner = self.piece_owner[name]
            shares[name] = crypten.cryptensor(mine if rank == owner else torch.empty(shape), src=owner)
        if self.layout == "labels":
            x, y = shares["x"], shares["y"]
        elif self.layout == "features":
            x, y = crypten.cat([shares["x0"], shares["x1"]], dim=1), shares["y"]
        else:
            x = crypten.cat([shares["x0"], shares["x1"]], dim=0)
            y = crypten.cat([shares["y0"], shares["y1"]], dim=0)

        return train_on_shares(
            crypten, x, y, rank=rank, hidden=self.hidden, classes=self.classes, epochs=self.epochs, lr=self.lr,
            batch_size=self.batch_size, seed=self.seed, weights_to=self.weights_to,
        )


def train_on_shares(crypten: Any, x: Any, y: Any, *, rank: int, hidden: int, classes: int, epochs: int,
                    lr: float, batch_size: int, seed: int, weights_to: int) -> dict[str, Any] | None:
    """SGD on secret-shared features ``x`` and one-hot labels ``y``, inside a party (after ``crypten.init``).

    Every party calls this with its shares; only ``weights_to`` gets a result:
    the trained weights and the per-epoch loss curve, opened once at the end.
    The initialisation and mini-batch order come from the public ``seed``.
    """
    in_features = x.size(1)
    plain = mlp(in_features, hidden, classes, seed)
    model = crypten.nn.Sequential(
        crypten.nn.Linear(in_features, hidden), crypten.nn.ReLU(),
        crypten.nn.Linear(hidden, classes),
    )
    with torch.no_grad():
        for (_, p_c), (_, p_t) in zip(model.named_parameters(), plain.named_parameters(), strict=True):
            p_c.copy_(p_t)  # the seeded initialisation is public
    model.encrypt(src=0)
    model.train()
    loss_fn = crypten.nn.CrossEntropyLoss()
    n = x.size(0)
    schedule = _batches(n, epochs, batch_size, seed)
    per_epoch = len(schedule) // epochs
    epoch_losses = []  # shares of each epoch's summed loss: opened only at the end
    running = None
    for step, idx in enumerate(schedule, start=1):
        out = model(x[idx])
        loss = loss_fn(out, y[idx])
        model.zero_grad()
        loss.backward()
        model.update_parameters(lr)
        running = loss.detach() if running is None else running + loss.detach()
        if step % per_epoch == 0:
            epoch_losses.append(running / per_epoch)
            running = None
    # only the entitled party sees anything: the final weights and the loss curve
    state = {name: p.get_plain_text(dst=weights_to) for name, p in model.named_parameters()}
    curve = [v.get_plain_text(dst=weights_to) for v in epoch_losses]
    if rank != weights_to:
        return None
    return {"state_dict": state, "loss_curve": [float(v) for v in curve]}


@dataclass(frozen=True)
class TrainingResult:
    """An MPC-trained model and how it compares with plaintext SGD on the same run."""

    model: nn.Module
    split: str
    test_accuracy: float
    plaintext_test_accuracy: float
    seconds: float
    bytes_sent: int
    rounds: int
    per_party: tuple[dict[str, Any], ...]
    weights_to: int
    loss_curve: list[float] = field(default_factory=list)

    @property
    def accuracy_gap(self) -> float:
        """Plaintext minus encrypted test accuracy, in points."""
        return 100.0 * (self.plaintext_test_accuracy - self.test_accuracy)


def _flat(data: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if data.synthetic:
        raise DatasetError(f"{data.label}: generated inputs have random labels; train on real data")
    x = data.x_train.reshape(len(data.x_train), -1)
    return x, data.y_train, data.x_test.reshape(len(data.x_test), -1)


def plaintext_sgd(data: Dataset, *, hidden: int, epochs: int, lr: float, batch_size: int, seed: int) -> nn.Module:
    """The same training in plaintext: same initialisation, schedule and SGD steps."""
    x, y, _ = _flat(data)
    model = mlp(x.shape[1], hidden, data.num_classes, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for idx in _batches(len(x), epochs, batch_size, seed):
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def train_mlp(
    data: Dataset,
    *,
    split: str = "labels",
    hidden: int = 32,
    epochs: int = 5,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    weights_to: int = 1,
    timeout: float = 1800.0,
) -> TrainingResult:
    """Train an MLP under 2-party MPC with the training data split between the parties.

    Args:
        data: the training and test data (the test split is used in plaintext
            by the weights' owner, to score the result).
        split: ``"labels"``, ``"features"`` or ``"rows"`` (see module doc).
        weights_to: the rank (0 or 1) that receives the trained weights.

    Returns:
        The trained model with its test accuracy beside plaintext SGD's.
    """
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if weights_to not in (0, 1):
        raise ParameterError(f"weights_to must be rank 0 or 1, got {weights_to!r}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ParameterError("epochs and batch_size must be >= 1 and lr > 0")
    x, y, x_test = _flat(data)
    onehot = nn.functional.one_hot(y, data.num_classes).float()
    d, n = x.shape[1], x.shape[0]
    if split == "labels":
        parts = {"x": (x, 0), "y": (onehot, 1)}
    elif split == "features":
        cut = d // 2
        parts = {"x0": (x[:, :cut], 0), "x1": (x[:, cut:], 1), "y": (onehot, 1)}
    else:
        cut = n // 2
        parts = {"x0": (x[:cut], 0), "x1": (x[cut:], 1), "y0": (onehot[:cut], 0), "y1": (onehot[cut:], 1)}
    piece_shapes = {k: tuple(t.shape) for k, (t, _) in parts.items()}
    piece_owner = {k: r for k, (_, r) in parts.items()}
    jobs = [
        _TrainJob(
            pieces={k: (t if r == rank else None) for k, (t, r) in parts.items()},
            piece_shapes=piece_shapes, piece_owner=piece_owner,
            layout=split, in_features=d, hidden=hidden, classes=data.num_classes,
            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, weights_to=weights_to,
        )
        for rank in (0, 1)
    ]
    started = time.perf_counter()
    pool = PartyPool(jobs, timeout=timeout)
    try:
        results = dict(pool.setup)
    finally:
        pool.close()
    seconds = time.perf_counter() - started
    owned = results[weights_to]["result"]
    model = mlp(d, hidden, data.num_classes, seed)
    model.load_state_dict(owned["state_dict"])
    model.eval()
    reference = plaintext_sgd(data, hidden=hidden, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    per_party: tuple[dict[str, Any], ...] = tuple(
        {"rank": r, "role": ("features" if r == 0 else "labels") if split == "labels" else f"data owner {r}",
         "bytes": int(s["bytes"]), "rounds": int(s["rounds"]), "seconds": float(s["seconds"])}
        for r, s in sorted(results.items())
    )
    return TrainingResult(
        model=model, split=split,
        test_accuracy=accuracy(model, x_test, data.y_test),
        plaintext_test_accuracy=accuracy(reference, x_test, data.y_test),
        seconds=seconds, bytes_sent=sum(p["bytes"] for p in per_party),
        rounds=max(p["rounds"] for p in per_party), per_party=per_party,
        weights_to=weights_to, loss_curve=owned["loss_curve"],
    )
