"""Training with differential privacy (DP-SGD through Opacus), the defence that targets memorisation.

Encryption hides inputs from the server but not the outputs from the client;
membership inference and inversion work on outputs. DP-SGD (Abadi et al.
2016) bounds what any one training example can change, so it lowers what those
attacks find, at an accuracy cost. Opacus clips per-example gradients, adds
Gaussian noise, and its RDP accountant reports the epsilon actually spent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from secure_infer._errors import BackendUnavailableError, ParameterError
from secure_infer.datasets import Dataset


@dataclass(frozen=True)
class DPTraining:
    """A DP-trained model and its privacy guarantee as the accountant computed it."""

    model: nn.Module
    target_epsilon: float
    epsilon: float  # spent, as reported by Opacus' RDP accountant
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    epochs: int


def train_dp(data: Dataset, x: torch.Tensor, y: torch.Tensor, *, target_epsilon: float, epochs: int = 60,
             delta: float | None = None, max_grad_norm: float = 1.0, lr: float = 0.5, batch_size: int = 16,
             seed: int = 0) -> DPTraining:
    """Train the zoo MLP on ``(x, y)`` with DP-SGD calibrated to ``target_epsilon`` over ``epochs``.

    ``delta`` defaults to 1/(10 n), below 1/n as DP requires.
    """
    try:
        from opacus import PrivacyEngine
    except ImportError as exc:  # pragma: no cover - opacus is a declared dependency
        raise BackendUnavailableError("DP training needs opacus: pip install 'opacus>=1.6'") from exc
    from secure_infer.zoo import build

    if target_epsilon <= 0:
        raise ParameterError(f"target_epsilon must be > 0, got {target_epsilon}")
    delta = delta if delta is not None else 1.0 / (10 * len(x))
    torch.manual_seed(seed)
    model = build("mlp", data.input_shape, data.num_classes, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' own notices about secure RNG and backward hooks
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=target_epsilon,
            target_delta=delta, epochs=epochs, max_grad_norm=max_grad_norm)
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                if len(xb) == 0:
                    continue  # Poisson sampling can draw an empty batch
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
        spent = float(engine.get_epsilon(delta))
    plain = build("mlp", data.input_shape, data.num_classes, seed=seed)
    plain.load_state_dict(model._module.state_dict())
    return DPTraining(plain.eval(), target_epsilon, spent, delta, float(optimizer.noise_multiplier),
                      max_grad_norm, epochs)
