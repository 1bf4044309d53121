"""Per-op dependency rules, keyed by module type, function target or method name.

A rule reads its inputs' layouts (:mod:`passes.layout`), records what it learns on the
:class:`~passes.dependency.Analyzer` (unions, module roles, frozen channels, graph edits) and
returns its output layout. Rules are general: no rule looks at a module's name or at the ops around
it. Kinds of rule:

* *produce*: conv and linear create fresh channel elements (grouped convs also unite each group);
* *pass through*: element-wise and spatial ops return their input's layout;
* *unify*: add/mul/cat-on-another-dim unite their operands' elements position by position;
* *concatenate*: cat on the channel dim joins the operands' element lists;
* *reshape*: view/permute/flatten/getitem/... run the op itself on the layout array;
* *mix*: a LayerNorm over the channels, a sum over them in a contraction (attention's q·k): the
  channels may be pruned, but their group is marked ``mixing`` (the pruned model only approximates
  the masked original); ``strict=True`` freezes them instead;
* *block*: anything that mixes channels (a softmax over them, a sum, an unknown op) freezes them.

Attention, einsum and matmul rules live in :mod:`passes.attention_rules`.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .branches import GUARD, guard_reads, size_reads
from .layout import Layout, unique_ints
from .permutation import follow_channel_permutation, gather_rule
from .shapes import SHAPE, VALUE, shape_given_whole
from .trace import computes_as

__all__ = ["REGISTRY", "RuleRegistry"]


class RuleRegistry:
    """Rules by module type (most specific class wins), by function object, and by method name."""

    def __init__(self) -> None:
        self.modules: dict[type, Callable] = {}
        self.functions: dict[Any, Callable] = {}
        self.methods: dict[str, Callable] = {}

    def module(self, *types: type):
        return self._register(self.modules, types)

    def function(self, *targets: Any):
        return self._register(self.functions, targets)

    def method(self, *names: str):
        return self._register(self.methods, names)

    @staticmethod
    def _register(table: dict, keys: tuple):
        def deco(fn):
            for k in keys:
                table[k] = fn
            return fn

        return deco

    def lookup(self, an, node: torch.fx.Node) -> Callable | None:
        if node.op == "call_module":
            kind = type(an.module(node))
            for cls in kind.__mro__:
                if cls in self.modules:
                    # a subclass that redefines what the layer does (a weight-standardized conv a user
                    # keeps opaque) is not that layer: no rule, so its channels are frozen
                    return self.modules[cls] if computes_as(kind, cls) else None
            return None
        if node.op == "call_function":
            try:
                return self.functions.get(node.target)
            except TypeError:  # unhashable target
                return None
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None


REGISTRY = RuleRegistry()


# ---------------------------------------------------------------------------------------------
# helpers shared by the rules
# ---------------------------------------------------------------------------------------------
def _first_tensor(an, node: torch.fx.Node) -> torch.fx.Node | None:
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, torch.fx.Node) and an.shape(a) is not None:
            return a
    return None


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _channel_elems(an, node: torch.fx.Node, src: torch.fx.Node, dim: int, why: str) -> np.ndarray | None:
    """Elements along ``dim`` of ``src``; freezes them (and returns None) if the layout is not that simple."""
    lay = an.layout(src)
    shape = an.shape(src)
    if lay is None or shape is None:
        return None
    elems = lay.elems_along(_norm_dim(dim, len(shape)), shape) if isinstance(lay, Layout) else None
    if elems is None:
        an.freeze(lay, node, why)
    return elems


# ---------------------------------------------------------------------------------------------
# produce: convolutions and linear layers
# ---------------------------------------------------------------------------------------------
@REGISTRY.module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_rule(an, node):
    """Plain conv: new output elements. Grouped/depthwise conv: pruned so it stays a valid grouped conv,
    by whole groups or by the same positions within every group (:func:`_couple_conv_groups`)."""
    conv = an.module(node)
    shape = an.shape(node)
    src = node.args[0]
    in_elems = _channel_elems(an, node, src, 1, "conv input channels are not a simple channel axis")
    out = an.fresh(conv.out_channels, 1, len(shape))
    out_elems = out.index.reshape(-1)
    if conv.groups > 1:
        _couple_conv_groups(an, node, conv.groups, in_elems, out)
    an.record_module(node, "conv", in_elems, out_elems)
    return out


#: ``grouped_convs=`` values: how a grouped (not depthwise) conv layer is pruned.
GROUPED_CONV_MODES = ("whole", "within", "auto")


def grouped_conv_mode(mode: str, groups: int, in_channels: int, out_channels: int) -> str:
    """"whole" or "within" for one grouped conv. "auto" takes whichever offers more choices: within
    groups when a group is wider (in and out) than there are groups (RegNet's early stages: 2 groups
    of 16), whole groups otherwise (ResNeXt's 32 groups of 4). Depthwise convs (one input or output per
    group) always lose whole groups: within them, one position is the whole layer."""
    width = min(in_channels, out_channels) // groups
    if width == 1:
        return "whole"
    if mode == "auto":
        return "within" if width > groups else "whole"
    return mode


def _couple_conv_groups(an, node, g: int, in_elems: np.ndarray | None, out: Layout) -> None:
    """Tie a grouped conv's channels so every group keeps as many inputs and outputs as the others."""
    out_elems = out.index.reshape(-1)
    asked = an.grouped_convs.get(node.target, "whole") if isinstance(an.grouped_convs, dict) else an.grouped_convs
    mode = "whole" if in_elems is None else grouped_conv_mode(asked, g, len(in_elems), len(out_elems))
    an.grouped_modes[node.target] = mode
    if mode == "whole":
        _unite_conv_groups(an, node, g, in_elems, out)
        return
    for elems in (in_elems, out_elems):  # position j of every group is one unit; inputs and outputs apart
        _tie_slices_along(an, elems.reshape(g, -1), 0)


