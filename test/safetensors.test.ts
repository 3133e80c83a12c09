import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
  encodeSafetensors,
  serializeSafetensors,
  parseSafetensors,
  float32ToBf16Bits,
  bf16BitsToFloat32,
  float32ToF16Bits,
  f16BitsToFloat32,
  writeSafetensorsStream,
} from '../lib/formats/safetensors';
import { bitEqual, randn, throwsUndo } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-st-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Build a safetensors file by hand: `header` is serialised as-is (no validation). */
function rawFile(name: string, header: unknown, data: Buffer, opts: { pad?: boolean } = {}): string {
  let json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  if (opts.pad ?? true) {
    const pad = (8 - (json.length % 8)) % 8;
    json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  }
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const p = path.join(tmp, name);
  fs.writeFileSync(p, Buffer.concat([len, json, data]));
  return p;
}


function f32(...v: number[]): Float32Array {
  return new Float32Array(v);
}

test('round trip of F32 / BF16 / I32 / U8 with odd shapes and metadata', () => {
  const a = new Float32Array(3 * 5 * 7);
  for (let i = 0; i < a.length; i++) a[i] = Math.sin(i * 1.3) * 100 + i / 7;
  // bf16-exact values (8 significant bits) survive unchanged.
  const b = f32(1, -2, 0.5, 3.140625, -0, 65280, 1.5, 2 ** -20, -1024, 0.09375, 7, 255);
  const c = Int32Array.from([0, 1, -1, 2147483647, -2147483648, 12345, -777, 42, 9, 10, 11]);
  const u = Uint8Array.from([0, 7, 255]);
  const empty = new Float32Array(0);
  const p = path.join(tmp, 'roundtrip.safetensors');
  writeSafetensors(p, {
    'layer.weight': { dtype: 'F32', shape: [3, 5, 7], data: a },
    'b16': { dtype: 'BF16', shape: [2, 3, 2], data: b },
    'ids': { dtype: 'I32', shape: [11], data: c },
    'mask': { dtype: 'U8', shape: [1, 3], data: u },
    'zero': { dtype: 'F32', shape: [4, 0], data: empty },
  }, { format: 'pt', note: 'héllo' });

  const f = readSafetensors(p);
  assert.equal(f.metadata, { format: 'pt', note: 'héllo' });
  assert.equal(f.names(), ['b16', 'ids', 'layer.weight', 'mask', 'zero']);
  const w = f.get('layer.weight');
  assert.is(w.dtype, 'F32');
  assert.equal(w.shape, [3, 5, 7]);
  assert.instance(w.data, Float32Array);
  assert.equal(Array.from(w.data), Array.from(a));
  assert.equal(Array.from(f.readTensorF32('layer.weight', [3, 5, 7])), Array.from(a));

  const bt = f.get('b16');
  assert.is(bt.dtype, 'BF16');
  assert.equal(bt.shape, [2, 3, 2]);
  assert.instance(bt.data, Float32Array);
  assert.equal(Array.from(bt.data), Array.from(b));
  assert.ok(Object.is(bt.data[4], -0), 'negative zero preserved');

  const it = f.get('ids');
  assert.instance(it.data, Int32Array);
  assert.equal(Array.from(it.data), Array.from(c));
  assert.equal(Array.from(f.get('mask').data), [0, 7, 255]);
  assert.instance(f.get('mask').data, Uint8Array);
  assert.equal(f.get('zero').shape, [4, 0]);
  assert.is(f.get('zero').data.length, 0);

  // Byte-level layout: 8-aligned header padded with spaces, tensors sorted, contiguous offsets.
  const raw = fs.readFileSync(p);
  const n = Number(raw.readBigUInt64LE(0));
  assert.is((8 + n) % 8, 0);
  const headerText = raw.subarray(8, 8 + n).toString('utf8');
  assert.ok(/^\{.*\} *$/.test(headerText));
  const header = JSON.parse(headerText);
  assert.equal(Object.keys(header), ['__metadata__', 'b16', 'ids', 'layer.weight', 'mask', 'zero']);
  assert.equal(header.b16, { dtype: 'BF16', shape: [2, 3, 2], data_offsets: [0, 24] });
  assert.equal(header.ids.data_offsets, [24, 68]);
  assert.equal(header['layer.weight'].data_offsets, [68, 68 + 420]);
  assert.equal(header.mask.data_offsets, [488, 491]);
  assert.equal(header.zero.data_offsets, [491, 491]);
  assert.is(raw.length, 8 + n + 491);
  // F32 data stored little-endian.
  assert.is(raw.readFloatLE(8 + n + 68), a[0]);
  assert.is(raw.readFloatLE(8 + n + 68 + 4 * 10), a[10]);

  // The header-only reader agrees.
  const h = readSafetensorsHeader(p);
  assert.is(h.headerLength, n);
  assert.equal(h.tensors.get('ids'), { dtype: 'I32', shape: [11], dataOffsets: [24, 68] });
  assert.equal(h.metadata.format, 'pt');

  // No temp files left behind by the atomic write.
  assert.equal(fs.readdirSync(tmp).filter((x) => x.includes('.tmp-')), []);
});

