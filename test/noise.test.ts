/**
 * lib/unlearn/noise.ts: UNDO's noise step (θ ← (1−α)·θ + α·β·N) and the distribution-constrained projection, on tiny
 * models: determinism across thread counts and calls, keying of the noise by tensor name, the statistics of pure
 * noise, shrink-only vectors, option validation, and the rank/quantile matching of the projection.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UndoError } from '../lib/core/errors';
import { Model, ModelConfig } from '../lib/models/model';
import { native, withThreads } from '../lib/core/native';
import {
  argsortF32, invNormalCdf, NOISE_DEFAULT_STD, noiseModel, noiseModelSync, noiseStream, projectToDistribution, projectToDistributionSync, targetQuantiles,
  xavierBound,
} from '../lib/unlearn/noise';
import { bitEqual, randn, throwsUndo, tinyConfig } from './helpers';


/** A model with random matrices and random (non-trivial) vectors, so that every tensor has something to shrink. */
function randomModel(cfg: ModelConfig, seed = 1): Model {
  const m = Model.create(cfg, { seed, init: 'normal', std: 0.05 });
  m.tensors.forEach((t, k) => {
    if (t.shape.length === 1) m.tensor(t.name).set(randn(t.numel, seed * 1000 + k, 0.5));
  });
  return m;
}




function moments(x: ArrayLike<number>): { mean: number; variance: number; maxAbs: number } {
  let s = 0;
  let maxAbs = 0;
  for (let i = 0; i < x.length; i++) {
    s += x[i];
    maxAbs = Math.max(maxAbs, Math.abs(x[i]));
  }
  const mean = s / x.length;
  let v = 0;
  for (let i = 0; i < x.length; i++) v += (x[i] - mean) ** 2;
  return { mean, variance: v / x.length, maxAbs };
}


// ---------------------------------------------------------------------------------------------------------------
// noiseModel

test('noise is bit-identical for 1, 2 and 4 threads and across calls (xavier and normal)', () => {
  // hidden 256: the 259×256 embedding has more than 65536 elements, so fillRandom really runs multi-threaded
  const cfg = tinyConfig('llama', { hiddenSize: 256, numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64, intermediateSize: 96 });
  assert.ok(cfg.vocabSize * cfg.hiddenSize > 65536);
  const base = randomModel(cfg);
  for (const dist of ['xavier', 'normal'] as const) {
    const runs = [1, 2, 4, 1].map((threads) => {
      const m = base.clone();
      withThreads(threads, () => noiseModelSync(m, { alpha: 0.6, beta: 0.1, seed: 111, dist }));
      return m.params;
    });
    assert.not.ok(bitEqual(runs[0], base.params), `${dist}: the model changed`);
    for (let k = 1; k < runs.length; k++) assert.ok(bitEqual(runs[0], runs[k]), `${dist}: run ${k} differs from run 0`);
  }
});

test('noise of a tensor depends only on (seed, tensor name, index): fillRandom with stream noiseStream(name)', () => {
  const m = randomModel(tinyConfig('llama'));
  const before = m.clone();
  const alpha = 0.7;
  const beta = 0.3;
  noiseModelSync(m, { alpha, beta, seed: 5 });
  const keep = Math.fround(1 - alpha);
  const scale = Math.fround(alpha * beta);
  for (const t of m.tensors) {
    const old = before.tensor(t.name);
    const expect = new Float32Array(t.numel);
    if (t.shape.length === 2) {
      const a = xavierBound(t.shape);
      const noise = new Float32Array(t.numel);
      native.fillRandomSync(noise, 5, noiseStream(t.name), 'uniform', -a, a);
      for (let i = 0; i < t.numel; i++) expect[i] = keep * old[i] + scale * noise[i];
    } else {
      for (let i = 0; i < t.numel; i++) expect[i] = keep * old[i];
    }
    assert.ok(bitEqual(m.tensor(t.name), expect), t.name);
  }
});

