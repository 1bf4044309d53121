"""Dependency pass: find the groups of channels that must be pruned together.

Walks the traced graph once, in order, asking :mod:`passes.op_rules` how every node maps channel
elements from its inputs to its output (see :mod:`passes.layout`). Rules unite coupled elements
(a residual add unites its operands' channels; a grouped conv unites each group's inputs and
outputs). An op without a rule *freezes* every element it touches and records why: nothing is ever
assumed element-wise. Channels that reach a graph output or come from a graph input are frozen too.

*Mixing* ops (a LayerNorm over the channels, a contraction over channels such as attention's q·k)
may be pruned, but the pruned model then only approximates the masked original: their groups are
marked ``mixing`` (with the reasons), so callers know :func:`fxprune.verify` is not expected to hold
there. With ``strict=True`` such channels are frozen instead, and verify holds exactly.

Result: an :class:`Analysis` with the channel groups (connected sets of channel spaces), their
classes (the units a plan keeps or drops), how every parameterized module reads and writes them,
and the graph edits (shape constants, pads, split sizes, sliced attributes) a rewrite must make.

    conv_a ──┐
             add ── conv_c         groups: {conv_a.out, conv_b.out, conv_c.in}  (one residual stream)
    conv_b ──┘
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
from torch import nn

from .errors import PlanError
from .graph_module import modules_of
from .hooks import derived_from, masked_names, opaque_hook
from .layout import Layout, UnionFind, concat_segments, uniform_segments, unique_ints
from .shapes import SHAPE, VALUE

__all__ = ["analyze", "Analysis", "ChannelGroup", "ModuleRole", "FrozenReason", "Analyzer"]


@dataclass(frozen=True)
class FrozenReason:
    """Why some channels cannot be pruned: the node, its op, and the reason."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}"


@dataclass
class ModuleRole:
    """How one parameterized module reads and writes channel elements.

    kind: "conv" | "transposed" (a transposed conv) | "linear" | "norm" (per-channel parameters) |
    "channelwise" (per-channel, not a norm: PReLU's slopes) | "recurrent" (input features only).
    ``in_elems`` index the module's input channels (a Linear's input features), ``out_elems`` its output
    channels; None when it has none.
    ``order`` is the module's first node position, ``input_order`` that of the node feeding it.
    """

    name: str
    kind: str
    in_elems: np.ndarray | None
    out_elems: np.ndarray | None
    order: int
    input_order: int
    node: str


@dataclass
class ChannelGroup:
    """Channels that must be pruned together, as ``n_classes`` keep-or-drop units.

    ``mixing_reasons`` lists the channel-mixing ops (LayerNorm over the channels, q·k contractions)
    these channels pass through: pruning such a group is allowed (``mixing`` is True) but the
    pruned model is then not equal to the masked original, so verify is not expected to hold.
    """

    id: int
    roots: np.ndarray
    members: list[tuple[str, str]]
    frozen: bool
    reasons: list[FrozenReason] = field(default_factory=list)
    mixing_reasons: list[FrozenReason] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.roots)

    @property
    def mixing(self) -> bool:
        """Pruning these channels changes what the kept ones compute (verify is approximate)."""
        return bool(self.mixing_reasons)

    def __str__(self) -> str:
        state = "FROZEN" if self.frozen else ("prunable, mixing" if self.mixing else "prunable")
        mem = ", ".join(f"{m}.{io}" for m, io in self.members[:6]) + (" ..." if len(self.members) > 6 else "")
        why = "".join(f"\n      because {r}" for r in self.reasons[:3])
        if not self.frozen:
            why += "".join(f"\n      mixing: {r}" for r in self.mixing_reasons[:2])
        return f"group {self.id}: {self.n_classes} channels, {state}: {mem}{why}"


