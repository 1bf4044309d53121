"""Soft filter pruning (SFP, seed 002; spec ``algorithms.md`` §3) as a training hook.

    sfp = SoftFilterPruning(model, torch.randn(1, 3, 32, 32), ratio=0.3)
    sfp.start(model)                                   # zero once before training, as the seed does
    fxprune.runner.finetune(model, train, val, epochs=200, epoch_end_hooks=[sfp])
    small = sfp.hard_prune(model)                      # the compact GraphModule

After every epoch the hook scores the classes of every prunable channel group with ``criterion``
(default ``l2``: the L2 norm of the producer filters, summed over the producers of a coupled group)
and zeroes the producer filters -- conv/linear weight rows *and* biases of those output channels --
of the lowest-scoring classes, keeping ``int(N * (1 - ratio))`` (at least 1) per group. BatchNorm is
left alone, as in the seed. The zeroed filters keep receiving gradients, so they can regrow and the
zeroed set can change the next epoch. ``ratio`` is the fraction *removed* (the seed's ``rate`` is the
fraction kept: rate 0.7 = ratio 0.3); a dict {module glob: ratio} works as in :func:`fxprune.plan`.
Differences from the seed: biases of zeroed filters are zeroed too (the seed's CIFAR ResNets have
none), and groups come from the dependency analysis instead of a parameter-index scheme, so coupled
residual channels are zeroed together in every conv that writes them.

``asymptotic=True`` is ASFP (§3.6): the ratio after ``t`` trained epochs is ``f(t) * ratio`` with
``f(t) = (1 - x**(4t/T)) / (1 - x**4)``, an exponential ``a*exp(-k*t) + b`` through the paper's
anchors f(0) = 0, f(T/4) = 3/4, f(T) = 1 (T = ``total_epochs``; x solves x + x² + x³ = 1/3). The
anchors are from the paper's text, not code (unverified); f stays 1 after T.

What equality holds (tested): :meth:`hard_prune` removes exactly the zeroed classes. The compact
model equals the soft model *with the removed channels masked where conv/linear layers read them*
(``fxprune.verify(soft_model, small)``). It equals the unmasked soft model only where a zeroed
channel is exactly 0 when read: true for conv(+bias)/linear + ReLU chains, since weights and bias
are zeroed, but not after a BatchNorm, which turns a zero channel into the constant
β − γμ/√(σ²+ε). The seed's small ResNet re-adds that constant (``bn_value``); fxprune drops it, so
there the compact model differs from the soft model by those constants.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from passes import criteria as _criteria
from passes.dependency import Analysis
from passes.errors import PlanError
from passes.filters import filters, out_dim
from passes.hooks import value_holders
from passes.select import kept_count, resolve_ratios, top_k

from .api import analyze, prune

__all__ = ["SoftFilterPruning", "asymptotic_fraction"]

log = logging.getLogger(__name__)

# x = exp(-k T / 4): the root in (0, 1) of x + x^2 + x^3 = 1/3 (f(T/4) = 3/4 with f(T) = 1).
# np.roots, not scipy.optimize: importing that costs most of ``import fxprune``'s time.
_X = float(next(r.real for r in np.roots([1.0, 1.0, 1.0, -1.0 / 3.0]) if abs(r.imag) < 1e-12 and 0.0 < r.real < 1.0))


def asymptotic_fraction(t: float, total: float) -> float:
    """ASFP's share of the target ratio after ``t`` of ``total`` epochs: 0 at 0, 3/4 at total/4, 1 at total."""
    if t <= 0:
        return 0.0
    if t >= total:
        return 1.0
    return float((1.0 - _X ** (4.0 * t / total)) / (1.0 - _X ** 4))


