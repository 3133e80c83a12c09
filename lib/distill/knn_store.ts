/**
 * DNKD's non-parametric teacher (Decoupled Non-parametric KD): a kNN-LM datastore and the teacher distribution
 * it gives (`undo-native knn-store build`, `undo-native distill --knn-teacher STORE`).
 *
 * Datastore: run a model (the key model) over a packed dataset; for every position whose target is not masked
 * the key is the model's hidden state there (the residual stream after block `layer`, default the last block)
 * and the value is the next token. Entries are kept in position order; entry j sits at stream position
 * positions[j] = window·seqLen + t.
 *
 * Teacher (kNN-LM, Khandelwal et al. 2020): for a query h, the k nearest keys N_k(h) under squared L2 distance d,
 *     p_kNN(y | h) = Σ_{j ∈ N_k} 1[v_j = y]·exp(−d_j/τ) / Σ_{j ∈ N_k} exp(−d_j/τ),
 * sparse (at most k tokens), or interpolated with the key model's own next-token distribution:
 *     p = λ·p_kNN + (1 − λ)·p_LM.
 * The temperature τ defaults to the store's own scale (`autoTemperature`: the median over up to 512 entries,
 * evenly spaced, of d_k − d_1 among their k nearest other entries), so the k-th neighbour weighs about e^−1 of the
 * nearest. A query taken from the store's own data excludes its own entry (leave-one-out: otherwise the teacher
 * would be the gold token at distance 0).
 *
 * Search: exact (brute force: candidates by ‖q‖² + ‖k‖² − 2·q·k with the engine's packed GEMM, the best 2k + 8 of
 * them re-measured directly in float64, the k nearest kept; ties go to the lower entry) for small stores, and approximate through usearch's HNSW index for large ones.
 * usearch was chosen over hnswlib-node and faiss-node because it ships prebuilt N-API binaries (Linux x64/arm64,
 * macOS) in its npm package (no compiler, no install script, no download: npm 11 runs no dependency install
 * scripts), is maintained, and saves, loads and memory-maps its index. Pinned at 2.25.1, the newest release whose
 * engines field accepts Node 20 (2.26 asks for Node 22; it would add a Windows prebuild). Where it cannot load,
 * exact search still works and the HNSW paths say why. The index is built with one
 * thread, so the same store gives the same index file, byte for byte.
 *
 * Directory layout (every file written atomically: temp, fsync, rename; the manifest last):
 *     STORE/manifest.json     identity (key model, tokenizer, data, layer), sizes, defaults, sha256 of each file
 *     STORE/keys.f32          entries × dim float32, little-endian
 *     STORE/values.i32        entries int32: the next token of each entry
 *     STORE/positions.i32     entries int32: the entry's stream position window·seqLen + t
 *     STORE/index.usearch     the HNSW index (keys = entry numbers), when built
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as crypto from 'crypto';
import type { Batch, PackedDataset } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { fsyncDir, readJson, sha256File, writeJsonAtomic } from '../core/fsutil';
import { native } from '../core/native';
import { Model } from '../models/model';
import { dataHash, leBytes, teacherHashFromDir, teacherHashFromModel, tokenizerHash } from './teacher_store';

/** Errors of this module: code ERR_TEACHER_STORE unless one names another. */
const Err = errorClass('ERR_TEACHER_STORE');

export const KNN_FORMAT = 'undo-knn-store';
export const KNN_VERSION = 1;
export const KNN_MANIFEST = 'manifest.json';
const FILES = { keys: 'keys.f32', values: 'values.i32', positions: 'positions.i32', index: 'index.usearch' } as const;

/** usearch, loaded on first use (its native binary comes prebuilt with the npm package). */
type Usearch = typeof import('usearch');
let usearchModule: Usearch | undefined;
function usearch(): Usearch {
  if (!usearchModule) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      usearchModule = require('usearch') as Usearch;
    } catch (e) {
      throw new Err(`the approximate kNN index needs the npm package usearch, which failed to load: ${(e as Error).message}`,
        'reinstall with npm install (usearch ships prebuilt binaries), or use exact search (--index exact)');
    }
  }
  return usearchModule;
}

export type IndexKind = 'exact' | 'hnsw';

