// Single-precision GEMM (see matmul.h). Compiled once per ISA (binding.gyp: UNDO_ISA=generic|avx2|avx512).
//
// Goto/BLIS structure, row-major C, per thread on its rectangle of C:
//   jc over N in NC columns
//     pc over K in KC           pack op(B)[pc:pc+KC, jc:jc+NC] into NR-wide k-major panels
//       ic over M in MC rows    pack alpha·op(A)[ic:ic+MC, pc:pc+KC] into MR-tall k-major panels (L2)
//         jr over NR panels     one KC×NR panel of B, reused by every A panel of the block
//           ir over MR panels   micro-kernel: MR×NR block of C in registers, KC rank-1 updates
// Packing absorbs ta/tb (k-contiguous sources go through in-register transposes; k-major ones are walked
// row by row with software prefetch) and alpha. Partial panels are zero-padded, so the micro-kernel always
// runs full MR×NR tiles; edge tiles go through a scratch tile and only the valid part is written back.
// beta is applied by the first K block only (beta = 0 never reads C); K blocks are balanced (K = 1100 is
// 2×552, not 1024 + 76), and so are M and N blocks.
//
// Threads (OpenMP, undo::num_threads()): the team tiles C as a tm × tn grid of rectangles on micro-tile
// boundaries; each thread packs its own A rows and B columns and runs the loops above on its rectangle, so
// a call has no barrier besides the fork/join (a barrier costs a whole scheduler time slice whenever another
// process holds a core). Problems under ~8 MFLOP run on the calling thread. At most 4 rows (decode) skip
// packing and stream op(B) once (gemm_small_m).
//
// Per ISA (MR×NR micro-kernel; MC/KC/NC):
//   avx512  14×32: 28 zmm accumulators, 2 aligned zmm loads of B + 14 broadcasts of A per k, C tile
//           prefetched for write; MC 84, KC 1024, NC 1024. A KC×NR B panel (128 KB) streams from L2,
//           which has the bandwidth; long K blocks cut the C read/write passes (C often lives in DRAM).
//   avx2     6×16: 12 ymm accumulators (BLIS haswell shape); MC 144, KC 256, NC 2048
//   generic  6×8 : generic 4-float vectors (SSE2 / NEON), plain loops for other compilers; 96, 256, 1024
#include "matmul.h"
#include "simd.h"
#include <cstdint>
#include <cstdlib>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

#if UNDO_ISA_ID == 2
#if !defined(__AVX512F__) || !defined(__FMA__)
#error "matmul.cc: the avx512 build needs -mavx512f -mfma"
#endif
#define GEMM_MR 14
#define GEMM_NR 32
#define GEMM_KC 1024
#define GEMM_MC 84
#define GEMM_NC 1024
#elif UNDO_ISA_ID == 1
#if !defined(__AVX2__) || !defined(__FMA__)
#error "matmul.cc: the avx2 build needs -mavx2 -mfma"
#endif
#define GEMM_MR 6
#define GEMM_NR 16
#define GEMM_KC 256
#define GEMM_MC 144
#define GEMM_NC 2048
#else
#define GEMM_MR 6
#define GEMM_NR 8
#define GEMM_KC 256
#define GEMM_MC 96
#define GEMM_NC 1024
#endif

UNDO_ISA_BEGIN

namespace {

// ---------------------------------------------------------------------------------------------------------
// Scratch: one 64-byte aligned block per calling thread (libuv workers may call gemm concurrently; each
// gets its own), grown as needed and released when the thread exits. The OpenMP team only uses slices of
// the caller's block for the duration of the call.
struct Scratch {
  float* p = nullptr;
  size_t n = 0;
  ~Scratch() { std::free(p); }
};
thread_local Scratch t_scratch;

float* scratch_get(size_t nfloats) {
  Scratch& s = t_scratch;
  if (s.n < nfloats) {
    std::free(s.p);
    size_t bytes = (nfloats * sizeof(float) + 63) & ~(size_t)63;
    s.p = (float*)std::aligned_alloc(64, bytes);
    s.n = s.p ? nfloats : 0;
  }
  return s.p;
}

}  // namespace

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

// ---------------------------------------------------------------------------------------------------------
// Micro-kernels: c[0:MR, 0:NR] (row stride ldc) = beta·c + Σ_k a[k·MR + i]·b[k·NR + j]. beta = 0 does not
// read c. a and b are packed panels (b 64-byte aligned).

#if UNDO_ISA_ID == 2

