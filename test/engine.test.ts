/**
 * Engine behaviour on tiny random models: KV-cache decoding vs full forwards, greedy generation,
 * determinism across thread counts, layer hooks (hidden states, injected gradients, frozen tensors),
 * per-token loss weights, atomic save/load, event-loop responsiveness and bad-input errors.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as v8 from 'v8';
import * as vm from 'vm';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIds } from '../lib/models/generate';
import { Model, ModelConfig, presetConfig, saveDirAtomic } from '../lib/models/model';
import { native } from '../lib/core/native';
import { Rng } from '../lib/core/rng';
import { UndoError } from '../lib/core/errors';
import { readSafetensors } from '../lib/formats/safetensors';
import { FIXTURES, assertClose, bitEqual, forEachIsaAsync, randn, rejectsWith, throwsWith, tinyConfig } from './helpers';


function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const r = new Rng(seed);
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.floor(r.next() * vocab);
  return a;
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `undo-engine-${tag}-`));
}




// ---------------------------------------------------------------------------------------------
// 1. KV-cache decoding equals full forwards
// ---------------------------------------------------------------------------------------------

const CACHE_CASES: Array<[string, ModelConfig]> = [
  ['llama', tinyConfig('llama')],
  ['llama untied', tinyConfig('llama', { tieWordEmbeddings: false })],
  ['gemma2 (sliding window 4 < 12 tokens)', tinyConfig('gemma2')],
  ['gemma2 (sliding window 1)', tinyConfig('gemma2', { slidingWindow: 1 })],
];

for (const [name, cfg] of CACHE_CASES) {
  test(`KV cache: prefill + 1-token steps give the full forward's logits at every position (${name})`, async () => {
    const B = 2, T = 12, P = 5, V = cfg.vocabSize;
    const m = Model.create(cfg, { seed: 3, std: 0.2 });
    const ids = randomIds(B * T, V, 11);
    await forEachIsaAsync(async (isa) => {
      await m.native.forward(ids, B, T);
      const full = await m.native.logits(null);
      m.native.cacheBegin(B, T);
      const prompt = new Int32Array(B * P);
      for (let b = 0; b < B; b++) prompt.set(ids.subarray(b * T, b * T + P), b * P);
      const check = (got: Float32Array, pos: number) => {
        assert.is(got.length, B * V);
        for (let b = 0; b < B; b++) {
          const want = full.subarray((b * T + pos) * V, (b * T + pos + 1) * V);
          assertClose(got.subarray(b * V, (b + 1) * V), want, 1e-5, `${isa} row ${b} position ${pos}`);
        }
      };
      check(await m.native.cacheStep(prompt, P), P - 1);
      for (let pos = P; pos < T; pos++) {
        const next = Int32Array.from({ length: B }, (_, b) => ids[b * T + pos]);
        check(await m.native.cacheStep(next, 1), pos);
      }
      // the cache is full now
      await rejectsWith(m.native.cacheStep(new Int32Array(B), 1), /cache full/i, 'overfull cache');
    });
  });
}

test('KV cache: a cacheStep whose ids do not match the batch of cacheBegin is rejected', async () => {
  const cfg = tinyConfig('llama');
  const m = Model.create(cfg, { seed: 1 });
  m.native.cacheBegin(2, 8);
  let threw = false;
  try {
    await m.native.cacheStep(new Int32Array(3), 3); // one row of 3 tokens, but the cache holds 2 rows
  } catch (e) {
    threw = true;
    assert.match((e as Error).message, /batch|rows/i);
  }
  assert.ok(threw, 'a batch mismatch must be rejected, not read past the ids');
  // the cache is still usable at position 0
  const logits = await m.native.cacheStep(new Int32Array([1, 2, 3, 4]), 2);
  assert.is(logits.length, 2 * cfg.vocabSize);
});

// ---------------------------------------------------------------------------------------------
// 2. Greedy generation equals argmax decoding by full forwards
// ---------------------------------------------------------------------------------------------

for (const family of ['llama', 'gemma2'] as const) {
  test(`generateIds (greedy) equals argmax decoding with repeated full forwards (${family})`, async () => {
    const cfg = tinyConfig(family);
    const m = Model.create(cfg, { seed: 5, std: 0.3 });
    const prompts = [randomIds(4, 256, 1), randomIds(4, 256, 2), randomIds(7, 256, 3), Int32Array.of(cfg.bosTokenId)];
    const maxNew = 9;
    const got = await generateIds(m, prompts, { maxNewTokens: maxNew, stopIds: [], batchSize: 2 });
    assert.is(got.length, prompts.length);
    for (let i = 0; i < prompts.length; i++) {
      const seq = Array.from(prompts[i]);
      for (let s = 0; s < maxNew; s++) {
        await m.native.forward(Int32Array.from(seq), 1, seq.length);
        const last = await m.native.logits(Int32Array.of(seq.length - 1));
        seq.push(argmax(last));
      }
      assert.equal(Array.from(got[i]), seq.slice(prompts[i].length), `prompt ${i}`);
    }
    // stop ids end a row early and are not returned
    const first = got[0][0];
    const stopped = await generateIds(m, [prompts[0]], { maxNewTokens: maxNew, stopIds: [first] });
    assert.equal(Array.from(stopped[0]), []);
  });
}

// ---------------------------------------------------------------------------------------------
// 3. Determinism
// ---------------------------------------------------------------------------------------------

async function trainThreeSteps(cfg: ModelConfig, B: number, T: number, threads: number): Promise<{ init: Float32Array; final: Float32Array; losses: number[] }> {
  native.setThreads(threads);
  const m = Model.create(cfg, { seed: 1234, std: 0.05 });
  const init = m.params.slice();
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) {
    const ids = randomIds(B * T + 1, cfg.vocabSize, 100 + s);
    m.native.zeroGradSync();
    const r = await m.native.trainStep(ids.subarray(0, B * T), ids.subarray(1), B, T, null, 0, -100);
    losses.push(r.loss);
    const norm = m.native.gradNormSync();
    await m.native.adamw({ lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: Math.min(1, 1 / (norm + 1e-6)) });
  }
  return { init, final: m.params.slice(), losses };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let mx = 0;
  for (let i = 0; i < a.length; i++) mx = Math.max(mx, Math.abs(a[i] - b[i]));
  return mx;
}

/*
 * Init is counter-based and every reduction has a fixed order that depends on the shape only (the norms'
 * weight gradients sum fixed row blocks, the attention backward splits the keys by shape, GEMM never splits
 * K), so training is bit-identical for any thread count: 1, 2 and 3 (oversubscribed) threads are compared.
 */