export interface HnswParams {
  /** M: graph degree (default 16) */
  connectivity: number;
  /** ef at construction (default 128) */
  expansionAdd: number;
  /** ef at search (default 128; raised to the number of neighbours asked for) */
  expansionSearch: number;
}
export const DEFAULT_HNSW: HnswParams = { connectivity: 16, expansionAdd: 128, expansionSearch: 128 };
/** `index: 'auto'` builds the HNSW index from this many entries up (below it exact search is fast enough). */
export const AUTO_HNSW_ENTRIES = 16384;
export const DEFAULT_KNN_K = 16;

export interface KnnManifest {
  format: typeof KNN_FORMAT;
  version: number;
  created: string;
  keyModel: { source: string | null; sha256: string; layer: number; hiddenSize: number; family: string };
  tokenizer: { sha256: string };
  data: { sha256: string; seqLen: number; windows: number };
  vocab: number;
  entries: number;
  dim: number;
  metric: 'l2sq';
  /** defaults for the teacher: neighbours and temperature (τ from autoTemperature at build time) */
  k: number;
  temperature: number;
  /** recall: the HNSW search's recall@k against exact search on `recallQueries` of the store's own entries (leave-one-out), measured at build */
  index: { kind: IndexKind; file: string | null; recall?: number; recallQueries?: number } & Partial<HnswParams>;
  files: Record<string, { bytes: number; sha256: string }>;
}

export interface KnnBuildOptions {
  out: string;
  /** block whose output is the key: 0..n_layers−1, negative counts from the end (default −1, the last) */
  layer?: number;
  /** 'auto' (default): HNSW from AUTO_HNSW_ENTRIES entries, else exact search only */
  index?: IndexKind | 'auto';
  hnsw?: Partial<HnswParams>;
  /** default neighbours of the teacher (default 16) */
  k?: number;
  /** windows per key-model forward (default 8) */
  batchWindows?: number;
  /** the key model's directory, recorded so that distillation can reload it (Model.load) */
  source?: string;
  onProgress?: (p: { windowsDone: number; windows: number; phase: 'keys' | 'index' | 'temperature' }) => void;
}

/** The block index a (possibly negative) layer names for a model of nLayers blocks, or an UndoError. */
export function resolveLayer(layer: number, nLayers: number): number {
  const l = layer < 0 ? nLayers + layer : layer;
  if (!Number.isInteger(layer) || l < 0 || l >= nLayers) {
    throw new Err(`layer ${layer} does not exist: the model has ${nLayers} blocks`, `use 0..${nLayers - 1}, or −1 for the last`);
  }
  return l;
}

/** Hidden states of block `layer` for a batch of windows: rows × dim, a copy. */
export async function keysFor(model: Model, inputs: Int32Array, B: number, T: number, layer: number): Promise<Float32Array> {
  await model.native.forward(inputs, B, T);
  const h = model.native.hidden(layer);
  const d = model.config.hiddenSize;
  return Float32Array.from(h.subarray(0, B * T * d));
}

/** Writes a file's chunks to a temp file beside it, fsyncs and renames it into place; returns its sha256. */
class AtomicFile {
  private fd: number;
  private readonly tmp: string;
  private readonly hash = crypto.createHash('sha256');
  bytes = 0;
  constructor(readonly file: string) {
    this.tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
    this.fd = fs.openSync(this.tmp, 'w');
  }
  write(a: Float32Array | Int32Array): void {
    const b = leBytes(a);
    fs.writeSync(this.fd, b);
    this.hash.update(b);
    this.bytes += b.length;
  }
  commit(): { bytes: number; sha256: string } {
    fs.fsyncSync(this.fd);
    fs.closeSync(this.fd);
    fs.renameSync(this.tmp, this.file);
    return { bytes: this.bytes, sha256: this.hash.digest('hex') };
  }
  abort(): void {
    try { fs.closeSync(this.fd); } catch { /* closed */ }
    fs.rmSync(this.tmp, { force: true });
  }
}

/**
 * Build a datastore of `model` over `data` (see the module comment) in `opts.out`. Keys stream to disk one batch
 * at a time; the HNSW index (when built) holds them in memory while it grows. Returns the opened store.
 */
