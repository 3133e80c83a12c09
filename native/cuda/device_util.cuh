// Device-side helpers for the kernels in native/cuda (only included by .cu files): warp/block reductions with a
// fixed combination order (results do not depend on scheduling, so every run is bit-identical), the running
// (max, sum) pair of an online softmax, and typed loads.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace undo {
namespace cuda {

constexpr float kLog2e = 1.44269504088896341f;

__device__ __forceinline__ float load_f(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

// Symmetric max that ignores NaN (as the CPU's x > m ? x : m does when m starts at −inf).
__device__ __forceinline__ float sym_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double sym_max(double a, double b) { return fmax(a, b); }

// Butterfly reductions: every lane ends with the same value (each step combines the same two operands on both
// lanes of a pair, and the combinations are commutative), so results are deterministic.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v = sym_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

// Block-wide sum / max (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result. `sh` holds 32 T.
// Starts with a __syncthreads, so the same `sh` may be reused by consecutive calls.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : T(0);
  return warp_sum(r);
}
template <typename T>
__device__ __forceinline__ T block_max(T v, T* sh, T lowest) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : lowest;
  return warp_max(r);
}

// Running (max m, sum s) of exp((x − m)/T), with c2 = log2(e)/T: s = Σ 2^((x − m)·c2). −inf entries add 0.
struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum ms_init() { return MaxSum{-INFINITY, 0.0f}; }
__device__ __forceinline__ void ms_add(MaxSum& a, float x, float c2) {
  if (x > a.m) {
    a.s = a.s > 0.0f ? a.s * exp2f((a.m - x) * c2) : 0.0f;
    a.m = x;
  }
  if (a.m != -INFINITY) a.s += exp2f((x - a.m) * c2);
}
// Raise the max only (a column whose mass is counted elsewhere, e.g. a top-k id).
__device__ __forceinline__ void ms_raise(MaxSum& a, float x, float c2) {
  if (x > a.m) {
    a.s = a.s > 0.0f ? a.s * exp2f((a.m - x) * c2) : 0.0f;
    a.m = x;
  }
}
__device__ __forceinline__ MaxSum ms_combine(MaxSum a, MaxSum b, float c2) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return MaxSum{m, 0.0f};
  const float sa = a.s > 0.0f ? a.s * exp2f((a.m - m) * c2) : 0.0f;
  const float sb = b.s > 0.0f ? b.s * exp2f((b.m - m) * c2) : 0.0f;
  return MaxSum{m, sa + sb};
}
__device__ __forceinline__ MaxSum warp_ms(MaxSum v, float c2) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum w;
    w.m = __shfl_xor_sync(0xffffffffu, v.m, o);
    w.s = __shfl_xor_sync(0xffffffffu, v.s, o);
    v = ms_combine(v, w, c2);
  }
  return v;
}
// Block-wide (max, sum); every thread gets the result. shm, shs: 32 floats each.
__device__ __forceinline__ MaxSum block_ms(MaxSum v, float c2, float* shm, float* shs) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_ms(v, c2);
  __syncthreads();
  if (lane == 0) {
    shm[wid] = v.m;
    shs[wid] = v.s;
  }
  __syncthreads();
  MaxSum r = lane < nw ? MaxSum{shm[lane], shs[lane]} : ms_init();
  return warp_ms(r, c2);
}

// Grid size for an element-wise grid-stride loop.
inline unsigned grid_for(int64_t n, int threads, unsigned cap = 65535u * 4u) {
  const int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : (b > (int64_t)cap ? (int64_t)cap : b));
}

}  // namespace cuda
}  // namespace undo
