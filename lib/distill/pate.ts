/**
 * Hot PATE (Cohen, Cohen-Wang, Lyu, Nelson, Sarlós, Stemmer, arXiv 2312.02132): private aggregation of
 * teacher distributions for generative students.
 *
 * Teachers are trained on disjoint partitions of the private data ({@link partitionDocuments},
 * {@link trainTeachers}). Responses to public prompts are then generated in lockstep: at every step every
 * teacher gives its next-token distribution p⁽ⁱ⁾ and casts one vote, and a differentially private
 * aggregator releases one token or abstains (⊥). Voting schemes:
 *
 *  - 'hot' (coordinated ensemble, the paper's Algorithm 1): one shared draw uⱼ ~ Exp(1) per token j, public
 *    and data-independent; teacher i votes argmaxⱼ pⱼ⁽ⁱ⁾/uⱼ. Each vote is still distributed as p⁽ⁱ⁾, but
 *    votes are coupled: all n vote j with probability 1/Σₖ maxᵢ pₖ⁽ⁱ⁾/pⱼ⁽ⁱ⁾ (integrate over uⱼ), so two
 *    teachers agree with probability Σⱼ 1/Σₖ max(pₖ/pⱼ, qₖ/qⱼ), the probability-Jaccard similarity of
 *    Moulton and Jiang 2018 (at least the weighted Jaccard Σ min/Σ max that shared/research/unlearning.md
 *    states; the test measures the former), and agreement on a diverse distribution becomes a concentrated
 *    histogram, which a threshold lets through, while the released token stays a sample.
 *  - 'independent': each teacher samples on its own (diversity kept, votes spread thin).
 *  - 'cold' (classic PATE): each teacher votes its most likely token (one label per teacher).
 *
 * Aggregator (Confident-GNMax, Papernot et al. 2018): if max c + N(0, σ₁²) ≥ T, release
 * argmaxⱼ cⱼ + N(0, σ₂²), else abstain. One teacher's data moves one vote, so the threshold check is a
 * Gaussian mechanism with Δ₂ = 1 and the argmax one with Δ₂ = √2; lib/distill/privacy.ts accounts them and
 * generation stops before a query would overshoot the (ε, δ) budget. On ⊥ the response stops, takes a token
 * from a public model (free: it sees only public data and released tokens), or re-queries with fresh
 * shared randomness (each try is charged). Where a public model is confident (its top probability ≥
 * `publicConfidence`), its token is released without querying the teachers at all.
 *
 * Randomness is keyed by (seed, query, step, try), so the same seed gives the same released data whatever
 * the batch size. The student is then trained on the released sequences ({@link trainOnReleased}).
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, errorClass } from '../core/errors';
import { mixSeeds, Rng } from '../core/rng';
import { readJson, writeJsonAtomic } from '../core/fsutil';
import { Batcher, Document, packDocuments, TokenDocument } from '../data/datasets';
import { Model } from '../models/model';
import { sampleToken } from '../models/generate';
import { train, TrainConfig, TrainOptions, TrainResult } from '../train/train';
import { GaussianAccountant, normalQuantile } from './privacy';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export type VoteScheme = 'hot' | 'independent' | 'cold';
export const VOTE_SCHEMES: readonly VoteScheme[] = ['hot', 'independent', 'cold'];
export type AbstainPolicy = 'stop' | 'public' | 'resample';
export const ABSTAIN_POLICIES: readonly AbstainPolicy[] = ['stop', 'public', 'resample'];

// ---------------------------------------------------------------------------------------------
// Voting
// ---------------------------------------------------------------------------------------------

/** −log E with E ~ Exp(1) (a standard Gumbel), for every token: the shared randomness ρ of one hot query. */
export function sharedGumbels(V: number, rng: Rng): Float64Array {
  const g = new Float64Array(V);
  // E = −log(1 − U) with U uniform on [0, 1); E = 0 (U = 0) is floored so that no token gets an infinite score
  for (let j = 0; j < V; j++) g[j] = -Math.log(Math.max(-Math.log1p(-rng.next()), 1e-300));
  return g;
}

