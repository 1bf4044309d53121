"""FP-FMC scoring math: cluster each image's feature maps, score filters by a redundancy index.

Pure array functions (spec ``algorithms.md`` §5); the lead wires them into channel groups. Input is
T x N x H x W post-activation feature maps (T calibration images, N channels); output is a float64
array of length N, **higher = keep** (= minus the redundancy index RI: low RI = less redundant).

Decisions the seed code leaves open, fixed here (all deterministic under ``seed``):

* **Seeds.** t-SNE and KMeans get a ``random_state`` derived from ``(seed, image index)``. KMeans
  uses ``n_init=3``: the K search fits ~N/2 models per image, and the old sklearn default of 10
  restarts costs 3x more for no visible gain on 2-D t-SNE points. t-SNE uses the spec's settings
  (2-D, ``perplexity=1``, learning_rate "auto", random init), perplexity clipped below N.
* **Threads.** sklearn runs single-threaded here: the problems are tiny, and OpenMP threads on a
  busy machine made the K search several times slower. Instead, the images of a wide layer are spread
  over processes (joblib; a 512-channel image takes ~20 s); each image has its own seeds, so the
  result does not depend on how many.
* **Dead channels.** No special case: all-zero maps normalise to identical zero vectors, cluster
  together consistently and so get a high RI (pruned first), which is what one wants.
* **One embedding per image.** The seed runs t-SNE twice (step 0 to choose K, step 1 to cluster);
  we embed once and cluster that embedding in both steps, so K is chosen on the points we cluster.
* **K.** Candidates K = 2 .. K_max - 1 (spec §5.3: K_max = M // 2 if M >= 64 else M, M = inliers),
  capped at ``max_k`` if given; layer K = most frequent per-image best K (ties -> smallest). An
  image with fewer than 3 inliers has best K = 1. A fixed K (``k``) is clipped to each image's M.
* **Outliers only.** The seed's RI gives -1 to the *lowest label* of image p, which is label 0 (an
  arbitrary KMeans cluster) when p has no outliers. We do NOT reproduce that quirk: only real IQR
  outliers (label -1) get -1. ``redundancy_index(..., legacy_first_label=True)`` restores it.
* **Normalisation.** Each flattened map is divided by its own maximum; non-finite results (0/0, and
  x/0 for maps that are not post-ReLU) become 0.

RI needs at least two images (it sums over ordered image pairs); with one image every score is 0.
RI scores filters, not clusters: members of a cluster that stays together in every image get the
same RI, so FP-FMC prunes redundant *groups* first but does not keep one representative per group
(CORING's greedy ``min_sum`` does); its signal is consistency of co-clustering across images.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from passes.errors import PlanError

__all__ = ["fmc_scores", "fmc_labels", "redundancy_index", "normalize_maps", "iqr_inliers"]

_KMEANS_N_INIT = 3
_IQR_FACTOR = 1.5
_SEED_STREAM = {"tsne": 0, "kmeans": 1}


def _as_float64(x) -> np.ndarray:
    """Accept torch tensors (any device, requires_grad) or arrays; compute in float64."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _random_state(seed: int, image: int, stream: str) -> int:
    """A 32-bit seed per (seed, image, tsne|kmeans), so images and tools draw independent streams."""
    return int(np.random.SeedSequence([seed, image, _SEED_STREAM[stream]]).generate_state(1)[0])


