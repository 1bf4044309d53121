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
    for key in ("top1_baseline", "top1_pruned", "top1_recalibrated", "top1_finetuned"):
        assert 0.0 <= r[key] <= 1.0
    assert result["n_test"] == 32
    assert json.loads(out.read_text())["runs"][0]["criterion"] == "l1"
    assert list((tmp_path / "cache").glob("baseline_digits_s0_*.pt"))  # the baseline is cached

    bench.write_outputs(result, tmp_path, "smoke")
    md = (tmp_path / "criteria.md").read_text()
    assert "| l1 | 50% |" in md and "Verdict" in md and "top-1 BN re-measured" in md
    assert "a 32-image test set" in md  # the test set's own size, not Fashion-MNIST's
    assert "With one seed the seed-to-seed spread is not measured, so no lead is called real" in md
    assert (tmp_path / "criteria.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_unknown_criterion_is_rejected(bench):
    with pytest.raises(SystemExit, match="unknown criteria"):
        bench.config_from_args(bench.parse_args(["--criteria", "nope"]))


def test_missing_fashion_names_the_path(bench, tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path / "nowhere")):
        bench.load_data("fashion-mnist", tmp_path / "nowhere")


def _run(criterion, level, seed, top1):
    return {"criterion": criterion, "level": level, "seed": seed, "flops_reduction": level, "params_reduction": level,
            "top1_baseline": 0.94, "top1_pruned": 0.1, "top1_finetuned": top1}


def test_a_level_cut_short_is_named_and_kept_out_of_the_ranking(bench, tmp_path):
    cfg = {"dataset": "fashion-mnist", "train_subset": 0, "test_subset": 0, "baseline_epochs": 15, "baseline_lr": 0.1,
           "batch_size": 128, "max_steps": None, "levels": [0.5, 0.72], "criteria": ["l1", "graph"], "seeds": [0],
           "calib_batches": 1, "calib_batch_size": 32, "finetune_epochs": 3, "finetune_lr": 0.01,
           "finetune_max_steps": 0, "device": "cuda"}
    runs = [_run("l1", 0.5, 0, 0.939), _run("graph", 0.5, 0, 0.937), _run("l1", 0.72, 0, 0.99)]
    result = {"config": cfg, "runs": runs, "elapsed_s": 60.0, "threads": 8, "torch": "x", "device_name": "GPU X",
              "baselines": {"0": {"top1": 0.944, "macs": 42.9e6, "params": 291e3}}}
    assert bench.complete_levels(result) == [0.5]
    bench.write_outputs(result, tmp_path, "smoke")
    md = (tmp_path / "criteria.md").read_text()
    assert "| l1 | 72% |" not in md and "| l1 | 50% |" in md and "| graph | 50% |" in md
    assert "Cut short" in md and "l1 at 72% seed 0: fine-tuned 99.00%" in md
    assert "short of convergence" not in md  # a 94.4% baseline is converged
    assert "trained on GPU X, pruned on the CPU" in md
    assert "BN re-measured" not in md  # runs from before that column: the table has none
