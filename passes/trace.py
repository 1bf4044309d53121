"""Trace pass: model -> ``torch.fx.GraphModule`` with every node's shape recorded (see
:mod:`passes.shapes`: meta tensors, so the cost is the same for a 1x3x32x32 and a 64x3x224x224
example).

The GraphModule's Python code is generated on its first call, not here: the analysis only walks the
graph, and most calls never run it.
"""
from __future__ import annotations

import copy
import fnmatch
import functools
import traceback
from typing import Callable, Iterable, Sequence

import torch
import torch.fx
from torch import nn

from .branches import NOT_MODEL_CODE, BranchDecider
from .errors import UntraceableModelError, warn_caller
from .graph_module import build_graph_module
from .hooks import refresh_masked
from .shapes import propagate_shapes

try:  # code generated on first call (torch >= 2.3); a plain GraphModule otherwise
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # pragma: no cover
    _GraphModule = torch.fx.GraphModule

__all__ = ["trace", "default_example_inputs", "inputs_like"]


class _LeafTracer(torch.fx.Tracer):
    """A tracer that keeps user-chosen modules opaque and remembers which module it is inside."""

    def __init__(self, leaf_names: Sequence[str], leaf_types: tuple[type, ...]):
        super().__init__()
        self.leaf_names = list(leaf_names)
        self.leaf_types = leaf_types
        self._entered: list[tuple[str, nn.Module]] = []
        self.traced_through: dict[int, _ModuleState] = {}
        self.hooked: list[str] = []  # traced-through modules with forward hooks (see _warn_hooks_traced_through)
        self.example_inputs: tuple = ()
        self._branches: BranchDecider | None = None

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        """A branch on a shape: the example input decides it, and a guard records the choice (passes.branches)."""
        return self._branch_decider().decide(obj)

    def iter(self, obj: torch.fx.Proxy):
        """A loop over sizes (``for s in x.shape[-2:]``): as many items as the example has."""
        return self._branch_decider().items(obj)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _NumberProxy(node, self)

    def _branch_decider(self) -> BranchDecider:
        if self._branches is None:
            self._branches = BranchDecider(self, self.example_inputs)
        return self._branches

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if any(fnmatch.fnmatchcase(qualname, pat) for pat in self.leaf_names):
            return True
        return super().is_leaf_module(m, qualname) or computes_as_torch_layer(type(m)) or \
            isinstance(m, torch.jit.ScriptModule)  # compiled: no Python forward to trace into

    def call_module(self, m, forward, args, kwargs):
        """A leaf becomes one node; any other module is traced through. Unlike the base tracer, no
        module-stack metadata is kept per node: nothing here reads it, and it is a third of the tracing time."""
        path = self.path_of_module(m)
        self._entered.append((path, m))
        try:
            if self.is_leaf_module(m, path):
                out = self.create_proxy("call_module", path, args, kwargs)
            else:
                if id(m) not in self.traced_through:
                    self.traced_through[id(m)] = _ModuleState(m)
                    if m._forward_hooks or m._forward_pre_hooks:
                        self.hooked.append(path)
                out = forward(*args, **kwargs)
        except UntraceableModelError:
            raise
        except Exception as e:
            raise self._untraceable(e) from e
        self._entered.pop()
        return out

    def create_arg(self, a):
        """Proxies alone (the arguments of nearly every call: ``conv(x)``, ``add(x, y)``) map straight to
        their nodes; anything else goes through the base tracer's generic walk, a sixth of tracing time."""
        kind = type(a)
        if kind is _NumberProxy:
            return a.node
        if kind is tuple and all(type(x) is _NumberProxy for x in a):
            return tuple(x.node for x in a)
        if kind is dict and not a:
            return {}
        return super().create_arg(a)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        """The graph node alone, without the base tracer's scope bookkeeping (see call_module)."""
        return self.graph.create_node(kind, target, args, kwargs, name, type_expr)

    def _untraceable(self, err: Exception) -> UntraceableModelError:
        path, mod = self._entered[-1] if self._entered else ("<root>", None)
        where = _user_source_line(err)
        cause = f"{type(err).__name__}: {err}"
        if mod is None:  # the root's own forward (call_module only sees submodules)
            return UntraceableModelError(
                f"torch.fx cannot trace the model's own forward{where}: {cause}. Make it free of data-dependent "
                "Python control flow, or keep the submodules that need it opaque with leaf_modules=[...] "
                "(their channels are then left unpruned)."
            )
        return UntraceableModelError(
            f"torch.fx cannot trace module '{path}' ({type(mod).__name__}){where}: {cause}. "
            f"Keep it opaque with leaf_modules=['{path}'] (its channels are then left unpruned), "
            "or make its forward free of data-dependent Python control flow."
        )


