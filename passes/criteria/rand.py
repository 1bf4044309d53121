"""``random``: uniformly random class scores, the baseline every criterion should beat.

Deterministic: group ``g`` draws from ``numpy.random.default_rng([seed, g])`` with
``seed = options["seed"]`` (default 0), so a plan does not depend on the order groups are scored in.
"""
from __future__ import annotations

import numpy as np

from . import register
from .base import Criterion

__all__ = ["Random"]


class Random(Criterion):
    name = "random"
    options = frozenset({"seed"})

    def score(self, ctx, group):
        gid = ctx.analysis.groups.index(group)
        rng = np.random.default_rng([int(ctx.options.get("seed", 0)), gid])
        return rng.random(group.n_classes)


register("random", Random())
