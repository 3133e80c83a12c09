/**
 * Logit losses against computed teacher logits in row chunks (chunkedLogitObjective + native headGradRows):
 * loss and gradient equal the whole-batch kernel on rows × V logits plus headGrad, soft-capped logits and
 * deltakd's four logits included; WHP's generic targets run through it.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Batch } from '../lib/data/datasets';
import { Model, ModelConfig } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import { loss as kdLoss, LossName } from '../lib/train/losses';
import { chunkedLogitObjective, logitObjective } from '../lib/train/objectives';
import { assertClose } from './helpers';
import { UndoError } from '../lib/core/errors';

const CFG: ModelConfig = {
  family: 'llama', vocabSize: 53, hiddenSize: 16, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8,
  intermediateSize: 24, maxPositions: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: 1, eosTokenId: 2, padTokenId: 0,
};

function batch(): Batch {
  const r = new Rng(4);
  const B = 3, T = 7;
  const inputs = Int32Array.from({ length: B * T }, () => r.int(0, CFG.vocabSize - 1));
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i % 3 === 0 ? -100 : r.int(0, CFG.vocabSize - 1)));
  return { inputs, targets, B, T, position: { epoch: 0, index: 0 } };
}

async function wholeBatch(cfg: ModelConfig, name: LossName, b: Batch, teachers: Model[], scale: number, params: Record<string, number> = {}) {
  const m = Model.create(cfg, { seed: 7 });
  const logits: Float32Array[] = [];
  for (const t of teachers) {
    await t.native.forward(b.inputs, b.B, b.T);
    logits.push(await t.native.logits(null));
  }
  await m.native.forward(b.inputs, b.B, b.T);
  const student = await m.native.logits(null);
  const r = kdLoss.computeSync(name, {
    student, teacher: logits[0], ...(logits.length > 1 ? { studentBase: logits[1], teacherBase: logits[2] } : {}),
    rows: b.B * b.T, vocab: cfg.vocabSize, targets: b.targets, temperature: 2, ...params,
  });
  for (let i = 0; i < r.grad.length; i++) r.grad[i] *= scale;
  m.native.zeroGradSync();
  await m.native.headGrad(r.grad);
  await m.native.backward(true, null);
  return { loss: r.loss, grads: m.grads.slice() };
}

// Gemma-2 soft-caps the final logits (llama ignores the field): the chunked head applies the chain rule too
const GEMMA2: ModelConfig = { ...CFG, family: 'gemma2', numLayers: 2, tieWordEmbeddings: true, attnLogitSoftcapping: 50, finalLogitSoftcapping: 0.3, queryPreAttnScalar: 8, slidingWindow: 4, activation: 'gelu_tanh' };
for (const cfg of [CFG, GEMMA2]) {
  test(`fkl in chunks of 5 rows = the whole batch (loss, gradient; ${cfg.family}, final soft-cap ${cfg.finalLogitSoftcapping})`, async () => {
    const b = batch();
    const teacher = Model.create(cfg, { seed: 8 });
    const ref = await wholeBatch(cfg, 'fkl', b, [teacher], 0.7);
    const m = Model.create(cfg, { seed: 7 });
    m.native.zeroGradSync();
    await teacher.native.forward(b.inputs, b.B, b.T);
    const V = cfg.vocabSize;
    const loss = await chunkedLogitObjective(m, b, 'fkl', async (_r0, idx) => ({ teacher: (await teacher.native.logits(idx)).slice(0, idx.length * V) }), { scale: 0.7, temperature: 2, chunk: 5 });
    assert.ok(Math.abs(loss - ref.loss) < 1e-5 * Math.abs(ref.loss), `${loss} vs ${ref.loss}`);
    assertClose(m.grads, ref.grads, 2e-5, 'chunked gradient');
    assert.ok(ref.grads.some((g) => g !== 0));
    if (cfg.finalLogitSoftcapping) {
      await m.native.forward(b.inputs, b.B, b.T);
      assert.ok((await m.native.logits(null)).every((z) => Math.abs(z) <= 0.3), 'the logits are capped');
    }
  });
}

test('deltakd through logitObjective (teacher, studentBase, teacherBase models) = the whole-batch kernel', async () => {
  const b = batch();
  const [t, sb, tb] = [8, 9, 10].map((seed) => Model.create(CFG, { seed }));
  const ref = await wholeBatch(CFG, 'deltakd', b, [t, sb, tb], 0.5, { lambda: 0.3 });
  const m = Model.create(CFG, { seed: 7 });
  m.native.zeroGradSync();
  const loss = await logitObjective(m, b, 'deltakd', { teacher: t, studentBase: sb, teacherBase: tb, scale: 0.5, temperature: 2, params: { lambda: 0.3 } });
  assert.ok(Math.abs(loss - ref.loss) < 1e-5 * Math.abs(ref.loss), `${loss} vs ${ref.loss}`);
  assertClose(m.grads, ref.grads, 2e-5, 'deltakd gradient');
  const err = await logitObjective(m, b, 'deltakd', { teacher: t }).then(() => null, (e: unknown) => e);
  assert.instance(err, UndoError);
  assert.match(String((err as Error).message), /deltakd needs/);
});

test('headGradRows refuses rows outside the last forward', async () => {
  const b = batch();
  const m = Model.create(CFG, { seed: 7 });
  await m.native.forward(b.inputs, b.B, b.T);
  let threw = false;
  try {
    await m.native.headGradRows(b.B * b.T - 1, new Float32Array(2 * CFG.vocabSize));
  } catch (e) {
    threw = /out of range/.test(String(e));
  }
  assert.ok(threw);
});

test.run();
