/**
 * The causal-intervention unlearning teacher ("Revisiting Who's Harry Potter"): counterfactual rewrites of the
 * forget windows, the frozen model averaged over them, and the KL objective toward that average. Used by
 * lib/unlearn/unlearn.ts as method 'causal'.
 */
import { Batch, Batcher, PackedDataset } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { loss as kdLoss } from '../train/losses';
import { headChunkRows } from '../train/objectives';
import { Model } from '../models/model';
import { mixSeeds } from '../core/rng';
import { replacementNames } from '../tasks/biographies';
import type { Tokenizer } from '../data/tokenizer';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

// ---------------------------------------------------------------------------------------------
// Causal intervention ("Revisiting Who's Harry Potter", Liu, Zhang, Jaakkola & Chang; research notes
// shared/research/unlearning.md §3.2)
// ---------------------------------------------------------------------------------------------
//
// The knowledge about the target entity is a confounder between the text and the next token. The
// teacher estimates the interventional distribution by averaging the frozen original model over N
// counterfactual rewrites of each forget window in which every mention of a target is replaced by
// another (fictional) name:
//
//     p_teacher(· | x_<t) = (1/N) Σ_n p_θ0(· | x_<t^(n))
//
// and the model is trained on Σ_t KL(p_teacher,t ‖ p_θ,t) / #kept positions of the sequence, averaged
// over the sequences of the batch.
//
// Alignment. The paper aligns the rewritten token sequences back to the original with difflib. Here the
// rewrite is built on the token level, from the mention spans found in the window: every token outside a
// mention is copied and each mention's tokens are swapped for the replacement's tokens of the same form, so
// the position of every copied token in rewrite n is known exactly (its original position + the prompt
// length + the length differences of the names before it). That offset map is exact where a diff could
// mis-align (a replacement name sharing tokens with its surroundings), costs nothing, and needs no
// heuristics. Row t of the window (input token x_t, predicting x_{t+1}) is kept when x_t is not inside a
// mention (the target-name tokens themselves are excluded) and its rewritten position fits the context in
// every one of the N versions.
//
// Subword tokenizers (BPE, SentencePiece). A name is tokenised one way at the start of a text or after
// punctuation ("Ana Vel": its bare form) and another after a space (" Ana Vel", whose first token carries
// the space: "ĠAna" in byte-level BPE, "▁Ana" in SentencePiece). Each entity and each replacement therefore
// has up to two forms, the bare one and the spaced one (dropped where it is just the space token followed by
// the bare form, as for bytes); a mention of form f is replaced by the replacement's form f, which is what
// the tokenizer itself produces for the rewritten text wherever its pre-tokenizer splits words from their
// neighbours (test/causal.test.ts checks rewrites against encode() of the rewritten text with real Llama 3,
// Qwen3 and Gemma 3 tokenizers). A mention whose tokens in the data differ from both forms (a merge across
// the name's edge) is not found: its rows are trained toward the original model's distribution, like rows
// without a mention.
//
// Mentions are exact, case-sensitive, whole-word matches of the entity names: the token before a form
// whose first character is a word character must not end with one, and the token after the mention must
// not start with one (word characters: ASCII letters and digits, and any non-ASCII character but white
// space; special tokens are boundaries). They are found in the window and, when the windows come from a
// Batcher over a packed stream, across the window's edges: a mention cut by the edge is replaced by the
// whole replacement name and its tokens in the window are excluded.
//
// "Change name back" (optional, the paper's change_name_back): at a kept row where more than half of
// the teachers put probability > 0.1 on the first token of their replacement name for an entity,
// each teacher's mass on that token is moved onto the first token of the entity's own name (the
// replacement token keeps 1e-8), so the model goes on naming the person but not its facts. This is
// not done at the rows before the entity's first appearance in the window (the paper's rule) unless
// the counterfactual prompt is on: the prompt names the replacement, so the teachers predict it even
// at the first appearance, and the paper moves it back there too.
//
// Counterfactual prompt (optional): each rewrite of a window that mentions a target starts with
// <bos>"Complete the following passage about R. " (R: the window's replacement names, in order of first
// mention, joined by " and "), followed by the window's tokens.
//
// WHP (method 'whp') is the N = 1, hard-label, reinforced-model special case and stays separate.

