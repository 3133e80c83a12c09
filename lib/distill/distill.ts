/**
 * Distillation: train a student on a teacher's output distributions (online teacher model), with any loss
 * of lib/train/losses.ts, optionally mixed with the hard-label cross-entropy. Plugs into the shared training loop.
 */
import { Batch, Batcher } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { LossName, TaidSchedule, TopKTeacher } from '../train/losses';
import { Model } from '../models/model';
import type { Tokenizer } from '../data/tokenizer';
import { ceObjective, chunkedLogitObjective, logitObjective } from '../train/objectives';
import { generateIds } from '../models/generate';
import { Rng, RngState } from '../core/rng';
import { batchWindows, TeacherStore, teacherForBatch, TopKSelector } from './teacher_store';
import { KnnTeacher } from './knn_store';
import { train, TrainConfig, TrainOptions, TrainResult } from '../train/train';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export interface DistillOptions extends TrainOptions {
  loss: LossName;
  temperature?: number;
  /** loss parameters (beta for jsd, alpha for skl/srkl, t for taid, ...) */
  params?: Record<string, number>;
  /** weight of the hard-label CE in the mix (0 = pure distillation) */
  hardWeight?: number;
  /** top-k teacher (offline store, or `topk` below): how the mass outside the k ids is treated */
  tail?: 'renorm' | 'bucket';
  /**
   * Online teacher: keep only its top-k log-probabilities per position (sparse KD, as a store would hold them);
   * the losses that take a top-k teacher (fkl rkl jsd tvd skl srkl) then see k ids plus the tail. The teacher's
   * logits are fetched a few rows at a time for the selection. 0 / undefined: the full distribution (fused head).
   */
  topk?: number;
  /**
   * On-policy fraction λ (GKD, Agarwal et al. 2024): each batch is, with probability λ, replaced by the
   * student's own samples — the first quarter of every window as the prompt, the rest sampled at
   * temperature 1 up to the model's stop ids (EOS, chat end-of-turn; the rest of the row masked) — which the
   * (online) teacher then scores. 0 = off-policy only.
   */
  onPolicy?: number;
  seed?: number;
  /** MiniLLM: sequence-level reverse-KL policy gradient on student/teacher-mixture samples (replaces `loss`) */
  miniLlm?: MiniLlmOptions;
}

/** A batch whose windows continue their first `prompt` tokens with the student's samples. */
export async function studentBatch(student: Model, b: Batch, rng: Rng): Promise<Batch> {
  const { B, T } = b;
  const prompt = Math.max(1, Math.floor(T / 4));
  const prompts = Array.from({ length: B }, (_, r) => b.inputs.slice(r * T, r * T + prompt));
  // rows end at the model's stop ids (EOS, chat end-of-turn: Model.stopTokenIds), the stop token kept as the
  // last target; after it the inputs are padding and the targets IGNORE_INDEX
  const gen = await generateIds(student, prompts, { maxNewTokens: T + 1 - prompt, temperature: 1, keepStop: true, seed: rng.nextU32(), batchSize: B });
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  const pad = student.tokenizer.pad >= 0 && student.tokenizer.pad < student.config.vocabSize ? student.tokenizer.pad : 0;
  for (let r = 0; r < B; r++) {
    const seq = new Int32Array(T + 1).fill(pad);
    seq.set(prompts[r]);
    const g = gen[r].subarray(0, T + 1 - prompt);
    seq.set(g, prompt);
    const end = prompt + g.length; // tokens of seq that are real
    inputs.set(seq.subarray(0, T), r * T);
    for (let t = 0; t < T; t++) targets[r * T + t] = t + 1 < end ? seq[t + 1] : -100;
  }
  return { ...b, inputs, targets };
}

/**
 * Same-vocabulary distillation only: equal vocab_size and identical tokenizers, compared by their
 * token → id maps (vocabHash), not only their sizes. Otherwise an UndoError.
 */
export function checkCompatible(student: Model, teacher: Model): void {
  if (student.config.vocabSize !== teacher.config.vocabSize) {
    throw new Err(`student vocab_size ${student.config.vocabSize} differs from the teacher's ${teacher.config.vocabSize}: distillation needs a shared vocabulary`);
  }
  const s = student.tokenizer, t = teacher.tokenizer;
  if (s.vocabHash() !== t.vocabHash()) {
    const what = (k: Tokenizer) => (k.kind === 'byte' ? "undo-native's byte tokenizer" : `a Hugging Face tokenizer of ${k.vocabSize} tokens`);
    throw new Err(`the student and the teacher have different tokenizers (student: ${what(s)}, teacher: ${what(t)}; their token → id maps differ): distillation here matches distributions token by token and needs one vocabulary`,
      'give the student the teacher\'s tokenizer (a preset student or one made from a config.json gets it automatically)');
  }
}

