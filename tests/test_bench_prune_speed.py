"""Smoke test of bench/prune_speed.py: every pass is timed and both tools prune the model."""
from __future__ import annotations

import torch
import torchvision

from conftest import bench_module


def test_every_pass_is_timed_and_both_tools_prune():
    bench = bench_module("prune_speed.py")
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    times = bench.time_phases(model, x, 0.3)
    assert set(times) == set(bench.PHASES) and all(t > 0 for t in times.values())
    assert times["of which code"] < times["rewrite"] and 0 < times["of which slicing"] < times["rewrite"]
    assert bench.best_tracer(model, 1) > 0
    assert bench.time_fxprune(model, x, 0.3) > 0 and bench.time_torch_pruning(model, x, 0.3) > 0
