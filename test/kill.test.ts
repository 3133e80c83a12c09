/**
 * Crash tests, as SQLite's: `pretrain`, `distill` and `cache-teacher` are killed with SIGKILL at random points
 * (seeded; checkpoints every 2 steps, so many kills land inside a checkpoint or shard write) and at injected
 * points (UNDO_CRASH_AT: halfway through an atomic file, and between the two renames of a directory swap).
 * After every kill the output is the previous valid checkpoint or the new one (loadable, its optimizer state
 * from the same save, never behind the one before) and `--resume` ends with weights, metrics and store bytes
 * identical to an uninterrupted run with the same seed. The UNDO study's kill test is in undo_study.test.ts;
 * the full-disk tests are here too.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../lib/models/model';
import { readSafetensors } from '../lib/formats/safetensors';
import { readManifest } from '../lib/distill/teacher_store';
import { sha256File, saveDirAtomic, recoverDir } from '../lib/core/fsutil';
import { Rng } from '../lib/core/rng';
import { ROOT } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-kill-'));
const BIN = path.join(ROOT, 'bin', 'undo-native.js');
const KILL_SEEDS = [20261207, 7];

const PRETRAIN = ['pretrain', '--preset', 'micro', '--steps', '150', '--batch-size', '4', '--seq-len', '32', '--docs', '2000',
  '--checkpoint-every', '2', '--eval-every', '25', '--eval-per-form', '5', '--warmup', '2', '--no-progress'];
const distillArgs = (teacher: string) => ['distill', '--teacher', teacher, '--student', 'micro', '--data', 'arithmetic', '--docs', '2000',
  '--steps', '120', '--checkpoint-every', '2', '--eval-every', '25', '--batch-size', '4', '--seq-len', '32', '--loss', 'taid', '--on-policy', '0.2', '--no-progress'];
const cacheArgs = (teacher: string) => ['cache-teacher', '--teacher', teacher, '--data', 'arithmetic', '--docs', '3000', '--seq-len', '32',
  '--topk', '8', '--shard-windows', '8', '--no-progress'];

function run(args: string[], env: Record<string, string> = {}): { status: number | null; signal: string | null; out: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  return { status: r.status, signal: r.signal, out: r.stdout + r.stderr, ms: Date.now() - t0 };
}

/** Runs the command and SIGKILLs it after `delay` ms; true when the kill landed (the run had not finished). */
async function killAfter(args: string[], delay: number): Promise<boolean> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: 'ignore' });
  const timer = setTimeout(() => child.kill('SIGKILL'), delay);
  const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
  clearTimeout(timer);
  assert.ok(code === 0 || signal === 'SIGKILL', `${args[0]} ended with code ${code}, signal ${signal}`);
  return signal === 'SIGKILL';
}

/** metrics.jsonl without its wall-clock fields */
function metrics(dir: string): unknown[] {
  return fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l.trim()).map((l) => {
    const { tokens_per_sec: _a, elapsed_sec: _b, ...rest } = JSON.parse(l) as Record<string, unknown>;
    return rest;
  });
}

/**
 * The state of a training output after a kill: null when no checkpoint was written yet, else its step. The
 * directory must load (Model.load puts back a directory caught between the renames of its swap) and its
 * optimizer state must be from the same save as its trainer state; nothing of a killed save may remain beside it.
 */
function checkpointStep(dir: string): number | null {
  const stateFile = path.join(dir, 'trainer_state.json');
  const parent = path.dirname(dir), base = path.basename(dir);
  if (!fs.existsSync(stateFile) && !fs.readdirSync(parent).some((f) => f.startsWith(`.${base}.old-`))) return null;
  const m = Model.load(dir);
  assert.ok(m.numParams() > 0);
  const state = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { step: number };
  const optim = readSafetensors(path.join(dir, 'optimizer.safetensors'));
  assert.is(Number(optim.metadata.adam_step), state.step, `${dir}: optimizer state of step ${optim.metadata.adam_step} beside trainer state of step ${state.step}`);
  const left = fs.readdirSync(parent).filter((f) => f.startsWith(`.${base}.`));
  assert.equal(left, [], `${dir}: left beside it after recovery: ${left.join(', ')}`);
  return state.step;
}

/**
 * Kill `args` (with --out dir) three times at random points (each within the work still left: `done` gives the
 * fraction finished) and once at each injected crash point, checking the output after every kill (`check`
 * returns its progress, e.g. the checkpoint's step, never going back), then finish the run; returns the number
 * of kills that landed (a run may end before its kill).
 */
