// Timing harness for native/cpu/kd_losses.cc without Node: full-teacher and top-k losses at the bench's
// shapes, against a threaded row copy of the same bytes measured in the same run (rounds interleaved).
//
// Build (from the repository root):
//   ( set -e; mkdir -p build/harness
//     for isa in generic:0 avx2:1 avx512:2; do n=${isa%:*}; id=${isa#*:}
//       case $n in generic) f="";; avx2) f="-mavx2 -mfma -mf16c";;
//         avx512) f="-mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c -mprefer-vector-width=512";; esac
//       g++ -std=c++17 -O3 -fopenmp -fno-math-errno -fno-trapping-math -fPIC -Wall -Wno-unused-function \
//         -Wno-unknown-pragmas -Inative/cpu -DUNDO_ISA=$n -DUNDO_ISA_ID=$id $f \
//         -c native/cpu/kd_losses.cc -o build/harness/kd_$n.o
//     done
//     g++ -std=c++17 -O2 -fopenmp -Inative/cpu native/cpu/cpu_features.cc test/native/kd_harness.cc \
//       build/harness/kd_*.o -o build/harness/kd_harness )
//
// Run:  build/harness/kd_harness [isa] [loss ...]     (isa generic|avx2|avx512, default avx512; losses
//       default rkl jsd tvd skl srkl fkl). Rows 4096 at V 32768, 1024 at V 131072; bytes = read student +
//       teacher, write gradient. UNDO_THREADS sets the thread count.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "isa.h"
#include "kd_losses.h"

namespace undo {
void set_num_threads(int n);
}

typedef undo::KdResult (*KdFn)(const undo::KdArgs&);

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  std::string isa = argc > 1 ? argv[1] : "avx512";
  KdFn fn = isa == "generic" ? &undo::generic::kd_loss : isa == "avx2" ? &undo::avx2::kd_loss : &undo::avx512::kd_loss;
  std::vector<std::string> losses;
  for (int i = 2; i < argc; i++) losses.push_back(argv[i]);
  if (losses.empty()) losses = {"rkl", "jsd", "tvd", "skl", "srkl", "fkl"};
  const int threads = getenv("UNDO_THREADS") ? atoi(getenv("UNDO_THREADS")) : omp_get_num_procs();
  undo::set_num_threads(threads);
  for (int64_t V : {32768L, 131072L}) {
    const int64_t rows = V == 32768 ? 4096 : 1024, n = rows * V;
    std::vector<float> z((size_t)n), y((size_t)n), g((size_t)n), rl((size_t)rows);
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < n; i++) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      const double u1 = ((s >> 11) + 0.5) / 9007199254740992.0;
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      const double u2 = ((s >> 11) + 0.5) / 9007199254740992.0;
      const double r = std::sqrt(-2 * std::log(u1)) * 2.0;
      z[(size_t)i] = (float)(r * std::cos(6.283185307179586 * u2));
      y[(size_t)i] = (float)(r * std::sin(6.283185307179586 * u2));
    }
    auto copy = [&]() {
#pragma omp parallel for num_threads(threads)
      for (int64_t r = 0; r < rows; r++) std::memcpy(&g[(size_t)(r * V)], &z[(size_t)(r * V)], (size_t)V * 4);
    };
    std::vector<double> tc, tl[16];
    for (int round = 0; round < 5; round++) {
      double t0 = now();
      copy();
      tc.push_back(now() - t0);
      for (size_t li = 0; li < losses.size(); li++) {
        undo::KdArgs a;
        if (!undo::kd_parse_kind(losses[li].c_str(), &a.kind)) {
          fprintf(stderr, "unknown loss %s\n", losses[li].c_str());
          return 2;
        }
        a.rows = rows, a.vocab = V, a.student = z.data(), a.teacher = y.data(), a.row_loss = rl.data(), a.grad = g.data();
        a.beta = 0.5, a.alpha = 0.1;
        t0 = now();
        undo::KdResult res = fn(a);
        tl[li].push_back(now() - t0);
        if (res.status != undo::KdStatus::ok) {
          fprintf(stderr, "%s: status %d %s\n", losses[li].c_str(), (int)res.status, res.message);
          return 1;
        }
      }
    }
    const double cbest = *std::min_element(tc.begin(), tc.end());
    const double cgbs = 2.0 * n * 4 / cbest / 1e9;
    printf("V=%ld rows=%ld threads=%d isa=%s copy %.1f GB/s\n", (long)V, (long)rows, threads, isa.c_str(), cgbs);
    for (size_t li = 0; li < losses.size(); li++) {
      const double best = *std::min_element(tl[li].begin(), tl[li].end());
      const double gbs = 3.0 * n * 4 / best / 1e9;
      printf("  %-5s %7.1f ms  %5.1f GB/s  %.2f of copy  %.2f ns/element/thread\n", losses[li].c_str(), best * 1e3,
             gbs, gbs / cgbs, best * 1e9 * threads / (double)n);
    }
  }
  return 0;
}