/** Losses that stay finite against a sparse kNN teacher (zero probability outside its neighbours' tokens). */
const KNN_LOSSES: ReadonlySet<string> = new Set(['dkd', 'fkl', 'jsd', 'tvd', 'skl', 'srkl', 'taid']);

/**
 * The teacher is a model (online: it runs forward on every batch), an offline top-k store made by
 * `cache-teacher` over the same packed data (lib/distill/teacher_store.ts), streamed batch by batch, or DNKD's
 * kNN teacher (lib/distill/knn_store.ts: its key model runs forward, the store is searched for every row; on
 * the store's own data each row leaves its own entry out).
 */
export async function distill(student: Model, teacher: Model | TeacherStore | KnnTeacher, batcher: Batcher, cfg: TrainConfig, opts: DistillOptions): Promise<TrainResult> {
  if (teacher instanceof Model) checkCompatible(student, teacher);
  else if (teacher instanceof KnnTeacher) {
    checkCompatible(student, teacher.keyModel);
    if (teacher.keyModel === student) throw new Err('the kNN teacher\'s key model must be another model than the student (load it separately)');
    if (!KNN_LOSSES.has(opts.loss) || opts.miniLlm) {
      throw new Err(`loss ${opts.miniLlm ? 'minillm' : opts.loss} cannot be used with a kNN teacher${opts.loss === 'rkl' ? ' (reverse KL is infinite where the kNN distribution is 0)' : ''}`, `one of: ${[...KNN_LOSSES].join(', ')} (DNKD uses dkd)`);
    }
    if (opts.topk) throw new Err('--topk applies to an online teacher model; the kNN teacher is already sparse (its k neighbours)');
  } else if (teacher.vocab !== student.config.vocabSize) throw new Err(`teacher store ${teacher.dir} has vocab ${teacher.vocab}, the student ${student.config.vocabSize}`);
  // the kNN teacher on its own data: rows leave their own entry out (else the teacher is the gold token at distance 0)
  const knnOwnData = teacher instanceof KnnTeacher && teacher.sameData(batcher.data);
  const knnBuf: { buf?: Float32Array } = {};
  const hw = opts.hardWeight ?? 0;
  if (!(hw >= 0 && hw <= 1)) throw new Err(`hard-label weight must be in [0, 1], got ${hw}`);
  const lambda = opts.onPolicy ?? 0;
  if (!(lambda >= 0 && lambda <= 1)) throw new Err(`on-policy fraction must be in [0, 1], got ${lambda}`);
  if (lambda > 0 && !(teacher instanceof Model)) throw new Err('on-policy distillation needs an online teacher model (a store holds only the data it was built on)');
  const topk = opts.topk ?? 0;
  if (topk && teacher instanceof TeacherStore) throw new Err('--topk applies to an online teacher; a store already holds its own top-k');
  if (topk && (!Number.isInteger(topk) || topk < 1 || topk > student.config.vocabSize)) throw new Err(`top-k must be an integer in [1, vocab = ${student.config.vocabSize}], got ${topk}`);
  const selector = topk ? new TopKSelector(topk, student.config.vocabSize) : null;
  const rng = new Rng(opts.seed ?? 0);
  // TAID: the interpolation weight t follows the loss, step by step (lib/train/losses.ts TaidSchedule)
  const taid = opts.loss === 'taid' && opts.params?.t === undefined ? new TaidSchedule({ totalSteps: Math.max(1, cfg.steps) }) : null;
  let stepLoss = 0;
  let stepIndex = 0;
  const onStep = opts.onStep;
  const stepHook = (s: Parameters<NonNullable<TrainOptions['onStep']>>[0]) => {
    if (taid) taid.update(stepLoss, stepIndex++);
    stepLoss = 0;
    onStep?.(s);
  };
  // the soft (teacher) term of one batch, scaled by `scale` inside the objective; returns the unscaled loss
  const softTerm = async (b: Batch, fromBatcher: boolean, scale: number): Promise<number> => {
    const params = taid ? { ...(opts.params ?? {}), t: taid.t } : opts.params;
    if (teacher instanceof KnnTeacher) {
      await teacher.prepare(b, knnOwnData && fromBatcher ? batchWindows(batcher, b) : null);
      const V = student.config.vocabSize;
      return chunkedLogitObjective(student, b, opts.loss, async (row0, idx) => {
        if (!knnBuf.buf || knnBuf.buf.length < idx.length * V) knnBuf.buf = new Float32Array(idx.length * V);
        return { teacher: await teacher.rows(row0, idx.length, knnBuf.buf.subarray(0, idx.length * V)) };
      }, { scale, temperature: opts.temperature, params });
    }
    if (opts.miniLlm) {
      if (!(teacher instanceof Model)) throw new Err('MiniLLM needs an online teacher model');
      return miniLlmObjective(student, teacher, b, rng, scale, opts.miniLlm);
    }
    const source = !(teacher instanceof Model) ? { teacherTopK: await teacherForBatch(teacher, batcher, b), tail: opts.tail }
      : selector ? { teacherTopK: await onlineTopK(teacher, b, selector), tail: opts.tail } : { teacher };
    return logitObjective(student, b, opts.loss, { ...source, scale, temperature: opts.temperature, params });
  };
  const microStep = async (batch: Batch, share: number): Promise<number> => {
    let loss = 0;
    const b = lambda > 0 && rng.next() < lambda ? await studentBatch(student, batch, rng) : batch;
    if (hw < 1) loss += (1 - hw) * (await softTerm(b, b === batch, (1 - hw) * share));
    if (hw > 0) loss += hw * (await ceObjective(student, b, hw * share));
    stepLoss += loss * share;
    return loss * share;
  };
  // the sampling RNG (on-policy batches, MiniLLM rollouts) and TAID's schedule ride in every checkpoint
  const runState = {
    save: () => ({ rng: rng.getState(), step_index: stepIndex, taid: taid ? { t: taid.t, momentum: taid.momentum, prev_loss: taid.prevLoss } : null }),
    restore: (saved: unknown) => {
      const r = saved as { rng?: unknown; step_index?: unknown; taid?: { t?: unknown; momentum?: unknown; prev_loss?: unknown } | null };
      if (!r || !Array.isArray(r.rng) || typeof r.step_index !== 'number') throw new Err('distillation run state: expected fields rng and step_index', 'the checkpoint was not written by distill');
      rng.setState(r.rng as RngState);
      stepIndex = r.step_index;
      if (taid) {
        const t = r.taid;
        if (!t || typeof t.t !== 'number' || typeof t.momentum !== 'number') throw new Err('distillation run state: no TAID schedule (field taid) to resume the taid loss from', 'resume with the loss of the interrupted run');
        taid.t = t.t;
        taid.momentum = t.momentum;
        taid.prevLoss = typeof t.prev_loss === 'number' ? t.prev_loss : null;
      }
    },
  };
  return train(student, batcher, cfg, { runState, job: 'distill', ...opts, microStep, onStep: stepHook });
}

