/**
 * Models as Hugging Face directories (config.json, model.safetensors, tokenizer.json) and the Model handle over the native decoder (native/cpu/model.cc). Weights live in native
 * memory; `params` is a view of it, never a per-step copy.
 */
import * as fs from 'fs';
import * as path from 'path';
import { UndoError } from '../core/errors';
import { readJson, writeFileAtomic } from '../core/fsutil';
import { native, NativeModel, NativeTensorInfo } from '../core/native';
import { readSafetensors, writeSafetensors, WriteTensor } from '../formats/safetensors';
import { ByteTokenizer, loadAnyTokenizer, saveTokenizer, Tokenizer } from '../data/tokenizer';
import { configFromHF, configToHF, ModelConfig } from './config';

type Json = Record<string, unknown>;

export { configFromHF, configToHF, presetConfig, PRESETS } from './config';
export type { Family, ModelConfig } from './config';

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

  constructor(readonly config: ModelConfig, public tokenizer: Tokenizer = new ByteTokenizer()) {
    this.native = new native.NativeModel(config);
    this.tensors = this.native.tensors();
    for (const t of this.tensors) this.byName.set(t.name, t);
    this.params = this.native.params();
    this.grads = this.native.grads();
  }

  /** A freshly initialised model (seeded; identical for every thread count). */
  static create(config: ModelConfig, opts: InitOptions = {}, tokenizer?: Tokenizer): Model {
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
    const tokenizer = loadModelTokenizer(dir, config);
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

/**
 * The tokenizer of a model directory, as Model.load reads it: undo-native's byte tokenizer, or a Hugging Face
 * tokenizer.json (specials from tokenizer_config.json, then config.json's ids); the byte tokenizer when there
 * is no tokenizer.json. `config` defaults to the directory's config.json.
 */
export function loadModelTokenizer(dir: string, config?: ModelConfig): Tokenizer {
  if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) return new ByteTokenizer();
  const cfgFile = path.join(dir, 'config.json');
  const c = config ?? configFromHF(readJson<Json>(cfgFile, 'model config'), cfgFile);
  return loadAnyTokenizer(dir, { bos: c.bosTokenId, eos: c.eosTokenId, pad: c.padTokenId });
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
