/**
 * Kernel-level tests of the native CPU core (native/cpu): RMSNorm, RoPE, SwiGLU/GeGLU, embedding,
 * fused cross-entropy, AdamW + sum of squares, and the Philox random fills. Every kernel runs on every
 * ISA the CPU supports, on odd shapes (lengths that are not multiples of the 4/8/16-wide vectors, plus
 * shapes big enough to take the OpenMP-threaded path), against a plain float64 reference written here.
 * Backward kernels are also checked against central finite differences of the native float32 forward.
 *
 * Finite differences (fd below): L = Σ c_i·y_i with random c, computed in float64 from the float32
 * outputs y of the native forward. Perturbing input x_j by ±h gives fd = (L+ − L−)/(x_j+ − x_j−), where
 * x_j± are the float32 values actually stored (so the step itself carries no rounding error). Its error is
 *   truncation ≈ h²·|L'''|/6   +   rounding ≈ √N·u·max|c·y| / h,   u = 2^-24 ≈ 6e-8,
 * N = number of outputs that move. With h ≈ 1e-2..3e-2 and N ≤ ~4e4 both terms stay below ~1e-4 of the
 * gradient's scale; tolerances (atol + rtol·|g|) are set ~10× above that and far below the size of any
 * real formula error (a missing term or factor changes gradients by O(1) relative).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { native, withThreads } from '../lib/core/native';
import { Rng } from '../lib/core/rng';
import { allFinite, assertClose, bitEqual, forEachIsa, randn, relErr, SANITIZED } from './helpers';

// ---------------------------------------------------------------- small utilities

function filled(n: number, v: number): Float32Array {
  return new Float32Array(n).fill(v);
}

function dot64(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** max|a − b| ≤ tol·scale: for results that are a cancellation of terms of size `scale`. */
function assertScaled(a: ArrayLike<number>, b: ArrayLike<number>, scale: number, tol: number, what: string): void {
  assert.is(a.length, b.length, `${what}: length`);
  let d = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i] - b[i]);
    if (!(e <= d)) d = Number.isNaN(e) ? Infinity : e;
  }
  assert.ok(d <= tol * scale, `${what}: max error ${d.toExponential(3)} > ${tol} × ${scale.toExponential(3)}`);
}



/** Elementwise |a − b| ≤ atol(_i) + rtol·|b|, reporting the worst element. */
function assertEach(a: ArrayLike<number>, b: ArrayLike<number>, rtol: number, atol: number | ArrayLike<number>,
  what: string): void {
  assert.is(a.length, b.length, `${what}: length`);
  let worst = -1;
  let worstRatio = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    const ratio = d / ((typeof atol === 'number' ? atol : atol[i]) + rtol * Math.abs(b[i]));
    if (!(ratio <= worstRatio)) {
      worstRatio = Number.isNaN(ratio) ? Infinity : ratio;
      worst = i;
    }
  }
  assert.ok(worstRatio <= 1, `${what}: element ${worst}: ${a[worst]} vs ${b[worst]} (${worstRatio.toFixed(2)}× tolerance)`);
}

/** Distinct random indices in [0, n), at most k of them, plus any `extra`. */
function pick(n: number, k: number, seed: number, extra: number[] = []): number[] {
  const r = new Rng(seed);
  const s = new Set<number>(extra.filter((i) => i >= 0 && i < n));
  while (s.size < Math.min(n, k + extra.length)) s.add(r.int(0, n - 1));
  return [...s];
}

/**
 * Central finite differences of loss() w.r.t. x[j] for j in idx, compared with analytic[j]. loss() must
 * read x (a Float32Array fed to a native forward). The step is measured on the stored float32 values.
 * The forwards run on one thread: every kernel here computes each row/element the same way whatever the
 * thread count (the threaded paths are covered by the reference comparisons), and many short OpenMP
 * regions are slow on a busy machine.
 */
function fdCheck(what: string, x: Float32Array, idx: number[], h: number, loss: () => number,
  analytic: ArrayLike<number>, rtol: number, atol: number): void {
  withThreads(1, () => fdCheckSerial(what, x, idx, h, loss, analytic, rtol, atol));
}

function fdCheckSerial(what: string, x: Float32Array, idx: number[], h: number, loss: () => number,
  analytic: ArrayLike<number>, rtol: number, atol: number): void {
  const fd: number[] = [];
  const an: number[] = [];
  for (const j of idx) {
    const x0 = x[j];
    const step = h * Math.max(1, Math.abs(x0));
    x[j] = x0 + step;
    const xp = x[j];
    const lp = loss();
    x[j] = x0 - step;
    const xm = x[j];
    const lm = loss();
    x[j] = x0;
    fd.push((lp - lm) / (xp - xm));
    an.push(analytic[j]);
  }
  assertEach(an, fd, rtol, atol, `${what} (analytic vs finite difference)`);
}


// ---------------------------------------------------------------- RMSNorm

function rmsnormRef(rows: number, dim: number, x: Float32Array, w: Float32Array, eps: number, unit: boolean) {
  const y = new Float64Array(rows * dim);
  const rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    const s = 1 / Math.sqrt(ss / dim + eps);
    rstd[r] = s;
    for (let i = 0; i < dim; i++) y[r * dim + i] = x[r * dim + i] * s * ((unit ? 1 : 0) + w[i]);
  }
  return { y, rstd };
}

function rmsnormBackRef(rows: number, dim: number, x: Float32Array, w: Float32Array, eps: number, unit: boolean,
  dy: Float32Array) {
  const { rstd } = rmsnormRef(rows, dim, x, w, eps, unit);
  const dx = new Float64Array(rows * dim);
  const dw = new Float64Array(dim);
  for (let r = 0; r < rows; r++) {
    const s = rstd[r];
    let dotv = 0;
    for (let i = 0; i < dim; i++) dotv += dy[r * dim + i] * ((unit ? 1 : 0) + w[i]) * x[r * dim + i];
    for (let i = 0; i < dim; i++) {
      const g = (unit ? 1 : 0) + w[i];
      dx[r * dim + i] = s * g * dy[r * dim + i] - (x[r * dim + i] * s ** 3 * dotv) / dim;
      dw[i] += dy[r * dim + i] * x[r * dim + i] * s;
    }
  }
  return { dx, dw };
}

// rows × dim; 37 × 1031 = 38147 > 32768 takes the threaded path.
const NORM_SHAPES: [number, number][] = [[1, 1], [3, 7], [37, 33], [5, 130], [1, 1031], [37, 1031]];

test('rmsnorm forward: y and rstd match float64 (Llama w and Gemma 1+w), rstd optional', () => {
  for (const unit of [false, true]) {
    for (const [rows, dim] of NORM_SHAPES) {
      const x = randn(rows * dim, 11 + dim, 1.5);
      // Gemma weights are small offsets around 0 (gain 1 + w), Llama's around 1: a kernel that ignored or
      // always applied unitOffset would be off by ~1 relative.
      const w = unit ? randn(dim, 12 + dim, 0.1) : randn(dim, 12 + dim, 0.3).map((v) => 1 + v);
      const eps = 1e-6;
      const ref = rmsnormRef(rows, dim, x, w, eps, unit);
      forEachIsa((isa) => {
        const y = filled(rows * dim, NaN);
        const rstd = filled(rows, NaN);
        native.rmsnormForwardSync(rows, dim, x, w, eps, unit, y, rstd);
        const tag = `${isa} unit=${unit} ${rows}x${dim}`;
        // float32: the sum of squares carries ~√dim·u relative error; 1e-5 leaves >10× margin.
        assertClose(y, ref.y, 1e-5, `${tag} y`);
        assertClose(rstd, ref.rstd, 1e-5, `${tag} rstd`);
        const y2 = filled(rows * dim, NaN);
        native.rmsnormForwardSync(rows, dim, x, w, eps, unit, y2, null);
        assert.ok(bitEqual(y, y2), `${tag} y without rstd output`);
      });
    }
  }
});

