// Standalone correctness + timing harness for native/cpu/matmul.cc (all three ISA builds at once).
//
// Build (from the repository root, one compiler process at a time; build/harness is scratch space):
//   ( set -e; mkdir -p build/harness
//     for isa in generic:0 avx2:1 avx512:2; do n=${isa%:*}; id=${isa#*:}
//       case $n in generic) f="";; avx2) f="-mavx2 -mfma -mf16c";;
//         avx512) f="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c -mprefer-vector-width=512";; esac
//       g++ -std=c++17 -O3 -fopenmp -fno-math-errno -fno-trapping-math -fPIC -Wall -Wno-unused-function \
//         -Wno-unknown-pragmas -Inative/cpu -DUNDO_ISA=$n -DUNDO_ISA_ID=$id $f \
//         -c native/cpu/matmul.cc -o build/harness/matmul_$n.o
//     done
//     g++ -std=c++17 -O2 -fopenmp -Inative/cpu native/cpu/cpu_features.cc test/native/matmul_harness.cc \
//       build/harness/matmul_*.o -o build/harness/matmul_harness )
//
// Run:
//   build/harness/matmul_harness            correctness on odd shapes (every supported ISA, 1 and N threads)
//                                           then GFLOP/s at the training shapes
//   build/harness/matmul_harness check      correctness only
//   build/harness/matmul_harness bench [isa] [form] [d]   timing only (form nt|nn|tn, d in 256..2048)
//   build/harness/matmul_harness shape isa ta tb M N K     timing of one shape
// UNDO_THREADS sets the thread count (default: all cores). Timings print "cpu x": CPU-seconds used per
// wall second; well under the thread count means other processes held the cores and the number is low.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <sys/resource.h>

#include "isa.h"
#include "matmul.h"

using undo::Isa;
typedef void (*GemmFn)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                       int64_t, float, float*, int64_t);

