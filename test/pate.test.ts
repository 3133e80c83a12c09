/**
 * Hot PATE: the privacy accountant against closed forms and an independent numerical reference, the
 * coordinated vote histogram and the aggregator's output distribution against a direct simulation and the
 * exact agreement probabilities, generation (same seed, same released data; the budget stop), partitions,
 * teacher training and the CLI.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { epsilonOf, gaussianRdp, gdpDelta, gdpEpsilon, GaussianAccountant, logNormalCdf, normalQuantile, rdpToDp } from '../lib/distill/privacy';
import {
  aggregateVotes, castVotes, partitionDocuments, pateGenerate, queryCosts, releasedDocuments, sharedGumbels, trainTeachers, voteHistogram,
} from '../lib/distill/pate';
import { generateIds } from '../lib/models/generate';
import { Model } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import { ROOT, throwsUndo, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-pate-'));

// ---------------------------------------------------------------------------------------------
// Accountant
// ---------------------------------------------------------------------------------------------

/** Φ by Simpson integration of the normal density (an independent reference for the GDP profile). */
function phiRef(x: number): number {
  const a = Math.min(x, 0) - 40;
  const n = 200000;
  const h = (x - a) / n;
  const f = (t: number) => Math.exp(-t * t / 2) / Math.sqrt(2 * Math.PI);
  let s = f(a) + f(x);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * f(a + i * h);
  return (s * h) / 3;
}

test('accountant: RDP of composed Gaussian mechanisms is α·Σ Δ²/(2σ²), and the conversions match brute-force minimisation over α', () => {
  const acc = new GaussianAccountant({ epsilon: 1e9, delta: 1e-5 });
  for (let k = 0; k < 30; k++) acc.charge(GaussianAccountant.rhoOf(4, 1));
  for (let k = 0; k < 20; k++) acc.charge(GaussianAccountant.rhoOf(6, Math.SQRT2));
  for (const alpha of [1.5, 2, 8, 32]) {
    const expect = 30 * gaussianRdp(alpha, 4, 1) + 20 * gaussianRdp(alpha, 6, Math.SQRT2);
    assert.ok(Math.abs(acc.rdp(alpha) - expect) < 1e-12, `rdp(${alpha})`);
    assert.ok(Math.abs(expect - alpha * (30 / 32 + 20 * 2 / 72)) < 1e-12);
  }
  for (const [rho, delta] of [[0.01, 1e-5], [0.5, 1e-6], [3, 1e-5], [40, 1e-8]]) {
    let bestC = Infinity;
    let bestI = Infinity;
    for (let x = -9; x <= 12; x += 1e-4) {
      const a = 1 + Math.exp(x);
      bestC = Math.min(bestC, a * rho + Math.log(1 / delta) / (a - 1));
      bestI = Math.min(bestI, a * rho + Math.log1p(-1 / a) - (Math.log(delta) + Math.log(a)) / (a - 1));
    }
    const classic = rdpToDp(rho, delta, 'rdp-classic').epsilon;
    const improved = rdpToDp(rho, delta, 'rdp').epsilon;
    assert.ok(Math.abs(classic - bestC) < 1e-6 * bestC, `classic ρ=${rho}: ${classic} vs ${bestC}`);
    assert.ok(Math.abs(classic - (rho + 2 * Math.sqrt(rho * Math.log(1 / delta)))) < 1e-9 * classic);
    assert.ok(Math.abs(improved - bestI) < 1e-6 * bestI, `improved ρ=${rho}: ${improved} vs ${bestI}`);
    const gdp = epsilonOf(rho, delta, 'gdp');
    assert.ok(gdp < improved && improved < classic, `ordering at ρ=${rho}: gdp ${gdp} < rdp ${improved} < classic ${classic}`);
    assert.ok(improved < 1.5 * gdp + 0.5, `RDP is not far above the exact value (${improved} vs ${gdp})`);
  }
});

