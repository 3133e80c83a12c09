/**
 * Weight-space perturbations applied to a whole model, in place:
 *
 * - {@link noiseModel}: the "Noise" step of UNDO (Unlearn-Noise-Distill-on-Outputs; Lee, Foote et al.,
 *   "Distillation Robustifies Unlearning", NeurIPS 2025), shrink-and-perturb towards a fresh initialisation:
 *   θ ← (1−α)·θ + α·β·N. See /work/shared/research/undo.md §4 for what the authors' `do_corruption` does.
 * - {@link projectToDistribution}: one step of the distribution-constrained projection of Zhong, Sorscher, Lee &
 *   Sompolinsky ("A theory of weight distribution-constrained learning", NeurIPS 2022; the PDF is headed "A theory
 *   of learning with constrained weight-distribution"). Their DisCo-SGD alternates gradient steps with steps along
 *   the optimal-transport direction towards a prescribed weight distribution. In one dimension the optimal
 *   transport map sends the weight of rank r to the target distribution's quantile at r, so the step is: sort the
 *   weights, and move each one a fraction η of the way to the target quantile of its rank.
 *
 * Both are deterministic. The noise is drawn by native.noiseBlend (Philox4x32-10, native/cpu/random.cc) keyed by
 * (seed, stream, element index) with the stream derived from the tensor name only ({@link noiseStream}), and all
 * the arithmetic done here in TypeScript is element-wise and order-independent, so the result is bit-identical for
 * any thread count, across calls, and does not change for one tensor when other tensors are added or renamed.
 */
import { UndoError, errorClass } from '../core/errors';
import { Model } from '../models/model';
import { native, NativeTensorInfo } from '../core/native';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

// ---------------------------------------------------------------------------------------------------------------
// Noise (UNDO)

export type NoiseDist = 'xavier' | 'normal';

export interface NoiseOptions {
  /** Interpolation weight α ∈ [0, 1]: 0 leaves the model unchanged, 1 discards the old weights. */
  alpha: number;
  /** Noise scale β ∈ [0, 1]: 0 is a pure shrink (the WMDP "basic" setting α=0.25, β=0). */
  beta: number;
  /** Noise seed, a non-negative safe integer (default 0). */
  seed?: number;
  /**
   * Distribution of N for matrices. 'xavier' (default, as the authors' code): U(±sqrt(6/(fan_in+fan_out))) with
   * fan_in = shape[1], fan_out = shape[0]. 'normal': N(0, std²) with the same std for every matrix.
   */
  dist?: NoiseDist;
  /** std of the 'normal' noise; default {@link NOISE_DEFAULT_STD} (only valid with dist 'normal'). */
  std?: number;
}

/**
 * Default std of `dist: 'normal'`: 0.02, Hugging Face's initializer_range, which is how the authors' models were
 * initialised (undo.md §1: "HF default init: Linear/Embedding ~ N(0, 0.02)") and Model.create's default. So
 * α=1, β=1 with 'normal' gives an HF-style init, and with 'xavier' a Xavier init (undo.md §4).
 */
export const NOISE_DEFAULT_STD = 0.02;

/**
 * The Philox stream of a tensor's noise. It is a function of the name only. The prefix keeps the noise
 * independent of Model.create's initialisation, which uses the bare tensor name as its stream (native/cpu/model.cc):
 * without it, noising a Xavier-initialised model with the seed it was created with would "add" its own initial
 * weights back instead of fresh noise.
 */
export function noiseStream(tensorName: string): string {
  return `undo.noise/${tensorName}`;
}

/** (fan_in, fan_out) as torch.nn.init computes them: shape [out, in, ...receptive field]. */
export function fans(shape: readonly number[]): { fanIn: number; fanOut: number } {
  if (shape.length < 2) throw new Err(`fan_in/fan_out need a tensor of at least 2 dimensions, got shape [${shape}]`);
  let receptive = 1;
  for (let i = 2; i < shape.length; i++) receptive *= shape[i];
  return { fanIn: shape[1] * receptive, fanOut: shape[0] * receptive };
}

/** The Xavier (Glorot) uniform bound sqrt(6/(fan_in+fan_out)), computed as Model.init's 'xavier' scheme does. */
export function xavierBound(shape: readonly number[]): number {
  const { fanIn, fanOut } = fans(shape);
  return Math.sqrt(6 / (fanIn + fanOut));
}

