/**
 * Distillation and unlearning losses on plain typed arrays: `loss.compute(name, opts)` returns the loss,
 * the per-row losses and d(loss)/d(student logits), computed by the fused native kernels in
 * native/cpu/kd_losses.{h,cc} (which hold the precise definitions and gradients).
 *
 * Per row r (rows × vocab logits, row-major), with temperature T:
 *   q = softmax(student/T), p = softmax(teacher/T) over the valid columns [0, validVocab); columns past
 *   validVocab are vocabulary padding (probability 0, gradient 0).
 *
 *   fkl      KL(p‖q)                         rkl      KL(q‖p) (MiniLLM's token-level term)
 *   jsd      JS_β/(β(1−β)) with JS_β = β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q. Scaled so that it is
 *            continuous on [0, 1] with β = 0 exactly fkl and β = 1 exactly rkl (TRL's/Liger's JSD is this
 *            times β(1−β) and jumps at the ends). β = 0.5 gives 4·JS.  (`beta`, default 0.5)
 *   tvd      ½·Σ|q − p|
 *   skl      KL(p‖αp + (1−α)q), srkl KL(q‖(1−α)p + αq) (DistiLLM; `alpha`, default 0.1)
 *   taid     KL(p_t‖q), p_t = softmax(((1−t)·stopgrad(student) + t·teacher)/T) (`t` required; see TaidSchedule)
 *   dkd      α·TCKD + β·NCKD, decoupled KD around `targets` (`alpha` default 1, `beta` default 8)
 *   deltakd  λ·CE(softmax(student), targets) + (1−λ)·KL(softmax(z′/T)‖q),
 *            z′ = studentBase + (teacher − teacherBase) (`lambda`, default 0.5; CE at temperature 1)
 *   ce       −log q[target]       maxent  KL(uniform‖q)       entropy  H(q) = −Σ q log q
 *
 * Teacher as top-k (fkl rkl jsd tvd skl srkl): `{ ids, logprobs, k }`, rows × k, the teacher's
 * temperature-1 log-probabilities of its k ids (any order, no repeats). `tail: 'renorm'` (default)
 * renormalises the teacher over its ids (zero elsewhere) against the student's full q — for rkl both sides
 * are renormalised over the ids; `tail: 'bucket'` adds a tail bucket: teacher mass 1 − Σ exp(logprobs)
 * against the student's mass outside the same ids.
 *
 * Rows: `mask[r] == 0`, or `targets[r] == ignoreIndex` (default −100; for any loss when targets are given),
 * are not counted: perRow 0, gradient 0. `loss` = gradScale · (mean over counted rows, or the sum with reduction 'sum') of
 * perRow, and `grad` is exactly d(loss)/d(student). `t2Scale: true` multiplies the soft (teacher) terms by
 * T² (Hinton's factor, keeping gradient sizes independent of T); it is off by default. For a trainer that
 * processes a batch in chunks: reduction 'sum' with gradScale = 1/(rows counted in the whole batch).
 */
import { native } from '../core/native';
import type { NativeKdOptions } from '../core/native';
import { UndoError, errorClass } from '../core/errors';

/** Errors of this module: code ERR_SHAPE unless one names another. */
const Err = errorClass('ERR_SHAPE');
const ArgumentError = errorClass('ERR_ARGUMENT');

export const LOSS_NAMES = ['fkl', 'rkl', 'jsd', 'tvd', 'skl', 'srkl', 'taid', 'dkd', 'deltakd', 'ce', 'maxent', 'entropy'] as const;
export type LossName = (typeof LOSS_NAMES)[number];

const TEACHER_LOSSES: ReadonlySet<string> = new Set(['fkl', 'rkl', 'jsd', 'tvd', 'skl', 'srkl', 'taid', 'dkd', 'deltakd']);
const TOPK_LOSSES: ReadonlySet<string> = new Set(['fkl', 'rkl', 'jsd', 'tvd', 'skl', 'srkl']);

/** The teacher's top-k log-probabilities: rows × k ids and their temperature-1 log-probabilities. */
export interface TopKTeacher {
  ids: Int32Array;
  logprobs: Float32Array;
  k: number;
}

