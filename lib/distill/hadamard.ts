/**
 * Hadamard matrices (entries ±1, H·Hᵀ = n·I) for PHI-S standardization (lib/distill/standardize.ts), of the
 * orders real models' widths have, not only powers of two. Built from three classical constructions, combined by
 * Kronecker products (H_a ⊗ H_b is a Hadamard matrix of order a·b):
 *   - Sylvester: order 1 and 2, hence every power of two by doubling;
 *   - Paley I: order q + 1 for a prime q ≡ 3 (mod 4) (12, 20, 24, 32, 44, 48, 60, 68, 72, 80, 84, ...);
 *   - Paley II: order 2(q + 1) for a prime q ≡ 1 (mod 4) (12, 28, 36, 60, 76, 108, ...).
 * So 576 = 36·16, 768 = 12·64, 896 = 28·32, 960 = 60·16, 1152 = 36·32, 1536 = 12·128, 2304 = 36·64, 3584 = 28·128,
 * 5120 = 20·256 are all supported. A Hadamard matrix needs n = 1, 2 or a multiple of 4; multiples of 4 whose
 * construction needs other methods (Williamson, Turyn, ...), e.g. 92, 116, 156, 172, 184, are refused by name
 * with the nearest supported orders. Only prime q are used (Paley over GF(pᵏ) is not implemented).
 */
import { UndoError, errorClass } from '../core/errors';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

/** How an order is made: a base construction, or the Kronecker product of two smaller orders. */
type Plan = { kind: 'sylvester1' } | { kind: 'sylvester2' } | { kind: 'paley1'; q: number } | { kind: 'paley2'; q: number } | { kind: 'kron'; a: number; b: number };

const plans = new Map<number, Plan | null>();

function isPrime(q: number): boolean {
  if (q < 2 || !Number.isInteger(q)) return false;
  for (let f = 2; f * f <= q; f++) if (q % f === 0) return false;
  return true;
}

function planFor(n: number): Plan | null {
  if (plans.has(n)) return plans.get(n)!;
  let p: Plan | null = null;
  if (n === 1) p = { kind: 'sylvester1' };
  else if (n === 2) p = { kind: 'sylvester2' };
  else if (n % 4 !== 0) p = null;
  // Sylvester doubling first (powers of two stay Walsh–Hadamard; 768 = Paley I (q = 11) ⊗ Sylvester 64), then the
  // Paley constructions, then any other split a·b, smallest a first
  else if (planFor(n / 2)) p = { kind: 'kron', a: 2, b: n / 2 };
  else if (isPrime(n - 1) && (n - 1) % 4 === 3) p = { kind: 'paley1', q: n - 1 };
  else if (isPrime(n / 2 - 1) && (n / 2 - 1) % 4 === 1) p = { kind: 'paley2', q: n / 2 - 1 };
  else {
    for (let a = 4; a * a <= n && !p; a += 4) if (n % a === 0 && planFor(a) && planFor(n / a)) p = { kind: 'kron', a, b: n / a };
  }
  plans.set(n, p);
  return p;
}

/** Whether a Hadamard matrix of order n is built in. */
export function hadamardSupported(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= 1 << 20 && planFor(n) !== null;
}

/** The supported orders in [1, limit]. */
export function supportedHadamardOrders(limit: number): number[] {
  const out: number[] = [];
  for (let n = 1; n <= limit; n++) if (hadamardSupported(n)) out.push(n);
  return out;
}

/** How order n is built, in words (e.g. "Paley I (q = 11) ⊗ Sylvester 64"), or null when it is not. */
export function hadamardConstruction(n: number): string | null {
  if (!hadamardSupported(n)) return null;
  // collect the factors: powers of two fold into one Sylvester factor
  let two = 1;
  const others: string[] = [];
  const walk = (m: number) => {
    const p = planFor(m)!;
    if (p.kind === 'sylvester1') return;
    if (p.kind === 'sylvester2') {
      two *= 2;
      return;
    }
    if (p.kind === 'paley1') others.push(`Paley I (q = ${p.q})`);
    else if (p.kind === 'paley2') others.push(`Paley II (q = ${p.q})`);
    else if (p.a === 2) {
      two *= 2;
      walk(p.b);
    } else {
      walk(p.a);
      walk(p.b);
    }
  };
  walk(n);
  return [...others, ...(two > 1 || !others.length ? [`Sylvester ${two}`] : [])].join(' ⊗ ');
}