def _unite_conv_groups(an, node, g: int, in_elems: np.ndarray | None, out: Layout) -> None:
    """Group g's inputs and outputs are one unit; inputs that cannot be followed freeze the outputs."""
    if in_elems is None:
        an.freeze(out, node, "grouped conv whose input channels cannot be followed")
        return
    out_elems = out.index.reshape(-1)
    units = np.concatenate([in_elems.reshape(g, -1), out_elems.reshape(g, -1)], axis=1)  # one row per group
    an.unify(np.broadcast_to(units[:, :1], units[:, 1:].shape), units[:, 1:])


@REGISTRY.function(F.conv1d, F.conv2d, F.conv3d)
def functional_conv_rule(an, node):
    """``F.conv2d(x, self.weight, self.bias, ...)`` in a conv traced through (timm's ``Conv2dSame`` pads
    first): the module holding the weight is pruned like a conv layer. A grouped one loses whole
    groups: its weight's input dim (per group) stays, and the ``groups`` argument is rewritten."""
    weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
    shape = an.shape(node)
    owner = weight_owner(an, weight, bias, ndim=len(shape)) if shape is not None else None
    if owner is None:
        return an.opaque(node, "convolution whose weight is not a layer's parameter")
    name, (n_out, _) = owner
    groups = an.value(_arg(node, 6, "groups", 1))
    in_elems = _channel_elems(an, node, node.args[0], 1, "conv input channels are not a simple channel axis")
    out = an.fresh(n_out, 1, len(shape))
    out_elems = out.index.reshape(-1)
    if groups == 1:
        an.record_module(node, "conv", in_elems, out_elems, name=name)
        return out
    _unite_conv_groups(an, node, groups, in_elems, out)
    an.grouped_modes[name] = "whole"  # its weight's input width per group stays: whole groups only
    an.record_module(node, "conv", None, out_elems, name=name)
    an.add_edit(node, functools.partial(_rewrite_count_arg, elems=out_elems, index=6, name="groups",
                                        per=n_out // groups))
    return out


@REGISTRY.function(F.linear)
def functional_linear_rule(an, node):
    """``F.linear(x, self.weight, self.bias)`` in a linear layer traced through (a subclass with its own
    forward): the module holding the weight is pruned like a linear layer."""
    shape = an.shape(node)
    owner = weight_owner(an, _arg(node, 1, "weight"), _arg(node, 2, "bias"), ndim=2) if shape else None
    if owner is None:
        return an.opaque(node, "linear map whose weight is not a layer's parameter")
    name, (n_out, _) = owner
    in_elems = _channel_elems(an, node, node.args[0], -1, "linear input features are not a simple axis")
    out = an.fresh(n_out, len(shape) - 1, len(shape))
    an.record_module(node, "linear", in_elems, out.index.reshape(-1), name=name)
    return out


def _rewrite_count_arg(gm, node, analysis, keep, elems, index: int, name: str, per: int = 1) -> None:
    """Set argument ``index`` / ``name`` (a conv's ``groups``, a group norm's ``num_groups``) to the kept
    count of ``elems`` over ``per`` channels per unit."""
    count = int(keep[elems].sum()) // per
    if len(node.args) > index:
        node.args = (*node.args[:index], count, *node.args[index + 1:])
    else:
        node.kwargs = {**node.kwargs, name: count}


def weight_owner(an, weight, bias, ndim: int) -> tuple[str, tuple[int, int]] | None:
    """(module name, (out, in) sizes) of the layer whose ``weight`` (and ``bias``) these get_attr nodes
    read, for an ``ndim``-dim weight. In the traced graph that module holds only the tensors the graph
    reads (torch.fx copies attributes, not the layer), so it is judged by them."""
    if not isinstance(weight, torch.fx.Node) or weight.op != "get_attr" or not weight.target.endswith(".weight"):
        return None
    name = weight.target[: -len(".weight")]
    mod = an.modules.get(name)
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != ndim:
        return None
    if bias is None:
        return (name, tuple(w.shape[:2])) if getattr(mod, "bias", None) is None else None
    b = getattr(mod, "bias", None)
    if (isinstance(bias, torch.fx.Node) and bias.op == "get_attr" and bias.target == f"{name}.bias"
            and isinstance(b, torch.Tensor) and b.shape == w.shape[:1]):
        return name, tuple(w.shape[:2])
    return None


@REGISTRY.module(nn.Linear)
def linear_rule(an, node):
    lin = an.module(node)
    shape = an.shape(node)
    in_elems = _channel_elems(an, node, node.args[0], -1, "linear input features are not a simple axis")
    out = an.fresh(lin.out_features, len(shape) - 1, len(shape))
    an.record_module(node, "linear", in_elems, out.index.reshape(-1))
    return out


# ---------------------------------------------------------------------------------------------
# per-channel parameters: batch norm and friends
# ---------------------------------------------------------------------------------------------
@REGISTRY.module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                 nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def batchnorm_rule(an, node):
    src = node.args[0]
    elems = _channel_elems(an, node, src, 1, "normalized channels are not a simple channel axis")
    if elems is not None:
        an.record_module(node, "norm", None, elems)
    return an.layout(src)


@REGISTRY.module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def transposed_conv_rule(an, node):
    """A transposed conv (a decoder's upsampling) produces new channels like a conv; its weight is
    (in, out, k...), read through :mod:`passes.filters`. Grouped, it stays whole."""
    conv = an.module(node)
    if conv.groups > 1:
        return an.opaque(node, "grouped transposed conv")
    in_elems = _channel_elems(an, node, node.args[0], 1, "transposed conv input channels are not a simple axis")
    out = an.fresh(conv.out_channels, 1, len(an.shape(node)))
    an.record_module(node, "transposed", in_elems, out.index.reshape(-1))
    return out


@REGISTRY.module(nn.RNN, nn.LSTM, nn.GRU)
def recurrent_rule(an, node):
    """A recurrent layer reads its input features like a linear layer (the first layer's input
    weights, both directions), so the features it reads may be pruned: a CRNN's conv channels, flattened
    with the height into features. Its hidden units and initial state are kept (frozen): they feed back
    into every gate."""
    in_elems = _channel_elems(an, node, node.args[0], -1, "recurrent layer input features are not a simple axis")
    for state in node.all_input_nodes[1:]:
        an.freeze(an.layout(state), node, "a recurrent layer's state is not pruned")
    out = an.fresh_like(node.meta.get(SHAPE), (-1, None))  # output, h_n (and c_n): features last
    an.freeze(out, node, "a recurrent layer's hidden units are not pruned")
    if in_elems is not None:
        an.record_module(node, "recurrent", in_elems, None)
    return out


@REGISTRY.module(nn.PReLU)
def prelu_rule(an, node):
    """One slope for all channels: element-wise. One slope per channel (``nn.PReLU(C)``): per channel
    along dim 1, the slopes sliced with the channels (role "channelwise": not a norm, ``bn`` skips it)."""
    src = node.args[0]
    if an.module(node).num_parameters == 1:
        return an.layout(src)
    elems = _channel_elems(an, node, src, 1, "per-channel slopes on a channel axis that is not simple")
    if elems is not None:
        an.record_module(node, "channelwise", None, elems)
    return an.layout(src)


@REGISTRY.function(F.batch_norm, F.instance_norm)
def batch_norm_function_rule(an, node):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` (a norm layer whose own ``forward``
    calls it, e.g. timm's BatchNormAct2d): per channel along dim 1, as :func:`batchnorm_rule`; the
    per-channel tensors it reads through ``get_attr`` are sliced with the channels."""
    src = node.args[0]
    elems = _channel_elems(an, node, src, 1, "normalized channels are not a simple channel axis")
    if elems is None:
        return an.layout(src)
    _slice_per_channel_tensors(an, node, {"running_mean": 1, "running_var": 2, "weight": 3, "bias": 4}, elems)
    return an.layout(src)


def _slice_per_channel_tensors(an, node, positions: dict[str, int], elems: np.ndarray) -> None:
    """A functional norm's per-channel tensors (argument name: position): sliced with the channels when
    read through ``get_attr``; one computed in the graph cannot be sliced, so the channels freeze."""
    for name, index in positions.items():
        tensor = _arg(node, index, name)
        if not isinstance(tensor, torch.fx.Node):
            continue
        if tensor.op == "get_attr":
            an.record_attr_slice(tensor, 0, elems)
        else:
            an.freeze(elems, node, f"the norm's {name} is computed in the graph")


@REGISTRY.module(nn.GroupNorm)
def groupnorm_rule(an, node):
    """One group per channel: per channel, as batch norm. One group for all channels (PoolFormer's,
    MobileViT-v2's): statistics over the channels, so they are pruned as a LayerNorm's are (``mixing``).
    Several channels per group: frozen (the groups would have to shrink alike)."""
    gn = an.module(node)
    if gn.num_groups == gn.num_channels:
        return batchnorm_rule(an, node)
    elems = _group_norm_channels(an, node, gn.num_groups, gn.num_channels)
    if elems is not None and gn.affine:
        an.record_module(node, "norm", None, elems)
    return an.layout(node.args[0])


@REGISTRY.function(F.group_norm)
def group_norm_function_rule(an, node):
    """``F.group_norm(x, num_groups, weight, bias)`` (a GroupNorm subclass with its own forward, timm's
    GroupNorm1): as :func:`groupnorm_rule`, weight and bias sliced as parameters."""
    src = node.args[0]
    shape = an.shape(src)
    groups = an.value(_arg(node, 1, "num_groups"))
    if shape is None or len(shape) < 2 or not isinstance(groups, int):
        return an.opaque(node, "group norm with unknown groups")
    if groups == shape[1]:
        elems = _channel_elems(an, node, src, 1, "normalized channels are not a simple channel axis")
        if elems is not None:
            an.add_edit(node, functools.partial(_rewrite_count_arg, elems=elems, index=1, name="num_groups"))
    else:
        elems = _group_norm_channels(an, node, groups, shape[1])
    if elems is not None:
        _slice_per_channel_tensors(an, node, {"weight": 2, "bias": 3}, elems)
    return an.layout(src)


def _group_norm_channels(an, node, groups: int, channels: int) -> np.ndarray | None:
    """The channels of a group norm that is not per channel: mixing for one group, else frozen."""
    src = node.args[0]
    if groups != 1:
        an.freeze(an.layout(src), node, "GroupNorm mixes the channels of a group")
        return None
    elems = _channel_elems(an, node, src, 1, "normalized channels are not a simple channel axis")
    if elems is not None:
        an.mix(elems, node, "GroupNorm with one group normalizes over these channels (its statistics change "
                            "when some are removed)")
    return elems


@REGISTRY.module(nn.LayerNorm)
def layernorm_rule(an, node):
    """LayerNorm over the channel axis mixes channels (its mean and variance run over them): removing
    channels is not masking them. By default such channels are pruned anyway and the norm is sliced,
    the group marked ``mixing``; ``strict=True`` freezes them. A LayerNorm over other axes (the
    channels elsewhere) normalizes every channel on its own: channels pass through."""
    ln = an.module(node)
    elems = _layer_norm_channels(an, node, node.args[0], len(ln.normalized_shape))
    if elems is not None and ln.elementwise_affine:
        an.record_module(node, "norm", None, elems)
    return an.layout(node.args[0])


@REGISTRY.function(F.layer_norm)
def layer_norm_function_rule(an, node):
    """``F.layer_norm(x, shape, weight, bias)`` (e.g. a channels-first LayerNorm2d that permutes to
    channels-last): as :func:`layernorm_rule`; weight and bias are sliced as parameters and the
    ``normalized_shape`` constant is rewritten."""
    src = node.args[0]
    shape_arg = an.value(_arg(node, 1, "normalized_shape"))
    nd = len(shape_arg) if isinstance(shape_arg, (tuple, list)) else 1
    elems = _layer_norm_channels(an, node, src, nd)
    if elems is None:
        return an.layout(src)
    _slice_per_channel_tensors(an, node, {"weight": 2, "bias": 3}, elems)
    an.add_edit(node, _rewrite_normalized_shape)
    return an.layout(src)


def _layer_norm_channels(an, node, src, n_normalized: int) -> np.ndarray | None:
    """The channel elements a LayerNorm normalizes over (marked mixing), or None if it normalizes
    none (then it is per-channel) or cannot be followed (then they are frozen)."""
    lay, shape = an.layout(src), an.shape(src)
    if not isinstance(lay, Layout) or shape is None:
        return None
    tracked = lay.varying_dims()
    normalized = set(range(len(shape) - n_normalized, len(shape)))
    if not set(tracked) & normalized:
        return None
    if n_normalized != 1 or tracked != [len(shape) - 1]:
        an.freeze(lay, node, "LayerNorm over several dims including channels")
        return None
    elems = lay.index.reshape(-1)
    an.mix(elems, node, "LayerNorm normalizes over these channels (its statistics change when some are removed)")
    return elems


def _rewrite_normalized_shape(gm, node, analysis, keep) -> None:
    lay = analysis.node_layouts[node.name]
    kept = int(keep[lay.index.reshape(-1)].sum())
    args = list(node.args)
    if len(args) > 1:
        args[1] = (kept,)
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, "normalized_shape": (kept,)}


# ---------------------------------------------------------------------------------------------
# pass through: element-wise and spatial ops
# ---------------------------------------------------------------------------------------------
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softsign, nn.LogSigmoid,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.RReLU,
)
SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)
ELEMENTWISE_FUNCTIONS = (
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.sigmoid,
    F.tanh, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg, torch.sqrt,
    torch.clone, torch.nn.functional.alpha_dropout, operator.neg, torch.erf, torch.log, torch.log1p,
    torch.rsqrt, torch.reciprocal, torch.square, torch.sin, torch.cos, torch.floor, torch.ceil, torch.round,
    torch.sign, torch.nan_to_num, torch.logical_not, F.softsign, F.logsigmoid, F.tanhshrink, F.softshrink,
    F.hardshrink, F.threshold, F.rrelu, torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
    torch.rand_like, torch.randn_like,
)
ELEMENTWISE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clone", "contiguous", "exp", "abs", "neg", "sqrt",
    "float", "half", "double", "bfloat16", "bool", "int", "long", "to", "type_as", "detach", "mul_scalar",
    "erf", "__neg__", "log", "log1p", "rsqrt", "reciprocal", "square", "sin", "cos", "floor", "ceil", "round",
    "sign", "nan_to_num", "logical_not",
)
SPATIAL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample,
    torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
)


#: Element-wise comparisons, whose operands broadcast like ``a + b``'s.
COMPARISONS = (operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne,
               torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne)


def _stochastic_depth_targets() -> tuple:
    try:
        import importlib

        sd_mod = importlib.import_module("torchvision.ops.stochastic_depth")
    except ImportError:  # torchvision is optional for the analysis itself
        return ()
    return (sd_mod.stochastic_depth,)


@REGISTRY.module(*ELEMENTWISE_MODULES)
@REGISTRY.function(*ELEMENTWISE_FUNCTIONS, *_stochastic_depth_targets())
@REGISTRY.method(*ELEMENTWISE_METHODS)
def elementwise_rule(an, node):
    """Output channel c depends on input channel c only, on any axis (a ``zeros_like`` holds no value of its
    input, but its channel c stands where the input's channel c stood)."""
    src = _first_tensor(an, node)
    return an.layout(src) if src is not None else None


@REGISTRY.module(*SPATIAL_MODULES)
@REGISTRY.function(*SPATIAL_FUNCTIONS)
def spatial_rule(an, node):
    """Pooling and resizing act on dims 2+ of an (N, C, ...) tensor: channels pass through."""
    src = _first_tensor(an, node)
    lay = an.layout(src)
    if lay is None:
        return None
    out_shape = node.meta.get("fxprune.shape")
    if isinstance(out_shape, tuple) and not isinstance(out_shape, torch.Size):  # (values, indices)
        return tuple(_spatial_layout(an, node, lay) for _ in out_shape)
    return _spatial_layout(an, node, lay)


def _spatial_layout(an, node, lay: Layout) -> Layout:
    if any(d >= 2 for d in lay.varying_dims()):
        return an.opaque(node, "pooling over an axis that carries channels")
    return lay


# ---------------------------------------------------------------------------------------------
# unify: element-wise binary ops with broadcasting
# ---------------------------------------------------------------------------------------------
@REGISTRY.function(operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                   operator.isub, operator.imul, operator.pow, torch.add, torch.sub, torch.mul, torch.div,
                   torch.pow, torch.maximum, torch.minimum, torch.where, torch.addcmul, torch.addcdiv,
                   torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max, torch.masked_fill, torch.lerp,
                   *COMPARISONS)
@REGISTRY.method("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "__add__", "__mul__", "pow", "lerp",
                 "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max", "masked_fill", "masked_fill_",
                 "gt", "lt", "ge", "le", "eq", "ne", "addcmul", "addcmul_", "addcdiv", "addcdiv_", "where")
def binary_rule(an, node):
    """Operands broadcast against each other; channels at the same output position are united.

    An SE block's ``x * scale`` (scale of shape N,C,1,1) unites the scale's producer with x's
    channels. A parameter operand (``get_attr``, e.g. a layer scale) is sliced along with them.
    Clamps and masked fills are binary too: a bound or mask that is a tensor (``x.clamp(min=t)``)
    holds channels that must line up with x's.
    """
    out_shape = an.shape(node)
    if out_shape is None:
        return None
    nd = len(out_shape)
    tracked: list[Layout] = []
    constants: list[torch.fx.Node] = []
    for a in list(node.args) + list(node.kwargs.values()):
        if not isinstance(a, torch.fx.Node) or an.shape(a) is None:
            continue
        lay = an.layout(a)
        if lay is None:
            constants.append(a)
            continue
        tracked.append(_align(lay, nd))
    if not tracked:
        return None
    out_index = _broadcast_union(an, node, tracked)
    if out_index is None:
        return an.opaque(node, "operands carry channels along different axes")
    out = Layout.compress(torch.from_numpy(np.ascontiguousarray(out_index)))
    for c in constants:
        _bind_constant(an, node, c, out, out_shape)
    return out


def _align(lay: Layout, nd: int) -> Layout:
    """Prepend size-1 dims, as broadcasting does."""
    extra = nd - lay.ndim
    return Layout(lay.index.reshape((1,) * extra + lay.index.shape)) if extra > 0 else lay


def _broadcast_union(an, node, layouts: list[Layout]) -> np.ndarray | None:
    """Unite elements that meet at the same output position; None if the axes disagree."""
    dims = {tuple(l.varying_dims()) for l in layouts if l.varying_dims()}
    if len(dims) > 1:
        return None
    full = [l for l in layouts if l.varying_dims()]
    if not full:
        base = layouts[0].index
        for other in layouts[1:]:
            an.unify(base.reshape(-1), other.index.reshape(-1))
        return base
    base = full[0].index
    for other in full[1:]:
        if other.index.shape != base.shape:
            return None
        an.unify(base, other.index)
    for scalar in (l for l in layouts if not l.varying_dims()):
        # A single-channel operand broadcast over many channels: it may not be pruned away.
        an.freeze(scalar, node, "single channel broadcast across channels")
    return base


def _bind_constant(an, node, const: torch.fx.Node, out: Layout, out_shape) -> None:
    """A tensor operand without channel tracking: slice it if it is a parameter (or a parameter vector
    viewed with size-1 dims around it), else freeze."""
    cshape = an.shape(const)
    cnd = len(cshape)
    offset = len(out_shape) - cnd
    vector = _vector_behind(an, const)
    for d in out.varying_dims():
        cd = d - offset
        if cd < 0 or cshape[cd] == 1:
            continue
        if const.op == "get_attr":
            an.record_attr_slice(const, cd, out.index.reshape(-1))
        elif vector is not None and len(out.varying_dims()) == 1:
            an.record_attr_slice(vector, 0, out.index.reshape(-1))
        else:
            an.freeze(out, node, f"operand {const.name} is a computed constant spanning the channels")


def _vector_behind(an, const: torch.fx.Node) -> torch.fx.Node | None:
    """The 1-D parameter ``const`` views with size-1 dims only: ``gamma.reshape(1, -1, 1, 1)`` (timm's layer
    scale). The view's sizes are 1 and -1, so it fits the sliced vector as it is. None otherwise."""
    while const.op == "call_method" and const.target in ("view", "reshape", "unsqueeze"):
        sizes = list(const.args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = list(sizes[0])
        if const.target != "unsqueeze" and not (sizes.count(-1) == 1 and all(v in (1, -1) for v in sizes)):
            return None
        const = const.args[0]
    shape = an.shape(const) if isinstance(const, torch.fx.Node) else None
    return const if const.op == "get_attr" and shape is not None and len(shape) == 1 else None


# ---------------------------------------------------------------------------------------------
# concatenate
# ---------------------------------------------------------------------------------------------
@REGISTRY.function(torch.cat, torch.concat, torch.concatenate)
def cat_rule(an, node):
    """cat on the channel axis joins element lists (DenseNet, inception); on another axis it unites them.
    The pieces may be one node holding them all (``torch.cat(x.chunk(2, 1)[::-1], 1)``)."""
    tensors = _arg(node, 0, "tensors")
    dim = _arg(node, 1, "dim", 0)
    out_shape = an.shape(node)
    nd = len(out_shape)
    dim = _norm_dim(an.value(dim), nd)
    layouts, shapes = _pieces(an, tensors)
    if layouts is None:
        return an.opaque(node, "concatenation of a sequence whose pieces cannot be followed")
    if any(l is None for l in layouts):
        return _cat_with_constants(an, node, tensors, layouts, dim)
    if all(l.elems_along(dim, shape) is not None for l, shape in zip(layouts, shapes)):
        elems = np.concatenate([l.elems_along(dim, shape) for l, shape in zip(layouts, shapes)])
        return Layout.along(elems, dim, nd)
    if all(dim not in l.varying_dims() for l in layouts):
        out = _broadcast_union(an, node, layouts)
        if out is not None:
            return Layout(out)
    return an.opaque(node, "concatenation mixes channel axes")


def _pieces(an, tensors) -> tuple[list | None, list | None]:
    """Layouts and shapes of the tensors a cat or stack joins: a list of nodes, or one node holding them
    all (None, None when that node's pieces are not all followed)."""
    if not isinstance(tensors, torch.fx.Node):
        return [an.layout(t) for t in tensors], [an.shape(t) for t in tensors]
    layouts, shapes = an.layout(tensors), tensors.meta.get(SHAPE)
    if isinstance(layouts, tuple) and isinstance(shapes, tuple) and all(isinstance(l, Layout) for l in layouts):
        return list(layouts), list(shapes)
    return None, None


@REGISTRY.function(torch.stack)
def stack_rule(an, node):
    """``torch.stack`` of equally shaped tensors: channels at the same position are united (as ``a + b``
    would), and the new axis carries none of them (CrossViT's stacked branch tokens)."""
    layouts, _ = _pieces(an, _arg(node, 0, "tensors"))
    if layouts is None:
        return an.opaque(node, "stack of a sequence whose pieces cannot be followed")
    if all(l is None for l in layouts):
        return None  # no channels stacked
    if any(l is None for l in layouts):
        return an.opaque(node, "stack of channels with untracked tensors")
    out = _broadcast_union(an, node, layouts)
    if out is None:
        return an.opaque(node, "stack of tensors whose channels lie along different axes")
    nd = len(an.shape(node))
    return Layout(np.expand_dims(out, _norm_dim(an.value(_arg(node, 1, "dim", 0)), nd)))


def _cat_with_constants(an, node, tensors, layouts, dim):
    tracked = [l for l in layouts if l is not None]
    if not tracked or any(dim in l.varying_dims() for l in tracked):
        return an.opaque(node, "concatenation of channels with untracked tensors")
    out = _broadcast_union(an, node, tracked)
    if out is None:
        return an.opaque(node, "concatenation mixes channel axes")
    lay = Layout(out)
    for t, l in zip(tensors, layouts):
        if l is None:
            _bind_constant(an, node, _through_expand(t), lay, an.shape(node))
    return lay


def _through_expand(t: torch.fx.Node) -> torch.fx.Node:
    """``param.expand(N, -1, -1)`` feeds the parameter itself to a cat (a class token)."""
    while t.op == "call_method" and t.target == "expand" and isinstance(t.args[0], torch.fx.Node):
        t = t.args[0]
    return t


# ---------------------------------------------------------------------------------------------
# reshape: run the op on the layout array
# ---------------------------------------------------------------------------------------------
#: Ops that only move values, so that they move the kept channels of a pruned tensor as they move the layout
#: (``flip`` reverses the kept ones, ``repeat`` repeats each kept one): not ``roll``, whose shift is
#: positional (see roll_rule).
LAYOUT_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand",
                  "unflatten", "movedim", "t", "swapaxes", "expand_as", "view_as", "reshape_as", "flip", "repeat")
LAYOUT_FUNCTIONS = (torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.unsqueeze,
                    torch.squeeze, torch.movedim, torch.t, torch.swapaxes, torch.flip)
RESHAPES_WITH_SIZES = ("view", "reshape", "expand")
#: Same values as the view, copying where the broadcast layout's strides allow no view.
_COPYING_TWIN = {"view": "reshape", "view_as": "reshape_as"}


@REGISTRY.module(nn.Flatten, nn.Unflatten)
@REGISTRY.function(*LAYOUT_FUNCTIONS)
@REGISTRY.method(*LAYOUT_METHODS)
def reshape_rule(an, node):
    """Follow channels through any data movement by applying the op to the layout itself.

    When a view splits the channel axis into several axes (C -> (g, C/g)), the channels at the same inner
    index of every outer slice are united, so pruning keeps the split even; unless the view starts a chain
    that only permutes the channels (a channel shuffle), which the rewrite turns into a gather.
    """
    src = _first_tensor(an, node)
    lay = an.layout(src)
    has_sizes = node.op == "call_method" and node.target in RESHAPES_WITH_SIZES or node.target is torch.reshape
    if lay is None:
        if has_sizes and any(isinstance(a, torch.fx.Node) for a in _flat(node.args[1:])):
            an.shape_edits[node.name] = "sizes"  # sizes read from another tensor may change
        return None
    if node.target == "repeat" and any(isinstance(a, torch.fx.Node) for a in _flat(node.args[1:])):
        return an.opaque(node, "repeat by a count computed at run time (it may read a channel count)")
    out = _apply_to_layout(an, node, src, lay)
    if out is None:
        return an.opaque(node, "cannot follow channels through this reshape")
    donors = [a for a in an.tensor_inputs(node) if a is not src]
    if donors and not _tie_to_shape_donors(an, out, donors):
        return an.opaque(node, "takes its shape from a tensor whose channels lie along other axes")
    if has_sizes and shape_given_whole(node) and not _computed_shape_follows(an, node, out):
        return an.opaque(node, "a reshape to a shape computed in the graph that fixes a channel count")
    if not _splits_a_permutation(an, node, src, lay, out):
        out = _keep_split_even(an, out)
    if has_sizes:
        an.shape_edits[node.name] = "sizes"
        if not lay.varying_dims():  # one channel: which size of 1 is its axis cannot be told, so it stays
            an.freeze(lay, node, "a reshape with explicit sizes of a one-channel tensor")
    return out


def _computed_shape_follows(an, node: torch.fx.Node, out: Layout) -> bool:
    """A shape computed in the graph as a whole cannot be edited by the rewrite, so it is only right after
    pruning if it infers every channel axis of the result (-1) and reads no channel count (timm's MaxViT:
    ``x.reshape(restore_shape + (-1,))`` with ``restore_shape = x.shape[:-1]`` of a channels-last tensor).
    Channel counts it reads are frozen where they are read: pruned, they would change the shape."""
    reads_channels = False
    for tensor, dims in size_reads(node.args[1]):
        lay = an.layout(tensor)
        channel_dims = set(lay.varying_dims()) if isinstance(lay, Layout) else set()
        if channel_dims and (dims is None or dims & channel_dims):
            an.freeze(lay, node, "a shape computed in the graph reads this channel count")
            reads_channels = True
    shape = node.args[1].meta[VALUE]
    return not reads_channels and len(shape) == out.ndim and all(shape[d] == -1 for d in out.varying_dims())


def _flat(args) -> list:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple)) else [a])
    return out


def _apply_to_layout(an, node, src, lay: Layout) -> Layout | None:
    dense = lay.dense(an.shape(src))

    def sub(a):
        if a is src:
            return dense
        if isinstance(a, torch.fx.Node):  # a tensor here only lends its shape (reshape_as, expand_as)
            shape = an.shape(a)
            return an.value(a) if shape is None else torch.zeros((), dtype=torch.int64).expand(tuple(shape))
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        if isinstance(a, slice):  # x[:, :n] with n read at run time (PiT's class tokens, DaViT's crop)
            return slice(sub(a.start), sub(a.stop), sub(a.step))
        return a

    args = [sub(a) for a in node.args]
    kwargs = {k: sub(v) for k, v in node.kwargs.items()}
    try:
        if node.op == "call_module":
            result = an.module(node)(*args, **kwargs)
        elif node.op == "call_method":
            method = _COPYING_TWIN.get(node.target, node.target)  # the layout is a broadcast view (Layout.dense)
            result = getattr(args[0], method)(*args[1:], **kwargs)
        else:
            result = node.target(*args, **kwargs)
    except Exception:
        return None
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(an.shape(node)):
        return None
    return Layout.compress(result)


def _tie_to_shape_donors(an, out: Layout, donors: list[torch.fx.Node]) -> bool:
    """``t.reshape_as(other)`` (view_as, expand_as) reads ``other``'s shape when it runs, so once pruned both
    must shrink alike: each position's channel is tied to ``other``'s channel there. False when their
    channels lie along different axes (or ``other`` has none where ``t`` has), which no tie makes shrink alike."""
    for donor in donors:
        lay = an.layout(donor)
        dims = lay.varying_dims() if isinstance(lay, Layout) else []
        if dims != out.varying_dims():
            return False
        if dims:
            an.unify(out.index, lay.index)
    return True


def _splits_a_permutation(an, node, src, lay: Layout, out: Layout) -> bool:
    """Is ``node`` part of a chain that only permutes channels (a channel shuffle), which the rewrite
    replaces by a gather so that it ties no channels (see :mod:`passes.permutation`)?"""
    if node.name in an.free_reshapes:
        return True
    dims = lay.varying_dims()
    return len(dims) == 1 and len(out.varying_dims()) > 1 and follow_channel_permutation(an, node, src, dims[0])


def _keep_split_even(an, lay: Layout) -> Layout:
    dims = lay.varying_dims()
    if len(dims) <= 1:
        return lay
    _tie_positions_across(an, lay.index, dims[-1])
    return lay


def _tie_positions_across(an, index: np.ndarray, axis: int) -> None:
    """Position j of ``axis`` is one unit across all the other axes: whatever is kept, every slice along
    the other axes keeps the same positions (a view's grid, chunked heads)."""
    rows = np.moveaxis(index, axis, 0).reshape(index.shape[axis], -1)
    an.unify(rows[:, :1], rows)


def _tie_slices_along(an, index: np.ndarray, axis: int) -> None:
    """Every slice along ``axis`` is kept or removed in lockstep with the first, so none ever empties and
    their count never changes (unbound or picked q, k, v)."""
    slices = np.moveaxis(index, axis, 0)
    an.unify(slices[:1], slices)


@REGISTRY.function(operator.getitem)
def getitem_rule(an, node):
    """Indexing a tuple picks a layout; indexing a tensor off the channel axes moves data only."""
    src, idx = node.args[0], node.args[1]
    lay = an.layout(src)
    if isinstance(lay, tuple):
        return lay[idx]
    if lay is None:
        return None
    shape = an.shape(src)
    if shape is None:
        return None
    restricted = _restricted_channel_axes(idx, lay, len(shape))
    if restricted is None:
        return an.opaque(node, "indexing selects channels")
    if restricted and all(type(item) is int for _, item, _ in restricted):
        if not _tie_picked_axes(an, lay, [axis for _, _, axis in restricted]):
            return an.opaque(node, "indexing picks single channels")
        return reshape_rule(an, node)
    if restricted:
        if any(not _is_unit_slice(item) or lay.elems_along(axis, shape) is None for _, item, axis in restricted):
            return an.opaque(node, "indexing selects channels other than by a range")
        an.add_edit(node, _rewrite_channel_ranges)  # x[:, :k] (GhostNet): the range shrinks to its kept channels
        out = reshape_rule(an, node)
        if isinstance(out, Layout):
            an.subsets.append(out.all_elems())  # an empty range would leave ops a tensor of no channels
        return out
    return reshape_rule(an, node)


def _tie_picked_axes(an, lay: Layout, axes: list[int]) -> bool:
    """``qkv[0]`` of a (3, heads, head_dim) grid of channels (CaiT): every slice along a picked axis is
    kept or removed in lockstep with the others, so no slice ever empties and the picked index stays
    valid. False when channels vary along the picked axes only: each pick would be a single channel."""
    if not set(lay.varying_dims()) - set(axes):
        return False
    for axis in axes:
        _tie_slices_along(an, lay.index, axis)
    return True


def _restricted_channel_axes(idx, lay: Layout, ndim: int) -> list[tuple[int, Any, int]] | None:
    """(position in the index, index item, axis) for every item that restricts an axis along which
    channels vary; None when the index is computed in the graph (not known here)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, torch.fx.Node) for i in items):
        return None
    found, axis = [], 0
    for pos, it in enumerate(items):
        if it is Ellipsis:
            axis = ndim - (len(items) - pos - 1)
            continue
        if it is None:
            continue
        restricts = not (isinstance(it, slice) and it == slice(None))
        if restricts and axis in lay.varying_dims():
            found.append((pos, it, axis))
        axis += 1
    return found


def _is_unit_slice(item) -> bool:
    return isinstance(item, slice) and item.step in (None, 1) and \
        all(b is None or type(b) is int for b in (item.start, item.stop))


def _rewrite_channel_ranges(gm, node, analysis, keep) -> None:
    """Each channel range ``a:b`` of the index becomes the range its kept channels occupy after pruning
    (pruning keeps the order, so they stay contiguous)."""
    src, idx = node.args[0], node.args[1]
    lay, shape = analysis.node_layouts[src.name], src.meta["fxprune.shape"]
    items = list(idx) if isinstance(idx, tuple) else [idx]
    for pos, item, axis in _restricted_channel_axes(idx, lay, len(shape)):
        start, stop, _ = item.indices(shape[axis])
        kept_before = np.concatenate(([0], np.cumsum(keep[lay.elems_along(axis, shape)])))
        items[pos] = slice(int(kept_before[start]), int(kept_before[max(start, stop)]))
    node.args = (src, tuple(items) if isinstance(idx, tuple) else items[0]) + tuple(node.args[2:])


# ---------------------------------------------------------------------------------------------
# split and chunk
# ---------------------------------------------------------------------------------------------
@REGISTRY.function(torch.chunk, torch.split)
@REGISTRY.method("chunk", "split")
def split_rule(an, node):
    """Pieces of the channel axis are pruned apart: the rewrite makes every chunk or split a split into
    the pieces' kept counts, so a piece keeps exactly its own kept channels (ShuffleNet's halves, an
    uneven chunk). Ops that need equal pieces (``a + b``) tie them by their own rules. Where channels
    vary along other axes too (q, k, v chunked after a split into heads), every position of the split
    axis is kept or removed in all of them at once, so the pieces stay rectangular."""
    src = _first_tensor(an, node)
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    pieces = node.meta[SHAPE]
    dim = _norm_dim(an.value(_arg(node, 2, "dim", 0)), len(shape))
    if dim not in lay.varying_dims():
        return tuple(lay for _ in pieces)
    if len(lay.varying_dims()) > 1:
        _tie_positions_across(an, lay.index, dim)
    parts = np.split(lay.index, np.cumsum([p[dim] for p in pieces])[:-1], axis=dim)
    an.shape_edits[node.name] = "split_sections"
    an.subsets.extend(unique_ints(p) for p in parts)  # a piece pruned to no channel would leave its readers nothing
    return tuple(Layout(np.ascontiguousarray(p)) for p in parts)


REGISTRY.function(torch.index_select)(gather_rule)
REGISTRY.method("index_select")(gather_rule)


@REGISTRY.function(torch.unbind)
@REGISTRY.method("unbind")
def unbind_rule(an, node):
    """``t.unbind(d)``: piece ``i`` is ``t.select(d, i)``. When channels vary along ``d`` (timm's packed
    q, k, v), the pieces are pruned in lockstep, so their count never changes;
    unbinding a tensor whose channels vary along ``d`` alone would make each channel a piece: frozen."""
    src = _first_tensor(an, node)
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    if not isinstance(lay, Layout) or shape is None:
        return an.opaque(node, "unbind of a tensor whose channels cannot be followed")
    dim = _norm_dim(an.value(_arg(node, 1, "dim", 0)), len(shape))
    if dim not in lay.varying_dims():
        return tuple(Layout(np.squeeze(lay.index, dim)) for _ in range(shape[dim]))
    if lay.varying_dims() == [dim]:
        return an.opaque(node, "unbind makes every channel a tensor of its own")
    _tie_slices_along(an, lay.index, dim)
    return tuple(Layout(np.ascontiguousarray(np.take(lay.index, i, axis=dim))) for i in range(shape[dim]))


# ---------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------
@REGISTRY.function(F.pad)
def pad_rule(an, node):
    """Zero channels padded in front of / behind the channel axis become elements of their own."""
    src = node.args[0]
    pad = an.value(_arg(node, 1, "pad"))
    mode = an.value(_arg(node, 2, "mode", "constant"))
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    nd = len(shape)
    out = lay
    for d in lay.varying_dims():
        p = nd - 1 - d
        if 2 * p + 1 >= len(pad):
            continue
        front, back = pad[2 * p], pad[2 * p + 1]
        if (front, back) == (0, 0):
            continue
        if front < 0 or back < 0 or mode != "constant" or len(lay.varying_dims()) != 1:
            return an.opaque(node, "padding that crops or copies channels")
        before, after = an.uf.new_space(front), an.uf.new_space(back)
        elems = np.concatenate([before, lay.elems_along(d, shape), after])
        an.pads[node.name] = (before, after)
        out = Layout.along(elems, d, nd)
    return out


@REGISTRY.module(nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
def pad_module_rule(an, node):
    """Pad modules pad spatial axes only (their padding tuple has no channel entry)."""
    return spatial_rule(an, node)


# ---------------------------------------------------------------------------------------------
# reductions and channel-mixing ops
# ---------------------------------------------------------------------------------------------
@REGISTRY.function(torch.mean, torch.sum, torch.amax, torch.amin)
@REGISTRY.method("mean", "sum", "amax", "amin")
def reduce_rule(an, node):
    """Reducing over spatial axes keeps channels; reducing over channels mixes them (frozen)."""
    src = _first_tensor(an, node)
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    dims = an.value(_arg(node, 1, "dim", None))
    keepdim = bool(an.value(_arg(node, 2, "keepdim", False)))
    nd = len(shape)
    dims = list(range(nd)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    dims = sorted(_norm_dim(d, nd) for d in dims)
    if set(dims) & set(lay.varying_dims()):
        return an.opaque(node, "reduction over channels")
    index = lay.index
    if keepdim:
        return lay
    return Layout(np.squeeze(index, axis=tuple(dims)) if dims else index)


@REGISTRY.function(torch.roll)
@REGISTRY.method("roll")
def roll_rule(an, node):
    """A roll along other axes (Swin's shifted windows roll H and W) moves values within each channel:
    channels pass through. Along a channel axis, or over the flattened tensor, its shift counts
    positions, and pruning changes what a position holds: those channels freeze."""
    src = _first_tensor(an, node)
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    dims = an.value(_arg(node, 2, "dims", None))
    if dims is None or dims == ():
        return an.opaque(node, "roll over the flattened tensor") if lay.varying_dims() else lay
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return an.opaque(node, "roll over axes computed at run time")
    if {_norm_dim(d, len(shape)) for d in dims} & set(lay.varying_dims()):
        return an.opaque(node, "roll along a channel axis: its shift counts positions, which pruning changes")
    return lay


@REGISTRY.function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, F.normalize)
@REGISTRY.method("softmax", "log_softmax")
def softmax_rule(an, node):
    """Softmax or L2 normalization along ``dim``: channels pass through unless ``dim`` is a channel axis
    (each output channel would then depend on all of them)."""
    src = _first_tensor(an, node)
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    dim = an.value(_arg(node, 2, "dim", 1) if node.target is F.normalize else _arg(node, 1, "dim", None))
    if dim is None or _norm_dim(dim, len(shape)) in lay.varying_dims():
        return an.opaque(node, "softmax or normalization over channels")
    return lay


@REGISTRY.method("size", "dim", "numel")
@REGISTRY.function(getattr, len)
def metadata_rule(an, node):
    """Reading a size is not a use of the channels (the rewritten graph reads the new size)."""
    return None


@REGISTRY.function(GUARD)
def guard_rule(an, node):
    """A guard on a branch the trace took or a number it fixed (passes.branches): the channel counts it
    reads must stay."""
    for src, dims in guard_reads(node):
        lay = an.layout(src)
        if lay is None:
            continue
        channel_dims = set(lay.varying_dims()) if isinstance(lay, Layout) else None
        if dims is None or channel_dims is None and dims or \
                channel_dims is not None and any(d % lay.ndim in channel_dims for d in dims):
            an.freeze(lay, node, "a branch taken or a number fixed while tracing depends on this channel count")
    return None


# attention, einsum and matmul rules register themselves into REGISTRY
from . import attention_rules  # noqa: E402,F401