/** Matrices get noise; everything else (1-D: RMSNorm gains; these models have no biases) is only shrunk. */
export function isMatrix(t: NativeTensorInfo): boolean {
  return t.shape.length >= 2;
}

function checkUnit(name: string, v: unknown): number {
  if (typeof v !== 'number' || !(v >= 0 && v <= 1)) {
    throw new Err(`${name} must be a number in [0, 1], got ${typeof v === 'number' ? v : JSON.stringify(v)}`);
  }
  return v;
}

function checkStd(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !(v > 0)) {
    throw new Err(`${what} must be a finite number > 0, got ${typeof v === 'number' ? v : JSON.stringify(v)}`);
  }
  return v;
}

/**
 * UNDO's noise step, in place: for every tensor θ of the model,
 *
 *   θ ← (1−α)·θ + α·β·N
 *
 * - 2-D tensors (the embedding — which is also the head when tied — every attention/MLP projection, and an untied
 *   lm_head): N is fresh noise of the same shape, Xavier-uniform by default (undo.md §4: "2-D weights (every Linear
 *   and the tied embedding): N = a fresh Xavier-uniform sample of the same shape, U(±sqrt(6/(fan_in+fan_out)))").
 * - 1-D tensors (RMSNorm gains): N = 0, so θ ← (1−α)·θ (undo.md §4: "1-D weights (all RMSNorm gains; Gemma has no
 *   biases): N = 0"). The shrink applies to the STORED parameter, exactly as the authors' code applies it to the
 *   Hugging Face parameter; our tensors are the HF tensors one-to-one. For Gemma-2 the stored w is used as (1+w), so
 *   the norm scale moves towards 1, i.e. towards Gemma's init w = 0 (undo.md §4: "Norm gains simply shrink toward 0,
 *   which for Gemma means the norm scale moves toward 1"). For Llama the gain is w itself, so it shrinks towards 0
 *   (α = 1 zeroes it): that is what the authors' formula does to a Llama checkpoint; the paper only uses Gemma-2.
 * - Every tensor is treated, frozen or not (the authors noise a fresh copy whose parameters are all trainable;
 *   frozen flags are not saved with a model directory anyway).
 *
 * Arithmetic: with the float32 coefficients a = fround(1−α) and b = fround(α·β), each element becomes
 * fround(a·θ + b·N) evaluated in double (both products are exact in double), i.e. one rounding of the double sum.
 * α = 0 returns without touching the model (bit-identical, signed zeros included).
 *
 * The noise of a tensor depends only on (seed, tensor name, element index) — see {@link noiseStream} — and on the
 * tensor's shape through the Xavier bound. The work buffer holds the largest matrix (fillRandom indexes elements
 * from the start of the buffer it fills, so a tensor's noise is drawn in one call).
 */
export async function noiseModel(model: Model, opts: NoiseOptions): Promise<void> {
  for (const op of noisePlan(model, opts)) await native.noiseBlend(...op);
}

/** {@link noiseModel} on the calling thread (blocks the event loop for the whole model): the same bits. */
export function noiseModelSync(model: Model, opts: NoiseOptions): void {
  for (const op of noisePlan(model, opts)) native.noiseBlendSync(...op);
}

type NoiseOp = Parameters<typeof native.noiseBlendSync>;

