/**
 * Fuzzing the parsers of untrusted input: safetensors (header, offsets, dtypes, shapes), a model directory's
 * config.json (through Model.load, so hostile sizes must be refused before anything is allocated), JSONL /
 * chat data files, tokenizer.json, and a teacher store's manifest.json. Each target starts from valid seeds and applies structure-aware
 * mutations (lengths, offsets, dtypes, shapes, nesting, huge numbers, invalid UTF-8) or random bytes, seeded.
 *
 * Every input must end in success or a thrown UndoError. A failure is anything else: another exception type,
 * an input that takes longer than `slowMs`, or one after which the process holds far more ArrayBuffer memory
 * than the input justifies. `test/fuzz.test.ts` runs a bounded smoke in `npm test`; `npm run fuzz -- --seconds N`
 * runs long (test/fuzz/run.ts).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Rng } from '../../lib/core/rng';
import { UndoError } from '../../lib/core/errors';
import { loadDataFile } from '../../lib/data/chat';
import { loadHFTokenizer } from '../../lib/data/hf_tokenizer';
import { ByteTokenizer } from '../../lib/data/tokenizer';
import { packDocuments } from '../../lib/data/datasets';
import { cacheTeacher, openTeacherStore } from '../../lib/distill/teacher_store';
import { parseSafetensors, serializeSafetensors } from '../../lib/formats/safetensors';
import { Model, ModelConfig } from '../../lib/models/model';

export interface FuzzTarget {
  name: string;
  seeds: Buffer[];
  /** a new input from a seed */
  mutate(rng: Rng, seed: Buffer): Buffer;
  /** parse (and use) the input; throws UndoError for bad input */
  run(input: Buffer): void | Promise<void>;
}

export interface FuzzFailure {
  target: string;
  /** the input, base64 */
  input: string;
  error: string;
}

export interface FuzzResult {
  tried: number;
  ok: number;
  refused: number;
  failures: FuzzFailure[];
  perTarget: Record<string, { tried: number; ok: number; refused: number }>;
}

// ------------------------------------------------------------------------------------ mutations

const INTERESTING_NUMBERS = [0, -1, 1, 2, 3, 7, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 60, 1e9, 1e15, 1e308, -1e9, 0.5, 1.5, -0.0];
const INTERESTING_VALUES: unknown[] = [...INTERESTING_NUMBERS, null, true, false, '', 'abc', '\u0000', '\ud800', [], [1], [-1, 2], [1e9, 1e9], {}, { a: 1 }, 'F32', 'BF16', 'I64', 'Q4_K'];

function pickOne<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.int(0, xs.length - 1)];
}

/** A random JSON-ish value: interesting scalars, nested arrays and objects (up to `depth`). */
function randomValue(rng: Rng, depth = 2): unknown {
  const r = rng.next();
  // a copy: the arrays and objects among the interesting values must not be shared (a later mutation would change them everywhere)
  if (depth <= 0 || r < 0.6) return structuredClone(pickOne(rng, INTERESTING_VALUES));
  if (r < 0.8) return Array.from({ length: rng.int(0, 4) }, () => randomValue(rng, depth - 1));
  const o: Record<string, unknown> = {};
  for (let i = 0; i < rng.int(0, 3); i++) o[pickOne(rng, ['dtype', 'shape', 'data_offsets', 'type', 'x', ''])] = randomValue(rng, depth - 1);
  return o;
}

/** Every (container, key) in a JSON value, for picking a place to mutate. */
function places(v: unknown, out: Array<{ parent: Record<string, unknown> | unknown[]; key: string | number }> = []): typeof out {
  if (Array.isArray(v)) v.forEach((x, i) => { out.push({ parent: v, key: i }); places(x, out); });
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) { out.push({ parent: v as Record<string, unknown>, key: k }); places(x, out); }
  return out;
}

