// Standalone correctness harness for native/cpu/attention.cc (every ISA this CPU supports) against a naive
// double-precision reference that materialises the scores, plus central finite differences on tiny cases.
//
// Build and run from the repository root (sequential compiles, fine on a 2-core box); as one bash line:
//
//   mkdir -p build/attn_harness; F="-std=c++17 -O3 -fopenmp -fno-math-errno -fno-trapping-math -Wall -Wno-unused-function -Wno-unknown-pragmas -Inative/cpu"; g++ $F -DUNDO_ISA=generic -DUNDO_ISA_ID=0 -c native/cpu/attention.cc -o build/attn_harness/attention_generic.o && g++ $F -DUNDO_ISA=avx2 -DUNDO_ISA_ID=1 -mavx2 -mfma -mf16c -c native/cpu/attention.cc -o build/attn_harness/attention_avx2.o && g++ $F -DUNDO_ISA=avx512 -DUNDO_ISA_ID=2 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c -mprefer-vector-width=512 -c native/cpu/attention.cc -o build/attn_harness/attention_avx512.o && g++ $F native/cpu/cpu_features.cc test/native/attention_harness.cc build/attn_harness/attention_*.o -o build/attn_harness/attention_harness && ./build/attn_harness/attention_harness
//
//   (`node-gyp rebuild` wipes build/; any other output directory works as well.)
//
//   ./build/attn_harness/attention_harness            # correctness (every supported ISA); exit status 0 = pass
//   ./build/attn_harness/attention_harness --bench    # timing at T=256/1024, D=64 (all threads, each ISA)
//
// Error metric: max |kernel − reference| over a tensor divided by the largest "magnitude" entry of that
// tensor, where the magnitude of an entry is the sum of the absolute values of the terms the reference
// adds up for it (so cancellation, e.g. dS = P∘(dP − D) ≈ 0 with a single visible key, does not inflate the
// relative error). Tolerance 1e-5.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention.h"
#include "isa.h"

using undo::AttnDims;

namespace {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  double uniform() {  // [-1, 1)
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (double)(s >> 11) / (double)(1ull << 52) - 1.0;
  }
};

std::vector<float> randv(size_t n, double amp, Rng& r) {
  std::vector<float> x(n);
  for (auto& e : x) e = (float)(amp * r.uniform());
  return x;
}

size_t kv_elems(const AttnDims& d) { return (size_t)((d.B - 1) * d.kv_bstride + d.Tk * d.Hkv * d.D); }

// ---- double reference -------------------------------------------------------------------------------------
struct RefOut {
  std::vector<double> out, lse, dq, dk, dv;
  std::vector<double> out_mag, lse_mag, dq_mag, dk_mag, dv_mag;  // Σ |terms| per entry
};

// Scores of row (b, h, i) into s[Tk] (−inf where masked), also t = tanh(raw·scale/cap) for the backward.
void ref_row(const AttnDims& d, const float* q, const float* k, int64_t b, int64_t h, int64_t i,
             std::vector<double>& s, std::vector<double>& t) {
  const int64_t g = h / (d.Hq / d.Hkv), p = d.q_offset + i;
  s.assign(d.Tk, -INFINITY);
  t.assign(d.Tk, 0.0);
  for (int64_t j = 0; j < d.Tk; ++j) {
    if (j > p) continue;
    if (d.window > 0 && p - j >= d.window) continue;
    double acc = 0;
    for (int64_t c = 0; c < d.D; ++c)
      acc += (double)q[((b * d.Tq + i) * d.Hq + h) * d.D + c] *
             (double)k[b * d.kv_bstride + (j * d.Hkv + g) * d.D + c];
    double x = acc * d.scale;
    if (d.softcap > 0) {
      t[j] = std::tanh(x / d.softcap);
      x = d.softcap * t[j];
    }
    s[j] = x;
  }
}