async function killAndResume(args: string[], dir: string, refMs: number, seed: number, o: {
  check: (dir: string) => number | null; done: (progress: number | null) => number; crashes: string[]; resume: (progress: number | null) => boolean;
}): Promise<number> {
  const rng = new Rng(seed);
  let last: number | null = null;
  let kills = 0;
  const next = () => [...args, '--out', dir, ...(o.resume(last) ? ['--resume'] : [])];
  const after = () => {
    const p = o.check(dir);
    if (last !== null) assert.ok(p !== null && p >= last, `progress went back from ${last} to ${p}`);
    last = p;
  };
  for (let i = 0; i < 3; i++) {
    const left = 1 - o.done(last);
    if (await killAfter(next(), 300 + Math.floor(rng.next() * Math.max(0, refMs - 300) * left * 0.7))) kills++;
    after();
  }
  for (const at of o.crashes) {
    const r = run(next(), { UNDO_CRASH_AT: at });
    assert.ok(r.signal === 'SIGKILL' || r.status === 0, `UNDO_CRASH_AT=${at}: ${r.status} ${r.signal}\n${r.out}`);
    if (r.signal === 'SIGKILL') kills++;
    after();
  }
  const fin = run(next());
  assert.is(fin.status, 0, fin.out);
  return kills;
}

const trainKills = (steps: number, rng: Rng) => ({
  check: checkpointStep, done: (s: number | null) => (s ?? 0) / steps, resume: (s: number | null) => s !== null,
  crashes: [`swap:${2 + rng.int(0, 4)}`, `write:${3 + rng.int(0, 12)}`],
});

let teacherDir = '';
const counts: Record<string, number> = {};

/**
 * A training command's crash test: an uninterrupted reference run, then per kill seed a run killed and resumed
 * (killAndResume) that must end with the reference's weights, optimizer state, metrics and run state. Returns
 * the reference directory.
 */
async function killTraining(name: string, args: string[], steps: number): Promise<string> {
  const ref = path.join(TMP, `${name}-ref`);
  const r = run([...args, '--out', ref]);
  assert.is(r.status, 0, r.out);
  const file = (d: string, f: string) => sha256File(path.join(d, f));
  const runState = (d: string) => (JSON.parse(fs.readFileSync(path.join(d, 'trainer_state.json'), 'utf8')) as { run?: unknown }).run;
  for (const seed of KILL_SEEDS) {
    const dir = path.join(TMP, `${name}-${seed}`);
    const kills = counts[`${name} ${seed}`] = await killAndResume(args, dir, r.ms, seed, trainKills(steps, new Rng(seed + 1)));
    assert.ok(kills >= 3, `${name}: only ${kills} of 5 kills landed`);
    assert.is(file(dir, 'model.safetensors'), file(ref, 'model.safetensors'), `${name}: weights differ from the uninterrupted run`);
    assert.is(file(dir, 'optimizer.safetensors'), file(ref, 'optimizer.safetensors'), `${name}: optimizer state differs`);
    assert.equal(metrics(dir), metrics(ref));
    assert.equal(runState(dir), runState(ref), `${name}: run state (sampling RNG, TAID) differs`);
  }
  return ref;
}

test('pretrain: killed (SIGKILL) at random points and inside checkpoint writes, --resume ends bit-identical to an uninterrupted run', async () => {
  teacherDir = await killTraining('pretrain', PRETRAIN, 150);
});

test('distill (TAID, on-policy sampling): killed at random points and inside checkpoint writes, --resume ends bit-identical', async () => {
  assert.ok(teacherDir, 'needs the pretrain test\'s model as the teacher');
  await killTraining('distill', distillArgs(teacherDir), 120);
});