/** Default number of counterfactual rewrites N. The paper uses 20 (WPU). Each rewrite costs one forward of
 * the frozen model per step: with N = 8 a step of the tiny preset (16 × 128 tokens) takes about 0.25 s on 2
 * idle cores, with N = 20 about 0.6 s; on the built-in biographies task N = 20 forgot no more than N = 8 and
 * cost more retain accuracy. */
export const CAUSAL_DEFAULT_REPLACEMENTS = 8;
const MOVE_THRESHOLD = 0.1;
const KEEP_MASS = 1e-8;

export interface CausalOptions {
  /** names of the target entities (every whole-word, case-sensitive mention in the forget data is rewritten) */
  entities: readonly string[];
  /** number N of counterfactual rewrites (default CAUSAL_DEFAULT_REPLACEMENTS) */
  replacements?: number;
  /** prepend "Complete the following passage about {replacement}." to each rewrite (default false) */
  counterfactualPrompt?: boolean;
  /** "change name back" (default false) */
  nameBack?: boolean;
  /** replacement names to use instead of the fictional-name pool: at least N × #entities distinct names */
  names?: readonly string[];
  /** names never drawn as replacements (besides the entities and the built-in biography people) */
  exclude?: readonly string[];
  /** seed of the replacement-name draw (default: the unlearning seed) */
  seed?: number;
}

export interface CausalPlan {
  entities: string[];
  /** each entity's bare form: the tokens of the name alone */
  entityIds: Int32Array[];
  /** entityForms[e]: the token sequences a mention of entity e can have (form 0 bare, form 1 after a space where the tokenizer has one) */
  entityForms: Int32Array[][];
  /** N */
  n: number;
  /** replacements[n][e]: the name that stands for entity e in rewrite n (all N × E distinct) */
  replacements: string[][];
  /** replacementIds[n][e]: the bare form of the replacement */
  replacementIds: Int32Array[][];
  /** replacementForms[n][e][f]: the replacement in the form of entityForms[e][f] */
  replacementForms: Int32Array[][][];
  counterfactualPrompt: boolean;
  nameBack: boolean;
  /** whether token `id` starts / ends with a word character (mention boundaries; specials never do) */
  wordStart: (id: number) => boolean;
  wordEnd: (id: number) => boolean;
  bos: number;
  pad: number;
  tokenizer: Tokenizer;
}

/** Word characters of the mention boundaries: ASCII letters and digits, any other non-ASCII character but white space. */
export function isWordChar(c: string): boolean {
  const code = c.charCodeAt(0);
  if (code < 0x80) return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a);
  return !/\s/u.test(c);
}

/**
 * wordStart / wordEnd of a tokenizer's tokens. Bytes: letters, digits and bytes ≥ 0x80. Subword tokens: the
 * token's text as it reads after a "." (decoders drop a leading space on the first token of a text, so a token
 * is decoded behind an anchor), cached per id; specials have no text.
 */
function wordEdges(tokenizer: Tokenizer): { wordStart: (id: number) => boolean; wordEnd: (id: number) => boolean } {
  const V = tokenizer.vocabSize;
  if (tokenizer.kind === 'byte') {
    const bt = tokenizer as Tokenizer & { byteId(b: number): number };
    const isWord = new Uint8Array(V);
    for (let b = 0; b < 256; b++) {
      const word = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b >= 0x80;
      if (word) isWord[bt.byteId(b)] = 1;
    }
    const f = (id: number) => id >= 0 && id < V && isWord[id] === 1;
    return { wordStart: f, wordEnd: f };
  }
  const anchor = tokenizer.encode('.');
  const base = tokenizer.decode(anchor);
  const cache = new Map<number, number>(); // bit 0: starts with a word character, bit 1: ends with one
  const edges = (id: number): number => {
    if (!(id >= 0 && id < V) || tokenizer.isSpecial(id)) return 0;
    let e = cache.get(id);
    if (e === undefined) {
      const both = tokenizer.decode([...anchor, id]);
      const text = both.startsWith(base) ? both.slice(base.length) : tokenizer.decode([id]);
      e = text.length ? (isWordChar(text[0]) ? 1 : 0) | (isWordChar(text[text.length - 1]) ? 2 : 0) : 0;
      cache.set(id, e);
    }
    return e;
  };
  return { wordStart: (id) => (edges(id) & 1) !== 0, wordEnd: (id) => (edges(id) & 2) !== 0 };
}

