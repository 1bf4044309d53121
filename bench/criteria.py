"""Which criterion keeps the most accuracy at the same FLOPs? Every criterion x FLOPs level, >= 2 seeds.

Per seed: train a CIFAR ResNet-20 (32x32 inputs) on a training subset (cached under --cache-dir), then
for each criterion x ``flops_reduction`` level prune a copy with fxprune (data-driven criteria get a few
calibration batches of (inputs, targets) from the training set; fmc with k=4), record top-1 on the test
set right after pruning, fine-tune a few epochs with the runner, record top-1 again. Writes
bench/results/criteria.{json,md,png} (atomically; the json after every run, and a re-run with the same
settings resumes from it).

    .venv/bin/python bench/criteria.py                       # fashion-mnist, defaults below
    .venv/bin/python bench/criteria.py --dataset digits      # quick fallback (no files needed)
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fxprune  # noqa: E402
from fxprune.data import DatasetNotFoundError, default_root, load_dataset  # noqa: E402
from fxprune.models import get_model  # noqa: E402
from fxprune.report import count  # noqa: E402
from fxprune.runner import evaluate, finetune  # noqa: E402
from passes.errors import PlanError  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_CRITERIA = ["bn", "coring", "fmc", "graph", "l1", "l2", "random", "taylor"]
CRITERION_OPTIONS = {"fmc": {"k": 4, "calibration_samples": 16}}  # fixed K, 16 images: keeps t-SNE+KMeans tractable


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- files

def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp creates 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- data

def load_data(dataset: str, root=None, train_subset: int | None = None, test_subset: int | None = None,
              subset_seed: int = 0, device_batched: bool = False):
    """(augmented train subset, un-augmented train subset, test set as pre-normalized tensors).

    ``device_batched``: the full test set is returned as loaded, for the runner to batch on the GPU.

    Fashion-MNIST files missing -> DatasetNotFoundError naming the path (we never download).
    """
    try:
        train = load_dataset(dataset, root, "train")
        train_plain = load_dataset(dataset, root, "train", augment=False)
        test = load_dataset(dataset, root, "test")
    except DatasetNotFoundError as e:
        where = root or default_root(dataset)
        raise SystemExit(f"error: {dataset} files not found under {where!r}.\n{e}\n"
                         f"Install them (apt-get install dataset-fashion-mnist) or use --dataset digits.")
    n = len(train)
    if train_subset and train_subset < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(subset_seed))[:train_subset].tolist()
        train, train_plain = Subset(train, idx), Subset(train_plain, idx)
    tidx = list(range(len(test)))
    if test_subset and test_subset < len(test):  # a fixed random subset, the same for every run
        tidx = torch.randperm(len(test), generator=torch.Generator().manual_seed(subset_seed + 7))[:test_subset].tolist()
    if len(tidx) == len(test) and device_batched:  # the whole in-memory set: batched on the GPU as it is
        return train, train_plain, test
    xs, ys = zip(*(test[i] for i in tidx))  # normalize once: same numbers, faster evaluation
    test_t = TensorDataset(torch.stack(xs), torch.tensor(ys))
    return train, train_plain, test_t


def calibration_batches(train_plain, n_batches: int, batch_size: int, seed: int) -> list:
    """A few (inputs, targets) batches from the (un-augmented) training subset."""
    idx = torch.randperm(len(train_plain), generator=torch.Generator().manual_seed(1000 + seed))
    idx = idx[: n_batches * batch_size].tolist()
    out = []
    for b in range(0, len(idx), batch_size):
        xs, ys = zip(*(train_plain[i] for i in idx[b: b + batch_size]))
        out.append((torch.stack(xs), torch.tensor(ys)))
    return out


# --------------------------------------------------------------------------- runs

def _counts(model, x) -> tuple[int, int]:
    c = count(model, x)
    return c.macs_conv_linear, c.params_conv_linear


def train_baseline(cfg: dict, seed: int, train, test, cache_dir: Path | None):
    """ResNet-20 trained from scratch (lr 0.1, cosine), cached by its settings."""
    key = {k: cfg[k] for k in ("dataset", "train_subset", "baseline_epochs", "baseline_lr", "batch_size",
                               "max_steps")}
    key["seed"] = seed
    tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir / f"baseline_{cfg['dataset']}_s{seed}_{tag}.pt" if cache_dir else None
    model = get_model("resnet20", num_classes=10)
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        log(f"seed {seed}: baseline loaded from {path} (top-1 {blob['top1']:.4f})")
        return model.eval(), blob["top1"], blob["seconds"], str(path)
    log(f"seed {seed}: training baseline ResNet-20, {cfg['baseline_epochs']} epochs on {len(train)} images")
    torch.manual_seed(seed)
    model = get_model("resnet20", num_classes=10)
    t0 = time.perf_counter()
    res = finetune(model, train, test, epochs=cfg["baseline_epochs"], lr=cfg["baseline_lr"], schedule="cosine",
                   batch_size=cfg["batch_size"], max_steps_per_epoch=cfg["max_steps"], progress=False, seed=seed,
                   device=cfg["device"])
    secs = time.perf_counter() - t0
    model.cpu()  # pruned on the CPU; each pruned copy is fine-tuned on cfg["device"]
    for h in res["history"]:
        log(f"  epoch {h['epoch'] + 1}: train acc {h['train_acc']:.4f} val acc {h['val_acc']:.4f} "
            f"({h['images_per_s']:.0f} img/s)")
    top1 = float(res["val_acc"])
    if path is not None:
        buf = _torch_bytes({"model": model.state_dict(), "top1": top1, "seconds": secs,
                            "history": res["history"], "key": key})
        atomic_write(path, buf)
    return model.eval(), top1, secs, str(path) if path else None


def _torch_bytes(obj) -> bytes:
    import io
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


def prune_and_finetune(base, criterion: str, level: float, seed: int, cfg: dict, train, test, calib,
                       base_counts, train_plain) -> dict:
    """Top-1 right after pruning, then with BatchNorm statistics re-measured on ``cfg["bn_images"]`` un-augmented
    training images (``fxprune.recalibrate_bn``; it does not change what fine-tuning reaches, since training
    normalizes with batch statistics), then after fine-tuning."""
    x = torch.randn(1, 3, 32, 32)
    t0 = time.perf_counter()
    model = copy.deepcopy(base).eval()
    small = fxprune.prune(model, x, criterion=criterion, flops_reduction=level, data=calib, seed=seed,
                          **CRITERION_OPTIONS.get(criterion, {}))
    prune_s = time.perf_counter() - t0
    macs, params = _counts(small, x)
    _, pruned = evaluate(small, test, device=cfg["device"])
    recalibrated = None
    if cfg.get("bn_images"):
        fxprune.recalibrate_bn(small, train_plain, images=cfg["bn_images"], seed=seed)
        _, recalibrated = evaluate(small, test, device=cfg["device"])
    t1 = time.perf_counter()
    res = finetune(small, train, test, epochs=cfg["finetune_epochs"], lr=cfg["finetune_lr"], schedule="cosine",
                   batch_size=cfg["batch_size"], max_steps_per_epoch=cfg["finetune_max_steps"] or None,
                   progress=False, seed=seed, device=cfg["device"])
    return {"criterion": criterion, "level": level, "seed": seed,
            "flops_reduction": 1.0 - macs / base_counts[0], "params_reduction": 1.0 - params / base_counts[1],
            "macs": macs, "params": params, "top1_pruned": pruned, "top1_recalibrated": recalibrated,
            "top1_finetuned": float(res["val_acc"]),
            "prune_s": prune_s, "finetune_s": time.perf_counter() - t1}


def run_benchmark(cfg: dict, out_json: Path | None = None, cache_dir: Path | None = None,
                  previous: dict | None = None, command: str = "") -> dict:
    """The whole grid; returns {"config", "baselines", "runs", ...}. Resumes runs found in ``previous``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.get("threads") or threads)
    try:
        return _run_grid(cfg, out_json, cache_dir, previous, command)
    finally:
        torch.set_num_threads(threads)


