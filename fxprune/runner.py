"""Fine-tuning runner for pruned (or any) ``nn.Module``s.

Why it exists: after pruning, every seed method fine-tunes with plain SGD; this module does that
once, reproducibly and resumably, for any model. Design points:

* **Exact resume.** The training order of epoch ``e`` depends only on ``(seed, e)`` (a sampler
  seeded per epoch), and the checkpoint written after every epoch holds the model, optimizer,
  scheduler, grad-scaler and all RNG states (per rank). A run killed mid-epoch and resumed with
  ``resume=True`` ends with bit-identical weights on CPU (on GPU only if the kernels used are
  deterministic).
* **Atomic checkpoints.** ``last.pt`` is written to ``last.pt.tmp`` and moved with ``os.replace``,
  so a crash never leaves a half-written file; a non-finite loss raises
  :class:`NonFiniteLossError` before the bad step is applied and before anything is written.
* **Devices.** CUDA when available (bf16 autocast, or fp16 with a GradScaler where bf16 is not
  supported; channels_last), else CPU in plain fp32.
* **Multi-process.** Under ``torchrun`` the process group is initialised (nccl on CUDA, gloo on
  CPU), also for a single process, so a one-GPU run takes the same DDP path as an N-GPU one;
  the model is wrapped in ``DistributedDataParallel``, training data
  sharded with ``DistributedSampler`` and evaluation sharded without padding and all-reduced;
  only rank 0 writes files. Batch sizes given to the runner are *global*.
* **Hooks.** ``epoch_end_hooks`` get the unwrapped model on every rank; they must act the same
  on all ranks (e.g. deterministic filter zeroing), since DDP does not re-broadcast weights.
* **Epoch numbering.** Epochs are 0-based in hooks, metrics lines and checkpoints
  (``hook(model, epoch)`` gets the index of the epoch just trained).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from passes.modes import eval_mode

from . import data as fxdata

log = logging.getLogger(__name__)

__all__ = ["PRESETS", "NonFiniteLossError", "Recipe", "evaluate", "finetune", "load_checkpoint",
           "resolve_recipe", "scale_milestones"]

# Fine-tuning recipes of the seed methods (/work/shared/spec/algorithms.md §1.6, §2.4, §3.4, §4.7,
# §5.6). ``step_size`` means "x gamma every step_size epochs" (StepLR) and is turned into
# milestones for the run's epoch count; ``gamma`` may be a list, one factor per milestone.
PRESETS: dict[str, dict] = {
    # RGD prune_cifar.py: 70 epochs, lr 0.01, StepLR x0.1 every 30, wd 5e-4, batch 256.
    "rgd-cifar": dict(epochs=70, batch_size=256, lr=0.01, schedule="step", step_size=30,
                      gamma=0.1, momentum=0.9, weight_decay=5e-4),
    # RGD prune_imagenet.py: 50 epochs, lr 0.01, every 20, wd 1e-4, batch 256.
    "rgd-imagenet": dict(epochs=50, batch_size=256, lr=0.01, schedule="step", step_size=20,
                         gamma=0.1, momentum=0.9, weight_decay=1e-4),
    # RGD prune_cub200.py: 50 epochs, batch 32, lr 0.001, every 25, wd 1e-5.
    "rgd-cub200": dict(epochs=50, batch_size=32, lr=0.001, schedule="step", step_size=25,
                       gamma=0.1, momentum=0.9, weight_decay=1e-5),
    # rethinking-network-pruning main_finetune.py: 40 epochs, lr 0.001 constant, batch 64, wd 1e-4.
    "l1-cifar": dict(epochs=40, batch_size=64, lr=0.001, schedule="constant", momentum=0.9,
                     weight_decay=1e-4),
    # SFP cifar10_resnet.sh: 200 epochs, batch 128, Nesterov, wd 5e-4, lr 0.01 with
    # --schedule 1 60 120 160 --gammas 10 0.2 0.2 0.2 (0.01 -> 0.1 -> 0.02 -> 0.004 -> 0.0008).
    "sfp-cifar": dict(epochs=200, batch_size=128, lr=0.01, schedule="step",
                      milestones=(1, 60, 120, 160), gamma=(10.0, 0.2, 0.2, 0.2), momentum=0.9,
                      nesterov=True, weight_decay=5e-4),
    # SFP pruning_train.py: 100 epochs, batch 256, lr 0.1 (0.01 with --use_pretrain) x0.1 / 30.
    "sfp-imagenet": dict(epochs=100, batch_size=256, lr=0.1, schedule="step", step_size=30,
                         gamma=0.1, momentum=0.9, weight_decay=1e-4),
    # HRankPlus / CORING main.py (CIFAR): lr 0.01, MultiStepLR 150,225, wd 0.005, batch 256, 300 ep.
    "hrank-cifar": dict(epochs=300, batch_size=256, lr=0.01, schedule="step",
                        milestones=(150, 225), gamma=0.1, momentum=0.9, weight_decay=5e-3),
    # CORING ImageNet ResNet-50 (vbd.sh): 200 epochs, cosine, momentum 0.99, wd 1e-4, batch 512;
    # lr 0.1 and label smoothing 0.1 are the HRankPlus template defaults (spec marks unverified).
    "coring-imagenet": dict(epochs=200, batch_size=512, lr=0.1, schedule="cosine", momentum=0.99,
                            weight_decay=1e-4, label_smoothing=0.1),
    # FP-FMC step3_pruningTrain.py defaults: 300 epochs, lr 0.01, MultiStepLR 50,100, wd 5e-4.
    "fmc-cifar": dict(epochs=300, batch_size=256, lr=0.01, schedule="step", milestones=(50, 100),
                      gamma=0.1, momentum=0.9, weight_decay=5e-4),
}
PRESETS["coring-cifar"] = dict(PRESETS["hrank-cifar"])

_DEFAULTS = dict(schedule="cosine", momentum=0.9, weight_decay=5e-4, milestones=None, gamma=0.1,
                 batch_size=128, nesterov=False, label_smoothing=0.0, step_size=None)


class NonFiniteLossError(FloatingPointError):
    """Training loss became NaN/inf; raised before the step is applied or anything is saved."""

    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"non-finite training loss {value} at epoch {epoch} (0-based), step "
                         f"{step}; stopped before applying it; the last checkpoint is untouched")


@dataclass
class Recipe:
    """The optimisation settings actually used (preset merged with explicit arguments)."""

    epochs: int
    lr: float
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple = ()
    gamma: float | tuple = 0.1
    batch_size: int = 128
    nesterov: bool = False
    label_smoothing: float = 0.0


def resolve_recipe(preset: str | None = None, *, scale_schedule: bool = False, **overrides) -> Recipe:
    """Merge defaults < preset < explicit (non-None) arguments; turn step_size into milestones.

    ``scale_schedule=True``: a run of other length than the preset's takes the preset's learning-rate
    steps at the same fractions of its own epochs (see :func:`scale_milestones`); by default they stay
    at the preset's epochs, so a shortened run may never step."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    cfg = dict(_DEFAULTS)
    cfg.update(PRESETS.get(preset, {}))
    if overrides.get("milestones") is not None:
        cfg["step_size"] = None  # explicit milestones win over a preset's step_size
    elif scale_schedule and cfg["schedule"] == "step" and overrides.get("epochs") is not None:
        own = _milestones_over(cfg["milestones"], cfg["step_size"], int(cfg["epochs"]))
        cfg["milestones"] = scale_milestones(own, int(cfg["epochs"]), int(overrides["epochs"]))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg.get("epochs") is None or cfg.get("lr") is None:
        raise ValueError("epochs and lr are required (directly or through preset=)")
    step_size = cfg.pop("step_size")
    if cfg["schedule"] == "step" and cfg["milestones"] is None and step_size:
        cfg["milestones"] = _milestones_over(None, step_size, int(cfg["epochs"]))
    if cfg["schedule"] not in ("cosine", "step", "constant"):
        raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {cfg['schedule']!r}")
    if cfg["schedule"] == "step" and not cfg["milestones"]:
        raise ValueError("schedule='step' needs milestones (or a preset with step_size)")
    cfg["milestones"] = tuple(int(m) for m in (cfg["milestones"] or ()))
    if isinstance(cfg["gamma"], (list, tuple)):
        cfg["gamma"] = tuple(float(g) for g in cfg["gamma"])
        if len(cfg["gamma"]) != len(cfg["milestones"]):
            raise ValueError("a list of gammas needs one factor per milestone")
    return Recipe(**{k: cfg[k] for k in Recipe.__dataclass_fields__})


