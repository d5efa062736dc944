"""Data sets that work without a network.

Everything here ships inside an installed package (scikit-learn's digits and
breast cancer) or is read from files the user names (MNIST as IDX files or the
classic `mnist.pkl.gz`).
:func:`mnist_shaped` makes generated inputs for timing only: HE and MPC cost
does not depend on pixel values, so they measure speed honestly, but they
have no meaningful labels, and every :class:`Dataset` they produce says so.

Splits are stratified and deterministic for a given ``seed``.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_infer._errors import DatasetError, ParameterError

__all__ = [
    "Dataset",
    "available",
    "load",
    "load_breast_cancer",
    "load_digits",
    "load_mnist",
    "mnist_shaped",
]


@dataclass(frozen=True)
class Dataset:
    """A train/test split ready for a PyTorch model.

    Attributes:
        name: short name (``"digits"``, ``"breast_cancer"``, ``"mnist"``, ...).
        x_train, y_train, x_test, y_test: float32 inputs and int64 labels.
        num_classes: number of label values.
        input_shape: shape of one input, without the batch dimension.
        synthetic: True for generated timing inputs whose labels mean nothing.
        description: one line a report can print.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    synthetic: bool = False
    description: str = ""
    feature_names: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ParameterError(f"dataset {self.name!r}: inputs and labels differ in length")

    @property
    def label(self) -> str:
        """Name plus a visible warning when the data is generated."""
        return f"{self.name} (generated, timing only)" if self.synthetic else self.name


def _split(
    x: np.ndarray, y: np.ndarray, *, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ParameterError(f"test_size must be between 0 and 1, got {test_size}")
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)


def _tensor(a: np.ndarray) -> torch.Tensor:
    kind = torch.int64 if a.dtype.kind in "iu" else torch.float32
    return torch.as_tensor(np.ascontiguousarray(a)).to(kind)


def _tensors(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _tensor(x_train), _tensor(y_train), _tensor(x_test), _tensor(y_test)


def load_digits(*, seed: int = 0, test_size: float = 0.25, flatten: bool = False) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

    Pixels are scaled to [0, 1]. Images are shaped ``(1, 8, 8)`` unless
    ``flatten`` asks for 64 features.
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_size=test_size, seed=seed)
    shape: tuple[int, ...] = (64,) if flatten else (1, 8, 8)
    x_tr, x_te = x_tr.reshape(-1, *shape), x_te.reshape(-1, *shape)
    t = _tensors(x_tr, y_tr, x_te, y_te)
    return Dataset(
        "digits", *t, num_classes=10, input_shape=shape,
        description=f"sklearn digits 8x8, {len(x_tr)} train / {len(x_te)} test, seed {seed}",
    )


def load_breast_cancer(*, seed: int = 0, test_size: float = 0.25) -> Dataset:
    """scikit-learn's Wisconsin breast cancer data (569 rows, 30 features, 2 classes).

    Features are standardised with the *training* split's mean and deviation,
    so no test statistics leak into training.
    """
    from sklearn.datasets import load_breast_cancer as _sk_bc

    bunch = _sk_bc()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_size=test_size, seed=seed)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    t = _tensors(x_tr, y_tr, x_te, y_te)
    return Dataset(
        "breast_cancer", *t, num_classes=2, input_shape=(30,),
        description=f"sklearn breast cancer, standardised, {len(x_tr)} train / {len(x_te)} test, seed {seed}",
        feature_names=tuple(str(n) for n in bunch.feature_names),
    )