export interface LossOptions {
  /** Student logits, rows × vocab. */
  student: Float32Array;
  /** Teacher logits (rows × vocab) or top-k log-probabilities. Needed by every loss but ce, maxent, entropy. */
  teacher?: Float32Array | TopKTeacher;
  rows: number;
  vocab: number;
  /** Columns [validVocab, vocab) are padding (−inf logits, zero gradient). Default: vocab. */
  validVocab?: number;
  /** Softmax temperature T > 0 (default 1). */
  temperature?: number;
  /** Per-row mask, rows long: 0 = skip the row. */
  mask?: Uint8Array;
  /** Gold tokens, rows long (needed by ce, dkd, deltakd with lambda > 0; other losses only use them to
   * skip the rows whose target is ignoreIndex). */
  targets?: Int32Array;
  /** Rows whose target equals this are skipped, whatever the loss (default −100). */
  ignoreIndex?: number;
  /** Top-k tail mode (default 'renorm'). */
  tail?: 'renorm' | 'bucket';
  /** jsd: β ∈ [0, 1] (default 0.5). dkd: the NCKD weight (default 8). */
  beta?: number;
  /** skl/srkl: skew α ∈ [0, 1] (default 0.1). dkd: the TCKD weight (default 1). */
  alpha?: number;
  /** taid: interpolation t ∈ [0, 1] (required). */
  t?: number;
  /** deltakd: weight λ ∈ [0, 1] of the hard-label CE term (default 0.5). */
  lambda?: number;
  /** deltakd: the student's logits before distillation, and the teacher's before its fine-tuning. */
  studentBase?: Float32Array;
  teacherBase?: Float32Array;
  /** Multiply the soft terms by T² (default false). */
  t2Scale?: boolean;
  /** 'mean' over counted rows (default) or 'sum'. */
  reduction?: 'mean' | 'sum';
  /** Extra factor on the loss and the gradient (default 1). */
  gradScale?: number;
  /** false: loss only (grad is then an empty array); a Float32Array (rows × vocab, not sharing memory
   * with the inputs): written in place. */
  grad?: boolean | Float32Array;
  /** Output array for the per-row losses (rows long); allocated when absent. */
  perRow?: Float32Array;
}

export interface LossResult {
  /** gradScale · mean (or sum) of perRow over the counted rows. */
  loss: number;
  /** Each row's loss (0 for rows not counted). */
  perRow: Float32Array;
  /** d(loss)/d(student), rows × vocab (empty when grad: false). */
  grad: Float32Array;
  /** Rows counted (unmasked, target not ignored). */
  count: number;
}

function fail(name: string, msg: string, hint?: string): never {
  throw new Err(`loss.compute('${name}'): ${msg}`, hint);
}

function isTopK(t: unknown): t is TopKTeacher {
  return typeof t === 'object' && t !== null && !(t instanceof Float32Array) && 'ids' in t;
}

function checkLen(name: string, what: string, a: ArrayLike<number>, n: number, expect: string): void {
  if (a.length !== n) fail(name, `${what} has ${a.length} elements, expected ${expect} = ${n}`);
}

function overlaps(a: Float32Array, b: Float32Array): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

function unitParam(name: string, what: string, v: number | undefined): void {
  if (v !== undefined && !(typeof v === 'number' && v >= 0 && v <= 1))
    fail(name, `${what} must be a number in [0, 1], got ${v}`);
}

/** The checked native arguments of a loss call, and the outputs it will fill. */
interface Prepared {
  nat: NativeKdOptions;
  perRow: Float32Array;
  grad: Float32Array;
  rows: number;
}

