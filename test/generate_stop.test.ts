/**
 * Generation stops at the chat end-of-turn tokens: generation_config.json's eos_token_id (int or list) and
 * config.json's (int or list) join the tokenizer's EOS in the default stop set; BOS is not one for HF tokenizers.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIds } from '../lib/models/generate';
import { configFromHF, configToHF, Model, ModelConfig } from '../lib/models/model';
import { throwsUndo } from './helpers';
import { studentBatch } from '../lib/distill/distill';
import { Rng } from '../lib/core/rng';

const EOT = 42; // the "end-of-turn" token of the test
const CFG: ModelConfig = {
  family: 'llama', vocabSize: 300, hiddenSize: 16, numLayers: 1, numHeads: 2, numKvHeads: 1, headDim: 8,
  intermediateSize: 24, maxPositions: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: false,
  attnLogitSoftcapping: 0, finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  bosTokenId: 256, eosTokenId: 257, padTokenId: 258,
};

/**
 * A model whose next token is always EOT: attention and MLP outputs are zeroed, so the final hidden state is
 * norm(embedding) — every embedding row is the same vector e, so it is one constant vector c — and the head row
 * of EOT is 10·c while the others stay small.
 */
function eotModel(): Model {
  const m = Model.create(CFG, { seed: 3 });
  m.tensor('model.layers.0.self_attn.o_proj.weight').fill(0);
  m.tensor('model.layers.0.mlp.down_proj.weight').fill(0);
  const e = m.tensor('model.embed_tokens.weight');
  const d = CFG.hiddenSize;
  for (let v = 0; v < CFG.vocabSize; v++) for (let j = 0; j < d; j++) e[v * d + j] = j % 3 === 0 ? 1 : -0.5;
  const rms = Math.sqrt(Array.from({ length: d }, (_, j) => (j % 3 === 0 ? 1 : 0.25)).reduce((a, x) => a + x, 0) / d);
  const head = m.tensor('lm_head.weight');
  for (let j = 0; j < d; j++) head[EOT * d + j] = (10 * (j % 3 === 0 ? 1 : -0.5)) / rms;
  return m;
}

const prompt = [Int32Array.from([5, 6, 7])];

test('the forced end-of-turn token is generated when it is not a stop id (the model really emits it)', async () => {
  const m = eotModel();
  const [g] = await generateIds(m, prompt, { maxNewTokens: 4, stopIds: [CFG.eosTokenId] });
  assert.equal([...g], [EOT, EOT, EOT, EOT]);
  const [h] = await generateIds(m, prompt, { maxNewTokens: 4 }); // no generation_config.json: 42 is no stop id
  assert.equal([...h], [EOT, EOT, EOT, EOT]);
});

test('generation_config.json eos_token_id list: generation stops at the end-of-turn token, kept through save', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-gen-'));
  try {
    const src = path.join(dir, 'src');
    eotModel().save(src);
    fs.writeFileSync(path.join(src, 'generation_config.json'), JSON.stringify({ bos_token_id: 256, eos_token_id: [257, EOT] }));
    const m = Model.load(src);
    assert.ok(m.stopTokenIds().includes(EOT) && m.stopTokenIds().includes(257));
    const [g] = await generateIds(m, prompt, { maxNewTokens: 4 });
    assert.equal([...g], [], 'stopped at the end-of-turn token (stop id excluded)');
    // carried through save → load
    const out = path.join(dir, 'out');
    m.save(out);
    const [g2] = await generateIds(Model.load(out), prompt, { maxNewTokens: 4 });
    assert.equal([...g2], []);
    // an int works too; a bad value names the file and field
    fs.writeFileSync(path.join(src, 'generation_config.json'), JSON.stringify({ eos_token_id: EOT }));
    assert.equal([...(await generateIds(Model.load(src), prompt, { maxNewTokens: 4 }))[0]], []);
    fs.writeFileSync(path.join(src, 'generation_config.json'), JSON.stringify({ eos_token_id: ['x'] }));
    throwsUndo(() => Model.load(src), /generation_config\.json.*eos_token_id/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('config.json eos_token_id as a list: read, kept on save, and a stop id', async () => {
  const hf = { ...configToHF(CFG), eos_token_id: [257, EOT] };
  const c = configFromHF(hf, 'config.json');
  assert.is(c.eosTokenId, 257);
  assert.equal(c.eosTokenIds, [257, EOT]);
  assert.equal(configToHF(c).eos_token_id, [257, EOT]);
  const m = Model.create(c, { seed: 3 });
  m.params.set(eotModel().params);
  assert.equal([...(await generateIds(m, prompt, { maxNewTokens: 4 }))[0]], []);
  throwsUndo(() => configFromHF({ ...hf, eos_token_id: [257, 'x'] }, 'config.json'), /config\.json.*eos_token_id/);
  // null → none (−1), written back as null
  const nb = configFromHF({ ...hf, bos_token_id: null }, 'config.json');
  assert.is(nb.bosTokenId, -1);
  assert.is(configToHF(nb).bos_token_id, null);
});

test('on-policy sampling (studentBatch) ends rows at the end-of-turn token and masks the rest', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-gen-'));
  try {
    eotModel().save(dir);
    fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [257, EOT] }));
    const m = Model.load(dir);
    const T = 8; // prompt: the first 2 tokens
    const inputs = Int32Array.from({ length: 2 * T }, (_, i) => 10 + i), targets = Int32Array.from({ length: 2 * T }, (_, i) => 11 + i);
    const sb = await studentBatch(m, { inputs, targets, B: 2, T, position: { epoch: 0, index: 0 } }, new Rng(1));
    for (let r = 0; r < 2; r++) {
      assert.equal([...sb.inputs.subarray(r * T, r * T + 3)], [10 + r * T, 11 + r * T, EOT]);
      assert.equal([...sb.targets.subarray(r * T, (r + 1) * T)], [11 + r * T, EOT, -100, -100, -100, -100, -100, -100]);
      assert.ok(sb.inputs.subarray(r * T + 3, (r + 1) * T).every((x) => x === m.tokenizer.pad));
    }
    // without the end-of-turn id the rows run to the window's end (the student keeps emitting EOT)
    const m2 = Model.load(dir);
    m2.generationConfig = undefined;
    const full = await studentBatch(m2, { inputs, targets, B: 2, T, position: { epoch: 0, index: 0 } }, new Rng(1));
    assert.ok(full.targets.every((x) => x !== -100));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
