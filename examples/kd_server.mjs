// An HTTP server (node:http, no framework) that scores texts with the teacher→student KD loss while it distills
// the student in the background; the native work runs off the JS thread, so requests are answered meanwhile.
//
//   PORT=8080 node examples/kd_server.mjs          (PORT=0 picks a free port; the port is printed)
//   curl -s localhost:8080/score -d '{"texts": ["12 + 7 = 19", "3 * 4 = 12"]}'
//   curl -s localhost:8080/health;  curl -s -X POST localhost:8080/stop   (or Ctrl-C / SIGTERM)
//
// OUT=dir saves the student's checkpoint there when it stops (resumable with `resume: true`).
import * as http from 'node:http';
import { Model, presetConfig, train, distill, loss, arithmetic, data, DEFAULT_OPTIM, isUndoError } from 'undo-native';

const cfg = (steps, lr) => ({ ...DEFAULT_OPTIM, lr, steps, gradAccum: 1, evalEvery: 0, checkpointEvery: 0 });
const base = presetConfig('micro');
const teacher = Model.create({ ...base, hiddenSize: 64, numLayers: 2 }, { seed: 1 });
const student = Model.create({ ...base, hiddenSize: 32, numLayers: 1, numHeads: 2, numKvHeads: 1, intermediateSize: 96 }, { seed: 2 });
const windows = data.packDocuments(teacher.tokenizer, arithmetic.generateArithmeticCorpus({ count: 2000, seed: 1 }), 64, { seed: 1 });
await train(teacher, new data.Batcher(windows, { batchSize: 16, seed: 1 }), cfg(60, 3e-3));  // a quick teacher

// Scoring uses copies: distill() runs forward passes on both models between awaits, and a request's forward in
// between would overwrite their activations. After every step the student's weights are copied to a snapshot
// (no native call is in flight at onStep); a request loads the snapshot into its copy before scoring.
const scoreTeacher = teacher.clone(), scoreStudent = student.clone();
const snapshot = new Float32Array(student.params);
let trained = { step: 0, loss: NaN }, scoredStep = 0, queue = Promise.resolve();

async function score(texts) {
  if (trained.step !== scoredStep) { scoreStudent.params.set(snapshot); scoredStep = trained.step; }
  const tok = scoreStudent.tokenizer, V = scoreStudent.config.vocabSize;
  const ids = texts.map((t) => tok.encode(t, { bos: true }).subarray(0, 257));  // <bos> + up to 256 tokens
  const B = ids.length, T = Math.max(...ids.map((x) => x.length)) - 1;
  const inputs = new Int32Array(B * T).fill(tok.pad), targets = new Int32Array(B * T).fill(-100);  // -100: padding, not scored
  ids.forEach((x, b) => { inputs.set(x.subarray(0, -1), b * T); targets.set(x.subarray(1), b * T); });
  await scoreTeacher.native.forward(inputs, B, T);
  const teacherLogits = await scoreTeacher.native.logits(null);
  await scoreStudent.native.forward(inputs, B, T);
  const studentLogits = await scoreStudent.native.logits(null);
  // KL(teacher || student) per position, on the libuv pool; the per-text score is its mean over the text's tokens
  const r = await loss.compute('fkl', { student: studentLogits, teacher: teacherLogits, rows: B * T, vocab: V, targets, grad: false });
  const kd = ids.map((x, b) => ({ tokens: x.length - 1, kd: r.perRow.subarray(b * T, b * T + x.length - 1).reduce((a, v) => a + v, 0) / (x.length - 1) }));
  return { step: scoredStep, scores: kd };
}

const send = (res, status, body) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body) + '\n');
const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'GET' && req.url === '/health') return send(res, 200, { ok: true, step: trained.step, loss: trained.loss });
    if (req.method === 'POST' && req.url === '/stop') { send(res, 200, { stopping: true }); return stop(); }
    if (req.method !== 'POST' || req.url !== '/score') return send(res, 404, { error: 'GET /health, POST /score, POST /stop' });
    let body = '';
    for await (const chunk of req) if ((body += chunk).length > 1e6) return send(res, 413, { error: 'body over 1 MB' });
    const { texts } = JSON.parse(body || '{}');
    if (!Array.isArray(texts) || !texts.length || texts.length > 64 || !texts.every((t) => typeof t === 'string' && t.length)) {
      return send(res, 400, { error: 'expected {"texts": [1..64 non-empty strings]}' });
    }
    const job = queue.then(() => score(texts));  // one scoring at a time on the copies
    queue = job.catch(() => {});
    send(res, 200, await job);
  } catch (err) {
    // bad JSON is a SyntaxError; the library's errors carry a stable err.code (ERR_SHAPE, ERR_ARGUMENT, ...)
    send(res, err instanceof SyntaxError || isUndoError(err) ? 400 : 500, { error: err.message, code: err.code });
  }
});

// background distillation until stopped (or STEPS steps); the AbortSignal stops it after the current step
const controller = new AbortController();
const training = distill(student, teacher, new data.Batcher(windows, { batchSize: 16, seed: 2 }), cfg(Number(process.env.STEPS ?? 100000), 3e-3), {
  loss: 'fkl', signal: controller.signal, outDir: process.env.OUT,
  onStep: (s) => { snapshot.set(student.params); trained = { step: s.step, loss: s.loss }; },
});
training.catch((err) => { console.error(`distillation failed: ${err.message} (${err.code})`); process.exit(1); });
let stopping = null;
function stop() {
  stopping ??= (async () => {
    controller.abort();
    const r = await training;
    server.close();
    server.closeAllConnections();
    console.log(`stopped: ${r.state.step} distillation steps, last loss ${trained.loss.toFixed(4)}, interrupted ${r.interrupted}`);
  })();
  return stopping;
}
process.on('SIGTERM', stop).on('SIGINT', stop);
server.listen(Number(process.env.PORT ?? 8080), '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${server.address().port}`));
