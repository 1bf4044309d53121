"""Fine-tune runner: recipes, hooks, metrics, exact resume after a kill, NaN stop, DDP, AMP."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fxprune import runner
from fxprune.data import load_dataset
from fxprune.runner import NonFiniteLossError, evaluate, finetune, load_checkpoint, resolve_recipe

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "helpers" / "finetune_digits.py"
sys.path.insert(0, str(HELPER.parent))
from finetune_digits import TinyNet  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _small(ds, n):
    return torch.utils.data.Subset(ds, range(n))


def _env():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _helper(out, *args, torchrun=False, nproc=2, check=True):
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + [str(HELPER), "--out", str(out), *map(str, args)],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# --------------------------------------------------------------------------- recipes

def test_presets_follow_the_spec():
    rgd = resolve_recipe("rgd-cifar")
    assert (rgd.epochs, rgd.lr, rgd.schedule, rgd.milestones, rgd.weight_decay, rgd.batch_size) \
        == (70, 0.01, "step", (30, 60), 5e-4, 256)
    l1 = resolve_recipe("l1-cifar")
    assert (l1.epochs, l1.lr, l1.schedule, l1.weight_decay) == (40, 0.001, "constant", 1e-4)
    hr = resolve_recipe("hrank-cifar")
    assert (hr.lr, hr.milestones, hr.weight_decay) == (0.01, (150, 225), 0.005)
    assert resolve_recipe("rgd-imagenet").milestones == (20, 40)
    assert resolve_recipe("sfp-cifar").nesterov is True


def _lrs(recipe) -> list[float]:
    """The learning rate of each epoch under the recipe's scheduler."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    sched = runner._make_scheduler(opt, recipe)
    out = []
    for _ in range(recipe.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_sfp_schedule_lrs():
    """SFP's --schedule 1 60 120 160 --gammas 10 0.2 0.2 0.2 on base lr 0.01."""
    lrs = _lrs(resolve_recipe("sfp-cifar"))
    for epoch, want in [(0, 0.01), (1, 0.1), (59, 0.1), (60, 0.02), (120, 0.004), (160, 0.0008)]:
        assert lrs[epoch] == pytest.approx(want)


def test_explicit_arguments_override_preset_and_validation():
    r = resolve_recipe("rgd-cifar", epochs=10, lr=0.5, milestones=[3])
    assert (r.epochs, r.lr, r.milestones, r.momentum) == (10, 0.5, (3,), 0.9)
    assert resolve_recipe("rgd-cifar", epochs=100).milestones == (30, 60, 90)
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_recipe("nope")
    with pytest.raises(ValueError, match="epochs and lr"):
        resolve_recipe(None, epochs=3)
    with pytest.raises(ValueError, match="milestones"):
        resolve_recipe(None, epochs=3, lr=0.1, schedule="step")


def test_scale_schedule_puts_the_recipes_steps_at_the_same_fractions_of_a_short_run():
    """rgd-cifar steps at 30/70 and 60/70 of its epochs: an 8-epoch run steps after epochs 3 and 7."""
    short = resolve_recipe("rgd-cifar", epochs=8, scale_schedule=True)
    assert short.milestones == (3, 7)
    assert _lrs(short) == pytest.approx([0.01] * 3 + [0.001] * 4 + [0.0001])
    assert resolve_recipe("rgd-cifar", epochs=140, scale_schedule=True).milestones == (60, 120)
    sfp = resolve_recipe("sfp-cifar", epochs=20, scale_schedule=True)  # one warm-up epoch stays one
    assert (sfp.milestones, sfp.gamma) == ((1, 6, 12, 16), (10.0, 0.2, 0.2, 0.2))
    assert _lrs(sfp)[:2] == pytest.approx([0.01, 0.1]) and _lrs(sfp)[-1] == pytest.approx(0.0008)
    assert resolve_recipe("rgd-cifar", epochs=8, milestones=[5], scale_schedule=True).milestones == (5,)
    assert resolve_recipe("l1-cifar", epochs=8, scale_schedule=True).schedule == "constant"


def test_scale_schedule_reaches_the_baseline_and_preset_recipes_of_the_cli():
    from fxprune.cli import build_parser, _train_options
    from fxprune.experiment import _baseline_kwargs, _preset_kwargs

    args = build_parser().parse_args(["train", "--arch", "resnet20", "--dataset", "digits", "--epochs", "20",
                                      "--out", "x", "--scale-schedule"])
    opts = _train_options(args)
    assert _baseline_kwargs(opts)["milestones"] == [5, 10, 15]  # x0.1 every 50 of 200 epochs
    unscaled = dataclasses.replace(opts, scale_schedule=False)
    assert _baseline_kwargs(unscaled)["schedule"] == "constant"
    tune = dataclasses.replace(opts, preset="rgd-cifar", epochs=8)
    assert resolve_recipe(**_preset_kwargs(tune)).milestones == (3, 7)
    assert resolve_recipe(**_preset_kwargs(dataclasses.replace(tune, scale_schedule=False))).schedule == "constant"


def test_cosine_and_step_schedules():
    for schedule, kwargs, want_last in [("cosine", {}, 0.5 * (1 + math.cos(math.pi * 3 / 4))),
                                        ("step", {"milestones": [1, 3], "gamma": 0.1}, 0.01)]:
        recipe = resolve_recipe(None, epochs=4, lr=1.0, schedule=schedule, **kwargs)
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = runner._make_scheduler(opt, recipe)
        for _ in range(3):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(want_last)


# --------------------------------------------------------------------------- in-process runs

def test_hooks_metrics_checkpoints_and_evaluate(tmp_path, digits):
    train, val = digits
    torch.manual_seed(0)
    model = TinyNet(bn=True)
    calls = []

    def zero_head(m, epoch):  # runs before evaluation: zero logits give CE = ln(10)
        calls.append((epoch, m.training))
        if epoch == 1:
            nn.init.zeros_(m.fc.weight)
            nn.init.zeros_(m.fc.bias)

    metrics = tmp_path / "m.jsonl"
    metrics.write_text("stale line from an older run\n")
    res = finetune(model, _small(train, 256), val, epochs=2, lr=0.05, batch_size=64,
                   epoch_end_hooks=[zero_head], checkpoint_dir=tmp_path / "ck",
                   metrics_path=metrics, progress=False, device="cpu")
    assert calls == [(0, True), (1, True)]
    lines = [json.loads(s) for s in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    assert set(lines[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                             "images_per_s"}
    assert lines[1]["val_loss"] == pytest.approx(math.log(10), abs=1e-6)
    assert res["history"] == lines and res["val_acc"] == lines[1]["val_acc"]
    ck = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "best_acc"} <= set(ck)
    assert ck["epoch"] == 1 and set(ck["rng"][0]) >= {"python", "numpy", "torch"}
    assert (tmp_path / "ck" / "best.pt").is_file()
    assert not list((tmp_path / "ck").glob("*.tmp"))
    loss, acc = evaluate(model, val)
    assert loss == pytest.approx(math.log(10), abs=1e-6) and model.training


def test_evaluate_matches_manual_computation(digits):
    _, val = digits
    torch.manual_seed(1)
    model = TinyNet(bn=False).eval()
    xs = torch.stack([val[i][0] for i in range(len(val))])
    ys = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        out = model(xs)
    loss, acc = evaluate(model, val, batch_size=50)
    assert loss == pytest.approx(nn.functional.cross_entropy(out, ys).item(), rel=1e-5)
    assert acc == pytest.approx((out.argmax(1) == ys).float().mean().item())


def test_distillation_loss_and_run(digits):
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    ce = nn.CrossEntropyLoss()
    assert runner._distill_loss(logits, logits, y, 4.0, 1.0, ce).item() == pytest.approx(0, abs=1e-6)
    assert runner._distill_loss(logits, torch.randn(8, 10), y, 4.0, 0.0, ce).item() == \
        pytest.approx(ce(logits, y).item())
    train, val = digits
    torch.manual_seed(0)
    teacher, student = TinyNet(bn=False), TinyNet(bn=False)
    res = finetune(student, _small(train, 128), _small(val, 64), epochs=1, lr=0.01, batch_size=32,
                   teacher=teacher, progress=False, device="cpu")
    assert math.isfinite(res["final"]["train_loss"]) and not teacher.training


def test_worker_augmentation_depends_only_on_seed_and_epoch(digits):
    """With workers, random augmentation is reseeded per (seed, epoch): replays exactly."""
    aug = load_dataset("digits", split="train", augment=True)
    loader = runner._as_loader(_small(aug, 64), 32, 2, train=True, dctx=runner._Dist(), seed=5)

    def batches(epoch):
        runner._start_epoch(loader, 5, epoch, 0)
        torch.rand(10)  # consuming the global RNG must not matter
        return [x for x, _ in loader]

    first, again, other = batches(1), batches(1), batches(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


class PoisonAfter(nn.Module):
    """Produces NaN logits from the n-th training forward on (a diverging run, simulated)."""

    def __init__(self, inner, n, on_forward=None):
        super().__init__()
        self.inner, self.n, self.count, self.on_forward = inner, n, 0, on_forward

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.count += 1
            if self.on_forward:
                self.on_forward(self.count)
            if self.count >= self.n:
                out = out * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, digits):
    train, val = digits
    ck = tmp_path / "ck" / "last.pt"
    seen = {}

    def snapshot(count):  # first forward of epoch 1: epoch 0's checkpoint exists
        if count == 5:
            seen["bytes"] = ck.read_bytes()

    torch.manual_seed(0)
    model = PoisonAfter(TinyNet(bn=True), n=4 + 3, on_forward=snapshot)  # 4 steps/epoch
    with pytest.raises(NonFiniteLossError) as err:
        finetune(model, _small(train, 128), _small(val, 64), epochs=3, lr=0.05, batch_size=32,
                 checkpoint_dir=tmp_path / "ck", metrics_path=tmp_path / "m.jsonl",
                 progress=False, device="cpu")
    assert isinstance(err.value, FloatingPointError)
    assert (err.value.epoch, err.value.step) == (1, 2)
    assert "epoch 1" in str(err.value) and "step 2" in str(err.value)
    assert ck.read_bytes() == seen["bytes"]  # untouched
    state = load_checkpoint(ck)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    fresh = PoisonAfter(TinyNet(bn=True), n=10**9)
    fresh.load_state_dict(state["model"])
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------- subprocess runs

def test_resume_after_kill_gives_identical_weights(tmp_path):
    """SIGKILL mid-epoch 2 (1-based), resume, compare bitwise with an uninterrupted run.

    BN running stats, dropout masks (global RNG) and random crop/flip augmentation (global RNG,
    workers=0) are all on, so the data order, RNG restore and optimizer/scheduler state all
    have to be right for torch.equal to hold. 1437 training images / 64 = 23 steps per epoch.
    """
    common = ["--bn", "--dropout", "0.3", "--augment", "--epochs", "3"]
    _helper(tmp_path / "full.pt", *common, "--ckpt-dir", tmp_path / "a")
    killed = _helper(tmp_path / "never.pt", *common, "--ckpt-dir", tmp_path / "b",
                     "--metrics", tmp_path / "m.jsonl", "--kill-at-step", 23 + 11, check=False)
    assert killed.returncode == -9 and not (tmp_path / "never.pt").exists()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    _helper(tmp_path / "resumed.pt", *common, "--ckpt-dir", tmp_path / "b",
            "--metrics", tmp_path / "m.jsonl", "--resume")
    full = torch.load(tmp_path / "full.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert full["state"].keys() == resumed["state"].keys()
    for k, v in full["state"].items():
        assert torch.equal(v, resumed["state"][k]), k
    assert [json.loads(s)["epoch"] for s in (tmp_path / "m.jsonl").read_text().splitlines()] \
        == [0, 1, 2]
    assert resumed["result"]["history"][2]["val_acc"] == full["result"]["history"][2]["val_acc"]


def test_ddp_two_processes_match_one_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU) vs one process, same global batch of 64.

    The model has no BatchNorm (per-rank batch statistics would legitimately differ), 1408 =
    22 x 64 training images (no DistributedSampler padding, no ragged last batch), and the
    single-process sampler yields the same permutation as the DistributedSampler, so every
    global batch holds the same images. DDP averages the two half-batch mean gradients, which
    equals the full-batch mean gradient up to float summation order (~1e-7 relative per step);
    over 44 SGD steps this measured 3e-7 max abs weight difference, so atol 1e-4 leaves a
    large margin while still catching any real difference (a wrong shard or batch moves weights
    by >1e-3). Evaluation is sharded without padding and all-reduced, so accuracy must match.
    """
    args = ["--train-size", 1408, "--epochs", 2, "--lr", 0.05, "--batch-size", 64]
    _helper(tmp_path / "one.pt", *args)
    _helper(tmp_path / "two.pt", *args, torchrun=True)
    one = torch.load(tmp_path / "one.pt", weights_only=False)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, atol=1e-4, rtol=0)
    f1, f2 = one["result"]["final"], two["result"]["final"]
    assert abs(f1["val_acc"] - f2["val_acc"]) <= 1 / 360 + 1e-12
    assert f1["val_loss"] == pytest.approx(f2["val_loss"], abs=1e-4)
    assert f1["train_acc"] == pytest.approx(f2["train_acc"], abs=2 / 1408)


def test_torchrun_with_one_process_takes_the_ddp_path(tmp_path):
    """One torchrun process still joins a process group and wraps DDP, so a one-GPU run exercises
    the code an N-GPU run uses; averaging gradients over a world of one changes nothing."""
    args = ["--train-size", 640, "--epochs", 1, "--lr", 0.05, "--batch-size", 64]
    _helper(tmp_path / "plain.pt", *args)
    _helper(tmp_path / "ddp.pt", *args, torchrun=True, nproc=1)
    plain = torch.load(tmp_path / "plain.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    assert (plain["result"]["ddp"], ddp["result"]["ddp"]) == (False, True)
    assert ddp["result"]["world_size"] == 1
    for k, v in plain["state"].items():
        torch.testing.assert_close(ddp["state"][k], v, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- GPU

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("amp", [True, "fp16"])
@pytest.mark.gpu
@requires_cuda
def test_gpu_amp_channels_last(tmp_path, digits, amp):
    train, val = digits
    torch.manual_seed(0)
    model = TinyNet(bn=True)
    res = finetune(model, _small(train, 512), val, epochs=2, lr=0.05, batch_size=64, amp=amp,
                   checkpoint_dir=tmp_path, progress=False)
    conv = model.features[0].weight
    assert conv.is_cuda and conv.dtype == torch.float32
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(res["final"]["train_loss"]) and res["final"]["val_acc"] > 0.1
    ck = load_checkpoint(tmp_path / "last.pt")
    want_scaler = amp == "fp16"
    assert (ck["scaler"] is not None) == want_scaler


class _Stop(Exception):
    pass


@pytest.mark.gpu
@requires_cuda
def test_gpu_resume_in_process(tmp_path, digits):
    """Interrupt after epoch 0's checkpoint, resume on GPU: state and schedule carry over.

    Bitwise equality is not promised on GPU (non-deterministic kernels), so this checks the
    bookkeeping and that the resumed run uses the same learning rates as an uninterrupted one.
    """
    train, val = digits
    kwargs = dict(epochs=3, lr=0.05, batch_size=64, progress=False)

    def stop_in_epoch_1(m, epoch):
        if epoch == 1:
            raise _Stop

    torch.manual_seed(0)
    full = finetune(TinyNet(bn=True), _small(train, 256), val, **kwargs)
    torch.manual_seed(0)
    model = TinyNet(bn=True)
    with pytest.raises(_Stop):
        finetune(model, _small(train, 256), val, checkpoint_dir=tmp_path,
                 epoch_end_hooks=[stop_in_epoch_1], **kwargs)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0
    res = finetune(model, _small(train, 256), val, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]
    assert [h["lr"] for h in res["history"]] == pytest.approx([h["lr"] for h in full["history"]])
    assert res["history"][0] == load_checkpoint(tmp_path / "last.pt")["history"][0]


@pytest.mark.gpu
@requires_cuda
def test_gpu_torchrun_one_process_runs_ddp_over_nccl(tmp_path):
    """torchrun on one GPU: nccl process group, DDP, bf16 autocast; ends near the plain GPU run
    (GPU kernels are not bit-deterministic, and bf16 rounding differs step to step)."""
    args = ["--train-size", 640, "--epochs", 1, "--lr", 0.05, "--batch-size", 64, "--device", "cuda"]
    _helper(tmp_path / "plain.pt", *args)
    _helper(tmp_path / "ddp.pt", *args, torchrun=True, nproc=1)
    plain = torch.load(tmp_path / "plain.pt", weights_only=False)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    assert ddp["result"]["ddp"] and ddp["result"]["device"] == "cuda:0"
    assert abs(ddp["result"]["final"]["val_acc"] - plain["result"]["final"]["val_acc"]) < 0.05
    for k, v in plain["state"].items():
        torch.testing.assert_close(ddp["state"][k].float(), v.float(), atol=5e-2, rtol=0)