RefOut reference(const AttnDims& d, const float* q, const float* k, const float* v, const float* dout) {
  RefOut r;
  const int64_t G = d.Hq / d.Hkv;
  r.out.assign(d.B * d.Tq * d.Hq * d.D, 0.0);
  r.lse.assign(d.B * d.Hq * d.Tq, -INFINITY);
  r.dq.assign(d.B * d.Tq * d.Hq * d.D, 0.0);
  r.dk.assign(kv_elems(d), 0.0);
  r.dv.assign(kv_elems(d), 0.0);
  r.out_mag = r.out;
  r.lse_mag = r.lse;
  r.dq_mag = r.dq;
  r.dk_mag = r.dk;
  r.dv_mag = r.dv;
  std::vector<double> s, t, p(d.Tk), dp(d.Tk), dpm(d.Tk);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; ++h)
      for (int64_t i = 0; i < d.Tq; ++i) {
        const int64_t g = h / G;
        ref_row(d, q, k, b, h, i, s, t);
        double m = -INFINITY;
        for (double x : s) m = x > m ? x : m;
        if (m == -INFINITY) continue;
        double l = 0;
        for (int64_t j = 0; j < d.Tk; ++j) l += (p[j] = s[j] == -INFINITY ? 0.0 : std::exp(s[j] - m));
        for (int64_t j = 0; j < d.Tk; ++j) p[j] /= l;
        r.lse[(b * d.Hq + h) * d.Tq + i] = m + std::log(l);
        r.lse_mag[(b * d.Hq + h) * d.Tq + i] = std::fabs(m) + std::log(l);
        double* o = &r.out[((b * d.Tq + i) * d.Hq + h) * d.D];
        double* om = &r.out_mag[((b * d.Tq + i) * d.Hq + h) * d.D];
        for (int64_t j = 0; j < d.Tk; ++j)
          if (p[j] != 0.0)
            for (int64_t c = 0; c < d.D; ++c) {
              const double x = p[j] * v[b * d.kv_bstride + (j * d.Hkv + g) * d.D + c];
              o[c] += x;
              om[c] += std::fabs(x);
            }
        if (!dout) continue;
        const float* go = dout + ((b * d.Tq + i) * d.Hq + h) * d.D;
        double Di = 0, Di_mag = 0;
        for (int64_t j = 0; j < d.Tk; ++j) {
          dp[j] = dpm[j] = 0;
          if (p[j] == 0.0) continue;
          for (int64_t c = 0; c < d.D; ++c) {
            const double x = (double)go[c] * v[b * d.kv_bstride + (j * d.Hkv + g) * d.D + c];
            dp[j] += x;
            dpm[j] += std::fabs(x);
          }
          Di += p[j] * dp[j];
          Di_mag += p[j] * dpm[j];
        }
        for (int64_t j = 0; j < d.Tk; ++j) {
          if (p[j] == 0.0) continue;
          double ds = p[j] * (dp[j] - Di), dsm = p[j] * (dpm[j] + Di_mag);
          if (d.softcap > 0) {
            ds *= 1.0 - t[j] * t[j];
            dsm *= 1.0 - t[j] * t[j];
          }
          ds *= d.scale;
          dsm *= d.scale;
          const int64_t kvo = b * d.kv_bstride + (j * d.Hkv + g) * d.D;
          const int64_t qo = ((b * d.Tq + i) * d.Hq + h) * d.D;
          for (int64_t c = 0; c < d.D; ++c) {
            r.dq[qo + c] += ds * k[kvo + c];
            r.dk[kvo + c] += ds * q[qo + c];
            r.dv[kvo + c] += p[j] * go[c];
            r.dq_mag[qo + c] += dsm * std::fabs(k[kvo + c]);
            r.dk_mag[kvo + c] += dsm * std::fabs(q[qo + c]);
            r.dv_mag[kvo + c] += p[j] * std::fabs(go[c]);
          }
        }
      }
  return r;
}

// ---- comparison -------------------------------------------------------------------------------------------
// max|a − r| / max(mag) over the elements selected (all, or the valid kv rows).
double rel_err(const float* a, const std::vector<double>& r, const std::vector<double>& mag, size_t n,
               const std::vector<char>* use = nullptr) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (use && !(*use)[i]) continue;
    if (std::isinf(r[i]) || std::isinf(a[i])) {
      if (!(std::isinf(r[i]) && std::isinf(a[i]) && (r[i] > 0) == (a[i] > 0))) return INFINITY;
      continue;
    }
    const double e = std::fabs((double)a[i] - r[i]);
    if (!(e == e)) return INFINITY;  // NaN
    num = e > num ? e : num;
    den = mag[i] > den ? mag[i] : den;
  }
  return num / (den > 1e-30 ? den : 1e-30);
}

