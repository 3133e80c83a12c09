// The decoder's layer sequencing: parameter layout, forward, fused head + loss, backward, AdamW, and
// KV-cache decoding, for every architecture of model.h's ModelConfig. Every heavy loop is a kernel call.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "attention.h"
#include "cross_entropy.h"
#include "embedding.h"
#include "layernorm.h"
#include "matmul.h"
#include "random.h"
#include "rmsnorm.h"
#include "rope.h"

namespace undo {
namespace {

// Per-layer tensors, in storage order (absent ones get offset -1). With sandwich norms (Gemma),
// post_attention_layernorm is the attention output norm and pre/post_feedforward_layernorm wrap the MLP;
// otherwise post_attention_layernorm is the MLP input norm.
enum LayerTensor {
  kInNorm, kInNormB, kWq, kBq, kWk, kBk, kWv, kBv, kQNorm, kKNorm, kWo, kBo, kPostAttnNorm, kPostAttnNormB,
  kPreFfNorm, kPostFfNorm, kWg, kBg, kWu, kBu, kWd, kBd, kLayerTensors
};
const char* kLayerNames[kLayerTensors] = {
    "input_layernorm.weight",  "input_layernorm.bias",   "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",   "self_attn.k_proj.weight", "self_attn.k_proj.bias",
    "self_attn.v_proj.weight", "self_attn.v_proj.bias",  "self_attn.q_norm.weight",
    "self_attn.k_norm.weight", "self_attn.o_proj.weight", "self_attn.o_proj.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias", "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight", "mlp.gate_proj.weight", "mlp.gate_proj.bias",
    "mlp.up_proj.weight",      "mlp.up_proj.bias",       "mlp.down_proj.weight",
    "mlp.down_proj.bias"};

void fail(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace

Model::Model(const ModelConfig& cfg) : cfg_(cfg) {
  auto positive = [](int64_t v, const char* field) {
    if (v <= 0) fail(std::string("config field ") + field + " must be a positive integer, got " + std::to_string(v));
  };
  positive(cfg_.vocab, "vocab_size");
  positive(cfg_.d, "hidden_size");
  positive(cfg_.n_layers, "num_hidden_layers");
  positive(cfg_.n_heads, "num_attention_heads");
  positive(cfg_.n_kv_heads, "num_key_value_heads");
  positive(cfg_.head_dim, "head_dim");
  positive(cfg_.ffn, "intermediate_size");
  positive(cfg_.max_pos, "max_position_embeddings");
  if (cfg_.n_heads % cfg_.n_kv_heads)
    fail("config: num_attention_heads (" + std::to_string(cfg_.n_heads) + ") must be a multiple of num_key_value_heads (" +
         std::to_string(cfg_.n_kv_heads) + ")");
  if (!cfg_.learned_pos && cfg_.head_dim % 2) fail("config: head_dim must be even for RoPE, got " + std::to_string(cfg_.head_dim));
  if (!(cfg_.norm_eps > 0)) fail("config: rms_norm_eps must be > 0");
  for (const RopeParams* r : {&cfg_.rope, &cfg_.rope_local}) {
    if (!(r->theta > 0)) fail("config: rope_theta must be > 0");
    if (r->scaling != RopeScaling::none && !(r->factor > 0)) fail("config: rope_scaling.factor must be > 0");
    if ((r->scaling == RopeScaling::llama3 || r->scaling == RopeScaling::dynamic) && r->original_max_pos <= 0)
      fail("config: rope_scaling needs original_max_position_embeddings > 0");
    if (r->scaling == RopeScaling::llama3 && !(r->high_freq_factor > r->low_freq_factor))
      fail("config: rope_scaling.high_freq_factor must be > low_freq_factor");
  }
  if (!cfg_.sliding_layers.empty() && (int64_t)cfg_.sliding_layers.size() != cfg_.n_layers)
    fail("config: one sliding-window flag per layer is needed (" + std::to_string(cfg_.sliding_layers.size()) + " for " +
         std::to_string(cfg_.n_layers) + " layers)");
  layout();
}

void Model::layout() {
  const ModelConfig& c = cfg_;
  const int64_t d = c.d, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim, F = c.ffn, hd = c.head_dim;
  const bool ln = c.norm == NormKind::layer;
  int64_t off = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, TensorRole role) {
    TensorInfo t;
    t.name = name;
    t.shape = shape;
    t.numel = 1;
    for (auto s : shape) t.numel *= s;
    t.offset = off;
    t.role = role;
    t.decay = role == TensorRole::matrix;
    off += t.numel;
    tensors_.push_back(t);
    return t.offset;
  };
  const TensorRole M = TensorRole::matrix, N = TensorRole::norm, Bi = TensorRole::bias;
  off_embed_ = add("model.embed_tokens.weight", {c.vocab, d}, M);
  if (c.learned_pos) off_pos_ = add("model.embed_positions.weight", {c.max_pos, d}, M);
  layer_off_.assign((size_t)(c.n_layers * kLayerTensors), -1);
  for (int64_t l = 0; l < c.n_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    int64_t* lo = &layer_off_[(size_t)(l * kLayerTensors)];
    auto put = [&](int k, std::vector<int64_t> shape, TensorRole role, bool present = true) {
      if (present) lo[k] = add(p + kLayerNames[k], shape, role);
    };
    put(kInNorm, {d}, N);
    put(kInNormB, {d}, Bi, ln);
    put(kWq, {qd, d}, M);
    put(kBq, {qd}, Bi, c.qkv_bias);
    put(kWk, {kvd, d}, M);
    put(kBk, {kvd}, Bi, c.qkv_bias);
    put(kWv, {kvd, d}, M);
    put(kBv, {kvd}, Bi, c.qkv_bias);
    put(kQNorm, {hd}, N, c.qk_norm);
    put(kKNorm, {hd}, N, c.qk_norm);
    put(kWo, {d, qd}, M);
    put(kBo, {d}, Bi, c.o_bias);
    put(kPostAttnNorm, {d}, N);
    put(kPostAttnNormB, {d}, Bi, ln);
    put(kPreFfNorm, {d}, N, c.sandwich_norms);
    put(kPostFfNorm, {d}, N, c.sandwich_norms);
    put(kWg, {F, d}, M, c.mlp == MlpKind::gated);
    put(kBg, {F}, Bi, c.mlp == MlpKind::gated && c.mlp_bias);
    put(kWu, {F, d}, M);
    put(kBu, {F}, Bi, c.mlp_bias);
    put(kWd, {d, F}, M);
    put(kBd, {d}, Bi, c.mlp_bias);
  }
  off_norm_ = add("model.norm.weight", {d}, N);
  if (ln) off_norm_b_ = add("model.norm.bias", {d}, Bi);
  off_head_ = c.tied ? off_embed_ : add("lm_head.weight", {c.vocab, d}, M);
  params_.assign((size_t)off, 0.0f);
  grads_.assign((size_t)off, 0.0f);
}

int Model::tensor_index(const std::string& name) const {
  for (size_t i = 0; i < tensors_.size(); i++)
    if (tensors_[i].name == name) return (int)i;
  return -1;
}

LayerParams Model::layer(float* base, int64_t l) const {
  const int64_t* lo = &layer_off_[(size_t)(l * kLayerTensors)];
  auto at = [&](int i) { return lo[i] < 0 ? nullptr : base + lo[i]; };
  LayerParams p;
  p.in_norm = at(kInNorm);
  p.in_norm_b = at(kInNormB);
  p.wq = at(kWq);
  p.bq = at(kBq);
  p.wk = at(kWk);
  p.bk = at(kBk);
  p.wv = at(kWv);
  p.bv = at(kBv);
  p.q_norm = at(kQNorm);
  p.k_norm = at(kKNorm);
  p.wo = at(kWo);
  p.bo = at(kBo);
  if (cfg_.sandwich_norms) {
    p.attn_out_norm = at(kPostAttnNorm);
    p.mlp_in_norm = at(kPreFfNorm);
    p.mlp_in_norm_b = nullptr;
    p.mlp_out_norm = at(kPostFfNorm);
  } else {
    p.attn_out_norm = nullptr;
    p.mlp_in_norm = at(kPostAttnNorm);
    p.mlp_in_norm_b = at(kPostAttnNormB);
    p.mlp_out_norm = nullptr;
  }
  p.wg = at(kWg);
  p.bg = at(kBg);
  p.wu = at(kWu);
  p.bu = at(kBu);
  p.wd = at(kWd);
  p.bd = at(kBd);
  return p;
}

bool Model::trainable_at(const float* p) const {
  const int64_t off = p - params_.data();
  for (const auto& t : tensors_)
    if (off >= t.offset && off < t.offset + t.numel) return !t.frozen;
  return false;
}

int Model::lowest_trainable_layer() const {
  if (trainable_at(params_.data() + off_embed_)) return -1;
  if (off_pos_ >= 0 && trainable_at(params_.data() + off_pos_)) return -1;
  for (int64_t l = 0; l < cfg_.n_layers; l++)
    for (int i = 0; i < kLayerTensors; i++) {
      const int64_t off = layer_off_[(size_t)(l * kLayerTensors + i)];
      if (off >= 0 && trainable_at(params_.data() + off)) return (int)l;
    }
  return (int)cfg_.n_layers;  // only the final norm / head
}

void Model::init(uint64_t seed, const std::string& scheme, float std) {
  if (scheme != "normal" && scheme != "xavier") fail("unknown init scheme '" + scheme + "' (normal|xavier)");
  for (const auto& t : tensors_) {
    float* p = params_.data() + t.offset;
    const uint64_t stream = stream_of(t.name.c_str());
    if (t.role == TensorRole::norm) {
      std::fill(p, p + t.numel, cfg_.norm_unit_offset ? 0.0f : 1.0f);
    } else if (t.role == TensorRole::bias) {
      std::fill(p, p + t.numel, 0.0f);
    } else if (scheme == "normal") {
      fill_normal(p, t.numel, seed, stream, 0.0f, std);
    } else {
      const double fan_out = (double)t.shape[0], fan_in = (double)t.shape[1];
      const float a = (float)std::sqrt(6.0 / (fan_in + fan_out));
      fill_uniform(p, t.numel, seed, stream, -a, a);
    }
  }
}

void Model::norm_forward(int64_t rows, const float* x, const float* w, const float* b, float* y, float* st) const {
  if (cfg_.norm == NormKind::layer)
    layernorm_forward(rows, cfg_.d, x, w, b, cfg_.norm_eps, y, st + rows, st);
  else
    rmsnorm_forward(rows, cfg_.d, x, w, cfg_.norm_eps, cfg_.norm_unit_offset, y, st);
}

void Model::norm_backward(int64_t rows, const float* x, const float* w, const float* st, const float* dy, float* dx,
                          bool accumulate, float* dw, float* db) const {
  if (cfg_.norm == NormKind::layer)
    layernorm_backward(rows, cfg_.d, x, w, st + rows, st, dy, dx, accumulate, dw, db);
  else
    rmsnorm_backward(rows, cfg_.d, x, w, st, cfg_.norm_unit_offset, dy, dx, accumulate, dw);
}

// Positions beyond max_position_embeddings: impossible with learned positions, allowed with dynamic RoPE
// scaling (its purpose), refused otherwise as transformers' users expect of a fixed context.
void Model::check_positions(int64_t n_pos, const char* what) const {
  if (n_pos <= cfg_.max_pos) return;
  const bool dynamic = !cfg_.learned_pos && cfg_.rope.scaling == RopeScaling::dynamic &&
                       (!cfg_.has_rope_local || cfg_.rope_local.scaling == RopeScaling::dynamic);
  if (!dynamic)
    fail(std::string(what) + " " + std::to_string(n_pos) + " exceeds max_position_embeddings " + std::to_string(cfg_.max_pos));
}

const Model::RopeTable& Model::rope_for(int64_t l, int64_t n_pos) {
  const int which = cfg_.has_rope_local && sliding(l) ? 1 : 0;
  const RopeParams& rp = which ? cfg_.rope_local : cfg_.rope;
  RopeTable& t = rope_tab_[which];
  const int64_t hd = cfg_.head_dim;
  // dynamic NTK scaling depends on the sequence length once it passes the original context
  const int64_t seq_len = rp.scaling == RopeScaling::dynamic ? std::max(n_pos, rp.original_max_pos) : 0;
  if (t.n_pos >= n_pos && t.seq_len == seq_len) return t;
  const int64_t cover = rp.scaling == RopeScaling::dynamic ? n_pos : std::max(n_pos, std::min<int64_t>(2 * t.n_pos, cfg_.max_pos));
  std::vector<double> inv((size_t)(hd / 2));
  rope_inv_freq(rp, hd, seq_len, inv.data());
  t.cos.resize((size_t)(cover * hd / 2));
  t.sin.resize(t.cos.size());
  rope_tables_from(inv.data(), cover, hd, t.cos.data(), t.sin.data());
  t.n_pos = cover;
  t.seq_len = seq_len;
  return t;
}

void Model::ensure_acts(int64_t B, int64_t T) {
  check_positions(T, "sequence length");
  B_ = B;
  T_ = T;
  N_ = B * T;
  if (N_ <= cap_N_ && !acts_.empty()) return;
  cap_N_ = N_;
  const ModelConfig& c = cfg_;
  const int64_t d = c.d, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim, F = c.ffn;
  const size_t n = (size_t)N_, st = c.norm == NormKind::layer ? 2 * n : n;
  acts_.assign((size_t)c.n_layers, Acts());
  for (auto& a : acts_) {
    a.x_in.resize(n * d);
    a.st1.resize(st);
    a.a1.resize(n * d);
    if (c.qk_norm) {
      a.q_pre.resize(n * qd);
      a.k_pre.resize(n * kvd);
      a.rstd_q.resize(n * c.n_heads);
      a.rstd_k.resize(n * c.n_kv_heads);
    }
    a.q.resize(n * qd);
    a.k.resize(n * kvd);
    a.v.resize(n * kvd);
    a.att.resize(n * qd);
    a.lse.resize(n * c.n_heads);
    a.ao.resize(n * d);
    if (c.sandwich_norms) a.st_pa.resize(st);
    a.x_mid.resize(n * d);
    a.st2.resize(st);
    a.a2.resize(n * d);
    if (c.mlp == MlpKind::gated) a.gate.resize(n * F);
    a.up.resize(n * F);
    a.g.resize(n * F);
    a.mo.resize(n * d);
    if (c.sandwich_norms) a.st_pf.resize(st);
  }
  x_final_.resize(n * d);
  rstd_f_.resize(st);
  h_final_.resize(n * d);
  dh_final_.resize(n * d);
  ids_.resize(n);
  if (c.learned_pos) pos_ids_.resize(n);
  // backward scratch is sized lazily in backward()
  dx_.clear();
}

void Model::run_layers(const int32_t* ids, int64_t B, int64_t T, bool training, int64_t pos_offset) {
  const ModelConfig& c = cfg_;
  const int64_t N = B * T, d = c.d, hd = c.head_dim, Hq = c.n_heads, Hkv = c.n_kv_heads;
  const int64_t qd = Hq * hd, kvd = Hkv * hd, F = c.ffn;
  check_positions(pos_offset + T, "position");
  for (int64_t i = 0; i < N; i++)
    if (ids[i] < 0 || ids[i] >= c.vocab)
      fail("token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) + " is outside the vocabulary [0, " +
           std::to_string(c.vocab) + ")");
  std::memcpy(ids_.data(), ids, sizeof(int32_t) * (size_t)N);
  float* P = params_.data();
  embedding_forward(N, d, ids, P + off_embed_, c.embed_scale, acts_[0].x_in.data());
  if (c.learned_pos) {
    for (int64_t r = 0; r < N; r++) pos_ids_[(size_t)r] = (int32_t)(pos_offset + r % T);
    float* x = acts_[0].x_in.data();
    const float* wpe = P + off_pos_;
    for (int64_t r = 0; r < N; r++) {
      const float* pr = wpe + (int64_t)pos_ids_[(size_t)r] * d;
      for (int64_t i = 0; i < d; i++) x[r * d + i] += pr[i];
    }
  }
  const float scale = c.attn_scale > 0 ? c.attn_scale : 1.0f / std::sqrt((float)hd);
  for (int64_t l = 0; l < c.n_layers; l++) {
    Acts& A = acts_[(size_t)l];
    const LayerParams W = layer(P, l);
    float* out = l + 1 < c.n_layers ? acts_[(size_t)l + 1].x_in.data() : x_final_.data();
    // attention block
    norm_forward(N, A.x_in.data(), W.in_norm, W.in_norm_b, A.a1.data(), A.st1.data());
    float* qo = c.qk_norm ? A.q_pre.data() : A.q.data();
    float* ko = c.qk_norm ? A.k_pre.data() : A.k.data();
    mm(false, true, N, qd, d, 1.0f, A.a1.data(), d, W.wq, d, 0.0f, qo, qd);
    mm(false, true, N, kvd, d, 1.0f, A.a1.data(), d, W.wk, d, 0.0f, ko, kvd);
    mm(false, true, N, kvd, d, 1.0f, A.a1.data(), d, W.wv, d, 0.0f, A.v.data(), kvd);
    if (c.qkv_bias) {
      bias_add(N, qd, W.bq, qo);
      bias_add(N, kvd, W.bk, ko);
      bias_add(N, kvd, W.bv, A.v.data());
    }
    if (c.qk_norm) {
      rmsnorm_forward(N * Hq, hd, qo, W.q_norm, c.norm_eps, c.norm_unit_offset, A.q.data(), A.rstd_q.data());
      rmsnorm_forward(N * Hkv, hd, ko, W.k_norm, c.norm_eps, c.norm_unit_offset, A.k.data(), A.rstd_k.data());
    }
    if (!c.learned_pos) {
      const RopeTable& rt = rope_for(l, pos_offset + T);
      rope_apply(B, T, Hq, hd, A.q.data(), rt.cos.data(), rt.sin.data(), pos_offset, false);
      rope_apply(B, T, Hkv, hd, A.k.data(), rt.cos.data(), rt.sin.data(), pos_offset, false);
    }
    AttnDims dims;
    dims.B = B;
    dims.Tq = T;
    dims.Hq = Hq;
    dims.Hkv = Hkv;
    dims.D = hd;
    dims.q_offset = pos_offset;
    dims.window = sliding(l) ? c.sliding_window : 0;
    dims.scale = scale;
    dims.softcap = c.attn_softcap;
    const float *kp = A.k.data(), *vp = A.v.data();
    if (cache_mode_) {
      float* kc = kcache_[(size_t)l].data();
      float* vc = vcache_[(size_t)l].data();
      for (int64_t b = 0; b < B; b++) {
        const size_t dst = (size_t)((b * cache_cap_ + pos_offset) * kvd);
        std::memcpy(kc + dst, A.k.data() + b * T * kvd, sizeof(float) * (size_t)(T * kvd));
        std::memcpy(vc + dst, A.v.data() + b * T * kvd, sizeof(float) * (size_t)(T * kvd));
      }
      kp = kc;
      vp = vc;
      dims.Tk = pos_offset + T;
      dims.kv_bstride = cache_cap_ * kvd;
    } else {
      dims.Tk = T;
      dims.kv_bstride = T * kvd;
    }
    attention_forward(dims, A.q.data(), kp, vp, A.att.data(), training ? A.lse.data() : nullptr);
    mm(false, true, N, d, qd, 1.0f, A.att.data(), qd, W.wo, qd, 0.0f, A.ao.data(), d);
    if (c.o_bias) bias_add(N, d, W.bo, A.ao.data());
    float* xm = A.x_mid.data();
    const float* xin = A.x_in.data();
    if (c.sandwich_norms) {
      norm_forward(N, A.ao.data(), W.attn_out_norm, nullptr, xm, A.st_pa.data());
      for (int64_t i = 0; i < N * d; i++) xm[i] += xin[i];
    } else {
      const float* ao = A.ao.data();
      for (int64_t i = 0; i < N * d; i++) xm[i] = xin[i] + ao[i];
    }
    // MLP block
    norm_forward(N, xm, W.mlp_in_norm, W.mlp_in_norm_b, A.a2.data(), A.st2.data());
    mm(false, true, N, F, d, 1.0f, A.a2.data(), d, W.wu, d, 0.0f, A.up.data(), F);
    if (W.bu) bias_add(N, F, W.bu, A.up.data());
    if (c.mlp == MlpKind::gated) {
      mm(false, true, N, F, d, 1.0f, A.a2.data(), d, W.wg, d, 0.0f, A.gate.data(), F);
      if (W.bg) bias_add(N, F, W.bg, A.gate.data());
      glu_forward(N * F, c.act, A.gate.data(), A.up.data(), A.g.data());
    } else {
      act_forward(N * F, c.act, A.up.data(), A.g.data());
    }
    mm(false, true, N, d, F, 1.0f, A.g.data(), F, W.wd, F, 0.0f, A.mo.data(), d);
    if (W.bd) bias_add(N, d, W.bd, A.mo.data());
    if (c.sandwich_norms) {
      norm_forward(N, A.mo.data(), W.mlp_out_norm, nullptr, out, A.st_pf.data());
      for (int64_t i = 0; i < N * d; i++) out[i] += xm[i];
    } else {
      const float* mo = A.mo.data();
      for (int64_t i = 0; i < N * d; i++) out[i] = xm[i] + mo[i];
    }
  }
  norm_forward(N, x_final_.data(), P + off_norm_, off_norm_b_ >= 0 ? P + off_norm_b_ : nullptr, h_final_.data(),
               rstd_f_.data());
}

void Model::forward(const int32_t* ids, int64_t B, int64_t T) {
  cache_mode_ = false;
  ensure_acts(B, T);
  have_head_grad_ = false;
  run_layers(ids, B, T, true, 0);
}

void Model::mm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) const {
  if (bf16_) gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

double Model::head_loss(const int32_t* targets, const float* weights, int32_t ignore_index, double normalizer,
                        bool backward, float* row_loss, double* counted, int64_t chunk) {
  const ModelConfig& c = cfg_;
  const int64_t N = N_, d = c.d, V = c.vocab;
  if (N == 0) fail("head_loss called before forward");
  double wsum = 0.0;
  for (int64_t i = 0; i < N; i++) {
    if (targets[i] == ignore_index) continue;
    if (targets[i] < 0 || targets[i] >= V)
      fail("target id " + std::to_string(targets[i]) + " at position " + std::to_string(i) +
           " is outside the vocabulary [0, " + std::to_string(V) + ")");
    wsum += weights ? (double)weights[i] : 1.0;
  }
  if (counted) *counted = wsum;
  const double norm = normalizer > 0 ? normalizer : wsum;
  const float* Wh = params_.data() + off_head_;
  float* gWh = grads_.data() + off_head_;
  const bool head_trainable = trainable_at(params_.data() + off_head_);
  chunk = head_chunk(chunk, N);
  HeadPack pack(*this, backward, chunk < N);
  float* buf = head_scratch(head_z_, (size_t)(chunk * V));
  std::vector<float> wchunk((size_t)chunk), lrow((size_t)chunk);
  double total = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t n = std::min(chunk, N - r0);
    const float* h = h_final_.data() + r0 * d;
    head_logits_mm(n, h, buf);
    for (int64_t i = 0; i < n; i++) {
      const float w = weights ? weights[r0 + i] : 1.0f;
      wchunk[(size_t)i] = norm > 0 ? (float)(w / norm) : 0.0f;
    }
    cross_entropy(n, V, buf, V, targets + r0, ignore_index, c.final_softcap, wchunk.data(), lrow.data(),
                  backward ? buf : nullptr);
    for (int64_t i = 0; i < n; i++) {
      if (row_loss) row_loss[r0 + i] = lrow[(size_t)i];
      if (targets[r0 + i] != ignore_index) total += (double)lrow[(size_t)i] * (weights ? (double)weights[r0 + i] : 1.0);
    }
    if (backward) {
      head_dh_mm(n, buf, dh_final_.data() + r0 * d);
      if (head_trainable) mm(true, false, V, d, n, 1.0f, buf, V, h, d, 1.0f, gWh, d);
    }
  }
  if (backward) have_head_grad_ = true;
  return norm > 0 ? total / norm : 0.0;
}

double Model::head_custom(const HeadFn& fn, bool backward, float* row_loss, int64_t chunk) {
  const int64_t N = N_, d = cfg_.d, V = cfg_.vocab;
  if (N == 0 || cache_mode_) fail("head: needs a training forward first");
  const float* Wh = params_.data() + off_head_;
  float* gWh = grads_.data() + off_head_;
  const bool head_trainable = trainable_at(params_.data() + off_head_);
  const float cap = cfg_.final_softcap;
  chunk = head_chunk(chunk, N);
  HeadPack pack(*this, backward, chunk < N);
  float* zp = head_scratch(head_z_, (size_t)(chunk * V));
  float* dzp = backward ? head_scratch(head_dz_, (size_t)(chunk * V)) : nullptr;
  std::vector<float> lrow((size_t)chunk);
  double total = 0.0;
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t n = std::min(chunk, N - r0);
    logits_range(r0, n, zp);
    fn(r0, n, zp, dzp, lrow.data());
    for (int64_t i = 0; i < n; i++) {
      total += (double)lrow[(size_t)i];
      if (row_loss) row_loss[r0 + i] = lrow[(size_t)i];
    }
    if (backward) {
      if (cap > 0) {
        const float inv = 1.0f / cap;
        for (int64_t i = 0; i < n * V; i++) {
          const float t = zp[i] * inv;
          dzp[i] *= 1.0f - t * t;
        }
      }
      const float* h = h_final_.data() + r0 * d;
      head_dh_mm(n, dzp, dh_final_.data() + r0 * d);
      if (head_trainable) mm(true, false, V, d, n, 1.0f, dzp, V, h, d, 1.0f, gWh, d);
    }
  }
  if (backward) have_head_grad_ = true;
  return total;
}

void Model::head_grad_rows(int64_t row0, int64_t n, const float* dlogits) {
  const int64_t N = N_, d = cfg_.d, V = cfg_.vocab;
  if (N == 0 || cache_mode_) fail("head_grad_rows: needs a training forward first");
  if (row0 < 0 || n < 0 || row0 + n > N)
    fail("head_grad_rows: rows [" + std::to_string(row0) + ", " + std::to_string(row0 + n) + ") out of range");
  if (n == 0) return;
  const float* Wh = params_.data() + off_head_;
  float* gWh = grads_.data() + off_head_;
  const bool head_trainable = trainable_at(params_.data() + off_head_);
  const float cap = cfg_.final_softcap;
  const float* dz = dlogits;
  std::vector<float> scaled;
  if (cap > 0) {
    // through the soft-cap: d/dz of cap·tanh(z/cap) = 1 − (capped/cap)²
    scaled.resize((size_t)(n * V));
    logits_range(row0, n, scaled.data());
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n * V; i++) {
      const float t = scaled[(size_t)i] * inv;
      scaled[(size_t)i] = dlogits[i] * (1.0f - t * t);
    }
    dz = scaled.data();
  }
  const float* h = h_final_.data() + row0 * d;
  head_dh_mm(n, dz, dh_final_.data() + row0 * d);
  if (head_trainable) mm(true, false, V, d, n, 1.0f, dz, V, h, d, 1.0f, gWh, d);
  have_head_grad_ = true;
}

