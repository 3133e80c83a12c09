/**
 * The UNDO study machinery: mean ± sd over seeds, the attack on a loss (direction 'min'), a study on the user's
 * own model and data (held-out cross-entropy) that resumes at the arm it was in with the same result, refuses
 * other settings in its directory, and the CLI: `undo --model … --seeds`, the smoke preset over two seeds with
 * its error-bar plot, and bad input.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Batcher, PackedDataset, packDocuments } from '../lib/data/datasets';
import { ByteTokenizer } from '../lib/data/tokenizer';
import { Model } from '../lib/models/model';
import { builtinBiographyDocs } from '../lib/tasks/biographies';
import { train } from '../lib/train/train';
import { evalPackedLossAccuracy, evalPackedLoss } from '../lib/train/evaluate';
import { relearn } from '../lib/unlearn/relearn';
import { aggregateReports, meanSd, ModelRow, runArms, StudyConfig, StudyInterrupted, StudyReport, STUDIES } from '../lib/undo/study';
import { dataTask } from '../lib/undo/tasks';
import { aggregateMarkdown, reportMarkdown } from '../lib/undo/report';
import { rejectsWith, ROOT, tinyConfig } from './helpers';
import { UndoError } from '../lib/core/errors';
import { Rng } from '../lib/core/rng';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-study-'));
const BIN = path.join(ROOT, 'bin', 'undo-native.js');

test('meanSd: sample standard deviation; aggregate rows match by name', () => {
  const m = meanSd([1, 2, 4, undefined, NaN]);
  assert.is(m.n, 3);
  assert.ok(Math.abs(m.mean - 7 / 3) < 1e-12);
  assert.ok(Math.abs(m.sd - Math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)) < 1e-12);
  assert.equal(meanSd([5]), { mean: 5, sd: 0, n: 1 });
  assert.is(meanSd([]).n, 0);
  const row = (name: string, retain: number, after: number, rob?: number): ModelRow => ({
    name, kind: name === 'base' ? 'base' : 'undo', retain, forget: 0.1, relearned: { 20: after / 2, 100: after }, computeFraction: 0.4, metrics: {}, ...(rob === undefined ? {} : { robustness: rob }),
  });
  const study = { ...STUDIES.quick, relearn: { ...STUDIES.quick.relearn, budgets: [20, 100] } };
  const rep = (rows: ModelRow[]): StudyReport => ({ study, rows, elapsedSec: 1 });
  // the second seed lists its rows in another order: rows are matched by name
  const a = aggregateReports([rep([row('base', 1, 1), row('UNDO α=0.6', 0.9, 0.3, 0.7)]), rep([row('UNDO α=0.6', 0.8, 0.5, 0.5), row('base', 1, 1)])], [1, 2], 3);
  const u = a.rows.find((r) => r.name === 'UNDO α=0.6')!;
  assert.ok(Math.abs(u.retain.mean - 0.85) < 1e-12 && Math.abs(u.retain.sd - Math.SQRT1_2 * 0.1) < 1e-12);
  assert.ok(Math.abs(u.relearned[100].mean - 0.4) < 1e-12 && Math.abs(u.relearned[20].mean - 0.2) < 1e-12);
  assert.ok(Math.abs(u.robustness.mean - 0.6) < 1e-12);
  assert.is(a.rows[0].robustness.n, 0, 'base has no robustness');
  const md = aggregateMarkdown(a);
  assert.match(md, /\| UNDO α=0\.6 \| 85\.0 ± 7\.1% \| 10\.0 ± 0\.0% \| 20\.0 ± 7\.1% \| 40\.0 ± 14\.1% \| 0\.40 ± 0\.00 \| 0\.60 ± 0\.14 \|/);
});

/** A tiny model that has learned both splits of the built-in biographies (forget: 4 people, retain: the others). */
async function bioBase(): Promise<Model> {
  const tok = new ByteTokenizer();
  const m = Model.create(tinyConfig('llama', { vocabSize: tok.vocabSize, maxPositions: 64 }), { seed: 3 }, tok);
  const data = packDocuments(tok, builtinBiographyDocs('all', 1), 48, { seed: 1 });
  await train(m, new Batcher(data, { batchSize: 8, seed: 1 }), {
    steps: 120, gradAccum: 1, lr: 3e-3, warmup: 10, schedule: 'cosine', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0,
  });
  return m;
}

