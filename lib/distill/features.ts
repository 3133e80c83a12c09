/**
 * Label-free multi-teacher feature distillation (RADIO's "agglomerative" setting, with PHI-S, Ranzinger et al.
 * 2024): the student's hidden state at layer L goes through one adaptor head per teacher (lib/distill/adaptor.ts)
 * and is matched to that teacher's hidden state at its layer L', standardized per teacher
 * (lib/distill/standardize.ts: none, perdim, global, pca-whiten, phi-s), with a feature loss (mse, cosine,
 * smoothl1); optionally with a logit KD loss against the first teacher and the hard-label CE. One micro-batch:
 *
 *   teachers forward → h_t[i] = teacher_i.hidden(L'_i) → y_i = A_i·(h_t[i] − μ_i)           (fixed targets)
 *   student forward  → ŷ_i = adaptor_i(student.hidden(L_i)) → ℓ_i = loss(ŷ_i, y_i)
 *   ∂ℓ_i/∂ŷ_i → adaptor_i backward → ∂/∂student.hidden(L_i) (summed per layer)
 *   [logit KD + CE in row chunks → d(logits) → the head]  → student backward with the hidden-state gradients
 *
 * Teacher statistics are estimated once in one streaming float64 pass over the training data, stored in the run
 * directory (feature-stats-teacher-N.json/.f64) and reused when the teacher, layer and data are the same.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Batcher, PackedDataset, WindowBatch, windowBatches } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { loss as kdLoss, LossName } from '../train/losses';
import { Model } from '../models/model';
import { headChunkRows } from '../train/objectives';
import { train, TrainConfig, TrainOptions, TrainResult } from '../train/train';
import { Adaptor, AdaptorGroup, AdaptorKind } from './adaptor';
import { FeatureStats, loadFeatureStats, saveFeatureStats, Standardization, Standardizer, StatsKey } from './standardize';
import { dataHash, teacherHashFromModel } from './teacher_store';
import { checkCompatible } from './distill';
import { resolveLayer } from './knn_store';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export const FEATURE_LOSSES = ['mse', 'cosine', 'smoothl1'] as const;
export type FeatureLoss = (typeof FEATURE_LOSSES)[number];

/**
 * A feature loss between predictions and targets [rows, dim], averaged over the rows whose mask is set (null: all)
 * — mse: mean_j (p − t)²; smoothl1 (Huber, β = 1): mean_j (½e² if |e| < 1 else |e| − ½); cosine: 1 − cos(p, t).
 * grad = gradScale · ∂loss/∂pred (zero on masked rows). Returns the mean loss and the rows counted.
 */
export function featureLoss(kind: FeatureLoss, pred: Float32Array, target: Float32Array, rows: number, dim: number,
  opts: { mask?: Uint8Array | null; gradScale?: number; grad?: Float32Array } = {}): { loss: number; count: number; grad: Float32Array } {
  if (!(FEATURE_LOSSES as readonly string[]).includes(kind)) throw new Err(`unknown feature loss "${kind}"`, `one of: ${FEATURE_LOSSES.join(', ')}`);
  if (pred.length < rows * dim || target.length < rows * dim) throw new Err(`feature loss: ${rows} rows of ${dim} need ${rows * dim} values`);
  const mask = opts.mask ?? null;
  const grad = opts.grad ?? new Float32Array(rows * dim);
  grad.fill(0, 0, rows * dim);
  let count = 0;
  for (let r = 0; r < rows; r++) if (!mask || mask[r]) count++;
  if (count === 0) return { loss: 0, count, grad };
  const g = (opts.gradScale ?? 1) / count;
  let total = 0;
  for (let r = 0; r < rows; r++) {
    if (mask && !mask[r]) continue;
    const o = r * dim;
    if (kind === 'mse' || kind === 'smoothl1') {
      let s = 0;
      for (let j = 0; j < dim; j++) {
        const e = pred[o + j] - target[o + j];
        if (kind === 'mse') {
          s += e * e;
          grad[o + j] = (2 * e * g) / dim;
        } else {
          const a = Math.abs(e);
          s += a < 1 ? 0.5 * e * e : a - 0.5;
          grad[o + j] = ((a < 1 ? e : Math.sign(e)) * g) / dim;
        }
      }
      total += s / dim;
    } else {
      let pt = 0, pp = 0, tt = 0;
      for (let j = 0; j < dim; j++) {
        pt += pred[o + j] * target[o + j];
        pp += pred[o + j] * pred[o + j];
        tt += target[o + j] * target[o + j];
      }
      const np = Math.sqrt(pp) + 1e-12, nt = Math.sqrt(tt) + 1e-12;
      const c = pt / (np * nt);
      total += 1 - c;
      // ∂(1 − cos)/∂p = −(t/(|p||t|) − cos·p/|p|²)
      for (let j = 0; j < dim; j++) grad[o + j] = -g * (target[o + j] / (np * nt) - (c * pred[o + j]) / (np * np));
    }
  }
  return { loss: total / count, count, grad };
}

