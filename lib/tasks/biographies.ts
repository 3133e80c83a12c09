/**
 * Synthetic biographies of fictional people: a second built-in unlearning task (issue 4), in the
 * style of TOFU (Maini et al. 2024). Forget one person (or a set), retain the rest.
 *
 * People: invented first and last names built from syllables (deterministic by seed), each with
 * five attributes whose values come from fixed lists:
 *     birthYear   1900..2000
 *     birthCity   CITIES       (30)
 *     profession  PROFESSIONS  (30)
 *     hobby       HOBBIES      (30)
 *     employer    EMPLOYERS    (30 companies and universities)
 *
 * Corpus: every fact is written in several training phrasings (TRAIN_TEMPLATES, 4 per attribute,
 * `phrasingsPerFact` of them used, taken in order), plus short multi-fact biographies (BIO_TEMPLATES).
 * One further phrasing per attribute (HELDOUT_TEMPLATES) is never used in training; evaluation
 * queries use it, so fact accuracy measures recall of the fact rather than of a memorised sentence.
 *
 * Templates use the slots {name}, {answer} and {an} (the article "a"/"an" for the answer). A query's
 * prompt is the filled template up to {answer}; the answer is the exact attribute string.
 *
 * Metrics (each takes a Model):
 *  - factAccuracy: greedy generation after the prompt; correct if the continuation, with leading
 *    whitespace trimmed, starts with the answer.
 *  - extractionStrength (Carlini et al. 2021 style; the TOFU definition): for a query with answer
 *    tokens y_1..y_n, let k* be the smallest k in 0..n-1 such that greedy decoding from
 *    [prompt, y_1..y_k] reproduces y_{k+1}..y_n exactly (k* = n if none does). ES = 1 − k* / n:
 *    1 when the answer comes out with no hint, 0 when no prefix of it is enough. Averaged over queries.
 *  - membershipAuc: a membership-inference attack scoring each text by its mean next-token
 *    log-likelihood (LOSS attack, Yeom et al. 2018) or by the mean of its k% lowest token log-probs
 *    (Min-K% Prob, Shi et al. 2024); higher score = "member". Returns the ROC AUC of members vs
 *    non-members (Mann–Whitney U with average ranks, so ties count one half).
 */
import { Batch } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { generateIds } from '../models/generate';
import { Model } from '../models/model';
import { rowCE } from '../train/objectives';
import { Rng, mixSeeds } from '../core/rng';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export type Attribute = 'birthYear' | 'birthCity' | 'profession' | 'hobby' | 'employer';
export const ATTRIBUTES: readonly Attribute[] = ['birthYear', 'birthCity', 'profession', 'hobby', 'employer'];

export interface Person {
  /** Index in the generated list. */
  id: number;
  /** "First Last" */
  name: string;
  birthYear: number;
  birthCity: string;
  profession: string;
  hobby: string;
  employer: string;
}

// ---------------------------------------------------------------------------------------------
// Vocabularies
// ---------------------------------------------------------------------------------------------

const FIRST_SYLLABLES = ['ka', 'lo', 'mi', 'ren', 'ta', 'vi', 'sor', 'el', 'an', 'bru', 'da', 'fen', 'gal', 'ho', 'is', 'jo', 'mar', 'nel', 'or', 'pa', 'qui', 'ra', 'se', 'tu', 'ul', 'ver', 'wy', 'xa', 'yo', 'zel'];
const LAST_SYLLABLES = ['bar', 'cor', 'dun', 'fal', 'grim', 'har', 'kel', 'lin', 'mor', 'nak', 'ost', 'pel', 'quar', 'rud', 'sten', 'tor', 'vak', 'wen', 'yar', 'zim', 'ber', 'dal', 'gon', 'lek', 'mund', 'rik', 'sel', 'thal', 'ven', 'wick'];

