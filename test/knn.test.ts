/**
 * DNKD's kNN teacher (lib/distill/knn_store.ts): the datastore holds the key model's hidden states and next tokens;
 * exact search and the kNN-LM distribution against a float64 brute force; leave-one-out; the HNSW index's recall
 * at the default settings; the λ-interpolation with the key model; byte-identical rebuilds; damaged stores refused
 * by name; distillation with DKD against the kNN teacher lowers its loss.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { documentsFrom } from '../lib/cli/unlearn';
import { Batcher, packDocuments, PackedDataset } from '../lib/data/datasets';
import { UndoError } from '../lib/core/errors';
import { Model } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import { buildKnnStore, KnnStore, KnnTeacher, knnLogProbs, resolveLayer } from '../lib/distill/knn_store';
import { distill } from '../lib/distill/distill';
import { spawnSync } from 'child_process';
import { ROOT, throwsWith, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-knn-'));
const T = 16;
const keyModel = Model.create(tinyConfig('llama'), { seed: 3, std: 0.3 });
const V = keyModel.config.vocabSize;
const D = keyModel.config.hiddenSize;

function windows(seed: number, n: number): PackedDataset {
  const docs = documentsFrom('arithmetic:add,mul', 'test data', 400, seed);
  const p = packDocuments(keyModel.tokenizer, docs, T, { seed });
  assert.ok(p.count >= n, `only ${p.count} windows`);
  return new PackedDataset(p.tokens.subarray(0, n * T + 1), T, n);
}
const DATA = windows(1, 40);

/** float64 brute force: the k nearest entries (ties: lower entry), skipping `skip`. */
function bruteForce(store: KnnStore, q: Float32Array, k: number, skip = -1): { e: number[]; d: number[] } {
  const all: { e: number; d: number }[] = [];
  for (let j = 0; j < store.entries; j++) {
    if (j === skip) continue;
    let s = 0;
    for (let c = 0; c < D; c++) {
      const x = q[c] - store.keys[j * D + c];
      s += x * x;
    }
    all.push({ e: j, d: s });
  }
  all.sort((a, b) => a.d - b.d || a.e - b.e);
  const top = all.slice(0, k);
  return { e: top.map((x) => x.e), d: top.map((x) => x.d) };
}

let store: KnnStore;

test('build: one entry per unmasked position, keys = the key model\'s hidden states there, reopened with checksums', async () => {
  const out = path.join(TMP, 'exact');
  store = await buildKnnStore(keyModel, DATA, { out, index: 'exact', layer: -1 });
  assert.is(store.entries, DATA.count * T);
  assert.is(store.dim, D);
  assert.is(store.manifest.keyModel.layer, keyModel.config.numLayers - 1);
  assert.ok(store.manifest.temperature > 0 && Number.isFinite(store.manifest.temperature));
  const re = KnnStore.open(out);
  assert.equal(Array.from(re.values.subarray(0, 50)), Array.from(store.values.subarray(0, 50)));
  // entry of window 7, position 5
  await keyModel.native.forward(DATA.inputs(7), 1, T);
  const h = keyModel.native.hidden(keyModel.config.numLayers - 1);
  const e = re.entriesAt([7 * T + 5])[0];
  assert.is(e, 7 * T + 5);
  for (let c = 0; c < D; c++) assert.ok(Math.abs(re.keys[e * D + c] - h[5 * D + c]) < 1e-5, `key component ${c}`);
  assert.is(re.values[e], DATA.targets(7)[5]);
  assert.is(resolveLayer(-2, 2), 0);
  throwsWith(() => resolveLayer(2, 2), /layer 2 does not exist: the model has 2 blocks/, 'layer out of range', UndoError);
});

