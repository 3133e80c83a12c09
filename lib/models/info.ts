/**
 * What a model directory holds and what running it will cost, from config.json and the safetensors
 * headers alone (no weights are read): `modelInfo(dir)` behind `undo-native info --model DIR`, and the
 * memory estimate of the native engine (`estimateMemory`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, describeError, errorClass } from '../core/errors';
import { readJson } from '../core/fsutil';
import { CheckpointReader } from '../formats/checkpoint';
import { configFromHF, decoderSpec, isIgnoredHfTensor, ModelConfig } from './config';

/** Errors of this module: code ERR_MODEL_CONFIG unless one names another. */
const Err = errorClass('ERR_MODEL_CONFIG');
const NotFoundError = errorClass('ERR_NOT_FOUND');

type Json = Record<string, unknown>;

/** Rows of the LM head's chunks (native/cpu/model.cc head_loss / head_custom default). */
const HEAD_CHUNK = 256;
/** native/cpu/model.h kHeadChunkFloats: the fewest logits a head chunk may hold (any model gets at least this) */
export const HEAD_CHUNK_FLOATS_FLOOR = 2 ** 23;
/** native/cpu/model.h Model::head_chunk_floats: the most logits one head chunk holds (P = native parameters) */
const headChunkFloats = (P: number) => Math.min(2 ** 26, Math.max(HEAD_CHUNK_FLOATS_FLOOR, Math.floor(P / 8)));

/**
 * Number of parameters the native decoder allocates for `cfg`, as native/cpu/model.cc's layout() lays
 * them out: embedding V·d; per layer the input norm d, q [qd, d], k and v [kvd, d], o [d, qd], the
 * post-attention norm d (Gemma-2 adds the pre- and post-feed-forward norms, 2d), gate and up [F, d],
 * down [d, F]; the final norm d; lm_head V·d unless tied.
 */
export function nativeParamCount(cfg: ModelConfig): number {
  const sp = decoderSpec(cfg);
  const d = sp.hiddenSize, V = sp.vocabSize, F = sp.intermediateSize, hd = sp.headDim;
  const qd = sp.numHeads * hd, kvd = sp.numKvHeads * hd;
  const nb = sp.norm === 'layer' ? 2 : 1;  // LayerNorm has a bias
  const layer = 2 * nb * d + (sp.sandwichNorms ? 2 * d : 0) + (sp.qkNorm ? 2 * hd : 0)
    + qd * d + 2 * kvd * d + d * qd + (sp.qkvBias ? qd + 2 * kvd : 0) + (sp.oBias ? d : 0)
    + (sp.mlp === 'gated' ? 3 : 2) * F * d + (sp.mlpBias ? (sp.mlp === 'gated' ? 2 : 1) * F + d : 0);
  return V * d + (sp.learnedPositions ? sp.maxPositions * d : 0) + sp.numLayers * layer + nb * d + (sp.tieWordEmbeddings ? 0 : V * d);
}

/** Estimated peak native memory, in bytes, of the jobs `undo-native info` reports. */
export interface MemoryEstimate {
  batch: number;
  seq: number;
  /** The loaded model: parameters, gradients (allocated with the model), RoPE tables. */
  load: number;
  /** load + a forward at batch × seq with its loss (activations + one head chunk of logits). */
  forward: number;
  /** load + AdamW m, v + activations kept for backward + backward scratch + head chunk. */
  train: number;
  /** With a teacher: the teacher loaded and its forward activations + the student's training step with the distillation head. */
  distill?: number;
  /** The pieces, in bytes: what each of the totals above is made of. */
  parts: {
    params: number; grads: number; rope: number; adam: number; activations: number; backwardScratch: number;
    headForward: number; headTrain: number; headDistill?: number; teacherLoad?: number; teacherActivations?: number;
  };
}

/**
 * Rows per chunk of the native fused head (Model::head_chunk) over N rows: at most 256 and at most
 * max(2²³, min(2²⁶, P/8)) / V, then balanced over the chunks (512 rows at a cap of 170: 4 × 128).
 */
export function headChunkRowsFor(cfg: ModelConfig, N: number): number {
  const cap = Math.max(1, Math.min(HEAD_CHUNK, N, Math.floor(headChunkFloats(nativeParamCount(cfg)) / cfg.vocabSize)));
  return Math.max(1, Math.ceil(N / Math.ceil(N / cap)));
}

