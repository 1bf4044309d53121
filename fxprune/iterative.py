"""Iterative pruning: reach a budget in steps, with the caller's fine-tuning between them.

One-shot pruning at a high ratio removes many channels before the network can adapt; pruning a little,
fine-tuning, and pruning again is the other common recipe (Torch-Pruning's ``iterative_steps``, CORING's
k-shot schedule). Which keeps more accuracy depends on how the fine-tuning is spread: with the same epochs
split evenly over the steps, one shot won in ``bench/iterative.py``. Each step is :func:`fxprune.prune` on the previous step's compact model,
re-scored on its current weights. The budget of every step is stated against the *original* model, so
rounding at one step does not accumulate:

* ``ratio=r`` (or a ``{module glob: r}`` dict, e.g. from :func:`fxprune.sensitivity`): after step i
  every group keeps ``int(N * (1 - r_i))`` of its original N channels (classes), as a one-shot
  ``prune(ratio=r_i)`` would;
* ``flops_reduction=f``: after step i the conv+linear MACs are ``(1 - f_i)`` of the original's,
  measured on the current model, so a step that lands off target is corrected by the next.

``r_i`` / ``f_i`` grow linearly to the budget over ``steps`` (every group's own ratio, for a dict), or
follow a list of cumulative budgets (``ratio=[0.2, 0.35, 0.5]``). The result's ``meta["fxprune.plan"]`` is the plan relative to the
original model (the steps' kept indices composed), so ``fxprune.verify(model, small)`` holds when no
fine-tuning ran between the steps, and ``fxprune.apply(model, plan)`` rebuilds the same architecture;
``meta["fxprune.steps"]`` holds each step's own plan.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from passes.budget import conv_linear_macs
from passes.dependency import PRODUCER_KINDS, Analysis
from passes.errors import PlanError
from passes.plan import Plan
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
    analysis_options = {k: prune_options[k] for k in ("leaf_modules", "strict", "ignore") if k in prune_options}
    original = analyze(model, example_inputs, **analysis_options)
    final_ratios = resolve_ratios(original, final) if kind == "ratio" else None
    current, plans = model, []
    for step, fraction in enumerate(fractions, 1):
        now = analyze(current, example_inputs, **analysis_options) if step > 1 else original
        if kind == "flops_reduction":
            step_budget = _flops_step(final * fraction, original, now)
        elif prune_options.get("global_ratio", False):
            step_budget = _global_step(final * fraction, original, now)
        else:
            step_budget = _ratio_step(final_ratios, fraction, original, now)
        current = prune(current, example_inputs, **step_budget, **prune_options)
        plans.append(current.meta["fxprune.plan"])
        if finetune is not None:
            finetune(current, step)
    current.meta["fxprune.steps"] = plans
    recorded = {kind: list(budget) if isinstance(budget, (list, tuple)) else budget, "steps": len(fractions)}
    current.meta["fxprune.plan"] = _composed(plans, {**recorded, **_recorded(plans[-1].options)})
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


def _flops_step(target: float, original: Analysis, now: Analysis) -> dict:
    """The FLOPs reduction that takes the current model to ``1 - target`` of the original's MACs."""
    remaining = (1.0 - target) * conv_linear_macs(original, {}) / conv_linear_macs(now, {})
    return {"flops_reduction": 1.0 - remaining}


def _global_step(target: float, original: Analysis, now: Analysis) -> dict:
    """The global ratio that leaves ``int(total * (1 - target))`` of the original's prunable classes."""
    total = sum(g.n_classes for g in original.groups if not g.frozen)
    current = sum(g.n_classes for g in now.groups if not g.frozen)
    return {"ratio": _ratio_for(current, max(1, int(total * (1.0 - target))))}


def _ratio_step(final_ratios: dict[int, float], fraction: float, original: Analysis, now: Analysis) -> dict:
    """Per current group (keyed by a producing layer), the ratio that leaves the kept count a one-shot
    ``prune`` at ``fraction`` of the group's final ratio gives on the original."""
    ratios = {}
    for name, classes in _first_producers(now).items():
        groups = [gi for gi in original.member_groups(name, "out") if gi in final_ratios]
        if not groups:
            continue
        wanted = kept_count(original.groups[groups[0]].n_classes, final_ratios[groups[0]] * fraction)
        if wanted < classes:
            ratios[name] = _ratio_for(classes, wanted)
    return {"ratio": ratios}


def _ratio_for(n: int, wanted: int) -> float:
    """The ratio whose kept count ``int(n * (1 - r))`` is exactly ``wanted`` (< n): half a channel of margin
    against float rounding."""
    return 1.0 - (wanted + 0.5) / n


def _first_producers(analysis: Analysis) -> dict[str, int]:
    """One producing layer per prunable group (the key ``prune(ratio={key: r})`` sets it by), with its size."""
    return {names[0]: g.n_classes for g in analysis.groups if not g.frozen and (names := _producers(analysis, g))}


def _producers(analysis: Analysis, group) -> list[str]:
    return [name for name, io in group.members
            if io == "out" and name in analysis.roles and analysis.roles[name].kind in PRODUCER_KINDS]


def _recorded(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in ("ratio", "flops_reduction")}


def _composed(plans: list[Plan], options: dict) -> Plan:
    """One plan relative to the first model from plans that each index the previous step's channels."""
    modules: dict[str, dict] = {}
    groups: dict[tuple, dict] = {}
    for p in plans:
        for name, io in p.modules.items():
            before = modules.get(name, {"in": None, "out": None})
            modules[name] = {side: _through(before[side], io.get(side)) for side in ("in", "out")}
        for g in p.groups:
            key = tuple(sorted((str(m), str(s)) for m, s in g["members"]))
            before = groups.get(key)
            groups[key] = {**g, "keep": _through(before["keep"], g["keep"]), "channels": before["channels"]} \
                if before is not None else dict(g)
    return Plan(modules=modules, groups=list(groups.values()), options=options)


def _through(before: list[int] | None, step: list[int] | None) -> list[int] | None:
    """Indices into the original from indices into the previous model (None: all of them)."""
    if step is None:
        return before
    if before is None:
        return list(step)
    return [before[i] for i in step]
