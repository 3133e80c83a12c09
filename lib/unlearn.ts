/**
 * Unlearning methods users compare UNDO against (shared/research/unlearning.md, undo.md §3): gradient
 * ascent, GradDiff, NPO, SimNPO, MaxEnt (UNDO's default teacher), RMU, Who's Harry Potter (WHP) and its
 * causal-intervention generalisation (method 'causal', "Revisiting WHP"; see the section at the end). Each
 * is an objective on a forget batch (plus a retain batch) plugged into the shared training loop (lib/train.ts).
 */
import { Batch, Batcher, PackedDataset } from './data';
import { UndoError } from './errors';
import { loss as kdLoss } from './losses';
import { Model } from './model';
import { ceObjective, logitObjective, rowCE } from './objectives';
import { mixSeeds, Rng } from './rng';
import { replacementNames } from './tasks/biographies';
import type { ByteTokenizer } from './tokenizer';
import { train, TrainConfig, TrainOptions, TrainResult } from './train';

export const UNLEARN_METHODS = ['gradascent', 'graddiff', 'npo', 'simnpo', 'maxent', 'rmu', 'whp', 'causal'] as const;
export type UnlearnMethod = (typeof UNLEARN_METHODS)[number];

export type UnlearnStage = { steps: number; lr: number; retainWeight?: number };

/** Tuned on the tiny preset for arithmetic (unlearning × and ÷, keeping + and −); see the study report. */
export const UNLEARN_DEFAULTS: Record<UnlearnMethod, UnlearnStage> = {
  maxent: { steps: 150, lr: 2e-4, retainWeight: 16 },
  graddiff: { steps: 150, lr: 2e-4, retainWeight: 16 },
  // RMU suppresses × and ÷ on the tiny model only at a learning rate that also costs most of + and −
  rmu: { steps: 100, lr: 1e-3, retainWeight: 8 },
  gradascent: { steps: 20, lr: 3e-4 },
  npo: { steps: 60, lr: 3e-4, retainWeight: 16 },
  simnpo: { steps: 60, lr: 3e-4, retainWeight: 16 },
  whp: { steps: 60, lr: 3e-4 },
  // tuned on the tiny preset for biographies (forget the 4 forget-split people): 3e-4 costs far more retain accuracy
  causal: { steps: 60, lr: 1e-4 },
}

export interface UnlearnParams {
  /** retain-loss weight (GradDiff a, MaxEnt balance, NPO/SimNPO retain weight, RMU retain weight) */
  retainWeight: number;
  /** NPO/SimNPO inverse temperature β */
  beta: number;
  /** SimNPO reward margin γ */
  gamma: number;
  /** RMU: layer whose output is steered (0-based block index), steering coefficient c, first trainable layer */
  rmuLayer: number;
  rmuC: number;
  rmuFirstLayer: number;
  /** WHP: generic-logit strength α and the reinforcement fine-tuning steps / learning rate */
  whpAlpha: number;
  whpReinforceSteps: number;
  whpReinforceLr: number;
  seed: number;
}

/** Each method's defaults from its paper / the UNDO authors' arithmetic runs. */
export function defaultUnlearnParams(method: UnlearnMethod, model: Model): UnlearnParams {
  const L = model.config.numLayers;
  const layer = Math.max(0, Math.floor((2 * L) / 3) - 1);
  return {
    retainWeight: method === 'graddiff' ? 1 : method === 'gradascent' || method === 'rmu' || method === 'whp' || method === 'causal' ? 0 : 1,
    beta: method === 'simnpo' ? 2.5 : 0.1,
    gamma: 0,
    rmuLayer: layer,
    rmuC: 6,
    rmuFirstLayer: Math.max(0, layer - Math.floor(L / 3)),
    whpAlpha: 1,
    whpReinforceSteps: 50,
    whpReinforceLr: 1e-3,
    seed: 0,
  };
}

export function parseMethod(name: string): UnlearnMethod {
  const m = name.toLowerCase().replace(/[-_]/g, '');
  if (!(UNLEARN_METHODS as readonly string[]).includes(m)) {
    throw new UndoError(`unknown unlearning method "${name}"`, `choose one of: ${UNLEARN_METHODS.join(', ')}`);
  }
  return m as UnlearnMethod;
}

/** Σ of per-row values over each sequence of a batch ([B·T] → [B]). */
function perSequence(rows: Float32Array, B: number, T: number): Float64Array {
  const out = new Float64Array(B);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) out[b] += rows[b * T + t];
  return out;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const softplus = (x: number) => (x > 30 ? x : Math.log1p(Math.exp(x)));

