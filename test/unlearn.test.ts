/**
 * Unlearning methods, distillation, the relearning attack and the study report on tiny models: each method
 * moves its own objective the right way, RMU trains only its layers, distillation closes the gap to the
 * teacher, the attack's best curve dominates every learning rate, and bad options fail before any work.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Batcher, PackedDataset } from '../lib/data/datasets';
import { distill } from '../lib/distill/distill';
import { UndoError } from '../lib/core/errors';
import { rejectsWith } from './helpers';
import { Model, ModelConfig } from '../lib/models/model';
import { rowCE } from '../lib/train/objectives';
import { relearn } from '../lib/unlearn/relearn';
import { reportMarkdown, paretoSvg } from '../lib/undo/report';
import { Rng } from '../lib/core/rng';
import { TrainConfig } from '../lib/train/train';
import { parseMethod, unlearn, UNLEARN_METHODS } from '../lib/unlearn/unlearn';
import { mmdGaussian } from '../lib/unlearn/repnoise';
import { STUDIES, StudyReport } from '../lib/undo/study';

const CFG: ModelConfig = {
  family: 'llama', vocabSize: 29, hiddenSize: 32, numLayers: 3, numHeads: 4, numKvHeads: 2, headDim: 8,
  intermediateSize: 48, maxPositions: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
};
const T = 12;

/** Two learnable "languages": forget uses tokens 3..15 in one cycle, retain 16..28 in another. */
function dataset(lo: number, step: number, seed: number): PackedDataset {
  const n = 16 * T + 1;
  const r = new Rng(seed);
  const toks = new Int32Array(n);
  let x = lo;
  for (let i = 0; i < n; i++) {
    x = lo + ((x - lo + step + (r.next() < 0.05 ? 1 : 0)) % 13);
    toks[i] = x;
  }
  return new PackedDataset(toks, T, 16);
}
const cfg = (steps: number, lr: number): TrainConfig => ({ steps, gradAccum: 1, lr, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 });

async function meanCE(m: Model, d: PackedDataset): Promise<number> {
  const b = new Batcher(d, { batchSize: 16, shuffle: false }).next();
  const rows = await rowCE(m, b);
  return rows.reduce((a, v) => a + v, 0) / rows.length;
}

let base: Model;
const forget = dataset(3, 5, 1);
const retain = dataset(16, 3, 2);

test.before(async () => {
  base = Model.create(CFG, { seed: 3 });
  const { train } = await import('../lib/train/train');
  // learn both "languages"
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  await train(base, new Batcher(mixed, { batchSize: 8, seed: 1 }), cfg(150, 1e-2));
});

// causal needs named entities in byte-level text: test/causal.test.ts runs it on a tiny biographies model
for (const method of UNLEARN_METHODS.filter((m) => m !== 'causal')) {
  test(`${method}: forget loss rises more than retain loss`, async () => {
    const m = base.clone();
    const f0 = await meanCE(m, forget);
    const r0 = await meanCE(m, retain);
    await unlearn(m, new Batcher(forget, { batchSize: 4, seed: 1 }), new Batcher(retain, { batchSize: 4, seed: 2 }), cfg(method === 'rmu' ? 40 : 15, method === 'rmu' ? 1e-2 : 2e-3), { method, params: method === 'rmu' ? { rmuLayer: 1, rmuFirstLayer: 0, rmuC: 20 } : method === 'whp' ? { whpAlpha: 5, whpReinforceSteps: 20, whpReinforceLr: 1e-2 } : {} });
    const f1 = await meanCE(m, forget);
    const r1 = await meanCE(m, retain);
    // WHP only moves towards "generic" predictions, so its forget loss rises less than ascent-style methods'
    assert.ok(f1 - f0 > (method === 'whp' ? 0.05 : 0.2), `${method}: forget CE ${f0.toFixed(3)} → ${f1.toFixed(3)}`);
    assert.ok(f1 - f0 > r1 - r0, `${method}: forget Δ ${(f1 - f0).toFixed(3)} vs retain Δ ${(r1 - r0).toFixed(3)}`);
    if (method === 'rmu') {
      for (const t of m.tensors) {
        const changed = m.tensor(t.name).some((v, i) => v !== base.tensor(t.name)[i]);
        const trainable = /^model\.layers\.[01]\.mlp\.down_proj\.weight$/.test(t.name);
        assert.is(changed, trainable, `${t.name} changed=${changed}`);
      }
      assert.ok(m.tensors.every((t) => !t.frozen), 'frozen flags restored');
    }
  });
}

