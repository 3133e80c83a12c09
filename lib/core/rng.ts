/**
 * Small seeded pseudo-random number generator: xoshiro128** (Blackman & Vigna) seeded through
 * splitmix32. Everything is computed with 32-bit integer operations (Math.imul, >>>), so the
 * integer stream (nextU32, int, shuffle, pick) and next() are bit-identical on every platform
 * and Node.js version. normal() additionally uses Math.log/Math.cos/Math.sqrt; V8 implements
 * those with the same portable fdlibm code on every platform.
 *
 * Not cryptographically secure. Use for data shuffling, sampling and initialisation only.
 */
import { UndoError, errorClass } from './errors';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

/** Serialisable generator state (four 32-bit words). */
export type RngState = [number, number, number, number];

/** splitmix32 step: returns [newState, output]. Used for seeding and seed mixing. */
function splitmix32(state: number): [number, number] {
  state = (state + 0x9e3779b9) | 0;
  let z = state;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  z ^= z >>> 16;
  return [state, z >>> 0];
}

/**
 * Reduce a seed to 32 bits. Accepts any safe integer (negative and > 2^32 included: both
 * halves are mixed in) or a string (hashed with FNV-1a).
 */
function seedToU32(seed: number | string): number {
  if (typeof seed === 'string') {
    let h = 0x811c9dc5;
    for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193);
    return h >>> 0;
  }
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) {
    throw new Err(`random seed must be an integer, got ${JSON.stringify(seed)}`);
  }
  const lo = seed >>> 0; // low 32 bits (two's complement for negatives)
  const hi = Math.floor(seed / 4294967296) >>> 0;
  return hi === 0 ? lo : (lo ^ splitmix32(hi)[1]) >>> 0;
}

/**
 * Combine several integers (e.g. a base seed, an epoch number, a stream id) into one
 * well-mixed 32-bit seed. Order matters: mixSeeds(1, 2) !== mixSeeds(2, 1).
 */
export function mixSeeds(...values: Array<number | string>): number {
  let h = 0x6a09e667;
  for (const v of values) {
    h = splitmix32((h ^ seedToU32(v)) | 0)[1];
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) >>> 0;
  }
  return h >>> 0;
}

const TWO_POW_32 = 4294967296;

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  /** @param seed any safe integer or a string; the same seed always gives the same stream. */
  constructor(seed: number | string = 0) {
    let st = seedToU32(seed);
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      const [next, out] = splitmix32(st);
      st = next;
      words.push(out);
    }
    [this.s0, this.s1, this.s2, this.s3] = words;
    // xoshiro's all-zero state is a fixed point; splitmix32 makes it practically impossible,
    // but guard anyway.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Restore a generator from {@link getState}. */
  static fromState(state: RngState): Rng {
    const r = new Rng(0);
    r.setState(state);
    return r;
  }

  /** Current state, e.g. to checkpoint a run. */
  getState(): RngState {
    return [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0];
  }

  setState(state: RngState): void {
    if (!Array.isArray(state) || state.length !== 4 || !state.every((w) => Number.isInteger(w) && w >= 0 && w < TWO_POW_32)) {
      throw new Err(`invalid RNG state ${JSON.stringify(state)}: expected four unsigned 32-bit integers`);
    }
    if (state.every((w) => w === 0)) throw new Err('invalid RNG state: all words are zero');
    [this.s0, this.s1, this.s2, this.s3] = state.map((w) => w | 0);
  }

  /** An independent copy with the same state. */
  clone(): Rng {
    return Rng.fromState(this.getState());
  }

  /** Next uniformly distributed unsigned 32-bit integer (xoshiro128**). */
  nextU32(): number {
    const s1 = this.s1;
    // result = rotl(s1 * 5, 7) * 9
    const t5 = Math.imul(s1, 5);
    const result = Math.imul((t5 << 7) | (t5 >>> 25), 9);
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = (this.s3 << 11) | (this.s3 >>> 21);
    return result >>> 0;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  next(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** Uniform integer in [lo, hi] (both inclusive), without modulo bias. */
  int(lo: number, hiInclusive: number): number {
    if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hiInclusive) || lo > hiInclusive) {
      throw new Err(`Rng.int: invalid range [${lo}, ${hiInclusive}]`);
    }
    const range = hiInclusive - lo + 1;
    if (range > TWO_POW_32) throw new Err(`Rng.int: range [${lo}, ${hiInclusive}] is wider than 2^32`);
    if (range === TWO_POW_32) return lo + this.nextU32();
    // Rejection sampling: accept only u below the largest multiple of `range`.
    const limit = TWO_POW_32 - (TWO_POW_32 % range);
    let u = this.nextU32();
    while (u >= limit) u = this.nextU32();
    return lo + (u % range);
  }

  /** Standard normal sample (Box–Muller), scaled to `mean` and `std`. */
  normal(mean = 0, std = 1): number {
    const u1 = 1 - this.next(); // (0, 1]: log is finite
    const u2 = this.next();
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** Shuffle `array` in place (Fisher–Yates) and return it. Works on arrays and typed arrays. */
  shuffle<A extends { length: number; [i: number]: unknown }>(array: A): A {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      const tmp = array[i];
      array[i] = array[j];
      array[j] = tmp;
    }
    return array;
  }

  /** A uniformly chosen element of a non-empty array. */
  pick<T>(array: ArrayLike<T>): T {
    if (array.length === 0) throw new Err('Rng.pick: cannot pick from an empty array');
    return array[this.int(0, array.length - 1)];
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    if (!Number.isSafeInteger(n) || n < 0 || n >= TWO_POW_32) throw new Err(`Rng.permutation: invalid size ${n}`);
    const p = new Uint32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }
}
