/**
 * Calibration of the scaling law to a user's own runs (`undo-native plan --calibrate RUN...`): the supervised
 * law from pretraining runs (N, D, L) and the distillation law from distillation runs (N_S, D_S, L_T, L_S), fitted
 * as the paper fits them (Appendix F: a Huber loss on log-loss residuals, from several starting points), here by
 * Levenberg-Marquardt with Huber reweighting (lib/core/optimize.ts). Reports the fit's error in sample and by
 * leave-one-out, and saves the coefficients as a law file the planner reads (`plan --law FILE`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, errorClass } from '../core/errors';
import { readJson, writeJsonAtomic } from '../core/fsutil';
import { levenbergMarquardt } from '../core/optimize';
import { configFromHF } from '../models/config';
import {
  DISTILLATION_KEYS, DistillationCoefficients, distilledLoss, nonEmbeddingParams, PAPER_LAW, ScalingLaw, SUPERVISED_KEYS,
  SupervisedCoefficients, supervisedLoss,
} from './law';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');
const NotFoundError = errorClass('ERR_NOT_FOUND');

export interface SupervisedPoint { params: number; tokens: number; loss: number; source?: string }
export interface DistillPoint extends SupervisedPoint { teacherLoss: number }
export interface CalibrationData { supervised: SupervisedPoint[]; distill: DistillPoint[] }

type SupKey = typeof SUPERVISED_KEYS[number];
type DistKey = typeof DISTILLATION_KEYS[number];

export interface FitReport {
  points: number;
  /** the coefficients fitted (the others kept from the starting law) */
  free: string[];
  /** root mean square error of the predicted loss, nats */
  rmse: number;
  /** mean absolute percentage error of the predicted loss */
  mape: number;
  /** the largest absolute error, nats */
  maxError: number;
  /** MAPE of each point predicted by a fit without it (null with too few points) */
  looMape: number | null;
  /** each point's observed and predicted loss */
  residuals: Array<{ source?: string; observed: number; predicted: number }>;
}

export interface CalibrationResult {
  law: ScalingLaw;
  supervised?: FitReport;
  distillation?: FitReport;
}

export interface CalibrateOptions {
  /** the law the fit starts from and keeps the fixed coefficients of (default: the paper's) */
  start?: ScalingLaw;
  /** supervised coefficients to fit (default all six) */
  freeSupervised?: SupKey[];
  /** distillation coefficients to fit (default all but c1, whose bootstrap interval in the paper has zero width) */
  freeDistillation?: DistKey[];
  /** Huber threshold on log residuals (default 1e-4, the paper's) */
  huber?: number;
}

/** Read a points file: JSON lines of {params, tokens, loss} (supervised) or {params, tokens, teacher_loss, loss} (distillation). */
export function readPointsFile(file: string): CalibrationData {
  if (!fs.existsSync(file)) throw new NotFoundError(`${file} does not exist`);
  const out: CalibrationData = { supervised: [], distill: [] };
  fs.readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch (e) {
      throw new Err(`${file}:${i + 1}: not JSON (${(e as Error).message})`);
    }
    const num = (k: string, need: boolean) => {
      const v = o[k];
      if (v === undefined && !need) return undefined;
      if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw new Err(`${file}:${i + 1}: "${k}" must be a positive number, got ${JSON.stringify(v)}`);
      return v;
    };
    const p = { params: num('params', true)!, tokens: num('tokens', true)!, loss: num('loss', true)!, source: `${file}:${i + 1}` };
    const lt = num('teacher_loss', false);
    if (lt !== undefined) out.distill.push({ ...p, teacherLoss: lt });
    else out.supervised.push(p);
  });
  return out;
}

/**
 * Points from run directories written by `pretrain` / `distill --out DIR`: N from the run's config.json
 * (non-embedding parameters), D from metrics.jsonl's tokens at each evaluation, L its val_loss; a distillation
 * run (trainer_state.json meta.teacher_val_loss, the teacher's loss on the same held-out set) gives distillation
 * points. The final evaluation only, unless allEvals (then every evaluation after the first step).
 */
