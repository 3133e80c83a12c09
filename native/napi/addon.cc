// N-API glue: thin wrappers that check argument types and sizes, then call the kernels (native/cpu) or the
// Model. Heavy Model work runs on the libuv pool (Task below) and returns a Promise; the JS side keeps
// the typed arrays it passed alive through `keep`. Kernel entry points are synchronous (tests, benches).
#include <napi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "adamw.h"
#include "args.h"
#include "attention.h"
#include "cross_entropy.h"
#include "embedding.h"
#include "glu.h"
#include "isa.h"
#include "kd_args.h"
#include "kd_losses.h"
#include "matmul.h"
#include "model.h"
#include "noise.h"
#include "random.h"
#include "rmsnorm.h"
#include "layernorm.h"
#include "rope.h"

namespace {

using namespace undo_napi;  // argument helpers: args.h, kd_args.h
using undo::Model;

// ---------- ISA and threads

Napi::Value SupportedIsas(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t n = 0;
  for (auto isa : {undo::Isa::generic, undo::Isa::avx2, undo::Isa::avx512})
    if (undo::isa_supported(isa)) out.Set(n++, undo::isa_name(isa));
  return out;
}
Napi::Value GetIsa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), undo::isa_name(undo::active_isa())); }
Napi::Value BestIsa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), undo::isa_name(undo::best_isa())); }
Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  std::string name = info[0].ToString();
  undo::Isa isa;
  if (!undo::parse_isa(name.c_str(), &isa))
    throw Napi::Error::New(info.Env(), "unknown ISA '" + name + "' (expected generic, avx2 or avx512)");
  if (!undo::isa_supported(isa))
    throw Napi::Error::New(info.Env(), "ISA '" + name + "' is not supported by this CPU");
  undo::set_isa(isa);
  return info.Env().Undefined();
}
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  undo::set_num_threads((int)num(info, 0, "threads"));
  return info.Env().Undefined();
}
Napi::Value GetThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), undo::num_threads()); }

// ---------- kernels: each is registered twice (see Init): `name` runs now, `nameAsync` runs on the libuv pool
// and returns a Promise (the Napi::Function's data pointer tells which: pooled(info)). The arguments are
// checked on the JS thread either way; the typed arrays are not copied (the caller must not change them until
// the Promise settles; lib/core/native.ts documents it).

// gemm / gemmBf16 / gemmBf16Packed share the argument checks; mode 0 fp32, 1 bf16, 2 bf16 with op(B) prepacked
// (undo::Bf16Packed, the LM head's path)
// Runs `work` on the libuv pool (no model lock: the caller's own arrays); resolves with undefined. `keep`: the
// typed arrays `work` uses, held until it is done (not copied: the caller must not change them meanwhile).
class PoolTask : public Napi::AsyncWorker {
 public:
  PoolTask(Napi::Env env, std::function<void()> work, std::vector<Napi::Value> keep,
           std::shared_ptr<double> result = nullptr)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        result_(std::move(result)) {
    for (auto& v : keep)
      if (v.IsObject()) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      work_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    deferred_.Resolve(result_ ? Napi::Number::New(Env(), *result_) : Env().Undefined());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  std::shared_ptr<double> result_;
  std::vector<Napi::ObjectReference> keep_;
};

// whether this call is the pooled twin (`nameAsync`, registered with a non-null data pointer)
bool pooled(const Napi::CallbackInfo& info) { return info.Data() != nullptr; }

// `work` now (returns undefined, or the number it stores in `result`) or, when async, on the pool (returns its
// Promise of the same)
Napi::Value run_now_or_pooled(Napi::Env env, bool async, std::function<void()> work, std::vector<Napi::Value> keep,
                              std::shared_ptr<double> result = nullptr) {
  if (!async) {
    work();
    return result ? Napi::Number::New(env, *result) : env.Undefined();
  }
  auto* t = new PoolTask(env, std::move(work), std::move(keep), std::move(result));
  Napi::Promise p = t->promise();
  t->Queue();
  return p;
}

Napi::Value GemmImpl(const Napi::CallbackInfo& info, int mode, bool async) {
  const bool ta = flag(info, 0), tb = flag(info, 1);
  const int64_t M = num(info, 2, "M"), N = num(info, 3, "N"), K = num(info, 4, "K");
  const float alpha = (float)dbl(info, 5, "alpha");
  const int64_t lda = num(info, 7, "lda"), ldb = num(info, 9, "ldb"), ldc = num(info, 12, "ldc");
  const float beta = (float)dbl(info, 10, "beta");
  if (M < 0 || N < 0 || K < 0) type_error(info.Env(), "gemm: negative dimension");
  const int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
  if (lda < acols || ldb < bcols || ldc < N) type_error(info.Env(), "gemm: leading dimension too small");
  auto need = [](int64_t rows, int64_t cols, int64_t ld) { return rows == 0 || cols == 0 ? 0 : (size_t)((rows - 1) * ld + cols); };
  auto A = f32(info, 6, "A", need(arows, acols, lda));
  auto B = f32(info, 8, "B", need(brows, bcols, ldb));
  auto C = f32(info, 11, "C", need(M, N, ldc));
  const float *a = A.Data(), *b = B.Data();
  float* c = C.Data();
  return run_now_or_pooled(info.Env(), async, [=]() {
    if (mode == 2) {
      undo::Bf16Packed Bp;
      Bp.pack(tb, N, K, b, ldb);
      undo::gemm_bf16_packed(Bp, ta, M, alpha, a, lda, beta, c, ldc);
    } else if (mode == 1) {
      undo::gemm_bf16(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
    } else {
      undo::gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
    }
  }, {A, B, C});
}
Napi::Value Gemm(const Napi::CallbackInfo& info) { return GemmImpl(info, 0, pooled(info)); }
Napi::Value GemmBf16(const Napi::CallbackInfo& info) { return GemmImpl(info, 1, pooled(info)); }
Napi::Value GemmBf16Packed(const Napi::CallbackInfo& info) { return GemmImpl(info, 2, pooled(info)); }
Napi::Value Bf16Native(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), undo::bf16_native()); }

undo::AttnDims attn_dims(Napi::Object o) {
  undo::AttnDims d;
  d.B = (int64_t)field(o, "B", 0, true);
  d.Tq = (int64_t)field(o, "Tq", 0, true);
  d.Tk = (int64_t)field(o, "Tk", (double)d.Tq);
  d.Hq = (int64_t)field(o, "Hq", 0, true);
  d.Hkv = (int64_t)field(o, "Hkv", (double)d.Hq);
  d.D = (int64_t)field(o, "D", 0, true);
  d.q_offset = (int64_t)field(o, "qOffset", 0);
  d.kv_bstride = (int64_t)field(o, "kvBstride", (double)(d.Tk * d.Hkv * d.D));
  d.window = (int64_t)field(o, "window", 0);
  d.scale = (float)field(o, "scale", 1.0 / std::sqrt((double)d.D));
  d.softcap = (float)field(o, "softcap", 0);
  if (d.B <= 0 || d.Tq <= 0 || d.Tk <= 0 || d.Hq <= 0 || d.Hkv <= 0 || d.D <= 0 || d.Hq % d.Hkv)
    throw Napi::TypeError::New(o.Env(), "attention: bad dims");
  return d;
}

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  auto d = attn_dims(info[0].As<Napi::Object>());
  const size_t nq = (size_t)(d.B * d.Tq * d.Hq * d.D);
  const size_t nkv = (size_t)((d.B - 1) * d.kv_bstride + d.Tk * d.Hkv * d.D);
  auto q = f32(info, 1, "q", nq), k = f32(info, 2, "k", nkv), v = f32(info, 3, "v", nkv), out = f32(info, 4, "out", nq);
  auto lse = f32(info, 5, "lse", (size_t)(d.B * d.Hq * d.Tq), true);
  auto* k_p = k.Data();
  auto* lse_p = data(lse);
  auto* out_p = out.Data();
  auto* q_p = q.Data();
  auto* v_p = v.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::attention_forward(d, q_p, k_p, v_p, out_p, lse_p);
  }, {k, lse, out, q, v});
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  auto d = attn_dims(info[0].As<Napi::Object>());
  if (d.Tq != d.Tk || d.q_offset != 0 || d.kv_bstride != d.Tk * d.Hkv * d.D)
    type_error(info.Env(), "attentionBackward needs Tq == Tk, qOffset 0 and packed k/v");
  const size_t nq = (size_t)(d.B * d.Tq * d.Hq * d.D), nkv = (size_t)(d.B * d.Tk * d.Hkv * d.D);
  auto q = f32(info, 1, "q", nq), k = f32(info, 2, "k", nkv), v = f32(info, 3, "v", nkv);
  auto out = f32(info, 4, "out", nq), dout = f32(info, 5, "dout", nq), lse = f32(info, 6, "lse", (size_t)(d.B * d.Hq * d.Tq));
  auto dq = f32(info, 7, "dq", nq), dk = f32(info, 8, "dk", nkv), dv = f32(info, 9, "dv", nkv);
  auto* dk_p = dk.Data();
  auto* dout_p = dout.Data();
  auto* dq_p = dq.Data();
  auto* dv_p = dv.Data();
  auto* lse_p = lse.Data();
  auto* k_p = k.Data();
  auto* out_p = out.Data();
  auto* q_p = q.Data();
  auto* v_p = v.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::attention_backward(d, q_p, k_p, v_p, out_p, dout_p, lse_p, dq_p, dk_p,
                             dv_p);
  }, {dk, dout, dq, dv, k, lse, out, q, v});
}

