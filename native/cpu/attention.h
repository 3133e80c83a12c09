// Causal multi-head attention, flash style: tiled over queries and keys with an online softmax; the forward
// saves only the per-row logsumexp, the backward recomputes the probabilities. No T×T matrix is stored.
//
// Layouts (row-major, the natural output of the projections, no transposes):
//   q, out, dq, dout: [B, Tq, Hq, D]
//   k, v, dk, dv:     [B, Tk, Hkv, D] with batch stride kv_bstride elements (Tk·Hkv·D when packed; a KV
//                     cache passes its capacity·Hkv·D)
//   lse:              [B, Hq, Tq]  (natural-log logsumexp of the (soft-capped, scaled) scores)
// Query row i sits at absolute position q_offset + i and may see keys j with j <= q_offset + i and, when
// window > 0, q_offset + i − j < window. GQA: query head h reads kv head h / (Hq / Hkv).
// Score s = scale · q·k; with softcap > 0, s = softcap · tanh(s / softcap).
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
struct AttnDims {
  int64_t B, Tq, Tk, Hq, Hkv, D;
  int64_t q_offset;    // absolute position of query row 0 (0 in training)
  int64_t kv_bstride;  // elements between batches in k/v
  int64_t window;      // sliding window (0 = none)
  float scale;
  float softcap;       // 0 = none
};

#define UNDO_ATTN_DECL(ns)                                                                              \
  namespace ns {                                                                                        \
  void attention_forward(const AttnDims& d, const float* q, const float* k, const float* v, float* out, \
                         float* lse);                                                                   \
  void attention_backward(const AttnDims& d, const float* q, const float* k, const float* v,            \
                          const float* out, const float* dout, const float* lse, float* dq, float* dk,  \
                          float* dv);                                                                   \
  }
UNDO_EACH_ISA(UNDO_ATTN_DECL)
#undef UNDO_ATTN_DECL

// Forward: lse may be null (inference). Backward requires Tq == Tk, q_offset == 0, packed kv
// (kv_bstride == Tk·Hkv·D); dq, dk, dv are overwritten.
void attention_forward(const AttnDims& d, const float* q, const float* k, const float* v, float* out, float* lse);
void attention_backward(const AttnDims& d, const float* q, const float* k, const float* v, const float* out,
                        const float* dout, const float* lse, float* dq, float* dk, float* dv);
}  // namespace undo
