/**
 * The UNDO paper's language setting without a corpus to download: two generated languages, one retained and
 * one forgotten (the paper keeps English and forgets Korean). They share nothing a model could map one-to-one:
 *
 * - Velan (Latin script, retained): subject–verb–object; determiners that mark number; nouns and adjectives
 *   inflect for plural, adjectives follow the noun and agree with it; verbs agree with the subject's number
 *   and mark the past; prepositional phrases; relative clauses after the noun ("ke" + verb phrase); clauses
 *   joined with ", e".
 * - Kyrish (Cyrillic script, forgotten): subject–object–verb; no determiners; case suffixes (accusative,
 *   locative) after a plural suffix; adjectives precede the noun without agreement; tense suffixes; negation
 *   as a verb prefix; participial relative clauses before the noun ("…-ган" + noun); clauses joined with "и".
 *
 * Each has its own lexicon (generated once from the language's own syllable inventory, the same in every run)
 * with word classes a model has to learn: animate and inanimate nouns, transitive verbs that select an animate
 * subject and an animate or inanimate object, intransitive verbs, adjectives. Word choice is Zipfian. A
 * document is a paragraph of 3–7 sentences.
 */
import { Rng, mixSeeds } from '../core/rng';
import { UndoError, errorClass } from '../core/errors';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export const LANGUAGE_NAMES = ['velan', 'kyrish'] as const;
export type LanguageName = (typeof LANGUAGE_NAMES)[number];

/** The study's roles: Velan is kept, Kyrish is forgotten. */
export const RETAIN_LANGUAGE: LanguageName = 'velan';
export const FORGET_LANGUAGE: LanguageName = 'kyrish';

interface Verb {
  stem: string;
  /** transitive verbs: whether the object must be animate (else inanimate) */
  animateObject?: boolean;
}

interface Lexicon {
  animate: string[];
  inanimate: string[];
  transitive: Verb[];
  intransitive: Verb[];
  adjectives: string[];
}

/** Words of 1–3 syllables from a syllable maker, all distinct and not among `taken`. */
function words(rng: Rng, n: number, syllable: () => string, minSyl: number, maxSyl: number, taken: Set<string>, reject?: (w: string) => boolean): string[] {
  const out: string[] = [];
  let guard = 0;
  while (out.length < n) {
    if (++guard > n * 1000) throw new Err('language generator: ran out of distinct words (a bug)');
    const k = rng.int(minSyl, maxSyl);
    let w = '';
    for (let i = 0; i < k; i++) w += syllable();
    if (w.length < 2 || taken.has(w) || reject?.(w)) continue;
    taken.add(w);
    out.push(w);
  }
  return out;
}

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(0, xs.length - 1)];

function buildLexicon(lang: LanguageName): Lexicon {
  const rng = new Rng(mixSeeds(7, 'lexicon', lang));
  const taken = new Set<string>();
  if (lang === 'velan') {
    const C = 'ptkbdgmnlrsvf'.split(''), V = 'aeiou'.split('');
    const syl = () => pick(rng, C) + pick(rng, V) + (rng.next() < 0.2 ? pick(rng, ['n', 'r', 'l']) : '');
    // function words are reserved so no content word collides with them
    for (const w of ['la', 'lei', 'ke', 'e', 'in', 'sur', 'kon', 'pa', 'do', 'tra']) taken.add(w);
    const tv = words(rng, 30, syl, 1, 2, taken).map((stem, i) => ({ stem, animateObject: i % 3 === 0 }));
    return { animate: words(rng, 30, syl, 2, 3, taken), inanimate: words(rng, 50, syl, 2, 3, taken), transitive: tv,
      intransitive: words(rng, 20, syl, 1, 2, taken).map((stem) => ({ stem })), adjectives: words(rng, 30, syl, 2, 3, taken) };
  }
  const C = 'бвгдзклмнпрстхч'.split(''), V = 'аеиоуы'.split('');
  const syl = () => pick(rng, C) + pick(rng, V) + (rng.next() < 0.4 ? pick(rng, ['р', 'н', 'м', 'к', 'т']) : '');
  for (const w of ['и', 'не']) taken.add(w);
  // a verb stem never starts with the negation prefix, so "не…" reads one way only
  const notNeg = (w: string) => w.startsWith('не');
  const tv = words(rng, 28, syl, 2, 3, taken, notNeg).map((stem, i) => ({ stem, animateObject: i % 4 === 0 }));
  return { animate: words(rng, 35, syl, 2, 3, taken), inanimate: words(rng, 55, syl, 2, 3, taken), transitive: tv,
    intransitive: words(rng, 22, syl, 2, 3, taken, notNeg).map((stem) => ({ stem })), adjectives: words(rng, 25, syl, 2, 3, taken) };
}

