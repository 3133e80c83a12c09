#!/usr/bin/python3
"""PyTorch oracle fixtures for undo-native.

Plain-PyTorch (float64) re-implementation of Hugging Face LlamaForCausalLM and
Gemma2ForCausalLM (eager attention), used to generate small reference fixtures
under test/fixtures/<family>/.  No transformers / safetensors dependency: the
safetensors format is written and read by hand.

Run:  /usr/bin/python3 test/reference/make_fixtures.py
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))

B, T = 2, 9
SEED = 1234
INIT_STD = 0.2
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ADAMW_STEPS = 10
CLIP_NORM = 1.0
IGNORE_INDEX = -100

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "head_dim": 12,
    "hidden_act": "silu",
    "hidden_size": 36,
    "initializer_range": 0.02,
    "intermediate_size": 50,
    "max_position_embeddings": 64,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "num_key_value_heads": 1,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 67,
}

GEMMA2_CONFIG = {
    "architectures": ["Gemma2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 5.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "cache_implementation": "hybrid",
    "final_logit_softcapping": 3.0,
    "head_dim": 10,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 40,
    "initializer_range": 0.02,
    "intermediate_size": 46,
    "max_position_embeddings": 64,
    "model_type": "gemma2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "query_pre_attn_scalar": 24,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "sliding_window": 4,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 61,
}


# --------------------------------------------------------------------------
# safetensors (hand-written)
# --------------------------------------------------------------------------

_NP_DTYPE = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "BF16": "<u2"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> (dtype_str, numpy array).  BF16 arrays are uint16 bit patterns."""
    names = sorted(tensors)
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs = []
    off = 0
    for n in names:
        dt, arr = tensors[n]
        arr = np.ascontiguousarray(arr)
        raw = arr.astype(_NP_DTYPE[dt], copy=False).tobytes()
        header[n] = {"dtype": dt, "shape": [int(s) for s in arr.shape],
                     "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    """Returns (dict name -> (dtype_str, numpy array), metadata); validates layout strictly."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    assert hlen % 8 == 0, "header not 8-aligned"
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    body = data[8 + hlen:]
    meta = header.pop("__metadata__", None)
    out = {}
    expect_off = 0
    for n in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
        e = header[n]
        b, en = e["data_offsets"]
        assert b == expect_off, f"{n}: non-contiguous offsets"
        dt = np.dtype(_NP_DTYPE[e["dtype"]])
        count = int(np.prod(e["shape"])) if e["shape"] else 1
        assert en - b == count * dt.itemsize, f"{n}: size mismatch"
        out[n] = (e["dtype"], np.frombuffer(body[b:en], dtype=dt).reshape(e["shape"]))
        expect_off = en
    assert expect_off == len(body), "trailing bytes"
    assert list(sorted(header)) == [n for n in sorted(header, key=lambda k: header[k]["data_offsets"][0])], \
        "tensors not stored in sorted name order"
    return out, meta


def bf16_bits(t):
    """float tensor -> (bf16-rounded float64 tensor, uint16 bit pattern numpy)."""
    tb = t.detach().to(torch.float32).to(torch.bfloat16)
    bits = tb.view(torch.int16).numpy().view(np.uint16).copy()
    return tb.to(torch.float64), bits


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def param_names(cfg):
    gemma = cfg["model_type"] == "gemma2"
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        if gemma:
            names += [p + "pre_feedforward_layernorm.weight", p + "post_feedforward_layernorm.weight"]
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
    if not cfg["tie_word_embeddings"]:
        names.append("lm_head.weight")
    return sorted(names)


def param_shape(cfg, name):
    d, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        return (d,)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (V, d)
    last = name.split(".")[-2]
    return {"q_proj": (H * D, d), "k_proj": (KV * D, d), "v_proj": (KV * D, d),
            "o_proj": (d, H * D), "gate_proj": (I, d), "up_proj": (I, d),
            "down_proj": (d, I)}[last]


def init_params(cfg, seed):
    """Seeded init; values are rounded to float32 (what is stored) and held as float64."""
    g = torch.Generator().manual_seed(seed)
    gemma = cfg["model_type"] == "gemma2"
    params = {}
    for n in param_names(cfg):
        shp = param_shape(cfg, n)
        z = torch.randn(shp, generator=g, dtype=torch.float64)
        if len(shp) == 1:
            w = 0.1 * z if gemma else 1.0 + 0.1 * z
        else:
            w = INIT_STD * z
        params[n] = w.to(torch.float32).to(torch.float64)
    return params


def rms_norm(x, w, eps, gemma):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y * (1.0 + w) if gemma else y * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(T_, D, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    pos = torch.arange(T_, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)            # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)       # [T, D]
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    # x: [B, H, T, D]
    return x * cos + rotate_half(x) * sin


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def attention_core(q, k, v, scale, softcap=None, window=None):
    """q: [B,H,T,D], k/v: [B,KV,T,D] (already roped). Returns [B,H,T,D]."""
    H, KV = q.shape[1], k.shape[1]
    rep = H // KV
    k = k.repeat_interleave(rep, dim=1)   # head h uses kv head h // rep (HF repeat_kv)
    v = v.repeat_interleave(rep, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    Tq = q.shape[2]
    i = torch.arange(Tq).view(-1, 1)
    j = torch.arange(Tq).view(1, -1)
    visible = j <= i
    if window is not None:
        visible = visible & ((i - j) < window)
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v)


def layer_attn_params(cfg, layer_idx):
    """(scale, softcap, window) for a layer."""
    if cfg["model_type"] == "gemma2":
        scale = cfg["query_pre_attn_scalar"] ** -0.5
        softcap = cfg.get("attn_logit_softcapping")
        window = cfg["sliding_window"] if layer_idx % 2 == 0 else None
        return scale, softcap, window
    return cfg["head_dim"] ** -0.5, None, None


def forward(cfg, params, input_ids, return_hidden=False):
    gemma = cfg["model_type"] == "gemma2"
    d, H, KV, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    Bn, Tn = input_ids.shape
    emb = params["model.embed_tokens.weight"]
    h = emb[input_ids]
    if gemma:
        h = h * (d ** 0.5)
    cos, sin = rope_cos_sin(Tn, D, cfg["rope_theta"])
    hidden = []
    for li in range(cfg["num_hidden_layers"]):
        p = lambda n: params[f"model.layers.{li}.{n}"]
        x = rms_norm(h, p("input_layernorm.weight"), eps, gemma)
        q = (x @ p("self_attn.q_proj.weight").T).view(Bn, Tn, H, D).transpose(1, 2)
        k = (x @ p("self_attn.k_proj.weight").T).view(Bn, Tn, KV, D).transpose(1, 2)
        v = (x @ p("self_attn.v_proj.weight").T).view(Bn, Tn, KV, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scale, softcap, window = layer_attn_params(cfg, li)
        a = attention_core(q, k, v, scale, softcap, window)
        a = a.transpose(1, 2).reshape(Bn, Tn, H * D) @ p("self_attn.o_proj.weight").T
        if gemma:
            a = rms_norm(a, p("post_attention_layernorm.weight"), eps, True)
            h = h + a
            x = rms_norm(h, p("pre_feedforward_layernorm.weight"), eps, True)
            m = (gelu_tanh(x @ p("mlp.gate_proj.weight").T) * (x @ p("mlp.up_proj.weight").T)) \
                @ p("mlp.down_proj.weight").T
            m = rms_norm(m, p("post_feedforward_layernorm.weight"), eps, True)
            h = h + m
        else:
            h = h + a
            x = rms_norm(h, p("post_attention_layernorm.weight"), eps, False)
            m = (torch.nn.functional.silu(x @ p("mlp.gate_proj.weight").T) * (x @ p("mlp.up_proj.weight").T)) \
                @ p("mlp.down_proj.weight").T
            h = h + m
        hidden.append(h)
    hn = rms_norm(h, params["model.norm.weight"], eps, gemma)
    head = emb if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    logits = hn @ head.T
    if gemma and cfg.get("final_logit_softcapping") is not None:
        c = cfg["final_logit_softcapping"]
        logits = c * torch.tanh(logits / c)
    if return_hidden:
        return logits, hidden, hn
    return logits


def loss_fn(logits, targets):
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="mean")


# --------------------------------------------------------------------------
# Self checks
# --------------------------------------------------------------------------

def naive_head_attention(cfg, params, input_ids, layer_idx, b, head):
    """Scalar-loop attention for one (batch, head) of one layer, from the layer input
    residual stream, with RoPE written out per pair from its definition."""
    gemma = cfg["model_type"] == "gemma2"
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    Tn = input_ids.shape[1]
    with torch.no_grad():
        _, hidden, _ = forward(cfg, params, input_ids, return_hidden=True)
        if layer_idx == 0:
            h = params["model.embed_tokens.weight"][input_ids]
            if gemma:
                h = h * (cfg["hidden_size"] ** 0.5)
        else:
            h = hidden[layer_idx - 1]
        pre = f"model.layers.{layer_idx}."
        x = rms_norm(h, params[pre + "input_layernorm.weight"], cfg["rms_norm_eps"], gemma)[b]
        kvh = head // (H // KV)
        Wq = params[pre + "self_attn.q_proj.weight"][head * D:(head + 1) * D]
        Wk = params[pre + "self_attn.k_proj.weight"][kvh * D:(kvh + 1) * D]
        Wv = params[pre + "self_attn.v_proj.weight"][kvh * D:(kvh + 1) * D]
        q0, k0, v = (x @ Wq.T).tolist(), (x @ Wk.T).tolist(), (x @ Wv.T).tolist()

        def rope(vec, pos):
            out = list(vec)
            half = D // 2
            for i in range(half):
                ang = pos * cfg["rope_theta"] ** (-2.0 * i / D)
                c, s = math.cos(ang), math.sin(ang)
                a, bb = vec[i], vec[i + half]
                out[i] = a * c - bb * s
                out[i + half] = bb * c + a * s
            return out

        q = [rope(q0[t], t) for t in range(Tn)]
        k = [rope(k0[t], t) for t in range(Tn)]
        if gemma:
            scale = cfg["query_pre_attn_scalar"] ** -0.5
            cap = cfg["attn_logit_softcapping"]
            win = cfg["sliding_window"] if layer_idx % 2 == 0 else None
        else:
            scale, cap, win = 1.0 / math.sqrt(D), None, None
        out = []
        for i in range(Tn):
            js = [j for j in range(Tn) if j <= i and (win is None or i - j < win)]
            sc = []
            for j in js:
                s = sum(q[i][e] * k[j][e] for e in range(D)) * scale
                if cap is not None:
                    s = cap * math.tanh(s / cap)
                sc.append(s)
            mx = max(sc)
            ex = [math.exp(s - mx) for s in sc]
            z = sum(ex)
            out.append([sum(ex[n] / z * v[j][e] for n, j in enumerate(js)) for e in range(D)])
        naive = torch.tensor(out)
        # vectorised path
        cos, sin = rope_cos_sin(Tn, D, cfg["rope_theta"])
        Bn = input_ids.shape[0]
        xf = rms_norm(h, params[pre + "input_layernorm.weight"], cfg["rms_norm_eps"], gemma)
        qf = (xf @ params[pre + "self_attn.q_proj.weight"].T).view(Bn, Tn, H, D).transpose(1, 2)
        kf = (xf @ params[pre + "self_attn.k_proj.weight"].T).view(Bn, Tn, KV, D).transpose(1, 2)
        vf = (xf @ params[pre + "self_attn.v_proj.weight"].T).view(Bn, Tn, KV, D).transpose(1, 2)
        sc_, cap_, win_ = layer_attn_params(cfg, layer_idx)
        af = attention_core(apply_rope(qf, cos, sin), apply_rope(kf, cos, sin), vf, sc_, cap_, win_)
        return (af[b, head] - naive).abs().max().item()


def finite_diff_check(loss, params, grads, name, idxs, h=1e-6):
    """Worst relative error of central differences of loss() (a closure over params) against grads[name]."""
    worst = 0.0
    for idx in idxs:
        with torch.no_grad():
            orig = params[name][idx].item()
            params[name][idx] = orig + h
            lp = loss().item()
            params[name][idx] = orig - h
            lm = loss().item()
            params[name][idx] = orig
        fd = (lp - lm) / (2 * h)
        ad = grads[name][idx].item()
        err = abs(fd - ad) / max(1e-8, abs(fd) + abs(ad))
        worst = max(worst, err)
    return worst


# --------------------------------------------------------------------------
# Fixture generation
# --------------------------------------------------------------------------

def make_batch(cfg, seed):
    g = torch.Generator().manual_seed(seed + 1)
    V = cfg["vocab_size"]
    input_ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    # a few ignored positions (incl. the last position of row 0 and one interior)
    targets[0, T - 1] = IGNORE_INDEX
    targets[1, 3] = IGNORE_INDEX
    targets[1, 6] = IGNORE_INDEX
    return input_ids, targets


def f32(t):
    return ("F32", t.detach().to(torch.float32).numpy())


def i32(t):
    return ("I32", t.detach().to(torch.int32).numpy())


def write_config(d, cfg):
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def generate(family, cfg, seed):
    out_dir = os.path.join(FIXTURES, family)
    os.makedirs(out_dir, exist_ok=True)
    print(f"== {family}")
    params = init_params(cfg, seed)
    input_ids, targets = make_batch(cfg, seed)

    # forward + backward
    leaf = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    logits, hidden, hnorm = forward(cfg, leaf, input_ids, return_hidden=True)
    loss = loss_fn(logits, targets)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in leaf.items()}
    print(f"   loss = {loss.item():.6f}   (ln V = {math.log(cfg['vocab_size']):.4f})")

    # self checks
    worst_attn = 0.0
    for li in range(cfg["num_hidden_layers"]):
        for (b, hd) in ((0, 0), (1, cfg["num_attention_heads"] - 1)):
            worst_attn = max(worst_attn, naive_head_attention(cfg, params, input_ids, li, b, hd))
    print(f"   naive attention (all layers, 2 heads) max abs err: {worst_attn:.3e}")
    assert worst_attn < 1e-12, "attention self-check failed"
    x = torch.linspace(-4, 4, 101)
    ge = (gelu_tanh(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs().max().item()
    assert ge < 1e-14, ge
    work = {n: p.clone() for n, p in params.items()}
    fd_worst = 0.0
    g = torch.Generator().manual_seed(seed + 7)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.layers.1.input_layernorm.weight", "model.norm.weight"):
        shp = work[name].shape
        idxs = [tuple(int(torch.randint(0, s, (1,), generator=g)) for s in shp) for _ in range(3)]
        if name == "model.embed_tokens.weight":
            tok = int(input_ids[0, 0])  # make sure one probe hits a used embedding row
            idxs[0] = (tok, 0)
        e = finite_diff_check(lambda: loss_fn(forward(cfg, work, input_ids), targets), work, grads, name, idxs)
        fd_worst = max(fd_worst, e)
        print(f"   finite-diff rel err {name}: {e:.3e}")
    assert fd_worst < 1e-6, "finite-difference check failed"

    # AdamW trajectory with clipping
    opt_params = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    names = sorted(opt_params)
    opt = torch.optim.AdamW([opt_params[n] for n in names], lr=ADAMW["lr"], betas=ADAMW["betas"],
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    adamw_losses = []
    grad_norms = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad()
        l = loss_fn(forward(cfg, opt_params, input_ids), targets)
        adamw_losses.append(l.item())
        l.backward()
        gn = torch.nn.utils.clip_grad_norm_([opt_params[n] for n in names], CLIP_NORM)
        grad_norms.append(float(gn))
        opt.step()
    print("   adamw losses:", " ".join(f"{v:.4f}" for v in adamw_losses))
    print("   pre-clip grad norms:", " ".join(f"{v:.3f}" for v in grad_norms))

    # write
    write_config(out_dir, cfg)
    write_safetensors(os.path.join(out_dir, "model.safetensors"),
                      {n: f32(p) for n, p in params.items()})
    exp = {
        "input_ids": i32(input_ids),
        "targets": i32(targets),
        "logits": f32(logits),
        "loss": f32(loss.reshape(1)),
        "adamw_losses": f32(torch.tensor(adamw_losses)),
        "hidden.norm": f32(hnorm),
    }
    for li, hl in enumerate(hidden):
        exp[f"hidden.{li}"] = f32(hl)
    for n, gr in grads.items():
        exp["grad." + n] = f32(gr)
    write_safetensors(os.path.join(out_dir, "expected.safetensors"), exp)

    fixture_meta = {
        "family": family,
        "B": B, "T": T, "seed": seed,
        "init": {"matrix_std": INIT_STD,
                 "norm_weight": "0.1*normal (gemma2, applied as 1+w)" if family == "gemma2"
                 else "1 + 0.1*normal"},
        "compute_dtype": "float64 (stored as float32; weights are float32-rounded before compute)",
        "loss": "mean cross-entropy over positions with targets != -100; targets already shifted",
        "ignore_index": IGNORE_INDEX,
        "adamw": {"lr": ADAMW["lr"], "beta1": ADAMW["betas"][0], "beta2": ADAMW["betas"][1],
                  "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"],
                  "steps": ADAMW_STEPS,
                  "weight_decay_applies_to": "all parameters (norms and embeddings included)",
                  "impl": "torch.optim.AdamW (decoupled: p *= 1 - lr*wd; bias-corrected Adam)"},
        "clip_grad_norm": {"max_norm": CLIP_NORM, "norm_type": 2,
                           "impl": "torch.nn.utils.clip_grad_norm_: coef = min(1, max_norm/(total_norm+1e-6))"},
        "adamw_pre_clip_grad_norms": grad_norms,
        "hidden": "hidden.<l> = residual stream after layer l (pre final norm); "
                  "hidden.norm = final norm output (HF hidden_states[-1])",
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out_dir, "fixture.json"), "w") as f:
        json.dump(fixture_meta, f, indent=2)
        f.write("\n")

    # bf16 weights variant (llama only)
    if family == "llama":
        bdir = os.path.join(out_dir, "model_bf16")
        os.makedirs(bdir, exist_ok=True)
        bcfg = dict(cfg, torch_dtype="bfloat16")
        write_config(bdir, bcfg)
        rounded, bits = {}, {}
        for n, p in params.items():
            rounded[n], bits[n] = bf16_bits(p)
        write_safetensors(os.path.join(bdir, "model.safetensors"),
                          {n: ("BF16", bits[n]) for n in params})
        with torch.no_grad():
            blog = forward(cfg, rounded, input_ids)
            bloss = loss_fn(blog, targets)
        write_safetensors(os.path.join(bdir, "expected.safetensors"), {
            "input_ids": i32(input_ids), "targets": i32(targets),
            "logits": f32(blog), "loss": f32(bloss.reshape(1))})
        print(f"   bf16 loss = {bloss.item():.6f}  max |logit diff| vs f32 weights = "
              f"{(blog - logits.detach()).abs().max().item():.3e}")
        # re-read check
        back, _ = read_safetensors(os.path.join(bdir, "model.safetensors"))
        for n in params:
            dt, arr = back[n]
            assert dt == "BF16" and tuple(arr.shape) == tuple(params[n].shape)
            recon = (arr.astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(recon.astype(np.float64), rounded[n].numpy())
        be, _ = read_safetensors(os.path.join(bdir, "expected.safetensors"))
        assert be["logits"][1].shape == (B, T, cfg["vocab_size"])

    verify_outputs(out_dir, cfg, params)


def verify_outputs(out_dir, cfg, params):
    V, d, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    m, meta = read_safetensors(os.path.join(out_dir, "model.safetensors"))
    assert meta == {"format": "pt"}
    assert sorted(m) == param_names(cfg)
    for n, (dt, arr) in m.items():
        assert dt == "F32" and tuple(arr.shape) == param_shape(cfg, n), n
        assert np.array_equal(arr.astype(np.float64), params[n].numpy()), n
    e, _ = read_safetensors(os.path.join(out_dir, "expected.safetensors"))
    want = {"input_ids": ("I32", (B, T)), "targets": ("I32", (B, T)),
            "logits": ("F32", (B, T, V)), "loss": ("F32", (1,)),
            "adamw_losses": ("F32", (ADAMW_STEPS,)), "hidden.norm": ("F32", (B, T, d))}
    for li in range(L):
        want[f"hidden.{li}"] = ("F32", (B, T, d))
    for n in param_names(cfg):
        want["grad." + n] = ("F32", param_shape(cfg, n))
    assert sorted(e) == sorted(want), set(e) ^ set(want)
    for n, (dt, shp) in want.items():
        assert e[n][0] == dt and tuple(e[n][1].shape) == shp, (n, e[n][0], e[n][1].shape)
    # recompute loss from stored fp32 logits as a consistency check
    lg = torch.from_numpy(e["logits"][1].astype(np.float64))
    tg = torch.from_numpy(e["targets"][1].astype(np.int64))
    assert abs(loss_fn(lg, tg).item() - float(e["loss"][1][0])) < 1e-5
    print(f"   re-read OK: {out_dir}")


def main():
    torch.manual_seed(SEED)
    generate("llama", LLAMA_CONFIG, SEED)
    generate("gemma2", GEMMA2_CONFIG, SEED + 100)
    for root, _, files in sorted(os.walk(FIXTURES)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"{os.path.relpath(p, FIXTURES):40s} {os.path.getsize(p):8d}")


if __name__ == "__main__":
    sys.exit(main())
