"""Branches on shapes: decided while tracing from the example input, and guarded in the graph.

torch.fx cannot follow ``if h % 2: x = F.pad(x, ...)`` or ``max(pad, 0)`` when ``h`` comes from
``x.shape``: the condition is a graph node, not a value. The example input gives it a value. When a
condition is turned into a bool, the graph built so far runs on meta tensors of the example inputs
(shapes only, no data, incrementally: each node once), the branch the example takes is traced, and a
guard ``torch._assert`` goes into the graph, so an input that would take the other branch stops with
an error naming the source line instead of silently running the wrong one (as ``torch.export`` guards
its specializations). ``int()`` and ``float()`` of a number computed from sizes (``int(math.sqrt(T))``)
take the example's number the same way, guarded to stay that number. A condition on tensor *values*
has no meta value: it stays untraceable.

The dependency rule for guards (``guard_rule`` in :mod:`passes.op_rules`, from :func:`guard_reads`)
freezes the channels whose count a guard reads: pruning them would flip the guard.
"""
from __future__ import annotations

import operator
import os
import traceback
from typing import Any, Iterator, Sequence

import torch
import torch.fx
from torch.fx.proxy import TraceError

try:  # torch.fx's patches (nn.Module.__call__ -> the tracer) lifted while the example runs
    from torch.fx._symbolic_trace import _maybe_revert_all_patches as _untraced
except ImportError:  # pragma: no cover
    from contextlib import nullcontext as _untraced

from .errors import PASSES_DIR
from .shapes import ShapeRunner

__all__ = ["BranchDecider", "GUARD", "guard_reads", "size_reads", "value_ancestry"]

#: The function a guard node calls.
GUARD = torch._assert

#: Where torch's and the passes' frames live: not the model's code. With the separator, since
#: torchvision's files (a model's code) share torch's path prefix.
NOT_MODEL_CODE = (os.path.dirname(torch.__file__) + os.sep, PASSES_DIR)


class BranchDecider:
    """Evaluates conditions of the graph being traced on the example inputs and guards the choice."""

    def __init__(self, tracer: torch.fx.Tracer, inputs: Sequence[Any]):
        self.tracer = tracer
        root = tracer.root
        self.runner = ShapeRunner(root, on_meta=True, modules=dict(root.named_modules()))
        self.pending = [torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x for x in inputs]
        self.env: dict[torch.fx.Node, Any] = {}
        self.last: torch.fx.Node | None = None

    def decide(self, cond: torch.fx.Proxy) -> bool:
        """The branch the example input takes at ``bool(cond)``; a guard on it joins the graph."""
        value = self._shape_value(cond)
        taken = bool(value)
        if taken and isinstance(value, bool):
            check = cond
        else:  # == 0 / != 0 rather than `not`: a re-trace of the code and torch.jit.trace both keep it a value
            check = self.tracer.create_proxy("call_function", operator.ne if taken else operator.eq, (cond, 0), {})
        self._guard(check, "takes another branch")
        return taken

    def number(self, size: torch.fx.Proxy, kind: type) -> int | float:
        """``int(x)`` / ``float(x)`` of a value computed from sizes (``int(math.sqrt(T))``): the example's
        number, constant from here on, with a guard that the input gives the same."""
        value = kind(self._shape_value(size))
        converted = self.tracer.create_proxy("call_function", kind, (size,), {})
        same = self.tracer.create_proxy("call_function", operator.eq, (converted, value), {})
        self._guard(same, "gives another number", f" ({value!r})")
        return value

    def _shape_value(self, proxy: torch.fx.Proxy) -> Any:
        """The Python number ``proxy`` holds on the example input; untraceable unless it comes from shapes."""
        value = self._value(proxy.node)
        if isinstance(value, torch.Tensor) or not isinstance(value, (bool, int, float)):
            raise TraceError("symbolically traced variables cannot be used as inputs to control flow "
                             "(the condition depends on tensor values, not only on shapes)")
        ancestry, _ = value_ancestry(proxy.node, lambda n: isinstance(self.env.get(n), torch.Tensor))
        if any(n.op == "call_function" and n.target is getattr and n.args[1] == "device" for n in ancestry):
            raise TraceError("symbolically traced variables cannot be used as inputs to control flow "
                             "(the condition depends on a tensor's device, which tracing on shapes cannot see)")
        return value

    def items(self, seq: torch.fx.Proxy) -> Iterator[torch.fx.Proxy]:
        """``for s in x.shape[-2:]``: a sequence of sizes is iterated item by item (its length is the
        tensor's rank, which the graph's indexing fixes anyway)."""
        value = self._value(seq.node)
        if not isinstance(value, (tuple, list)) or any(isinstance(v, torch.Tensor) for v in value):
            raise TraceError("Proxy object cannot be iterated: only sequences of sizes are (here, a "
                             f"{type(value).__name__} on the example input)")
        return iter([seq[i] for i in range(len(value))])

    def _value(self, node: torch.fx.Node) -> Any:
        """Run the graph's nodes not run yet, up to ``node``, on meta tensors."""
        if node not in self.env:
            n = self.last.next if self.last is not None else next(iter(self.tracer.graph.nodes))
            while True:
                if n not in self.env:
                    self.env[n] = self._run(n)
                self.last = n
                if n is node:
                    break
                n = n.next
        return self.env[node]

    def _run(self, node: torch.fx.Node) -> Any:
        try:
            with torch.no_grad(), _untraced():
                if node.op == "placeholder":
                    return self.runner.placeholder(node, self.pending)
                return self.runner.execute(node, self.env)
        except Exception as e:
            raise TraceError(f"symbolically traced variables cannot be used as inputs to control flow (the "
                             f"condition could not be evaluated on the example input's shapes at "
                             f"{node.format_node()}: {type(e).__name__}: {e})") from e

    def _guard(self, check: torch.fx.Proxy, what: str, example: str = "") -> None:
        message = (f"this input's shape {what}{_caller_line()} than the example input the model was "
                   f"pruned with{example}; the pruned graph holds the example's choice only: prune with an example input "
                   f"shaped like this one")
        self.tracer.create_proxy("call_function", GUARD, (check, message), {})


