#!/usr/bin/env bash
# The CUDA checks of fxprune in one short run on a GPU machine (no network there).
#
#   OUT=/some/dir FXPRUNE_WHEELS=.whl FASHION_ROOT=/usr/share/datasets/fashion-mnist bench/gpu_evidence.sh
#
# Stages, each logged to $OUT and bounded by its own timeout so a slow one cannot starve the next:
#   1. the GPU tests (AMP bf16/fp16 + channels_last, resume, torchrun with one process over nccl,
#      pruning and verifying models that live on the GPU);
#   2. the seeds' table row on Fashion-MNIST: a ResNet-56 baseline, then `fxprune experiment` with
#      graph at threshold 0.7, l1 at the FLOPs reduction graph 0.7 reached (same fine-tune recipe,
#      rgd-cifar), then graph at 0.75 and 0.65
#      -> $OUT/fashion.md and $OUT/fashion_rows.json;
#   3. bench/finetune_speed.py: runner vs plain loop images/s        -> $OUT/finetune.md.
# Epoch counts are shortened to fit the device time (BASELINE_EPOCHS, FINETUNE_EPOCHS), and each
# recipe's learning-rate steps move to the same fractions of the shortened run (--scale-schedule);
# MAX_STEPS caps each epoch (for a dry run on a CPU). Logs go to $OUT/stages.log, models to $EXP.
set -u
OUT=${OUT:?set OUT to a folder for the logs and results}
FASHION_ROOT=${FASHION_ROOT:-/usr/share/datasets/fashion-mnist}
BASELINE_EPOCHS=${BASELINE_EPOCHS:-20}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-8}
WORKERS=${WORKERS:-12}
EXP=${EXP:-/tmp/fxprune_gpu_evidence}
BUDGET_S=${BUDGET_S:-480}  # stages that would start after this many seconds are skipped
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}

if [ -n "${FXPRUNE_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$FXPRUNE_WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, append to $OUT/stages.log, report rc
  local name=$1 limit=$2; shift 2
  if [ "$(left)" -le 20 ]; then echo "== $name: skipped, budget spent" | tee -a "$OUT/summary.txt"; return 1; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  echo "== $name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$EXP/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
  { echo "==== $name (rc=$rc)"; cat "$EXP/$name.log"; } >>"$OUT/stages.log"
  tail -n 15 "$EXP/$name.log"
  return $rc
}

rm -rf "$EXP"; mkdir -p "$EXP" "$OUT"
nvidia-smi -L | tee "$OUT/summary.txt"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.txt"

stage gpu_tests 180 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_runner.py tests/test_verify_models.py -k "gpu"

FX=("$PY" -m fxprune)
common=(--dataset fashion-mnist --data-root "$FASHION_ROOT" --workers "$WORKERS" --scale-schedule
        ${MAX_STEPS:+--max-steps "$MAX_STEPS"})
graph() {  # graph THRESHOLD: one experiment row with the graph criterion
  stage "graph_$1" 90 "${FX[@]}" experiment --baseline "$EXP/baseline" "${common[@]}" --criterion graph \
    --threshold "$1" --epochs "$FINETUNE_EPOCHS" --out "$EXP/graph_$1" --json
}
l1() {  # l1 FLOPS_REDUCTION NAME: one experiment row with l1, fine-tuned with graph's recipe
  stage "$2" 90 "${FX[@]}" experiment --baseline "$EXP/baseline" "${common[@]}" --criterion l1 \
    --flops-reduction "$1" --preset rgd-cifar --epochs "$FINETUNE_EPOCHS" --out "$EXP/$2" --json
}
nearest_step() {  # LOG TARGET: the reachable FLOPs reduction nearest TARGET, read from the budget's error
  "$PY" -c "import re, sys; steps = [float(v) / 100 for v in re.findall(r'step from ([\d.]+)% to ([\d.]+)%', open(sys.argv[1]).read())[-1]]; print(min(steps, key=lambda v: abs(v - float(sys.argv[2]))))" "$1" "$2"
}
if stage baseline 150 "${FX[@]}" train --arch resnet56 "${common[@]}" --epochs "$BASELINE_EPOCHS" \
     --out "$EXP/baseline" --json && graph 0.7; then
  fr=$("$PY" -c "import json; print(json.load(open('$EXP/graph_0.7/results.json'))['flops_reduction'] / 100)")
  l1 "$fr" l1_matched || l1 "$(nearest_step "$EXP/l1_matched.log" "$fr")" l1_nearest_step
  graph 0.75
  graph 0.65
fi
[ -z "${SKIP_SPEED:-}" ] && stage finetune_speed 150 "$PY" bench/finetune_speed.py --out "$OUT/finetune.md"

"$PY" - "$EXP" "$OUT" <<'EOF'
"""Collect the experiment rows into one JSON file and the seeds' table shape."""
import json, sys
from pathlib import Path
exp, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [json.loads(p.read_text()) for p in sorted(exp.glob("*/results.json"))]
(out / "fashion_rows.json").write_text(json.dumps(rows, indent=1))
lines = ["| criterion | budget | top-1 before (%) | top-1 after (%) | drop (pt) | FR (%) | PR (%) | fine-tune epochs | device |",
         "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['criterion']} | {json.dumps(r['budget'])} | {r['top1_before']:.2f} | {r['top1_after']:.2f} | "
                 f"{r['top1_drop']:.2f} | {r['flops_reduction']:.2f} | {r['params_reduction']:.2f} | {r['epochs']} | {r['device']} |")
(out / "fashion.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/summary.txt"