/** The forms of a name: [bare] and, where the tokenizer has a distinct one, the form after a space. */
function nameForms(tokenizer: Tokenizer, name: string, space: Int32Array): { prefixes: string[]; forms: Int32Array[] } {
  const bare = tokenizer.encode(name);
  const spaced = tokenizer.encode(' ' + name);
  const same = (a: Int32Array, b: ArrayLike<number>) => a.length === b.length && a.every((x, i) => x === b[i]);
  const redundant = same(spaced, bare) || same(spaced, Int32Array.from([...space, ...bare]));
  return redundant ? { prefixes: [''], forms: [bare] } : { prefixes: ['', ' '], forms: [bare, spaced] };
}

/** Validate the options and draw the replacement names (deterministic by seed). */
export function causalPlan(tokenizer: Tokenizer, opts: CausalOptions): CausalPlan {
  const n = opts.replacements ?? CAUSAL_DEFAULT_REPLACEMENTS;
  if (!Number.isInteger(n) || n < 1) throw new Err(`causal: the number of counterfactual rewrites must be an integer >= 1, got ${n}`, 'set --replacements N (N = 1 is a single counterfactual name)');
  if (n > 1000) throw new Err(`causal: at most 1000 counterfactual rewrites, got ${n}`);
  const entities: string[] = [];
  for (const raw of opts.entities ?? []) {
    if (typeof raw !== 'string') throw new Err(`causal: entity names must be strings, got ${JSON.stringify(raw)}`);
    const e = raw.trim();
    if (!e) throw new Err('causal: an entity name is empty');
    if (!entities.includes(e)) entities.push(e);
  }
  if (!entities.length) {
    throw new Err('causal: no target entity given', 'name the person(s) to forget with --entity NAME (the built-in biographies data derives them from the forget split)');
  }
  const E = entities.length;
  let pool: string[];
  if (opts.names) {
    pool = [...new Set(opts.names.map((s) => s.trim()).filter(Boolean))].filter((s) => !entities.includes(s));
    if (pool.length < n * E) throw new Err(`causal: ${n} rewrites of ${E} entities need ${n * E} distinct replacement names that are not entities, got ${pool.length}`);
  } else {
    pool = replacementNames(n * E, { seed: mixSeeds(opts.seed ?? 0, 'causal'), exclude: [...entities, ...(opts.exclude ?? [])] });
  }
  const replacements = Array.from({ length: n }, (_, k) => entities.map((_e, e) => pool[k * E + e]));
  const space = tokenizer.encode(' ');
  const forms = entities.map((e) => nameForms(tokenizer, e, space));
  return {
    entities, entityIds: forms.map((f) => f.forms[0]), entityForms: forms.map((f) => f.forms), n, replacements,
    replacementIds: replacements.map((row) => row.map((r) => tokenizer.encode(r))),
    replacementForms: replacements.map((row) => row.map((r, e) => forms[e].prefixes.map((pre) => tokenizer.encode(pre + r)))),
    counterfactualPrompt: !!opts.counterfactualPrompt, nameBack: !!opts.nameBack, ...wordEdges(tokenizer),
    bos: tokenizer.bos, pad: tokenizer.pad >= 0 ? tokenizer.pad : Math.max(0, tokenizer.eos), tokenizer,
  };
}

/** A mention of entity `entity` at window positions [start, end) (clipped to the window). */
export interface Mention {
  entity: number;
  start: number;
  end: number;
  /** which of the entity's forms (entityForms) matched; 0 when absent */
  form?: number;
}

/**
 * Whole-word mentions of the plan's entities in `seq`. `left` / `right`: the tokens just before and after
 * `seq` in its stream, so that mentions cut by the window's edges are found too (without them the edges
 * count as word boundaries). Longer names win where two could match at the same place; mentions never overlap.
 */
