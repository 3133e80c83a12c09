// Distillation / unlearning loss kernels (see kd_losses.h for the definitions). Compiled once per ISA.
//
// Per row, with raw logits x and temperature T, a distribution is kept as (M, s): M = max x over the valid
// columns, s = Σ exp((x − M)/T), so log-probabilities are (x − M)/T − log s: the subtraction x − M happens
// on the raw logits (exact for nearby values), so large logits (±1e4) keep their small differences.
//   pass 1  blocked online max/sum over the student row (and the teacher's): per block of KD_BLOCK columns,
//           the block max (rescaling the running sum when it rises), then e_i = exp((x_i − m)/T) against the
//           running max m, summed and *stored* (m is remembered per block): the student's in the gradient
//           row, the teacher's in a per-thread scratch row. Each input row is read from memory once; later
//           passes re-read it from L1/L2.
//   pass 2  q_i = e_i·exp((m_block − M)/T − log s): a multiply instead of a second exp (likewise p_i). It
//           writes the gradient, or, for the losses whose gradient needs a row sum first (JSD, TVD, skew
//           KL, skew reverse KL), accumulates that sum and leaves per-column values in the two rows for
//   pass 3  the gradient.
// So every element costs one exp per distribution (two with a full teacher), plus one log for JSD and the
// skew KLs. Top-k teachers: the k id columns are marked (a per-thread byte row, which also catches
// repeated ids) and stored as 0 in pass 1, so the block sums give the student's mass outside the ids (the
// tail) directly, not as 1 − Σ; the k+1 bucket distributions are then handled in double, and pass 2
// rescales the stored row and writes the k id columns.
// Without a gradient output the student's stored values go to a per-thread scratch row instead.
// All scratch is per thread (at most three rows of vocab floats and bytes), never rows × vocab.
#include "kd_losses.h"

#include <cstdlib>

#include "simd.h"

UNDO_ISA_BEGIN

static const int64_t KD_BLOCK = 2048;

// 2^t for t ≤ 0: undo_exp2_neg in simd.h.
static inline float kd_exp2(float t) { return undo_exp2_neg(t); }

static const float kLog2e = 1.44269504088896341f;

// e^x for x ≤ 0.
static inline float kd_exp(float x) { return kd_exp2(x * kLog2e); }

// Cephes logf: log(1 + f) = f − f²/2 + f³·P(f) for f ∈ [√½ − 1, √2 − 1), P of degree 8 (coefficients c0..c8),
// and the exponent added as ef·(0.693359375 − 2.12194440e-4) (ln 2 split so that ef·hi is exact). kd_log_poly is
// that sum for a reduced (f, ef), P by Estrin's scheme (short dependency chains); v_log_norm below is its AVX-512
// form with the same constants.
static const float kLogP[9] = {3.3333331174E-1f, -2.4999993993E-1f, 2.0000714765E-1f, -1.6668057665E-1f, 1.4249322787E-1f,
                               -1.2420140846E-1f, 1.1676998740E-1f, -1.1514610310E-1f, 7.0376836292E-2f};
static const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;

static inline float kd_log_poly(float f, float ef) {
  const float z = f * f, z2 = z * z, z4 = z2 * z2;
  const float a01 = kLogP[0] + f * kLogP[1], a23 = kLogP[2] + f * kLogP[3];
  const float a45 = kLogP[4] + f * kLogP[5], a67 = kLogP[6] + f * kLogP[7];
  const float c07 = (a01 + z * a23) + z2 * (a45 + z * a67);
  float y = (c07 + z4 * kLogP[8]) * f * z;
  y += kLn2Lo * ef;
  y += -0.5f * z;
  return (f + y) + kLn2Hi * ef;
}

// Splits a normal x > 0 into f = m − 1 with m ∈ [√½, √2) and the exponent ef (x = m·2^ef).
static inline void kd_log_reduce(float x, float* f, float* ef) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const int32_t e = ((bits >> 23) & 0xff) - 126;
  const int32_t mbits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &mbits, 4);
  const bool lo = m < 0.707106781186547524f;
  *f = lo ? m + m - 1.0f : m - 1.0f;
  *ef = (float)(lo ? e - 1 : e);
}

// Natural log of x > 0 (~1 ulp), vectorisable: no branches, no libm call. Denormal inputs are scaled up first;
// 0 gives ≈ −104 instead of −inf (callers pass x > 0); NaN and inf give NaN.
static inline float kd_log(float x) {
  const bool tiny = x < 1.17549435e-38f;
  float f, ef;
  kd_log_reduce(tiny ? x * 8388608.0f : x, &f, &ef);  // 2^23
  return kd_log_poly(f, ef - (tiny ? 23.0f : 0.0f)) + (x - x);
}

// kd_log for normal x > 0 only (no denormal scaling, no NaN propagation: callers mask what they don't use).
static inline float kd_log_norm(float x) {
  float f, ef;
  kd_log_reduce(x, &f, &ef);
  return kd_log_poly(f, ef);
}

// log1p(t) for t > −1, accurate relative to the result for small t: log(u) + (t − (u − 1))/u with u = fl(1 + t)
// (the second term restores what rounding 1 + t lost). Division-free: 1/u ≈ 2 − u is plenty for that tiny
// correction on u < 2, and beyond it the correction is below an ulp of log(u). Garbage (not NaN) for t = ±inf
// or NaN: callers select those lanes away.
static inline float kd_log1p(float t) {
  const float u = 1.0f + t;
  const float c = t - (u - 1.0f);
  return kd_log_norm(u) + (u < 2.0f ? c * (2.0f - u) : 0.0f);
}

