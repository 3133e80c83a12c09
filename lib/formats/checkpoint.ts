/**
 * Hugging Face checkpoints on disk: one `model.safetensors`, or shards named
 * `model-00001-of-00003.safetensors` listed by `model.safetensors.index.json`
 * ({"metadata": {"total_size": N}, "weight_map": {tensor name: shard file}}).
 *
 * Reading (CheckpointReader): only the headers are parsed into JS objects, and every shard's header
 * is validated (offsets in bounds, consistent with shape × dtype, no overlap, header length within
 * the file) when the checkpoint is opened, before any tensor data is read. Tensor data then goes
 * straight from the file into the caller's Float32Array (e.g. a view of native memory): F32 with one
 * fs.readSync into the destination's bytes, BF16/F16/F64 in bounded chunks through one reusable
 * buffer, converted exactly. A destination may take a column range of a source and/or its transpose
 * (ReadOptions), which is what name-mapping converters need (e.g. HF Conv1D [in, out] → [out, in],
 * a fused [d, 3d] projection split into three).
 *
 * Writing (writeCheckpoint): tensors in the given order are packed greedily into shards of at most
 * `maxShardSize` bytes of tensor data (HF's rule: a tensor larger than the limit gets a shard of its
 * own), one `model.safetensors` when everything fits, else shards plus the index.
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, describeError, errorClass } from '../core/errors';
import { fsyncDir, readJson, writeJsonAtomic } from '../core/fsutil';
import {
  formatShape, HOST_LE, f16ToF32BitsTable, openForRead, product, readFully, readSafetensorsHeader, SafetensorsHeader,
  WritableDType, WriteTensor, writeSafetensorsStream, writtenByteLength,
} from './safetensors';

/** Errors of this module: code ERR_SAFETENSORS unless one names another. */
const Err = errorClass('ERR_SAFETENSORS');
const ArgumentError = errorClass('ERR_ARGUMENT');
const NotFoundError = errorClass('ERR_NOT_FOUND');

/** The single-file weights name. */
export const SINGLE_FILE = 'model.safetensors';
/** The shard index name. */
export const INDEX_FILE = 'model.safetensors.index.json';
/** Default largest shard (tensor bytes), as Hugging Face's save_pretrained: "5GB". */
export const DEFAULT_MAX_SHARD_SIZE = 5_000_000_000;

// ---------------------------------------------------------------------------------------------
// Sizes and dtypes
// ---------------------------------------------------------------------------------------------

const SIZE_UNITS: Readonly<Record<string, number>> = {
  B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40,
};

/**
 * A byte count from a number or a string such as "5GB", "500MB", "1.5GiB" or "123456" (as Hugging
 * Face reads max_shard_size: KB/MB/GB are powers of 10, KiB/MiB/GiB powers of 2). `what` names the
 * option in the error message.
 */
export function parseSize(v: number | string, what = 'size'): number {
  let n: number;
  if (typeof v === 'number') {
    n = v;
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
    const unit = m ? SIZE_UNITS[(m[2] || 'B').toUpperCase()] : undefined;
    if (!m || unit === undefined) {
      throw new ArgumentError(`${what}: cannot read ${JSON.stringify(v)} as a size`, 'give bytes, or a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. "2GB"');
    }
    n = Math.floor(Number(m[1]) * unit);
  }
  if (!Number.isSafeInteger(n) || n < 1) throw new ArgumentError(`${what}: must be a positive whole number of bytes, got ${JSON.stringify(v)}`);
  return n;
}

/** The torch dtype names of config.json's torch_dtype that undo-native can write. */
export type TorchDType = 'float32' | 'bfloat16' | 'float16';
/** Safetensors dtype for each writable torch dtype. */
export const TORCH_TO_SAFETENSORS: Readonly<Record<TorchDType, WritableDType>> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };

