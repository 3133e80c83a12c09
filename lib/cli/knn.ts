/**
 * CLI command `knn-store` (lib/distill/knn_store.ts): `knn-store build` runs a key model over a data set and writes
 * DNKD's kNN datastore (keys = hidden states, values = next tokens, an HNSW index for large stores); `knn-store
 * info` shows and verifies one. `distill --knn-teacher STORE` (lib/cli/distill.ts) distills against it.
 */
import * as cliProgress from 'cli-progress';
import { Command, Option } from 'commander';
import { splitTrainVal } from '../data/datasets';
import { Model } from '../models/model';
import { AUTO_HNSW_ENTRIES, buildKnnStore, DEFAULT_HNSW, DEFAULT_KNN_K, KnnStore } from '../distill/knn_store';
import type { CliKit } from './unlearn';
import { documentsFrom, packed } from './unlearn';

interface BuildOpts {
  model: string; data: string; valFraction: number; seqLen: number; layer: number; index: 'auto' | 'exact' | 'hnsw';
  k: number; connectivity: number; expansionAdd: number; expansionSearch: number; batchSize: number; out: string;
  docs: number; seed: number; progress: boolean; threads?: number; isa?: string;
}

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(2)} MiB`;
}

/** One line per fact of a store: size, key model and layer, index, defaults. */
export function describeKnnStore(s: KnnStore): string[] {
  const m = s.manifest;
  const bytes = Object.values(m.files).reduce((a, f) => a + f.bytes, 0);
  const ix = m.index.kind === 'hnsw'
    ? `HNSW (usearch; M ${m.index.connectivity}, ef_construction ${m.index.expansionAdd}, ef_search ${m.index.expansionSearch}${m.index.recall !== undefined ? `; recall@${m.k} ${m.index.recall.toFixed(3)} on ${m.index.recallQueries} sampled entries` : ''})`
    : 'exact search (no index)';
  return [
    `${s.dir}: ${m.entries} entries (${m.data.windows} windows × ${m.data.seqLen}), keys of dimension ${m.dim} (float32), vocab ${m.vocab}; ${mib(bytes)} on disk`,
    `key model ${m.keyModel.source ?? '(in memory)'} (${m.keyModel.family}, sha256 ${m.keyModel.sha256.slice(0, 16)}…), block ${m.keyModel.layer}; ${ix}`,
    `teacher defaults: k = ${m.k}, τ = ${m.temperature.toPrecision(4)} (median gap d_k − d_1 of the store's own entries)`,
  ];
}

export function registerKnnCommands(program: Command, k: CliKit): void {
  const { int, float } = k;
  const knn = program.command('knn-store').description('DNKD\'s kNN datastore: build one from a model and data, or show one');
  k.runtimeOptions(
    knn.command('build')
      .description('run a key model over the data and store its hidden states (keys) and next tokens (values), with an HNSW index for large stores')
      .requiredOption('--model <dir>', 'key model directory (usually a model trained on --data)')
      .option('--data <data>', 'data: a .txt/.jsonl file, arithmetic:OPS or biographies:all|forget|retain', 'arithmetic')
      .option('--val-fraction <x>', 'documents held out exactly as `distill` holds them out (use the same value; 0 with distill --eval-data)', float('--val-fraction', 0, 0.5), 0.01)
      .option('--seq-len <n>', 'tokens per sequence (as in distill)', int('--seq-len', 2), 128)
      .option('--layer <l>', 'block whose output is the key (negative: from the end)', (v: string) => {
        const x = Number(v);
        if (!Number.isInteger(x)) throw new Error(`--layer must be an integer, got "${v}"`);
        return x;
      }, -1)
      .addOption(new Option('--index <kind>', `exact search, an HNSW index, or auto (HNSW from ${AUTO_HNSW_ENTRIES} entries)`).choices(['auto', 'exact', 'hnsw']).default('auto'))
      .option('--k <n>', 'default neighbours of the teacher', int('--k', 1), DEFAULT_KNN_K)
      .option('--connectivity <m>', 'HNSW graph degree M', int('--connectivity', 2), DEFAULT_HNSW.connectivity)
      .option('--expansion-add <ef>', 'HNSW ef at construction', int('--expansion-add', 1), DEFAULT_HNSW.expansionAdd)
      .option('--expansion-search <ef>', 'HNSW ef at search', int('--expansion-search', 1), DEFAULT_HNSW.expansionSearch)
      .option('--batch-size <n>', 'windows per key-model forward', int('--batch-size', 1), 8)
      .requiredOption('--out <dir>', 'store directory')
      .option('--docs <n>', 'documents generated for built-in data (as in distill)', int('--docs', 1), 200000)
      .option('--seed <n>', 'seed of the data generation, split and packing (as in distill)', int('--seed', 0), 0)
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: BuildOpts) => {
    k.applyRuntime(o);
    const model = Model.load(o.model);
    const docs = documentsFrom(o.data, '--data', o.docs, o.seed, { tokenizer: model.tokenizer });
    // the training part of distill's split, so that distillation on the same --data finds its rows in the store
    const train = o.valFraction > 0 ? splitTrainVal(docs, o.valFraction, o.seed).train : docs;
    const data = packed(train, model, o.seqLen, o.seed, '--data');
    const bar = o.progress
      ? new cliProgress.SingleBar({ format: '{phase} {value}/{total} |{bar}| ETA {eta_formatted}', hideCursor: true, stream: process.stderr, noTTYOutput: !process.stderr.isTTY, notTTYSchedule: 10000 }, cliProgress.Presets.shades_classic)
      : undefined;
    let started = false;
    const t0 = Date.now();
    try {
      const s = await buildKnnStore(model, data, {
        out: o.out, layer: o.layer, index: o.index, k: o.k, batchWindows: o.batchSize, source: o.model,
        hnsw: { connectivity: o.connectivity, expansionAdd: o.expansionAdd, expansionSearch: o.expansionSearch },
        onProgress: (p) => {
          if (!bar) return;
          if (!started) { bar.start(p.windows, p.windowsDone, { phase: p.phase }); started = true; } else bar.update(p.windowsDone, { phase: p.phase });
        },
      });
      if (bar && started) { bar.stop(); started = false; }
      console.log(`built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      for (const line of describeKnnStore(s)) console.log(line);
    } finally {
      if (bar && started) bar.stop();
    }
  });

  knn.command('info')
    .description('show a kNN datastore and verify its files\' sha256')
    .argument('<dir>', 'store directory')
    .action((dir: string) => {
      const s = KnnStore.open(dir, { verify: true });
      for (const line of describeKnnStore(s)) console.log(line);
      console.log('verified: every file\'s size and sha256 match the manifest');
    });
}