// Rows per head chunk: at most `chunk`, and at most head_chunk_floats() logits whatever the vocabulary: up to
// 67M parameters 32 MB, i.e. 256 rows up to V = 32k, 32 at Gemma-3's 262k; SmolLM2-135M (49k) gets 256 rows
// in 50 MB, Qwen2.5-0.5B (494M parameters, 152k) 256 rows in 155 MB, Gemma-3-1B (1B, 262k) 256 in 268 MB.
// The rows are then balanced over the chunks (512 rows at a cap of 170: 4 × 128, not 3 × 170 + 2), so that no
// chunk is a sliver whose GEMM streams the whole head weight for a couple of rows.
int64_t Model::head_chunk_floats() const {
  return std::min(kHeadChunkFloatsMax, std::max(kHeadChunkFloats, (int64_t)params_.size() / 8));
}

int64_t Model::head_chunk(int64_t chunk, int64_t N) const {
  const int64_t cap = std::max<int64_t>(1, std::min({chunk, N, head_chunk_floats() / cfg_.vocab}));
  const int64_t nchunks = (N + cap - 1) / cap;
  return std::max<int64_t>(1, (N + nchunks - 1) / nchunks);
}

// Logit scratch of the fused head, kept across calls (a fresh 32 MB vector per call costs its page faults and
// zero fill on every step); grows to the largest chunk asked for, never shrinks.
float* Model::head_scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n) {
    std::vector<float>().swap(buf);
    buf.resize(n);
  }
  return buf.data();
}

