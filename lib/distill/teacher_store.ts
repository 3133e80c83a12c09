/**
 * Offline teacher top-k store: run a teacher once over a packed dataset and keep, for every predicted token,
 * its k most likely ids, their log-probabilities and the tail mass, so that distillation can stream the
 * teacher from disk instead of running it (`undo-native cache-teacher`, lib/cli/teacher.ts).
 *
 * Directory layout
 *
 *     STORE/manifest.json      identity, encoding, shard list with sizes and sha256 (rewritten atomically)
 *     STORE/shard-00000.bin    windows [0, S)        S = shardWindows
 *     STORE/shard-00001.bin    windows [S, 2S) ...   the last shard may hold fewer
 *
 * Identity (manifest): teacher = sha256 of its config.json and weights (model.safetensors, or the index and shards; `teacherHashFromDir`; a
 * store built from an in-memory model uses `teacherHashFromModel`, a sha256 of the HF config and the f32
 * parameters), tokenizer = sha256 of the byte-tokenizer layout (`tokenizerHash`: vocabulary size, specials
 * and the 256 byte ids — what tokenizer.json describes, independent of its formatting; a Hugging Face tokenizer:
 * its token → id map and specials), data = sha256 of the packed token stream (`dataHash`: the count·seqLen+1
 * int32 little-endian tokens the windows use, then the label stream when the data masks its loss), plus
 * seqLen, k and the teacher's vocabulary size.
 *
 * Shard file: a 96-byte header (magic "UNDOTKS1", version, shard index, window range, seqLen, k, vocab,
 * record size, encoding parameters, and the first 8 bytes of the teacher/tokenizer/data hashes, so that a
 * shard from another store is recognised as such), then one fixed-size record per token, window-major: the
 * record of row t of window w is at header + ((w − firstWindow)·seqLen + t)·recordBytes. Row t of window w
 * is the teacher's distribution after inputs(w)[0..t], i.e. the prediction of targets(w)[t].
 *
 * Record encoding "topk-delta-v1" (one little-endian bit stream per token, LSB first, zero padded to whole
 * bytes). Entries are sorted by descending log-probability lp0 ≥ lp1 ≥ ... ≥ lp(k−1) (ties: lower id first).
 *
 *     ids            k × idBits        idBits = ceil(log2 vocab), exact
 *     lp0            24 bits           lp0 = −code/2^19 (fixed point on [−32, 0], error ≤ 1e−6)
 *     tail mass      16 bits           IEEE fp16 of 1 − Σ_topk p (from float64 sums; ±2^−11 relative, ±3e−8 below 6e−5)
 *     head scale     8 bits            step s = 2^((c−1)/8 − 24), c = 0: s = 0 (log-spaced, rounded up)
 *     tail scale     8 bits            same
 *     head deltas    H × 10 bits       ranks 1..H (H = min(16, k−1))
 *     tail deltas    (k−1−H) × 6 bits  ranks H+1..k−1
 *
 * Deltas are closed-loop (error feedback): lp̂i = lp̂(i−1) − code_i·s with code_i = round((lp̂(i−1) − lp_i)/s),
 * so errors never accumulate. Each section's step is chosen from its largest gap d = max(lp(i−1) − lp_i)
 * and the error e entering it as s ≥ (d + e)/(2^bits − 1.5), which keeps every code in range; hence
 * |lp̂i − lp_i| ≤ s/2 for every entry: ≤ 0.000534·(largest gap among ranks 0..16) for the head — below 0.02
 * unless two of the top-17 log-probs are more than 37 nats apart — and ≤ 0.0087·(largest gap among ranks
 * 16..k−1, + the head's error) for the rest. At k = 64 a record is 64·idBits + 498 bits: 199 bytes at
 * vocab 131072 (17-bit ids), 135 bytes at the byte vocabulary (259, 9-bit ids).
 *
 * Reading ("memory mapping"): Node has no mmap, so `TeacherStore` keeps a small LRU of open file descriptors
 * and reads each requested window's records with fs.readSync at its offset into one reused buffer, decoding
 * straight into the output arrays; the store is never loaded whole. Shard sizes and headers are checked when
 * the store is opened; checksums are verified in full on a shard's first use (`verify: 'lazy'`, default), for
 * every shard up front (`'open'`), or not at all (`'none'`).
 *
 * Writing: `cacheTeacher` runs the teacher per batch of windows, takes logits → log-softmax → top-k per row
 * (a bounded heap, one pass over the vocabulary, a second for the normaliser and the tail), fills one shard
 * in memory and writes it atomically (temp file, fsync, rename), then rewrites the manifest. An interrupted
 * run therefore leaves whole shards only; `resume: true` verifies the listed shards (size, header, sha256),
 * removes stale temporary files, recomputes what is missing or corrupt and continues. Shards are
 * deterministic: a resumed store is byte-identical to an uninterrupted one (same batch size and ISA).
 */
import { JobProgress } from '../core/progress';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Batch, Batcher, PackedDataset } from '../data/datasets';
import { describeError, UndoError, errorClass } from '../core/errors';
import { readAt, readJson, sha256Fd, sha256FdAsync, writeFileAtomicAsync, writeJsonAtomic } from '../core/fsutil';
import type { TopKTeacher } from '../train/losses';
import { configToHF, Model } from '../models/model';
import { ByteTokenizer, Tokenizer } from '../data/tokenizer';

/** Errors of this module: code ERR_TEACHER_STORE unless one names another. */
const Err = errorClass('ERR_TEACHER_STORE');
const NotFoundError = errorClass('ERR_NOT_FOUND');

export const STORE_FORMAT = 'undo-teacher-topk';
export const STORE_VERSION = 1;
export const ENCODING_NAME = 'topk-delta-v1';
export const MANIFEST_FILE = 'manifest.json';
export const SHARD_HEADER_BYTES = 96;
const SHARD_MAGIC = 'UNDOTKS1';
const LP0_SCALE = 2 ** 19;
const LP0_BITS = 24;
const LP0_MAX = 2 ** LP0_BITS - 1;
const DEFAULT_HEAD = 16;
const DEFAULT_HEAD_BITS = 10;
const DEFAULT_TAIL_BITS = 6;
const STALE_TMP = /^(shard-\d+\.bin|manifest\.json)\.tmp-/;