/**
 * One vote per teacher from its logits (teacher i's row is logits[i·V, (i+1)·V)), at temperature τ.
 * hot: argmaxⱼ logitⱼ/τ + gⱼ with the shared Gumbels g (= argmaxⱼ pⱼ/uⱼ with uⱼ = e^{−gⱼ} ~ Exp(1));
 * independent: the same with teacher i's own Gumbels from `rngOf(i)`; cold: argmaxⱼ logitⱼ.
 * Tokens at −∞ (masked) never get a vote.
 */
export function castVotes(scheme: VoteScheme, logits: ArrayLike<number>, n: number, V: number, temperature: number, shared: Float64Array | null, rngOf?: (teacher: number) => Rng): Int32Array {
  const votes = new Int32Array(n);
  const invT = scheme === 'cold' ? 1 : 1 / temperature;
  for (let i = 0; i < n; i++) {
    const o = i * V;
    const g = scheme === 'hot' ? shared! : scheme === 'independent' ? sharedGumbels(V, rngOf!(i)) : null;
    let best = -Infinity;
    let arg = -1;
    for (let j = 0; j < V; j++) {
      const l = logits[o + j];
      if (l === -Infinity) continue;
      const s = g ? l * invT + g[j] : l;
      if (s > best) { best = s; arg = j; }
    }
    if (arg < 0) throw new Err(`teacher ${i}: every token has probability 0`);
    votes[i] = arg;
  }
  return votes;
}

/** The vote histogram over V tokens. */
export function voteHistogram(votes: ArrayLike<number>, V: number): Int32Array {
  const c = new Int32Array(V);
  for (let i = 0; i < votes.length; i++) c[votes[i]]++;
  return c;
}

export interface AggregatorConfig {
  /** σ₂ of the noisy argmax (0: no noise, not private). */
  sigma: number;
  /** σ₁ of the threshold check (0: no threshold check, every query is answered). */
  thresholdSigma: number;
  /** T: release only when max count + N(0, σ₁²) ≥ T. */
  threshold: number;
}

export interface AggregateResult {
  /** The released token, or null for ⊥. */
  token: number | null;
  /** Whether the threshold check passed (true without a check). */
  passed: boolean;
}

/**
 * Confident-GNMax on a histogram (the module comment); noise from `rng`. Only the tokens with votes (at most n)
 * draw their own noise: the V − k tokens without votes are exchangeable, so the largest of their noisy counts
 * is drawn at once as σ·Φ⁻¹(U^{1/(V−k)}) and its token uniformly among them, which has exactly the
 * distribution of adding N(0, σ²) to every count and taking the argmax, at O(n) random draws instead of O(V).
 */
export function aggregateVotes(counts: ArrayLike<number>, cfg: AggregatorConfig, rng: Rng): AggregateResult {
  const V = counts.length;
  const voted: number[] = [];
  let max = 0;
  for (let j = 0; j < V; j++) {
    if (counts[j] !== 0) voted.push(j);
    if (counts[j] > max) max = counts[j];
  }
  if (cfg.thresholdSigma > 0 && max + rng.normal(0, cfg.thresholdSigma) < cfg.threshold) return { token: null, passed: false };
  let best = -Infinity;
  let arg = 0;
  for (const j of voted) {
    const s = counts[j] + (cfg.sigma > 0 ? rng.normal(0, cfg.sigma) : 0);
    if (s > best) { best = s; arg = j; }
  }
  const m = V - voted.length;
  if (m > 0) {
    // the max of m standard normals: Φ⁻¹(U^{1/m}), computed from its upper tail 1 − U^{1/m} = −expm1(log U / m)
    const z = cfg.sigma > 0 ? normalQuantile(-Math.expm1(Math.log(1 - rng.next()) / m), true) : 0;
    if (z * cfg.sigma > best || voted.length === 0) {
      const isVoted = new Set(voted);
      let j: number;
      do j = Math.floor(rng.next() * V); while (isVoted.has(j));
      arg = j;
    }
  }
  return { token: arg, passed: true };
}