test('accountant: the Gaussian-DP profile matches numerical integration, and the textbook Gaussian mechanism is within its ε', () => {
  for (const [mu, eps] of [[0.5, 0.3], [1, 1], [2, 3], [3, 6]]) {
    const ref = phiRef(mu / 2 - eps / mu) - Math.exp(eps) * phiRef(-mu / 2 - eps / mu);
    const got = gdpDelta(mu, eps);
    assert.ok(Math.abs(got - ref) < 2e-6 * ref, `δ(μ=${mu}, ε=${eps}) = ${got}, reference ${ref}`);
    const e = gdpEpsilon(mu, ref);
    assert.ok(Math.abs(e - eps) < 1e-4, `ε back from δ: ${e} vs ${eps}`);
  }
  // Dwork & Roth Thm A.1: σ = √(2 ln(1.25/δ))/ε gives (ε, δ)-DP for ε < 1, so the exact ε is no larger
  for (const [eps, delta] of [[0.5, 1e-5], [0.9, 1e-6]]) {
    const sigma = Math.sqrt(2 * Math.log(1.25 / delta)) / eps;
    const exact = gdpEpsilon(1 / sigma, delta);
    assert.ok(exact <= eps && exact > 0.5 * eps, `exact ${exact} vs textbook ${eps}`);
  }
});

test('accountant: the budget refuses the charge that would overshoot; remaining() counts exactly the charges that fit', () => {
  const acc = new GaussianAccountant({ epsilon: 2, delta: 1e-5 });
  const rho = GaussianAccountant.rhoOf(20, Math.SQRT2);
  const k = acc.remaining(rho);
  assert.ok(k > 10 && k < 10000, `remaining ${k}`);
  for (let i = 0; i < k; i++) assert.ok(acc.tryCharge(rho, 'argmax'), `charge ${i} fits`);
  assert.not.ok(acc.tryCharge(rho, 'argmax'));
  assert.ok(acc.epsilon() <= 2 && epsilonOf(acc.rho + rho, 1e-5) > 2);
  assert.is((acc.report().charges as Record<string, number>).argmax, k);
  throwsUndo(() => new GaussianAccountant({ epsilon: 1, delta: 2 }), 'δ must be in (0, 1)');
  throwsUndo(() => new GaussianAccountant({ epsilon: 0, delta: 1e-5 }), 'ε must be > 0');
  throwsUndo(() => new GaussianAccountant({ epsilon: 1, delta: 1e-5, conversion: 'zcdp' as never }), 'unknown privacy conversion');
});

// ---------------------------------------------------------------------------------------------
// Votes and aggregation
// ---------------------------------------------------------------------------------------------

const P = [
  [0.5, 0.3, 0.1, 0.1, 0],
  [0.4, 0.2, 0.2, 0.1, 0.1],
  [0.3, 0.4, 0.1, 0.1, 0.1],
];
const logitsOf = (ps: number[][]) => Float64Array.from(ps.flat().map((p) => (p > 0 ? Math.log(p) : -Infinity)));

/** The exponential race of Algorithm 1 written out directly: uⱼ = −ln U, teacher i votes argminⱼ uⱼ/pⱼ⁽ⁱ⁾. */
function directVotes(ps: number[][], rng: Rng): number[] {
  const u = ps[0].map(() => -Math.log(1 - rng.next()));
  return ps.map((p) => {
    let best = Infinity;
    let arg = -1;
    p.forEach((pj, j) => { if (pj > 0 && u[j] / pj < best) { best = u[j] / pj; arg = j; } });
    return arg;
  });
}