let base: Model;

test('evalPackedLossAccuracy: the loss of evalPackedLoss and a next-token accuracy counted by hand', async () => {
  base = await bioBase();
  const data = packDocuments(base.tokenizer, builtinBiographyDocs('forget', 1), 48, { seed: 2 });
  const r = await evalPackedLossAccuracy(base, data, { batchSize: 3, maxWindows: 5 });
  const sub = new PackedDataset(data.tokens.subarray(0, 5 * 48 + 1), 48, 5);
  assert.ok(Math.abs(r.loss - (await evalPackedLoss(base, sub, 5)).loss) < 1e-5, 'same loss as evalPackedLoss on the same windows');
  let correct = 0;
  for (let i = 0; i < 5; i++) {
    await base.native.forward(data.inputs(i), 1, 48);
    const logits = await base.native.logits(null);
    const V = base.config.vocabSize;
    for (let t = 0; t < 48; t++) {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[t * V + v] > logits[t * V + best]) best = v;
      if (best === data.targets(i)[t]) correct++;
    }
  }
  assert.is(r.tokens, 5 * 48);
  assert.ok(Math.abs(r.accuracy - correct / (5 * 48)) < 1e-12, `accuracy ${r.accuracy} vs ${correct / 240}`);
  assert.ok(r.accuracy > 0.1, `the base model has learned something of the text (${r.accuracy}; a byte vocabulary's chance is < 0.01)`);
});

test('relearn with direction min: the attacker\'s best is the lowest loss, its budgets never rise, metrics ride along', async () => {
  const data = packDocuments(base.tokenizer, builtinBiographyDocs('forget', 1), 48, { seed: 2 });
  const metric = async (m: Model) => {
    const e = await evalPackedLossAccuracy(m, data, { maxWindows: 4 });
    return { value: e.loss, metrics: { acc: e.accuracy } };
  };
  const r = await relearn(base, data, { lrs: [3e-3, 1e-5], steps: 6, evalEvery: 3, batchSize: 4, metric, direction: 'min' });
  for (const p of r.best) for (const c of r.curves) assert.ok(p.value <= c.points.find((q) => q.step === p.step)!.value + 1e-12);
  assert.ok(r.atBudget[6] <= r.atBudget[3] && r.atBudget[3] <= r.atBudget[0]);
  assert.ok(r.atBudget[6] < r.atBudget[0], 'the attack lowers the forget loss');
  assert.ok(r.atBudgetMetrics && typeof r.atBudgetMetrics[6].acc === 'number');
});

function userConfig(seed: number): StudyConfig {
  return {
    name: 'model', preset: 'test', seed, seqLen: 48, batchSize: 8, pretrainSteps: 0, pretrainLr: 0, docs: 0, wordProblems: 0,
    methods: ['maxent', { method: 'graddiff', sam: 0.05 }], unlearn: { maxent: { steps: 15, lr: 1e-3, retainWeight: 4 }, graddiff: { steps: 6, lr: 5e-4, retainWeight: 4 } },
    alphas: [0.5], beta: 0.1, fullDistill: false, oracle: false, distillLr: 3e-3, distillMaxSteps: 24, distillEvalEvery: 8, tolerance: 0.02,
    relearn: { lrs: [2e-3], steps: 6, evalEvery: 3, budgets: [3, 6], seed: 5 }, evalPerForm: 0,
  };
}

function bioTask(seed: number) {
  return dataTask(base.tokenizer, { forget: builtinBiographyDocs('forget', 1), retain: builtinBiographyDocs('retain', 1), seqLen: 48, seed, evalWindows: 8 });
}

const strip = (r: StudyReport) => r.rows.map(({ attack, seconds, ...row }) => ({ ...row, best: attack?.best, timed: !!seconds?.attack }));

