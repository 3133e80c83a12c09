/**
 * CUDA backend parity (lib/core/cuda.ts → build-cuda/Release/undo_cuda.node → native/cuda): every CUDA kernel against its
 * CPU twin (lib/core/native.ts) on the same inputs, on odd shapes.
 *
 *   Philox noise (fillRandom, noiseMix)   bit for bit (normal and uniform; seeds above 2^32; odd lengths)
 *   AdamW                                 bit for bit against the CPU's generic ISA (no FMA on either side),
 *                                         1e-6 against the best ISA; sumSquares 1e-6
 *   RMSNorm fwd/bwd, cross-entropy,       fp32 math on both sides in a different summation order:
 *   GEMM (cuBLAS or tiled, and tiled),    relative error (max |Δ| / max |reference|) ≤ 1e-5
 *   KD losses (full and top-k teachers)
 *   bf16 logits (cross-entropy, KD)       the CPU runs on the same bf16-rounded values, so the bf16 path is held
 *                                         to the fp32 tolerance: the only difference is the GPU's bf16 load
 *
 * Without a GPU (or without the addon) the GPU tests are skipped (uvu's Skipped count, and one line saying why);
 * the device-resolution tests run everywhere.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CudaBinding, loadCuda, resolveDevice } from '../lib/core/cuda';
import { UndoError } from '../lib/core/errors';
import { native, NativeKdOptions, withIsa } from '../lib/core/native';
import { Rng } from '../lib/core/rng';
import { bitEqual, randn, relErr } from './helpers';

const status = loadCuda();
const gpu = status.binding;
const TOL = 1e-5;

/** A test that needs the GPU: without one it is skipped (uvu counts it under Skipped) and says why. */
let announced = false;
function gpuTest(name: string, fn: (g: CudaBinding) => void): void {
  if (!gpu) {
    if (!announced) console.log(`  skip: the CUDA parity tests need a GPU: ${status.reason}`);
    announced = true;
    test.skip(`cuda: ${name}`, () => undefined);
    return;
  }
  test(`cuda: ${name}`, () => fn(gpu));
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(a, b);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(3)} > ${tol}`);
}

function closeNum(a: number, b: number, tol: number, what: string): void {
  if (a === b) return;  // infinities included
  const e = Math.abs(a - b) / Math.max(Math.abs(b), 1e-6);
  assert.ok(e <= tol, `${what}: ${a} vs CPU ${b} (relative ${e.toExponential(3)} > ${tol})`);
}

/** Round to bf16 (nearest even), as the addon's host conversion does. */
function bf16(a: Float32Array): Float32Array {
  const out = new Float32Array(a);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    if ((x & 0x7fffffff) > 0x7f800000) u[i] = (x | 0x400000) & 0xffff0000;
    else u[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 0) & 0xffff0000;
  }
  return out;
}

function mismatches(a: Float32Array, b: Float32Array): string {
  let n = 0;
  let first = -1;
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) {
      n++;
      if (first < 0) first = i;
    }
  }
  return n ? `${n} of ${a.length} differ (first at ${first}: ${a[first]} vs CPU ${b[first]})` : 'equal';
}

// ---------------------------------------------------------------- device resolution (runs everywhere)

test('cuda: loadCuda never throws and says why when there is no GPU', () => {
  const s = loadCuda();
  if (s.binding) {
    assert.ok(s.info && s.info.count > 0, 'a binding comes with a device');
    assert.is(s.reason, '');
  } else {
    assert.ok(s.reason.length > 0, 'a reason when unavailable');
    console.log(`  cuda unavailable here: ${s.reason}`);
  }
});

test('cuda: resolveDevice cpu / auto / cuda / unknown', () => {
  const cpu = resolveDevice('cpu', null);
  assert.is(cpu.kind, 'cpu');
  assert.is(cpu.cuda, null);
  assert.throws(() => resolveDevice('tpu', null), (e: unknown) => e instanceof UndoError && /unknown device "tpu"/.test((e as Error).message));
  const lines: string[] = [];
  const auto = resolveDevice('auto', (l) => lines.push(l));
  if (gpu) {
    assert.is(auto.kind, 'cuda');
    assert.ok(auto.cuda);
    assert.is(lines.length, 0);
    assert.is(resolveDevice('cuda', null).kind, 'cuda');
    assert.is(resolveDevice('CUDA', null).kind, 'cuda');
  } else {
    assert.is(auto.kind, 'cpu');
    assert.is(lines.length, 1, 'one notice line');
    assert.match(lines[0], /using the CPU/);
    assert.throws(() => resolveDevice('cuda', null), (e: unknown) => e instanceof UndoError && /--device cuda: /.test((e as Error).message));
  }
});

gpuTest('deviceInfo', (g) => {
  const info = g.deviceInfo();
  assert.ok(info.count >= 1);
  assert.ok(info.kernelsRun, 'the self-test kernel ran');
  assert.match(info.computeCapability ?? '', /^\d+\.\d+$/);
  console.log(`  cuda device: ${info.name} (cc ${info.computeCapability}, ${info.multiprocessors} SMs, gemm ${info.gemm})`);
});

// ---------------------------------------------------------------- Philox

gpuTest('fillRandom is bit-identical to the CPU (normal, uniform)', (g) => {
  const cases: [number, number, string][] = [
    [1, 0, 'w'], [3, 1, 'model.layers.0.mlp.up_proj.weight'], [7, 42, 'a'], [1001, 2 ** 40 + 12345, 'undo.noise/x'],
    [(1 << 20) + 3, 7, 'model.embed_tokens.weight'], [(1 << 21) + 1, 2 ** 52 + 1, 'big'],
  ];
  for (const [n, seed, stream] of cases) {
    for (const [kind, a, b] of [['normal', 0, 1], ['normal', 0.5, 0.02], ['uniform', -0.1, 0.1], ['uniform', 0, 1],
      ['uniform', -3, 5]] as const) {
      const c = new Float32Array(n);
      const d = new Float32Array(n).fill(NaN);
      native.fillRandomSync(c, seed, stream, kind, a, b);
      g.fillRandom(d, seed, stream, kind, a, b);
      assert.ok(bitEqual(d, c), `${kind}(${a}, ${b}) n=${n} seed=${seed} "${stream}": ${mismatches(d, c)}`);
    }
  }
});

gpuTest('noiseMix equals fillRandom + the TypeScript mix of lib/unlearn/noise.ts, bit for bit', (g) => {
  for (const [kind, a, b] of [['uniform', -0.07, 0.07], ['normal', 0, 0.02]] as const) {
    for (const [alpha, beta] of [[0.6, 0.1], [1, 1], [0.25, 0]]) {
      const n = 100003;
      const w = randn(n, 11, 0.05);
      const keep = Math.fround(1 - alpha), scale = Math.fround(alpha * beta);
      const noise = new Float32Array(n);
      native.fillRandomSync(noise, 5, 'undo.noise/t', kind, a, b);
      const want = new Float32Array(n);
      for (let i = 0; i < n; i++) want[i] = keep * w[i] + scale * noise[i];
      const got = new Float32Array(w);
      g.noiseMix(got, 5, 'undo.noise/t', kind, a, b, keep, scale);
      assert.ok(bitEqual(got, want), `${kind} α=${alpha} β=${beta}: ${mismatches(got, want)}`);
    }
  }
});

// ---------------------------------------------------------------- AdamW, norm

gpuTest('adamwUpdate: 10 steps, bit-identical to the generic CPU build, 1e-6 to the best ISA', (g) => {
  const n = 100_003;
  const p0 = randn(n, 1), m0 = new Float32Array(n), v0 = new Float32Array(n);
  const run = (update: (p: Float32Array, gr: Float32Array, m: Float32Array, v: Float32Array, h: object) => void) => {
    const p = new Float32Array(p0), m = new Float32Array(m0), v = new Float32Array(v0);
    for (let step = 1; step <= 10; step++) {
      const grad = randn(n, 100 + step, 0.1);
      update(p, grad, m, v, { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.5, step });
    }
    return { p, m, v };
  };
  const gr = run((p, gr2, m, v, h) => g.adamwUpdate(p, gr2, m, v, h as never));
  const generic = withIsa('generic', () => run((p, gr2, m, v, h) => native.adamwUpdateSync(p, gr2, m, v, h as never)));
  for (const k of ['p', 'm', 'v'] as const) assert.ok(bitEqual(gr[k], generic[k]), `${k}: ${mismatches(gr[k], generic[k])}`);
  const best = run((p, gr2, m, v, h) => native.adamwUpdateSync(p, gr2, m, v, h as never));
  for (const k of ['p', 'm', 'v'] as const) close(gr[k], best[k], 1e-6, `adamw ${k} vs ${native.getIsa()}`);
});

gpuTest('sumSquares', (g) => {
  for (const n of [0, 1, 4097, 1_000_003]) {
    const x = randn(n, n + 3, 0.3);
    closeNum(g.sumSquares(x), native.sumSquaresSync(x), 1e-6, `sumSquares n=${n}`);
  }
});

// ---------------------------------------------------------------- RMSNorm

gpuTest('rmsnorm forward and backward (Llama and Gemma offsets, accumulate, dw)', (g) => {
  for (const [rows, dim] of [[1, 7], [37, 1031], [5, 4099], [300, 64]]) {
    for (const unit of [false, true]) {
      const x = randn(rows * dim, rows + dim, 1.5), w = randn(dim, 3, 0.2), dy = randn(rows * dim, 9);
      const yc = new Float32Array(rows * dim), yg = new Float32Array(rows * dim);
      const rc = new Float32Array(rows), rg = new Float32Array(rows);
      native.rmsnormForwardSync(rows, dim, x, w, 1e-6, unit, yc, rc);
      g.rmsnormForward(rows, dim, x, w, 1e-6, unit, yg, rg);
      const tag = `rows=${rows} dim=${dim} unit=${unit}`;
      close(yg, yc, TOL, `y ${tag}`);
      close(rg, rc, TOL, `rstd ${tag}`);
      for (const accumulate of [false, true]) {
        const dx0 = randn(rows * dim, 77);
        const dxc = new Float32Array(dx0), dxg = new Float32Array(dx0);
        const dwc = randn(dim, 5), dwg = new Float32Array(dwc);
        native.rmsnormBackwardSync(rows, dim, x, w, rc, unit, dy, dxc, accumulate, dwc);
        g.rmsnormBackward(rows, dim, x, w, rc, unit, dy, dxg, accumulate, dwg);
        close(dxg, dxc, TOL, `dx ${tag} acc=${accumulate}`);
        close(dwg, dwc, TOL, `dw ${tag} acc=${accumulate}`);
      }
    }
  }
});

// ---------------------------------------------------------------- cross-entropy

gpuTest('crossEntropy: ignored rows, weights, soft-capping, fp32 and bf16 logits', (g) => {
  for (const [rows, vocab] of [[1, 5], [33, 1031], [7, 50_257]]) {
    const logits = randn(rows * vocab, rows * 7 + vocab, 3);
    const rng = new Rng(vocab);
    const targets = new Int32Array(rows).map((_, r) => (r % 5 === 3 ? -100 : rng.int(0, vocab - 1)));
    const weights = new Float32Array(rows).map((_, r) => (r % 4 === 1 ? 0 : 0.5 + (r % 3)));
    for (const softcap of [0, 30]) {
      for (const w of [null, weights]) {
        for (const half of [false, true]) {
          const z = half ? bf16(logits) : logits;
          const lc = new Float32Array(rows), lg = new Float32Array(rows);
          const dc = new Float32Array(rows * vocab), dg = new Float32Array(rows * vocab);
          native.crossEntropySync(rows, vocab, z, targets, -100, softcap, w, lc, dc);
          g.crossEntropy(rows, vocab, logits, targets, -100, softcap, w, lg, dg, { bf16: half });
          const tag = `${rows}x${vocab} softcap=${softcap} weights=${!!w} bf16=${half}`;
          close(lg, lc, TOL, `loss ${tag}`);
          close(dg, dc, TOL, `dlogits ${tag}`);
          // loss only
          const lo = new Float32Array(rows);
          g.crossEntropy(rows, vocab, logits, targets, -100, softcap, w, lo, null, { bf16: half });
          close(lo, lc, TOL, `loss-only ${tag}`);
        }
      }
    }
  }
});

// ---------------------------------------------------------------- GEMM

gpuTest('gemm: the three training forms, odd shapes, alpha/beta, strided, default backend and tiled', (g) => {
  const shapes: [number, number, number][] = [[1, 1, 1], [67, 45, 131], [128, 256, 64], [33, 517, 1029], [300, 7, 9]];
  for (const [M, N, K] of shapes) {
    for (const [ta, tb] of [[false, true], [false, false], [true, false]] as const) {
      for (const [alpha, beta] of [[1, 0], [0.5, 1], [-2, 0.25]]) {
        const lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
        const A = randn((ta ? K : M) * lda, M + N + K), B = randn((tb ? N : K) * ldb, M * 3 + K);
        const C0 = randn(M * ldc, 5);
        const want = new Float32Array(C0);
        native.gemmSync(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, want, ldc);
        for (const tiled of [false, true]) {
          const got = new Float32Array(C0);
          g.gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, got, ldc, { tiled });
          close(got, want, TOL, `gemm ${ta ? 'T' : 'N'}${tb ? 'T' : 'N'} ${M}x${N}x${K} α=${alpha} β=${beta} ${tiled ? 'tiled' : g.gemmBackend()}`);
        }
      }
    }
  }
});

// ---------------------------------------------------------------- KD losses

type KdOpts = Omit<NativeKdOptions, 'perRow' | 'grad'> & { bf16?: boolean };

/** Runs a loss on both devices (with and without the gradient) and compares loss, count, perRow, grad. */
function kdParity(g: CudaBinding, name: string, o: KdOpts, tag: string, tol = TOL): void {
  const n = o.rows * o.vocab;
  const cpuOpts: NativeKdOptions = { ...o, perRow: new Float32Array(o.rows), grad: new Float32Array(n) };
  if (o.bf16) {
    cpuOpts.student = bf16(o.student);
    if (o.teacher) cpuOpts.teacher = bf16(o.teacher);
  }
  delete (cpuOpts as { bf16?: boolean }).bf16;
  const c = native.kdLossSync(name, cpuOpts);
  const gper = new Float32Array(o.rows), ggrad = new Float32Array(n).fill(NaN);
  const r = g.kdLoss(name, { ...o, perRow: gper, grad: ggrad });
  assert.is(r.count, c.count, `${tag}: count`);
  closeNum(r.loss, c.loss, tol, `${tag}: loss`);
  close(gper, cpuOpts.perRow, tol, `${tag}: perRow`);
  close(ggrad, cpuOpts.grad!, tol, `${tag}: grad`);
  const lper = new Float32Array(o.rows);
  const l = g.kdLoss(name, { ...o, perRow: lper, grad: null });
  closeNum(l.loss, c.loss, tol, `${tag}: loss-only loss`);
  close(lper, cpuOpts.perRow, tol, `${tag}: loss-only perRow`);
}

function kdData(rows: number, vocab: number, seed: number, scale = 2) {
  const student = randn(rows * vocab, seed, scale);
  const teacher = randn(rows * vocab, seed + 1, scale);
  for (let i = 0; i < teacher.length; i++) teacher[i] += 0.7 * student[i];  // correlated, as in distillation
  const mask = new Uint8Array(rows).map((_, r) => (r % 6 === 4 ? 0 : 1));
  const rng = new Rng(seed);
  const targets = new Int32Array(rows).map((_, r) => (r % 5 === 2 ? -100 : rng.int(0, vocab - 1)));
  return { student, teacher, mask, targets };
}

/** Top-k teacher: k distinct ids per row (the teacher's top k, shuffled, or random ones) and their log-probs. */
function topk(teacher: Float32Array, rows: number, vocab: number, valid: number, k: number, seed: number, top: boolean) {
  const ids = new Int32Array(rows * k), logprobs = new Float32Array(rows * k);
  const rng = new Rng(seed);
  for (let r = 0; r < rows; r++) {
    const row = teacher.subarray(r * vocab, r * vocab + valid);
    let m = -Infinity;
    for (const x of row) m = Math.max(m, x);
    let s = 0;
    for (const x of row) s += Math.exp(x - m);
    const lse = m + Math.log(s);
    let chosen: number[];
    if (top) chosen = Array.from(row.keys()).sort((a, b) => row[b] - row[a]).slice(0, k);
    else chosen = Array.from(rng.permutation(valid).subarray(0, k));
    for (let j = 0; j < k; j++) {
      const jj = top ? (j * 7) % k : j;  // any order
      ids[r * k + j] = chosen[jj];
      logprobs[r * k + j] = row[chosen[jj]] - lse;
    }
  }
  return { ids, logprobs };
}

gpuTest('kdLoss, full teacher: every CUDA loss, temperatures, masks, padding, reductions, T² scaling', (g) => {
  const rows = 13, vocab = 1031, valid = 1000;
  const d = kdData(rows, vocab, 21);
  const variants: [string, Partial<KdOpts>][] = [
    ['fkl', {}], ['rkl', {}], ['jsd', { beta: 0.5 }], ['jsd', { beta: 0.1 }], ['jsd', { beta: 0.9 }], ['jsd', { beta: 0 }],
    ['jsd', { beta: 1 }], ['tvd', {}], ['skl', { alpha: 0.1 }], ['skl', { alpha: 0.7 }], ['srkl', { alpha: 0.1 }],
    ['srkl', { alpha: 0.7 }], ['taid', { t: 0.3 }], ['taid', { t: 0 }], ['taid', { t: 1 }], ['ce', {}], ['maxent', {}],
    ['entropy', {}],
  ];
  for (const [name, extra] of variants) {
    assert.ok(g.kdKinds.includes(name), `${name} is a CUDA loss`);
    for (const T of [1, 2.5]) {
      for (const [reduction, t2Scale, validVocab] of [['mean', false, 0], ['sum', true, valid]] as const) {
        const o: KdOpts = {
          rows, vocab, validVocab, student: d.student, teacher: d.teacher, mask: d.mask, temperature: T,
          reduction, t2Scale, gradScale: 0.75, ...extra,
        };
        if (name === 'ce') o.targets = d.targets.map((t) => (t >= (validVocab || vocab) ? 0 : t));
        kdParity(g, name, o, `${name} ${JSON.stringify(extra)} T=${T} ${reduction} t2=${t2Scale} valid=${validVocab}`);
      }
    }
  }
});

gpuTest('kdLoss, top-k teacher: fkl rkl jsd tvd skl srkl × renorm/bucket, k = 1, 8, 64', (g) => {
  const rows = 11, vocab = 1031, valid = 1024;
  const d = kdData(rows, vocab, 33);
  for (const k of [1, 8, 64]) {
    for (const top of [true, false]) {
      const t = topk(d.teacher, rows, vocab, valid, k, k + 5, top);
      for (const name of ['fkl', 'rkl', 'jsd', 'tvd', 'skl', 'srkl']) {
        for (const tail of ['renorm', 'bucket'] as const) {
          for (const T of [1, 2]) {
            const o: KdOpts = {
              rows, vocab, validVocab: valid, student: d.student, topkIds: t.ids, topkLogprobs: t.logprobs, k, tail,
              mask: d.mask, temperature: T, beta: 0.3, alpha: 0.2,
            };
            kdParity(g, name, o, `top-k ${name} ${tail} k=${k} ${top ? 'top' : 'random'} ids T=${T}`);
          }
        }
      }
    }
  }
});

gpuTest('kdLoss with bf16 logits (full and top-k) against the CPU on the same bf16 values', (g) => {
  const rows = 9, vocab = 2053;
  const d = kdData(rows, vocab, 45, 3);
  for (const name of ['fkl', 'rkl', 'jsd', 'ce']) {
    const o: KdOpts = { rows, vocab, student: d.student, teacher: d.teacher, mask: d.mask, targets: d.targets, bf16: true };
    kdParity(g, name, o, `bf16 ${name}`);
  }
  const t = topk(bf16(d.teacher), rows, vocab, vocab, 16, 3, true);
  for (const name of ['fkl', 'rkl']) {
    for (const tail of ['renorm', 'bucket'] as const) {
      const o: KdOpts = { rows, vocab, student: d.student, topkIds: t.ids, topkLogprobs: t.logprobs, k: 16, tail, bf16: true };
      kdParity(g, name, o, `bf16 top-k ${name} ${tail}`);
    }
  }
});

gpuTest('kdLoss on long rows (vocab 131079) and extreme logits (±1e4, −inf columns)', (g) => {
  const rows = 3, vocab = 131_079;
  const d = kdData(rows, vocab, 57, 4);
  for (const name of ['fkl', 'rkl', 'jsd']) kdParity(g, name, { rows, vocab, student: d.student, teacher: d.teacher }, `long ${name}`);
  const t = topk(d.teacher, rows, vocab, vocab, 32, 9, true);
  for (const name of ['fkl', 'rkl']) {
    for (const tail of ['renorm', 'bucket'] as const) {
      kdParity(g, name, { rows, vocab, student: d.student, topkIds: t.ids, topkLogprobs: t.logprobs, k: 32, tail },
        `long top-k ${name} ${tail}`);
    }
  }
  // large offsets and −inf in both (same columns): finite, and equal to the CPU
  const V = 517;
  const s = randn(4 * V, 70, 2), y = randn(4 * V, 71, 2);
  for (let i = 0; i < s.length; i++) {
    s[i] += 1e4;
    y[i] -= 1e4;
    if (i % 37 === 5) s[i] = y[i] = -Infinity;
  }
  for (const name of ['fkl', 'rkl', 'jsd', 'tvd', 'skl', 'srkl', 'entropy', 'maxent']) {
    const per = new Float32Array(4);
    if (name === 'maxent') continue;  // +∞ by definition with −inf columns; checked below
    kdParity(g, name, { rows: 4, vocab: V, student: s, teacher: y }, `extreme ${name}`);
    g.kdLoss(name, { rows: 4, vocab: V, student: s, teacher: y, perRow: per });
    assert.ok(per.every((x) => Number.isFinite(x)), `extreme ${name}: finite`);
  }
  const per = new Float32Array(4), pc = new Float32Array(4);
  native.kdLossSync('maxent', { rows: 4, vocab: V, student: s, perRow: pc });
  g.kdLoss('maxent', { rows: 4, vocab: V, student: s, perRow: per });
  assert.equal(Array.from(per), Array.from(pc), 'maxent with −inf columns');
});

gpuTest('kdLoss errors match the CPU (bad / repeated ids, bad targets, losses not on CUDA yet)', (g) => {
  const rows = 3, vocab = 50, k = 4;
  const d = kdData(rows, vocab, 81);
  const ids = new Int32Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  const logprobs = new Float32Array(rows * k).fill(-3);
  const err = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      return (e as Error).message;
    }
    return 'no error';
  };
  const both = (name: string, o: Omit<NativeKdOptions, 'perRow'>) => {
    const c = err(() => native.kdLossSync(name, { ...o, perRow: new Float32Array(rows) }));
    const gg = err(() => g.kdLoss(name, { ...o, perRow: new Float32Array(rows) }));
    assert.is(gg, c, `${name}: same error`);
    assert.is.not(c, 'no error');
  };
  const dup = new Int32Array(ids);
  dup[6] = dup[5];  // row 1 repeats an id at position 2
  dup[9] = -1;      // row 2 bad
  both('fkl', { rows, vocab, student: d.student, topkIds: dup, topkLogprobs: logprobs, k });
  const bad = new Int32Array(ids);
  bad[5] = 99;      // row 1 position 1 bad, then a repeat at position 3
  bad[7] = bad[4];
  both('rkl', { rows, vocab, student: d.student, topkIds: bad, topkLogprobs: logprobs, k });
  both('ce', { rows, vocab, student: d.student, targets: new Int32Array([3, 77, -5]) });
  assert.match(err(() => g.kdLoss('dkd', { rows, vocab, student: d.student, teacher: d.teacher, targets: new Int32Array(rows),
    perRow: new Float32Array(rows) })), /not implemented on CUDA yet/);
});

test.run();
