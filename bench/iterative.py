"""Does pruning in steps, fine-tuning between them, beat one shot given the same fine-tuning?

Per seed: a ResNet-20 is trained on scikit-learn's digits; then, for each ratio R (l1):

* *one-shot*: ``prune(ratio=R)``, then ``--finetune-epochs`` E epochs of fine-tuning;
* *iterative*: ``prune_iteratively(ratio=R, steps=S)`` with E / S epochs of fine-tuning after every step;
* *iterative, back-loaded*: the same steps with 1 epoch after each but the last, which gets the rest
  (E - S + 1): the last step cuts as deep as one shot does, and gets most of the epochs to recover.

All end with the same widths (the same kept count in every group) and the same number of fine-tuning
epochs (lr 0.01, cosine, restarted at every step for the iterative run); every fine-tuning starts with
the pruned model's BatchNorm statistics re-measured (``recalibrate_bn``). Top-1 is measured right after
the one-shot prune (statistics re-measured) and after all fine-tuning.
Prints a table and writes bench/results/iterative.md.

    .venv/bin/python bench/iterative.py [--seeds 3] [--ratios 0.5 0.7] [--steps 3] [--finetune-epochs 6]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fxprune  # noqa: E402
from fxprune.report import count  # noqa: E402
from fxprune.runner import evaluate, finetune  # noqa: E402
from sensitivity import (X, digits_parser, mean_std, run_on_digits, top1_with_own_statistics,  # noqa: E402
                         trained_resnet20)


def tune(net, epochs: int, seed: int, train, bn_train, test, bn_images: int) -> None:
    """BatchNorm statistics re-measured first (a pruned network's are stale), then fine-tuning."""
    fxprune.recalibrate_bn(net, bn_train, images=bn_images)
    finetune(net, train, test, epochs=epochs, lr=0.01, schedule="cosine", batch_size=64, seed=seed,
             progress=False, device="cpu")


ARMS = ("one-shot", "iterative", "back-loaded")


def schedules(args) -> dict[str, list[int]]:
    """Fine-tuning epochs after each step, per iterative arm: both sum to --finetune-epochs."""
    even = [args.finetune_epochs // args.steps] * args.steps
    return {"iterative": even, "back-loaded": [1] * (args.steps - 1) + [args.finetune_epochs - args.steps + 1]}


def run_seed(seed: int, args, train, bn_train, test) -> dict:
    base = trained_resnet20(seed, args.epochs, train, test)
    base_macs = count(base, X).macs_conv_linear
    row = {"seed": seed, "baseline": 100.0 * evaluate(base, test, device="cpu")[1], "ratios": {}}
    for ratio in args.ratios:
        once = fxprune.prune(base, X, criterion="l1", ratio=ratio)
        pruned = top1_with_own_statistics(once, bn_train, test, args.bn_images)
        tune(once, args.finetune_epochs, seed, train, bn_train, test, args.bn_images)
        r = row["ratios"][ratio] = {
            "macs": 100.0 * (1.0 - count(once, X).macs_conv_linear / base_macs),
            "pruned": pruned,
            "one-shot": 100.0 * evaluate(once, test, device="cpu")[1],
        }
        for arm, epochs in schedules(args).items():
            steps = fxprune.prune_iteratively(
                base, X, criterion="l1", ratio=ratio, steps=args.steps,
                finetune=lambda net, step: tune(net, epochs[step - 1], seed, train, bn_train, test, args.bn_images))
            assert count(steps, X).macs_conv_linear == count(once, X).macs_conv_linear  # same widths
            r[arm] = 100.0 * evaluate(steps, test, device="cpu")[1]
        print(f"seed {seed} ratio {ratio}: -{r['macs']:.1f}% MACs; pruned {r['pruned']:.2f}%; "
              + ", ".join(f"{arm} {r[arm]:.2f}%" for arm in ARMS), flush=True)
    return row


def markdown(rows: list[dict], args, seconds: float) -> str:
    def cell(ratio: float, key: str) -> str:
        return mean_std([r["ratios"][ratio][key] for r in rows])

    def paired(ratio: float, arm: str) -> str:
        return mean_std([r["ratios"][ratio][arm] - r["ratios"][ratio]["one-shot"] for r in rows], signed=True)

    plans = schedules(args)
    lines = [
        "# Iterative pruning vs one shot, same widths and fine-tuning epochs",
        "",
        f"ResNet-20 on scikit-learn digits (1437 train / 360 test images), {args.epochs} training epochs, "
        f"{len(rows)} seed(s); l1; one-shot: prune, then {args.finetune_epochs} fine-tuning epoch(s); iterative: "
        f"{args.steps} steps with {plans['iterative']} epochs after them; back-loaded: the same steps with "
        f"{plans['back-loaded']}; lr 0.01 cosine; BatchNorm statistics re-measured on {args.bn_images} images "
        f"before every fine-tuning. CPU, {seconds:.0f} s. Command: `.venv/bin/python bench/iterative.py`",
        "",
        "Baselines (top-1): " + ", ".join(f"{r['baseline']:.2f}%" for r in rows) + ".",
        "",
        "| ratio | MACs (conv+linear) removed | one-shot, right after pruning (BN re-measured) | one-shot, fine-tuned "
        "| iterative, fine-tuned | back-loaded, fine-tuned | iterative - one-shot (paired) "
        "| back-loaded - one-shot (paired) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {ratio:g} | {cell(ratio, 'macs')}% | {cell(ratio, 'pruned')}% | {cell(ratio, 'one-shot')}% | "
              f"{cell(ratio, 'iterative')}% | {cell(ratio, 'back-loaded')}% | {paired(ratio, 'iterative')} | "
              f"{paired(ratio, 'back-loaded')} |" for ratio in args.ratios]
    lines += ["", "Mean ± standard deviation over seeds. Per seed (one-shot / iterative / back-loaded, fine-tuned):",
              "", "| seed | " + " | ".join(f"ratio {ratio:g}" for ratio in args.ratios) + " |",
              "|---" * (len(args.ratios) + 1) + "|"]
    lines += [f"| {r['seed']} | " + " | ".join(" / ".join(f"{r['ratios'][q][arm]:.2f}" for arm in ARMS)
                                               for q in args.ratios) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = digits_parser(__doc__, "iterative.md", epochs=8, finetune_epochs=6)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.finetune_epochs % args.steps:
        ap.error("--finetune-epochs must be a multiple of --steps (the same epochs for every method)")
    run_on_digits(run_seed, markdown, args)


if __name__ == "__main__":
    main()