struct Stats {
  double fwd = 0, lse = 0, dq = 0, dk = 0, dv = 0;
};
Stats g_max[3];
int g_fail = 0;
const double kTol = 1e-5;

void report(const char* isa, const char* what, const std::string& name, double err, double tol) {
  if (!(err <= tol)) {
    std::printf("FAIL [%s] %s %s: rel err %.3g > %.1g\n", isa, name.c_str(), what, err, tol);
    ++g_fail;
  }
}

std::string describe(const AttnDims& d, int threads) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "B=%lld Tq=%lld Tk=%lld Hq=%lld Hkv=%lld D=%lld off=%lld kvs=%lld win=%lld cap=%g thr=%d",
                (long long)d.B, (long long)d.Tq, (long long)d.Tk, (long long)d.Hq, (long long)d.Hkv, (long long)d.D,
                (long long)d.q_offset, (long long)d.kv_bstride, (long long)d.window, d.softcap, threads);
  return buf;
}

const undo::Isa kIsas[3] = {undo::Isa::generic, undo::Isa::avx2, undo::Isa::avx512};

// One case on every supported ISA: forward always, backward when the shape is a training shape.
void run_case(const AttnDims& d, uint64_t seed, int threads, bool with_backward) {
  Rng rng(seed);
  const size_t nq = (size_t)(d.B * d.Tq * d.Hq * d.D), nkv = kv_elems(d);
  std::vector<float> q = randv(nq, 1.7, rng), k = randv(nkv, 1.7, rng), v = randv(nkv, 1.0, rng),
                     dout = randv(nq, 1.0, rng);
  // KV-cache slots beyond Tk hold NaN: the kernel must never read them.
  std::vector<char> kv_used(nkv, 0);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t e = 0; e < d.Tk * d.Hkv * d.D; ++e) kv_used[b * d.kv_bstride + e] = 1;
  for (size_t e = 0; e < nkv; ++e)
    if (!kv_used[e]) k[e] = v[e] = NAN;
  const RefOut ref = reference(d, q.data(), k.data(), v.data(), with_backward ? dout.data() : nullptr);
  const std::string name = describe(d, threads);
  undo::set_num_threads(threads);
  for (int ii = 0; ii < 3; ++ii) {
    const undo::Isa isa = kIsas[ii];
    if (!undo::isa_supported(isa)) continue;
    undo::set_isa(isa);
    const char* in = undo::isa_name(isa);
    std::vector<float> out(nq, 12345.f), lse(d.B * d.Hq * d.Tq, 12345.f);
    undo::attention_forward(d, q.data(), k.data(), v.data(), out.data(), lse.data());
    const double ef = rel_err(out.data(), ref.out, ref.out_mag, nq),
                 el = rel_err(lse.data(), ref.lse, ref.lse_mag, lse.size());
    report(in, "out", name, ef, kTol);
    report(in, "lse", name, el, kTol);
    g_max[ii].fwd = std::fmax(g_max[ii].fwd, ef);
    g_max[ii].lse = std::fmax(g_max[ii].lse, el);
    // lse == nullptr must give the same output
    std::vector<float> out2(nq, -1.f);
    undo::attention_forward(d, q.data(), k.data(), v.data(), out2.data(), nullptr);
    if (std::memcmp(out.data(), out2.data(), nq * sizeof(float)) != 0) {
      std::printf("FAIL [%s] %s: out differs with lse == nullptr\n", in, name.c_str());
      ++g_fail;
    }
    if (!with_backward) continue;
    std::vector<float> dq(nq, 777.f), dk(nkv, 777.f), dv(nkv, 777.f);
    undo::attention_backward(d, q.data(), k.data(), v.data(), out.data(), dout.data(), lse.data(), dq.data(),
                             dk.data(), dv.data());
    const double eq = rel_err(dq.data(), ref.dq, ref.dq_mag, nq),
                 ek = rel_err(dk.data(), ref.dk, ref.dk_mag, nkv, &kv_used),
                 ev = rel_err(dv.data(), ref.dv, ref.dv_mag, nkv, &kv_used);
    report(in, "dq", name, eq, kTol);
    report(in, "dk", name, ek, kTol);
    report(in, "dv", name, ev, kTol);
    g_max[ii].dq = std::fmax(g_max[ii].dq, eq);
    g_max[ii].dk = std::fmax(g_max[ii].dk, ek);
    g_max[ii].dv = std::fmax(g_max[ii].dv, ev);
    // deterministic: a second run is bit-identical
    std::vector<float> dq2(nq), dk2(nkv), dv2(nkv);
    undo::attention_backward(d, q.data(), k.data(), v.data(), out.data(), dout.data(), lse.data(), dq2.data(),
                             dk2.data(), dv2.data());
    if (std::memcmp(dq.data(), dq2.data(), nq * 4) || std::memcmp(dk.data(), dk2.data(), nkv * 4) ||
        std::memcmp(dv.data(), dv2.data(), nkv * 4)) {
      std::printf("FAIL [%s] %s: backward not deterministic\n", in, name.c_str());
      ++g_fail;
    }
  }
}

