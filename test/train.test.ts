/**
 * The training loop's pieces: LR schedules, gradient accumulation, init schemes, sampling, divergence errors.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Batcher, PackedDataset } from '../lib/data/datasets';
import { sampleToken } from '../lib/models/generate';
import { Model, ModelConfig } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import { lrAt, parseStopCondition, stopTest, train, TrainConfig } from '../lib/train/train';
import { assertClose, throwsUndo } from './helpers';
import { UndoError } from '../lib/core/errors';

const CFG: ModelConfig = {
  family: 'llama', vocabSize: 37, hiddenSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 6,
  intermediateSize: 40, maxPositions: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
};

test('lrAt: linear warm-up, then constant / linear / cosine decay to minLr', () => {
  const base = { lr: 1e-3, minLr: 1e-4, warmup: 10, steps: 110, weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1 };
  assert.ok(Math.abs(lrAt(0, { ...base, schedule: 'cosine' }) - 1e-4) < 1e-12);
  assert.ok(Math.abs(lrAt(9, { ...base, schedule: 'cosine' }) - 1e-3) < 1e-12);
  assert.is(lrAt(50, { ...base, schedule: 'constant' }), 1e-3);
  assert.ok(Math.abs(lrAt(60, { ...base, schedule: 'linear' }) - (1e-3 + (1e-4 - 1e-3) * 0.5)) < 1e-12);
  assert.ok(Math.abs(lrAt(60, { ...base, schedule: 'cosine' }) - (1e-4 + 0.5 * 9e-4)) < 1e-12);
  assert.ok(Math.abs(lrAt(110, { ...base, schedule: 'cosine' }) - 1e-4) < 1e-12);
  assert.ok(lrAt(30, { ...base, schedule: 'cosine' }) > lrAt(31, { ...base, schedule: 'cosine' }));
});

test('gradient accumulation: two micro-batches of 1 give the gradient of one batch of 2', async () => {
  const T = 11;
  const r = new Rng(3);
  const ids = Int32Array.from({ length: 2 * T }, () => r.int(0, CFG.vocabSize - 1));
  const tg = Int32Array.from({ length: 2 * T }, () => r.int(0, CFG.vocabSize - 1));
  const a = Model.create(CFG, { seed: 5 });
  a.native.zeroGradSync();
  const ra = await a.native.trainStep(ids, tg, 2, T, null, 0, -100);
  const b = Model.create(CFG, { seed: 5 });
  b.native.zeroGradSync();
  let lb = 0;
  for (let m = 0; m < 2; m++) {
    lb += (await b.native.trainStep(ids.slice(m * T, (m + 1) * T), tg.slice(m * T, (m + 1) * T), 1, T, null, 2 * T, -100)).loss;
  }
  assert.ok(Math.abs(ra.loss - lb) < 1e-5 * ra.loss, `${ra.loss} vs ${lb}`);
  assertClose(b.grads, a.grads, 1e-5, 'accumulated gradient');
});

test('init: normal(0, std) for matrices, ones for Llama norms; xavier bounds; seeds differ', () => {
  const m = Model.create({ ...CFG, hiddenSize: 64, headDim: 16, intermediateSize: 96 }, { seed: 1, init: 'normal', std: 0.02 });
  const w = m.tensor('model.layers.0.mlp.up_proj.weight');
  let s = 0, s2 = 0;
  for (const x of w) { s += x; s2 += x * x; }
  const mean = s / w.length, std = Math.sqrt(s2 / w.length - mean * mean);
  assert.ok(Math.abs(mean) < 0.002 && Math.abs(std - 0.02) < 0.0015, `mean ${mean} std ${std}`);
  assert.ok(m.tensor('model.norm.weight').every((x) => x === 1));
  const x = Model.create(CFG, { seed: 1, init: 'xavier' });
  const q = x.tensor('model.layers.0.self_attn.q_proj.weight');
  const bound = Math.sqrt(6 / (24 + 24));
  assert.ok(q.every((v) => Math.abs(v) <= bound) && q.some((v) => Math.abs(v) > 0.8 * bound));
  const other = Model.create(CFG, { seed: 2 });
  assert.not.equal(Array.from(other.tensor('model.embed_tokens.weight').slice(0, 8)), Array.from(Model.create(CFG, { seed: 1 }).tensor('model.embed_tokens.weight').slice(0, 8)));
});

test('sampleToken: greedy, top-k restricts the support, top-p keeps the nucleus', () => {
  const logits = Float32Array.from([0, 3, 1, 2.5, -1]);
  const rng = new Rng(1);
  assert.is(sampleToken(logits, {}, rng), 1);
  const seen = new Set<number>();
  for (let i = 0; i < 400; i++) seen.add(sampleToken(logits, { temperature: 1, topK: 2 }, rng));
  assert.equal([...seen].sort(), [1, 3]);
  // p ∝ e^[0,3,1,2.5,-1]: top two hold ≈ 0.87 of the mass, so top-p 0.8 keeps exactly {1, 3}
  const seenP = new Set<number>();
  for (let i = 0; i < 400; i++) seenP.add(sampleToken(logits, { temperature: 1, topP: 0.8 }, rng));
  assert.equal([...seenP].sort(), [1, 3]);
  const all = new Set<number>();
  for (let i = 0; i < 2000; i++) all.add(sampleToken(logits, { temperature: 2 }, rng));
  assert.is(all.size, 5);
});

/** The sort-based sampler sampleToken replaced: the whole vocabulary sorted (stable: logit desc, id asc). */
function sampleBySort(logits: Float32Array, o: { temperature: number; topK?: number; topP?: number }, rng: Rng): number {
  let idx = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b] - logits[a]);
  if (o.topK) idx = idx.slice(0, o.topK);
  const m = logits[idx[0]];
  let probs = idx.map((i) => Math.exp((logits[i] - m) / o.temperature));
  let sum = probs.reduce((a, b) => a + b, 0);
  if ((o.topP ?? 1) < 1) {
    let acc = 0, keep = 0;
    while (keep < probs.length && acc < o.topP! * sum) acc += probs[keep++];
    idx = idx.slice(0, Math.max(1, keep));
    probs = probs.slice(0, Math.max(1, keep));
    sum = probs.reduce((a, b) => a + b, 0);
  }
  let u = rng.next() * sum;
  for (let j = 0; j < probs.length; j++) if ((u -= probs[j]) <= 0) return idx[j];
  return idx[idx.length - 1];
}