test('rmsnorm forward: eps is added to mean(x²) (tiny inputs)', () => {
  forEachIsa((isa) => {
    const dim = 33;
    const x = randn(dim, 5, 1e-3);
    const w = filled(dim, 1);
    const eps = 1e-5; // comparable to mean(x²) ≈ 1e-6: a misplaced eps changes y by O(1)
    const y = new Float32Array(dim);
    const rstd = new Float32Array(1);
    native.rmsnormForwardSync(1, dim, x, w, eps, false, y, rstd);
    const ref = rmsnormRef(1, dim, x, w, eps, false);
    assertClose(y, ref.y, 1e-5, `${isa} y`);
    assertClose(rstd, ref.rstd, 1e-5, `${isa} rstd`);
  });
});

test('rmsnorm backward: dx (overwrite and accumulate), dw accumulates, vs float64 and finite differences', () => {
  for (const unit of [false, true]) {
    for (const [rows, dim] of NORM_SHAPES) {
      const n = rows * dim;
      const x = randn(n, 21 + dim + rows, 1.2);
      const w = unit ? randn(dim, 22 + dim, 0.1) : randn(dim, 22 + dim, 0.3).map((v) => 1 + v);
      const eps = 1e-6;
      const c = randn(n, 23 + dim); // dy = ∂L/∂y for L = Σ c·y
      const ref = rmsnormBackRef(rows, dim, x, w, eps, unit, c);
      forEachIsa((isa) => {
        const tag = `${isa} unit=${unit} ${rows}x${dim}`;
        const y = new Float32Array(n);
        const rstd = new Float32Array(rows);
        native.rmsnormForwardSync(rows, dim, x, w, eps, unit, y, rstd);

        // overwrite: dx starts as NaN, which must not leak through
        const dx = filled(n, NaN);
        const dw0 = randn(dim, 24 + dim);
        const dw = dw0.slice();
        native.rmsnormBackwardSync(rows, dim, x, w, rstd, unit, c, dx, false, dw);
        // dx = s·g·dy − x·s³·(Σ dy·g·x)/dim: two terms that partly cancel (for dim 1 almost entirely, dx ≈ 0),
        // so the float32 error is a few u of the first term's size, not of dx's.
        const gScale = Math.max(maxAbs(ref.dx), ...Array.from(w, (v) => Math.abs((unit ? 1 : 0) + v))) * maxAbs(c) * maxAbs(rstd);
        assertScaled(dx, ref.dx, gScale, 1e-5, `${tag} dx`);
        const dwWant = Float64Array.from(ref.dw, (v, i) => v + dw0[i]);
        assertClose(dw, dwWant, 2e-5, `${tag} dw (added to existing)`);

        // accumulate: dx starts at D0 and must end at D0 + dx
        const d0 = randn(n, 25 + dim);
        const dxAcc = d0.slice();
        native.rmsnormBackwardSync(rows, dim, x, w, rstd, unit, c, dxAcc, true, null);
        assertScaled(dxAcc, Float64Array.from(ref.dx, (v, i) => v + d0[i]), gScale + maxAbs(d0), 1e-5, `${tag} dx accumulate`);

        if (dim < 7) return; // dim 1: y ≈ sign(x)·g, not smooth enough at the FD step
        const L = (): number => {
          const yy = new Float32Array(n);
          native.rmsnormForwardSync(rows, dim, x, w, eps, unit, yy, null);
          return dot64(c, yy);
        };
        // Perturbing x moves one row (≤ 1031 outputs): rounding ≈ √1031·6e-8·3/2e-2 ≈ 3e-4 worst case.
        const dwOnly = dw.map((v, i) => v - dw0[i]);
        fdCheck(`${tag} dx`, x, pick(n, 12, 26 + dim), 1e-2, L, dx, 5e-3, 2e-3);
        // Perturbing w moves every row (≤ 38147 outputs): ≈ 1.5e-3 worst case; |dw| grows like √rows.
        fdCheck(`${tag} dw`, w, pick(dim, 6, 27 + dim), 1e-2, L, dwOnly, 5e-3, 5e-3);
      });
    }
  }
});

// ---------------------------------------------------------------- RoPE

/**
 * Hugging Face rotate_half RoPE in float64. fp32Angles reproduces HF's float32 inv_freq and pos·inv_freq
 * (what rope_tables_from computes); otherwise the angle is exact in float64.
 */
function ropeRef(B: number, T: number, H: number, D: number, x: Float32Array, theta: number, off: number,
  inverse: boolean, fp32Angles: boolean): Float64Array {
  const out = Float64Array.from(x);
  const half = D / 2;
  const f = fp32Angles ? Math.fround : (v: number) => v;
  const invFreq = Array.from({ length: half }, (_, i) => f(1 / Math.pow(theta, (2 * i) / D)));
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const pos = off + t;
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const ang = f(pos * invFreq[i]);
          const cs = Math.cos(ang);
          const sn = (inverse ? -1 : 1) * Math.sin(ang);
          const a = x[base + i];
          const bb = x[base + i + half];
          out[base + i] = a * cs - bb * sn;
          out[base + i + half] = bb * cs + a * sn;
        }
      }
    }
  }
  return out;
}

// B, T, H, D (D even); the last is 2·37·4·130 = 38480 > 32768 elements: threaded path.
const ROPE_SHAPES: [number, number, number, number][] = [
  [1, 1, 1, 2], [2, 3, 3, 14], [3, 37, 2, 66], [2, 5, 3, 260], [2, 37, 4, 130],
];

test('rope: matches rotate_half with theta 10000 and a position offset; inverse rotates back', () => {
  for (const [B, T, H, D] of ROPE_SHAPES) {
    for (const off of [0, 7, 1000]) {
      const n = B * T * H * D;
      const x0 = randn(n, 31 + D + T);
      const refs = [false, true].map((inverse) => [true, false].map((fp32) => ropeRef(B, T, H, D, x0, 10000, off, inverse, fp32)));
      forEachIsa((isa) => {
        const tag = `${isa} ${B}x${T}x${H}x${D} off=${off}`;
        for (const inverse of [false, true]) {
          const x = x0.slice();
          native.ropeApplySync(B, T, H, D, x, 10000, off, inverse);
          // same fp32 angles as HF: only the rotation's own float32 rounding (~2u) remains
          assertClose(x, refs[+inverse][0], 1e-6, `${tag} inv=${inverse}`);
          // exact angles: fp32 angle rounding adds ≈ pos·u ≤ 1037·6e-8 ≈ 6e-5
          const tolExact = 2e-6 + (off + T) * 1.2e-7;
          assertClose(x, refs[+inverse][1], tolExact, `${tag} inv=${inverse} exact angle`);
        }
        // round trip and norm preservation
        const x = x0.slice();
        native.ropeApplySync(B, T, H, D, x, 10000, off, false);
        for (let v = 0; v < n / D; v++) {
          let n0 = 0;
          let n1 = 0;
          for (let i = 0; i < D; i++) {
            n0 += x0[v * D + i] ** 2;
            n1 += x[v * D + i] ** 2;
          }
          assert.ok(Math.abs(Math.sqrt(n1) - Math.sqrt(n0)) <= 1e-6 * Math.sqrt(n0) + 1e-30, `${tag} norm of head vector ${v}`);
        }
        native.ropeApplySync(B, T, H, D, x, 10000, off, true);
        assertClose(x, x0, 1e-6, `${tag} round trip`);
      });
    }
  }
});

