// bf16 GEMM with fp32 accumulation on AVX512-BF16 (VDPBF16PS), the kernel of the model's bf16 compute path
// (matmul.h: gemm_bf16). Compiled once, for CPUs with AVX512-BF16 (binding.gyp target undo_kernels_bf16,
// -mavx512bf16); matmul.cc dispatches here only when cpuid reports the extension and the active ISA is
// avx512, and otherwise emulates the same arithmetic (operands rounded to bf16, fp32 products and sums).
//
//   C[M×N] = bf16(alpha·op(A)) · bf16(op(B)) + beta·C     fp32 in and out, rounding to nearest even
//
// Same Goto structure and thread grid as the fp32 GEMM (matmul.cc), with one difference in the packed
// panels: VDPBF16PS multiplies pairs of bf16 along k and adds both products into one fp32 lane, so panels
// are k-pair-major. A panel (MR = 14 rows) holds, per k-pair p, 14 u32 words (a[i][2p], a[i][2p+1]); a B
// panel (NR = 32 columns) holds 32 such words per pair, two zmm. The 14×32 micro-kernel keeps 28 zmm
// accumulators, loads 2 B vectors and broadcasts 14 A words per k-pair: 896 MACs per 28 instructions, twice
// the fp32 kernel's work per instruction. The fp32 → bf16 rounding happens while packing (VCVTNE2PS2BF16),
// so weights stay fp32 masters and no bf16 copy of any tensor is kept. Odd K pads the last pair with 0.
//
// Rules of per-ISA code apply (isa.h): static functions only, raw pointers, OpenMP.
#include "matmul.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define UNDO_HAVE_BF16_KERNEL 1

#define B16_MR 14
#define B16_NR 32
#define B16_KC 1024  // k values per block (512 pairs)
#define B16_MC 84
#define B16_NC 1024

namespace undo {
namespace bf16k {
namespace {

struct Scratch {
  uint32_t* p = nullptr;
  size_t n = 0;
  ~Scratch() { std::free(p); }
};
thread_local Scratch t_scratch;

uint32_t* scratch_get(size_t nwords) {
  Scratch& s = t_scratch;
  if (s.n < nwords) {
    std::free(s.p);
    size_t bytes = (nwords * sizeof(uint32_t) + 63) & ~(size_t)63;
    s.p = (uint32_t*)std::aligned_alloc(64, bytes);
    s.n = s.p ? nwords : 0;
  }
  return s.p;
}

}  // namespace

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

static inline __mmask16 mask16(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n < 0 ? 0 : n)) - 1u); }

// 16 rows of 16 u32 words → 16 columns (the fp32 transpose of matmul.cc, on integer lanes)
static inline void transpose16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; j++) {
    const __m512i u0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);
    const __m512i u1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xDD);
    const __m512i u2 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
    const __m512i u3 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_i32x4(u0, u2, 0x88);
    t[8 + j] = _mm512_shuffle_i32x4(u0, u2, 0xDD);
    t[4 + j] = _mm512_shuffle_i32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(u1, u3, 0xDD);
  }
  for (int i = 0; i < 16; i++) r[i] = t[i];
}

// 32 consecutive floats (masked to n valid, the rest 0) → 16 words, word q = bf16 pair (x[2q], x[2q+1])
static inline __m512i cvt32(const float* x, int64_t n, __m512 scale) {
  const __m512 lo = _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(mask16(n), x));
  const __m512 hi = _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(mask16(n - 16), x + 16));
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// Lanes are rows of src, k contiguous in each (op(B) with tb, op(A) without ta): R valid rows (of W panel
// lanes; the others are 0), kc values of k. dst[p·W + r] = pair(scale·src[r·ld + 2p], scale·src[r·ld + 2p + 1]).
static void pack_rows(const float* src, int64_t ld, int64_t R, int64_t kc, float scale, uint32_t* dst, int W) {
  const __m512 sv = _mm512_set1_ps(scale);
  const int64_t np = cdiv(kc, 2);
  for (int rb = 0; rb < W; rb += 16) {
    const int lanes = W - rb < 16 ? W - rb : 16;
    const int64_t valid = R - rb < 0 ? 0 : (R - rb < lanes ? R - rb : lanes);
    const __mmask16 smask = mask16(lanes);
    for (int64_t k = 0; k < kc; k += 32) {
      __m512i v[16];
      for (int r = 0; r < 16; r++) v[r] = r < valid ? cvt32(src + (rb + r) * ld + k, kc - k, sv) : _mm512_setzero_si512();
      transpose16(v);
      const int64_t p0 = k / 2, pn = min64(16, np - p0);
      uint32_t* d = dst + p0 * W + rb;
      for (int64_t q = 0; q < pn; q++) _mm512_mask_storeu_epi32(d + q * W, smask, v[q]);
    }
  }
}

