// Distillation / unlearning loss kernels (see kd_losses.h for the definitions). Compiled once per ISA.
//
// Per row, with raw logits x and temperature T, a distribution is kept as (M, s): M = max x over the valid
// columns, s = Σ exp((x − M)/T), so log-probabilities are (x − M)/T − log s: the subtraction x − M happens
// on the raw logits (exact for nearby values), so large logits (±1e4) keep their small differences.
//   pass 1  blocked online max/sum: per block of KD_BLOCK columns, the block max (rescaling the running sum
//           when it rises), then the block's exp-sum while the block is in L1. Both the student's and the
//           teacher's rows are consumed block by block, so each is read from memory once.
//   pass 2  the gradient (and the loss terms that need the final (M, s)); for JSD, TVD, SKL and SRKL a
//           reduction pass comes first, since their gradient needs a row sum of the same terms.
// Top-k teachers: the k ids are sorted; pass 1 and the gradient pass walk the gaps between them, so the
// student's mass outside the ids is summed directly; the k+1 bucket distributions are handled in double.
#include "kd_losses.h"

#include <cstdlib>

#include "simd.h"

UNDO_ISA_BEGIN

static const int64_t KD_BLOCK = 2048;

// exp(x), vectorisable in loops that store (undo_expf's trailing selects on its own result become branches
// there and GCC 12 then leaves such loops scalar): the clamp to [−88, 89] is on the input side, e^x past
// FLT_MAX overflows to +inf through the 2^128 scale, and everything below e^−87 (under FLT_MIN) is flushed
// to exactly 0 by a multiply, so "probability 0" tests are exact (0·(−inf) never happens behind a p > 0
// guard) and no denormals enter the sums. NaN propagates (through r). Same polynomial as undo_expf
// (~2 ulp).
static inline float kd_exp(float x) {
  float xc = x > 89.0f ? 89.0f : x;
  xc = xc < -88.0f ? -88.0f : xc;
  const int32_t ni = (int32_t)(xc * 1.44269504088896341f + (xc >= 0.0f ? 0.5f : -0.5f));
  const float n = (float)ni;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const int32_t n1 = ni / 2, n2 = ni - n1;  // |n| ≤ 128: two factors 2^n1·2^n2 stay normal
  const int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  return p * s1 * s2 * (float)(x >= -87.0f);
}

// Natural log of x > 0 (Cephes logf polynomial, ~1 ulp), vectorisable: no branches, no libm call.
// Denormal inputs are scaled up first; 0 gives ≈ −103 instead of −inf (callers pass x > 0); NaN and inf
// give NaN.
static inline float kd_log(float x) {
  const bool tiny = x < 1.17549435e-38f;
  const float xs = tiny ? x * 8388608.0f : x;  // 2^23
  int32_t bits;
  std::memcpy(&bits, &xs, 4);
  const int32_t e = ((bits >> 23) & 0xff) - 126;
  const int32_t mbits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &mbits, 4);
  const bool lo = m < 0.707106781186547524f;
  const float f = lo ? m + m - 1.0f : m - 1.0f;  // log(1 + f), f ∈ [√½ − 1, √2 − 1)
  const float ef = (float)(lo ? e - 1 : e) - (tiny ? 23.0f : 0.0f);
  const float z = f * f;
  float y = 7.0376836292E-2f;
  y = y * f - 1.1514610310E-1f;
  y = y * f + 1.1676998740E-1f;
  y = y * f - 1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f;
  y = y * f - 1.6668057665E-1f;
  y = y * f + 2.0000714765E-1f;
  y = y * f - 2.4999993993E-1f;
  y = y * f + 3.3333331174E-1f;
  y = y * f * z;
  y += -2.12194440e-4f * ef;
  y += -0.5f * z;
  float r = f + y;
  r += 0.693359375f * ef;
  return r + (x - x);
}

// log((1 − c) + c·e^x) for c ∈ [0, 1], cbar = 1 − c, x ≤ ~88 (callers keep x ≤ 80), accurate relative to
// the result even when it is tiny: with t = c·expm1(x), log1p(t) when t ≥ −½ (Goldberg's
// log1p(t) = log(u)·t/(u − 1), u = 1 + t), else log(cbar + c·e^x) directly (a sum of two non-negative
// terms, far from 1, so the log is well conditioned).
static inline float kd_logmix(float c, float cbar, float x) {
  const float e = kd_exp(x);
  float p = 2.48015873e-5f;  // expm1 by its Taylor series on |x| < ½ (error < 2e-8 relative)
  p = p * x + 1.98412698e-4f;
  p = p * x + 1.38888889e-3f;
  p = p * x + 8.33333333e-3f;
  p = p * x + 4.16666667e-2f;
  p = p * x + 1.66666667e-1f;
  p = p * x + 0.5f;
  p = p * x * x + x;
  const float em1 = (x < 0.5f && x > -0.5f) ? p : e - 1.0f;
  const float t = c * em1;
  const bool direct = t < -0.5f;
  const float u = direct ? cbar + c * e : 1.0f + t;
  const float l = kd_log(u);
  const float d = u - 1.0f;
  return direct ? l : (d == 0.0f ? t : l * (t / d));
}

// Mixture m = w·p + wbar·q, δ = log p − log q. Returns log q − log m (want_q) or log p − log m:
//   log q − log m = −log(wbar + w·e^δ),   log p − log m = −log(w + wbar·e^−δ).
// Each is evaluated in the form whose exponent is ≤ 80 (the other one plus or minus δ beyond that, where
// the sum no longer cancels), so neither overflows and both stay accurate when w or wbar is tiny.
static inline float kd_mixlog(float delta, float w, float wbar, bool want_q) {
  // log q − log m directly when δ ≤ 80, else (log p − log m) − δ; mirrored for log p − log m
  const bool flip = want_q ? delta > 80.0f : delta < -80.0f;
  const bool use_q_form = want_q != flip;
  const float c = use_q_form ? w : wbar;
  const float cb = use_q_form ? wbar : w;
  const float x = use_q_form ? delta : -delta;
  const float f = -kd_logmix(c, cb, x);
  return flip ? (want_q ? f - delta : f + delta) : f;
}