test('hot votes: each teacher\'s vote is distributed as its p, agreement is the probability-Jaccard similarity, unanimity has the exact probability, and the histogram matches a direct simulation', () => {
  const n = P.length;
  const V = P[0].length;
  const N = 60000;
  const lg = logitsOf(P);
  const rng = new Rng(11);
  const ref = new Rng(12);
  const marg = P.map(() => new Array(V).fill(0));
  let agree01 = 0;
  const unanimous = new Array(V).fill(0);
  const topHist = new Array(n + 1).fill(0);
  const topHistRef = new Array(n + 1).fill(0);
  for (let t = 0; t < N; t++) {
    const votes = castVotes('hot', lg, n, V, 1, sharedGumbels(V, rng));
    votes.forEach((v, i) => marg[i][v]++);
    if (votes[0] === votes[1]) agree01++;
    if (votes.every((v) => v === votes[0])) unanimous[votes[0]]++;
    topHist[Math.max(...voteHistogram(votes, V))]++;
    topHistRef[Math.max(...voteHistogram(directVotes(P, ref), V))]++;
  }
  const near = (got: number, p: number, what: string) => {
    const se = Math.sqrt(p * (1 - p) / N);
    assert.ok(Math.abs(got / N - p) < 4.5 * se + 1e-9, `${what}: ${got / N} vs ${p} (±${se.toFixed(4)})`);
  };
  P.forEach((p, i) => p.forEach((pj, j) => near(marg[i][j], pj, `teacher ${i} token ${j}`)));
  // Pr[y₀ = y₁] = Σⱼ 1/Σₖ max(pₖ/pⱼ, qₖ/qⱼ), the probability-Jaccard similarity (Moulton & Jiang 2018),
  // which is at least the weighted Jaccard Σ min/Σ max
  const pj = P[0].reduce((s, p0, j) => s + (p0 > 0 && P[1][j] > 0 ? 1 / P[0].reduce((t, _, k) => t + Math.max(P[0][k] / p0, P[1][k] / P[1][j]), 0) : 0), 0);
  const wj = P[0].reduce((s, _, j) => s + Math.min(P[0][j], P[1][j]), 0) / P[0].reduce((s, _, j) => s + Math.max(P[0][j], P[1][j]), 0);
  near(agree01, pj, 'agreement of teachers 0 and 1');
  assert.ok(pj > wj + 0.05, `P-Jaccard ${pj} above weighted Jaccard ${wj}`);
  for (let j = 0; j < V; j++) {
    const exact = P.every((p) => p[j] > 0) ? 1 / P[0].reduce((s, _, k) => s + Math.max(...P.map((p) => p[k] / p[j])), 0) : 0;
    near(unanimous[j], exact, `all teachers vote ${j}`);
  }
  for (let m = 1; m <= n; m++) near(topHist[m], topHistRef[m] / N, `top count ${m} vs direct simulation`);
  // independent sampling agrees only as often as Σ pq, well below the coordinated rate
  let indAgree = 0;
  for (let t = 0; t < N; t++) {
    const v = castVotes('independent', lg, n, V, 1, null, (i) => new Rng(t * 7 + i + 1e6));
    if (v[0] === v[1]) indAgree++;
  }
  near(indAgree, P[0].reduce((s, p, j) => s + p * P[1][j], 0), 'independent agreement');
  assert.equal(Array.from(castVotes('cold', lg, n, V, 1, null)), [0, 0, 1]);
});

test('normal quantile inverts Φ across the range, far upper tail included', () => {
  for (let x = -12; x <= 5; x += 0.25) {
    const lp = logNormalCdf(x);
    assert.ok(Math.abs(normalQuantile(Math.exp(lp)) - x) < 1e-6 * Math.max(1, Math.abs(x)), `Φ⁻¹(Φ(${x})) = ${normalQuantile(Math.exp(lp))}`);
    if (x > 0) assert.ok(Math.abs(normalQuantile(Math.exp(logNormalCdf(-x)), true) - x) < 1e-6 * x, `upper tail at ${x}`);
  }
  for (const x of [6, 8, 12]) assert.ok(Math.abs(normalQuantile(Math.exp(logNormalCdf(-x)), true) - x) < 1e-6 * x, `upper tail at ${x}`);
});

