/**
 * Real sizes on the CPU: the configs of SmolLM2-135M and Qwen2.5-0.5B (their HF config.json fields, random
 * weights), B = 1, T = 512, side by side with PyTorch eager fp32 (bench/torch_real.py) in the same run:
 *   forward   teacher forward: all layers, then the LM head and cross-entropy over every row (fused here,
 *             in row chunks; PyTorch holds the [T, V] logits)
 *   train     one training step: forward, fused head + cross-entropy, backward, grad-norm clip, AdamW
 * each in fp32 and with --bf16 (bf16 matmuls, fp32 accumulation and masters), tokens/s and peak RSS, every
 * measurement in its own process so its peak RSS (VmHWM) is its own.
 *   kd_head   the fused distillation head at the model's V (151936 for Qwen2.5): forward, then forward KL to a
 *             top-64 teacher with tail bucket, gradient back through the head; its peak RSS against the
 *             forward's own
 *   curve     200 training steps of the SmolLM2-135M config (T = 128) on a learnable synthetic stream (a
 *             random sparse Markov chain), fp32 and bf16: the largest and the mean relative gap of the loss
 * `npm run bench -- real_size` (add `--quick` for 3 timed steps instead of 5 and a 50-step curve).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../lib/core/native';
import { configFromHF, ModelConfig } from '../lib/models/config';
import { Model } from '../lib/models/model';
import { runTorch } from './common';

const CONFIGS: Record<string, Record<string, unknown>> = {
  'SmolLM2-135M': {
    model_type: 'llama', hidden_size: 576, intermediate_size: 1536, num_attention_heads: 9, num_hidden_layers: 30,
    num_key_value_heads: 3, vocab_size: 49152, rms_norm_eps: 1e-5, rope_theta: 100000, tie_word_embeddings: true,
    max_position_embeddings: 8192, bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu',
  },
  'Qwen2.5-0.5B': {
    model_type: 'qwen2', hidden_size: 896, intermediate_size: 4864, num_attention_heads: 14, num_hidden_layers: 24,
    num_key_value_heads: 2, vocab_size: 151936, rms_norm_eps: 1e-6, rope_theta: 1000000, tie_word_embeddings: true,
    max_position_embeddings: 32768, sliding_window: 32768, use_sliding_window: false, max_window_layers: 21,
    bos_token_id: 151643, eos_token_id: 151643, hidden_act: 'silu',
  },
};
const T = 512, B = 1;

function vmHWM(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

function tokens(n: number, V: number, seed: number): Int32Array {
  let s = seed >>> 0 || 1;
  return Int32Array.from({ length: n }, () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s % V;
  });
}

async function median(fn: () => Promise<unknown>, warmup: number, steps: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const t: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)];
}

/** A learnable stream: a random Markov chain over the first 2048 ids, 4 successors per token. */
function markovBatch(V: number, n: number, seed: number): { ids: Int32Array; targets: Int32Array } {
  const S = Math.min(2048, V), next = tokens(S * 4, S, 12345);
  const pick = tokens(n + 1, 4, seed);
  const seq = new Int32Array(n + 1);
  seq[0] = pick[0] % S;
  for (let i = 1; i <= n; i++) seq[i] = next[seq[i - 1] * 4 + pick[i]];
  return { ids: seq.subarray(0, n), targets: seq.subarray(1) };
}

