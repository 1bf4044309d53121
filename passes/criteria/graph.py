"""``graph`` (seed 000, redundancy-graph decomposition, Li et al. 2024), per spec §1.

1. pHash of every feature map: 2-D DCT-II (no normalization), low-frequency k×k block (k = min(8, W)),
   bit = coefficient ≥ block mean.
2. Similarity of two channels = 1 − Hamming distance / (k²·T), averaged over T calibration images.
   Vectorized: with 0/1 matrices X (channels × bits), Hamming(i, j) = |x_i| + |x_j| − 2 x_i·x_j, one
   matrix product instead of the seed's double loop (same integers, so the same graph).
3. Graph with an edge i<j when S_ij ≥ threshold; repeatedly take the maximum k-core, split it into
   connected components, keep each component's largest-L1 filter (ties: lowest index) and drop the
   rest, until no edge is left. The kept filters form an independent set of the graph.

Monotone counts: the greedy decomposition can keep *more* filters at a lower threshold (more edges
can split the maximum core differently). Users read the threshold as a knob, so fxprune keeps
min(seed count at τ, seed count at every 0.01 step above τ) filters: when that is fewer than the seed's
kept set at τ, the lowest-L1 members of that set are dropped (a subset of an independent set is still
one). The seed's own result is returned whenever it is already monotone. The scan upwards stops once
the graph has at least as many connected components as the current count (no higher threshold can go
lower: every component keeps a filter, and components only multiply as edges disappear).

Feature maps are the producing conv's raw output (before BN), taken in eval mode (the seed leaves
BN in training mode; eval mode keeps the user's running statistics untouched). A coupled group is
hashed from its leader (see base.leader_first), e.g. a ResNet stage from its projection conv.
Without ``data=`` the maps come from standard-normal inputs (warned once): a data-free proxy.
"""
from __future__ import annotations

import numpy as np
import scipy.fft
import torch

from . import register
from ..dependency import MAP_KINDS
from .base import CALIBRATION_OPTIONS, Criterion, Producer, ScoringContext
from .l1 import filter_l1

__all__ = ["phash_bits", "similarity", "decompose", "Graph"]

DEFAULT_SAMPLES = 100


def phash_bits(maps: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) feature maps -> (T, C, kh*kw) boolean perceptual hashes of the low kh x kw DCT block,
    kh = min(8, H), kw = min(8, W). The seed takes k = min(8, W) for both sides (square maps); a map
    shorter than it is wide has only H rows of coefficients, so its block is H x k."""
    x = maps.detach().cpu()
    x = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()  # numpy has no bfloat16
    kh, kw = min(8, x.shape[-2]), min(8, x.shape[-1])
    d = scipy.fft.dct(scipy.fft.dct(x, type=2, axis=-2), type=2, axis=-1)
    low = d[..., :kh, :kw]
    bits = low >= low.mean(axis=(-2, -1), keepdims=True)
    return bits.reshape(*x.shape[:2], kh * kw)


def similarity(bits: np.ndarray) -> np.ndarray:
    """(T, N, B) hashes -> N×N similarity, upper triangle only (i < j), as the seed stores it."""
    t, n, b = bits.shape
    x = bits.transpose(1, 0, 2).reshape(n, t * b).astype(np.float64)
    ones = x.sum(1)
    hamming = ones[:, None] + ones[None, :] - 2.0 * (x @ x.T)
    return np.triu(1.0 - hamming / (b * t), 1)


def decompose(sim: np.ndarray, l1: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Repeated max-k-core decomposition. Returns (kept indices ascending, removal round per filter;
    -1 for kept filters)."""
    import igraph  # here, not at import: it loads matplotlib (about a second) and only this criterion needs it

    n = len(l1)
    rows, cols = np.nonzero(sim >= threshold)
    g = igraph.Graph(n=n, edges=np.column_stack([rows, cols]).tolist())
    names = np.arange(n)  # original index of each vertex still in g
    removed_at = np.full(n, -1)
    rnd = 0
    while g.ecount() > 0:
        core = np.asarray(g.coreness())
        in_core = np.flatnonzero(core == core.max())
        sub = g.induced_subgraph(in_core.tolist())
        drop = []
        for comp in sub.connected_components():
            ids = names[in_core[comp]]
            drop.append(ids[ids != ids[np.argmax(l1[ids])]])
        drop = np.concatenate(drop)
        removed_at[drop] = rnd
        local = np.flatnonzero(np.isin(names, drop))
        g.delete_vertices(local.tolist())
        names = np.delete(names, local)
        rnd += 1
    return np.flatnonzero(removed_at < 0), removed_at


