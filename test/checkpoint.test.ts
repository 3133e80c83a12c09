/**
 * Hugging Face checkpoints: sharded save/load (index.json, shard limits, F32/BF16/F16 bit-exact against the
 * writer's rounding), the CheckpointReader's mapped reads (columns, transpose), files and config fields
 * carried through save, torch_dtype, every bad-input case (clear UndoError, nothing written), and
 * `info`'s numbers (parameter count from the headers, memory estimate against the native buffers).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  CheckpointReader, INDEX_FILE, parseSize, planShards, shardName, writeCheckpoint,
} from '../lib/formats/checkpoint';
import {
  bf16BitsToFloat32, f16BitsToFloat32, float32ToBf16Bits, float32ToF16Bits, readSafetensors, readSafetensorsHeader,
  writeSafetensors, WriteTensor,
} from '../lib/formats/safetensors';
import { Model, presetConfig, ModelConfig } from '../lib/models/model';
import { estimateMemory, headChunkRowsFor, modelInfo, nativeParamCount } from '../lib/models/info';
import { bitEqual, randn, ROOT, SANITIZED, throwsUndo, tinyConfig } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-ckpt-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Json = Record<string, unknown>;

const MICRO = presetConfig('micro');
/** A seeded micro model (213,760 parameters: 855,040 bytes in F32). */
const model = Model.create(MICRO, { seed: 5 });
const LIMIT = 100_000;

/** Save `m` into a fresh directory under tmp. */
function saved(name: string, m: Model = model, opts: Parameters<Model['save']>[2] = {}): string {
  const dir = path.join(tmp, name);
  m.save(dir, {}, opts);
  return dir;
}

function readIndex(dir: string): { metadata: { total_size: number }; weight_map: Record<string, string> } {
  return JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), 'utf8'));
}

function readConfig(dir: string): Json {
  return JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Json;
}

/** Copy a directory (flat) to a new name under tmp. */
function copyDir(src: string, name: string): string {
  const dst = path.join(tmp, name);
  fs.mkdirSync(dst);
  for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dst, f));
  return dst;
}

/** Bytes of a safetensors file rebuilt from a header object and a data section, without validation. */
function rawSafetensors(header: unknown, data: Buffer): Buffer {
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

/** The header object and data section of a safetensors file. */
function splitSafetensors(file: string): { header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; data: Buffer } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
}

/** What saving in `dtype` stores: the writer's rounding of every parameter, read back as float32. */
function rounded(params: Float32Array, dtype: 'F32' | 'BF16' | 'F16'): Float32Array {
  if (dtype === 'BF16') return bf16BitsToFloat32(float32ToBf16Bits(params));
  if (dtype === 'F16') return f16BitsToFloat32(float32ToF16Bits(params));
  return params;
}

// ---------------------------------------------------------------------------------------------
// Sizes and shard planning
// ---------------------------------------------------------------------------------------------

test('parseSize reads bytes and HF size strings; planShards packs greedily, an oversized tensor alone', () => {
  assert.is(parseSize(123), 123);
  assert.is(parseSize('5GB'), 5_000_000_000);
  assert.is(parseSize('2GiB'), 2 ** 31);
  assert.is(parseSize('500MB'), 500_000_000);
  assert.is(parseSize('1.5KB'), 1500);
  assert.is(parseSize(' 64 kib '), 65536);
  assert.is(parseSize('4096'), 4096);
  throwsUndo(() => parseSize('lots', 'maxShardSize'), 'maxShardSize', '"lots"');
  throwsUndo(() => parseSize('3XB'), '"3XB"');
  throwsUndo(() => parseSize(0, 'maxShardSize'), 'maxShardSize', 'positive');
  throwsUndo(() => parseSize(-5), 'positive');
  throwsUndo(() => parseSize(1.5), 'positive');
  assert.equal(planShards([5, 30, 5, 5, 1], 10), [[0], [1], [2, 3], [4]]);
  assert.equal(planShards([4, 4, 2, 3], 10), [[0, 1, 2], [3]]);
  assert.equal(planShards([], 10), [[]]);
  assert.is(shardName(0, 3), 'model-00001-of-00003.safetensors');
  assert.is(shardName(11, 12), 'model-00012-of-00012.safetensors');
});

// ---------------------------------------------------------------------------------------------
// Sharded save and load
// ---------------------------------------------------------------------------------------------

