/**
 * Offline teacher top-k store (lib/distill/teacher_store.ts, lib/cli/teacher.ts): the record codec at vocab 131072
 * (≤ 200 bytes/token at k = 64, exact ids, bounded log-prob error, tail mass), top-k selection, a round trip
 * through a tiny teacher, resume after a lost shard and after a crash (byte-identical shards), refusal of
 * corrupt, truncated and foreign shards and of mismatched tokenizer/data/vocab, batches from a Batcher, and
 * the cache-teacher / teacher-store commands.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { registerTeacherCommands } from '../lib/cli/teacher';
import type { CliKit } from '../lib/cli/unlearn';
import { documentsFrom } from '../lib/cli/unlearn';
import { Batcher, packDocuments, PackedDataset } from '../lib/data/datasets';
import { UndoError } from '../lib/core/errors';
import { loss } from '../lib/train/losses';
import { Model, ModelConfig, presetConfig } from '../lib/models/model';
import { Rng } from '../lib/core/rng';
import {
  cacheTeacher, CacheTeacherResult, dataHash, expectationFor, fromHalf, openTeacherStore, shardFileName, teacherForBatch, teacherForBatchSync,
  teacherHashFromDir, toHalf, tokenizerHash, TopKCodec, TopKSelector,
} from '../lib/distill/teacher_store';
import { ByteTokenizer } from '../lib/data/tokenizer';
import { rejectsWith, throwsWith, tinyConfig } from './helpers';

// every failure here must be an UndoError (a clear message for the user), not just any Error
const throwsUndoWith = (fn: () => unknown, re: RegExp, what: string) => throwsWith(fn, re, what, UndoError);
const rejectsUndoWith = (p: Promise<unknown>, re: RegExp, what: string) => rejectsWith(p, re, what, UndoError);

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-tstore-'));
const T = 16;
const K = 64;


/** A tiny llama teacher whose logits spread over a few nats (std 0.3 init), vocab 259. */
const teacher = Model.create(tinyConfig('llama'), { seed: 7, std: 0.3 });
const V = teacher.config.vocabSize;

function windowsOf(docsSeed: number, n: number): PackedDataset {
  const docs = documentsFrom('arithmetic:add,mul', 'test data', 200, docsSeed);
  const p = packDocuments(teacher.tokenizer, docs, T, { seed: docsSeed });
  assert.ok(p.count >= n, `only ${p.count} windows`);
  return new PackedDataset(p.tokens.subarray(0, n * T + 1), T, n);
}

const DATA = windowsOf(1, 23);
const OTHER = windowsOf(2, 23);
const SHARD_W = 5; // 23 windows → shards of 5, 5, 5, 5, 3
const BATCH = 4;

function dir(tag: string): string {
  return path.join(TMP, tag);
}

function copyDir(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
}

function shardBytes(d: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const f of fs.readdirSync(d).filter((x) => x.startsWith('shard-')).sort()) m.set(f, fs.readFileSync(path.join(d, f)));
  return m;
}

function assertSameShards(a: string, b: string, what: string): void {
  const x = shardBytes(a);
  const y = shardBytes(b);
  assert.equal([...y.keys()], [...x.keys()], `${what}: shard files`);
  for (const [f, buf] of x) assert.ok(buf.equals(y.get(f)!), `${what}: ${f} differs`);
}



/** Reference: the teacher's float64 log-softmax per row, from the same batches cacheTeacher runs. */
async function referenceRows(model: Model, data: PackedDataset, shardWindows: number, batch: number): Promise<Float64Array[]> {
  const out: Float64Array[] = [];
  const Vm = model.config.vocabSize;
  for (let s0 = 0; s0 < data.count; s0 += shardWindows) {
    const nw = Math.min(shardWindows, data.count - s0);
    for (let b0 = 0; b0 < nw; b0 += batch) {
      const nb = Math.min(batch, nw - b0);
      const ids = new Int32Array(nb * data.seqLen);
      for (let b = 0; b < nb; b++) ids.set(data.inputs(s0 + b0 + b), b * data.seqLen);
      await model.native.forward(ids, nb, data.seqLen);
      const logits = await model.native.logits(null);
      for (let r = 0; r < nb * data.seqLen; r++) {
        const row = logits.subarray(r * Vm, (r + 1) * Vm);
        let max = -Infinity;
        for (const x of row) max = Math.max(max, x);
        let s = 0;
        for (const x of row) s += Math.exp(x - max);
        const lse = max + Math.log(s);
        out.push(Float64Array.from(row, (x) => x - lse));
      }
    }
  }
  return out;
}

