// Standalone harness for the CUDA kernels (native/cuda) without Node: each kernel is first validated against its
// CPU twin (native/cpu, linked in all three ISA builds; the generic one where bit-equality is expected), then
// timed with CUDA events after warm-up, with the L2 cache flushed before every timed run. Bandwidth-bound kernels
// report GB/s and the fraction of the measured device-to-device copy bandwidth; GEMM reports TFLOP/s.
//
// Build (from the repository root; CMake ≥ 3.18, nvcc; the CPU kernels need OpenMP):
//   cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DUNDO_CUDA_HARNESS=ON
//   cmake --build build-cuda --target cuda_harness -j 8
// (-DUNDO_CUDA_NO_CUBLAS=ON times the tiled SGEMM instead of cuBLAS; the Node headers are not needed for this
// target: without them CMake skips the addon and builds the harness alone.)
//
// Run:
//   build-cuda/cuda_harness            validation, then timings
//   build-cuda/cuda_harness check      validation only (exit status 1 on any mismatch)
//   build-cuda/cuda_harness bench      timings only
// Without a usable GPU it prints why and exits with status 2.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

// CPU twins
#include "adamw.h"
#include "cross_entropy.h"
#include "isa.h"
#include "kd_losses.h"
#include "matmul.h"
#include "random.h"
#include "rmsnorm.h"
// CUDA kernels
#include "adamw.cuh"
#include "cross_entropy.cuh"
#include "device.cuh"
#include "kd_losses.cuh"
#include "matmul.cuh"
#include "random.cuh"
#include "rmsnorm.cuh"

namespace uc = undo::cuda;

#define CK(x)                                                                                        \
  do {                                                                                               \
    cudaError_t e_ = (x);                                                                            \
    if (e_ != cudaSuccess) {                                                                         \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, uc::error_string(e_).c_str()); \
      std::exit(1);                                                                                  \
    }                                                                                                \
  } while (0)

// ---------------------------------------------------------------- helpers

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { CK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  Dev(const std::vector<T>& h) : Dev(h.size()) { put(h); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  void put(const std::vector<T>& h) { CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

struct Rand {  // xorshift64* + Box–Muller: test data only
  uint64_t s;
  explicit Rand(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t u64() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  double uni() { return ((u64() >> 11) + 0.5) / 9007199254740992.0; }
  float normal() { return (float)(std::sqrt(-2.0 * std::log(uni())) * std::cos(6.283185307179586 * uni())); }
};

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  Rand r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = r.normal() * scale;
  return v;
}

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-6;
  for (size_t i = 0; i < a.size(); i++) {
    const double d = std::fabs((double)a[i] - (double)b[i]);
    if (std::isnan(d)) {
      if (!(std::isnan(a[i]) && std::isnan(b[i])) && a[i] != b[i]) return INFINITY;
      continue;
    }
    num = std::max(num, d);
    den = std::max(den, std::fabs((double)b[i]));
  }
  return num / den;
}

size_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); i++) n += std::memcmp(&a[i], &b[i], 4) != 0;
  return n;
}

// device-side test data for the timing shapes (host generation of 10^9 values would dominate the run)
void dev_randn(float* p, int64_t n, uint64_t seed, float scale) {
  CK(uc::fill_random(p, n, seed, 99, uc::NoiseKind::normal, 0.0f, scale, 0));
}
__global__ void to_bf16_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

int failures = 0;
void report(bool ok, const std::string& what, const std::string& detail) {
  std::printf("  %-4s %-58s %s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
  if (!ok) failures++;
}
std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}
void check_rel(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  const double e = rel_err(got, want);
  report(e <= tol, what, fmt("rel err %.2e", e));
}

// ---------------------------------------------------------------- timing

