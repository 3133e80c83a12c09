/**
 * bf16 GEMM with fp32 accumulation (native/cpu/matmul_bf16.cc on AVX512-BF16, the emulation in matmul.cc
 * elsewhere) against a float64 reference of its definition, C = bf16(alpha·op(A))·bf16(op(B)) + beta·C, on
 * every ISA the CPU supports (avx512 runs the VDPBF16PS kernel where cpuid has AVX512-BF16; avx2 and generic
 * force the emulation): odd shapes around the 14×32 micro-tile and the 1024-k block, odd K (a padded last
 * pair), all transposes, alpha ≠ 1, beta 0 / 1 / 0.5, padded leading dimensions left untouched, NaN in C
 * with beta = 0 overwritten, 1 vs all threads. A second check proves the rounding happens: against the plain
 * fp32 product the error is far above fp32 rounding.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { native } from '../lib/core/native';
import { forEachIsa } from './helpers';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** round to the nearest bf16, ties to even (finite inputs) */
function bf16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  u32[0] = ((u + 0x7fff + ((u >>> 16) & 1)) & 0xffff0000) >>> 0;
  return f32[0];
}

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

interface Case {
  ta: boolean; tb: boolean; M: number; N: number; K: number; lda: number; ldb: number; ldc: number;
  A: Float32Array; B: Float32Array; C0: Float32Array;
}

function make(ta: boolean, tb: boolean, M: number, N: number, K: number, pad: number, seed: number): Case {
  const lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + 2 * pad, ldc = N + 3 * pad;
  return {
    ta, tb, M, N, K, lda, ldb, ldc,
    A: randomArray(Math.max(1, (ta ? K : M) * lda), seed),
    B: randomArray(Math.max(1, (tb ? N : K) * ldb), seed + 1),
    C0: randomArray(Math.max(1, M * ldc), seed + 2),
  };
}

/** worst scaled error of gemmBf16 against the reference with (round) or without bf16 rounding */
function worstError(p: Case, alpha: number, beta: number, nanC: boolean, round: boolean): number {
  const C = p.C0.slice();
  if (nanC) for (let i = 0; i < p.M; i++) for (let j = 0; j < p.N; j++) C[i * p.ldc + j] = NaN;
  native.gemmBf16Sync(p.ta, p.tb, p.M, p.N, p.K, alpha, p.A, p.lda, p.B, p.ldb, beta, C, p.ldc);
  const r = (x: number) => (round ? bf16(x) : x);
  const a = new Float64Array(p.K);
  let worst = 0;
  for (let i = 0; i < p.M; i++) {
    for (let k = 0; k < p.K; k++) a[k] = r(alpha * (p.ta ? p.A[k * p.lda + i] : p.A[i * p.lda + k]));
    for (let j = 0; j < p.ldc && i * p.ldc + j < C.length; j++) {
      const got = C[i * p.ldc + j];
      if (j >= p.N) {
        if (!Object.is(got, p.C0[i * p.ldc + j])) return Infinity;
        continue;
      }
      let s = 0, sa = 0;
      for (let k = 0; k < p.K; k++) {
        const v = a[k] * r(p.tb ? p.B[j * p.ldb + k] : p.B[k * p.ldb + j]);
        s += v;
        sa += Math.abs(v);
      }
      const c0 = nanC ? 0 : p.C0[i * p.ldc + j];
      const want = s + (beta === 0 ? 0 : beta * c0);
      const e = Math.abs(got - want) / (sa + Math.abs(beta * c0) + 1e-30);
      if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
    }
  }
  return worst;
}

const tol = (K: number) => 2e-6 * (4 + Math.sqrt(K));
const SHAPES: [number, number, number][] = [
  [5, 1, 1], [5, 33, 2], [13, 31, 3], [14, 32, 32], [15, 33, 33], [29, 65, 63], [43, 17, 300], [7, 100, 1025],
  [130, 70, 257], [97, 129, 600], [20, 45, 2101], [300, 5, 64], [512, 96, 160],
];
const COMBOS: [boolean, boolean][] = [[false, false], [false, true], [true, false], [true, true]];

function withThreads(n: number, fn: () => void): void {
  const prev = native.getThreads();
  try {
    native.setThreads(n);
    fn();
  } finally {
    native.setThreads(prev);
  }
}

