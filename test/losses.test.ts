/**
 * Distillation / unlearning losses (lib/train/losses.ts → native/cpu/kd_losses.cc): every loss on every ISA the
 * CPU supports, against a plain float64 reference written here (loss and gradient) and against central
 * finite differences of the native float32 loss, at T ∈ {0.5, 1, 2, 4}, with masked rows, ignored targets,
 * vocabulary padding (validVocab < vocab), vocabularies that are not multiples of the vector width (37,
 * 1031) and a shape big enough for the OpenMP-threaded path (33 × 1031 > 32768). Extreme logits (±1e4,
 * −inf entries) must give finite results equal to the reference. Also: the JSD convention (continuity at
 * β → 0 and β → 1, 4·JS at β = ½), reductions and scaling options, the errors of the API, and TaidSchedule.
 *
 * The float64 reference: log-softmax by max subtraction; the divergences written from their definitions;
 * gradients by the rule ∂L/∂z = (g − q·Σg)/T with g = ∂L/∂log q (and the closed forms for dkd/deltakd/ce/
 * maxent/entropy). Finite differences check the native gradient independently of that derivation.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { computeSync as compute, LOSS_NAMES, TaidSchedule } from '../lib/train/losses';
import type { LossName, LossOptions, TopKTeacher } from '../lib/train/losses';
import { native } from '../lib/core/native';
import { Rng } from '../lib/core/rng';
import { allFinite, forEachIsa, randn, throwsUndo } from './helpers';

// ---------------------------------------------------------------- cases

interface Variant {
  name: LossName;
  topk?: 'renorm' | 'bucket';
  beta?: number;
  alpha?: number;
  t?: number;
  lambda?: number;
}

const VARIANTS: Variant[] = [
  { name: 'fkl' }, { name: 'rkl' },
  { name: 'jsd', beta: 0.5 }, { name: 'jsd', beta: 0.1 }, { name: 'jsd', beta: 0.9 },
  { name: 'tvd' }, { name: 'skl', alpha: 0.1 }, { name: 'srkl', alpha: 0.1 }, { name: 'skl', alpha: 0.6 }, { name: 'srkl', alpha: 0.6 },
  { name: 'taid', t: 0.3 }, { name: 'taid', t: 1 },
  { name: 'dkd', alpha: 1, beta: 8 }, { name: 'deltakd', lambda: 0.3 }, { name: 'deltakd', lambda: 0 },
  { name: 'ce' }, { name: 'maxent' }, { name: 'entropy' },
];
for (const tail of ['renorm', 'bucket'] as const) {
  for (const v of [{ name: 'fkl' }, { name: 'rkl' }, { name: 'jsd', beta: 0.3 }, { name: 'tvd' }, { name: 'skl', alpha: 0.2 }, { name: 'srkl', alpha: 0.2 }] as Variant[])
    VARIANTS.push({ ...v, topk: tail });
}

const TEMPS = [0.5, 1, 2, 4];

function vtag(v: Variant): string {
  const p = [v.beta !== undefined ? `β=${v.beta}` : '', v.alpha !== undefined ? `α=${v.alpha}` : '', v.t !== undefined ? `t=${v.t}` : '',
    v.lambda !== undefined ? `λ=${v.lambda}` : '', v.topk ? `top-k ${v.topk}` : ''].filter((s) => s).join(' ');
  return p ? `${v.name}(${p})` : v.name;
}

interface Data {
  rows: number;
  vocab: number;
  validVocab: number;
  student: Float32Array;
  teacher: Float32Array;
  studentBase: Float32Array;
  teacherBase: Float32Array;
  targets: Int32Array;
  mask: Uint8Array;
  topk: TopKTeacher;
}

function usesTargets(v: Variant): boolean {
  return v.name === 'ce' || v.name === 'dkd' || (v.name === 'deltakd' && (v.lambda ?? 0.5) > 0);
}

/** Teacher top-k of the temperature-1 log-softmax, in descending order (as an inference server returns it). */
function topkOf(teacher: Float32Array, rows: number, vocab: number, validVocab: number, k: number): TopKTeacher {
  const ids = new Int32Array(rows * k);
  const logprobs = new Float32Array(rows * k);
  for (let r = 0; r < rows; r++) {
    const lp = logSoftmax(teacher, r * vocab, validVocab, 1);
    const order = Array.from({ length: validVocab }, (_, i) => i).sort((a, b) => lp[b] - lp[a] || a - b);
    for (let j = 0; j < k; j++) {
      ids[r * k + j] = order[j];
      logprobs[r * k + j] = lp[order[j]];
    }
  }
  return { ids, logprobs, k };
}

function makeData(rows: number, vocab: number, validVocab: number, k: number, seed: number): Data {
  const n = rows * vocab;
  const student = randn(n, seed, 2);
  const noise = randn(n, seed + 1, 1.5);
  const teacher = student.map((s, i) => 0.5 * s + noise[i]);
  const studentBase = randn(n, seed + 2, 1).map((x, i) => 0.7 * student[i] + x);
  const teacherBase = randn(n, seed + 3, 1).map((x, i) => 0.7 * teacher[i] + x);
  const r = new Rng(seed + 4);
  const targets = Int32Array.from({ length: rows }, () => r.int(0, validVocab - 1));
  const mask = new Uint8Array(rows).fill(1);
  if (rows >= 3) mask[1] = 0;
  if (rows >= 4) targets[2] = -100;  // an ignored row (for the losses with targets)
  for (let i = 0; i < n; i++) if (i % vocab >= validVocab) { student[i] = 50; teacher[i] = 50; } // padding must be ignored
  return { rows, vocab, validVocab, student, teacher, studentBase, teacherBase, targets, mask, topk: topkOf(teacher, rows, vocab, validVocab, k) };
}

