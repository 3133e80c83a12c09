// Token embedding lookup (times a scale: √d for Gemma, 1 for Llama) and its gradient.
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
#define UNDO_EMB_DECL(ns)                                                                                \
  namespace ns {                                                                                         \
  void embedding_forward(int64_t rows, int64_t dim, const int32_t* ids, const float* table, float scale,  \
                         float* out);                                                                    \
  void embedding_backward(int64_t rows, int64_t dim, const int32_t* ids, const float* dout, float scale,  \
                          float* dtable);                                                                \
  }
UNDO_EACH_ISA(UNDO_EMB_DECL)
#undef UNDO_EMB_DECL

// ids must be in [0, vocab) (checked by the caller). dtable is added to.
void embedding_forward(int64_t rows, int64_t dim, const int32_t* ids, const float* table, float scale, float* out);
void embedding_backward(int64_t rows, int64_t dim, const int32_t* ids, const float* dout, float scale, float* dtable);
}  // namespace undo