test('rope: the offset shifts positions (off=k equals the tail of a sequence k longer); other theta', () => {
  forEachIsa((isa) => {
    const [H, D, T, k] = [3, 14, 5, 4];
    const x0 = randn((T + k) * H * D, 41);
    const long = x0.slice();
    const tail = x0.slice(k * H * D);
    native.ropeApplySync(1, T + k, H, D, long, 500, 0, false);
    native.ropeApplySync(1, T, H, D, tail, 500, k, false);
    assert.ok(bitEqual(tail, long.slice(k * H * D)), `${isa} offset tail`);
    assertClose(tail, ropeRef(1, T, H, D, x0.slice(k * H * D), 500, k, false, true), 1e-6, `${isa} theta 500`);
  });
});

test('rope backward: inverse is the adjoint (gradient) of the forward, vs finite differences', () => {
  forEachIsa((isa) => {
    for (const [B, T, H, D] of ROPE_SHAPES) {
      const tag = `${isa} ${B}x${T}x${H}x${D}`;
      const n = B * T * H * D;
      const x = randn(n, 51 + D);
      const c = randn(n, 52 + D);
      const gx = c.slice();
      native.ropeApplySync(B, T, H, D, gx, 10000, 3, true); // ∂(Σ c·R x)/∂x = Rᵀc = R⁻¹c
      const L = (): number => {
        const y = x.slice();
        native.ropeApplySync(B, T, H, D, y, 10000, 3, false);
        return dot64(c, y);
      };
      // L is linear in x: no truncation error; rounding ≈ √D·u·3/2e-2 ≤ 2e-4
      fdCheck(`${tag} dx`, x, pick(n, 10, 53 + D), 1e-2, L, gx, 1e-3, 1e-3);
    }
  });
});

// ---------------------------------------------------------------- SwiGLU / GeGLU

const K_GELU = Math.sqrt(2 / Math.PI);

/**
 * Absolute float32 error budget of dgate_i = c_i·up_i·act'(g_i). undo_tanhf / undo_expf are accurate to
 * δ ≈ 1e-7 absolute; act' depends on t = tanh(·) with slope |½ − g·t·k·(1 + 3·0.044715·g²)| ≲ |g|(1 + 0.134g²),
 * which near g ≈ −3…−5 (GELU's tail, where act' is a cancellation of two small terms) amplifies δ ~10×.
 * Beyond |g| ≈ 10 the tanh is exactly ±1 in float32, so the sensitivity is capped there.
 */
function dgateAtol(gate: Float32Array, up: Float32Array, c: Float32Array): Float64Array {
  return Float64Array.from(gate, (g, i) => {
    const a = Math.min(Math.abs(g), 10);
    return 2e-7 * Math.abs(c[i] * up[i]) * (1 + a * (1 + 0.134 * a * a)) + 1e-7;
  });
}

function actRef(kind: 'swiglu' | 'geglu', g: number): [number, number] {
  if (kind === 'swiglu') {
    const s = 1 / (1 + Math.exp(-g));
    return [g * s, s * (1 + g * (1 - s))];
  }
  const t = Math.tanh(K_GELU * (g + 0.044715 * g ** 3));
  return [0.5 * g * (1 + t), 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * K_GELU * (1 + 3 * 0.044715 * g * g)];
}

// 40000 > 16384-element chunks: threaded path with a partial last chunk
const GLU_SIZES = [1, 7, 33, 130, 1031, 40000];
const GLU_EXTREMES = [30, -30, 15, -15, 50, -50, 88.5, -88.5, 100, -100, 1e4, -1e4, 0, -0];

test('glu forward/backward: swiglu and geglu (tanh GELU) vs float64 and finite differences', () => {
  for (const kind of ['swiglu', 'geglu'] as const) {
    for (const n of GLU_SIZES) {
      const gate = randn(n, 61 + n, 2.5);
      const up = randn(n, 62 + n);
      const c = randn(n, 63 + n);
      const want = new Float64Array(n);
      const dgWant = new Float64Array(n);
      const duWant = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const [a, da] = actRef(kind, gate[i]);
        want[i] = a * up[i];
        duWant[i] = c[i] * a;
        dgWant[i] = c[i] * up[i] * da;
      }
      const dgAtol = dgateAtol(gate, up, c);
      forEachIsa((isa) => {
        const tag = `${isa} ${kind} n=${n}`;
        const out = filled(n, NaN);
        native.gluForwardSync(kind, gate, up, out);
        // undo_expf / undo_tanhf are accurate to a few u (tanh to ~1e-7 absolute)
        assertEach(out, want, 1e-5, 1e-6, `${tag} out`);
        const dg = filled(n, NaN);
        const du = filled(n, NaN);
        native.gluBackwardSync(kind, gate, up, c, dg, du);
        assertEach(du, duWant, 1e-5, 1e-6, `${tag} dup`);
        assertEach(dg, dgWant, 1e-5, dgAtol, `${tag} dgate`);

        // Finite differences: the Jacobian is diagonal, so perturbing all gates at once (x ± h·max(1,|x|))
        // gives every ∂out_i/∂gate_i from two forwards. Rounding ≈ u·|out|/h ≈ 6e-8·25/2e-2 < 1e-4;
        // truncation h²·|act'''|/6 ≲ 1e-4 for these |g|.
        const h = 1e-2;
        const gp = gate.map((v) => v + h * Math.max(1, Math.abs(v)));
        const gm = gate.map((v) => v - h * Math.max(1, Math.abs(v)));
        const op = new Float32Array(n);
        const om = new Float32Array(n);
        native.gluForwardSync(kind, gp, up, op);
        native.gluForwardSync(kind, gm, up, om);
        const fdg = Float64Array.from(op, (v, i) => (c[i] * (v - om[i])) / (gp[i] - gm[i]));
        assertEach(dg, fdg, 2e-3, 2e-3, `${tag} dgate vs finite differences`);
        const upP = up.map((v) => v + 0.01);
        const upM = up.map((v) => v - 0.01);
        native.gluForwardSync(kind, gate, upP, op);
        native.gluForwardSync(kind, gate, upM, om);
        const fdu = Float64Array.from(op, (v, i) => (c[i] * (v - om[i])) / (upP[i] - upM[i]));
        assertEach(du, fdu, 2e-3, 2e-3, `${tag} dup vs finite differences`);
      });
    }
  }
});