/** Structure-aware JSON mutation: replace, delete, nest or add a value somewhere in the document. */
export function mutateJson(rng: Rng, value: unknown): unknown {
  const v = JSON.parse(JSON.stringify(value));
  const n = rng.int(1, 3);
  for (let i = 0; i < n; i++) {
    const ps = places(v);
    if (!ps.length) return randomValue(rng);
    const p = pickOne(rng, ps);
    const r = rng.next();
    const set = (x: unknown) => ((p.parent as Record<string | number, unknown>)[p.key] = x);
    const cur = (p.parent as Record<string | number, unknown>)[p.key];
    if (r < 0.45) set(randomValue(rng));
    else if (r < 0.6) {
      if (Array.isArray(p.parent)) p.parent.splice(p.key as number, 1);
      else delete p.parent[p.key as string];
    } else if (r < 0.7) set([cur]);
    else if (r < 0.8 && typeof cur === 'number') set(cur * pickOne(rng, [-1, 2, 1024, 1e9, 0.5]) + pickOne(rng, [0, 1, -1]));
    else if (r < 0.9 && !Array.isArray(p.parent)) p.parent[pickOne(rng, ['__metadata__', 'extra', 'hidden_size', 'vocab_size', 'rope_scaling', 'messages'])] = randomValue(rng);
    else set(typeof cur === 'string' ? cur + pickOne(rng, ['\ud800', '\u0000', 'x'.repeat(rng.int(1, 300))]) : randomValue(rng, 3));
  }
  return v;
}

/** Byte mutations: flip, overwrite with an interesting byte, truncate, insert, duplicate a slice, or invalid UTF-8. */
export function mutateBytes(rng: Rng, buf: Buffer): Buffer {
  let b = Buffer.from(buf);
  const n = rng.int(1, 4);
  for (let i = 0; i < n; i++) {
    const r = rng.next();
    if (!b.length) return Buffer.from([rng.int(0, 255)]);
    const at = rng.int(0, b.length - 1);
    if (r < 0.3) b[at] ^= 1 << rng.int(0, 7);
    else if (r < 0.45) b[at] = pickOne(rng, [0, 0xff, 0x7f, 0x80, 0xc0, 0xed, 0x22, 0x7b, 0x7d, 0x5b, 0x2c]);
    else if (r < 0.6) b = b.subarray(0, at);
    else if (r < 0.75) b = Buffer.concat([b.subarray(0, at), Buffer.from([0xc3, 0x28, 0xa0, 0xa1, 0xf0, 0x28, 0x8c, 0xbc].slice(0, rng.int(1, 8))), b.subarray(at)]);
    else if (r < 0.9) b = Buffer.concat([b.subarray(0, at), b.subarray(at, Math.min(b.length, at + rng.int(1, 64))), b.subarray(at)]);
    else b = Buffer.concat([b, Buffer.from(Array.from({ length: rng.int(1, 32) }, () => rng.int(0, 255)))]);
  }
  return b;
}

// --------------------------------------------------------------------------------------- targets

function safetensorsSeeds(): Buffer[] {
  const rng = new Rng(1);
  const f32 = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
  return [
    serializeSafetensors({ a: { dtype: 'F32', shape: [2, 3], data: f32(6) }, b: { dtype: 'BF16', shape: [5], data: f32(5) } }, { format: 'pt' }),
    serializeSafetensors({ w: { dtype: 'F16', shape: [3, 1, 2], data: f32(6) }, i: { dtype: 'I32', shape: [4], data: Int32Array.from([1, -2, 3, 4]) }, u: { dtype: 'U8', shape: [3], data: Uint8Array.from([1, 2, 3]) } }),
    serializeSafetensors({ s: { dtype: 'F32', shape: [], data: f32(1) } }),
  ];
}

/** Split a safetensors buffer into header JSON and data (for structure-aware mutation); null when it does not parse. */
function splitSafetensors(buf: Buffer): { header: Record<string, unknown>; data: Buffer } | null {
  if (buf.length < 8) return null;
  const n = Number(buf.readBigUInt64LE(0));
  if (n > buf.length - 8) return null;
  try {
    return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
  } catch {
    return null;
  }
}

