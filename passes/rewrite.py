"""Rewrite pass: emit a new, physically smaller GraphModule from an analysis and kept classes.

The user's model is never touched: the traced graph is deep-copied, then every planned module is
replaced by a smaller module of the same type holding exactly the original's sliced parameters and
buffers, under the same qualified name. Shape constants that carry channel counts (literal
view/reshape/expand sizes, pad amounts, split sizes) are rewritten; sizes read at run time
(``x.size(1)``) need nothing. The graph is linted and recompiled.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx
from torch import nn

from .dependency import Analysis
from .errors import PlanError
from .layout import Layout
from .plan import Plan, kept_mask, positions_kept

__all__ = ["rewrite"]


def rewrite(analysis: Analysis, kept: dict[int, np.ndarray], plan: Plan) -> torch.fx.GraphModule:
    """Return the compact GraphModule; ``small.meta["fxprune.plan"]`` holds ``plan``."""
    keep = kept_mask(analysis, kept)
    gm = _copy_without_planned_tensors(analysis, plan)
    for name, io in plan.modules.items():
        if name in analysis.roles:
            _shrink_module(gm, name, io)
    for target, (dim, _) in analysis.attr_slices.items():
        io = plan.modules.get(target)
        if io is not None:
            _slice_attr(gm, target, dim, io["out"])
    _rewrite_constants(gm, analysis, keep)
    gm.graph.lint()
    gm.recompile()
    gm.meta["fxprune.plan"] = plan
    return gm


def _copy_without_planned_tensors(analysis: Analysis, plan: Plan) -> torch.fx.GraphModule:
    """Deep-copy the graph module but not the tensors about to be sliced (they are replaced anyway)."""
    memo: dict[int, object] = {}
    for name in plan.modules:
        if name in analysis.roles:
            for t in list(analysis.gm.get_submodule(name).parameters(recurse=False)) + list(
                analysis.gm.get_submodule(name).buffers(recurse=False)
            ):
                memo[id(t)] = t
    return copy.deepcopy(analysis.gm, memo)


# ---- modules ----------------------------------------------------------------------------------
def _shrink_module(gm: torch.fx.GraphModule, name: str, io: dict) -> None:
    mod = gm.get_submodule(name)
    keep_in, keep_out = io.get("in"), io.get("out")
    if isinstance(mod, nn.modules.conv._ConvNd):
        _shrink_conv(name, mod, keep_in, keep_out)
    elif isinstance(mod, nn.Linear):
        _shrink_linear(mod, keep_in, keep_out)
    elif isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        _shrink_norm(mod, keep_out)
    else:
        raise PlanError(f"cannot shrink module '{name}' of type {type(mod).__name__}")


def _take(t: torch.Tensor | None, dim: int, idx: list[int] | None) -> torch.Tensor | None:
    if t is None or idx is None:
        return t
    return t.detach().index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device))


def _set_param(mod: nn.Module, attr: str, value: torch.Tensor | None) -> None:
    """Install a new tensor; one that was not sliced is cloned so nothing is shared with the original."""
    old = getattr(mod, attr)
    if old is None or value is None:
        return
    value = value.detach()
    if value.data_ptr() == old.data_ptr():
        value = value.clone()
    if isinstance(old, nn.Parameter):
        setattr(mod, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(mod, attr, value)


def _shrink_conv(name: str, conv: nn.Module, keep_in, keep_out) -> None:
    if keep_out is not None and not keep_out or keep_in is not None and not keep_in:
        raise PlanError(f"the plan removes every channel of conv '{name}'; keep at least one")
    w = conv.weight
    if conv.groups == 1:
        w = _take(_take(w, 0, keep_out), 1, keep_in)
        new_groups = 1
    else:
        new_groups = _kept_groups(name, conv, keep_in, keep_out)
        w = _take(w, 0, keep_out)
    _set_param(conv, "weight", w)
    _set_param(conv, "bias", _take(conv.bias, 0, keep_out))
    conv.in_channels = len(keep_in) if keep_in is not None else conv.in_channels
    conv.out_channels = len(keep_out) if keep_out is not None else conv.out_channels
    conv.groups = new_groups


def _kept_groups(name: str, conv, keep_in, keep_out) -> int:
    """Whole groups are pruned: check that, and return how many groups remain."""
    g = conv.groups
    cin, cout = conv.in_channels // g, conv.out_channels // g
    ins = set(range(conv.in_channels) if keep_in is None else keep_in)
    outs = set(range(conv.out_channels) if keep_out is None else keep_out)
    kept = []
    for i in range(g):
        gin = {c for c in range(i * cin, (i + 1) * cin) if c in ins}
        gout = {c for c in range(i * cout, (i + 1) * cout) if c in outs}
        whole = len(gin) == cin and len(gout) == cout
        if not whole and (gin or gout):
            raise PlanError(f"grouped conv '{name}': group {i} would be pruned partially")
        if whole:
            kept.append(i)
    return len(kept)


def _shrink_linear(lin: nn.Linear, keep_in, keep_out) -> None:
    _set_param(lin, "weight", _take(_take(lin.weight, 0, keep_out), 1, keep_in))
    _set_param(lin, "bias", _take(lin.bias, 0, keep_out))
    lin.in_features = len(keep_in) if keep_in is not None else lin.in_features
    lin.out_features = len(keep_out) if keep_out is not None else lin.out_features


def _shrink_norm(mod: nn.Module, keep) -> None:
    if keep is None:
        return
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(mod, attr, None) is not None:
            _set_param(mod, attr, _take(getattr(mod, attr), 0 if not isinstance(mod, nn.LayerNorm) else -1, keep))
    if isinstance(mod, nn.LayerNorm):
        mod.normalized_shape = (len(keep),)
    elif isinstance(mod, nn.GroupNorm):
        mod.num_channels = len(keep)
        mod.num_groups = len(keep)
    else:
        mod.num_features = len(keep)


def _slice_attr(gm: torch.fx.GraphModule, target: str, dim: int, keep) -> None:
    if keep is None:
        return
    *path, attr = target.split(".")
    owner = gm.get_submodule(".".join(path)) if path else gm
    _set_param(owner, attr, _take(getattr(owner, attr), dim, keep))


# ---- graph constants --------------------------------------------------------------------------
def _rewrite_constants(gm: torch.fx.GraphModule, analysis: Analysis, keep: np.ndarray) -> None:
    nodes = {n.name: n for n in gm.graph.nodes}
    for name, (before, after) in analysis.pads.items():
        _rewrite_pad(nodes[name], analysis, keep, before, after)
    for name, kind in analysis.shape_edits.items():
        node = nodes[name]
        if kind == "sizes":
            _rewrite_sizes(node, analysis, keep)
        elif kind == "split_sections":
            _rewrite_split(node, analysis, keep, sections=True)
        elif kind == "split_size":
            _rewrite_split(node, analysis, keep, sections=False)


def _count_kept(analysis: Analysis, keep: np.ndarray, elems: np.ndarray) -> int:
    return int(keep[np.asarray(elems, dtype=np.int64)].sum())


def _rewrite_pad(node, analysis, keep, before, after) -> None:
    pad = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
    lay: Layout = analysis.node_layouts[node.name]
    d = lay.varying_dims()[0]
    p = lay.ndim - 1 - d
    pad[2 * p] = _count_kept(analysis, keep, before)
    pad[2 * p + 1] = _count_kept(analysis, keep, after)
    if len(node.args) > 1:
        node.args = (node.args[0], tuple(pad)) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "pad": tuple(pad)}


def _new_shape(node, analysis: Analysis, keep: np.ndarray) -> list[int]:
    """The node's output shape after pruning: each channel axis shrinks to its kept positions."""
    shape = list(node.meta["fxprune.shape"])
    lay: Layout = analysis.node_layouts[node.name]
    flags = keep[lay.index]
    for d in lay.varying_dims():
        other = tuple(i for i in range(lay.ndim) if i != d)
        shape[d] = int(np.any(flags, axis=other).sum()) if other else int(flags.sum())
    return shape


def _rewrite_sizes(node, analysis, keep) -> None:
    """Replace literal sizes in view/reshape/expand that no longer match the pruned tensor."""
    old = list(node.meta["fxprune.shape"])
    new = _new_shape(node, analysis, keep)
    if old == new:
        return
    args = list(node.args)
    packed = len(args) == 2 and isinstance(args[1], (tuple, list))
    sizes = list(args[1]) if packed else args[1:]
    if len(sizes) != len(old):
        raise PlanError(f"cannot rewrite the sizes of {node.format_node()}")
    for d, (s, o, n) in enumerate(zip(sizes, old, new)):
        if isinstance(s, int) and s == o and o != n:
            sizes[d] = n
    node.args = (args[0], tuple(sizes)) if packed else (args[0], *sizes)


def _rewrite_split(node, analysis, keep, sections: bool) -> None:
    parts = analysis.node_layouts[node.name]
    counts = []
    for lay in parts:
        d = lay.varying_dims()[0] if lay.varying_dims() else 0
        counts.append(_count_kept(analysis, keep, lay.index.reshape(-1)) if lay.varying_dims() else 1)
    value = counts if sections else counts[0]
    args = list(node.args)
    if len(args) > 1:
        args[1] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, "split_size_or_sections": value}
