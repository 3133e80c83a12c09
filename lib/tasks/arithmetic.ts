/**
 * The UNDO paper's synthetic arithmetic task (Lee, Foote et al. 2025, "Distillation Robustifies
 * Unlearning"; see shared/research/undo.md §2).
 *
 * Retain skill: addition and subtraction. Forget skill: multiplication and division.
 * Each operation appears in two forms:
 *
 *  - equations, written "a op b = c":
 *      add  a, b in 1..50                          "12 + 30 = 42"
 *      sub  a, b in 1..50, ordered so that c >= 0  "30 - 12 = 18"
 *      mul  a, b in 1..20                          "7 * 13 = 91"
 *      div  built from a product a*b, the answer written like a Python float
 *                                                  "91 / 7 = 13.0"
 *  - word problems, filled from templates with the slots {name}, {name2}, {object}, {place},
 *    {container}, {group}, {num1}, {num2}. The document text is
 *        prompt + answer + " " + suffix
 *    e.g. "Luna starts with 59 circles. They lose 37 circles. Now they have 22 circles."
 *      add  num1, num2 in 1..50, answer = num1 + num2
 *      sub  answer in 1..50, num2 in 1..50, num1 = answer + num2
 *      mul  num1, num2 in 1..20, answer = num1 * num2
 *      div  answer in 1..20, num2 in 1..20, num1 = num2 * answer (always an integer)
 *
 * Every operation has 20 training templates and 10 held-out validation templates. Training
 * documents only use the training templates; evaluation word problems only use the
 * validation ones, so evaluation measures generalisation to unseen phrasings.
 *
 * Evaluation: the prompt is the text up to the answer (equations end in "= " with the trailing
 * space); the model greedily generates a few tokens; the first whitespace-delimited piece is
 * parsed as a float and is correct if it is within 1e-6 of the answer.
 */
import { UndoError, errorClass } from '../core/errors';
import { Rng, mixSeeds } from '../core/rng';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export type Op = 'add' | 'sub' | 'mul' | 'div';
export type ArithmeticForm = 'equation' | 'word_problem';

export const ALL_OPS: readonly Op[] = ['add', 'sub', 'mul', 'div'];
export const RETAIN_OPS: readonly Op[] = ['add', 'sub'];
export const FORGET_OPS: readonly Op[] = ['mul', 'div'];
export const FORMS: readonly ArithmeticForm[] = ['equation', 'word_problem'];

export const OP_SYMBOL: Readonly<Record<Op, string>> = { add: '+', sub: '-', mul: '*', div: '/' };

// ---------------------------------------------------------------------------------------------
// Slot vocabularies
// ---------------------------------------------------------------------------------------------

export const NAMES: readonly string[] = [
  'Luna', 'Omar', 'Priya', 'Mateo', 'Aisha', 'Kenji', 'Sofia', 'Liam', 'Zara', 'Noah',
  'Emma', 'Ravi', 'Chloe', 'Diego', 'Hana', 'Felix', 'Amara', 'Jonas', 'Mei', 'Tariq',
  'Ingrid', 'Kofi', 'Elena', 'Marcus', 'Yuki', 'Nadia', 'Oscar', 'Leila', 'Hugo', 'Anya',
  'Samir', 'Clara', 'Tomas', 'Ines', 'Malik', 'Freya', 'Arjun', 'Greta', 'Pablo', 'Sana',
];

/** Plural nouns, used after a number ("12 marbles"). */
export const OBJECTS: readonly string[] = [
  'apples', 'marbles', 'stickers', 'pencils', 'coins', 'books', 'cookies', 'circles', 'stamps', 'shells',
  'balloons', 'crayons', 'buttons', 'cards', 'toy cars', 'oranges', 'feathers', 'beads', 'candles', 'blocks',
  'erasers', 'cupcakes', 'rocks', 'ribbons', 'acorns', 'puzzles', 'tickets', 'bottles', 'flowers', 'keys',
  'spoons', 'socks', 'eggs', 'lemons', 'paperclips', 'notebooks', 'magnets', 'pebbles', 'batteries', 'postcards',
];

/** Singular nouns whose plural is formed by appending "s" (templates write "{container}s"). */
export const CONTAINERS: readonly string[] = [
  'basket', 'bag', 'jar', 'crate', 'bucket', 'drawer', 'backpack', 'tin', 'bowl', 'carton',
];

