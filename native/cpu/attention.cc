// Causal flash attention on the CPU (contract: attention.h). Compiled once per ISA (binding.gyp), code in
// undo::<isa>; the dispatching undo::attention_forward / attention_backward live in the generic build.
//
// Scheme (FlashAttention-2 on a CPU):
//   * K and V of every (batch, kv head) are first repacked once per call into zero-padded panels
//     (Kᵀ as [D][Tk_pad], V as [Tk_pad][D_pad]) so that every block product below is a register-blocked
//     broadcast-FMA kernel with unit-stride vector loads and no tails. Memory O(|k| + |v|).
//   * Forward: tasks = batch × query head × query tile (BR_F rows), heaviest (last) tiles first, dynamic
//     OpenMP schedule. Per key tile (BC_F keys): S = Q·Kᵀ (BR_F×BC_F per-thread scratch), scale/soft-cap,
//     mask, online softmax (running max m and sum l per row, the output accumulator rescaled by
//     e^{m_old−m_new}), O += P·V. Key tiles that are entirely masked for the query tile (causal / window)
//     are never visited. At the end out = O / l and lse = m + log l.
//   * Backward: tasks = batch × kv head × a contiguous range of key tiles. A task owns the dk/dv rows of
//     its key tiles and accumulates them over every query head of its GQA group and every query tile that
//     sees them (dK, dV for one key tile live in per-thread scratch), so no two threads ever write the same
//     dk/dv rows. dQ is accumulated in a padded buffer per key-range split (one split when batch × kv
//     heads gives AT_SPLIT_TASKS groups or more; otherwise the key tiles are cut into work-balanced splits
//     and the per-split dQ partials are summed in a fixed order at the end — no atomics, and the splits
//     depend on the shape only, so the result is the same on any number of threads).
//     Per (key tile, query tile): S = Q·Kᵀ, dP = dO·Vᵀ, P = exp(s − lse), dS = P∘(dP − Dᵢ) (·(1−tanh²) with
//     a soft cap, ·scale), dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K.
//   * Decode / short chunks (Tq <= AT_DECODE_ROWS): no repacking. Tasks = batch × kv head × chunk of the
//     G·Tq query rows that share the kv head, held in the vector lanes; per block of keys read straight
//     from the (possibly strided) KV cache: Sᵀ = K·Qᵀ, mask, online softmax per lane, Oᵀ += Vᵀ·Pᵀ.
// Nothing T×T is ever allocated: scratch is O(T·D) for the packed panels plus O(tile²) per thread, taken
// as one block before each parallel region (so an allocation failure throws outside OpenMP); the last
// block is cached for the next call (scratch_acquire / scratch_release). When D is a multiple of the
// vector width, V (forward) and Q, dO, K (backward) are read in place and dQ accumulates straight into dq.
// exp/tanh are vectorised explicitly (v_exp / v_tanh: the polynomial of undo_expf in simd.h) because GCC 12
// does not auto-vectorise loops that call undo_expf ("control flow in loop").
// Results are deterministic for a given ISA, whatever the thread count (fixed reduction orders that depend
// on the shape only, no atomics).
#include "attention.h"

#if defined(__AVX2__) || defined(__AVX512F__)
// GCC 12 reports false -Wmaybe-uninitialized inside the AVX-512 intrinsic headers (GCC PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa.h"
#include "simd.h"

#ifndef UNDO_ISA
#error "attention.cc must be compiled with -DUNDO_ISA=generic|avx2|avx512 (see binding.gyp)"
#endif

UNDO_ISA_BEGIN

