"""Forward hooks on the modules a graph calls: the ones fxprune understands, and the tensors they leave.

A leaf module's hooks are not traced: they run around the module's call, in the original and in the
compact model alike, and may do anything to its channels. One kind is understood:
``torch.nn.utils.prune``'s masks (``prune.l1_unstructured(conv, "weight", 0.3)``, ``prune.ln_structured``),
the usual way to mask a model before making it small. Such a hook computes ``weight`` from
``weight_orig * weight_mask`` before each call, so those two are sliced exactly like ``weight`` and
the compact model keeps its masks. Any other hook (a user's, the old ``nn.utils.weight_norm`` and
``nn.utils.spectral_norm``, whose norms change with the channels) makes the module opaque: its
channels are frozen, never guessed.

A hook also leaves the tensor it computed in a plain attribute, often with autograd history, which
``copy.deepcopy`` refuses to copy: :func:`copy_model` copies such tensors detached (the hook computes
them again on the next call).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = ["opaque_hook", "masked_names", "derived_from", "value_holders", "refresh_masked", "mask_like",
           "computed_tensors", "copy_model"]

#: The tensors a torch.nn.utils.prune hook computes ``<name>`` from.
_MASK_SUFFIXES = ("_orig", "_mask")


def opaque_hook(mod: nn.Module) -> str | None:
    """A short description of the first forward hook on ``mod`` that fxprune cannot see through, if any."""
    for kind, hooks in (("forward pre-hook", mod._forward_pre_hooks), ("forward hook", mod._forward_hooks)):
        for hook in hooks.values():
            if not isinstance(hook, torch_prune.BasePruningMethod):
                return f"{kind} {_hook_name(hook)}"
    return None


def _mask_hooks(mod: nn.Module) -> list[torch_prune.BasePruningMethod]:
    """The torch.nn.utils.prune masks on ``mod``: forward pre-hooks that compute a masked tensor."""
    return [hook for hook in mod._forward_pre_hooks.values() if isinstance(hook, torch_prune.BasePruningMethod)]


def masked_names(mod: nn.Module) -> list[str]:
    """The tensors of ``mod`` that a torch.nn.utils.prune mask computes (``weight``, ``bias``)."""
    return [hook._tensor_name for hook in _mask_hooks(mod)]


def derived_from(mod: nn.Module, attr: str) -> tuple[str, ...]:
    """The tensors a torch.nn.utils.prune mask computes ``mod.<attr>`` from (``weight_orig``,
    ``weight_mask``), or none: they have ``attr``'s shape and are sliced with it."""
    if attr in masked_names(mod):
        return tuple(attr + suffix for suffix in _MASK_SUFFIXES)
    return ()


def value_holders(mod: nn.Module, attr: str) -> tuple[str, ...]:
    """``attr`` and, when a torch.nn.utils.prune mask computes it, ``<attr>_orig`` (the leaf it is computed
    from, last): an in-place edit of ``attr`` alone would be undone when the mask's hook computes it again
    on the next call."""
    return (attr, *derived_from(mod, attr)[:1])


def refresh_masked(model: nn.Module) -> None:
    """Compute every masked tensor again, as its hook does before each call.

    The criteria read ``weight`` directly, without running the model; after an optimizer step it is
    the one the last forward computed, from the ``weight_orig`` before the step. This changes no
    state (``weight`` is in no state_dict), only brings that derived tensor up to date."""
    for mod in model.modules():
        for hook in _mask_hooks(mod):
            hook(mod, ())


def mask_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Mask the tensors of ``model`` that ``state`` holds masked (``<name>_orig`` and ``<name>_mask``
    keys), so that a state_dict saved from a masked model loads into a fresh one of its architecture."""
    modules = dict(model.named_modules())
    for key, mask in state.items():
        stem = key[: -len("_mask")]
        prefix, _, name = stem.rpartition(".")
        mod = modules.get(prefix)
        if key.endswith("_mask") and stem + "_orig" in state and mod is not None and name in mod._parameters:
            torch_prune.custom_from_mask(mod, name, mask)


def computed_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """A ``copy.deepcopy`` memo holding a detached copy of every tensor a hook left in a plain attribute."""
    memo: dict[int, Any] = {}
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return memo


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also for a model whose hooks left non-leaf tensors behind."""
    return copy.deepcopy(model, computed_tensors(model))


def _hook_name(hook: Any) -> str:
    target = hook.func if hasattr(hook, "func") else hook  # functools.partial
    named = target if hasattr(target, "__qualname__") else type(target)  # a function, or a hook object's class
    return f"{named.__module__}.{named.__qualname__}"