void Model::logits_range(int64_t row0, int64_t n, float* out) {
  const int64_t d = cfg_.d, V = cfg_.vocab;
  if (row0 < 0 || n < 0 || row0 + n > N_) fail("logits: rows [" + std::to_string(row0) + ", " + std::to_string(row0 + n) + ") out of range");
  head_logits_mm(n, h_final_.data() + row0 * d, out);
  softcap_logits(out, n * V);
}

Model::HeadPack::HeadPack(Model& m, bool backward, bool several_chunks)
    : m_(m), active_(several_chunks && m.bf16_ && bf16_native() && m.head_pack_depth_ == 0) {
  if (!active_) {
    m_.head_pack_depth_++;
    return;
  }
  const int64_t d = m.cfg_.d, V = m.cfg_.vocab;
  const float* Wh = m.params_.data() + m.off_head_;
  m.head_fwd_.pack(true, V, d, Wh, d);
  if (backward) m.head_bwd_.pack(false, d, V, Wh, d);
  m_.head_pack_depth_++;
}

Model::HeadPack::~HeadPack() {
  m_.head_pack_depth_--;
  if (active_) m_.head_fwd_.clear(), m_.head_bwd_.clear();
}

void Model::head_logits_mm(int64_t n, const float* h, float* out) {
  const int64_t d = cfg_.d, V = cfg_.vocab;
  const float* Wh = params_.data() + off_head_;
  if (bf16_ && head_fwd_.B == Wh) gemm_bf16_packed(head_fwd_, false, n, 1.0f, h, d, 0.0f, out, V);
  else mm(false, true, n, V, d, 1.0f, h, d, Wh, d, 0.0f, out, V);
}