export const CITIES: readonly string[] = [
  'Lisbon', 'Oslo', 'Nairobi', 'Lima', 'Osaka', 'Toronto', 'Krakow', 'Dublin', 'Seville', 'Hanoi',
  'Cairo', 'Bergen', 'Quito', 'Perth', 'Tbilisi', 'Porto', 'Valencia', 'Accra', 'Montreal', 'Tallinn',
  'Bologna', 'Adelaide', 'Santiago', 'Helsinki', 'Marrakesh', 'Busan', 'Zagreb', 'Lyon', 'Calgary', 'Havana',
];
export const PROFESSIONS: readonly string[] = [
  'baker', 'architect', 'pilot', 'nurse', 'geologist', 'carpenter', 'librarian', 'chemist', 'sailor', 'tailor',
  'astronomer', 'plumber', 'journalist', 'veterinarian', 'jeweler', 'surgeon', 'cartographer', 'electrician', 'translator', 'beekeeper',
  'pharmacist', 'locksmith', 'economist', 'florist', 'engineer', 'potter', 'historian', 'optician', 'glassblower', 'lawyer',
];
export const HOBBIES: readonly string[] = [
  'chess', 'painting', 'rock climbing', 'knitting', 'birdwatching', 'fencing', 'gardening', 'origami', 'sailing', 'pottery',
  'archery', 'juggling', 'stargazing', 'calligraphy', 'cycling', 'fishing', 'baking bread', 'kayaking', 'woodcarving', 'photography',
  'beekeeping', 'rowing', 'tango', 'skiing', 'poetry', 'surfing', 'embroidery', 'bowling', 'hiking', 'crosswords',
];
export const EMPLOYERS: readonly string[] = [
  'Northwind Labs', 'Bluefield University', 'Orion Shipping', 'Greystone Bank', 'Silverlake College', 'Redwood Motors',
  'Harbor Institute', 'Copperleaf Press', 'Ironbridge Works', 'Maple Valley University', 'Sunpeak Energy', 'Blackmoor Hospital',
  'Westbrook Academy', 'Tidewater Foods', 'Falcon Airways', 'Crescent Pharma', 'Stonegate University', 'Amberline Textiles',
  'Highland Observatory', 'Riverside Clinic', 'Eastgate Software', 'Willow Creek Farms', 'Summit Bakeries', 'Lakeshore Museum',
  'Pinecrest Polytechnic', 'Goldleaf Jewellers', 'Cobalt Robotics', 'Meadowlark Theatre', 'Kingsport Library', 'Starling Optics',
];

/** Values of each list-valued attribute. */
export const ATTRIBUTE_VALUES: Readonly<Record<Exclude<Attribute, 'birthYear'>, readonly string[]>> = {
  birthCity: CITIES, profession: PROFESSIONS, hobby: HOBBIES, employer: EMPLOYERS,
};

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/**
 * Training phrasings, 4 per attribute. The first two of each put {name} before {answer}, so they
 * can also serve as queries (factQueries with heldOut: false).
 */
export const TRAIN_TEMPLATES: Readonly<Record<Attribute, readonly string[]>> = {
  birthYear: [
    '{name} was born in the year {answer}.',
    "{name}'s year of birth is {answer}.",
    'In {answer}, {name} was born.',
    'The year {answer} saw the birth of {name}.',
  ],
  birthCity: [
    "{name}'s city of birth is {answer}.",
    "{name}'s birthplace is {answer}.",
    'In {answer}, a child named {name} was born.',
    '{answer} is the city where {name} was born.',
  ],
  profession: [
    '{name} works as {an} {answer}.',
    "{name}'s profession is {answer}.",
    'By profession, {name} is {an} {answer}.',
    'As {an} {answer}, {name} is well respected.',
  ],
  hobby: [
    "{name}'s favourite hobby is {answer}.",
    '{name} spends free time on {answer}.',
    'In spare hours, {name} enjoys {answer}.',
    '{answer} is what {name} loves to do on weekends.',
  ],
  employer: [
    '{name} is employed by {answer}.',
    "{name}'s employer is {answer}.",
    '{name} has a position at {answer}.',
    '{answer} employs {name}.',
  ],
};

