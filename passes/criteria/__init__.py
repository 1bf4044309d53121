"""Importance criteria, one module each, registered by name.

A criterion scores the channel classes of a group (higher = keep first); see :mod:`.base`.
"""
from __future__ import annotations

from typing import Callable

from ..errors import PlanError
from .base import Criterion, FunctionCriterion, ScoringContext

__all__ = ["get", "names", "register", "Criterion", "ScoringContext"]

_REGISTRY: dict[str, Criterion] = {}


def register(name: str, criterion: Criterion | Callable) -> None:
    """Add a criterion: a Criterion object or a function ``fn(ctx, group) -> scores``."""
    if not isinstance(name, str) or not name:
        raise PlanError("a criterion needs a non-empty name")
    _REGISTRY[name] = criterion if isinstance(criterion, Criterion) else FunctionCriterion(name, criterion)


def get(name: str) -> Criterion:
    _load_builtins()
    if name not in _REGISTRY:
        raise PlanError(f"unknown criterion {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


_loaded = False


def _load_builtins() -> None:
    """Import every criterion module of this package once; each registers itself."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
