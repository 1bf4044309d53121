"""CPU latency before/after pruning: does the speed-up follow the MAC reduction?

For torchvision CNN classifiers (``weights=None``, 1x3x224x224 / 32x3x224x224 inputs), prune with
l1 at --ratio (0.5), once plain and once with ``round_to=8``, and time the original and both pruned
models *the same way*: ``torch.jit.trace`` + ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``
(BN folded into the convs, oneDNN/mkldnn layouts), run under ``torch.jit.optimized_execution(False)``
(the graph is already optimized; this skips the profiling executor's slow first runs, the steady-state
time is the same), ``torch.no_grad()``, ``torch.set_num_threads(--threads)`` (default 1),
``torch.set_flush_denormal(True)``.

Timing: warm-up runs, then rounds that run the three variants back to back in a rotating order; each
sample averages k calls (k so that a batch-1 sample of the original takes >= 50 ms). The clock is the
calling thread's CPU time (``time.thread_time``): with one intra-op thread every kernel runs on that
thread, and unlike wall time it does not count the time other jobs on this shared 2-core machine
hold the core (wall-clock samples spread 2x here, CPU-time samples 3-7%; wall-clock speed-ups are
reported as well). Speed-up is the median over rounds of the paired ratio t(original) / t(pruned)
from the same round, so slow drifts cancel. MAC reduction = conv+linear MACs before / after (fvcore,
per image).
The goal: speed-up >= 0.85 x MAC reduction; a family reaches it when its median model does.

With --threads > 1 the clock is wall time (a thread's CPU time would miss the other threads' work).

Diagnosis (--no-diag to skip), for the --diag models: a round_to=16 variant in the same rounds
(oneDNN's AVX-512 fp32 block is 16 channels); every conv timed alone the way the deployed graph runs
it (``torch.mkldnn_convolution`` on a blocked mkldnn input), summed per kind (dense 1x1, dense kxk,
depthwise, grouped), with "rest" = model time - convs (activations, adds, SE, pooling, concat,
layout reorders, interpreter: work linear in the channel count, plus fixed per-op cost). For every
model: MAC shares of depthwise/grouped convs and of convs whose channel counts are not multiples of 16.

    .venv/bin/python bench/latency.py                  # the default list, < 20 min on one core
    .venv/bin/python bench/latency.py --quick          # 5 small models, fewer rounds (~2 min)
    .venv/bin/python bench/latency.py --models resnet18 mobilenet_v2 --rounds32 5
    .venv/bin/python bench/latency.py --raw /tmp/latency.json      # also keep the measurements
    .venv/bin/python bench/latency.py --render /tmp/latency.json   # redraw md/png from them

Writes bench/results/latency.md and bench/results/latency.png (atomically; --out to change).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fxprune  # noqa: E402
from fxprune.report import count  # noqa: E402

#: family -> models (torchvision CNN classifiers up to ~4.3 GMACs at 224x224)
FAMILIES: dict[str, list[str]] = {
    "resnet": ["resnet18", "resnet34", "resnet50"],
    "resnext": ["resnext50_32x4d"],
    "mobilenet_v2": ["mobilenet_v2"],
    "mobilenet_v3": ["mobilenet_v3_small", "mobilenet_v3_large"],
    "efficientnet": ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"],
    "regnet_x": ["regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf"],
    "regnet_y": ["regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf"],
    "densenet": ["densenet121"],
    "shufflenet_v2": ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x2_0"],
    "mnasnet": ["mnasnet0_5", "mnasnet1_0", "mnasnet1_3"],
    "googlenet": ["googlenet"],
    "squeezenet": ["squeezenet1_0", "squeezenet1_1"],
}
#: in the families above but left out of the default run for the 20-minute budget (all prune; see md)
EXTRA = ["regnet_x_3_2gf", "regnet_y_3_2gf", "densenet169", "densenet201", "shufflenet_v2_x1_5",
         "mnasnet0_75", "vgg11_bn"]
QUICK = ["resnet18", "mobilenet_v3_small", "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_1"]
#: not measured: transformer classifiers (attention/LayerNorm; a separate benchmark)
TRANSFORMERS = ["vit_*", "swin_*", "swin_v2_*", "maxvit_t"]
#: diagnosed more closely (round_to=16 too, profiled at batch 32): one model per family in question
DIAG = ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_x_800mf", "regnet_y_800mf", "shufflenet_v2_x1_0",
        "mnasnet1_0", "densenet121"]
GOAL = 0.85
VARIANTS = ("orig", "r0", "r8")  # original, pruned, pruned with round_to=8
LABEL = {"r0": "round_to=None", "r8": "round_to=8", "r16": "round_to=16"}


def family_of(name: str) -> str:
    for fam, names in FAMILIES.items():
        if name in names:
            return fam
    for prefix in ("resnet", "resnext", "regnet_x", "regnet_y", "densenet", "shufflenet_v2", "mnasnet",
                   "efficientnet", "mobilenet_v3", "vgg", "squeezenet", "wide_resnet"):
        if name.startswith(prefix):
            return {"wide_resnet": "resnet"}.get(prefix, prefix)
    return name


@dataclass
class Result:
    name: str
    family: str
    macs: dict = field(default_factory=dict)     # variant -> conv+linear MACs per image
    params: dict = field(default_factory=dict)
    ms: dict = field(default_factory=dict)       # (batch, variant) -> median ms per call
    speedup: dict = field(default_factory=dict)  # (batch, variant) -> median paired speed-up (CPU time)
    ms_wall: dict = field(default_factory=dict)
    speedup_wall: dict = field(default_factory=dict)
    rounds: dict = field(default_factory=dict)   # batch -> (rounds, calls per sample)
    diag: dict = field(default_factory=dict)
    prune_s: float = 0.0
    total_s: float = 0.0

    def to_json(self) -> dict:
        def enc(d):
            return [[list(k) if isinstance(k, tuple) else k, list(v) if isinstance(v, tuple) else v]
                    for k, v in d.items()]
        out = {k: getattr(self, k) for k in ("name", "family", "prune_s", "total_s", "macs", "params")}
        for k in ("ms", "speedup", "ms_wall", "speedup_wall", "rounds"):
            out[k] = enc(getattr(self, k))
        out["diag"] = [[list(k) if isinstance(k, tuple) else k, v] for k, v in self.diag.items()]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Result":
        def dec(items):
            return {tuple(k) if isinstance(k, list) else k: tuple(v) if isinstance(v, list) else v for k, v in items}
        r = cls(d["name"], d["family"], macs=d["macs"], params=d["params"], prune_s=d["prune_s"], total_s=d["total_s"])
        for k in ("ms", "speedup", "ms_wall", "speedup_wall", "rounds"):
            setattr(r, k, dec(d[k]))
        r.diag = {tuple(k) if isinstance(k, list) else k:
                  ({c: tuple(x) for c, x in v.items()} if isinstance(v, dict) and k[0] != "static" else v)
                  for k, v in d["diag"]}
        return r

    def mac_red(self, v: str) -> float:
        return self.macs["orig"] / self.macs[v]

    def ratio(self, batch: int, v: str) -> float:
        return self.speedup[(batch, v)] / self.mac_red(v)


# ------------------------------------------------------------------------------------------- build


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def compile_ts(model: nn.Module, x: torch.Tensor):
    """The deployment path, identical for every variant: trace, freeze, optimize_for_inference."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


