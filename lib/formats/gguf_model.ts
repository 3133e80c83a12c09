/**
 * A model as a GGUF file llama.cpp runs: the architecture's metadata (llama.cpp key names), the decoder's
 * tensors under llama.cpp's names, the tokenizer and chat template (lib/formats/gguf_vocab.ts).
 *
 * What differs per architecture is one column of the architecture table (lib/models/config.ts
 * ARCHITECTURES[family].gguf): llama.cpp's architecture name (mistral goes out as llama, as llama.cpp's own
 * converter does), whether its RoPE rotates interleaved pairs (llama: q/k rows and biases permuted from HF's
 * half split), whether q/k/v go out fused (gpt2: attn_qkv). The rest follows from the decoder's switches:
 * Gemma's (1 + w) RMSNorm weights are written as 1 + w, Llama 3 rope_scaling becomes a rope_freqs tensor,
 * linear scaling rope.scaling.* keys, sandwich norms post_attention_norm / post_ffw_norm.
 *
 * Tensors: 1-D (norms, biases, rope_freqs) stay F32, as llama.cpp's converter keeps them; matrices take the
 * requested type, except Q8_0 on rows that are not a multiple of 32 values, which fall back to F16.
 */
import * as path from 'path';
import { UndoError, errorClass } from '../core/errors';
import type { Model } from '../models/model';
import { ARCHITECTURES, FAMILIES, GgufArchitecture, ModelConfig, slidingLayers } from '../models/config';
import { GGUF_TYPES, GgufMetadata, GgufTensor, GgufType, LLAMA_FTYPE, Q8_0_BLOCK, writeGguf } from './gguf';
import { ggufVocab } from './gguf_vocab';

/** Errors of this module: code ERR_GGUF unless one names another. */
const Err = errorClass('ERR_GGUF');

export interface GgufExportOptions {
  /** weight encoding of the matrices (default f16, like llama.cpp's converter) */
  type?: GgufType | string;
  /** general.name (default: the model directory's name) */
  name?: string;
  /** tokenizer.ggml.pre for a byte-level BPE tokenizer whose pre-tokenizer is not recognised */
  pre?: string;
}

export interface GgufExportResult {
  file: string;
  bytes: number;
  arch: string;
  type: GgufType;
  tensors: number;
  /** tensors written in another type than asked (Q8_0 rows not a multiple of 32 → F16) */
  fallbacks: string[];
  /** what llama.cpp will do differently from undo-native (e.g. no sliding window in its llama architecture) */
  notes: string[];
  tokenizer: { model: string; pre?: string };
}

/** The GGUF row of a config's architecture, or an UndoError naming model_type. */
export function ggufArchitecture(c: ModelConfig): GgufArchitecture {
  const g = ARCHITECTURES[c.family].gguf;
  if (typeof g === 'string') {
    const ok = FAMILIES.filter((f) => typeof ARCHITECTURES[f].gguf !== 'string');
    throw new Err(`model_type ${JSON.stringify(c.family)} cannot be exported to GGUF (${g}); GGUF export supports: ${ok.join(', ')}`);
  }
  return g;
}

/** A GGUF type from a user's string, or an UndoError naming --type. */
export function parseGgufType(t: string): GgufType {
  const v = t.toLowerCase();
  if (!(GGUF_TYPES as readonly string[]).includes(v)) throw new Err(`--type ${JSON.stringify(t)} is not offered for GGUF; choose one of: ${GGUF_TYPES.join(', ')}`);
  return v as GgufType;
}

/** The configurations llama.cpp's architecture cannot express, refused with the config.json field named. */
function checkExpressible(c: ModelConfig, g: GgufArchitecture): string[] {
  const notes: string[] = [];
  const field = (f: string, why: string) => new Err(`config.json field ${f}: ${why}`, `llama.cpp's ${g.arch} architecture cannot express it`);
  const expectAct = g.arch === 'gemma2' || g.arch === 'gpt2' ? 'gelu_tanh' : 'silu';
  if (c.activation !== expectAct) throw field('hidden_act', `activation ${c.activation} where ${g.arch} computes ${expectAct}`);
  if (c.ropeScaling) {
    if (c.ropeScaling.type === 'llama3' && g.arch !== 'llama') throw field('rope_scaling', `rope_type "llama3" on ${c.family} (llama.cpp reads rope_freqs for llama only)`);
    if (c.ropeScaling.type === 'dynamic') {
      notes.push(`rope_scaling "dynamic": llama.cpp has no dynamic NTK; written unscaled, identical up to ${c.ropeScaling.originalMaxPositions ?? c.maxPositions} positions`);
    }
  }
  if ((g.arch === 'qwen3' || g.arch === 'gemma2') && c.attentionBias) throw field('attention_bias', `true, but llama.cpp's ${g.arch} has no attention biases`);
  if (g.arch === 'gemma2') {
    if (!(c.attnLogitSoftcapping > 0)) throw field('attn_logit_softcapping', 'must be set: llama.cpp\'s gemma2 always caps attention logits');
    if (!(c.finalLogitSoftcapping > 0)) throw field('final_logit_softcapping', 'must be set: llama.cpp\'s gemma2 always caps the final logits');
    // llama.cpp scales queries by head_dim^-1/2, or (hidden/heads)^-1/2 for the 46-layer 27B
    const scalar = c.numLayers === 46 ? c.hiddenSize / c.numHeads : c.headDim;
    if (c.queryPreAttnScalar > 0 && c.queryPreAttnScalar !== scalar) {
      throw field('query_pre_attn_scalar', `${c.queryPreAttnScalar}, but llama.cpp's gemma2 uses ${scalar} for a ${c.numLayers}-layer model`);
    }
  }
  const sliding = slidingLayers(c);
  if (sliding.some(Boolean) && g.arch !== 'gemma2') {
    notes.push(`sliding_window ${c.slidingWindow}: llama.cpp's ${g.arch} architecture attends the whole context, so outputs differ beyond ${c.slidingWindow} tokens`);
  }
  return notes;
}

