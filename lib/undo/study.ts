/**
 * UNDO (Unlearn, Noise, Distill-on-Outputs) and the study that measures it: base and oracle (cached
 * pretraining), unlearn-only baselines (optionally SAM-wrapped), full distillation into a random student,
 * UNDO at several noise levels α, and the relearning attack on every model, on a StudyTask
 * (lib/undo/tasks.ts: the built-in arithmetic task or the user's own data). Every arm is saved as it
 * finishes (outDir/arms/<arm>/), so an interrupted study continues at the arm it was in; several seeds run
 * side by side (outDir/seed-N/) and aggregate into mean ± standard deviation. Writes report.json, report.md
 * and an SVG Pareto plot (lib/undo/report.ts).
 */
import { JobProgress, retag } from '../core/progress';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Batcher, Document, packDocuments } from '../data/datasets';
import { distill } from '../distill/distill';
import { UndoError, errorClass } from '../core/errors';
import { readJson, writeJsonAtomic } from '../core/fsutil';
import { Model, presetConfig } from '../models/model';
import { noiseModel } from '../unlearn/noise';
import { relearn, RelearnResult } from '../unlearn/relearn';
import { ALL_OPS, generateArithmeticCorpus, Op, RETAIN_OPS } from '../tasks/arithmetic';
import { ByteTokenizer } from '../data/tokenizer';
import { train, TrainConfig, TrainOptions } from '../train/train';
import { unlearn, UnlearnMethod, UNLEARN_DEFAULTS, UnlearnStage } from '../unlearn/unlearn';
import { arithmeticScores, arithmeticTask, dataTask, retainStop, StudyTask, TaskScore } from './tasks';
import { FORGET_LANGUAGE, languageDocs, RETAIN_LANGUAGE } from '../tasks/languages';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export { arithmeticScores, retainStop };

/** An unlearn-only arm: a method, optionally wrapped in SAM with radius ρ (undo.md §3: ρ = 0.05 on the synthetic tasks). */
export interface UnlearnArm {
  method: UnlearnMethod;
  sam?: number;
}

export interface StudyConfig {
  name: string;
  /** the built-in task (default arithmetic): 'language' pretrains on the two generated languages and forgets Kyrish */
  task?: 'arithmetic' | 'language';
  preset: string;
  /** the arms' seed: unlearning batches, noise, distillation order and init, the attack's batches */
  seed: number;
  /** the base and oracle pretraining seed (default 42, the paper's): shared by every arm seed, so a seed sweep pretrains once */
  pretrainSeed?: number;
  seqLen: number;
  batchSize: number;
  pretrainSteps: number;
  pretrainLr: number;
  docs: number;
  wordProblems: number;
  /** unlearn-only baselines; the first one is the teacher of full distillation and UNDO */
  methods: (UnlearnMethod | UnlearnArm)[];
  unlearn: Partial<Record<UnlearnMethod, UnlearnStage>>;
  alphas: number[];
  beta: number;
  fullDistill: boolean;
  oracle: boolean;
  /**
   * Peak distillation LR. The paper distills at 1.75× its pretraining LR (7e-4 against 4e-4, undo.md §5); the
   * studies keep that ratio (7e-3 against 4e-3). At α = 0.6 on the tiny model, 2e-3 / 4e-3 / 7e-3 gave robustness
   * 0.39 / 0.52 / 0.66 at compute 0.13 / 0.23 / 0.42 (one run each, same attack).
   */
  distillLr: number;
  distillMaxSteps: number;
  distillEvalEvery: number;
  /** stop distilling when the retain score is back within this of the teacher's (accuracy: absolute; loss: relative) */
  tolerance: number;
  /** the relearning attack: LR sweep, steps per LR, eval interval, reported step budgets, and its own seed (default: the arm seed) */
  relearn: { lrs: number[]; steps: number; evalEvery: number; budgets: number[]; seed?: number };
  evalPerForm: number;
}

const SAM_RHO = 0.05;

