"""Verify pass: the compact model must equal the original with the removed channels masked out.

The reference is the original itself, for the duration of the check: in eval mode, its conv and
linear layers see zeros on the input channels the plan removes (temporary forward pre-hooks,
removed afterwards, so the user's model is left as it was without paying for a copy of it; a layer
whose weight the graph reads with ``F.conv2d``/``F.linear`` is masked at that call too). In
float32 the relative error must stay within ``rtol`` (1e-5); otherwise the error names the first
module whose outputs diverge, found on float64 copies (or says that the gap shrinks with the precision
there: then it is float32 rounding, amplified by an ill-conditioned network).

A pass proves little when the original's output hardly depends on its input (a randomly initialized
deep network with default BatchNorm statistics: the activations vanish and the output is the last
bias; a trained network fed noise, which it maps to one answer), since then any compact model passes.
So a passing check also runs the original on a second, random input and warns
(VacuousVerificationWarning) when the output barely moves.

A model held in half precision (float16, bfloat16) is checked on float32 copies of both models: a kernel
rounds a half-precision sum differently once it sums fewer channels, so a right compact model differs from
the masked original by ~1e-3 there, while every half-precision weight is exact in float32.

On a GPU the check runs in true float32: cuDNN convolves float32 in TF32 by default (10 mantissa bits on
Ampere and later), which alone gives gaps of ~5e-4 between a right compact model and the masked original.
TF32 is switched off for the check and the user's settings are put back afterwards.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import weakref
from typing import Any, Iterator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import UntraceableModelError, VacuousVerificationWarning, VerificationError, warn_caller
from .hooks import copy_model
from .modes import eval_mode
from .shapes import shapes_of

__all__ = ["masked_reference", "verify_against", "main_output"]

MIXING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.RNNBase, nn.modules.conv._ConvTransposeNd)

#: A pass is vacuous when the output moves by less than this many ``rtol`` between two random inputs: an
#: error in the input-dependent part of the output as large as 1/this of it would then go unseen.
SENSITIVITY_MARGIN = 100

#: Dtypes whose rounding depends on how many channels a kernel sums over (see the module docstring).
HALF_PRECISION = (torch.float16, torch.bfloat16)

#: float64 rounding is ~1e-16 per op: copies this close in float64 are the same function (see _diagnose).
FLOAT64_RTOL = 1e-9
#: A gap that shrinks this much from float32 to float64 is rounding: a pruning error does not depend on the
#: precision, while rounding shrinks ~5e8-fold (the ratio of the two machine epsilons).
ROUNDING_SHRINK = 1e-4


@contextlib.contextmanager
def masked_reference(original: nn.Module, modules: dict[str, dict], small: nn.Module | None = None
                     ) -> Iterator[nn.Module]:
    """``original`` in eval mode with its channel-mixing layers seeing zeros on removed input channels.

    A layer is masked where it is called (a forward pre-hook on conv and linear modules) and, for the
    layers whose weight ``small``'s graph reads with ``F.conv*`` / ``F.linear`` (a custom layer calling
    ``F.conv2d(x, self.weight)``, or a functional call on another layer's weight, which no module hook
    sees), where that function reads it. Only then does every torch call go through the check."""
    named = dict(original.named_modules())
    read_by_functions = functional_weight_reads(small)
    masked = weakref.WeakValueDictionary()  # id -> input a hook masked already: the weight check skips it
    read_layers, handles = [], []
    try:
        with eval_mode(original):
            for name, io in modules.items():
                mod = named.get(name)
                if io.get("in") is None or mod is None:
                    continue
                if isinstance(mod, MIXING):
                    n, channel_last = _input_width(mod)
                    hook = _mask_hook(_mask(n, io["in"]), channel_last=channel_last, masked=masked)
                    handles.append(mod.register_forward_pre_hook(hook))
                weight = getattr(mod, "weight", None)
                if name in read_by_functions and _reads_all_inputs(mod, weight, io["in"]):
                    read_layers.append((mod, _mask(weight.shape[1], io["in"])))
            with _MaskLayerCalls(read_layers, masked) if read_layers else contextlib.nullcontext():
                yield original
    finally:
        for h in handles:
            h.remove()


def functional_weight_reads(gm: nn.Module | None) -> set[str]:
    """The layers whose weight ``gm``'s graph passes to ``F.conv*`` / ``F.linear`` (their module calls were
    traced through, or never made)."""
    if not isinstance(gm, torch.fx.GraphModule):
        return set()
    found = set()
    for node in gm.graph.nodes:
        weight = node.args[1] if node.op == "call_function" and node.target in _LAYER_FUNCTIONS \
            and len(node.args) > 1 else None
        if isinstance(weight, torch.fx.Node) and weight.op == "get_attr" and weight.target.endswith(".weight"):
            found.add(weight.target[: -len(".weight")])
    return found


def _input_width(layer: nn.Module) -> tuple[int, bool]:
    """(input channels or features, whether they lie along the last dim) of a channel-mixing layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, True
    if isinstance(layer, nn.RNNBase):
        return layer.input_size, True
    return layer.in_channels, False