function prepare(name: LossName, opts: LossOptions): Prepared {
  if (!(LOSS_NAMES as readonly string[]).includes(name))
    throw new ArgumentError(`loss.compute: unknown loss '${String(name)}'`, `one of: ${LOSS_NAMES.join(', ')}`);
  const { rows, vocab } = opts;
  if (!Number.isInteger(rows) || rows < 0) fail(name, `rows must be a non-negative integer, got ${rows}`);
  if (!Number.isInteger(vocab) || vocab < 1) fail(name, `vocab must be a positive integer, got ${vocab}`);
  const validVocab = opts.validVocab ?? vocab;
  if (!Number.isInteger(validVocab) || validVocab < 1 || validVocab > vocab)
    fail(name, `validVocab must be an integer in [1, vocab = ${vocab}], got ${validVocab}`);
  const n = rows * vocab;
  if (!(opts.student instanceof Float32Array)) fail(name, 'student must be a Float32Array');
  checkLen(name, 'student', opts.student, n, `rows × vocab = ${rows} × ${vocab}`);
  const T = opts.temperature ?? 1;
  if (!(typeof T === 'number' && T > 0 && Number.isFinite(T))) fail(name, `temperature must be finite and > 0, got ${T}`);

  const nat: NativeKdOptions = {
    rows, vocab, validVocab, student: opts.student, temperature: T, perRow: new Float32Array(0),
    t2Scale: !!opts.t2Scale, reduction: opts.reduction ?? 'mean', gradScale: opts.gradScale ?? 1,
  };
  if (nat.reduction !== 'mean' && nat.reduction !== 'sum') fail(name, `reduction must be 'mean' or 'sum', got ${String(nat.reduction)}`);
  if (!Number.isFinite(nat.gradScale)) fail(name, `gradScale must be finite, got ${nat.gradScale}`);

  const teacher = opts.teacher;
  if (TEACHER_LOSSES.has(name)) {
    if (teacher === undefined || teacher === null) fail(name, 'this loss needs a teacher');
    if (isTopK(teacher)) {
      if (!TOPK_LOSSES.has(name)) fail(name, 'this loss needs full teacher logits (top-k teachers work with fkl, rkl, jsd, tvd, skl, srkl)');
      const { ids, logprobs, k } = teacher;
      if (!Number.isInteger(k) || k < 1) fail(name, `top-k k must be a positive integer, got ${k}`);
      if (k > validVocab) fail(name, `top-k k = ${k} is larger than the vocabulary (${validVocab})`);
      if (!(ids instanceof Int32Array)) fail(name, 'teacher.ids must be an Int32Array');
      if (!(logprobs instanceof Float32Array)) fail(name, 'teacher.logprobs must be a Float32Array');
      checkLen(name, 'teacher.ids', ids, rows * k, `rows × k = ${rows} × ${k}`);
      checkLen(name, 'teacher.logprobs', logprobs, rows * k, `rows × k = ${rows} × ${k}`);
      nat.topkIds = ids;
      nat.topkLogprobs = logprobs;
      nat.k = k;
      const tail = opts.tail ?? 'renorm';
      if (tail !== 'renorm' && tail !== 'bucket') fail(name, `tail must be 'renorm' or 'bucket', got ${String(tail)}`);
      nat.tail = tail;
    } else {
      if (!(teacher instanceof Float32Array)) fail(name, 'teacher must be a Float32Array or { ids, logprobs, k }');
      checkLen(name, 'teacher', teacher, n, `rows × vocab = ${rows} × ${vocab}`);
      nat.teacher = teacher;
    }
  }
  if (opts.mask !== undefined) {
    if (!(opts.mask instanceof Uint8Array)) fail(name, 'mask must be a Uint8Array');
    checkLen(name, 'mask', opts.mask, rows, 'rows');
    nat.mask = opts.mask;
  }
  const lambda = opts.lambda ?? 0.5;
  const needTargets = name === 'ce' || name === 'dkd' || (name === 'deltakd' && lambda > 0);
  nat.ignoreIndex = opts.ignoreIndex ?? -100;
  if (!Number.isInteger(nat.ignoreIndex)) fail(name, `ignoreIndex must be an integer, got ${nat.ignoreIndex}`);
  if (needTargets || (opts.targets !== undefined && opts.targets !== null)) {
    if (!(opts.targets instanceof Int32Array)) fail(name, needTargets ? 'this loss needs targets (an Int32Array, rows long)' : 'targets must be an Int32Array');
    checkLen(name, 'targets', opts.targets, rows, 'rows');
    if (needTargets) {
      nat.targets = opts.targets;
    } else {
      // a loss that does not use the targets still skips the rows whose target is ignoreIndex (padding)
      const t = opts.targets;
      let any = false;
      for (let r = 0; r < rows && !any; r++) any = t[r] === nat.ignoreIndex;
      if (any) {
        const m = new Uint8Array(rows);
        for (let r = 0; r < rows; r++) m[r] = t[r] !== nat.ignoreIndex && (!nat.mask || nat.mask[r] !== 0) ? 1 : 0;
        nat.mask = m;
      }
    }
  }

  switch (name) {
    case 'jsd':
      unitParam(name, 'beta', opts.beta);
      nat.beta = opts.beta ?? 0.5;
      break;
    case 'skl':
    case 'srkl':
      unitParam(name, 'alpha', opts.alpha);
      nat.alpha = opts.alpha ?? 0.1;
      break;
    case 'taid':
      if (opts.t === undefined) fail(name, 'taid needs t (the interpolation weight in [0, 1]; see TaidSchedule)');
      unitParam(name, 't', opts.t);
      nat.t = opts.t;
      break;
    case 'dkd':
      for (const [k, v] of [['alpha', opts.alpha], ['beta', opts.beta]] as const)
        if (v !== undefined && !(typeof v === 'number' && v >= 0 && Number.isFinite(v))) fail(name, `${k} must be a finite number ≥ 0, got ${v}`);
      nat.dkdAlpha = opts.alpha ?? 1;
      nat.dkdBeta = opts.beta ?? 8;
      break;
    case 'deltakd':
      unitParam(name, 'lambda', opts.lambda);
      nat.lambda = lambda;
      for (const f of ['studentBase', 'teacherBase'] as const) {
        const a = opts[f];
        if (!(a instanceof Float32Array)) fail(name, `deltakd needs ${f} (a Float32Array, rows × vocab)`);
        checkLen(name, f, a, n, `rows × vocab = ${rows} × ${vocab}`);
      }
      nat.studentBase = opts.studentBase;
      nat.teacherBase = opts.teacherBase;
      break;
    default:
      break;
  }

  const perRow = opts.perRow ?? new Float32Array(rows);
  if (!(perRow instanceof Float32Array)) fail(name, 'perRow must be a Float32Array');
  checkLen(name, 'perRow', perRow, rows, 'rows');
  nat.perRow = perRow;
  let grad: Float32Array;
  if (opts.grad === false) {
    grad = new Float32Array(0);
    nat.grad = null;
  } else if (opts.grad instanceof Float32Array) {
    checkLen(name, 'grad', opts.grad, n, `rows × vocab = ${rows} × ${vocab}`);
    // the kernel uses the gradient row as scratch while it still reads the inputs
    for (const [what, a] of [['student', opts.student], ['teacher', nat.teacher], ['studentBase', nat.studentBase], ['teacherBase', nat.teacherBase]] as const)
      if (a && overlaps(opts.grad, a)) fail(name, `grad must not share memory with ${what}`);
    grad = opts.grad;
    nat.grad = grad;
  } else {
    grad = new Float32Array(n);
    nat.grad = grad;
  }
  return { nat, perRow, grad, rows };
}

