/**
 * examples/*.mjs run as a user runs them (`node examples/X.mjs`, importing the package by its name through
 * `exports`), each checked on what it printed and wrote: the distilled student's losses and saved directory,
 * the KD server answering while it distills, the worker's streamed metrics, and the aborted-then-resumed unlearning.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../lib/models/model';
import { ROOT } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-examples-'));
const example = (name: string) => path.join(ROOT, 'examples', name);

/** Runs an example to its end: exit status, stdout, stderr, seconds. */
function run(name: string, args: string[] = [], env: Record<string, string> = {}) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [example(name), ...args], { cwd: ROOT, env: { ...process.env, ...env }, encoding: 'utf8', timeout: 60_000 });
  const sec = (performance.now() - t0) / 1000;
  console.log(`  ${name} ${args.join(' ')}${Object.keys(env).length ? ` (${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')})` : ''}: ${sec.toFixed(1)} s`);
  assert.is(r.status, 0, `${name} exited with ${r.status} (${r.signal ?? 'no signal'}):\n${r.stdout}\n${r.stderr}`);
  return { out: r.stdout, err: r.stderr, sec };
}

/** Every match of a global regex's first groups, as numbers. */
const numbers = (text: string, re: RegExp) => [...text.matchAll(re)].map((m) => m.slice(1).map(Number));

test('distill_script: the losses fall, the held-out KL falls, the student is saved and loads', () => {
  const out = path.join(TMP, 'student');
  const r = run('distill_script.mjs', [out]);
  const steps = numbers(r.out, /^step (\d+)\s+loss ([\d.]+)/gm);
  assert.equal(steps.map((s) => s[0]), [10, 20, 30, 40, 50], r.out);
  assert.ok(steps.every((s) => Number.isFinite(s[1]) && s[1] > 0));
  assert.ok(steps[4][1] < steps[0][1] / 2, `loss ${steps[0][1]} → ${steps[4][1]}`);
  const [[before, after, n]] = numbers(r.out, /KL\(teacher \|\| student\): ([\d.]+) -> ([\d.]+) after (\d+) steps/g);
  assert.ok(after < before / 2 && n === 50, `held-out KL ${before} → ${after}`);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) assert.ok(fs.existsSync(path.join(out, f)), f);
  const m = Model.load(out);
  assert.is(m.config.hiddenSize, 32);
  assert.is(m.config.numLayers, 1);
  assert.match(r.out, new RegExp(`student \\(${m.numParams()} parameters\\) saved to`));
});

test('kd_server: /score answers within 500 ms while the student distills; /stop saves and exits 0', async () => {
  const outDir = path.join(TMP, 'kd');
  const child = spawn(process.execPath, [example('kd_server.mjs')], { cwd: ROOT, env: { ...process.env, PORT: '0', OUT: outDir }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    const t0 = performance.now();
    while (!/listening on (\S+)/.test(stdout)) {
      assert.ok(child.exitCode === null, `the server exited early:\n${stdout}\n${stderr}`);
      assert.ok(performance.now() - t0 < 30_000, `no "listening" line in 30 s:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const url = /listening on (\S+)/.exec(stdout)![1];
    const health = async () => (await (await fetch(`${url}/health`)).json()) as { ok: boolean; step: number; loss: number };
    while ((await health()).step < 3) await new Promise((r) => setTimeout(r, 20));
    const texts = ['12 + 7 = 19', 'Tom has 3 boxes of 4 apples. How many apples? 12', 'not arithmetic at all'];
    const stepBefore = (await health()).step;
    const latencies: number[] = [];
    const scoredSteps: number[] = [];
    for (let round = 0; round < 6; round++) {
      // four concurrent requests, then a short pause so that training advances between rounds
      await Promise.all(Array.from({ length: 4 }, async () => {
        const t = performance.now();
        const res = await fetch(`${url}/score`, { method: 'POST', body: JSON.stringify({ texts }) });
        const body = (await res.json()) as { step: number; scores: { tokens: number; kd: number }[] };
        latencies.push(performance.now() - t);
        assert.is(res.status, 200, JSON.stringify(body));
        assert.is(body.scores.length, texts.length);
        body.scores.forEach((s, i) => {
          assert.ok(Number.isFinite(s.kd) && s.kd >= 0, `kd ${s.kd}`);
          assert.is(s.tokens, Buffer.byteLength(texts[i]));
        });
        scoredSteps.push(body.step);
      }));
      await new Promise((r) => setTimeout(r, 100));
    }
    const h = await health();
    console.log(`  kd_server: 24 requests while distilling (steps ${stepBefore} → ${h.step}): latency max ${Math.max(...latencies).toFixed(0)} ms, median ${latencies.sort((a, b) => a - b)[12].toFixed(0)} ms`);
    assert.ok(Math.max(...latencies) < 500, `slowest request ${Math.max(...latencies).toFixed(0)} ms`);
    assert.ok(h.step > stepBefore, `training advanced while serving (${stepBefore} → ${h.step})`);
    assert.ok(Math.max(...scoredSteps) > Math.min(...scoredSteps), 'later requests scored a later student');
    assert.ok(Number.isFinite(h.loss));
    // bad requests are answered with 400 and a reason
    const bad = await fetch(`${url}/score`, { method: 'POST', body: '{"texts": "one"}' });
    assert.is(bad.status, 400);
    assert.is((await fetch(`${url}/score`, { method: 'POST', body: '{not json' })).status, 400);
    assert.is((await fetch(`${url}/nowhere`)).status, 404);
    assert.equal(await (await fetch(`${url}/stop`, { method: 'POST' })).json(), { stopping: true });
    assert.is(await exited, 0, stderr);
    const [[steps]] = numbers(stdout, /stopped: (\d+) distillation steps, last loss [\d.]+, interrupted true/g);
    assert.ok(steps >= h.step, stdout);
    const state = JSON.parse(fs.readFileSync(path.join(outDir, 'trainer_state.json'), 'utf8')) as { step: number };
    assert.is(state.step, steps, 'the checkpoint holds the last step');
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});

test('worker_job: every step streamed from the worker, equal to metrics.jsonl; a stop message ends it early', () => {
  const KEYS = ['step', 'loss', 'lr', 'grad_norm', 'tokens', 'tokens_per_sec', 'elapsed_sec'];
  const outDir = path.join(TMP, 'worker');
  const r = run('worker_job.mjs', ['20', outDir]);
  const msgs = [...r.out.matchAll(/^metrics (\{.*\})$/gm)].map((m) => JSON.parse(m[1]) as Record<string, number>);
  assert.equal(msgs.map((m) => m.step), Array.from({ length: 20 }, (_, i) => i + 1));
  for (const m of msgs) {
    assert.equal(Object.keys(m), KEYS);
    assert.ok(Object.values(m).every(Number.isFinite) && m.tokens === m.step * 16 * 64, JSON.stringify(m));
  }
  assert.ok(msgs[19].loss < msgs[0].loss - 1, `loss ${msgs[0].loss} → ${msgs[19].loss}`);
  const logged = fs.readFileSync(path.join(outDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(msgs, logged, 'the streamed messages are the lines of metrics.jsonl');
  assert.match(r.out, /^done: 20 steps, interrupted false/m);

  const stopped = run('worker_job.mjs', ['500', path.join(TMP, 'worker-stop')], { STOP_AFTER: '5' });
  const [[n]] = numbers(stopped.out, /^done: (\d+) steps, interrupted true/gm);
  assert.ok(n >= 5 && n < 500, stopped.out);
  assert.is(JSON.parse(fs.readFileSync(path.join(TMP, 'worker-stop', 'trainer_state.json'), 'utf8')).step, n);
});

test('unlearn_abort: aborted at step 12 with its checkpoint, resumed to 30, the same weights as a run never stopped', () => {
  const outDir = path.join(TMP, 'unlearn');
  const r = run('unlearn_abort.mjs', [outDir]);
  assert.match(r.out, /aborted: interrupted true at step 12; checkpoint in \S+ at step 12/);
  assert.match(r.out, /resumed: interrupted false at step 30 of 30/);
  // the caller's progress bar, redrawn with \r for each of the 30 steps
  const bars = r.out.split(/[\r\n]/).filter((l) => l.startsWith('['));
  assert.equal(bars.map((l) => Number(/\] (\d+)\/30/.exec(l)![1])), Array.from({ length: 30 }, (_, i) => i + 1));
  assert.ok(bars[29].startsWith(`[${'#'.repeat(20)}]`));
  const [[f0, r0]] = numbers(r.out, /before: forget loss ([\d.]+), retain loss ([\d.]+)/g);
  const [[f1, r1]] = numbers(r.out, /after: forget loss ([\d.]+), retain loss ([\d.]+)/g);
  assert.ok(f1 > f0 + 0.2, `forget loss ${f0} → ${f1}`);
  assert.ok(Math.abs(r1 - r0) < 0.1 * r0, `retain loss ${r0} → ${r1}`);
  const metrics = fs.readFileSync(path.join(outDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
  assert.equal(metrics, Array.from({ length: 30 }, (_, i) => i + 1));
  // never aborted (ABORT_AT past the end): the final weights are the same bytes
  const straight = path.join(TMP, 'unlearn-straight');
  const s = run('unlearn_abort.mjs', [straight], { ABORT_AT: '1000' });
  assert.match(s.out, /aborted: interrupted false at step 30/);
  assert.ok(fs.readFileSync(path.join(outDir, 'model.safetensors')).equals(fs.readFileSync(path.join(straight, 'model.safetensors'))),
    'abort + resume ends with the weights of the uninterrupted run');
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

test.run();
