// Run-time ISA choice and the thread count (see isa.h).
#include "isa.h"

#include <cstdlib>
#include <cstring>
#include <thread>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace undo {
namespace {

bool cpu_has(Isa isa) {
#if defined(UNDO_X86)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::generic: return true;
    case Isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
#else
  return isa == Isa::generic;
#endif
}

Isa initial_isa() {
  Isa best = best_isa();
  if (const char* env = std::getenv("UNDO_ISA")) {
    Isa want;
    if (parse_isa(env, &want) && cpu_has(want)) return want;
  }
  return best;
}

int initial_threads() {
  if (const char* env = std::getenv("UNDO_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? (int)hc : 1;
}

Isa g_isa = initial_isa();
int g_threads = initial_threads();

}  // namespace

Isa best_isa() {
  if (cpu_has(Isa::avx512)) return Isa::avx512;
  if (cpu_has(Isa::avx2)) return Isa::avx2;
  return Isa::generic;
}
bool isa_supported(Isa isa) { return cpu_has(isa); }
Isa active_isa() { return g_isa; }
void set_isa(Isa isa) { g_isa = isa; }
const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}
bool parse_isa(const char* name, Isa* out) {
  if (!std::strcmp(name, "avx512")) { *out = Isa::avx512; return true; }
  if (!std::strcmp(name, "avx2")) { *out = Isa::avx2; return true; }
  if (!std::strcmp(name, "generic")) { *out = Isa::generic; return true; }
  return false;
}
int num_threads() { return g_threads; }
void set_num_threads(int n) { g_threads = n > 0 ? n : 1; }

}  // namespace undo