test('determinism: same seed → bit-identical init and training for 1, 2 and 3 threads', async () => {
  const prev = native.getThreads();
  try {
    for (const family of ['llama', 'gemma2'] as const) {
      const shapes: Array<[Partial<ModelConfig>, number, number]> = [
        [{ hiddenSize: 64, intermediateSize: 192 }, 4, 16],
        [{ hiddenSize: 96, intermediateSize: 288, numKvHeads: 1, headDim: 16, maxPositions: 256, ...(family === 'gemma2' ? { slidingWindow: 32, queryPreAttnScalar: 16 } : {}) }, 3, 160],
        [{ hiddenSize: 80, intermediateSize: 200, numHeads: 5, numKvHeads: 5, headDim: 16, maxPositions: 512 }, 1, 300],
      ];
      for (const [over, B, T] of shapes) {
        const cfg = tinyConfig(family, over);
        const what = `${family} d=${cfg.hiddenSize} B=${B} T=${T}`;
        const a1 = await trainThreeSteps(cfg, B, T, 1);
        const b1 = await trainThreeSteps(cfg, B, T, 1);
        assert.ok(bitEqual(a1.init, b1.init), `${what}: init is not reproducible`);
        assert.ok(bitEqual(a1.final, b1.final), `${what}: 1-thread training is not reproducible`);
        assert.equal(a1.losses, b1.losses);
        assert.not.ok(bitEqual(a1.final, a1.init), `${what}: training changed nothing`);
        for (const threads of [2, 3]) {
          const a = await trainThreeSteps(cfg, B, T, threads);
          assert.ok(bitEqual(a1.init, a.init), `${what}: init differs between 1 and ${threads} threads`);
          assert.ok(bitEqual(a1.final, a.final), `${what}: params after training differ between 1 and ${threads} threads (max ${maxAbsDiff(a1.final, a.final)})`);
          assert.equal(a.losses, a1.losses, `${what}: losses differ between 1 and ${threads} threads`);
        }
      }
      // a different seed gives different weights
      const cfg = tinyConfig(family);
      assert.not.ok(bitEqual(Model.create(cfg, { seed: 1 }).params, Model.create(cfg, { seed: 2 }).params));
    }
  } finally {
    native.setThreads(prev);
  }
});

