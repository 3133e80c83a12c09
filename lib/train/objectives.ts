/**
 * Training objectives on one batch, shared by unlearning, distillation and the relearning attack. Each runs
 * forward on the model, puts the gradient of its loss into model.grads (accumulating) and returns the loss.
 * Losses over the logits go through the loss kernels (lib/train/losses.ts) and model.native.headGrad.
 */
import { Batch } from '../data/datasets';
import { loss as kdLoss, LossName, TopKTeacher } from './losses';
import { Model } from '../models/model';

/**
 * scale · mean next-token cross-entropy over the batch's unmasked target tokens (targets ≠ −100; scale < 0
 * ascends). Returns the unscaled mean CE (0 when every target is masked: no gradient either).
 */
export async function ceObjective(model: Model, b: Batch, scale = 1): Promise<number> {
  const rows = b.B * b.T;
  if (scale === 0) return 0;
  let n = 0;
  for (let i = 0; i < rows; i++) if (b.targets[i] !== -100) n++;
  if (n === 0) return 0;
  const weights = scale === 1 ? null : new Float32Array(rows).fill(scale);
  const r = await model.native.trainStep(b.inputs, b.targets, b.B, b.T, weights, n, -100);
  return r.loss / scale;
}

/** Per-row next-token CE of a batch under a model (no gradient). */
export async function rowCE(model: Model, b: Batch): Promise<Float32Array> {
  const rows = new Float32Array(b.B * b.T);
  await model.native.forward(b.inputs, b.B, b.T);
  await model.native.headLoss(b.targets, null, -100, 0, false, rows);
  return rows;
}

/**
 * scale · a loss on the student's logits (name from lib/train/losses.ts) against a teacher model's logits on the
 * same inputs, given teacher logits, a stored top-k teacher, or none (e.g. maxent). The teacher runs forward only. Returns the
 * unscaled loss.
 */
export async function logitObjective(
  model: Model, b: Batch, name: LossName,
  opts: {
    teacher?: Model; teacherLogits?: Float32Array; teacherTopK?: TopKTeacher; tail?: 'renorm' | 'bucket';
    scale?: number; temperature?: number; params?: Record<string, number>;
  } = {},
): Promise<number> {
  const rows = b.B * b.T;
  const vocab = model.config.vocabSize;
  let teacher: Float32Array | TopKTeacher | undefined = opts.teacherLogits;
  if (!teacher && name !== 'deltakd') {
    // fused: student and teacher logits only ever exist one row chunk at a time (Model::head_custom), for a
    // teacher model, a top-k teacher or none
    if (opts.teacher) await opts.teacher.native.forward(b.inputs, b.B, b.T);
    await model.native.forward(b.inputs, b.B, b.T);
    const tk = opts.teacherTopK;
    const r = await model.native.headKd(name, opts.teacher?.native ?? null, {
      ...(opts.params ?? {}), temperature: opts.temperature, scale: opts.scale ?? 1, targets: b.targets,
      ...(tk ? { topkIds: tk.ids, topkLogprobs: tk.logprobs, k: tk.k, tail: opts.tail } : {}),
    });
    await model.native.backward(true, null);
    return r.loss / (opts.scale ?? 1);
  }
  // deltakd (and caller-supplied teacher logits): the whole batch's logits, as the loss needs four of them
  if (opts.teacher) {
    await opts.teacher.native.forward(b.inputs, b.B, b.T);
    teacher = await opts.teacher.native.logits(null);
  } else if (!teacher) teacher = opts.teacherTopK;
  await model.native.forward(b.inputs, b.B, b.T);
  const student = await model.native.logits(null);
  const r = kdLoss.compute(name, { student, teacher, rows, vocab, temperature: opts.temperature, targets: b.targets, tail: opts.tail, ...(opts.params ?? {}) });
  const scale = opts.scale ?? 1;
  if (scale !== 1) for (let i = 0; i < r.grad.length; i++) r.grad[i] *= scale;
  await model.native.headGrad(r.grad);
  await model.native.backward(true, null);
  return r.loss;
}
