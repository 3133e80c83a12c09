/**
 * Multi-teacher feature distillation (PHI-S): Hadamard matrices, streaming float64 statistics, the five
 * standardizations, the feature losses, the adaptor heads and the whole objective by finite differences, the
 * training loop with adaptors (exact resume), and the CLI.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { hadamard, hadamardConstruction, hadamardSupported, normalizedHadamard, supportedHadamardOrders } from '../lib/distill/hadamard';
import { FeatureStats, loadFeatureStats, saveFeatureStats, STANDARDIZATIONS, Standardizer } from '../lib/distill/standardize';
import { Adaptor } from '../lib/distill/adaptor';
import { distillFeatures, FEATURE_LOSSES, featureErrors, featureLoss, featureObjective, FeatureTeacher, computeFeatureStats } from '../lib/distill/features';
import { documentsFrom } from '../lib/cli/unlearn';
import { Batch, Batcher, packDocuments, PackedDataset } from '../lib/data/datasets';
import { native } from '../lib/core/native';
import { Model } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import { TrainConfig } from '../lib/train/train';
import { randn, ROOT, throwsUndo, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-features-'));

test('Hadamard matrices are orthogonal (H·Hᵀ = n·I) for powers of two, Paley I/II orders and the widths of real models', () => {
  for (const n of [1, 2, 4, 8, 12, 20, 24, 28, 36, 44, 48, 60, 64, 76, 80, 96, 108, 576, 768, 896, 960]) {
    assert.ok(hadamardSupported(n), `order ${n} should be supported`);
    const H = hadamard(n);
    const Hf = Float32Array.from(H);
    const G = new Float32Array(n * n);
    native.gemmSync(false, true, n, n, n, 1, Hf, n, Hf, n, 0, G, n); // exact: integer sums < 2²⁴
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      if (G[i * n + j] !== (i === j ? n : 0)) assert.unreachable(`order ${n}: (H·Hᵀ)[${i}][${j}] = ${G[i * n + j]}`);
    }
    for (let i = 0; i < n * n; i++) if (H[i] !== 1 && H[i] !== -1) assert.unreachable(`order ${n}: entry ${H[i]}`);
  }
  const N = normalizedHadamard(12);
  let s = 0;
  for (let j = 0; j < 12; j++) s += N[j] * N[j];
  assert.ok(Math.abs(s - 1) < 1e-12, 'normalized rows have unit norm');
  // widths of real checkpoints (SmolLM 576/960, Qwen2.5 896/1536/3584, Gemma-2 2304, Llama 4096, ...) are all built
  for (const n of [576, 640, 768, 896, 960, 1024, 1152, 1536, 2048, 2304, 2560, 3072, 3584, 4096, 5120]) assert.ok(hadamardSupported(n), `${n}`);
  assert.is(hadamardConstruction(768), 'Paley I (q = 11) ⊗ Sylvester 64');
  assert.is(hadamardConstruction(896), 'Paley II (q = 13) ⊗ Sylvester 32');
  assert.is(hadamardConstruction(1024), 'Sylvester 1024');
  // no Hadamard matrix exists for 6; 92 needs a construction not built in: both refused by name
  throwsUndo(() => hadamard(6), 'order 6', 'multiples of 4');
  throwsUndo(() => hadamard(92), 'order 92', 'not built in', '88');
  const listed = supportedHadamardOrders(100);
  assert.ok(listed.includes(68) && listed.includes(96) && !listed.includes(100) && !listed.includes(92) && !listed.includes(6));
});

/** rows of anisotropic, correlated data far from the origin (x = offset + z·M, M low-rank-ish), float64 two-pass reference. */
function sample(rows: number, d: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const M = Float64Array.from({ length: d * d }, (_, i) => rng.normal() * (i % d < 3 ? 4 : 0.3));
  const x = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) {
    const z = Array.from({ length: d }, () => rng.normal());
    for (let j = 0; j < d; j++) {
      let s = 50 + 3 * j;
      for (let k = 0; k < d; k++) s += z[k] * M[k * d + j];
      x[r * d + j] = s;
    }
  }
  return x;
}