struct Timer {
  cudaEvent_t a, b;
  void* flush = nullptr;
  size_t flush_bytes = 0;
  Timer() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    int dev = 0, l2 = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    flush_bytes = std::max<size_t>((size_t)l2 * 4, 64u << 20);
    CK(cudaMalloc(&flush, flush_bytes));
  }
  ~Timer() {
    cudaFree(flush);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  // median ms of `iters` runs after `warm` warm-ups, L2 flushed before each timed run
  double ms(const std::function<void()>& f, int warm = 3, int iters = 15) {
    for (int i = 0; i < warm; i++) f();
    CK(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int i = 0; i < iters; i++) {
      CK(cudaMemsetAsync(flush, i & 0xff, flush_bytes));
      CK(cudaEventRecord(a));
      f();
      CK(cudaEventRecord(b));
      CK(cudaEventSynchronize(b));
      float x = 0;
      CK(cudaEventElapsedTime(&x, a, b));
      t.push_back(x);
    }
    CK(cudaGetLastError());
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

double g_copy_gbs = 0;  // measured device-to-device copy bandwidth (bytes read + written per second)

void bw_line(const char* what, double ms, double bytes) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("  %-52s %9.3f ms %8.1f GB/s  %5.1f%% of copy\n", what, ms, gbs, 100.0 * gbs / g_copy_gbs);
}

void measure_copy(Timer& T) {
  const size_t bytes = (size_t)1 << 30;
  void *x, *y;
  CK(cudaMalloc(&x, bytes));
  CK(cudaMalloc(&y, bytes));
  CK(cudaMemset(x, 1, bytes));
  const double ms = T.ms([&] { CK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice)); });
  g_copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
  std::printf("  %-52s %9.3f ms %8.1f GB/s  (read + write; the 100%% of the lines below)\n", "device-to-device copy 1 GiB",
              ms, g_copy_gbs);
  cudaFree(x);
  cudaFree(y);
}

// ---------------------------------------------------------------- kernels

void random_check() {
  const int64_t n = (1 << 24) + 3;
  for (int kind = 0; kind < 2; kind++) {
    for (uint64_t seed : {1ull, (1ull << 40) + 77}) {
      const uint64_t stream = undo::stream_of("model.layers.3.mlp.up_proj.weight");
      report(stream == uc::stream_of("model.layers.3.mlp.up_proj.weight"), "stream_of equal", "");
      std::vector<float> want(n);
      const float a = kind ? -0.05f : 0.0f, b = kind ? 0.05f : 0.02f;
      if (kind) undo::fill_uniform(want.data(), n, seed, stream, a, b);
      else undo::fill_normal(want.data(), n, seed, stream, a, b);
      Dev<float> d((size_t)n);
      CK(uc::fill_random(d.p, n, seed, stream, kind ? uc::NoiseKind::uniform : uc::NoiseKind::normal, a, b, 0));
      const size_t mm = bit_mismatches(d.get(), want);
      report(mm == 0, std::string("philox ") + (kind ? "uniform" : "normal") + " bit-identical, seed " + std::to_string(seed),
             std::to_string(mm) + " of " + std::to_string(n) + " differ");
    }
  }
}

void random_bench(Timer& T) {
  const int64_t n = (int64_t)1 << 28;
  Dev<float> d((size_t)n);
  for (int kind = 0; kind < 2; kind++) {
    const double ms = T.ms([&] {
      CK(uc::fill_random(d.p, n, 7, 11, kind ? uc::NoiseKind::uniform : uc::NoiseKind::normal, 0.0f, 1.0f, 0));
    });
    bw_line(kind ? "philox uniform fill 2^28 (write)" : "philox normal fill 2^28 (write)", ms, 4.0 * n);
  }
  const double ms = T.ms([&] { CK(uc::noise_mix(d.p, n, 7, 11, uc::NoiseKind::uniform, -0.1f, 0.1f, 0.4f, 0.06f, 0)); });
  bw_line("noise_mix uniform 2^28 (read + write)", ms, 8.0 * n);
}