/** The online teacher's top-k log-probabilities (temperature 1, as a store keeps them) for every row of a batch. */
async function onlineTopK(teacher: Model, b: Batch, sel: TopKSelector): Promise<TopKTeacher> {
  await teacher.native.forward(b.inputs, b.B, b.T);
  const rows = b.B * b.T, k = sel.k, V = sel.vocab;
  const ids = new Int32Array(rows * k), logprobs = new Float32Array(rows * k);
  const chunk = Math.max(1, Math.floor((1 << 22) / V));  // logits fetched 16 MB at a time, never rows × vocab
  const buf = new Float32Array(chunk * V);  // one buffer for every chunk
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const n = Math.min(chunk, rows - r0);
    const logits = await teacher.native.logits(Int32Array.from({ length: n }, (_, j) => r0 + j), buf);
    for (let j = 0; j < n; j++) {
      const r = r0 + j;
      sel.select(logits, j * V);
      ids.set(sel.ids, r * k);
      for (let i = 0; i < k; i++) logprobs[r * k + i] = sel.lps[i];
    }
  }
  return { ids, logprobs, k };
}

export interface MiniLlmOptions {
  /** teacher share of the sampling mixture p̃ = mix·p + (1 − mix)·q (MiniLLM: 0.2) */
  mix?: number;
  /** importance-weight clip (q/p̃ ≤ clip) */
  clip?: number;
  /** prompt tokens taken from each window (default T/4) */
  prompt?: number;
}

/**
 * MiniLLM's sequence-level reverse KL (Gu et al. 2024) on one batch: continue each window's prompt by sampling
 * from p̃ = mix·p_teacher + (1 − mix)·q_student, then
 *   L = −Σ_t w_t·R_{t+1}·log q(y_t)/|y|  +  Σ_t KL(q_t‖p_t)/|y|
 * with w_t = q(y_t)/p̃(y_t) (clipped) and R_{t+1} the length-normalised sum of the rewards
 * r = log p(y) − log q(y) after t, whitened over the batch (treated as constants: a policy gradient). The second term is the exact
 * single-step reverse KL, computed by the fused head. Returns the mean reward-weighted loss.
 */