// rmsnormForward(rows, dim, x, w, eps, unitOffset, y, rstd|null)
Napi::Value RmsnormForward(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  const size_t n = (size_t)(rows * dim);
  auto x = f32(info, 2, "x", n), w = f32(info, 3, "w", (size_t)dim), y = f32(info, 6, "y", n);
  auto rstd = f32(info, 7, "rstd", (size_t)rows, true);
  auto* rstd_p = data(rstd);
  auto* w_p = w.Data();
  auto* x_p = x.Data();
  auto* y_p = y.Data();
  const auto arg1 = (float)dbl(info, 4, "eps");
  const auto arg2 = flag(info, 5);
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::rmsnorm_forward(rows, dim, x_p, w_p, arg1, arg2, y_p, rstd_p);
  }, {rstd, w, x, y});
}
// rmsnormBackward(rows, dim, x, w, rstd, unitOffset, dy, dx, accumulate, dw|null)
Napi::Value RmsnormBackward(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  const size_t n = (size_t)(rows * dim);
  auto x = f32(info, 2, "x", n), w = f32(info, 3, "w", (size_t)dim), rstd = f32(info, 4, "rstd", (size_t)rows);
  auto dy = f32(info, 6, "dy", n), dx = f32(info, 7, "dx", n), dw = f32(info, 9, "dw", (size_t)dim, true);
  auto* dw_p = data(dw);
  auto* dx_p = dx.Data();
  auto* dy_p = dy.Data();
  auto* rstd_p = rstd.Data();
  const auto arg1 = flag(info, 5);
  const auto arg2 = flag(info, 8);
  auto* w_p = w.Data();
  auto* x_p = x.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::rmsnorm_backward(rows, dim, x_p, w_p, rstd_p, arg1, dy_p, dx_p, arg2,
                           dw_p);
  }, {dw, dx, dy, rstd, w, x});
}
// ropeApply(B, T, H, D, x, theta, posOffset, inverse)
Napi::Value RopeApply(const Napi::CallbackInfo& info) {
  const int64_t B = num(info, 0, "B"), T = num(info, 1, "T"), H = num(info, 2, "H"), D = num(info, 3, "D");
  auto x = f32(info, 4, "x", (size_t)(B * T * H * D));
  const double theta = dbl(info, 5, "theta");
  const int64_t off = num(info, 6, "posOffset");
  if (D % 2) type_error(info.Env(), "ropeApply: D must be even");
  undo::RopeParams rp;
  rp.theta = theta;
  std::vector<double> inv((size_t)(D / 2));
  undo::rope_inv_freq(rp, D, off + T, inv.data());
  std::vector<float> c((size_t)((off + T) * D / 2)), s(c.size());
  undo::rope_tables_from(inv.data(), off + T, D, c.data(), s.data());
  auto* x_p = x.Data();
  const auto arg1 = flag(info, 7);
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::rope_apply(B, T, H, D, x_p, c.data(), s.data(), off, arg1);
  }, {x});
}
undo::GluKind glu_kind(const Napi::CallbackInfo& info, size_t i) {
  std::string k = info[i].ToString();
  if (k == "swiglu") return undo::GluKind::swiglu;
  if (k == "geglu") return undo::GluKind::geglu;
  throw Napi::TypeError::New(info.Env(), "unknown GLU kind '" + k + "' (swiglu|geglu)");
}
// layernormForward(rows, dim, x, w, b|null, eps, y, mean|null, rstd|null)
Napi::Value LayernormForward(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  const size_t n = (size_t)(rows * dim);
  auto x = f32(info, 2, "x", n), w = f32(info, 3, "w", (size_t)dim), b = f32(info, 4, "b", (size_t)dim, true);
  auto y = f32(info, 6, "y", n), mean = f32(info, 7, "mean", (size_t)rows, true), rstd = f32(info, 8, "rstd", (size_t)rows, true);
  auto* b_p = data(b);
  auto* mean_p = data(mean);
  auto* rstd_p = data(rstd);
  auto* w_p = w.Data();
  auto* x_p = x.Data();
  auto* y_p = y.Data();
  const auto arg1 = (float)dbl(info, 5, "eps");
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::layernorm_forward(rows, dim, x_p, w_p, b_p, arg1, y_p, mean_p, rstd_p);
  }, {b, mean, rstd, w, x, y});
}
// layernormBackward(rows, dim, x, w, mean, rstd, dy, dx, accumulate, dw|null, db|null)
Napi::Value LayernormBackward(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  const size_t n = (size_t)(rows * dim);
  auto x = f32(info, 2, "x", n), w = f32(info, 3, "w", (size_t)dim);
  auto mean = f32(info, 4, "mean", (size_t)rows), rstd = f32(info, 5, "rstd", (size_t)rows);
  auto dy = f32(info, 6, "dy", n), dx = f32(info, 7, "dx", n);
  auto dw = f32(info, 9, "dw", (size_t)dim, true), db = f32(info, 10, "db", (size_t)dim, true);
  auto* db_p = data(db);
  auto* dw_p = data(dw);
  auto* dx_p = dx.Data();
  auto* dy_p = dy.Data();
  auto* mean_p = mean.Data();
  auto* rstd_p = rstd.Data();
  const auto arg1 = flag(info, 8);
  auto* w_p = w.Data();
  auto* x_p = x.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::layernorm_backward(rows, dim, x_p, w_p, mean_p, rstd_p, dy_p, dx_p, arg1,
                             dw_p, db_p);
  }, {db, dw, dx, dy, mean, rstd, w, x});
}
// biasAdd(rows, n, b, y) / biasGrad(rows, n, dy, db)
Napi::Value BiasAdd(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), n = num(info, 1, "n");
  auto b = f32(info, 2, "b", (size_t)n), y = f32(info, 3, "y", (size_t)(rows * n));
  auto* b_p = b.Data();
  auto* y_p = y.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::bias_add(rows, n, b_p, y_p);
  }, {b, y});
}
Napi::Value BiasGrad(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), n = num(info, 1, "n");
  auto dy = f32(info, 2, "dy", (size_t)(rows * n)), db = f32(info, 3, "db", (size_t)n);
  auto* db_p = db.Data();
  auto* dy_p = dy.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::bias_grad(rows, n, dy_p, db_p);
  }, {db, dy});
}
// {theta, scaling, factor, lowFreqFactor, highFreqFactor, originalMaxPositions} → RopeParams (lib/core/native.ts NativeRope)
undo::RopeParams rope_params(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) type_error(env, "rope must be an object");
  Napi::Object ro = v.As<Napi::Object>();
  undo::RopeParams r;
  r.theta = field(ro, "theta", 10000.0);
  const std::string t = ro.Get("scaling").IsUndefined() ? "none" : ro.Get("scaling").ToString().Utf8Value();
  if (t == "none") r.scaling = undo::RopeScaling::none;
  else if (t == "linear") r.scaling = undo::RopeScaling::linear;
  else if (t == "dynamic") r.scaling = undo::RopeScaling::dynamic;
  else if (t == "llama3") r.scaling = undo::RopeScaling::llama3;
  else type_error(env, "unknown rope scaling '" + t + "' (none|linear|dynamic|llama3)");
  r.factor = field(ro, "factor", 1.0);
  r.low_freq_factor = field(ro, "lowFreqFactor", 1.0);
  r.high_freq_factor = field(ro, "highFreqFactor", 4.0);
  r.original_max_pos = (int64_t)field(ro, "originalMaxPositions", 0);
  return r;
}
// ropeInvFreq(D, seqLen, rope) → Float64Array [D/2]
Napi::Value RopeInvFreq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t D = num(info, 0, "D"), L = num(info, 1, "seqLen");
  if (D <= 0 || D % 2) type_error(env, "ropeInvFreq: D must be positive and even");
  const undo::RopeParams r = rope_params(env, info[2]);
  Napi::Float64Array out = Napi::Float64Array::New(env, (size_t)(D / 2));
  undo::rope_inv_freq(r, D, L, out.Data());
  return out;
}
// actForward(kind, x, out) / actBackward(kind, x, dout, dx): the plain MLP activation of a GLU kind
Napi::Value ActForward(const Napi::CallbackInfo& info) {
  auto kind = glu_kind(info, 0);
  auto x = f32(info, 1, "x", 0);
  const size_t n = x.ElementLength();
  auto out = f32(info, 2, "out", n);
  auto* out_p = out.Data();
  auto* x_p = x.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::act_forward((int64_t)n, kind, x_p, out_p);
  }, {out, x});
}
Napi::Value ActBackward(const Napi::CallbackInfo& info) {
  auto kind = glu_kind(info, 0);
  auto x = f32(info, 1, "x", 0);
  const size_t n = x.ElementLength();
  auto dout = f32(info, 2, "dout", n), dx = f32(info, 3, "dx", n);
  auto* dout_p = dout.Data();
  auto* dx_p = dx.Data();
  auto* x_p = x.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::act_backward((int64_t)n, kind, x_p, dout_p, dx_p);
  }, {dout, dx, x});
}
// gluForward(kind, gate, up, out)
Napi::Value GluForward(const Napi::CallbackInfo& info) {
  auto kind = glu_kind(info, 0);
  auto gate = f32(info, 1, "gate", 0);
  const size_t n = gate.ElementLength();
  auto up = f32(info, 2, "up", n), out = f32(info, 3, "out", n);
  auto* gate_p = gate.Data();
  auto* out_p = out.Data();
  auto* up_p = up.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::glu_forward((int64_t)n, kind, gate_p, up_p, out_p);
  }, {gate, out, up});
}
// gluBackward(kind, gate, up, dout, dgate, dup)
Napi::Value GluBackward(const Napi::CallbackInfo& info) {
  auto kind = glu_kind(info, 0);
  auto gate = f32(info, 1, "gate", 0);
  const size_t n = gate.ElementLength();
  auto up = f32(info, 2, "up", n), dout = f32(info, 3, "dout", n), dg = f32(info, 4, "dgate", n), du = f32(info, 5, "dup", n);
  auto* dg_p = dg.Data();
  auto* dout_p = dout.Data();
  auto* du_p = du.Data();
  auto* gate_p = gate.Data();
  auto* up_p = up.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::glu_backward((int64_t)n, kind, gate_p, up_p, dout_p, dg_p, du_p);
  }, {dg, dout, du, gate, up});
}
// embeddingForward(rows, dim, ids, table, scale, out) / embeddingBackward(rows, dim, ids, dout, scale, dtable)
Napi::Value EmbeddingForward(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  auto ids = i32(info, 2, "ids", (size_t)rows);
  auto table = f32(info, 3, "table", 0);
  const int64_t vocab = (int64_t)table.ElementLength() / dim;
  const int32_t* idp = ids.Data();
  for (int64_t r = 0; r < rows; r++)
    if (idp[r] < 0 || idp[r] >= vocab) type_error(info.Env(), "embedding: id " + std::to_string(idp[r]) + " out of range");
  auto out = f32(info, 5, "out", (size_t)(rows * dim));
  auto* ids_p = ids.Data();
  auto* out_p = out.Data();
  auto* table_p = table.Data();
  const auto arg1 = (float)dbl(info, 4, "scale");
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::embedding_forward(rows, dim, ids_p, table_p, arg1, out_p);
  }, {ids, out, table});
}
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  auto ids = i32(info, 2, "ids", (size_t)rows);
  auto dout = f32(info, 3, "dout", (size_t)(rows * dim));
  auto dtable = f32(info, 5, "dtable", 0);
  const int64_t vocab = (int64_t)dtable.ElementLength() / dim;
  const int32_t* idp = ids.Data();
  for (int64_t r = 0; r < rows; r++)
    if (idp[r] < 0 || idp[r] >= vocab) type_error(info.Env(), "embedding: id " + std::to_string(idp[r]) + " out of range");
  auto* dout_p = dout.Data();
  auto* dtable_p = dtable.Data();
  auto* ids_p = ids.Data();
  const auto arg1 = (float)dbl(info, 4, "scale");
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::embedding_backward(rows, dim, ids_p, dout_p, arg1, dtable_p);
  }, {dout, dtable, ids});
}
// crossEntropy(rows, vocab, logits, targets, ignoreIndex, softcap, weights|null, loss, dlogits|null)
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  const int64_t rows = num(info, 0, "rows"), vocab = num(info, 1, "vocab");
  auto logits = f32(info, 2, "logits", (size_t)(rows * vocab));
  auto targets = i32(info, 3, "targets", (size_t)rows);
  const int32_t ignore = (int32_t)num(info, 4, "ignoreIndex");
  const int32_t* tp = targets.Data();
  for (int64_t r = 0; r < rows; r++)
    if (tp[r] != ignore && (tp[r] < 0 || tp[r] >= vocab))
      type_error(info.Env(), "crossEntropy: target " + std::to_string(tp[r]) + " out of range");
  auto weights = f32(info, 6, "weights", (size_t)rows, true);
  auto loss = f32(info, 7, "loss", (size_t)rows);
  auto dl = f32(info, 8, "dlogits", (size_t)(rows * vocab), true);
  auto* dl_p = data(dl);
  auto* logits_p = logits.Data();
  auto* loss_p = loss.Data();
  auto* targets_p = targets.Data();
  auto* weights_p = data(weights);
  const auto arg1 = (float)dbl(info, 5, "softcap");
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::cross_entropy(rows, vocab, logits_p, vocab, targets_p, ignore, arg1,
                        weights_p, loss_p, dl_p);
  }, {dl, logits, loss, targets, weights});
}
// kdLoss(name, {rows, vocab, validVocab?, student, teacher?, topkIds?, topkLogprobs?, k?, tail?, studentBase?,
//   teacherBase?, targets?, ignoreIndex?, mask?, temperature?, beta?, alpha?, t?, lambda?, dkdAlpha?, dkdBeta?,
//   t2Scale?, reduction?, gradScale?, perRow, grad?}) → {loss, count}. Distillation losses (kd_losses.h);
// perRow [rows] and grad [rows·vocab] (or null: loss only) are written. lib/train/losses.ts is the friendly API.
// The scalar loss parameters shared by kdLoss and headKd (names as in lib/train/losses.ts).
void kd_params(Napi::Object o, undo::KdArgs* a) {
  a->temperature = (float)field(o, "temperature", 1.0);
  a->beta = field(o, "beta", 0.5);
  a->alpha = field(o, "alpha", 0.1);
  a->t = field(o, "t", 0.0);
  a->lambda = field(o, "lambda", 0.5);
  a->dkd_alpha = field(o, "dkdAlpha", 1.0);
  a->dkd_beta = field(o, "dkdBeta", 8.0);
  a->t2_scale = o.Get("t2Scale").ToBoolean().Value();
}

