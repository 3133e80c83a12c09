// Host-side declarations shared by the CUDA kernel families (native/cuda/*.cu) and their callers (the N-API glue in
// native/cuda/napi/addon.cc and test/native/cuda_harness.cu). Plain C++: it compiles with g++ as well as nvcc.
//
// Conventions of every entry point in undo::cuda:
//   - pointers are device pointers (cudaMalloc; never managed memory), row-major as on the CPU;
//   - work is enqueued on `stream` and the call returns without synchronising; the return value is the launch
//     status (cudaGetLastError after the launches), never a sticky error from earlier work;
//   - the arithmetic follows the CPU twin (native/cpu/<family>.cc) in fp32 with the same formulas, so results
//     agree to ~1e-6 relative (Philox noise and AdamW: bit for bit, see random.cu / adamw.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace undo {
namespace cuda {

// Element type of a logits input: fp32, or bf16 (converted to fp32 on load; all math in fp32).
enum class DType : int32_t { f32 = 0, bf16 = 1 };

inline size_t dtype_size(DType t) { return t == DType::bf16 ? 2 : 4; }

}  // namespace cuda
}  // namespace undo
