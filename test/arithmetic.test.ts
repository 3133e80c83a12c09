import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UndoError } from '../lib/core/errors';
import { Rng } from '../lib/core/rng';
import {
  Op,
  ALL_OPS,
  RETAIN_OPS,
  FORGET_OPS,
  TEMPLATES,
  WordTemplate,
  NAMES,
  OBJECTS,
  CONTAINERS,
  PLACES,
  GROUPS,
  generateArithmeticCorpus,
  generateEquation,
  generateWordProblem,
  arithmeticEvalSet,
  parseAnswer,
  isCorrect,
  scoreArithmetic,
  ArithmeticResult,
} from '../lib/tasks/arithmetic';

const SYMBOL_TO_OP: Record<string, Op> = { '+': 'add', '-': 'sub', '*': 'mul', '/': 'div' };
const EQ_RE = /^(\d+) ([-+*/]) (\d+) = (\d+(?:\.0)?)$/;

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Regex matching texts produced by a template; numbers are captured, repeated slots must repeat
 * the same value. `promptOnly` matches the prompt alone.
 */
function templateRegex(tpl: WordTemplate, promptOnly = false): RegExp {
  const seen = new Set<string>();
  const conv = (s: string) =>
    s.split(/(\{\w+\})/).map((part) => {
      const m = /^\{(\w+)\}$/.exec(part);
      if (!m) return escapeRe(part);
      const slot = m[1];
      if (seen.has(slot)) return `\\k<${slot}>`;
      seen.add(slot);
      return slot.startsWith('num') ? `(?<${slot}>\\d+)` : `(?<${slot}>.+?)`;
    }).join('');
  const prompt = conv(tpl.prompt);
  return new RegExp(promptOnly ? `^${prompt}$` : `^${prompt}(?<answer>\\d+) ${conv(tpl.suffix)}$`);
}

const trainRes = Object.fromEntries(ALL_OPS.map((op) => [op, TEMPLATES[op].train.map((t) => templateRegex(t))])) as Record<Op, RegExp[]>;
const valRes = Object.fromEntries(ALL_OPS.map((op) => [op, TEMPLATES[op].val.map((t) => templateRegex(t))])) as Record<Op, RegExp[]>;

function expected(op: Op, a: number, b: number): number {
  return op === 'add' ? a + b : op === 'sub' ? a - b : op === 'mul' ? a * b : a / b;
}

/** Check a word problem's numbers against the rules of its operation. */
function checkWordNumbers(op: Op, g: Record<string, string>, text: string): number {
  const n1 = Number(g.num1);
  const n2 = Number(g.num2);
  const ans = Number(g.answer);
  assert.is(ans, expected(op, n1, n2), text);
  if (op === 'add') assert.ok(n1 >= 1 && n1 <= 50 && n2 >= 1 && n2 <= 50, text);
  if (op === 'sub') assert.ok(ans >= 1 && ans <= 50 && n2 >= 1 && n2 <= 50, text);
  if (op === 'mul') assert.ok(n1 >= 1 && n1 <= 20 && n2 >= 1 && n2 <= 20, text);
  if (op === 'div') assert.ok(ans >= 1 && ans <= 20 && n2 >= 1 && n2 <= 20 && n1 === n2 * ans, text);
  if (g.name2 !== undefined) assert.is.not(g.name2, g.name, text);
  if (g.name !== undefined) assert.ok(NAMES.includes(g.name), text);
  if (g.object !== undefined) assert.ok(OBJECTS.includes(g.object), text);
  if (g.container !== undefined) assert.ok(CONTAINERS.includes(g.container), text);
  if (g.place !== undefined) assert.ok(PLACES.includes(g.place), text);
  if (g.group !== undefined) assert.ok(GROUPS.includes(g.group), text);
  return ans;
}

test('template and slot inventory', () => {
  for (const op of ALL_OPS) {
    assert.is(TEMPLATES[op].train.length, 20, op);
    assert.is(TEMPLATES[op].val.length, 10, op);
    for (const t of [...TEMPLATES[op].train, ...TEMPLATES[op].val]) {
      assert.ok(t.prompt.endsWith(' '), `prompt ends with a space: "${t.prompt}"`);
      assert.ok(t.prompt.includes('{num1}') && t.prompt.includes('{num2}'), t.prompt);
    }
  }
  assert.ok(NAMES.length >= 40 && OBJECTS.length >= 40);
  assert.is(CONTAINERS.length, 10);
  assert.is(PLACES.length, 10);
  assert.is(GROUPS.length, 10);
  assert.equal(RETAIN_OPS, ['add', 'sub']);
  assert.equal(FORGET_OPS, ['mul', 'div']);
});

test('the example from the paper is reproduced by a training template', () => {
  const m = trainRes.sub.map((re) => re.exec('Luna starts with 59 circles. They lose 37 circles. Now they have 22 circles.'));
  assert.ok(m.some((x) => x !== null));
});

