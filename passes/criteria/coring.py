"""CORING scoring math: per-filter rank-1 HOSVD factors, filter distances, greedy saliency.

Pure array functions (spec ``algorithms.md`` §4); the lead wires them into channel groups. Every
score is a float64 array of length N, **higher = more important = keep first**, and deterministic.

Decisions the seed code leaves open (spec §4.3 caveats), fixed here:

* **SVD sign.** Each singular vector is flipped so that its largest-magnitude entry is positive
  (entries within a relative 1e-9 of the maximum count as tied; the first of them decides), so a
  filter and its negation get the same factors and V/E no longer depend on LAPACK's choice.
* **Length-1 modes.** A mode whose vector has length 1 (the kh/kw modes of a 1x1 conv, every
  mode but the first of a Linear weight) carries no information (it is always +1) and its unbiased
  variance is NaN, so such modes are dropped from the mode average. If every mode has length 1,
  all distances are 0 and ``min_sum`` falls back to index order.
* **Zero filters.** A filter (or a singular direction) with zero singular value gets an all-zero
  factor; 0/0 terms are defined as 0 (V variance ratio, C cosine), so no NaN ever appears. Note a
  zero filter is *not* demoted by CORING itself: it looks far from every non-zero filter.

Before (seed): ``for i: for j: M[i,j] = VBD(u_i, u_j)`` in Python; after: one ``cdist`` (V, E) or
one matrix product (C) per mode, equal to the double loop to 1e-12; ``min_sum`` runs in O(N^2).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from passes.errors import PlanError

__all__ = ["filter_factors", "batched_unfold", "fix_sign", "distance_matrix", "min_sum_saliency",
           "sum_saliency", "coring_scores", "DISTANCES", "STRATEGIES"]

# Letter -> is it a distance (small = similar)?  C is a similarity (large = similar).
DISTANCES = {"V": True, "E": True, "C": False}
STRATEGIES = ("min_sum", "sum")
_TIE_RTOL = 1e-9  # entries this close to the largest magnitude count as tied for the sign rule
_VAR_EPS = 1e-24  # Var(a)+Var(b) below this is 0/0 (both vectors constant): distance 0


def _as_float64(x) -> np.ndarray:
    """Accept torch tensors (any device, requires_grad) or arrays; compute in float64."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_filters(weight) -> np.ndarray:
    """N x C x k1 x k2 (...) view: Linear (N x C) and conv1d (N x C x k) are padded with 1-length modes."""
    w = _as_float64(weight)
    if w.ndim < 2:
        raise PlanError(f"CORING needs a weight with >= 2 dims (N x C ...), got shape {w.shape}")
    while w.ndim < 4:
        w = w[..., None]
    return w


def batched_unfold(w: np.ndarray, mode: int) -> np.ndarray:
    """Unfold every filter ``w[i]`` along ``mode`` exactly like ``tensorly.base.unfold(w[i], mode)``.

    tensorly moves axis ``mode`` to the front and reshapes C-order to (dim, -1); doing it on the
    stacked filters (axis ``mode + 1``) gives all N unfoldings at once: shape (N, dim, rest).
    """
    n, dim = w.shape[0], w.shape[mode + 1]
    return np.moveaxis(w, mode + 1, 1).reshape(n, dim, -1)


def fix_sign(u: np.ndarray) -> np.ndarray:
    """Flip vectors (last axis) so the first largest-magnitude entry is positive; zeros stay zero."""
    mag = np.abs(u)
    top = mag.max(axis=-1, keepdims=True)
    idx = np.argmax(mag >= top * (1.0 - _TIE_RTOL), axis=-1)  # first (near-)tied maximum
    pivot = np.take_along_axis(u, idx[..., None], axis=-1)
    return u * np.where(pivot < 0, -1.0, 1.0)