def _run_grid(cfg, out_json, cache_dir, previous, command) -> dict:
    start = time.perf_counter()
    train, train_plain, test = load_data(cfg["dataset"], cfg.get("root"), cfg["train_subset"],
                                         cfg.get("test_subset"), device_batched=cfg["device"] != "cpu")
    log(f"{cfg['dataset']}: {len(train)} training images, {len(test)} test images")
    n_test = len(test)
    done = {}
    grid = ("seeds", "criteria", "levels")  # runs done under the same settings are reused, whatever the grid
    if previous and {k: v for k, v in previous.get("config", {}).items() if k not in grid} == \
            {k: v for k, v in cfg.items() if k not in grid}:
        done = {(r["seed"], r["criterion"], r["level"]): r for r in previous.get("runs", [])}
        if done:
            log(f"resuming: {len(done)} runs already in {out_json}")
            start -= float(previous.get("elapsed_s", 0.0))  # report the compute of all sessions together
    result = {"config": cfg, "command": command, "baselines": {}, "runs": [], "torch": torch.__version__,
              "threads": torch.get_num_threads(), "n_test": n_test,
              "device_name": torch.cuda.get_device_name() if cfg["device"].startswith("cuda") else "cpu"}
    x = torch.randn(1, 3, 32, 32)
    total = len(cfg["seeds"]) * len(cfg["criteria"]) * len(cfg["levels"])
    k = 0
    bases = {}
    for seed in cfg["seeds"]:  # all baselines first, then level-major: a cut-short run has every seed
        base, top1, secs, path = train_baseline(cfg, seed, train, test, cache_dir)
        base_counts = _counts(base, x)
        result["baselines"][str(seed)] = {"top1": top1, "train_s": secs, "cache": path,
                                          "macs": base_counts[0], "params": base_counts[1]}
        log(f"seed {seed}: baseline top-1 {top1:.4f} ({secs:.0f}s)")
        calib = calibration_batches(train_plain, cfg["calib_batches"], cfg["calib_batch_size"], seed)
        bases[seed] = (base, top1, base_counts, calib)
    for level in cfg["levels"]:
        for crit in cfg["criteria"]:
            for seed in cfg["seeds"]:
                base, top1, base_counts, calib = bases[seed]
                k += 1
                r = done.get((seed, crit, level))
                if r is None:
                    try:
                        r = prune_and_finetune(base, crit, level, seed, cfg, train, test, calib, base_counts,
                                               train_plain)
                    except PlanError as e:  # e.g. a FLOPs target the channel granularity cannot reach
                        log(f"[{k}/{total}] seed {seed} {crit} level {level:.2f}: FAILED: {e}")
                        result.setdefault("failed", []).append({"seed": seed, "criterion": crit, "level": level,
                                                                "error": str(e)})
                        continue
                    r["top1_baseline"] = top1
                result["runs"].append(r)
                log(f"[{k}/{total}] seed {seed} {crit:7s} level {level:.2f}: FLOPs -{r['flops_reduction']:.1%} "
                    f"params -{r['params_reduction']:.1%} | top-1 base {top1:.4f} pruned {r['top1_pruned']:.4f} "
                    + (f"BN re-measured {r['top1_recalibrated']:.4f} " if r.get("top1_recalibrated") is not None else "")
                    + f"fine-tuned {r['top1_finetuned']:.4f} | prune {r['prune_s']:.1f}s ft {r['finetune_s']:.1f}s "
                    f"| elapsed {time.perf_counter() - start:.0f}s")
                result["elapsed_s"] = time.perf_counter() - start
                if out_json is not None:
                    atomic_write(out_json, json.dumps(result, indent=1))
    result["elapsed_s"] = time.perf_counter() - start
    result["summary"] = summarize(result)
    if out_json is not None:
        atomic_write(out_json, json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------- summary / outputs

def _ms(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def complete_levels(result: dict) -> list[float]:
    """The levels every criterion has a run at: a level cut short by a time limit would rank a few criteria
    among themselves only, so it is left out of the tables and the verdict (and named as cut short)."""
    cfg = result["config"]
    return [lv for lv in cfg["levels"]
            if all(any(r["criterion"] == c and r["level"] == lv for r in result["runs"]) for c in cfg["criteria"])]


def summarize(result: dict) -> dict:
    cfg = result["config"]
    rows = []
    for crit in cfg["criteria"]:
        for level in complete_levels(result):
            rs = [r for r in result["runs"] if r["criterion"] == crit and r["level"] == level]
            if not rs:
                continue
            row = {"criterion": crit, "level": level, "n": len(rs)}
            for key in ("flops_reduction", "params_reduction", "top1_baseline", "top1_pruned", "top1_finetuned"):
                row[key], row[key + "_std"] = _ms([r[key] for r in rs])
            if all(r.get("top1_recalibrated") is not None for r in rs):  # runs from before the column have none
                row["top1_recalibrated"], row["top1_recalibrated_std"] = _ms([r["top1_recalibrated"] for r in rs])
            rows.append(row)
    return {"rows": rows}


def _recalibrated(rows: list[dict]) -> bool:
    """Whether every row has a top-1 with BatchNorm statistics re-measured."""
    return bool(rows) and all("top1_recalibrated" in r for r in rows)


def _fmt(m, s, pct=True) -> str:
    return f"{m * 100:.2f} ± {s * 100:.2f}" if pct else f"{m:.4f} ± {s:.4f}"


def _paired(result: dict, a: str, b: str, level: float, key: str = "top1_finetuned"):
    """Per-seed difference a - b (same baseline): mean, std, n."""
    by = {(r["criterion"], r["seed"]): r[key] for r in result["runs"] if r["level"] == level}
    d = [by[(a, s)] - by[(b, s)] for s in result["config"]["seeds"] if (a, s) in by and (b, s) in by]
    return (*_ms(d), len(d)) if d else (float("nan"), float("nan"), 0)


def analysis_text(result: dict) -> list[str]:
    cfg, rows = result["config"], result["summary"]["rows"]
    lines = []
    for level in cfg["levels"]:
        rs = sorted((r for r in rows if r["level"] == level), key=lambda r: -r["top1_finetuned"])
        if not rs:
            continue
        best, second = rs[0], rs[1] if len(rs) > 1 else None
        msg = (f"- **{level:.0%} FLOPs**: best fine-tuned top-1 **{best['criterion']}** "
               f"{_fmt(best['top1_finetuned'], best['top1_finetuned_std'])}%")
        if second:
            gap = best["top1_finetuned"] - second["top1_finetuned"]
            noise = max(best["top1_finetuned_std"], second["top1_finetuned_std"])
            spread = ("one seed: spread unmeasured" if min(best["n"], second["n"]) < 2
                      else f"{'within' if gap <= 2 * noise else 'outside'} 2x the seed std")
            msg += (f", then {second['criterion']} {_fmt(second['top1_finetuned'], second['top1_finetuned_std'])}% "
                    f"(gap {gap * 100:.2f} pt, {spread}); "
                    f"worst {rs[-1]['criterion']} {_fmt(rs[-1]['top1_finetuned'], rs[-1]['top1_finetuned_std'])}%")
        bp = max((r for r in rows if r["level"] == level), key=lambda r: r["top1_pruned"])
        msg += f". Right after pruning (no fine-tuning) the best is {bp['criterion']} " \
               f"{_fmt(bp['top1_pruned'], bp['top1_pruned_std'])}%."
        if _recalibrated(rs):
            by = sorted(rs, key=lambda r: -r["top1_recalibrated"])
            top, low = by[0], by[-1]
            msg += (f" With BatchNorm statistics re-measured (no training): best {top['criterion']} "
                    f"{_fmt(top['top1_recalibrated'], top['top1_recalibrated_std'])}%, worst {low['criterion']} "
                    f"{_fmt(low['top1_recalibrated'], low['top1_recalibrated_std'])}%.")
        lines.append(msg)
    return lines


def graph_vs_l1(result: dict) -> list[str]:
    cfg = result["config"]
    if not {"graph", "l1"} <= set(cfg["criteria"]):
        return []
    out = []
    for level in cfg["levels"]:
        ft = _paired(result, "graph", "l1", level)
        pr = _paired(result, "graph", "l1", level, "top1_pruned")
        if ft[2]:
            out.append(f"| {level:.0%} | {pr[0] * 100:+.2f} ± {pr[1] * 100:.2f} | {ft[0] * 100:+.2f} ± {ft[1] * 100:.2f} "
                       f"| {ft[2]} |")
    return out


def _beats_random(result: dict, crits, levels, se: float, key: str = "top1_finetuned") -> list[str]:
    """The (criterion, level) pairs whose paired lead over `random` on ``key`` exceeds twice its noise."""
    out = []
    for c in crits:
        for lv in levels:
            d = _paired(result, c, "random", lv, key)
            if c != "random" and d[2] > 1 and d[0] > 2 * max(d[1], se * math.sqrt(2)):
                out.append(f"{c} at {lv:.0%} ({d[0] * 100:+.1f} pt)")
    return out


def verdict_text(result: dict) -> list[str]:
    """The short answer, derived from the numbers (no hand-written claims)."""
    cfg, rows = result["config"], result["summary"]["rows"]
    one_seed = len(cfg["seeds"]) < 2  # the seed-to-seed spread is unmeasured: no lead is called real
    n_test = result.get("n_test") or cfg.get("test_subset") or 10000  # runs from before n_test: Fashion-MNIST
    base = _ms([b["top1"] for b in result["baselines"].values()])[0]
    se = math.sqrt(max(base * (1 - base), 1e-6) / n_test)  # binomial s.e. of one top-1 measurement
    crits = [c for c in cfg["criteria"] if any(r["criterion"] == c for r in rows)]
    levels = [lv for lv in cfg["levels"] if any(r["level"] == lv for r in rows)]
    ranks = {c: [] for c in crits}
    clear = []
    for level in levels:
        rs = sorted((r for r in rows if r["level"] == level), key=lambda r: -r["top1_finetuned"])
        for i, r in enumerate(rs):
            ranks[r["criterion"]].append(i + 1)
        if len(rs) > 1 and min(rs[0]["n"], rs[1]["n"]) > 1:  # one seed: its spread is unknown, no winner is called
            noise = max(rs[0]["top1_finetuned_std"], rs[1]["top1_finetuned_std"], se)
            if rs[0]["top1_finetuned"] - rs[1]["top1_finetuned"] > 2 * noise:
                clear.append((level, rs[0]["criterion"]))
    mean_rank = sorted(((float(np.mean(v)), c) for c, v in ranks.items() if v))
    out = ["**Verdict.** "]
    v = out[0]
    v += (f"Mean rank of fine-tuned top-1 over the {len(levels)} level(s) (1 = best of {len(crits)}): "
          + ", ".join(f"{c} {m:.1f}" for m, c in mean_rank) + ". ")
    if clear:
        v += "A winner that leads the runner-up by more than twice the noise: " + ", ".join(
            f"{c} at {lv:.0%}" for lv, c in clear) + ". "
    elif one_seed:
        v += ("With one seed the seed-to-seed spread is not measured, so no lead is called real here. ")
    else:
        v += (f"At no level does the winner lead the runner-up by more than twice the noise (seed std, or the "
              f"{se * 100:.1f} pt binomial standard error of one top-1 on {n_test} test images, whichever is larger): "
              f"the ranking among the leading criteria is within noise. ")
    spread = []
    for level in levels:
        rs = [r for r in rows if r["level"] == level]
        spread.append((level, (max(r["top1_finetuned"] for r in rs) - min(r["top1_finetuned"] for r in rs)) * 100))
    v += "Best-minus-worst fine-tuned top-1 per level: " + ", ".join(f"{lv:.0%}: {d:.2f} pt" for lv, d in spread) + ". "
    if {"graph", "l1"} <= set(crits):
        diffs = [_paired(result, "graph", "l1", lv) for lv in levels]
        levels = [lv for lv, d in zip(levels, diffs) if d[2]]
        diffs = [d for d in diffs if d[2]]
        wins = sum(1 for r in result["runs"] for q in result["runs"]
                   if r["criterion"] == "graph" and q["criterion"] == "l1" and r["level"] == q["level"]
                   and r["seed"] == q["seed"] and r["top1_finetuned"] > q["top1_finetuned"])
        pairs = sum(d[2] for d in diffs)
        big = [lv for lv, d in zip(levels, diffs) if d[2] > 1 and abs(d[0]) > 2 * max(d[1], se * math.sqrt(2))]
        v += (f"**Graph vs L1:** graph beats L1 after fine-tuning in {wins} of {pairs} paired (seed, level) runs; "
              f"the paired difference is " + ", ".join(f"{d[0] * 100:+.2f} pt at {lv:.0%}" for lv, d in zip(levels, diffs))
              + ". ")
        if big:
            v += ("It exceeds twice its noise at " + ", ".join(f"{lv:.0%}" for lv in big) + ", so on this setup the "
                  "difference there is real, in the direction of its sign. ")
        elif one_seed:
            v += "With one seed these differences cannot be told from seed-to-seed noise. "
        else:
            v += ("None of these exceeds twice its noise, so this benchmark does **not** support seed 000's claim that "
                  "graph beats L1 at equal FLOPs (nor the opposite): the differences are within noise. ")
    if "random" in crits and one_seed:
        v += "The `random` control is not tested against with one seed. "
    elif "random" in crits:
        beat = _beats_random(result, crits, levels, se)
        v += ("Against the `random` control (paired per seed), the criteria that beat it by more than twice the noise: "
              + (", ".join(beat) if beat else "none") + ". ")
        if _recalibrated(rows):
            v += ("Before any fine-tuning, with BatchNorm statistics re-measured, those that beat it so: "
                  + (", ".join(_beats_random(result, crits, levels, se, "top1_recalibrated")) or "none") + ". ")
    top_pruned = max(r["top1_pruned"] for r in rows)
    if top_pruned < 0.3:
        v += (f"Right after pruning every criterion is near chance (best {top_pruned * 100:.1f}% vs 10% chance) at "
              "every level, so the 'pruned' column does not separate the criteria here")
        if _recalibrated(rows):
            v += "; with BatchNorm statistics re-measured they spread over " + ", ".join(
                f"{min(r['top1_recalibrated'] for r in rows if r['level'] == lv) * 100:.1f}-"
                f"{max(r['top1_recalibrated'] for r in rows if r['level'] == lv) * 100:.1f}% at {lv:.0%}"
                for lv in levels) + ". "
        else:
            v += "; the ranking comes from the short fine-tuning, whose seed-to-seed spread is large. "
    ft = cfg.get("finetune_max_steps")
    v += ("Caveats: " + (f"a short, sub-converged baseline ({base * 100:.1f}%), " if _short_of_convergence(result) else "")
          + (f"only {ft} fine-tuning steps per epoch x {cfg['finetune_epochs']} epoch(s), " if ft else
             f"{cfg['finetune_epochs']} fine-tuning epoch(s), ")
          + f"{len(cfg['seeds'])} seeds and a {n_test}-image test set: gaps of a few points cannot be resolved here, "
          "and a longer fine-tuning budget (the seed papers fine-tune for tens to hundreds of epochs) usually shrinks "
          "the differences between criteria further.")
    out[0] = v
    return out


def _short_of_convergence(result: dict) -> bool:
    """Below 90% top-1 on Fashion-MNIST a ResNet-20 is still far from its ~93-94%."""
    return result["config"]["dataset"] == "fashion-mnist" and \
        _ms([b["top1"] for b in result["baselines"].values()])[0] < 0.90


def _compute_text(result: dict) -> str:
    device = result["config"].get("device", "cpu")
    where = (f"trained on {result.get('device_name') or device}, pruned on the CPU" if device != "cpu"
             else "on the CPU (2-core machine shared with other jobs)")
    return f"{where}, {result['threads']} torch CPU thread(s), torch {result['torch']}."


def write_markdown(result: dict, path: Path, command: str) -> None:
    cfg, rows = result["config"], result["summary"]["rows"]
    bases = result["baselines"]
    base_top1 = _ms([b["top1"] for b in bases.values()])
    n_runs = len(result["runs"])
    lines = [
        "# Criteria at equal FLOPs: ResNet-20 on " + cfg["dataset"],
        "",
        "Issue: *which criterion keeps the most accuracy at the same FLOPs — is graph better than L1, as seed 000 "
        "claims?* Every criterion is given the same `flops_reduction=` budget (conv+linear MACs), the same "
        "baseline per seed, the same calibration batches and the same fine-tuning recipe.",
        "",
        f"Command: `{command}`",
        "",
        "## Setup and budget",
        "",
        f"- Model: CIFAR ResNet-20 (`get_model('resnet20')`, 32x32 inputs, {bases[next(iter(bases))]['macs'] / 1e6:.1f}M "
        f"conv+linear MACs, {bases[next(iter(bases))]['params'] / 1e3:.0f}K conv+linear params).",
        f"- Data: {cfg['dataset']}, "
        + (f"training subset of {cfg['train_subset']} images (fixed random subset, " if cfg["train_subset"]
           else "the whole training set (") + "standard crop+flip augmentation), evaluated on "
        + (f"a fixed random {cfg['test_subset']}-image subset of the test set (the same images for every run)"
           if cfg.get("test_subset") else "the full test set") + ".",
        f"- Baseline: trained from scratch per seed, {cfg['baseline_epochs']} epochs, SGD lr {cfg['baseline_lr']} cosine, "
        f"momentum 0.9, wd 5e-4, batch {cfg['batch_size']}"
        + (f", at most {cfg['max_steps']} steps/epoch" if cfg["max_steps"] else "")
        + f". Baseline top-1 {_fmt(*base_top1)}%" + (
            f" — **short of convergence** (the budget allowed only {cfg['baseline_epochs']} epochs"
            + (" on a subset" if cfg["train_subset"] else "") + "; a fully trained ResNet-20 reaches ~93-94% on all "
            "of Fashion-MNIST)." if _short_of_convergence(result) else "."),
        f"- FLOPs targets {cfg['levels']}"
        + (" (0.70 was asked for, but with ResNet-20's channel granularity a uniform per-group ratio lands at 72.2% "
           "at the closest, outside the planner's 2% tolerance, so `flops_reduction=0.7` raises PlanError; 0.72 is used)"
           if 0.72 in cfg["levels"] else "") + ".",
        f"- Pruning: `fxprune.prune(model, x, criterion=c, flops_reduction=level, data=calib, seed=seed)`; calib = "
        f"{cfg['calib_batches']} batch(es) of {cfg['calib_batch_size']} (inputs, targets) from the un-augmented training "
        f"subset (criteria that need no data ignore it); fmc with `k=4` on the first 16 of those images (t-SNE + KMeans per image and layer is the slow part).",
        f"- Fine-tuning: {cfg['finetune_epochs']} epoch(s)"
        + (f" of at most {cfg['finetune_max_steps']} steps ({cfg['finetune_max_steps'] * cfg['batch_size']} images)"
           if cfg.get("finetune_max_steps") else "")
        + f", SGD lr {cfg['finetune_lr']} cosine, same batch/wd, with "
        f"`fxprune.runner.finetune`; top-1 is measured on the test set right after pruning and after fine-tuning.",
        f"- Seeds {cfg['seeds']} (seed changes baseline init + data order, the calibration batches, random's draw and "
        f"fmc's t-SNE/KMeans seeds). Entries are mean ± sample std (ddof=1) over {len(cfg['seeds'])} seeds.",
        f"- Compute: {n_runs} prune+fine-tune runs + {len(bases)} baselines, {result['elapsed_s'] / 60:.1f} min wall-clock "
        + _compute_text(result),
        "",
        "## Results",
        "",
        "Top-1 in %, reductions in % of the baseline's conv+linear MACs / params (measured on the pruned model).",
        "",
        "| criterion | target | FLOPs red. | params red. | top-1 baseline | top-1 pruned | "
        + ("top-1 BN re-measured | " if _recalibrated(rows) else "") + "top-1 fine-tuned |",
        "|---|---|---|---|---|---|---|" + ("---|" if _recalibrated(rows) else ""),
    ]
    for level in cfg["levels"]:
        for r in sorted((r for r in rows if r["level"] == level), key=lambda r: -r["top1_finetuned"]):
            lines.append(
                f"| {r['criterion']} | {level:.0%} | {_fmt(r['flops_reduction'], r['flops_reduction_std'])} | "
                f"{_fmt(r['params_reduction'], r['params_reduction_std'])} | "
                f"{_fmt(r['top1_baseline'], r['top1_baseline_std'])} | {_fmt(r['top1_pruned'], r['top1_pruned_std'])} | "
                + (f"{_fmt(r['top1_recalibrated'], r['top1_recalibrated_std'])} | " if _recalibrated(rows) else "")
                + f"**{_fmt(r['top1_finetuned'], r['top1_finetuned_std'])}** |")
    complete = complete_levels(result)
    cut = [lv for lv in cfg["levels"] if lv not in complete and any(r["level"] == lv for r in result["runs"])]
    if cut:
        done = [r for r in result["runs"] if r["level"] in cut]
        lines += ["", "Cut short (the run's time limit came first; not in the table or the verdict): "
                  + "; ".join(f"{r['criterion']} at {r['level']:.0%} seed {r['seed']}: fine-tuned "
                              f"{r['top1_finetuned'] * 100:.2f}%" for r in done) + "."]
    lines += ["", "Rows are sorted by fine-tuned top-1 within each level. Plot: `criteria.png`.", "",
              "## Answer", ""]
    lines += analysis_text(result)
    gl = graph_vs_l1(result)
    if gl:
        lines += ["", "Graph minus L1, paired per seed (same baseline), in points of top-1:", "",
                  "| level | after pruning | after fine-tuning | seeds |", "|---|---|---|---|", *gl]
    lines += ["", *verdict_text(result), ""]
    atomic_write(path, "\n".join(lines))


def write_plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg, rows = result["config"], result["summary"]["rows"]
    base = _ms([b["top1"] for b in result["baselines"].values()])
    panels = [("top1_pruned", "right after pruning")]
    if _recalibrated(rows):
        panels.append(("top1_recalibrated", "BatchNorm statistics re-measured"))
    panels.append(("top1_finetuned", f"after fine-tuning ({cfg['finetune_epochs']} epoch(s)"
                   + (f", <= {cfg['finetune_max_steps']} steps" if cfg.get("finetune_max_steps") else "") + ")"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), sharex=True)
    for ax, (key, title) in zip(axes, panels):
        for i, crit in enumerate(cfg["criteria"]):
            rs = sorted((r for r in rows if r["criterion"] == crit), key=lambda r: r["level"])
            if not rs:
                continue
            off = (i - len(cfg["criteria"]) / 2) * 0.002  # small x jitter so error bars do not overlap
            ax.errorbar([r["flops_reduction"] * 100 + off * 100 for r in rs], [r[key] * 100 for r in rs],
                        xerr=[r["flops_reduction_std"] * 100 for r in rs], yerr=[r[key + "_std"] * 100 for r in rs],
                        marker="o", ms=4, capsize=3, label=crit)
        ax.axhline(base[0] * 100, color="k", ls="--", lw=1, label="baseline")
        ax.set_title(title)
        ax.set_xlabel("FLOPs (conv+linear MACs) reduction, %")
        ax.set_ylabel("top-1, %")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"ResNet-20 on {cfg['dataset']}: mean ± std over seeds {cfg['seeds']}")
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_outputs(result: dict, out_dir: Path, command: str) -> None:
    if "summary" not in result:
        result["summary"] = summarize(result)
    atomic_write(out_dir / "criteria.json", json.dumps(result, indent=1))
    write_markdown(result, out_dir / "criteria.md", command)
    write_plot(result, out_dir / "criteria.png")


# --------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    ap.add_argument("--root", default=None, help="dataset folder (fashion-mnist default: /usr/share/datasets/fashion-mnist)")
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--test-subset", type=int, default=2000, help="0: the full test set")
    ap.add_argument("--baseline-epochs", type=int, default=4)
    ap.add_argument("--baseline-lr", type=float, default=0.1)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on baseline training steps per epoch")
    ap.add_argument("--finetune-max-steps", type=int, default=16, help="cap on fine-tuning steps per epoch (0: none)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5, 0.72],
                    help="flops_reduction targets; ResNet-20's channel granularity (uniform per-group ratio) cannot "
                         "land within 2%% of 0.70 (closest 72.2%%), hence 0.72")
    ap.add_argument("--criteria", nargs="+", default=DEFAULT_CRITERIA)
    ap.add_argument("--bn-images", type=int, default=1024,
                    help="training images the BatchNorm statistics are re-measured on before fine-tuning (0: skip)")
    ap.add_argument("--calib-batches", type=int, default=1)
    ap.add_argument("--calib-batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the baselines and fine-tunes train (pruning runs on the CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is much faster on a shared, busy CPU)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "fxprune-bench-criteria"))
    ap.add_argument("--fresh", action="store_true", help="ignore runs already in the output json")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite criteria.md/png from criteria.json (e.g. of a cut-short run) and exit")
    return ap.parse_args(argv)


def config_from_args(a) -> dict:
    known = set(fxprune.criteria())
    bad = [c for c in a.criteria if c not in known]
    if bad:
        raise SystemExit(f"error: unknown criteria {bad}; known: {sorted(known)}")
    return {"dataset": a.dataset, "root": a.root, "train_subset": a.train_subset, "test_subset": a.test_subset,
            "baseline_epochs": a.baseline_epochs, "baseline_lr": a.baseline_lr, "finetune_epochs": a.finetune_epochs,
            "finetune_lr": a.finetune_lr, "batch_size": a.batch_size, "max_steps": a.max_steps,
            "finetune_max_steps": a.finetune_max_steps, "seeds": a.seeds,
            "levels": a.levels, "criteria": a.criteria, "calib_batches": a.calib_batches,
            "calib_batch_size": a.calib_batch_size, "threads": a.threads, "device": a.device,
            "bn_images": a.bn_images}


def main(argv=None) -> None:
    a = parse_args(argv)
    cfg = config_from_args(a)
    out_dir = Path(a.out_dir)
    out_json = out_dir / "criteria.json"
    previous = None
    if out_json.is_file() and not a.fresh:
        try:
            previous = json.loads(out_json.read_text())
        except json.JSONDecodeError:
            previous = None
    command = ".venv/bin/python bench/criteria.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.report_only:
        if previous is None:
            raise SystemExit(f"error: --report-only needs {out_json}")
        previous["summary"] = summarize(previous)
        write_outputs(previous, out_dir, previous.get("command", command.strip()))
        log(f"rewrote {out_dir}/criteria.{{md,png}} from {len(previous['runs'])} runs")
        return
    cache = Path(a.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    result = run_benchmark(cfg, out_json, cache, previous, command.strip())
    write_outputs(result, out_dir, command.strip())
    log(f"done in {result['elapsed_s'] / 60:.1f} min; wrote {out_dir}/criteria.{{json,md,png}}")


if __name__ == "__main__":
    main()
