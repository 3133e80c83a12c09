/**
 * A tokenizer as GGUF metadata (llama.cpp's tokenizer.ggml.* keys and tokenizer.chat_template).
 *
 * - Byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen, SmolLM): tokenizer.ggml.model "gpt2", the vocabulary
 *   by id, the merges, and the pre-tokenizer named as llama.cpp knows it (tokenizer.ggml.pre), recognised
 *   from tokenizer.json's pre_tokenizer: llama-bpe, qwen2, gpt-2, smollm. Another pre-tokenizer is an error
 *   unless the caller names one (`pre`), since a wrong one silently tokenizes differently.
 * - SentencePiece-style BPE with byte fallback and "▁" for spaces (Gemma, Llama 2, Mistral v0.1):
 *   tokenizer.ggml.model "llama" with scores that replay the merge order (the token a merge creates scores
 *   −rank, so llama.cpp's highest-score-first bigram merging follows HF's lowest-rank-first), <0xNN> tokens
 *   typed BYTE, and add_space_prefix from the normalizer / Metaspace.
 * - undo-native's byte tokenizer: "gpt2" with the 256 byte tokens in GPT-2's byte-to-unicode spelling and no
 *   merges, so llama.cpp maps every UTF-8 byte to its id, and <bos>/<eos>/<pad> as control tokens.
 * Ids the model has beyond the tokenizer's (padded vocabularies) become "[PADn]" tokens typed UNUSED, as
 * llama.cpp's converter does. Unigram and WordPiece tokenizers have no mapping here: an error names the field.
 */
import { UndoError, errorClass } from '../core/errors';
import { ByteTokenizer, Tokenizer } from '../data/tokenizer';
import { HFTokenizer } from '../data/hf_tokenizer';
import { GgufMetadata } from './gguf';

/** Errors of this module: code ERR_GGUF unless one names another. */
const Err = errorClass('ERR_GGUF');

type Json = Record<string, unknown>;

/** llama.cpp's llama_token_type */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** Pre-tokenizer names (tokenizer.ggml.pre) this converter recognises; any llama.cpp name can be passed as `pre`. */
export const KNOWN_PRE = ['llama-bpe', 'qwen2', 'gpt-2', 'smollm', 'default'] as const;

const LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** GPT-2's bytes_to_unicode: each byte as a printable character (printable bytes stay themselves). */
export function byteToUnicode(): string[] {
  const out = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    out[b] = String.fromCodePoint(printable ? b : 256 + n++);
  }
  return out;
}

export interface VocabOptions {
  /** tokenizer.ggml.pre to write for a byte-level BPE tokenizer whose pre-tokenizer is not recognised */
  pre?: string;
  /** extra end-of-generation id (chat end-of-turn) written as tokenizer.ggml.eot_token_id */
  eotId?: number;
}

export interface GgufVocab {
  metadata: GgufMetadata;
  /** tokenizer.ggml.model and .pre */
  model: 'gpt2' | 'llama';
  pre?: string;
}

function typeOf(j: unknown): string {
  return j && typeof j === 'object' && typeof (j as Json).type === 'string' ? String((j as Json).type) : String(j);
}

/** The llama.cpp pre-tokenizer name of a tokenizer.json pre_tokenizer, or undefined. */
export function recognisePre(pre: unknown): string | undefined {
  const p = pre as Json | null;
  if (!p || typeof p !== 'object') return undefined;
  if (p.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  if (p.type !== 'Sequence' || !Array.isArray(p.pretokenizers)) return undefined;
  const steps = p.pretokenizers as Json[];
  if (steps.length === 2 && steps[0].type === 'Split' && steps[1].type === 'ByteLevel' && steps[1].use_regex === false &&
      steps[0].behavior === 'Isolated' && steps[0].invert !== true) {
    const re = (steps[0].pattern as Json | undefined)?.Regex;
    if (re === LLAMA3_SPLIT) return 'llama-bpe';
    if (re === QWEN2_SPLIT) return 'qwen2';
  }
  if (steps.length === 2 && steps[0].type === 'Digits' && steps[0].individual_digits === true && steps[1].type === 'ByteLevel' && steps[1].use_regex !== false) {
    return 'smollm';
  }
  return undefined;
}

function describePre(pre: unknown): string {
  const p = pre as Json | null;
  if (!p || typeof p !== 'object') return String(pre);
  if (p.type === 'Sequence' && Array.isArray(p.pretokenizers)) return `Sequence[${(p.pretokenizers as unknown[]).map(typeOf).join(', ')}]`;
  return typeOf(p);
}

/** Whether the tokenizer.json is SentencePiece-style: BPE with byte fallback and "▁" for spaces. */
function spmStyle(j: Json): { spm: boolean; addSpacePrefix: boolean } {
  const model = j.model as Json;
  const norm = j.normalizer as Json | null;
  const pre = j.pre_tokenizer as Json | null;
  const normSteps: Json[] = !norm ? [] : norm.type === 'Sequence' && Array.isArray(norm.normalizers) ? (norm.normalizers as Json[]) : [norm];
  const replacesSpace = normSteps.some((n) => n.type === 'Replace' && (n.pattern as Json | undefined)?.String === ' ' && n.content === '▁');
  const prepends = normSteps.some((n) => n.type === 'Prepend' && n.prepend === '▁');
  const meta = pre && pre.type === 'Metaspace' ? pre : undefined;
  const spm = model.byte_fallback === true && (replacesSpace || !!meta);
  const metaPrefix = !!meta && (meta.prepend_scheme !== undefined ? meta.prepend_scheme !== 'never' : meta.add_prefix_space !== false);
  return { spm, addSpacePrefix: prepends || metaPrefix };
}

function mergeStrings(merges: unknown, source: string): string[] {
  if (!Array.isArray(merges)) throw new Err(`${source}: field model.merges must be a list`);
  return merges.map((m, i) => {
    if (typeof m === 'string') return m;
    if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') {
      if (m[0].includes(' ') || m[1].includes(' ')) {
        throw new Err(`${source}: merge ${i} ${JSON.stringify(m)} has a space in a token, which GGUF's "a b" merges cannot spell`);
      }
      return `${m[0]} ${m[1]}`;
    }
    throw new Err(`${source}: model.merges[${i}] is neither "a b" nor ["a", "b"]`);
  });
}