const GLOBAL_NAMES: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.embed_positions.weight': 'position_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'model.norm.bias': 'output_norm.bias',
  'lm_head.weight': 'output.weight',
};

function layerNames(sandwich: boolean): Record<string, string> {
  return {
    input_layernorm: 'attn_norm',
    'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
    'self_attn.q_norm': 'attn_q_norm', 'self_attn.k_norm': 'attn_k_norm',
    post_attention_layernorm: sandwich ? 'post_attention_norm' : 'ffn_norm',
    pre_feedforward_layernorm: 'ffn_norm',
    post_feedforward_layernorm: 'post_ffw_norm',
    'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
  };
}

/** HF's half-split RoPE rows → llama.cpp's interleaved pairs: row h·D + 2j + t takes row h·D + t·D/2 + j. */
export function permuteRope(src: Float32Array, heads: number, headDim: number): Float32Array {
  const cols = src.length / (heads * headDim);
  const out = new Float32Array(src.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++)
    for (let j = 0; j < half; j++)
      for (let t = 0; t < 2; t++) {
        const to = (h * headDim + 2 * j + t) * cols, from = (h * headDim + t * half + j) * cols;
        out.set(src.subarray(from, from + cols), to);
      }
  return out;
}

/** Llama 3 rope_scaling as llama.cpp's rope_freqs: the factor each frequency's angle is divided by. */
export function llama3RopeFactors(c: ModelConfig): Float32Array {
  const r = c.ropeScaling!;
  const D = c.headDim;
  const orig = r.originalMaxPositions!, low = r.lowFreqFactor!, high = r.highFreqFactor!;
  const lowWavelen = orig / low, highWavelen = orig / high;
  const out = new Float32Array(D / 2);
  for (let i = 0; i < D / 2; i++) {
    const freq = 1 / Math.pow(c.ropeTheta, (2 * i) / D);
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = r.factor;
    else {
      const smooth = (orig / wavelen - low) / (high - low);
      out[i] = 1 / ((1 - smooth) / r.factor + smooth);
    }
  }
  return out;
}

function archMetadata(c: ModelConfig, g: GgufArchitecture, type: GgufType, name: string): GgufMetadata {
  const a = g.arch;
  const u32 = (value: number) => ({ type: 'u32' as const, value });
  const f32 = (value: number) => ({ type: 'f32' as const, value });
  const md: GgufMetadata = [
    ['general.architecture', { type: 'string', value: a }],
    ['general.name', { type: 'string', value: name }],
    ['general.file_type', u32(LLAMA_FTYPE[type])],
  ];
  if (type === 'q8_0') md.push(['general.quantization_version', u32(2)]);
  md.push(
    [`${a}.vocab_size`, u32(c.vocabSize)],
    [`${a}.context_length`, u32(c.maxPositions)],
    [`${a}.embedding_length`, u32(c.hiddenSize)],
    [`${a}.block_count`, u32(c.numLayers)],
    [`${a}.feed_forward_length`, u32(c.intermediateSize)],
    [`${a}.attention.head_count`, u32(c.numHeads)],
    [`${a}.attention.head_count_kv`, u32(c.numKvHeads)],
  );
  if (ARCHITECTURES[c.family].norm === 'layer') md.push([`${a}.attention.layer_norm_epsilon`, f32(c.rmsNormEps)]);
  else md.push([`${a}.attention.layer_norm_rms_epsilon`, f32(c.rmsNormEps)]);
  if (!ARCHITECTURES[c.family].learnedPositions) {
    md.push(
      [`${a}.attention.key_length`, u32(c.headDim)],
      [`${a}.attention.value_length`, u32(c.headDim)],
      [`${a}.rope.dimension_count`, u32(c.headDim)],
      [`${a}.rope.freq_base`, f32(c.ropeTheta)],
    );
    if (c.ropeScaling?.type === 'linear') {
      md.push([`${a}.rope.scaling.type`, { type: 'string', value: 'linear' }], [`${a}.rope.scaling.factor`, f32(c.ropeScaling.factor)]);
    }
  }
  if (a === 'gemma2') {
    md.push(
      [`${a}.attn_logit_softcapping`, f32(c.attnLogitSoftcapping)],
      [`${a}.final_logit_softcapping`, f32(c.finalLogitSoftcapping)],
      [`${a}.attention.sliding_window`, u32(c.slidingWindow > 0 ? c.slidingWindow : c.maxPositions)],
    );
  }
  return md;
}

