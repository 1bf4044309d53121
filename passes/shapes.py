"""Shape pass: record every node's output shape (or, for non-tensor nodes, its Python value).

Analyses read ``node.meta["fxprune.shape"]`` (a ``torch.Size``, or a tuple of them for ops that
return several tensors) and ``node.meta["fxprune.value"]`` (e.g. the int of ``x.size(1)``).

The graph runs once on *meta* tensors (shapes and dtypes, no data), so the cost does not depend on
the input size. Running every op through its meta kernel is still the slow part of tracing (some go
through Python decompositions), so the common leaf modules and element-wise operators get their
output shape from a formula (:data:`_MODULE_SHAPES`, :func:`_binary_shape`) and only the rest are
run; a module with parameters runs with meta copies of its own tensors. Ops without meta kernels fall
back to fake tensors, then to a real eval-mode run. The model's parameters are never touched.
"""
from __future__ import annotations

import contextlib
import logging
import math
import operator
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.fx.node import map_aggregate, map_arg

from .errors import UntraceableModelError
from .graph_module import modules_of
from .modes import eval_mode

__all__ = ["propagate_shapes", "ShapeRunner", "SHAPE", "VALUE", "shapes_of", "shape_given_whole"]

log = logging.getLogger(__name__)

SHAPE = "fxprune.shape"
VALUE = "fxprune.value"

#: Leaf modules whose output has their input's shape (exact classes: a subclass may differ).
_SAME_SHAPE_TYPES = {
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm,
    nn.GroupNorm, nn.LocalResponseNorm, nn.Softmax, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus,
}


def shape_given_whole(node: torch.fx.Node) -> bool:
    """``x.reshape(shape)`` with ``shape`` computed in the graph as one value (``x.shape[:-1] + (-1,)``):
    no rewrite can edit its entries one by one."""
    return len(node.args) == 2 and isinstance(node.args[1], torch.fx.Node) and \
        isinstance(node.args[1].meta.get(VALUE), (tuple, list))


def shapes_of(inputs: Sequence[Any]) -> str:
    """``(1, 3, 32, 32), int``: what a call was given, for an error message."""
    return ", ".join(str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)


# ---- shape formulas for leaf modules ------------------------------------------------------------
def _conv_shape(conv: nn.modules.conv._ConvNd, shape: torch.Size) -> tuple[int, ...] | None:
    n = len(conv.kernel_size)
    if len(shape) not in (n + 1, n + 2) or shape[-n - 1] != conv.in_channels:
        return None
    if isinstance(conv.padding, str):
        if conv.padding != "same":
            pad = (0,) * n
        else:
            return (*shape[:-n - 1], conv.out_channels, *shape[-n:])
    else:
        pad = conv.padding
    spatial = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(shape[-n:], pad, conv.dilation, conv.kernel_size, conv.stride)
    ]
    return (*shape[:-n - 1], conv.out_channels, *spatial)


def _linear_shape(lin: nn.Linear, shape: torch.Size) -> tuple[int, ...] | None:
    if not shape or shape[-1] != lin.in_features:
        return None
    return (*shape[:-1], lin.out_features)


def _pool_size(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooling output size (aten pooling_output_shape)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool2d_shape(pool: nn.Module, shape: torch.Size) -> tuple[int, ...] | None:
    if len(shape) not in (3, 4) or getattr(pool, "return_indices", False):
        return None
    pair = torch.nn.modules.utils._pair
    k, p = pair(pool.kernel_size), pair(pool.padding)
    s = pair(pool.stride if pool.stride is not None else pool.kernel_size)
    d = pair(getattr(pool, "dilation", 1))
    hw = [_pool_size(shape[i - 2], k[i], s[i], p[i], d[i], pool.ceil_mode) for i in range(2)]
    return (*shape[:-2], *hw)


def _adaptive2d_shape(pool: nn.Module, shape: torch.Size) -> tuple[int, ...] | None:
    if len(shape) not in (3, 4) or getattr(pool, "return_indices", False):
        return None
    size = torch.nn.modules.utils._pair(pool.output_size)
    return (*shape[:-2], *(shape[-2 + i] if size[i] is None else size[i] for i in range(2)))


def _flatten_shape(flat: nn.Flatten, shape: torch.Size) -> tuple[int, ...] | None:
    if not shape:
        return None
    start, end = flat.start_dim % len(shape), flat.end_dim % len(shape)
    if start > end:
        return None
    return (*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])


