/**
 * Unlearning methods users compare UNDO against (shared/research/unlearning.md, undo.md §3): gradient
 * ascent, GradDiff, NPO, SimNPO, MaxEnt (UNDO's default teacher), RMU, Who's Harry Potter (WHP) and its
 * causal-intervention generalisation (method 'causal', "Revisiting WHP"; its teacher is lib/unlearn/causal.ts). Each
 * is an objective on a forget batch (plus a retain batch) plugged into the shared training loop (lib/train/train.ts).
 */
import { Batch, Batcher, BatcherPosition } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { Model } from '../models/model';
import { ceObjective, chunkedLogitObjective, headChunkRows, logitObjective, rowCE } from '../train/objectives';
import { mixSeeds, Rng, RngState } from '../core/rng';
import { repNoiseObjective, REPNOISE_DEFAULTS } from './repnoise';
import { RunState, train, TrainConfig, TrainOptions, TrainResult } from '../train/train';
import { CausalCache, CausalOptions, CausalPlan, causalObjective, causalPlan, checkEntitiesPresent, windowContext } from './causal';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export const UNLEARN_METHODS = ['gradascent', 'graddiff', 'npo', 'simnpo', 'maxent', 'repnoise', 'rmu', 'whp', 'causal'] as const;
export type UnlearnMethod = (typeof UNLEARN_METHODS)[number];

export type UnlearnStage = { steps: number; lr: number; retainWeight?: number };

/** Tuned on the tiny preset for arithmetic (unlearning × and ÷, keeping + and −); see the study report. */
export const UNLEARN_DEFAULTS: Record<UnlearnMethod, UnlearnStage> = {
  maxent: { steps: 150, lr: 2e-4, retainWeight: 16 },
  graddiff: { steps: 150, lr: 2e-4, retainWeight: 16 },
  // MaxEnt's schedule with the RepNoise terms added (the UNDO authors add RepNoise to MaxEnt)
  repnoise: { steps: 150, lr: 2e-4, retainWeight: 16 },
  // RMU: steering layer 2 of 4 (layers 0–2 trained) with a strong retain term (the RMU paper's α is 1200):
  // + 96% / − 93%, × 1% / ÷ 1% on the tiny model, where layer 1 or a retain weight ≤ 64 cost 10–60 points of + and −
  rmu: { steps: 100, lr: 1e-3, retainWeight: 256 },
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
  /** RepNoise: weight α of −log(1 + CE_forget), weight β of the noise (MMD) term, positions sampled per layer */
  repAlpha: number;
  repBeta: number;
  repRows: number;
  seed: number;
}

/** Each method's defaults from its paper / the UNDO authors' arithmetic runs. */
export function defaultUnlearnParams(method: UnlearnMethod, model: Model): UnlearnParams {
  const L = model.config.numLayers;
  const layer = Math.min(L - 1, Math.floor((2 * L) / 3));
  return {
    retainWeight: method === 'graddiff' ? 1 : method === 'gradascent' || method === 'rmu' || method === 'whp' || method === 'causal' ? 0 : 1,
    beta: method === 'simnpo' ? 2.5 : 0.1,
    gamma: 0,
    rmuLayer: layer,
    rmuC: 6,
    rmuFirstLayer: Math.max(0, layer - 2),  // the RMU paper trains three layers, ℓ − 2 … ℓ
    whpAlpha: 1,
    whpReinforceSteps: 50,
    whpReinforceLr: 1e-3,
    repAlpha: REPNOISE_DEFAULTS.alpha,
    repBeta: REPNOISE_DEFAULTS.beta,
    repRows: REPNOISE_DEFAULTS.rows,
    seed: 0,
  };
}