static inline int64_t blk(int64_t b, int64_t hi) { return hi - b < KD_BLOCK ? hi - b : KD_BLOCK; }

// One block of the online (max, sum) of x/T: m = running max of the raw logits, s = Σ exp((x − m)/T).
static inline void lse_block(const float* x, int64_t n, float iT, float* m, double* s) {
  float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
  for (int64_t i = 0; i < n; i++) bm = x[i] > bm ? x[i] : bm;
  if (bm > *m) {
    *s = *s > 0.0 ? *s * std::exp((double)(*m - bm) * (double)iT) : 0.0;
    *m = bm;
  }
  if (*m == -INFINITY) return;
  const float mm = *m;
  float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
  for (int64_t i = 0; i < n; i++) bs += kd_exp((x[i] - mm) * iT);
  *s += bs;
}

static inline void lse_range(const float* x, int64_t lo, int64_t hi, float iT, float* m, double* s) {
  for (int64_t b = lo; b < hi; b += KD_BLOCK) lse_block(x + b, blk(b, hi), iT, m, s);
}

// Online (max, sum) of z/T plus a = Σ exp((z − ms)/T)·((z − ms) − (y − mt)) (reverse KL's row term), kept in
// the frames of the student's running max ms and the teacher's running max mt, which lse_block has already
// moved over this block of y. Centred differences stay exact where it matters (the heavy entries have
// z ≈ ms); a raw z − y would round to an ulp of |z| (5e-4 at 1e4). mt_prev: the teacher max that a was
// accumulated with.
static inline void rkl_block(const float* z, const float* y, int64_t n, float iT, float mt, float* mt_prev, float* m,
                             double* s, double* a) {
  float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
  for (int64_t i = 0; i < n; i++) bm = z[i] > bm ? z[i] : bm;
  if (*s > 0.0) {
    if (mt > *mt_prev) *a += ((double)mt - (double)*mt_prev) * *s;  // −(y − mt) grew by Δmt in every term
    if (bm > *m) {
      const double r = std::exp((double)(*m - bm) * (double)iT);
      *a = r > 0.0 ? r * (*a - ((double)bm - (double)*m) * *s) : 0.0;
      *s = r > 0.0 ? *s * r : 0.0;
    }
  }
  *mt_prev = mt;
  if (bm > *m) *m = bm;
  if (*m == -INFINITY) return;
  const float mm = *m;
  float bs = 0.0f, ba = 0.0f;
#pragma omp simd reduction(+ : bs, ba)
  for (int64_t i = 0; i < n; i++) {
    const float e = kd_exp((z[i] - mm) * iT);
    const float yc = y[i] == -INFINITY ? -INFINITY : y[i] - mt;  // a −inf teacher entry under student mass: +inf
    bs += e;
    ba += e > 0.0f ? e * ((z[i] - mm) - yc) : 0.0f;
  }
  *s += bs;
  *a += ba;
}

// Online (max, sum) of z/T plus a = Σ exp((z − m)/T)·(z − m) (entropy's row term), kept in the frame of m.
static inline void ent_block(const float* z, int64_t n, float iT, float* m, double* s, double* a) {
  float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
  for (int64_t i = 0; i < n; i++) bm = z[i] > bm ? z[i] : bm;
  if (bm > *m) {
    if (*s > 0.0) {
      const double r = std::exp((double)(*m - bm) * (double)iT);
      *a = r > 0.0 ? r * (*a - (double)(bm - *m) * *s) : 0.0;
      *s = r > 0.0 ? *s * r : 0.0;
    }
    *m = bm;
  }
  if (*m == -INFINITY) return;
  const float mm = *m;
  float bs = 0.0f, ba = 0.0f;
#pragma omp simd reduction(+ : bs, ba)
  for (int64_t i = 0; i < n; i++) {
    const float d = z[i] - mm;
    const float e = kd_exp(d * iT);
    bs += e;
    ba += e > 0.0f ? e * d : 0.0f;
  }
  *s += bs;
  *a += ba;
}

static inline void zero_range(float* d, int64_t n) {
  if (n > 0) std::memset(d, 0, (size_t)n * sizeof(float));
}

struct KdCtx {
  const KdArgs* a;
  KdKind kind;        // after the endpoint substitutions (jsd β ∈ {0,1}, skl/srkl α = 0)
  int64_t V, Vv;
  float iT;           // 1/T
  double iTd;
  double s2;          // T² when t2_scale, else 1 (multiplies the soft terms)
  double gs;          // gradient multiplier of each row's loss: grad_scale / (mean ? counted : 1)
  float w, wbar;      // mixture weight on p (jsd β, skl α, srkl 1 − α) and 1 − it
  double wd, wbard;
  float taid_t, taid_omt;
  int taid_mode;      // 0: target = teacher (t = 1), 1: target = student (t = 0), 2: mixed
};

// Per-thread scratch: two blocks of floats (a discard target for loss-only runs, TAID/Delta-KD targets) and
// the top-k work arrays.
struct KdScratch {
  float* blockA;
  float* blockB;
  int64_t* keys;
  double* lq;   // [k+1]
  double* lp;   // [k+1]
  double* g;    // [k+1]
  double* h;    // [k+1]
  float* zs;    // [k]
};

// ---------------------------------------------------------------- full teacher: fkl, taid

