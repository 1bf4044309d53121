"""Budgets beyond a fixed ratio: global ranking across groups, and a FLOPs-reduction target.

* ``global_ratio``: scores are normalized per group (divided by the group's largest score, so every
  group's best channel scores 1 and scales of different layers compare), then the lowest
  ``ratio`` fraction of all prunable channels is removed network-wide; every group keeps at least one.
* ``flops_reduction=f``: bisects the ratio (uniform per group, or global with ``global_ratio``)
  until the conv+linear multiply-accumulates fall by ``f``; the result lands within ±2% when the
  channel granularity allows it, else the error names the reductions reachable on either side (or
  the most pruning can remove).

MACs are counted from the analysis alone (no forward pass): a conv costs kept outputs × kept inputs
per group × kernel taps × output positions, a linear kept outputs × kept inputs × leading positions, a
recurrent layer each gate weight matrix (the first layer's with its kept inputs) × steps, and
``nn.MultiheadAttention`` its q, k, v projections and attention products, as fxprune.report counts them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .dependency import PRODUCER_KINDS, Analysis
from .errors import PlanError
from .plan import kept_mask
from .select import class_step, kept_count, round_up, top_k

__all__ = ["conv_linear_macs", "global_keep", "uniform_keep", "search_flops"]

TOLERANCE = 0.02


def conv_linear_macs(analysis: Analysis, kept: dict[int, np.ndarray]) -> int:
    """Multiply-accumulates of every conv (transposed too), linear, recurrent and attention layer after keeping
    ``kept`` (per sample)."""
    keep = kept_mask(analysis, kept)
    nodes = {n.name: n for n in analysis.gm.graph.nodes}
    shapes = {name: n.meta.get("fxprune.shape") for name, n in nodes.items()}
    total = 0
    for role in analysis.roles.values():
        if role.kind in ("recurrent", "attention"):
            total += _sequence_layer_macs(analysis.gm.get_submodule(role.name), role.kind, nodes[role.node],
                                          int(keep[role.in_elems].sum()))
            continue
        if role.kind not in PRODUCER_KINDS:
            continue
        mod = analysis.gm.get_submodule(role.name)
        out_shape = _first(shapes[role.node])
        n_out = int(keep[role.out_elems].sum())
        n_in = int(keep[role.in_elems].sum()) if role.in_elems is not None else _in_width(mod)
        if role.kind == "conv":
            per_group_in = _kept_inputs_per_group(mod, role, keep, n_in)
            positions = int(np.prod(out_shape[2:]))
            total += n_out * per_group_in * int(np.prod(mod.kernel_size)) * positions
        elif role.kind == "transposed":  # every input position meets every kernel tap
            positions = int(np.prod(nodes[role.node].args[0].meta["fxprune.shape"][2:]))
            total += n_out * n_in * int(np.prod(mod.kernel_size)) * positions
        else:
            positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
            total += n_out * n_in * positions
    return total


def _first(shape):
    """A node's (first) output shape: a layer with several outputs (attention, a recurrent layer) records
    a tuple of shapes."""
    return shape if isinstance(shape, torch.Size) else shape[0]


def _sequence_layer_macs(layer, kind: str, node, n_in: int) -> int:
    """A recurrent layer: every weight matrix once per time step, the first layer's input weights reading
    ``n_in`` kept features. nn.MultiheadAttention's self-attention: per token, the q, k, v projections of
    ``n_in`` kept features to its inner width (never pruned), and q·kᵀ and weights·v over all tokens
    (its out_proj is a linear role of its own). fxprune.report counts the same products."""
    query = node.args[0] if node.args else next(iter(node.kwargs.values()))
    shape = _first(query.meta["fxprune.shape"])
    steps = shape[1] if getattr(layer, "batch_first", False) and len(shape) == 3 else shape[0]
    if kind == "attention":
        return steps * (3 * layer.embed_dim * n_in + steps * 2 * layer.embed_dim)
    first = {"weight_ih_l0", "weight_ih_l0_reverse"}
    return steps * sum(w.shape[0] * (n_in if name in first else w.shape[1])
                       for name, w in layer.named_parameters(recurse=False) if w.dim() == 2)


def _kept_inputs_per_group(conv, role, keep: np.ndarray, n_in: int) -> int:
    """The inputs each output channel of a conv reads after pruning: whole groups go, or every group
    keeps as many as the others. Without followed inputs (a functional grouped conv), a group's width."""
    if conv.groups == 1:
        return n_in
    if role.in_elems is None:
        return conv.in_channels // conv.groups
    kept_groups = int(keep[role.out_elems].reshape(conv.groups, -1).any(axis=1).sum())
    return n_in // max(kept_groups, 1)


