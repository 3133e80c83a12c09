/**
 * Reader and writer for the safetensors format (https://github.com/huggingface/safetensors).
 *
 * File layout:
 *   bytes [0, 8)        N, the header length, as a little-endian unsigned 64-bit integer
 *   bytes [8, 8+N)      a UTF-8 JSON object. Each key is a tensor name mapped to
 *                       { "dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end] };
 *                       the optional key "__metadata__" maps to a { string: string } object.
 *                       Writers pad the JSON with trailing spaces so that 8+N is a multiple of 8.
 *   bytes [8+N, EOF)    the data section. `data_offsets` are relative to its start; the tensors
 *                       must tile it exactly (no holes, no overlaps, nothing left over).
 *                       Tensor data is row-major and little-endian.
 *
 * Reading converts every tensor to a JS typed array:
 *   F32, F16, BF16, F64 -> Float32Array   (F32 is a zero-copy view when 4-byte aligned)
 *   I32, I64            -> Int32Array     (I64 values are checked to fit in int32)
 *   U8, BOOL            -> Uint8Array     (zero-copy view)
 * The whole file is read into a single Buffer; zero-copy views keep that Buffer alive.
 *
 * Writing supports F32, BF16 and F16 (both rounded to nearest-even from float32), I32 and U8.
 * writeSafetensors produces a list of chunks (header + one view per tensor) written back to back
 * by writeFileAtomic, so tensor data is never concatenated into one big buffer;
 * writeSafetensorsStream goes further and converts BF16/F16 in bounded chunks through one
 * reusable buffer, so no whole-tensor copy is ever made (F32 is written straight from its view).
 *
 * Every malformed input raises an UndoError whose message names the file and, where it
 * applies, the tensor.
 */
import * as fs from 'fs';
import { constants as bufferConstants } from 'buffer';
import { UndoError, describeError, errorClass } from '../core/errors';
import { writeFileAtomic } from '../core/fsutil';

/** Errors of this module: code ERR_SAFETENSORS unless one names another. */
const Err = errorClass('ERR_SAFETENSORS');
const NotFoundError = errorClass('ERR_NOT_FOUND');

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/** Dtypes this module can read. */
export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I32' | 'I64' | 'U8' | 'BOOL';
/** Dtypes this module can write. */
export type WritableDType = 'F32' | 'BF16' | 'F16' | 'I32' | 'U8';
/** In-memory representation of tensor data. */
export type TensorData = Float32Array | Int32Array | Uint8Array;

/** A decoded tensor. `dtype` is the dtype stored in the file (e.g. 'BF16' even though `data` is float32). */
export interface Tensor {
  dtype: SafetensorsDType;
  shape: number[];
  data: TensorData;
}

/** One header entry, before decoding. Offsets are relative to the start of the data section. */
export interface TensorInfo {
  dtype: string;
  shape: number[];
  dataOffsets: [number, number];
}

/** Parsed and validated header of a safetensors file. */
export interface SafetensorsHeader {
  /** Entries in file (header) order. */
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** N, the JSON header length in bytes. */
  headerLength: number;
  /** Absolute file offset of the data section (8 + N). */
  dataStart: number;
}

/** A tensor to write. `data.length` must equal the product of `shape`. */
export interface WriteTensor {
  dtype: WritableDType;
  shape: readonly number[];
  /** Float32Array for F32/BF16/F16, Int32Array for I32, Uint8Array (or Buffer) for U8. */
  data: Float32Array | Int32Array | Uint8Array;
}

/** Tensors to write: a plain object, a Map, or any iterable of [name, tensor] pairs. */
export type TensorsToWrite =
  | Readonly<Record<string, WriteTensor>>
  | ReadonlyMap<string, WriteTensor>
  | Iterable<readonly [string, WriteTensor]>;

// ---------------------------------------------------------------------------------------------
// Constants and small helpers
// ---------------------------------------------------------------------------------------------

