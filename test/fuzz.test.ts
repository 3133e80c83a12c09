/**
 * The parsers of untrusted input under fuzzing (test/fuzz/harness.ts): a bounded smoke of a few thousand
 * inputs per target, each ending in success or an UndoError, and the inputs the long runs found, kept as
 * regression tests (each crashed, hung or threw a non-UndoError before its fix).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cleanupFuzz, runFuzz } from './fuzz/harness';
import { Model } from '../lib/models/model';
import { ByteTokenizer } from '../lib/data/tokenizer';
import { loadHFTokenizer } from '../lib/data/hf_tokenizer';
import { throwsUndo, tinyConfig } from './helpers';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-fuzzreg-'));

test('fuzz smoke: every mutated safetensors, config.json, JSONL and tokenizer.json input ends in success or an UndoError', async () => {
  const r = await runFuzz({ seed: 12345, inputs: 1500, seconds: 25 });
  assert.equal(r.failures.map((f) => `${f.target}: ${f.error}`), []);
  for (const [name, t] of Object.entries(r.perTarget)) {
    assert.ok(t.tried >= 200, `${name}: ${t.tried} inputs`);
    assert.ok(t.ok > 0 && t.refused > 0, `${name}: some inputs parse (${t.ok}) and some are refused (${t.refused})`);
  }
});

function modelDir(name: string, change: (cfg: Record<string, unknown>) => void): string {
  const dir = path.join(TMP, name);
  const tok = new ByteTokenizer();
  Model.create(tinyConfig('llama', { vocabSize: tok.vocabSize }), { seed: 1 }, tok).save(dir);
  const file = path.join(dir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  change(cfg);
  fs.writeFileSync(file, JSON.stringify(cfg));
  return dir;
}

test('regressions: hostile config sizes are refused before the native model allocates (were std::bad_alloc or a JS heap abort)', () => {
  throwsUndo(() => Model.load(modelDir('layers', (c) => (c.num_hidden_layers = 1e9))), 'num_hidden_layers', '4096');
  throwsUndo(() => Model.load(modelDir('hidden', (c) => (c.hidden_size = 2 ** 31))), 'hidden_size', '2147483647');
  throwsUndo(() => Model.load(modelDir('ffn', (c) => (c.intermediate_size = 1e9))), 'config.json', 'parameters', 'holds');
  throwsUndo(() => Model.create(tinyConfig('llama', { hiddenSize: 65536, intermediateSize: 1 << 30, numLayers: 64 })), 'parameters', 'GiB');
  // odd RoPE head dimension (was a plain Error from the addon)
  throwsUndo(() => Model.load(modelDir('headdim', (c) => (c.head_dim = 7))), 'head_dim', 'even');
});

function tokenizerDir(name: string, change: (j: Record<string, any>) => void): string {
  const dir = path.join(TMP, name);
  fs.mkdirSync(dir, { recursive: true });
  const vocab: Record<string, number> = { a: 0, b: 1, ab: 2 };
  const j: Record<string, any> = {
    version: '1.0', added_tokens: [{ id: 3, content: '</s>', special: true }], normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null,
    model: { type: 'BPE', vocab, merges: ['a b'] },
  };
  change(j);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(j));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>' }));
  return dir;
}

test('regressions: tokenizer.json shapes the library mishandles are refused by field (took 50–120 s or threw a plain Error)', () => {
  const ok = loadHFTokenizer(tokenizerDir('ok', () => undefined));
  assert.equal(Array.from(ok.encode('ab', { bos: false })), [2]);
  assert.is(ok.decode([]), '', 'decoding nothing is the empty string (the library threw)');
  throwsUndo(() => loadHFTokenizer(tokenizerDir('num-vocab', (j) => (j.model.vocab = 3))), 'model.vocab', 'object');
  throwsUndo(() => loadHFTokenizer(tokenizerDir('big-id', (j) => (j.added_tokens[0].id = 2 ** 31 - 1))), 'added_tokens', 'far past the vocabulary');
  throwsUndo(() => loadHFTokenizer(tokenizerDir('bad-merges', (j) => (j.model.merges = [1, 2]))), 'model.merges');
  throwsUndo(() => loadHFTokenizer(tokenizerDir('suffix', (j) => (j.model.end_of_word_suffix = ['x']))), 'model.end_of_word_suffix');
});

test.after(() => {
  cleanupFuzz();
  fs.rmSync(TMP, { recursive: true, force: true });
});

test.run();
