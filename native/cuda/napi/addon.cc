// N-API glue of the CUDA addon (undo_cuda.node): thin, synchronous wrappers over native/cuda that take host typed
// arrays, copy them to the device, run the kernel, and copy the outputs back. They have the same signatures as the
// CPU addon's kernel functions (native/napi/addon.cc), so a parity test calls both the same way; a few take an
// extra trailing options object ({bf16: true}: logits are rounded to bf16 on the host and read as bf16 on the GPU).
//
// Loading this module does not touch CUDA. deviceCount()/deviceInfo() catch every runtime error (no driver, no
// device, a device this build has no kernel image for) and report 0 and the reason; the kernel functions throw a
// JS Error naming the CUDA error instead of aborting.
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../../napi/args.h"
#include "../../napi/kd_args.h"
#include "adamw.cuh"
#include "cross_entropy.cuh"
#include "device.cuh"
#include "kd_losses.cuh"
#include "matmul.cuh"
#include "random.cuh"
#include "rmsnorm.cuh"

namespace {

namespace uc = undo::cuda;
using namespace undo_napi;  // argument helpers, as the CPU addon's: native/napi/args.h, kd_args.h

void check(Napi::Env env, cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  std::string msg = std::string("undo_cuda: ") + what + ": " + uc::error_string(e);
  const char* gl = uc::gemm_last_error();
  if (gl && *gl && e == cudaErrorUnknown) msg += std::string(" (") + gl + ")";
  throw Napi::Error::New(env, msg);
}

// Throws unless a device answers (cached after the first success).
void require_device(Napi::Env env) {
  static bool ok = false;
  if (ok) return;
  std::string why;
  if (uc::device_count(&why) <= 0) throw Napi::Error::New(env, "undo_cuda: no CUDA device (" + why + ")");
  ok = true;
}

// A device allocation freed on scope exit (plain cudaMalloc; never managed memory).
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  void alloc(Napi::Env env, size_t bytes) {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    bytes_ = bytes;
    if (bytes) check(env, cudaMalloc(&p_, bytes), "cudaMalloc");
  }
  void upload(Napi::Env env, const void* host, size_t bytes) {
    alloc(env, bytes);
    if (bytes) check(env, cudaMemcpy(p_, host, bytes, cudaMemcpyHostToDevice), "copy to device");
  }
  void download(Napi::Env env, void* host, size_t bytes) const {
    if (bytes) check(env, cudaMemcpy(host, p_, bytes, cudaMemcpyDeviceToHost), "copy to host");
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// ---------- bf16 logits

// fp32 → bf16, round to nearest even (NaN stays a quiet NaN)
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
// Uploads n floats as fp32 or as bf16.
void upload_logits(Napi::Env env, DevBuf& d, const float* h, size_t n, bool bf16) {
  if (!bf16) return d.upload(env, h, n * sizeof(float));
  std::vector<uint16_t> b(n);
  for (size_t i = 0; i < n; i++) b[i] = to_bf16(h[i]);
  d.upload(env, b.data(), n * sizeof(uint16_t));
}

// ---------- device discovery

Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  std::string why;
  return Napi::Number::New(info.Env(), uc::device_count(&why));
}

Napi::Value DeviceInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uc::DeviceInfo d = uc::device_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", Napi::Number::New(env, d.count));
  o.Set("reason", Napi::String::New(env, d.reason));
  o.Set("driverVersion", Napi::Number::New(env, d.driver_version));
  o.Set("runtimeVersion", Napi::Number::New(env, d.runtime_version));
  o.Set("gemm", Napi::String::New(env, uc::gemm_backend()));
  if (d.count > 0) {
    o.Set("device", Napi::Number::New(env, d.device));
    o.Set("name", Napi::String::New(env, d.name));
    o.Set("computeCapability", Napi::String::New(env, std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)));
    o.Set("multiprocessors", Napi::Number::New(env, d.sm_count));
    o.Set("totalMemory", Napi::Number::New(env, (double)d.total_mem));
    o.Set("freeMemory", Napi::Number::New(env, (double)d.free_mem));
    o.Set("kernelsRun", Napi::Boolean::New(env, d.kernels_run));
  }
  return o;
}

Napi::Value GemmBackend(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), uc::gemm_backend()); }

// ---------- random

uc::NoiseKind noise_kind(Napi::Env env, const std::string& kind, const char* fn) {
  if (kind == "normal") return uc::NoiseKind::normal;
  if (kind == "uniform") return uc::NoiseKind::uniform;
  type_error(env, std::string(fn) + ": kind must be normal or uniform");
}