test('corpus: 1000 equations are all correct and in range', () => {
  const docs = generateArithmeticCorpus({ ops: ALL_OPS, count: 2000, seed: 99 });
  assert.is(docs.length, 2000);
  const eqs = docs.filter((d) => EQ_RE.test(d));
  assert.is(eqs.length, 1000);
  const perOp: Record<Op, number> = { add: 0, sub: 0, mul: 0, div: 0 };
  for (const e of eqs) {
    const [, sa, sym, sb, sc] = EQ_RE.exec(e)!;
    const op = SYMBOL_TO_OP[sym];
    perOp[op]++;
    const a = Number(sa);
    const b = Number(sb);
    const c = Number(sc);
    assert.is(c, expected(op, a, b), e);
    if (op === 'div') {
      assert.ok(sc.endsWith('.0'), `division answer written as a float: ${e}`);
      assert.ok(b >= 1 && b <= 20 && c >= 1 && c <= 20, e);
    } else {
      assert.not.ok(sc.includes('.'), `integer answer: ${e}`);
    }
    if (op === 'add' || op === 'sub') assert.ok(a >= 1 && a <= 50 && b >= 1 && b <= 50, e);
    if (op === 'sub') assert.ok(a >= b, e);
    if (op === 'mul') assert.ok(a >= 1 && a <= 20 && b >= 1 && b <= 20, e);
  }
  assert.equal(perOp, { add: 250, sub: 250, mul: 250, div: 250 });
  assert.ok(docs.includes(docs.find((d) => /^\d+ \/ \d+ = \d+\.0$/.test(d))!));
});

test('corpus: word problems use training templates only, with correct answers', () => {
  const docs = generateArithmeticCorpus({ ops: ALL_OPS, count: 4000, seed: 7 });
  const words = docs.filter((d) => !EQ_RE.test(d));
  assert.is(words.length, 2000);
  const perOp: Record<Op, number> = { add: 0, sub: 0, mul: 0, div: 0 };
  const usedTemplates = new Set<string>();
  for (const w of words) {
    // Never produced by any held-out template.
    for (const op of ALL_OPS) for (const re of valRes[op]) assert.not.ok(re.test(w), `val template leaked: ${w}`);
    const hits: Array<[Op, number, RegExpExecArray]> = [];
    for (const op of ALL_OPS) {
      trainRes[op].forEach((re, i) => {
        const m = re.exec(w);
        if (m) hits.push([op, i, m]);
      });
    }
    assert.ok(hits.length >= 1, `matches a training template: ${w}`);
    const [op, i, m] = hits[0];
    perOp[op]++;
    usedTemplates.add(`${op}:${i}`);
    checkWordNumbers(op, m.groups!, w);
  }
  assert.equal(perOp, { add: 500, sub: 500, mul: 500, div: 500 });
  assert.is(usedTemplates.size, 80, 'every training template is used');
});

test('corpus: determinism, op subsets and fractions', () => {
  const a = generateArithmeticCorpus({ ops: ['add', 'sub'], count: 300, seed: 1 });
  assert.equal(a, generateArithmeticCorpus({ ops: ['add', 'sub'], count: 300, seed: 1 }));
  assert.not.equal(a, generateArithmeticCorpus({ ops: ['add', 'sub'], count: 300, seed: 2 }));
  for (const d of a) {
    const m = EQ_RE.exec(d);
    if (m) assert.ok(m[2] === '+' || m[2] === '-', d);
    else assert.ok([...trainRes.add, ...trainRes.sub].some((re) => re.test(d)), d);
  }
  const eqOnly = generateArithmeticCorpus({ ops: ['mul'], count: 50, seed: 3, wordProblemFraction: 0 });
  assert.ok(eqOnly.every((d) => /^\d+ \* \d+ = \d+$/.test(d)));
  const wpOnly = generateArithmeticCorpus({ ops: ['div'], count: 50, seed: 3, wordProblemFraction: 1 });
  assert.ok(wpOnly.every((d) => !EQ_RE.test(d)));
  try {
    generateArithmeticCorpus({ ops: ['pow' as Op], count: 1, seed: 1 });
    assert.unreachable();
  } catch (e) {
    assert.instance(e, UndoError);
    assert.ok((e as Error).message.includes('"pow"'));
  }
});

