/**
 * Teacher-feature standardization for multi-teacher feature distillation (PHI-S, Ranzinger et al. 2024):
 * streaming float64 statistics (mean, covariance) of a teacher's features, stored beside the run and reused, and
 * the invertible transforms y = A·(x − μ) the paper compares:
 *   - none:       y = x;
 *   - perdim:     y_j = (x_j − μ_j) / σ_j (every dimension its own scale);
 *   - global:     y = (x − μ) / σ̄, σ̄² = tr(Σ)/d (one scale; the dimensions keep their unequal variances);
 *   - pca-whiten: y = Λ^(−1/2)·Uᵀ·(x − μ) (Σ = U·Λ·Uᵀ; decorrelated, unit variance; eigenvalues floored at
 *                 1e-6·mean(λ), as whitening a low-rank distribution blows up its null directions);
 *   - phi-s:      y = (1/α)·H·Uᵀ·(x − μ), H the normalized Hadamard matrix of order d and α² = mean(λ) = tr(Σ)/d.
 *                 The rotation Uᵀ makes the covariance diagonal, and H spreads every eigenvalue evenly over all
 *                 dimensions (H·Λ·Hᵀ has diagonal mean(λ) because every H_ij² = 1/d), so every output dimension has
 *                 variance exactly 1 with a single scale α: isotropic, and non-distorting (A = rotation / α).
 * The covariance is the unbiased sample covariance (divisor N − 1), as torch.cov.
 */
import * as fs from 'fs';
import * as path from 'path';
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import { UndoError, errorClass } from '../core/errors';
import { native } from '../core/native';
import { readJson, sha256File, writeFileAtomic, writeJsonAtomic } from '../core/fsutil';
import { normalizedHadamard } from './hadamard';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export const STANDARDIZATIONS = ['none', 'perdim', 'global', 'pca-whiten', 'phi-s'] as const;
export type Standardization = (typeof STANDARDIZATIONS)[number];

/**
 * Streaming mean and covariance of d-dimensional features in float64: each batch's own mean and centred
 * cross-products (two passes over the batch), merged into the running ones with Chan et al.'s update, so the
 * result equals a two-pass float64 computation over all rows up to rounding.
 */
export class FeatureStats {
  readonly dim: number;
  count = 0;
  readonly mean: Float64Array;
  /** Σ (x − mean)(x − mean)ᵀ over the rows seen, full d × d (kept symmetric) */
  readonly m2: Float64Array;

  constructor(dim: number) {
    if (!Number.isInteger(dim) || dim < 1) throw new Err(`feature statistics: dimension must be a positive integer, got ${dim}`);
    this.dim = dim;
    this.mean = new Float64Array(dim);
    this.m2 = new Float64Array(dim * dim);
  }

  /** Add the rows of x ([rows, dim] row-major) whose mask entry is non-zero (mask null: all rows). */
  add(x: Float32Array | Float64Array, rows: number, mask: Uint8Array | null = null): void {
    const d = this.dim;
    if (x.length < rows * d) throw new Err(`feature statistics: ${rows} rows of ${d} need ${rows * d} values, got ${x.length}`);
    const sel: number[] = [];
    for (let r = 0; r < rows; r++) if (!mask || mask[r]) sel.push(r);
    const nb = sel.length;
    if (nb === 0) return;
    const mb = new Float64Array(d);
    for (const r of sel) for (let j = 0; j < d; j++) mb[j] += x[r * d + j];
    for (let j = 0; j < d; j++) mb[j] /= nb;
    // centred cross-products of the batch, upper triangle
    const cb = new Float64Array(d * d);
    const xc = new Float64Array(d);
    for (const r of sel) {
      for (let j = 0; j < d; j++) xc[j] = x[r * d + j] - mb[j];
      for (let i = 0; i < d; i++) {
        const xi = xc[i];
        if (xi === 0) continue;
        const row = i * d;
        for (let j = i; j < d; j++) cb[row + j] += xi * xc[j];
      }
    }
    const na = this.count, n = na + nb;
    const delta = new Float64Array(d);
    for (let j = 0; j < d; j++) delta[j] = mb[j] - this.mean[j];
    const w = (na * nb) / n;
    for (let i = 0; i < d; i++) {
      for (let j = i; j < d; j++) {
        const v = this.m2[i * d + j] + cb[i * d + j] + delta[i] * delta[j] * w;
        this.m2[i * d + j] = v;
        this.m2[j * d + i] = v;
      }
    }
    for (let j = 0; j < d; j++) this.mean[j] += (delta[j] * nb) / n;
    this.count = n;
  }

  /** The unbiased sample covariance (divisor N − 1), d × d row-major. */
  covariance(): Float64Array {
    if (this.count < 2) throw new Err(`feature statistics: a covariance needs at least 2 rows, got ${this.count}`);
    const c = new Float64Array(this.m2.length);
    for (let i = 0; i < c.length; i++) c[i] = this.m2[i] / (this.count - 1);
    return c;
  }

  /** Per-dimension sample variances. */
  variances(): Float64Array {
    const d = this.dim, c = this.covariance(), v = new Float64Array(d);
    for (let j = 0; j < d; j++) v[j] = c[j * d + j];
    return v;
  }
}

