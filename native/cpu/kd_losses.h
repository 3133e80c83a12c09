// Distillation / unlearning losses over rows of student logits, each computing the loss and
// d(loss)/d(student logits) in one fused pass family per row: a blocked online max/sum pass that also
// stores the exponentials (every input row is read from memory once; each block is re-read from L1), an
// optional row-reduction pass for the losses whose gradient needs a row sum first (JSD, TVD, skew KL, skew
// reverse KL), then the gradient pass. fp32 math (per-block sums are carried across blocks in double), no
// rows×vocab scratch: besides the logits read and the gradient written, only per-thread rows of scratch.
// The gradient is used as scratch during the call, so it must not alias any input.
//
// Notation, per row. z = student logits, y = teacher logits, T = temperature (> 0),
//   q = softmax(z/T), p = softmax(y/T) over the valid columns [0, valid_vocab). Columns ≥ valid_vocab are
//   vocabulary padding: treated as −inf logits (probability 0) in every array, and get gradient 0.
//   g_i = ∂L/∂log q_i, and then ∂L/∂z_k = (g_k − q_k·Σ_i g_i)/T.
//
// Losses (per row; KL(a‖b) = Σ a (log a − log b); the T² factor is separate, see t2_scale):
//   fkl      KL(p‖q).                                           ∂/∂z = (q − p)/T
//   rkl      KL(q‖p).                                           ∂/∂z = q⊙(log q − log p − KL(q‖p))/T
//   jsd      L_β = JS_β/(β(1−β)), JS_β = β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q, β = `beta`.
//            Equivalently L_β = KL(p‖m)/(1−β) + KL(q‖m)/β. Since JS_β = β·KL(p‖q) + O(β²) as β → 0 and
//            (1−β)·KL(q‖p) + O((1−β)²) as β → 1, L_β is continuous on [0, 1] with L_0 = fkl and L_1 = rkl
//            exactly (those two endpoints run the fkl / rkl code). L_½ = 4·JS (the textbook JS divergence,
//            ≤ 4·ln 2). This is TRL's/Liger's generalised JSD divided by β(1−β): theirs tends to 0 at both
//            ends and jumps to FKL/RKL there; multiply by β(1−β) to get theirs back.
//            ∂/∂z = q⊙(log q − log m − KL(q‖m))/(βT). For β ≤ ½, log q − log m = −log1p(β(p − q)/q) and
//            log p − log m = that + (log p − log q); for β > ½ the mirror image. So the small side near either
//            end is computed directly and the 1/β, 1/(1−β) factors do not amplify rounding there.
//   tvd      ½·Σ|q − p|.                                         ∂/∂z = q⊙(s − Σ q s)/T, s = ½·sign(q − p)
//   skl      KL(p‖r), r = αp + (1−α)q (DistiLLM skew KL, α = `alpha`; α = 0 is fkl).
//   srkl     KL(q‖r), r = (1−α)p + αq (DistiLLM skew reverse KL; α = 0 is rkl).
//   taid     KL(p_t‖q), p_t = softmax(((1−t)·stopgrad(z) + t·y)/T), t = `t` ∈ [0, 1]. ∂/∂z = (q − p_t)/T.
//            (The adaptive schedule of t lives in the trainer: lib/train/losses.ts TaidSchedule.)
//   dkd      α·TCKD + β·NCKD (Decoupled KD; `dkd_alpha`, `dkd_beta`), with g = targets[r]:
//            TCKD = KL([p_g, 1−p_g] ‖ [q_g, 1−q_g]), NCKD = KL(p̂‖q̂), p̂/q̂ = p/q renormalised over i ≠ g.
//   deltakd  λ·CE(softmax(z), g) + (1−λ)·KL(p*‖q), p* = softmax(z*/T), z* = z_sb + (y − z_tb):
//            z_sb = student_base (the student before distillation), y = teacher (fine-tuned teacher),
//            z_tb = teacher_base. A column that is −inf in any of the three is −inf in z*. The hard-label
//            term is at temperature 1; t2_scale multiplies the KL term only.
//   ce       −log q_g (cross-entropy at temperature T).           ∂/∂z = (q − onehot(g))/T
//   maxent   KL(u‖q), u uniform over the valid columns = −log V − mean_i log q_i. ∂/∂z = (q − u)/T.
//            A −inf student logit in a valid column makes it +∞ (the gradient stays finite).
//   entropy  H(q) = −Σ q log q.                                   ∂/∂z = −q⊙(log q + H)/T
//
// Teacher given as top-k (topk_ids/topk_logprobs, k per row, for fkl rkl jsd tvd skl srkl): the logprobs
// are the teacher's log-probabilities at temperature 1 of its k ids (any order, no duplicates, ids <
// valid_vocab). The teacher is re-tempered on its buckets: P_j ∝ exp(logprob_j/T).
//   renorm   the teacher renormalised over its k ids, zero elsewhere, against the student's full q: for
//            fkl this is KL(p̃‖q) (DistillKit's default; the gradient q − p̃·1_S pushes down every other
//            id); jsd/tvd/skl/srkl likewise (the columns outside S, where p̃ = 0, enter only through the
//            student's mass there). rkl is infinite against a teacher with zeros, so for rkl both sides
//            are renormalised over the k ids: KL(q̃‖p̃), gradient zero outside them.
//   bucket   k + 1 outcomes: the k ids and a tail bucket. Teacher tail mass = 1 − Σ exp(logprob_j)
//            (clamped at 0; tempered like the other buckets, P_tail ∝ tail^(1/T), exact at T = 1); the
//            student's tail mass is its own probability outside the same k ids (summed directly, not as
//            1 − Σ, so a small tail keeps its relative precision). The divergence is taken between
//            the two (k+1)-outcome distributions (as TRL's server trainer does).
//
// Rows: mask[r] == 0 (or, for the losses that use targets, targets[r] == ignore_index) rows are skipped:
// row_loss 0 and a zero gradient row. The others are "counted". (lib/train/losses.ts also skips ignore_index
// rows for the other losses when targets are given.) A counted row whose valid student logits are all −inf
// has no distribution; its loss is NaN.
// Infinite losses are exact: fkl where the teacher has mass on a −inf student logit, rkl the other way
// round (its gradient is then NaN), maxent as above; jsd, tvd and the skew KLs (α > 0) are always finite.
// Scaling: row_loss[r] = the row's loss (times T² on the soft terms when t2_scale; Hinton's T² keeps the
// soft gradient's size independent of T). The returned loss is
//   grad_scale · Σ_r row_loss[r] / (reduction == mean ? counted : 1)
// and grad (if not null) is its exact gradient w.r.t. the student logits (rows × vocab). For a trainer
// that processes a batch in chunks, reduction = sum with grad_scale = 1/(rows counted in the whole batch)
// gives each chunk's share of the batch mean.
#pragma once
#include <cstdint>
#include "isa.h"
#include "kd_kinds.h"  // KdKind, KdTail, KdReduction, KdStatus and their names (shared with native/cuda)

