/**
 * Models as Hugging Face directories (config.json, model.safetensors or sharded model-*-of-*.safetensors
 * with model.safetensors.index.json, tokenizer.json) and the Model handle over the native decoder
 * (native/cpu/model.cc). Weights live in native memory; `params` is a view of it, never a per-step copy,
 * and checkpoints are read straight into it (lib/formats/checkpoint.ts).
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, errorClass } from '../core/errors';
import { readJson, recoverDir, saveDirAtomic, writeFileAtomic } from '../core/fsutil';
import { native, NativeModel, NativeTensorInfo } from '../core/native';
import { formatShape, WritableDType, WriteTensor } from '../formats/safetensors';
import {
  CheckpointReader, DEFAULT_MAX_SHARD_SIZE, parseSize, parseTorchDType, readableAsF32, ReadOptions, TORCH_TO_SAFETENSORS, TorchDType,
  writeCheckpoint,
} from '../formats/checkpoint';
import { ByteTokenizer, loadAnyTokenizer, saveTokenizer, Tokenizer } from '../data/tokenizer';
import { configFromHF, configToHF, decoderSpec, isIgnoredHfTensor, ModelConfig, TensorMapping, tensorMappings } from './config';
import { gatherHf } from './layout';
import { nativeParamCount } from './info';
import * as os from 'os';

/** Errors of this module: code ERR_MODEL_CONFIG unless one names another. */
const Err = errorClass('ERR_MODEL_CONFIG');
const NotFoundError = errorClass('ERR_NOT_FOUND');
const WeightsError = errorClass('ERR_SAFETENSORS');
const TokenizerError = errorClass('ERR_TOKENIZER');
const ArgumentError = errorClass('ERR_ARGUMENT');
const OutOfMemoryError = errorClass('ERR_OUT_OF_MEMORY');

type Json = Record<string, unknown>;

export { configFromHF, configToHF, presetConfig, PRESETS } from './config';
export type { Family, ModelConfig } from './config';

/** Where one model tensor comes from: a checkpoint tensor, read as is or with ReadOptions (columns, transpose). */
export interface TensorSource extends ReadOptions {
  /** Name of the checkpoint tensor. */
  name: string;
}

/** A model tensor assembled by the caller from any checkpoint tensors (e.g. a concatenation of several). */
export interface CustomSource {
  /** The checkpoint tensors it reads: checked present before any data is read, and counted as used. */
  from: readonly string[];
  /** Fill `dest` (the model tensor's view of native memory, row-major in the model's shape) from the reader. */
  read(reader: CheckpointReader, dest: Float32Array): void;
}

/**
 * How checkpoint tensors map onto the model's tensors. `source` is asked for every model tensor;
 * checkpoint tensors that no model tensor reads are an error unless `ignore` accepts them.
 */
export interface WeightMapping {
  source(dest: NativeTensorInfo): TensorSource | CustomSource;
  ignore?(name: string): boolean;
}

function isCustom(s: TensorSource | CustomSource): s is CustomSource {
  return typeof (s as CustomSource).read === 'function';
}

/**
 * The architecture's own mapping (lib/models/config.ts `tensorMappings`): identity for all but GPT-2, whose
 * Conv1D weights are read transposed and whose fused c_attn is read as three column blocks. `hfNames` (the
 * checkpoint's tensor names) settles GPT-2's optional "transformer." prefix. Ignored when present: buffers
 * (rotary inv_freq, GPT-2's attn.bias), and lm_head.weight of a model with tied embeddings.
 */
export function architectureMapping(config: ModelConfig, decoder: readonly NativeTensorInfo[], hfNames: readonly string[] = []): WeightMapping {
  const numel = new Map(decoder.map((t) => [t.name, t]));
  const sources = new Map<string, TensorSource>();
  for (const m of tensorMappings(config, decoder, hfNames)) {
    if (m.parts.length === 1 && !m.transpose) {
      sources.set(m.parts[0], { name: m.hf });
      continue;
    }
    // decoder part j takes HF columns [c, c + its rows) (2-D, read transposed) or elements (1-D)
    let c = 0;
    for (const part of m.parts) {
      const t = numel.get(part);
      if (!t) throw new Err(`internal: mapping names an unknown decoder tensor "${part}"`);
      const width = m.transpose ? t.shape[0] : t.numel;
      sources.set(part, { name: m.hf, transpose: m.transpose, ...(m.parts.length > 1 ? { columns: [c, c + width] as const } : {}) });
      c += width;
    }
  }
  return {
    source: (dest) => sources.get(dest.name) ?? { name: dest.name },
    ignore: (name) => isIgnoredHfTensor(config, name),
  };
}

