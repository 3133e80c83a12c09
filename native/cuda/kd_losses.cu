// Distillation / unlearning loss kernels on the GPU (see kd_losses.cuh; the maths is in native/cpu/kd_losses.h).
//
// One block of KD_THREADS threads per row. With raw logits x and temperature T a distribution is kept as (M, s):
// M = the row max, s = Σ exp((x − M)/T), so log-probabilities are (x − M)/T − log s, and the difference of two
// log-probabilities is taken on centred logits, ((y − M_t) − (z − M_s))/T − (log s_t − log s_s), which keeps the
// small differences of large logits (±1e4) as the CPU does.
//   pass 1  online (max, sum) per thread over a strided slice, then combined across the block (fixed order);
//   pass 2  per column q (and p): the loss terms and, for fkl/taid/ce/maxent, the gradient;
//   pass 3  for rkl/jsd/tvd/skl/srkl/entropy, whose gradient needs a row sum from pass 2, the gradient (the
//           per-column quantities are recomputed from the logits rather than stored: no scratch rows).
// Top-k teachers: the k ids of a row are marked in a shared-memory bitmap (catching repeats), pass 1 sums the
// student's mass outside them (the tail, summed directly) against the row max, the k + 1 bucket distributions
// are handled in double by the whole block, and pass 2 writes coef·q outside the ids and the bucket gradients
// on them.
#include <climits>
#include <cmath>
#include <cstring>

#include "device_util.cuh"
#include "kd_losses.cuh"

namespace undo {
namespace cuda {

static const int KD_THREADS = 512;

// Per-call device workspace: the totals, the first bad rows, then one status per row.
struct KdWork {
  double loss;
  long long counted;
  unsigned long long first_target_row;  // ULLONG_MAX: none
  unsigned long long first_id_row;
};
static const size_t kKdWorkHeader = 32;
static_assert(sizeof(KdWork) == kKdWorkHeader, "KdWork layout");

size_t kd_work_bytes(int64_t rows) { return kKdWorkHeader + (size_t)(rows > 0 ? rows : 1) * sizeof(int2); }

// Everything a row needs, computed once on the host (as the CPU's KdCtx).
struct KdDev {
  int32_t kind;       // after the endpoint substitutions
  int32_t taid_mode;  // 0: target = teacher, 1: target = student (loss 0), 2: mixed
  bool topk, bucket, rkl_renorm, uses_targets, mean;
  int64_t rows, V, Vv, k;
  const void* student;
  const void* teacher;
  const int32_t* ids;
  const float* lps;
  const int32_t* targets;
  int32_t ignore_index;
  const uint8_t* mask;
  float iT, c2;  // 1/T, log2(e)/T
  double iTd, s2, grad_scale;
  float w, wbar, mixc, mixlogc, mixflip, ib, ib1;
  double wd, wbard, lw, lw1;
  float taid_t, taid_omt;
  float* row_loss;
  float* grad;
  KdWork* work;
  int2* status;
};

enum : int32_t {
  K_FKL = (int32_t)KdKind::fkl,
  K_RKL = (int32_t)KdKind::rkl,
  K_JSD = (int32_t)KdKind::jsd,
  K_TVD = (int32_t)KdKind::tvd,
  K_SKL = (int32_t)KdKind::skl,
  K_SRKL = (int32_t)KdKind::srkl,
  K_TAID = (int32_t)KdKind::taid,
  K_CE = (int32_t)KdKind::ce,
  K_MAXENT = (int32_t)KdKind::maxent,
  K_ENTROPY = (int32_t)KdKind::entropy,
};

// ---------------------------------------------------------------- row bookkeeping

__device__ __forceinline__ bool row_skipped(const KdDev& a, int64_t r, int32_t* g) {
  if (a.mask && !a.mask[r]) return true;
  if (a.uses_targets) {
    const int32_t t = a.targets[r];
    *g = t;
    if (t == a.ignore_index) return true;
    if (t < 0 || t >= a.Vv) return true;  // reported by kd_count_kernel; never read out of bounds
  }
  return false;
}

__device__ __forceinline__ double row_grad_scale(const KdDev& a) {
  const long long c = a.work->counted;
  const double norm = a.mean ? (c > 0 ? 1.0 / (double)c : 0.0) : 1.0;
  return a.grad_scale * norm;
}

// One block: counts the rows, checks targets, initialises the workspace header.
__global__ void kd_count_kernel(KdDev a) {
  __shared__ long long sh[32];
  if (threadIdx.x == 0) {
    a.work->first_target_row = ULLONG_MAX;
    a.work->first_id_row = ULLONG_MAX;
  }
  __syncthreads();
  long long n = 0;
  for (int64_t r = threadIdx.x; r < a.rows; r += blockDim.x) {
    if (a.mask && !a.mask[r]) continue;
    if (a.uses_targets) {
      const int32_t t = a.targets[r];
      if (t == a.ignore_index) continue;
      if (t < 0 || t >= a.Vv) {
        a.status[r] = make_int2((int)KdStatus::bad_target, t);
        atomicMin(&a.work->first_target_row, (unsigned long long)r);
        continue;
      }
    }
    n++;
  }
  n = block_sum(n, sh);
  if (threadIdx.x == 0) a.work->counted = n;
}

// One block: the total, Σ row_loss in a fixed order, scaled as the CPU does.
__global__ void kd_total_kernel(KdDev a) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int64_t r = threadIdx.x; r < a.rows; r += blockDim.x) acc += (double)a.row_loss[r];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) {
    const long long c = a.work->counted;
    const double norm = a.mean ? (c > 0 ? 1.0 / (double)c : 0.0) : 1.0;
    a.work->loss = a.grad_scale * acc * norm;
  }
}

