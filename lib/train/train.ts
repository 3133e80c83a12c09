/**
 * The training loop: gradient accumulation, global-norm clipping, AdamW, learning-rate schedules,
 * periodic evaluation, JSONL metrics, atomic checkpoints with optimizer state, exact resume, and a clean
 * stop (checkpoint first) on Ctrl-C or an AbortSignal.
 */
import { JobName, JobProgress } from '../core/progress';
import * as fs from 'fs';
import * as path from 'path';
import { Batch, Batcher, BatcherPosition } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { appendFileOrThrow, readJson, recoverDir, writeFileAtomic } from '../core/fsutil';
import { Model } from '../models/model';
import type { AdamWHyper } from '../core/native';
import { readSafetensors, serializeSafetensors } from '../formats/safetensors';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');
const CheckpointError = errorClass('ERR_CHECKPOINT');
const NotFoundError = errorClass('ERR_NOT_FOUND');
const NonFiniteError = errorClass('ERR_NONFINITE');

export type Schedule = 'constant' | 'linear' | 'cosine';

export interface OptimConfig {
  lr: number;
  /** final learning rate of the linear/cosine decay (default lr/10) */
  minLr?: number;
  warmup: number;
  schedule: Schedule;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** global-norm clipping threshold, 0 = off */
  clip: number;
}

export interface TrainConfig extends OptimConfig {
  steps: number;
  gradAccum: number;
  evalEvery: number;
  checkpointEvery: number;
  /**
   * Optimizer steps whose loss or gradient is not finite that may be skipped (their batches dropped, no update)
   * before the run stops (default 0: the first one stops it). The weights are never updated from a bad step.
   */
  skipNonfinite?: number;
}

export const DEFAULT_OPTIM: OptimConfig = {
  lr: 1e-3, warmup: 0, schedule: 'constant', weightDecay: 0.0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1.0,
};

/** Learning rate at optimizer step `step` (0-based): linear warm-up from 0, then constant/linear/cosine. */
export function lrAt(step: number, c: OptimConfig & { steps: number }): number {
  if (c.warmup > 0 && step < c.warmup) return (c.lr * (step + 1)) / c.warmup;
  const minLr = c.minLr ?? c.lr / 10;
  if (c.schedule === 'constant') return c.lr;
  const span = Math.max(1, c.steps - c.warmup);
  const frac = Math.min(1, Math.max(0, (step - c.warmup) / span));
  if (c.schedule === 'linear') return c.lr + (minLr - c.lr) * frac;
  return minLr + 0.5 * (c.lr - minLr) * (1 + Math.cos(Math.PI * frac));
}

export interface StepInfo {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSec: number;
  elapsedSec: number;
}

export interface TrainerState {
  step: number;
  tokens: number;
  position: BatcherPosition;
  elapsedSec: number;
  /** TrainOptions.runState's save() at the checkpoint */
  run?: unknown;
}

export interface TrainOptions {
  /** model directory written at checkpoints and at the end (with optimizer state) */
  outDir?: string;
  /** continue from the state saved in outDir */
  resume?: boolean;
  onStep?: (info: StepInfo) => void;
  /** progress after each step and each evaluation, the fields of metrics.jsonl (lib/core/progress.ts) */
  onProgress?: (p: JobProgress) => void;
  /** the job named in progress events (default 'train'; distill and unlearn set theirs) */
  job?: JobName;
  /** called every evalEvery steps and at the end; returns metrics that are logged */
  evaluate?: (step: number) => Promise<Record<string, number>>;
  onEval?: (step: number, metrics: Record<string, number>) => void;
  /** stop early when this returns true for the latest eval metrics */
  stopWhen?: (metrics: Record<string, number>) => boolean;
  /**
   * Stops training at the next step boundary: the checkpoint is saved (with outDir) and train resolves with
   * `interrupted: true` (lib/core/progress.ts). The library does not listen to SIGINT; the CLI maps Ctrl-C here.
   */
  signal?: AbortSignal;
  /** called for each step skipped because its loss or gradient was not finite (TrainConfig.skipNonfinite) */
  onSkip?: (info: { step: number; reason: string; tensor?: string; skipped: number }) => void;
  /** extra JSON stored in trainer_state.json (e.g. the task), echoed back on resume */
  meta?: Record<string, unknown>;
  /**
   * The objective of one micro-batch: accumulate its gradient into model.grads and return its share of the
   * step's loss. `share` is the micro-batch's fraction of the step's unmasked target tokens (targets ≠ −100,
   * counted over all gradAccum micro-batches of the optimizer step, HF's num_items_in_batch; 1/gradAccum when
   * the step has none): an objective that is a mean over its micro-batch's unmasked rows, scaled by `share`,
   * sums to the mean over the step's unmasked rows, so accumulation gives the update of one big batch.
   * Default: next-token cross-entropy on the batch (trainStep with normalizer = the step's unmasked tokens).
   * Distillation and unlearning plug their objectives in here and reuse the rest of the loop.
   */
  microStep?: (batch: Batch, share: number) => Promise<number>;
  /**
   * Parameters trained beside the model's (e.g. feature distillation's adaptor heads): zeroed with the model's
   * gradients, inside the global-norm clipping, stepped with the same AdamW hyper-parameters, and saved in (and
   * restored from) every checkpoint.
   */
  extraParams?: ExtraParams;
  /**
   * State of the objective beyond the weights and optimizer (e.g. distillation's sampling RNG and TAID's
   * schedule): saved as JSON in every checkpoint's trainer_state.json and restored on resume, so a resumed run
   * continues bit-identically.
   */
  runState?: RunState;
}