test('aggregator over a large vocabulary (most tokens without votes): the max-of-the-rest draw has the distribution of noising every count', () => {
  const V = 300;
  const counts = new Int32Array(V);
  counts[7] = 4; counts[100] = 3; counts[250] = 1;
  const cfg = { sigma: 1.6, thresholdSigma: 0, threshold: 0 };
  const N = 30000;
  const rng = new Rng(21);
  const ref = new Rng(22);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - ref.next())) * Math.cos(2 * Math.PI * ref.next());
  const got = { 7: 0, 100: 0, 250: 0, other: 0 } as Record<string, number>;
  const want = { 7: 0, 100: 0, 250: 0, other: 0 } as Record<string, number>;
  const otherSeen = new Set<number>();
  for (let t = 0; t < N; t++) {
    const tok = aggregateVotes(counts, cfg, rng).token!;
    const k = tok === 7 || tok === 100 || tok === 250 ? String(tok) : 'other';
    got[k]++;
    if (k === 'other') otherSeen.add(tok);
    let best = -Infinity;
    let arg = 0;
    for (let j = 0; j < V; j++) { const sc = counts[j] + cfg.sigma * gauss(); if (sc > best) { best = sc; arg = j; } }
    want[arg === 7 || arg === 100 || arg === 250 ? String(arg) : 'other']++;
  }
  for (const k of Object.keys(got)) {
    const p = (got[k] + want[k]) / (2 * N);
    const se = Math.sqrt(2 * p * (1 - p) / N);
    assert.ok(Math.abs(got[k] - want[k]) / N < 4.5 * se + 1e-9, `${k}: ${got[k] / N} vs ${want[k] / N}`);
  }
  assert.ok(got.other > 0.2 * N && otherSeen.size > 200, `tokens without votes win often, and any of them can (${got.other}, ${otherSeen.size} distinct)`);
});

test('aggregator: the released-token distribution (threshold, noisy argmax, ⊥) matches a direct simulation of Confident-GNMax', () => {
  const ps = [...Array(12)].map((_, i) => (i < 8 ? P[0] : i < 10 ? P[1] : P[2]));
  const n = ps.length;
  const V = ps[0].length;
  const cfg = { sigma: 1.5, thresholdSigma: 2, threshold: 7 };
  const N = 40000;
  const lg = logitsOf(ps);
  const got = new Array(V + 1).fill(0);
  const want = new Array(V + 1).fill(0);
  const rng = new Rng(5);
  const noise = new Rng(6);
  const ref = new Rng(7);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - ref.next())) * Math.cos(2 * Math.PI * ref.next());
  for (let t = 0; t < N; t++) {
    const c = voteHistogram(castVotes('hot', lg, n, V, 1, sharedGumbels(V, rng)), V);
    const r = aggregateVotes(c, cfg, noise);
    got[r.token === null ? V : r.token]++;
    const cr = voteHistogram(directVotes(ps, ref), V);
    if (Math.max(...cr) + cfg.thresholdSigma * gauss() < cfg.threshold) { want[V]++; continue; }
    let best = -Infinity;
    let arg = 0;
    cr.forEach((cj, j) => { const s = cj + cfg.sigma * gauss(); if (s > best) { best = s; arg = j; } });
    want[arg]++;
  }
  for (let j = 0; j <= V; j++) {
    const p = (got[j] + want[j]) / (2 * N);
    const se = Math.sqrt(2 * p * (1 - p) / N);
    assert.ok(Math.abs(got[j] - want[j]) / N < 4.5 * se + 1e-9, `${j === V ? '⊥' : `token ${j}`}: ${got[j] / N} vs ${want[j] / N}`);
  }
  assert.ok(got[V] > 0.05 * N && got[0] > 0.3 * N, `both outcomes occur (⊥ ${got[V]}, token 0 ${got[0]})`);
  const c = queryCosts(cfg);
  assert.ok(Math.abs(c.threshold - 1 / 8) < 1e-12 && Math.abs(c.argmax - 1 / 2.25) < 1e-12);
});