export function findMentions(seq: ArrayLike<number>, plan: Pick<CausalPlan, 'entityForms' | 'wordStart' | 'wordEnd'>, left: ArrayLike<number> = [], right: ArrayLike<number> = []): Mention[] {
  const L = left.length;
  const full = new Int32Array(L + seq.length + right.length);
  const put = (a: ArrayLike<number>, at: number) => full.set(a instanceof Int32Array ? a : Int32Array.from(a), at);
  put(left, 0);
  put(seq, L);
  put(right, L + seq.length);
  // every form of every entity, longest first; a form starting with a word character needs a boundary on its left
  const cands: { entity: number; form: number; ids: Int32Array; left: boolean }[] = [];
  plan.entityForms.forEach((forms, entity) => forms.forEach((ids, form) => {
    if (ids.length) cands.push({ entity, form, ids, left: plan.wordStart(ids[0]) });
  }));
  cands.sort((a, b) => b.ids.length - a.ids.length);
  const out: Mention[] = [];
  for (let i = 0; i < full.length && i < L + seq.length;) {
    let hit: (typeof cands)[number] | null = null;
    const leftWord = i > 0 && plan.wordEnd(full[i - 1]);
    for (const c of cands) {
      if ((c.left && leftWord) || i + c.ids.length > full.length) continue;
      let ok = true;
      for (let j = 0; j < c.ids.length && ok; j++) ok = full[i + j] === c.ids[j];
      const next = i + c.ids.length;
      if (ok && !(next < full.length && plan.wordStart(full[next]))) {
        hit = c;
        break;
      }
    }
    if (!hit) {
      i++;
      continue;
    }
    const len = hit.ids.length;
    if (i + len > L) out.push({ entity: hit.entity, start: Math.max(0, i - L), end: Math.min(seq.length, i + len - L), form: hit.form });
    i += len;
  }
  return out;
}

/** A rewritten window: its token ids and, per original position, the position in the rewrite (−1 inside a mention). */
export interface Rewrite {
  ids: Int32Array;
  map: Int32Array;
}

/**
 * Replace every mention in `seq` by its entity's replacement, after `prefix`: `replacementIds[entity]` is the
 * replacement's tokens, or its forms (replacementForms[n][entity]), of which the mention's form is used.
 * Tokens outside mentions are copied in order, so `map` is exact; mention tokens map to −1.
 */
export function rewriteWindow(seq: ArrayLike<number>, mentions: readonly Mention[], replacementIds: readonly (Int32Array | readonly Int32Array[])[], prefix: ArrayLike<number> = []): Rewrite {
  const ids: number[] = Array.from(prefix);
  const map = new Int32Array(seq.length).fill(-1);
  const sorted = [...mentions].sort((a, b) => a.start - b.start);
  let m = 0;
  for (let t = 0; t < seq.length;) {
    if (m < sorted.length && sorted[m].start === t) {
      const x = replacementIds[sorted[m].entity];
      const r = x instanceof Int32Array ? x : x?.[sorted[m].form ?? 0];
      if (!r) throw new Err(`rewriteWindow: no replacement for entity ${sorted[m].entity}`);
      for (const x of r) ids.push(x);
      t = Math.max(t + 1, sorted[m].end);
      m++;
      continue;
    }
    if (m < sorted.length && sorted[m].start < t) throw new Err('rewriteWindow: mentions overlap');
    map[t] = ids.length;
    ids.push(seq[t]);
    t++;
  }
  return { ids: Int32Array.from(ids), map };
}

/** The counterfactual prompt of rewrite n of a window with these mentions (empty when there are none or the prompt is off). */
export function counterfactualPrefix(plan: CausalPlan, mentions: readonly Mention[], n: number): Int32Array {
  if (!plan.counterfactualPrompt || !mentions.length) return new Int32Array(0);
  const seen: number[] = [];
  for (const m of [...mentions].sort((a, b) => a.start - b.start)) if (!seen.includes(m.entity)) seen.push(m.entity);
  const text = `Complete the following passage about ${seen.map((e) => plan.replacements[n][e]).join(' and ')}. `;
  const ids = plan.tokenizer.encode(text);
  if (plan.bos < 0) return ids;
  const out = new Int32Array(ids.length + 1);
  out[0] = plan.bos;
  out.set(ids, 1);
  return out;
}

