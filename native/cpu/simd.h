// Small helpers shared by the per-ISA kernel files. Everything here is `static inline` so that each ISA's
// copy stays private to its translation unit (see isa.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define UNDO_VEC 16
#elif defined(__AVX2__)
#define UNDO_VEC 8
#else
#define UNDO_VEC 4
#endif

// exp(x) for any float, ~2 ulp over the normal range; exp(-inf) = 0, large x gives +inf, NaN propagates.
// Its trailing selects keep GCC 12 from vectorising loops that store its result: in hot loops whose argument
// is ≤ 0 (softmax against a max, sigmoid and tanh of −|x|) use undo_exp_neg below.
static inline float undo_expf(float x) {
  const float hi = 88.3762626647949f, lo = -103.972084045410f;
  float xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // x = n*ln2 + r, |r| <= ln2/2
  int32_t ni = (int32_t)(xc * 1.44269504088896341f + (xc >= 0.0f ? 0.5f : -0.5f));
  float n = (float)ni;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  // scale by 2^n in two steps so that n down to -150 stays representable
  int32_t n1 = ni / 2, n2 = ni - n1;
  int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  float y = p * s1 * s2;
  y = x > hi ? INFINITY : y;
  return x != x ? x : y;
}

// 2^t for t ≤ 0 (a (log-)probability relative to a max, say) to ~2 ulp, written for loops
// that store its result, which GCC then vectorises: all the range handling is on the input side or in
// integer ops (undo_expf's trailing selects on its own result become branches in such loops, which then
// stay scalar). e^((x − m)/T) is computed as 2^((x − m)·(log2 e/T)): folding log2 e into 1/T saves the
// two-constant ln 2 range reduction (r = t − n is exact), and the argument carries the same single rounding
// as before. Round-to-nearest by the 1.5·2^23 trick leaves n in the low mantissa bits, so 2^n needs no
// conversion; 2^r, |r| ≤ ½, by its degree-7 Taylor polynomial (truncation 6e-9). The biased exponent
// n + 127 is clamped at 0, so the result is exactly 0 below 2^−126.5 (−inf included): "probability 0"
// tests are exact, and 0·(−inf) never happens behind a p > 0 guard. NaN stays NaN.
static inline float undo_exp2_neg(float t) {
  const float tc = t < -127.0f ? -127.0f : t;
  const float kf = tc + 12582912.0f;
  const float n = kf - 12582912.0f;
  const float r = tc - n;
  float p = 1.5252733804e-5f;       // (ln 2)^7/7!
  p = p * r + 1.5403530393e-4f;     // (ln 2)^6/6!
  p = p * r + 1.3333558146e-3f;     // (ln 2)^5/5!
  p = p * r + 9.6181291076e-3f;     // (ln 2)^4/4!
  p = p * r + 5.5504108665e-2f;     // (ln 2)^3/3!
  p = p * r + 2.4022650696e-1f;     // (ln 2)^2/2
  p = p * r + 6.9314718056e-1f;     // ln 2
  p = p * r + 1.0f;
  int32_t kb;
  std::memcpy(&kb, &kf, 4);
  int32_t be = kb - (0x4B400000 - 127);  // n + 127
  be = be < 0 ? 0 : be;
  const int32_t sb = be << 23;  // 2^n, or 0 when n < −126
  float s;
  std::memcpy(&s, &sb, 4);
  return p * s;
}

// e^x for x ≤ 0 (vectorisable; see undo_exp2_neg).
static inline float undo_exp_neg(float x) { return undo_exp2_neg(x * 1.44269504088896341f); }

static inline float undo_tanhf(float x) {
  // tanh via exp of -2|x|; exact enough (~1e-7 abs) for soft-capping and GELU
  float ax = std::fabs(x);
  float e = undo_exp_neg(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  return x < 0 ? -t : t;
}

#ifdef _OPENMP
#include <omp.h>
#endif