/** Model tensors named as in the checkpoint, whatever the architecture (for checkpoints undo-native's own tools wrote). */
export function identityMapping(config: ModelConfig): WeightMapping {
  return { source: (dest) => ({ name: dest.name }), ignore: (name) => isIgnoredHfTensor(config, name) };
}

/** Options of Model.load. */
export interface LoadOptions {
  /** Checkpoint → model tensor names (default: the architecture's, architectureMapping). */
  mapping?: WeightMapping;
}

/** Options of Model.save. */
export interface SaveOptions {
  /**
   * Dtype of the weights on disk, also written as config.json's torch_dtype. Default: the torch_dtype of
   * the config.json the model was loaded from (float32, bfloat16 or float16), else float32.
   */
  dtype?: TorchDType;
  /** Largest shard in bytes of tensor data (a number or e.g. "2GB"); default 5GB like Hugging Face. */
  maxShardSize?: number | string;
}

/** Files of a source directory that save() does not carry through: it writes them itself, or they hold weights or run state. */
const NOT_CARRIED: readonly RegExp[] = [
  /^config\.json$/, /^tokenizer\.json$/, /\.safetensors$/, /\.safetensors\.index\.json$/,
  /^pytorch_model.*\.bin(\.index\.json)?$/, /\.(pt|pth|ckpt|h5|msgpack|gguf)$/,
  /^trainer_state\.json$/, /^metrics\.jsonl$/, /\.tmp-\d+-/,
];

/** Names of the files save() copies unchanged from `dir` (regular files at the top level, symlinks followed). */
export function carriedFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir)
    .filter((name) => !NOT_CARRIED.some((re) => re.test(name)) && fs.statSync(path.join(dir, name), { throwIfNoEntry: false })?.isFile() === true)
    .sort();
}

/** dtype (transformers' newer name) or torch_dtype of a config.json object, if it is one save() can write. */
function configDType(raw: Json | undefined): TorchDType {
  const v = raw?.dtype ?? raw?.torch_dtype;
  return v === 'bfloat16' || v === 'float16' ? v : 'float32';
}

export interface InitOptions {
  seed?: number;
  init?: 'normal' | 'xavier';
  /** std of the normal init (HF default 0.02) */
  std?: number;
}

/**
 * Matmul precision. 'bf16': every projection, the MLP and the LM head multiply bf16-rounded operands with
 * fp32 accumulation (AVX512-BF16 where the CPU has it, emulated otherwise); parameters, gradients, AdamW,
 * norms, attention and the losses stay fp32 (fp32 master weights, as in mixed-precision training).
 */
export type ComputeDtype = 'fp32' | 'bf16';
export const COMPUTE_DTYPES: readonly ComputeDtype[] = ['fp32', 'bf16'];
let defaultCompute: ComputeDtype = 'fp32';
/** The precision new models start with (the CLI's --bf16 sets it). */
export function setDefaultComputeDtype(d: ComputeDtype): void {
  if (!COMPUTE_DTYPES.includes(d)) throw new ArgumentError(`compute dtype "${d}" is not supported`, `supported: ${COMPUTE_DTYPES.join(', ')}`);
  defaultCompute = d;
}
export function defaultComputeDtype(): ComputeDtype {
  return defaultCompute;
}

/** generation_config.json's eos_token_id as a list (absent or null: none); anything else is an error naming the file. */
export function generationEosIds(gen: Json, file: string): number[] {
  const v = gen.eos_token_id;
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((x) => Number.isInteger(x) && (x as number) >= 0)) {
    throw new Err(`${file}: field "eos_token_id" must be a token id or a list of token ids, got ${JSON.stringify(v)}`);
  }
  return list as number[];
}

export class Model {
  readonly native: NativeModel;
  readonly tensors: NativeTensorInfo[];
  /** All parameters, a view of native memory. */
  readonly params: Float32Array;
  /** All gradients, a view of native memory. */
  readonly grads: Float32Array;
  private readonly byName = new Map<string, NativeTensorInfo>();
  /** The config.json object the model was loaded from; save() keeps its fields undo-native does not set. */
  hfConfig?: Json;
  /** The directory the model was loaded from; save() carries its other files through (see carriedFiles). */
  sourceDir?: string;
  /** generation_config.json of the directory the model was loaded from (carried through on save). */
  generationConfig?: Json;

