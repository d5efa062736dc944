"""Logistic regression trained on encrypted data with CKKS.

The data owner (client) encrypts its features column by column (one sample
per slot) and its labels; the model weights are encrypted too. Each epoch the
server computes, on ciphertexts only, the predictions ``sigmoid(Xw + b)`` with
a degree-3 polynomial sigmoid, the errors against the encrypted labels and the
per-sample gradient terms. The client decrypts those terms (its own data),
sums them, updates the weights and re-encrypts them: this refresh stands in
for bootstrapping, which SEAL's CKKS does not offer. The server never sees
features, labels, weights or gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from secure_infer._errors import DatasetError, ParameterError
from secure_infer.approximations import fit
from secure_infer.backends.tenseal._execute import _Ops
from secure_infer.backends.tenseal._params import CKKSParameters
from secure_infer.backends.tenseal._seal import ClientKeys, ServerContext, serialized_size
from secure_infer.datasets import Dataset

__all__ = ["HETrainingResult", "train_logistic_regression"]

# depth per epoch: w*x (1) + sigmoid degree 3 by Horner (3) + error*x (1)
_PARAMS = CKKSParameters(8192, (36, 26, 26, 26, 26, 26, 36), 26)


@dataclass(frozen=True)
class HETrainingResult:
    """A logistic regression trained on ciphertexts, against plaintext training."""

    model: nn.Linear
    test_accuracy: float
    plaintext_test_accuracy: float  # same gradient descent, exact sigmoid, in plaintext
    sklearn_test_accuracy: float  # scikit-learn's LogisticRegression, trained to convergence
    seconds: float
    server_seconds: float
    ciphertext_bytes: int
    sigmoid_coefficients: tuple[float, ...]

    @property
    def accuracy_gap(self) -> float:
        """Best plaintext logistic regression minus encrypted test accuracy, in points."""
        return 100.0 * (max(self.plaintext_test_accuracy, self.sklearn_test_accuracy) - self.test_accuracy)


def _sigmoid_poly(bound: float) -> np.ndarray:
    poly = fit(nn.Sigmoid(), -bound, bound, 3)
    return poly.coefficients.detach().double().numpy()


def _plaintext(x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> tuple[np.ndarray, float]:
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(epochs):
        err = 1 / (1 + np.exp(-(x @ w + b))) - y
        w -= lr * x.T @ err / len(y)
        b -= lr * err.mean()
    return w, b


def _accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> float:
    return float((((x @ w + b) > 0).astype(int) == y).mean())


def train_logistic_regression(
    data: Dataset, *, epochs: int = 10, lr: float = 2.0, sigmoid_range: float = 8.0,
    feature_scale: float = 0.25,
) -> HETrainingResult:
    """Train binary logistic regression on CKKS-encrypted features and labels.

    Full-batch gradient descent from zero weights, so the plaintext reference
    (exact sigmoid, same epochs and learning rate) is deterministic. The client
    scales its standardised features by ``feature_scale`` before encrypting (a
    public preprocessing step) so that ``w.x`` stays inside ``sigmoid_range``,
    where the degree-3 polynomial is a good sigmoid; outside it the polynomial
    diverges and so would training.
    """
    if data.num_classes != 2:
        raise ParameterError(f"{data.label}: logistic regression needs 2 classes, got {data.num_classes}")
    if data.synthetic:
        raise DatasetError(f"{data.label}: generated inputs have random labels; train on real data")
    if epochs < 1 or lr <= 0:
        raise ParameterError("epochs must be >= 1 and lr > 0")
    x = data.x_train.reshape(len(data.x_train), -1).double().numpy() * feature_scale
    y = data.y_train.double().numpy()
    n, d = x.shape
    if n > _PARAMS.slots:
        raise ParameterError(f"{n} training rows exceed the {_PARAMS.slots} slots of one ciphertext")
    coeffs = _sigmoid_poly(sigmoid_range)
    started = time.perf_counter()
    client = ClientKeys(_PARAMS, ())
    server = ServerContext(_PARAMS, None)
    public = server.load_keys(client.public_blobs, client.rotation_steps)
    ops = _Ops(server)
    ev = server.evaluator
    pad = np.zeros(_PARAMS.slots)

    def column(values: np.ndarray) -> np.ndarray:
        out = pad.copy()
        out[: len(values)] = values
        return out

    enc_x = [client.encrypt(column(x[:, j])) for j in range(d)]  # client -> server, once
    enc_y = client.encrypt(column(y))
    w, b = np.zeros(d), 0.0
    server_s = 0.0
    for _ in range(epochs):
        enc_w = [client.encrypt(np.full(_PARAMS.slots, wj)) for wj in w]  # refreshed weights
        enc_b = client.encrypt(np.full(_PARAMS.slots, b))
        t0 = time.perf_counter()
        # server: z = sum_j w_j * x_j + b
        z = None
        for wj, xj in zip(enc_w, enc_x, strict=True):
            term = ops.new()
            ev.multiply(wj, xj, term)
            if z is None:
                z = term
            else:
                ev.add_inplace(z, term)
        assert z is not None  # data sets have at least one feature
        ev.relinearize_inplace(z, public.relin_keys)
        ev.rescale_to_next_inplace(z)
        bias = ops.mod_to(enc_b, z)
        bias.scale = z.scale
        ev.add_inplace(z, bias)
        # sigmoid(z) ~ c0 + c1 z + c2 z^2 + c3 z^3, Horner, two levels
        from secure_infer.backends.tenseal._compile import PolyStage

        pred = ops.polynomial(z, PolyStage(0, coeffs, "sigmoid", exact=True))
        labels = ops.mod_to(enc_y, pred)
        labels.scale = pred.scale
        ev.sub_inplace(pred, labels)  # error = prediction - label
        terms = []
        for xj in (*enc_x, None):
            if xj is None:
                terms.append(pred)
                continue
            term = ops.relinearized_product(pred, ops.mod_to(xj, pred))
            ev.rescale_to_next_inplace(term)
            terms.append(term)
        server_s += time.perf_counter() - t0
        # client: decrypt its own per-sample gradient terms, sum, update
        sums = np.array([client.decrypt(t)[:n].sum() for t in terms])
        w -= lr * sums[:d] / n
        b -= lr * sums[d] / n
    seconds = time.perf_counter() - started
    # up: features and labels once, weights every epoch (seeded); down: gradient terms every epoch
    ct_bytes = client.wire_size() * (d + 1) * (epochs + 1) + serialized_size(terms[0]) * (d + 1) * epochs
    x_test = data.x_test.reshape(len(data.x_test), -1).double().numpy() * feature_scale
    y_test = data.y_test.numpy()
    w_plain, b_plain = _plaintext(x, y, epochs, lr)
    from sklearn.linear_model import LogisticRegression

    reference = LogisticRegression(max_iter=1000).fit(x, y)
    model = nn.Linear(d, 1)  # on the caller's (unscaled) features
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w * feature_scale).reshape(1, -1))
        model.bias.fill_(b)
    return HETrainingResult(
        model=model,
        test_accuracy=_accuracy(x_test, y_test, w, b),
        plaintext_test_accuracy=_accuracy(x_test, y_test, w_plain, b_plain),
        sklearn_test_accuracy=float(reference.score(x_test, y_test)),
        seconds=seconds, server_seconds=server_s, ciphertext_bytes=ct_bytes,
        sigmoid_coefficients=tuple(float(c) for c in coeffs),
    )