// ---- finite differences ------------------------------------------------------------------------------------
// L = Σ out ∘ W. Gradients from the kernel's backward (dout = W) against central differences of (a) the double
// reference forward (h = 1e-5) and (b) the kernel's own float forward (h = 1e-2).
double loss_ref(const AttnDims& d, const std::vector<float>& q, const std::vector<float>& k,
                const std::vector<float>& v, const std::vector<float>& w) {
  RefOut r = reference(d, q.data(), k.data(), v.data(), nullptr);
  double L = 0;
  for (size_t i = 0; i < w.size(); ++i) L += r.out[i] * w[i];
  return L;
}
double loss_kernel(const AttnDims& d, const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v, const std::vector<float>& w) {
  std::vector<float> out(w.size());
  undo::attention_forward(d, q.data(), k.data(), v.data(), out.data(), nullptr);
  double L = 0;
  for (size_t i = 0; i < w.size(); ++i) L += (double)out[i] * w[i];
  return L;
}

// Loss with one input element replaced by x (in double for the reference: perturb the float copy by a
// representable step so that the perturbation is exact).
void finite_difference_case(const AttnDims& d, uint64_t seed) {
  Rng rng(seed);
  const size_t nq = (size_t)(d.B * d.Tq * d.Hq * d.D), nkv = kv_elems(d);
  std::vector<float> q = randv(nq, 1.5, rng), k = randv(nkv, 1.5, rng), v = randv(nkv, 1.0, rng),
                     w = randv(nq, 1.0, rng);
  const std::string name = "finite differences " + describe(d, 1);
  for (int ii = 0; ii < 3; ++ii) {
    const undo::Isa isa = kIsas[ii];
    if (!undo::isa_supported(isa)) continue;
    undo::set_isa(isa);
    const char* in = undo::isa_name(isa);
    std::vector<float> out(nq), lse(d.B * d.Hq * d.Tq), dq(nq), dk(nkv), dv(nkv);
    undo::attention_forward(d, q.data(), k.data(), v.data(), out.data(), lse.data());
    undo::attention_backward(d, q.data(), k.data(), v.data(), out.data(), w.data(), lse.data(), dq.data(),
                             dk.data(), dv.data());
    double err_ref = 0, err_kernel = 0, gmax = 0;
    std::vector<float>* ins[3] = {&q, &k, &v};
    const std::vector<float>* grads[3] = {&dq, &dk, &dv};
    for (int which = 0; which < 3; ++which) {
      std::vector<float>& x = *ins[which];
      for (size_t e = 0; e < x.size(); ++e) gmax = std::fmax(gmax, std::fabs((*grads[which])[e]));
      for (size_t e = 0; e < x.size(); ++e) {
        const float x0 = x[e];
        // (a) double reference, exact float steps of about 2^-16
        const float hp = x0 + 0x1p-16f, hm = x0 - 0x1p-16f;
        x[e] = hp;
        const double Lp = loss_ref(d, q, k, v, w);
        x[e] = hm;
        const double Lm = loss_ref(d, q, k, v, w);
        const double fd_ref = (Lp - Lm) / ((double)hp - (double)hm);
        // (b) kernel forward
        const float kp = x0 + 1e-2f, km = x0 - 1e-2f;
        x[e] = kp;
        const double Kp = loss_kernel(d, q, k, v, w);
        x[e] = km;
        const double Km = loss_kernel(d, q, k, v, w);
        const double fd_k = (Kp - Km) / ((double)kp - (double)km);
        x[e] = x0;
        const double g = (*grads[which])[e];
        err_ref = std::fmax(err_ref, std::fabs(g - fd_ref));
        err_kernel = std::fmax(err_kernel, std::fabs(g - fd_k));
      }
    }
    err_ref /= gmax;
    err_kernel /= gmax;
    report(in, "grad vs FD(reference)", name, err_ref, 1e-4);
    report(in, "grad vs FD(kernel)", name, err_kernel, 2e-3);
    std::printf("  [%-7s] %s: max rel err vs FD(double ref) %.2e, vs FD(float kernel) %.2e\n", in, name.c_str(),
                err_ref, err_kernel);
  }
}

