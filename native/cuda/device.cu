// Device discovery (see device.cuh).
#include <cuda_runtime.h>

#include "device.cuh"

namespace undo {
namespace cuda {

std::string error_string(cudaError_t e) {
  const char* name = cudaGetErrorName(e);
  const char* msg = cudaGetErrorString(e);
  return std::string(name ? name : "cudaError") + ": " + (msg ? msg : "unknown");
}

int device_count(std::string* reason) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (reason) *reason = error_string(e);
    return 0;
  }
  if (n <= 0 && reason) *reason = "the CUDA runtime sees no device";
  return n;
}

DeviceInfo device_info() {
  DeviceInfo d;
  d.count = device_count(&d.reason);
  cudaDriverGetVersion(&d.driver_version);
  cudaRuntimeGetVersion(&d.runtime_version);
  cudaGetLastError();
  if (d.count <= 0) return d;
  if (cudaGetDevice(&d.device) != cudaSuccess) d.device = 0;
  cudaDeviceProp p;
  const cudaError_t e = cudaGetDeviceProperties(&p, d.device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    d.reason = error_string(e);
    d.count = 0;
    return d;
  }
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.sm_count = p.multiProcessorCount;
  d.total_mem = p.totalGlobalMem;
  if (cudaMemGetInfo(&d.free_mem, &d.total_mem) != cudaSuccess) cudaGetLastError();
  std::string why;
  d.kernels_run = device_self_test(&why);
  if (!d.kernels_run) d.reason = why;
  return d;
}

__global__ void self_test_kernel(int* out) { out[threadIdx.x] = (int)threadIdx.x * 3 + 1; }

bool device_self_test(std::string* reason) {
  int* d = nullptr;
  cudaError_t e = cudaMalloc(&d, 32 * sizeof(int));
  if (e == cudaSuccess) {
    self_test_kernel<<<1, 32>>>(d);
    e = cudaGetLastError();
  }
  int h[32] = {};
  if (e == cudaSuccess) e = cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
  if (d) cudaFree(d);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (reason) *reason = error_string(e);
    return false;
  }
  for (int i = 0; i < 32; i++)
    if (h[i] != i * 3 + 1) {
      if (reason) *reason = "the self-test kernel returned wrong values";
      return false;
    }
  return true;
}

}  // namespace cuda
}  // namespace undo
