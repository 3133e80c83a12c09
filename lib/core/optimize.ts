/**
 * Small deterministic numerical optimizers for the scaling-law planner and its calibration: a bracketing
 * 1-D minimizer (grid, then golden section), a box-constrained minimizer for a few variables (grid, then
 * golden-section coordinate descent) and Levenberg-Marquardt for nonlinear least squares, with a Huber
 * loss by iteratively reweighting (as the distillation-law paper fits in log space) and box bounds.
 */

/** +Infinity for NaN, so a minimizer never picks a point where the function is undefined */
const finite = (v: number) => (Number.isFinite(v) ? v : Infinity);
const GOLD = (Math.sqrt(5) - 1) / 2;

/** Golden-section search for a minimum of f on [a, b] (f unimodal there). */
export function goldenSection(f: (x: number) => number, a: number, b: number, tol = 1e-10): { x: number; f: number } {
  let c = b - GOLD * (b - a), d = a + GOLD * (b - a);
  let fc = finite(f(c)), fd = finite(f(d));
  for (let it = 0; it < 200 && Math.abs(b - a) > tol * (1 + Math.abs(a) + Math.abs(b)); it++) {
    if (fc <= fd) {
      b = d; d = c; fd = fc; c = b - GOLD * (b - a); fc = finite(f(c));
    } else {
      a = c; c = d; fc = fd; d = a + GOLD * (b - a); fd = finite(f(d));
    }
  }
  const x = fc <= fd ? c : d;
  return { x, f: Math.min(fc, fd) };
}

/**
 * Minimum of f on [lo, hi]: the best of `grid` evenly spaced points, refined by golden section between its
 * neighbours (finds the global minimum when the grid resolves the basins).
 */
export function minimize1D(f: (x: number) => number, lo: number, hi: number, opts: { grid?: number; tol?: number } = {}): { x: number; f: number } {
  const n = Math.max(3, opts.grid ?? 64);
  let bi = 0, bf = Infinity;
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = lo + (hi - lo) * i / (n - 1);
    xs.push(x);
    const v = finite(f(x));
    if (v < bf) { bf = v; bi = i; }
  }
  const r = goldenSection(f, xs[Math.max(0, bi - 1)], xs[Math.min(n - 1, bi + 1)], opts.tol);
  return r.f <= bf ? r : { x: xs[bi], f: bf };
}

/**
 * Minimum of f over the box lo ≤ x ≤ hi (a few dimensions): a full grid of `grid` points per dimension, then
 * sweeps of golden-section line searches along each coordinate within a window that shrinks each sweep.
 */
export function minimizeBox(f: (x: number[]) => number, lo: number[], hi: number[], opts: { grid?: number; sweeps?: number; tol?: number } = {}): { x: number[]; f: number } {
  const dim = lo.length;
  const g = Math.max(3, opts.grid ?? 24);
  let best: number[] = lo.slice();
  let bf = Infinity;
  const idx = new Array(dim).fill(0);
  const total = Math.pow(g, dim);
  for (let k = 0; k < total; k++) {
    let r = k;
    for (let j = 0; j < dim; j++) { idx[j] = r % g; r = Math.floor(r / g); }
    const x = idx.map((i, j) => lo[j] + (hi[j] - lo[j]) * i / (g - 1));
    const v = finite(f(x));
    if (v < bf) { bf = v; best = x; }
  }
  let win = lo.map((l, j) => (hi[j] - l) / (g - 1));
  const tol = opts.tol ?? 1e-12;
  for (let s = 0; s < (opts.sweeps ?? 40); s++) {
    const before = bf;
    for (let j = 0; j < dim; j++) {
      const a = Math.max(lo[j], best[j] - win[j]), b = Math.min(hi[j], best[j] + win[j]);
      const x = best.slice();
      const r = goldenSection((t) => { x[j] = t; return f(x); }, a, b);
      if (r.f < bf) { bf = r.f; best = best.slice(); best[j] = r.x; }
    }
    win = win.map((w) => w * 0.5);
    if (before - bf <= tol * (1 + Math.abs(bf)) && s > 2) break;
  }
  return { x: best, f: bf };
}

export interface LevMarOptions {
  maxIterations?: number;
  /** stop when the cost or the step changes by less than this, relatively */
  tolerance?: number;
  lower?: number[];
  upper?: number[];
  /** Huber threshold on the residuals (iteratively reweighted); absent: plain least squares */
  huber?: number;
  /** initial damping */
  lambda?: number;
}

export interface LevMarResult {
  params: number[];
  /** Σ ½r² (least squares) or Σ Huber(r) */
  cost: number;
  residuals: number[];
  iterations: number;
  converged: boolean;
}