export async function buildKnnStore(model: Model, data: PackedDataset, opts: KnnBuildOptions): Promise<KnnStore> {
  const layer = resolveLayer(opts.layer ?? -1, model.config.numLayers);
  const d = model.config.hiddenSize, T = data.seqLen;
  const k = opts.k ?? DEFAULT_KNN_K;
  if (!Number.isInteger(k) || k < 1) throw new Err(`k must be a positive integer, got ${k}`);
  const bw = Math.max(1, opts.batchWindows ?? 8);
  let entries = 0;
  for (let w = 0; w < data.count; w++) for (const y of data.targets(w)) if (y >= 0) entries++;
  if (entries < 2) throw new Err(`the data has ${entries} unmasked target tokens: a datastore needs at least 2`);
  const kind: IndexKind = (opts.index ?? 'auto') === 'auto' ? (entries >= AUTO_HNSW_ENTRIES ? 'hnsw' : 'exact') : (opts.index as IndexKind);
  if (kind !== 'exact' && kind !== 'hnsw') throw new Err(`index must be exact, hnsw or auto, got ${String(opts.index)}`);
  const hp: HnswParams = { ...DEFAULT_HNSW, ...(opts.hnsw ?? {}) };
  for (const [name, v] of Object.entries(hp)) if (!Number.isInteger(v) || v < 1) throw new Err(`HNSW ${name} must be a positive integer, got ${v}`);
  fs.mkdirSync(opts.out, { recursive: true });
  // a store being replaced loses its manifest first: a half-written directory is never taken for a store
  fs.rmSync(path.join(opts.out, KNN_MANIFEST), { force: true });
  const files = { keys: new AtomicFile(path.join(opts.out, FILES.keys)), values: new AtomicFile(path.join(opts.out, FILES.values)), positions: new AtomicFile(path.join(opts.out, FILES.positions)) };
  const U = kind === 'hnsw' ? usearch() : undefined;
  const index = U ? new U.Index({ dimensions: d, metric: U.MetricKind.L2sq, quantization: U.ScalarKind.F32, connectivity: hp.connectivity, expansion_add: hp.expansionAdd, expansion_search: hp.expansionSearch, multi: false }) : undefined;
  try {
    let done = 0;
    for (let w0 = 0; w0 < data.count; w0 += bw) {
      const B = Math.min(bw, data.count - w0);
      const inputs = new Int32Array(B * T);
      for (let b = 0; b < B; b++) inputs.set(data.inputs(w0 + b), b * T);
      const h = await keysFor(model, inputs, B, T, layer);
      const keep: number[] = [];
      const vals: number[] = [];
      for (let b = 0; b < B; b++) {
        const tg = data.targets(w0 + b);
        for (let t = 0; t < T; t++) if (tg[t] >= 0) { keep.push(b * T + t); vals.push(tg[t]); }
      }
      const keys = new Float32Array(keep.length * d);
      keep.forEach((r, j) => keys.set(h.subarray(r * d, (r + 1) * d), j * d));
      files.keys.write(keys);
      files.values.write(Int32Array.from(vals));
      files.positions.write(Int32Array.from(keep, (r) => w0 * T + r));
      if (index) index.add(BigUint64Array.from(keep, (_, j) => BigInt(done + j)), keys, 1);
      done += keep.length;
      opts.onProgress?.({ windowsDone: w0 + B, windows: data.count, phase: 'keys' });
    }
    const written = { keys: files.keys.commit(), values: files.values.commit(), positions: files.positions.commit() };
    const record: KnnManifest['files'] = { [FILES.keys]: written.keys, [FILES.values]: written.values, [FILES.positions]: written.positions };
    if (index) {
      opts.onProgress?.({ windowsDone: data.count, windows: data.count, phase: 'index' });
      const file = path.join(opts.out, FILES.index);
      const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
      index.save(tmp);
      const fd = fs.openSync(tmp, 'r+');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, file);
      record[FILES.index] = { bytes: fs.statSync(file).size, sha256: sha256File(file) };
    } else {
      fs.rmSync(path.join(opts.out, FILES.index), { force: true });
    }
    fsyncDir(opts.out);
    const manifest: KnnManifest = {
      format: KNN_FORMAT, version: KNN_VERSION, created: new Date().toISOString(),
      keyModel: { source: opts.source ? path.resolve(opts.source) : null, sha256: opts.source ? teacherHashFromDir(opts.source) : teacherHashFromModel(model), layer, hiddenSize: d, family: model.config.family },
      tokenizer: { sha256: tokenizerHash(model.tokenizer) },
      data: { sha256: dataHash(data), seqLen: T, windows: data.count },
      vocab: model.config.vocabSize, entries: done, dim: d, metric: 'l2sq', k, temperature: 1,
      index: kind === 'hnsw' ? { kind, file: FILES.index, ...hp } : { kind, file: null },
      files: record,
    };
    // τ from the store itself: opened once without the manifest's τ, then the manifest written with it
    const provisional = new KnnStore(opts.out, manifest, { verify: false });
    opts.onProgress?.({ windowsDone: data.count, windows: data.count, phase: 'temperature' });
    manifest.temperature = autoTemperature(provisional, k);
    if (provisional.hasIndex) Object.assign(manifest.index, indexRecall(provisional, k));
    provisional.close();
    writeJsonAtomic(path.join(opts.out, KNN_MANIFEST), manifest);
    return KnnStore.open(opts.out, { verify: false });
  } catch (e) {
    for (const f of Object.values(files)) f.abort();
    throw e;
  }
}