test('save with a small maxShardSize: HF shard names, index.json, shards within the limit; reload bit-identical', () => {
  const dir = saved('sharded', model, { maxShardSize: LIMIT });
  const files = fs.readdirSync(dir).sort();
  const shards = files.filter((f) => f.endsWith('.safetensors'));
  const n = shards.length;
  assert.ok(n >= 8, `expected at least 8 shards of <= ${LIMIT} bytes for ${model.numParams() * 4} bytes, got ${n}`);
  assert.equal(shards, Array.from({ length: n }, (_, i) => shardName(i, n)));
  assert.not.ok(files.includes('model.safetensors'));
  assert.equal(files.filter((f) => !f.endsWith('.safetensors')), ['config.json', INDEX_FILE, 'tokenizer.json', 'tokenizer_config.json']);

  const index = readIndex(dir);
  assert.equal(Object.keys(index), ['metadata', 'weight_map']);
  assert.is(index.metadata.total_size, model.numParams() * 4);
  assert.equal(Object.keys(index.weight_map), model.tensors.map((t) => t.name).sort(), 'weight_map: every tensor, sorted');
  let total = 0;
  for (const shard of shards) {
    const h = readSafetensorsHeader(path.join(dir, shard));
    const data = fs.statSync(path.join(dir, shard)).size - h.dataStart;
    assert.ok(data <= LIMIT, `${shard} holds ${data} bytes of tensors, over ${LIMIT}`);
    assert.equal(h.metadata, { format: 'pt' });
    assert.equal([...h.tensors.keys()].sort(), Object.entries(index.weight_map).filter(([, f]) => f === shard).map(([k]) => k).sort());
    total += data;
  }
  assert.is(total, index.metadata.total_size);
  // greedy packing: no two neighbouring shards could have been merged
  const sizes = shards.map((s) => fs.statSync(path.join(dir, s)).size - readSafetensorsHeader(path.join(dir, s)).dataStart);
  for (let i = 0; i + 1 < n; i++) {
    const next = readSafetensorsHeader(path.join(dir, shards[i + 1]));
    const first = model.tensors.find((t) => next.tensors.has(t.name))!;
    assert.ok(sizes[i] + first.numel * 4 > LIMIT, `the first tensor of shard ${i + 2} would have fitted in shard ${i + 1}`);
  }

  const back = Model.load(dir);
  assert.ok(bitEqual(back.params, model.params), 'sharded F32 reload is not bit-identical');
  assert.equal(back.config, model.config);
  // the size string form plans the same shards
  const dir2 = saved('sharded-str', model, { maxShardSize: '100KB' });
  assert.equal(fs.readdirSync(dir2).sort(), files);
});