class SoftFilterPruning:
    """An ``epoch_end_hooks`` callable: ``sfp(model, epoch)`` zeroes the weakest filters of every group."""

    def __init__(self, model: nn.Module, example_inputs, ratio: float | dict, criterion: str = "l2",
                 asymptotic: bool = False, total_epochs: int | None = None):
        if asymptotic and (not isinstance(total_epochs, int) or total_epochs < 1):
            raise PlanError(f"asymptotic SFP needs total_epochs (a positive int), got {total_epochs!r}")
        self.ratio = ratio
        self.criterion = _criteria.get(criterion)
        self.asymptotic = asymptotic
        self.total_epochs = total_epochs
        self.example_inputs = example_inputs
        self.analysis: Analysis = analyze(model, example_inputs)
        resolve_ratios(self.analysis, ratio)  # reject a bad ratio now, not after the first epoch
        self.last_ratio: float | dict | None = None
        self.zeroed: dict[int, np.ndarray] = {}  # group index -> zeroed classes, after the last call

    # ---- the hook ---------------------------------------------------------------------------------
    def start(self, model: nn.Module) -> None:
        """Zero before training (t = 0), as the seed does; a no-op for ASFP (its ratio starts at 0)."""
        self(model, -1)

    def __call__(self, model: nn.Module, epoch: int) -> None:
        """After 0-based ``epoch`` (``epoch + 1`` epochs trained): re-score and zero, in place."""
        ratio = self.ratio_at(epoch + 1)
        analysis = self._analysis_for(model)
        ctx = _criteria.ScoringContext(analysis, options={"criterion": self.criterion.name})
        self.zeroed = {}
        with torch.no_grad():
            for gi, r in resolve_ratios(analysis, ratio).items():
                g = analysis.groups[gi]
                k = kept_count(g.n_classes, r)
                if k >= g.n_classes:
                    continue
                drop = np.setdiff1d(np.arange(g.n_classes), top_k(self.criterion.score(ctx, g), k))
                _zero_classes(model, ctx, g, drop)
                self.zeroed[gi] = drop
        self.last_ratio = ratio
        log.info("SFP after epoch %d: ratio %s, %d classes zeroed in %d groups", epoch,
                 _fmt(ratio), sum(len(d) for d in self.zeroed.values()), len(self.zeroed))

    def ratio_at(self, t: int) -> float | dict:
        """The ratio (float or dict, like ``ratio``) used after ``t`` trained epochs."""
        if not self.asymptotic:
            return self.ratio
        f = asymptotic_fraction(t, self.total_epochs)
        if isinstance(self.ratio, dict):
            return {k: f * float(v) for k, v in self.ratio.items()}
        return f * float(self.ratio)

    # ---- the compact model ------------------------------------------------------------------------
    def hard_prune(self, model: nn.Module, example_inputs=None) -> torch.fx.GraphModule:
        """The compact GraphModule without the zeroed classes: ``fxprune.prune`` with the ``nonzero``
        criterion and the ratio of the last call. Call it right after the last hook ran."""
        if self.last_ratio is None:
            raise PlanError("nothing is zeroed yet: run the SFP hook (sfp(model, epoch)) before hard_prune")
        x = self.example_inputs if example_inputs is None else example_inputs
        small = prune(model, x, criterion="nonzero", ratio=self.last_ratio)
        _warn_if_regrown(model, small)
        return small

    def _analysis_for(self, model: nn.Module) -> Analysis:
        """The cached analysis if ``model`` is the analysed one (shared parameters), else a fresh one."""
        mine = list(model.parameters())
        traced = list(self.analysis.gm.parameters())
        if len(mine) != len(traced) or any(a is not b for a, b in zip(mine, traced)):
            self.analysis = analyze(model, self.example_inputs)
        return self.analysis


def _zero_classes(model: nn.Module, ctx, group, drop: np.ndarray) -> None:
    """Set the weight rows and biases of every producer filter that writes a dropped class to 0."""
    for p in ctx.producers(group):
        rows = np.flatnonzero(np.isin(p.classes, drop))
        if not len(rows):
            continue
        mod = model.get_submodule(p.role.name)
        idx = torch.as_tensor(rows, dtype=torch.long, device=mod.weight.device)
        for attr, dim in (("weight", out_dim(mod)), ("bias", 0)):
            for name in value_holders(mod, attr):
                if getattr(mod, name, None) is not None:
                    getattr(mod, name).index_fill_(dim, idx, 0.0)


def _warn_if_regrown(model: nn.Module, small: torch.fx.GraphModule) -> None:
    """The removed filters should be all zero; if not, the model trained after the last hook."""
    modules = small.meta["fxprune.plan"].modules
    for name, io in modules.items():
        mod = model.get_submodule(name)
        if io["out"] is None or not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        rows = filters(mod.weight.detach(), mod)
        removed = np.setdiff1d(np.arange(rows.shape[0]), io["out"])
        if torch.count_nonzero(rows[torch.as_tensor(removed, dtype=torch.long)]):
            log.warning("hard_prune removes non-zero filters of %r: the model changed after the last SFP "
                        "hook, so the compact model is not the soft-pruned one", name)
            return


def _fmt(ratio: Any) -> str:
    return f"{ratio:.4g}" if isinstance(ratio, float) else str(ratio)
