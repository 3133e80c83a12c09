// ISA dispatch. Every kernel family (matmul.cc, attention.cc, ...) is compiled once per instruction set
// (binding.gyp targets undo_kernels_generic / _avx2 / _avx512), each time with UNDO_ISA naming the
// namespace its code lands in: undo::generic, undo::avx2, undo::avx512. The family header declares the
// functions in every ISA namespace (UNDO_EACH_ISA) plus an undo:: entry point that dispatches on the ISA
// chosen at run time (cpuid, or forced with UNDO_ISA=generic|avx2|avx512 / setIsa()).
//
// Rules for code compiled per ISA: keep it free of STL templates and non-static inline functions (their
// weak symbols could be merged across ISAs and run AVX-512 code on a CPU without it). Use `static inline`
// helpers, raw pointers, and OpenMP for threads.
#pragma once
#include <cstdint>

namespace undo {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

Isa active_isa();                // the ISA kernels run with now
Isa best_isa();                  // the best one this CPU (and OS) supports
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);
bool parse_isa(const char* name, Isa* out);
void set_isa(Isa isa);           // caller checks isa_supported first

int num_threads();               // threads a kernel may use (UNDO_THREADS or setThreads, default all cores)
void set_num_threads(int n);
// Rows per block of a reduction over rows (e.g. a norm's weight gradient Σ_rows): each block's partial sum
// is formed in row order and the partials are added in block order. The blocks depend on the row count only
// (at least 32 rows, at most 64 blocks), so the sum is bit-identical on any number of threads.
inline int64_t reduction_row_block(int64_t rows) {
  const int64_t per = (rows + 63) / 64;
  return per < 32 ? 32 : per;
}

}  // namespace undo

#if defined(__x86_64__) || defined(_M_X64)
#define UNDO_X86 1
#define UNDO_EACH_ISA(M) M(generic) M(avx2) M(avx512)
#define UNDO_DISPATCH(fn, ...)                                            \
  switch (::undo::active_isa()) {                                         \
    case ::undo::Isa::avx512: return ::undo::avx512::fn(__VA_ARGS__);     \
    case ::undo::Isa::avx2: return ::undo::avx2::fn(__VA_ARGS__);         \
    default: return ::undo::generic::fn(__VA_ARGS__);                     \
  }
#else
#define UNDO_EACH_ISA(M) M(generic)
#define UNDO_DISPATCH(fn, ...) return ::undo::generic::fn(__VA_ARGS__);
#endif

// Inside a per-ISA translation unit.
#ifdef UNDO_ISA
#define UNDO_ISA_BEGIN namespace undo { namespace UNDO_ISA {
#define UNDO_ISA_END } }
#define UNDO_STR2(x) #x
#define UNDO_STR(x) UNDO_STR2(x)
// True in exactly one of the per-ISA compilations: the place for the dispatching entry points.
#define UNDO_ISA_IS_GENERIC (UNDO_ISA_ID == 0)
#endif