test('single model.safetensors when it fits; single-file and sharded directories load the same weights', () => {
  const single = saved('single');
  assert.equal(fs.readdirSync(single).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
  assert.is(readSafetensorsHeader(path.join(single, 'model.safetensors')).tensors.size, model.tensors.length);
  const a = Model.load(single);
  const b = Model.load(saved('sharded-2', model, { maxShardSize: 300_000 }));
  assert.ok(bitEqual(a.params, model.params));
  assert.ok(bitEqual(b.params, model.params));
  // exactly at the limit: still one file
  const exact = saved('exact', model, { maxShardSize: model.numParams() * 4 });
  assert.ok(fs.existsSync(path.join(exact, 'model.safetensors')));
  assert.not.ok(fs.existsSync(path.join(exact, INDEX_FILE)));
  // one byte less: two shards
  const under = saved('under', model, { maxShardSize: model.numParams() * 4 - 1 });
  assert.is(readIndex(under).metadata.total_size, model.numParams() * 4);
  assert.equal(fs.readdirSync(under).filter((f) => f.endsWith('.safetensors')), [shardName(0, 2), shardName(1, 2)]);
});

test('BF16 and F16 saves: torch_dtype set, dtype on disk, reload equals the writer\'s rounding bit for bit', () => {
  for (const [torch, st] of [['bfloat16', 'BF16'], ['float16', 'F16'], ['float32', 'F32']] as const) {
    const dir = saved(`dtype-${torch}`, model, { dtype: torch, maxShardSize: 60_000 });
    assert.is(readConfig(dir).torch_dtype, torch);
    const index = readIndex(dir);
    assert.is(index.metadata.total_size, model.numParams() * (st === 'F32' ? 4 : 2));
    for (const shard of new Set(Object.values(index.weight_map))) {
      for (const t of readSafetensorsHeader(path.join(dir, shard)).tensors.values()) assert.is(t.dtype, st, `${shard}: dtype`);
    }
    const back = Model.load(dir);
    assert.ok(bitEqual(back.params, rounded(model.params, st)), `${torch}: reload differs from the rounding the writer does`);
    if (st !== 'F32') assert.not.ok(bitEqual(back.params, model.params), `${torch}: rounding changed nothing (the test would be vacuous)`);
    // a loaded half-precision model saves in its dtype again by default, and the values are stable
    const again = saved(`dtype-${torch}-again`, back);
    assert.is(readConfig(again).torch_dtype, torch);
    assert.is(readSafetensorsHeader(path.join(again, 'model.safetensors')).tensors.get('model.norm.weight')!.dtype, st);
    assert.ok(bitEqual(Model.load(again).params, back.params));
    // the caller overrides
    const f32 = saved(`dtype-${torch}-f32`, back, { dtype: 'float32' });
    assert.is(readConfig(f32).torch_dtype, 'float32');
    assert.is(readSafetensors(path.join(f32, 'model.safetensors')).get('model.norm.weight').dtype, 'F32');
  }
});

// ---------------------------------------------------------------------------------------------
// Carried-through files and config fields
// ---------------------------------------------------------------------------------------------

test('save carries the source directory\'s other files unchanged and keeps unknown config.json fields', () => {
  const src = saved('carry-src');
  const extraFiles: Record<string, string> = {
    'generation_config.json': '{\n  "do_sample": true,\n  "temperature": 0.6,\n  "max_length": 4096\n}\n',
    'special_tokens_map.json': '{"bos_token": "<bos>", "eos_token": "<eos>"}',
    'tokenizer_config.json': '{"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}", "model_max_length": 512}\n',
    'README.md': '# a model card\n',
  };
  for (const [f, text] of Object.entries(extraFiles)) fs.writeFileSync(path.join(src, f), text);
  // not carried: other weight formats and undo-native's run state
  for (const f of ['pytorch_model.bin', 'consolidated.safetensors', 'trainer_state.json', 'metrics.jsonl']) fs.writeFileSync(path.join(src, f), 'x');
  fs.mkdirSync(path.join(src, 'original'));
  const hf = readConfig(src);
  fs.writeFileSync(path.join(src, 'config.json'), JSON.stringify({
    ...hf, _name_or_path: 'someone/some-model', transformers_version: '4.44.0', custom_field: { a: [1, 2] },
    hidden_act: 'swish', torch_dtype: 'bfloat16', initializer_range: 0.02,
  }));

  const m = Model.load(src);
  assert.is(m.sourceDir, path.resolve(src));
  assert.is(m.hfConfig?.custom_field !== undefined, true);
  const out = path.join(tmp, 'carry-out');
  m.save(out);
  const names = fs.readdirSync(out).sort();
  assert.equal(names, ['README.md', 'config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
  for (const f of Object.keys(extraFiles)) {
    assert.ok(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(src, f))), `${f} is not byte-identical`);
  }
  const cfg = readConfig(out);
  assert.is(cfg._name_or_path, 'someone/some-model');
  assert.is(cfg.transformers_version, '4.44.0');
  assert.equal(cfg.custom_field, { a: [1, 2] });
  assert.is(cfg.initializer_range, 0.02);
  assert.is(cfg.hidden_act, 'silu', 'undo-native\'s value wins for a field it knows');
  assert.is(cfg.torch_dtype, 'bfloat16');
  assert.is(readSafetensors(path.join(out, 'model.safetensors')).get('model.norm.weight').dtype, 'BF16');
  // a clone keeps what save needs; saving in place keeps the carried files
  const c = m.clone();
  assert.is(c.sourceDir, m.sourceDir);
  c.save(out, {}, { dtype: 'float32' });
  assert.equal(fs.readdirSync(out).sort(), names);
  assert.ok(fs.readFileSync(path.join(out, 'generation_config.json')).equals(fs.readFileSync(path.join(src, 'generation_config.json'))));
  assert.is(readConfig(out).custom_field !== undefined, true);
  // transformers' newer "dtype" key follows the saved dtype too
  fs.writeFileSync(path.join(src, 'config.json'), JSON.stringify({ ...hf, dtype: 'float16' }));
  const m2 = Model.load(src);
  const out2 = path.join(tmp, 'carry-out-2');
  m2.save(out2);
  assert.is(readConfig(out2).dtype, 'float16');
  assert.is(readConfig(out2).torch_dtype, 'float16');
  assert.equal(fs.readdirSync(tmp).filter((f) => f.startsWith('.')), [], 'no temporary directories left');
});

// ---------------------------------------------------------------------------------------------
// The reader and name mapping
// ---------------------------------------------------------------------------------------------

test('CheckpointReader: info, readF32 with columns and transpose for F32/BF16/F16; errors name the file and tensor', () => {
  const dir = path.join(tmp, 'reader');
  fs.mkdirSync(dir);
  const w = randn(5 * 12, 11);
  const b = randn(12, 12);
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    fs.rmSync(path.join(dir, 'model.safetensors'), { force: true });
    writeSafetensors(path.join(dir, 'model.safetensors'), {
      w: { dtype, shape: [5, 12], data: w }, b: { dtype, shape: [12], data: b }, ids: { dtype: 'I32', shape: [2], data: Int32Array.from([1, 2]) },
    });
    const r = CheckpointReader.open(dir);
    const W = rounded(w, dtype);
    const B = rounded(b, dtype);
    assert.equal(r.info('w'), { name: 'w', dtype, shape: [5, 12], file: path.join(dir, 'model.safetensors'), numel: 60, byteLength: 60 * (dtype === 'F32' ? 4 : 2) });
    assert.ok(bitEqual(r.readF32('w'), W));
    const at = (i: number, j: number) => W[i * 12 + j];
    const expect = (rows: number, cols: number, f: (i: number, j: number) => number) => Float32Array.from({ length: rows * cols }, (_, k) => f(Math.floor(k / cols), k % cols));
    assert.equal(r.outputShape('w', { transpose: true }), [12, 5]);
    assert.ok(bitEqual(r.readF32('w', { transpose: true }), expect(12, 5, (i, j) => at(j, i))), `${dtype}: transpose`);
    assert.ok(bitEqual(r.readF32('w', { columns: [4, 8] }), expect(5, 4, (i, j) => at(i, 4 + j))), `${dtype}: columns`);
    assert.ok(bitEqual(r.readF32('w', { columns: [8, 12], transpose: true }), expect(4, 5, (i, j) => at(j, 8 + i))), `${dtype}: columns + transpose`);
    assert.ok(bitEqual(r.readF32('b', { columns: [3, 7] }), B.subarray(3, 7)), `${dtype}: 1-D columns`);
    throwsUndo(() => r.readF32('b', { transpose: true }), 'model.safetensors', '"b"', 'transpose needs a 2-D tensor');
    throwsUndo(() => r.readF32('w', { columns: [4, 13] }), 'model.safetensors', '"w"', '[4, 13)');
    throwsUndo(() => r.readInto('w', new Float32Array(59)), 'model.safetensors', '"w"', '60 values', '59');
    throwsUndo(() => r.readF32('ids'), 'model.safetensors', '"ids"', 'I32');
    throwsUndo(() => r.info('nope'), 'model.safetensors', '"nope"');
    r.close();
  }
});