test('exact search: the brute-force neighbours and distances; leave-one-out never returns the excluded entry', () => {
  const rng = new Rng(5);
  const n = 12, k = 7;
  const q = new Float32Array(n * D);
  const skip = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const j = rng.int(0, store.entries - 1);
    skip[i] = i % 2 ? j : -1;
    for (let c = 0; c < D; c++) q[i * D + c] = store.keys[j * D + c] + (i % 3 === 0 ? 0.05 * rng.normal() : 0);
  }
  const r = store.search(q, n, k, { exact: true, excludeEntries: skip });
  for (let i = 0; i < n; i++) {
    const bf = bruteForce(store, q.subarray(i * D, (i + 1) * D), k, skip[i]);
    assert.is(r.counts[i], k);
    for (let j = 0; j < k; j++) {
      assert.ok(Math.abs(r.distances[i * k + j] - bf.d[j]) < 1e-4 * (1 + bf.d[j]), `query ${i} rank ${j}: ${r.distances[i * k + j]} vs ${bf.d[j]}`);
      // the same entry, or one at the same distance (a tie within float32 rounding)
      const e = r.entries[i * k + j];
      if (e !== bf.e[j]) assert.ok(Math.abs(bf.d[bf.e.indexOf(e)] - bf.d[j]) < 1e-4 * (1 + bf.d[j]), `query ${i} rank ${j}: entry ${e} vs ${bf.e[j]}`);
      if (skip[i] >= 0) assert.not.equal(e, skip[i]);
    }
    if (skip[i] < 0 && i % 3 !== 0) assert.is(r.distances[i * k], 0); // the query's own key, not excluded
  }
});

test('kNN distribution: Σ_j 1[v_j = y]·exp(−d_j/τ) normalised, against a float64 reference; sparse, sums to 1', () => {
  const rng = new Rng(9);
  const n = 6, k = 9, tau = store.manifest.temperature;
  const q = new Float32Array(n * D);
  for (let i = 0; i < q.length; i++) q[i] = store.keys[(i % (store.entries * D))] + 0.1 * rng.normal();
  const r = store.search(q, n, k, { exact: true });
  const lp = knnLogProbs(store.values, r, n, V, tau);
  for (let i = 0; i < n; i++) {
    const bf = bruteForce(store, q.subarray(i * D, (i + 1) * D), k);
    const p = new Float64Array(V);
    let z = 0;
    for (let j = 0; j < k; j++) {
      const w = Math.exp(-bf.d[j] / tau);
      p[store.values[bf.e[j]]] += w;
      z += w;
    }
    let total = 0, support = 0;
    for (let y = 0; y < V; y++) {
      const ref = p[y] / z;
      const got = Math.exp(lp[i * V + y]);
      total += got;
      if (ref > 0) support++;
      assert.ok(Math.abs(got - ref) < 1e-5, `query ${i} token ${y}: ${got} vs ${ref}`);
      if (ref === 0) assert.is(lp[i * V + y], -Infinity);
    }
    assert.ok(Math.abs(total - 1) < 1e-5);
    assert.ok(support <= k);
  }
});

test('HNSW (usearch) at the default settings: recall@16 ≥ 0.95 against exact search on held-out queries (a weak graph scores lower); same store, same index file', async () => {
  // a wider key model over varied text (biographies), 9600 entries
  const wide = Model.create(tinyConfig('llama', { hiddenSize: 64, headDim: 16 }), { seed: 4, std: 0.3 });
  const docs = documentsFrom('biographies:all', 'test data', 0, 1);
  const p = packDocuments(wide.tokenizer, docs, 32, { seed: 1 });
  const big = new PackedDataset(p.tokens.subarray(0, 300 * 32 + 1), 32, 300);
  const held = new PackedDataset(p.tokens.subarray(300 * 32, 310 * 32 + 1), 32, 10);
  const out = path.join(TMP, 'hnsw');
  const s = await buildKnnStore(wide, big, { out, index: 'hnsw' });
  assert.ok(s.hasIndex);
  const n = held.count * 32;
  const inputs = new Int32Array(n);
  for (let w = 0; w < held.count; w++) inputs.set(held.inputs(w), w * 32);
  await wide.native.forward(inputs, held.count, 32);
  const q = Float32Array.from(wide.native.hidden(s.manifest.keyModel.layer).subarray(0, n * 64));
  const k = 16;
  const recall = (st: KnnStore) => {
    const a = st.search(q, n, k), e = st.search(q, n, k, { exact: true });
    let hit = 0;
    for (let i = 0; i < n; i++) {
      // by distance: entries tied at the k-th distance count as found
      const kth = e.distances[i * k + k - 1];
      for (let j = 0; j < k; j++) if (a.distances[i * k + j] <= kth * (1 + 1e-5) + 1e-7) hit++;
    }
    return hit / (n * k);
  };
  const r = recall(s);
  assert.ok(r >= 0.95, `recall ${r}`);
  assert.ok(s.manifest.index.recall! >= 0.95, `recall recorded at build ${s.manifest.index.recall}`);
  const weak = await buildKnnStore(wide, big, { out: path.join(TMP, 'weak'), index: 'hnsw', hnsw: { connectivity: 2, expansionAdd: 2, expansionSearch: 1 } });
  const rw = recall(weak);
  assert.ok(rw < r, `a degree-2 graph with ef 1 finds less: ${rw} vs ${r}`);
  const again = await buildKnnStore(wide, big, { out: path.join(TMP, 'hnsw2'), index: 'hnsw' });
  assert.is(again.manifest.files['index.usearch'].sha256, s.manifest.files['index.usearch'].sha256);
  assert.is(again.manifest.files['keys.f32'].sha256, s.manifest.files['keys.f32'].sha256);
  const reopened = KnnStore.open(out);
  const a = s.search(q.subarray(0, 10 * 64), 10, k), b = reopened.search(q.subarray(0, 10 * 64), 10, k);
  assert.equal(Array.from(b.entries), Array.from(a.entries));
});