/**
 * NPO (Zhang et al. 2024): L = (2/β)·mean_s log(1 + (π_θ(s)/π_ref(s))^β) over forget sequences s. Its
 * gradient is that of a CE ascent whose sequence s is weighted by 2·σ(β·(log π_θ(s) − log π_ref(s))), so
 * it runs as a weighted cross-entropy on the fused head. SimNPO (Fan et al. 2024) drops the reference and
 * length-normalises: L = −(2/β)·mean_s log σ(−β·log π_θ(s)/|s| − γ).
 */
async function npoObjective(model: Model, ref: Model | null, b: Batch, p: UnlearnParams, simple: boolean, scale: number): Promise<number> {
  const { B, T } = b;
  const rowsTheta = await rowCE(model, b); // also leaves the forward for the weighted head below
  const nllTheta = perSequence(rowsTheta, B, T);
  let nllRef: Float64Array = new Float64Array(B);
  if (!simple) {
    if (!ref) throw new UndoError('NPO needs a reference model');
    nllRef = perSequence(await rowCE(ref, b), B, T);
  }
  const weights = new Float32Array(B * T);
  let loss = 0;
  for (let s = 0; s < B; s++) {
    let w: number;
    if (simple) {
      // L_s = −(2/β)·log σ(x), x = β·NLL_s/|s| − γ;  dL_s/dNLL_s = −(2/|s|)·σ(−x)
      const x = (p.beta * nllTheta[s]) / T - p.gamma;
      loss += (2 / p.beta) * softplus(-x);
      w = -(2 / T) * sigmoid(-x);
    } else {
      // L_s = (2/β)·softplus(β·Δ), Δ = log π_θ − log π_ref = NLL_ref − NLL_θ;  dL_s/dNLL_θ = −2·σ(β·Δ)
      const delta = nllRef[s] - nllTheta[s];
      loss += (2 / p.beta) * softplus(p.beta * delta);
      w = -2 * sigmoid(p.beta * delta);
    }
    for (let t = 0; t < T; t++) weights[s * T + t] = w * scale;
  }
  // weighted CE, d/dθ Σ_s w_s·NLL_s / B, on the activations rowCE(model) left (the reference is another model)
  await model.native.headLoss(b.targets, weights, -100, B, true, null);
  await model.native.backward(true, null);
  return loss / B;
}

/**
 * RMU (Li et al. 2024, WMDP): steer the forget activations at layer ℓ to c·u (u a fixed random unit vector),
 * L = mean ‖h_ℓ − c·u‖² / d, training only the MLP down-projections of layers [first, ℓ].
 */
async function rmuObjective(model: Model, b: Batch, p: UnlearnParams, u: Float32Array, scale: number): Promise<number> {
  const d = model.config.hiddenSize;
  await model.native.forward(b.inputs, b.B, b.T);
  const h = model.native.hidden(p.rmuLayer);
  const n = b.B * b.T;
  const g = new Float32Array(h.length);
  let loss = 0;
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < d; j++) {
      const diff = h[r * d + j] - p.rmuC * u[j];
      loss += diff * diff;
      g[r * d + j] = (2 * diff * scale) / (n * d);
    }
  }
  const grads: (Float32Array | null)[] = new Array(model.config.numLayers).fill(null);
  grads[p.rmuLayer] = g;
  await model.native.backward(false, grads);
  return loss / (n * d);
}

export interface UnlearnOptions extends TrainOptions {
  method: UnlearnMethod;
  params?: Partial<UnlearnParams>;
  /** frozen reference for NPO (default: a copy of the model before unlearning) */
  reference?: Model;
  /** sharpness-aware minimisation radius ρ around any method (0 = off; the UNDO authors use 0.05) */
  sam?: number;
  /** method 'causal': the target entities and the teacher's options */
  causal?: CausalOptions;
}

/**
 * Unlearn: cfg.steps optimizer steps, each on one forget batch (from `forget`) and, when the method has a
 * retain term, one retain batch. Returns the training result; the model is changed in place.
 */
