/**
 * The compiled CPU addon (binding.gyp → build/Release/undo_native.node), loaded with node-gyp-build, and
 * the TypeScript types of what it exports. Everything here is thin: argument checks happen in the C++ glue
 * (native/napi/addon.cc), the work in native/cpu.
 */
import * as path from 'path';
import { UndoError, errorClass } from './errors';

/** Errors of this module: code ERR_NATIVE unless one names another. */
const Err = errorClass('ERR_NATIVE');

export interface AttnDims {
  B: number;
  Tq: number;
  Tk?: number;
  Hq: number;
  Hkv?: number;
  D: number;
  qOffset?: number;
  kvBstride?: number;
  window?: number;
  scale?: number;
  softcap?: number;
}

export interface AdamWHyper {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  gradScale?: number;
}

/** One RoPE's frequencies (native/cpu/rope.h). */
export interface NativeRope {
  theta: number;
  scaling: 'none' | 'linear' | 'dynamic' | 'llama3';
  factor?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositions?: number;
}

/** A decoder's sizes, shared by the native spec and lib/models/config.ts ModelConfig. */
export interface DecoderSizes {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
}

/**
 * The native decoder's switches (native/cpu/model.h ModelConfig); lib/models/config.ts `decoderSpec` derives
 * them from a ModelConfig and its architecture's row.
 */
export interface NativeDecoderSpec extends DecoderSizes {
  normEps: number;
  norm: 'rms' | 'layer';
  normUnitOffset: boolean;
  sandwichNorms: boolean;
  qkNorm: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  mlp: 'gated' | 'plain';
  activation: 'silu' | 'gelu_tanh';
  embedScale: number;
  learnedPositions: boolean;
  rope: NativeRope;
  ropeLocal?: NativeRope;
  tieWordEmbeddings: boolean;
  attnSoftcap: number;
  finalSoftcap: number;
  /** 0: head_dim^-1/2 */
  attnScale: number;
  slidingWindow: number;
  slidingLayers: boolean[];
}

export interface NativeTensorInfo {
  name: string;
  shape: number[];
  offset: number;
  numel: number;
  frozen: boolean;
}

export interface LossResult {
  /** Σ w·ce / normalizer */
  loss: number;
  /** Σ w over rows whose target is not ignored */
  counted: number;
}

export interface NativeModel {
  tensors(): NativeTensorInfo[];
  params(): Float32Array;
  grads(): Float32Array;
  adamM(): Float32Array;
  adamV(): Float32Array;
  adamStep(): number;
  setAdamStep(step: number): void;
  init(seed: number, scheme: 'normal' | 'xavier', std: number): void;
  setFrozen(tensor: number, frozen: boolean): void;
  /** matmul precision: bf16 operands with fp32 accumulation (true) or fp32 (false); master weights stay fp32 */
  setBf16(on: boolean): void;
  getBf16(): boolean;
  /** Rows per fused-head chunk for a forward of N rows: ≤ 256, ≤ max(2²³, min(2²⁶, P/8)) / V, balanced over the chunks */
  headChunkRows(N: number): number;
  setDecay(tensor: number, decay: boolean): void;
  forward(ids: Int32Array, B: number, T: number): Promise<void>;
  headLoss(targets: Int32Array, weights: Float32Array | null, ignoreIndex: number, normalizer: number,
    backward: boolean, rowLoss: Float32Array | null): Promise<LossResult>;
  backward(useHead: boolean, hiddenGrads: (Float32Array | null)[] | null): Promise<void>;
  trainStep(ids: Int32Array, targets: Int32Array, B: number, T: number, weights: Float32Array | null,
    normalizer: number, ignoreIndex: number): Promise<LossResult>;
  /** Logits of rows of the last forward; `out` (reused across calls) receives them instead of a new array. */
  logits(rows: Int32Array | null, out?: Float32Array): Promise<Float32Array>;
  /** d(loss)/d(capped logits) [rows, V] of the last forward → head gradient + d(final hidden) for backward(true). */
  headGrad(dlogits: Float32Array): Promise<void>;
  /**
   * headGrad for the rows [row0, row0 + n) of the last forward only (dlogits [n, V]): the head gradient
   * accumulates, d(final hidden) of those rows is stored. Give every row (in chunks) before backward(true).
   */
  headGradRows(row0: number, dlogits: Float32Array): Promise<void>;
  /**
   * Fused distillation head: a loss of lib/train/losses.ts between this model's and the teacher's logits for every
   * row of both models' last forwards (same ids), in row chunks; the gradient goes through the LM head. Instead of
   * a teacher model, a top-k teacher for the same rows (topkIds/topkLogprobs [rows·k], k, tail) may be given.
   */
  headKd(name: string, teacher: NativeModel | null, opts: {
    temperature?: number; beta?: number; alpha?: number; t?: number; lambda?: number; dkdAlpha?: number; dkdBeta?: number;
    t2Scale?: boolean; scale?: number; targets?: Int32Array; ignoreIndex?: number;
    topkIds?: Int32Array; topkLogprobs?: Float32Array; k?: number; tail?: 'renorm' | 'bucket';
  }): Promise<LossResult>;
  hidden(layer: number): Float32Array;
  /** zero the gradients (on the pool, after the work queued on this model); zeroGradSync blocks */
  zeroGrad(): Promise<void>;
  zeroGradSync(): void;
  /** the global L2 norm of the gradients (on the pool); gradNormSync blocks */
  gradNorm(): Promise<number>;
  gradNormSync(): number;
  adamw(h: AdamWHyper): Promise<void>;
  cacheBegin(B: number, capacity: number): void;
  cacheStep(ids: Int32Array, T: number): Promise<Float32Array>;
}

