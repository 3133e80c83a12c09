import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ByteTokenizer } from '../lib/data/tokenizer';
import { Rng, mixSeeds } from '../lib/core/rng';
import { loadDocuments, splitParagraphs, packDocuments, splitTrainVal, Batcher, PackedDataset, Document, documentText, IGNORE_INDEX, TokenDocument } from '../lib/data/datasets';
import { dataHash } from '../lib/distill/teacher_store';
import { throwsUndo } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-data-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const tok = new ByteTokenizer();
const BOS = tok.bos;


function makeDocs(n: number, seed: number): string[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, (_, i) => `doc${i}:` + 'xyz'.repeat(rng.int(0, 12)));
}

// ------------------------------------------------------------------------------------------
// rng
// ------------------------------------------------------------------------------------------

test('rng: xoshiro128** reference vector and determinism', () => {
  // Reference output of the C implementation of xoshiro128** from state {1, 2, 3, 4}.
  const r = Rng.fromState([1, 2, 3, 4]);
  assert.equal([...Array(6)].map(() => r.nextU32()), [11520, 0, 5927040, 70819200, 2031721883, 1637235492]);

  const a = new Rng(123);
  const b = new Rng(123);
  const c = new Rng(124);
  const sa = [...Array(20)].map(() => a.nextU32());
  assert.equal(sa, [...Array(20)].map(() => b.nextU32()));
  assert.not.equal(sa, [...Array(20)].map(() => c.nextU32()));
  assert.not.equal(new Rng(2 ** 40 + 5).nextU32(), new Rng(5).nextU32());
  assert.is(new Rng('hello').nextU32(), new Rng('hello').nextU32());
  assert.is(mixSeeds(1, 2), mixSeeds(1, 2));
  assert.is.not(mixSeeds(1, 2), mixSeeds(2, 1));

  // State save / restore.
  const s = new Rng(7);
  s.nextU32();
  const saved = s.getState();
  const next = [s.nextU32(), s.next(), s.int(3, 9)];
  const t = Rng.fromState(saved);
  assert.equal([t.nextU32(), t.next(), t.int(3, 9)], next);
});

test('rng: ranges, shuffle, pick, normal', () => {
  const r = new Rng(99);
  const counts = new Array(7).fill(0);
  for (let i = 0; i < 70000; i++) {
    const x = r.int(-3, 3);
    assert.ok(Number.isInteger(x) && x >= -3 && x <= 3);
    counts[x + 3]++;
  }
  for (const c of counts) assert.ok(Math.abs(c - 10000) < 500, `int() roughly uniform: ${counts}`);
  for (let i = 0; i < 1000; i++) {
    const u = r.next();
    assert.ok(u >= 0 && u < 1);
  }
  assert.is(r.int(5, 5), 5);
  const arr = Array.from({ length: 50 }, (_, i) => i);
  const sh = r.shuffle(arr.slice());
  assert.not.equal(sh, arr);
  assert.equal(sh.slice().sort((x, y) => x - y), arr);
  const ta = r.shuffle(Int32Array.from(arr));
  assert.equal(Array.from(ta).sort((x, y) => x - y), arr);
  assert.ok(['a', 'b'].includes(r.pick(['a', 'b'])));
  let sum = 0;
  let sq = 0;
  const n = 20000;
  for (let i = 0; i < n; i++) {
    const z = r.normal();
    sum += z;
    sq += z * z;
  }
  assert.ok(Math.abs(sum / n) < 0.05, 'normal mean ~ 0');
  assert.ok(Math.abs(sq / n - 1) < 0.05, 'normal variance ~ 1');
  throwsUndo(() => r.int(3, 2), '[3, 2]');
  throwsUndo(() => r.pick([]), 'empty');
  throwsUndo(() => new Rng(1.5), '1.5');
});

// ------------------------------------------------------------------------------------------
// loading
// ------------------------------------------------------------------------------------------