void Model::head_dh_mm(int64_t n, const float* dz, float* dh) {
  const int64_t d = cfg_.d, V = cfg_.vocab;
  const float* Wh = params_.data() + off_head_;
  if (bf16_ && head_bwd_.B == Wh) gemm_bf16_packed(head_bwd_, false, n, 1.0f, dz, V, 0.0f, dh, d);
  else mm(false, false, n, d, V, 1.0f, dz, V, Wh, d, 0.0f, dh, d);
}

void Model::logits(const int64_t* rows_sel, int64_t n_sel, float* out) {
  if (!rows_sel) return logits_range(0, N_, out);
  const int64_t d = cfg_.d, V = cfg_.vocab;
  std::vector<float> h((size_t)(n_sel * d));
  for (int64_t i = 0; i < n_sel; i++) {
    if (rows_sel[i] < 0 || rows_sel[i] >= N_) fail("logits: row " + std::to_string(rows_sel[i]) + " out of range");
    std::memcpy(h.data() + i * d, h_final_.data() + rows_sel[i] * d, sizeof(float) * (size_t)d);
  }
  mm(false, true, n_sel, V, d, 1.0f, h.data(), d, params_.data() + off_head_, d, 0.0f, out, V);
  softcap_logits(out, n_sel * V);
}