/** One teacher of a feature-distillation run. */
export interface FeatureTeacher {
  model: Model;
  /** the student's block whose output feeds this teacher's adaptor (0-based; hidden(L)) */
  studentLayer: number;
  /** the teacher's block whose output is the target (0-based) */
  teacherLayer: number;
  standardizer: Standardizer;
  adaptor: Adaptor;
  /** weight of this teacher's feature loss (default 1) */
  weight?: number;
  /** a name for reports (e.g. the teacher's directory) */
  name?: string;
}

/** Rows of a batch that count: targets ≠ −100 (packing pads carry no target; their features are not matched). */
function rowMask(b: WindowBatch): Uint8Array {
  const m = new Uint8Array(b.B * b.T);
  for (let i = 0; i < m.length; i++) m[i] = b.targets[i] !== -100 ? 1 : 0;
  return m;
}

/** Check a resolved (non-negative) layer index against a model, naming the side. */
export function checkLayer(model: Model, layer: number, what: string): void {
  try {
    if (layer < 0 || resolveLayer(layer, model.config.numLayers) !== layer) throw new Err(`layer ${layer} is negative (resolve it first)`);
  } catch (e) {
    throw new Err(`${what} ${(e as Error).message}`);
  }
}

/**
 * Streaming float64 statistics of a model's hidden state at `layer` over the first windows of `data` holding at
 * least maxTokens counted positions (all of them when fewer): one forward per batch, FeatureStats.add per batch.
 */
export async function computeFeatureStats(model: Model, layer: number, data: PackedDataset, opts: { maxTokens?: number; batchSize?: number } = {}): Promise<FeatureStats> {
  checkLayer(model, layer, 'teacher');
  const stats = new FeatureStats(model.config.hiddenSize);
  const maxTokens = opts.maxTokens ?? 65536;
  for (const b of windowBatches(data, opts.batchSize ?? 16)) {
    if (stats.count >= maxTokens) break;
    await model.native.forward(b.inputs, b.B, b.T);
    stats.add(model.native.hidden(layer), b.B * b.T, rowMask(b));
  }
  if (stats.count < 2) throw new Err(`teacher feature statistics: the data has ${stats.count} counted positions (need at least 2)`);
  return stats;
}

/**
 * The statistics of one teacher's layer on `data`: read from `dir` (NAME.json / NAME.f64) when they were computed
 * from the same teacher weights, layer, data and token budget, else computed and written there.
 */
export async function teacherFeatureStats(model: Model, layer: number, data: PackedDataset, dir: string, name: string,
  opts: { maxTokens?: number; log?: (m: string) => void } = {}): Promise<{ stats: FeatureStats; reused: boolean }> {
  const key: StatsKey = { teacher_sha256: teacherHashFromModel(model), layer, data_sha256: dataHash(data), max_tokens: opts.maxTokens ?? 65536 };
  const old = loadFeatureStats(dir, name, key);
  if (old) return { stats: old, reused: true };
  const t0 = Date.now();
  const stats = await computeFeatureStats(model, layer, data, { maxTokens: opts.maxTokens });
  saveFeatureStats(dir, name, stats, key);
  opts.log?.(`${name}: statistics of ${stats.count} positions (width ${stats.dim}) in ${((Date.now() - t0) / 1000).toFixed(1)} s → ${path.join(dir, name)}.json`);
  return { stats, reused: false };
}