/** Item sizes of every dtype defined by the safetensors spec (used to validate headers). */
const ITEM_SIZE: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
};
/** Bytes per element of a safetensors dtype, or undefined for a name the spec does not define. */
export function dtypeItemSize(dtype: string): number | undefined {
  return ITEM_SIZE[dtype];
}
const READABLE: ReadonlySet<string> = new Set<SafetensorsDType>(['F32', 'F16', 'BF16', 'F64', 'I32', 'I64', 'U8', 'BOOL']);
const FLOAT_DTYPES: ReadonlySet<string> = new Set(['F32', 'F16', 'BF16', 'F64']);

/** Same limit as the reference implementation: headers above 100 MB are rejected as corrupt. */
const MAX_HEADER_BYTES = 100_000_000;

/** True on little-endian hosts (all the platforms Node.js ships for); safetensors data is little-endian. */
export const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function fail(source: string, msg: string, hint?: string): never {
  throw new Err(`safetensors file ${source}: ${msg}`, { hint, file: source });
}

/** Number of elements of a shape (1 for a scalar). */
export function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** A shape as "[2, 3]", for messages. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// ---------------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------------

/**
 * Decode the 8-byte length prefix. `fileSize` is the total size of the file/buffer.
 * Returns N, already checked to fit inside the file.
 */
