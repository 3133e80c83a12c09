// Distill a student from a teacher in a plain script, then save the student as a Hugging Face directory.
//
//   node examples/distill_script.mjs [OUT_DIR]      (default runs/example-student; about 5 s on 2 cores)
//
// The teacher here is trained for a few seconds on the built-in arithmetic task so that the example needs no
// files; with a real teacher use `Model.load('runs/tiny')` (any HF directory the engine loads) instead.
import {
  Model, presetConfig, train, distill, evalDivergence, arithmetic, data, DEFAULT_OPTIM, isUndoError, exitStatus,
} from 'undo-native';

const outDir = process.argv[2] ?? 'runs/example-student';
// a training config: AdamW defaults plus the length of the run (no periodic eval or checkpoints)
const cfg = (steps, lr) => ({ ...DEFAULT_OPTIM, lr, steps, gradAccum: 1, evalEvery: 0, checkpointEvery: 0 });

try {
  // presetConfig('micro') carries the byte tokenizer's vocabulary (259) and special ids; we shrink its sizes
  const base = presetConfig('micro');
  const teacher = Model.create({ ...base, hiddenSize: 64, numLayers: 2 }, { seed: 1 });
  const student = Model.create({ ...base, hiddenSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, intermediateSize: 96 }, { seed: 2 });

  // data: 2000 arithmetic documents ("12 + 7 = 19", word problems), 10% held out, packed into 64-token windows
  const docs = arithmetic.generateArithmeticCorpus({ count: 2000, seed: 1 });
  const split = data.splitTrainVal(docs, 0.1, 1);
  const trainSet = data.packDocuments(teacher.tokenizer, split.train, 64, { seed: 1 });
  const valSet = data.packDocuments(teacher.tokenizer, split.val, 64, { seed: 1 });

  // 1. the teacher: 60 steps of next-token cross-entropy
  await train(teacher, new data.Batcher(trainSet, { batchSize: 16, seed: 1 }), cfg(60, 3e-3));

  // 2. distill: forward KL to the teacher's distributions; onStep sees every optimizer step
  const kl = async () => (await evalDivergence(student, teacher, valSet, { loss: 'fkl' })).value;
  const before = await kl();
  const r = await distill(student, teacher, new data.Batcher(trainSet, { batchSize: 16, seed: 2 }), cfg(50, 3e-3), {
    loss: 'fkl',
    onStep: (s) => { if (s.step % 10 === 0) console.log(`step ${s.step}  loss ${s.loss.toFixed(4)}  ${s.tokensPerSec.toFixed(0)} tok/s`); },
  });
  const after = await kl();
  console.log(`held-out KL(teacher || student): ${before.toFixed(4)} -> ${after.toFixed(4)} after ${r.state.step} steps`);

  // 3. save: config.json + model.safetensors + tokenizer files, written atomically
  student.save(outDir);
  console.log(`student (${student.numParams()} parameters) saved to ${outDir}`);
} catch (err) {
  // every error for bad input is an UndoError with a stable code (ERR_NOT_FOUND, ERR_MODEL_CONFIG, ...)
  if (!isUndoError(err)) throw err;
  console.error(`error: ${err.message}${err.hint ? `\nhint: ${err.hint}` : ''}\ncode: ${err.code}`);
  process.exit(exitStatus(err));
}