test('a study on a user\'s model: arms in order, unlearning raises the forget loss, resumes at the arm it was in with the same result', async () => {
  const dirA = path.join(TMP, 'user-a'), dirB = path.join(TMP, 'user-b');
  const a = await runArms(userConfig(1), bioTask(1), { base }, { outDir: dirA });
  assert.equal(a.rows.map((r) => r.name), ['base', 'unlearn-only (maxent)', 'unlearn-only (graddiff+SAM ρ=0.05)', 'UNDO α=0.5']);
  assert.is(a.task!.unit, 'loss');
  const [b0, u] = a.rows;
  assert.ok(u.forget > b0.forget + 0.05, `MaxEnt raises the held-out forget loss (${b0.forget} → ${u.forget})`);
  const undo = a.rows[3];
  assert.ok(undo.tokens! > 0 && undo.tokens! <= 24 * 8 * 48 && undo.tokens! % (8 * 48) === 0, `distillation tokens ${undo.tokens}`);
  for (const r of a.rows) assert.ok(r.relearned[6] <= r.relearned[3] + 1e-12 && r.relearned[3] <= r.forget + 1e-12, `${r.name}: the attack never raises the loss`);
  assert.ok(typeof a.rows[1].metrics.forget_accuracy === 'number' && typeof a.rows[1].relearnedMetrics![6].forget_accuracy === 'number');
  for (const f of ['report.md', 'report.json', 'pareto.svg', 'study.json']) assert.ok(fs.existsSync(path.join(dirA, f)), f);
  assert.match(reportMarkdown(a), /\| unlearn-only \(maxent\) \| \d\.\d{3} \| \d\.\d{3} \|/);

  // interrupted during UNDO's distillation (after 10 steps), then run again: the same rows as the uninterrupted run
  const ac = new AbortController();
  let steps = 0;
  await rejectsWith(runArms(userConfig(1), bioTask(1), { base }, {
    outDir: dirB, signal: ac.signal,
    hooks: (stage) => ({ hooks: { onStep: () => { if (stage.startsWith('UNDO') && ++steps === 10) ac.abort(); } }, stop: () => undefined }),
  }), /interrupted in UNDO α=0\.5/, 'interrupt', StudyInterrupted);
  assert.ok(fs.existsSync(path.join(dirB, 'arms', 'unlearn-only-maxent', 'arm.json')), 'the finished arm is saved');
  assert.ok(!fs.existsSync(path.join(dirB, 'arms', 'undo-a0.5', 'arm.json')) && fs.existsSync(path.join(dirB, 'arms', 'undo-a0.5', 'model', 'trainer_state.json')), 'UNDO checkpointed, not done');
  const log: string[] = [];
  const b = await runArms(userConfig(1), bioTask(1), { base }, { outDir: dirB, log: (m) => log.push(m) });
  assert.ok(log.some((l) => /unlearn-only \(maxent\): done earlier/.test(l)) && log.some((l) => /UNDO α=0\.5: continuing the distillation/.test(l)), log.join('\n'));
  assert.equal(strip(b), strip(a));
  // a third run recomputes nothing and reports the same
  const log2: string[] = [];
  const c = await runArms(userConfig(1), bioTask(1), { base }, { outDir: dirB, log: (m) => log2.push(m) });
  assert.ok(!log2.some((l) => /^attacking|distilling|unlearning with/.test(l)), log2.join('\n'));
  assert.equal(strip(c), strip(a));
  // other settings in the same directory are refused by name; arms may be added (the others are reused)
  await rejectsWith(runArms({ ...userConfig(1), distillLr: 1e-3 }, bioTask(1), { base }, { outDir: dirB }), /other settings \(study\.distillLr differs\)/, 'manifest', UndoError);
  await rejectsWith(runArms({ ...userConfig(1), methods: ['graddiff'] }, bioTask(1), { base }, { outDir: dirB }), /study\.methods\[0\] \(the teacher\) differs/, 'manifest', UndoError);
  const log3: string[] = [];
  const d = await runArms({ ...userConfig(1), alphas: [0.5, 0.9] }, bioTask(1), { base }, { outDir: dirB, log: (m) => log3.push(m) });
  assert.equal(d.rows.map((r) => r.name), [...a.rows.map((r) => r.name), 'UNDO α=0.9']);
  const work = log3.filter((l) => /^attacking|distilling|unlearning with/.test(l));
  assert.is(work.length, 2, work.join('\n'));
  assert.ok(work[0] === 'UNDO α=0.9: distilling' && work[1].startsWith('attacking UNDO α=0.9'), work.join('\n'));
  assert.equal(strip(d).slice(0, 4), strip(a));
});

function cli(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, UNDO_CACHE: path.join(TMP, 'cache') } });
}