// ---------------------------------------------------------------------------------------------
// fp16 and bit streams
// ---------------------------------------------------------------------------------------------

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** IEEE binary16 bits of x (round to nearest even, via float32). */
export function toHalf(x: number): number {
  F32[0] = x;
  const f = U32[0];
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  let mant = f & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** The value of IEEE binary16 bits. */
export function fromHalf(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const POW2: number[] = Array.from({ length: 54 }, (_, i) => 2 ** i);

/** LSB-first bit writer into a byte array (values up to 31 bits; the accumulator stays below 2^39). */
class BitWriter {
  private buf: Uint8Array = new Uint8Array(0);
  private p = 0;
  private acc = 0;
  private nb = 0;
  reset(buf: Uint8Array, off: number): void {
    this.buf = buf;
    this.p = off;
    this.acc = 0;
    this.nb = 0;
  }
  put(v: number, bits: number): void {
    this.acc += v * POW2[this.nb];
    this.nb += bits;
    while (this.nb >= 8) {
      const b = this.acc % 256;
      this.buf[this.p++] = b;
      this.acc = (this.acc - b) / 256;
      this.nb -= 8;
    }
  }
  /** Flush the last partial byte and zero-fill up to `end`. */
  finish(end: number): void {
    if (this.nb > 0) this.buf[this.p++] = this.acc;
    while (this.p < end) this.buf[this.p++] = 0;
  }
}

class BitReader {
  private buf: Uint8Array = new Uint8Array(0);
  private p = 0;
  private acc = 0;
  private nb = 0;
  reset(buf: Uint8Array, off: number): void {
    this.buf = buf;
    this.p = off;
    this.acc = 0;
    this.nb = 0;
  }
  get(bits: number): number {
    while (this.nb < bits) {
      this.acc += this.buf[this.p++] * POW2[this.nb];
      this.nb += 8;
    }
    const m = POW2[bits];
    const v = this.acc % m;
    this.acc = (this.acc - v) / m;
    this.nb -= bits;
    return v;
  }
}

// ---------------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------------

/** Parameters of one record encoding (kept in the manifest and, packed, in every shard header). */
export interface TopKEncoding {
  name: typeof ENCODING_NAME;
  k: number;
  vocab: number;
  idBits: number;
  /** number of 10-bit head deltas (ranks 1..headCount) */
  headCount: number;
  headBits: number;
  tailBits: number;
  lp0Bits: number;
  lp0Scale: number;
  tail: 'fp16';
  recordBits: number;
  recordBytes: number;
}

/** Quantised step of a delta section: 0 or 2^((c−1)/8 − 24), c in 1..255. */
function scaleOf(code: number): number {
  return code === 0 ? 0 : 2 ** ((code - 1) / 8 - 24);
}

/** Smallest scale code whose step is ≥ s (255 when s is out of range). */
function scaleCode(s: number): number {
  if (!(s > 0)) return 0;
  let c = Math.ceil((Math.log2(s) + 24) * 8 + 1);
  if (c < 1) c = 1;
  while (c > 1 && scaleOf(c - 1) >= s) c--;
  while (c < 255 && scaleOf(c) < s) c++;
  return Math.min(c, 255);
}

/**
 * Encoder/decoder of fixed-size per-token records (see the module comment). Not thread-safe; reuse one
 * instance per reader or writer.
 */
export class TopKCodec {
  readonly k: number;
  readonly vocab: number;
  readonly idBits: number;
  readonly headCount: number;
  readonly headBits: number;
  readonly tailBits: number;
  readonly recordBits: number;
  readonly recordBytes: number;
  private readonly w = new BitWriter();
  private readonly r = new BitReader();

  constructor(k: number, vocab: number, opts: { headCount?: number; headBits?: number; tailBits?: number } = {}) {
    if (!Number.isSafeInteger(vocab) || vocab < 1 || vocab > 2 ** 31) throw new Err(`top-k codec: vocab must be an integer in [1, 2^31], got ${vocab}`);
    if (!Number.isSafeInteger(k) || k < 1) throw new Err(`top-k codec: k must be a positive integer, got ${k}`);
    if (k > vocab) throw new Err(`top-k k = ${k} is larger than the vocabulary (${vocab})`, 'choose --topk ≤ the teacher\'s vocab_size');
    const headBits = opts.headBits ?? DEFAULT_HEAD_BITS;
    const tailBits = opts.tailBits ?? DEFAULT_TAIL_BITS;
    for (const [name, b] of [['headBits', headBits], ['tailBits', tailBits]] as const) {
      if (!Number.isInteger(b) || b < 2 || b > 24) throw new Err(`top-k codec: ${name} must be an integer in [2, 24], got ${b}`);
    }
    const headCount = Math.min(opts.headCount ?? DEFAULT_HEAD, k - 1);
    if (!Number.isInteger(headCount) || headCount < 0) throw new Err(`top-k codec: headCount must be a non-negative integer, got ${opts.headCount}`);
    this.k = k;
    this.vocab = vocab;
    this.idBits = Math.max(1, Math.ceil(Math.log2(vocab)));
    this.headCount = headCount;
    this.headBits = headBits;
    this.tailBits = tailBits;
    this.recordBits = k * this.idBits + LP0_BITS + 16 + 8 + 8 + headCount * headBits + (k - 1 - headCount) * tailBits;
    this.recordBytes = Math.ceil(this.recordBits / 8);
  }

  get encoding(): TopKEncoding {
    return {
      name: ENCODING_NAME, k: this.k, vocab: this.vocab, idBits: this.idBits, headCount: this.headCount, headBits: this.headBits,
      tailBits: this.tailBits, lp0Bits: LP0_BITS, lp0Scale: LP0_SCALE, tail: 'fp16', recordBits: this.recordBits, recordBytes: this.recordBytes,
    };
  }

  /** Rebuild a codec from a manifest's encoding; throws (naming `where`) when it is not one this code writes. */
  static fromEncoding(e: TopKEncoding, where: string): TopKCodec {
    if (!e || typeof e !== 'object') throw new Err(`${where}: field "encoding" is missing`);
    if (e.name !== ENCODING_NAME) throw new Err(`${where}: unsupported encoding ${JSON.stringify(e.name)} (field encoding.name)`, `this version reads "${ENCODING_NAME}"`);
    const c = new TopKCodec(e.k, e.vocab, { headCount: e.headCount, headBits: e.headBits, tailBits: e.tailBits });
    const want: Record<string, number> = {
      idBits: c.idBits, headCount: c.headCount, recordBits: c.recordBits, recordBytes: c.recordBytes, lp0Bits: LP0_BITS, lp0Scale: LP0_SCALE,
    };
    for (const [f, v] of Object.entries(want)) {
      const got = (e as unknown as Record<string, unknown>)[f];
      if (got !== v) throw new Err(`${where}: field encoding.${f} is ${JSON.stringify(got)}, but k = ${e.k} and vocab = ${e.vocab} imply ${v}`);
    }
    return c;
  }

  /**
   * Encode one token: `ids` and `lps` (k entries from `off`, sorted by descending log-probability) and the
   * tail mass, into `dst[at .. at+recordBytes)`.
   */
  encode(ids: ArrayLike<number>, lps: ArrayLike<number>, off: number, tail: number, dst: Uint8Array, at: number): void {
    const { k, idBits } = this;
    const w = this.w;
    w.reset(dst, at);
    for (let i = 0; i < k; i++) {
      const id = ids[off + i];
      if (!(id >= 0 && id < this.vocab) || !Number.isInteger(id)) throw new Err(`top-k codec: id ${id} is outside the vocabulary [0, ${this.vocab})`);
      w.put(id, idBits);
    }
    const lp0 = lps[off];
    if (Number.isNaN(lp0)) throw new Err('top-k codec: log-probability is NaN');
    let c0 = Math.round(-lp0 * LP0_SCALE);
    c0 = c0 < 0 ? 0 : c0 > LP0_MAX ? LP0_MAX : c0;
    w.put(c0, LP0_BITS);
    w.put(toHalf(Math.min(1, Math.max(0, tail))), 16);
    let rec = -c0 / LP0_SCALE;
    const H = this.headCount;
    // section steps: s ≥ (largest gap + entering error)/(levels − 1.5)
    let gap = 0;
    for (let i = 1; i <= H; i++) gap = Math.max(gap, lps[off + i - 1] - lps[off + i]);
    const hiCode = scaleCode((gap + Math.abs(rec - lp0)) / (2 ** this.headBits - 1.5));
    const sHi = scaleOf(hiCode);
    // the head is coded before the tail scale is known: code the head into a scratch pass first
    const hiMax = 2 ** this.headBits - 1;
    const hiCodes = this.scratch(H);
    for (let i = 1; i <= H; i++) {
      let c = sHi > 0 ? Math.round((rec - lps[off + i]) / sHi) : 0;
      c = c < 0 ? 0 : c > hiMax ? hiMax : c;
      hiCodes[i - 1] = c;
      rec -= c * sHi;
    }
    gap = 0;
    for (let i = H + 1; i < k; i++) gap = Math.max(gap, lps[off + i - 1] - lps[off + i]);
    const loCode = H + 1 < k ? scaleCode((gap + Math.abs(rec - lps[off + H])) / (2 ** this.tailBits - 1.5)) : 0;
    const sLo = scaleOf(loCode);
    w.put(hiCode, 8);
    w.put(loCode, 8);
    for (let i = 0; i < H; i++) w.put(hiCodes[i], this.headBits);
    const loMax = 2 ** this.tailBits - 1;
    for (let i = H + 1; i < k; i++) {
      let c = sLo > 0 ? Math.round((rec - lps[off + i]) / sLo) : 0;
      c = c < 0 ? 0 : c > loMax ? loMax : c;
      w.put(c, this.tailBits);
      rec -= c * sLo;
    }
    w.finish(at + this.recordBytes);
  }

  /** Decode the record at `src[at..]` into ids/logprobs[off .. off+k); returns the tail mass. */
  decode(src: Uint8Array, at: number, ids: Int32Array, lps: Float32Array, off: number): number {
    const { k, idBits } = this;
    const r = this.r;
    r.reset(src, at);
    for (let i = 0; i < k; i++) ids[off + i] = r.get(idBits);
    let rec = -r.get(LP0_BITS) / LP0_SCALE;
    const tail = fromHalf(r.get(16));
    const sHi = scaleOf(r.get(8));
    const sLo = scaleOf(r.get(8));
    lps[off] = rec;
    const H = this.headCount;
    for (let i = 1; i <= H; i++) {
      rec -= r.get(this.headBits) * sHi;
      lps[off + i] = rec;
    }
    for (let i = H + 1; i < k; i++) {
      rec -= r.get(this.tailBits) * sLo;
      lps[off + i] = rec;
    }
    return tail;
  }

  private scratchBuf = new Int32Array(0);
  private scratch(n: number): Int32Array {
    if (this.scratchBuf.length < n) this.scratchBuf = new Int32Array(n);
    return this.scratchBuf;
  }
}

// ---------------------------------------------------------------------------------------------
// Top-k of a logits row
// ---------------------------------------------------------------------------------------------

const EXP_CUT = 50;
const EXP_FRAC = Float64Array.from({ length: 256 }, (_, i) => 2 ** (i / 256));
const EXP_INT = Float64Array.from({ length: 80 }, (_, i) => 2 ** -i);
const L2E256 = 256 * Math.LOG2E;
const LN2_256 = Math.LN2 / 256;

/** exp(x) for x in [−50, 0], relative error < 1e−11 (table 2^(i/256) × cubic), ~4× faster than Math.exp. */
function expNeg(x: number): number {
  const t = x * L2E256;
  const m = Math.floor(t);
  const z = (t - m) * LN2_256;
  return EXP_FRAC[m & 255] * EXP_INT[-(m >> 8)] * (1 + z * (1 + z * (0.5 + z * (1 / 6))));
}

/**
 * Top-k selection and log-softmax statistics of logits rows. One pass keeps a bounded min-heap of the k best
 * (value, id) — most entries are rejected by one comparison with the heap's root — a second pass sums
 * exp(x − max) over the row in float64 (a table-based exp; entries below max − 50 are skipped). The tail mass
 * is (Σ_all − Σ_topk)/Σ_all of those float64 sums, accurate to ~1e−16 absolute.
 */
export class TopKSelector {
  readonly ids: Int32Array;
  /** log-probabilities of ids, descending */
  readonly lps: Float64Array;
  tail = 0;
  private readonly hv: Float64Array;
  private readonly hi: Int32Array;
  private readonly order: number[];

  constructor(readonly k: number, readonly vocab: number) {
    if (!Number.isInteger(k) || k < 1 || k > vocab) throw new Err(`top-k k = ${k} must be an integer in [1, vocab = ${vocab}]`);
    this.ids = new Int32Array(k);
    this.lps = new Float64Array(k);
    this.hv = new Float64Array(k);
    this.hi = new Int32Array(k);
    this.order = Array.from({ length: k }, (_, i) => i);
  }

  /** worse(a, b): heap entry a ranks below b (smaller value, or equal value and larger id). */
  private worse(a: number, b: number): boolean {
    const { hv, hi } = this;
    return hv[a] < hv[b] || (hv[a] === hv[b] && hi[a] > hi[b]);
  }

  private siftDown(i: number): void {
    const { hv, hi, k } = this;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= k) return;
      let m = l;
      if (l + 1 < k && this.worse(l + 1, l)) m = l + 1;
      if (!this.worse(m, i)) return;
      const tv = hv[i];
      hv[i] = hv[m];
      hv[m] = tv;
      const ti = hi[i];
      hi[i] = hi[m];
      hi[m] = ti;
      i = m;
    }
  }

  /** Select the top-k of row[off .. off+vocab) into ids/lps (descending; ties: lower id first) and set tail. */
  select(row: Float32Array, off: number): void {
    const { k, vocab, hv, hi } = this;
    for (let j = 0; j < k; j++) {
      hv[j] = row[off + j];
      hi[j] = j;
    }
    for (let j = (k >> 1) - 1; j >= 0; j--) this.siftDown(j);
    let root = hv[0];
    for (let j = k; j < vocab; j++) {
      const x = row[off + j];
      if (x > root) {
        hv[0] = x;
        hi[0] = j;
        this.siftDown(0);
        root = hv[0];
      }
    }
    const order = this.order;
    for (let i = 0; i < k; i++) order[i] = i;
    order.sort((a, b) => (hv[b] - hv[a]) || (hi[a] - hi[b]));
    const max = hv[order[0]];
    if (!Number.isFinite(max)) throw new Err(`teacher logits are not finite (largest ${max})`, 'the teacher model diverged or its weights are corrupt');
    // Σ exp(x − max) over the row; entries below max − 50 add < V·e^−50 and are skipped
    let sum = 0;
    const lo = max - EXP_CUT;
    for (let j = 0; j < vocab; j++) {
      const x = row[off + j];
      if (x >= lo) sum += expNeg(x - max);
      else if (x !== x) throw new Err('teacher logits contain NaN', 'the teacher model diverged or its weights are corrupt');
    }
    let top = 0;
    for (let i = 0; i < k; i++) {
      const x = hv[order[i]];
      if (x >= lo) top += expNeg(x - max);
    }
    const lse = max + Math.log(sum);
    for (let i = 0; i < k; i++) {
      this.ids[i] = hi[order[i]];
      this.lps[i] = hv[order[i]] - lse;
    }
    // in float64 the difference keeps the tail to ~1e-16 absolute, far below its fp16 storage
    this.tail = Math.max(0, sum - top) / sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Identity hashes
// ---------------------------------------------------------------------------------------------

function hashFile(h: crypto.Hash, file: string, what: string): void {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new Err(`cannot read ${what} ${file}: ${describeError(e)}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    h.update(`${path.basename(file)}\n${size}\n`);
    const buf = Buffer.allocUnsafe(1 << 20);
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Teacher identity of a model directory: sha256 over (name, size, bytes) of config.json then model.safetensors. */
export function teacherHashFromDir(dir: string): string {
  const h = crypto.createHash('sha256');
  hashFile(h, path.join(dir, 'config.json'), 'teacher config');
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  if (!fs.existsSync(single) && fs.existsSync(index)) {
    // a sharded checkpoint: the index, then every shard it names, in name order
    hashFile(h, index, 'teacher weight index');
    const map = readJson<{ weight_map?: Record<string, string> }>(index, 'weight index', 'ERR_SAFETENSORS').weight_map ?? {};
    for (const f of [...new Set(Object.values(map))].sort()) hashFile(h, path.join(dir, f), 'teacher weight shard');
  } else {
    hashFile(h, single, 'teacher weights');
  }
  return h.digest('hex');
}

/** Teacher identity of an in-memory model: sha256 of its HF config JSON and its f32 parameters. */
export function teacherHashFromModel(model: Model): string {
  const h = crypto.createHash('sha256');
  h.update('undo-native model\n');
  h.update(JSON.stringify(configToHF(model.config)));
  h.update('\n');
  const p = model.params;
  h.update(leBytes(p));
  return h.digest('hex');
}

/**
 * Tokenizer identity: for the byte tokenizer sha256 of its layout (vocabulary size, specials, the 256 byte ids);
 * for a Hugging Face tokenizer sha256 of its token → id map and specials.
 */
export function tokenizerHash(tok: Tokenizer): string {
  if (!(tok instanceof ByteTokenizer)) {
    return crypto.createHash('sha256').update(`hf-tokenizer-v1 vocab=${tok.vocabHash()} bos=${tok.bos} eos=${tok.eos} pad=${tok.pad}`).digest('hex');
  }
  const bytes: number[] = [];
  for (let b = 0; b < 256; b++) bytes.push(tok.byteId(b));
  const layout = `byte-tokenizer-v1 vocab=${tok.vocabSize} bos=${tok.bos} eos=${tok.eos} pad=${tok.pad} bytes=${bytes.join(',')}`;
  return crypto.createHash('sha256').update(layout).digest('hex');
}

/** The bytes of an int32/float32 array in little-endian order (a view on little-endian machines, else a swapped copy). */
export function leBytes(a: Int32Array | Float32Array): Uint8Array {
  const view = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  if (os.endianness() === 'LE') return view;
  const out = new Uint8Array(view.length);
  for (let i = 0; i < view.length; i += 4) {
    out[i] = view[i + 3];
    out[i + 1] = view[i + 2];
    out[i + 2] = view[i + 1];
    out[i + 3] = view[i];
  }
  return out;
}

/** Data identity: sha256 of the packed token stream the windows use (count·seqLen + 1 int32, little-endian). */
export function dataHash(data: PackedDataset): string {
  const used = data.count > 0 ? data.count * data.seqLen + 1 : 0;
  const h = crypto.createHash('sha256').update(leBytes(data.tokens.subarray(0, used)));
  // loss-masked data (chat, prompt/completion): the targets are part of the identity too
  if (data.labels) h.update('labels').update(leBytes(data.labels.subarray(0, used)));
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Manifest and shard headers
// ---------------------------------------------------------------------------------------------

export interface ShardEntry {
  file: string;
  index: number;
  firstWindow: number;
  numWindows: number;
  bytes: number;
  sha256: string;
}

export interface TeacherStoreManifest {
  format: typeof STORE_FORMAT;
  version: number;
  teacher: { sha256: string; source: string };
  tokenizer: { sha256: string; vocabSize: number };
  data: { sha256: string; streamTokens: number; documents: number };
  vocab: number;
  k: number;
  seqLen: number;
  numWindows: number;
  /** predicted tokens stored: numWindows · seqLen */
  numTokens: number;
  shardWindows: number;
  numShards: number;
  headerBytes: number;
  encoding: TopKEncoding & { description: string };
  /** exact size of one token's record */
  bytesPerToken: number;
  /** bytes of the shards written so far (headers included) / tokens in them */
  bytesPerTokenOnDisk: number | null;
  diskBytes: number;
  complete: boolean;
  shards: ShardEntry[];
  updatedAt: string;
}

const ENCODING_DESCRIPTION =
  'per token, LSB-first bits: k ids × idBits; lp0 u24 (−code/2^19); tail mass fp16; head and tail step codes u8 ' +
  '(s = 2^((c−1)/8−24)); headCount closed-loop deltas × headBits; the remaining k−1−headCount × tailBits; ' +
  'entries sorted by descending log-probability';

export function shardFileName(index: number): string {
  return `shard-${String(index).padStart(5, '0')}.bin`;
}

interface Identity {
  teacher: string;
  tokenizer: string;
  data: string;
}

function hashPrefix(hex: string): Buffer {
  return Buffer.from(hex.slice(0, 16).padEnd(16, '0'), 'hex');
}

function writeHeader(buf: Buffer, index: number, firstWindow: number, numWindows: number, seqLen: number, codec: TopKCodec, id: Identity): void {
  buf.fill(0, 0, SHARD_HEADER_BYTES);
  buf.write(SHARD_MAGIC, 0, 'latin1');
  buf.writeUInt32LE(STORE_VERSION, 8);
  buf.writeUInt32LE(SHARD_HEADER_BYTES, 12);
  buf.writeUInt32LE(index, 16);
  buf.writeUInt32LE(firstWindow, 20);
  buf.writeUInt32LE(numWindows, 24);
  buf.writeUInt32LE(seqLen, 28);
  buf.writeUInt32LE(codec.k, 32);
  buf.writeUInt32LE(codec.vocab, 36);
  buf.writeUInt32LE(codec.recordBytes, 40);
  buf.writeUInt32LE((codec.idBits | (codec.headCount << 8) | (codec.headBits << 16) | (codec.tailBits << 24)) >>> 0, 44);
  hashPrefix(id.teacher).copy(buf, 48);
  hashPrefix(id.tokenizer).copy(buf, 56);
  hashPrefix(id.data).copy(buf, 64);
}

/** Check a shard header against what the manifest says; returns a description of the first mismatch, or null. */
function headerMismatch(h: Buffer, e: ShardEntry, m: TeacherStoreManifest, codec: TopKCodec): string | null {
  if (h.length < SHARD_HEADER_BYTES || h.toString('latin1', 0, 8) !== SHARD_MAGIC) return `not a teacher-store shard (field magic: expected "${SHARD_MAGIC}")`;
  const id: Identity = { teacher: m.teacher.sha256, tokenizer: m.tokenizer.sha256, data: m.data.sha256 };
  const checks: Array<[string, number | string, number | string]> = [
    ['version', h.readUInt32LE(8), STORE_VERSION],
    ['headerBytes', h.readUInt32LE(12), SHARD_HEADER_BYTES],
    ['tokenizer', h.subarray(56, 64).toString('hex'), hashPrefix(id.tokenizer).toString('hex')],
    ['data', h.subarray(64, 72).toString('hex'), hashPrefix(id.data).toString('hex')],
    ['teacher', h.subarray(48, 56).toString('hex'), hashPrefix(id.teacher).toString('hex')],
    ['vocab', h.readUInt32LE(36), codec.vocab],
    ['k', h.readUInt32LE(32), codec.k],
    ['seqLen', h.readUInt32LE(28), m.seqLen],
    ['recordBytes', h.readUInt32LE(40), codec.recordBytes],
    ['encoding', h.readUInt32LE(44), (codec.idBits | (codec.headCount << 8) | (codec.headBits << 16) | (codec.tailBits << 24)) >>> 0],
    ['index', h.readUInt32LE(16), e.index],
    ['firstWindow', h.readUInt32LE(20), e.firstWindow],
    ['numWindows', h.readUInt32LE(24), e.numWindows],
  ];
  for (const [field, got, want] of checks) {
    if (got !== want) {
      const what = field === 'tokenizer' || field === 'data' || field === 'teacher' ? `was made with another ${field} ` : '';
      return `${what}(field ${field}: shard header has ${got}, the manifest implies ${want})`;
    }
  }
  return null;
}

function isHex64(v: unknown): v is string {
  return typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
}

/** Parse and validate manifest.json; every problem names the store and the field. */
export function readManifest(dir: string): TeacherStoreManifest {
  const file = path.join(dir, MANIFEST_FILE);
  if (!fs.existsSync(file)) {
    if (!fs.existsSync(dir)) throw new NotFoundError(`teacher store ${dir} does not exist`);
    throw new Err(`teacher store ${dir}: ${MANIFEST_FILE} is missing`, 'build the store with `undo-native cache-teacher`');
  }
  const m = readJson<TeacherStoreManifest>(file, 'teacher store manifest', 'ERR_TEACHER_STORE');
  const bad = (field: string, why: string): never => {
    throw new Err(`teacher store ${dir}: ${MANIFEST_FILE} field "${field}" ${why}`);
  };
  if (!m || typeof m !== 'object' || Array.isArray(m)) bad('(top level)', 'is not a JSON object');
  if (m.format !== STORE_FORMAT) bad('format', `is ${JSON.stringify(m.format)}, expected "${STORE_FORMAT}"`);
  if (m.version !== STORE_VERSION) bad('version', `is ${JSON.stringify(m.version)}; this version reads ${STORE_VERSION}`);
  const posInt = (v: unknown, f: string, min = 1) => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) bad(f, `must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  };
  for (const f of ['vocab', 'k', 'seqLen', 'numWindows', 'numTokens', 'shardWindows', 'numShards'] as const) posInt(m[f], f);
  if (m.headerBytes !== SHARD_HEADER_BYTES) bad('headerBytes', `is ${JSON.stringify(m.headerBytes)}, expected ${SHARD_HEADER_BYTES}`);
  for (const f of ['teacher', 'tokenizer', 'data'] as const) {
    if (!m[f] || typeof m[f] !== 'object' || !isHex64(m[f].sha256)) bad(`${f}.sha256`, 'must be a 64-digit lower-case hex sha256');
  }
  if (m.numTokens !== m.numWindows * m.seqLen) bad('numTokens', `is ${m.numTokens}, but numWindows × seqLen = ${m.numWindows * m.seqLen}`);
  if (m.numShards !== Math.ceil(m.numWindows / m.shardWindows)) bad('numShards', `is ${m.numShards}, but ceil(numWindows / shardWindows) = ${Math.ceil(m.numWindows / m.shardWindows)}`);
  if (!m.encoding || m.encoding.k !== m.k || m.encoding.vocab !== m.vocab) bad('encoding', `does not match k = ${m.k} and vocab = ${m.vocab}`);
  if (typeof m.complete !== 'boolean') bad('complete', 'must be true or false');
  if (!Array.isArray(m.shards)) bad('shards', 'must be an array');
  const seen = new Set<number>();
  m.shards.forEach((s, i) => {
    const f = `shards[${i}]`;
    if (!s || typeof s !== 'object') bad(f, 'is not an object');
    posInt(s.index, `${f}.index`, 0);
    if (s.index >= m.numShards) bad(`${f}.index`, `is ${s.index}, but the store has ${m.numShards} shards`);
    if (seen.has(s.index)) bad(`${f}.index`, `repeats shard ${s.index}`);
    seen.add(s.index);
    if (s.file !== shardFileName(s.index)) bad(`${f}.file`, `is ${JSON.stringify(s.file)}, expected "${shardFileName(s.index)}"`);
    const first = s.index * m.shardWindows;
    const n = Math.min(m.shardWindows, m.numWindows - first);
    if (s.firstWindow !== first || s.numWindows !== n) bad(`${f}`, `covers windows [${s.firstWindow}, +${s.numWindows}), expected [${first}, +${n})`);
    if (s.bytes !== SHARD_HEADER_BYTES + n * m.seqLen * m.encoding.recordBytes) bad(`${f}.bytes`, `is ${s.bytes}, expected ${SHARD_HEADER_BYTES + n * m.seqLen * m.encoding.recordBytes}`);
    if (!isHex64(s.sha256)) bad(`${f}.sha256`, 'must be a 64-digit lower-case hex sha256');
  });
  if (m.complete && m.shards.length !== m.numShards) bad('complete', `is true but only ${m.shards.length} of ${m.numShards} shards are listed`);
  return m;
}

/**
 * Check one listed shard fully: it exists, has the listed size, a header matching the manifest, and the
 * listed sha256. Returns null when it is sound, else the reason (no store/shard prefix).
 */
function checkShard(dir: string, m: TeacherStoreManifest, codec: TopKCodec, e: ShardEntry, buf: Buffer, full: boolean): string | null {
  const file = path.join(dir, e.file);
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : `cannot be read: ${describeError(err)}`;
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size !== e.bytes) return `is ${size < e.bytes ? 'truncated' : 'too long'}: ${size} bytes, the manifest lists ${e.bytes} (field bytes)`;
    const h = Buffer.alloc(SHARD_HEADER_BYTES);
    fs.readSync(fd, h, 0, SHARD_HEADER_BYTES, 0);
    const why = headerMismatch(h, e, m, codec);
    if (why) return why;
    if (!full) return null;
    const sum = sha256Fd(fd, size, buf);
    if (sum !== e.sha256) return `is corrupt: its sha256 is ${sum.slice(0, 16)}…, the manifest lists ${e.sha256.slice(0, 16)}… (field sha256)`;
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/** What the reader expects of a store; any field given must match the manifest. */
export interface StoreExpectation {
  tokenizerHash?: string;
  dataHash?: string;
  teacherHash?: string;
  vocab?: number;
  seqLen?: number;
  k?: number;
  numWindows?: number;
}

export interface OpenTeacherStoreOptions {
  expect?: StoreExpectation;
  /** 'lazy' (default): a shard's checksum is verified on its first use; 'open': all shards now; 'none'. */
  verify?: 'lazy' | 'open' | 'none';
  /** Open a store whose run was interrupted (only its written shards are readable). Default false. */
  allowIncomplete?: boolean;
  /** Open file descriptors kept (LRU), default 16. */
  maxOpenFiles?: number;
}

/** Teacher top-k rows in the form lib/train/losses.ts takes (`teacher: {ids, logprobs, k}`), plus the tail mass. */
export interface TopKRows extends TopKTeacher {
  rows: number;
  /** 1 − Σ exp(logprobs) of each row as the teacher computed it over its whole vocabulary */
  tail: Float32Array;
}

/** The expectation for distilling on `data` with a model (student or teacher) sharing the teacher's tokenizer. */
export function expectationFor(model: Model, data: PackedDataset): StoreExpectation {
  return { tokenizerHash: tokenizerHash(model.tokenizer), dataHash: dataHash(data), vocab: model.config.vocabSize, seqLen: data.seqLen, numWindows: data.count };
}

export class TeacherStore {
  readonly codec: TopKCodec;
  readonly k: number;
  readonly vocab: number;
  readonly seqLen: number;
  readonly numWindows: number;
  readonly numTokens: number;
  private readonly entries: (ShardEntry | undefined)[];
  private readonly verified: Uint8Array;
  private readonly fds = new Map<number, number>();
  private readonly verifyMode: 'lazy' | 'open' | 'none';
  private readonly maxOpen: number;
  private scratch: Buffer;
  private hashBuf: Buffer | undefined;
  private closed = false;

  constructor(readonly dir: string, readonly manifest: TeacherStoreManifest, opts: OpenTeacherStoreOptions = {}) {
    const m = manifest;
    this.codec = TopKCodec.fromEncoding(m.encoding, `teacher store ${dir}: ${MANIFEST_FILE}`);
    this.k = m.k;
    this.vocab = m.vocab;
    this.seqLen = m.seqLen;
    this.numWindows = m.numWindows;
    this.numTokens = m.numTokens;
    this.verifyMode = opts.verify ?? 'lazy';
    this.maxOpen = Math.max(1, opts.maxOpenFiles ?? 16);
    this.entries = new Array(m.numShards).fill(undefined);
    for (const s of m.shards) this.entries[s.index] = s;
    this.verified = new Uint8Array(m.numShards);
    this.scratch = Buffer.alloc(m.seqLen * this.codec.recordBytes);
    if (!m.complete && !opts.allowIncomplete) {
      throw new Err(`teacher store ${dir} is incomplete: ${m.shards.length} of ${m.numShards} shards were written`,
        'its cache-teacher run was interrupted; finish it with `undo-native cache-teacher ... --resume`');
    }
    // sizes and headers of every shard now (cheap), checksums per the verify mode
    for (const s of m.shards) {
      const why = checkShard(dir, m, this.codec, s, this.hashBuffer(), this.verifyMode === 'open');
      if (why) this.fail(s, why);
      if (this.verifyMode !== 'lazy') this.verified[s.index] = 1;
    }
  }

  private hashBuffer(): Buffer {
    return (this.hashBuf ??= Buffer.allocUnsafe(1 << 20));
  }

  private fail(s: ShardEntry, why: string): never {
    throw new Err(`teacher store ${this.dir}: shard ${s.file} ${why}`,
      'rebuild the store, or repair it with `undo-native cache-teacher ... --resume` (it recomputes bad shards)');
  }

  /** Verify every shard's checksum now. */
  verifyAll(): void {
    for (const s of this.manifest.shards) this.ensureVerified(s);
  }

  private ensureVerified(s: ShardEntry): void {
    if (this.verified[s.index]) return;
    const why = checkShard(this.dir, this.manifest, this.codec, s, this.hashBuffer(), true);
    if (why) this.fail(s, why);
    this.verified[s.index] = 1;
  }

  private fd(s: ShardEntry): number {
    let fd = this.fds.get(s.index);
    if (fd !== undefined) {
      this.fds.delete(s.index);
      this.fds.set(s.index, fd);
      return fd;
    }
    try {
      fd = fs.openSync(path.join(this.dir, s.file), 'r');
    } catch (e) {
      throw new Err(`teacher store ${this.dir}: cannot open shard ${s.file}: ${describeError(e)}`);
    }
    this.fds.set(s.index, fd);
    if (this.fds.size > this.maxOpen) {
      const [oldest, ofd] = this.fds.entries().next().value as [number, number];
      this.fds.delete(oldest);
      fs.closeSync(ofd);
    }
    return fd;
  }

  /** The shard entry holding window w. */
  shardOf(w: number): ShardEntry {
    if (!Number.isInteger(w) || w < 0 || w >= this.numWindows) {
      throw new Err(`teacher store ${this.dir}: window ${w} is out of range (the store has ${this.numWindows} windows)`);
    }
    const idx = Math.floor(w / this.manifest.shardWindows);
    const s = this.entries[idx];
    if (!s) throw new Err(`teacher store ${this.dir}: shard ${shardFileName(idx)} (windows from ${idx * this.manifest.shardWindows}) has not been written`, 'finish the store with `undo-native cache-teacher ... --resume`');
    return s;
  }

  /** A fresh (or reusable) output for `rows` rows. */
  allocate(rows: number): TopKRows {
    return { ids: new Int32Array(rows * this.k), logprobs: new Float32Array(rows * this.k), k: this.k, rows, tail: new Float32Array(rows) };
  }

  /** The output for `windows` (given, checked, or new). */
  private output(windows: ArrayLike<number>, out?: TopKRows): TopKRows {
    if (this.closed) throw new Err(`teacher store ${this.dir} is closed`);
    const rows = windows.length * this.seqLen;
    const o = out ?? this.allocate(rows);
    if (o.rows !== rows || o.ids.length !== rows * this.k || o.logprobs.length !== rows * this.k || o.tail.length !== rows) {
      throw new Err(`teacher store ${this.dir}: the output holds ${o.rows} rows, but ${windows.length} windows need ${rows}`);
    }
    return o;
  }

  /**
   * The teacher's top-k for the given windows, row-major: row b·seqLen + t is window windows[b], position t.
   * `out` (from allocate, for exactly these many rows) is filled in place when given. The reads (and a lazy
   * shard's checksum) go through the libuv pool, so the event loop stays free; the same values as readSync.
   * `out` must not be read or changed until the Promise settles.
   */
  async read(windows: ArrayLike<number>, out?: TopKRows): Promise<TopKRows> {
    const o = this.output(windows, out);
    const ws = Array.from(windows);
    const T = this.seqLen;
    const rb = this.codec.recordBytes;
    const len = T * rb;
    const buf = Buffer.alloc(len); // per call: concurrent reads never share a buffer
    for (let b = 0; b < ws.length; b++) {
      const w = ws[b];
      const s = this.shardOf(w);
      if (this.verifyMode === 'lazy' && !this.verified[s.index]) await this.verifyAsync(s);
      const pos = SHARD_HEADER_BYTES + (w - s.firstWindow) * len;
      const fd = this.fd(s);
      for (let got = 0; got < len;) {
        const n = await readAt(fd, buf, got, len - got, pos + got);
        if (n <= 0) this.fail(s, `is truncated: window ${w} ends past the end of the file (field bytes)`);
        got += n;
      }
      if (this.closed) throw new Err(`teacher store ${this.dir} was closed during a read`);
      for (let t = 0; t < T; t++) {
        const row = b * T + t;
        o.tail[row] = this.codec.decode(buf, t * rb, o.ids, o.logprobs, row * this.k);
      }
    }
    return o;
  }

  /** A lazy shard's full check (size, header, sha256) with the checksum read off the event loop. */
  private async verifyAsync(s: ShardEntry): Promise<void> {
    const why = checkShard(this.dir, this.manifest, this.codec, s, this.hashBuffer(), false);
    if (why) this.fail(s, why);
    const fd = this.fd(s);
    const sum = await sha256FdAsync(fd, s.bytes, Buffer.allocUnsafe(1 << 20));
    if (sum !== s.sha256) this.fail(s, `is corrupt: its sha256 is ${sum.slice(0, 16)}…, the manifest lists ${s.sha256.slice(0, 16)}… (field sha256)`);
    this.verified[s.index] = 1;
  }

  /** {@link read} on the calling thread (blocking file reads). */
  readSync(windows: ArrayLike<number>, out?: TopKRows): TopKRows {
    const o = this.output(windows, out);
    const T = this.seqLen;
    const rb = this.codec.recordBytes;
    const len = T * rb;
    const buf = this.scratch;
    for (let b = 0; b < windows.length; b++) {
      const w = windows[b];
      const s = this.shardOf(w);
      if (this.verifyMode === 'lazy') this.ensureVerified(s);
      const pos = SHARD_HEADER_BYTES + (w - s.firstWindow) * len;
      let got = 0;
      const fd = this.fd(s);
      while (got < len) {
        const n = fs.readSync(fd, buf, got, len - got, pos + got);
        if (n <= 0) this.fail(s, `is truncated: window ${w} ends past the end of the file (field bytes)`);
        got += n;
      }
      for (let t = 0; t < T; t++) {
        const row = b * T + t;
        o.tail[row] = this.codec.decode(buf, t * rb, o.ids, o.logprobs, row * this.k);
      }
    }
    return o;
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    this.closed = true;
  }
}

function checkExpect(dir: string, m: TeacherStoreManifest, ex: StoreExpectation): void {
  const hint = 'the store was built for another model or data set: rebuild it with `undo-native cache-teacher` for this one';
  const cmp = (what: string, field: string, got: string | number, want: string | number | undefined) => {
    if (want === undefined || got === want) return;
    const show = (v: string | number) => (typeof v === 'string' && v.length === 64 ? `${v.slice(0, 12)}…` : String(v));
    throw new Err(`teacher store ${dir} was built for another ${what} (field ${field}: the store has ${show(got)}, expected ${show(want)})`, hint);
  };
  cmp('tokenizer', 'tokenizer.sha256', m.tokenizer.sha256, ex.tokenizerHash);
  cmp('data', 'data.sha256', m.data.sha256, ex.dataHash);
  cmp('vocabulary', 'vocab', m.vocab, ex.vocab);
  cmp('sequence length', 'seqLen', m.seqLen, ex.seqLen);
  cmp('data (window count)', 'numWindows', m.numWindows, ex.numWindows);
  cmp('teacher', 'teacher.sha256', m.teacher.sha256, ex.teacherHash);
  cmp('top-k', 'k', m.k, ex.k);
}

/** Open a store for reading, checking it against `expect` (see TeacherStore for verification modes). */
export function openTeacherStore(dir: string, opts: OpenTeacherStoreOptions = {}): TeacherStore {
  const m = readManifest(dir);
  if (opts.expect) checkExpect(dir, m, opts.expect);
  return new TeacherStore(dir, m, opts);
}

/** Window indices of a batch that `batcher` just returned (recomputed from its position and epoch order). */
export function batchWindows(batcher: Batcher, batch: Batch): Int32Array {
  const out = new Int32Array(batch.B);
  let { epoch, index } = batch.position;
  const n = batcher.data.count;
  for (let b = 0; b < batch.B; b++) {
    out[b] = batcher.epochOrder(epoch)[index];
    if (++index >= n) {
      index = 0;
      epoch++;
    }
  }
  return out;
}

/** The stored teacher top-k (rows B·T, the batch's layout) for a batch from `batcher` over the store's data. */
export async function teacherForBatch(store: TeacherStore, batcher: Batcher, batch: Batch, out?: TopKRows): Promise<TopKRows> {
  return store.read(checkedWindows(store, batcher, batch), out);
}

/** {@link teacherForBatch} with blocking reads. */
export function teacherForBatchSync(store: TeacherStore, batcher: Batcher, batch: Batch, out?: TopKRows): TopKRows {
  return store.readSync(checkedWindows(store, batcher, batch), out);
}

function checkedWindows(store: TeacherStore, batcher: Batcher, batch: Batch): Int32Array {
  if (batch.T !== store.seqLen || batcher.data.count !== store.numWindows) {
    throw new Err(`teacher store ${store.dir} holds ${store.numWindows} windows of ${store.seqLen} tokens; the batcher's data has ${batcher.data.count} of ${batch.T}`);
  }
  return batchWindows(batcher, batch);
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/** cache-teacher's progress: the common fields of a job (lib/core/progress.ts; done/total count windows) and its own. */
export interface CacheProgress extends JobProgress {
  windowsDone: number;
  windows: number;
  tokensDone: number;
  tokens: number;
  shardsDone: number;
  shards: number;
  /** teacher tokens per second in this run */
  tokensPerSec: number;
  elapsedSec: number;
}

export interface CacheTeacherOptions {
  /** ids kept per token */
  k: number;
  /** store directory */
  out: string;
  /** windows per shard (default: about 32 MiB of records per shard) */
  shardWindows?: number;
  /** windows per teacher forward (default 8) */
  batchSize?: number;
  /** logits rows fetched from the teacher at a time (default: 2^24 / vocab, i.e. 64 MiB of logits) */
  logitRows?: number;
  /** continue an interrupted store in `out` (verifying what is there); otherwise `out` must not hold a store */
  resume?: boolean;
  /** teacher identity (default teacherHashFromModel(teacher)); the CLI passes teacherHashFromDir */
  teacherHash?: string;
  /** where the teacher came from, for the manifest (default "in-memory model") */
  teacherSource?: string;
  onProgress?: (p: CacheProgress) => void;
  onLog?: (msg: string) => void;
  /** stop after the current batch; whole shards written so far are kept */
  signal?: AbortSignal;
}

export interface CacheTeacherResult {
  out: string;
  manifest: TeacherStoreManifest;
  /** shards computed in this run */
  shardsWritten: number;
  /** shards found sound and kept (resume) */
  shardsKept: number;
  /** listed shards found missing or corrupt and recomputed (resume) */
  repaired: string[];
  interrupted: boolean;
}

/** Default windows per shard: about 32 MiB of records, at least 1. */
export function defaultShardWindows(seqLen: number, recordBytes: number): number {
  return Math.max(1, Math.floor((32 << 20) / (seqLen * recordBytes)));
}

function sameOrFail(dir: string, field: string, got: unknown, want: unknown): void {
  if (got !== want) {
    const show = (v: unknown) => (typeof v === 'string' && v.length === 64 ? `${v.slice(0, 12)}…` : JSON.stringify(v));
    throw new Err(`cannot resume teacher store ${dir}: it was built with a different ${field} (the store has ${show(got)}, this run ${show(want)})`,
      'use the same teacher, data, --topk, --seq-len and --shard-windows, or write a new store with another --out');
  }
}

/**
 * Run `teacher` over every window of `data` and write its top-k store to `opts.out` (see the module comment).
 * Resumable and interruptible; returns what was done.
 */
export async function cacheTeacher(teacher: Model, data: PackedDataset, opts: CacheTeacherOptions): Promise<CacheTeacherResult> {
  const dir = opts.out;
  const V = teacher.config.vocabSize;
  const k = opts.k;
  if (!Number.isSafeInteger(k) || k < 1) throw new Err(`top-k k must be a positive integer, got ${k}`);
  if (k > V) throw new Err(`top-k k = ${k} is larger than the teacher's vocabulary (${V})`, 'choose --topk ≤ the teacher\'s vocab_size');
  if (data.count < 1) throw new Err('cacheTeacher: the data has no complete window');
  const T = data.seqLen;
  if (T > teacher.config.maxPositions) throw new Err(`sequence length ${T} exceeds the teacher's max_position_embeddings (${teacher.config.maxPositions})`);
  const B = opts.batchSize ?? 8;
  if (!Number.isSafeInteger(B) || B < 1) throw new Err(`batch size must be a positive integer, got ${B}`);
  const codec = new TopKCodec(k, V);
  const S = opts.shardWindows ?? defaultShardWindows(T, codec.recordBytes);
  if (!Number.isSafeInteger(S) || S < 1) throw new Err(`shard windows must be a positive integer, got ${S}`);
  if (S * T * codec.recordBytes + SHARD_HEADER_BYTES > 2 ** 31 - 1) throw new Err(`a shard of ${S} windows would exceed 2 GiB; use fewer shard windows`);
  const N = data.count;
  const numShards = Math.ceil(N / S);
  const log = opts.onLog ?? (() => undefined);
  const id: Identity = { teacher: opts.teacherHash ?? teacherHashFromModel(teacher), tokenizer: tokenizerHash(teacher.tokenizer), data: dataHash(data) };
  if (!isHex64(id.teacher)) throw new Err(`teacher hash must be a 64-digit lower-case hex sha256, got ${JSON.stringify(id.teacher)}`);

  const manifest: TeacherStoreManifest = {
    format: STORE_FORMAT, version: STORE_VERSION,
    teacher: { sha256: id.teacher, source: opts.teacherSource ?? 'in-memory model' },
    tokenizer: { sha256: id.tokenizer, vocabSize: teacher.tokenizer.vocabSize },
    data: { sha256: id.data, streamTokens: N * T + 1, documents: data.numDocuments },
    vocab: V, k, seqLen: T, numWindows: N, numTokens: N * T, shardWindows: S, numShards, headerBytes: SHARD_HEADER_BYTES,
    encoding: { ...codec.encoding, description: ENCODING_DESCRIPTION }, bytesPerToken: codec.recordBytes,
    bytesPerTokenOnDisk: null, diskBytes: 0, complete: false, shards: [], updatedAt: new Date().toISOString(),
  };

  // what is already there
  const done = new Map<number, ShardEntry>();
  const repaired: string[] = [];
  const manifestFile = path.join(dir, MANIFEST_FILE);
  if (fs.existsSync(manifestFile)) {
    if (!opts.resume) {
      throw new Err(`${dir} already holds a teacher store`, 'pass --resume (resume: true) to continue or repair it, or choose another --out');
    }
    const old = readManifest(dir);
    sameOrFail(dir, 'teacher (field teacher.sha256)', old.teacher.sha256, id.teacher);
    sameOrFail(dir, 'tokenizer (field tokenizer.sha256)', old.tokenizer.sha256, id.tokenizer);
    sameOrFail(dir, 'data (field data.sha256)', old.data.sha256, id.data);
    sameOrFail(dir, 'vocabulary (field vocab)', old.vocab, V);
    sameOrFail(dir, 'top-k (field k)', old.k, k);
    sameOrFail(dir, 'sequence length (field seqLen)', old.seqLen, T);
    sameOrFail(dir, 'shard size (field shardWindows)', old.shardWindows, S);
    sameOrFail(dir, 'record encoding (field encoding.recordBits)', old.encoding.recordBits, codec.recordBits);
    sameOrFail(dir, 'record encoding (field encoding.headBits)', old.encoding.headBits, codec.headBits);
    sameOrFail(dir, 'record encoding (field encoding.tailBits)', old.encoding.tailBits, codec.tailBits);
    manifest.teacher.source = old.teacher.source ?? manifest.teacher.source;
    const buf = Buffer.allocUnsafe(1 << 20);
    for (const s of old.shards) {
      const why = checkShard(dir, old, codec, s, buf, true);
      if (why) {
        log(`shard ${s.file} ${why}: recomputing it`);
        repaired.push(s.file);
      } else {
        done.set(s.index, s);
      }
    }
  } else if (fs.existsSync(dir)) {
    if (!fs.statSync(dir).isDirectory()) throw new Err(`--out ${dir} exists and is not a directory`);
    const others = fs.readdirSync(dir).filter((f) => !STALE_TMP.test(f) && !/^shard-\d+\.bin$/.test(f));
    const shards = fs.readdirSync(dir).filter((f) => /^shard-\d+\.bin$/.test(f));
    if (others.length) throw new Err(`--out ${dir} exists and is not a teacher store (it holds ${others.slice(0, 3).join(', ')}${others.length > 3 ? ', ...' : ''})`, 'choose a new or empty directory');
    if (shards.length && !opts.resume) throw new Err(`${dir} holds shard files but no ${MANIFEST_FILE}`, 'pass --resume to rebuild the store there, or choose another --out');
  }
  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) {
    if (STALE_TMP.test(f)) {
      log(`removing ${f}, left by an interrupted run`);
      fs.rmSync(path.join(dir, f), { force: true });
    }
  }

  const writeManifest = () => {
    manifest.shards = [...done.values()].sort((a, b) => a.index - b.index);
    manifest.complete = manifest.shards.length === numShards;
    manifest.diskBytes = manifest.shards.reduce((a, s) => a + s.bytes, 0);
    const tokens = manifest.shards.reduce((a, s) => a + s.numWindows * T, 0);
    manifest.bytesPerTokenOnDisk = tokens ? Math.round((manifest.diskBytes / tokens) * 1000) / 1000 : null;
    manifest.updatedAt = new Date().toISOString();
    writeJsonAtomic(manifestFile, manifest);
  };
  writeManifest();

  const sel = new TopKSelector(k, V);
  const chunkRows = opts.logitRows ?? Math.max(1, Math.floor((1 << 24) / V));
  if (!Number.isSafeInteger(chunkRows) || chunkRows < 1) throw new Err(`logitRows must be a positive integer, got ${chunkRows}`);
  const logitBuf = new Float32Array(Math.min(chunkRows, B * T) * V);  // reused by every chunk
  const started = Date.now();
  let tokensThisRun = 0;
  const windowsIn = (idx: number) => Math.min(S, N - idx * S);
  let windowsDone = [...done.keys()].reduce((a, i) => a + windowsIn(i), 0);
  let shardsWritten = 0;
  let interrupted = false;
  const progress = () => {
    const elapsedSec = (Date.now() - started) / 1000;
    const tokensPerSec = tokensThisRun / Math.max(elapsedSec, 1e-9);
    opts.onProgress?.({
      job: 'cache-teacher', done: windowsDone, total: N, tokens_per_sec: tokensPerSec, elapsed_sec: elapsedSec,
      windowsDone, windows: N, tokensDone: windowsDone * T, tokens: N * T, shardsDone: done.size, shards: numShards,
      tokensPerSec, elapsedSec,
    });
  };
  progress();

  outer: for (let si = 0; si < numShards; si++) {
    if (done.has(si)) continue;
    const first = si * S;
    const nw = windowsIn(si);
    const buf = Buffer.alloc(SHARD_HEADER_BYTES + nw * T * codec.recordBytes);
    writeHeader(buf, si, first, nw, T, codec, id);
    for (let b0 = 0; b0 < nw; b0 += B) {
      if (opts.signal?.aborted) {
        interrupted = true;
        break outer;
      }
      const nb = Math.min(B, nw - b0);
      const ids = new Int32Array(nb * T);
      for (let b = 0; b < nb; b++) ids.set(data.inputs(first + b0 + b), b * T);
      await teacher.native.forward(ids, nb, T);
      const rows = nb * T;
      for (let r0 = 0; r0 < rows; r0 += chunkRows) {
        const nr = Math.min(chunkRows, rows - r0);
        const sel32 = new Int32Array(nr);
        for (let i = 0; i < nr; i++) sel32[i] = r0 + i;
        const logits = await teacher.native.logits(nr === rows ? null : sel32, logitBuf);
        for (let i = 0; i < nr; i++) {
          sel.select(logits, i * V);
          const at = SHARD_HEADER_BYTES + (b0 * T + r0 + i) * codec.recordBytes;
          codec.encode(sel.ids, sel.lps, 0, sel.tail, buf, at);
        }
      }
      tokensThisRun += rows;
      windowsDone += nb;
      if (b0 + nb < nw) progress();
    }
    const file = shardFileName(si);
    await writeFileAtomicAsync(path.join(dir, file), buf);
    done.set(si, { file, index: si, firstWindow: first, numWindows: nw, bytes: buf.length, sha256: crypto.createHash('sha256').update(buf).digest('hex') });
    shardsWritten++;
    writeManifest();
    progress();
  }
  return { out: dir, manifest, shardsWritten, shardsKept: done.size - shardsWritten, repaired, interrupted };
}
