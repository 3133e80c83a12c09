// SGEMM on the GPU (see matmul.cuh): cuBLAS when available, else a 64×64-tiled kernel.
//
// cuBLAS is column-major. A row-major M×N matrix C with row stride ldc is, read column-major, the N×M matrix Cᵀ
// with leading dimension ldc, so C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ: cublasSgemm with the operands
// swapped (B first), m = N, n = M, and the same transpose flags (a row-major matrix read column-major is already
// transposed, so "no transpose" on the row-major side is CUBLAS_OP_N on the column-major side).
#include <mutex>
#include <string>
#include <vector>

#include "device_util.cuh"
#include "matmul.cuh"

#ifdef UNDO_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace undo {
namespace cuda {

// ---------------------------------------------------------------- tiled fallback
// Block tile 64×64 over C, K in steps of 16, 256 threads each computing a 4×4 micro-tile (rows ty + 16·i,
// columns tx + 16·j: conflict-free shared reads and coalesced C writes). Operands are staged transposed-as-needed
// in shared memory so both layouts of A and B use the same inner loop.
constexpr int TM = 64, TN = 64, TK = 16;

// Stages one operand's K-slice: S[kk][oo] = X(o0 + oo, k0 + kk), 0 outside O × K, where X(o, k) = X[k·ld + o] when
// kmajor (stored K×O) and X[o·ld + k] otherwise (stored O×K). A is (m, k) with kmajor = ta; B is (n, k) with
// kmajor = !tb. The index order follows memory, so consecutive threads read consecutive addresses.
template <int TO>
__device__ __forceinline__ void stage_tile(float (*S)[TO + 1], const float* __restrict__ X, int64_t ld, bool kmajor,
                                           int64_t o0, int64_t O, int64_t k0, int64_t K) {
  for (int e = threadIdx.x; e < TO * TK; e += 256) {
    int oo, kk;
    if (kmajor) {  // consecutive threads along o
      oo = e % TO;
      kk = e / TO;
    } else {       // consecutive threads along k
      kk = e % TK;
      oo = e / TK;
    }
    const int64_t go = o0 + oo, gk = k0 + kk;
    float v = 0.0f;
    if (go < O && gk < K) v = kmajor ? X[gk * ld + go] : X[go * ld + gk];
    S[kk][oo] = v;
  }
}

__global__ void __launch_bounds__(256) sgemm_tiled_kernel(bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                                                          float alpha, const float* __restrict__ A, int64_t lda,
                                                          const float* __restrict__ B, int64_t ldb, float beta,
                                                          float* __restrict__ C, int64_t ldc) {
  __shared__ float As[TK][TM + 1];  // As[k][m] = op(A)[m0 + m, k0 + k]
  __shared__ float Bs[TK][TN + 1];  // Bs[k][n] = op(B)[k0 + k, n0 + n]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t m0 = (int64_t)blockIdx.y * TM, n0 = (int64_t)blockIdx.x * TN;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += TK) {
    // 64×16 = 1024 elements per operand, 4 per thread
    stage_tile<TM>(As, A, lda, ta, m0, M, k0, K);   // A stored K×M when ta, else M×K
    stage_tile<TN>(Bs, B, ldb, !tb, n0, N, k0, K);  // B stored N×K when tb, else K×N
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TK; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn >= N) continue;
      float* c = C + gm * ldc + gn;
      *c = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
    }
  }
}

// C ← beta·C (K = 0 or alpha = 0), not reading C when beta = 0
__global__ void scale_c_kernel(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  const int64_t total = M * N;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    float* c = C + (e / N) * ldc + e % N;
    *c = beta == 0.0f ? 0.0f : beta * *c;
  }
}

cudaError_t gemm_tiled(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  if ((M + TM - 1) / TM > 65535) return cudaErrorInvalidValue;
  if (K <= 0 || alpha == 0.0f) {
    scale_c_kernel<<<grid_for(M * N, 256), 256, 0, s>>>(M, N, beta, C, ldc);
  } else {
    const dim3 grid((unsigned)((N + TN - 1) / TN), (unsigned)((M + TM - 1) / TM));
    sgemm_tiled_kernel<<<grid, 256, 0, s>>>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------- cuBLAS

static std::string& last_error() {
  static std::string e;
  return e;
}
const char* gemm_last_error() { return last_error().c_str(); }

#ifdef UNDO_HAVE_CUBLAS
const char* gemm_backend() { return "cublas"; }

// One handle per device, created on first use (the glue calls from the JS thread; the mutex covers other callers).
static cublasStatus_t handle_for_current_device(cublasHandle_t* out) {
  static std::mutex mu;
  static std::vector<cublasHandle_t> handles;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return CUBLAS_STATUS_NOT_INITIALIZED;
  std::lock_guard<std::mutex> lock(mu);
  if ((int)handles.size() <= dev) handles.resize((size_t)dev + 1, nullptr);
  if (!handles[(size_t)dev]) {
    cublasHandle_t h;
    const cublasStatus_t st = cublasCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);  // fp32 parity: no TF32, no reduced-precision reductions
    handles[(size_t)dev] = h;
  }
  *out = handles[(size_t)dev];
  return CUBLAS_STATUS_SUCCESS;
}

cudaError_t gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  if (K <= 0 || alpha == 0.0f) return gemm_tiled(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, s);
  const int64_t lim = 2147483647;
  if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim)
    return gemm_tiled(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, s);
  cublasHandle_t h;
  cublasStatus_t st = handle_for_current_device(&h);
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(h, s);
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha,
                     B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
  if (st != CUBLAS_STATUS_SUCCESS) {
    last_error() = std::string("cuBLAS: ") + cublasGetStatusString(st);
    return cudaErrorUnknown;
  }
  return cudaGetLastError();
}
#else
const char* gemm_backend() { return "tiled"; }

cudaError_t gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s) {
  return gemm_tiled(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, s);
}
#endif

}  // namespace cuda
}  // namespace undo
