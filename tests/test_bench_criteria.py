"""Smoke test of bench/criteria.py: its core function on digits, 1 criterion x 1 level x 1 seed, a few steps."""
from __future__ import annotations

import json

import pytest

from conftest import bench_module


@pytest.fixture(scope="module")
def bench():
    return bench_module("criteria.py")


def test_core_on_digits(bench, tmp_path):
    args = bench.parse_args(["--dataset", "digits", "--train-subset", "64", "--test-subset", "32",
                             "--baseline-epochs", "1", "--max-steps", "1", "--finetune-max-steps", "1",
                             "--batch-size", "16", "--criteria", "l1", "--levels", "0.5", "--seeds", "0",
                             "--calib-batches", "1", "--calib-batch-size", "8"])
    cfg = bench.config_from_args(args)
    out = tmp_path / "criteria.json"
    result = bench.run_benchmark(cfg, out, tmp_path / "cache", None, "smoke")
    assert len(result["runs"]) == 1
    r = result["runs"][0]
    assert r["criterion"] == "l1" and r["level"] == 0.5
    assert 0.4 < r["flops_reduction"] < 0.6  # the FLOPs target is met, measured on the pruned model
    assert 0.0 < r["params_reduction"] < 1.0
    for key in ("top1_baseline", "top1_pruned", "top1_finetuned"):
        assert 0.0 <= r[key] <= 1.0
    assert json.loads(out.read_text())["runs"][0]["criterion"] == "l1"
    assert list((tmp_path / "cache").glob("baseline_digits_s0_*.pt"))  # the baseline is cached

    bench.write_outputs(result, tmp_path, "smoke")
    md = (tmp_path / "criteria.md").read_text()
    assert "| l1 | 50% |" in md and "Verdict" in md
    assert (tmp_path / "criteria.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_unknown_criterion_is_rejected(bench):
    with pytest.raises(SystemExit, match="unknown criteria"):
        bench.config_from_args(bench.parse_args(["--criteria", "nope"]))


def test_missing_fashion_names_the_path(bench, tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path / "nowhere")):
        bench.load_data("fashion-mnist", tmp_path / "nowhere")