test('bf16 rounds to nearest, ties to even', () => {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 (0x3F80) and 1.0078125 (0x3F81): tie -> even 0x3F80.
  // 1 + 3*2^-8 is halfway between 0x3F81 and 0x3F82: tie -> even 0x3F82 = 1.015625.
  // 1 + 2^-8 + 2^-12 is just above halfway: rounds up to 1.0078125.
  // pi = 0x40490FDB: low half 0x0FDB < 0x8000 -> 0x4049 = 3.140625.
  // 0.1 = 0x3DCCCCCD: low half 0xCCCD > 0x8000 -> 0x3DCD = 0.10009765625.
  const src = f32(1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -12, Math.PI, 0.1, -(1 + 2 ** -8), 3.4028234663852886e38);
  const bits = float32ToBf16Bits(src);
  assert.equal(Array.from(bits), [0x3f80, 0x3f82, 0x3f81, 0x4049, 0x3dcd, 0xbf80, 0x7f80 /* max f32 rounds to +inf */]);
  assert.equal(Array.from(bf16BitsToFloat32(bits)), [1, 1.015625, 1.0078125, 3.140625, 0.10009765625, -1, Infinity]);

  const nan = float32ToBf16Bits(f32(NaN, Infinity, -Infinity));
  assert.ok(Number.isNaN(bf16BitsToFloat32(nan)[0]));
  assert.equal(Array.from(nan.subarray(1)), [0x7f80, 0xff80]);

  // Through a file: raw stored bytes are the rounded bf16 patterns, read back as float32.
  const p = path.join(tmp, 'bf16.safetensors');
  writeSafetensors(p, { x: { dtype: 'BF16', shape: [5], data: src.subarray(0, 5) } });
  const raw = fs.readFileSync(p);
  const start = 8 + Number(raw.readBigUInt64LE(0));
  assert.equal([0, 1, 2, 3, 4].map((i) => raw.readUInt16LE(start + 2 * i)), [0x3f80, 0x3f82, 0x3f81, 0x4049, 0x3dcd]);
  assert.equal(Array.from(readSafetensors(p).readTensorF32('x')), [1, 1.015625, 1.0078125, 3.140625, 0.10009765625]);
});

