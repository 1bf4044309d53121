"""The modes the passes run in: eval mode for a while, the cycle collector paused for a while, and
tensors kept out of inference mode (a caller's ``torch.inference_mode()`` would make them untrainable).

``model.train(was_training)`` would set all submodules to the root's flag, losing mixed modes a user
chose (a frozen backbone in eval under a training head): passes that run data through the user's
modules (shape fallbacks, calibration, export, evaluation) use :func:`eval_mode` instead.

A prune creates tens of thousands of Python objects (proxies, graph nodes, numpy index arrays,
module copies); the cycle collector's scans of them, and of the user's whole heap when a full
collection falls inside, cost 5-15% of a prune. :func:`gc_paused` turns it off for one compiler
call: what those objects leave is freed by reference counting, and the collector picks up any
cycles once it is back on (that first scan is part of the call's time).
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "gc_paused", "outside_inference_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Batch norm uses its running statistics and does not update them; dropout is off."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cycle collection inside; the collector's previous state is restored on exit (calls nest)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def outside_inference_mode(t: torch.Tensor) -> torch.Tensor:
    """``t``, copied if it was made under ``torch.inference_mode()``: autograd refuses to save such a tensor
    for backward, and a data-driven criterion (taylor) may need to."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()