/** What a stored statistics file was computed from; a stored file is reused only when every field matches. */
export type StatsKey = Record<string, string | number>;

const STATS_FORMAT = 'undo-native feature statistics';

/** Write stats atomically as NAME.f64 (count, then mean [d], then M2 [d·d], float64 LE) and NAME.json (manifest). */
export function saveFeatureStats(dir: string, name: string, stats: FeatureStats, key: StatsKey): void {
  fs.mkdirSync(dir, { recursive: true });
  const d = stats.dim;
  const buf = Buffer.alloc(8 * (1 + d + d * d));
  buf.writeDoubleLE(stats.count, 0);
  for (let j = 0; j < d; j++) buf.writeDoubleLE(stats.mean[j], 8 * (1 + j));
  for (let i = 0; i < d * d; i++) buf.writeDoubleLE(stats.m2[i], 8 * (1 + d + i));
  const bin = path.join(dir, `${name}.f64`);
  writeFileAtomic(bin, buf);
  writeJsonAtomic(path.join(dir, `${name}.json`), {
    format: STATS_FORMAT, version: 1, dim: d, count: stats.count, layout: 'count, mean[dim], m2[dim*dim] (float64 LE)',
    covariance: 'm2 / (count - 1)', key, file: `${name}.f64`, sha256: sha256File(bin),
  });
}

/**
 * Stats saved by saveFeatureStats, or null when none are there or they were computed from something else (the
 * key differs). A damaged file (size, checksum, format) is an UndoError naming it.
 */
export function loadFeatureStats(dir: string, name: string, key: StatsKey): FeatureStats | null {
  const mf = path.join(dir, `${name}.json`);
  if (!fs.existsSync(mf)) return null;
  const m = readJson<{ format?: string; dim?: number; count?: number; key?: StatsKey; file?: string; sha256?: string }>(mf, 'feature statistics manifest');
  if (m.format !== STATS_FORMAT || !Number.isInteger(m.dim) || typeof m.file !== 'string') throw new Err(`${mf}: not a feature statistics manifest (fields format, dim, file)`);
  const same = m.key && Object.keys(key).length === Object.keys(m.key).length && Object.entries(key).every(([k, v]) => m.key![k] === v);
  if (!same) return null;
  const bin = path.join(dir, m.file);
  const d = m.dim!;
  if (!fs.existsSync(bin)) throw new Err(`${bin}: missing (named by ${mf})`);
  const size = fs.statSync(bin).size;
  if (size !== 8 * (1 + d + d * d)) throw new Err(`${bin}: ${size} bytes, expected ${8 * (1 + d + d * d)} for dimension ${d}`);
  if (sha256File(bin) !== m.sha256) throw new Err(`${bin}: checksum mismatch (the file is damaged)`, `delete ${mf} to recompute the statistics`);
  const buf = fs.readFileSync(bin);
  const s = new FeatureStats(d);
  s.count = buf.readDoubleLE(0);
  for (let j = 0; j < d; j++) s.mean[j] = buf.readDoubleLE(8 * (1 + j));
  for (let i = 0; i < d * d; i++) s.m2[i] = buf.readDoubleLE(8 * (1 + d + i));
  return s;
}

/** Eigen-decomposition of a symmetric matrix: eigenvalues descending, eigenvectors as the columns of U (row-major d × d), signs fixed (largest component positive). */
export function symmetricEigen(c: Float64Array, d: number): { values: Float64Array; vectors: Float64Array } {
  const rows: number[][] = [];
  for (let i = 0; i < d; i++) rows.push(Array.from(c.subarray(i * d, (i + 1) * d)));
  const evd = new EigenvalueDecomposition(new Matrix(rows), { assumeSymmetric: true });
  const lam = evd.realEigenvalues;
  const V = evd.eigenvectorMatrix;
  const order = lam.map((_, i) => i).sort((a, b) => lam[b] - lam[a] || a - b);
  const values = new Float64Array(d);
  const vectors = new Float64Array(d * d);
  order.forEach((src, k) => {
    values[k] = lam[src];
    let big = 0;
    for (let i = 0; i < d; i++) if (Math.abs(V.get(i, src)) > Math.abs(big)) big = V.get(i, src);
    const sign = big < 0 ? -1 : 1;
    for (let i = 0; i < d; i++) vectors[i * d + k] = sign * V.get(i, src);
  });
  return { values, vectors };
}

/**
 * An invertible standardization y = A·(x − μ) of one teacher's features. A is diagonal (scale, for none, perdim and
 * global) or full (matrix, d × d row-major, for pca-whiten and phi-s); apply and invert work on [rows, d] blocks.
 */
export class Standardizer {
  readonly kind: Standardization;
  readonly dim: number;
  readonly mean: Float32Array;
  /** diagonal A (none, perdim, global) */
  readonly scale: Float32Array | null;
  /** full A and A⁻¹ (pca-whiten, phi-s), row-major */
  readonly matrix: Float32Array | null;
  readonly inverse: Float32Array | null;
  /** PHI-S: α (the one scale); global: σ̄ */
  readonly alpha: number | null;

