"""passes.rewrite's weight slicing: every gather path equals plain indexing ``w[rows][:, cols]``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from passes.rewrite import _take_rows_cols


@pytest.mark.parametrize("shape", [(16, 12, 3, 3), (16, 12, 1, 1), (10, 7), (8, 6, 5), (4, 3, 2, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("contiguous", [True, False])
def test_gather_equals_indexing(shape, dtype, contiguous):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g).to(dtype)
    if not contiguous:  # same values, transposed storage
        w = w.transpose(0, 1).contiguous().transpose(0, 1)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(shape[0], shape[0] // 2 + 1, replace=False))
    cols = np.sort(rng.choice(shape[1], shape[1] // 2 + 1, replace=False))
    want = w[torch.from_numpy(rows)][:, torch.from_numpy(cols)]
    for r, c, expected in [(rows, cols, want), (rows, None, w[torch.from_numpy(rows)]),
                           (None, cols, w[:, torch.from_numpy(cols)]), (None, None, w)]:
        got = _take_rows_cols(w, r, c)
        assert got.shape == expected.shape and got.dtype == w.dtype
        assert torch.equal(got, expected)
