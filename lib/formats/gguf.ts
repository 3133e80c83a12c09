/**
 * GGUF (llama.cpp's model file, version 3): the container writer and the tensor encodings.
 *
 * Layout: "GGUF", version, tensor count, metadata count (u64s), the metadata (key, value type, value), the
 * tensor infos (name, dims innermost first, ggml type, offset into the data section), padding to
 * `general.alignment` (32), then each tensor's bytes, each padded to the alignment. Strings are a u64 length
 * and UTF-8 bytes, arrays an element type, a u64 count and the elements.
 *
 * Encodings (ggml's): F32; F16 and BF16 rounded to nearest-even from float32; Q8_0 in blocks of 32 along
 * each row: a f16 scale d = max|x| / 127 and 32 int8 round(x / d) (round half away from zero, as roundf).
 *
 * The writer streams: the header is built from the tensors' shapes and types alone, then each tensor is
 * produced, encoded in bounded chunks and written, so a model is never held twice in memory. The file goes
 * through writeFileAtomicStream: a temporary sibling renamed over the destination at the end, nothing left
 * behind on failure. What goes in a model's GGUF (names, metadata, vocabulary) is lib/formats/gguf_model.ts.
 */
import { UndoError, errorClass } from '../core/errors';
import { writeFileAtomicStream } from '../core/fsutil';
import { float32ToBf16Bits, float32ToF16Bits } from './safetensors';

/** Errors of this module: code ERR_GGUF unless one names another. */
const Err = errorClass('ERR_GGUF');

/** Weight encodings `export --gguf --type` offers. */
export const GGUF_TYPES = ['f32', 'f16', 'bf16', 'q8_0'] as const;
export type GgufType = (typeof GGUF_TYPES)[number];

/** ggml_type ids */
export const GGML_TYPE: Record<GgufType, number> = { f32: 0, f16: 1, q8_0: 8, bf16: 30 };
/** llama_ftype (general.file_type): the type most weights have */
export const LLAMA_FTYPE: Record<GgufType, number> = { f32: 0, f16: 1, q8_0: 7, bf16: 32 };

export const GGUF_ALIGNMENT = 32;
export const Q8_0_BLOCK = 32;
const Q8_0_BYTES = 2 + Q8_0_BLOCK;

/** gguf_type ids of metadata values */
const KV = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 } as const;

/** A metadata value with its GGUF type. */
export type GgufValue =
  | { type: 'u32' | 'i32' | 'f32' | 'u64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'i32[]'; value: ArrayLike<number> }
  | { type: 'f32[]'; value: ArrayLike<number> };

export type GgufMetadata = Array<[string, GgufValue]>;

/** A tensor to write: its shape as the decoder has it (row-major, outermost first) and how to produce its data. */
export interface GgufTensor {
  name: string;
  /** row-major shape, e.g. [rows, cols] for a matrix; GGUF stores the dims reversed (ne0 = cols) */
  shape: number[];
  type: GgufType;
  /** the values, row-major float32 (called once, when the tensor is written) */
  data: () => Float32Array;
}

/** Bytes of `n` values (a multiple of the row length for Q8_0) in `type`. */
export function encodedBytes(type: GgufType, n: number): number {
  switch (type) {
    case 'f32': return 4 * n;
    case 'f16': case 'bf16': return 2 * n;
    case 'q8_0': return (n / Q8_0_BLOCK) * Q8_0_BYTES;
  }
}

/** Q8_0 blocks of `src` (length a multiple of 32) into `out` (34 bytes per block), as ggml's reference quantizer. */
export function quantizeQ8_0(src: Float32Array, out: Uint8Array = new Uint8Array(encodedBytes('q8_0', src.length))): Uint8Array {
  if (src.length % Q8_0_BLOCK !== 0) throw new Err(`internal: Q8_0 needs a multiple of ${Q8_0_BLOCK} values, got ${src.length}`);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const d16 = new Uint16Array(1);
  const dSrc = new Float32Array(1);
  for (let b = 0, o = 0; b < src.length; b += Q8_0_BLOCK, o += Q8_0_BYTES) {
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) amax = Math.max(amax, Math.abs(src[b + j]));
    const d = Math.fround(amax / 127);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    dSrc[0] = d;
    float32ToF16Bits(dSrc, d16);
    view.setUint16(o, d16[0], true);
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const x = Math.fround(src[b + j] * id);
      // roundf: half away from zero
      const q = x < 0 ? -Math.round(-x) : Math.round(x);
      view.setInt8(o + 2 + j, q);
    }
  }
  return out;
}

/** Float32 values from Q8_0 blocks (the inverse up to rounding: d · q). */
export function dequantizeQ8_0(src: Uint8Array, n: number): Float32Array {
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const out = new Float32Array(n);
  const h = new Uint16Array(1);
  for (let b = 0, o = 0; b < n; b += Q8_0_BLOCK, o += Q8_0_BYTES) {
    h[0] = view.getUint16(o, true);
    const d = f16ToNumber(h[0]);
    for (let j = 0; j < Q8_0_BLOCK; j++) out[b + j] = d * view.getInt8(o + 2 + j);
  }
  return out;
}

function f16ToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** `src` encoded as `type` (little-endian bytes). */
export function encodeTensor(type: GgufType, src: Float32Array): Uint8Array {
  switch (type) {
    case 'f32': return new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    case 'f16': { const h = float32ToF16Bits(src); return new Uint8Array(h.buffer, h.byteOffset, h.byteLength); }
    case 'bf16': { const h = float32ToBf16Bits(src); return new Uint8Array(h.buffer, h.byteOffset, h.byteLength); }
    case 'q8_0': return quantizeQ8_0(src);
  }
}