// fillRandom(out, seed, streamName, 'normal'|'uniform', a, b)
Napi::Value FillRandom(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = f32(info, 0, "out", 0);
  const uint64_t seed = (uint64_t)num(info, 1, "seed");
  const std::string stream = info[2].ToString(), kind = info[3].ToString();
  const float a = (float)dbl(info, 4, "a"), b = (float)dbl(info, 5, "b");
  const uc::NoiseKind k = noise_kind(env, kind, "fillRandom");
  require_device(env);
  const size_t n = x.ElementLength();
  DevBuf d;
  d.alloc(env, n * sizeof(float));
  check(env, uc::fill_random(d.as<float>(), (int64_t)n, seed, uc::stream_of(stream.c_str()), k, a, b, 0), "fillRandom");
  d.download(env, x.Data(), n * sizeof(float));
  return env.Undefined();
}

// noiseMix(w, seed, streamName, 'normal'|'uniform', a, b, keep, scale): w = fround(keep·w + scale·noise)
Napi::Value NoiseMix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto w = f32(info, 0, "w", 0);
  const uint64_t seed = (uint64_t)num(info, 1, "seed");
  const std::string stream = info[2].ToString(), kind = info[3].ToString();
  const float a = (float)dbl(info, 4, "a"), b = (float)dbl(info, 5, "b");
  const float keep = (float)dbl(info, 6, "keep"), scale = (float)dbl(info, 7, "scale");
  const uc::NoiseKind k = noise_kind(env, kind, "noiseMix");
  require_device(env);
  const size_t n = w.ElementLength();
  DevBuf d;
  d.upload(env, w.Data(), n * sizeof(float));
  check(env, uc::noise_mix(d.as<float>(), (int64_t)n, seed, uc::stream_of(stream.c_str()), k, a, b, keep, scale, 0),
        "noiseMix");
  d.download(env, w.Data(), n * sizeof(float));
  return env.Undefined();
}

// ---------- AdamW, norm

// adamwUpdate(param, grad, m, v, {lr, beta1, beta2, eps, weightDecay, gradScale, step})
Napi::Value AdamwUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto p = f32(info, 0, "param", 0);
  const size_t n = p.ElementLength();
  auto g = f32(info, 1, "grad", n), m = f32(info, 2, "m", n), v = f32(info, 3, "v", n);
  if (!info[4].IsObject()) type_error(env, "adamwUpdate: hyperparameters must be an object");
  Napi::Object o = info[4].As<Napi::Object>();
  uc::AdamWParams h{(float)field(o, "lr", 0, true), (float)field(o, "beta1", 0.9), (float)field(o, "beta2", 0.999),
                    (float)field(o, "eps", 1e-8), (float)field(o, "weightDecay", 0.0), (float)field(o, "gradScale", 1.0),
                    (int64_t)field(o, "step", 0, true)};
  require_device(env);
  DevBuf dp, dg, dm, dv;
  dp.upload(env, p.Data(), n * 4);
  dg.upload(env, g.Data(), n * 4);
  dm.upload(env, m.Data(), n * 4);
  dv.upload(env, v.Data(), n * 4);
  check(env, uc::adamw_update((int64_t)n, dp.as<float>(), dg.as<float>(), dm.as<float>(), dv.as<float>(), h, 0),
        "adamwUpdate");
  dp.download(env, p.Data(), n * 4);
  dm.download(env, m.Data(), n * 4);
  dv.download(env, v.Data(), n * 4);
  return env.Undefined();
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = f32(info, 0, "x", 0);
  require_device(env);
  const size_t n = x.ElementLength();
  DevBuf dx, dout, work;
  dx.upload(env, x.Data(), n * 4);
  dout.alloc(env, sizeof(double));
  work.alloc(env, uc::sum_squares_work_doubles() * sizeof(double));
  check(env, uc::sum_squares((int64_t)n, dx.as<float>(), dout.as<double>(), work.as<double>(), 0), "sumSquares");
  double r = 0;
  dout.download(env, &r, sizeof(r));
  return Napi::Number::New(env, r);
}

// ---------- RMSNorm