def filter_factors(weight, rank: int = 1) -> list[np.ndarray]:
    """Per-filter truncated HOSVD (spec §4.2): the leading left singular vectors of each mode unfolding.

    Returns one array per filter mode (three for conv2d / Linear: N x C, N x kh, N x kw). With
    ``rank > 1`` the first ``min(rank, dim, rest)`` vectors of a mode are sign-fixed and concatenated
    (u1 then u2 ...) so each mode is still one vector per filter. Vectors whose singular value is
    numerically zero (all-zero filter) are set to zero instead of LAPACK's arbitrary basis.
    """
    if rank < 1:
        raise PlanError(f"rank must be >= 1, got {rank}")
    w = _as_filters(weight)
    n = w.shape[0]
    factors = []
    for mode in range(w.ndim - 1):
        mat = batched_unfold(w, mode)
        u, s = _leading_vectors(mat)
        r = min(rank, s.shape[-1])
        u, s = u[:, :, :r], s[:, :r]
        tol = np.finfo(np.float64).eps * max(mat.shape[1:]) * s[:, :1]
        u = np.where((s > tol)[:, None, :] & (s > 0)[:, None, :], u, 0.0)
        u = fix_sign(np.swapaxes(u, 1, 2))  # (N, r, dim): one vector per row
        factors.append(u.reshape(n, -1))
    return factors


#: Vectors longer than this get their pairwise distances from one BLAS product (see _squared_distances).
_GRAM_MIN_DIM = 256
_NEAR = 1e-6  # pairs closer than this (relative to their squared norms) are recomputed exactly