function parseHeaderLength(prefix: Buffer, fileSize: number, source: string): number {
  if (fileSize < 8) {
    fail(source, `file is only ${fileSize} bytes, shorter than the 8-byte header length prefix`);
  }
  const n = prefix.readBigUInt64LE(0);
  if (n > BigInt(fileSize - 8)) {
    fail(source, `header length ${n} is larger than the ${fileSize - 8} bytes that follow the length prefix`,
      'the file is truncated or is not a safetensors file');
  }
  const len = Number(n);
  if (len > MAX_HEADER_BYTES) fail(source, `header length ${len} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (len < 2) fail(source, `header length ${len} is too small to hold a JSON object`);
  return len;
}

/**
 * Parse and validate the JSON header. `dataLength` is the size of the data section; every
 * tensor must lie inside it and together they must cover it exactly.
 */
function parseHeaderJson(headerBytes: Buffer, dataLength: number, source: string): {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
} {
  let json: unknown;
  try {
    json = JSON.parse(headerBytes.toString('utf8'));
  } catch (e) {
    fail(source, `header is not valid JSON (${describeError(e)})`, 'the file is corrupt or is not a safetensors file');
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    fail(source, 'header JSON is not an object');
  }

  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
        fail(source, '"__metadata__" must be an object of string values');
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(source, `"__metadata__" entry "${k}" is not a string (got ${JSON.stringify(v)})`);
        metadata[k] = v;
      }
      continue;
    }
    const where = `tensor "${name}"`;
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail(source, `${where}: header entry is not an object`);
    const entry = raw as Record<string, unknown>;

    const dtype = entry.dtype;
    if (typeof dtype !== 'string') fail(source, `${where}: "dtype" is missing or not a string`);
    const itemSize = ITEM_SIZE[dtype];
    if (itemSize === undefined) {
      fail(source, `${where}: unknown dtype "${dtype}"`, `valid dtypes: ${Object.keys(ITEM_SIZE).join(', ')}`);
    }

    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      fail(source, `${where}: "shape" must be an array of non-negative integers (got ${JSON.stringify(shape)})`);
    }
    const offsets = entry.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt) || offsets[0] > offsets[1]) {
      fail(source, `${where}: "data_offsets" must be [begin, end] with 0 <= begin <= end (got ${JSON.stringify(offsets)})`);
    }
    const [begin, end] = offsets as [number, number];
    const numel = product(shape as number[]);
    const expected = numel * itemSize;
    if (!Number.isSafeInteger(expected) || expected !== end - begin) {
      fail(source,
        `${where}: shape ${formatShape(shape as number[])} x ${itemSize} bytes (${dtype}) = ${expected} bytes, ` +
        `but data_offsets [${begin}, ${end}] span ${end - begin} bytes`);
    }
    tensors.set(name, { dtype, shape: (shape as number[]).slice(), dataOffsets: [begin, end] });
  }

  // Layout check: tensors must tile [0, dataLength) exactly.
  const sorted = [...tensors.entries()].sort(
    (a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0] || a[1].dataOffsets[1] - b[1].dataOffsets[1],
  );
  for (const [name, info] of sorted) {
    if (info.dataOffsets[1] > dataLength) {
      fail(source,
        `file is truncated: tensor "${name}" needs data bytes up to ${info.dataOffsets[1]}, ` +
        `but the data section has only ${dataLength} bytes`);
    }
  }
  let cursor = 0;
  let prev = '';
  for (const [name, info] of sorted) {
    const [begin, end] = info.dataOffsets;
    if (begin < cursor) {
      fail(source, `tensor "${name}" (data_offsets [${begin}, ${end}]) overlaps tensor "${prev}" which ends at ${cursor}`);
    }
    if (begin > cursor) {
      fail(source,
        `hole in the data section: tensor "${name}" starts at ${begin} but the previous tensor` +
        (prev ? ` "${prev}"` : '') + ` ends at ${cursor}`);
    }
    cursor = end;
    prev = name;
  }
  if (cursor !== dataLength) {
    fail(source, `data section has ${dataLength - cursor} unexplained trailing bytes after the last tensor (ends at ${cursor}, section is ${dataLength} bytes)`);
  }
  return { tensors, metadata };
}

/** Parse and validate the header of an in-memory safetensors file. */
export function parseSafetensorsHeader(buf: Buffer, source = '<buffer>'): SafetensorsHeader {
  const headerLength = parseHeaderLength(buf, buf.length, source);
  const dataStart = 8 + headerLength;
  const { tensors, metadata } = parseHeaderJson(buf.subarray(8, dataStart), buf.length - dataStart, source);
  return { tensors, metadata, headerLength, dataStart };
}

/**
 * Read only the header of a safetensors file (cheap: does not read the tensor data).
 * Useful for listing tensor names/shapes of a large checkpoint.
 */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const fd = openForRead(path);
  try {
    const size = fs.fstatSync(fd).size;
    const prefix = Buffer.alloc(8);
    readFully(fd, prefix, 0, path);
    const headerLength = parseHeaderLength(prefix, size, path);
    const headerBytes = Buffer.alloc(headerLength);
    readFully(fd, headerBytes, 8, path);
    const dataStart = 8 + headerLength;
    const { tensors, metadata } = parseHeaderJson(headerBytes, size - dataStart, path);
    return { tensors, metadata, headerLength, dataStart };
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// File reading
// ---------------------------------------------------------------------------------------------

/** Open a safetensors file for reading; a missing file or a directory raises an UndoError naming it. */
export function openForRead(path: string): number {
  try {
    const fd = fs.openSync(path, 'r');
    if (fs.fstatSync(fd).isDirectory()) {
      fs.closeSync(fd);
      throw new Err(`safetensors file ${path} is a directory`);
    }
    return fd;
  } catch (e) {
    if (e instanceof UndoError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`safetensors file not found: ${path}`);
    if (code === 'EISDIR') throw new Err(`safetensors file ${path} is a directory`);
    throw new Err(`cannot open safetensors file ${path}: ${describeError(e)}`, { cause: e });
  }
}

/**
 * Fill `buf` from file position `pos` of the open file `fd` (`path` names it in messages); a short
 * read means the file shrank or is truncated, and raises an UndoError.
 */
export function readFully(fd: number, buf: Uint8Array, pos: number, path: string): void {
  const MAX_CHUNK = 1 << 30;
  let off = 0;
  while (off < buf.byteLength) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, off, Math.min(MAX_CHUNK, buf.byteLength - off), pos + off);
    } catch (e) {
      throw new Err(`cannot read safetensors file ${path}: ${describeError(e)}`, { cause: e });
    }
    if (n === 0) fail(path, `file is truncated: expected ${buf.byteLength + pos} bytes, could only read ${pos + off}`);
    off += n;
  }
}

/** Read a whole file into one Buffer that starts at byteOffset 0 of its own ArrayBuffer. */
function readWholeFile(path: string): Buffer {
  const fd = openForRead(path);
  try {
    const size = fs.fstatSync(fd).size;
    if (size > bufferConstants.MAX_LENGTH) {
      fail(path, `file is ${size} bytes, larger than the largest Buffer Node.js can allocate (${bufferConstants.MAX_LENGTH})`);
    }
    // allocUnsafeSlow: never taken from the shared pool, so byteOffset is 0 and the data
    // section alignment only depends on the header length.
    const buf = Buffer.allocUnsafeSlow(size);
    readFully(fd, buf, 0, path);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

let f16Table: Uint32Array | undefined;
/**
 * Lookup table from IEEE half-precision bit patterns to float32 bit patterns (built once, 256 KiB).
 * Exact for every pattern: subnormals become normal float32s, ±Inf stay ±Inf, and NaNs keep their
 * sign and payload (shifted into the top of the float32 mantissa).
 */
export function f16ToF32BitsTable(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    const f = new Float32Array(f16Table.buffer);
    for (let h = 0; h < 65536; h++) {
      const sign = (h & 0x8000) << 16;
      const exp = (h >> 10) & 0x1f;
      const mant = h & 0x3ff;
      if (exp === 0) f[h] = (h & 0x8000 ? -1 : 1) * mant * 2 ** -24; // zero / subnormal: exact in float32
      else if (exp === 31) f16Table[h] = (sign | 0x7f800000 | (mant << 13)) >>> 0;
      else f16Table[h] = (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
    }
  }
  return f16Table;
}

/** Convert IEEE half-precision bit patterns to float32 values (exact, NaN payloads kept). */
export function f16BitsToFloat32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const table = f16ToF32BitsTable();
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) bits[i] = table[src[i]];
  return out;
}

/** Copy `byteLength` bytes at `start` of `buf` into a fresh, aligned ArrayBuffer. */
function alignedCopy(buf: Buffer, start: number, byteLength: number): ArrayBuffer {
  const ab = new ArrayBuffer(byteLength);
  new Uint8Array(ab).set(buf.subarray(start, start + byteLength));
  return ab;
}

/**
 * View `count` elements of `itemSize` bytes at `start` of `buf` through the given typed-array
 * constructor, zero-copy when aligned, otherwise through an aligned copy. Host must be little-endian.
 */
function leView<T>(
  Ctor: { new (b: ArrayBufferLike, off: number, len: number): T },
  itemSize: number,
  buf: Buffer,
  start: number,
  count: number,
): T {
  const abs = buf.byteOffset + start;
  if (abs % itemSize === 0) return new Ctor(buf.buffer, abs, count);
  return new Ctor(alignedCopy(buf, start, count * itemSize), 0, count);
}

/** Decode one tensor whose data lives at `buf[start, start + numel*itemSize)`. */
function decodeTensor(buf: Buffer, start: number, info: TensorInfo, name: string, source: string): TensorData {
  const numel = product(info.shape);
  const dv = HOST_LE ? undefined : new DataView(buf.buffer, buf.byteOffset + start, info.dataOffsets[1] - info.dataOffsets[0]);
  switch (info.dtype) {
    case 'F32': {
      if (dv) {
        const out = new Float32Array(numel);
        for (let i = 0; i < numel; i++) out[i] = dv.getFloat32(i * 4, true);
        return out;
      }
      return leView(Float32Array, 4, buf, start, numel);
    }
    case 'BF16': {
      const out = new Float32Array(numel);
      const bits = new Uint32Array(out.buffer);
      if (dv) {
        for (let i = 0; i < numel; i++) bits[i] = dv.getUint16(i * 2, true) << 16;
      } else {
        const src = leView(Uint16Array, 2, buf, start, numel);
        for (let i = 0; i < numel; i++) bits[i] = src[i] << 16;
      }
      return out;
    }
    case 'F16': {
      const table = f16ToF32BitsTable();
      const out = new Float32Array(numel);
      const bits = new Uint32Array(out.buffer);
      if (dv) {
        for (let i = 0; i < numel; i++) bits[i] = table[dv.getUint16(i * 2, true)];
      } else {
        const src = leView(Uint16Array, 2, buf, start, numel);
        for (let i = 0; i < numel; i++) bits[i] = table[src[i]];
      }
      return out;
    }
    case 'F64': {
      const out = new Float32Array(numel);
      if (dv) {
        for (let i = 0; i < numel; i++) out[i] = dv.getFloat64(i * 8, true);
      } else {
        out.set(leView(Float64Array, 8, buf, start, numel));
      }
      return out;
    }
    case 'I32': {
      if (dv) {
        const out = new Int32Array(numel);
        for (let i = 0; i < numel; i++) out[i] = dv.getInt32(i * 4, true);
        return out;
      }
      return leView(Int32Array, 4, buf, start, numel);
    }
    case 'I64': {
      const out = new Int32Array(numel);
      for (let i = 0; i < numel; i++) {
        let lo: number;
        let hi: number;
        if (dv) {
          lo = dv.getInt32(i * 8, true);
          hi = dv.getInt32(i * 8 + 4, true);
        } else {
          lo = buf.readInt32LE(start + i * 8);
          hi = buf.readInt32LE(start + i * 8 + 4);
        }
        // Fits in int32 iff the high word is the sign extension of the low word.
        if (hi !== (lo < 0 ? -1 : 0)) {
          const value = (BigInt(hi) << 32n) | BigInt(lo >>> 0);
          fail(source, `tensor "${name}": I64 value ${value} at flat index ${i} does not fit in int32`);
        }
        out[i] = lo;
      }
      return out;
    }
    case 'U8':
    case 'BOOL':
      return new Uint8Array(buf.buffer, buf.byteOffset + start, numel);
    default:
      return fail(source, `tensor "${name}": dtype "${info.dtype}" is not supported by this reader`,
        `supported dtypes: ${[...READABLE].join(', ')}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Public reading API
// ---------------------------------------------------------------------------------------------

/** A fully decoded safetensors file. */
export class SafetensorsFile {
  constructor(
    /** Where the tensors came from (file path or a label), used in error messages. */
    readonly source: string,
    /** Tensors in header order. */
    readonly tensors: Map<string, Tensor>,
    /** The `__metadata__` object ({} if absent). */
    readonly metadata: Record<string, string>,
  ) {}

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** The tensor called `name`; throws an UndoError naming the file if it is absent. */
  get(name: string): Tensor {
    const t = this.tensors.get(name);
    if (!t) {
      const names = this.names();
      const shown = names.slice(0, 10).map((n) => `"${n}"`).join(', ');
      fail(this.source, `no tensor named "${name}"`,
        names.length ? `it has ${names.length} tensors: ${shown}${names.length > 10 ? ', ...' : ''}` : 'the file holds no tensors');
    }
    return t;
  }

  /**
   * The data of a floating-point tensor (F32/F16/BF16/F64) as float32. Optionally checks
   * the shape. Integer tensors are rejected rather than silently converted.
   */
  readTensorF32(name: string, expectedShape?: readonly number[]): Float32Array {
    const t = this.get(name);
    if (!FLOAT_DTYPES.has(t.dtype)) {
      fail(this.source, `tensor "${name}" has dtype ${t.dtype}, expected a floating-point dtype (F32, F16, BF16, F64)`);
    }
    if (expectedShape && (expectedShape.length !== t.shape.length || expectedShape.some((d, i) => d !== t.shape[i]))) {
      fail(this.source, `tensor "${name}" has shape ${formatShape(t.shape)}, expected ${formatShape(expectedShape)}`);
    }
    return t.data as Float32Array;
  }
}

/** Decode an in-memory safetensors file. `source` names it in error messages. */
export function parseSafetensors(buf: Buffer, source = '<buffer>'): SafetensorsFile {
  const header = parseSafetensorsHeader(buf, source);
  const tensors = new Map<string, Tensor>();
  for (const [name, info] of header.tensors) {
    const data = decodeTensor(buf, header.dataStart + info.dataOffsets[0], info, name, source);
    tensors.set(name, { dtype: info.dtype as SafetensorsDType, shape: info.shape, data });
  }
  return new SafetensorsFile(source, tensors, header.metadata);
}

/** Read and decode a safetensors file (one Buffer read; see the module comment for dtype handling). */
export function readSafetensors(path: string): SafetensorsFile {
  return parseSafetensors(readWholeFile(path), path);
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/**
 * Convert float32 values to bfloat16 bit patterns with round-to-nearest-even.
 * NaNs stay NaN (quiet NaN with the same sign); values that round past the largest
 * finite bf16 become ±Infinity, as IEEE rounding requires.
 */
export function float32ToBf16Bits(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const u = bits[i];
    if ((u & 0x7fffffff) > 0x7f800000) {
      out[i] = (u >>> 16) | 0x0040; // NaN: keep sign, force the quiet bit
    } else {
      out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

/** Convert bfloat16 bit patterns to float32 values (exact). */
export function bf16BitsToFloat32(src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

/**
 * Convert float32 values to IEEE half-precision bit patterns with round-to-nearest-even.
 * Results below the smallest subnormal round to ±0, those at or past 65520 to ±Infinity;
 * NaNs stay NaN (quiet, same sign, top payload bits kept).
 */
export function float32ToF16Bits(src: Float32Array, out: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const u = bits[i];
    const sign = (u >>> 16) & 0x8000;
    const a = u & 0x7fffffff;
    if (a > 0x7f800000) {
      out[i] = sign | 0x7e00 | ((a >>> 13) & 0x3ff); // NaN
    } else if (a >= 0x477ff000) {
      out[i] = sign | 0x7c00; // 65520 is the midpoint between 65504 and 2^16: ties-to-even rounds up
    } else if (a >= 0x38800000) {
      // normal: rebias the exponent (127 → 15) and round the 13 dropped mantissa bits to nearest-even;
      // a carry out of the mantissa correctly bumps the exponent
      const v = a - 0x38000000;
      out[i] = sign | ((v + 0x0fff + ((v >>> 13) & 1)) >>> 13);
    } else {
      // subnormal half (or zero): the value in units of 2^-24, rounded to nearest-even (1024 = smallest normal)
      const y = Math.abs(src[i]) * 2 ** 24;
      let m = Math.floor(y);
      const frac = y - m;
      if (frac > 0.5 || (frac === 0.5 && (m & 1) === 1)) m++;
      out[i] = sign | m;
    }
  }
  return out;
}

function entriesOf(tensors: TensorsToWrite): Iterable<readonly [string, WriteTensor]> {
  if (tensors instanceof Map) return tensors.entries();
  if (typeof (tensors as Iterable<unknown>)[Symbol.iterator] === 'function') {
    return tensors as Iterable<readonly [string, WriteTensor]>;
  }
  return Object.entries(tensors as Record<string, WriteTensor>);
}

/** Little-endian bytes of one tensor: a zero-copy view where possible. */
function tensorBytes(t: WriteTensor): Uint8Array {
  const d = t.data;
  if (t.dtype === 'BF16' || t.dtype === 'F16') {
    const h = t.dtype === 'BF16' ? float32ToBf16Bits(d as Float32Array) : float32ToF16Bits(d as Float32Array);
    if (!HOST_LE) for (let i = 0; i < h.length; i++) h[i] = ((h[i] & 0xff) << 8) | (h[i] >>> 8);
    return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
  }
  if (t.dtype === 'U8' || HOST_LE) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  // Big-endian host: byte-swap into a copy.
  const out = new Uint8Array(d.byteLength);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < d.length; i++) {
    if (t.dtype === 'F32') dv.setFloat32(i * 4, d[i], true);
    else dv.setInt32(i * 4, d[i], true);
  }
  return out;
}

const EXPECTED_ARRAY: Record<WritableDType, { ctor: Function; label: string; itemSize: number }> = {
  F32: { ctor: Float32Array, label: 'Float32Array', itemSize: 4 },
  BF16: { ctor: Float32Array, label: 'Float32Array', itemSize: 2 },
  F16: { ctor: Float32Array, label: 'Float32Array', itemSize: 2 },
  I32: { ctor: Int32Array, label: 'Int32Array', itemSize: 4 },
  U8: { ctor: Uint8Array, label: 'Uint8Array', itemSize: 1 },
};

/** Check the tensors to write and sort them by name (JS string order). */
function checkedWriteList(tensors: TensorsToWrite, source: string): Array<[string, WriteTensor]> {
  const list: Array<[string, WriteTensor]> = [];
  const seen = new Set<string>();
  for (const [name, t] of entriesOf(tensors)) {
    if (typeof name !== 'string' || name.length === 0) fail(source, `tensor names must be non-empty strings (got ${JSON.stringify(name)})`);
    if (name === '__metadata__') fail(source, 'a tensor cannot be called "__metadata__"');
    if (seen.has(name)) fail(source, `duplicate tensor name "${name}"`);
    seen.add(name);
    const where = `tensor "${name}"`;
    if (!t || typeof t !== 'object') fail(source, `${where}: expected { dtype, shape, data }`);
    const spec = EXPECTED_ARRAY[t.dtype as WritableDType];
    if (!spec) fail(source, `${where}: cannot write dtype ${JSON.stringify(t.dtype)}`, 'writable dtypes: F32, BF16, F16, I32, U8');
    if (!Array.isArray(t.shape) || !t.shape.every(isNonNegInt)) {
      fail(source, `${where}: shape must be an array of non-negative integers (got ${JSON.stringify(t.shape)})`);
    }
    if (!(t.data instanceof (spec.ctor as typeof Uint8Array))) {
      fail(source, `${where}: dtype ${t.dtype} needs its data as a ${spec.label} (got ${t.data?.constructor?.name ?? typeof t.data})`);
    }
    const numel = product(t.shape);
    if (numel !== t.data.length) {
      fail(source, `${where}: shape ${formatShape(t.shape)} has ${numel} elements but data has ${t.data.length}`);
    }
    list.push([name, t]);
  }
  list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return list;
}

/** Bytes a tensor occupies on disk once written in its dtype. */
export function writtenByteLength(t: Pick<WriteTensor, 'dtype' | 'shape'>): number {
  return product(t.shape) * EXPECTED_ARRAY[t.dtype].itemSize;
}

/** The 8-byte length prefix and space-padded JSON header for an already checked, sorted list. */
function encodeHeader(list: ReadonlyArray<[string, WriteTensor]>, metadata: Readonly<Record<string, string>> | undefined, source: string): Buffer {
  // Header JSON is assembled by hand to keep the key order exactly as sorted
  // (JSON.stringify would move integer-like keys such as "0" to the front).
  const parts: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') fail(source, `metadata entry "${k}" must be a string (got ${JSON.stringify(v)})`);
    }
    parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const [name, t] of list) {
    const begin = offset;
    offset += writtenByteLength(t);
    parts.push(`${JSON.stringify(name)}:${JSON.stringify({ dtype: t.dtype, shape: [...t.shape], data_offsets: [begin, offset] })}`);
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  const header = Buffer.alloc(8 + json.length + pad, 0x20); // spaces
  header.writeBigUInt64LE(BigInt(json.length + pad), 0);
  json.copy(header, 8);
  return header;
}

/**
 * Serialise tensors to safetensors as a list of chunks (8-byte length + padded JSON header,
 * then one byte view per tensor). Tensors are sorted by name (JS string order). `source`
 * names the destination in error messages.
 */
export function encodeSafetensors(
  tensors: TensorsToWrite,
  metadata?: Readonly<Record<string, string>>,
  source = '<buffer>',
): Uint8Array[] {
  const list = checkedWriteList(tensors, source);
  return [encodeHeader(list, metadata, source), ...list.map(([, t]) => tensorBytes(t))];
}

/** Serialise tensors into one in-memory Buffer (see {@link encodeSafetensors}). */
export function serializeSafetensors(tensors: TensorsToWrite, metadata?: Readonly<Record<string, string>>): Buffer {
  return Buffer.concat(encodeSafetensors(tensors, metadata));
}

/**
 * Write tensors to `path` atomically (temp file + fsync + rename). Tensors are stored sorted
 * by name; BF16 tensors are rounded from float32 to nearest-even. Data is streamed chunk by
 * chunk, never concatenated.
 */
export function writeSafetensors(
  path: string,
  tensors: TensorsToWrite,
  metadata?: Readonly<Record<string, string>>,
): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata, path));
}