test('SAM: the update uses the gradient at the perturbed point and leaves no perturbation behind', async () => {
  const run = async (sam: number) => {
    const m = base.clone();
    await unlearn(m, new Batcher(forget, { batchSize: 4, seed: 1 }), new Batcher(retain, { batchSize: 4, seed: 2 }), cfg(3, 2e-3), { method: 'graddiff', sam });
    return m;
  };
  const plain = await run(0);
  const sam = await run(0.05);
  const tiny = await run(1e-7);
  const diff = (a: Model, b: Model) => a.params.reduce((s, v, i) => Math.max(s, Math.abs(v - b.params[i])), 0);
  assert.ok(diff(sam, plain) > 1e-5, 'SAM changes the trajectory');
  assert.ok(diff(tiny, plain) < 1e-4, `ρ → 0 recovers the plain method (${diff(tiny, plain)})`);
  assert.ok(await meanCE(sam, forget) > (await meanCE(base, forget)), 'SAM-GradDiff still unlearns');
});

test('RepNoise: MMD² and its gradient against finite differences; it moves the forget representations toward noise', async () => {
  const rng = new Rng(5);
  const m = 5, n = 7, d = 3;
  const x = Float64Array.from({ length: m * d }, () => rng.normal());
  const y = Float64Array.from({ length: n * d }, () => rng.normal() + 0.5);
  const r = mmdGaussian(x, y, m, n, d);
  assert.ok(r.value > 0, 'two different samples');
  assert.ok(Math.abs(mmdGaussian(y, y, n, n, d).value) < 1e-12, 'a sample against itself: 0');
  // the bandwidth base (mean pairwise distance) is held constant in the analytic gradient: hold it in the differences too
  for (let i = 0; i < m * d; i++) {
    const h = 1e-5;
    const xp = x.slice(), xm = x.slice();
    xp[i] += h;
    xm[i] -= h;
    const num = (mmdFixedBase(xp, y, m, n, d, x) - mmdFixedBase(xm, y, m, n, d, x)) / (2 * h);
    assert.ok(Math.abs(num - r.grad[i]) < 1e-6 + 1e-4 * Math.abs(num), `∂/∂x[${i}]: ${r.grad[i]} vs ${num}`);
  }
  // on the tiny model: after RepNoise the forget batch's hidden states are closer (MMD) to N(0, I) than after MaxEnt alone
  const noiseDistance = async (model: Model) => {
    const b = new Batcher(forget, { batchSize: 8, shuffle: false }).next();
    await model.native.forward(b.inputs, b.B, b.T);
    const q = new Rng(9);
    let total = 0;
    for (let l = 0; l < CFG.numLayers; l++) {
      const h = Float64Array.from(model.native.hidden(l));
      const rows = b.B * b.T;
      total += mmdGaussian(h, Float64Array.from({ length: rows * CFG.hiddenSize }, () => q.normal()), rows, rows, CFG.hiddenSize).value;
    }
    return total / CFG.numLayers;
  };
  const run = async (method: 'maxent' | 'repnoise') => {
    const u = base.clone();
    await unlearn(u, new Batcher(forget, { batchSize: 4, seed: 1 }), new Batcher(retain, { batchSize: 4, seed: 2 }), cfg(15, 2e-3), { method, params: { repBeta: 4 } });
    return u;
  };
  const [d0, dMax, dRep] = [await noiseDistance(base), await noiseDistance(await run('maxent')), await noiseDistance(await run('repnoise'))];
  assert.ok(dRep < dMax && dRep < d0, `MMD² to noise: base ${d0.toFixed(4)}, maxent ${dMax.toFixed(4)}, repnoise ${dRep.toFixed(4)}`);
});

