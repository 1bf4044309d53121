"""``l2`` (seed 002, SFP, He et al. 2018): a filter's importance is the L2 norm of its weights.

Coupled groups add the L2 norms of all filters that write a class, like ``l1`` (see
base.class_sum): a residual channel is as important as all of its filters together.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..filters import filters
from . import register
from .base import WRITER_OPTIONS, Criterion

__all__ = ["filter_l2", "L2"]


def filter_l2(module: nn.Module) -> np.ndarray:
    """‖w‖₂ over each output filter (all input channels and kernel taps), on the CPU in float64."""
    w = filters(module.weight.detach(), module)
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1).double(), ord=2, dim=1).cpu().numpy()


class L2(Criterion):
    name = "l2"
    options = WRITER_OPTIONS

    def score(self, ctx, group):
        return ctx.class_sum(group, filter_l2)


register("l2", L2())
