"""Smoke test of bench/finetune_speed.py: both loops train a tiny net and the table reports them."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import bench_module


@pytest.fixture(scope="module")
def bench():
    return bench_module("finetune_speed.py")


def test_both_loops_train_and_the_table_reports_them(bench, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))
    row = bench.measure("tiny", net, 16, 8, 2, 0, torch.device("cpu"))
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("plain", "plain_sync", "fxprune"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), bench.fresh(net).state_dict().values()))
    table = bench.markdown([row], torch.device("cpu"), 0)
    assert "| tiny | 0.00 | 16² | 8 |" in table and "(CPU)" in table
    bench.write_text_atomic(tmp_path / "t.md", table)
    assert (tmp_path / "t.md").read_text() == table and not (tmp_path / "t.md.tmp").exists()