// Lanes are columns of src, k along rows (op(B) without tb, op(A) with ta): w valid columns (of W).
// dst[p·W + j] = pair(scale·src[2p·ld + j], scale·src[(2p + 1)·ld + j]); a missing odd row is 0.
static void pack_cols(const float* src, int64_t ld, int64_t w, int64_t kc, float scale, uint32_t* dst, int W) {
  const __m512 sv = _mm512_set1_ps(scale);
  // interleave [x0 (16 bf16), x1 (16 bf16)] into pairs (x0[j], x1[j])
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512((const void*)kIdx);
  const int64_t np = cdiv(kc, 2);
  for (int64_t p = 0; p < np; p++) {
    const float* r0 = src + 2 * p * ld;
    const bool has1 = 2 * p + 1 < kc;
    uint32_t* d = dst + p * W;
    for (int lb = 0; lb < W; lb += 16) {
      const int64_t n = w - lb;
      const __mmask16 m = mask16(n);
      const __m512 x0 = _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(m, r0 + lb));
      const __m512 x1 = has1 ? _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(m, r0 + ld + lb)) : _mm512_setzero_ps();
      const __m512i bf = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
      const __m512i pr = _mm512_permutexvar_epi16(idx, bf);
      _mm512_mask_storeu_epi32(d + lb, mask16(W - lb), pr);
    }
  }
}

static void pack_A(bool ta, const float* A, int64_t lda, float alpha, int64_t i0, int64_t mc, int64_t k0,
                   int64_t kc, uint32_t* Ap) {
  const int64_t np = cdiv(kc, 2);
  if (ta) {
    for (int64_t p = 0; p * B16_MR < mc; p++)
      pack_cols(A + k0 * lda + i0 + p * B16_MR, lda, min64(B16_MR, mc - p * B16_MR), kc, alpha, Ap + p * B16_MR * np, B16_MR);
    return;
  }
  for (int64_t p = 0; p * B16_MR < mc; p++) {
    const int64_t i = i0 + p * B16_MR;
    pack_rows(A + i * lda + k0, lda, min64(B16_MR, mc - p * B16_MR), kc, alpha, Ap + p * B16_MR * np, B16_MR);
  }
}

static void pack_B(bool tb, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0, int64_t kc, uint32_t* Bp) {
  const int64_t np = cdiv(kc, 2);
  for (int64_t q = 0; q * B16_NR < nc; q++) {
    const int64_t j = j0 + q * B16_NR, w = min64(B16_NR, nc - q * B16_NR);
    if (tb) pack_rows(B + j * ldb + k0, ldb, w, kc, 1.0f, Bp + q * B16_NR * np, B16_NR);
    else pack_cols(B + k0 * ldb + j, ldb, w, kc, 1.0f, Bp + q * B16_NR * np, B16_NR);
  }
}

// c[0:14, 0:32] = beta·c + Σ_p dot(a pair, b pair)
static void ukernel(int64_t np, const uint32_t* __restrict a, const uint32_t* __restrict b, float* __restrict c,
                    int64_t ldc, float beta) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(), c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps(), c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
  __m512 cA0 = _mm512_setzero_ps(), cA1 = _mm512_setzero_ps(), cB0 = _mm512_setzero_ps(), cB1 = _mm512_setzero_ps();
  __m512 cC0 = _mm512_setzero_ps(), cC1 = _mm512_setzero_ps(), cD0 = _mm512_setzero_ps(), cD1 = _mm512_setzero_ps();
  for (int i = 0; i < 14; i++) {
    __asm__ volatile("prefetchw %0" ::"m"(c[i * ldc]));
    __asm__ volatile("prefetchw %0" ::"m"(c[i * ldc + 16]));
  }
