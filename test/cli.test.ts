/**
 * The command line, end to end: `node bin/undo-native.js ...` in child processes (needs `npx tsc` first).
 * Help, clean one-line errors for bad input, a short real pretrain run with exact resume, eval and
 * generate on its output, and Ctrl-C during training (checkpoint, exit code 130, a --resume hint).
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../lib/models/model';
import { FIXTURES, ROOT } from './helpers';

const BIN = path.join(ROOT, 'bin', 'undo-native.js');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-cli-'));

function childEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.UNDO_DEBUG;
  delete env.UNDO_ISA;
  return env;
}

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], timeoutMs = 120_000): Run {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, env: childEnv(), encoding: 'utf8', timeout: timeoutMs });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function show(r: Run): string {
  return `exit ${r.status} (signal ${r.signal})\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/** Exit status 1, one `error: ...` line first on stderr matching `re`, and no stack trace anywhere. */
function assertCleanError(r: Run, re: RegExp): void {
  assert.is(r.status, 1, `expected exit status 1\n${show(r)}`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.ok(lines.length > 0, 'nothing on stderr');
  assert.ok(lines[0].startsWith('error: '), `the first stderr line is not "error: ...": ${lines[0]}`);
  assert.match(lines[0], re);
  assert.is(lines.filter((l) => l.startsWith('error')).length, 1, `more than one error line\n${show(r)}`);
  for (const out of [r.stdout, r.stderr]) {
    assert.not.match(out, /^\s+at .+[(:]\d+/m, `stack trace printed\n${show(r)}`);
    assert.not.match(out, /UndoError|TypeError|Node\.js v\d/, `raw exception printed\n${show(r)}`);
  }
}

interface StepLine {
  step: number;
  loss: number;
  tokens: number;
}

function readMetrics(dir: string): { steps: StepLine[]; evals: Array<{ step: number; eval: Record<string, number> }> } {
  const steps: StepLine[] = [];
  const evals: Array<{ step: number; eval: Record<string, number> }> = [];
  const file = path.join(dir, 'metrics.jsonl');
  if (!fs.existsSync(file)) return { steps, evals };
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue; // a line being written right now
    }
    if (typeof rec.loss === 'number') steps.push(rec as unknown as StepLine);
    else if (rec.eval) evals.push(rec as unknown as { step: number; eval: Record<string, number> });
  }
  return { steps, evals };
}

const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

// A tiny, fast training run (the defaults train for 3000 steps on 200k documents). The warm-up is pinned
// at its default of 100 steps: the exact-resume check below relies on every compared step being inside it.
const QUICK = ['--task', 'arithmetic', '--preset', 'tiny', '--docs', '2000', '--eval-every', '0', '--eval-per-form', '2', '--warmup', '100', '--no-progress'];

test('--help lists the commands', () => {
  const r = cli(['--help']);
  assert.is(r.status, 0, show(r));
  for (const cmd of ['pretrain', 'eval', 'generate', 'distill', 'unlearn', 'noise', 'relearn', 'undo']) assert.match(r.stdout, new RegExp(`^\\s+${cmd}\\b`, 'm'), `--help lacks ${cmd}`);
  const p = cli(['pretrain', '--help']);
  assert.is(p.status, 0, show(p));
  for (const opt of ['--steps', '--resume', '--out', '--data', '--isa']) assert.ok(p.stdout.includes(opt), `pretrain --help lacks ${opt}`);
});