export const PLACES: readonly string[] = [
  'the park', 'the library', 'the market', 'school', 'the beach',
  'the garden', 'the museum', 'the bakery', 'the farm', 'the zoo',
];

/** Plural nouns for groups of people. */
export const GROUPS: readonly string[] = [
  'friends', 'classmates', 'teammates', 'neighbors', 'cousins',
  'students', 'campers', 'players', 'volunteers', 'siblings',
];

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/** A word-problem template: text = fill(prompt) + answer + " " + fill(suffix). */
export interface WordTemplate {
  prompt: string;
  suffix: string;
}

const t = (prompt: string, suffix: string): WordTemplate => ({ prompt, suffix });

/** Training and held-out validation templates per operation (20 + 10 each). */
export const TEMPLATES: Readonly<Record<Op, { train: readonly WordTemplate[]; val: readonly WordTemplate[] }>> = {
  add: {
    train: [
      t('{name} has {num1} {object}. {name2} gives them {num2} more {object}. Now {name} has ', '{object}.'),
      t('{name} picks {num1} {object} in the morning and {num2} {object} in the afternoon. In total {name} picks ', '{object}.'),
      t('There are {num1} {object} in the {container}. {name} puts in {num2} more. Now there are ', '{object} in the {container}.'),
      t('{name} buys {num1} {object} at {place} and then buys {num2} more. Altogether {name} bought ', '{object}.'),
      t('{name} collects {num1} {object} and {name2} collects {num2} {object}. Together they collect ', '{object}.'),
      t('On Monday {name} found {num1} {object}. On Tuesday {name} found {num2} {object}. Over both days {name} found ', '{object}.'),
      t('A {container} holds {num1} red {object} and {num2} blue {object}. The {container} holds ', '{object} in all.'),
      t('{name} starts with {num1} {object}. They get {num2} more {object}. Now they have ', '{object}.'),
      t('At {place}, {num1} {group} arrive in the morning and {num2} more arrive later. The number of {group} at {place} is ', 'in total.'),
      t('{name} read {num1} pages on Saturday and {num2} pages on Sunday. {name} read ', 'pages over the weekend.'),
      t('{name} had {num1} {object} and won {num2} more in a game. {name} now has ', '{object}.'),
      t('{name} packs {num1} {object} into a {container} and {name2} adds {num2} {object}. The {container} now contains ', '{object}.'),
      t('The {group} planted {num1} trees last year and {num2} trees this year. They planted ', 'trees altogether.'),
      t('{name} saved {num1} dollars and then earned {num2} dollars more. {name} has ', 'dollars now.'),
      t('There were {num1} people at {place}. Then {num2} more people came. Now there are ', 'people at {place}.'),
      t('{name} counted {num1} birds in one tree and {num2} birds in another. {name} counted ', 'birds.'),
      t('{name2} hands {name} {num1} {object}, and later another {num2} {object}. {name} received ', '{object} altogether.'),
      t('{name} walks {num1} minutes to {place} and {num2} minutes back home. The walk takes ', 'minutes in total.'),
      t('A shelf has {num1} {object} on top and {num2} {object} on the bottom. The shelf has ', '{object} in total.'),
      t('{name} baked {num1} muffins and {name2} baked {num2} muffins for the {group}. They baked ', 'muffins together.'),
    ],
    val: [
      t('{name} owns {num1} {object}. For a birthday, {name2} brings {num2} extra {object}. The new total is ', '{object}.'),
      t('In the {container} near the door sit {num1} {object}; {name} drops {num2} more inside. The {container} ends up with ', '{object}.'),
      t('{name} scored {num1} points in the first half and {num2} points in the second half, finishing with ', 'points.'),
      t('Yesterday {num1} {group} visited {place}, and today {num2} {group} came. Across the two days the count of visitors is ', 'in total.'),
      t('{name} gathers {num1} {object} from {place} and {num2} {object} from home. Combined, {name} gathers ', '{object}.'),
      t('A train carries {num1} passengers, and at the next stop {num2} passengers board. The train now carries ', 'passengers.'),
      t('{name} and {name2} pool their {object}: {num1} from {name} and {num2} from {name2}. The pool contains ', '{object}.'),
      t('Adding {num2} {object} to a pile of {num1} {object} gives a pile of ', '{object}.'),
      t('{name} jogged {num1} laps in the morning and {num2} laps at night, totalling ', 'laps for the day.'),
      t('The {group} brought {num1} sandwiches and {num2} salads to {place}. The number of dishes they brought is ', 'in all.'),
    ],
  },
  sub: {
    train: [
      t('{name} starts with {num1} {object}. They lose {num2} {object}. Now they have ', '{object}.'),
      t('{name} has {num1} {object} and gives {num2} of them to {name2}. {name} has ', '{object} left.'),
      t('There are {num1} {object} in the {container}. {name} takes out {num2}. Now there are ', '{object} in the {container}.'),
      t('{name} bought {num1} {object} at {place} and used {num2} of them. {name} has ', '{object} remaining.'),
      t('A {container} held {num1} {object}, but {num2} {object} fell out. The {container} still holds ', '{object}.'),
      t('{name} had {num1} dollars and spent {num2} dollars at {place}. {name} has ', 'dollars left.'),
      t('There were {num1} {group} at {place}. Then {num2} of them went home. Now there are ', '{group} at {place}.'),
      t('{name} baked {num1} cookies and the {group} ate {num2} of them. There are ', 'cookies left.'),
      t('{name} needs to read {num1} pages and has read {num2} pages so far. {name} still has ', 'pages to read.'),
      t('{name} collected {num1} {object}, then lost {num2} {object} on the way to {place}. {name} now has ', '{object}.'),
      t('{name2} borrows {num2} of the {num1} {object} that {name} owns. {name} is left with ', '{object}.'),
      t('A bus has {num1} passengers. At {place}, {num2} passengers get off. Now the bus has ', 'passengers.'),
      t('{name} sold {num2} of {num1} {object} at {place}. {name} kept ', '{object}.'),
      t('{name} has {num1} {object}. After giving away {num2} {object}, {name} has ', '{object}.'),
      t('The {container} had {num1} {object}. {name} removed {num2} {object} from the {container}. It now has ', '{object}.'),
      t('{name} planted {num1} seeds, but {num2} of them did not grow. The seeds that grew number ', 'in all.'),
      t('{name} had {num1} stickers and put {num2} of them in an album. {name} has ', 'stickers left to place.'),
      t('The trip to {place} is {num1} kilometers long. {name} has driven {num2} kilometers. There are ', 'kilometers left.'),
      t('{name} had {num1} {object} before {name2} took {num2} {object}. {name} now has ', '{object}.'),
      t('Out of {num1} {object} in the {container}, {num2} are broken. The number of good {object} is ', 'in the {container}.'),
    ],
    val: [
      t('{name} owned {num1} {object} until a storm carried away {num2} of them. What remains is ', '{object}.'),
      t('From a stack of {num1} {object}, {name2} removes {num2}. The stack shrinks to ', '{object}.'),
      t('A tank starts the day with {num1} liters of water and {num2} liters leak out, leaving ', 'liters in the tank.'),
      t('{name} promised {num1} {object} to the {group} but delivered only {num2}, still owing ', '{object}.'),
      t('Of the {num1} {group} invited to {place}, {num2} could not come, so the number attending was ', '{group}.'),
      t('{name} was holding {num1} {object} and dropped {num2} into the river, keeping ', '{object} in hand.'),
      t('The {container} on the shelf contained {num1} {object}; after {name} used {num2}, it contained ', '{object}.'),
      t('Taking {num2} {object} away from {num1} {object} leaves ', '{object}.'),
      t('{name} ran {num1} laps while {name2} ran {num2} laps, so {name} ran ', 'more laps.'),
      t('Before the sale, the shop near {place} stocked {num1} {object}; customers bought {num2}, and the stock fell to ', '{object}.'),
    ],
  },
  mul: {
    train: [
      t('{name} has {num1} {container}s with {num2} {object} in each. {name} has ', '{object} in total.'),
      t('There are {num1} {group} and each one has {num2} {object}. Altogether they have ', '{object}.'),
      t('{name} buys {num1} packs of {object} at {place}. Each pack has {num2} {object}. {name} buys ', '{object}.'),
      t('A garden has {num1} rows with {num2} flowers in each row. The garden has ', 'flowers.'),
      t('{name} reads {num2} pages every day for {num1} days. {name} reads ', 'pages in all.'),
      t('Each of the {num1} {container}s at {place} holds {num2} {object}. The {container}s hold ', '{object} in total.'),
      t('{name} makes {num1} trips and carries {num2} {object} on each trip. {name} carries ', '{object}.'),
      t('A classroom has {num1} tables and {num2} chairs at each table. There are ', 'chairs.'),
      t('{name} saves {num2} dollars every week for {num1} weeks. {name} saves ', 'dollars.'),
      t('{name} gives {num2} {object} to each of {num1} {group}. {name} gives away ', '{object}.'),
      t('{name2} stacks {num1} layers of {object}, with {num2} {object} in each layer. The stack has ', '{object}.'),
      t('There are {num1} shelves in {place}, and each shelf holds {num2} books. The shelves hold ', 'books in all.'),
      t('{name} plants {num1} rows of seeds with {num2} seeds per row. {name} plants ', 'seeds.'),
      t('A box of crayons has {num2} crayons. {name} buys {num1} boxes. {name} has ', 'crayons.'),
      t('{name} runs {num2} laps each day for {num1} days. {name} runs ', 'laps.'),
      t('The {group} form {num1} teams of {num2} players each. There are ', 'players.'),
      t('{name} fills {num1} {container}s and puts {num2} {object} into every one. {name} uses ', '{object}.'),
      t('A bakery sells {num1} trays of muffins with {num2} muffins on each tray. The bakery sells ', 'muffins.'),
      t('{name} and the {group} set up {num1} tents, and {num2} people sleep in each tent. There are ', 'people in the tents.'),
      t('Each ticket to {place} costs {num2} dollars. {name} buys {num1} tickets and pays ', 'dollars.'),
    ],
    val: [
      t('{num1} spiders each guard {num2} eggs, for a total of ', 'eggs.'),
      t('{name} arranges {object} in a grid of {num1} by {num2}, using ', '{object}.'),
      t('Every one of the {num1} {group} at {place} brings {num2} {object}, so the pile grows to ', '{object}.'),
      t('{name2} pays {num2} coins per ride and takes {num1} rides, spending ', 'coins.'),
      t('If one {container} fits {num2} {object}, then {num1} {container}s fit ', '{object}.'),
      t('A parking lot has {num1} levels with {num2} cars parked on each level, which makes ', 'cars.'),
      t('{name} practices piano {num2} minutes a day; after {num1} days the practice adds up to ', 'minutes.'),
      t('Combining {num1} groups of {num2} {object} gives ', '{object}.'),
      t('The {group} folded {num2} paper cranes each day for {num1} days, making ', 'cranes.'),
      t('On {num1} pages of the album, {name} glued {num2} photos per page, adding up to ', 'photos.'),
    ],
  },
  div: {
    train: [
      t('{name} has {num1} {object} and shares them equally among {num2} {group}. Each of the {group} gets ', '{object}.'),
      t('There are {num1} {object} packed equally into {num2} {container}s. Each {container} has ', '{object}.'),
      t('{name} divides {num1} {object} into {num2} equal piles. Each pile has ', '{object}.'),
      t('{num1} students are split into {num2} equal teams. Each team has ', 'students.'),
      t('{name} reads {num1} pages in {num2} days, the same number each day. Each day {name} reads ', 'pages.'),
      t('{name} paid {num1} dollars for {num2} tickets to {place}. Each ticket cost ', 'dollars.'),
      t('A baker puts {num1} muffins onto {num2} trays equally. Each tray holds ', 'muffins.'),
      t('{name} plants {num1} seeds in {num2} equal rows. Each row has ', 'seeds.'),
      t('{name2} has {num1} {object} to put into {num2} {container}s equally. Every {container} gets ', '{object}.'),
      t('The {group} share {num1} cookies equally among {num2} people. Each person gets ', 'cookies.'),
      t('{name} saved {num1} dollars over {num2} weeks, the same amount each week. Every week {name} saved ', 'dollars.'),
      t('{name} ran {num1} laps in {num2} days, the same number every day. Each day {name} ran ', 'laps.'),
      t('At {place}, {num1} chairs are set out in {num2} equal rows. Each row has ', 'chairs.'),
      t('{name} cuts a {num1} centimeter ribbon into {num2} equal pieces. Each piece is ', 'centimeters long.'),
      t('{name} splits {num1} {object} evenly between {num2} bags. Each bag gets ', '{object}.'),
      t('A {container} of {num1} {object} is divided equally among {num2} {group}. Each one receives ', '{object}.'),
      t('{name} needs {num1} minutes to finish {num2} puzzles, taking the same time for each. Each puzzle takes ', 'minutes.'),
      t('There are {num1} wheels on {num2} identical carts. Each cart has ', 'wheels.'),
      t('{name} hands out {num1} {object} to {num2} {group} so that everyone gets the same number. Each gets ', '{object}.'),
      t('A farmer puts {num1} eggs into {num2} cartons equally. Each carton holds ', 'eggs.'),
    ],
    val: [
      t('When {num1} {object} are dealt evenly to {num2} players, every player ends up with ', '{object}.'),
      t('{name} pours {num1} liters of juice into {num2} identical jugs, filling each jug with ', 'liters.'),
      t('A {num1} kilometer route is split into {num2} legs of equal length, so each leg measures ', 'kilometers.'),
      t('{name2} earns {num1} dollars for {num2} hours of work at a fixed rate, which is ', 'dollars per hour.'),
      t('Arranging {num1} {object} into {num2} equal columns puts ', '{object} in every column.'),
      t('The {group} at {place} split a prize of {num1} points evenly across {num2} winners, giving each winner ', 'points.'),
      t('{num1} pencils fill {num2} cups evenly at {place}; one cup contains ', 'pencils.'),
      t('Dividing {num1} {object} into {num2} equal shares leaves each share with ', '{object}.'),
      t('{name} spends {num1} minutes on {num2} chores, the same time on every chore, so one chore lasts ', 'minutes.'),
      t('If {num2} {container}s together hold {num1} {object} in equal amounts, one {container} holds ', '{object}.'),
    ],
  },
};

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/** One generated problem. `text` is the full training document; `prompt` the part before the answer. */
export interface ArithmeticProblem {
  op: Op;
  form: ArithmeticForm;
  prompt: string;
  /** The answer as written in the text ("13.0" for division equations). */
  answerText: string;
  answer: number;
  text: string;
}