test('CLI: undo --model --forget --retain --seeds writes per-seed and aggregate reports; bad input is a clean error', () => {
  const dir = path.join(TMP, 'bio-model');
  base.save(dir);
  const out = path.join(TMP, 'cli-user');
  const r = cli(['undo', '--model', dir, '--forget', 'biographies:forget', '--retain', 'biographies:retain', '--seq-len', '48', '--batch-size', '8',
    '--unlearn-steps', '10', '--unlearn-lr', '1e-3', '--alpha', '0.4,0.8', '--steps', '16', '--eval-every', '8', '--lr', '3e-3',
    '--attack-lrs', '2e-3', '--attack-steps', '4', '--attack-eval-every', '2', '--seeds', '3,4', '--out', out, '--no-progress']);
  assert.is(r.status, 0, r.stderr + r.stdout);
  for (const f of ['report.md', 'report.json', 'pareto.svg', 'seed-3/report.md', 'seed-4/report.json', 'seed-4/arms/undo-a0.8/arm.json']) assert.ok(fs.existsSync(path.join(out, f)), f);
  const agg = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  assert.equal(agg.seeds, [3, 4]);
  assert.equal(agg.rows.map((x: { name: string }) => x.name), ['base', 'unlearn-only (maxent)', 'UNDO α=0.4', 'UNDO α=0.8']);
  const s3 = JSON.parse(fs.readFileSync(path.join(out, 'seed-3', 'report.json'), 'utf8'));
  const s4 = JSON.parse(fs.readFileSync(path.join(out, 'seed-4', 'report.json'), 'utf8'));
  const u = agg.rows[1];
  assert.ok(Math.abs(u.forget.mean - (s3.rows[1].forget + s4.rows[1].forget) / 2) < 1e-12, 'the aggregate is the mean of the seeds');
  assert.ok(s3.rows[1].forget !== s4.rows[1].forget, 'the seeds differ');
  assert.is(s3.study.relearn.seed, 3, 'the attack seed follows the study seed and is recorded');
  assert.match(r.stdout, /\| UNDO α=0\.8 \| \d\.\d{3} ± \d\.\d{3} \|/);
  const svg = fs.readFileSync(path.join(out, 'pareto.svg'), 'utf8');
  assert.ok(svg.startsWith('<svg') && svg.includes('UNDO α=0.4'), 'plot with labels');

  const bad = (args: string[], re: RegExp) => {
    const x = cli(args);
    assert.is(x.status, 1, `${args.join(' ')}: ${x.stdout}${x.stderr}`);
    assert.match(x.stderr, re);
    assert.not.match(x.stderr, /at .*\.js:\d+/, 'no stack trace');
  };
  bad(['undo', '--forget', 'biographies:forget'], /--forget needs --model/);
  bad(['undo', '--model', dir, '--forget', 'biographies:forget'], /--model needs --forget and --retain/);
  bad(['undo', '--model', dir, '--forget', 'biographies:forget', '--retain', 'biographies:forget'], /same data/);
  bad(['undo', '--seeds', '1,1', '--out', path.join(TMP, 'x')], /a seed is repeated/);
  bad(['undo', '--seeds', '1,x'], /--seeds: "x" is not a non-negative integer/);
  bad(['undo', '--model', dir, '--forget', 'biographies:forget', '--retain', 'biographies:retain', '--alpha', '0.2,1.5'], /--alpha: "1\.5" is not in \[0, 1\]/);
  bad(['undo', '--model', path.join(TMP, 'nope'), '--forget', 'a.txt', '--retain', 'b.txt'], /nope/);
  bad(['relearn', '--model', dir, '--lrs', '1e-3,-1'], /--lrs: "-1" is not a positive number/);
  bad(['undo', '--model', dir, '--forget', 'biographies:forget', '--retain', 'biographies:retain', '--attack-lrs', 'papers'], /--attack-lrs: "papers" is not a positive number/);
});