# ------------------------------------------------------------------------------------------ timing


#: the primary clock: this thread's CPU time with one intra-op thread, wall time with several (main sets it)
CLOCK = time.thread_time


def _run(fn, x, k: int) -> tuple[float, float]:
    """(primary-clock s, wall s) per call, averaged over k calls."""
    wall, cpu = time.perf_counter(), CLOCK()
    for _ in range(k):
        fn(x)
    return (CLOCK() - cpu) / k, (time.perf_counter() - wall) / k


def measure(fns: dict, x: torch.Tensor, rounds: int, warmup: int, min_sample_s: float):
    """Interleaved rounds. Returns ({variant: median CPU s/call}, {variant: median wall s/call},
    {variant: median paired CPU-time speed-up}, {variant: median paired wall speed-up}, k)."""
    with torch.no_grad(), torch.jit.optimized_execution(False):
        first = {}
        for _ in range(warmup):
            for v, fn in fns.items():
                first[v] = _run(fn, x, 1)[0]
        k = max(1, math.ceil(min_sample_s / max(first["orig"], 1e-6)))
        cpu = {v: [] for v in fns}
        wall = {v: [] for v in fns}
        order = list(fns)
        for r in range(rounds):
            for v in order[r % len(order):] + order[: r % len(order)]:
                c, w = _run(fns[v], x, k)
                cpu[v].append(c)
                wall[v].append(w)

    def paired(samples):
        return {v: statistics.median(o / p for o, p in zip(samples["orig"], samples[v])) for v in fns if v != "orig"}

    med = {v: statistics.median(s) for v, s in cpu.items()}
    med_wall = {v: statistics.median(s) for v, s in wall.items()}
    return med, med_wall, paired(cpu), paired(wall), k


