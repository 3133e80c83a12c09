/**
 * Byte-level tokenizer.
 *
 * Default layout (vocabulary of 259):
 *   ids 0..255  the raw UTF-8 bytes 0x00..0xFF
 *   256         <bos>  beginning of sequence / document separator
 *   257         <eos>  end of sequence
 *   258         <pad>  padding (ignored by losses)
 *
 * Every string can be encoded (there is no unknown token) and digits are single tokens, which
 * suits the arithmetic task. Decoding turns byte ids back into UTF-8; incomplete or invalid
 * byte sequences (e.g. when generation stops in the middle of a multi-byte character) become
 * U+FFFD instead of throwing.
 *
 * saveTokenizer() writes a Hugging Face `tokenizer.json` that the `tokenizers` library loads
 * as an equivalent tokenizer: a BPE model with no merges whose vocabulary holds only the byte
 * tokens "<0x00>".."<0xFF>" plus the specials, with byte_fallback enabled. Since no ordinary
 * character is in the vocabulary, every character falls back to its UTF-8 bytes.
 * loadTokenizer() reads such a file back, taking the byte and special ids from the file.
 *
 * Real Hugging Face tokenizers (byte-level BPE like Llama 3 / Qwen / GPT-2, SentencePiece-style
 * BPE with byte fallback like Gemma) are {@link HFTokenizer}s (lib/data/hf_tokenizer.ts);
 * loadAnyTokenizer() picks the right class for a model directory. Both implement {@link Tokenizer}.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, errorClass } from '../core/errors';
import { readFileOrThrow, readJson, writeFileAtomic, writeJsonAtomic } from '../core/fsutil';
import { HFTokenizer, loadHFTokenizer, parseJsonFile, TokenIdFallbacks } from './hf_tokenizer';

/** Errors of this module: code ERR_TOKENIZER unless one names another. */
const Err = errorClass('ERR_TOKENIZER');

export { HFTokenizer, loadHFTokenizer } from './hf_tokenizer';
export type { TokenIdFallbacks } from './hf_tokenizer';

/** The minimal tokenizer interface used by data packing and evaluation. */
export interface TokenizerLike {
  readonly vocabSize: number;
  /** Id of the beginning-of-sequence token; −1 when the tokenizer has none (e.g. Qwen). */
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  /** Ids of `text`. Special tokens written in the text (e.g. "<|im_start|>") are matched as specials. */
  encode(text: string, opts?: EncodeOptions): Int32Array;
  decode(ids: ArrayLike<number>, opts?: DecodeOptions): string;
}

/** Special-token strings, as a chat template sees them (bos_token, eos_token, ...). */
export interface SpecialTokenStrings {
  bos?: string;
  eos?: string;
  pad?: string;
  unk?: string;
}

/**
 * Any tokenizer a model can carry: the built-in {@link ByteTokenizer} or a Hugging Face
 * tokenizer.json ({@link HFTokenizer}).
 */
export interface Tokenizer extends TokenizerLike {
  /** "byte" for undo-native's byte tokenizer, "hf" for a Hugging Face tokenizer.json. */
  readonly kind: 'byte' | 'hf';
  /** The chat template (Jinja) of tokenizer_config.json, if any. */
  readonly chatTemplate?: string;
  /** The special-token strings handed to chat templates. */
  readonly specialTokens: SpecialTokenStrings;
  /**
   * Ids of one plain-text training document, with the specials this tokenizer's models expect
   * around a document. ByteTokenizer: [<bos>, text...] (the packing layout of lib/data/datasets.ts).
   * HFTokenizer: [bos if add_bos_token, text..., eos] (eos also when add_eos_token is false, so
   * packed documents are always separated and the model learns to stop).
   */
  encodeDocument(text: string): Int32Array;
  /** Specials (bos, eos, pad and the added tokens marked special). */
  isSpecial(id: number): boolean;
  /** sha256 (hex) of the token → id map, added tokens included: equal hashes, same vocabulary. */
  vocabHash(): string;
}

