#!/usr/bin/python3
"""PyTorch oracle fixtures for the architectures beyond plain llama / gemma2.

Plain-PyTorch (float64) re-implementations, written from the semantics of Hugging Face
transformers' modeling code (eager attention), of:

  llama3_rope    LlamaForCausalLM, rope_scaling llama3, attention_bias, mlp_bias, GQA, head_dim != d/H
  llama_linear   LlamaForCausalLM, rope_scaling linear
  llama_dynamic  LlamaForCausalLM, rope_scaling dynamic (NTK), max_position_embeddings < T
  mistral        MistralForCausalLM, sliding_window < T on every layer
  qwen2          Qwen2ForCausalLM, q/k/v biases (no o bias), untied, use_sliding_window false
  qwen3          Qwen3ForCausalLM, per-head q_norm/k_norm before RoPE, head_dim != d/H, tied
  gemma3         Gemma3ForCausalLM (model_type gemma3_text): local/global layers, q/k norms, ...
  gpt2           GPT2LMHeadModel: Conv1D layout, LayerNorm with bias, learned positions, gelu_new

The file formats, batch, seeds scheme, loss, AdamW and clipping are exactly those of
make_fixtures.py (whose helpers are imported; that script and its outputs are untouched).

Run:  /usr/bin/python3 test/reference/make_arch_fixtures.py [case ...]
"""

import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402  (sets the default dtype to float64)

torch.set_default_dtype(torch.float64)

B, T = mf.B, mf.T
INIT_STD = mf.INIT_STD
BIAS_STD = 0.1
GEMMA_NORM_STD = 0.2   # gemma3 norm weights are stored zero-centred and applied as (1 + w)
FIXTURES = mf.FIXTURES

# --------------------------------------------------------------------------
# Configs (config.json as written, sorted keys)
# --------------------------------------------------------------------------

_LLAMA_COMMON = {
    "architectures": ["LlamaForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "model_type": "llama",
    "num_hidden_layers": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 64,
}

LLAMA3_ROPE_CONFIG = dict(
    _LLAMA_COMMON,
    attention_bias=True,
    mlp_bias=True,
    head_dim=12,                 # != hidden_size / num_attention_heads = 8
    hidden_size=24,
    intermediate_size=32,
    max_position_embeddings=512,
    num_attention_heads=3,
    num_key_value_heads=1,
    rope_theta=500.0,
    # wavelengths 2*pi*500^(i/6), i=0..5: 6.3 17.7 | 49.9 140.5 | 395.8 1115.0
    # high band (< 160/4 = 40): i=0,1; smoothed [40,160]: i=2,3; low (> 160): i=4,5
    rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 160, "rope_type": "llama3"},
)

LLAMA_LINEAR_CONFIG = dict(
    _LLAMA_COMMON,
    attention_bias=False,
    mlp_bias=False,
    head_dim=12,
    hidden_size=24,
    intermediate_size=32,
    max_position_embeddings=64,
    num_attention_heads=2,
    num_key_value_heads=1,
    rope_theta=10000.0,
    rope_scaling={"factor": 2.0, "rope_type": "linear"},
)

LLAMA_DYNAMIC_CONFIG = dict(
    LLAMA_LINEAR_CONFIG,
    max_position_embeddings=6,   # < T = 9, so the dynamic rule changes the base
    rope_scaling={"factor": 2.0, "rope_type": "dynamic"},
)

MISTRAL_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 6,
    "hidden_act": "silu",
    "hidden_size": 24,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "model_type": "mistral",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 64,
}

QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 24,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "layer_types": ["full_attention", "full_attention"],
    "max_position_embeddings": 64,
    "max_window_layers": 2,
    "model_type": "qwen2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    # deliberately < T: real Qwen2 configs carry a sliding_window that is ignored because
    # use_sliding_window is false; an engine that applies it anyway fails this fixture.
    "sliding_window": 4,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 64,
}

QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 8,               # != hidden_size / num_attention_heads = 6
    "hidden_act": "silu",
    "hidden_size": 24,
    "initializer_range": 0.02,
    "intermediate_size": 32,
    "layer_types": ["full_attention", "full_attention"],
    "max_position_embeddings": 64,
    "max_window_layers": 2,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 64,
}

GEMMA3_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "cache_implementation": "hybrid",
    "final_logit_softcapping": None,
    "head_dim": 12,              # != hidden_size / num_attention_heads = 10
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 20,           # sqrt(20) is not a float32 number: the normalizer cast matters
    "initializer_range": 0.02,
    "intermediate_size": 24,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "max_position_embeddings": 64,
    "model_type": "gemma3_text",
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "num_key_value_heads": 1,
    "query_pre_attn_scalar": 16,  # != head_dim: the scale is 16**-0.5, not head_dim**-0.5
    "rms_norm_eps": 1e-6,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "rope_theta": 1000000.0,
    "sliding_window": 4,
    "sliding_window_pattern": 3,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 64,
}