export const STUDIES: Record<string, StudyConfig> = {
  // `npx undo-native undo`: one teacher, one α, a short attack; ≤ 15 min on 2 cores with nothing cached
  quick: {
    name: 'quick', preset: 'tiny', seed: 42, seqLen: 128, batchSize: 16, pretrainSteps: 4000, pretrainLr: 4e-3,
    docs: 300000, wordProblems: 0.25, methods: ['maxent'], unlearn: UNLEARN_DEFAULTS, alphas: [0.6], beta: 0.1,
    fullDistill: false, oracle: false, distillLr: 7e-3, distillMaxSteps: 3000, distillEvalEvery: 100, tolerance: 0.05,
    relearn: { lrs: [1e-3, 3e-4], steps: 60, evalEvery: 20, budgets: [20, 60] }, evalPerForm: 50,
  },
  // `undo-native undo --preset arithmetic`: the whole study, with the RepNoise and SAM-wrapped MaxEnt and RMU baselines
  arithmetic: {
    name: 'arithmetic', preset: 'tiny', seed: 42, seqLen: 128, batchSize: 16, pretrainSteps: 6000, pretrainLr: 4e-3,
    docs: 400000, wordProblems: 0.25,
    methods: ['maxent', 'graddiff', 'rmu', 'repnoise', { method: 'maxent', sam: SAM_RHO }, { method: 'rmu', sam: SAM_RHO }], unlearn: UNLEARN_DEFAULTS,
    alphas: [0.2, 0.4, 0.6, 0.8], beta: 0.1, fullDistill: true, oracle: true, distillLr: 7e-3, distillMaxSteps: 6000,
    distillEvalEvery: 100, tolerance: 0.05, relearn: { lrs: [3e-3, 1e-3, 3e-4], steps: 100, evalEvery: 20, budgets: [20, 100] },
    evalPerForm: 50,
  },
  // `undo-native undo --preset language`: the paper's language setting on two generated languages (lib/tasks/languages.ts);
  // scores are held-out cross-entropies, the distillation stops at retain CE within 5% of the teacher's (undo.md §5)
  language: {
    name: 'language', task: 'language', preset: 'tiny', seed: 42, seqLen: 128, batchSize: 16, pretrainSteps: 4000, pretrainLr: 4e-3,
    docs: 30000, wordProblems: 0, methods: ['maxent', 'graddiff', 'rmu', 'repnoise', { method: 'maxent', sam: SAM_RHO }, { method: 'rmu', sam: SAM_RHO }],
    unlearn: UNLEARN_DEFAULTS, alphas: [0.2, 0.4, 0.6, 0.8], beta: 0.1, fullDistill: true, oracle: true, distillLr: 7e-3, distillMaxSteps: 4000,
    distillEvalEvery: 100, tolerance: 0.05, relearn: { lrs: [3e-3, 1e-3, 3e-4], steps: 100, evalEvery: 20, budgets: [20, 100] }, evalPerForm: 0,
  },
  // `undo-native undo --preset language-quick`: the language study cut to MaxEnt, RepNoise and UNDO α = 0.6 with a short
  // attack (about 20 min on 2 cores with nothing cached)
  'language-quick': {
    name: 'language-quick', task: 'language', preset: 'tiny', seed: 42, seqLen: 128, batchSize: 16, pretrainSteps: 2000, pretrainLr: 4e-3,
    docs: 15000, wordProblems: 0, methods: ['maxent', 'repnoise'], unlearn: UNLEARN_DEFAULTS, alphas: [0.6], beta: 0.1, fullDistill: false,
    oracle: true, distillLr: 7e-3, distillMaxSteps: 1500, distillEvalEvery: 100, tolerance: 0.05,
    relearn: { lrs: [1e-3, 3e-4], steps: 60, evalEvery: 20, budgets: [20, 60] }, evalPerForm: 0,
  },
  // for tests and trying the machinery: the micro model, a few hundred steps, every arm kind (about 2 min on 2 cores)
  smoke: {
    name: 'smoke', preset: 'micro', seed: 42, seqLen: 64, batchSize: 8, pretrainSteps: 300, pretrainLr: 4e-3,
    docs: 20000, wordProblems: 0.25, methods: ['maxent', { method: 'maxent', sam: SAM_RHO }],
    unlearn: { maxent: { steps: 20, lr: 2e-4, retainWeight: 16 } }, alphas: [0.6], beta: 0.1, fullDistill: true, oracle: true,
    distillLr: 4e-3, distillMaxSteps: 60, distillEvalEvery: 20, tolerance: 0.05,
    relearn: { lrs: [1e-3], steps: 20, evalEvery: 10, budgets: [10, 20] }, evalPerForm: 8,
  },
};

