// The decoder: one config-driven transformer for every supported architecture (Llama, Mistral, Qwen2/3,
// Gemma-2/3, GPT-2). This file and
// model.cc hold the model's whole layer sequencing (forward, backward, KV-cache decoding); the kernels it
// calls live one family per file beside it. Parameters, gradients, AdamW moments and activations are
// contiguous native buffers; the JS side holds a handle and views.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "matmul.h"
#include "adamw.h"
#include "glu.h"
#include "rope.h"

namespace undo {

// The decoder is one layer sequence; an architecture (lib/models/config.ts's table) is a set of these
// switches. Every switch off is Llama.
enum class NormKind : int { rms = 0, layer = 1 };   // RMSNorm, or LayerNorm with bias (GPT-2)
enum class MlpKind : int { gated = 0, plain = 1 };  // down(act(gate) ⊙ up), or down(act(up)) (GPT-2)

struct ModelConfig {
  int64_t vocab = 0, d = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn = 0;
  int64_t max_pos = 2048;
  float norm_eps = 1e-5f;
  NormKind norm = NormKind::rms;
  bool norm_unit_offset = false;  // Gemma: norm weights are applied as 1 + w
  bool sandwich_norms = false;    // Gemma-2/3: norms on the attention and MLP outputs as well
  bool qk_norm = false;           // Qwen3, Gemma-3: RMSNorm over head_dim on every q and k head, before RoPE
  bool qkv_bias = false, o_bias = false, mlp_bias = false;
  MlpKind mlp = MlpKind::gated;
  GluKind act = GluKind::swiglu;  // swiglu: SiLU, geglu: tanh-GELU (also the plain MLP's activation)
  float embed_scale = 1.0f;       // Gemma: sqrt(hidden_size)
  bool learned_pos = false;       // GPT-2: learned absolute positions (model.embed_positions.weight), no RoPE
  RopeParams rope;                // every layer's RoPE, except sliding layers when has_rope_local
  bool has_rope_local = false;    // Gemma-3: sliding-window layers use rope_local (their own base)
  RopeParams rope_local;
  bool tied = false;
  float attn_softcap = 0.0f, final_softcap = 0.0f;
  float attn_scale = 0.0f;                // 0: head_dim^-1/2
  int64_t sliding_window = 0;
  std::vector<uint8_t> sliding_layers;    // per layer, 1 = sliding-window attention (empty: none)
};

enum class TensorRole : int { matrix = 0, norm = 1, bias = 2 };

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
  bool frozen = false;
  bool decay = true;  // weight decay applies
  TensorRole role = TensorRole::matrix;
};

// Per-layer views into the parameter (or gradient) buffer; null where the architecture has no such tensor.
// attn_out_norm and mlp_out_norm exist only with sandwich norms; mlp_in_norm is Llama's
// post_attention_layernorm (GPT-2's ln_2) and Gemma's pre_feedforward_layernorm. wg is null for a plain MLP.
struct LayerParams {
  float *in_norm, *in_norm_b, *wq, *bq, *wk, *bk, *wv, *bv, *q_norm, *k_norm, *wo, *bo;
  float *attn_out_norm, *mlp_in_norm, *mlp_in_norm_b, *mlp_out_norm, *wg, *bg, *wu, *bu, *wd, *bd;
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
  // rows per chunk of the fused head over N rows, asked for at most `chunk` (capped by head_chunk_floats() / V)
  int64_t head_chunk(int64_t chunk, int64_t N) const;

  // Capped logits of the contiguous rows [row0, row0 + n) of the last forward (e.g. a teacher's chunk).
  void logits_range(int64_t row0, int64_t n, float* out);
  // While a HeadPack of this model lives, the bf16 path packs the LM head once (its forward layout, and with
  // backward its dX layout too) instead of once per row chunk; the weights must not change meanwhile. Only
  // worth it over several chunks (several_chunks false: a no-op). The packed copies (V·d bf16 each) are kept
  // for the next call, and given back by set_bf16(false).
  class HeadPack {
   public:
    HeadPack(Model& m, bool backward, bool several_chunks = true);
    ~HeadPack();
    HeadPack(const HeadPack&) = delete;
    HeadPack& operator=(const HeadPack&) = delete;

