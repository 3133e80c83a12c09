/**
 * Adaptor heads of multi-teacher feature distillation (RADIO / PHI-S): per teacher, a map from the student's
 * hidden width to the teacher's, trained with the student. `linear`: y = W·x + b; `mlp`: y = W₂·GELU(W₁·x + b₁) + b₂
 * (tanh GELU). Forward and backward through the native GEMM; AdamW through the native update; parameters in
 * PyTorch's layout (weight [out, in]) so they save as safetensors with nn.Linear's names.
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, errorClass } from '../core/errors';
import { AdamWHyper, native } from '../core/native';
import { Rng } from '../core/rng';
import { readSafetensors, serializeSafetensors } from '../formats/safetensors';
import type { ExtraParams } from '../train/train';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export type AdaptorKind = 'linear' | 'mlp';

interface Param {
  name: string;
  shape: number[];
  data: Float32Array;
  grad: Float32Array;
  m: Float32Array;
  v: Float32Array;
  decay: boolean;
}

function param(name: string, shape: number[], decay: boolean): Param {
  const n = shape.reduce((a, b) => a * b, 1);
  return { name, shape, data: new Float32Array(n), grad: new Float32Array(n), m: new Float32Array(n), v: new Float32Array(n), decay };
}

/** One adaptor head: inDim → outDim. Keeps the last forward's activations for backward. */
export class Adaptor {
  readonly kind: AdaptorKind;
  readonly inDim: number;
  readonly outDim: number;
  /** MLP hidden width (linear: 0) */
  readonly hidden: number;
  readonly params: Param[];
  private x: Float32Array | null = null;
  private h: Float32Array | null = null;
  private a: Float32Array | null = null;
  private rows = 0;

  /** nn.Linear's initialisation: U(−1/√in, 1/√in) for weights and biases, from the seed. */
  constructor(kind: AdaptorKind, inDim: number, outDim: number, opts: { hidden?: number; seed?: number; prefix?: string } = {}) {
    if (kind !== 'linear' && kind !== 'mlp') throw new Err(`unknown adaptor "${kind}"`, 'one of: linear, mlp');
    for (const [k, v] of [['input width', inDim], ['output width', outDim]] as const) if (!Number.isInteger(v) || v < 1) throw new Err(`adaptor ${k} must be a positive integer, got ${v}`);
    this.kind = kind;
    this.inDim = inDim;
    this.outDim = outDim;
    this.hidden = kind === 'mlp' ? opts.hidden ?? Math.max(inDim, outDim) : 0;
    if (kind === 'mlp' && (!Number.isInteger(this.hidden) || this.hidden < 1)) throw new Err(`adaptor hidden width must be a positive integer, got ${this.hidden}`);
    const p = opts.prefix ?? '';
    this.params = kind === 'linear'
      ? [param(`${p}weight`, [outDim, inDim], true), param(`${p}bias`, [outDim], false)]
      : [param(`${p}fc1.weight`, [this.hidden, inDim], true), param(`${p}fc1.bias`, [this.hidden], false),
        param(`${p}fc2.weight`, [outDim, this.hidden], true), param(`${p}fc2.bias`, [outDim], false)];
    const rng = new Rng(opts.seed ?? 0);
    for (const q of this.params) {
      const fanIn = q.shape.length === 2 ? q.shape[1] : q.name.includes('fc2') ? this.hidden : inDim;
      const bound = 1 / Math.sqrt(fanIn);
      for (let i = 0; i < q.data.length; i++) q.data[i] = (2 * rng.next() - 1) * bound;
    }
  }

  /** y = adaptor(x) for x [rows, inDim]; keeps x (not copied: do not change it before backward) and the MLP activations. */
  forward(x: Float32Array, rows: number): Float32Array {
    const { inDim: di, outDim: dt } = this;
    if (x.length < rows * di) throw new Err(`adaptor: ${rows} rows of width ${di} need ${rows * di} values, got ${x.length}`);
    this.x = x;
    this.rows = rows;
    const y = new Float32Array(rows * dt);
    if (this.kind === 'linear') {
      const [W, b] = this.params;
      native.gemmSync(false, true, rows, dt, di, 1, x, di, W.data, di, 0, y, dt);
      native.biasAddSync(rows, dt, b.data, y);
      return y;
    }
    const [W1, b1, W2, b2] = this.params;
    const H = this.hidden;
    const h = new Float32Array(rows * H), a = new Float32Array(rows * H);
    native.gemmSync(false, true, rows, H, di, 1, x, di, W1.data, di, 0, h, H);
    native.biasAddSync(rows, H, b1.data, h);
    native.actForwardSync('geglu', h, a);
    native.gemmSync(false, true, rows, dt, H, 1, a, H, W2.data, H, 0, y, dt);
    native.biasAddSync(rows, dt, b2.data, y);
    this.h = h;
    this.a = a;
    return y;
  }