/** Check a torch dtype name (e.g. a save option); `what` names it in the error. */
export function parseTorchDType(v: unknown, what = 'dtype'): TorchDType {
  if (v === 'float32' || v === 'bfloat16' || v === 'float16') return v;
  throw new ArgumentError(`${what}: unsupported dtype ${JSON.stringify(v)}`, 'choose float32, bfloat16 or float16');
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/** Float dtypes the reader converts to float32. */
const READ_DTYPES: ReadonlySet<string> = new Set(['F32', 'BF16', 'F16', 'F64']);

/** True for the dtypes readInto accepts (F32, BF16, F16, F64). */
export function readableAsF32(dtype: string): boolean {
  return READ_DTYPES.has(dtype);
}
/** Raw bytes read per chunk when converting (16 MiB). */
const READ_CHUNK_BYTES = 1 << 24;

/** One tensor of a checkpoint, from its shard's header. */
export interface CheckpointTensorInfo {
  name: string;
  /** Dtype stored on disk, e.g. "BF16". */
  dtype: string;
  shape: number[];
  /** Path of the shard holding it. */
  file: string;
  numel: number;
  /** Bytes on disk. */
  byteLength: number;
}

/** One weights file of a checkpoint. */
export interface ShardInfo {
  /** Path of the shard. */
  file: string;
  /** Size of the file in bytes. */
  bytes: number;
  /** Tensors the checkpoint takes from it. */
  tensors: number;
}

/**
 * How a destination takes a source tensor. With neither field the source is copied as is (any rank).
 * `columns` and `transpose` apply to a 2-D source [rows, cols] (columns also to a 1-D one, as one row).
 */
export interface ReadOptions {
  /** Only columns [begin, end) of each row: one part of a fused matrix (or of a 1-D bias). */
  columns?: readonly [number, number];
  /** Write the (selected) source transposed: [rows, cols] → [cols, rows]. */
  transpose?: boolean;
}

interface Entry extends CheckpointTensorInfo {
  /** Absolute file position of the tensor's first byte. */
  pos: number;
}

/**
 * The tensors of a Hugging Face checkpoint directory (single file or sharded), headers only: data is
 * read on demand into caller-provided memory. Open with {@link CheckpointReader.open}; call close()
 * when done (it closes the shard files the reads opened).
 */
export class CheckpointReader {
  private readonly entries: Map<string, Entry>;
  private readonly fds = new Map<string, number>();
  private scratch: Buffer | undefined;
  private scratchF32: Float32Array | undefined;

  private constructor(
    /** The checkpoint directory. */
    readonly dir: string,
    /** Path of model.safetensors.index.json, or undefined for a single model.safetensors. */
    readonly indexFile: string | undefined,
    /** The weight files, sorted by name. */
    readonly shards: ShardInfo[],
    entries: Map<string, Entry>,
  ) {
    this.entries = entries;
  }

  /**
   * Open the checkpoint in `dir`: model.safetensors if present (as Hugging Face prefers it), else
   * model.safetensors.index.json and its shards. Every shard header is read and validated, and every
   * tensor the index names is checked to be in its shard, before this returns.
   */
  static open(dir: string): CheckpointReader {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new NotFoundError(`model directory ${dir} does not exist`);
    const single = path.join(dir, SINGLE_FILE);
    if (fs.existsSync(single)) {
      const header = readSafetensorsHeader(single);
      const entries = new Map<string, Entry>();
      addEntries(entries, single, header, [...header.tensors.keys()]);
      return new CheckpointReader(dir, undefined, [{ file: single, bytes: fs.statSync(single).size, tensors: entries.size }], entries);
    }
    const indexFile = path.join(dir, INDEX_FILE);
    if (!fs.existsSync(indexFile)) {
      const other = ['pytorch_model.bin', 'pytorch_model.bin.index.json', 'model.pt'].find((f) => fs.existsSync(path.join(dir, f)));
      throw new Err(`${dir}: no ${SINGLE_FILE} or ${INDEX_FILE}`,
        other ? `it holds ${other}: convert the checkpoint to safetensors first` : 'a model directory needs its weights as safetensors');
    }
    const byShard = readIndex(indexFile);
    const entries = new Map<string, Entry>();
    const shards: ShardInfo[] = [];
    for (const [shard, names] of [...byShard].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
      const file = path.join(dir, shard);
      if (!fs.existsSync(file)) {
        throw new Err(`${indexFile}: shard "${shard}" (weight_map entry for tensor "${names[0]}") does not exist in ${dir}`);
      }
      const header = readSafetensorsHeader(file);
      for (const name of names) {
        if (!header.tensors.has(name)) throw new Err(`${indexFile} maps tensor "${name}" to ${shard}, but ${file} has no tensor "${name}"`);
      }
      addEntries(entries, file, header, names);
      shards.push({ file, bytes: fs.statSync(file).size, tensors: names.length });
    }
    return new CheckpointReader(dir, indexFile, shards, entries);
  }

  /** A reader over one safetensors file (any name), as if it were a single-file checkpoint. */
  static openFile(file: string): CheckpointReader {
    const header = readSafetensorsHeader(file);
    const entries = new Map<string, Entry>();
    addEntries(entries, file, header, [...header.tensors.keys()]);
    return new CheckpointReader(path.dirname(file), undefined, [{ file, bytes: fs.statSync(file).size, tensors: entries.size }], entries);
  }

  /** Where the tensor names come from, for messages: the index file or the single weights file. */
  get source(): string {
    return this.indexFile ?? this.shards[0].file;
  }

  /** Tensor names (index order, or header order for a single file). */
  names(): string[] {
    return [...this.entries.keys()];
  }

  /** True when the checkpoint holds a tensor called `name`. */
  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Dtype, shape and shard of a tensor; an UndoError naming the checkpoint when it is absent. */
  info(name: string): CheckpointTensorInfo {
    const { pos: _pos, ...info } = this.entry(name);
    return { ...info, shape: info.shape.slice() };
  }

  /** The shape readInto produces for `name` with `opts` (checks the options against the source). */
  outputShape(name: string, opts: ReadOptions = {}): number[] {
    const e = this.entry(name);
    const where = `${e.file}: tensor "${name}" (shape ${formatShape(e.shape)})`;
    if (!opts.columns && !opts.transpose) return e.shape.slice();
    if (e.shape.length !== 2 && !(e.shape.length === 1 && !opts.transpose)) {
      throw new Err(`${where}: ${opts.transpose ? 'transpose needs a 2-D tensor' : 'a column range needs a 1-D or 2-D tensor'}`);
    }
    const rows = e.shape.length === 2 ? e.shape[0] : 1;
    const cols = e.shape[e.shape.length - 1];
    let width = cols;
    if (opts.columns) {
      const [b, end] = opts.columns;
      if (!Number.isInteger(b) || !Number.isInteger(end) || b < 0 || end < b || end > cols) {
        throw new Err(`${where}: column range [${b}, ${end}) is outside [0, ${cols})`);
      }
      width = end - b;
    }
    if (e.shape.length === 1) return [width];
    return opts.transpose ? [width, rows] : [rows, width];
  }

  /**
   * Read tensor `name` as float32 into `dest` (whose length must match the output shape), e.g. a view
   * of native memory. F32 without options is read by fs.readSync straight into dest's bytes; other
   * dtypes and options go through one reusable chunk buffer of at most 16 MiB.
   */
  readInto(name: string, dest: Float32Array, opts: ReadOptions = {}): void {
    const e = this.entry(name);
    const n = product(this.outputShape(name, opts));
    if (dest.length !== n) throw new Err(`${e.file}: tensor "${name}" gives ${n} values, but the destination holds ${dest.length}`);
    if (!readableAsF32(e.dtype)) {
      throw new Err(`${e.file}: tensor "${name}" has dtype ${e.dtype}, which cannot be read as weights`, 'supported: F32, BF16, F16, F64');
    }
    const fd = this.fd(e.file);
    if (!opts.columns && !opts.transpose) {
      if (e.dtype === 'F32' && HOST_LE) readFully(fd, new Uint8Array(dest.buffer, dest.byteOffset, dest.byteLength), e.pos, e.file);
      else this.readConverted(fd, e, dest);
      return;
    }
    this.readSelected(fd, e, dest, opts);
  }

  /** Read a (small) tensor into a new Float32Array; same options as readInto. */
  readF32(name: string, opts: ReadOptions = {}): Float32Array {
    const out = new Float32Array(product(this.outputShape(name, opts)));
    this.readInto(name, out, opts);
    return out;
  }

  /** Close the shard files opened by reads. The reader can still answer has/info afterwards. */
  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    this.scratch = undefined;
    this.scratchF32 = undefined;
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) {
      const names = this.names();
      throw new Err(`${this.source}: no tensor "${name}"`,
        names.length ? `it has ${names.length} tensors, e.g. ${names.slice(0, 5).map((n) => `"${n}"`).join(', ')}` : 'it holds no tensors');
    }
    return e;
  }

  private fd(file: string): number {
    let fd = this.fds.get(file);
    if (fd === undefined) {
      fd = openForRead(file);
      this.fds.set(file, fd);
    }
    return fd;
  }

  /** The reusable raw chunk buffer (8-byte aligned: allocUnsafeSlow starts its own ArrayBuffer). */
  private chunk(bytes: number): Buffer {
    if (!this.scratch || this.scratch.length < bytes) this.scratch = Buffer.allocUnsafeSlow(Math.max(bytes, Math.min(READ_CHUNK_BYTES, 1 << 20)));
    return this.scratch;
  }

  /** Whole tensor, converted chunk by chunk straight into dest. */
  private readConverted(fd: number, e: Entry, dest: Float32Array): void {
    const item = e.byteLength / Math.max(1, e.numel);
    const per = Math.max(1, Math.floor(READ_CHUNK_BYTES / item));
    const buf = this.chunk(Math.min(e.numel, per) * item);
    for (let i = 0; i < e.numel; i += per) {
      const count = Math.min(per, e.numel - i);
      readFully(fd, buf.subarray(0, count * item), e.pos + i * item, e.file);
      decodeF32(e.dtype, buf, count, dest.subarray(i, i + count));
    }
  }

  /** A column range and/or transpose of a 1-D/2-D tensor, in chunks of whole rows. */
  private readSelected(fd: number, e: Entry, dest: Float32Array, opts: ReadOptions): void {
    const rows = e.shape.length === 2 ? e.shape[0] : 1;
    const cols = e.shape[e.shape.length - 1];
    const [c0, c1] = opts.columns ?? [0, cols];
    const width = c1 - c0;
    const item = e.byteLength / Math.max(1, e.numel);
    const rowBytes = cols * item;
    const per = Math.max(1, Math.floor(READ_CHUNK_BYTES / Math.max(1, rowBytes)));
    const buf = this.chunk(Math.min(rows, per) * rowBytes);
    if (!this.scratchF32 || this.scratchF32.length < Math.min(rows, per) * cols) this.scratchF32 = new Float32Array(Math.min(rows, per) * cols);
    const f = this.scratchF32;
    for (let r0 = 0; r0 < rows; r0 += per) {
      const nr = Math.min(per, rows - r0);
      readFully(fd, buf.subarray(0, nr * rowBytes), e.pos + r0 * rowBytes, e.file);
      decodeF32(e.dtype, buf, nr * cols, f.subarray(0, nr * cols));
      for (let i = 0; i < nr; i++) {
        const src = i * cols + c0;
        if (opts.transpose) {
          for (let j = 0; j < width; j++) dest[j * rows + r0 + i] = f[src + j];
        } else {
          dest.set(f.subarray(src, src + width), (r0 + i) * width);
        }
      }
    }
  }
}