void adamw_check_bench(Timer* T) {
  const int64_t n = (1 << 22) + 5;
  auto p = randn(n, 1), m = std::vector<float>(n, 0.0f), v = std::vector<float>(n, 0.0f);
  Dev<float> dp(p), dm(m), dv(v), dg((size_t)n);
  for (int step = 1; step <= 5; step++) {
    auto g = randn(n, 10 + step, 0.1f);
    dg.put(g);
    undo::AdamWParams hc{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, step};
    uc::AdamWParams hg{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, step};
    undo::generic::adamw_update(n, p.data(), g.data(), m.data(), v.data(), hc);
    CK(uc::adamw_update(n, dp.p, dg.p, dm.p, dv.p, hg, 0));
  }
  if (!T) {
    const size_t a = bit_mismatches(dp.get(), p), b = bit_mismatches(dm.get(), m), c = bit_mismatches(dv.get(), v);
    report(a + b + c == 0, "adamw 5 steps bit-identical to undo::generic",
           std::to_string(a) + "/" + std::to_string(b) + "/" + std::to_string(c) + " differ (p/m/v)");
    Dev<double> out(1), work(uc::sum_squares_work_doubles());
    CK(uc::sum_squares(n, dp.p, out.p, work.p, 0));
    const double gs = out.get()[0], cs = undo::sum_squares(n, p.data());
    report(std::fabs(gs - cs) <= 1e-6 * cs, "sum_squares", fmt("rel err %.2e", std::fabs(gs - cs) / cs));
    return;
  }
  const int64_t N = (int64_t)1 << 27;
  Dev<float> P((size_t)N), G((size_t)N), M((size_t)N), V((size_t)N);
  CK(cudaMemset(P.p, 0, N * 4));
  CK(cudaMemset(G.p, 0, N * 4));
  CK(cudaMemset(M.p, 0, N * 4));
  CK(cudaMemset(V.p, 0, N * 4));
  uc::AdamWParams h{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 3};
  bw_line("adamw 2^27 params (4 reads + 3 writes)", T->ms([&] { CK(uc::adamw_update(N, P.p, G.p, M.p, V.p, h, 0)); }),
          28.0 * N);
  Dev<double> out(1), work(uc::sum_squares_work_doubles());
  bw_line("sum_squares 2^27", T->ms([&] { CK(uc::sum_squares(N, G.p, out.p, work.p, 0)); }), 4.0 * N);
}