CATEGORIES = ("dense 1x1", "dense kxk", "depthwise", "grouped")


def _conv_kind(m: nn.Conv2d) -> str:
    if m.groups > 1:
        return "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"
    return "dense 1x1" if m.kernel_size == (1, 1) else "dense kxk"


def _blocked_input(shape) -> torch.Tensor:
    """An mkldnn tensor in the layout a conv's output has in the deployed graph (oneDNN's blocked
    format), made by a 1x1 conv: a plain to_mkldnn() tensor would make every timed conv reorder it."""
    c = shape[1]
    w = torch._C._nn.mkldnn_reorder_conv2d_weight(torch.randn(c, c, 1, 1).to_mkldnn(), [0, 0], [1, 1], [1, 1], 1)
    return torch.mkldnn_convolution(torch.randn(shape).to_mkldnn(), w, torch.zeros(c), [0, 0], [1, 1], [1, 1], 1)


def conv_breakdown(model: nn.Module, x: torch.Tensor, min_sample_s: float = 0.002) -> dict:
    """CPU time and MACs per conv category: every conv of ``model`` timed alone, as the deployed graph
    runs it (``torch.mkldnn_convolution`` on an mkldnn input with a reordered weight and a bias, as
    after BN folding), on its input shape from a forward pass. Same clock as the model timings, so
    model time - sum(conv time) is the rest: activations, adds, pooling, concat, reorders, the linear
    layer and the interpreter. Identical layer shapes are timed once."""
    seen: list[tuple[nn.Conv2d, torch.Size]] = []
    handles = [m.register_forward_hook(lambda m, a, o: seen.append((m, a[0].shape)))
               for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    cache: dict = {}
    out = {c: [0.0, 0] for c in CATEGORIES}
    with torch.no_grad():
        for m, shape in seen:
            key = (tuple(shape), m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
            if key not in cache:
                xm = _blocked_input(shape)
                w = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    torch.randn(m.weight.shape).to_mkldnn(), list(m.padding), list(m.stride), list(m.dilation), m.groups)
                b = torch.randn(m.out_channels)
                args = (list(m.padding), list(m.stride), list(m.dilation), m.groups)
                y = torch.mkldnn_convolution(xm, w, b, *args)  # warm-up
                c0 = CLOCK()
                torch.mkldnn_convolution(xm, w, b, *args)
                k = max(1, math.ceil(min_sample_s / max(CLOCK() - c0, 1e-6)))
                samples = []
                for _ in range(3):
                    c0 = CLOCK()
                    for _ in range(k):
                        torch.mkldnn_convolution(xm, w, b, *args)
                    samples.append((CLOCK() - c0) / k)
                macs = y.to_dense()[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
                cache[key] = (statistics.median(samples), macs)
            sec, macs = cache[key]
            out[_conv_kind(m)][0] += sec
            out[_conv_kind(m)][1] += macs
    return {c: tuple(v) for c, v in out.items()}


# ------------------------------------------------------------------------------------------ static


def conv_stats(model: nn.Module, x: torch.Tensor) -> dict:
    """MAC shares of depthwise / grouped convs, and the share of conv MACs on channel counts that
    are not multiples of 16 (oneDNN's AVX-512 fp32 block) and of 8."""
    macs = {"depthwise": 0, "grouped": 0, "dense": 0, "linear": 0}
    odd16 = odd8 = 0

    def hook(m, args, out):
        nonlocal odd16, odd8
        if isinstance(m, nn.Conv2d):
            mac = out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            kind = ("depthwise" if m.groups == m.in_channels == m.out_channels else "grouped") if m.groups > 1 else "dense"
            macs[kind] += mac
            chans = (m.in_channels, m.out_channels) if m.in_channels > 3 else (m.out_channels,)
            odd16 += mac * any(c % 16 for c in chans)
            odd8 += mac * any(c % 8 for c in chans)
        else:
            macs["linear"] += m.in_features * m.out_features
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    total = sum(macs.values())
    return {"dw": macs["depthwise"] / total, "grouped": macs["grouped"] / total,
            "odd16": odd16 / total, "odd8": odd8 / total}


# -------------------------------------------------------------------------------------------- main


def bench_model(name: str, args) -> Result:
    t0 = time.perf_counter()
    res = Result(name, family_of(name))
    model = build(name)
    x1 = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "orig": model,
            "r0": fxprune.prune(model, x1, criterion="l1", ratio=args.ratio),
            "r8": fxprune.prune(model, x1, criterion="l1", ratio=args.ratio, round_to=8),
        }
    res.prune_s = time.perf_counter() - start
    if name in args.diag and not args.no_diag:
        # round to oneDNN's AVX-512 fp32 block (16 channels) as well: a controlled test of channel padding
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models["r16"] = fxprune.prune(model, x1, criterion="l1", ratio=args.ratio, round_to=16)
        res.prune_s = time.perf_counter() - start
    for v, m in models.items():
        c = count(m, x1)
        res.macs[v], res.params[v] = c.macs_conv_linear, c.params
        if not args.no_diag:
            res.diag[("static", v)] = conv_stats(m, x1)
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224)
        fns = {v: compile_ts(m, x) for v, m in models.items()}
        rounds, warmup = (args.rounds1, 2) if batch == 1 else (args.rounds32, 1)
        med, med_wall, speed, speed_wall, k = measure(fns, x, rounds, warmup, args.min_sample if batch == 1 else 0.0)
        for v in models:
            res.ms[(batch, v)] = med[v] * 1e3
            res.ms_wall[(batch, v)] = med_wall[v] * 1e3
        for v, s in speed.items():
            res.speedup[(batch, v)] = s
            res.speedup_wall[(batch, v)] = speed_wall[v]
        res.rounds[batch] = (rounds, k)
        if not args.no_diag and name in args.diag:
            for v in ("orig", "r0"):
                res.diag[(batch, v)] = conv_breakdown(models[v], x)
        del fns
    res.total_s = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="torchvision model names (default: every model in FAMILIES)")
    ap.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)}; 5 batch-1 rounds, 2 batch-32 rounds")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--rounds1", type=int, default=9, help="timed rounds at batch 1")
    ap.add_argument("--rounds32", type=int, default=3, help="timed rounds at batch 32")
    ap.add_argument("--min-sample", type=float, default=0.05, help="seconds per batch-1 sample (k calls)")
    ap.add_argument("--no-diag", action="store_true", help="skip round_to=16, the conv breakdown and conv statistics")
    ap.add_argument("--diag", nargs="*", default=DIAG,
                    help="models also pruned with round_to=16 and broken down per conv kind")
    ap.add_argument("--raw", help="also save the measurements as JSON here (outside the repo, e.g. /tmp/latency.json)")
    ap.add_argument("--render", help="write the md/png from a --raw JSON instead of measuring")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    if args.quick:
        args.models = args.models or QUICK
        args.rounds1, args.rounds32 = min(args.rounds1, 5), min(args.rounds32, 2)
    names = args.models or [n for ns in FAMILIES.values() for n in ns]
    if args.render:
        with open(args.render) as f:
            raw = json.load(f)
        results = [Result.from_json(r) for r in raw["results"]]
        for k in ("ratio", "threads", "batches", "rounds1", "rounds32", "min_sample", "quick", "models"):
            setattr(args, k, raw["args"][k])
        write_outputs(results, args, raw["elapsed"], raw["load"])
        return
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    global CLOCK
    CLOCK = time.thread_time if args.threads == 1 else time.perf_counter
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    results = []
    for name in names:
        try:
            r = bench_model(name, args)
        except Exception as e:  # a model that fails to build/prune/compile is listed, not fatal
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            results.append(Result(name, family_of(name), diag={"error": f"{type(e).__name__}: {e}"}))
            continue
        results.append(r)
        line = "  ".join(f"b{b} {LABEL[v].split('=')[1]}: x{r.speedup[(b, v)]:.2f} ({r.ratio(b, v):.2f})"
                         for b in args.batches for v in ("r0", "r8"))
        print(f"{name:20s} MACs /{r.mac_red('r0'):.2f} (r8 /{r.mac_red('r8'):.2f})  {line}  [{r.total_s:.0f}s]", flush=True)
    elapsed = time.perf_counter() - t0
    if args.raw:
        raw = {"results": [r.to_json() for r in results], "elapsed": elapsed, "load": load,
               "args": {k: getattr(args, k) for k in ("ratio", "threads", "batches", "rounds1", "rounds32",
                                                       "min_sample", "quick", "models")}}
        _atomic_write(args.raw, lambda p: open(p, "w").write(json.dumps(raw)))
    write_outputs(results, args, elapsed, load)
    print(f"done in {elapsed / 60:.1f} min; wrote {args.out}/latency.md, latency.png")