export function readRunPoints(dirs: string[], opts: { allEvals?: boolean } = {}): CalibrationData {
  const out: CalibrationData = { supervised: [], distill: [] };
  for (const dir of dirs) {
    const cfgFile = path.join(dir, 'config.json');
    const metricsFile = path.join(dir, 'metrics.jsonl');
    if (!fs.existsSync(cfgFile)) throw new Err(`${dir}: no config.json (give a run directory written by pretrain or distill --out)`);
    if (!fs.existsSync(metricsFile)) throw new Err(`${dir}: no metrics.jsonl (give a run directory written by pretrain or distill --out)`);
    const params = nonEmbeddingParams(configFromHF(readJson<Record<string, unknown>>(cfgFile, 'model config', 'ERR_MODEL_CONFIG'), cfgFile));
    const stateFile = path.join(dir, 'trainer_state.json');
    const meta = fs.existsSync(stateFile) ? (readJson<{ meta?: Record<string, unknown> }>(stateFile, 'trainer state', 'ERR_CHECKPOINT').meta ?? {}) : {};
    const teacherLoss = typeof meta.teacher_val_loss === 'number' ? meta.teacher_val_loss : undefined;
    if (meta.kind === 'distill' && teacherLoss === undefined) {
      throw new Err(`${stateFile}: a distillation run without its teacher's val_loss (an offline teacher store has none)`, 'give its points in a points file with "teacher_loss", or leave the run out');
    }
    const tokensAt = new Map<number, number>();
    const evals: Array<{ step: number; loss: number }> = [];
    fs.readFileSync(metricsFile, 'utf8').split('\n').forEach((line, i) => {
      if (!line.trim()) return;
      let r: { step?: number; tokens?: number; eval?: Record<string, number> };
      try {
        r = JSON.parse(line);
      } catch {
        throw new Err(`${metricsFile}:${i + 1}: not JSON`);
      }
      if (typeof r.step !== 'number') return;
      if (typeof r.tokens === 'number') tokensAt.set(r.step, r.tokens);
      if (r.eval && typeof r.eval.val_loss === 'number' && Number.isFinite(r.eval.val_loss)) evals.push({ step: r.step, loss: r.eval.val_loss });
    });
    const usable = evals.filter((e) => e.step > 0 && tokensAt.has(e.step));
    if (!usable.length) throw new Err(`${metricsFile}: no evaluation with val_loss after a training step (run with a held-out split and --eval-every)`);
    for (const e of opts.allEvals ? usable : usable.slice(-1)) {
      const p = { params, tokens: tokensAt.get(e.step)!, loss: e.loss, source: `${dir}@${e.step}` };
      if (teacherLoss !== undefined) out.distill.push({ ...p, teacherLoss });
      else out.supervised.push(p);
    }
  }
  return out;
}

/** How each coefficient is searched: raw or in log space, with its bounds (log bounds for log ones). */
const SUP_SPACE: Record<SupKey, { log: boolean; lo: number; hi: number }> = {
  E: { log: false, lo: 0, hi: Infinity }, A: { log: true, lo: Math.log(1e-3), hi: Math.log(1e12) }, B: { log: true, lo: Math.log(1e-3), hi: Math.log(1e12) },
  alpha: { log: false, lo: 0.02, hi: 3 }, beta: { log: false, lo: 0.02, hi: 3 }, gamma: { log: false, lo: 0.05, hi: 3 },
};
const DIST_SPACE: Record<DistKey, { log: boolean; lo: number; hi: number }> = {
  c0: { log: false, lo: 0, hi: 10 }, c1: { log: true, lo: 0, hi: Math.log(1e4) }, f1: { log: false, lo: 0.01, hi: 1 }, d1: { log: false, lo: 0.3, hi: 5 },
  A: { log: true, lo: Math.log(1e-3), hi: Math.log(1e12) }, B: { log: true, lo: Math.log(1e-3), hi: Math.log(1e12) },
  alpha: { log: false, lo: 0.02, hi: 3 }, beta: { log: false, lo: 0.02, hi: 3 }, gamma: { log: false, lo: 0.05, hi: 3 },
};

