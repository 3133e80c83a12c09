/**
 * Large vocabularies end to end (V = 262144, Gemma-3's size): training step, fused distillation head, online
 * top-k and on-policy distillation, the held-out divergence, the teacher store (caching and distilling from
 * it), WHP unlearning (generic targets from two models), Delta-KD (four models' logits) and sampling never hold a rows × V block of the batch. Each phase's peak-RSS growth is measured in a
 * child process (test/support/large_vocab_phases.ts); one B·T × V float block would be 1 GiB.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const BLOCK = 1024 * 262144 * 4; // rows × V floats of the batch
const canMeasure = (() => {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
})();

const run = canMeasure ? test : test.skip;
if (!canMeasure) console.log('  large_vocab: skipped, /proc/self/clear_refs is not writable here (peak RSS cannot be reset)');

run('V = 262144: every vocabulary-sized phase stays far below one rows × V block', () => {
  const script = path.join(__dirname, 'support', 'large_vocab_phases.js');
  const r = spawnSync(process.execPath, ['--expose-gc', script], { encoding: 'utf8', timeout: 240_000 });
  assert.is(r.status, 0, `child failed: ${r.stderr}`);
  const phases = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { phase: string; growth: number; ms: number; copies: number });
  // one whole model (params, grads, AdamW moments) at V = 262144: WHP's reinforced and baseline copies are its own
  const copy = phases.find((p) => p.phase === 'model copy')!.growth;
  assert.equal(phases.map((p) => p.phase), ['trainStep', 'headKd', 'distill(online, topk)', 'distill(on-policy)', 'evalDivergence', 'cacheTeacher', 'distill(store)', 'model copy', 'unlearn(whp)', 'deltakd', 'generate']);
  for (const p of phases) {
    // a head chunk is 32 MiB of logits (two or three of them alive at once), plus the model's own buffers
    const growth = p.growth - p.copies * copy;
    assert.ok(growth < BLOCK / 5, `${p.phase}: peak RSS grew ${(growth / 2 ** 20).toFixed(0)} MiB beyond its ${p.copies} model copies (one rows × V block is ${BLOCK / 2 ** 20} MiB)`);
  }
  console.log('  ' + phases.map((p) => `${p.phase} +${(p.growth / 2 ** 20).toFixed(0)} MiB (${(p.ms / 1000).toFixed(1)} s)`).join(', '));
});

test.run();