/** Top-k of a float64 log-prob row by full sort (ties: lower id first). */
function sortTopK(lp: Float64Array, k: number): { ids: number[]; lps: number[]; tail: number } {
  const idx = Array.from(lp, (_, i) => i).sort((a, b) => lp[b] - lp[a] || a - b).slice(0, k);
  const inTop = new Set(idx);
  let tail = 0;
  lp.forEach((v, i) => {
    if (!inTop.has(i)) tail += Math.exp(v);
  });
  return { ids: idx, lps: idx.map((i) => lp[i]), tail };
}

/**
 * The codec's documented bound for the head entries (ranks 0..16): lp0 is fixed point (±2^−20), the others
 * are within s/2 of the true value, s = the head step, ≤ 2^(1/8)·(largest head gap + 2^−20)/(1024 − 1.5).
 */
function headBound(lps: ArrayLike<number>, head: number): number {
  let g = 0;
  for (let i = 1; i <= head && i < lps.length; i++) g = Math.max(g, lps[i - 1] - lps[i]);
  return Math.max(2 ** -20, (2 ** (1 / 8) * (g + 2 ** -20)) / (2 * (1024 - 1.5))) + 1e-6;
}

// ---------------------------------------------------------------------------------------------

test('fp16 helpers round to nearest and cover the tail mass range', () => {
  for (const x of [0, 1, 0.5, 0.999, 1e-3, 6.1e-5, 3e-6, 6e-8, 0.123456]) {
    const y = fromHalf(toHalf(x));
    assert.ok(Math.abs(y - x) <= Math.max(x * 2 ** -11, 2 ** -25), `fp16(${x}) = ${y}`);
  }
  assert.is(fromHalf(toHalf(1)), 1);
  assert.is(fromHalf(toHalf(1e-9)), 0);
  assert.is(toHalf(65520), 0x7c00);
});

test('top-k selection equals a full sort (ties to the lower id), tail summed directly', () => {
  const r = new Rng(3);
  const Vs = 1000;
  const row = new Float32Array(Vs);
  for (let i = 0; i < Vs; i++) row[i] = Math.round(r.normal() * 8) / 4; // many exact ties
  for (const k of [1, 7, 64, Vs]) {
    const sel = new TopKSelector(k, Vs);
    sel.select(row, 0);
    let max = -Infinity;
    for (const x of row) max = Math.max(max, x);
    let s = 0;
    for (const x of row) s += Math.exp(x - max);
    const ref = sortTopK(Float64Array.from(row, (x) => x - max - Math.log(s)), k);
    assert.equal(Array.from(sel.ids), ref.ids, `k=${k} ids`);
    for (let i = 0; i < k; i++) assert.ok(Math.abs(sel.lps[i] - ref.lps[i]) < 1e-9, `k=${k} lp[${i}]`);
    assert.ok(Math.abs(sel.tail - ref.tail) <= 1e-12 + 1e-9 * ref.tail, `k=${k} tail ${sel.tail} vs ${ref.tail}`);
  }
  throwsUndoWith(() => new TopKSelector(0, 10), /top-k k = 0/, 'k = 0');
  throwsUndoWith(() => new TopKCodec(300, 259), /k = 300 is larger than the vocabulary \(259\)/, 'k > vocab');
});