def write_outputs(results, args, elapsed: float, load: float) -> None:
    os.makedirs(args.out, exist_ok=True)
    ok = [r for r in results if r.speedup]
    write_md(os.path.join(args.out, "latency.md"), results, args, elapsed, load)
    if ok:
        write_png(os.path.join(args.out, "latency.png"), ok, args)


# ------------------------------------------------------------------------------------------ output


def _atomic_write(path: str, write) -> None:
    d, base = os.path.split(path)
    root, ext = os.path.splitext(base)
    tmp = os.path.join(d, f".{root}.tmp-{secrets.token_hex(4)}{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


#: Written from the recorded run in bench/results/latency.md (the tables are regenerated on every run;
#: this text is not): why the families that fall short do, from its diagnosis tables.
FINDINGS = """\
## Why the others fall short (from the diagnosis tables of the recorded run)

At ratio 0.5 a dense conv loses ~4x MACs (input *and* output channels halve), but anything that is
linear in the channel count only loses 2x: activations, adds, SE multiplies, pooling, concat,
layout reorders, depthwise convs. And at batch 1 every op also pays a fixed per-op cost that pruning
does not touch (the op count is unchanged). So the speed-up follows the MAC reduction only where
dense convs take nearly all of the time:

* **resnet reaches the goal** (0.87-0.96 at batch 1, 0.92-0.96 at 32): dense convs are 75-90% of
  resnet18's time and run at about their MAC reduction (3.3-3.8x for 3.75x). resnext50_32x4d reaches
  it at batch 32 only (0.82 / 0.93).
* **Memory-bound non-conv work ("rest")** is the main cause elsewhere at batch 1. In the deployed graph
  every op that `optimize_for_inference` cannot keep in oneDNN layout gets a `to_dense`/`to_mkldnn`
  pair: efficientnet_b0 has 74 pairs (SiLU, squeeze-excitation), densenet121 62 pairs plus 62 batch
  norms that freezing cannot fold (pre-activation BN -> ReLU -> conv) and 62 concats, googlenet 36
  `to_dense` around its concats and max-pool branches, shufflenet 16 channel shuffles plus chunk/cat.
  At batch 1 that rest is 61% of efficientnet_b0's time (speed-up 1.5x), 41% of shufflenet_v2_x1_0's
  (1.3x), 31% of densenet121's and 29% of regnet_y_800mf's (1.7x, 1.9x: SE), 30% of mnasnet1_0's. With a
  share s of the time scaling at 1.4x and the other 1 - s at the MAC reduction R, the speed-up is at
  most 1 / ((1 - s) / R + s / 1.4): for s = 0.6, R = 3.6 that is 1.9x, a ratio of 0.51. No choice of
  channels reaches 0.85 there; fusing those ops in the runtime would. At batch 32 the same rest scales
  much better, and efficientnet, regnet_y, densenet and squeezenet reach the goal there.
* **Depthwise convs** (mobilenet, efficientnet, mnasnet) lose only 2x MACs and are memory-bound:
  1.35-1.5x at batch 1 for their 2x.
* **Batch 1 vs 32**: every family's ratio is higher at batch 32. At batch 1 the dense 1x1 convs of the
  mobile nets speed up 2.0-2.3x for 4x MACs (small GEMMs, per-op cost); at batch 32 3.3-4.4x.
* **Odd channel counts** matter, but less: after pruning 24-75% of the mobile nets' MACs (83-99% of the
  ShuffleNets') are in convs whose channel count is not a multiple of 16 (oneDNN's AVX-512 fp32
  block). round_to=8 moves the mobile families' ratios by +0.03-0.10 at batch 1, largely because it keeps
  more MACs. round_to=16 raises the batch-1 speed-up itself a little (efficientnet_b0 1.63x -> 1.77x,
  mnasnet1_0 2.19x -> 2.36x) while keeping 14-22% more MACs, so the ratio rises more (0.46 -> 0.59,
  0.62 -> 0.81). At batch 32 mobilenet_v2 (0.87), efficientnet_b0 (1.27) and mnasnet1_0 (0.85) reach
  the goal with round_to=16, mostly by keeping more MACs (their speed-ups moved by -2% to +3%).
* **RegNet**: round_to counts channels, so a grouped conv's unit (a whole group of 8-24 channels)
  needs no extra rounding and round_to=8 prunes as much as none (regnet_x_800mf /3.32 both; an earlier
  run, before that fix, lost its MAC reduction from 3.3x to 2.1x there). At batch 1 its grouped convs
  give 1.75x for 2x MACs, and regnet_y adds SE blocks; at batch 32 both reach the goal.
* **ShuffleNetV2**: its channel shuffles are pruned as gathers and its chunks as splits into the halves'
  kept counts, so every stream channel prunes on its own (MACs /3.0-3.5; /2.7-2.8 while the chunks paired
  channels, /2.0 while the shuffle tied each stream into one class). It still falls short: its 1x1 convs
  lose 3.6x of their MACs (4x in the other nets), and the gathers, splits and concats (41% of the time)
  speed up 1.3x at batch 1, 2.0x at batch 32.
* **googlenet** (0.61 / 0.76): concat and max-pool branches in dense layout, as above. **squeezenet**
  (0.68 at batch 1, 0.91 at 32): tiny fire-module convs (16-64 squeeze channels, 8-32 after pruning)
  at batch 1.

Caveat: *rest* is model time minus the convs timed alone; where an isolated conv runs at another speed
than in the graph the rest absorbs the error (mobilenet_v2's pruned depthwise convs at batch 32 run 6.1x
faster alone for 2x MACs; densenet121's rest "speeds up" 4.7x at batch 32).
"""


def family_table(results, batches) -> tuple[list[str], dict]:
    fams: dict[str, list[Result]] = {}
    for r in results:
        if r.speedup:
            fams.setdefault(r.family, []).append(r)
    verdict = {}
    head = "| family | models | " + " | ".join(f"b{b} {LABEL[v]}" for b in batches for v in ("r0", "r8")) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(batches))]
    for fam, rs in fams.items():
        cells = []
        for b in batches:
            for v in ("r0", "r8"):
                med = statistics.median(r.ratio(b, v) for r in rs)
                verdict[(fam, b, v)] = med
                cells.append(f"{med:.2f} {'yes' if med >= GOAL else 'no'}")
        lines.append(f"| {fam} | {len(rs)} | " + " | ".join(cells) + " |")
    return lines, verdict