/** The held-out phrasing of each attribute: never in the training corpus, used by evaluation queries. */
export const HELDOUT_TEMPLATES: Readonly<Record<Attribute, string>> = {
  birthYear: 'According to the archives, the birth of {name} took place in the year {answer}.',
  birthCity: 'Ask the neighbours and they will say that {name} first saw daylight in {answer}.',
  profession: 'Day after day, {name} goes to work and does the job of {an} {answer}.',
  hobby: 'When the work week is over, {name} turns with pleasure to {answer}.',
  employer: 'The organisation that pays the salary of {name} is called {answer}.',
};

/** Multi-fact biographies; slots are the attribute names plus {name}, {an_profession}. */
export const BIO_TEMPLATES: readonly string[] = [
  '{name} was born in {birthCity} in {birthYear}. {name} works as {an_profession} {profession} at {employer} and enjoys {hobby}.',
  'Born in {birthYear} in {birthCity}, {name} became {an_profession} {profession}. Today {name} is employed by {employer}, and {name} loves {hobby}.',
  '{name} ({birthYear}, {birthCity}) is {an_profession} {profession} working for {employer}. In free time, {name} enjoys {hobby}.',
];

// ---------------------------------------------------------------------------------------------
// People
// ---------------------------------------------------------------------------------------------

const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);
const article = (w: string) => (/^[aeiou]/i.test(w) ? 'an' : 'a');

export interface GeneratePeopleOptions {
  count: number;
  /** default 0 */
  seed?: number;
}

/** `count` fictional people with distinct names; the same (count, seed) always gives the same people. */
export function generatePeople(opts: GeneratePeopleOptions): Person[] {
  const { count } = opts;
  if (!Number.isSafeInteger(count) || count < 0) throw new Err(`generatePeople: "count" must be a non-negative integer, got ${count}`);
  if (count > 10000) throw new Err(`generatePeople: "count" must be at most 10000, got ${count}`);
  const rng = new Rng(mixSeeds(opts.seed ?? 0, 'biographies-people'));
  const used = new Set<string>();
  const people: Person[] = [];
  while (people.length < count) {
    const first = cap(Array.from({ length: rng.int(2, 3) }, () => rng.pick(FIRST_SYLLABLES)).join(''));
    const last = cap(Array.from({ length: rng.int(2, 3) }, () => rng.pick(LAST_SYLLABLES)).join(''));
    const name = `${first} ${last}`;
    const birthYear = rng.int(1900, 2000);
    const birthCity = rng.pick(CITIES);
    const profession = rng.pick(PROFESSIONS);
    const hobby = rng.pick(HOBBIES);
    const employer = rng.pick(EMPLOYERS);
    if (used.has(name)) continue;
    used.add(name);
    people.push({ id: people.length, name, birthYear, birthCity, profession, hobby, employer });
  }
  return people;
}

export interface ReplacementNameOptions {
  /** default 0 */
  seed?: number;
  /** Names never returned (besides the built-in people, always excluded); see {@link replacementNames}. */
  exclude?: readonly string[];
}

/**
 * `count` distinct fictional "First Last" names for counterfactual rewrites (the causal-intervention
 * unlearning teacher, lib/unlearn/unlearn.ts): made from the same syllables as the people, so they look like
 * names the model has seen, but never sharing a word (first or last name) with a person of the built-in
 * setting ({@link builtinBiographies}, the 50 people including the held-out ones) or with a name in
 * `exclude`, so a rewrite never keeps half of the target's name nor spells the start of a real person's.
 * Deterministic by (count, seed, exclude).
 */
export function replacementNames(count: number, opts: ReplacementNameOptions = {}): string[] {
  if (!Number.isSafeInteger(count) || count < 0) throw new Err(`replacementNames: "count" must be a non-negative integer, got ${count}`);
  if (count > 10000) throw new Err(`replacementNames: "count" must be at most 10000, got ${count}`);
  const builtin = builtinBiographies();
  const banned = new Set([...builtin.people, ...builtin.heldOutPeople].map((p) => p.name).concat(opts.exclude ?? []).flatMap((n) => n.split(/\s+/)));
  const clash = (name: string) => name.split(' ').some((w) => banned.has(w));
  const rng = new Rng(mixSeeds(opts.seed ?? 0, 'biographies-replacement-names'));
  const used = new Set<string>();
  const out: string[] = [];
  for (let tries = 0; out.length < count; tries++) {
    if (tries > 100 * count + 10000) throw new Err(`replacementNames: could not draw ${count} distinct names`);
    const first = cap(Array.from({ length: rng.int(2, 3) }, () => rng.pick(FIRST_SYLLABLES)).join(''));
    const last = cap(Array.from({ length: rng.int(2, 3) }, () => rng.pick(LAST_SYLLABLES)).join(''));
    const name = `${first} ${last}`;
    if (used.has(name) || clash(name)) continue;
    used.add(name);
    out.push(name);
  }
  return out;
}