/** Decode `count` little-endian values of `dtype` at the start of `buf` into `out` (exact, except F64 → float32 rounding). */
function decodeF32(dtype: string, buf: Buffer, count: number, out: Float32Array): void {
  const bits = new Uint32Array(out.buffer, out.byteOffset, count);
  if (!HOST_LE) {
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const table = f16ToF32BitsTable();
    for (let i = 0; i < count; i++) {
      if (dtype === 'F32') bits[i] = dv.getUint32(i * 4, true);
      else if (dtype === 'BF16') bits[i] = dv.getUint16(i * 2, true) << 16;
      else if (dtype === 'F16') bits[i] = table[dv.getUint16(i * 2, true)];
      else out[i] = dv.getFloat64(i * 8, true);
    }
    return;
  }
  switch (dtype) {
    case 'F32':
      out.set(new Float32Array(buf.buffer, buf.byteOffset, count));
      return;
    case 'BF16': {
      const src = new Uint16Array(buf.buffer, buf.byteOffset, count);
      for (let i = 0; i < count; i++) bits[i] = src[i] << 16;
      return;
    }
    case 'F16': {
      const table = f16ToF32BitsTable();
      const src = new Uint16Array(buf.buffer, buf.byteOffset, count);
      for (let i = 0; i < count; i++) bits[i] = table[src[i]];
      return;
    }
    default:
      out.set(new Float64Array(buf.buffer, buf.byteOffset, count));
  }
}

