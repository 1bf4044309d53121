"""What a criterion sees: the channel groups, their member layers, and calibration data.

A criterion scores the classes of one group (higher = keep first). It never sees architecture
names, only member layers. Two ways of scoring a coupled group are offered:

* :meth:`ScoringContext.class_sum` adds each producing layer's per-filter score into the classes
  its filters belong to (weight norms: a residual channel is as important as all its filters);
* :meth:`ScoringContext.leader_first` takes, for every class, the score given by the first producer
  in *leader order*: the producer that reads the earliest tensor (the stem or the projection conv
  of a residual stage, the shortcut), then graph order. This is how the redundancy-graph seed
  lets a stage's stream follow its stem or projection conv.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..dependency import MAP_KINDS, PRODUCER_KINDS, Analysis, ChannelGroup, ModuleRole
from ..errors import PlanError
from ..graph_module import modules_of
from ..layout import unique_ints
from ..modes import eval_mode, outside_inference_mode
from ..shapes import shapes_of

__all__ = ["ScoringContext", "Producer", "Criterion", "FunctionCriterion", "CALIBRATION_OPTIONS"]

#: Options of every criterion that runs calibration data: how many images, and the seed and count of the
#: random inputs that stand in when there is no data (see ScoringContext.batches).
CALIBRATION_OPTIONS = frozenset({"calibration_samples", "seed", "synthetic_samples"})

log = logging.getLogger(__name__)
_warned: set[str] = set()


@dataclass
class Producer:
    """A conv/linear layer whose output channels fall into a group's classes."""

    role: ModuleRole
    module: nn.Module
    classes: np.ndarray  # class index of each output channel, -1 where not in this group


