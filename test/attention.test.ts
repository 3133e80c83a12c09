/**
 * Causal flash attention (native/cpu/attention.cc) on every ISA the CPU supports, against a float64 JS
 * reference that materialises the scores: odd shapes, GQA, soft cap, sliding window, several tiles, decode
 * with a position offset and a strided KV cache, and the backward against the reference gradient plus
 * central finite differences of a few entries.
 *
 * Error metric: max |kernel − reference| over a tensor divided by the largest "magnitude" of its entries,
 * the magnitude being Σ|terms| the reference adds up for that entry (so the exact cancellation in
 * dS = P∘(dP − D) — e.g. a row with one visible key — does not blow up a relative error).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AttnDims, native } from '../lib/core/native';
import { Rng } from '../lib/core/rng';
import { forEachIsa } from './helpers';

interface Dims {
  B: number;
  Tq: number;
  Tk: number;
  Hq: number;
  Hkv: number;
  D: number;
  qOffset: number;
  kvBstride: number;
  window: number;
  scale: number;
  softcap: number;
}

function dims(B: number, Tq: number, Tk: number, Hq: number, Hkv: number, D: number,
  o: { qOffset?: number; capacity?: number; window?: number; softcap?: number } = {}): Dims {
  return {
    B, Tq, Tk, Hq, Hkv, D,
    qOffset: o.qOffset ?? 0,
    kvBstride: (o.capacity ?? Tk) * Hkv * D,
    window: o.window ?? 0,
    scale: 1 / Math.sqrt(D),
    softcap: o.softcap ?? 0,
  };
}

const nq = (d: Dims) => d.B * d.Tq * d.Hq * d.D;
const nkv = (d: Dims) => (d.B - 1) * d.kvBstride + d.Tk * d.Hkv * d.D;
const label = (d: Dims) =>
  `B=${d.B} Tq=${d.Tq} Tk=${d.Tk} Hq=${d.Hq} Hkv=${d.Hkv} D=${d.D} off=${d.qOffset} win=${d.window} cap=${d.softcap}`;

function uniform(n: number, amp: number, rng: Rng): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = amp * (2 * rng.next() - 1);
  return a;
}

interface Inputs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dout: Float32Array;
  kvUsed: Uint8Array; // 1 for k/v elements inside [0, Tk) of a batch; the rest of a cache slot is NaN
}

function inputs(d: Dims, seed: number): Inputs {
  const rng = new Rng(seed);
  const q = uniform(nq(d), 1.7, rng), k = uniform(nkv(d), 1.7, rng), v = uniform(nkv(d), 1, rng);
  const dout = uniform(nq(d), 1, rng);
  const kvUsed = new Uint8Array(nkv(d));
  for (let b = 0; b < d.B; b++) kvUsed.fill(1, b * d.kvBstride, b * d.kvBstride + d.Tk * d.Hkv * d.D);
  for (let i = 0; i < kvUsed.length; i++) if (!kvUsed[i]) k[i] = v[i] = NaN;
  return { q, k, v, dout, kvUsed };
}

interface Ref {
  out: Float64Array; outMag: Float64Array;
  lse: Float64Array; lseMag: Float64Array;
  dq: Float64Array; dqMag: Float64Array;
  dk: Float64Array; dkMag: Float64Array;
  dv: Float64Array; dvMag: Float64Array;
}

/** float64 reference: scores materialised row by row; gradients when dout is given. */
function reference(d: Dims, x: { q: ArrayLike<number>; k: ArrayLike<number>; v: ArrayLike<number> },
  dout: ArrayLike<number> | null): Ref {
  const G = d.Hq / d.Hkv;
  const r: Ref = {
    out: new Float64Array(nq(d)), outMag: new Float64Array(nq(d)),
    lse: new Float64Array(d.B * d.Hq * d.Tq).fill(-Infinity), lseMag: new Float64Array(d.B * d.Hq * d.Tq),
    dq: new Float64Array(nq(d)), dqMag: new Float64Array(nq(d)),
    dk: new Float64Array(nkv(d)), dkMag: new Float64Array(nkv(d)),
    dv: new Float64Array(nkv(d)), dvMag: new Float64Array(nkv(d)),
  };
  const s = new Float64Array(d.Tk), t = new Float64Array(d.Tk), p = new Float64Array(d.Tk);
  const dp = new Float64Array(d.Tk), dpm = new Float64Array(d.Tk);
  for (let b = 0; b < d.B; b++) {
    for (let h = 0; h < d.Hq; h++) {
      const g = Math.floor(h / G);
      for (let i = 0; i < d.Tq; i++) {
        const pos = d.qOffset + i, qo = ((b * d.Tq + i) * d.Hq + h) * d.D;
        let m = -Infinity;
        for (let j = 0; j < d.Tk; j++) {
          s[j] = -Infinity;
          if (j > pos || (d.window > 0 && pos - j >= d.window)) continue;
          const ko = b * d.kvBstride + (j * d.Hkv + g) * d.D;
          let acc = 0;
          for (let c = 0; c < d.D; c++) acc += x.q[qo + c] * x.k[ko + c];
          let sc = acc * d.scale;
          if (d.softcap > 0) {
            t[j] = Math.tanh(sc / d.softcap);
            sc = d.softcap * t[j];
          }
          s[j] = sc;
          m = Math.max(m, sc);
        }
        if (m === -Infinity) continue;
        let l = 0;
        for (let j = 0; j < d.Tk; j++) l += p[j] = s[j] === -Infinity ? 0 : Math.exp(s[j] - m);
        for (let j = 0; j < d.Tk; j++) p[j] /= l;
        const li = (b * d.Hq + h) * d.Tq + i;
        r.lse[li] = m + Math.log(l);
        r.lseMag[li] = Math.abs(m) + Math.log(l);
        for (let j = 0; j < d.Tk; j++) {
          if (p[j] === 0) continue;
          const vo = b * d.kvBstride + (j * d.Hkv + g) * d.D;
          for (let c = 0; c < d.D; c++) {
            r.out[qo + c] += p[j] * x.v[vo + c];
            r.outMag[qo + c] += Math.abs(p[j] * x.v[vo + c]);
          }
        }
        if (!dout) continue;
        let Di = 0, DiMag = 0;
        for (let j = 0; j < d.Tk; j++) {
          dp[j] = dpm[j] = 0;
          if (p[j] === 0) continue;
          const vo = b * d.kvBstride + (j * d.Hkv + g) * d.D;
          for (let c = 0; c < d.D; c++) {
            dp[j] += dout[qo + c] * x.v[vo + c];
            dpm[j] += Math.abs(dout[qo + c] * x.v[vo + c]);
          }
          Di += p[j] * dp[j];
          DiMag += p[j] * dpm[j];
        }
        for (let j = 0; j < d.Tk; j++) {
          if (p[j] === 0) continue;
          const f = (d.softcap > 0 ? 1 - t[j] * t[j] : 1) * d.scale;
          const ds = p[j] * (dp[j] - Di) * f, dsm = p[j] * (dpm[j] + DiMag) * f;
          const ko = b * d.kvBstride + (j * d.Hkv + g) * d.D;
          for (let c = 0; c < d.D; c++) {
            r.dq[qo + c] += ds * x.k[ko + c];
            r.dqMag[qo + c] += dsm * Math.abs(x.k[ko + c]);
            r.dk[ko + c] += ds * x.q[qo + c];
            r.dkMag[ko + c] += dsm * Math.abs(x.q[qo + c]);
            r.dv[ko + c] += p[j] * dout[qo + c];
            r.dvMag[ko + c] += Math.abs(p[j] * dout[qo + c]);
          }
        }
      }
    }
  }
  return r;
}