test('codec at vocab 131072, k = 64: 199 bytes/token, exact ids, head |Δlogprob| ≤ 0.02, bounded errors', () => {
  const Vb = 131072;
  const codec = new TopKCodec(K, Vb);
  assert.is(codec.idBits, 17);
  assert.is(codec.recordBytes, 199);
  assert.ok(codec.recordBytes <= 200);
  const sel = new TopKSelector(K, Vb);
  const row = new Float32Array(Vb);
  const rec = new Uint8Array(codec.recordBytes * 2);
  const ids = new Int32Array(K);
  const lps = new Float32Array(K);
  const r = new Rng(11);
  let worstHead = 0;
  let worstAll = 0;
  let worstWeighted = 0;
  const cases = [0.3, 1, 2, 4, 8, 'peak8', 'peak25', 'peak45', 'flat', 'spiky'] as const;
  for (const c of cases) {
    for (let j = 0; j < Vb; j++) row[j] = c === 'flat' ? r.next() * 1e-3 : c === 'spiky' ? (r.next() < 0.001 ? 10 + r.normal() : r.normal()) : r.normal() * (typeof c === 'number' ? c : 1);
    if (typeof c === 'string' && c.startsWith('peak')) row[4242] += Number(c.slice(4));
    sel.select(row, 0);
    codec.encode(sel.ids, sel.lps, 0, sel.tail, rec, codec.recordBytes); // at an offset
    const tail = codec.decode(rec, codec.recordBytes, ids, lps, 0);
    assert.equal(Array.from(ids), Array.from(sel.ids), `${c}: ids`);
    const bound = headBound(sel.lps, 16);
    for (let i = 0; i < K; i++) {
      const d = Math.abs(lps[i] - sel.lps[i]);
      if (i <= 16) {
        assert.ok(d <= bound, `${c}: head entry ${i} error ${d} > documented bound ${bound}`);
        if (c !== 'peak45') worstHead = Math.max(worstHead, d); // a 45-nat cliff: bound 0.024, those entries have p < 1e-19
      }
      worstAll = Math.max(worstAll, d);
      worstWeighted = Math.max(worstWeighted, d * Math.exp(sel.lps[i]));
    }
    assert.ok(Math.abs(tail - sel.tail) <= sel.tail * 2 ** -11 + 2 ** -25, `${c}: tail ${tail} vs ${sel.tail}`);
    // the decoded distribution still sums to ≈ 1
    let mass = tail;
    for (let i = 0; i < K; i++) mass += Math.exp(lps[i]);
    assert.ok(Math.abs(mass - 1) < 0.01, `${c}: top-k mass + tail = ${mass}`);
  }
  assert.ok(worstHead <= 0.02, `head error ${worstHead}`);
  assert.ok(worstAll <= 0.1, `worst error ${worstAll}`);
  assert.ok(worstWeighted <= 2e-3, `probability-weighted error ${worstWeighted}`);
});

test('a teacher with vocab 131072 writes 199-byte records end to end', async () => {
  const tok = new ByteTokenizer({ byteIds: Array.from({ length: 256 }, (_, i) => i), bos: 256, eos: 257, pad: 258, vocabSize: 131072 });
  const cfg = tinyConfig('llama', { vocabSize: 131072, hiddenSize: 8, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 4, intermediateSize: 16 });
  const big = Model.create(cfg, { seed: 1, std: 0.5 }, tok);
  const data = new PackedDataset(DATA.tokens.subarray(0, 2 * 8 + 1), 8, 2);
  const out = dir('big');
  const r = await cacheTeacher(big, data, { k: K, out, batchSize: 2 });
  assert.is(r.manifest.bytesPerToken, 199);
  assert.is(r.manifest.encoding.idBits, 17);
  assert.is(fs.statSync(path.join(out, 'shard-00000.bin')).size, 96 + 16 * 199);
  const store = openTeacherStore(out, { expect: expectationFor(big, data), verify: 'open' });
  const got = store.readSync([0, 1]);
  const ref = await referenceRows(big, data, 2, 2);
  for (let row = 0; row < 16; row++) {
    const want = sortTopK(ref[row], K);
    assert.equal(Array.from(got.ids.subarray(row * K, (row + 1) * K)), want.ids, `row ${row} ids`);
    for (let i = 0; i <= 16; i++) assert.ok(Math.abs(got.logprobs[row * K + i] - want.lps[i]) <= 0.02, `row ${row} lp[${i}]`);
    assert.ok(Math.abs(got.tail[row] - want.tail) <= 1e-3 * want.tail + 1e-6, `row ${row} tail`);
  }
  store.close();
});

// ---------------------------------------------------------------------------------------------

const REF = dir('ref');
let refResult: CacheTeacherResult;