/** the robust cost: ½r² inside the Huber threshold, δ(|r| − δ/2) outside */
export function huberCost(r: number[], delta?: number): number {
  let c = 0;
  for (const v of r) {
    const a = Math.abs(v);
    c += delta === undefined || a <= delta ? 0.5 * v * v : delta * (a - 0.5 * delta);
  }
  return c;
}

/** Solve A x = b (A n×n, row-major, overwritten) by Gaussian elimination with partial pivoting; null when singular. */
export function solveLinear(A: number[][], b: number[]): number[] | null {
  const n = b.length;
  const M = A.map((row, i) => [...row, b[i]]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r][c]) > Math.abs(M[p][c])) p = r;
    if (!(Math.abs(M[p][c]) > 1e-300)) return null;
    [M[c], M[p]] = [M[p], M[c]];
    for (let r = c + 1; r < n; r++) {
      const k = M[r][c] / M[c][c];
      if (k !== 0) for (let j = c; j <= n; j++) M[r][j] -= k * M[c][j];
    }
  }
  const x = new Array(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = M[r][n];
    for (let j = r + 1; j < n; j++) s -= M[r][j] * x[j];
    x[r] = s / M[r][r];
  }
  return x.every(Number.isFinite) ? x : null;
}

/**
 * Levenberg-Marquardt (Marquardt's diagonal scaling) minimizing the cost of residuals(p), with a central-
 * difference Jacobian, steps projected onto the bounds, and Huber weights recomputed at each accepted point.
 */
export function levenbergMarquardt(residuals: (p: number[]) => number[], p0: number[], opts: LevMarOptions = {}): LevMarResult {
  const n = p0.length;
  const lower = opts.lower ?? new Array(n).fill(-Infinity);
  const upper = opts.upper ?? new Array(n).fill(Infinity);
  const clamp = (p: number[]) => p.map((v, j) => Math.min(upper[j], Math.max(lower[j], v)));
  const tol = opts.tolerance ?? 1e-12;
  const maxIt = opts.maxIterations ?? 300;
  const evalR = (p: number[]) => residuals(p).map((v) => (Number.isFinite(v) ? v : 1e150));
  let p = clamp(p0.slice());
  let r = evalR(p);
  let cost = huberCost(r, opts.huber);
  let lambda = opts.lambda ?? 1e-3;
  let it = 0;
  let converged = false;
  for (; it < maxIt; it++) {
    const w = r.map((v) => (opts.huber === undefined || Math.abs(v) <= opts.huber ? 1 : opts.huber / Math.abs(v)));
    // Jacobian by central differences, one column per parameter (one-sided at a bound)
    const J: number[][] = r.map(() => new Array(n).fill(0));
    for (let j = 0; j < n; j++) {
      const h = 1e-6 * Math.max(Math.abs(p[j]), 1e-3);
      const up = p.slice(), dn = p.slice();
      up[j] = Math.min(upper[j], p[j] + h);
      dn[j] = Math.max(lower[j], p[j] - h);
      const span = up[j] - dn[j];
      if (!(span > 0)) continue;
      const ru = evalR(up), rd = evalR(dn);
      for (let i = 0; i < r.length; i++) J[i][j] = (ru[i] - rd[i]) / span;
    }
    const H: number[][] = Array.from({ length: n }, () => new Array(n).fill(0));
    const g = new Array(n).fill(0);
    for (let i = 0; i < r.length; i++) {
      const Ji = J[i];
      for (let a = 0; a < n; a++) {
        if (Ji[a] === 0) continue;
        g[a] += w[i] * Ji[a] * r[i];
        for (let b = 0; b < n; b++) H[a][b] += w[i] * Ji[a] * Ji[b];
      }
    }
    let accepted = false;
    while (lambda < 1e20) {
      const A = H.map((row, a) => row.map((v, b) => (a === b ? v + lambda * Math.max(H[a][a], 1e-12) : v)));
      const step = solveLinear(A, g.map((v) => -v));
      if (!step) { lambda *= 10; continue; }
      const q = clamp(p.map((v, j) => v + step[j]));
      const rq = evalR(q);
      const cq = huberCost(rq, opts.huber);
      if (cq < cost) {
        const dp = Math.sqrt(q.reduce((s, v, j) => s + (v - p[j]) ** 2, 0));
        const pn = Math.sqrt(p.reduce((s, v) => s + v * v, 0));
        const dc = cost - cq;
        p = q; r = rq; cost = cq;
        lambda = Math.max(lambda / 3, 1e-15);
        accepted = true;
        if (dc <= tol * (cost + tol) || dp <= tol * (pn + tol)) converged = true;
        break;
      }
      lambda *= 4;
    }
    if (!accepted) { converged = true; break; }
    if (converged) { it++; break; }
  }
  return { params: p, cost, residuals: r, iterations: it, converged };
}