test('sampleToken (selection, no sort) draws exactly what sorting the vocabulary would, ties and flat rows included', () => {
  const r = new Rng(5);
  const rows: Float32Array[] = [
    Float32Array.from({ length: 3000 }, () => r.normal() * 3),                  // peaked: small nucleus
    Float32Array.from({ length: 3000 }, () => r.normal() * 0.05),               // flat: nucleus of thousands (doubling)
    Float32Array.from({ length: 3000 }, (_, i) => Math.floor(i / 7) % 5),       // heavy ties at the cut
    Float32Array.from([2, 2, 2, 1, 1]),
  ];
  for (const [ri, z] of rows.entries()) {
    for (const o of [{ temperature: 1, topK: 50 }, { temperature: 0.7, topP: 0.9 }, { temperature: 1.3, topK: 600, topP: 0.5 }, { temperature: 1, topK: 1 }, { temperature: 1, topP: 0.999 }]) {
      const a = new Rng(11), b = new Rng(11);
      for (let t = 0; t < 200; t++) assert.is(sampleToken(z, o, a), sampleBySort(z, o, b), `row ${ri} ${JSON.stringify(o)} draw ${t}`);
    }
  }
});

test('sampleToken at temperature T alone: frequencies follow softmax(z / T) (20000 draws, within 4.5 σ)', () => {
  const z = Float32Array.from([0.3, -1, 2, 0, 1.1, -0.4]);
  const T = 0.8, n = 20000, rng = new Rng(3);
  const counts = new Array(z.length).fill(0);
  for (let i = 0; i < n; i++) counts[sampleToken(z, { temperature: T }, rng)]++;
  const e = Array.from(z, (v) => Math.exp(v / T));
  const sum = e.reduce((a, b) => a + b, 0);
  e.forEach((w, i) => {
    const p = w / sum, sd = Math.sqrt(n * p * (1 - p));
    assert.ok(Math.abs(counts[i] - n * p) < 4.5 * sd, `token ${i}: ${counts[i]} vs ${(n * p).toFixed(0)}`);
  });
});