// rmsnormForward(rows, dim, x, w, eps, unitOffset, y, rstd|null)
Napi::Value RmsnormForward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  if (rows < 0 || dim <= 0) type_error(env, "rmsnormForward: bad dims");
  const size_t n = (size_t)(rows * dim);
  auto x = f32(info, 2, "x", n), w = f32(info, 3, "w", (size_t)dim), y = f32(info, 6, "y", n);
  auto rstd = f32(info, 7, "rstd", (size_t)rows, true);
  require_device(env);
  DevBuf dx, dw, dy, dr;
  dx.upload(env, x.Data(), n * 4);
  dw.upload(env, w.Data(), (size_t)dim * 4);
  dy.alloc(env, n * 4);
  if (!rstd.IsEmpty()) dr.alloc(env, (size_t)rows * 4);
  check(env,
        uc::rmsnorm_forward(rows, dim, dx.as<float>(), dw.as<float>(), (float)dbl(info, 4, "eps"), flag(info, 5),
                            dy.as<float>(), dr.as<float>(), 0),
        "rmsnormForward");
  dy.download(env, y.Data(), n * 4);
  if (!rstd.IsEmpty()) dr.download(env, rstd.Data(), (size_t)rows * 4);
  return env.Undefined();
}

// rmsnormBackward(rows, dim, x, w, rstd, unitOffset, dy, dx, accumulate, dw|null)
Napi::Value RmsnormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = num(info, 0, "rows"), dim = num(info, 1, "dim");
  if (rows < 0 || dim <= 0) type_error(env, "rmsnormBackward: bad dims");
  const size_t n = (size_t)(rows * dim);
  auto x = f32(info, 2, "x", n), w = f32(info, 3, "w", (size_t)dim), rstd = f32(info, 4, "rstd", (size_t)rows);
  auto dy = f32(info, 6, "dy", n), dx = f32(info, 7, "dx", n), dw = f32(info, 9, "dw", (size_t)dim, true);
  const bool acc = flag(info, 8);
  require_device(env);
  DevBuf bx, bw, br, bdy, bdx, bdw, work;
  bx.upload(env, x.Data(), n * 4);
  bw.upload(env, w.Data(), (size_t)dim * 4);
  br.upload(env, rstd.Data(), (size_t)rows * 4);
  bdy.upload(env, dy.Data(), n * 4);
  if (acc) bdx.upload(env, dx.Data(), n * 4);
  else bdx.alloc(env, n * 4);
  if (!dw.IsEmpty()) {
    bdw.upload(env, dw.Data(), (size_t)dim * 4);
    work.alloc(env, uc::rmsnorm_backward_work_floats(rows, dim) * 4);
  }
  check(env,
        uc::rmsnorm_backward(rows, dim, bx.as<float>(), bw.as<float>(), br.as<float>(), flag(info, 5), bdy.as<float>(),
                             bdx.as<float>(), acc, bdw.as<float>(), work.as<float>(), 0),
        "rmsnormBackward");
  bdx.download(env, dx.Data(), n * 4);
  if (!dw.IsEmpty()) bdw.download(env, dw.Data(), (size_t)dim * 4);
  return env.Undefined();
}

// ---------- cross-entropy

// crossEntropy(rows, vocab, logits, targets, ignoreIndex, softcap, weights|null, loss, dlogits|null, {bf16}?)
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = num(info, 0, "rows"), vocab = num(info, 1, "vocab");
  if (rows < 0 || vocab <= 0) type_error(env, "crossEntropy: bad dims");
  const size_t n = (size_t)(rows * vocab);
  auto logits = f32(info, 2, "logits", n);
  auto targets = i32(info, 3, "targets", (size_t)rows);
  const int32_t ignore = (int32_t)num(info, 4, "ignoreIndex");
  const int32_t* tp = targets.Data();
  for (int64_t r = 0; r < rows; r++)
    if (tp[r] != ignore && (tp[r] < 0 || tp[r] >= vocab))
      type_error(env, "crossEntropy: target " + std::to_string(tp[r]) + " out of range");
  auto weights = f32(info, 6, "weights", (size_t)rows, true);
  auto loss = f32(info, 7, "loss", (size_t)rows);
  auto dl = f32(info, 8, "dlogits", n, true);
  const bool bf16 = opt_flag(info, 9, "bf16");
  require_device(env);
  DevBuf bz, bt, bw, bl, bd;
  upload_logits(env, bz, logits.Data(), n, bf16);
  bt.upload(env, tp, (size_t)rows * 4);
  if (!weights.IsEmpty()) bw.upload(env, weights.Data(), (size_t)rows * 4);
  bl.alloc(env, (size_t)rows * 4);
  if (!dl.IsEmpty()) bd.alloc(env, n * 4);
  check(env,
        uc::cross_entropy(rows, vocab, bz.as<void>(), bf16 ? uc::DType::bf16 : uc::DType::f32, vocab, bt.as<int32_t>(),
                          ignore, (float)dbl(info, 5, "softcap"), bw.as<float>(), bl.as<float>(), bd.as<float>(), 0),
        "crossEntropy");
  bl.download(env, loss.Data(), (size_t)rows * 4);
  if (!dl.IsEmpty()) bd.download(env, dl.Data(), n * 4);
  return env.Undefined();
}