test('loadDocuments: plain text paragraphs', () => {
  const p = path.join(tmp, 'docs.txt');
  fs.writeFileSync(p, '\n\nFirst doc line 1\nline 2\n\n\nSecond doc\r\n \t \r\nThird  \n\n');
  assert.equal(loadDocuments(p), ['First doc line 1\nline 2', 'Second doc', 'Third']);
  assert.equal(splitParagraphs(''), []);
  assert.equal(splitParagraphs('one'), ['one']);
});

test('loadDocuments: JSONL, and errors naming the file and line', () => {
  const p = path.join(tmp, 'docs.jsonl');
  fs.writeFileSync(p, '{"text": "a b"}\n\n{"text": "héllo", "id": 3}\r\n{"text": ""}\n');
  assert.equal(loadDocuments(p), ['a b', 'héllo', '']);

  const bad = path.join(tmp, 'bad.jsonl');
  fs.writeFileSync(bad, '{"text": "ok"}\n{"text": "ok2"}\n{"text": oops}\n');
  throwsUndo(() => loadDocuments(bad), 'bad.jsonl:3', 'line 3', 'not valid JSON');

  const noText = path.join(tmp, 'notext.jsonl');
  fs.writeFileSync(noText, '{"text": "ok"}\n{"body": "x"}\n');
  throwsUndo(() => loadDocuments(noText), 'notext.jsonl:2', '"text"');
  const body = path.join(tmp, 'body.data');
  fs.writeFileSync(body, '{"body": "x"}\n{"body": "y"}\n');
  assert.equal(loadDocuments(body, { field: 'body', format: 'jsonl' }), ['x', 'y']);

  const arr = path.join(tmp, 'arr.jsonl');
  fs.writeFileSync(arr, '[1,2]\n');
  throwsUndo(() => loadDocuments(arr), 'arr.jsonl:1', 'not a JSON object');

  throwsUndo(() => loadDocuments(path.join(tmp, 'absent.txt')), 'absent.txt', 'not found');
  throwsUndo(() => loadDocuments(tmp), tmp, 'directory');
});

// ------------------------------------------------------------------------------------------
// packing
// ------------------------------------------------------------------------------------------

test('packDocuments: exact layout without shuffling', () => {
  // Stream: [BOS a b BOS c d e BOS f] = 9 tokens -> (9-1)/4 = 2 windows of 5, stride 4.
  const packed = packDocuments(tok, ['ab', 'cde', 'f'], 4, { shuffle: false });
  const [a, b, c, d, e, f] = [...'abcdef'].map((ch) => ch.charCodeAt(0));
  assert.is(packed.count, 2);
  assert.is(packed.seqLen, 4);
  assert.is(packed.droppedTokens, 0);
  assert.equal(Array.from(packed.window(0)), [BOS, a, b, BOS, c]);
  assert.equal(Array.from(packed.window(1)), [c, d, e, BOS, f]);
  assert.equal(Array.from(packed.inputs(0)), [BOS, a, b, BOS]);
  assert.equal(Array.from(packed.targets(0)), [a, b, BOS, c]);
  assert.equal(Array.from(packed.inputs(1)), [c, d, e, BOS]);
  assert.equal(Array.from(packed.targets(1)), [d, e, BOS, f]);
  throwsUndo(() => packed.window(2), 'window index 2');

  // One extra token does not complete a window: it is dropped.
  const p2 = packDocuments(tok, ['ab', 'cde', 'fg'], 4, { shuffle: false });
  assert.is(p2.count, 2);
  assert.is(p2.droppedTokens, 1);

  // A long document is split across windows and its remainder kept.
  const long = 'abcdefghijklmnopqrstuvwxyz';
  const p3 = packDocuments(tok, [long, 'Z'], 8, { shuffle: false });
  const stream = [BOS, ...Buffer.from(long), BOS, 'Z'.charCodeAt(0)];
  assert.is(p3.count, Math.floor((stream.length - 1) / 8));
  for (let k = 0; k < p3.count; k++) assert.equal(Array.from(p3.window(k)), stream.slice(k * 8, k * 8 + 9));
});

