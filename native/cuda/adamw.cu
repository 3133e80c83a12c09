// AdamW update and squared norm on the GPU (see adamw.cuh). Compiled with --fmad=false (CMakeLists.txt): the update
// is the CPU's float expression evaluated in the same order without contraction, so it matches undo::generic bit
// for bit (sqrtf and / are IEEE round-to-nearest in CUDA without fast math).
#include <cmath>

#include "adamw.cuh"
#include "device_util.cuh"

namespace undo {
namespace cuda {

struct AdamWScalars {
  float b1, b2, step_size, inv_sqrt_bc2, decay, gs, eps;
};

__global__ void adamw_kernel(int64_t n, float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, AdamWScalars c) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = grad[i] * c.gs;
    const float mi = c.b1 * m[i] + (1.0f - c.b1) * g;
    const float vi = c.b2 * v[i] + (1.0f - c.b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) * c.inv_sqrt_bc2 + c.eps;
    param[i] = param[i] * c.decay - c.step_size * mi / denom;
  }
}

cudaError_t adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWParams& p,
                         cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  // host scalars exactly as native/cpu/adamw.cc computes them
  AdamWScalars c;
  c.b1 = p.beta1;
  c.b2 = p.beta2;
  const float bc1 = 1.0f - (float)std::pow((double)p.beta1, (double)p.step);
  const float bc2 = 1.0f - (float)std::pow((double)p.beta2, (double)p.step);
  c.step_size = p.lr / bc1;
  c.inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
  c.decay = 1.0f - p.lr * p.weight_decay;
  c.gs = p.grad_scale;
  c.eps = p.eps;
  adamw_kernel<<<grid_for(n, 256, 132u * 16u), 256, 0, s>>>(n, param, grad, m, v, c);
  return cudaGetLastError();
}

static const int kSsBlocks = 1024, kSsThreads = 256;

size_t sum_squares_work_doubles() { return kSsBlocks; }

__global__ void sum_squares_partial(int64_t n, const float* __restrict__ x, double* __restrict__ part) {
  __shared__ double sh[32];
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    acc += x[i] * x[i];
  const double t = block_sum((double)acc, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = t;
}

__global__ void sum_squares_final(int nparts, const double* __restrict__ part, double* __restrict__ out) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
  const double t = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = t;
}

cudaError_t sum_squares(int64_t n, const float* x, double* out, double* work, cudaStream_t s) {
  // a fixed grid for every n (small n just leaves blocks empty): the partition is the same on every call
  const int blocks = n > 0 ? kSsBlocks : 1;
  sum_squares_partial<<<blocks, kSsThreads, 0, s>>>(n > 0 ? n : 0, x, work);
  sum_squares_final<<<1, 1024, 0, s>>>(blocks, work, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace undo