function addEntries(entries: Map<string, Entry>, file: string, header: SafetensorsHeader, names: readonly string[]): void {
  for (const name of names) {
    const t = header.tensors.get(name)!;
    const [begin, end] = t.dataOffsets;
    entries.set(name, {
      name, dtype: t.dtype, shape: t.shape, file, numel: product(t.shape), byteLength: end - begin, pos: header.dataStart + begin,
    });
  }
}

/** Parse model.safetensors.index.json into shard file → tensor names (in index order). */
function readIndex(indexFile: string): Map<string, string[]> {
  const json = readJson<Record<string, unknown>>(indexFile, 'checkpoint index', 'ERR_SAFETENSORS');
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new Err(`${indexFile}: not a JSON object`);
  const map = json.weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map)) throw new Err(`${indexFile}: field "weight_map" is missing or not an object`);
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
    if (typeof shard !== 'string' || !shard || shard !== path.basename(shard) || shard === '.' || shard === '..') {
      throw new Err(`${indexFile}: weight_map entry for tensor "${name}" must be a file name in the same directory, got ${JSON.stringify(shard)}`);
    }
    const list = byShard.get(shard);
    if (list) list.push(name);
    else byShard.set(shard, [name]);
  }
  if (byShard.size === 0) throw new Err(`${indexFile}: field "weight_map" lists no tensors`);
  return byShard;
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/** Options of writeCheckpoint. */
export interface CheckpointWriteOptions {
  /** Largest shard, in bytes of tensor data (number, or a string such as "2GB"); default 5GB. */
  maxShardSize?: number | string;
  /** The safetensors `__metadata__` of every file (default {format: "pt"}, as transformers writes). */
  metadata?: Readonly<Record<string, string>>;
}

