"""The user-facing pipeline: trace -> analyze -> score -> plan -> rewrite -> verify.

    small = fxprune.prune(model, criterion="graph", threshold=0.7)
    small = fxprune.prune(model, criterion="l1", ratio=0.3, example_inputs=torch.randn(1, 3, 32, 32))

The user's model is never modified: analysis and scoring run in eval mode without gradients, and the
rewrite works on a deep copy.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from passes import criteria as _criteria
from passes.dependency import Analysis, analyze as _analyze
from passes.errors import PlanError, VerificationError
from passes.plan import Plan, kept_from_plan, make_plan
from passes.rewrite import rewrite as _rewrite
from passes.budget import global_keep, search_flops
from passes.select import check_ratio, finish_kept, resolve_ratios, select
from passes.modes import gc_paused
from passes.trace import inputs_like, trace as _trace
from passes.verify import verify_against

__all__ = ["analyze", "plan", "apply", "prune", "verify", "criteria", "register_criterion"]

log = logging.getLogger(__name__)


@gc_paused()
def analyze(model: nn.Module, example_inputs=None, *, leaf_modules: Iterable = (), strict: bool = False,
            ignore: Sequence[str] = (), grouped_convs: str | dict = "whole") -> Analysis:
    """Trace ``model`` and find its channel groups; ``print()`` the result for a readable summary.

    ``grouped_convs``: how grouped (not depthwise) convs are pruned: ``"whole"`` (default) groups go (the
    conv keeps its width per group), ``"within"`` every group keeps the same positions (its width shrinks,
    as Torch-Pruning does), ``"auto"`` whichever gives the conv more choices (a group wider than the
    number of groups: within); or a dict {conv name: mode} (other convs: whole)."""
    gm, inputs = _trace(model, example_inputs, leaf_modules)
    return _analyze(gm, inputs, strict=strict, ignore=tuple(ignore), grouped_convs=grouped_convs)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise PlanError(f"threshold must be a number in (0, 1] (the similarity above which filters are "
                        f"redundant), got {threshold!r}")
    return float(threshold)


@gc_paused()
def plan(model: nn.Module, example_inputs=None, *, criterion: str = "l1", ratio: float | dict | None = None,
         threshold: float | None = None, data: Iterable | None = None, round_to: int | None = None,
         ignore: Sequence[str] = (), leaf_modules: Iterable = (), strict: bool = False,
         global_ratio: bool = False, flops_reduction: float | None = None, grouped_convs: str | dict = "whole",
         **criterion_options) -> Plan:
    """Decide which channels every group keeps.

    criterion: a name from :func:`criteria` ("l1", "graph", ...). Budget, one of: ``ratio`` (float, or
    a dict {module glob: ratio}); ``ratio`` with ``global_ratio=True`` (ranked across groups);
    ``flops_reduction=f`` (conv+linear MACs fall by f); for "graph" alone, ``threshold`` (default 0.7).
    ``data``: calibration batches (inputs or (inputs, targets)) for data-driven criteria.
    ``grouped_convs``: "whole", "within" or "auto" (see :func:`analyze`).
    """
    crit = _criteria.get(criterion)
    _criteria.check_options(crit, [*criterion_options, *(["threshold"] if threshold is not None else [])],
                            _PLAN_KEYWORDS)
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PlanError(f"round_to must be a positive int, got {round_to!r}")
    if threshold is not None:
        _check_threshold(threshold)
    if ratio is None and flops_reduction is None and criterion != "graph":
        raise PlanError(f"criterion {criterion!r} needs a budget: pass ratio=0.3 (or a dict of ratios)")
    if flops_reduction is not None and ratio is not None:
        raise PlanError("give either ratio= or flops_reduction=, not both")
    if global_ratio and isinstance(ratio, dict):
        raise PlanError("global_ratio=True ranks all groups together: pass a single float ratio")
    analysis = analyze(model, example_inputs, leaf_modules=leaf_modules, strict=strict, ignore=ignore,
                       grouped_convs=grouped_convs)
    options = {"criterion": criterion, "threshold": threshold if threshold is not None else 0.7, **criterion_options}
    ctx = _criteria.ScoringContext(analysis, data=data, options=options)
    if flops_reduction is not None or global_ratio:
        kept = _network_wide(analysis, crit, ctx, ratio, flops_reduction, global_ratio, round_to)
    else:
        ratios = resolve_ratios(analysis, ratio) if ratio is not None else None
        kept = select(analysis, crit, ctx, ratios, round_to)
    record = {
        "criterion": criterion,
        "ratio": ratio,
        "global_ratio": global_ratio,
        "flops_reduction": flops_reduction,
        "threshold": threshold,  # graph's alone; under a ratio or FLOPs budget it shapes the ranking
        "round_to": round_to,
        "strict": strict,
        "grouped_convs": grouped_convs,
        "ignore": list(ignore),
        "input_shape": [list(x.shape) for x in analysis.inputs],
        "criterion_options": criterion_options,  # distance, k, group_reduction, seed, ...: what the scores used
    }
    result = make_plan(analysis, kept, _json_safe(record))
    if not result.groups and not _zero_budget(ratio):
        _warn_nothing_pruned(analysis)
    return result


#: plan()'s own keywords: what a misspelt criterion option most likely meant (see criteria.check_options).
_PLAN_KEYWORDS = tuple(name for name, p in inspect.signature(plan).parameters.items()
                       if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _zero_budget(ratio) -> bool:
    values = ratio.values() if isinstance(ratio, dict) else [ratio]
    return all(isinstance(r, (int, float)) and r == 0 for r in values)


def _warn_nothing_pruned(analysis: Analysis) -> None:
    """A plan that changes nothing is almost never what was asked for: say why, once, loudly."""
    frozen = [g for g in analysis.groups if g.frozen]
    if len(frozen) == len(analysis.groups):
        produced = [g for g in frozen if g.reasons and any(io == "out" for _, io in g.members)]
        example = max(produced, key=lambda g: g.n_classes) if produced else (frozen[0] if frozen else None)
        why = ""
        if example is not None:
            members = ", ".join(f"{m}.{io}" for m, io in example.members[:3])
            why = f" (e.g. {members}: {example.reasons[0]})"
        log.warning("nothing pruned: all %d channel groups are frozen%s; print(fxprune.analyze(model, "
                    "example_inputs)) lists every reason", len(analysis.groups), why)
    else:
        log.warning("nothing pruned: the budget keeps every channel of the %d prunable groups",
                    len(analysis.groups) - len(frozen))


def _network_wide(analysis, crit, ctx, ratio, flops_reduction, global_ratio, round_to) -> dict:
    """Budgets that compare groups: a global ranking, or a FLOPs target (see passes.budget)."""
    scores = {gi: np.asarray(crit.score(ctx, g), dtype=np.float64)
              for gi, g in enumerate(analysis.groups) if not g.frozen}

    def finish(kept):
        return finish_kept(analysis, kept, scores, round_to)

    if flops_reduction is not None:
        return search_flops(analysis, scores, flops_reduction, global_ratio, round_to, finish)
    if ratio is None:
        raise PlanError("global_ratio=True needs ratio= (the fraction of all prunable channels to remove)")
    return finish(global_keep(analysis, scores, check_ratio(ratio), round_to))


def _json_safe(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d, default=str))


@gc_paused()
def apply(model: nn.Module, plan: Plan, example_inputs=None, *, leaf_modules: Iterable = ()) -> torch.fx.GraphModule:
    """Rewrite ``model`` by ``plan`` into a new, smaller GraphModule (``model`` is not modified).

    ``plan``: a Plan, or its ``to_dict()`` (e.g. read back from JSON)."""
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    elif not isinstance(plan, Plan):
        raise PlanError(f"apply needs a Plan (or Plan.to_dict()), got {type(plan).__name__}")
    analysis = plan.analysis if plan.analysis is not None and _same_model(plan.analysis, model) else None
    if analysis is not None and plan.kept is not None:
        return _rewrite(analysis, plan.kept, plan)  # the plan was made from this very trace
    if analysis is None:
        if example_inputs is None and plan.options.get("input_shape"):
            example_inputs = inputs_like(None, plan.options["input_shape"])
        analysis = analyze(model, example_inputs, leaf_modules=leaf_modules,
                           strict=bool(plan.options.get("strict", False)),
                           grouped_convs=plan.options.get("grouped_convs", "whole"))  # older plans: whole groups
    kept = kept_from_plan(analysis, plan)
    fresh_plan = make_plan(analysis, kept, plan.options)
    if fresh_plan.modules != plan.modules:
        raise PlanError("the plan's per-module channels do not match this model")
    return _rewrite(analysis, kept, fresh_plan)


def _same_model(analysis: Analysis, model: nn.Module) -> bool:
    """The cached analysis belongs to ``model`` if the traced graph shares its parameters."""
    mine = [p for p in model.parameters()]
    traced = [p for p in analysis.gm.parameters()]
    return len(mine) == len(traced) and all(a is b for a, b in zip(mine, traced))


@gc_paused()
def prune(model: nn.Module, example_inputs=None, **kwargs) -> torch.fx.GraphModule:
    """Plan and apply in one call; the plan is in ``small.meta["fxprune.plan"]``."""
    p = plan(model, example_inputs, **kwargs)
    # made from this very trace, which nobody else sees: no need to check it is this model's, nor to copy its graph
    return _rewrite(p.analysis, p.kept, p, consume=True)


def verify(original: nn.Module, small: torch.fx.GraphModule, example_inputs=None, rtol: float = 1e-5) -> float:
    """Relative error of ``small`` against ``original`` with the removed channels masked out.

    Raises VerificationError naming the first diverging module when it exceeds ``rtol``. Without
    ``example_inputs``, random inputs of the plan's input shape on the model's device; a
    half-precision model is checked on float32 copies (:mod:`passes.verify`).
    """
    p = small.meta.get("fxprune.plan") if hasattr(small, "meta") else None
    if p is None:
        raise PlanError("this model has no fxprune plan (small.meta['fxprune.plan']); pass a model from fxprune.prune")
    if example_inputs is None:
        example_inputs = inputs_like(small, p.options.get("input_shape") or [[1, 3, 224, 224]])
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        return verify_against(original, small, p.modules, inputs, rtol)
    except VerificationError as e:
        mixing = [g for g in p.groups if g.get("mixing")]
        if not mixing:
            raise
        first = ", ".join(f"{m}.{io}" for m, io in mixing[0]["members"][:3])
        raise VerificationError(f"{e}. The plan prunes {len(mixing)} group(s) through channel-mixing ops (e.g. "
                                f"{first}), where the compact model only approximates the masked original; "
                                "plan with strict=True for an exact match") from e


def criteria() -> list[str]:
    """Names of the registered importance criteria."""
    return _criteria.names()


def register_criterion(name: str, fn) -> None:
    """Add a criterion: ``fn(ctx, group) -> scores`` (higher = keep), see passes.criteria.base."""
    _criteria.register(name, fn)