GRID_STEP = 0.01


def monotone_keep(sim: np.ndarray, l1: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Seed decomposition at ``threshold``, capped at the smallest count of the 0.01 grid above it."""
    kept, removed_at = decompose(sim, l1, threshold)
    top = float(sim.max(initial=0.0))
    grid = np.arange(np.floor(threshold / GRID_STEP + 1e-9) + 1, np.floor(1.0 / GRID_STEP + 1e-9) + 1) * GRID_STEP
    cap = len(kept)
    for level in grid[grid <= top]:
        if _components(sim >= level) >= cap:
            break  # components only grow with the threshold, and each keeps at least one filter
        cap = min(cap, len(decompose(sim, l1, float(level))[0]))
    if cap < len(kept):
        order = kept[np.argsort(-l1[kept], kind="stable")]
        dropped = order[cap:]
        removed_at = removed_at.copy()
        removed_at[dropped] = removed_at.max(initial=0) + 1
        kept = np.sort(order[:cap])
    return kept, removed_at


def _components(adjacency: np.ndarray) -> int:
    from scipy.sparse.csgraph import connected_components

    return connected_components(adjacency, directed=False)[0]


class Graph(Criterion):
    name = "graph"
    options = CALIBRATION_OPTIONS | {"threshold"}

    def decide(self, ctx: ScoringContext, group):
        kept, _ = self._run(ctx, group)
        return kept

    def score(self, ctx: ScoringContext, group):
        """For ratio budgets: filters dropped in earlier rounds rank lower; L1 breaks ties."""
        kept, removed_at = self._run(ctx, group)
        l1 = self._class_l1(ctx, group)
        rank = np.where(removed_at < 0, removed_at.max(initial=0) + 1, removed_at).astype(np.float64)
        return rank + l1 / (np.abs(l1).max() + 1e-12) * 0.5

    def _run(self, ctx: ScoringContext, group):
        """(kept, removal round per class), decomposed once per group even when both asked for."""
        threshold = float(ctx.options.get("threshold", 0.7))
        return ctx.remember((self.name, group.id, threshold), lambda: self._decompose(ctx, group, threshold))

    def _decompose(self, ctx: ScoringContext, group, threshold: float):
        bits = self._class_bits(ctx, group)
        l1 = self._class_l1(ctx, group)
        sim = np.zeros((group.n_classes, group.n_classes))
        for length in {b.shape[-1] for b in bits.values()}:
            idx = np.array(sorted(c for c, b in bits.items() if b.shape[-1] == length))
            block = np.stack([bits[c] for c in idx], axis=1)  # (T, n, B)
            sim[np.ix_(idx, idx)] = similarity(block)
        return monotone_keep(sim, l1, threshold)

    @staticmethod
    def _class_l1(ctx, group) -> np.ndarray:
        return ctx.leader_first(group, lambda p: filter_l1(p.module))

    @staticmethod
    def _class_bits(ctx: ScoringContext, group) -> dict[int, np.ndarray]:
        """Per class, the hashes of its channels at the first producer (leader order) that writes it."""
        producers = [p for p in ctx.producers(group) if _has_maps(ctx, p)]
        samples = int(ctx.options.get("calibration_samples", DEFAULT_SAMPLES))
        maps = ctx.observe([p.role.name for p in producers], phash_bits, "phash", samples)
        bits: dict[int, list[np.ndarray]] = {}
        owner: dict[int, str] = {}
        for p in producers:
            h = maps.get(p.role.name)
            if h is None:  # never ran as a module (read through its weights): no feature maps
                continue
            for ch, c in enumerate(p.classes.tolist()):
                if c < 0 or owner.get(c, p.role.name) != p.role.name:
                    continue
                owner[c] = p.role.name
                bits.setdefault(c, []).append(h[:, ch])
        return {c: np.concatenate(v, axis=-1) for c, v in bits.items()}


def _has_maps(ctx: ScoringContext, p: Producer) -> bool:
    """Only convs with 2-D feature maps (N, C, H, W) have a perceptual hash (a linear on N,H,W,C has none)."""
    if p.role.kind not in MAP_KINDS:
        return False
    node = next(n for n in ctx.analysis.gm.graph.nodes if n.name == p.role.node)
    shape = node.meta.get("fxprune.shape")
    return shape is not None and len(shape) == 4


register("graph", Graph())
