// Seeded fills from Philox4x32-10 (philox.h, shared with native/cuda/random.cu).
#include "random.h"

#include <cmath>

#include "isa.h"
#include "philox.h"

namespace undo {

void philox4x32(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) { philox4x32_10(seed, stream, index, out); }

uint64_t stream_of(const char* name) { return philox_stream_of(name); }

static inline double to_unit_open(uint32_t a, uint32_t b) {
  // 53-bit uniform in (0, 1)
  const uint64_t bits = ((uint64_t)a << 21) ^ (uint64_t)b;
  return ((double)(bits & ((1ull << 53) - 1)) + 0.5) / 9007199254740992.0;
}

void fill_normal(float* x, int64_t n, uint64_t seed, uint64_t stream, float mean, float std) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (n > 65536)
  for (int64_t pair = 0; pair < (n + 1) / 2; pair++) {
    uint32_t r[4];
    philox4x32(seed, stream, (uint64_t)pair, r);
    const double u1 = to_unit_open(r[0], r[1]), u2 = to_unit_open(r[2], r[3]);
    const double rad = std::sqrt(-2.0 * std::log(u1));
    const double ang = 6.283185307179586 * u2;
    const int64_t i = pair * 2;
    x[i] = (float)(mean + std * rad * std::cos(ang));
    if (i + 1 < n) x[i + 1] = (float)(mean + std * rad * std::sin(ang));
  }
}

void fill_uniform(float* x, int64_t n, uint64_t seed, uint64_t stream, float lo, float hi) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (n > 65536)
  for (int64_t quad = 0; quad < (n + 3) / 4; quad++) {
    uint32_t r[4];
    philox4x32(seed, stream, (uint64_t)quad, r);
    for (int j = 0; j < 4; j++) {
      const int64_t i = quad * 4 + j;
      if (i < n) {
        // (w + 0.5)/2^32 < 1 in double, but the top 128 words round to 1.0f, and lo + (hi − lo)·u can round
        // up to hi: keep both below their bound so that samples lie in [lo, hi). Other values are unchanged.
        float u = (float)(((double)r[j] + 0.5) / 4294967296.0);
        u = u < 1.0f ? u : 0x1.fffffep-1f;
        float v = lo + (hi - lo) * u;
        if (lo < hi && v >= hi) v = std::nextafter(hi, lo);
        x[i] = v;
      }
    }
  }
}

}  // namespace undo