// KL(p‖q) with p = softmax(y'/T), y' = y (fkl) or TAID's target (1−t)·z + t·y (built per block in scratch,
// so the loops below are the same for both); gradient (q − p)/T.
static double row_fkl(const KdCtx& c, const float* z, const float* y, float* dz, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  const bool mix = c.kind == KdKind::taid && c.taid_mode == 2;
  if (c.kind == KdKind::taid && c.taid_mode == 1) {  // t = 0: the target is q itself
    if (dz) zero_range(dz, Vv);
    return 0.0;
  }
  const float tt = c.taid_t, omt = c.taid_omt;
  float* yt = sc.blockB;
  float ms = -INFINITY, mt = -INFINITY;
  double ss = 0, st = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    lse_block(z + b, n, iT, &ms, &ss);
    if (mix) {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) yt[i] = omt * z[b + i] + tt * y[b + i];
    }
    lse_block(mix ? yt : y + b, n, iT, &mt, &st);
  }
  const float ls = (float)std::log(ss), lt = (float)std::log(st);
  const float C = (float)(c.gs * c.s2 * c.iTd);
  double loss = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    if (mix) {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) yt[i] = omt * zb[i] + tt * y[b + i];
    }
    const float* yb = mix ? yt : y + b;
    float* d = dz ? dz + b : sc.blockA;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) {
      const float lq = (zb[i] - ms) * iT - ls;
      const float lp = (yb[i] - mt) * iT - lt;
      const float q = kd_exp(lq), p = kd_exp(lp);
      d[i] = C * (q - p);
      acc += p > 0.0f ? p * (lp - lq) : 0.0f;
    }
    loss += acc;
  }
  return loss;
}

// ---------------------------------------------------------------- full teacher: rkl

static double row_rkl(const KdCtx& c, const float* z, const float* y, float* dz, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY, mt = -INFINITY, mt_prev = -INFINITY;
  double ss = 0, st = 0, A = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    lse_block(y + b, n, iT, &mt, &st);
    rkl_block(z + b, y + b, n, iT, mt, &mt_prev, &ms, &ss, &A);
  }
  const double lsd = std::log(ss), ltd = std::log(st);
  // Σ q (log q − log p) = Σ q ((z − ms) − (y − mt))/T − log ss + log st
  const double R = A / ss * c.iTd - lsd + ltd;
  if (!dz) return R;
  const float ls = (float)lsd, lt = (float)ltd, Rf = (float)R;
  const float C = (float)(c.gs * c.s2 * c.iTd);
  (void)sc;
#pragma omp simd
  for (int64_t i = 0; i < Vv; i++) {
    const float lq = (z[i] - ms) * iT - ls;
    const float lp = (y[i] - mt) * iT - lt;
    const float q = kd_exp(lq);
    dz[i] = q > 0.0f ? C * q * (lq - lp - Rf) : 0.0f;
  }
  return R;
}

// ---------------------------------------------------------------- full teacher: jsd, tvd, skl, srkl

static double row_mix(const KdCtx& c, const float* z, const float* y, float* dz, KdScratch& sc) {
  (void)sc;
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  const KdKind kind = c.kind;
  float ms = -INFINITY, mt = -INFINITY;
  double ss = 0, st = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    lse_block(z + b, n, iT, &ms, &ss);
    lse_block(y + b, n, iT, &mt, &st);
  }
  const float ls = (float)std::log(ss), lt = (float)std::log(st);
  const float w = c.w, wbar = c.wbar;
  // reduction pass: the loss and the row sum S the gradient needs
  //   jsd  loss Σ p·dp/(1−β) + q·dq/β, S = Σ q·dq (= KL(q‖m))
  //   tvd  loss ½Σ|q − p|, S = Σ q·s
  //   skl  loss Σ p·dp, S = Σ q·p/r   (Σg = −(1−α)·S)
  //   srkl loss Σ q·dq, S = Σ q·q/r
  const float ib = (float)(1.0 / c.wd), ib1 = (float)(1.0 / c.wbard);
  double loss = 0, S = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    const float* yb = y + b;
    float accl = 0.0f, accs = 0.0f;
    if (kind == KdKind::jsd) {
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = kd_exp(lq), p = kd_exp(lp), dl = lp - lq;
        const float dq = kd_mixlog(dl, w, wbar, true), dp = kd_mixlog(dl, w, wbar, false);
        const float tq = q > 0.0f ? q * dq : 0.0f, tp = p > 0.0f ? p * dp : 0.0f;
        accl += tp * ib1 + tq * ib;
        accs += tq;
      }
    } else if (kind == KdKind::tvd) {
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float q = kd_exp((zb[i] - ms) * iT - ls), p = kd_exp((yb[i] - mt) * iT - lt);
        const float s = q > p ? 0.5f : (q < p ? -0.5f : 0.0f);
        accl += q > p ? q - p : p - q;
        accs += q * s;
      }
    } else if (kind == KdKind::skl) {
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = kd_exp(lq), p = kd_exp(lp);
        const float dp = kd_mixlog(lp - lq, w, wbar, false);
        accl += p > 0.0f ? p * dp : 0.0f;
        accs += q > 0.0f ? q * (p / (w * p + wbar * q)) : 0.0f;  // q·p/r
      }
    } else {  // srkl
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = kd_exp(lq), p = kd_exp(lp);
        const float dq = kd_mixlog(lp - lq, w, wbar, true);
        accl += q > 0.0f ? q * dq : 0.0f;
        accs += q > 0.0f ? q * (q / (w * p + wbar * q)) : 0.0f;  // q·q/r
      }
    }
    loss += accl;
    S += accs;
  }
  if (kind == KdKind::tvd) loss *= 0.5;
  if (!dz) return loss;
  // gradient pass
  const double Cd = c.gs * c.s2 * c.iTd;
  if (kind == KdKind::jsd) {
    // ∂/∂z = q·(dq − KL(q‖m))/(βT)
    const float C = (float)(Cd / c.wd), Sf = (float)S;
#pragma omp simd
    for (int64_t i = 0; i < Vv; i++) {
      const float lq = (z[i] - ms) * iT - ls, lp = (y[i] - mt) * iT - lt;
      const float q = kd_exp(lq);
      const float dq = kd_mixlog(lp - lq, w, wbar, true);
      dz[i] = q > 0.0f ? C * q * (dq - Sf) : 0.0f;
    }
  } else if (kind == KdKind::tvd) {
    const float C = (float)Cd, Sf = (float)S;
#pragma omp simd
    for (int64_t i = 0; i < Vv; i++) {
      const float q = kd_exp((z[i] - ms) * iT - ls), p = kd_exp((y[i] - mt) * iT - lt);
      const float s = q > p ? 0.5f : (q < p ? -0.5f : 0.0f);
      dz[i] = C * q * (s - Sf);
    }
  } else if (kind == KdKind::skl) {
    // g = −(1−α)·q·p/r; ∂/∂z = (g − q·Σg)/T = (1−α)·q·(S − p/r)/T
    const float C = (float)(Cd * c.wbard), Sf = (float)S;
#pragma omp simd
    for (int64_t i = 0; i < Vv; i++) {
      const float q = kd_exp((z[i] - ms) * iT - ls), p = kd_exp((y[i] - mt) * iT - lt);
      dz[i] = q > 0.0f ? C * q * (Sf - p / (w * p + wbar * q)) : 0.0f;
    }
  } else {
    // g = q·(dq + 1 − α·q/r); ∂/∂z = q·(dq − α·q/r − L + α·S)/T
    const float C = (float)Cd, al = wbar, K = (float)(c.wbard * S - loss);
#pragma omp simd
    for (int64_t i = 0; i < Vv; i++) {
      const float lq = (z[i] - ms) * iT - ls, lp = (y[i] - mt) * iT - lt;
      const float q = kd_exp(lq), p = kd_exp(lp);
      const float dq = kd_mixlog(lp - lq, w, wbar, true);
      dz[i] = q > 0.0f ? C * q * (dq - al * (q / (w * p + wbar * q)) + K) : 0.0f;
    }
  }
  return loss;
}