// ---------------------------------------------------------------- mixtures (as the CPU's kd_mix_direct / _other)

__device__ __forceinline__ float mix_direct(float p, float q, float c, float flip) {
  const float s = flip > 0.5f ? p : q, o = flip > 0.5f ? q : p;
  return -log1pf(c * ((o - s) / s));
}
__device__ __forceinline__ float mix_other(float direct, float p, float q, float delta, float logc, float flip) {
  const float s = flip > 0.5f ? p : q;
  return s > 0.0f ? (flip > 0.5f ? direct - delta : direct + delta) : -logc;
}
// The skew KLs' log-ratio to their mixture m: log p − log m when WantP (skl), else log q − log m (srkl); the side
// that flip picks is direct, the other is derived from it.
template <bool WantP>
__device__ __forceinline__ float mix_log(float p, float q, float delta, float c, float logc, float flip) {
  const float dd = mix_direct(p, q, c, flip), od = mix_other(dd, p, q, delta, logc, flip);
  return WantP ? (flip > 0.5f ? dd : od) : (flip > 0.5f ? od : dd);
}

// ---------------------------------------------------------------- full teacher (or none)

template <typename TIn>
struct Row {
  const TIn* z;
  const TIn* y;  // null when the loss has no teacher
  bool mixT;     // TAID: target (1 − t)·z + t·y
  float tt, omt;
  float iT, c2;
  float ms, mt, ls, inv_ss, inv_st, dL;  // dL = log s_t − log s_s

  struct El {
    float x, q, lq, p, dl;  // dl = log p − log q
  };
  __device__ __forceinline__ float teacher_at(int64_t i, float x) const {
    const float yv = load_f(y, i);
    return mixT ? omt * x + tt * yv : yv;
  }
  __device__ __forceinline__ El at(int64_t i) const {
    El e;
    e.x = load_f(z, i);
    const float zc = e.x - ms;
    e.q = exp2f(zc * c2) * inv_ss;
    e.lq = zc * iT - ls;
    if (y) {
      const float yc = teacher_at(i, e.x) - mt;
      e.p = exp2f(yc * c2) * inv_st;
      e.dl = (yc - zc) * iT - dL;
    } else {
      e.p = 0.0f;
      e.dl = 0.0f;
    }
    return e;
  }
};

// jsd's two log-ratios dq = log q − log m, dp = log p − log m (the small side by log1p, the other by ±δ)
__device__ __forceinline__ void jsd_logs(float q, float p, float dl, float mc, float mlc, float flip, float* dq,
                                         float* dp) {
  if (flip < 0.5f) {
    *dq = -log1pf(mc * ((p - q) / q));
    *dp = q > 0.0f ? *dq + dl : -mlc;
  } else {
    *dp = -log1pf(mc * ((q - p) / p));
    *dq = p > 0.0f ? *dp - dl : -mlc;
  }
}