async function child(name: string, mode: string, dtype: 'fp32' | 'bf16', steps: number): Promise<void> {
  const cfg: ModelConfig = configFromHF(CONFIGS[name], `${name}/config.json`);
  const m = Model.create(cfg, { seed: 1, std: 0.02 });
  m.setComputeDtype(dtype);
  const V = cfg.vocabSize;
  const out: Record<string, unknown> = { model: name, mode, dtype, params: m.numParams(), bf16_kernel: dtype === 'bf16' ? native.bf16Native() : undefined };
  if (mode === 'curve') {
    const Tc = 128, curve: number[] = [];
    const t0 = process.hrtime.bigint();
    for (let s = 0; s < steps; s++) {
      const { ids, targets } = markovBatch(V, Tc, 1000 + s);
      m.native.zeroGradSync();
      const r = await m.native.trainStep(ids, targets, 1, Tc, null, 0, -100);
      const norm = m.native.gradNormSync();
      const lr = 1e-3 * Math.min(1, (s + 1) / 20);
      await m.native.adamw({ lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.0, gradScale: Math.min(1, 1 / (norm + 1e-6)) });
      curve.push(r.loss);
    }
    out.curve = curve;
    out.sec = Number(process.hrtime.bigint() - t0) / 1e9;
  } else {
    const ids = tokens(B * T, V, 7), targets = tokens(B * T, V, 8);
    let fn: () => Promise<unknown>;
    if (mode === 'forward') {
      fn = async () => {
        await m.native.forward(ids, B, T);
        out.loss = (await m.native.headLoss(targets, null, -100, 0, false, null)).loss;
      };
    } else if (mode === 'train') {
      fn = async () => {
        m.native.zeroGradSync();
        out.loss = (await m.native.trainStep(ids, targets, B, T, null, 0, -100)).loss;
        const norm = m.native.gradNormSync();
        await m.native.adamw({ lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradScale: Math.min(1, 1 / (norm + 1e-6)) });
      };
    } else if (mode === 'kd_head') {
      const k = 64, topkIds = new Int32Array(B * T * k), topkLogprobs = new Float32Array(B * T * k);
      const idsK = tokens(B * T * k, V, 9);
      for (let r = 0; r < B * T; r++) {
        const seen = new Set<number>();
        for (let j = 0; j < k; j++) {
          let id = idsK[r * k + j];
          while (seen.has(id)) id = (id + 1) % V;
          seen.add(id);
          topkIds[r * k + j] = id;
          topkLogprobs[r * k + j] = Math.log(0.9 / k) - 0.01 * j;  // leaves ~10% to the tail
        }
      }
      fn = async () => {
        await m.native.forward(ids, B, T);
        out.loss = (await m.native.headKd('fkl', null, { topkIds, topkLogprobs, k, tail: 'bucket' })).loss;
      };
    } else throw new Error(`unknown mode ${mode}`);
    const sec = await median(fn, 1, steps);
    out.sec_per_step = sec;
    out.tokens_per_sec = (B * T) / sec;
  }
  out.peak_rss_bytes = vmHWM();
  console.log(JSON.stringify(out));
}

