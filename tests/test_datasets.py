from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from secure_infer import datasets
from secure_infer._errors import DatasetError, ParameterError


def test_digits_shapes_and_range(digits: datasets.Dataset) -> None:
    assert digits.input_shape == (1, 8, 8)
    assert digits.x_train.shape[1:] == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert 0.0 <= float(digits.x_train.min()) and float(digits.x_train.max()) <= 1.0
    assert set(digits.y_test.tolist()) == set(range(10))
    assert not digits.synthetic


def test_digits_flatten() -> None:
    flat = datasets.load_digits(flatten=True)
    assert flat.input_shape == (64,) and flat.x_test.shape[1] == 64


def test_split_is_deterministic_and_seeded() -> None:
    a, b = datasets.load_digits(seed=3), datasets.load_digits(seed=3)
    c = datasets.load_digits(seed=4)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)


def test_split_is_stratified(digits: datasets.Dataset) -> None:
    counts = torch.bincount(digits.y_test, minlength=10).float()
    assert counts.min() / counts.max() > 0.85


def test_breast_cancer_standardised_on_train_only() -> None:
    bc = datasets.load_breast_cancer(seed=0)
    assert bc.input_shape == (30,) and bc.num_classes == 2
    assert torch.allclose(bc.x_train.mean(0), torch.zeros(30), atol=1e-4)
    # test statistics were not used: the test mean is not exactly zero
    assert float(bc.x_test.mean(0).abs().max()) > 1e-3
    assert len(bc.feature_names) == 30


def test_mnist_shaped_is_labelled_synthetic() -> None:
    gen = datasets.mnist_shaped(5, seed=1)
    assert gen.synthetic and "timing only" in gen.label and "GENERATED" in gen.description
    assert gen.x_test.shape == (5, 1, 28, 28)
    assert torch.equal(gen.x_test, datasets.mnist_shaped(5, seed=1).x_test)


def _write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_local_idx_files(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (6, 28, 28)), compress=compress)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6) % 10, compress=compress)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)), compress=compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 3, 4]), compress=compress)
    mnist = datasets.load_mnist(tmp_path)
    assert mnist.x_train.shape == (6, 1, 28, 28) and mnist.x_test.shape == (4, 1, 28, 28)
    assert mnist.y_test.tolist() == [1, 2, 3, 4]
    assert float(mnist.x_train.max()) <= 1.0


def test_mnist_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.load_mnist(tmp_path / "nowhere")


def test_mnist_truncated_file_is_rejected(tmp_path: Path) -> None:
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        _write_idx(tmp_path / stem, np.zeros((2, 28, 28)))
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        _write_idx(tmp_path / stem, np.zeros(2))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="promises"):
        datasets.load_mnist(tmp_path)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(ParameterError, match="digits"):
        datasets.load("cifar")


def test_load_inputs_from_specs_and_files(tmp_path) -> None:
    import matplotlib.image

    from secure_infer.datasets import load_digits, load_inputs

    x, y = load_inputs("digits:3-7")
    data = load_digits()
    assert torch.equal(x, data.x_test[3:7]) and torch.equal(y, data.y_test[3:7])
    np.save(tmp_path / "one.npy", data.x_test[0].numpy())
    x, y = load_inputs(str(tmp_path / "one.npy"))
    assert x.shape == (1, 8, 8) and y is None
    matplotlib.image.imsave(tmp_path / "digit.png", data.x_test[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    x, _ = load_inputs(str(tmp_path / "digit.png"))
    assert x.shape == (1, 8, 8) and float((x[0] - data.x_test[0, 0]).abs().max()) < 0.01
    for bad, message in (("digits:5-2", "test split has indices"), ("digits:x", "digits:START-END"),
                         (str(tmp_path / "none.npy"), "neither a file")):
        with pytest.raises((ParameterError, DatasetError), match=message):
            load_inputs(bad)


def _write_mnist_pickle(path: Path, scale: float, rng: np.random.Generator, protocol: int) -> list[np.ndarray]:
    parts = [(rng.integers(0, 256, (n, 784)), np.arange(n) % 10) for n in (3, 2, 4)]
    with gzip.open(path, "wb") as fh:
        pickle.dump(tuple((x.astype(np.float32) / scale, y.astype(np.int64)) for x, y in parts), fh, protocol=protocol)
    return [x for x, _ in parts]


@pytest.mark.parametrize(("scale", "protocol"), [(256.0, 2), (255.0, 4), (256.0, 5)])
def test_mnist_reads_the_classic_pickle_as_the_idx_files_would(tmp_path: Path, scale: float, protocol: int) -> None:
    rng = np.random.default_rng(1)
    raw = _write_mnist_pickle(tmp_path / "mnist.pkl.gz", scale, rng, protocol)
    mnist = datasets.load_mnist(tmp_path / "mnist.pkl.gz")
    # train + validation are MNIST's training set; pixels come back as the IDX bytes / 255
    assert mnist.x_train.shape == (5, 1, 28, 28) and mnist.x_test.shape == (4, 1, 28, 28)
    assert mnist.y_train.tolist() == [0, 1, 2, 0, 1] and mnist.y_test.tolist() == [0, 1, 2, 3]
    expected = np.concatenate(raw[:2]).reshape(5, 1, 28, 28) / 255.0
    assert np.allclose(mnist.x_train.numpy(), expected, atol=1e-7)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_mnist_pickle_that_would_run_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mnist.pkl"
    path.write_bytes(pickle.dumps(((_Payload(), 0), (0, 0), (0, 0))))
    with pytest.raises(DatasetError, match="not a numpy array"):
        datasets.load_mnist(path)
    assert "must never run" not in capsys.readouterr().out


class _HugeView:
    def __reduce__(self) -> tuple[object, tuple[object, ...]]:  # claims 784 GB over a one-byte buffer
        return (np.ndarray, ((10**9, 784), np.dtype("uint8"), b"\0", 0, (0, 0)))


def test_mnist_pickle_parts_are_checked_before_anything_is_allocated(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl"
    labels = np.zeros(2, dtype=np.int64)
    path.write_bytes(pickle.dumps(((_HugeView(), labels), (_HugeView(), labels), (_HugeView(), labels))))
    with pytest.raises(DatasetError, match="up to 70000 rows"):
        datasets.load_mnist(path)
    x = np.zeros((2, 784), dtype=np.float32)
    for bad, message in ((np.array([0, -1]), "digits 0-9"), (np.zeros(3, dtype=np.int64), "2 integers"),
                         (np.array([0.0, 1.0]), "2 integers")):
        path.write_bytes(pickle.dumps(((x, labels), (x, bad), (x, labels))))
        with pytest.raises(DatasetError, match=f"the validation labels must be {message}"):
            datasets.load_mnist(path)


def test_mnist_pickle_with_other_pixels_or_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl"
    path.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(DatasetError, match="train, validation, test"):
        datasets.load_mnist(path)
    x = np.full((2, 784), 0.3, dtype=np.float64)  # 0.3 * 256 and 0.3 * 255 are not whole bytes
    path.write_bytes(pickle.dumps(tuple((x, np.zeros(2, dtype=np.int64)) for _ in range(3))))
    with pytest.raises(DatasetError, match="multiples"):
        datasets.load_mnist(path)
