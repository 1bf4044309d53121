"""Importance criteria, one module each, registered by name.

A criterion scores the channel classes of a group (higher = keep first); see :mod:`.base`.
"""
from __future__ import annotations

import difflib
from typing import Callable, Iterable

from ..errors import PlanError
from .base import Criterion, FunctionCriterion, ScoringContext

__all__ = ["get", "names", "register", "check_options", "Criterion", "ScoringContext"]

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


#: Accepted by every criterion: a sweep seeds all alike, and a deterministic criterion has nothing to seed.
SHARED_OPTIONS = frozenset({"seed"})


def check_options(criterion: Criterion, given: Iterable[str], keywords: Iterable[str]) -> None:
    """Refuse an option ``criterion`` does not read: a misspelt ``ratoi=0.3`` or ``round_too=8`` would
    otherwise land among the options and change nothing. ``keywords``: the caller's own parameters,
    offered with the criterion's options as what was probably meant."""
    accepted = criterion.options
    if accepted is None:
        return
    keywords = list(keywords)
    for key in given:
        if key in accepted or key in SHARED_OPTIONS:
            continue
        takes = f" It reads {', '.join(sorted(accepted))}." if accepted else " It takes no options."
        if key in keywords:  # a parameter of the caller that only some criteria read (threshold=)
            raise PlanError(f"criterion {criterion.name!r} does not use {key}=.{takes}")
        known = [*keywords, *accepted]
        close = [k for k in known if k.lower() == key.lower()] or difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise PlanError(f"criterion {criterion.name!r} has no option {key!r}{hint}{takes}")


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