// Mixture m = w·p + (1−w)·q of two probabilities, δ = log p − log q (from the logits):
//   dq = log q − log m = −log1p(w·(p − q)/q),   dp = log p − log m = −log1p((1−w)·(q − p)/p) = dq + δ.
// kd_mix_direct evaluates one of them by its log1p form, chosen by `flip` (1 when w > ½, else 0): dp when
// flipped, else dq, with c = min(w, 1−w); callers derive the other by ±δ (kd_mix_other). The log1p argument
// is then > −½, and the derived side is the one whose weight in JS_β/(β(1−β)) is ≤ 2, so nothing amplifies
// rounding near β → 0 or β → 1. Where the direct side's probability is 0, the other is exactly −log c.
static inline float kd_mix_direct(float p, float q, float c, float flip) {
  const float s = flip > 0.5f ? p : q, o = flip > 0.5f ? q : p;
  return -kd_log1p(c * ((o - s) / s));
}
static inline float kd_mix_other(float direct, float p, float q, float delta, float logc, float flip) {
  const float s = flip > 0.5f ? p : q;
  return s > 0.0f ? (flip > 0.5f ? direct - delta : direct + delta) : -logc;
}

#if defined(__AVX512F__)
// AVX-512 forms of the hot loops (the auto-vectorised scalar code above needs ~5 more instructions per exp and
// per log for the exponent bit-fiddling that vscalefps / vgetexpps / vgetmantps do in one). Same polynomials,
// so the results agree with the scalar forms to an ulp or two.
static inline __m512 v_log_norm(__m512 x) {  // kd_log_norm: x > 0 normal (getexp/getmant do kd_log_reduce)
  __m512 e = _mm512_getexp_ps(x);
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  const __mmask16 hi = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237309505f), _CMP_GE_OQ);
  m = _mm512_mask_mul_ps(m, hi, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, hi, e, _mm512_set1_ps(1.0f));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(f, f), z2 = _mm512_mul_ps(z, z), z4 = _mm512_mul_ps(z2, z2);
  auto c = [](int i) { return _mm512_set1_ps(kLogP[i]); };
  const __m512 a01 = _mm512_fmadd_ps(f, c(1), c(0)), a23 = _mm512_fmadd_ps(f, c(3), c(2));
  const __m512 a45 = _mm512_fmadd_ps(f, c(5), c(4)), a67 = _mm512_fmadd_ps(f, c(7), c(6));
  const __m512 c07 = _mm512_fmadd_ps(z2, _mm512_fmadd_ps(z, a67, a45), _mm512_fmadd_ps(z, a23, a01));
  __m512 y = _mm512_fmadd_ps(z4, c(8), c07);
  y = _mm512_mul_ps(_mm512_mul_ps(y, f), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(kLn2Lo), y);
  y = _mm512_fmadd_ps(z, _mm512_set1_ps(-0.5f), y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(kLn2Hi), _mm512_add_ps(f, y));
}

static inline __mmask16 v_tail(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u); }

static inline float v_sum(__m512 v) { return _mm512_reduce_add_ps(v); }
#endif

static inline int64_t blk(int64_t b, int64_t hi) { return hi - b < KD_BLOCK ? hi - b : KD_BLOCK; }

static inline void zero_range(float* d, int64_t n) {
  if (n > 0) std::memset(d, 0, (size_t)n * sizeof(float));
}

static inline float block_max(const float* x, int64_t n) {
  float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
  for (int64_t i = 0; i < n; i++) bm = x[i] > bm ? x[i] : bm;
  return bm;
}

// Running (max, sum) update for a block whose max is bm; returns the frame (running max) of the block.
static inline float raise_max(float bm, float iT, float* m, double* s) {
  if (bm > *m) {
    *s = *s > 0.0 ? *s * std::exp((double)(*m - bm) * (double)iT) : 0.0;
    *m = bm;
  }
  return *m;
}

// One block of the online (max, sum) of x/T, not stored (teacher rows).
static inline void lse_block(const float* x, int64_t n, float iT, float* m, double* s) {
  raise_max(block_max(x, n), iT, m, s);
  if (*m == -INFINITY) return;
  const float mm = *m, c2 = iT * kLog2e;
  float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
  for (int64_t i = 0; i < n; i++) bs += kd_exp2((x[i] - mm) * c2);
  *s += bs;
}

// One block of the online (max, sum) of x/T with e_i = exp((x_i − m)/T) stored in out; returns the frame m.
static inline float lse_store_block(const float* x, int64_t n, float iT, float* m, double* s, float* out) {
  const float mm = raise_max(block_max(x, n), iT, m, s);
  if (mm == -INFINITY) {
    zero_range(out, n);
    return mm;
  }
  const float c2 = iT * kLog2e;
  float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
  for (int64_t i = 0; i < n; i++) {
    const float e = kd_exp2((x[i] - mm) * c2);
    out[i] = e;
    bs += e;
  }
  *s += bs;
  return mm;
}

// Factor turning a block's stored e_i into scale·q_i: scale·exp((m_b − M)/T − log s).
static inline float frame_factor(float mb, double M, double iT, double L, double scale) {
  return mb == -INFINITY ? 0.0f : (float)(scale * std::exp(((double)mb - M) * iT - L));
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
  float mixc, mixlogc;  // min(w, 1 − w) and its log (kd_mix_direct / kd_mix_other)
  float mixflip;        // 1 when w > ½, else 0
  float taid_t, taid_omt;
  int taid_mode;      // 0: target = teacher (t = 1), 1: target = student (t = 0), 2: mixed
};

// Per-thread scratch: a block for built targets (TAID, Delta-KD), a row for the student's stored values when
// there is no gradient output, a row for the teacher's stored values, the per-block frames, and the top-k
// work arrays. (Per thread, not per row: threads × vocab floats at most.)
struct KdScratch {
  float* block;
  float* row;
  float* frames;
  float* trow;     // the teacher's stored exp values (full-teacher losses), vocab floats
  float* tframes;
  uint8_t* mark;  // [vocab] top-k ids of the current row
  double* lq;   // [k+1] bucket log-probabilities and probabilities, student and teacher
  double* lp;
  double* q;
  double* p;
  double* g;    // [k+1] ∂L/∂log q per bucket
  float* zs;    // [k]
  const char* pf[2];  // the next row's student and teacher logits (jsd prefetches them in pass 2), or null
};

// ---------------------------------------------------------------- full teacher: fkl, taid