/** Arguments of native.kdLoss (field names as in native/napi/addon.cc; lengths are checked exactly). */
export interface NativeKdOptions {
  rows: number;
  vocab: number;
  validVocab?: number;
  student: Float32Array;
  teacher?: Float32Array | null;
  topkIds?: Int32Array | null;
  topkLogprobs?: Float32Array | null;
  k?: number;
  tail?: 'renorm' | 'bucket';
  studentBase?: Float32Array | null;
  teacherBase?: Float32Array | null;
  targets?: Int32Array | null;
  ignoreIndex?: number;
  mask?: Uint8Array | null;
  temperature?: number;
  beta?: number;
  alpha?: number;
  t?: number;
  lambda?: number;
  dkdAlpha?: number;
  dkdBeta?: number;
  t2Scale?: boolean;
  reduction?: 'mean' | 'sum';
  gradScale?: number;
  perRow: Float32Array;
  grad?: Float32Array | null;
}

/** The addon's functions that are not kernels: ISA and thread control, and the model class. */
export interface NativeCore {
  supportedIsas(): string[];
  getIsa(): string;
  bestIsa(): string;
  setIsa(name: string): void;
  setThreads(n: number): void;
  getThreads(): number;
  /** whether gemmBf16 (and the models' bf16 compute) runs the AVX512-BF16 kernel now (cpuid and the active ISA) */
  bf16Native(): boolean;
  /** RoPE inverse frequencies [D/2] with HF's rope scalings, for a sequence of seqLen positions */
  ropeInvFreq(D: number, seqLen: number, rope: NativeRope): Float64Array;
  NativeModel: new (config: NativeDecoderSpec) => NativeModel;
}

/**
 * The kernels, as their blocking forms: NativeBinding has each twice, `nameSync` (these signatures, on the calling
 * thread) and `name` (the same work on the libuv pool, returning a Promise of the same result, so the event loop
 * stays free). The typed arrays are not copied: the caller must not change (or transfer) them until the Promise
 * settles.
 */