// ---------- GEMM

// gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, {tiled}?)
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool ta = flag(info, 0), tb = flag(info, 1);
  const int64_t M = num(info, 2, "M"), N = num(info, 3, "N"), K = num(info, 4, "K");
  const float alpha = (float)dbl(info, 5, "alpha");
  const int64_t lda = num(info, 7, "lda"), ldb = num(info, 9, "ldb"), ldc = num(info, 12, "ldc");
  const float beta = (float)dbl(info, 10, "beta");
  if (M < 0 || N < 0 || K < 0) type_error(env, "gemm: negative dimension");
  const int64_t arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
  if (lda < acols || ldb < bcols || ldc < N) type_error(env, "gemm: leading dimension too small");
  auto need = [](int64_t rows, int64_t cols, int64_t ld) {
    return rows == 0 || cols == 0 ? (size_t)0 : (size_t)((rows - 1) * ld + cols);
  };
  const size_t na = need(arows, acols, lda), nb = need(brows, bcols, ldb), nc = need(M, N, ldc);
  auto A = f32(info, 6, "A", na);
  auto B = f32(info, 8, "B", nb);
  auto C = f32(info, 11, "C", nc);
  const bool tiled = opt_flag(info, 13, "tiled");
  require_device(env);
  DevBuf dA, dB, dC;
  dA.upload(env, A.Data(), na * 4);
  dB.upload(env, B.Data(), nb * 4);
  dC.upload(env, C.Data(), nc * 4);  // beta = 0 never reads it, but the gaps between rows (ldc > N) stay as they were
  check(env,
        (tiled ? uc::gemm_tiled : uc::gemm)(ta, tb, M, N, K, alpha, dA.as<float>(), lda, dB.as<float>(), ldb, beta,
                                            dC.as<float>(), ldc, 0),
        "gemm");
  dC.download(env, C.Data(), nc * 4);
  return env.Undefined();
}

// ---------- KD losses

