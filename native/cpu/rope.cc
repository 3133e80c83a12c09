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
void rope_inv_freq(const RopeParams& p, int64_t D, int64_t seq_len, double* inv_freq) {
  const int64_t half = D / 2;
  double theta = p.theta;
  if (p.scaling == RopeScaling::dynamic && p.original_max_pos > 0 && seq_len > p.original_max_pos)
    theta *= std::pow(p.factor * (double)seq_len / (double)p.original_max_pos - (p.factor - 1.0),
                      (double)D / (double)(D - 2));
  for (int64_t i = 0; i < half; i++) {
    const double f = 1.0 / std::pow(theta, (double)(2 * i) / (double)D);
    double g = f;
    if (p.scaling == RopeScaling::linear) {
      g = f / p.factor;
    } else if (p.scaling == RopeScaling::llama3) {
      const double L0 = (double)p.original_max_pos;
      const double low_wl = L0 / p.low_freq_factor, high_wl = L0 / p.high_freq_factor;
      const double wl = 2.0 * M_PI / f;
      if (wl > low_wl) {
        g = f / p.factor;
      } else if (wl < high_wl) {
        g = f;
      } else {
        const double sm = (L0 / wl - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
        g = (1.0 - sm) * f / p.factor + sm * f;
      }
    }
    inv_freq[i] = g;
  }
}

void rope_tables_from(const double* inv_freq, int64_t n_pos, int64_t D, float* cos_table, float* sin_table) {
  const int64_t half = D / 2;
  for (int64_t p = 0; p < n_pos; p++)
    for (int64_t i = 0; i < half; i++) {
      const float ang = (float)p * (float)inv_freq[i];
      cos_table[p * half + i] = (float)std::cos((double)ang);
      sin_table[p * half + i] = (float)std::sin((double)ang);
    }
}

}  // namespace undo
#endif