def normalize_maps(maps) -> np.ndarray:
    """N x (H*W): every flattened map divided by its own max (spec §5.2); non-finite -> 0."""
    flat = _as_float64(maps).reshape(len(maps), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = flat / flat.max(axis=1, keepdims=True)
    out[~np.isfinite(out)] = 0.0
    return out


def _embed(x: np.ndarray, perplexity: float, random_state: int) -> np.ndarray:
    """2-D t-SNE of the N maps; perplexity clipped below N as sklearn requires."""
    from sklearn.manifold import TSNE

    perp = min(perplexity, x.shape[0] - 1)
    tsne = TSNE(n_components=2, perplexity=perp, learning_rate="auto", init="random",
                random_state=random_state)
    return tsne.fit_transform(x)


def iqr_inliers(points: np.ndarray) -> np.ndarray:
    """Mask of points inside (Q1 - 1.5 IQR, Q3 + 1.5 IQR) on every coordinate (spec §5.2)."""
    q1, q3 = np.percentile(points, [25, 75], axis=0)
    iqr = q3 - q1
    lo, hi = q1 - _IQR_FACTOR * iqr, q3 + _IQR_FACTOR * iqr
    return np.all((points >= lo) & (points <= hi), axis=1)


def _kmeans(points: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """KMeans labels with K clipped to the number of points (K = 1 -> one cluster)."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    k = min(k, len(points))
    if k <= 1:
        return np.zeros(len(points), dtype=np.int64)
    with warnings.catch_warnings():  # duplicate maps -> fewer distinct points than K: expected
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=_KMEANS_N_INIT, random_state=random_state)
        return km.fit_predict(points).astype(np.int64)


def _candidate_ks(m: int, max_k: int | None) -> range:
    """Spec §5.3: K = 2 .. K_max - 1 with K_max = M // 2 if M >= 64 else M; optional cap."""
    k_max = m // 2 if m >= 64 else m
    top = k_max - 1 if max_k is None else min(k_max - 1, max_k)
    return range(2, top + 1)


def _best_k(points: np.ndarray, max_k: int | None, random_state: int, cache: dict) -> int:
    """Per-image K with the highest silhouette (first on ties); fills ``cache[K] = labels``."""
    from sklearn.metrics import silhouette_score

    best_k, best = 1, -np.inf
    for k in _candidate_ks(len(points), max_k):
        labels = cache[k] = _kmeans(points, k, random_state)
        n_labels = len(np.unique(labels))
        if not 2 <= n_labels <= len(points) - 1:  # silhouette undefined
            continue
        score = silhouette_score(points, labels)
        if score > best:
            best_k, best = k, score
    return best_k


def fmc_labels(feature_maps, seed: int = 0, k: int | None = None, max_k: int | None = None,
               perplexity: float = 1.0, jobs: int | None = None) -> tuple[np.ndarray, int]:
    """Cluster labels (T x N, -1 = IQR outlier) and the layer's K (spec §5.2-§5.4).

    ``feature_maps``: T x N x (spatial...) post-activation maps. ``k`` skips the K search. ``jobs``:
    processes the images are spread over (default: every core for layers of 64+ channels); the labels
    do not depend on it.
    """
    maps = _as_float64(feature_maps)
    if maps.ndim < 2:
        raise PlanError(f"FP-FMC needs feature maps of shape T x N x ..., got {maps.shape}")
    t, n = maps.shape[:2]
    if k is not None and k < 1:
        raise PlanError(f"k must be >= 1, got {k}")
    labels = np.full((t, n), -1, dtype=np.int64)
    if n < 2:
        labels[:] = 0
        return labels, 1
    images = _map_images(_image_clusters, [(maps[b], seed, b, perplexity, max_k, k is None) for b in range(t)],
                         _jobs(jobs, t, n))
    if k is None:
        k = int(np.argmax(np.bincount([best for *_, best in images])))  # mode over images, smallest K on ties
    with threadpool_limits(limits=1):
        for b, (inliers, points, cache, _) in enumerate(images):
            kb = min(k, len(points))
            found = cache.get(kb)
            labels[b, inliers] = found if found is not None else _kmeans(
                points, kb, _random_state(seed, b, "kmeans"))
    return labels, k


def _image_clusters(maps: np.ndarray, seed: int, b: int, perplexity: float, max_k: int | None, search: bool):
    """Image ``b`` alone: its t-SNE embedding, IQR inliers, and with ``search`` the KMeans labels of every
    candidate K and the best K (per-image seeds: the same result in any process, in any order)."""
    # Tiny problems: OpenMP threads only add contention (and run-to-run float differences).
    with threadpool_limits(limits=1):
        y = _embed(normalize_maps(maps), perplexity, _random_state(seed, b, "tsne"))
        inliers = iqr_inliers(y)
        points, cache = y[inliers], {}
        best = _best_k(points, max_k, _random_state(seed, b, "kmeans"), cache) if search else None
    return inliers, points, cache, best


#: Layers at least this wide spread their images over processes: below it, starting workers costs more
#: than the K search they share (a 512-channel image takes ~20 s, a 32-channel one well under a second).
_PARALLEL_MIN_CHANNELS = 64


def _jobs(jobs: int | None, images: int, channels: int) -> int:
    """Worker processes for one layer: ``jobs`` if given, else every core for wide layers, one for narrow."""
    if jobs is None:
        jobs = (os.cpu_count() or 1) if channels >= _PARALLEL_MIN_CHANNELS else 1
    return max(1, min(int(jobs), images))


def _map_images(fn, arguments: list[tuple], jobs: int) -> list:
    if jobs == 1:
        return [fn(*a) for a in arguments]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=jobs)(delayed(fn)(*a) for a in arguments)


def redundancy_index(labels, legacy_first_label: bool = False) -> np.ndarray:
    """RI per filter from a T x N label matrix (spec §5.5), summed over ordered image pairs p != q.

    For pair (p, q) and each label u of image p: m_u = max over labels v of p of |P_u & Q_v|, and a
    member of P_u scores m_u if its label in q is one of the maximising v (else 0); outliers (-1)
    score -1. ``legacy_first_label`` reproduces the seed quirk: the lowest label of p scores -1
    even when it is a cluster (p has no outliers).

    Vectorised over q with one loop over p, O(T^2 N log) in all: only the (u, v) label pairs that
    occur are counted (|P_u & Q_v| for the pair (u_i, v_i) of each filter i), never a dense L x L
    table, so wide layers with many clusters stay cheap. A u whose overlaps are all 0 has m_u = 0.
    """
    lab = np.asarray(labels, dtype=np.int64)
    t, n = lab.shape
    values = np.unique(lab)
    n_labels = len(values)
    code = np.searchsorted(values, lab)  # labels -> 0..L-1, order kept (-1 first when present)
    images = np.arange(t)[:, None]
    ri = np.zeros(n)
    for p in range(t):
        u = code[p][None, :]  # 1 x N: each filter's cluster in p
        present = np.zeros(n_labels, dtype=bool)
        present[u] = True
        allowed = present[code]  # T x N: the filter's label in q is a label of p (v in U)
        cell = (images * n_labels + u) * n_labels + code  # T x N: id of (q, u_i, v_i)
        _, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
        overlap = np.where(allowed, counts[inverse.reshape(t, n)], 0)  # |P_u_i & Q_v_i|
        row = (images * n_labels + u).ravel()  # id of (q, u_i)
        best = np.zeros(t * n_labels, dtype=np.int64)
        np.maximum.at(best, row, overlap.ravel())  # m_u per (q, u)
        m_u = best[row].reshape(t, n)
        score = np.where(allowed & (overlap == m_u), m_u, 0)
        outlier = values[u[0]] == -1 if not legacy_first_label else u[0] == u.min()
        score[:, outlier] = -1
        score[p] = 0  # pairs need p != q
        ri += score.sum(axis=0)
    return ri


def fmc_scores(feature_maps, seed: int = 0, k: int | None = None, max_k: int | None = None,
               perplexity: float = 1.0, jobs: int | None = None) -> np.ndarray:
    """FP-FMC importance of the N channels: -RI (higher = less redundant = keep first)."""
    labels, _ = fmc_labels(feature_maps, seed=seed, k=k, max_k=max_k, perplexity=perplexity, jobs=jobs)
    return 0.0 - redundancy_index(labels)  # 0.0 - x: no -0.0 in the output


# ---- criterion plug-in (appended; the scoring math above is unchanged) --------------------------
import torch  # noqa: E402

from . import register  # noqa: E402
from .base import CALIBRATION_OPTIONS, Criterion  # noqa: E402

DEFAULT_SAMPLES = 32


def _relu_maps(kind: str):
    """Reducer for ctx.observe: the producer's output through ReLU, channels on axis 1.

    The seed hooks the ReLU that follows each conv (after its BN). A general graph has no such
    ReLU for every producer (BN, residual adds or other activations may sit in between), so fxprune
    takes the simplest uniform choice: ReLU of the producer's own output. A Linear's features are
    on the last axis and are moved to axis 1.
    """
    if kind == "linear":
        return lambda out: torch.relu(out).movedim(-1, 1).float()
    return lambda out: torch.relu(out).float()


class FMC(Criterion):
    """``fmc`` (seed 004, FP-FMC): -RI of each channel from clustered post-ReLU feature maps.

    Needs ``data=`` (real images; at least 2, RI compares image pairs); uses up to
    ``calibration_samples`` images (default 32: t-SNE and the K search run per image and layer).
    Feature maps: ReLU(producer output) in eval mode, see :func:`_relu_maps`. Options ``seed`` (0),
    ``k`` (fixed K, skips the search), ``max_k`` (caps the K search; the seed has none, it is slow on
    wide layers), ``perplexity`` (1.0), ``jobs`` (processes per layer, see :func:`fmc_labels`). A coupled group takes each class's score from its first
    producer in leader order (base.leader_first), e.g. a ResNet stage from its projection conv.
    """

    name = "fmc"
    options = CALIBRATION_OPTIONS | {"k", "max_k", "jobs", "perplexity"}

    def score(self, ctx, group):
        if ctx.data is None:
            raise PlanError("criterion 'fmc' clusters feature maps of real images: pass data=[images or "
                            "(images, targets) batches] (at least 2 images)")
        samples = int(ctx.options.get("calibration_samples", DEFAULT_SAMPLES))
        return ctx.leader_first(group, lambda p: self._producer_scores(ctx, p, samples))

    @staticmethod
    def _producer_scores(ctx, p, samples: int) -> np.ndarray:
        name = p.role.name
        maps = ctx.observe([name], _relu_maps(p.role.kind), f"fmc-relu-{p.role.kind}", samples).get(name)
        if maps is None:  # never ran as a module (read through its weights): no feature maps to cluster
            return np.zeros(len(p.classes))
        if maps.shape[0] < 2:
            raise PlanError(f"criterion 'fmc' needs at least 2 calibration images, data= gave {maps.shape[0]}")
        opts = ctx.options
        k, max_k, jobs = opts.get("k"), opts.get("max_k"), opts.get("jobs")
        return fmc_scores(maps, seed=int(opts.get("seed", 0)), k=None if k is None else int(k),
                          max_k=None if max_k is None else int(max_k),
                          perplexity=float(opts.get("perplexity", 1.0)), jobs=None if jobs is None else int(jobs))


register("fmc", FMC())