def headline(verdict: dict, batches) -> str:
    """Which families reach the goal, per batch and round_to (from this run's numbers)."""
    parts = []
    for x in batches:
        for v in ("r0", "r8"):
            fams = [f for (f, bb, vv), m in verdict.items() if bb == x and vv == v and m >= GOAL]
            parts.append(f"batch {x}, {LABEL[v]}: {', '.join(fams) if fams else 'none'}")
    return "**Families reaching the goal** - " + "; ".join(parts) + "."


def write_md(path: str, results, args, elapsed: float, load: float) -> None:
    b = args.batches
    ok = [r for r in results if r.speedup]
    lines = [
        "# CPU latency before/after pruning: speed-up vs MAC reduction",
        "",
        f"l1 ratio {args.ratio}; torchvision models, `weights=None`, input Nx3x224x224 (N = {', '.join(map(str, b))}); "
        f"{args.threads} thread(s) (`torch.set_num_threads({args.threads})`), flush-denormal on. "
        "Both models run the same way: `torch.jit.trace` + `torch.jit.freeze` + `torch.jit.optimize_for_inference` "
        "(BN folded, oneDNN layouts), under `torch.no_grad()` and `torch.jit.optimized_execution(False)`.",
        f"Timing: warm-up (2 runs at batch 1, 1 at batch 32), then {args.rounds1} (batch 1) / {args.rounds32} (batch 32) "
        "rounds running original, pruned and pruned+round_to=8 back to back in rotating order; a batch-1 sample "
        f"averages k calls (k so that the original takes >= {args.min_sample * 1e3:.0f} ms). "
        + ("Clock: the calling thread's CPU time (`time.thread_time`; one intra-op thread, so every kernel runs on "
           "it), which leaves out the time other jobs hold the core: wall-clock samples on this shared machine "
           "spread ~2x, CPU-time samples a few %. " if args.threads == 1 else "Clock: wall time. ")
        + "Speed-up: median over rounds of the paired t(original)/t(pruned). "
        "MAC reduction: conv+linear MACs before/after (fvcore). "
        f"**ratio = speed-up / MAC reduction; goal >= {GOAL}.**",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(1-min load average {load:.1f} at start); torch {torch.__version__}, torchvision {torchvision.__version__}. "
        f"Run time {elapsed / 60:.1f} min. Command: `.venv/bin/python bench/latency.py"
        + (" --quick" if args.quick else "") + (f" --models {' '.join(args.models)}" if args.models and not args.quick else "")
        + "`",
        "",
        "## Per family (median ratio over the family's models; yes = goal reached)",
        "",
    ]
    fam_lines, verdict = family_table(ok, b)
    lines += fam_lines
    lines += ["", headline(verdict, b)]
    if not args.quick and not args.models:
        lines += ["", FINDINGS]
    lines += ["", "## Per model", "",
              "MAC red. = conv+linear MACs before/after (x). Per batch: ms = the original's CPU time per call; "
              "none / r8 = CPU-time speed-up (ratio to the MAC reduction) without / with round_to=8; wall = the "
              "wall-clock speed-up without round_to (noisy here).",
              ""]
    head = "| model | GMACs | MAC red. | MAC red. r8 | " + " | ".join(
        f"b{x} ms | b{x} none | b{x} r8 | b{x} wall" for x in b) + " |"
    lines += [head, "|" + "---|" * (4 + 4 * len(b))]
    for r in results:
        if not r.speedup:
            lines.append(f"| {r.name} | failed: {r.diag.get('error', '?')[:120]} |")
            continue
        cells = [f"{r.macs['orig'] / 1e9:.2f}", f"{r.mac_red('r0'):.2f}", f"{r.mac_red('r8'):.2f}"]
        for x in b:
            cells += [f"{r.ms[(x, 'orig')]:.1f}",
                      f"{r.speedup[(x, 'r0')]:.2f} ({r.ratio(x, 'r0'):.2f})",
                      f"{r.speedup[(x, 'r8')]:.2f} ({r.ratio(x, 'r8'):.2f})",
                      f"{r.speedup_wall[(x, 'r0')]:.2f}"]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += diagnosis_tables(ok, b)
    lines += ["", "## Not measured", "",
              f"* In the families above but left out of the default run for the 20-minute budget (all of them prune): "
              f"{', '.join(EXTRA)} (vgg11_bn: 7.6 GMACs). Run them with `--models`.",
              f"* Transformer classifiers ({', '.join(TRANSFORMERS)}): not CNNs; not part of this benchmark.",
              ""]
    text = "\n".join(lines)
    _atomic_write(path, lambda p: open(p, "w").write(text))