/** Up to `max` of a store's entries, evenly spaced: their numbers and their keys as queries. */
function sampleEntries(store: KnnStore, max: number): { n: number; idx: Int32Array; q: Float32Array } {
  const n = Math.min(max, store.entries);
  const idx = Int32Array.from({ length: n }, (_, i) => Math.floor((i * store.entries) / n));
  const q = new Float32Array(n * store.dim);
  idx.forEach((j, i) => q.set(store.keys.subarray(j * store.dim, (j + 1) * store.dim), i * store.dim));
  return { n, idx, q };
}

/**
 * τ for a store: the median over up to 512 entries (evenly spaced) of d_k − d_1 among each one's k nearest other
 * entries (exact search), so that the k-th neighbour weighs about e^−1 of the nearest. 1 when the distances are all
 * equal (a degenerate store).
 */
export function autoTemperature(store: KnnStore, k: number): number {
  const { n, idx, q } = sampleEntries(store, 512);
  const kk = Math.min(k, store.entries - 1);
  const r = store.search(q, n, kk, { exact: true, excludeEntries: idx });
  const gaps: number[] = [];
  for (let i = 0; i < n; i++) if (r.counts[i] > 0) gaps.push(r.distances[i * kk + r.counts[i] - 1] - r.distances[i * kk]);
  gaps.sort((a, b) => a - b);
  const med = gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0;
  return med > 0 && Number.isFinite(med) ? med : 1;
}

/**
 * Recall@k of the HNSW index against exact search, on up to 256 of the store's entries (evenly spaced, each leaving
 * itself out): the fraction of the exact k nearest distances that the index finds (ties at the k-th count as found).
 */
export function indexRecall(store: KnnStore, k: number): { recall: number; recallQueries: number } {
  const { n, idx, q } = sampleEntries(store, 256);
  const kk = Math.min(k, store.entries - 1);
  const a = store.search(q, n, kk, { excludeEntries: idx }), e = store.search(q, n, kk, { exact: true, excludeEntries: idx });
  return { recall: recallByDistance(a, e), recallQueries: n };
}

/** The fraction of `exact`'s neighbours that `approx` finds, by distance (within 1e−5 relative of the k-th). */
export function recallByDistance(approx: SearchResult, exact: SearchResult): number {
  const k = exact.k;
  let hit = 0, total = 0;
  for (let i = 0; i < exact.counts.length; i++) {
    const c = exact.counts[i];
    if (c === 0) continue;
    const kth = exact.distances[i * k + c - 1];
    total += c;
    let h = 0;
    for (let j = 0; j < approx.counts[i]; j++) if (approx.distances[i * approx.k + j] <= kth * (1 + 1e-5) + 1e-7) h++;
    hit += Math.min(c, h);
  }
  return total ? hit / total : 1;
}

export interface SearchResult {
  /** n × k entry numbers (−1 past counts[i]) */
  entries: Int32Array;
  /** n × k squared L2 distances, ascending per query (Infinity past counts[i]) */
  distances: Float32Array;
  /** neighbours found per query (k unless the store is smaller) */
  counts: Int32Array;
  k: number;
}

export interface SearchOptions {
  /** exact search even where the store has an HNSW index */
  exact?: boolean;
  /** per query, an entry number to leave out (its own entry; −1: none) */
  excludeEntries?: Int32Array;
}

/** An opened datastore (see the module comment). */
export class KnnStore {
  readonly keys: Float32Array;
  readonly values: Int32Array;
  readonly positions: Int32Array;
  readonly norms: Float32Array;
  private index?: InstanceType<Usearch['Index']>;

