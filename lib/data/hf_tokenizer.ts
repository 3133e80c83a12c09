/**
 * Hugging Face tokenizers (tokenizer.json + tokenizer_config.json) through `@huggingface/tokenizers`.
 *
 * Library choice. `@huggingface/tokenizers` is Hugging Face's pure JavaScript implementation of
 * tokenizer.json (the one transformers.js runs on): no binary, so it installs with
 * --ignore-scripts and on every platform. test/tokenizer.test.ts checks it against the Rust
 * reference (`tokenizers`, a devDependency only) on thousands of generated strings for byte-level
 * BPE (Llama 3, Qwen3) and SentencePiece-style BPE with byte fallback (Gemma 3): ids and decoded
 * text agree. The one difference found, transformers' `clean_up_tokenization_spaces` post-pass
 * (" 's" → "'s", on in Llama 3's tokenizer_config.json), is turned off in decode() here: it is not
 * part of tokenizer.json, the Rust library does not apply it, and it breaks decode(encode(s)) = s.
 *
 * Specials. encode() never adds specials by itself (add_special_tokens = false, as chat templates
 * are tokenised in transformers); specials written in the text are matched. BOS / EOS are added
 * where asked (EncodeOptions) and around training documents (encodeDocument): BOS when
 * tokenizer_config.json's add_bos_token says so (when it is absent: when the tokenizer.json
 * post-processor adds it), EOS always at the end of a document.
 *
 * The files are kept as loaded and saved back byte-identical (saveTokenizer).
 */
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer as JsTokenizer } from '@huggingface/tokenizers';
import { UndoError, describeError, errorClass } from '../core/errors';
import { readFileOrThrow } from '../core/fsutil';
import { hashVocab } from './tokenizer';
import type { DecodeOptions, EncodeOptions, SpecialTokenStrings, Tokenizer } from './tokenizer';

/** Errors of this module: code ERR_TOKENIZER unless one names another. */
const Err = errorClass('ERR_TOKENIZER');

type Json = Record<string, unknown>;

/** Token ids to use when tokenizer_config.json names no such token (typically config.json's *_token_id). */
export interface TokenIdFallbacks {
  bos?: number;
  eos?: number;
  pad?: number;
}

/** Files next to tokenizer.json that belong to the tokenizer and are copied on save. */
const COMPANION_FILES = ['tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'];

/** A tokenizer.json tokenizer. Build it with {@link loadHFTokenizer}. */
export class HFTokenizer implements Tokenizer {
  readonly kind = 'hf' as const;
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  /** Whether documents start with BOS (tokenizer_config.json add_bos_token, else the post-processor). */
  readonly addBos: boolean;
  /** tokenizer_config.json add_eos_token (documents get EOS regardless; see encodeDocument). */
  readonly addEos: boolean;
  readonly chatTemplate?: string;
  readonly specialTokens: SpecialTokenStrings;
  private readonly specialIds: Set<number>;
  private hash?: string;

  /**
   * @param lib the library tokenizer
   * @param config tokenizer_config.json ({} when there is none)
   * @param files the raw files (name → bytes) to write back on save
   * @param source the tokenizer.json path, for messages
   */
  constructor(readonly lib: JsTokenizer, readonly config: Json, readonly files: Readonly<Record<string, Buffer>>,
    readonly source: string, fallback: TokenIdFallbacks = {}, chatTemplate?: string) {
    const vocab = lib.get_vocab(true);
    let max = -1;
    for (const id of vocab.values()) if (id > max) max = id;
    this.vocabSize = max + 1;
    const names: SpecialTokenStrings = {
      bos: tokenName(config.bos_token), eos: tokenName(config.eos_token), pad: tokenName(config.pad_token), unk: tokenName(config.unk_token),
    };
    const idOf = (role: keyof SpecialTokenStrings, fb?: number): number => {
      const name = names[role];
      if (name !== undefined) {
        const id = lib.token_to_id(name);
        if (id === undefined) throw new Err(`${source}: ${role}_token "${name}" of tokenizer_config.json is not in the vocabulary`);
        return id;
      }
      return fb !== undefined && fb >= 0 && fb < this.vocabSize ? fb : -1;
    };
    this.bos = idOf('bos', fallback.bos);
    this.eos = idOf('eos', fallback.eos);
    if (this.eos < 0) throw new Err(`${source}: no eos token`, 'set eos_token in tokenizer_config.json (or eos_token_id in config.json)');
    const pad = idOf('pad', fallback.pad);
    this.pad = pad >= 0 ? pad : this.eos;
    this.specialTokens = {
      bos: names.bos ?? (this.bos >= 0 ? lib.id_to_token(this.bos) : undefined),
      eos: names.eos ?? lib.id_to_token(this.eos),
      pad: names.pad ?? lib.id_to_token(this.pad),
      unk: names.unk,
    };
    this.specialIds = new Set([this.bos, this.eos, this.pad].filter((id) => id >= 0));
    for (const [id, t] of lib.get_added_tokens_decoder()) if (t.special) this.specialIds.add(id);
    this.addBos = this.bos >= 0 && (typeof config.add_bos_token === 'boolean' ? config.add_bos_token : this.postProcessorAdds('bos'));
    this.addEos = typeof config.add_eos_token === 'boolean' ? config.add_eos_token : this.postProcessorAdds('eos');
    this.chatTemplate = chatTemplate;
  }