// KL(p‖q) with p = softmax(y'/T), y' = y (fkl) or TAID's target (1−t)·z + t·y (built per block in scratch,
// so the loops below are the same for both); gradient (q − p)/T.
static double row_fkl(const KdCtx& c, const float* z, const float* y, float* d, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  const bool mix = c.kind == KdKind::taid && c.taid_mode == 2;
  if (c.kind == KdKind::taid && c.taid_mode == 1) {  // t = 0: the target is q itself
    zero_range(d, Vv);
    return 0.0;
  }
  const float tt = c.taid_t, omt = c.taid_omt;
  float* yt = sc.block;
  float ms = -INFINITY, mt = -INFINITY;
  double ss = 0, st = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    sc.frames[bi] = lse_store_block(z + b, n, iT, &ms, &ss, d + b);
    if (mix) {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) yt[i] = omt * z[b + i] + tt * y[b + i];
    }
    sc.tframes[bi] = lse_store_block(mix ? yt : y + b, n, iT, &mt, &st, sc.trow + b);
  }
  const double L = std::log(ss), Lt = std::log(st);
  const float ls = (float)L, lt = (float)Lt;
  const double Cd = c.gs * c.s2 * c.iTd;
  const float C = (float)Cd;
  double loss = 0;
  bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    if (mix) {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) yt[i] = omt * zb[i] + tt * y[b + i];
    }
    const float* yb = mix ? yt : y + b;
    const float* tb = sc.trow + b;
    float* db = d + b;
    const float fq = frame_factor(sc.frames[bi], ms, c.iTd, L, 1.0);
    const float fp = frame_factor(sc.tframes[bi], mt, c.iTd, Lt, 1.0);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) {
      const float lq = (zb[i] - ms) * iT - ls;
      const float lp = (yb[i] - mt) * iT - lt;
      const float q = db[i] * fq, p = tb[i] * fp;
      db[i] = C * (q - p);
      acc += p > 0.0f ? p * (lp - lq) : 0.0f;
    }
    loss += acc;
  }
  return loss;
}

// ---------------------------------------------------------------- full teacher: rkl

// Pass 1 block for reverse KL: the stored online (max, sum) of z/T plus
// a = Σ e_i·((z_i − ms) − (y_i − mt)), kept in the frames of the student's running max ms and the teacher's
// running max mt (which lse_block has already moved over this block of y). Centred differences stay exact
// where it matters (the heavy entries have z ≈ ms); a raw z − y would round to an ulp of |z| (5e-4 at 1e4).
// mt_prev: the teacher max that a was accumulated with.
static inline float rkl_store_block(const float* z, const float* y, int64_t n, float iT, float mt, float* mt_prev,
                                    float* m, double* s, double* a, float* out) {
  const float bm = block_max(z, n);
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
  const float mm = *m;
  if (mm == -INFINITY) {
    zero_range(out, n);
    return mm;
  }
  const float c2 = iT * kLog2e;
  float bs = 0.0f, ba = 0.0f;
#pragma omp simd reduction(+ : bs, ba)
  for (int64_t i = 0; i < n; i++) {
    const float e = kd_exp2((z[i] - mm) * c2);
    const float yc = y[i] == -INFINITY ? -INFINITY : y[i] - mt;  // a −inf teacher entry under student mass: +inf
    out[i] = e;
    bs += e;
    ba += e > 0.0f ? e * ((z[i] - mm) - yc) : 0.0f;
  }
  *s += bs;
  *a += ba;
  return mm;
}

static double row_rkl(const KdCtx& c, const float* z, const float* y, float* d, bool want_grad, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY, mt = -INFINITY, mt_prev = -INFINITY;
  double ss = 0, st = 0, A = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    lse_block(y + b, n, iT, &mt, &st);
    sc.frames[bi] = rkl_store_block(z + b, y + b, n, iT, mt, &mt_prev, &ms, &ss, &A, d + b);
  }
  const double L = std::log(ss), ltd = std::log(st);
  // Σ q (log q − log p) = Σ q ((z − ms) − (y − mt))/T − log ss + log st
  const double R = A / ss * c.iTd - L + ltd;
  if (!want_grad) return R;
  const float ls = (float)L, lt = (float)ltd, Rf = (float)R;
  bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    const float* yb = y + b;
    float* db = d + b;
    const float fq = frame_factor(sc.frames[bi], ms, c.iTd, L, c.gs * c.s2 * c.iTd);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
      const float lq = (zb[i] - ms) * iT - ls;
      const float lp = (yb[i] - mt) * iT - lt;
      const float cq = db[i] * fq;  // C·q
      db[i] = cq != 0.0f ? cq * (lq - lp - Rf) : 0.0f;
    }
  }
  return R;
}

// ---------------------------------------------------------------- full teacher: jsd, tvd, skl, srkl

