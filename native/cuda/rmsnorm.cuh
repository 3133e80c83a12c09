// RMSNorm over the last dimension on the GPU (twin of native/cpu/rmsnorm.cc):
//   y = x · rstd · g, rstd = 1/sqrt(mean(x²) + eps), g = w (Llama) or 1 + w (Gemma, unit_offset).
#pragma once
#include "common.cuh"

namespace undo {
namespace cuda {

// rstd may be null.
cudaError_t rmsnorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, float eps, bool unit_offset,
                            float* y, float* rstd, cudaStream_t s);

// dx overwritten (or added to when accumulate_dx); dw, when not null, is added to. dw is reduced over rows in a
// fixed order through `work` (rmsnorm_backward_work_floats(rows, dim) floats; may be null when dw is null), so
// it is deterministic without atomics.
size_t rmsnorm_backward_work_floats(int64_t rows, int64_t dim);
cudaError_t rmsnorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* rstd,
                             bool unit_offset, const float* dy, float* dx, bool accumulate_dx, float* dw, float* work,
                             cudaStream_t s);

}  // namespace cuda
}  // namespace undo