test('round trip through a tiny teacher: ids exact, log-probs within the bound, tail mass, losses', async () => {
  const seen: number[] = [];
  refResult = await cacheTeacher(teacher, DATA, { k: K, out: REF, shardWindows: SHARD_W, batchSize: BATCH, onProgress: (p) => seen.push(p.windowsDone) });
  const m = refResult.manifest;
  assert.ok(m.complete);
  assert.is(m.numShards, 5);
  assert.is(m.shards.length, 5);
  assert.is(m.numTokens, 23 * T);
  assert.is(m.bytesPerToken, 135); // 64 × 9-bit ids + 498 bits
  assert.is(m.encoding.idBits, 9);
  assert.is(m.data.sha256, dataHash(DATA));
  assert.is(m.tokenizer.sha256, tokenizerHash(teacher.tokenizer));
  assert.is(m.diskBytes, 5 * 96 + 23 * T * 135);
  assert.equal(fs.readdirSync(REF).sort(), ['manifest.json', ...[0, 1, 2, 3, 4].map(shardFileName)]);
  assert.is(seen[seen.length - 1], 23);

  const ref = await referenceRows(teacher, DATA, SHARD_W, BATCH);
  const store = openTeacherStore(REF, { expect: expectationFor(teacher, DATA) });
  const wins = [22, 0, 7, 7, 13];
  const got = store.readSync(wins);
  assert.is(got.rows, wins.length * T);
  assert.is(got.k, K);
  let worstHead = 0;
  for (let b = 0; b < wins.length; b++) {
    for (let t = 0; t < T; t++) {
      const row = b * T + t;
      const want = sortTopK(ref[wins[b] * T + t], K);
      assert.equal(Array.from(got.ids.subarray(row * K, (row + 1) * K)), want.ids, `window ${wins[b]} row ${t}: ids`);
      const bound = headBound(want.lps, 16);
      for (let i = 0; i < K; i++) {
        const d = Math.abs(got.logprobs[row * K + i] - want.lps[i]);
        if (i <= 16) {
          assert.ok(d <= bound, `window ${wins[b]} row ${t} entry ${i}: error ${d} > ${bound}`);
          worstHead = Math.max(worstHead, d);
        }
        assert.ok(d <= 0.05, `window ${wins[b]} row ${t} entry ${i}: error ${d}`);
      }
      assert.ok(Math.abs(got.tail[row] - want.tail) <= want.tail * 2 ** -11 + 2 ** -25, `tail ${got.tail[row]} vs ${want.tail}`);
    }
  }
  assert.ok(worstHead <= 0.02, `head error ${worstHead}`);

  // the rows plug into the top-k losses as they are, and give the loss of the exact top-k
  const rows = got.rows;
  const student = new Float32Array(rows * V);
  const rs = new Rng(5);
  for (let i = 0; i < student.length; i++) student[i] = rs.normal();
  const exact = { ids: new Int32Array(rows * K), logprobs: new Float32Array(rows * K), k: K };
  for (let b = 0; b < wins.length; b++) {
    for (let t = 0; t < T; t++) {
      const want = sortTopK(ref[wins[b] * T + t], K);
      exact.ids.set(want.ids, (b * T + t) * K);
      exact.logprobs.set(want.lps, (b * T + t) * K);
    }
  }
  for (const tail of ['renorm', 'bucket'] as const) {
    for (const name of ['fkl', 'rkl', 'jsd'] as const) {
      const a = loss.computeSync(name, { student, teacher: got, rows, vocab: V, tail, grad: false });
      const e = loss.computeSync(name, { student, teacher: exact, rows, vocab: V, tail, grad: false });
      assert.ok(Math.abs(a.loss - e.loss) <= 2e-3 * Math.abs(e.loss) + 1e-4, `${name}/${tail}: ${a.loss} vs ${e.loss}`);
    }
  }
  // reading into a reused output
  const again = store.readSync(wins, got);
  assert.is(again, got);
  throwsUndoWith(() => store.readSync([23]), /window 23 is out of range/, 'window out of range');
  store.close();
});

test('logits fetched in row chunks give the same store', async () => {
  const d = dir('chunked');
  await cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH, logitRows: 7 });
  const a = openTeacherStore(REF);
  const b = openTeacherStore(d, { verify: 'open' });
  const all = Array.from({ length: DATA.count }, (_, i) => i);
  const x = a.readSync(all);
  const y = b.readSync(all);
  assert.equal(Array.from(y.ids), Array.from(x.ids));
  let worst = 0;
  for (let i = 0; i < x.logprobs.length; i++) worst = Math.max(worst, Math.abs(x.logprobs[i] - y.logprobs[i]));
  assert.ok(worst < 1e-3, `log-prob difference ${worst}`);
  a.close();
  b.close();
});

