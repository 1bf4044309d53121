"""``bn`` (network slimming, Liu et al. 2017): a channel's importance is |γ| of its batch norm.

The norm layers of a group are its members with role kind "norm" (batch/instance/layer norms with
an affine scale); their channels map to classes exactly as producers' filters do. A coupled group
(a residual stream normalized by several BNs) adds the |γ| of every norm on a class.

A group where some class has no affine norm (e.g. a conv straight into a ReLU or a classifier)
is scored by ``l1`` instead, with a one-time warning: |γ| alone cannot rank channels it never sees.
"""
from __future__ import annotations

import logging

import numpy as np

from . import register
from .base import WRITER_OPTIONS, Criterion, ScoringContext
from .l1 import filter_l1

__all__ = ["norm_gamma_sum", "BN"]

log = logging.getLogger(__name__)
_warned: set[str] = set()


def norm_gamma_sum(ctx: ScoringContext, group) -> tuple[np.ndarray, np.ndarray]:
    """(Σ|γ| per class, how many affine norms cover each class) over the group's norm members."""
    gid = ctx.analysis.groups.index(group)
    gpos, cpos = ctx.analysis.class_positions()
    scores, covered = np.zeros(group.n_classes), np.zeros(group.n_classes, dtype=np.int64)
    for name in dict.fromkeys(m for m, _ in group.members):  # each module once, member order
        role = ctx.analysis.roles.get(name)
        if role is None or role.kind != "norm" or role.out_elems is None:
            continue
        gamma = getattr(ctx.analysis.gm.get_submodule(name), "weight", None)
        if gamma is None:
            continue
        roots = ctx.analysis.roots(role.out_elems)
        cls = np.where(gpos[roots] == gid, cpos[roots], -1)
        ok = cls >= 0
        g = gamma.detach().abs().double().cpu().numpy().reshape(-1)
        np.add.at(scores, cls[ok], g[ok])
        np.add.at(covered, cls[ok], 1)
    return scores, covered


class BN(Criterion):
    name = "bn"
    options = WRITER_OPTIONS

    def score(self, ctx, group):
        scores, covered = norm_gamma_sum(ctx, group)
        if covered.all():
            return ctx.reduce_writers(scores, covered)
        if "no-bn" not in _warned:
            _warned.add("no-bn")
            log.warning("criterion 'bn': group %d (%s ...) has channels without an affine norm; "
                        "scoring such groups by l1 instead", group.id, group.members[0][0])
        return ctx.class_sum(group, filter_l1)


register("bn", BN())