def _milestones_over(milestones, step_size: int | None, epochs: int) -> tuple:
    """A recipe's milestones: its own, or one every ``step_size`` epochs within ``epochs`` (StepLR)."""
    if milestones is not None or not step_size:
        return tuple(milestones or ())
    return tuple(range(step_size, epochs, step_size))


def scale_milestones(milestones, recipe_epochs: int, epochs: int) -> tuple:
    """``milestones`` of a ``recipe_epochs`` run moved to the same fractions of an ``epochs`` run.

    A milestone stays at epoch 1 or later (SFP's warm-up step at epoch 1 keeps its one warm-up
    epoch); two that land on one epoch both apply there, as their gammas did in turn."""
    return tuple(max(1 if m >= 1 else 0, round(m * epochs / recipe_epochs)) for m in milestones)


def _make_scheduler(optimizer, recipe: Recipe):
    """Per-epoch LR schedule: MultiStepLR / per-milestone factors / cosine / constant."""
    sched = torch.optim.lr_scheduler
    if recipe.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(recipe.epochs, 1))
    if recipe.schedule == "step" and not isinstance(recipe.gamma, tuple):
        return sched.MultiStepLR(optimizer, list(recipe.milestones), gamma=recipe.gamma)
    if recipe.schedule == "step":
        return sched.LambdaLR(optimizer, _PiecewiseFactor(recipe.milestones, recipe.gamma))
    return sched.LambdaLR(optimizer, _PiecewiseFactor((), ()))