export interface FeatureDistillOptions extends TrainOptions {
  teachers: FeatureTeacher[];
  featureLoss?: FeatureLoss;
  /** logit KD against the first teacher (same vocabulary): loss name and weight (0 = off) */
  logitLoss?: LossName;
  logitWeight?: number;
  temperature?: number;
  params?: Record<string, number>;
  /** weight of the hard-label CE (0 = off) */
  hardWeight?: number;
  /** files kept in the run directory through its checkpoints (e.g. the teachers' statistics) */
  carryFiles?: string[];
}

/** Per-teacher feature losses of the last micro-batches (mean since the last read), for progress and metrics. */
export interface FeatureLossLog {
  perTeacher: number[];
  batches: number;
}

/**
 * One micro-batch of feature distillation: the teachers' and the student's forwards, every teacher's feature loss
 * through its adaptor, the optional logit KD and CE on the head, one backward. Accumulates the student's and the
 * adaptors' gradients (scaled by `scale`); returns the weighted total and each teacher's feature loss.
 */
export async function featureObjective(student: Model, b: WindowBatch, opts: FeatureDistillOptions, scale = 1): Promise<{ loss: number; perTeacher: number[] }> {
  const rows = b.B * b.T;
  const mask = rowMask(b);
  const done = new Set<Model>();
  for (const t of opts.teachers) {
    if (done.has(t.model)) continue;
    await t.model.native.forward(b.inputs, b.B, b.T);
    done.add(t.model);
  }
  // the targets first (teachers' hidden states are views that the next forward of the same model overwrites)
  const targets = opts.teachers.map((t) => t.standardizer.apply(t.model.native.hidden(t.teacherLayer), rows));
  await student.native.forward(b.inputs, b.B, b.T);
  const grads: (Float32Array | null)[] = new Array(student.config.numLayers).fill(null);
  const kind = opts.featureLoss ?? 'mse';
  let total = 0;
  const perTeacher: number[] = [];
  for (let i = 0; i < opts.teachers.length; i++) {
    const t = opts.teachers[i];
    const w = t.weight ?? 1;
    const h = student.native.hidden(t.studentLayer);
    // the adaptor keeps this view of the student's activations for its backward, which runs before anything
    // else touches the student
    const pred = t.adaptor.forward(h, rows);
    const r = featureLoss(kind, pred, targets[i], rows, t.standardizer.dim, { mask, gradScale: w * scale });
    perTeacher.push(r.loss);
    total += w * r.loss;
    if (w === 0 || scale === 0) continue;
    const dh = t.adaptor.backward(r.grad);
    const g = grads[t.studentLayer];
    if (g) for (let j = 0; j < g.length; j++) g[j] += dh[j];
    else grads[t.studentLayer] = dh;
  }
  const lw = opts.logitWeight ?? 0, hw = opts.hardWeight ?? 0;
  let counted = 0;
  for (let i = 0; i < rows; i++) counted += mask[i];
  const useHead = (lw > 0 || hw > 0) && counted > 0;
  if (useHead) {
    // logit KD against the first teacher and CE, in row chunks: one d(logits) per chunk into the head
    const V = student.config.vocabSize;
    // the first teacher's forward on this batch ran above (each model once), so its logits are there
    const teacher = opts.teachers[0].model;
    const chunk = headChunkRows(V, rows);
    const sbuf = new Float32Array(chunk * V), tbuf = new Float32Array(chunk * V);
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const n = Math.min(chunk, rows - r0);
      const idx = Int32Array.from({ length: n }, (_, i) => r0 + i);
      const s = (await student.native.logits(idx, sbuf)).subarray(0, n * V);
      const tg = b.targets.subarray(r0, r0 + n);
      const grad = new Float32Array(n * V);
      if (lw > 0) {
        const t = (await teacher.native.logits(idx, tbuf)).subarray(0, n * V);
        const r = await kdLoss.compute(opts.logitLoss ?? 'fkl', { student: s, teacher: t, rows: n, vocab: V, temperature: opts.temperature, targets: tg, ...(opts.params ?? {}), reduction: 'sum', gradScale: (lw * scale) / counted });
        total += (lw * sumRows(r.perRow)) / counted;
        for (let j = 0; j < grad.length; j++) grad[j] += r.grad[j];
      }
      if (hw > 0) {
        const r = await kdLoss.compute('ce', { student: s, rows: n, vocab: V, targets: tg, reduction: 'sum', gradScale: (hw * scale) / counted });
        total += (hw * sumRows(r.perRow)) / counted;
        for (let j = 0; j < grad.length; j++) grad[j] += r.grad[j];
      }
      await student.native.headGradRows(r0, grad);
    }
  }
  if (scale !== 0) await student.native.backward(useHead, grads);
  return { loss: total, perTeacher };
}

