/**
 * The relearning attack: fine-tune a copy of the model with plain cross-entropy on attack data, once per
 * learning rate of a sweep, evaluating a metric every k steps. The attacker's curve is the best value over
 * the sweep at each evaluation step (undo.md §6: LR sweep, constant LR, warm-up 1, clip 1, no decay).
 */
import { JobProgress, retag } from '../core/progress';
import { Batcher, PackedDataset } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { Model } from '../models/model';
import { train } from '../train/train';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export const DEFAULT_RELEARN_LRS = [1e-3, 7e-4, 4e-4, 1e-4, 7e-5, 5e-5, 1e-5];

/** The UNDO paper's adversary: 10 learning rates (undo.md §6), each run for up to 500 steps. */
export const PAPER_RELEARN_LRS = [1e-3, 7e-4, 4e-4, 1e-4, 7e-5, 5e-5, 1e-5, 7e-6, 4e-6, 1e-6];

export interface RelearnOptions {
  lrs?: number[];
  steps: number;
  evalEvery: number;
  batchSize: number;
  seed?: number;
  /** the attacker's objective metric: forget accuracy (higher = more relearned) or with direction 'min' a forget loss */
  metric: (model: Model) => Promise<number | { value: number; metrics: Record<string, number> }>;
  /** 'max' (default): the attacker drives the metric up (accuracy); 'min': down (cross-entropy) */
  direction?: 'max' | 'min';
  /** stops the sweep (the result then holds the curves run so far; `interrupted` is set) */
  signal?: AbortSignal;
  /** progress of each learning rate's run (job 'relearn', stage "lr=<lr>"; lib/core/progress.ts) */
  onProgress?: (p: JobProgress) => void;
  onCurve?: (lr: number, points: CurvePoint[]) => void;
}

export interface CurvePoint {
  step: number;
  value: number;
  /** other metrics the metric function measured at this point (e.g. the forget accuracy beside the forget loss) */
  metrics?: Record<string, number>;
}

export interface RelearnResult {
  curves: { lr: number; points: CurvePoint[] }[];
  /** the attacker's best over the sweep at each evaluated step (max, or min for direction 'min') */
  best: CurvePoint[];
  /** best value reached by each step budget (best over steps ≤ budget and over the sweep) */
  atBudget: Record<number, number>;
  /** the other metrics at the point that set atBudget (when the metric function returns them) */
  atBudgetMetrics?: Record<number, Record<string, number>>;
  /** the sweep was stopped by the signal before every learning rate ran */
  interrupted?: boolean;
}

export async function relearn(model: Model, data: PackedDataset, opts: RelearnOptions): Promise<RelearnResult> {
  const lrs = opts.lrs ?? DEFAULT_RELEARN_LRS;
  if (!lrs.length || lrs.some((lr) => !(lr > 0))) throw new Err(`relearn: learning rates must be positive, got ${lrs.join(',')}`);
  if (!(opts.evalEvery >= 1)) throw new Err('relearn: evalEvery must be >= 1');
  const sign = opts.direction === 'min' ? -1 : 1;
  const curves: RelearnResult['curves'] = [];
  const measure = async (m: Model): Promise<Omit<CurvePoint, 'step'>> => {
    const r = await opts.metric(m);
    return typeof r === 'number' ? { value: r } : { value: r.value, metrics: r.metrics };
  };
  const initial = await measure(model);
  let interrupted = false;
  for (const lr of lrs) {
    if (opts.signal?.aborted) {
      interrupted = true;
      break;
    }
    const m = model.clone();
    const points: CurvePoint[] = [{ step: 0, ...initial }];
    const batcher = new Batcher(data, { batchSize: opts.batchSize, seed: opts.seed ?? 42 });
    const r = await train(m, batcher, {
      steps: opts.steps, gradAccum: 1, lr, warmup: 1, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95,
      eps: 1e-8, clip: 1, evalEvery: opts.evalEvery, checkpointEvery: 0,
    }, {
      signal: opts.signal,
      onProgress: retag(opts.onProgress, 'relearn', `lr=${lr}`),
      evaluate: async (step) => {
        const p = await measure(m);
        points.push({ step, ...p });
        return { value: p.value };
      },
    });
    if (r.interrupted) {
      interrupted = true;
      break;
    }
    curves.push({ lr, points });
    opts.onCurve?.(lr, points);
  }
  const steps = [...new Set(curves.flatMap((c) => c.points.map((p) => p.step)))].sort((a, b) => a - b);
  // the attacker's best: the max of sign·value, reported in the metric's own units
  const best = steps.map((step) => {
    let top: CurvePoint | undefined;
    for (const c of curves) {
      const p = c.points.find((q) => q.step === step);
      if (p && (!top || sign * p.value > sign * top.value)) top = p;
    }
    return top!.metrics ? { step, value: top!.value, metrics: top!.metrics } : { step, value: top!.value };
  });
  const atBudget: Record<number, number> = {};
  const atBudgetMetrics: Record<number, Record<string, number>> = {};
  let running = -Infinity;
  let runningMetrics: Record<string, number> | undefined;
  for (const p of best) {
    if (sign * p.value > running) {
      running = sign * p.value;
      runningMetrics = p.metrics;
    }
    atBudget[p.step] = sign * running;
    if (runningMetrics) atBudgetMetrics[p.step] = runningMetrics;
  }
  return { curves, best, atBudget, ...(Object.keys(atBudgetMetrics).length ? { atBudgetMetrics } : {}), ...(interrupted ? { interrupted } : {}) };
}