static double row_mix(const KdCtx& c, const float* z, const float* y, float* d, bool want_grad, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  const KdKind kind = c.kind;
  float ms = -INFINITY, mt = -INFINITY;
  double ss = 0, st = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    sc.frames[bi] = lse_store_block(z + b, n, iT, &ms, &ss, d + b);
    sc.tframes[bi] = lse_store_block(y + b, n, iT, &mt, &st, sc.trow + b);
  }
  const double L = std::log(ss), Lt = std::log(st);
  const float ls = (float)L, lt = (float)Lt;
  const float w = c.w, wbar = c.wbar, mc = c.mixc, mlc = c.mixlogc;
  const float flip = c.mixflip;
  const bool mid = c.mixc >= 0.25f;
  // pass 2: the loss, the row sum S the gradient needs, and a per-column value v left in the row (and q in
  // the teacher's row, for pass 3):
  //   jsd  loss Σ p·dp/(1−β) + q·dq/β   S = Σ q·dq (= KL(q‖m))   v = dq
  //   tvd  loss ½Σ|q − p|                S = Σ q·s               v = s = ½·sign(q − p)
  //   skl  loss Σ p·dp                   S = Σ q·p/r             v = p/r     (r = αp + (1−α)q)
  //   srkl loss Σ q·dq                   S = Σ q·q/r             v = dq − α·q/r  (r = (1−α)p + αq)
  const float ib = (float)(1.0 / c.wd), ib1 = (float)(1.0 / c.wbard);
  double loss = 0, S = 0;
  bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    const float* yb = y + b;
    float* db = d + b;
    float* tb = sc.trow + b;
    const float fq = frame_factor(sc.frames[bi], ms, c.iTd, L, 1.0);
    const float fp = frame_factor(sc.tframes[bi], mt, c.iTd, Lt, 1.0);
    float accl = 0.0f, accs = 0.0f;
    if (kind == KdKind::jsd && mid) {
      // ¼ ≤ β ≤ ¾: dq = log q − log m and dp = log p − log m with one log of the mixture m (no division, no
      // log1p). Its absolute rounding (an ulp of |log m|, like that of log q itself) is amplified at most 4×
      // by the 1/β, 1/(1−β) weights; nearer the ends the log1p forms below keep the small side exact.
#if defined(__AVX512F__)
      const char* pz = sc.pf[0] ? sc.pf[0] + b * 4 : nullptr;
      const char* py = sc.pf[1] ? sc.pf[1] + b * 4 : nullptr;
      const __m512 vms = _mm512_set1_ps(ms), vmt = _mm512_set1_ps(mt), viT = _mm512_set1_ps(iT);
      const __m512 vls = _mm512_set1_ps(ls), vlt = _mm512_set1_ps(lt), vfq = _mm512_set1_ps(fq), vfp = _mm512_set1_ps(fp);
      const __m512 vw = _mm512_set1_ps(w), vib = _mm512_set1_ps(ib), vib1 = _mm512_set1_ps(ib1);
      const __m512 zero = _mm512_setzero_ps();
      __m512 al = zero, as = zero;
      int64_t i = 0;
      auto step = [&](int64_t i, __mmask16 k) __attribute__((always_inline)) {
        const __m512 lq = _mm512_fmsub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, zb + i), vms), viT, vls);
        const __m512 lp = _mm512_fmsub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, yb + i), vmt), viT, vlt);
        const __m512 q = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, db + i), vfq);
        const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, tb + i), vfp);
        const __m512 lm = v_log_norm(_mm512_fmadd_ps(vw, _mm512_sub_ps(p, q), q));
        const __m512 dq = _mm512_sub_ps(lq, lm), dp = _mm512_sub_ps(lp, lm);
        const __m512 tq = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(q, zero, _CMP_GT_OQ), q, dq);
        const __m512 tp = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(p, zero, _CMP_GT_OQ), p, dp);
        al = _mm512_add_ps(al, _mm512_fmadd_ps(tp, vib1, _mm512_mul_ps(tq, vib)));
        as = _mm512_add_ps(as, tq);
        _mm512_mask_storeu_ps(db + i, k, dq);
        _mm512_mask_storeu_ps(tb + i, k, q);
      };
      for (; i + 16 <= n; i += 16) {
        if (pz) {
          __builtin_prefetch(pz + i * 4, 0, 2);
          __builtin_prefetch(py + i * 4, 0, 2);
        }
        step(i, (__mmask16)0xffff);
      }
      if (i < n) step(i, v_tail(n - i));
      accl = v_sum(al);
      accs = v_sum(as);
#else
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        const float lm = kd_log(w * (p - q) + q);
        const float dq = lq - lm, dp = lp - lm;
        const float tq = q > 0.0f ? q * dq : 0.0f, tp = p > 0.0f ? p * dp : 0.0f;
        accl += tp * ib1 + tq * ib;
        accs += tq;
        db[i] = dq;
        tb[i] = q;
      }
#endif
    } else if (kind == KdKind::jsd && flip < 0.5f) {  // β ≤ ½: dq by log1p, dp = dq + δ (kd_mix_direct, unrolled)
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        const float dq = -kd_log1p(mc * ((p - q) / q));
        const float dp = q > 0.0f ? dq + (lp - lq) : -mlc;
        const float tq = q > 0.0f ? q * dq : 0.0f, tp = p > 0.0f ? p * dp : 0.0f;
        accl += tp * ib1 + tq * ib;
        accs += tq;
        db[i] = dq;
        tb[i] = q;
      }
    } else if (kind == KdKind::jsd) {  // β > ½: dp by log1p, dq = dp − δ
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        const float dp = -kd_log1p(mc * ((q - p) / p));
        const float dq = p > 0.0f ? dp - (lp - lq) : -mlc;
        const float tq = q > 0.0f ? q * dq : 0.0f, tp = p > 0.0f ? p * dp : 0.0f;
        accl += tp * ib1 + tq * ib;
        accs += tq;
        db[i] = dq;
        tb[i] = q;
      }
    } else if (kind == KdKind::tvd) {
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float q = db[i] * fq, p = tb[i] * fp;
        const float s = q > p ? 0.5f : (q < p ? -0.5f : 0.0f);
        accl += q > p ? q - p : p - q;
        accs += q * s;
        db[i] = s;
        tb[i] = q;
      }
    } else if (kind == KdKind::skl) {
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        const float dd = kd_mix_direct(p, q, mc, flip), od = kd_mix_other(dd, p, q, lp - lq, mlc, flip);
        const float dp = flip > 0.5f ? dd : od;
        const float pr = p / (w * p + wbar * q);
        accl += p > 0.0f ? p * dp : 0.0f;
        accs += q > 0.0f ? q * pr : 0.0f;
        db[i] = pr;
        tb[i] = q;
      }
    } else {  // srkl
#pragma omp simd reduction(+ : accl, accs)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (yb[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        const float dd = kd_mix_direct(p, q, mc, flip), od = kd_mix_other(dd, p, q, lp - lq, mlc, flip);
        const float dq = flip > 0.5f ? od : dd;
        const float qr = q / (w * p + wbar * q);
        accl += q > 0.0f ? q * dq : 0.0f;
        accs += q > 0.0f ? q * qr : 0.0f;
        db[i] = dq - wbar * qr;
        tb[i] = q;
      }
    }
    loss += accl;
    S += accs;
  }
  if (kind == KdKind::tvd) loss *= 0.5;
  if (!want_grad) return loss;
  // pass 3: the gradient q·(a·v + b)
  //   jsd  q·(dq − S)/(βT)    tvd  q·(s − S)/T    skl  (1−α)·q·(S − p/r)/T    srkl  q·(v − L + α·S)/T
  const double Cd = c.gs * c.s2 * c.iTd;
  float ca, cb;
  if (kind == KdKind::jsd) {
    ca = (float)(Cd / c.wd);
    cb = (float)(-Cd / c.wd * S);
  } else if (kind == KdKind::tvd) {
    ca = (float)Cd;
    cb = (float)(-Cd * S);
  } else if (kind == KdKind::skl) {
    ca = (float)(-Cd * c.wbard);
    cb = (float)(Cd * c.wbard * S);
  } else {
    ca = (float)Cd;
    cb = (float)(Cd * (c.wbard * S - loss));
  }
  const float* tq = sc.trow;
