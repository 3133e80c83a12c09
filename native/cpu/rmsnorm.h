// RMSNorm over the last dimension: y = x · rstd · g, rstd = 1/sqrt(mean(x²) + eps),
// g = w (Llama) or 1 + w (Gemma, unit_offset).
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
#define UNDO_RMSNORM_DECL(ns)                                                                          \
  namespace ns {                                                                                       \
  void rmsnorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, float eps,           \
                       bool unit_offset, float* y, float* rstd);                                       \
  void rmsnorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* rstd,  \
                        bool unit_offset, const float* dy, float* dx, bool accumulate_dx, float* dw);  \
  }
UNDO_EACH_ISA(UNDO_RMSNORM_DECL)
#undef UNDO_RMSNORM_DECL

// rstd may be null in the forward. Backward: dx is overwritten (or added to when accumulate_dx); dw, when
// not null, is added to.
void rmsnorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, float eps, bool unit_offset,
                     float* y, float* rstd);
void rmsnorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* rstd,
                      bool unit_offset, const float* dy, float* dx, bool accumulate_dx, float* dw);
}  // namespace undo
