/**
 * Model configurations: Hugging Face config.json ↔ undo-native's ModelConfig ↔ the native decoder's spec, and
 * the named presets.
 *
 * Every architecture is one row of {@link ARCHITECTURES}: the switches of the single native decoder
 * (native/cpu/model.h) it needs, its config.json field names and defaults (as transformers' config classes
 * define them), and how its checkpoint's tensors map onto the decoder's (identity for all but GPT-2, whose
 * Conv1D [in, out] weights and fused c_attn are converted on load and back on save). Nothing else in the code
 * branches on the architecture.
 */
import { UndoError, errorClass } from '../core/errors';
import { DecoderSizes, NativeDecoderSpec, NativeRope } from '../core/native';
import { ByteTokenizer, TokenizerLike } from '../data/tokenizer';

/** Errors of this module: code ERR_MODEL_CONFIG unless one names another. */
const Err = errorClass('ERR_MODEL_CONFIG');

/** The supported Hugging Face `model_type`s. */
export type Family = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'gemma2' | 'gemma3_text' | 'gpt2';

/** HF `rope_scaling` (or `rope_parameters`) of the types undo-native implements. */
export interface RopeScaling {
  type: 'linear' | 'dynamic' | 'llama3';
  factor: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  /** llama3 and dynamic: the context the base model was trained for */
  originalMaxPositions?: number;
}

export interface ModelConfig extends DecoderSizes {
  family: Family;
  /** the norm's epsilon (rms_norm_eps, or GPT-2's layer_norm_epsilon) */
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  attnLogitSoftcapping: number;
  finalLogitSoftcapping: number;
  queryPreAttnScalar: number;
  slidingWindow: number;
  activation: 'silu' | 'gelu_tanh';
  /** Llama / Qwen3 / Gemma `attention_bias` (q, k, v and o); Qwen2 and GPT-2 have their biases fixed */
  attentionBias?: boolean;
  /** Llama `mlp_bias` */
  mlpBias?: boolean;
  ropeScaling?: RopeScaling | null;
  /** Gemma-3: the sliding-window layers' RoPE base (rope_local_base_freq) */
  ropeLocalTheta?: number;
  /** per layer: sliding-window or full attention; absent = the architecture's default pattern */
  layerTypes?: Array<'sliding_attention' | 'full_attention'>;
  /** −1: none (config.json null) */
  bosTokenId: number;
  /** the first of config.json's eos_token_id (an int or a list); −1: none */
  eosTokenId: number;
  /** config.json's eos_token_id when it is a list (Llama 3 instruct: [128001, 128008, 128009]); kept on save */
  eosTokenIds?: number[];
  padTokenId: number;
}

type Json = Record<string, unknown>;

/** One HF tensor and where its rows go in the decoder (GPT-2's fused c_attn goes to three tensors). */
export interface TensorMapping {
  hf: string;
  /** HF's shape */
  hfShape: number[];
  /** HF stores it [in, out] (Conv1D): transposed to the decoder's [out, in] */
  transpose: boolean;
  /** decoder tensors that take consecutive row blocks of the (transposed) HF tensor, in order */
  parts: string[];
}

interface Architecture {
  hfClass: string;
  /** config.json field names where they differ from Llama's */
  fields?: Partial<Record<'hidden' | 'layers' | 'heads' | 'kvHeads' | 'ffn' | 'maxPos' | 'eps' | 'act', string>>;
  /** transformers' defaults; `act` is also the name written for a tanh-GELU model */
  defaults: {
    maxPos: number; eps: number; ropeTheta: number; tied: boolean; act: string; headDim?: number; ffnPerHidden?: number;
    attnSoftcap?: number; finalSoftcap?: number;
  };
  /** the bias switches config.json has (read and written); the rest of the biases are fixed by `biases` */
  biasFields: Array<'attention_bias' | 'mlp_bias'>;
  /** config.json has sliding_window (default `dflt`); with `useFlag`, only when use_sliding_window (Qwen) */
  slidingWindowField?: { dflt: number; useFlag?: boolean };
  /** checkpoint tensors that are buffers, not parameters */
  ignoredTensors?: RegExp;
  norm: 'rms' | 'layer';
  normUnitOffset: boolean;
  sandwichNorms: boolean;
  qkNorm: boolean;
  /** q/k/v, o and MLP biases from the config */
  biases: (c: ModelConfig) => { qkv: boolean; o: boolean; mlp: boolean };
  mlp: 'gated' | 'plain';
  embedScale: boolean;
  learnedPositions: boolean;
  softcaps: boolean;
  /** attention scale query_pre_attn_scalar^-1/2 instead of head_dim^-1/2 */
  queryPreAttnScalar: boolean;
  /** the default sliding-window pattern (when config.json has no layer_types) */
  sliding: (l: number, c: ModelConfig, raw: Json) => boolean;
  /** Gemma-3: sliding layers have their own RoPE base */
  localRope: boolean;
  /** config.json fields read beyond the common ones, and written back */
  extra?: { read: (raw: Json, file: string, c: ModelConfig) => void; write: (c: ModelConfig) => Json };
  tensors?: (c: ModelConfig, hfNames: readonly string[]) => TensorMapping[];
  /**
   * GGUF export (lib/formats/gguf_model.ts): llama.cpp's architecture name, whether its RoPE rotates
   * interleaved pairs (q/k rows permuted from HF's half split), whether q, k, v go out fused as attn_qkv;
   * a string: why llama.cpp has no architecture for it.
   */
  gguf: GgufArchitecture | string;
}