/** The decoder's tensors under llama.cpp's names, with their transforms and types. */
function ggufTensors(model: Model, g: GgufArchitecture, type: GgufType, fallbacks: string[]): GgufTensor[] {
  const c = model.config;
  const A = ARCHITECTURES[c.family];
  const names = layerNames(A.sandwichNorms);
  const out: GgufTensor[] = [];
  const typed = (n: string, shape: number[]): GgufType => {
    if (shape.length === 1) return 'f32';
    if (type === 'q8_0' && shape[shape.length - 1] % Q8_0_BLOCK !== 0) {
      fallbacks.push(`${n} (rows of ${shape[shape.length - 1]})`);
      return 'f16';
    }
    return type;
  };
  for (const t of model.tensors) {
    let gname = GLOBAL_NAMES[t.name];
    let shape = t.shape.slice();
    let data = () => model.tensor(t.name);
    if (!gname) {
      const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(t.name);
      const base = m ? names[m[2]] : undefined;
      if (!m || !base) throw new Err(`internal: decoder tensor ${t.name} has no GGUF name`);
      const L = m[1], kind = m[3];
      const isQ = m[2] === 'self_attn.q_proj', isK = m[2] === 'self_attn.k_proj', isV = m[2] === 'self_attn.v_proj';
      if (g.fusedQkv && (isK || isV)) continue;
      if (g.fusedQkv && isQ) {
        const parts = ['q', 'k', 'v'].map((x) => `model.layers.${L}.self_attn.${x}_proj.${kind}`);
        shape = [parts.reduce((s, p) => s + model.tensorInfo(p).shape[0], 0), ...t.shape.slice(1)];
        gname = `blk.${L}.attn_qkv.${kind}`;
        data = () => {
          const views = parts.map((p) => model.tensor(p));
          const buf = new Float32Array(views.reduce((s, v) => s + v.length, 0));
          let off = 0;
          for (const v of views) { buf.set(v, off); off += v.length; }
          return buf;
        };
      } else {
        gname = `blk.${L}.${base}.${kind}`;
        if (g.interleavedRope && (isQ || isK)) {
          const heads = isQ ? c.numHeads : c.numKvHeads;
          data = () => permuteRope(model.tensor(t.name), heads, c.headDim);
        }
      }
    }
    if (A.normUnitOffset && /(layernorm|_norm|^model\.norm)\.weight$/.test(t.name)) {
      const src = data;
      data = () => {
        const w = src();
        const o = new Float32Array(w.length);
        for (let i = 0; i < w.length; i++) o[i] = w[i] + 1;
        return o;
      };
    }
    out.push({ name: gname, shape, type: typed(gname, shape), data });
  }
  if (c.ropeScaling?.type === 'llama3') out.push({ name: 'rope_freqs.weight', shape: [c.headDim / 2], type: 'f32', data: () => llama3RopeFactors(c) });
  return out;
}

/**
 * Export `model` (weights, architecture, tokenizer, chat template) to a GGUF file llama.cpp loads. Bad input
 * (an architecture or tokenizer GGUF cannot describe, an unknown type) is an UndoError naming the field, and
 * no file is written; the file itself is written atomically (temporary name, renamed at the end).
 */
export function exportGguf(model: Model, file: string, opts: GgufExportOptions = {}): GgufExportResult {
  const c = model.config;
  const type = parseGgufType(opts.type ?? 'f16');
  const g = ggufArchitecture(c);
  if (g.interleavedRope && c.headDim % 2 !== 0) throw new Err(`config.json field head_dim: ${c.headDim} is odd; RoPE needs an even head size`);
  const notes = checkExpressible(c, g);
  const stop = model.stopTokenIds().find((id) => id !== model.tokenizer.eos);
  const vocab = ggufVocab(model.tokenizer, c.vocabSize, { pre: opts.pre, eotId: stop });
  const name = opts.name ?? (model.sourceDir ? path.basename(path.resolve(model.sourceDir)) : 'undo-native model');
  const fallbacks: string[] = [];
  const tensors = ggufTensors(model, g, type, fallbacks);
  const metadata = [...archMetadata(c, g, type, name), ...vocab.metadata];
  const { bytes } = writeGguf(file, metadata, tensors);
  return { file, bytes, arch: g.arch, type, tensors: tensors.length, fallbacks, notes, tokenizer: { model: vocab.model, pre: vocab.pre } };
}
