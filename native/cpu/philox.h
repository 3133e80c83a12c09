// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the FNV-1a stream id
// of a tensor name: the one definition the CPU (random.cc) and the GPU (native/cuda/random.cu) both compile, so
// their counter streams are the same by construction. Plain integer arithmetic, no ISA macros.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define UNDO_PHILOX_FN static __host__ __device__ __forceinline__
#else
#define UNDO_PHILOX_FN static inline
#endif

namespace undo {

// Four 32-bit words for (key = seed, counter = (index, stream)).
UNDO_PHILOX_FN void philox4x32_10(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32), c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int round = 0; round < 10; round++) {
    const uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    const uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = (uint32_t)p1;
    const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = (uint32_t)p0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// FNV-1a 64 of a tensor name: the Philox stream of that tensor's noise.
static inline uint64_t philox_stream_of(const char* name) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char* p = (const unsigned char*)name; *p; p++) {
    h ^= *p;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace undo

#undef UNDO_PHILOX_FN