function specialIds(tok: Tokenizer, vocabSize: number, opts: VocabOptions, add: { bos: boolean; eos: boolean }): GgufMetadata {
  const md: GgufMetadata = [];
  const id = (key: string, v: number) => {
    if (v >= 0 && v < vocabSize) md.push([key, { type: 'u32', value: v }]);
  };
  id('tokenizer.ggml.bos_token_id', tok.bos);
  id('tokenizer.ggml.eos_token_id', tok.eos);
  if (opts.eotId !== undefined && opts.eotId !== tok.eos) id('tokenizer.ggml.eot_token_id', opts.eotId);
  id('tokenizer.ggml.padding_token_id', tok.pad);
  md.push(['tokenizer.ggml.add_bos_token', { type: 'bool', value: add.bos }]);
  md.push(['tokenizer.ggml.add_eos_token', { type: 'bool', value: add.eos }]);
  if (tok.chatTemplate) md.push(['tokenizer.chat_template', { type: 'string', value: tok.chatTemplate }]);
  return md;
}

/** Pad the token list to the model's vocabulary with "[PADn]" tokens typed UNUSED. */
function padTo(tokens: Array<string | undefined>, types: number[], vocabSize: number, source: string): string[] {
  if (tokens.length > vocabSize) {
    throw new Err(`${source}: the tokenizer has ids up to ${tokens.length - 1} but the model's vocab_size is ${vocabSize}`,
      'GGUF needs one token per row of the embedding');
  }
  const out = new Array<string>(vocabSize);
  for (let i = 0; i < vocabSize; i++) {
    const t = tokens[i];
    if (t === undefined) {
      out[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.unused;
    } else out[i] = t;
  }
  return out;
}

function byteVocab(tok: ByteTokenizer, vocabSize: number, opts: VocabOptions): GgufVocab {
  const chars = byteToUnicode();
  const tokens: Array<string | undefined> = new Array(tok.vocabSize);
  const types: number[] = new Array(vocabSize).fill(TOKEN_TYPE.normal);
  for (let b = 0; b < 256; b++) tokens[tok.idOfByte(b)] = chars[b];
  const special: Array<[number, string]> = [[tok.bos, '<bos>'], [tok.eos, '<eos>'], [tok.pad, '<pad>']];
  for (const [id, s] of special) {
    tokens[id] = s;
    types[id] = TOKEN_TYPE.control;
  }
  const all = padTo(tokens, types, vocabSize, 'byte tokenizer');
  return {
    model: 'gpt2', pre: 'default',
    metadata: [
      ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
      ['tokenizer.ggml.pre', { type: 'string', value: 'default' }],
      ['tokenizer.ggml.tokens', { type: 'string[]', value: all }],
      ['tokenizer.ggml.token_type', { type: 'i32[]', value: types }],
      ['tokenizer.ggml.merges', { type: 'string[]', value: [] }],
      ...specialIds(tok, vocabSize, opts, { bos: true, eos: false }),
    ],
  };
}

function hfVocab(tok: HFTokenizer, vocabSize: number, opts: VocabOptions): GgufVocab {
  const source = tok.source;
  let j: Json;
  try {
    j = JSON.parse(tok.files['tokenizer.json'].toString('utf8')) as Json;
  } catch (e) {
    throw new Err(`${source}: cannot parse tokenizer.json: ${(e as Error).message}`);
  }
  const model = j.model as Json | undefined;
  if (!model || model.type !== 'BPE') {
    throw new Err(`${source}: field model.type ${JSON.stringify(model?.type)} has no GGUF tokenizer type here`,
      'supported: BPE (byte-level like GPT-2 / Llama 3 / Qwen, or SentencePiece-style with byte_fallback like Gemma / Llama 2)');
  }
  const vocab = model.vocab as Record<string, number> | undefined;
  if (!vocab || typeof vocab !== 'object') throw new Err(`${source}: field model.vocab is missing`);
  const tokens: Array<string | undefined> = [];
  for (const [s, id] of Object.entries(vocab)) tokens[id] = s;
  const types: number[] = new Array(Math.max(vocabSize, tokens.length)).fill(TOKEN_TYPE.normal);
  const added = Array.isArray(j.added_tokens) ? (j.added_tokens as Json[]) : [];
  for (const a of added) {
    const id = a.id as number;
    tokens[id] = String(a.content);
    types[id] = a.special === true ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined;
  }
  const add = { bos: tok.addBos, eos: tok.addEos };
  const { spm, addSpacePrefix } = spmStyle(j);
  if (spm) {
    // SentencePiece-style: scores replay the merge ranks
    const merges = mergeStrings(model.merges, source);
    const scores = new Float32Array(Math.max(vocabSize, tokens.length)).fill(0);
    const scored = new Uint8Array(scores.length);
    merges.forEach((m, rank) => {
      const sp = m.indexOf(' ');
      const id = vocab[m.slice(0, sp) + m.slice(sp + 1)];
      if (id !== undefined && !scored[id]) {
        scores[id] = -rank;
        scored[id] = 1;
      }
    });
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (t === undefined || types[i] !== TOKEN_TYPE.normal) continue;
      if (/^<0x[0-9A-Fa-f]{2}>$/.test(t)) types[i] = TOKEN_TYPE.byte;
      else if (!scored[i] && [...t].length > 1) scores[i] = -(merges.length + i); // never made by a merge: last
    }
    const unk = typeof model.unk_token === 'string' ? vocab[model.unk_token] : undefined;
    if (unk !== undefined) types[unk] = TOKEN_TYPE.unknown;
    const all = padTo(tokens, types, vocabSize, source);
    const md: GgufMetadata = [
      ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
      ['tokenizer.ggml.tokens', { type: 'string[]', value: all }],
      ['tokenizer.ggml.scores', { type: 'f32[]', value: scores.subarray(0, vocabSize) }],
      ['tokenizer.ggml.token_type', { type: 'i32[]', value: types.slice(0, vocabSize) }],
      ['tokenizer.ggml.add_space_prefix', { type: 'bool', value: addSpacePrefix }],
    ];
    if (unk !== undefined) md.push(['tokenizer.ggml.unknown_token_id', { type: 'u32', value: unk }]);
    return { model: 'llama', metadata: [...md, ...specialIds(tok, vocabSize, opts, add)] };
  }
  const pre = opts.pre ?? recognisePre(j.pre_tokenizer);
  const decoder = j.decoder as Json | null;
  const byteLevel = typeOf(decoder) === 'ByteLevel' || describePre(j.pre_tokenizer).includes('ByteLevel');
  if (!byteLevel) {
    throw new Err(`${source}: a BPE tokenizer that is neither byte-level (ByteLevel decoder) nor SentencePiece-style (byte_fallback with "▁") has no GGUF tokenizer type here`,
      `its pre_tokenizer is ${describePre(j.pre_tokenizer)}, its decoder ${typeOf(decoder)}`);
  }
  if (!pre) {
    throw new Err(`${source}: field pre_tokenizer (${describePre(j.pre_tokenizer)}) is not one undo-native can name for llama.cpp ` +
      `(tokenizer.ggml.pre; recognised: ${KNOWN_PRE.slice(0, 4).join(', ')}); if you know llama.cpp's name for it, pass --gguf-pre NAME`);
  }
  const all = padTo(tokens, types, vocabSize, source);
  return {
    model: 'gpt2', pre,
    metadata: [
      ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
      ['tokenizer.ggml.pre', { type: 'string', value: pre }],
      ['tokenizer.ggml.tokens', { type: 'string[]', value: all }],
      ['tokenizer.ggml.token_type', { type: 'i32[]', value: types.slice(0, vocabSize) }],
      ['tokenizer.ggml.merges', { type: 'string[]', value: mergeStrings(model.merges, source) }],
      ...specialIds(tok, vocabSize, opts, add),
    ],
  };
}

/** The tokenizer's GGUF metadata for a model with `vocabSize` embedding rows. */
export function ggufVocab(tok: Tokenizer, vocabSize: number, opts: VocabOptions = {}): GgufVocab {
  if (tok instanceof ByteTokenizer) return byteVocab(tok, vocabSize, opts);
  if (tok instanceof HFTokenizer) return hfVocab(tok, vocabSize, opts);
  throw new Err(`tokenizer of kind ${JSON.stringify((tok as Tokenizer).kind)} has no GGUF mapping`);
}
