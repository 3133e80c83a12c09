/**
 * RepNoise (Rosati et al. 2024, "Representation noising"), the baseline the UNDO paper adds to MaxEnt
 * (undo.md §3): push the forget data's hidden representations toward Gaussian noise, so that what the model
 * knew about it is not merely hidden behind the head but gone from the features a relearning attack would reuse.
 *
 *   L = MaxEnt_forget + β · mean_ℓ MMD²(h_ℓ(forget), N(0, I)) − α · log(1 + CE_forget)  (+ the retain CE)
 *
 * MMD² is the biased (V-statistic) estimate with a sum of Gaussian kernels at 5 bandwidths 2× apart, the base
 * the mean pairwise squared distance of the two samples ÷ 4 (held constant in the gradient). Differences from
 * the reference code: h_ℓ is the residual stream after block ℓ (the engine exposes those, not the MLP outputs),
 * MMD is estimated on `rows` sampled positions per layer (the reference uses the whole batch), and H uses the
 * final logits only (the reference also decodes every hidden state through the final norm and head).
 */
import { Batch } from '../data/datasets';
import { Rng } from '../core/rng';
import { Model } from '../models/model';
import { rowCE } from '../train/objectives';

/** Bandwidth multipliers of the kernel sum: base · 2^k, k = 0 … 4. */
const BANDWIDTHS = [1, 2, 4, 8, 16];

/**
 * MMD² between samples x [m, d] and y [n, d] (row-major), with its gradient with respect to x.
 * K(a, b) = Σ_k exp(−‖a − b‖² / (base · 2^k)), base = mean pairwise squared distance over x ∪ y ÷ 4.
 */
export function mmdGaussian(x: Float32Array | Float64Array, y: Float32Array | Float64Array, m: number, n: number, d: number): { value: number; grad: Float64Array } {
  const all = (i: number) => (i < m ? { a: x, o: i * d } : { a: y, o: (i - m) * d });
  const N = m + n;
  const D = new Float64Array(N * N);
  let sum = 0;
  for (let i = 0; i < N; i++) {
    const p = all(i);
    for (let j = i + 1; j < N; j++) {
      const q = all(j);
      let s = 0;
      for (let k = 0; k < d; k++) {
        const t = p.a[p.o + k] - q.a[q.o + k];
        s += t * t;
      }
      D[i * N + j] = D[j * N + i] = s;
      sum += 2 * s;
    }
  }
  const base = Math.max(sum / (N * N) / 4, 1e-12);
  const bw = BANDWIDTHS.map((b) => b * base);
  const kern = (s: number) => bw.reduce((acc, w) => acc + Math.exp(-s / w), 0);
  // dK/ds for the squared distance s
  const dkern = (s: number) => bw.reduce((acc, w) => acc - Math.exp(-s / w) / w, 0);
  let kxx = 0, kyy = 0, kxy = 0;
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) kxx += i === j ? BANDWIDTHS.length : kern(D[i * N + j]);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) kyy += i === j ? BANDWIDTHS.length : kern(D[(m + i) * N + m + j]);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) kxy += kern(D[i * N + m + j]);
  const value = kxx / (m * m) + kyy / (n * n) - (2 * kxy) / (m * n);
  // ∂/∂x_i: (2/m²) Σ_j K'(s_ij)·2(x_i − x_j) − (2/(mn)) Σ_l K'(s_il)·2(x_i − y_l)
  const grad = new Float64Array(m * d);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < N; j++) {
      if (j === i) continue;
      const c = j < m ? (2 / (m * m)) * dkern(D[i * N + j]) * 2 : (-2 / (m * n)) * dkern(D[i * N + j]) * 2;
      const q = all(j);
      for (let k = 0; k < d; k++) grad[i * d + k] += c * (x[i * d + k] - q.a[q.o + k]);
    }
  }
  return { value, grad };
}

export interface RepNoiseParams {
  /** weight of −log(1 + CE_forget) */
  alpha: number;
  /** weight of the noise (MMD) term */
  beta: number;
  /** positions sampled per layer for the MMD estimate */
  rows: number;
}

export const REPNOISE_DEFAULTS: RepNoiseParams = { alpha: 1, beta: 1, rows: 128 };

/**
 * The RepNoise terms of one forget batch beyond MaxEnt: −α·log(1 + CE) (a cross-entropy ascent weighted
 * α / (1 + CE)) and β·mean_ℓ MMD²(h_ℓ, noise), their gradients accumulated into model.grads (× scale).
 * Returns the unscaled value of both terms.
 */
export async function repNoiseObjective(model: Model, b: Batch, p: RepNoiseParams, rng: Rng, scale: number): Promise<number> {
  const { B, T } = b;
  const rows = B * T;
  // −α·log(1 + CE): its gradient is −α/(1 + CE) · ∂CE
  const ce = await rowCE(model, b);
  let n = 0, total = 0;
  for (let i = 0; i < rows; i++) if (b.targets[i] !== -100) {
    n++;
    total += ce[i];
  }
  let loss = 0;
  if (n > 0 && p.alpha > 0) {
    const mean = total / n;
    loss -= p.alpha * Math.log1p(mean);
    const w = new Float32Array(rows).fill((-p.alpha / (1 + mean)) * scale);
    await model.native.headLoss(b.targets, w, -100, n, true, null);
    await model.native.backward(true, null);
  }
  if (p.beta > 0) {
    const L = model.config.numLayers, d = model.config.hiddenSize;
    await model.native.forward(b.inputs, B, T);
    const m = Math.min(p.rows, rows);
    const pick = rng.permutation(rows).subarray(0, m);
    const grads: (Float32Array | null)[] = [];
    let mmd = 0;
    for (let l = 0; l < L; l++) {
      const h = model.native.hidden(l);
      const x = new Float64Array(m * d), z = new Float64Array(m * d);
      for (let i = 0; i < m; i++) for (let k = 0; k < d; k++) x[i * d + k] = h[pick[i] * d + k];
      for (let i = 0; i < z.length; i++) z[i] = rng.normal();
      const r = mmdGaussian(x, z, m, m, d);
      mmd += r.value / L;
      const g = new Float32Array(rows * d);
      const c = (p.beta / L) * scale;
      for (let i = 0; i < m; i++) for (let k = 0; k < d; k++) g[pick[i] * d + k] = c * r.grad[i * d + k];
      grads.push(g);
    }
    await model.native.backward(false, grads);
    loss += p.beta * mmd;
  }
  return loss;
}