export interface ModelRow {
  name: string;
  kind: 'base' | 'oracle' | 'unlearn' | 'distill' | 'undo';
  alpha?: number;
  /** SAM radius of an unlearn-only arm */
  sam?: number;
  retain: number;
  forget: number;
  /** the attacker's best forget score within each budget */
  relearned: Record<number, number>;
  /** the other forget metrics at that point (data tasks: forget_loss, forget_accuracy) */
  relearnedMetrics?: Record<number, Record<string, number>>;
  /** distillation tokens (0 for models that were not distilled) */
  tokens?: number;
  /** distillation compute as a fraction of the oracle's pretraining (tokens); NaN when that is unknown */
  computeFraction: number;
  robustness?: number;
  metrics: Record<string, number>;
  attack?: RelearnResult;
  /** wall time of the arm's training (unlearning or distillation) and of its attack (scoring included) */
  seconds?: { train?: number; attack?: number };
}

export interface StudyReport {
  study: StudyConfig;
  /** the task's name and unit: 'accuracy' (higher = kept) or 'loss' (held-out cross-entropy, lower = kept) */
  task?: { name: string; unit: StudyTask['unit'] };
  rows: ModelRow[];
  elapsedSec: number;
  /**
   * runStudy was stopped by its signal in the arm `stoppedIn`: `rows` is empty, what finished is saved in outDir,
   * and the same call continues there
   */
  interrupted?: boolean;
  stoppedIn?: string;
}

export interface StudyOptions {
  outDir: string;
  cacheDir?: string;
  log?: (msg: string) => void;
  /** progress hooks for long training stages */
  hooks?: (stage: string, steps: number) => { hooks: Pick<TrainOptions, 'onStep' | 'onEval'>; stop: () => void };
  /**
   * Stops the study at the next step: what finished is kept, runStudy resolves with `interrupted: true`, and the
   * same call continues where it stopped (lib/core/progress.ts).
   */
  signal?: AbortSignal;
  /** progress of every training stage (job 'undo', stage: the arm, e.g. "UNDO α=0.5", or "pretrain …") */
  onProgress?: (p: JobProgress) => void;
}

/** The study was stopped (signal or Ctrl-C); every finished arm is saved in `dir` and a rerun continues at `arm`. */
export class StudyInterrupted extends Error {
  constructor(readonly arm: string, readonly dir: string) {
    super(`interrupted in ${arm}: what finished is saved in ${dir}; run the same command again to continue there`);
    this.name = 'StudyInterrupted';
  }
}

function trainCfg(steps: number, lr: number, warmup: number, schedule: TrainConfig['schedule'], evalEvery = 0, checkpointEvery = 0): TrainConfig {
  return { steps, gradAccum: 1, lr, warmup, schedule, weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery, checkpointEvery };
}

export function defaultCacheDir(): string {
  return process.env.UNDO_CACHE ?? path.join(process.cwd(), '.undo-cache');
}

/** Pretrain (or reuse from the cache) a model on the given arithmetic operations (seed: the config's pretrainSeed, default 42). */
export async function pretrained(c: StudyConfig, ops: readonly Op[], o: Partial<StudyOptions>): Promise<Model> {
  const seed = c.pretrainSeed ?? 42;
  const key = { v: 1, preset: c.preset, ops, steps: c.pretrainSteps, lr: c.pretrainLr, docs: c.docs, wp: c.wordProblems, seed, T: c.seqLen, B: c.batchSize };
  return pretrainCached(c, `pretrain-${ops.join('-')}`, ops.join(','), key,
    () => generateArithmeticCorpus({ ops, count: c.docs, seed, wordProblemFraction: c.wordProblems }), o);
}

/** Pretrain (or reuse from the cache) a model on the generated languages: both ('all', the base) or Velan only (the oracle). */
export async function pretrainedLanguage(c: StudyConfig, part: 'all' | typeof RETAIN_LANGUAGE, o: Partial<StudyOptions>): Promise<Model> {
  const seed = c.pretrainSeed ?? 42;
  const key = { v: 1, task: 'language', preset: c.preset, part, steps: c.pretrainSteps, lr: c.pretrainLr, docs: c.docs, seed, T: c.seqLen, B: c.batchSize };
  return pretrainCached(c, `pretrain-language-${part}`, part === 'all' ? 'both languages' : part, key, () => languageDocs(part, c.docs, seed), o);
}