test('packDocuments: shuffled windows, targets are inputs shifted, BOS before each document', () => {
  const docs = makeDocs(60, 5);
  const T = 16;
  const packed = packDocuments(tok, docs, T, { seed: 11 });
  assert.ok(packed.count > 10);
  for (let k = 0; k < packed.count; k++) {
    const inp = packed.inputs(k);
    const tgt = packed.targets(k);
    assert.is(inp.length, T);
    for (let i = 0; i < T - 1; i++) assert.is(tgt[i], inp[i + 1]);
    if (k + 1 < packed.count) assert.is(tgt[T - 1], packed.inputs(k + 1)[0]);
  }
  // Rebuild the stream and check it is the documents in a permuted order, each after a BOS.
  const stream = Array.from(packed.tokens);
  assert.is(stream.length, packed.count * T + 1);
  assert.is(stream[0], BOS);
  const pieces = tok.decode(stream).split('<bos>').slice(1);
  assert.ok(pieces.length >= 2);
  const full = pieces.slice(0, -1); // the last one may be cut
  for (const piece of full) assert.ok(docs.includes(piece), `"${piece}" is a whole document`);
  assert.is(new Set(full).size, full.length, 'no document twice');
  assert.not.equal(full, docs.slice(0, full.length), 'documents were shuffled');
  assert.is(stream.filter((x) => x === BOS).length, pieces.length);

  // Same seed -> identical packing; different seed -> different.
  assert.equal(Array.from(packDocuments(tok, docs, T, { seed: 11 }).tokens), stream);
  assert.not.equal(Array.from(packDocuments(tok, docs, T, { seed: 12 }).tokens), stream);
  throwsUndo(() => packDocuments(tok, docs, 0), 'sequence length');
});

test('splitTrainVal is deterministic, disjoint and order preserving', () => {
  const docs = Array.from({ length: 100 }, (_, i) => `d${i}`);
  const { train, val } = splitTrainVal(docs, 0.1, 3);
  assert.is(val.length, 10);
  assert.is(train.length, 90);
  assert.equal([...train, ...val].sort(), docs.slice().sort());
  const idx = (s: string) => Number(s.slice(1));
  assert.equal(train.map(idx), train.map(idx).slice().sort((a, b) => a - b));
  assert.equal(splitTrainVal(docs, 0.1, 3), { train, val });
  assert.not.equal(splitTrainVal(docs, 0.1, 4).val, val);
  assert.is(splitTrainVal(['a', 'b', 'c'], 0.01, 1).val.length, 1);
  assert.equal(splitTrainVal(['a', 'b'], 0, 1), { train: ['a', 'b'], val: [] });
  throwsUndo(() => splitTrainVal(docs, 1, 0), 'validation fraction');
});

// ------------------------------------------------------------------------------------------
// batching
// ------------------------------------------------------------------------------------------

function take(b: Batcher, n: number) {
  return Array.from({ length: n }, () => b.next());
}