/**
 * The name-back moves: one slot per entity and form (a byte tokenizer has one form per entity, so slot =
 * entity; a subword tokenizer moves " Rep" → " Ana" and "Rep" → "Ana" as two slots).
 */
export interface NameBackSpec {
  /** first token of each slot's own name */
  original: ArrayLike<number>;
  /** replacement[n][slot]: first token of the slot's replacement name in teacher n */
  replacement: readonly ArrayLike<number>[];
  /** slots whose name-back may apply at a row (entities mentioned in its window, after their first appearance) */
  eligible: (row: number) => readonly number[];
}

/**
 * The mean of N teachers' next-token distributions, row by row, with the optional "change name back"
 * (see the section comment), without holding the N distributions: each add() accumulates p/N and keeps
 * only each teacher's probabilities of the name-back tokens of the row. Rows whose N rewrites are all the
 * same text can be added once with addAll().
 */
export class CounterfactualAverage {
  readonly sum: Float64Array;
  private readonly picks = new Map<number, Float64Array>();

  constructor(readonly rows: number, readonly vocab: number, readonly n: number, readonly nameBack?: NameBackSpec) {
    if (!Number.isInteger(n) || n < 1) throw new Err(`CounterfactualAverage: n must be an integer >= 1, got ${n}`);
    this.sum = new Float64Array(rows * vocab);
  }

  /** Teacher `k`'s distribution at `row`. */
  add(k: number, row: number, p: ArrayLike<number>): void {
    const V = this.vocab;
    const off = row * V;
    for (let v = 0; v < V; v++) this.sum[off + v] += p[v] / this.n;
    const nb = this.nameBack;
    if (!nb) return;
    const els = nb.eligible(row);
    if (!els.length) return;
    let store = this.picks.get(row);
    if (!store) this.picks.set(row, (store = new Float64Array(this.n * els.length * 2)));
    els.forEach((e, i) => {
      store![(k * els.length + i) * 2] = p[nb.replacement[k][e]];
      store![(k * els.length + i) * 2 + 1] = p[nb.original[e]];
    });
  }

  /** The same distribution for every teacher (a window without mentions). */
  addAll(row: number, p: ArrayLike<number>): void {
    for (let k = 0; k < this.n; k++) this.add(k, row, p);
  }

  /** The averaged distributions, rows × vocab, with the name-back moves applied. */
  result(): Float32Array {
    const nb = this.nameBack;
    if (nb) {
      for (const [row, store] of this.picks) {
        const els = nb.eligible(row);
        const E = els.length;
        const flagged = els.map((_e, i) => {
          let votes = 0;
          for (let k = 0; k < this.n; k++) if (store[(k * E + i) * 2] > MOVE_THRESHOLD) votes++;
          return votes > 0.5 * this.n;
        });
        if (!flagged.some(Boolean)) continue;
        for (let k = 0; k < this.n; k++) {
          // teacher k's probabilities of the tokens involved, moved in entity order
          const before = new Map<number, number>();
          els.forEach((e, i) => {
            before.set(nb.replacement[k][e], store[(k * E + i) * 2]);
            before.set(nb.original[e], store[(k * E + i) * 2 + 1]);
          });
          const after = new Map(before);
          els.forEach((e, i) => {
            if (!flagged[i]) return;
            const r = nb.replacement[k][e];
            const o = nb.original[e];
            const pr = after.get(r)!;
            if (r === o || !(pr > KEEP_MASS)) return;
            after.set(o, after.get(o)! + pr - KEEP_MASS);
            after.set(r, KEEP_MASS);
          });
          for (const [tok, v] of after) this.sum[row * this.vocab + tok] += (v - before.get(tok)!) / this.n;
        }
      }
    }
    return Float32Array.from(this.sum);
  }
}

export interface CausalTeacher {
  /** p_teacher, rows × vocab (zero on masked rows) */
  probs: Float32Array;
  /** log p_teacher as teacher logits for the fkl kernel (softmax(log p) = p); 0 on masked rows */
  logits: Float32Array;
  /** 1 = the row is trained on */
  mask: Uint8Array;
  /** mentions found in each window */
  mentions: Mention[][];
}

