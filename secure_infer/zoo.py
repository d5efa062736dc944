"""Small reference models with fast, deterministic training.

The five families are the ones the encrypted-inference literature measures:

* ``logreg``     logistic regression (one linear layer);
* ``mlp``        one hidden ReLU layer;
* ``cryptonets`` a CryptoNets-style CNN: strided conv and x**2 activations, so
  every layer is a polynomial and HE can evaluate it exactly;
* ``lenet``      a LeNet-style CNN with ReLU and max-pooling, the usual MPC target;
* ``vit``        a tiny Vision Transformer (patch embedding, class token, 2 pre-norm
  encoder blocks with hand-written multi-head self-attention, GELU MLPs,
  LayerNorm), the kind of model MPC transformer-inference papers measure.

Layer sizes follow the input: on 28x28 inputs ``cryptonets`` is TenSEAL's MNIST
tutorial network (conv 1->4 7x7 stride 3, fc 256->64, fc 64->10) and ``lenet``
is the CrypTen benchmark's (conv5x5x16, pool, conv5x5x16, pool, fc 256->100,
fc 100->10); on the 8x8 digits they shrink to fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from secure_infer._errors import DatasetError, ParameterError
from secure_infer.datasets import Dataset, load
from secure_infer.layers import Square

__all__ = [
    "Square",
    "TrainConfig",
    "ZooModel",
    "accuracy",
    "available",
    "build",
    "load_model",
    "pretrained",
    "save_model",
    "train",
]


def _flat(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ParameterError(
            f"zoo model {name!r} needs image inputs shaped (channels, height, width), "
            f"got {input_shape}; use 'logreg' or 'mlp' for flat features"
        )
    c, h, w = input_shape
    if min(h, w) < 8:
        raise ParameterError(f"zoo model {name!r} needs images at least 8x8, got {h}x{w}")
    return c, h, w


def _logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat(input_shape), num_classes))


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    hidden = 64 if _flat(input_shape) <= 256 else 128
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _cryptonets(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = _check_image("cryptonets", input_shape)
    big = min(h, w) >= 28
    kernel, stride, hidden = (7, 3, 64) if big else (3, 1, 32)
    oh, ow = _conv_out(h, kernel, stride), _conv_out(w, kernel, stride)
    return nn.Sequential(
        nn.Conv2d(c, 4, kernel_size=kernel, stride=stride),
        Square(),
        nn.Flatten(),
        nn.Linear(4 * oh * ow, hidden),
        Square(),
        nn.Linear(hidden, num_classes),
    )


def _lenet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = _check_image("lenet", input_shape)
    big = min(h, w) >= 28
    kernel, padding = (5, 0) if big else (3, 1)
    for _ in range(2):
        h, w = _conv_out(h, kernel, 1, padding) // 2, _conv_out(w, kernel, 1, padding) // 2
    return nn.Sequential(
        nn.Conv2d(c, 16, kernel_size=kernel, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, kernel_size=kernel, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h * w, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


class Attention(nn.Module):
    """Multi-head self-attention written out (as timm's ViT does): qkv projection, scaled scores, softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """A pre-norm transformer encoder block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A Vision Transformer small enough to train on the digits in seconds and run under MPC."""

    def __init__(self, channels: int, size: int, num_classes: int, *, patch: int, dim: int = 32, depth: int = 2,
                 heads: int = 2) -> None:
        super().__init__()
        tokens = (size // patch) ** 2
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _vit(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = _check_image("vit", input_shape)
    if h != w:
        raise ParameterError(f"zoo model 'vit' needs square images, got {h}x{w}")
    patch = 2 if h <= 16 else 4
    if h % patch:
        raise ParameterError(f"zoo model 'vit' needs an image side divisible by {patch}, got {h}")
    return TinyViT(c, h, num_classes, patch=patch)


@dataclass(frozen=True)
class TrainConfig:
    """How a zoo model is trained: Adam on cross-entropy, seeded."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0


_BUILDERS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "cryptonets": _cryptonets,
    "lenet": _lenet,
    "vit": _vit,
}

_DEFAULT_TRAINING: dict[str, TrainConfig] = {
    "logreg": TrainConfig(epochs=30, lr=0.05),
    "mlp": TrainConfig(epochs=30, lr=0.01),
    "cryptonets": TrainConfig(epochs=30, lr=0.005),
    "lenet": TrainConfig(epochs=20, lr=0.005),
    "vit": TrainConfig(epochs=30, lr=0.003),
}


def available() -> list[str]:
    """Names :func:`build` and :func:`pretrained` accept."""
    return list(_BUILDERS)


def build(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int = 0) -> nn.Module:
    """An untrained zoo model sized for ``input_shape``, initialised from ``seed``."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ParameterError(f"unknown zoo model {name!r}; choose one of {', '.join(available())}") from None
    if num_classes < 2:
        raise ParameterError(f"num_classes must be at least 2, got {num_classes}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return builder(tuple(input_shape), num_classes)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / max(len(x), 1)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``data``'s training split, deterministically.

    ``on_epoch(epoch, loss)`` is called after every epoch (progress bars use it).
    """
    if data.synthetic:
        raise DatasetError(
            f"{data.label}: generated inputs have random labels; train on a real data set"
        )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = len(data.x_train)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / n)
    model.eval()
    return model


@dataclass
class ZooModel:
    """A trained zoo model and what it scored in plaintext."""

    name: str
    model: nn.Module
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    test_accuracy: float
    train_seconds: float
    seed: int

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def pretrained(
    name: str,
    dataset: str | Dataset = "digits",
    *,
    seed: int = 0,
    config: TrainConfig | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> ZooModel:
    """Build and train zoo model ``name`` on ``dataset`` (a few seconds on 2 cores).

    Nothing is downloaded or cached: the model is trained here, from ``seed``,
    and its plaintext test accuracy is measured on the held-out split.
    """
    data = load(dataset, seed=seed) if isinstance(dataset, str) else dataset
    model = build(name, data.input_shape, data.num_classes, seed=seed)
    cfg = config or _DEFAULT_TRAINING[name]
    started = time.perf_counter()
    train(model, data, cfg, seed=seed, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    return ZooModel(
        name=name,
        model=model,
        dataset=data.label,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        test_accuracy=accuracy(model, data.x_test, data.y_test),
        train_seconds=seconds,
        seed=seed,
    )


def default_config(name: str) -> TrainConfig:
    """The training settings :func:`pretrained` uses for ``name``."""
    if name not in _DEFAULT_TRAINING:
        raise ParameterError(f"unknown zoo model {name!r}; choose one of {', '.join(available())}")
    return _DEFAULT_TRAINING[name]


def save_model(zoo_model: ZooModel, path: str | Path) -> Path:
    """Write a trained zoo model (architecture name, shapes, weights, score) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": "secure-infer-zoo/1",
            "name": zoo_model.name,
            "dataset": zoo_model.dataset,
            "input_shape": list(zoo_model.input_shape),
            "num_classes": zoo_model.num_classes,
            "test_accuracy": zoo_model.test_accuracy,
            "train_seconds": zoo_model.train_seconds,
            "seed": zoo_model.seed,
            "state_dict": zoo_model.model.state_dict(),
        },
        path,
    )
    return path


def load_model(path: str | Path) -> ZooModel:
    """Read a model written by :func:`save_model` (weights only, no pickle of code)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"zoo model file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types here
        raise ParameterError(f"{path} is not a secure-infer zoo model file: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != "secure-infer-zoo/1":
        raise ParameterError(f"{path} is not a secure-infer zoo model file (missing format tag)")
    shape = tuple(int(s) for s in blob["input_shape"])
    model = build(blob["name"], shape, int(blob["num_classes"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return ZooModel(
        name=blob["name"],
        model=model,
        dataset=blob["dataset"],
        input_shape=shape,
        num_classes=int(blob["num_classes"]),
        test_accuracy=float(blob["test_accuracy"]),
        train_seconds=float(blob["train_seconds"]),
        seed=int(blob["seed"]),
    )