#define B16_ROW(r, R)                                                         \
  {                                                                           \
    const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]);               \
    c##R##0 = _mm512_dpbf16_ps(c##R##0, av, b0);                              \
    c##R##1 = _mm512_dpbf16_ps(c##R##1, av, b1);                              \
  }
#define B16_STEP                                                                                \
  {                                                                                             \
    const __m512bh b0 = (__m512bh)_mm512_load_si512((const void*)b);                            \
    const __m512bh b1 = (__m512bh)_mm512_load_si512((const void*)(b + 16));                     \
    B16_ROW(0, 0) B16_ROW(1, 1) B16_ROW(2, 2) B16_ROW(3, 3) B16_ROW(4, 4) B16_ROW(5, 5)         \
    B16_ROW(6, 6) B16_ROW(7, 7) B16_ROW(8, 8) B16_ROW(9, 9) B16_ROW(10, A) B16_ROW(11, B)       \
    B16_ROW(12, C) B16_ROW(13, D)                                                               \
    a += 14;                                                                                    \
    b += 32;                                                                                    \
  }
  int64_t p = 0;
  for (; p + 4 <= np; p += 4) {
    _mm_prefetch((const char*)(b + 512), _MM_HINT_T0);
    B16_STEP B16_STEP B16_STEP B16_STEP
  }
  for (; p < np; p++) B16_STEP