test('teacherForBatch (and teacherForBatchSync) returns the rows of the batch a Batcher hands out', async () => {
  const store = openTeacherStore(REF, { expect: expectationFor(teacher, DATA) });
  const batcher = new Batcher(DATA, { batchSize: 6, seed: 3 });
  for (let step = 0; step < 6; step++) { // straddles epochs (23 windows)
    const batch = batcher.next();
    const got = teacherForBatchSync(store, batcher, batch);
    const pooled = await teacherForBatch(store, batcher, batch);
    assert.equal(Array.from(pooled.ids), Array.from(got.ids));
    assert.equal(Array.from(pooled.logprobs), Array.from(got.logprobs));
    assert.is(got.rows, 6 * T);
    for (let b = 0; b < 6; b++) {
      // find the window by its inputs, then compare with a direct read
      const inputs = batch.inputs.subarray(b * T, (b + 1) * T);
      let w = -1;
      for (let i = 0; i < DATA.count && w < 0; i++) if (DATA.inputs(i).every((x, j) => x === inputs[j])) w = i;
      const one = store.readSync([w]);
      assert.equal(Array.from(got.ids.subarray(b * T * K, (b + 1) * T * K)), Array.from(one.ids), `step ${step} row ${b}`);
    }
  }
  store.close();
});

test('resume after losing the last shard recomputes it byte-identically', async () => {
  const d = dir('lost');
  copyDir(REF, d);
  fs.rmSync(path.join(d, shardFileName(4)));
  throwsUndoWith(() => openTeacherStore(d), /shard shard-00004\.bin is missing/, 'missing shard');
  await rejectsUndoWith(cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH }), /already holds a teacher store/, 'no --resume');
  const logs: string[] = [];
  const r = await cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH, resume: true, onLog: (m) => logs.push(m) });
  assert.is(r.shardsWritten, 1);
  assert.is(r.shardsKept, 4);
  assert.equal(r.repaired, [shardFileName(4)]);
  assert.ok(logs.some((l) => /shard-00004\.bin is missing/.test(l)), logs.join('\n'));
  assert.ok(r.manifest.complete);
  assertSameShards(REF, d, 'after resume');
  assert.equal(r.manifest.shards, refResult.manifest.shards);
  // resuming a complete store only verifies it
  const again = await cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH, resume: true });
  assert.is(again.shardsWritten, 0);
  assert.is(again.shardsKept, 5);
});

test('an interrupted run (abort, stale temp file) resumes to identical shards', async () => {
  const d = dir('crash');
  const ctl = new AbortController();
  const r1 = await cacheTeacher(teacher, DATA, {
    k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH, signal: ctl.signal,
    onProgress: (p) => {
      if (p.shardsDone >= 2) ctl.abort();
    },
  });
  assert.ok(r1.interrupted);
  assert.not.ok(r1.manifest.complete);
  assert.is(r1.manifest.shards.length, 2);
  assert.ok(!fs.existsSync(path.join(d, shardFileName(2))));
  throwsUndoWith(() => openTeacherStore(d), /is incomplete: 2 of 5 shards/, 'incomplete store');
  const partial = openTeacherStore(d, { allowIncomplete: true });
  assert.is(partial.readSync([9]).rows, T);
  throwsUndoWith(() => partial.readSync([10]), /shard-00002\.bin .*has not been written/, 'unwritten shard');
  partial.close();
  // a crash while shard 2 was being written leaves its temporary file behind
  const stale = path.join(d, `${shardFileName(2)}.tmp-99999-0123456789ab`);
  fs.writeFileSync(stale, Buffer.alloc(1000, 7));
  const logs: string[] = [];
  const r2 = await cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH, resume: true, onLog: (m) => logs.push(m) });
  assert.not.ok(r2.interrupted);
  assert.is(r2.shardsKept, 2);
  assert.is(r2.shardsWritten, 3);
  assert.ok(!fs.existsSync(stale), 'stale temp file removed');
  assert.ok(logs.some((l) => l.includes('removing')), logs.join('\n'));
  assertSameShards(REF, d, 'after crash + resume');
  assert.equal(fs.readdirSync(d).sort(), fs.readdirSync(REF).sort());
});

