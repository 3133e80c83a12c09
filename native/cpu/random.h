// Counter-based random numbers (Philox4x32-10). A value depends only on (seed, stream, index), never on
// the order or thread that asks, so initialisation and noise are bit-identical for any thread count (and,
// with the same function on the GPU, across devices).
#pragma once
#include <cstdint>

namespace undo {

// Four 32-bit random words for counter `index` in `stream` under `seed`.
void philox4x32(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]);

// Stream id of a tensor name (FNV-1a 64), so noise for "model.layers.3.mlp.up_proj.weight" is keyed by name.
uint64_t stream_of(const char* name);

// Fill x[0..n) with samples. Element i uses counter i/2 (normal: Box–Muller pair) or i/4 (uniform).
void fill_normal(float* x, int64_t n, uint64_t seed, uint64_t stream, float mean, float std);
void fill_uniform(float* x, int64_t n, uint64_t seed, uint64_t stream, float lo, float hi);

}  // namespace undo