// ---------------------------------------------------------------------------------------------
// Generation, partitions, teachers
// ---------------------------------------------------------------------------------------------

function tinyTeachers(k: number, seed0: number): Model[] {
  return [...Array(k)].map((_, i) => Model.create(tinyConfig('llama', { hiddenSize: 32, numHeads: 2, numKvHeads: 1, headDim: 16, numLayers: 2 }), { seed: seed0 + (i % 3), std: 0.4 }));
}

test('pateGenerate: same seed, same released data (any batch size); the budget stops it with ε within budget; identical cold teachers without noise decode greedily', async () => {
  const teachers = tinyTeachers(6, 40);
  const tok = teachers[0].tokenizer;
  const prompts = ['ab', 'hello', 'xy'].map((s) => tok.encode(s, { bos: true }));
  const cfg = { scheme: 'hot' as const, sigma: 1, thresholdSigma: 1.5, threshold: 2, samples: 3, maxNewTokens: 12, seed: 9, onAbstain: 'resample' as const, retries: 1 };
  const run = (batchSize: number, seed = 9, epsilon = 1e6) => pateGenerate(teachers, prompts, { ...cfg, batchSize, seed }, { accountant: new GaussianAccountant({ epsilon, delta: 1e-5 }) });
  const a = await run(16);
  const b = await run(2);
  const key = (r: typeof a) => r.sequences.map((s) => `${s.prompt}.${s.sample}:${Array.from(s.ids)}|${s.complete}|${s.abstains}`).join(' ');
  assert.is(key(a), key(b));
  assert.is.not(key(a), key(await run(16, 10)));
  assert.is(a.sequences.length, 9);
  assert.ok(a.stats.queries > 20 && a.stats.answered > 0);
  const charges = a.privacy!.charges as Record<string, number>;
  assert.is(charges.threshold, a.stats.queries);
  assert.is(charges.argmax, a.stats.answered);
  assert.is(a.stats.queries, a.stats.answered + a.stats.abstained);
  // a small budget: stops before the query that would overshoot
  const small = await run(4, 9, 3);
  assert.ok(small.stoppedByBudget);
  const eps = small.privacy!.epsilon as number;
  assert.ok(eps <= 3 && epsilonOf((small.privacy!.rho as number) + queryCosts(cfg).threshold + queryCosts(cfg).argmax, 1e-5) > 3, `ε ${eps}`);
  assert.ok(small.stats.queries < a.stats.queries);

  const same = [teachers[0], teachers[0], teachers[0]];
  const cold = await pateGenerate(same, prompts, { scheme: 'cold', sigma: 0, thresholdSigma: 0, threshold: 0, maxNewTokens: 10 });
  const greedy = await generateIds(teachers[0], prompts, { maxNewTokens: 10 });
  cold.sequences.forEach((s, i) => assert.equal(Array.from(s.ids), Array.from(greedy[i]), `prompt ${i}`));
  assert.is(cold.stats.meanTopVotes, 3);
  assert.is(cold.privacy, null);
  const hot = await pateGenerate(same, prompts, { scheme: 'hot', sigma: 0, thresholdSigma: 0, threshold: 0, maxNewTokens: 10, samples: 2 });
  assert.is(hot.stats.meanTopVotes, 3, 'identical teachers always agree under coordinated sampling');

  // every query abstains (T far above n): the public model supplies every token, and only threshold checks are charged
  const pubModel = teachers[5];
  const fallback = await pateGenerate(teachers.slice(0, 4), prompts, { scheme: 'hot', sigma: 1, thresholdSigma: 1, threshold: 1000, onAbstain: 'public', maxNewTokens: 8 },
    { publicModel: pubModel, accountant: new GaussianAccountant({ epsilon: 1e6, delta: 1e-5 }) });
  for (const s of fallback.sequences) {
    assert.is(s.privateTokens, 0);
    assert.is(s.publicTokens, s.ids.length + (s.complete ? 1 : 0));
    assert.is(s.abstains, s.publicTokens);
  }
  assert.is((fallback.privacy!.charges as Record<string, number>).argmax, undefined);
  // the public model is "confident" everywhere: no query at all, and its greedy decode comes out
  const confident = await pateGenerate(teachers.slice(0, 4), prompts, { scheme: 'hot', sigma: 1, thresholdSigma: 1, threshold: 2, publicConfidence: 1e-9, maxNewTokens: 8 },
    { publicModel: pubModel, accountant: new GaussianAccountant({ epsilon: 1, delta: 1e-5 }) });
  const pubGreedy = await generateIds(pubModel, prompts, { maxNewTokens: 8 });
  assert.is(confident.stats.queries, 0);
  assert.is(confident.privacy!.epsilon, 0);
  confident.sequences.forEach((s, i) => assert.equal(Array.from(s.ids), Array.from(pubGreedy[i])));

  const docs = releasedDocuments(teachers[0], prompts, a.sequences, true);
  const s0 = a.sequences.find((s) => s.ids.length > 0)!;
  const d0 = docs[a.sequences.filter((s) => s.ids.length > 0 || s.complete).indexOf(s0)];
  assert.equal(Array.from(d0.ids.subarray(0, prompts[s0.prompt].length)), Array.from(prompts[s0.prompt]));
  assert.equal(Array.from(d0.loss.subarray(0, prompts[s0.prompt].length)), new Array(prompts[s0.prompt].length).fill(0));
  assert.ok(d0.loss.subarray(prompts[s0.prompt].length).every((x) => x === 1));

  let msg = '';
  try { await pateGenerate(teachers, prompts, { scheme: 'hot', sigma: 1, thresholdSigma: 0, threshold: 0 }); } catch (e) { msg = (e as Error).message; }
  assert.match(msg, 'needs an accountant');
  const other = Model.create(tinyConfig('llama', { vocabSize: 300 }), { seed: 1 });
  try { await pateGenerate([teachers[0], other], prompts, { scheme: 'hot', sigma: 0, thresholdSigma: 0, threshold: 0 }); } catch (e) { msg = (e as Error).message; }
  assert.match(msg, 'teacher 1: vocabulary size 300');
});

