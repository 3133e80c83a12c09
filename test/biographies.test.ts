/**
 * The synthetic-biographies task: deterministic people, held-out phrasings kept out of training, queries
 * that answer correctly, the forget/retain split, ROC AUC with ties, extraction strength against stub
 * generators, and a tiny byte-level model that learns some facts and leaks membership.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Batcher, packDocuments } from '../lib/data/datasets';
import { Model, ModelConfig } from '../lib/models/model';
import {
  answerOf, ATTRIBUTES, biographyCorpus, extractionStrength, factAccuracy, factQueries, factSentences, FactQuery,
  Generator, generatePeople, HELDOUT_TEMPLATES, membershipAuc, Person, rocAuc, splitForget, TRAIN_TEMPLATES,
} from '../lib/tasks/biographies';
import { ByteTokenizer } from '../lib/data/tokenizer';
import { TrainConfig } from '../lib/train/train';

const TOK = new ByteTokenizer();
const CFG: ModelConfig = {
  family: 'llama', vocabSize: TOK.vocabSize, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16,
  intermediateSize: 192, maxPositions: 256, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: TOK.bos, eosTokenId: TOK.eos, padTokenId: TOK.pad,
};

test('generatePeople: deterministic by seed, distinct names, values in range', () => {
  const a = generatePeople({ count: 50, seed: 7 });
  assert.equal(a, generatePeople({ count: 50, seed: 7 }));
  assert.not.equal(a, generatePeople({ count: 50, seed: 8 }));
  assert.is(new Set(a.map((p) => p.name)).size, 50);
  for (const p of a) {
    assert.match(p.name, /^[A-Z][a-z]+ [A-Z][a-z]+$/);
    assert.ok(p.birthYear >= 1900 && p.birthYear <= 2000, `year ${p.birthYear}`);
  }
  assert.throws(() => generatePeople({ count: -1 }), /"count" must be a non-negative integer/);
});

test('biographyCorpus: ≥ 4 phrasings per fact, bios, and the held-out phrasing never appears', () => {
  const people = generatePeople({ count: 12, seed: 1 });
  const docs = biographyCorpus(people, { seed: 3 });
  assert.equal(docs, biographyCorpus(people, { seed: 3 }), 'deterministic');
  assert.is(docs.length, 12 * ATTRIBUTES.length * 4 + 12 * 2);
  for (const a of ATTRIBUTES) assert.ok(TRAIN_TEMPLATES[a].length >= 4 && !TRAIN_TEMPLATES[a].includes(HELDOUT_TEMPLATES[a]));
  const all = docs.join('\n');
  for (const p of people) {
    for (const a of ATTRIBUTES) {
      // every fact is stated in the corpus...
      assert.ok(all.includes(answerOf(p, a)), `${p.name} ${a}`);
    }
  }
  // ...but no held-out prompt (the text up to the answer) nor held-out sentence is in any document
  for (const q of factQueries(people)) assert.not.ok(all.includes(q.prompt.trim()), `held-out prompt in corpus: ${q.prompt}`);
  for (const s of factSentences(people, { heldOut: true })) assert.not.ok(all.includes(s));
  assert.is(biographyCorpus(people, { phrasingsPerFact: 1, biosPerPerson: 0 }).length, 12 * ATTRIBUTES.length);
  assert.throws(() => biographyCorpus(people, { phrasingsPerFact: 5 }), /phrasingsPerFact/);
});

test('factQueries: held-out prompts end right before the person\'s own answer', () => {
  const people = generatePeople({ count: 10, seed: 2 });
  const qs = factQueries(people);
  assert.is(qs.length, 10 * ATTRIBUTES.length);
  const byName = new Map(people.map((p) => [p.name, p]));
  for (const q of qs) {
    const p = byName.get(q.person)!;
    assert.is(q.answer, answerOf(p, q.attribute));
    assert.ok(q.prompt.includes(p.name) && q.prompt.endsWith(' '), q.prompt);
    const full = factSentences([p], { heldOut: true });
    assert.ok(full.includes(q.prompt + q.answer + '.'), `${q.prompt}${q.answer}`);
  }
  assert.is(qs.filter((q) => q.person === people[0].name && q.attribute === 'birthYear')[0].answer, String(people[0].birthYear));
  // training-phrasing queries: only phrasings with the name before the answer, all present in the corpus
  const docs = biographyCorpus(people, { phrasingsPerFact: 4 });
  const train = factQueries(people, { heldOut: false });
  assert.ok(train.length >= 2 * 10 * ATTRIBUTES.length);
  for (const q of train) assert.ok(docs.includes(q.prompt + q.answer + '.'), q.prompt);
  assert.is(factQueries(people, { attributes: ['hobby'] }).length, 10);
});

test('splitForget: first n or by name; unknown names fail', () => {
  const people = generatePeople({ count: 6, seed: 4 });
  const s = splitForget(people, { forget: 2 });
  assert.equal(s.forget.map((p) => p.id), [0, 1]);
  assert.equal(s.retain.map((p) => p.id), [2, 3, 4, 5]);
  const t = splitForget(people, { forget: [people[4].name, people[1].name] });
  assert.equal(t.forget.map((p) => p.id), [1, 4]);
  assert.equal(t.retain.map((p) => p.id), [0, 2, 3, 5]);
  assert.throws(() => splitForget(people, { forget: ['Nobody Here'] }), /no person named "Nobody Here"/);
  assert.throws(() => splitForget(people, { forget: 7 }), /"forget" must be an integer in 0\.\.6/);
});

test('rocAuc: separation, reversal, identical scores and ties', () => {
  assert.is(rocAuc([3, 4, 5], [0, 1, 2]), 1);
  assert.is(rocAuc([0, 1, 2], [3, 4, 5]), 0);
  assert.is(rocAuc([1, 1, 1], [1, 1]), 0.5);
  // pairs: (2 vs 1) win, (2 vs 2) tie, (1 vs 1) tie, (1 vs 2) loss → (1 + .5 + .5 + 0) / 4
  assert.is(rocAuc([2, 1], [1, 2]), 0.5);
  // (3>1, 3>2, 2>1, 2=2) → (3 + .5) / 4
  assert.is(rocAuc([3, 2], [1, 2]), 0.875);
  assert.throws(() => rocAuc([], [1]), /at least one member/);
});

/** A stub greedy generator that knows the answers of `known` queries (and emits nothing otherwise),
 * optionally only once `hint` answer tokens have been given. */