export async function unlearn(model: Model, forget: Batcher, retain: Batcher | null, cfg: TrainConfig, opts: UnlearnOptions): Promise<TrainResult> {
  const p: UnlearnParams = { ...defaultUnlearnParams(opts.method, model), ...(opts.params ?? {}) };
  const method = opts.method;
  if (p.rmuLayer < 0 || p.rmuLayer >= model.config.numLayers) throw new UndoError(`--rmu-layer ${p.rmuLayer} is outside [0, ${model.config.numLayers})`);
  if (p.retainWeight > 0 && !retain) throw new UndoError(`${method} with a retain weight needs retain data (--retain)`);
  let ref: Model | null = null;
  if (method === 'npo') ref = opts.reference ?? model.clone();
  let reinforced: Model | null = null;
  let baseline: Model | null = null;
  if (method === 'whp') {
    // Who's Harry Potter (Eldan & Russinovich 2023): a reinforced model fine-tuned further on the forget data
    // shows which tokens the forget data boosts; generic targets v_base − α·ReLU(v_reinforced − v_base)
    baseline = model.clone();
    reinforced = model.clone();
    await train(reinforced, forget, { ...cfg, steps: p.whpReinforceSteps, lr: p.whpReinforceLr, evalEvery: 0, checkpointEvery: 0 }, {});
  }
  let plan: CausalPlan | null = null;
  let original: Model | null = null;
  let contextWidth = 0;
  let teacherFor: { batch: Batch; teacher: CausalTeacher } | null = null;
  if (method === 'causal') {
    if (!opts.causal) throw new UndoError('method causal needs the target entities', 'name them with --entity NAME (the built-in biographies data derives them from the forget split)');
    plan = causalPlan(model.tokenizer, { ...opts.causal, seed: opts.causal.seed ?? p.seed });
    checkEntitiesPresent(plan, forget.data);
    contextWidth = Math.max(...plan.entityIds.map((ids) => ids.length)) + 1;
    original = model.clone();
  }
  let u = new Float32Array(0);
  if (method === 'rmu') {
    const rng = new Rng(p.seed);
    u = Float32Array.from({ length: model.config.hiddenSize }, () => rng.normal());
    const norm = Math.hypot(...u);
    for (let i = 0; i < u.length; i++) u[i] /= norm;
    const trainable = new Set<string>();
    for (let l = p.rmuFirstLayer; l <= p.rmuLayer; l++) trainable.add(`model.layers.${l}.mlp.down_proj.weight`);
    model.setFrozen((name) => !trainable.has(name), true);
  }
  const objective = async (fb: Batch, rb: Batch | null, share: number): Promise<number> => {
    let loss = 0;
    switch (method) {
      case 'gradascent':
      case 'graddiff':
        loss -= await ceObjective(model, fb, -share);
        break;
      case 'npo':
      case 'simnpo':
        loss += await npoObjective(model, ref, fb, p, method === 'simnpo', share);
        break;
      case 'maxent':
        loss += await logitObjective(model, fb, 'maxent', { scale: share });
        break;
      case 'rmu':
        loss += await rmuObjective(model, fb, p, u, share);
        break;
      case 'whp': {
        await baseline!.native.forward(fb.inputs, fb.B, fb.T);
        const vb = await baseline!.native.logits(null);
        await reinforced!.native.forward(fb.inputs, fb.B, fb.T);
        const vr = await reinforced!.native.logits(null);
        for (let i = 0; i < vb.length; i++) vb[i] -= p.whpAlpha * Math.max(0, vr[i] - vb[i]);
        loss += await logitObjective(model, fb, 'fkl', { teacherLogits: vb, scale: share });
        break;
      }
      case 'causal': {
        // SAM evaluates the objective twice on the same batch: the teacher is computed once
        if (teacherFor?.batch !== fb) teacherFor = { batch: fb, teacher: await causalTeacher(original!, fb, plan!, windowContext(forget, fb, contextWidth)) };
        loss += await teacherKlObjective(model, fb, teacherFor.teacher, share);
        break;
      }
    }
    if (rb) loss += p.retainWeight * (await ceObjective(model, rb, p.retainWeight * share));
    return loss * share;
  };
  const rho = opts.sam ?? 0;
  if (rho < 0) throw new UndoError(`SAM ρ must be >= 0, got ${rho}`);
  if (rho > 0 && cfg.gradAccum !== 1) throw new UndoError('SAM needs gradient accumulation 1');
  const microStep = async (fb: Batch, share: number): Promise<number> => {
    const rb = retain && p.retainWeight > 0 ? retain.next() : null;
    if (rho === 0) return objective(fb, rb, share);
    // SAM (Foret et al. 2021): gradient at θ + ρ·g/‖g‖ on the same batches, applied at θ
    await objective(fb, rb, share);
    const norm = model.native.gradNorm();
    const saved = model.params.slice();
    if (norm > 0) {
      const g = model.grads;
      const k = rho / norm;
      for (let i = 0; i < g.length; i++) model.params[i] += k * g[i];
    }
    model.native.zeroGrad();
    const loss = await objective(fb, rb, share);
    model.params.set(saved);
    return loss;
  };
  try {
    return await train(model, forget, cfg, { ...opts, microStep });
  } finally {
    if (method === 'rmu') model.setFrozen(() => true, false);
  }
}

