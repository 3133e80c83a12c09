// Philox4x32-10 noise on the GPU, bit-identical to native/cpu/random.cc for the same (seed, stream, index):
// element i of a fill uses counter i/2 (normal: a Box–Muller pair) or i/4 (uniform), exactly as the CPU.
#pragma once
#include "common.cuh"

namespace undo {
namespace cuda {

// FNV-1a 64 of a tensor name (the CPU's undo::stream_of, host code).
uint64_t stream_of(const char* name);

// The CPU's philox4x32 on the host (for tests; the kernels use the same function compiled for the device).
void philox4x32_host(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]);

enum class NoiseKind : int32_t { normal = 0, uniform = 1 };

// x[0..n) = N(mean = a, std = b) or U[lo = a, hi = b) samples (the CPU's fill_normal / fill_uniform).
cudaError_t fill_random(float* x, int64_t n, uint64_t seed, uint64_t stream, NoiseKind kind, float a, float b,
                        cudaStream_t s);

// Fused UNDO noise step (lib/unlearn/noise.ts noiseModel): w[i] = fround(keep·w[i] + scale·N_i) with the sum of the two
// exact double products rounded once to double and then to float (as the TypeScript does), N_i the sample
// fill_random would write at i. Bit-identical to fillRandom + the TypeScript loop.
cudaError_t noise_mix(float* w, int64_t n, uint64_t seed, uint64_t stream, NoiseKind kind, float a, float b,
                      float keep, float scale, cudaStream_t s);

}  // namespace cuda
}  // namespace undo
