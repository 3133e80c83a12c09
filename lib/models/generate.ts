/**
 * Text generation with the native KV cache: greedy, temperature, top-k and top-p sampling. Prompts of the
 * same token length run as one batch (prefill once, then one token per step).
 */
import { UndoError, errorClass } from '../core/errors';
import { Model } from './model';
import { Rng } from '../core/rng';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export interface SampleOptions {
  maxNewTokens?: number;
  /** 0 = greedy (default) */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /**
   * stop a row when it emits one of these ids (default: model.stopTokenIds(): the tokenizer's EOS,
   * generation_config.json's and config.json's eos_token_id, chat end-of-turn tokens included)
   */
  stopIds?: number[];
  /** return the stop id that ended a row as its last token (default false: excluded) */
  keepStop?: boolean;
  /** rows per batch (default 64) */
  batchSize?: number;
}

let scratch = new Float32Array(0);

/** The k-th largest value of a (1-based k ≤ a.length), by quickselect on a scratch copy: O(V), no sort. */
function kthLargest(a: Float32Array, k: number): number {
  if (scratch.length < a.length) scratch = new Float32Array(a.length);
  const x = scratch.subarray(0, a.length);
  x.set(a);
  let lo = 0, hi = x.length - 1;
  const want = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = x[(lo + hi) >>> 1];
    let i = lo, j = hi;
    while (i <= j) {
      while (x[i] > pivot) i++;
      while (x[j] < pivot) j--;
      if (i <= j) {
        const t = x[i]; x[i] = x[j]; x[j] = t;
        i++; j--;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return x[want];
  }
  return x[want];
}

/** Indices of the (at least) k largest logits, sorted by logit descending, then index ascending. */
function topIndices(logits: Float32Array, k: number): number[] {
  const V = logits.length;
  const idx: number[] = [];
  if (k >= V) for (let i = 0; i < V; i++) idx.push(i);
  else {
    const t = kthLargest(logits, k);
    for (let i = 0; i < V; i++) if (logits[i] >= t) idx.push(i);
  }
  return idx.sort((a, b) => logits[b] - logits[a] || a - b);
}

/**
 * Pick the next token from one row of logits: greedy (temperature 0), or a draw from softmax(logits / T) over
 * the top-k and then the top-p nucleus. O(V) per call: the candidates are found by selection, and only they
 * are sorted (the nucleus grows by doubling until it holds the mass p), so a 262k vocabulary costs no sort.
 */
export function sampleToken(logits: Float32Array, opts: SampleOptions, rng: Rng): number {
  const V = logits.length;
  const temperature = opts.temperature ?? 0;
  let best = 0;
  for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
  if (!(temperature > 0)) return best;
  const m = logits[best];
  const topK = opts.topK && opts.topK > 0 ? Math.min(opts.topK, V) : V;
  const topP = opts.topP ?? 1;
  // the total mass of the top-k set (all of V when there is no top-k)
  let idx: number[] | null = topK < V ? topIndices(logits, topK).slice(0, topK) : null;
  let total = 0;
  if (idx) for (const i of idx) total += Math.exp((logits[i] - m) / temperature);
  else for (let i = 0; i < V; i++) total += Math.exp((logits[i] - m) / temperature);
  if (topP < 1) {
    // the smallest prefix of the sorted candidates whose mass reaches topP · total
    for (let k = Math.min(64, topK); ; k = Math.min(2 * k, topK)) {
      const cand = idx ? idx.slice(0, k) : topIndices(logits, k);
      let acc = 0, keep = 0;
      while (keep < cand.length && acc < topP * total) acc += Math.exp((logits[cand[keep++]] - m) / temperature);
      if (acc >= topP * total || k >= topK) {
        idx = cand.slice(0, Math.max(1, keep));
        break;
      }
    }
  }
  if (!idx) {
    // plain temperature sampling: one pass in index order
    let u = rng.next() * total;
    for (let i = 0; i < V; i++) {
      u -= Math.exp((logits[i] - m) / temperature);
      if (u <= 0) return i;
    }
    return V - 1;
  }
  let sum = 0;
  const probs = idx.map((i) => Math.exp((logits[i] - m) / temperature));
  for (const p of probs) sum += p;
  let u = rng.next() * sum;
  for (let j = 0; j < probs.length; j++) {
    u -= probs[j];
    if (u <= 0) return idx[j];
  }
  return idx[idx.length - 1];
}

/** Generate continuations of token-id prompts; returns the new tokens of each prompt (stop id excluded). */
export async function generateIds(model: Model, prompts: Int32Array[], opts: SampleOptions = {}): Promise<Int32Array[]> {
  const maxNew = opts.maxNewTokens ?? 32;
  const V = model.config.vocabSize;
  const stop = new Set(opts.stopIds ?? model.stopTokenIds());
  const rng = new Rng(opts.seed ?? 0);
  const out: Int32Array[] = new Array(prompts.length);
  // group by prompt length so each batch shares positions
  const groups = new Map<number, number[]>();
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new Err(`prompt ${i} is empty`);
    const g = groups.get(p.length) ?? [];
    g.push(i);
    groups.set(p.length, g);
  });
  const batchSize = opts.batchSize ?? 64;
  for (const [len, members] of groups) {
    // the last sampled token is never fed back: len + maxNew − 1 positions run through the model
    const positions = len + Math.max(1, maxNew) - 1;
    if (positions > model.config.maxPositions) {
      throw new Err(`prompt length ${len} + ${maxNew} new tokens exceeds the model's max_position_embeddings (${model.config.maxPositions})`);
    }
    for (let s = 0; s < members.length; s += batchSize) {
      const rows = members.slice(s, s + batchSize);
      const B = rows.length;
      model.native.cacheBegin(B, positions);
      const ids = new Int32Array(B * len);
      rows.forEach((r, b) => ids.set(prompts[r], b * len));
      let logits = await model.native.cacheStep(ids, len);
      const gen: number[][] = rows.map(() => []);
      const done = new Array<boolean>(B).fill(false);
      for (let t = 0; t < maxNew; t++) {
        const next = new Int32Array(B);
        for (let b = 0; b < B; b++) {
          const tok = done[b] ? model.tokenizer.pad : sampleToken(logits.subarray(b * V, (b + 1) * V), opts, rng);
          if (!done[b]) {
            if (stop.has(tok)) {
              done[b] = true;
              if (opts.keepStop) gen[b].push(tok);
            } else gen[b].push(tok);
          }
          next[b] = tok < V ? tok : 0;
        }
        if (done.every(Boolean) || t === maxNew - 1) break;
        logits = await model.native.cacheStep(next, 1);
      }
      rows.forEach((r, b) => (out[r] = Int32Array.from(gen[b])));
    }
  }
  return out;
}

/** Generate text continuations of text prompts (BOS prepended). */
export async function generateText(model: Model, prompts: string[], opts: SampleOptions = {}): Promise<string[]> {
  const ids = prompts.map((p) => model.tokenizer.encode(p, { bos: true }));
  const gen = await generateIds(model, ids, opts);
  return gen.map((g) => model.tokenizer.decode(g, { skipSpecial: true }));
}
