"""Every torchvision classification model through fxprune: traced, pruned, verified, counted, timed.

For each name in ``torchvision.models.list_models(module=torchvision.models)``: random weights and the
smallest input the architecture accepts (tests/zoo_models.py, shared with tests/test_zoo.py), l1 at
ratio 0.3. Columns:

* traced / pruned: fxprune traced it; the compact model runs, keeps its output shape, has fewer params;
* verify: relative error against the masked original. Models whose pruned groups are ``mixing``
  (LayerNorm over channels, attention q·k) cannot match it by construction: their row shows the
  error of the ``strict=True`` prune (mixing channels frozen) and its params, marked "strict";
  "(f64)" marks an error measured in float64 because float32 rounding of that deep random net
  alone exceeds 1e-5 (see tests/test_zoo.py);
* params and MACs (fvcore through ``fxprune.report.count``, all ops, one image) before/after;
* fxprune prune time vs Torch-Pruning's ``MagnitudePruner`` (MagnitudeImportance(p=1), ratio 0.3,
  the final classifier ignored; build + step timed on a copy), each the best of REPEATS runs, and
  whether Torch-Pruning's result runs with the original output shape.

One thread, one process, models in turn. Writes bench/results/zoo.md (and zoo.json).

    .venv/bin/python bench/zoo.py [--models resnet18 vit_b_16 ...] [--no-tp] [--no-macs]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import fxprune  # noqa: E402
from fxprune import VerificationError  # noqa: E402
from passes.plan import kept_from_plan  # noqa: E402
from zoo_models import MODELS, build, example_input, input_size  # noqa: E402

RATIO = 0.3
REPEATS = 2  # prune times are the best of this many runs, for both tools


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(model: nn.Module, x: torch.Tensor) -> int | None:
    try:
        from fxprune.report import count
    except ImportError:
        return _hook_macs(model, x)
    try:
        return int(count(model, (x,)).macs)
    except Exception:  # fvcore cannot trace every op: fall back to conv/linear hooks
        return _hook_macs(model, x)


def _hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = [0]

    def hook(m, args, out):
        if isinstance(m, nn.modules.conv._ConvNd):
            total[0] += out.numel() * (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        elif isinstance(m, nn.Linear):
            total[0] += out.numel() // out.shape[-1] * m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def verify(model, small, x) -> tuple[float, str]:
    try:
        return fxprune.verify(model, small, x), "f32"
    except VerificationError:
        m64, s64 = copy.deepcopy(model).double(), copy.deepcopy(small).double()
        return fxprune.verify(m64, s64, x.double(), rtol=1e-9), "f64"


def classifier_of(model: nn.Module) -> nn.Module:
    """The last conv/linear layer defined: the final classifier of every torchvision classifier."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))][-1]


TP_TIMEOUT = 120.0  # seconds per model
TP_MEMORY = 8e9  # bytes a Torch-Pruning run may add (its graph search explodes on some transformers)


def torch_pruning(model: nn.Module, x: torch.Tensor, out_shape) -> dict:
    """Torch-Pruning in a forked child (the model is shared copy-on-write), killed when it runs past
    TP_TIMEOUT or grows past TP_MEMORY; retried when the machine itself ran low on memory."""
    for attempt in range(3):
        result = _torch_pruning_once(model, x, out_shape)
        if result.get("tp_error") != LOW_MEMORY:
            return result
        time.sleep(20)
    return result


LOW_MEMORY = "the machine ran low on memory (not Torch-Pruning's own growth)"


def _torch_pruning_once(model: nn.Module, x: torch.Tensor, out_shape) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_tp_child, args=(model, x, out_shape, send))
    start = time.perf_counter()
    child.start()
    send.close()
    result = None
    if recv.poll(TP_TIMEOUT):
        try:
            result = recv.recv()
        except EOFError:
            result = None
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    if result is None:
        why = {3: f"killed: grew past {TP_MEMORY / 1e9:.0f} GB", 4: LOW_MEMORY}.get(child.exitcode, f"exit {child.exitcode}")
        if time.perf_counter() - start >= TP_TIMEOUT:
            why = "timeout"
        return {"tp_time": time.perf_counter() - start, "tp_ok": False, "tp_error": why}
    return result


def _tp_child(model, x, out_shape, send) -> None:
    import threading

    base = _rss()

    def guard():
        while True:
            if _rss() - base > TP_MEMORY:
                os._exit(3)
            if _available() < 2e9:
                os._exit(4)
            time.sleep(0.1)

    threading.Thread(target=guard, daemon=True).start()
    send.send(_run_torch_pruning(model, x, out_shape))
    send.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    return float("inf")