// ---------------------------------------------------------------------------------------------
// Causal intervention ("Revisiting Who's Harry Potter", Liu, Zhang, Jaakkola & Chang; research notes
// shared/research/unlearning.md §3.2)
// ---------------------------------------------------------------------------------------------
//
// The knowledge about the target entity is a confounder between the text and the next token. The
// teacher estimates the interventional distribution by averaging the frozen original model over N
// counterfactual rewrites of each forget window in which every mention of a target is replaced by
// another (fictional) name:
//
//     p_teacher(· | x_<t) = (1/N) Σ_n p_θ0(· | x_<t^(n))
//
// and the model is trained on Σ_t KL(p_teacher,t ‖ p_θ,t) / #kept positions of the sequence, averaged
// over the sequences of the batch.
//
// Alignment. The paper aligns the rewritten token sequences back to the original with difflib. Here
// the tokenizer is byte-level and the rewrite is built here, from the mention spans found in the
// window: every token outside a mention is copied, so its position in rewrite n is known exactly
// (its original position + the prompt length + the length differences of the names before it). That
// offset map is exact where a diff could mis-align (a replacement name sharing bytes with its
// surroundings), costs nothing, and needs no heuristics. Row t of the window (input token x_t,
// predicting x_{t+1}) is kept when x_t is not inside a mention (the target-name tokens themselves
// are excluded) and its rewritten position fits the context in every one of the N versions.
//
// Mentions are exact, case-sensitive, whole-word matches of the entity names (the neighbouring bytes
// are not ASCII letters or digits nor non-ASCII bytes; special tokens are boundaries), found in the window and,
// when the windows come from a Batcher over a packed stream, across the window's edges: a mention cut
// by the edge is replaced by the whole replacement name and its bytes in the window are excluded.
//
// "Change name back" (optional, the paper's change_name_back): at a kept row where more than half of
// the teachers put probability > 0.1 on the first token of their replacement name for an entity,
// each teacher's mass on that token is moved onto the first token of the entity's own name (the
// replacement token keeps 1e-8), so the model goes on naming the person but not its facts. This is
// not done at the rows before the entity's first appearance in the window (the paper's rule) unless
// the counterfactual prompt is on: the prompt names the replacement, so the teachers predict it even
// at the first appearance, and the paper moves it back there too.
//
// Counterfactual prompt (optional): each rewrite of a window that mentions a target starts with
// <bos>"Complete the following passage about R. " (R: the window's replacement names, in order of first
// mention, joined by " and "), followed by the window's tokens.
//
// WHP (method 'whp') is the N = 1, hard-label, reinforced-model special case and stays separate.

/** Default number of counterfactual rewrites N. The paper uses 20 (WPU). Each rewrite costs one forward of
 * the frozen model per step: with N = 8 a step of the tiny preset (16 × 128 tokens) takes about 0.25 s on 2
 * idle cores, with N = 20 about 0.6 s; on the built-in biographies task N = 20 forgot no more than N = 8 and
 * cost more retain accuracy. */
export const CAUSAL_DEFAULT_REPLACEMENTS = 8;
const MOVE_THRESHOLD = 0.1;
const KEEP_MASS = 1e-8;

export interface CausalOptions {
  /** names of the target entities (every whole-word, case-sensitive mention in the forget data is rewritten) */
  entities: readonly string[];
  /** number N of counterfactual rewrites (default CAUSAL_DEFAULT_REPLACEMENTS) */
  replacements?: number;
  /** prepend "Complete the following passage about {replacement}." to each rewrite (default false) */
  counterfactualPrompt?: boolean;
  /** "change name back" (default false) */
  nameBack?: boolean;
  /** replacement names to use instead of the fictional-name pool: at least N × #entities distinct names */
  names?: readonly string[];
  /** names never drawn as replacements (besides the entities and the built-in biography people) */
  exclude?: readonly string[];
  /** seed of the replacement-name draw (default: the unlearning seed) */
  seed?: number;
}

export interface CausalPlan {
  entities: string[];
  entityIds: Int32Array[];
  /** N */
  n: number;
  /** replacements[n][e]: the name that stands for entity e in rewrite n (all N × E distinct) */
  replacements: string[][];
  replacementIds: Int32Array[][];
  counterfactualPrompt: boolean;
  nameBack: boolean;
  /** isWord[id] = 1 for the ids of letters, digits and non-ASCII bytes (mention boundaries) */
  isWord: Uint8Array;
  bos: number;
  pad: number;
  tokenizer: ByteTokenizer;
}