@dataclass
class Analysis:
    """Everything the later passes need to know about a traced model's channels."""

    gm: torch.fx.GraphModule
    inputs: tuple
    root_of: np.ndarray
    group_of: np.ndarray
    groups: list[ChannelGroup]
    roles: dict[str, ModuleRole]
    attr_slices: dict[str, tuple[int, np.ndarray]]
    node_layouts: dict[str, Any]
    shape_edits: dict[str, str]
    pads: dict[str, tuple[np.ndarray, np.ndarray]]
    frozen_reasons: list[FrozenReason]
    edits: dict[str, list[Callable]] = field(default_factory=dict)
    #: the (module, attribute) holders of each tied tensor: the rewrite ties their slices again
    shared: list[list[tuple[str, str]]] = field(default_factory=list)
    subsets: list[np.ndarray] = field(default_factory=list)
    #: per grouped conv, how it is pruned: "whole" groups or "within" them (see op_rules.grouped_conv_mode)
    grouped_modes: dict[str, str] = field(default_factory=dict)
    _class_positions: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    _per_class: dict[int, frozenset[int]] | None = field(default=None, repr=False, compare=False)

    def roots(self, elems: np.ndarray) -> np.ndarray:
        return self.root_of[np.asarray(elems, dtype=np.int64)]

    def class_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(group position, class position) of every class root, -1 for non-roots (computed once: read-only)."""
        if self._class_positions is None:
            gpos = np.full(len(self.root_of), -1, dtype=np.int64)
            cpos = np.full(len(self.root_of), -1, dtype=np.int64)
            for gi, g in enumerate(self.groups):
                gpos[g.roots] = gi
                cpos[g.roots] = np.arange(g.n_classes)
            gpos.flags.writeable = cpos.flags.writeable = False
            self._class_positions = gpos, cpos
        return self._class_positions

    def channels_per_class(self) -> dict[int, frozenset[int]]:
        """Per group, how many channels of one class each producing layer writes (a grouped conv's class
        is a whole group of its channels), for the producers writing as many for every class; computed once."""
        if self._per_class is None:
            gpos, _ = self.class_positions()
            found: dict[int, set[int]] = {}
            for role in self.roles.values():
                if role.kind in PRODUCER_KINDS and role.out_elems is not None and len(role.out_elems):
                    roots = self.roots(role.out_elems)
                    groups = gpos[roots]
                    for gi in np.unique(groups).tolist():
                        counts = np.unique(roots[groups == gi], return_counts=True)[1]
                        if (counts == counts[0]).all():
                            found.setdefault(gi, set()).add(int(counts[0]))
            self._per_class = {gi: frozenset(s) for gi, s in found.items()}
        return self._per_class

    def mixing_groups(self) -> list[int]:
        """Prunable groups whose pruning only approximates the masked original (see ChannelGroup)."""
        return [i for i, g in enumerate(self.groups) if g.mixing and not g.frozen]

    def producing_layers(self, group: ChannelGroup) -> list[str]:
        """The conv/linear layers whose output channels lie in ``group``: the keys ``prune(ratio={name: r})``
        sets it by."""
        return [name for name, io in group.members
                if io == "out" and name in self.roles and self.roles[name].kind in PRODUCER_KINDS]

    def member_groups(self, name: str, io: str) -> list[int]:
        return [i for i, g in enumerate(self.groups) if (name, io) in g.members]

    def __str__(self) -> str:
        prunable = [g for g in self.groups if not g.frozen]
        frozen = [g for g in self.groups if g.frozen]
        mixing = sum(g.mixing for g in prunable)
        lines = [f"{len(self.groups)} channel groups: {len(prunable)} prunable"
                 + (f" ({mixing} mixing: pruned, verify approximate)" if mixing else "") + f", {len(frozen)} frozen"]
        if self.grouped_modes:
            within = sum(m == "within" for m in self.grouped_modes.values())
            lines.append(f"grouped convs: {len(self.grouped_modes) - within} lose whole groups, {within} the same "
                         "positions in every group (grouped_convs=)")
        lines += ["  " + str(g) for g in self.groups]
        return "\n".join(lines)


Rule = Callable[["Analyzer", torch.fx.Node], Any]

#: Module roles whose output channels are new channels (a group needs one to be prunable).
PRODUCER_KINDS = ("conv", "transposed", "linear")
#: Producers whose outputs are feature maps (N, C, spatial...), which data-driven criteria read.
MAP_KINDS = ("conv", "transposed")
#: The tensors the rewrite slices along a layer's input channels, by role kind (all others: along its outputs).
INPUT_SLICED = {"conv": ("weight",), "linear": ("weight",), "transposed": ("weight",),
                "recurrent": ("weight_ih_l0", "weight_ih_l0_reverse")}


class Analyzer:
    """The walk over the graph; rules call its helpers to read layouts and record facts."""

    def __init__(self, gm: torch.fx.GraphModule, rules, strict: bool = False, grouped_convs: str = "whole"):
        self.gm = gm
        self.rules = rules
        self.strict = strict
        self.grouped_convs = grouped_convs  # a mode, or {conv name: mode} (see op_rules.grouped_conv_mode)
        self.grouped_modes: dict[str, str] = {}  # per grouped conv, the mode it was pruned in
        self.uf = UnionFind()
        self.layouts: dict[torch.fx.Node, Any] = {}
        self.roles: dict[str, ModuleRole] = {}
        self.attr_slices: dict[str, tuple[int, np.ndarray]] = {}
        self.shape_edits: dict[str, str] = {}
        self.pads: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.subsets: list[np.ndarray] = []  # channel ranges and split pieces: each keeps a channel
        self.frozen: list[tuple[np.ndarray, FrozenReason]] = []
        self.mixing: list[tuple[np.ndarray, FrozenReason]] = []
        self.edits: dict[str, list[Callable]] = {}
        self.free_reshapes: set[str] = set()  # reshapes of a channel permutation: no grid ties (passes.permutation)
        self.position = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.modules = modules_of(gm)

    # ---- reading the graph -------------------------------------------------------------------
    def layout(self, arg: Any) -> Any:
        return self.layouts.get(arg) if isinstance(arg, torch.fx.Node) else None

    @staticmethod
    def shape(node: torch.fx.Node) -> torch.Size | None:
        s = node.meta.get(SHAPE)
        return s if isinstance(s, torch.Size) else None

    @staticmethod
    def value(arg: Any) -> Any:
        """The concrete value of an argument: literals as they are, non-tensor nodes from propagation."""
        if isinstance(arg, torch.fx.Node):
            return arg.meta.get(VALUE)
        if isinstance(arg, (list, tuple)):
            return type(arg)(Analyzer.value(a) for a in arg)
        return arg

    def module(self, node: torch.fx.Node) -> nn.Module:
        return self.modules[node.target]

    def tensor_inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return [a for a in node.all_input_nodes if a.meta.get(SHAPE) is not None]

    # ---- recording facts ---------------------------------------------------------------------
    def fresh(self, n: int, dim: int, ndim: int) -> Layout:
        return Layout.along(self.uf.new_space(n), dim, ndim)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        self.uf.union_arrays(np.asarray(a), np.asarray(b))

    def freeze(self, elems: Any, node: torch.fx.Node, reason: str) -> None:
        arr = _collect_elems(elems)
        if arr.size:
            self.frozen.append((arr, FrozenReason(node.name, describe(node), reason)))

    def mix(self, elems: Any, node: torch.fx.Node, reason: str) -> None:
        """``node`` mixes these channels: prunable but approximate (frozen when ``strict``)."""
        if self.strict:
            self.freeze(elems, node, f"{reason} (strict=True)")
            return
        arr = _collect_elems(elems)
        if arr.size:
            self.mixing.append((arr, FrozenReason(node.name, describe(node), reason)))

    def opaque(self, node: torch.fx.Node, reason: str) -> Any:
        """No rule can follow channels through ``node``: freeze its inputs, give it frozen outputs."""
        axis = None
        for a in node.all_input_nodes:
            lay = self.layouts.get(a)
            self.freeze(lay, node, reason)
            if axis is None and isinstance(lay, Layout) and len(lay.varying_dims()) == 1:
                axis = (lay.varying_dims()[0], lay.ndim)
        out = self.fresh_like(node.meta.get(SHAPE), axis)
        self.freeze(out, node, reason)
        return out

    def fresh_like(self, shape: Any, axis: tuple[int, int | None] | None = None) -> Any:
        """Fresh elements for a tensor of ``shape``: along dim 1, or along ``axis[0]`` when the
        tensor has the ``axis[1]`` dims of the input it comes from (a channels-last tensor), or any
        number of dims when ``axis[1]`` is None (``(-1, None)``: features last, in every tensor)."""
        if isinstance(shape, torch.Size):
            dim = 1 if len(shape) >= 2 else 0
            if axis is not None and axis[1] in (None, len(shape)) and -len(shape) <= axis[0] < len(shape):
                dim = axis[0] % len(shape)
            return self.fresh(shape[dim] if len(shape) else 1, dim, max(len(shape), 1))
        if isinstance(shape, (tuple, list)):
            return tuple(self.fresh_like(s, axis) for s in shape)
        return None

    def record_module(self, node: torch.fx.Node, kind: str, in_elems, out_elems, name: str | None = None) -> None:
        """Remember how a module touches channels; a module called twice must agree with itself.

        ``name`` names the module when ``node`` does not call it (a functional op reading the
        module's weight through ``get_attr``, or a submodule of a leaf module).
        """
        name = node.target if name is None else name
        known = self.roles.get(name)
        if known is not None:
            for old, new in ((known.in_elems, in_elems), (known.out_elems, out_elems)):
                if old is not None and new is not None:
                    self.unify(old, new)
            return
        src = node.all_input_nodes[0] if node.all_input_nodes else node
        self.roles[name] = ModuleRole(
            name, kind, in_elems, out_elems, self.position[node], self.position[src], node.name
        )

    def add_edit(self, node: torch.fx.Node, edit: Callable) -> None:
        """Ask the rewrite to call ``edit(gm, node, analysis, keep)`` on this node of the copied graph
        (``keep``: per element, is it kept), e.g. to swap a function for a channel-count-free one."""
        self.edits.setdefault(node.name, []).append(edit)

    def record_attr_slice(self, attr_node: torch.fx.Node, dim: int, elems: np.ndarray) -> None:
        known = self.attr_slices.get(attr_node.target)
        if known is not None:
            if known[0] != dim or len(known[1]) != len(elems):
                self.freeze(elems, attr_node, "parameter used along two different channel dims")
                self.freeze(known[1], attr_node, "parameter used along two different channel dims")
                return
            self.unify(known[1], elems)
            return
        self.attr_slices[attr_node.target] = (dim, np.asarray(elems))

    # ---- the walk ----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.layouts[node] = self._visit(node)

    def _visit(self, node: torch.fx.Node) -> Any:
        if node.op == "placeholder":
            out = self.fresh_like(node.meta.get(SHAPE))
            self.freeze(out, node, "graph input: its channels are fixed by the caller")
            return out
        if node.op == "output":
            for a in node.all_input_nodes:
                self.freeze(self.layouts.get(a), node, "reaches the graph output")
            return None
        if node.op == "get_attr":
            return None
        if node.op == "call_module":
            hook = opaque_hook(self.module(node))
            if hook is not None:
                return self.opaque(node, f"a {hook} runs around this module, and fxprune cannot see what it does to "
                                         "channels: remove it before pruning and register it on the compact model")
        rule = self.rules.lookup(self, node)
        if rule is None:
            if not any(self.layouts.get(a) is not None for a in node.all_input_nodes):
                # pure Python arithmetic on sizes, or an op on parameters/buffers only: no channel
                # flows in, so none flows out (where the result meets channels, rules bind it)
                return None
            return self.opaque(node, "no dependency rule for this op")
        return rule(self, node)


def _collect_elems(x: Any) -> np.ndarray:
    if x is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(x, Layout):
        return x.all_elems()
    if isinstance(x, np.ndarray):
        return unique_ints(x)
    if isinstance(x, (tuple, list)):
        parts = [_collect_elems(y) for y in x]
        return unique_ints(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return np.zeros(0, dtype=np.int64)


def describe(node: torch.fx.Node) -> str:
    """A short human name of a node's operation, e.g. ``call_function torch.cat``."""
    t = node.target
    if node.op == "call_function":
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", str(t))
        return f"{mod}.{name}" if mod not in ("", "_operator") else f"operator.{name}"
    if node.op == "call_module":
        return f"{t} ({type(node.graph.owning_module.get_submodule(t)).__name__})"
    return f"{node.op} {t}"


def analyze(gm: torch.fx.GraphModule, inputs: tuple, strict: bool = False, ignore: tuple = (),
            grouped_convs: str = "whole") -> Analysis:
    """Run the dependency pass over a traced, shape-propagated GraphModule."""
    from . import op_rules

    _check_grouped_convs(grouped_convs, op_rules.GROUPED_CONV_MODES)
    an = Analyzer(gm, op_rules.REGISTRY, strict=strict, grouped_convs=grouped_convs)
    an.run()
    _check_grouped_names(grouped_convs, an.grouped_modes)
    _check_ignore(an, ignore)
    shared = shared_tensors(an.modules)
    for owners in shared:
        _bind_shared(an, owners)
    root_of, group_of = an.uf.snapshot()
    groups = _build_groups(an, root_of, group_of, ignore)
    return Analysis(
        gm=gm,
        inputs=inputs,
        root_of=root_of,
        group_of=group_of,
        groups=groups,
        roles=an.roles,
        attr_slices=an.attr_slices,
        node_layouts={n.name: l for n, l in an.layouts.items()},
        shape_edits=an.shape_edits,
        pads=an.pads,
        frozen_reasons=[r for _, r in an.frozen],
        edits=an.edits,
        subsets=an.subsets,
        shared=shared,
        grouped_modes=an.grouped_modes,
    )


def _check_grouped_convs(asked: Any, modes: tuple[str, ...]) -> None:
    values = asked.values() if isinstance(asked, dict) else [asked]
    if not all(isinstance(v, str) and v in modes for v in values):
        raise PlanError(f"grouped_convs must be one of {', '.join(map(repr, modes))} (how grouped conv layers "
                        f"are pruned), or a dict {{conv name: one of them}}; got {asked!r}")


def _check_grouped_names(asked: Any, found: dict[str, str]) -> None:
    """Every conv a ``grouped_convs`` dict names must be a grouped conv the graph calls."""
    unknown = sorted(set(asked) - set(found)) if isinstance(asked, dict) else []
    if unknown:
        raise PlanError(f"grouped_convs names {', '.join(map(repr, unknown[:3]))}, which the graph does not call "
                        f"as a grouped conv; grouped convs here: {', '.join(list(found)[:5]) or 'none'}")


def shared_tensors(modules: dict[str, nn.Module]) -> list[list[tuple[str, str]]]:
    """The (module, attribute) holders of every parameter or buffer held under more than one name (tied weights)."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for name, mod in modules.items():
        for store in (mod._parameters, mod._buffers):
            for attr, t in store.items():
                if t is not None:
                    holders.setdefault(id(t), []).append((name, attr))
    return [owners for owners in holders.values() if len(owners) > 1]


def _bind_shared(an: Analyzer, owners: list[tuple[str, str]]) -> None:
    """A tied tensor must be sliced alike wherever it is held, so the compact model can tie its slices again:
    the holders' channels are united side by side, or frozen when they do not read it the same way."""
    sides = [_sliced_sides(an, name, attr) for name, attr in owners]
    first = sides[0]
    if all(s is not None and _same_sizes(s, first) for s in sides):
        for other in sides[1:]:
            for a, b in zip(first, other):
                if a is not None:
                    an.unify(a, b)
        return
    names = ", ".join(f"{n}.{a}" for n, a in owners)
    for side in sides:
        for elems in side or ():
            if elems is not None:
                an.frozen.append((_collect_elems(elems), FrozenReason(
                    owners[0][0], "shared tensor", f"one tensor is held as {names}, and they do not slice it alike")))


def _sliced_sides(an: Analyzer, name: str, attr: str) -> tuple | None:
    """(input elements, output elements) along which the rewrite slices ``name.attr``: a layer's weight
    along both, its other tensors along the outputs, a sliced attribute along its one channel dim; None when
    nothing slices it (the tensor is kept whole)."""
    role = an.roles.get(name)
    if role is not None:
        reads_inputs = _masked_value(an.modules[name], attr) in INPUT_SLICED.get(role.kind, ())
        return (role.in_elems if reads_inputs else None, role.out_elems)
    target = f"{name}.{attr}" if name else attr
    if target in an.attr_slices:
        return (None, an.attr_slices[target][1])
    return None


def _masked_value(mod: nn.Module, attr: str) -> str:
    """The tensor a torch.nn.utils.prune mask computes from ``attr`` (``weight`` from ``weight_orig`` and
    ``weight_mask``), which the rewrite slices alike; else ``attr`` itself."""
    return next((value for value in masked_names(mod) if attr in derived_from(mod, value)), attr)


def _same_sizes(a: tuple, b: tuple) -> bool:
    return all((x is None) == (y is None) and (x is None or np.size(x) == np.size(y)) for x, y in zip(a, b))


def _build_groups(an: Analyzer, root_of: np.ndarray, group_of: np.ndarray, ignore: tuple) -> list[ChannelGroup]:
    """Collect the connected channel spaces that some module reads or writes into groups.

    Every module side (and sliced attribute) is a *member* of each group its elements fall in; a
    group's classes are the class roots its members touch. Done in one numpy pass over all members."""
    sides = []
    for role in an.roles.values():
        sides.append(((role.name, "in"), role.in_elems, False))
        sides.append(((role.name, "out"), role.out_elems, role.kind in PRODUCER_KINDS))
    sides += [((target, "attr"), elems, False) for target, (_, elems) in an.attr_slices.items()]
    sides = [(member, np.asarray(e, dtype=np.int64).ravel(), p) for member, e, p in sides if e is not None]
    sides = [side for side in sides if side[1].size]
    if not sides:
        return []
    elems, starts, sizes = concat_segments([e for _, e, _ in sides])
    gids = group_of[elems]
    members: dict[int, list[tuple[str, str]]] = {}
    for i, g in _side_groups(gids, starts):
        members.setdefault(g, []).append(sides[i][0])
    producing = np.repeat(np.array([p for _, _, p in sides]), sizes)
    producers = set(unique_ints(gids[producing]).tolist())
    class_roots = _class_roots(root_of[elems], group_of)
    frozen_by_group = _reasons_by_group(an.frozen, group_of)
    mixing_by_group = _reasons_by_group(an.mixing, group_of)
    groups = []
    for g in sorted(members, key=lambda g: class_roots[g][0]):
        reasons = list(frozen_by_group.get(g, []))
        if g not in producers:
            reasons.append(FrozenReason("-", "-", "no conv or linear layer produces these channels"))
        for name, _ in members[g]:
            if any(_matches(name, pat) for pat in ignore):
                reasons.append(FrozenReason(name, "ignore", "module listed in ignore="))
        groups.append(
            ChannelGroup(id=len(groups), roots=class_roots[g], members=members[g], frozen=bool(reasons),
                         reasons=reasons, mixing_reasons=mixing_by_group.get(g, []))
        )
    return groups


def _side_groups(gids: np.ndarray, starts: np.ndarray) -> list[tuple[int, int]]:
    """(side, group) for each group each side's elements fall in, sorted; most sides lie in one group."""
    ends = np.append(starts[1:], len(gids)).tolist()
    pairs = []
    for i, (single, start, end) in enumerate(zip(uniform_segments(gids, starts).tolist(), starts.tolist(), ends)):
        if single:
            pairs.append((i, int(gids[start])))
        else:
            pairs += [(i, g) for g in unique_ints(gids[start:end]).tolist()]
    return pairs


def _class_roots(roots: np.ndarray, group_of: np.ndarray) -> dict[int, np.ndarray]:
    """The distinct class roots among ``roots``, ascending, by group."""
    seen = np.zeros(len(group_of), dtype=bool)
    seen[roots] = True
    distinct = np.flatnonzero(seen)
    groups = group_of[distinct]
    order = np.argsort(groups, kind="stable")  # stable: each group's roots stay ascending
    distinct, groups = distinct[order], groups[order]
    cuts = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    return {int(groups[c]): part for c, part in zip(np.concatenate(([0], cuts)).tolist(), np.split(distinct, cuts))}


def _reasons_by_group(records: list[tuple[np.ndarray, FrozenReason]], group_of: np.ndarray) -> dict[int, list]:
    out: dict[int, list[FrozenReason]] = {}
    for elems, reason in records:
        for g in unique_ints(group_of[elems]).tolist():
            lst = out.setdefault(g, [])
            if reason not in lst:
                lst.append(reason)
    return out


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` names the module, a container holding it (``layer4`` covers ``layer4.0.conv1``), or is a glob."""
    import fnmatch

    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _check_ignore(an: "Analyzer", ignore: tuple) -> None:
    """A pattern that matches no module is a typo, and the layer it meant would be pruned: refuse it, as a
    ratio key that matches nothing is refused."""
    for pattern in ignore:
        if not any(_matches(name, pattern) for name in an.modules if name):
            raise PlanError(f"ignore pattern {pattern!r} matches no module; module names look like "
                            f"{next(iter(an.roles), '?')!r} (a container such as 'layer4' covers the modules in it)")
