/**
 * llama.cpp as the oracle of the GGUF export, through node-llama-cpp (a devDependency pinned at 3.21.1, its
 * prebuilt CPU binaries; ESM-only, so it is imported dynamically). Whether it loads here is probed once in a
 * child process, synchronously, so the test files can register skipped tests (with the reason) instead.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { ROOT } from '../helpers';

const ENTRY = path.join(ROOT, 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
const OPTIONS = { gpu: false, build: 'never', usePrebuiltBinaries: true, progressLogs: false, logLevel: 'error' } as const;

// eslint-disable-next-line @typescript-eslint/no-implied-eval
const dynamicImport = new Function('s', 'return import(s)') as (s: string) => Promise<any>;

let probed: { ok: boolean; reason: string } | undefined;

/** Whether node-llama-cpp's prebuilt llama.cpp loads on this machine (and why not). */
export function llamaCppStatus(): { ok: boolean; reason: string } {
  if (probed) return probed;
  const script = `import(${JSON.stringify(ENTRY)}).then(async (m) => { const l = await m.getLlama(${JSON.stringify(OPTIONS)}); ` +
    `console.log('ok ' + l.cpuMathCores); await l.dispose(); }).catch((e) => { console.log('fail ' + (e && e.message || e)); })`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 });
  const out = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  probed = out.startsWith('ok ')
    ? { ok: true, reason: '' }
    : { ok: false, reason: out.startsWith('fail ') ? out.slice(5) : `probe exited ${r.status}${r.error ? `: ${r.error.message}` : ''} ${(r.stderr ?? '').slice(0, 300)}` };
  return probed;
}

let llamaPromise: Promise<any> | undefined;

async function llama(): Promise<any> {
  llamaPromise ??= dynamicImport(ENTRY).then((m) => m.getLlama(OPTIONS));
  return llamaPromise;
}

export interface LlamaCppRun {
  /** llama.cpp's greedy next token after every prefix of each prompt (teacher-forced: one batch per prompt) */
  next: number[][];
  /** llama.cpp's greedy continuation of each prompt */
  greedy: number[][];
  /** llama.cpp's tokenization of each text (no special tokens added) */
  tokens: number[][];
  /** the file's metadata as node-llama-cpp reads it */
  metadata: Record<string, any>;
  /** llama.cpp's vocabulary size */
  nVocab: number;
}

/**
 * Load `file` in llama.cpp (CPU, 2 threads, F32 KV cache and no flash attention, so f32 files compute in
 * f32 throughout) and run greedy decoding on token-id prompts.
 */
export async function runLlamaCpp(file: string, prompts: number[][], newTokens: number, texts: string[] = []): Promise<LlamaCppRun> {
  const l = await llama();
  const model = await l.loadModel({ modelPath: file });
  try {
    const longest = Math.max(...prompts.map((p) => p.length)) + newTokens;
    const ctx = await model.createContext({
      contextSize: Math.max(64, longest), threads: 2, batchSize: Math.max(64, longest), flashAttention: false,
      experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32',
    });
    const seq = ctx.getSequence();
    const greedyOpts = { generateNext: { token: true, options: { temperature: 0 } } };
    const next: number[][] = [];
    const greedy: number[][] = [];
    for (const p of prompts) {
      await seq.clearHistory();
      const res = await seq.controlledEvaluate(p.map((t) => [t, greedyOpts]));
      next.push(p.map((_, i) => Number(res[i]?.next?.token ?? -1)));
      await seq.clearHistory();
      const gen: number[] = [];
      let out = await seq.controlledEvaluate(p.map((t, i) => (i === p.length - 1 ? [t, greedyOpts] : t)));
      for (let k = 0; k < newTokens; k++) {
        const tok = Number(out[out.length - 1]?.next?.token ?? -1);
        gen.push(tok);
        if (k === newTokens - 1) break;
        out = await seq.controlledEvaluate([[tok, greedyOpts]]);
      }
      greedy.push(gen);
    }
    const tokens = texts.map((t) => Array.from(model.tokenize(t, false) as number[], Number));
    await ctx.dispose();
    return { next, greedy, tokens, metadata: model.fileInfo.metadata, nVocab: model.fileInsights?.vocabularySize ?? model.tokens?.length ?? -1 };
  } finally {
    await model.dispose();
  }
}

/** Release llama.cpp (call at the end of the file). */
export async function disposeLlamaCpp(): Promise<void> {
  if (!llamaPromise) return;
  const l = await llamaPromise;
  llamaPromise = undefined;
  await l.dispose();
}