interface GenericFit<C> {
  coef: C;
  report: FitReport;
}

/**
 * Fit the free coefficients of `start` to points (predict(coef, i) the loss of point i) by Huber-LM on log
 * residuals from each of `starts`, then leave-one-out from the best.
 */
function fitGeneric<K extends string, C extends Record<K, number>>(
  keys: readonly K[], free: K[], space: Record<K, { log: boolean; lo: number; hi: number }>, start: C, starts: Array<Partial<C>>,
  observed: number[], sources: Array<string | undefined>, predict: (c: C, i: number) => number, huber: number, bounds: Partial<Record<K, [number, number]>> = {},
): GenericFit<C> {
  for (const k of free) if (!keys.includes(k)) throw new Err(`unknown coefficient "${k}"`, `choose from: ${keys.join(', ')}`);
  const n = observed.length;
  if (n <= free.length) throw new Err(`fitting ${free.length} coefficients (${free.join(', ')}) needs more than ${free.length} points; got ${n}`, 'add runs, use --all-evals, or fit fewer coefficients');
  const lo = free.map((k) => bounds[k]?.[0] ?? space[k].lo);
  const hi = free.map((k) => bounds[k]?.[1] ?? space[k].hi);
  const toVec = (c: C) => free.map((k, j) => Math.min(hi[j], Math.max(lo[j], space[k].log ? Math.log(c[k]) : c[k])));
  const fromVec = (v: number[]) => {
    const c = { ...start } as C;
    free.forEach((k, j) => { (c as Record<K, number>)[k] = space[k].log ? Math.exp(v[j]) : v[j]; });
    return c;
  };
  const fit = (idx: number[], c0: C) => {
    const res = (v: number[]) => {
      const c = fromVec(v);
      return idx.map((i) => Math.log(predict(c, i)) - Math.log(observed[i]));
    };
    const r = levenbergMarquardt(res, toVec(c0), { lower: lo, upper: hi, huber, maxIterations: 400 });
    return { coef: fromVec(r.params), cost: r.cost };
  };
  const all = observed.map((_, i) => i);
  let best = fit(all, start);
  for (const s of starts) {
    const r = fit(all, { ...start, ...s });
    if (r.cost < best.cost) best = r;
  }
  const pred = all.map((i) => predict(best.coef, i));
  const err = pred.map((p, i) => p - observed[i]);
  let looMape: number | null = null;
  if (n - 1 > free.length) {
    let s = 0;
    for (const i of all) {
      const r = fit(all.filter((j) => j !== i), best.coef);
      s += Math.abs(predict(r.coef, i) - observed[i]) / observed[i];
    }
    looMape = s / n;
  }
  return {
    coef: best.coef,
    report: {
      points: n, free: [...free],
      rmse: Math.sqrt(err.reduce((a, e) => a + e * e, 0) / n),
      mape: err.reduce((a, e, i) => a + Math.abs(e) / observed[i], 0) / n,
      maxError: Math.max(...err.map(Math.abs)),
      looMape,
      residuals: all.map((i) => ({ source: sources[i], observed: observed[i], predicted: pred[i] })),
    },
  };
}

/** Fit the supervised law to (N, D, L) points. */
export function fitSupervised(points: SupervisedPoint[], opts: CalibrateOptions = {}): { coefficients: SupervisedCoefficients; report: FitReport } {
  const start = (opts.start ?? PAPER_LAW).supervised;
  const free = opts.freeSupervised ?? [...SUPERVISED_KEYS];
  const minL = Math.min(...points.map((p) => p.loss));
  const startE = Math.min(start.E, 0.9 * minL);
  const starts: Array<Partial<SupervisedCoefficients>> = [];
  for (const E of [startE, 0.5 * minL, 0.1 * minL]) for (const ab of [0.2, 0.4, 0.7]) for (const gamma of [0.3, 0.6, 1]) starts.push({ E, alpha: ab, beta: ab, gamma });
  const r = fitGeneric(SUPERVISED_KEYS, free, SUP_SPACE, { ...start, E: startE }, starts, points.map((p) => p.loss), points.map((p) => p.source),
    (c, i) => supervisedLoss(points[i].params, points[i].tokens, c), opts.huber ?? 1e-4, { E: [0, minL * (1 - 1e-6)] });
  return { coefficients: r.coef, report: r.report };
}