/** sha256 of a token → id map, independent of the order of the entries. */
export function hashVocab(entries: Iterable<[string, number]>): string {
  const sorted = [...entries].sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const h = crypto.createHash('sha256');
  h.update('vocab-v1\n');
  for (const [t, id] of sorted) h.update(`${id}\t${JSON.stringify(t)}\n`);
  return h.digest('hex');
}

export interface EncodeOptions {
  /** Prepend <bos> (default false). */
  bos?: boolean;
  /** Append <eos> (default false). */
  eos?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens instead of rendering them as "<bos>", "<eos>", "<pad>" (default false). */
  skipSpecial?: boolean;
}

/** Ids of a byte-level vocabulary. The default is bytes 0..255, then bos, eos, pad. */
export interface ByteTokenizerLayout {
  /** byteIds[b] is the token id of byte b (256 entries). */
  byteIds: ArrayLike<number>;
  bos: number;
  eos: number;
  pad: number;
  /** Defaults to 1 + the largest id used. */
  vocabSize?: number;
}

export const BOS_TOKEN = '<bos>';
export const EOS_TOKEN = '<eos>';
export const PAD_TOKEN = '<pad>';

/** The Hugging Face spelling of the byte token for byte `b`, e.g. 0x0A -> "<0x0A>". */
export function byteTokenString(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}

const BYTE_TOKEN_RE = /^<0x([0-9A-Fa-f]{2})>$/;

