/**
 * `undo-native info`: the CPU features and threads, and with --model DIR what the model directory holds
 * (architecture, parameters, dtypes, shards, tokenizer) and the estimated memory of loading it, a forward,
 * a training step and (with --teacher) a distillation step — from config.json and the safetensors headers
 * alone, without loading weights.
 */
import { Command, InvalidArgumentError } from 'commander';
import { native } from '../core/native';
import { modelInfo, ModelInfo } from '../models/info';

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be an integer >= 1, got "${v}"`);
    return n;
  };
}

/** Bytes as "1.23 GB" (powers of 1000, as the shard sizes). */
function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  let x = n;
  while (x >= 1000 && i < units.length - 1) {
    x /= 1000;
    i++;
  }
  return i === 0 ? `${n} B` : `${x.toFixed(2)} ${units[i]}`;
}

function printInfo(info: ModelInfo, teacher?: string): void {
  const arch = info.architectures.length ? ` (${info.architectures.join(', ')})` : '';
  console.log(`model: ${info.dir}`);
  console.log(`  architecture: ${info.modelType ?? 'unknown model_type'}${arch}`);
  console.log(`  parameters: ${info.parameters.toLocaleString('en-US')} (${(info.parameters / 1e6).toFixed(2)}M)`);
  const dtypes = Object.entries(info.dtypes).map(([k, v]) => `${k} (${v} tensor${v === 1 ? '' : 's'})`).join(', ');
  console.log(`  on disk: ${dtypes}; torch_dtype ${info.torchDtype ?? 'not set'}`);
  console.log(`  weights: ${info.shards.length} file${info.shards.length === 1 ? '' : 's'}${info.sharded ? ' (sharded, with index)' : ''}, ${formatBytes(info.bytes)}`);
  for (const s of info.shards) console.log(`    ${s.file}  ${formatBytes(s.bytes)}`);
  console.log(`  tokenizer.json: ${info.tokenizer ? 'yes' : 'no (the byte tokenizer is used)'}`);
  const m = info.memory;
  if (!m) {
    console.log(`  memory: no estimate (${info.memoryError})`);
    return;
  }
  console.log(`  estimated memory (float32, batch ${m.batch} × seq ${m.seq}):`);
  console.log(`    load      ${formatBytes(m.load)}`);
  console.log(`    forward   ${formatBytes(m.forward)}`);
  console.log(`    train     ${formatBytes(m.train)}  (params + grads + AdamW m, v + activations)`);
  if (m.distill !== undefined) console.log(`    distill   ${formatBytes(m.distill)}  (teacher ${teacher} + its forward + student training)`);
}

/** Register `info` on the program. */
export function registerInfoCommand(program: Command): void {
  program.command('info')
    .description('show the CPU features and threads, and what a model directory holds and needs (no weights are loaded)')
    .option('--model <dir>', 'model directory')
    .option('--batch <n>', 'batch size of the memory estimate', positiveInt('--batch'), 1)
    .option('--seq <n>', 'sequence length of the memory estimate', positiveInt('--seq'), 1024)
    .option('--teacher <dir>', 'a teacher model directory: adds the distillation estimate')
    .option('--json', 'print JSON')
    .action((o: { model?: string; batch: number; seq: number; teacher?: string; json?: boolean }) => {
      const runtime = { isa: native.getIsa(), supportedIsas: native.supportedIsas(), threads: native.getThreads(), bf16Kernel: native.bf16Native() };
      const info = o.model ? modelInfo(o.model, { batch: o.batch, seq: o.seq, teacher: o.teacher }) : undefined;
      if (o.json) {
        console.log(JSON.stringify({ ...runtime, model: info ?? null }, null, 2));
        return;
      }
      console.log(`isa: ${runtime.isa} (supported: ${runtime.supportedIsas.join(', ')}), threads: ${runtime.threads}, ` +
        `--bf16: ${runtime.bf16Kernel ? 'AVX512-BF16 kernel' : 'emulated (no AVX512-BF16 here; slower than fp32)'}`);
      if (!info) return;
      const c = info.config;
      if (c) {
        console.log(`${c.family}: ${c.numLayers} layers, d=${c.hiddenSize}, heads ${c.numHeads}/${c.numKvHeads}, ` +
          `vocab ${c.vocabSize}, ${(info.parameters / 1e6).toFixed(2)}M parameters`);
      }
      printInfo(info, o.teacher);
    });
}