function options(v: Variant, d: Data, T: number, t2: boolean): LossOptions {
  const o: LossOptions = {
    student: d.student, rows: d.rows, vocab: d.vocab, validVocab: d.validVocab, temperature: T, mask: d.mask,
    t2Scale: t2, reduction: 'sum', beta: v.beta, alpha: v.alpha, t: v.t, lambda: v.lambda,
  };
  if (v.name !== 'ce' && v.name !== 'maxent' && v.name !== 'entropy') o.teacher = v.topk ? d.topk : d.teacher;
  if (v.topk) o.tail = v.topk;
  if (usesTargets(v)) o.targets = d.targets;
  if (v.name === 'deltakd') {
    o.studentBase = d.studentBase;
    o.teacherBase = d.teacherBase;
  }
  return o;
}

// ---------------------------------------------------------------- float64 reference

function lae(a: number, b: number): number {
  if (a < b) [a, b] = [b, a];
  return b === -Infinity ? a : a + Math.log1p(Math.exp(b - a));
}

function logSoftmax(x: ArrayLike<number>, off: number, n: number, T: number): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < n; i++) m = Math.max(m, x[off + i]);
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp((x[off + i] - m) / T);
  const ls = Math.log(s);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (x[off + i] - m) / T - ls;
  return out;
}

/** Divergence between distributions given as log-probabilities; g = ∂L/∂log Q. */
function divergence(kind: string, lP: ArrayLike<number>, lQ: ArrayLike<number>, w: number): { L: number; g: Float64Array } {
  if (kind === 'jsd' && w === 0) kind = 'fkl';
  if (kind === 'jsd' && w === 1) kind = 'rkl';
  if (kind === 'skl' && w === 0) kind = 'fkl';
  if (kind === 'srkl' && w === 0) kind = 'rkl';
  const n = lQ.length;
  const g = new Float64Array(n);
  let L = 0;
  for (let i = 0; i < n; i++) {
    const lp = lP[i], lq = lQ[i], P = Math.exp(lp), Q = Math.exp(lq);
    switch (kind) {
      case 'fkl':
        if (P > 0) L += P * (lp - lq);
        g[i] = -P;
        break;
      case 'rkl':
        if (Q > 0) {
          L += Q * (lq - lp);
          g[i] = Q * (lq - lp + 1);
        }
        break;
      case 'jsd': { // (β KL(P‖M) + (1−β) KL(Q‖M)) / (β(1−β)), M = βP + (1−β)Q
        const lm = lae(Math.log(w) + lp, Math.log1p(-w) + lq);
        if (P > 0) L += (P * (lp - lm)) / (1 - w);
        if (Q > 0) {
          L += (Q * (lq - lm)) / w;
          g[i] = (Q * (lq - lm)) / w;
        }
        break;
      }
      case 'tvd':
        L += 0.5 * Math.abs(Q - P);
        g[i] = Q * 0.5 * Math.sign(Q - P);
        break;
      case 'skl': { // KL(P‖αP + (1−α)Q)
        const lr = lae(Math.log(w) + lp, Math.log1p(-w) + lq);
        if (P > 0) L += P * (lp - lr);
        if (P > 0 && Q > 0) g[i] = -(1 - w) * Q * Math.exp(lp - lr);
        break;
      }
      case 'srkl': { // KL(Q‖(1−α)P + αQ)
        const lr = lae(Math.log1p(-w) + lp, Math.log(w) + lq);
        if (Q > 0) {
          L += Q * (lq - lr);
          g[i] = Q * (lq - lr + 1 - w * Math.exp(lq - lr));
        }
        break;
      }
      default:
        throw new Error(kind);
    }
  }
  return { L, g };
}

/** Delta-KD's target z* = z_sb + (y − z_tb); a column that is −inf in any of the three is −inf. */
function deltaTarget(d: Data, off: number, Vv: number): number[] {
  return Array.from({ length: Vv }, (_, i) => {
    const a = d.studentBase[off + i], b = d.teacher[off + i], c = d.teacherBase[off + i];
    return a === -Infinity || b === -Infinity || c === -Infinity ? -Infinity : a + (b - c);
  });
}

/** ∂L/∂z = (g − q·Σg)/T over the valid columns. */
function zGrad(g: ArrayLike<number>, lq: ArrayLike<number>, T: number): Float64Array {
  let G = 0;
  for (let i = 0; i < g.length; i++) G += g[i];
  const out = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) {
    const q = Math.exp(lq[i]);
    out[i] = (g[i] - (q > 0 ? q * G : 0)) / T;
  }
  return out;
}

/**
 * One row: the loss (T² included where it applies) and d(loss)/dz over the valid columns, plus `mag`, the
 * size of the float32 rounding to expect in each gradient element: (q + p)·(1 + |log q| + |log p| + |L|)/T.
 * Gradients like q·(log q − log p − L)/T cancel terms of that size, and float32 log-probabilities carry an
 * absolute error of a few u·|log q|.
 */
function refRow(v: Variant, d: Data, r: number, T: number, t2: boolean): { L: number; dz: Float64Array; mag: Float64Array } {
  const res = refRowCore(v, d, r, T, t2);
  const Vv = d.validVocab, off = r * d.vocab;
  const lq = logSoftmax(d.student, off, Vv, T);
  let lp: Float64Array | null = null;
  if (v.name === 'taid') {
    const t = v.t!;
    lp = logSoftmax(Array.from({ length: Vv }, (_, i) => (t === 1 ? d.teacher[off + i] : (1 - t) * d.student[off + i] + t * d.teacher[off + i])), 0, Vv, T);
  } else if (v.name === 'deltakd') {
    lp = logSoftmax(deltaTarget(d, off, Vv), 0, Vv, T);
  } else if (!v.topk && v.name !== 'ce' && v.name !== 'maxent' && v.name !== 'entropy') {
    lp = logSoftmax(d.teacher, off, Vv, T);
  }
  const mag = new Float64Array(Vv);
  const s2 = t2 ? T * T : 1;
  for (let i = 0; i < Vv; i++) {
    const p = lp ? Math.exp(lp[i]) : 0;
    const l = Math.abs(lq[i]) + (lp && lp[i] > -Infinity ? Math.abs(lp[i]) : 0);
    mag[i] = (s2 * (Math.exp(lq[i]) + p) * (1 + (Number.isFinite(l) ? l : 0) + (Number.isFinite(res.L) ? Math.abs(res.L) : 0))) / T;
  }
  return { ...res, mag };
}