export class ByteTokenizer implements Tokenizer {
  readonly kind = 'byte' as const;
  readonly chatTemplate: string | undefined = undefined;
  readonly specialTokens: SpecialTokenStrings = { bos: BOS_TOKEN, eos: EOS_TOKEN, pad: PAD_TOKEN };
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  /** byte -> id */
  private readonly byteToId: Int32Array;
  /** id -> byte, or -1 for a special / unused id */
  private readonly idToByte: Int16Array;
  private readonly decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  constructor(layout?: ByteTokenizerLayout) {
    const byteIds = layout?.byteIds ?? Array.from({ length: 256 }, (_, i) => i);
    const bos = layout?.bos ?? 256;
    const eos = layout?.eos ?? 257;
    const pad = layout?.pad ?? 258;
    if (byteIds.length !== 256) throw new Err(`byte tokenizer layout needs 256 byte ids, got ${byteIds.length}`);
    const all = [...Array.from(byteIds), bos, eos, pad];
    const maxId = Math.max(...all);
    const vocabSize = layout?.vocabSize ?? maxId + 1;
    const seen = new Map<number, string>();
    all.forEach((id, i) => {
      const label = i < 256 ? byteTokenString(i) : ['<bos>', '<eos>', '<pad>'][i - 256];
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new Err(`byte tokenizer layout: id ${id} of ${label} is outside the vocabulary [0, ${vocabSize})`);
      }
      const other = seen.get(id);
      if (other !== undefined) throw new Err(`byte tokenizer layout: ${label} and ${other} share id ${id}`);
      seen.set(id, label);
    });
    this.vocabSize = vocabSize;
    this.bos = bos;
    this.eos = eos;
    this.pad = pad;
    this.byteToId = Int32Array.from(byteIds);
    this.idToByte = new Int16Array(vocabSize).fill(-1);
    for (let b = 0; b < 256; b++) this.idToByte[this.byteToId[b]] = b;
  }

  /** The id of byte `b` (0..255). */
  idOfByte(b: number): number {
    return this.byteToId[b];
  }

  /** True if the layout is the default one (bytes 0..255, bos 256, eos 257, pad 258). */
  get isDefaultLayout(): boolean {
    return (
      this.vocabSize === 259 && this.bos === 256 && this.eos === 257 && this.pad === 258 &&
      this.byteToId.every((id, b) => id === b)
    );
  }

  /** Encode text as UTF-8 bytes mapped to ids, optionally wrapped in <bos> / <eos>. */
  encode(text: string, opts: EncodeOptions = {}): Int32Array {
    const bytes = Buffer.from(text, 'utf8');
    const extra = (opts.bos ? 1 : 0) + (opts.eos ? 1 : 0);
    const out = new Int32Array(bytes.length + extra);
    let k = 0;
    if (opts.bos) out[k++] = this.bos;
    for (let i = 0; i < bytes.length; i++) out[k++] = this.byteToId[bytes[i]];
    if (opts.eos) out[k++] = this.eos;
    return out;
  }

  /** [<bos>, text bytes...]: the document layout of packing (lib/data/datasets.ts). */
  encodeDocument(text: string): Int32Array {
    return this.encode(text, { bos: true });
  }

  /** sha256 of the vocabulary: "<0xNN>" byte tokens and "<bos>"/"<eos>"/"<pad>" with their ids. */
  vocabHash(): string {
    const entries: Array<[string, number]> = [[BOS_TOKEN, this.bos], [EOS_TOKEN, this.eos], [PAD_TOKEN, this.pad]];
    for (let b = 0; b < 256; b++) entries.push([byteTokenString(b), this.byteToId[b]]);
    return hashVocab(entries);
  }

  /**
   * Decode ids to a string. Byte runs are UTF-8 decoded (invalid / partial sequences become
   * U+FFFD). Specials are rendered as "<bos>"/"<eos>"/"<pad>" unless `skipSpecial`.
   * An id outside the vocabulary raises an UndoError naming it and its position.
   */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const bytes = new Uint8Array(ids.length);
    let nb = 0;
    let text = '';
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      const b = Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.idToByte[id] : -2;
      if (b >= 0) {
        bytes[nb++] = b;
        continue;
      }
      if (b === -2 || (id !== this.bos && id !== this.eos && id !== this.pad)) {
        throw new Err(`cannot decode token id ${id} at position ${i}: not in the byte tokenizer vocabulary (size ${this.vocabSize})`);
      }
      if (nb > 0) {
        text += this.decoder.decode(bytes.subarray(0, nb));
        nb = 0;
      }
      if (!opts.skipSpecial) text += this.tokenString(id);
    }
    if (nb > 0) text += this.decoder.decode(bytes.subarray(0, nb));
    return text;
  }

  /** The vocabulary string of an id: "<0xNN>" for bytes, "<bos>"/"<eos>"/"<pad>" for specials. */
  tokenString(id: number): string {
    if (id === this.bos) return BOS_TOKEN;
    if (id === this.eos) return EOS_TOKEN;
    if (id === this.pad) return PAD_TOKEN;
    const b = Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.idToByte[id] : -1;
    if (b < 0) throw new Err(`token id ${id} is not in the byte tokenizer vocabulary (size ${this.vocabSize})`);
    return byteTokenString(b);
  }

  /** The id of byte `b` (0..255). */
  byteId(b: number): number {
    if (!Number.isInteger(b) || b < 0 || b > 255) throw new Err(`byte value ${b} is not in 0..255`);
    return this.byteToId[b];
  }

  /** True for <bos>, <eos> and <pad>. */
  isSpecial(id: number): boolean {
    return id === this.bos || id === this.eos || id === this.pad;
  }

  /** The Hugging Face tokenizer.json object for this tokenizer. */
  toJSON(): Record<string, unknown> {
    const vocab: Record<string, number> = {};
    // Order the vocabulary by id so the file reads naturally.
    const entries: Array<[string, number]> = [];
    for (let b = 0; b < 256; b++) entries.push([byteTokenString(b), this.byteToId[b]]);
    entries.push([BOS_TOKEN, this.bos], [EOS_TOKEN, this.eos], [PAD_TOKEN, this.pad]);
    entries.sort((a, b) => a[1] - b[1]);
    for (const [tok, id] of entries) vocab[tok] = id;
    const special = (id: number, content: string) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [special(this.bos, BOS_TOKEN), special(this.eos, EOS_TOKEN), special(this.pad, PAD_TOKEN)].sort(
        (a, b) => a.id - b.id,
      ),
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: { type: 'ByteFallback' },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: true,
        ignore_merges: false,
        vocab,
        merges: [],
      },
    };
  }
}