// kdLoss's arguments, checked on the JS thread; returns the options object (which holds the typed arrays).
Napi::Object kd_loss_args(const Napi::CallbackInfo& info, undo::KdArgs* ap) {
  Napi::Env env = info.Env();
  undo::KdArgs& a = *ap;
  Napi::Object o = kd_loss_options(info, &a);
  // a typed array field of exactly `len` elements (or absent when !required)
  auto arr = [&](const char* f, napi_typedarray_type type, size_t len, bool required) -> void* {
    return typed_field(env, o, "kdLoss", f, type, len, required);
  };
  const size_t n = (size_t)(a.rows * a.vocab), R = (size_t)a.rows;
  a.student = (const float*)arr("student", napi_float32_array, n, true);
  a.teacher = (const float*)arr("teacher", napi_float32_array, n, false);
  a.k = (int64_t)field(o, "k", 0);
  if (a.k < 0) type_error(env, "kdLoss: k must be >= 0");
  a.topk_ids = (const int32_t*)arr("topkIds", napi_int32_array, R * (size_t)a.k, false);
  a.topk_logprobs = (const float*)arr("topkLogprobs", napi_float32_array, R * (size_t)a.k, false);
  kd_tail_option(env, o, &a.tail);
  a.student_base = (const float*)arr("studentBase", napi_float32_array, n, false);
  a.teacher_base = (const float*)arr("teacherBase", napi_float32_array, n, false);
  a.targets = (const int32_t*)arr("targets", napi_int32_array, R, false);
  a.ignore_index = (int32_t)field(o, "ignoreIndex", -100);
  a.mask = (const uint8_t*)arr("mask", napi_uint8_array, R, false);
  kd_params(o, &a);
  kd_reduction_option(env, o, &a.reduction);
  a.grad_scale = field(o, "gradScale", 1.0);
  a.row_loss = (float*)arr("perRow", napi_float32_array, R, true);
  a.grad = (float*)arr("grad", napi_float32_array, n, false);
  return o;
}