#pragma omp simd
  for (int64_t i = 0; i < Vv; i++) d[i] = tq[i] > 0.0f ? tq[i] * (ca * d[i] + cb) : 0.0f;
  return loss;
}

// ---------------------------------------------------------------- no teacher: ce, maxent, entropy

static double row_ce(const KdCtx& c, const float* z, int32_t g, float* d, bool want_grad, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY;
  double ss = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) sc.frames[bi] = lse_store_block(z + b, blk(b, Vv), iT, &ms, &ss, d + b);
  const double L = std::log(ss);
  // (M − z_g)/T + log s: both terms ≥ 0, nothing cancels
  const double loss = ((double)ms - (double)z[g]) * c.iTd + L;
  if (want_grad) {
    const double Cd = c.gs * c.s2 * c.iTd;
    bi = 0;
    for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
      const int64_t n = blk(b, Vv);
      float* db = d + b;
      const float f = frame_factor(sc.frames[bi], ms, c.iTd, L, Cd);
#pragma omp simd
      for (int64_t i = 0; i < n; i++) db[i] *= f;
    }
    d[g] -= (float)Cd;
  }
  return loss;
}

static double row_maxent(const KdCtx& c, const float* z, float* d, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY;
  double ss = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) sc.frames[bi] = lse_store_block(z + b, blk(b, Vv), iT, &ms, &ss, d + b);
  const double L = std::log(ss);
  const double Cd = c.gs * c.s2 * c.iTd;
  const float Cu = (float)(Cd / (double)Vv);
  double sum = 0;  // Σ (z − M)/T
  bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    float* db = d + b;
    const float f = frame_factor(sc.frames[bi], ms, c.iTd, L, Cd);
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) {
      db[i] = db[i] * f - Cu;
      acc += (zb[i] - ms) * iT;
    }
    sum += acc;
  }
  // KL(u‖q) = −log V − mean log q = −log V − mean (z − M)/T + log s
  return -std::log((double)Vv) - sum / (double)Vv + L;
}

// Pass 1 block for the entropy: stored online (max, sum) plus a = Σ e·(z − m) in the frame of m.
static inline float ent_store_block(const float* z, int64_t n, float iT, float* m, double* s, double* a, float* out) {
  const float bm = block_max(z, n);
  if (bm > *m) {
    if (*s > 0.0) {
      const double r = std::exp((double)(*m - bm) * (double)iT);
      *a = r > 0.0 ? r * (*a - (double)(bm - *m) * *s) : 0.0;
      *s = r > 0.0 ? *s * r : 0.0;
    }
    *m = bm;
  }
  const float mm = *m;
  if (mm == -INFINITY) {
    zero_range(out, n);
    return mm;
  }
  const float c2 = iT * kLog2e;
  float bs = 0.0f, ba = 0.0f;
#pragma omp simd reduction(+ : bs, ba)
  for (int64_t i = 0; i < n; i++) {
    const float dz = z[i] - mm;
    const float e = kd_exp2(dz * c2);
    out[i] = e;
    bs += e;
    ba += e > 0.0f ? e * dz : 0.0f;
  }
  *s += bs;
  *a += ba;
  return mm;
}

static double row_entropy(const KdCtx& c, const float* z, float* d, bool want_grad, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY;
  double ss = 0, A = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) sc.frames[bi] = ent_store_block(z + b, blk(b, Vv), iT, &ms, &ss, &A, d + b);
  const double L = std::log(ss);
  const double H = L - c.iTd * A / ss;  // −Σ q log q = log s − Σ q (z − M)/T
  if (want_grad) {
    const float ls = (float)L, Hf = (float)H;
    const double Cd = c.gs * c.s2 * c.iTd;
    bi = 0;
    for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
      const int64_t n = blk(b, Vv);
      const float* zb = z + b;
      float* db = d + b;
      const float f = frame_factor(sc.frames[bi], ms, c.iTd, L, -Cd);
#pragma omp simd
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls;
        const float cq = db[i] * f;  // −C·q
        db[i] = cq != 0.0f ? cq * (lq + Hf) : 0.0f;
      }
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