/** Format an integer the way Python's str(float) does: 13 -> "13.0". */
export function pythonFloatString(x: number): string {
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return `${x}.0`;
  return String(x);
}

function checkOp(op: unknown, where: string): asserts op is Op {
  if (!ALL_OPS.includes(op as Op)) {
    throw new Err(`${where}: unknown arithmetic operation ${JSON.stringify(op)}`, `valid operations: ${ALL_OPS.join(', ')}`);
  }
}

/** Draw the operands and answer for `op` as specified in the module comment. */
function drawNumbers(op: Op, form: ArithmeticForm, rng: Rng): { num1: number; num2: number; answer: number } {
  switch (op) {
    case 'add': {
      const num1 = rng.int(1, 50);
      const num2 = rng.int(1, 50);
      return { num1, num2, answer: num1 + num2 };
    }
    case 'sub': {
      if (form === 'equation') {
        let a = rng.int(1, 50);
        let b = rng.int(1, 50);
        if (a < b) [a, b] = [b, a];
        return { num1: a, num2: b, answer: a - b };
      }
      const answer = rng.int(1, 50);
      const num2 = rng.int(1, 50);
      return { num1: answer + num2, num2, answer };
    }
    case 'mul': {
      const num1 = rng.int(1, 20);
      const num2 = rng.int(1, 20);
      return { num1, num2, answer: num1 * num2 };
    }
    case 'div': {
      // Built from a product: num1 = num2 * answer, so the quotient is exact.
      const num2 = rng.int(1, 20);
      const answer = rng.int(1, 20);
      return { num1: num2 * answer, num2, answer };
    }
  }
}