/** Grows a byte buffer for the header. */
class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u32(v: number): void { this.ensure(4); this.buf.writeUInt32LE(v >>> 0, this.length); this.length += 4; }
  i32(v: number): void { this.ensure(4); this.buf.writeInt32LE(v | 0, this.length); this.length += 4; }
  u64(v: number): void { this.ensure(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  f32(v: number): void { this.ensure(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  u8(v: number): void { this.ensure(1); this.buf[this.length++] = v; }
  str(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.u64(n);
    this.ensure(n);
    this.buf.write(s, this.length, 'utf8');
    this.length += n;
  }
  pad(alignment: number): void {
    const n = (alignment - (this.length % alignment)) % alignment;
    this.ensure(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer { return this.buf.subarray(0, this.length); }
}

function writeValue(w: ByteWriter, key: string, v: GgufValue): void {
  const num = (x: number, what: string) => {
    if (!Number.isFinite(x)) throw new Err(`GGUF metadata ${key}: ${what} ${x} is not a finite number`);
    return x;
  };
  switch (v.type) {
    case 'u32':
      if (!Number.isInteger(v.value) || v.value < 0 || v.value > 0xffffffff) throw new Err(`GGUF metadata ${key}: ${v.value} is not a u32`);
      w.u32(KV.u32); w.u32(v.value); return;
    case 'i32': w.u32(KV.i32); w.i32(num(v.value, 'value')); return;
    case 'u64': w.u32(KV.u64); w.u64(v.value); return;
    case 'f32': w.u32(KV.f32); w.f32(num(v.value, 'value')); return;
    case 'bool': w.u32(KV.bool); w.u8(v.value ? 1 : 0); return;
    case 'string': w.u32(KV.string); w.str(v.value); return;
    case 'string[]': w.u32(KV.array); w.u32(KV.string); w.u64(v.value.length); for (const s of v.value) w.str(s); return;
    case 'i32[]': w.u32(KV.array); w.u32(KV.i32); w.u64(v.value.length); for (let i = 0; i < v.value.length; i++) w.i32(v.value[i]); return;
    case 'f32[]': w.u32(KV.array); w.u32(KV.f32); w.u64(v.value.length); for (let i = 0; i < v.value.length; i++) w.f32(num(v.value[i], 'element')); return;
  }
}

/** Elements per encoded chunk while streaming a tensor (bounded scratch; a multiple of the Q8_0 block). */
const CHUNK = 1 << 20;

/**
 * Write a GGUF v3 file atomically. Tensor data is produced and encoded one tensor at a time, in chunks of
 * at most 1 Mi values. Throws an UndoError naming the tensor or key on an invalid shape or value; nothing is
 * left at `file` (nor a temporary) when it fails.
 */
export function writeGguf(file: string, metadata: GgufMetadata, tensors: readonly GgufTensor[]): { bytes: number } {
  const keys = new Set<string>();
  for (const [k] of metadata) {
    if (keys.has(k)) throw new Err(`internal: GGUF metadata key ${k} given twice`);
    keys.add(k);
  }
  const names = new Set<string>();
  const w = new ByteWriter();
  w.u32(0x46554747); // "GGUF"
  w.u32(3);
  w.u64(tensors.length);
  w.u64(metadata.length + (keys.has('general.alignment') ? 0 : 1));
  if (!keys.has('general.alignment')) {
    w.str('general.alignment');
    writeValue(w, 'general.alignment', { type: 'u32', value: GGUF_ALIGNMENT });
  }
  for (const [k, v] of metadata) {
    w.str(k);
    writeValue(w, k, v);
  }
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    if (names.has(t.name)) throw new Err(`internal: GGUF tensor ${t.name} given twice`);
    names.add(t.name);
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.shape.length < 1 || t.shape.length > 4 || !t.shape.every((d) => Number.isInteger(d) && d > 0)) {
      throw new Err(`GGUF tensor ${t.name}: shape [${t.shape.join(', ')}] is not 1 to 4 positive dims`);
    }
    if (t.type === 'q8_0' && t.shape[t.shape.length - 1] % Q8_0_BLOCK !== 0) {
      throw new Err(`GGUF tensor ${t.name}: Q8_0 needs rows of a multiple of ${Q8_0_BLOCK} values, shape [${t.shape.join(', ')}]`);
    }
    w.str(t.name);
    w.u32(t.shape.length);
    for (let i = t.shape.length - 1; i >= 0; i--) w.u64(t.shape[i]);
    w.u32(GGML_TYPE[t.type]);
    w.u64(offset);
    const size = encodedBytes(t.type, n);
    sizes.push(size);
    offset += size + ((GGUF_ALIGNMENT - (size % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT);
  }
  w.pad(GGUF_ALIGNMENT);
  const header = w.bytes();
  const zeros = new Uint8Array(GGUF_ALIGNMENT);
  writeFileAtomicStream(file, (write) => {
    write(header);
    tensors.forEach((t, i) => {
      const data = t.data();
      const n = t.shape.reduce((a, b) => a * b, 1);
      if (data.length !== n) throw new Err(`internal: GGUF tensor ${t.name} has ${data.length} values, shape [${t.shape.join(', ')}] needs ${n}`);
      for (let s = 0; s < n; s += CHUNK) write(encodeTensor(t.type, data.subarray(s, Math.min(n, s + CHUNK))));
      const pad = (GGUF_ALIGNMENT - (sizes[i] % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      if (pad) write(zeros.subarray(0, pad));
    });
  });
  return { bytes: header.length + offset };
}
