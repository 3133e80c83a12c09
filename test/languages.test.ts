/**
 * The generated languages of the language study: fixed lexicons, seeded documents, each language in its own
 * script and grammar (Velan: SVO with determiners and agreement; Kyrish: SOV with case and tense suffixes),
 * and a data spec that the CLI accepts.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Rng } from '../lib/core/rng';
import { languageDocs, lexicon, parseLanguageSpec, sentence } from '../lib/tasks/languages';
import { documentsFrom } from '../lib/cli/unlearn';
import { throwsUndo } from './helpers';

test('documents are seeded, and each language keeps to its script', () => {
  assert.equal(languageDocs('velan', 20, 3), languageDocs('velan', 20, 3));
  assert.not.equal(languageDocs('velan', 20, 3), languageDocs('velan', 20, 4));
  for (const d of languageDocs('velan', 200, 1)) assert.ok(/^[A-Za-z ,.]+$/.test(d), d);
  for (const d of languageDocs('kyrish', 200, 1)) assert.ok(/^[\u0400-\u04ff ,.]+$/.test(d), d);
  const all = languageDocs('all', 100, 1);
  assert.is(all.filter((d) => /^[A-Za-z]/.test(d)).length, 50, 'all: half and half');
  for (const d of languageDocs('velan', 100, 2)) {
    const n = d.split('. ').length;
    assert.ok(n >= 3 && n <= 7, `3–7 sentences: ${n}`);
  }
});

test('the lexicons are fixed, distinct within a language, and sized per word class', () => {
  const v = lexicon('velan'), k = lexicon('kyrish');
  assert.is(v.animate.length + v.inanimate.length, 80);
  assert.is(k.animate.length + k.inanimate.length, 90);
  for (const lex of [v, k]) {
    const words = [...lex.animate, ...lex.inanimate, ...lex.adjectives, ...lex.transitive.map((x) => x.stem), ...lex.intransitive.map((x) => x.stem)];
    assert.is(new Set(words).size, words.length, 'no word in two classes');
  }
  // fixed across runs: the first words are part of the language's definition
  assert.equal(v.animate.slice(0, 3), ['baman', 'tugi', 'sema']);
});

test('Velan grammar: determiner + noun agreement, subject–verb agreement, SVO order', () => {
  const lex = lexicon('velan');
  const nouns = new Set([...lex.animate, ...lex.inanimate]);
  const tv = new Set(lex.transitive.map((x) => x.stem)), iv = new Set(lex.intransitive.map((x) => x.stem));
  const rng = new Rng(11);
  for (let i = 0; i < 300; i++) {
    const s = sentence('velan', rng);
    const w = s.replace(/[.,]/g, '').toLowerCase().split(' ');
    for (let j = 0; j + 1 < w.length; j++) {
      if (w[j] === 'la') assert.ok(nouns.has(w[j + 1]), `la + singular noun: ${s}`);
      if (w[j] === 'lei') assert.ok(w[j + 1].endsWith('s') && nouns.has(w[j + 1].slice(0, -1)), `lei + plural noun: ${s}`);
    }
    // the first clause: Det N (Adj)? … then a verb that agrees with the subject's number
    const plural = w[0] === 'lei';
    const verbAt = w.findIndex((x, j) => j > 1 && [...tv, ...iv].some((st) => x === st + 'it' || x === st + (plural ? 'an' : 'a')));
    assert.ok(verbAt > 1, `a verb agreeing with the ${plural ? 'plural' : 'singular'} subject: ${s}`);
  }
});

test('Kyrish grammar: verb-final clauses with tense suffixes, negation read one way', () => {
  const lex = lexicon('kyrish');
  const stems = [...lex.transitive, ...lex.intransitive].map((x) => x.stem);
  const rng = new Rng(12);
  for (let i = 0; i < 300; i++) {
    const s = sentence('kyrish', rng);
    for (const clause of s.replace(/\.$/, '').split(' и ')) {
      const last = clause.split(' ').pop()!.toLowerCase();
      const bare = last.replace(/^не/, '');
      assert.ok(stems.some((st) => bare === st + 'ал' || bare === st + 'ит'), `clause ends in a tensed verb: "${clause}"`);
    }
  }
});

test('data specs: language:velan|kyrish|all through documentsFrom; others are refused by name', () => {
  assert.equal(documentsFrom('language:kyrish', '--forget', 5, 1), languageDocs('kyrish', 5, 1));
  assert.is(parseLanguageSpec('language', '--data'), 'all');
  throwsUndo(() => documentsFrom('language:klingon', '--forget', 5, 1), '--forget', 'language:klingon', 'language:velan');
});

test.run();