function refRowCore(v: Variant, d: Data, r: number, T: number, t2: boolean): { L: number; dz: Float64Array } {
  const Vv = d.validVocab, off = r * d.vocab;
  const s2 = t2 ? T * T : 1;
  const z = d.student, y = d.teacher;
  const lq = logSoftmax(z, off, Vv, T);
  const scaled = (L: number, dz: Float64Array) => ({ L: s2 * L, dz: dz.map((x) => s2 * x) });
  const w = v.name === 'jsd' ? v.beta ?? 0.5 : v.alpha ?? 0.1;
  if (v.topk) {
    const k = d.topk.k;
    const ids = Array.from(d.topk.ids.subarray(r * k, r * k + k));
    const lps = Array.from(d.topk.logprobs.subarray(r * k, r * k + k));
    const inS = new Set(ids);
    let qtail = 0;
    for (let i = 0; i < Vv; i++) if (!inS.has(i)) qtail += Math.exp(lq[i]);
    const bucket = v.topk === 'bucket';
    let psum = 0;
    for (const lp of lps) psum += Math.exp(lp);
    const ptail = bucket ? Math.max(0, 1 - psum) : 0;
    const a = [...lps.map((x) => x / T), ptail > 0 ? Math.log(ptail) / T : -Infinity];
    const norm = a.reduce(lae, -Infinity);
    const lP = a.map((x) => x - norm);
    const lQ = [...ids.map((i) => lq[i]), qtail > 0 ? Math.log(qtail) : -Infinity];
    const dz = new Float64Array(Vv);
    if (v.name === 'rkl' && !bucket) {
      const ls = lQ.slice(0, k).reduce(lae, -Infinity);
      const lQr = lQ.slice(0, k).map((x) => x - ls);
      const { L, g } = divergence('rkl', lP.slice(0, k), lQr, w);
      let G = 0;
      for (const x of g) G += x;
      ids.forEach((id, j) => { dz[id] = (g[j] - Math.exp(lQr[j]) * G) / T; });
      return scaled(L, dz);
    }
    const { L, g } = divergence(v.name, lP, lQ, w);
    const gf = new Float64Array(Vv);
    for (let i = 0; i < Vv; i++) if (!inS.has(i) && qtail > 0) gf[i] = (Math.exp(lq[i]) * g[k]) / qtail;
    ids.forEach((id, j) => { gf[id] = g[j]; });
    return scaled(L, zGrad(gf, lq, T));
  }
  switch (v.name) {
    case 'fkl': case 'rkl': case 'jsd': case 'tvd': case 'skl': case 'srkl': {
      const lp = logSoftmax(y, off, Vv, T);
      const { L, g } = divergence(v.name, lp, lq, w);
      return scaled(L, zGrad(g, lq, T));
    }
    case 'taid': {
      const t = v.t!;
      const yt = Array.from({ length: Vv }, (_, i) => (t === 1 ? y[off + i] : (1 - t) * z[off + i] + t * y[off + i]));
      const lp = logSoftmax(yt, 0, Vv, T);
      const { L } = divergence('fkl', lp, lq, 0);
      return scaled(L, Float64Array.from(lq, (x, i) => (Math.exp(x) - Math.exp(lp[i])) / T));
    }
    case 'dkd': {
      const gt = d.targets[r];
      const lp = logSoftmax(y, off, Vv, T);
      const others = (l: Float64Array) => Array.from(l).filter((_, i) => i !== gt).reduce(lae, -Infinity);
      const l1q = others(lq), l1p = others(lp);
      const qg = Math.exp(lq[gt]), pg = Math.exp(lp[gt]);
      const tckd = (pg > 0 ? pg * (lp[gt] - lq[gt]) : 0) + (l1p > -Infinity ? Math.exp(l1p) * (l1p - l1q) : 0);
      let nckd = 0;
      const dz = new Float64Array(Vv);
      const al = v.alpha ?? 1, be = v.beta ?? 8;
      for (let i = 0; i < Vv; i++) {
        if (i === gt) continue;
        if (l1p === -Infinity) { // no teacher mass outside the target: NCKD is 0
          dz[i] = (-al * (qg - pg) * Math.exp(lq[i] - l1q)) / T;
          continue;
        }
        const lqh = lq[i] - l1q, lph = lp[i] - l1p;
        const qh = Math.exp(lqh), ph = Math.exp(lph);
        if (ph > 0) nckd += ph * (lph - lqh);
        dz[i] = (-al * (qg - pg) * qh + be * (qh - ph)) / T;
      }
      dz[gt] = (al * (qg - pg)) / T;
      return scaled(al * tckd + be * nckd, dz);
    }
    case 'deltakd': {
      const lam = v.lambda ?? 0.5;
      const lp = logSoftmax(deltaTarget(d, off, Vv), 0, Vv, T);
      const { L: kl } = divergence('fkl', lp, lq, 0);
      const lq1 = logSoftmax(z, off, Vv, 1);
      const gt = d.targets[r];
      const ce = lam > 0 ? -lq1[gt] : 0;
      const dz = Float64Array.from(lq, (x, i) => (1 - lam) * s2 * (Math.exp(x) - Math.exp(lp[i])) / T + (lam > 0 ? lam * (Math.exp(lq1[i]) - (i === gt ? 1 : 0)) : 0));
      return { L: lam * ce + (1 - lam) * s2 * kl, dz };
    }
    case 'ce': {
      const gt = d.targets[r];
      return scaled(-lq[gt], Float64Array.from(lq, (x, i) => (Math.exp(x) - (i === gt ? 1 : 0)) / T));
    }
    case 'maxent': {
      let mean = 0;
      for (const x of lq) mean += x / Vv;
      return scaled(-Math.log(Vv) - mean, Float64Array.from(lq, (x) => (Math.exp(x) - 1 / Vv) / T));
    }
    case 'entropy': {
      let H = 0;
      for (const x of lq) if (x > -Infinity) H -= Math.exp(x) * x;
      return scaled(H, Float64Array.from(lq, (x) => (x > -Infinity ? (-Math.exp(x) * (x + H)) / T : 0)));
    }
    default:
      throw new Error(v.name);
  }
}

