/**
 * Differential-privacy accounting for private aggregation (Hot PATE, lib/distill/pate.ts).
 *
 * Every mechanism the aggregator runs is Gaussian with a data-independent scale: the noisy threshold check
 * (the top vote count plus N(0, σ₁²); one teacher moves the top count by at most 1, so Δ₂ = 1) and the noisy
 * argmax (every count plus N(0, σ₂²); one teacher moves one vote, so one count −1 and one +1, Δ₂ = √2).
 * A Gaussian mechanism with L2 sensitivity Δ and noise σ is (α, αΔ²/(2σ²))-RDP for every order α > 1
 * (Mironov 2017), so any composition of them is (α, α·ρ)-RDP with ρ = Σ Δᵢ²/(2σᵢ²): the accountant only
 * needs ρ, and converts it to (ε, δ) three ways:
 *
 *  - 'rdp' (the default): the conversion of Canonne, Kamath and Steinke 2020 (Prop. 12; also Balle et al.
 *    2020, Thm. 21): ε = αρ + log(1 − 1/α) − (log δ + log α)/(α − 1), minimised over α > 1.
 *  - 'rdp-classic': Mironov's ε = αρ + log(1/δ)/(α − 1); its minimum over α has the closed form
 *    ρ + 2√(ρ·log(1/δ)) at α* = 1 + √(log(1/δ)/ρ).
 *  - 'gdp': exact. A composition of Gaussian mechanisms with μᵢ = Δᵢ/σᵢ is μ-GDP with μ = √(Σ μᵢ²) = √(2ρ)
 *    (Dong, Roth and Su 2019), whose privacy profile is δ(ε) = Φ(μ/2 − ε/μ) − e^ε·Φ(−μ/2 − ε/μ)
 *    (Balle and Wang 2018); ε is found by bisection.
 *
 * Charges are adaptive (the argmax is only run, and only charged, when the threshold check passed, and the
 * generation stops once the next charge would overshoot the budget). Both RDP filters (Feldman and Zrnic
 * 2021) and GDP filters (Smith and Thakurta 2022) make the stated ε hold for such budget-stopped,
 * adaptively chosen compositions. The analysis is data-independent: unlike the data-dependent bounds of
 * Papernot et al. 2018 and the paper's target charging, a unanimous vote costs as much as a split one.
 */
import { UndoError, errorClass } from '../core/errors';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export type PrivacyConversion = 'rdp' | 'rdp-classic' | 'gdp';
export const PRIVACY_CONVERSIONS: readonly PrivacyConversion[] = ['rdp', 'rdp-classic', 'gdp'];

/** RDP of a Gaussian mechanism at order α: αΔ²/(2σ²). */
export function gaussianRdp(alpha: number, sigma: number, sensitivity = 1): number {
  return (alpha * sensitivity * sensitivity) / (2 * sigma * sigma);
}

/** log Φ(x) of the standard normal, accurate in the far lower tail (relative error of Φ below 1.2e-7). */
export function logNormalCdf(x: number): number {
  // Φ(x) = erfc(−x/√2)/2; erfc from the Chebyshev fit of Numerical Recipes (erfcc), kept in the log domain
  const z = -x / Math.SQRT2;
  if (z < 0) return Math.log1p(-Math.exp(logErfc(-z)) / 2);
  return logErfc(z) - Math.LN2;
}

function logErfc(z: number): number {
  // z >= 0
  const t = 1 / (1 + 0.5 * z);
  const poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 +
    t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  return Math.log(t) - z * z + poly;
}

/**
 * Φ⁻¹(p), the standard normal quantile, by Acklam's rational approximation (relative error below 1.2e-9);
 * `upper` gives Φ⁻¹(1 − p) accurately for tiny p.
 */