function runChild(name: string, mode: string, dtype: string, steps: number): Record<string, unknown> {
  const r = spawnSync(process.execPath, [__filename, '--child', name, mode, dtype, String(steps)],
    { encoding: 'utf8', maxBuffer: 16 << 20, env: { ...process.env, UNDO_THREADS: String(native.getThreads()) } });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').slice(-3).join(' ') };
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

const gib = (b: unknown) => (typeof b === 'number' ? Math.round((b / 2 ** 30) * 1000) / 1000 : null);
const ratio = (a: unknown, b: unknown) => (typeof a === 'number' && typeof b === 'number' && b > 0 ? Math.round((a / b) * 1000) / 1000 : null);

export async function benchRealSize(opts: { quick?: boolean } = {}): Promise<object> {
  const steps = opts.quick ? 3 : 5;
  const torchScript = path.join(__dirname, '..', '..', 'bench', 'torch_real.py');
  const results: Record<string, unknown> = {};
  for (const name of Object.keys(CONFIGS)) {
    const cfg = configFromHF(CONFIGS[name], `${name}/config.json`);
    const row: Record<string, unknown> = {};
    for (const mode of ['forward', 'train']) {
      process.stderr.write(`  real_size ${name} ${mode}...\n`);
      const f = runChild(name, mode, 'fp32', steps);
      const b = runChild(name, mode, 'bf16', steps);
      const torch = runTorch([torchScript, JSON.stringify({
        config: cfg, bias: name.startsWith('Qwen'), B, T, threads: native.getThreads(), mode, warmup: 1, steps: opts.quick ? 2 : 3,
      })]) as Record<string, unknown> | null;
      row[mode] = {
        undo_fp32: { tokens_per_sec: f.tokens_per_sec, peak_rss_gib: gib(f.peak_rss_bytes), loss: f.loss, error: f.error },
        undo_bf16: { tokens_per_sec: b.tokens_per_sec, peak_rss_gib: gib(b.peak_rss_bytes), loss: b.loss, bf16_kernel: b.bf16_kernel, error: b.error },
        pytorch_eager_fp32: torch ? { tokens_per_sec: torch.tokens_per_sec, peak_rss_gib: gib(torch.peak_rss_bytes), loss: torch.loss, error: torch.error } : 'absent',
        fp32_vs_pytorch: torch ? ratio(f.tokens_per_sec, torch.tokens_per_sec) : null,
        bf16_vs_own_fp32: ratio(b.tokens_per_sec, f.tokens_per_sec),
        bf16_vs_pytorch: torch ? ratio(b.tokens_per_sec, torch.tokens_per_sec) : null,
        rss_vs_pytorch: torch ? ratio(f.peak_rss_bytes, torch.peak_rss_bytes) : null,
      };
      if (mode === 'forward') {
        row.forward_peak_rss_bytes = f.peak_rss_bytes;
        row.params = f.params;
      }
    }
    process.stderr.write(`  real_size ${name} kd_head...\n`);
    const kd = runChild(name, 'kd_head', 'fp32', opts.quick ? 2 : 3);
    row.kd_head = {
      vocab: cfg.vocabSize, k: 64, tokens_per_sec: kd.tokens_per_sec, peak_rss_gib: gib(kd.peak_rss_bytes),
      forward_peak_rss_gib: gib(row.forward_peak_rss_bytes), peak_vs_forward: ratio(kd.peak_rss_bytes, row.forward_peak_rss_bytes),
      rows_x_vocab_block_gib: gib(B * T * cfg.vocabSize * 4), error: kd.error,
    };
    delete row.forward_peak_rss_bytes;
    results[name] = row;
  }
  const curveSteps = opts.quick ? 50 : 200;
  process.stderr.write(`  real_size curve (${curveSteps} steps, fp32 and bf16)...\n`);
  const cf = runChild('SmolLM2-135M', 'curve', 'fp32', curveSteps), cb = runChild('SmolLM2-135M', 'curve', 'bf16', curveSteps);
  const f = cf.curve as number[] | undefined, b = cb.curve as number[] | undefined;
  if (f && b) {
    const rel = f.map((x, i) => Math.abs(b[i] - x) / x);
    results.loss_curve = {
      model: 'SmolLM2-135M', T: 128, steps: curveSteps, fp32_first_last: [f[0], f[f.length - 1]], bf16_first_last: [b[0], b[b.length - 1]],
      max_rel_gap: Math.max(...rel), mean_rel_gap: rel.reduce((s, x) => s + x, 0) / rel.length,
      last20_mean_rel_gap: rel.slice(-20).reduce((s, x) => s + x, 0) / Math.min(20, rel.length),
      fp32_sec: cf.sec, bf16_sec: cb.sec, every10: { fp32: f.filter((_, i) => i % 10 === 9), bf16: b.filter((_, i) => i % 10 === 9) },
    };
  } else results.loss_curve = { error: cf.error ?? cb.error };
  return { B, T, threads: native.getThreads(), isa: native.getIsa(), bf16_kernel: native.bf16Native(), ...results };
}

if (process.argv[2] === '--child') {
  child(process.argv[3], process.argv[4], process.argv[5] as 'fp32' | 'bf16', Number(process.argv[6])).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
