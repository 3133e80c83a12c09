/**
 * Same seed, same result: whole CLI runs (pretrain, distill) twice and on 1 and 2 threads give byte-identical
 * checkpoints; across ISA paths the elementwise and counter-based parts (init, noise, AdamW) are bit-identical
 * and the reductions (matmul, attention, norms, losses) agree to float rounding only: their sums run in the
 * lanes of each vector width (scalar, 8, 16) and with fused multiply-adds on AVX2/AVX-512, so the last bits
 * differ (README: Reliability). The thread-count kernels test is in engine.test.ts.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { native } from '../lib/core/native';
import { sha256File } from '../lib/core/fsutil';
import { Rng } from '../lib/core/rng';
import { Model } from '../lib/models/model';
import { noiseModelSync } from '../lib/unlearn/noise';
import { bitEqual, ROOT, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-det-'));
const BIN = path.join(ROOT, 'bin', 'undo-native.js');

function cli(args: string[]): void {
  const r = spawnSync(process.execPath, [BIN, ...args, '--no-progress'], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stdout + r.stderr);
}

const weights = (d: string) => sha256File(path.join(d, 'model.safetensors'));

test('pretrain and distill: the same seed twice, and on 1 vs 2 threads, give byte-identical checkpoints', () => {
  const pre = ['pretrain', '--preset', 'micro', '--steps', '12', '--batch-size', '4', '--seq-len', '48', '--docs', '1500', '--eval-every', '0', '--eval-per-form', '2', '--warmup', '2'];
  cli([...pre, '--threads', '2', '--out', path.join(TMP, 'p2')]);
  cli([...pre, '--threads', '2', '--out', path.join(TMP, 'p2b')]);
  cli([...pre, '--threads', '1', '--out', path.join(TMP, 'p1')]);
  cli([...pre, '--threads', '2', '--seed', '43', '--out', path.join(TMP, 'p-other')]);
  assert.is(weights(path.join(TMP, 'p2b')), weights(path.join(TMP, 'p2')), 'two runs with one seed differ');
  assert.is(weights(path.join(TMP, 'p1')), weights(path.join(TMP, 'p2')), '1 and 2 threads differ');
  assert.is.not(weights(path.join(TMP, 'p-other')), weights(path.join(TMP, 'p2')), 'another seed gave the same weights');
  const dis = ['distill', '--teacher', path.join(TMP, 'p2'), '--student', 'micro', '--data', 'arithmetic', '--docs', '1500', '--steps', '10', '--eval-every', '0',
    '--batch-size', '4', '--seq-len', '48', '--loss', 'jsd', '--on-policy', '0.3'];
  cli([...dis, '--threads', '2', '--out', path.join(TMP, 'd2')]);
  cli([...dis, '--threads', '1', '--out', path.join(TMP, 'd1')]);
  assert.is(weights(path.join(TMP, 'd1')), weights(path.join(TMP, 'd2')), 'distillation on 1 and 2 threads differs');
});

test('across ISA paths: init, noise and AdamW bit-identical; forward and training equal to float rounding', async () => {
  const isas = native.supportedIsas();
  if (isas.length < 2) {
    console.log(`  only ${isas.join(', ')} here: nothing to compare`);
    return;
  }
  const prev = native.getIsa();
  const cfg = tinyConfig('llama', { hiddenSize: 96, intermediateSize: 288 });
  const out: Record<string, { init: Float32Array; noised: Float32Array; stepped: Float32Array; logits: Float32Array; losses: number[] }> = {};
  try {
    for (const isa of isas) {
      native.setIsa(isa);
      const m = Model.create(cfg, { seed: 5, std: 0.05 });
      const init = m.params.slice();
      noiseModelSync(m, { alpha: 0.5, beta: 0.1, seed: 3 });
      const noised = m.params.slice();
      const r = new Rng(1);
      for (let i = 0; i < m.grads.length; i++) m.grads[i] = r.normal() * 0.01;
      await m.native.adamw({ lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.7 });
      const stepped = m.params.slice();
      const B = 2, T = 40;
      const ids = Int32Array.from({ length: B * T + 1 }, (_, i) => (i * 37 + 11) % cfg.vocabSize);
      await m.native.forward(ids.subarray(0, B * T), B, T);
      const logits = await m.native.logits(Int32Array.from({ length: B * T }, (_, i) => i), new Float32Array(B * T * cfg.vocabSize));
      const losses: number[] = [];
      for (let s = 0; s < 3; s++) {
        m.native.zeroGradSync();
        losses.push((await m.native.trainStep(ids.subarray(0, B * T), ids.subarray(1), B, T, null, 0, -100)).loss);
        await m.native.adamw({ lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradScale: 1 });
      }
      out[isa] = { init, noised, stepped, logits: logits.slice(), losses };
    }
  } finally {
    native.setIsa(prev);
  }
  const ref = out[isas[0]];
  for (const isa of isas.slice(1)) {
    const o = out[isa];
    assert.ok(bitEqual(o.init, ref.init), `${isa} vs ${isas[0]}: init`);
    assert.ok(bitEqual(o.noised, ref.noised), `${isa} vs ${isas[0]}: noise`);
    assert.ok(bitEqual(o.stepped, ref.stepped), `${isa} vs ${isas[0]}: AdamW`);
    let worst = 0;
    for (let i = 0; i < o.logits.length; i++) worst = Math.max(worst, Math.abs(o.logits[i] - ref.logits[i]));
    assert.ok(worst < 1e-4, `${isa} vs ${isas[0]}: logits differ by ${worst}`);
    for (let s = 0; s < 3; s++) assert.ok(Math.abs(o.losses[s] - ref.losses[s]) <= 1e-5 * ref.losses[s], `${isa} vs ${isas[0]}: loss of step ${s + 1}`);
    console.log(`  ${isa} vs ${isas[0]}: init, noise, AdamW bit-identical; logits within ${worst.toExponential(1)}`);
  }
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

test.run();