/** Validate the options and draw the replacement names (deterministic by seed). */
export function causalPlan(tokenizer: ByteTokenizer, opts: CausalOptions): CausalPlan {
  const n = opts.replacements ?? CAUSAL_DEFAULT_REPLACEMENTS;
  if (!Number.isInteger(n) || n < 1) throw new UndoError(`causal: the number of counterfactual rewrites must be an integer >= 1, got ${n}`, 'set --replacements N (N = 1 is a single counterfactual name)');
  if (n > 1000) throw new UndoError(`causal: at most 1000 counterfactual rewrites, got ${n}`);
  const entities: string[] = [];
  for (const raw of opts.entities ?? []) {
    if (typeof raw !== 'string') throw new UndoError(`causal: entity names must be strings, got ${JSON.stringify(raw)}`);
    const e = raw.trim();
    if (!e) throw new UndoError('causal: an entity name is empty');
    if (!entities.includes(e)) entities.push(e);
  }
  if (!entities.length) {
    throw new UndoError('causal: no target entity given', 'name the person(s) to forget with --entity NAME (the built-in biographies data derives them from the forget split)');
  }
  const E = entities.length;
  let pool: string[];
  if (opts.names) {
    pool = [...new Set(opts.names.map((s) => s.trim()).filter(Boolean))].filter((s) => !entities.includes(s));
    if (pool.length < n * E) throw new UndoError(`causal: ${n} rewrites of ${E} entities need ${n * E} distinct replacement names that are not entities, got ${pool.length}`);
  } else {
    pool = replacementNames(n * E, { seed: mixSeeds(opts.seed ?? 0, 'causal'), exclude: [...entities, ...(opts.exclude ?? [])] });
  }
  const replacements = Array.from({ length: n }, (_, k) => entities.map((_e, e) => pool[k * E + e]));
  const isWord = new Uint8Array(tokenizer.vocabSize);
  for (let b = 0; b < 256; b++) {
    const word = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b >= 0x80;
    if (word) isWord[tokenizer.byteId(b)] = 1;
  }
  return {
    entities, entityIds: entities.map((e) => tokenizer.encode(e)), n, replacements,
    replacementIds: replacements.map((row) => row.map((r) => tokenizer.encode(r))),
    counterfactualPrompt: !!opts.counterfactualPrompt, nameBack: !!opts.nameBack, isWord,
    bos: tokenizer.bos, pad: tokenizer.pad, tokenizer,
  };
}

/** A mention of entity `entity` at window positions [start, end) (clipped to the window). */
export interface Mention {
  entity: number;
  start: number;
  end: number;
}

/**
 * Whole-word mentions of the plan's entities in `seq`. `left` / `right`: the tokens just before and after
 * `seq` in its stream, so that mentions cut by the window's edges are found too (without them the edges
 * count as word boundaries). Longer names win where two could match at the same place; mentions never overlap.
 */
export function findMentions(seq: ArrayLike<number>, plan: Pick<CausalPlan, 'entityIds' | 'isWord'>, left: ArrayLike<number> = [], right: ArrayLike<number> = []): Mention[] {
  const L = left.length;
  const full = new Int32Array(L + seq.length + right.length);
  const put = (a: ArrayLike<number>, at: number) => full.set(a instanceof Int32Array ? a : Int32Array.from(a), at);
  put(left, 0);
  put(seq, L);
  put(right, L + seq.length);
  const order = plan.entityIds.map((_, e) => e).sort((a, b) => plan.entityIds[b].length - plan.entityIds[a].length);
  const word = (i: number) => i >= 0 && i < full.length && full[i] >= 0 && full[i] < plan.isWord.length && plan.isWord[full[i]] === 1;
  const out: Mention[] = [];
  for (let i = 0; i < full.length && i < L + seq.length;) {
    let hit = -1;
    if (!word(i - 1)) {
      for (const e of order) {
        const ids = plan.entityIds[e];
        if (ids.length === 0 || i + ids.length > full.length) continue;
        let ok = true;
        for (let j = 0; j < ids.length && ok; j++) ok = full[i + j] === ids[j];
        if (ok && !word(i + ids.length)) {
          hit = e;
          break;
        }
      }
    }
    if (hit < 0) {
      i++;
      continue;
    }
    const len = plan.entityIds[hit].length;
    if (i + len > L) out.push({ entity: hit, start: Math.max(0, i - L), end: Math.min(seq.length, i + len - L) });
    i += len;
  }
  return out;
}

