"""How long one prune takes: fxprune vs Torch-Pruning's MagnitudePruner (build + step), same L1 ratio.

Both run in this process, on one thread, on the same models and example input (1x3x224x224), best
of 2 x --repeats fresh runs each (see best_times). Prints a table and the speed ratio,
where fxprune's time goes (the passes ``fxprune.prune`` runs, timed one by one, best of
--repeats each), what ``torch.fx.symbolic_trace`` alone costs on each model, and the floor of any
pruner returning a compact GraphModule (torch.fx's graph + the weight slicing + the compact model's
code, before any analysis) against the 5x budget; writes bench/results/prune_speed.md.

    .venv/bin/python bench/prune_speed.py [--ratio 0.3] [--repeats 5]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import statistics
import time
from typing import NamedTuple

import torch
import torch.fx
import torchvision

import fxprune
from fxprune.experiment import write_text_atomic
import passes.rewrite as rewrite_pass
from passes import criteria
from passes.dependency import analyze
from passes.plan import make_plan
from passes.rewrite import rewrite
from passes.select import resolve_ratios, select
from passes.trace import trace

MODELS = ["resnet18", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"]


def time_fxprune(model, x, ratio) -> float:
    start = time.perf_counter()
    fxprune.prune(model, x, criterion="l1", ratio=ratio)
    return time.perf_counter() - start


def time_torch_pruning(model, x, ratio) -> float:
    import torch_pruning as tp

    model = copy.deepcopy(model)  # Torch-Pruning edits the model in place; the copy is not timed
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio, ignored_layers=[classifier]
    )
    pruner.step()
    return time.perf_counter() - start


PHASES = ("trace+shapes", "analyze", "score+select", "plan", "rewrite", "of which slicing", "of which code")


@contextlib.contextmanager
def timing_slicing(times: dict[str, float]):
    """Add the time the rewrite spends shrinking modules (gathering the kept rows and columns of every
    planned weight, bias and norm statistic: the copy any pruner makes) to ``times["of which slicing"]``."""
    shrink = rewrite_pass._shrink_module
    times["of which slicing"] = 0.0

    def timed(*args):
        start = time.perf_counter()
        try:
            return shrink(*args)
        finally:
            times["of which slicing"] += time.perf_counter() - start

    rewrite_pass._shrink_module = timed
    try:
        yield
    finally:
        rewrite_pass._shrink_module = shrink


def time_phases(model, x, ratio) -> dict[str, float]:
    """The steps of ``fxprune.prune(model, x, criterion="l1", ratio=ratio)``, timed one by one."""
    times, clock = {}, time.perf_counter

    def step(name, fn):
        start = clock()
        out = fn()
        times[name] = clock() - start
        return out

    gm, inputs = step("trace+shapes", lambda: trace(model, x))
    analysis = step("analyze", lambda: analyze(gm, inputs))
    ctx = criteria.ScoringContext(analysis, options={"criterion": "l1"})
    kept = step("score+select", lambda: select(analysis, criteria.get("l1"), ctx, resolve_ratios(analysis, ratio)))
    plan = step("plan", lambda: make_plan(analysis, kept, {}))
    with timing_slicing(times):
        small = step("rewrite", lambda: rewrite(analysis, kept, plan, consume=True))  # as prune() does
    step("of which code", small.recompile)  # torch.fx generating and compiling the forward, as the rewrite did
    return times


def best_phases(model, x, ratio, repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(time_phases(model, x, ratio))
    return {k: min(r[k] for r in runs) for k in PHASES}


def best_fx_floor(model, repeats: int) -> float:
    """Best time of ``torch.fx.symbolic_trace(model)`` alone: tracing plus generating and compiling the
    GraphModule's code, what any pruner that returns a torch.fx GraphModule pays before it prunes."""
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        torch.fx.symbolic_trace(model)
        times.append(time.perf_counter() - start)
    return min(times)


def best_tracer(model, repeats: int) -> float:
    """Best time of ``torch.fx.Tracer().trace(model)``: torch.fx's graph alone, no shapes and no code."""
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        torch.fx.Tracer().trace(model)
        times.append(time.perf_counter() - start)
    return min(times)


def best_times(repeats: int, model, x, ratio) -> tuple[float, float]:
    """Each tool's best time over 2 x ``repeats`` runs: ``repeats`` in a block per tool, then ``repeats``
    alternating with the other tool. The order moves both tools' times by up to 25% on this VM
    (what memory the previous run freed, the machine's drift over seconds), so each tool gets its
    best conditions. Each run starts from a collected heap: what earlier runs left (a pruned
    GraphModule is freed by the cycle collector) goes back to the allocator first, for both alike."""
    ours, theirs = [], []

    def run(times, fn):
        gc.collect()
        times.append(fn(model, x, ratio))

    for _ in range(repeats):
        run(ours, time_fxprune)
    for _ in range(repeats):
        run(theirs, time_torch_pruning)
    for _ in range(repeats):
        run(ours, time_fxprune)
        run(theirs, time_torch_pruning)
    return min(ours), min(theirs)