test('F16 and I64 are converted; I64 out of int32 range is an error', () => {
  const half = Buffer.alloc(12);
  [0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x3555].forEach((h, i) => half.writeUInt16LE(h, 2 * i));
  const i64 = Buffer.alloc(32);
  [5n, -3n, 2147483647n, -2147483648n].forEach((v, i) => i64.writeBigInt64LE(v, 8 * i));
  const p = rawFile('f16i64.safetensors', {
    h: { dtype: 'F16', shape: [2, 3], data_offsets: [0, 12] },
    q: { dtype: 'I64', shape: [4], data_offsets: [12, 44] },
  }, Buffer.concat([half, i64]));
  const f = readSafetensors(p);
  assert.equal(Array.from(f.readTensorF32('h')), [1, -2, 65504, 2 ** -24, Infinity, Math.fround(0.333251953125)]);
  assert.instance(f.get('q').data, Int32Array);
  assert.equal(Array.from(f.get('q').data), [5, -3, 2147483647, -2147483648]);
  throwsUndo(() => f.readTensorF32('q'), 'f16i64.safetensors', '"q"', 'I64');
  throwsUndo(() => f.get('nope'), 'f16i64.safetensors', 'nope');

  const big = Buffer.alloc(16);
  big.writeBigInt64LE(1n, 0);
  big.writeBigInt64LE(2147483648n, 8);
  const p2 = rawFile('i64big.safetensors', { big: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, big);
  throwsUndo(() => readSafetensors(p2), 'i64big.safetensors', '"big"', '2147483648');
});

test('unaligned data section is copied into aligned Float32Array', () => {
  // Header of 10 bytes without padding: data starts at byte 18, not 4-byte aligned.
  const header = '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}';
  const data = Buffer.alloc(12);
  [1.5, -2.25, 1e-3].forEach((v, i) => data.writeFloatLE(v, 4 * i));
  const p = rawFile('unaligned.safetensors', header, data, { pad: false });
  assert.is((8 + Buffer.byteLength(header)) % 4 !== 0, true);
  const a = readSafetensors(p).readTensorF32('a');
  assert.equal(Array.from(a), [1.5, -2.25, Math.fround(1e-3)]);
  assert.is(a.byteOffset % 4, 0);
});

test('corrupt files raise errors naming the file (and tensor)', () => {
  const good = path.join(tmp, 'good.safetensors');
  writeSafetensors(good, {
    alpha: { dtype: 'F32', shape: [2, 3], data: f32(1, 2, 3, 4, 5, 6) },
    beta: { dtype: 'I32', shape: [2], data: Int32Array.from([7, 8]) },
  });
  const bytes = fs.readFileSync(good);

  // Missing file.
  throwsUndo(() => readSafetensors(path.join(tmp, 'missing.safetensors')), 'missing.safetensors', 'not found');

  // Truncated file: the last tensor's data is cut.
  const trunc = path.join(tmp, 'trunc.safetensors');
  fs.writeFileSync(trunc, bytes.subarray(0, bytes.length - 4));
  throwsUndo(() => readSafetensors(trunc), 'trunc.safetensors', 'truncated', '"beta"');

  // Shorter than the 8-byte prefix.
  const tiny = path.join(tmp, 'tiny.safetensors');
  fs.writeFileSync(tiny, Buffer.from([1, 2, 3]));
  throwsUndo(() => readSafetensors(tiny), 'tiny.safetensors', '3 bytes');

  // Header length larger than the file.
  const badLen = path.join(tmp, 'badlen.safetensors');
  const copy = Buffer.from(bytes);
  copy.writeBigUInt64LE(BigInt(bytes.length * 10), 0);
  fs.writeFileSync(badLen, copy);
  throwsUndo(() => readSafetensors(badLen), 'badlen.safetensors', 'header length');
  throwsUndo(() => readSafetensorsHeader(badLen), 'badlen.safetensors', 'header length');

  // Header that is not JSON.
  const badJson = rawFile('badjson.safetensors', '{"alpha": {"dtype": "F32", ', Buffer.alloc(0));
  throwsUndo(() => readSafetensors(badJson), 'badjson.safetensors', 'not valid JSON');

  // Unknown dtype.
  const badDtype = rawFile('baddtype.safetensors', { w: { dtype: 'Q7', shape: [2], data_offsets: [0, 8] } }, Buffer.alloc(8));
  throwsUndo(() => readSafetensors(badDtype), 'baddtype.safetensors', '"w"', 'Q7');

  // Known but unsupported dtype.
  const i16 = rawFile('i16.safetensors', { s: { dtype: 'I16', shape: [2], data_offsets: [0, 4] } }, Buffer.alloc(4));
  throwsUndo(() => readSafetensors(i16), 'i16.safetensors', '"s"', 'I16');

  // Offsets do not match shape * itemsize.
  const span = rawFile('span.safetensors', { w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, Buffer.alloc(8));
  throwsUndo(() => readSafetensors(span), 'span.safetensors', '"w"', '12 bytes', 'span 8 bytes');

  // Overlapping tensors.
  const overlap = rawFile('overlap.safetensors', {
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
  }, Buffer.alloc(12));
  throwsUndo(() => readSafetensors(overlap), 'overlap.safetensors', '"b"', 'overlaps', '"a"');

  // Hole between tensors.
  const hole = rawFile('hole.safetensors', {
    a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
  }, Buffer.alloc(12));
  throwsUndo(() => readSafetensors(hole), 'hole.safetensors', '"b"', 'hole');

  // Trailing garbage.
  const trailing = rawFile('trailing.safetensors', { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, Buffer.alloc(9));
  throwsUndo(() => readSafetensors(trailing), 'trailing.safetensors', 'trailing');

  // Bad shape / offsets fields.
  const badShape = rawFile('badshape.safetensors', { a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, Buffer.alloc(4));
  throwsUndo(() => readSafetensors(badShape), 'badshape.safetensors', '"a"', 'shape');
  const badOff = rawFile('badoff.safetensors', { a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, Buffer.alloc(4));
  throwsUndo(() => readSafetensors(badOff), 'badoff.safetensors', '"a"', 'data_offsets');

  // The good file is still fine.
  assert.equal(Array.from(readSafetensors(good).readTensorF32('alpha')), [1, 2, 3, 4, 5, 6]);
});

test('writer validates its input and names the tensor', () => {
  const p = path.join(tmp, 'w.safetensors');
  throwsUndo(() => writeSafetensors(p, { w: { dtype: 'F32', shape: [2, 2], data: f32(1, 2, 3) } }), 'w.safetensors', '"w"', '4 elements');
  throwsUndo(() => writeSafetensors(p, { w: { dtype: 'I32', shape: [1], data: f32(1) as unknown as Int32Array } }), '"w"', 'Int32Array');
  throwsUndo(() => writeSafetensors(p, { w: { dtype: 'F64' as 'F32', shape: [1], data: f32(1) } }), '"w"', 'F64');
  throwsUndo(() => writeSafetensors(p, { w: { dtype: 'F32', shape: [1.5], data: f32(1) } }), '"w"', 'shape');
  assert.not.ok(fs.existsSync(p), 'nothing written on error');
});

test('chunked encoding: F32 tensors are written from views, no copies', () => {
  const big = new Float32Array(1000).map((_, i) => i * 0.25);
  const tensors = new Map([
    ['z', { dtype: 'F32' as const, shape: [1000], data: big }],
    ['a', { dtype: 'I32' as const, shape: [2], data: Int32Array.from([3, 4]) }],
  ]);
  const chunks = encodeSafetensors(tensors);
  assert.is(chunks.length, 3);
  assert.ok(chunks[2].buffer === big.buffer, 'F32 chunk shares the caller buffer');
  const f = parseSafetensors(serializeSafetensors(tensors), 'mem');
  assert.equal(f.names(), ['a', 'z']);
  assert.equal(Array.from(f.readTensorF32('z')), Array.from(big));
});

/** The value of a half-precision bit pattern, computed independently of the library (float64). */
function halfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

test('F16 → F32 is exact for all 65536 patterns (subnormals, ±0, ±Inf, NaN payloads)', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const f = f16BitsToFloat32(all);
  const bits = new Uint32Array(f.buffer);
  for (let h = 0; h < 65536; h++) {
    const want = halfValue(h);
    if (Number.isNaN(want)) {
      // sign and payload kept: the 10 mantissa bits land at the top of the float32 mantissa
      assert.is(bits[h], (((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13)) >>> 0, `NaN pattern ${h.toString(16)}`);
    } else {
      assert.ok(Object.is(f[h], want), `pattern 0x${h.toString(16)}: ${f[h]} != ${want}`);
    }
  }
  // back to half: identity for every non-NaN pattern and every quiet NaN
  const back = float32ToF16Bits(f);
  for (let h = 0; h < 65536; h++) {
    const quietOrNumber = ((h >> 10) & 0x1f) !== 31 || (h & 0x3ff) === 0 || (h & 0x200) !== 0;
    if (quietOrNumber) assert.is(back[h], h, `round trip of 0x${h.toString(16)}`);
    else assert.is(back[h], h | 0x200, `signalling NaN 0x${h.toString(16)} becomes quiet`);
  }
});

test('F32 → F16 rounds to nearest, ties to even, at midpoints, ±1 ulp around them, subnormals and overflow', () => {
  // reference: the finite non-negative halves in increasing order are the patterns 0 .. 0x7bff
  const ref = (x: number): number => {
    if (Number.isNaN(x)) return -1;
    const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    const a = Math.abs(x);
    if (a >= 65520) return sign | 0x7c00;
    let lo = 0;
    let hi = 0x7bff;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (halfValue(mid) <= a) lo = mid;
      else hi = mid;
    }
    if (halfValue(hi) <= a) lo = hi;
    const up = Math.min(lo + 1, 0x7c00);
    const dl = a - halfValue(lo);
    const du = up === 0x7c00 ? Infinity : halfValue(up) - a;
    const pick = dl < du ? lo : du < dl ? up : (lo & 1 ? up : lo);
    return sign | pick;
  };
  const xs: number[] = [0, -0, 65504, 65519.99, 65520, -65520, 1e-10, 2 ** -25, 2 ** -25 * 1.0000001, 3 * 2 ** -25, 2 ** -14 - 2 ** -25];
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  for (let h = 0; h < 0x7bff; h++) {
    const mid = (halfValue(h) + halfValue(h + 1)) / 2; // exact in float32 (12 significant bits)
    f32[0] = mid;
    assert.is(f32[0], mid);
    xs.push(mid, -mid);
    u32[0] += 1;
    xs.push(f32[0]);
    u32[0] -= 2;
    xs.push(f32[0]);
  }
  const rnd = randn(20000, 3, 300);
  for (const v of rnd) xs.push(v, v * 1e-4, v * 1e-7);
  const src = Float32Array.from(xs);
  const got = float32ToF16Bits(src);
  for (let i = 0; i < src.length; i++) assert.is(got[i], ref(src[i]), `f16 of ${src[i]}: 0x${got[i].toString(16)} vs 0x${ref(src[i]).toString(16)}`);
  const special = float32ToF16Bits(new Float32Array([NaN, Infinity, -Infinity, 3.4e38, -3.4e38]));
  assert.is(special[0] & 0x7e00, 0x7e00, 'NaN stays a quiet NaN');
  assert.equal(Array.from(special.subarray(1)), [0x7c00, 0xfc00, 0x7c00, 0xfc00]);
});

test('writeSafetensorsStream: the same bytes as writeSafetensors, across chunk boundaries; refuses to overwrite', () => {
  const big = randn((1 << 21) + 1234, 9, 3); // more than one conversion chunk
  const tensors = {
    big16: { dtype: 'F16' as const, shape: [big.length], data: big },
    bigbf: { dtype: 'BF16' as const, shape: [big.length], data: big },
    f: { dtype: 'F32' as const, shape: [2, 2], data: new Float32Array([1, -2, 3.5, NaN]) },
    i: { dtype: 'I32' as const, shape: [3], data: Int32Array.from([1, -1, 7]) },
    u: { dtype: 'U8' as const, shape: [2], data: Uint8Array.from([0, 255]) },
  };
  const p = path.join(tmp, 'stream.safetensors');
  const size = writeSafetensorsStream(p, tensors, { format: 'pt' });
  const want = serializeSafetensors(tensors, { format: 'pt' });
  const got = fs.readFileSync(p);
  assert.is(size, want.length);
  assert.ok(got.equals(want), 'streamed bytes differ from the in-memory encoding');
  const back = readSafetensors(p);
  assert.ok(bitEqual(back.readTensorF32('big16'), f16BitsToFloat32(float32ToF16Bits(big))));
  assert.ok(bitEqual(back.readTensorF32('bigbf'), bf16BitsToFloat32(float32ToBf16Bits(big))));
  throwsUndo(() => writeSafetensorsStream(p, { f: tensors.f }), 'stream.safetensors', 'EEXIST');
  assert.ok(fs.readFileSync(p).equals(want), 'the existing file is left alone');
});

test.run();
