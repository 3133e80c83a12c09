/**
 * Models as Hugging Face directories (config.json, model.safetensors, tokenizer.json), the config they
 * describe, and the Model handle over the native decoder (native/cpu/model.cc). Weights live in native
 * memory; `params` is a view of it, never a per-step copy.
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError } from '../core/errors';
import { readJson, writeFileAtomic } from '../core/fsutil';
import { native, NativeModel, NativeModelConfig, NativeTensorInfo } from '../core/native';
import { readSafetensors, writeSafetensors, WriteTensor } from '../formats/safetensors';
import { ByteTokenizer, loadTokenizer, saveTokenizer } from '../data/tokenizer';

export type Family = 'llama' | 'gemma2';

export interface ModelConfig extends NativeModelConfig {
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
}

type Json = Record<string, unknown>;

function num(cfg: Json, field: string, file: string, dflt?: number, opts: { int?: boolean; min?: number } = {}): number {
  const v = cfg[field];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw new UndoError(`${file}: missing field "${field}"`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new UndoError(`${file}: field "${field}" must be a number, got ${JSON.stringify(v)}`);
  if (opts.int && !Number.isInteger(v)) throw new UndoError(`${file}: field "${field}" must be an integer, got ${v}`);
  if (opts.min !== undefined && v < opts.min) throw new UndoError(`${file}: field "${field}" must be >= ${opts.min}, got ${v}`);
  return v;
}

/** Parse a Hugging Face config.json object (model_type "llama" or "gemma2"). */
export function configFromHF(cfg: Json, file = 'config.json'): ModelConfig {
  const type = cfg.model_type;
  if (type !== 'llama' && type !== 'gemma2') {
    throw new UndoError(`${file}: unsupported model_type ${JSON.stringify(type)}`, 'supported: "llama", "gemma2"');
  }
  const gemma = type === 'gemma2';
  const int = { int: true, min: 1 };
  const hidden = num(cfg, 'hidden_size', file, undefined, int);
  const heads = num(cfg, 'num_attention_heads', file, undefined, int);
  const kv = num(cfg, 'num_key_value_heads', file, heads, int);
  if (heads % kv !== 0) throw new UndoError(`${file}: num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${kv})`);
  const headDim = num(cfg, 'head_dim', file, gemma ? 256 : hidden / heads, int);
  const act = String(cfg.hidden_activation ?? cfg.hidden_act ?? (gemma ? 'gelu_pytorch_tanh' : 'silu'));
  let activation: 'silu' | 'gelu_tanh';
  if (act === 'silu' || act === 'swish') activation = 'silu';
  else if (act === 'gelu_pytorch_tanh' || act === 'gelu_tanh' || act === 'gelu_new') activation = 'gelu_tanh';
  else throw new UndoError(`${file}: unsupported activation ${JSON.stringify(act)} (field hidden_act/hidden_activation)`, 'supported: silu, gelu_pytorch_tanh');
  if (cfg.attention_bias === true || cfg.mlp_bias === true) throw new UndoError(`${file}: attention_bias/mlp_bias = true is not supported`);
  if (cfg.rope_scaling !== undefined && cfg.rope_scaling !== null) throw new UndoError(`${file}: rope_scaling is not supported (field rope_scaling)`);
  const tokenId = (f: string, d: number) => {
    const v = cfg[f];
    return typeof v === 'number' ? v : Array.isArray(v) && typeof v[0] === 'number' ? (v[0] as number) : d;
  };
  const out: ModelConfig = {
    family: type,
    vocabSize: num(cfg, 'vocab_size', file, undefined, int),
    hiddenSize: hidden,
    numLayers: num(cfg, 'num_hidden_layers', file, undefined, int),
    numHeads: heads,
    numKvHeads: kv,
    headDim,
    intermediateSize: num(cfg, 'intermediate_size', file, undefined, int),
    maxPositions: num(cfg, 'max_position_embeddings', file, gemma ? 8192 : 2048, int),
    rmsNormEps: num(cfg, 'rms_norm_eps', file, 1e-6),
    ropeTheta: num(cfg, 'rope_theta', file, 10000),
    tieWordEmbeddings: cfg.tie_word_embeddings === undefined ? gemma : cfg.tie_word_embeddings === true,
    attnLogitSoftcapping: gemma ? num(cfg, 'attn_logit_softcapping', file, 50) : 0,
    finalLogitSoftcapping: gemma ? num(cfg, 'final_logit_softcapping', file, 30) : 0,
    queryPreAttnScalar: gemma ? num(cfg, 'query_pre_attn_scalar', file, 256) : 0,
    slidingWindow: gemma ? num(cfg, 'sliding_window', file, 4096) : 0,
    activation,
    bosTokenId: tokenId('bos_token_id', 1),
    eosTokenId: tokenId('eos_token_id', 2),
    padTokenId: tokenId('pad_token_id', 0),
  };
  return out;
}

