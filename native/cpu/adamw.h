// AdamW with decoupled weight decay (PyTorch semantics), and the squared L2 norm used for global-norm
// clipping. The gradient is multiplied by grad_scale first (clipping and accumulation averaging).
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  int64_t step;  // 1-based step count after this update (bias correction)
};

#define UNDO_ADAMW_DECL(ns)                                                                      \
  namespace ns {                                                                                 \
  void adamw_update(int64_t n, float* param, const float* grad, float* m, float* v,              \
                    const AdamWParams& p);                                                       \
  double sum_squares(int64_t n, const float* x);                                                 \
  }
UNDO_EACH_ISA(UNDO_ADAMW_DECL)
#undef UNDO_ADAMW_DECL

void adamw_update(int64_t n, float* param, const float* grad, float* m, float* v, const AdamWParams& p);
double sum_squares(int64_t n, const float* x);
}  // namespace undo