  constructor(readonly config: ModelConfig, public tokenizer: Tokenizer = new ByteTokenizer()) {
    checkAllocatable(config);
    this.native = new native.NativeModel(decoderSpec(config));
    this.tensors = this.native.tensors();
    for (const t of this.tensors) this.byName.set(t.name, t);
    this.params = this.native.params();
    this.grads = this.native.grads();
    if (defaultCompute !== 'fp32') this.native.setBf16(true);
  }

  /** The matmul precision of this model's forward, backward and head (see ComputeDtype). */
  get computeDtype(): ComputeDtype {
    return this.native.getBf16() ? 'bf16' : 'fp32';
  }

  setComputeDtype(d: ComputeDtype): void {
    if (!COMPUTE_DTYPES.includes(d)) throw new ArgumentError(`compute dtype "${d}" is not supported`, `supported: ${COMPUTE_DTYPES.join(', ')}`);
    this.native.setBf16(d === 'bf16');
  }

  /** A freshly initialised model (seeded; identical for every thread count). */
  static create(config: ModelConfig, opts: InitOptions = {}, tokenizer?: Tokenizer): Model {
    const m = new Model(config, tokenizer);
    m.native.init(opts.seed ?? 0, opts.init ?? 'normal', opts.std ?? 0.02);
    return m;
  }

  /**
   * Load a Hugging Face directory: config.json, model.safetensors or a sharded checkpoint (F32/BF16/F16,
   * read straight into native memory), tokenizer.json. Records the raw config and the directory for save().
   */
  static load(dir: string, opts: LoadOptions = {}): Model {
    recoverDir(dir);
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new NotFoundError(`model directory ${dir} does not exist`);
    const cfgFile = path.join(dir, 'config.json');
    const raw = readJson<Json>(cfgFile, 'model config', 'ERR_MODEL_CONFIG');
    const config = configFromHF(raw, cfgFile);
    const tokFile = path.join(dir, 'tokenizer.json');
    const hasTok = fs.existsSync(tokFile);
    const tokenizer = loadModelTokenizer(dir, config);
    if (hasTok && tokenizer.vocabSize > config.vocabSize) {
      throw new TokenizerError(`${tokFile}: the tokenizer has ${tokenizer.vocabSize} tokens but ${cfgFile} says vocab_size ${config.vocabSize}`);
    }
    const reader = CheckpointReader.open(dir);
    try {
      // a config far larger than its checkpoint (hostile or mistaken sizes) is refused before anything is allocated
      const held = reader.names().reduce((a, n) => a + reader.info(n).numel, 0);
      const needed = nativeParamCount(config);
      if (needed > 2 * held + (1 << 20)) {
        throw new WeightsError(`${cfgFile} describes a model of ${needed.toLocaleString('en-US')} parameters, but ${reader.source} holds ${held.toLocaleString('en-US')} values`,
          'the config\'s sizes (hidden_size, intermediate_size, num_hidden_layers, vocab_size, head counts) do not match the weights');
      }
      const m = new Model(config, tokenizer);
      m.loadWeights(reader, opts.mapping);
      m.hfConfig = raw;
      m.sourceDir = path.resolve(dir);
      const genFile = path.join(dir, 'generation_config.json');
      if (fs.existsSync(genFile)) {
        m.generationConfig = readJson<Json>(genFile, 'generation config');
        generationEosIds(m.generationConfig, genFile); // validated at load
      }
      return m;
    } finally {
      reader.close();
    }
  }

  /**
   * Read the weights from a checkpoint: a CheckpointReader, a model directory, or one safetensors file.
   * Every model tensor's source is checked (present, float dtype, shape) and unexpected checkpoint tensors
   * are refused before any data is read; then each tensor is read straight into `params`.
   */
  loadWeights(src: string | CheckpointReader, mapping?: WeightMapping): void {
    const reader = typeof src !== 'string' ? src
      : fs.existsSync(src) && fs.statSync(src).isDirectory() ? CheckpointReader.open(src) : CheckpointReader.openFile(src);
    try {
      mapping ??= architectureMapping(this.config, this.tensors, reader.names());
      for (const { dest, from } of this.weightPlan(reader, mapping)) {
        const view = this.params.subarray(dest.offset, dest.offset + dest.numel);
        if (isCustom(from)) from.read(reader, view);
        else reader.readInto(from.name, view, from);
      }
    } finally {
      if (reader !== src) reader.close();
    }
  }