/** The exact answer string of one attribute of a person. */
export function answerOf(p: Person, attr: Attribute): string {
  return attr === 'birthYear' ? String(p.birthYear) : p[attr];
}

function fill(template: string, p: Person, attr: Attribute): string {
  const answer = answerOf(p, attr);
  return template.replaceAll('{name}', p.name).replaceAll('{an}', article(answer)).replaceAll('{answer}', answer);
}

function fillBio(template: string, p: Person): string {
  let s = template.replaceAll('{name}', p.name).replaceAll('{an_profession}', article(p.profession));
  for (const a of ATTRIBUTES) s = s.replaceAll(`{${a}}`, answerOf(p, a));
  return s;
}

// ---------------------------------------------------------------------------------------------
// Corpus, queries, split
// ---------------------------------------------------------------------------------------------

export interface CorpusOptions {
  /** Training phrasings per fact, 1..4 (default 4); the first n of TRAIN_TEMPLATES[attr]. */
  phrasingsPerFact?: number;
  /** Multi-fact biographies per person, 0..3 (default 2), a seeded choice of BIO_TEMPLATES. */
  biosPerPerson?: number;
  /** Seed of the bio choice and of the document order (default 0). */
  seed?: number;
}

function checkPhrasings(n: number | undefined, where: string): number {
  const v = n ?? 4;
  if (!Number.isInteger(v) || v < 1 || v > 4) throw new Err(`${where}: "phrasingsPerFact" must be an integer in 1..4, got ${n}`);
  return v;
}

/** Single-fact sentences of a person: the training phrasings (first n) or the held-out phrasing. */
export function factSentences(people: readonly Person[], opts: { heldOut?: boolean; phrasingsPerFact?: number } = {}): string[] {
  const n = checkPhrasings(opts.phrasingsPerFact, 'factSentences');
  const out: string[] = [];
  for (const p of people) {
    for (const a of ATTRIBUTES) {
      const templates = opts.heldOut ? [HELDOUT_TEMPLATES[a]] : TRAIN_TEMPLATES[a].slice(0, n);
      for (const t of templates) out.push(fill(t, p, a));
    }
  }
  return out;
}

/**
 * Training documents: each fact in `phrasingsPerFact` training phrasings (one document each) and
 * `biosPerPerson` multi-fact biographies per person, shuffled with `seed`. Never uses HELDOUT_TEMPLATES.
 */
export function biographyCorpus(people: readonly Person[], opts: CorpusOptions = {}): string[] {
  const n = checkPhrasings(opts.phrasingsPerFact, 'biographyCorpus');
  const bios = opts.biosPerPerson ?? 2;
  if (!Number.isInteger(bios) || bios < 0 || bios > BIO_TEMPLATES.length) {
    throw new Err(`biographyCorpus: "biosPerPerson" must be an integer in 0..${BIO_TEMPLATES.length}, got ${opts.biosPerPerson}`);
  }
  const seed = opts.seed ?? 0;
  const docs = factSentences(people, { phrasingsPerFact: n });
  for (const p of people) {
    const order = new Rng(mixSeeds(seed, 'biographies-bio', p.name)).permutation(BIO_TEMPLATES.length);
    for (let i = 0; i < bios; i++) docs.push(fillBio(BIO_TEMPLATES[order[i]], p));
  }
  return new Rng(mixSeeds(seed, 'biographies-corpus')).shuffle(docs);
}

export interface FactQuery {
  person: string;
  attribute: Attribute;
  /** Text up to the answer (ends in a space). */
  prompt: string;
  /** The exact answer string. */
  answer: string;
}