// ---------------------------------------------------------------- no teacher: ce, maxent, entropy

static double row_ce(const KdCtx& c, const float* z, int32_t g, float* dz) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY;
  double ss = 0;
  lse_range(z, 0, Vv, iT, &ms, &ss);
  const double lsd = std::log(ss);
  // (M − z_g)/T + log s: both terms ≥ 0, nothing cancels
  const double loss = ((double)ms - (double)z[g]) * c.iTd + lsd;
  if (dz) {
    const float ls = (float)lsd;
    const float C = (float)(c.gs * c.s2 * c.iTd);
#pragma omp simd
    for (int64_t i = 0; i < Vv; i++) dz[i] = C * kd_exp((z[i] - ms) * iT - ls);
    dz[g] -= C;
  }
  return loss;
}

static double row_maxent(const KdCtx& c, const float* z, float* dz, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY;
  double ss = 0;
  lse_range(z, 0, Vv, iT, &ms, &ss);
  const double lsd = std::log(ss);
  const float ls = (float)lsd;
  const float C = (float)(c.gs * c.s2 * c.iTd), u = (float)(1.0 / (double)Vv);
  double sum = 0;  // Σ (z − M)/T
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    float* d = dz ? dz + b : sc.blockA;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) {
      const float x = (zb[i] - ms) * iT;
      d[i] = C * (kd_exp(x - ls) - u);
      acc += x;
    }
    sum += acc;
  }
  // KL(u‖q) = −log V − mean log q = −log V − mean (z − M)/T + log s
  return -std::log((double)Vv) - sum / (double)Vv + lsd;
}

static double row_entropy(const KdCtx& c, const float* z, float* dz) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY;
  double ss = 0, A = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) ent_block(z + b, blk(b, Vv), iT, &ms, &ss, &A);
  const double lsd = std::log(ss);
  const double H = lsd - c.iTd * A / ss;  // −Σ q log q = log s − Σ q (z − M)/T
  if (dz) {
    const float ls = (float)lsd, Hf = (float)H;
    const float C = (float)(c.gs * c.s2 * c.iTd);
#pragma omp simd
    for (int64_t i = 0; i < Vv; i++) {
      const float lq = (z[i] - ms) * iT - ls;
      const float q = kd_exp(lq);
      dz[i] = q > 0.0f ? -C * q * (lq + Hf) : 0.0f;
    }
  }
  return H;
}

// ---------------------------------------------------------------- dkd

// log-probability of one column g and of "everything else" from (max, sum) of the others and x_g.
static inline void split_logs(float m_ng, double s_ng, float xg, double iT, double* l_g, double* l_ng) {
  const double M = (double)(m_ng > xg ? m_ng : xg);
  const double e_ng = s_ng > 0.0 ? s_ng * std::exp(((double)m_ng - M) * iT) : 0.0;
  const double e_g = std::exp(((double)xg - M) * iT);
  const double L = std::log(e_ng + e_g);
  *l_g = ((double)xg - M) * iT - L;
  *l_ng = s_ng > 0.0 ? std::log(s_ng) + ((double)m_ng - M) * iT - L : -INFINITY;
}