/** Σ of per-row losses (0 on the rows not counted) */
function sumRows(a: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s;
}

/** Held-out feature-matching errors of every teacher, in the teacher's own (un-standardized) feature space. */
export interface FeatureErrors {
  /** fraction of variance unexplained: Σ‖A⁻¹ŷ + μ − h‖² / Σ‖h − μ‖² (μ the teacher's mean): comparable across standardizations and teachers */
  fvu: number;
  /** mean squared error per dimension in the teacher's space */
  mse: number;
  /** mean cosine similarity between the de-standardized prediction and the teacher's feature */
  cosine: number;
  /** the training loss's value in the standardized space */
  loss: number;
}

/** Feature-matching errors of each teacher over the windows of `data` (no gradients). */
export async function featureErrors(student: Model, teachers: FeatureTeacher[], data: PackedDataset, opts: { featureLoss?: FeatureLoss; batchSize?: number; maxWindows?: number } = {}): Promise<FeatureErrors[]> {
  const acc = teachers.map(() => ({ se: 0, tv: 0, cos: 0, loss: 0, rows: 0 }));
  for (const b of windowBatches(data, opts.batchSize ?? 16, opts.maxWindows ?? 400)) {
    const rows = b.B * b.T;
    const mask = rowMask(b);
    const raw: Float32Array[] = [];
    for (const t of teachers) {
      await t.model.native.forward(b.inputs, b.B, b.T);
      raw.push(Float32Array.from(t.model.native.hidden(t.teacherLayer)));
    }
    await student.native.forward(b.inputs, b.B, b.T);
    for (let i = 0; i < teachers.length; i++) {
      const t = teachers[i], d = t.standardizer.dim, mu = t.standardizer.mean;
      const pred = t.adaptor.forward(Float32Array.from(student.native.hidden(t.studentLayer)), rows);
      const y = t.standardizer.apply(raw[i], rows);
      const r = featureLoss(opts.featureLoss ?? 'mse', pred, y, rows, d, { mask });
      const back = t.standardizer.invert(pred, rows);
      const a = acc[i];
      a.loss += r.loss * r.count;
      for (let row = 0; row < rows; row++) {
        if (!mask[row]) continue;
        let se = 0, tv = 0, pt = 0, pp = 0, tt = 0;
        for (let j = 0; j < d; j++) {
          const x = raw[i][row * d + j], p = back[row * d + j];
          se += (p - x) * (p - x);
          tv += (x - mu[j]) * (x - mu[j]);
          pt += p * x;
          pp += p * p;
          tt += x * x;
        }
        a.se += se;
        a.tv += tv;
        a.cos += pt / (Math.sqrt(pp * tt) + 1e-12);
        a.rows++;
      }
    }
  }
  return teachers.map((t, i) => {
    const a = acc[i];
    return { fvu: a.se / Math.max(a.tv, 1e-30), mse: a.se / Math.max(1, a.rows * t.standardizer.dim), cosine: a.cos / Math.max(1, a.rows), loss: a.loss / Math.max(1, a.rows) };
  });
}

/**
 * Train the student (and the adaptor heads) with feature distillation from every teacher (plus the optional logit
 * KD and CE): the shared training loop with featureObjective as the micro-step and the adaptors as extra
 * parameters (clipped with the student, checkpointed as adaptors.safetensors). The run directory also gets
 * feature_distill.json (teachers, layers, standardizations, adaptors) and keeps opts.carryFiles.
 */