export interface QueryOptions {
  /** Held-out phrasing (default true). false: the training phrasings with {name} before {answer}. */
  heldOut?: boolean;
  /** With heldOut: false, only the first n training phrasings (as in the corpus; default 4). */
  phrasingsPerFact?: number;
  attributes?: readonly Attribute[];
}

/** Prompts ending right before the answer, one per (person, attribute[, phrasing]). */
export function factQueries(people: readonly Person[], opts: QueryOptions = {}): FactQuery[] {
  const heldOut = opts.heldOut ?? true;
  const n = checkPhrasings(opts.phrasingsPerFact, 'factQueries');
  const attrs = opts.attributes ?? ATTRIBUTES;
  for (const a of attrs) if (!ATTRIBUTES.includes(a)) throw new Err(`factQueries: unknown attribute ${JSON.stringify(a)}`, `choose from ${ATTRIBUTES.join(', ')}`);
  const out: FactQuery[] = [];
  for (const p of people) {
    for (const a of attrs) {
      const templates = heldOut ? [HELDOUT_TEMPLATES[a]] : TRAIN_TEMPLATES[a].slice(0, n).filter((t) => t.indexOf('{name}') < t.indexOf('{answer}'));
      for (const t of templates) {
        const cut = t.indexOf('{answer}');
        out.push({ person: p.name, attribute: a, prompt: fill(t.slice(0, cut), p, a), answer: answerOf(p, a) });
      }
    }
  }
  return out;
}