test('bad input: one clean error line, exit 1, no stack trace', () => {
  const missing = path.join(TMP, 'no-such-model');
  assertCleanError(cli(['eval', '--model', missing]), new RegExp(`${missing}.*does not exist`));
  assertCleanError(cli(['generate', '--model', missing, '--prompt', 'x']), /does not exist/);

  // a corrupt (truncated) model.safetensors
  const corrupt = path.join(TMP, 'corrupt');
  fs.mkdirSync(corrupt);
  for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(FIXTURES, 'llama', f), path.join(corrupt, f));
  const st = path.join(corrupt, 'model.safetensors');
  fs.truncateSync(st, Math.floor(fs.statSync(st).size / 2));
  const text = path.join(TMP, 'small.txt');
  fs.writeFileSync(text, 'hello\n');
  assertCleanError(cli(['eval', '--model', corrupt, '--text-file', text, '--json']), /model\.safetensors/);
  assertCleanError(cli(['eval', '--model', corrupt]), /model\.safetensors/);

  const out = path.join(TMP, 'never-written');
  assertCleanError(cli(['pretrain', '--steps', 'abc', '--out', out]), /--steps.*abc/);
  assertCleanError(cli(['pretrain', '--steps', '0', '--out', out]), /--steps/);
  const noData = path.join(TMP, 'no-such-data.txt');
  assertCleanError(cli(['pretrain', '--data', noData, '--out', out, '--steps', '1', '--no-progress']), new RegExp(`not found: ${noData}`));
  assertCleanError(cli(['pretrain', '--isa', 'sse9', '--out', out]), /--isa.*sse9/);
  assertCleanError(cli(['pretrain', '--preset', 'huge', '--out', out]), /--preset.*huge/);
  assertCleanError(cli(['pretrain', '--task', 'poetry', '--out', out, '--steps', '1']), /unknown task "poetry"/);
  assertCleanError(cli(['pretrain', '--resume', '--out', out, '--steps', '1']), new RegExp(`${out}.*does not exist`));
  assert.not.ok(fs.existsSync(out), 'a failed pretrain left an output directory');
});

test('bad input for distill / unlearn / noise / undo fails before any work', () => {
  const llama = path.join(FIXTURES, 'llama');
  const out = path.join(TMP, 'never-written-2');
  assertCleanError(cli(['unlearn', '--method', 'forgetall', '--model', llama, '--out', out]), /--method.*forgetall/);
  assertCleanError(cli(['noise', '--model', llama, '--alpha', '1.5', '--out', out]), /--alpha must be in \[0, 1\], got 1\.5/);
  assertCleanError(cli(['noise', '--model', llama, '--alpha', '0.5', '--beta', '-1', '--out', out]), /--beta/);
  assertCleanError(cli(['unlearn', '--model', llama, '--forget', 'arithmetic:add', '--retain', 'arithmetic:add', '--docs', '50', '--out', out]), /same data/);
  assertCleanError(cli(['unlearn', '--model', llama, '--forget', 'arithmetic:pow', '--out', out]), /unknown operation "pow"/);
  assertCleanError(cli(['distill', '--teacher', llama, '--student', path.join(FIXTURES, 'gemma2'), '--docs', '50', '--out', out]), /vocab_size 61 differs from the teacher's 67/);
  assertCleanError(cli(['undo', '--preset', 'everything']), /--preset.*everything/);
  assertCleanError(cli(['project', '--model', llama, '--eta', '3', '--out', out]), /--eta must be in \[0, 1\], got 3/);
  assertCleanError(cli(['undo', '--teacher', llama, '--alpha', '2']), /--alpha/);
  assertCleanError(cli(['distill', '--teacher', llama, '--skip-nonfinite', '-1', '--out', out]), /--skip-nonfinite/);
  assertCleanError(cli(['pretrain', '--skip-nonfinite', '1.5', '--out', out]), /--skip-nonfinite/);
  assert.not.ok(fs.existsSync(out), 'a failed command left an output directory');
});

test('pretrain 20 steps → files and falling loss; --resume to 25 is exact; eval --json; generate', () => {
  const out = path.join(TMP, 'run');
  const r = cli(['pretrain', ...QUICK, '--steps', '20', '--out', out]);
  assert.is(r.status, 0, show(r));
  assert.match(r.stdout, /done: 20 steps/);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'trainer_state.json', 'optimizer.safetensors', 'metrics.jsonl']) {
    assert.ok(fs.existsSync(path.join(out, f)), `${f} missing`);
  }
  assert.equal(fs.readdirSync(TMP).filter((n) => n.startsWith('.')), [], 'temporary checkpoint directories left behind');
  const m20 = readMetrics(out);
  assert.equal(m20.steps.map((s) => s.step), range(1, 20));
  for (const s of m20.steps) assert.ok(Number.isFinite(s.loss), `step ${s.step} loss ${s.loss}`);
  assert.ok(m20.steps[19].loss < m20.steps[0].loss - 0.1, `loss did not decrease: ${m20.steps[0].loss} → ${m20.steps[19].loss}`);
  assert.equal(m20.evals.map((e) => e.step), [20], 'one final eval');
  assert.ok(Number.isFinite(m20.evals[0].eval.val_loss));
  const state20 = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8')) as { step: number; tokens: number };
  assert.is(state20.step, 20);
  assert.is(state20.tokens, m20.steps[19].tokens);

  const r2 = cli(['pretrain', ...QUICK, '--steps', '25', '--out', out, '--resume']);
  assert.is(r2.status, 0, show(r2));
  assert.match(r2.stdout, /done: 25 steps/);
  const m25 = readMetrics(out);
  assert.equal(m25.steps.map((s) => s.step), range(1, 25), 'steps 1..25 exactly once each');
  assert.equal(m25.steps.slice(0, 20), m20.steps, 'the first 20 step lines are kept as they were');
  assert.equal(m25.evals.map((e) => e.step), [20, 25]);
  const perStep = m20.steps[0].tokens;
  assert.is(m25.steps[20].tokens, 21 * perStep, 'token count continues');
  const state25 = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8')) as { step: number };
  assert.is(state25.step, 25);

  // exact resume: 20 + 5 steps equal 25 uninterrupted steps (both inside the 100-step warm-up, so the
  // learning rates agree even though --steps differs)
  const straight = path.join(TMP, 'straight');
  const r3 = cli(['pretrain', ...QUICK, '--steps', '25', '--out', straight]);
  assert.is(r3.status, 0, show(r3));
  assert.equal(readMetrics(straight).steps.map((s) => s.loss), m25.steps.map((s) => s.loss), 'losses of resumed vs uninterrupted run');
  assert.ok(fs.readFileSync(path.join(straight, 'model.safetensors')).equals(fs.readFileSync(path.join(out, 'model.safetensors'))),
    'weights after resume differ from an uninterrupted run');

  // eval --text-file --json: mean loss over every byte of the file (byte tokenizer, BOS prepended)
  const text = path.join(TMP, 'eval.txt');
  fs.writeFileSync(text, '12 + 7 = 19\n3 * 4 = 12\nwhat is 5 - 2? 3 — grüße\n');
  const ev = cli(['eval', '--model', out, '--text-file', text, '--json']);
  assert.is(ev.status, 0, show(ev));
  const res = JSON.parse(ev.stdout.trim().split('\n').pop()!) as { loss: number; tokens: number };
  assert.equal(Object.keys(res).sort(), ['loss', 'tokens']);
  assert.is(res.tokens, fs.statSync(text).size);
  assert.ok(Number.isFinite(res.loss) && res.loss > 0 && res.loss < 10, `loss ${res.loss}`);
  assertCleanError(cli(['eval', '--model', out, '--text-file', path.join(TMP, 'nope.txt')]), /--text-file/);

  const gen = cli(['generate', '--model', out, '--prompt', '1 + 1 =', '--max-new-tokens', '8']);
  assert.is(gen.status, 0, show(gen));
  assert.ok(gen.stdout.startsWith('1 + 1 ='), gen.stdout);
  assert.is(gen.stderr, '');

  const info = cli(['info', '--model', out]);
  assert.is(info.status, 0, show(info));
  assert.match(info.stdout, /llama: 4 layers, d=128/);
});