def _reads_all_inputs(mod: nn.Module, weight: Any, kept: list[int]) -> bool:
    """Does ``weight``'s dim 1 index all of the layer's input channels (not one group's)?"""
    return (isinstance(weight, torch.Tensor) and weight.dim() >= 2 and getattr(mod, "groups", 1) == 1
            and max(kept, default=-1) < weight.shape[1])


def _mask(n: int, kept: list[int]) -> torch.Tensor:
    mask = torch.zeros(n)
    mask[torch.as_tensor(kept, dtype=torch.long)] = 1.0
    return mask


def _masked_input(x: torch.Tensor, mask: torch.Tensor, channel_last: bool) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[-1 if channel_last else 1] = -1
    return x * mask.view(shape).to(x)


def _mask_hook(mask: torch.Tensor, channel_last: bool, masked: weakref.WeakValueDictionary):
    def hook(_mod, args):
        x = _masked_input(args[0], mask, channel_last)
        masked[id(x)] = x
        return (x,) + tuple(args[1:])

    return hook


#: The functional layers whose weight's dim 1 indexes the input channels (of an ungrouped conv).
_LAYER_FUNCTIONS = {F.conv1d: False, F.conv2d: False, F.conv3d: False, F.linear: True}


class _MaskLayerCalls(TorchFunctionMode):
    """Masks the input of ``F.conv*`` / ``F.linear`` calls whose weight is a planned layer's weight: the
    layer's weight *now* (a torch.nn.utils.prune mask computes a new one before each call of the layer)."""

    def __init__(self, layers: list[tuple[nn.Module, torch.Tensor]], masked: weakref.WeakValueDictionary):
        super().__init__()
        self.layers, self.masked = layers, masked

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        channel_last = _LAYER_FUNCTIONS.get(func)
        if channel_last is not None and len(args) > 1:
            mask = next((m for layer, m in self.layers if getattr(layer, "weight", None) is args[1]), None)
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            x = args[0]
            if mask is not None and groups == 1 and self.masked.get(id(x)) is not x:
                args = (_masked_input(x, mask, channel_last), *args[1:])
        return func(*args, **kwargs)


def main_output(out: Any) -> torch.Tensor:
    """The main output of a model: a tensor, ``.logits``, the first of a tuple, or a dict's first value."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return main_output(out[0])
    if isinstance(out, dict):
        return main_output(next(iter(out.values())))
    raise VerificationError(f"cannot compare model outputs of type {type(out).__name__}")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |a|; a ``b`` holding NaN or inf is infinitely far (a NaN would compare as within any tolerance)."""
    if not torch.isfinite(b).all():
        return float("inf")
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 convolutions and matmuls without TF32 rounding, for the duration of the check."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def verify_against(original: nn.Module, small: nn.Module, modules: dict[str, dict], inputs: tuple,
                   rtol: float = 1e-5) -> float:
    """Relative error of ``small`` against the masked original; raises VerificationError above rtol."""
    with exact_float32():
        return _verify_against(original, small, modules, inputs, rtol)