static double row_dkd(const KdCtx& c, const float* z, const float* y, int32_t g, float* dz, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY, mt = -INFINITY;
  double ss = 0, st = 0;
  for (int64_t b = 0; b < g; b += KD_BLOCK) {
    lse_block(z + b, blk(b, g), iT, &ms, &ss);
    lse_block(y + b, blk(b, g), iT, &mt, &st);
  }
  for (int64_t b = g + 1; b < Vv; b += KD_BLOCK) {
    lse_block(z + b, blk(b, Vv), iT, &ms, &ss);
    lse_block(y + b, blk(b, Vv), iT, &mt, &st);
  }
  double lqg, l1q, lpg, l1p;
  split_logs(ms, ss, z[g], c.iTd, &lqg, &l1q);
  split_logs(mt, st, y[g], c.iTd, &lpg, &l1p);
  const double qg = std::exp(lqg), pg = std::exp(lpg), p1 = std::exp(l1p);
  const double tckd = (pg > 0 ? pg * (lpg - lqg) : 0.0) + (p1 > 0 ? p1 * (l1p - l1q) : 0.0);
  // non-target distributions q̂ = softmax over i ≠ g; a row with no non-target mass gets q̂ = 0
  const float msn = ss > 0 ? ms : 0.0f, mtn = st > 0 ? mt : 0.0f;
  const float lsn = ss > 0 ? (float)std::log(ss) : INFINITY, ltn = st > 0 ? (float)std::log(st) : INFINITY;
  const double al = c.a->dkd_alpha, be = c.a->dkd_beta;
  const double Cd = c.gs * c.s2 * c.iTd;
  const float ca = (float)(-Cd * al * (qg - pg)), cb = (float)(Cd * be);
  double nckd = 0;
  for (int seg = 0; seg < 2; seg++) {
    const int64_t lo = seg == 0 ? 0 : g + 1, hi = seg == 0 ? g : Vv;
    for (int64_t b = lo; b < hi; b += KD_BLOCK) {
      const int64_t n = blk(b, hi);
      const float* zb = z + b;
      const float* yb = y + b;
      float* d = dz ? dz + b : sc.blockA;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - msn) * iT - lsn, lp = (yb[i] - mtn) * iT - ltn;
        const float q = kd_exp(lq), p = kd_exp(lp);
        d[i] = ca * q + cb * (q - p);
        acc += p > 0.0f ? p * (lp - lq) : 0.0f;
      }
      nckd += acc;
    }
  }
  if (dz) dz[g] = (float)(Cd * al * (qg - pg));
  return al * tckd + be * nckd;
}

// ---------------------------------------------------------------- deltakd

static inline float delta_target(float zsb, float ytf, float ytb) {
  const float v = zsb + (ytf - ytb);
  return (zsb > -INFINITY && ytf > -INFINITY && ytb > -INFINITY) ? v : -INFINITY;
}

// λ·CE(softmax(z), g) + (1−λ)·s2·KL(p*‖q). Returns the row loss with s2 already applied to the KL part.
static double row_deltakd(const KdCtx& c, const float* z, const float* y, const float* zsb, const float* ytb,
                          int32_t g, float* dz, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  const double lam = c.a->lambda;
  const bool use_ce = lam > 0.0;
  const bool sep1 = use_ce && c.iTd != 1.0;  // a separate temperature-1 softmax for the CE term
  float ms = -INFINITY, mt = -INFINITY, m1 = -INFINITY;
  double ss = 0, st = 0, s1 = 0;
  float* zt = sc.blockB;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    lse_block(z + b, n, iT, &ms, &ss);
    if (sep1) lse_block(z + b, n, 1.0f, &m1, &s1);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) zt[i] = delta_target(zsb[b + i], y[b + i], ytb[b + i]);
    lse_block(zt, n, iT, &mt, &st);
  }
  if (!sep1) {  // T = 1 (then q1 = q) or λ = 0 (q1 unused)
    m1 = ms;
    s1 = ss;
  }
  const double l1d = std::log(s1);
  const float ls = (float)std::log(ss), lt = (float)std::log(st), l1 = (float)l1d;
  const float ckl = (float)(c.gs * (1.0 - lam) * c.s2 * c.iTd);
  const float cce = (float)(c.gs * lam);
  double kl = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    float* d = dz ? dz + b : sc.blockA;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) zt[i] = delta_target(zsb[b + i], y[b + i], ytb[b + i]);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) {
      const float lq = (zb[i] - ms) * iT - ls, lp = (zt[i] - mt) * iT - lt;
      const float q = kd_exp(lq), p = kd_exp(lp);
      const float q1 = kd_exp((zb[i] - m1) - l1);  // softmax(z) for the CE term
      d[i] = ckl * (q - p) + cce * q1;
      acc += p > 0.0f ? p * (lp - lq) : 0.0f;
    }
    kl += acc;
  }
  double ce = 0;
  if (use_ce) {
    ce = ((double)m1 - (double)z[g]) + l1d;
    if (dz) dz[g] -= cce;
  }
  return lam * ce + (1.0 - lam) * c.s2 * kl;
}

// ---------------------------------------------------------------- top-k teacher

static void sort_keys(int64_t* a, int64_t n) {
  // Shell sort (Ciura's gaps, extended by ×2.25): k is small, and this needs no STL.
  static const int64_t gaps[] = {1, 4, 10, 23, 57, 132, 301, 701, 1577, 3548, 7983, 17961, 40412, 90927,
                                 204585, 460316, 1035711};
  int gi = 0;
  while (gi + 1 < (int)(sizeof(gaps) / sizeof(gaps[0])) && gaps[gi + 1] < n) gi++;
  for (; gi >= 0; gi--) {
    const int64_t gap = gaps[gi];
    for (int64_t i = gap; i < n; i++) {
      const int64_t v = a[i];
      int64_t j = i;
      while (j >= gap && a[j - gap] > v) {
        a[j] = a[j - gap];
        j -= gap;
      }
      a[j] = v;
    }
  }
}

static inline double lae(double x, double y) {
  if (x < y) {
    const double t = x;
    x = y;
    y = t;
  }
  return y == -INFINITY ? x : x + std::log1p(std::exp(y - x));
}