test('distill: held-out val_loss and val_kl every N steps, --stop-when stops at the first eval that meets it', () => {
  const teacher = path.join(TMP, 'run');  // the 25-step model of the test above
  const data = path.join(TMP, 'distill.txt');
  fs.writeFileSync(data, Array.from({ length: 300 }, (_, i) => `${i} + ${i % 7} = ${i + (i % 7)}`).join('\n\n'));
  const out = path.join(TMP, 'distilled');
  const args = ['distill', '--teacher', teacher, '--student', 'micro', '--data', data, '--val-fraction', '0.1', '--steps', '40', '--eval-every', '4', '--batch-size', '4', '--seq-len', '32', '--no-progress'];
  const r = cli([...args, '--stop-when', 'val_kl<=1000', '--out', out]);
  assert.is(r.status, 0, show(r));
  assert.match(r.stdout, /distilled 4 steps \(fkl\) \(stopped early: val_kl<=1000\)/);
  const evals = readMetrics(out).evals;
  assert.equal(evals.map((e) => e.step), [4]);
  const e = evals[0].eval;
  assert.ok(Number.isFinite(e.val_loss) && e.val_loss > 0, `val_loss ${e.val_loss}`);
  assert.ok(Number.isFinite(e.val_kl) && e.val_kl > 0, `val_kl ${e.val_kl}`);
  assert.match(r.stdout, /^val_kl\s+n\/a\s+\d+\.\d{4}$/m, 'the side-by-side table shows the student\'s val_kl');
  // a condition that is not met runs to the end; an unknown metric is a clean error naming those evaluated
  const r2 = cli([...args, '--steps', '8', '--stop-when', 'val_kl<=0', '--out', out]);
  assert.is(r2.status, 0, show(r2));
  assert.match(r2.stdout, /distilled 8 steps \(fkl\); /);
  assertCleanError(cli([...args, '--stop-when', 'accuracy>=0.9', '--out', out]), /--stop-when accuracy>=0\.9: the evaluation has no metric "accuracy"/);
  assertCleanError(cli([...args, '--stop-when', 'val_kl=0.1', '--out', out]), /--stop-when "val_kl=0\.1": expected METRIC<=VALUE/);
  // jsd:β inline, from the online teacher's top-8 with the bucket tail; a config.json student
  const cfgFile = path.join(TMP, 'student-config.json');
  fs.writeFileSync(cfgFile, fs.readFileSync(path.join(teacher, 'config.json')));
  const r3 = cli([...args, '--steps', '4', '--loss', 'jsd:0.3', '--topk', '8', '--tail', 'bucket', '--student', cfgFile, '--out', out]);
  assert.is(r3.status, 0, show(r3));
  assert.match(r3.stdout, /distilled 4 steps \(jsd:0\.3, teacher top-8\); /);
  assert.match(r3.stdout, /teacher 0\.82M → student 0\.82M parameters/);
  assertCleanError(cli([...args, '--loss', 'fkl:0.3', '--out', out]), /only jsd:β, skl:α and srkl:α take a parameter/);
  assertCleanError(cli([...args, '--loss', 'jsd:2', '--out', out]), /the parameter must be a number in \[0, 1\]/);
  assertCleanError(cli([...args, '--loss', 'kl', '--out', out]), /unknown loss "kl"/);
});