/** The Hugging Face config.json object for a config. */
export function configToHF(c: ModelConfig): Json {
  const common: Json = {
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    intermediate_size: c.intermediateSize,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: false,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    pad_token_id: c.padTokenId,
    torch_dtype: 'float32',
  };
  if (c.family === 'llama') {
    return { architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu', ...common };
  }
  return {
    architectures: ['Gemma2ForCausalLM'],
    model_type: 'gemma2',
    hidden_act: 'gelu_pytorch_tanh',
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: c.queryPreAttnScalar,
    attn_logit_softcapping: c.attnLogitSoftcapping,
    final_logit_softcapping: c.finalLogitSoftcapping,
    sliding_window: c.slidingWindow,
    ...common,
  };
}

export interface InitOptions {
  seed?: number;
  init?: 'normal' | 'xavier';
  /** std of the normal init (HF default 0.02) */
  std?: number;
}

export class Model {
  readonly native: NativeModel;
  readonly tensors: NativeTensorInfo[];
  /** All parameters, a view of native memory. */
  readonly params: Float32Array;
  /** All gradients, a view of native memory. */
  readonly grads: Float32Array;
  private readonly byName = new Map<string, NativeTensorInfo>();

  constructor(readonly config: ModelConfig, public tokenizer: ByteTokenizer = new ByteTokenizer()) {
    this.native = new native.NativeModel(config);
    this.tensors = this.native.tensors();
    for (const t of this.tensors) this.byName.set(t.name, t);
    this.params = this.native.params();
    this.grads = this.native.grads();
  }

  /** A freshly initialised model (seeded; identical for every thread count). */
  static create(config: ModelConfig, opts: InitOptions = {}, tokenizer?: ByteTokenizer): Model {
    const m = new Model(config, tokenizer);
    m.native.init(opts.seed ?? 0, opts.init ?? 'normal', opts.std ?? 0.02);
    return m;
  }

  /** Load a Hugging Face directory: config.json, model.safetensors (F32/BF16/F16), tokenizer.json. */
  static load(dir: string): Model {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UndoError(`model directory ${dir} does not exist`);
    const cfgFile = path.join(dir, 'config.json');
    const config = configFromHF(readJson<Json>(cfgFile, 'model config'), cfgFile);
    const tokFile = path.join(dir, 'tokenizer.json');
    const hasTok = fs.existsSync(tokFile);
    const tokenizer = hasTok ? loadTokenizer(dir) : new ByteTokenizer();
    if (hasTok && tokenizer.vocabSize > config.vocabSize) {
      throw new UndoError(`${tokFile}: the tokenizer has ${tokenizer.vocabSize} tokens but ${cfgFile} says vocab_size ${config.vocabSize}`);
    }
    const m = new Model(config, tokenizer);
    m.loadWeights(path.join(dir, 'model.safetensors'));
    return m;
  }

  /** Copy weights from a safetensors file (shapes must agree with the config). */
  loadWeights(file: string): void {
    const st = readSafetensors(file);
    const expected = new Set(this.tensors.map((t) => t.name));
    for (const t of this.tensors) {
      if (!st.has(t.name)) throw new UndoError(`${file}: missing tensor "${t.name}" (needed by the config)`);
      const info = st.get(t.name);
      if (info.shape.length !== t.shape.length || info.shape.some((d, i) => d !== t.shape[i])) {
        throw new UndoError(`${file}: tensor "${t.name}" has shape [${info.shape}] but the config implies [${t.shape}]`);
      }
      this.params.set(st.readTensorF32(t.name), t.offset);
    }
    const extra = st.names().filter((n) => !expected.has(n) && !(this.config.tieWordEmbeddings && n === 'lm_head.weight') && !n.endsWith('rotary_emb.inv_freq'));
    if (extra.length) throw new UndoError(`${file}: unexpected tensors for this config: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', ...' : ''}`);
  }

  /** A deep copy of the weights (same config and tokenizer; no gradients or optimizer state). */
  clone(): Model {
    const c = new Model(this.config, this.tokenizer);
    c.params.set(this.params);
    return c;
  }

  numParams(): number {
    return this.params.length;
  }

  tensorInfo(name: string): NativeTensorInfo {
    const t = this.byName.get(name);
    if (!t) throw new UndoError(`the model has no tensor "${name}"`);
    return t;
  }

  /** A view of one parameter tensor. */
  tensor(name: string): Float32Array {
    const t = this.tensorInfo(name);
    return this.params.subarray(t.offset, t.offset + t.numel);
  }

  /** A view of one gradient tensor. */
  grad(name: string): Float32Array {
    const t = this.tensorInfo(name);
    return this.grads.subarray(t.offset, t.offset + t.numel);
  }

  /** Freeze (or unfreeze) tensors whose name matches. Frozen tensors get no gradient and no update. */
  setFrozen(match: (name: string) => boolean, frozen = true): void {
    this.tensors.forEach((t, i) => {
      if (match(t.name)) {
        this.native.setFrozen(i, frozen);
        t.frozen = frozen;
      }
    });
  }

  /** Tensors as safetensors entries (F32 views, no copy). */
  weightEntries(): Array<[string, WriteTensor]> {
    return this.tensors.map((t) => [t.name, { dtype: 'F32', shape: t.shape, data: this.params.subarray(t.offset, t.offset + t.numel) }]);
  }

  /**
   * Write the model as a Hugging Face directory, atomically: everything goes to a temporary sibling
   * directory (each file fsynced), which then replaces `dir` by rename. An interruption leaves either the
   * old directory or the new one, never a mix. `extra` adds files (name → contents) to the directory.
   */
  save(dir: string, extra: Record<string, string | Buffer> = {}): void {
    saveDirAtomic(dir, (tmp) => {
      writeFileAtomic(path.join(tmp, 'config.json'), JSON.stringify(configToHF(this.config), null, 2) + '\n');
      writeSafetensors(path.join(tmp, 'model.safetensors'), this.weightEntries(), { format: 'pt' });
      // a model loaded without a tokenizer.json (vocab smaller than the byte tokenizer's) is saved without one
      if (this.tokenizer.vocabSize <= this.config.vocabSize) saveTokenizer(tmp, this.tokenizer);
      for (const [name, data] of Object.entries(extra)) writeFileAtomic(path.join(tmp, name), data);
    });
  }
}

/** Build a directory in a temporary sibling, then swap it into place by rename. */
export function saveDirAtomic(dir: string, fill: (tmp: string) => void): void {
  const parent = path.dirname(path.resolve(dir));
  fs.mkdirSync(parent, { recursive: true });
  const base = path.basename(dir);
  const tmp = path.join(parent, `.${base}.tmp-${process.pid}-${Date.now()}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  try {
    fill(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = path.join(parent, `.${base}.old-${process.pid}-${Date.now()}`);
  const had = fs.existsSync(dir);
  if (had) fs.renameSync(dir, old);
  fs.renameSync(tmp, dir);
  const fd = fs.openSync(parent, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (had) fs.rmSync(old, { recursive: true, force: true });
}

/** Named model sizes for the byte-level tokenizer (vocab 259). */
export const PRESETS: Record<string, Omit<ModelConfig, 'vocabSize' | 'bosTokenId' | 'eosTokenId' | 'padTokenId'>> = {
  // about 0.8M parameters: learns the arithmetic task in minutes on 2 cores
  tiny: {
    family: 'llama', hiddenSize: 128, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 32, intermediateSize: 384,
    maxPositions: 512, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, attnLogitSoftcapping: 0,
    finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  },
  // about 0.2M parameters: the default distillation student
  micro: {
    family: 'llama', hiddenSize: 64, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 16, intermediateSize: 192,
    maxPositions: 512, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, attnLogitSoftcapping: 0,
    finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  },
  // about 5M parameters (6 layers, d = 256)
  small: {
    family: 'llama', hiddenSize: 256, numLayers: 6, numHeads: 8, numKvHeads: 4, headDim: 32, intermediateSize: 768,
    maxPositions: 1024, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, attnLogitSoftcapping: 0,
    finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  },
  // the UNDO paper's Gemma-2 architecture at toy scale
  'gemma-tiny': {
    family: 'gemma2', hiddenSize: 128, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 32, intermediateSize: 384,
    maxPositions: 512, rmsNormEps: 1e-6, ropeTheta: 10000, tieWordEmbeddings: true, attnLogitSoftcapping: 50,
    finalLogitSoftcapping: 30, queryPreAttnScalar: 32, slidingWindow: 4096, activation: 'gelu_tanh',
  },
};

export function presetConfig(name: string, tok: ByteTokenizer = new ByteTokenizer()): ModelConfig {
  const p = PRESETS[name];
  if (!p) throw new UndoError(`unknown preset "${name}"`, `choose one of: ${Object.keys(PRESETS).join(', ')}`);
  return { ...p, vocabSize: tok.vocabSize, bosTokenId: tok.bos, eosTokenId: tok.eos, padTokenId: tok.pad };
}