  /** Each model tensor with its source, after checking every source against the checkpoint's headers. */
  private weightPlan(reader: CheckpointReader, mapping: WeightMapping): Array<{ dest: NativeTensorInfo; from: TensorSource | CustomSource }> {
    const plan = this.tensors.map((dest) => ({ dest, from: mapping.source(dest) }));
    const sourcesOf = (from: TensorSource | CustomSource) => (isCustom(from) ? [...from.from] : [from.name]);
    const list = (names: string[]) => names.slice(0, 5).join(', ') + (names.length > 5 ? `, ... (${names.length} in all)` : '');
    const missing = plan.flatMap(({ dest, from }) => sourcesOf(from).filter((n) => !reader.has(n))
      .map((n) => (n === dest.name ? `"${n}"` : `"${n}" (for "${dest.name}")`)));
    if (missing.length) throw new WeightsError(`${reader.source}: missing tensor${missing.length > 1 ? 's' : ''} ${list(missing)} (needed by the config)`);
    for (const { dest, from } of plan) {
      for (const name of sourcesOf(from)) {
        const info = reader.info(name);
        if (!readableAsF32(info.dtype)) {
          throw new WeightsError(`${info.file}: tensor "${name}" has dtype ${info.dtype}, which cannot be loaded as weights`, 'supported: F32, BF16, F16, F64');
        }
      }
      if (isCustom(from)) continue;
      const shape = reader.outputShape(from.name, from);
      if (shape.length !== dest.shape.length || shape.some((d, i) => d !== dest.shape[i])) {
        throw new WeightsError(`${reader.info(from.name).file}: tensor "${from.name}" has shape ${formatShape(shape)} but the config implies ` +
          `${formatShape(dest.shape)}${from.name === dest.name ? '' : ` for "${dest.name}"`}`);
      }
    }
    const used = new Set(plan.flatMap(({ from }) => sourcesOf(from)));
    const extra = reader.names().filter((n) => !used.has(n) && !mapping.ignore?.(n));
    if (extra.length) throw new WeightsError(`${reader.source}: unexpected tensors for this config: ${list(extra)}`);
    return plan;
  }

  /** A deep copy of the weights (same config and tokenizer; no gradients or optimizer state). */
  clone(): Model {
    const c = new Model(this.config, this.tokenizer);
    c.params.set(this.params);
    c.setComputeDtype(this.computeDtype);
    c.hfConfig = this.hfConfig;
    c.sourceDir = this.sourceDir;
    c.generationConfig = this.generationConfig;
    return c;
  }

  /**
   * The ids that end a generated row, as transformers' generate uses them: the tokenizer's EOS,
   * generation_config.json's eos_token_id (an int or a list: the chat end-of-turn tokens, Llama 3 <|eot_id|>,
   * Qwen <|im_end|>, Gemma <end_of_turn>) and config.json's eos_token_id (an int or a list). BOS is not one
   * unless it is also listed as an EOS — except for undo-native's byte tokenizer, whose packed documents are
   * [<bos>, doc...] with no EOS: there <bos> is what follows a document.
   */
  stopTokenIds(): number[] {
    const ids = new Set<number>();
    const add = (id: number) => {
      if (Number.isInteger(id) && id >= 0) ids.add(id);
    };
    add(this.tokenizer.eos);
    if (this.tokenizer instanceof ByteTokenizer) add(this.tokenizer.bos);
    if (this.generationConfig) for (const id of generationEosIds(this.generationConfig, 'generation_config.json')) add(id);
    for (const id of this.config.eosTokenIds ?? [this.config.eosTokenId]) add(id);
    return [...ids];
  }

  numParams(): number {
    return this.params.length;
  }

