"""CORING scoring math (passes/criteria/coring.py) against slow references written from spec §4."""

import numpy as np
import pytest
import tensorly as tl
import torch

from passes.criteria import coring
from passes.errors import PlanError

DISTANCES = ["V", "E", "C"]


def _grouped_filters(groups=16, copies=4, shape=(8, 3, 3), noise=1e-4, seed=0):
    """`groups` distinct random filters, each repeated `copies` times (+ noise), channels shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((groups, *shape))
    w = np.repeat(base, copies, axis=0) + noise * rng.standard_normal((groups * copies, *shape))
    perm = rng.permutation(groups * copies)  # so index order cannot explain the result
    return w[perm], np.repeat(np.arange(groups), copies)[perm]


# ---- slow references, written from the spec text ------------------------------------------------

def _ref_pair(a, b, distance):
    if distance == "V":
        den = np.var(a, ddof=1) + np.var(b, ddof=1)
        return 0.0 if den <= 1e-24 else np.var(a - b, ddof=1) / den
    if distance == "E":
        return np.linalg.norm(a - b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na * nb == 0 else abs(np.dot(a, b)) / (na * nb)


def _ref_distance_matrix(factors, distance):
    kept = [f for f in factors if f.shape[1] > 1]
    n = factors[0].shape[0]
    m = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            m[i, j] = np.mean([_ref_pair(f[i], f[j], distance) for f in kept])
    return m


def _ref_min_sum(matrix, is_distance):
    """Spec §4.4 literally: full-matrix argmin/argmax every step, sums skipping the sentinel."""
    m = np.array(matrix, dtype=float)
    n = len(m)
    inf = np.inf if is_distance else -np.inf
    np.fill_diagonal(m, inf)
    s = np.full(n, n - 1.0)
    for t in range(n - 1):
        flat = np.argmin(m) if is_distance else np.argmax(m)
        i, j = divmod(int(flat), n)
        m[i, j] = m[j, i] = inf
        row = sum(x for x in m[i, :] if x != inf)
        col = sum(x for x in m[:, j] if x != inf)
        if is_distance:
            index = j if row > col else i
        else:
            index = j if row < col else i
        m[index, :] = inf
        m[:, index] = inf
        s[index] = t
    return s


# ---- decomposition ------------------------------------------------------------------------------

def test_batched_unfold_is_tensorly_unfold():
    w = np.random.default_rng(1).standard_normal((5, 4, 3, 2))
    for mode in range(3):
        got = coring.batched_unfold(w, mode)
        for i in range(5):
            np.testing.assert_array_equal(got[i], tl.base.unfold(tl.tensor(w[i]), mode))


def test_factors_are_sign_fixed_leading_singular_vectors():
    w = np.random.default_rng(2).standard_normal((6, 5, 3, 3))
    factors = coring.filter_factors(w)
    assert [f.shape for f in factors] == [(6, 5), (6, 3), (6, 3)]
    for mode, f in enumerate(factors):
        for i in range(6):
            u = np.linalg.svd(tl.base.unfold(tl.tensor(w[i]), mode))[0][:, 0]
            np.testing.assert_allclose(abs(f[i] @ u), 1.0, atol=1e-12)
            assert f[i][np.argmax(np.abs(f[i]))] > 0


def test_fix_sign_rule():
    u = np.array([[0.1, -0.9, 0.3], [0.5, -0.5, 0.1], [0.0, 0.0, 0.0]])
    fixed = coring.fix_sign(u)
    np.testing.assert_array_equal(fixed[0], [-0.1, 0.9, -0.3])
    np.testing.assert_array_equal(fixed[1], [0.5, -0.5, 0.1])  # tie -> first entry decides
    np.testing.assert_array_equal(fixed[2], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(coring.fix_sign(-u[:2]), fixed[:2])


def test_rank_above_one_concatenates_vectors():
    w = np.random.default_rng(3).standard_normal((4, 6, 3, 3))
    factors = coring.filter_factors(w, rank=2)
    assert [f.shape for f in factors] == [(4, 12), (4, 6), (4, 6)]
    np.testing.assert_allclose(factors[0][:, :6], coring.filter_factors(w)[0], atol=1e-12)


def test_linear_and_1x1_and_zero_filters_are_finite():
    rng = np.random.default_rng(4)
    conv1x1 = rng.standard_normal((10, 7, 1, 1))
    conv1x1[3] = 0.0
    linear = rng.standard_normal((10, 7))
    for w in (conv1x1, linear):
        factors = coring.filter_factors(w)
        assert [f.shape for f in factors] == [(10, 7), (10, 1), (10, 1)]
        for d in DISTANCES:
            for strategy in coring.STRATEGIES:
                assert np.all(np.isfinite(coring.coring_scores(w, d, strategy)))
    np.testing.assert_array_equal(coring.filter_factors(conv1x1)[0][3], 0.0)
    # a 1x1 conv is its Linear weight: same scores
    np.testing.assert_array_equal(coring.coring_scores(conv1x1[:, :, 0, 0]),
                                  coring.coring_scores(conv1x1))


def test_no_informative_mode_falls_back_to_index_order():
    w = np.random.default_rng(5).standard_normal((4, 1, 1, 1))
    np.testing.assert_array_equal(coring.coring_scores(w), [0, 1, 2, 3])


# ---- distances ----------------------------------------------------------------------------------

@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("shape", [(24, 6, 3, 3), (24, 5, 1, 1), (24, 4, 5, 3), (24, 300, 1, 1)])
def test_vectorized_distance_equals_double_loop(distance, shape):
    w = np.random.default_rng(6).standard_normal(shape)
    w[2] = 0.0  # zero filter: 0/0 terms
    w[5] = w[4]  # exact duplicate
    w[7] = -w[6]  # negation
    factors = coring.filter_factors(w)
    got = coring.distance_matrix(factors, distance)
    want = _ref_distance_matrix(factors, distance)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_negated_filter_has_identical_factors_and_scores():
    w = np.random.default_rng(7).standard_normal((20, 6, 3, 3))
    flipped = w.copy()
    flipped[[1, 4, 9]] *= -1
    for a, b in zip(coring.filter_factors(w), coring.filter_factors(flipped)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    for d in DISTANCES:
        np.testing.assert_array_equal(coring.coring_scores(w, d), coring.coring_scores(flipped, d))


def test_scores_ignore_the_sign_lapack_returns(monkeypatch):
    """Flip (u, v) of every other filter, still a valid SVD: without the sign fix V/E would change."""
    w = np.random.default_rng(11).standard_normal((20, 6, 3, 3))
    before = {d: coring.coring_scores(w, d) for d in DISTANCES}
    svd = np.linalg.svd

    def flipped_svd(a, full_matrices=True):
        u, s, vt = svd(a, full_matrices=full_matrices)
        sign = np.where(np.arange(len(a)) % 2 == 1, -1.0, 1.0)[:, None, None]
        return u * sign, s, vt * sign

    monkeypatch.setattr(coring.np.linalg, "svd", flipped_svd)
    for d in DISTANCES:
        np.testing.assert_array_equal(coring.coring_scores(w, d), before[d])


# ---- saliency -----------------------------------------------------------------------------------

@pytest.mark.parametrize("is_distance", [True, False])
def test_min_sum_equals_spec_loop(is_distance):
    rng = np.random.default_rng(8)
    for n in (2, 3, 17, 40):
        m = rng.random((n, n))
        m = m + m.T
        np.testing.assert_array_equal(coring.min_sum_saliency(m, is_distance), _ref_min_sum(m, is_distance))
        ties = rng.integers(0, 3, (n, n)).astype(float)  # many exact ties: row-major rule matters
        ties = ties + ties.T
        np.testing.assert_array_equal(coring.min_sum_saliency(ties, is_distance),
                                      _ref_min_sum(ties, is_distance))


def test_min_sum_small_known_answer():
    # 0 and 1 are the closest pair; 1 is closer to everyone else (sum 0.1+3 < 0.1+5) -> eliminated first
    m = np.array([[0.0, 0.1, 5.0], [0.1, 0.0, 3.0], [5.0, 3.0, 0.0]])
    np.testing.assert_array_equal(coring.min_sum_saliency(m, True), [1, 0, 2])


def test_sum_strategy():
    w = np.random.default_rng(9).standard_normal((12, 4, 3, 3))
    factors = coring.filter_factors(w)
    np.testing.assert_allclose(coring.coring_scores(w, "E", "sum"),
                               coring.distance_matrix(factors, "E").sum(axis=1))
    np.testing.assert_allclose(coring.coring_scores(w, "C", "sum"),
                               -coring.distance_matrix(factors, "C").sum(axis=1))


@pytest.mark.parametrize("distance", DISTANCES)
def test_known_answer_keeps_one_filter_per_duplicate_group(distance):
    w, group = _grouped_filters()
    scores = coring.coring_scores(w, distance)
    assert scores.dtype == np.float64 and scores.shape == (64,)
    keep = np.argsort(scores)[-16:]
    assert sorted(group[keep]) == list(range(16))


def test_deterministic_and_torch_input():
    w, _ = _grouped_filters(seed=10)
    for d in DISTANCES:
        a = coring.coring_scores(w, d)
        np.testing.assert_array_equal(a, coring.coring_scores(w, d))
        np.testing.assert_array_equal(a, coring.coring_scores(torch.tensor(w, requires_grad=True), d))


def test_bad_arguments_raise_plan_error():
    w = np.zeros((3, 2, 3, 3))
    with pytest.raises(PlanError):
        coring.coring_scores(w, distance="X")
    with pytest.raises(PlanError):
        coring.coring_scores(w, strategy="min_min")
    with pytest.raises(PlanError):
        coring.filter_factors(w, rank=0)
    with pytest.raises(PlanError):
        coring.filter_factors(np.zeros(3))
