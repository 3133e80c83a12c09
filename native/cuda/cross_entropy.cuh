// Fused softmax + cross-entropy with its gradient on the GPU (twin of native/cpu/cross_entropy.cc), with the
// optional final-logit soft-capping folded in:
//   z = softcap > 0 ? softcap·tanh(raw/softcap) : raw,   loss_r = logsumexp(z_r) − z_r[target_r]
//   dlogits_r = weight_r · (softmax(z_r) − onehot(target_r)) · dz/draw
// Rows whose target is ignore_index (or whose weight is 0) get loss 0 and a zero gradient. One block per row:
// online (max, sum) pass, then the gradient pass. fp32 logits may be updated in place (dlogits == logits);
// bf16 logits are read as fp32. Targets must be in [0, vocab) on rows that are not ignored (checked by callers).
#pragma once
#include "common.cuh"

namespace undo {
namespace cuda {

// loss: [rows] per-row loss (unweighted). weights: [rows] or null (all 1). dlogits: [rows, ld] or null.
cudaError_t cross_entropy(int64_t rows, int64_t vocab, const void* logits, DType logits_type, int64_t ld,
                          const int32_t* targets, int32_t ignore_index, float softcap, const float* weights, float* loss,
                          float* dlogits, cudaStream_t s);

}  // namespace cuda
}  // namespace undo