test('resume refuses another k, data, teacher or shard size', async () => {
  const d = dir('lost'); // a complete copy of REF by now
  await rejectsUndoWith(cacheTeacher(teacher, DATA, { k: 32, out: d, shardWindows: SHARD_W, resume: true }), /different top-k \(field k\)/, 'k');
  await rejectsUndoWith(cacheTeacher(teacher, OTHER, { k: K, out: d, shardWindows: SHARD_W, resume: true }), /different data \(field data\.sha256\)/, 'data');
  await rejectsUndoWith(cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: 4, resume: true }), /different shard size \(field shardWindows\)/, 'shard windows');
  const other = Model.create(tinyConfig('llama'), { seed: 8, std: 0.3 });
  await rejectsUndoWith(cacheTeacher(other, DATA, { k: K, out: d, shardWindows: SHARD_W, resume: true }), /different teacher \(field teacher\.sha256\)/, 'teacher');
  await rejectsUndoWith(cacheTeacher(teacher, DATA, { k: V + 1, out: dir('kbig') }), /k = 260 is larger than the teacher's vocabulary \(259\)/, 'k > vocab');
  assert.ok(!fs.existsSync(dir('kbig')), 'nothing written for a bad k');
});

test('corrupt, truncated and foreign shards are refused naming the store, the shard and the field', async () => {
  // a flipped byte: caught up front with verify 'open', on first use with 'lazy'
  const d = dir('corrupt');
  copyDir(REF, d);
  const f1 = path.join(d, shardFileName(1));
  const buf = fs.readFileSync(f1);
  buf[96 + 1234] ^= 0x10;
  fs.writeFileSync(f1, buf);
  const e = throwsUndoWith(() => openTeacherStore(d, { verify: 'open' }), /shard shard-00001\.bin is corrupt: .*\(field sha256\)/, 'corrupt, verify open');
  assert.ok(e.message.includes(d), 'names the store');
  const lazy = openTeacherStore(d);
  assert.is(lazy.readSync([0, 4]).rows, 2 * T);
  throwsUndoWith(() => lazy.readSync([5]), /shard-00001\.bin is corrupt/, 'corrupt, lazy');
  assert.is(lazy.readSync([22]).rows, T);
  lazy.close();
  const noCheck = openTeacherStore(d, { verify: 'none' });
  assert.is(noCheck.readSync([5]).rows, T);
  noCheck.close();
  // resume repairs it
  const r = await cacheTeacher(teacher, DATA, { k: K, out: d, shardWindows: SHARD_W, batchSize: BATCH, resume: true });
  assert.equal(r.repaired, [shardFileName(1)]);
  assertSameShards(REF, d, 'repaired');

  // truncated: refused when the store is opened, whatever the mode
  const t = dir('trunc');
  copyDir(REF, t);
  const f2 = path.join(t, shardFileName(2));
  fs.truncateSync(f2, fs.statSync(f2).size - 10);
  for (const verify of ['none', 'lazy', 'open'] as const) {
    throwsUndoWith(() => openTeacherStore(t, { verify }), /shard shard-00002\.bin is truncated: .*\(field bytes\)/, `truncated, ${verify}`);
  }

  // a shard of a store built on other data, dropped in with a consistent size: its header says so
  const foreign = dir('foreign-src');
  await cacheTeacher(teacher, OTHER, { k: K, out: foreign, shardWindows: SHARD_W, batchSize: BATCH });
  const f = dir('foreign');
  copyDir(REF, f);
  fs.copyFileSync(path.join(foreign, shardFileName(0)), path.join(f, shardFileName(0)));
  throwsUndoWith(() => openTeacherStore(f), /shard shard-00000\.bin was made with another data \(field data: /, 'foreign shard');
  // and one from a store with another tokenizer
  const swapped = new ByteTokenizer({ byteIds: Array.from({ length: 256 }, (_, i) => i), bos: 257, eos: 256, pad: 258 });
  const t2 = Model.create(tinyConfig('llama'), { seed: 7, std: 0.3 }, swapped);
  const tokSrc = dir('foreign-tok');
  await cacheTeacher(t2, DATA, { k: K, out: tokSrc, shardWindows: SHARD_W, batchSize: BATCH });
  const g = dir('foreign2');
  copyDir(REF, g);
  fs.copyFileSync(path.join(tokSrc, shardFileName(3)), path.join(g, shardFileName(3)));
  throwsUndoWith(() => openTeacherStore(g), /shard shard-00003\.bin was made with another tokenizer \(field tokenizer: /, 'foreign tokenizer shard');

  // a damaged manifest
  const j = dir('badmanifest');
  copyDir(REF, j);
  const man = JSON.parse(fs.readFileSync(path.join(j, 'manifest.json'), 'utf8'));
  man.shards[1].sha256 = 'xyz';
  fs.writeFileSync(path.join(j, 'manifest.json'), JSON.stringify(man));
  throwsUndoWith(() => openTeacherStore(j), /manifest\.json field "shards\[1\]\.sha256"/, 'bad manifest');
  throwsUndoWith(() => openTeacherStore(dir('nope')), /teacher store .* does not exist/, 'no store');
});

test('a store is refused for another tokenizer, data set or vocabulary', () => {
  const ex = expectationFor(teacher, DATA);
  openTeacherStore(REF, { expect: ex }).close();
  const swapped = new ByteTokenizer({ byteIds: Array.from({ length: 256 }, (_, i) => i), bos: 257, eos: 256, pad: 258 });
  assert.is.not(tokenizerHash(swapped), ex.tokenizerHash);
  const e = throwsUndoWith(() => openTeacherStore(REF, { expect: { ...ex, tokenizerHash: tokenizerHash(swapped) } }),
    /was built for another tokenizer \(field tokenizer\.sha256: /, 'tokenizer');
  assert.ok(e.message.includes(REF));
  throwsUndoWith(() => openTeacherStore(REF, { expect: { ...ex, dataHash: dataHash(OTHER) } }), /another data \(field data\.sha256: /, 'data');
  throwsUndoWith(() => openTeacherStore(REF, { expect: { ...ex, vocab: 260 } }), /another vocabulary \(field vocab: the store has 259, expected 260\)/, 'vocab');
  throwsUndoWith(() => openTeacherStore(REF, { expect: { ...ex, seqLen: 32 } }), /field seqLen/, 'seqLen');
});

// ---------------------------------------------------------------------------------------------

function testKit(): CliKit {
  const int = (name: string, min = 0) => (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
  const float = (name: string) => (v: string): number => Number(v);
  return {
    int, float,
    runtimeOptions: (cmd: Command) => cmd.addOption(new Option('--threads <n>')).addOption(new Option('--isa <isa>')),
    applyRuntime: () => undefined,
    trainingUi: () => ({ hooks: {}, stop: () => undefined }),
    printArithmeticTable: () => undefined,
    arithmeticMetrics: () => ({}),
  };
}

async function runCli(args: string[]): Promise<string[]> {
  const program = new Command();
  program.exitOverride();
  registerTeacherCommands(program, testKit());
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => lines.push(a.join(' '));
  try {
    await program.parseAsync(args, { from: 'user' });
  } finally {
    console.log = log;
  }
  return lines;
}

test('cache-teacher and teacher-store commands', async () => {
  const tdir = dir('teacher-model');
  teacher.save(tdir);
  const out = dir('cli-store');
  const args = ['cache-teacher', '--teacher', tdir, '--data', 'arithmetic:add', '--docs', '60', '--topk', '16', '--seq-len', '16',
    '--out', out, '--shard-windows', '4', '--batch-size', '3', '--no-progress'];
  const lines = await runCli(args);
  const last = lines[lines.length - 1];
  assert.match(last, /^cached \d+ tokens \(\d+ windows × 16, top-16 of 259, \d+ shards\) in .*: 44 bytes\/token/, last);
  const docs = documentsFrom('arithmetic:add', '--data', 60, 0);
  const data = packDocuments(teacher.tokenizer, docs, 16, { seed: 0 });
  const store = openTeacherStore(out, { expect: { ...expectationFor(teacher, data), teacherHash: teacherHashFromDir(tdir) }, verify: 'open' });
  assert.is(store.numWindows, data.count);
  assert.is(store.manifest.bytesPerToken, 44); // 16 × 9-bit ids + 56 + 15 × 10 bits = 350 bits
  store.close();
  await rejectsUndoWith(runCli(args), /already holds a teacher store/, 'second run without --resume');
  const again = await runCli([...args, '--resume']);
  assert.match(again[again.length - 1], /\d+ shards \(\d+ kept from the earlier run\)/);
  const info = await runCli(['teacher-store', out, '--verify']);
  assert.match(info.join('\n'), /complete; \d+ tokens/);
  assert.match(info.join('\n'), /verified \d+ shard\(s\)/);
  await rejectsUndoWith(runCli(['cache-teacher', '--teacher', tdir, '--data', 'arithmetic:add', '--docs', '60', '--topk', '300', '--seq-len', '16', '--out', dir('cli-k'), '--no-progress']),
    /--topk 300 is larger than the teacher's vocabulary \(259\)/, '--topk > vocab');
});

test.after(() => {
  fs.rmSync(TMP, { recursive: true, force: true });
});

test.run();