/** Stream context of each window of a batch from `batcher` (null when the batch is not the batcher's). */
export function windowContext(batcher: Batcher, b: Batch, width: number): { left: Int32Array; right: Int32Array }[] | null {
  const data = batcher.data;
  const { T } = b;
  if (data.seqLen !== T || b.position.index >= data.count) return null;
  let { epoch, index } = b.position;
  const out: { left: Int32Array; right: Int32Array }[] = [];
  for (let r = 0; r < b.B; r++) {
    const w = batcher.epochOrder(epoch)[index];
    const start = w * T;
    for (let t = 0; t < T; t++) if (data.tokens[start + t] !== b.inputs[r * T + t] || data.tokens[start + t + 1] !== b.targets[r * T + t]) return null;
    out.push({ left: data.tokens.subarray(Math.max(0, start - width), start), right: data.tokens.subarray(start + T, Math.min(data.tokens.length, start + T + width)) });
    if (++index >= data.count) {
      index = 0;
      epoch++;
    }
  }
  return out;
}

/** Window context as windowContext gives it. */
export type WindowContext = { left: ArrayLike<number>; right: ArrayLike<number> }[] | null | undefined;

/** The mentions, rewrites and kept rows of windows [r0, r1) of a batch (no forward). */
interface WindowPlans {
  mentions: Mention[][];
  /** rewrites[window][n] (one identity rewrite for a window without mentions) */
  rewrites: Rewrite[][];
  /** kept rows, (r1 − r0) × T */
  mask: Uint8Array;
}

function planWindows(b: Batch, plan: CausalPlan, context: WindowContext, maxPos: number, r0 = 0, r1 = b.B): WindowPlans {
  const { T } = b;
  const mentions: Mention[][] = [];
  const rewrites: Rewrite[][] = [];
  for (let r = r0; r < r1; r++) {
    const seq = b.inputs.subarray(r * T, (r + 1) * T);
    const ctx = context?.[r];
    const ms = findMentions(seq, plan, ctx?.left ?? [], ctx?.right ?? [b.targets[r * T + T - 1]]);
    mentions.push(ms);
    rewrites.push(ms.length
      ? Array.from({ length: plan.n }, (_, k) => rewriteWindow(seq, ms, plan.replacementForms[k], counterfactualPrefix(plan, ms, k)))
      : [{ ids: seq.slice(), map: Int32Array.from({ length: T }, (_, t) => t) }]);
  }
  const mask = new Uint8Array((r1 - r0) * T);
  for (let i = 0; i < r1 - r0; i++) {
    for (let t = 0; t < T; t++) {
      mask[i * T + t] = b.targets[(r0 + i) * T + t] !== -100 && rewrites[i].every((w) => w.map[t] >= 0 && w.map[t] < maxPos) ? 1 : 0;
    }
  }
  return { mentions, rewrites, mask };
}

/**
 * p_teacher of the windows of `wp` (rows × V, zero on masked rows): the frozen model on each rewrite (one
 * forward per rewrite, windows without mentions only once), its logits fetched in row chunks at the kept rows.
 */
