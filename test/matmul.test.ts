/**
 * CPU SGEMM (native/cpu/matmul.cc) on every ISA the CPU supports, against a float64 JS reference:
 * odd shapes (edge tiles in M, N and K, several K blocks), all four transpose combinations, alpha ≠ 1,
 * beta 0 / 1 / 0.5, leading dimensions larger than the minimum (the padding must stay untouched), NaN in C
 * with beta = 0 (must be overwritten, never read), K = 0 and empty shapes, and 1 vs all threads.
 *
 * Error metric per entry: |kernel − reference| / (|alpha|·Σ_k|a_ik·b_kj| + |beta·c_ij|), which bounds the
 * float32 rounding of any summation order; the tolerance grows like sqrt(K).
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { native } from '../lib/core/native';
import { forEachIsa } from './helpers';

function randomArray(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    a[i] = (s / 4294967296) * 2 - 1;
  }
  return a;
}

interface Problem {
  ta: boolean;
  tb: boolean;
  M: number;
  N: number;
  K: number;
  lda: number;
  ldb: number;
  ldc: number;
  A: Float32Array;
  B: Float32Array;
  C0: Float32Array;
  /** op(A)·op(B) and Σ|a·b| in float64, M×N */
  P: Float64Array;
  Pabs: Float64Array;
}

function problem(ta: boolean, tb: boolean, M: number, N: number, K: number, pad: number, seed: number): Problem {
  const lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + 2 * pad, ldc = N + 3 * pad;
  const A = randomArray(Math.max(1, (ta ? K : M) * lda), seed);
  const B = randomArray(Math.max(1, (tb ? N : K) * ldb), seed + 1);
  const C0 = randomArray(Math.max(1, M * ldc), seed + 2);
  const P = new Float64Array(M * N), Pabs = new Float64Array(M * N);
  const a = new Float64Array(K);
  for (let i = 0; i < M; i++) {
    for (let k = 0; k < K; k++) a[k] = ta ? A[k * lda + i] : A[i * lda + k];
    for (let j = 0; j < N; j++) {
      let s = 0, sa = 0;
      for (let k = 0; k < K; k++) {
        const p = a[k] * (tb ? B[j * ldb + k] : B[k * ldb + j]);
        s += p;
        sa += Math.abs(p);
      }
      P[i * N + j] = s;
      Pabs[i * N + j] = sa;
    }
  }
  return { ta, tb, M, N, K, lda, ldb, ldc, A, B, C0, P, Pabs };
}

/** Runs native.gemm on a copy of C0 and returns the worst scaled error (Infinity on NaN or padding damage). */
function runGemm(p: Problem, alpha: number, beta: number, nanC: boolean): number {
  const C = p.C0.slice();
  if (nanC) for (let i = 0; i < p.M; i++) for (let j = 0; j < p.N; j++) C[i * p.ldc + j] = NaN;
  native.gemmSync(p.ta, p.tb, p.M, p.N, p.K, alpha, p.A, p.lda, p.B, p.ldb, beta, C, p.ldc);
  let worst = 0;
  for (let i = 0; i < p.M; i++) {
    for (let j = 0; j < p.ldc && i * p.ldc + j < C.length; j++) {
      const got = C[i * p.ldc + j];
      if (j >= p.N) {
        if (!Object.is(got, p.C0[i * p.ldc + j])) return Infinity;
        continue;
      }
      const c0 = nanC ? 0 : p.C0[i * p.ldc + j];
      const want = alpha * p.P[i * p.N + j] + (beta === 0 ? 0 : beta * c0);
      const scale = Math.abs(alpha) * p.Pabs[i * p.N + j] + Math.abs(beta * c0) + 1e-30;
      const e = Math.abs(got - want) / scale;
      if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
    }
  }
  return worst;
}


function withThreads(n: number, fn: () => void): void {
  const prev = native.getThreads();
  try {
    native.setThreads(n);
    fn();
  } finally {
    native.setThreads(prev);
  }
}

const tol = (K: number) => 1e-6 * (4 + Math.sqrt(K));