void rmsnorm_check_bench(Timer* T) {
  if (T) {
    const int64_t rows = 16384, dim = 4096;
    Dev<float> x((size_t)(rows * dim)), w((size_t)dim), dy((size_t)(rows * dim)), y((size_t)(rows * dim)),
        rstd((size_t)rows), dx((size_t)(rows * dim)), dw((size_t)dim), work(uc::rmsnorm_backward_work_floats(rows, dim));
    dev_randn(x.p, rows * dim, 1, 1.0f);
    dev_randn(w.p, dim, 2, 0.2f);
    dev_randn(dy.p, rows * dim, 3, 1.0f);
    CK(cudaMemset(dw.p, 0, dim * 4));
    bw_line("rmsnorm fwd 16384x4096 (read x, write y)",
            T->ms([&] { CK(uc::rmsnorm_forward(rows, dim, x.p, w.p, 1e-6f, false, y.p, rstd.p, 0)); }), 8.0 * rows * dim);
    bw_line("rmsnorm bwd 16384x4096 (x, dy twice; write dx)", T->ms([&] {
              CK(uc::rmsnorm_backward(rows, dim, x.p, w.p, rstd.p, false, dy.p, dx.p, false, dw.p, work.p, 0));
            }),
            20.0 * rows * dim);
    return;
  }
  const int64_t rows = 67, dim = 1031;
  auto x = randn(rows * dim, 3, 1.5f), w = randn(dim, 4, 0.2f), dy = randn(rows * dim, 5);
  Dev<float> dx_(x), dw_(w), ddy(dy), dy_out((size_t)(rows * dim)), drstd((size_t)rows), ddx((size_t)(rows * dim)),
      ddw((size_t)dim), work(uc::rmsnorm_backward_work_floats(rows, dim));
  for (int unit = 0; unit < 2; unit++) {
    std::vector<float> y(rows * dim), rs(rows), dx(rows * dim), dw(dim, 0.0f);
    undo::rmsnorm_forward(rows, dim, x.data(), w.data(), 1e-6f, unit, y.data(), rs.data());
    CK(uc::rmsnorm_forward(rows, dim, dx_.p, dw_.p, 1e-6f, unit, dy_out.p, drstd.p, 0));
    check_rel(dy_out.get(), y, 1e-5, "rmsnorm forward y" + std::string(unit ? " (1+w)" : ""));
    check_rel(drstd.get(), rs, 1e-5, "rmsnorm forward rstd");
    undo::rmsnorm_backward(rows, dim, x.data(), w.data(), rs.data(), unit, dy.data(), dx.data(), false, dw.data());
    CK(cudaMemset(ddw.p, 0, dim * 4));
    CK(uc::rmsnorm_backward(rows, dim, dx_.p, dw_.p, drstd.p, unit, ddy.p, ddx.p, false, ddw.p, work.p, 0));
    check_rel(ddx.get(), dx, 1e-5, "rmsnorm backward dx");
    check_rel(ddw.get(), dw, 1e-5, "rmsnorm backward dw");
  }
}

void xent_check_bench(Timer* T) {
  if (T) {
    const int64_t rows = 8192, vocab = 128256;
    Dev<float> z((size_t)(rows * vocab)), loss((size_t)rows), d((size_t)(rows * vocab));
    dev_randn(z.p, rows * vocab, 8, 3.0f);
    std::vector<int32_t> t(rows);
    for (int64_t i = 0; i < rows; i++) t[i] = (int32_t)((i * 7919) % vocab);
    Dev<int32_t> dt(t);
    bw_line("cross_entropy 8192x128256 fp32 (read twice, write)", T->ms([&] {
              CK(uc::cross_entropy(rows, vocab, z.p, uc::DType::f32, vocab, dt.p, -100, 0.0f, nullptr, loss.p, d.p, 0));
            }),
            12.0 * rows * vocab);
    return;
  }
  const int64_t rows = 37, vocab = 50257;
  auto z = randn(rows * vocab, 8, 3.0f);
  std::vector<int32_t> t(rows);
  Rand r(9);
  for (int64_t i = 0; i < rows; i++) t[i] = i % 7 == 3 ? -100 : (int32_t)(r.u64() % (uint64_t)vocab);
  Dev<float> dz(z), dl((size_t)rows), dd((size_t)(rows * vocab));
  Dev<int32_t> dt(t);
  for (float cap : {0.0f, 30.0f}) {
    std::vector<float> loss(rows), d(rows * vocab);
    undo::cross_entropy(rows, vocab, z.data(), vocab, t.data(), -100, cap, nullptr, loss.data(), d.data());
    CK(uc::cross_entropy(rows, vocab, dz.p, uc::DType::f32, vocab, dt.p, -100, cap, nullptr, dl.p, dd.p, 0));
    check_rel(dl.get(), loss, 1e-5, "cross_entropy loss" + std::string(cap > 0 ? " softcap 30" : ""));
    check_rel(dd.get(), d, 1e-5, "cross_entropy dlogits");
  }
}

