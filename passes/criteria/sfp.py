"""``nonzero``: the criterion that turns a soft-pruned (SFP) model into its compact form.

Soft filter pruning (fxprune.soft) zeroes whole classes: every producer filter (weight rows and
bias) of a class is 0. Scored by the L2 norm of its filters summed over producers, such a class
scores exactly 0 and every other class more, so with the ratio SFP used last, the plan keeps
exactly the classes that are not zeroed (ties among zero classes do not matter: all are removed).
It is the ``l2`` score under a name that says what it is for; used by SoftFilterPruning.hard_prune.
"""
from __future__ import annotations

from . import register
from .base import Criterion
from .l2 import filter_l2

__all__ = ["NonZero"]


class NonZero(Criterion):
    name = "nonzero"

    def score(self, ctx, group):
        return ctx.class_sum(group, filter_l2)


register("nonzero", NonZero())