test('noise of a tensor does not change when other tensors are added (more layers, untied head)', () => {
  const small = randomModel(tinyConfig('llama', { numLayers: 2 }));
  const big = new Model(tinyConfig('llama', { numLayers: 3, tieWordEmbeddings: false }));
  const bigBase = randomModel(big.config, 9);
  big.params.set(bigBase.params);
  for (const t of small.tensors) big.tensor(t.name).set(small.tensor(t.name)); // shared names start equal
  noiseModelSync(small, { alpha: 1, beta: 1, seed: 3 });
  noiseModelSync(big, { alpha: 1, beta: 1, seed: 3 });
  for (const t of small.tensors) assert.ok(bitEqual(small.tensor(t.name), big.tensor(t.name)), t.name);
  // the added tensors got noise too (the untied head is a matrix), and tensors of equal shape get different noise
  const head = big.tensor('lm_head.weight');
  assert.ok(moments(head).maxAbs > 0 && moments(head).maxAbs <= xavierBound([big.config.vocabSize, big.config.hiddenSize]));
  assert.not.ok(bitEqual(big.tensor('model.layers.0.self_attn.q_proj.weight'), big.tensor('model.layers.2.self_attn.q_proj.weight')));
  assert.not.ok(bitEqual(head, big.tensor('model.embed_tokens.weight')));
  // another seed, other noise
  const other = randomModel(tinyConfig('llama', { numLayers: 2 }));
  noiseModelSync(other, { alpha: 1, beta: 1, seed: 4 });
  assert.not.ok(bitEqual(other.tensor('model.embed_tokens.weight'), small.tensor('model.embed_tokens.weight')));
});