  /** Whether tokenizer.json's post-processor puts BOS first (or EOS last) when specials are added. */
  private postProcessorAdds(which: 'bos' | 'eos'): boolean {
    const id = which === 'bos' ? this.bos : this.eos;
    if (id < 0) return false;
    const withSpecials = this.lib.encode('a', { add_special_tokens: true }).ids;
    const plain = this.lib.encode('a', { add_special_tokens: false }).ids;
    if (withSpecials.length <= plain.length) return false;
    return which === 'bos' ? withSpecials[0] === id : withSpecials[withSpecials.length - 1] === id;
  }

  encode(text: string, opts: EncodeOptions = {}): Int32Array {
    const ids = this.lib.encode(text, { add_special_tokens: false }).ids;
    const bos = opts.bos && this.bos >= 0 ? 1 : 0;
    const out = new Int32Array(ids.length + bos + (opts.eos ? 1 : 0));
    if (bos) out[0] = this.bos;
    for (let i = 0; i < ids.length; i++) out[i + bos] = ids[i];
    if (opts.eos) out[out.length - 1] = this.eos;
    return out;
  }

  /** [bos if addBos, text..., eos]. */
  encodeDocument(text: string): Int32Array {
    return this.encode(text, { bos: this.addBos, eos: true });
  }

  /** Decode ids; an id outside the vocabulary raises an UndoError naming it and its position. */
  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const list = Array.from(ids);
    list.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.lib.id_to_token(id) === undefined) {
        throw new Err(`cannot decode token id ${id} at position ${i}: not in the vocabulary of ${this.source} (size ${this.vocabSize})`);
      }
    });
    if (!list.length) return '';  // the library refuses an empty list
    return this.lib.decode(list, { skip_special_tokens: !!opts.skipSpecial, clean_up_tokenization_spaces: false });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** The token string of an id (undefined outside the vocabulary). */
  tokenString(id: number): string | undefined {
    return this.lib.id_to_token(id);
  }

  /** The id of a token string (undefined when it is not in the vocabulary). */
  tokenId(token: string): number | undefined {
    return this.lib.token_to_id(token);
  }

  vocabHash(): string {
    this.hash ??= hashVocab(this.lib.get_vocab(true).entries());
    return this.hash;
  }
}

/** A special-token entry of tokenizer_config.json is a string, { content: string } or null. */
function tokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/** The chat template of tokenizer_config.json (a string, or a list of {name, template}: "default"), else chat_template.jinja. */
function chatTemplateOf(config: Json, files: Record<string, Buffer>, configFile: string): string | undefined {
  const t = config.chat_template;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const named = t as Array<{ name?: unknown; template?: unknown }>;
    const pick = named.find((x) => x?.name === 'default') ?? named[0];
    if (typeof pick?.template !== 'string') throw new Err(`${configFile}: chat_template is a list without a "default" template`);
    return pick.template;
  }
  return files['chat_template.jinja']?.toString('utf8');
}

