/**
 * Document datasets: loading, train/validation splitting, packing into fixed-length training
 * windows, and a resumable, deterministic batcher.
 *
 * Packing layout. Documents are (optionally) shuffled by seed, tokenised, and concatenated
 * into one stream, each document preceded by <bos>:
 *
 *     [BOS, d0 tokens..., BOS, d1 tokens..., BOS, d2 tokens..., ...]
 *
 * The stream is cut into windows of seqLen+1 tokens with a stride of seqLen, i.e. window k is
 * stream[k*seqLen, k*seqLen + seqLen + 1). Consecutive windows share one boundary token, so
 * every stream token after the first is a prediction target exactly once:
 *
 *     inputs  = window[0 .. seqLen)      targets = window[1 .. seqLen]
 *
 * A document that does not fit in the current window simply continues in the next one (its
 * remainder is kept, unlike the reference implementation which discards it). Tokens after the
 * last complete window are dropped (reported as `droppedTokens`); windows are never padded.
 * Windows are zero-copy subarrays of the stream.
 *
 * Documents and loss masks. A document is either plain text (a string: the tokenizer's
 * encodeDocument() gives its ids; for the byte tokenizer that is [BOS, text...] as above, and
 * every token is a target) or a {@link TokenDocument}: ids already tokenised (specials
 * included, nothing is added around them) with a per-token loss mask, as made by
 * lib/data/chat.ts for chat and prompt/completion data. Tokens with mask 0 keep their place in
 * the inputs but their target becomes {@link IGNORE_INDEX} (−100, what every loss skips). The
 * masked targets live in a second stream, `labels`, parallel to `tokens`; it exists only when
 * some document masks a token, so plain text packs exactly as before.
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, describeError, errorClass } from '../core/errors';
import { Rng, mixSeeds } from '../core/rng';
import type { TokenizerLike } from './tokenizer';

/** Errors of this module: code ERR_DATA unless one names another. */
const Err = errorClass('ERR_DATA');
const NotFoundError = errorClass('ERR_NOT_FOUND');

/** Target id that the losses skip (PyTorch's ignore_index). */
export const IGNORE_INDEX = -100;

/** A tokenised document with a per-token loss mask (see the module comment). */
export interface TokenDocument {
  /** Token ids, specials included; packing adds nothing around them. */
  ids: Int32Array;
  /** loss[j] = 1: ids[j] is a prediction target; 0: its target is IGNORE_INDEX. Same length as `ids`. */
  loss: Uint8Array;
  /** The text the ids were made from (for messages and text-matching tools). */
  text?: string;
}

/** A training document: plain text (every token trained on) or a {@link TokenDocument}. */
export type Document = string | TokenDocument;

/** The text of a document (a TokenDocument without `text` gives ""). */
export function documentText(d: Document): string {
  return typeof d === 'string' ? d : d.text ?? '';
}

/** The tokenizer side packing needs; encodeDocument (the {@link Tokenizer} one) defaults to [bos, encode(text)...]. */
export type PackingTokenizer = Pick<TokenizerLike, 'encode' | 'bos'> & { encodeDocument?(text: string): Int32Array };

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

export interface LoadDocumentsOptions {
  /** Field holding the text in JSONL files (default "text"). */
  field?: string;
  /** Force the format instead of deciding from the extension. */
  format?: 'text' | 'jsonl';
}

/**
 * Load documents from a file.
 *
 * - `.jsonl` / `.ndjson`: one JSON object per line with a string field `text` (configurable).
 *   Blank lines are skipped. A line that is not valid JSON, not an object, or lacks the field
 *   raises an UndoError naming the file and 1-based line number.
 * - anything else (e.g. `.txt`): plain UTF-8 text; each paragraph is a document. Paragraphs are
 *   separated by one or more blank lines (lines that are empty or hold only whitespace).
 *   Paragraphs are trimmed; single newlines inside a paragraph are kept. CRLF line endings
 *   are accepted.
 *
 * A missing or unreadable file raises an UndoError naming it.
 */
