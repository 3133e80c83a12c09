// Embedding lookup and gradient (see embedding.h). Compiled once per ISA.
#include "embedding.h"
#include "simd.h"

UNDO_ISA_BEGIN

void embedding_forward(int64_t rows, int64_t dim, const int32_t* ids, const float* table, float scale,
                       float* out) {
#pragma omp parallel for num_threads(num_threads()) schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; r++) {
    const float* src = table + (int64_t)ids[r] * dim;
    float* dst = out + r * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; i++) dst[i] = src[i] * scale;
  }
}

// Rows with the same id add into the same table row, so threads split the embedding dimension instead of
// the rows: every thread walks all rows for its own column range, race-free and deterministic.
void embedding_backward(int64_t rows, int64_t dim, const int32_t* ids, const float* dout, float scale,
                        float* dtable) {
  const int nt = rows * dim > 65536 ? num_threads() : 1;
  const int64_t per = ((dim + nt - 1) / nt + 15) / 16 * 16;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int t = 0; t < nt; t++) {
    const int64_t lo = (int64_t)t * per;
    const int64_t hi = lo + per < dim ? lo + per : dim;
    for (int64_t r = 0; r < rows && lo < hi; r++) {
      float* dst = dtable + (int64_t)ids[r] * dim;
      const float* src = dout + r * dim;
#pragma omp simd
      for (int64_t i = lo; i < hi; i++) dst[i] += src[i] * scale;
    }
  }
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
namespace undo {
void embedding_forward(int64_t rows, int64_t dim, const int32_t* ids, const float* table, float scale, float* out) {
  UNDO_DISPATCH(embedding_forward, rows, dim, ids, table, scale, out)
}
void embedding_backward(int64_t rows, int64_t dim, const int32_t* ids, const float* dout, float scale,
                        float* dtable) {
  UNDO_DISPATCH(embedding_backward, rows, dim, ids, dout, scale, dtable)
}
}  // namespace undo
#endif