// pass 2 for one kind: loss terms (acc), the row sum S (accS), and the gradient where it needs no row sum.
template <int K, typename TIn>
__device__ __forceinline__ void full_pass2(const KdDev& a, const Row<TIn>& R, float* d, int32_t g, float C, float Cu,
                                           float* acc_out, float* accS_out) {
  float acc = 0.0f, accS = 0.0f;
  const float mc = a.mixc, mlc = a.mixlogc, flip = a.mixflip, w = a.w, wbar = a.wbar;
  for (int64_t i = threadIdx.x; i < a.Vv; i += blockDim.x) {
    const typename Row<TIn>::El e = R.at(i);
    const float q = e.q, p = e.p;
    if constexpr (K == K_FKL || K == K_TAID) {
      acc += p > 0.0f ? p * e.dl : 0.0f;
      if (d) d[i] = C * (q - p);
    } else if constexpr (K == K_RKL) {
      acc += q > 0.0f ? q * -e.dl : 0.0f;
    } else if constexpr (K == K_JSD) {
      float dq, dp;
      jsd_logs(q, p, e.dl, mc, mlc, flip, &dq, &dp);
      const float tq = q > 0.0f ? q * dq : 0.0f, tp = p > 0.0f ? p * dp : 0.0f;
      acc += tp * a.ib1 + tq * a.ib;
      accS += tq;
    } else if constexpr (K == K_TVD) {
      const float s = q > p ? 0.5f : (q < p ? -0.5f : 0.0f);
      acc += q > p ? q - p : p - q;
      accS += q * s;
    } else if constexpr (K == K_SKL) {
      const float dp = mix_log<true>(p, q, e.dl, mc, mlc, flip);
      const float pr = p / (w * p + wbar * q);
      acc += p > 0.0f ? p * dp : 0.0f;
      accS += q > 0.0f ? q * pr : 0.0f;
    } else if constexpr (K == K_SRKL) {
      const float dq = mix_log<false>(p, q, e.dl, mc, mlc, flip);
      const float qr = q / (w * p + wbar * q);
      acc += q > 0.0f ? q * dq : 0.0f;
      accS += q > 0.0f ? q * qr : 0.0f;
    } else if constexpr (K == K_CE) {
      if (d) d[i] = i == g ? C * q - C : C * q;
    } else if constexpr (K == K_MAXENT) {
      acc += (e.x - R.ms) * R.iT;
      if (d) d[i] = C * q - Cu;
    } else {  // entropy
      acc += q > 0.0f ? q * e.lq : 0.0f;
    }
  }
  *acc_out = acc;
  *accS_out = accS;
}

// pass 3: the gradient q·(ca·v + cb) (or the rkl / entropy forms), with the row sums known.
template <int K, typename TIn>
__device__ __forceinline__ void full_pass3(const KdDev& a, const Row<TIn>& R, float* d, float C, float ca, float cb,
                                           float Lf) {
  const float mc = a.mixc, mlc = a.mixlogc, flip = a.mixflip, w = a.w, wbar = a.wbar;
  for (int64_t i = threadIdx.x; i < a.Vv; i += blockDim.x) {
    const typename Row<TIn>::El e = R.at(i);
    const float q = e.q, p = e.p;
    float v;
    if constexpr (K == K_RKL) {
      const float cq = C * q;
      v = cq != 0.0f ? cq * (-e.dl - Lf) : 0.0f;
    } else if constexpr (K == K_JSD) {
      float dq, dp;
      jsd_logs(q, p, e.dl, mc, mlc, flip, &dq, &dp);
      v = q > 0.0f ? q * (ca * dq + cb) : 0.0f;
    } else if constexpr (K == K_TVD) {
      const float s = q > p ? 0.5f : (q < p ? -0.5f : 0.0f);
      v = q > 0.0f ? q * (ca * s + cb) : 0.0f;
    } else if constexpr (K == K_SKL) {
      const float pr = p / (w * p + wbar * q);
      v = q > 0.0f ? q * (ca * pr + cb) : 0.0f;
    } else if constexpr (K == K_SRKL) {
      const float dq = mix_log<false>(p, q, e.dl, mc, mlc, flip);
      const float qr = q / (w * p + wbar * q);
      v = q > 0.0f ? q * (ca * (dq - wbar * qr) + cb) : 0.0f;
    } else {  // entropy
      const float cq = -C * q;
      v = cq != 0.0f ? cq * (e.lq + Lf) : 0.0f;
    }
    d[i] = v;
  }
}