/** The options checked, then one native.noiseBlend call per tensor (none when α = 0). */
function noisePlan(model: Model, opts: NoiseOptions): NoiseOp[] {
  const alpha = checkUnit('alpha', opts.alpha);
  const beta = checkUnit('beta', opts.beta);
  const seed = opts.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0) {
    throw new Err(`seed must be a non-negative integer, got ${typeof seed === 'number' ? seed : JSON.stringify(seed)}`);
  }
  const dist = opts.dist ?? 'xavier';
  if (dist !== 'xavier' && dist !== 'normal') {
    throw new Err(`dist must be "xavier" or "normal", got ${JSON.stringify(dist)}`);
  }
  if (opts.std !== undefined && dist !== 'normal') {
    throw new Err(`std applies only to dist "normal" (got std ${opts.std} with dist "${dist}")`,
      'the Xavier bound is fixed by each matrix\'s shape; drop std or use dist "normal"');
  }
  const std = dist === 'normal' ? checkStd(opts.std ?? NOISE_DEFAULT_STD, 'std') : 0;
  if (alpha === 0) return [];

  const keep = Math.fround(1 - alpha);
  const scale = Math.fround(alpha * beta);
  const withNoise = scale !== 0;
  return model.tensors.map((t): NoiseOp => {
    const w = model.tensor(t.name);
    if (!isMatrix(t) || !withNoise) return [w, keep, 0, 'none', seed, noiseStream(t.name), 0, 0];
    if (dist === 'xavier') {
      const a = xavierBound(t.shape);
      return [w, keep, scale, 'uniform', seed, noiseStream(t.name), -a, a];
    }
    return [w, keep, scale, 'normal', seed, noiseStream(t.name), 0, std];
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Distribution-constrained projection

export type TargetDistribution = 'normal' | 'uniform' | Float32Array;

export interface ProjectOptions {
  /** Step η ∈ [0, 1]: 0 is a no-op, 1 replaces each weight by the target quantile of its rank. */
  eta: number;
  /**
   * 'normal': N(0, std²). 'uniform': U(±std·√3) (the uniform distribution with that std). A Float32Array: sorted
   * (non-decreasing, finite) samples of a reference distribution, whose empirical quantile function is
   * interpolated linearly (sample k sits at quantile (k+0.5)/m; flat beyond the first and last sample).
   */
  target: TargetDistribution;
  /**
   * std of a 'normal' or 'uniform' target. Default: each matrix's Xavier std sqrt(2/(fan_in+fan_out)), so the
   * default 'uniform' target is exactly the Xavier-uniform distribution U(±sqrt(6/(fan_in+fan_out))) that
   * noiseModel draws, and the default 'normal' one is Xavier-normal. Not valid with a sample target.
   */
  std?: number;
  /** Which weight matrices (2-D tensors) to project, by name; default all. Vectors are never projected. */
  match?: (name: string) => boolean;
}

// Wichura's algorithm AS 241 (PPND16, Applied Statistics 37(3), 1988): rational approximations of the inverse
// normal CDF with relative error about 1e-16 over the whole double range (checked against mpmath to 6e-16).
const AS241_A = [3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3, 1.3731693765509461125e4,
  4.5921953931549871457e4, 6.7265770927008700853e4, 3.3430575583588128105e4, 2.5090809287301226727e3];
const AS241_B = [1, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
  2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4, 5.2264952788528545610e3];
const AS241_C = [1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
  3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1, 2.27238449892691845833e-2,
  7.74545014278341407640e-4];
const AS241_D = [1, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
  1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4, 1.05075007164441684324e-9];
const AS241_E = [6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
  2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3, 2.71155556874348757815e-5,
  2.01033439929228813265e-7];
const AS241_F = [1, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
  7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7, 2.04426310338993978564e-15];

function horner(c: readonly number[], x: number): number {
  let s = 0;
  for (let i = c.length - 1; i >= 0; i--) s = s * x + c[i];
  return s;
}

/**
 * Φ⁻¹(p), the standard normal quantile function (Wichura's AS 241). ±Infinity at p = 1 / 0, NaN outside [0, 1].
 * Odd about p = 0.5 as long as 1−p is exact.
 */
export function invNormalCdf(p: number): number {
  if (!(p >= 0 && p <= 1)) return NaN;
  const q = p - 0.5;
  if (Math.abs(q) <= 0.425) {
    const r = 0.180625 - q * q;
    return (q * horner(AS241_A, r)) / horner(AS241_B, r);
  }
  const tail = q < 0 ? p : 1 - p;
  if (tail === 0) return q < 0 ? -Infinity : Infinity;
  let r = Math.sqrt(-Math.log(tail));
  let x: number;
  if (r <= 5) {
    r -= 1.6;
    x = horner(AS241_C, r) / horner(AS241_D, r);
  } else {
    r -= 5;
    x = horner(AS241_E, r) / horner(AS241_F, r);
  }
  return q < 0 ? -x : x;
}

/**
 * The target value for each rank 0..n−1: the target distribution's quantile at (rank+0.5)/n. The 'normal' and
 * 'uniform' grids are exactly antisymmetric (value(r) = −value(n−1−r)), so their mean is 0 up to rounding;
 * the result is non-decreasing.
 */
export function targetQuantiles(n: number, target: 'normal' | 'uniform' | Float32Array, std = 1): Float64Array {
  const out = new Float64Array(n);
  for (const _ of quantileSlices(out, target, std)) { /* runs to the end */ }
  return out;
}

/** targetQuantiles into `out` (its length is n), yielding after each slice of about SLICE elements. */
function* quantileSlices(out: Float64Array, target: 'normal' | 'uniform' | Float32Array, std = 1): Generator<undefined, void, void> {
  const n = out.length;
  if (target === 'normal') {
    // evaluate the lower half, where (r+0.5)/n has no cancellation, and mirror it
    const half = n >> 1;
    for (let r0 = 0; r0 < half; r0 += SLICE) {
      for (let r = r0, end = Math.min(half, r0 + SLICE); r < end; r++) {
        const v = std * invNormalCdf((r + 0.5) / n);
        out[r] = v;
        out[n - 1 - r] = -v;
      }
      yield;
    }
  } else if (target === 'uniform') {
    yield* uniformSlices(out, std * Math.sqrt(3));
  } else {
    const m = target.length;
    for (let r0 = 0; r0 < n; r0 += SLICE) {
      for (let r = r0, end = Math.min(n, r0 + SLICE); r < end; r++) {
        const x = ((2 * r + 1) * m - n) / (2 * n); // position in the sample: (r+0.5)/n·m − 0.5
        if (x <= 0) out[r] = target[0];
        else if (x >= m - 1) out[r] = target[m - 1];
        else {
          const k = Math.floor(x);
          const f = x - k;
          out[r] = f === 0 ? target[k] : target[k] + f * (target[k + 1] - target[k]);
        }
      }
      yield;
    }
  }
  for (let r0 = 1; r0 < n; r0 += SLICE) {
    for (let r = r0, end = Math.min(n, r0 + SLICE); r < end; r++) if (out[r] < out[r - 1]) out[r] = out[r - 1];
    yield;
  }
}

/** The quantiles (r+0.5)/n of U(±bound): bound·(2r+1−n)/n, into `out`, in slices. */
function* uniformSlices(out: Float64Array, bound: number): Generator<undefined, void, void> {
  const n = out.length;
  for (let r0 = 0; r0 < n; r0 += SLICE) {
    for (let r = r0, end = Math.min(n, r0 + SLICE); r < end; r++) out[r] = (bound * (2 * r + 1 - n)) / n;
    yield;
  }
}

/**
 * The permutation that sorts `x` ascending, ties (equal bit patterns) kept in index order; −0 sorts before +0.
 * A stable LSD radix sort on order-preserving 32-bit keys: O(n), deterministic, no comparator calls.
 */
export function argsortF32(x: Float32Array): Uint32Array {
  const n = x.length;
  const bits = new Uint32Array(x.buffer, x.byteOffset, n);
  const keys = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const b = bits[i];
    keys[i] = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
  }
  let src = new Uint32Array(n);
  let dst = new Uint32Array(n);
  for (let i = 0; i < n; i++) src[i] = i;
  const count = new Uint32Array(2048);
  for (const [shift, width] of [[0, 11], [11, 11], [22, 10]] as const) {
    const mask = (1 << width) - 1;
    count.fill(0);
    for (let i = 0; i < n; i++) count[(keys[i] >>> shift) & mask]++;
    let sum = 0;
    for (let d = 0; d <= mask; d++) {
      const c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (let k = 0; k < n; k++) {
      const i = src[k];
      dst[count[(keys[i] >>> shift) & mask]++] = i;
    }
    [src, dst] = [dst, src];
  }
  return src;
}

/**
 * One distribution-constrained projection step, in place: for each selected weight matrix with n entries, the
 * entry of rank r (ascending; ties by index) moves to
 *
 *   w ← (1−η)·w + η·t_r,   t_r = the target distribution's quantile at (r+0.5)/n
 *
 * (evaluated in double, rounded once to float32). Since both w and t_r are non-decreasing in r, the rank order of
 * the weights is preserved for every η; η = 1 makes the matrix's empirical distribution exactly the target
 * quantiles (the L2-nearest matrix with that empirical distribution: the 1-D optimal-transport projection that
 * Zhong et al.'s DisCo-SGD steps along). η = 0 returns without touching the model.
 *
 * Throws an UndoError for η outside [0, 1], a bad target or std, a `match` that selects no matrix, or a selected
 * matrix holding NaN/Infinity (before any tensor is modified).
 */
export async function projectToDistribution(model: Model, opts: ProjectOptions): Promise<void> {
  const steps = projectionSteps(model, opts);
  for (let r = steps.next(); !r.done; r = steps.next(r.value ? await r.value : undefined)) {
    if (!r.value) await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** {@link projectToDistribution} on the calling thread (blocks the event loop): the same bits. */
export function projectToDistributionSync(model: Model, opts: ProjectOptions): void {
  const steps = projectionSteps(model, opts, true);
  for (let r = steps.next(); !r.done; r = steps.next()) { /* each step ran synchronously */ }
}

/** Elements of JavaScript work between two yields of projectionSteps (a few milliseconds). */
const SLICE = 1 << 17;

/**
 * The projection as a sequence of steps: it yields `undefined` after each slice of JavaScript work (a point where
 * the async form lets the event loop run) or the Promise of a pooled kernel, whose result the async form awaits.
 * With `sync`, kernels run on the calling thread and it yields only undefined. Both orders do the same arithmetic.
 */
function* projectionSteps(model: Model, opts: ProjectOptions, sync = false): Generator<Promise<void> | undefined, void, void> {
  const eta = checkUnit('eta', opts.eta);
  const target = opts.target;
  if (target instanceof Float32Array) {
    if (target.length === 0) throw new Err('target sample is empty');
    for (let k = 0; k < target.length; k++) {
      if (!Number.isFinite(target[k])) throw new Err(`target sample holds a non-finite value (${target[k]} at index ${k})`);
      if (k > 0 && target[k] < target[k - 1]) {
        throw new Err(`target sample must be sorted ascending, but element ${k} (${target[k]}) < element ${k - 1} (${target[k - 1]})`,
          'sort it first, e.g. sample.slice().sort()');
      }
    }
    if (opts.std !== undefined) throw new Err(`std applies only to a "normal" or "uniform" target (got std ${opts.std} with a sample target)`);
  } else if (target !== 'normal' && target !== 'uniform') {
    throw new Err(`target must be "normal", "uniform" or a sorted Float32Array sample, got ${JSON.stringify(target)}`);
  }
  const fixedStd = opts.std === undefined ? undefined : checkStd(opts.std, 'std');
  const match = opts.match ?? (() => true);
  const selected = model.tensors.filter((t) => isMatrix(t) && match(t.name));
  if (selected.length === 0) throw new Err('projectToDistribution: no weight matrix of the model matches');
  for (const t of selected) {
    const w = model.tensor(t.name);
    for (let i0 = 0; i0 < w.length; i0 += SLICE) {
      for (let i = i0, end = Math.min(w.length, i0 + SLICE); i < end; i++) {
        if (!Number.isFinite(w[i])) throw new Err(`tensor "${t.name}" holds a non-finite value (${w[i]} at index ${i})`);
      }
      yield;
    }
  }
  if (eta === 0) return;

  for (const t of selected) {
    const w = model.tensor(t.name);
    const n = w.length;
    const tq = new Float64Array(n);
    if (target instanceof Float32Array) yield* quantileSlices(tq, target);
    else if (fixedStd !== undefined) yield* quantileSlices(tq, target, fixedStd);
    else if (target === 'uniform') {
      // the Xavier-uniform bound itself (not std·√3), so that the grid matches xavierBound exactly
      yield* uniformSlices(tq, xavierBound(t.shape));
    } else {
      const { fanIn, fanOut } = fans(t.shape);
      yield* quantileSlices(tq, target, Math.sqrt(2 / (fanIn + fanOut)));
    }
    const order = new Uint32Array(n);
    if (sync) native.argsortF32Sync(w, order);
    else yield native.argsortF32(w, order);
    if (sync) native.rankBlendSync(w, order, tq, eta);
    else yield native.rankBlend(w, order, tq, eta);
  }
}