  constructor(readonly dir: string, readonly manifest: KnnManifest, opts: { verify: boolean }) {
    const m = manifest;
    const read = <A extends Float32Array | Int32Array>(name: string, make: (b: ArrayBuffer, n: number) => A, per: number): A => {
      const file = path.join(dir, name);
      const want = m.files[name];
      if (!want) throw new Err(`kNN store ${dir}: ${KNN_MANIFEST} lists no file ${name}`);
      if (!fs.existsSync(file)) throw new Err(`kNN store ${dir}: ${name} is missing`);
      const size = fs.statSync(file).size;
      if (size !== want.bytes || size !== m.entries * per * 4) {
        throw new Err(`kNN store ${dir}: ${name} has ${size} bytes; the manifest says ${want.bytes} (${m.entries} entries × ${per} × 4)`, 'the store is damaged or was not completely written: rebuild it (undo-native knn-store build)');
      }
      const buf = fs.readFileSync(file);
      if (opts.verify && crypto.createHash('sha256').update(buf).digest('hex') !== want.sha256) {
        throw new Err(`kNN store ${dir}: ${name} does not match its sha256 in the manifest`, 'the store is damaged: rebuild it');
      }
      const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer;
      return make(ab, m.entries * per);
    };
    if (os.endianness() !== 'LE') throw new Err('kNN stores are little-endian; this machine is big-endian');
    this.keys = read(FILES.keys, (b, n) => new Float32Array(b, 0, n), m.dim);
    this.values = read(FILES.values, (b, n) => new Int32Array(b, 0, n), 1);
    this.positions = read(FILES.positions, (b, n) => new Int32Array(b, 0, n), 1);
    for (let j = 0; j < m.entries; j++) {
      if (!(this.values[j] >= 0 && this.values[j] < m.vocab)) throw new Err(`kNN store ${dir}: entry ${j} has value ${this.values[j]}, outside the vocabulary (${m.vocab})`);
    }
    this.norms = new Float32Array(m.entries);
    for (let j = 0, d = m.dim; j < m.entries; j++) {
      let s = 0;
      for (let i = j * d; i < (j + 1) * d; i++) s += this.keys[i] * this.keys[i];
      this.norms[j] = s;
    }
    if (m.index.kind === 'hnsw') {
      const file = path.join(dir, m.index.file ?? FILES.index);
      const want = m.files[m.index.file ?? FILES.index];
      if (!fs.existsSync(file) || !want) throw new Err(`kNN store ${dir}: the HNSW index ${m.index.file} is missing`, 'rebuild the store');
      if (fs.statSync(file).size !== want.bytes) throw new Err(`kNN store ${dir}: ${m.index.file} has ${fs.statSync(file).size} bytes, the manifest says ${want.bytes}`, 'rebuild the store');
      if (opts.verify && sha256File(file) !== want.sha256) throw new Err(`kNN store ${dir}: ${m.index.file} does not match its sha256`, 'rebuild the store');
      const U = usearch();
      this.index = new U.Index({ dimensions: m.dim, metric: U.MetricKind.L2sq, quantization: U.ScalarKind.F32, connectivity: m.index.connectivity ?? DEFAULT_HNSW.connectivity, expansion_add: m.index.expansionAdd ?? DEFAULT_HNSW.expansionAdd, expansion_search: m.index.expansionSearch ?? DEFAULT_HNSW.expansionSearch, multi: false });
      // load (not view): a loaded index reserves its search contexts for every hardware thread
      this.index.load(file);
      if (this.index.size() !== m.entries) throw new Err(`kNN store ${dir}: the index holds ${this.index.size()} vectors, the store ${m.entries}`, 'rebuild the store');
    }
  }

  /** Open a store; `verify` (default true) checks every file's sha256. Errors name the store and the file. */
  static open(dir: string, opts: { verify?: boolean } = {}): KnnStore {
    const mf = path.join(dir, KNN_MANIFEST);
    if (!fs.existsSync(mf)) throw new Err(`${dir} is not a kNN store (no ${KNN_MANIFEST})`, 'build one with undo-native knn-store build');
    const m = readJson<KnnManifest>(mf, 'kNN store manifest', 'ERR_TEACHER_STORE');
    if (m.format !== KNN_FORMAT) throw new Err(`${mf}: field "format" is ${JSON.stringify(m.format)}, expected "${KNN_FORMAT}"`);
    if (m.version !== KNN_VERSION) throw new Err(`${mf}: store version ${m.version} is not supported (this build reads version ${KNN_VERSION})`);
    for (const f of ['entries', 'dim', 'vocab', 'k'] as const) {
      if (!(Number.isInteger(m[f]) && m[f] > 0)) throw new Err(`${mf}: field "${f}" must be a positive integer, got ${JSON.stringify(m[f])}`);
    }
    if (!(m.temperature > 0)) throw new Err(`${mf}: field "temperature" must be > 0, got ${JSON.stringify(m.temperature)}`);
    if (m.index?.kind !== 'exact' && m.index?.kind !== 'hnsw') throw new Err(`${mf}: field "index.kind" must be "exact" or "hnsw", got ${JSON.stringify(m.index?.kind)}`);
    return new KnnStore(dir, m, { verify: opts.verify ?? true });
  }