static void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                    int64_t ldc, float beta) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(), c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps(), c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
  __m512 cA0 = _mm512_setzero_ps(), cA1 = _mm512_setzero_ps(), cB0 = _mm512_setzero_ps(), cB1 = _mm512_setzero_ps();
  __m512 cC0 = _mm512_setzero_ps(), cC1 = _mm512_setzero_ps(), cD0 = _mm512_setzero_ps(), cD1 = _mm512_setzero_ps();
  // C tile: ask for the lines in exclusive state now, ~KC·14 cycles before the stores (PREFETCHW)
  for (int i = 0; i < 14; i++) {
    __asm__ volatile("prefetchw %0" ::"m"(c[i * ldc]));
    __asm__ volatile("prefetchw %0" ::"m"(c[i * ldc + 16]));
  }
#define UNDO_GEMM_ROW(r, R)                                        \
  {                                                                \
    const __m512 av = _mm512_set1_ps(a[r]);                        \
    c##R##0 = _mm512_fmadd_ps(av, b0, c##R##0);                    \
    c##R##1 = _mm512_fmadd_ps(av, b1, c##R##1);                    \
  }
#define UNDO_GEMM_STEP                                                                          \
  {                                                                                             \
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);                           \
    UNDO_GEMM_ROW(0, 0) UNDO_GEMM_ROW(1, 1) UNDO_GEMM_ROW(2, 2) UNDO_GEMM_ROW(3, 3)             \
    UNDO_GEMM_ROW(4, 4) UNDO_GEMM_ROW(5, 5) UNDO_GEMM_ROW(6, 6) UNDO_GEMM_ROW(7, 7)             \
    UNDO_GEMM_ROW(8, 8) UNDO_GEMM_ROW(9, 9) UNDO_GEMM_ROW(10, A) UNDO_GEMM_ROW(11, B)           \
    UNDO_GEMM_ROW(12, C) UNDO_GEMM_ROW(13, D)                                                   \
    a += 14;                                                                                    \
    b += 32;                                                                                    \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch((const char*)(b + 512), _MM_HINT_T0);
    UNDO_GEMM_STEP UNDO_GEMM_STEP UNDO_GEMM_STEP UNDO_GEMM_STEP
  }
  for (; k < kc; k++) UNDO_GEMM_STEP
#undef UNDO_GEMM_STEP
#undef UNDO_GEMM_ROW
#define UNDO_GEMM_ST(r, R)                                                                       \
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
  UNDO_GEMM_ST(0, 0) UNDO_GEMM_ST(1, 1) UNDO_GEMM_ST(2, 2) UNDO_GEMM_ST(3, 3) UNDO_GEMM_ST(4, 4)
  UNDO_GEMM_ST(5, 5) UNDO_GEMM_ST(6, 6) UNDO_GEMM_ST(7, 7) UNDO_GEMM_ST(8, 8) UNDO_GEMM_ST(9, 9)
  UNDO_GEMM_ST(10, A) UNDO_GEMM_ST(11, B) UNDO_GEMM_ST(12, C) UNDO_GEMM_ST(13, D)
#undef UNDO_GEMM_ST
}

#elif UNDO_ISA_ID == 1

static void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                    int64_t ldc, float beta) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int i = 0; i < 6; i++) {
    _mm_prefetch((const char*)(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char*)(c + i * ldc + 15), _MM_HINT_T0);
  }
#define UNDO_GEMM_ROW(r)                                           \
  {                                                                \
    const __m256 av = _mm256_broadcast_ss(a + (r));                \
    c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                    \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                    \
  }
#define UNDO_GEMM_STEP                                                                          \
  {                                                                                             \
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);                            \
    UNDO_GEMM_ROW(0) UNDO_GEMM_ROW(1) UNDO_GEMM_ROW(2) UNDO_GEMM_ROW(3) UNDO_GEMM_ROW(4)        \
    UNDO_GEMM_ROW(5)                                                                            \
    a += 6;                                                                                     \
    b += 16;                                                                                    \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch((const char*)(b + 256), _MM_HINT_T0);
    UNDO_GEMM_STEP UNDO_GEMM_STEP UNDO_GEMM_STEP UNDO_GEMM_STEP
  }
  for (; k < kc; k++) UNDO_GEMM_STEP