test('noise is independent of Model.create\'s init with the same seed', () => {
  const cfg = tinyConfig('llama');
  const init = Model.create(cfg, { seed: 7, init: 'xavier' });
  const noised = init.clone();
  noiseModelSync(noised, { alpha: 1, beta: 1, seed: 7 });
  for (const t of init.tensors) {
    if (t.shape.length !== 2) continue;
    const a = init.tensor(t.name);
    const b = noised.tensor(t.name);
    let dot = 0;
    let na = 0;
    let nb = 0;
    for (let i = 0; i < a.length; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    const corr = dot / Math.sqrt(na * nb);
    assert.ok(Math.abs(corr) < 6 / Math.sqrt(a.length), `${t.name}: correlation with the init ${corr}`);
  }
});

test('alpha = 0 leaves the model bit-identical (any beta, dist)', () => {
  for (const family of ['llama', 'gemma2'] as const) {
    const m = randomModel(tinyConfig(family));
    m.tensor('model.embed_tokens.weight')[3] = -0;
    const before = m.params.slice();
    noiseModelSync(m, { alpha: 0, beta: 1, seed: 1 });
    noiseModelSync(m, { alpha: 0, beta: 0.5, dist: 'normal', std: 0.1 });
    assert.ok(bitEqual(m.params, before), family);
  }
});

test('alpha = 1, beta = 1: pure Xavier-uniform noise per matrix (bound, mean, variance); vectors become 0', () => {
  const cfg = tinyConfig('llama', { hiddenSize: 64, intermediateSize: 128, numHeads: 4, numKvHeads: 2, headDim: 16, tieWordEmbeddings: false });
  const m = randomModel(cfg);
  noiseModelSync(m, { alpha: 1, beta: 1, seed: 42 });
  let matrices = 0;
  for (const t of m.tensors) {
    const w = m.tensor(t.name);
    if (t.shape.length === 1) {
      assert.ok(w.every((x) => x === 0), `${t.name}: vector not zeroed`);
      continue;
    }
    matrices++;
    const bound = xavierBound(t.shape);
    assert.is(bound, Math.sqrt(6 / (t.shape[1] + t.shape[0])));
    const { mean, variance, maxAbs } = moments(w);
    const n = w.length;
    const expectVar = (bound * bound) / 3;
    assert.ok(maxAbs <= Math.fround(bound), `${t.name}: max |x| ${maxAbs} > bound ${bound}`);
    assert.ok(maxAbs > 0.99 * bound, `${t.name}: max |x| ${maxAbs} far below bound ${bound}`);
    // CLT: sd(mean) = bound/√(3n), relative sd(variance) = √(0.8/n) for a uniform distribution; 6σ
    assert.ok(Math.abs(mean) < (6 * bound) / Math.sqrt(3 * n), `${t.name}: mean ${mean}`);
    assert.ok(Math.abs(variance / expectVar - 1) < 6 * Math.sqrt(0.8 / n), `${t.name}: variance ${variance} vs ${expectVar}`);
  }
  assert.is(matrices, 2 + 7 * cfg.numLayers);
});

test('alpha = 1, beta = 1, dist normal: N(0, std) with the default std 0.02 and a given std', () => {
  const cfg = tinyConfig('gemma2', { hiddenSize: 64, intermediateSize: 128, headDim: 16 });
  for (const std of [undefined, 0.1]) {
    const m = randomModel(cfg);
    noiseModelSync(m, { alpha: 1, beta: 1, seed: 2, dist: 'normal', std });
    const s = std ?? NOISE_DEFAULT_STD;
    assert.is(NOISE_DEFAULT_STD, 0.02);
    for (const t of m.tensors) {
      const w = m.tensor(t.name);
      if (t.shape.length === 1) {
        assert.ok(w.every((x) => x === 0), `${t.name}: vector not zeroed`);
        continue;
      }
      const { mean, variance } = moments(w);
      const n = w.length;
      assert.ok(Math.abs(mean) < (6 * s) / Math.sqrt(n), `${t.name}: mean ${mean}`);
      // relative sd of the sample variance of a normal: √(2/n)
      assert.ok(Math.abs(variance / (s * s) - 1) < 6 * Math.sqrt(2 / n), `${t.name}: std ${Math.sqrt(variance)} vs ${s}`);
    }
  }
});

test('vectors (norm gains) are only scaled by (1−alpha), whatever beta, seed and dist; beta = 0 is a pure shrink', () => {
  for (const family of ['llama', 'gemma2'] as const) {
    const base = randomModel(tinyConfig(family));
    const a = base.clone();
    const b = base.clone();
    const c = base.clone();
    noiseModelSync(a, { alpha: 0.3, beta: 1, seed: 1 });
    noiseModelSync(b, { alpha: 0.3, beta: 0.1, seed: 2, dist: 'normal' });
    noiseModelSync(c, { alpha: 0.3, beta: 0 });
    const keep = Math.fround(0.7);
    for (const t of base.tensors) {
      const old = base.tensor(t.name);
      if (t.shape.length === 1) {
        for (let i = 0; i < t.numel; i++) {
          assert.is(a.tensor(t.name)[i], Math.fround(keep * old[i]), `${t.name}[${i}]`);
          assert.ok(Math.abs(a.tensor(t.name)[i] - 0.7 * old[i]) <= 1e-7 * Math.abs(old[i]));
        }
        assert.ok(bitEqual(a.tensor(t.name), b.tensor(t.name)), `${t.name}: depends on beta/seed/dist`);
      } else {
        assert.not.ok(bitEqual(a.tensor(t.name), b.tensor(t.name)), `${t.name}: matrices should get noise`);
      }
      // beta = 0 shrinks matrices too, with no noise
      for (let i = 0; i < t.numel; i++) assert.is(c.tensor(t.name)[i], Math.fround(keep * old[i]));
    }
  }
  // Gemma stores w in (1+w): alpha = 1 sets every norm to the identity scale (w = 0)
  const g = randomModel(tinyConfig('gemma2'));
  noiseModelSync(g, { alpha: 1, beta: 0.1, seed: 1 });
  for (const t of g.tensors) if (t.shape.length === 1) assert.ok(g.tensor(t.name).every((x) => x === 0), t.name);
});

test('invalid options throw an UndoError naming the option and value, before touching the model', () => {
  const m = randomModel(tinyConfig('llama'));
  const before = m.params.slice();
  throwsUndo(() => noiseModelSync(m, { alpha: 1.5, beta: 0.1 }), /alpha.*\[0, 1\].*1\.5/);
  throwsUndo(() => noiseModelSync(m, { alpha: -0.1, beta: 0.1 }), /alpha.*-0\.1/);
  throwsUndo(() => noiseModelSync(m, { alpha: NaN, beta: 0.1 }), /alpha.*NaN/);
  throwsUndo(() => noiseModelSync(m, { alpha: '0.5' as unknown as number, beta: 0.1 }), /alpha.*"0\.5"/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: 2 }), /beta.*\[0, 1\].*2/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: -1 }), /beta.*-1/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: Infinity }), /beta.*Infinity/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: 0.1, seed: -1 }), /seed.*-1/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: 0.1, seed: 1.5 }), /seed.*1\.5/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: 0.1, dist: 'gauss' as 'normal' }), /dist.*"gauss"/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: 0.1, dist: 'normal', std: 0 }), /std.*0/);
  throwsUndo(() => noiseModelSync(m, { alpha: 0.5, beta: 0.1, std: 0.1 }), /std.*xavier/);
  assert.ok(bitEqual(m.params, before), 'the model changed');
});