/** perRow and grad (reduction 'sum', gradScale 1) for all rows; skipped rows 0. */
function reference(v: Variant, d: Data, T: number, t2: boolean): { perRow: Float64Array; grad: Float64Array; mag: Float64Array; count: number } {
  const perRow = new Float64Array(d.rows);
  const grad = new Float64Array(d.rows * d.vocab);
  const mag = new Float64Array(d.rows * d.vocab);
  let count = 0;
  for (let r = 0; r < d.rows; r++) {
    if (!d.mask[r] || (usesTargets(v) && d.targets[r] === -100)) continue;
    count++;
    const { L, dz, mag: m } = refRow(v, d, r, T, t2);
    perRow[r] = L;
    grad.set(dz, r * d.vocab);
    mag.set(m, r * d.vocab);
  }
  return { perRow, grad, mag, count };
}

// ---------------------------------------------------------------- comparisons

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i])) m = Math.max(m, Math.abs(a[i]));
  return m;
}


/** Elementwise |a − b| ≤ atol(_i) + rtol·|b| (equal infinities pass), reporting the worst element. */
function assertEach(a: ArrayLike<number>, b: ArrayLike<number>, rtol: number, atol: number | ArrayLike<number>, what: string): number {
  assert.is(a.length, b.length, `${what}: length`);
  let worst = -1;
  let worstRatio = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const ratio = Math.abs(a[i] - b[i]) / ((typeof atol === 'number' ? atol : atol[i]) + rtol * Math.abs(b[i]));
    if (!(ratio <= worstRatio)) {
      worstRatio = Number.isNaN(ratio) ? Infinity : ratio;
      worst = i;
    }
  }
  assert.ok(worstRatio <= 1, `${what}: element ${worst}: ${a[worst]} vs ${b[worst]} (${worstRatio.toFixed(2)}× tolerance)`);
  const key = process.env.UNDO_TEST_VERBOSE === "2" ? what : what.replace(/^\S+ /, '').replace(/[^:]*: /, '');
  if (!(worstRatio <= (WORST.get(key) ?? 0))) WORST.set(key, worstRatio);
  return worstRatio;
}

/** Worst error seen per kind of check, as a fraction of its tolerance (printed with UNDO_TEST_VERBOSE=1). */
const WORST = new Map<string, number>();

// Tolerances. The kernels work in float32 on log-probabilities (x − max)/T − log s, so a term carries an
// absolute error of a few u·|log q| (u = 6e-8, |log q| ≲ 30 here): losses of O(1) to ~1e-6 absolute;
// gradient elements to ~1e-7 of the row's largest. Tolerances are ~10× the worst error seen on all ISAs
// and orders of magnitude below any formula error (a wrong term or factor is off by O(1) relative).
const LOSS_RTOL = 2e-5, LOSS_ATOL = 2e-5;
const GRAD_RTOL = 2e-4, GRAD_ATOL_REL = 2e-6, GRAD_MAG = 2e-6;

/** Per-element gradient tolerance: GRAD_MAG·mag + GRAD_ATOL_REL·max|grad|. */
function gradAtol(ref: { grad: Float64Array; mag: Float64Array }): Float64Array {
  const g = GRAD_ATOL_REL * maxAbs(ref.grad) + 1e-30;
  return ref.mag.map((m) => GRAD_MAG * m + g);
}

function checkAgainstReference(v: Variant, d: Data, T: number, t2: boolean, tag: string): void {
  const ref = reference(v, d, T, t2);
  const gatol = gradAtol(ref);
  forEachIsa((isa) => {
    const res = compute(v.name, options(v, d, T, t2));
    const t = `${isa} ${vtag(v)} ${tag} T=${T}${t2 ? ' T²' : ''}`;
    assert.is(res.count, ref.count, `${t}: count`);
    assertEach(res.perRow, ref.perRow, LOSS_RTOL, LOSS_ATOL, `${t}: perRow`);
    assertEach(res.grad, ref.grad, GRAD_RTOL, gatol, `${t}: grad`);
    let sum = 0;
    for (const x of ref.perRow) sum += x;
    assert.ok(Math.abs(res.loss - sum) <= LOSS_ATOL * d.rows + LOSS_RTOL * Math.abs(sum), `${t}: loss ${res.loss} vs ${sum}`);
    // loss only (no gradient output: the kernel stores into per-thread scratch instead) gives the same losses
    const only = compute(v.name, { ...options(v, d, T, t2), grad: false });
    assert.equal(Array.from(only.perRow), Array.from(res.perRow), `${t}: loss-only perRow`);
    for (let r = 0; r < d.rows; r++) {
      const skipped = !d.mask[r] || (usesTargets(v) && d.targets[r] === -100);
      let bad = -1;
      for (let i = skipped ? 0 : d.validVocab; i < d.vocab && bad < 0; i++) if (res.grad[r * d.vocab + i] !== 0) bad = i;
      assert.is(bad, -1, `${t}: row ${r} col ${bad} must have zero gradient (${skipped ? 'skipped row' : 'padding'})`);
      if (skipped) assert.is(res.perRow[r], 0, `${t}: skipped row ${r} loss`);
    }
  });
}