class _PiecewiseFactor:
    """LR factor = product of the gammas of all milestones reached (SFP's --gammas)."""

    def __init__(self, milestones, gammas):
        self.milestones, self.gammas = tuple(milestones), tuple(gammas)

    def __call__(self, epoch: int) -> float:
        return math.prod(g for m, g in zip(self.milestones, self.gammas) if epoch >= m)


# --------------------------------------------------------------------------- device / distributed

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False
    distributed: bool = False  # joined a process group (DDP, sharded data), even of one process

    @property
    def main(self) -> bool:
        return self.rank == 0


def _pick_device(device) -> torch.device:
    """CUDA (this process's LOCAL_RANK GPU) when available, else CPU, unless given."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local if _launched_by_torchrun() else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _launched_by_torchrun() -> bool:
    """torchrun sets these in every worker it starts, whatever the number of processes."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _init_distributed(device: torch.device) -> _Dist:
    """Join torchrun's (or the caller's) process group: nccl on CUDA, gloo on CPU."""
    created = False
    if not (dist.is_available() and dist.is_initialized()):
        if not _launched_by_torchrun():
            return _Dist()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return _joined(created)


def _joined(created: bool = False) -> _Dist:
    """The process group this process is in (it must be initialised)."""
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 created, distributed=True)


def _amp_dtype(amp, device: torch.device):
    """bf16 where supported, else fp16; None means fp32 (always on CPU)."""
    if device.type != "cuda" or amp is False or amp is None:
        return None
    if amp in ("fp16", "float16", torch.float16):
        return torch.float16
    if amp in ("bf16", "bfloat16", torch.bfloat16):
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def _logits(out):
    """Models with auxiliary heads return tuples; the first entry is the main output."""
    return out[0] if isinstance(out, (tuple, list)) else out


# --------------------------------------------------------------------------- data plumbing