/** Fit the distillation law to (N_S, D_S, L_T, L_S) points, with the supervised law given. */
export function fitDistillation(points: DistillPoint[], supervised: SupervisedCoefficients, opts: CalibrateOptions = {}): { coefficients: DistillationCoefficients; report: FitReport } {
  const start = (opts.start ?? PAPER_LAW).distillation;
  const free = opts.freeDistillation ?? DISTILLATION_KEYS.filter((k) => k !== 'c1');
  const starts: Array<Partial<DistillationCoefficients>> = [];
  for (const c0 of [0.5, 1.5, 2.5]) for (const d1 of [1, 1.3, 2]) for (const ab of [0.3, 0.6]) starts.push({ c0, d1, alpha: ab, beta: ab });
  const law = (c: DistillationCoefficients): ScalingLaw => ({ supervised, distillation: c, source: '' });
  const r = fitGeneric(DISTILLATION_KEYS, free, DIST_SPACE, { ...start }, starts, points.map((p) => p.loss), points.map((p) => p.source),
    (c, i) => distilledLoss(points[i].params, points[i].tokens, points[i].teacherLoss, law(c)), opts.huber ?? 1e-4);
  return { coefficients: r.coef, report: r.report };
}

/** Calibrate both laws to the data (a law whose points are absent is kept from the start law). */
export function calibrate(data: CalibrationData, opts: CalibrateOptions = {}): CalibrationResult {
  const start = opts.start ?? PAPER_LAW;
  if (!data.supervised.length && !data.distill.length) throw new Err('calibration found no points');
  const sup = data.supervised.length ? fitSupervised(data.supervised, opts) : undefined;
  const supervised = sup?.coefficients ?? { ...start.supervised };
  const dist = data.distill.length ? fitDistillation(data.distill, supervised, opts) : undefined;
  const parts = [sup ? `supervised law fitted to ${sup.report.points} points` : 'supervised law kept', dist ? `distillation law fitted to ${dist.report.points} points` : 'distillation law kept'];
  return {
    law: { supervised, distillation: dist?.coefficients ?? { ...start.distillation }, source: `calibrated (${parts.join('; ')}) from ${start.source}` },
    supervised: sup?.report,
    distillation: dist?.report,
  };
}

/** Write a law file (atomic). */
export function saveLaw(file: string, r: CalibrationResult): void {
  writeJsonAtomic(file, { source: r.law.source, supervised: r.law.supervised, distillation: r.law.distillation, fit: { supervised: r.supervised ?? null, distillation: r.distillation ?? null } });
}

/** Read a law file written by saveLaw (or by hand: {supervised: {E, A, ...}, distillation: {c0, ...}}). */
export function loadLaw(file: string): ScalingLaw {
  const o = readJson<{ source?: unknown; supervised?: Record<string, unknown>; distillation?: Record<string, unknown> }>(file, 'scaling-law file');
  const pick = <K extends string>(obj: Record<string, unknown> | undefined, keys: readonly K[], what: string): Record<K, number> => {
    if (!obj || typeof obj !== 'object') throw new Err(`${file}: no "${what}" object`);
    const out = {} as Record<K, number>;
    for (const k of keys) {
      const v = obj[k];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new Err(`${file}: ${what}.${k} must be a number, got ${JSON.stringify(v)}`);
      out[k] = v;
    }
    return out;
  };
  return {
    supervised: pick(o.supervised, SUPERVISED_KEYS, 'supervised'),
    distillation: pick(o.distillation, DISTILLATION_KEYS, 'distillation'),
    source: typeof o.source === 'string' ? `${o.source} (${file})` : file,
  };
}