test('glu: large |gate| (±30 … ±1e4) gives finite, correct values and gradients', () => {
  forEachIsa((isa) => {
    for (const kind of ['swiglu', 'geglu'] as const) {
      // odd length and mixed with ordinary values, so extremes land in vector bodies and scalar tails
      const gate = Float32Array.from([...GLU_EXTREMES, ...randn(19, 71)]);
      const n = gate.length;
      const up = randn(n, 72).map((v) => v + 0.5);
      const c = randn(n, 73);
      const out = new Float32Array(n);
      const dg = new Float32Array(n);
      const du = new Float32Array(n);
      native.gluForwardSync(kind, gate, up, out);
      native.gluBackwardSync(kind, gate, up, c, dg, du);
      assert.ok(allFinite(out) && allFinite(dg) && allFinite(du), `${isa} ${kind}: non-finite output for large |gate|`);
      const want = new Float64Array(n);
      const dgWant = new Float64Array(n);
      const duWant = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const [a, da] = actRef(kind, gate[i]);
        want[i] = a * up[i];
        duWant[i] = c[i] * a;
        dgWant[i] = c[i] * up[i] * da;
      }
      assertEach(out, want, 1e-5, 1e-6, `${isa} ${kind} out`);
      assertEach(du, duWant, 1e-5, 1e-6, `${isa} ${kind} dup`);
      assertEach(dg, dgWant, 1e-5, dgateAtol(gate, up, c), `${isa} ${kind} dgate`);
    }
  });
});

// ---------------------------------------------------------------- embedding

// rows × dim (× vocab); 64 × 2048 and 37 × 1931 exceed 65536 elements: threaded path
const EMB_SHAPES: [number, number, number][] = [[1, 1, 1], [3, 7, 5], [37, 33, 11], [5, 130, 3], [2, 1031, 9], [64, 2048, 50], [37, 1931, 13]];

test('embedding forward: rows of table × scale (bit-exact), odd and threaded shapes', () => {
  for (const [rows, dim, vocab] of EMB_SHAPES) {
    for (const scale of [1, Math.sqrt(dim), 0.37]) {
      const table = randn(vocab * dim, 81 + dim);
      const r = new Rng(82 + rows);
      const ids = Int32Array.from({ length: rows }, () => r.int(0, vocab - 1));
      // one float32 product per element: the exact product rounded once, so the kernel must be bit-exact
      const s32 = Math.fround(scale);
      const want = new Float32Array(rows * dim);
      for (let k = 0; k < rows * dim; k++) want[k] = table[ids[Math.floor(k / dim)] * dim + (k % dim)] * s32;
      forEachIsa((isa) => {
        const out = filled(rows * dim, NaN);
        native.embeddingForwardSync(rows, dim, ids, table, scale, out);
        assert.ok(bitEqual(out, want), `${isa} ${rows}x${dim} scale ${scale}: max error ${relErr(out, want)}`);
      });
    }
  }
});

test('embedding backward: repeated ids accumulate, dtable is added to, threaded path deterministic', () => {
  forEachIsa((isa) => {
    for (const [rows, dim, vocab] of EMB_SHAPES) {
      const tag = `${isa} ${rows}x${dim}`;
      const scale = Math.sqrt(dim);
      // ids from a small subset of the vocabulary: many repeats, and unused rows that must stay unchanged
      const r = new Rng(91 + rows + dim);
      const used = Math.max(1, Math.floor(vocab / 2));
      const ids = Int32Array.from({ length: rows }, () => r.int(0, used - 1));
      const dout = randn(rows * dim, 92 + dim);
      const d0 = randn(vocab * dim, 93 + dim);
      const dt = d0.slice();
      native.embeddingBackwardSync(rows, dim, ids, dout, scale, dt);
      const want = Float64Array.from(d0);
      const s32 = Math.fround(scale);
      for (let k = 0; k < rows; k++)
        for (let i = 0; i < dim; i++) want[ids[k] * dim + i] += dout[k * dim + i] * s32;
      // float32 accumulation of ≤ 64 terms of size ≈ √dim: ≲ 64·u relative
      assertClose(dt, want, 1e-5, `${tag} dtable`);
      for (let v = used; v < vocab; v++)
        for (let i = 0; i < dim; i++) assert.is(dt[v * dim + i], d0[v * dim + i], `${tag} unused row ${v} changed`);

      // The threads split columns, so each element is summed in row order whatever the thread count.
      const a = d0.slice();
      const b = d0.slice();
      withThreads(1, () => native.embeddingBackwardSync(rows, dim, ids, dout, scale, a));
      withThreads(2, () => native.embeddingBackwardSync(rows, dim, ids, dout, scale, b));
      assert.ok(bitEqual(a, dt) && bitEqual(b, dt), `${tag}: result depends on the thread count or run`);

      // gradient: L = Σ c·forward(table) is linear in the table; ∂L/∂table = backward(c)
      if (rows * dim > 4096) continue;
      const table = randn(vocab * dim, 94 + dim);
      const c = dout;
      const g = new Float32Array(vocab * dim);
      native.embeddingBackwardSync(rows, dim, ids, c, scale, g);
      const L = (): number => {
        const o = new Float32Array(rows * dim);
        native.embeddingForwardSync(rows, dim, ids, table, scale, o);
        return dot64(c, o);
      };
      const someUsed = Array.from(ids.slice(0, 3), (id) => id * dim + (dim - 1));
      fdCheck(`${tag} dtable`, table, pick(vocab * dim, 10, 95 + dim, someUsed), 1e-2, L, g, 1e-3, 1e-3);
    }
  });
});

// ---------------------------------------------------------------- cross-entropy

/** Per-row loss (unweighted) and dlogits (weighted) in float64; -Infinity logits allowed. */
function xentRef(rows: number, vocab: number, logits: Float32Array, targets: Int32Array, ignore: number,
  cap: number, weights: Float32Array | null) {
  const loss = new Float64Array(rows);
  const dl = new Float64Array(rows * vocab);
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    const w = weights ? weights[r] : 1;
    if (t === ignore || w === 0) continue;
    const z = new Float64Array(vocab);
    const dz = new Float64Array(vocab);
    for (let i = 0; i < vocab; i++) {
      const raw = logits[r * vocab + i];
      if (cap > 0) {
        const th = Math.tanh(raw / cap);
        z[i] = cap * th;
        dz[i] = 1 - th * th;
      } else {
        z[i] = raw;
        dz[i] = 1;
      }
    }
    let m = -Infinity;
    for (let i = 0; i < vocab; i++) m = Math.max(m, z[i]);
    let s = 0;
    for (let i = 0; i < vocab; i++) s += Math.exp(z[i] - m);
    loss[r] = m + Math.log(s) - z[t];
    for (let i = 0; i < vocab; i++) dl[r * vocab + i] = w * (Math.exp(z[i] - m) / s - (i === t ? 1 : 0)) * dz[i];
  }
  return { loss, dl };
}

// rows × vocab; 37 × 1031 = 38147 > 32768: threaded path
const XENT_SHAPES: [number, number][] = [[1, 1], [3, 7], [5, 33], [4, 130], [37, 1031]];

