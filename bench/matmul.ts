/**
 * CPU SGEMM benchmark: native.gemm (native/cpu/matmul.cc, the active ISA) at the training shapes against
 * PyTorch on the same thread count, measured by a child /usr/bin/python3 in the same run.
 *
 * Shapes: R = 4096 rows (tokens), d ∈ {256, 512, 1024, 2048}, the three forms a linear layer needs:
 *   nt  y  = x·Wᵀ    gemm(false, true)   M = R, N = d, K = d
 *   nn  dX = dY·W    gemm(false, false)  M = R, N = d, K = d
 *   tn  dW += dYᵀ·X  gemm(true, false)   M = d, N = d, K = R (beta = 1)
 *
 * Ours: one warm-up call, then 3 repeats of enough calls for ~0.3 s each; we report the best and the median
 * repeat. PyTorch: torch.matmul on the same layouts (x @ W.t(), dy @ W, dy.t() @ x) — what the reference
 * training step runs — and, as a stronger reference, oneDNN's inner product (torch.ops.aten.mkldnn_linear)
 * on operands laid out in advance the way it wants them (its JIT kernels; the layout conversion is not
 * timed). Debian's torch links the reference BLAS, so torch.matmul is slow; calls over 1 s are timed once.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/matmul.js
 */
import { spawnSync } from 'child_process';
import { native } from '../lib/core/native';
import { randomArray } from './common';

const PYTHON = '/usr/bin/python3';
const ROWS = 4096;
const DIMS = [256, 512, 1024, 2048];

type Form = 'nt' | 'nn' | 'tn';
const FORMS: Form[] = ['nt', 'nn', 'tn'];
const FORM_DESC: Record<Form, string> = { nt: 'y = x·Wᵀ', nn: 'dX = dY·W', tn: 'dW += dYᵀ·X' };

interface Shape { form: Form; d: number; ta: boolean; tb: boolean; M: number; N: number; K: number }

function shapeOf(form: Form, d: number): Shape {
  if (form === 'nt') return { form, d, ta: false, tb: true, M: ROWS, N: d, K: d };
  if (form === 'nn') return { form, d, ta: false, tb: false, M: ROWS, N: d, K: d };
  return { form, d, ta: true, tb: false, M: d, N: d, K: ROWS };
}


const nowS = () => Number(process.hrtime.bigint()) / 1e9;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const round1 = (x: number) => Math.round(x * 10) / 10;

interface OurTiming { gflops: number; medianGflops: number; msPerCall: number; callsPerRepeat: number }

function timeOurs(s: Shape, repeatS = 0.3, repeats = 3): OurTiming {
  const A = randomArray(s.M * s.K, 1), B = randomArray(s.K * s.N, 2), C = new Float32Array(s.M * s.N);
  const lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N, beta = s.ta ? 1 : 0;
  const call = () => native.gemmSync(s.ta, s.tb, s.M, s.N, s.K, 1, A, lda, B, ldb, beta, C, s.N);
  call();
  let t0 = nowS();
  call();
  const one = Math.max(nowS() - t0, 1e-6);
  const calls = Math.max(1, Math.ceil(repeatS / one));
  const perCall: number[] = [];
  for (let r = 0; r < repeats; r++) {
    t0 = nowS();
    for (let i = 0; i < calls; i++) call();
    perCall.push((nowS() - t0) / calls);
  }
  const flop = 2 * s.M * s.N * s.K;
  const best = Math.min(...perCall);
  return { gflops: round1(flop / best / 1e9), medianGflops: round1(flop / median(perCall) / 1e9), msPerCall: Math.round(best * 1e4) / 10, callsPerRepeat: calls };
}