test('partitions are disjoint and cover the data; trainTeachers trains one teacher per part and skips finished ones on rerun', async () => {
  const docs = [...Array(103)].map((_, i) => `document number ${i} about item ${i % 7}.`);
  const parts = partitionDocuments(docs, 4, 3);
  assert.equal(parts.map((p) => p.length), [26, 26, 26, 25]);
  assert.is(new Set(parts.flat()).size, 103);
  assert.equal(partitionDocuments(docs, 4, 3), parts);
  throwsUndo(() => partitionDocuments(docs.slice(0, 2), 3, 0), '2 documents cannot fill 3 partitions');
  const out = path.join(TMP, 'teachers');
  const cfgT = { steps: 3, gradAccum: 1, lr: 1e-3, warmup: 0, schedule: 'constant' as const, weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 };
  const make = (i: number) => Model.create(tinyConfig('llama', { hiddenSize: 32, numHeads: 2, numKvHeads: 1, headDim: 16, numLayers: 1 }), { seed: i });
  const seen: string[] = [];
  const r = await trainTeachers({ base: make, docs, teachers: 3, out, seqLen: 32, batchSize: 2, cfg: cfgT, seed: 1, dataName: 'test', onTeacher: (i, _n, skip) => seen.push(`${i}${skip ? 's' : 't'}`) });
  assert.is(r.dirs.length, 3);
  for (const d of r.dirs) assert.ok(fs.existsSync(path.join(d, 'config.json')));
  await trainTeachers({ base: make, docs, teachers: 3, out, seqLen: 32, batchSize: 2, cfg: cfgT, seed: 1, dataName: 'test', onTeacher: (i, _n, skip) => seen.push(`${i}${skip ? 's' : 't'}`) });
  assert.equal(seen, ['0t', '1t', '2t', '0s', '1s', '2s']);
  let msg = '';
  try { await trainTeachers({ base: make, docs, teachers: 2, out, seqLen: 32, batchSize: 2, cfg: cfgT, seed: 1, dataName: 'test' }); } catch (e) { msg = (e as Error).message; }
  assert.match(msg, 'belongs to another partitioning');
});

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