test('crossEntropy: loss and dlogits vs float64, softcap 0/5, weights, ignore index, finite differences', () => {
  for (const [rows, vocab] of XENT_SHAPES) {
    for (const cap of [0, 5]) {
      for (const weighted of [false, true]) {
        const n = rows * vocab;
        const logits = randn(n, 101 + vocab + rows, 3);
        const r = new Rng(102 + vocab);
        const targets = Int32Array.from({ length: rows }, () => r.int(0, vocab - 1));
        if (rows >= 3) targets[1] = -100; // an ignored row
        const weights = weighted ? Float32Array.from({ length: rows }, () => 0.3 + 1.7 * r.next()) : null;
        if (weights && rows >= 5) weights[3] = 0; // weight 0: loss 0 and no gradient
        const ref = xentRef(rows, vocab, logits, targets, -100, cap, weights);
        forEachIsa((isa) => {
          const tag = `${isa} ${rows}x${vocab} cap=${cap} weighted=${weighted}`;
          const loss = filled(rows, NaN);
          const dl = filled(n, NaN);
          native.crossEntropySync(rows, vocab, logits, targets, -100, cap, weights, loss, dl);
          // loss ≈ log(vocab) + O(3): float32 lse carries a few u of |m| + log s
          assertEach(loss, ref.loss, 1e-5, 1e-5, `${tag} loss`);
          // probabilities: ~2u from undo_expf + the float sum's relative error ≲ 1e-6
          assertEach(dl, ref.dl, 2e-5, 1e-7, `${tag} dlogits`);
          if (rows >= 3) {
            assert.is(loss[1], 0, `${tag} ignored row loss`);
            for (let i = 0; i < vocab; i++) assert.is(dl[vocab + i], 0, `${tag} ignored row grad`);
          }
          if (weights && rows >= 5) {
            assert.is(loss[3], 0, `${tag} zero-weight row loss`);
            for (let i = 0; i < vocab; i++) assert.is(dl[3 * vocab + i], 0, `${tag} zero-weight row grad`);
          }
          // loss only (dlogits null) gives the same losses
          const loss2 = new Float32Array(rows);
          native.crossEntropySync(rows, vocab, logits, targets, -100, cap, weights, loss2, null);
          assert.ok(bitEqual(loss, loss2), `${tag} loss without dlogits`);

          // finite differences of L = Σ_r w_r·loss_r. The loss (≲ 15) rounds to ~1e-6; with h = 3e-2 that is
          // ≈ 2e-5 in the quotient; truncation h²·|∂³|/6 ≲ 1e-4·max(1, 1/cap²).
          const L = (): number => {
            const l = new Float32Array(rows);
            native.crossEntropySync(rows, vocab, logits, targets, -100, cap, weights, l, null);
            let s = 0;
            for (let k = 0; k < rows; k++) s += (weights ? weights[k] : 1) * l[k];
            return s;
          };
          const t0 = targets[0];
          const extra = [t0, vocab + 1, 3 * vocab + 2]; // row 0's target, an ignored-row entry, a zero-weight one
          fdCheck(`${tag} dlogits`, logits, pick(n, 12, 103 + vocab, extra), 3e-2, L, dl, 3e-3, 3e-4);
        });
      }
    }
  }
});

test('crossEntropy: extreme logits (±1e4, -Infinity) give finite loss and gradient', () => {
  forEachIsa((isa) => {
    for (const cap of [0, 5]) {
      const vocab = 37;
      const rows = 4;
      const logits = randn(rows * vocab, 111, 2);
      const r = new Rng(112);
      // row 0: ±1e4 everywhere, target at a +1e4 entry; row 1: the same logits, target at a −1e4 entry
      for (let i = 0; i < vocab; i++) logits[i] = logits[vocab + i] = r.next() < 0.5 ? -1e4 : 1e4;
      logits[5] = 1e4;
      logits[vocab + 6] = -1e4;
      // row 2: a third of the vocabulary masked with -Infinity; row 3: all but two entries -Infinity
      for (let i = 0; i < vocab; i += 3) logits[2 * vocab + i] = -Infinity;
      for (let i = 0; i < vocab; i++) if (i !== 4 && i !== 9) logits[3 * vocab + i] = -Infinity;
      const targets = Int32Array.from([5, 6, 4, 9]);
      const weights = Float32Array.from([1, 0.5, 2, 1]);
      const loss = new Float32Array(rows);
      const dl = new Float32Array(rows * vocab);
      native.crossEntropySync(rows, vocab, logits, targets, -100, cap, weights, loss, dl);
      const tag = `${isa} cap=${cap}`;
      assert.ok(allFinite(loss) && allFinite(dl), `${tag}: non-finite loss or gradient`);
      const ref = xentRef(rows, vocab, logits, targets, -100, cap, weights);
      assert.ok(allFinite(ref.loss) && allFinite(ref.dl), 'reference is finite');
      // row 1's loss is ≈ 2e4 without the cap: its float32 ulp is 2e-3, so compare relative to the loss
      assertEach(loss, ref.loss, 2e-6, 1e-5, `${tag} loss`);
      assertEach(dl, ref.dl, 2e-5, 1e-7, `${tag} dlogits`);
      for (let i = 0; i < vocab; i++) {
        if (logits[2 * vocab + i] === -Infinity) assert.ok(Math.abs(dl[2 * vocab + i]) < 1e-30, `${tag} -inf entry has a gradient`);
      }
      // gradient of each row sums to zero (softmax − onehot), times dz/draw = 1 without the cap
      if (cap === 0)
        for (let k = 0; k < rows; k++) {
          let s = 0;
          for (let i = 0; i < vocab; i++) s += dl[k * vocab + i];
          assert.ok(Math.abs(s) < 1e-5, `${tag} row ${k} gradient sums to ${s}`);
        }
    }
  });
});

test('crossEntropy: dlogits may alias logits (in place), also on the threaded path', () => {
  for (const [rows, vocab] of XENT_SHAPES) {
    for (const cap of [0, 5]) {
      const logits = randn(rows * vocab, 121 + vocab, 3);
      const r = new Rng(122);
      const targets = Int32Array.from({ length: rows }, () => r.int(0, vocab - 1));
      if (rows >= 3) targets[2] = -1;
      const weights = Float32Array.from({ length: rows }, () => 0.5 + r.next());
      const ref = xentRef(rows, vocab, logits, targets, -1, cap, weights);
      forEachIsa((isa) => {
        const loss = new Float32Array(rows);
        const dl = new Float32Array(rows * vocab);
        native.crossEntropySync(rows, vocab, logits, targets, -1, cap, weights, loss, dl);
        const inplace = logits.slice();
        const loss2 = new Float32Array(rows);
        native.crossEntropySync(rows, vocab, inplace, targets, -1, cap, weights, loss2, inplace);
        const tag = `${isa} ${rows}x${vocab} cap=${cap}`;
        assert.ok(bitEqual(loss, loss2), `${tag} loss in place`);
        assert.ok(bitEqual(dl, inplace), `${tag} dlogits in place`);
        assertEach(inplace, ref.dl, 2e-5, 1e-7, `${tag} vs reference`);
        assertEach(loss2, ref.loss, 1e-5, 1e-5, `${tag} loss vs reference`);
      });
    }
  }
});

// ---------------------------------------------------------------- AdamW and sum of squares

interface Hyper { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; gradScale: number }

/**
 * PyTorch AdamW (decoupled decay) in float64, one step:
 *   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  p ← p − lr/bc1 · m / (√v/√bc2 + eps).
 * The kernel receives its hyper-parameters as float32 (AdamWParams), so the reference uses the same
 * float32-rounded values. (PyTorch instead rounds 1 − β2 itself to float32; for β2 = 0.999 the two
 * (1 − β2) differ by 1.3e-5 relative — a hyper-parameter rounding, not an arithmetic error.)
 */