// shapes: edge tiles around every micro-kernel size (6, 8, 14, 16, 32), K across the K-block sizes (256, 1024)
const SHAPES: [number, number, number][] = [];
for (const M of [1, 7, 17, 33, 65]) for (const N of [1, 3, 17, 33, 65]) SHAPES.push([M, N, [1, 16, 31, 300][(M + N) % 4]]);
SHAPES.push([130, 70, 257], [3, 200, 520], [300, 5, 64], [97, 129, 600], [1, 1, 1000], [20, 45, 1100], [33, 17, 2100]);

const COMBOS: [boolean, boolean][] = [[false, false], [false, true], [true, false], [true, true]];

test('gemm matches a float64 reference on odd shapes, all transposes, every ISA', () => {
  let seed = 1;
  const problems: Problem[] = [];
  for (const [ta, tb] of COMBOS) for (const [M, N, K] of SHAPES) problems.push(problem(ta, tb, M, N, K, seed % 3, seed++));
  const cases: [number, number, boolean][] = [[1, 0, true], [0.75, 1, false], [-1.5, 0.5, false]];
  const threads = native.getThreads();
  forEachIsa((isa) => {
    for (const th of threads > 1 ? [1, threads] : [1]) {
      withThreads(th, () => {
        for (const p of problems) {
          for (const [alpha, beta, nanC] of cases) {
            const e = runGemm(p, alpha, beta, nanC);
            assert.ok(e <= tol(p.K), `${isa} threads=${th} ta=${p.ta} tb=${p.tb} M=${p.M} N=${p.N} K=${p.K} ` +
              `lda=${p.lda} ldb=${p.ldb} ldc=${p.ldc} alpha=${alpha} beta=${beta}${nanC ? ' (NaN C)' : ''}: ` +
              `error ${e.toExponential(3)} > ${tol(p.K).toExponential(3)}`);
          }
        }
      });
    }
  });
});

test('gemm at a threaded training-like shape (x·Wᵀ, dY·W, dYᵀ·X), every ISA', () => {
  const T = 512, d = 96, f = 160;
  const forms: [string, boolean, boolean, number, number, number][] = [
    ['x·Wᵀ', false, true, T, f, d],
    ['dY·W', false, false, T, d, f],
    ['dYᵀ·X', true, false, f, d, T],
  ];
  const problems = forms.map(([, ta, tb, M, N, K], i) => problem(ta, tb, M, N, K, 0, 100 + i));
  forEachIsa((isa) => {
    problems.forEach((p, i) => {
      for (const [alpha, beta, nanC] of [[1, 0, true], [1, 1, false]] as [number, number, boolean][]) {
        const e = runGemm(p, alpha, beta, nanC);
        assert.ok(e <= tol(p.K), `${isa} ${forms[i][0]} beta=${beta}: error ${e.toExponential(3)}`);
      }
    });
  });
});

test('gemm: K = 0 gives beta·C (beta = 0 overwrites NaN), M or N = 0 touches nothing', () => {
  forEachIsa((isa) => {
    const empty = new Float32Array(1);
    const C = new Float32Array(5 * 9).fill(NaN);
    native.gemmSync(false, true, 5, 7, 0, 1, empty, 1, empty, 1, 0, C, 9);
    const D = new Float32Array(5 * 9).fill(2);
    native.gemmSync(true, false, 5, 7, 0, 1, empty, 5, empty, 7, 0.5, D, 9);
    for (let i = 0; i < 5; i++) {
      for (let j = 0; j < 9; j++) {
        if (j < 7) {
          assert.is(C[i * 9 + j], 0, `${isa}: K=0 beta=0 must zero C`);
          assert.is(D[i * 9 + j], 1, `${isa}: K=0 beta=0.5 must halve C`);
        } else {
          assert.ok(Number.isNaN(C[i * 9 + j]), `${isa}: padding of C written`);
          assert.is(D[i * 9 + j], 2, `${isa}: padding of C written`);
        }
      }
    }
    const E = new Float32Array(4).fill(3);
    const A = randomArray(10, 1), B = randomArray(10, 2);
    native.gemmSync(false, false, 0, 2, 5, 1, A, 5, B, 2, 0, E, 2);
    native.gemmSync(false, false, 2, 0, 5, 1, A, 5, B, 2, 0, E, 2);
    assert.equal(Array.from(E), [3, 3, 3, 3], `${isa}: empty gemm wrote C`);
  });
});

test.run();
