// Fused softmax + cross-entropy over rows of logits, writing d(loss)/d(logits) in the same pass family
// (online max/sum, then the gradient), with optional final-logit soft-capping folded in:
//   z = softcap > 0 ? softcap·tanh(raw/softcap) : raw,   loss_r = logsumexp(z_r) − z_r[target_r]
//   dlogits_r = weight_r · (softmax(z_r) − onehot(target_r)) · dz/draw
// Rows whose target equals ignore_index (or whose weight is 0) get loss 0 and a zero gradient.
// dlogits may alias logits (computed in place) or be null (loss only).
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
#define UNDO_XENT_DECL(ns)                                                                                   \
  namespace ns {                                                                                             \
  void cross_entropy(int64_t rows, int64_t vocab, const float* logits, int64_t ld, const int32_t* targets,    \
                     int32_t ignore_index, float softcap, const float* weights, float* loss, float* dlogits);  \
  }
UNDO_EACH_ISA(UNDO_XENT_DECL)
#undef UNDO_XENT_DECL

// loss: [rows] per-row loss (unweighted). weights: [rows] or null (all 1).
void cross_entropy(int64_t rows, int64_t vocab, const float* logits, int64_t ld, const int32_t* targets,
                   int32_t ignore_index, float softcap, const float* weights, float* loss, float* dlogits);
}  // namespace undo