function joinSafetensors(header: unknown, data: Buffer, lengthOverride?: bigint): Buffer {
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

const safetensorsTarget: FuzzTarget = {
  name: 'safetensors',
  seeds: safetensorsSeeds(),
  mutate(rng, seed) {
    const parts = splitSafetensors(seed);
    const r = rng.next();
    if (!parts || r < 0.25) return mutateBytes(rng, seed);
    if (r < 0.35) {
      const lens = [0n, 1n, 2n ** 60n, 2n ** 63n, 2n ** 64n - 1n, BigInt(seed.length), BigInt(seed.length - 7), 100_000_001n];
      return joinSafetensors(parts.header, parts.data, pickOne(rng, lens));
    }
    let data = parts.data;
    if (rng.next() < 0.2) data = data.subarray(0, rng.int(0, data.length));
    return joinSafetensors(mutateJson(rng, parts.header), data);
  },
  run(input) {
    const f = parseSafetensors(input, 'fuzz.safetensors');
    for (const name of f.names()) {
      try {
        f.readTensorF32(name);
      } catch (e) {
        // integer tensors outside int32 and the like are refused by name: that is a clean outcome too
        if (!(e instanceof UndoError)) throw e;
      }
    }
  },
};

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-fuzz-'));

/** A tiny model directory whose config.json the config target replaces. */
function tinyModelDir(name: string): { dir: string; config: Buffer } {
  const dir = path.join(TMP, name);
  const tok = new ByteTokenizer();
  const cfg: ModelConfig = {
    family: 'llama', vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 2, numHeads: 2, numKvHeads: 1, headDim: 8, intermediateSize: 24,
    maxPositions: 32, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, attnLogitSoftcapping: 0, finalLogitSoftcapping: 0,
    queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu', bosTokenId: tok.bos, eosTokenId: tok.eos, padTokenId: tok.pad,
  };
  Model.create(cfg, { seed: 1 }, tok).save(dir);
  return { dir, config: fs.readFileSync(path.join(dir, 'config.json')) };
}

function configTarget(): FuzzTarget {
  const { dir, config } = tinyModelDir('model');
  const fixtures = path.join(__dirname, '..', '..', '..', 'test', 'fixtures');
  const seeds = [config];
  if (fs.existsSync(fixtures)) for (const d of fs.readdirSync(fixtures)) {
    const p = path.join(fixtures, d, 'config.json');
    if (fs.existsSync(p)) seeds.push(fs.readFileSync(p));
  }
  return {
    name: 'config.json (Model.load)',
    seeds,
    mutate(rng, seed) {
      if (rng.next() < 0.2) return mutateBytes(rng, seed);
      const numbers = ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'head_dim', 'vocab_size', 'max_position_embeddings'];
      const j = JSON.parse(seed.toString('utf8'));
      // hostile sizes first: the allocation must be refused before it happens
      if (rng.next() < 0.4) j[pickOne(rng, numbers)] = pickOne(rng, [1e9, 2 ** 31, 2 ** 53, 1e15, 65536 * 65536, -8, 0, 3.5, 1e308]);
      return Buffer.from(JSON.stringify(mutateJson(rng, j)), 'utf8');
    },
    run(input) {
      fs.writeFileSync(path.join(dir, 'config.json'), input);
      Model.load(dir);
    },
  };
}

