"""Sensitivity analysis: how much a metric drops when one channel group alone is pruned.

Li et al. (ICLR 2017, the ``l1`` seed) chose which layers to leave whole and how much to prune each stage
from exactly this scan: prune each layer on its own at several ratios and evaluate. Here a "layer" is a
channel group (a residual stream is one group, pruned as one), and the result feeds ``prune`` directly:

    s = fxprune.sensitivity(model, evaluate, x, criterion="l1", ratios=(0.25, 0.5, 0.75))
    print(s)                                                # the metric per group and ratio
    small = fxprune.prune(model, x, criterion="l1", ratio=s.ratios(max_drop=0.01))

Each entry is the metric of the model ``prune(model, x, criterion=..., ratio={key: r})`` returns (same
scores, same rounding; one trace, and one pass over any calibration data, serve the whole scan).
``evaluate(compact) -> float`` is the caller's, higher = better (a validation accuracy). A pruned BatchNorm
network scores low on the original's running statistics, whatever the criterion: an ``evaluate`` that first
calls ``fxprune.recalibrate_bn(compact, train_set)`` measures the channels lost rather than the statistics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from torch import nn

from passes import criteria as _criteria
from passes.dependency import Analysis
from passes.errors import PlanError
from passes.modes import eval_mode
from passes.plan import make_plan
from passes.rewrite import rewrite
from passes.select import check_ratio, resolve_ratios, select

__all__ = ["sensitivity", "Sensitivity", "GroupSensitivity"]

log = logging.getLogger(__name__)


@dataclass
class GroupSensitivity:
    """One prunable group: ``key`` is the producing module whose output channels it holds (a key of
    ``prune(ratio={key: r})``), ``metric`` the evaluation at each ratio."""

    key: str
    channels: int
    metric: dict[float, float] = field(default_factory=dict)


@dataclass
class Sensitivity:
    baseline: float
    criterion: str
    groups: list[GroupSensitivity]

    def ratios(self, max_drop: float) -> dict[str, float]:
        """Per group, the largest ratio whose metric, and that of every smaller ratio measured, stays within
        ``max_drop`` of the baseline (a noisy curve that dips and recovers stops at the dip). Groups that
        tolerate no measured ratio are left out, so ``prune(ratio=...)`` keeps them whole."""
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0:
            raise PlanError(f"max_drop must be a number >= 0 (the metric's largest allowed drop), got {max_drop!r}")
        chosen = {}
        for g in self.groups:
            best = None
            for r in sorted(g.metric):
                if self.baseline - g.metric[r] > max_drop:
                    break
                best = r
            if best:
                chosen[g.key] = best
        return chosen

    def to_dict(self) -> dict:
        """JSON-safe: the baseline and, per group, the metric at each ratio (ratios as strings)."""
        return {"baseline": self.baseline, "criterion": self.criterion,
                "groups": [{"key": g.key, "channels": g.channels, "metric": {str(r): m for r, m in g.metric.items()}}
                           for g in self.groups]}

    def __str__(self) -> str:
        ratios = sorted({r for g in self.groups for r in g.metric})
        head = f"{'group (its producer)':40s} {'ch':>5s}" + "".join(f" {f'r={r:g}':>9s}" for r in ratios)
        lines = [f"sensitivity ({self.criterion}), baseline {self.baseline:.4f}; drop from the baseline per ratio",
                 head, "-" * len(head)]
        for g in self.groups:
            cells = "".join(f" {self.baseline - g.metric[r]:9.4f}" if r in g.metric else f" {'-':>9s}" for r in ratios)
            lines.append(f"{g.key[:40]:40s} {g.channels:5d}{cells}")
        return "\n".join(lines)


def sensitivity(model: nn.Module, evaluate: Callable[[nn.Module], float], example_inputs=None, *,
                criterion: str = "l1", ratios: Sequence[float] = (0.25, 0.5, 0.75), data: Iterable | None = None,
                round_to: int | None = None, ignore: Sequence[str] = (), leaf_modules: Iterable = (),
                strict: bool = False, grouped_convs: str | dict = "whole", **criterion_options) -> Sensitivity:
    """Prune each prunable group alone at each of ``ratios`` and ``evaluate`` the compact model.

    Costs one evaluation per group and ratio (a ratio that removes no channel of a group is not
    evaluated: it is the baseline). The model is not modified.
    """
    from fxprune.api import _PLAN_KEYWORDS, analyze

    if not callable(evaluate):
        raise PlanError(f"evaluate must be a function model -> float (higher = better), got {type(evaluate).__name__}")
    ratios = sorted({check_ratio(r) for r in ratios})
    if not ratios:
        raise PlanError("ratios must hold at least one ratio in [0, 1)")
    crit = _criteria.get(criterion)
    _criteria.check_options(crit, criterion_options, _PLAN_KEYWORDS)
    analysis = analyze(model, example_inputs, leaf_modules=leaf_modules, strict=strict, ignore=ignore,
                       grouped_convs=grouped_convs)
    ctx = _criteria.ScoringContext(analysis, data=data, options={"criterion": criterion, **criterion_options})
    baseline = _measure(evaluate, model)
    rows = []
    for gi, key in _prunable_groups(analysis):
        group = analysis.groups[gi]
        row = GroupSensitivity(key, int(group.n_classes))
        for r in ratios:
            kept = select(analysis, crit, ctx, {gi: r}, round_to)
            if gi not in kept:
                row.metric[r] = baseline  # nothing of this group is removed at this ratio
                continue
            compact = rewrite(analysis, kept, make_plan(analysis, kept, {"criterion": criterion, "ratio": {key: r}}))
            row.metric[r] = _measure(evaluate, compact)
        log.info("sensitivity %s (%d channels): %s", key, group.n_classes,
                 ", ".join(f"{r:g}: {m:.4f}" for r, m in row.metric.items()))
        rows.append(row)
    return Sensitivity(baseline, criterion, rows)


def _prunable_groups(analysis: Analysis) -> list[tuple[int, str]]:
    """(group index, key) of every group that can be pruned: the key is the first producing module whose
    output lies in this group alone, so that ``ratio={key: r}`` prunes just this group. A group with no
    such producer (each of its convs also writes channels of another group) is left out of the scan."""
    out = []
    for gi, g in enumerate(analysis.groups):
        if g.frozen:
            continue
        key = next((name for name in analysis.producing_layers(g)
                    if set(resolve_ratios(analysis, {name: 0.5})) == {gi}), None)
        if key is not None:
            out.append((gi, key))
    return out


def _measure(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float:
    with eval_mode(model):
        value = evaluate(model)
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise PlanError(f"evaluate must return a number (higher = better), got {value!r}") from e
    if not np.isfinite(value):
        raise PlanError(f"evaluate returned {value}: a finite metric is needed to compare the pruned models")
    return value
