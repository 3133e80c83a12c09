/**
 * Whole-model parity with PyTorch (test/reference/make_fixtures.py, make_arch_fixtures.py): logits, hidden
 * states, loss, every parameter gradient (in the checkpoint's own names and layout) and 10 AdamW steps with
 * clipping, for a tiny model of every supported architecture, on every ISA.
 */
import * as path from 'path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../lib/models/model';
import { configFromHF, configToHF } from '../lib/models/config';
import { UndoError } from '../lib/core/errors';
import { readSafetensors } from '../lib/formats/safetensors';
import { loss } from '../lib/train/losses';
import { nativeParamCount } from '../lib/models/info';
import { assertClose, bitEqual, FIXTURES, forEachIsaAsync } from './helpers';

// llama3_rope: rope_scaling llama3 + attention/mlp biases + head_dim ≠ hidden/heads; llama_linear / llama_dynamic
// (T > max_position_embeddings); mistral (window 4 < T); qwen2 (q/k/v biases, an unused sliding_window);
// qwen3 (q/k norms); gemma3 (q/k norms, local/global layers with their own RoPE); gpt2 (LayerNorm, learned
// positions, Conv1D + fused c_attn converted on load)
const CASES = ['llama', 'gemma2', 'llama3_rope', 'llama_linear', 'llama_dynamic', 'mistral', 'qwen2', 'qwen3', 'gemma3', 'gpt2'];

for (const family of CASES) {
  const dir = path.join(FIXTURES, family);
  const exp = readSafetensors(path.join(dir, 'expected.safetensors'));
  const ids = exp.get('input_ids').data as Int32Array;
  const targets = exp.get('targets').data as Int32Array;
  const [B, T] = exp.get('input_ids').shape;

  test(`${family}: logits, hidden states, loss and all gradients match PyTorch on every ISA`, async () => {
    await forEachIsaAsync(async (isa) => {
      const m = Model.load(dir);
      await m.native.forward(ids, B, T);
      const logits = await m.native.logits(null);
      assertClose(logits, exp.readTensorF32('logits'), 1e-4, `${isa} logits`);
      for (let l = 0; l < m.config.numLayers; l++) assertClose(m.native.hidden(l), exp.readTensorF32(`hidden.${l}`), 1e-4, `${isa} hidden.${l}`);
      m.native.zeroGradSync();
      const r = await m.native.headLoss(targets, null, -100, 0, true, null);
      const loss = exp.readTensorF32('loss')[0];
      assert.ok(Math.abs(r.loss - loss) <= 1e-4 * Math.abs(loss), `${isa} loss ${r.loss} vs ${loss}`);
      assert.is(r.counted, targets.filter((t) => t !== -100).length);
      await m.native.backward(true, null);
      const grads = m.hfTensors(m.grads);
      for (const name of exp.names().filter((n) => n.startsWith('grad.'))) assert.ok(grads.has(name.slice(5)), `${isa}: no tensor ${name.slice(5)}`);
      for (const [name, g] of grads) assertClose(g.data, exp.readTensorF32(`grad.${name}`), 1e-3, `${isa} grad ${name}`);
    });
  });

  test(`${family}: the info formula's parameter count and the checkpoint round trip (names, layout) are exact`, () => {
    const m = Model.load(dir);
    assert.is(nativeParamCount(m.config), m.numParams());
    assert.equal(configFromHF(configToHF(m.config)), m.config, 'config.json written back parses to the same config');
    const st = readSafetensors(path.join(dir, 'model.safetensors'));
    const mine = m.hfTensors();
    assert.equal([...mine.keys()].sort(), st.names().sort());
    for (const [name, t] of mine) {
      assert.equal(t.shape, st.get(name).shape, `${name} shape`);
      assert.ok(bitEqual(t.data, st.readTensorF32(name)), `${name}: saved as loaded, bit for bit`);
    }
  });

  test(`${family}: headGrad (a loss computed outside the engine) reproduces PyTorch's gradients`, async () => {
    const m = Model.load(dir);
    await m.native.forward(ids, B, T);
    const z = await m.native.logits(null);
    const V = m.config.vocabSize;
    const n = targets.filter((t) => t !== -100).length;
    const g = new Float32Array(z.length);
    for (let r = 0; r < B * T; r++) {
      if (targets[r] === -100) continue;
      let mx = -Infinity;
      for (let v = 0; v < V; v++) mx = Math.max(mx, z[r * V + v]);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(z[r * V + v] - mx);
      for (let v = 0; v < V; v++) g[r * V + v] = Math.exp(z[r * V + v] - mx) / s / n;
      g[r * V + targets[r]] -= 1 / n;
    }
    m.native.zeroGradSync();
    await m.native.headGrad(g);
    await m.native.backward(true, null);
    for (const [name, gr] of m.hfTensors(m.grads)) assertClose(gr.data, exp.readTensorF32(`grad.${name}`), 1e-3, `grad ${name}`);
  });

  test(`${family}: 10 AdamW steps with clipping follow PyTorch's losses`, async () => {
    const m = Model.load(dir);
    m.tensors.forEach((_, i) => m.native.setDecay(i, true));
    const want = exp.readTensorF32('adamw_losses');
    const got: number[] = [];
    for (let s = 0; s < 10; s++) {
      m.native.zeroGradSync();
      const r = await m.native.trainStep(ids, targets, B, T, null, 0, -100);
      got.push(r.loss);
      const norm = m.native.gradNormSync();
      await m.native.adamw({ lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradScale: Math.min(1, 1 / (norm + 1e-6)) });
    }
    for (let s = 0; s < 10; s++) assert.ok(Math.abs(got[s] - want[s]) <= 1e-4 * Math.max(1, Math.abs(want[s])), `step ${s}: ${got[s]} vs ${want[s]}`);
  });
}