test('CheckpointReader: tensors larger than the 16 MiB chunk read exactly (converted and transposed)', () => {
  const dir = path.join(tmp, 'big');
  fs.mkdirSync(dir);
  const n = 9_000_000; // 18 MB as BF16, 36 MB as F32: several chunks
  const x = randn(n, 21);
  writeSafetensors(path.join(dir, 'model.safetensors'), {
    bf: { dtype: 'BF16', shape: [n], data: x },
    tall: { dtype: 'F32', shape: [n / 4, 4], data: x },
  });
  const r = CheckpointReader.open(dir);
  try {
    assert.ok(bitEqual(r.readF32('bf'), rounded(x, 'BF16')));
    const t = r.readF32('tall', { transpose: true, columns: [1, 3] });
    const rows = n / 4;
    let ok = true;
    for (let i = 0; i < rows && ok; i++) ok = t[i] === x[i * 4 + 1] && t[rows + i] === x[i * 4 + 2];
    assert.ok(ok, 'transposed columns of a multi-chunk tensor');
    const dest = new Float32Array(n);
    r.readInto('tall', dest);
    assert.ok(bitEqual(dest, x));
  } finally {
    r.close();
  }
});

test('loadWeights with a mapping: a fused, transposed [d, q+k+v] checkpoint (HF Conv1D style) loads bit-identical', () => {
  const cfg = tinyConfig('llama', { tieWordEmbeddings: false });
  const m = Model.create(cfg, { seed: 3 });
  const d = cfg.hiddenSize, qd = cfg.numHeads * cfg.headDim, kvd = cfg.numKvHeads * cfg.headDim;
  const tensors: Array<[string, WriteTensor]> = [];
  for (const t of m.tensors) {
    const mt = /^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight$/.exec(t.name);
    if (!mt) {
      tensors.push([t.name.replace('model.', 'transformer.'), { dtype: 'F32', shape: t.shape, data: m.tensor(t.name) }]);
      continue;
    }
    if (mt[2] !== 'q') continue;
    const p = `model.layers.${mt[1]}.self_attn.`;
    const fused = new Float32Array(d * (qd + 2 * kvd)); // [in = d, out = q | k | v]
    [['q', qd, 0], ['k', kvd, qd], ['v', kvd, qd + kvd]].forEach(([name, rows, col0]) => {
      const w = m.tensor(`${p}${name}_proj.weight`); // [rows, d]
      for (let o = 0; o < (rows as number); o++) for (let i = 0; i < d; i++) fused[i * (qd + 2 * kvd) + (col0 as number) + o] = w[o * d + i];
    });
    tensors.push([`transformer.h.${mt[1]}.attn.c_attn.weight`, { dtype: 'F32', shape: [d, qd + 2 * kvd], data: fused }]);
  }
  tensors.push(['transformer.h.0.attn.masked_bias', { dtype: 'F32', shape: [1], data: new Float32Array(1) }]);
  // one tensor stored as two row blocks, reassembled by a custom source
  const gate = m.tensor('model.layers.1.mlp.gate_proj.weight');
  const half = gate.length / 2;
  const gateIdx = tensors.findIndex(([n]) => n === 'transformer.layers.1.mlp.gate_proj.weight');
  tensors.splice(gateIdx, 1,
    ['gate.top', { dtype: 'BF16', shape: [cfg.intermediateSize / 2, d], data: gate.subarray(0, half) }],
    ['gate.bottom', { dtype: 'F16', shape: [cfg.intermediateSize / 2, d], data: gate.subarray(half) }]);
  const dir = path.join(tmp, 'mapped');
  fs.mkdirSync(dir);
  writeCheckpoint(dir, tensors, { maxShardSize: 20_000 });
  const reader = CheckpointReader.open(dir);
  const mapping = {
    source: (dest: { name: string }) => {
      if (dest.name === 'model.layers.1.mlp.gate_proj.weight') {
        return { from: ['gate.top', 'gate.bottom'], read: (r: CheckpointReader, out: Float32Array) => {
          r.readInto('gate.top', out.subarray(0, half));
          r.readInto('gate.bottom', out.subarray(half));
        } };
      }
      const mt = /^model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight$/.exec(dest.name);
      if (!mt) return { name: dest.name.replace('model.', 'transformer.') };
      const cols: Record<string, [number, number]> = { q: [0, qd], k: [qd, qd + kvd], v: [qd + kvd, qd + 2 * kvd] };
      return { name: `transformer.h.${mt[1]}.attn.c_attn.weight`, columns: cols[mt[2]], transpose: true };
    },
    ignore: (name: string) => name.endsWith('.attn.masked_bias'),
  };
  const back = new Model(cfg);
  back.loadWeights(reader, mapping);
  reader.close();
  const want = m.params.slice();
  want.set(rounded(gate.subarray(0, half), 'BF16'), m.tensorInfo('model.layers.1.mlp.gate_proj.weight').offset);
  want.set(rounded(gate.subarray(half), 'F16'), m.tensorInfo('model.layers.1.mlp.gate_proj.weight').offset + half);
  assert.ok(bitEqual(back.params, want), 'mapped load differs');
  assert.not.ok(bitEqual(back.params, m.params), 'the BF16/F16 halves should differ from the F32 original');
  // without `ignore` the buffer is an unexpected tensor; a wrong column split is a shape error naming both tensors
  throwsUndo(() => new Model(cfg).loadWeights(dir, { source: mapping.source }), INDEX_FILE, 'unexpected', 'masked_bias');
  throwsUndo(() => new Model(cfg).loadWeights(dir, {
    ...mapping, source: (t) => (t.name.endsWith('k_proj.weight') ? { ...mapping.source(t), columns: [0, qd] as const } : mapping.source(t)),
  }), 'c_attn.weight', `[${qd}, ${d}]`, `[${kvd}, ${d}]`, 'k_proj.weight');
  // a custom source's tensors must exist
  throwsUndo(() => new Model(cfg).loadWeights(dir, {
    ...mapping, source: (t) => (t.name === 'model.norm.weight' ? { from: ['norm.a'], read: () => undefined } : mapping.source(t)),
  }), INDEX_FILE, '"norm.a" (for "model.norm.weight")');
});