/** A random equation "a op b = c" (division answers written like Python floats). */
export function generateEquation(op: Op, rng: Rng): ArithmeticProblem {
  checkOp(op, 'generateEquation');
  const { num1, num2, answer } = drawNumbers(op, 'equation', rng);
  const prompt = `${num1} ${OP_SYMBOL[op]} ${num2} = `;
  const answerText = op === 'div' ? pythonFloatString(answer) : String(answer);
  return { op, form: 'equation', prompt, answerText, answer, text: prompt + answerText };
}

/** Replace every {slot} in `template` by its value; an unknown slot is a programming error. */
export function fillTemplate(template: string, slots: Readonly<Record<string, string | number>>): string {
  return template.replace(/\{(\w+)\}/g, (_, key: string) => {
    const v = slots[key];
    if (v === undefined) throw new Err(`template slot {${key}} has no value in "${template}"`);
    return String(v);
  });
}

/** A random word problem from the `split` ('train' or 'val') templates of `op`. */
export function generateWordProblem(op: Op, rng: Rng, split: 'train' | 'val' = 'train'): ArithmeticProblem {
  checkOp(op, 'generateWordProblem');
  const template = rng.pick(TEMPLATES[op][split]);
  const { num1, num2, answer } = drawNumbers(op, 'word_problem', rng);
  const name = rng.pick(NAMES);
  let name2 = rng.pick(NAMES);
  while (name2 === name) name2 = rng.pick(NAMES);
  const slots = {
    name,
    name2,
    object: rng.pick(OBJECTS),
    place: rng.pick(PLACES),
    container: rng.pick(CONTAINERS),
    group: rng.pick(GROUPS),
    num1,
    num2,
  };
  const prompt = fillTemplate(template.prompt, slots);
  const answerText = String(answer);
  const text = `${prompt}${answerText} ${fillTemplate(template.suffix, slots)}`;
  return { op, form: 'word_problem', prompt, answerText, answer, text };
}