def diagnosis_tables(ok, batches) -> list[str]:
    rows = [r for r in ok if ("static", "orig") in r.diag]
    if not rows:
        return []
    lines = ["", "## Diagnosis data", "",
             "**Static** (shares of conv+linear MACs): depthwise convs and grouped convs in the original; convs "
             "with a channel count that is not a multiple of 16 (oneDNN's AVX-512 fp32 block; the stem's 3 input "
             "channels not counted) in the original / pruned / pruned with round_to=8.",
             "",
             "| model | family | dw MACs | grouped MACs | odd-16 MACs orig / none / r8 |", "|---|---|---|---|---|"]
    for r in rows:
        st = {v: r.diag[("static", v)] for v in VARIANTS}
        lines.append(f"| {r.name} | {r.family} | {st['orig']['dw']:.0%} | {st['orig']['grouped']:.0%} | "
                     f"{st['orig']['odd16']:.0%} / {st['r0']['odd16']:.0%} / {st['r8']['odd16']:.0%} |")
    broken = [r for r in rows if any(k[1] == "orig" and k[0] != "static" for k in r.diag)]
    if broken:
        lines += ["",
                  "**Where the time goes** (diagnosed models): every conv timed alone as the deployed graph runs it "
                  "(`torch.mkldnn_convolution` on an mkldnn input, reordered weight, bias; same CPU-time clock), summed "
                  "per kind; *rest* = model time - convs (activations, adds, SE multiplies, pooling, concat, channel "
                  "shuffle, reorders, the linear layer, the interpreter: work that scales with the channel count, "
                  "not with MACs, and per-op overhead that does not scale at all). Each cell: share of the original's "
                  "time, speed-up without round_to (its MAC reduction in brackets).",
                  "",
                  "| model | batch | model ms | " + " | ".join(CATEGORIES) + " | rest |",
                  "|---|---|---|" + "---|" * (len(CATEGORIES) + 1)]
        for r in broken:
            for x in batches:
                if (x, "orig") not in r.diag:
                    continue
                o, p_ = r.diag[(x, "orig")], r.diag[(x, "r0")]
                tot_o, tot_p = r.ms[(x, "orig")] / 1e3, r.ms[(x, "r0")] / 1e3
                cells = []
                for c in CATEGORIES:
                    (so, mo), (sp, mp) = o[c], p_[c]
                    cells.append("-" if mo == 0 else
                                 f"{so / tot_o:.0%}: {so / sp:.2f} ({mo / mp:.2f})")
                rest_o = tot_o - sum(o[c][0] for c in CATEGORIES)
                rest_p = tot_p - sum(p_[c][0] for c in CATEGORIES)
                cells.append(f"{rest_o / tot_o:.0%}: {rest_o / rest_p:.2f}" if rest_o > 0 and rest_p > 0 else
                             f"{rest_o / tot_o:.0%}")
                lines.append(f"| {r.name} | {x} | {tot_o * 1e3:.1f} | " + " | ".join(cells) + " |")
    r16 = [r for r in rows if "r16" in r.macs]
    if r16:
        lines += ["", "**round_to=16** (same rounds, same models): MAC reduction, speed-up (ratio) per batch, next to "
                  "none and 8.", "",
                  "| model | MAC red. none / 8 / 16 | odd-16 MACs r16 | "
                  + " | ".join(f"b{x} none / 8 / 16" for x in batches) + " |",
                  "|---|---|---|" + "---|" * len(batches)]
        for r in r16:
            cells = [f"{r.mac_red('r0'):.2f} / {r.mac_red('r8'):.2f} / {r.mac_red('r16'):.2f}",
                     f"{r.diag[('static', 'r16')]['odd16']:.0%}"]
            for x in batches:
                cells.append(" / ".join(f"{r.speedup[(x, v)]:.2f} ({r.ratio(x, v):.2f})" for v in ("r0", "r8", "r16")))
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return lines