GPT2_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.0,
    "bos_token_id": 1,
    "embd_pdrop": 0.0,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-5,
    "model_type": "gpt2",
    "n_ctx": 16,
    "n_embd": 20,
    "n_head": 4,
    "n_inner": None,
    "n_layer": 2,
    "n_positions": 16,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.0,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "summary_activation": None,
    "summary_first_dropout": 0.0,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 64,
}

SEED = mf.SEED
# (case, config, seed). make_fixtures.py uses SEED (llama) and SEED+100 (gemma2).
CASES = [
    ("llama3_rope", LLAMA3_ROPE_CONFIG, SEED + 200),
    ("llama_linear", LLAMA_LINEAR_CONFIG, SEED + 300),
    ("llama_dynamic", LLAMA_DYNAMIC_CONFIG, SEED + 400),
    ("mistral", MISTRAL_CONFIG, SEED + 500),
    ("qwen2", QWEN2_CONFIG, SEED + 600),
    ("qwen3", QWEN3_CONFIG, SEED + 700),
    ("gemma3", GEMMA3_CONFIG, SEED + 800),
    ("gpt2", GPT2_CONFIG, SEED + 900),
]

# --------------------------------------------------------------------------
# Architecture description helpers
# --------------------------------------------------------------------------


def is_gpt2(cfg):
    return cfg["model_type"] == "gpt2"


def is_gemma3(cfg):
    return cfg["model_type"] == "gemma3_text"


def dims(cfg):
    """(d, H, KV, D, I, L, V)"""
    if is_gpt2(cfg):
        d, H = cfg["n_embd"], cfg["n_head"]
        I = cfg["n_inner"] if cfg["n_inner"] is not None else 4 * d
        return d, H, H, d // H, I, cfg["n_layer"], cfg["vocab_size"]
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    D = cfg.get("head_dim") or d // H
    return d, H, cfg["num_key_value_heads"], D, cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]


def has_qkv_bias(cfg):
    return cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False))


def has_o_bias(cfg):
    return cfg["model_type"] in ("llama",) and bool(cfg.get("attention_bias", False))


def has_mlp_bias(cfg):
    return cfg["model_type"] == "llama" and bool(cfg.get("mlp_bias", False))


def has_qk_norm(cfg):
    return cfg["model_type"] in ("qwen3", "gemma3_text")


def layer_type(cfg, li):
    """'sliding_attention' | 'full_attention' (HF's layer_types semantics)."""
    mt = cfg["model_type"]
    if mt == "gemma3_text":
        if cfg.get("layer_types") is not None:
            return cfg["layer_types"][li]
        pat = cfg.get("sliding_window_pattern", 6)
        return "sliding_attention" if (li + 1) % pat else "full_attention"
    if mt == "mistral":
        return "sliding_attention" if cfg.get("sliding_window") is not None else "full_attention"
    if mt in ("qwen2", "qwen3"):
        if cfg.get("use_sliding_window") and li >= cfg.get("max_window_layers", 0):
            return "sliding_attention"
        return "full_attention"
    return "full_attention"


def param_specs(cfg):
    """name -> (shape, kind); kind in matrix | bias | norm | norm0 (zero-centred, 1+w) | lnbias."""
    d, H, KV, D, I, L, V = dims(cfg)
    s = {}
    if is_gpt2(cfg):
        s["transformer.wte.weight"] = ((V, d), "matrix")
        s["transformer.wpe.weight"] = ((cfg["n_positions"], d), "matrix")
        for i in range(L):
            p = f"transformer.h.{i}."
            for ln in ("ln_1", "ln_2"):
                s[p + ln + ".weight"] = ((d,), "norm")
                s[p + ln + ".bias"] = ((d,), "lnbias")
            # Conv1D: weight is [in, out], y = x @ W + b
            s[p + "attn.c_attn.weight"] = ((d, 3 * d), "matrix")
            s[p + "attn.c_attn.bias"] = ((3 * d,), "bias")
            s[p + "attn.c_proj.weight"] = ((d, d), "matrix")
            s[p + "attn.c_proj.bias"] = ((d,), "bias")
            s[p + "mlp.c_fc.weight"] = ((d, I), "matrix")
            s[p + "mlp.c_fc.bias"] = ((I,), "bias")
            s[p + "mlp.c_proj.weight"] = ((I, d), "matrix")
            s[p + "mlp.c_proj.bias"] = ((d,), "bias")
        s["transformer.ln_f.weight"] = ((d,), "norm")
        s["transformer.ln_f.bias"] = ((d,), "lnbias")
        return dict(sorted(s.items()))
    nk = "norm0" if is_gemma3(cfg) else "norm"
    s["model.embed_tokens.weight"] = ((V, d), "matrix")
    s["model.norm.weight"] = ((d,), nk)
    for i in range(L):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = ((d,), nk)
        s[p + "post_attention_layernorm.weight"] = ((d,), nk)
        if is_gemma3(cfg):
            s[p + "pre_feedforward_layernorm.weight"] = ((d,), nk)
            s[p + "post_feedforward_layernorm.weight"] = ((d,), nk)
        s[p + "self_attn.q_proj.weight"] = ((H * D, d), "matrix")
        s[p + "self_attn.k_proj.weight"] = ((KV * D, d), "matrix")
        s[p + "self_attn.v_proj.weight"] = ((KV * D, d), "matrix")
        s[p + "self_attn.o_proj.weight"] = ((d, H * D), "matrix")
        if has_qkv_bias(cfg):
            s[p + "self_attn.q_proj.bias"] = ((H * D,), "bias")
            s[p + "self_attn.k_proj.bias"] = ((KV * D,), "bias")
            s[p + "self_attn.v_proj.bias"] = ((KV * D,), "bias")
        if has_o_bias(cfg):
            s[p + "self_attn.o_proj.bias"] = ((d,), "bias")
        if has_qk_norm(cfg):
            s[p + "self_attn.q_norm.weight"] = ((D,), nk)
            s[p + "self_attn.k_norm.weight"] = ((D,), nk)
        s[p + "mlp.gate_proj.weight"] = ((I, d), "matrix")
        s[p + "mlp.up_proj.weight"] = ((I, d), "matrix")
        s[p + "mlp.down_proj.weight"] = ((d, I), "matrix")
        if has_mlp_bias(cfg):
            s[p + "mlp.gate_proj.bias"] = ((I,), "bias")
            s[p + "mlp.up_proj.bias"] = ((I,), "bias")
            s[p + "mlp.down_proj.bias"] = ((d,), "bias")
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = ((V, d), "matrix")
    return dict(sorted(s.items()))


