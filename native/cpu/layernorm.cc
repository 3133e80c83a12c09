// LayerNorm forward/backward (see layernorm.h). Compiled once per ISA.
#include "layernorm.h"
#include "simd.h"
#include <cstdlib>
#include <new>

UNDO_ISA_BEGIN

// Two passes over the row (mean, then the centred sum of squares): no catastrophic cancellation when
// |mean| ≫ std, which the one-pass E[x²] − E[x]² would suffer in fp32.
void layernorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, const float* b, float eps, float* y,
                       float* mean, float* rstd) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * dim > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < dim; i++) s += xr[i];
    const float mu = s / (float)dim;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < dim; i++) ss += (xr[i] - mu) * (xr[i] - mu);
    const float rs = 1.0f / std::sqrt(ss / (float)dim + eps);
    if (mean) mean[r] = mu;
    if (rstd) rstd[r] = rs;
    if (b) {
#pragma omp simd
      for (int64_t i = 0; i < dim; i++) yr[i] = (xr[i] - mu) * rs * w[i] + b[i];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < dim; i++) yr[i] = (xr[i] - mu) * rs * w[i];
    }
  }
}

// x̂ = (x − μ)·s, y = x̂·w + b.  dx = s · (g − mean(g) − x̂ · mean(g·x̂)) with g = dy·w;
// dw += Σ_rows dy·x̂, db += Σ_rows dy.
void layernorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* mean,
                        const float* rstd, const float* dy, float* dx, bool accumulate_dx, float* dw, float* db) {
  const int nt = rows * dim > 32768 ? num_threads() : 1;
  // dw/db: one partial pair per fixed block of rows (reduction_row_block), added in block order: the same
  // sums on any number of threads
  const int64_t per = reduction_row_block(rows), nb = (rows + per - 1) / per;
  float* partial = nullptr;
  if (dw || db) {
    partial = (float*)std::calloc((size_t)nb * 2 * (size_t)dim, sizeof(float));
    if (!partial) throw std::bad_alloc();
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t blk = 0; blk < nb; blk++) {
    float* pdw = partial ? partial + blk * 2 * dim : nullptr;
    float* pdb = partial ? pdw + dim : nullptr;
    const int64_t r1 = (blk + 1) * per < rows ? (blk + 1) * per : rows;
    for (int64_t r = blk * per; r < r1; r++) {
      const float* xr = x + r * dim;
      const float* dyr = dy + r * dim;
      float* dxr = dx + r * dim;
      const float mu = mean[r], s = rstd[r];
      float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
      for (int64_t i = 0; i < dim; i++) {
        const float g = dyr[i] * w[i];
        sg += g;
        sgx += g * (xr[i] - mu) * s;
      }
      const float mg = sg / (float)dim, mgx = sgx / (float)dim;
      if (accumulate_dx) {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) dxr[i] += s * (dyr[i] * w[i] - mg - (xr[i] - mu) * s * mgx);
      } else {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) dxr[i] = s * (dyr[i] * w[i] - mg - (xr[i] - mu) * s * mgx);
      }
      if (pdw) {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) {
          pdw[i] += dyr[i] * (xr[i] - mu) * s;
          pdb[i] += dyr[i];
        }
      }
    }
  }
  if (partial) {
    for (int64_t blk = 0; blk < nb; blk++)
      for (int64_t i = 0; i < dim; i++) {
        if (dw) dw[i] += partial[blk * 2 * dim + i];
        if (db) db[i] += partial[blk * 2 * dim + dim + i];
      }
    std::free(partial);
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void layernorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, const float* b, float eps, float* y,
                       float* mean, float* rstd) {
  UNDO_DISPATCH(layernorm_forward, rows, dim, x, w, b, eps, y, mean, rstd)
}
void layernorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* mean,
                        const float* rstd, const float* dy, float* dx, bool accumulate_dx, float* dw, float* db) {
  UNDO_DISPATCH(layernorm_backward, rows, dim, x, w, mean, rstd, dy, dx, accumulate_dx, dw, db)
}
}  // namespace undo
#endif