export async function miniLlmObjective(student: Model, teacher: Model, b: Batch, rng: Rng, scale: number, o: MiniLlmOptions = {}): Promise<number> {
  const { B, T } = b;
  const V = student.config.vocabSize;
  const P = Math.max(1, Math.min(T - 1, o.prompt ?? Math.floor(T / 4)));
  const mix = o.mix ?? 0.2;
  const clip = o.clip ?? 10;
  const seq = new Int32Array(B * (T + 1));
  for (let r = 0; r < B; r++) seq.set(b.inputs.subarray(r * T, r * T + P), r * (T + 1));
  student.native.cacheBegin(B, T + 1);
  teacher.native.cacheBegin(B, T + 1);
  const prompt = new Int32Array(B * P);
  for (let r = 0; r < B; r++) prompt.set(seq.subarray(r * (T + 1), r * (T + 1) + P), r * P);
  let zs = await student.native.cacheStep(prompt, P);
  let zt = await teacher.native.cacheStep(prompt, P);
  const gen = T + 1 - P;
  const logq = new Float64Array(B * gen), logp = new Float64Array(B * gen), w = new Float64Array(B * gen);
  const softmax = (z: Float32Array, off: number) => {
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, z[off + v]);
    let s = 0;
    const e = new Float64Array(V);
    for (let v = 0; v < V; v++) s += e[v] = Math.exp(z[off + v] - m);
    for (let v = 0; v < V; v++) e[v] /= s;
    return e;
  };
  for (let t = 0; t < gen; t++) {
    const next = new Int32Array(B);
    for (let r = 0; r < B; r++) {
      const q = softmax(zs, r * V), p = softmax(zt, r * V);
      let u = rng.next(), y = V - 1;
      for (let v = 0; v < V; v++) {
        u -= mix * p[v] + (1 - mix) * q[v];
        if (u <= 0) { y = v; break; }
      }
      next[r] = y;
      seq[r * (T + 1) + P + t] = y;
      logq[r * gen + t] = Math.log(Math.max(q[y], 1e-30));
      logp[r * gen + t] = Math.log(Math.max(p[y], 1e-30));
      w[r * gen + t] = Math.min(clip, q[y] / (mix * p[y] + (1 - mix) * q[y]));
    }
    if (t + 1 < gen) {
      zs = await student.native.cacheStep(next, 1);
      zt = await teacher.native.cacheStep(next, 1);
    }
  }
  // training batch over the sampled sequences: the policy-gradient weights sit on the generated targets
  const inputs = new Int32Array(B * T), targets = new Int32Array(B * T), weights = new Float32Array(B * T);
  // returns-to-go, length-normalised, then whitened over the batch (MiniLLM's baseline against variance)
  const R = new Float64Array(B * gen);
  for (let r = 0; r < B; r++) {
    inputs.set(seq.subarray(r * (T + 1), r * (T + 1) + T), r * T);
    targets.set(seq.subarray(r * (T + 1) + 1, r * (T + 1) + T + 1), r * T);
    let future = 0;
    for (let t = gen - 1; t >= 0; t--) {
      R[r * gen + t] = future / Math.max(1, gen - 1 - t); // mean reward of the tokens after t
      future += logp[r * gen + t] - logq[r * gen + t];
    }
  }
  let mean = 0;
  for (const x of R) mean += x / R.length;
  let sd = 0;
  for (const x of R) sd += ((x - mean) * (x - mean)) / R.length;
  sd = Math.sqrt(sd) + 1e-8;
  let pg = 0;
  for (let r = 0; r < B; r++) {
    for (let t = 0; t < gen; t++) {
      const adv = (R[r * gen + t] - mean) / sd;
      // generated token t is the target of row P − 1 + t; −w·A·log q = w·A·CE, so its CE weight is w·A
      weights[r * T + P - 1 + t] = w[r * gen + t] * adv * scale;
      pg += -w[r * gen + t] * adv * logq[r * gen + t];
    }
  }
  await student.native.forward(inputs, B, T);
  // Σ weights·(−log q)/(B·gen): the policy-gradient term; rows outside the generated part have weight 0
  await student.native.headLoss(targets, weights, -100, B * gen, true, null);
  await student.native.backward(true, null);
  await teacher.native.forward(inputs, B, T);
  const mask = new Int32Array(targets);
  for (let r = 0; r < B; r++) for (let t = 0; t < P - 1; t++) mask[r * T + t] = -100;
  const kl = await student.native.headKd('rkl', teacher.native, { scale, targets: mask });
  await student.native.backward(true, null);
  return pg / (B * gen) + kl.loss / scale;
}