test('train: a NaN weight stops training with an error naming the step', async () => {
  const m = Model.create(CFG, { seed: 1 });
  m.tensor('model.layers.1.mlp.down_proj.weight')[3] = NaN;
  const tokens = Int32Array.from({ length: 8 * 16 + 1 }, (_, i) => i % CFG.vocabSize);
  const batcher = new Batcher(new PackedDataset(tokens, 16, 8), { batchSize: 2, seed: 1 });
  const cfg: TrainConfig = { steps: 3, gradAccum: 1, lr: 1e-3, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 };
  try {
    await train(m, batcher, cfg);
    assert.unreachable('expected divergence');
  } catch (e) {
    assert.match((e as Error).message, /loss is NaN at step 1/);
  }
});

test('train: loss falls on a repeated sequence and the result is reproducible', async () => {
  const run = async () => {
    const m = Model.create(CFG, { seed: 9 });
    const tokens = Int32Array.from({ length: 8 * 16 + 1 }, (_, i) => (i * 5) % CFG.vocabSize);
    const batcher = new Batcher(new PackedDataset(tokens, 16, 8), { batchSize: 4, seed: 1 });
    const losses: number[] = [];
    const cfg: TrainConfig = { steps: 30, gradAccum: 2, lr: 1e-2, warmup: 3, schedule: 'cosine', weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 };
    await train(m, batcher, cfg, { onStep: (s) => losses.push(s.loss) });
    return { losses, params: m.params.slice() };
  };
  const a = await run();
  assert.ok(a.losses[29] < 0.5 * a.losses[0], `loss ${a.losses[0]} -> ${a.losses[29]}`);
  const b = await run();
  assert.equal(b.losses, a.losses);
  assert.ok(b.params.every((v, i) => v === a.params[i]));
});


test('stop conditions: METRIC<=X / >= / < / > parse, test metrics, and reject bad text or unknown metrics', () => {
  const c = parseStopCondition(' val_loss <= 1.25 ');
  assert.equal({ metric: c.metric, op: c.op, value: c.value }, { metric: 'val_loss', op: '<=', value: 1.25 });
  const le = stopTest(c);
  assert.ok(le({ val_loss: 1.25 }));
  assert.ok(le({ val_loss: 0.5, other: 9 }));
  assert.not.ok(le({ val_loss: 1.2500001 }));
  assert.not.ok(le({ val_loss: NaN }), 'NaN never meets a condition');
  assert.ok(stopTest(parseStopCondition('add/equation>=0.9'))({ 'add/equation': 0.95 }));
  assert.not.ok(stopTest(parseStopCondition('retain>0.9'))({ retain: 0.9 }));
  assert.ok(stopTest(parseStopCondition('val_kl<2e-2'))({ val_kl: 0.0199 }));
  assert.is(parseStopCondition('x>=-.5').value, -0.5);
  for (const bad of ['val_loss', 'val_loss=1', 'val_loss<=abc', '<=1', 'val loss<=1']) throwsUndo(() => parseStopCondition(bad), /expected METRIC<=VALUE/);
  const late = throwsUndo(() => stopTest(parseStopCondition('acc>=0.9'))({ val_loss: 1, retain: 0.5 }), /no metric "acc"/);
  assert.is(late.hint, 'metrics evaluated: retain, val_loss');
  // with the metrics the evaluation will produce, an unknown one is refused at once, before any evaluation
  throwsUndo(() => stopTest(parseStopCondition('acc>=0.9'), ['val_loss', 'retain']), /no metric "acc"/);
  assert.ok(stopTest(parseStopCondition('retain>=0.9'), ['val_loss', 'retain'])({ retain: 0.95 }));
});

