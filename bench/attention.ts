/**
 * Causal attention benchmark: our flash kernel (native/cpu/attention.cc) against PyTorch eager
 * matmul → mask → softmax → matmul with autograd, run in a child /usr/bin/python3 in the same run with
 * torch.set_num_threads equal to our thread count. Shapes: B=2, 8 heads, head_dim 64, T = 256 and 1024.
 *
 * Memory: our kernel never allocates anything T×T; its scratch is the packed K/V (and Q/dO/dQ in the
 * backward) panels, O(T·D), plus O(tile²) per thread. We report that scratch (computed from the tile sizes
 * in attention.cc) and the growth of the peak RSS measured in a fresh Node process around one
 * forward + backward; for PyTorch the size of one B×H×T×T fp32 matrix and the measured growth of its peak
 * RSS during forward + backward.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/attention.js
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { AttnDims, native } from '../lib/core/native';
import { median, randomArray } from './common';

const PYTHON = '/usr/bin/python3';
const MiB = 1024 * 1024;

// Mirrors the tile constants of native/cpu/attention.cc (AT_BR_F, AT_BC_F, AT_BR_B, AT_BC_B).
const BR_F = 64, BC_F = 128, BR_B = 64, BC_B = 64;

function vecLanes(isa: string): number {
  return isa === 'avx512' ? 16 : isa === 'avx2' ? 8 : 4;
}
const roundUp = (x: number, m: number) => Math.ceil(x / m) * m;

/** Bytes of scratch attention.cc allocates for a forward / backward call (training shapes, Tq = Tk = T). */
function kernelScratchBytes(B: number, T: number, Hq: number, Hkv: number, D: number, threads: number, isa: string) {
  const Dp = roundUp(D, vecLanes(isa));
  const direct = D === Dp; // V / Q / dO / K rows read in place, dQ split 0 accumulated in dq
  const TkpF = roundUp(T, BC_F), TkpB = roundUp(T, BC_B);
  const forward = 4 * (B * Hkv * (D * TkpF + (direct ? 0 : TkpF * Dp)) + threads * (BR_F * BC_F + BR_F * Dp));
  // dQ partials: one per key-range split (less split 0 when direct); one split when B·Hkv is a multiple of
  // the thread count or at least 4× it
  const groups = B * Hkv, nkt = Math.ceil(T / BC_B);
  const nsplit = groups % threads !== 0 && groups < 4 * threads ? Math.min(nkt, Math.ceil((4 * threads) / groups)) : 1;
  const npart = direct ? nsplit - 1 : nsplit;
  const backward = 4 * (B * Hq * T * Dp * ((direct ? 0 : 2) + npart) + roundUp(B * Hq * T, 16) +
    B * Hkv * (2 * D * TkpB + (direct ? 0 : TkpB * Dp)) + threads * (2 * BR_B * BC_B + 2 * BC_B * Dp));
  return { forward, backward };
}

interface Timing { forwardMs: number; forwardBackwardMs: number; forwardMinMs: number; forwardBackwardMinMs: number; reps: number }

function timeOurs(B: number, T: number, H: number, D: number, reps: number): Timing {
  const n = B * T * H * D;
  const q = randomArray(n, 1), k = randomArray(n, 2), v = randomArray(n, 3), dout = randomArray(n, 4);
  const out = new Float32Array(n), lse = new Float32Array(B * H * T);
  const dq = new Float32Array(n), dk = new Float32Array(n), dv = new Float32Array(n);
  const d: AttnDims = { B, Tq: T, Tk: T, Hq: H, Hkv: H, D, scale: 1 / Math.sqrt(D) };
  const fwd: number[] = [], fb: number[] = [];
  for (let r = 0; r <= reps; r++) {
    const t0 = process.hrtime.bigint();
    native.attentionForwardSync(d, q, k, v, out, lse);
    const t1 = process.hrtime.bigint();
    native.attentionBackwardSync(d, q, k, v, out, dout, lse, dq, dk, dv);
    const t2 = process.hrtime.bigint();
    if (r === 0) continue; // warm-up
    fwd.push(Number(t1 - t0) / 1e6);
    fb.push(Number(t2 - t0) / 1e6);
  }
  return { forwardMs: median(fwd), forwardBackwardMs: median(fb), forwardMinMs: Math.min(...fwd), forwardBackwardMinMs: Math.min(...fb), reps };
}