  get entries(): number { return this.manifest.entries; }
  get dim(): number { return this.manifest.dim; }
  get vocab(): number { return this.manifest.vocab; }
  get hasIndex(): boolean { return this.index !== undefined; }

  close(): void {
    this.index = undefined;
  }

  /** Entry numbers of stream positions (−1 where the position has no entry, e.g. a masked target). */
  entriesAt(positions: ArrayLike<number>): Int32Array {
    const out = new Int32Array(positions.length);
    const P = this.positions;
    for (let i = 0; i < positions.length; i++) {
      const x = positions[i];
      let lo = 0, hi = P.length - 1, found = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (P[mid] === x) { found = mid; break; }
        if (P[mid] < x) lo = mid + 1; else hi = mid - 1;
      }
      out[i] = found;
    }
    return out;
  }

  /** The k nearest entries of n queries (n × dim), ascending by squared L2 distance. */
  search(queries: Float32Array, n: number, k: number, opts: SearchOptions = {}): SearchResult {
    const d = this.dim;
    if (!Number.isInteger(k) || k < 1) throw new Err(`kNN search: k must be a positive integer, got ${k}`);
    if (queries.length !== n * d) throw new Err(`kNN search: ${queries.length} query values for ${n} queries of dimension ${d}`);
    const ex = opts.excludeEntries;
    if (ex && ex.length !== n) throw new Err(`kNN search: excludeEntries has ${ex.length} entries for ${n} queries`);
    const out: SearchResult = { entries: new Int32Array(n * k).fill(-1), distances: new Float32Array(n * k).fill(Infinity), counts: new Int32Array(n), k };
    if (n === 0) return out;
    const extra = ex ? 1 : 0;
    const want = Math.min(k + extra, this.entries);
    if (this.index && !opts.exact) {
      const m = this.index.search(queries, want, 0) as { keys: BigUint64Array; distances: Float32Array; counts: BigUint64Array };
      for (let i = 0; i < n; i++) {
        const c = Number(m.counts[i]);
        let o = 0;
        for (let j = 0; j < c && o < k; j++) {
          const e = Number(m.keys[i * want + j]);
          if (ex && e === ex[i]) continue;
          out.entries[i * k + o] = e;
          out.distances[i * k + o] = Math.max(0, m.distances[i * want + j]);
          o++;
        }
        out.counts[i] = o;
      }
      return out;
    }
    // candidates by the GEMM's expanded distance (its float32 error grows with ‖q‖² + ‖k‖², not with d), then the
    // 2k + 8 best of them re-measured directly in float64 and the k nearest kept
    const kc = Math.min(this.entries, 2 * k + 8);
    const cand: SearchResult = { entries: new Int32Array(n * kc).fill(-1), distances: new Float32Array(n * kc).fill(Infinity), counts: new Int32Array(n), k: kc };
    this.exactSearch(queries, n, kc, ex, cand);
    const order = Array.from({ length: kc }, (_, j) => j);
    const dist = new Float64Array(kc);
    for (let i = 0; i < n; i++) {
      const c = cand.counts[i];
      for (let j = 0; j < c; j++) {
        const e = cand.entries[i * kc + j];
        let s2 = 0;
        for (let x = 0; x < d; x++) {
          const diff = queries[i * d + x] - this.keys[e * d + x];
          s2 += diff * diff;
        }
        dist[j] = s2;
      }
      const ord = order.slice(0, c).sort((a, b) => dist[a] - dist[b] || cand.entries[i * kc + a] - cand.entries[i * kc + b]);
      const m = Math.min(k, c);
      for (let j = 0; j < m; j++) {
        out.entries[i * k + j] = cand.entries[i * kc + ord[j]];
        out.distances[i * k + j] = dist[ord[j]];
      }
      out.counts[i] = m;
    }
    return out;
  }

  /** Brute force: distances by GEMM in blocks of entries, a bounded insertion list per query. */
  private exactSearch(queries: Float32Array, n: number, k: number, ex: Int32Array | undefined, out: SearchResult): void {
    const d = this.dim, N = this.entries;
    const qn = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let c = i * d; c < (i + 1) * d; c++) s += queries[c] * queries[c];
      qn[i] = s;
    }
    const QB = Math.min(n, 256), EB = Math.max(1, Math.min(N, Math.floor((1 << 22) / QB)));
    const dots = new Float32Array(QB * EB);
    const bestD = out.distances, bestE = out.entries, cnt = out.counts;
    for (let q0 = 0; q0 < n; q0 += QB) {
      const nq = Math.min(QB, n - q0);
      for (let e0 = 0; e0 < N; e0 += EB) {
        const ne = Math.min(EB, N - e0);
        // dots[i, j] = q_i · key_(e0 + j)
        native.gemmSync(false, true, nq, ne, d, 1, queries.subarray(q0 * d, (q0 + nq) * d), d, this.keys.subarray(e0 * d, (e0 + ne) * d), d, 0, dots, ne);
        for (let i = 0; i < nq; i++) {
          const qi = q0 + i, base = qi * k, skip = ex ? ex[qi] : -1;
          let c = cnt[qi];
          let worst = c === k ? bestD[base + k - 1] : Infinity;
          const row = i * ne;
          for (let j = 0; j < ne; j++) {
            const e = e0 + j;
            let dist = qn[qi] + this.norms[e] - 2 * dots[row + j];
            if (dist < 0) dist = 0;
            if (dist >= worst || e === skip) continue; // ties keep the earlier (lower) entry
            let p = c < k ? c++ : k - 1;
            while (p > 0 && bestD[base + p - 1] > dist) {
              bestD[base + p] = bestD[base + p - 1];
              bestE[base + p] = bestE[base + p - 1];
              p--;
            }
            bestD[base + p] = dist;
            bestE[base + p] = e;
            if (c === k) worst = bestD[base + k - 1];
          }
          cnt[qi] = c;
        }
      }
    }
  }
}