AttnDims dims(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, int64_t off, int64_t cap_rows,
              int64_t window, float softcap) {
  AttnDims d;
  d.B = B;
  d.Tq = Tq;
  d.Tk = Tk;
  d.Hq = Hq;
  d.Hkv = Hkv;
  d.D = D;
  d.q_offset = off;
  d.kv_bstride = cap_rows * Hkv * D;
  d.window = window;
  d.scale = (float)(1.0 / std::sqrt((double)D));
  d.softcap = softcap;
  return d;
}

// ---- timing ------------------------------------------------------------------------------------------------
double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void bench() {
  const int64_t shapes[][4] = {{2, 256, 8, 64}, {2, 1024, 8, 64}};
  for (const auto& s : shapes) {
    const AttnDims d = dims(s[0], s[1], s[1], s[2], s[2], s[3], 0, s[1], 0, 0.f);
    Rng rng(7);
    const size_t n = (size_t)(d.B * d.Tq * d.Hq * d.D);
    std::vector<float> q = randv(n, 1, rng), k = randv(n, 1, rng), v = randv(n, 1, rng), g = randv(n, 1, rng);
    std::vector<float> out(n), lse(d.B * d.Hq * d.Tq), dq(n), dk(n), dv(n);
    for (int ii = 0; ii < 3; ++ii) {
      if (!undo::isa_supported(kIsas[ii])) continue;
      undo::set_isa(kIsas[ii]);
      const int reps = d.Tq >= 1024 ? 5 : 20;
      double tf = 1e30, tb = 1e30;
      for (int r = 0; r < reps + 1; ++r) {
        double t0 = now_ms();
        undo::attention_forward(d, q.data(), k.data(), v.data(), out.data(), lse.data());
        double t1 = now_ms();
        undo::attention_backward(d, q.data(), k.data(), v.data(), out.data(), g.data(), lse.data(), dq.data(),
                                 dk.data(), dv.data());
        double t2 = now_ms();
        tf = std::fmin(tf, t1 - t0);
        tb = std::fmin(tb, t2 - t1);
      }
      // causal FLOPs: fwd 2 GEMMs, bwd 5 GEMMs, each 2·(T²/2)·D per head
      const double gemm = (double)d.B * d.Hq * d.Tq * d.Tq * d.D;
      std::printf("[%-7s] B=%lld T=%lld H=%lld D=%lld threads=%d: fwd %.2f ms (%.1f GFLOP/s)  bwd %.2f ms (%.1f GFLOP/s)  "
                  "fwd+bwd %.2f ms\n",
                  undo::isa_name(kIsas[ii]), (long long)d.B, (long long)d.Tq, (long long)d.Hq, (long long)d.D,
                  undo::num_threads(), tf, 2 * gemm / tf * 1e-6, tb, 5 * gemm / tb * 1e-6, tf + tb);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--bench") {
    bench();
    return 0;
  }
  const int hw_threads = undo::num_threads();
  std::printf("ISAs:");
  for (auto isa : kIsas) std::printf(" %s%s", undo::isa_name(isa), undo::isa_supported(isa) ? "" : "(unsupported, skipped)");
  std::printf("\n");

  // Training shapes: forward + backward.
  const int64_t Ts[] = {1, 5, 17, 33, 100};
  const int64_t Ds[] = {7, 16, 64, 12};
  const int64_t Hs[][2] = {{1, 1}, {4, 2}, {6, 3}, {3, 1}};
  const float caps[] = {0.f, 5.f};
  const int64_t wins[] = {0, 3};
  uint64_t seed = 1;
  int ncases = 0;
  for (int64_t T : Ts)
    for (int64_t D : Ds)
      for (const auto& H : Hs)
        for (float cap : caps)
          for (int64_t win : wins) {
            run_case(dims(2, T, T, H[0], H[1], D, 0, T, win, cap), seed++, 2, true);
            ++ncases;
          }
  // Several tiles (forward 64×128, backward 64×64), ragged edges, other thread counts (exercises the split
  // of key tiles over threads and the dQ partial sums), batch 1.
  const int64_t bigT[] = {129, 200, 300};
  for (int64_t T : bigT)
    for (int threads : {1, 2, 3})
      for (float cap : caps) {
        run_case(dims(1, T, T, 4, 1, 64, 0, T, 0, cap), seed++, threads, true);
        run_case(dims(2, T, T, 6, 3, 12, 0, T, T == 200 ? 70 : 0, cap), seed++, threads, true);
        ncases += 2;
      }
  run_case(dims(1, 257, 257, 2, 2, 16, 0, 257, 100, 5.f), seed++, 2, true);
  // windows whose reach ends exactly at / next to a 64-row tile boundary
  for (int64_t win : {63, 64, 65, 66, 67, 129}) {
    run_case(dims(1, 300, 300, 2, 1, 16, 0, 300, win, 0.f), seed++, 2, true);
    ++ncases;
  }
  run_case(dims(1, 257, 257, 1, 1, 128, 0, 257, 0, 0.f), seed++, hw_threads, true);
  ncases += 2;
  // Decode / chunked prefill: q_offset > 0, KV cache capacity > Tk (NaN past Tk), forward only.
  for (int64_t Tq : {1, 3, 16, 20, 70})
    for (float cap : caps)
      for (int64_t win : {0, 5, 40}) {
        const int64_t off = 37;
        run_case(dims(2, Tq, off + Tq, 4, 2, 64, off, off + Tq + 29, win, cap), seed++, 2, false);
        run_case(dims(2, Tq, off + Tq, 3, 1, 7, off, off + Tq + 5, win, cap), seed++, 2, false);
        ncases += 2;
      }
  // Decode with large GQA groups: a group's rows are cut into several chunks (chunk edges inside a head).
  for (int threads : {1, 2, 3})
    for (int64_t win : {0, 7}) {
      run_case(dims(1, 3, 50, 40, 1, 16, 47, 64, win, 5.f), seed++, threads, false);
      run_case(dims(2, 1, 33, 12, 2, 7, 32, 40, win, 0.f), seed++, threads, false);
      ncases += 2;
    }
  // Tk shorter than q_offset + Tq (rows past the cache see only the cache) and a long decode.
  run_case(dims(1, 3, 30, 2, 1, 16, 40, 48, 0, 0.f), seed++, 2, false);
  run_case(dims(2, 1, 1000, 8, 2, 64, 999, 1024, 0, 5.f), seed++, 2, false);
  run_case(dims(1, 3, 700, 6, 2, 12, 697, 720, 300, 0.f), seed++, 3, false);  // window across key blocks
  run_case(dims(1, 4, 600, 64, 2, 16, 596, 600, 0, 0.f), seed++, 2, false);   // 128 rows per kv head
  ncases += 4;
  std::printf("%d cases\n", ncases);
  std::printf("max normwise relative error per ISA (out, lse, dq, dk, dv):\n");
  for (int ii = 0; ii < 3; ++ii)
    if (undo::isa_supported(kIsas[ii]))
      std::printf("  [%-7s] out %.2e  lse %.2e  dq %.2e  dk %.2e  dv %.2e\n", undo::isa_name(kIsas[ii]),
                  g_max[ii].fwd, g_max[ii].lse, g_max[ii].dq, g_max[ii].dk, g_max[ii].dv);

  // Finite differences on tiny cases.
  undo::set_num_threads(1);
  finite_difference_case(dims(1, 6, 6, 2, 1, 5, 0, 6, 0, 0.f), 1001);
  finite_difference_case(dims(1, 7, 7, 4, 2, 3, 0, 7, 4, 3.f), 1002);
  undo::set_num_threads(hw_threads);

  if (g_fail) {
    std::printf("%d FAILURES\n", g_fail);
    return 1;
  }
  std::printf("all attention checks passed\n");
  return 0;
}
