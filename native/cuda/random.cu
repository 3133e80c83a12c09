// Philox4x32-10 (Salmon et al., SC'11) on the GPU: the twin of native/cpu/random.cc.
//
// Bit-identity with the CPU. The counter/key schedule and the integer → uniform maps are exact integer and
// power-of-two arithmetic, identical on both. The float/double transforms are written with explicit
// round-to-nearest intrinsics (__dmul_rn, __dadd_rn, __fmul_rn, ...), which nvcc never contracts into FMAs (and
// this file is compiled with --fmad=false besides); the CPU's random.cc is built without -mfma, so it has no FMAs
// either. sqrt and the double → float conversions are correctly rounded on both. The one place that is not exact by
// construction is Box–Muller's log, cos and sin in double: CUDA's are within 1–2 ulp, glibc's within ~0.5 ulp, so
// their double results can differ in the last bit; the sample is the double result rounded to float, which hides a
// last-bit difference unless the double lies within an ulp of a float rounding boundary (probability ~2^-28 per
// sample). Uniform samples (Xavier noise) involve no transcendental and are exact always. See the test
// (test/cuda.test.ts) and test/native/cuda_harness.cu, which count mismatches over millions of samples.
#include <cstdint>

#include "../cpu/philox.h"
#include "device_util.cuh"
#include "random.cuh"

namespace undo {
namespace cuda {

__host__ __device__ __forceinline__ void philox4x32_hd(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
  undo::philox4x32_10(seed, stream, index, out);  // native/cpu/philox.h, the CPU's own definition
}

void philox4x32_host(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
  philox4x32_hd(seed, stream, index, out);
}

uint64_t stream_of(const char* name) { return undo::philox_stream_of(name); }

// 53-bit uniform in (0, 1): ((bits & (2^53 − 1)) + 0.5) / 2^53. The integer converts exactly; the + 0.5 rounds
// (to even) above 2^52 exactly as on the CPU; the division by 2^53 is exact.
__device__ __forceinline__ double to_unit_open(uint32_t a, uint32_t b) {
  const uint64_t bits = ((uint64_t)a << 21) ^ (uint64_t)b;
  return __dmul_rn(__dadd_rn((double)(bits & ((1ull << 53) - 1)), 0.5), 1.0 / 9007199254740992.0);
}

// The pair of normal samples of counter `pair`: (float)(mean + std·rad·cos(ang)), (float)(mean + std·rad·sin(ang)),
// evaluated left to right in double as random.cc does.
__device__ __forceinline__ void normal_pair(uint64_t seed, uint64_t stream, uint64_t pair, float mean, float std,
                                            float* x0, float* x1) {
  uint32_t r[4];
  philox4x32_hd(seed, stream, pair, r);
  const double u1 = to_unit_open(r[0], r[1]), u2 = to_unit_open(r[2], r[3]);
  const double rad = sqrt(__dmul_rn(-2.0, log(u1)));
  const double ang = __dmul_rn(6.283185307179586, u2);
  const double sr = __dmul_rn((double)std, rad);
  *x0 = __double2float_rn(__dadd_rn((double)mean, __dmul_rn(sr, cos(ang))));
  *x1 = __double2float_rn(__dadd_rn((double)mean, __dmul_rn(sr, sin(ang))));
}

// Uniform sample of word w in [lo, hi): u = (float)((w + 0.5)/2^32) kept below 1, v = lo + (hi − lo)·u kept below hi.
__device__ __forceinline__ float uniform_of(uint32_t w, float lo, float hi) {
  float u = __double2float_rn(__dmul_rn(__dadd_rn((double)w, 0.5), 1.0 / 4294967296.0));
  u = u < 1.0f ? u : 0x1.fffffep-1f;
  float v = __fadd_rn(lo, __fmul_rn(__fsub_rn(hi, lo), u));
  if (lo < hi && v >= hi) v = nextafterf(hi, lo);
  return v;
}

__global__ void fill_normal_kernel(float* __restrict__ x, int64_t n, uint64_t seed, uint64_t stream, float mean,
                                   float std) {
  const int64_t npairs = (n + 1) / 2;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < npairs; p += (int64_t)gridDim.x * blockDim.x) {
    float a, b;
    normal_pair(seed, stream, (uint64_t)p, mean, std, &a, &b);
    const int64_t i = p * 2;
    x[i] = a;
    if (i + 1 < n) x[i + 1] = b;
  }
}

__global__ void fill_uniform_kernel(float* __restrict__ x, int64_t n, uint64_t seed, uint64_t stream, float lo,
                                    float hi) {
  const int64_t nquads = (n + 3) / 4;
  for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < nquads; q += (int64_t)gridDim.x * blockDim.x) {
    uint32_t r[4];
    philox4x32_hd(seed, stream, (uint64_t)q, r);
    const int64_t i = q * 4;
    if (i + 3 < n && (((uintptr_t)(x + i)) & 15) == 0) {
      float4 v;
      v.x = uniform_of(r[0], lo, hi);
      v.y = uniform_of(r[1], lo, hi);
      v.z = uniform_of(r[2], lo, hi);
      v.w = uniform_of(r[3], lo, hi);
      *reinterpret_cast<float4*>(x + i) = v;
    } else {
      for (int j = 0; j < 4; j++)
        if (i + j < n) x[i + j] = uniform_of(r[j], lo, hi);
    }
  }
}