function adamwRef(p: Float64Array, g: Float32Array, m: Float64Array, v: Float64Array, h: Hyper, step: number): void {
  const f = Math.fround;
  const [lr, b1, b2, eps, wd, gs] = [f(h.lr), f(h.beta1), f(h.beta2), f(h.eps), f(h.weightDecay), f(h.gradScale)];
  const bc1 = 1 - b1 ** step;
  const bc2 = 1 - b2 ** step;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * gs;
    p[i] *= 1 - lr * wd;
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    p[i] -= (lr / bc1) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps));
  }
}

test('adamwUpdate: 3 steps follow float64 PyTorch AdamW (decoupled decay, bias correction, gradScale)', () => {
  // 100003 > 32768-element chunks: threaded path with a partial chunk
  for (const n of [1, 7, 33, 1031, 100003]) {
    const h: Hyper = { lr: 3e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: 0.37 };
    const p0 = randn(n, 131 + n);
    const grads = [1, 2, 3].map((step) => {
      const g = randn(n, 132 + n + step, 2);
      if (n > 7) g[3] = 0; // a zero gradient entry: update from momentum alone
      return g;
    });
    const pr = Float64Array.from(p0);
    const mr = new Float64Array(n);
    const vr = new Float64Array(n);
    grads.forEach((g, k) => adamwRef(pr, g, mr, vr, h, k + 1));
    forEachIsa((isa) => {
      const p = p0.slice();
      const m = new Float32Array(n);
      const v = new Float32Array(n);
      grads.forEach((g, k) => native.adamwUpdateSync(p, g, m, v, { ...h, step: k + 1 }));
      const tag = `${isa} n=${n}`;
      // float32 state vs float64: a few u per step on m, v; the update m/(√v/√bc2 + eps) ≈ O(lr) adds
      // ~1e-7 absolute to p = O(1)
      assertClose(m, mr, 1e-6, `${tag} m`);
      assertClose(v, vr, 1e-6, `${tag} v`);
      assertEach(p, pr, 1e-6, 1e-6, `${tag} param`);
    });
  }
});

test('adamwUpdate: defaults (beta2 0.999, no decay, gradScale 1), pure decay, thread-independent', () => {
  forEachIsa((isa) => {
    const n = 1031;
    const p = randn(n, 141);
    const g = randn(n, 142);
    const m = new Float32Array(n);
    const v = new Float32Array(n);
    native.adamwUpdateSync(p.slice(), g, m, v, { lr: 1e-3, step: 1 });
    const pr = Float64Array.from(p);
    const mr = new Float64Array(n);
    const vr = new Float64Array(n);
    adamwRef(pr, g, mr, vr, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, gradScale: 1 }, 1);
    assertClose(m, mr, 1e-6, `${isa} default m`);
    assertClose(v, vr, 1e-6, `${isa} default v`);

    // zero gradient and zero state: p ← p·(1 − lr·wd) exactly as a float32 product
    const q = p.slice();
    native.adamwUpdateSync(q, new Float32Array(n), new Float32Array(n), new Float32Array(n), { lr: 0.5, weightDecay: 0.2, step: 4 });
    const decay = Math.fround(1 - Math.fround(Math.fround(0.5) * Math.fround(0.2)));
    for (let i = 0; i < n; i++) assert.is(q[i], Math.fround(p[i] * decay), `${isa} decay element ${i}`);

    // elementwise update: bit-identical for any thread count
    const N = 100003;
    const run = (threads: number): Float32Array[] => withThreads(threads, () => {
      const pp = randn(N, 143);
      const mm = randn(N, 144, 0.1);
      const vv = randn(N, 145, 0.1).map((x) => x * x);
      native.adamwUpdateSync(pp, randn(N, 146), mm, vv, { lr: 1e-2, weightDecay: 0.1, gradScale: 0.5, step: 7 });
      return [pp, mm, vv];
    });
    const a = run(1);
    const b = run(2);
    for (let k = 0; k < 3; k++) assert.ok(bitEqual(a[k], b[k]), `${isa} adamw state ${k} depends on the thread count`);
  });
});

test('sumSquares: float64 sum, odd sizes, bit-identical for 1 and 2 threads', () => {
  forEachIsa((isa) => {
    for (const n of [0, 1, 7, 33, 130, 4097, 100003]) {
      const x = randn(n, 151 + n, 3);
      let want = 0;
      for (let i = 0; i < n; i++) want += x[i] * x[i];
      const got = native.sumSquaresSync(x);
      // float32 partials over 4096-element chunks (SIMD lanes), summed in double: ≲ 1e-6 relative
      assert.ok(Math.abs(got - want) <= (SANITIZED ? 4e-6 : 1e-6) * want + (n === 0 ? 0 : 1e-30), `${isa} n=${n}: ${got} vs ${want}`);
      if (n === 0) assert.is(got, 0);
    }
    const x = randn(100003, 152);
    const s1 = withThreads(1, () => native.sumSquaresSync(x));
    const s2 = withThreads(2, () => native.sumSquaresSync(x));
    const s2b = withThreads(2, () => native.sumSquaresSync(x));
    assert.ok(Object.is(s1, s2) && Object.is(s2, s2b), `${isa}: ${s1} (1 thread) vs ${s2} / ${s2b} (2 threads)`);
  });
});

// ---------------------------------------------------------------- random fills

test("fillRandom 'normal': mean 0, std 1, Gaussian shape (CLT bounds), mean/std arguments", () => {
  const n = 200001; // odd: the last element is the first half of a Box–Muller pair
  for (const [mu, sd] of [[0, 1], [3, 2]]) {
    const x = new Float32Array(n);
    native.fillRandomSync(x, 1234, 'model.layers.0.mlp.up_proj.weight', 'normal', mu, sd);
    assert.ok(allFinite(x), 'finite');
    let s = 0;
    let s2 = 0;
    let lag = 0;
    let within = 0;
    for (let i = 0; i < n; i++) {
      const z = (x[i] - mu) / sd;
      s += z;
      s2 += z * z;
      if (i > 0) lag += z * ((x[i - 1] - mu) / sd);
      if (Math.abs(z) < 1) within++;
    }
    const mean = s / n;
    const variance = s2 / n - mean * mean;
    // 5σ bounds from the CLT: sd(mean) = 1/√n ≈ 2.2e-3, sd(variance) = √(2/n) ≈ 3.2e-3,
    // sd(fraction within 1σ) = √(p(1−p)/n) ≈ 1.0e-3 with p = 0.6827
    assert.ok(Math.abs(mean) < 5 / Math.sqrt(n), `mean ${mean} (mu ${mu})`);
    assert.ok(Math.abs(variance - 1) < 5 * Math.sqrt(2 / n), `variance ${variance} (sd ${sd})`);
    const p = 0.6826894921370859;
    assert.ok(Math.abs(within / n - p) < 5 * Math.sqrt((p * (1 - p)) / n), `fraction within 1σ ${within / n}`);
    // neighbours (incl. the two halves of a Box–Muller pair) uncorrelated: sd of the lag-1 mean ≈ 1/√n
    assert.ok(Math.abs(lag / (n - 1)) < 5 / Math.sqrt(n), `lag-1 correlation ${lag / (n - 1)}`);
  }
});