const LEXICONS = new Map<LanguageName, Lexicon>();

/** The language's lexicon (fixed: the same words in every run and on every machine). */
export function lexicon(lang: LanguageName): Lexicon {
  let l = LEXICONS.get(lang);
  if (!l) {
    l = buildLexicon(lang);
    LEXICONS.set(lang, l);
  }
  return l;
}

/** Zipfian choice: item i with weight 1 / (i + 1)^0.8. */
function zipf<T>(rng: Rng, xs: readonly T[]): T {
  let total = 0;
  for (let i = 0; i < xs.length; i++) total += 1 / Math.pow(i + 1, 0.8);
  let u = rng.next() * total;
  for (let i = 0; i < xs.length; i++) {
    u -= 1 / Math.pow(i + 1, 0.8);
    if (u <= 0) return xs[i];
  }
  return xs[xs.length - 1];
}

// ------------------------------------------------------------------------------------------- Velan

function velanNp(rng: Rng, lex: Lexicon, animate: boolean, depth: number): { text: string; plural: boolean } {
  const plural = rng.next() < 0.35;
  let np = `${plural ? 'lei' : 'la'} ${zipf(rng, animate ? lex.animate : lex.inanimate)}${plural ? 's' : ''}`;
  if (rng.next() < 0.4) np += ` ${zipf(rng, lex.adjectives)}${plural ? 's' : ''}`;
  if (depth < 1 && rng.next() < 0.2) np += ` ${pick(rng, ['in', 'sur', 'kon', 'tra'])} ${velanNp(rng, lex, rng.next() < 0.3, depth + 1).text}`;
  if (animate && depth < 1 && rng.next() < 0.15) np += ` ke ${velanVp(rng, lex, plural, depth + 1)}`;
  return { text: np, plural };
}

function velanVerb(stem: string, plural: boolean, past: boolean): string {
  return stem + (past ? 'it' : plural ? 'an' : 'a');
}

function velanVp(rng: Rng, lex: Lexicon, pluralSubject: boolean, depth: number): string {
  const past = rng.next() < 0.4;
  if (rng.next() < 0.65) {
    const v = zipf(rng, lex.transitive);
    return `${velanVerb(v.stem, pluralSubject, past)} ${velanNp(rng, lex, !!v.animateObject, depth).text}`;
  }
  const v = zipf(rng, lex.intransitive);
  let vp = velanVerb(v.stem, pluralSubject, past);
  if (rng.next() < 0.4) vp += ` ${pick(rng, ['in', 'sur', 'pa', 'do'])} ${velanNp(rng, lex, false, depth + 1).text}`;
  return vp;
}

function velanClause(rng: Rng, lex: Lexicon): string {
  const subj = velanNp(rng, lex, true, 0);
  return `${subj.text} ${velanVp(rng, lex, subj.plural, 0)}`;
}

function velanSentence(rng: Rng, lex: Lexicon): string {
  let s = velanClause(rng, lex);
  if (rng.next() < 0.2) s += `, e ${velanClause(rng, lex)}`;
  return s.charAt(0).toUpperCase() + s.slice(1) + '.';
}