/**
 * Memory of the native engine (float32 everywhere) for a forward / training step / distillation step at
 * `batch` × `seq`, derived from the buffers native/cpu/model.cc allocates. With N = batch·seq rows,
 * d = hidden, qd = heads·head_dim, kvd = kv_heads·head_dim, H = heads, F = intermediate, V = vocab,
 * P = nativeParamCount, c = min(256, N, clamp(P / 8, 2^23, 2^26) / V) (the head's row chunk), counting floats (× 4 bytes):
 *
 *   Model construction:  params_ P + grads_ P (layout() allocates both)
 *   RoPE tables (built on demand for the positions used): cos, sin seq·head_dim/2 each, per RoPE (Gemma-3 has two)
 *   ensure_acts, per layer (struct Acts), s = 1 norm statistic per row (2 for LayerNorm: rstd and mean):
 *       x_in, a1, ao, x_mid, a2, mo: 6·N·d    q, att: 2·N·qd    k, v: 2·N·kvd    lse: N·H
 *       gate (gated MLP only), up, g: 3·N·F   st1, st2: 2·s·N  (+ st_pa, st_pf: 2·s·N with sandwich norms)
 *       with q/k norms: q_pre N·qd, k_pre N·kvd, rstd_q N·H, rstd_k N·H_kv
 *     and once: x_final_, h_final_, dh_final_: 3·N·d; rstd_f_: s·N; ids_: N int32 (+ positions N int32, GPT-2)
 *   head_loss: one chunk of logits c·V (kept across calls, Model::head_scratch) plus weights and losses 2·c (the head never holds N × V)
 *   backward scratch: dx_, dmo_ 2·N·d; dbig1_ N·max(F, qd); dbig2_ N·F; dq_, datt_ 2·N·qd; dk_, dv_ 2·N·kvd
 *   AdamW: m_, v_ 2·P (allocated on the first step)
 *   headKd (distillation): head_custom's logits z and gradient dz 2·c·V + losses c, and the teacher's chunk tz c·V
 *
 *   forward = construction + activations + head_loss chunk
 *   train   = construction + AdamW + activations + backward scratch + head_loss chunk
 *   distill = teacher construction + teacher activations + student (train with the headKd chunks instead)
 *
 * Not counted: the GEMM's per-thread packing block (about 1 MiB a thread), the JS side (token batches,
 * the V8 heap) and the addon's code.
 */
export function estimateMemory(cfg: ModelConfig, batch: number, seq: number, teacher?: ModelConfig): MemoryEstimate {
  const F32 = 4;
  const N = batch * seq;
  const c = headChunkRowsFor(cfg, N);
  const construction = (m: ModelConfig) => {
    const sp = decoderSpec(m);
    return { params: nativeParamCount(m) * F32, rope: sp.learnedPositions ? 0 : (sp.ropeLocal ? 2 : 1) * seq * m.headDim * F32 };
  };
  const activations = (m: ModelConfig) => {
    const sp = decoderSpec(m);
    const d = m.hiddenSize, qd = m.numHeads * m.headDim, kvd = m.numKvHeads * m.headDim, st = sp.norm === 'layer' ? 2 : 1;
    const perLayer = 6 * d + 2 * qd + 2 * kvd + m.numHeads + (sp.mlp === 'gated' ? 3 : 2) * m.intermediateSize
      + (sp.sandwichNorms ? 4 : 2) * st + (sp.qkNorm ? qd + kvd + m.numHeads + m.numKvHeads : 0);
    return (N * m.numLayers * perLayer + N * (3 * d + st)) * F32 + N * 4 * (sp.learnedPositions ? 2 : 1);
  };
  const d = cfg.hiddenSize, qd = cfg.numHeads * cfg.headDim, kvd = cfg.numKvHeads * cfg.headDim, Ff = cfg.intermediateSize;
  const V = cfg.vocabSize;
  const s = construction(cfg);
  const parts: MemoryEstimate['parts'] = {
    params: s.params,
    grads: s.params,
    rope: s.rope,
    adam: 2 * s.params,
    activations: activations(cfg),
    backwardScratch: N * (2 * d + Math.max(Ff, qd) + Ff + 2 * qd + 2 * kvd) * F32,
    headForward: (c * V + 2 * c) * F32,
    headTrain: (c * V + 2 * c) * F32,
  };
  const load = parts.params + parts.grads + parts.rope;
  const trainBase = load + parts.adam + parts.activations + parts.backwardScratch;
  const est: MemoryEstimate = {
    batch, seq, load,
    forward: load + parts.activations + parts.headForward,
    train: trainBase + parts.headTrain,
    parts,
  };
  if (teacher) {
    const t = construction(teacher);
    parts.teacherLoad = 2 * t.params + t.rope;
    parts.teacherActivations = activations(teacher);
    parts.headDistill = (3 * c * V + c) * F32;
    est.distill = parts.teacherLoad + parts.teacherActivations + trainBase + parts.headDistill;
  }
  return est;
}