test("fillRandom 'uniform': values in [a, b), mean and variance (CLT bounds), never b", () => {
  const n = 200001;
  const [a, b] = [-2, 3];
  const x = new Float32Array(n);
  native.fillRandomSync(x, 99, 'u', 'uniform', a, b);
  let s = 0;
  let s2 = 0;
  let lag = 0;
  let outside = -1;
  for (let i = 0; i < n; i++) {
    if (!(x[i] >= a && x[i] < b) && outside < 0) outside = i;
    s += x[i];
    s2 += x[i] * x[i];
    if (i > 0) lag += (x[i] - 0.5) * (x[i - 1] - 0.5);
  }
  assert.is(outside, -1, `element ${outside} = ${x[outside]} outside [${a}, ${b})`);
  const mean = s / n;
  const variance = s2 / n - mean * mean;
  const sdU = (b - a) / Math.sqrt(12);
  assert.ok(Math.abs(mean - (a + b) / 2) < (5 * sdU) / Math.sqrt(n), `mean ${mean}`);
  // var of x² for U(a,b) is bounded by (b−a)⁴/45 ≈ 14: 5σ ≈ 5·√(14/n)
  assert.ok(Math.abs(variance - sdU * sdU) < 5 * Math.sqrt(14 / n), `variance ${variance}`);
  // lag-1 covariance of independent neighbours: 0 ± var/√n (the four words of one Philox block included)
  assert.ok(Math.abs(lag / (n - 1)) < (5 * sdU * sdU) / Math.sqrt(n), `lag-1 covariance ${lag / (n - 1)}`);

  // Seed 2459305 / stream 'u' draws the 32-bit word 4294967248 at element 2: (w + 0.5)/2^32 rounds to 1.0f
  // in float32, and 1 + 1·(1 − 2^-24) rounds to 2. Both must still stay below b.
  for (const [lo, hi] of [[0, 1], [1, 2], [-0.5, 0.5]]) {
    const y = new Float32Array(4);
    native.fillRandomSync(y, 2459305, 'u', 'uniform', lo, hi);
    for (let i = 0; i < 4; i++) assert.ok(y[i] >= lo && y[i] < hi, `[${lo}, ${hi}): element ${i} = ${y[i]}`);
    assert.ok(y[2] > hi - 1e-6 * (hi - lo + Math.abs(hi)), `[${lo}, ${hi}): element 2 = ${y[2]} should be just below ${hi}`);
  }
});

test('fillRandom: counter-based (thread-, ISA- and length-independent); seeds and streams differ', () => {
  const n = 200001; // > 65536: threaded path
  for (const kind of ['normal', 'uniform'] as const) {
    const gen = (seed: number, stream: string, len = n): Float32Array => {
      const x = new Float32Array(len);
      native.fillRandomSync(x, seed, stream, kind, 0, 1);
      return x;
    };
    const a = withThreads(1, () => gen(7, 's'));
    const b = withThreads(2, () => gen(7, 's'));
    assert.ok(bitEqual(a, b), `${kind}: 1 vs 2 threads`);
    forEachIsa((isa) => assert.ok(bitEqual(gen(7, 's'), a), `${kind}: ISA ${isa}`));
    // element i depends only on (seed, stream, i): a shorter fill is a prefix
    for (const len of [1, 3, 7, 1031]) assert.ok(bitEqual(gen(7, 's', len), a.subarray(0, len)), `${kind}: prefix ${len}`);
    const others = [gen(8, 's'), gen(7, 't'), gen(7, 's2'), gen(2 ** 32 + 7, 's')];
    for (const [k, o] of others.entries()) {
      let same = 0;
      for (let i = 0; i < n; i++) if (o[i] === a[i]) same++;
      // independent streams: matches happen only by float32 coincidence (≪ 1%)
      assert.ok(same < n / 1000, `${kind}: variant ${k} shares ${same} of ${n} values with seed 7 / stream 's'`);
    }
  }
});

// ---------------------------------------------------------------- LayerNorm (GPT-2)

function layernormRef(rows: number, dim: number, x: Float32Array, w: Float32Array, b: Float32Array | null, eps: number, dy: Float32Array) {
  const y = new Float64Array(rows * dim), dx = new Float64Array(rows * dim), dw = new Float64Array(dim), db = new Float64Array(dim);
  const mean = new Float64Array(rows), rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let mu = 0;
    for (let i = 0; i < dim; i++) mu += x[r * dim + i];
    mu /= dim;
    let v = 0;
    for (let i = 0; i < dim; i++) v += (x[r * dim + i] - mu) ** 2;
    const s = 1 / Math.sqrt(v / dim + eps);
    mean[r] = mu;
    rstd[r] = s;
    let sg = 0, sgx = 0;
    for (let i = 0; i < dim; i++) {
      const xh = (x[r * dim + i] - mu) * s;
      y[r * dim + i] = xh * w[i] + (b ? b[i] : 0);
      sg += dy[r * dim + i] * w[i];
      sgx += dy[r * dim + i] * w[i] * xh;
      dw[i] += dy[r * dim + i] * xh;
      db[i] += dy[r * dim + i];
    }
    for (let i = 0; i < dim; i++) {
      const xh = (x[r * dim + i] - mu) * s;
      dx[r * dim + i] = s * (dy[r * dim + i] * w[i] - sg / dim - (xh * sgx) / dim);
    }
  }
  return { y, mean, rstd, dx, dw, db };
}

test('layernorm forward/backward: y, mean, rstd, dx (overwrite and accumulate), dw, db vs float64 and finite differences', () => {
  for (const [rows, dim] of NORM_SHAPES) {
    const n = rows * dim;
    // an offset mean (3.0) makes a one-pass variance lose digits: the kernel must centre first
    const x = randn(n, 31 + dim + rows, 1.3).map((v) => v + 3);
    const w = randn(dim, 32 + dim, 0.3).map((v) => 1 + v);
    const b = randn(dim, 33 + dim, 0.5);
    const eps = 1e-5;
    const c = randn(n, 34 + dim);
    const ref = layernormRef(rows, dim, x, w, b, eps, c);
    forEachIsa((isa) => {
      const tag = `${isa} ${rows}x${dim}`;
      const y = filled(n, NaN), mean = filled(rows, NaN), rstd = filled(rows, NaN);
      native.layernormForwardSync(rows, dim, x, w, b, eps, y, mean, rstd);
      assertScaled(y, ref.y, maxAbs(ref.y) + 1, 2e-6, `${tag} y`);
      assertClose(mean, ref.mean, SANITIZED ? 4e-6 : 1e-6, `${tag} mean`);
      if (dim > 1) assertClose(rstd, ref.rstd, 2e-5, `${tag} rstd`);
      const yNoBias = filled(n, NaN);
      native.layernormForwardSync(rows, dim, x, w, null, eps, yNoBias, null, null);
      assertScaled(yNoBias, Float64Array.from(ref.y, (v, i) => v - b[i % dim]), maxAbs(ref.y) + 1, 2e-6, `${tag} y without bias`);

      const dx = filled(n, NaN);
      const dw0 = randn(dim, 35 + dim), db0 = randn(dim, 36 + dim);
      const dw = dw0.slice(), db = db0.slice();
      native.layernormBackwardSync(rows, dim, x, w, mean, rstd, c, dx, false, dw, db);
      const gScale = (maxAbs(ref.dx) + maxAbs(w)) * maxAbs(c) * maxAbs(rstd);
      assertScaled(dx, ref.dx, gScale, 2e-5, `${tag} dx`);
      assertClose(dw, Float64Array.from(ref.dw, (v, i) => v + dw0[i]), 3e-5, `${tag} dw`);
      assertClose(db, Float64Array.from(ref.db, (v, i) => v + db0[i]), 3e-5, `${tag} db`);
      const d0 = randn(n, 37 + dim);
      const acc = d0.slice();
      native.layernormBackwardSync(rows, dim, x, w, mean, rstd, c, acc, true, null, null);
      assertScaled(acc, Float64Array.from(ref.dx, (v, i) => v + d0[i]), gScale + maxAbs(d0), 2e-5, `${tag} dx accumulate`);

      if (dim < 7) return; // dim 1: y = b exactly, no gradient through x
      const L = (): number => {
        const yy = new Float32Array(n);
        native.layernormForwardSync(rows, dim, x, w, b, eps, yy, null, null);
        return dot64(c, yy);
      };
      fdCheck(`${tag} dx`, x, pick(n, 10, 38 + dim), 1e-2, L, dx, 5e-3, 3e-3);
      fdCheck(`${tag} dw`, w, pick(dim, 5, 39 + dim), 1e-2, L, dw.map((v, i) => v - dw0[i]), 5e-3, 5e-3);
      fdCheck(`${tag} db`, b, pick(dim, 5, 40 + dim), 1e-2, L, db.map((v, i) => v - db0[i]), 5e-3, 5e-3);
    });
  }
});

