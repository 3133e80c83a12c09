// Fused softmax + cross-entropy with its gradient (see cross_entropy.h). Compiled once per ISA.
#include "cross_entropy.h"
#include "simd.h"

UNDO_ISA_BEGIN

static inline float capped(float x, float cap, float inv_cap) { return cap > 0.0f ? cap * undo_tanhf(x * inv_cap) : x; }

static float row_max(const float* z, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; i++) m = z[i] > m ? z[i] : m;
  return m;
}

static float row_sum_exp(const float* z, int64_t n, float m) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) s += undo_exp_neg(z[i] - m);
  return s;
}

void cross_entropy(int64_t rows, int64_t vocab, const float* logits, int64_t ld, const int32_t* targets,
                   int32_t ignore_index, float softcap, const float* weights, float* loss, float* dlogits) {
  const float inv_cap = softcap > 0.0f ? 1.0f / softcap : 0.0f;
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * vocab > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const float* z = logits + r * ld;
    float* dz = dlogits ? dlogits + r * ld : nullptr;
    const int32_t t = targets[r];
    const float w = weights ? weights[r] : 1.0f;
    if (t == ignore_index || w == 0.0f) {
      loss[r] = 0.0f;
      if (dz)
        for (int64_t i = 0; i < vocab; i++) dz[i] = 0.0f;
      continue;
    }
    // the row's max and Σ exp(z − max); the two cases in separate loops, so that the plain one stays a
    // single vector max and a single vector exp-sum (GCC keeps the tanh of a loop-invariant branch otherwise)
    float m = -INFINITY, s = 0.0f;
    if (softcap > 0.0f) {
#pragma omp simd reduction(max : m)
      for (int64_t i = 0; i < vocab; i++) {
        const float zi = softcap * undo_tanhf(z[i] * inv_cap);
        m = zi > m ? zi : m;
      }
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < vocab; i++) s += undo_exp_neg(softcap * undo_tanhf(z[i] * inv_cap) - m);
    } else {
      m = row_max(z, vocab);
      s = row_sum_exp(z, vocab, m);
    }
    const float zt = capped(z[t], softcap, inv_cap);
    // (m − z_t) + log s, not (m + log s) − z_t: both terms are ≥ 0 (s ≥ 1), so nothing cancels. The other
    // order rounds m + log s to an ulp of |m| first, which for confident rows with large logits swamps a
    // small loss (|m| = 1e4: ±5e-4 absolute; PyTorch's log_softmax form is exact there).
    loss[r] = (m - zt) + std::log(s);
    if (dz) {
      const float inv_s = w / s;
      if (softcap > 0.0f) {
        // the target's tanh exactly as the loop computes it (read before an in-place loop overwrites z)
        const float tht = undo_tanhf(z[t] * inv_cap);
#pragma omp simd
        for (int64_t i = 0; i < vocab; i++) {
          const float th = undo_tanhf(z[i] * inv_cap);
          const float p = undo_exp_neg(softcap * th - m) * inv_s;
          dz[i] = p * (1.0f - th * th);
        }
        dz[t] -= w * (1.0f - tht * tht);
      } else {
#pragma omp simd
        for (int64_t i = 0; i < vocab; i++) dz[i] = undo_exp_neg(z[i] - m) * inv_s;
        dz[t] -= w;
      }
    }
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void cross_entropy(int64_t rows, int64_t vocab, const float* logits, int64_t ld, const int32_t* targets,
                   int32_t ignore_index, float softcap, const float* weights, float* loss, float* dlogits) {
  UNDO_DISPATCH(cross_entropy, rows, vocab, logits, ld, targets, ignore_index, softcap, weights, loss, dlogits)
}
}  // namespace undo
#endif