template <int K, typename TIn>
__device__ __forceinline__ double full_row(const KdDev& a, const Row<TIn>& R, float* d, int32_t g, double Cd,
                                           double L, double* sh) {
  const float C = (float)Cd, Cu = (float)(Cd / (double)a.Vv);
  float acc, accS;
  full_pass2<K, TIn>(a, R, d, g, C, Cu, &acc, &accS);
  const double A = block_sum((double)acc, sh);
  double S = 0.0;
  if constexpr (K == K_JSD || K == K_TVD || K == K_SKL || K == K_SRKL) S = block_sum((double)accS, sh);
  double loss;
  if constexpr (K == K_TVD) loss = 0.5 * A;
  else if constexpr (K == K_CE) loss = ((double)R.ms - (double)load_f(R.z, g)) * a.iTd + L;  // both terms ≥ 0
  else if constexpr (K == K_MAXENT) loss = -log((double)a.Vv) - A / (double)a.Vv + L;
  else if constexpr (K == K_ENTROPY) loss = -A;
  else loss = A;
  if constexpr (K == K_RKL || K == K_JSD || K == K_TVD || K == K_SKL || K == K_SRKL || K == K_ENTROPY) {
    if (d) {
      float ca = 0.0f, cb = 0.0f;
      if constexpr (K == K_JSD) {
        ca = (float)(Cd / a.wd);
        cb = (float)(-Cd / a.wd * S);
      } else if constexpr (K == K_TVD) {
        ca = (float)Cd;
        cb = (float)(-Cd * S);
      } else if constexpr (K == K_SKL) {
        ca = (float)(-Cd * a.wbard);
        cb = (float)(Cd * a.wbard * S);
      } else if constexpr (K == K_SRKL) {
        ca = (float)Cd;
        cb = (float)(Cd * (a.wbard * S - loss));
      }
      full_pass3<K, TIn>(a, R, d, C, ca, cb, (float)loss);
    }
  }
  return loss;
}

template <typename TIn>
__global__ void __launch_bounds__(KD_THREADS) kd_full_kernel(KdDev a) {
  __shared__ float shm[32], shs[32], shm2[32], shs2[32];
  __shared__ double shd[32];
  const int64_t r = blockIdx.x;
  float* d = a.grad ? a.grad + r * a.V : nullptr;
  int32_t g = 0;
  if (row_skipped(a, r, &g)) {
    if (threadIdx.x == 0) a.row_loss[r] = 0.0f;
    if (d)
      for (int64_t i = threadIdx.x; i < a.V; i += blockDim.x) d[i] = 0.0f;
    return;
  }
  if (d)
    for (int64_t i = a.Vv + threadIdx.x; i < a.V; i += blockDim.x) d[i] = 0.0f;  // vocabulary padding
  const int kind = a.kind;
  if (kind == K_TAID && a.taid_mode == 1) {  // t = 0: the target is q itself
    if (threadIdx.x == 0) a.row_loss[r] = 0.0f;
    if (d)
      for (int64_t i = threadIdx.x; i < a.Vv; i += blockDim.x) d[i] = 0.0f;
    return;
  }
  Row<TIn> R;
  R.z = (const TIn*)a.student + r * a.V;
  const bool teach = kind != K_CE && kind != K_MAXENT && kind != K_ENTROPY;
  R.y = teach ? (const TIn*)a.teacher + r * a.V : nullptr;
  R.mixT = kind == K_TAID && a.taid_mode == 2;
  R.tt = a.taid_t;
  R.omt = a.taid_omt;
  R.iT = a.iT;
  R.c2 = a.c2;
  // pass 1
  MaxSum ss = ms_init(), st = ms_init();
  for (int64_t i = threadIdx.x; i < a.Vv; i += blockDim.x) {
    const float x = load_f(R.z, i);
    ms_add(ss, x, a.c2);
    if (teach) ms_add(st, R.teacher_at(i, x), a.c2);
  }
  ss = block_ms(ss, a.c2, shm, shs);
  if (teach) st = block_ms(st, a.c2, shm2, shs2);
  const double L = log((double)ss.s), Lt = teach ? log((double)st.s) : 0.0;
  R.ms = ss.m;
  R.mt = st.m;
  R.ls = (float)L;
  R.inv_ss = (float)(1.0 / (double)ss.s);
  R.inv_st = teach ? (float)(1.0 / (double)st.s) : 0.0f;
  R.dL = (float)(Lt - L);
  const double Cd = row_grad_scale(a) * a.s2 * a.iTd;
  double loss;
  switch (kind) {
    case K_FKL:
    case K_TAID: loss = full_row<K_FKL, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_RKL: loss = full_row<K_RKL, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_JSD: loss = full_row<K_JSD, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_TVD: loss = full_row<K_TVD, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_SKL: loss = full_row<K_SKL, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_SRKL: loss = full_row<K_SRKL, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_CE: loss = full_row<K_CE, TIn>(a, R, d, g, Cd, L, shd); break;
    case K_MAXENT: loss = full_row<K_MAXENT, TIn>(a, R, d, g, Cd, L, shd); break;
    default: loss = full_row<K_ENTROPY, TIn>(a, R, d, g, Cd, L, shd); break;
  }
  if (threadIdx.x == 0) a.row_loss[r] = (float)(a.s2 * loss);
}

