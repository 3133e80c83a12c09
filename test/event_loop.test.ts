/**
 * The non-blocking API: while an async call runs on large inputs, the event loop keeps ticking (a 1 ms
 * interval's largest gap stays under a bound far below the call's own duration, which the blocking form
 * spends with no tick at all), and the async result equals the blocking one bit for bit.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loss } from '../lib/train/losses';
import { Model } from '../lib/models/model';
import { native } from '../lib/core/native';
import { bitEqual, randn, tinyConfig } from './helpers';

/** Run `fn`, sampling the event loop with a 1 ms interval: the largest gap between ticks and the tick count. */
async function lagDuring<T>(fn: () => Promise<T>): Promise<{ value: T; maxGap: number; ticks: number; ms: number }> {
  let last = performance.now();
  let maxGap = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 1);
  const t0 = performance.now();
  try {
    const value = await fn();
    const ms = performance.now() - t0;
    maxGap = Math.max(maxGap, performance.now() - last);
    return { value, maxGap, ticks, ms };
  } finally {
    clearInterval(timer);
  }
}

const BOUND_MS = 60;
/** The largest gap allowed while an async call runs: BOUND_MS, or half the blocking form's time on a loaded machine. */
const bound = (syncMs: number) => Math.max(BOUND_MS, syncMs / 2);

test('loss.compute runs off the JS thread (2048 × 32000 FKL); computeSync gives the same bits', async () => {
  const rows = 2048, vocab = 32000;
  const student = randn(rows * vocab, 1, 2);
  const teacher = randn(rows * vocab, 2, 2);
  const t0 = performance.now();
  const sync = loss.computeSync('fkl', { student, teacher, rows, vocab, temperature: 2 });
  const syncMs = performance.now() - t0;
  // the caller's own output buffers: the JS thread only checks the arguments
  const grad = new Float32Array(rows * vocab), perRow = new Float32Array(rows);
  const r = await lagDuring(() => loss.compute('fkl', { student, teacher, rows, vocab, temperature: 2, grad, perRow }));
  console.log(`  loss.compute fkl ${rows}×${vocab}: ${r.ms.toFixed(0)} ms, largest event-loop gap ${r.maxGap.toFixed(1)} ms over ${r.ticks} ticks (computeSync: ${syncMs.toFixed(0)} ms, no tick)`);
  assert.ok(r.maxGap < bound(syncMs), `largest gap ${r.maxGap.toFixed(1)} ms (the blocking form takes ${syncMs.toFixed(0)} ms)`);
  assert.ok(r.ticks >= 5, `the loop ticked ${r.ticks} times while the loss ran`);
  assert.is(r.value.loss, sync.loss);
  assert.ok(bitEqual(r.value.grad, sync.grad) && bitEqual(r.value.perRow, sync.perRow));
  // bad input still rejects before any work, with its code
  const e = await loss.compute('fkl', { student, teacher: teacher.subarray(1), rows, vocab }).then(() => null, (x: { code?: string }) => x);
  assert.is(e?.code, 'ERR_SHAPE');
});

test('native.gemm (2048 × 2048 × 1024) runs off the JS thread and equals native.gemmSync', async () => {
  const M = 2048, N = 2048, K = 1024;
  const A = randn(M * K, 3), B = randn(K * N, 4);
  const C1 = new Float32Array(M * N), C2 = new Float32Array(M * N);
  const t0 = performance.now();
  native.gemmSync(false, false, M, N, K, 1, A, K, B, N, 0, C1, N);
  const syncMs = performance.now() - t0;
  const r = await lagDuring(() => native.gemm(false, false, M, N, K, 1, A, K, B, N, 0, C2, N));
  console.log(`  gemm ${M}×${N}×${K}: ${r.ms.toFixed(0)} ms, largest event-loop gap ${r.maxGap.toFixed(1)} ms (gemmSync: ${syncMs.toFixed(0)} ms, no tick)`);
  assert.ok(r.maxGap < bound(syncMs), `largest gap ${r.maxGap.toFixed(1)} ms (gemm takes ${syncMs.toFixed(0)} ms)`);
  assert.ok(bitEqual(C1, C2));
  const e = await native.gemm(false, false, M, N, K, 1, A.subarray(1), K, B, N, 0, C2, N).then(() => null, (x: { code?: string }) => x);
  assert.is(e?.code, 'ERR_SHAPE');
});

test('the model\'s forward, backward and AdamW keep the loop free', async () => {
  const m = Model.create(tinyConfig('llama', { hiddenSize: 256, intermediateSize: 768, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 64, maxPositions: 512 }), { seed: 1 });
  const B = 4, T = 256;
  const ids = Int32Array.from({ length: B * T + 1 }, (_, i) => (i * 31 + 7) % m.config.vocabSize);
  for (const [what, fn] of [
    ['trainStep', () => m.native.trainStep(ids.subarray(0, B * T), ids.subarray(1), B, T, null, 0, -100)],
    ['adamw', () => m.native.adamw({ lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradScale: 1 })],
  ] as const) {
    const r = await lagDuring(fn as () => Promise<unknown>);
    console.log(`  ${what}: ${r.ms.toFixed(0)} ms, largest gap ${r.maxGap.toFixed(1)} ms`);
    assert.ok(r.maxGap < bound(r.ms), `${what}: largest gap ${r.maxGap.toFixed(1)} ms of ${r.ms.toFixed(0)} ms`);
  }
});

test.run();