/** How an architecture goes out to GGUF (one row of the table; see Architecture.gguf). */
export interface GgufArchitecture {
  arch: 'llama' | 'qwen2' | 'qwen3' | 'gemma2' | 'gpt2';
  interleavedRope: boolean;
  fusedQkv: boolean;
}

const none = () => ({ qkv: false, o: false, mlp: false });
const attnBias = (c: ModelConfig) => ({ qkv: !!c.attentionBias, o: !!c.attentionBias, mlp: !!c.mlpBias });
const noSliding = () => false;
// Qwen2/3: sliding_window only when use_sliding_window, on layers from max_window_layers up
const qwenSliding = (l: number, c: ModelConfig, raw: Json) =>
  raw.use_sliding_window === true && c.slidingWindow > 0 && l >= (typeof raw.max_window_layers === 'number' ? raw.max_window_layers : 0);

/** The architecture table: everything undo-native knows about each model_type. */
export const ARCHITECTURES: Record<Family, Architecture> = {
  llama: {
    hfClass: 'LlamaForCausalLM',
    defaults: { maxPos: 2048, eps: 1e-6, ropeTheta: 10000, tied: false, act: 'silu' },
    biasFields: ['attention_bias', 'mlp_bias'],
    norm: 'rms', normUnitOffset: false, sandwichNorms: false, qkNorm: false, biases: attnBias, mlp: 'gated',
    embedScale: false, learnedPositions: false, softcaps: false, queryPreAttnScalar: false, sliding: noSliding, localRope: false,
    gguf: { arch: 'llama', interleavedRope: true, fusedQkv: false },
  },
  mistral: {
    hfClass: 'MistralForCausalLM',
    defaults: { maxPos: 4096 * 32, eps: 1e-6, ropeTheta: 10000, tied: false, act: 'silu' },
    biasFields: [], slidingWindowField: { dflt: 4096 },
    norm: 'rms', normUnitOffset: false, sandwichNorms: false, qkNorm: false, biases: none, mlp: 'gated',
    embedScale: false, learnedPositions: false, softcaps: false, queryPreAttnScalar: false,
    sliding: (_l, c) => c.slidingWindow > 0, localRope: false,
    gguf: { arch: 'llama', interleavedRope: true, fusedQkv: false },
  },
  qwen2: {
    hfClass: 'Qwen2ForCausalLM',
    defaults: { maxPos: 32768, eps: 1e-6, ropeTheta: 10000, tied: false, act: 'silu' },
    biasFields: [], slidingWindowField: { dflt: 4096, useFlag: true },
    norm: 'rms', normUnitOffset: false, sandwichNorms: false, qkNorm: false,
    biases: () => ({ qkv: true, o: false, mlp: false }), mlp: 'gated',
    embedScale: false, learnedPositions: false, softcaps: false, queryPreAttnScalar: false, sliding: qwenSliding, localRope: false,
    gguf: { arch: 'qwen2', interleavedRope: false, fusedQkv: false },
  },
  qwen3: {
    hfClass: 'Qwen3ForCausalLM',
    defaults: { maxPos: 32768, eps: 1e-6, ropeTheta: 10000, tied: false, act: 'silu' },
    biasFields: ['attention_bias'], slidingWindowField: { dflt: 4096, useFlag: true },
    norm: 'rms', normUnitOffset: false, sandwichNorms: false, qkNorm: true, biases: (c) => ({ qkv: !!c.attentionBias, o: !!c.attentionBias, mlp: false }),
    mlp: 'gated', embedScale: false, learnedPositions: false, softcaps: false, queryPreAttnScalar: false, sliding: qwenSliding, localRope: false,
    gguf: { arch: 'qwen3', interleavedRope: false, fusedQkv: false },
  },
  gemma2: {
    hfClass: 'Gemma2ForCausalLM',
    defaults: { maxPos: 8192, eps: 1e-6, ropeTheta: 10000, tied: true, act: 'gelu_pytorch_tanh', headDim: 256, attnSoftcap: 50, finalSoftcap: 30 },
    biasFields: ['attention_bias'], slidingWindowField: { dflt: 4096 },
    fields: { act: 'hidden_activation' },
    norm: 'rms', normUnitOffset: true, sandwichNorms: true, qkNorm: false, biases: (c) => ({ qkv: !!c.attentionBias, o: !!c.attentionBias, mlp: false }),
    mlp: 'gated', embedScale: true, learnedPositions: false, softcaps: true, queryPreAttnScalar: true,
    sliding: (l, c) => c.slidingWindow > 0 && l % 2 === 0, localRope: false,
    gguf: { arch: 'gemma2', interleavedRope: false, fusedQkv: false },
  },
  gemma3_text: {
    hfClass: 'Gemma3ForCausalLM',
    defaults: { maxPos: 131072, eps: 1e-6, ropeTheta: 1e6, tied: true, act: 'gelu_pytorch_tanh', headDim: 256 },
    biasFields: ['attention_bias'], slidingWindowField: { dflt: 4096 },
    fields: { act: 'hidden_activation' },
    norm: 'rms', normUnitOffset: true, sandwichNorms: true, qkNorm: true, biases: (c) => ({ qkv: !!c.attentionBias, o: !!c.attentionBias, mlp: false }),
    mlp: 'gated', embedScale: true, learnedPositions: false, softcaps: true, queryPreAttnScalar: true,
    // sliding_window_pattern N: every N-th layer is global
    sliding: (l, c, raw) => c.slidingWindow > 0 && (l + 1) % (typeof raw.sliding_window_pattern === 'number' ? raw.sliding_window_pattern : 6) !== 0,
    localRope: true,
    gguf: 'no mapping onto llama.cpp\'s gemma3 architecture yet',
  },
  gpt2: {
    hfClass: 'GPT2LMHeadModel',
    fields: { hidden: 'n_embd', layers: 'n_layer', heads: 'n_head', kvHeads: 'n_head', ffn: 'n_inner', maxPos: 'n_positions', eps: 'layer_norm_epsilon', act: 'activation_function' },
    defaults: { maxPos: 1024, eps: 1e-5, ropeTheta: 10000, tied: true, act: 'gelu_new', ffnPerHidden: 4 },
    biasFields: [], ignoredTensors: /(^|\.)attn\.(masked_)?bias$/,
    norm: 'layer', normUnitOffset: false, sandwichNorms: false, qkNorm: false, biases: () => ({ qkv: true, o: true, mlp: true }),
    mlp: 'plain', embedScale: false, learnedPositions: true, softcaps: false, queryPreAttnScalar: false, sliding: noSliding, localRope: false,
    extra: {
      read: (raw, file) => {
        for (const f of ['scale_attn_by_inverse_layer_idx', 'add_cross_attention'] as const)
          if (raw[f] === true) throw new Err(`${file}: field "${f}" = true is not supported`, 'supported: GPT-2 as GPT2LMHeadModel defines it by default');
        if (raw.scale_attn_weights === false) throw new Err(`${file}: field "scale_attn_weights" = false is not supported`);
      },
      write: (c) => ({ n_ctx: c.maxPositions, scale_attn_weights: true }),
    },
    tensors: gpt2Tensors,
    gguf: { arch: 'gpt2', interleavedRope: false, fusedQkv: true },
  },
};