test('non-finite steps: a NaN gradient or loss is named (step, first tensor) and never reaches the weights; --skip-nonfinite drops up to N bad batches', async () => {
  const T = 8;
  const r = new Rng(4);
  const toks = Int32Array.from({ length: 40 * T + 1 }, () => r.int(3, CFG.vocabSize - 1));
  const data = new PackedDataset(toks, T, 40);
  const cfg: TrainConfig = { steps: 5, gradAccum: 1, lr: 1e-2, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 };
  const bad = 'model.layers.1.mlp.down_proj.weight';
  // faults injected at given micro-batch calls: 'grad' puts a NaN into one gradient of `bad`, 'loss' returns NaN
  const faulty = (m: Model, faults: Record<number, 'grad' | 'loss'>) => {
    let call = 0;
    return async (b: { inputs: Int32Array; targets: Int32Array; B: number; T: number }) => {
      const f = faults[++call];
      const res = await m.native.trainStep(b.inputs, b.targets, b.B, b.T, null, b.B * b.T, -100);
      if (f === 'grad') m.grads[m.tensors.find((t) => t.name === bad)!.offset + 3] = NaN;
      return f === 'loss' ? NaN : res.loss;
    };
  };
  // stop at the first bad step (call 3): the weights are those after 2 good steps
  const m = Model.create(CFG, { seed: 2 });
  const e = await train(m, new Batcher(data, { batchSize: 2, seed: 1 }), cfg, { microStep: faulty(m, { 3: 'grad' }) }).then(() => null, (x) => x);
  assert.ok(e instanceof UndoError, String(e));
  assert.is(e.code, 'ERR_NONFINITE');
  assert.match(e.message, /the gradient norm is NaN at step 3 \(first non-finite gradient: tensor "model\.layers\.1\.mlp\.down_proj\.weight"\)/);
  const ref = Model.create(CFG, { seed: 2 });
  await train(ref, new Batcher(data, { batchSize: 2, seed: 1 }), { ...cfg, steps: 2 }, {});
  assert.ok(m.params.every((v, i) => v === ref.params[i]), 'not updated from the bad step');
  // skip two bad batches (a NaN gradient and a NaN loss): 5 good steps, the two bad batches dropped
  const s = Model.create(CFG, { seed: 2 });
  const skips: { step: number; tensor?: string }[] = [];
  const res = await train(s, new Batcher(data, { batchSize: 2, seed: 1 }), { ...cfg, skipNonfinite: 2 }, { microStep: faulty(s, { 2: 'grad', 4: 'loss' }), onSkip: (x) => skips.push(x) });
  assert.is(res.state.step, 5);
  assert.equal(skips.map((x) => [x.step, x.tensor]), [[2, bad], [3, undefined]]);
  assert.ok(s.params.every(Number.isFinite));
  assert.equal(res.state.position, { epoch: 0, index: 14 }, '7 batches of 2 consumed');
  // a third bad batch is one too many
  const t = Model.create(CFG, { seed: 2 });
  const e2 = await train(t, new Batcher(data, { batchSize: 2, seed: 1 }), { ...cfg, skipNonfinite: 2 }, { microStep: faulty(t, { 1: 'loss', 2: 'loss', 3: 'loss' }) }).then(() => null, (x) => x);
  assert.match(String(e2?.message), /the loss is NaN at step 1 after 2 skipped steps/);
});

test.run();
