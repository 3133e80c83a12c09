/**
 * CLI commands for the offline teacher store (lib/distill/teacher_store.ts): `cache-teacher` runs a teacher once over
 * a data set and stores its top-k per token; `teacher-store` shows (and verifies) a store. Registered on the
 * program by lib/cli/main.ts through registerTeacherCommands.
 */
import * as path from 'path';
import { Command } from 'commander';
import * as cliProgress from 'cli-progress';
import { packDocuments } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { Model } from '../models/model';
import { cacheTeacher, CacheTeacherResult, defaultShardWindows, openTeacherStore, teacherHashFromDir, TopKCodec } from '../distill/teacher_store';
import type { CliKit } from './unlearn';
import { documentsFrom } from './unlearn';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(bytes < 10 << 20 ? 2 : 1)} MiB`;
}

interface CacheOpts {
  teacher: string;
  data: string;
  topk: number;
  seqLen: number;
  out: string;
  shardWindows?: number;
  batchSize: number;
  docs: number;
  seed: number;
  resume?: boolean;
  progress: boolean;
  threads?: number;
  isa?: string;
}

export function registerTeacherCommands(program: Command, k: CliKit): void {
  const { int } = k;

  k.runtimeOptions(
    program.command('cache-teacher')
      .description('run a teacher once over the data and store its top-k log-probabilities and tail mass for every token ' +
        '(sharded, checksummed, resumable) for offline distillation')
      .requiredOption('--teacher <dir>', 'teacher model directory')
      .option('--data <data>', 'data: a .txt/.jsonl file or arithmetic:OPS (packed exactly as `distill` packs it)', 'arithmetic')
      .option('--topk <k>', 'ids kept per token', int('--topk', 1), 64)
      .option('--seq-len <n>', 'tokens per sequence', int('--seq-len', 2), 128)
      .requiredOption('--out <dir>', 'store directory')
      .option('--shard-windows <n>', 'windows per shard file (default: about 32 MiB per shard)', int('--shard-windows', 1))
      .option('--batch-size <n>', 'windows per teacher forward', int('--batch-size', 1), 8)
      .option('--docs <n>', 'documents generated for built-in data (as in distill)', int('--docs', 1), 200000)
      .option('--seed <n>', 'seed of the data generation and packing (as in distill)', int('--seed', 0), 0)
      .option('--resume', 'continue an interrupted store in --out (verifies its shards, recomputes bad ones)')
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: CacheOpts) => {
    k.applyRuntime(o);
    const teacher = Model.load(o.teacher);
    if (o.topk > teacher.config.vocabSize) {
      throw new Err(`--topk ${o.topk} is larger than the teacher's vocabulary (${teacher.config.vocabSize})`);
    }
    const docs = documentsFrom(o.data, '--data', o.docs, o.seed, { tokenizer: teacher.tokenizer });
    const data = packDocuments(teacher.tokenizer, docs, o.seqLen, { seed: o.seed });
    if (data.count === 0) throw new Err(`--data: not enough text for one window of ${o.seqLen + 1} tokens`);
    const recordBytes = new TopKCodec(o.topk, teacher.config.vocabSize).recordBytes;
    const shardWindows = o.shardWindows ?? defaultShardWindows(o.seqLen, recordBytes);

    const bar = o.progress
      ? new cliProgress.SingleBar({
        format: 'windows {value}/{total} |{bar}| shard {shard}/{shards} | {tps} tok/s | ETA {eta_formatted}',
        hideCursor: true, etaBuffer: 20, stream: process.stderr, noTTYOutput: !process.stderr.isTTY, notTTYSchedule: 10000,
      }, cliProgress.Presets.shades_classic)
      : undefined;
    let started = false;
    const controller = new AbortController();
    const onSigint = () => controller.abort();
    process.on('SIGINT', onSigint);
    let r: CacheTeacherResult;
    try {
      r = await cacheTeacher(teacher, data, {
        k: o.topk, out: o.out, shardWindows, batchSize: o.batchSize, resume: !!o.resume,
        teacherHash: teacherHashFromDir(o.teacher), teacherSource: path.resolve(o.teacher), signal: controller.signal,
        onLog: (msg) => {
          if (bar && started) bar.stop();
          console.log(msg);
          started = false;
        },
        onProgress: (p) => {
          if (!bar) return;
          const payload = { shard: p.shardsDone, shards: p.shards, tps: p.tokensPerSec > 0 ? Math.round(p.tokensPerSec) : '-' };
          if (!started) {
            bar.start(p.windows, p.windowsDone, payload);
            started = true;
          } else {
            bar.update(p.windowsDone, payload);
          }
        },
      });
    } finally {
      process.off('SIGINT', onSigint);
      if (bar && started) bar.stop();
    }
    const m = r.manifest;
    if (r.repaired.length) console.log(`recomputed ${r.repaired.length} missing or corrupt shard(s): ${r.repaired.join(', ')}`);
    if (r.interrupted) {
      console.log(`interrupted: ${m.shards.length} of ${m.numShards} shards written in ${o.out}; continue with --resume`);
      process.exitCode = 130;
      return;
    }
    const kept = r.shardsKept ? ` (${r.shardsKept} kept from the earlier run)` : '';
    console.log(`cached ${m.numTokens} tokens (${m.numWindows} windows × ${m.seqLen}, top-${m.k} of ${m.vocab}, ${m.numShards} shards${kept}) in ${o.out}: ` +
      `${m.bytesPerToken} bytes/token (${m.bytesPerTokenOnDisk} with shard headers), ${mib(m.diskBytes)}`);
  });

  program.command('teacher-store')
    .description('show a teacher top-k store (written by cache-teacher) and optionally verify every shard\'s checksum')
    .argument('<dir>', 'store directory')
    .option('--verify', 'verify every shard\'s size, header and sha256')
    .action((dir: string, o: { verify?: boolean }) => {
      const store = openTeacherStore(dir, { verify: o.verify ? 'open' : 'none', allowIncomplete: true });
      const m = store.manifest;
      store.close();
      console.log(`${dir}: ${m.complete ? 'complete' : `INCOMPLETE (${m.shards.length} of ${m.numShards} shards)`}; ` +
        `${m.numTokens} tokens (${m.numWindows} windows × ${m.seqLen}), top-${m.k} of vocab ${m.vocab}`);
      console.log(`encoding ${m.encoding.name}: ${m.bytesPerToken} bytes/token (${m.encoding.idBits}-bit ids, ${m.encoding.headCount} × ${m.encoding.headBits}-bit ` +
        `head deltas, ${Math.max(0, m.k - 1 - m.encoding.headCount)} × ${m.encoding.tailBits}-bit tail deltas, fp16 tail mass); ${mib(m.diskBytes)} on disk`);
      console.log(`teacher ${m.teacher.sha256.slice(0, 16)}… (${m.teacher.source}); tokenizer ${m.tokenizer.sha256.slice(0, 16)}…; data ${m.data.sha256.slice(0, 16)}…`);
      if (o.verify) console.log(`verified ${m.shards.length} shard(s): sizes, headers and sha256 match the manifest`);
    });
}
