"""How a data set is split among federated clients: IID or label-skewed.

Non-IID splits follow the common Dirichlet recipe (Hsu et al. 2019, "Measuring
the Effects of Non-Identical Data Distribution"): for every class, the share
each client gets is drawn from ``Dirichlet(alpha)``; small ``alpha`` gives each
client a few dominant labels, large ``alpha`` approaches IID. Splits are
deterministic for a seed and every client gets at least ``min_size`` examples,
so no simulated client trains on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from secure_infer._errors import ParameterError

__all__ = ["Partition", "partition"]


@dataclass(frozen=True)
class Partition:
    """Which training examples each client holds.

    Attributes:
        indices: one index array per client, into the training split.
        scheme: ``"iid"`` or ``"dirichlet"``.
        alpha: the Dirichlet concentration (``None`` for IID).
    """

    indices: tuple[np.ndarray, ...]
    scheme: str
    alpha: float | None

    @property
    def clients(self) -> int:
        return len(self.indices)

    def sizes(self) -> list[int]:
        return [len(i) for i in self.indices]

    def label_histogram(self, labels: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
        """A clients x classes count matrix: how skewed the split is, for reports."""
        y = np.asarray(labels)
        return np.stack([np.bincount(y[i], minlength=num_classes) for i in self.indices])


def partition(labels: torch.Tensor | np.ndarray, clients: int, *, alpha: float | None = None,
              seed: int = 0, min_size: int = 2) -> Partition:
    """Split the examples behind ``labels`` among ``clients``.

    ``alpha=None`` deals the examples out IID (shuffled, near-equal sizes);
    a positive ``alpha`` draws a label-skewed Dirichlet split.
    """
    y = np.asarray(labels).reshape(-1)
    n = len(y)
    if clients < 1:
        raise ParameterError(f"clients must be at least 1, got {clients}")
    if n < clients * min_size:
        raise ParameterError(
            f"{n} training examples cannot give {clients} clients {min_size} each; "
            "use fewer clients or a larger data set")
    rng = np.random.default_rng(seed)
    if alpha is None:
        order = rng.permutation(n)
        return Partition(tuple(np.sort(part) for part in np.array_split(order, clients)), "iid", None)
    if not alpha > 0:
        raise ParameterError(f"alpha must be positive (smaller is more skewed), got {alpha}")
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            share = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return Partition(tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts),
                             "dirichlet", float(alpha))
    raise ParameterError(
        f"no Dirichlet(alpha={alpha}) split gave all {clients} clients {min_size} examples "
        "in 1000 draws; raise alpha or use fewer clients")
