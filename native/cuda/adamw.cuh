// AdamW (decoupled weight decay, PyTorch semantics) and the squared L2 norm for global-norm clipping on the GPU:
// the twins of native/cpu/adamw.cc.
#pragma once
#include "common.cuh"

namespace undo {
namespace cuda {

struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  int64_t step;  // 1-based step count after this update (bias correction)
};

// param, m, v updated in place from grad·grad_scale. Bit-identical to the CPU's generic build (the same float
// operations in the same order, no FMA contraction); the AVX2/AVX-512 builds may fuse and differ by an ulp.
cudaError_t adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWParams& p,
                         cudaStream_t s);

// Σ x² into *out (a device double). Fixed partition (per-thread fp32 partial sums over a grid-stride slice, combined
// in double in a fixed order), so the result does not depend on scheduling. `work` holds sum_squares_work_doubles()
// doubles.
size_t sum_squares_work_doubles();
cudaError_t sum_squares(int64_t n, const float* x, double* out, double* work, cudaStream_t s);

}  // namespace cuda
}  // namespace undo