/** The families, for messages and the CLI. */
export const FAMILIES = Object.keys(ARCHITECTURES) as Family[];

function num(cfg: Json, field: string, file: string, dflt?: number, opts: { int?: boolean; min?: number; max?: number } = {}): number {
  const v = cfg[field];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw new Err(`${file}: missing field "${field}"`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Err(`${file}: field "${field}" must be a number, got ${JSON.stringify(v)}`);
  if (opts.int && !Number.isInteger(v)) throw new Err(`${file}: field "${field}" must be an integer, got ${v}`);
  if (opts.min !== undefined && v < opts.min) throw new Err(`${file}: field "${field}" must be >= ${opts.min}, got ${v}`);
  if (opts.max !== undefined && v > opts.max) throw new Err(`${file}: field "${field}" must be <= ${opts.max}, got ${v}`);
  return v;
}

const ROPE_TYPES = ['default', 'linear', 'dynamic', 'llama3'];

/** HF rope_scaling / rope_parameters → RopeScaling (null for the default RoPE). */
function parseRopeScaling(v: unknown, field: string, file: string, maxPos: number): RopeScaling | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw new Err(`${file}: field "${field}" must be an object`);
  const o = v as Json;
  const type = o.rope_type ?? o.type ?? 'default';
  if (typeof type !== 'string' || !ROPE_TYPES.includes(type)) {
    throw new Err(`${file}: ${field}.rope_type ${JSON.stringify(type)} is not supported`, `supported: ${ROPE_TYPES.join(', ')}`);
  }
  if (type === 'default') return null;
  const factor = num(o, 'factor', `${file} (${field})`, undefined, { min: 1e-9 });
  const out: RopeScaling = { type: type as RopeScaling['type'], factor };
  if (type === 'llama3') {
    out.lowFreqFactor = num(o, 'low_freq_factor', `${file} (${field})`);
    out.highFreqFactor = num(o, 'high_freq_factor', `${file} (${field})`);
    out.originalMaxPositions = num(o, 'original_max_position_embeddings', `${file} (${field})`, undefined, { int: true, min: 1 });
    if (!(out.highFreqFactor > out.lowFreqFactor)) throw new Err(`${file}: ${field}.high_freq_factor must be > low_freq_factor`);
  } else if (type === 'dynamic') {
    out.originalMaxPositions = num(o, 'original_max_position_embeddings', `${file} (${field})`, maxPos, { int: true, min: 1 });
  }
  return out;
}