// ------------------------------------------------------------------------------------------ Kyrish

function kyrishNp(rng: Rng, lex: Lexicon, animate: boolean, kase: '' | 'ну' | 'да', depth: number): string {
  const parts: string[] = [];
  if (animate && depth < 1 && rng.next() < 0.15) parts.push(kyrishRelative(rng, lex, depth + 1));
  if (rng.next() < 0.45) parts.push(zipf(rng, lex.adjectives));
  if (rng.next() < 0.1) parts.push(zipf(rng, lex.adjectives));
  const plural = rng.next() < 0.35;
  parts.push(`${zipf(rng, animate ? lex.animate : lex.inanimate)}${plural ? 'лар' : ''}${kase}`);
  return parts.join(' ');
}

/** A participial relative clause: (object) verb-ган, before the noun it modifies. */
function kyrishRelative(rng: Rng, lex: Lexicon, depth: number): string {
  if (rng.next() < 0.6) {
    const v = zipf(rng, lex.transitive);
    return `${kyrishNp(rng, lex, !!v.animateObject, 'ну', depth)} ${v.stem}ган`;
  }
  return `${zipf(rng, lex.intransitive).stem}ган`;
}

function kyrishVerb(rng: Rng, stem: string): string {
  return `${rng.next() < 0.12 ? 'не' : ''}${stem}${rng.next() < 0.45 ? 'ал' : 'ит'}`;
}

function kyrishClause(rng: Rng, lex: Lexicon): string {
  const parts = [kyrishNp(rng, lex, true, '', 0)];
  if (rng.next() < 0.3) parts.push(kyrishNp(rng, lex, false, 'да', 1));
  if (rng.next() < 0.65) {
    const v = zipf(rng, lex.transitive);
    parts.push(kyrishNp(rng, lex, !!v.animateObject, 'ну', 0), kyrishVerb(rng, v.stem));
  } else {
    parts.push(kyrishVerb(rng, zipf(rng, lex.intransitive).stem));
  }
  return parts.join(' ');
}

function kyrishSentence(rng: Rng, lex: Lexicon): string {
  let s = kyrishClause(rng, lex);
  if (rng.next() < 0.2) s += ` и ${kyrishClause(rng, lex)}`;
  return s.charAt(0).toUpperCase() + s.slice(1) + '.';
}

// ---------------------------------------------------------------------------------------------------

/** One sentence of the language (seeded by `rng`). */
export function sentence(lang: LanguageName, rng: Rng): string {
  const lex = lexicon(lang);
  return lang === 'velan' ? velanSentence(rng, lex) : kyrishSentence(rng, lex);
}

/** `count` documents (paragraphs of 3–7 sentences) of one language, or of both in alternation with 'all'. */
export function languageDocs(lang: LanguageName | 'all', count: number, seed: number): string[] {
  if (!Number.isSafeInteger(count) || count < 0) throw new Err(`document count must be a non-negative integer, got ${count}`);
  const rng = new Rng(mixSeeds(seed, 'language-docs', lang));
  const docs: string[] = [];
  for (let i = 0; i < count; i++) {
    const l: LanguageName = lang === 'all' ? LANGUAGE_NAMES[i % 2] : lang;
    const n = rng.int(3, 7);
    const ss: string[] = [];
    for (let j = 0; j < n; j++) ss.push(sentence(l, rng));
    docs.push(ss.join(' '));
  }
  return docs;
}

/** A data spec's part: `language:velan`, `language:kyrish`, `language:all` (or `language`). */
export function parseLanguageSpec(spec: string, what: string): LanguageName | 'all' {
  const part = spec.includes(':') ? spec.slice(spec.indexOf(':') + 1) : 'all';
  if (part !== 'all' && !(LANGUAGE_NAMES as readonly string[]).includes(part)) {
    throw new Err(`${what} "${spec}": choose language:velan (kept, Latin script), language:kyrish (forgotten, Cyrillic) or language:all`);
  }
  return part as LanguageName | 'all';
}