/** max |a − r| / max(mag) over the selected entries; NaN or a mismatched infinity gives Infinity. */
function err(a: Float32Array, r: Float64Array, mag: Float64Array, use?: Uint8Array): number {
  let num = 0, den = 1e-30;
  for (let i = 0; i < a.length; i++) {
    if (use && !use[i]) continue;
    if (!Number.isFinite(r[i]) || !Number.isFinite(a[i])) {
      if (a[i] === r[i]) continue;
      return Infinity;
    }
    num = Math.max(num, Math.abs(a[i] - r[i]));
    den = Math.max(den, mag[i]);
  }
  return num / den;
}

const TOL = 1e-5;

function check(what: string, e: number, tol = TOL): void {
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(3)} > ${tol}`);
}

function forward(d: Dims, x: Inputs): { out: Float32Array; lse: Float32Array } {
  const out = new Float32Array(nq(d)).fill(12345), lse = new Float32Array(d.B * d.Hq * d.Tq).fill(12345);
  native.attentionForwardSync(d as AttnDims, x.q, x.k, x.v, out, lse);
  return { out, lse };
}


function checkForwardBackward(d: Dims, seed: number): void {
  const x = inputs(d, seed);
  const ref = reference(d, x, x.dout);
  forEachIsa((isa) => {
    const name = `[${isa}] ${label(d)}`;
    const { out, lse } = forward(d, x);
    check(`${name} out`, err(out, ref.out, ref.outMag));
    check(`${name} lse`, err(lse, ref.lse, ref.lseMag));
    const dq = new Float32Array(nq(d)).fill(7), dk = new Float32Array(nkv(d)).fill(7), dv = new Float32Array(nkv(d)).fill(7);
    native.attentionBackwardSync(d as AttnDims, x.q, x.k, x.v, out, x.dout, lse, dq, dk, dv);
    check(`${name} dq`, err(dq, ref.dq, ref.dqMag));
    check(`${name} dk`, err(dk, ref.dk, ref.dkMag));
    check(`${name} dv`, err(dv, ref.dv, ref.dvMag));
  });
}

test('forward + backward match the float64 reference on odd shapes (GQA, soft cap, window), every ISA', () => {
  let seed = 1;
  const shapes: [number, number, number, number, number][] = [
    // B, T, Hq, Hkv, D
    [2, 1, 1, 1, 16],
    [2, 5, 4, 2, 7],
    [2, 17, 6, 3, 12],
    [1, 33, 3, 1, 64],
    [2, 100, 4, 2, 16],
  ];
  for (const [B, T, Hq, Hkv, D] of shapes)
    for (const softcap of [0, 5])
      for (const window of [0, 3]) checkForwardBackward(dims(B, T, T, Hq, Hkv, D, { softcap, window }), seed++);
});

test('several query/key tiles with ragged edges, batch 1 (work split across threads)', () => {
  checkForwardBackward(dims(1, 150, 150, 2, 1, 64, {}), 101);
  checkForwardBackward(dims(1, 211, 211, 2, 2, 12, { window: 70, softcap: 5 }), 102);
});

test('decode and chunked prefill: q_offset > 0, strided KV cache (NaN past Tk), every ISA', () => {
  let seed = 200;
  for (const Tq of [1, 3, 20])
    for (const [Hq, Hkv, D] of [[4, 2, 64], [3, 1, 7]])
      for (const softcap of [0, 5])
        for (const window of [0, 5]) {
          const off = 37, Tk = off + Tq;
          const d = dims(2, Tq, Tk, Hq, Hkv, D, { qOffset: off, capacity: Tk + 11, window, softcap });
          const x = inputs(d, seed++);
          const ref = reference(d, x, null);
          forEachIsa((isa) => {
            const { out, lse } = forward(d, x);
            check(`[${isa}] ${label(d)} out`, err(out, ref.out, ref.outMag));
            check(`[${isa}] ${label(d)} lse`, err(lse, ref.lse, ref.lseMag));
            const out2 = new Float32Array(nq(d));
            native.attentionForwardSync(d as AttnDims, x.q, x.k, x.v, out2, null);
            assert.equal(Array.from(out2), Array.from(out), 'lse = null gives the same output');
          });
        }
});

test('backward agrees with central finite differences of the reference (and of the kernel) on a tiny case', () => {
  for (const d of [dims(1, 6, 6, 2, 1, 5, {}), dims(1, 7, 7, 4, 2, 3, { window: 4, softcap: 3 })]) {
    const x = inputs(d, 300 + d.Tq);
    const w = x.dout; // L = Σ out ∘ w, so dL/dout = w
    const lossRef = (y: Inputs) => {
      const r = reference(d, y, null);
      let L = 0;
      for (let i = 0; i < w.length; i++) L += r.out[i] * w[i];
      return L;
    };
    const lossKernel = (y: Inputs) => {
      const out = new Float32Array(nq(d));
      native.attentionForwardSync(d as AttnDims, y.q, y.k, y.v, out, null);
      let L = 0;
      for (let i = 0; i < w.length; i++) L += out[i] * w[i];
      return L;
    };
    forEachIsa((isa) => {
      const { out, lse } = forward(d, x);
      const g = { q: new Float32Array(nq(d)), k: new Float32Array(nkv(d)), v: new Float32Array(nkv(d)) };
      native.attentionBackwardSync(d as AttnDims, x.q, x.k, x.v, out, w, lse, g.q, g.k, g.v);
      let gmax = 0;
      for (const a of [g.q, g.k, g.v]) for (const e of a) gmax = Math.max(gmax, Math.abs(e));
      let eRef = 0, eKer = 0;
      for (const which of ['q', 'k', 'v'] as const) {
        const arr = x[which];
        for (const idx of [0, 3, Math.floor(arr.length / 2), arr.length - 1]) {
          const x0 = arr[idx];
          const fd = (h: number, loss: (y: Inputs) => number) => {
            arr[idx] = x0 + h;
            const hp = arr[idx];
            const Lp = loss(x);
            arr[idx] = x0 - h;
            const hm = arr[idx];
            const Lm = loss(x);
            arr[idx] = x0;
            return (Lp - Lm) / (hp - hm); // exact float32 step
          };
          eRef = Math.max(eRef, Math.abs(g[which][idx] - fd(2 ** -16, lossRef)));
          eKer = Math.max(eKer, Math.abs(g[which][idx] - fd(1e-2, lossKernel)));
        }
      }
      check(`[${isa}] ${label(d)} gradient vs FD of the float64 reference`, eRef / gmax, 1e-4);
      check(`[${isa}] ${label(d)} gradient vs FD of the kernel forward`, eKer / gmax, 2e-3);
    });
  }
});

test.run();
