"""Channel permutations written as reshapes (ShuffleNet's channel shuffle), pruned channel by channel.

``x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)`` only reorders channels, but its
first view needs the kept channels to fill a g x (c/g) grid: left as it is, the compact model could
only lose whole columns of that grid, and in a ShuffleNet stage, where every block shuffles the
stream again, those columns chain into one class and the stream cannot be pruned at all (torchvision's
shufflenet_v2_x1_0 keeps 71% of its parameters at ratio 0.3 that way, 60% with the gather).

So a chain of pure data movement ops (views, reshapes, transposes, permutes, ``contiguous``) that
splits a tensor's channel axis and ends with a tensor of the same shape whose every value is the
source's value at another channel (same batch and spatial position) is recognized as a whole here,
and the rewrite replaces it by one ``torch.index_select`` of the kept channels in their permuted
order (the index is a buffer of the compact model). Then no channel is tied to another by the
shuffle. The check runs the chain on the position ids of the whole source tensor, so a chain that
also moves batch or spatial positions, or that ends in anything but a permutation of channels, keeps
the reshape rule's grid ties instead (so does a source of over 16M values, e.g. an example batch of
over 180 224x224 images at ShuffleNet's largest shuffle: the ids are not materialized then).

Such a gather (``index_select`` of channels by an index buffer read nowhere else) is followed in turn,
so a compact model prunes again: the index is remapped to the channels the next plan keeps.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
import torch.fx

from .layout import Layout

__all__ = ["follow_channel_permutation", "gather_rule"]

#: Ops that only move values; view-like ones are run as their copying twin on a contiguous tensor.
_MOVES = {"view": "reshape", "reshape": "reshape", "flatten": "flatten", "unflatten": "unflatten",
          "transpose": "transpose", "swapaxes": "swapaxes", "permute": "permute", "movedim": "movedim",
          "contiguous": "contiguous"}
_MOVING_FUNCTIONS = {torch.reshape: "reshape", torch.flatten: "flatten", torch.transpose: "transpose",
                     torch.swapaxes: "swapaxes", torch.permute: "permute", torch.movedim: "movedim"}
_MAX_CHAIN = 8
#: Position ids of a larger source are not materialized (the shuffle keeps its grid ties then).
_MAX_POSITIONS = 1 << 24


def follow_channel_permutation(an, split: torch.fx.Node, src: torch.fx.Node, dim: int) -> bool:
    """If ``split`` (a reshape of ``src`` splitting its channel axis ``dim``) starts a chain that ends in a
    permutation of ``src``'s channels, mark the chain as free of grid ties and ask the rewrite to replace
    it by a gather; True when it did."""
    found = _permuting_chain(an, split, src, dim)
    if found is None:
        return False
    chain, order = found
    an.free_reshapes.update(n.name for n in chain)
    src_elems = an.layout(src).elems_along(dim, an.shape(src))
    an.add_edit(chain[-1], functools.partial(_gather_channels, split=split.name, dim=dim, src_elems=src_elems,
                                             order=order))
    return True


def _permuting_chain(an, split, src, dim) -> tuple[list[torch.fx.Node], np.ndarray] | None:
    """The chain from ``split`` to the node that holds ``src``'s channels permuted, and the permutation."""
    shape = tuple(an.shape(src))
    chain = _chain_back_to(an, split, shape)
    if chain is None or math.prod(shape) > _MAX_POSITIONS:
        return None
    positions = torch.arange(math.prod(shape), dtype=torch.int32).reshape(shape)
    values = positions
    for node in chain:
        values = _run_move(an, node, values)
        if values is None:
            return None
    order = _channel_order(positions, values, dim)
    return (chain, order) if order is not None else None


def _chain_back_to(an, split: torch.fx.Node, shape: tuple) -> list[torch.fx.Node] | None:
    """Data movement ops from ``split``, each the only user of the one before, up to the first one whose
    output has ``shape`` again; None if the chain branches or does anything else first. Read from the graph
    alone, so most splits (attention's heads, which go on into a matmul) cost no position ids."""
    chain = [split]
    while len(chain) <= _MAX_CHAIN:
        if len(chain) > 1 and an.shape(chain[-1]) is not None and tuple(an.shape(chain[-1])) == shape:
            return chain
        users = list(chain[-1].users)
        if len(users) != 1 or not _moves_values(users[0]) or users[0].args[0] is not chain[-1]:
            return None
        chain.append(users[0])
    return None


def _moves_values(node: torch.fx.Node) -> bool:
    return node.op == "call_method" and node.target in _MOVES or \
        node.op == "call_function" and node.target in _MOVING_FUNCTIONS