/** Legendre symbol (x | q) for a prime q: 0, 1 or −1. */
function legendre(x: number, q: number): number {
  const r = ((x % q) + q) % q;
  if (r === 0) return 0;
  // Euler's criterion: r^((q−1)/2) mod q
  let e = (q - 1) / 2, base = r, acc = 1;
  while (e > 0) {
    if (e & 1) acc = Number((BigInt(acc) * BigInt(base)) % BigInt(q));
    base = Number((BigInt(base) * BigInt(base)) % BigInt(q));
    e >>= 1;
  }
  return acc === 1 ? 1 : -1;
}

/** The ±1 matrix of order n, row-major. */
function build(n: number): Int8Array {
  const p = planFor(n)!;
  const H = new Int8Array(n * n);
  if (p.kind === 'sylvester1') {
    H[0] = 1;
  } else if (p.kind === 'sylvester2') {
    H.set([1, 1, 1, -1]);
  } else if (p.kind === 'paley1') {
    // H = I + S, S = [[0, 1ᵀ], [−1, Q]] with the Jacobsthal matrix Q_ij = χ(j − i) (antisymmetric for q ≡ 3 mod 4)
    const q = p.q;
    for (let j = 1; j < n; j++) {
      H[j] = 1;
      H[j * n] = -1;
    }
    for (let i = 0; i < q; i++) for (let j = 0; j < q; j++) H[(i + 1) * n + j + 1] = legendre(j - i, q);
    for (let i = 0; i < n; i++) H[i * n + i] += 1;
  } else if (p.kind === 'paley2') {
    // S = [[0, 1ᵀ], [1, Q]] (symmetric for q ≡ 1 mod 4), then 0 → [[1, −1], [−1, −1]] and ±1 → ±[[1, 1], [1, −1]]
    const q = p.q, m = q + 1;
    const s = (i: number, j: number) => (i === 0 && j === 0 ? 0 : i === 0 || j === 0 ? 1 : legendre(j - i, q));
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) {
        const v = s(i, j);
        const blk = v === 0 ? [1, -1, -1, -1] : [v, v, v, -v];
        H[2 * i * n + 2 * j] = blk[0];
        H[2 * i * n + 2 * j + 1] = blk[1];
        H[(2 * i + 1) * n + 2 * j] = blk[2];
        H[(2 * i + 1) * n + 2 * j + 1] = blk[3];
      }
    }
  } else {
    const A = hadamardPm(p.a), B = hadamardPm(p.b);
    const a = p.a, b = p.b;
    for (let i = 0; i < a; i++) for (let j = 0; j < a; j++) {
      const s = A[i * a + j];
      for (let k = 0; k < b; k++) for (let l = 0; l < b; l++) H[(i * b + k) * n + j * b + l] = s * B[k * b + l];
    }
  }
  return H;
}

const built = new Map<number, Int8Array>();

function hadamardPm(n: number): Int8Array {
  let H = built.get(n);
  if (!H) {
    H = build(n);
    if (n <= 4096) built.set(n, H);
  }
  return H;
}

/** The nearest supported orders below and above n (for error messages). */
export function nearestHadamardOrders(n: number): [number | null, number | null] {
  let lo: number | null = null, hi: number | null = null;
  for (let m = Math.floor(n) - 1; m >= 1; m--) if (hadamardSupported(m)) { lo = m; break; }
  for (let m = Math.floor(n) + 1; m <= 2 * n + 4; m++) if (hadamardSupported(m)) { hi = m; break; }
  return [lo, hi];
}

/**
 * The Hadamard matrix of order n with entries ±1 (H·Hᵀ = n·I), row-major, as an Int8Array; an UndoError naming
 * the order when no construction here makes it.
 */
export function hadamard(n: number, what = 'Hadamard matrix'): Int8Array {
  if (!hadamardSupported(n)) {
    const [lo, hi] = nearestHadamardOrders(n);
    const why = n > 2 && n % 4 !== 0 ? `no Hadamard matrix of order ${n} exists (orders above 2 are multiples of 4)`
      : `order ${n} needs a construction not built in (Sylvester 2ᵏ, Paley I q+1, Paley II 2(q+1) for primes q, and Kronecker products of these)`;
    throw new Err(`${what}: ${why}; the nearest supported orders are ${[lo, hi].filter((x) => x !== null).join(' and ')}`, 'for this width use another standardization (global, perdim, pca-whiten)');
  }
  return hadamardPm(n);
}

/** The normalized (orthogonal) Hadamard matrix H/√n of order n, row-major float64. */
export function normalizedHadamard(n: number, what?: string): Float64Array {
  const H = hadamard(n, what);
  const s = 1 / Math.sqrt(n);
  const out = new Float64Array(n * n);
  for (let i = 0; i < n * n; i++) out[i] = H[i] * s;
  return out;
}
