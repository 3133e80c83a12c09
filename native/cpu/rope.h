// Rotary position embedding, Hugging Face "rotate_half" convention: for each head the pairs are
// (x[i], x[i + D/2]), rotated by angle pos · theta^(−2i/D). Applied in place to x [rows = B·T, H, D];
// row r has position pos_offset + (r mod T). inverse = true rotates by −angle (the backward).
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
#define UNDO_ROPE_DECL(ns)                                                                           \
  namespace ns {                                                                                     \
  void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, float* x, const float* cos_table,      \
                  const float* sin_table, int64_t pos_offset, bool inverse);                         \
  }
UNDO_EACH_ISA(UNDO_ROPE_DECL)
#undef UNDO_ROPE_DECL

// The frequencies of one RoPE, with Hugging Face's rope scalings (modeling_rope_utils):
//   default  inv_freq_i = theta^(−2i/D)
//   linear   inv_freq_i / factor                          (position interpolation)
//   dynamic  default with theta' = theta·(factor·L/L0 − (factor − 1))^(D/(D−2)) once the sequence length
//            L exceeds L0 = original_max_pos (NTK-aware; L ≤ L0 leaves theta unchanged)
//   llama3   wavelength λ_i = 2π/inv_freq_i: λ > L0/low_freq_factor → inv_freq/factor; λ < L0/high_freq_factor
//            → unchanged; between: (1 − s)·inv_freq/factor + s·inv_freq, s = (L0/λ − low)/(high − low)
enum class RopeScaling : int { none = 0, linear = 1, dynamic = 2, llama3 = 3 };
struct RopeParams {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::none;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_pos = 0;
};
// inv_freq [D/2] in double for a sequence of seq_len positions (seq_len matters only for dynamic).
void rope_inv_freq(const RopeParams& p, int64_t D, int64_t seq_len, double* inv_freq);
// Tables [n_pos, D/2] from the frequencies; like HF, inv_freq is rounded to fp32 and the angle p·inv_freq is
// formed in fp32.
void rope_tables_from(const double* inv_freq, int64_t n_pos, int64_t D, float* cos_table, float* sin_table);

// cos_table / sin_table: [positions, D/2], entry (p, i) = cos/sin(p · inv_freq_i) (rope_tables_from).
void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, float* x, const float* cos_table,
                const float* sin_table, int64_t pos_offset, bool inverse);
}  // namespace undo