def _in_width(mod) -> int:
    return mod.in_features if hasattr(mod, "in_features") else mod.in_channels


def uniform_keep(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float, round_to=None) -> dict[int, np.ndarray]:
    kept = {}
    for gi, s in scores.items():
        k = kept_count(len(s), ratio, class_step(analysis, gi, round_to))
        if k < len(s):
            kept[gi] = top_k(s, k)
    return kept


def global_keep(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float, round_to=None) -> dict[int, np.ndarray]:
    """Remove the lowest ``ratio`` of all channels after per-group max-normalization."""
    if not scores:
        return {}
    norm = {gi: s / (np.abs(s).max() or 1.0) for gi, s in scores.items()}
    pooled = np.concatenate([v for v in norm.values()])
    n_drop = int(len(pooled) * ratio)
    if n_drop == 0:
        return {}
    cut = np.sort(pooled)[n_drop - 1]
    kept = {}
    for gi, s in norm.items():
        k = round_up(max(1, int((s > cut).sum())), len(s), class_step(analysis, gi, round_to))
        if k < len(s):
            kept[gi] = top_k(s, k)
    return kept


def search_flops(analysis: Analysis, scores: dict[int, np.ndarray], target: float, use_global: bool,
                 round_to=None, finish: Callable[[dict], dict] | None = None) -> dict[int, np.ndarray]:
    """Bisect the ratio until conv+linear MACs fall by ``target`` (a fraction in (0, 1)).

    ``finish`` maps each candidate's kept sets to the final ones (channels the keep-alive passes give
    back, round_to), so the MACs measured are those of the plan returned."""
    if not 0.0 < target < 1.0:
        raise PlanError(f"flops_reduction must be a fraction in (0, 1), got {target!r}")

    def keep_at(ratio: float) -> dict[int, np.ndarray]:
        kept = (global_keep if use_global else uniform_keep)(analysis, scores, ratio, round_to)
        return finish(kept) if finish is not None else kept

    base = conv_linear_macs(analysis, {})
    lo, hi = 0.0, 0.999
    tried: list[tuple[float, dict[int, np.ndarray]]] = []
    for _ in range(30):
        mid = (lo + hi) / 2
        kept = keep_at(mid)
        reduction = 1.0 - conv_linear_macs(analysis, kept) / base
        tried.append((reduction, kept))
        if abs(reduction - target) <= TOLERANCE / 4:
            break
        lo, hi = (mid, hi) if reduction < target else (lo, mid)
    final, best = min(tried, key=lambda t: abs(t[0] - target))
    if abs(final - target) > TOLERANCE:
        most = 1.0 - conv_linear_macs(analysis, keep_at(0.999)) / base
        raise PlanError(_unreachable(target, [r for r, _ in tried], most))
    return best


def _unreachable(target: float, reached: list[float], most: float) -> str:
    """Why no ratio lands within the tolerance: the target is above what pruning can remove, or the
    channel counts step over it (small layers: one channel more or less moves the MACs by several %)."""
    below = max((r for r in reached if r < target), default=0.0)
    above = min((r for r in reached if r > target), default=None)
    if above is None and most < target:
        return (f"cannot reach a {target:.0%} FLOPs reduction: pruning every prunable group to one channel removes "
                f"{most:.1%}; unfreeze groups (see fxprune.analyze) or ask for less")
    return (f"cannot land within {TOLERANCE:.0%} of a {target:.0%} FLOPs reduction: the channel counts step from "
            f"{below:.1%} to {(above if above is not None else most):.1%}; ask for one of those, or give ratio= instead")