class _NumberProxy(torch.fx.Proxy):
    """A proxy that ``int()`` and ``float()`` accept when it holds a number computed from sizes
    (``int(math.sqrt(T))``): the example input gives the number, and a guard checks it (passes.branches)."""

    def __int__(self) -> int:
        return self.tracer._branch_decider().number(self, int)

    def __float__(self) -> float:
        return self.tracer._branch_decider().number(self, float)


#: What a subclass may define without changing what its torch.nn layer computes: how it is built and printed.
_BUILD_ONLY = frozenset({"__init__", "reset_parameters", "extra_repr", "__repr__", "__module__", "__qualname__",
                         "__doc__", "__dict__", "__weakref__", "__annotations__", "__firstlineno__",
                         "__static_attributes__", "__orig_bases__", "__parameters__"})


@functools.lru_cache(maxsize=None)
def computes_as_torch_layer(cls: type) -> bool:
    """Is ``cls`` a torch.nn layer subclass that changes only how the layer is built?

    Such a class (``Conv3DSimple(nn.Conv3d)`` in torchvision's video ResNets, a user's
    ``MyConv(nn.Conv2d)`` with its own ``__init__``) runs the torch.nn layer's own ``forward`` on its own
    parameters, so it is kept as one node like the layer itself and the layer's dependency rule and
    slicing apply. A subclass that redefines ``forward`` or anything else the layer has (a helper
    ``forward`` calls, a property) is traced through as before: what it computes is not known here.
    """
    layer = next((k for k in cls.__mro__ if k.__module__.startswith(("torch.nn.", "torch.ao.nn."))), None)
    if layer is None or layer is nn.Module or issubclass(layer, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    return computes_as(cls, layer)


@functools.lru_cache(maxsize=None)
def computes_as(cls: type, base: type) -> bool:
    """Does ``cls`` compute what its ancestor ``base`` computes: do the classes between them define
    nothing ``base`` has, apart from how the module is built and printed?"""
    own = cls.__mro__[:cls.__mro__.index(base)]
    return all(name in _BUILD_ONLY or not hasattr(base, name) for k in own for name in vars(k))


def _user_source_line(err: Exception) -> str:
    """The deepest traceback frame outside torch: the user's line that broke tracing."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(NOT_MODEL_CODE)]
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
    _refuse_wrappers(model)
    _refuse_uninitialized(model)
    refresh_masked(model)  # torch.nn.utils.prune's weights, as the model's next call would compute them
    inputs = _as_tuple(example_inputs) if example_inputs is not None else default_example_inputs(model)
    names, types = _split_leaves(leaf_modules)
    tracer = _LeafTracer(names, types)
    tracer.example_inputs = inputs
    tracer.traced_through[id(model)] = _ModuleState(model)  # the stand-in shares its attributes' objects
    try:
        graph = tracer.trace(_stand_in(model))
    except UntraceableModelError:
        raise
    except Exception as e:
        raise tracer._untraceable(e) from e
    finally:
        for state in tracer.traced_through.values():
            state.restore()
    if model._forward_hooks or model._forward_pre_hooks:
        tracer.hooked.insert(0, "")
    if tracer.hooked:
        _warn_hooks_traced_through(tracer.hooked)
    name = type(model).__name__
    gm = build_graph_module(tracer.root, graph, name, cls=_GraphModule)
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


def _warn_hooks_traced_through(paths: list[str]) -> None:
    """Hooks on a module the tracer goes into are not kept: the graph replaces the module's call.

    A hook that returns a new output is traced into the graph with the module (the root's own hooks
    not even that); a hook with side effects (one storing activations for a saliency map) ran once on
    tracer proxies, and the compact model will not call it."""
    names = ", ".join(repr(p) if p else "the model itself" for p in paths[:4]) + (" ..." if len(paths) > 4 else "")
    warn_caller(UserWarning(
        f"forward hooks on {names} are not kept in the traced graph: a hook that changes the output is traced "
        "into it (except on the model itself), but one with side effects (storing activations) saw tracer "
        "proxies once and is never called by the compact model; register such hooks on a conv, linear or norm "
        "layer of the compact model, which keep their names"))


#: The attributes every nn.Module has: parameters, buffers, children, hooks and flags (the tracer leaves them be).
_MODULE_FIELDS = frozenset(vars(nn.Module()))
_CONTAINERS = (dict, list, set)


class _ModuleState:
    """A module's attributes as they were before its ``forward`` ran under the tracer, to put back after.

    A forward may write to its module: timm's LeViT caches its attention biases in a dict when not
    training, which under the tracer stores a Proxy in the user's model (and the next trace then reads
    a node of the old graph). Attributes set or replaced are put back, and the contents of its own
    dicts, lists and sets (in place: other objects may hold them).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.attrs = dict(module.__dict__)
        self.contents = {k: copy.copy(v) for k, v in self.attrs.items()
                         if isinstance(v, _CONTAINERS) and k not in _MODULE_FIELDS}

    def restore(self) -> None:
        now = self.module.__dict__
        for key in [k for k in now if k not in self.attrs]:
            del now[key]
        for key, value in self.attrs.items():
            if now.get(key) is not value:
                now[key] = value
        for key, saved in self.contents.items():
            container = now[key]
            if container == saved:
                continue
            if isinstance(container, list):
                container[:] = saved
            else:
                container.clear()
                container.update(saved)