function dataTarget(): FuzzTarget {
  const lines = [
    { text: 'The first paragraph.' }, { prompt: 'Q: 2+2=', completion: ' 4' },
    { messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] }, { text: 'ünïcödé ✓ 漢字' },
  ];
  const seeds = [
    Buffer.from(lines.map((l) => JSON.stringify(l)).join('\n') + '\n'),
    Buffer.from(JSON.stringify(lines[0]) + '\n\n' + JSON.stringify(lines[3]) + '\n'),
  ];
  const file = path.join(TMP, 'data.jsonl');
  const tok = new ByteTokenizer();
  return {
    name: 'JSONL data',
    seeds,
    mutate(rng, seed) {
      const r = rng.next();
      if (r < 0.3) return mutateBytes(rng, seed);
      const ls = seed.toString('utf8').split('\n');
      const i = rng.int(0, ls.length - 1);
      if (r < 0.4) ls[i] = '['.repeat(rng.int(1000, 20000)) + ']'.repeat(rng.int(0, 20000));
      else {
        try {
          ls[i] = JSON.stringify(mutateJson(rng, JSON.parse(ls[i] || '{}')));
        } catch {
          ls[i] = JSON.stringify(randomValue(rng, 3));
        }
      }
      return Buffer.from(ls.join('\n'), 'utf8');
    },
    run(input) {
      fs.writeFileSync(file, input);
      loadDataFile(file, tok);
    },
  };
}