void gemm_check_bench(Timer* T) {
  if (!T) {
    const int64_t M = 257, N = 383, K = 511;
    for (int form = 0; form < 3; form++) {
      const bool ta = form == 2, tb = form == 0;
      auto A = randn(M * K, 1), B = randn(K * N, 2), C0 = randn(M * N, 3);
      const int64_t lda = ta ? M : K, ldb = tb ? K : N;
      std::vector<float> want(C0);
      undo::gemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 0.25f, want.data(), N);
      Dev<float> dA(A), dB(B), dC(C0);
      CK(uc::gemm(ta, tb, M, N, K, 0.5f, dA.p, lda, dB.p, ldb, 0.25f, dC.p, N, 0));
      const char* names[] = {"NT", "NN", "TN"};
      check_rel(dC.get(), want, 1e-5, std::string("gemm ") + names[form] + " " + uc::gemm_backend());
      dC.put(C0);
      CK(uc::gemm_tiled(ta, tb, M, N, K, 0.5f, dA.p, lda, dB.p, ldb, 0.25f, dC.p, N, 0));
      check_rel(dC.get(), want, 1e-5, std::string("gemm ") + names[form] + " tiled");
    }
    return;
  }
  const int64_t n = 4096;
  Dev<float> A((size_t)(n * n)), B((size_t)(n * n)), C((size_t)(n * n));
  CK(cudaMemset(A.p, 0, n * n * 4));
  CK(cudaMemset(B.p, 0, n * n * 4));
  for (int tiled = 0; tiled < 2; tiled++) {
    const double ms = T->ms([&] {
      CK((tiled ? uc::gemm_tiled : uc::gemm)(false, true, n, n, n, 1.0f, A.p, n, B.p, n, 0.0f, C.p, n, 0));
    }, 2, 5);
    std::printf("  %-52s %9.3f ms %8.1f TFLOP/s\n", tiled ? "sgemm 4096^3 NT tiled" : "sgemm 4096^3 NT default backend", ms,
                2.0 * n * n * n / (ms * 1e-3) / 1e12);
  }
}