test('teacher: leave-one-out on the store\'s own data; λ-interpolation with the key model\'s softmax', async () => {
  const batcher = new Batcher(DATA, { batchSize: 2, seed: 0 });
  const b = batcher.next();
  const lam = 0.3;
  const teacher = new KnnTeacher(store, keyModel, { k: 5, lambda: lam, exact: true });
  assert.ok(teacher.sameData(DATA));
  assert.not.ok(teacher.sameData(windows(2, 40)));
  const win = Int32Array.from([batcher.epochOrder(0)[0], batcher.epochOrder(0)[1]]);
  const r = await teacher.prepare(b, win);
  const rows = b.B * b.T;
  for (let i = 0; i < rows; i++) {
    const own = win[Math.floor(i / T)] * T + (i % T);
    for (let j = 0; j < r.counts[i]; j++) assert.not.equal(r.entries[i * 5 + j], own, `row ${i} found itself`);
  }
  const got = await teacher.rows(3, 4);
  const z = await keyModel.native.logits(Int32Array.from([3, 4, 5, 6]));
  const kp = knnLogProbs(store.values, r, 4, V, teacher.temperature, undefined, 3);
  for (let i = 0; i < 4; i++) {
    let m = -Infinity, s = 0;
    for (let v = 0; v < V; v++) m = Math.max(m, z[i * V + v]);
    for (let v = 0; v < V; v++) s += Math.exp(z[i * V + v] - m);
    let total = 0;
    for (let v = 0; v < V; v++) {
      const ref = lam * Math.exp(kp[i * V + v]) + (1 - lam) * Math.exp(z[i * V + v] - m) / s;
      const p = Math.exp(got[i * V + v]);
      total += p;
      assert.ok(Math.abs(p - ref) < 1e-6 + 1e-5 * ref, `row ${i} token ${v}: ${p} vs ${ref}`);
    }
    assert.ok(Math.abs(total - 1) < 1e-5);
  }
});

test('damaged stores are refused by name: truncated keys, changed values, no manifest', () => {
  const src = path.join(TMP, 'exact');
  const bad = path.join(TMP, 'bad');
  fs.cpSync(src, bad, { recursive: true });
  const keys = path.join(bad, 'keys.f32');
  fs.truncateSync(keys, fs.statSync(keys).size - 4);
  throwsWith(() => KnnStore.open(bad), /keys\.f32 has \d+ bytes; the manifest says/, 'truncated keys', UndoError);
  fs.rmSync(bad, { recursive: true });
  fs.cpSync(src, bad, { recursive: true });
  const vals = path.join(bad, 'values.i32');
  const buf = fs.readFileSync(vals);
  buf[0] ^= 1;
  fs.writeFileSync(vals, buf);
  throwsWith(() => KnnStore.open(bad), /values\.i32 does not match its sha256/, 'changed values', UndoError);
  fs.rmSync(path.join(bad, 'manifest.json'));
  throwsWith(() => KnnStore.open(bad), /is not a kNN store \(no manifest\.json\)/, 'no manifest', UndoError);
});