// ---------------------------------------------------------------------------------------------
// 4. Hooks: hidden states, injected gradients, frozen tensors
// ---------------------------------------------------------------------------------------------

/** rmsnorm(x) · w (Llama) or · (1 + w) (Gemma) then the LM head, in float64, for one row. */
function headLogits(m: Model, x: Float32Array): Float64Array {
  const c = m.config;
  const d = c.hiddenSize;
  const gemma = c.family === 'gemma2';
  const w = m.tensor('model.norm.weight');
  const head = m.tensor(c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
  let ss = 0;
  for (let i = 0; i < d; i++) ss += x[i] * x[i];
  const r = 1 / Math.sqrt(ss / d + c.rmsNormEps);
  const h = new Float64Array(d);
  for (let i = 0; i < d; i++) h[i] = x[i] * r * (gemma ? 1 + w[i] : w[i]);
  const out = new Float64Array(c.vocabSize);
  for (let v = 0; v < c.vocabSize; v++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += h[i] * head[v * d + i];
    out[v] = c.finalLogitSoftcapping > 0 ? c.finalLogitSoftcapping * Math.tanh(s / c.finalLogitSoftcapping) : s;
  }
  return out;
}

for (const family of ['llama', 'gemma2'] as const) {
  test(`hidden(l) is layer l's output (the residual stream after block l) (${family})`, async () => {
    const cfg = tinyConfig(family, { numLayers: 3, tieWordEmbeddings: false });
    const m = Model.create(cfg, { seed: 9, std: 0.2 });
    const B = 2, T = 6, N = B * T, d = cfg.hiddenSize;
    const ids = randomIds(N, cfg.vocabSize, 4);
    await m.native.forward(ids, B, T);
    const logits = await m.native.logits(null);
    for (let l = 0; l < cfg.numLayers; l++) {
      const h = m.native.hidden(l);
      assert.is(h.length, N * d);
      // a model truncated after layer l (same weights) has hidden(l) as its last hidden state
      const t = Model.create({ ...cfg, numLayers: l + 1 });
      for (const ti of t.tensors) t.tensor(ti.name).set(m.tensor(ti.name));
      await t.native.forward(ids, B, T);
      assert.ok(bitEqual(t.native.hidden(l), h), `layer ${l}: hidden state differs from the truncated model's`);
      const tl = await t.native.logits(null);
      for (const row of [0, N - 1]) {
        const want = headLogits(t, h.subarray(row * d, (row + 1) * d));
        assertClose(tl.subarray(row * cfg.vocabSize, (row + 1) * cfg.vocabSize), want, 1e-5, `layer ${l} row ${row}`);
        if (l === cfg.numLayers - 1) assertClose(logits.subarray(row * cfg.vocabSize, (row + 1) * cfg.vocabSize), want, 1e-5, `logits row ${row}`);
      }
    }
    assert.throws(() => m.native.hidden(cfg.numLayers), /out of range/);
    assert.throws(() => m.native.hidden(-1), /out of range/);
  });

  test(`backward(false, hiddenGrads) at layer l: grads only at layers ≤ l and the embedding, equal to finite differences (${family})`, async () => {
    const L = 3;
    const cfg = tinyConfig(family, { numLayers: L, tieWordEmbeddings: false });
    const m = Model.create(cfg, { seed: 21, std: 0.15 });
    const B = 2, T = 5, N = B * T, d = cfg.hiddenSize;
    const ids = randomIds(N, 40, 8); // few distinct ids so embedding rows get gradient
    const l = 1;
    const g = randn(N * d, 77);
    const objective = async (): Promise<number> => {
      await m.native.forward(ids, B, T);
      const h = m.native.hidden(l);
      let s = 0;
      for (let i = 0; i < h.length; i++) s += g[i] * h[i];
      return s;
    };
    await objective();
    m.native.zeroGradSync();
    const hg: (Float32Array | null)[] = new Array(L).fill(null);
    hg[l] = g;
    await m.native.backward(false, hg);
    const grads = m.grads.slice();
    const gradOf = (name: string) => {
      const t = m.tensorInfo(name);
      return grads.subarray(t.offset, t.offset + t.numel);
    };
    const nonzero = (a: Float32Array) => a.some((x) => x !== 0);
    for (const t of m.tensors) {
      const layer = /^model\.layers\.(\d+)\./.exec(t.name);
      const gt = gradOf(t.name);
      if (layer && Number(layer[1]) > l) assert.not.ok(nonzero(gt), `${t.name} (above layer ${l}) got a gradient`);
      else if (t.name === 'model.norm.weight' || t.name === 'lm_head.weight') assert.not.ok(nonzero(gt), `${t.name} got a gradient`);
      else assert.ok(nonzero(gt), `${t.name} (at or below layer ${l}) got no gradient`);
    }
    // central finite differences of L = Σ g·hidden(l), at the largest-gradient entry of some tensors
    const names = [
      'model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight', 'model.layers.0.mlp.down_proj.weight',
      `model.layers.${l}.self_attn.v_proj.weight`, `model.layers.${l}.mlp.gate_proj.weight`, `model.layers.${l}.input_layernorm.weight`,
      `model.layers.${l}.post_attention_layernorm.weight`,
      ...(family === 'gemma2' ? [`model.layers.${l}.pre_feedforward_layernorm.weight`, 'model.layers.0.post_feedforward_layernorm.weight'] : []),
    ];
    for (const name of names) {
      const t = m.tensorInfo(name);
      const gt = gradOf(name);
      const i = argmax(Array.from(gt, Math.abs));
      const p = m.params;
      const orig = p[t.offset + i];
      const eps = 1e-2;
      p[t.offset + i] = orig + eps;
      const lp = await objective();
      p[t.offset + i] = orig - eps;
      const lm = await objective();
      p[t.offset + i] = orig;
      const fd = (lp - lm) / (2 * eps);
      const an = gt[i];
      assert.ok(Math.abs(fd - an) <= 5e-3 * Math.abs(an) + 1e-3, `${name}[${i}]: finite difference ${fd} vs gradient ${an}`);
    }
    // injecting at the last layer with useHead=false touches every layer but not the final norm / head
    await m.native.forward(ids, B, T);
    m.native.zeroGradSync();
    const top: (Float32Array | null)[] = new Array(L).fill(null);
    top[L - 1] = g;
    await m.native.backward(false, top);
    assert.not.ok(nonzero(m.grad('model.norm.weight')));
    assert.not.ok(nonzero(m.grad('lm_head.weight')));
    assert.ok(nonzero(m.grad(`model.layers.${L - 1}.mlp.up_proj.weight`)));
    // a hiddenGrads entry of the wrong size is a TypeError, not a read past its end
    assert.throws(() => m.native.backward(false, [new Float32Array(3)]), /rows×hidden/);
  });

  test(`frozen tensors get zero gradient, are unchanged by adamw, and do not change other gradients (${family})`, async () => {
    const cfg = tinyConfig(family, { tieWordEmbeddings: family === 'gemma2' });
    const B = 2, T = 8;
    const ids = randomIds(B * T + 1, cfg.vocabSize, 31);
    const step = async (m: Model) => {
      m.native.zeroGradSync();
      const r = await m.native.trainStep(ids.subarray(0, B * T), ids.subarray(1), B, T, null, 0, -100);
      return r.loss;
    };
    const ref = Model.create(cfg, { seed: 2, std: 0.1 });
    const refLoss = await step(ref);
    const isFrozen = [
      (n: string) => n.startsWith('model.layers.0.'),
      (n: string) => n === 'model.embed_tokens.weight' || n.startsWith('model.layers.0.'), // backward can stop at layer 1
      (n: string) => n.includes('self_attn.') || n.endsWith('layernorm.weight'),
    ];
    for (const [k, frozen] of isFrozen.entries()) {
      const m = Model.create(cfg, { seed: 2, std: 0.1 });
      m.setFrozen(frozen);
      assert.ok(m.tensors.some((t) => t.frozen) && m.tensors.some((t) => !t.frozen));
      const before = m.params.slice();
      const loss = await step(m);
      assert.is(loss, refLoss, 'freezing changes no forward value');
      for (const t of m.tensors) {
        const gt = m.grad(t.name);
        if (t.frozen) assert.ok(gt.every((x) => x === 0), `case ${k}: frozen ${t.name} got a gradient`);
        else assert.ok(bitEqual(gt, ref.grad(t.name)), `case ${k}: trainable ${t.name}'s gradient changed by freezing others`);
      }
      await m.native.adamw({ lr: 1e-2, weightDecay: 0.1 });
      for (const t of m.tensors) {
        const now = m.tensor(t.name);
        const was = before.subarray(t.offset, t.offset + t.numel);
        if (t.frozen) assert.ok(bitEqual(now, was), `case ${k}: frozen ${t.name} changed`);
        else assert.not.ok(bitEqual(now, was), `case ${k}: trainable ${t.name} did not change`);
      }
      // unfreezing restores training of those tensors
      m.setFrozen(frozen, false);
      await step(m);
      for (const t of m.tensors) assert.ok(m.grad(t.name).some((x) => x !== 0), `case ${k}: unfrozen ${t.name} got no gradient`);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// 5. Per-token loss weights and ignore index
// ---------------------------------------------------------------------------------------------

for (const family of ['llama', 'gemma2'] as const) {
  test(`headLoss with weights = Σ w·ce / Σ w from rowLoss; ignored rows count 0 (${family})`, async () => {
    const cfg = tinyConfig(family);
    const m = Model.create(cfg, { seed: 4, std: 0.2 });
    const B = 3, T = 7, N = B * T;
    const ids = randomIds(N, cfg.vocabSize, 12);
    const targets = randomIds(N, cfg.vocabSize, 13);
    await m.native.forward(ids, B, T);
    const ce = new Float32Array(N);
    const plain = await m.native.headLoss(targets, null, -100, 0, false, ce);
    assert.is(plain.counted, N);
    const mean = ce.reduce((a, b) => a + b, 0) / N;
    assert.ok(Math.abs(plain.loss - mean) <= 1e-5 * mean);
    // ce agrees with the logits
    const logits = await m.native.logits(null);
    for (const r of [0, 5, N - 1]) {
      const z = logits.subarray(r * cfg.vocabSize, (r + 1) * cfg.vocabSize);
      const mx = Math.max(...z);
      const lse = mx + Math.log(z.reduce((a, x) => a + Math.exp(x - mx), 0));
      assert.ok(Math.abs(ce[r] - (lse - z[targets[r]])) <= 1e-4 * Math.max(1, ce[r]), `row ${r}`);
    }

    const w = new Float32Array(N);
    const rng = new Rng(5);
    for (let i = 0; i < N; i++) w[i] = i % 5 === 0 ? 0 : rng.next() * 2;
    const masked = Int32Array.from(targets);
    for (const i of [1, 2, 9, N - 1]) masked[i] = -100;
    let num = 0;
    let den = 0;
    for (let i = 0; i < N; i++) {
      if (masked[i] === -100) continue;
      num += w[i] * ce[i];
      den += w[i];
    }
    const rows = new Float32Array(N).fill(NaN);
    const r = await m.native.headLoss(masked, w, -100, 0, false, rows);
    assert.ok(Math.abs(r.counted - den) <= 1e-5 * den, `counted ${r.counted} vs Σw ${den}`);
    assert.ok(Math.abs(r.loss - num / den) <= 1e-5 * (num / den), `loss ${r.loss} vs ${num / den}`);
    for (let i = 0; i < N; i++) {
      if (masked[i] === -100 || w[i] === 0) assert.is(rows[i], 0, `row ${i} (ignored or weight 0) has loss ${rows[i]}`);
      else assert.ok(Math.abs(rows[i] - ce[i]) <= 1e-6 * ce[i], `row ${i}: rowLoss is the unweighted ce`);
    }
    // an explicit normalizer replaces Σ w
    const r2 = await m.native.headLoss(masked, w, -100, 50, false, null);
    assert.ok(Math.abs(r2.loss - num / 50) <= 1e-5 * (num / 50));
    // the same with a custom ignore index
    const alt = Int32Array.from(masked, (t) => (t === -100 ? 7777 : t));
    const r3 = await m.native.headLoss(alt, w, 7777, 0, false, null);
    assert.ok(Math.abs(r3.loss - r.loss) <= 1e-6 * r.loss);
    // all rows ignored: loss 0, nothing counted
    const none = await m.native.headLoss(new Int32Array(N).fill(-100), null, -100, 0, false, null);
    assert.is(none.loss, 0);
    assert.is(none.counted, 0);
    // an out-of-vocabulary target that is not the ignore index is an error naming it
    const bad = Int32Array.from(targets);
    bad[3] = cfg.vocabSize + 4;
    await rejectsWith(m.native.headLoss(bad, null, -100, 0, false, null), new RegExp(`target id ${cfg.vocabSize + 4}`), 'bad target');
  });

  test(`loss weights shape the gradient: weight 0 equals ignoring the row, weight 2 doubles it (${family})`, async () => {
    const cfg = tinyConfig(family);
    const B = 2, T = 6, N = B * T;
    const ids = randomIds(N, cfg.vocabSize, 40);
    const targets = randomIds(N, cfg.vocabSize, 41);
    const m = Model.create(cfg, { seed: 6, std: 0.1 });
    const gradsFor = async (t: Int32Array, w: Float32Array | null, normalizer: number) => {
      m.native.zeroGradSync();
      const r = await m.native.trainStep(ids, t, B, T, w, normalizer, -100);
      return { loss: r.loss, grads: m.grads.slice() };
    };
    const w = new Float32Array(N).fill(1);
    w[3] = 0;
    w[8] = 0;
    const masked = Int32Array.from(targets);
    masked[3] = -100;
    masked[8] = -100;
    const a = await gradsFor(targets, w, N);
    const b = await gradsFor(masked, null, N);
    assert.ok(Math.abs(a.loss - b.loss) <= 1e-6 * b.loss);
    assertClose(a.grads, b.grads, 1e-6, 'weight-0 rows vs ignored rows');
    const c = await gradsFor(targets, new Float32Array(N).fill(2), N);
    const d = await gradsFor(targets, null, N);
    assert.ok(Math.abs(c.loss - 2 * d.loss) <= 1e-5 * c.loss);
    assertClose(c.grads, d.grads.map((x) => 2 * x), 1e-5, 'weight 2 doubles the gradient');
  });
}

// ---------------------------------------------------------------------------------------------
// 6. Save / load
// ---------------------------------------------------------------------------------------------

test('Model.save → Model.load round trip: identical params and config, HF config.json, atomic directory swap', () => {
  const root = tmpDir('save');
  try {
    for (const family of ['llama', 'gemma2'] as const) {
      const cfg = tinyConfig(family, { tieWordEmbeddings: family === 'llama' ? false : true });
      const m = Model.create(cfg, { seed: 8, init: 'xavier' });
      const dir = path.join(root, family);
      m.save(dir);
      assert.equal(fs.readdirSync(dir).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
      const loaded = Model.load(dir);
      assert.ok(bitEqual(loaded.params, m.params), `${family}: params differ after the round trip`);
      assert.equal(loaded.config, m.config);
      assert.equal(loaded.tensors.map((t) => t.name), m.tensors.map((t) => t.name));
      assert.is(loaded.tokenizer.vocabSize, m.tokenizer.vocabSize);

      const hf = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      assert.is(hf.model_type, family);
      assert.equal(hf.architectures, [family === 'llama' ? 'LlamaForCausalLM' : 'Gemma2ForCausalLM']);
      const expect: Record<string, unknown> = {
        vocab_size: cfg.vocabSize, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
        head_dim: 8, intermediate_size: 64, max_position_embeddings: 64, rms_norm_eps: cfg.rmsNormEps, rope_theta: 10000,
        tie_word_embeddings: cfg.tieWordEmbeddings, bos_token_id: 256, eos_token_id: 257, pad_token_id: 258,
      };
      if (family === 'gemma2') {
        Object.assign(expect, { sliding_window: 4, query_pre_attn_scalar: 8, attn_logit_softcapping: 50, final_logit_softcapping: 30, hidden_activation: 'gelu_pytorch_tanh' });
      } else {
        expect.hidden_act = 'silu';
      }
      for (const [k, v] of Object.entries(expect)) assert.equal(hf[k], v, `config.json field ${k}`);
      for (const k of Object.keys(hf)) assert.ok(/^[a-z0-9_]+$/.test(k), `config.json field ${k} is not in HF snake_case`);
      // the weights file holds exactly the model's tensors, F32, with HF names
      const st = readSafetensors(path.join(dir, 'model.safetensors'));
      assert.equal(st.names().sort(), m.tensors.map((t) => t.name).sort());
      assert.is(st.get('model.embed_tokens.weight').dtype, 'F32');

      // saving over an existing directory replaces it whole (stale files go) and leaves no temporaries
      fs.writeFileSync(path.join(dir, 'stale.txt'), 'x');
      m.params[0] += 1;
      m.save(dir, { 'extra.json': '{"a":1}\n' });
      assert.equal(fs.readdirSync(dir).sort(), ['config.json', 'extra.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
      assert.is(Model.load(dir).params[0], m.params[0]);
      const leftovers = fs.readdirSync(root).filter((n) => n.startsWith('.'));
      assert.equal(leftovers, [], 'no .tmp/.old directories left behind');
    }
    // a failure while filling the new directory leaves the old one intact and no temporary behind
    const dir = path.join(root, 'llama');
    const before = fs.readFileSync(path.join(dir, 'model.safetensors'));
    assert.throws(() => saveDirAtomic(dir, (tmp) => {
      fs.writeFileSync(path.join(tmp, 'model.safetensors'), 'half');
      throw new Error('disk full');
    }), /disk full/);
    assert.ok(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(before));
    assert.equal(fs.readdirSync(root).filter((n) => n.startsWith('.')), []);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('params/grads/adam views stay valid after the Model object is garbage-collected', async () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  // big enough (3 MB) that freed memory would be returned to the OS and a stale view would fault
  const views = (() => {
    const m = Model.create(presetConfig('tiny'), { seed: 1 });
    return { params: m.params, grads: m.grads, m: m.native.adamM(), want: m.params.slice() };
  })();
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
  Model.create(presetConfig('tiny'), { seed: 2 }); // reuse freed memory, if any was freed
  assert.ok(bitEqual(views.params, views.want), 'the params view changed after the model was collected');
  assert.ok(views.grads.every((x) => x === 0));
  assert.ok(views.m.every((x) => x === 0));
});

// ---------------------------------------------------------------------------------------------
// 7. The event loop keeps running during native work
// ---------------------------------------------------------------------------------------------

test('the event loop stays responsive while a long trainStep runs on the thread pool', async () => {
  const cfg = { ...presetConfig('small'), numLayers: 4 };
  const m = Model.create(cfg, { seed: 1 });
  let B = 2;
  const T = 128;
  for (let attempt = 0; ; attempt++) {
    const ids = randomIds(B * T + 1, cfg.vocabSize, attempt);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    const t0 = Date.now();
    m.native.zeroGradSync();
    const p = m.native.trainStep(ids.subarray(0, B * T), ids.subarray(1), B, T, null, 0, -100);
    const syncMs = Date.now() - t0;
    await p;
    const ms = Date.now() - t0;
    clearInterval(timer);
    assert.ok(syncMs < 100, `trainStep blocked the caller for ${syncMs} ms before returning its promise`);
    if (ms < 300 && attempt < 4) {
      B *= 2; // too quick on this machine to prove anything: make the step bigger
      continue;
    }
    assert.ok(ms >= 300, `the step took only ${ms} ms`);
    assert.ok(ticks >= 5, `only ${ticks} timer ticks during a ${ms} ms step`);
    break;
  }
});

// ---------------------------------------------------------------------------------------------
// 8. Bad input
// ---------------------------------------------------------------------------------------------

test('forward / cacheStep / trainStep reject out-of-vocabulary ids with a message naming the id', async () => {
  const cfg = tinyConfig('llama');
  const m = Model.create(cfg, { seed: 1 });
  const V = cfg.vocabSize;
  const ids = randomIds(8, V, 1);
  ids[5] = V;
  await rejectsWith(m.native.forward(ids, 2, 4), new RegExp(`token id ${V}\\b.*vocabulary`), 'forward id = vocab');
  ids[5] = -3;
  await rejectsWith(m.native.forward(ids, 2, 4), /token id -3\b/, 'forward negative id');
  ids[5] = V + 1000;
  await rejectsWith(m.native.trainStep(ids, randomIds(8, V, 2), 2, 4, null, 0, -100), new RegExp(`token id ${V + 1000}\\b`), 'trainStep');
  m.native.cacheBegin(1, 4);
  await rejectsWith(m.native.cacheStep(Int32Array.of(1, V), 2), new RegExp(`token id ${V}\\b`), 'cacheStep');
  // too long for max_position_embeddings
  await rejectsWith(m.native.forward(new Int32Array(cfg.maxPositions + 1), 1, cfg.maxPositions + 1), /max_position_embeddings/, 'too long');
  // ids shorter than B·T
  assert.throws(() => m.native.forward(new Int32Array(3), 2, 4), /ids has 3 elements, needs 8/);
  // logits: an empty row selection is empty (it once meant "all rows" to the native side and overflowed),
  // rows out of range are rejected
  await m.native.forward(randomIds(8, V, 3), 2, 4);
  assert.is((await m.native.logits(new Int32Array(0))).length, 0);
  await rejectsWith(m.native.logits(Int32Array.of(0, 8)), /row 8 out of range/, 'logits row');
  // logits(null) right after a forward that was not awaited: sized by the forward that ran before it, never
  // by a stale row count
  const big = randomIds(4 * 32, V, 4);
  const f = m.native.forward(big, 4, 32);
  const all = m.native.logits(null);
  await f;
  const got = await all;
  assert.ok(got.length === 8 * V || got.length === 128 * V, `logits(null) has ${got.length} values`);
  // the model still works after the rejections
  await m.native.forward(randomIds(8, V, 3), 2, 4);
  assert.is((await m.native.logits(null)).length, 8 * V);
});

test('Model.load errors name the file or field: truncated weights, unsupported model_type, hidden_size mismatch, missing dir', () => {
  const root = tmpDir('bad');
  try {
    const copy = (name: string) => {
      const dir = path.join(root, name);
      fs.mkdirSync(dir);
      for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(FIXTURES, 'llama', f), path.join(dir, f));
      return dir;
    };
    Model.load(copy('ok')); // the copy itself is fine

    const trunc = copy('truncated');
    const st = path.join(trunc, 'model.safetensors');
    fs.truncateSync(st, Math.floor(fs.statSync(st).size / 2));
    throwsWith(() => Model.load(trunc), /model\.safetensors/, 'truncated weights');
    fs.truncateSync(st, 5); // shorter than the header length field
    throwsWith(() => Model.load(trunc), /model\.safetensors/, 'truncated header');

    const mamba = copy('mamba');
    const cfgFile = path.join(mamba, 'config.json');
    const hf = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(cfgFile, JSON.stringify({ ...hf, model_type: 'mamba' }));
    const e1 = throwsWith(() => Model.load(mamba), /config\.json/, 'mamba');
    assert.match(e1.message, /model_type/);
    assert.match(e1.message, /mamba/);
    assert.match((e1 as UndoError).hint ?? '', /"gpt2"/); // the hint lists what is supported

    const wide = copy('wide');
    fs.writeFileSync(path.join(wide, 'config.json'), JSON.stringify({ ...hf, hidden_size: 48 }));
    const e2 = throwsWith(() => Model.load(wide), /model\.safetensors/, 'hidden_size mismatch');
    assert.match(e2.message, /shape/);

    const noField = copy('nofield');
    const { hidden_size: _drop, ...rest } = hf;
    fs.writeFileSync(path.join(noField, 'config.json'), JSON.stringify(rest));
    const e3 = throwsWith(() => Model.load(noField), /config\.json/, 'missing hidden_size');
    assert.match(e3.message, /hidden_size/);

    const badJson = copy('badjson');
    fs.writeFileSync(path.join(badJson, 'config.json'), '{"model_type": "llama",');
    throwsWith(() => Model.load(badJson), /config\.json/, 'invalid JSON');

    const noWeights = copy('noweights');
    fs.rmSync(path.join(noWeights, 'model.safetensors'));
    throwsWith(() => Model.load(noWeights), /model\.safetensors/, 'missing weights');

    throwsWith(() => Model.load(path.join(root, 'nope')), /nope.*does not exist/, 'missing directory');
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test.run();