export function loadDocuments(filePath: string, opts: LoadDocumentsOptions = {}): string[] {
  let text: string;
  try {
    text = fs.readFileSync(filePath, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`dataset file not found: ${filePath}`);
    if (code === 'EISDIR') throw new Err(`dataset path ${filePath} is a directory, expected a .txt or .jsonl file`);
    throw new Err(`cannot read dataset file ${filePath}: ${describeError(e)}`, { cause: e });
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // UTF-8 byte-order mark
  const ext = path.extname(filePath).toLowerCase();
  const format = opts.format ?? (ext === '.jsonl' || ext === '.ndjson' ? 'jsonl' : 'text');
  return format === 'jsonl' ? parseJsonl(text, filePath, opts.field ?? 'text') : splitParagraphs(text);
}

/** Split plain text into paragraphs separated by blank lines (see {@link loadDocuments}). */
export function splitParagraphs(text: string): string[] {
  return text
    .replace(/\r\n?/g, '\n')
    .split(/\n[ \t\f\v]*\n\s*/)
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
}

function parseJsonl(text: string, filePath: string, field: string): string[] {
  const docs: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line.length === 0) continue;
    const where = `${filePath}:${i + 1}`;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new Err(`${where}: line ${i + 1} is not valid JSON (${describeError(e)})`,
        `each line of a .jsonl dataset must be an object like {"${field}": "..."}`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      throw new Err(`${where}: line ${i + 1} is not a JSON object`);
    }
    const value = (obj as Record<string, unknown>)[field];
    if (typeof value !== 'string') {
      throw new Err(`${where}: line ${i + 1} has no string field "${field}"` +
        (value === undefined ? '' : ` (got ${typeof value})`));
    }
    docs.push(value);
  }
  return docs;
}

// ---------------------------------------------------------------------------------------------
// Train / validation split
// ---------------------------------------------------------------------------------------------

/**
 * Deterministically split documents into train and validation sets. `round(n*valFraction)`
 * documents, chosen uniformly at random by `seed`, go to validation; when `valFraction > 0`
 * and there are at least two documents, each side gets at least one. Both outputs keep the
 * original relative order of the documents.
 */
export function splitTrainVal<T>(docs: readonly T[], valFraction: number, seed: number): { train: T[]; val: T[] } {
  if (typeof valFraction !== 'number' || !(valFraction >= 0 && valFraction < 1)) {
    throw new Err(`validation fraction must be in [0, 1), got ${valFraction}`);
  }
  const n = docs.length;
  let k = Math.round(n * valFraction);
  if (valFraction > 0 && n >= 2) k = Math.min(Math.max(k, 1), n - 1);
  const perm = new Rng(mixSeeds(seed, 'split')).permutation(n);
  const isVal = new Uint8Array(n);
  for (let i = 0; i < k; i++) isVal[perm[i]] = 1;
  const train: T[] = [];
  const val: T[] = [];
  for (let i = 0; i < n; i++) (isVal[i] ? val : train).push(docs[i]);
  return { train, val };
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

export interface PackOptions {
  /** Seed for shuffling the documents before packing (default 0). */
  seed?: number;
  /** Shuffle documents before packing (default true). */
  shuffle?: boolean;
}

/** Packed token windows; see the module comment for the layout. */
export class PackedDataset {
  constructor(
    /** The concatenated token stream ([BOS, doc..., BOS, doc..., ...]), cut to whole windows. */
    readonly tokens: Int32Array,
    /** Number of input tokens per window (T). */
    readonly seqLen: number,
    /** Number of complete windows. */
    readonly count: number,
    /** Stream tokens after the last complete window, not used. */
    readonly droppedTokens = 0,
    /** Number of documents packed. */
    readonly numDocuments = 0,
    /** Target ids parallel to `tokens`, IGNORE_INDEX where the loss is masked; absent when nothing is masked. */
    readonly labels?: Int32Array,
  ) {
    if (labels && labels.length !== tokens.length) throw new Err(`packed dataset: ${labels.length} labels for ${tokens.length} tokens`);
    if (!Number.isSafeInteger(seqLen) || seqLen < 1) throw new Err(`sequence length must be a positive integer, got ${seqLen}`);
    if (count > 0 && tokens.length < count * seqLen + 1) {
      throw new Err(`packed dataset: ${tokens.length} tokens cannot hold ${count} windows of ${seqLen}+1`);
    }
  }

  /** Window i: seqLen+1 tokens (a zero-copy view). */
  window(i: number): Int32Array {
    this.check(i);
    return this.tokens.subarray(i * this.seqLen, i * this.seqLen + this.seqLen + 1);
  }

  /** Inputs of window i (seqLen tokens). */
  inputs(i: number): Int32Array {
    this.check(i);
    return this.tokens.subarray(i * this.seqLen, (i + 1) * this.seqLen);
  }

  /** Targets of window i (seqLen tokens): the inputs shifted left by one, IGNORE_INDEX where masked. */
  targets(i: number): Int32Array {
    this.check(i);
    return (this.labels ?? this.tokens).subarray(i * this.seqLen + 1, (i + 1) * this.seqLen + 1);
  }

  /** Total number of target tokens (count * seqLen). */
  get numTargets(): number {
    return this.count * this.seqLen;
  }

  private check(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) {
      throw new Err(`window index ${i} is out of range (the dataset has ${this.count} windows)`);
    }
  }
}

