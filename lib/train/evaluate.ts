/**
 * Evaluation: greedy exact-match accuracy on the arithmetic task (per operation and form), the mean
 * next-token cross-entropy of a text under a model, and a teacher–student divergence on held-out data.
 */
import { UndoError, errorClass } from '../core/errors';
import { compute as computeLoss, LossName } from './losses';
import { generateIds } from '../models/generate';
import { Model } from '../models/model';
import { PackedDataset, windowBatches } from '../data/datasets';
import { arithmeticEvalSet, ArithmeticScore, isCorrect, Op, scoreArithmetic } from '../tasks/arithmetic';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export interface ArithmeticEvalOptions {
  ops?: readonly Op[];
  perForm?: number;
  seed?: number;
  maxNewTokens?: number;
  /** only these forms (default both) */
  forms?: readonly ('equation' | 'word_problem')[];
}

/** Greedy generation on the held-out eval prompts; an answer counts when it parses to the right number. */
export async function evalArithmetic(model: Model, opts: ArithmeticEvalOptions = {}): Promise<ArithmeticScore> {
  const items = arithmeticEvalSet({ ops: opts.ops, perForm: opts.perForm ?? 100, seed: opts.seed ?? 42 })
    .filter((it) => !opts.forms || opts.forms.includes(it.form));
  const prompts = items.map((it) => model.tokenizer.encode(it.prompt, { bos: true }));
  const gen = await generateIds(model, prompts, { maxNewTokens: opts.maxNewTokens ?? 6, batchSize: 128 });
  const results = items.map((it, i) => ({
    op: it.op,
    form: it.form,
    correct: isCorrect(model.tokenizer.decode(gen[i], { skipSpecial: true }), it.answer),
  }));
  return scoreArithmetic(results);
}

/** Flatten a score into metric names like "add/equation". */
export function arithmeticMetrics(s: ArithmeticScore): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [op, sc] of Object.entries(s.perOp)) {
    if (sc.n === 0) continue;
    out[`${op}/equation`] = sc.equation;
    out[`${op}/word_problem`] = sc.word_problem;
  }
  if (Number.isFinite(s.retain)) out.retain = s.retain;
  if (Number.isFinite(s.forget)) out.forget = s.forget;
  return out;
}

/**
 * Mean per-token cross-entropy (nats) of `text` under the model: tokenized with the model's tokenizer, BOS
 * prepended, every next-token prediction counted. Texts longer than the context are scored in consecutive
 * windows (each window starts fresh at position 0).
 */
export async function evalTextLoss(model: Model, text: string, window = Math.min(model.config.maxPositions, 1024)): Promise<{ loss: number; tokens: number }> {
  const ids = model.tokenizer.encode(text, { bos: true });
  if (ids.length < 2) throw new Err('the text is empty: nothing to predict');
  let total = 0;
  let count = 0;
  for (let start = 0; start + 1 < ids.length; start += window) {
    const T = Math.min(window, ids.length - 1 - start);
    const inp = ids.subarray(start, start + T);
    const tgt = ids.subarray(start + 1, start + T + 1);
    await model.native.forward(Int32Array.from(inp), 1, T);
    const r = await model.native.headLoss(Int32Array.from(tgt), null, -100, 0, false, null);
    total += r.loss * r.counted;
    count += r.counted;
  }
  return { loss: total / count, tokens: count };
}

/** Mean next-token cross-entropy over every window of a packed dataset (the validation loss of training). */
export async function evalPackedLoss(model: Model, data: PackedDataset, batchSize = 16): Promise<{ loss: number; tokens: number }> {
  let total = 0;
  let count = 0;
  for (const b of windowBatches(data, batchSize)) {
    await model.native.forward(b.inputs, b.B, b.T);
    const r = await model.native.headLoss(b.targets, null, -100, 0, false, null);
    total += r.loss * r.counted;
    count += r.counted;
  }
  return { loss: count ? total / count : NaN, tokens: count };
}