/** HF's shard name: model-00001-of-00003.safetensors. */
export function shardName(i: number, n: number): string {
  return `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
}

/**
 * Group tensors (in order) into shards of at most `maxBytes` of data each: a tensor that would push the
 * current shard past the limit starts a new one; a tensor larger than the limit gets a shard to itself.
 * Returns the index lists of the shards.
 */
export function planShards(sizes: readonly number[], maxBytes: number): number[][] {
  const shards: number[][] = [];
  let cur: number[] = [];
  let bytes = 0;
  sizes.forEach((s, i) => {
    if (cur.length && bytes + s > maxBytes) {
      shards.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(i);
    bytes += s;
  });
  if (cur.length || !shards.length) shards.push(cur);
  return shards;
}

/**
 * Write tensors as a Hugging Face checkpoint into the existing directory `dir` (normally the temporary
 * directory of saveDirAtomic): model.safetensors when the data fits in one shard, else
 * model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json with total_size = the sum
 * of the tensors' byte sizes. Tensors are streamed (BF16/F16 converted in bounded chunks). Returns the
 * file names written and the total tensor bytes.
 */
export function writeCheckpoint(
  dir: string,
  tensors: ReadonlyArray<readonly [string, WriteTensor]>,
  opts: CheckpointWriteOptions = {},
): { files: string[]; totalSize: number } {
  const max = parseSize(opts.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE, 'maxShardSize');
  const metadata = opts.metadata ?? { format: 'pt' };
  const sizes = tensors.map(([, t]) => writtenByteLength(t));
  const totalSize = sizes.reduce((a, b) => a + b, 0);
  const plan = planShards(sizes, max);
  if (plan.length === 1) {
    writeSafetensorsStream(path.join(dir, SINGLE_FILE), tensors, metadata);
    fsyncDir(dir);
    return { files: [SINGLE_FILE], totalSize };
  }
  const files = plan.map((_, i) => shardName(i, plan.length));
  const weightMap: Record<string, string> = {};
  plan.forEach((idx, i) => {
    writeSafetensorsStream(path.join(dir, files[i]), idx.map((j) => tensors[j]), metadata);
    for (const j of idx) weightMap[tensors[j][0]] = files[i];
  });
  const sorted: Record<string, string> = {};
  for (const k of Object.keys(weightMap).sort()) sorted[k] = weightMap[k];
  writeJsonAtomic(path.join(dir, INDEX_FILE), { metadata: { total_size: totalSize }, weight_map: sorted });
  return { files: [...files, INDEX_FILE], totalSize };
}