/** Peak-RSS growth (bytes) of a fresh Node process around one forward + backward at this shape. */
function measureOurPeakRss(B: number, T: number, H: number, D: number, threads: number, isa: string): number | null {
  const nativePath = path.join(__dirname, '..', 'lib', 'core', 'native');
  const script = `
    const { native } = require(${JSON.stringify(nativePath)});
    native.setThreads(${threads}); native.setIsa(${JSON.stringify(isa)});
    const [B, T, H, D] = [${B}, ${T}, ${H}, ${D}], n = B * T * H * D;
    const mk = (m) => { const a = new Float32Array(m); for (let i = 0; i < m; i++) a[i] = Math.sin(i * 0.37 + m); return a; };
    const q = mk(n), k = mk(n), v = mk(n), g = mk(n), out = mk(n), lse = mk(B * H * T), dq = mk(n), dk = mk(n), dv = mk(n);
    const tiny = { B: 1, Tq: 130, Tk: 130, Hq: 1, Hkv: 1, D };  // start the OpenMP threads first
    const tq = mk(130 * D), to = mk(130 * D), tl = mk(130);
    native.attentionForwardSync(tiny, tq, tq, tq, to, tl);
    native.attentionBackwardSync(tiny, tq, tq, tq, to, tq, tl, mk(130 * D), mk(130 * D), mk(130 * D));
    const d = { B, Tq: T, Tk: T, Hq: H, Hkv: H, D };
    const before = process.resourceUsage().maxRSS;
    native.attentionForwardSync(d, q, k, v, out, lse);
    native.attentionBackwardSync(d, q, k, v, out, g, lse, dq, dk, dv);
    const after = process.resourceUsage().maxRSS;
    process.stdout.write(JSON.stringify({ kib: after - before }));`;
  // The kernel reads peak RSS lazily (per-thread / per-CPU RSS counters), so one run can under-report:
  // take the largest of three fresh processes.
  let best: number | null = null;
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) continue;
    try {
      const bytes = JSON.parse(r.stdout).kib * 1024;
      best = best === null ? bytes : Math.max(best, bytes);
    } catch {
      // ignore a garbled run
    }
  }
  return best;
}

const TORCH_SCRIPT = String.raw`
import json, sys, time, resource
try:
    import torch
except Exception as e:
    print(json.dumps({"error": "torch unavailable: %s" % e})); sys.exit(0)
threads, shapes = int(sys.argv[1]), json.loads(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
blas = []
try:
    with open("/proc/self/maps") as f:
        blas = sorted({l.split()[-1] for l in f if "blas" in l.lower() or "mkl" in l.lower()})
except Exception:
    pass
res = {"version": torch.__version__, "threads": torch.get_num_threads(), "blas": blas, "runs": []}
for (B, T, H, D, reps) in shapes:
    q = torch.randn(B, H, T, D, requires_grad=True)
    k = torch.randn(B, H, T, D, requires_grad=True)
    v = torch.randn(B, H, T, D, requires_grad=True)
    g = torch.randn(B, H, T, D)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    scale = D ** -0.5
    def f():
        s = (q @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    o = f(); o.backward(g)  # warm-up (also the peak-RSS measurement)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fw, fb = [], []
    with torch.no_grad():
        f()  # warm the inference path too
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            fw.append((time.perf_counter() - t0) * 1e3)
    for _ in range(reps):
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
        o = f(); o.backward(g)
        fb.append((time.perf_counter() - t0) * 1e3)
    fw.sort(); fb.sort()
    res["runs"].append({"T": T, "forwardMs": fw[len(fw) // 2], "forwardBackwardMs": fb[len(fb) // 2],
                        "forwardMinMs": fw[0], "forwardBackwardMinMs": fb[0],
                        "reps": reps, "peakRssGrowthBytes": (rss1 - rss0) * 1024})
print(json.dumps(res))
`;