/** Objective state carried through checkpoints (TrainOptions.runState). */
export interface RunState {
  save(): unknown;
  restore(saved: unknown): void;
}

/** Trainable parameters outside the native model, driven by the training loop (TrainOptions.extraParams). */
export interface ExtraParams {
  zeroGrad(): void;
  /** Σ g² over the extra parameters' gradients */
  gradSumSquares(): number;
  /** one AdamW step (gradScale includes the clipping); step is 1-based */
  adamw(h: AdamWHyper, step: number): void;
  /** files written into the checkpoint directory (name → bytes) */
  checkpointFiles(): Record<string, Buffer>;
  /** restore from a checkpoint directory (resume) */
  restore(dir: string): void;
}

export interface TrainResult {
  state: TrainerState;
  interrupted: boolean;
  lastEval?: Record<string, number>;
}

/** A stop condition on an evaluated metric: `val_loss<=1.2`, `retain>=0.95`, `val_kl<0.05`. */
export interface StopCondition {
  metric: string;
  op: '<=' | '>=' | '<' | '>';
  value: number;
  /** the text it was parsed from */
  text: string;
}

/**
 * Parses `METRIC<=X` (also >=, <, >) for --stop-when. The metric is checked against the evaluated metrics by
 * stopTest, which names the metrics an evaluation produces when the one asked for is not among them.
 */