/**
 * Tokenise and pack documents into windows of seqLen+1 tokens (see the module comment).
 * Documents are shuffled with `seed` first unless `shuffle: false`.
 */
export function packDocuments(
  tokenizer: PackingTokenizer,
  docs: readonly Document[],
  seqLen: number,
  opts: PackOptions = {},
): PackedDataset {
  if (!Number.isSafeInteger(seqLen) || seqLen < 1) throw new Err(`sequence length must be a positive integer, got ${seqLen}`);
  const order = new Uint32Array(docs.length);
  for (let i = 0; i < order.length; i++) order[i] = i;
  if (opts.shuffle ?? true) new Rng(mixSeeds(opts.seed ?? 0, 'pack')).shuffle(order);

  const encoded: Array<{ ids: Int32Array; loss?: Uint8Array }> = new Array(docs.length);
  let total = 0;
  let masked = false;
  for (let i = 0; i < order.length; i++) {
    const e = encodeForPacking(tokenizer, docs[order[i]], order[i]);
    if (e.loss && e.loss.includes(0)) masked = true;
    encoded[i] = e;
    total += e.ids.length;
  }
  const count = total > 0 ? Math.floor((total - 1) / seqLen) : 0;
  const used = count > 0 ? count * seqLen + 1 : 0;
  const stream = new Int32Array(used);
  const labels = masked ? new Int32Array(used) : undefined;
  let k = 0;
  for (const { ids, loss } of encoded) {
    if (k >= used) break;
    const n = Math.min(ids.length, used - k);
    stream.set(n === ids.length ? ids : ids.subarray(0, n), k);
    if (labels) for (let j = 0; j < n; j++) labels[k + j] = !loss || loss[j] ? ids[j] : IGNORE_INDEX;
    k += n;
  }
  return new PackedDataset(stream, seqLen, count, total - used, docs.length, labels);
}

/** A document's ids as packed (a string: encodeDocument; a TokenDocument: its ids), with its mask if any. */
function encodeForPacking(tokenizer: PackingTokenizer, doc: Document, index: number): { ids: Int32Array; loss?: Uint8Array } {
  if (typeof doc === 'string') {
    if (tokenizer.encodeDocument) return { ids: tokenizer.encodeDocument(doc) };
    const text = tokenizer.encode(doc);
    const ids = new Int32Array(text.length + 1);
    ids[0] = tokenizer.bos;
    ids.set(text, 1);
    return { ids };
  }
  if (!doc || typeof doc !== 'object' || !(doc.ids instanceof Int32Array) || !(doc.loss instanceof Uint8Array)) {
    throw new Err(`document ${index} is neither a string nor {ids: Int32Array, loss: Uint8Array} (got ${doc === null ? 'null' : typeof doc})`);
  }
  if (doc.loss.length !== doc.ids.length) throw new Err(`document ${index}: loss mask has ${doc.loss.length} entries for ${doc.ids.length} tokens`);
  return { ids: doc.ids, loss: doc.loss };
}

// ---------------------------------------------------------------------------------------------
// Batching
// ---------------------------------------------------------------------------------------------

/** Position of a Batcher: the next window to hand out is window `index` of epoch `epoch`'s order. */
export interface BatcherPosition {
  epoch: number;
  index: number;
}

export interface Batch {
  /** B*T input ids, row-major (row b = window b). */
  inputs: Int32Array;
  /** B*T target ids: targets[b*T + t] = next token after inputs[b*T + t], or IGNORE_INDEX where masked. */
  targets: Int32Array;
  B: number;
  T: number;
  /** Position of the batch's first window (where the batcher stood before this batch). */
  position: BatcherPosition;
}

export interface BatcherOptions {
  batchSize: number;
  /** Seed of the per-epoch shuffles (default 0). */
  seed?: number;
  /** Visit windows in order instead of shuffling each epoch (default: shuffle). */
  shuffle?: boolean;
  /** Resume from a position saved with `batcher.position`. */
  position?: BatcherPosition;
}