_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"MNIST file {path} could not be read: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"MNIST file {path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"MNIST file {path} is truncated inside its header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DatasetError(
            f"MNIST file {path} holds {len(raw) - header} bytes of data, its header promises {count}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"MNIST file {stem} (or {stem}.gz) not found in {root}; download the four IDX files "
        "from the MNIST site into that folder, or pass path= pointing at them"
    )


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles of numpy arrays at protocols 0-2 store the array's bytes as _codecs.encode(text, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 array data")
    return text.encode("latin1")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and tuples of them, and refuses every other class.

    A pickle can run code when it is loaded; this one can only rebuild arrays.
    """

    _NUMPY = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in self._NUMPY:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array")
        return super().find_class(module, name)


_MNIST_ROWS = 70_000  # all of MNIST; a part claiming more is not MNIST (and is not allocated)


def _mnist_part(part: object, name: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """One (pixels, labels) part, checked before any conversion allocates memory."""
    if not isinstance(part, tuple) or len(part) != 2:
        raise DatasetError(f"MNIST pickle {where}: the {name} part is not (pixels, labels)")
    x, y = part
    if (not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 28 * 28 or not 0 < x.shape[0] <= _MNIST_ROWS
            or x.dtype.kind not in "fu"):
        raise DatasetError(f"MNIST pickle {where}: the {name} pixels must be an array of up to {_MNIST_ROWS} "
                           "rows of 784 numbers")
    if not isinstance(y, np.ndarray) or y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise DatasetError(f"MNIST pickle {where}: the {name} labels must be {x.shape[0]} integers, one per image")
    if y.min() < 0 or y.max() > 9:
        raise DatasetError(f"MNIST pickle {where}: the {name} labels must be digits 0-9")
    return _pixels_as_bytes(x, f"{where} ({name})"), y.astype(np.uint8)


def _pixels_as_bytes(x: np.ndarray, where: str) -> np.ndarray:
    # The pickle stores byte/256 (deeplearning.net) or byte/255; recover the bytes so both formats load alike.
    if x.dtype == np.uint8:
        return x
    # two float64 buffers reused for each guess, so full MNIST needs about 0.9 GB of temporaries, not 2
    raw, whole = np.empty(x.shape, dtype=np.float64), np.empty(x.shape, dtype=np.float64)
    for scale in (256.0, 255.0):
        np.multiply(x, scale, out=raw, dtype=np.float64)
        np.round(raw, out=whole)
        np.subtract(raw, whole, out=raw)
        np.abs(raw, out=raw)
        if raw.max() < 1e-3 and whole.min() >= 0 and whole.max() <= 255:  # float32 rounding
            return whole.astype(np.uint8)
    raise DatasetError(f"MNIST pickle {where}: pixels are not whole multiples of 1/256 or 1/255")


def _read_mnist_pickle(path: Path) -> dict[str, np.ndarray]:
    """The classic ``mnist.pkl.gz``: (train, validation, test), each (pixels, labels); train + validation
    is MNIST's 60,000-image training set."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            parts = _ArraysOnly(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as exc:
        raise DatasetError(f"MNIST pickle {path} could not be read: {exc}") from exc
    if not isinstance(parts, tuple) or len(parts) != 3:
        raise DatasetError(f"MNIST pickle {path} is not (train, validation, test), each (pixels, labels)")
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (
        _mnist_part(p, name, path) for p, name in zip(parts, ("train", "validation", "test"), strict=True))
    return {"x_train": np.concatenate([x_tr, x_va]).reshape(-1, 28, 28), "y_train": np.concatenate([y_tr, y_va]),
            "x_test": x_te.reshape(-1, 28, 28), "y_test": y_te}


def load_mnist(path: str | Path, *, limit_train: int | None = None, limit_test: int | None = None) -> Dataset:
    """MNIST from local files: a folder with the four IDX files (plain or ``.gz``), or the classic
    ``mnist.pkl.gz`` file (train + validation become the 60,000 training images).

    Pixels are scaled to [0, 1] and shaped ``(1, 28, 28)``. Uses the official
    train/test split; ``limit_*`` keep the first rows for quick runs. The
    pickle is read with an unpickler that builds numpy arrays and nothing
    else, so a tampered file cannot run code.
    """
    root = Path(path).expanduser()
    if root.is_file():
        arrays = _read_mnist_pickle(root)
    elif root.is_dir():
        arrays = {key: _read_idx(_find_idx(root, stem)) for key, stem in _MNIST_FILES.items()}
    else:
        raise DatasetError(f"MNIST path {root} does not exist; pass the folder holding the IDX files "
                           "or the mnist.pkl.gz file")
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DatasetError(f"MNIST {split} images and labels differ in count in {root}")
    x_tr = arrays["x_train"][:limit_train].astype(np.float32)[:, None] / 255.0
    x_te = arrays["x_test"][:limit_test].astype(np.float32)[:, None] / 255.0
    y_tr = arrays["y_train"][:limit_train].astype(np.int64)
    y_te = arrays["y_test"][:limit_test].astype(np.int64)
    t = _tensors(x_tr, y_tr, x_te, y_te)
    return Dataset(
        "mnist", *t, num_classes=10, input_shape=(1, 28, 28),
        description=f"MNIST from {root}, {len(x_tr)} train / {len(x_te)} test",
    )