export function normalQuantile(p: number, upper = false): number {
  if (!(p > 0 && p < 1)) {
    if (p === 0) return upper ? Infinity : -Infinity;
    if (p === 1) return upper ? -Infinity : Infinity;
    throw new Err(`normalQuantile: p must be in [0, 1], got ${p}`);
  }
  if (upper) return -normalQuantile(p);
  const a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00];
  const b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01];
  const c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00];
  const d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00];
  const lo = 0.02425;
  if (p < lo || p > 1 - lo) {
    const q = Math.sqrt(-2 * Math.log(p < lo ? p : 1 - p));
    const x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    return p < lo ? x : -x;
  }
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** δ(ε) of a μ-GDP mechanism (exact privacy profile of the Gaussian mechanism with Δ/σ = μ). */
export function gdpDelta(mu: number, epsilon: number): number {
  if (mu <= 0) return 0;
  const a = logNormalCdf(mu / 2 - epsilon / mu);
  const b = epsilon + logNormalCdf(-mu / 2 - epsilon / mu);
  return b >= a ? 0 : Math.exp(a) * -Math.expm1(b - a);
}

/** The smallest ε with δ(ε) ≤ δ for a μ-GDP mechanism (bisection). */
export function gdpEpsilon(mu: number, delta: number): number {
  if (mu <= 0) return 0;
  if (gdpDelta(mu, 0) <= delta) return 0;
  let lo = 0;
  let hi = 1;
  while (gdpDelta(mu, hi) > delta) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * Math.max(1, hi); i++) {
    const mid = (lo + hi) / 2;
    if (gdpDelta(mu, mid) > delta) lo = mid;
    else hi = mid;
  }
  return hi;
}

/** ε of (α, αρ)-RDP at δ, with the order that attains it. */
export function rdpToDp(rho: number, delta: number, conversion: 'rdp' | 'rdp-classic' = 'rdp'): { epsilon: number; order: number } {
  if (rho <= 0) return { epsilon: 0, order: Infinity };
  const L = Math.log(1 / delta);
  if (conversion === 'rdp-classic') {
    return { epsilon: rho + 2 * Math.sqrt(rho * L), order: 1 + Math.sqrt(L / rho) };
  }
  const f = (a: number) => a * rho + Math.log1p(-1 / a) - (Math.log(delta) + Math.log(a)) / (a - 1);
  // unimodal in log(α − 1): a coarse scan, then golden-section search around the best point
  let bestX = 0;
  let best = Infinity;
  for (let x = -12; x <= 14; x += 0.05) {
    const v = f(1 + Math.exp(x));
    if (v < best) { best = v; bestX = x; }
  }
  let a = bestX - 0.05;
  let b = bestX + 0.05;
  const g = (Math.sqrt(5) - 1) / 2;
  for (let i = 0; i < 80; i++) {
    const c = b - g * (b - a);
    const d = a + g * (b - a);
    if (f(1 + Math.exp(c)) < f(1 + Math.exp(d))) b = d;
    else a = c;
  }
  const x = (a + b) / 2;
  const v = f(1 + Math.exp(x));
  return v < best ? { epsilon: Math.max(0, v), order: 1 + Math.exp(x) } : { epsilon: Math.max(0, best), order: 1 + Math.exp(bestX) };
}

/** ε at δ for a composition with total ρ = Σ Δ²/(2σ²), by the chosen conversion. */
export function epsilonOf(rho: number, delta: number, conversion: PrivacyConversion = 'rdp'): number {
  checkDelta(delta, 'epsilonOf');
  return conversion === 'gdp' ? gdpEpsilon(Math.sqrt(2 * rho), delta) : rdpToDp(rho, delta, conversion).epsilon;
}

function checkDelta(delta: number, where: string): void {
  if (!(delta > 0 && delta < 1)) throw new Err(`${where}: δ must be in (0, 1), got ${delta}`);
}

export interface AccountantOptions {
  /** The (ε, δ) budget: charges that would take ε past `epsilon` are refused. */
  epsilon: number;
  delta: number;
  conversion?: PrivacyConversion;
}

export interface AccountantState {
  rho: number;
  charges: Record<string, number>;
}

