"""PyTorch eager reference for the training-step benchmark (bench/train_step.ts runs it when python3 with torch
is present). Same Llama architecture as undo-native's `small` preset; prints JSON {tokens_per_sec, ms_per_step}."""
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
c = args["config"]
V, d, L, H, KV, hd, FF = c["vocabSize"], c["hiddenSize"], c["numLayers"], c["numHeads"], c["numKvHeads"], c["headDim"], c["intermediateSize"]
B, T = args["B"], args["T"]


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rope_tables(T, hd, theta):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(T).float()[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], -1)
    return emb.cos(), emb.sin()


def rot_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1 = RMSNorm(d, c["rmsNormEps"])
        self.q = nn.Linear(d, H * hd, bias=False)
        self.k = nn.Linear(d, KV * hd, bias=False)
        self.v = nn.Linear(d, KV * hd, bias=False)
        self.o = nn.Linear(H * hd, d, bias=False)
        self.n2 = RMSNorm(d, c["rmsNormEps"])
        self.g = nn.Linear(d, FF, bias=False)
        self.u = nn.Linear(d, FF, bias=False)
        self.dn = nn.Linear(FF, d, bias=False)

    def forward(self, x, cos, sin, mask):
        h = self.n1(x)
        q = self.q(h).view(B, T, H, hd).transpose(1, 2)
        k = self.k(h).view(B, T, KV, hd).transpose(1, 2)
        v = self.v(h).view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        k = k.repeat_interleave(H // KV, 1)
        v = v.repeat_interleave(H // KV, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
        a = torch.softmax(s, -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, H * hd))
        h = self.n2(x)
        return x + self.dn(F.silu(self.g(h)) * self.u(h))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.blocks = nn.ModuleList([Block() for _ in range(L)])
        self.norm = RMSNorm(d, c["rmsNormEps"])

    def forward(self, ids, tgt, cos, sin, mask):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x, cos, sin, mask)
        logits = self.norm(x) @ self.emb.weight.t()
        return F.cross_entropy(logits.view(-1, V), tgt.view(-1))


net = Net()
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
cos, sin = rope_tables(T, hd, c["ropeTheta"])
mask = torch.full((T, T), float("-inf")).triu(1)
ids = torch.randint(0, V, (B, T))
tgt = torch.randint(0, V, (B, T))


def step():
    opt.zero_grad(set_to_none=True)
    loss = net(ids, tgt, cos, sin, mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()


for _ in range(args["warmup"]):
    step()
t0 = time.perf_counter()
for _ in range(args["steps"]):
    step()
dt = (time.perf_counter() - t0) / args["steps"]
print(json.dumps({"ms_per_step": dt * 1e3, "tokens_per_sec": B * T / dt, "torch": torch.__version__}))