/** A rewritten window: its token ids and, per original position, the position in the rewrite (−1 inside a mention). */
export interface Rewrite {
  ids: Int32Array;
  map: Int32Array;
}

/**
 * Replace every mention in `seq` by its entity's replacement (`replacementIds[entity]`), after `prefix`.
 * Tokens outside mentions are copied in order, so `map` is exact; mention tokens map to −1.
 */
export function rewriteWindow(seq: ArrayLike<number>, mentions: readonly Mention[], replacementIds: readonly Int32Array[], prefix: ArrayLike<number> = []): Rewrite {
  const ids: number[] = Array.from(prefix);
  const map = new Int32Array(seq.length).fill(-1);
  const sorted = [...mentions].sort((a, b) => a.start - b.start);
  let m = 0;
  for (let t = 0; t < seq.length;) {
    if (m < sorted.length && sorted[m].start === t) {
      const r = replacementIds[sorted[m].entity];
      if (!r) throw new UndoError(`rewriteWindow: no replacement for entity ${sorted[m].entity}`);
      for (const x of r) ids.push(x);
      t = Math.max(t + 1, sorted[m].end);
      m++;
      continue;
    }
    if (m < sorted.length && sorted[m].start < t) throw new UndoError('rewriteWindow: mentions overlap');
    map[t] = ids.length;
    ids.push(seq[t]);
    t++;
  }
  return { ids: Int32Array.from(ids), map };
}

/** The counterfactual prompt of rewrite n of a window with these mentions (empty when there are none or the prompt is off). */
export function counterfactualPrefix(plan: CausalPlan, mentions: readonly Mention[], n: number): Int32Array {
  if (!plan.counterfactualPrompt || !mentions.length) return new Int32Array(0);
  const seen: number[] = [];
  for (const m of [...mentions].sort((a, b) => a.start - b.start)) if (!seen.includes(m.entity)) seen.push(m.entity);
  const text = `Complete the following passage about ${seen.map((e) => plan.replacements[n][e]).join(' and ')}. `;
  const ids = plan.tokenizer.encode(text);
  const out = new Int32Array(ids.length + 1);
  out[0] = plan.bos;
  out.set(ids, 1);
  return out;
}

export interface NameBackSpec {
  /** first token of each entity's own name */
  original: ArrayLike<number>;
  /** replacement[n][e]: first token of the replacement name of entity e in teacher n */
  replacement: readonly ArrayLike<number>[];
  /** entities whose name-back may apply at a row (those mentioned in its window, after their first appearance) */
  eligible: (row: number) => readonly number[];
}

/**
 * The mean of N teachers' next-token distributions, row by row, with the optional "change name back"
 * (see the section comment), without holding the N distributions: each add() accumulates p/N and keeps
 * only each teacher's probabilities of the name-back tokens of the row. Rows whose N rewrites are all the
 * same text can be added once with addAll().
 */
export class CounterfactualAverage {
  readonly sum: Float64Array;
  private readonly picks = new Map<number, Float64Array>();

  constructor(readonly rows: number, readonly vocab: number, readonly n: number, readonly nameBack?: NameBackSpec) {
    if (!Number.isInteger(n) || n < 1) throw new UndoError(`CounterfactualAverage: n must be an integer >= 1, got ${n}`);
    this.sum = new Float64Array(rows * vocab);
  }

  /** Teacher `k`'s distribution at `row`. */
  add(k: number, row: number, p: ArrayLike<number>): void {
    const V = this.vocab;
    const off = row * V;
    for (let v = 0; v < V; v++) this.sum[off + v] += p[v] / this.n;
    const nb = this.nameBack;
    if (!nb) return;
    const els = nb.eligible(row);
    if (!els.length) return;
    let store = this.picks.get(row);
    if (!store) this.picks.set(row, (store = new Float64Array(this.n * els.length * 2)));
    els.forEach((e, i) => {
      store![(k * els.length + i) * 2] = p[nb.replacement[k][e]];
      store![(k * els.length + i) * 2 + 1] = p[nb.original[e]];
    });
  }

  /** The same distribution for every teacher (a window without mentions). */
  addAll(row: number, p: ArrayLike<number>): void {
    for (let k = 0; k < this.n; k++) this.add(k, row, p);
  }

