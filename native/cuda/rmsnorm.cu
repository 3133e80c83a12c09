// RMSNorm forward/backward on the GPU (see rmsnorm.cuh). One block per row for the row-wise parts; the weight
// gradient is a column reduction over row chunks (partials in `work`, then summed in chunk order).
#include "device_util.cuh"
#include "rmsnorm.cuh"

namespace undo {
namespace cuda {

static int row_threads(int64_t dim) { return dim >= 2048 ? 512 : dim >= 512 ? 256 : 128; }

__global__ void rmsnorm_fwd_kernel(int64_t dim, const float* __restrict__ x, const float* __restrict__ w, float eps,
                                   float off, float* __restrict__ y, float* __restrict__ rstd) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * dim;
  float* yr = y + r * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  const float s = 1.0f / sqrtf(ss / (float)dim + eps);
  if (rstd && threadIdx.x == 0) rstd[r] = s;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * s * (off + w[i]);
}

cudaError_t rmsnorm_forward(int64_t rows, int64_t dim, const float* x, const float* w, float eps, bool unit_offset,
                            float* y, float* rstd, cudaStream_t s) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  rmsnorm_fwd_kernel<<<(unsigned)rows, row_threads(dim), 0, s>>>(dim, x, w, eps, unit_offset ? 1.0f : 0.0f, y, rstd);
  return cudaGetLastError();
}

// dx_i = s·g_i·dy_i − x_i·s³/dim · Σ_j dy_j·g_j·x_j
__global__ void rmsnorm_bwd_dx_kernel(int64_t dim, const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ rstd, float off, const float* __restrict__ dy,
                                      float* __restrict__ dx, bool accumulate) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * dim;
  const float* dyr = dy + r * dim;
  float* dxr = dx + r * dim;
  const float s = rstd[r];
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dot += dyr[i] * (off + w[i]) * xr[i];
  dot = block_sum(dot, sh);
  const float c = dot * s * s * s / (float)dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = s * (off + w[i]) * dyr[i] - xr[i] * c;
    dxr[i] = accumulate ? dxr[i] + v : v;
  }
}

static const int kDwRowsPerChunk = 64;
static int64_t dw_chunks(int64_t rows) {
  int64_t c = (rows + kDwRowsPerChunk - 1) / kDwRowsPerChunk;
  return c < 1 ? 1 : (c > 256 ? 256 : c);
}

size_t rmsnorm_backward_work_floats(int64_t rows, int64_t dim) { return (size_t)(dw_chunks(rows) * dim); }

// part[c·dim + i] = Σ_{rows r of chunk c} dy[r,i]·x[r,i]·rstd[r]
__global__ void rmsnorm_bwd_dw_partial(int64_t rows, int64_t dim, int64_t rows_per_chunk, const float* __restrict__ x,
                                       const float* __restrict__ rstd, const float* __restrict__ dy,
                                       float* __restrict__ part) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= dim) return;
  const int64_t c = blockIdx.y;
  const int64_t r0 = c * rows_per_chunk, r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; r++) acc += dy[r * dim + i] * x[r * dim + i] * rstd[r];
  part[c * dim + i] = acc;
}

__global__ void rmsnorm_bwd_dw_final(int64_t dim, int64_t chunks, const float* __restrict__ part, float* __restrict__ dw) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= dim) return;
  float acc = 0.0f;
  for (int64_t c = 0; c < chunks; c++) acc += part[c * dim + i];
  dw[i] += acc;
}

cudaError_t rmsnorm_backward(int64_t rows, int64_t dim, const float* x, const float* w, const float* rstd,
                             bool unit_offset, const float* dy, float* dx, bool accumulate_dx, float* dw, float* work,
                             cudaStream_t s) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  const float off = unit_offset ? 1.0f : 0.0f;
  rmsnorm_bwd_dx_kernel<<<(unsigned)rows, row_threads(dim), 0, s>>>(dim, x, w, rstd, off, dy, dx, accumulate_dx);
  if (dw) {
    if (!work) return cudaErrorInvalidValue;
    const int64_t chunks = dw_chunks(rows);
    const int64_t per = (rows + chunks - 1) / chunks;
    const dim3 grid((unsigned)((dim + 255) / 256), (unsigned)chunks);
    rmsnorm_bwd_dw_partial<<<grid, 256, 0, s>>>(rows, dim, per, x, rstd, dy, work);
    rmsnorm_bwd_dw_final<<<(unsigned)((dim + 255) / 256), 256, 0, s>>>(dim, chunks, work, dw);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace undo