// kdLoss(name, {... as the CPU's kdLoss ..., bf16?}) → {loss, count}
Napi::Value KdLoss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uc::KdCudaArgs a;
  Napi::Object o = kd_loss_options(info, &a);
  struct Arr {
    const void* data = nullptr;
    size_t bytes = 0;
  };
  auto arr = [&](const char* f, napi_typedarray_type type, size_t len, bool required) -> Arr {
    Arr r;
    r.data = typed_field(env, o, "kdLoss", f, type, len, required, &r.bytes);
    return r;
  };
  const size_t n = (size_t)(a.rows * a.vocab), R = (size_t)a.rows;
  const Arr student = arr("student", napi_float32_array, n, true);
  const Arr teacher = arr("teacher", napi_float32_array, n, false);
  a.k = (int64_t)field(o, "k", 0);
  if (a.k < 0) type_error(env, "kdLoss: k must be >= 0");
  const Arr ids = arr("topkIds", napi_int32_array, R * (size_t)a.k, false);
  const Arr lps = arr("topkLogprobs", napi_float32_array, R * (size_t)a.k, false);
  kd_tail_option(env, o, &a.tail);
  const Arr targets = arr("targets", napi_int32_array, R, false);
  a.ignore_index = (int32_t)field(o, "ignoreIndex", -100);
  const Arr mask = arr("mask", napi_uint8_array, R, false);
  a.temperature = (float)field(o, "temperature", 1.0);
  a.beta = field(o, "beta", 0.5);
  a.alpha = field(o, "alpha", 0.1);
  a.t = field(o, "t", 0.0);
  a.t2_scale = o.Get("t2Scale").ToBoolean().Value();
  kd_reduction_option(env, o, &a.reduction);
  a.grad_scale = field(o, "gradScale", 1.0);
  const Arr per_row = arr("perRow", napi_float32_array, R, true);
  const Arr grad = arr("grad", napi_float32_array, n, false);
  const bool bf16 = o.Get("bf16").ToBoolean().Value();
  // the same checks as the CPU, on host pointers standing in for the device ones
  a.student = student.data;
  a.teacher = teacher.data;
  a.topk_ids = (const int32_t*)ids.data;
  a.topk_logprobs = (const float*)lps.data;
  a.targets = (const int32_t*)targets.data;
  a.mask = (const uint8_t*)mask.data;
  a.row_loss = (float*)per_row.data;
  a.work = (void*)1;
  if (const char* bad = uc::kd_check_args(a)) type_error(env, std::string("kdLoss: ") + bad);
  require_device(env);
  DevBuf bs, bt, bi, bl, btg, bm, br, bg, bw;
  upload_logits(env, bs, (const float*)student.data, n, bf16);
  const bool use_teacher = teacher.data && uc::kd_uses_teacher(a.kind);
  if (use_teacher) upload_logits(env, bt, (const float*)teacher.data, n, bf16);
  if (ids.data) bi.upload(env, ids.data, ids.bytes);
  if (lps.data) bl.upload(env, lps.data, lps.bytes);
  if (targets.data) btg.upload(env, targets.data, targets.bytes);
  if (mask.data) bm.upload(env, mask.data, mask.bytes);
  br.alloc(env, R * 4);
  if (grad.data) bg.alloc(env, n * 4);
  bw.alloc(env, uc::kd_work_bytes(a.rows));
  a.student = bs.as<void>();
  a.student_type = a.teacher_type = bf16 ? uc::DType::bf16 : uc::DType::f32;
  a.teacher = use_teacher ? bt.as<void>() : nullptr;
  a.topk_ids = bi.as<int32_t>();
  a.topk_logprobs = bl.as<float>();
  a.targets = btg.as<int32_t>();
  a.mask = bm.as<uint8_t>();
  a.row_loss = br.as<float>();
  a.grad = bg.as<float>();
  a.work = bw.as<void>();
  const cudaError_t e = uc::kd_loss(a, 0);
  if (e == cudaErrorInvalidValue)
    throw Napi::RangeError::New(env, "kdLoss: the CUDA kernel cannot take these arguments (a top-k row of k = " +
                                         std::to_string(a.k) + " ids over vocab " + std::to_string(a.vocab) +
                                         " may need more shared memory than the device has)");
  check(env, e, "kdLoss");
  uc::KdCudaResult res;
  check(env, uc::kd_result(a, &res, 0), "kdLoss");
  if (res.status != uc::KdStatus::ok) {
    throw_kd_row_status(env, res.status, res.bad_row, res.bad_value);
    throw Napi::TypeError::New(env, "kdLoss: bad arguments");
  }
  br.download(env, per_row.data ? (void*)per_row.data : nullptr, R * 4);
  if (grad.data) bg.download(env, (void*)grad.data, n * 4);
  Napi::Object out = Napi::Object::New(env);
  out.Set("loss", Napi::Number::New(env, res.loss));
  out.Set("count", Napi::Number::New(env, (double)res.counted));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo));
  exports.Set("gemmBackend", Napi::Function::New(env, GemmBackend));
  exports.Set("fillRandom", Napi::Function::New(env, FillRandom));
  exports.Set("noiseMix", Napi::Function::New(env, NoiseMix));
  exports.Set("adamwUpdate", Napi::Function::New(env, AdamwUpdate));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares));
  exports.Set("rmsnormForward", Napi::Function::New(env, RmsnormForward));
  exports.Set("rmsnormBackward", Napi::Function::New(env, RmsnormBackward));
  exports.Set("crossEntropy", Napi::Function::New(env, CrossEntropy));
  exports.Set("gemm", Napi::Function::New(env, Gemm));
  exports.Set("kdLoss", Napi::Function::New(env, KdLoss));
  exports.Set("kdKinds", [&]() {
    Napi::Array a = Napi::Array::New(env);
    uint32_t i = 0;
    for (int k = 0; k < (int)uc::KdKind::count_; k++)
      if ((uc::KdKind)k != uc::KdKind::dkd && (uc::KdKind)k != uc::KdKind::deltakd)
        a.Set(i++, uc::kd_kind_name((uc::KdKind)k));
    return a;
  }());
  return exports;
}

}  // namespace

NODE_API_MODULE(undo_cuda, Init)