// KD: validation at moderate shapes (the CPU reference is threaded but slow at the bench shapes)
void kd_run_both(const char* name, uc::KdKind gk, undo::KdKind ck, int64_t rows, int64_t vocab, bool topk, int64_t k,
                 bool bucket, bool bf16) {
  auto z = randn(rows * vocab, 21, 2.0f), y = randn(rows * vocab, 22, 2.0f);
  for (size_t i = 0; i < z.size(); i++) y[i] += 0.7f * z[i];
  std::vector<uint16_t> zb(z.size()), yb(y.size());
  if (bf16)
    for (size_t i = 0; i < z.size(); i++) {
      zb[i] = to_bf16(z[i]);
      yb[i] = to_bf16(y[i]);
      z[i] = from_bf16(zb[i]);
      y[i] = from_bf16(yb[i]);
    }
  std::vector<int32_t> ids(rows * k);
  std::vector<float> lps(rows * k);
  if (topk) {
    for (int64_t r = 0; r < rows; r++) {
      const float* yr = y.data() + r * vocab;
      std::vector<int32_t> idx(vocab);
      for (int64_t i = 0; i < vocab; i++) idx[i] = (int32_t)i;
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) { return yr[a] > yr[b]; });
      double m = -INFINITY, s = 0;
      for (int64_t i = 0; i < vocab; i++) m = std::max(m, (double)yr[i]);
      for (int64_t i = 0; i < vocab; i++) s += std::exp(yr[i] - m);
      for (int64_t j = 0; j < k; j++) {
        ids[r * k + j] = idx[j];
        lps[r * k + j] = (float)(yr[idx[j]] - m - std::log(s));
      }
    }
  }
  undo::KdArgs ca;
  ca.kind = ck;
  ca.rows = rows;
  ca.vocab = vocab;
  ca.student = z.data();
  ca.teacher = topk ? nullptr : y.data();
  ca.topk_ids = topk ? ids.data() : nullptr;
  ca.topk_logprobs = topk ? lps.data() : nullptr;
  ca.k = topk ? k : 0;
  ca.tail = bucket ? undo::KdTail::bucket : undo::KdTail::renorm;
  ca.temperature = 1.5f;
  ca.beta = 0.3;
  std::vector<float> crow(rows), cgrad(rows * vocab);
  ca.row_loss = crow.data();
  ca.grad = cgrad.data();
  const undo::KdResult cr = undo::kd_loss(ca);

  Dev<float> dz(z), dy(y), drow((size_t)rows), dgrad((size_t)(rows * vocab)), dl(lps);
  Dev<uint16_t> dzb(zb), dyb(yb);
  Dev<int32_t> di(ids);
  Dev<unsigned char> work(uc::kd_work_bytes(rows));
  uc::KdCudaArgs ga;
  ga.kind = gk;
  ga.rows = rows;
  ga.vocab = vocab;
  ga.student = bf16 ? (const void*)dzb.p : (const void*)dz.p;
  ga.student_type = ga.teacher_type = bf16 ? uc::DType::bf16 : uc::DType::f32;
  ga.teacher = topk ? nullptr : (bf16 ? (const void*)dyb.p : (const void*)dy.p);
  ga.topk_ids = topk ? di.p : nullptr;
  ga.topk_logprobs = topk ? dl.p : nullptr;
  ga.k = topk ? k : 0;
  ga.tail = bucket ? uc::KdTail::bucket : uc::KdTail::renorm;
  ga.temperature = 1.5f;
  ga.beta = 0.3;
  ga.row_loss = drow.p;
  ga.grad = dgrad.p;
  ga.work = work.p;
  CK(uc::kd_loss(ga, 0));
  uc::KdCudaResult gr;
  CK(uc::kd_result(ga, &gr, 0));
  char tag[160];
  std::snprintf(tag, sizeof tag, "kd %s %s%s%s %lldx%lld", name, topk ? "top-k " : "full", topk ? (bucket ? "bucket" : "renorm") : "",
                bf16 ? " bf16" : "", (long long)rows, (long long)vocab);
  const double le = std::fabs(gr.loss - cr.loss) / std::max(std::fabs(cr.loss), 1e-6);
  report(gr.status == uc::KdStatus::ok && cr.status == undo::KdStatus::ok && le <= 1e-5, std::string(tag) + " loss",
         fmt("rel err %.2e", le));
  check_rel(drow.get(), crow, 1e-5, std::string(tag) + " perRow");
  check_rel(dgrad.get(), cgrad, 1e-5, std::string(tag) + " grad");
}

void kd_check() {
  const struct {
    const char* n;
    uc::KdKind g;
    undo::KdKind c;
  } kinds[] = {{"fkl", uc::KdKind::fkl, undo::KdKind::fkl},    {"rkl", uc::KdKind::rkl, undo::KdKind::rkl},
               {"jsd", uc::KdKind::jsd, undo::KdKind::jsd},    {"tvd", uc::KdKind::tvd, undo::KdKind::tvd},
               {"skl", uc::KdKind::skl, undo::KdKind::skl},    {"srkl", uc::KdKind::srkl, undo::KdKind::srkl},
               {"entropy", uc::KdKind::entropy, undo::KdKind::entropy}};
  for (const auto& k : kinds) kd_run_both(k.n, k.g, k.c, 33, 32003, false, 0, false, false);
  for (int i = 0; i < 6; i++)
    for (int bucket = 0; bucket < 2; bucket++) kd_run_both(kinds[i].n, kinds[i].g, kinds[i].c, 33, 32003, true, 64, bucket, false);
  kd_run_both("fkl", uc::KdKind::fkl, undo::KdKind::fkl, 8, 131072, true, 64, false, true);
  kd_run_both("rkl", uc::KdKind::rkl, undo::KdKind::rkl, 8, 131072, true, 64, true, true);
  kd_run_both("fkl", uc::KdKind::fkl, undo::KdKind::fkl, 8, 131072, false, 0, false, true);
}