def _as_loader(data, batch_size: int, workers: int, *, train: bool, dctx: _Dist,
               seed: int, device: torch.device | None = None) -> DataLoader | fxdata.DeviceBatches:
    """A DataLoader whose order is reproducible per epoch (and sharded under torchrun).

    Datasets get a new loader (``batch_size`` is global). A given DataLoader is kept when its
    sampler already fits (``set_epoch`` for training; sharded for distributed evaluation) and
    otherwise rebuilt around the same dataset with its per-process batch size.
    """
    if not isinstance(data, DataLoader):
        return fxdata.make_loader(data, batch_size, workers, train=train,
                                  distributed=dctx.distributed, seed=seed, device=device)
    sampler = data.sampler
    if train and not dctx.distributed:
        fits = hasattr(sampler, "set_epoch") or isinstance(sampler, SequentialSampler)
    elif train:
        fits = hasattr(sampler, "set_epoch") and getattr(sampler, "num_replicas", 1) == dctx.world
    else:
        fits = not dctx.distributed or isinstance(sampler, fxdata.ShardSampler)
    if fits or data.batch_size is None:
        if not fits:
            log.warning("DataLoader with a custom batch_sampler kept as is; resume/sharding "
                        "guarantees do not apply")
        return data
    log.info("rebuilding the %s DataLoader with a (seed, epoch)-determined%s sampler",
             "training" if train else "evaluation", " sharded" if dctx.distributed else "")
    new_sampler = (fxdata.train_sampler(data.dataset, seed, dctx.distributed) if train
                   else fxdata.eval_sampler(data.dataset, dctx.distributed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(data.dataset, batch_size=data.batch_size, sampler=new_sampler,
                      num_workers=data.num_workers, collate_fn=data.collate_fn,
                      pin_memory=data.pin_memory, drop_last=data.drop_last,
                      worker_init_fn=data.worker_init_fn, generator=gen)


def _start_epoch(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Make the epoch's sample order and worker seeds functions of (seed, epoch, rank)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
        loader.generator.manual_seed(int(state[0]) << 32 | int(state[1]))


# --------------------------------------------------------------------------- RNG / checkpoints

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """All RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    algo, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (algo, keys.tolist(), int(pos), int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_tuplify(state["python"]))
    algo, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((algo, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _gather_rng(dctx: _Dist) -> list:
    """RNG states of every rank (rank 0 stores them so each rank resumes its own stream)."""
    mine = _rng_state()
    if not dctx.distributed:
        return [mine]
    out = [None] * dctx.world
    dist.all_gather_object(out, mine)
    return out


def _atomic_save(obj, path: Path) -> None:
    """Write to ``path.tmp``, fsync, then ``os.replace``: readers never see a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a runner checkpoint (plain tensors and containers, so weights_only=True works)."""
    return torch.load(path, map_location=map_location, weights_only=True)


@dataclass
class _State:
    next_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = -1
    history: list = field(default_factory=list)


# --------------------------------------------------------------------------- evaluation

def evaluate(model: nn.Module, data, device=None, *, amp=True, channels_last=True,
             batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (a fraction in [0, 1]) over ``data``.

    ``data`` is a Dataset or DataLoader. ``device=None`` evaluates where the model's parameters
    are. Under an initialised process group each rank evaluates its shard and the sums are
    all-reduced, so every rank returns the global result.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    dctx = _joined() if dist.is_available() and dist.is_initialized() else _Dist()
    loader = _as_loader(data, batch_size, 0, train=False, dctx=dctx, seed=0, device=device)
    return _evaluate(model, loader, device, _amp_dtype(amp, device),
                     channels_last and device.type == "cuda", dctx)


def _evaluate(model, loader, device, amp_dtype, channels_last, dctx: _Dist):
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with eval_mode(model), torch.inference_mode(), _autocast(device, amp_dtype):
        for x, y in loader:
            x, y = _to_device(x, device, channels_last), y.to(device, non_blocking=True)
            out = _logits(model(x)).float()
            sums[0] += F.cross_entropy(out, y, reduction="sum").double()
            sums[1] += (out.argmax(1) == y).sum()
            sums[2] += y.numel()
    if dctx.distributed:
        dist.all_reduce(sums)
    n = max(sums[2].item(), 1.0)
    return sums[0].item() / n, sums[1].item() / n


# --------------------------------------------------------------------------- training

def _distill_loss(logits, teacher_logits, target, temperature: float, alpha: float, ce):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE (Hinton et al.)."""
    t = temperature
    kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    return alpha * kd + (1.0 - alpha) * ce(logits, target)


@dataclass
class _Ctx:
    """Everything one epoch of training needs (keeps function signatures short)."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object
    device: torch.device
    amp_dtype: object
    channels_last: bool
    criterion: Callable
    teacher: nn.Module | None
    temperature: float
    alpha: float
    dctx: _Dist
    max_steps: int | None
    progress: bool
    epochs: int


def _loss(ctx: _Ctx, x, y):
    with _autocast(ctx.device, ctx.amp_dtype):
        logits = _logits(ctx.net(x))
        teacher_logits = None
        if ctx.teacher is not None:
            with torch.no_grad():
                teacher_logits = _logits(ctx.teacher(x)).float()
    logits = logits.float()
    if teacher_logits is None:
        return ctx.criterion(logits, y), logits
    return _distill_loss(logits, teacher_logits, y, ctx.temperature, ctx.alpha,
                         ctx.criterion), logits


def _check_finite(ctx: _Ctx, loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop on NaN/inf before backward; every rank agrees so none hangs in a collective."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if ctx.dctx.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1.0:
        raise NonFiniteLossError(epoch, step, float(loss.detach()))


def _step(ctx: _Ctx, loss: torch.Tensor) -> None:
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        loss.backward()
        ctx.optimizer.step()


def _progress_bar(ctx: _Ctx, total: int, epoch: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{ctx.epochs}", leave=False,
                disable=not ctx.progress or not ctx.dctx.main, dynamic_ncols=True)


def _train_epoch(ctx: _Ctx, loader: DataLoader, epoch: int) -> dict:
    """One pass over the (already epoch-seeded) loader; returns global loss/acc/throughput."""
    ctx.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    count = 0  # on the host: no per-step copy to the device
    total = len(loader) if ctx.max_steps is None else min(len(loader), ctx.max_steps)
    start = time.perf_counter()
    with _progress_bar(ctx, total, epoch) as bar:
        for step, (x, y) in enumerate(loader):
            if step >= total:
                break
            x, y = _to_device(x, ctx.device, ctx.channels_last), y.to(ctx.device, non_blocking=True)
            loss, logits = _loss(ctx, x, y)
            _check_finite(ctx, loss, epoch, step)
            _step(ctx, loss)
            with torch.no_grad():
                loss_sum += loss.detach().double() * y.numel()
                correct += (logits.argmax(1) == y).sum()
            count += y.numel()
            bar.update(1)
            if not bar.disable and ((step + 1) % 10 == 0 or step + 1 == total):
                bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", acc=f"{correct.item() / count:.4f}")
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start
    sums = torch.stack([loss_sum, correct.double(), torch.tensor(float(count), dtype=torch.float64,
                                                                  device=ctx.device)])
    if ctx.dctx.distributed:
        dist.all_reduce(sums)
    n = max(sums[2].item(), 1.0)
    return {"train_loss": sums[0].item() / n, "train_acc": sums[1].item() / n,
            "images_per_s": sums[2].item() / max(elapsed, 1e-9)}


# --------------------------------------------------------------------------- checkpoint glue

def _checkpoint(model, ctx: _Ctx, scheduler, state: _State, recipe: Recipe, rng: list) -> dict:
    return {"model": model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
            "epoch": state.next_epoch - 1, "best_acc": state.best_acc,
            "best_epoch": state.best_epoch, "history": state.history, "rng": rng,
            "recipe": _plain(asdict(recipe)), "world_size": ctx.dctx.world}


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _resume(path: Path, model, ctx: _Ctx, scheduler, recipe: Recipe) -> tuple[_State, dict | None]:
    """Load last.pt into model/optimizer/scheduler/scaler; RNG states are applied later."""
    if not path.is_file():
        log.info("resume=True but %s does not exist: starting from epoch 0", path)
        return _State(), None
    ckpt = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest
    model.load_state_dict(ckpt["model"])
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ctx.scaler is not None and ckpt.get("scaler"):
        ctx.scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("recipe") != _plain(asdict(recipe)):
        log.warning("resuming with a different recipe than the checkpoint's: %s vs %s",
                    _plain(asdict(recipe)), ckpt.get("recipe"))
    rngs = ckpt.get("rng") or []
    rng = rngs[ctx.dctx.rank] if ctx.dctx.rank < len(rngs) else None
    if rng is None or len(rngs) != ctx.dctx.world:
        log.warning("checkpoint was written with world size %s, now %s: RNG streams of the "
                    "extra ranks are reseeded", ckpt.get("world_size"), ctx.dctx.world)
    log.info("resumed from %s after epoch %d", path, ckpt["epoch"])
    return _State(ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["best_epoch"],
                  list(ckpt["history"])), rng


def _rewrite_metrics(path: Path, history: list) -> None:
    """On resume, the metrics file is made to match the checkpoint's history exactly."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


def _append_metrics(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------- public entry point

def finetune(model: nn.Module, train_data, val_data, *, epochs: int | None = None,
             lr: float | None = None, schedule: str | None = None, momentum: float | None = None,
             weight_decay: float | None = None, milestones=None, gamma=None,
             preset: str | None = None, batch_size: int | None = None, workers: int = 0,
             nesterov: bool | None = None, label_smoothing: float | None = None, device=None,
             amp=True, channels_last: bool = True, teacher: nn.Module | None = None,
             distill_temperature: float = 4.0, distill_alpha: float = 0.5,
             epoch_end_hooks: Iterable[Callable] = (), checkpoint_dir=None, resume: bool = False,
             metrics_path=None, seed: int = 0, progress: bool = True,
             max_steps_per_epoch: int | None = None, scale_schedule: bool = False) -> dict:
    """Fine-tune ``model`` in place with SGD; returns final metrics, best accuracy and history.

    Settings come from ``preset`` (a key of :data:`PRESETS`) overridden by explicit arguments;
    unset ones default to cosine schedule, momentum 0.9, weight decay 5e-4, gamma 0.1, global
    batch 128. ``train_data``/``val_data`` are Datasets (loaders are built with ``batch_size``
    and ``workers``) or DataLoaders. ``teacher`` enables distillation: loss =
    ``distill_alpha * T^2 * KL + (1 - distill_alpha) * CE``. ``epoch_end_hooks`` run as
    ``hook(model, epoch)`` after each epoch's last step, before evaluation and checkpointing.
    ``checkpoint_dir`` receives ``last.pt`` (every epoch, atomic) and ``best.pt`` (model weights
    of the best validation accuracy); ``resume=True`` continues from ``last.pt``.
    ``scale_schedule=True`` moves the preset's learning-rate steps to the same fractions of ``epochs``.
    """
    recipe = resolve_recipe(preset, scale_schedule=scale_schedule, epochs=epochs, lr=lr, schedule=schedule,
                            momentum=momentum, weight_decay=weight_decay, milestones=milestones, gamma=gamma,
                            batch_size=batch_size, nesterov=nesterov, label_smoothing=label_smoothing)
    device = _pick_device(device)
    dctx = _init_distributed(device)
    try:
        return _run(model, train_data, val_data, recipe, device, dctx, locals())
    finally:
        if dctx.created and dist.is_initialized():
            dist.destroy_process_group()


def _run(model, train_data, val_data, recipe: Recipe, device, dctx: _Dist, a: dict) -> dict:
    """The body of :func:`finetune` once the recipe, device and process group are fixed."""
    seed = a["seed"]
    _seed_everything(seed + dctx.rank)
    ctx = _build_ctx(model, recipe, device, dctx, a)
    scheduler = _make_scheduler(ctx.optimizer, recipe)
    train_loader = _as_loader(train_data, recipe.batch_size, a["workers"], train=True, dctx=dctx,
                              seed=seed, device=device)
    val_loader = _as_loader(val_data, recipe.batch_size, a["workers"], train=False, dctx=dctx,
                            seed=seed, device=device)
    ckpt_dir = Path(a["checkpoint_dir"]) if a["checkpoint_dir"] is not None else None
    metrics = Path(a["metrics_path"]) if a["metrics_path"] is not None else None
    state, rng = _State(), None
    if a["resume"]:
        if ckpt_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        state, rng = _resume(ckpt_dir / "last.pt", model, ctx, scheduler, recipe)
    if metrics is not None and dctx.main:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        _rewrite_metrics(metrics, state.history)  # fresh run: empty; resumed: checkpoint's
    if dctx.main and ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    if dctx.distributed:
        ctx.net = _wrap_ddp(model, device)
    if rng is not None:
        _set_rng_state(rng)  # last, so nothing in the setup consumes the restored streams
    for epoch in range(state.next_epoch, recipe.epochs):
        _one_epoch(model, ctx, scheduler, state, recipe, train_loader, val_loader, epoch, a,
                   ckpt_dir, metrics)
    return _summary(state, recipe, device, dctx)


def _build_ctx(model, recipe: Recipe, device, dctx: _Dist, a: dict) -> _Ctx:
    use_cl = bool(a["channels_last"]) and device.type == "cuda"
    _move(model, device, use_cl)
    amp_dtype = _amp_dtype(a["amp"], device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    teacher = a["teacher"]
    if teacher is not None:
        _move(teacher, device, use_cl).eval()
    return _Ctx(net=model, optimizer=optimizer, scaler=scaler, device=device,
                amp_dtype=amp_dtype, channels_last=use_cl,
                criterion=nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
                teacher=teacher, temperature=a["distill_temperature"],
                alpha=a["distill_alpha"], dctx=dctx, max_steps=a["max_steps_per_epoch"],
                progress=a["progress"], epochs=recipe.epochs)


def _move(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    if channels_last:
        return module.to(device, memory_format=torch.channels_last)
    return module.to(device)


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP averages gradients; BatchNorm statistics stay per rank (no SyncBatchNorm)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def _one_epoch(model, ctx: _Ctx, scheduler, state: _State, recipe: Recipe, train_loader,
               val_loader, epoch: int, a: dict, ckpt_dir: Path | None, metrics: Path | None):
    """Train, run hooks, evaluate, step the schedule, then record and checkpoint (rank 0)."""
    _start_epoch(train_loader, a["seed"], epoch, ctx.dctx.rank)
    lr_used = ctx.optimizer.param_groups[0]["lr"]
    stats = _train_epoch(ctx, train_loader, epoch)
    for hook in a["epoch_end_hooks"]:
        hook(model, epoch)
    val_loss, val_acc = _evaluate(model, val_loader, ctx.device, ctx.amp_dtype,
                                  ctx.channels_last, ctx.dctx)
    scheduler.step()
    record = {"epoch": epoch, "lr": lr_used, **stats, "val_loss": val_loss, "val_acc": val_acc}
    state.history.append(record)
    state.next_epoch = epoch + 1
    improved = val_acc > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = val_acc, epoch
    log.info("epoch %d/%d lr %.4g train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s",
             epoch + 1, recipe.epochs, lr_used, stats["train_loss"], stats["train_acc"], val_loss,
             val_acc, stats["images_per_s"])
    rng = _gather_rng(ctx.dctx) if ckpt_dir is not None else None
    if not ctx.dctx.main:
        return
    if metrics is not None:
        _append_metrics(metrics, record)
    if ckpt_dir is not None:
        _atomic_save(_checkpoint(model, ctx, scheduler, state, recipe, rng), ckpt_dir / "last.pt")
        if improved:
            _atomic_save({"model": model.state_dict(), "epoch": epoch, "val_acc": val_acc},
                         ckpt_dir / "best.pt")


def _summary(state: _State, recipe: Recipe, device: torch.device, dctx: _Dist) -> dict:
    final = state.history[-1] if state.history else {}
    return {"final": final, "val_loss": final.get("val_loss"), "val_acc": final.get("val_acc"),
            "best_acc": state.best_acc, "best_epoch": state.best_epoch,
            "history": list(state.history), "recipe": asdict(recipe),
            "device": str(device), "world_size": dctx.world, "ddp": dctx.distributed}
