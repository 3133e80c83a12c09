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

// exp(x) for float, accurate to ~2 ulp over the normal range, written so that compilers vectorise loops
// that call it (no libm call, no branches). exp(-inf) = 0, large x saturates to +inf, NaN propagates.
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

static inline float undo_tanhf(float x) {
  // tanh via exp of -2|x|; exact enough (~1e-7 abs) for soft-capping and GELU
  float ax = std::fabs(x);
  float e = undo_expf(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  return x < 0 ? -t : t;
}

#ifdef _OPENMP
#include <omp.h>
#endif