// fround(keep·w + scale·N): both products are exact in double (24-bit × 24-bit significands), one rounding of the
// sum to double, one to float — the TypeScript's `keep * w[i] + scale * n[i]` stored into a Float32Array.
__device__ __forceinline__ float mix(float w, float noise, double keep, double scale) {
  return __double2float_rn(__dadd_rn(__dmul_rn(keep, (double)w), __dmul_rn(scale, (double)noise)));
}

__global__ void noise_mix_kernel(float* __restrict__ w, int64_t n, uint64_t seed, uint64_t stream, int32_t kind, float a,
                                 float b, double keep, double scale) {
  if (kind == (int32_t)NoiseKind::normal) {
    const int64_t npairs = (n + 1) / 2;
    for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < npairs; p += (int64_t)gridDim.x * blockDim.x) {
      float x0, x1;
      normal_pair(seed, stream, (uint64_t)p, a, b, &x0, &x1);
      const int64_t i = p * 2;
      w[i] = mix(w[i], x0, keep, scale);
      if (i + 1 < n) w[i + 1] = mix(w[i + 1], x1, keep, scale);
    }
  } else {
    const int64_t nquads = (n + 3) / 4;
    for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < nquads; q += (int64_t)gridDim.x * blockDim.x) {
      uint32_t r[4];
      philox4x32_hd(seed, stream, (uint64_t)q, r);
      const int64_t i = q * 4;
      for (int j = 0; j < 4; j++)
        if (i + j < n) w[i + j] = mix(w[i + j], uniform_of(r[j], a, b), keep, scale);
    }
  }
}

static unsigned philox_grid(int64_t items) { return grid_for(items, 256, 132u * 64u); }

cudaError_t fill_random(float* x, int64_t n, uint64_t seed, uint64_t stream, NoiseKind kind, float a, float b,
                        cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  if (kind == NoiseKind::normal)
    fill_normal_kernel<<<philox_grid((n + 1) / 2), 256, 0, s>>>(x, n, seed, stream, a, b);
  else
    fill_uniform_kernel<<<philox_grid((n + 3) / 4), 256, 0, s>>>(x, n, seed, stream, a, b);
  return cudaGetLastError();
}

cudaError_t noise_mix(float* w, int64_t n, uint64_t seed, uint64_t stream, NoiseKind kind, float a, float b, float keep,
                      float scale, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  const int64_t items = kind == NoiseKind::normal ? (n + 1) / 2 : (n + 3) / 4;
  noise_mix_kernel<<<philox_grid(items), 256, 0, s>>>(w, n, seed, stream, (int32_t)kind, a, b, (double)keep,
                                                      (double)scale);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace undo