def mnist_shaped(n_test: int = 64, *, n_train: int = 0, seed: int = 0) -> Dataset:
    """Generated 28x28 inputs for timing only, labelled as such.

    Values are uniform in [0, 1] and labels uniform over 10 classes: accuracy
    on this data means nothing, only cost does.
    """
    if n_test < 1 or n_train < 0:
        raise ParameterError("mnist_shaped: n_test must be >= 1 and n_train >= 0")
    gen = torch.Generator().manual_seed(seed)
    x_tr = torch.rand(n_train, 1, 28, 28, generator=gen)
    x_te = torch.rand(n_test, 1, 28, 28, generator=gen)
    y_tr = torch.randint(0, 10, (n_train,), generator=gen)
    y_te = torch.randint(0, 10, (n_test,), generator=gen)
    return Dataset(
        "mnist_shaped", x_tr, y_tr, x_te, y_te, num_classes=10, input_shape=(1, 28, 28),
        synthetic=True,
        description=f"GENERATED MNIST-shaped inputs for timing only ({n_test} test), seed {seed}",
    )


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "mnist": load_mnist,
    "mnist_shaped": mnist_shaped,
}


def available() -> list[str]:
    """Names :func:`load` accepts."""
    return sorted(_LOADERS)


def load(name: str, **kwargs: object) -> Dataset:
    """Load a data set by name (see :func:`available`)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ParameterError(
            f"unknown dataset {name!r}; choose one of {', '.join(available())}"
        ) from None
    return loader(**kwargs)


def load_inputs(spec: str, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs named on a command line: a ``.npy`` or ``.png`` file, or ``DATASET:INDEX`` / ``DATASET:START-END``.

    Data-set indices address the held-out test split (as seeded by ``seed``);
    labels come back with them, and ``None`` for a file. A ``.npy`` file holds
    one input or a batch (``allow_pickle`` is off); a PNG is one grayscale
    image (colour is averaged) with values in [0, 1], shaped ``(1, H, W)``.
    """
    name, sep, where = spec.partition(":")
    if sep and name in _LOADERS:
        data = load(name, seed=seed)
        try:
            if "-" in where:
                start, end = (int(v) for v in where.split("-", 1))
            else:
                start = int(where)
                end = start + 1
        except ValueError:
            raise ParameterError(f"input {spec!r}: expected {name}:INDEX or {name}:START-END (test split)") from None
        if not 0 <= start < end <= len(data.x_test):
            raise ParameterError(f"input {spec!r}: the {name} test split has indices 0..{len(data.x_test) - 1}")
        return data.x_test[start:end], data.y_test[start:end]
    path = Path(spec)
    if not path.is_file():
        raise DatasetError(f"input {spec!r} is neither a file nor DATASET:INDEX or DATASET:START-END "
                           f"(data sets: {', '.join(available())})")
    if path.suffix.lower() == ".png":
        from matplotlib.image import imread

        try:
            image = np.asarray(imread(path), dtype=np.float32)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ParameterError(f"input image {path} cannot be read as PNG: {exc}") from None
        if image.ndim == 3:
            image = image[..., :3].mean(axis=2)
        return torch.from_numpy(image)[None], None
    if path.suffix != ".npy":
        raise ParameterError(f"input file {path} must be a .npy array (one input or a batch) or a .png image")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ParameterError(f"input file {path} is not a plain numeric .npy array: {exc}") from None
    if not np.issubdtype(array.dtype, np.number):
        raise ParameterError(f"input file {path} holds {array.dtype} values; save float values")
    return torch.from_numpy(np.ascontiguousarray(array)).float(), None
