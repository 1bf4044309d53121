"""Size and compute accounting for original vs. pruned models.

Numbers follow the conventions of the structured-pruning literature so results
can be compared with published tables:

* MACs come from fvcore's ``FlopCountAnalysis``, which counts one fused
  multiply-add as one "flop"; its totals are therefore MACs, not 2*MACs.
  Rules added here count what it has none for: recurrent layers, fused
  attention, ``baddbmm``; attention modules run unfused while counted.
* The headline reductions (``flops_reduction_pct``/``params_reduction_pct``)
  use only conv/linear work (papers' "FLOPs" and "params without BN": conv,
  linear, matrix products, recurrent gates, attention projections), as
  FR/PR = (before - after) / before * 100. All-op totals are reported too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from passes.hooks import copy_model
from passes.trace import inputs_like

__all__ = ["Counts", "Report", "count", "report", "human", "as_example_args", "default_example_inputs"]

logger = logging.getLogger(__name__)

#: fvcore operator names (keys of ``by_operator``) that are conv or matrix-product work: a recurrent layer's
#: gates and fused attention are matrix products too (unfused attention counts as ``matmul``).
CONV_LINEAR_OPS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum", "baddbmm",
                             "scaled_dot_product_attention", "lstm", "gru", "rnn_tanh", "rnn_relu"})

#: Compute-heavy ops neither fvcore nor the handles below count (0 MACs): a report names them, so that a
#: model whose work is partly there is not read as cheaper than it is.
HEAVY_UNCOUNTED_OPS = frozenset({"aten::bilinear", "aten::addbmm", "aten::_native_multi_head_attention",
                                 "aten::_transformer_encoder_layer_fwd"})

#: The parameters of each layer type that make up ``params_conv_linear``: conv and linear weights and biases,
#: and the layers whose MACs count with them (a recurrent layer's gates, attention's input projection).
_CONV_LINEAR_PARAMS = (
    (nn.modules.conv._ConvNd, ("weight", "bias")),
    (nn.Linear, ("weight", "bias")),
    (nn.RNNBase, None),  # all of its own parameters: gate weights and biases
    (nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias")),
)


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
            lines.append(f"MACs leave out {', '.join(uncounted)}: no MAC rule for them")
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
    """(all parameters, conv/linear weights+biases, recurrent and attention projections included);
    shared tensors counted once."""
    total = sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    conv_linear = 0
    for module in model.modules():
        for p in _conv_linear_tensors(module):
            if isinstance(p, torch.Tensor) and id(p) not in seen:
                seen.add(id(p))
                conv_linear += p.numel()
    return total, conv_linear


def _conv_linear_tensors(module: nn.Module) -> list:
    for kind, names in _CONV_LINEAR_PARAMS:
        if isinstance(module, kind):
            if names is None:
                return list(module.parameters(recurse=False))
            return [getattr(module, n, None) for n in names]
    return []


def _count_macs(model: nn.Module, args: tuple) -> tuple[dict[str, int], dict[str, int]]:
    """(MACs per fvcore operator name, calls of the heavy ops it could not count), traced on an eval-mode
    copy under no_grad.

    The copy keeps the caller's model (training flags, hooks, BN statistics)
    untouched; unsupported-op warnings are silenced and logged at debug level.
    """
    work = copy_model(model).eval()
    with torch.no_grad(), _unfused_attention(), warnings.catch_warnings():
        # fvcore scripts a helper at import time and traces with torch.jit, both
        # deprecated upstream; the FutureWarnings are not actionable for users.
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(work, args).set_op_handle(**_EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_op = {str(k): int(v) for k, v in analysis.by_operator().items()}
        unsupported = analysis.unsupported_ops()
    if unsupported:
        logger.debug("fvcore skipped unsupported ops (counted as 0 MACs): %s", dict(unsupported))
    return by_op, {op: int(n) for op, n in unsupported.items() if op in HEAVY_UNCOUNTED_OPS}


@contextlib.contextmanager
def _unfused_attention():
    """``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` run one fused kernel in eval mode under
    no_grad, which fvcore counts as 0 MACs, projections included (a third of a ViT's work); their unfused
    path calls ``F.linear`` and ``scaled_dot_product_attention``, which are counted."""
    mha = torch.backends.mha
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def _shape(value) -> list[int]:
    """A traced tensor's sizes (the trace of a concrete forward records them all)."""
    return value.type().sizes()


def _recurrent_macs(inputs, outputs) -> int:
    """``aten::lstm``/``gru``/``rnn_*``: every weight matrix (input-to-hidden, hidden-to-hidden, projection;
    each layer and direction) multiplies one vector per time step and sequence; gate arithmetic is
    element-wise and not counted, as fvcore leaves out a linear layer's bias."""
    steps = math.prod(_shape(inputs[0])[:-1])  # (T, N) or (N, T), or a packed sequence's (total steps,)
    weights = [v for v in inputs if isinstance(v.type(), torch._C.ListType)][-1]  # hidden state list comes first
    shapes = [_shape(w) for w in weights.node().inputs()]
    return steps * sum(math.prod(s) for s in shapes if len(s) == 2)


def _attention_macs(inputs, outputs) -> int:
    """``scaled_dot_product_attention``: q·kᵀ and weights·v, as fvcore counts the two matmuls unfused."""
    q, k, v = (_shape(t) for t in inputs[:3])
    return math.prod(_shape(outputs[0])[:-1]) * k[-2] * (q[-1] + v[-1])


def _baddbmm_macs(inputs, outputs) -> int:
    """``baddbmm(c, a, b)``: the batched product a·b, as fvcore counts ``bmm``."""
    return math.prod(_shape(inputs[1])) * _shape(inputs[2])[-1]


#: MAC rules for heavy ops fvcore has none for, as ``FlopCountAnalysis.set_op_handle`` takes them.
_EXTRA_HANDLES = {
    "aten::lstm": _recurrent_macs, "aten::gru": _recurrent_macs,
    "aten::rnn_tanh": _recurrent_macs, "aten::rnn_relu": _recurrent_macs,
    "aten::scaled_dot_product_attention": _attention_macs,
    "aten::baddbmm": _baddbmm_macs,
}


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
