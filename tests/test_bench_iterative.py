"""Smoke test of bench/iterative.py: one short seed, every method ends at the same widths, the table renders."""
from __future__ import annotations

import argparse

from conftest import bench_module
from fxprune.data import load_dataset


def test_one_seed_compares_one_shot_and_steps_at_the_same_widths():
    bench = bench_module("iterative.py")
    args = argparse.Namespace(epochs=1, finetune_epochs=2, steps=2, ratios=[0.5], bn_images=128, seeds=1)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    row = bench.run_seed(0, args, train, load_dataset("digits", split="train", augment=False), test)  # asserts equal MACs
    result = row["ratios"][0.5]
    assert 60.0 < result["macs"] < 80.0  # ratio 0.5 halves both sides of most convs
    assert all(0.0 <= result[k] <= 100.0 for k in ("pruned", "one-shot", "iterative", "back-loaded"))
    assert bench.schedules(args) == {"iterative": [1, 1], "back-loaded": [1, 1]}
    assert bench.schedules(argparse.Namespace(finetune_epochs=6, steps=3))["back-loaded"] == [1, 1, 4]
    table = bench.markdown([row], args, 1.0)
    assert "| 0.5 | " in table and "| 0 | " in table