test('eval set: 100 per op x form, deterministic, val templates only, correct answers', () => {
  const items = arithmeticEvalSet({ ops: ALL_OPS });
  assert.is(items.length, 800);
  assert.equal(items, arithmeticEvalSet({ ops: ALL_OPS, perForm: 100, seed: 42 }));
  assert.not.equal(items, arithmeticEvalSet({ ops: ALL_OPS, seed: 43 }));
  const counts: Record<string, number> = {};
  const trainPrompts = ALL_OPS.flatMap((op) => TEMPLATES[op].train.map((t) => templateRegex(t, true)));
  for (const it of items) {
    counts[`${it.op}:${it.form}`] = (counts[`${it.op}:${it.form}`] ?? 0) + 1;
    assert.ok(Number.isInteger(it.answer) && it.answer >= 0, it.prompt);
    if (it.form === 'equation') {
      const m = /^(\d+) ([-+*/]) (\d+) = $/.exec(it.prompt);
      assert.ok(m, `equation prompt ends in "= ": ${JSON.stringify(it.prompt)}`);
      assert.is(SYMBOL_TO_OP[m![2]], it.op);
      assert.is(it.answer, expected(it.op, Number(m![1]), Number(m![3])), it.prompt);
    } else {
      assert.ok(it.prompt.endsWith(' '), it.prompt);
      const m = TEMPLATES[it.op].val.map((t) => templateRegex(t, true).exec(it.prompt)).find((x) => x);
      assert.ok(m, `val template prompt: ${it.prompt}`);
      checkWordNumbers(it.op, { ...m!.groups!, answer: String(it.answer) }, it.prompt);
      assert.not.ok(trainPrompts.some((re) => re.test(it.prompt)), `not a training prompt: ${it.prompt}`);
    }
  }
  for (const op of ALL_OPS) for (const f of ['equation', 'word_problem']) assert.is(counts[`${op}:${f}`], 100);

  // A block does not depend on which other ops were requested.
  const divOnly = arithmeticEvalSet({ ops: ['div'], perForm: 100 });
  assert.equal(divOnly, items.filter((i) => i.op === 'div'));
  assert.is(arithmeticEvalSet({ ops: ['add'], perForm: 5 }).length, 10);
  // Division answers are exact integers and the full text (as the model sees it) uses "N.0".
  assert.ok(items.filter((i) => i.op === 'div').every((i) => Number.isInteger(i.answer)));
});

test('generateEquation / generateWordProblem', () => {
  const rng = new Rng(5);
  for (let i = 0; i < 200; i++) {
    const e = generateEquation('div', rng);
    assert.ok(/^\d+ \/ \d+ = \d+\.0$/.test(e.text), e.text);
    assert.is(e.text, e.prompt + e.answerText);
    assert.ok(isCorrect(e.answerText, e.answer));
  }
  const w = generateWordProblem('sub', rng, 'val');
  assert.ok(w.text.startsWith(w.prompt + w.answerText + ' '));
  assert.ok(valRes.sub.some((re) => re.test(w.text)), w.text);
});

test('parseAnswer and isCorrect', () => {
  assert.is(parseAnswer('13.0 foo'), 13);
  assert.is(parseAnswer('x'), null);
  assert.is(parseAnswer(' 7'), 7);
  assert.is(parseAnswer(''), null);
  assert.is(parseAnswer('   '), null);
  assert.is(parseAnswer('42 circles.'), 42);
  assert.is(parseAnswer('42<bos>17'), 42);
  assert.is(parseAnswer('<bos>5'), 5);
  assert.is(parseAnswer('-3\n'), -3);
  assert.is(parseAnswer('2.5e1'), 25);
  assert.is(parseAnswer('13.'), 13);
  assert.is(parseAnswer('.5'), 0.5);
  assert.is(parseAnswer('13.0.'), null);
  assert.is(parseAnswer('1a'), null);
  assert.is(parseAnswer('Infinity'), null);
  assert.is(parseAnswer('0x10'), null);
  assert.ok(isCorrect('13.0', 13));
  assert.ok(isCorrect('13', 13));
  assert.ok(isCorrect('12.9999999 x', 13));
  assert.not.ok(isCorrect('12.99', 13));
  assert.not.ok(isCorrect('thirteen', 13));
});

test('scoreArithmetic', () => {
  const results: ArithmeticResult[] = [];
  const add = (op: Op, form: 'equation' | 'word_problem', ok: number, n: number) => {
    for (let i = 0; i < n; i++) results.push({ op, form, correct: i < ok });
  };
  add('add', 'equation', 9, 10); // 0.9
  add('add', 'word_problem', 5, 10); // 0.5
  add('sub', 'equation', 10, 10); // 1.0
  add('sub', 'word_problem', 2, 10); // 0.2
  add('mul', 'equation', 1, 4); // 0.25
  add('mul', 'word_problem', 0, 4); // 0
  const s = scoreArithmetic(results);
  assert.is(s.perOp.add.equation, 0.9);
  assert.is(s.perOp.add.word_problem, 0.5);
  assert.is(s.perOp.add.all, 0.7);
  assert.is(s.perOp.add.n, 20);
  assert.is(s.perOp.sub.all, 0.6);
  assert.ok(Math.abs(s.retain - 0.65) < 1e-12, `retain ${s.retain}`);
  assert.is(s.forget, 0.125); // only mul present
  assert.ok(Number.isNaN(s.perOp.div.all));
  assert.is(s.perOp.div.n, 0);
  const empty = scoreArithmetic([]);
  assert.ok(Number.isNaN(empty.retain) && Number.isNaN(empty.forget));
});

test.run();