def _caller_line() -> str:
    """The innermost frame of the model's own code: the line that branched."""
    stack = traceback.extract_stack()
    for f in reversed(stack):
        if not f.filename.startswith(NOT_MODEL_CODE):
            return f" at {f.filename}:{f.lineno} (`{(f.line or '').strip()}`)"
    return ""


# ---- what a guard reads -------------------------------------------------------------------------
def value_ancestry(start: torch.fx.Node, is_tensor) -> tuple[set[torch.fx.Node], list[tuple[torch.fx.Node, torch.fx.Node]]]:
    """The non-tensor nodes a value is computed from (``start`` included), and the (reader, tensor) pairs
    where that computation reads a tensor (its size, dtype, device)."""
    ancestry: set[torch.fx.Node] = set()
    readers: list[tuple[torch.fx.Node, torch.fx.Node]] = []
    todo = [start]
    while todo:
        node = todo.pop()
        if node in ancestry:
            continue
        ancestry.add(node)
        for a in node.all_input_nodes:
            if is_tensor(a):
                readers.append((node, a))
            else:
                todo.append(a)
    return ancestry, readers


def guard_reads(guard: torch.fx.Node) -> list[tuple[torch.fx.Node, set[int] | None]]:
    """The tensors whose sizes a guard's condition is computed from, with the dims it reads
    (None: every dim, or a use not understood here)."""
    cond = guard.args[0]
    return size_reads(cond) if isinstance(cond, torch.fx.Node) else []


def size_reads(value: torch.fx.Node) -> list[tuple[torch.fx.Node, set[int] | None]]:
    """The tensors whose sizes ``value`` (a number or a shape computed in the graph) is computed from,
    with the dims it reads (None: every dim, or a use not understood here)."""
    ancestry, readers = value_ancestry(value, _is_tensor)
    # a read that is the value itself (``x.reshape(y.shape)``) passes on every dim
    return [(tensor, None if reader is value else _dims_read(reader, tensor, ancestry)) for reader, tensor in readers]


def _is_tensor(node: torch.fx.Node) -> bool:
    return node.meta.get("fxprune.shape") is not None


def _dims_read(reader: torch.fx.Node, tensor: torch.fx.Node, ancestry: set[torch.fx.Node]) -> set[int] | None:
    """The dims of ``tensor`` whose size ``reader`` passes on to the condition (none for dtype/device/ndim)."""
    op, target, args = reader.op, reader.target, reader.args
    if op == "call_method" and target == "dim" or \
            op == "call_function" and target is getattr and args[1] in ("dtype", "device", "ndim", "is_cuda"):
        return set()
    ndim = len(tensor.meta["fxprune.shape"]) if isinstance(tensor.meta["fxprune.shape"], torch.Size) else None
    if op == "call_method" and target == "size" and len(args) == 2 and isinstance(args[1], int):
        return {args[1]}
    whole_shape = op == "call_method" and target == "size" and len(args) == 1 or \
        op == "call_function" and target is getattr and args[1] == "shape"
    if not whole_shape or ndim is None:
        return None
    dims: set[int] = set()
    for user in reader.users:
        if user not in ancestry:
            continue
        if user.op != "call_function" or user.target is not operator.getitem or user.args[0] is not reader \
                or not isinstance(user.args[1], (int, slice)):
            return None  # the whole shape itself feeds the condition
        index = user.args[1]
        dims.update([index % ndim] if isinstance(index, int) else range(ndim)[index])
    return dims