def _run_move(an, node: torch.fx.Node, values: torch.Tensor) -> torch.Tensor | None:
    """``node``'s op applied to ``values`` (standing for its first argument), None if it cannot be run."""
    if not _moves_values(node):
        return None
    method = _MOVES[node.target] if node.op == "call_method" else _MOVING_FUNCTIONS[node.target]
    args = [an.value(a) for a in node.args[1:]]
    kwargs = {k: an.value(v) for k, v in node.kwargs.items()}
    if any(isinstance(a, torch.fx.Node) or a is None for a in itertools.chain(args, kwargs.values())):
        return None
    try:
        out = getattr(values.contiguous(), method)(*args, **kwargs)
    except Exception:  # an op torch refuses here fails the same way in the model: not our chain
        return None
    expected = an.shape(node)
    return out if expected is not None and tuple(out.shape) == tuple(expected) else None


def _channel_order(positions: torch.Tensor, values: torch.Tensor, dim: int) -> np.ndarray | None:
    """``order`` with ``values == positions.index_select(dim, order)``, or None when ``values`` is not
    such a gather (it also moved batch or spatial positions, or repeated a channel)."""
    stride = positions.stride(dim)
    channel = (values // stride) % positions.shape[dim]
    order = channel.movedim(dim, 0).reshape(positions.shape[dim], -1)[:, 0]
    if not torch.equal(torch.sort(order).values, torch.arange(positions.shape[dim], dtype=order.dtype)):
        return None
    if not torch.equal(values, positions.index_select(dim, order.long())):
        return None
    return order.numpy().astype(np.int64)


def _gather_channels(root, end: torch.fx.Node, analysis, keep: np.ndarray, *, split: str, dim: int,
                     src_elems: np.ndarray, order: np.ndarray) -> None:
    """Make ``end`` ``index_select(src, dim, index)`` over the kept channels; erase the rest of the chain."""
    kept = keep[src_elems]
    if kept.all():
        return  # nothing pruned here: the shuffle stays as the user wrote it
    index = _kept_order(kept, order)
    chain = [end]
    while chain[-1].name != split:
        chain.append(chain[-1].args[0])
    src = chain[-1].args[0]
    name = f"{end.name}_channel_order"
    root.register_buffer(name, torch.as_tensor(index, dtype=torch.int64, device=_device_of(root)))
    graph = end.graph
    with graph.inserting_before(end):
        index_node = graph.get_attr(name)
    # ``end`` becomes the gather in place: later edits find it by name, with the shape and layout it had
    end.op, end.target, end.args, end.kwargs = "call_function", torch.index_select, (src, dim, index_node), {}
    for node in chain[1:]:  # each one's only user went before it; the sizes they read go with the rewrite's tidy-up
        graph.erase_node(node)


def _device_of(root: torch.nn.Module) -> torch.device:
    tensor = next(itertools.chain(root.parameters(), root.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def gather_rule(an, node: torch.fx.Node):
    """``torch.index_select(x, dim, index)``: along a channel axis, with ``index`` a buffer of the model,
    output channel j is input channel ``index[j]``; the rewrite remaps the index to the kept channels."""
    src = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    index = node.args[2] if len(node.args) > 2 else node.kwargs.get("index")
    lay, shape = an.layout(src), an.shape(src)
    if lay is None:
        return None
    if not isinstance(lay, Layout) or shape is None or not isinstance(an.value(dim), int):
        return an.opaque(node, "index_select of a tensor whose channels cannot be followed")
    dim = an.value(dim) % len(shape)
    if dim not in lay.varying_dims():
        return lay  # gathers positions along an axis the channels do not vary on
    elems = lay.elems_along(dim, shape)
    values = _index_buffer(an, index)
    if elems is None or values is None or _reads_of(an, index.target) != 1:
        return an.opaque(node, "index_select of channels by an index that is not a buffer of its own")
    an.add_edit(node, functools.partial(_remap_index, target=index.target, src_elems=elems, values=values))
    return Layout.along(elems[values], dim, len(shape))


def _index_buffer(an, index) -> np.ndarray | None:
    """The values of a 1-D integer buffer read by a get_attr node, else None."""
    if not isinstance(index, torch.fx.Node) or index.op != "get_attr":
        return None
    *path, attr = index.target.split(".")
    owner = an.modules.get(".".join(path))
    tensor = owner._buffers.get(attr) if owner is not None else None
    if tensor is None or tensor.dim() != 1 or tensor.dtype not in (torch.int64, torch.int32):
        return None
    return tensor.detach().cpu().numpy().astype(np.int64)


def _reads_of(an, target: str) -> int:
    """How many ops read the tensor ``target`` (remapping a shared index would change its other readers)."""
    return sum(len(n.users) for n in an.gm.graph.nodes if n.op == "get_attr" and n.target == target)


def _remap_index(root, node, analysis, keep: np.ndarray, *, target: str, src_elems: np.ndarray,
                 values: np.ndarray) -> None:
    kept = keep[src_elems]
    if kept.all():
        return
    *path, attr = target.split(".")
    owner = root.get_submodule(".".join(path))
    old = owner._buffers[attr]
    owner._buffers[attr] = torch.as_tensor(_kept_order(kept, values), dtype=old.dtype, device=old.device)


def _kept_order(kept: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``order`` (source channels in gathered order) restricted to the kept channels, as positions among
    the kept ones: the index of the compact model's gather."""
    return (np.cumsum(kept) - 1)[order[kept[order]]]