export interface KnnTeacherOptions {
  /** neighbours (default: the store's k) */
  k?: number;
  /** τ (default: the store's) */
  temperature?: number;
  /** weight of p_kNN in λ·p_kNN + (1 − λ)·p_LM (default 1: the kNN distribution alone) */
  lambda?: number;
  /** exact search even with an HNSW index */
  exact?: boolean;
}

/**
 * log p_kNN over the vocabulary for each query (rows × vocab; −inf outside the neighbours' tokens), from a search
 * result: p(y) ∝ Σ_j 1[v_j = y]·exp(−d_j/τ). A query with no neighbour gets the uniform distribution.
 */
export function knnLogProbs(values: Int32Array, r: SearchResult, rows: number, vocab: number, temperature: number, out?: Float32Array, row0 = 0): Float32Array {
  const o = out ?? new Float32Array(rows * vocab);
  const k = r.k;
  const acc = new Float64Array(k);
  for (let i = 0; i < rows; i++) {
    const q = row0 + i, base = q * k, c = r.counts[q];
    const orow = o.subarray(i * vocab, (i + 1) * vocab);
    if (c === 0) { orow.fill(-Math.log(vocab)); continue; }
    orow.fill(-Infinity);
    const d0 = r.distances[base];
    let z = 0;
    for (let j = 0; j < c; j++) z += acc[j] = Math.exp(-(r.distances[base + j] - d0) / temperature);
    // sums per token in float64, then log
    const tokens = new Map<number, number>();
    for (let j = 0; j < c; j++) {
      const v = values[r.entries[base + j]];
      tokens.set(v, (tokens.get(v) ?? 0) + acc[j]);
    }
    for (const [v, s] of tokens) orow[v] = Math.log(s / z);
  }
  return o;
}

/**
 * The kNN teacher of a distillation run: the store, its key model, and the settings. For each batch `prepare`
 * runs the key model, searches every row (excluding the row's own entry when the batch comes from the store's
 * data) and keeps the result; `rows` then yields the teacher's log-probabilities for any chunk of rows.
 */
export class KnnTeacher {
  readonly k: number;
  readonly temperature: number;
  readonly lambda: number;
  readonly exact: boolean;
  private last?: SearchResult;
  private sameDataMemo = new WeakMap<PackedDataset, boolean>();