// ---------------------------------------------------------------- tests

test('every loss vs float64: T ∈ {0.5, 1, 2, 4}, masked rows, padding, 37 and 1031 columns, every ISA', () => {
  const small = makeData(6, 37, 33, 5, 11);     // 33 valid columns + 4 padding; not a multiple of 4/8/16
  const mid = makeData(5, 1031, 1031, 16, 12);  // several blocks' worth of vector loops and remainders
  // 33 × 1031 > 32768: the OpenMP-threaded path (at one T: on a busy machine each threaded call can wait
  // milliseconds for a core)
  const big = makeData(33, 1031, 1031, 16, 13);
  for (const v of VARIANTS) {
    for (const T of TEMPS) {
      const t2 = T === 2 || T === 0.5;
      checkAgainstReference(v, small, T, t2, '6x37/33');
      checkAgainstReference(v, mid, T, t2, '5x1031');
      if (T === 2) checkAgainstReference(v, big, T, t2, '33x1031');
    }
  }
});

test('every loss: native gradient vs central finite differences of the native loss, every ISA and T', () => {
  const d = makeData(3, 37, 35, 4, 21);
  d.mask[1] = 1;  // all rows counted here
  for (const v of VARIANTS) {
    for (const T of TEMPS) {
      forEachIsa((isa) => {
        const opts = options(v, d, T, false);
        const g = compute(v.name, opts).grad;
        const x = d.student;
        let L = () => compute(v.name, { ...opts, grad: false }).loss;
        if (v.name === 'taid') {
          // stop-gradient: the target (1−t)·z + t·y is held at the unperturbed z; that is fkl on a frozen teacher
          const frozen = x.map((zi, i) => (1 - v.t!) * zi + v.t! * d.teacher[i]);
          L = () => compute('fkl', { ...opts, teacher: frozen, grad: false }).loss;
        }
        const r = new Rng(7 + T * 10);
        // coordinates: some top-k ids, some others, the targets, and a padding column
        const idx = new Set<number>([d.targets[0], 37 + d.targets[1], 36]);
        if (v.topk) for (let j = 0; j < 2; j++) idx.add(d.topk.ids[j]);
        while (idx.size < 9) idx.add(r.int(0, 3 * 37 - 1));
        // step: small for tvd (a kink where q_i = p_i), else 1e-2. Error: truncation h²·|L'''|/6 ≲ 2e-4·(1/T)³
        // plus rounding u·|L|/h ≲ 2e-5.
        const h = v.name === 'tvd' ? 2e-3 : 1e-2;
        const an: number[] = [];
        const fd: number[] = [];
        for (const j of idx) {
          const x0 = x[j];
          const step = h * Math.max(1, Math.abs(x0)) * Math.min(1, T);
          x[j] = x0 + step;
          const xp = x[j];
          const lp = L();
          x[j] = x0 - step;
          const xm = x[j];
          const lm = L();
          x[j] = x0;
          fd.push((lp - lm) / (xp - xm));
          an.push(g[j]);
        }
        // both error terms scale with the size of the loss's derivatives (dkd's NCKD weight β = 8 makes them
        // ~8× those of a plain KL), so the absolute tolerance does too
        const gmax = Math.max(1, maxAbs(g));
        const atol = (v.name === 'tvd' ? 2e-3 : 6e-4) * gmax;
        assertEach(an, fd, 5e-3, atol, `${isa} ${vtag(v)} T=${T} (analytic vs finite difference)`);
      });
    }
  }
});

/** Rows with ±1e4 logits and −inf entries (shared by student and teacher, so every loss stays finite). */
function extremeData(k: number): Data {
  const rows = 4, vocab = 37, n = rows * vocab;
  const r = new Rng(31);
  const student = randn(n, 32, 2);
  const teacher = randn(n, 33, 2);
  for (let i = 0; i < vocab; i++) {
    student[i] = r.next() < 0.5 ? -1e4 : 1e4;          // row 0: ±1e4 in both, independent patterns
    teacher[i] = r.next() < 0.5 ? -1e4 : 1e4;
    if (i % 3 === 0) student[vocab + i] = teacher[vocab + i] = -Infinity; // row 1: a third −inf
    if (i % 2 === 0) student[2 * vocab + i] = r.next() < 0.5 ? -1e4 : 1e4; // row 2: ±1e4 student, normal teacher
    if (i !== 4 && i !== 9) student[3 * vocab + i] = teacher[3 * vocab + i] = -Infinity; // row 3: two finite columns
  }
  student[4] = 1e4; // a +1e4 column (the target of row 0)
  const targets = Int32Array.from([4, 7, 8, 9]);
  const studentBase = student.map((x) => 0.5 * x);
  const teacherBase = teacher.map((x) => 0.8 * x);
  return { rows, vocab, validVocab: vocab, student, teacher, studentBase, teacherBase, targets, mask: new Uint8Array(rows).fill(1),
    topk: topkOf(teacher, rows, vocab, vocab, k) };
}

