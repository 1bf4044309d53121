"""Channel layouts: which channel element sits at each position of a tensor.

Every prunable channel in a model is an *element* (an int). A tensor's layout is an integer array,
broadcastable to the tensor's shape, naming the element at every position: a conv output of shape
(N, 64, H, W) has layout shape (1, 64, 1, 1); after ``flatten(1)`` the same 64 elements repeat H*W
times along dim 1. Elements that must be removed together are united in a :class:`UnionFind`; one
set of united elements is a *channel class*, the unit a plan keeps or removes.

Layout ops (view, permute, flatten, getitem, ...) are followed by running the op itself on the
layout array, so one rule covers every shape manipulation torch can express.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["UnionFind", "Layout", "unique_ints", "concat_segments", "uniform_segments"]


def unique_ints(a: np.ndarray, nearly_sorted: bool = False) -> np.ndarray:
    """Sorted distinct values of an int array: ``np.unique`` without its generic (hashing) path,
    about 3x faster on the small arrays the passes call it with hundreds of times per model.
    ``nearly_sorted``: the values come in long sorted runs, which timsort ("stable") takes in one
    pass (10x faster there, 10x slower on random values)."""
    s = np.sort(np.asarray(a).ravel(), kind="stable" if nearly_sorted else None)
    if s.size <= 1:
        return s
    first = np.empty(s.shape, dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    return s[first]


def concat_segments(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty int arrays laid end to end, where each starts, and their sizes: lets a pass treat
    every module side at once instead of looping over them."""
    sizes = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    return np.concatenate(arrays).astype(np.int64, copy=False), np.concatenate(([0], np.cumsum(sizes[:-1]))), sizes


def uniform_segments(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment of ``values`` (see concat_segments): does it hold a single distinct value?"""
    return np.minimum.reduceat(values, starts) == np.maximum.reduceat(values, starts)


class UnionFind:
    """Elements in blocks ("spaces"); uniting two elements also links their spaces into one group.

    Unions are only recorded during the walk (no rule needs a class while the graph is being
    walked); :meth:`snapshot` resolves them all at once with a sparse connected-components pass.
    """

    def __init__(self) -> None:
        self.size = 0
        self.space_starts: list[int] = []
        self._left: list[np.ndarray] = []
        self._right: list[np.ndarray] = []

    def new_space(self, n: int) -> np.ndarray:
        """Allocate ``n`` fresh elements that start one space of their own."""
        start = self.size
        self.space_starts.append(start)
        self.size += n
        return np.arange(start, start + n, dtype=np.int64)

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        self._left.append(a.ravel())
        self._right.append(b.ravel())

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Final (class root, group id) of every element; a class root is its smallest element."""
        left = np.concatenate(self._left) if self._left else np.zeros(0, dtype=np.int64)
        right = np.concatenate(self._right) if self._right else np.zeros(0, dtype=np.int64)
        roots = _smallest_member(_components(self.size, left, right))
        space_id = np.zeros(self.size, dtype=np.int64)
        space_id[np.asarray([s for s in self.space_starts if s < self.size], dtype=np.int64)] = 1
        space_id = np.cumsum(space_id) - 1
        # a group is every space a chain of unions links: components of the (much smaller) graph of spaces
        n_spaces = int(space_id[-1]) + 1 if self.size else 0
        groups = _components(n_spaces, space_id[left], space_id[right])[space_id]
        return roots, groups


def _components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _smallest_member(labels: np.ndarray) -> np.ndarray:
    """Replace each component label by the smallest element id carrying it."""
    smallest = np.full(labels.max(initial=-1) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(len(labels), dtype=np.int64))
    return smallest[labels]


@dataclass(frozen=True)
class Layout:
    """Element ids of a tensor, as an array broadcastable to its shape (size 1 where nothing varies)."""

    index: np.ndarray

    @staticmethod
    def along(elems: np.ndarray, dim: int, ndim: int) -> "Layout":
        shape = [1] * ndim
        shape[dim] = len(elems)
        return Layout(np.asarray(elems, dtype=np.int64).reshape(shape))

    @property
    def ndim(self) -> int:
        return self.index.ndim

    def varying_dims(self) -> list[int]:
        return [d for d, n in enumerate(self.index.shape) if n > 1]

    def elems_along(self, dim: int, shape: torch.Size) -> np.ndarray | None:
        """The elements along ``dim`` if the layout varies along no other dim, else None."""
        if any(n > 1 for d, n in enumerate(self.index.shape) if d != dim):
            return None
        line = self.index.reshape(-1)
        if len(line) == shape[dim]:
            return line
        if len(line) == 1:
            return np.repeat(line, shape[dim])
        return None

    def all_elems(self) -> np.ndarray:
        return unique_ints(self.index)

    def dense(self, shape: torch.Size) -> torch.Tensor:
        """The layout at the tensor's full shape, ready to be pushed through a layout op: a broadcast view
        (stride 0 where nothing varies), so a (B, N, C) token tensor costs C ints, not B*N*C; ops that
        cannot keep it a view (a flatten across a varying axis) copy what they need."""
        return torch.from_numpy(np.array(self.index)).expand(tuple(shape))

    @staticmethod
    def compress(dense: torch.Tensor) -> "Layout":
        """Inverse of :meth:`dense`: keep size 1 on every dim along which the elements do not change.
        A stride-0 dim repeats one slice by construction; the others are compared slice by slice."""
        t = dense if isinstance(dense, torch.Tensor) else torch.from_numpy(np.asarray(dense))
        for d in range(t.dim()):
            if t.shape[d] > 1 and t.stride(d) == 0:
                t = t.narrow(d, 0, 1)
        arr = t.numpy()
        for d in range(arr.ndim):
            if arr.shape[d] > 1:
                first = np.take(arr, [0], axis=d)
                if np.array_equal(np.broadcast_to(first, arr.shape), arr):
                    arr = first
        return Layout(np.array(arr))  # an array of its own: the op's result may be a view of its input
