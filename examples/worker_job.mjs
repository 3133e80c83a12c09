// Run a training job in a worker_threads Worker and stream each step's metrics to the main thread.
//
//   node examples/worker_job.mjs [STEPS] [OUT_DIR]     (default 40 steps, no output directory; about 4 s)
//   STOP_AFTER=10 node examples/worker_job.mjs 40 runs/w   asks the worker to stop after step 10 (it saves first)
//
// The native addon is context-aware, so each worker loads its own instance; models live in the worker that made
// them. The main thread only receives plain messages, with the field names of metrics.jsonl.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

if (isMainThread) {
  const steps = Number(process.argv[2] ?? 40), outDir = process.argv[3];
  const stopAfter = Number(process.env.STOP_AFTER ?? Infinity);
  const worker = new Worker(new URL(import.meta.url), { workerData: { steps, outDir } });
  worker.on('message', (m) => {
    if (m.type === 'step') {
      console.log(`metrics ${JSON.stringify(m.metrics)}`);
      if (m.metrics.step === stopAfter) worker.postMessage({ type: 'stop' });
    } else if (m.type === 'done') {
      console.log(`done: ${m.steps} steps, interrupted ${m.interrupted}${outDir ? `, saved to ${outDir}` : ''}`);
    }
  });
  // an exception in the worker (an UndoError keeps its .code across the thread boundary) arrives here
  worker.on('error', (err) => {
    console.error(`worker failed: ${err.message}${err.code ? ` (${err.code})` : ''}`);
    process.exitCode = 1;
  });
} else {
  // only the worker loads the engine
  const { Model, presetConfig, train, arithmetic, data, DEFAULT_OPTIM } = await import('undo-native');
  const model = Model.create({ ...presetConfig('micro'), hiddenSize: 64, numLayers: 2 }, { seed: 1 });
  const docs = arithmetic.generateArithmeticCorpus({ count: 2000, seed: 1 });
  const batcher = new data.Batcher(data.packDocuments(model.tokenizer, docs, 64, { seed: 1 }), { batchSize: 16, seed: 1 });
  const cfg = { ...DEFAULT_OPTIM, lr: 3e-3, warmup: 5, schedule: 'cosine', steps: workerData.steps, gradAccum: 1, evalEvery: 0, checkpointEvery: 0 };

  // a 'stop' message aborts the job: train() finishes the current step, checkpoints (with outDir) and resolves
  const controller = new AbortController();
  const onMessage = (m) => { if (m.type === 'stop') controller.abort(); };
  parentPort.on('message', onMessage);
  const r = await train(model, batcher, cfg, {
    outDir: workerData.outDir,
    signal: controller.signal,
    onStep: (s) => parentPort.postMessage({
      type: 'step',
      metrics: { step: s.step, loss: s.loss, lr: s.lr, grad_norm: s.gradNorm, tokens: s.tokens, tokens_per_sec: s.tokensPerSec, elapsed_sec: s.elapsedSec },
    }),
  });
  parentPort.postMessage({ type: 'done', steps: r.state.step, interrupted: r.interrupted });
  parentPort.off('message', onMessage);  // nothing left to listen for: the worker exits
}