/** mmdGaussian with the bandwidth base computed from `ref` (x's unperturbed values) instead of x. */
function mmdFixedBase(x: Float64Array, y: Float64Array, m: number, n: number, d: number, ref: Float64Array): number {
  const pts = (a: Float64Array, k: number) => Array.from({ length: k }, (_, i) => a.subarray(i * d, (i + 1) * d));
  const sq = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0);
  const all = [...pts(ref, m), ...pts(y, n)];
  let sum = 0;
  for (const a of all) for (const b of all) sum += sq(a, b);
  const base = sum / (all.length * all.length) / 4;
  const K = (a: Float64Array, b: Float64Array) => [1, 2, 4, 8, 16].reduce((s, w) => s + Math.exp(-sq(a, b) / (w * base)), 0);
  const X = pts(x, m), Y = pts(y, n);
  let kxx = 0, kyy = 0, kxy = 0;
  for (const a of X) for (const b of X) kxx += K(a, b);
  for (const a of Y) for (const b of Y) kyy += K(a, b);
  for (const a of X) for (const b of Y) kxy += K(a, b);
  return kxx / (m * m) + kyy / (n * n) - (2 * kxy) / (m * n);
}

test('parseMethod rejects unknown methods with the list', () => {
  assert.is(parseMethod('Grad-Diff'), 'graddiff');
  assert.throws(() => parseMethod('forgetall'), /unknown unlearning method "forgetall"/);
});

test('distill: forward KL to the teacher falls; a copy of the teacher has zero loss', async () => {
  const student = Model.create(CFG, { seed: 11 });
  const losses: number[] = [];
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  await distill(student, base, new Batcher(mixed, { batchSize: 8, seed: 3 }), cfg(40, 1e-2), { loss: 'fkl', onStep: (s) => losses.push(s.loss) });
  assert.ok(losses[39] < 0.5 * losses[0], `fkl ${losses[0]} → ${losses[39]}`);
  const copy: number[] = [];
  await distill(base.clone(), base, new Batcher(mixed, { batchSize: 8, seed: 3 }), cfg(1, 1e-9), { loss: 'fkl', onStep: (s) => copy.push(s.loss) });
  assert.ok(Math.abs(copy[0]) < 1e-5, `self-distillation loss ${copy[0]}`);
});

test('distill from an offline top-k store: loss falls, and matches online fkl at full k', async () => {
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-store-'));
  const { cacheTeacher, openTeacherStore } = await import('../lib/distill/teacher_store');
  await cacheTeacher(base, mixed, { k: CFG.vocabSize, out: path.join(dir, 's') });
  const store = openTeacherStore(path.join(dir, 's'));
  const run = async (teacher: Model | typeof store, steps: number) => {
    const student = Model.create(CFG, { seed: 11 });
    const losses: number[] = [];
    await distill(student, teacher, new Batcher(mixed, { batchSize: 8, seed: 3 }), cfg(steps, 1e-2), { loss: 'fkl', tail: 'renorm', onStep: (s) => losses.push(s.loss) });
    return losses;
  };
  const offline = await run(store, 30);
  assert.ok(offline[29] < 0.5 * offline[0], `offline fkl ${offline[0]} → ${offline[29]}`);
  const online = await run(base, 3);
  // k = vocab: the stored distribution is the teacher's, up to the store's log-prob quantisation
  for (let s = 0; s < 3; s++) assert.ok(Math.abs(offline[s] - online[s]) < 0.02 * online[s] + 1e-3, `step ${s}: ${offline[s]} vs ${online[s]}`);
  fs.rmSync(dir, { recursive: true });
});