function twoPass(x: Float32Array, rows: number, d: number, mask: Uint8Array | null): { mean: Float64Array; cov: Float64Array; n: number } {
  const sel = Array.from({ length: rows }, (_, r) => r).filter((r) => !mask || mask[r]);
  const mean = new Float64Array(d);
  for (const r of sel) for (let j = 0; j < d; j++) mean[j] += x[r * d + j];
  for (let j = 0; j < d; j++) mean[j] /= sel.length;
  const cov = new Float64Array(d * d);
  for (const r of sel) for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) cov[i * d + j] += (x[r * d + i] - mean[i]) * (x[r * d + j] - mean[j]);
  for (let i = 0; i < d * d; i++) cov[i] /= sel.length - 1;
  return { mean, cov, n: sel.length };
}

test('streaming float64 statistics equal a two-pass float64 computation (odd batches, masked rows); stored, checked and reused', () => {
  const d = 12, rows = 301;
  const x = sample(rows, d, 1);
  const mask = Uint8Array.from({ length: rows }, (_, r) => (r % 7 === 3 ? 0 : 1));
  const s = new FeatureStats(d);
  for (const [a, b] of [[0, 1], [1, 38], [38, 39], [39, 200], [200, 301]]) s.add(x.subarray(a * d, b * d), b - a, mask.subarray(a, b));
  const ref = twoPass(x, rows, d, mask);
  assert.is(s.count, ref.n);
  const cov = s.covariance();
  let em = 0, ec = 0, scale = 0;
  for (let j = 0; j < d; j++) em = Math.max(em, Math.abs(s.mean[j] - ref.mean[j]) / Math.abs(ref.mean[j]));
  for (let i = 0; i < d * d; i++) scale = Math.max(scale, Math.abs(ref.cov[i]));
  for (let i = 0; i < d * d; i++) ec = Math.max(ec, Math.abs(cov[i] - ref.cov[i]) / scale);
  assert.ok(em < 1e-13, `mean rel err ${em}`);
  assert.ok(ec < 1e-12, `cov rel err ${ec}`);
  const dir = path.join(TMP, 'stats');
  saveFeatureStats(dir, 'teacher-1', s, { layer: 3, data: 'abc' });
  const back = loadFeatureStats(dir, 'teacher-1', { layer: 3, data: 'abc' })!;
  assert.ok(back && back.count === s.count && back.m2.every((v, i) => v === s.m2[i]) && back.mean.every((v, i) => v === s.mean[i]), 'bit-exact round trip');
  assert.is(loadFeatureStats(dir, 'teacher-1', { layer: 4, data: 'abc' }), null, 'another key: recompute');
  assert.is(loadFeatureStats(dir, 'teacher-2', { layer: 3, data: 'abc' }), null, 'none stored');
  const bin = path.join(dir, 'teacher-1.f64');
  const buf = fs.readFileSync(bin);
  buf[100] ^= 1;
  fs.writeFileSync(bin, buf);
  throwsUndo(() => loadFeatureStats(dir, 'teacher-1', { layer: 3, data: 'abc' }), 'teacher-1.f64', 'checksum');
});

/** the sample covariance of y [rows, d] in float64 */
function covOf(y: Float32Array, rows: number, d: number): Float64Array {
  return twoPass(y, rows, d, null).cov;
}

test('standardizations: PHI-S gives every dimension variance 1 with one scale (A = H·Uᵀ/α), whitening the identity, all invertible', () => {
  const d = 12, rows = 2000;
  const x = sample(rows, d, 2);
  const s = new FeatureStats(d);
  s.add(x, rows);
  const varIn = s.variances();
  const spread = Math.max(...varIn) / Math.min(...varIn);
  assert.ok(spread > 20, `the test data is anisotropic (variance ratio ${spread.toFixed(1)})`);
  for (const kind of STANDARDIZATIONS) {
    const st = Standardizer.fit(kind, s, 'test features');
    const y = st.apply(x, rows);
    const c = covOf(y, rows, d);
    const diag = Array.from({ length: d }, (_, j) => c[j * d + j]);
    if (kind === 'phi-s' || kind === 'perdim' || kind === 'pca-whiten') {
      for (const v of diag) assert.ok(Math.abs(v - 1) < 2e-3, `${kind}: a dimension has variance ${v}`);
    }
    if (kind === 'global') assert.ok(Math.abs(diag.reduce((a, b) => a + b, 0) / d - 1) < 2e-3 && Math.max(...diag) / Math.min(...diag) > 20, 'global: mean variance 1, still unequal');
    if (kind === 'pca-whiten') for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) if (i !== j) assert.ok(Math.abs(c[i * d + j]) < 2e-3, 'whitened: decorrelated');
    if (kind === 'phi-s') {
      // not whitened: PHI-S keeps the correlations (a rotation and one scale, so it does not distort)
      let off = 0;
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) if (i !== j) off = Math.max(off, Math.abs(c[i * d + j]));
      assert.ok(off > 0.05, `PHI-S keeps correlations (max off-diagonal ${off})`);
      const A = st.matrix!;
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) {
        let g = 0;
        for (let k = 0; k < d; k++) g += A[i * d + k] * A[j * d + k];
        assert.ok(Math.abs(g * st.alpha! ** 2 - (i === j ? 1 : 0)) < 1e-5, 'α·A is orthogonal');
      }
      assert.ok(Math.abs(st.alpha! ** 2 - varIn.reduce((a, b) => a + b, 0) / d) < 1e-6 * st.alpha! ** 2, 'α² = tr(Σ)/d');
    }
    const back = st.invert(y, rows);
    let e = 0;
    for (let i = 0; i < x.length; i++) e = Math.max(e, Math.abs(back[i] - x[i]) / 100);
    assert.ok(e < 1e-5, `${kind}: invert(apply(x)) = x (err ${e})`);
  }
  // a width with no Hadamard matrix: PHI-S refused by name, the others fit
  const s6 = new FeatureStats(6);
  s6.add(sample(50, 6, 3), 50);
  throwsUndo(() => Standardizer.fit('phi-s', s6, 'teacher 2 layer 1'), 'teacher 2 layer 1', 'width 6');
  Standardizer.fit('pca-whiten', s6);
});

