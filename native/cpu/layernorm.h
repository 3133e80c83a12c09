// LayerNorm over the last dimension (GPT-2): y = (x − mean) · rstd · w + b, rstd = 1/sqrt(var(x) + eps), with
// the biased (population) variance, as torch.nn.LayerNorm.
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
#define UNDO_LAYERNORM_DECL(ns)                                                                           \
  namespace ns {                                                                                          \
  void layernorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, const float* b,       \
                         float eps, float* y, float* mean, float* rstd);                                  \
  void layernorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* mean,   \
                          const float* rstd, const float* dy, float* dx, bool accumulate_dx, float* dw,   \
                          float* db);                                                                     \
  }
UNDO_EACH_ISA(UNDO_LAYERNORM_DECL)
#undef UNDO_LAYERNORM_DECL

// b may be null (no bias); mean and rstd may be null in the forward. Backward: dx is overwritten (or added
// to when accumulate_dx); dw and db, when not null, are added to.
void layernorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, const float* b, float eps, float* y,
                       float* mean, float* rstd);
void layernorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* mean,
                        const float* rstd, const float* dy, float* dx, bool accumulate_dx, float* dw, float* db);
}  // namespace undo