test('Ctrl-C during pretrain: checkpoint, exit code 130, a --resume hint, and the run resumes', async () => {
  const out = path.join(TMP, 'interrupted');
  const child = spawn(process.execPath, [BIN, 'pretrain', ...QUICK, '--steps', '100000', '--checkpoint-every', '0', '--out', out],
    { cwd: ROOT, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })));
  let exitedEarly = false;
  void exited.then(() => (exitedEarly = true));
  try {
    const deadline = Date.now() + 60_000;
    let seen = 0;
    while (!exitedEarly && Date.now() < deadline) {
      seen = readMetrics(out).steps.length;
      if (seen >= 2) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.not.ok(exitedEarly, `pretrain exited before it was interrupted\n${stdout}\n${stderr}`);
    assert.ok(seen >= 2, 'no step lines in metrics.jsonl within 60 s');
    child.kill('SIGINT');
    const { code, signal } = await exited;
    assert.is(signal, null, `killed by ${signal} instead of stopping cleanly\n${stdout}\n${stderr}`);
    assert.is(code, 130, `exit code ${code}\n${stdout}\n${stderr}`);
    assert.match(stdout, /interrupted at step \d+/);
    assert.match(stdout, /--resume/);
    assert.not.match(stderr, /^\s+at /m);

    const state = JSON.parse(fs.readFileSync(path.join(out, 'trainer_state.json'), 'utf8')) as { step: number };
    assert.ok(state.step >= seen, `checkpoint at step ${state.step}, but ${seen} steps were logged before the interrupt`);
    assert.match(stdout, new RegExp(`interrupted at step ${state.step}\\b`));
    const m = readMetrics(out);
    assert.equal(m.steps.map((s) => s.step), range(1, state.step), 'metrics hold exactly the checkpointed steps');
    const model = Model.load(out);
    assert.ok(model.params.every(Number.isFinite));
    assert.ok(fs.existsSync(path.join(out, 'optimizer.safetensors')));
    assert.equal(fs.readdirSync(TMP).filter((n) => n.startsWith('.')), [], 'temporary checkpoint directories left behind');

    // the interrupted run continues with --resume
    const r = cli(['pretrain', ...QUICK, '--steps', String(state.step + 1), '--out', out, '--resume']);
    assert.is(r.status, 0, show(r));
    assert.equal(readMetrics(out).steps.map((s) => s.step), range(1, state.step + 1));
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});

test.after(() => {
  fs.rmSync(TMP, { recursive: true, force: true });
});

test.run();