/**
 * The cached pretraining behind pretrained / pretrainedLanguage: dir = <cache>/<prefix>-<hash of key>; a finished
 * entry is model.safetensors without trainer_state.json, an interrupted one continues from its checkpoint.
 */
async function pretrainCached(c: StudyConfig, prefix: string, label: string, key: Record<string, unknown>, docsFn: () => Document[], o: Partial<StudyOptions>): Promise<Model> {
  const seed = c.pretrainSeed ?? 42;
  const hash = crypto.createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 16);
  const dir = path.join(o.cacheDir ?? defaultCacheDir(), `${prefix}-${hash}`);
  if (fs.existsSync(path.join(dir, 'model.safetensors')) && !fs.existsSync(path.join(dir, 'trainer_state.json'))) {
    o.log?.(`reusing cached ${label} model ${dir}`);
    return Model.load(dir);
  }
  const tok = new ByteTokenizer();
  const data = packDocuments(tok, docsFn(), c.seqLen, { seed });
  // an interrupted pretraining left its checkpoint (trainer_state.json) in the cache: continue it
  const resume = fs.existsSync(path.join(dir, 'trainer_state.json'));
  const model = resume ? Model.load(dir) : Model.create(presetConfig(c.preset, tok), { seed }, tok);
  o.log?.(`${resume ? 'continuing' : 'pretraining'} on ${label} (${c.pretrainSteps} steps; cached in ${dir})`);
  const ui = o.hooks?.(`pretrain ${label}`, c.pretrainSteps);
  const r = await train(model, new Batcher(data, { batchSize: c.batchSize, seed }), trainCfg(c.pretrainSteps, c.pretrainLr, 100, 'cosine', 0, 500),
    { ...(ui?.hooks ?? {}), outDir: dir, resume, signal: o.signal, onProgress: retag(o.onProgress, 'undo', `pretrain ${label}`) });
  ui?.stop();
  if (r.interrupted) throw new StudyInterrupted(`pretraining on ${label}`, dir);
  // the finished model without optimizer state: its presence (and no trainer_state.json) marks the cache entry done
  for (const f of ['trainer_state.json', 'optimizer.safetensors', 'metrics.jsonl']) fs.rmSync(path.join(dir, f), { force: true });
  model.save(dir);
  return model;
}

function armLabel(a: UnlearnArm): string {
  return a.sam ? `${a.method}+SAM ρ=${a.sam}` : a.method;
}

function armSlug(name: string): string {
  return name.toLowerCase().replace(/ρ=/g, 'rho').replace(/α=/g, 'a').replace(/[^a-z0-9.]+/g, '-').replace(/^-|-$/g, '');
}

/** The models a study starts from: the base (holds the forget capability), and the retain-only oracle if there is one. */
export interface StudyModels {
  base: Model;
  oracle?: Model | null;
  /** the oracle's pretraining tokens: the unit of compute (fraction = distillation tokens / this) */
  oracleTokens?: number;
  /** identifies the models and data in the study's manifest (a rerun in the same directory must match) */
  identity?: Record<string, unknown>;
}

interface ArmRecord {
  tokens: number;
  /** training time of the arm (a resumed distillation counts its earlier part too) */
  seconds?: number;
}

/**
 * Run the arms of a study on a task, resumably: every arm's model and its attack are saved in
 * outDir/arms/<arm>/ as they finish, a distillation in progress checkpoints every 5 evaluations, and a rerun
 * with the same settings skips what is done (other settings in the same directory are refused).
 */