class Row(NamedTuple):
    name: str
    ours: float  # fxprune's best prune (s)
    theirs: float  # Torch-Pruning's best build + step (s)
    phases: dict[str, float]  # fxprune's passes, each timed alone (s)
    fx_alone: float  # torch.fx.symbolic_trace (s)
    tracer: float  # torch.fx.Tracer().trace, graph only (s)

    @property
    def speed_up(self) -> float:
        return self.theirs / self.ours

    @property
    def budget(self) -> float:
        """The time a 5x speed-up allows."""
        return self.theirs / 5

    @property
    def rest(self) -> float:
        """fxprune's time without tracing and code generation: the part a faster front end could not remove."""
        return self.ours - self.phases["trace+shapes"] - self.phases["of which code"]

    @property
    def floor(self) -> float:
        """What a prune that returns a compact GraphModule costs before any analysis: torch.fx's graph, the
        kept weights gathered as fxprune gathers them, the compact forward's code."""
        return self.tracer + self.phases["of which slicing"] + self.phases["of which code"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=MODELS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    rows = []
    for name in args.models:
        model = torchvision.models.get_model(name, weights=None).eval()
        time_fxprune(model, x, args.ratio)  # warm-up: imports and first-call caches
        ours, theirs = best_times(args.repeats, model, x, args.ratio)
        row = Row(name, ours, theirs, best_phases(model, x, args.ratio, args.repeats),
                  best_fx_floor(model, args.repeats), best_tracer(model, args.repeats))
        rows.append(row)
        print(f"{name:16s} fxprune {ours:7.3f}s  torch-pruning {theirs:7.3f}s  speed-up {row.speed_up:5.1f}x  "
              f"(torch.fx alone {row.fx_alone * 1e3:.1f}ms: at most {theirs / row.fx_alone:.1f}x; "
              f"floor {row.floor / row.budget:.2f} of the 5x budget)  "
              + " ".join(f"{k} {v * 1e3:.1f}ms" for k, v in row.phases.items()), flush=True)
    ratios = [r.speed_up for r in rows]
    summary = f"min speed-up {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x (goal: >= 5x on every model)"
    print(summary)
    _write_table(rows, summary, args)


def _write_table(rows: list[Row], summary: str, args) -> None:
    ms = lambda t: f"{t * 1e3:.1f}"  # noqa: E731
    lines = [
        "# Prune time: fxprune vs Torch-Pruning",
        "",
        f"l1 ratio {args.ratio}, input 1x3x224x224, one thread, best of 2x{args.repeats} runs per tool "
        f"(a block each, then alternating); torch {torch.__version__}. "
        "Command: `.venv/bin/python bench/prune_speed.py`",
        "",
        "| model | fxprune (s) | Torch-Pruning build+step (s) | speed-up | torch.fx alone (s) | Torch-Pruning / torch.fx alone |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.name} | {r.ours:.3f} | {r.theirs:.3f} | {r.speed_up:.1f}x | {r.fx_alone:.4f} | "
              f"{r.theirs / r.fx_alone:.1f}x |" for r in rows]
    lines += ["", "torch.fx alone: `torch.fx.symbolic_trace(model)` (trace, generate and compile the code), best of "
              f"{args.repeats}: the standard cost of getting a GraphModule, before any weight is read. The last column "
              "is the speed-up a pruner would show if its whole prune cost just that (fxprune's own tracer and "
              "builder are leaner than symbolic_trace, but its analysis, scoring and slicing come on top)."]
    lines += ["", summary, "", "Where fxprune's time goes (ms, each pass timed alone, best of "
              f"{args.repeats}):", "",
              "| model | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 1) + "|"]
    lines += [f"| {r.name} | " + " | ".join(ms(r.phases[k]) for k in PHASES) + " |" for r in rows]
    lines += ["", "of which slicing: the rewrite shrinking the planned modules (gathering the kept rows and columns of "
              "their weights, biases and norm statistics). of which code: `small.recompile()` on the compact "
              "GraphModule, i.e. torch.fx generating and compiling its forward, which the rewrite does once."]
    lines += ["", "What 5x asks (ms): the budget is Torch-Pruning's time / 5. *rest* is fxprune's time less its "
              "trace+shapes and code phases, i.e. what a prune would cost if tracing and code generation were free. "
              "*floor* is what a prune returning a compact GraphModule costs before any dependency analysis, scoring "
              "or planning: torch.fx's graph (`torch.fx.Tracer().trace(model)`, no shapes, no code; best of "
              f"{args.repeats}) + the slicing + the compact model's code.",
              "", "| model | 5x budget | fxprune | rest | rest / budget | Tracer.trace | floor | floor / budget |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.name} | {ms(r.budget)} | {ms(r.ours)} | {ms(r.rest)} | {r.rest / r.budget:.2f} | "
              f"{ms(r.tracer)} | {ms(r.floor)} | {r.floor / r.budget:.2f} |" for r in rows]
    lines += [""]
    write_text_atomic(os.path.join(os.path.dirname(__file__), "results", "prune_speed.md"), "\n".join(lines))


if __name__ == "__main__":
    main()