// Divergence between bucket distributions Q (student) and P (teacher) given as log-probabilities, and
// h[b] = ∂L/∂Q_b, g[b] = Q_b·h[b] = ∂L/∂log Q_b.
static double bucket_div(KdKind kind, double w, int64_t nb, const double* lQ, const double* lP, double* g,
                         double* h) {
  double L = 0;
  const double lw = std::log(w), lw1 = std::log1p(-w);
  for (int64_t b = 0; b < nb; b++) {
    const double lq = lQ[b], lp = lP[b], Q = std::exp(lq), P = std::exp(lp);
    double hb = 0, gb;
    switch (kind) {
      case KdKind::fkl:
        L += P > 0 ? P * (lp - lq) : 0.0;
        hb = P > 0 ? -std::exp(lp - lq) : 0.0;
        gb = -P;
        break;
      case KdKind::rkl:
        L += Q > 0 ? Q * (lq - lp) : 0.0;
        hb = lq - lp + 1.0;
        gb = Q > 0 ? Q * hb : 0.0;
        break;
      case KdKind::jsd: {
        const double lm = lae(lw + lp, lw1 + lq);
        L += (P > 0 ? P * (lp - lm) : 0.0) / (1.0 - w) + (Q > 0 ? Q * (lq - lm) : 0.0) / w;
        hb = (lq - lm) / w;
        gb = Q > 0 ? Q * hb : 0.0;
        break;
      }
      case KdKind::tvd:
        L += 0.5 * std::fabs(Q - P);
        hb = Q > P ? 0.5 : (Q < P ? -0.5 : 0.0);
        gb = Q * hb;
        break;
      case KdKind::skl: {  // r = w·p + (1−w)·q, w = α
        const double lr = lae(lw + lp, lw1 + lq);
        L += P > 0 ? P * (lp - lr) : 0.0;
        hb = P > 0 ? -(1.0 - w) * std::exp(lp - lr) : 0.0;
        gb = Q > 0 ? Q * hb : 0.0;
        break;
      }
      default: {  // srkl: r = w·p + (1−w)·q, w = 1 − α
        const double lr = lae(lw + lp, lw1 + lq);
        L += Q > 0 ? Q * (lq - lr) : 0.0;
        hb = lq - lr + 1.0 - (1.0 - w) * std::exp(lq - lr);
        gb = Q > 0 ? Q * hb : 0.0;
        break;
      }
    }
    h[b] = hb;
    g[b] = gb;
  }
  return L;
}

// Returns the row loss; on a bad id sets *bad_status/*bad_value and returns 0.
static double row_topk(const KdCtx& c, const float* z, const int32_t* ids, const float* lps, float* dz,
                       KdScratch& sc, KdStatus* bad_status, int64_t* bad_value) {
  const KdArgs& a = *c.a;
  const int64_t Vv = c.Vv, k = a.k;
  const float iT = c.iT;
  const double iTd = c.iTd;
  int64_t* keys = sc.keys;
  for (int64_t j = 0; j < k; j++) {
    const int32_t id = ids[j];
    if (id < 0 || id >= Vv) {
      *bad_status = KdStatus::bad_id;
      *bad_value = id;
      return 0.0;
    }
    keys[j] = ((int64_t)id << 32) | j;
  }
  sort_keys(keys, k);
  for (int64_t j = 1; j < k; j++)
    if ((keys[j] >> 32) == (keys[j - 1] >> 32)) {
      *bad_status = KdStatus::duplicate_id;
      *bad_value = keys[j] >> 32;
      return 0.0;
    }
  // pass 1: the student's (max, sum) over the gaps between the ids (the tail), then the ids themselves
  float mtail = -INFINITY;
  double stail = 0;
  int64_t prev = 0;
  float M = -INFINITY;
  for (int64_t j = 0; j < k; j++) {
    const int64_t id = keys[j] >> 32;
    lse_range(z, prev, id, iT, &mtail, &stail);
    sc.zs[j] = z[id];
    M = z[id] > M ? z[id] : M;
    prev = id + 1;
  }
  lse_range(z, prev, Vv, iT, &mtail, &stail);
  M = mtail > M ? mtail : M;
  const double Md = (double)M;
  const double etail = stail > 0 ? stail * std::exp(((double)mtail - Md) * iTd) : 0.0;
  double tot = etail;
  for (int64_t j = 0; j < k; j++) tot += std::exp(((double)sc.zs[j] - Md) * iTd);
  const double L = std::log(tot);
  double* lq = sc.lq;
  double* lp = sc.lp;
  for (int64_t j = 0; j < k; j++) lq[j] = ((double)sc.zs[j] - Md) * iTd - L;
  lq[k] = etail > 0 ? std::log(stail) + ((double)mtail - Md) * iTd - L : -INFINITY;
  // teacher buckets, re-tempered: P_b ∝ exp(logprob_b / T)
  const bool bucket = a.tail == KdTail::bucket;
  double psum = 0;
  for (int64_t j = 0; j < k; j++) {
    lp[j] = (double)lps[keys[j] & 0xffffffff];
    psum += std::exp(lp[j]);
  }
  const double ptail = bucket && psum < 1.0 ? 1.0 - psum : 0.0;
  lp[k] = ptail > 0 ? std::log(ptail) : -INFINITY;
  double lnorm = -INFINITY;
  for (int64_t j = 0; j <= k; j++) {
    lp[j] *= iTd;
    lnorm = lae(lnorm, lp[j]);
  }
  for (int64_t j = 0; j <= k; j++) lp[j] -= lnorm;

  const double Cd = c.gs * c.s2 * iTd;
  double loss;
  if (c.kind == KdKind::rkl && !bucket) {
    // KL(q̃‖p̃), both renormalised over the ids; the gradient lives on the ids only
    double ls = -INFINITY;
    for (int64_t j = 0; j < k; j++) ls = lae(ls, lq[j]);
    for (int64_t j = 0; j < k; j++) lq[j] -= ls;
    loss = bucket_div(KdKind::rkl, c.wd, k, lq, lp, sc.g, sc.h);
    if (dz) {
      double G = 0;
      for (int64_t j = 0; j < k; j++) G += sc.g[j];
      zero_range(dz, Vv);
      for (int64_t j = 0; j < k; j++) dz[keys[j] >> 32] = (float)(Cd * (sc.g[j] - std::exp(lq[j]) * G));
    }
    return loss;
  }
  loss = bucket_div(c.kind, c.wd, k + 1, lq, lp, sc.g, sc.h);
  if (!dz) return loss;
  double G = 0;
  for (int64_t j = 0; j <= k; j++) G += sc.g[j];
  // columns outside the ids: ∂/∂z_i = q_i·(h_tail − Σg)/T, written as ±exp(log q_i + log|coef|)
  const double coef = lq[k] > -INFINITY ? (sc.h[k] - G) * Cd : 0.0;
  const bool any = coef != 0.0 && coef == coef;
  const float sgn = coef < 0 ? -1.0f : 1.0f;
  const float off = any ? (float)(L - std::log(std::fabs(coef))) : 0.0f;
  prev = 0;
  for (int64_t j = 0; j <= k; j++) {
    const int64_t hi = j < k ? keys[j] >> 32 : Vv;
    if (any) {
#pragma omp simd
      for (int64_t i = prev; i < hi; i++) dz[i] = sgn * kd_exp((z[i] - M) * iT - off);
    } else {
      zero_range(dz + prev, hi - prev);
    }
    if (j < k) dz[hi] = (float)(Cd * (sc.g[j] - std::exp(lq[j]) * G));
    prev = hi + 1;
  }
  return loss;
}

