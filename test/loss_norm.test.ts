/**
 * Loss normalisation by unmasked target tokens (HF transformers ≥ 4.46, num_items_in_batch): accumulation over
 * micro-batches with different masks equals one batch holding them all, and the reported loss is the mean CE
 * over the unmasked tokens.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Batch, Batcher } from '../lib/data/datasets';
import { Model, ModelConfig } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import { ceObjective, rowCE } from '../lib/train/objectives';
import { unlearn } from '../lib/unlearn/unlearn';
import { stepShares, train, TrainConfig } from '../lib/train/train';
import { assertClose } from './helpers';

const CFG: ModelConfig = {
  family: 'llama', vocabSize: 37, hiddenSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 6,
  intermediateSize: 40, maxPositions: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
};
const T = 10;
const STEP: TrainConfig = { lr: 1e-3, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 0, steps: 1, gradAccum: 1, evalEvery: 0, checkpointEvery: 0 };

/** Micro-batches of 1 row each with very different masks: 9, 2, 5 unmasked targets of 10. */
function microBatches(): Batch[] {
  const r = new Rng(11);
  const keep = [9, 2, 5];
  return keep.map((k, m) => {
    const inputs = Int32Array.from({ length: T }, () => r.int(0, CFG.vocabSize - 1));
    const targets = Int32Array.from({ length: T }, (_, t) => (t >= T - k ? r.int(0, CFG.vocabSize - 1) : -100));
    return { inputs, targets, B: 1, T, position: { epoch: 0, index: m } };
  });
}

/** A batcher over fixed batches (the loop only calls next() and reads/writes position). */
function fixedBatcher(batches: Batch[]): Batcher {
  let i = 0;
  return {
    next: () => batches[i++ % batches.length],
    get position() { return { epoch: 0, index: i }; },
    set position(p: { epoch: number; index: number }) { i = p.index; },
  } as unknown as Batcher;
}

function concat(batches: Batch[]): Batch {
  const B = batches.length;
  const inputs = new Int32Array(B * T), targets = new Int32Array(B * T);
  batches.forEach((b, m) => { inputs.set(b.inputs, m * T); targets.set(b.targets, m * T); });
  return { inputs, targets, B, T, position: { epoch: 0, index: 0 } };
}

/** Mean CE over the unmasked targets, in float64 from the model's logits. */
async function meanCeIndependent(model: Model, b: Batch): Promise<number> {
  await model.native.forward(b.inputs, b.B, b.T);
  const z = await model.native.logits(null);
  const V = CFG.vocabSize;
  let s = 0, n = 0;
  for (let r = 0; r < b.B * b.T; r++) {
    const y = b.targets[r];
    if (y === -100) continue;
    let mx = -Infinity;
    for (let v = 0; v < V; v++) mx = Math.max(mx, z[r * V + v]);
    let se = 0;
    for (let v = 0; v < V; v++) se += Math.exp(z[r * V + v] - mx);
    s += Math.log(se) + mx - z[r * V + y];
    n++;
  }
  return s / n;
}

test('stepShares: unmasked tokens over the step, 1/k when none', () => {
  const mb = microBatches();
  const sh = stepShares(mb);
  assert.equal(sh.map((x) => Math.round(x * 16)), [9, 2, 5]);
  const none = mb.map((b) => ({ ...b, targets: new Int32Array(T).fill(-100) }));
  assert.equal(stepShares(none), [1 / 3, 1 / 3, 1 / 3]);
});

test('accumulation over 3 differently masked micro-batches = one batch of all 3 (loss and gradient)', async () => {
  const mb = microBatches();
  const big = concat(mb);
  const ref = Model.create(CFG, { seed: 5 });
  const expected = await meanCeIndependent(ref, big);
  ref.native.zeroGradSync();
  const one = await ref.native.trainStep(big.inputs, big.targets, big.B, big.T, null, 0, -100);
  assert.ok(Math.abs(one.loss - expected) < 1e-5 * expected, `${one.loss} vs ${expected}`);
  for (const objective of ['default', 'ceObjective'] as const) {
    const m = Model.create(CFG, { seed: 5 });
    let loss = NaN;
    await train(m, fixedBatcher(mb), { ...STEP, gradAccum: 3 }, {
      onStep: (s) => { loss = s.loss; },
      ...(objective === 'ceObjective' ? { microStep: async (b: Batch, share: number) => share * (await ceObjective(m, b, share)) } : {}),
    });
    assert.ok(Math.abs(loss - expected) < 1e-5 * expected, `${objective}: accumulated loss ${loss} vs mean CE ${expected}`);
    // the gradient is left in grads after the step (zeroGrad runs at the start of a step)
    assertClose(m.grads, ref.grads, 1e-5, `${objective}: accumulated gradient`);
  }
  // the old B·T normalisation would be off by the unmasked fraction (16/30): the test can tell them apart
  const m = Model.create(CFG, { seed: 5 });
  m.native.zeroGradSync();
  const bt = await m.native.trainStep(big.inputs, big.targets, big.B, big.T, null, big.B * big.T, -100);
  assert.ok(Math.abs(bt.loss - expected) > 0.3 * expected);
});

test('half-masked batch: the trained loss is the mean CE over the unmasked tokens', async () => {
  const r = new Rng(2);
  const B = 2;
  const inputs = Int32Array.from({ length: B * T }, () => r.int(0, CFG.vocabSize - 1));
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i % 2 === 0 ? -100 : r.int(0, CFG.vocabSize - 1)));
  const b: Batch = { inputs, targets, B, T, position: { epoch: 0, index: 0 } };
  const m = Model.create(CFG, { seed: 9 });
  const expected = await meanCeIndependent(m, b);
  let loss = NaN;
  await train(m, fixedBatcher([b]), STEP, { onStep: (s) => { loss = s.loss; } });
  assert.ok(Math.abs(loss - expected) < 1e-5 * expected, `${loss} vs ${expected}`);
  const m2 = Model.create(CFG, { seed: 9 });
  m2.native.zeroGradSync();
  const ce = await ceObjective(m2, b, 0.5);
  assert.ok(Math.abs(ce - expected) < 1e-5 * expected, `ceObjective ${ce} vs ${expected}`);
});

test('SimNPO on a half-masked batch: |s| is the unmasked targets of each sequence', async () => {
  const r = new Rng(6);
  const B = 2;
  const inputs = Int32Array.from({ length: B * T }, () => r.int(0, CFG.vocabSize - 1));
  // sequence 0: 3 unmasked targets, sequence 1: 8
  const keep = [3, 8];
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i % T >= T - keep[Math.floor(i / T)] ? r.int(0, CFG.vocabSize - 1) : -100));
  const b: Batch = { inputs, targets, B, T, position: { epoch: 0, index: 0 } };
  const m = Model.create(CFG, { seed: 4 });
  const rows = await rowCE(m, b);
  const beta = 2.5, gamma = 0.5;
  let expected = 0;
  for (let s = 0; s < B; s++) {
    let nll = 0;
    for (let t = 0; t < T; t++) nll += rows[s * T + t];
    const x = (beta * nll) / keep[s] - gamma;
    expected += ((2 / beta) * Math.log1p(Math.exp(-x))) / B;
  }
  let loss = NaN;
  await unlearn(m, fixedBatcher([b]), null, STEP, { method: 'simnpo', params: { beta, gamma, retainWeight: 0 }, onStep: (s) => { loss = s.loss; } });
  assert.ok(Math.abs(loss - expected) < 1e-5 * expected, `${loss} vs ${expected}`);
});

test.run();