// ---------------------------------------------------------------------------------------------------------------
// projectToDistribution

test('invNormalCdf matches reference quantiles (mpmath, 50 digits) to 1e-14 and is odd', () => {
  const ref: Array<[number, number]> = [
    [0.975, 1.9599639845400543], [0.9, 1.2815515655446004], [0.999, 3.0902323061678136],
    [1e-10, -6.361340902404057], [0.3, -0.5244005127080408], [0.6, 0.2533471031357998],
    [0.02, -2.053748910631823],
  ];
  for (const [p, x] of ref) assert.ok(Math.abs(invNormalCdf(p) - x) <= 1e-14 * Math.abs(x), `Φ⁻¹(${p}) = ${invNormalCdf(p)}, want ${x}`);
  assert.is(invNormalCdf(0.5), 0);
  assert.is(invNormalCdf(0), -Infinity);
  assert.is(invNormalCdf(1), Infinity);
  assert.ok(Number.isNaN(invNormalCdf(1.1)) && Number.isNaN(invNormalCdf(-0.1)));
  for (const p of [2 ** -40, 2 ** -10, 0.125, 0.25, 0.375]) assert.is(invNormalCdf(1 - p), -invNormalCdf(p), `odd at ${p}`); // 1−p exact
  let prev = -Infinity;
  for (let k = 1; k < 10000; k++) {
    const x = invNormalCdf(k / 10000);
    assert.ok(x > prev, `not increasing at ${k}`);
    prev = x;
  }
});

test('argsortF32 is a stable sort (ties in index order)', () => {
  const x = new Float32Array([3, -1, 0, 2, -1, -0, 7.5, 0, -1e-30, 2]);
  const order = Array.from(argsortF32(x));
  assert.equal(order, [1, 4, 8, 5, 2, 7, 3, 9, 0, 6]);
  const r = randn(5000, 3);
  const o = argsortF32(r);
  for (let k = 1; k < r.length; k++) assert.ok(r[o[k - 1]] < r[o[k]] || (r[o[k - 1]] === r[o[k]] && o[k - 1] < o[k]));
});

/** Spearman's rank correlation, ties given their average rank. */
function spearman(a: Float32Array, b: Float32Array): number {
  const ranks = (x: Float32Array): Float64Array => {
    const o = argsortF32(x);
    const r = new Float64Array(x.length);
    for (let k = 0; k < o.length;) {
      let j = k;
      while (j + 1 < o.length && x[o[j + 1]] === x[o[k]]) j++;
      for (let q = k; q <= j; q++) r[o[q]] = (k + j) / 2;
      k = j + 1;
    }
    return r;
  };
  const ra = ranks(a);
  const rb = ranks(b);
  const ma = moments(ra);
  const mb = moments(rb);
  let c = 0;
  for (let i = 0; i < a.length; i++) c += (ra[i] - ma.mean) * (rb[i] - mb.mean);
  return c / a.length / Math.sqrt(ma.variance * mb.variance);
}

