#!/usr/bin/env bash
# DNKD demo (issue 13): a kNN-datastore teacher with decoupled KD against plain cross-entropy when data is scarce.
# 1500 arithmetic documents (721 training windows of 64 tokens). A key model is trained on them with CE; its hidden
# states and next tokens make the datastore; then two students from the same init, on the same data, split and
# steps: CE only (--hard-weight 1) and DNKD (½ CE + ½ DKD against the kNN teacher, each row leaving its own entry
# out). Both are evaluated every 250 steps; the last lines give each run's held-out loss (best and final). About
# 9 minutes on 2 cores.
set -euo pipefail
OUT=${1:-runs/dnkd}
STEPS=${STEPS:-1500}
CLI="node $(dirname "$0")/../bin/undo-native.js"
DATA=(--data arithmetic --docs 1500 --seed 0 --seq-len 64)
mkdir -p "$OUT"
$CLI pretrain --task arithmetic --docs 1500 --seed 0 --seq-len 64 --preset tiny --steps "$STEPS" --eval-every 0 --checkpoint-every 0 --out "$OUT/key" --no-progress | tail -1
$CLI knn-store build --model "$OUT/key" "${DATA[@]}" --out "$OUT/store" --no-progress
for run in ce dnkd; do
  if [ $run = ce ]; then MIX=(--hard-weight 1); else MIX=(--hard-weight 0.5 --loss dkd:1,2); fi
  echo "== $run"
  $CLI distill --knn-teacher "$OUT/store" "${MIX[@]}" --student tiny "${DATA[@]}" --steps "$STEPS" --lr 4e-3 --warmup 100 \
    --eval-every 250 --out "$OUT/$run" --no-progress | grep -E '^(kNN teacher|distilled)'
done
for run in ce dnkd; do
  node -e '
    const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse).filter((r) => r.eval);
    const best = rows.reduce((a, r) => (r.eval.val_loss < a.eval.val_loss ? r : a));
    const last = rows[rows.length - 1];
    console.log(`${process.argv[2].padEnd(5)} val_loss best ${best.eval.val_loss.toFixed(4)} (step ${best.step}), final ${last.eval.val_loss.toFixed(4)}; ` +
      `accuracy at the best step: retain ${(100 * best.eval.retain).toFixed(1)}%, forget ${(100 * best.eval.forget).toFixed(1)}%`);
  ' "$OUT/$run/metrics.jsonl" "$run"
done