_MODULE_SHAPES: dict[type, Callable[[nn.Module, torch.Size], tuple[int, ...] | None]] = {
    nn.Conv1d: _conv_shape, nn.Conv2d: _conv_shape, nn.Conv3d: _conv_shape, nn.Linear: _linear_shape,
    nn.MaxPool2d: _pool2d_shape, nn.AvgPool2d: _pool2d_shape, nn.AdaptiveAvgPool2d: _adaptive2d_shape,
    nn.AdaptiveMaxPool2d: _adaptive2d_shape, nn.Flatten: _flatten_shape,
}

#: Element-wise binary operators whose output shape is the broadcast of their operands.
#: (Division is left to its kernel: int / int gives a float, which result_type does not say.)
_BINARY = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_INPLACE = {operator.iadd, operator.isub, operator.imul}


def _binary_shape(a: Any, b: Any) -> torch.Tensor | None:
    """Meta result of ``a (op) b`` for tensors and Python numbers, or None to run the op instead."""
    tensors = [x for x in (a, b) if isinstance(x, torch.Tensor)]
    if not tensors or any(x.device.type != "meta" for x in tensors):
        return None
    if not all(isinstance(x, (torch.Tensor, int, float, bool)) for x in (a, b)):
        return None
    shape = torch.broadcast_shapes(*(x.shape for x in tensors))
    return torch.empty(shape, dtype=torch.result_type(a, b), device="meta")


def _cat_shape(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Meta result of ``torch.cat(tensors, dim)``, or None to run the op instead."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(dim, int):
        return None
    if not all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tensors):
        return None
    first = tensors[0].shape
    if not first or any(t.dim() != len(first) for t in tensors):
        return None  # 0-d tensors, or torch's legacy empty 1-D operands: let the kernel decide
    d = dim % len(first)
    if any(t.shape[:d] != first[:d] or t.shape[d + 1:] != first[d + 1:] for t in tensors):
        return None
    shape = (*first[:d], sum(t.shape[d] for t in tensors), *first[d + 1:])
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.empty(shape, dtype=dtype, device="meta")


