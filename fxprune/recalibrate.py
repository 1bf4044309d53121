"""Re-estimate BatchNorm statistics after pruning (adaptive BN: Li et al., EagleEye, ECCV 2020).

A compact model's BatchNorm layers keep the running mean and variance the original measured. Once a
layer loses input channels, the layer after it sees activations of another mean and spread, and its
BatchNorm normalizes them wrongly. This, more than the lost filters, is why a pruned network often
scores near chance before fine-tuning. Forward passes over a few hundred training images in train
mode, with ``momentum=None`` (an exact average over the batches instead of a decaying one), measure
the statistics anew. No weight changes and nothing is learned, so it takes seconds and gives
fine-tuning, or a comparison of criteria, a fair start.
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from passes.modes import eval_mode

__all__ = ["recalibrate_bn"]

log = logging.getLogger(__name__)


def recalibrate_bn(model: nn.Module, data: Dataset | DataLoader | Iterable, *, images: int = 1024,
                   batch_size: int = 64, seed: int = 0) -> int:
    """Measure every BatchNorm's running statistics anew on ``data``; returns how many images were used.

    ``data``: a Dataset (``images`` of it are drawn at random, seeded), a DataLoader, or any iterable of
    batches (input tensors, or tuples whose first entry is the input). Batches run on the device of
    the model's parameters, in their float dtype, in eval mode apart from the BatchNorm layers (dropout
    stays off), without gradients; every module's training flag and every BatchNorm's momentum are
    restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        log.warning("recalibrate_bn: the model has no BatchNorm layer with running statistics; nothing to do")
        return 0
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int (how many images to measure on), got {images!r}")
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device, dtype = (first.device, first.dtype) if first is not None else (torch.device("cpu"), None)
    momenta = [m.momentum for m in norms]
    seen = 0
    with eval_mode(model), torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: every batch counts alike
            m.train()
        try:
            for batch in _batches(data, images, batch_size, seed):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x[: images - seen].to(device, dtype if x.is_floating_point() else None, non_blocking=True)
                model(x)
                seen += len(x)
                if seen >= images:
                    break
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
    if seen == 0:
        raise ValueError("recalibrate_bn: data gave no batches; pass a Dataset, a DataLoader or a list of batches")
    return seen


def _batches(data, images: int, batch_size: int, seed: int) -> Iterable:
    """A Dataset is drawn from at random (a sorted dataset's first images would be one class)."""
    if isinstance(data, Dataset) and hasattr(data, "__len__"):  # an IterableDataset is read as it comes
        gen = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(data, num_samples=min(images, len(data)), generator=gen)
        return DataLoader(data, batch_size=batch_size, sampler=sampler)
    return data