export async function distillFeatures(student: Model, batcher: Batcher, cfg: TrainConfig, opts: FeatureDistillOptions): Promise<TrainResult & { lastFeatureLoss: number[] }> {
  if (!opts.teachers.length) throw new Err('feature distillation needs at least one teacher');
  for (const [i, t] of opts.teachers.entries()) {
    if (t.model === student) throw new Err(`teacher ${i + 1} is the student itself (load it separately)`);
    checkLayer(student, t.studentLayer, `teacher ${i + 1}: student`);
    checkLayer(t.model, t.teacherLayer, `teacher ${i + 1}: teacher`);
    if (t.model.tokenizer.vocabHash() !== student.tokenizer.vocabHash()) {
      throw new Err(`teacher ${i + 1}${t.name ? ` (${t.name})` : ''} has another tokenizer than the student: feature distillation matches positions token by token and needs one tokenizer`);
    }
    if (t.standardizer.dim !== t.model.config.hiddenSize) throw new Err(`teacher ${i + 1}: its standardizer has width ${t.standardizer.dim}, the teacher ${t.model.config.hiddenSize}`);
    if (t.adaptor.inDim !== student.config.hiddenSize || t.adaptor.outDim !== t.model.config.hiddenSize) {
      throw new Err(`teacher ${i + 1}: its adaptor maps ${t.adaptor.inDim} → ${t.adaptor.outDim}, need ${student.config.hiddenSize} → ${t.model.config.hiddenSize}`);
    }
  }
  const lw = opts.logitWeight ?? 0;
  const hw = opts.hardWeight ?? 0;
  if (!(lw >= 0 && Number.isFinite(lw))) throw new Err(`logit KD weight must be ≥ 0, got ${lw}`);
  if (!(hw >= 0 && Number.isFinite(hw))) throw new Err(`hard-label weight must be ≥ 0, got ${hw}`);
  if (lw > 0) checkCompatible(student, opts.teachers[0].model);
  const log: FeatureLossLog = { perTeacher: opts.teachers.map(() => 0), batches: 0 };
  let last = opts.teachers.map(() => NaN);
  // the run's description and the teachers' statistics go into every checkpoint (a save replaces the directory)
  const manifest = {
      feature_loss: opts.featureLoss ?? 'mse', logit_loss: lw > 0 ? opts.logitLoss ?? 'fkl' : null, logit_weight: lw, hard_weight: opts.hardWeight ?? 0,
      teachers: opts.teachers.map((t, i) => ({
        name: t.name ?? `teacher ${i + 1}`, student_layer: t.studentLayer, teacher_layer: t.teacherLayer, width: t.model.config.hiddenSize,
        standardization: t.standardizer.kind, alpha: t.standardizer.alpha, weight: t.weight ?? 1,
        adaptor: { kind: t.adaptor.kind, in: t.adaptor.inDim, out: t.adaptor.outDim, hidden: t.adaptor.hidden, tensors: t.adaptor.params.map((p) => `adaptor.${i}.${p.name}`) },
      })),
  };
  const carried: Record<string, Buffer> = { 'feature_distill.json': Buffer.from(JSON.stringify(manifest, null, 2) + '\n') };
  for (const f of opts.carryFiles ?? []) carried[path.basename(f)] = fs.readFileSync(f);
  const group = new AdaptorGroup(opts.teachers.map((t) => t.adaptor), carried);
  const onStep = opts.onStep;
  const r = await train(student, batcher, cfg, {
    ...opts,
    job: opts.job ?? 'distill',
    extraParams: group,
    microStep: async (b, share) => {
      const o = await featureObjective(student, b, opts, share);
      o.perTeacher.forEach((x, i) => (log.perTeacher[i] += x));
      log.batches++;
      return o.loss * share;
    },
    onStep: (s) => {
      last = log.perTeacher.map((x) => x / Math.max(1, log.batches));
      log.perTeacher.fill(0);
      log.batches = 0;
      onStep?.(s);
    },
  });
  return { ...r, lastFeatureLoss: last };
}

/** Parse `--features L:L'` (student block : teacher block; negative counts from the end, −1 = the last). */
export function parseFeaturePair(v: string): { student: number; teacher: number } {
  const m = /^\s*(-?\d+)\s*:\s*(-?\d+)\s*$/.exec(v);
  if (!m) throw new Err(`--features "${v}": expected STUDENT_LAYER:TEACHER_LAYER (block indices, e.g. 3:5 or -1:-1)`);
  // resolved against each model with knn_store's resolveLayer (negative: from the end)
  return { student: Number(m[1]), teacher: Number(m[2]) };
}

export type { AdaptorKind, Standardization };