test('Batcher: batches, epochs and determinism', () => {
  const packed = packDocuments(tok, makeDocs(80, 1), 8, { seed: 2 });
  const count = packed.count;
  const B = 4;
  const batcher = new Batcher(packed, { batchSize: B, seed: 5 });
  const first = batcher.next();
  assert.is(first.B, B);
  assert.is(first.T, 8);
  assert.is(first.inputs.length, B * 8);
  assert.equal(first.position, { epoch: 0, index: 0 });
  for (let r = 0; r < B; r++) {
    for (let t = 0; t < 7; t++) assert.is(first.targets[r * 8 + t], first.inputs[r * 8 + t + 1]);
  }
  assert.equal(batcher.position, { epoch: 0, index: B });

  // Each window appears exactly once per epoch.
  const epochBatcher = new Batcher(packed, { batchSize: 1, seed: 5 });
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) seen.add(Array.from(epochBatcher.next().inputs).join(','));
  const distinctWindows = new Set(Array.from({ length: count }, (_, k) => Array.from(packed.inputs(k)).join(','))).size;
  assert.is(seen.size, distinctWindows);
  assert.equal(epochBatcher.position, { epoch: 1, index: 0 });

  // Same seed -> same batches; different seed -> different.
  const x = take(new Batcher(packed, { batchSize: B, seed: 9 }), 10);
  const y = take(new Batcher(packed, { batchSize: B, seed: 9 }), 10);
  const z = take(new Batcher(packed, { batchSize: B, seed: 10 }), 10);
  assert.equal(x.map((b) => Array.from(b.inputs)), y.map((b) => Array.from(b.inputs)));
  assert.not.equal(x.map((b) => Array.from(b.inputs)), z.map((b) => Array.from(b.inputs)));
  // The second epoch uses a different order than the first.
  const perEpoch = Math.floor(count / B);
  const long = take(new Batcher(packed, { batchSize: 1, seed: 9 }), 2 * count);
  assert.not.equal(long.slice(0, count).map((b) => b.inputs[0]), long.slice(count).map((b) => b.inputs[0]));
  assert.ok(perEpoch >= 1);

  // Unshuffled: windows in order.
  const ordered = new Batcher(packed, { batchSize: 2, shuffle: false });
  const ob = ordered.next();
  assert.equal(Array.from(ob.inputs.subarray(0, 8)), Array.from(packed.inputs(0)));
  assert.equal(Array.from(ob.inputs.subarray(8)), Array.from(packed.inputs(1)));
});

test('Batcher: resuming from a saved position reproduces the stream exactly', () => {
  const packed = packDocuments(tok, makeDocs(50, 3), 8, { seed: 4 });
  const B = 3;
  const ref = take(new Batcher(packed, { batchSize: B, seed: 21 }), 40); // crosses several epochs
  const a = new Batcher(packed, { batchSize: B, seed: 21 });
  take(a, 17);
  const saved = JSON.parse(JSON.stringify(a.position));
  const resumed = new Batcher(packed, { batchSize: B, seed: 21, position: saved });
  const rest = take(resumed, 23);
  assert.equal(rest.map((b) => Array.from(b.inputs)), ref.slice(17).map((b) => Array.from(b.inputs)));
  assert.equal(rest.map((b) => Array.from(b.targets)), ref.slice(17).map((b) => Array.from(b.targets)));
  assert.equal(rest[0].position, saved);

  throwsUndo(() => new Batcher(packed, { batchSize: B, position: { epoch: 0, index: packed.count } }), '"index"', String(packed.count));
  throwsUndo(() => new Batcher(packed, { batchSize: B, position: { epoch: -1, index: 0 } }), '"epoch"');
  throwsUndo(() => new Batcher(packed, { batchSize: 0 }), 'batch size');
});

test('Batcher: dataset smaller than a batch wraps across epochs; empty dataset is an error', () => {
  const packed = packDocuments(tok, ['abcdefgh'], 4, { shuffle: false }); // 9 tokens -> 2 windows
  assert.is(packed.count, 2);
  const b = new Batcher(packed, { batchSize: 5, seed: 1 });
  const batch = b.next();
  assert.is(batch.inputs.length, 20);
  assert.equal(b.position, { epoch: 2, index: 1 });
  const rows = [0, 1, 2, 3, 4].map((r) => Array.from(batch.inputs.subarray(r * 4, r * 4 + 4)).join(','));
  const w0 = Array.from(packed.inputs(0)).join(',');
  const w1 = Array.from(packed.inputs(1)).join(',');
  assert.is(rows.filter((r) => r === w0).length + rows.filter((r) => r === w1).length, 5);
  assert.is(new Set(rows.slice(0, 2)).size, 2, 'first epoch visits both windows');

  const empty = packDocuments(tok, ['ab'], 16);
  assert.is(empty.count, 0);
  assert.instance(empty, PackedDataset);
  throwsUndo(() => new Batcher(empty, { batchSize: 1 }), 'empty dataset', '17 tokens');
});

