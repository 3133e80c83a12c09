#!/usr/bin/env bash
# Calibrate the distillation scaling law to runs on this machine, then plan with it (README "Planning a
# distillation"): 9 pretraining runs (presets micro, tiny, small × 100, 200, 400 steps) and 12 distillation runs
# (students micro, tiny × 100, 200, 400 steps, from the tiny and small 400-step runs as teachers) on the
# built-in biographies task, each with a held-out val_loss; then `plan --calibrate` fits both laws to them.
# About 10 minutes on 2 cores. Usage: examples/plan_calibrate.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-runs/plan_demo}
CLI="node $(dirname "$0")/../bin/undo-native.js"
mkdir -p "$OUT"
for p in micro tiny small; do
  for s in 100 200 400; do
    [ -f "$OUT/pre_${p}_$s/metrics.jsonl" ] || $CLI pretrain --task biographies --preset $p --steps $s --eval-every $s --out "$OUT/pre_${p}_$s" --no-progress | tail -1
  done
done
for t in tiny small; do
  for p in micro tiny; do
    for s in 100 200 400; do
      [ -f "$OUT/kd_${t}_${p}_$s/metrics.jsonl" ] || $CLI distill --teacher "$OUT/pre_${t}_400" --student $p --data biographies --steps $s --eval-every $s --out "$OUT/kd_${t}_${p}_$s" --no-progress | head -1
    done
  done
done
$CLI plan --calibrate "$OUT"/pre_* "$OUT"/kd_* --fit-distillation c0,d1,A,alpha,gamma --save "$OUT/law.json"
$CLI plan --law "$OUT/law.json" --hours 1 --teacher exists --teacher-model "$OUT/pre_small_400" --teacher-loss "$(node -e "const fs=require('fs');const l=fs.readFileSync('$OUT/pre_small_400/metrics.jsonl','utf8').trim().split('\n').map(JSON.parse).filter(r=>r.eval).pop();console.log(l.eval.val_loss)")" --student micro --student tiny --ctx 128
