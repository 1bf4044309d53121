"""The main job, end to end on real data that ships with scikit-learn (no download):

train a seed CIFAR ResNet on the digits images (8x8 upsampled to 32x32) -> prune it with the
redundancy-graph criterion (threshold 0.7, calibrated on 100 training images) -> verify the compact
model against the masked original -> re-measure its BatchNorm statistics on 512 training images ->
fine-tune briefly -> report accuracy, params and MACs before and after -> save the compact model as
TorchScript, plus its plan.

    make demo            # or: .venv/bin/python -m fxprune.demo --arch resnet20 --threshold 0.7
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import fxprune
from fxprune.data import load_dataset
from fxprune.experiment import write_text_atomic
from fxprune.models import get_model
from fxprune.runner import evaluate, finetune

log = logging.getLogger("fxprune.demo")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Prune a seed ResNet trained on digits, end to end.")
    ap.add_argument("--arch", default="resnet20", help="a bundled seed architecture (fxprune.models.list_models())")
    ap.add_argument("--threshold", type=float, default=0.7, help="graph criterion similarity threshold")
    ap.add_argument("--epochs", type=int, default=6, help="baseline training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--out", default="out/demo", help="where model.pt and plan.json are written")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    step(f"training {args.arch} on scikit-learn digits ({len(train)} train / {len(test)} test images)")
    model = get_model(args.arch, num_classes=10)
    finetune(model, train, test, epochs=args.epochs, lr=0.1, schedule="cosine", weight_decay=5e-4,
             batch_size=64, seed=args.seed)
    model.eval()
    top1_before = evaluate(model, test)[1]

    step(f"pruning with criterion='graph', threshold={args.threshold} (100 calibration images)")
    calib = [torch.stack([train[i][0] for i in range(100)])]
    x = calib[0][:2]
    small = fxprune.prune(model, x, criterion="graph", threshold=args.threshold, data=calib)
    err = fxprune.verify(model, small, x)
    print(f"verify: compact model == masked original, relative error {err:.1e} (limit 1e-5)")
    top1_pruned = evaluate(small, test)[1]

    step("re-measuring the compact model's BatchNorm statistics on 512 training images (no weight changes)")
    fxprune.recalibrate_bn(small, train, images=512, seed=args.seed)  # after verify: the statistics now differ
    top1_recalibrated = evaluate(small, test)[1]
    print(f"top-1 {100 * top1_pruned:.2f}% right after pruning, "
          f"{100 * top1_recalibrated:.2f}% with its own statistics")

    step(f"fine-tuning the compact model for {args.finetune_epochs} epochs")
    finetune(small, train, test, epochs=args.finetune_epochs, lr=0.01, schedule="cosine", weight_decay=5e-4,
             batch_size=64, seed=args.seed)
    small.eval()
    top1_after = evaluate(small, test)[1]

    step("report")
    rep = fxprune.report(model, small, example_inputs=torch.randn(1, 3, 32, 32))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fxprune.export(small, out / "model.pt", format="torchscript", example_inputs=torch.randn(1, 3, 32, 32))
    write_text_atomic(out / "plan.json", json.dumps(small.meta["fxprune.plan"].to_dict(), indent=2))
    summary = {
        "arch": args.arch,
        "threshold": args.threshold,
        "top1_before": round(100 * top1_before, 2),
        "top1_pruned_no_finetune": round(100 * top1_pruned, 2),
        "top1_pruned_bn_recalibrated": round(100 * top1_recalibrated, 2),
        "top1_after": round(100 * top1_after, 2),
        "flops_reduction_pct": round(rep.flops_reduction_pct, 2),
        "params_reduction_pct": round(rep.params_reduction_pct, 2),
        "verify_rel_err": err,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2))
    print(
        f"\ntop-1 on digits test: {summary['top1_before']:.2f}% before, {summary['top1_pruned_no_finetune']:.2f}% "
        f"right after pruning, {summary['top1_pruned_bn_recalibrated']:.2f}% with BatchNorm statistics re-measured, "
        f"{summary['top1_after']:.2f}% after fine-tuning\n"
        f"FLOPs (MACs, conv+linear) -{summary['flops_reduction_pct']:.1f}%, params -{summary['params_reduction_pct']:.1f}%\n"
        f"TorchScript: {out / 'model.pt'}   plan: {out / 'plan.json'}   ({summary['seconds']} s)"
    )
    return summary


if __name__ == "__main__":
    main()
