"""PyTorch eager side of bench/real_size.ts: the same decoder (Llama / SmolLM2, or Qwen2 with q/k/v biases),
tied embeddings, random weights, B x T random ids, fp32. Modes:
  forward: teacher forward under no_grad: logits [B*T, V] and the mean cross-entropy (eager materialises them)
  train:   one training step: forward, cross-entropy, backward, grad-norm clip, AdamW
Prints one JSON line: {tokens_per_sec, sec_per_step, peak_rss_bytes, loss}."""
import json
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(0)
c = a["config"]
V, d, L, H, KV, hd, FF = c["vocabSize"], c["hiddenSize"], c["numLayers"], c["numHeads"], c["numKvHeads"], c["headDim"], c["intermediateSize"]
B, T, eps, theta = a["B"], a["T"], c["rmsNormEps"], c["ropeTheta"]
bias = bool(a.get("bias"))


class RMSNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.w


def rot_half(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)


inv = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
ang = torch.arange(T).float()[:, None] * inv[None, :]
emb = torch.cat([ang, ang], -1)
COS, SIN = emb.cos(), emb.sin()
MASK = torch.full((T, T), float("-inf")).triu(1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, H * hd, bias=bias)
        self.k = nn.Linear(d, KV * hd, bias=bias)
        self.v = nn.Linear(d, KV * hd, bias=bias)
        self.o = nn.Linear(H * hd, d, bias=False)
        self.g = nn.Linear(d, FF, bias=False)
        self.u = nn.Linear(d, FF, bias=False)
        self.dn = nn.Linear(FF, d, bias=False)

    def forward(self, x):
        h = self.n1(x)
        q = self.q(h).view(B, T, H, hd).transpose(1, 2)
        k = self.k(h).view(B, T, KV, hd).transpose(1, 2)
        v = self.v(h).view(B, T, KV, hd).transpose(1, 2)
        q = q * COS + rot_half(q) * SIN
        k = k * COS + rot_half(k) * SIN
        k = k.repeat_interleave(H // KV, 1)
        v = v.repeat_interleave(H // KV, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + MASK
        o = torch.softmax(s, -1) @ v
        x = x + self.o(o.transpose(1, 2).reshape(B, T, H * hd))
        h = self.n2(x)
        return x + self.dn(F.silu(self.g(h)) * self.u(h))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.ModuleList([Block() for _ in range(L)])
        self.norm = RMSNorm(d)

    def forward(self, ids, tgt):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        z = self.norm(x).reshape(B * T, d) @ self.emb.weight.t()  # tied head
        return F.cross_entropy(z, tgt.reshape(-1))


net = Net()
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, V, (B, T), generator=g)
tgt = torch.randint(0, V, (B, T), generator=g)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)


def step():
    if a["mode"] == "forward":
        with torch.no_grad():
            return net(ids, tgt).item()
    opt.zero_grad(set_to_none=True)
    loss = net(ids, tgt)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return loss.item()


for _ in range(a["warmup"]):
    step()
times = []
for _ in range(a["steps"]):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
times.sort()
sec = times[len(times) // 2]
print(json.dumps({"tokens_per_sec": B * T / sec, "sec_per_step": sec, "loss": loss,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "torch": torch.__version__}))