  private constructor(kind: Standardization, dim: number, mean: Float32Array, scale: Float32Array | null, matrix: Float32Array | null, inverse: Float32Array | null, alpha: number | null) {
    this.kind = kind;
    this.dim = dim;
    this.mean = mean;
    this.scale = scale;
    this.matrix = matrix;
    this.inverse = inverse;
    this.alpha = alpha;
  }

  /** The transform of `kind` fitted to the statistics. `what` names the features in errors (e.g. "teacher 2 layer 5"). */
  static fit(kind: Standardization, stats: FeatureStats, what = 'features'): Standardizer {
    if (!(STANDARDIZATIONS as readonly string[]).includes(kind)) throw new Err(`unknown standardization "${kind}"`, `one of: ${STANDARDIZATIONS.join(', ')}`);
    const d = stats.dim;
    if (kind === 'none') return new Standardizer(kind, d, new Float32Array(d), new Float32Array(d).fill(1), null, null, null);
    const mean = Float32Array.from(stats.mean);
    const c = stats.covariance();
    if (kind === 'perdim' || kind === 'global') {
      const v = stats.variances();
      const tr = v.reduce((a, b) => a + b, 0) / d;
      if (!(tr > 0)) throw new Err(`${what}: zero variance (every feature is constant over the data)`);
      const floor = 1e-12 * tr;
      const scale = kind === 'perdim' ? Float32Array.from(v, (x) => 1 / Math.sqrt(Math.max(x, floor))) : new Float32Array(d).fill(1 / Math.sqrt(tr));
      return new Standardizer(kind, d, mean, scale, null, null, kind === 'global' ? Math.sqrt(tr) : null);
    }
    // rotations: U from Σ = U Λ Uᵀ (the Hadamard matrix is checked first: it is the cheap failure)
    const H = kind === 'phi-s' ? normalizedHadamard(d, `PHI-S for ${what} (width ${d})`) : null;
    const { values, vectors: U } = symmetricEigen(c, d);
    const meanLam = values.reduce((a, b) => a + Math.max(b, 0), 0) / d;
    if (!(meanLam > 0)) throw new Err(`${what}: zero variance (every feature is constant over the data)`);
    const A = new Float64Array(d * d), Ai = new Float64Array(d * d);
    let alpha: number | null = null;
    if (kind === 'pca-whiten') {
      // A = Λ^(−1/2) Uᵀ, A⁻¹ = U Λ^(1/2)
      for (let k = 0; k < d; k++) {
        const lam = Math.max(values[k], 1e-6 * meanLam);
        const s = 1 / Math.sqrt(lam), si = Math.sqrt(lam);
        for (let j = 0; j < d; j++) {
          A[k * d + j] = s * U[j * d + k];
          Ai[j * d + k] = si * U[j * d + k];
        }
      }
    } else {
      // A = (1/α) H Uᵀ, A⁻¹ = α U Hᵀ
      alpha = Math.sqrt(meanLam);
      const HUt = new Float64Array(d * d);
      for (let i = 0; i < d; i++) {
        for (let k = 0; k < d; k++) {
          const h = H![i * d + k];
          if (h === 0) continue;
          for (let j = 0; j < d; j++) HUt[i * d + j] += h * U[j * d + k];
        }
      }
      for (let i = 0; i < d * d; i++) A[i] = HUt[i] / alpha;
      // (H Uᵀ)⁻¹ = U Hᵀ = (H Uᵀ)ᵀ
      for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) Ai[j * d + i] = HUt[i * d + j] * alpha;
    }
    return new Standardizer(kind, d, mean, null, Float32Array.from(A), Float32Array.from(Ai), alpha);
  }

  /** y = A·(x − μ) for [rows, d]; out may not alias x. */
  apply(x: Float32Array, rows: number, out: Float32Array = new Float32Array(rows * this.dim)): Float32Array {
    const d = this.dim;
    if (this.scale) {
      for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) out[r * d + j] = (x[r * d + j] - this.mean[j]) * this.scale[j];
      return out;
    }
    const xc = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) xc[r * d + j] = x[r * d + j] - this.mean[j];
    gemmRows(xc, rows, d, this.matrix!, out);
    return out;
  }

  /** x = A⁻¹·y + μ for [rows, d]. */
  invert(y: Float32Array, rows: number, out: Float32Array = new Float32Array(rows * this.dim)): Float32Array {
    const d = this.dim;
    if (this.scale) {
      for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) out[r * d + j] = y[r * d + j] / this.scale[j] + this.mean[j];
      return out;
    }
    gemmRows(y, rows, d, this.inverse!, out);
    for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) out[r * d + j] += this.mean[j];
    return out;
  }
}

/** out[r] = M·x[r] for rows of x ([rows, d]) and M [d, d] row-major: out = x·Mᵀ, through the native GEMM. */
function gemmRows(x: Float32Array, rows: number, d: number, M: Float32Array, out: Float32Array): void {
  native.gemmSync(false, true, rows, d, d, 1, x, d, M, d, 0, out, d);
}