test('feature losses: value and gradient by finite differences (mse, cosine, smoothl1; masked rows count nothing)', () => {
  const rows = 5, dim = 7;
  const p = randn(rows * dim, 4, 1.3), t = randn(rows * dim, 5);
  const mask = Uint8Array.from([1, 0, 1, 1, 1]);
  for (const kind of FEATURE_LOSSES) {
    const r = featureLoss(kind, p, t, rows, dim, { mask, gradScale: 0.7 });
    assert.is(r.count, 4);
    for (let i = 0; i < rows * dim; i += 3) {
      const h = 1e-3, q = Float32Array.from(p);
      q[i] = p[i] + h;
      const up = featureLoss(kind, q, t, rows, dim, { mask }).loss;
      q[i] = p[i] - h;
      const dn = featureLoss(kind, q, t, rows, dim, { mask }).loss;
      const fd = (0.7 * (up - dn)) / (2 * h);
      assert.ok(Math.abs(fd - r.grad[i]) < 2e-4 + 2e-2 * Math.abs(fd), `${kind} grad[${i}]: ${r.grad[i]} vs FD ${fd}`);
    }
    for (let j = 0; j < dim; j++) assert.is(r.grad[dim + j], 0, 'masked row: no gradient');
  }
  // mse by hand
  const one = featureLoss('mse', Float32Array.from([1, 2]), Float32Array.from([0, 0]), 1, 2);
  assert.ok(Math.abs(one.loss - 2.5) < 1e-12);
});

test('adaptor heads (linear, 2-layer MLP): gradients of weights, biases and input by finite differences', () => {
  for (const kind of ['linear', 'mlp'] as const) {
    const rows = 6, di = 10, dt = 14;
    const a = new Adaptor(kind, di, dt, { hidden: 9, seed: 7 });
    const x = randn(rows * di, 8);
    const c = randn(rows * dt, 9);
    const L = () => {
      const y = a.forward(x, rows);
      let s = 0;
      for (let i = 0; i < y.length; i++) s += c[i] * y[i];
      return s;
    };
    L();
    for (const p of a.params) p.grad.fill(0);
    const dx = a.backward(c);
    const check = (arr: Float32Array, g: ArrayLike<number>, what: string) => {
      for (let i = 0; i < arr.length; i += Math.max(1, Math.floor(arr.length / 11))) {
        const v = arr[i], h = 1e-2;
        arr[i] = v + h;
        const up = L();
        arr[i] = v - h;
        const dn = L();
        arr[i] = v;
        const fd = (up - dn) / (2 * h);
        assert.ok(Math.abs(fd - g[i]) < 2e-3 + 1e-2 * Math.abs(fd), `${kind} ${what}[${i}]: ${g[i]} vs FD ${fd}`);
      }
    };
    for (const p of a.params) check(p.data, Float32Array.from(p.grad), p.name);
    check(x, dx, 'x');
  }
});

const T = 16;
function windows(tok: Model['tokenizer'], seed: number, n: number): PackedDataset {
  const docs = documentsFrom('arithmetic:add,mul', 'test data', 400, seed);
  const p = packDocuments(tok, docs, T, { seed });
  return new PackedDataset(p.tokens.subarray(0, n * T + 1), T, n);
}

