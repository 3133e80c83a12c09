// RMSNorm forward/backward (see rmsnorm.h). Compiled once per ISA.
#include "rmsnorm.h"
#include "simd.h"
#include <cstdlib>
#include <new>

UNDO_ISA_BEGIN

void rmsnorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, float eps, bool unit_offset,
                     float* y, float* rstd) {
  const float off = unit_offset ? 1.0f : 0.0f;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * dim > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
    float s = 1.0f / std::sqrt(ss / (float)dim + eps);
    if (rstd) rstd[r] = s;
#pragma omp simd
    for (int64_t i = 0; i < dim; i++) yr[i] = xr[i] * s * (off + w[i]);
  }
}

// y_i = x_i·s·g_i, s = (mean(x²)+eps)^(-1/2)
// dx_i = s·g_i·dy_i − x_i·s³/dim · Σ_j dy_j·g_j·x_j ;  dg_i = Σ_rows dy_i·x_i·s
void rmsnorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* rstd,
                      bool unit_offset, const float* dy, float* dx, bool accumulate_dx, float* dw) {
  const float off = unit_offset ? 1.0f : 0.0f;
  const int nt = rows * dim > 32768 ? num_threads() : 1;
  // dw: one partial per fixed block of rows (reduction_row_block), added in block order: the same sum on
  // any number of threads
  const int64_t per = reduction_row_block(rows), nb = (rows + per - 1) / per;
  float* partial = nullptr;
  if (dw) {
    partial = (float*)std::calloc((size_t)nb * (size_t)dim, sizeof(float));
    if (!partial) throw std::bad_alloc();
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t blk = 0; blk < nb; blk++) {
    float* pdw = partial ? partial + blk * dim : nullptr;
    const int64_t r1 = (blk + 1) * per < rows ? (blk + 1) * per : rows;
    for (int64_t r = blk * per; r < r1; r++) {
      const float* xr = x + r * dim;
      const float* dyr = dy + r * dim;
      float* dxr = dx + r * dim;
      const float s = rstd[r];
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < dim; i++) dot += dyr[i] * (off + w[i]) * xr[i];
      const float c = dot * s * s * s / (float)dim;
      if (accumulate_dx) {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) dxr[i] += s * (off + w[i]) * dyr[i] - xr[i] * c;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) dxr[i] = s * (off + w[i]) * dyr[i] - xr[i] * c;
      }
      if (pdw) {
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) pdw[i] += dyr[i] * xr[i] * s;
      }
    }
  }
  if (dw) {
    for (int64_t blk = 0; blk < nb; blk++)
      for (int64_t i = 0; i < dim; i++) dw[i] += partial[blk * dim + i];
    std::free(partial);
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void rmsnorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, float eps, bool unit_offset,
                     float* y, float* rstd) {
  UNDO_DISPATCH(rmsnorm_forward, rows, dim, x, w, eps, unit_offset, y, rstd)
}
void rmsnorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* rstd,
                      bool unit_offset, const float* dy, float* dx, bool accumulate_dx, float* dw) {
  UNDO_DISPATCH(rmsnorm_backward, rows, dim, x, w, rstd, unit_offset, dy, dx, accumulate_dx, dw)
}
}  // namespace undo
#endif