namespace undo {

struct KdArgs {
  KdKind kind = KdKind::fkl;
  int64_t rows = 0, vocab = 0;
  int64_t valid_vocab = 0;  // ≤ vocab; 0 means vocab
  const float* student = nullptr;  // [rows, vocab]
  // teacher: full logits [rows, vocab], or (teacher == null) top-k ids/logprobs [rows, k]
  const float* teacher = nullptr;
  const int32_t* topk_ids = nullptr;
  const float* topk_logprobs = nullptr;
  int64_t k = 0;
  KdTail tail = KdTail::renorm;
  const float* student_base = nullptr;  // deltakd: [rows, vocab]
  const float* teacher_base = nullptr;  // deltakd: [rows, vocab]
  const int32_t* targets = nullptr;     // ce, dkd, deltakd (λ > 0): [rows]
  int32_t ignore_index = -100;
  const uint8_t* mask = nullptr;        // [rows], nonzero = counted; null = all
  float temperature = 1.0f;
  double beta = 0.5;       // jsd
  double alpha = 0.1;      // skl, srkl
  double t = 0.0;          // taid
  double lambda = 0.5;     // deltakd
  double dkd_alpha = 1.0, dkd_beta = 8.0;
  bool t2_scale = false;
  KdReduction reduction = KdReduction::mean;
  double grad_scale = 1.0;
  float* row_loss = nullptr;  // [rows] out (required)
  float* grad = nullptr;      // [rows, vocab] out, or null for the loss only
};

struct KdResult {
  double loss = 0;       // grad_scale · Σ row_loss / (mean ? counted : 1)
  int64_t counted = 0;   // rows counted
  KdStatus status = KdStatus::ok;
  int64_t bad_row = -1, bad_value = 0;  // first offending row (and its id/target) when status != ok
  const char* message = "";             // for bad_args
};

#define UNDO_KD_DECL(ns) \
  namespace ns {         \
  KdResult kd_loss(const KdArgs& a); \
  }
UNDO_EACH_ISA(UNDO_KD_DECL)
#undef UNDO_KD_DECL

KdResult kd_loss(const KdArgs& a);
bool kd_uses_targets(const KdArgs& a);

}  // namespace undo