test('--resume refuses what it cannot continue: no checkpoint yet, or a run with other options (the field named)', () => {
  assert.ok(teacherDir, 'needs the pretrain test\'s model as the teacher');
  const empty = path.join(TMP, 'resume-empty');
  fs.mkdirSync(empty);
  fs.writeFileSync(path.join(empty, 'metrics.jsonl'), '');
  const a = run([...distillArgs(teacherDir), '--out', empty, '--resume']);
  assert.is(a.status, 1, a.out);
  assert.match(a.out, /holds no checkpoint of a distillation/);
  assert.match(a.out, /stopped before its first checkpoint: start it again without --resume/);
  const other = path.join(TMP, 'resume-other');
  fs.cpSync(path.join(TMP, 'distill-ref'), other, { recursive: true });
  const args = distillArgs(teacherDir).map((x) => (x === 'taid' ? 'rkl' : x));
  const b = run([...args, '--out', other, '--resume']);
  assert.is(b.status, 1, b.out);
  assert.match(b.out, /it was saved by a run with loss = "taid", this run has loss = "rkl"/);
  const c = run([...PRETRAIN, '--out', path.join(TMP, 'resume-none'), '--resume']);
  assert.is(c.status, 1, c.out);
  assert.match(c.out, /does not exist|holds no checkpoint/);
});

test('--resume after a kill between the renames of a checkpoint swap: the previous checkpoint is put back and resumed', () => {
  assert.ok(teacherDir, 'needs the pretrain test\'s reference run');
  const parent = path.join(TMP, 'mid-swap');
  fs.mkdirSync(parent);
  // the state such a kill leaves: OUT moved aside as .OUT.old-PID-MS (a dead pid), the new one never moved in
  fs.cpSync(teacherDir, path.join(parent, '.run.old-999999-1'), { recursive: true });
  const r = run([...PRETRAIN, '--out', path.join(parent, 'run'), '--resume']);
  assert.is(r.status, 0, r.out);
  assert.equal(fs.readdirSync(parent), ['run']);
  assert.is(sha256File(path.join(parent, 'run', 'model.safetensors')), sha256File(path.join(teacherDir, 'model.safetensors')));
});

/** A store after a kill: no manifest yet, or a manifest whose every listed shard is whole (size and sha256). */
function storeShards(dir: string): number | null {
  if (!fs.existsSync(path.join(dir, 'manifest.json'))) return null;
  const m = readManifest(dir);
  for (const s of m.shards) {
    const f = path.join(dir, s.file);
    assert.is(fs.statSync(f).size, s.bytes, `${s.file}: size`);
    assert.is(sha256File(f), s.sha256, `${s.file}: listed but not whole`);
  }
  return m.shards.length;
}

test('cache-teacher: killed at random points and inside shard/manifest writes; every listed shard stays whole and --resume gives the same bytes', async () => {
  assert.ok(teacherDir, 'needs the pretrain test\'s model as the teacher');
  const args = cacheArgs(teacherDir);
  const ref = path.join(TMP, 'store-ref');
  const r = run([...args, '--out', ref]);
  assert.is(r.status, 0, r.out);
  for (const seed of KILL_SEEDS) {
    const dir = path.join(TMP, `store-${seed}`);
    const shards = readManifest(ref).numShards;
    const kills = await killAndResume(args, dir, r.ms, seed, {
      check: storeShards, done: (n) => (n ?? 0) / shards, resume: () => fs.existsSync(dir),
      crashes: [`write:${10 + new Rng(seed + 1).int(0, 40)}`],
    });
    counts[`cache-teacher ${seed}`] = kills;
    assert.ok(kills >= 3, `only ${kills} of 4 kills landed`);
    const strip = (d: string) => {
      const { updatedAt: _u, ...m } = readManifest(d) as unknown as Record<string, unknown>;
      return m;
    };
    assert.equal(strip(dir), strip(ref));
    for (const s of readManifest(ref).shards) assert.is(sha256File(path.join(dir, s.file)), s.sha256, s.file);
    assert.equal(fs.readdirSync(dir).sort(), fs.readdirSync(ref).sort());
  }
  console.log(`  kills landed: ${Object.entries(counts).map(([k, v]) => `${k}: ${v}`).join(', ')}`);
});

test('a save killed between the renames of its directory swap: the previous directory comes back whole', () => {
  const dir = path.join(TMP, 'swap', 'model');
  saveDirAtomic(dir, (tmp) => fs.writeFileSync(path.join(tmp, 'a.txt'), 'first'));
  // the state a kill between the two renames leaves: the old directory moved aside, the new one not yet in
  const old = path.join(path.dirname(dir), `.model.old-999999-${Date.now()}`);
  fs.renameSync(dir, old);
  fs.mkdirSync(path.join(path.dirname(dir), '.model.tmp-999999-1'));
  fs.writeFileSync(path.join(path.dirname(dir), '.model.tmp-999999-1', 'a.txt'), 'half');
  assert.ok(!fs.existsSync(dir));
  assert.ok(recoverDir(dir));
  assert.is(fs.readFileSync(path.join(dir, 'a.txt'), 'utf8'), 'first');
  assert.equal(fs.readdirSync(path.dirname(dir)), ['model']);
  assert.not.ok(recoverDir(dir), 'nothing left to recover');
  // a later save replaces it as usual
  saveDirAtomic(dir, (tmp) => fs.writeFileSync(path.join(tmp, 'a.txt'), 'second'));
  assert.is(fs.readFileSync(path.join(dir, 'a.txt'), 'utf8'), 'second');
  assert.equal(fs.readdirSync(path.dirname(dir)), ['model']);
});