test('distill from the top-k of an online teacher: equals full fkl at k = vocab, and a small k still converges', async () => {
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  const run = async (steps: number, o: { topk?: number; tail?: 'renorm' | 'bucket'; loss?: 'fkl' | 'jsd' }) => {
    const student = Model.create(CFG, { seed: 11 });
    const losses: number[] = [];
    await distill(student, base, new Batcher(mixed, { batchSize: 8, seed: 3 }), cfg(steps, 1e-2), { loss: o.loss ?? 'fkl', params: { beta: 0.3 }, topk: o.topk, tail: o.tail, onStep: (s) => losses.push(s.loss) });
    return losses;
  };
  const full = await run(3, {});
  const allK = await run(3, { topk: CFG.vocabSize, tail: 'renorm' });
  for (let s = 0; s < 3; s++) assert.ok(Math.abs(allK[s] - full[s]) < 1e-4 * full[s] + 1e-6, `step ${s}: top-k=V ${allK[s]} vs full ${full[s]}`);
  const small = await run(30, { topk: 4, tail: 'bucket', loss: 'jsd' });
  assert.ok(small[29] < 0.5 * small[0], `jsd top-4 bucket ${small[0]} → ${small[29]}`);
  await rejectsWith(run(1, { topk: CFG.vocabSize + 1 }), /top-k must be an integer in \[1, vocab/, 'topk > vocab', UndoError);
});

test('evalDivergence: mean KL over every row, in row chunks, equals loss.compute on whole batches; zero for a copy', async () => {
  const { evalDivergence } = await import('../lib/train/evaluate');
  const { loss } = await import('../lib/train/losses');
  const data = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  const student = Model.create(CFG, { seed: 11 });
  // reference: whole batches of 8 windows, all rows' logits at once
  let total = 0, count = 0;
  for (let i = 0; i < data.count; i += 8) {
    const B = Math.min(8, data.count - i);
    const ids = new Int32Array(B * T);
    for (let b = 0; b < B; b++) ids.set(data.inputs(i + b), b * T);
    await base.native.forward(ids, B, T);
    const tl = await base.native.logits(null);
    await student.native.forward(ids, B, T);
    const sl = await student.native.logits(null);
    total += loss.computeSync('fkl', { student: sl, teacher: tl, rows: B * T, vocab: CFG.vocabSize, grad: false }).loss * B * T;
    count += B * T;
  }
  const got = await evalDivergence(student, base, data, { chunkRows: 7 });  // 7: chunks that straddle windows
  assert.is(got.tokens, count);
  assert.ok(Math.abs(got.value - total / count) <= 1e-6 * (total / count), `${got.value} vs ${total / count}`);
  assert.ok(got.value > 0.01, `a random student is far from the teacher: ${got.value}`);
  assert.ok((await evalDivergence(base.clone(), base, data)).value < 1e-6, 'a copy of the teacher');
});

test('on-policy distillation (GKD): student samples keep the prompt, are scored by the teacher, and training still converges', async () => {
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  const { studentBatch } = await import('../lib/distill/distill');
  const b = new Batcher(mixed, { batchSize: 4, seed: 1 }).next();
  const sb = await studentBatch(base, b, new Rng(5));
  for (let r = 0; r < 4; r++) {
    assert.equal(Array.from(sb.inputs.subarray(r * T, r * T + 3)), Array.from(b.inputs.subarray(r * T, r * T + 3)), 'prompt kept');
    assert.equal(Array.from(sb.targets.subarray(r * T, r * T + T - 1)), Array.from(sb.inputs.subarray(r * T + 1, r * T + T)), 'targets are inputs shifted');
  }
  const student = Model.create(CFG, { seed: 12 });
  const losses: number[] = [];
  await distill(student, base, new Batcher(mixed, { batchSize: 8, seed: 3 }), cfg(30, 1e-2), { loss: 'jsd', params: { beta: 0.5 }, onPolicy: 0.5, seed: 1, onStep: (s) => losses.push(s.loss) });
  assert.ok(losses[29] < 0.5 * losses[0], `on-policy jsd ${losses[0]} → ${losses[29]}`);
  try {
    await distill(student, base, new Batcher(mixed, { batchSize: 8 }), cfg(1, 1e-3), { loss: 'fkl', onPolicy: 2 });
    assert.unreachable();
  } catch (e) {
    assert.match((e as Error).message, /on-policy fraction must be in \[0, 1\], got 2/);
  }
});

test('TAID distillation with the adaptive t schedule (TaidSchedule) converges', async () => {
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  const student = Model.create(CFG, { seed: 13 });
  const losses: number[] = [];
  await distill(student, base, new Batcher(mixed, { batchSize: 8, seed: 3 }), cfg(30, 1e-2), { loss: 'taid', onStep: (s) => losses.push(s.loss) });
  assert.ok(losses[29] < losses[0], `taid ${losses[0]} → ${losses[29]}`);
});

test('MiniLLM: the reverse KL to the teacher on the student\'s own samples falls', async () => {
  const mixed = new PackedDataset(Int32Array.from([...forget.tokens, ...retain.tokens]), T, 32);
  const { studentBatch } = await import('../lib/distill/distill');
  const onPolicyRkl = async (m: Model) => {
    const b = new Batcher(mixed, { batchSize: 8, seed: 9 }).next();
    const sb = await studentBatch(m, b, new Rng(4));
    await base.native.forward(sb.inputs, sb.B, sb.T);
    await m.native.forward(sb.inputs, sb.B, sb.T);
    const r = await m.native.headKd('rkl', base.native, {});
    m.native.zeroGradSync();
    return r.loss;
  };
  const student = Model.create(CFG, { seed: 14 });
  const before = await onPolicyRkl(student);
  const losses: number[] = [];
  await distill(student, base, new Batcher(mixed, { batchSize: 4, seed: 3 }), cfg(40, 1e-2), { loss: 'rkl', miniLlm: {}, seed: 2, onStep: (s) => losses.push(s.loss) });
  const after = await onPolicyRkl(student);
  assert.ok(after < 0.5 * before, `on-policy reverse KL ${before} → ${after}`);
  assert.ok(losses.every(Number.isFinite));
});

test('relearn: the best curve is the max over learning rates, budgets are monotone', async () => {
  const m = base.clone();
  await unlearn(m, new Batcher(forget, { batchSize: 4, seed: 1 }), new Batcher(retain, { batchSize: 4, seed: 2 }), cfg(15, 2e-3), { method: 'graddiff' });
  const metric = async (x: Model) => -(await meanCE(x, forget));
  const r = await relearn(m, forget, { lrs: [1e-2, 1e-4], steps: 10, evalEvery: 5, batchSize: 4, metric });
  assert.is(r.curves.length, 2);
  for (const p of r.best) for (const c of r.curves) assert.ok(p.value >= (c.points.find((q) => q.step === p.step)?.value ?? -Infinity));
  assert.ok(r.best[r.best.length - 1].value > r.best[0].value, 'the attack relearns');
  assert.ok(r.atBudget[10] >= r.atBudget[5] && r.atBudget[5] >= r.atBudget[0]);
  try {
    await relearn(m, forget, { lrs: [-1], steps: 1, evalEvery: 1, batchSize: 1, metric });
    assert.unreachable();
  } catch (e) {
    assert.match((e as Error).message, /learning rates must be positive/);
  }
});

test('report: markdown table and SVG plot from a study result', async () => {
  const rep: StudyReport = {
    study: STUDIES.quick, elapsedSec: 60,
    rows: [
      { name: 'base', kind: 'base', retain: 1, forget: 1, relearned: { 20: 1, 60: 1 }, computeFraction: 1, metrics: {} },
      { name: 'UNDO α=0.6', kind: 'undo', alpha: 0.6, retain: 0.97, forget: 0.01, relearned: { 20: 0.1, 60: 0.3 }, computeFraction: 0.4, robustness: 0.7, metrics: {} },
    ],
  };
  const md = reportMarkdown(rep);
  assert.match(md, /\| UNDO α=0\.6 \| 97\.0% \| 1\.0% \| 10\.0% \| 30\.0% \| 0\.40 \| 0\.70 \|/);
  const svg = await paretoSvg(rep);
  assert.ok(svg.startsWith('<svg') && svg.includes('UNDO α=0.6'), 'svg with labels');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-report-'));
  const { writeReport } = await import('../lib/undo/report');
  await writeReport(rep, dir);
  assert.equal(fs.readdirSync(dir).sort(), ['pareto.svg', 'report.json', 'report.md']);
  fs.rmSync(dir, { recursive: true });
});

test.run();
