"""Training throughput: ``fxprune.finetune`` against a plain PyTorch loop on the same model and data.

Why: the runner does more per step than a hand-written loop (a finite-loss check before every
optimizer step, running loss/accuracy, a progress bar), and a pruned model should also train
faster than its original. This prints images/s for both, on an original and an l1-pruned model,
so the cost of the runner's bookkeeping and the gain of pruning are measured in one run.

Both loops read the same in-memory images through the loader the runner builds for them
(fxprune.data.make_loader: on CUDA the batches are gathered, cropped and flipped on the GPU), with
the same SGD settings, bf16 autocast and channels_last on CUDA (fp32 on CPU). Each is timed over its second epoch, so cuDNN and allocator
warm-up fall into the first. "plain + sync" is the plain loop with one ``loss.item()`` per step:
the host-device round trip the runner's finite-loss check costs.

    python bench/finetune_speed.py                         # CUDA if present, else a short CPU run
    python bench/finetune_speed.py --out bench/results/finetune.md
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fxprune  # noqa: E402
from fxprune import data as fxdata  # noqa: E402
from fxprune.models import get_model  # noqa: E402
from fxprune.experiment import write_text_atomic  # noqa: E402
from fxprune.runner import finetune  # noqa: E402

SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


def synthetic_images(n: int, size: int, classes: int = 10) -> fxdata.TensorImages:
    """Random gray uint8 images, augmented as the seeds' CIFAR recipe (crop of the 4-padded image, flip)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, size, size), generator=g, dtype=torch.uint8)
    return fxdata.TensorImages(images, torch.randint(0, classes, (n,), generator=g), 255.0, (0.5,) * 3,
                               (0.25,) * 3, augment=True)


def plain_epoch_rate(model: nn.Module, dataset, batch: int, workers: int, device, sync: bool) -> float:
    """Images/s of the second of two epochs of a hand-written AMP loop."""
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    loss_fn = nn.CrossEntropyLoss()
    loader = fxdata.make_loader(dataset, batch, workers, train=True, seed=0, device=device)
    rate = 0.0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=fmt)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sync:
                loss.item()
            seen += len(y)
        if cuda:
            torch.cuda.synchronize(device)
        rate = seen / (time.perf_counter() - start)
    return rate


def runner_epoch_rate(model: nn.Module, dataset, batch: int, workers: int, device) -> float:
    """Images/s the runner reports for its second epoch (training steps only, as the plain loop)."""
    val = torch.utils.data.Subset(dataset, range(batch))
    result = finetune(model, dataset, val, epochs=2, lr=SGD["lr"], momentum=SGD["momentum"],
                      weight_decay=SGD["weight_decay"], schedule="constant", batch_size=batch,
                      workers=workers, device=device, progress=False)
    return result["history"][1]["images_per_s"]


def fresh(model: nn.Module) -> nn.Module:
    """The same weights every time, so each loop starts from an identical model."""
    return copy.deepcopy(model)


def measure(name: str, model: nn.Module, size: int, batch: int, steps: int, workers: int, device) -> dict:
    dataset = synthetic_images(batch * steps, size)
    row = {"model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "input": size, "batch": batch, "steps": steps}
    row["plain"] = plain_epoch_rate(fresh(model), dataset, batch, workers, device, sync=False)
    row["plain_sync"] = plain_epoch_rate(fresh(model), dataset, batch, workers, device, sync=True)
    row["fxprune"] = runner_epoch_rate(fresh(model), dataset, batch, workers, device)
    print(f"{name:28s} plain {row['plain']:8.0f}  plain+sync {row['plain_sync']:8.0f}  "
          f"fxprune {row['fxprune']:8.0f} img/s  ({row['fxprune'] / row['plain']:.2f}x plain)", flush=True)
    return row


def models(cuda: bool):
    """(name, model, input side, batch): a CIFAR seed net and an ImageNet net, each original and pruned."""
    torch.manual_seed(0)
    r56 = get_model("resnet56")
    r50 = torchvision.models.resnet50(num_classes=10)
    specs = [("resnet56", r56, 32, 256), ("resnet50", r50, 224 if cuda else 64, 128 if cuda else 16)]
    for name, model, size, batch in specs:
        yield name, model, size, batch
        small = fxprune.prune(model, torch.randn(1, 3, size, size), criterion="l1", ratio=0.5)
        yield f"{name} l1 0.5 (pruned)", small, size, batch


def markdown(rows: list[dict], device: torch.device, workers: int) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    loader = "batches built on the GPU" if device.type == "cuda" else f"{workers} loader workers"
    lines = [f"# Fine-tune throughput: fxprune.finetune vs a plain PyTorch loop ({what})", "",
             f"`python bench/finetune_speed.py` (torch {torch.__version__}, {loader},"
             f" {'bf16 autocast + channels_last' if device.type == 'cuda' else 'fp32'}, SGD, the second"
             " of two epochs timed; random uint8 images held in memory, cropped and flipped).", "",
             "| model | params (M) | input | batch | plain (img/s) | plain + sync (img/s) | fxprune (img/s) |"
             " fxprune / plain |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_M']:.2f} | {r['input']}² | {r['batch']} | {r['plain']:.0f} |"
                     f" {r['plain_sync']:.0f} | {r['fxprune']:.0f} | {r['fxprune'] / r['plain']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps per epoch (default 40 CUDA, 3 CPU)")
    ap.add_argument("--workers", type=int, default=0, help="CPU loader workers (CUDA batches are built on the GPU)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    steps = args.steps or (40 if cuda else 3)
    workers = args.workers
    rows = [measure(name, model, size, batch, steps, workers, device)
            for name, model, size, batch in models(cuda)]
    table = markdown(rows, device, workers)
    print(table)
    if args.out is not None:
        write_text_atomic(args.out, table)


if __name__ == "__main__":
    main()