def init_params(cfg, seed):
    """Seeded init in sorted-name order; float32-rounded values held as float64."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for n, (shp, kind) in param_specs(cfg).items():
        z = torch.randn(shp, generator=g, dtype=torch.float64)
        w = {"matrix": INIT_STD * z, "bias": BIAS_STD * z, "lnbias": BIAS_STD * z,
             "norm": 1.0 + 0.1 * z, "norm0": GEMMA_NORM_STD * z}[kind]
        params[n] = w.to(torch.float32).to(torch.float64)
    return params


# --------------------------------------------------------------------------
# RoPE (vectorised) -- semantics of transformers.modeling_rope_utils
# --------------------------------------------------------------------------

def rope_params(cfg, li):
    """(base, rope_scaling dict or None) used by layer li."""
    if is_gemma3(cfg):
        if layer_type(cfg, li) == "sliding_attention":
            return cfg["rope_local_base_freq"], None       # default RoPE, local base
        return cfg["rope_theta"], cfg.get("rope_scaling")  # scaling on global layers only
    return cfg["rope_theta"], cfg.get("rope_scaling")


def rope_inv_freq(cfg, li, seq_len):
    _, _, _, D, _, _, _ = dims(cfg)
    base, rs = rope_params(cfg, li)
    rtype = (rs.get("rope_type", rs.get("type")) if rs else None) or "default"
    expo = torch.arange(0, D, 2, dtype=torch.float64) / D
    if rtype == "dynamic":
        mpe, factor = cfg["max_position_embeddings"], rs["factor"]
        sl = max(seq_len, mpe)
        base = base * ((factor * sl / mpe) - (factor - 1)) ** (D / (D - 2))
    inv = 1.0 / (base ** expo)
    if rtype == "default" or rtype == "dynamic":
        return inv
    if rtype == "linear":
        return inv / rs["factor"]
    if rtype == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = torch.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return torch.where(medium, smoothed, out)
    raise ValueError(rtype)


def rope_cos_sin(inv, seq_len):
    pos = torch.arange(seq_len, dtype=torch.float64)
    freqs = torch.outer(pos, inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def scalar_inv_freq(cfg, li, seq_len, i):
    """Independent scalar restatement of the per-pair frequency (for the naive check)."""
    _, _, _, D, _, _, _ = dims(cfg)
    if is_gemma3(cfg):
        if (li + 1) % cfg["sliding_window_pattern"] != 0:
            return cfg["rope_local_base_freq"] ** (-2.0 * i / D)
        return cfg["rope_theta"] ** (-2.0 * i / D) / cfg["rope_scaling"]["factor"]
    rs = cfg.get("rope_scaling")
    theta = cfg["rope_theta"]
    if rs is None:
        return theta ** (-2.0 * i / D)
    t = rs["rope_type"]
    if t == "linear":
        return theta ** (-2.0 * i / D) / rs["factor"]
    if t == "dynamic":
        L0, s = cfg["max_position_embeddings"], rs["factor"]
        n = seq_len if seq_len > L0 else L0
        b = theta * (s * n / L0 - s + 1) ** (D / (D - 2.0))
        return b ** (-2.0 * i / D)
    if t == "llama3":
        f = theta ** (-2.0 * i / D)
        wavelen = 2 * math.pi / f
        old = rs["original_max_position_embeddings"]
        if wavelen < old / rs["high_freq_factor"]:
            return f
        if wavelen > old / rs["low_freq_factor"]:
            return f / rs["factor"]
        a = (old / wavelen - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
        return (1 - a) * f / rs["factor"] + a * f
    raise ValueError(t)


def llama3_bands(cfg):
    _, _, _, D, _, _, _ = dims(cfg)
    rs = cfg["rope_scaling"]
    old = rs["original_max_position_embeddings"]
    bands = []
    for i in range(D // 2):
        wl = 2 * math.pi * cfg["rope_theta"] ** (2.0 * i / D)
        bands.append("high" if wl < old / rs["high_freq_factor"] else
                     "low" if wl > old / rs["low_freq_factor"] else "smoothed")
    return bands


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def attn_scale(cfg):
    _, _, _, D, _, _, _ = dims(cfg)
    if is_gemma3(cfg):
        return cfg["query_pre_attn_scalar"] ** -0.5
    return D ** -0.5


def layer_window(cfg, li):
    return cfg["sliding_window"] if layer_type(cfg, li) == "sliding_attention" else None


def embed_scale(cfg):
    """Gemma3TextScaledWordEmbedding: sqrt(hidden_size) held in a float32 buffer, cast to the
    weight dtype (float32 here) -> float32(sqrt(d))."""
    return float(torch.tensor(cfg["hidden_size"] ** 0.5, dtype=torch.float32))


def rms(x, w, eps, zero_centred):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * (1.0 + w) if zero_centred else y * w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * w + b


def forward(cfg, params, input_ids, trace=None):
    """Returns (logits, [hidden after each block], final-norm output).
    trace (dict, optional) receives resid_in.<l> [B,T,d] and attn.<l> [B,H,T,D] (pre o_proj)."""
    if is_gpt2(cfg):
        return forward_gpt2(cfg, params, input_ids, trace)
    d, H, KV, D, I, L, V = dims(cfg)
    g3 = is_gemma3(cfg)
    eps = cfg["rms_norm_eps"]
    Bn, Tn = input_ids.shape
    emb = params["model.embed_tokens.weight"]
    h = emb[input_ids]
    if g3:
        h = h * embed_scale(cfg)
    act = mf.gelu_tanh if g3 else torch.nn.functional.silu
    hidden = []
    for li in range(L):
        p = lambda n: params[f"model.layers.{li}.{n}"]  # noqa: E731
        opt = lambda n: params.get(f"model.layers.{li}.{n}")  # noqa: E731
        if trace is not None:
            trace[f"resid_in.{li}"] = h
        x = rms(h, p("input_layernorm.weight"), eps, g3)

        def proj(name, heads):
            y = x @ p(f"self_attn.{name}.weight").T
            bb = opt(f"self_attn.{name}.bias")
            if bb is not None:
                y = y + bb
            return y.view(Bn, Tn, heads, D)

        q, k, v = proj("q_proj", H), proj("k_proj", KV), proj("v_proj", KV)
        if has_qk_norm(cfg):   # per head, over head_dim, before RoPE
            q = rms(q, p("self_attn.q_norm.weight"), eps, g3)
            k = rms(k, p("self_attn.k_norm.weight"), eps, g3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = rope_cos_sin(rope_inv_freq(cfg, li, Tn), Tn)
        q, k = mf.apply_rope(q, cos, sin), mf.apply_rope(k, cos, sin)
        a = mf.attention_core(q, k, v, attn_scale(cfg), None, layer_window(cfg, li))
        if trace is not None:
            trace[f"attn.{li}"] = a
        a = a.transpose(1, 2).reshape(Bn, Tn, H * D) @ p("self_attn.o_proj.weight").T
        if opt("self_attn.o_proj.bias") is not None:
            a = a + p("self_attn.o_proj.bias")

        def mlp(xx):
            gt = xx @ p("mlp.gate_proj.weight").T
            up = xx @ p("mlp.up_proj.weight").T
            if opt("mlp.gate_proj.bias") is not None:
                gt, up = gt + p("mlp.gate_proj.bias"), up + p("mlp.up_proj.bias")
            y = (act(gt) * up) @ p("mlp.down_proj.weight").T
            if opt("mlp.down_proj.bias") is not None:
                y = y + p("mlp.down_proj.bias")
            return y

        if g3:
            h = h + rms(a, p("post_attention_layernorm.weight"), eps, True)
            m = mlp(rms(h, p("pre_feedforward_layernorm.weight"), eps, True))
            h = h + rms(m, p("post_feedforward_layernorm.weight"), eps, True)
        else:
            h = h + a
            h = h + mlp(rms(h, p("post_attention_layernorm.weight"), eps, False))
        hidden.append(h)
    hn = rms(h, params["model.norm.weight"], eps, g3)
    head = emb if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    logits = hn @ head.T
    return logits, hidden, hn


def forward_gpt2(cfg, params, input_ids, trace=None):
    d, H, _, D, _, L, _ = dims(cfg)
    eps = cfg["layer_norm_epsilon"]
    Bn, Tn = input_ids.shape
    wte = params["transformer.wte.weight"]
    h = wte[input_ids] + params["transformer.wpe.weight"][torch.arange(Tn)]
    hidden = []
    for li in range(L):
        p = lambda n: params[f"transformer.h.{li}.{n}"]  # noqa: E731
        if trace is not None:
            trace[f"resid_in.{li}"] = h
        x = layer_norm(h, p("ln_1.weight"), p("ln_1.bias"), eps)
        qkv = x @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (t.reshape(Bn, Tn, H, D).transpose(1, 2) for t in qkv.split(d, dim=-1))
        a = mf.attention_core(q, k, v, D ** -0.5, None, None)
        if trace is not None:
            trace[f"attn.{li}"] = a
        a = a.transpose(1, 2).reshape(Bn, Tn, d) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = h + a
        x = layer_norm(h, p("ln_2.weight"), p("ln_2.bias"), eps)
        m = mf.gelu_tanh(x @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))   # gelu_new
        h = h + (m @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias"))
        hidden.append(h)
    hn = layer_norm(h, params["transformer.ln_f.weight"], params["transformer.ln_f.bias"], eps)
    return hn @ wte.T, hidden, hn


def loss_of(cfg, params, input_ids, targets):
    return mf.loss_fn(forward(cfg, params, input_ids)[0], targets)


# --------------------------------------------------------------------------
# Self checks
# --------------------------------------------------------------------------

def naive_head_attention(cfg, params, input_ids, li, b, head):
    """Scalar-loop attention of one (batch, head) of layer li, starting from the residual
    stream entering the layer: norm, projections (+bias), q/k norm, RoPE pair by pair with the
    scaled frequency, scale, causal/sliding mask, softmax. Returns (max abs err vs forward(),
    max over rows of max |p - 1/n|, a measure of how far the attention is from uniform)."""
    d, H, KV, D, _, _, _ = dims(cfg)
    Tn = input_ids.shape[1]
    with torch.no_grad():
        tr = {}
        forward(cfg, params, input_ids, trace=tr)
        hin = tr[f"resid_in.{li}"][b].tolist()
        want = tr[f"attn.{li}"][b, head]
    P = {n: v.tolist() for n, v in params.items()}
    kvh = head // (H // KV)
    if is_gpt2(cfg):
        pre = f"transformer.h.{li}."
        eps = cfg["layer_norm_epsilon"]
        w, bb = P[pre + "ln_1.weight"], P[pre + "ln_1.bias"]
        W, bias = P[pre + "attn.c_attn.weight"], P[pre + "attn.c_attn.bias"]
        xs = []
        for t in range(Tn):
            mu = sum(hin[t]) / d
            var = sum((e - mu) ** 2 for e in hin[t]) / d
            xs.append([(hin[t][c] - mu) / math.sqrt(var + eps) * w[c] + bb[c] for c in range(d)])

        def col(x, off):   # x @ W[:, off:off+D] + b[off:off+D]   (Conv1D)
            return [sum(x[c] * W[c][off + e] for c in range(d)) + bias[off + e] for e in range(D)]

        q = [col(xs[t], head * D) for t in range(Tn)]
        k = [col(xs[t], d + head * D) for t in range(Tn)]
        v = [col(xs[t], 2 * d + head * D) for t in range(Tn)]
        scale, win = 1.0 / math.sqrt(D), None
    else:
        pre = f"model.layers.{li}."
        eps = cfg["rms_norm_eps"]
        g3 = is_gemma3(cfg)
        nw = (lambda w: [1.0 + e for e in w]) if g3 else (lambda w: w)

        def rmsn(vec, w):
            r = 1.0 / math.sqrt(sum(e * e for e in vec) / len(vec) + eps)
            return [vec[c] * r * w[c] for c in range(len(vec))]

        w_in = nw(P[pre + "input_layernorm.weight"])
        xs = [rmsn(hin[t], w_in) for t in range(Tn)]

        def rows(name, hh):
            Wm = P[pre + f"self_attn.{name}.weight"][hh * D:(hh + 1) * D]
            bm = P.get(pre + f"self_attn.{name}.bias")
            out = []
            for t in range(Tn):
                out.append([sum(xs[t][c] * Wm[e][c] for c in range(d)) + (bm[hh * D + e] if bm else 0.0)
                            for e in range(D)])
            return out

        q, k, v = rows("q_proj", head), rows("k_proj", kvh), rows("v_proj", kvh)
        if has_qk_norm(cfg):
            qn, kn = nw(P[pre + "self_attn.q_norm.weight"]), nw(P[pre + "self_attn.k_norm.weight"])
            q = [rmsn(r, qn) for r in q]
            k = [rmsn(r, kn) for r in k]
        freqs = [scalar_inv_freq(cfg, li, Tn, i) for i in range(D // 2)]

        def rope(vec, pos):
            out = list(vec)
            half = D // 2
            for i in range(half):
                c, s = math.cos(pos * freqs[i]), math.sin(pos * freqs[i])
                x1, x2 = vec[i], vec[i + half]
                out[i] = x1 * c - x2 * s
                out[i + half] = x2 * c + x1 * s
            return out

        q = [rope(q[t], t) for t in range(Tn)]
        k = [rope(k[t], t) for t in range(Tn)]
        scale = 1.0 / math.sqrt(cfg["query_pre_attn_scalar"] if g3 else D)
        if g3:
            win = cfg["sliding_window"] if (li + 1) % cfg["sliding_window_pattern"] else None
        elif cfg["model_type"] == "mistral":
            win = cfg["sliding_window"]
        else:
            win = None
    out, nonuni = [], 0.0
    for i in range(Tn):
        js = [j for j in range(Tn) if j <= i and (win is None or j > i - win)]
        sc = [sum(q[i][e] * k[j][e] for e in range(D)) * scale for j in js]
        mx = max(sc)
        ex = [math.exp(s - mx) for s in sc]
        z = sum(ex)
        nonuni = max(nonuni, max(abs(x / z - 1.0 / len(js)) for x in ex))
        out.append([sum(ex[n] / z * v[j][e] for n, j in enumerate(js)) for e in range(D)])
    return (want - torch.tensor(out)).abs().max().item(), nonuni


# finite differences: make_fixtures.finite_diff_check with h = 1e-5 (not its 1e-6): some bias / low-frequency
# components have gradients ~1e-4, where float64 round-off of the loss difference at h = 1e-6 is already
# ~1e-6 relative.
FD_STEP = 1e-5


def fd_names(cfg):
    L = dims(cfg)[5]
    if is_gpt2(cfg):
        return ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                "transformer.h.0.attn.c_attn.bias", "transformer.h.1.ln_1.weight", "transformer.h.1.mlp.c_fc.bias",
                "transformer.ln_f.bias"]
    n = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
         f"model.layers.{L - 1}.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
         f"model.layers.{L - 1}.input_layernorm.weight", "model.norm.weight"]
    if has_qkv_bias(cfg):
        n += ["model.layers.0.self_attn.k_proj.bias", f"model.layers.{L - 1}.self_attn.v_proj.bias"]
    if has_o_bias(cfg):
        n.append(f"model.layers.{L - 1}.self_attn.o_proj.bias")
    if has_mlp_bias(cfg):
        n.append("model.layers.0.mlp.gate_proj.bias")
    if has_qk_norm(cfg):
        n += ["model.layers.0.self_attn.q_norm.weight", f"model.layers.{L - 1}.self_attn.k_norm.weight"]
    if is_gemma3(cfg):
        n.append("model.layers.1.post_feedforward_layernorm.weight")
    if not cfg["tie_word_embeddings"]:
        n.append("lm_head.weight")
    return n


def semantics(case, cfg):
    """Human-readable per-case notes stored in fixture.json."""
    d, H, KV, D, I, L, V = dims(cfg)
    info = {"model_type": cfg["model_type"], "head_dim": D}
    if is_gpt2(cfg):
        info.update({
            "positions": "learned absolute: h0 = wte[ids] + wpe[0..T-1]",
            "linear_layout": "Conv1D: weight [in, out], y = x @ W + b; c_attn output split as [q | k | v] along the last dim",
            "attention_scale": "1/sqrt(head_dim)", "activation": "gelu_new (tanh approximation)",
            "lm_head": "tied to transformer.wte.weight (not stored)"})
        return info
    info["attention_scale"] = ("query_pre_attn_scalar**-0.5" if is_gemma3(cfg) else "head_dim**-0.5")
    layers = []
    for li in range(L):
        base, rs = rope_params(cfg, li)
        layers.append({"layer_type": layer_type(cfg, li), "window": layer_window(cfg, li),
                       "rope_base": base, "rope_scaling": rs,
                       "inv_freq": rope_inv_freq(cfg, li, T).tolist()})
    info["layers"] = layers
    info["mask"] = "causal: key j visible to query i iff j <= i; sliding layers also need j > i - sliding_window"
    if cfg.get("rope_scaling") and cfg["rope_scaling"].get("rope_type") == "dynamic":
        rs = cfg["rope_scaling"]
        mpe = cfg["max_position_embeddings"]
        info["dynamic_rope"] = {
            "seq_len": T, "rule": "base' = rope_theta * (factor*max(seq_len, mpe)/mpe - (factor-1)) ** (D/(D-2))",
            "base_effective": cfg["rope_theta"] * ((rs["factor"] * max(T, mpe) / mpe) - (rs["factor"] - 1)) ** (D / (D - 2))}
    if cfg.get("rope_scaling") and cfg["rope_scaling"].get("rope_type") == "llama3":
        info["llama3_bands"] = llama3_bands(cfg)
    if is_gemma3(cfg):
        info["embed_scale"] = embed_scale(cfg)
        info["embed_scale_note"] = "float32(sqrt(hidden_size)) (HF casts the normalizer to the weight dtype)"
        info["norms"] = "all RMSNorms (incl. q_norm/k_norm) are x*rsqrt(mean(x^2)+eps)*(1+w)"
    if has_qk_norm(cfg) and not is_gemma3(cfg):
        info["norms"] = "q_norm/k_norm: RMSNorm over head_dim per head (weight w, not 1+w), before RoPE"
    return info


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------

def generate(case, cfg, seed):
    out_dir = os.path.join(FIXTURES, case)
    os.makedirs(out_dir, exist_ok=True)
    print(f"== {case}")
    d, H, KV, D, I, L, V = dims(cfg)
    params = init_params(cfg, seed)
    input_ids, targets = mf.make_batch(cfg, seed)

    leaf = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    logits, hidden, hnorm = forward(cfg, leaf, input_ids)
    loss = mf.loss_fn(logits, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in leaf.items()}
    print(f"   loss = {loss.item():.6f}   (ln V = {math.log(V):.4f})")

    # --- self checks
    if cfg.get("rope_scaling") and cfg["rope_scaling"].get("rope_type") == "llama3":
        bands = llama3_bands(cfg)
        print("   llama3 bands:", bands)
        assert {"high", "low", "smoothed"} <= set(bands), bands
    if cfg.get("rope_scaling") and cfg["rope_scaling"].get("rope_type") == "dynamic":
        assert T > cfg["max_position_embeddings"]
    for li in range(L):
        vec = rope_inv_freq(cfg, li, T) if not is_gpt2(cfg) else None
        if vec is not None:
            sc = torch.tensor([scalar_inv_freq(cfg, li, T, i) for i in range(D // 2)])
            assert (vec - sc).abs().max().item() < 1e-15, (vec, sc)
    worst, nonuni = 0.0, 1.0
    heads = sorted({0, H // 2, H - 1})
    for li in range(L):
        for hd in heads:
            for b in range(B):
                err, nu = naive_head_attention(cfg, params, input_ids, li, b, hd)
                worst, nonuni = max(worst, err), min(nonuni, nu)
    print(f"   naive attention (all layers, heads {heads}, both rows) max abs err: {worst:.3e}; "
          f"min over heads of max |p - 1/n|: {nonuni:.3f}")
    assert worst < 1e-12, "attention self-check failed"
    assert nonuni > 0.05, "attention is (nearly) uniform: raise INIT_STD"
    x = torch.linspace(-4, 4, 101)
    assert (mf.gelu_tanh(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs().max().item() < 1e-14
    if is_gpt2(cfg):
        xx = torch.randn(3, d, generator=torch.Generator().manual_seed(5))
        w, bb = params["transformer.ln_f.weight"], params["transformer.ln_f.bias"]
        ref = torch.nn.functional.layer_norm(xx, (d,), w, bb, cfg["layer_norm_epsilon"])
        assert (layer_norm(xx, w, bb, cfg["layer_norm_epsilon"]) - ref).abs().max().item() < 1e-14
    work = {n: p.clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(seed + 7)
    fd_worst = 0.0
    specs = param_specs(cfg)
    for name in fd_names(cfg):
        shp = specs[name][0]
        idxs = [tuple(int(torch.randint(0, s, (1,), generator=g)) for s in shp) for _ in range(3)]
        if name.endswith("wte.weight") or name == "model.embed_tokens.weight":
            idxs[0] = (int(input_ids[0, 0]), 0)
        e = mf.finite_diff_check(lambda: loss_of(cfg, work, input_ids, targets), work, grads, name, idxs, h=FD_STEP)
        fd_worst = max(fd_worst, e)
        print(f"   finite-diff rel err {name}: {e:.3e}")
    assert fd_worst < 1e-6, "finite-difference check failed"

    # --- AdamW trajectory with clipping (identical to make_fixtures.py)
    opt_params = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    names = sorted(opt_params)
    opt = torch.optim.AdamW([opt_params[n] for n in names], lr=mf.ADAMW["lr"], betas=mf.ADAMW["betas"],
                            eps=mf.ADAMW["eps"], weight_decay=mf.ADAMW["weight_decay"])
    adamw_losses, grad_norms = [], []
    for _ in range(mf.ADAMW_STEPS):
        opt.zero_grad()
        l_ = loss_of(cfg, opt_params, input_ids, targets)
        adamw_losses.append(l_.item())
        l_.backward()
        gn = torch.nn.utils.clip_grad_norm_([opt_params[n] for n in names], mf.CLIP_NORM)
        grad_norms.append(float(gn))
        opt.step()
    print("   adamw losses:", " ".join(f"{v:.4f}" for v in adamw_losses))
    print("   pre-clip grad norms:", " ".join(f"{v:.3f}" for v in grad_norms))

    # --- write
    mf.write_config(out_dir, cfg)
    mf.write_safetensors(os.path.join(out_dir, "model.safetensors"), {n: mf.f32(p) for n, p in params.items()})
    exp = {
        "input_ids": mf.i32(input_ids),
        "targets": mf.i32(targets),
        "logits": mf.f32(logits),
        "loss": mf.f32(loss.reshape(1)),
        "adamw_losses": mf.f32(torch.tensor(adamw_losses)),
        "hidden.norm": mf.f32(hnorm),
    }
    for li, hl in enumerate(hidden):
        exp[f"hidden.{li}"] = mf.f32(hl)
    for n, gr in grads.items():
        exp["grad." + n] = mf.f32(gr)
    mf.write_safetensors(os.path.join(out_dir, "expected.safetensors"), exp)
    meta = {
        "family": case,
        "B": B, "T": T, "seed": seed,
        "init": {"matrix_std": INIT_STD, "bias_std": BIAS_STD,
                 "norm_weight": (f"{GEMMA_NORM_STD}*normal (gemma3, applied as 1+w)" if is_gemma3(cfg)
                                 else "1 + 0.1*normal"),
                 "layernorm_bias": f"{BIAS_STD}*normal" if is_gpt2(cfg) else None},
        "compute_dtype": "float64 (stored as float32; weights are float32-rounded before compute)",
        "loss": "mean cross-entropy over positions with targets != -100; targets already shifted",
        "ignore_index": mf.IGNORE_INDEX,
        "adamw": {"lr": mf.ADAMW["lr"], "beta1": mf.ADAMW["betas"][0], "beta2": mf.ADAMW["betas"][1],
                  "eps": mf.ADAMW["eps"], "weight_decay": mf.ADAMW["weight_decay"], "steps": mf.ADAMW_STEPS,
                  "weight_decay_applies_to": "all parameters (norms, biases and embeddings included)",
                  "impl": "torch.optim.AdamW (decoupled: p *= 1 - lr*wd; bias-corrected Adam)"},
        "clip_grad_norm": {"max_norm": mf.CLIP_NORM, "norm_type": 2,
                           "impl": "torch.nn.utils.clip_grad_norm_: coef = min(1, max_norm/(total_norm+1e-6))"},
        "adamw_pre_clip_grad_norms": grad_norms,
        "hidden": "hidden.<l> = residual stream after layer l (pre final norm); "
                  "hidden.norm = final norm output (HF hidden_states[-1])",
        "semantics": semantics(case, cfg),
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out_dir, "fixture.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    verify_outputs(out_dir, cfg, params, case)


def verify_outputs(out_dir, cfg, params, case):
    d, H, KV, D, I, L, V = dims(cfg)
    specs = param_specs(cfg)
    m, meta = mf.read_safetensors(os.path.join(out_dir, "model.safetensors"))
    assert meta == {"format": "pt"}
    assert sorted(m) == sorted(specs)
    for n, (dt, arr) in m.items():
        assert dt == "F32" and tuple(arr.shape) == specs[n][0], n
        assert np.array_equal(arr.astype(np.float64), params[n].numpy()), n
    e, _ = mf.read_safetensors(os.path.join(out_dir, "expected.safetensors"))
    want = {"input_ids": ("I32", (B, T)), "targets": ("I32", (B, T)),
            "logits": ("F32", (B, T, V)), "loss": ("F32", (1,)),
            "adamw_losses": ("F32", (mf.ADAMW_STEPS,)), "hidden.norm": ("F32", (B, T, d))}
    for li in range(L):
        want[f"hidden.{li}"] = ("F32", (B, T, d))
    for n in specs:
        want["grad." + n] = ("F32", specs[n][0])
    assert sorted(e) == sorted(want), set(e) ^ set(want)
    for n, (dt, shp) in want.items():
        assert e[n][0] == dt and tuple(e[n][1].shape) == shp, (n, e[n][0], e[n][1].shape)
    # recompute the loss and logits from the stored float32 weights
    back = {n: torch.from_numpy(arr.astype(np.float64)) for n, (_, arr) in m.items()}
    ids = torch.from_numpy(e["input_ids"][1].astype(np.int64))
    tg = torch.from_numpy(e["targets"][1].astype(np.int64))
    with torch.no_grad():
        lg = forward(cfg, back, ids)[0]
    assert (lg - torch.from_numpy(e["logits"][1].astype(np.float64))).abs().max().item() < 1e-5
    lg32 = torch.from_numpy(e["logits"][1].astype(np.float64))
    assert abs(mf.loss_fn(lg32, tg).item() - float(e["loss"][1][0])) < 1e-5
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f) == json.loads(json.dumps(cfg))
    with open(os.path.join(out_dir, "fixture.json")) as f:
        assert json.load(f)["family"] == case
    size = sum(os.path.getsize(os.path.join(out_dir, x)) for x in os.listdir(out_dir))
    assert size < 150_000, size
    print(f"   re-read OK: {out_dir} ({size} bytes)")


def cross_check_llama():
    """This script's generic decoder on make_fixtures.py's plain llama config and weights must
    reproduce make_fixtures.py's own forward (same logits / hidden states)."""
    cfg = mf.LLAMA_CONFIG
    params = mf.init_params(cfg, SEED)
    assert sorted(params) == sorted(param_specs(cfg))
    ids, _ = mf.make_batch(cfg, SEED)
    with torch.no_grad():
        a, ha, na = forward(cfg, params, ids)
        b, hb, nb = mf.forward(cfg, params, ids, return_hidden=True)
    err = max((a - b).abs().max().item(), (na - nb).abs().max().item(),
              max((x - y).abs().max().item() for x, y in zip(ha, hb)))
    print(f"== cross-check vs make_fixtures.forward (llama): max abs diff {err:.3e}")
    assert err < 1e-12, err


def main(argv):
    want = set(argv)
    unknown = want - {c for c, _, _ in CASES}
    assert not unknown, f"unknown case(s): {sorted(unknown)}"
    torch.manual_seed(SEED)
    cross_check_llama()
    for case, cfg, seed in CASES:
        if not want or case in want:
            generate(case, cfg, seed)
    for case, _, _ in CASES:
        dd = os.path.join(FIXTURES, case)
        if os.path.isdir(dd):
            for fn in sorted(os.listdir(dd)):
                p = os.path.join(dd, fn)
                print(f"{case + '/' + fn:40s} {os.path.getsize(p):8d}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