  /** The averaged distributions, rows × vocab, with the name-back moves applied. */
  result(): Float32Array {
    const nb = this.nameBack;
    if (nb) {
      for (const [row, store] of this.picks) {
        const els = nb.eligible(row);
        const E = els.length;
        const flagged = els.map((_e, i) => {
          let votes = 0;
          for (let k = 0; k < this.n; k++) if (store[(k * E + i) * 2] > MOVE_THRESHOLD) votes++;
          return votes > 0.5 * this.n;
        });
        if (!flagged.some(Boolean)) continue;
        for (let k = 0; k < this.n; k++) {
          // teacher k's probabilities of the tokens involved, moved in entity order
          const before = new Map<number, number>();
          els.forEach((e, i) => {
            before.set(nb.replacement[k][e], store[(k * E + i) * 2]);
            before.set(nb.original[e], store[(k * E + i) * 2 + 1]);
          });
          const after = new Map(before);
          els.forEach((e, i) => {
            if (!flagged[i]) return;
            const r = nb.replacement[k][e];
            const o = nb.original[e];
            const pr = after.get(r)!;
            if (r === o || !(pr > KEEP_MASS)) return;
            after.set(o, after.get(o)! + pr - KEEP_MASS);
            after.set(r, KEEP_MASS);
          });
          for (const [tok, v] of after) this.sum[row * this.vocab + tok] += (v - before.get(tok)!) / this.n;
        }
      }
    }
    return Float32Array.from(this.sum);
  }
}

export interface CausalTeacher {
  /** p_teacher, rows × vocab (zero on masked rows) */
  probs: Float32Array;
  /** log p_teacher as teacher logits for the fkl kernel (softmax(log p) = p); 0 on masked rows */
  logits: Float32Array;
  /** 1 = the row is trained on */
  mask: Uint8Array;
  /** mentions found in each window */
  mentions: Mention[][];
}

/** Stream context of each window of a batch from `batcher` (null when the batch is not the batcher's). */
export function windowContext(batcher: Batcher, b: Batch, width: number): { left: Int32Array; right: Int32Array }[] | null {
  const data = batcher.data;
  const { T } = b;
  if (data.seqLen !== T || b.position.index >= data.count) return null;
  let { epoch, index } = b.position;
  const out: { left: Int32Array; right: Int32Array }[] = [];
  for (let r = 0; r < b.B; r++) {
    const w = batcher.epochOrder(epoch)[index];
    const start = w * T;
    for (let t = 0; t < T; t++) if (data.tokens[start + t] !== b.inputs[r * T + t] || data.tokens[start + t + 1] !== b.targets[r * T + t]) return null;
    out.push({ left: data.tokens.subarray(Math.max(0, start - width), start), right: data.tokens.subarray(start + T, Math.min(data.tokens.length, start + T + width)) });
    if (++index >= data.count) {
      index = 0;
      epoch++;
    }
  }
  return out;
}

/**
 * The causal-intervention teacher of one batch: N counterfactual rewrites of every window, the frozen
 * `original` model on each (one forward per rewrite, windows without mentions only once), the softmaxes
 * averaged on the kept rows. `context`: each window's neighbouring stream tokens (windowContext); without
 * it the last target token is the only right context.
 */