// ---------------------------------------------------------------- top-k teacher

__device__ __forceinline__ double lae(double x, double y) {
  if (x < y) {
    const double t = x;
    x = y;
    y = t;
  }
  return y == -INFINITY ? x : x + log1p(exp(y - x));
}

// One bucket of the divergence between the bucket distributions (the CPU's bucket_div loop body). Returns the loss
// term; *g = ∂L/∂log Q_b; *h = ∂L/∂Q_b where the CPU sets it (every bucket, or the last for fkl).
__device__ __forceinline__ double bucket_term(int kind, double w, double lw, double lw1, bool last, double lq,
                                              double lp, double q, double p, double* g, double* h) {
  const double w1 = 1.0 - w;
  double lm = 0.0;
  if (kind == K_JSD || kind == K_SKL || kind == K_SRKL) lm = last ? lae(lw + lp, lw1 + lq) : log(w * p + w1 * q);
  double L;
  switch (kind) {
    case K_FKL:
      L = p > 0 ? p * (lp - lq) : 0.0;
      *g = -p;
      *h = last ? (p > 0 ? -exp(lp - lq) : 0.0) : 0.0;
      break;
    case K_RKL:
      L = q > 0 ? q * (lq - lp) : 0.0;
      *h = lq - lp + 1.0;
      *g = q > 0 ? q * *h : 0.0;
      break;
    case K_JSD:
      L = (p > 0 ? p * (lp - lm) : 0.0) / w1 + (q > 0 ? q * (lq - lm) : 0.0) / w;
      *h = (lq - lm) / w;
      *g = q > 0 ? q * *h : 0.0;
      break;
    case K_TVD:
      L = 0.5 * fabs(q - p);
      *h = q > p ? 0.5 : (q < p ? -0.5 : 0.0);
      *g = q * *h;
      break;
    case K_SKL:
      L = p > 0 ? p * (lp - lm) : 0.0;
      *h = p > 0 ? -w1 * exp(lp - lm) : 0.0;
      *g = q > 0 ? q * *h : 0.0;
      break;
    default:  // srkl
      L = q > 0 ? q * (lq - lm) : 0.0;
      *h = lq - lm + 1.0 - w1 * exp(lq - lm);
      *g = q > 0 ? q * *h : 0.0;
      break;
  }
  return L;
}

__host__ __device__ __forceinline__ size_t topk_smem_bytes(int64_t k, int64_t Vv) {
  return (size_t)(5 * (k + 1)) * sizeof(double) + (size_t)k * sizeof(float) + (size_t)((Vv + 31) / 32) * 4;
}

