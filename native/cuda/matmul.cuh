// Single-precision GEMM on the GPU in the three forms training needs (twin of native/cpu/matmul.h), row-major:
//   C[M×N] = alpha · op(A) · op(B) + beta · C
// op(A) is M×K: A is stored M×K (row stride lda) when !ta, K×M when ta; op(B) is K×N: B stored K×N (ldb) when
// !tb, N×K when tb. beta = 0 overwrites C without reading it.
// Backend: cuBLAS (cublasSgemm, fp32, no TF32) when the build found it (UNDO_HAVE_CUBLAS), else a hand-written
// shared-memory tiled kernel; gemm_tiled is always there (tests compare the two).
#pragma once
#include "common.cuh"

namespace undo {
namespace cuda {

cudaError_t gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s);
cudaError_t gemm_tiled(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s);
const char* gemm_backend();  // "cublas" or "tiled"
// The message of the last cuBLAS failure (gemm then returns cudaErrorUnknown), or "".
const char* gemm_last_error();

}  // namespace cuda
}  // namespace undo
