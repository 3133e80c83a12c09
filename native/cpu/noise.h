// Weight noise and the distribution projection of lib/unlearn/noise.ts, in place on one tensor:
// UNDO's θ ← (1−α)·θ + α·β·N (noise_blend) and the projection's rank blend w ← (1−η)·w + η·t_rank (argsort_f32 +
// rank_blend). Compiled once (no per-ISA copies): the arithmetic is the same double-precision expression the
// TypeScript reference evaluates, so the results are bit-identical to it on every CPU.
#pragma once
#include <cstdint>

namespace undo {

enum class NoiseKind { none, normal, uniform };

// w[i] ← float(keep·w[i] + scale·N[i]) evaluated in double, N[i] element i of fill_normal / fill_uniform(seed,
// stream, a, b) drawn over the whole tensor (kind none: N = 0, i.e. w ← float(keep·w)).
void noise_blend(float* w, int64_t n, float keep, float scale, NoiseKind kind, uint64_t seed, uint64_t stream, float a,
                 float b);

// The permutation that sorts x ascending, ties (equal bit patterns) in index order, −0 before +0: a stable LSD radix
// sort (11/11/10 bits) on order-preserving 32-bit keys. order[n] receives it.
void argsort_f32(const float* x, int64_t n, uint32_t* order);

// w[order[r]] ← float((1−eta)·w[order[r]] + eta·tq[r]) evaluated in double, for r in [0, n).
void rank_blend(float* w, int64_t n, const uint32_t* order, const double* tq, double eta);

}  // namespace undo
