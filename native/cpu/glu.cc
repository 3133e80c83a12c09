// SwiGLU / GeGLU and the plain SiLU / tanh-GELU, forward and backward (see glu.h). Compiled once per ISA.
#include "glu.h"
#include "simd.h"

UNDO_ISA_BEGIN

// σ(g) from e = exp(−|g|) ≤ 1, so the exp never overflows and the loop vectorises.
static inline float sigmoid(float g) {
  const float e = undo_exp_neg(-std::fabs(g));
  const float r = 1.0f / (1.0f + e);
  return g >= 0.0f ? r : e * r;
}

static const float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
static const float kGeluA = 0.044715f;

// The two activations and their derivatives, once each; the gated and the plain forms below only combine them.
static inline float silu(float g) { return g * sigmoid(g); }
static inline float dsilu(float g) {
  const float sg = sigmoid(g);
  return sg * (1.0f + g * (1.0f - sg));
}
static inline float gelu_t(float g) { return undo_tanhf(kGeluC * (g + kGeluA * g * g * g)); }
static inline float gelu(float g, float t) { return 0.5f * g * (1.0f + t); }
static inline float dgelu(float g, float t) {
  return 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * kGeluA * g * g);
}

// Each loop runs over n in chunks of 16384, threaded when there is more than one chunk.
void glu_forward(int64_t n, GluKind kind, const float* gate, const float* up, float* out) {
  const int64_t chunk = 16384, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    if (kind == GluKind::swiglu) {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) out[i] = silu(gate[i]) * up[i];
    } else {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) out[i] = gelu(gate[i], gelu_t(gate[i])) * up[i];
    }
  }
}

void glu_backward(int64_t n, GluKind kind, const float* gate, const float* up, const float* dout, float* dgate,
                  float* dup) {
  const int64_t chunk = 16384, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    if (kind == GluKind::swiglu) {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) {
        const float g = gate[i], d = dout[i];
        dup[i] = d * silu(g);
        dgate[i] = d * up[i] * dsilu(g);
      }
    } else {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) {
        const float g = gate[i], t = gelu_t(g), d = dout[i];
        dup[i] = d * gelu(g, t);
        dgate[i] = d * up[i] * dgelu(g, t);
      }
    }
  }
}

void act_forward(int64_t n, GluKind kind, const float* x, float* out) {
  const int64_t chunk = 16384, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    if (kind == GluKind::swiglu) {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) out[i] = silu(x[i]);
    } else {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) out[i] = gelu(x[i], gelu_t(x[i]));
    }
  }
}

void act_backward(int64_t n, GluKind kind, const float* x, const float* dout, float* dx) {
  const int64_t chunk = 16384, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    const int64_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
    if (kind == GluKind::swiglu) {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) dx[i] = dout[i] * dsilu(x[i]);
    } else {
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) dx[i] = dout[i] * dgelu(x[i], gelu_t(x[i]));
    }
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void glu_forward(int64_t n, GluKind kind, const float* gate, const float* up, float* out) {
  UNDO_DISPATCH(glu_forward, n, kind, gate, up, out)
}
void glu_backward(int64_t n, GluKind kind, const float* gate, const float* up, const float* dout, float* dgate,
                  float* dup) {
  UNDO_DISPATCH(glu_backward, n, kind, gate, up, dout, dgate, dup)
}
void act_forward(int64_t n, GluKind kind, const float* x, float* out) { UNDO_DISPATCH(act_forward, n, kind, x, out) }
void act_backward(int64_t n, GluKind kind, const float* x, const float* dout, float* dx) {
  UNDO_DISPATCH(act_backward, n, kind, x, dout, dx)
}
}  // namespace undo
#endif
