// The KD / unlearning loss kinds, options and statuses (see kd_losses.h for the maths), and their names: shared
// by the CPU kernels (kd_losses.h) and the CUDA ones (native/cuda/kd_losses.cuh), so both number and name the
// losses the same way. Plain C++ without ISA macros (nvcc compiles it too).
//
// kd_losses.h is included by the per-ISA translation units, so the helpers here are `static inline` (isa.h: no
// weak symbols that the linker could merge across ISAs).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace undo {

enum class KdKind : int32_t { fkl = 0, rkl, jsd, tvd, skl, srkl, taid, dkd, deltakd, ce, maxent, entropy, count_ };
enum class KdTail : int32_t { renorm = 0, bucket = 1 };
enum class KdReduction : int32_t { mean = 0, sum = 1 };
enum class KdStatus : int32_t {
  ok = 0,
  bad_id,        // a top-k id < 0 or ≥ valid_vocab (bad_row, bad_value = the id)
  duplicate_id,  // a top-k id repeated within a row (bad_row, bad_value = the id)
  bad_target,    // a target outside [0, valid_vocab) on a counted row (bad_row, bad_value = the target)
  bad_args,      // inconsistent arguments (missing arrays, T ≤ 0, parameters out of range, ...)
};

// "fkl", "rkl", ... (the names of lib/train/losses.ts); "?" for a value out of range.
static inline const char* kd_kind_name(KdKind k) {
  static const char* const kNames[] = {"fkl",  "rkl", "jsd",     "tvd", "skl",    "srkl",
                                       "taid", "dkd", "deltakd", "ce",  "maxent", "entropy"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == (size_t)KdKind::count_, "one name per KdKind");
  const int i = (int)k;
  return i >= 0 && i < (int)KdKind::count_ ? kNames[i] : "?";
}

static inline bool kd_parse_kind(const char* name, KdKind* out) {
  for (int i = 0; i < (int)KdKind::count_; i++)
    if (std::strcmp(name, kd_kind_name((KdKind)i)) == 0) {
      *out = (KdKind)i;
      return true;
    }
  return false;
}

// Whether the loss compares against a teacher (all but ce, maxent, entropy).
static inline bool kd_uses_teacher(KdKind k) { return k != KdKind::ce && k != KdKind::maxent && k != KdKind::entropy; }

// Whether the loss takes a top-k teacher (the divergences between two distributions).
static inline bool kd_supports_topk(KdKind k) {
  return k == KdKind::fkl || k == KdKind::rkl || k == KdKind::jsd || k == KdKind::tvd || k == KdKind::skl ||
         k == KdKind::srkl;
}

}  // namespace undo
