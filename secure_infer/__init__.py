"""secure-infer: run PyTorch models on data nobody else may see, and measure the cost.

``import secure_infer as si`` gives the façade (``wrap``, ``check`` as the
backends land), the errors, and the submodules a user reaches for:
``si.datasets``, ``si.zoo``, ``si.baselines``, ``si.rewrites`` (MPC/HE-aware
graph rewrites) and ``si.approximations`` (polynomial activations).
"""

from __future__ import annotations

from secure_infer import approximations, attacks, baselines, datasets, rewrites, zoo
from secure_infer._errors import (
    BackendUnavailableError,
    DatasetError,
    EngineError,
    ParameterError,
    PartyFailure,
    ProtocolError,
    SecureInferError,
    UnsupportedModelError,
)
from secure_infer._wrap import CheckReport, EncryptedModel, Report, check, wrap

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CheckReport",
    "DatasetError",
    "EngineError",
    "EncryptedModel",
    "ParameterError",
    "PartyFailure",
    "ProtocolError",
    "Report",
    "SecureInferError",
    "UnsupportedModelError",
    "__version__",
    "approximations",
    "attacks",
    "baselines",
    "check",
    "datasets",
    "rewrites",
    "wrap",
    "zoo",
]
