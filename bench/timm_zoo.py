"""timm models through fxprune: which trace, how many channel groups are prunable, why the rest are not.

A survey of timm families beyond the ones tests/test_timm_models.py checks on every run. Each model:
random weights (``pretrained=False``: nothing is downloaded; initialized and BN-calibrated as in
tests/zoo_models.py), its default input size, ``fxprune.analyze`` (groups prunable / all, the most
common reasons for frozen groups), then ``l1`` at ratio 0.3 (``strict=True`` where a model has mixing
groups, so verify must hold exactly) and verify against the masked original; for those, the default
prune (mixing groups pruned too) must also build and run. "(f64)" marks an error
measured in float64 because float32 rounding of that deep random net alone exceeds 1e-5 (as in
bench/zoo.py). A model that does not trace shows the error's first line.

One thread, models in turn, TIMEOUT seconds each. Writes bench/results/timm_zoo.md (and .json).

    .venv/bin/python bench/timm_zoo.py [--models tf_efficientnet_b0 mobilevit_xxs ...]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import sys
import time
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import fxprune  # noqa: E402
from zoo import verify  # noqa: E402
from zoo_models import init_random  # noqa: E402

TIMEOUT = 300  # seconds per model

#: One or two models per family: TensorFlow ports (SAME padding), NAS/mobile nets, classic CNNs,
#: hybrids and transformers, MLPs.
MODELS = [
    "tf_efficientnet_lite0", "tf_mobilenetv3_small_100", "tf_efficientnetv2_b0", "efficientnetv2_rw_t",
    "mobilevit_xs", "mobilevitv2_050", "levit_128s", "efficientformer_l1", "efficientformerv2_s0",
    "mobileone_s0", "repvit_m0_9", "tinynet_a", "lcnet_050", "hardcorenas_a", "fbnetc_100", "mnasnet_100",
    "semnasnet_100", "resnest14d", "selecsls42b", "vovnet39a", "ese_vovnet19b_dw", "dpn68", "xception41",
    "inception_v4", "nasnetalarge", "pnasnet5large", "gernet_s", "regnetz_b16", "nfnet_l0", "nf_resnet26",
    "cs3darknet_s", "darknet53", "tresnet_m", "hgnetv2_b0", "ghostnetv2_100", "mobilenetv4_conv_small",
    "edgenext_xx_small", "coat_lite_tiny", "twins_pcpvt_small", "crossvit_tiny_240", "cait_xxs24_224",
    "pit_ti_224", "volo_d1_224", "maxvit_nano_rw_256", "coatnet_nano_rw_224", "nest_tiny",
    "xcit_nano_12_p16_224", "sequencer2d_s", "mixer_s16_224", "resmlp_12_224", "gcvit_xxtiny", "davit_tiny",
    "inception_next_tiny", "efficientvit_m0", "efficientvit_b0", "focalnet_tiny_srf", "rdnet_tiny",
    "poolformer_s12", "convmixer_768_32",
]


class _Timeout(Exception):
    pass


def _on_alarm(*_):
    raise _Timeout()


def survey(name: str) -> dict:
    import timm

    row: dict = {"model": name}
    model = timm.create_model(name, pretrained=False, num_classes=10)
    x = torch.randn(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)),
                    generator=torch.Generator().manual_seed(1))
    row["input"] = x.shape[-1]
    init_random(model, torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(2)))
    start = time.perf_counter()
    analysis = fxprune.analyze(model, x)
    row["analyze_s"] = time.perf_counter() - start
    frozen = [g for g in analysis.groups if g.frozen]
    row["prunable"], row["groups"] = len(analysis.groups) - len(frozen), len(analysis.groups)
    reasons = collections.Counter(g.reasons[0].reason for g in frozen if g.reasons)
    row["frozen_because"] = reasons.most_common(3)
    strict = bool(analysis.mixing_groups())
    small = fxprune.prune(model, x, criterion="l1", ratio=0.3, strict=strict)
    row["strict"] = strict
    row["params"] = sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters())
    row["verify"], row["precision"] = verify(model, small, x)
    if strict:
        row["default_params"] = _default_prune(model, x)
    return row


def _default_prune(model, x) -> float | str:
    """The default prune of a model with mixing groups (attention q·k, LayerNorm over channels), which
    prunes those groups too: the fraction of params it keeps, or why it failed. It only approximates the
    masked original, so what is checked is that it builds and runs to a finite output of the same shape."""
    try:
        small = fxprune.prune(model, x, criterion="l1", ratio=0.3)
        with torch.no_grad():
            out, ref = small(x), model(x)
    except Exception as e:  # a failure is a result of the survey
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return "wrong output shape or non-finite output"
    return sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters())


def run(names: list[str]) -> list[dict]:
    rows = []
    signal.signal(signal.SIGALRM, _on_alarm)
    for name in names:
        signal.alarm(TIMEOUT)
        try:
            row = survey(name)
        except _Timeout:
            row = {"model": name, "error": f"over {TIMEOUT} s"}
        except Exception as e:  # a model that does not trace is a result, not a crash
            message = re.sub(r"\S*site-packages/", "", str(e).splitlines()[0])  # timm/models/nest.py, not a local path
            row = {"model": name, "error": f"{type(e).__name__}: {message}"}
        finally:
            signal.alarm(0)
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    return rows


def _cell(row: dict) -> list[str]:
    if "error" in row:
        return [row["model"], "-", "-", "-", "-", "-", row["error"].replace("|", "/")[:300]]
    err = f"{row['verify']:.1e}" + (" (f64)" if row["precision"] == "f64" else "") + (" strict" if row["strict"] else "")
    why = "; ".join(f"{n}x {r}" for r, n in row["frozen_because"])
    default = row.get("default_params", "-")
    default = f"{default:.2f}" if isinstance(default, float) else default.replace("|", "/")
    return [row["model"], f"{row['prunable']}/{row['groups']}", f"{row['params']:.2f}", err, default,
            f"{row['analyze_s']:.2f}", why.replace("|", "/")]


def write(rows: list[dict], out_dir: str) -> str:
    import timm

    traced = [r for r in rows if "error" not in r]
    lines = [
        "# timm models through fxprune",
        "",
        f"timm {timm.__version__}, torch {torch.__version__}; random weights, default input size, l1 ratio 0.3 "
        "(strict where mixing groups exist). Command: `.venv/bin/python bench/timm_zoo.py`",
        "",
        f"{len(traced)}/{len(rows)} traced, pruned and verified." if all(
            isinstance(r.get("verify"), float) for r in traced) else f"{len(traced)}/{len(rows)} traced.",
        "",
        "*default prune*: for a model with mixing groups, the prune without `strict`, which prunes those "
        "groups too and only approximates the masked original: it must build and run (params kept, or why it "
        f"failed); {sum(isinstance(r.get('default_params'), float) for r in traced)} of "
        f"{sum('default_params' in r for r in traced)} do.",
        "",
        "| model | prunable groups | params after | verify | default prune: params after | analyze (s) "
        "| frozen groups: most common reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(_cell(r)) + " |" for r in rows]
    path = os.path.join(out_dir, "timm_zoo.md")
    for target, text in ((path, "\n".join(lines) + "\n"),
                         (os.path.join(out_dir, "timm_zoo.json"), json.dumps(rows, indent=1, default=str))):
        tmp = target + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(write(run(args.models), args.out))


if __name__ == "__main__":
    main()