/** ρ (see lib/distill/privacy.ts) of one threshold check and of one noisy argmax. */
export function queryCosts(cfg: AggregatorConfig): { threshold: number; argmax: number } {
  return {
    threshold: cfg.thresholdSigma > 0 ? GaussianAccountant.rhoOf(cfg.thresholdSigma, 1) : 0,
    argmax: cfg.sigma > 0 ? GaussianAccountant.rhoOf(cfg.sigma, Math.SQRT2) : 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

export interface PateConfig extends AggregatorConfig {
  scheme: VoteScheme;
  /** Teachers' sampling temperature (hot, independent; default 1). */
  temperature?: number;
  /** What a ⊥ does (default 'stop'; 'public' needs a public model). */
  onAbstain?: AbstainPolicy;
  /** Extra queries with fresh randomness after a ⊥ under 'resample' (default 3). */
  retries?: number;
  /** Release the public model's most likely token, with no query, when its probability is at least this (default 1: never). */
  publicConfidence?: number;
  /** Responses per prompt (default 1). */
  samples?: number;
  /** Tokens per response at most (default 48). */
  maxNewTokens?: number;
  /** Default 0. */
  seed?: number;
  /** Queries decoded in lockstep (default 16). */
  batchSize?: number;
}

export interface ReleasedSequence {
  /** Index of the prompt and of the sample. */
  prompt: number;
  sample: number;
  /** The released tokens (the stop token excluded). */
  ids: Int32Array;
  /** Ended with a stop token (false: cut by ⊥, the token limit or the budget). */
  complete: boolean;
  /** Tokens released by the private aggregator, taken from the public model, and ⊥ outcomes. */
  privateTokens: number;
  publicTokens: number;
  abstains: number;
}

export interface PateStats {
  /** Teacher queries run (each charged), answered, and abstained. */
  queries: number;
  answered: number;
  abstained: number;
  /** Tokens released from the public model (confident, or fallback after ⊥). */
  publicTokens: number;
  /** Mean top vote count (of n) over the queries. */
  meanTopVotes: number;
  /** Fraction of answered queries where the released token had the most votes. */
  topAgreement: number;
}

export interface PateResult {
  sequences: ReleasedSequence[];
  stats: PateStats;
  /** The budget ran out: generation stopped before the next query. */
  stoppedByBudget: boolean;
  /** The signal stopped generation between batches. */
  interrupted: boolean;
  /** The accountant's report (null for a non-private run: σ₁ = σ₂ = 0). */
  privacy: Record<string, unknown> | null;
}

export interface PateRunOptions {
  /** Public model (same vocabulary): fallback and confident-token source. */
  publicModel?: Model;
  /** The budget; required unless σ₁ = σ₂ = 0. */
  accountant?: GaussianAccountant;
  onProgress?: (done: number, total: number) => void;
  /** Names of the teachers (then the public model) for error messages, e.g. their directories. */
  names?: readonly string[];
  /** Checked between batches: once aborted, the remaining responses are returned empty (result.interrupted). */
  signal?: AbortSignal;
}

function checkConfig(cfg: PateConfig): Required<PateConfig> {
  const c: Required<PateConfig> = {
    temperature: 1, onAbstain: 'stop', retries: 3, publicConfidence: 1, samples: 1, maxNewTokens: 48, seed: 0, batchSize: 16, ...cfg,
  };
  if (!VOTE_SCHEMES.includes(c.scheme)) throw new Err(`unknown vote scheme "${c.scheme}"`, `choose from ${VOTE_SCHEMES.join(', ')}`);
  if (!ABSTAIN_POLICIES.includes(c.onAbstain)) throw new Err(`unknown abstain policy "${c.onAbstain}"`, `choose from ${ABSTAIN_POLICIES.join(', ')}`);
  if (!(c.temperature > 0)) throw new Err(`temperature must be > 0, got ${c.temperature}`);
  if (!(c.sigma >= 0) || !(c.thresholdSigma >= 0)) throw new Err(`noise scales must be ≥ 0, got σ=${c.sigma}, threshold σ=${c.thresholdSigma}`);
  if (!Number.isFinite(c.threshold)) throw new Err(`threshold must be a number, got ${c.threshold}`);
  for (const [k, v] of [['samples', c.samples], ['maxNewTokens', c.maxNewTokens], ['batchSize', c.batchSize]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Err(`${k} must be an integer ≥ 1, got ${v}`);
  }
  if (!Number.isInteger(c.retries) || c.retries < 0) throw new Err(`retries must be an integer ≥ 0, got ${c.retries}`);
  if (!(c.publicConfidence > 0 && c.publicConfidence <= 1)) throw new Err(`publicConfidence must be in (0, 1], got ${c.publicConfidence}`);
  return c;
}

/** Teachers (and the public model) must share one vocabulary and stop tokens. */
export function checkEnsemble(teachers: readonly Model[], publicModel?: Model, names?: readonly string[]): void {
  if (teachers.length < 1) throw new Err('Hot PATE needs at least one teacher');
  const V = teachers[0].config.vocabSize;
  const stops = teachers[0].stopTokenIds().join(',');
  const all = publicModel ? [...teachers, publicModel] : [...teachers];
  all.forEach((m, i) => {
    const name = names?.[i] ?? (i < teachers.length ? `teacher ${i}` : 'the public model');
    if (m.config.vocabSize !== V) throw new Err(`${name}: vocabulary size ${m.config.vocabSize} differs from the first teacher's ${V}`, 'teachers and the public model must share one tokenizer');
    if (m.stopTokenIds().join(',') !== stops) throw new Err(`${name}: stop tokens [${m.stopTokenIds()}] differ from the first teacher's [${stops}]`);
  });
}

/**
 * Generate `samples` private responses to every prompt (token ids, BOS included) with the teacher ensemble
 * (see the module comment). Responses are returned in (prompt, sample) order; once the budget is spent the
 * remaining ones are returned empty and incomplete.
 */
export async function pateGenerate(teachers: Model[], prompts: readonly Int32Array[], config: PateConfig, opts: PateRunOptions = {}): Promise<PateResult> {
  const c = checkConfig(config);
  const pub = opts.publicModel;
  checkEnsemble(teachers, pub, opts.names);
  if ((c.onAbstain === 'public' || c.publicConfidence < 1) && !pub) throw new Err(`${c.onAbstain === 'public' ? 'onAbstain "public"' : 'publicConfidence < 1'} needs a public model`);
  const nonPrivate = c.sigma === 0 && c.thresholdSigma === 0;
  const acc = opts.accountant;
  if (!nonPrivate && !acc) throw new Err('a private run (σ > 0) needs an accountant with the (ε, δ) budget');
  if (!nonPrivate && c.sigma === 0) throw new Err('σ = 0 with a threshold check releases the exact argmax: not private', 'give σ > 0, or σ = σ₁ = 0 for a non-private reference run');
  const cost = queryCosts(c);
  const n = teachers.length;
  const V = teachers[0].config.vocabSize;
  const stop = new Set(teachers[0].stopTokenIds());
  const models = pub ? [...teachers, pub] : teachers;
  // one KV cache per distinct model object (the same model may be passed twice)
  const unique = [...new Set(models)];
  const slot = models.map((m) => unique.indexOf(m));
  const stepAll = async (ids: Int32Array, T: number) => {
    const r: Float32Array[] = [];
    for (const m of unique) r.push(await m.native.cacheStep(ids, T)); // one at a time: each uses every core
    return slot.map((k) => r[k]);
  };
  const maxPos = Math.min(...models.map((m) => m.config.maxPositions));

  const Q = prompts.length * c.samples;
  const sequences: ReleasedSequence[] = new Array(Q);
  const stats = { queries: 0, answered: 0, abstained: 0, publicTokens: 0, topVotes: 0, topAgree: 0 };
  let stoppedByBudget = false;
  let interrupted = false;
  // group queries by prompt length so a batch shares positions
  const groups = new Map<number, number[]>();
  for (let q = 0; q < Q; q++) {
    const p = prompts[Math.floor(q / c.samples)];
    if (p.length === 0) throw new Err(`prompt ${Math.floor(q / c.samples)} is empty`);
    const g = groups.get(p.length) ?? [];
    g.push(q);
    groups.set(p.length, g);
  }
  let finished = 0;
  const logitsAll = new Float32Array(n * V);
  for (const [len, members] of groups) {
    const positions = len + c.maxNewTokens - 1;
    if (positions > maxPos) throw new Err(`prompt length ${len} + ${c.maxNewTokens} new tokens exceeds max_position_embeddings (${maxPos})`);
    for (let s = 0; s < members.length; s += c.batchSize) {
      const rows = members.slice(s, s + c.batchSize);
      const B = rows.length;
      const gen: number[][] = rows.map(() => []);
      if (opts.signal?.aborted) interrupted = true;
      const info = rows.map(() => ({ priv: 0, pub: 0, abst: 0, complete: false, done: stoppedByBudget || interrupted }));
      if (!stoppedByBudget && !interrupted) {
        const ids = new Int32Array(B * len);
        rows.forEach((q, b) => ids.set(prompts[Math.floor(q / c.samples)], b * len));
        for (const m of unique) m.native.cacheBegin(B, positions);
        let outs = await stepAll(ids, len);
        for (let t = 0; t < c.maxNewTokens; t++) {
          const next = new Int32Array(B);
          for (let b = 0; b < B; b++) {
            const st = info[b];
            if (st.done || stoppedByBudget) { st.done = true; next[b] = 0; continue; }
            const q = rows[b];
            const pubLogits = pub ? outs[n].subarray(b * V, (b + 1) * V) : null;
            let tok: number | null = null;
            if (pubLogits && c.publicConfidence < 1) {
              const { arg, prob } = topProb(pubLogits);
              if (prob >= c.publicConfidence) { tok = arg; st.pub++; stats.publicTokens++; }
            }
            const tries = c.onAbstain === 'resample' ? 1 + c.retries : 1;
            if (tok === null) for (let i = 0; i < n; i++) logitsAll.set(outs[i].subarray(b * V, (b + 1) * V), i * V);
            for (let a = 0; tok === null && a < tries; a++) {
              if (!nonPrivate && !acc!.fits(cost.threshold + cost.argmax)) { stoppedByBudget = true; break; }
              const key = [c.seed, q, t, a] as const;
              const shared = c.scheme === 'hot' ? sharedGumbels(V, new Rng(mixSeeds(...key, 'pate-shared'))) : null;
              const votes = castVotes(c.scheme, logitsAll, n, V, c.temperature, shared, (i) => new Rng(mixSeeds(...key, 'pate-teacher', i)));
              const counts = voteHistogram(votes, V);
              let top = 0;
              for (let j = 0; j < V; j++) if (counts[j] > top) top = counts[j];
              const r = aggregateVotes(counts, c, new Rng(mixSeeds(...key, 'pate-noise')));
              stats.queries++;
              stats.topVotes += top;
              if (!nonPrivate) {
                if (cost.threshold > 0) acc!.charge(cost.threshold, 'threshold');
                if (r.passed) acc!.charge(cost.argmax, 'argmax');
              }
              if (r.token === null) { stats.abstained++; st.abst++; continue; }
              stats.answered++;
              if (counts[r.token] === top) stats.topAgree++;
              tok = r.token;
              st.priv++;
            }
            if (stoppedByBudget) { st.done = true; next[b] = 0; continue; }
            if (tok === null && c.onAbstain === 'public') {
              tok = sampleToken(pubLogits!, { temperature: c.temperature }, new Rng(mixSeeds(c.seed, q, t, 'pate-public')));
              st.pub++;
              stats.publicTokens++;
            }
            if (tok === null) { st.done = true; next[b] = 0; continue; }
            if (stop.has(tok)) { st.done = true; st.complete = true; next[b] = 0; continue; }
            gen[b].push(tok);
            next[b] = tok;
          }
          if (info.every((x) => x.done) || t === c.maxNewTokens - 1) break;
          outs = await stepAll(next, 1);
        }
      }
      rows.forEach((q, b) => {
        sequences[q] = {
          prompt: Math.floor(q / c.samples), sample: q % c.samples, ids: Int32Array.from(gen[b]), complete: info[b].complete,
          privateTokens: info[b].priv, publicTokens: info[b].pub, abstains: info[b].abst,
        };
      });
      finished += B;
      opts.onProgress?.(finished, Q);
    }
  }
  return {
    sequences,
    stats: {
      queries: stats.queries, answered: stats.answered, abstained: stats.abstained, publicTokens: stats.publicTokens,
      meanTopVotes: stats.queries ? stats.topVotes / stats.queries : NaN, topAgreement: stats.answered ? stats.topAgree / stats.answered : NaN,
    },
    stoppedByBudget,
    interrupted,
    privacy: nonPrivate ? null : acc!.report(),
  };
}

function topProb(logits: Float32Array): { arg: number; prob: number } {
  let m = -Infinity;
  let arg = 0;
  for (let j = 0; j < logits.length; j++) if (logits[j] > m) { m = logits[j]; arg = j; }
  let z = 0;
  for (let j = 0; j < logits.length; j++) z += Math.exp(logits[j] - m);
  return { arg, prob: 1 / z };
}

// ---------------------------------------------------------------------------------------------
// Teachers on disjoint partitions
// ---------------------------------------------------------------------------------------------

/** Split documents into n disjoint parts of sizes differing by at most one (shuffled by seed, then dealt round-robin). */
export function partitionDocuments<T>(docs: readonly T[], n: number, seed: number): T[][] {
  if (!Number.isInteger(n) || n < 1) throw new Err(`the number of partitions must be an integer ≥ 1, got ${n}`);
  if (docs.length < n) throw new Err(`${docs.length} documents cannot fill ${n} partitions`, 'give more data or fewer teachers');
  const order = new Rng(mixSeeds(seed, 'pate-partition')).permutation(docs.length);
  const parts: T[][] = Array.from({ length: n }, () => []);
  for (let k = 0; k < order.length; k++) parts[k % n].push(docs[order[k]]);
  return parts;
}

export interface TrainTeachersOptions {
  /** A model directory each teacher starts from (fine-tuning), or a function making a fresh model. */
  base: string | ((teacher: number) => Model);
  docs: readonly Document[];
  teachers: number;
  out: string;
  seqLen: number;
  batchSize: number;
  cfg: TrainConfig;
  seed: number;
  /** Shown in partitions.json (e.g. the data spec). */
  dataName?: string;
  onTeacher?: (i: number, n: number, skipped: boolean) => void;
  trainHooks?: (i: number) => Pick<TrainOptions, 'onStep' | 'onEval' | 'onProgress' | 'signal'>;
}

export const PARTITIONS_FILE = 'partitions.json';
export const teacherDirName = (i: number) => `teacher-${String(i).padStart(3, '0')}`;

/**
 * Partition the documents and train one teacher per part into out/teacher-NNN (atomic saves); the manifest
 * out/partitions.json records each part's size and each finished teacher, so a rerun with the same
 * arguments skips finished teachers (resumable).
 */
export async function trainTeachers(o: TrainTeachersOptions): Promise<{ dirs: string[]; sizes: number[] }> {
  const parts = partitionDocuments(o.docs, o.teachers, o.seed);
  fs.mkdirSync(o.out, { recursive: true });
  const manifestPath = path.join(o.out, PARTITIONS_FILE);
  const identity = { teachers: o.teachers, seed: o.seed, data: o.dataName ?? null, documents: o.docs.length, base: typeof o.base === 'string' ? path.resolve(o.base) : null };
  let done: string[] = [];
  if (fs.existsSync(manifestPath)) {
    const m = readJson<{ identity?: unknown; finished?: string[] }>(manifestPath, 'teacher partitions manifest');
    if (JSON.stringify(m.identity) !== JSON.stringify(identity)) {
      throw new Err(`${manifestPath} belongs to another partitioning (${JSON.stringify(m.identity)})`, 'use a new --out directory');
    }
    done = m.finished ?? [];
  }
  const sizes = parts.map((p) => p.length);
  const dirs: string[] = [];
  for (let i = 0; i < parts.length; i++) {
    const name = teacherDirName(i);
    const dir = path.join(o.out, name);
    dirs.push(dir);
    if (done.includes(name) && fs.existsSync(path.join(dir, 'config.json'))) { o.onTeacher?.(i, parts.length, true); continue; }
    o.onTeacher?.(i, parts.length, false);
    const model = typeof o.base === 'string' ? Model.load(o.base) : o.base(i);
    const seed = mixSeeds(o.seed, 'teacher', i);
    const data = packDocuments(model.tokenizer, parts[i], o.seqLen, { seed });
    if (data.count === 0) throw new Err(`partition ${i} (${parts[i].length} documents) holds less than one window of ${o.seqLen + 1} tokens`, 'lower --seq-len or give more data');
    const batcher = new Batcher(data, { batchSize: o.batchSize, seed });
    const r: TrainResult = await train(model, batcher, o.cfg, { outDir: dir, meta: { kind: 'pate-teacher', teacher: i, of: parts.length, documents: parts[i].length }, ...o.trainHooks?.(i) });
    if (r.interrupted) throw new Err(`interrupted while training ${name}; rerun the same command to continue with the unfinished teachers`);
    done = [...done.filter((d) => d !== name), name];
    writeJsonAtomic(manifestPath, { identity, sizes, finished: done });
  }
  writeJsonAtomic(manifestPath, { identity, sizes, finished: done });
  return { dirs, sizes };
}

/** Teacher directories: each argument is a model directory, or a directory of teacher-NNN model directories. */
export function resolveTeacherDirs(args: readonly string[]): string[] {
  const out: string[] = [];
  for (const a of args) {
    if (fs.existsSync(path.join(a, 'config.json'))) { out.push(a); continue; }
    if (!fs.existsSync(a) || !fs.statSync(a).isDirectory()) throw new Err(`--teachers ${a}: not a directory`);
    const subs = fs.readdirSync(a).filter((d) => /^teacher-\d+$/.test(d) && fs.existsSync(path.join(a, d, 'config.json'))).sort();
    if (!subs.length) throw new Err(`--teachers ${a}: neither a model directory (config.json) nor a directory of teacher-NNN models`);
    out.push(...subs.map((d) => path.join(a, d)));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Student
// ---------------------------------------------------------------------------------------------

/**
 * The released responses as training documents: the prompt's ids, the released ids and (for a complete
 * response) the stop token, with the loss on the response and its stop token only.
 */
export function releasedDocuments(model: Model, prompts: readonly Int32Array[], seqs: readonly ReleasedSequence[], includeIncomplete = false): TokenDocument[] {
  const docs: TokenDocument[] = [];
  const eos = model.stopTokenIds()[0];
  for (const s of seqs) {
    if (!s.complete && !(includeIncomplete && s.ids.length)) continue;
    const p = prompts[s.prompt];
    const tail = s.complete && eos !== undefined ? 1 : 0;
    const ids = new Int32Array(p.length + s.ids.length + tail);
    ids.set(p, 0);
    ids.set(s.ids, p.length);
    if (tail) ids[ids.length - 1] = eos;
    const loss = new Uint8Array(ids.length);
    loss.fill(1, p.length);
    docs.push({ ids, loss, text: model.tokenizer.decode(ids, { skipSpecial: true }) });
  }
  return docs;
}

/** Train the student on the released documents (cross-entropy on the completions). */
export async function trainOnReleased(student: Model, docs: readonly Document[], cfg: TrainConfig, o: { seqLen: number; batchSize: number; seed: number; outDir?: string } & Pick<TrainOptions, 'onStep' | 'onEval' | 'evaluate' | 'onProgress' | 'signal'>): Promise<TrainResult> {
  if (!docs.length) throw new Err('no released response to train the student on', 'raise the privacy budget, lower the noise or the threshold, or allow incomplete responses');
  const data = packDocuments(student.tokenizer, docs, o.seqLen, { seed: o.seed });
  if (data.count === 0) throw new Err(`the released data holds less than one window of ${o.seqLen + 1} tokens`, 'lower --seq-len');
  const batcher = new Batcher(data, { batchSize: o.batchSize, seed: o.seed });
  return train(student, batcher, cfg, { outDir: o.outDir, meta: { kind: 'pate-student', documents: docs.length }, onStep: o.onStep, onEval: o.onEval, evaluate: o.evaluate, onProgress: o.onProgress, signal: o.signal });
}
