"""Backends: each compiles the traced :class:`~secure_infer.graph.Graph` into a program.

A backend is chosen by name from a registry (as Opacus chooses accountants):
``get_backend("crypten")``. Adding a third backend means one new module that
calls :func:`register_backend`; nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from secure_infer._errors import ParameterError
from secure_infer.backends.base import Backend, LayerRules, Program, RunStats

__all__ = ["Backend", "LayerRules", "Program", "RunStats", "available", "get_backend", "register_backend"]

_FACTORIES: dict[str, Callable[[], Backend]] = {}
# Built-in backends are imported lazily: CrypTen and TenSEAL are heavy imports.
_BUILTIN_MODULES = {"crypten": "secure_infer.backends.crypten", "tenseal": "secure_infer.backends.tenseal"}


def register_backend(name: str) -> Callable[[Callable[[], Backend]], Callable[[], Backend]]:
    """Decorator: make ``factory()`` the backend called ``name``."""

    def deco(factory: Callable[[], Backend]) -> Callable[[], Backend]:
        _FACTORIES[name] = factory
        return factory

    return deco


def available() -> list[str]:
    """Backend names :func:`get_backend` accepts."""
    return sorted(set(_FACTORIES) | set(_BUILTIN_MODULES))


def get_backend(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        ParameterError: no backend has that name.
    """
    if name not in _FACTORIES and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise ParameterError(
            f"unknown backend {name!r}; choose one of {', '.join(available())}"
        ) from None
