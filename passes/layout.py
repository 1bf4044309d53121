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

__all__ = ["UnionFind", "Layout"]


class UnionFind:
    """Elements in blocks ("spaces"); uniting two elements also links their spaces into one group."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.space: list[int] = []
        self.space_parent: list[int] = []

    def new_space(self, n: int) -> np.ndarray:
        """Allocate ``n`` fresh elements that start one space of their own."""
        sid = len(self.space_parent)
        self.space_parent.append(sid)
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.space.extend([sid] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, e: int) -> int:
        parent = self.parent
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def _find_space(self, s: int) -> int:
        sp = self.space_parent
        while sp[s] != s:
            sp[s] = sp[sp[s]]
            s = sp[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        sa, sb = self._find_space(self.space[int(a)]), self._find_space(self.space[int(b)])
        if sa != sb:
            self.space_parent[max(sa, sb)] = min(sa, sb)

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            if x != y:
                self.union(x, y)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Final (class root, group id) of every element, as arrays for vectorized lookups."""
        n = len(self.parent)
        roots = np.fromiter((self.find(e) for e in range(n)), dtype=np.int64, count=n)
        space_roots = np.fromiter(
            (self._find_space(s) for s in range(len(self.space_parent))), dtype=np.int64, count=len(self.space_parent)
        )
        return roots, space_roots[np.asarray(self.space, dtype=np.int64)]


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
        return np.unique(self.index)

    def dense(self, shape: torch.Size) -> torch.Tensor:
        """The layout materialized at the tensor's full shape, ready to be pushed through a layout op."""
        return torch.from_numpy(np.broadcast_to(self.index, tuple(shape)).copy())

    @staticmethod
    def compress(dense: torch.Tensor) -> "Layout":
        """Inverse of :meth:`dense`: keep size 1 on every dim along which the elements do not change."""
        arr = dense.numpy() if isinstance(dense, torch.Tensor) else np.asarray(dense)
        for d in range(arr.ndim):
            if arr.shape[d] > 1:
                first = np.take(arr, [0], axis=d)
                if np.array_equal(np.broadcast_to(first, arr.shape), arr):
                    arr = first
        return Layout(np.ascontiguousarray(arr))
