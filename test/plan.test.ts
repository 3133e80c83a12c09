/**
 * The distillation scaling-law planner (lib/plan) and its optimizers (lib/core/optimize.ts): the law's shape
 * against the paper's stated results (the capacity-gap U shape, L_S → L_T for weak teachers, supervised
 * pretraining always better when the teacher is trained for one student, the crossover growing with the
 * student), the FLOP count against the paper's F(N), budgets that add up, allocations no brute-force search
 * beats, Levenberg-Marquardt on known problems, calibration recovering known coefficients, run directories
 * read into points, law files, and the CLI.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { goldenSection, levenbergMarquardt, minimize1D, minimizeBox } from '../lib/core/optimize';
import { Rng } from '../lib/core/rng';
import { configToHF, ModelConfig, presetConfig } from '../lib/models/model';
import { calibrate, fitSupervised, loadLaw, readPointsFile, readRunPoints, saveLaw } from '../lib/plan/calibrate';
import {
  capacitySwitch, configForwardFlops, distilledLoss, flopSigmas, formatCount, forwardFlopsPerToken, nonEmbeddingParams, PAPER_LAW,
  parseCount, rangeWarnings, supervisedLoss,
} from '../lib/plan/law';
import { bestDistillation, bestSupervised, crossoverBudget, plan } from '../lib/plan/planner';
import { measureThroughput } from '../lib/plan/throughput';
import { ROOT, throwsUndo } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-plan-'));
const close = (a: number, b: number, rel: number, msg = '') => assert.ok(Math.abs(a - b) <= rel * Math.max(Math.abs(a), Math.abs(b)), `${msg}: ${a} vs ${b}`);

test('F(N): the paper\'s σ1, σ2 and the count of a model in the paper\'s shape', () => {
  const { sigma1, sigma2 } = flopSigmas();
  close(sigma1, 0.03786, 1e-3, 'σ1');
  close(sigma2, 2.2013, 1e-4, 'σ2');
  // ρ = d/n_layers = 128, MHA (g_size 1), gated FFN of 8/3·d: ω = 2 + 2 + 3·8/3 = 12, as the paper's models
  const cfg: ModelConfig = { ...presetConfig('tiny'), hiddenSize: 768, numLayers: 6, numHeads: 12, numKvHeads: 12, headDim: 64, intermediateSize: 2048, vocabSize: 32768, tieWordEmbeddings: true };
  const N = nonEmbeddingParams(cfg);
  close(N, 12 * 768 ** 3 / 128, 1e-3, 'N = ω d³ / ρ (norm weights aside)');
  close(configForwardFlops(cfg, 4096), forwardFlopsPerToken(N), 1e-3, 'exact count vs F(N)');
  // the plain 2N rule undercounts at these sizes
  assert.ok(forwardFlopsPerToken(143e6) > 1.3 * 2 * 143e6);
});

test('supervised law: decreasing in N and D, tends to E', () => {
  const s = PAPER_LAW.supervised;
  assert.ok(supervisedLoss(1e9, 1e10) < supervisedLoss(5e8, 1e10));
  assert.ok(supervisedLoss(1e9, 2e10) < supervisedLoss(1e9, 1e10));
  close(supervisedLoss(1e30, 1e30), s.E, 1e-3, 'N, D → ∞');
  // E + (A/N^α + B/D^β)^γ by hand at 1B params, 20B tokens
  const v = 1.22 + Math.pow(3355 / Math.pow(1e9, 0.408) + 18186 / Math.pow(2e10, 0.431), 0.452);
  close(supervisedLoss(1e9, 2e10), v, 1e-12, 'closed form');
});

test('capacity gap: L_S(L_T) is U-shaped; weak teachers are copied (L_S → L_T); L_S ≥ L_T', () => {
  for (const [NS, DS] of [[143e6, 3e9], [1e9, 2e10], [7.75e9, 2e11]]) {
    const Ls = supervisedLoss(NS, DS);
    const r = minimize1D((LT) => distilledLoss(NS, DS, LT), 1.3, 2 * Ls, { grid: 300 });
    const ratio = r.x / Ls;
    // shared/research/scaling_laws.md §4: the best teacher's loss is 0.66–0.92 of the student's supervised loss
    assert.ok(ratio > 0.6 && ratio < 0.95, `L_T*/L̃_S = ${ratio}`);
    assert.ok(distilledLoss(NS, DS, r.x * 0.8) > r.f + 1e-3, 'a much stronger teacher is worse (the U\'s left side)');
    assert.ok(distilledLoss(NS, DS, r.x * 1.15) > r.f + 1e-3, 'a weaker teacher is worse');
    const weak = 1.5 * Ls;
    close(distilledLoss(NS, DS, weak), weak, 1e-9, 'weak teacher copied');
    for (const LT of [1.5, 1.9, 2.3, 2.8, 3.5]) assert.ok(distilledLoss(NS, DS, LT) >= LT);
  }
  // the switch: about 1 well below L_T/L̃_S = d1, about 0 above it
  assert.ok(capacitySwitch(2.0, 2.0 / 0.5) > 0.99);
  assert.ok(capacitySwitch(2.0, 2.0 / 1.6) < 1e-6);
});

test('budgets add up: every scenario spends exactly C', () => {
  const C = 3e21;
  for (const t of [
    { situation: 'free' as const }, { situation: 'exists' as const, params: 7.75e9, tokens: 512e9 },
    { situation: 'train' as const }, { situation: 'train-cached' as const }, { situation: 'train' as const, params: 2e9 },
  ]) {
    const d = bestDistillation(1e9, forwardFlopsPerToken(1e9), C, t)!;
    close(d.flops.student + d.flops.teacherInference + d.flops.teacherTraining, C, 1e-9, t.situation);
    if (t.situation === 'exists') close(d.teacherLoss, supervisedLoss(7.75e9, 512e9), 1e-12, 'teacher loss from the law');
    if (t.situation === 'train' && 'params' in t) assert.is(d.teacherParams, 2e9);
  }
  assert.is(bestDistillation(1e9, forwardFlopsPerToken(1e9), 1e20, { situation: 'train', params: 7e9, tokens: 1e12 }), null, 'the fixed teacher costs more than the budget');
});

test('teacher training: no brute-force allocation beats the planner\'s', () => {
  const NS = 1e9, FS = forwardFlopsPerToken(NS), C = 1e22;
  const d = bestDistillation(NS, FS, C, { situation: 'train' })!;
  const rng = new Rng(12345);
  const rnd = () => rng.next();
  for (let i = 0; i < 3000; i++) {
    const NT = Math.exp(Math.log(1e7) + rnd() * Math.log(1e6)), phi = rnd();
    const FT = forwardFlopsPerToken(NT), DT = phi * C / (3 * FT), DS = (1 - phi) * C / (3 * FS + FT);
    assert.ok(distilledLoss(NS, DS, supervisedLoss(NT, DT)) >= d.loss - 1e-9, `NT ${NT}, φ ${phi}`);
  }
});

test('the paper\'s recipes: a teacher trained for one student loses to supervised; crossovers grow with the student', () => {
  for (const NS of [546e6, 1.82e9, 7.75e9]) {
    const FS = forwardFlopsPerToken(NS);
    for (const C of [1e21, 1e22, 1e23, 1e24, 1e25]) {
      const d = bestDistillation(NS, FS, C, { situation: 'train' })!;
      assert.ok(bestSupervised(NS, FS, C).loss < d.loss, `supervised better at ${NS}, ${C}`);
    }
  }
  for (const t of [{ situation: 'exists' as const, params: 7.75e9, tokens: 512e9 }, { situation: 'free' as const }]) {
    const xs = [546e6, 1.82e9, 7.75e9].map((NS) => crossoverBudget(NS, forwardFlopsPerToken(NS), t).flops);
    assert.ok(xs.every((x) => x !== null), `${t.situation}: ${xs}`);
    assert.ok(xs[0]! < xs[1]! && xs[1]! < xs[2]!, `${t.situation} crossovers grow with the student: ${xs}`);
    // below the crossover distillation wins, above it supervised
    const NS = 1.82e9, FS = forwardFlopsPerToken(NS);
    assert.ok(bestSupervised(NS, FS, xs[1]! / 3).loss > bestDistillation(NS, FS, xs[1]! / 3, t)!.loss);
    assert.ok(bestSupervised(NS, FS, xs[1]! * 3).loss < bestDistillation(NS, FS, xs[1]! * 3, t)!.loss);
  }
});

test('plan: rows per student, the best, warnings outside the fitted range, input errors', () => {
  const p = plan({ budget: 1e21, students: [{ name: '50M', params: 50e6 }, { name: '1.82B', params: 1.82e9 }], teacher: { situation: 'exists', params: 7.75e9, tokens: 512e9 } });
  assert.is(p.students.length, 2);
  const all = p.students.flatMap((s) => [s.supervised.loss, s.distill!.loss]);
  close(p.best.loss, Math.min(...all), 1e-12, 'best');
  assert.ok(p.warnings.some((w) => w.includes('50M') && w.includes('outside the fitted')), p.warnings.join('\n'));
  assert.ok(p.optimal!.supervised.params >= 143e6 && p.optimal!.supervised.params <= 7.75e9);
  assert.equal(rangeWarnings({ studentParams: 1e9, teacherLoss: 2.2, studentTokens: 1e11 }), []);
  assert.match(rangeWarnings({ studentParams: 1e9, studentTokens: 1e6 })[0], /below the fitted/);
  throwsUndo(() => plan({ budget: 1e21, students: [{ name: 'x', params: 1e9 }], teacher: { situation: 'exists', loss: 2 } }), 'size');
  throwsUndo(() => plan({ budget: 1e21, students: [{ name: 'x', params: 1e9 }], teacher: { situation: 'exists', params: 1e9 } }), 'loss');
  throwsUndo(() => plan({ budget: 1e21, students: [{ name: 'x', params: 1e9 }], teacher: { situation: 'free', loss: 1.0 } }), 'irreducible');
  throwsUndo(() => plan({ budget: -1, students: [{ name: 'x', params: 1e9 }], teacher: { situation: 'free' } }), 'budget');
  throwsUndo(() => plan({ budget: 1e21, students: [{ name: 'x', params: 1e9 }], teacher: { situation: 'train', loss: 2 } }), '--teacher-loss');
});

test('counts: parse and format', () => {
  assert.is(parseCount('143M'), 143e6);
  assert.is(parseCount('7.75B'), 7.75e9);
  assert.is(parseCount('1e21'), 1e21);
  assert.is(parseCount('2t'), 2e12);
  assert.ok(Number.isNaN(parseCount('lots')));
  assert.is(formatCount(1.82e9), '1.82B');
  assert.is(formatCount(999.9e6), '1B');
  assert.is(formatCount(143e6), '143M');
});

test('optimizers: golden section, grid + refinement, box', () => {
  close(goldenSection((x) => (x - 1.3) ** 2, 0, 4).x, 1.3, 1e-6);
  // two basins: the grid finds the deeper one
  const f = (x: number) => Math.min((x + 2) ** 2 + 0.5, 3 * (x - 3) ** 2);
  close(minimize1D(f, -5, 5).x, 3, 1e-6);
  const r = minimizeBox(([x, y]) => (x - 0.3) ** 2 + 10 * (y + 0.7) ** 2 + x * y, [-2, -2], [2, 2]);
  // minimum of the quadratic: ∇ = 0 → 2(x−.3) + y = 0, 20(y+.7) + x = 0, so x = .3 − y/2 and 19.5y = −14.3
  const y = -14.3 / 19.5, x = 0.3 - y / 2;
  close(r.x[0], x, 1e-5, 'x');
  close(r.x[1], y, 1e-5, 'y');
});

test('Levenberg-Marquardt: Rosenbrock, an exponential fit, bounds, Huber against an outlier', () => {
  const ros = levenbergMarquardt((p) => [10 * (p[1] - p[0] * p[0]), 1 - p[0]], [-1.2, 1]);
  close(ros.params[0], 1, 1e-6, 'x');
  close(ros.params[1], 1, 1e-6, 'y');
  assert.ok(ros.converged);
  const xs = Array.from({ length: 20 }, (_, i) => i / 4);
  const ys = xs.map((x) => 2.5 * Math.exp(-0.7 * x) + 0.3);
  const res = (p: number[]) => xs.map((x, i) => p[0] * Math.exp(-p[1] * x) + p[2] - ys[i]);
  const fit = levenbergMarquardt(res, [1, 1, 0]);
  [2.5, 0.7, 0.3].forEach((v, j) => close(fit.params[j], v, 1e-6, `p${j}`));
  const bounded = levenbergMarquardt(res, [1, 1, 0], { upper: [2, 5, 5] });
  assert.ok(bounded.params[0] <= 2);
  // a line with one gross outlier: least squares is pulled, Huber is not
  const lx = Array.from({ length: 15 }, (_, i) => i);
  const ly = lx.map((x) => 1 + 0.5 * x);
  ly[7] += 30;
  const lres = (p: number[]) => lx.map((x, i) => p[0] + p[1] * x - ly[i]);
  const ls = levenbergMarquardt(lres, [0, 0]);
  const hub = levenbergMarquardt(lres, [0, 0], { huber: 0.1, maxIterations: 2000 });
  assert.ok(Math.abs(ls.params[0] - 1) > 0.5, `least squares pulled: ${ls.params}`);
  close(hub.params[0], 1, 1e-2, 'Huber intercept');
  close(hub.params[1], 0.5, 1e-3, 'Huber slope');
});

/** points of a known law, with ±0.1% multiplicative noise */
function synthetic() {
  const rng = new Rng(7);
  const rnd = () => rng.next();
  const supervised = [], distill = [];
  for (const N of [143e6, 340e6, 975e6, 2.72e9, 7.75e9]) for (const M of [20, 60, 200]) supervised.push({ params: N, tokens: N * M, loss: supervisedLoss(N, N * M) * (1 + 0.002 * (rnd() - 0.5)) });
  for (const N of [143e6, 546e6, 1.82e9]) for (const M of [20, 100]) for (const LT of [1.9, 2.2, 2.5, 2.8]) distill.push({ params: N, tokens: N * M, teacherLoss: LT, loss: distilledLoss(N, N * M, LT) * (1 + 0.002 * (rnd() - 0.5)) });
  return { supervised, distill };
}

test('calibration recovers a known supervised law from a distant start and fits the distillation law', () => {
  const data = synthetic();
  const start = { supervised: { E: 1.0, A: 1000, B: 5000, alpha: 0.3, beta: 0.3, gamma: 0.6 }, distillation: { ...PAPER_LAW.distillation, c0: 1.5, d1: 1.1, A: 1000, B: 10000 }, source: 'test start' };
  const r = calibrate(data, { start });
  const s = r.law.supervised;
  close(s.E, 1.22, 0.05, 'E');
  // the exponents trade off against A, B within the noise; the predictions are what must match
  close(s.alpha, 0.408, 0.2, 'α');
  close(s.beta, 0.431, 0.2, 'β');
  close(s.gamma, 0.452, 0.2, 'γ');
  for (const [N, D] of [[5e8, 3e10], [4e9, 1e11]]) close(supervisedLoss(N, D, s), supervisedLoss(N, D), 2e-3, `unseen supervised ${N}`);
  assert.ok(r.supervised!.mape < 1e-3, `supervised MAPE ${r.supervised!.mape}`);
  assert.ok(r.supervised!.looMape! < 3e-3, `supervised leave-one-out ${r.supervised!.looMape}`);
  assert.ok(r.distillation!.mape < 1.5e-3, `distillation MAPE ${r.distillation!.mape}`);
  // the fitted law predicts an unseen distillation run
  const N = 975e6, D = 50 * N;
  close(distilledLoss(N, D, 2.3, r.law), distilledLoss(N, D, 2.3), 5e-3, 'unseen point');
  assert.is(r.law.distillation.c1, start.distillation.c1, 'c1 kept');
  throwsUndo(() => fitSupervised(data.supervised.slice(0, 5)), 'needs more than 6 points');
});

test('calibration inputs: points files, run directories, law files', () => {
  const pts = path.join(TMP, 'points.jsonl');
  fs.writeFileSync(pts, '{"params": 1e8, "tokens": 2e9, "loss": 3.1}\n\n{"params": 1e8, "tokens": 2e9, "teacher_loss": 2.5, "loss": 3.0}\n');
  const d = readPointsFile(pts);
  assert.is(d.supervised.length, 1);
  assert.is(d.distill[0].teacherLoss, 2.5);
  fs.writeFileSync(pts, '{"params": 1e8, "tokens": -2, "loss": 3.1}\n');
  throwsUndo(() => readPointsFile(pts), 'points.jsonl:1', '"tokens"');
  // a run directory as pretrain / distill --out write it
  const run = path.join(TMP, 'run');
  fs.mkdirSync(run);
  const cfg = presetConfig('tiny');
  fs.writeFileSync(path.join(run, 'config.json'), JSON.stringify(configToHF(cfg)));
  const lines = [
    { step: 1, loss: 5, tokens: 512 }, { step: 1, eval: { val_loss: 4.0 } }, { step: 2, loss: 4, tokens: 1024 }, { step: 2, eval: { val_loss: 3.5, retain: 0.2 } },
  ];
  fs.writeFileSync(path.join(run, 'metrics.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  const last = readRunPoints([run]);
  assert.equal(last.supervised.map((p) => [p.params, p.tokens, p.loss]), [[nonEmbeddingParams(cfg), 1024, 3.5]]);
  assert.is(readRunPoints([run], { allEvals: true }).supervised.length, 2);
  fs.writeFileSync(path.join(run, 'trainer_state.json'), JSON.stringify({ step: 2, meta: { kind: 'distill', teacher_val_loss: 3.2 } }));
  assert.is(readRunPoints([run]).distill[0].teacherLoss, 3.2);
  fs.writeFileSync(path.join(run, 'trainer_state.json'), JSON.stringify({ step: 2, meta: { kind: 'distill', teacher_val_loss: null } }));
  throwsUndo(() => readRunPoints([run]), "teacher's val_loss");
  throwsUndo(() => readRunPoints([TMP]), 'config.json');
  // law files
  const r = calibrate(synthetic(), {});
  const lawFile = path.join(TMP, 'law.json');
  saveLaw(lawFile, r);
  const back = loadLaw(lawFile);
  assert.equal(back.supervised, r.law.supervised);
  assert.equal(back.distillation, r.law.distillation);
  fs.writeFileSync(lawFile, JSON.stringify({ supervised: { ...PAPER_LAW.supervised, gamma: 'x' }, distillation: PAPER_LAW.distillation }));
  throwsUndo(() => loadLaw(lawFile), 'supervised.gamma');
});

test('throughput: the probe measurement gives a positive FLOP rate from the engine\'s own step', async () => {
  const t = await measureThroughput({ config: presetConfig('micro'), seq: 64, batch: 1, steps: 1 });
  assert.ok(t.tokensPerSec > 0 && Number.isFinite(t.tokensPerSec));
  close(t.flopsPerSec, t.tokensPerSec * 3 * configForwardFlops(presetConfig('micro'), 64), 1e-12, 'rate');
});

const BIN = path.join(ROOT, 'bin', 'undo-native.js');
const cli = (args: string[]) => spawnSync(process.execPath, [BIN, 'plan', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });

test('CLI: plan prints the table, the crossovers and the recipe; JSON; calibration; clear errors', () => {
  const r = cli(['--flops', '1e21', '--teacher', 'exists', '--teacher-params', '7.75B', '--teacher-tokens', '512B', '--students', '546M,1.82B']);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /L_S distil/);
  assert.match(r.stdout, /1\.82B: distillation wins below [0-9.]+e\+21 FLOPs/);
  assert.match(r.stdout, /recipe at this budget/);
  const j = cli(['--flops', '1e21', '--teacher', 'train', '--students', '1.82B', '--json']);
  assert.is(j.status, 0, j.stderr);
  const p = JSON.parse(j.stdout).plan;
  assert.is(p.students[0].better, 'supervised');
  const pts = path.join(TMP, 'cal.jsonl');
  const s = synthetic();
  fs.writeFileSync(pts, [...s.supervised.map((x) => JSON.stringify(x)), ...s.distill.map((x) => JSON.stringify({ params: x.params, tokens: x.tokens, teacher_loss: x.teacherLoss, loss: x.loss }))].join('\n'));
  const law = path.join(TMP, 'cal_law.json');
  const c = cli(['--calibrate', pts, '--save', law]);
  assert.is(c.status, 0, c.stderr);
  assert.match(c.stdout, /supervised law: 15 points.*MAPE 0\.\d\d%/);
  assert.ok(fs.existsSync(law));
  const u = cli(['--flops', '1e22', '--teacher', 'free', '--students', '1B', '--law', law]);
  assert.is(u.status, 0, u.stderr);
  assert.match(u.stdout, /calibrated/);
  for (const [args, re] of [
    [['--teacher', 'free'], /compute budget/],
    [['--flops', '1e21'], /teacher situation/],
    [['--flops', '1e21', '--teacher', 'exists', '--teacher-loss', '2'], /its size/],
    [['--flops', 'lots', '--teacher', 'free'], /--flops must be a positive count/],
    [['--flops', '1e21', '--teacher', 'free', '--law', path.join(TMP, 'missing.json')], /missing\.json/],
  ] as Array<[string[], RegExp]>) {
    const e = cli(args);
    assert.is(e.status, 1, `${args.join(' ')}: ${e.stdout}${e.stderr}`);
    assert.match(e.stderr, re);
    assert.not.match(e.stderr, /\n\s+at /);
  }
});

test.run();