template <typename TIn>
__global__ void __launch_bounds__(KD_THREADS) kd_topk_kernel(KdDev a) {
  extern __shared__ __align__(16) unsigned char dsm[];
  __shared__ float shm[32], shs[32];
  __shared__ double shd[32];
  __shared__ int s_err_j, s_dup;
  __shared__ double s_h;
  const int64_t k = a.k, nb1 = k + 1, Vv = a.Vv;
  double* lq = (double*)dsm;
  double* lp = lq + nb1;
  double* Q = lp + nb1;
  double* P = Q + nb1;
  double* gg = P + nb1;
  float* zs = (float*)(gg + nb1);
  uint32_t* bits = (uint32_t*)(zs + k);
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  float* d = a.grad ? a.grad + r * a.V : nullptr;
  int32_t g = 0;
  if (row_skipped(a, r, &g)) {
    if (tid == 0) a.row_loss[r] = 0.0f;
    if (d)
      for (int64_t i = tid; i < a.V; i += nt) d[i] = 0.0f;
    return;
  }
  const TIn* z = (const TIn*)a.student + r * a.V;
  const int32_t* ids = a.ids + r * k;
  const float* lps = a.lps + r * k;
  // mark the ids; bad and repeated ids make the row an error (the first offending position, as the CPU scans)
  const int64_t nwords = (Vv + 31) / 32;
  for (int64_t wi = tid; wi < nwords; wi += nt) bits[wi] = 0u;
  if (tid == 0) {
    s_err_j = INT_MAX;
    s_dup = 0;
  }
  __syncthreads();
  for (int64_t j = tid; j < k; j += nt) {
    const int32_t id = ids[j];
    if (id < 0 || id >= Vv) {
      atomicMin(&s_err_j, (int)j);
    } else {
      const uint32_t bit = 1u << (id & 31);
      if (atomicOr(&bits[id >> 5], bit) & bit) s_dup = 1;
      zs[j] = load_f(z, id);
    }
  }
  __syncthreads();
  if (s_dup) {  // which occurrence saw the bit set is a race: find the first repeat exactly (error path only)
    for (int64_t j = tid; j < k; j += nt) {
      const int32_t id = ids[j];
      if (id < 0 || id >= Vv) continue;
      for (int64_t jj = 0; jj < j; jj++)
        if (ids[jj] == id) {
          atomicMin(&s_err_j, (int)j);
          break;
        }
    }
    __syncthreads();
  }
  if (s_err_j != INT_MAX) {
    if (tid == 0) {
      const int32_t id = ids[s_err_j];
      const KdStatus st = (id < 0 || id >= Vv) ? KdStatus::bad_id : KdStatus::duplicate_id;
      a.status[r] = make_int2((int)st, id);
      atomicMin(&a.work->first_id_row, (unsigned long long)r);
      a.row_loss[r] = 0.0f;
    }
    return;
  }
  if (d)
    for (int64_t i = Vv + tid; i < a.V; i += nt) d[i] = 0.0f;  // vocabulary padding

  // pass 1: the row max over every column, the sum over the columns outside the ids (the student's tail)
  MaxSum ms = ms_init();
  for (int64_t i = tid; i < Vv; i += nt) {
    const float x = load_f(z, i);
    if ((bits[i >> 5] >> (i & 31)) & 1u) ms_raise(ms, x, a.c2);
    else ms_add(ms, x, a.c2);
  }
  ms = block_ms(ms, a.c2, shm, shs);
  const float Mf = ms.m;
  const double M = (double)Mf, stail = (double)ms.s, iTd = a.iTd;

  // student buckets (k ids + the tail), in double
  double part = 0.0;
  for (int64_t j = tid; j < k; j += nt) {
    const double l = ((double)zs[j] - M) * iTd;
    lq[j] = l;
    Q[j] = exp(l);
    part += Q[j];
  }
  const double tot = stail + block_sum(part, shd);  // ≥ 1: the row max contributes 1
  const double L = log(tot);
  if (a.rkl_renorm) {  // q̃ over the ids, in log space
    double mx = -INFINITY;
    for (int64_t j = tid; j < k; j += nt) mx = fmax(mx, lq[j]);
    const double mS = block_max(mx, shd, -(double)INFINITY);
    double ps = 0.0;
    for (int64_t j = tid; j < k; j += nt) ps += exp(lq[j] - mS);
    const double Lb = mS + log(block_sum(ps, shd));
    for (int64_t j = tid; j < k; j += nt) {
      lq[j] -= Lb;
      Q[j] = exp(lq[j]);
    }
  } else {
    for (int64_t j = tid; j < k; j += nt) {
      lq[j] -= L;
      Q[j] /= tot;
    }
  }
  if (tid == 0) {
    lq[k] = stail > 0 ? log(stail) - L : -INFINITY;
    Q[k] = stail / tot;
  }
  // teacher buckets, re-tempered: P_b ∝ exp(logprob_b / T); the tail from 1 − Σ exp(logprob) (bucket mode)
  double ptail = 0.0;
  if (a.bucket) {
    double ps = 0.0;
    for (int64_t j = tid; j < k; j += nt) ps += exp((double)lps[j]);
    const double psum = block_sum(ps, shd);
    ptail = psum < 1.0 ? 1.0 - psum : 0.0;
  }
  double mx = -INFINITY;
  for (int64_t j = tid; j <= k; j += nt) {
    const double v = j < k ? (double)lps[j] * iTd : (ptail > 0 ? log(ptail) * iTd : -INFINITY);
    lp[j] = v;
    mx = fmax(mx, v);
  }
  const double amax = block_max(mx, shd, -(double)INFINITY);
  double ps2 = 0.0;
  for (int64_t j = tid; j <= k; j += nt) {
    P[j] = exp(lp[j] - amax);
    ps2 += P[j];
  }
  const double psum2 = block_sum(ps2, shd);  // its barriers also publish lq[k], Q[k]
  const double lpsum = log(psum2);
  for (int64_t j = tid; j <= k; j += nt) {
    lp[j] -= amax + lpsum;
    P[j] /= psum2;
  }
  __syncthreads();

  // the divergence between the bucket distributions
  const int64_t nb = a.rkl_renorm ? k : k + 1;
  const int kind = a.rkl_renorm ? K_RKL : a.kind;
  double lsum = 0.0, gsum = 0.0;
  for (int64_t b = tid; b < nb; b += nt) {
    double gb, hb;
    const bool last = b == nb - 1;
    lsum += bucket_term(kind, a.wd, a.lw, a.lw1, last, lq[b], lp[b], Q[b], P[b], &gb, &hb);
    gg[b] = gb;
    gsum += gb;
    if (last) s_h = hb;
  }
  const double loss = block_sum(lsum, shd);
  const double G = block_sum(gsum, shd);  // the barriers publish s_h and gg
  if (d) {
    const double Cd = row_grad_scale(a) * a.s2 * iTd;
    // outside the ids: ∂/∂z_i = q_i·(h_tail − Σg)/T; on them: (g_j − q_j·Σg)/T (rkl renorm: zero outside)
    const double coef = a.rkl_renorm ? 0.0 : (stail > 0 ? (s_h - G) * Cd : 0.0);
    const float f = (coef != 0.0 && coef == coef) ? (float)(coef / tot) : 0.0f;
    for (int64_t i = tid; i < Vv; i += nt)
      if (!((bits[i >> 5] >> (i & 31)) & 1u)) d[i] = f * exp2f((load_f(z, i) - Mf) * a.c2);
    for (int64_t j = tid; j < k; j += nt) d[ids[j]] = (float)(Cd * (gg[j] - Q[j] * G));
  }
  if (tid == 0) a.row_loss[r] = (float)(a.s2 * loss);
}