/**
 * Endless stream of batches over a PackedDataset. Each epoch visits every window once in an
 * order given by a permutation seeded with (seed, epoch), so the order depends only on the
 * seed and the epoch number. Batches are filled window by window and may straddle an epoch
 * boundary (the last windows of epoch e followed by the first of epoch e+1); this also makes a
 * dataset smaller than one batch usable. `position` can be saved (it is plain JSON) and passed
 * back to resume exactly where training stopped.
 */
export class Batcher implements Iterable<Batch> {
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  private epoch = 0;
  private index = 0;
  private order: Uint32Array | undefined;
  private orderEpoch = -1;

  constructor(readonly data: PackedDataset, opts: BatcherOptions) {
    if (!Number.isSafeInteger(opts.batchSize) || opts.batchSize < 1) {
      throw new Err(`batch size must be a positive integer, got ${opts.batchSize}`);
    }
    if (data.count === 0) {
      throw new Err(`cannot batch an empty dataset: no complete window of ${data.seqLen + 1} tokens`,
        'use more documents or a shorter sequence length');
    }
    this.batchSize = opts.batchSize;
    this.seed = opts.seed ?? 0;
    this.shuffle = opts.shuffle ?? true;
    if (opts.position) this.position = opts.position;
  }

  /** Number of windows per epoch divided by the batch size (fractional when not divisible). */
  get batchesPerEpoch(): number {
    return this.data.count / this.batchSize;
  }

  /** Where the next batch starts; a fresh plain object safe to JSON-serialise. */
  get position(): BatcherPosition {
    return { epoch: this.epoch, index: this.index };
  }

  set position(p: BatcherPosition) {
    if (!p || typeof p !== 'object') throw new Err(`batcher position must be an object {epoch, index}, got ${JSON.stringify(p)}`);
    if (!Number.isSafeInteger(p.epoch) || p.epoch < 0) {
      throw new Err(`batcher position: "epoch" must be a non-negative integer, got ${JSON.stringify(p.epoch)}`);
    }
    if (!Number.isSafeInteger(p.index) || p.index < 0 || p.index >= this.data.count) {
      throw new Err(
        `batcher position: "index" must be an integer in [0, ${this.data.count}), got ${JSON.stringify(p.index)}`,
        'the dataset changed since the position was saved?');
    }
    this.epoch = p.epoch;
    this.index = p.index;
  }

  /** Window visiting order of `epoch`. */
  epochOrder(epoch: number): Uint32Array {
    if (this.orderEpoch !== epoch || !this.order) {
      const n = this.data.count;
      if (this.shuffle) {
        this.order = new Rng(mixSeeds(this.seed, 'epoch', epoch)).permutation(n);
      } else {
        this.order = new Uint32Array(n);
        for (let i = 0; i < n; i++) this.order[i] = i;
      }
      this.orderEpoch = epoch;
    }
    return this.order;
  }

  /** The next batch; advances the position. */
  next(): Batch {
    const B = this.batchSize;
    const T = this.data.seqLen;
    const position = this.position;
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      const w = this.epochOrder(this.epoch)[this.index];
      inputs.set(this.data.inputs(w), b * T);
      targets.set(this.data.targets(w), b * T);
      if (++this.index >= this.data.count) {
        this.index = 0;
        this.epoch++;
      }
    }
    return { inputs, targets, B, T, position };
  }

  /** Iterate forever (use `take`-style loops with a step counter). */
  *[Symbol.iterator](): Iterator<Batch> {
    for (;;) yield this.next();
  }
}

/** A batch of consecutive windows, outside any Batcher (no position). */
export type WindowBatch = Omit<Batch, 'position'>;

/** The first `limit` windows of a packed dataset, in order, as batches of `batchSize` (the last one shorter). */
export function* windowBatches(data: PackedDataset, batchSize: number, limit = data.count): Generator<WindowBatch> {
  const T = data.seqLen;
  const n = Math.min(limit, data.count);
  for (let i = 0; i < n; i += batchSize) {
    const B = Math.min(batchSize, n - i);
    const inputs = new Int32Array(B * T), targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      inputs.set(data.inputs(i + b), b * T);
      targets.set(data.targets(i + b), b * T);
    }
    yield { inputs, targets, B, T };
  }
}