#undef UNDO_GEMM_STEP
#undef UNDO_GEMM_ROW
#define UNDO_GEMM_ST(r)                                                                          \
  {                                                                                              \
    float* cr = c + (r) * ldc;                                                                   \
    if (beta == 0.0f) {                                                                          \
      _mm256_storeu_ps(cr, c##r##0);                                                             \
      _mm256_storeu_ps(cr + 8, c##r##1);                                                         \
    } else if (beta == 1.0f) {                                                                   \
      _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), c##r##0));                         \
      _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), c##r##1));                 \
    } else {                                                                                     \
      const __m256 bv = _mm256_set1_ps(beta);                                                    \
      _mm256_storeu_ps(cr, _mm256_fmadd_ps(bv, _mm256_loadu_ps(cr), c##r##0));                   \
      _mm256_storeu_ps(cr + 8, _mm256_fmadd_ps(bv, _mm256_loadu_ps(cr + 8), c##r##1));           \
    }                                                                                            \
  }
  UNDO_GEMM_ST(0) UNDO_GEMM_ST(1) UNDO_GEMM_ST(2) UNDO_GEMM_ST(3) UNDO_GEMM_ST(4) UNDO_GEMM_ST(5)
#undef UNDO_GEMM_ST
}

#else

// Portable: 6×8 accumulators as GCC/Clang generic 4-float vectors (12 SSE / NEON registers); plain loops
// for other compilers.
#if defined(__GNUC__)
typedef float gemm_v4 __attribute__((vector_size(16)));
static void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                    int64_t ldc, float beta) {
  gemm_v4 acc[GEMM_MR][2];
  for (int i = 0; i < GEMM_MR; i++) acc[i][0] = acc[i][1] = (gemm_v4){0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t k = 0; k < kc; k++) {
    gemm_v4 b0, b1;
    std::memcpy(&b0, b + k * GEMM_NR, 16);
    std::memcpy(&b1, b + k * GEMM_NR + 4, 16);
    const float* ak = a + k * GEMM_MR;
#pragma GCC unroll 8
    for (int i = 0; i < GEMM_MR; i++) {
      const float ai = ak[i];
      acc[i][0] += ai * b0;
      acc[i][1] += ai * b1;
    }
  }
  for (int i = 0; i < GEMM_MR; i++) {
    float* cr = c + i * ldc;
    float t[8];
    std::memcpy(t, &acc[i][0], 16);
    std::memcpy(t + 4, &acc[i][1], 16);
    if (beta == 0.0f) {
      for (int j = 0; j < GEMM_NR; j++) cr[j] = t[j];
    } else if (beta == 1.0f) {
      for (int j = 0; j < GEMM_NR; j++) cr[j] += t[j];
    } else {
      for (int j = 0; j < GEMM_NR; j++) cr[j] = beta * cr[j] + t[j];
    }
  }
}
#else
static void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                    int64_t ldc, float beta) {
  float acc[GEMM_MR][GEMM_NR];
  for (int i = 0; i < GEMM_MR; i++)
    for (int j = 0; j < GEMM_NR; j++) acc[i][j] = 0.0f;
  for (int64_t k = 0; k < kc; k++) {
    const float* bk = b + k * GEMM_NR;
    const float* ak = a + k * GEMM_MR;
    for (int i = 0; i < GEMM_MR; i++) {
      const float ai = ak[i];
      for (int j = 0; j < GEMM_NR; j++) acc[i][j] += ai * bk[j];
    }
  }
  for (int i = 0; i < GEMM_MR; i++) {
    float* cr = c + i * ldc;
    if (beta == 0.0f) {
      for (int j = 0; j < GEMM_NR; j++) cr[j] = acc[i][j];
    } else if (beta == 1.0f) {
      for (int j = 0; j < GEMM_NR; j++) cr[j] += acc[i][j];
    } else {
      for (int j = 0; j < GEMM_NR; j++) cr[j] = beta * cr[j] + acc[i][j];
    }
  }
}
#endif

#endif  // generic

// ---------------------------------------------------------------------------------------------------------
// Packing.
//
// pack_T: rows r < R of a row-major source (row stride ld, contiguous along k) become one W-wide k-major
// panel: dst[k·W + r] = scale·src[r·ld + k] for k < kc, zero for R ≤ r < W. Used for op(A) when !ta and for
// op(B) when tb; vectorised as VL×VL in-register transposes.
//
// pack_N: the source is already k-major (row k at src + k·ld, contiguous along the panel): copy w ≤ W
// columns per k, zero-pad to W.

#if UNDO_ISA_ID == 2

// GCC 12 flags _mm512_undefined_ps() inside the unpack intrinsics as maybe-uninitialized (false positive)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

static inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    const __m512d t0 = _mm512_castps_pd(t[4 * i]), t1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * i + 2]), t3 = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  // r[4i+j], 128-bit lane L now holds rows 4i..4i+3 of column 4L+j
  for (int j = 0; j < 4; j++) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    const __m512 u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
    t[8 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
    t[4 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
  }
  for (int i = 0; i < 16; i++) r[i] = t[i];
}