# ---- the interpreter ----------------------------------------------------------------------------
class ShapeRunner:
    """Runs the graph once and writes every node's shape (tensors) or value (everything else).

    A plain loop rather than ``torch.fx.Interpreter``: that one's per-node bookkeeping (tracebacks,
    current-node context) costs more than the meta ops themselves.
    """

    def __init__(self, gm: nn.Module, on_meta: bool, modules: dict[str, nn.Module] | None = None):
        self.gm = gm
        self.on_meta = on_meta
        self.modules = modules_of(gm) if modules is None else modules

    def run(self, *inputs: Any) -> None:
        env: dict[torch.fx.Node, Any] = {}
        pending = list(inputs)
        nodes = list(self.gm.graph.nodes)
        last_use = {inp: node for node in nodes for inp in node.all_input_nodes}
        for node in nodes:
            if node.op == "output":
                return
            try:
                value = self.placeholder(node, pending) if node.op == "placeholder" else self.execute(node, env)
            except UntraceableModelError:
                raise
            except Exception as e:
                raise UntraceableModelError(
                    f"the model fails on the example inputs ({shapes_of(inputs)}) at {self._where(node)}: "
                    f"{type(e).__name__}: {e}. Pass example_inputs of the shape and dtype the model expects"
                ) from e
            _record(node, value)
            env[node] = value
            for inp in node.all_input_nodes:
                if last_use.get(inp) is node:
                    del env[inp]

    def _where(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self.modules[node.target]).__name__})"
        return f"node {node.format_node()}"

    @staticmethod
    def placeholder(node: torch.fx.Node, pending: list) -> Any:
        if node.target.startswith("*"):
            rest, pending[:] = list(pending), []
            return rest
        if pending:
            return pending.pop(0)
        if node.args:
            return node.args[0]  # the forward's default value
        raise UntraceableModelError(f"the model's input '{node.target}' was not given: pass it in example_inputs")

    def execute(self, node: torch.fx.Node, env: dict) -> Any:
        args = map_arg(node.args, env.__getitem__)
        kwargs = map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_module":
            return self.call_module(self.modules[node.target], args, kwargs)
        if node.op == "call_function":
            return self.call_function(node.target, args, kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*_as_called(args[1:]), **_as_called(kwargs))
        if node.op == "get_attr":
            return self.get_attr(node.target)
        raise UntraceableModelError(f"unknown node kind {node.op!r} at {node.format_node()}")

    def get_attr(self, target: str) -> Any:
        value = self.gm
        for atom in target.split("."):
            value = getattr(value, atom)
        if self.on_meta and isinstance(value, torch.Tensor):
            return torch.empty_like(value, device="meta")
        return value

    def call_module(self, mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        if not self.on_meta:
            return mod(*_as_called(args), **_as_called(kwargs))
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and not kwargs and len(args) == 1:
            if type(mod) in _SAME_SHAPE_TYPES:
                return x
            formula = _MODULE_SHAPES.get(type(mod))
            shape = formula(mod, x.shape) if formula is not None else None
            if shape is not None:
                return torch.empty(shape, dtype=x.dtype, device="meta")
        tensors = [*mod.named_parameters(), *mod.named_buffers()]
        state = {k: torch.empty_like(v, device="meta") for k, v in tensors}
        return torch.func.functional_call(mod, state, _as_called(tuple(args)), _as_called(dict(kwargs)), strict=False)

    def call_function(self, target: Callable, args: tuple, kwargs: dict) -> Any:
        if self.on_meta and target is torch.cat:
            out = _cat_shape(args, kwargs)
            if out is not None:
                return out
        if self.on_meta and not kwargs and len(args) == 2:
            if target in _BINARY:
                out = _binary_shape(*args)
                if out is not None:
                    return out
            elif target in _INPLACE and isinstance(args[0], torch.Tensor):
                out = _binary_shape(*args)
                if out is not None and out.shape == args[0].shape:
                    return args[0]
        return target(*_as_called(args), **_as_called(kwargs))


def _as_called(x: Any) -> Any:
    """``x`` with the graph's read-only lists and dicts made plain again, as the generated code passes them
    (a literal ``[0, 0, 0]`` there is a new list per call, which the callee may write to)."""
    if isinstance(x, immutable_list) or type(x) is list:
        return [_as_called(v) for v in x]
    if isinstance(x, immutable_dict) or type(x) is dict:
        return {k: _as_called(v) for k, v in x.items()}
    if type(x) is tuple:
        return tuple(_as_called(v) for v in x)
    return x


def _record(node: torch.fx.Node, value: Any) -> None:
    if _has_tensor(value):
        node.meta[SHAPE] = map_aggregate(value, lambda r: r.shape if isinstance(r, torch.Tensor) else None)
    else:
        node.meta[VALUE] = value


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(_has_tensor(y) for y in x)
    return False


# ---- engines ------------------------------------------------------------------------------------
def propagate_shapes(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    """Record every node's shape, trying the cheapest engine first.

    Meta tensors (no data, no compute) cover almost every model; fake tensors cover ops without meta
    kernels; a real eval-mode run is the last resort.
    """
    for engine in (_run_on_meta, _run_on_fake, _run_for_real):
        try:
            engine(gm, inputs)
            return
        except UntraceableModelError as err:
            last = err
            log.debug("%s failed: %s", engine.__name__, err)
    raise last


def _run_on_meta(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    meta_inputs = tuple(torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    with torch.no_grad():
        ShapeRunner(gm, on_meta=True).run(*meta_inputs)


def _run_on_fake(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs]
    with eval_mode(gm), mode, torch.no_grad(), _torch_log_silenced("torch._subclasses.fake_tensor"):
        ShapeRunner(gm, on_meta=False).run(*fake_inputs)


@contextlib.contextmanager
def _torch_log_silenced(name: str) -> Iterator[None]:
    """Fake tensors log every failing meta kernel with a full traceback (an input too small for a pooling
    window, say). The failure is raised here anyway, and the user sees it once, as an error that names
    the module and the input shape: the log would print torch's internals before it."""
    logger = logging.getLogger(name)
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def _run_for_real(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    with eval_mode(gm), torch.no_grad():
        ShapeRunner(gm, on_meta=False).run(*inputs)