function checkOps(ops: readonly Op[] | undefined, where: string): readonly Op[] {
  const list = ops ?? ALL_OPS;
  if (!Array.isArray(list) || list.length === 0) throw new Err(`${where}: "ops" must be a non-empty list of operations`);
  list.forEach((op) => checkOp(op, where));
  return list;
}

export interface CorpusOptions {
  /** Operations to include (default all four). */
  ops?: readonly Op[];
  /** Number of documents. */
  count: number;
  seed: number;
  /** Fraction of documents that are word problems (default 0.5); the rest are equations. */
  wordProblemFraction?: number;
}

/**
 * Training documents: round(count * wordProblemFraction) word problems (training templates
 * only) and the rest equations, spread evenly over `ops` (round robin) and shuffled.
 * Deterministic in `seed`.
 */
export function generateArithmeticCorpus(opts: CorpusOptions): string[] {
  const ops = checkOps(opts.ops, 'generateArithmeticCorpus');
  const { count, seed } = opts;
  const fraction = opts.wordProblemFraction ?? 0.5;
  if (!Number.isSafeInteger(count) || count < 0) throw new Err(`generateArithmeticCorpus: "count" must be a non-negative integer, got ${count}`);
  if (typeof fraction !== 'number' || !(fraction >= 0 && fraction <= 1)) {
    throw new Err(`generateArithmeticCorpus: "wordProblemFraction" must be in [0, 1], got ${fraction}`);
  }
  const rng = new Rng(mixSeeds(seed, 'arithmetic-corpus'));
  const numWord = Math.round(count * fraction);
  const docs: string[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const isWord = i < numWord;
    const op = ops[(isWord ? i : i - numWord) % ops.length];
    docs[i] = (isWord ? generateWordProblem(op, rng, 'train') : generateEquation(op, rng)).text;
  }
  return rng.shuffle(docs);
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

export interface ArithmeticEvalItem {
  op: Op;
  form: ArithmeticForm;
  /** Text up to the answer; equations end in "= ". */
  prompt: string;
  answer: number;
}

export interface EvalSetOptions {
  ops?: readonly Op[];
  /** Items per (op, form) (default 100). */
  perForm?: number;
  /** Default 42, as in the paper. */
  seed?: number;
}

/**
 * The evaluation set: `perForm` equations and `perForm` word problems (validation templates
 * only) per operation, ordered by op then form. Each (op, form) block has its own random
 * stream derived from (seed, op, form), so a block does not depend on which other ops are
 * requested.
 */
export function arithmeticEvalSet(opts: EvalSetOptions = {}): ArithmeticEvalItem[] {
  const ops = checkOps(opts.ops, 'arithmeticEvalSet');
  const perForm = opts.perForm ?? 100;
  const seed = opts.seed ?? 42;
  if (!Number.isSafeInteger(perForm) || perForm < 0) throw new Err(`arithmeticEvalSet: "perForm" must be a non-negative integer, got ${perForm}`);
  const items: ArithmeticEvalItem[] = [];
  for (const op of ops) {
    for (const form of FORMS) {
      const rng = new Rng(mixSeeds(seed, 'arithmetic-eval', op, form));
      for (let i = 0; i < perForm; i++) {
        const p = form === 'equation' ? generateEquation(op, rng) : generateWordProblem(op, rng, 'val');
        items.push({ op, form, prompt: p.prompt, answer: p.answer });
      }
    }
  }
  return items;
}

const NUMBER_RE = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;

/**
 * Parse a model's continuation: the first piece delimited by whitespace or a special token
 * ("<bos>", "<eos>", "<pad>"), parsed as a float (Python float() syntax for finite decimals).
 * Returns null when there is no piece or it is not a number. " 7" -> 7, "13.0 foo" -> 13.
 */
export function parseAnswer(generated: string): number | null {
  const piece = generated.split(/\s+|<bos>|<eos>|<pad>/).find((p) => p.length > 0);
  if (piece === undefined || !NUMBER_RE.test(piece)) return null;
  const v = Number(piece);
  return Number.isFinite(v) ? v : null;
}

/** True when the parsed continuation is within 1e-6 of `answer`. */
export function isCorrect(generated: string, answer: number): boolean {
  const pred = parseAnswer(generated);
  return pred !== null && Math.abs(pred - answer) < 1e-6;
}

/** One graded evaluation item. */
export interface ArithmeticResult {
  op: Op;
  form: ArithmeticForm;
  correct: boolean;
}

/** Accuracies of one operation. NaN means "not measured" (no items of that kind). */
export interface OpScore {
  equation: number;
  word_problem: number;
  /** Accuracy over all items of this operation. */
  all: number;
  /** Number of items graded. */
  n: number;
}

export interface ArithmeticScore {
  perOp: Record<Op, OpScore>;
  /** Mean of the measured (op, form) accuracies over add/sub; NaN if none was measured. */
  retain: number;
  /** Mean of the measured (op, form) accuracies over mul/div; NaN if none was measured. */
  forget: number;
}

/**
 * Aggregate graded items into accuracies in [0, 1]. As in the paper, `retain` is the mean of
 * the add/sub accuracies per (op, form) and `forget` the same over mul/div; only the
 * (op, form) cells that have items count. Unmeasured cells are NaN.
 */
export function scoreArithmetic(results: readonly ArithmeticResult[]): ArithmeticScore {
  const counts = new Map<string, { n: number; ok: number }>();
  for (const r of results) {
    checkOp(r.op, 'scoreArithmetic');
    if (!FORMS.includes(r.form)) throw new Err(`scoreArithmetic: unknown form ${JSON.stringify(r.form)}`);
    for (const key of [`${r.op}:${r.form}`, `${r.op}:all`]) {
      const c = counts.get(key) ?? { n: 0, ok: 0 };
      c.n++;
      if (r.correct) c.ok++;
      counts.set(key, c);
    }
  }
  const acc = (key: string): number => {
    const c = counts.get(key);
    return c && c.n > 0 ? c.ok / c.n : NaN;
  };
  const perOp = {} as Record<Op, OpScore>;
  for (const op of ALL_OPS) {
    perOp[op] = {
      equation: acc(`${op}:equation`),
      word_problem: acc(`${op}:word_problem`),
      all: acc(`${op}:all`),
      n: counts.get(`${op}:all`)?.n ?? 0,
    };
  }
  const meanOver = (ops: readonly Op[]): number => {
    const cells = ops.flatMap((op) => FORMS.map((f) => perOp[op][f])).filter((v) => !Number.isNaN(v));
    return cells.length ? cells.reduce((a, b) => a + b, 0) / cells.length : NaN;
  };
  return { perOp, retain: meanOver(RETAIN_OPS), forget: meanOver(FORGET_OPS) };
}
