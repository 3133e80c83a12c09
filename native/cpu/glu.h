// MLP activations. Gated: out = act(gate) ⊙ up, with act = SiLU (SwiGLU, Llama) or tanh-GELU (GeGLU, Gemma).
// Plain (GPT-2's MLP): out = act(x), with the act of the same kind (act_forward / act_backward).
#pragma once
#include <cstdint>
#include "isa.h"

namespace undo {
enum class GluKind : int { swiglu = 0, geglu = 1 };

#define UNDO_GLU_DECL(ns)                                                                               \
  namespace ns {                                                                                        \
  void glu_forward(int64_t n, GluKind kind, const float* gate, const float* up, float* out);             \
  void glu_backward(int64_t n, GluKind kind, const float* gate, const float* up, const float* dout,      \
                    float* dgate, float* dup);                                                          \
  void act_forward(int64_t n, GluKind kind, const float* x, float* out);                                \
  void act_backward(int64_t n, GluKind kind, const float* x, const float* dout, float* dx);             \
  }
UNDO_EACH_ISA(UNDO_GLU_DECL)
#undef UNDO_GLU_DECL

void glu_forward(int64_t n, GluKind kind, const float* gate, const float* up, float* out);
// dgate and dup are overwritten.
void glu_backward(int64_t n, GluKind kind, const float* gate, const float* up, const float* dout, float* dgate,
                  float* dup);
// dx is overwritten; dx may alias dout.
void act_forward(int64_t n, GluKind kind, const float* x, float* out);
void act_backward(int64_t n, GluKind kind, const float* x, const float* dout, float* dx);
}  // namespace undo
