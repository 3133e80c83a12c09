/**
 * The causal-intervention unlearning teacher ("Revisiting Who's Harry Potter"): counterfactual rewrites of the
 * forget windows, the frozen model averaged over them, and the KL objective toward that average. Used by
 * lib/unlearn/unlearn.ts as method 'causal'.
 */
import { Batch, Batcher, PackedDataset } from '../data/datasets';
import { UndoError } from '../core/errors';
import { loss as kdLoss } from '../train/losses';
import { Model } from '../models/model';
import { mixSeeds } from '../core/rng';
import { replacementNames } from '../tasks/biographies';
import type { ByteTokenizer } from '../data/tokenizer';

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
// Alignment. The paper aligns the rewritten token sequences back to the original with difflib. Here
// the tokenizer is byte-level and the rewrite is built here, from the mention spans found in the
// window: every token outside a mention is copied, so its position in rewrite n is known exactly
// (its original position + the prompt length + the length differences of the names before it). That
// offset map is exact where a diff could mis-align (a replacement name sharing bytes with its
// surroundings), costs nothing, and needs no heuristics. Row t of the window (input token x_t,
// predicting x_{t+1}) is kept when x_t is not inside a mention (the target-name tokens themselves
// are excluded) and its rewritten position fits the context in every one of the N versions.
//
// Mentions are exact, case-sensitive, whole-word matches of the entity names (the neighbouring bytes
// are not ASCII letters or digits nor non-ASCII bytes; special tokens are boundaries), found in the window and,
// when the windows come from a Batcher over a packed stream, across the window's edges: a mention cut
// by the edge is replaced by the whole replacement name and its bytes in the window are excluded.
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
  entityIds: Int32Array[];
  /** N */
  n: number;
  /** replacements[n][e]: the name that stands for entity e in rewrite n (all N × E distinct) */
  replacements: string[][];
  replacementIds: Int32Array[][];
  counterfactualPrompt: boolean;
  nameBack: boolean;
  /** isWord[id] = 1 for the ids of letters, digits and non-ASCII bytes (mention boundaries) */
  isWord: Uint8Array;
  bos: number;
  pad: number;
  tokenizer: ByteTokenizer;
}

/** Validate the options and draw the replacement names (deterministic by seed). */
export function causalPlan(tokenizer: ByteTokenizer, opts: CausalOptions): CausalPlan {
  const n = opts.replacements ?? CAUSAL_DEFAULT_REPLACEMENTS;
  if (!Number.isInteger(n) || n < 1) throw new UndoError(`causal: the number of counterfactual rewrites must be an integer >= 1, got ${n}`, 'set --replacements N (N = 1 is a single counterfactual name)');
  if (n > 1000) throw new UndoError(`causal: at most 1000 counterfactual rewrites, got ${n}`);
  const entities: string[] = [];
  for (const raw of opts.entities ?? []) {
    if (typeof raw !== 'string') throw new UndoError(`causal: entity names must be strings, got ${JSON.stringify(raw)}`);
    const e = raw.trim();
    if (!e) throw new UndoError('causal: an entity name is empty');
    if (!entities.includes(e)) entities.push(e);
  }
  if (!entities.length) {
    throw new UndoError('causal: no target entity given', 'name the person(s) to forget with --entity NAME (the built-in biographies data derives them from the forget split)');
  }
  const E = entities.length;
  let pool: string[];
  if (opts.names) {
    pool = [...new Set(opts.names.map((s) => s.trim()).filter(Boolean))].filter((s) => !entities.includes(s));
    if (pool.length < n * E) throw new UndoError(`causal: ${n} rewrites of ${E} entities need ${n * E} distinct replacement names that are not entities, got ${pool.length}`);
  } else {
    pool = replacementNames(n * E, { seed: mixSeeds(opts.seed ?? 0, 'causal'), exclude: [...entities, ...(opts.exclude ?? [])] });
  }
  const replacements = Array.from({ length: n }, (_, k) => entities.map((_e, e) => pool[k * E + e]));
  const isWord = new Uint8Array(tokenizer.vocabSize);
  for (let b = 0; b < 256; b++) {
    const word = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b >= 0x80;
    if (word) isWord[tokenizer.byteId(b)] = 1;
  }
  return {
    entities, entityIds: entities.map((e) => tokenizer.encode(e)), n, replacements,
    replacementIds: replacements.map((row) => row.map((r) => tokenizer.encode(r))),
    counterfactualPrompt: !!opts.counterfactualPrompt, nameBack: !!opts.nameBack, isWord,
    bos: tokenizer.bos, pad: tokenizer.pad, tokenizer,
  };
}

/** A mention of entity `entity` at window positions [start, end) (clipped to the window). */
export interface Mention {
  entity: number;
  start: number;
  end: number;
}

/**
 * Whole-word mentions of the plan's entities in `seq`. `left` / `right`: the tokens just before and after
 * `seq` in its stream, so that mentions cut by the window's edges are found too (without them the edges
 * count as word boundaries). Longer names win where two could match at the same place; mentions never overlap.
 */
