"""FP-FMC scoring math (passes/criteria/fmc.py): RI vs a slow reference from spec §5.5, known answers."""

import numpy as np
import pytest
import torch

from passes.criteria import fmc
from passes.errors import PlanError


def _maps(unique=16, groups=12, copies=4, images=8, size=8, noise=1e-4, seed=0):
    """T x N maps: `unique` independent channels and `groups` groups of `copies` near-identical ones.

    Channel order is shuffled; returns (maps, is_unique mask). A group's maps are the same in every
    image (redundant filters), a unique channel's maps are independent of every other channel.
    """
    rng = np.random.default_rng(seed)
    dup = np.repeat(rng.random((images, groups, size, size)), copies, axis=1)
    maps = np.concatenate([dup, rng.random((images, unique, size, size))], axis=1)
    maps += noise * rng.random(maps.shape)
    perm = rng.permutation(maps.shape[1])
    return maps[:, perm], perm >= groups * copies


# ---- redundancy index: slow reference, written from the spec text ------------------------------

def _ref_ri(labels, legacy=False):
    t, n = labels.shape
    ri = np.zeros(n)
    for p in range(t):
        u_labels = sorted(set(labels[p].tolist()))
        for q in range(t):
            if q == p:
                continue
            for pos, u in enumerate(u_labels):
                members = {i for i in range(n) if labels[p, i] == u}
                if (legacy and pos == 0) or (not legacy and u == -1):
                    for i in members:
                        ri[i] -= 1
                    continue
                q_sets = {v: {i for i in range(n) if labels[q, i] == v} for v in u_labels}
                overlap = {v: len(members & q_sets[v]) for v in u_labels}
                m = max(overlap.values())
                z = set().union(*(q_sets[v] for v in u_labels if overlap[v] == m))
                for i in members:
                    ri[i] += m if i in z else 0
    return ri


def test_ri_hand_computed():
    labels = np.array([[0, 0, 1, 1], [0, 1, 1, 1]])
    # (0,1): cluster {0,1} overlaps both q-clusters by 1 -> both count 1; {2,3} -> 2 each
    # (1,0): {0} -> 1; {1,2,3} best-matches q-cluster {2,3} (2), filter 1 is not in it -> 0
    np.testing.assert_array_equal(fmc.redundancy_index(labels), [2, 1, 4, 4])
    # seed quirk: the lowest label (0, no outliers here) is scored -1 as if it were outliers
    np.testing.assert_array_equal(fmc.redundancy_index(labels, legacy_first_label=True), [-2, -1, 4, 4])


def test_ri_outliers_score_minus_one_per_pair():
    labels = np.array([[-1, 0, 0, 1], [0, 0, 0, -1], [1, 1, 0, 0]])
    ri = fmc.redundancy_index(labels)
    np.testing.assert_array_equal(ri, _ref_ri(labels))
    np.testing.assert_array_equal(fmc.redundancy_index(labels, True), _ref_ri(labels, True))


@pytest.mark.parametrize("legacy", [False, True])
def test_vectorized_ri_equals_reference(legacy):
    rng = np.random.default_rng(1)
    for t, n, k in [(2, 5, 2), (5, 12, 3), (6, 20, 6), (4, 9, 1), (3, 40, 15)]:
        labels = rng.integers(-1, k, (t, n))
        labels[0] = np.maximum(labels[0], 0)  # an image without outliers: the quirk's case
        np.testing.assert_array_equal(fmc.redundancy_index(labels, legacy), _ref_ri(labels, legacy))


def test_stable_groups_get_equal_ri():
    """Why FMC cannot keep "one per cluster": filters that always cluster together score the same."""
    rng = np.random.default_rng(2)
    group = np.repeat(np.arange(16), 4)
    labels = np.stack([rng.permutation(16)[group] for _ in range(6)])  # arbitrary label names per image
    ri = fmc.redundancy_index(labels)
    np.testing.assert_array_equal(ri, np.full(64, 4 * 6 * 5))


# ---- pieces -------------------------------------------------------------------------------------