void Model::softcap_logits(float* z, int64_t n) const {
  if (cfg_.final_softcap <= 0) return;
  const float cap = cfg_.final_softcap;
  for (int64_t i = 0; i < n; i++) z[i] = cap * std::tanh(z[i] / cap);
}

const float* Model::hidden(int64_t l) const {
  if (l < 0 || l >= cfg_.n_layers) fail("hidden: layer " + std::to_string(l) + " out of range");
  return l + 1 < cfg_.n_layers ? acts_[(size_t)l + 1].x_in.data() : x_final_.data();
}

void Model::backward(bool use_head, const std::vector<const float*>& hidden_grads) {
  const ModelConfig& c = cfg_;
  const int64_t N = N_, d = c.d, hd = c.head_dim, Hq = c.n_heads, Hkv = c.n_kv_heads;
  const int64_t qd = Hq * hd, kvd = Hkv * hd, F = c.ffn, T = T_, B = B_;
  if (cache_mode_ || N == 0) fail("backward needs a training forward first");
  if (use_head && !have_head_grad_) fail("backward: head_loss(backward=true) was not called after forward");
  float* P = params_.data();
  float* G = grads_.data();
  auto gptr = [&](float* p) -> float* { return (p && trainable_at(p)) ? G + (p - P) : nullptr; };

  int top = -1;
  if (use_head) top = (int)c.n_layers - 1;
  for (size_t l = 0; l < hidden_grads.size() && l < (size_t)c.n_layers; l++)
    if (hidden_grads[l]) top = std::max(top, (int)l);
  if (top < 0) return;
  // layers below the lowest trainable one need no backward (the loop is empty when stop > top)
  const int stop = std::max(0, lowest_trainable_layer());
  const size_t n = (size_t)N;
  dx_.assign(n * d, 0.0f);
  dmo_.resize(n * d);
  dbig1_.resize(n * std::max(F, qd));
  dbig2_.resize(n * std::max(F, qd));
  dq_.resize(n * qd);
  dk_.resize(n * kvd);
  dv_.resize(n * kvd);
  datt_.resize(n * qd);
  float* dx = dx_.data();
  if (use_head)
    norm_backward(N, x_final_.data(), P + off_norm_, rstd_f_.data(), dh_final_.data(), dx, false, gptr(P + off_norm_),
                  off_norm_b_ >= 0 ? gptr(P + off_norm_b_) : nullptr);
  const float scale = c.attn_scale > 0 ? c.attn_scale : 1.0f / std::sqrt((float)hd);
  for (int l = top; l >= stop; l--) {
    if ((size_t)l < hidden_grads.size() && hidden_grads[(size_t)l]) {
      const float* hg = hidden_grads[(size_t)l];
      for (int64_t i = 0; i < N * d; i++) dx[i] += hg[i];
    }
    Acts& A = acts_[(size_t)l];
    const LayerParams W = layer(P, l);
    // ---- MLP block: out = x_mid + [norm](g · Wdᵀ + bd)
    const float* dmo = dx;
    if (c.sandwich_norms) {
      norm_backward(N, A.mo.data(), W.mlp_out_norm, A.st_pf.data(), dx, dmo_.data(), false, gptr(W.mlp_out_norm),
                    nullptr);
      dmo = dmo_.data();
    }
    if (float* g = gptr(W.bd)) bias_grad(N, d, dmo, g);
    float* dg = dbig1_.data();
    mm(false, false, N, F, d, 1.0f, dmo, d, W.wd, F, 0.0f, dg, F);  // dg = dmo · Wd
    if (float* g = gptr(W.wd)) mm(true, false, d, F, N, 1.0f, dmo, d, A.g.data(), F, 1.0f, g, F);
    float* da = dmo_.data();  // reuse: da2 [N, d]
    float* dup = dbig2_.data();
    if (c.mlp == MlpKind::gated) {
      float* dgate = dg;
      glu_backward(N * F, c.act, A.gate.data(), A.up.data(), dg, dgate, dup);
      if (float* g = gptr(W.bg)) bias_grad(N, F, dgate, g);
      mm(false, false, N, d, F, 1.0f, dgate, F, W.wg, d, 0.0f, da, d);
      mm(false, false, N, d, F, 1.0f, dup, F, W.wu, d, 1.0f, da, d);
      if (float* g = gptr(W.wg)) mm(true, false, F, d, N, 1.0f, dgate, F, A.a2.data(), d, 1.0f, g, d);
    } else {
      act_backward(N * F, c.act, A.up.data(), dg, dup);
      mm(false, false, N, d, F, 1.0f, dup, F, W.wu, d, 0.0f, da, d);
    }
    if (float* g = gptr(W.bu)) bias_grad(N, F, dup, g);
    if (float* g = gptr(W.wu)) mm(true, false, F, d, N, 1.0f, dup, F, A.a2.data(), d, 1.0f, g, d);
    norm_backward(N, A.x_mid.data(), W.mlp_in_norm, A.st2.data(), da, dx, true, gptr(W.mlp_in_norm),
                  gptr(W.mlp_in_norm_b));
    // ---- attention block: x_mid = x_in + [norm](att · Woᵀ + bo)
    const float* dao = dx;
    if (c.sandwich_norms) {
      norm_backward(N, A.ao.data(), W.attn_out_norm, A.st_pa.data(), dx, dmo_.data(), false, gptr(W.attn_out_norm),
                    nullptr);
      dao = dmo_.data();
    }
    if (float* g = gptr(W.bo)) bias_grad(N, d, dao, g);
    mm(false, false, N, qd, d, 1.0f, dao, d, W.wo, qd, 0.0f, datt_.data(), qd);
    if (float* g = gptr(W.wo)) mm(true, false, d, qd, N, 1.0f, dao, d, A.att.data(), qd, 1.0f, g, qd);
    AttnDims dims;
    dims.B = B;
    dims.Tq = T;
    dims.Tk = T;
    dims.Hq = Hq;
    dims.Hkv = Hkv;
    dims.D = hd;
    dims.q_offset = 0;
    dims.kv_bstride = T * kvd;
    dims.window = sliding(l) ? c.sliding_window : 0;
    dims.scale = scale;
    dims.softcap = c.attn_softcap;
    attention_backward(dims, A.q.data(), A.k.data(), A.v.data(), A.att.data(), datt_.data(), A.lse.data(),
                       dq_.data(), dk_.data(), dv_.data());
    if (!c.learned_pos) {
      const RopeTable& rt = rope_for(l, T);
      rope_apply(B, T, Hq, hd, dq_.data(), rt.cos.data(), rt.sin.data(), 0, true);
      rope_apply(B, T, Hkv, hd, dk_.data(), rt.cos.data(), rt.sin.data(), 0, true);
    }
    float* dqp = dq_.data();  // gradient of the q (and k) projection outputs
    float* dkp = dk_.data();
    if (c.qk_norm) {
      dqp = dbig1_.data();
      dkp = dbig2_.data();
      rmsnorm_backward(N * Hq, hd, A.q_pre.data(), W.q_norm, A.rstd_q.data(), c.norm_unit_offset, dq_.data(), dqp,
                       false, gptr(W.q_norm));
      rmsnorm_backward(N * Hkv, hd, A.k_pre.data(), W.k_norm, A.rstd_k.data(), c.norm_unit_offset, dk_.data(), dkp,
                       false, gptr(W.k_norm));
    }
    if (float* g = gptr(W.bq)) bias_grad(N, qd, dqp, g);
    if (float* g = gptr(W.bk)) bias_grad(N, kvd, dkp, g);
    if (float* g = gptr(W.bv)) bias_grad(N, kvd, dv_.data(), g);
    da = dmo_.data();  // da1 [N, d]
    mm(false, false, N, d, qd, 1.0f, dqp, qd, W.wq, d, 0.0f, da, d);
    mm(false, false, N, d, kvd, 1.0f, dkp, kvd, W.wk, d, 1.0f, da, d);
    mm(false, false, N, d, kvd, 1.0f, dv_.data(), kvd, W.wv, d, 1.0f, da, d);
    if (float* g = gptr(W.wq)) mm(true, false, qd, d, N, 1.0f, dqp, qd, A.a1.data(), d, 1.0f, g, d);
    if (float* g = gptr(W.wk)) mm(true, false, kvd, d, N, 1.0f, dkp, kvd, A.a1.data(), d, 1.0f, g, d);
    if (float* g = gptr(W.wv)) mm(true, false, kvd, d, N, 1.0f, dv_.data(), kvd, A.a1.data(), d, 1.0f, g, d);
    norm_backward(N, A.x_in.data(), W.in_norm, A.st1.data(), da, dx, true, gptr(W.in_norm), gptr(W.in_norm_b));
  }
  if (stop == 0) {
    if (float* g = gptr(P + off_embed_)) embedding_backward(N, d, ids_.data(), dx, c.embed_scale, g);
    if (off_pos_ >= 0)
      if (float* g = gptr(P + off_pos_)) embedding_backward(N, d, pos_ids_.data(), dx, 1.0f, g);
  }
  have_head_grad_ = false;
}

