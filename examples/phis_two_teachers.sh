#!/usr/bin/env bash
# PHI-S demo (issue 13): label-free feature distillation from two teachers of different widths into one student,
# under each teacher-feature standardization the PHI-S paper compares. Two built-in teachers are pretrained on the
# arithmetic task: A (micro preset, width 64) and B (tiny preset, width 128, another seed). A micro student (width
# 64) learns, through one MLP adaptor head per teacher, to reproduce both teachers' last-block residual streams
# (--features -1:-1), with the MSE on the standardized features and no labels. The same student init, data and
# steps for every standardization; the table gives each teacher's held-out fraction of variance unexplained
# (FVU, measured in the teacher's own feature space after inverting the standardization, so the five are
# comparable) and the cosine similarity. About 5 minutes on 2 cores.
set -euo pipefail
OUT=${1:-runs/phis}
STEPS=${STEPS:-400}
TSTEPS=${TSTEPS:-800}
CLI="node $(dirname "$0")/../bin/undo-native.js"
COMMON=(--docs 4000 --seq-len 64)
mkdir -p "$OUT"
[ -f "$OUT/teacherA/config.json" ] || $CLI pretrain --task arithmetic "${COMMON[@]}" --seed 1 --preset micro --steps "$TSTEPS" --eval-every 0 --checkpoint-every 0 --out "$OUT/teacherA" --no-progress | tail -1
[ -f "$OUT/teacherB/config.json" ] || $CLI pretrain --task arithmetic "${COMMON[@]}" --seed 2 --preset tiny --steps "$TSTEPS" --eval-every 0 --checkpoint-every 0 --out "$OUT/teacherB" --no-progress | tail -1
for std in none perdim global pca-whiten phi-s; do
  echo "== $std"
  $CLI distill --teacher "$OUT/teacherA" --teacher "$OUT/teacherB" --features -1:-1 --standardize "$std" --student micro \
    --data arithmetic "${COMMON[@]}" --seed 0 --val-fraction 0.05 --steps "$STEPS" --lr 3e-3 --warmup 50 --eval-every 0 \
    --out "$OUT/$std" --no-progress | grep -E '^(teacher [12]|feature-distilled)'
done
node -e '
  const fs = require("fs"), path = require("path");
  const out = process.argv[1];
  console.log(`\nstandardization  A: FVU   cosine   B: FVU   cosine   mean FVU`);
  for (const std of ["none", "perdim", "global", "pca-whiten", "phi-s"]) {
    const rows = fs.readFileSync(path.join(out, std, "metrics.jsonl"), "utf8").trim().split("\n").map(JSON.parse).filter((r) => r.eval);
    const e = rows[rows.length - 1].eval;
    const f = (x) => x.toFixed(4).padStart(8);
    console.log(`${std.padEnd(15)} ${f(e.feat1_fvu)} ${f(e.feat1_cos)} ${f(e.feat2_fvu)} ${f(e.feat2_cos)} ${f((e.feat1_fvu + e.feat2_fvu) / 2)}`);
  }
' "$OUT"