test('distill with DKD against the kNN teacher: the loss falls; same seed, same parameters', async () => {
  const run = async () => {
    const student = Model.create(tinyConfig('llama'), { seed: 21 });
    const teacher = new KnnTeacher(store, keyModel, { exact: true });
    const losses: number[] = [];
    await distill(student, teacher, new Batcher(DATA, { batchSize: 4, seed: 1 }), {
      steps: 30, gradAccum: 1, lr: 3e-3, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0,
    }, { loss: 'dkd', params: { alpha: 1, beta: 1 }, hardWeight: 0.5, onStep: (s) => losses.push(s.loss) });
    return { losses, params: Float32Array.from(student.params) };
  };
  const a = await run();
  const head = a.losses.slice(0, 5).reduce((x, y) => x + y) / 5, tail = a.losses.slice(-5).reduce((x, y) => x + y) / 5;
  assert.ok(tail < 0.8 * head, `loss ${head} → ${tail}`);
  const b = await run();
  assert.equal(Array.from(b.params.subarray(0, 64)), Array.from(a.params.subarray(0, 64)));
});


function cli(args: string[]): { status: number | null; out: string; err: string } {
  const env = { ...process.env };
  delete env.UNDO_ISA;
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'undo-native.js'), ...args], { cwd: ROOT, env, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

test('CLI: knn-store build / info, distill --knn-teacher --loss dkd:α,β with leave-one-out; bad input is a one-line error', () => {
  const model = path.join(TMP, 'keymodel');
  keyModel.save(model);
  const st = path.join(TMP, 'cli-store');
  const data = ['--data', 'arithmetic:add', '--docs', '300', '--seq-len', '16', '--seed', '4'];
  const b = cli(['knn-store', 'build', '--model', model, ...data, '--index', 'hnsw', '--out', st, '--no-progress']);
  assert.is(b.status, 0, b.err + b.out);
  assert.match(b.out, /entries \(\d+ windows × 16\), keys of dimension 32/);
  assert.match(b.out, /HNSW \(usearch; M 16, ef_construction 128, ef_search 128; recall@16 [01]\.\d+ on \d+ sampled entries\)/);
  const info = cli(['knn-store', 'info', st]);
  assert.is(info.status, 0, info.err);
  assert.match(info.out, /verified: every file's size and sha256 match the manifest/);
  const out = path.join(TMP, 'cli-student');
  const d = cli(['distill', '--knn-teacher', st, '--loss', 'dkd:1,2', '--hard-weight', '0.5', '--student', 'micro', ...data, '--steps', '4', '--batch-size', '2', '--eval-every', '0', '--out', out, '--no-progress']);
  assert.is(d.status, 0, d.err + d.out);
  assert.match(d.out, /kNN teacher: \d+ entries, k = 16, τ = [\d.e+-]+, λ = 1, HNSW search; the store holds this training data: each row leaves its own entry out/);
  assert.match(d.out, /distilled 4 steps \(dkd:1,2\)/);
  assert.ok(fs.existsSync(path.join(out, 'model.safetensors')));
  const bad = cli(['distill', '--knn-teacher', st, '--loss', 'rkl', '--student', 'micro', ...data, '--steps', '1', '--out', out, '--no-progress']);
  assert.is(bad.status, 1);
  assert.match(bad.err.split('\n')[0], /^error: loss rkl cannot be used with a kNN teacher \(reverse KL is infinite/);
  const none = cli(['distill', '--knn-teacher', path.join(TMP, 'nope'), '--student', 'micro', ...data, '--steps', '1', '--out', out, '--no-progress']);
  assert.is(none.status, 1);
  assert.match(none.err.split('\n')[0], /^error: .*nope is not a kNN store \(no manifest\.json\)/);
  const spec = cli(['distill', '--knn-teacher', st, '--loss', 'dkd:1', '--student', 'micro', ...data, '--steps', '1', '--out', out, '--no-progress']);
  assert.is(spec.status, 1);
  assert.match(spec.err, /dkd takes α,β/);
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));
test.run();