// ---------------------------------------------------------------------------------------------
// Bad input: a clear UndoError naming the file and tensor, nothing written
// ---------------------------------------------------------------------------------------------

/** Loading `dir` (and saving it to a new directory) fails with a message containing `expect`; no output appears. */
function refuses(dir: string, ...expect: (string | RegExp)[]): void {
  const out = path.join(tmp, `out-${path.basename(dir)}`);
  throwsUndo(() => Model.load(dir).save(out), ...expect);
  assert.not.ok(fs.existsSync(out), `${out} was created`);
  assert.equal(fs.readdirSync(tmp).filter((f) => f.startsWith('.')), [], 'temporary directory left behind');
}

test('bad sharded checkpoints: missing shard, tensor absent from its shard, wrong shape, unsupported dtype', () => {
  const good = saved('bad-base', model, { maxShardSize: LIMIT });
  const index = readIndex(good);
  const [firstName, firstShard] = Object.entries(index.weight_map)[0];
  const indexPath = path.join(good, INDEX_FILE);

  let dir = copyDir(good, 'bad-missing-shard');
  fs.rmSync(path.join(dir, firstShard));
  refuses(dir, path.join(dir, INDEX_FILE), `"${firstShard}"`, `"${firstName}"`, 'does not exist');

  dir = copyDir(good, 'bad-absent');
  const other = Object.values(index.weight_map).find((f) => f !== firstShard)!;
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify({ ...index, weight_map: { ...index.weight_map, [firstName]: other } }));
  refuses(dir, path.join(dir, INDEX_FILE), `"${firstName}"`, other, 'has no tensor');

  dir = copyDir(good, 'bad-traversal');
  fs.writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify({ ...index, weight_map: { ...index.weight_map, [firstName]: '../x.safetensors' } }));
  refuses(dir, INDEX_FILE, `"${firstName}"`, 'file name');

  // a shard rewritten with one tensor reshaped (same bytes) / stored as I32
  const shardOf = (name: string) => index.weight_map[name];
  const victim = 'model.layers.1.self_attn.q_proj.weight';
  for (const [tag, change, expect] of [
    ['bad-shape', (h: { shape: number[]; dtype: string }) => { h.shape = [h.shape[0] / 2, h.shape[1] * 2]; }, ['[32, 128]', '[64, 64]']],
    ['bad-dtype', (h: { shape: number[]; dtype: string }) => { h.dtype = 'I32'; }, ['I32']],
  ] as const) {
    dir = copyDir(good, tag);
    const file = path.join(dir, shardOf(victim));
    const { header, data } = splitSafetensors(file);
    change(header[victim]);
    fs.writeFileSync(file, rawSafetensors(header, data));
    refuses(dir, file, `"${victim}"`, ...expect);
  }
  assert.ok(fs.existsSync(indexPath));
});

