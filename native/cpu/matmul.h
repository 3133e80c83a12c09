// Single-precision GEMM in the three forms training needs, on row-major matrices:
//   C[M×N] = alpha · op(A) · op(B) + beta · C
// op(A) is M×K: A is stored M×K (row stride lda) when !ta, K×M when ta.
// op(B) is K×N: B is stored K×N (row stride ldb) when !tb, N×K when tb.
// Forward y = x·Wᵀ is gemm(false, true, ...); dX = dY·W is gemm(false, false, ...);
// dW += dYᵀ·X is gemm(true, false, ..., beta = 1).
// beta = 0 overwrites C without reading it (C may hold NaN). Packs operands, register-blocked micro-kernel
// per ISA, cache blocking, OpenMP over num_threads().
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
#include "isa.h"

namespace undo {
#define UNDO_MATMUL_DECL(ns)                                                                   \
  namespace ns {                                                                               \
  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,    \
            int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);      \
  }
UNDO_EACH_ISA(UNDO_MATMUL_DECL)
#undef UNDO_MATMUL_DECL

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// bf16 GEMM with fp32 accumulation, the model's bf16 compute path: C = bf16(alpha·op(A))·bf16(op(B)) + beta·C,
// operands rounded to nearest even, products and sums in fp32 (what VDPBF16PS computes). On CPUs with
// AVX512-BF16 and the avx512 ISA active it runs native/cpu/matmul_bf16.cc; otherwise the same arithmetic
// is emulated (rounded copies of the operands through the fp32 GEMM), slower but equal up to summation
// order. Products of at most 4 rows (decoding; memory-bound) run in fp32 on every path.
void gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
bool bf16_native();      // whether gemm_bf16 now runs the AVX512-BF16 kernel

// op(B) of gemm_bf16 packed once, for a B that many products share while it does not change (the LM head over
// the row chunks of one fused-head call): pack() converts and lays it out for the kernel when bf16_native(),
// gemm_bf16_packed then skips B's packing; results equal gemm_bf16's. When the native kernel is off, or for
// products of at most 4 rows, gemm_bf16_packed is gemm_bf16 on the original B (which must still be there).
struct Bf16Packed {
  std::vector<uint32_t> words;
  const float* B = nullptr;
  int64_t N = 0, K = 0, ldb = 0;
  bool tb = false, packed = false;
  void pack(bool tb, int64_t N, int64_t K, const float* B, int64_t ldb);
  void clear() { B = nullptr, packed = false; }
  // the kernel loads panels with aligned 64-byte loads: words holds 16 spare words, data() is the aligned start
  const uint32_t* data() const { return aligned(const_cast<uint32_t*>(words.data())); }
  static uint32_t* aligned(uint32_t* p) { return (uint32_t*)(((uintptr_t)p + 63) & ~(uintptr_t)63); }
};
void gemm_bf16_packed(const Bf16Packed& Bp, bool ta, int64_t M, float alpha, const float* A, int64_t lda, float beta,
                      float* C, int64_t ldc);
float bf16_round(float x);  // round to the nearest bf16 (ties to even), as fp32
namespace bf16k {
bool compiled();         // the AVX512-BF16 kernel was built (binding.gyp target undo_kernels_bf16)
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads);
// op(B) [K×N] packed once in the kernel's bf16 panel layout, for a B many products share (the LM head over its
// row chunks): packed_words(N, K) u32 words, filled by pack_b, used by gemm_packed (same result as gemm).
size_t packed_words(int64_t N, int64_t K);
void pack_b(bool tb, int64_t N, int64_t K, const float* B, int64_t ldb, uint32_t* out, int threads);
void gemm_packed(bool ta, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const uint32_t* Bp, float beta, float* C, int64_t ldc, int threads);
}

// The bias of a linear layer y = x·Wᵀ + b over rows × n outputs: bias_add adds b to every row of y;
// bias_grad adds the column sums of dy to db (threads split the columns: deterministic, race-free).
void bias_add(int64_t rows, int64_t n, const float* b, float* y);
void bias_grad(int64_t rows, int64_t n, const float* dy, float* db);
}  // namespace undo
