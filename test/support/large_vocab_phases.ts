/**
 * Child process of test/large_vocab.test.ts: runs each vocabulary-sized phase on a V = 262144 model (hidden 16)
 * and prints, per phase, the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs before
 * the phase) as JSON lines. One rows × V float block of the batch would be 2 GiB; a head chunk is 64 MiB.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Model } from '../../lib/models/model';
import { ModelConfig } from '../../lib/models/config';
import { Batcher, PackedDataset } from '../../lib/data/datasets';
import { generateIds } from '../../lib/models/generate';
import { distill } from '../../lib/distill/distill';
import { cacheTeacher, openTeacherStore } from '../../lib/distill/teacher_store';
import { evalDivergence } from '../../lib/train/evaluate';
import { logitObjective } from '../../lib/train/objectives';
import { unlearn } from '../../lib/unlearn/unlearn';

const V = 262144;
const B = 4, T = 256;
const CFG: ModelConfig = {
  family: 'llama', vocabSize: V, hiddenSize: 16, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8,
  intermediateSize: 32, maxPositions: T, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
};

function status(field: string): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** `copies`: whole models the phase itself makes (WHP clones the model twice), allowed for by the test. */
async function phase(name: string, fn: () => Promise<unknown>, copies = 0): Promise<void> {
  if (global.gc) global.gc();
  fs.writeFileSync('/proc/self/clear_refs', '5');
  const before = status('VmRSS');
  const t0 = Date.now();
  await fn();
  const peak = status('VmHWM');
  process.stdout.write(JSON.stringify({ phase: name, growth: peak - before, ms: Date.now() - t0, copies }) + '\n');
}

async function main(): Promise<void> {
  const student = Model.create(CFG, { seed: 1, std: 0.5 });
  const teacher = Model.create(CFG, { seed: 2, std: 0.5 });
  // ids spread over the whole vocabulary, so every row of the tables is used
  const n = (B * 2) * (T + 1);
  const toks = Int32Array.from({ length: n }, (_, i) => (i * 2654435761) % V);
  const data = new PackedDataset(toks, T, B * 2);
  const batch = new Batcher(data, { batchSize: B, shuffle: false }).next();
  const cfg = { steps: 1, gradAccum: 1, lr: 1e-3, warmup: 0, schedule: 'constant' as const, weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-bigv-'));
  try {
    await phase('trainStep', () => student.native.trainStep(batch.inputs, batch.targets, B, T, null, 0, -100));
    await phase('headKd', async () => {
      await teacher.native.forward(batch.inputs, B, T);
      await student.native.forward(batch.inputs, B, T);
      await student.native.headKd('jsd', teacher.native, { beta: 0.5, temperature: 1 });
      await student.native.backward(true, null);
    });
    await phase('distill(online, topk)', () => distill(student, teacher, new Batcher(data, { batchSize: B, shuffle: false }), cfg, { loss: 'fkl', topk: 64 }));
    await phase('distill(on-policy)', () => distill(student, teacher, new Batcher(data, { batchSize: B, shuffle: false }), cfg, { loss: 'rkl', onPolicy: 1, seed: 3 }));
    await phase('evalDivergence', () => evalDivergence(student, teacher, data, { batchSize: B }));
    const store = path.join(tmp, 'store');
    await phase('cacheTeacher', () => cacheTeacher(teacher, data, { k: 32, out: store, batchSize: B }));
    await phase('distill(store)', async () => distill(student, await openTeacherStore(store), new Batcher(data, { batchSize: B, shuffle: false }), cfg, { loss: 'fkl', tail: 'bucket' }));
    let copy: Model | null = null;
    // a whole trained copy: parameters, gradients and both AdamW moments touched
    await phase('model copy', async () => {
      copy = student.clone();
      copy.native.zeroGradSync();
      copy.native.adamM().fill(0);
      copy.native.adamV().fill(0);
    });
    copy = null;
    await phase('unlearn(whp)', () => unlearn(student, new Batcher(data, { batchSize: B, shuffle: false }), null, cfg, { method: 'whp', params: { whpReinforceSteps: 1, retainWeight: 0 } }), 2);
    const [sb, tb] = [student.clone(), teacher.clone()];
    await phase('deltakd', async () => {
      student.native.zeroGradSync();
      await logitObjective(student, batch, 'deltakd', { teacher, studentBase: sb, teacherBase: tb, params: { lambda: 0.5 } });
    });
    await phase('generate', () => generateIds(student, Array.from({ length: B }, (_, b) => toks.slice(b * 7, b * 7 + 5)), { maxNewTokens: 16, temperature: 1, topP: 0.9, seed: 1 }));
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