test('bad shard files: truncated, header length past the end, overlapping offsets — found before any data is read', () => {
  const good = saved('bad-base-2', model, { maxShardSize: LIMIT });
  const index = readIndex(good);
  const last = [...new Set(Object.values(index.weight_map))].sort().pop()!;

  let dir = copyDir(good, 'bad-truncated');
  let file = path.join(dir, last);
  fs.truncateSync(file, fs.statSync(file).size - 10);
  refuses(dir, file, 'truncated');
  // the reader refuses at open, though no tensor was asked for
  throwsUndo(() => CheckpointReader.open(dir), file, 'truncated');

  dir = copyDir(good, 'bad-header-length');
  file = path.join(dir, last);
  const buf = fs.readFileSync(file);
  buf.writeBigUInt64LE(BigInt(buf.length) * 1000n, 0);
  fs.writeFileSync(file, buf);
  refuses(dir, file, 'header length', 'larger than');
  const huge = Buffer.alloc(16);
  huge.writeBigUInt64LE(2n ** 62n, 0); // would be an impossible allocation: refused from the file size first
  fs.writeFileSync(file, huge);
  refuses(dir, file, 'header length');

  dir = copyDir(good, 'bad-overlap');
  file = path.join(dir, last);
  const { header, data } = splitSafetensors(file);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  assert.ok(names.length >= 2, 'the last shard needs two tensors for this test');
  const [a, b] = names.sort((x, y) => header[x].data_offsets[0] - header[y].data_offsets[0]).slice(-2); // b is the last
  const shift = 4;
  header[b].data_offsets = [header[b].data_offsets[0] - shift, header[b].data_offsets[1] - shift];
  fs.writeFileSync(file, rawSafetensors(header, data.subarray(0, data.length - shift)));
  refuses(dir, file, 'overlaps', `"${a}"`, `"${b}"`);
});

test('missing and unexpected tensors, no weights at all, bad save options: clear errors, nothing written', () => {
  const cfgFile = (dir: string) => path.join(dir, 'config.json');
  // missing: a checkpoint of a 3-layer model for a 4-layer config... and unexpected the other way round
  const three = saved('three', Model.create({ ...MICRO, numLayers: 3 }, { seed: 1 }), { maxShardSize: LIMIT });
  let dir = copyDir(three, 'bad-missing');
  fs.writeFileSync(cfgFile(dir), JSON.stringify({ ...readConfig(dir), num_hidden_layers: 4 }));
  refuses(dir, path.join(dir, INDEX_FILE), 'missing tensors', '"model.layers.3.input_layernorm.weight"');
  dir = copyDir(three, 'bad-unexpected');
  fs.writeFileSync(cfgFile(dir), JSON.stringify({ ...readConfig(dir), num_hidden_layers: 2 }));
  refuses(dir, path.join(dir, INDEX_FILE), 'unexpected tensors', 'model.layers.2.');
  // single file: the messages name model.safetensors
  dir = copyDir(saved('single-3', Model.create({ ...MICRO, numLayers: 3 }, { seed: 1 })), 'bad-missing-single');
  fs.writeFileSync(cfgFile(dir), JSON.stringify({ ...readConfig(dir), num_hidden_layers: 4 }));
  refuses(dir, path.join(dir, 'model.safetensors'), 'missing tensors', '"model.layers.3.');
  // no weights
  dir = path.join(tmp, 'bad-noweights');
  fs.mkdirSync(dir);
  fs.copyFileSync(cfgFile(three), cfgFile(dir));
  fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), 'x');
  const e = throwsUndo(() => Model.load(dir), dir, 'model.safetensors', INDEX_FILE);
  assert.match(e.hint ?? '', /pytorch_model\.bin/);
  // bad save options are refused before anything is written
  const out = path.join(tmp, 'out-bad-options');
  throwsUndo(() => model.save(out, {}, { dtype: 'float64' as never }), 'dtype', 'float64');
  throwsUndo(() => model.save(out, {}, { maxShardSize: 'big' }), 'maxShardSize', '"big"');
  assert.not.ok(fs.existsSync(out));
  assert.equal(fs.readdirSync(tmp).filter((f) => f.startsWith('.')), []);
});

// ---------------------------------------------------------------------------------------------
// info
// ---------------------------------------------------------------------------------------------

test('head chunk rows: the native head and estimateMemory agree; a model over 67M parameters gets P/8 logits a chunk', async () => {
  for (const cfg of [MICRO, tinyConfig('llama', { vocabSize: 40000 }), tinyConfig('gemma2', { vocabSize: 262144 })]) {
    const m = Model.create(cfg, { seed: 2 });
    for (const N of [1, 7, 255, 256, 257, 512, 1000]) {
      const floor = Math.max(1, Math.min(256, N, Math.floor(2 ** 23 / cfg.vocabSize)));
      assert.is(m.native.headChunkRows(N), headChunkRowsFor(cfg, N), `${cfg.family} V=${cfg.vocabSize} N=${N}`);
      assert.is(headChunkRowsFor(cfg, N), Math.ceil(N / Math.ceil(N / floor)), `small model: the 2^23 floor, N=${N}`);
    }
  }
  // Qwen2.5's vocabulary on a 1-layer d=512 model: 80M parameters, so 10M logits a chunk (66 rows) instead of 55
  const big = tinyConfig('llama', { vocabSize: 151936, hiddenSize: 512, numHeads: 8, numKvHeads: 2, headDim: 64, intermediateSize: 1024, numLayers: 1, maxPositions: 256 });
  const m = Model.create(big, { seed: 3, std: 0.02 });
  const P = m.numParams();
  assert.ok(P > 2 ** 26, `${P} parameters`);
  const N = 130, cap = Math.floor(Math.floor(P / 8) / big.vocabSize);
  assert.ok(cap > Math.floor(2 ** 23 / big.vocabSize), `cap ${cap}`);
  assert.is(m.native.headChunkRows(N), Math.ceil(N / Math.ceil(N / cap)));
  assert.is(headChunkRowsFor(big, N), m.native.headChunkRows(N));
  // the fused loss over those chunks equals cross-entropy on the logits (float64 here)
  const ids = Int32Array.from({ length: N }, (_, i) => (i * 7919 + 3) % big.vocabSize);
  const targets = Int32Array.from({ length: N }, (_, i) => (i * 104729 + 11) % big.vocabSize);
  await m.native.forward(ids, 1, N);
  const z = await m.native.logits(null);
  let ref = 0;
  for (let r = 0; r < N; r++) {
    const row = z.subarray(r * big.vocabSize, (r + 1) * big.vocabSize);
    let mx = -Infinity;
    for (const v of row) mx = Math.max(mx, v);
    let s = 0;
    for (const v of row) s += Math.exp(v - mx);
    ref += Math.log(s) + mx - row[targets[r]];
  }
  ref /= N;
  const got = (await m.native.headLoss(targets, null, -100, 0, true, null)).loss;
  assert.ok(Math.abs(got - ref) < 1e-5 * Math.abs(ref), `fused ${got} vs reference ${ref}`);
});

