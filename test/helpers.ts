/** Shared test helpers: seeded data, float64 comparisons, fixture paths, ISA iteration. */
import * as path from 'path';
import * as assert from 'uvu/assert';
import { UndoError } from '../lib/core/errors';
import { ModelConfig, presetConfig } from '../lib/models/model';
import { native } from '../lib/core/native';
import { Rng } from '../lib/core/rng';

export const ROOT = path.join(__dirname, '..', '..');
export const FIXTURES = path.join(ROOT, 'test', 'fixtures');
/**
 * Running against scripts/asan.sh's sanitizer build: ASan's shadow memory inflates RSS, and the instrumented
 * generic kernels lose the auto-vectorisation their float32 partial sums rely on (≈ 2× the rounding error).
 */
export const SANITIZED = process.env.UNDO_SANITIZED === '1';

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

export function allFinite(a: ArrayLike<number>): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return false;
  return true;
}

/** Bit-for-bit equality of two float arrays (NaN payloads and −0 included). */
export function bitEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/**
 * Assert that fn throws an UndoError whose message contains every string and matches every RegExp in
 * `expect`; returns the error.
 */
export function throwsUndo(fn: () => unknown, ...expect: (string | RegExp)[]): UndoError {
  try {
    fn();
  } catch (e) {
    assert.instance(e, UndoError, `expected UndoError, got ${String(e)}`);
    const msg = (e as Error).message;
    for (const x of expect) {
      if (typeof x === 'string') assert.ok(msg.includes(x), `message "${msg}" lacks "${x}"`);
      else assert.match(msg, x, `message "${msg}"`);
    }
    return e as UndoError;
  }
  assert.unreachable('expected an error');
  throw new Error('unreachable');
}

type ErrorClass = new (...args: never[]) => Error;

/** Assert that fn throws an error of class `type` (default any Error) whose message matches `re`; `what` labels failures. */
export function throwsWith(fn: () => unknown, re: RegExp, what: string, type: ErrorClass = Error): Error {
  try {
    fn();
  } catch (e) {
    assert.instance(e, type, `${what}: not a ${type.name}: ${String(e)}`);
    assert.match((e as Error).message, re, `${what}: message "${(e as Error).message}"`);
    return e as Error;
  }
  assert.unreachable(`${what}: did not throw`);
  throw new Error('unreachable');
}

/** The Promise form of throwsWith. */
export async function rejectsWith(p: Promise<unknown>, re: RegExp, what: string, type: ErrorClass = Error): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, type, `${what}: not a ${type.name}: ${String(e)}`);
    assert.match((e as Error).message, re, `${what}: message "${(e as Error).message}"`);
    return e as Error;
  }
  assert.unreachable(`${what}: did not reject`);
  throw new Error('unreachable');
}

/** A tiny config of the given family (hidden 32, 2 layers, GQA 4/2 heads of 8, vocab 259). */
export function tinyConfig(family: 'llama' | 'gemma2' = 'llama', over: Partial<ModelConfig> = {}): ModelConfig {
  const base = presetConfig(family === 'llama' ? 'tiny' : 'gemma-tiny');
  return {
    ...base,
    hiddenSize: 32, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 8, intermediateSize: 64, maxPositions: 64,
    ...(family === 'gemma2' ? { queryPreAttnScalar: 8, slidingWindow: 4 } : {}),
    ...over,
  };
}
