/**
 * The package's entry points as a user's project sees them (Node's self-reference by package name, which
 * follows `exports` exactly as an installed copy does): require() and import give the same API, strict
 * TypeScript with Node 16 resolution finds the types, and internals are not importable by path.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ROOT } from './helpers';

const node = (args: string[]) => spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });

test('require and import: the same exports, UndoError with its codes', () => {
  const cjs = node(['-e', "const u = require('undo-native'); console.log(JSON.stringify([typeof u.Model, typeof u.UndoError, Object.keys(u.ERROR_CODES).length, Object.keys(u).length]))"]);
  assert.is(cjs.status, 0, cjs.stderr);
  const esm = node(['--input-type=module', '-e', "import * as u from 'undo-native'; import { Model, UndoError, ERROR_CODES } from 'undo-native'; console.log(JSON.stringify([typeof Model, typeof UndoError, Object.keys(ERROR_CODES).length, Object.keys(u).filter((k) => k !== 'default' && k !== '__esModule').length]))"]);
  assert.is(esm.status, 0, esm.stderr);
  const [a, b] = [JSON.parse(cjs.stdout), JSON.parse(esm.stdout)];
  assert.equal(a.slice(0, 3), ['function', 'function', 16]);
  assert.equal(b, a, 'ESM import sees every export of require()');
  const deep = node(['-e', "require('undo-native/dist/lib/models/model.js')"]);
  assert.is.not(deep.status, 0);
  assert.match(deep.stderr, /ERR_PACKAGE_PATH_NOT_EXPORTED/);
});

test('strict TypeScript (module node16) resolves the types through exports', () => {
  const dir = fs.mkdtempSync(path.join(ROOT, '.tmp-types-'));
  try {
    fs.writeFileSync(path.join(dir, 'use.ts'), [
      "import { Model, UndoError, type UndoErrorCode, loss } from 'undo-native';",
      "const code: UndoErrorCode = 'ERR_SHAPE';",
      "export async function f(dir: string): Promise<number> {",
      "  try { const m = Model.load(dir); return m.numParams(); } catch (e) { if (e instanceof UndoError && e.code === code) return -1; throw e; }",
      "}",
      "export const names: readonly string[] = loss.names;",
    ].join('\n'));
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const r = node([tsc, '--strict', '--noEmit', '--module', 'node16', '--moduleResolution', 'node16', '--types', 'node', '--skipLibCheck', path.join(dir, 'use.ts')]);
    assert.is(r.status, 0, r.stdout + r.stderr);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
