// Fused softmax + cross-entropy (see cross_entropy.cuh).
#include "cross_entropy.cuh"
#include "device_util.cuh"

namespace undo {
namespace cuda {

template <typename TIn>
__global__ void __launch_bounds__(512) xent_kernel(int64_t vocab, const TIn* logits, int64_t ld,
                                                   const int32_t* __restrict__ targets, int32_t ignore_index,
                                                   float softcap, float inv_cap, const float* __restrict__ weights,
                                                   float* __restrict__ loss, float* dlogits) {
  __shared__ float shm[32], shs[32];
  __shared__ float s_zt_raw;
  const int64_t r = blockIdx.x;
  const TIn* z = logits + r * ld;
  float* dz = dlogits ? dlogits + r * ld : nullptr;
  const int32_t t = targets[r];
  const float w = weights ? weights[r] : 1.0f;
  if (t == ignore_index || w == 0.0f) {
    if (threadIdx.x == 0) loss[r] = 0.0f;
    if (dz)
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) dz[i] = 0.0f;
    return;
  }
  const bool cap = softcap > 0.0f;
  if (threadIdx.x == 0) s_zt_raw = load_f(z, t);  // read before any thread overwrites the row (in place)
  MaxSum a = ms_init();
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float x = load_f(z, i);
    ms_add(a, cap ? softcap * tanhf(x * inv_cap) : x, kLog2e);
  }
  a = block_ms(a, kLog2e, shm, shs);  // its __syncthreads also publish s_zt_raw
  const float m = a.m, s = a.s;
  const float zt_raw = s_zt_raw;
  const float tht = cap ? tanhf(zt_raw * inv_cap) : 0.0f;
  const float zt = cap ? softcap * tht : zt_raw;
  // (m − z_t) + log s: both terms ≥ 0, nothing cancels (as the CPU)
  if (threadIdx.x == 0) loss[r] = (m - zt) + logf(s);
  if (!dz) return;
  const float inv_s = w / s;
  if (cap) {
    const float dt = w * (1.0f - tht * tht);
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float th = tanhf(load_f(z, i) * inv_cap);
      const float p = exp2f((softcap * th - m) * kLog2e) * inv_s;
      float d = p * (1.0f - th * th);
      if (i == t) d -= dt;
      dz[i] = d;
    }
  } else {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      float d = exp2f((load_f(z, i) - m) * kLog2e) * inv_s;
      if (i == t) d -= w;
      dz[i] = d;
    }
  }
}

cudaError_t cross_entropy(int64_t rows, int64_t vocab, const void* logits, DType logits_type, int64_t ld,
                          const int32_t* targets, int32_t ignore_index, float softcap, const float* weights, float* loss,
                          float* dlogits, cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0 || ld < vocab) return cudaErrorInvalidValue;
  const int threads = vocab >= 8192 ? 512 : vocab >= 1024 ? 256 : 128;
  const float inv_cap = softcap > 0.0f ? 1.0f / softcap : 0.0f;
  if (logits_type == DType::bf16)
    xent_kernel<__nv_bfloat16><<<(unsigned)rows, threads, 0, s>>>(vocab, (const __nv_bfloat16*)logits, ld, targets,
                                                                   ignore_index, softcap, inv_cap, weights, loss,
                                                                   dlogits);
  else
    xent_kernel<float><<<(unsigned)rows, threads, 0, s>>>(vocab, (const float*)logits, ld, targets, ignore_index,
                                                          softcap, inv_cap, weights, loss, dlogits);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace undo