/**
 * A budgeted accountant for compositions of Gaussian mechanisms (see the module comment). `tryCharge`
 * adds a charge only when the budget still holds afterwards, which is what a privacy filter needs.
 */
export class GaussianAccountant {
  readonly epsilonBudget: number;
  readonly delta: number;
  readonly conversion: PrivacyConversion;
  private rhoSum = 0;
  private counts = new Map<string, number>();

  constructor(opts: AccountantOptions) {
    if (!(opts.epsilon > 0)) throw new Err(`privacy budget: ε must be > 0, got ${opts.epsilon}`);
    checkDelta(opts.delta, 'privacy budget');
    const conversion = opts.conversion ?? 'rdp';
    if (!PRIVACY_CONVERSIONS.includes(conversion)) throw new Err(`unknown privacy conversion "${conversion}"`, `choose from ${PRIVACY_CONVERSIONS.join(', ')}`);
    this.epsilonBudget = opts.epsilon;
    this.delta = opts.delta;
    this.conversion = conversion;
  }

  /** ρ of one Gaussian mechanism with noise σ and L2 sensitivity Δ. */
  static rhoOf(sigma: number, sensitivity = 1): number {
    if (!(sigma > 0)) throw new Err(`Gaussian mechanism: σ must be > 0, got ${sigma}`);
    return (sensitivity * sensitivity) / (2 * sigma * sigma);
  }

  get rho(): number {
    return this.rhoSum;
  }

  /** RDP of everything charged so far at order α. */
  rdp(alpha: number): number {
    return alpha * this.rhoSum;
  }

  /** ε spent so far (at the accountant's δ, unless another is given). */
  epsilon(delta = this.delta, conversion = this.conversion): number {
    return epsilonOf(this.rhoSum, delta, conversion);
  }

  /** Whether a further charge of ρ would keep ε within the budget. */
  fits(rho: number): boolean {
    return epsilonOf(this.rhoSum + rho, this.delta, this.conversion) <= this.epsilonBudget;
  }

  /** Charge ρ (counted under `label`) if it fits; returns whether it was charged. */
  tryCharge(rho: number, label = 'gaussian'): boolean {
    if (!this.fits(rho)) return false;
    this.charge(rho, label);
    return true;
  }

  /** Charge ρ unconditionally. */
  charge(rho: number, label = 'gaussian'): void {
    if (!(rho >= 0) || !Number.isFinite(rho)) throw new Err(`privacy charge must be a finite ρ ≥ 0, got ${rho}`);
    this.rhoSum += rho;
    this.counts.set(label, (this.counts.get(label) ?? 0) + 1);
  }

  /** The largest number of further identical charges of ρ that fit (0 when none). */
  remaining(rho: number): number {
    if (rho <= 0) return Infinity;
    if (!this.fits(rho)) return 0;
    let lo = 1;
    let hi = 2;
    while (epsilonOf(this.rhoSum + hi * rho, this.delta, this.conversion) <= this.epsilonBudget) { lo = hi; hi *= 2; }
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (epsilonOf(this.rhoSum + mid * rho, this.delta, this.conversion) <= this.epsilonBudget) lo = mid;
      else hi = mid;
    }
    return lo;
  }

  state(): AccountantState {
    return { rho: this.rhoSum, charges: Object.fromEntries(this.counts) };
  }

  /** A report: ε by every conversion at the accountant's δ. */
  report(): Record<string, unknown> {
    return {
      epsilon: this.epsilon(), delta: this.delta, conversion: this.conversion, epsilon_budget: this.epsilonBudget, rho: this.rhoSum,
      epsilon_rdp: epsilonOf(this.rhoSum, this.delta, 'rdp'), epsilon_rdp_classic: epsilonOf(this.rhoSum, this.delta, 'rdp-classic'),
      epsilon_gdp: epsilonOf(this.rhoSum, this.delta, 'gdp'), charges: Object.fromEntries(this.counts),
    };
  }
}