// {loss, count}, or the kernel's complaint (a bad id or target names its row) thrown as a JS exception.
Napi::Value kd_result(Napi::Env env, const undo::KdResult& r) {
  if (r.status != undo::KdStatus::ok) {
    throw_kd_row_status(env, r.status, r.bad_row, r.bad_value);
    throw Napi::TypeError::New(env, std::string("kdLoss: ") + r.message);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("loss", Napi::Number::New(env, r.loss));
  out.Set("count", Napi::Number::New(env, (double)r.counted));
  return out;
}

Napi::Value KdLoss(const Napi::CallbackInfo& info) {
  undo::KdArgs a;
  kd_loss_args(info, &a);
  return kd_result(info.Env(), undo::kd_loss(a));
}

// kdLossAsync(name, opts) → Promise<{loss, count}>: kdLoss on the libuv pool. The arguments are checked here,
// synchronously (a bad one throws); the typed arrays are not copied: the options object is kept alive until the
// promise settles, and the caller must not change the arrays before then.
class KdLossTask : public Napi::AsyncWorker {
 public:
  KdLossTask(Napi::Env env, const undo::KdArgs& a, Napi::Object keep)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), args_(a), keep_(Napi::Persistent(keep)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      result_ = undo::kd_loss(args_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    try {
      deferred_.Resolve(kd_result(Env(), result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  undo::KdArgs args_;
  undo::KdResult result_{};
  Napi::ObjectReference keep_;
};

Napi::Value KdLossAsync(const Napi::CallbackInfo& info) {
  undo::KdArgs a;
  Napi::Object o = kd_loss_args(info, &a);
  auto* t = new KdLossTask(info.Env(), a, o);
  Napi::Promise p = t->promise();
  t->Queue();
  return p;
}
// adamwUpdate(param, grad, m, v, {lr, beta1, beta2, eps, weightDecay, gradScale, step})
Napi::Value AdamwUpdate(const Napi::CallbackInfo& info) {
  auto p = f32(info, 0, "param", 0);
  const size_t n = p.ElementLength();
  auto g = f32(info, 1, "grad", n), m = f32(info, 2, "m", n), v = f32(info, 3, "v", n);
  Napi::Object o = info[4].As<Napi::Object>();
  undo::AdamWParams h{(float)field(o, "lr", 0, true), (float)field(o, "beta1", 0.9), (float)field(o, "beta2", 0.999),
                      (float)field(o, "eps", 1e-8), (float)field(o, "weightDecay", 0.0), (float)field(o, "gradScale", 1.0),
                      (int64_t)field(o, "step", 0, true)};
  auto* g_p = g.Data();
  auto* m_p = m.Data();
  auto* p_p = p.Data();
  auto* v_p = v.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    undo::adamw_update((int64_t)n, p_p, g_p, m_p, v_p, h);
  }, {g, m, p, v});
}
Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  auto x = f32(info, 0, "x", 0);
  const float* xp = x.Data();
  const int64_t n = (int64_t)x.ElementLength();
  auto result = std::make_shared<double>(0);
  return run_now_or_pooled(info.Env(), pooled(info), [=]() { *result = undo::sum_squares(n, xp); }, {x}, result);
}
// fillRandom(out, seed, streamName, 'normal'|'uniform', a, b)
Napi::Value FillRandom(const Napi::CallbackInfo& info) {
  auto x = f32(info, 0, "out", 0);
  const uint64_t seed = (uint64_t)num(info, 1, "seed");
  std::string stream = info[2].ToString(), kind = info[3].ToString();
  const float a = (float)dbl(info, 4, "a"), b = (float)dbl(info, 5, "b");
  if (kind != "normal" && kind != "uniform") type_error(info.Env(), "fillRandom: kind must be normal or uniform");
  float* xp = x.Data();
  const int64_t n = (int64_t)x.ElementLength();
  const uint64_t st = undo::stream_of(stream.c_str());
  const bool normal = kind == "normal";
  return run_now_or_pooled(info.Env(), pooled(info), [=]() {
    if (normal) undo::fill_normal(xp, n, seed, st, a, b);
    else undo::fill_uniform(xp, n, seed, st, a, b);
  }, {x});
}
// noiseBlend(w, keep, scale, kind 'none'|'normal'|'uniform', seed, streamName, a, b): UNDO's noise on one tensor in
// place, w ← keep·w + scale·N in double (noise.h), N drawn as fillRandom(seed, streamName, kind, a, b) would
Napi::Value NoiseBlend(const Napi::CallbackInfo& info) {
  auto w = f32(info, 0, "w", 0);
  const float keep = (float)dbl(info, 1, "keep"), scale = (float)dbl(info, 2, "scale");
  const std::string kind = info[3].ToString();
  undo::NoiseKind k;
  if (kind == "none") k = undo::NoiseKind::none;
  else if (kind == "normal") k = undo::NoiseKind::normal;
  else if (kind == "uniform") k = undo::NoiseKind::uniform;
  else type_error(info.Env(), "noiseBlend: kind must be none, normal or uniform");
  const uint64_t seed = (uint64_t)num(info, 4, "seed");
  const uint64_t st = undo::stream_of(info[5].ToString().Utf8Value().c_str());
  const float a = (float)dbl(info, 6, "a"), b = (float)dbl(info, 7, "b");
  float* wp = w.Data();
  const int64_t n = (int64_t)w.ElementLength();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() { undo::noise_blend(wp, n, keep, scale, k, seed, st, a, b); }, {w});
}
// argsortF32(x, order: Uint32Array [n]): the stable ascending order of x (noise.h)
Napi::Value ArgsortF32(const Napi::CallbackInfo& info) {
  auto x = f32(info, 0, "x", 0);
  const size_t n = x.ElementLength();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    type_error(info.Env(), "argsortF32: order must be a Uint32Array");
  auto order = info[1].As<Napi::Uint32Array>();
  if (order.ElementLength() != n)
    type_error(info.Env(), "argsortF32: order holds " + std::to_string(order.ElementLength()) + " elements, needs " + std::to_string(n));
  const float* xp = x.Data();
  uint32_t* op = order.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() { undo::argsort_f32(xp, (int64_t)n, op); }, {x, order});
}
// rankBlend(w, order: Uint32Array [n], tq: Float64Array [n], eta): w[order[r]] ← (1−eta)·w[order[r]] + eta·tq[r]
Napi::Value RankBlend(const Napi::CallbackInfo& info) {
  auto w = f32(info, 0, "w", 0);
  const size_t n = w.ElementLength();
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
    type_error(info.Env(), "rankBlend: order must be a Uint32Array");
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    type_error(info.Env(), "rankBlend: tq must be a Float64Array");
  auto order = info[1].As<Napi::Uint32Array>();
  auto tq = info[2].As<Napi::Float64Array>();
  if (order.ElementLength() != n || tq.ElementLength() != n)
    type_error(info.Env(), "rankBlend: order and tq must hold " + std::to_string(n) + " elements (w's length)");
  const uint32_t* op = order.Data();
  for (size_t r = 0; r < n; r++)
    if (op[r] >= n) type_error(info.Env(), "rankBlend: order[" + std::to_string(r) + "] = " + std::to_string(op[r]) + " out of range");
  const double eta = dbl(info, 3, "eta");
  float* wp = w.Data();
  const double* tp = tq.Data();
  return run_now_or_pooled(info.Env(), pooled(info), [=]() { undo::rank_blend(wp, (int64_t)n, op, tp, eta); }, {w, order, tq});
}

// ---------- asynchronous tasks

