/**
 * What an UNDO study measures on: a StudyTask holds the forget, retain, distillation and attack data and the
 * scores (retain and forget, in the task's unit), the distillation stop rule and the attacker's metric.
 * Two kinds: the built-in arithmetic task (greedy exact-match accuracy, the paper's synthetic setting) and
 * data tasks (held-out cross-entropy per split, the paper's language setting and any user's own data).
 */
import { Document, packDocuments, PackedDataset, splitTrainVal } from '../data/datasets';
import type { PackingTokenizer } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { evalArithmetic, evalPackedLossAccuracy } from '../train/evaluate';
import { Model } from '../models/model';
import { ALL_OPS, FORGET_OPS, generateArithmeticCorpus, Op, RETAIN_OPS } from '../tasks/arithmetic';
import { TrainOptions } from '../train/train';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

/** A model's scores on a task: retain and forget in the task's unit, and every metric by name. */
export interface TaskScore {
  retain: number;
  forget: number;
  metrics: Record<string, number>;
}

export interface StudyTask {
  name: string;
  /**
   * 'accuracy': retain and forget are accuracies (higher = kept / relearned); 'loss': held-out cross-entropies in
   * nats per token (lower = kept / relearned).
   */
  unit: 'accuracy' | 'loss';
  forget: PackedDataset;
  retain: PackedDataset;
  /** what distillation (full and UNDO) trains on: the pretraining mixture, forget data included (undo.md §5) */
  mixture: PackedDataset;
  /** what the relearning attack fine-tunes on */
  attack: PackedDataset;
  score(m: Model): Promise<TaskScore>;
  /** the distillation stop: evaluate the student and stop once its retain score is back within `tolerance` of the teacher's */
  retainStop(student: Model, teacher: TaskScore, tolerance: number): Required<Pick<TrainOptions, 'evaluate' | 'stopWhen'>>;
  /** the attacker's metric (forget performance, in the task's unit), with other forget metrics measured beside it */
  attackMetric(m: Model): Promise<number | { value: number; metrics: Record<string, number> }>;
}

// ---------------------------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------------------------

/**
 * Retain/forget accuracies on equations (the word problems are reported in `metrics`), and retainAll: the mean
 * of the four add/sub accuracies (equations and word problems), the paper's distillation stop criterion.
 */
export async function arithmeticScores(m: Model, perForm: number): Promise<{ retain: number; forget: number; retainAll: number; metrics: Record<string, number> }> {
  const s = await evalArithmetic(m, { perForm });
  const metrics: Record<string, number> = {};
  for (const op of ALL_OPS) {
    metrics[`${op}/equation`] = s.perOp[op].equation;
    metrics[`${op}/word_problem`] = s.perOp[op].word_problem;
  }
  const mean = (ops: readonly Op[]) => ops.reduce((a, op) => a + s.perOp[op].equation, 0) / ops.length;
  const retainAll = RETAIN_OPS.reduce((a, op) => a + s.perOp[op].equation + s.perOp[op].word_problem, 0) / (2 * RETAIN_OPS.length);
  metrics.retain_all = retainAll;
  return { retain: mean(RETAIN_OPS), forget: mean(FORGET_OPS), retainAll, metrics };
}

/**
 * UNDO's distillation stop (evaluate + stopWhen for train()): the paper's rule (undo.md §5) is the mean of the
 * four add/sub accuracies (equations and word problems) within `tolerance` of the teacher's; the tiny models
 * solve almost no word problems, which halves that mean and so doubles the tolerance on equations: the
 * equations must be within it as well.
 */
export function retainStop(student: Model, teacher: { retain: number; retainAll: number }, tolerance: number, perForm: number):
  Required<Pick<TrainOptions, 'evaluate' | 'stopWhen'>> {
  return {
    evaluate: async () => {
      const s = await arithmeticScores(student, perForm);
      return { retain: s.retain, retain_all: s.retainAll, forget: s.forget };
    },
    stopWhen: (m) => m.retain_all >= teacher.retainAll - tolerance && m.retain >= teacher.retain - tolerance,
  };
}

export interface ArithmeticTaskOptions {
  /** seeds the generated corpora (forget, retain, mixture, attack: seed + 1 … seed + 4) and their packing */
  seed: number;
  docs: number;
  wordProblems: number;
  seqLen: number;
  /** eval prompts per operation and form */
  perForm: number;
}