/** Elements converted per chunk by writeSafetensorsStream (8 MiB of float32 in, 4 MiB of 16-bit out). */
const STREAM_CHUNK_ELEMS = 1 << 21;

/** Write `buf` fully at file position `pos`. */
function writeFully(fd: number, buf: Uint8Array, pos: number): void {
  const MAX_CHUNK = 1 << 30;
  let off = 0;
  while (off < buf.byteLength) {
    const n = fs.writeSync(fd, buf, off, Math.min(MAX_CHUNK, buf.byteLength - off), pos + off);
    if (n <= 0) throw new Error(`write returned ${n}`);
    off += n;
  }
}

/** Write one tensor's little-endian bytes at `pos`; BF16/F16 go through `scratch` chunk by chunk. */
function writeTensorData(fd: number, t: WriteTensor, pos: number, scratch: Uint16Array): number {
  if (t.dtype !== 'BF16' && t.dtype !== 'F16') {
    const bytes = tensorBytes(t); // a zero-copy view on little-endian hosts
    writeFully(fd, bytes, pos);
    return pos + bytes.byteLength;
  }
  const src = t.data as Float32Array;
  for (let i = 0; i < src.length; i += STREAM_CHUNK_ELEMS) {
    const part = src.subarray(i, Math.min(src.length, i + STREAM_CHUNK_ELEMS));
    const h = scratch.subarray(0, part.length);
    if (t.dtype === 'BF16') float32ToBf16Bits(part, h);
    else float32ToF16Bits(part, h);
    if (!HOST_LE) for (let j = 0; j < h.length; j++) h[j] = ((h[j] & 0xff) << 8) | (h[j] >>> 8);
    writeFully(fd, new Uint8Array(h.buffer, h.byteOffset, h.byteLength), pos);
    pos += h.byteLength;
  }
  return pos;
}

