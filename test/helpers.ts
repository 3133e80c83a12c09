/** Shared test helpers: seeded data, float64 comparisons, fixture paths, ISA iteration. */
import * as path from 'path';
import * as assert from 'uvu/assert';
import { native } from '../lib/native';
import { Rng } from '../lib/rng';

export const ROOT = path.join(__dirname, '..', '..');
export const FIXTURES = path.join(ROOT, 'test', 'fixtures');

export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = new Rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r.normal() * scale;
  return a;
}

/** max |a − b| / max(|b|, floor): a relative error over the whole tensor. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-6): number {
  assert.is(a.length, b.length, 'length mismatch');
  let num = 0;
  let den = floor;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= num)) num = Number.isNaN(d) ? Infinity : Math.max(num, d);
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

export function assertClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string): void {
  const e = relErr(a, b);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(3)} > ${tol}`);
}

/** Run fn once per ISA the CPU supports, with that ISA forced. */
export function forEachIsa(fn: (isa: string) => void): void {
  const prev = native.getIsa();
  try {
    for (const isa of native.supportedIsas()) {
      native.setIsa(isa);
      fn(isa);
    }
  } finally {
    native.setIsa(prev);
  }
}

export async function forEachIsaAsync(fn: (isa: string) => Promise<void>): Promise<void> {
  const prev = native.getIsa();
  try {
    for (const isa of native.supportedIsas()) {
      native.setIsa(isa);
      await fn(isa);
    }
  } finally {
    native.setIsa(prev);
  }
}