function tokenizerTarget(): FuzzTarget {
  // a small byte-level BPE in tokenizer.json form
  const bytes = Array.from({ length: 256 }, (_, b) => b);
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
  let extra = 0;
  const uni = bytes.map((b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
  const vocab: Record<string, number> = {};
  uni.forEach((c, i) => (vocab[c] = i));
  vocab['th'] = 256;
  vocab['the'] = 257;
  const json = {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 258, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: ['t h', 'th e'] },
  };
  const dir = path.join(TMP, 'tok');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>', bos_token: null }));
  return {
    name: 'tokenizer.json',
    seeds: [Buffer.from(JSON.stringify(json))],
    mutate(rng, seed) {
      if (rng.next() < 0.2) return mutateBytes(rng, seed);
      const j = JSON.parse(seed.toString('utf8'));
      // mutate the small parts (not the 256-entry vocab, which would dominate the places)
      const part = pickOne(rng, ['model', 'pre_tokenizer', 'decoder', 'added_tokens', 'normalizer', 'post_processor', 'top']);
      if (part === 'model') {
        const { vocab: v, ...rest } = j.model;
        j.model = { ...(mutateJson(rng, rest) as object), vocab: rng.next() < 0.2 ? mutateJson(rng, { a: 1, b: -1 }) : v };
      } else if (part === 'top') return Buffer.from(JSON.stringify(mutateJson(rng, { ...j, model: 0 })).replace('"model":0', `"model":${JSON.stringify(j.model)}`));
      else j[part] = mutateJson(rng, j[part] ?? {});
      return Buffer.from(JSON.stringify(j), 'utf8');
    },
    run(input) {
      fs.writeFileSync(path.join(dir, 'tokenizer.json'), input);
      const tok = loadHFTokenizer(dir);
      tok.decode(tok.encode('the theme ünï ✓'));
    },
  };
}

/** A tiny teacher store (cache-teacher on a tiny model) whose manifest.json the store target replaces. */
async function storeTarget(): Promise<FuzzTarget> {
  const tok = new ByteTokenizer();
  const { dir: mdir } = tinyModelDir('store-teacher');
  const teacher = Model.load(mdir);
  const dir = path.join(TMP, 'store');
  const data = packDocuments(tok, ['a teacher store for the fuzzer', 'two documents, a few windows each'], 8, { seed: 1 });
  await cacheTeacher(teacher, data, { k: 4, out: dir, shardWindows: 3, batchSize: 2 });
  const manifest = fs.readFileSync(path.join(dir, 'manifest.json'));
  const numbers = ['vocab', 'k', 'seqLen', 'numWindows', 'numTokens', 'shardWindows', 'numShards'];
  return {
    name: 'teacher store manifest',
    seeds: [manifest],
    mutate(rng, seed) {
      if (rng.next() < 0.2) return mutateBytes(rng, seed);
      const j = JSON.parse(seed.toString('utf8'));
      if (rng.next() < 0.3) {
        // a consistent hostile size: seqLen (or k) huge with the derived fields made to agree
        const f = pickOne(rng, ['seqLen', 'k', 'numWindows']);
        j[f] = pickOne(rng, [1e6, 1e9, 2 ** 31, 2 ** 40]);
        if (f === 'k' && j.encoding) j.encoding.k = j.k;
        j.numTokens = j.numWindows * j.seqLen;
        j.numShards = Math.ceil(j.numWindows / j.shardWindows);
        return Buffer.from(JSON.stringify(j));
      }
      if (rng.next() < 0.3) j[pickOne(rng, numbers)] = pickOne(rng, INTERESTING_NUMBERS);
      return Buffer.from(JSON.stringify(mutateJson(rng, j)), 'utf8');
    },
    run(input) {
      fs.writeFileSync(path.join(dir, 'manifest.json'), input);
      const st = openTeacherStore(dir, { verify: 'none', allowIncomplete: true });
      try {
        const n = Math.min(st.numWindows, 4);
        st.readSync(Array.from({ length: n }, (_, i) => i));
      } finally {
        st.close();
      }
    },
  };
}

export async function fuzzTargets(): Promise<FuzzTarget[]> {
  return [safetensorsTarget, configTarget(), dataTarget(), tokenizerTarget(), await storeTarget()];
}

/** Run every target round-robin until `inputs` inputs per target or `seconds` have passed, whichever first. */
export async function runFuzz(opts: { seed: number; inputs?: number; seconds?: number; slowMs?: number; targets?: FuzzTarget[] }): Promise<FuzzResult> {
  const targets = opts.targets ?? (await fuzzTargets());
  const rng = new Rng(opts.seed);
  const deadline = opts.seconds !== undefined ? Date.now() + opts.seconds * 1000 : Infinity;
  const maxInputs = opts.inputs ?? Infinity;
  const slowMs = opts.slowMs ?? 2000;
  const res: FuzzResult = { tried: 0, ok: 0, refused: 0, failures: [], perTarget: {} };
  for (const t of targets) res.perTarget[t.name] = { tried: 0, ok: 0, refused: 0 };
  // the corpus grows with inputs that parsed (they reach deeper code), a few per target
  const corpus = new Map(targets.map((t) => [t.name, [...t.seeds]]));
  for (let i = 0; i < maxInputs && Date.now() < deadline; i++) {
    for (const t of targets) {
      const pool = corpus.get(t.name)!;
      const input = t.mutate(rng, pickOne(rng, pool));
      const pt = res.perTarget[t.name];
      // FUZZ_TRACE=file: the input about to run (what killed the process when it never returns)
      if (process.env.FUZZ_TRACE) fs.writeFileSync(process.env.FUZZ_TRACE, input);
      const before = process.memoryUsage().arrayBuffers;
      const t0 = Date.now();
      let error: unknown = null;
      try {
        await t.run(input);
      } catch (e) {
        error = e;
      }
      const ms = Date.now() - t0;
      const grown = process.memoryUsage().arrayBuffers - before;
      res.tried++;
      pt.tried++;
      const fail = (why: string) => res.failures.push({ target: t.name, input: input.toString('base64'), error: why });
      if (error && !(error instanceof UndoError)) fail(`${(error as Error)?.name ?? typeof error}: ${(error as Error)?.message ?? String(error)}`);
      else if (ms > slowMs) fail(`took ${ms} ms`);
      else if (grown > Math.max(256 << 20, 64 * input.length)) fail(`ArrayBuffer memory grew by ${(grown / 2 ** 20).toFixed(0)} MiB for a ${input.length}-byte input`);
      else if (error) {
        res.refused++;
        pt.refused++;
      } else {
        res.ok++;
        pt.ok++;
        if (pool.length < 32) pool.push(input);
      }
    }
  }
  return res;
}

export function cleanupFuzz(): void {
  fs.rmSync(TMP, { recursive: true, force: true });
}