test('fused distillation head (headKd) equals logits → loss.compute → headGrad, with soft-capping', async () => {
  const dir = path.join(FIXTURES, 'gemma2');
  const exp = readSafetensors(path.join(dir, 'expected.safetensors'));
  const ids = exp.get('input_ids').data as Int32Array;
  const [B, T] = exp.get('input_ids').shape;
  const teacher = Model.load(dir);
  for (let i = 0; i < teacher.params.length; i += 7) teacher.params[i] *= 0.5;
  for (const [name, params] of [['fkl', {}], ['jsd', { beta: 0.3 }], ['rkl', {}], ['maxent', {}]] as const) {
    const fused = Model.load(dir);
    await teacher.native.forward(ids, B, T);
    await fused.native.forward(ids, B, T);
    fused.native.zeroGradSync();
    const usesTeacher = name !== 'maxent';
    const r = await fused.native.headKd(name, usesTeacher ? teacher.native : null, { ...params, temperature: 2, scale: 0.5 });
    await fused.native.backward(true, null);
    const plain = Model.load(dir);
    await plain.native.forward(ids, B, T);
    const z = await plain.native.logits(null);
    const tz = usesTeacher ? await teacher.native.logits(null) : undefined;
    const ref = loss.computeSync(name, { student: z, teacher: tz, rows: B * T, vocab: plain.config.vocabSize, temperature: 2, ...params });
    for (let i = 0; i < ref.grad.length; i++) ref.grad[i] *= 0.5;
    plain.native.zeroGradSync();
    await plain.native.headGrad(ref.grad);
    await plain.native.backward(true, null);
    assert.ok(Math.abs(r.loss - 0.5 * ref.loss) <= 1e-5 * Math.abs(ref.loss), `${name}: ${r.loss} vs ${0.5 * ref.loss}`);
    assertClose(fused.grads, plain.grads, 1e-4, `${name} gradients`);
  }
});

test('llama: bf16 checkpoint loads (rounded weights) and matches its logits', async () => {
  const dir = path.join(FIXTURES, 'llama', 'model_bf16');
  const exp = readSafetensors(path.join(dir, 'expected.safetensors'));
  const m = Model.load(dir);
  const [B, T] = exp.get('input_ids').shape;
  await m.native.forward(exp.get('input_ids').data as Int32Array, B, T);
  assertClose(await m.native.logits(null), exp.readTensorF32('logits'), 1e-4, 'bf16 logits');
});

test('the architecture table\'s config rules: transformers\' defaults, and what is refused names field and values', () => {
  const hf = (over: Record<string, unknown>) => ({ hidden_size: 16, num_attention_heads: 2, num_hidden_layers: 2, intermediate_size: 32, vocab_size: 50, ...over });
  assert.is(configFromHF(hf({ model_type: 'mistral' })).slidingWindow, 4096, 'MistralConfig default window');
  assert.equal(configFromHF(hf({ model_type: 'mistral', sliding_window: null })).layerTypes, undefined);
  assert.is(configFromHF(hf({ model_type: 'gemma2' })).attnLogitSoftcapping, 50);
  assert.is(configFromHF(hf({ model_type: 'gemma3_text' })).attnLogitSoftcapping, 0);
  assert.is(configFromHF(hf({ model_type: 'llama', mlp_bias: true })).mlpBias, true);
  assert.is(configFromHF(hf({ model_type: 'mistral', attention_bias: true })).attentionBias, undefined, 'a field MistralConfig lacks is ignored, as transformers does');
  const cases: Array<[Record<string, unknown>, RegExp, RegExp]> = [
    [{ model_type: 'qwen3', mlp_bias: true }, /"mlp_bias".*qwen3/, /llama/],
    [{ model_type: 'llama', rope_scaling: { rope_type: 'yarn', factor: 4 } }, /rope_scaling\.rope_type "yarn"/, /llama3/],
    [{ model_type: 'gpt2', n_embd: 16, n_head: 2, n_layer: 1, scale_attn_by_inverse_layer_idx: true }, /scale_attn_by_inverse_layer_idx/, /GPT2LMHeadModel/],
    [{ model_type: 'gemma3_text', layer_types: ['full_attention'] }, /layer_types/, /./],
    [{ model_type: 'gemma3' }, /model_type "gemma3"/, /gemma3_text/],
  ];
  for (const [over, msg, hint] of cases) {
    try {
      configFromHF(hf(over), 'cfg.json');
      assert.unreachable(`${JSON.stringify(over)} was accepted`);
    } catch (e) {
      assert.instance(e, UndoError);
      assert.match((e as UndoError).message, /^cfg\.json: /);
      assert.match((e as UndoError).message, msg);
      if ((e as UndoError).hint !== undefined || hint.source !== '.') assert.match((e as UndoError).hint ?? '', hint);
    }
  }
});

test.run();
