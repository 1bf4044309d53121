"""Eval mode for a while, then every module's own training flag back.

``model.train(was_training)`` would set all submodules to the root's flag, losing mixed modes a user
chose (a frozen backbone in eval under a training head): passes that run data through the user's
modules (shape fallbacks, calibration, export, evaluation) use :func:`eval_mode` instead.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["eval_mode"]


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