export function parseStopCondition(text: string, what = '--stop-when'): StopCondition {
  const m = /^\s*([A-Za-z_][\w/.:-]*)\s*(<=|>=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*$/i.exec(text);
  if (!m) throw new Err(`${what} "${text}": expected METRIC<=VALUE or METRIC>=VALUE (also < and >), e.g. val_loss<=1.2 or retain>=0.95`);
  return { metric: m[1], op: m[2] as StopCondition['op'], value: Number(m[3]), text: text.trim() };
}

function noSuchMetric(c: StopCondition, names: Iterable<string>): UndoError {
  return new Err(`--stop-when ${c.text}: the evaluation has no metric "${c.metric}"`,
    `metrics evaluated: ${[...names].sort().join(', ') || '(none)'}`);
}

/**
 * stopWhen for train(): true once the condition holds. A metric the evaluation does not produce is an error:
 * at once when `known` (the metrics the evaluation will produce) is given, so before any training, else at
 * the first evaluation.
 */
export function stopTest(c: StopCondition, known?: Iterable<string>): (metrics: Record<string, number>) => boolean {
  if (known && ![...known].includes(c.metric)) throw noSuchMetric(c, known);
  return (metrics) => {
    const v = metrics[c.metric];
    if (v === undefined) throw noSuchMetric(c, Object.keys(metrics));
    if (!Number.isFinite(v)) return false;
    switch (c.op) {
      case '<=': return v <= c.value;
      case '>=': return v >= c.value;
      case '<': return v < c.value;
      default: return v > c.value;
    }
  };
}

const STATE_FILE = 'trainer_state.json';
const OPTIM_FILE = 'optimizer.safetensors';
const METRICS_FILE = 'metrics.jsonl';

/** Save the model plus optimizer/trainer state atomically into dir. */
export function saveCheckpoint(model: Model, dir: string, state: TrainerState, meta: Record<string, unknown> = {}, files: Record<string, Buffer> = {}): void {
  const m = model.native.adamM();
  const v = model.native.adamV();
  const optim = serializeSafetensors({
    adam_m: { dtype: 'F32', shape: [m.length], data: m },
    adam_v: { dtype: 'F32', shape: [v.length], data: v },
  }, { adam_step: String(model.native.adamStep()) });
  const metricsPath = path.join(dir, METRICS_FILE);
  const extra: Record<string, string | Buffer> = {
    [STATE_FILE]: JSON.stringify({ ...state, meta }, null, 2) + '\n',
    [OPTIM_FILE]: optim,
    ...files,
  };
  if (fs.existsSync(metricsPath)) extra[METRICS_FILE] = fs.readFileSync(metricsPath);
  // training checkpoints keep the fp32 master weights whatever dtype the model was loaded in (a bf16 save
  // would round them, and --resume would not continue bit-exactly)
  model.save(dir, extra, { dtype: 'float32' });
}

/**
 * A resumed run must be the run that was saved: each field of the saved trainer_state.json meta (the kind of
 * run, its task, data, loss...) must equal this run's, else the error names the field and both values.
 */
function checkResumeMeta(dir: string, saved: Record<string, unknown> | undefined, now: Record<string, unknown> | undefined): void {
  if (!now) return;
  for (const [k, v] of Object.entries(now)) {
    const was = saved?.[k];
    if (JSON.stringify(was ?? null) !== JSON.stringify(v ?? null)) {
      throw new CheckpointError(`cannot resume ${dir}: it was saved by a run with ${k} = ${JSON.stringify(was ?? null)}, this run has ${k} = ${JSON.stringify(v ?? null)}`,
        'resume with the options of the interrupted run, or start a new one in another --out');
    }
  }
}

/**
 * The trainer_state.json of a run to resume in `dir`, or an UndoError saying there is none yet (`what`: the
 * kind of run, e.g. 'a distillation'). Checked before anything is loaded from the directory, after recoverDir
 * has put back a checkpoint whose save was killed between its renames.
 */
export function checkpointToResume(dir: string, what = 'a training run'): string {
  recoverDir(dir);  // a save killed mid-swap: its previous checkpoint back first
  if (!fs.existsSync(dir)) throw new NotFoundError(`--resume: ${dir} does not exist`, 'give the --out of an interrupted run');
  const statePath = path.join(dir, STATE_FILE);
  if (!fs.existsSync(statePath)) {
    throw new CheckpointError(`--resume: ${dir} holds no checkpoint of ${what} (${STATE_FILE} is missing)`, fs.existsSync(path.join(dir, METRICS_FILE))
      ? 'the run was stopped before its first checkpoint: start it again without --resume' : 'give the --out of an interrupted run');
  }
  return statePath;
}

/** Restore optimizer and trainer state saved by saveCheckpoint (the weights are loaded with Model.load). */
export function loadTrainerState(model: Model, dir: string): TrainerState & { meta?: Record<string, unknown> } {
  const statePath = checkpointToResume(dir);
  const state = readJson<TrainerState & { meta?: Record<string, unknown> }>(statePath, 'trainer state', 'ERR_CHECKPOINT');
  if (typeof state.step !== 'number' || !state.position) throw new CheckpointError(`${statePath}: not a trainer state (fields step, position)`);
  const optPath = path.join(dir, OPTIM_FILE);
  const st = readSafetensors(optPath);
  const m = st.readTensorF32('adam_m', [model.numParams()]);
  const v = st.readTensorF32('adam_v', [model.numParams()]);
  model.native.adamM().set(m);
  model.native.adamV().set(v);
  model.native.setAdamStep(Number(st.metadata.adam_step ?? state.step));
  return state;
}

function appendMetrics(dir: string | undefined, record: Record<string, unknown>): void {
  if (!dir) return;
  fs.mkdirSync(dir, { recursive: true });
  appendFileOrThrow(path.join(dir, METRICS_FILE), JSON.stringify(record) + '\n');
}

/** Drop metric lines past `step` (left by a run interrupted after its last checkpoint). */
function trimMetrics(dir: string, step: number): void {
  const p = path.join(dir, METRICS_FILE);
  if (!fs.existsSync(p)) return;
  const keep = fs.readFileSync(p, 'utf8').split('\n').filter((line) => {
    if (!line.trim()) return false;
    try {
      return (JSON.parse(line) as { step?: number }).step! <= step;
    } catch {
      return false;
    }
  });
  writeFileAtomic(p, keep.map((l) => l + '\n').join(''));
}

/** The CLI's line for a step skipped under --skip-nonfinite (TrainOptions.onSkip). */
export function skipLine(x: { step: number; reason: string; tensor?: string; skipped: number }, allowed: number): string {
  return `step ${x.step}: ${x.reason}${x.tensor ? ` (first non-finite gradient: ${x.tensor})` : ''}; skipped (${x.skipped} of --skip-nonfinite ${allowed})`;
}

/** The first model tensor (in layout order) whose gradient holds a NaN or ±Inf, if any. */
export function firstNonfiniteGrad(model: Model): string | undefined {
  const g = model.grads;
  for (const t of model.tensors) {
    for (let i = t.offset, e = t.offset + t.numel; i < e; i++) if (!Number.isFinite(g[i])) return t.name;
  }
  return undefined;
}

/** Rows of a batch whose target is not IGNORE_INDEX (−100). */
export function countTargets(b: Batch, ignoreIndex = -100): number {
  let n = 0;
  const t = b.targets;
  for (let i = 0; i < b.B * b.T; i++) if (t[i] !== ignoreIndex) n++;
  return n;
}

/**
 * The share of each micro-batch of one optimizer step: its unmasked target tokens over those of all the step's
 * micro-batches (HF transformers' num_items_in_batch); 1/k each when no micro-batch has any.
 */
export function stepShares(batches: Batch[], ignoreIndex = -100): number[] {
  const counts = batches.map((b) => countTargets(b, ignoreIndex));
  const total = counts.reduce((a, c) => a + c, 0);
  return total > 0 ? counts.map((c) => c / total) : batches.map(() => 1 / batches.length);
}

/**
 * Train `model` on batches from `batcher` for cfg.steps optimizer steps. Each step accumulates
 * cfg.gradAccum micro-batches; the loss is the mean next-token cross-entropy over all their unmasked target tokens.
 */
export async function train(model: Model, batcher: Batcher, cfg: TrainConfig, opts: TrainOptions = {}): Promise<TrainResult> {
  if (!(cfg.steps >= 0) || !Number.isInteger(cfg.steps)) throw new Err(`steps must be a non-negative integer, got ${cfg.steps}`);
  if (!(cfg.gradAccum >= 1)) throw new Err(`gradient accumulation must be >= 1, got ${cfg.gradAccum}`);
  if (!(cfg.lr > 0)) throw new Err(`learning rate must be > 0, got ${cfg.lr}`);
  let state: TrainerState & { meta?: Record<string, unknown> } = { step: 0, tokens: 0, position: batcher.position, elapsedSec: 0 };
  if (opts.resume) {
    if (!opts.outDir) throw new Err('--resume needs the output directory of the run');
    state = loadTrainerState(model, opts.outDir);
    checkResumeMeta(opts.outDir, state.meta, opts.meta);
    delete state.meta;
    opts.extraParams?.restore(opts.outDir);
    // checkpoints written before run states existed have none: the objective's state then starts afresh
    // (exact for objectives that draw no samples)
    if (opts.runState && state.run !== undefined) opts.runState.restore(state.run);
    batcher.position = state.position;
    trimMetrics(opts.outDir, state.step);
  } else {
    // a new run gets a new optimizer (as a new torch.optim.AdamW would): moments and step from zero, whatever an
    // earlier train() on this model left in them
    model.native.adamM().fill(0);
    model.native.adamV().fill(0);
    model.native.setAdamStep(0);
    if (opts.outDir && fs.existsSync(path.join(opts.outDir, METRICS_FILE))) fs.rmSync(path.join(opts.outDir, METRICS_FILE));
  }
  const microStep = opts.microStep ?? (async (b: Batch, share: number) => {
    const n = countTargets(b);
    if (n === 0 || share === 0) return 0;
    // normalizer = the step's unmasked tokens (n / share): Σ ce over this micro-batch / that count
    const r = await model.native.trainStep(b.inputs, b.targets, b.B, b.T, null, n / share, -100);
    return r.loss;
  });
  let interrupted = false;
  let skipped = 0;
  const job: JobName = opts.job ?? 'train';
  const started = Date.now() - state.elapsedSec * 1000;
  let lastEval: Record<string, number> | undefined;
  let evaluatedAt = -1;
  const checkpoint = () => {
    if (opts.runState) state.run = opts.runState.save();
    if (opts.outDir) saveCheckpoint(model, opts.outDir, state, opts.meta, opts.extraParams?.checkpointFiles());
  };
  const runEval = async () => {
    if (!opts.evaluate) return false;
    lastEval = await opts.evaluate(state.step);
    evaluatedAt = state.step;
    appendMetrics(opts.outDir, { step: state.step, eval: lastEval });
    opts.onEval?.(state.step, lastEval);
    opts.onProgress?.({ job, done: state.step, total: cfg.steps, step: state.step, elapsed_sec: (Date.now() - started) / 1000, eval: lastEval });
    return opts.stopWhen ? opts.stopWhen(lastEval) : false;
  };
  while (state.step < cfg.steps) {
    if (opts.signal?.aborted) {
      interrupted = true;
      break;
    }
    await model.native.zeroGrad();
    opts.extraParams?.zeroGrad();
    let loss = 0;
    // all micro-batches of the step first: their unmasked tokens together normalise the loss (stepShares)
    const batches: Batch[] = [];
    for (let a = 0; a < cfg.gradAccum; a++) batches.push(batcher.next());
    const shares = stepShares(batches);
    for (let a = 0; a < cfg.gradAccum; a++) {
      const b = batches[a];
      loss += await microStep(b, shares[a]);
      state.tokens += b.B * b.T;
    }
    const extra = opts.extraParams;
    const gradNorm = Number.isFinite(loss) ? (extra ? Math.hypot((await model.native.gradNorm()), Math.sqrt(extra.gradSumSquares())) : (await model.native.gradNorm())) : NaN;
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      // a bad step never reaches the weights: skip it (within the allowance) or stop, naming where it went wrong
      const what = !Number.isFinite(loss) ? `the loss is ${loss}` : `the gradient norm is ${gradNorm}`;
      const tensor = firstNonfiniteGrad(model);
      const where = `at step ${state.step + 1}${tensor ? ` (first non-finite gradient: tensor "${tensor}")` : ''}`;
      if (skipped < (cfg.skipNonfinite ?? 0)) {
        skipped++;
        state.position = batcher.position;
        opts.onSkip?.({ step: state.step + 1, reason: what, tensor, skipped });
        continue;
      }
      throw new NonFiniteError(`training diverged: ${what} ${where}${skipped ? ` after ${skipped} skipped step${skipped > 1 ? 's' : ''}` : ''}; the weights were not updated from it${opts.outDir ? `, and ${opts.outDir} holds the last checkpoint` : ''}`,
        'lower the learning rate (--lr), enable clipping (--clip 1), or skip a few bad batches (--skip-nonfinite N)');
    }
    const gradScale = cfg.clip > 0 ? Math.min(1, cfg.clip / (gradNorm + 1e-6)) : 1;
    const lr = lrAt(state.step, cfg);
    const hyper = { lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weightDecay: cfg.weightDecay, gradScale };
    await model.native.adamw(hyper);
    extra?.adamw(hyper, state.step + 1);
    state.step++;
    state.position = batcher.position;
    const elapsedSec = (Date.now() - started) / 1000;
    state.elapsedSec = elapsedSec;
    const info: StepInfo = { step: state.step, loss, lr, gradNorm, tokens: state.tokens, tokensPerSec: state.tokens / Math.max(elapsedSec, 1e-9), elapsedSec };
    const line = { step: info.step, loss, lr, grad_norm: gradNorm, tokens: info.tokens, tokens_per_sec: info.tokensPerSec, elapsed_sec: elapsedSec };
    appendMetrics(opts.outDir, line);
    opts.onStep?.(info);
    opts.onProgress?.({ job, done: state.step, total: cfg.steps, ...line });
    let stop = false;
    if (cfg.evalEvery > 0 && state.step % cfg.evalEvery === 0) stop = await runEval();
    if (cfg.checkpointEvery > 0 && state.step % cfg.checkpointEvery === 0 && state.step < cfg.steps) checkpoint();
    if (stop) break;
  }
  if (!interrupted && evaluatedAt !== state.step) await runEval();
  checkpoint();
  return { state, interrupted, lastEval };
}
