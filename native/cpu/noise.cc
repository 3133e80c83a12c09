// Weight noise and the distribution projection's kernels (see noise.h).
#include "noise.h"

#include <algorithm>
#include <vector>

#include "isa.h"
#include "random.h"

namespace undo {

// No fused multiply-add anywhere here: the TypeScript reference rounds each product (rank_blend's are inexact).
__attribute__((optimize("fp-contract=off")))
void noise_blend(float* w, int64_t n, float keep, float scale, NoiseKind kind, uint64_t seed, uint64_t stream, float a,
                 float b) {
  const double k = keep, s = scale;
  if (kind == NoiseKind::none) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) w[i] = (float)(k * (double)w[i]);
    return;
  }
  std::vector<float> noise((size_t)n);
  if (kind == NoiseKind::normal) fill_normal(noise.data(), n, seed, stream, a, b);
  else fill_uniform(noise.data(), n, seed, stream, a, b);
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++) w[i] = (float)(k * (double)w[i] + s * (double)noise[(size_t)i]);
}

void argsort_f32(const float* x, int64_t n, uint32_t* order) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(x);
  std::vector<uint32_t> keys((size_t)n), tmp((size_t)n);
  for (int64_t i = 0; i < n; i++) {
    const uint32_t v = bits[i];
    keys[(size_t)i] = (v & 0x80000000u) ? ~v : (v | 0x80000000u);
  }
  uint32_t* src = order;
  uint32_t* dst = tmp.data();
  for (int64_t i = 0; i < n; i++) src[i] = (uint32_t)i;
  std::vector<uint32_t> count(2048);
  const int shifts[3] = {0, 11, 22}, widths[3] = {11, 11, 10};
  for (int p = 0; p < 3; p++) {
    const uint32_t mask = (1u << widths[p]) - 1;
    const int sh = shifts[p];
    std::fill(count.begin(), count.end(), 0u);
    for (int64_t i = 0; i < n; i++) count[(keys[(size_t)i] >> sh) & mask]++;
    uint32_t sum = 0;
    for (uint32_t d = 0; d <= mask; d++) {
      const uint32_t c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (int64_t j = 0; j < n; j++) {
      const uint32_t i = src[j];
      dst[count[(keys[i] >> sh) & mask]++] = i;
    }
    std::swap(src, dst);
  }
  // three passes: the result is in tmp
  if (src != order)
    for (int64_t i = 0; i < n; i++) order[i] = src[i];
}

__attribute__((optimize("fp-contract=off")))
void rank_blend(float* w, int64_t n, const uint32_t* order, const double* tq, double eta) {
  const double keep = 1 - eta;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (n > 65536)
  for (int64_t r = 0; r < n; r++) {
    const uint32_t i = order[r];
    w[i] = (float)(keep * (double)w[i] + eta * tq[r]);
  }
}

}  // namespace undo