test('projection: eta = 0 is a no-op; eta = 1 gives the target quantiles exactly, in the weights\' rank order', () => {
  const cfg = tinyConfig('llama', { hiddenSize: 64, intermediateSize: 128, headDim: 16 });
  const base = randomModel(cfg);
  const same = base.clone();
  projectToDistributionSync(same, { eta: 0, target: 'normal', std: 0.05 });
  assert.ok(bitEqual(same.params, base.params));

  for (const target of ['normal', 'uniform'] as const) {
    const m = base.clone();
    projectToDistributionSync(m, { eta: 1, target, std: 0.05 });
    for (const t of m.tensors) {
      const old = base.tensor(t.name);
      const w = m.tensor(t.name);
      if (t.shape.length === 1) {
        assert.ok(bitEqual(w, old), `${t.name}: vectors are not projected`);
        continue;
      }
      const order = argsortF32(old);
      const tq = targetQuantiles(w.length, target, 0.05);
      for (let r = 0; r < w.length; r++) {
        const v = w[order[r]];
        assert.is(v, Math.fround(tq[r]), `${target} ${t.name}: rank ${r}`);
        if (r > 0) assert.ok(v >= w[order[r - 1]], `${target} ${t.name}: order broken at rank ${r}`);
      }
      const sorted = w.slice().sort();
      for (let r = 0; r < w.length; r++) assert.ok(Math.abs(sorted[r] - tq[r]) <= 1e-6 * Math.max(1, Math.abs(tq[r])));
      assert.ok(spearman(old, w) > 1 - 1e-9, `${target} ${t.name}: Spearman ${spearman(old, w)}`);
      // the grid itself: mean 0, and std ≈ 0.05 (the midpoint quantile grid is slightly narrower than the law)
      const mo = moments(w);
      assert.ok(Math.abs(mo.mean) < 1e-9, `${target} ${t.name}: mean ${mo.mean}`);
      assert.ok(Math.abs(Math.sqrt(mo.variance) / 0.05 - 1) < 0.01, `${target} ${t.name}: std ${Math.sqrt(mo.variance)}`);
      if (target === 'uniform') assert.ok(mo.maxAbs < 0.05 * Math.sqrt(3));
    }
  }
});

test('projection: intermediate eta interpolates between the weights and the eta = 1 result, keeping the order', () => {
  const base = randomModel(tinyConfig('gemma2'));
  const full = base.clone();
  projectToDistributionSync(full, { eta: 1, target: 'normal', std: 0.02 });
  const half = base.clone();
  projectToDistributionSync(half, { eta: 0.3, target: 'normal', std: 0.02 });
  for (const t of base.tensors) {
    if (t.shape.length !== 2) continue;
    const w0 = base.tensor(t.name);
    const w1 = full.tensor(t.name);
    const wh = half.tensor(t.name);
    for (let i = 0; i < w0.length; i++) {
      const expect = 0.7 * w0[i] + 0.3 * w1[i];
      assert.ok(Math.abs(wh[i] - expect) <= 1e-7 * Math.max(Math.abs(expect), 1e-3), `${t.name}[${i}]: ${wh[i]} vs ${expect}`);
    }
    const order = argsortF32(w0);
    for (let r = 1; r < order.length; r++) assert.ok(wh[order[r]] >= wh[order[r - 1]], `${t.name}: order broken`);
    assert.ok(spearman(w0, wh) > 1 - 1e-9);
  }
});