function ropeScalingToHF(r: RopeScaling): Json {
  const o: Json = { rope_type: r.type, factor: r.factor };
  if (r.type === 'llama3') {
    o.low_freq_factor = r.lowFreqFactor;
    o.high_freq_factor = r.highFreqFactor;
    o.original_max_position_embeddings = r.originalMaxPositions;
  } else if (r.type === 'dynamic' && r.originalMaxPositions !== undefined) {
    o.original_max_position_embeddings = r.originalMaxPositions;
  }
  return o;
}

/** Parse a Hugging Face config.json object of any supported model_type. */
export function configFromHF(cfg: Json, file = 'config.json'): ModelConfig {
  const type = cfg.model_type;
  if (typeof type !== 'string' || !(type in ARCHITECTURES)) {
    const hint = type === 'gemma3'
      ? 'this is the multimodal Gemma-3 config; point at a text-only checkpoint (model_type "gemma3_text")'
      : `supported: ${FAMILIES.map((f) => JSON.stringify(f)).join(', ')}`;
    throw new Err(`${file}: unsupported model_type ${JSON.stringify(type)} (field model_type)`, hint);
  }
  const family = type as Family;
  const A = ARCHITECTURES[family];
  const name = (k: keyof NonNullable<Architecture['fields']>, dflt: string) => A.fields?.[k] ?? dflt;
  // sizes are int32 in the native decoder; more than 4096 layers is no real model (the largest have ~128)
  const int = { int: true, min: 1, max: 2 ** 31 - 1 };
  const hidden = num(cfg, name('hidden', 'hidden_size'), file, undefined, int);
  const heads = num(cfg, name('heads', 'num_attention_heads'), file, undefined, int);
  const kv = num(cfg, name('kvHeads', 'num_key_value_heads'), file, heads, int);
  if (heads % kv !== 0) throw new Err(`${file}: num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${kv})`);
  const headDim = num(cfg, 'head_dim', file, A.defaults.headDim ?? hidden / heads, int);
  const actField = name('act', 'hidden_act');
  const act = String(cfg[actField] ?? cfg.hidden_act ?? A.defaults.act);
  let activation: 'silu' | 'gelu_tanh';
  if (act === 'silu' || act === 'swish') activation = 'silu';
  else if (act === 'gelu_pytorch_tanh' || act === 'gelu_tanh' || act === 'gelu_new') activation = 'gelu_tanh';
  else throw new Err(`${file}: unsupported activation ${JSON.stringify(act)} (field ${actField})`, 'supported: silu, gelu_pytorch_tanh, gelu_new');
  const maxPos = num(cfg, name('maxPos', 'max_position_embeddings'), file, A.defaults.maxPos, int);
  // an int, a list of ints (the first is the one id; eos keeps the list), null (none: −1) or absent (default)
  const tokenIds = (f: string): number[] | null | undefined => {
    const v = cfg[f];
    if (v === undefined) return undefined;
    if (v === null) return null;
    const list = Array.isArray(v) ? v : [v];
    if (list.length === 0 || !list.every((x) => Number.isInteger(x))) {
      throw new Err(`${file}: field "${f}" must be a token id or a list of token ids, got ${JSON.stringify(v)}`);
    }
    return list as number[];
  };
  const tokenId = (f: string, d: number) => {
    const v = tokenIds(f);
    return v === undefined ? d : v === null ? -1 : v[0];
  };
  const bool = (f: string) => {
    const v = cfg[f];
    if (v !== undefined && v !== null && typeof v !== 'boolean') throw new Err(`${file}: field "${f}" must be true or false, got ${JSON.stringify(v)}`);
    return v === true;
  };
  // rope: transformers ≤ 4.x rope_theta + rope_scaling; 5.x rope_parameters (per layer kind for Gemma-3)
  let ropeTheta = num(cfg, 'rope_theta', file, A.defaults.ropeTheta, { min: 1e-9 });
  let ropeScaling = parseRopeScaling(cfg.rope_scaling, 'rope_scaling', file, maxPos);
  let ropeLocalTheta = A.localRope ? num(cfg, 'rope_local_base_freq', file, 10000, { min: 1e-9 }) : undefined;
  const rp = cfg.rope_parameters as Json | undefined;
  if (rp && typeof rp === 'object') {
    const full = (rp.full_attention ?? rp) as Json;
    if (typeof full.rope_theta === 'number') ropeTheta = full.rope_theta;
    ropeScaling = parseRopeScaling(full, rp.full_attention ? 'rope_parameters.full_attention' : 'rope_parameters', file, maxPos) ?? ropeScaling;
    const local = rp.sliding_attention as Json | undefined;
    if (local && A.localRope) {
      if (typeof local.rope_theta === 'number') ropeLocalTheta = local.rope_theta;
      if (parseRopeScaling(local, 'rope_parameters.sliding_attention', file, maxPos)) {
        throw new Err(`${file}: rope scaling on sliding-window layers (rope_parameters.sliding_attention) is not supported`);
      }
    }
  }
  const ffnDefault = A.defaults.ffnPerHidden ? A.defaults.ffnPerHidden * hidden : undefined;
  const out: ModelConfig = {
    family,
    vocabSize: num(cfg, 'vocab_size', file, undefined, int),
    hiddenSize: hidden,
    numLayers: num(cfg, name('layers', 'num_hidden_layers'), file, undefined, { ...int, max: 4096 }),
    numHeads: heads,
    numKvHeads: kv,
    headDim,
    intermediateSize: num(cfg, name('ffn', 'intermediate_size'), file, ffnDefault, int),
    maxPositions: maxPos,
    rmsNormEps: num(cfg, name('eps', 'rms_norm_eps'), file, A.defaults.eps, { min: 1e-30 }),
    ropeTheta,
    tieWordEmbeddings: cfg.tie_word_embeddings === undefined || cfg.tie_word_embeddings === null ? A.defaults.tied : cfg.tie_word_embeddings === true,
    attnLogitSoftcapping: A.softcaps ? num(cfg, 'attn_logit_softcapping', file, A.defaults.attnSoftcap ?? 0) : 0,
    finalLogitSoftcapping: A.softcaps ? num(cfg, 'final_logit_softcapping', file, A.defaults.finalSoftcap ?? 0) : 0,
    queryPreAttnScalar: A.queryPreAttnScalar ? num(cfg, 'query_pre_attn_scalar', file, 256) : 0,
    slidingWindow: 0,
    activation,
    bosTokenId: tokenId('bos_token_id', 1),
    eosTokenId: tokenId('eos_token_id', 2),
    padTokenId: tokenId('pad_token_id', 0),
  };
  const eosList = tokenIds('eos_token_id');
  if (Array.isArray(cfg.eos_token_id) && eosList) out.eosTokenIds = eosList;
  const sw = cfg.sliding_window;
  if (A.slidingWindowField && sw !== null && sw !== false) {
    out.slidingWindow = sw === undefined ? A.slidingWindowField.dflt : num(cfg, 'sliding_window', file, undefined, int);
  }
  for (const f of ['attention_bias', 'mlp_bias'] as const) {
    if (!bool(f)) continue;
    if (A.biasFields.includes(f)) out[f === 'attention_bias' ? 'attentionBias' : 'mlpBias'] = true;
    // transformers' configs without the field ignore it; a bias on the MLP is a different model, refused
    else if (f === 'mlp_bias') {
      const readers = FAMILIES.filter((t) => ARCHITECTURES[t].biasFields.includes(f));
      throw new Err(`${file}: field "mlp_bias" = true is not supported for model_type "${family}"`, `supported for: ${readers.join(', ')}`);
    }
  }
  if (ropeScaling) out.ropeScaling = ropeScaling;
  if (ropeLocalTheta !== undefined) out.ropeLocalTheta = ropeLocalTheta;
  let sliding: boolean[] | undefined;
  if (cfg.layer_types !== undefined && cfg.layer_types !== null) {
    const lt = cfg.layer_types;
    if (!Array.isArray(lt) || lt.length !== out.numLayers || lt.some((t) => t !== 'sliding_attention' && t !== 'full_attention')) {
      throw new Err(`${file}: field "layer_types" must list "sliding_attention" or "full_attention" for each of the ${out.numLayers} layers`);
    }
    sliding = lt.map((t) => t === 'sliding_attention');
    if (sliding.some((x) => x) && out.slidingWindow <= 0) throw new Err(`${file}: field "layer_types" has sliding layers but "sliding_window" is not set`);
  } else if (out.slidingWindow > 0) {
    sliding = Array.from({ length: out.numLayers }, (_, l) => A.sliding(l, out, cfg));
  }
  // layerTypes is kept only where it departs from what slidingLayers() derives without config.json (so that
  // a saved and reloaded config compares equal to the original)
  if (sliding) {
    const derived = slidingLayers(out);
    if (sliding.some((x, l) => x !== derived[l])) out.layerTypes = sliding.map((x) => (x ? 'sliding_attention' : 'full_attention'));
  }
  if (ropeScaling && A.learnedPositions) throw new Err(`${file}: rope_scaling on a model without RoPE`);
  A.extra?.read(cfg, file, out);
  return out;
}