static double row_dkd(const KdCtx& c, const float* z, const float* y, int32_t g, float* d, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  float ms = -INFINITY, mt = -INFINITY;
  double ss = 0, st = 0;
  int64_t bi = 0;
  for (int seg = 0; seg < 2; seg++) {
    const int64_t lo = seg == 0 ? 0 : g + 1, hi = seg == 0 ? g : Vv;
    for (int64_t b = lo; b < hi; b += KD_BLOCK, bi++) {
      sc.frames[bi] = lse_store_block(z + b, blk(b, hi), iT, &ms, &ss, d + b);
      sc.tframes[bi] = lse_store_block(y + b, blk(b, hi), iT, &mt, &st, sc.trow + b);
    }
  }
  double lqg, l1q, lpg, l1p;
  split_logs(ms, ss, z[g], c.iTd, &lqg, &l1q);
  split_logs(mt, st, y[g], c.iTd, &lpg, &l1p);
  const double qg = std::exp(lqg), pg = std::exp(lpg), p1 = std::exp(l1p);
  const double tckd = (pg > 0 ? pg * (lpg - lqg) : 0.0) + (p1 > 0 ? p1 * (l1p - l1q) : 0.0);
  // non-target distributions q̂ = softmax over i ≠ g; a row with no non-target mass gets q̂ = 0
  const double Ls = ss > 0 ? std::log(ss) : INFINITY, Lt = st > 0 ? std::log(st) : INFINITY;
  const float msn = ss > 0 ? ms : 0.0f, mtn = st > 0 ? mt : 0.0f;
  const float lsn = (float)Ls, ltn = (float)Lt;
  const double al = c.a->dkd_alpha, be = c.a->dkd_beta;
  const double Cd = c.gs * c.s2 * c.iTd;
  // a teacher with no mass outside the target (a sparse teacher, e.g. kNN votes that all agree) has no
  // non-target distribution: NCKD is 0 and so is its gradient
  const float ca = (float)(-Cd * al * (qg - pg)), cb = st > 0 ? (float)(Cd * be) : 0.0f;
  double nckd = 0;
  bi = 0;
  for (int seg = 0; seg < 2; seg++) {
    const int64_t lo = seg == 0 ? 0 : g + 1, hi = seg == 0 ? g : Vv;
    for (int64_t b = lo; b < hi; b += KD_BLOCK, bi++) {
      const int64_t n = blk(b, hi);
      const float* zb = z + b;
      const float* yb = y + b;
      float* db = d + b;
      const float* tb = sc.trow + b;
      const float fq = ss > 0 ? frame_factor(sc.frames[bi], ms, c.iTd, Ls, 1.0) : 0.0f;
      const float fp = st > 0 ? frame_factor(sc.tframes[bi], mt, c.iTd, Lt, 1.0) : 0.0f;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - msn) * iT - lsn, lp = (yb[i] - mtn) * iT - ltn;
        const float q = db[i] * fq, p = tb[i] * fp;
        db[i] = ca * q + cb * (q - p);
        acc += p > 0.0f ? p * (lp - lq) : 0.0f;
      }
      nckd += acc;
    }
  }
  d[g] = (float)(Cd * al * (qg - pg));
  return al * tckd + be * nckd;
}

// ---------------------------------------------------------------- deltakd

static inline float delta_target(float zsb, float ytf, float ytb) {
  const float v = zsb + (ytf - ytb);
  return (zsb > -INFINITY && ytf > -INFINITY && ytb > -INFINITY) ? v : -INFINITY;
}

// λ·CE(softmax(z), g) + (1−λ)·s2·KL(p*‖q). Returns the row loss with s2 already applied to the KL part.
static double row_deltakd(const KdCtx& c, const float* z, const float* y, const float* zsb, const float* ytb,
                          int32_t g, float* d, KdScratch& sc) {
  const int64_t Vv = c.Vv;
  const float iT = c.iT;
  const double lam = c.a->lambda;
  const bool use_ce = lam > 0.0;
  const bool sep1 = use_ce && c.iTd != 1.0;  // a separate temperature-1 softmax for the CE term
  float ms = -INFINITY, mt = -INFINITY, m1 = -INFINITY;
  double ss = 0, st = 0, s1 = 0;
  float* zt = sc.block;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    sc.frames[bi] = lse_store_block(z + b, n, iT, &ms, &ss, d + b);
    if (sep1) lse_block(z + b, n, 1.0f, &m1, &s1);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) zt[i] = delta_target(zsb[b + i], y[b + i], ytb[b + i]);
    sc.tframes[bi] = lse_store_block(zt, n, iT, &mt, &st, sc.trow + b);
  }
  if (!sep1) {  // T = 1 (then the CE softmax is q) or λ = 0 (unused)
    m1 = ms;
    s1 = ss;
  }
  const double L = std::log(ss), l1d = std::log(s1), Lt = std::log(st);
  const float ls = (float)L, lt = (float)Lt, l1 = (float)l1d;
  const float ckl = (float)(c.gs * (1.0 - lam) * c.s2 * c.iTd);
  const float cce = (float)(c.gs * lam);
  double kl = 0;
  bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    const float* zb = z + b;
    const float* tb = sc.trow + b;
    float* db = d + b;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) zt[i] = delta_target(zsb[b + i], y[b + i], ytb[b + i]);
    const float fq = frame_factor(sc.frames[bi], ms, c.iTd, L, 1.0);
    const float fp = frame_factor(sc.tframes[bi], mt, c.iTd, Lt, 1.0);
    float acc = 0.0f;
    if (sep1) {  // CE's softmax(z) at temperature 1 differs from q
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (zt[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        db[i] = ckl * (q - p) + cce * kd_exp((zb[i] - m1) - l1);
        acc += p > 0.0f ? p * (lp - lq) : 0.0f;
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < n; i++) {
        const float lq = (zb[i] - ms) * iT - ls, lp = (zt[i] - mt) * iT - lt;
        const float q = db[i] * fq, p = tb[i] * fp;
        db[i] = (ckl + cce) * q - ckl * p;
        acc += p > 0.0f ? p * (lp - lq) : 0.0f;
      }
    }
    kl += acc;
  }
  double ce = 0;
  if (use_ce) {
    ce = ((double)m1 - (double)z[g]) + l1d;
    d[g] -= cce;
  }
  return lam * ce + (1.0 - lam) * c.s2 * kl;
}

// ---------------------------------------------------------------- top-k teacher

static inline double lae(double x, double y) {
  if (x < y) {
    const double t = x;
    x = y;
    y = t;
  }
  return y == -INFINITY ? x : x + std::log1p(std::exp(y - x));
}