  tensorInfo(name: string): NativeTensorInfo {
    const t = this.byName.get(name);
    if (!t) throw new ArgumentError(`the model has no tensor "${name}"`);
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

  /** How this model's checkpoint tensors map onto the decoder's (identity except GPT-2). */
  tensorMappings(hfNames: readonly string[] = []): TensorMapping[] {
    return tensorMappings(this.config, this.tensors, hfNames);
  }

  /**
   * The model's tensors by checkpoint name, in the checkpoint's layout: of the parameters, or of another
   * buffer laid out like them (e.g. the gradients). Views where the layout is the decoder's, copies otherwise.
   */
  hfTensors(buffer: Float32Array = this.params): Map<string, { shape: number[]; data: Float32Array }> {
    const byName = (n: string) => {
      const t = this.tensorInfo(n);
      return buffer.subarray(t.offset, t.offset + t.numel);
    };
    return new Map(this.tensorMappings().map((m) => [m.hf, { shape: m.hfShape, data: gatherHf(m, byName) }]));
  }

  /** Tensors as safetensors entries in the checkpoint's names and layout (views of native memory where the layout is the decoder's), to be written as `dtype`. */
  weightEntries(dtype: WritableDType = 'F32'): Array<[string, WriteTensor]> {
    return [...this.hfTensors()].map(([name, t]) => [name, { dtype, shape: t.shape, data: t.data }]);
  }

  /**
   * Write the model as a Hugging Face directory, atomically: everything goes to a temporary sibling
   * directory (each file fsynced), which then replaces `dir` by rename. An interruption leaves either the
   * old directory or the new one, never a mix. Weights go to model.safetensors, or to shards with
   * model.safetensors.index.json past `opts.maxShardSize`, in `opts.dtype` (default: the loaded
   * config.json's torch_dtype). config.json is the loaded one with undo-native's fields over it; the
   * source directory's other files (generation_config.json, tokenizer_config.json, ...; see carriedFiles)
   * are copied unchanged. `extra` adds files (name → contents) to the directory.
   */
  save(dir: string, extra: Record<string, string | Buffer> = {}, opts: SaveOptions = {}): void {
    const dtype = parseTorchDType(opts.dtype ?? configDType(this.hfConfig), 'save dtype');
    const maxShardSize = parseSize(opts.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE, 'maxShardSize');
    const carried = this.sourceDir ? carriedFiles(this.sourceDir) : [];
    saveDirAtomic(dir, (tmp) => {
      writeCheckpoint(tmp, this.weightEntries(TORCH_TO_SAFETENSORS[dtype]), { maxShardSize, metadata: { format: 'pt' } });
      const hf: Json = { ...this.hfConfig, ...configToHF(this.config), torch_dtype: dtype };
      if (this.hfConfig && 'dtype' in this.hfConfig) hf.dtype = dtype;
      writeFileAtomic(path.join(tmp, 'config.json'), JSON.stringify(hf, null, 2) + '\n');
      // a model loaded without a tokenizer.json (vocab smaller than the byte tokenizer's) is saved without one
      if (this.tokenizer.vocabSize <= this.config.vocabSize) saveTokenizer(tmp, this.tokenizer);
      for (const name of carried) writeFileAtomic(path.join(tmp, name), fs.readFileSync(path.join(this.sourceDir!, name)));
      for (const [name, data] of Object.entries(extra)) writeFileAtomic(path.join(tmp, name), data);
    });
  }
}

/**
 * The tokenizer of a model directory, as Model.load reads it: undo-native's byte tokenizer, or a Hugging Face
 * tokenizer.json (specials from tokenizer_config.json, then config.json's ids); the byte tokenizer when there
 * is no tokenizer.json. `config` defaults to the directory's config.json.
 */
export function loadModelTokenizer(dir: string, config?: ModelConfig): Tokenizer {
  if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) return new ByteTokenizer();
  const cfgFile = path.join(dir, 'config.json');
  const c = config ?? configFromHF(readJson<Json>(cfgFile, 'model config', 'ERR_MODEL_CONFIG'), cfgFile);
  return loadAnyTokenizer(dir, { bos: c.bosTokenId, eos: c.eosTokenId, pad: c.padTokenId });
}

export { saveDirAtomic } from '../core/fsutil';

/**
 * Refuse a config the native decoder cannot build: an odd RoPE head dimension, or parameters and gradients that alone would not fit in this machine's memory (sizes from a
 * hostile or mistaken config.json), before the native model allocates them.
 */
export function checkAllocatable(config: ModelConfig): void {
  const sp = decoderSpec(config);
  if (!sp.learnedPositions && sp.headDim % 2 !== 0) {
    throw new Err(`the model config's head_dim is ${sp.headDim}; RoPE rotates pairs of dimensions, so it must be even`, 'head_dim defaults to hidden_size / num_attention_heads');
  }
  const n = nativeParamCount(config);
  const bytes = 2 * 4 * n;  // fp32 parameters and gradients, allocated with the model
  if (!Number.isSafeInteger(n) || bytes > os.totalmem()) {
    throw new OutOfMemoryError(`the model config asks for ${Number.isFinite(n) ? n.toLocaleString('en-US') : String(n)} parameters (${(bytes / 2 ** 30).toFixed(1)} GiB with gradients), more than this machine's ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
      `sizes: hidden_size ${config.hiddenSize}, intermediate_size ${config.intermediateSize}, num_hidden_layers ${config.numLayers}, vocab_size ${config.vocabSize}, heads ${config.numHeads}/${config.numKvHeads} × ${config.headDim}`);
  }
}