/** Which layers use sliding-window attention. */
export function slidingLayers(c: ModelConfig): boolean[] {
  if (c.layerTypes) return c.layerTypes.map((t) => t === 'sliding_attention');
  const A = ARCHITECTURES[c.family];
  return Array.from({ length: c.numLayers }, (_, l) => c.slidingWindow > 0 && A.sliding(l, c, {}));
}

/** The Hugging Face config.json object for a config. */
export function configToHF(c: ModelConfig): Json {
  const A = ARCHITECTURES[c.family];
  if (!A) throw new Err(`unknown model family ${JSON.stringify(c.family)}`, `supported: ${FAMILIES.join(', ')}`);
  const name = (k: keyof NonNullable<Architecture['fields']>, dflt: string) => A.fields?.[k] ?? dflt;
  const act = c.activation === 'silu' ? 'silu' : A.defaults.act === 'silu' ? 'gelu_pytorch_tanh' : A.defaults.act;
  const o: Json = {
    architectures: [A.hfClass],
    model_type: c.family,
    vocab_size: c.vocabSize,
    [name('hidden', 'hidden_size')]: c.hiddenSize,
    [name('layers', 'num_hidden_layers')]: c.numLayers,
    [name('heads', 'num_attention_heads')]: c.numHeads,
    [name('ffn', 'intermediate_size')]: c.intermediateSize,
    [name('maxPos', 'max_position_embeddings')]: c.maxPositions,
    [name('eps', 'rms_norm_eps')]: c.rmsNormEps,
    [name('act', 'hidden_act')]: act,
    tie_word_embeddings: c.tieWordEmbeddings,
    // HF writes null for a token the model does not have (Qwen's tokenizer has no BOS), never −1
    bos_token_id: c.bosTokenId >= 0 ? c.bosTokenId : null,
    eos_token_id: c.eosTokenIds?.length ? [...c.eosTokenIds] : c.eosTokenId >= 0 ? c.eosTokenId : null,
    pad_token_id: c.padTokenId >= 0 ? c.padTokenId : null,
    torch_dtype: 'float32',
  };
  if (!A.learnedPositions) {
    o.num_key_value_heads = c.numKvHeads;
    o.head_dim = c.headDim;
    o.rope_theta = c.ropeTheta;
    o.rope_scaling = c.ropeScaling ? ropeScalingToHF(c.ropeScaling) : null;
  }
  for (const f of A.biasFields) o[f] = f === 'attention_bias' ? !!c.attentionBias : !!c.mlpBias;
  if (A.fields?.act === 'hidden_activation') o.hidden_act = act;
  if (A.softcaps) {
    o.attn_logit_softcapping = c.attnLogitSoftcapping || null;
    o.final_logit_softcapping = c.finalLogitSoftcapping || null;
  }
  if (A.queryPreAttnScalar) o.query_pre_attn_scalar = c.queryPreAttnScalar;
  if (A.localRope) o.rope_local_base_freq = c.ropeLocalTheta ?? 10000;
  if (A.slidingWindowField) o.sliding_window = c.slidingWindow > 0 ? c.slidingWindow : null;
  if (A.slidingWindowField?.useFlag) {
    o.use_sliding_window = slidingLayers(c).some((s) => s);
    if (o.use_sliding_window) o.max_window_layers = slidingLayers(c).indexOf(true);
  }
  const sliding = slidingLayers(c);
  if (sliding.some((s) => s)) o.layer_types = sliding.map((s) => (s ? 'sliding_attention' : 'full_attention'));
  if (A.extra) Object.assign(o, A.extra.write(c));
  return o;
}