test('modelInfo: parameter count from the headers equals Model.numParams(); dtypes, shards, bytes, tokenizer', () => {
  const configs: ModelConfig[] = [MICRO, tinyConfig('llama', { tieWordEmbeddings: false }), tinyConfig('gemma2'), presetConfig('gemma-tiny')];
  for (const cfg of configs) {
    const m = Model.create(cfg, { seed: 2 });
    assert.is(nativeParamCount(cfg), m.numParams(), `${cfg.family} nativeParamCount`);
    const dir = saved(`info-${cfg.family}-${cfg.hiddenSize}-${cfg.tieWordEmbeddings}`, m, { maxShardSize: 40_000, dtype: 'bfloat16' });
    const info = modelInfo(dir);
    assert.is(info.parameters, m.numParams(), `${cfg.family}: parameters`);
    assert.is(info.modelType, cfg.family);
    assert.equal(info.architectures, [cfg.family === 'llama' ? 'LlamaForCausalLM' : 'Gemma2ForCausalLM']);
    assert.equal(info.dtypes, { BF16: m.tensors.length });
    assert.is(info.torchDtype, 'bfloat16');
    assert.is(info.sharded, true);
    const shards = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
    assert.equal(info.shards.map((s) => s.file), shards);
    assert.is(info.bytes, shards.reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0));
    assert.is(info.tokenizer, true);
    assert.ok(info.memory && info.memory.batch === 1 && info.memory.seq === 1024);
  }
  // a tied model whose checkpoint also holds lm_head.weight (as some HF exports do) and a rotary buffer: not counted
  const dir = copyDir(saved('info-tied'), 'info-tied-extra');
  const st = readSafetensors(path.join(dir, 'model.safetensors'));
  fs.rmSync(path.join(dir, 'model.safetensors'));
  fs.rmSync(path.join(dir, 'tokenizer.json'));
  writeSafetensors(path.join(dir, 'model.safetensors'), [
    ...st.names().map((n) => [n, { dtype: 'F32', shape: st.get(n).shape, data: st.get(n).data }] as [string, WriteTensor]),
    ['lm_head.weight', { dtype: 'F32', shape: [MICRO.vocabSize, MICRO.hiddenSize], data: model.tensor('model.embed_tokens.weight') }],
    ['model.layers.0.self_attn.rotary_emb.inv_freq', { dtype: 'F32', shape: [8], data: new Float32Array(8) }],
  ]);
  const info = modelInfo(dir);
  assert.is(info.parameters, model.numParams());
  assert.is(info.tensors, model.tensors.length + 2);
  assert.is(info.tokenizer, false);
  assert.is(info.sharded, false);
  assert.ok(bitEqual(Model.load(dir).params, model.params), 'the extra tensors are ignored on load too');
  // an architecture the engine does not run: still described, no memory estimate
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'mamba', architectures: ['MambaForCausalLM'] }));
  const g = modelInfo(dir);
  assert.is(g.modelType, 'mamba');
  assert.is(g.memory, undefined);
  assert.match(g.memoryError ?? '', /model_type/);
  assert.is(g.parameters, model.numParams() , 'tie_word_embeddings defaults to true as in transformers');
});