def _refuse_wrappers(model: nn.Module) -> None:
    """Wrappers that run a model (data parallel, torch.compile, TorchScript) hide its layers from torch.fx:
    say which module to pass instead of failing inside the trace."""
    kind = type(model).__name__
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        fix = "prune the wrapped model, model.module, and wrap the compact model again"
    elif type(model).__module__.startswith("torch._dynamo") and hasattr(model, "_orig_mod"):
        fix = "prune the module before torch.compile, model._orig_mod, and compile the compact model"
    elif isinstance(model, torch.jit.ScriptModule):
        fix = "prune the eager nn.Module it was scripted or traced from, and export the compact model again"
    else:
        return
    raise UntraceableModelError(f"got a {kind}, a wrapper torch.fx cannot trace through: {fix}")


def _stand_in(model: nn.Module) -> nn.Module:
    """A new root object sharing ``model``'s submodules, parameters and buffers, to trace instead of it.

    torch.fx stores each tensor constant it meets in ``forward`` (``torch.tensor([...])``, an index table)
    as a new attribute ``_tensor_constantN`` of the traced root: on the stand-in, not on the user's model.
    """
    root = object.__new__(type(model))  # not type(model).__new__: GraphModule's makes a new class per call
    root.__dict__.update(model.__dict__)
    for store in ("_modules", "_parameters", "_buffers"):
        root.__dict__[store] = dict(model.__dict__[store])
    return root


def _refuse_uninitialized(model: nn.Module) -> None:
    """Lazy layers (``nn.LazyConv2d``) learn their sizes on the first call; before it there is nothing to prune."""
    lazy = [name for name, m in model.named_modules()  # the modules' own dicts: a generator per module costs more
            if any(isinstance(p, nn.parameter.UninitializedTensorMixin) for p in m._parameters.values())]
    if lazy:
        where = ", ".join(f"'{n}' ({type(model.get_submodule(n)).__name__})" for n in lazy[:3])
        raise UntraceableModelError(
            f"{'modules' if len(lazy) > 1 else 'module'} {where}{' ...' if len(lazy) > 3 else ''} "
            f"{'have' if len(lazy) > 1 else 'has'} parameters not initialized yet (lazy layers): "
            "run the model once on an input, model(x), which sets their sizes, then prune it")


def _as_tuple(x) -> tuple[torch.Tensor, ...]:
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    for i, item in enumerate(inputs):
        if type(item).__module__ == "numpy":
            raise UntraceableModelError(f"example input {i} is a numpy {type(item).__name__}, not a tensor: pass "
                                        "torch.from_numpy(x) (float32 for most models)")
    return inputs


def default_example_inputs(model: nn.Module, size: int = 224) -> tuple[torch.Tensor, ...]:
    """A 1xCx224x224 random input, C taken from the first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return (torch.randn(1, m.in_channels, size, size),)
    raise UntraceableModelError(
        f"cannot infer an example input for {type(model).__name__}: it has no nn.Conv2d to take the "
        "channel count from; pass example_inputs=torch.randn(...) with the shape your model expects"
    )


def inputs_like(model: nn.Module | None, shapes, fill: Callable = torch.randn) -> tuple[torch.Tensor, ...]:
    """Inputs of ``shapes`` made by ``fill`` on ``model``'s device and in its float dtype (float32 on the CPU
    without a model, or for a model without float parameters)."""
    first = None if model is None else next((p for p in model.parameters() if p.is_floating_point()), None)
    like = {} if first is None else {"device": first.device, "dtype": first.dtype}
    return tuple(fill(*shape, **like) for shape in shapes)