export async function causalTeacher(original: Model, b: Batch, plan: CausalPlan, context?: { left: ArrayLike<number>; right: ArrayLike<number> }[] | null): Promise<CausalTeacher> {
  const { B, T } = b;
  const V = original.config.vocabSize;
  const maxPos = original.config.maxPositions;
  const N = plan.n;
  const mentions: Mention[][] = [];
  const rewrites: Rewrite[][] = []; // [window][n]
  for (let r = 0; r < B; r++) {
    const seq = b.inputs.subarray(r * T, (r + 1) * T);
    const ctx = context?.[r];
    const ms = findMentions(seq, plan, ctx?.left ?? [], ctx?.right ?? [b.targets[r * T + T - 1]]);
    mentions.push(ms);
    rewrites.push(ms.length
      ? Array.from({ length: N }, (_, k) => rewriteWindow(seq, ms, plan.replacementIds[k], counterfactualPrefix(plan, ms, k)))
      : [{ ids: seq.slice(), map: Int32Array.from({ length: T }, (_, t) => t) }]);
  }
  const mask = new Uint8Array(B * T);
  for (let r = 0; r < B; r++) {
    for (let t = 0; t < T; t++) {
      mask[r * T + t] = b.targets[r * T + t] !== -100 && rewrites[r].every((w) => w.map[t] >= 0 && w.map[t] < maxPos) ? 1 : 0;
    }
  }
  // name-back: entities of the window at each row, after their first appearance (or everywhere with the prompt)
  const firstAt = mentions.map((ms) => {
    const f = new Map<number, number>();
    for (const m of ms) f.set(m.entity, Math.min(f.get(m.entity) ?? Infinity, m.start));
    return f;
  });
  const nameBack: NameBackSpec | undefined = plan.nameBack ? {
    original: plan.entityIds.map((ids) => ids[0]),
    replacement: plan.replacementIds.map((row) => row.map((ids) => ids[0])),
    eligible: (row) => {
      const r = Math.floor(row / T), t = row % T;
      const els: number[] = [];
      for (const [e, s] of [...firstAt[r]].sort((x, y) => x[0] - y[0])) if (plan.counterfactualPrompt || t >= s) els.push(e);
      return els;
    },
  } : undefined;
  const avg = new CounterfactualAverage(B * T, V, N, nameBack);
  const p = new Float64Array(V);
  for (let k = 0; k < N; k++) {
    const windows = Array.from({ length: B }, (_, r) => r).filter((r) => k === 0 || mentions[r].length > 0);
    if (!windows.length) continue;
    const L = Math.min(maxPos, Math.max(...windows.map((r) => rewrites[r][mentions[r].length ? k : 0].ids.length)));
    const ids = new Int32Array(windows.length * L).fill(plan.pad);
    windows.forEach((r, i) => {
      const w = rewrites[r][mentions[r].length ? k : 0].ids;
      ids.set(w.subarray(0, L), i * L);
    });
    await original.native.forward(ids, windows.length, L);
    const z = await original.native.logits(null);
    windows.forEach((r, i) => {
      const w = rewrites[r][mentions[r].length ? k : 0];
      for (let t = 0; t < T; t++) {
        if (!mask[r * T + t]) continue;
        const off = (i * L + w.map[t]) * V;
        let mx = -Infinity;
        for (let v = 0; v < V; v++) mx = Math.max(mx, z[off + v]);
        let s = 0;
        for (let v = 0; v < V; v++) s += p[v] = Math.exp(z[off + v] - mx);
        for (let v = 0; v < V; v++) p[v] /= s;
        if (mentions[r].length) avg.add(k, r * T + t, p);
        else avg.addAll(r * T + t, p);
      }
    });
  }
  const probs = avg.result();
  const logits = new Float32Array(B * T * V);
  for (let row = 0; row < B * T; row++) {
    if (!mask[row]) {
      probs.fill(0, row * V, (row + 1) * V);
      continue;
    }
    for (let v = 0; v < V; v++) logits[row * V + v] = Math.log(Math.max(probs[row * V + v], 1e-30));
  }
  return { probs, logits, mask, mentions };
}

/**
 * scale · Σ_t KL(p_teacher,t ‖ p_θ,t) / #kept rows of each sequence, averaged over the sequences with a kept
 * row (the paper's normalisation), through the fkl kernel with log p_teacher as the teacher's logits.
 * Returns the unscaled loss.
 */
export async function teacherKlObjective(model: Model, b: Batch, teacher: Pick<CausalTeacher, 'logits' | 'mask'>, scale = 1): Promise<number> {
  const { B, T } = b;
  const V = model.config.vocabSize;
  const counts = new Array<number>(B).fill(0);
  for (let r = 0; r < B; r++) for (let t = 0; t < T; t++) counts[r] += teacher.mask[r * T + t];
  const seqs = counts.filter((c) => c > 0).length;
  if (!seqs) return 0;
  await model.native.forward(b.inputs, B, T);
  const student = await model.native.logits(null);
  const res = kdLoss.compute('fkl', { student, teacher: teacher.logits, rows: B * T, vocab: V, mask: teacher.mask, reduction: 'sum' });
  let loss = 0;
  for (let r = 0; r < B; r++) {
    if (!counts[r]) continue;
    const w = 1 / (counts[r] * seqs);
    for (let t = 0; t < T; t++) loss += res.perRow[r * T + t] * w;
    const g = res.grad.subarray(r * T * V, (r + 1) * T * V);
    for (let i = 0; i < g.length; i++) g[i] *= w * scale;
  }
  await model.native.headGrad(res.grad);
  await model.native.backward(true, null);
  return loss;
}

/** Check that every entity of the plan is mentioned somewhere in the packed forget data. */
export function checkEntitiesPresent(plan: CausalPlan, data: PackedDataset): void {
  const found = new Set(findMentions(data.tokens, plan).map((m) => m.entity));
  const missing = plan.entities.filter((_e, i) => !found.has(i));
  if (missing.length) {
    throw new UndoError(`causal: ${missing.map((m) => JSON.stringify(m)).join(', ')} ${missing.length === 1 ? 'does' : 'do'} not occur in the forget data`,
      'entities are matched exactly (case-sensitive, whole words); check the spelling or the --forget data');
  }
}
