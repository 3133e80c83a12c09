// Distillation / unlearning losses on the GPU: the twins of native/cpu/kd_losses.cc, with the same definitions,
// argument semantics, row skipping, scaling and error statuses (see native/cpu/kd_losses.h for the maths).
//
// Kernels: one block per row, fp32 math (row reductions and the top-k bucket algebra in double), logits fp32 or
// bf16 (read as fp32), gradient fp32. Per row: an online (max, sum) pass over the student (and the teacher), then
// a pass that writes the gradient and accumulates the loss, plus a third pass for the losses whose gradient needs a
// row sum first (rkl, jsd, tvd, skl, srkl, entropy). Nothing of size rows × vocab besides the inputs and the
// gradient; the top-k ids of a row live in a shared-memory bitmap (vocab bits).
//
// Implemented: fkl rkl jsd tvd skl srkl taid ce maxent entropy with full teacher logits (or none), and fkl rkl jsd
// tvd skl srkl with a top-k teacher, both tails (renorm, bucket). Not yet: dkd, deltakd (kd_check_args says so).
#pragma once
#include "../cpu/kd_kinds.h"
#include "common.cuh"

namespace undo {
namespace cuda {

// The CPU's kinds, options, statuses and names (native/cpu/kd_kinds.h), also reachable as undo::cuda::*.
using undo::KdKind;
using undo::KdReduction;
using undo::KdStatus;
using undo::KdTail;
using undo::kd_kind_name;
using undo::kd_parse_kind;
using undo::kd_supports_topk;
using undo::kd_uses_teacher;

struct KdCudaArgs {
  KdKind kind = KdKind::fkl;
  int64_t rows = 0, vocab = 0;
  int64_t valid_vocab = 0;  // ≤ vocab; 0 means vocab
  const void* student = nullptr;  // [rows, vocab] of student_type
  DType student_type = DType::f32;
  // teacher: full logits [rows, vocab] (of teacher_type), or (teacher == null) top-k ids/logprobs [rows, k]
  const void* teacher = nullptr;
  DType teacher_type = DType::f32;
  const int32_t* topk_ids = nullptr;
  const float* topk_logprobs = nullptr;
  int64_t k = 0;
  KdTail tail = KdTail::renorm;
  const int32_t* targets = nullptr;  // ce: [rows]
  int32_t ignore_index = -100;
  const uint8_t* mask = nullptr;  // [rows], nonzero = counted; null = all
  float temperature = 1.0f;
  double beta = 0.5;   // jsd
  double alpha = 0.1;  // skl, srkl
  double t = 0.0;      // taid
  bool t2_scale = false;
  KdReduction reduction = KdReduction::mean;
  double grad_scale = 1.0;
  float* row_loss = nullptr;  // [rows] out (required)
  float* grad = nullptr;      // [rows, vocab] out, or null for the loss only; must not alias an input
  void* work = nullptr;       // kd_work_bytes(rows) bytes of device memory
};

struct KdCudaResult {
  double loss = 0;      // grad_scale · Σ row_loss / (mean ? counted : 1)
  int64_t counted = 0;  // rows counted
  KdStatus status = KdStatus::ok;
  int64_t bad_row = -1, bad_value = 0;  // first offending row (a bad target first, as the CPU checks those first)
};

bool kd_uses_targets(KdKind k);  // ce only (dkd and deltakd are not on CUDA yet)

size_t kd_work_bytes(int64_t rows);
// The CPU's bad_args checks (same messages), plus the kinds not yet on CUDA; nullptr when the arguments are fine.
const char* kd_check_args(const KdCudaArgs& a);
// Enqueues the loss (row count, the per-row kernel, the total). cudaErrorInvalidValue when kd_check_args fails or
// a top-k row needs more shared memory than the device has (vocab bits + ~44 bytes per id).
cudaError_t kd_loss(const KdCudaArgs& a, cudaStream_t s);
// Waits for the stream and reads the total, the count and the first error back.
cudaError_t kd_result(const KdCudaArgs& a, KdCudaResult* out, cudaStream_t s);

}  // namespace cuda
}  // namespace undo