/** A 1 MiB tmpfs at `dir`, or why one cannot be made here (then the test is skipped, saying so). */
function smallDisk(dir: string, size = '1m'): string | null {
  fs.mkdirSync(dir, { recursive: true });
  if (process.platform !== 'linux') return 'not Linux';
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { encoding: 'utf8' });
  return r.status === 0 ? null : `mount -t tmpfs failed (${(r.stderr || r.error?.message || '').trim() || `exit ${r.status}`}); needs root or CAP_SYS_ADMIN`;
}

// a full disk needs a small filesystem of its own: a tmpfs, when this process may mount one (else skipped, saying why)
const NO_TMPFS = (() => {
  const probe = path.join(TMP, 'probe');
  const why = smallDisk(probe);
  if (!why) spawnSync('umount', [probe]);
  return why;
})();
const diskTest = (name: string, fn: () => void) => {
  if (!NO_TMPFS) return test(name, fn);
  console.log(`  skip: ${name}: ${NO_TMPFS}`);
  test.skip(name, fn);
};

diskTest('a full disk: pretrain fails with a clear error naming the disk and --out, and the last checkpoint stays whole', () => {
  const mnt = path.join(TMP, 'full');
  const why = smallDisk(mnt, '3600k');
  assert.is(why, null);
  try {
    const out = path.join(mnt, 'run');
    // one checkpoint of the micro model (weights 0.86 MB, optimizer 1.7 MB) fits, a second beside it does not
    const args = ['pretrain', '--preset', 'micro', '--steps', '6', '--batch-size', '2', '--seq-len', '16', '--docs', '300', '--checkpoint-every', '2',
      '--eval-every', '0', '--eval-per-form', '2', '--warmup', '0', '--out', out, '--no-progress'];
    const r = run(args);
    assert.is(r.status, 4, r.out);
    assert.match(r.out, /code: ERR_DISK_FULL \(exit 4\)/);
    assert.match(r.out, /the disk is full \(ENOSPC/);
    assert.match(r.out, new RegExp(`cannot save ${out.replace(/[/.]/g, '\\$&')}`));
    assert.match(r.out, /still holds its previous save/);
    assert.not.match(r.out, /at .*\.js:\d+/, 'a stack trace instead of an error');
    // the checkpoint before the failed one (if any was made) loads; nothing of the failed save remains
    const left = fs.readdirSync(mnt).filter((f) => f !== 'run');
    assert.equal(left, [], `left on the full disk: ${left.join(', ')}`);
    assert.is(checkpointStep(out), 2, 'the step-2 checkpoint is intact');
  } finally {
    spawnSync('umount', [mnt]);
  }
});

diskTest('a full disk while caching a teacher: a clear error, and the store\'s listed shards stay whole', () => {
  assert.ok(teacherDir, 'needs the pretrain test\'s model as the teacher');
  const mnt = path.join(TMP, 'full-store');
  const why = smallDisk(mnt, '256k');
  assert.is(why, null);
  try {
    const out = path.join(mnt, 'store');
    const r = run([...cacheArgs(teacherDir), '--out', out]);
    assert.is(r.status, 4, r.out);
    assert.match(r.out, /code: ERR_DISK_FULL/);
    assert.match(r.out, /the disk is full \(ENOSPC\)/);
    assert.not.match(r.out, /at .*\.js:\d+/, 'a stack trace instead of an error');
    const n = storeShards(out);
    assert.ok(n !== null && n > 0, 'some shards were written before the disk filled');
  } finally {
    spawnSync('umount', [mnt]);
  }
});

test.after(() => {
  for (const m of ['full', 'full-store']) spawnSync('umount', [path.join(TMP, m)], { stdio: 'ignore' });
  fs.rmSync(TMP, { recursive: true, force: true });
});

test.run();
