"""The one exception hierarchy of secure-infer.

Every error a user can cause is a :class:`SecureInferError`; the message names
the module path, input field or peer involved and says what to do instead::

    SecureInferError
    ├── UnsupportedModelError   a layer or pattern the chosen backend cannot run
    ├── ParameterError          a bad argument, shape, dtype or crypto parameter
    ├── DatasetError            a data set that is missing or malformed
    ├── BackendUnavailableError an optional backend or device that is not installed/present
    ├── ProtocolError           a malformed or unexpected message between parties
    ├── PartyFailure            a party that died, timed out or could not start
    └── EngineError             a block of a distributed job that failed or kept losing its worker

Raw tracebacks from CrypTen, ONNX or SEAL never reach the user for a model
problem: backends translate them into one of these.
"""

from __future__ import annotations


class SecureInferError(Exception):
    """Root of every error secure-infer raises on purpose."""


class UnsupportedModelError(SecureInferError):
    """A module the chosen backend cannot convert.

    Attributes:
        module_path: dotted path of the module inside the model (``""`` for the root).
        module_type: the module's class name.
    """

    def __init__(self, message: str, *, module_path: str = "", module_type: str = "") -> None:
        super().__init__(message)
        self.module_path = module_path
        self.module_type = module_type


class ParameterError(SecureInferError, ValueError):
    """An argument, input shape/dtype or cryptographic parameter that cannot work."""


class DatasetError(SecureInferError, FileNotFoundError):
    """A data set file that is missing or malformed."""


class BackendUnavailableError(SecureInferError, ImportError):
    """An optional backend, library or device that is not available here."""


class ProtocolError(SecureInferError):
    """A message between parties that is malformed, too large or out of order.

    Attributes:
        code: a short machine-readable reason (``"bad-magic"``, ``"frame-too-large"``,
            ``"secret-key-refused"``...), the same string the wire format's ERROR frame carries.
    """

    def __init__(self, message: str, *, code: str = "protocol-error") -> None:
        super().__init__(message)
        self.code = code


class PartyFailure(SecureInferError):
    """A party process that died, timed out or could not start.

    The message names the party that caused it; ``details`` holds the failing
    party's traceback, when there is one.
    """

    details: str = ""


__all__ = [
    "BackendUnavailableError",
    "DatasetError",
    "ParameterError",
    "PartyFailure",
    "ProtocolError",
    "SecureInferError",
    "UnsupportedModelError",
]


class EngineError(SecureInferError):
    """A block of a distributed job that failed, or whose workers kept being lost (:mod:`secure_infer.engine`)."""