// the kernel reports bad ids/targets with their row
const kernelError = (name: string, e: unknown) => new Err(`loss.compute('${name}'): ${(e as Error).message.replace(/^kdLoss: /, '')}`, { cause: e });

/**
 * A loss and its gradient w.r.t. the student logits, on the calling thread (it blocks the event loop: about
 * 1 s for 4096 × 32000 logits on 2 cores; use {@link compute} in a server). Throws UndoError on bad input.
 */
export function computeSync(name: LossName, opts: LossOptions): LossResult {
  const { nat, perRow, grad, rows } = prepare(name, opts);
  if (rows === 0) return { loss: 0, perRow, grad, count: 0 };
  let r: { loss: number; count: number };
  try {
    r = native.kdLossSync(name, nat);
  } catch (e) {
    throw kernelError(name, e);
  }
  return { loss: r.loss, perRow, grad, count: r.count };
}

/**
 * A loss and its gradient w.r.t. the student logits, computed off the JS thread (the libuv pool): the event
 * loop stays free meanwhile. The arguments are checked before it returns (bad input rejects with an
 * UndoError); the typed arrays are used in place, not copied, so the caller must not change them (nor read
 * `grad` / `perRow`) before the promise settles.
 */
export async function compute(name: LossName, opts: LossOptions): Promise<LossResult> {
  const { nat, perRow, grad, rows } = prepare(name, opts);
  if (rows === 0) return { loss: 0, perRow, grad, count: 0 };
  let r: { loss: number; count: number };
  try {
    r = await native.kdLoss(name, nat);
  } catch (e) {
    throw kernelError(name, e);
  }
  return { loss: r.loss, perRow, grad, count: r.count };
}