test('estimateMemory: the formula\'s pieces match the native buffers (exact counts, and process RSS growth)', () => {
  // exact: params and grads are numParams floats each
  const est = estimateMemory(MICRO, 2, 128);
  assert.is(est.parts.params, model.numParams() * 4);
  assert.is(est.load, 2 * model.numParams() * 4 + 128 * MICRO.headDim * 4); // RoPE tables for the 128 positions used
  // logits cost one 256-row chunk × vocab, not rows × vocab: doubling the batch past 256 rows leaves the head alone
  const e1 = estimateMemory(MICRO, 4, 128);
  const e2 = estimateMemory(MICRO, 8, 128);
  assert.is(e1.parts.headTrain, e2.parts.headTrain);
  assert.is(e2.parts.activations, 2 * e1.parts.activations);
  assert.is(e1.parts.headTrain, (256 * MICRO.vocabSize + 2 * 256) * 4);
  // distillation: teacher params + grads + rope, its activations, the student's step with the 3-chunk KD head
  const TINY = presetConfig('tiny');
  const withTeacher = estimateMemory(MICRO, 4, 128, TINY);
  const teacherAlone = estimateMemory(TINY, 4, 128);
  assert.is(withTeacher.parts.teacherLoad, teacherAlone.load);
  assert.is(withTeacher.parts.teacherActivations, teacherAlone.parts.activations);
  assert.is(withTeacher.distill, teacherAlone.load + teacherAlone.parts.activations + withTeacher.train - withTeacher.parts.headTrain +
    (3 * 256 * MICRO.vocabSize + 256) * 4);
  assert.is(estimateMemory(MICRO, 4, 128).distill, undefined);

  // measured, in a fresh process (this one's allocator holds pages freed by earlier tests): RSS growth of
  // constructing a model, of its first forward, and of its first training step
  const cfg: ModelConfig = { ...MICRO, hiddenSize: 128, intermediateSize: 384, numHeads: 4, numKvHeads: 2, headDim: 32, numLayers: 2, vocabSize: 4096, maxPositions: 64 };
  const B = 64, T = 64;
  const script = `
    const { Model } = require(${JSON.stringify(path.join(ROOT, 'dist', 'lib', 'models', 'model.js'))});
    const rss = () => { gc(); return process.memoryUsage().rss; };
    (async () => {
      const cfg = ${JSON.stringify(cfg)}, B = ${B}, T = ${T};
      const r0 = rss();
      const m = new Model(cfg);
      const r1 = rss();
      const ids = new Int32Array(B * T).map((_, i) => (i * 7919) % cfg.vocabSize);
      await m.native.forward(ids, B, T);
      const r2 = rss();
      await m.native.trainStep(ids, ids, B, T, null, 0, -100);
      await m.native.adamw({ lr: 1e-3 });
      const r3 = rss();
      console.log(JSON.stringify({ construction: r1 - r0, forward: r2 - r1, train: r3 - r2, n: m.params.length }));
    })();`;
  const child = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, UNDO_THREADS: '1' } });
  assert.is(child.status, 0, child.stderr);
  const got = JSON.parse(child.stdout) as { construction: number; forward: number; train: number; n: number };
  const e = estimateMemory(cfg, B, T);
  assert.is(got.n, nativeParamCount(cfg));
  // (the sanitizer build's shadow memory inflates RSS: there only the exact counts above are checked)
  const close = (bytes: number, want: number, what: string) => {
    if (!SANITIZED) assert.ok(Math.abs(bytes - want) <= 0.1 * want + 2e6, `${what}: RSS grew ${(bytes / 1e6).toFixed(1)} MB, the estimate says ${(want / 1e6).toFixed(1)} MB`);
  };
  close(got.construction, e.load, 'construction (params + grads + rope)');
  close(got.forward, e.parts.activations, 'forward activations');
  // the head's logit chunk is kept across calls (Model::head_scratch), so the first step's growth includes it
  close(got.train, e.parts.backwardScratch + e.parts.adam + e.parts.headTrain, 'backward scratch + AdamW moments + head chunk');
});

test('undo-native info --model DIR [--json]: parameters, shards and memory from the headers', () => {
  const dir = saved('info-cli', model, { maxShardSize: LIMIT, dtype: 'float16' });
  const bin = path.join(ROOT, 'bin', 'undo-native.js');
  const run = (args: string[]) => spawnSync(process.execPath, [bin, 'info', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  const j = run(['--model', dir, '--json', '--batch', '2', '--seq', '256', '--teacher', dir]);
  assert.is(j.status, 0, j.stderr);
  const out = JSON.parse(j.stdout) as { model: { parameters: number; dtypes: Json; shards: unknown[]; memory: Json } };
  assert.is(out.model.parameters, model.numParams());
  assert.equal(out.model.dtypes, { F16: model.tensors.length });
  assert.is(out.model.shards.length, new Set(Object.values(readIndex(dir).weight_map)).size);
  assert.equal(out.model.memory, JSON.parse(JSON.stringify(estimateMemory(MICRO, 2, 256, MICRO))));
  const t = run(['--model', dir]);
  assert.is(t.status, 0, t.stderr);
  assert.match(t.stdout, /llama: 4 layers, d=64/);
  assert.match(t.stdout, new RegExp(`parameters: ${model.numParams().toLocaleString('en-US')}`));
  assert.match(t.stdout, /F16 \(38 tensors\); torch_dtype float16/);
  assert.match(t.stdout, /model-00001-of-0000\d\.safetensors/);
  assert.match(t.stdout, /train +\d+\.\d\d MB/);
  const bad = run(['--model', path.join(tmp, 'nope')]);
  assert.is(bad.status, 1);
  assert.match(bad.stderr, /^error: model directory .*nope does not exist/);
});

test.run();