// ---------------------------------------------------------------- linear-layer bias

test('biasAdd adds b to every row; biasGrad adds the column sums (threaded path included, deterministic)', () => {
  for (const [rows, n] of [[1, 1], [3, 7], [37, 33], [300, 1031]] as const) {
    const y = randn(rows * n, 41 + n), b = randn(n, 42 + n), dy = randn(rows * n, 43 + n), db0 = randn(n, 44 + n);
    const want = Float64Array.from(y, (v, i) => v + b[i % n]);
    const sums = new Float64Array(n);
    for (let r = 0; r < rows; r++) for (let i = 0; i < n; i++) sums[i] += dy[r * n + i];
    const out: Float32Array[] = [];
    forEachIsa((isa) => {
      const yy = y.slice();
      native.biasAddSync(rows, n, b, yy);
      assertClose(yy, want, 1e-6, `${isa} ${rows}x${n} biasAdd`);
      const db = db0.slice();
      native.biasGradSync(rows, n, dy, db);
      assertScaled(db, Float64Array.from(sums, (v, i) => v + db0[i]), Math.sqrt(rows) * 4, 1e-6, `${isa} ${rows}x${n} biasGrad`);
      out.push(db);
    });
    for (const t of [1, 2]) {
      const db = withThreads(t, () => {
        const d = db0.slice();
        native.biasGradSync(rows, n, dy, d);
        return d;
      });
      assert.ok(bitEqual(db, out[out.length - 1]), `biasGrad ${rows}x${n}: ${t} threads give the same bits`);
    }
  }
});

// ---------------------------------------------------------------- plain MLP activations (GPT-2's gelu_new)

test('act forward/backward: SiLU and tanh-GELU alone vs float64 and finite differences, dx may alias dout', () => {
  for (const kind of ['swiglu', 'geglu'] as const) {
    for (const n of GLU_SIZES) {
      const x = randn(n, 51 + n, 3);
      x.set(GLU_EXTREMES.slice(0, Math.min(n, GLU_EXTREMES.length)));
      const dout = randn(n, 52 + n);
      forEachIsa((isa) => {
        const y = filled(n, NaN), dx = filled(n, NaN);
        native.actForwardSync(kind, x, y);
        native.actBackwardSync(kind, x, dout, dx);
        const yRef = Float64Array.from(x, (g) => actRef(kind, g)[0]);
        const dRef = Float64Array.from(x, (g, i) => dout[i] * actRef(kind, g)[1]);
        assertEach(y, yRef, 1e-5, 1e-6, `${isa} ${kind} n=${n} act`);
        assertEach(dx, dRef, 1e-5, dgateAtol(x, filled(n, 1), dout), `${isa} ${kind} n=${n} dact`);
        const alias = dout.slice();
        native.actBackwardSync(kind, x, alias, alias);
        assert.ok(bitEqual(alias, dx), `${isa} ${kind} n=${n}: in place equals out of place`);
        if (n === 33) {
          const L = () => {
            const yy = new Float32Array(n);
            native.actForwardSync(kind, x, yy);
            return dot64(dout, yy);
          };
          fdCheck(`${isa} ${kind} dx`, x, pick(n, 8, 53, [20, 25]), 1e-3, L, dx, 2e-3, 1e-3);
        }
      });
    }
  }
});

// ---------------------------------------------------------------- RoPE scalings

/** HF's rope scalings, written out independently (modeling_rope_utils semantics), in float64. */
function invFreqRef(D: number, L: number, r: { theta: number; scaling: string; factor?: number; lowFreqFactor?: number; highFreqFactor?: number; originalMaxPositions?: number }): number[] {
  let theta = r.theta;
  const L0 = r.originalMaxPositions ?? 0, f = r.factor ?? 1;
  if (r.scaling === 'dynamic' && L > L0) theta *= (f * L / L0 - (f - 1)) ** (D / (D - 2));
  const out: number[] = [];
  for (let i = 0; i < D / 2; i++) {
    const base = 1 / theta ** ((2 * i) / D);
    if (r.scaling === 'linear') out.push(base / f);
    else if (r.scaling === 'llama3') {
      const lo = r.lowFreqFactor!, hi = r.highFreqFactor!;
      const wl = (2 * Math.PI) / base;
      if (wl < L0 / hi) out.push(base);
      else if (wl > L0 / lo) out.push(base / f);
      else {
        const s = (L0 / wl - lo) / (hi - lo);
        out.push((1 - s) * (base / f) + s * base);
      }
    } else out.push(base);
  }
  return out;
}

test('ropeInvFreq: default, linear, dynamic (below and above the original context) and llama3 (all three bands)', () => {
  const D = 128;
  const cases = [
    { theta: 500000, scaling: 'none' },
    { theta: 10000, scaling: 'linear', factor: 4 },
    { theta: 10000, scaling: 'dynamic', factor: 2, originalMaxPositions: 2048 },
    { theta: 500000, scaling: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
  ] as const;
  for (const r of cases) {
    for (const L of [100, 2048, 5000]) {
      const got = native.ropeInvFreq(D, L, r);
      assertClose(got, invFreqRef(D, L, r), 1e-12, `${r.scaling} L=${L}`);
    }
  }
  // the llama3 case really exercises the three bands, and dynamic really moves the base above L0
  const l3 = cases[3];
  const wl = invFreqRef(D, 0, { theta: l3.theta, scaling: 'none' }).map((v) => (2 * Math.PI) / v);
  assert.ok(wl.some((w) => w < 8192 / 4) && wl.some((w) => w > 8192) && wl.some((w) => w >= 2048 && w <= 8192), 'llama3 bands');
  const dyn = cases[2];
  assert.ok(native.ropeInvFreq(D, 5000, dyn)[10] < native.ropeInvFreq(D, 2048, dyn)[10], 'dynamic: longer sequence, lower frequencies');
});

test.run();