export interface TaidScheduleOptions {
  /** Number of training steps N (for the linear floor t_start + (t_end − t_start)·n/N). */
  totalSteps: number;
  tStart?: number;
  tEnd?: number;
  /** Step size α of the adaptive increase (default 5e-4). */
  alpha?: number;
  /** Momentum β of the relative loss change (default 0.99). */
  beta?: number;
  eps?: number;
}

/**
 * TAID's adaptive interpolation weight t (Shing et al., 2025), kept by the trainer: after each step's
 * loss J (call update(J, step)),
 *   δ = (J_prev − J)/(J_prev + ε),  m ← β·m + (1−β)·δ,
 *   t ← min(t_end, max(t_start + (t_end − t_start)·n/N, t + α·σ(m)·(1 − t))).
 * The first call only records J (as the reference implementation does). Defaults: t_start 0.4,
 * t_end 1, α 5e-4, β 0.99, ε 1e-15.
 */
export class TaidSchedule {
  t: number;
  momentum = 0;
  prevLoss: number | null = null;
  readonly totalSteps: number;
  readonly tStart: number;
  readonly tEnd: number;
  readonly alpha: number;
  readonly beta: number;
  readonly eps: number;

  constructor(opts: TaidScheduleOptions) {
    this.totalSteps = opts.totalSteps;
    this.tStart = opts.tStart ?? 0.4;
    this.tEnd = opts.tEnd ?? 1;
    this.alpha = opts.alpha ?? 5e-4;
    this.beta = opts.beta ?? 0.99;
    this.eps = opts.eps ?? 1e-15;
    if (!(Number.isInteger(this.totalSteps) && this.totalSteps > 0))
      throw new ArgumentError(`TaidSchedule: totalSteps must be a positive integer, got ${opts.totalSteps}`);
    if (!(this.tStart >= 0 && this.tStart < 1 && this.tEnd > 0 && this.tEnd <= 1 && this.tStart <= this.tEnd))
      throw new ArgumentError(`TaidSchedule: need 0 ≤ tStart ≤ tEnd ≤ 1 (and tStart < 1, tEnd > 0), got ${this.tStart}, ${this.tEnd}`);
    if (!(this.alpha >= 0 && this.alpha <= 1)) throw new ArgumentError(`TaidSchedule: alpha must be in [0, 1], got ${this.alpha}`);
    if (!(this.beta >= 0 && this.beta <= 1)) throw new ArgumentError(`TaidSchedule: beta must be in [0, 1], got ${this.beta}`);
    this.t = this.tStart;
  }

  /** Feed the loss of step `step` (0-based count of steps done, n); returns the t to use next. */
  update(loss: number, step: number): number {
    if (this.prevLoss === null) {
      this.prevLoss = loss;
      return this.t;
    }
    const delta = (this.prevLoss - loss) / (this.prevLoss + this.eps);
    this.momentum = this.beta * this.momentum + (1 - this.beta) * delta;
    const floor = this.tStart + (this.tEnd - this.tStart) * Math.min(1, step / this.totalSteps);
    const adaptive = this.t + this.alpha * (1 / (1 + Math.exp(-this.momentum))) * (1 - this.t);
    this.t = Math.min(this.tEnd, Math.max(floor, adaptive));
    this.prevLoss = loss;
    return this.t;
  }

  state(): { t: number; momentum: number; prevLoss: number | null } {
    return { t: this.t, momentum: this.momentum, prevLoss: this.prevLoss };
  }
}

/** The loss API: `await loss.compute(name, opts)` (off the JS thread), `loss.computeSync`, `loss.names`, `loss.TaidSchedule`. */
export const loss = { compute, computeSync, names: LOSS_NAMES, TaidSchedule };