export async function runArms(c: StudyConfig, task: StudyTask, models: StudyModels, o: StudyOptions): Promise<StudyReport> {
  const t0 = Date.now();
  const log = o.log ?? (() => undefined);
  const armsDir = path.join(o.outDir, 'arms');
  checkManifest(o.outDir, { v: 1, study: c, task: task.name, unit: task.unit, ...(models.identity ?? {}) });
  const stopped = (arm: string) => {
    if (o.signal?.aborted) throw new StudyInterrupted(arm, o.outDir);
  };
  const { base, oracle } = models;
  const tok = base.tokenizer;
  type Entry = { row: Omit<ModelRow, 'retain' | 'forget' | 'metrics' | 'relearned'>; model: () => Promise<Model> };
  const entries: Entry[] = [];
  // base and oracle: pretraining, the unit of compute (unknown for a user's model)
  const pre = models.oracleTokens ? 1 : NaN;
  entries.push({ row: { name: 'base', kind: 'base', computeFraction: pre }, model: async () => base });
  if (oracle) entries.push({ row: { name: 'oracle (retain data only)', kind: 'oracle', computeFraction: pre }, model: async () => oracle });
  const fraction = (tokens: number) => (models.oracleTokens ? tokens / models.oracleTokens : NaN);

  const arms: UnlearnArm[] = c.methods.map((m) => (typeof m === 'string' ? { method: m } : m));
  if (!arms.length) throw new Err('the study needs at least one unlearning method');
  let teacher: Model | null = null;
  for (const arm of arms) {
    const name = `unlearn-only (${armLabel(arm)})`;
    const dir = path.join(armsDir, armSlug(name));
    let u: Model;
    let record: ArmRecord;
    if (fs.existsSync(path.join(dir, 'arm.json'))) {
      log(`${name}: done earlier, loading ${dir}`);
      u = Model.load(path.join(dir, 'model'));
      record = readJson<ArmRecord>(path.join(dir, 'arm.json'), 'study arm record');
    } else {
      stopped(name);
      u = base.clone();
      const p = c.unlearn[arm.method] ?? UNLEARN_DEFAULTS[arm.method];
      log(`unlearning with ${armLabel(arm)} (${p.steps} steps, lr ${p.lr})`);
      const ui = o.hooks?.(name, p.steps);
      const r = await unlearn(u, new Batcher(task.forget, { batchSize: c.batchSize, seed: c.seed }), new Batcher(task.retain, { batchSize: c.batchSize, seed: c.seed + 1 }),
        trainCfg(p.steps, p.lr, 0, 'constant'), {
          method: arm.method, sam: arm.sam, ...(ui?.hooks ?? {}), signal: o.signal, onProgress: retag(o.onProgress, 'undo', name),
          params: p.retainWeight !== undefined ? { seed: c.seed, retainWeight: p.retainWeight } : { seed: c.seed },
        });
      ui?.stop();
      if (r.interrupted) throw new StudyInterrupted(name, o.outDir);
      u.save(path.join(dir, 'model'));
      record = { tokens: 0, seconds: r.state.elapsedSec };
      writeJsonAtomic(path.join(dir, 'arm.json'), record);
    }
    entries.push({ row: { name, kind: 'unlearn', ...(arm.sam ? { sam: arm.sam } : {}), tokens: 0, computeFraction: fraction(0), seconds: { train: record.seconds } }, model: async () => u });
    if (!teacher) teacher = u;
  }
  const teacherModel = teacher!;
  const teacherScore = await task.score(teacherModel);
  const unit = (x: number) => (task.unit === 'accuracy' ? `${(100 * x).toFixed(1)}%` : `${x.toFixed(3)} nats`);
  log(`teacher (${armLabel(arms[0])}): retain ${unit(teacherScore.retain)}, forget ${unit(teacherScore.forget)}`);

  // a distillation arm: resumed from its checkpoint when one is there, saved with arm.json when it finishes
  const distillArm = async (name: string, kind: 'distill' | 'undo', fresh: () => Model | Promise<Model>, extra: Partial<ModelRow>) => {
    const dir = path.join(armsDir, armSlug(name));
    const modelDir = path.join(dir, 'model');
    let record: ArmRecord;
    if (fs.existsSync(path.join(dir, 'arm.json'))) {
      log(`${name}: done earlier, loading ${dir}`);
      record = readJson<ArmRecord>(path.join(dir, 'arm.json'), 'study arm record');
    } else {
      stopped(name);
      const resume = fs.existsSync(path.join(modelDir, 'trainer_state.json'));
      const student = resume ? Model.load(modelDir) : await fresh();
      log(`${name}: ${resume ? 'continuing the distillation from its checkpoint' : 'distilling'}`);
      const ui = o.hooks?.(name, c.distillMaxSteps);
      const r = await distill(student, teacherModel, new Batcher(task.mixture, { batchSize: c.batchSize, seed: c.seed + 7 }),
        trainCfg(c.distillMaxSteps, c.distillLr, 50, 'cosine', c.distillEvalEvery, 5 * c.distillEvalEvery), {
          loss: 'fkl', seed: c.seed, ...(ui?.hooks ?? {}), outDir: modelDir, resume, signal: o.signal, onProgress: retag(o.onProgress, 'undo', name),
          ...task.retainStop(student, teacherScore, c.tolerance),
        });
      ui?.stop();
      if (r.interrupted) throw new StudyInterrupted(name, o.outDir);
      record = { tokens: r.state.tokens, seconds: r.state.elapsedSec };
      writeJsonAtomic(path.join(dir, 'arm.json'), record);
    }
    entries.push({ row: { name, kind, ...extra, tokens: record.tokens, computeFraction: fraction(record.tokens), seconds: { train: record.seconds } }, model: async () => Model.load(modelDir) });
  };
  if (c.fullDistill) await distillArm('unlearn + full distill', 'distill', () => Model.create(base.config, { seed: c.seed + 100 }, tok), {});
  for (const alpha of c.alphas) {
    await distillArm(`UNDO α=${alpha}`, 'undo', async () => {
      const student = teacherModel.clone();
      await noiseModel(student, { alpha, beta: c.beta, seed: c.seed });
      return student;
    }, { alpha });
  }

  const rows: ModelRow[] = [];
  const attackSeed = c.relearn.seed ?? c.seed;
  for (const { row, model: get } of entries) {
    const file = path.join(armsDir, armSlug(row.name), 'attack.json');
    let done: { score: TaskScore; attack: RelearnResult; seconds?: number } | null = null;
    if (fs.existsSync(file)) done = readJson(file, 'study attack record');
    else {
      stopped(`the attack on ${row.name}`);
      const t1 = Date.now();
      const model = await get();
      const score = await task.score(model);
      log(`attacking ${row.name} (retain ${unit(score.retain)}, forget ${unit(score.forget)})`);
      const attack = await relearn(model, task.attack, {
        lrs: c.relearn.lrs, steps: c.relearn.steps, evalEvery: c.relearn.evalEvery, batchSize: c.batchSize, seed: attackSeed,
        metric: (m) => task.attackMetric(m), direction: task.unit === 'accuracy' ? 'max' : 'min', signal: o.signal,
        onProgress: o.onProgress && ((p) => o.onProgress!({ ...p, job: 'undo', stage: `attack on ${row.name}, ${p.stage}` })),
      });
      if (attack.interrupted) throw new StudyInterrupted(`the attack on ${row.name}`, o.outDir);
      done = { score, attack, seconds: (Date.now() - t1) / 1000 };
      writeJsonAtomic(file, done);
    }
    const { score, attack } = done!;
    row.seconds = { ...(row.seconds ?? {}), attack: done!.seconds };
    const relearned: Record<number, number> = {};
    const relearnedMetrics: Record<number, Record<string, number>> = {};
    for (const b of c.relearn.budgets) {
      const steps = Object.keys(attack.atBudget).map(Number).filter((st) => st <= b);
      relearned[b] = steps.length ? attack.atBudget[Math.max(...steps)] : score.forget;
      const at = steps.length ? attack.atBudgetMetrics?.[Math.max(...steps)] : undefined;
      if (at) relearnedMetrics[b] = at;
    }
    rows.push({ ...row, retain: score.retain, forget: score.forget, metrics: score.metrics, relearned,
      ...(Object.keys(relearnedMetrics).length ? { relearnedMetrics } : {}), attack });
  }
  // robustness = (P_unlearn − P_model) / (P_unlearn − P_oracle), P = the attacker's forget score at the largest
  // budget (the same formula holds for losses: numerator and denominator change sign together)
  const budget = Math.max(...c.relearn.budgets);
  const pUnlearn = rows.find((r) => r.name === `unlearn-only (${armLabel(arms[0])})`)!.relearned[budget];
  const pOracle = rows.find((r) => r.kind === 'oracle')?.relearned[budget];
  for (const r of rows) {
    if (pOracle !== undefined && Math.abs(pUnlearn - pOracle) > 1e-9) r.robustness = (pUnlearn - r.relearned[budget]) / (pUnlearn - pOracle);
  }
  const report: StudyReport = { study: c, task: { name: task.name, unit: task.unit }, rows, elapsedSec: (Date.now() - t0) / 1000 };
  const { writeReport } = await import('./report');
  await writeReport(report, o.outDir);
  return report;
}