static void pack_T(const float* src, int64_t ld, int64_t R, int64_t kc, float scale, float* dst, int W) {
  const __m512 sv = _mm512_set1_ps(scale);
  for (int rb = 0; rb < W; rb += 16) {
    const int rows = W - rb < 16 ? W - rb : 16;                    // panel rows this block stores
    const int64_t valid = R - rb < 0 ? 0 : (R - rb < rows ? R - rb : rows);  // rows with data
    const __mmask16 smask = (__mmask16)((1u << rows) - 1u);
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) {
      __m512 v[16];
      for (int r = 0; r < 16; r++)
        v[r] = r < valid ? _mm512_mul_ps(sv, _mm512_loadu_ps(src + (rb + r) * ld + k)) : _mm512_setzero_ps();
      transpose16(v);
      float* d = dst + k * W + rb;
      if (rows == 16) {
        for (int kk = 0; kk < 16; kk++) _mm512_storeu_ps(d + kk * W, v[kk]);
      } else {
        for (int kk = 0; kk < 16; kk++) _mm512_mask_storeu_ps(d + kk * W, smask, v[kk]);
      }
    }
    for (; k < kc; k++) {
      float* d = dst + k * W + rb;
      for (int r = 0; r < rows; r++) d[r] = r < valid ? scale * src[(rb + r) * ld + k] : 0.0f;
    }
  }
}

#elif UNDO_ISA_ID == 1

static inline void transpose8(__m256* r) {
  __m256 t[8];
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m256 s[8];
  for (int i = 0; i < 2; i++) {
    const __m256d t0 = _mm256_castps_pd(t[4 * i]), t1 = _mm256_castps_pd(t[4 * i + 1]);
    const __m256d t2 = _mm256_castps_pd(t[4 * i + 2]), t3 = _mm256_castps_pd(t[4 * i + 3]);
    s[4 * i + 0] = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));
    s[4 * i + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
    s[4 * i + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));
    s[4 * i + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
  }
  for (int j = 0; j < 4; j++) {
    r[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}

static void pack_T(const float* src, int64_t ld, int64_t R, int64_t kc, float scale, float* dst, int W) {
  const __m256 sv = _mm256_set1_ps(scale);
  for (int rb = 0; rb < W; rb += 8) {
    const int rows = W - rb < 8 ? W - rb : 8;
    const int64_t valid = R - rb < 0 ? 0 : (R - rb < rows ? R - rb : rows);
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      __m256 v[8];
      for (int r = 0; r < 8; r++)
        v[r] = r < valid ? _mm256_mul_ps(sv, _mm256_loadu_ps(src + (rb + r) * ld + k)) : _mm256_setzero_ps();
      transpose8(v);
      float* d = dst + k * W + rb;
      if (rows == 8) {
        for (int kk = 0; kk < 8; kk++) _mm256_storeu_ps(d + kk * W, v[kk]);
      } else {
        // partial block (W = 6): 4 + 2 floats per k, no masked stores (slow on some AMD parts)
        for (int kk = 0; kk < 8; kk++) {
          float* dk = d + kk * W;
          int r = 0;
          __m128 lo = _mm256_castps256_ps128(v[kk]);
          if (rows >= 4) {
            _mm_storeu_ps(dk, lo);
            lo = _mm256_extractf128_ps(v[kk], 1);
            r = 4;
            dk += 4;
          }
          if (rows - r >= 2) {
            _mm_storel_pi((__m64*)dk, lo);
            lo = _mm_movehl_ps(lo, lo);
            r += 2;
            dk += 2;
          }
          if (rows - r >= 1) _mm_store_ss(dk, lo);
        }
      }
    }
    for (; k < kc; k++) {
      float* d = dst + k * W + rb;
      for (int r = 0; r < rows; r++) d[r] = r < valid ? scale * src[(rb + r) * ld + k] : 0.0f;
    }
  }
}

#else

static void pack_T(const float* src, int64_t ld, int64_t R, int64_t kc, float scale, float* dst, int W) {
  // 4 k at a time so each source row is read in short contiguous runs
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    float* d = dst + k * W;
    for (int64_t r = 0; r < R; r++) {
      const float* s = src + r * ld + k;
      d[r] = scale * s[0];
      d[W + r] = scale * s[1];
      d[2 * W + r] = scale * s[2];
      d[3 * W + r] = scale * s[3];
    }
    for (int64_t r = R; r < W; r++) d[r] = d[W + r] = d[2 * W + r] = d[3 * W + r] = 0.0f;
  }
  for (; k < kc; k++) {
    float* d = dst + k * W;
    for (int64_t r = 0; r < R; r++) d[r] = scale * src[r * ld + k];
    for (int64_t r = R; r < W; r++) d[r] = 0.0f;
  }
}

#endif

// Software prefetch of the w floats at p. A k-major source walked row by row with a row stride of a few KB
// (dYᵀ and X in dW = dYᵀ·X) crosses a page every row or two, where the hardware prefetchers stop.
static inline void prefetch_row(const float* p, int64_t w) {
  for (int64_t o = 0; o < w; o += 16) __builtin_prefetch(p + o, 0, 3);
  __builtin_prefetch(p + w - 1, 0, 3);
}
#define GEMM_PACK_PD 6  // rows ahead