/** What `undo-native info --model DIR` reports. */
export interface ModelInfo {
  dir: string;
  modelType: string | null;
  architectures: string[];
  /** Parameters the model has, from the tensor headers (a tied lm_head and rotary buffers not counted). */
  parameters: number;
  /** Tensors in the checkpoint. */
  tensors: number;
  /** Dtypes on disk → number of tensors. */
  dtypes: Record<string, number>;
  /** config.json's dtype (transformers' newer name) or torch_dtype, if any. */
  torchDtype: string | null;
  sharded: boolean;
  shards: Array<{ file: string; bytes: number }>;
  /** Bytes of all weight files. */
  bytes: number;
  tokenizer: boolean;
  /** The parsed config, when config.json is one the native engine runs. */
  config?: ModelConfig;
  /** The memory estimate; undefined when config.json is not one the native engine runs (see memoryError). */
  memory?: MemoryEstimate;
  memoryError?: string;
}

/** Options of modelInfo. */
export interface ModelInfoOptions {
  batch?: number;
  seq?: number;
  /** A teacher model directory, for the distillation estimate. */
  teacher?: string;
}

function teacherConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  return configFromHF(readJson<Json>(file, 'teacher config', 'ERR_MODEL_CONFIG'), file);
}

/** Describe a model directory from config.json and the safetensors headers, without loading any weights. */
export function modelInfo(dir: string, opts: ModelInfoOptions = {}): ModelInfo {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new NotFoundError(`model directory ${dir} does not exist`);
  const cfgFile = path.join(dir, 'config.json');
  const raw = readJson<Json>(cfgFile, 'model config', 'ERR_MODEL_CONFIG');
  let config: ModelConfig | undefined;
  let memoryError: string | undefined;
  try {
    config = configFromHF(raw, cfgFile);
  } catch (e) {
    memoryError = describeError(e);
  }
  const reader = CheckpointReader.open(dir);
  const tied = config ? config.tieWordEmbeddings : raw.tie_word_embeddings !== false;
  let parameters = 0;
  const dtypes: Record<string, number> = {};
  for (const name of reader.names()) {
    const t = reader.info(name);
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
    if (config ? isIgnoredHfTensor(config, name) : name.endsWith('rotary_emb.inv_freq') || (tied && name === 'lm_head.weight')) continue;
    parameters += t.numel;
  }
  reader.close();
  const batch = opts.batch ?? 1, seq = opts.seq ?? 1024;
  const td = raw.dtype ?? raw.torch_dtype;
  return {
    dir,
    modelType: typeof raw.model_type === 'string' ? raw.model_type : null,
    architectures: Array.isArray(raw.architectures) ? raw.architectures.map(String) : [],
    parameters,
    tensors: reader.names().length,
    dtypes,
    torchDtype: typeof td === 'string' ? td : null,
    sharded: reader.indexFile !== undefined,
    shards: reader.shards.map((s) => ({ file: path.basename(s.file), bytes: s.bytes })),
    bytes: reader.shards.reduce((a, s) => a + s.bytes, 0),
    tokenizer: fs.existsSync(path.join(dir, 'tokenizer.json')),
    config,
    memory: config ? estimateMemory(config, batch, seq, opts.teacher ? teacherConfig(opts.teacher) : undefined) : undefined,
    memoryError,
  };
}
