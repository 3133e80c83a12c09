/**
 * The long jobs' one contract (lib/core/progress.ts): onProgress events with the fields of metrics.jsonl, an
 * AbortSignal that stops the job at a step boundary, saves what a resumed run needs and RESOLVES with
 * `interrupted: true`, and no SIGINT listener installed by the library. For train, distill, unlearn, relearn,
 * cache-teacher and the UNDO study.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ByteTokenizer } from '../lib/data/tokenizer';
import { Batcher, packDocuments, PackedDataset } from '../lib/data/datasets';
import { Model } from '../lib/models/model';
import { train, TrainConfig } from '../lib/train/train';
import { distill } from '../lib/distill/distill';
import { unlearn } from '../lib/unlearn/unlearn';
import { relearn } from '../lib/unlearn/relearn';
import { CacheProgress, cacheTeacher } from '../lib/distill/teacher_store';
import { runStudy, STUDIES, StudyConfig } from '../lib/undo/study';
import { evalPackedLoss } from '../lib/train/evaluate';
import { builtinBiographyDocs } from '../lib/tasks/biographies';
import { JobProgress } from '../lib/core/progress';
import { bitEqual, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-jobs-'));
const tok = new ByteTokenizer();
const cfg = (steps: number): TrainConfig => ({
  steps, gradAccum: 1, lr: 3e-3, warmup: 2, schedule: 'cosine', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0,
});
const fresh = (seed = 3) => Model.create(tinyConfig('llama', { vocabSize: tok.vocabSize, maxPositions: 64 }), { seed }, tok);
const data = (part: 'all' | 'forget' | 'retain', seed: number): PackedDataset => packDocuments(tok, builtinBiographyDocs(part, 1, 4), 32, { seed });

/** onProgress that records the events and aborts the controller once `stopAt` step events have arrived. */
function recorder(stopAt: number) {
  const ac = new AbortController();
  const events: JobProgress[] = [];
  const onProgress = (p: JobProgress) => {
    events.push(p);
    if (events.filter((e) => e.eval === undefined).length >= stopAt) ac.abort();
  };
  return { ac, events, onProgress, signal: ac.signal };
}

const metricsLines = (dir: string) => fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

/** A step event carries exactly the metrics.jsonl line's fields and values. */
function assertStepEvents(events: JobProgress[], dir: string, job: string, total: number) {
  const lines = metricsLines(dir).filter((l) => l.loss !== undefined);
  const steps = events.filter((e) => e.eval === undefined);
  assert.is(steps.length, lines.length, 'one event per metrics.jsonl step line');
  steps.forEach((e, i) => {
    assert.is(e.job, job);
    assert.is(e.done, i + 1);
    assert.is(e.total, total);
    const { job: _j, done: _d, total: _t, stage: _s, ...line } = e;
    assert.equal(line, lines[i], `event ${i + 1} = metrics line`);
  });
}

let teacher: Model;

test('train: progress = metrics.jsonl, abort saves and resolves interrupted, resume finishes; no SIGINT listener', async () => {
  const listeners = process.listenerCount('SIGINT');
  const dir = path.join(TMP, 'train');
  const r = recorder(3);
  let during = -1;
  const res = await train(fresh(), new Batcher(data('all', 1), { batchSize: 4, seed: 1 }), cfg(8), {
    outDir: dir, onProgress: (p) => { during = process.listenerCount('SIGINT'); r.onProgress(p); }, signal: r.signal,
  });
  assert.is(during, listeners, 'train added a SIGINT listener');
  assert.ok(res.interrupted);
  assert.is(res.state.step, 3);
  assertStepEvents(r.events, dir, 'train', 8);
  assert.ok(fs.existsSync(path.join(dir, 'trainer_state.json')), 'the checkpoint is saved');
  const m = Model.load(dir);
  const done = await train(m, new Batcher(data('all', 1), { batchSize: 4, seed: 1 }), cfg(8), { outDir: dir, resume: true });
  assert.not.ok(done.interrupted);
  assert.is(done.state.step, 8);
  assert.equal(metricsLines(dir).map((l) => l.step), [1, 2, 3, 4, 5, 6, 7, 8]);
  // a signal aborted before the start: resolves at once, interrupted, nothing trained
  const pre = new AbortController();
  pre.abort();
  const none = await train(fresh(), new Batcher(data('all', 1), { batchSize: 4, seed: 1 }), cfg(8), { signal: pre.signal });
  assert.ok(none.interrupted && none.state.step === 0);
  teacher = m;
});

test('distill: job "distill", abort resolves interrupted with the checkpoint', async () => {
  const dir = path.join(TMP, 'distill');
  const r = recorder(2);
  const res = await distill(fresh(9), teacher, new Batcher(data('all', 2), { batchSize: 4, seed: 2 }), cfg(6), { loss: 'fkl', outDir: dir, onProgress: r.onProgress, signal: r.signal });
  assert.ok(res.interrupted && res.state.step === 2);
  assertStepEvents(r.events, dir, 'distill', 6);
  assert.ok(fs.existsSync(path.join(dir, 'trainer_state.json')));
});

