/**
 * Distillation: train a student on a teacher's output distributions (online teacher model), with any loss
 * of lib/losses.ts, optionally mixed with the hard-label cross-entropy. Plugs into the shared training loop.
 */
import { Batch, Batcher } from './data';
import { UndoError } from './errors';
import { LossName, TaidSchedule } from './losses';
import { Model } from './model';
import { ceObjective, logitObjective } from './objectives';
import { generateIds } from './generate';
import { Rng } from './rng';
import { TeacherStore, teacherForBatch } from './teacher_store';
import { train, TrainConfig, TrainOptions, TrainResult } from './train';

export interface DistillOptions extends TrainOptions {
  loss: LossName;
  temperature?: number;
  /** loss parameters (beta for jsd, alpha for skl/srkl, t for taid, ...) */
  params?: Record<string, number>;
  /** weight of the hard-label CE in the mix (0 = pure distillation) */
  hardWeight?: number;
  /** offline top-k teacher: how the mass outside the k ids is treated */
  tail?: 'renorm' | 'bucket';
  /**
   * On-policy fraction λ (GKD, Agarwal et al. 2024): each batch is, with probability λ, replaced by the
   * student's own samples — the first quarter of every window as the prompt, the rest sampled at
   * temperature 1 — which the (online) teacher then scores. 0 = off-policy only.
   */
  onPolicy?: number;
  seed?: number;
}

/** A batch whose windows continue their first `prompt` tokens with the student's samples. */
export async function studentBatch(student: Model, b: Batch, rng: Rng): Promise<Batch> {
  const { B, T } = b;
  const prompt = Math.max(1, Math.floor(T / 4));
  const prompts = Array.from({ length: B }, (_, r) => b.inputs.slice(r * T, r * T + prompt));
  const gen = await generateIds(student, prompts, { maxNewTokens: T + 1 - prompt, temperature: 1, stopIds: [], seed: rng.nextU32(), batchSize: B });
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let r = 0; r < B; r++) {
    const seq = new Int32Array(T + 1);
    seq.set(prompts[r]);
    seq.set(gen[r].subarray(0, T + 1 - prompt), prompt);
    inputs.set(seq.subarray(0, T), r * T);
    targets.set(seq.subarray(1), r * T);
  }
  return { ...b, inputs, targets };
}

export function checkCompatible(student: Model, teacher: Model): void {
  if (student.config.vocabSize !== teacher.config.vocabSize) {
    throw new UndoError(`student vocab_size ${student.config.vocabSize} differs from the teacher's ${teacher.config.vocabSize}: distillation needs a shared vocabulary`);
  }
}

/**
 * The teacher is a model (online: it runs forward on every batch) or an offline top-k store made by
 * `cache-teacher` over the same packed data (lib/teacher_store.ts), streamed batch by batch.
 */
export async function distill(student: Model, teacher: Model | TeacherStore, batcher: Batcher, cfg: TrainConfig, opts: DistillOptions): Promise<TrainResult> {
  if (teacher instanceof Model) checkCompatible(student, teacher);
  else if (teacher.vocab !== student.config.vocabSize) throw new UndoError(`teacher store ${teacher.dir} has vocab ${teacher.vocab}, the student ${student.config.vocabSize}`);
  const hw = opts.hardWeight ?? 0;
  if (!(hw >= 0 && hw <= 1)) throw new UndoError(`hard-label weight must be in [0, 1], got ${hw}`);
  const lambda = opts.onPolicy ?? 0;
  if (!(lambda >= 0 && lambda <= 1)) throw new UndoError(`on-policy fraction must be in [0, 1], got ${lambda}`);
  if (lambda > 0 && !(teacher instanceof Model)) throw new UndoError('on-policy distillation needs an online teacher model (a store holds only the data it was built on)');
  const rng = new Rng(opts.seed ?? 0);
  // TAID: the interpolation weight t follows the loss, step by step (lib/losses.ts TaidSchedule)
  const taid = opts.loss === 'taid' && opts.params?.t === undefined ? new TaidSchedule({ totalSteps: Math.max(1, cfg.steps) }) : null;
  let stepLoss = 0;
  let stepIndex = 0;
  const onStep = opts.onStep;
  const stepHook = (s: Parameters<NonNullable<TrainOptions['onStep']>>[0]) => {
    if (taid) taid.update(stepLoss, stepIndex++);
    stepLoss = 0;
    onStep?.(s);
  };
  const microStep = async (batch: Batch, share: number): Promise<number> => {
    let loss = 0;
    const b = lambda > 0 && rng.next() < lambda ? await studentBatch(student, batch, rng) : batch;
    const source = teacher instanceof Model ? { teacher } : { teacherTopK: teacherForBatch(teacher, batcher, b), tail: opts.tail };
    const params = taid ? { ...(opts.params ?? {}), t: taid.t } : opts.params;
    if (hw < 1) loss += (1 - hw) * (await logitObjective(student, b, opts.loss, { ...source, scale: (1 - hw) * share, temperature: opts.temperature, params }));
    if (hw > 0) loss += hw * (await ceObjective(student, b, hw * share));
    stepLoss += loss * share;
    return loss * share;
  };
  return train(student, batcher, cfg, { ...opts, microStep, onStep: stepHook });
}
