/**
 * `npm run bench`: every benchmark side by side, JSON on stdout (progress on stderr).
 * `npm run bench -- matmul attention` runs a subset.
 */
import { native } from '../lib/core/native';
import { torchBlas, torchPython } from './common';
import { benchTrainStep } from './train_step';

type Bench = () => Promise<object>;

async function main(): Promise<void> {
  const all: Record<string, Bench> = {
    matmul: async () => (await import('./matmul')).benchMatmul(),
    attention: async () => (await import('./attention')).benchAttention(),
    train_step: () => benchTrainStep(),
    losses: async () => (await import('./losses')).benchLosses(),
    fused_head: async () => (await import('./fused_head')).benchFusedHead(),
    pate: async () => (await import('./pate')).benchPate(),
    real_size: async () => (await import('./real_size')).benchRealSize({ quick: process.argv.includes('--quick') }),
  };
  const want = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const names = want.length ? want : Object.keys(all);
  const out: Record<string, unknown> = {
    date: new Date().toISOString(), isa: native.getIsa(), threads: native.getThreads(),
    pytorch: torchPython() ? { python: torchPython(), blas: torchBlas() } : 'absent (apt-get install python3-torch libopenblas0-pthread)',
  };
  for (const n of names) {
    if (!all[n]) throw new Error(`unknown benchmark "${n}" (have: ${Object.keys(all).join(', ')})`);
    process.stderr.write(`bench ${n}...\n`);
    out[n] = await all[n]();
  }
  console.log(JSON.stringify(out, null, 2));
}

main().catch((e) => {
  console.error(`error: ${(e as Error).message}`);
  process.exitCode = 1;
});
