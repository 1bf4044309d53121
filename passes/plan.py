"""The plan: which channel classes each group keeps, as a frozen, JSON-serializable value.

``Plan.to_dict()["modules"]`` maps every module whose parameters change to the kept indices of its
input channels ("in"; a Linear's input features; a grouped conv's full input channels) and output
channels ("out"), or None when that side is unchanged. ``"groups"`` lists each pruned group with its
members and kept classes, which is what :func:`fxprune.apply` replays on a fresh trace.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dependency import Analysis
from .errors import PlanError

__all__ = ["Plan", "make_plan", "kept_mask", "module_positions", "kept_from_plan", "member_key"]

PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Kept channels per module and per group; options record how it was made."""

    modules: dict[str, dict[str, list[int] | None]]
    groups: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    analysis: Analysis | None = field(default=None, compare=False, repr=False)
    kept: dict[int, np.ndarray] | None = field(default=None, compare=False, repr=False)
    #: ``modules`` as index arrays, for the rewrite of this very analysis (see module_positions)
    positions: dict[str, dict[str, np.ndarray | None]] | None = field(default=None, compare=False, repr=False)

    def detached(self) -> "Plan":
        """The same plan without the trace it was made from (that trace shares the original model's modules
        and weights); :func:`fxprune.apply` replays it on a fresh trace."""
        cls, fields = self.__reduce__()
        return cls(*fields)

    def __reduce__(self):
        """Pickled and deep-copied (``torch.save(small)``, ``copy.deepcopy(small)``) detached: the trace
        would double the file and tie the copy to the original."""
        return (type(self), (self.modules, self.groups, self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "modules": self.modules, "groups": self.groups, "options": self.options}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if not isinstance(d, dict) or "modules" not in d or "groups" not in d:
            raise PlanError("not an fxprune plan: expected a dict with 'modules' and 'groups'")
        if d.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise PlanError(f"plan version {d.get('version')} is not supported (expected {PLAN_VERSION})")
        return cls(modules=d["modules"], groups=d["groups"], options=d.get("options", {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def kept_classes(self) -> dict[tuple, list[int]]:
        """Kept class indices by the group's member set (how a plan finds its groups again)."""
        return {member_key(g["members"]): g["keep"] for g in self.groups}

    def __str__(self) -> str:
        lines = [f"Plan: {len(self.groups)} pruned groups, {len(self.modules)} modules change"]
        for g in self.groups:
            mem = ", ".join(f"{m}.{io}" for m, io in g["members"][:4])
            mixing = " (mixing: approximated)" if g.get("mixing") else ""
            lines.append(f"  keep {len(g['keep'])}/{g['channels']}: {mem}{' ...' if len(g['members']) > 4 else ''}{mixing}")
        return "\n".join(lines)


def member_key(members) -> tuple:
    return tuple(sorted((str(m), str(io)) for m, io in members))


def kept_mask(analysis: Analysis, kept: dict[int, np.ndarray]) -> np.ndarray:
    """Per element id: is its class kept? Classes of unlisted groups are kept."""
    keep_root = np.ones(len(analysis.root_of), dtype=bool)
    for gi, k in kept.items():
        g = analysis.groups[gi]
        flags = np.zeros(g.n_classes, dtype=bool)
        flags[np.asarray(k, dtype=np.int64)] = True
        keep_root[g.roots] = flags
    return keep_root[analysis.root_of]


def module_positions(analysis: Analysis, keep: np.ndarray) -> dict[str, dict[str, np.ndarray | None]]:
    """Kept input ("in") and output ("out") positions of every module (or sliced attribute) that
    changes, as index arrays; None for a side that keeps everything."""
    modules: dict[str, dict[str, np.ndarray | None]] = {}
    for name, role in analysis.roles.items():
        io = {"in": _kept_positions(keep, role.in_elems), "out": _kept_positions(keep, role.out_elems)}
        if io["in"] is not None or io["out"] is not None:
            modules[name] = io
    for target, (_, elems) in analysis.attr_slices.items():
        out = _kept_positions(keep, elems)
        if out is not None:
            modules[target] = {"in": None, "out": out}
    return modules


def _kept_positions(keep: np.ndarray, elems: np.ndarray | None) -> np.ndarray | None:
    if elems is None:
        return None
    flags = keep[np.asarray(elems, dtype=np.int64)]
    return None if flags.all() else np.flatnonzero(flags)


def make_plan(analysis: Analysis, kept: dict[int, np.ndarray], options: dict[str, Any]) -> Plan:
    """Turn kept classes per group into the per-module plan."""
    positions = module_positions(analysis, kept_mask(analysis, kept))
    modules = {name: {side: None if idx is None else idx.tolist() for side, idx in io.items()}
               for name, io in positions.items()}
    groups = []
    for gi, k in sorted(kept.items()):
        g = analysis.groups[gi]
        if len(k) < g.n_classes:
            groups.append(
                {
                    "members": [list(m) for m in g.members],
                    "channels": int(g.n_classes),
                    "keep": sorted(np.asarray(k, dtype=np.int64).tolist()),
                    "mixing": g.mixing,  # pruned through a channel-mixing op: the compact model approximates
                }
            )
    return Plan(modules=modules, groups=groups, options=options, analysis=analysis, kept=kept, positions=positions)


def kept_from_plan(analysis: Analysis, plan: Plan) -> dict[int, np.ndarray]:
    """Find each planned group in a fresh analysis of the model (by its members)."""
    wanted = plan.kept_classes()
    by_key = {member_key(g.members): gi for gi, g in enumerate(analysis.groups)}
    kept = {}
    for key, k in wanted.items():
        gi = by_key.get(key)
        if gi is None:
            first = ", ".join(f"{m}.{io}" for m, io in key[:3])
            raise PlanError(f"the plan's group ({first} ...) does not exist in this model: was the plan made for another model?")
        g = analysis.groups[gi]
        if g.frozen or (k and max(k) >= g.n_classes):
            raise PlanError(f"the plan prunes group {gi} ({g.members[0][0]} ...), which this model cannot prune")
        kept[gi] = np.asarray(k, dtype=np.int64)
    return kept
