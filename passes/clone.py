"""Copy a module tree for the rewrite: every tensor either sliced later or cloned, none shared.

``copy.deepcopy`` of a traced model spends most of its time in Python's generic object protocol
(``__reduce_ex__`` per module, per hook dict); the data copy is the small part. A module is plain
state (parameter, buffer and child dicts plus attributes), so it is copied field by field here:

* tensors named in ``deferred`` are *not* copied: the rewrite replaces them by their slices, and
  :func:`unshare` clones any it left in place;
* every other parameter and buffer is cloned (a new ``nn.Parameter`` keeps ``requires_grad``);
* attributes that are immutable (ints, tuples of ints, strings, ...) are reused, flat containers of
  them are copied shallowly, anything else goes through ``copy.deepcopy``.

A module with hooks, a custom ``__deepcopy__`` or parameters of a tensor subclass is deep-copied
as a whole (still without copying the deferred tensors), so the result is always what
``copy.deepcopy`` would give; a tensor a hook computed is copied detached (see :mod:`passes.hooks`).
"""
from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from typing import Any, Iterable

import torch
from torch import nn

from .hooks import computed_tensors

__all__ = ["clone_tree", "unshare"]

#: Attribute types reused as they are (exact types: checked with one set lookup per attribute).
_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device, torch.layout,
                        torch.memory_format})
_FLAT_CONTAINERS = frozenset({dict, OrderedDict, list, set})
_TREE_DICTS = frozenset({"_parameters", "_buffers", "_modules"})
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def clone_tree(root: nn.Module, deferred: Iterable[torch.Tensor] = ()) -> nn.Module:
    """A plain ``nn.Module`` holding copies of ``root``'s children, parameters and buffers."""
    memo: dict[int, Any] = {id(t): t for t in deferred}
    out = nn.Module()
    out.training = root.training
    for name, child in root._modules.items():
        out._modules[name] = None if child is None else _clone_module(child, memo)
    for name, p in root._parameters.items():
        out._parameters[name] = _copy_tensor(p, memo)
    for name, b in root._buffers.items():
        out._buffers[name] = _copy_tensor(b, memo)
    out._non_persistent_buffers_set = set(root._non_persistent_buffers_set)
    return out


def unshare(modules: Iterable[nn.Module], deferred: Iterable[torch.Tensor]) -> None:
    """Clone every deferred tensor still held by one of ``modules`` (one the rewrite did not replace)."""
    theirs = {id(t) for t in deferred}
    for mod in modules:
        for store in (mod._parameters, mod._buffers):
            for name, t in store.items():
                if t is not None and id(t) in theirs:
                    store[name] = _fresh(t)


def _clone_module(mod: nn.Module, memo: dict[int, Any]) -> nn.Module:
    if id(mod) in memo:
        return memo[id(mod)]
    if not _plain(mod):
        memo.update((k, t) for k, t in computed_tensors(mod).items() if k not in memo)
        new = copy.deepcopy(mod, memo)
        memo[id(mod)] = new
        return new
    new = type(mod).__new__(type(mod))
    memo[id(mod)] = new
    state = mod.__dict__.copy()  # immutable attributes (most of them) are shared as they are
    state["_parameters"] = {n: _copy_tensor(t, memo) for n, t in state["_parameters"].items()}
    state["_buffers"] = {n: _copy_tensor(t, memo) for n, t in state["_buffers"].items()}
    state["_modules"] = {n: None if c is None else _clone_module(c, memo) for n, c in state["_modules"].items()}
    for key in [k for k, v in state.items() if type(v) not in _IMMUTABLE and k not in _TREE_DICTS]:
        value = state[key]
        state[key] = type(value)() if type(value) in _FLAT_CONTAINERS and not value else _copy_value(value, memo)
    new.__dict__.update(state)
    return new


def _plain(mod: nn.Module) -> bool:
    """Can the field-by-field copy stand in for ``copy.deepcopy`` on this module?"""
    if _copies_itself(type(mod)):
        return False
    if any(getattr(mod, h, None) for h in _HOOK_DICTS):
        return False
    tensors = list(mod._parameters.values()) + list(mod._buffers.values())
    return all(t is None or type(t) in (torch.Tensor, nn.Parameter) for t in tensors)


@functools.lru_cache(maxsize=None)
def _copies_itself(cls: type) -> bool:
    """A class with its own copy protocol or slots must be deep-copied the standard way."""
    return hasattr(cls, "__deepcopy__") or any("__slots__" in vars(k) for k in cls.__mro__[:-1]) or \
        cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__getstate__ is not nn.Module.__getstate__


def _copy_tensor(t: torch.Tensor | None, memo: dict[int, Any]) -> torch.Tensor | None:
    if t is None:
        return None
    if id(t) in memo:
        return memo[id(t)]
    new = _fresh(t)
    memo[id(t)] = new
    return new


def _fresh(t: torch.Tensor) -> torch.Tensor:
    data = t.detach().clone()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(data, requires_grad=t.requires_grad)
    return data.requires_grad_(t.requires_grad)


def _copy_value(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _IMMUTABLE or kind is tuple and all(type(v) in _IMMUTABLE for v in value):
        return value
    if kind in _FLAT_CONTAINERS and all(type(v) in _IMMUTABLE for v in _items(value)):
        return kind(value)
    return copy.deepcopy(value, memo)


def _items(container) -> Iterable:
    if isinstance(container, dict):
        for k, v in container.items():
            yield k
            yield v
    else:
        yield from container