// argv: threads, JSON [[form, M, N, K], ...]; prints one JSON line {version, results: {"form:d": {...}}}
const TORCH_SCRIPT = String.raw`
import json, re, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
shapes = json.loads(sys.argv[2])
def timeit(fn, flop, budget=0.3):
    t0 = time.perf_counter(); fn(); first = time.perf_counter() - t0
    best = first
    if first < 1.0:
        for _ in range(2):
            n = 0; t0 = time.perf_counter()
            while True:
                fn(); n += 1
                t = time.perf_counter() - t0
                if t >= budget: break
            best = min(best, t / n)
    return round(flop / best / 1e9, 1)
out = {}
g = torch.Generator().manual_seed(0)
for form, d, M, N, K in shapes:
    R = 4096
    flop = 2.0 * M * N * K
    r = {}
    x = torch.rand(R, d, generator=g) * 2 - 1
    dy = torch.rand(R, d, generator=g) * 2 - 1
    W = torch.rand(d, d, generator=g) * 2 - 1
    with torch.no_grad():
        if form == 'nt':
            o = torch.empty(R, d); r['matmul'] = timeit(lambda: torch.matmul(x, W.t(), out=o), flop)
            a, b = x, W                                   # linear(a, b) = a @ b.T
        elif form == 'nn':
            o = torch.empty(R, d); r['matmul'] = timeit(lambda: torch.matmul(dy, W, out=o), flop)
            a, b = dy, W.t().contiguous()
        else:
            o = torch.empty(d, d); r['matmul'] = timeit(lambda: o.add_(torch.matmul(dy.t(), x)), flop)
            a, b = dy.t().contiguous(), x.t().contiguous()
        try:
            am, bm = a.to_mkldnn(), b.to_mkldnn()
            r['onednn'] = timeit(lambda: torch.ops.aten.mkldnn_linear(am, bm, None), flop)
        except Exception as e:
            r['onednnError'] = str(e)[:200]
    out[form + ':' + str(d)] = r
m = re.search(r'BLAS_INFO=(\w+)', torch.__config__.show())
print(json.dumps({'version': torch.__version__, 'blas': m.group(1) if m else None, 'results': out}))
`;

function runTorch(threads: number, shapes: Shape[]): { version?: string; blas?: string; results?: Record<string, Record<string, number | string>>; error?: string } {
  const arg = JSON.stringify(shapes.map((s) => [s.form, s.d, s.M, s.N, s.K]));
  const r = spawnSync(PYTHON, ['-c', TORCH_SCRIPT, String(threads), arg], { encoding: 'utf8', timeout: 300_000 });
  if (r.error) return { error: `${PYTHON}: ${r.error.message}` };
  if (r.status !== 0) return { error: `python exited ${r.status}: ${(r.stderr || '').trim().slice(-500)}` };
  try {
    const lines = r.stdout.trim().split('\n');
    return JSON.parse(lines[lines.length - 1]);
  } catch (e) {
    return { error: `bad output from python: ${(e as Error).message}` };
  }
}

export async function benchMatmul(): Promise<object> {
  const threads = native.getThreads();
  const isa = native.getIsa();
  const shapes: Shape[] = [];
  for (const form of FORMS) for (const d of DIMS) shapes.push(shapeOf(form, d));

  const ours = new Map<string, OurTiming>();
  for (const s of shapes) {
    const t = timeOurs(s);
    ours.set(`${s.form}:${s.d}`, t);
    process.stderr.write(`  matmul ${s.form} d=${s.d}: ${t.gflops} GFLOP/s\n`);
  }
  process.stderr.write('  matmul: PyTorch side...\n');
  const torch = runTorch(threads, shapes);

  const rows = shapes.map((s) => {
    const key = `${s.form}:${s.d}`;
    const o = ours.get(key)!;
    const t = torch.results?.[key] ?? {};
    const tm = typeof t.matmul === 'number' ? t.matmul : null;
    const td = typeof t.onednn === 'number' ? t.onednn : null;
    return {
      form: s.form,
      op: FORM_DESC[s.form],
      M: s.M, N: s.N, K: s.K,
      undoGflops: o.gflops,
      undoMedianGflops: o.medianGflops,
      undoMsPerCall: o.msPerCall,
      torchMatmulGflops: tm,
      torchOnednnGflops: td,
      ratioVsTorchMatmul: tm ? Math.round((o.gflops / tm) * 100) / 100 : null,
      ratioVsOnednn: td ? Math.round((o.gflops / td) * 100) / 100 : null,
    };
  });
  const minOf = (xs: (number | null)[]) => {
    const v = xs.filter((x): x is number => x !== null);
    return v.length ? Math.min(...v) : null;
  };
  return {
    isa,
    threads,
    rows: ROWS,
    torch: torch.error ? { error: torch.error } : { version: torch.version, blas: torch.blas },
    results: rows,
    minRatioVsTorchMatmul: minOf(rows.map((r) => r.ratioVsTorchMatmul)),
    minRatioVsOnednn: minOf(rows.map((r) => r.ratioVsOnednn)),
  };
}

if (require.main === module) {
  benchMatmul().then((r) => console.log(JSON.stringify(r, null, 2))).catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
