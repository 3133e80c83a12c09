/**
 * Error codes: every bad input the API refuses is an UndoError with a stable `code` (lib/core/errors.ts
 * ERROR_CODES), asserted here by code, not by message text; the addon's own exceptions become UndoErrors
 * (ERR_SHAPE / ERR_ARGUMENT); the CLI prints the code and exits with exitStatus(code); the README documents
 * every code.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ERROR_CODES, exitStatus, UndoError, UndoErrorCode } from '../lib/core/errors';
import { native } from '../lib/core/native';
import { appendFileOrThrow, readJson } from '../lib/core/fsutil';
import { chatDocument } from '../lib/data/chat';
import { loadAnyTokenizer } from '../lib/data/tokenizer';
import { openTeacherStore } from '../lib/distill/teacher_store';
import { Model } from '../lib/models/model';
import { loss } from '../lib/train/losses';
import { lenml } from './hf_helpers';
import { ROOT, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-errors-'));
const BIN = path.join(ROOT, 'bin', 'undo-native.js');

/** The UndoError `fn` throws or rejects with (fails the test when there is none or it is another type). */
async function errorOf(fn: () => unknown): Promise<UndoError> {
  try {
    await fn();
  } catch (e) {
    assert.instance(e, UndoError, `not an UndoError: ${String(e)}`);
    return e as UndoError;
  }
  assert.unreachable('no error was thrown');
  throw new Error('unreachable');
}

const codeOf = async (fn: () => unknown): Promise<UndoErrorCode> => (await errorOf(fn)).code;

test('the API: each kind of bad input has its code', async () => {
  const dir = path.join(TMP, 'model');
  const m = Model.create(tinyConfig('llama'), { seed: 1 });
  m.save(dir);
  assert.is(await codeOf(() => Model.load(path.join(TMP, 'nope'))), 'ERR_NOT_FOUND');
  // config.json: an unknown model_type, then invalid JSON
  const badCfg = path.join(TMP, 'bad-config');
  fs.cpSync(dir, badCfg, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(badCfg, 'config.json'), JSON.stringify({ ...cfg, model_type: 'bloom' }));
  assert.is(await codeOf(() => Model.load(badCfg)), 'ERR_MODEL_CONFIG');
  fs.writeFileSync(path.join(badCfg, 'config.json'), '{"model_type": ');
  assert.is(await codeOf(() => Model.load(badCfg)), 'ERR_MODEL_CONFIG');
  // weights: truncated, and a config that implies other shapes
  const trunc = path.join(TMP, 'truncated');
  fs.cpSync(dir, trunc, { recursive: true });
  const st = path.join(trunc, 'model.safetensors');
  fs.truncateSync(st, Math.floor(fs.statSync(st).size / 2));
  assert.is(await codeOf(() => Model.load(trunc)), 'ERR_SAFETENSORS');
  assert.is((await errorOf(() => Model.load(trunc))).file, st, 'the error names the file');
  const wider = path.join(TMP, 'wider');
  fs.cpSync(dir, wider, { recursive: true });
  fs.writeFileSync(path.join(wider, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: cfg.intermediate_size + 8 }));
  assert.is(await codeOf(() => Model.load(wider)), 'ERR_SAFETENSORS');
  // tokenizers and data
  const badTok = path.join(TMP, 'tokenizer.json');
  fs.writeFileSync(badTok, '{"model": {"type": "Martian"}}');
  assert.is(await codeOf(() => loadAnyTokenizer(badTok)), 'ERR_TOKENIZER');
  fs.writeFileSync(badTok, 'not json');
  assert.is(await codeOf(() => loadAnyTokenizer(badTok)), 'ERR_TOKENIZER');
  assert.is((await errorOf(() => loadAnyTokenizer(badTok))).file, badTok);
  assert.is(await codeOf(() => chatDocument([{ role: 'user', content: 'hi' }], lenml('qwen3'), 'chat.jsonl:1')), 'ERR_DATA');
  assert.is(await codeOf(() => chatDocument([{ content: 'no role' }], lenml('qwen3'), 'chat.jsonl:2')), 'ERR_DATA');
  // stores
  assert.is(await codeOf(() => openTeacherStore(path.join(TMP, 'no-store'))), 'ERR_NOT_FOUND');
  const store = path.join(TMP, 'store');
  fs.mkdirSync(store);
  fs.writeFileSync(path.join(store, 'manifest.json'), '{"format": "something else"}');
  assert.is(await codeOf(() => openTeacherStore(store)), 'ERR_TEACHER_STORE');
  // losses and the addon: sizes, names, values
  const V = 7;
  assert.is(await codeOf(() => loss.compute('fkl', { student: new Float32Array(2 * V), teacher: new Float32Array(V), rows: 2, vocab: V })), 'ERR_SHAPE');
  assert.is(await codeOf(() => loss.compute('nope' as 'fkl', { student: new Float32Array(V), teacher: new Float32Array(V), rows: 1, vocab: V })), 'ERR_ARGUMENT');
  assert.is(await codeOf(() => native.gemmSync(false, false, 4, 4, 4, 1, new Float32Array(3), 4, new Float32Array(16), 4, 0, new Float32Array(16), 4)), 'ERR_SHAPE');
  assert.is(await codeOf(() => native.gemmSync(false, false, 4, 4, 4, 1, [1, 2] as unknown as Float32Array, 4, new Float32Array(16), 4, 0, new Float32Array(16), 4)), 'ERR_ARGUMENT');
  assert.is(await codeOf(() => native.setIsa('sse9')), 'ERR_ARGUMENT');
  // a model method, sync and async: the instance is still a real addon object (other calls unwrap it)
  assert.is(await codeOf(() => m.native.forward(new Int32Array(3), 2, 8)), 'ERR_SHAPE');
  assert.is(await codeOf(() => m.native.logits(Int32Array.of(0), new Float32Array(1))), 'ERR_SHAPE');
  await m.native.forward(new Int32Array(8), 1, 8);
  const e = await errorOf(() => m.native.headGrad(new Float32Array(3)));
  assert.is(e.code, 'ERR_SHAPE');
  assert.instance(e.cause, Error, 'the addon\'s exception is kept as the cause');
  // files
  assert.is(await codeOf(() => readJson(path.join(TMP, 'missing.json'))), 'ERR_NOT_FOUND');
  assert.is(await codeOf(() => appendFileOrThrow(path.join(TMP, 'no-dir', 'metrics.jsonl'), 'x')), 'ERR_IO');
});