/** `tok` as a ByteTokenizer, or an UndoError saying that `what` works with the byte tokenizer only. */
export function requireByteTokenizer(tok: Tokenizer, what: string, why?: string): ByteTokenizer {
  if (tok instanceof ByteTokenizer) return tok;
  throw new Err(`${what} works with undo-native's byte tokenizer only; this model has a Hugging Face tokenizer`, why);
}

/** tokenizer_config.json contents matching {@link ByteTokenizer.toJSON}. */
function tokenizerConfig(): Record<string, unknown> {
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: BOS_TOKEN,
    eos_token: EOS_TOKEN,
    pad_token: PAD_TOKEN,
    unk_token: null,
    add_bos_token: false,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
  };
}

/**
 * Write `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed), atomically.
 * A Hugging Face tokenizer is written back byte-identical to the files it was loaded from.
 */
export function saveTokenizer(dir: string, tok: Tokenizer): void {
  if (tok instanceof HFTokenizer) {
    for (const [name, data] of Object.entries(tok.files)) writeFileAtomic(path.join(dir, name), data);
    return;
  }
  if (!(tok instanceof ByteTokenizer)) throw new Err(`cannot save a tokenizer of kind "${tok.kind}"`);
  writeJsonAtomic(path.join(dir, 'tokenizer.json'), tok.toJSON());
  writeJsonAtomic(path.join(dir, 'tokenizer_config.json'), tokenizerConfig());
}

/** A special-token entry of tokenizer_config.json is either a string or { content: string }. */
function configTokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return undefined;
}

/**
 * Load a byte-level tokenizer from a directory holding tokenizer.json (as written by
 * saveTokenizer), or from the path of a tokenizer.json file. Byte and special ids are taken
 * from the file; the names of the specials come from tokenizer_config.json when present
 * (default "<bos>", "<eos>", "<pad>"). Any other kind of tokenizer raises an UndoError naming
 * the file.
 */
export function loadTokenizer(dirOrFile: string): ByteTokenizer {
  const { file, dir } = tokenizerPaths(dirOrFile);

  const json = readJson<Record<string, unknown>>(file, 'tokenizer file', 'ERR_TOKENIZER');
  const unsupported: (why: string) => never = (why) => {
    throw new Err(`unsupported tokenizer ${file}: ${why}`,
      'only byte-level tokenizers written by undo-native (BPE, byte_fallback, "<0xNN>" vocabulary, no merges) can be loaded');
  };
  if (!json || typeof json !== 'object' || Array.isArray(json)) unsupported('top level is not a JSON object');
  const model = json.model as Record<string, unknown> | undefined;
  if (!model || typeof model !== 'object') unsupported('missing "model" object');
  if (model.type !== 'BPE') unsupported(`model.type is ${JSON.stringify(model.type)}, expected "BPE"`);
  if (model.byte_fallback !== true) unsupported('model.byte_fallback is not true');
  if (model.merges !== undefined && (!Array.isArray(model.merges) || model.merges.length > 0)) {
    unsupported(`model.merges has ${Array.isArray(model.merges) ? model.merges.length : 'invalid'} entries, expected none`);
  }
  const vocab = model.vocab as Record<string, unknown> | undefined;
  if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) unsupported('model.vocab is not an object');

  // Collect every token -> id, from the vocabulary and from added_tokens.
  const ids = new Map<string, number>();
  const addId = (tokStr: string, id: unknown, where: string) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) unsupported(`${where} "${tokStr}" has invalid id ${JSON.stringify(id)}`);
    const prev = ids.get(tokStr);
    if (prev !== undefined && prev !== id) unsupported(`token "${tokStr}" has two ids, ${prev} and ${id}`);
    ids.set(tokStr, id as number);
  };
  for (const [t, id] of Object.entries(vocab)) addId(t, id, 'vocab token');
  const added = json.added_tokens;
  if (added !== undefined && !Array.isArray(added)) unsupported('"added_tokens" is not an array');
  for (const a of (added as unknown[] | undefined) ?? []) {
    const entry = a as { id?: unknown; content?: unknown };
    if (!entry || typeof entry.content !== 'string') unsupported('an "added_tokens" entry has no string "content"');
    addId(entry.content as string, entry.id, 'added token');
  }

  // Special token names: from tokenizer_config.json if present, else the defaults.
  let names = { bos: BOS_TOKEN, eos: EOS_TOKEN, pad: PAD_TOKEN };
  const configPath = path.join(dir, 'tokenizer_config.json');
  if (fs.existsSync(configPath)) {
    const cfg = readJson<Record<string, unknown>>(configPath, 'tokenizer config', 'ERR_TOKENIZER');
    names = {
      bos: configTokenName(cfg?.bos_token) ?? names.bos,
      eos: configTokenName(cfg?.eos_token) ?? names.eos,
      pad: configTokenName(cfg?.pad_token) ?? names.pad,
    };
  }

  const byteIds = new Array<number>(256);
  const specials = new Set([names.bos, names.eos, names.pad]);
  for (const [t, id] of ids) {
    const m = BYTE_TOKEN_RE.exec(t);
    if (m) {
      byteIds[parseInt(m[1], 16)] = id;
    } else if (!specials.has(t)) {
      unsupported(`token ${JSON.stringify(t)} (id ${id}) is neither a byte token "<0xNN>" nor one of the specials ${[...specials].join(', ')}`);
    }
  }
  for (let b = 0; b < 256; b++) {
    if (byteIds[b] === undefined) unsupported(`byte token "${byteTokenString(b)}" is missing`);
  }
  const specialId = (name: string, role: string): number => {
    const id = ids.get(name);
    if (id === undefined) unsupported(`${role} token "${name}" is not defined`);
    return id as number;
  };
  try {
    return new ByteTokenizer({
      byteIds,
      bos: specialId(names.bos, 'bos'),
      eos: specialId(names.eos, 'eos'),
      pad: specialId(names.pad, 'pad'),
    });
  } catch (e) {
    if (e instanceof UndoError && !e.message.includes(file)) unsupported(e.message);
    throw e;
  }
}