// pack_N over panels: the source is already k-major (row k at src + k·ld, contiguous along the panels).
// Walks each source row once, left to right (sequential reads, friendly to the hardware prefetchers), and
// scatters it over the panels: panel p gets columns [p·W, p·W + W) of the first w columns, zero-padded.
#if UNDO_ISA_ID == 2
static void pack_N(const float* src, int64_t ld, int64_t w, int64_t kc, float scale, float* dst, int W) {
  const int64_t np = cdiv(w, W);
  const __m512 sv = _mm512_set1_ps(scale);
  const int nv = (W + 15) / 16;  // vectors per panel row (W <= 32)
  // masks of the last panel (the only partial one); full panels use all-ones / W masks
  const int64_t wl = w - (np - 1) * W;
  __mmask16 lm_full[2], lm_last[2], sm[2];
  for (int v = 0; v < 2; v++) {
    const int o = 16 * v;
    const int wf = W - o < 0 ? 0 : (W - o > 16 ? 16 : W - o);
    const int64_t wv = wl - o < 0 ? 0 : (wl - o > 16 ? 16 : wl - o);
    sm[v] = (__mmask16)((1u << wf) - 1u);
    lm_full[v] = sm[v];
    lm_last[v] = (__mmask16)((1u << wv) - 1u);
  }
  for (int64_t k = 0; k < kc; k++) {
    const float* s = src + k * ld;
    float* d = dst + k * W;
    if (k + GEMM_PACK_PD < kc) prefetch_row(s + GEMM_PACK_PD * ld, w);
    for (int64_t p = 0; p < np; p++, s += W, d += (int64_t)W * kc) {
      const __mmask16* lm = p == np - 1 ? lm_last : lm_full;
      for (int v = 0; v < nv; v++)
        _mm512_mask_storeu_ps(d + 16 * v, sm[v], _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(lm[v], s + 16 * v)));
    }
  }
}
#elif UNDO_ISA_ID == 1
static void pack_N(const float* src, int64_t ld, int64_t w, int64_t kc, float scale, float* dst, int W) {
  const int64_t np = cdiv(w, W), nfull = w / W;
  const __m256 sv = _mm256_set1_ps(scale);
  for (int64_t k = 0; k < kc; k++) {
    const float* s = src + k * ld;
    float* d = dst + k * W;
    if (k + GEMM_PACK_PD < kc) prefetch_row(s + GEMM_PACK_PD * ld, w);
    int64_t p = 0;
    if (W == 16) {
      for (; p < nfull; p++, s += 16, d += 16 * kc) {
        _mm256_storeu_ps(d, _mm256_mul_ps(sv, _mm256_loadu_ps(s)));
        _mm256_storeu_ps(d + 8, _mm256_mul_ps(sv, _mm256_loadu_ps(s + 8)));
      }
    } else if (W == 6) {
      const __m128 sv4 = _mm256_castps256_ps128(sv);
      for (; p < nfull; p++, s += 6, d += 6 * kc) {
        _mm_storeu_ps(d, _mm_mul_ps(sv4, _mm_loadu_ps(s)));
        // two floats through movq: _mm_loadl_epi64 reads unaligned (a double load at a float address is undefined behaviour, UBSan)
        _mm_storel_pi((__m64*)(d + 4), _mm_mul_ps(sv4, _mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)(s + 4)))));
      }
    }
    for (; p < np; p++, s += W, d += (int64_t)W * kc) {
      const int64_t wp = min64(W, w - p * W);
      for (int64_t j = 0; j < wp; j++) d[j] = scale * s[j];
      for (int64_t j = wp; j < W; j++) d[j] = 0.0f;
    }
  }
}
#else
static void pack_N(const float* src, int64_t ld, int64_t w, int64_t kc, float scale, float* dst, int W) {
  const int64_t np = cdiv(w, W), nfull = w / W;
  for (int64_t k = 0; k < kc; k++) {
    const float* s = src + k * ld;
    float* d = dst + k * W;
    if (k + GEMM_PACK_PD < kc) prefetch_row(s + GEMM_PACK_PD * ld, w);
    int64_t p = 0;
    for (; p < nfull; p++, s += W, d += (int64_t)W * kc)
      for (int j = 0; j < W; j++) d[j] = scale * s[j];
    for (; p < np; p++, s += W, d += (int64_t)W * kc) {
      const int64_t wp = min64(W, w - p * W);
      for (int64_t j = 0; j < wp; j++) d[j] = scale * s[j];
      for (int64_t j = wp; j < W; j++) d[j] = 0.0f;
    }
  }
}
#endif