interface TorchRun extends Timing { T: number; peakRssGrowthBytes: number }

function runTorch(threads: number, shapes: [number, number, number, number, number][]):
  { version?: string; threads?: number; blas?: string[]; runs?: TorchRun[]; error?: string } {
  const r = spawnSync(PYTHON, ['-c', TORCH_SCRIPT, String(threads), JSON.stringify(shapes)], {
    encoding: 'utf8', timeout: 120_000,
    env: { ...process.env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) },
  });
  if (r.error) return { error: `${PYTHON}: ${r.error.message}` };
  const line = (r.stdout || '').trim().split('\n').pop() || '';
  try {
    return JSON.parse(line);
  } catch {
    return { error: `python exited ${r.status}: ${(r.stderr || '').trim().slice(-500)}` };
  }
}

const round = (x: number, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const timingJson = (t: Timing) => ({
  forwardMs: round(t.forwardMs), forwardBackwardMs: round(t.forwardBackwardMs),
  forwardMinMs: round(t.forwardMinMs), forwardBackwardMinMs: round(t.forwardBackwardMinMs), reps: t.reps,
});

export async function benchAttention(): Promise<object> {
  const threads = native.getThreads();
  const isa = native.getIsa();
  const B = 2, H = 8, D = 64;
  const plan: [number, number][] = [[256, 20], [1024, 5]]; // T, reps (ours)
  const torchReps: Record<number, number> = { 256: 10, 1024: 3 };
  const torch = runTorch(threads, plan.map(([T]) => [B, T, H, D, torchReps[T]]));
  const results = plan.map(([T, reps]) => {
    const ours = timeOurs(B, T, H, D, reps);
    const tr = torch.runs?.find((x) => x.T === T);
    const scratch = kernelScratchBytes(B, T, H, H, D, threads, isa);
    const ttBytes = B * H * T * T * 4;
    const measured = measureOurPeakRss(B, T, H, D, threads, isa);
    return {
      shape: { B, T, H, D, causal: true },
      ours: timingJson(ours),
      torch: tr ? timingJson(tr) : null,
      // PyTorch time / our time (medians; "...Min" from the fastest repetitions)
      speedup: tr ? {
        forward: round(tr.forwardMs / ours.forwardMs),
        forwardBackward: round(tr.forwardBackwardMs / ours.forwardBackwardMs),
        forwardMin: round(tr.forwardMinMs / ours.forwardMinMs),
        forwardBackwardMin: round(tr.forwardBackwardMinMs / ours.forwardBackwardMinMs),
      } : null,
      memory: {
        oursScratchForwardMiB: round(scratch.forward / MiB),
        oursScratchBackwardMiB: round(scratch.backward / MiB),
        oursPeakRssGrowthMiB: measured === null ? null : round(measured / MiB),
        torchOneTxTMatrixMiB: round(ttBytes / MiB),
        torchPeakRssGrowthMiB: tr ? round(tr.peakRssGrowthBytes / MiB) : null,
      },
    };
  });
  return {
    name: 'attention',
    kernel: 'causal flash attention (native/cpu/attention.cc)',
    baseline: 'PyTorch eager: q@kᵀ·scale, masked_fill, softmax, @v, autograd backward',
    isa,
    threads,
    torch: torch.error ? { error: torch.error } : { version: torch.version, threads: torch.threads, blas: torch.blas },
    tiles: { forward: `${BR_F}x${BC_F}`, backward: `${BR_B}x${BC_B}` },
    results,
    targetMet: results.every((r) => r.speedup === null || r.shape.T !== 1024 || r.speedup.forwardBackward >= 1.5),
  };
}

if (require.main === module) {
  benchAttention().then((r) => console.log(JSON.stringify(r, null, 2)), (e) => {
    console.error(e);
    process.exit(1);
  });
}