// Divergence between bucket distributions Q (student) and P (teacher), given as probabilities and their
// logs (double). g[b] = ∂L/∂log Q_b; *h_last = ∂L/∂Q of the last bucket (the tail's per-unit-mass
// derivative). The last bucket's mixture log is taken in log space (lae), so that a tail whose mass
// underflows double still gets a finite h.
static double bucket_div(KdKind kind, double w, int64_t nb, const double* lQ, const double* lP, const double* Q,
                         const double* P, double* g, double* h_last) {
  double L = 0, h = 0;
  const double w1 = 1.0 - w, lw = std::log(w), lw1 = std::log1p(-w);
  for (int64_t b = 0; b < nb; b++) {
    const double lq = lQ[b], lp = lP[b], q = Q[b], p = P[b];
    const bool last = b == nb - 1;
    double lm = 0;  // log of the mixture (jsd: βp + (1−β)q; skl, srkl: r = w·p + (1−w)·q)
    if (kind == KdKind::jsd || kind == KdKind::skl || kind == KdKind::srkl)
      lm = last ? lae(lw + lp, lw1 + lq) : std::log(w * p + w1 * q);
    switch (kind) {
      case KdKind::fkl:
        L += p > 0 ? p * (lp - lq) : 0.0;
        g[b] = -p;
        if (last) h = p > 0 ? -std::exp(lp - lq) : 0.0;
        break;
      case KdKind::rkl:
        L += q > 0 ? q * (lq - lp) : 0.0;
        h = lq - lp + 1.0;
        g[b] = q > 0 ? q * h : 0.0;
        break;
      case KdKind::jsd:
        L += (p > 0 ? p * (lp - lm) : 0.0) / w1 + (q > 0 ? q * (lq - lm) : 0.0) / w;
        h = (lq - lm) / w;
        g[b] = q > 0 ? q * h : 0.0;
        break;
      case KdKind::tvd:
        L += 0.5 * std::fabs(q - p);
        h = q > p ? 0.5 : (q < p ? -0.5 : 0.0);
        g[b] = q * h;
        break;
      case KdKind::skl:  // KL(p‖r), r = αp + (1−α)q, w = α
        L += p > 0 ? p * (lp - lm) : 0.0;
        h = p > 0 ? -w1 * std::exp(lp - lm) : 0.0;
        g[b] = q > 0 ? q * h : 0.0;
        break;
      default:  // srkl: KL(q‖r), r = (1−α)p + αq, w = 1 − α
        L += q > 0 ? q * (lq - lm) : 0.0;
        h = lq - lm + 1.0 - w1 * std::exp(lq - lm);
        g[b] = q > 0 ? q * h : 0.0;
        break;
    }
  }
  *h_last = h;
  return L;
}