// The issue's targets: top-k fkl / rkl, loss and gradient, rows 8192, V 131072, bf16 logits.
void kd_bench(Timer& T) {
  const int64_t rows = 8192, V = 131072, k = 64;
  Dev<__nv_bfloat16> z((size_t)(rows * V)), y((size_t)(rows * V));
  Dev<float> row((size_t)rows), grad((size_t)(rows * V));
  dev_randn(grad.p, rows * V, 5, 2.0f);  // the gradient buffer as scratch for the logits
  to_bf16_kernel<<<4096, 256>>>(grad.p, z.p, rows * V);
  dev_randn(grad.p, rows * V, 6, 2.0f);
  to_bf16_kernel<<<4096, 256>>>(grad.p, y.p, rows * V);
  CK(cudaDeviceSynchronize());
  std::vector<int32_t> ids(rows * k);
  std::vector<float> lps(rows * k, -6.0f);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < k; j++) ids[r * k + j] = (int32_t)((r * 977 + j * 2039) % V);
  Dev<int32_t> di(ids);
  Dev<float> dl(lps);
  Dev<unsigned char> work(uc::kd_work_bytes(rows));
  for (int full = 0; full < 2; full++) {
    for (uc::KdKind kind : {uc::KdKind::fkl, uc::KdKind::rkl}) {
      for (int bucket = 0; bucket < (full ? 1 : 2); bucket++) {
        uc::KdCudaArgs a;
        a.kind = kind;
        a.rows = rows;
        a.vocab = V;
        a.student = z.p;
        a.student_type = a.teacher_type = uc::DType::bf16;
        a.teacher = full ? y.p : nullptr;
        a.topk_ids = full ? nullptr : di.p;
        a.topk_logprobs = full ? nullptr : dl.p;
        a.k = full ? 0 : k;
        a.tail = bucket ? uc::KdTail::bucket : uc::KdTail::renorm;
        a.row_loss = row.p;
        a.grad = grad.p;
        a.work = work.p;
        const double ms = T.ms([&] { CK(uc::kd_loss(a, 0)); }, 2, 7);
        char what[128];
        std::snprintf(what, sizeof what, "kd %s %s %s 8192x131072 bf16 (+grad fp32)", uc::kd_kind_name(kind),
                      full ? "full" : "top-k64", full ? "" : (bucket ? "bucket" : "renorm"));
        // minimum traffic: read the bf16 logits once (twice with a full teacher), write the fp32 gradient
        bw_line(what, ms, (double)rows * V * (full ? 2 + 2 + 4 : 2 + 4));
      }
    }
  }
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  const uc::DeviceInfo info = uc::device_info();
  if (info.count <= 0 || !info.kernels_run) {
    std::printf("cuda_harness: no usable CUDA device: %s\n", info.reason.c_str());
    return 2;
  }
  std::printf("cuda_harness: %s (cc %d.%d, %d SMs, %.1f GiB), gemm backend %s, CPU ISA %s\n", info.name.c_str(),
              info.cc_major, info.cc_minor, info.sm_count, info.total_mem / 1073741824.0, uc::gemm_backend(),
              undo::isa_name(undo::active_isa()));
  if (mode == "all" || mode == "check") {
    std::printf("validation against native/cpu:\n");
    random_check();
    adamw_check_bench(nullptr);
    rmsnorm_check_bench(nullptr);
    xent_check_bench(nullptr);
    gemm_check_bench(nullptr);
    kd_check();
    std::printf("%s\n", failures ? "VALIDATION FAILED" : "validation passed");
  }
  if (mode == "all" || mode == "bench") {
    Timer T;
    std::printf("timings (median, L2 flushed, after warm-up):\n");
    measure_copy(T);
    random_bench(T);
    adamw_check_bench(&T);
    rmsnorm_check_bench(&T);
    xent_check_bench(&T);
    kd_bench(T);
    gemm_check_bench(&T);
  }
  return failures ? 1 : 0;
}