  /** From dy [rows, outDim] of the last forward: accumulate the parameter gradients; returns dx [rows, inDim]. */
  backward(dy: Float32Array): Float32Array {
    const { inDim: di, outDim: dt, rows } = this;
    const x = this.x;
    if (!x) throw new Err('adaptor backward: no forward first');
    const dx = new Float32Array(rows * di);
    if (this.kind === 'linear') {
      const [W, b] = this.params;
      native.gemmSync(true, false, dt, di, rows, 1, dy, dt, x, di, 1, W.grad, di);
      native.biasGradSync(rows, dt, dy, b.grad);
      native.gemmSync(false, false, rows, di, dt, 1, dy, dt, W.data, di, 0, dx, di);
      return dx;
    }
    const [W1, b1, W2, b2] = this.params;
    const H = this.hidden;
    const da = new Float32Array(rows * H), dh = new Float32Array(rows * H);
    native.gemmSync(true, false, dt, H, rows, 1, dy, dt, this.a!, H, 1, W2.grad, H);
    native.biasGradSync(rows, dt, dy, b2.grad);
    native.gemmSync(false, false, rows, H, dt, 1, dy, dt, W2.data, H, 0, da, H);
    native.actBackwardSync('geglu', this.h!, da, dh);
    native.gemmSync(true, false, H, di, rows, 1, dh, H, x, di, 1, W1.grad, di);
    native.biasGradSync(rows, H, dh, b1.grad);
    native.gemmSync(false, false, rows, di, H, 1, dh, H, W1.data, di, 0, dx, di);
    return dx;
  }

  numParams(): number {
    return this.params.reduce((a, p) => a + p.data.length, 0);
  }
}

const ADAPTORS_FILE = 'adaptors.safetensors';

/**
 * The adaptor heads of a run as one parameter group for the training loop (ExtraParams): AdamW on each tensor
 * (weight decay on the matrices only), saved as adaptors.safetensors (weights, then adam_m./adam_v. copies and the
 * step in the metadata) in every checkpoint and at the end; head i's tensors are adaptor.<i>.weight/.bias (linear)
 * or adaptor.<i>.fc1.*, .fc2.* (mlp).
 */
export class AdaptorGroup implements ExtraParams {
  private step = 0;

  /** `files`: other files kept in the run directory through its checkpoints (name → bytes) */
  constructor(readonly adaptors: Adaptor[], private readonly files: Record<string, Buffer> = {}) {}

  private get params(): Param[] {
    return this.adaptors.flatMap((a) => a.params);
  }

  /** The parameters with their names in the file: adaptor.<i>.<name> (i 0-based, the teachers' order). */
  private named(): [string, Param][] {
    return this.adaptors.flatMap((a, i) => a.params.map((p) => [`adaptor.${i}.${p.name}`, p] as [string, Param]));
  }

  zeroGrad(): void {
    for (const p of this.params) p.grad.fill(0);
  }

  gradSumSquares(): number {
    let s = 0;
    for (const p of this.params) s += native.sumSquaresSync(p.grad);
    return s;
  }

  adamw(h: AdamWHyper, step: number): void {
    this.step = step;
    for (const p of this.params) native.adamwUpdateSync(p.data, p.grad, p.m, p.v, { ...h, weightDecay: p.decay ? h.weightDecay ?? 0 : 0, step });
  }

  checkpointFiles(): Record<string, Buffer> {
    const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const [name, p] of this.named()) {
      t[name] = { dtype: 'F32', shape: p.shape, data: p.data };
      t[`adam_m.${name}`] = { dtype: 'F32', shape: p.shape, data: p.m };
      t[`adam_v.${name}`] = { dtype: 'F32', shape: p.shape, data: p.v };
    }
    return { ...this.files, [ADAPTORS_FILE]: serializeSafetensors(t, { adam_step: String(this.step), adaptors: JSON.stringify(this.describe()) }) };
  }

  /** The heads' kinds and widths, as stored in the file's metadata. */
  describe(): { kind: AdaptorKind; in: number; out: number; hidden: number }[] {
    return this.adaptors.map((a) => ({ kind: a.kind, in: a.inDim, out: a.outDim, hidden: a.hidden }));
  }

  restore(dir: string): void {
    const file = path.join(dir, ADAPTORS_FILE);
    if (!fs.existsSync(file)) throw new Err(`${file}: missing (the run's adaptor heads)`, 'resume only a feature-distillation run, with the same --features');
    const st = readSafetensors(file);
    const stored = st.metadata.adaptors;
    if (stored !== JSON.stringify(this.describe())) throw new Err(`${file}: its adaptor heads (${stored}) differ from this run's (${JSON.stringify(this.describe())})`, 'resume with the same --features and --adaptor');
    for (const [name, p] of this.named()) {
      p.data.set(st.readTensorF32(name, p.shape));
      p.m.set(st.readTensorF32(`adam_m.${name}`, p.shape));
      p.v.set(st.readTensorF32(`adam_v.${name}`, p.shape));
    }
    this.step = Number(st.metadata.adam_step ?? 0);
  }
}