export function findMentions(seq: ArrayLike<number>, plan: Pick<CausalPlan, 'entityIds' | 'isWord'>, left: ArrayLike<number> = [], right: ArrayLike<number> = []): Mention[] {
  const L = left.length;
  const full = new Int32Array(L + seq.length + right.length);
  const put = (a: ArrayLike<number>, at: number) => full.set(a instanceof Int32Array ? a : Int32Array.from(a), at);
  put(left, 0);
  put(seq, L);
  put(right, L + seq.length);
  const order = plan.entityIds.map((_, e) => e).sort((a, b) => plan.entityIds[b].length - plan.entityIds[a].length);
  const word = (i: number) => i >= 0 && i < full.length && full[i] >= 0 && full[i] < plan.isWord.length && plan.isWord[full[i]] === 1;
  const out: Mention[] = [];
  for (let i = 0; i < full.length && i < L + seq.length;) {
    let hit = -1;
    if (!word(i - 1)) {
      for (const e of order) {
        const ids = plan.entityIds[e];
        if (ids.length === 0 || i + ids.length > full.length) continue;
        let ok = true;
        for (let j = 0; j < ids.length && ok; j++) ok = full[i + j] === ids[j];
        if (ok && !word(i + ids.length)) {
          hit = e;
          break;
        }
      }
    }
    if (hit < 0) {
      i++;
      continue;
    }
    const len = plan.entityIds[hit].length;
    if (i + len > L) out.push({ entity: hit, start: Math.max(0, i - L), end: Math.min(seq.length, i + len - L) });
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
 * Replace every mention in `seq` by its entity's replacement (`replacementIds[entity]`), after `prefix`.
 * Tokens outside mentions are copied in order, so `map` is exact; mention tokens map to −1.
 */
export function rewriteWindow(seq: ArrayLike<number>, mentions: readonly Mention[], replacementIds: readonly Int32Array[], prefix: ArrayLike<number> = []): Rewrite {
  const ids: number[] = Array.from(prefix);
  const map = new Int32Array(seq.length).fill(-1);
  const sorted = [...mentions].sort((a, b) => a.start - b.start);
  let m = 0;
  for (let t = 0; t < seq.length;) {
    if (m < sorted.length && sorted[m].start === t) {
      const r = replacementIds[sorted[m].entity];
      if (!r) throw new UndoError(`rewriteWindow: no replacement for entity ${sorted[m].entity}`);
      for (const x of r) ids.push(x);
      t = Math.max(t + 1, sorted[m].end);
      m++;
      continue;
    }
    if (m < sorted.length && sorted[m].start < t) throw new UndoError('rewriteWindow: mentions overlap');
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
  const out = new Int32Array(ids.length + 1);
  out[0] = plan.bos;
  out.set(ids, 1);
  return out;
}

export interface NameBackSpec {
  /** first token of each entity's own name */
  original: ArrayLike<number>;
  /** replacement[n][e]: first token of the replacement name of entity e in teacher n */
  replacement: readonly ArrayLike<number>[];
  /** entities whose name-back may apply at a row (those mentioned in its window, after their first appearance) */
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
    if (!Number.isInteger(n) || n < 1) throw new UndoError(`CounterfactualAverage: n must be an integer >= 1, got ${n}`);
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

/**
 * The causal-intervention teacher of one batch: N counterfactual rewrites of every window, the frozen
 * `original` model on each (one forward per rewrite, windows without mentions only once), the softmaxes
 * averaged on the kept rows. `context`: each window's neighbouring stream tokens (windowContext); without
 * it the last target token is the only right context.
 */
export async function causalTeacher(original: Model, b: Batch, plan: CausalPlan, context?: { left: ArrayLike<number>; right: ArrayLike<number> }[] | null): Promise<CausalTeacher> {
  const { B, T } = b;
  const V = original.config.vocabSize;
  const maxPos = original.config.maxPositions;
  const N = plan.n;
  const mentions: Mention[][] = [];
  const rewrites: Rewrite[][] = []; // [window][n]
  for (let r = 0; r < B; r++) {
    const seq = b.inputs.subarray(r * T, (r + 1) * T);
    const ctx = context?.[r];
    const ms = findMentions(seq, plan, ctx?.left ?? [], ctx?.right ?? [b.targets[r * T + T - 1]]);
    mentions.push(ms);
    rewrites.push(ms.length
      ? Array.from({ length: N }, (_, k) => rewriteWindow(seq, ms, plan.replacementIds[k], counterfactualPrefix(plan, ms, k)))
      : [{ ids: seq.slice(), map: Int32Array.from({ length: T }, (_, t) => t) }]);
  }
  const mask = new Uint8Array(B * T);
  for (let r = 0; r < B; r++) {
    for (let t = 0; t < T; t++) {
      mask[r * T + t] = b.targets[r * T + t] !== -100 && rewrites[r].every((w) => w.map[t] >= 0 && w.map[t] < maxPos) ? 1 : 0;
    }
  }
  // name-back: entities of the window at each row, after their first appearance (or everywhere with the prompt)
  const firstAt = mentions.map((ms) => {
    const f = new Map<number, number>();
    for (const m of ms) f.set(m.entity, Math.min(f.get(m.entity) ?? Infinity, m.start));
    return f;
  });
  const nameBack: NameBackSpec | undefined = plan.nameBack ? {
    original: plan.entityIds.map((ids) => ids[0]),
    replacement: plan.replacementIds.map((row) => row.map((ids) => ids[0])),
    eligible: (row) => {
      const r = Math.floor(row / T), t = row % T;
      const els: number[] = [];
      for (const [e, s] of [...firstAt[r]].sort((x, y) => x[0] - y[0])) if (plan.counterfactualPrompt || t >= s) els.push(e);
      return els;
    },
  } : undefined;
  const avg = new CounterfactualAverage(B * T, V, N, nameBack);
  const p = new Float64Array(V);
  for (let k = 0; k < N; k++) {
    const windows = Array.from({ length: B }, (_, r) => r).filter((r) => k === 0 || mentions[r].length > 0);
    if (!windows.length) continue;
    const L = Math.min(maxPos, Math.max(...windows.map((r) => rewrites[r][mentions[r].length ? k : 0].ids.length)));
    const ids = new Int32Array(windows.length * L).fill(plan.pad);
    windows.forEach((r, i) => {
      const w = rewrites[r][mentions[r].length ? k : 0].ids;
      ids.set(w.subarray(0, L), i * L);
    });
    await original.native.forward(ids, windows.length, L);
    const z = await original.native.logits(null);
    windows.forEach((r, i) => {
      const w = rewrites[r][mentions[r].length ? k : 0];
      for (let t = 0; t < T; t++) {
        if (!mask[r * T + t]) continue;
        const off = (i * L + w.map[t]) * V;
        let mx = -Infinity;
        for (let v = 0; v < V; v++) mx = Math.max(mx, z[off + v]);
        let s = 0;
        for (let v = 0; v < V; v++) s += p[v] = Math.exp(z[off + v] - mx);
        for (let v = 0; v < V; v++) p[v] /= s;
        if (mentions[r].length) avg.add(k, r * T + t, p);
        else avg.addAll(r * T + t, p);
      }
    });
  }
  const probs = avg.result();
  const logits = new Float32Array(B * T * V);
  for (let row = 0; row < B * T; row++) {
    if (!mask[row]) {
      probs.fill(0, row * V, (row + 1) * V);
      continue;
    }
    for (let v = 0; v < V; v++) logits[row * V + v] = Math.log(Math.max(probs[row * V + v], 1e-30));
  }
  return { probs, logits, mask, mentions };
}

/**
 * scale · Σ_t KL(p_teacher,t ‖ p_θ,t) / #kept rows of each sequence, averaged over the sequences with a kept
 * row (the paper's normalisation), through the fkl kernel with log p_teacher as the teacher's logits.
 * Returns the unscaled loss.
 */
export async function teacherKlObjective(model: Model, b: Batch, teacher: Pick<CausalTeacher, 'logits' | 'mask'>, scale = 1): Promise<number> {
  const { B, T } = b;
  const V = model.config.vocabSize;
  const counts = new Array<number>(B).fill(0);
  for (let r = 0; r < B; r++) for (let t = 0; t < T; t++) counts[r] += teacher.mask[r * T + t];
  const seqs = counts.filter((c) => c > 0).length;
  if (!seqs) return 0;
  await model.native.forward(b.inputs, B, T);
  const student = await model.native.logits(null);
  const res = kdLoss.compute('fkl', { student, teacher: teacher.logits, rows: B * T, vocab: V, mask: teacher.mask, reduction: 'sum' });
  let loss = 0;
  for (let r = 0; r < B; r++) {
    if (!counts[r]) continue;
    const w = 1 / (counts[r] * seqs);
    for (let t = 0; t < T; t++) loss += res.perRow[r * T + t] * w;
    const g = res.grad.subarray(r * T * V, (r + 1) * T * V);
    for (let i = 0; i < g.length; i++) g[i] *= w * scale;
  }
  await model.native.headGrad(res.grad);
  await model.native.backward(true, null);
  return loss;
}

/** Check that every entity of the plan is mentioned somewhere in the packed forget data. */
export function checkEntitiesPresent(plan: CausalPlan, data: PackedDataset): void {
  const found = new Set(findMentions(data.tokens, plan).map((m) => m.entity));
  const missing = plan.entities.filter((_e, i) => !found.has(i));
  if (missing.length) {
    throw new UndoError(`causal: ${missing.map((m) => JSON.stringify(m)).join(', ')} ${missing.length === 1 ? 'does' : 'do'} not occur in the forget data`,
      'entities are matched exactly (case-sensitive, whole words); check the spelling or the --forget data');
  }
}
