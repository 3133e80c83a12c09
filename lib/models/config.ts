/**
 * Model configurations: Hugging Face config.json ↔ the native decoder's config, and the named presets.
 */
import { UndoError } from '../core/errors';
import { NativeModelConfig } from '../core/native';
import { ByteTokenizer, TokenizerLike } from '../data/tokenizer';

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

export function presetConfig(name: string, tok: Pick<TokenizerLike, 'vocabSize' | 'bos' | 'eos' | 'pad'> = new ByteTokenizer()): ModelConfig {
  const p = PRESETS[name];
  if (!p) throw new UndoError(`unknown preset "${name}"`, `choose one of: ${Object.keys(PRESETS).join(', ')}`);
  return { ...p, vocabSize: tok.vocabSize, bosTokenId: tok.bos, eosTokenId: tok.eos, padTokenId: tok.pad };
}
