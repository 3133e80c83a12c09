// Unlearn with an AbortSignal and a progress bar of our own, then resume the aborted job to completion.
//
//   node examples/unlearn_abort.mjs [OUT_DIR]     (default runs/example-unlearn; about 6 s on 2 cores)
//   ABORT_AT=12 STEPS=30: abort after step 12 of 30 (or abort on a timer: AbortSignal.timeout(ms))
//
// An aborted job finishes the step in flight, writes its checkpoint to outDir (weights, AdamW moments,
// trainer_state.json) and resolves with interrupted: true; `resume: true` continues from that checkpoint.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model, presetConfig, train, unlearn, evalPackedLoss, arithmetic, data, DEFAULT_OPTIM } from 'undo-native';

const outDir = process.argv[2] ?? 'runs/example-unlearn';
const steps = Number(process.env.STEPS ?? 30), abortAt = Number(process.env.ABORT_AT ?? 12);
const cfg = (n, lr) => ({ ...DEFAULT_OPTIM, lr, steps: n, gradAccum: 1, evalEvery: 0, checkpointEvery: 0 });
const pack = (ops, seed) => data.packDocuments(base.tokenizer, arithmetic.generateArithmeticCorpus({ ops, count: 600, seed }), 64, { seed });

// a small model that has learned some of all four operations (150 steps); forget × and ÷, keep + and −
const base = Model.create({ ...presetConfig('micro'), hiddenSize: 64, numLayers: 2 }, { seed: 1 });
await train(base, new data.Batcher(pack(['add', 'sub', 'mul', 'div'], 1), { batchSize: 16, seed: 1 }), cfg(150, 3e-3));
const model = base.clone();  // the weights only: unlearning starts with fresh AdamW state, as after Model.load
const forgetSet = pack(['mul', 'div'], 2), retainSet = pack(['add', 'sub'], 3);
const losses = async (m) => `forget loss ${(await evalPackedLoss(m, forgetSet)).loss.toFixed(3)}, retain loss ${(await evalPackedLoss(m, retainSet)).loss.toFixed(3)}`;
console.log(`before: ${await losses(model)}`);

// the progress bar: plain writes from onStep ('\r' redraws the line)
const bar = (s) => {
  const done = Math.round((20 * s.step) / steps);
  process.stdout.write(`\r[${'#'.repeat(done)}${'.'.repeat(20 - done)}] ${s.step}/${steps}  loss ${s.loss.toFixed(3)}  ${s.tokensPerSec.toFixed(0)} tok/s`);
};
// MaxEnt (UNDO's unlearning teacher): push the forget predictions to uniform, keep CE on retain (weight 4).
// Fresh batchers with the same seeds each run: resume moves both to their checkpointed positions (the checkpoint
// holds the forget and the retain data's), so the resumed job ends with the same weights as one that never stopped.
const job = (m, opts) => unlearn(m, new data.Batcher(forgetSet, { batchSize: 16, seed: 4 }), new data.Batcher(retainSet, { batchSize: 16, seed: 5 }),
  cfg(steps, 1e-3), { method: 'maxent', params: { retainWeight: 4 }, outDir, onStep: bar, ...opts });

// 1. abort after step ABORT_AT (the check runs before each step, so the job stops right there)
const controller = new AbortController();
const first = await job(model, { onStep: (s) => { bar(s); if (s.step === abortAt) controller.abort(); }, signal: controller.signal });
const saved = JSON.parse(fs.readFileSync(path.join(outDir, 'trainer_state.json'), 'utf8'));
console.log(`\naborted: interrupted ${first.interrupted} at step ${first.state.step}; checkpoint in ${outDir} at step ${saved.step}`);

// 2. resume: load the checkpoint's weights, then resume: true restores AdamW and the data position
const resumed = Model.load(outDir);
const second = await job(resumed, { resume: true });
console.log(`\nresumed: interrupted ${second.interrupted} at step ${second.state.step} of ${steps}`);
console.log(`after: ${await losses(resumed)}`);
