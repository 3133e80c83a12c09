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

// cos_table / sin_table: [max_pos, D/2], entry (p, i) = cos/sin(p · theta^(−2i/D)).
void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, float* x, const float* cos_table,
                const float* sin_table, int64_t pos_offset, bool inverse);
void rope_tables(int64_t max_pos, int64_t D, double theta, float* cos_table, float* sin_table);
}  // namespace undo