test('projection: normal target sample statistics; default std is the Xavier std; match selects tensors', () => {
  const cfg = tinyConfig('llama', { hiddenSize: 64, intermediateSize: 128, headDim: 16 });
  const base = randomModel(cfg);
  const m = base.clone();
  const isMlp = (name: string) => name.includes('.mlp.');
  projectToDistributionSync(m, { eta: 1, target: 'normal', match: isMlp });
  for (const t of m.tensors) {
    const w = m.tensor(t.name);
    if (!isMlp(t.name)) {
      assert.ok(bitEqual(w, base.tensor(t.name)), `${t.name}: not selected but changed`);
      continue;
    }
    const xs = Math.sqrt(2 / (t.shape[0] + t.shape[1]));
    const mo = moments(w);
    assert.ok(Math.abs(mo.mean) < 1e-9 * xs, `${t.name}: mean ${mo.mean}`);
    assert.ok(Math.abs(Math.sqrt(mo.variance) / xs - 1) < 0.01, `${t.name}: std ${Math.sqrt(mo.variance)} vs Xavier ${xs}`);
    // extremes: the quantiles at 0.5/n and 1 − 0.5/n
    const n = w.length;
    assert.ok(Math.abs(mo.maxAbs - Math.fround(-xs * invNormalCdf(0.5 / n))) < 1e-7);
  }
  const u = base.clone();
  projectToDistributionSync(u, { eta: 1, target: 'uniform' });
  for (const t of u.tensors) {
    if (t.shape.length !== 2) continue;
    const bound = xavierBound(t.shape);
    const n = t.numel;
    const { maxAbs } = moments(u.tensor(t.name));
    assert.ok(Math.abs(maxAbs - Math.fround((bound * (n - 1)) / n)) === 0, `${t.name}: max ${maxAbs} vs Xavier bound ${bound}`);
  }
});

test('projection onto a reference sample: same size gives the sample exactly, other sizes interpolate it', () => {
  const base = randomModel(tinyConfig('llama'));
  const name = 'model.layers.1.mlp.down_proj.weight';
  const n = base.tensor(name).length;
  const only = (x: string) => x === name;
  // a skewed reference distribution (lognormal), sorted
  const sample = randn(n, 77, 0.5).map(Math.exp).sort();
  const m = base.clone();
  projectToDistributionSync(m, { eta: 1, target: sample, match: only });
  const w = m.tensor(name);
  const order = argsortF32(base.tensor(name));
  for (let r = 0; r < n; r++) assert.is(w[order[r]], sample[r], `rank ${r}`);
  assert.ok(bitEqual(w.slice().sort(), sample));

  // a sample of a different size: the result stays within its range and follows its quantiles
  const small = randn(501, 78, 0.5).map(Math.exp).sort();
  const m2 = base.clone();
  projectToDistributionSync(m2, { eta: 1, target: small, match: only });
  const w2 = m2.tensor(name).slice().sort();
  assert.is(w2[0], small[0]);
  assert.is(w2[n - 1], small[500]);
  const median = (w2[n / 2 - 1] + w2[n / 2]) / 2;
  assert.ok(Math.abs(median - small[250]) < 1e-3 * small[250], `median ${median} vs ${small[250]}`);
  // a one-element sample makes every weight that value
  const m3 = base.clone();
  projectToDistributionSync(m3, { eta: 1, target: new Float32Array([0.25]), match: only });
  assert.ok(m3.tensor(name).every((x) => x === 0.25));
});

test('projection: invalid options throw an UndoError naming the option, before touching the model', () => {
  const m = randomModel(tinyConfig('llama'));
  const before = m.params.slice();
  throwsUndo(() => projectToDistributionSync(m, { eta: 1.2, target: 'normal' }), /eta.*\[0, 1\].*1\.2/);
  throwsUndo(() => projectToDistributionSync(m, { eta: -0.5, target: 'normal' }), /eta.*-0\.5/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: 'laplace' as 'normal' }), /target.*"laplace"/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: 'normal', std: -1 }), /std.*-1/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: new Float32Array([1, 0]) }), /sorted/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: new Float32Array([0, NaN]) }), /non-finite/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: new Float32Array(0) }), /empty/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: new Float32Array([0]), std: 1 }), /std/);
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: 'normal', match: () => false }), /no weight matrix/);
  m.tensor('model.layers.0.mlp.up_proj.weight')[5] = NaN;
  before[m.tensorInfo('model.layers.0.mlp.up_proj.weight').offset + 5] = NaN;
  throwsUndo(() => projectToDistributionSync(m, { eta: 0.5, target: 'normal' }), /up_proj.*non-finite/);
  assert.ok(bitEqual(m.params, before), 'the model changed');
});