def _verify_against(original: nn.Module, small: nn.Module, modules: dict[str, dict], inputs: tuple,
                    rtol: float) -> float:
    original, small, inputs = in_float32_if_half(original, small, inputs)
    err, out = _masked_error(original, small, modules, inputs)
    if err > rtol:
        raise VerificationError(f"compact model differs from the masked original: rel err {err:.2e} > {rtol:.0e}; "
                                f"{_diagnose(original, small, modules, inputs, rtol, err)}")
    with masked_reference(original, modules, small) as ref, torch.no_grad():
        _warn_if_vacuous(ref, out, inputs, rtol)
    return err


def _masked_error(original: nn.Module, small: nn.Module, modules: dict[str, dict], inputs: tuple
                  ) -> tuple[float, torch.Tensor]:
    """(relative error of ``small`` against the masked original, the masked original's main output)."""
    with masked_reference(original, modules, small) as ref, eval_mode(small), torch.no_grad():
        a = main_output(_run_original(ref, inputs))
        b = main_output(small(*inputs))
    if a.shape != b.shape:
        raise VerificationError(f"output shape changed: {tuple(a.shape)} -> {tuple(b.shape)}")
    if not torch.isfinite(a).all():
        raise VerificationError("the masked original's output is not finite (NaN or inf) on these inputs, so there "
                                "is nothing to compare: check the model's weights and the example inputs")
    return relative_error(a, b), a


def _run_original(ref: nn.Module, inputs: tuple) -> Any:
    """The original on the inputs; inputs it cannot take are the caller's to fix, and said so before any
    comparison (the compact model would fail on them alike)."""
    try:
        return ref(*inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise UntraceableModelError(f"the original model fails on the inputs given to verify ({shapes_of(inputs)}): "
                                    f"{type(e).__name__}: {e}. Pass example_inputs the model accepts (or none: "
                                    "random inputs of the plan's input shape)") from e


def _diagnose(original: nn.Module, small: nn.Module, modules: dict[str, dict], inputs: tuple, rtol: float,
              err: float) -> str:
    """Why the check failed, found on float64 copies of both models.

    In float32 a network that cancels large activations (a BatchNorm subtracting a large mean, common in
    randomly initialized deep nets) amplifies the rounding of sums that merely run over fewer channels,
    and every module past that point looks divergent. Float64 tells the two cases apart: where the gap
    vanishes or shrinks by orders of magnitude (rounding) the pruning is right, and where it stays (a pruning
    error does not depend on the precision) the first module above ``rtol`` is the culprit, no longer hidden
    among rounding noise."""
    if _all_float64(original):
        return _locate(original, small, modules, inputs, rtol)
    try:
        original64, small64, wide = _copies_in(torch.float64, original, small, inputs)
        err64, _ = _masked_error(original64, small64, modules, wide)
    except Exception:  # a model that cannot be copied or run in float64: locate in its own precision
        return _locate(original, small, modules, inputs, rtol)
    if math.isfinite(err) and err64 <= max(FLOAT64_RTOL, err * ROUNDING_SHRINK):
        return (f"in float64 the gap is {err64:.1e}: it shrinks with the precision, so the compact model is the "
                "masked original, and float32 rounding, amplified by the network (large activations that cancel, as "
                "in a randomly initialized deep network), makes the gap. Verify a trained model, or both models in "
                "float64 (model.double())")
    return _locate(original64, small64, modules, wide, rtol) + " (found in float64)"


def _all_float64(model: nn.Module) -> bool:
    return all(t.dtype == torch.float64 for t in model.parameters() if t.is_floating_point())


def _locate(original: nn.Module, small: nn.Module, modules: dict[str, dict], inputs: tuple, rtol: float) -> str:
    with masked_reference(original, modules, small) as ref, eval_mode(small):
        return first_divergence(ref, small, modules, inputs, rtol)


def in_float32_if_half(original: nn.Module, small: nn.Module, inputs: tuple) -> tuple[nn.Module, nn.Module, tuple]:
    """float32 copies of both models and of their inputs when a model holds half-precision tensors (see the
    module docstring); else the arguments themselves."""
    if not (_holds_half(original) or _holds_half(small)):
        return original, small, inputs
    return _copies_in(torch.float32, original, small, inputs)


def _copies_in(dtype: torch.dtype, original: nn.Module, small: nn.Module, inputs: tuple
               ) -> tuple[nn.Module, nn.Module, tuple]:
    """Copies of both models, and the float inputs, in ``dtype`` (the caller's models are left as they are)."""
    inputs = tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)
    return copy_model(original).to(dtype), copy_model(small).to(dtype), inputs