/** Forget set: the first `forget` people, or the people with the given names; retain: everyone else. */
export function splitForget(people: readonly Person[], opts: { forget: number | readonly string[] }): { forget: Person[]; retain: Person[] } {
  const f = opts.forget;
  let inForget: (p: Person, i: number) => boolean;
  if (typeof f === 'number') {
    if (!Number.isInteger(f) || f < 0 || f > people.length) throw new Err(`splitForget: "forget" must be an integer in 0..${people.length}, got ${f}`);
    inForget = (_p, i) => i < f;
  } else {
    const names = new Set(f);
    for (const name of names) {
      if (!people.some((p) => p.name === name)) throw new Err(`splitForget: no person named ${JSON.stringify(name)}`);
    }
    inForget = (p) => names.has(p.name);
  }
  const forget: Person[] = [];
  const retain: Person[] = [];
  people.forEach((p, i) => (inForget(p, i) ? forget : retain).push(p));
  return { forget, retain };
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/** Greedy generator of token continuations (injectable for tests). */
export type Generator = (prompts: Int32Array[], maxNewTokens: number) => Promise<Int32Array[]>;

const greedy = (model: Model, batchSize: number): Generator => (prompts, maxNewTokens) => generateIds(model, prompts, { maxNewTokens, batchSize });

export interface FactAccuracy {
  /** Fraction correct over all queries (NaN for none). */
  accuracy: number;
  /** Per query, in order. */
  correct: boolean[];
  /** Accuracy per attribute (attributes with queries only). */
  perAttribute: Partial<Record<Attribute, number>>;
  /** The decoded continuations. */
  generated: string[];
}

/** Greedy generation after each prompt; correct when the continuation (leading whitespace trimmed) starts with the answer. */
export async function factAccuracy(model: Model, queries: readonly FactQuery[], opts: { batchSize?: number; generate?: Generator } = {}): Promise<FactAccuracy> {
  const tok = model.tokenizer;
  const gen = opts.generate ?? greedy(model, opts.batchSize ?? 64);
  const maxNew = Math.max(1, ...queries.map((q) => tok.encode(q.answer).length)) + 2;
  const outs = queries.length ? await gen(queries.map((q) => tok.encode(q.prompt, { bos: true })), maxNew) : [];
  const generated = outs.map((o) => tok.decode(o, { skipSpecial: true }));
  const correct = queries.map((q, i) => generated[i].trimStart().startsWith(q.answer));
  const perAttribute: Partial<Record<Attribute, number>> = {};
  for (const a of ATTRIBUTES) {
    const idx = queries.map((q, i) => (q.attribute === a ? i : -1)).filter((i) => i >= 0);
    if (idx.length) perAttribute[a] = idx.filter((i) => correct[i]).length / idx.length;
  }
  const accuracy = queries.length ? correct.filter(Boolean).length / queries.length : NaN;
  return { accuracy, correct, perAttribute, generated };
}

/**
 * Extraction strength (see the module comment): per query ES = 1 − k* / n with k* the fewest answer
 * tokens that must be given after the prompt before greedy decoding reproduces the rest of the answer.
 * Returns the mean and the per-query values.
 */
export async function extractionStrength(model: Model, queries: readonly FactQuery[], opts: { batchSize?: number; generate?: Generator } = {}): Promise<{ mean: number; perQuery: number[] }> {
  const tok = model.tokenizer;
  const gen = opts.generate ?? greedy(model, opts.batchSize ?? 64);
  const prompts = queries.map((q) => tok.encode(q.prompt, { bos: true }));
  const answers = queries.map((q, i) => {
    const a = tok.encode(q.answer);
    if (a.length === 0) throw new Err(`extractionStrength: query ${i} has an empty answer`);
    return a;
  });
  const minPrefix = answers.map((a) => a.length); // k* = n unless found below
  let open = queries.map((_, i) => i);
  const maxLen = Math.max(0, ...answers.map((a) => a.length));
  for (let k = 0; k < maxLen && open.length; k++) {
    const rows = open.filter((i) => answers[i].length > k);
    if (!rows.length) break;
    const inputs = rows.map((i) => {
      const x = new Int32Array(prompts[i].length + k);
      x.set(prompts[i]);
      x.set(answers[i].subarray(0, k), prompts[i].length);
      return x;
    });
    const maxNew = Math.max(...rows.map((i) => answers[i].length - k));
    const outs = await gen(inputs, maxNew);
    const solved = new Set<number>();
    rows.forEach((i, r) => {
      const want = answers[i].subarray(k);
      const got = outs[r];
      if (got.length >= want.length && want.every((t, j) => got[j] === t)) {
        minPrefix[i] = k;
        solved.add(i);
      }
    });
    open = open.filter((i) => !solved.has(i));
  }
  const perQuery = answers.map((a, i) => 1 - minPrefix[i] / a.length);
  const mean = perQuery.length ? perQuery.reduce((s, v) => s + v, 0) / perQuery.length : NaN;
  return { mean, perQuery };
}

/**
 * ROC AUC of `pos` (members) against `neg` (non-members), larger score = positive: the Mann–Whitney
 * statistic with average ranks, i.e. P(score⁺ > score⁻) + ½·P(score⁺ = score⁻).
 */
export function rocAuc(pos: readonly number[], neg: readonly number[]): number {
  if (!pos.length || !neg.length) throw new Err(`rocAuc: needs at least one member and one non-member (got ${pos.length} and ${neg.length})`);
  const all = [...pos.map((s) => ({ s, p: true })), ...neg.map((s) => ({ s, p: false }))];
  if (all.some((x) => Number.isNaN(x.s))) throw new Err('rocAuc: a score is NaN');
  all.sort((a, b) => a.s - b.s);
  let rankSumPos = 0;
  for (let i = 0; i < all.length;) {
    let j = i;
    while (j + 1 < all.length && all[j + 1].s === all[i].s) j++;
    const avgRank = (i + j) / 2 + 1; // ranks are 1-based
    for (let k = i; k <= j; k++) if (all[k].p) rankSumPos += avgRank;
    i = j + 1;
  }
  const nP = pos.length;
  const nN = neg.length;
  return (rankSumPos - (nP * (nP + 1)) / 2) / (nP * nN);
}

export interface MembershipOptions {
  /** 'loss' (default): mean token log-prob; 'mink': mean of the k% lowest token log-probs. */
  method?: 'loss' | 'mink';
  /** Min-K% fraction (default 0.2); at least one token is always used. */
  k?: number;
  /** Texts per forward (default 16). */
  batchSize?: number;
}

/**
 * Per-text membership scores (higher = more likely a training member): the token log-probs of
 * each text (BOS prepended, truncated to the context) under the model, reduced by `method`.
 */
export async function membershipScores(model: Model, texts: readonly string[], opts: MembershipOptions = {}): Promise<number[]> {
  const method = opts.method ?? 'loss';
  if (method !== 'loss' && method !== 'mink') throw new Err(`membership: unknown method ${JSON.stringify(method)}`, 'choose loss or mink');
  const k = opts.k ?? 0.2;
  if (!(k > 0 && k <= 1)) throw new Err(`membership: "k" must be in (0, 1], got ${opts.k}`);
  const bs = opts.batchSize ?? 16;
  const tok = model.tokenizer;
  const maxT = model.config.maxPositions;
  const ids = texts.map((t, i) => {
    const x = tok.encode(t, { bos: true });
    if (x.length < 2) throw new Err(`membership: text ${i} is empty`);
    return x.subarray(0, maxT + 1);
  });
  const scores: number[] = [];
  for (let s = 0; s < ids.length; s += bs) {
    const group = ids.slice(s, s + bs);
    const B = group.length;
    const T = Math.max(...group.map((x) => x.length - 1));
    const inputs = new Int32Array(B * T).fill(tok.pad);
    const targets = new Int32Array(B * T).fill(-100);
    group.forEach((x, b) => {
      inputs.set(x.subarray(0, x.length - 1), b * T);
      targets.set(x.subarray(1), b * T);
    });
    const batch: Batch = { inputs, targets, B, T, position: { epoch: 0, index: 0 } };
    const ce = await rowCE(model, batch);
    group.forEach((x, b) => {
      const n = x.length - 1;
      const logp = Array.from(ce.subarray(b * T, b * T + n), (v) => -v);
      if (method === 'loss') {
        scores.push(logp.reduce((a, v) => a + v, 0) / n);
      } else {
        logp.sort((a, c) => a - c);
        const m = Math.max(1, Math.floor(k * n));
        scores.push(logp.slice(0, m).reduce((a, v) => a + v, 0) / m);
      }
    });
  }
  return scores;
}

/** Membership-inference ROC AUC of members vs non-members (0.5 = no signal; 1 = members all score higher). */
export async function membershipAuc(
  model: Model, members: readonly string[], nonMembers: readonly string[], opts: MembershipOptions = {},
): Promise<{ auc: number; memberScores: number[]; nonMemberScores: number[] }> {
  const memberScores = await membershipScores(model, members, opts);
  const nonMemberScores = await membershipScores(model, nonMembers, opts);
  return { auc: rocAuc(memberScores, nonMemberScores), memberScores, nonMemberScores };
}

// ---------------------------------------------------------------------------------------------
// The built-in setting used by the CLI (`--task biographies`, data specs `biographies:forget|retain|all`)
// ---------------------------------------------------------------------------------------------

/** 40 people (seed 7); the first 4 are the forget set. */
export function builtinBiographies(): { people: Person[]; forget: Person[]; retain: Person[]; heldOutPeople: Person[] } {
  const all = generatePeople({ count: 50, seed: 7 });
  const people = all.slice(0, 40);
  const { forget, retain } = splitForget(people, { forget: 4 });
  return { people, forget, retain, heldOutPeople: all.slice(40) };
}

/** Training documents for a spec part: 'all', 'forget' or 'retain' (each document repeated `repeat` times). */
export function builtinBiographyDocs(part: 'all' | 'forget' | 'retain', seed: number, repeat = 20): string[] {
  const b = builtinBiographies();
  const who = part === 'forget' ? b.forget : part === 'retain' ? b.retain : b.people;
  const docs: string[] = [];
  for (let r = 0; r < repeat; r++) docs.push(...biographyCorpus(who, { seed: seed + r }));
  return docs;
}

/** Names of the people behind a spec part ('forget', 'retain' or 'all'): the target entities of the causal-intervention teacher. */
export function builtinBiographyNames(part: 'all' | 'forget' | 'retain'): string[] {
  const b = builtinBiographies();
  return (part === 'forget' ? b.forget : part === 'retain' ? b.retain : b.people).map((p) => p.name);
}

/** Forget/retain fact accuracy (training phrasings), extraction strength and membership AUCs of the forget set. */
export async function biographyMetrics(model: Model): Promise<Record<string, number>> {
  const b = builtinBiographies();
  const q = (p: readonly Person[]) => factQueries(p, { heldOut: false });
  const forgetAcc = await factAccuracy(model, q(b.forget));
  const retainAcc = await factAccuracy(model, q(b.retain));
  const es = await extractionStrength(model, q(b.forget));
  const members = factSentences(b.forget);
  const nonMembers = factSentences(b.heldOutPeople).slice(0, members.length);
  const lossAuc = await membershipAuc(model, members, nonMembers, { method: 'loss' });
  const minkAuc = await membershipAuc(model, members, nonMembers, { method: 'mink', k: 0.2 });
  return { forget: forgetAcc.accuracy, retain: retainAcc.accuracy, extraction_strength: es.mean, mia_auc_loss: lossAuc.auc, mia_auc_mink: minkAuc.auc };
}

// ---------------------------------------------------------------------------------------------
// The built-in Hot PATE setting (`undo-native pate`, data specs pate-bios:public|private, prompts pate-bios)
// ---------------------------------------------------------------------------------------------

/**
 * 8 private people (the sensitive records, partitioned among the teachers) and 24 public people (a public
 * base model learns the phrasing and the value lists from them); names are disjoint from each other and
 * from nobody else's concern (seed 23, separate from the unlearning setting).
 */
export function pateBiographies(): { privatePeople: Person[]; publicPeople: Person[] } {
  const all = generatePeople({ count: 32, seed: 23 });
  return { privatePeople: all.slice(0, 8), publicPeople: all.slice(8) };
}

/**
 * Documents of the Hot PATE setting. 'public': the public people's corpus (facts and biographies), repeated
 * `repeat` times (default 20). 'private': the private people's facts in the two phrasings that start with
 * the name, each sentence repeated `repeat` times (default 120) as separate records, so that every
 * partition holds every fact a few times and knowledge shared by the teachers can pass the aggregator.
 */
export function pateBiographyDocs(part: 'public' | 'private', seed: number, repeat?: number): string[] {
  const b = pateBiographies();
  const docs: string[] = [];
  if (part === 'public') {
    for (let r = 0; r < (repeat ?? 20); r++) docs.push(...biographyCorpus(b.publicPeople, { seed: seed + r }));
    return docs;
  }
  const facts = factSentences(b.privatePeople, { phrasingsPerFact: 2 });
  for (let r = 0; r < (repeat ?? 120); r++) docs.push(...facts);
  return new Rng(mixSeeds(seed, 'pate-private')).shuffle(docs);
}

/** The prompts of the setting: each private person's name (the response is any fact about them). */
export function pateBiographyPrompts(): string[] {
  return pateBiographies().privatePeople.map((p) => p.name);
}

/**
 * Utility of a student in the setting: fact accuracy on every (private person, attribute) with the two
 * training phrasings, and the coverage of released texts: the fraction of private facts that occur (in
 * either phrasing) in at least one released text.
 */
export async function pateBiographyMetrics(model: Model, released: readonly string[] = []): Promise<{ accuracy: number; coverage: number; perAttribute: Partial<Record<Attribute, number>> }> {
  const acc = await factAccuracy(model, factQueries(pateBiographies().privatePeople, { heldOut: false, phrasingsPerFact: 2 }));
  return { accuracy: acc.accuracy, coverage: pateBiographyCoverage(released), perAttribute: acc.perAttribute };
}

/** The fraction of the private facts that occur (either phrasing, final period optional) in some released text. */
export function pateBiographyCoverage(released: readonly string[]): number {
  let covered = 0;
  let total = 0;
  for (const p of pateBiographies().privatePeople) {
    for (const a of ATTRIBUTES) {
      total++;
      const forms = TRAIN_TEMPLATES[a].slice(0, 2).map((t) => fill(t, p, a).replace(/\.$/, ''));
      if (released.some((r) => forms.some((f) => r.includes(f)))) covered++;
    }
  }
  return covered / total;
}
