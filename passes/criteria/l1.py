"""``l1`` (seed 001, Li et al. 2017): a filter's importance is the sum of its absolute weights.

Coupled groups add the L1 norms of all filters that write a class (see base.class_sum).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import register
from .base import Criterion

__all__ = ["filter_l1", "L1"]


def filter_l1(module: nn.Module) -> np.ndarray:
    """Σ|w| over each output filter (all input channels and kernel taps)."""
    w = module.weight.detach()
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1), ord=1, dim=1).double().cpu().numpy()


class L1(Criterion):
    name = "l1"

    def score(self, ctx, group):
        return ctx.class_sum(group, filter_l1)


register("l1", L1())