/**
 * Held-out cross-entropy and greedy next-token accuracy (argmax = target) over the first `maxWindows` windows of
 * a packed dataset: the loss through the fused head, the accuracy from logits fetched a few rows at a time (never
 * a batch × vocab block). Masked targets (−100) count in neither.
 */
export async function evalPackedLossAccuracy(model: Model, data: PackedDataset, opts: { batchSize?: number; maxWindows?: number } = {}):
  Promise<{ loss: number; accuracy: number; tokens: number }> {
  const V = model.config.vocabSize;
  const chunk = Math.max(1, Math.floor(DIVERGENCE_CHUNK_FLOATS / V));
  let buf: Float32Array | undefined;
  let total = 0, count = 0, correct = 0;
  for (const b of windowBatches(data, opts.batchSize ?? 16, opts.maxWindows ?? data.count)) {
    await model.native.forward(b.inputs, b.B, b.T);
    const r = await model.native.headLoss(b.targets, null, -100, 0, false, null);
    total += r.loss * r.counted;
    count += r.counted;
    const rows = b.B * b.T;
    for (let r0 = 0; r0 < rows; r0 += chunk) {
      const n = Math.min(chunk, rows - r0);
      if (!buf || buf.length < n * V) buf = new Float32Array(n * V);
      const logits = await model.native.logits(Int32Array.from({ length: n }, (_, j) => r0 + j), buf.subarray(0, n * V));
      for (let j = 0; j < n; j++) {
        const t = b.targets[r0 + j];
        if (t < 0) continue;
        let best = 0, bv = -Infinity;
        for (let v = 0, o = j * V; v < V; v++) if (logits[o + v] > bv) { bv = logits[o + v]; best = v; }
        if (best === t) correct++;
      }
    }
  }
  return { loss: count ? total / count : NaN, accuracy: count ? correct / count : NaN, tokens: count };
}

/** Rows of logits fetched at a time by evalDivergence: 2^22 floats (16 MB) per model, at least one row. */
const DIVERGENCE_CHUNK_FLOATS = 1 << 22;

/**
 * Mean per-token divergence between a teacher and a student over every window of a packed dataset (default
 * forward KL(teacher ‖ student) at temperature 1): the held-out distillation gap, for evaluation and early
 * stopping. Loss only, no gradient; the logits of both models are fetched a few rows at a time (never a
 * batch × vocab block, which for a 128k vocabulary would be gigabytes).
 */
export async function evalDivergence(
  student: Model, teacher: Model, data: PackedDataset,
  opts: { loss?: LossName; temperature?: number; params?: Record<string, number>; batchSize?: number; chunkRows?: number } = {},
): Promise<{ value: number; tokens: number }> {
  const T = data.seqLen;
  const bs = opts.batchSize ?? 8;
  const V = student.config.vocabSize;
  if (teacher.config.vocabSize !== V) throw new Err(`evalDivergence: teacher vocab ${teacher.config.vocabSize} ≠ student vocab ${V}`);
  let total = 0;
  let count = 0;
  const chunk = opts.chunkRows ?? Math.max(1, Math.floor(DIVERGENCE_CHUNK_FLOATS / V));
  const tbuf = new Float32Array(chunk * V), sbuf = new Float32Array(chunk * V);  // reused by every chunk
  for (const { inputs: ids, B } of windowBatches(data, bs)) {
    await teacher.native.forward(ids, B, T);
    await student.native.forward(ids, B, T);
    for (let r0 = 0; r0 < B * T; r0 += chunk) {
      const rows = Int32Array.from({ length: Math.min(chunk, B * T - r0) }, (_, j) => r0 + j);
      const [tl, sl] = [await teacher.native.logits(rows, tbuf), await student.native.logits(rows, sbuf)];
      const r = await computeLoss(opts.loss ?? 'fkl', { student: sl, teacher: tl, rows: rows.length, vocab: V, temperature: opts.temperature ?? 1, grad: false, ...(opts.params ?? {}) });
      total += r.loss * rows.length;
      count += rows.length;
    }
  }
  return { value: count ? total / count : NaN, tokens: count };
}
