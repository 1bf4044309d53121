"""Select pass: turn budgets and scores into the kept classes of each group.

Budgets: ``ratio`` (a float for every prunable group, or {module-name glob: ratio} where a key sets
the ratio of the group holding that module's output channels), or a criterion's own decision (the
graph criterion's threshold). Kept count = int(N * (1 - r)), at least 1; ``round_to=n`` rounds it up
to a multiple of n (never above N).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any

import numpy as np

from .criteria import Criterion, ScoringContext
from .dependency import Analysis
from .errors import PlanError
from .layout import concat_segments, uniform_segments, unique_ints
from .plan import kept_mask

__all__ = ["resolve_ratios", "kept_count", "round_up", "class_step", "select", "check_ratio", "top_k", "keep_every_layer_alive",
           "keep_spanning_sides_alive", "layer_classes", "round_kept", "finish_kept"]


def check_ratio(r: Any, what: str = "ratio") -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
        raise PlanError(f"{what} must be a number in [0, 1) (the fraction of channels removed), got {r!r}")
    return float(r)


def kept_count(n: int, ratio: float, round_to: int | None = None) -> int:
    return round_up(max(1, int(n * (1.0 - ratio))), n, round_to)


def round_up(k: int, n: int, step: int | None) -> int:
    """Round a kept count up to a multiple of ``step`` (never above n)."""
    if step and step > 1:
        k = min(n, int(math.ceil(k / step)) * step)
    return k


def class_step(analysis: Analysis, gi: int, round_to: int | None) -> int | None:
    """``round_to`` counts channels; a class may hold several (a whole group of a grouped conv), so a
    producer writing c channels per class needs a multiple of round_to / gcd(round_to, c) classes; the
    step is the least common multiple over the group's producers (they may write different counts)."""
    if not round_to or round_to <= 1:
        return round_to
    steps = {round_to // math.gcd(round_to, c) for c in analysis.channels_per_class().get(gi, ())}
    return math.lcm(*steps) if steps else round_to


def resolve_ratios(analysis: Analysis, ratio: float | dict[str, float]) -> dict[int, float]:
    """Ratio per prunable group; dict keys are globs over the modules whose *output* channels a group holds."""
    prunable = [i for i, g in enumerate(analysis.groups) if not g.frozen]
    if not isinstance(ratio, dict):
        r = check_ratio(ratio)
        return {i: r for i in prunable}
    chosen: dict[int, tuple[float, str]] = {}
    for key, r in ratio.items():
        r = check_ratio(r, f"ratio for {key!r}")
        matched = [name for name, role in analysis.roles.items() if fnmatch.fnmatchcase(name, key) or name == key]
        if not matched:
            raise PlanError(f"ratio key {key!r} matches no module; module names look like {next(iter(analysis.roles), '?')!r}")
        for name in matched:
            for gi in analysis.member_groups(name, "out"):
                if gi not in chosen:
                    chosen[gi] = (r, key)
                elif chosen[gi][0] != r:
                    raise PlanError(
                        f"ratio keys {chosen[gi][1]!r} ({chosen[gi][0]}) and {key!r} ({r}) conflict: both set the "
                        f"group of {name!r} (channels shared with {', '.join(m for m, _ in analysis.groups[gi].members[:4])})"
                    )
    return {gi: r for gi, (r, _) in chosen.items() if not analysis.groups[gi].frozen}


def select(analysis: Analysis, criterion: Criterion, ctx: ScoringContext, ratios: dict[int, float] | None,
           round_to: int | None = None) -> dict[int, np.ndarray]:
    """Kept class indices per pruned group. ``ratios=None`` lets the criterion decide (threshold)."""
    kept: dict[int, np.ndarray] = {}
    if ratios is None:
        for gi, g in enumerate(analysis.groups):
            if g.frozen:
                continue
            k = criterion.decide(ctx, g)
            if k is None:
                raise PlanError(f"criterion {criterion.name!r} needs a ratio budget (ratio=...)")
            kept[gi] = np.asarray(sorted(k), dtype=np.int64) if len(k) else np.array([0])
        return finish_kept(analysis, kept, _rounding_scores(analysis, criterion, ctx, kept, round_to), round_to)
    scores: dict[int, np.ndarray] = {}
    for gi, r in ratios.items():
        g = analysis.groups[gi]
        k = kept_count(g.n_classes, r, class_step(analysis, gi, round_to))
        if k >= g.n_classes:
            continue
        scores[gi] = np.asarray(criterion.score(ctx, g), dtype=np.float64)
        kept[gi] = top_k(scores[gi], k)
    return finish_kept(analysis, kept, scores, round_to)


def finish_kept(analysis: Analysis, kept: dict[int, np.ndarray], scores: dict[int, np.ndarray],
                round_to: int | None = None) -> dict[int, np.ndarray]:
    """The last steps of every budget: no layer side, channel range or split piece is left without
    channels (:func:`keep_every_layer_alive`, :func:`keep_spanning_sides_alive`), then ``round_to``
    (:func:`round_kept`). A budget measured on the kept sets (a FLOPs target) measures them after this.
    Dead sides are rare: one numpy pass looks for any before the per-group passes run."""
    kept = {gi: unique_ints(np.asarray(k, dtype=np.int64)) for gi, k in kept.items()}
    sides = _checked_sides(analysis)
    if kept and sides and _dead_sides(kept_mask(analysis, kept), sides):
        layers = layer_classes(analysis)
        kept = {gi: keep_every_layer_alive(k, scores.get(gi), layers.get(gi, [])) for gi, k in kept.items()}
        kept = keep_spanning_sides_alive(analysis, kept, scores)
    return round_kept(analysis, kept, scores, round_to)


def round_kept(analysis: Analysis, kept: dict[int, np.ndarray], scores: dict[int, np.ndarray],
               round_to: int | None) -> dict[int, np.ndarray]:
    """Each group's kept count up to a multiple of ``round_to`` channels again, with its best unkept classes.

    The keep-alive passes give a class back to a group now and then, and a criterion deciding by
    threshold counts what it counts; adding classes never empties a layer, so this comes last."""
    if not round_to or round_to <= 1:
        return kept
    out = dict(kept)
    for gi, k in kept.items():
        n = analysis.groups[gi].n_classes
        extra = round_up(len(k), n, class_step(analysis, gi, round_to)) - len(k)
        if extra > 0:
            free = np.setdiff1d(np.arange(n), k)
            if gi in scores:
                free = free[np.argsort(-scores[gi][free], kind="stable")]
            out[gi] = np.sort(np.concatenate([k, free[:extra]]))
    return out


def _rounding_scores(analysis, criterion, ctx, kept, round_to) -> dict[int, np.ndarray]:
    """Scores to pick the classes that round a threshold decision up: the criterion's own where it scores."""
    if not round_to or round_to <= 1:
        return {}
    try:
        return {gi: np.asarray(criterion.score(ctx, analysis.groups[gi]), dtype=np.float64) for gi in kept}
    except TypeError:  # a criterion that only decides: the lowest indices
        return {}


def layer_sides(analysis: Analysis) -> list[np.ndarray]:
    """The elements of every non-empty module side (outputs, then inputs, module by module)."""
    return [e for role in analysis.roles.values() for e in (role.out_elems, role.in_elems) if e is not None and len(e)]


def layer_classes(analysis: Analysis) -> dict[int, list[np.ndarray]]:
    """Per group, the classes each layer side (inputs or outputs) lying wholly in that group touches.

    One numpy pass over all sides at once (a loop per side costs more than the work on larger models)."""
    gpos, cpos = analysis.class_positions()
    sides = layer_sides(analysis)
    if not sides:
        return {}
    elems, starts, sizes = concat_segments(sides)
    roots = analysis.roots(elems)
    groups, classes = gpos[roots], cpos[roots]
    whole = uniform_segments(groups, starts)
    side = np.repeat(np.arange(len(sides)), sizes)
    # the distinct (side, class) pairs as one key each; the sides come in order already
    span = int(classes.max()) + 2
    key = unique_ints(side * span + classes + 1, nearly_sorted=True)
    side, classes = key // span, key % span - 1
    bounds = np.searchsorted(side, np.arange(len(sides) + 1)).tolist()
    out: dict[int, list[np.ndarray]] = {}
    for i, g in zip(np.flatnonzero(whole).tolist(), groups[starts[whole]].tolist()):
        out.setdefault(g, []).append(classes[bounds[i]:bounds[i + 1]])
    return out


def keep_every_layer_alive(kept: np.ndarray, scores: np.ndarray | None, layers: list[np.ndarray]) -> np.ndarray:
    """A layer whose channels in this group would all go keeps its best one (else it would vanish).

    Happens when a group spans layers of different widths, e.g. a grouped conv reading a concatenation.
    ``layers`` is this group's entry of :func:`layer_classes`; they are checked in order.
    """
    kept = unique_ints(np.asarray(kept, dtype=np.int64))
    if not layers:
        return kept
    every = np.concatenate(layers)
    flags = np.zeros(max(int(every.max()), int(kept.max(initial=-1))) + 1, dtype=bool)
    flags[kept] = True
    starts = np.cumsum([0] + [len(m) for m in layers[:-1]])
    dead = np.flatnonzero(~np.logical_or.reduceat(flags[every], starts)).tolist()
    for i in dead:  # rare; one layer's rescue may rescue a later one too
        mine = layers[i]
        if not flags[mine].any():
            flags[mine[np.argmax(scores[mine])] if scores is not None else mine[0]] = True
    return np.flatnonzero(flags) if dead else kept


def keep_spanning_sides_alive(analysis: Analysis, kept: dict[int, np.ndarray],
                              scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """A layer side whose channels come from several groups (a conv reading a concatenation of two groups'
    channels) vanishes if every group drops its part, which :func:`keep_every_layer_alive` cannot see (it
    checks one group at a time); so does a channel range or split piece (``x[:, 1:3]``) whose channels
    all go, leaving the ops that read it a tensor of no channels. Each gets back its best class (by the
    score relative to its group's best, else the first). One numpy pass finds them; they are rare."""
    sides = _checked_sides(analysis)
    if not kept or not sides:
        return kept
    keep = kept_mask(analysis, kept)
    dead = _dead_sides(keep, sides)
    if not dead:
        return kept
    kept = dict(kept)
    gpos, cpos = analysis.class_positions()
    for i in dead:
        roots = unique_ints(analysis.roots(sides[i]))
        if keep[np.isin(analysis.root_of, roots)].any():
            continue  # an earlier rescue revived it
        rel = [scores[g][c] / (np.abs(scores[g]).max() or 1.0) if g in scores else 0.0
               for g, c in zip(gpos[roots].tolist(), cpos[roots].tolist())]
        best = roots[int(np.argmax(rel))]
        g, c = int(gpos[best]), int(cpos[best])
        kept[g] = unique_ints(np.append(kept[g], c))
        keep |= analysis.root_of == best
    return kept


def _checked_sides(analysis: Analysis) -> list[np.ndarray]:
    """Every element set that must keep a channel: the layer sides, then the channel ranges and split pieces."""
    return layer_sides(analysis) + [e for e in analysis.subsets if len(e)]


def _dead_sides(keep: np.ndarray, sides: list[np.ndarray]) -> list[int]:
    """Indices of the ``sides`` none of whose elements ``keep`` keeps (one pass over all of them)."""
    elems, starts, _ = concat_segments(sides)
    return np.flatnonzero(~np.logical_or.reduceat(keep[elems], starts)).tolist()


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, ascending; ties go to the lower index (stable)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])
