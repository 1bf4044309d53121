"""Size and compute accounting for original vs. pruned models.

Numbers follow the conventions of the structured-pruning literature so results
can be compared with published tables:

* MACs come from fvcore's ``FlopCountAnalysis``, which counts one fused
  multiply-add as one "flop"; its totals are therefore MACs, not 2*MACs.
* The headline reductions (``flops_reduction_pct``/``params_reduction_pct``)
  use only Conv*/Linear layers (papers' "FLOPs" and "params without BN"), as
  FR/PR = (before - after) / before * 100. All-op totals are reported too.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from passes.hooks import copy_model
from passes.trace import inputs_like

__all__ = ["Counts", "Report", "count", "report", "human", "as_example_args", "default_example_inputs"]

logger = logging.getLogger(__name__)

#: fvcore operator names (keys of ``by_operator``) that are conv or matmul work.
CONV_LINEAR_OPS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum"})

#: Compute-heavy ops fvcore has no rule for (it counts them as 0 MACs): a report names them, so that a model
#: whose work is partly there (a CRNN's LSTM, a ViT's fused attention) is not read as cheaper than it is.
HEAVY_UNCOUNTED_OPS = frozenset({"aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu",
                                 "aten::scaled_dot_product_attention"})

#: Module types whose weights and biases make up ``params_conv_linear``.
_CONV_LINEAR_MODULES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclasses.dataclass(frozen=True)
class Counts:
    """Parameter and MAC counts of one model on one example input."""

    params: int
    params_conv_linear: int
    macs: int
    macs_conv_linear: int
    by_operator: Mapping[str, int] = dataclasses.field(default_factory=dict, hash=False)
    #: calls of HEAVY_UNCOUNTED_OPS, by op: their MACs are not in ``macs``
    uncounted: Mapping[str, int] = dataclasses.field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe copy (ints and str->int dicts)."""
        return {
            "params": self.params,
            "params_conv_linear": self.params_conv_linear,
            "macs": self.macs,
            "macs_conv_linear": self.macs_conv_linear,
            "by_operator": {str(k): int(v) for k, v in self.by_operator.items()},
            "uncounted": {str(k): int(v) for k, v in self.uncounted.items()},
        }


def _reduction_pct(before: int, after: int) -> float:
    """(before - after) / before * 100; 0.0 when there was nothing to reduce."""
    return 0.0 if before == 0 else (before - after) / before * 100.0


def human(n: float) -> str:
    """Render a count with a K/M/G/T suffix (``1234567 -> '1.23M'``)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


@dataclasses.dataclass(frozen=True)
class Report:
    """Before/after counts of a pruning run.

    ``flops_reduction_pct`` and ``params_reduction_pct`` are seed 000's FR and
    PR: (before - after) / before * 100 on the conv+linear convention (MACs of
    conv/linear/matmul ops; weights+biases of Conv*/Linear modules). The
    ``*_all`` variants use all-op MACs and all parameters.
    """

    before: Counts
    after: Counts

    @property
    def flops_reduction_pct(self) -> float:
        return _reduction_pct(self.before.macs_conv_linear, self.after.macs_conv_linear)

    @property
    def params_reduction_pct(self) -> float:
        return _reduction_pct(self.before.params_conv_linear, self.after.params_conv_linear)

    @property
    def flops_reduction_pct_all(self) -> float:
        return _reduction_pct(self.before.macs, self.after.macs)

    @property
    def params_reduction_pct_all(self) -> float:
        return _reduction_pct(self.before.params, self.after.params)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: both Counts plus the four reduction percentages."""
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "flops_reduction_pct": self.flops_reduction_pct,
            "params_reduction_pct": self.params_reduction_pct,
            "flops_reduction_pct_all": self.flops_reduction_pct_all,
            "params_reduction_pct_all": self.params_reduction_pct_all,
        }

    def rows(self) -> list[tuple[str, int, int, float]]:
        """(label, before, after, reduction %) for each table row."""
        b, a = self.before, self.after
        return [
            ("Params", b.params, a.params, self.params_reduction_pct_all),
            ("Params (conv+linear)", b.params_conv_linear, a.params_conv_linear, self.params_reduction_pct),
            ("MACs", b.macs, a.macs, self.flops_reduction_pct_all),
            ("MACs (conv+linear)", b.macs_conv_linear, a.macs_conv_linear, self.flops_reduction_pct),
        ]

    def __str__(self) -> str:
        header = f"{'':<22}{'before':>10}{'after':>10}{'reduction':>11}"
        lines = [header, "-" * len(header)]
        for label, before, after, pct in self.rows():
            lines.append(f"{label:<22}{human(before):>10}{human(after):>10}{pct:>10.2f}%")
        uncounted = sorted(set(self.before.uncounted) | set(self.after.uncounted))
        if uncounted:
            lines.append(f"MACs leave out {', '.join(uncounted)}: fvcore has no rule for them")
        return "\n".join(lines)