function cli(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'undo-native.js'), ...args], { encoding: 'utf8' });
  return { status: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
}

test('CLI: pate-teachers partitions a data file and trains teachers; pate releases responses within the budget and trains the student', () => {
  const data = path.join(TMP, 'private.txt');
  fs.writeFileSync(data, [...Array(40)].map((_, i) => `Record ${i}: the colour of item ${i % 5} is ${['red', 'blue', 'green'][i % 3]}.`).join('\n\n'));
  const base = path.join(TMP, 'base');
  Model.create(tinyConfig('llama', { hiddenSize: 32, numHeads: 2, numKvHeads: 1, headDim: 16, numLayers: 1 }), { seed: 3, std: 0.3 }).save(base);
  const tdir = path.join(TMP, 'cli-teachers');
  let r = cli('pate-teachers', '--base', base, '--data', data, '--teachers', '3', '--out', tdir, '--steps', '2', '--seq-len', '32', '--batch-size', '2', '--no-progress');
  assert.is(r.status, 0, r.out);
  const prompts = path.join(TMP, 'prompts.txt');
  fs.writeFileSync(prompts, 'Record\nthe colour\n');
  const out = path.join(TMP, 'pate-out');
  r = cli('pate', '--teachers', tdir, '--prompts', prompts, '--epsilon', '30', '--delta', '1e-5', '--out', out, '--sigma', '3', '--threshold-sigma', '4',
    '--threshold', '1', '--samples', '2', '--max-new-tokens', '6', '--student', base, '--student-steps', '2', '--seq-len', '16', '--include-incomplete', '--no-progress');
  assert.is(r.status, 0, r.out);
  const privacy = JSON.parse(fs.readFileSync(path.join(out, 'privacy.json'), 'utf8'));
  assert.ok(privacy.epsilon <= 30 && privacy.epsilon > 1, JSON.stringify(privacy));
  assert.is(privacy.teachers.length, 3);
  const lines = fs.readFileSync(path.join(out, 'released.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.is(lines.length, 4);
  assert.ok(typeof lines[0].prompt === 'string' && typeof lines[0].completion === 'string');
  assert.ok(fs.existsSync(path.join(out, 'student', 'config.json')));
  assert.match(r.out, /ε = [0-9.]+ of 30/);
  // the same command again (another process, another batch size): byte-identical released data and privacy record
  const again = path.join(TMP, 'pate-again');
  r = cli('pate', '--teachers', tdir, '--prompts', prompts, '--epsilon', '30', '--delta', '1e-5', '--out', again, '--sigma', '3', '--threshold-sigma', '4',
    '--threshold', '1', '--samples', '2', '--max-new-tokens', '6', '--batch-size', '1', '--no-progress');
  assert.is(r.status, 0, r.out);
  assert.ok(fs.readFileSync(path.join(again, 'released.jsonl')).equals(fs.readFileSync(path.join(out, 'released.jsonl'))));
  assert.ok(Math.abs(JSON.parse(fs.readFileSync(path.join(again, 'privacy.json'), 'utf8')).rho - privacy.rho) < 1e-12 * privacy.rho, 'same ρ (up to the order of summation)');
  r = cli('pate', '--teachers', tdir, '--prompts', prompts, '--epsilon', '8', '--delta', '3', '--out', out);
  assert.is.not(r.status, 0);
  assert.match(r.out, '--delta');
  r = cli('pate', '--teachers', path.join(TMP, 'nope'), '--prompts', prompts, '--epsilon', '8', '--delta', '1e-5', '--out', out);
  assert.is.not(r.status, 0);
  assert.match(r.out, 'nope');
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

test.run();