@dataclass
class ScoringContext:
    analysis: Analysis
    data: Iterable | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _observed: dict[tuple[str, str], np.ndarray | torch.Tensor] = field(default_factory=dict)
    _prefetched: set[str] = field(default_factory=set)
    _producers: dict[str, tuple] | None = None
    _remembered: dict[tuple, Any] = field(default_factory=dict)

    # ---- group structure ------------------------------------------------------------------------
    def producers(self, group: ChannelGroup) -> list[Producer]:
        """The group's producing layers in leader order."""
        gid = group.id  # a group's id is its position in analysis.groups
        layers = self._producer_classes()
        out = []
        for name, io in group.members:
            known = layers.get(name) if io == "out" else None
            if known is not None:
                role, module, gids, cls = known
                out.append(Producer(role, module, np.where(gids == gid, cls, -1)))
        out.sort(key=lambda p: (p.role.input_order, p.role.order))
        return out

    def _producer_classes(self) -> dict[str, tuple[ModuleRole, nn.Module, np.ndarray, np.ndarray]]:
        """Every conv/linear layer with its module and the (group, class) of each output channel; made once."""
        if self._producers is None:
            gpos, cpos = self.analysis.class_positions()
            modules = modules_of(self.analysis.gm)
            self._producers = {}
            for name, role in self.analysis.roles.items():
                if role.kind in PRODUCER_KINDS and role.out_elems is not None:
                    roots = self.analysis.roots(role.out_elems)
                    self._producers[name] = (role, modules[name], gpos[roots], cpos[roots])
        return self._producers

    def class_sum(self, group: ChannelGroup, per_channel: Callable[[nn.Module], np.ndarray]) -> np.ndarray:
        """Each class's score from the per-filter scores of the filters writing it, reduced as
        :meth:`reduce_writers` says."""
        scores, writers = np.zeros(group.n_classes), np.zeros(group.n_classes)
        for p in self.producers(group):
            s = np.asarray(per_channel(p.module), dtype=np.float64)
            ok = p.classes >= 0
            scores += np.bincount(p.classes[ok], weights=s[ok], minlength=group.n_classes)
            writers += np.bincount(p.classes[ok], minlength=group.n_classes)
        return self.reduce_writers(scores, writers)

    def reduce_writers(self, sums: np.ndarray, writers: np.ndarray) -> np.ndarray:
        """The option ``group_reduction``: "sum" (the default) scores a class by the sum over the filters
        writing it, "mean" by their mean. They rank alike where every class has as many writers; where
        classes differ (a CSP net's split halves, one running through residual blocks), "sum" favours the
        classes more layers write and "mean" compares them filter for filter."""
        how = self.options.get("group_reduction", "sum")
        if how == "sum":
            return sums
        if how == "mean":
            return sums / np.maximum(writers, 1)
        raise PlanError(f"group_reduction={how!r}: use 'sum' (the default: a class scores the sum over the filters "
                        "writing it) or 'mean' (their mean)")

    def leader_first(self, group: ChannelGroup, per_producer: Callable[[Producer], np.ndarray]) -> np.ndarray:
        scores = np.full(group.n_classes, np.nan)
        for p in self.producers(group):
            todo = p.classes >= 0
            todo[todo] = np.isnan(scores[p.classes[todo]])
            if not todo.any():
                continue
            s = np.asarray(per_producer(p), dtype=np.float64)
            sums = np.zeros(group.n_classes)
            np.add.at(sums, p.classes[todo], s[todo])
            hit = unique_ints(p.classes[todo])
            scores[hit] = sums[hit]
        return np.nan_to_num(scores, nan=-np.inf)

    def remember(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context and key: a criterion asked both to decide and to score a
        group (a threshold rounded by ``round_to``) does its expensive work once."""
        if key not in self._remembered:
            self._remembered[key] = compute()
        return self._remembered[key]

    # ---- calibration data ---------------------------------------------------------------------
    def on_model(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device of the model's weights, a float input in their dtype (a loader yields float32
        CPU tensors; the model may be on a GPU or in half precision)."""
        x = outside_inference_mode(x)
        first = next((p for p in self.analysis.gm.parameters() if p.is_floating_point()), None)
        if first is None:
            return x
        return x.to(first.device, first.dtype if x.is_floating_point() else x.dtype)

    def batches(self, max_samples: int) -> Iterable[tuple]:
        """Input batches from ``data`` (inputs, or (inputs, targets) pairs), up to max_samples images.

        Without data, standard-normal inputs shaped like the example input stand in, with a
        one-time warning: real images give the paper's method, noise gives a data-free proxy.
        """
        if self.data is None:
            key = "no-data"
            if key not in _warned:
                _warned.add(key)
                log.warning("no calibration data given (data=...): scoring feature maps of random inputs")
            g = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
            x = self.analysis.inputs[0]
            n = min(max_samples, int(self.options.get("synthetic_samples", 16)))
            yield (self.on_model(torch.randn((n, *x.shape[1:]), generator=g, dtype=x.dtype)),)
            return
        seen = 0
        for batch in self.data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[: max_samples - seen]
            seen += x.shape[0]
            yield (self.on_model(x),)
            if seen >= max_samples:
                return

    def run_batch(self, model: nn.Module, inputs: tuple) -> Any:
        """``model(*inputs)``; a calibration batch the model cannot take is named as such, with its shape
        and the example input's, instead of as an error deep inside some layer."""
        try:
            return model(*inputs)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            got, want = shapes_of(inputs), shapes_of(self.analysis.inputs)
            source = ("the calibration data (data=)" if self.data is not None
                      else "the random inputs that stand in for calibration data")
            raise PlanError(f"{source} does not fit the model: a batch of {got} fails with {type(e).__name__}: "
                            f"{e}. data= must yield inputs like the example input ({want}), or (inputs, targets) "
                            "pairs") from e

    def observe(self, names: list[str], reducer: Callable[[torch.Tensor], Any], key: str,
                max_samples: int) -> dict[str, Any]:
        """Run the calibration data once and reduce each named module's output per batch.

        Runs in eval mode without gradients, so the model's weights and statistics stay as they are.
        """
        missing = [n for n in names if (key, n) not in self._observed]
        if missing:
            wanted = set(missing)
            convs = self._map_producers()
            # the other convs come along on a conv's first pass; a reducer made for another kind of
            # layer (a Linear's features on the last axis) would misread their maps
            if key not in self._prefetched and convs.issuperset(missing):
                self._prefetched.add(key)
                wanted |= convs
            self._collect(sorted(wanted), reducer, key, max_samples)
        return {n: self._observed[(key, n)] for n in names if (key, n) in self._observed}

    def _map_producers(self) -> set[str]:
        """Every conv producing 2-D feature maps in a prunable group: observed in one pass, not one per group."""
        shapes = {n.name: n.meta.get("fxprune.shape") for n in self.analysis.gm.graph.nodes}
        out = set()
        for g in self.analysis.groups:
            if g.frozen:
                continue
            for name, io in g.members:
                role = self.analysis.roles.get(name)
                if io == "out" and role is not None and role.kind in MAP_KINDS and len(shapes[role.node] or ()) == 4:
                    out.add(name)
        return out

    def _collect(self, names, reducer, key, max_samples) -> None:
        gm = self.analysis.gm
        parts: dict[str, list] = {n: [] for n in names}
        handles = [gm.get_submodule(n).register_forward_hook(_reduce_into(parts[n], reducer)) for n in names]
        try:
            with eval_mode(gm), torch.no_grad():
                for batch in self.batches(max_samples):
                    self.run_batch(gm, batch)
        finally:
            for h in handles:
                h.remove()
        for n in names:
            vals = parts[n]
            if not vals:  # a layer only read through its weights (e.g. attention projections) never runs
                continue
            self._observed[(key, n)] = (
                np.concatenate(vals) if isinstance(vals[0], np.ndarray) else torch.cat(vals)
            )


def _reduce_into(store: list, reducer):
    def hook(_m, _args, out):
        store.append(reducer(out.detach()))

    return hook


#: The option of criteria that score a class from the filters writing it (ScoringContext.class_sum).
WRITER_OPTIONS = frozenset({"group_reduction"})


class Criterion:
    """Scores a group's classes (higher = keep). ``decide`` may instead choose the kept classes.

    ``options``: the keyword options it reads from ``ctx.options``; any other is refused before
    scoring (a misspelt option would otherwise be ignored without a word). None: any option.
    """

    name = "criterion"
    options: frozenset[str] | None = frozenset()

    def score(self, ctx: ScoringContext, group: ChannelGroup) -> np.ndarray:
        raise TypeError(f"criterion {self.name!r} does not score groups")

    def decide(self, ctx: ScoringContext, group: ChannelGroup) -> np.ndarray | None:
        return None


class FunctionCriterion(Criterion):
    """Wraps a user function ``fn(ctx, group) -> scores`` registered with register_criterion."""

    options = None  # a user's function may read any option

    def __init__(self, name: str, fn: Callable[[ScoringContext, ChannelGroup], np.ndarray]):
        self.name = name
        self.fn = fn

    def score(self, ctx, group):
        return np.asarray(self.fn(ctx, group), dtype=np.float64)