function ropeSpec(theta: number, s: RopeScaling | null | undefined): NativeRope {
  if (!s) return { theta, scaling: 'none' };
  return {
    theta, scaling: s.type, factor: s.factor, lowFreqFactor: s.lowFreqFactor, highFreqFactor: s.highFreqFactor,
    originalMaxPositions: s.originalMaxPositions,
  };
}

/** The native decoder's switches for a config: its architecture's row applied to its sizes. */
export function decoderSpec(c: ModelConfig): NativeDecoderSpec {
  const A = ARCHITECTURES[c.family];
  if (!A) throw new Err(`unknown model family ${JSON.stringify(c.family)}`, `supported: ${FAMILIES.join(', ')}`);
  const b = A.biases(c);
  const sliding = slidingLayers(c);
  return {
    vocabSize: c.vocabSize, hiddenSize: c.hiddenSize, numLayers: c.numLayers, numHeads: c.numHeads, numKvHeads: c.numKvHeads,
    headDim: c.headDim, intermediateSize: c.intermediateSize, maxPositions: c.maxPositions, normEps: c.rmsNormEps,
    norm: A.norm, normUnitOffset: A.normUnitOffset, sandwichNorms: A.sandwichNorms, qkNorm: A.qkNorm,
    qkvBias: b.qkv, oBias: b.o, mlpBias: b.mlp, mlp: A.mlp, activation: c.activation,
    embedScale: A.embedScale ? Math.sqrt(c.hiddenSize) : 1, learnedPositions: A.learnedPositions,
    rope: ropeSpec(c.ropeTheta, c.ropeScaling),
    ropeLocal: A.localRope ? ropeSpec(c.ropeLocalTheta ?? 10000, null) : undefined,
    tieWordEmbeddings: c.tieWordEmbeddings,
    attnSoftcap: A.softcaps ? c.attnLogitSoftcapping : 0,
    finalSoftcap: A.softcaps ? c.finalLogitSoftcapping : 0,
    attnScale: A.queryPreAttnScalar && c.queryPreAttnScalar > 0 ? 1 / Math.sqrt(c.queryPreAttnScalar) : 0,
    slidingWindow: sliding.some((s) => s) ? c.slidingWindow : 0,
    slidingLayers: sliding,
  };
}