/**
 * Write tensors to a new file `path` (it must not exist), converting BF16/F16 in bounded chunks
 * through one reusable buffer (F32, I32 and U8 are written straight from their views), then fsync.
 * Not atomic by itself: meant for files inside a directory that is being built in a temporary
 * place (saveDirAtomic). A failure removes the partial file. Returns the file's size in bytes.
 */
export function writeSafetensorsStream(
  path: string,
  tensors: TensorsToWrite,
  metadata?: Readonly<Record<string, string>>,
): number {
  const list = checkedWriteList(tensors, path);
  const header = encodeHeader(list, metadata, path);
  const needsScratch = list.some(([, t]) => t.dtype === 'BF16' || t.dtype === 'F16');
  const scratch = new Uint16Array(needsScratch ? Math.min(STREAM_CHUNK_ELEMS, Math.max(...list.map(([, t]) => t.data.length))) : 0);
  let fd: number | undefined;
  let created = false;
  try {
    fd = fs.openSync(path, 'wx', 0o644);
    created = true;
    writeFully(fd, header, 0);
    let pos = header.byteLength;
    for (const [, t] of list) pos = writeTensorData(fd, t, pos, scratch);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    return pos;
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    if (created) fs.rmSync(path, { force: true });
    throw new Err(`cannot write safetensors file ${path}: ${describeError(e)}`, { cause: e });
  }
}