def _run_torch_pruning(model: nn.Module, x: torch.Tensor, out_shape) -> dict:
    import torch_pruning as tp

    times = []
    for _ in range(REPEATS):
        work = copy.deepcopy(model)  # Torch-Pruning edits in place; the copy is not timed
        start = time.perf_counter()
        try:
            pruner = tp.pruner.MagnitudePruner(work, x, importance=tp.importance.MagnitudeImportance(p=1),
                                               pruning_ratio=RATIO, ignored_layers=[classifier_of(work)])
            pruner.step()
        except Exception as e:
            return {"tp_time": time.perf_counter() - start, "tp_ok": False,
                    "tp_error": f"{type(e).__name__}: {e}"[:200]}
        times.append(time.perf_counter() - start)
        if times[-1] > TP_TIMEOUT / 4:
            break
    elapsed = min(times)
    try:
        with torch.no_grad():
            ok = tuple(work(x).shape) == tuple(out_shape)
        err = None if ok else "output shape changed"
    except Exception as e:
        ok, err = False, f"forward fails: {type(e).__name__}: {e}"[:200]
    return {"tp_time": elapsed, "tp_ok": ok, "tp_error": err, "tp_params": n_params(work)}


def run_model(name: str, do_tp: bool, do_macs: bool) -> dict:
    row: dict = {"model": name, "input": input_size(name)}
    model = build(name)
    x = example_input(name)
    row["params"] = n_params(model)
    with torch.no_grad():
        out_shape = tuple(model(x).shape)
    try:
        analysis = fxprune.analyze(model, x)
        row["traced"] = True
    except Exception as e:
        row.update(traced=False, error=f"{type(e).__name__}: {e}"[:300])
        return row
    times = []
    for _ in range(REPEATS):  # the first run of an architecture pays one-time costs (kernels, caches)
        start = time.perf_counter()
        small = fxprune.prune(model, x, criterion="l1", ratio=RATIO)
        times.append(time.perf_counter() - start)
    row["fx_time"] = min(times)
    with torch.no_grad():
        y = small(x)
    row["params_after"] = n_params(small)
    row["pruned"] = tuple(y.shape) == out_shape and bool(torch.isfinite(y).all()) and row["params_after"] < row["params"]
    plan = small.meta["fxprune.plan"]
    groups = kept_from_plan(analysis, plan)
    row["groups_pruned"] = len(groups)
    row["mixing"] = sum(analysis.groups[g].mixing for g in groups)
    if do_macs:
        row["macs"], row["macs_after"] = macs(model, x), macs(small, x)
    if row["mixing"]:
        del small
        gc.collect()
        small = fxprune.prune(model, x, criterion="l1", ratio=RATIO, strict=True)
        row["strict_params"] = n_params(small)
    try:
        row["verify"], row["precision"] = verify(model, small, x)
    except VerificationError as e:
        row["verify"], row["precision"], row["error"] = float("inf"), "f32", str(e)[:300]
    del small
    gc.collect()
    if do_tp:
        row.update(torch_pruning(model, x, out_shape))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--no-macs", action="store_true", help="skip fvcore MAC counts")
    ap.add_argument("--merge", action="store_true", help="update these models' rows in the existing zoo.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fxprune.prune(build("resnet18"), example_input("resnet18"), criterion="l1", ratio=RATIO)  # warm-up imports
    rows, start = [], time.perf_counter()
    for name in args.models:
        t0 = time.perf_counter()
        try:
            row = run_model(name, not args.no_tp, not args.no_macs)
        except Exception as e:
            traceback.print_exc()
            row = {"model": name, "traced": False, "error": f"{type(e).__name__}: {e}"[:300]}
        row["wall"] = time.perf_counter() - t0
        rows.append(row)
        gc.collect()
        print(_line(row), flush=True)
    if args.merge:
        with open(os.path.join(ROOT, "bench", "results", "zoo.json")) as f:
            old = {r["model"]: r for r in json.load(f)}
        old.update({r["model"]: r for r in rows})
        rows = [old[n] for n in MODELS if n in old]
    total = sum(r.get("wall", 0.0) for r in rows) if args.merge else time.perf_counter() - start
    _write(rows, total, args)


def _line(r: dict) -> str:
    return (f"{r['model']:20s} pruned={r.get('pruned')} verify={r.get('verify', float('nan')):.1e}"
            f"{' strict' if r.get('mixing') else ''} params {r.get('params', 0) / 1e6:.1f}M->"
            f"{r.get('params_after', 0) / 1e6:.1f}M fx {r.get('fx_time', float('nan')):.2f}s "
            f"tp {r.get('tp_time', float('nan')):.2f}s ok={r.get('tp_ok')} wall {r['wall']:.1f}s"
            + (f" ERROR {r['error']}" if r.get("error") else ""))


def _m(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _g(n) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}G"


def _write(rows: list[dict], total: float, args) -> None:
    n = len(rows)
    traced = sum(bool(r.get("traced")) for r in rows)
    pruned = sum(bool(r.get("pruned")) for r in rows)
    verified = sum(r.get("verify", float("inf")) <= (1e-5 if r.get("precision") == "f32" else 1e-9) for r in rows)
    mixing = sum(bool(r.get("mixing")) for r in rows)
    tp_rows = [r for r in rows if "tp_time" in r]
    tp_ok = sum(bool(r.get("tp_ok")) for r in tp_rows)
    tp_good = [r for r in tp_rows if r.get("tp_ok") and r.get("fx_time")]
    speedups = [r["tp_time"] / r["fx_time"] for r in tp_good]
    lines = [
        "# torchvision zoo: fxprune l1 ratio 0.3",
        "",
        f"torch {torch.__version__}, torchvision {__import__('torchvision').__version__}; one thread; "
        f"prune times best of {REPEATS}; "
        f"random weights (tests/zoo_models.py); eval mode. Command: `.venv/bin/python bench/zoo.py`",
        "",
        f"**{n} models: {traced} traced, {pruned} pruned (fewer params, same output shape), "
        f"{verified} verified** (exact, or `strict=True` for the {mixing} with mixing groups), "
        f"Torch-Pruning MagnitudePruner ran for {tp_ok}/{len(tp_rows)}. Wall time {total:.0f}s.",
    ]
    if speedups:
        fx_total = sum(r["fx_time"] for r in tp_good)
        tp_total = sum(r["tp_time"] for r in tp_good)
        lines.append(f"Prune time on the {len(tp_good)} models both prune: fxprune {fx_total:.1f}s total vs "
                     f"Torch-Pruning {tp_total:.1f}s; fxprune speed-up median {statistics.median(speedups):.1f}x, "
                     f"min {min(speedups):.1f}x, max {max(speedups):.1f}x. Torch-Pruning runs are cut at "
                     f"{TP_TIMEOUT:.0f}s or {TP_MEMORY / 1e9:.0f} GB.")
    lines += [
        "",
        "verify: relative error vs the masked original; *strict*: the model has mixing groups (LayerNorm over "
        "channels, attention q·k), so its default prune only approximates the original and the error shown is "
        "that of the `strict=True` prune (params in the *strict params* column); (f64): float32 rounding of "
        "that deep random network alone exceeds 1e-5, measured in float64 (must be <= 1e-9).",
        "",
        "| model | input | traced | pruned | verify | params | params after | strict params | MACs | MACs after "
        "| fxprune (s) | Torch-Pruning (s) | TP ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r.get("verify")
        ver = "-" if v is None else f"{v:.1e}" + (" strict" if r.get("mixing") else "") + \
            (" (f64)" if r.get("precision") == "f64" else "")
        tp = "-" if "tp_time" not in r else ("yes" if r.get("tp_ok") else f"no: {r.get('tp_error')}")
        tp_time = f"{r['tp_time']:.2f}" if "tp_time" in r else "-"
        lines.append(
            f"| {r['model']} | {r.get('input', '-')} | {'yes' if r.get('traced') else 'no'} | "
            f"{'yes' if r.get('pruned') else 'no'} | {ver} | {_m(r.get('params'))} | {_m(r.get('params_after'))} | "
            f"{_m(r.get('strict_params'))} | {_g(r.get('macs'))} | {_g(r.get('macs_after'))} | "
            f"{r.get('fx_time', float('nan')):.2f} | {tp_time} | {tp} |"
        )
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", ""] + [f"* {r['model']}: {r['error']}" for r in errors]
    lines.append("")
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in (("zoo.md", "\n".join(lines)), ("zoo.json", json.dumps(rows, indent=1, default=str))):
        path = os.path.join(out_dir, fname)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