async function averageTeacher(original: Model, b: Batch, plan: CausalPlan, wp: WindowPlans): Promise<Float32Array> {
  const { T } = b;
  const W = wp.mentions.length;
  const V = original.config.vocabSize;
  const maxPos = original.config.maxPositions;
  const N = plan.n;
  const { mentions, rewrites, mask } = wp;
  // name-back: one slot per entity and form; the entities of the window at each row, after their first appearance (or everywhere with the prompt)
  const slots: { original: number; replacement: number[] }[][] = plan.entityForms.map((forms, e) => forms.map((ids, f) => ({
    original: ids[0], replacement: plan.replacementForms.map((row) => row[e][f][0]),
  })));
  const slotIds: number[][] = [];
  let nSlots = 0;
  for (const s of slots) slotIds.push(s.map(() => nSlots++));
  const firstAt = mentions.map((ms) => {
    const f = new Map<number, number>();
    for (const m of ms) f.set(m.entity, Math.min(f.get(m.entity) ?? Infinity, m.start));
    return f;
  });
  const nameBack: NameBackSpec | undefined = plan.nameBack ? {
    original: slots.flat().map((s) => s.original),
    replacement: Array.from({ length: N }, (_, k) => slots.flat().map((s) => s.replacement[k])),
    eligible: (row) => {
      const r = Math.floor(row / T), t = row % T;
      const els: number[] = [];
      for (const [e, s] of [...firstAt[r]].sort((x, y) => x[0] - y[0])) if (plan.counterfactualPrompt || t >= s) els.push(...slotIds[e]);
      return els;
    },
  } : undefined;
  const avg = new CounterfactualAverage(W * T, V, N, nameBack);
  const p = new Float64Array(V);
  for (let k = 0; k < N; k++) {
    const windows = Array.from({ length: W }, (_, i) => i).filter((i) => k === 0 || mentions[i].length > 0);
    if (!windows.length) continue;
    const which = (i: number) => rewrites[i][mentions[i].length ? k : 0];
    const L = Math.min(maxPos, Math.max(...windows.map((i) => which(i).ids.length)));
    const ids = new Int32Array(windows.length * L).fill(plan.pad);
    windows.forEach((i, j) => ids.set(which(i).ids.subarray(0, L), j * L));
    await original.native.forward(ids, windows.length, L);
    // the kept rows: (row of the group, row of this forward)
    const rows: number[] = [];
    const fwd: number[] = [];
    windows.forEach((i, j) => {
      const map = which(i).map;
      for (let t = 0; t < T; t++) if (mask[i * T + t]) { rows.push(i * T + t); fwd.push(j * L + map[t]); }
    });
    const chunk = headChunkRows(V, Math.max(1, rows.length));
    const buf = new Float32Array(chunk * V);
    for (let c0 = 0; c0 < rows.length; c0 += chunk) {
      const n = Math.min(chunk, rows.length - c0);
      const z = await original.native.logits(Int32Array.from(fwd.slice(c0, c0 + n)), buf);
      for (let c = 0; c < n; c++) {
        const off = c * V;
        let mx = -Infinity;
        for (let v = 0; v < V; v++) mx = Math.max(mx, z[off + v]);
        let s = 0;
        for (let v = 0; v < V; v++) s += p[v] = Math.exp(z[off + v] - mx);
        for (let v = 0; v < V; v++) p[v] /= s;
        const row = rows[c0 + c];
        if (mentions[Math.floor(row / T)].length) avg.add(k, row, p);
        else avg.addAll(row, p);
      }
    }
  }
  const probs = avg.result();
  for (let row = 0; row < W * T; row++) if (!mask[row]) probs.fill(0, row * V, (row + 1) * V);
  return probs;
}

/** log p, in place (0 on masked rows): the fkl kernel's teacher logits, whose softmax is p. */
function logOf(probs: Float32Array, mask: Uint8Array, V: number, out = probs): Float32Array {
  for (let row = 0; row < mask.length; row++) {
    if (!mask[row]) {
      out.fill(0, row * V, (row + 1) * V);
      continue;
    }
    for (let v = row * V; v < (row + 1) * V; v++) out[v] = Math.log(Math.max(probs[v], 1e-30));
  }
  return out;
}

/**
 * The causal-intervention teacher of one batch: N counterfactual rewrites of every window, the frozen
 * `original` model on each (one forward per rewrite, windows without mentions only once), the softmaxes
 * averaged on the kept rows. `context`: each window's neighbouring stream tokens (windowContext); without
 * it the last target token is the only right context. Holds the batch's rows × V twice: for large
 * vocabularies the unlearning objective (causalObjective) works a group of windows at a time instead.
 */
export async function causalTeacher(original: Model, b: Batch, plan: CausalPlan, context?: WindowContext): Promise<CausalTeacher> {
  const wp = planWindows(b, plan, context, original.config.maxPositions);
  const probs = await averageTeacher(original, b, plan, wp);
  const V = original.config.vocabSize;
  return { probs, logits: logOf(probs, wp.mask, V, new Float32Array(probs.length)), mask: wp.mask, mentions: wp.mentions };
}

/** Floats of p_teacher held at once by causalObjective: whole windows up to this many (at least one window). */
export const CAUSAL_GROUP_FLOATS = 1 << 24;