  constructor(readonly store: KnnStore, readonly keyModel: Model, opts: KnnTeacherOptions = {}) {
    const m = store.manifest;
    if (keyModel.config.hiddenSize !== m.dim) throw new Err(`kNN store ${store.dir} holds keys of dimension ${m.dim}; the key model's hidden size is ${keyModel.config.hiddenSize}`);
    if (keyModel.config.vocabSize !== m.vocab) throw new Err(`kNN store ${store.dir} has vocab ${m.vocab}; the key model ${keyModel.config.vocabSize}`);
    if (tokenizerHash(keyModel.tokenizer) !== m.tokenizer.sha256) throw new Err(`kNN store ${store.dir} was built with another tokenizer than the key model's`);
    resolveLayer(m.keyModel.layer, keyModel.config.numLayers);
    this.k = opts.k ?? m.k;
    this.temperature = opts.temperature ?? m.temperature;
    this.lambda = opts.lambda ?? 1;
    this.exact = !!opts.exact;
    if (!Number.isInteger(this.k) || this.k < 1) throw new Err(`kNN teacher: k must be a positive integer, got ${this.k}`);
    if (!(this.temperature > 0 && Number.isFinite(this.temperature))) throw new Err(`kNN teacher: temperature must be finite and > 0, got ${this.temperature}`);
    if (!(this.lambda >= 0 && this.lambda <= 1)) throw new Err(`kNN teacher: λ must be in [0, 1], got ${this.lambda}`);
  }

  /** Whether `data` is the data the store was built on (then queries leave their own entry out). */
  sameData(data: PackedDataset): boolean {
    let same = this.sameDataMemo.get(data);
    if (same === undefined) {
      // the hash reads the whole token stream: once per data set (the CLI reports it, distill() uses it)
      const m = this.store.manifest.data;
      same = data.seqLen === m.seqLen && data.count === m.windows && dataHash(data) === m.sha256;
      this.sameDataMemo.set(data, same);
    }
    return same;
  }

  /**
   * Search the neighbours of every row of a batch. `windows`: the batch's window numbers in the store's data
   * (leave-one-out), or null for data the store does not hold.
   */
  async prepare(b: Batch, windows: Int32Array | null): Promise<SearchResult> {
    const layer = this.store.manifest.keyModel.layer;
    const rows = b.B * b.T;
    const q = await keysFor(this.keyModel, b.inputs, b.B, b.T, layer);
    let exclude: Int32Array | undefined;
    if (windows) {
      const pos = new Int32Array(rows);
      for (let r = 0; r < b.B; r++) for (let t = 0; t < b.T; t++) pos[r * b.T + t] = windows[r] * b.T + t;
      exclude = this.store.entriesAt(pos);
    }
    const r = this.store.search(q, rows, this.k, { exact: this.exact, excludeEntries: exclude });
    this.last = r;
    return r;
  }

  /** The teacher's log-probabilities for rows [row0, row0 + n) of the last prepared batch (n × vocab). */
  async rows(row0: number, n: number, out?: Float32Array): Promise<Float32Array> {
    if (!this.last) throw new Err('KnnTeacher.rows: call prepare(batch) first');
    const V = this.store.vocab;
    const o = knnLogProbs(this.store.values, this.last, n, V, this.temperature, out, row0);
    if (this.lambda < 1) {
      // p = λ·p_kNN + (1 − λ)·softmax(key-model logits): the key model's forward of prepare() is still current
      const z = await this.keyModel.native.logits(Int32Array.from({ length: n }, (_, i) => row0 + i));
      const lam = this.lambda;
      for (let i = 0; i < n; i++) {
        let m = -Infinity;
        for (let v = 0; v < V; v++) m = Math.max(m, z[i * V + v]);
        let s = 0;
        for (let v = 0; v < V; v++) s += Math.exp(z[i * V + v] - m);
        const ls = Math.log(s) + m;
        for (let v = 0; v < V; v++) {
          const lp = z[i * V + v] - ls;
          const lk = o[i * V + v];
          const a = Math.log1p(-lam) + lp;
          o[i * V + v] = lam === 0 || lk === -Infinity ? a : logAdd(Math.log(lam) + lk, a);
        }
      }
    }
    return o;
  }
}

function logAdd(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  return a > b ? a + Math.log1p(Math.exp(b - a)) : b + Math.log1p(Math.exp(a - b));
}