test('gemmBf16 equals bf16-rounded operands with fp32 accumulation, odd shapes, all transposes, every ISA', () => {
  let seed = 7;
  const cases: Case[] = [];
  for (const [ta, tb] of COMBOS) for (const [M, N, K] of SHAPES) cases.push(make(ta, tb, M, N, K, seed % 3, seed++));
  const params: [number, number, boolean][] = [[1, 0, true], [0.75, 1, false], [-1.5, 0.5, false]];
  const threads = native.getThreads();
  const paths: string[] = [];
  forEachIsa((isa) => {
    paths.push(`${isa}: ${native.bf16Native() ? 'AVX512-BF16 kernel' : 'emulated'}`);
    for (const th of threads > 1 ? [1, threads] : [1]) {
      withThreads(th, () => {
        for (const p of cases) {
          for (const [alpha, beta, nanC] of params) {
            const e = worstError(p, alpha, beta, nanC, true);
            assert.ok(e <= tol(p.K), `${isa} threads=${th} ta=${p.ta} tb=${p.tb} M=${p.M} N=${p.N} K=${p.K} alpha=${alpha} ` +
              `beta=${beta}${nanC ? ' (NaN C)' : ''}: error ${e.toExponential(3)} > ${tol(p.K).toExponential(3)}`);
          }
        }
      });
    }
  });
  console.log(`  bf16 gemm paths: ${paths.join('; ')}`);
});

test('gemmBf16 really rounds to bf16 (error vs the fp32 product ≫ fp32 rounding), and ≤ 4 rows run in fp32', () => {
  forEachIsa((isa) => {
    // bf16 keeps 8 significand bits: 1 + 2^-8 + 2^-9 rounds up to 1 + 2^-7, 3 + 2^-8 down to 3
    const M = 20, N = 40, K = 70;
    const A = new Float32Array(M * K).fill(1 + 2 ** -8 + 2 ** -9), B = new Float32Array(N * K).fill(3 + 2 ** -8);
    const C = new Float32Array(M * N);
    native.gemmBf16Sync(false, true, M, N, K, 1, A, K, B, K, 0, C, N);
    const want = K * (1 + 2 ** -7) * 3;
    for (let i = 0; i < M * N; i++) assert.is(C[i], want, `${isa}: C[${i}] = ${C[i]}, want ${want} (fp32 would give ${K * (1 + 2 ** -8 + 2 ** -9) * (3 + 2 ** -8)})`);
    const p = make(false, true, 64, 48, 256, 0, 99);
    const eRounded = worstError(p, 1, 0, false, true), eFp32 = worstError(p, 1, 0, false, false);
    assert.ok(eRounded <= tol(256), `${isa}: ${eRounded}`);
    assert.ok(eFp32 > 5 * tol(256), `${isa}: bf16 gemm is as close to fp32 as fp32 rounding (${eFp32}): no bf16 rounding happened`);
    const q = make(false, true, 4, 48, 256, 1, 5);
    assert.ok(worstError(q, 1, 0.5, false, false) <= 1e-6 * (4 + 16), `${isa}: 4-row product is not fp32`);
  });
});

test('gemmBf16Packed (op(B) packed once, as the LM head does) equals gemmBf16 bit for bit, odd shapes, all transposes, every ISA', () => {
  let seed = 301;
  const threads = native.getThreads();
  const paths: string[] = [];
  forEachIsa((isa) => {
    paths.push(`${isa}: ${native.bf16Native() ? 'packed AVX512-BF16 kernel' : 'emulated (falls back to gemmBf16)'}`);
    for (const th of threads > 1 ? [1, threads] : [1]) {
      withThreads(th, () => {
        for (const [ta, tb] of COMBOS) {
          for (const [M, N, K] of [...SHAPES, [256, 333, 1100], [6, 1000, 64]] as [number, number, number][]) {
            const p = make(ta, tb, M, N, K, seed % 3, seed++);
            for (const [alpha, beta] of [[1, 0], [-0.75, 0.5]]) {
              const want = p.C0.slice(), got = p.C0.slice();
              native.gemmBf16Sync(ta, tb, M, N, K, alpha, p.A, p.lda, p.B, p.ldb, beta, want, p.ldc);
              native.gemmBf16PackedSync(ta, tb, M, N, K, alpha, p.A, p.lda, p.B, p.ldb, beta, got, p.ldc);
              for (let i = 0; i < got.length; i++) {
                if (!Object.is(got[i], want[i])) {
                  assert.unreachable(`${isa} threads=${th} ta=${ta} tb=${tb} M=${M} N=${N} K=${K} alpha=${alpha} beta=${beta}: ` +
                    `C[${i}] = ${got[i]}, gemmBf16 gives ${want[i]}`);
                }
              }
            }
          }
        }
      });
    }
  });
  console.log(`  bf16 packed gemm paths: ${paths.join('; ')}`);
});

test.run();