// ---------------------------------------------------------------------------------------------------------------
// the pooled forms (noiseModel / projectToDistribution) against the blocking ones

test('noiseModel (pooled) gives the bits of noiseModelSync; bad options reject with ERR_ARGUMENT', async () => {
  const cfg = tinyConfig('llama', { hiddenSize: 256, numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64, intermediateSize: 96 });
  const base = randomModel(cfg);
  for (const opts of [{ alpha: 0.6, beta: 0.1, seed: 111 }, { alpha: 0.3, beta: 0.5, seed: 2, dist: 'normal' as const, std: 0.05 },
    { alpha: 0.25, beta: 0, seed: 0 }]) {
    const a = base.clone(), b = base.clone();
    noiseModelSync(a, opts);
    await noiseModel(b, opts);
    assert.not.ok(bitEqual(a.params, base.params), 'the model changed');
    assert.ok(bitEqual(a.params, b.params), `pooled noise differs for ${JSON.stringify(opts)}`);
  }
  const e = await noiseModel(base.clone(), { alpha: 2, beta: 0 }).then(() => null, (x: UndoError) => x);
  assert.ok(e instanceof UndoError && e.code === 'ERR_ARGUMENT', String(e));
});

test('projectToDistribution (pooled) gives the bits of projectToDistributionSync for each target', async () => {
  // up_proj 96×256 = 24576 and the embedding 259×256 > SLICE/2: several slices per tensor
  const cfg = tinyConfig('llama', { hiddenSize: 256, numLayers: 1, numHeads: 4, numKvHeads: 2, headDim: 64, intermediateSize: 96 });
  const base = randomModel(cfg);
  const sample = Float32Array.from(randn(1001, 9, 0.05)).sort();
  for (const opts of [{ eta: 0.5, target: 'normal' as const }, { eta: 1, target: 'uniform' as const }, { eta: 0.3, target: 'uniform' as const, std: 0.01 },
    { eta: 0.7, target: sample }]) {
    const a = base.clone(), b = base.clone();
    projectToDistributionSync(a, opts);
    await projectToDistribution(b, opts);
    assert.not.ok(bitEqual(a.params, base.params), 'the model changed');
    assert.ok(bitEqual(a.params, b.params), `pooled projection differs for eta ${opts.eta} ${opts.target instanceof Float32Array ? 'sample' : opts.target}`);
  }
  const bad = base.clone();
  bad.tensor(bad.tensors.find((t) => t.shape.length === 2)!.name)[7] = NaN;
  const e = await projectToDistribution(bad, { eta: 0.5, target: 'normal' }).then(() => null, (x: UndoError) => x);
  assert.ok(e instanceof UndoError && e.code === 'ERR_ARGUMENT' && /non-finite/.test(e.message), String(e));
});

test('native argsortF32 (blocking and pooled) is the stable order of the TypeScript reference; rankBlend checks its arguments', async () => {
  const x = randn(200003, 4, 1);
  for (let i = 0; i < x.length; i += 97) x[i] = x[(i * 31) % x.length]; // ties
  x[5] = -0; x[6] = 0; x[7] = -0; x[8] = Infinity; x[9] = -Infinity;
  const ref = argsortF32(x);
  const o1 = new Uint32Array(x.length), o2 = new Uint32Array(x.length);
  native.argsortF32Sync(x, o1);
  await native.argsortF32(x, o2);
  const same = (a: Uint32Array, b: Uint32Array) => a.length === b.length && a.every((v, i) => v === b[i]);
  assert.ok(same(o1, ref) && same(o2, ref));
  const w = new Float32Array(4);
  throwsUndo(() => native.rankBlendSync(w, Uint32Array.of(0, 1, 2, 9), new Float64Array(4), 0.5), /out of range/);
  throwsUndo(() => native.rankBlendSync(w, new Uint32Array(3), new Float64Array(4), 0.5), /must hold 4/);
  const e = await native.argsortF32(x, new Uint32Array(3)).then(() => null, (err: UndoError) => err);
  assert.ok(e instanceof UndoError && e.code === 'ERR_SHAPE', String(e));
});

test.run();
