// The decoder: one config-driven transformer for the Llama family and the Gemma-2 variant. This file and
// model.cc hold the model's whole layer sequencing (forward, backward, KV-cache decoding); the kernels it
// calls live one family per file beside it. Parameters, gradients, AdamW moments and activations are
// contiguous native buffers; the JS side holds a handle and views.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "adamw.h"
#include "glu.h"

namespace undo {

enum class Family : int { llama = 0, gemma2 = 1 };

struct ModelConfig {
  Family family = Family::llama;
  int64_t vocab = 0, d = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn = 0;
  int64_t max_pos = 2048;
  float norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  bool tied = false;
  float attn_softcap = 0.0f, final_softcap = 0.0f;
  float query_pre_attn_scalar = 0.0f;  // gemma2: attention scale = query_pre_attn_scalar^-1/2
  int64_t sliding_window = 0;          // gemma2: applied on layers with even index
  GluKind act = GluKind::swiglu;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
  bool frozen = false;
  bool decay = true;  // weight decay applies
};

// Per-layer views into the parameter (or gradient) buffer.
// attn_out_norm and mlp_out_norm exist only in Gemma-2 (null for Llama); mlp_in_norm is Llama's
// post_attention_layernorm and Gemma-2's pre_feedforward_layernorm.
struct LayerParams {
  float *in_norm, *wq, *wk, *wv, *wo, *attn_out_norm, *mlp_in_norm, *mlp_out_norm, *wg, *wu, *wd;
};

class Model {
 public:
  explicit Model(const ModelConfig& cfg);  // throws std::invalid_argument on a bad config
  const ModelConfig& config() const { return cfg_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  int64_t num_params() const { return (int64_t)params_.size(); }
  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }
  int tensor_index(const std::string& name) const;  // -1 if absent
  std::mutex& mutex() { return mu_; }

  // Seeded initialisation: matrices ~ N(0, std) ("normal") or Xavier-uniform ("xavier"); norm weights 1
  // (Llama) or 0 (Gemma's 1+w). Counter-based, so identical for every thread count.
  void init(uint64_t seed, const std::string& scheme, float std);

  // Training forward over ids [B, T]: keeps the activations backward needs. Returns nothing; the loss is
  // computed by head_loss (fused LM head + cross-entropy in row chunks) or logits() for inspection.
  void forward(const int32_t* ids, int64_t B, int64_t T);

  // Fused final-norm output → LM head → softcap → cross-entropy, in row chunks of `chunk` rows, never
  // holding B·T×V logits. Per-row losses go to row_loss (may be null). If backward, d(loss)/d(final hidden)
  // is stored for backward(), and the LM-head gradient is accumulated. loss = Σ w·ce / normalizer (rows
  // whose target is ignore_index count 0); normalizer <= 0 means Σ w over counted rows.
  // Returns the mean loss, and the number of counted rows in *counted.
  double head_loss(const int32_t* targets, const float* weights, int32_t ignore_index, double normalizer,
                   bool backward, float* row_loss, double* counted, int64_t chunk = 256);

  // Generic fused head for any loss on the logits: per chunk of rows, z = softcap(h·Wᵀ) [n, V] is handed to
  // fn(row0, n, z, dz, loss_rows), which writes the per-row losses and, when backward, dz = d(loss)/dz (all
  // scaling included). The head applies the soft-cap chain rule, stores d(loss)/d(final hidden) for
  // backward() and accumulates the LM-head gradient. Never holds more than two chunks of logits.
  // Returns Σ loss_rows; row_loss (may be null) receives them.
  using HeadFn = std::function<void(int64_t row0, int64_t n, const float* z, float* dz, float* loss_rows)>;
  double head_custom(const HeadFn& fn, bool backward, float* row_loss, int64_t chunk = 256);

  // Capped logits of the contiguous rows [row0, row0 + n) of the last forward (e.g. a teacher's chunk).
  void logits_range(int64_t row0, int64_t n, float* out);

  // Full logits [B·T, V] (after soft-capping) for the rows of the last forward. rows_sel: which rows (null =
  // all), n_sel of them.
  void logits(const int64_t* rows_sel, int64_t n_sel, float* out);

  // Backward from the stored head gradient (if use_head) plus any gradients injected on layer outputs
  // (hidden_grads[l] is [B·T, d] or null, for l in [0, n_layers)). Gradients are accumulated into grads().
  void backward(bool use_head, const std::vector<const float*>& hidden_grads);

  // Output of layer l (the residual stream after block l; l = n_layers − 1 is before the final norm).
  const float* hidden(int64_t l) const;
  int64_t rows() const { return N_; }

  void zero_grad();
  double grad_norm() const;  // global L2 norm over trainable tensors
  // AdamW over trainable tensors; grad_scale multiplies the gradient (clipping/averaging). step is 1-based.
  void adamw(const AdamWParams& p);
  void set_frozen(int tensor, bool frozen) { tensors_[tensor].frozen = frozen; }
  void set_decay(int tensor, bool decay) { tensors_[tensor].decay = decay; }
  int64_t adam_step() const { return adam_step_; }
  void set_adam_step(int64_t s) { adam_step_ = s; }
  float* adam_m() { ensure_moments(); return m_.data(); }
  float* adam_v() { ensure_moments(); return v_.data(); }

  // Inference with a KV cache: begin(B, capacity) then feed ids [B, T] at the current position; logits of
  // the last position of each batch row go to out [B, V].
  void cache_begin(int64_t B, int64_t capacity);
  void cache_step(const int32_t* ids, int64_t T, float* out_last_logits);
  int64_t cache_pos() const { return cache_pos_; }
  int64_t cache_batch() const { return cache_B_; }  // 0 before cache_begin

 private:
  struct Acts {
    // per layer
    std::vector<float> x_in, rstd1, a1, q, k, v, att, lse, ao, rstd_pa, x_mid, rstd2, a2, gate, up, g, mo,
        rstd_pf;
  };
  void layout();
  LayerParams layer(float* base, int64_t l) const;
  bool trainable_at(const float* p) const;  // p points into params_: is that tensor trainable?
  void softcap_logits(float* z, int64_t n) const;  // Gemma-2's final soft-cap, in place (no-op for Llama)
  int lowest_trainable_layer() const;       // backward can stop there (-1: embedding trainable)
  void ensure_acts(int64_t B, int64_t T);
  void ensure_moments();
  void run_layers(const int32_t* ids, int64_t B, int64_t T, bool training, int64_t pos_offset);

  ModelConfig cfg_;
  std::vector<TensorInfo> tensors_;
  std::vector<float> params_, grads_, m_, v_;
  std::vector<float> rope_cos_, rope_sin_;
  int64_t adam_step_ = 0;
  std::mutex mu_;

  // activations of the last forward
  int64_t B_ = 0, T_ = 0, N_ = 0, cap_N_ = 0;
  std::vector<Acts> acts_;
  std::vector<float> x_final_, rstd_f_, h_final_, dh_final_;
  std::vector<int32_t> ids_;
  // backward scratch
  std::vector<float> dx_, dmo_, dbig1_, dbig2_, dq_, dk_, dv_, datt_;
  bool have_head_grad_ = false;
  // KV cache (inference)
  std::vector<std::vector<float>> kcache_, vcache_;
  int64_t cache_B_ = 0, cache_cap_ = 0, cache_pos_ = 0;
  bool cache_mode_ = false;
  // offsets of named tensors
  int64_t off_embed_ = 0, off_norm_ = 0, off_head_ = 0;
  std::vector<int64_t> layer_off_;  // kLayerTensors offsets per layer (-1 = absent), see layout()
};

}  // namespace undo
