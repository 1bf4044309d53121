"""Does a sensitivity scan allocate a FLOPs budget better than one ratio for every layer?

Per seed: a ResNet-20 is trained on scikit-learn's digits; ``fxprune.sensitivity`` prunes each channel
group alone (l1, ratios 0.25/0.5/0.75) and measures top-1 with BatchNorm statistics re-measured;
``scan.ratios(max_drop)`` gives the per-group ratios. Then three l1 prunes at the same MACs are compared:

* *scan*: ``prune(ratio=scan.ratios(max_drop))``;
* *uniform*: ``prune(flops_reduction=f)``, one ratio for all groups, f = the scan prune's MACs reduction;
* *global*: ``prune(flops_reduction=f, global_ratio=True)``, filters ranked across groups.

Each is scored right after pruning (BatchNorm statistics re-measured on 512 training images, no weight
change) and after ``--finetune-epochs`` of fine-tuning. Prints a table and writes bench/results/sensitivity.md.

    .venv/bin/python bench/sensitivity.py [--seeds 3] [--epochs 8] [--finetune-epochs 2] [--max-drop 1.0]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxprune  # noqa: E402
from fxprune.data import load_dataset  # noqa: E402
from fxprune.experiment import write_text_atomic  # noqa: E402
from fxprune.models import get_model  # noqa: E402
from fxprune.report import count  # noqa: E402
from fxprune.runner import evaluate, finetune  # noqa: E402

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
METHODS = ("scan", "uniform", "global")


def top1_with_own_statistics(net, bn_train, test, bn_images: int) -> float:
    """Top-1 (percent) of a copy whose BatchNorm statistics are re-measured: pruned and unpruned alike."""
    net = copy.deepcopy(net)
    fxprune.recalibrate_bn(net, bn_train, images=bn_images)
    return 100.0 * evaluate(net, test, device="cpu")[1]


def trained_resnet20(seed: int, epochs: int, train, test):
    """The baseline every digits bench starts from: a ResNet-20 trained from scratch, in eval mode."""
    torch.manual_seed(seed)
    base = get_model("resnet20", num_classes=10)
    finetune(base, train, test, epochs=epochs, lr=0.1, schedule="cosine", batch_size=64, seed=seed,
             progress=False, device="cpu")
    return base.eval()


def digits_parser(doc: str, results: str, *, epochs: int, finetune_epochs: int) -> argparse.ArgumentParser:
    """The options every digits bench takes: seeds, training and fine-tuning epochs, the images BatchNorm
    statistics are re-measured on, and the output file (``bench/results/<results>``)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--finetune-epochs", type=int, default=finetune_epochs)
    ap.add_argument("--bn-images", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", results))
    return ap


def run_on_digits(run_seed, markdown, args) -> None:
    """``run_seed(seed, args, train, bn_train, test)`` for every seed, then ``markdown``'s table: printed and
    written to ``args.out``."""
    train = load_dataset("digits", split="train", seed=0)
    bn_train = load_dataset("digits", split="train", augment=False)
    test = load_dataset("digits", split="test")
    start = time.perf_counter()
    rows = [run_seed(seed, args, train, bn_train, test) for seed in range(args.seeds)]
    text = markdown(rows, args, time.perf_counter() - start)
    print(text)
    write_text_atomic(args.out, text + "\n")


def run_seed(seed: int, args, train, bn_train, test) -> dict:
    base = trained_resnet20(seed, args.epochs, train, test)
    score = lambda net: top1_with_own_statistics(net, bn_train, test, args.bn_images)  # noqa: E731
    scan = fxprune.sensitivity(base, score, X, criterion="l1", ratios=args.ratios)
    ratios = scan.ratios(args.max_drop)
    if not ratios:
        raise SystemExit(f"seed {seed}: no group stays within {args.max_drop} points; raise --max-drop")
    small = {"scan": fxprune.prune(base, X, criterion="l1", ratio=ratios)}
    base_macs = count(base, X).macs_conv_linear
    macs = 1.0 - count(small["scan"], X).macs_conv_linear / base_macs
    small["uniform"] = fxprune.prune(base, X, criterion="l1", flops_reduction=macs)
    small["global"] = fxprune.prune(base, X, criterion="l1", flops_reduction=macs, global_ratio=True)
    row = {"seed": seed, "baseline": scan.baseline, "groups": len(ratios), "macs": {}, "pruned": {}, "tuned": {}}
    for name, net in small.items():
        row["macs"][name] = 100.0 * (1.0 - count(net, X).macs_conv_linear / base_macs)
        fxprune.recalibrate_bn(net, bn_train, images=args.bn_images)
        row["pruned"][name] = 100.0 * evaluate(net, test, device="cpu")[1]
        finetune(net, train, test, epochs=args.finetune_epochs, lr=0.01, schedule="cosine", batch_size=64,
                 seed=seed, progress=False, device="cpu")
        row["tuned"][name] = 100.0 * evaluate(net, test, device="cpu")[1]
    print(f"seed {seed}: baseline {scan.baseline:.2f}%, scan prunes {len(ratios)} of {len(scan.groups)} groups; "
          + "; ".join(f"{n} -{row['macs'][n]:.1f}% MACs: {row['pruned'][n]:.2f}% -> {row['tuned'][n]:.2f}%"
                      for n in METHODS), flush=True)
    return row


def mean_std(values: list[float], signed: bool = False) -> str:
    """``mean ± sample std`` over seeds (the mean alone for one seed)."""
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{'+' if signed else ''}.2f}{spread}"


def markdown(rows: list[dict], args, seconds: float) -> str:
    def cell(key: str, name: str) -> str:
        return mean_std([r[key][name] for r in rows])

    lines = [
        "# Sensitivity-guided ratios vs one ratio for all, at the same MACs",
        "",
        f"ResNet-20 on scikit-learn digits (1437 train / 360 test images), {args.epochs} training epochs, "
        f"{len(rows)} seed(s); l1 scan at ratios {', '.join(f'{r:g}' for r in args.ratios)}, max drop "
        f"{args.max_drop} points; BatchNorm statistics re-measured on {args.bn_images} training images before every "
        f"score; fine-tuning {args.finetune_epochs} epoch(s), lr 0.01 cosine. CPU, {seconds:.0f} s. Command: "
        "`.venv/bin/python bench/sensitivity.py`",
        "",
        "Baselines (top-1, statistics re-measured): " + ", ".join(f"{r['baseline']:.2f}%" for r in rows)
        + "; the scan pruned " + ", ".join(str(r["groups"]) for r in rows) + " groups.",
        "",
        "| method | MACs (conv+linear) removed | top-1 after pruning | top-1 after fine-tuning |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {cell('macs', n)}% | {cell('pruned', n)}% | {cell('tuned', n)}% |" for n in METHODS]
    lines += ["", "Mean ± standard deviation over seeds. Per seed:", "",
              "| seed | " + " | ".join(f"{n} pruned / tuned" for n in METHODS) + " |",
              "|---" * (len(METHODS) + 1) + "|"]
    lines += [f"| {r['seed']} | " + " | ".join(f"{r['pruned'][n]:.2f} / {r['tuned'][n]:.2f}" for n in METHODS) + " |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = digits_parser(__doc__, "sensitivity.md", epochs=8, finetune_epochs=2)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--max-drop", type=float, default=1.0)
    run_on_digits(run_seed, markdown, ap.parse_args())


if __name__ == "__main__":
    main()