def test_normalize_maps_divides_by_own_max():
    maps = np.zeros((3, 2, 2))
    maps[0] = [[1, 2], [3, 4]]
    maps[2] = [[-1, 0], [0, 0]]  # not post-ReLU: x/0 -> 0 instead of -inf
    out = fmc.normalize_maps(maps)
    np.testing.assert_array_equal(out, [[0.25, 0.5, 0.75, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_iqr_inliers():
    pts = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [2, 100.0]])
    np.testing.assert_array_equal(fmc.iqr_inliers(pts), [True] * 5 + [False])
    # exactly on the fence is kept (the rule removes points strictly outside)
    q1, q3 = np.percentile([0, 1, 2, 3], [25, 75])
    edge = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [q3 + 1.5 * (q3 - q1), 0]])
    q1, q3 = np.percentile(edge[:, 0], [25, 75])
    assert fmc.iqr_inliers(edge)[-1] == (edge[-1, 0] <= q3 + 1.5 * (q3 - q1))


def test_candidate_ks_follow_spec():
    assert list(fmc._candidate_ks(10, None)) == list(range(2, 10))
    assert list(fmc._candidate_ks(64, None)) == list(range(2, 32))
    assert list(fmc._candidate_ks(100, 8)) == list(range(2, 9))
    assert list(fmc._candidate_ks(2, None)) == []


# ---- end to end ---------------------------------------------------------------------------------

def test_known_answer_keeps_the_unique_channels():
    """16 independent channels + 12 groups of 4 duplicates: the top 16 are exactly the independent ones.

    16 images (with 8, data seeds 0-11 give 11-16 of 16, mostly 15: with perplexity 1 t-SNE can split
    a duplicate off its group, IQR then calls it an outlier, and RI rewards outliers); 7 of data
    seeds 0-7 give exactly 16 with 16 images. ``max_k=24`` only bounds the K search (K found ~ 17-19).
    """
    maps, unique = _maps(seed=0, images=16)
    scores = fmc.fmc_scores(maps, seed=0, max_k=24)
    assert scores.dtype == np.float64 and scores.shape == (64,)
    keep = np.argsort(scores, kind="stable")[-16:]
    assert unique[keep].all()


def test_labels_shape_range_and_consistency():
    maps, _ = _maps(seed=1, images=4)
    labels, k = fmc.fmc_labels(maps, seed=3, max_k=12)
    assert labels.shape == (4, 64) and 2 <= k <= 12
    assert labels.min() >= -1 and labels.max() < k
    np.testing.assert_array_equal(fmc.fmc_scores(maps, seed=3, max_k=12), -fmc.redundancy_index(labels))
    fixed, k5 = fmc.fmc_labels(maps, seed=3, k=5)
    assert k5 == 5 and fixed.max() < 5


def test_images_spread_over_processes_give_the_same_labels():
    maps, _ = _maps(seed=4, images=3)
    one, k1 = fmc.fmc_labels(maps, seed=5, max_k=8, jobs=1)
    two, k2 = fmc.fmc_labels(maps, seed=5, max_k=8, jobs=2)
    assert k1 == k2
    np.testing.assert_array_equal(one, two)


def test_deterministic_under_seed_and_torch_input():
    maps, _ = _maps(seed=2, images=3, unique=8, groups=4)
    a = fmc.fmc_scores(maps, seed=7, k=6)
    np.testing.assert_array_equal(a, fmc.fmc_scores(maps, seed=7, k=6))
    np.testing.assert_array_equal(a, fmc.fmc_scores(torch.tensor(maps, dtype=torch.float64), seed=7, k=6))


def test_dead_channels_are_pruned_first():
    rng = np.random.default_rng(3)
    maps = rng.random((4, 24, 6, 6))
    maps[:, [3, 10, 17, 20]] = 0.0  # dead ReLU channels: identical zero maps in every image
    scores = fmc.fmc_scores(maps, seed=0)
    assert set(np.argsort(scores, kind="stable")[:4]) == {3, 10, 17, 20}


@pytest.mark.parametrize("shape", [(3, 1, 4, 4), (3, 2, 4, 4), (3, 3, 4, 4), (4, 10), (2, 5, 3)])
def test_small_and_flat_inputs_are_finite(shape):
    scores = fmc.fmc_scores(np.random.default_rng(4).random(shape), seed=0)
    assert scores.shape == (shape[1],) and np.all(np.isfinite(scores))


def test_single_image_gives_zero_scores():
    scores = fmc.fmc_scores(np.random.default_rng(5).random((1, 10, 4, 4)))
    np.testing.assert_array_equal(scores, np.zeros(10))
    assert not np.signbit(scores).any()


def test_bad_arguments_raise_plan_error():
    with pytest.raises(PlanError):
        fmc.fmc_scores(np.zeros(5))
    with pytest.raises(PlanError):
        fmc.fmc_scores(np.zeros((2, 4, 3, 3)), k=0)
