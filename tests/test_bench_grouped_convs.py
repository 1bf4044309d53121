"""Smoke test of bench/grouped_convs.py: one short seed, every mode lands on the FLOPs target, the table renders."""
from __future__ import annotations

import argparse

from conftest import bench_module
from fxprune.data import load_dataset


def test_one_seed_prunes_every_mode_to_the_same_macs():
    bench = bench_module("grouped_convs.py")
    args = argparse.Namespace(epochs=1, finetune_epochs=1, levels=[0.5], bn_images=64, seeds=1)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    row = bench.run_seed(0, args, train, load_dataset("digits", split="train", augment=False), test)
    cells = row["levels"][0.5]
    assert set(cells) == set(bench.MODES)
    for mode in bench.MODES:
        assert abs(cells[mode]["macs"] - 50.0) <= 2.0, mode  # flops_reduction's tolerance
        assert 0.0 <= cells[mode]["pruned"] <= 100.0 and 0.0 <= cells[mode]["tuned"] <= 100.0
    table = bench.markdown([row], args, 1.0)
    assert "| 0.5 | within | " in table and "unreachable" not in table
