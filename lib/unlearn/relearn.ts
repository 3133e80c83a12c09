/**
 * The relearning attack: fine-tune a copy of the model with plain cross-entropy on attack data, once per
 * learning rate of a sweep, evaluating a metric every k steps. The attacker's curve is the best value over
 * the sweep at each evaluation step (undo.md §6: LR sweep, constant LR, warm-up 1, clip 1, no decay).
 */
import { Batcher, PackedDataset } from '../data/datasets';
import { UndoError } from '../core/errors';
import { Model } from '../models/model';
import { train } from '../train/train';

export const DEFAULT_RELEARN_LRS = [1e-3, 7e-4, 4e-4, 1e-4, 7e-5, 5e-5, 1e-5];

export interface RelearnOptions {
  lrs?: number[];
  steps: number;
  evalEvery: number;
  batchSize: number;
  seed?: number;
  /** the attacker's objective metric (e.g. forget accuracy); higher = more relearned */
  metric: (model: Model) => Promise<number>;
  onCurve?: (lr: number, points: CurvePoint[]) => void;
}

export interface CurvePoint {
  step: number;
  value: number;
}

export interface RelearnResult {
  curves: { lr: number; points: CurvePoint[] }[];
  /** max over the sweep at each evaluated step */
  best: CurvePoint[];
  /** best value reached by each step budget (max over steps ≤ budget and over the sweep) */
  atBudget: Record<number, number>;
}

export async function relearn(model: Model, data: PackedDataset, opts: RelearnOptions): Promise<RelearnResult> {
  const lrs = opts.lrs ?? DEFAULT_RELEARN_LRS;
  if (!lrs.length || lrs.some((lr) => !(lr > 0))) throw new UndoError(`relearn: learning rates must be positive, got ${lrs.join(',')}`);
  if (!(opts.evalEvery >= 1)) throw new UndoError('relearn: evalEvery must be >= 1');
  const curves: RelearnResult['curves'] = [];
  const initial = await opts.metric(model);
  for (const lr of lrs) {
    const m = model.clone();
    const points: CurvePoint[] = [{ step: 0, value: initial }];
    const batcher = new Batcher(data, { batchSize: opts.batchSize, seed: opts.seed ?? 42 });
    await train(m, batcher, {
      steps: opts.steps, gradAccum: 1, lr, warmup: 1, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95,
      eps: 1e-8, clip: 1, evalEvery: opts.evalEvery, checkpointEvery: 0,
    }, {
      evaluate: async (step) => {
        const value = await opts.metric(m);
        points.push({ step, value });
        return { value };
      },
    });
    curves.push({ lr, points });
    opts.onCurve?.(lr, points);
  }
  const steps = [...new Set(curves.flatMap((c) => c.points.map((p) => p.step)))].sort((a, b) => a - b);
  const best = steps.map((step) => ({ step, value: Math.max(...curves.map((c) => c.points.find((p) => p.step === step)?.value ?? -Infinity)) }));
  const atBudget: Record<number, number> = {};
  let running = -Infinity;
  for (const p of best) {
    running = Math.max(running, p.value);
    atBudget[p.step] = running;
  }
  return { curves, best, atBudget };
}