// ---------------------------------------------------------------- driver

KdResult kd_loss(const KdArgs& a) {
  KdResult res;
  KdCtx c;
  c.a = &a;
  c.kind = a.kind;
  c.V = a.vocab;
  c.Vv = a.valid_vocab > 0 ? a.valid_vocab : a.vocab;
  c.iTd = 1.0 / (double)a.temperature;
  c.iT = (float)c.iTd;
  c.s2 = a.t2_scale ? (double)a.temperature * (double)a.temperature : 1.0;
  // endpoint substitutions (exact: these are the same losses)
  if (c.kind == KdKind::jsd && a.beta <= 0.0) c.kind = KdKind::fkl;
  if (c.kind == KdKind::jsd && a.beta >= 1.0) c.kind = KdKind::rkl;
  if (c.kind == KdKind::skl && a.alpha <= 0.0) c.kind = KdKind::fkl;
  if (c.kind == KdKind::srkl && a.alpha <= 0.0) c.kind = KdKind::rkl;
  c.wd = c.kind == KdKind::jsd ? a.beta : c.kind == KdKind::skl ? a.alpha : c.kind == KdKind::srkl ? 1.0 - a.alpha : 0.5;
  c.wbard = 1.0 - c.wd;
  c.w = (float)c.wd;
  c.wbar = (float)c.wbard;
  c.taid_t = (float)a.t;
  c.taid_omt = (float)(1.0 - a.t);
  c.taid_mode = a.t >= 1.0 ? 0 : (a.t <= 0.0 ? 1 : 2);
  const bool targets = kd_uses_targets(a);
  // counted rows (and target checks), serially: the gradient scale needs the count first
  int64_t counted = 0;
  for (int64_t r = 0; r < a.rows; r++) {
    if (a.mask && !a.mask[r]) continue;
    if (targets) {
      const int32_t t = a.targets[r];
      if (t == a.ignore_index) continue;
      if (t < 0 || t >= c.Vv) {
        res.status = KdStatus::bad_target;
        res.bad_row = r;
        res.bad_value = t;
        return res;
      }
    }
    counted++;
  }
  res.counted = counted;
  const double norm = a.reduction == KdReduction::mean ? (counted > 0 ? 1.0 / (double)counted : 0.0) : 1.0;
  c.gs = a.grad_scale * norm;
  const bool topk = !a.teacher && a.topk_ids;
  const int64_t kk = topk ? a.k : 0;
  const int64_t V = a.vocab, Vv = c.Vv;
  const bool threaded = a.rows > 1 && a.rows * V > 32768;
  KdStatus bad_status = KdStatus::ok;
  int64_t bad_row = -1, bad_value = 0;
#pragma omp parallel num_threads(num_threads()) if (threaded)
  {
    KdScratch sc;
    const size_t bytes = (size_t)(2 * KD_BLOCK) * sizeof(float) + (size_t)kk * sizeof(int64_t) +
                         (size_t)(4 * (kk + 1)) * sizeof(double) + (size_t)kk * sizeof(float) + 64;
    char* mem = (char*)std::malloc(bytes);
    sc.lq = (double*)mem;
    sc.lp = sc.lq + (kk + 1);
    sc.g = sc.lp + (kk + 1);
    sc.h = sc.g + (kk + 1);
    sc.keys = (int64_t*)(sc.h + (kk + 1));
    sc.blockA = (float*)(sc.keys + kk);
    sc.blockB = sc.blockA + KD_BLOCK;
    sc.zs = sc.blockB + KD_BLOCK;
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < a.rows; r++) {
      const float* z = a.student + r * V;
      float* dz = a.grad ? a.grad + r * V : nullptr;
      const int32_t g = targets ? a.targets[r] : 0;
      const bool skip = (a.mask && !a.mask[r]) || (targets && g == a.ignore_index);
      if (skip) {
        a.row_loss[r] = 0.0f;
        if (dz) zero_range(dz, V);
        continue;
      }
      const float* y = a.teacher ? a.teacher + r * V : nullptr;
      double loss = 0;
      bool soft = true;  // multiply the row loss by s2
      if (topk) {
        KdStatus st = KdStatus::ok;
        int64_t val = 0;
        loss = row_topk(c, z, a.topk_ids + r * kk, a.topk_logprobs + r * kk, dz, sc, &st, &val);
        if (st != KdStatus::ok) {
#pragma omp critical(undo_kd_error)
          if (bad_row < 0 || r < bad_row) {
            bad_row = r;
            bad_status = st;
            bad_value = val;
          }
        }
      } else {
        switch (c.kind) {
          case KdKind::fkl:
          case KdKind::taid: loss = row_fkl(c, z, y, dz, sc); break;
          case KdKind::rkl: loss = row_rkl(c, z, y, dz, sc); break;
          case KdKind::jsd:
          case KdKind::tvd:
          case KdKind::skl:
          case KdKind::srkl: loss = row_mix(c, z, y, dz, sc); break;
          case KdKind::dkd: loss = row_dkd(c, z, y, g, dz, sc); break;
          case KdKind::deltakd:
            loss = row_deltakd(c, z, y, a.student_base + r * V, a.teacher_base + r * V, g, dz, sc);
            soft = false;
            break;
          case KdKind::ce: loss = row_ce(c, z, g, dz); break;
          case KdKind::maxent: loss = row_maxent(c, z, dz, sc); break;
          default: loss = row_entropy(c, z, dz); break;
        }
      }
      a.row_loss[r] = (float)(soft ? c.s2 * loss : loss);
      if (dz && Vv < V) zero_range(dz + Vv, V - Vv);
    }
    std::free(mem);
  }
  if (bad_status != KdStatus::ok) {
    res.status = bad_status;
    res.bad_row = bad_row;
    res.bad_value = bad_value;
    return res;
  }
  double sum = 0;
  for (int64_t r = 0; r < a.rows; r++) sum += (double)a.row_loss[r];
  res.loss = a.grad_scale * sum * norm;
  return res;
}