def write_png(path: str, results, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.batches), figsize=(6 * len(args.batches), 5), squeeze=False)
    fams = sorted({r.family for r in results})
    cmap = plt.get_cmap("tab20")
    color = {f: cmap(i % 20) for i, f in enumerate(fams)}
    for ax, batch in zip(axes[0], args.batches):
        hi = max(max(r.mac_red(v) for r in results for v in ("r0", "r8")), 1.0) * 1.08
        ax.plot([1, hi], [1, hi], "k-", lw=0.8, label="speed-up = MAC reduction")
        ax.plot([1, hi], [1, GOAL * hi], "k--", lw=0.8, label=f"goal: {GOAL} x MAC reduction")
        for r in results:
            for v, marker in (("r0", "o"), ("r8", "^")):
                ax.scatter(r.mac_red(v), r.speedup[(batch, v)], color=color[r.family], marker=marker, s=28,
                           edgecolors="k" if v == "r8" else "none", linewidths=0.5)
        for f in fams:
            ax.scatter([], [], color=color[f], marker="s", label=f)
        ax.scatter([], [], color="grey", marker="o", label="round_to=None")
        ax.scatter([], [], color="grey", marker="^", edgecolors="k", label="round_to=8")
        ax.set_xlabel("conv+linear MAC reduction (x)")
        ax.set_ylabel("latency speed-up (x)")
        ax.set_title(f"batch {batch}, {args.threads} thread(s), l1 ratio {args.ratio}")
        ax.set_xlim(1, hi)
        ax.set_ylim(0.8, hi)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    _atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


if __name__ == "__main__":
    main()
