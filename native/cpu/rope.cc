// Rotary position embedding (see rope.h). Compiled once per ISA.
#include "rope.h"
#include "simd.h"
#include <cmath>

UNDO_ISA_BEGIN

void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, float* x, const float* cos_table,
                const float* sin_table, int64_t pos_offset, bool inverse) {
  const int64_t half = D / 2;
  const float sgn = inverse ? -1.0f : 1.0f;
  const int64_t rows = B * T;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * H * D > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const int64_t pos = pos_offset + (r % T);
    const float* c = cos_table + pos * half;
    const float* s = sin_table + pos * half;
    for (int64_t h = 0; h < H; h++) {
      float* v = x + (r * H + h) * D;
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        const float si = sgn * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    }
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, float* x, const float* cos_table,
                const float* sin_table, int64_t pos_offset, bool inverse) {
  UNDO_DISPATCH(rope_apply, B, T, H, D, x, cos_table, sin_table, pos_offset, inverse)
}
void rope_tables(int64_t max_pos, int64_t D, double theta, float* cos_table, float* sin_table) {
  const int64_t half = D / 2;
  for (int64_t p = 0; p < max_pos; p++)
    for (int64_t i = 0; i < half; i++) {
      // HF computes inv_freq in fp32 then angle = pos * inv_freq in fp32
      const float inv_freq = (float)(1.0 / std::pow(theta, (double)(2 * i) / (double)D));
      const float ang = (float)p * inv_freq;
      cos_table[p * half + i] = (float)std::cos((double)ang);
      sin_table[p * half + i] = (float)std::sin((double)ang);
    }
}
}  // namespace undo
#endif
