// Single-precision GEMM in the three forms training needs, on row-major matrices:
//   C[M×N] = alpha · op(A) · op(B) + beta · C
// op(A) is M×K: A is stored M×K (row stride lda) when !ta, K×M when ta.
// op(B) is K×N: B is stored K×N (row stride ldb) when !tb, N×K when tb.
// Forward y = x·Wᵀ is gemm(false, true, ...); dX = dY·W is gemm(false, false, ...);
// dW += dYᵀ·X is gemm(true, false, ..., beta = 1).
// beta = 0 overwrites C without reading it (C may hold NaN). Packs operands, register-blocked micro-kernel
// per ISA, cache blocking, OpenMP over num_threads().
#pragma once
#include <cstdint>
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

// The bias of a linear layer y = x·Wᵀ + b over rows × n outputs: bias_add adds b to every row of y;
// bias_grad adds the column sums of dy to db (threads split the columns: deterministic, race-free).
void bias_add(int64_t rows, int64_t n, const float* b, float* y);
void bias_grad(int64_t rows, int64_t n, const float* dy, float* db);
}  // namespace undo