namespace {

// ---------------------------------------------------------------------------------------------------------
// Vector abstraction (one definition per ISA build; all internal linkage).
// ---------------------------------------------------------------------------------------------------------
#if defined(__AVX512F__)
#define AT_VL 16
#define AT_RMAX 6  // register block: AT_RMAX rows × AT_NVMAX vectors of accumulators
#define AT_NVMAX 4
typedef __m512 vf;
static inline vf v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline void v_store(float* p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_zero() { return _mm512_setzero_ps(); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf v_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline float v_hsum(vf a) { return _mm512_reduce_add_ps(a); }
static inline float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }
// exp with the algorithm of undo_expf (simd.h); GCC 12 does not auto-vectorise loops over undo_expf.
static inline vf v_exp(vf x) {
  const vf hi = v_set1(88.3762626647949f), lo = v_set1(-103.972084045410f);
  const vf xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  const vf n = _mm512_roundscale_ps(_mm512_mul_ps(xc, v_set1(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm512_fnmadd_ps(n, v_set1(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, v_set1(-2.12194440e-4f), r);
  vf p = v_set1(1.9875691500E-4f);
  p = v_fma(p, r, v_set1(1.3981999507E-3f));
  p = v_fma(p, r, v_set1(8.3334519073E-3f));
  p = v_fma(p, r, v_set1(4.1665795894E-2f));
  p = v_fma(p, r, v_set1(1.6666665459E-1f));
  p = v_fma(p, r, v_set1(5.0000001201E-1f));
  p = v_add(v_fma(p, v_mul(r, r), r), v_set1(1.0f));
  const __m512i ni = _mm512_cvtps_epi32(n);
  const __m512i n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
  const __m512i e127 = _mm512_set1_epi32(127);
  const vf s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, e127), 23));
  const vf s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, e127), 23));
  vf y = v_mul(v_mul(p, s1), s2);
  y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), y, v_set1(INFINITY));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
}
static inline vf v_abs(vf x) { return _mm512_andnot_ps(v_set1(-0.0f), x); }
static inline vf v_signof(vf x) { return _mm512_and_ps(v_set1(-0.0f), x); }
static inline vf v_or(vf a, vf b) { return _mm512_or_ps(a, b); }
#elif defined(__AVX2__)
#define AT_VL 8
#define AT_RMAX 6
#define AT_NVMAX 2
typedef __m256 vf;
static inline vf v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline void v_store(float* p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vf v_zero() { return _mm256_setzero_ps(); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf v_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf v_exp(vf x) {
  const vf hi = v_set1(88.3762626647949f), lo = v_set1(-103.972084045410f);
  const vf xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const vf n = _mm256_round_ps(_mm256_mul_ps(xc, v_set1(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm256_fnmadd_ps(n, v_set1(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, v_set1(-2.12194440e-4f), r);
  vf p = v_set1(1.9875691500E-4f);
  p = v_fma(p, r, v_set1(1.3981999507E-3f));
  p = v_fma(p, r, v_set1(8.3334519073E-3f));
  p = v_fma(p, r, v_set1(4.1665795894E-2f));
  p = v_fma(p, r, v_set1(1.6666665459E-1f));
  p = v_fma(p, r, v_set1(5.0000001201E-1f));
  p = v_add(v_fma(p, v_mul(r, r), r), v_set1(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i e127 = _mm256_set1_epi32(127);
  const vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, e127), 23));
  const vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, e127), 23));
  vf y = v_mul(v_mul(p, s1), s2);
  y = _mm256_blendv_ps(y, v_set1(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
static inline vf v_abs(vf x) { return _mm256_andnot_ps(v_set1(-0.0f), x); }
static inline vf v_signof(vf x) { return _mm256_and_ps(v_set1(-0.0f), x); }
static inline vf v_or(vf a, vf b) { return _mm256_or_ps(a, b); }
static inline float v_hsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float v_hmax(vf a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
// Portable build: GCC/Clang vector extensions (SSE2 on x86-64, NEON elsewhere).
#define AT_VL 4
#define AT_RMAX 4
#define AT_NVMAX 2
typedef float vf __attribute__((vector_size(16)));
static inline vf v_load(const float* p) {
  vf x;
  std::memcpy(&x, p, sizeof(vf));
  return x;
}
static inline void v_store(float* p, vf x) { std::memcpy(p, &x, sizeof(vf)); }
static inline vf v_set1(float x) { return vf{x, x, x, x}; }
static inline vf v_zero() { return vf{0.0f, 0.0f, 0.0f, 0.0f}; }
static inline vf v_fma(vf a, vf b, vf c) { return a * b + c; }
static inline vf v_mul(vf a, vf b) { return a * b; }
static inline vf v_add(vf a, vf b) { return a + b; }
static inline vf v_max(vf a, vf b) { return a > b ? a : b; }
static inline vf v_sub(vf a, vf b) { return a - b; }
static inline vf v_div(vf a, vf b) { return a / b; }
static inline float v_hsum(vf a) { return (a[0] + a[2]) + (a[1] + a[3]); }
typedef int32_t vi __attribute__((vector_size(16)));
static inline vf v_exp(vf x) {
  const vf hi = v_set1(88.3762626647949f), lo = v_set1(-103.972084045410f);
  vf xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  xc = x != x ? lo : xc;
  // round to nearest with the 1.5·2^23 trick (|n| <= 150)
  const vf big = v_set1(12582912.0f);
  const vf n = (xc * v_set1(1.44269504088896341f) + big) - big;
  vf r = xc - n * v_set1(0.693359375f);
  r = r - n * v_set1(-2.12194440e-4f);
  vf p = v_set1(1.9875691500E-4f);
  p = p * r + v_set1(1.3981999507E-3f);
  p = p * r + v_set1(8.3334519073E-3f);
  p = p * r + v_set1(4.1665795894E-2f);
  p = p * r + v_set1(1.6666665459E-1f);
  p = p * r + v_set1(5.0000001201E-1f);
  p = p * r * r + r + v_set1(1.0f);
  const vi ni = __builtin_convertvector(n, vi);
  const vi n1 = ni >> 1, n2 = ni - n1;
  const vf s1 = (vf)((n1 + 127) << 23), s2 = (vf)((n2 + 127) << 23);
  vf y = p * s1 * s2;
  y = x > hi ? v_set1(INFINITY) : y;
  return x != x ? x : y;
}
static inline vf v_abs(vf x) { return (vf)((vi)x & 0x7fffffff); }
static inline vf v_signof(vf x) { return (vf)((vi)x & (int32_t)0x80000000u); }
static inline vf v_or(vf a, vf b) { return (vf)((vi)a | (vi)b); }
static inline float v_hmax(vf a) {
  float x = a[0] > a[1] ? a[0] : a[1], y = a[2] > a[3] ? a[2] : a[3];
  return x > y ? x : y;
}
#endif

// Tile sizes. Forward: BR_F query rows × BC_F keys; backward: BR_B × BC_B. All multiples of AT_VL.
// (Overridable with -D for tuning experiments; bench/attention.ts mirrors the defaults.)
#ifndef AT_BR_F
#define AT_BR_F 64
#endif
#ifndef AT_BC_F
#define AT_BC_F 128
#endif
#ifndef AT_BR_B
#define AT_BR_B 64
#endif
#ifndef AT_BC_B
#define AT_BC_B 64
#endif
// Backward: fewer (batch × kv-head) groups than this are split along the keys into about this many tasks
// (enough to balance 16 threads; the split must not depend on the thread count, see the backward).
#ifndef AT_SPLIT_TASKS
#define AT_SPLIT_TASKS 32
#endif
// At most this many query rows: the decode path (no repacking) is used instead of the tiled one.
#ifndef AT_DECODE_ROWS
#define AT_DECODE_ROWS 16
#endif
// Keys per block in the decode path.
#define AT_DECODE_KEYS 256

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

static float* falloc(int64_t n) {
  void* p = nullptr;
  size_t bytes = (size_t)round_up(n > 0 ? n : 1, 16) * sizeof(float);
  if (posix_memalign(&p, 64, bytes) != 0 || !p) throw std::bad_alloc();
  return (float*)p;
}

// Scratch blocks. The last block released is kept (one slot per ISA build, up to AT_CACHE_MAX_FLOATS) and
// handed to the next call that fits in it, so that back-to-back calls (every layer of a forward / backward)
// do not mmap, page-fault and zero fresh megabytes each time. The slot is taken and returned with atomic
// exchanges, so concurrent calls simply get separate blocks. A block is never assumed to be zeroed.
#ifndef AT_CACHE_MAX_FLOATS
#define AT_CACHE_MAX_FLOATS (int64_t(16) << 20)  // 64 MiB
#endif
#define AT_HEADER 16  // floats before the payload: the capacity, keeping 64-byte alignment
static float* g_cached_block = nullptr;

static float* scratch_acquire(int64_t n) {
  if (n < 1) n = 1;
  float* p = __atomic_exchange_n(&g_cached_block, (float*)nullptr, __ATOMIC_ACQ_REL);
  if (p) {
    int64_t cap;
    std::memcpy(&cap, p, sizeof cap);
    if (cap >= n) {
#ifdef AT_DEBUG_POISON
      for (int64_t i = 0; i < cap; ++i) p[AT_HEADER + i] = NAN;
#endif
      return p + AT_HEADER;
    }
    std::free(p);
  }
  p = falloc(AT_HEADER + n);
  std::memcpy(p, &n, sizeof n);
#ifdef AT_DEBUG_POISON
  for (int64_t i = 0; i < n; ++i) p[AT_HEADER + i] = NAN;
#endif
  return p + AT_HEADER;
}

static void scratch_release(float* payload) {
  float* p = payload - AT_HEADER;
  int64_t cap;
  std::memcpy(&cap, p, sizeof cap);
  if (cap > AT_CACHE_MAX_FLOATS) {
    std::free(p);
    return;
  }
  float* old = __atomic_exchange_n(&g_cached_block, p, __ATOMIC_ACQ_REL);
  if (old) std::free(old);  // keep the newest block
}

static inline int nthreads_for(int64_t work_items) {
  int nt = ::undo::num_threads();
  if (nt < 1) nt = 1;
  if (work_items < nt) nt = (int)(work_items > 0 ? work_items : 1);
  return nt;
}

static inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Block product: C[M × N] (+)= A · B with
//   A(r, k) = A[r·ars + k·aks]   (broadcast operand, any strides: row-major A or a transposed view)
//   B(k, c) = B[k·ldb + c]       (vector operand, unit stride, N a multiple of AT_VL)
//   C(r, c) = C[r·ldc + c]
// Register-blocked AT_RMAX × (AT_NVMAX·AT_VL) micro-kernel over the full K, accumulators in registers.
// ---------------------------------------------------------------------------------------------------------
typedef void (*mk_fn)(int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool acc);

template <int R, int NV>
static void micro_kernel(int64_t K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                         float* C, int64_t ldc, bool acc) {
  vf c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) c[r][n] = acc ? v_load(C + r * ldc + n * AT_VL) : v_zero();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    const float* a = A + k * aks;
    vf bv[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) bv[n] = v_load(b + n * AT_VL);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      vf ar = v_set1(a[r * ars]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) c[r][n] = v_fma(ar, bv[n], c[r][n]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) v_store(C + r * ldc + n * AT_VL, c[r][n]);
}

#if AT_NVMAX == 4
#define AT_MK_ROW(R) {micro_kernel<R, 1>, micro_kernel<R, 2>, micro_kernel<R, 3>, micro_kernel<R, 4>}
#elif AT_NVMAX == 2
#define AT_MK_ROW(R) {micro_kernel<R, 1>, micro_kernel<R, 2>}
#else
#error "unsupported AT_NVMAX"
#endif

static void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t aks, const float* B,
                 int64_t ldb, float* C, int64_t ldc, bool acc) {
#if AT_RMAX == 6
  static const mk_fn table[6][AT_NVMAX] = {AT_MK_ROW(1), AT_MK_ROW(2), AT_MK_ROW(3),
                                           AT_MK_ROW(4), AT_MK_ROW(5), AT_MK_ROW(6)};
#elif AT_RMAX == 4
  static const mk_fn table[4][AT_NVMAX] = {AT_MK_ROW(1), AT_MK_ROW(2), AT_MK_ROW(3), AT_MK_ROW(4)};
#else
#error "unsupported AT_RMAX"
#endif
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!acc)
      for (int64_t r = 0; r < M; ++r) std::memset(C + r * ldc, 0, sizeof(float) * N);
    return;
  }
  const int64_t nvec = N / AT_VL;
  for (int64_t c0 = 0; c0 < nvec; c0 += AT_NVMAX) {
    const int nv = (int)imin(AT_NVMAX, nvec - c0);
    for (int64_t r0 = 0; r0 < M; r0 += AT_RMAX) {
      const int rr = (int)imin(AT_RMAX, M - r0);
      table[rr - 1][nv - 1](K, A + r0 * ars, ars, aks, B + c0 * AT_VL, ldb, C + r0 * ldc + c0 * AT_VL, ldc,
                            acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Row helpers, vectorised with the vf abstraction (ragged tails go through a zero-padded copy).
// ---------------------------------------------------------------------------------------------------------
static inline float dot(const float* a, const float* b, int64_t n) {
  vf acc0 = v_zero(), acc1 = v_zero();
  int64_t i = 0;
  for (; i + 2 * AT_VL <= n; i += 2 * AT_VL) {
    acc0 = v_fma(v_load(a + i), v_load(b + i), acc0);
    acc1 = v_fma(v_load(a + i + AT_VL), v_load(b + i + AT_VL), acc1);
  }
  for (; i + AT_VL <= n; i += AT_VL) acc0 = v_fma(v_load(a + i), v_load(b + i), acc0);
  float s = v_hsum(v_add(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

static inline float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
  int64_t i = 0;
  if (n >= AT_VL) {
    vf vm = v_load(x);
    for (i = AT_VL; i + AT_VL <= n; i += AT_VL) vm = v_max(vm, v_load(x + i));
    m = v_hmax(vm);
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

static inline vf v_tanh(vf x) {
  // tanh via exp(−2|x|), as undo_tanhf
  const vf e = v_exp(v_mul(v_set1(-2.0f), v_abs(x)));
  const vf one = v_set1(1.0f);
  return v_or(v_div(v_sub(one, e), v_add(one, e)), v_signof(x));
}

// x ← s(x) = x·sc, or cap·tanh(x·sc) with a soft cap. The tail goes through a zero-padded copy.
static inline vf score_vec(vf x, vf vsc, vf vcap, bool capped) {
  return capped ? v_mul(vcap, v_tanh(v_mul(x, vsc))) : v_mul(x, vsc);
}
static inline void row_scores(float* x, int64_t n, float sc, float cap) {
  const vf vsc = v_set1(sc), vcap = v_set1(cap);
  const bool capped = cap > 0.0f;
  int64_t i = 0;
  for (; i + AT_VL <= n; i += AT_VL) v_store(x + i, score_vec(v_load(x + i), vsc, vcap, capped));
  if (i < n) {
    float t[AT_VL] = {0};
    std::memcpy(t, x + i, sizeof(float) * (size_t)(n - i));
    v_store(t, score_vec(v_load(t), vsc, vcap, capped));
    std::memcpy(x + i, t, sizeof(float) * (size_t)(n - i));
  }
}

// x ← exp(x − m); returns Σ x.
static inline float row_exp_sum(float* x, int64_t n, float m) {
  const vf vm = v_set1(m);
  vf acc = v_zero();
  int64_t i = 0;
  for (; i + AT_VL <= n; i += AT_VL) {
    const vf e = v_exp(v_sub(v_load(x + i), vm));
    v_store(x + i, e);
    acc = v_add(acc, e);
  }
  float s = v_hsum(acc);
  if (i < n) {
    float t[AT_VL] = {0};
    std::memcpy(t, x + i, sizeof(float) * (size_t)(n - i));
    v_store(t, v_exp(v_sub(v_load(t), vm)));
    for (int64_t c = 0; c < n - i; ++c) s += t[c];
    std::memcpy(x + i, t, sizeof(float) * (size_t)(n - i));
  }
  return s;
}

// Backward row: p ← exp(s(p) − L), d ← p·(d − Di)·scale  (·(1 − tanh²) with a soft cap).
static inline void row_backward(float* p, float* d, int64_t n, float sc, float cap, float L, float Di,
                                float scale) {
  const vf vsc = v_set1(sc), vcap = v_set1(cap), vL = v_set1(L), vDi = v_set1(Di), vscale = v_set1(scale);
  const vf one = v_set1(1.0f);
  int64_t i = 0;
  float tp[AT_VL], td[AT_VL];
  for (;; i += AT_VL) {
    float *pp = p + i, *pd = d + i;
    const int64_t rem = n - i;
    if (rem <= 0) break;
    if (rem < AT_VL) {
      std::memset(tp, 0, sizeof(tp));
      std::memset(td, 0, sizeof(td));
      std::memcpy(tp, pp, sizeof(float) * (size_t)rem);
      std::memcpy(td, pd, sizeof(float) * (size_t)rem);
      pp = tp;
      pd = td;
    }
    const vf x = v_mul(v_load(pp), vsc);
    vf pr, g;
    if (cap > 0.0f) {
      const vf th = v_tanh(x);
      pr = v_exp(v_sub(v_mul(vcap, th), vL));
      g = v_mul(vscale, v_sub(one, v_mul(th, th)));
    } else {
      pr = v_exp(v_sub(x, vL));
      g = vscale;
    }
    v_store(pp, pr);
    v_store(pd, v_mul(v_mul(pr, v_sub(v_load(pd), vDi)), g));
    if (rem < AT_VL) {
      std::memcpy(p + i, tp, sizeof(float) * (size_t)rem);
      std::memcpy(d + i, td, sizeof(float) * (size_t)rem);
      break;
    }
  }
}

static inline void row_scale(float* x, int64_t n, float a) {
  const vf va = v_set1(a);
  int64_t i = 0;
  for (; i + AT_VL <= n; i += AT_VL) v_store(x + i, v_mul(va, v_load(x + i)));
  for (; i < n; ++i) x[i] *= a;
}

// y += a·x
static inline void row_axpy(float* y, const float* x, int64_t n, float a) {
  const vf va = v_set1(a);
  int64_t i = 0;
  for (; i + AT_VL <= n; i += AT_VL) v_store(y + i, v_fma(va, v_load(x + i), v_load(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

// Visible key range [lo, hi) of the query at absolute position p.
static inline void visible(int64_t p, int64_t Tk, int64_t window, int64_t* lo, int64_t* hi) {
  *hi = imin(Tk, p + 1);
  *lo = window > 0 ? imax(0, p - window + 1) : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Packing. Kᵀ panel of (b, g): kt[d·ldt + j] = k[b, j, g, d] for j < Tk, 0 for Tk <= j < ldt.
// Row panel: rp[j·ldr + d] = x[b, j, g, d] for d < D, 0 for D <= d < ldr and rows Tk <= j < rows.
// ---------------------------------------------------------------------------------------------------------
static void pack_transposed(const float* x, int64_t rstride, int64_t T, int64_t D, float* out, int64_t ldt) {
  const int64_t JB = 32;
  for (int64_t j0 = 0; j0 < T; j0 += JB) {
    const int64_t j1 = imin(T, j0 + JB);
    for (int64_t d = 0; d < D; ++d) {
      float* o = out + d * ldt;
      for (int64_t j = j0; j < j1; ++j) o[j] = x[j * rstride + d];
    }
  }
  for (int64_t d = 0; d < D; ++d) std::memset(out + d * ldt + T, 0, sizeof(float) * (ldt - T));
}

static void pack_rows(const float* x, int64_t rstride, int64_t T, int64_t D, float* out, int64_t ldr,
                      int64_t rows) {
  for (int64_t j = 0; j < T; ++j) {
    std::memcpy(out + j * ldr, x + j * rstride, sizeof(float) * D);
    if (ldr > D) std::memset(out + j * ldr + D, 0, sizeof(float) * (ldr - D));
  }
  for (int64_t j = T; j < rows; ++j) std::memset(out + j * ldr, 0, sizeof(float) * ldr);
}

// ---------------------------------------------------------------------------------------------------------
// Decode path: few query rows; direct dot products with the (strided) cache.
// ---------------------------------------------------------------------------------------------------------
static void forward_decode(const AttnDims& d, const float* q, const float* k, const float* v, float* out,
                           float* lse) {
  const int64_t B = d.B, Tq = d.Tq, Tk = d.Tk, Hq = d.Hq, Hkv = d.Hkv, D = d.D;
  const int64_t G = Hq / Hkv;
  const float cap = d.softcap > 0.0f ? d.softcap : 0.0f;
  const float sc = cap > 0.0f ? d.scale / cap : d.scale;
  // A task takes a chunk of the R = G·Tq query rows that share one kv head (row r: head g·G + r / Tq,
  // query i = r % Tq) and keeps them in the vector lanes: per key block, Sᵀ = K·Qᵀ ([keys][rows]) and
  // Oᵀ += Vᵀ·Pᵀ ([D][rows]) with the block-product kernel (any D, no horizontal sums), online softmax
  // across key blocks. Each K/V row is read once per chunk, straight from the (strided) cache.
  const int64_t R = G * Tq;
  const int64_t RCMAX = AT_NVMAX * AT_VL;  // rows per chunk: one register block of lanes
  const int nth = ::undo::num_threads() > 0 ? ::undo::num_threads() : 1;
  int64_t chunks = imin(R, imax(1, (2 * nth + B * Hkv - 1) / (B * Hkv)));
  chunks = imax(chunks, (R + RCMAX - 1) / RCMAX);
  const int64_t rc = (R + chunks - 1) / chunks;
  chunks = (R + rc - 1) / rc;
  const int64_t Rp = round_up(rc, AT_VL);
  const int64_t ntask = B * Hkv * chunks;
  const int nt = nthreads_for(ntask);
  const int64_t KB = AT_DECODE_KEYS;
  const int64_t per_thread = round_up(2 * D * Rp + KB * Rp + 3 * Rp, 16);
  float* scratch = scratch_acquire(nt * per_thread);  // all allocation before the parallel region
#pragma omp parallel num_threads(nt)
  {
    float* const Qt = scratch + thread_id() * per_thread;  // [D][Rp]
    float* const Ot = Qt + D * Rp;                         // [D][Rp]
    float* const St = Ot + D * Rp;                         // [KB][Rp]
    float* const m = St + KB * Rp;                         // running max, sum, rescale per lane
    float* const l = m + Rp;
    float* const alpha = l + Rp;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; ++t) {
      const int64_t bg = t / chunks, b = bg / Hkv, g = bg % Hkv;
      const int64_t r0 = (t % chunks) * rc, nr = imin(rc, R - r0);
      const float* kb = k + b * d.kv_bstride + g * D;
      const float* vb = v + b * d.kv_bstride + g * D;
      const int64_t ks = Hkv * D;
      int64_t lo[AT_NVMAX * AT_VL], hi[AT_NVMAX * AT_VL];  // visible key ranges of the rows
      int64_t jlo = Tk, jhi = 0;
      for (int64_t r = 0; r < Rp; ++r) {
        if (r < nr) {
          const int64_t h = g * G + (r0 + r) / Tq, i = (r0 + r) % Tq;
          const float* qr = q + ((b * Tq + i) * Hq + h) * D;
          for (int64_t c = 0; c < D; ++c) Qt[c * Rp + r] = qr[c];
          visible(d.q_offset + i, Tk, d.window, &lo[r], &hi[r]);
          if (lo[r] < hi[r]) {
            jlo = imin(jlo, lo[r]);
            jhi = imax(jhi, hi[r]);
          }
        } else {
          for (int64_t c = 0; c < D; ++c) Qt[c * Rp + r] = 0.0f;  // padding lanes: finite, never read
          lo[r] = hi[r] = 0;
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
      }
      std::memset(Ot, 0, sizeof(float) * D * Rp);
      for (int64_t j0 = jlo; j0 < jhi; j0 += KB) {
        const int64_t kn = imin(KB, jhi - j0);
        gemm(kn, Rp, D, kb + j0 * ks, ks, 1, Qt, Rp, St, Rp, false);  // Sᵀ = K·Qᵀ
        row_scores(St, kn * Rp, sc, cap);
        // mask the keys a row does not see (ranges differ by at most a few keys between rows)
        for (int64_t r = 0; r < nr; ++r) {
          for (int64_t j = j0; j < imin(j0 + kn, lo[r]); ++j) St[(j - j0) * Rp + r] = -INFINITY;
          for (int64_t j = imax(j0, hi[r]); j < j0 + kn; ++j) St[(j - j0) * Rp + r] = -INFINITY;
        }
        // per-lane block max, new running max, rescale factors
        float mb[AT_NVMAX * AT_VL];
        for (int64_t n = 0; n < Rp; n += AT_VL) {
          vf vm = v_set1(-INFINITY);
          for (int64_t j = 0; j < kn; ++j) vm = v_max(vm, v_load(St + j * Rp + n));
          v_store(mb + n, vm);
        }
        float msub[AT_NVMAX * AT_VL];
        for (int64_t r = 0; r < Rp; ++r) {
          const float mn = mb[r] > m[r] ? mb[r] : m[r];
          alpha[r] = mn == m[r] ? 1.0f : undo_expf(m[r] - mn);  // m = −inf → 0
          m[r] = mn;
          msub[r] = mn == -INFINITY ? 0.0f : mn;  // a lane that sees nothing yet: exp(−inf − 0) = 0
        }
        // P = exp(Sᵀ − m), lane sums
        for (int64_t n = 0; n < Rp; n += AT_VL) {
          const vf vmn = v_load(msub + n);
          vf vs = v_zero();
          for (int64_t j = 0; j < kn; ++j) {
            const vf e = v_exp(v_sub(v_load(St + j * Rp + n), vmn));
            v_store(St + j * Rp + n, e);
            vs = v_add(vs, e);
          }
          const vf va = v_load(alpha + n);
          v_store(l + n, v_fma(v_load(l + n), va, vs));
          for (int64_t c = 0; c < D; ++c) v_store(Ot + c * Rp + n, v_mul(va, v_load(Ot + c * Rp + n)));
        }
        gemm(D, Rp, kn, vb + j0 * ks, 1, ks, St, Rp, Ot, Rp, true);  // Oᵀ += Vᵀ·Pᵀ
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t h = g * G + (r0 + r) / Tq, i = (r0 + r) % Tq;
        float* orow = out + ((b * Tq + i) * Hq + h) * D;
        if (!(l[r] > 0.0f)) {
          std::memset(orow, 0, sizeof(float) * D);
          if (lse) lse[(b * Hq + h) * Tq + i] = -INFINITY;
          continue;
        }
        const float inv = 1.0f / l[r];
        for (int64_t c = 0; c < D; ++c) orow[c] = Ot[c * Rp + r] * inv;
        if (lse) lse[(b * Hq + h) * Tq + i] = m[r] + std::log(l[r]);
      }
    }
  }
  scratch_release(scratch);
}

// ---------------------------------------------------------------------------------------------------------
// Tiled forward.
// ---------------------------------------------------------------------------------------------------------
static void forward_tiled(const AttnDims& d, const float* q, const float* k, const float* v, float* out,
                          float* lse) {
  const int64_t B = d.B, Tq = d.Tq, Tk = d.Tk, Hq = d.Hq, Hkv = d.Hkv, D = d.D;
  const int64_t G = Hq / Hkv;
  const float cap = d.softcap > 0.0f ? d.softcap : 0.0f;
  const float sc = cap > 0.0f ? d.scale / cap : d.scale;
  const int64_t Dp = round_up(D, AT_VL);
  const int64_t Tkp = round_up(Tk, AT_BC_F);  // every key tile reads whole (zero-padded) Kᵀ columns
  // V rows are read in place when D is a whole number of vectors, else from a zero-padded copy.
  const bool v_direct = D == Dp;
  const int64_t kt_sz = D * Tkp, vp_sz = v_direct ? 0 : Tkp * Dp;
  const int64_t nqt = (Tq + AT_BR_F - 1) / AT_BR_F;
  const int64_t ntask = B * Hq * nqt;
  const int nt = nthreads_for(imax(ntask, B * Hkv));
  // One allocation: packed Kᵀ (and V) panels, then per-thread S (BR_F × BC_F) and O (BR_F × Dp) tiles.
  const int64_t per_thread = AT_BR_F * AT_BC_F + AT_BR_F * Dp;
  float* const kt = scratch_acquire(B * Hkv * (kt_sz + vp_sz) + nt * per_thread);
  float* const vp = kt + B * Hkv * kt_sz;
  float* const thread_scratch = vp + B * Hkv * vp_sz;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t bg = 0; bg < B * Hkv; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      pack_transposed(k + b * d.kv_bstride + g * D, Hkv * D, Tk, D, kt + bg * kt_sz, Tkp);
      if (!v_direct) pack_rows(v + b * d.kv_bstride + g * D, Hkv * D, Tk, D, vp + bg * vp_sz, Dp, Tkp);
    }
    // implicit barrier
    float* const S = thread_scratch + thread_id() * per_thread;
    float* const O = S + AT_BR_F * AT_BC_F;
    float m[AT_BR_F], l[AT_BR_F], alpha[AT_BR_F];
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; ++t) {
      // heaviest (last) query tiles first
      const int64_t qt = nqt - 1 - t / (B * Hq), bh = t % (B * Hq), b = bh / Hq, h = bh % Hq, g = h / G;
      const int64_t i0 = qt * AT_BR_F, mr = imin(AT_BR_F, Tq - i0);
      const int64_t p0 = d.q_offset + i0, p1 = p0 + mr - 1;
      const float* qb = q + ((b * Tq + i0) * Hq + h) * D;  // row r at qb + r·Hq·D
      const float* ktb = kt + (b * Hkv + g) * kt_sz;
      const float* vb = v_direct ? v + b * d.kv_bstride + g * D : vp + (b * Hkv + g) * vp_sz;
      const int64_t ldv = v_direct ? Hkv * D : Dp;
      int64_t jlo, jhi, unused;
      visible(p0, Tk, d.window, &jlo, &unused);
      visible(p1, Tk, d.window, &unused, &jhi);
      for (int64_t r = 0; r < mr; ++r) { m[r] = -INFINITY; l[r] = 0.0f; }
      std::memset(O, 0, sizeof(float) * mr * Dp);
      if (jlo < jhi) {
        for (int64_t kb = jlo / AT_BC_F; kb <= (jhi - 1) / AT_BC_F; ++kb) {
          const int64_t j0 = kb * AT_BC_F, kn = imin(AT_BC_F, Tk - j0), knp = round_up(kn, AT_VL);
          gemm(mr, knp, D, qb, Hq * D, 1, ktb + j0, Tkp, S, AT_BC_F, false);
          bool rescale = false;
          for (int64_t r = 0; r < mr; ++r) {
            float* row = S + r * AT_BC_F;
            int64_t lo, hi;
            visible(p0 + r, Tk, d.window, &lo, &hi);
            lo = imax(lo - j0, 0);
            hi = imin(hi - j0, kn);
            alpha[r] = 1.0f;
            if (lo >= hi) {
              std::memset(row, 0, sizeof(float) * kn);
              continue;
            }
            row_scores(row + lo, hi - lo, sc, cap);
            const float mt = row_max(row + lo, hi - lo);
            if (mt > m[r]) {
              alpha[r] = undo_expf(m[r] - mt);  // m = −inf → 0
              m[r] = mt;
              rescale = true;
            }
            const float ls = row_exp_sum(row + lo, hi - lo, m[r]);
            if (lo > 0) std::memset(row, 0, sizeof(float) * lo);
            if (hi < kn) std::memset(row + hi, 0, sizeof(float) * (kn - hi));
            l[r] = l[r] * alpha[r] + ls;
          }
          if (rescale)
            for (int64_t r = 0; r < mr; ++r)
              if (alpha[r] != 1.0f) row_scale(O + r * Dp, Dp, alpha[r]);
          gemm(mr, Dp, kn, S, AT_BC_F, 1, vb + j0 * ldv, ldv, O, Dp, true);
        }
      }
      for (int64_t r = 0; r < mr; ++r) {
        float* orow = out + ((b * Tq + i0 + r) * Hq + h) * D;
        if (l[r] > 0.0f) {
          const float inv = 1.0f / l[r];
          for (int64_t c = 0; c < D; ++c) orow[c] = O[r * Dp + c] * inv;
          if (lse) lse[(b * Hq + h) * Tq + i0 + r] = m[r] + std::log(l[r]);
        } else {
          std::memset(orow, 0, sizeof(float) * D);
          if (lse) lse[(b * Hq + h) * Tq + i0 + r] = -INFINITY;
        }
      }
    }
  }
  scratch_release(kt);
}

// ---------------------------------------------------------------------------------------------------------
// Tiled backward.
// ---------------------------------------------------------------------------------------------------------
// Query tiles [*qa, *qb) that see some key of [j0, j0 + kn).
static inline void query_tiles_for(const AttnDims& d, int64_t j0, int64_t kn, int64_t* qa, int64_t* qb) {
  int64_t ilo = j0 - d.q_offset;  // first row whose position reaches j0
  int64_t ihi = d.Tq;             // exclusive
  if (d.window > 0) ihi = imin(ihi, j0 + kn - 1 + d.window - d.q_offset);
  ilo = imax(ilo, 0);
  if (ilo >= ihi) {
    *qa = *qb = 0;
    return;
  }
  *qa = ilo / AT_BR_B;
  *qb = (ihi - 1) / AT_BR_B + 1;
}

static void backward_impl(const AttnDims& d, const float* q, const float* k, const float* v, const float* out,
                          const float* dout, const float* lse, float* dq, float* dk, float* dv) {
  const int64_t B = d.B, Tq = d.Tq, Tk = d.Tk, Hq = d.Hq, Hkv = d.Hkv, D = d.D;
  const int64_t G = Hq / Hkv;
  const float cap = d.softcap > 0.0f ? d.softcap : 0.0f;
  const float sc = cap > 0.0f ? d.scale / cap : d.scale;
  const float scale = d.scale;
  const int64_t Dp = round_up(D, AT_VL);
  const int64_t Tkp = round_up(Tk, AT_BC_B);
  const int64_t nkt = (Tk + AT_BC_B - 1) / AT_BC_B;
  // When D is a whole number of vectors, Q, dO and K rows are read in place and split 0 accumulates dQ
  // straight into dq; otherwise they go through zero-padded [rows][Dp] copies.
  const bool direct = D == Dp;
  const int64_t q_sz = Tq * Dp;  // one (b, h) panel of a padded Q / dO / dQ copy
  const int64_t kt_sz = D * Tkp, kp_sz = direct ? 0 : Tkp * Dp;
  // Work per key tile (query tiles it meets) and the split of key tiles into work-balanced ranges. The
  // split depends on the shape only, never on the thread count, so the dQ sums (and with them the
  // gradients) are bit-identical on any number of threads: fewer than AT_SPLIT_TASKS (batch × kv-head)
  // groups are cut into key ranges until there are about that many tasks.
  int64_t* split_at = (int64_t*)std::malloc(sizeof(int64_t) * (size_t)(nkt + 2));
  if (!split_at) throw std::bad_alloc();
  int64_t nsplit = 1;
  {
    const int64_t groups = B * Hkv;
    if (groups < AT_SPLIT_TASKS) nsplit = imin(nkt, (AT_SPLIT_TASKS + groups - 1) / groups);
    if (nsplit < 1) nsplit = 1;
    int64_t total = 0;
    for (int64_t kb = 0; kb < nkt; ++kb) {
      int64_t qa, qb;
      query_tiles_for(d, kb * AT_BC_B, imin(AT_BC_B, Tk - kb * AT_BC_B), &qa, &qb);
      total += (qb - qa) + 1;
    }
    split_at[0] = 0;
    int64_t s = 1, acc = 0;
    for (int64_t kb = 0; kb < nkt && s < nsplit; ++kb) {
      int64_t qa, qb;
      query_tiles_for(d, kb * AT_BC_B, imin(AT_BC_B, Tk - kb * AT_BC_B), &qa, &qb);
      acc += (qb - qa) + 1;
      if (acc * nsplit >= s * total) split_at[s++] = kb + 1;
    }
    while (s <= nsplit) split_at[s++] = nkt;
  }

  const int64_t npart = direct ? nsplit - 1 : nsplit;  // padded dQ partial buffers
  const int64_t qcopy_sz = direct ? 0 : B * Hq * q_sz;
  const int nt = nthreads_for(imax(B * Hq, B * Hkv * nsplit));
  // One allocation: padded Q and dO copies, the dQ partials ([b, h][Tq][Dp] panels), Dᵢ, Kᵀ, Vᵀ and padded
  // K panels, then the per-thread tiles S, dP (BR_B × BC_B) and dK, dV (BC_B × Dp).
  const int64_t per_thread = 2 * AT_BR_B * AT_BC_B + 2 * AT_BC_B * Dp;
  const int64_t dv_sz = round_up(B * Hq * Tq, 16);
  float* block;
  try {
    block = scratch_acquire(2 * qcopy_sz + npart * B * Hq * q_sz + dv_sz + B * Hkv * (2 * kt_sz + kp_sz) + nt * per_thread);
  } catch (...) {
    std::free(split_at);
    throw;
  }
  float* const qp = block;
  float* const dop = qp + qcopy_sz;
  float* const dqp = dop + qcopy_sz;
  float* const Dv = dqp + npart * B * Hq * q_sz;
  float* const kt = Dv + dv_sz;
  float* const vt = kt + B * Hkv * kt_sz;
  float* const kp = vt + B * Hkv * kt_sz;
  float* const thread_scratch = kp + B * Hkv * kp_sz;

#pragma omp parallel num_threads(nt)
  {
    // Packing and Dᵢ = rowsum(dO ∘ O).
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t bh = 0; bh < B * Hq; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq;
      const float* qb = q + (b * Tq * Hq + h) * D;
      const float* ob = out + (b * Tq * Hq + h) * D;
      const float* gb = dout + (b * Tq * Hq + h) * D;
      if (direct) {
        for (int64_t i = 0; i < Tq; ++i) std::memset(dq + ((b * Tq + i) * Hq + h) * D, 0, sizeof(float) * D);
      } else {
        pack_rows(qb, Hq * D, Tq, D, qp + bh * q_sz, Dp, Tq);
        pack_rows(gb, Hq * D, Tq, D, dop + bh * q_sz, Dp, Tq);
      }
      for (int64_t i = 0; i < Tq; ++i) Dv[bh * Tq + i] = dot(gb + i * Hq * D, ob + i * Hq * D, D);
      for (int64_t s = 0; s < npart; ++s) std::memset(dqp + (s * B * Hq + bh) * q_sz, 0, sizeof(float) * q_sz);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t bg = 0; bg < B * Hkv; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      const float* kb = k + b * d.kv_bstride + g * D;
      pack_transposed(kb, Hkv * D, Tk, D, kt + bg * kt_sz, Tkp);
      pack_transposed(v + b * d.kv_bstride + g * D, Hkv * D, Tk, D, vt + bg * kt_sz, Tkp);
      if (!direct) pack_rows(kb, Hkv * D, Tk, D, kp + bg * kp_sz, Dp, Tkp);
    }
    // implicit barrier

    float* const S = thread_scratch + thread_id() * per_thread;
    float* const dP = S + AT_BR_B * AT_BC_B;
    float* const dKs = dP + AT_BR_B * AT_BC_B;
    float* const dVs = dKs + AT_BC_B * Dp;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < B * Hkv * nsplit; ++t) {
      const int64_t s = t / (B * Hkv), bg = t % (B * Hkv), b = bg / Hkv, g = bg % Hkv;
      const float* ktb = kt + bg * kt_sz;
      const float* vtb = vt + bg * kt_sz;
      const float* kpb = direct ? k + b * d.kv_bstride + g * D : kp + bg * kp_sz;
      const int64_t ldk = direct ? Hkv * D : Dp;
      const int64_t ldq = direct ? Hq * D : Dp;  // Q, dO rows
      const int64_t lddq = direct && s == 0 ? Hq * D : Dp;
      for (int64_t kb = split_at[s]; kb < split_at[s + 1]; ++kb) {
        const int64_t j0 = kb * AT_BC_B, kn = imin(AT_BC_B, Tk - j0), knp = round_up(kn, AT_VL);
        std::memset(dKs, 0, sizeof(float) * kn * Dp);
        std::memset(dVs, 0, sizeof(float) * kn * Dp);
        int64_t qa, qe;
        query_tiles_for(d, j0, kn, &qa, &qe);
        for (int64_t hh = 0; hh < G; ++hh) {
          const int64_t h = g * G + hh, bh = b * Hq + h;
          const float* qh = direct ? q + (b * Tq * Hq + h) * D : qp + bh * q_sz;
          const float* doh = direct ? dout + (b * Tq * Hq + h) * D : dop + bh * q_sz;
          float* dqh = direct && s == 0 ? dq + (b * Tq * Hq + h) * D
                                        : dqp + ((direct ? s - 1 : s) * B * Hq + bh) * q_sz;
          const float* lseh = lse + bh * Tq;
          const float* Dh = Dv + bh * Tq;
          for (int64_t qt = qa; qt < qe; ++qt) {
            const int64_t i0 = qt * AT_BR_B, mr = imin(AT_BR_B, Tq - i0);
            gemm(mr, knp, D, qh + i0 * ldq, ldq, 1, ktb + j0, Tkp, S, AT_BC_B, false);
            gemm(mr, knp, D, doh + i0 * ldq, ldq, 1, vtb + j0, Tkp, dP, AT_BC_B, false);
            for (int64_t r = 0; r < mr; ++r) {
              float* prow = S + r * AT_BC_B;
              float* drow = dP + r * AT_BC_B;
              int64_t lo, hi;
              visible(d.q_offset + i0 + r, Tk, d.window, &lo, &hi);
              lo = imax(lo - j0, 0);
              hi = imin(hi - j0, kn);
              const float L = lseh[i0 + r];
              if (lo >= hi || !(L > -INFINITY)) {
                std::memset(prow, 0, sizeof(float) * kn);
                std::memset(drow, 0, sizeof(float) * kn);
                continue;
              }
              row_backward(prow + lo, drow + lo, hi - lo, sc, cap, L, Dh[i0 + r], scale);
              if (lo > 0) {
                std::memset(prow, 0, sizeof(float) * lo);
                std::memset(drow, 0, sizeof(float) * lo);
              }
              if (hi < kn) {
                std::memset(prow + hi, 0, sizeof(float) * (kn - hi));
                std::memset(drow + hi, 0, sizeof(float) * (kn - hi));
              }
            }
            // dV += Pᵀ·dO, dK += dSᵀ·Q   (rows: keys; reduction over the mr query rows)
            gemm(kn, Dp, mr, S, 1, AT_BC_B, doh + i0 * ldq, ldq, dVs, Dp, true);
            gemm(kn, Dp, mr, dP, 1, AT_BC_B, qh + i0 * ldq, ldq, dKs, Dp, true);
            // dQ += dS·K
            gemm(mr, Dp, kn, dP, AT_BC_B, 1, kpb + j0 * ldk, ldk, dqh + i0 * lddq, lddq, true);
          }
        }
        float* dkb = dk + b * d.kv_bstride + g * D;
        float* dvb = dv + b * d.kv_bstride + g * D;
        for (int64_t j = 0; j < kn; ++j) {
          std::memcpy(dkb + (j0 + j) * Hkv * D, dKs + j * Dp, sizeof(float) * D);
          std::memcpy(dvb + (j0 + j) * Hkv * D, dVs + j * Dp, sizeof(float) * D);
        }
      }
    }

    // dq = Σ_s dQ of split s (fixed order; split 0 already in dq when direct).
    if (npart > 0) {
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < B * Hq; ++bh) {
        const int64_t b = bh / Hq, h = bh % Hq;
        for (int64_t i = 0; i < Tq; ++i) {
          float* o = dq + ((b * Tq + i) * Hq + h) * D;
          int64_t s = 0;
          if (!direct) std::memcpy(o, dqp + bh * q_sz + i * Dp, sizeof(float) * D), s = 1;
          for (; s < npart; ++s) {
            const float* ps = dqp + (s * B * Hq + bh) * q_sz + i * Dp;
            for (int64_t c = 0; c < D; ++c) o[c] += ps[c];
          }
        }
      }
    }
  }
  scratch_release(block);
  std::free(split_at);
}

}  // namespace

void attention_forward(const AttnDims& d, const float* q, const float* k, const float* v, float* out,
                       float* lse) {
  if (d.B <= 0 || d.Tq <= 0 || d.Hq <= 0) return;
  if (d.D <= 0 || d.Tk <= 0 || d.Hkv <= 0) {
    // nothing to attend to
    if (d.D > 0) std::memset(out, 0, sizeof(float) * (size_t)(d.B * d.Tq * d.Hq * d.D));
    if (lse)
      for (int64_t i = 0; i < d.B * d.Hq * d.Tq; ++i) lse[i] = d.Tk > 0 && d.Hkv > 0 ? 0.0f : -INFINITY;
    return;
  }
  if (d.Tq <= AT_DECODE_ROWS)
    forward_decode(d, q, k, v, out, lse);
  else
    forward_tiled(d, q, k, v, out, lse);
}

void attention_backward(const AttnDims& d, const float* q, const float* k, const float* v, const float* out,
                        const float* dout, const float* lse, float* dq, float* dk, float* dv) {
  if (d.B <= 0 || d.Hq <= 0 || d.Hkv <= 0 || d.D <= 0) return;
  if (d.Tq <= 0 || d.Tk <= 0) {
    for (int64_t b = 0; b < d.B; ++b) {
      if (d.Tk > 0) {
        std::memset(dk + b * d.kv_bstride, 0, sizeof(float) * (size_t)(d.Tk * d.Hkv * d.D));
        std::memset(dv + b * d.kv_bstride, 0, sizeof(float) * (size_t)(d.Tk * d.Hkv * d.D));
      }
    }
    if (d.Tq > 0) std::memset(dq, 0, sizeof(float) * (size_t)(d.B * d.Tq * d.Hq * d.D));
    return;
  }
  backward_impl(d, q, k, v, out, dout, lse, dq, dk, dv);
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void attention_forward(const AttnDims& d, const float* q, const float* k, const float* v, float* out,
                       float* lse) {
  UNDO_DISPATCH(attention_forward, d, q, k, v, out, lse);
}
void attention_backward(const AttnDims& d, const float* q, const float* k, const float* v, const float* out,
                        const float* dout, const float* lse, float* dq, float* dk, float* dv) {
  UNDO_DISPATCH(attention_backward, d, q, k, v, out, dout, lse, dq, dk, dv);
}
}  // namespace undo
#endif
