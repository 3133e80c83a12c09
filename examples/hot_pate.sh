#!/usr/bin/env bash
# Hot PATE demo (issue 13): private aggregation of teacher distributions on the built-in pate-bios setting.
# The private data is 80 fact sentences about 8 fictional people (each repeated as 120 separate records), split
# into 40 disjoint partitions; each teacher is the public base model (pretrained on 24 *other* people, so it
# knows the phrasing but none of the private facts) fine-tuned on one partition. The prompts are the 8 private
# names; a response is any fact about the person, a diverse task with 10 valid phrasings × facts per prompt.
# For each vote scheme (hot: coordinated sampling; cold: each teacher's argmax, classic PATE; independent
# sampling) and noise level σ (threshold check σ₁ = 2σ, threshold 24 of 40 votes, ⊥ resampled up to twice),
# 10 responses per prompt are released and a student (the base model) is trained on them. The table gives the
# ε spent (δ = 1e-5; RDP and exact Gaussian-DP conversions), complete responses, the coverage of the 40 true
# private facts in the released text, and the student's fact accuracy. About 7 minutes on 2 cores.
set -euo pipefail
OUT=${1:-runs/hot-pate}
TEACHERS=${TEACHERS:-40}
CLI="node $(dirname "$0")/../bin/undo-native.js"
mkdir -p "$OUT"
[ -f "$OUT/base/config.json" ] || $CLI pretrain --data pate-bios:public --preset micro --steps 800 --seq-len 64 --batch-size 16 --lr 3e-3 \
  --warmup 50 --eval-every 0 --checkpoint-every 0 --out "$OUT/base" --no-progress | tail -1
$CLI pate-teachers --base "$OUT/base" --data pate-bios:private --teachers "$TEACHERS" --steps 120 --lr 2e-3 --out "$OUT/teachers" --no-progress | tail -1
T=$((TEACHERS * 3 / 5))
run() { # scheme sigma [budget]
  $CLI pate --teachers "$OUT/teachers" --prompts pate-bios --epsilon "${3:-1e9}" --delta 1e-5 --scheme "$1" --sigma "$2" \
    --threshold-sigma "$(node -e "console.log(2 * $2)")" --threshold "$T" --on-abstain resample --retries 2 --samples 10 \
    --student "$OUT/base" --student-steps 400 --student-lr 2e-3 --out "$OUT/$1-$2${3:+-eps$3}" --no-progress | grep -E '^(released|student fact|error)' || true
}
for s in hot cold; do for sg in 0 2 4 8; do echo "== $s σ=$sg"; run $s $sg; done; done
echo "== independent σ=4"; run independent 4
# utility against the budget at one noise level: generation stops before the query that would overshoot ε
for s in hot cold; do for e in 30 60 120; do echo "== $s σ=4 ε≤$e"; run $s 4 $e; done; done
node -e '
  const fs = require("fs"), path = require("path");
  const out = process.argv[1];
  const pct = (x) => (x === undefined ? "  -  " : (100 * x).toFixed(1).padStart(5) + "%");
  console.log("\nscheme       σ  budget  ε (RDP)  ε (GDP)  complete  coverage  student acc");
  const runs = [["hot",0],["hot",2],["hot",4],["hot",8],["cold",0],["cold",2],["cold",4],["cold",8],["independent",4]].map(([s, sg]) => [s, sg, `${s}-${sg}`]);
  for (const s of ["hot", "cold"]) for (const e of [30, 60, 120]) runs.push([s, 4, `${s}-4-eps${e}`]);
  for (const [s, sg, dir] of runs) {
    const f = path.join(out, dir, "report.json");
    if (!fs.existsSync(f)) { console.log(`${s.padEnd(11)} ${String(sg).padStart(2)}   (no responses released)`); continue; }
    const r = JSON.parse(fs.readFileSync(f, "utf8"));
    const p = JSON.parse(fs.readFileSync(path.join(out, dir, "privacy.json"), "utf8"));
    const e = (x) => (x === undefined || x === null ? "    ∞" : x.toFixed(1).padStart(7));
    const budget = p.epsilon_budget && p.epsilon_budget < 1e8 ? String(p.epsilon_budget).padStart(6) : "     -";
    console.log(`${s.padEnd(11)} ${String(sg).padStart(2)} ${budget} ${e(p.epsilon_rdp)}  ${e(p.epsilon_gdp)}   ${String(r.complete).padStart(4)}/${r.responses}   ${pct(r.coverage)}   ${pct(r.student_accuracy)}`);
  }
' "$OUT"