// Returns the row loss; on a bad id sets *bad_status/*bad_value and returns 0. sc.mark (vocab bytes) is all
// zero on entry and on return.
static double row_topk(const KdCtx& c, const float* z, const int32_t* ids, const float* lps, float* d, bool want_grad,
                       KdScratch& sc, KdStatus* bad_status, int64_t* bad_value) {
  const KdArgs& a = *c.a;
  const int64_t Vv = c.Vv, k = a.k;
  const float iT = c.iT;
  const double iTd = c.iTd;
  uint8_t* mark = sc.mark;
  for (int64_t j = 0; j < k; j++) {
    const int32_t id = ids[j];
    const bool bad = id < 0 || id >= Vv;
    if (bad || mark[id]) {
      *bad_status = bad ? KdStatus::bad_id : KdStatus::duplicate_id;
      *bad_value = id;
      for (int64_t i = 0; i < j; i++) mark[ids[i]] = 0;
      return 0.0;
    }
    mark[id] = 1;
    sc.zs[j] = z[id];
  }
  // pass 1: stored online (max, sum) of the student, with the id columns stored as 0 (they are written last,
  // in pass 2), so that s is the student's mass outside the ids (the tail), in the frame of the running max
  float m = -INFINITY;
  double stail = 0;
  int64_t bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    const float mm = raise_max(block_max(z + b, n), iT, &m, &stail);
    sc.frames[bi] = mm;
    float* db = d + b;
    if (mm == -INFINITY) {
      zero_range(db, n);
      continue;
    }
    const float* zb = z + b;
    const uint8_t* mk = mark + b;
    const float c2 = iT * kLog2e;
    float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
    for (int64_t i = 0; i < n; i++) {
      const float e = mk[i] ? 0.0f : kd_exp2((zb[i] - mm) * c2);
      db[i] = e;
      bs += e;
    }
    stail += bs;
  }
  for (int64_t j = 0; j < k; j++) mark[ids[j]] = 0;
  const double M = (double)m;  // the row max (the ids included)
  double* lq = sc.lq;
  double* lp = sc.lp;
  double* Q = sc.q;
  double* P = sc.p;
  double tot = stail;
  for (int64_t i = 0; i < k; i++) {
    lq[i] = ((double)sc.zs[i] - M) * iTd;  // log of exp((z_id − M)/T)
    Q[i] = std::exp(lq[i]);
    tot += Q[i];
  }
  const bool rkl_renorm = c.kind == KdKind::rkl && a.tail == KdTail::renorm;
  // k ids + the tail bucket (q over the full row); tot ≥ 1 (the row max contributes e = 1)
  const double L = std::log(tot);
  if (rkl_renorm) {
    // q̃ = q renormalised over the ids, in log space (Σ_ids e may underflow when the ids sit far below the max)
    double mS = -INFINITY, sS = 0;
    for (int64_t i = 0; i < k; i++) mS = lq[i] > mS ? lq[i] : mS;
    for (int64_t i = 0; i < k; i++) sS += std::exp(lq[i] - mS);
    const double Lb = mS + std::log(sS);
    for (int64_t i = 0; i < k; i++) {
      lq[i] -= Lb;
      Q[i] = std::exp(lq[i]);
    }
  } else {
    for (int64_t i = 0; i < k; i++) {
      lq[i] -= L;
      Q[i] /= tot;
    }
  }
  lq[k] = stail > 0 ? std::log(stail) - L : -INFINITY;
  Q[k] = stail / tot;
  // teacher buckets, re-tempered: P_b ∝ exp(logprob_b / T)
  const bool bucket = a.tail == KdTail::bucket;
  double ptail = 0;
  if (bucket) {
    double psum = 0;
    for (int64_t i = 0; i < k; i++) psum += std::exp((double)lps[i]);
    ptail = psum < 1.0 ? 1.0 - psum : 0.0;
  }
  double amax = ptail > 0 ? std::log(ptail) * iTd : -INFINITY;
  lp[k] = amax;
  for (int64_t i = 0; i < k; i++) {
    lp[i] = (double)lps[i] * iTd;
    amax = lp[i] > amax ? lp[i] : amax;
  }
  double psum = 0;
  for (int64_t i = 0; i <= k; i++) {
    P[i] = std::exp(lp[i] - amax);
    psum += P[i];
  }
  const double lpsum = std::log(psum);
  for (int64_t i = 0; i <= k; i++) {
    lp[i] -= amax + lpsum;
    P[i] /= psum;
  }

  const double Cd = c.gs * c.s2 * iTd;
  double loss, coef, h_tail;  // coef: ∂/∂z_i = coef·q_i for the columns outside the ids
  if (rkl_renorm) {
    // KL(q̃‖p̃), both renormalised over the ids; the gradient lives on the ids only
    loss = bucket_div(KdKind::rkl, c.wd, k, lq, lp, Q, P, sc.g, &h_tail);
    if (!want_grad) return loss;
    double G = 0;
    for (int64_t i = 0; i < k; i++) G += sc.g[i];
    for (int64_t i = 0; i < k; i++) sc.g[i] = Cd * (sc.g[i] - Q[i] * G);
    coef = 0.0;
  } else {
    loss = bucket_div(c.kind, c.wd, k + 1, lq, lp, Q, P, sc.g, &h_tail);
    if (!want_grad) return loss;
    double G = 0;
    for (int64_t i = 0; i <= k; i++) G += sc.g[i];
    // outside the ids: ∂/∂z_i = q_i·(h_tail − Σg)/T; on them: (g_j − q_j·Σg)/T
    coef = stail > 0 ? (h_tail - G) * Cd : 0.0;
    for (int64_t i = 0; i < k; i++) sc.g[i] = Cd * (sc.g[i] - Q[i] * G);
  }
  // pass 2: rescale the stored row (e_i·exp((m_b − M)/T − L)·coef), then the id columns
  bi = 0;
  for (int64_t b = 0; b < Vv; b += KD_BLOCK, bi++) {
    const int64_t n = blk(b, Vv);
    float* db = d + b;
    const float f = coef != 0.0 && coef == coef ? frame_factor(sc.frames[bi], M, iTd, L, coef) : 0.0f;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) db[i] *= f;
  }
  for (int64_t i = 0; i < k; i++) d[ids[i]] = (float)sc.g[i];
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
  c.mixflip = c.wd > 0.5 ? 1.0f : 0.0f;
  c.mixc = (float)(c.wd > 0.5 ? c.wbard : c.wd);
  c.mixlogc = (float)std::log(c.wd > 0.5 ? c.wbard : c.wd);
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
    const int64_t nblk = (Vv + KD_BLOCK - 1) / KD_BLOCK + 2;  // + 2: dkd splits the row around the target
    const int64_t rowf = a.grad ? 0 : V;
    const int64_t trowf = topk || !kd_uses_teacher(a.kind) ? 0 : V;
    const int64_t markb = topk ? (V + 63) / 64 * 64 : 0;
    const size_t bytes = (size_t)(5 * (kk + 1)) * sizeof(double) + (size_t)markb +
                         (size_t)(KD_BLOCK + rowf + trowf + 2 * nblk + kk) * sizeof(float) + 64;
    char* mem = (char*)std::malloc(bytes);
    sc.lq = (double*)mem;
    sc.lp = sc.lq + (kk + 1);
    sc.q = sc.lp + (kk + 1);
    sc.p = sc.q + (kk + 1);
    sc.g = sc.p + (kk + 1);
    sc.mark = (uint8_t*)(sc.g + (kk + 1));
    if (markb) std::memset(sc.mark, 0, (size_t)markb);
    sc.block = (float*)(sc.mark + markb);
    sc.row = sc.block + KD_BLOCK;
    sc.trow = sc.row + rowf;
    sc.frames = sc.trow + trowf;
    sc.tframes = sc.frames + nblk;
    sc.zs = sc.tframes + nblk;
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
      sc.pf[0] = r + 1 < a.rows ? (const char*)(z + V) : nullptr;
      sc.pf[1] = r + 1 < a.rows && y ? (const char*)(y + V) : nullptr;
      const bool want = dz != nullptr;
      float* d = want ? dz : sc.row;  // pass 1 stores exp values here
      double loss = 0;
      bool soft = true;  // multiply the row loss by s2
      if (topk) {
        KdStatus st = KdStatus::ok;
        int64_t val = 0;
        loss = row_topk(c, z, a.topk_ids + r * kk, a.topk_logprobs + r * kk, d, want, sc, &st, &val);
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
          case KdKind::taid: loss = row_fkl(c, z, y, d, sc); break;
          case KdKind::rkl: loss = row_rkl(c, z, y, d, want, sc); break;
          case KdKind::jsd:
          case KdKind::tvd:
          case KdKind::skl:
          case KdKind::srkl: loss = row_mix(c, z, y, d, want, sc); break;
          case KdKind::dkd: loss = row_dkd(c, z, y, g, d, sc); break;
          case KdKind::deltakd:
            loss = row_deltakd(c, z, y, a.student_base + r * V, a.teacher_base + r * V, g, d, sc);
            soft = false;
            break;
          case KdKind::ce: loss = row_ce(c, z, g, d, want, sc); break;
          case KdKind::maxent: loss = row_maxent(c, z, d, sc); break;
          default: loss = row_entropy(c, z, d, want, sc); break;
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
namespace undo {

// (the kind names, kd_uses_teacher and kd_supports_topk: kd_kinds.h)

bool kd_uses_targets(const KdArgs& a) {
  return a.kind == KdKind::ce || a.kind == KdKind::dkd || (a.kind == KdKind::deltakd && a.lambda > 0.0);
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
