"""Smoke test of bench/sensitivity.py: one short seed, and the three prunes it compares really compare."""
from __future__ import annotations

import argparse

from conftest import bench_module
from fxprune.data import load_dataset


def test_one_seed_compares_three_prunes_at_the_same_macs():
    bench = bench_module("sensitivity.py")
    args = argparse.Namespace(epochs=1, finetune_epochs=1, ratios=[0.5], max_drop=100.0, bn_images=128)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    row = bench.run_seed(0, args, train, load_dataset("digits", split="train", augment=False), test)
    # every group tolerates 0.5 under a 100-point allowance: the scan's ratios are one ratio for all
    assert row["groups"] == 12 and row["pruned"]["scan"] == row["pruned"]["uniform"]
    assert abs(row["macs"]["global"] - row["macs"]["scan"]) < 2.0  # the FLOPs search lands near the same MACs
    assert all(0.0 <= row[k][n] <= 100.0 for k in ("pruned", "tuned") for n in bench.METHODS)
    table = bench.markdown([row], argparse.Namespace(**vars(args)), 1.0)
    assert "| scan | " in table and "| 0 | " in table
