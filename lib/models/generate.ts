/**
 * Text generation with the native KV cache: greedy, temperature, top-k and top-p sampling. Prompts of the
 * same token length run as one batch (prefill once, then one token per step).
 */
import { UndoError } from '../core/errors';
import { Model } from './model';
import { Rng } from '../core/rng';

export interface SampleOptions {
  maxNewTokens?: number;
  /** 0 = greedy (default) */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** stop a row when it emits one of these ids (default: the tokenizer's EOS and BOS) */
  stopIds?: number[];
  /** rows per batch (default 64) */
  batchSize?: number;
}

/** Pick the next token from one row of logits. */
export function sampleToken(logits: Float32Array, opts: SampleOptions, rng: Rng): number {
  const V = logits.length;
  const temperature = opts.temperature ?? 0;
  if (!(temperature > 0)) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let idx = Array.from({ length: V }, (_, i) => i);
  idx.sort((a, b) => logits[b] - logits[a]);
  if (opts.topK && opts.topK > 0) idx = idx.slice(0, opts.topK);
  const m = logits[idx[0]];
  let probs = idx.map((i) => Math.exp((logits[i] - m) / temperature));
  let sum = probs.reduce((a, b) => a + b, 0);
  const topP = opts.topP ?? 1;
  if (topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && acc < topP * sum) acc += probs[keep++];
    idx = idx.slice(0, Math.max(1, keep));
    probs = probs.slice(0, Math.max(1, keep));
    sum = probs.reduce((a, b) => a + b, 0);
  }
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
  const stop = new Set(opts.stopIds ?? [model.tokenizer.eos, model.tokenizer.bos]);
  const rng = new Rng(opts.seed ?? 0);
  const out: Int32Array[] = new Array(prompts.length);
  // group by prompt length so each batch shares positions
  const groups = new Map<number, number[]>();
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new UndoError(`prompt ${i} is empty`);
    const g = groups.get(p.length) ?? [];
    g.push(i);
    groups.set(p.length, g);
  });
  const batchSize = opts.batchSize ?? 64;
  for (const [len, members] of groups) {
    if (len + maxNew > model.config.maxPositions) {
      throw new UndoError(`prompt length ${len} + ${maxNew} new tokens exceeds the model's max_position_embeddings (${model.config.maxPositions})`);
    }
    for (let s = 0; s < members.length; s += batchSize) {
      const rows = members.slice(s, s + batchSize);
      const B = rows.length;
      model.native.cacheBegin(B, len + maxNew);
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
            if (stop.has(tok)) done[b] = true;
            else gen[b].push(tok);
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