#undef B16_STEP
#undef B16_ROW
#define B16_ST(r, R)                                                                             \
  {                                                                                              \
    float* cr = c + (r) * ldc;                                                                   \
    if (beta == 0.0f) {                                                                          \
      _mm512_storeu_ps(cr, c##R##0);                                                             \
      _mm512_storeu_ps(cr + 16, c##R##1);                                                        \
    } else if (beta == 1.0f) {                                                                   \
      _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), c##R##0));                         \
      _mm512_storeu_ps(cr + 16, _mm512_add_ps(_mm512_loadu_ps(cr + 16), c##R##1));               \
    } else {                                                                                     \
      const __m512 bv = _mm512_set1_ps(beta);                                                    \
      _mm512_storeu_ps(cr, _mm512_fmadd_ps(bv, _mm512_loadu_ps(cr), c##R##0));                   \
      _mm512_storeu_ps(cr + 16, _mm512_fmadd_ps(bv, _mm512_loadu_ps(cr + 16), c##R##1));         \
    }                                                                                            \
  }
  B16_ST(0, 0) B16_ST(1, 1) B16_ST(2, 2) B16_ST(3, 3) B16_ST(4, 4) B16_ST(5, 5) B16_ST(6, 6)
  B16_ST(7, 7) B16_ST(8, 8) B16_ST(9, 9) B16_ST(10, A) B16_ST(11, B) B16_ST(12, C) B16_ST(13, D)
#undef B16_ST
}

static void macro_kernel(int64_t mc, int64_t nc, int64_t np, const uint32_t* Ap, const uint32_t* Bp, float* C,
                         int64_t ldc, float beta) {
  alignas(64) float tile[B16_MR * B16_NR];
  for (int64_t j = 0; j < nc; j += B16_NR) {
    const int64_t nr = min64(B16_NR, nc - j);
    const uint32_t* b = Bp + j * np;
    for (int64_t i = 0; i < mc; i += B16_MR) {
      const int64_t mr = min64(B16_MR, mc - i);
      const uint32_t* a = Ap + i * np;
      float* c = C + i * ldc + j;
      if (mr == B16_MR && nr == B16_NR) {
        ukernel(np, a, b, c, ldc, beta);
        continue;
      }
      ukernel(np, a, b, tile, B16_NR, 0.0f);
      for (int64_t r = 0; r < mr; r++) {
        float* cr = c + r * ldc;
        const float* tr = tile + r * B16_NR;
        if (beta == 0.0f)
          for (int64_t x = 0; x < nr; x++) cr[x] = tr[x];
        else if (beta == 1.0f)
          for (int64_t x = 0; x < nr; x++) cr[x] += tr[x];
        else
          for (int64_t x = 0; x < nr; x++) cr[x] = beta * cr[x] + tr[x];
      }
    }
  }
}

static inline void split(int64_t n, int nth, int t, int64_t* lo, int64_t* hi) {
  *lo = n * t / nth;
  *hi = n * (t + 1) / nth;
}

static inline int64_t balanced_block(int64_t n, int64_t cap, int64_t m) {
  const int64_t nb = cdiv(n, cap);
  return min64(round_up(cdiv(n, nb), m), round_up(cap, m));
}

static void gemm_block(bool ta, bool tb, int64_t m, int64_t n, int64_t K, float alpha, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t MC, int64_t NC,
                       int64_t KC, uint32_t* Ap, uint32_t* Bp) {
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t nc = min64(NC, n - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = min64(KC, K - pc), np = cdiv(kc, 2);
      const float bt = pc == 0 ? beta : 1.0f;
      pack_B(tb, B, ldb, jc, nc, pc, kc, Bp);
      for (int64_t ic = 0; ic < m; ic += MC) {
        const int64_t mc = min64(MC, m - ic);
        pack_A(ta, A, lda, alpha, ic, mc, pc, kc, Ap);
        macro_kernel(mc, nc, np, Ap, Bp, C + ic * ldc + jc, ldc, bt);
      }
    }
  }
}

// Caller (matmul.cc) has handled M, N ≤ 0, K ≤ 0 and alpha = 0.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
  const int64_t MR = B16_MR, NR = B16_NR;
  const int64_t Pm = cdiv(M, MR), Pn = cdiv(N, NR);
  int T = threads;
  if (T > 1 && 2.0 * (double)M * (double)N * (double)K < 16.0e6) T = 1;
  int tm = 1, tn = 1;
  if (T > 1) {
    double best = 1e300;
    for (int a = 1; a <= T; a++) {
      if (T % a) continue;
      const int b = T / a;
      if (a > Pm || b > Pn) continue;
      const double rows = (double)(cdiv(Pm, a) * MR), cols = (double)(cdiv(Pn, b) * NR);
      const double cost = rows * cols + 16.0 * (rows + cols);  // packing a float ≈ 16 bf16 MACs
      if (cost < best) best = cost, tm = a, tn = b;
    }
    if (best == 1e300) T = 1;
    else T = tm * tn;
  }
  const int64_t rows_max = min64(cdiv(Pm, tm) * MR, M), cols_max = min64(cdiv(Pn, tn) * NR, N);
  const int64_t KC = balanced_block(K, B16_KC, 32);
  const int64_t MC = balanced_block(rows_max, B16_MC, MR);
  const int64_t NC = balanced_block(cols_max, B16_NC, NR);
  const int64_t NP = KC / 2;
  const size_t asz = (size_t)round_up(MC * NP, 16), bsz = (size_t)round_up(NP * NC, 16);
  uint32_t* base = scratch_get((size_t)T * (asz + bsz));
  if (!base) std::abort();
#pragma omp parallel num_threads(T) if (T > 1)
  {
#ifdef _OPENMP
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int nth = 1, tid = 0;
#endif
    int64_t p0 = 0, p1 = Pm, q0 = 0, q1 = Pn;
    if (nth == T && T > 1) {
      split(Pm, tm, tid / tn, &p0, &p1);
      split(Pn, tn, tid % tn, &q0, &q1);
    }
    if (tid == 0 || nth == T) {
      const int64_t i0 = p0 * MR, i1 = min64(p1 * MR, M), j0 = q0 * NR, j1 = min64(q1 * NR, N);
      if (i0 < i1 && j0 < j1) {
        uint32_t* Ap = base + (size_t)tid * (asz + bsz);
        gemm_block(ta, tb, i1 - i0, j1 - j0, K, alpha, ta ? A + i0 : A + i0 * lda, lda, tb ? B + j0 * ldb : B + j0,
                   ldb, beta, C + i0 * ldc + j0, ldc, MC, NC, KC, Ap, Ap + asz);
      }
    }
  }
}

// ---- op(B) packed once, for a B that many GEMMs share (the LM head over its row chunks) ----
// Layout: the k blocks of gemm() (KC from K alone), block b holding every 32-column panel of op(B) in turn,
// each panel in the k-pair-major form pack_B writes: panel q of block b at Npad·b·(KC/2) + q·32·np_b words.
// gemm_block's B panels for columns [jc, jc + nc) of block pc are then a plain offset into it.
static int64_t packed_kc(int64_t K) { return balanced_block(K, B16_KC, 32); }

size_t packed_words(int64_t N, int64_t K) {
  const int64_t KC = packed_kc(K), nblk = cdiv(K, KC);
  return (size_t)(round_up(N, B16_NR) * nblk * (KC / 2));
}

void pack_b(bool tb, int64_t N, int64_t K, const float* B, int64_t ldb, uint32_t* out, int threads) {
  const int64_t KC = packed_kc(K), nblk = cdiv(K, KC), Pn = cdiv(N, B16_NR), Npad = Pn * B16_NR;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t t = 0; t < nblk * Pn; t++) {
    const int64_t b = t / Pn, q = t % Pn, k0 = b * KC, kc = min64(KC, K - k0), np = cdiv(kc, 2);
    const int64_t j = q * B16_NR, w = min64(B16_NR, N - j);
    uint32_t* dst = out + Npad * b * (KC / 2) + q * B16_NR * np;
    if (tb) pack_rows(B + j * ldb + k0, ldb, w, kc, 1.0f, dst, B16_NR);
    else pack_cols(B + k0 * ldb + j, ldb, w, kc, 1.0f, dst, B16_NR);
  }
}

// C[M×N] = bf16(alpha·op(A))·Bp + beta·C with Bp from pack_b(N, K). Threads split the columns first (each then
// packs A once per k block and streams its own panels of Bp past it), rows only when N is narrow.
void gemm_packed(bool ta, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const uint32_t* Bp, float beta, float* C, int64_t ldc, int threads) {
  const int64_t MR = B16_MR, NR = B16_NR, Pm = cdiv(M, MR), Pn = cdiv(N, NR), Npad = Pn * NR;
  int T = threads;
  if (T > 1 && 2.0 * (double)M * (double)N * (double)K < 16.0e6) T = 1;
  int tm = 1, tn = T;
  while (tn > 1 && tn > Pn) tn /= 2;
  if (tn < T && T % tn == 0 && Pm >= T / tn) tm = T / tn;
  T = tm * tn;
  const int64_t KC = packed_kc(K), MC = balanced_block(min64(cdiv(Pm, tm) * MR, M), B16_MC, MR);
  const size_t asz = (size_t)round_up(MC * (KC / 2), 16);
  uint32_t* base = scratch_get((size_t)T * asz);
  if (!base) std::abort();
#pragma omp parallel num_threads(T) if (T > 1)
  {
#ifdef _OPENMP
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int nth = 1, tid = 0;
#endif
    int64_t p0 = 0, p1 = Pm, q0 = 0, q1 = Pn;
    if (nth == T && T > 1) {
      split(Pm, tm, tid / tn, &p0, &p1);
      split(Pn, tn, tid % tn, &q0, &q1);
    }
    if (tid == 0 || nth == T) {
      const int64_t i0 = p0 * MR, i1 = min64(p1 * MR, M), j0 = q0 * NR, j1 = min64(q1 * NR, N);
      uint32_t* Ap = base + (size_t)tid * asz;
      for (int64_t pc = 0; i0 < i1 && j0 < j1 && pc < K; pc += KC) {
        const int64_t kc = min64(KC, K - pc), np = cdiv(kc, 2);
        const float bt = pc == 0 ? beta : 1.0f;
        const uint32_t* Bb = Bp + Npad * (pc / KC) * (KC / 2) + j0 * np;
        for (int64_t ic = i0; ic < i1; ic += MC) {
          const int64_t mc = min64(MC, i1 - ic);
          pack_A(ta, A, lda, alpha, ic, mc, pc, kc, Ap);
          macro_kernel(mc, j1 - j0, np, Ap, Bb, C + ic * ldc + j0, ldc, bt);
        }
      }
    }
  }
}

}  // namespace bf16k
}  // namespace undo
#endif

namespace undo {
namespace bf16k {
bool compiled() {
#ifdef UNDO_HAVE_BF16_KERNEL
  return true;
#else
  return false;
#endif
}
#ifndef UNDO_HAVE_BF16_KERNEL
// never called: matmul.cc checks compiled()
void gemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float, float*,
          int64_t, int) {
  std::abort();
}
size_t packed_words(int64_t, int64_t) { std::abort(); }
void pack_b(bool, int64_t, int64_t, const float*, int64_t, uint32_t*, int) { std::abort(); }
void gemm_packed(bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const uint32_t*, float, float*, int64_t,
                 int) {
  std::abort();
}
#endif
}  // namespace bf16k
}  // namespace undo