def default_example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """Zero inputs (no RNG use) on the model's device and in its dtype: of the shapes a pruned model was
    planned with (its plan's ``input_shape``: a CIFAR model is counted at 32x32), else one 1x3x224x224 image."""
    plan = getattr(model, "meta", {}).get("fxprune.plan")
    shapes = plan.options.get("input_shape") if plan is not None else None
    return inputs_like(model, shapes or [(1, 3, 224, 224)], torch.zeros)


def as_example_args(model: nn.Module, example_inputs: Any) -> tuple:
    """Normalise ``None`` / a tensor / a sequence into a positional-args tuple."""
    if example_inputs is None:
        return default_example_inputs(model)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, Conv*/Linear weights+biases); shared tensors counted once."""
    total = sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    conv_linear = 0
    for module in model.modules():
        if not isinstance(module, _CONV_LINEAR_MODULES):
            continue
        for p in (module.weight, module.bias):
            if isinstance(p, torch.Tensor) and id(p) not in seen:
                seen.add(id(p))
                conv_linear += p.numel()
    return total, conv_linear


def _count_macs(model: nn.Module, args: tuple) -> tuple[dict[str, int], dict[str, int]]:
    """(MACs per fvcore operator name, calls of the heavy ops it could not count), traced on an eval-mode
    copy under no_grad.

    The copy keeps the caller's model (training flags, hooks, BN statistics)
    untouched; unsupported-op warnings are silenced and logged at debug level.
    """
    work = copy_model(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # fvcore scripts a helper at import time and traces with torch.jit, both
        # deprecated upstream; the FutureWarnings are not actionable for users.
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(work, args)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_op = {str(k): int(v) for k, v in analysis.by_operator().items()}
        unsupported = analysis.unsupported_ops()
    if unsupported:
        logger.debug("fvcore skipped unsupported ops (counted as 0 MACs): %s", dict(unsupported))
    return by_op, {op: int(n) for op, n in unsupported.items() if op in HEAVY_UNCOUNTED_OPS}


def count(model: nn.Module, example_inputs: Any = None) -> Counts:
    """Count params and MACs of ``model`` on ``example_inputs`` (default: see default_example_inputs)."""
    args = as_example_args(model, example_inputs)
    params, params_cl = _count_params(model)
    by_op, uncounted = _count_macs(model, args)
    macs_cl = sum(v for k, v in by_op.items() if k in CONV_LINEAR_OPS)
    return Counts(params, params_cl, sum(by_op.values()), macs_cl, by_op, uncounted)


def report(original: nn.Module, small: nn.Module, example_inputs: Any = None, print_table: bool = True) -> Report:
    """Compare ``original`` and ``small`` on the same input; print the table if asked.

    This is a user-facing function, hence ``print`` (only when ``print_table``).
    """
    args = as_example_args(small, example_inputs)  # by default, the shapes ``small`` was pruned for
    result = Report(before=count(original, args), after=count(small, args))
    if print_table:
        print(result)
    return result