def _holds_half(model: nn.Module) -> bool:
    return any(t.dtype in HALF_PRECISION for t in itertools.chain(model.parameters(), model.buffers()))


def _warn_if_vacuous(ref: nn.Module, out: torch.Tensor, inputs: tuple, rtol: float) -> None:
    """Warn when ``ref``'s output on another random input differs from ``out`` by too little for the
    comparison to mean anything (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    other = tuple(_another_input(t, g) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                  for t in inputs)
    if all(o is t for o, t in zip(other, inputs)):
        return  # no float input to vary (token ids, say)
    moved = relative_error(out, main_output(ref(*other)))
    if moved < SENSITIVITY_MARGIN * rtol:
        warn_caller(VacuousVerificationWarning(
            f"verify passed, but the original's output changes by only {moved:.1e} (relative) between two random "
            "inputs, so this check cannot tell a wrong compact model from a right one. Either noise barely reaches "
            "its output (a trained model that gives every noise image the same answer: pass a batch of real inputs "
            "as example_inputs) or its activations vanish (a randomly initialized network with default BatchNorm "
            "statistics: verify a trained model, or one whose BatchNorm statistics a few train-mode forward passes "
            "have set)."))


def _another_input(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A standard-normal tensor shaped like ``t`` and different from it (``t`` may be the same draw)."""
    while True:
        other = torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)
        if not torch.equal(other, t):
            return other


def first_divergence(ref: nn.Module, small: nn.Module, modules: dict[str, dict], inputs: tuple, rtol: float) -> str:
    """Name the first parameterized module (in execution order) whose kept outputs differ."""
    ref_out = _record_outputs(ref, inputs)
    small_out = _record_outputs(small, inputs)
    for name, a in ref_out:
        b = dict(small_out).get(name)
        if b is None:
            continue
        keep = modules.get(name, {}).get("out")
        if keep is not None:
            dim = -1 if isinstance(ref.get_submodule(name), (nn.Linear, nn.LayerNorm)) else 1
            a = a.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=a.device))
        if a.shape != b.shape:
            return f"first diverging module: '{name}' (shape {tuple(b.shape)} != expected {tuple(a.shape)})"
        e = relative_error(a, b)
        if e > rtol:
            return f"first diverging module: '{name}' (rel err {e:.2e})"
    return "no single module diverges (check ops between modules)"


def _record_outputs(model: nn.Module, inputs: tuple) -> list[tuple[str, torch.Tensor]]:
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, mod in model.named_modules():
        if any(True for _ in mod.parameters(recurse=False)):
            handles.append(mod.register_forward_hook(_recorder(name, seen)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _recorder(name: str, seen: list):
    def hook(_mod, _args, out):
        if isinstance(out, torch.Tensor):
            seen.append((name, out.detach().clone()))  # a copy: a later in-place op (out += identity) edits out

    return hook
