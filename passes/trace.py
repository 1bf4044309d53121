"""Trace pass: model -> ``torch.fx.GraphModule`` with every node's shape recorded.

Shapes are propagated with fake tensors, so no real convolution runs: the cost is the same for a
1x3x32x32 and a 64x3x224x224 example. Analyses read ``node.meta["fxprune.shape"]`` (a ``torch.Size``,
or a tuple of them for ops that return several tensors) and ``node.meta["fxprune.value"]`` (the Python
value of non-tensor nodes such as ``x.size(1)``).
"""
from __future__ import annotations

import fnmatch
import logging
import os
import traceback
from typing import Any, Iterable, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.node import map_aggregate

from .errors import UntraceableModelError

__all__ = ["trace", "default_example_inputs", "propagate_shapes", "SHAPE", "VALUE"]

log = logging.getLogger(__name__)

SHAPE = "fxprune.shape"
VALUE = "fxprune.value"


class _LeafTracer(torch.fx.Tracer):
    """A tracer that keeps user-chosen modules opaque and remembers which module it is inside."""

    def __init__(self, leaf_names: Sequence[str], leaf_types: tuple[type, ...]):
        super().__init__()
        self.leaf_names = list(leaf_names)
        self.leaf_types = leaf_types
        self._entered: list[tuple[str, nn.Module]] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if any(fnmatch.fnmatchcase(qualname, pat) for pat in self.leaf_names):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self._entered.append((self.path_of_module(m), m))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except UntraceableModelError:
            raise
        except Exception as e:
            raise self._untraceable(e) from e
        self._entered.pop()
        return out

    def _untraceable(self, err: Exception) -> UntraceableModelError:
        path, mod = self._entered[-1] if self._entered else ("<root>", None)
        where = _user_source_line(err)
        kind = type(mod).__name__ if mod is not None else "model"
        return UntraceableModelError(
            f"torch.fx cannot trace module '{path}' ({kind}){where}: {type(err).__name__}: {err}. "
            f"Keep it opaque with leaf_modules=['{path}'] (its channels are then left unpruned), "
            "or make its forward free of data-dependent Python control flow."
        )


def _user_source_line(err: Exception) -> str:
    """The deepest traceback frame outside torch: the user's line that broke tracing."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(torch_dir)]
    frames = [f for f in frames if not f.filename.startswith(os.path.dirname(__file__))]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} (`{(f.line or '').strip()}`)"


def _split_leaves(leaf_modules: Iterable[str | type]) -> tuple[list[str], tuple[type, ...]]:
    names = [x for x in leaf_modules if isinstance(x, str)]
    types = tuple(x for x in leaf_modules if isinstance(x, type))
    return names, types


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    leaf_modules: Iterable[str | type] = (),
) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    """Symbolically trace ``model`` and propagate shapes on ``example_inputs``.

    Returns the GraphModule (sharing submodules with ``model``: never mutate it) and the example
    inputs as a tuple (the default one is made here when none was given).
    """
    names, types = _split_leaves(leaf_modules)
    tracer = _LeafTracer(names, types)
    try:
        graph = tracer.trace(model)
    except UntraceableModelError:
        raise
    except Exception as e:
        raise tracer._untraceable(e) from e
    name = type(model).__name__
    gm = torch.fx.GraphModule(tracer.root, graph, name)
    inputs = _as_tuple(example_inputs) if example_inputs is not None else default_example_inputs(model)
    try:
        propagate_shapes(gm, inputs)
    except UntraceableModelError as e:
        if example_inputs is None:
            raise UntraceableModelError(
                f"{e} -- the default example input is {tuple(inputs[0].shape)}; pass example_inputs= with "
                "the input size your model expects (e.g. torch.randn(1, 3, 32, 32) for CIFAR models)"
            ) from e
        raise
    return gm, inputs


def _as_tuple(x) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def default_example_inputs(model: nn.Module, size: int = 224) -> tuple[torch.Tensor, ...]:
    """A 1xCx224x224 random input, C taken from the first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (torch.randn(1, m.in_channels, size, size),)
    raise UntraceableModelError(
        f"cannot infer an example input for {type(model).__name__}: it has no nn.Conv2d to take the "
        "channel count from; pass example_inputs=torch.randn(...) with the shape your model expects"
    )


# Modules whose output has their input's shape: propagation skips running them (meta-tensor
# kernels of some activations go through slow Python decompositions).
_SAME_SHAPE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.modules.batchnorm._BatchNorm,
)


class _ShapeInterpreter(torch.fx.Interpreter):
    """Runs the graph once and writes every node's shape (tensors) or value (everything else)."""

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        x = args[0] if args else None
        if type(mod) in _SAME_SHAPE_TYPES and isinstance(x, torch.Tensor) and x.device.type == "meta":
            return x
        return super().call_module(target, args, kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            raise UntraceableModelError(
                f"shape propagation failed at node {n.format_node()}: {type(e).__name__}: {e}"
            ) from e
        if _has_tensor(result):
            n.meta[SHAPE] = map_aggregate(result, lambda r: r.shape if isinstance(r, torch.Tensor) else None)
        else:
            n.meta[VALUE] = result
        return result


def _same_shape_types() -> set[type]:
    """Exact classes only: a subclass may change shapes in its own forward."""
    found = set()
    for base in _SAME_SHAPE_MODULES:
        found.add(base)
        if base is nn.modules.batchnorm._BatchNorm:
            found.update({nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm})
    return found


_SAME_SHAPE_TYPES = _same_shape_types()


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(_has_tensor(y) for y in x)
    return False


def propagate_shapes(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    """Record every node's shape, trying the cheapest engine first.

    Meta tensors (no data, no compute) cover almost every model; fake tensors cover ops without meta
    kernels; a real eval-mode run is the last resort. The model's parameters are never touched.
    """
    was_training = gm.training
    gm.eval()
    try:
        for engine in (_run_on_meta, _run_on_fake, _run_for_real):
            try:
                engine(gm, inputs)
                return
            except UntraceableModelError as err:
                last = err
                log.debug("%s failed: %s", engine.__name__, err)
        raise last
    finally:
        gm.train(was_training)


class _InterpreterHost(nn.Module):
    """Lets ``torch.func.functional_call`` swap in meta parameters while the interpreter runs."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__()
        self.gm = gm

    def forward(self, *inputs):
        return _ShapeInterpreter(self.gm).run(*inputs)


def _run_on_meta(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    host = _InterpreterHost(gm)
    state = {k: torch.empty_like(v, device="meta") for k, v in host.state_dict(keep_vars=True).items()}
    meta_inputs = tuple(torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    with torch.no_grad():
        torch.func.functional_call(host, state, meta_inputs, strict=False)


def _run_on_fake(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs]
    with mode, torch.no_grad():
        _ShapeInterpreter(gm).run(*fake_inputs)


def _run_for_real(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        _ShapeInterpreter(gm).run(*inputs)
