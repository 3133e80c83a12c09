// The parts of kdLoss(name, options) that the CPU addon (native/napi/addon.cc) and the CUDA addon
// (native/cuda/napi/addon.cc) read and report the same way. Header-only; the messages are part of the API.
#pragma once
#include <cstdint>
#include <string>

#include "../cpu/kd_kinds.h"
#include "args.h"

namespace undo_napi {

// The loss named by argument 0 and, from the options object (argument 1, returned), rows, vocab and validVocab,
// into a (undo::KdArgs or undo::cuda::KdCudaArgs).
template <typename Args>
Napi::Object kd_loss_options(const Napi::CallbackInfo& info, Args* a) {
  Napi::Env env = info.Env();
  const std::string name = info[0].ToString();
  if (!info[1].IsObject()) type_error(env, "kdLoss: options must be an object");
  Napi::Object o = info[1].As<Napi::Object>();
  if (!undo::kd_parse_kind(name.c_str(), &a->kind)) type_error(env, "kdLoss: unknown loss '" + name + "'");
  a->rows = (int64_t)field(o, "rows", 0, true);
  a->vocab = (int64_t)field(o, "vocab", 0, true);
  a->valid_vocab = (int64_t)field(o, "validVocab", 0);
  if (a->rows < 0 || a->vocab <= 0) type_error(env, "kdLoss: rows must be >= 0 and vocab > 0");
  return o;
}

// options.<f>, one of two names (n0 → v0, n1 → v1) into *out, which is left as it is when the field is absent.
template <typename E>
void kd_choice_option(Napi::Env env, Napi::Object o, const char* f, const char* n0, E v0, const char* n1, E v1,
                      E* out) {
  Napi::Value v = o.Get(f);
  if (v.IsUndefined() || v.IsNull()) return;
  const std::string s = v.ToString();
  if (s == n0) *out = v0;
  else if (s == n1) *out = v1;
  else type_error(env, std::string("kdLoss: ") + f + " must be '" + n0 + "' or '" + n1 + "'");
}
inline void kd_tail_option(Napi::Env env, Napi::Object o, undo::KdTail* tail) {
  kd_choice_option(env, o, "tail", "renorm", undo::KdTail::renorm, "bucket", undo::KdTail::bucket, tail);
}
inline void kd_reduction_option(Napi::Env env, Napi::Object o, undo::KdReduction* reduction) {
  kd_choice_option(env, o, "reduction", "mean", undo::KdReduction::mean, "sum", undo::KdReduction::sum, reduction);
}

// Throws the RangeError of a per-row status (a top-k id out of range or repeated, a target out of range) at `row`
// with the offending `value`; returns for the other statuses, which the caller reports.
inline void throw_kd_row_status(Napi::Env env, undo::KdStatus status, int64_t row, int64_t value) {
  switch (status) {
    case undo::KdStatus::bad_id:
      throw Napi::RangeError::New(env, "kdLoss: row " + std::to_string(row) + ": top-k id " + std::to_string(value) +
                                           " is outside [0, vocab)");
    case undo::KdStatus::duplicate_id:
      throw Napi::RangeError::New(env, "kdLoss: row " + std::to_string(row) + ": top-k id " + std::to_string(value) +
                                           " appears twice");
    case undo::KdStatus::bad_target:
      throw Napi::RangeError::New(env, "kdLoss: row " + std::to_string(row) + ": target " + std::to_string(value) +
                                           " is outside [0, vocab)");
    default: return;
  }
}

}  // namespace undo_napi