function stub(queries: readonly FactQuery[], hint: (q: FactQuery) => number): Generator {
  return async (prompts, maxNew) => prompts.map((ids) => {
    const text = TOK.decode(ids, { skipSpecial: true });
    for (const q of queries) {
      const full = q.prompt + q.answer;
      if (!text.startsWith(q.prompt) || !full.startsWith(text)) continue;
      const given = text.length - q.prompt.length;
      if (given < hint(q)) return new Int32Array(0);
      return TOK.encode(full.slice(text.length) + '. more').subarray(0, maxNew);
    }
    return new Int32Array(0);
  });
}

test('extractionStrength: 1 without a hint, 0 when never reproduced, 1 − k/n in between (stub generator)', async () => {
  const model = Model.create(CFG, { seed: 1 });
  const qs = factQueries(generatePeople({ count: 4, seed: 5 }));
  const all = await extractionStrength(model, qs, { generate: stub(qs, () => 0) });
  assert.is(all.mean, 1);
  const none = await extractionStrength(model, qs, { generate: stub([], () => 0) });
  assert.is(none.mean, 0);
  const half = await extractionStrength(model, qs, { generate: stub(qs, (q) => Math.floor(q.answer.length / 2)) });
  half.perQuery.forEach((v, i) => assert.ok(Math.abs(v - (1 - Math.floor(qs[i].answer.length / 2) / qs[i].answer.length)) < 1e-12, `query ${i}: ${v}`));
  // the same stubs through factAccuracy
  assert.is((await factAccuracy(model, qs, { generate: stub(qs, () => 0) })).accuracy, 1);
  assert.is((await factAccuracy(model, qs, { generate: stub(qs, () => 1) })).accuracy, 0);
});

const trainCfg = (steps: number, lr: number): TrainConfig => ({ steps, gradAccum: 1, lr, warmup: 10, schedule: 'cosine', weightDecay: 0, beta1: 0.9, beta2: 0.98, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 });

// 300 steps (about 3 s): at 150 steps this model has not yet memorised any fact verbatim
test('a tiny model trained on 8 biographies recalls training facts and leaks membership', async () => {
  const t0 = Date.now();
  const people: Person[] = generatePeople({ count: 8, seed: 11 });
  const unseen = generatePeople({ count: 8, seed: 12 });
  const docs = biographyCorpus(people, { phrasingsPerFact: 2, biosPerPerson: 1, seed: 1 });
  const data = packDocuments(TOK, docs, 64, { seed: 1 });
  const queries = factQueries(people, { heldOut: false, phrasingsPerFact: 2 });
  const untrained = Model.create(CFG, { seed: 2 });
  const model = Model.create(CFG, { seed: 2 });
  const { train } = await import('../lib/train/train');
  await train(model, new Batcher(data, { batchSize: 16, seed: 1 }), trainCfg(300, 1e-2));
  const before = await factAccuracy(untrained, queries);
  const after = await factAccuracy(model, queries);
  assert.ok(after.accuracy > before.accuracy, `training-phrasing recall ${before.accuracy} → ${after.accuracy}`);

  const members = factSentences(people, { phrasingsPerFact: 2 });
  const nonMembers = factSentences(unseen, { phrasingsPerFact: 2 });
  const loss = await membershipAuc(model, members, nonMembers, { method: 'loss' });
  const mink = await membershipAuc(model, members, nonMembers, { method: 'mink', k: 0.2 });
  assert.ok(loss.auc > 0.5, `LOSS AUC ${loss.auc}`);
  assert.ok(mink.auc > 0.5, `Min-K% AUC ${mink.auc}`);
  assert.is(loss.memberScores.length, members.length);

  const es = await extractionStrength(model, queries);
  for (const v of es.perQuery) assert.ok(v >= 0 && v <= 1, `ES ${v}`);
  // a query the model answers verbatim with no hint has ES = 1
  const known = queries.filter((_, i) => after.generated[i].startsWith(queries[i].answer));
  if (known.length) assert.is((await extractionStrength(model, known)).mean, 1);
  const esUntrained = await extractionStrength(untrained, queries);
  assert.ok(es.mean > esUntrained.mean, `ES ${esUntrained.mean} → ${es.mean}`);
  console.log(`  biographies: recall ${before.accuracy.toFixed(3)} → ${after.accuracy.toFixed(3)}, ES ${esUntrained.mean.toFixed(3)} → ${es.mean.toFixed(3)}, ` +
    `AUC loss ${loss.auc.toFixed(3)} mink ${mink.auc.toFixed(3)}, known ${known.length}/${queries.length}, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

test.run();
