// AdamW update and squared norm (see adamw.h). Compiled once per ISA.
#include "adamw.h"
#include "simd.h"
#include <cstdlib>

// The update is elementwise, so it is the same on every ISA to the last bit when no multiply-add is fused
// (the AVX2/AVX-512 builds would contract them into FMAs, the generic one cannot): contraction is off here.
// It is memory-bound, so the FMAs were worth nothing.
#pragma GCC optimize("fp-contract=off")

UNDO_ISA_BEGIN

void adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWParams& p) {
  const float b1 = p.beta1, b2 = p.beta2;
  const float bc1 = 1.0f - (float)std::pow((double)b1, (double)p.step);
  const float bc2 = 1.0f - (float)std::pow((double)b2, (double)p.step);
  const float step_size = p.lr / bc1;
  const float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
  const float decay = 1.0f - p.lr * p.weight_decay;
  const float gs = p.grad_scale, eps = p.eps;
  const int64_t chunk = 32768;
  const int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
      const float g = grad[i] * gs;
      const float mi = b1 * m[i] + (1.0f - b1) * g;
      const float vi = b2 * v[i] + (1.0f - b2) * g * g;
      m[i] = mi;
      v[i] = vi;
      const float denom = std::sqrt(vi) * inv_sqrt_bc2 + eps;
      param[i] = param[i] * decay - step_size * mi / denom;
    }
  }
}

double sum_squares(int64_t n, const float* x) {
  const int64_t chunk = 4096;
  const int64_t nchunks = (n + chunk - 1) / chunk;
  // fixed chunks, per-chunk partials summed serially in double: the result does not depend on the threads
  double* part = (double*)std::malloc(sizeof(double) * (size_t)(nchunks > 0 ? nchunks : 1));
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (nchunks > 8)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; i++) s += x[i] * x[i];
    part[c] = (double)s;
  }
  double total = 0.0;
  for (int64_t c = 0; c < nchunks; c++) total += part[c];
  std::free(part);
  return total;
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWParams& p) {
  UNDO_DISPATCH(adamw_update, n, param, grad, m, v, p)
}
double sum_squares(int64_t n, const float* x) { UNDO_DISPATCH(sum_squares, n, x) }
}  // namespace undo
#endif