/**
 * The study's manifest (outDir/study.json), rewritten on every run. A rerun in the directory must match it in
 * everything but the arm list: the teacher (the first method) and every other setting are fixed, while
 * unlearn-only arms and UNDO α values may be added (or dropped) — the arms already there are reused.
 */
function checkManifest(dir: string, identity: Record<string, unknown>): void {
  const file = path.join(dir, 'study.json');
  const fixed = (m: Record<string, unknown>) => {
    const st = m.study as StudyConfig | undefined;
    return st ? { ...m, study: { ...st, methods: st.methods.slice(0, 1), alphas: [] } } : m;
  };
  if (fs.existsSync(file)) {
    const old = fixed(readJson<Record<string, unknown>>(file, 'study manifest'));
    const now = fixed(identity);
    if (JSON.stringify(old) !== JSON.stringify(now)) {
      const diff = (a: Record<string, unknown>, b: Record<string, unknown>, prefix: string): string[] =>
        [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((k) => {
          const x = a[k], y = b[k];
          if (JSON.stringify(x) === JSON.stringify(y)) return [];
          if (x && y && typeof x === 'object' && typeof y === 'object' && !Array.isArray(x) && k === 'study') return diff(x as Record<string, unknown>, y as Record<string, unknown>, `${k}.`);
          return [`${prefix}${k === 'methods' ? 'methods[0] (the teacher)' : k}`];
        });
      const keys = diff(old, now, '');
      throw new Err(`${dir} holds a study with other settings (${keys.join(', ')} differ${keys.length === 1 ? 's' : ''})`,
        'arms (unlearn-only methods, UNDO α values) may be added to a study; for other settings choose another --out, or remove that directory');
    }
  }
  writeJsonAtomic(file, identity);
}

/**
 * Run a built-in study for one seed: the arithmetic task (accuracies) or the language task (held-out
 * cross-entropy per language); base and oracle are pretrained once and cached, shared by every seed.
 */
export async function runStudy(c: StudyConfig, o: StudyOptions): Promise<StudyReport> {
  const t0 = Date.now();
  try {
    return await studyArms(c, o, t0);
  } catch (e) {
    if (!(e instanceof StudyInterrupted)) throw e;
    o.log?.(e.message);
    return { study: c, rows: [], elapsedSec: (Date.now() - t0) / 1000, interrupted: true, stoppedIn: e.arm };
  }
}

async function studyArms(c: StudyConfig, o: StudyOptions, t0: number): Promise<StudyReport> {
  let base: Model, oracle: Model | null, task: StudyTask;
  if ((c.task ?? 'arithmetic') === 'language') {
    base = await pretrainedLanguage(c, 'all', o);
    oracle = c.oracle ? await pretrainedLanguage(c, RETAIN_LANGUAGE, o) : null;
    task = dataTask(base.tokenizer, {
      name: 'language (held-out cross-entropy: Velan kept, Kyrish forgotten)', forget: languageDocs(FORGET_LANGUAGE, c.docs, c.seed + 1),
      retain: languageDocs(RETAIN_LANGUAGE, c.docs, c.seed + 2), mixture: languageDocs('all', c.docs, c.seed + 3), seqLen: c.seqLen, seed: c.seed,
      batchSize: c.batchSize,
    });
  } else {
    base = await pretrained(c, ALL_OPS, o);
    oracle = c.oracle ? await pretrained(c, RETAIN_OPS, o) : null;
    task = arithmeticTask(base.tokenizer, { seed: c.seed, docs: c.docs, wordProblems: c.wordProblems, seqLen: c.seqLen, perForm: c.evalPerForm });
  }
  const report = await runArms(c, task, { base, oracle, oracleTokens: c.pretrainSteps * c.batchSize * c.seqLen }, o);
  report.elapsedSec = (Date.now() - t0) / 1000;
  return report;
}

/** mean and sample standard deviation (n − 1; 0 for one value) of the finite values */
export interface MeanSd {
  mean: number;
  sd: number;
  n: number;
}

export function meanSd(xs: readonly (number | undefined)[]): MeanSd {
  const v = xs.filter((x): x is number => x !== undefined && Number.isFinite(x));
  if (!v.length) return { mean: NaN, sd: NaN, n: 0 };
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0;
  return { mean, sd, n: v.length };
}

export interface AggregateRow {
  name: string;
  kind: ModelRow['kind'];
  alpha?: number;
  retain: MeanSd;
  forget: MeanSd;
  relearned: Record<number, MeanSd>;
  computeFraction: MeanSd;
  /** distillation tokens */
  tokens: MeanSd;
  robustness: MeanSd;
  /** data tasks: next-token accuracies (retain, forget, forget after the attack within the largest budget) */
  accuracy?: { retain: MeanSd; forget: MeanSd; relearned: MeanSd };
}

export interface AggregateReport {
  study: StudyConfig;
  task?: StudyReport['task'];
  seeds: number[];
  rows: AggregateRow[];
  /** every seed's own report (also in seed-N/report.json) */
  perSeed: StudyReport[];
  elapsedSec: number;
}

/** Mean ± standard deviation over seeds, model by model (rows matched by name, in the first seed's order). */
export function aggregateReports(reports: readonly StudyReport[], seeds: readonly number[], elapsedSec: number): AggregateReport {
  if (!reports.length) throw new Err('no study reports to aggregate');
  const budgets = reports[0].study.relearn.budgets;
  const rows = reports[0].rows.map((r0) => {
    const same = reports.map((r) => r.rows.find((x) => x.name === r0.name));
    const relearned: Record<number, MeanSd> = {};
    for (const b of budgets) relearned[b] = meanSd(same.map((x) => x?.relearned[b]));
    const top = Math.max(...budgets);
    const accuracy = r0.metrics.retain_accuracy !== undefined ? {
      retain: meanSd(same.map((x) => x?.metrics.retain_accuracy)), forget: meanSd(same.map((x) => x?.metrics.forget_accuracy)),
      relearned: meanSd(same.map((x) => x?.relearnedMetrics?.[top]?.forget_accuracy)),
    } : undefined;
    return {
      ...(accuracy ? { accuracy } : {}),
      name: r0.name, kind: r0.kind, ...(r0.alpha !== undefined ? { alpha: r0.alpha } : {}),
      retain: meanSd(same.map((x) => x?.retain)), forget: meanSd(same.map((x) => x?.forget)), relearned,
      computeFraction: meanSd(same.map((x) => x?.computeFraction)), tokens: meanSd(same.map((x) => x?.tokens)), robustness: meanSd(same.map((x) => x?.robustness)),
    };
  });
  return { study: reports[0].study, task: reports[0].task, seeds: [...seeds], rows, perSeed: [...reports], elapsedSec };
}

/**
 * A study over several seeds: `run(seed, dir)` for each (one seed writes into outDir itself, several into
 * outDir/seed-N/), then the aggregate (mean ± sd, error bars) in outDir. Each seed's study is resumable on its own.
 */
export async function runSeeds(seeds: readonly number[], o: Pick<StudyOptions, 'outDir' | 'log'>,
  run: (seed: number, outDir: string) => Promise<StudyReport>): Promise<{ reports: StudyReport[]; aggregate?: AggregateReport }> {
  // a seed whose report is interrupted ends the loop: the result then holds the reports so far, the last interrupted
  if (!seeds.length) throw new Err('--seeds: give at least one seed');
  if (new Set(seeds).size !== seeds.length) throw new Err(`--seeds ${seeds.join(',')}: a seed is repeated`);
  const t0 = Date.now();
  if (seeds.length === 1) return { reports: [await run(seeds[0], o.outDir)] };
  const reports: StudyReport[] = [];
  for (const seed of seeds) {
    o.log?.(`— seed ${seed} —`);
    const r = await run(seed, path.join(o.outDir, `seed-${seed}`));
    reports.push(r);
    if (r.interrupted) return { reports }; // no aggregate: the same call continues at this seed
  }
  const aggregate = aggregateReports(reports, seeds, (Date.now() - t0) / 1000);
  const { writeAggregate } = await import('./report');
  await writeAggregate(aggregate, o.outDir);
  return { reports, aggregate };
}

/** Where the study writes when --out is not given. */
export function defaultStudyOut(name: string): string {
  return path.join(process.cwd(), 'runs', `undo-${name}`);
}
