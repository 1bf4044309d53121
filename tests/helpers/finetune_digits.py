"""Subprocess entry point for runner tests: a seeded tiny-CNN fine-tune on sklearn digits.

Used by tests/test_runner.py to run fine-tunes that can be killed (``--kill-at-step``: SIGKILL
to itself on that global training step, i.e. mid-epoch, no cleanup) and resumed, and to run the
same fine-tune under torchrun. Writes the final state_dict (rank 0) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch
from torch import nn

from fxprune.data import load_dataset
from fxprune.runner import finetune


class TinyNet(nn.Module):
    """Small conv net; ``--bn`` adds BatchNorm (running stats must survive resume too)."""

    def __init__(self, bn: bool, dropout: float = 0.0):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), norm(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), norm(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def _kill_hook(at_step: int):
    """Forward pre-hook counting training forwards; SIGKILLs this process at ``at_step``."""
    count = {"n": 0}

    def hook(module, args):
        if module.training:
            count["n"] += 1
            if count["n"] == at_step:
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt-dir")
    p.add_argument("--metrics")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-at-step", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-size", type=int, default=0, help="first N training samples (0: all)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--bn", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--augment", action="store_true", help="random crop + flip on digits")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="max_steps_per_epoch")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    torch.manual_seed(123)
    model = TinyNet(args.bn, args.dropout)
    train = load_dataset("digits", split="train", augment=args.augment)
    if args.train_size:
        train = torch.utils.data.Subset(train, range(args.train_size))
    val = load_dataset("digits", split="test")
    if args.kill_at_step:
        model.register_forward_pre_hook(_kill_hook(args.kill_at_step))
    result = finetune(model, train, val, epochs=args.epochs, lr=args.lr, schedule="step",
                      milestones=[2], batch_size=args.batch_size, workers=args.workers, checkpoint_dir=args.ckpt_dir,
                      resume=args.resume, metrics_path=args.metrics, seed=7, progress=False, max_steps_per_epoch=args.max_steps,
                      device=args.device)
    if int(os.environ.get("RANK", 0)) == 0:
        torch.save({"state": model.state_dict(), "result": result}, args.out)


if __name__ == "__main__":
    main()
