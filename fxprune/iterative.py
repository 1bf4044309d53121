"""Iterative pruning: reach a budget in steps, with the caller's fine-tuning between them.

One-shot pruning at a high ratio removes many channels before the network can adapt; pruning a little,
fine-tuning, and pruning again is the other common recipe (Torch-Pruning's ``iterative_steps``, CORING's
k-shot schedule). Which keeps more accuracy depends on how the fine-tuning is spread: with the same epochs,
split evenly or mostly after the last step, one shot won in ``bench/iterative.py``. Each step is
:func:`fxprune.prune` on the previous step's compact model, re-scored on its current weights. The budget of
every step is stated against the *original* model, so rounding at one step does not accumulate:

* ``ratio=r`` (or a ``{module glob: r}`` dict, e.g. from :func:`fxprune.sensitivity`): after step i
  every group keeps ``int(N * (1 - r_i))`` of its original N channels (classes), as a one-shot
  ``prune(ratio=r_i)`` would;
* ``flops_reduction=f``: after step i the conv+linear MACs are ``(1 - f_i)`` of the original's,
  measured on the current model, so a step that lands off target is corrected by the next.

``r_i`` / ``f_i`` grow linearly to the budget over ``steps`` (every group's own ratio, for a dict), or follow
a list of cumulative budgets (``ratio=[0.2, 0.35, 0.5]``). The result's ``meta["fxprune.plan"]`` is the plan
relative to the original model (the steps' kept indices composed), so ``fxprune.verify(model, small)`` holds
when no fine-tuning ran between the steps, and ``fxprune.apply(model, plan)`` rebuilds the same architecture;
``meta["fxprune.steps"]`` holds each step's own plan.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from passes.budget import conv_linear_macs
from passes.dependency import Analysis
from passes.errors import PlanError
from passes.plan import Plan, kept_from_plan, member_key
from passes.select import check_ratio, kept_count, resolve_ratios

__all__ = ["prune_iteratively"]


def prune_iteratively(model: nn.Module, example_inputs=None, *, steps: int | None = None,
                      ratio: float | dict[str, float] | Sequence[float] | None = None,
                      flops_reduction: float | Sequence[float] | None = None,
                      finetune: Callable[[torch.fx.GraphModule, int], None] | None = None,
                      **prune_options) -> torch.fx.GraphModule:
    """Prune in steps towards ``ratio`` (a float, a ``{module glob: ratio}`` dict as ``prune`` takes, or a
    list of cumulative ratios) or ``flops_reduction`` (a float or a list); ``finetune(compact, step)``
    (1-based) runs after every step. Other keywords (``criterion``, ``data``, ``round_to``,
    ``global_ratio``, ``ignore``, ...) go to every :func:`fxprune.prune` call. The model is not modified."""
    from fxprune.api import analyze, prune

    if (ratio is None) == (flops_reduction is None):
        raise PlanError("give one budget: ratio= or flops_reduction= (a float with steps=, or a list of cumulative budgets)")
    kind = "ratio" if ratio is not None else "flops_reduction"
    budget = ratio if ratio is not None else flops_reduction
    fractions, final = _schedule(budget, steps, kind)
    analysis_options = {k: prune_options[k] for k in ("leaf_modules", "strict", "ignore", "grouped_convs")
                        if k in prune_options}
    original = analyze(model, example_inputs, **analysis_options)
    # each grouped conv stays in the mode it got on the original (auto could choose another on a narrower conv)
    prune_options = {**prune_options, "grouped_convs": original.grouped_modes}
    # where the steps stand, as kept classes of the original's groups: read from the composed plan, not
    # from another trace of the current model
    kept: dict[int, np.ndarray] = {}
    step_budget = _budget_steps(kind, final, original, prune_options.get("global_ratio", False))
    current, plans = model, []
    for step, fraction in enumerate(fractions, 1):
        current = prune(current, example_inputs, **step_budget(fraction, kept), **prune_options)
        plans.append(current.meta["fxprune.plan"])
        composed = _composed(plans)
        kept = kept_from_plan(original, composed)
        if finetune is not None:
            finetune(current, step)
    current.meta["fxprune.steps"] = plans
    recorded = {kind: list(budget) if isinstance(budget, (list, tuple)) else budget, "steps": len(fractions)}
    current.meta["fxprune.plan"] = Plan(composed.modules, composed.groups, {**recorded, **_recorded(plans[-1].options)})
    return current


def _schedule(budget, steps: int | None, kind: str) -> tuple[list[float], float | dict]:
    """Per step, the fraction of the final budget reached after it (rising to 1), and the final budget."""
    if isinstance(budget, (list, tuple)):
        if steps is not None and steps != len(budget):
            raise PlanError(f"steps={steps} but {len(budget)} cumulative budgets given; give one of them")
        values = [_check_budget(b, kind) for b in budget]
        if not values or values[-1] <= 0 or any(b <= a for a, b in zip(values, values[1:])):
            raise PlanError(f"the cumulative {kind} list must be non-empty and increasing, got {list(budget)!r}")
        return [v / values[-1] for v in values], values[-1]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PlanError(f"steps must be a positive int (how many prune steps), got {steps!r}")
    if isinstance(budget, dict) and kind == "ratio":
        final = budget  # prune()'s own check names a bad key or ratio
    elif isinstance(budget, dict):
        raise PlanError("flops_reduction is one fraction for the whole model (or a list of cumulative ones), not a dict")
    else:
        final = _check_budget(budget, kind)
    return [i / steps for i in range(1, steps + 1)], final


def _check_budget(value, kind: str) -> float:
    if kind == "ratio":
        return check_ratio(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise PlanError(f"flops_reduction must be a fraction in (0, 1), got {value!r}")
    return float(value)


def _budget_steps(kind: str, final, original: Analysis, global_ratio: bool) -> Callable[[float, dict], dict]:
    """``(fraction, kept) -> prune() budget`` that takes the model ``kept`` describes (classes of the original's
    groups) to ``fraction`` of the final budget, stated against the original."""
    def classes(gi: int, kept: dict) -> int:
        return len(kept[gi]) if gi in kept else original.groups[gi].n_classes

    if kind == "flops_reduction":
        before = conv_linear_macs(original, {})
        return lambda fraction, kept: {
            "flops_reduction": 1.0 - (1.0 - final * fraction) * before / conv_linear_macs(original, kept)}
    prunable = [gi for gi, g in enumerate(original.groups) if not g.frozen]
    if global_ratio:
        total = sum(original.groups[gi].n_classes for gi in prunable)
        return lambda fraction, kept: {"ratio": _ratio_for(sum(classes(gi, kept) for gi in prunable),
                                                           max(1, int(total * (1.0 - final * fraction))))}
    final_ratios = resolve_ratios(original, final)
    keys = {gi: names[0] for gi in final_ratios if (names := original.producing_layers(original.groups[gi]))}

    def per_group(fraction: float, kept: dict) -> dict:
        wanted = {gi: kept_count(original.groups[gi].n_classes, final_ratios[gi] * fraction) for gi in keys}
        return {"ratio": {keys[gi]: _ratio_for(classes(gi, kept), n) for gi, n in wanted.items()
                          if n < classes(gi, kept)}}

    return per_group


def _ratio_for(n: int, wanted: int) -> float:
    """The ratio whose kept count ``int(n * (1 - r))`` is exactly ``wanted`` (< n): half a channel of margin
    against float rounding."""
    return 1.0 - (wanted + 0.5) / n


def _recorded(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in ("ratio", "flops_reduction")}


def _composed(plans: list[Plan]) -> Plan:
    """One plan relative to the first model from plans that each index the previous step's channels."""
    modules: dict[str, dict] = {}
    groups: dict[tuple, dict] = {}
    for p in plans:
        for name, io in p.modules.items():
            before = modules.get(name, {"in": None, "out": None})
            modules[name] = {side: _through(before[side], io.get(side)) for side in ("in", "out")}
        for g in p.groups:
            key = member_key(g["members"])
            before = groups.get(key)
            groups[key] = {**g, "keep": _through(before["keep"], g["keep"]), "channels": before["channels"]} \
                if before is not None else dict(g)
    return Plan(modules=modules, groups=list(groups.values()))


def _through(before: list[int] | None, step: list[int] | None) -> list[int] | None:
    """Indices into the original from indices into the previous model (None: all of them)."""
    if step is None:
        return before
    if before is None:
        return list(step)
    return [before[i] for i in step]