// ---------------------------------------------------------------- host side

// (the kind names, kd_uses_teacher and kd_supports_topk: native/cpu/kd_kinds.h)
bool kd_uses_targets(KdKind k) { return k == KdKind::ce; }  // (dkd, deltakd: not on CUDA yet)

static bool unit(double x) { return x >= 0.0 && x <= 1.0; }

const char* kd_check_args(const KdCudaArgs& a) {
  if ((int)a.kind < 0 || a.kind >= KdKind::count_) return "unknown loss kind";
  if (a.kind == KdKind::dkd || a.kind == KdKind::deltakd) return "this loss is not implemented on CUDA yet (dkd, deltakd)";
  if (a.rows < 0 || a.vocab <= 0) return "rows must be ≥ 0 and vocab > 0";
  if (a.valid_vocab < 0 || a.valid_vocab > a.vocab) return "valid_vocab must be in [0, vocab]";
  if (!(a.temperature > 0.0f) || !std::isfinite(a.temperature)) return "temperature must be finite and > 0";
  if (!a.student || !a.row_loss) return "student logits and row_loss are required";
  if (!a.work) return "the CUDA kd_loss needs a workspace (kd_work_bytes)";
  if (a.vocab > (int64_t)INT_MAX) return "vocab must be < 2^31 on CUDA";
  const bool topk = !a.teacher && a.topk_ids;
  if (kd_uses_teacher(a.kind)) {
    if (!a.teacher && !a.topk_ids) return "this loss needs a teacher";
    if (topk) {
      if (!kd_supports_topk(a.kind)) return "this loss needs full teacher logits (top-k is for fkl rkl jsd tvd skl srkl)";
      if (!a.topk_logprobs) return "top-k teacher needs logprobs";
      const int64_t vv = a.valid_vocab > 0 ? a.valid_vocab : a.vocab;
      if (a.k < 1 || a.k > vv) return "top-k k must be in [1, vocab]";
    }
  }
  if (kd_uses_targets(a.kind) && !a.targets) return "this loss needs targets";
  if (!unit(a.beta) || !unit(a.alpha) || !unit(a.t)) return "beta, alpha, t and lambda must be in [0, 1]";
  if (!std::isfinite(a.grad_scale)) return "grad_scale must be finite";
  return nullptr;
}