/** What causalObjective keeps of a batch for a second evaluation on it (SAM), when the batch is one group. */
export interface CausalCache {
  batch?: Batch;
  logits?: Float32Array;
}

/**
 * scale · Σ_t KL(p_teacher,t ‖ p_θ,t) / #kept rows of each sequence, averaged over the sequences with a kept
 * row (the paper's normalisation), through the fkl kernel with log p_teacher as the teacher's logits. The
 * teacher is built for groups of whole windows of at most CAUSAL_GROUP_FLOATS teacher floats, the student's
 * logits are taken in head row chunks (no rows × V block of a larger batch). Runs the student's forward and
 * backward; returns the unscaled loss. `cache` keeps a one-group batch's teacher for the next call on it;
 * `groupFloats` replaces CAUSAL_GROUP_FLOATS (tests).
 */
export async function causalObjective(model: Model, original: Model, b: Batch, plan: CausalPlan, context: WindowContext, scale = 1, cache?: CausalCache, groupFloats = CAUSAL_GROUP_FLOATS): Promise<number> {
  const { B, T } = b;
  const V = model.config.vocabSize;
  const all = planWindows(b, plan, context, original.config.maxPositions);
  const counts = new Array<number>(B).fill(0);
  for (let r = 0; r < B; r++) for (let t = 0; t < T; t++) counts[r] += all.mask[r * T + t];
  const seqs = counts.filter((c) => c > 0).length;
  if (!seqs) return 0;
  const per = Math.max(1, Math.floor(groupFloats / (T * V)));
  await model.native.forward(b.inputs, B, T);
  const chunk = headChunkRows(V, B * T);
  const sbuf = new Float32Array(chunk * V);
  let loss = 0;
  for (let g0 = 0; g0 < B; g0 += per) {
    const g1 = Math.min(B, g0 + per);
    const mask = all.mask.subarray(g0 * T, g1 * T);
    let teacher: Float32Array;
    if (cache?.batch === b && cache.logits) teacher = cache.logits;
    else {
      const wp: WindowPlans = { mentions: all.mentions.slice(g0, g1), rewrites: all.rewrites.slice(g0, g1), mask };
      teacher = logOf(await averageTeacher(original, b, plan, wp), mask, V);
      if (cache) {
        const whole = g0 === 0 && g1 === B; // only a one-group batch is kept
        cache.batch = whole ? b : undefined;
        cache.logits = whole ? teacher : undefined;
      }
    }
    for (let c0 = g0 * T; c0 < g1 * T; c0 += chunk) {
      const n = Math.min(chunk, g1 * T - c0);
      const student = (await model.native.logits(Int32Array.from({ length: n }, (_, i) => c0 + i), sbuf)).subarray(0, n * V);
      const at = c0 - g0 * T;
      const res = await kdLoss.compute('fkl', { student, teacher: teacher.subarray(at * V, (at + n) * V), rows: n, vocab: V, mask: mask.subarray(at, at + n), reduction: 'sum' });
      for (let i = 0; i < n; i++) {
        const r = Math.floor((c0 + i) / T);
        if (!counts[r]) continue;
        const w = 1 / (counts[r] * seqs);
        loss += res.perRow[i] * w;
        const g = res.grad.subarray(i * V, (i + 1) * V);
        for (let v = 0; v < V; v++) g[v] *= w * scale;
      }
      await model.native.headGradRows(c0, res.grad);
    }
  }
  await model.native.backward(true, null);
  return loss;
}

/** Check that every entity of the plan is mentioned somewhere in the packed forget data. */
export function checkEntitiesPresent(plan: CausalPlan, data: PackedDataset): void {
  const found = new Set(findMentions(data.tokens, plan).map((m) => m.entity));
  const missing = plan.entities.filter((_e, i) => !found.has(i));
  if (missing.length) {
    throw new Err(`causal: ${missing.map((m) => JSON.stringify(m)).join(', ')} ${missing.length === 1 ? 'does' : 'do'} not occur in the forget data`,
      'entities are matched exactly (case-sensitive, whole words, as the tokenizer writes the name alone or after a space); check the spelling or the --forget data');
  }
}