struct IsaEntry {
  Isa isa;
  const char* name;
  GemmFn fn;
};
static const IsaEntry kIsas[] = {
    {Isa::generic, "generic", &undo::generic::gemm},
    {Isa::avx2, "avx2", &undo::avx2::gemm},
    {Isa::avx512, "avx512", &undo::avx512::gemm},
};

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand() {  // uniform in [-1, 1)
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (float)((double)(g_rng >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

struct Case {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  std::vector<float> A, B, C0;
  std::vector<double> P, Pabs;  // op(A)·op(B) and Σ|a·b| in double
};

static void make_case(Case& c, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int pad) {
  c.ta = ta, c.tb = tb, c.M = M, c.N = N, c.K = K;
  const int64_t arows = ta ? K : M, acols = ta ? M : K;
  const int64_t brows = tb ? N : K, bcols = tb ? K : N;
  c.lda = acols + pad * 3;
  c.ldb = bcols + pad * 5;
  c.ldc = N + pad * 7;
  c.A.assign((size_t)(arows * c.lda + 1), 0.0f);
  c.B.assign((size_t)(brows * c.ldb + 1), 0.0f);
  c.C0.assign((size_t)(M * c.ldc + 1), 0.0f);
  for (auto& v : c.A) v = frand();
  for (auto& v : c.B) v = frand();
  for (auto& v : c.C0) v = frand();
  c.P.assign((size_t)(M * N), 0.0);
  c.Pabs.assign((size_t)(M * N), 0.0);
  std::vector<double> arow((size_t)K);
  for (int64_t i = 0; i < M; i++) {
    for (int64_t k = 0; k < K; k++) arow[k] = ta ? c.A[k * c.lda + i] : c.A[i * c.lda + k];
    for (int64_t j = 0; j < N; j++) {
      double s = 0, sa = 0;
      if (tb) {
        const float* b = &c.B[j * c.ldb];
        for (int64_t k = 0; k < K; k++) s += arow[k] * b[k], sa += std::fabs(arow[k] * b[k]);
      } else {
        for (int64_t k = 0; k < K; k++) {
          const double p = arow[k] * c.B[k * c.ldb + j];
          s += p, sa += std::fabs(p);
        }
      }
      c.P[i * N + j] = s;
      c.Pabs[i * N + j] = sa;
    }
  }
}

// Runs one gemm and returns the max error relative to the magnitude scale (|alpha|·Σ|ab| + |beta·c|);
// returns +inf on a hard failure (NaN leak, padding overwritten).
static double run_case(const Case& c, GemmFn fn, float alpha, float beta, bool nan_c) {
  std::vector<float> C = c.C0;
  if (nan_c)
    for (int64_t i = 0; i < c.M; i++)
      for (int64_t j = 0; j < c.N; j++) C[i * c.ldc + j] = NAN;
  fn(c.ta, c.tb, c.M, c.N, c.K, alpha, c.A.data(), c.lda, c.B.data(), c.ldb, beta, C.data(), c.ldc);
  double worst = 0;
  for (int64_t i = 0; i < c.M; i++) {
    for (int64_t j = 0; j < c.ldc; j++) {
      const float got = C[i * c.ldc + j];
      if (j >= c.N) {  // padding between rows must be untouched
        if (std::memcmp(&got, &c.C0[i * c.ldc + j], 4) != 0) return INFINITY;
        continue;
      }
      const double c0 = nan_c ? 0.0 : (double)c.C0[i * c.ldc + j];
      const double want = (double)alpha * c.P[i * c.N + j] + (beta == 0.0f ? 0.0 : (double)beta * c0);
      const double scale = std::fabs((double)alpha) * c.Pabs[i * c.N + j] + std::fabs((double)beta * c0) + 1e-30;
      if (!std::isfinite(got)) return INFINITY;
      const double e = std::fabs((double)got - want) / scale;
      if (e > worst) worst = e;
    }
  }
  return worst;
}

static int check_all() {
  const int64_t dims[] = {1, 3, 7, 17, 31, 33, 65, 129, 257, 300};
  const int64_t ks[] = {1, 3, 17, 64, 257, 300, 600};
  struct Big {
    int64_t M, N, K;
  } bigs[] = {{1000, 70, 520}, {600, 2100, 40}, {45, 3000, 33}, {2, 1500, 700}, {1500, 2, 700},
              {70, 90, 2100}, {1100, 40, 1030}, {31, 33, 3000}};
  int nfail = 0;
  long nrun = 0;
  double worst_by_isa[3] = {0, 0, 0};
  int nthreads_full = undo::num_threads();
  std::vector<Case> cases;
  auto run_set = [&](Case& c) {
    const double tol = 1e-6 * (4.0 + std::sqrt((double)c.K));
    for (const IsaEntry& e : kIsas) {
      if (!undo::isa_supported(e.isa)) continue;
      for (int th : {1, nthreads_full}) {
        undo::set_num_threads(th);
        struct Ab {
          float alpha, beta;
          bool nan_c;
        } abs_[] = {{1.0f, 0.0f, true}, {0.75f, 1.0f, false}, {-1.5f, 0.5f, false}, {1.0f, 1.0f, false}};
        for (const Ab& ab : abs_) {
          const double err = run_case(c, e.fn, ab.alpha, ab.beta, ab.nan_c);
          nrun++;
          if (err > worst_by_isa[(int)e.isa]) worst_by_isa[(int)e.isa] = err;
          if (!(err <= tol)) {
            if (nfail < 20)
              std::printf("FAIL %s threads=%d ta=%d tb=%d M=%ld N=%ld K=%ld alpha=%g beta=%g nan=%d: err %.3g (tol %.3g)\n",
                          e.name, th, c.ta, c.tb, (long)c.M, (long)c.N, (long)c.K, ab.alpha, ab.beta, ab.nan_c,
                          err, tol);
            nfail++;
          }
        }
      }
    }
    undo::set_num_threads(nthreads_full);
  };
  int pad = 0;
  for (int t = 0; t < 4; t++) {
    const bool ta = t & 2, tb = t & 1;
    for (int64_t M : dims)
      for (int64_t N : dims) {
        // all K for small M·N, a rotating subset otherwise (the reference is O(MNK) in double)
        for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
          const int64_t K = ks[ki];
          if (M * N > 4000 && (ki + (size_t)M + (size_t)N) % 3 != 0) continue;
          Case c;
          make_case(c, ta, tb, M, N, K, pad);
          pad = (pad + 1) % 3;
          run_set(c);
        }
      }
    for (const Big& b : bigs) {
      Case c;
      make_case(c, ta, tb, b.M, b.N, b.K, 1);
      run_set(c);
    }
  }
  // K = 0 and M/N = 0: C = beta·C, nothing
  for (const IsaEntry& e : kIsas) {
    if (!undo::isa_supported(e.isa)) continue;
    std::vector<float> C(5 * 9, NAN), D(5 * 9, 2.0f);
    float dummy = 0;
    e.fn(false, true, 5, 7, 0, 1.0f, &dummy, 1, &dummy, 1, 0.0f, C.data(), 9);
    e.fn(true, false, 5, 7, 0, 1.0f, &dummy, 1, &dummy, 1, 0.5f, D.data(), 9);
    bool ok = true;
    for (int i = 0; i < 5; i++)
      for (int j = 0; j < 9; j++) {
        if (j < 7 && (C[i * 9 + j] != 0.0f || D[i * 9 + j] != 1.0f)) ok = false;
        if (j >= 7 && (!std::isnan(C[i * 9 + j]) || D[i * 9 + j] != 2.0f)) ok = false;
      }
    std::vector<float> E(4, 3.0f);
    e.fn(false, false, 0, 2, 5, 1.0f, &dummy, 5, &dummy, 2, 0.0f, E.data(), 2);
    e.fn(false, false, 2, 0, 5, 1.0f, &dummy, 5, &dummy, 2, 0.0f, E.data(), 2);
    for (float v : E) ok = ok && v == 3.0f;
    if (!ok) {
      std::printf("FAIL %s: K=0 / empty shapes\n", e.name);
      nfail++;
    }
  }
  for (const IsaEntry& e : kIsas)
    if (undo::isa_supported(e.isa))
      std::printf("check %-8s max relative error %.3g\n", e.name, worst_by_isa[(int)e.isa]);
  std::printf("check: %ld gemm runs, %d failures\n", nrun, nfail);
  return nfail;
}

static double cpu_s() {  // process CPU time (user + system)
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
         1e-6 * (double)ru.ru_stime.tv_usec;
}
static double g_last_cpu_share = 0;  // CPU seconds per wall second during the best timed run
static double g_last_per_cpu = 0;    // GFLOP per CPU-second per thread (robust to other load for 1 thread)

static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// GFLOP/s of one gemm shape: best of 3 runs of ~run_s seconds each. beta = 1 when ta (dW accumulates).
static double bench_shape(GemmFn fn, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double run_s = 0.3) {
  std::vector<float> A((size_t)(M * K)), B((size_t)(K * N)), C((size_t)(M * N));
  for (auto& v : A) v = frand();
  for (auto& v : B) v = frand();
  const int64_t lda = ta ? M : K, ldb = tb ? K : N;
  const float beta = ta ? 1.0f : 0.0f;  // dW accumulates
  auto once = [&]() { fn(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, beta, C.data(), N); };
  once();
  double t0 = now_s();
  once();
  double one = now_s() - t0;
  int iters = (int)(run_s / (one > 1e-6 ? one : 1e-6)) + 1;
  double best = 1e30;
  for (int r = 0; r < 3; r++) {
    const double c0 = cpu_s();
    t0 = now_s();
    for (int i = 0; i < iters; i++) once();
    const double wall = now_s() - t0, t = wall / iters;
    const double cpu = cpu_s() - c0;
    if (t < best) best = t, g_last_cpu_share = cpu / wall;
    const double pc = 2.0 * (double)M * (double)N * (double)K * iters / cpu * 1e-9 * undo::num_threads();
    if (r == 0 || pc > g_last_per_cpu) g_last_per_cpu = pc;
  }
  return 2.0 * (double)M * (double)N * (double)K / best * 1e-9;
}

// One form at M = 4096 rows, K, N = d (tn: M = N = d, K = 4096).
static double bench_one(GemmFn fn, const char* form, int64_t d) {
  const int64_t R = 4096;
  if (!std::strcmp(form, "nt")) return bench_shape(fn, false, true, R, d, d);
  if (!std::strcmp(form, "nn")) return bench_shape(fn, false, false, R, d, d);
  return bench_shape(fn, true, false, d, d, R);
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "all";
  std::printf("threads %d, best isa %s\n", undo::num_threads(), undo::isa_name(undo::best_isa()));
  int fails = 0;
  if (!std::strcmp(mode, "shape") && argc > 7) {  // shape ISA ta tb M N K
    for (const IsaEntry& e : kIsas)
      if (!std::strcmp(argv[2], e.name)) {
        const double g = bench_shape(e.fn, std::atoi(argv[3]), std::atoi(argv[4]), std::atol(argv[5]),
                                     std::atol(argv[6]), std::atol(argv[7]));
        std::printf("%s ta=%s tb=%s M=%s N=%s K=%s: %.1f GFLOP/s (cpu %.2f, %.1f GFLOP/s per busy thread-set)\n",
                    e.name, argv[3], argv[4], argv[5], argv[6], argv[7], g, g_last_cpu_share, g_last_per_cpu);
      }
    return 0;
  }
  if (!std::strcmp(mode, "all") || !std::strcmp(mode, "check")) fails = check_all();
  if (!std::strcmp(mode, "all") || !std::strcmp(mode, "bench")) {
    const char* only_isa = argc > 2 ? argv[2] : nullptr;
    const char* only_form = argc > 3 ? argv[3] : nullptr;
    const int64_t only_d = argc > 4 ? std::atol(argv[4]) : 0;
    const char* forms[] = {"nt", "nn", "tn"};
    const int64_t ds[] = {256, 512, 1024, 2048};
    for (const IsaEntry& e : kIsas) {
      if (!undo::isa_supported(e.isa) || (only_isa && std::strcmp(only_isa, e.name))) continue;
      if (!only_isa && e.isa == Isa::generic) continue;  // slow; ask for it by name
      for (const char* f : forms) {
        if (only_form && std::strcmp(only_form, f)) continue;
        std::printf("%-7s %s", e.name, f);
        for (int64_t d : ds) {
          if (only_d && only_d != d) continue;
          const double g = bench_one(e.fn, f, d);
          std::printf("  d=%-4ld %7.1f (cpu %.2f)", (long)d, g, g_last_cpu_share);
          std::fflush(stdout);
        }
        std::printf("  GFLOP/s\n");
      }
    }
  }
  return fails ? 1 : 0;
}