void Model::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

double Model::grad_norm() const {
  double s = 0.0;
  for (const auto& t : tensors_)
    if (!t.frozen) s += sum_squares(t.numel, grads_.data() + t.offset);
  return std::sqrt(s);
}

void Model::ensure_moments() {
  if (m_.size() != params_.size()) {
    m_.assign(params_.size(), 0.0f);
    v_.assign(params_.size(), 0.0f);
  }
}

void Model::adamw(const AdamWParams& p) {
  ensure_moments();
  adam_step_++;
  for (const auto& t : tensors_) {
    if (t.frozen) continue;
    AdamWParams q = p;
    q.step = adam_step_;
    if (!t.decay) q.weight_decay = 0.0f;
    adamw_update(t.numel, params_.data() + t.offset, grads_.data() + t.offset, m_.data() + t.offset,
                 v_.data() + t.offset, q);
  }
}

void Model::cache_begin(int64_t B, int64_t capacity) {
  if (B <= 0 || capacity <= 0) fail("cache_begin: batch and capacity must be positive");
  check_positions(capacity, "generation length");
  const int64_t kvd = cfg_.n_kv_heads * cfg_.head_dim;
  kcache_.assign((size_t)cfg_.n_layers, std::vector<float>((size_t)(B * capacity * kvd)));
  vcache_.assign((size_t)cfg_.n_layers, std::vector<float>((size_t)(B * capacity * kvd)));
  cache_B_ = B;
  cache_cap_ = capacity;
  cache_pos_ = 0;
}

void Model::cache_step(const int32_t* ids, int64_t T, float* out_last_logits) {
  if (cache_B_ == 0) fail("cache_step before cache_begin");
  if (cache_pos_ + T > cache_cap_)
    fail("KV cache full: position " + std::to_string(cache_pos_ + T) + " > capacity " + std::to_string(cache_cap_));
  cache_mode_ = true;
  ensure_acts(cache_B_, T);
  run_layers(ids, cache_B_, T, false, cache_pos_);
  cache_pos_ += T;
  std::vector<int64_t> rows((size_t)cache_B_);
  for (int64_t b = 0; b < cache_B_; b++) rows[(size_t)b] = b * T + T - 1;
  logits(rows.data(), cache_B_, out_last_logits);
}

}  // namespace undo