// Runs `work` on the libuv pool under the model's mutex; resolves with `done()` on the JS thread.
class Task : public Napi::AsyncWorker {
 public:
  Task(Napi::Env env, std::shared_ptr<Model> model, std::function<void()> work,
       std::function<Napi::Value(Napi::Env)> done, std::vector<Napi::Value> keep)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), model_(std::move(model)),
        work_(std::move(work)), done_(std::move(done)) {
    for (auto& v : keep)
      if (v.IsObject()) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      std::lock_guard<std::mutex> lock(model_->mutex());
      work_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    try {
      deferred_.Resolve(done_ ? done_(Env()) : Env().Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Model> model_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
  std::vector<Napi::ObjectReference> keep_;
};

Napi::Promise run_task(Napi::Env env, std::shared_ptr<Model> m, std::function<void()> work,
                       std::function<Napi::Value(Napi::Env)> done, std::vector<Napi::Value> keep) {
  auto* t = new Task(env, std::move(m), std::move(work), std::move(done), std::move(keep));
  Napi::Promise p = t->promise();
  t->Queue();
  return p;
}

// ---------- Model

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("tensors", &ModelWrap::Tensors), InstanceMethod("params", &ModelWrap::Params),
                        InstanceMethod("grads", &ModelWrap::Grads), InstanceMethod("adamM", &ModelWrap::AdamM),
                        InstanceMethod("adamV", &ModelWrap::AdamV), InstanceMethod("adamStep", &ModelWrap::AdamStep),
                        InstanceMethod("setAdamStep", &ModelWrap::SetAdamStep), InstanceMethod("init", &ModelWrap::Init_),
                        InstanceMethod("setFrozen", &ModelWrap::SetFrozen), InstanceMethod("setDecay", &ModelWrap::SetDecay),
                        InstanceMethod("setBf16", &ModelWrap::SetBf16), InstanceMethod("getBf16", &ModelWrap::GetBf16),
                        InstanceMethod("headChunkRows", &ModelWrap::HeadChunkRows),
                        InstanceMethod("forward", &ModelWrap::Forward), InstanceMethod("headLoss", &ModelWrap::HeadLoss),
                        InstanceMethod("backward", &ModelWrap::Backward), InstanceMethod("trainStep", &ModelWrap::TrainStep),
                        InstanceMethod("logits", &ModelWrap::Logits), InstanceMethod("headGrad", &ModelWrap::HeadGrad), InstanceMethod("headGradRows", &ModelWrap::HeadGradRows), InstanceMethod("headKd", &ModelWrap::HeadKd), InstanceMethod("hidden", &ModelWrap::Hidden),
                        InstanceMethod("zeroGradSync", &ModelWrap::ZeroGrad), InstanceMethod("gradNormSync", &ModelWrap::GradNorm),
                        InstanceMethod("zeroGrad", &ModelWrap::ZeroGradAsync), InstanceMethod("gradNorm", &ModelWrap::GradNormAsync),
                        InstanceMethod("adamw", &ModelWrap::Adamw), InstanceMethod("cacheBegin", &ModelWrap::CacheBegin),
                        InstanceMethod("cacheStep", &ModelWrap::CacheStep)});
  }

  ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) type_error(env, "NativeModel(config): config must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    // the decoder spec lib/models/config.ts derives from a config and its architecture's row
    undo::ModelConfig c;
    auto flag_of = [&](const char* name) { return o.Get(name).ToBoolean().Value(); };
    auto choice = [&](const char* name, std::initializer_list<const char*> names) {
      const std::string v = o.Get(name).ToString();
      int i = 0;
      for (const char* n : names) {
        if (v == n) return i;
        i++;
      }
      type_error(env, std::string("NativeModel: unknown ") + name + " '" + v + "'");
      return 0;
    };
    auto rope_of = [&](Napi::Value v, undo::RopeParams* r) { *r = rope_params(env, v); };
    c.vocab = (int64_t)field(o, "vocabSize", 0, true);
    c.d = (int64_t)field(o, "hiddenSize", 0, true);
    c.n_layers = (int64_t)field(o, "numLayers", 0, true);
    c.n_heads = (int64_t)field(o, "numHeads", 0, true);
    c.n_kv_heads = (int64_t)field(o, "numKvHeads", 0, true);
    c.head_dim = (int64_t)field(o, "headDim", 0, true);
    c.ffn = (int64_t)field(o, "intermediateSize", 0, true);
    c.max_pos = (int64_t)field(o, "maxPositions", 2048);
    c.norm_eps = (float)field(o, "normEps", 1e-5);
    c.norm = choice("norm", {"rms", "layer"}) ? undo::NormKind::layer : undo::NormKind::rms;
    c.norm_unit_offset = flag_of("normUnitOffset");
    c.sandwich_norms = flag_of("sandwichNorms");
    c.qk_norm = flag_of("qkNorm");
    c.qkv_bias = flag_of("qkvBias");
    c.o_bias = flag_of("oBias");
    c.mlp_bias = flag_of("mlpBias");
    c.mlp = choice("mlp", {"gated", "plain"}) ? undo::MlpKind::plain : undo::MlpKind::gated;
    c.act = choice("activation", {"silu", "gelu_tanh"}) ? undo::GluKind::geglu : undo::GluKind::swiglu;
    c.embed_scale = (float)field(o, "embedScale", 1.0);
    c.learned_pos = flag_of("learnedPositions");
    rope_of(o.Get("rope"), &c.rope);
    if (!o.Get("ropeLocal").IsUndefined() && !o.Get("ropeLocal").IsNull()) {
      c.has_rope_local = true;
      rope_of(o.Get("ropeLocal"), &c.rope_local);
    } else {
      c.rope_local = c.rope;
    }
    c.tied = flag_of("tieWordEmbeddings");
    c.attn_softcap = (float)field(o, "attnSoftcap", 0);
    c.final_softcap = (float)field(o, "finalSoftcap", 0);
    c.attn_scale = (float)field(o, "attnScale", 0);
    c.sliding_window = (int64_t)field(o, "slidingWindow", 0);
    Napi::Value sl = o.Get("slidingLayers");
    if (sl.IsArray()) {
      Napi::Array arr = sl.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); i++) c.sliding_layers.push_back(arr.Get(i).ToBoolean().Value() ? 1 : 0);
    }
    try {
      model_ = std::make_shared<Model>(c);
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    Napi::MemoryManagement::AdjustExternalMemory(env, model_->num_params() * 8);
  }

 public:
  std::shared_ptr<Model> model() const { return model_; }

 private:
  std::shared_ptr<Model> model_;

  Napi::Value Tensors(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array arr = Napi::Array::New(env);
    uint32_t i = 0;
    for (const auto& t : model_->tensors()) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", t.name);
      Napi::Array shape = Napi::Array::New(env);
      for (uint32_t j = 0; j < t.shape.size(); j++) shape.Set(j, Napi::Number::New(env, (double)t.shape[j]));
      o.Set("shape", shape);
      o.Set("offset", Napi::Number::New(env, (double)t.offset));
      o.Set("numel", Napi::Number::New(env, (double)t.numel));
      o.Set("frozen", Napi::Boolean::New(env, t.frozen));
      arr.Set(i++, o);
    }
    return arr;
  }
  Napi::Value view(Napi::Env env, float* p) {
    const size_t n = (size_t)model_->num_params();
    // External buffer over the model's own memory. The buffer holds a reference to the Model, so a view
    // that outlives the JS Model object (or this wrapper) never points at freed memory.
    auto* owner = new std::shared_ptr<Model>(model_);
    auto ab = Napi::ArrayBuffer::New(
        env, p, n * sizeof(float), [](Napi::Env, void*, std::shared_ptr<Model>* o) { delete o; }, owner);
    return Napi::Float32Array::New(env, n, ab, 0);
  }
  Napi::Value Params(const Napi::CallbackInfo& info) { return view(info.Env(), model_->params()); }
  Napi::Value Grads(const Napi::CallbackInfo& info) { return view(info.Env(), model_->grads()); }
  Napi::Value AdamM(const Napi::CallbackInfo& info) { return view(info.Env(), model_->adam_m()); }
  Napi::Value AdamV(const Napi::CallbackInfo& info) { return view(info.Env(), model_->adam_v()); }
  Napi::Value AdamStep(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)model_->adam_step()); }
  Napi::Value SetAdamStep(const Napi::CallbackInfo& info) {
    model_->set_adam_step(num(info, 0, "step"));
    return info.Env().Undefined();
  }
  Napi::Value Init_(const Napi::CallbackInfo& info) {
    const uint64_t seed = (uint64_t)num(info, 0, "seed");
    std::string scheme = info[1].ToString();
    const float std = (float)dbl(info, 2, "std");
    try {
      std::lock_guard<std::mutex> lock(model_->mutex());
      model_->init(seed, scheme, std);
    } catch (const std::exception& e) {
      throw Napi::Error::New(info.Env(), e.what());
    }
    return info.Env().Undefined();
  }
  int tensor_arg(const Napi::CallbackInfo& info) {
    const int64_t i = num(info, 0, "tensor index");
    if (i < 0 || i >= (int64_t)model_->tensors().size()) type_error(info.Env(), "tensor index out of range");
    return (int)i;
  }
  Napi::Value SetFrozen(const Napi::CallbackInfo& info) {
    model_->set_frozen(tensor_arg(info), flag(info, 1));
    return info.Env().Undefined();
  }
  // setBf16(on): the matmul precision of later work (waits for running work on this model)
  Napi::Value SetBf16(const Napi::CallbackInfo& info) {
    const bool on = flag(info, 0);
    std::lock_guard<std::mutex> lock(model_->mutex());
    model_->set_bf16(on);
    return info.Env().Undefined();
  }
  Napi::Value GetBf16(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), model_->bf16()); }
  // rows per fused-head chunk for a forward of N rows (Model::head_chunk at its default 256)
  Napi::Value HeadChunkRows(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int64Value() < 1)
      throw Napi::TypeError::New(info.Env(), "headChunkRows(N): N must be a positive number of rows");
    const int64_t N = info[0].As<Napi::Number>().Int64Value();
    return Napi::Number::New(info.Env(), (double)model_->head_chunk(256, N));
  }
  Napi::Value SetDecay(const Napi::CallbackInfo& info) {
    model_->set_decay(tensor_arg(info), flag(info, 1));
    return info.Env().Undefined();
  }
  // forward(ids Int32Array, B, T) → Promise<void>
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    const int64_t B = num(info, 1, "B"), T = num(info, 2, "T");
    if (B <= 0 || T <= 0) type_error(info.Env(), "forward: B and T must be positive");
    auto ids = i32(info, 0, "ids", (size_t)(B * T));
    auto m = model_;
    // copied now (B·T ints): the caller may reuse ids as soon as forward returns its Promise
    auto v = std::make_shared<std::vector<int32_t>>(ids.Data(), ids.Data() + (size_t)(B * T));
    return run_task(info.Env(), m, [m, v, B, T] { m->forward(v->data(), B, T); }, nullptr, {});
  }
  struct LossOut {
    double loss = 0, counted = 0;
  };
  static Napi::Value loss_value(Napi::Env env, const LossOut& r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("loss", Napi::Number::New(env, r.loss));
    o.Set("counted", Napi::Number::New(env, r.counted));
    return o;
  }
  // headLoss(targets, weights|null, ignoreIndex, normalizer, backward, rowLoss|null) → Promise<{loss, counted}>
  Napi::Value HeadLoss(const Napi::CallbackInfo& info) {
    const size_t N = (size_t)model_->rows();
    auto targets = i32(info, 0, "targets", N);
    auto weights = f32(info, 1, "weights", N, true);
    const int32_t ignore = (int32_t)num(info, 2, "ignoreIndex");
    const double normalizer = dbl(info, 3, "normalizer");
    const bool bwd = flag(info, 4);
    auto row_loss = f32(info, 5, "rowLoss", N, true);
    auto m = model_;
    auto r = std::make_shared<LossOut>();
    // targets and weights are copied now (the caller may reuse them at once); rowLoss is written when it settles
    auto tv = std::make_shared<std::vector<int32_t>>(targets.Data(), targets.Data() + targets.ElementLength());
    auto wv = std::make_shared<std::vector<float>>();
    if (!weights.IsEmpty()) wv->assign(weights.Data(), weights.Data() + weights.ElementLength());
    float* rp = data(row_loss);
    const size_t tlen = tv->size(), wlen = wv->size(), rlen = rp ? row_loss.ElementLength() : 0;
    const bool has_w = !weights.IsEmpty();
    return run_task(
        info.Env(), m,
        [=] {
          const int32_t* tp = tv->data();
          const float* wp = has_w ? wv->data() : nullptr;
          // re-checked under the lock: a forward queued before this call may have changed the row count
          const size_t n = (size_t)m->rows();
          if (tlen < n || (wp && wlen < n) || (rp && rlen < n))
            throw std::invalid_argument("headLoss: targets/weights/rowLoss hold fewer than the " + std::to_string(n) +
                                        " rows of the last forward");
          r->loss = m->head_loss(tp, wp, ignore, normalizer, bwd, rp, &r->counted);
        },
        [r](Napi::Env env) { return loss_value(env, *r); }, {info[5]});
  }
  std::vector<const float*> hidden_grads(const Napi::CallbackInfo& info, size_t i, std::vector<Napi::Value>* keep) {
    std::vector<const float*> hg;
    if (info[i].IsArray()) {
      Napi::Array a = info[i].As<Napi::Array>();
      const size_t need = (size_t)(model_->rows() * model_->config().d);
      for (uint32_t l = 0; l < a.Length(); l++) {
        Napi::Value v = a.Get(l);
        if (v.IsNull() || v.IsUndefined()) {
          hg.push_back(nullptr);
          continue;
        }
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
            v.As<Napi::Float32Array>().ElementLength() < need)
          type_error(info.Env(), "hiddenGrads[" + std::to_string(l) + "] must be a Float32Array of rows×hidden");
        hg.push_back(v.As<Napi::Float32Array>().Data());
        keep->push_back(v);
      }
    }
    return hg;
  }
  // backward(useHead, hiddenGrads: (Float32Array|null)[] | null) → Promise<void>
  Napi::Value Backward(const Napi::CallbackInfo& info) {
    const bool use_head = flag(info, 0);
    std::vector<Napi::Value> keep;
    auto hg = hidden_grads(info, 1, &keep);
    size_t min_len = SIZE_MAX;
    for (auto& v : keep) min_len = std::min(min_len, v.As<Napi::Float32Array>().ElementLength());
    auto m = model_;
    return run_task(
        info.Env(), m,
        [m, use_head, hg, min_len] {
          // re-checked under the lock: a forward queued before this call may have changed the row count
          if (min_len != SIZE_MAX && min_len < (size_t)(m->rows() * m->config().d))
            throw std::invalid_argument("backward: hiddenGrads hold fewer than rows×hidden of the last forward");
          m->backward(use_head, hg);
        },
        nullptr, keep);
  }
  // trainStep(ids, targets, B, T, weights|null, normalizer, ignoreIndex) → Promise<{loss, counted}>:
  // forward, fused head + cross-entropy, backward, in one task. Gradients accumulate.
  Napi::Value TrainStep(const Napi::CallbackInfo& info) {
    const int64_t B = num(info, 2, "B"), T = num(info, 3, "T");
    if (B <= 0 || T <= 0) type_error(info.Env(), "trainStep: B and T must be positive");
    const size_t N = (size_t)(B * T);
    auto ids = i32(info, 0, "ids", N);
    auto targets = i32(info, 1, "targets", N);
    auto weights = f32(info, 4, "weights", N, true);
    const double normalizer = dbl(info, 5, "normalizer");
    const int32_t ignore = (int32_t)num(info, 6, "ignoreIndex");
    auto m = model_;
    auto r = std::make_shared<LossOut>();
    // ids, targets and weights are copied now: the caller may reuse them as soon as the Promise is returned
    auto iv = std::make_shared<std::vector<int32_t>>(ids.Data(), ids.Data() + N);
    auto tv = std::make_shared<std::vector<int32_t>>(targets.Data(), targets.Data() + N);
    auto wv = std::make_shared<std::vector<float>>();
    if (!weights.IsEmpty()) wv->assign(weights.Data(), weights.Data() + N);
    const bool has_w = !weights.IsEmpty();
    return run_task(
        info.Env(), m,
        [=] {
          m->forward(iv->data(), B, T);
          r->loss = m->head_loss(tv->data(), has_w ? wv->data() : nullptr, ignore, normalizer, true, nullptr, &r->counted);
          m->backward(true, {});
        },
        [r](Napi::Env env) { return loss_value(env, *r); }, {});
  }
  // headKd(name, teacher: NativeModel | null, {temperature, beta, alpha, t, lambda, dkdAlpha, dkdBeta, t2Scale,
  // scale, targets?, ignoreIndex?}) → Promise<{loss, counted}>: the fused distillation head. For every chunk of
  // rows of the last forward, the student's logits and (when given) the teacher's logits for the same rows —
  // the teacher must have run forward on the same ids — go through kd_loss; the gradient flows back through
  // the LM head. Never holds rows×vocab logits of either model. loss = scale · mean over counted rows.
  Napi::Value HeadKd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const std::string name = info[0].ToString();
    undo::KdArgs a;
    if (!undo::kd_parse_kind(name.c_str(), &a.kind)) type_error(env, "headKd: unknown loss '" + name + "'");
    std::shared_ptr<Model> teacher;
    if (info[1].IsObject()) {
      Napi::Object to = info[1].As<Napi::Object>();
      ModelWrap* tw = nullptr;
      napi_status st = napi_unwrap(env, to, reinterpret_cast<void**>(&tw));
      if (st != napi_ok || !tw) type_error(env, "headKd: teacher must be a NativeModel");
      teacher = tw->model();
      if (teacher.get() == model_.get()) type_error(env, "headKd: the teacher must be another model");
      if (teacher->config().vocab != model_->config().vocab) type_error(env, "headKd: teacher and student vocabularies differ");
    }
    Napi::Object o = info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
    kd_params(o, &a);
    a.ignore_index = (int32_t)field(o, "ignoreIndex", -100);
    a.reduction = undo::KdReduction::sum;
    const double scale = field(o, "scale", 1.0);
    Napi::Value tv = o.Get("targets");
    int32_t* targets = nullptr;
    std::vector<Napi::Value> keep;
    if (!tv.IsUndefined() && !tv.IsNull()) {
      if (!tv.IsTypedArray() || tv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        type_error(env, "headKd: targets must be an Int32Array");
      targets = tv.As<Napi::Int32Array>().Data();
      keep.push_back(tv);
      if (tv.As<Napi::Int32Array>().ElementLength() < (size_t)model_->rows()) type_error(env, "headKd: targets shorter than the rows of the last forward");
    }
    // a top-k teacher (a store's records, or an online teacher's selection) in place of a teacher model:
    // topkIds Int32Array [rows·k], topkLogprobs Float32Array [rows·k], k, tail
    const int32_t* topk_ids = nullptr;
    const float* topk_lps = nullptr;
    Napi::Value tki = o.Get("topkIds");
    if (!tki.IsUndefined() && !tki.IsNull()) {
      if (teacher) type_error(env, "headKd: give a teacher model or a top-k teacher, not both");
      a.k = (int64_t)field(o, "k", 0, true);
      if (a.k < 1) type_error(env, "headKd: k must be >= 1");
      const size_t need = (size_t)(model_->rows() * a.k);
      if (!tki.IsTypedArray() || tki.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array || tki.As<Napi::Int32Array>().ElementLength() < need)
        type_error(env, "headKd: topkIds must be an Int32Array of rows·k of the last forward");
      Napi::Value tkl = o.Get("topkLogprobs");
      if (!tkl.IsTypedArray() || tkl.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array || tkl.As<Napi::Float32Array>().ElementLength() < need)
        type_error(env, "headKd: topkLogprobs must be a Float32Array of rows·k of the last forward");
      topk_ids = tki.As<Napi::Int32Array>().Data();
      topk_lps = tkl.As<Napi::Float32Array>().Data();
      undo_napi::kd_tail_option(env, o, &a.tail);
      keep.push_back(tki);
      keep.push_back(tkl);
    }
    if (undo::kd_uses_teacher(a.kind) && !teacher && !topk_ids) type_error(env, "headKd: '" + name + "' needs a teacher model or a top-k teacher");
    auto m = model_;
    auto r = std::make_shared<LossOut>();
    return run_task(
        env, m,
        [m, teacher, a, scale, targets, topk_ids, topk_lps, r] {
          std::unique_lock<std::mutex> tlock;
          if (teacher) tlock = std::unique_lock<std::mutex>(teacher->mutex());
          const int64_t N = m->rows(), V = m->config().vocab;
          if (teacher && teacher->rows() != N) throw std::invalid_argument("headKd: the teacher's last forward has another number of rows");
          int64_t counted = N;
          if (targets) {
            counted = 0;
            for (int64_t i = 0; i < N; i++) counted += targets[i] != a.ignore_index;
          }
          const double gscale = counted > 0 ? scale / (double)counted : 0.0;
          std::vector<float> tz;
          // the teacher's head is packed once for all the chunks on the bf16 path (no-op otherwise)
          std::unique_ptr<undo::Model::HeadPack> tpack;
          if (teacher) tpack.reset(new undo::Model::HeadPack(*teacher, false, m->head_chunk(256, N) < N));
          double total = m->head_custom(
              [&](int64_t row0, int64_t n, const float* z, float* dz, float* loss) {
                undo::KdArgs c = a;
                c.rows = n;
                c.vocab = V;
                c.student = z;
                if (teacher) {
                  tz.resize((size_t)(n * V));
                  teacher->logits_range(row0, n, tz.data());
                  c.teacher = tz.data();
                } else if (topk_ids) {
                  c.topk_ids = topk_ids + row0 * a.k;
                  c.topk_logprobs = topk_lps + row0 * a.k;
                }
                if (targets) c.targets = targets + row0;
                c.row_loss = loss;
                c.grad = dz;
                c.grad_scale = gscale;
                undo::KdResult kr = undo::kd_loss(c);
                if (kr.status != undo::KdStatus::ok)
                  throw std::invalid_argument(std::string("headKd: ") + (kr.message && *kr.message ? kr.message : "bad input") +
                                              (kr.bad_row >= 0 ? " at row " + std::to_string(row0 + kr.bad_row) : std::string()));
              },
              true, nullptr);
          r->loss = total * gscale;
          r->counted = (double)counted;
        },
        [r](Napi::Env e) { return loss_value(e, *r); }, keep);
  }
  // headGrad(dlogits Float32Array [rows, V]) → Promise<void>: d(loss)/d(capped logits) computed by the caller
  // for every row of the last forward; the head turns it into d(final hidden) for backward(true, ...) and
  // accumulates the LM-head gradient. For losses written in JS over small vocabularies.
  Napi::Value HeadGrad(const Napi::CallbackInfo& info) {
    auto m = model_;
    auto g = f32(info, 0, "dlogits", 0);
    float* gp = g.Data();
    const size_t len = g.ElementLength();
    return run_task(
        info.Env(), m,
        [m, gp, len] {
          const int64_t V = m->config().vocab;
          if (len < (size_t)(m->rows() * V)) throw std::invalid_argument("headGrad: dlogits must hold rows×vocab of the last forward");
          m->head_custom(
              [gp, V](int64_t row0, int64_t n, const float*, float* dz, float* loss) {
                std::memcpy(dz, gp + row0 * V, sizeof(float) * (size_t)(n * V));
                for (int64_t i = 0; i < n; i++) loss[i] = 0.0f;
              },
              true, nullptr);
        },
        nullptr, {info[0]});
  }
  // headGradRows(row0, dlogits Float32Array [n, V]) → Promise<void>: headGrad for rows [row0, row0 + n) of the
  // last forward only (n = its length / V), so a logit loss can run in row chunks; give every row before backward.
  Napi::Value HeadGradRows(const Napi::CallbackInfo& info) {
    auto m = model_;
    const double r0 = dbl(info, 0, "row0");
    auto g = f32(info, 1, "dlogits", 0);
    float* gp = g.Data();
    const size_t len = g.ElementLength();
    return run_task(
        info.Env(), m,
        [m, gp, len, r0] {
          const int64_t V = m->config().vocab;
          if (!(r0 >= 0) || r0 != (double)(int64_t)r0) throw std::invalid_argument("headGradRows: row0 must be a non-negative integer");
          if (len % (size_t)V != 0) throw std::invalid_argument("headGradRows: dlogits must hold whole rows of the vocabulary");
          m->head_grad_rows((int64_t)r0, (int64_t)(len / (size_t)V), gp);
        },
        nullptr, {info[1]});
  }
  // logits(rows: Int32Array|null, out?: Float32Array) → Promise<Float32Array [n, V]> for the rows of the last
  // forward. With `out` (a caller's buffer reused across calls) the logits are written into it and the promise
  // resolves with out (or its first n·V elements): no new external memory per call.
  Napi::Value Logits(const Napi::CallbackInfo& info) {
    auto m = model_;
    const bool all = info[0].IsNull() || info[0].IsUndefined();
    std::vector<int64_t> rows;
    if (!all) {
      auto r = i32(info, 0, "rows", 0);
      for (size_t i = 0; i < r.ElementLength(); i++) rows.push_back(r.Data()[i]);
    }
    const size_t V = (size_t)m->config().vocab;
    auto out = std::make_shared<std::vector<float>>();
    std::shared_ptr<Napi::ObjectReference> into;
    float* dst = nullptr;
    size_t dst_len = 0;
    if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) {
      Napi::Float32Array o = f32(info, 1, "out", 0);
      into = std::make_shared<Napi::ObjectReference>(Napi::Persistent(o.As<Napi::Object>()));
      dst = o.Data();
      dst_len = o.ElementLength();
    }
    auto n_out = std::make_shared<size_t>(0);
    return run_task(
        info.Env(), m,
        [m, all, rows, V, out, dst, dst_len, n_out] {
          // sized under the model's lock, from the forward that actually ran before this task. An empty
          // selection must not reach Model::logits, which reads a null selection as "all rows".
          const size_t n = (all ? (size_t)m->rows() : rows.size()) * V;
          *n_out = n;
          if (dst && dst_len < n) throw std::invalid_argument("logits: out holds " + std::to_string(dst_len) + " floats, rows × vocab is " + std::to_string(n));
          float* o = dst;
          if (!o) {
            out->resize(n);
            o = out->data();
          }
          if (all) m->logits(nullptr, 0, o);
          else if (!rows.empty()) m->logits(rows.data(), (int64_t)rows.size(), o);
        },
        [out, into, n_out, dst_len](Napi::Env env) -> Napi::Value {
          if (into) {
            Napi::Float32Array a = into->Value().As<Napi::Float32Array>();
            if (*n_out == dst_len) return a;
            return Napi::Float32Array::New(env, *n_out, a.ArrayBuffer(), a.ByteOffset());
          }
          auto a = Napi::Float32Array::New(env, out->size());
          // an empty result: memcpy's pointers may not be null even for 0 bytes (UBSan)
          if (!out->empty()) std::memcpy(a.Data(), out->data(), out->size() * sizeof(float));
          return a;
        },
        {});
  }
  // hidden(l) → Float32Array copy [rows, d] of layer l's output from the last forward
  Napi::Value Hidden(const Napi::CallbackInfo& info) {
    const int64_t l = num(info, 0, "layer");
    std::lock_guard<std::mutex> lock(model_->mutex());
    const float* h;
    try {
      h = model_->hidden(l);
    } catch (const std::exception& e) {
      throw Napi::Error::New(info.Env(), e.what());
    }
    const size_t n = (size_t)(model_->rows() * model_->config().d);
    auto a = Napi::Float32Array::New(info.Env(), n);
    if (n) std::memcpy(a.Data(), h, n * sizeof(float));
    return a;
  }
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(model_->mutex());
    model_->zero_grad();
    return info.Env().Undefined();
  }
  Napi::Value GradNorm(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(model_->mutex());
    return Napi::Number::New(info.Env(), model_->grad_norm());
  }
  // zeroGrad() / gradNorm() → Promise: the O(parameters) passes on the pool, after the model's queued work
  Napi::Value ZeroGradAsync(const Napi::CallbackInfo& info) {
    auto m = model_;
    return run_task(info.Env(), m, [m] { m->zero_grad(); }, nullptr, {});
  }
  Napi::Value GradNormAsync(const Napi::CallbackInfo& info) {
    auto m = model_;
    auto r = std::make_shared<double>(0);
    return run_task(info.Env(), m, [m, r] { *r = m->grad_norm(); }, [r](Napi::Env env) { return Napi::Number::New(env, *r); }, {});
  }
  // adamw({lr, beta1, beta2, eps, weightDecay, gradScale}) → Promise<void>
  Napi::Value Adamw(const Napi::CallbackInfo& info) {
    Napi::Object o = info[0].As<Napi::Object>();
    undo::AdamWParams h{(float)field(o, "lr", 0, true), (float)field(o, "beta1", 0.9), (float)field(o, "beta2", 0.999),
                        (float)field(o, "eps", 1e-8), (float)field(o, "weightDecay", 0.0),
                        (float)field(o, "gradScale", 1.0), 0};
    auto m = model_;
    return run_task(info.Env(), m, [m, h] { m->adamw(h); }, nullptr, {});
  }
  Napi::Value CacheBegin(const Napi::CallbackInfo& info) {
    const int64_t B = num(info, 0, "B"), cap = num(info, 1, "capacity");
    std::lock_guard<std::mutex> lock(model_->mutex());
    try {
      model_->cache_begin(B, cap);
    } catch (const std::exception& e) {
      throw Napi::Error::New(info.Env(), e.what());
    }
    return info.Env().Undefined();
  }
  // cacheStep(ids Int32Array [B·T], T) → Promise<Float32Array [B, V]> (logits of each row's last position)
  Napi::Value CacheStep(const Napi::CallbackInfo& info) {
    const int64_t T = num(info, 1, "T");
    auto m = model_;
    auto ids = i32(info, 0, "ids", 0);
    if (T <= 0 || ids.ElementLength() % (size_t)T) type_error(info.Env(), "cacheStep: ids length must be B·T");
    const int64_t B = (int64_t)ids.ElementLength() / T;
    const size_t V = (size_t)m->config().vocab;
    auto out = std::make_shared<std::vector<float>>((size_t)B * V);
    int32_t* p = ids.Data();
    return run_task(
        info.Env(), m,
        [m, p, B, T, out] {
          // checked under the model's lock: cache_step reads cache_batch()·T ids and writes cache_batch() rows
          if (m->cache_batch() != 0 && m->cache_batch() != B)
            throw std::invalid_argument("cacheStep: ids hold " + std::to_string(B) + " rows of " + std::to_string(T) +
                                        " tokens but cacheBegin set a batch of " + std::to_string(m->cache_batch()) +
                                        " rows");
          m->cache_step(p, T, out->data());
        },
        [out](Napi::Env env) {
          auto a = Napi::Float32Array::New(env, out->size());
          // an empty result: memcpy's pointers may not be null even for 0 bytes (UBSan)
          if (!out->empty()) std::memcpy(a.Data(), out->data(), out->size() * sizeof(float));
          return a;
        },
        {info[0]});
  }
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("supportedIsas", Napi::Function::New(env, SupportedIsas));
  exports.Set("getIsa", Napi::Function::New(env, GetIsa));
  exports.Set("bestIsa", Napi::Function::New(env, BestIsa));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("getThreads", Napi::Function::New(env, GetThreads));
  // a kernel and its pooled twin `nameAsync` (pooled(info) tells them apart)
  auto both = [&](const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(env, fn, name));
    const std::string pooled_name = std::string(name) + "Async";
    static int pooled_tag = 1;
    exports.Set(pooled_name, Napi::Function::New(env, fn, pooled_name, &pooled_tag));
  };
  both("gemm", Gemm);
  both("gemmBf16", GemmBf16);
  both("gemmBf16Packed", GemmBf16Packed);
  exports.Set("bf16Native", Napi::Function::New(env, Bf16Native));
  both("attentionForward", AttentionForward);
  both("attentionBackward", AttentionBackward);
  both("rmsnormForward", RmsnormForward);
  both("rmsnormBackward", RmsnormBackward);
  both("layernormForward", LayernormForward);
  both("layernormBackward", LayernormBackward);
  both("biasAdd", BiasAdd);
  both("biasGrad", BiasGrad);
  exports.Set("ropeInvFreq", Napi::Function::New(env, RopeInvFreq));
  both("actForward", ActForward);
  both("actBackward", ActBackward);
  both("ropeApply", RopeApply);
  both("gluForward", GluForward);
  both("gluBackward", GluBackward);
  both("embeddingForward", EmbeddingForward);
  both("embeddingBackward", EmbeddingBackward);
  both("crossEntropy", CrossEntropy);
  exports.Set("kdLoss", Napi::Function::New(env, KdLoss));
  exports.Set("kdLossAsync", Napi::Function::New(env, KdLossAsync));
  both("adamwUpdate", AdamwUpdate);
  both("sumSquares", SumSquares);
  both("fillRandom", FillRandom);
  both("noiseBlend", NoiseBlend);
  both("argsortF32", ArgsortF32);
  both("rankBlend", RankBlend);
  exports.Set("NativeModel", ModelWrap::Init(env));
  return exports;
}

}  // namespace

NODE_API_MODULE(undo_native, Init)