test('unlearn (GradDiff, with retain data): abort + resume ends bit-identical to an uninterrupted run', async () => {
  const run = async (dir: string, stopAt: number | null) => {
    const m = teacher.clone();
    const r = recorder(stopAt ?? Infinity);
    const forget = new Batcher(data('forget', 3), { batchSize: 2, seed: 3 });
    const retain = new Batcher(data('retain', 4), { batchSize: 2, seed: 4 });
    const res = await unlearn(m, forget, retain, { ...cfg(6), lr: 1e-3 }, { method: 'graddiff', outDir: dir, onProgress: r.onProgress, signal: r.signal });
    return { m, res, events: r.events };
  };
  const whole = await run(path.join(TMP, 'unlearn-whole'), null);
  assert.not.ok(whole.res.interrupted);
  assertStepEvents(whole.events, path.join(TMP, 'unlearn-whole'), 'unlearn', 6);
  const dir = path.join(TMP, 'unlearn-cut');
  const cut = await run(dir, 2);
  assert.ok(cut.res.interrupted && cut.res.state.step === 2);
  const m = Model.load(dir);
  const forget = new Batcher(data('forget', 3), { batchSize: 2, seed: 3 });
  const retain = new Batcher(data('retain', 4), { batchSize: 2, seed: 4 });
  const res = await unlearn(m, forget, retain, { ...cfg(6), lr: 1e-3 }, { method: 'graddiff', outDir: dir, resume: true });
  assert.is(res.state.step, 6);
  assert.ok(bitEqual(m.params, whole.m.params), 'the resumed run (retain position restored) equals the uninterrupted one');
  // NPO's frozen reference is not in the checkpoint: resuming without it is refused with a clear error
  const e = await unlearn(Model.load(dir), new Batcher(data('forget', 3), { batchSize: 2, seed: 3 }), null, cfg(8), { method: 'npo', params: { retainWeight: 0 }, outDir: dir, resume: true })
    .then(() => null, (x: { code?: string; message: string }) => x);
  assert.ok(e && e.code === 'ERR_ARGUMENT' && /reference/.test(e.message), String(e?.message));
});

test('relearn: events per learning rate (stage "lr=…"), abort resolves interrupted with the curves so far', async () => {
  const r = recorder(3);
  const held = data('forget', 5);
  const res = await relearn(teacher.clone(), data('forget', 6), {
    lrs: [1e-3, 3e-4], steps: 4, evalEvery: 2, batchSize: 2, seed: 1, direction: 'min',
    metric: async (m) => (await evalPackedLoss(m, held, 4)).loss, onProgress: r.onProgress, signal: r.signal,
  });
  assert.ok(res.interrupted);
  assert.is(res.curves.length, 0, 'the first learning rate did not finish');
  const steps = r.events.filter((e) => e.eval === undefined);
  assert.ok(steps.length >= 3 && steps.every((e) => e.job === 'relearn' && e.stage === 'lr=0.001' && e.total === 4 && Number.isFinite(e.loss)));
  assert.ok(r.events.some((e) => e.eval && Number.isFinite(e.eval.value)), 'an eval event carries the metric');
});

test('cache-teacher: job "cache-teacher" (done/total in windows), abort keeps whole shards and resume completes', async () => {
  const out = path.join(TMP, 'store');
  const d = data('all', 7);
  const ac = new AbortController();
  const events: CacheProgress[] = [];
  const res = await cacheTeacher(teacher, d, {
    k: 4, out, batchSize: 2, shardWindows: 4, signal: ac.signal,
    onProgress: (p) => { events.push(p); if (p.done >= 4) ac.abort(); },
  });
  assert.ok(res.interrupted);
  assert.ok(events.every((e) => e.job === 'cache-teacher' && e.total === d.count && e.done === e.windowsDone && Number.isFinite(e.elapsed_sec)));
  const again = await cacheTeacher(teacher, d, { k: 4, out, batchSize: 2, shardWindows: 4, resume: true });
  assert.not.ok(again.interrupted);
  assert.ok(again.shardsKept >= 1, 'the finished shard was kept');
  assert.is(again.manifest.shards.length, again.manifest.numShards);
});

test('the UNDO study: job "undo" with the stage, abort resolves { interrupted: true, stoppedIn } (no rejection)', async () => {
  const c: StudyConfig = {
    ...STUDIES.quick, seed: 5, seqLen: 32, batchSize: 4, pretrainSteps: 30, docs: 3000, evalPerForm: 2,
    relearn: { ...STUDIES.quick.relearn, steps: 2, evalEvery: 1, budgets: [2] },
  };
  const r = recorder(2);
  const rep = await runStudy(c, { outDir: path.join(TMP, 'study'), cacheDir: path.join(TMP, 'cache'), onProgress: r.onProgress, signal: r.signal });
  assert.ok(rep.interrupted, 'resolved interrupted');
  assert.match(rep.stoppedIn ?? '', /pretrain/);
  assert.equal(rep.rows, []);
  const steps = r.events.filter((e) => e.eval === undefined);
  assert.ok(steps.length >= 2 && steps.every((e) => e.job === 'undo' && /^pretrain /.test(e.stage ?? '') && e.total === 30));
  // the pretraining's checkpoint is in the cache: the same call continues from it
  const cached = fs.readdirSync(path.join(TMP, 'cache'), { recursive: true }).map(String);
  assert.ok(cached.some((f) => f.endsWith('trainer_state.json')), `no checkpoint in the cache: ${cached.join(', ')}`);
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

test.run();