test('CLI: the smoke preset over two seeds (arithmetic, oracle, SAM arm, full distillation), resumable', () => {
  const out = path.join(TMP, 'smoke');
  const r = cli(['undo', '--preset', 'smoke', '--seeds', '1,2', '--out', out, '--no-progress']);
  assert.is(r.status, 0, r.stderr + r.stdout);
  const agg = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  assert.equal(agg.rows.map((x: { name: string }) => x.name),
    ['base', 'oracle (retain data only)', 'unlearn-only (maxent)', 'unlearn-only (maxent+SAM ρ=0.05)', 'unlearn + full distill', 'UNDO α=0.6']);
  assert.is(agg.task.unit, 'accuracy');
  assert.match(fs.readFileSync(path.join(out, 'seed-1', 'report.md'), 'utf8'), /Time: unlearning \d+\.\d min, distillation \d+\.\d min, attacks \d+\.\d min/);
  assert.match(fs.readFileSync(path.join(out, 'report.md'), 'utf8'), /^Seed 2: unlearning \d+\.\d min/m);
  const seed1 = JSON.parse(fs.readFileSync(path.join(out, 'seed-1', 'report.json'), 'utf8'));
  for (const row of seed1.rows) assert.ok(row.seconds.attack > 0 && (row.kind === 'base' || row.kind === 'oracle' || row.seconds.train > 0), `${row.name}: times`);
  for (const row of agg.rows) for (const k of ['retain', 'forget']) assert.ok(row[k].n === 2 && row[k].mean >= 0 && row[k].mean <= 1, `${row.name} ${k}`);
  const undo = agg.rows[5];
  assert.ok(undo.computeFraction.mean > 0 && undo.computeFraction.mean <= 60 * 8 * 64 / (300 * 8 * 64) + 1e-12, `compute ${undo.computeFraction.mean}`);
  // the second run finds every arm done and reports the same
  const again = cli(['undo', '--preset', 'smoke', '--seeds', '1,2', '--out', out, '--no-progress']);
  assert.is(again.status, 0, again.stderr);
  assert.not.match(again.stdout, /^(attacking|unlearning with|pretraining)/m);
  const agg2 = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  assert.equal(agg2.rows, agg.rows);
  // the attack options replace the preset's: another attack is other settings for this directory
  const paper = cli(['undo', '--preset', 'smoke', '--seeds', '1,2', '--out', out, '--no-progress', '--attack-lrs', 'paper']);
  assert.is(paper.status, 1, paper.stdout);
  assert.match(paper.stderr, /other settings \(study\.relearn differs\)/);
});

test('kill -9 at two random points, then run again: the smoke study ends with the same results as an uninterrupted run', async () => {
  const out = path.join(TMP, 'smoke-kill');
  const args = ['undo', '--preset', 'smoke', '--seed', '1', '--out', out, '--no-progress'];
  const rng = new Rng(20261207);
  for (let k = 0; k < 2; k++) {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, UNDO_CACHE: path.join(TMP, 'cache-kill') }, stdio: 'ignore' });
    const delay = 1500 + Math.floor(rng.next() * 8000);
    const timer = setTimeout(() => child.kill('SIGKILL'), delay);
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    clearTimeout(timer);
    assert.ok(code === null || code === 0, `run ${k} ended with ${code}`);
  }
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, UNDO_CACHE: path.join(TMP, 'cache-kill') } });
  assert.is(r.status, 0, r.stderr + r.stdout);
  const rows = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8')).rows.map((x: ModelRow) => ({ name: x.name, retain: x.retain, forget: x.forget, relearned: x.relearned, tokens: x.tokens }));
  // the smoke test above ran seed 1 uninterrupted (same preset, its own cache)
  assert.equal(rows(path.join(out, 'report.json')), rows(path.join(TMP, 'smoke', 'seed-1', 'report.json')));
});

test('Ctrl-C (SIGINT) during a study: it says where it stopped and exits with 130; the same command continues', async () => {
  const out = path.join(TMP, 'smoke-int');
  const args = ['undo', '--preset', 'smoke', '--seed', '2', '--out', out, '--no-progress'];
  const env = { ...process.env, UNDO_CACHE: path.join(TMP, 'cache-kill') };  // pretrained by the kill test
  const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout.on('data', (d) => {
    stdout += d;
    // interrupt once the first unlearning arm has started
    if (/unlearning with maxent/.test(stdout) && !child.killed) child.kill('SIGINT');
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  assert.is(code, 130, stdout);
  assert.match(stdout, /interrupted in .*: what finished is saved in .*smoke-int; run the same command again to continue there/);
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env });
  assert.is(r.status, 0, r.stderr);
  assert.ok(fs.existsSync(path.join(out, 'report.md')));
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

test.run();