/**
 * How the checkpoint's tensors map onto the decoder's (decoder names are Llama's HF names). `decoder` is the
 * decoder's tensor list (name, shape); `hfNames` the checkpoint's names (GPT-2 checkpoints may or may not carry
 * the "transformer." prefix). Identity for every architecture without a `tensors` rule.
 */
export function tensorMappings(c: ModelConfig, decoder: ReadonlyArray<{ name: string; shape: number[] }>, hfNames: readonly string[] = []): TensorMapping[] {
  const rule = ARCHITECTURES[c.family].tensors;
  if (rule) return rule(c, hfNames);
  return decoder.map((t) => ({ hf: t.name, hfShape: t.shape, transpose: false, parts: [t.name] }));
}

// GPT-2 (GPT2LMHeadModel): Conv1D weights are [in, out]; c_attn holds q, k, v side by side.
function gpt2Tensors(c: ModelConfig, hfNames: readonly string[]): TensorMapping[] {
  const d = c.hiddenSize, F = c.intermediateSize;
  const pre = hfNames.length > 0 && !hfNames.some((n) => n.startsWith('transformer.')) ? '' : 'transformer.';
  const m: TensorMapping[] = [
    { hf: `${pre}wte.weight`, hfShape: [c.vocabSize, d], transpose: false, parts: ['model.embed_tokens.weight'] },
    { hf: `${pre}wpe.weight`, hfShape: [c.maxPositions, d], transpose: false, parts: ['model.embed_positions.weight'] },
  ];
  for (let l = 0; l < c.numLayers; l++) {
    const h = `${pre}h.${l}.`, L = `model.layers.${l}.`;
    const same = (hf: string, ours: string, shape: number[]) => m.push({ hf: h + hf, hfShape: shape, transpose: false, parts: [L + ours] });
    same('ln_1.weight', 'input_layernorm.weight', [d]);
    same('ln_1.bias', 'input_layernorm.bias', [d]);
    m.push({ hf: `${h}attn.c_attn.weight`, hfShape: [d, 3 * d], transpose: true, parts: ['q', 'k', 'v'].map((x) => `${L}self_attn.${x}_proj.weight`) });
    m.push({ hf: `${h}attn.c_attn.bias`, hfShape: [3 * d], transpose: false, parts: ['q', 'k', 'v'].map((x) => `${L}self_attn.${x}_proj.bias`) });
    m.push({ hf: `${h}attn.c_proj.weight`, hfShape: [d, d], transpose: true, parts: [`${L}self_attn.o_proj.weight`] });
    same('attn.c_proj.bias', 'self_attn.o_proj.bias', [d]);
    same('ln_2.weight', 'post_attention_layernorm.weight', [d]);
    same('ln_2.bias', 'post_attention_layernorm.bias', [d]);
    m.push({ hf: `${h}mlp.c_fc.weight`, hfShape: [d, F], transpose: true, parts: [`${L}mlp.up_proj.weight`] });
    same('mlp.c_fc.bias', 'mlp.up_proj.bias', [F]);
    m.push({ hf: `${h}mlp.c_proj.weight`, hfShape: [F, d], transpose: true, parts: [`${L}mlp.down_proj.weight`] });
    same('mlp.c_proj.bias', 'mlp.down_proj.bias', [d]);
  }
  m.push({ hf: `${pre}ln_f.weight`, hfShape: [d], transpose: false, parts: ['model.norm.weight'] });
  m.push({ hf: `${pre}ln_f.bias`, hfShape: [d], transpose: false, parts: ['model.norm.bias'] });
  if (!c.tieWordEmbeddings) m.push({ hf: 'lm_head.weight', hfShape: [c.vocabSize, d], transpose: false, parts: ['lm_head.weight'] });
  return m;
}

/** HF tensors a loader may skip: buffers, not parameters (rotary inv_freq, GPT-2's causal-mask buffers). */
export function isIgnoredHfTensor(c: ModelConfig, name: string): boolean {
  if (name.endsWith('rotary_emb.inv_freq')) return true;
  if (ARCHITECTURES[c.family].ignoredTensors?.test(name)) return true;
  return c.tieWordEmbeddings && name === 'lm_head.weight';
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
  if (!p) throw new Err(`unknown preset "${name}"`, `choose one of: ${Object.keys(PRESETS).join(', ')}`);
  return { ...p, vocabSize: tok.vocabSize, bosTokenId: tok.bos, eosTokenId: tok.eos, padTokenId: tok.pad };
}