/** Parse a JSON object file's bytes; errors name the file. */
export function parseJsonFile(data: Buffer, file: string, what: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch (e) {
    throw new Err(`${what} ${file} is not valid JSON: ${describeError(e)}`, { file });
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Err(`${what} ${file}: the top level is not a JSON object`, { file });
  return v as Json;
}

/**
 * The structure tokenizer.json must have before the library sees it: a model with a type and a vocabulary of
 * the type's shape (an object of non-negative integer ids, or Unigram's [piece, score] pairs), merges as
 * strings or pairs, added tokens with integer ids and string contents. The library's behaviour on other
 * shapes is not defined (some take minutes), so they are refused here, naming the field.
 */
export function checkTokenizerJson(json: Json, file: string): void {
  const bad = (field: string, what: string) => new Err(`tokenizer file ${file}: ${field} ${what}`, 'a Hugging Face tokenizer.json is expected');
  const model = json.model as Json | undefined;
  if (!model || typeof model !== 'object' || Array.isArray(model)) throw bad('"model"', 'must be an object');
  const type = model.type ?? 'BPE';
  if (typeof type !== 'string') throw bad('"model.type"', 'must be a string');
  const vocab = model.vocab;
  if (type === 'Unigram') {
    if (!Array.isArray(vocab) || !vocab.every((e) => Array.isArray(e) && e.length === 2 && typeof e[0] === 'string' && typeof e[1] === 'number')) {
      throw bad('"model.vocab"', 'must be a list of [piece, score] pairs for a Unigram model');
    }
  } else {
    if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) throw bad('"model.vocab"', `must be an object of token → id for a ${type} model`);
    // ids past the entries are allowed a gap (reserved ranges), not an arbitrary one: the library sizes tables by the largest id
    const entries = Object.entries(vocab as Json);
    for (const [k, id] of entries) {
      const key = `"model.vocab"[${JSON.stringify(k).slice(0, 40)}]`;
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw bad(key, `must be a non-negative integer id, got ${JSON.stringify(id)?.slice(0, 40)}`);
      if (id > entries.length + 65536) throw bad(key, `id ${id} is far past the vocabulary's ${entries.length} entries`);
    }
  }
  const merges = model.merges;
  if (merges !== undefined && merges !== null) {
    if (!Array.isArray(merges) || !merges.every((m) => typeof m === 'string' || (Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string')))) {
      throw bad('"model.merges"', 'must be a list of "a b" strings or [a, b] pairs');
    }
  }
  for (const k of ['continuing_subword_prefix', 'end_of_word_suffix', 'unk_token']) {
    const v = model[k];
    if (v !== undefined && v !== null && typeof v !== 'string') throw bad(`"model.${k}"`, 'must be a string or null');
  }
  const added = json.added_tokens;
  if (added !== undefined && added !== null) {
    if (!Array.isArray(added)) throw bad('"added_tokens"', 'must be a list');
    const entries = Array.isArray(vocab) ? vocab.length : Object.keys(vocab as Json).length;
    const maxId = entries + added.length + 65536;
    added.forEach((t, i) => {
      const o = t as Json;
      if (!o || typeof o !== 'object' || typeof o.content !== 'string' || typeof o.id !== 'number' || !Number.isInteger(o.id) || o.id < 0) {
        throw bad(`"added_tokens"[${i}]`, 'must be an object with an integer "id" and a string "content"');
      }
      if (o.id > maxId) throw bad(`"added_tokens"[${i}].id`, `${o.id} is far past the vocabulary (${entries} entries; at most ${maxId})`);
    });
  }
}

/**
 * Load a Hugging Face tokenizer from a directory holding tokenizer.json (tokenizer_config.json,
 * special_tokens_map.json and chat_template.jinja next to it are optional), or from the path of a
 * tokenizer.json. A file the library cannot read raises an UndoError naming it.
 */
export function loadHFTokenizer(dirOrFile: string, fallback: TokenIdFallbacks = {}, preread?: { data: Buffer; json: Json }): HFTokenizer {
  const isFile = dirOrFile.endsWith('.json') && fs.existsSync(dirOrFile) && fs.statSync(dirOrFile).isFile();
  const dir = isFile ? path.dirname(dirOrFile) : dirOrFile;
  const file = isFile ? dirOrFile : path.join(dirOrFile, 'tokenizer.json');
  const files: Record<string, Buffer> = { 'tokenizer.json': preread?.data ?? readFileOrThrow(file, 'tokenizer file') };
  for (const name of COMPANION_FILES) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) files[name] = readFileOrThrow(p, 'tokenizer file');
  }
  const json = preread?.json ?? parseJsonFile(files['tokenizer.json'], file, 'tokenizer file');
  const configFile = path.join(dir, 'tokenizer_config.json');
  const config = files['tokenizer_config.json'] ? parseJsonFile(files['tokenizer_config.json'], configFile, 'tokenizer config') : {};
  checkTokenizerJson(json, file);
  let lib: JsTokenizer;
  try {
    lib = new JsTokenizer(json, config);
    lib.encode('a', { add_special_tokens: false });
  } catch (e) {
    throw new Err(`cannot read tokenizer ${file}: ${describeError(e)}`, { hint: 'a Hugging Face tokenizer.json (BPE, Unigram, WordPiece ...) is expected', cause: e });
  }
  return new HFTokenizer(lib, config, files, file, fallback, chatTemplateOf(config, files, configFile));
}
