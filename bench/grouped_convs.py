"""Which way of pruning grouped convs keeps the most accuracy at the same MACs?

Per seed: torchvision's regnet_x_400mf (10 classes, 32x32 inputs; grouped convs of 2, 4, 10 and 25 groups
of 16 channels) is trained on scikit-learn's digits. Then, for each FLOPs target, it is pruned (l1,
``flops_reduction=``) three ways, ``grouped_convs=``:

* *whole* (fxprune's default): conv groups go (a group's inputs and outputs are one class);
* *within*: every group keeps the same positions (inputs and outputs apart; Torch-Pruning's way);
* *auto*: per conv, whichever gives more classes (here: within for 2, 4, 10 groups, whole for 25).

Each is scored right after pruning (BatchNorm statistics re-measured on 512 training images, no weight
change) and after ``--finetune-epochs`` of fine-tuning (lr 0.005, cosine; training: lr 0.01 for 20 epochs,
as RegNet diverges here at 0.05 and lands far apart over seeds at 0.02). A target a mode cannot reach
within fxprune's 2% tolerance is reported as such. Prints a table and writes bench/results/grouped_convs.md.

    .venv/bin/python bench/grouped_convs.py [--seeds 3] [--epochs 20] [--levels 0.5 0.7] [--finetune-epochs 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fxprune  # noqa: E402
from fxprune.report import count  # noqa: E402
from fxprune.runner import evaluate, finetune  # noqa: E402
from passes.errors import PlanError  # noqa: E402
from sensitivity import X, digits_parser, mean_std, run_on_digits  # noqa: E402

MODES = ("whole", "auto", "within")


def trained_regnet(seed: int, epochs: int, train, test):
    torch.manual_seed(seed)
    base = torchvision.models.regnet_x_400mf(num_classes=10)
    finetune(base, train, test, epochs=epochs, lr=0.01, schedule="cosine", batch_size=64, seed=seed,
             progress=False, device="cpu")
    return base.eval()


def run_seed(seed: int, args, train, bn_train, test) -> dict:
    base = trained_regnet(seed, args.epochs, train, test)
    base_macs = count(base, X).macs_conv_linear
    row = {"seed": seed, "baseline": 100.0 * evaluate(base, test, device="cpu")[1], "levels": {}}
    for level in args.levels:
        cells = row["levels"][level] = {}
        for mode in MODES:
            try:
                net = fxprune.prune(base, X, criterion="l1", flops_reduction=level, grouped_convs=mode)
            except PlanError as e:
                cells[mode] = None
                print(f"seed {seed} level {level} {mode}: unreachable ({e})", flush=True)
                continue
            macs = 100.0 * (1.0 - count(net, X).macs_conv_linear / base_macs)
            fxprune.recalibrate_bn(net, bn_train, images=args.bn_images)
            pruned = 100.0 * evaluate(net, test, device="cpu")[1]
            finetune(net, train, test, epochs=args.finetune_epochs, lr=0.005, schedule="cosine", batch_size=64,
                     seed=seed, progress=False, device="cpu")
            tuned = 100.0 * evaluate(net, test, device="cpu")[1]
            cells[mode] = {"macs": macs, "pruned": pruned, "tuned": tuned}
            print(f"seed {seed} level {level} {mode}: -{macs:.1f}% MACs, {pruned:.2f}% -> {tuned:.2f}%", flush=True)
    return row


def markdown(rows: list[dict], args, seconds: float) -> str:
    def cell(level: float, mode: str, key: str) -> str:
        values = [r["levels"][level][mode] for r in rows]
        if any(v is None for v in values):
            return f"unreachable ({sum(v is None for v in values)} of {len(values)} seeds)"
        return mean_std([v[key] for v in values]) + "%"

    lines = [
        "# Grouped convs: whole groups, within groups, or auto, at the same MACs",
        "",
        f"torchvision regnet_x_400mf (10 classes) on scikit-learn digits at 32x32 (1437 train / 360 test images), "
        f"{args.epochs} training epochs, {len(rows)} seed(s); l1 with `flops_reduction=`; BatchNorm statistics "
        f"re-measured on {args.bn_images} training images before scoring; fine-tuning {args.finetune_epochs} "
        f"epoch(s), lr 0.005 cosine (training: lr 0.01). CPU, {seconds:.0f} s. "
        "Command: `.venv/bin/python bench/grouped_convs.py`",
        "",
        "Baselines (top-1): " + ", ".join(f"{r['baseline']:.2f}%" for r in rows) + ".",
        "",
        "| FLOPs target | grouped_convs | MACs (conv+linear) removed | top-1 after pruning | top-1 after fine-tuning |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {level:g} | {mode} | {cell(level, mode, 'macs')} | {cell(level, mode, 'pruned')} | "
              f"{cell(level, mode, 'tuned')} |" for level in args.levels for mode in MODES]
    lines += ["", "Mean ± standard deviation over seeds."]
    return "\n".join(lines)


def main() -> None:
    ap = digits_parser(__doc__, "grouped_convs.md", epochs=20, finetune_epochs=3)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7])
    run_on_digits(run_seed, markdown, ap.parse_args())


if __name__ == "__main__":
    main()