/** a student of width 32 and two teachers of widths 24 and 48 (different depths), with their standardizers and adaptors */
async function setup(kind: 'phi-s' | 'pca-whiten' | 'none' = 'phi-s', adaptor: 'linear' | 'mlp' = 'mlp') {
  const student = Model.create(tinyConfig('llama'), { seed: 1, std: 0.2 });
  const t1 = Model.create(tinyConfig('llama', { hiddenSize: 24, numHeads: 3, numKvHeads: 1, headDim: 8, numLayers: 3 }), { seed: 2, std: 0.3 });
  const t2 = Model.create(tinyConfig('llama', { hiddenSize: 48, numHeads: 6, numKvHeads: 2, headDim: 8 }), { seed: 3, std: 0.3 });
  const data = windows(student.tokenizer, 1, 24);
  const teachers: FeatureTeacher[] = [];
  for (const [i, [m, sl, tl]] of ([[t1, 1, 2], [t2, 0, 1]] as [Model, number, number][]).entries()) {
    const stats = await computeFeatureStats(m, tl, data);
    teachers.push({ model: m, studentLayer: sl, teacherLayer: tl, standardizer: Standardizer.fit(kind, stats), adaptor: new Adaptor(adaptor, 32, m.config.hiddenSize, { seed: 10 + i, hidden: 20 }), weight: i === 0 ? 1 : 0.5 });
  }
  return { student, teachers, data };
}

test('the feature objective (two teachers of other widths, adaptors, logit KD and CE): gradients of the student and the adaptors by finite differences', async () => {
  const { student, teachers, data } = await setup();
  const b: Batch = { inputs: new Int32Array(2 * T), targets: new Int32Array(2 * T), B: 2, T } as Batch;
  for (let r = 0; r < 2; r++) {
    b.inputs.set(data.inputs(r), r * T);
    b.targets.set(data.targets(r), r * T);
  }
  b.targets[5] = -100;
  const opts = { teachers, featureLoss: 'mse' as const, logitLoss: 'fkl' as const, logitWeight: 0.3, hardWeight: 0.2 };
  student.native.zeroGradSync();
  for (const t of teachers) for (const p of t.adaptor.params) p.grad.fill(0);
  const base = await featureObjective(student, b, opts, 1);
  assert.ok(base.perTeacher.every((x) => x > 0), 'both teachers contribute');
  const L = async () => (await featureObjective(student, b, opts, 0)).loss;
  const gFor = (name: string) => Float32Array.from(student.grad(name));
  const checks: [Float32Array, Float32Array, string][] = [
    [student.tensor('model.layers.0.mlp.down_proj.weight'), gFor('model.layers.0.mlp.down_proj.weight'), 'student layer 0 down_proj'],
    [student.tensor('model.layers.1.self_attn.q_proj.weight'), gFor('model.layers.1.self_attn.q_proj.weight'), 'student layer 1 q_proj'],
    [student.tensor('model.embed_tokens.weight'), gFor('model.embed_tokens.weight'), 'embedding'],
    [teachers[0].adaptor.params[0].data, Float32Array.from(teachers[0].adaptor.params[0].grad), 'adaptor 1 fc1'],
    [teachers[1].adaptor.params[2].data, Float32Array.from(teachers[1].adaptor.params[2].grad), 'adaptor 2 fc2'],
  ];
  for (const [arr, g, what] of checks) {
    // the entries with the largest gradients (FD in float32 needs a signal well above rounding)
    const idx = Array.from(g.keys()).sort((i, j) => Math.abs(g[j]) - Math.abs(g[i])).slice(0, 3);
    for (const i of idx) {
      const v = arr[i], h = 2e-3;
      arr[i] = v + h;
      const up = await L();
      arr[i] = v - h;
      const dn = await L();
      arr[i] = v;
      const fd = (up - dn) / (2 * h);
      assert.ok(Math.abs(fd - g[i]) < 1e-4 + 3e-2 * Math.abs(fd), `${what}[${i}]: ${g[i]} vs FD ${fd}`);
    }
  }
});

const cfg = (steps: number): TrainConfig => ({ steps, gradAccum: 1, lr: 3e-3, warmup: 0, schedule: 'constant', weightDecay: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 2 });