/** The paper's arithmetic setting: forget × and ÷, retain + and −; scores are greedy exact-match accuracies on equations. */
export function arithmeticTask(tok: PackingTokenizer, o: ArithmeticTaskOptions): StudyTask {
  const corpus = (ops: readonly Op[], salt: number) => {
    const docs = generateArithmeticCorpus({ ops, count: o.docs, seed: o.seed + salt, wordProblemFraction: o.wordProblems });
    return packDocuments(tok, docs, o.seqLen, { seed: o.seed + salt });
  };
  return {
    name: 'arithmetic', unit: 'accuracy',
    forget: corpus(FORGET_OPS, 1), retain: corpus(RETAIN_OPS, 2), mixture: corpus(ALL_OPS, 3), attack: corpus(FORGET_OPS, 4),
    score: async (m) => {
      const s = await arithmeticScores(m, o.perForm);
      return { retain: s.retain, forget: s.forget, metrics: s.metrics };
    },
    retainStop: (student, teacher, tolerance) => retainStop(student, { retain: teacher.retain, retainAll: teacher.metrics.retain_all }, tolerance, o.perForm),
    attackMetric: async (m) => {
      const e = await evalArithmetic(m, { ops: FORGET_OPS, perForm: o.perForm, forms: ['equation'] });
      return (e.perOp.mul.equation + e.perOp.div.equation) / 2;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Data (held-out cross-entropy)
// ---------------------------------------------------------------------------------------------

export interface DataTaskOptions {
  name?: string;
  forget: readonly Document[];
  retain: readonly Document[];
  /** distillation data (default: forget and retain together, the paper's pretraining mixture) */
  mixture?: readonly Document[];
  seqLen: number;
  seed: number;
  /** fraction of each split held out for the scores (default 0.1) */
  valFraction?: number;
  /** windows of each held-out split scored (default 64) */
  evalWindows?: number;
  batchSize?: number;
}

/**
 * A task on documents: each split's held-out part (valFraction) is scored by cross-entropy and next-token
 * accuracy; the attack fine-tunes on the forget split's training part and is scored on its held-out part
 * (the attacker relearns the capability, not the test set). Distillation stops when the retain cross-entropy
 * is within `tolerance` of the teacher's, relatively ((student − teacher) / teacher < tolerance, the paper's
 * language rule).
 */
export function dataTask(tok: PackingTokenizer, o: DataTaskOptions): StudyTask {
  const vf = o.valFraction ?? 0.1;
  const pack = (docs: readonly Document[], what: string, salt: number) => {
    const p = packDocuments(tok, docs, o.seqLen, { seed: o.seed + salt });
    if (p.count === 0) throw new Err(`${what}: not enough text for one window of ${o.seqLen + 1} tokens`, 'give more documents or a shorter --seq-len');
    return p;
  };
  const split = (docs: readonly Document[], what: string, salt: number) => {
    if (docs.length < 2) throw new Err(`${what}: ${docs.length} document${docs.length === 1 ? '' : 's'}; a held-out part needs at least 2`);
    const s = splitTrainVal(docs, vf, o.seed + salt);
    return { train: pack(s.train, `${what} (training part)`, salt), val: pack(s.val, `${what} (held-out ${Math.round(vf * 100)}%)`, salt + 10) };
  };
  const f = split(o.forget, '--forget', 1), r = split(o.retain, '--retain', 2);
  const mixture = pack(o.mixture ?? [...o.forget, ...o.retain], '--distill-data', 3);
  const ev = { batchSize: o.batchSize ?? 16, maxWindows: o.evalWindows ?? 64 };
  return {
    name: o.name ?? 'data (held-out cross-entropy)', unit: 'loss',
    forget: f.train, retain: r.train, mixture, attack: f.train,
    score: async (m) => {
      const rr = await evalPackedLossAccuracy(m, r.val, ev), ff = await evalPackedLossAccuracy(m, f.val, ev);
      return { retain: rr.loss, forget: ff.loss, metrics: { retain_loss: rr.loss, forget_loss: ff.loss, retain_accuracy: rr.accuracy, forget_accuracy: ff.accuracy } };
    },
    retainStop: (student, teacher, tolerance) => ({
      evaluate: async () => {
        const rr = await evalPackedLossAccuracy(student, r.val, ev);
        return { retain_loss: rr.loss, retain_accuracy: rr.accuracy };
      },
      stopWhen: (m) => (m.retain_loss - teacher.retain) / Math.abs(teacher.retain) < tolerance,
    }),
    attackMetric: async (m) => {
      const e = await evalPackedLossAccuracy(m, f.val, ev);
      return { value: e.loss, metrics: { forget_loss: e.loss, forget_accuracy: e.accuracy } };
    },
  };
}
