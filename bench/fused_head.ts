/**
 * Fused distillation head vs the unfused path, at rows = 8192, V = 32768, d = 512: final hidden → LM head →
 * forward KL to a teacher's logits → gradient back through the head. Unfused materialises both models'
 * rows×V logits and the rows×V gradient; fused (Model::head_custom + kd_loss) works in row chunks.
 * Each variant runs in its own process so that its peak RSS (VmHWM) is its own.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import { loss } from '../lib/train/losses';
import { Model, ModelConfig } from '../lib/models/model';
import { native } from '../lib/core/native';

const ROWS = 8192, VOCAB = 32768, D = 512, T = 1024;

function vmHWM(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}
function vmRSS(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

async function child(variant: string): Promise<void> {
  const cfg: ModelConfig = {
    family: 'llama', vocabSize: VOCAB, hiddenSize: D, numLayers: 1, numHeads: 8, numKvHeads: 8, headDim: 64,
    intermediateSize: 64, maxPositions: T, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true,
    attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
    bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
  };
  const student = Model.create(cfg, { seed: 1 });
  const teacher = Model.create(cfg, { seed: 2 });
  const B = ROWS / T;
  const ids = Int32Array.from({ length: ROWS }, (_, i) => (i * 7919) % VOCAB);
  await teacher.native.forward(ids, B, T);
  await student.native.forward(ids, B, T);
  const base = vmRSS();
  const t0 = process.hrtime.bigint();
  let value: number;
  if (variant === 'fused') {
    value = (await student.native.headKd('fkl', teacher.native, {})).loss;
  } else {
    const z = await student.native.logits(null);
    const tz = await teacher.native.logits(null);
    const r = loss.computeSync('fkl', { student: z, teacher: tz, rows: ROWS, vocab: VOCAB });
    await student.native.headGrad(r.grad);
    value = r.loss;
  }
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ variant, sec, loss: value, peak_extra_bytes: vmHWM() - base }));
}

export async function benchFusedHead(): Promise<object> {
  const run = (variant: string) => {
    const r = spawnSync(process.execPath, [__filename, '--child', variant], { encoding: 'utf8', maxBuffer: 1 << 20 });
    if (r.status !== 0) throw new Error(`fused_head ${variant}: ${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as { sec: number; loss: number; peak_extra_bytes: number };
  };
  const fused = run('fused');
  const unfused = run('unfused');
  return {
    rows: ROWS, vocab: VOCAB, d: D, threads: native.getThreads(), fused, unfused,
    memory_ratio: fused.peak_extra_bytes / unfused.peak_extra_bytes,
    time_ratio: fused.sec / unfused.sec,
    loss_match: Math.abs(fused.loss - unfused.loss) / Math.abs(unfused.loss),
  };
}

if (process.argv[2] === '--child') {
  child(process.argv[3]).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