export interface NativeKernels {
  gemm(ta: boolean, tb: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number,
    B: Float32Array, ldb: number, beta: number, C: Float32Array, ldc: number): void;
  /** C = bf16(alpha·op(A))·bf16(op(B)) + beta·C with fp32 accumulation (AVX512-BF16, else emulated; ≤ 4 rows: fp32) */
  gemmBf16(ta: boolean, tb: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number,
    B: Float32Array, ldb: number, beta: number, C: Float32Array, ldc: number): void;
  /** gemmBf16 with op(B) packed once first (undo::Bf16Packed, the bf16 LM head's path): the same result, bit for bit */
  gemmBf16Packed(ta: boolean, tb: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number,
    B: Float32Array, ldb: number, beta: number, C: Float32Array, ldc: number): void;
  attentionForward(d: AttnDims, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array,
    lse: Float32Array | null): void;
  attentionBackward(d: AttnDims, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array,
    dout: Float32Array, lse: Float32Array, dq: Float32Array, dk: Float32Array, dv: Float32Array): void;
  rmsnormForward(rows: number, dim: number, x: Float32Array, w: Float32Array, eps: number, unitOffset: boolean,
    y: Float32Array, rstd: Float32Array | null): void;
  rmsnormBackward(rows: number, dim: number, x: Float32Array, w: Float32Array, rstd: Float32Array,
    unitOffset: boolean, dy: Float32Array, dx: Float32Array, accumulate: boolean, dw: Float32Array | null): void;
  layernormForward(rows: number, dim: number, x: Float32Array, w: Float32Array, b: Float32Array | null, eps: number,
    y: Float32Array, mean: Float32Array | null, rstd: Float32Array | null): void;
  layernormBackward(rows: number, dim: number, x: Float32Array, w: Float32Array, mean: Float32Array, rstd: Float32Array,
    dy: Float32Array, dx: Float32Array, accumulate: boolean, dw: Float32Array | null, db: Float32Array | null): void;
  /** y[r] += b for every row; db += column sums of dy */
  biasAdd(rows: number, n: number, b: Float32Array, y: Float32Array): void;
  biasGrad(rows: number, n: number, dy: Float32Array, db: Float32Array): void;
  ropeApply(B: number, T: number, H: number, D: number, x: Float32Array, theta: number, posOffset: number,
    inverse: boolean): void;
  gluForward(kind: 'swiglu' | 'geglu', gate: Float32Array, up: Float32Array, out: Float32Array): void;
  gluBackward(kind: 'swiglu' | 'geglu', gate: Float32Array, up: Float32Array, dout: Float32Array,
    dgate: Float32Array, dup: Float32Array): void;
  /** the plain MLP activation of a GLU kind: SiLU (swiglu) or tanh-GELU (geglu) */
  actForward(kind: 'swiglu' | 'geglu', x: Float32Array, out: Float32Array): void;
  actBackward(kind: 'swiglu' | 'geglu', x: Float32Array, dout: Float32Array, dx: Float32Array): void;
  embeddingForward(rows: number, dim: number, ids: Int32Array, table: Float32Array, scale: number,
    out: Float32Array): void;
  embeddingBackward(rows: number, dim: number, ids: Int32Array, dout: Float32Array, scale: number,
    dtable: Float32Array): void;
  crossEntropy(rows: number, vocab: number, logits: Float32Array, targets: Int32Array, ignoreIndex: number,
    softcap: number, weights: Float32Array | null, loss: Float32Array, dlogits: Float32Array | null): void;
  /** Distillation/unlearning losses (native/cpu/kd_losses.h); use lib/train/losses.ts `loss.compute`. */
  kdLoss(name: string, opts: NativeKdOptions): { loss: number; count: number };
  adamwUpdate(param: Float32Array, grad: Float32Array, m: Float32Array, v: Float32Array,
    h: AdamWHyper & { step: number }): void;
  sumSquares(x: Float32Array): number;
  fillRandom(out: Float32Array, seed: number, stream: string, kind: 'normal' | 'uniform', a: number, b: number): void;
  /**
   * UNDO's noise on one tensor in place: w ← keep·w + scale·N evaluated in double (native/cpu/noise.h), N drawn as
   * fillRandom(out, seed, stream, kind, a, b) would draw it over the whole tensor; kind 'none': w ← keep·w.
   */
  noiseBlend(w: Float32Array, keep: number, scale: number, kind: 'none' | 'normal' | 'uniform', seed: number, stream: string,
    a: number, b: number): void;
  /** The stable ascending order of x (ties by index, −0 before +0) into `order` [x.length] (radix sort). */
  argsortF32(x: Float32Array, order: Uint32Array): void;
  /** w[order[r]] ← (1−eta)·w[order[r]] + eta·tq[r] in double, for every rank r (the projection's step). */
  rankBlend(w: Float32Array, order: Uint32Array, tq: Float64Array, eta: number): void;

}

/** The names of NativeKernels, in the order the addon registers them. */
export const KERNEL_NAMES = ['gemm', 'gemmBf16', 'gemmBf16Packed', 'attentionForward', 'attentionBackward', 'rmsnormForward',
  'rmsnormBackward', 'layernormForward', 'layernormBackward', 'biasAdd', 'biasGrad', 'actForward', 'actBackward', 'ropeApply',
  'gluForward', 'gluBackward', 'embeddingForward', 'embeddingBackward', 'crossEntropy', 'kdLoss', 'adamwUpdate', 'sumSquares',
  'fillRandom', 'noiseBlend', 'argsortF32', 'rankBlend'] as const satisfies readonly (keyof NativeKernels)[];

/** A kernel's pooled form: the same arguments, its result as a Promise. */
export type Pooled<F> = F extends (...a: infer A) => infer R ? (...a: A) => Promise<R> : never;

/**
 * The compiled CPU addon's API: the core functions above, each kernel as `nameSync` (blocking) and `name` (on the
 * libuv pool, a Promise) — Node's own naming (fs.readFile / fs.readFileSync).
 */
export type NativeBinding = NativeCore
  & { [K in keyof NativeKernels as `${K}Sync`]: NativeKernels[K] }
  & { [K in keyof NativeKernels]: Pooled<NativeKernels[K]> };

/** What the .node file exports: each kernel as `name` (blocking) and `nameAsync` (pooled). */
type NativeAddon = NativeCore & NativeKernels & { [K in keyof NativeKernels as `${K}Async`]: Pooled<NativeKernels[K]> };