test('exitStatus: bad input 1, the environment 3, the system\'s I/O 4, a bug 70', () => {
  const st = (code: UndoErrorCode) => exitStatus(new UndoError('x', { code }));
  for (const code of Object.keys(ERROR_CODES) as UndoErrorCode[]) {
    const want = code === 'ERR_NATIVE' || code === 'ERR_CUDA' ? 3 : code === 'ERR_IO' || code === 'ERR_DISK_FULL' || code === 'ERR_OUT_OF_MEMORY' ? 4 : 1;
    assert.is(st(code), want, code);
  }
  assert.is(exitStatus(new TypeError('bug')), 70);
  assert.is(new UndoError('plain').code, 'ERR_ARGUMENT');
});

function cli(args: string[], env: Record<string, string> = {}): { status: number | null; err: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  return { status: r.status, err: r.stderr };
}

test('the CLI: the code on the last line, the exit status from it', () => {
  const cases: [string[], Record<string, string>, UndoErrorCode, number][] = [
    [['pretrain', '--steps', 'abc', '--out', path.join(TMP, 'o1')], {}, 'ERR_ARGUMENT', 1],
    [['eval', '--model', path.join(TMP, 'nope')], {}, 'ERR_NOT_FOUND', 1],
    [['eval', '--model', path.join(TMP, 'truncated')], {}, 'ERR_SAFETENSORS', 1],
    [['info', '--model', path.join(TMP, 'model')], { UNDO_NATIVE_ADDON: path.join(TMP, 'no-addon.node') }, 'ERR_NATIVE', 3],
  ];
  for (const [args, env, code, status] of cases) {
    const r = cli(args, env);
    const lines = r.err.trim().split('\n');
    assert.ok(lines[0].startsWith('error: '), `${args.join(' ')}: ${r.err}`);
    assert.is(lines[lines.length - 1], `code: ${code} (exit ${status})`, args.join(' '));
    assert.is(r.status, status, `${args.join(' ')}: ${r.err}`);
  }
});

test('the README documents every code', () => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  for (const code of Object.keys(ERROR_CODES)) assert.ok(readme.includes(`\`${code}\``), `README.md does not document ${code}`);
});

test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

test.run();