// alpha·op(A)[i0:i0+mc, k0:k0+kc] as ceil(mc/MR) MR-tall panels, panel p at Ap + p·MR·kc.
static void pack_A(bool ta, const float* A, int64_t lda, float alpha, int64_t i0, int64_t mc, int64_t k0,
                   int64_t kc, float* Ap) {
  if (ta) {
    pack_N(A + k0 * lda + i0, lda, mc, kc, alpha, Ap, GEMM_MR);
    return;
  }
  for (int64_t p = 0; p * GEMM_MR < mc; p++) {
    const int64_t i = i0 + p * GEMM_MR;
    pack_T(A + i * lda + k0, lda, min64(GEMM_MR, mc - p * GEMM_MR), kc, alpha, Ap + p * GEMM_MR * kc, GEMM_MR);
  }
}

// op(B)[k0:k0+kc, j0:j0+nc] as ceil(nc/NR) NR-wide panels, panel q at Bp + q·NR·kc.
static void pack_B(bool tb, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0, int64_t kc,
                   float* Bp) {
  if (!tb) {
    pack_N(B + k0 * ldb + j0, ldb, nc, kc, 1.0f, Bp, GEMM_NR);
    return;
  }
  for (int64_t q = 0; q * GEMM_NR < nc; q++) {
    const int64_t j = j0 + q * GEMM_NR;
    pack_T(B + j * ldb + k0, ldb, min64(GEMM_NR, nc - q * GEMM_NR), kc, 1.0f, Bp + q * GEMM_NR * kc, GEMM_NR);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Macro-kernel: C[0:mc, 0:nc] = beta·C + packed A block × packed B panels. jr outer, ir inner: one B panel
// is reused by all the A panels of the block.
static void macro_kernel(int64_t mc, int64_t nc, int64_t kc, const float* Ap, const float* Bp, float* C,
                         int64_t ldc, float beta) {
  alignas(64) float tile[GEMM_MR * GEMM_NR];
  for (int64_t j = 0; j < nc; j += GEMM_NR) {
    const int64_t nr = min64(GEMM_NR, nc - j);
    const float* b = Bp + j * kc;
    for (int64_t i = 0; i < mc; i += GEMM_MR) {
      const int64_t mr = min64(GEMM_MR, mc - i);
      const float* a = Ap + i * kc;
      float* c = C + i * ldc + j;
      if (mr == GEMM_MR && nr == GEMM_NR) {
        ukernel(kc, a, b, c, ldc, beta);
        continue;
      }
      ukernel(kc, a, b, tile, GEMM_NR, 0.0f);
      for (int64_t r = 0; r < mr; r++) {
        float* cr = c + r * ldc;
        const float* tr = tile + r * GEMM_NR;
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

static void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  if (beta == 1.0f) return;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (M * N > 65536)
  for (int64_t i = 0; i < M; i++) {
    float* c = C + i * ldc;
    if (beta == 0.0f)
      std::memset(c, 0, (size_t)N * sizeof(float));
    else
      for (int64_t j = 0; j < N; j++) c[j] *= beta;
  }
}

// Even split of n items over nth parts: part t gets [lo, hi).
static inline void split(int64_t n, int nth, int t, int64_t* lo, int64_t* hi) {
  *lo = n * t / nth;
  *hi = n * (t + 1) / nth;
}

// Block size for n items with at most cap per block, balanced (a 1100-long K becomes 2×552, not 1024 + 76),
// rounded up to a multiple of m.
static inline int64_t balanced_block(int64_t n, int64_t cap, int64_t m) {
  const int64_t nb = cdiv(n, cap);
  return min64(round_up(cdiv(n, nb), m), round_up(cap, m));
}

// One thread's rectangle C[0:m, 0:n] (A, B, C already offset to it), serial Goto loops.
static void gemm_block(bool ta, bool tb, int64_t m, int64_t n, int64_t K, float alpha, const float* A,
                       int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int64_t MC,
                       int64_t NC, int64_t KC, float* Ap, float* Bp) {
  for (int64_t jc = 0; jc < n; jc += NC) {
    const int64_t nc = min64(NC, n - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = min64(KC, K - pc);
      const float bt = pc == 0 ? beta : 1.0f;
      pack_B(tb, B, ldb, jc, nc, pc, kc, Bp);
      for (int64_t ic = 0; ic < m; ic += MC) {
        const int64_t mc = min64(MC, m - ic);
        pack_A(ta, A, lda, alpha, ic, mc, pc, kc, Ap);
        macro_kernel(mc, nc, kc, Ap, Bp, C + ic * ldc + jc, ldc, bt);
      }
    }
  }
}

// A few rows (decode: one row per sequence): packing B would cost more than the product, so stream op(B)
// once. alpha·op(A) is first copied to a contiguous M×K buffer a; the team splits the columns of C.
#define GEMM_SMALL_M 4
#define GEMM_SMALL_CH 256
static void gemm_small_m(bool tb, int64_t M, int64_t N, int64_t K, const float* a, const float* B, int64_t ldb,
                         float beta, float* C, int64_t ldc, int T) {
  const int64_t nch = cdiv(N, GEMM_SMALL_CH);
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
  for (int64_t ch = 0; ch < nch; ch++) {
    const int64_t j0 = ch * GEMM_SMALL_CH, j1 = min64(j0 + GEMM_SMALL_CH, N);
    float acc[GEMM_SMALL_M][GEMM_SMALL_CH];
    if (tb) {  // C[i][j] = a_i · B[j, :], both contiguous along k
      for (int64_t j = j0; j < j1; j++) {
        const float* bj = B + j * ldb;
        for (int64_t i = 0; i < M; i++) {
          const float* ai = a + i * K;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t k = 0; k < K; k++) sum += ai[k] * bj[k];
          acc[i][j - j0] = sum;
        }
      }
    } else {  // C[i, j0:j1] = Σ_k a_ik · B[k, j0:j1]
      const int64_t w = j1 - j0;
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < w; j++) acc[i][j] = 0.0f;
      for (int64_t k = 0; k < K; k++) {
        const float* bk = B + k * ldb + j0;
        if (k + GEMM_PACK_PD < K) prefetch_row(bk + GEMM_PACK_PD * ldb, w);
        for (int64_t i = 0; i < M; i++) {
          const float aik = a[i * K + k];
          float* ci = acc[i];
#pragma omp simd
          for (int64_t j = 0; j < w; j++) ci[j] += aik * bk[j];
        }
      }
    }
    for (int64_t i = 0; i < M; i++) {
      float* ci = C + i * ldc;
      const float* t = acc[i] - j0;
      if (beta == 0.0f)
        for (int64_t j = j0; j < j1; j++) ci[j] = t[j];
      else if (beta == 1.0f)
        for (int64_t j = j0; j < j1; j++) ci[j] += t[j];
      else
        for (int64_t j = j0; j < j1; j++) ci[j] = beta * ci[j] + t[j];
    }
  }
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const int64_t MR = GEMM_MR, NR = GEMM_NR;
  const int64_t Pm = cdiv(M, MR), Pn = cdiv(N, NR);

  // Threads tile C as a tm × tn grid of rectangles on micro-tile boundaries; each packs its own A rows and
  // B columns and runs the serial loops on its rectangle, so the team never synchronises inside a call (a
  // barrier costs a scheduler time slice whenever another process holds one of the cores). The price is
  // that A is packed tn times and B tm times in total; the grid minimises (micro-tiles per thread) +
  // (packing per thread), packing one float ≈ 8 FMAs. Below ~8 MFLOP (~30 µs on one AVX-512 core) a
  // fork/join is not worth it.
  int T = num_threads();
  if (T > 1 && 2.0 * (double)M * (double)N * (double)K < 8.0e6) T = 1;
  if (M <= GEMM_SMALL_M) {  // memory-bound: threads when op(B) is at least 4 MB
    if (N * K < ((int64_t)1 << 20)) T = 1;
    float* a = scratch_get((size_t)(M * K));
    if (!a) std::abort();
    for (int64_t i = 0; i < M; i++)
      for (int64_t k = 0; k < K; k++) a[i * K + k] = alpha * (ta ? A[k * lda + i] : A[i * lda + k]);
    gemm_small_m(tb, M, N, K, a, B, ldb, beta, C, ldc, (int)min64(T, cdiv(N, GEMM_SMALL_CH)));
    return;
  }
  int tm = 1, tn = 1;
  if (T > 1) {
    double best = 1e300;
    for (int a = 1; a <= T; a++) {
      if (T % a) continue;
      const int b = T / a;
      if (a > Pm || b > Pn) continue;
      const double rows = (double)(cdiv(Pm, a) * MR), cols = (double)(cdiv(Pn, b) * NR);
      const double cost = rows * cols + 8.0 * (rows + cols);
      if (cost < best) best = cost, tm = a, tn = b;
    }
    if (best == 1e300) T = 1;  // fewer micro-tiles than threads in every grid: not worth threading
    else T = tm * tn;
  }
  const int64_t rows_max = min64(cdiv(Pm, tm) * MR, M), cols_max = min64(cdiv(Pn, tn) * NR, N);
  const int64_t KC = balanced_block(K, GEMM_KC, 16);
  const int64_t MC = balanced_block(rows_max, GEMM_MC, MR);
  const int64_t NC = balanced_block(cols_max, GEMM_NC, NR);
  // scratch per thread: A block MC×KC | B panel KC×NC, each a multiple of 16 floats (64 bytes)
  const size_t asz = (size_t)round_up(MC * KC, 16), bsz = (size_t)round_up(KC * NC, 16);
  float* base = scratch_get((size_t)T * (asz + bsz));
  if (!base) std::abort();

#pragma omp parallel num_threads(T) if (T > 1)
  {
#ifdef _OPENMP
    const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
#else
    const int nth = 1, tid = 0;
#endif
    int64_t p0 = 0, p1 = Pm, q0 = 0, q1 = Pn;
    if (nth == T && T > 1) {  // (a nested call gets one thread: it does the whole product)
      split(Pm, tm, tid / tn, &p0, &p1);
      split(Pn, tn, tid % tn, &q0, &q1);
    }
    if (tid == 0 || nth == T) {
      const int64_t i0 = p0 * MR, i1 = min64(p1 * MR, M), j0 = q0 * NR, j1 = min64(q1 * NR, N);
      if (i0 < i1 && j0 < j1) {
        float* Ap = base + (size_t)tid * (asz + bsz);
        gemm_block(ta, tb, i1 - i0, j1 - j0, K, alpha, ta ? A + i0 : A + i0 * lda, lda, tb ? B + j0 * ldb : B + j0,
                   ldb, beta, C + i0 * ldc + j0, ldc, MC, NC, KC, Ap, Ap + asz);
      }
    }
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  UNDO_DISPATCH(gemm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

float bf16_round(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) {  // inf stays, NaN stays NaN
    if (u & 0x007FFFFFu) u |= 0x00400000u;
    u &= 0xFFFF0000u;
  } else {
    u += 0x7FFFu + ((u >> 16) & 1u);
    u &= 0xFFFF0000u;
  }
  std::memcpy(&x, &u, 4);
  return x;
}

bool bf16_native() {
#if defined(UNDO_X86)
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return cpu && bf16k::compiled() && active_isa() == Isa::avx512;
#else
  return false;
#endif
}

// rows × cols of src (row stride ld) rounded to bf16 into a dense rows × cols buffer
static void round_copy(const float* src, int64_t ld, int64_t rows, int64_t cols, float scale, float* dst) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[r * cols + c] = bf16_round(scale * src[r * ld + c]);
}

void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 4 || N <= 0 || K <= 0 || alpha == 0.0f) {
    gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (bf16_native()) {
    bf16k::gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, num_threads());
    return;
  }
  const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  float* a = (float*)std::malloc(sizeof(float) * (size_t)(ar * ac + br * bc));
  if (!a) std::abort();
  float* b = a + ar * ac;
  round_copy(A, lda, ar, ac, alpha, a);
  round_copy(B, ldb, br, bc, 1.0f, b);
  gemm(ta, tb, M, N, K, 1.0f, a, ac, b, bc, beta, C, ldc);
  std::free(a);
}

void Bf16Packed::pack(bool tb_, int64_t N_, int64_t K_, const float* B_, int64_t ldb_) {
  B = B_, N = N_, K = K_, ldb = ldb_, tb = tb_;
  packed = N > 0 && K > 0 && bf16_native();
  if (!packed) return;
  const size_t n = bf16k::packed_words(N, K);
  if (words.size() < n + 16) {
    std::vector<uint32_t>().swap(words);
    words.resize(n + 16);
  }
  bf16k::pack_b(tb, N, K, B, ldb, aligned(words.data()), num_threads());
}

void gemm_bf16_packed(const Bf16Packed& Bp, bool ta, int64_t M, float alpha, const float* A, int64_t lda, float beta,
                      float* C, int64_t ldc) {
  if (!Bp.B) std::abort();
  if (M <= 0 || Bp.N <= 0) return;
  if (!Bp.packed || M <= 4 || alpha == 0.0f || !bf16_native()) {
    gemm_bf16(ta, Bp.tb, M, Bp.N, Bp.K, alpha, A, lda, Bp.B, Bp.ldb, beta, C, ldc);
    return;
  }
  bf16k::gemm_packed(ta, M, Bp.N, Bp.K, alpha, A, lda, Bp.data(), beta, C, ldc, num_threads());
}

void bias_add(int64_t rows, int64_t n, const float* b, float* y) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * n > 65536)
  for (int64_t r = 0; r < rows; r++) {
    float* yr = y + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) yr[i] += b[i];
  }
}

void bias_grad(int64_t rows, int64_t n, const float* dy, float* db) {
  const int nt = rows * n > 65536 ? num_threads() : 1;
  const int64_t per = ((n + nt - 1) / nt + 15) / 16 * 16;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; t++) {
    const int64_t lo = (int64_t)t * per, hi = lo + per < n ? lo + per : n;
    for (int64_t r = 0; r < rows && lo < hi; r++) {
      const float* g = dy + r * n;
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) db[i] += g[i];
    }
  }
}
}  // namespace undo
#endif