test('extreme logits (±1e4, −inf entries): finite loss and gradient equal to float64, every loss, ISA and T', () => {
  const d = extremeData(5);
  for (const v of VARIANTS) {
    for (const T of TEMPS) {
      const ref = reference(v, d, T, false);
      if (v.name === 'maxent') {
        // KL(uniform‖q) is +∞ when q has zeros (rows 1 and 3): documented; the gradient stays finite
        assert.ok(ref.perRow[1] === Infinity && ref.perRow[3] === Infinity, 'maxent reference');
      } else {
        assert.ok(allFinite(ref.perRow) && allFinite(ref.grad), `reference ${vtag(v)} finite`);
      }
      const gatol = gradAtol(ref);
      forEachIsa((isa) => {
        const res = compute(v.name, options(v, d, T, false));
        const t = `${isa} ${vtag(v)} extreme T=${T}`;
        assert.ok(allFinite(res.grad), `${t}: non-finite gradient`);
        if (v.name !== 'maxent') assert.ok(allFinite(res.perRow), `${t}: non-finite loss ${Array.from(res.perRow)}`);
        // losses of up to ~4e4: their float32 ulp is ~4e-3. TAID's and Delta-KD's target logits ((1−t)·z + t·y,
        // z_sb + (y − z_tb)) are formed in float32 (as any fp32 implementation would), so next to |z| = 1e4
        // they carry ~ulp(1e4)/2 = 5e-4.
        const formed = v.name === 'taid' || v.name === 'deltakd';
        const atol = LOSS_ATOL + (formed ? (4e-8 * 1e4) / T : 0);
        assertEach(res.perRow, ref.perRow, 1e-6, atol, `${t}: perRow`);
        // (TAID, Delta-KD: log p is off by up to ~2 ulp(7e3)/T ≈ 1e-3/T, so p by that relative; mag ≥ (q + p)/T)
        const ga = formed ? gatol.map((a, i) => a + ((1.2e-7 * 1e4) / T) * ref.mag[i]) : gatol;
        assertEach(res.grad, ref.grad, GRAD_RTOL, ga, `${t}: grad`);
        // a −inf student logit has q = 0 and no gradient (except maxent's (q − 1/V)/T)
        for (let i = 0; i < d.vocab && v.name !== 'maxent'; i++) {
          if (d.student[d.vocab + i] === -Infinity) assert.is(res.grad[d.vocab + i], 0, `${t}: −inf column has a gradient`);
        }
      });
    }
  }
});

test('dkd with a sparse teacher (kNN votes: −inf outside a few ids; rows whose whole mass is the target): float64 reference and finite differences', () => {
  const d = makeData(4, 67, 67, 4, 57);
  d.mask.fill(1);
  d.targets = Int32Array.from([3, 10, 20, 66]);
  const support = [[3, 5, 9], [10], [1, 2], [66, 0]]; // row 1: only the target; row 2: the target not in the support
  for (let r = 0; r < d.rows; r++) {
    for (let i = 0; i < d.vocab; i++) d.teacher[r * d.vocab + i] = -Infinity;
    support[r].forEach((i, j) => (d.teacher[r * d.vocab + i] = -0.7 * j));
  }
  const v: Variant = { name: 'dkd', alpha: 1, beta: 8 };
  for (const T of [1, 2]) {
    const ref = reference(v, d, T, false);
    assert.ok(allFinite(ref.perRow) && allFinite(ref.grad), 'reference finite');
    forEachIsa((isa) => {
      const res = compute('dkd', options(v, d, T, false));
      assertEach(res.perRow, ref.perRow, 1e-5, LOSS_ATOL, `${isa} T=${T} perRow`);
      assertEach(res.grad, ref.grad, GRAD_RTOL, gradAtol(ref), `${isa} T=${T} grad`);
    });
    // the row whose teacher is one-hot on its target: TCKD only (−log q_g's split), no NCKD pull
    const loss = (z: Float32Array) => compute('dkd', { ...options(v, d, T, false), student: z, grad: false }).loss;
    const g = compute('dkd', options(v, d, T, false)).grad;
    for (const i of [10, 11, 3 * 67 + 5, 67 + 10, 67 + 40, 2 * 67 + 20]) {
      const h = 1e-2, zp = Float32Array.from(d.student), zm = Float32Array.from(d.student);
      zp[i] += h;
      zm[i] -= h;
      const fd = (loss(zp) - loss(zm)) / (2 * h);
      assert.ok(Math.abs(fd - g[i]) < 2e-3 + 2e-2 * Math.abs(g[i]), `T=${T} FD at ${i}: ${fd} vs ${g[i]}`);
    }
  }
});

test('jsd: continuous at β → 0 and β → 1 with fkl and rkl as the endpoints; β = ½ is 4·JS', () => {
  const d = makeData(4, 1031, 1031, 16, 41);
  d.mask.fill(1);
  for (const T of [1, 2]) {
    forEachIsa((isa) => {
      const run = (name: LossName, beta?: number) => compute(name, { student: d.student, teacher: d.teacher, rows: d.rows, vocab: d.vocab, temperature: T, beta, reduction: 'sum' });
      const fkl = run('fkl'), rkl = run('rkl');
      const j0 = run('jsd', 0), j1 = run('jsd', 1);
      const tag = `${isa} T=${T}`;
      // the endpoints are exactly fkl and rkl
      assert.equal(Array.from(j0.perRow), Array.from(fkl.perRow), `${tag} β=0 is fkl`);
      assert.equal(Array.from(j1.grad), Array.from(rkl.grad), `${tag} β=1 is rkl`);
      for (const [b, end] of [[1e-4, fkl], [1e-6, fkl], [1 - 1e-4, rkl], [1 - 1e-6, rkl]] as const) {
        const j = run('jsd', b);
        const eps = Math.min(b, 1 - b);
        // L_β − L_end = O(eps); float32 rounding adds ~1e-6 relative
        assertEach(j.perRow, end.perRow, 20 * eps + 1e-5, 1e-6, `${tag} β=${b}: loss → endpoint`);
        assertEach(j.grad, end.grad, 0, (20 * eps + 1e-5) * maxAbs(end.grad), `${tag} β=${b}: grad → endpoint`);
        // and the float32 kernel near the ends agrees with float64 (no 1/β amplification of rounding)
        const v: Variant = { name: 'jsd', beta: b };
        const ref = reference(v, d, T, false);
        assertEach(j.perRow, ref.perRow, LOSS_RTOL, LOSS_ATOL, `${tag} β=${b}: loss vs float64`);
        assertEach(j.grad, ref.grad, GRAD_RTOL, gradAtol(ref), `${tag} β=${b}: grad vs float64`);
      }
      // β = ½: 4 × the textbook Jensen-Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2
      const half = run('jsd', 0.5);
      for (let r = 0; r < d.rows; r++) {
        const lq = logSoftmax(d.student, r * d.vocab, d.vocab, T), lp = logSoftmax(d.teacher, r * d.vocab, d.vocab, T);
        let js = 0;
        for (let i = 0; i < d.vocab; i++) {
          const p = Math.exp(lp[i]), q = Math.exp(lq[i]), m = (p + q) / 2;
          js += 0.5 * p * Math.log(p / m) + 0.5 * q * Math.log(q / m);
        }
        assert.ok(Math.abs(half.perRow[r] - 4 * js) <= 1e-5 * 4 * js + 1e-6, `${tag} row ${r}: ${half.perRow[r]} vs 4·JS ${4 * js}`);
      }
    });
  }
});

