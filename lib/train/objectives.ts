/**
 * Training objectives on one batch, shared by unlearning, distillation and the relearning attack. Each runs
 * forward on the model, puts the gradient of its loss into model.grads (accumulating) and returns the loss.
 * Losses over the logits go through the loss kernels (lib/train/losses.ts) and model.native.headGrad.
 */
import { Batch } from '../data/datasets';
import { loss as kdLoss, LossName, TopKTeacher } from './losses';
import { Model } from '../models/model';
import { HEAD_CHUNK_FLOATS_FLOOR } from '../models/info';
import { UndoError, errorClass } from '../core/errors';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

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
    /** deltakd: the student before distillation and the teacher before its fine-tuning (forwards on the batch) */
    studentBase?: Model; teacherBase?: Model;
    scale?: number; temperature?: number; params?: Record<string, number>;
  } = {},
): Promise<number> {
  const rows = b.B * b.T;
  const vocab = model.config.vocabSize;
  if (!opts.teacherLogits && name !== 'deltakd') {
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
  // deltakd (four logits per row: student, teacher and their bases) and caller-supplied teacher logits: in row
  // chunks too (chunkedLogitObjective); only a caller's own teacherLogits array is whole-batch
  const tl = opts.teacherLogits;
  const tm = opts.teacher, sb = opts.studentBase, tb = opts.teacherBase;
  if (name === 'deltakd' && !tl && !(tm && sb && tb)) {
    throw new Err('deltakd needs the teacher, the student before distillation and the teacher before its fine-tuning (teacher, studentBase, teacherBase)');
  }
  for (const m of [tm, sb, tb]) if (m) await m.native.forward(b.inputs, b.B, b.T);
  const bufs = new Map<Model, Float32Array>();
  const rowsOf = async (m: Model, idx: Int32Array): Promise<Float32Array> => {
    let buf = bufs.get(m);
    if (!buf || buf.length < idx.length * vocab) bufs.set(m, (buf = new Float32Array(idx.length * vocab)));
    return (await m.native.logits(idx, buf)).subarray(0, idx.length * vocab);
  };
  return chunkedLogitObjective(model, b, name, async (row0, idx) => ({
    teacher: tl ? tl.subarray(row0 * vocab, (row0 + idx.length) * vocab) : tm ? await rowsOf(tm, idx) : undefined,
    ...(name === 'deltakd' && sb && tb ? { studentBase: await rowsOf(sb, idx), teacherBase: await rowsOf(tb, idx) } : {}),
  }), { scale: opts.scale, temperature: opts.temperature, params: opts.params, rows });
}

/**
 * Rows per TS-side head chunk: ≤ 256 and ≤ 2²³ logits (the native head's floor, Model::head_chunk_floats; the TS
 * side keeps the floor for every model because it holds several such buffers at once: student, teacher, bases).
 */
export function headChunkRows(vocab: number, rows: number): number {
  return Math.max(1, Math.min(256, rows, Math.floor(HEAD_CHUNK_FLOATS_FLOOR / vocab)));
}

/**
 * scale · a loss of lib/train/losses.ts on the student's logits against teacher logits that `teacherRows`
 * supplies for each chunk of rows (row0, the row indices) — e.g. computed from other models' forwards — in row
 * chunks of ≤ 2²³ logits: no rows × V block of the batch exists. The mean is over the batch's rows whose target
 * is not −100, like the whole-batch loss. Runs the student's forward (unless `forwardDone`) and backward.
 * Returns the unscaled loss.
 */
export async function chunkedLogitObjective(
  model: Model, b: Batch, name: LossName,
  teacherRows: (row0: number, idx: Int32Array) => Promise<{ teacher?: Float32Array; studentBase?: Float32Array; teacherBase?: Float32Array }>,
  opts: { scale?: number; temperature?: number; params?: Record<string, number>; rows?: number; forwardDone?: boolean; chunk?: number } = {},
): Promise<number> {
  const rows = b.B * b.T;
  const vocab = model.config.vocabSize;
  const scale = opts.scale ?? 1;
  let counted = 0;
  for (let i = 0; i < rows; i++) if (b.targets[i] !== -100) counted++;
  if (!opts.forwardDone) await model.native.forward(b.inputs, b.B, b.T);
  if (counted === 0) return 0;
  const chunk = Math.min(opts.chunk ?? Infinity, headChunkRows(vocab, rows));
  const sbuf = new Float32Array(chunk * vocab);
  let total = 0;
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0);
    const idx = Int32Array.from({ length: n }, (_, i) => r0 + i);
    const student = (await model.native.logits(idx, sbuf)).subarray(0, n * vocab);
    const t = await teacherRows(r0, idx);
    const r = await kdLoss.compute(name, {
      student, ...t, rows: n, vocab, temperature: opts.temperature, targets: b.targets.subarray(r0, r0 + n),
      ...(opts.params ?? {}), reduction: 'sum', gradScale: scale / counted,
    });
    total += r.loss;
    await model.native.headGradRows(r0, r.grad);
  }
  await model.native.backward(true, null);
  return scale !== 0 ? total / scale : 0;
}