function load(): NativeAddon {
  const root = path.join(__dirname, '..', '..', '..');
  // UNDO_NATIVE_ADDON=path/undo_native.node: another build of the addon (scripts/asan.sh's sanitizer build)
  const other = process.env.UNDO_NATIVE_ADDON;
  if (other) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      return require(path.resolve(other)) as NativeAddon;
    } catch (e) {
      throw new Err(`could not load the native addon UNDO_NATIVE_ADDON=${other}: ${(e as Error).message}`);
    }
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require('node-gyp-build')(root) as NativeAddon;
  } catch (e) {
    throw new Err(`could not load the native addon from ${root}/build: ${(e as Error).message}`,
      'run `npm install` (or `npm run build:native`) to compile it');
  }
}

/**
 * The addon's own exceptions (a TypeError for a typed array of the wrong kind or length, an Error from a kernel's
 * checks) as UndoErrors: ERR_SHAPE when sizes disagree, ERR_OUT_OF_MEMORY for a failed allocation, ERR_ARGUMENT
 * otherwise; the original stays as `cause`.
 */
export function nativeError(e: unknown): unknown {
  if (e instanceof UndoError || !(e instanceof Error)) return e;
  const msg = e.message;
  const code = /bad_alloc|out of memory|cannot allocate/i.test(msg) ? 'ERR_OUT_OF_MEMORY'
    : /elements, needs|holds? \d+ floats|must hold|rows ?×|bad dims|shape|size|length|too (small|short)|mismatch|exceeds|out of range/i.test(msg) ? 'ERR_SHAPE' : 'ERR_ARGUMENT';
  return new UndoError(msg, { code, cause: e });
}

/**
 * `fn` raising UndoErrors (`toUndo`, default nativeError); with `rejects` (the pooled forms) a bad argument rejects
 * instead of throwing. lib/core/cuda.ts guards the CUDA addon's functions with it too.
 */
export function guarded<F extends (...a: never[]) => unknown>(fn: F, rejects = false, toUndo: (e: unknown) => unknown = nativeError): F {
  return function (this: unknown, ...args: never[]) {
    let r: unknown;
    try {
      r = fn.apply(this, args);
    } catch (e) {
      if (rejects) return Promise.reject(toUndo(e));
      throw toUndo(e);
    }
    return r instanceof Promise ? r.catch((e: unknown) => { throw toUndo(e); }) : r;
  } as F;
}

/**
 * The binding with every function and NativeModel method raising UndoErrors (nativeError). NativeModel is
 * subclassed, not proxied, so its instances stay real addon objects that other addon calls can unwrap.
 */
function withUndoErrors(b: NativeAddon): NativeBinding {
  const out: Record<string, unknown> = {};
  const kernels = new Set<string>(KERNEL_NAMES);
  for (const [k, v] of Object.entries(b)) {
    if (typeof v !== 'function' || k === 'NativeModel') out[k] = v;
    else if (kernels.has(k)) out[`${k}Sync`] = guarded(v as (...a: never[]) => unknown);
    else if (k.endsWith('Async') && kernels.has(k.slice(0, -5))) out[k.slice(0, -5)] = guarded(v as (...a: never[]) => unknown, true);
    else out[k] = guarded(v as (...a: never[]) => unknown);
  }
  for (const k of KERNEL_NAMES) {
    if (typeof out[k] !== 'function' || typeof out[`${k}Sync`] !== 'function') {
      throw new Err(`the native addon lacks ${k} / ${k}Async: it is older than this package`, 'rebuild it: npm rebuild undo-native (or npm run build:native)');
    }
  }
  const Base = b.NativeModel as unknown as new (...a: unknown[]) => object;
  class GuardedModel extends Base {
    constructor(...args: unknown[]) {
      try {
        super(...args);
      } catch (e) {
        throw nativeError(e);
      }
    }
  }
  for (const name of Object.getOwnPropertyNames(Base.prototype)) {
    const d = Object.getOwnPropertyDescriptor(Base.prototype, name);
    if (name === 'constructor' || !d || typeof d.value !== 'function') continue;
    Object.defineProperty(GuardedModel.prototype, name, { value: guarded(d.value), writable: true, configurable: true });
  }
  out.NativeModel = GuardedModel;
  return out as unknown as NativeBinding;
}

export const native: NativeBinding = withUndoErrors(load());

/** Run `fn` on `n` kernel threads, restoring the previous count afterwards. */
export function withThreads<T>(n: number, fn: () => T): T {
  const prev = native.getThreads();
  native.setThreads(n);
  try {
    return fn();
  } finally {
    native.setThreads(prev);
  }
}

/** Run `fn` with the given ISA forced, restoring the previous one afterwards. */
export function withIsa<T>(isa: string, fn: () => T): T {
  const prev = native.getIsa();
  native.setIsa(isa);
  try {
    return fn();
  } finally {
    native.setIsa(prev);
  }
}