static KdDev make_dev(const KdCudaArgs& a) {
  KdDev c;
  std::memset(&c, 0, sizeof(c));
  KdKind kind = a.kind;
  // endpoint substitutions (exact: these are the same losses), as the CPU
  if (kind == KdKind::jsd && a.beta <= 0.0) kind = KdKind::fkl;
  if (kind == KdKind::jsd && a.beta >= 1.0) kind = KdKind::rkl;
  if (kind == KdKind::skl && a.alpha <= 0.0) kind = KdKind::fkl;
  if (kind == KdKind::srkl && a.alpha <= 0.0) kind = KdKind::rkl;
  c.kind = (int32_t)kind;
  c.topk = !a.teacher && a.topk_ids && kd_uses_teacher(a.kind);
  c.bucket = a.tail == KdTail::bucket;
  c.rkl_renorm = c.topk && kind == KdKind::rkl && a.tail == KdTail::renorm;
  c.uses_targets = kd_uses_targets(a.kind);
  c.mean = a.reduction == KdReduction::mean;
  c.rows = a.rows;
  c.V = a.vocab;
  c.Vv = a.valid_vocab > 0 ? a.valid_vocab : a.vocab;
  c.k = c.topk ? a.k : 0;
  c.student = a.student;
  c.teacher = a.teacher;
  c.ids = a.topk_ids;
  c.lps = a.topk_logprobs;
  c.targets = a.targets;
  c.ignore_index = a.ignore_index;
  c.mask = a.mask;
  c.iTd = 1.0 / (double)a.temperature;
  c.iT = (float)c.iTd;
  c.c2 = c.iT * 1.44269504088896341f;
  c.s2 = a.t2_scale ? (double)a.temperature * (double)a.temperature : 1.0;
  c.grad_scale = a.grad_scale;
  c.wd = kind == KdKind::jsd ? a.beta : kind == KdKind::skl ? a.alpha : kind == KdKind::srkl ? 1.0 - a.alpha : 0.5;
  c.wbard = 1.0 - c.wd;
  c.w = (float)c.wd;
  c.wbar = (float)c.wbard;
  c.mixflip = c.wd > 0.5 ? 1.0f : 0.0f;
  c.mixc = (float)(c.wd > 0.5 ? c.wbard : c.wd);
  c.mixlogc = (float)std::log(c.wd > 0.5 ? c.wbard : c.wd);
  c.ib = (float)(1.0 / c.wd);
  c.ib1 = (float)(1.0 / c.wbard);
  c.lw = std::log(c.wd);
  c.lw1 = std::log1p(-c.wd);
  c.taid_t = (float)a.t;
  c.taid_omt = (float)(1.0 - a.t);
  c.taid_mode = a.t >= 1.0 ? 0 : (a.t <= 0.0 ? 1 : 2);
  c.row_loss = a.row_loss;
  c.grad = a.grad;
  c.work = (KdWork*)a.work;
  c.status = (int2*)((unsigned char*)a.work + kKdWorkHeader);
  return c;
}

template <typename TIn>
static cudaError_t launch_topk(const KdDev& c, cudaStream_t s) {
  const size_t bytes = topk_smem_bytes(c.k, c.Vv);
  if (bytes > 48 * 1024) {
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    // the static shared memory of the kernel (reductions) needs room too
    if (bytes + 2048 > (size_t)optin) return cudaErrorInvalidValue;
    e = cudaFuncSetAttribute(kd_topk_kernel<TIn>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
  }
  kd_topk_kernel<TIn><<<(unsigned)c.rows, KD_THREADS, bytes, s>>>(c);
  return cudaGetLastError();
}

cudaError_t kd_loss(const KdCudaArgs& a, cudaStream_t s) {
  if (kd_check_args(a)) return cudaErrorInvalidValue;
  if (a.rows > (int64_t)INT_MAX) return cudaErrorInvalidValue;
  if (a.teacher && a.teacher_type != a.student_type && kd_uses_teacher(a.kind))
    return cudaErrorInvalidValue;  // one element type for both (convert the other first)
  const KdDev c = make_dev(a);
  kd_count_kernel<<<1, 1024, 0, s>>>(c);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  if (a.rows > 0) {
    const bool bf = a.student_type == DType::bf16;
    if (c.topk) {
      e = bf ? launch_topk<__nv_bfloat16>(c, s) : launch_topk<float>(c, s);
    } else {
      if (bf) kd_full_kernel<__nv_bfloat16><<<(unsigned)a.rows, KD_THREADS, 0, s>>>(c);
      else kd_full_kernel<float><<<(unsigned)a.rows, KD_THREADS, 0, s>>>(c);
      e = cudaGetLastError();
    }
    if (e != cudaSuccess) return e;
  }
  kd_total_kernel<<<1, 1024, 0, s>>>(c);
  return cudaGetLastError();
}

cudaError_t kd_result(const KdCudaArgs& a, KdCudaResult* out, cudaStream_t s) {
  KdWork h;
  cudaError_t e = cudaMemcpyAsync(&h, a.work, sizeof(h), cudaMemcpyDeviceToHost, s);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return e;
  *out = KdCudaResult();
  out->loss = h.loss;
  out->counted = h.counted;
  const unsigned long long row = h.first_target_row != ULLONG_MAX ? h.first_target_row : h.first_id_row;
  if (row != ULLONG_MAX) {
    int2 st;
    e = cudaMemcpy(&st, (const unsigned char*)a.work + kKdWorkHeader + row * sizeof(int2), sizeof(st),
                   cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return e;
    out->status = (KdStatus)st.x;
    out->bad_row = (int64_t)row;
    out->bad_value = st.y;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace undo