test('reductions and scaling: mean over counted rows, sum, gradScale, t2Scale, ignoreIndex, loss only, out arrays', () => {
  const d = makeData(8, 37, 37, 5, 51);
  d.mask[5] = 0;
  for (const v of [{ name: 'fkl' }, { name: 'jsd', beta: 0.4 }, { name: 'ce' }, { name: 'fkl', topk: 'bucket' }, { name: 'deltakd', lambda: 0.4 }] as Variant[]) {
    forEachIsa((isa) => {
      const tag = `${isa} ${vtag(v)}`;
      const T = 2;
      const base = options(v, d, T, false);
      const sum = compute(v.name, base);
      const mean = compute(v.name, { ...base, reduction: 'mean' });
      const counted = Array.from({ length: d.rows }, (_, r) => d.mask[r] && !(usesTargets(v) && d.targets[r] === -100)).filter((x) => x).length;
      assert.is(mean.count, counted, `${tag} count`);
      assert.ok(Math.abs(mean.loss - sum.loss / counted) <= 1e-12 + 1e-9 * Math.abs(sum.loss), `${tag} mean = sum / count`);
      assertEach(mean.grad, sum.grad.map((g) => g / counted), 1e-5, 1e-9 * maxAbs(mean.grad), `${tag} mean grad = sum grad / count`);
      const scaled = compute(v.name, { ...base, gradScale: 0.25 });
      assert.ok(Math.abs(scaled.loss - 0.25 * sum.loss) <= 1e-9 * Math.abs(sum.loss), `${tag} gradScale loss`);
      assertEach(scaled.grad, sum.grad.map((g) => 0.25 * g), 1e-5, 1e-9 * maxAbs(scaled.grad), `${tag} gradScale grad`);
      const t2 = compute(v.name, { ...base, t2Scale: true });
      if (v.name === 'deltakd') {
        // T² multiplies the KL term only: λ·CE + (1−λ)·T²·KL
        const ref = reference(v, d, T, true);
        assertEach(t2.perRow, ref.perRow, LOSS_RTOL, LOSS_ATOL, `${tag} t2 deltakd`);
      } else {
        assertEach(t2.perRow, sum.perRow.map((x) => T * T * x), 1e-6, 1e-9, `${tag} t2 loss`);
        assertEach(t2.grad, sum.grad.map((g) => T * T * g), 1e-5, 1e-9, `${tag} t2 grad`);
      }
      const only = compute(v.name, { ...base, grad: false });
      assert.is(only.grad.length, 0, `${tag} loss-only grad`);
      assert.equal(Array.from(only.perRow), Array.from(sum.perRow), `${tag} loss-only perRow is the same`);
      if (!usesTargets(v)) {
        // targets given to a loss that does not use them still skip the ignoreIndex rows
        const withT = compute(v.name, { ...base, targets: d.targets });
        const skipped = Array.from({ length: d.rows }, (_, r) => !d.mask[r] || d.targets[r] === -100);
        assert.is(withT.count, skipped.filter((x) => !x).length, `${tag} ignoreIndex rows skipped without targets in the loss`);
        for (let r = 0; r < d.rows; r++) {
          if (skipped[r]) assert.is(withT.perRow[r], 0, `${tag} row ${r} skipped`);
          else assert.is(withT.perRow[r], sum.perRow[r], `${tag} row ${r} unchanged`);
        }
      }
      const g = new Float32Array(d.rows * d.vocab).fill(NaN), pr = new Float32Array(d.rows).fill(NaN);
      const into = compute(v.name, { ...base, grad: g, perRow: pr });
      assert.ok(into.grad === g && into.perRow === pr, `${tag} out arrays returned`);
      assert.equal(Array.from(g), Array.from(sum.grad), `${tag} out grad`);
    });
  }
});