/** The tokenizer.json path and directory of a directory-or-file argument. */
function tokenizerPaths(dirOrFile: string): { file: string; dir: string } {
  if (dirOrFile.endsWith('.json') && !isDirectory(dirOrFile)) return { file: dirOrFile, dir: path.dirname(dirOrFile) };
  return { file: path.join(dirOrFile, 'tokenizer.json'), dir: dirOrFile };
}

/**
 * Load whatever tokenizer a model directory (or tokenizer.json path) holds: undo-native's own
 * byte tokenizer as a {@link ByteTokenizer}, any other tokenizer.json as an {@link HFTokenizer}
 * (specials from tokenizer_config.json, then `fallback`, typically config.json's ids).
 * A file neither can read raises an UndoError naming it.
 */
export function loadAnyTokenizer(dirOrFile: string, fallback: TokenIdFallbacks = {}): Tokenizer {
  const { file } = tokenizerPaths(dirOrFile);
  const data = readFileOrThrow(file, 'tokenizer file');
  const json = parseJsonFile(data, file, 'tokenizer file');
  if (isByteTokenizerJson(json)) return loadTokenizer(dirOrFile);
  return loadHFTokenizer(dirOrFile, fallback, { data, json });
}

/** True for a tokenizer.json shaped like {@link ByteTokenizer.toJSON}: BPE, byte_fallback, no merges, only "<0xNN>" and at most three other tokens. */
function isByteTokenizerJson(json: unknown): boolean {
  const model = (json as { model?: Record<string, unknown> } | null)?.model;
  if (!model || typeof model !== 'object' || model.type !== 'BPE' || model.byte_fallback !== true) return false;
  if (model.merges !== undefined && (!Array.isArray(model.merges) || model.merges.length > 0)) return false;
  const vocab = model.vocab;
  if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) return false;
  const others = Object.keys(vocab).filter((t) => !BYTE_TOKEN_RE.test(t));
  return others.length <= 3 && Object.keys(vocab).length - others.length === 256;
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