   private:
    Model& m_;
    bool active_;
  };
  // d(loss)/d(capped logits) of rows [row0, row0 + n) of the last training forward ([n, V]) → the LM head's
  // gradient (accumulated) and d(final hidden) of those rows; backward(true) may follow once every row of the
  // forward has been given (callers run a logit loss in row chunks without a rows × V block).
  void head_grad_rows(int64_t row0, int64_t n, const float* dlogits);

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
  // Matmul precision: false = fp32; true = bf16 operands with fp32 accumulation (gemm_bf16) in every
  // projection, the MLP and the LM head, forward and backward. Parameters, gradients, the optimizer,
  // norms, attention and the losses stay fp32 (fp32 master weights; the rounding happens while packing).
  void set_bf16(bool on) {
    bf16_ = on;
    if (!on) head_fwd_ = Bf16Packed(), head_bwd_ = Bf16Packed();  // gives the packed copies' memory back
  }
  bool bf16() const { return bf16_; }
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
    // per layer; the norm statistics (st*) hold rstd, then the mean for LayerNorm
    std::vector<float> x_in, st1, a1, q_pre, k_pre, rstd_q, rstd_k, q, k, v, att, lse, ao, st_pa, x_mid, st2, a2,
        gate, up, g, mo, st_pf;
  };
  struct RopeTable {
    std::vector<float> cos, sin;
    int64_t n_pos = 0, seq_len = -1;  // positions covered; the dynamic-scaling length it was built for
  };
  void layout();
  // the model's GEMM: gemm or gemm_bf16 by the precision switch
  void mm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) const;
  LayerParams layer(float* base, int64_t l) const;
  bool trainable_at(const float* p) const;  // p points into params_: is that tensor trainable?
  // Logits one head chunk may hold: 2^23 (32 MB), or an eighth of the parameter count for larger models (half a
  // byte per parameter, where a training step already holds 16: params, grads, AdamW m and v), at most 2^26.
  // Bigger chunks matter for the LM-head weight gradient gWh += dzᵀ·h: each chunk reads and writes all of gWh
  // (V × d fp32, 545 MB at Qwen2.5's 152k × 896) for only `rows` of K, so 55-row chunks were memory-bound.
  static constexpr int64_t kHeadChunkFloats = int64_t(1) << 23;
  static constexpr int64_t kHeadChunkFloatsMax = int64_t(1) << 26;
  int64_t head_chunk_floats() const;
  static float* head_scratch(std::vector<float>& buf, size_t n);
  std::vector<float> head_z_, head_dz_;  // the fused head's logit chunk and its gradient, reused across calls
  Bf16Packed head_fwd_, head_bwd_;        // the LM head packed for the bf16 kernel while a HeadPack lives
  int head_pack_depth_ = 0;
  // the head's products: logits = h·Whᵀ and dh = dz·Wh, through the packed head when there is one
  void head_logits_mm(int64_t n, const float* h, float* out);
  void head_dh_mm(int64_t n, const float* dz, float* dh);
  void softcap_logits(float* z, int64_t n) const;  // Gemma-2's final soft-cap, in place (no-op for Llama)
  // the model's norm (RMSNorm or LayerNorm) on rows × dim; st holds rows (RMS) or 2·rows (LayerNorm) floats
  void norm_forward(int64_t rows, const float* x, const float* w, const float* b, float* y, float* st) const;
  void norm_backward(int64_t rows, const float* x, const float* w, const float* st, const float* dy, float* dx,
                     bool accumulate, float* dw, float* db) const;
  bool sliding(int64_t l) const { return !cfg_.sliding_layers.empty() && cfg_.sliding_layers[(size_t)l]; }
  // RoPE cos/sin for layer l covering positions [0, n_pos), built (or rebuilt for dynamic scaling) on demand
  const RopeTable& rope_for(int64_t l, int64_t n_pos);
  void check_positions(int64_t n_pos, const char* what) const;
  int lowest_trainable_layer() const;       // backward can stop there (-1: embedding trainable)
  void ensure_acts(int64_t B, int64_t T);
  void ensure_moments();
  void run_layers(const int32_t* ids, int64_t B, int64_t T, bool training, int64_t pos_offset);

  ModelConfig cfg_;
  std::vector<TensorInfo> tensors_;
  std::vector<float> params_, grads_, m_, v_;
  RopeTable rope_tab_[2];  // [0] rope, [1] rope_local
  int64_t adam_step_ = 0;
  bool bf16_ = false;
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
  int64_t off_embed_ = 0, off_pos_ = -1, off_norm_ = 0, off_norm_b_ = -1, off_head_ = 0;
  std::vector<int32_t> pos_ids_;  // learned positions of the last forward's rows
  std::vector<int64_t> layer_off_;  // kLayerTensors offsets per layer (-1 = absent), see layout()
};

}  // namespace undo