test('errors: bad name, lengths, k > vocab, ids out of range or repeated, missing inputs, parameters', () => {
  const rows = 3, vocab = 11;
  const student = randn(rows * vocab, 61), teacher = randn(rows * vocab, 62);
  const topk = (ids: number[], k: number) => ({ ids: Int32Array.from(ids), logprobs: new Float32Array(ids.length).fill(-2), k });
  const base = { student, teacher, rows, vocab };
  throwsUndo(() => compute('kl' as LossName, base), /unknown loss 'kl'/);
  throwsUndo(() => compute('fkl', { ...base, student: student.subarray(1) }), /student has 32 elements, expected rows × vocab = 3 × 11 = 33/);
  throwsUndo(() => compute('fkl', { ...base, vocab: 10 }), /student has 33 elements/);
  throwsUndo(() => compute('rkl', { ...base, teacher: new Float32Array(30) }), /teacher has 30 elements/);
  throwsUndo(() => compute('fkl', { ...base, teacher: topk(new Array(36).fill(0), 12) }), /k = 12 is larger than the vocabulary \(11\)/);
  throwsUndo(() => compute('fkl', { ...base, teacher: topk([0, 1, 2, 3, 4, 11], 2) }), /row 2: top-k id 11 is outside \[0, vocab\)/);
  throwsUndo(() => compute('rkl', { ...base, teacher: topk([0, 1, -1, 3, 4, 5], 2) }), /row 1: top-k id -1/);
  throwsUndo(() => compute('fkl', { ...base, teacher: topk([0, 1, 2, 3, 4, 4], 2) }), /row 2: top-k id 4 appears twice/);
  throwsUndo(() => compute('fkl', { ...base, teacher: topk([0, 1, 2, 3, 4], 2) }), /teacher.ids has 5 elements, expected rows × k/);
  throwsUndo(() => compute('fkl', { ...base, validVocab: 8, teacher: topk([0, 1, 2, 3, 4, 9], 2) }), /top-k id 9 is outside/);
  throwsUndo(() => compute('taid', { ...base, t: 0.5, teacher: topk([0, 1, 2, 3, 4, 5], 2) }), /needs full teacher logits/);
  throwsUndo(() => compute('taid', base), /taid needs t/);
  throwsUndo(() => compute('fkl', { student, rows, vocab }), /needs a teacher/);
  throwsUndo(() => compute('ce', { student, rows, vocab }), /needs targets/);
  throwsUndo(() => compute('ce', { student, rows, vocab, targets: Int32Array.from([0, 11, 2]) }), /row 1: target 11 is outside/);
  throwsUndo(() => compute('dkd', { ...base, targets: Int32Array.from([0, 1]) }), /targets has 2 elements/);
  throwsUndo(() => compute('deltakd', { ...base, targets: Int32Array.from([0, 1, 2]) }), /deltakd needs studentBase/);
  throwsUndo(() => compute('fkl', { ...base, mask: new Uint8Array(2) }), /mask has 2 elements/);
  throwsUndo(() => compute('fkl', { ...base, temperature: 0 }), /temperature must be finite and > 0/);
  throwsUndo(() => compute('jsd', { ...base, beta: 1.5 }), /beta must be a number in \[0, 1\]/);
  throwsUndo(() => compute('fkl', { ...base, grad: new Float32Array(5) }), /grad has 5 elements/);
  throwsUndo(() => compute('fkl', { ...base, grad: student }), /grad must not share memory with student/);
  // the addon checks lengths itself as well (memory safety when called directly)
  assert.throws(() => native.kdLossSync('fkl', { rows, vocab, student, teacher: teacher.subarray(3), perRow: new Float32Array(rows) }), /teacher has 30 elements/);
  assert.throws(() => native.kdLossSync('nope', { rows, vocab, student, perRow: new Float32Array(rows) }), /unknown loss 'nope'/);
  assert.is(LOSS_NAMES.length, 12);
});

test('TaidSchedule: the TAID update (momentum of the relative loss change, linear floor, t_end cap)', () => {
  const s = new TaidSchedule({ totalSteps: 100 });
  assert.is(s.t, 0.4);
  assert.is(s.update(2, 0), 0.4, 'the first loss is only recorded');
  // δ = 0.1, m = 0.001, floor 0.406 > 0.4 + 5e-4·σ(0.001)·0.6
  assert.ok(Math.abs(s.update(1.8, 1) - 0.406) < 1e-12);
  assert.ok(Math.abs(s.momentum - 0.001) < 1e-15);
  // a large α makes the adaptive step win: t + α·σ(m)·(1 − t)
  const a = new TaidSchedule({ totalSteps: 100, alpha: 0.5 });
  a.update(2, 0);
  const m = 0.01 * 0.1;
  assert.ok(Math.abs(a.update(1.8, 1) - (0.4 + 0.5 * (1 / (1 + Math.exp(-m))) * 0.6)) < 1e-12);
  // against a transcription of the reference loop, on a noisy decreasing loss: monotone, ≤ t_end, reaches it
  const r = new Rng(71);
  const sch = new TaidSchedule({ totalSteps: 50, tStart: 0.2, tEnd: 0.9, alpha: 0.05, beta: 0.9 });
  let t = 0.2, mom = 0, prev = Infinity, last = 0;
  for (let n = 0; n < 60; n++) {
    const J = 3 * Math.exp(-n / 20) + 0.1 * r.next();
    if (prev !== Infinity) {
      mom = 0.9 * mom + 0.1 * ((prev - J) / (prev + 1e-15));
      t = Math.min(0.9, Math.max(0.2 + 0.7 * Math.min(1, n / 50), t + 0.05 * (1 / (1 + Math.exp(-mom))) * (1 - t)));
    }
    prev = J;
    const got = sch.update(J, n);
    assert.ok(Math.abs(got - t) < 1e-12, `step ${n}: ${got} vs ${t}`);
    assert.ok(got >= last && got <= 0.9, `step ${n}: monotone and capped`);
    last = got;
  }
  assert.is(last, 0.9);
  assert.throws(() => new TaidSchedule({ totalSteps: 0 }), /totalSteps/);
});

let t0 = 0;
test.before.each(() => {
  t0 = Date.now();
});
test.after.each((ctx) => {
  if (process.env.UNDO_TEST_VERBOSE) console.log(`  ${Date.now() - t0} ms: ${(ctx as { __test__?: string }).__test__ ?? ''}`);
});

test.after(() => {
  if (process.env.UNDO_TEST_VERBOSE)
    for (const [k, v] of [...WORST.entries()].sort()) console.log(`  worst ${k}: ${v.toFixed(3)} of tolerance`);
});

test.run();