export function parseMethod(name: string): UnlearnMethod {
  const m = name.toLowerCase().replace(/[-_]/g, '');
  if (!(UNLEARN_METHODS as readonly string[]).includes(m)) {
    throw new Err(`unknown unlearning method "${name}"`, `choose one of: ${UNLEARN_METHODS.join(', ')}`);
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
    if (!ref) throw new Err('NPO needs a reference model');
    nllRef = perSequence(await rowCE(ref, b), B, T);
  }
  const weights = new Float32Array(B * T);
  let loss = 0;
  for (let s = 0; s < B; s++) {
    let w: number;
    if (simple) {
      // L_s = −(2/β)·log σ(x), x = β·NLL_s/|s| − γ;  dL_s/dNLL_s = −(2/|s|)·σ(−x); |s| = the sequence's
      // unmasked targets (the tokens its NLL sums over)
      let len = 0;
      for (let t = 0; t < T; t++) if (b.targets[s * T + t] !== -100) len++;
      len = Math.max(1, len);
      const x = (p.beta * nllTheta[s]) / len - p.gamma;
      loss += (2 / p.beta) * softplus(-x);
      w = -(2 / len) * sigmoid(-x);
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
  /**
   * The model before unlearning, which NPO (its reference), WHP (the baseline it reinforces) and causal intervention
   * (the original model) keep frozen. Default: a copy of `model` when the run starts; a resumed run of those methods
   * (resume: true) must pass it, since the checkpoint holds only the unlearned weights.
   */
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
  // a steered layer given without its first trained layer: the three layers ending at it
  if (opts.params?.rmuLayer !== undefined && opts.params.rmuFirstLayer === undefined) p.rmuFirstLayer = Math.max(0, p.rmuLayer - 2);
  const method = opts.method;
  if (p.rmuLayer < 0 || p.rmuLayer >= model.config.numLayers) throw new Err(`--rmu-layer ${p.rmuLayer} is outside [0, ${model.config.numLayers})`);
  if (p.retainWeight > 0 && !retain) throw new Err(`${method} with a retain weight needs retain data (--retain)`);
  // the frozen model before unlearning: given, or this model now (a resumed model is no longer it)
  const before = (): Model => {
    if (opts.reference) return opts.reference;
    if (opts.resume) {
      throw new Err(`resuming ${method} needs the model before unlearning as \`reference\`: the checkpoint holds only the unlearned weights`,
        'pass reference: Model.load(<the directory unlearning started from>)');
    }
    return model.clone();
  };
  let ref: Model | null = null;
  if (method === 'npo') ref = before();
  let reinforced: Model | null = null;
  let baseline: Model | null = null;
  if (method === 'whp') {
    // Who's Harry Potter (Eldan & Russinovich 2023): a reinforced model fine-tuned further on the forget data
    // shows which tokens the forget data boosts; generic targets v_base − α·ReLU(v_reinforced − v_base)
    baseline = before();
    reinforced = baseline.clone();
    await train(reinforced, forget, { ...cfg, steps: p.whpReinforceSteps, lr: p.whpReinforceLr, evalEvery: 0, checkpointEvery: 0 }, {});
  }
  let plan: CausalPlan | null = null;
  let original: Model | null = null;
  let contextWidth = 0;
  const causalCache: CausalCache = {};
  if (method === 'causal') {
    if (!opts.causal) throw new Err('method causal needs the target entities', 'name them with --entity NAME (the built-in biographies data derives them from the forget split)');
    plan = causalPlan(model.tokenizer, { ...opts.causal, seed: opts.causal.seed ?? p.seed });
    checkEntitiesPresent(plan, forget.data);
    contextWidth = Math.max(...plan.entityForms.flat().map((ids) => ids.length)) + 1;
    original = before();
  }
  // RepNoise's sampled positions and noise; SAM's second pass on a batch draws new ones, as a fresh noise sample
  const repRng = method === 'repnoise' ? new Rng(mixSeeds(p.seed, 'repnoise')) : null;
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
      case 'repnoise':
        loss += await logitObjective(model, fb, 'maxent', { scale: share });
        loss += await repNoiseObjective(model, fb, { alpha: p.repAlpha, beta: p.repBeta, rows: p.repRows }, repRng!, share);
        break;
      case 'rmu':
        loss += await rmuObjective(model, fb, p, u, share);
        break;
      case 'whp': {
        // the generic targets one row chunk at a time (no rows × V block): v_base − α·ReLU(v_reinforced − v_base)
        await baseline!.native.forward(fb.inputs, fb.B, fb.T);
        await reinforced!.native.forward(fb.inputs, fb.B, fb.T);
        const V = model.config.vocabSize;
        const cap = headChunkRows(V, fb.B * fb.T) * V;
        const bufB = new Float32Array(cap), bufR = new Float32Array(cap);
        loss += await chunkedLogitObjective(model, fb, 'fkl', async (_row0, idx) => {
          const vb = (await baseline!.native.logits(idx, bufB)).subarray(0, idx.length * V);
          const vr = (await reinforced!.native.logits(idx, bufR)).subarray(0, idx.length * V);
          for (let i = 0; i < vb.length; i++) vb[i] -= p.whpAlpha * Math.max(0, vr[i] - vb[i]);
          return { teacher: vb };
        }, { scale: share });
        break;
      }
      case 'causal': {
        // SAM evaluates the objective twice on the same batch: a one-group batch's teacher is computed once
        loss += await causalObjective(model, original!, fb, plan!, windowContext(forget, fb, contextWidth), share, causalCache);
        break;
      }
    }
    if (rb) loss += p.retainWeight * (await ceObjective(model, rb, p.retainWeight * share));
    return loss * share;
  };
  const rho = opts.sam ?? 0;
  if (rho < 0) throw new Err(`SAM ρ must be >= 0, got ${rho}`);
  if (rho > 0 && cfg.gradAccum !== 1) throw new Err('SAM needs gradient accumulation 1');
  const microStep = async (fb: Batch, share: number): Promise<number> => {
    const rb = retain && p.retainWeight > 0 ? retain.next() : null;
    if (rho === 0) return objective(fb, rb, share);
    // SAM (Foret et al. 2021): gradient at θ + ρ·g/‖g‖ on the same batches, applied at θ
    await objective(fb, rb, share);
    const norm = (await model.native.gradNorm());
    const saved = model.params.slice();
    if (norm > 0) {
      const g = model.grads;
      const k = rho / norm;
      for (let i = 0; i < g.length; i++) model.params[i] += k * g[i];
    }
    await model.native.zeroGrad();
    const loss = await objective(fb, rb, share);
    model.params.set(saved);
    return loss;
  };
  // what a resumed run needs beyond the weights, the optimizer and the forget data's position: the retain data's
  // position, RepNoise's generator and the caller's own run state
  const userState = opts.runState;
  const runState: RunState = {
    save: () => ({ retain: retain?.position ?? null, repnoise: repRng?.getState() ?? null, user: userState?.save() ?? null }),
    restore: (saved: unknown) => {
      const st = saved as { retain?: BatcherPosition | null; repnoise?: RngState | null; user?: unknown };
      if (st && typeof st === 'object' && 'user' in st) {
        if (retain && st.retain) retain.position = st.retain;
        if (repRng && st.repnoise) repRng.setState(st.repnoise);
        if (userState && st.user !== null) userState.restore(st.user);
      } else if (userState) {
        userState.restore(saved); // a checkpoint from before unlearn kept its own state
      }
    },
  };
  try {
    return await train(model, forget, cfg, { job: 'unlearn', ...opts, microStep, runState });
  } finally {
    if (method === 'rmu') model.setFrozen(() => true, false);
  }
}

export * from './causal';
