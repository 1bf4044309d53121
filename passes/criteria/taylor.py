"""``taylor`` (Molchanov et al. 2017): first-order Taylor estimate of the loss change of removing a
filter, |Σ_filter w · ∂L/∂w|, with L the cross-entropy over labelled calibration batches, or the
``loss=fn(output, targets)`` option (summed over a batch) for models whose output is not (N, classes)
logits: a sequence recognizer, a segmentation network.

Needs ``data=`` as (inputs, targets) batches; uses up to ``calibration_samples`` images (default
128), gradients summed over them (L = mean cross-entropy over all used images). Coupled groups add
the scores of all filters that write a class (base.class_sum), like the weight norms.

The gradients are taken on a deep copy of the traced module, in eval mode (BN uses its running
statistics, dropout is off): the user's parameters, their ``.grad`` and the BN statistics stay
exactly as they were. Only weights count, not biases (the filter is its weight rows).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..dependency import PRODUCER_KINDS
from ..errors import PlanError
from ..filters import filters
from ..hooks import copy_model, value_holders
from . import register
from ..verify import main_output
from ..modes import outside_inference_mode
from .base import WRITER_OPTIONS, Criterion, ScoringContext

__all__ = ["taylor_scores", "Taylor"]

DEFAULT_SAMPLES = 128
_KEY = "taylor"


def _labelled_batches(data, max_samples: int):
    """(inputs, targets) pairs from ``data`` up to ``max_samples`` images; a clear error otherwise."""
    if data is None:
        raise PlanError("criterion 'taylor' needs labelled calibration data: data=[(inputs, targets), ...]")
    seen = 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise PlanError("criterion 'taylor' needs (inputs, targets) batches in data=, got inputs only")
        x, y = batch[0][: max_samples - seen], batch[1][: max_samples - seen]
        seen += x.shape[0]
        yield x, y
        if seen >= max_samples:
            return


def taylor_scores(ctx: ScoringContext) -> dict[str, np.ndarray]:
    """|Σ w·∂L/∂w| per output filter of every conv/linear layer, computed once per context."""
    if (_KEY, "") not in ctx._observed:
        ctx._observed[(_KEY, "")] = _compute(ctx)
    return ctx._observed[(_KEY, "")]


@torch.inference_mode(False)  # gradients are needed even when the caller prunes under inference mode
def _compute(ctx: ScoringContext) -> dict[str, np.ndarray]:
    """Accumulate the summed cross-entropy gradient on a copy, then reduce w·g per filter."""
    gm = copy_model(ctx.analysis.gm).eval()
    for p in gm.parameters():
        p.grad = None
        p.requires_grad_(True)
    samples = int(ctx.options.get("calibration_samples", DEFAULT_SAMPLES))
    loss_fn = _loss(ctx.options.get("loss"))
    total = 0
    with torch.enable_grad():
        for x, y in _labelled_batches(ctx.data, samples):
            x = ctx.on_model(x)
            y = outside_inference_mode(y).to(x.device)
            _batch_loss(loss_fn, main_output(ctx.run_batch(gm, (x,))), y).backward()
            total += x.shape[0]
    if total == 0:
        raise PlanError("criterion 'taylor': data= holds no samples")
    out = {}
    for name, role in ctx.analysis.roles.items():
        if role.kind not in PRODUCER_KINDS:
            continue
        layer = gm.get_submodule(name)
        w = _gradient_leaf(layer)
        g = w.grad if w.grad is not None else torch.zeros_like(w)
        w, g = filters(w.detach(), layer), filters(g, layer)
        prod = (w.double() * g.double()).reshape(w.shape[0], -1).sum(1) / total
        out[name] = prod.abs().cpu().numpy()
    return out


def _summed_cross_entropy(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, targets, reduction="sum")


def _loss(loss: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss is None:
        return _summed_cross_entropy
    if not callable(loss):
        raise PlanError(f"criterion 'taylor': loss= must be a function loss(output, targets) -> scalar, got {loss!r}")
    return loss


def _batch_loss(loss_fn: Callable, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of one batch; an output the loss does not fit (a sequence, a segmentation map under the default
    classification loss) gets an error that names both shapes and the option to pass."""
    try:
        return loss_fn(output, targets)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise PlanError(
            f"criterion 'taylor' could not compute its loss on the model's output {tuple(output.shape)} and the "
            f"targets {tuple(targets.shape)}: {type(e).__name__}: {e}. The default loss is "
            "F.cross_entropy(output, targets, reduction='sum'), for (N, classes) logits and (N,) labels; for other "
            "outputs pass loss=fn(output, targets), summed over the batch") from e


def _gradient_leaf(mod: nn.Module) -> torch.Tensor:
    """The weight the gradient lands on. A torch.nn.utils.prune mask's hook computes ``weight =
    weight_orig * weight_mask`` each call, so its gradient lands on ``weight_orig``; w·g is the same
    there, since a 0/1 mask squares to itself."""
    return getattr(mod, value_holders(mod, "weight")[-1])


class Taylor(Criterion):
    name = "taylor"
    options = frozenset({"calibration_samples", "loss"}) | WRITER_OPTIONS  # labelled data only: no random stand-in

    def score(self, ctx, group):
        scores = taylor_scores(ctx)
        names = {id(m): n for n, m in ctx.analysis.gm.named_modules()}
        return ctx.class_sum(group, lambda m: scores[names[id(m)]])


register("taylor", Taylor())