def _leading_vectors(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and values of each unfolding (N, dim, rest). One with a single column or row
    (every mode of a Linear weight, the kernel modes of a 1x1 conv) needs no LAPACK call: its one singular
    vector is the column over its norm, or 1 (signs are fixed afterwards)."""
    n, dim, rest = mat.shape
    if rest > 1 and dim > 1:
        u, s, _ = np.linalg.svd(mat, full_matrices=False)
        return u, s
    s = np.sqrt(np.einsum("nij,nij->n", mat, mat))[:, None]
    u = mat / np.where(s > 0, s, 1.0)[:, :, None] if rest == 1 else np.ones((n, 1, 1))
    return u, s


def _squared_distances(a: np.ndarray) -> np.ndarray:
    """|a_i - a_j|^2 for every pair of rows. For long rows (a Linear layer's input features: 25088 in
    VGG's classifier) as |a_i|^2 + |a_j|^2 - 2 a_i.a_j with one matrix product, ~80x faster than
    cdist's loop there (4096 rows: seconds, not minutes). That form loses the digits of near-equal rows
    (a duplicate filter), so those pairs are computed again directly."""
    if a.shape[1] <= _GRAM_MIN_DIM:
        return cdist(a, a, "sqeuclidean")
    sq = np.einsum("ij,ij->i", a, a)
    scale = sq[:, None] + sq[None, :]
    dist = np.maximum(scale - 2.0 * (a @ a.T), 0.0)
    rows, cols = np.nonzero(np.triu(dist <= _NEAR * scale, 1))
    for start in range(0, len(rows), 256):  # near pairs, in blocks: rare, but all of them for a duplicated layer
        i, j = rows[start:start + 256], cols[start:start + 256]
        diff = a[i] - a[j]
        dist[i, j] = dist[j, i] = np.einsum("ij,ij->i", diff, diff)
    np.fill_diagonal(dist, 0.0)
    return dist


def _variance_distance(a: np.ndarray) -> np.ndarray:
    """V: Var(x - y) / (Var(x) + Var(y)), unbiased; 0/0 -> 0. Var(x-y) = |xc - yc|^2 / (d - 1)."""
    d = a.shape[1]
    centered = a - a.mean(axis=1, keepdims=True)
    num = _squared_distances(centered) / (d - 1)
    var = (centered ** 2).sum(axis=1) / (d - 1)
    den = var[:, None] + var[None, :]
    safe = den > _VAR_EPS
    return np.where(safe, num / np.where(safe, den, 1.0), 0.0)


def _abs_cosine(a: np.ndarray) -> np.ndarray:
    """C: |cos(x, y)|, a similarity; a zero vector has cosine 0 with everything."""
    norm = np.linalg.norm(a, axis=1)
    den = norm[:, None] * norm[None, :]
    safe = den > 0
    return np.where(safe, np.abs(a @ a.T) / np.where(safe, den, 1.0), 0.0)


_PAIRWISE = {
    "V": _variance_distance,
    "E": lambda a: np.sqrt(_squared_distances(a)),
    "C": _abs_cosine,
}


def distance_matrix(factors, distance: str = "V") -> np.ndarray:
    """M[i, j] = mean over modes of length > 1 of d(u_i, u_j) (spec §4.3), full N x N, vectorized.

    ``distance``: "V" variance-based distance, "E" Euclidean, "C" |cosine| (a similarity).
    """
    if distance not in _PAIRWISE:
        raise PlanError(f"unknown CORING distance {distance!r}; expected one of {sorted(_PAIRWISE)}")
    factors = [_as_float64(f) for f in factors]
    n = factors[0].shape[0]
    kept = [f for f in factors if f.shape[1] > 1]  # length-1 modes: constant +1, NaN variance
    if not kept:
        return np.zeros((n, n))
    return sum(_PAIRWISE[distance](f) for f in kept) / len(kept)


def _finite_sum(v: np.ndarray) -> float:
    """Sum of the entries that are not the +/-inf sentinel (spec §4.4 compare_sum)."""
    return float(v[np.isfinite(v)].sum())


def min_sum_saliency(matrix, is_distance: bool) -> np.ndarray:
    """Greedy redundancy elimination (spec §4.4 ``min_sum``): saliency = elimination step.

    Repeatedly take the closest remaining pair (first in row-major order on ties), drop the member
    with the smaller total distance (larger total similarity) to the others (ties drop i), and give
    it s = step. The survivor keeps N - 1, so s is a permutation of 0..N-1: higher = keep.

    Same result as the spec's full-matrix argmin per step, in O(N^2) instead of O(N^3): we keep each
    row's minimum and its first column, and refresh only rows whose minimum was just removed (the
    first row holding the global minimum, at its first column, *is* the row-major first occurrence).
    A similarity is negated (exactly) so one code path serves both; the sums flip sign with it.
    """
    key = _as_float64(matrix).copy()
    if not is_distance:
        key = -key
    n = key.shape[0]
    np.fill_diagonal(key, np.inf)
    row_min, row_arg = key.min(axis=1), key.argmin(axis=1)
    saliency = np.full(n, n - 1, dtype=np.float64)
    for step in range(n - 1):
        i = int(np.argmin(row_min))
        j = int(row_arg[i])
        key[i, j] = key[j, i] = np.inf
        # j is more redundant when its total distance is smaller than i's; ties eliminate i
        index = j if _finite_sum(key[i, :]) > _finite_sum(key[:, j]) else i
        key[index, :] = np.inf
        key[:, index] = np.inf
        saliency[index] = step
        stale = row_arg == index
        stale[[i, j]] = True
        rows = np.flatnonzero(stale)
        row_min[rows], row_arg[rows] = key[rows].min(axis=1), key[rows].argmin(axis=1)
    return saliency


def sum_saliency(matrix, is_distance: bool) -> np.ndarray:
    """Spec §4.4 ``sum``: total distance to all filters (or minus total similarity), diagonal included."""
    total = _as_float64(matrix).sum(axis=1)
    return total if is_distance else -total


def coring_scores(weight, distance: str = "V", strategy: str = "min_sum", rank: int = 1) -> np.ndarray:
    """CORING saliency of the N filters of ``weight`` (conv N x C x kh x kw, or Linear N x C).

    Weights only, no data. ``distance`` in {"V", "E", "C"}, ``strategy`` in {"min_sum", "sum"}.
    """
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown CORING strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    matrix = distance_matrix(filter_factors(weight, rank=rank), distance)
    rank_fn = min_sum_saliency if strategy == "min_sum" else sum_saliency
    return rank_fn(matrix, DISTANCES[distance])


# ---- criterion plug-in (appended; the scoring math above is unchanged) --------------------------
from ..filters import filters  # noqa: E402
from . import register  # noqa: E402
from .base import Criterion  # noqa: E402


class Coring(Criterion):
    """``coring`` (seed 003): per layer, CORING saliency of its filters (weights only, no data).

    Options: ``distance`` ("V" default, "E", "C"), ``strategy`` ("min_sum" default, "sum"), ``rank``
    (1). A coupled group takes every class's score from its first producer in leader order
    (base.leader_first), as the seed ranks each conv on its own (per-layer semantics).
    """

    name = "coring"
    options = frozenset({"distance", "strategy", "rank"})

    def score(self, ctx, group):
        opts = ctx.options
        kw = dict(distance=opts.get("distance", "V"), strategy=opts.get("strategy", "min_sum"),
                  rank=int(opts.get("rank", 1)))
        return ctx.leader_first(group, lambda p: coring_scores(filters(p.module.weight, p.module), **kw))


register("coring", Coring())