UNDO_ISA_END

#if UNDO_ISA_IS_GENERIC
#include <cstring>
namespace undo {

static const char* const kKdNames[] = {"fkl", "rkl", "jsd", "tvd", "skl", "srkl", "taid", "dkd", "deltakd", "ce", "maxent",
                                       "entropy"};

const char* kd_kind_name(KdKind k) {
  const int i = (int)k;
  return i >= 0 && i < (int)KdKind::count_ ? kKdNames[i] : "?";
}

bool kd_parse_kind(const char* name, KdKind* out) {
  for (int i = 0; i < (int)KdKind::count_; i++)
    if (std::strcmp(name, kKdNames[i]) == 0) {
      *out = (KdKind)i;
      return true;
    }
  return false;
}

bool kd_uses_teacher(KdKind k) {
  return k != KdKind::ce && k != KdKind::maxent && k != KdKind::entropy;
}

bool kd_uses_targets(const KdArgs& a) {
  return a.kind == KdKind::ce || a.kind == KdKind::dkd || (a.kind == KdKind::deltakd && a.lambda > 0.0);
}

bool kd_supports_topk(KdKind k) {
  return k == KdKind::fkl || k == KdKind::rkl || k == KdKind::jsd || k == KdKind::tvd || k == KdKind::skl ||
         k == KdKind::srkl;
}

static KdResult kd_bad(const char* msg) {
  KdResult r;
  r.status = KdStatus::bad_args;
  r.message = msg;
  return r;
}

static bool unit(double x) { return x >= 0.0 && x <= 1.0; }

KdResult kd_loss(const KdArgs& a) {
  if ((int)a.kind < 0 || a.kind >= KdKind::count_) return kd_bad("unknown loss kind");
  if (a.rows < 0 || a.vocab <= 0) return kd_bad("rows must be ≥ 0 and vocab > 0");
  if (a.valid_vocab < 0 || a.valid_vocab > a.vocab) return kd_bad("valid_vocab must be in [0, vocab]");
  if (!(a.temperature > 0.0f) || !std::isfinite(a.temperature)) return kd_bad("temperature must be finite and > 0");
  if (!a.student || !a.row_loss) return kd_bad("student logits and row_loss are required");
  const bool topk = !a.teacher && a.topk_ids;
  if (kd_uses_teacher(a.kind)) {
    if (!a.teacher && !a.topk_ids) return kd_bad("this loss needs a teacher");
    if (topk) {
      if (!kd_supports_topk(a.kind)) return kd_bad("this loss needs full teacher logits (top-k is for fkl rkl jsd tvd skl srkl)");
      if (!a.topk_logprobs) return kd_bad("top-k teacher needs logprobs");
      const int64_t vv = a.valid_vocab > 0 ? a.valid_vocab : a.vocab;
      if (a.k < 1 || a.k > vv) return kd_bad("top-k k must be in [1, vocab]");
    }
  }
  if (kd_uses_targets(a) && !a.targets) return kd_bad("this loss needs targets");
  if (a.kind == KdKind::deltakd && (!a.student_base || !a.teacher_base))
    return kd_bad("deltakd needs studentBase and teacherBase logits");
  if (!unit(a.beta) || !unit(a.alpha) || !unit(a.t) || !unit(a.lambda)) return kd_bad("beta, alpha, t and lambda must be in [0, 1]");
  if (!(a.dkd_alpha >= 0.0) || !(a.dkd_beta >= 0.0)) return kd_bad("dkd alpha and beta must be ≥ 0");
  if (!std::isfinite(a.grad_scale)) return kd_bad("grad_scale must be finite");
  UNDO_DISPATCH(kd_loss, a)
}

}  // namespace undo
#endif