// ------------------------------------------------------------------------------------------
// documents with a loss mask
// ------------------------------------------------------------------------------------------

/** A TokenDocument of the byte tokenizer: <bos> + text, loss on the tokens from index `from` on. */
function maskedDoc(text: string, from: number): TokenDocument {
  const ids = tok.encode(text, { bos: true });
  const loss = new Uint8Array(ids.length);
  loss.fill(1, from);
  return { ids, loss, text };
}

test('packDocuments: masked documents keep their tokens, their masked targets are IGNORE_INDEX; plain text has no labels', () => {
  const plain = packDocuments(tok, ['ab', 'cde'], 3, { shuffle: false });
  assert.is(plain.labels, undefined);
  assert.equal(Array.from(plain.targets(0)), Array.from(plain.tokens.subarray(1, 4)));
  // same stream with a mask: tokens identical, targets masked where loss is 0
  const docs: Document[] = [maskedDoc('ab', 2), 'cde'];
  const masked = packDocuments(tok, docs, 3, { shuffle: false });
  assert.equal(Array.from(masked.tokens), Array.from(plain.tokens));
  assert.equal(Array.from(masked.labels!), [IGNORE_INDEX, IGNORE_INDEX, 98, BOS, 99, 100, 101]);
  assert.equal(Array.from(masked.targets(0)), [IGNORE_INDEX, 98, BOS]);
  assert.equal(Array.from(masked.targets(1)), [99, 100, 101]);
  // a fully trained TokenDocument packs exactly like its text
  const full = packDocuments(tok, [maskedDoc('ab', 0), 'cde'], 3, { shuffle: false });
  assert.is(full.labels, undefined);
  assert.equal(Array.from(full.tokens), Array.from(plain.tokens));
  // shuffling moves masked documents with their masks
  const many: Document[] = Array.from({ length: 30 }, (_, i) => (i % 2 ? `plain${i}` : maskedDoc(`q${i}?a${i}`, 4)));
  const shuffled = packDocuments(tok, many, 8, { seed: 5 });
  let ignored = 0;
  for (let i = 0; i < shuffled.tokens.length; i++) {
    const l = shuffled.labels![i];
    if (l === IGNORE_INDEX) ignored++;
    else assert.is(l, shuffled.tokens[i]);
  }
  assert.ok(ignored > 15 * 3, `ignored ${ignored}`);
  assert.equal(Array.from(packDocuments(tok, many, 8, { seed: 5 }).labels!), Array.from(shuffled.labels!));
});

test('packDocuments: malformed token documents are errors; documentText', () => {
  const bad = { ids: Int32Array.from([1, 2]), loss: new Uint8Array(1) };
  throwsUndo(() => packDocuments(tok, ['x', bad], 4), 'document 1', 'loss mask has 1 entries for 2 tokens');
  throwsUndo(() => packDocuments(tok, [{ ids: [1, 2], loss: [1, 1] } as unknown as Document], 4), 'document 0', 'neither a string');
  assert.is(documentText('abc'), 'abc');
  assert.is(documentText(maskedDoc('hi', 0)), 'hi');
  assert.is(documentText({ ids: new Int32Array(0), loss: new Uint8Array(0) }), '');
});

test('teacher store data identity: the label stream counts for masked data only', () => {
  const plain = packDocuments(tok, ['ab', 'cde'], 3, { shuffle: false });
  const masked = packDocuments(tok, [maskedDoc('ab', 2), 'cde'], 3, { shuffle: false });
  const full = packDocuments(tok, [maskedDoc('ab', 0), 'cde'], 3, { shuffle: false });
  assert.is(dataHash(full), dataHash(plain));
  assert.is.not(dataHash(masked), dataHash(plain));
});

test.run();