test('distillFeatures: the feature errors fall; a run resumed from its checkpoint ends bit-identical (adaptors included)', async () => {
  const a = await setup('phi-s', 'linear');
  const before = await featureErrors(a.student, a.teachers, a.data);
  const dirA = path.join(TMP, 'runA');
  await distillFeatures(a.student, new Batcher(a.data, { batchSize: 4, seed: 5 }), cfg(30), { teachers: a.teachers, outDir: dirA });
  const after = await featureErrors(a.student, a.teachers, a.data);
  for (let i = 0; i < 2; i++) assert.ok(after[i].fvu < 0.8 * before[i].fvu, `teacher ${i + 1}: FVU ${before[i].fvu.toFixed(3)} → ${after[i].fvu.toFixed(3)}`);
  assert.ok(fs.existsSync(path.join(dirA, 'adaptors.safetensors')) && fs.existsSync(path.join(dirA, 'feature_distill.json')));
  // 6 steps at once vs 4 then resume to 6
  const r1 = await setup('phi-s', 'linear');
  await distillFeatures(r1.student, new Batcher(r1.data, { batchSize: 4, seed: 5 }), cfg(6), { teachers: r1.teachers, outDir: path.join(TMP, 'r1') });
  const r2 = await setup('phi-s', 'linear');
  const d2 = path.join(TMP, 'r2');
  await distillFeatures(r2.student, new Batcher(r2.data, { batchSize: 4, seed: 5 }), cfg(4), { teachers: r2.teachers, outDir: d2 });
  const r3 = await setup('phi-s', 'linear');
  const resumed = Model.load(d2);
  await distillFeatures(resumed, new Batcher(r3.data, { batchSize: 4, seed: 5 }), cfg(6), { teachers: r3.teachers, outDir: d2, resume: true });
  assert.ok(resumed.params.every((v, i) => v === r1.student.params[i]), 'student weights bit-identical after resume');
  for (let t = 0; t < 2; t++) for (const [j, p] of r3.teachers[t].adaptor.params.entries()) assert.ok(p.data.every((v, i) => v === r1.teachers[t].adaptor.params[j].data[i]), `adaptor ${t + 1} ${p.name} bit-identical`);
});

function cli(args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'undo-native.js'), ...args], { encoding: 'utf8', env: { ...process.env, UNDO_CACHE: path.join(TMP, 'cache') } });
  return { status: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
}

test('CLI: distill --teacher A --teacher B --features L:L\' writes adaptors and statistics, reports each teacher\'s error, reuses the statistics', async () => {
  const tA = Model.create(tinyConfig('llama', { hiddenSize: 24, numHeads: 3, numKvHeads: 1, headDim: 8 }), { seed: 2, std: 0.3 });
  const tB = Model.create(tinyConfig('llama', { hiddenSize: 48, numHeads: 6, numKvHeads: 2, headDim: 8, numLayers: 3 }), { seed: 3, std: 0.3 });
  const dA = path.join(TMP, 'tA'), dB = path.join(TMP, 'tB');
  tA.save(dA);
  tB.save(dB);
  const out = path.join(TMP, 'cli-run');
  const args = ['distill', '--teacher', dA, '--teacher', dB, '--features', '1:1', '--features', '-1:-1', '--standardize', 'phi-s', '--student', 'micro',
    '--data', 'arithmetic:add', '--docs', '300', '--seq-len', '16', '--batch-size', '4', '--steps', '3', '--eval-every', '0', '--out', out, '--no-progress'];
  const r = cli(args);
  assert.is(r.status, 0, r.out);
  assert.match(r.out, /teacher 1 .*FVU/);
  assert.match(r.out, /teacher 2 .*FVU/);
  assert.ok(fs.existsSync(path.join(out, 'adaptors.safetensors')));
  assert.ok(fs.existsSync(path.join(out, 'feature-stats-teacher-1.json')) && fs.existsSync(path.join(out, 'feature-stats-teacher-2.f64')));
  const again = cli(args);
  assert.is(again.status, 0, again.out);
  assert.match(again.out, /statistics reused/);
  // bad input: a layer the teacher does not have, a width PHI-S cannot take, features without teachers
  const bad = cli([...args.slice(0, 5), '--features', '1:7', ...args.slice(9)]);
  assert.is.not(bad.status, 0);
  assert.match(bad.out, /layer 7/);
  const none = cli(['distill', '--features', '1:1', '--steps', '1', '--out', path.join(TMP, 'x'), '--no-progress']);
  assert.is.not(none.status, 0);
  assert.match(none.out, /--features needs --teacher/);
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));
test.run();
