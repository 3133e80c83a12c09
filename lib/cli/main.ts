/**
 * The command line (commander): pretrain, eval, generate, info. Each command is a thin shell over the
 * library API; errors print one clear line and exit non-zero.
 */
import { interruptSignal } from './interrupt';
import * as fs from 'fs';
import * as path from 'path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import * as cliProgress from 'cli-progress';
import { Batcher, Document, packDocuments, splitTrainVal } from '../data/datasets';
import { describeError, exitStatus, UndoError, errorClass } from '../core/errors';
import { arithmeticMetrics, evalArithmetic, evalPackedLoss, evalTextLoss } from '../train/evaluate';
import { generateText } from '../models/generate';
import { readJson } from '../core/fsutil';
import { configFromHF, Model, presetConfig, PRESETS, setDefaultComputeDtype } from '../models/model';
import { native } from '../core/native';
import { ALL_OPS, generateArithmeticCorpus, Op } from '../tasks/arithmetic';
import { biographyMetrics, builtinBiographyDocs } from '../tasks/biographies';
import { ByteTokenizer, loadAnyTokenizer, Tokenizer } from '../data/tokenizer';
import { checkpointToResume, parseStopCondition, skipLine, StopCondition, stopTest, train, TrainConfig, TrainOptions } from '../train/train';
import { documentsFrom, registerUndoCommand, registerUnlearningCommands } from './unlearn';
import { registerPateCommands } from './pate';
import { registerTeacherCommands } from './teacher';
import { registerDistillCommand } from './distill';
import { registerInfoCommand } from './info';
import { registerExportCommand } from './export';
import { registerPlanCommand } from './plan';
import { registerKnnCommands } from './knn';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

function int(name: string, min = 0) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}
function float(name: string, min = -Infinity, max = Infinity) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got "${v}"`);
    return n;
  };
}
function parseOps(v: string): Op[] {
  const ops = v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const op of ops) if (!(ALL_OPS as readonly string[]).includes(op)) throw new InvalidArgumentError(`unknown operation "${op}" (choose from ${ALL_OPS.join(',')})`);
  if (!ops.length) throw new InvalidArgumentError('--ops needs at least one operation');
  return ops as Op[];
}

/** Apply --threads / --isa / --bf16 (the first two also honoured through UNDO_THREADS / UNDO_ISA). */
function applyRuntime(opts: { threads?: number; isa?: string; bf16?: boolean }): void {
  if (opts.threads) native.setThreads(opts.threads);
  if (opts.bf16) setDefaultComputeDtype('bf16');
  if (opts.isa) {
    try {
      native.setIsa(opts.isa);
    } catch (e) {
      throw new Err(`--isa ${opts.isa}: ${(e as Error).message}`, `supported here: ${native.supportedIsas().join(', ')}`);
    }
  }
}

function runtimeOptions(cmd: Command): Command {
  return cmd
    .option('--threads <n>', 'kernel threads (default: all cores, or UNDO_THREADS)', int('--threads', 1))
    .addOption(new Option('--isa <isa>', 'force an instruction set (default: best available, or UNDO_ISA)').choices(['generic', 'avx2', 'avx512']))
    .option('--bf16', 'matmuls in bf16 with fp32 accumulation (AVX512-BF16 where the CPU has it); fp32 master weights, optimizer, norms, attention and losses');
}

function pct(x: number): string {
  return Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : 'n/a';
}

function printArithmeticTable(metrics: Record<string, number>): void {
  const rows = ALL_OPS.filter((op) => metrics[`${op}/equation`] !== undefined);
  console.log('op    equation  word_problem');
  for (const op of rows) console.log(`${op.padEnd(5)} ${pct(metrics[`${op}/equation`]).padStart(8)}  ${pct(metrics[`${op}/word_problem`]).padStart(12)}`);
  if (metrics.retain !== undefined) console.log(`retain (add, sub): ${pct(metrics.retain)}`);
  if (metrics.forget !== undefined) console.log(`forget (mul, div): ${pct(metrics.forget)}`);
}


/** Progress bar (step, loss, tokens/s, ETA) and eval lines for a training-style job. */
/** Progress bars still running: an error stops them, or their timers would keep the process alive. */
const liveBars = new Set<cliProgress.SingleBar>();

function trainingUi(steps: number, enabled: boolean) {
  const bar = enabled
    ? new cliProgress.SingleBar({
      format: 'step {value}/{total} |{bar}| loss {loss} | {tps} tok/s | ETA {eta_formatted}',
      hideCursor: true, etaBuffer: 20, stream: process.stderr, noTTYOutput: !process.stderr.isTTY, notTTYSchedule: 10000,
    }, cliProgress.Presets.shades_classic)
    : undefined;
  bar?.start(steps, 0, { loss: '-', tps: '-' });
  if (bar) liveBars.add(bar);
  const hooks: Pick<TrainOptions, 'onStep' | 'onEval' | 'signal'> = {
    signal: interruptSignal(),
    onStep: (s) => bar?.update(s.step, { loss: s.loss.toFixed(4), tps: Math.round(s.tokensPerSec) }),
    onEval: (step, m) => {
      const msg = `[eval @ ${step}] ` + Object.entries(m).map(([k, v]) => `${k}=${k.endsWith('loss') || k.startsWith('val_') || k.startsWith('mia') ? v.toFixed(4) : pct(v)}`).join(' ');
      bar?.stop();
      console.log(msg);
      if (bar && step < steps) bar.start(steps, step, { loss: '-', tps: '-' });
    },
  };
  return { hooks, stop: () => { bar?.stop(); if (bar) liveBars.delete(bar); } };
}

interface PretrainOpts {
  tokenizer?: string;
  task?: string;
  data?: string;
  ops: Op[];
  preset: string;
  config?: string;
  out: string;
  steps: number;
  batchSize: number;
  seqLen: number;
  gradAccum: number;
  lr: number;
  minLr?: number;
  warmup: number;
  schedule: 'constant' | 'linear' | 'cosine';
  weightDecay: number;
  clip: number;
  seed: number;
  evalEvery: number;
  evalPerForm: number;
  checkpointEvery: number;
  skipNonfinite: number;
  docs: number;
  wordProblems: number;
  valFraction: number;
  targetAccuracy?: number;
  stopWhen?: StopCondition;
  init: 'normal' | 'xavier';
  initStd: number;
  resume?: boolean;
  progress: boolean;
  threads?: number;
  isa?: string;
}

async function pretrain(o: PretrainOpts): Promise<void> {
  applyRuntime(o);
  if (!o.task && !o.data) o.task = 'arithmetic';
  if (o.task && o.task !== 'arithmetic' && o.task !== 'biographies') throw new Err(`unknown task "${o.task}"`, 'built-in tasks: arithmetic, biographies');
  if (o.task && o.data) throw new Err('give either --task or --data, not both');
  let tok: Tokenizer = o.tokenizer ? loadAnyTokenizer(o.tokenizer) : new ByteTokenizer();
  let model: Model;
  if (o.resume) {
    checkpointToResume(o.out, 'a pretraining');
    model = Model.load(o.out);
    tok = model.tokenizer;
  } else {
    let cfg;
    if (o.config) {
      const file = o.config;
      cfg = configFromHF(readJson<Record<string, unknown>>(file, 'model config', 'ERR_MODEL_CONFIG'), file);
      if (cfg.vocabSize < tok.vocabSize) throw new Err(`${file}: vocab_size ${cfg.vocabSize} is smaller than the ${o.tokenizer ? `tokenizer's (${o.tokenizer})` : "byte tokenizer's"} ${tok.vocabSize}`);
    } else {
      cfg = presetConfig(o.preset, tok);
    }
    model = Model.create(cfg, { seed: o.seed, init: o.init, std: o.initStd }, tok);
  }
  let docs: Document[];
  if (o.data) docs = documentsFrom(o.data, '--data', o.docs, o.seed, { tokenizer: tok });
  else if (o.task === 'biographies') docs = builtinBiographyDocs('all', o.seed);
  else docs = generateArithmeticCorpus({ ops: o.ops, count: o.docs, seed: o.seed, wordProblemFraction: o.wordProblems });
  const { train: trainDocs, val: valDocs } = splitTrainVal(docs, o.valFraction, o.seed);
  const packed = packDocuments(tok, trainDocs, o.seqLen, { seed: o.seed });
  const batcher = new Batcher(packed, { batchSize: o.batchSize, seed: o.seed });
  const valData = valDocs.length ? packDocuments(tok, valDocs.slice(0, 400), o.seqLen, { seed: o.seed }) : undefined;
  const cfg: TrainConfig = {
    steps: o.steps, gradAccum: o.gradAccum, lr: o.lr, minLr: o.minLr, warmup: o.warmup, schedule: o.schedule,
    weightDecay: o.weightDecay, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: o.clip, evalEvery: o.evalEvery,
    checkpointEvery: o.checkpointEvery, skipNonfinite: o.skipNonfinite,
  };
  console.log(`model: ${model.config.family}, ${(model.numParams() / 1e6).toFixed(2)}M parameters; data: ${packed.count} windows of ${o.seqLen} tokens; ` +
    `${native.getIsa()} kernels on ${native.getThreads()} threads`);
  const target = o.targetAccuracy;
  const stops: ((m: Record<string, number>) => boolean)[] = [];
  if (target !== undefined) stops.push((m) => o.ops.every((op) => (m[`${op}/equation`] ?? 0) >= target));
  if (o.stopWhen) {
    // the metrics evaluate() below produces (biographies: checked at the first evaluation)
    const known = o.task === 'biographies' ? undefined
      : ['val_loss', ...(o.task === 'arithmetic' ? ['retain', 'forget', ...o.ops.flatMap((op) => [`${op}/equation`, `${op}/word_problem`])] : [])];
    stops.push(stopTest(o.stopWhen, known));
  }
  const ui = trainingUi(o.steps, o.progress);
  const evaluate = async (): Promise<Record<string, number>> => {
    const m: Record<string, number> = {};
    if (valData && valData.count > 0) m.val_loss = (await evalPackedLoss(model, valData)).loss;
    if (o.task === 'arithmetic') Object.assign(m, arithmeticMetrics(await evalArithmetic(model, { ops: o.ops, perForm: o.evalPerForm })));
    if (o.task === 'biographies') Object.assign(m, await biographyMetrics(model));
    return m;
  };
  const result = await train(model, batcher, cfg, {
    outDir: o.out,
    resume: o.resume,
    meta: { kind: 'pretrain', task: o.task ?? null, data: o.data ?? null, ops: o.ops },
    onSkip: (x) => console.log(skipLine(x, o.skipNonfinite)),
    ...ui.hooks,
    evaluate,
    stopWhen: stops.length ? (m) => stops.some((f) => f(m)) : undefined,
  });
  ui.stop();
  if (result.interrupted) {
    console.log(`interrupted at step ${result.state.step}: checkpoint saved in ${o.out}; continue with --resume`);
    process.exitCode = 130;
    return;
  }
  console.log(`done: ${result.state.step} steps, ${result.state.tokens} tokens in ${result.state.elapsedSec.toFixed(1)} s; model saved in ${o.out}`);
  if (result.lastEval && o.task === 'arithmetic') printArithmeticTable(result.lastEval);
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('undo-native')
    .description('Train, distill and unlearn transformer language models on a native CPU core.')
    .version((JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }).version)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride(); // usage errors come back to main() (commander has printed them), which adds the code line

  runtimeOptions(
    program.command('pretrain')
      .description('train a model from scratch on a built-in task or a text/JSONL file')
      .option('--task <name>', 'built-in task: arithmetic (default when --data is not given) or biographies')
      .option('--data <file>', 'training data: a built-in spec (biographies:all|forget|retain, pate-bios:public|private, language:velan|kyrish|all, arithmetic:OPS), .txt paragraphs, or JSONL of {"text"}, {"prompt", "completion"} or chat {"messages"} lines (chat: loss on the assistant turns; needs a tokenizer with a chat template)')
      .option('--tokenizer <dir>', 'a Hugging Face tokenizer (a directory with tokenizer.json, or the file) for the new model instead of the byte tokenizer')
      .option('--ops <list>', 'arithmetic operations to train on', parseOps, [...ALL_OPS] as Op[])
      .addOption(new Option('--preset <name>', 'model size').choices(Object.keys(PRESETS)).default('tiny'))
      .option('--config <file>', 'a Hugging Face config.json instead of a preset')
      .requiredOption('--out <dir>', 'output model directory (checkpoints, metrics.jsonl)')
      .option('--steps <n>', 'optimizer steps', int('--steps', 1), 6000)
      .option('--batch-size <n>', 'sequences per micro-batch', int('--batch-size', 1), 16)
      .option('--seq-len <n>', 'tokens per sequence', int('--seq-len', 2), 128)
      .option('--grad-accum <n>', 'micro-batches per step', int('--grad-accum', 1), 1)
      .option('--lr <x>', 'peak learning rate', float('--lr', 0), 4e-3)
      .option('--min-lr <x>', 'final learning rate of linear/cosine decay (default lr/10)', float('--min-lr', 0))
      .option('--warmup <n>', 'linear warm-up steps', int('--warmup', 0), 100)
      .addOption(new Option('--schedule <s>', 'learning-rate schedule').choices(['constant', 'linear', 'cosine']).default('cosine'))
      .option('--weight-decay <x>', 'AdamW decoupled weight decay', float('--weight-decay', 0), 0.0)
      .option('--clip <x>', 'global-norm gradient clipping (0 = off)', float('--clip', 0), 1.0)
      .option('--seed <n>', 'seed for init, data and shuffling', int('--seed', 0), 42)
      .option('--eval-every <n>', 'evaluate every n steps (0 = only at the end)', int('--eval-every', 0), 1000)
      .option('--eval-per-form <n>', 'arithmetic eval problems per operation and form', int('--eval-per-form', 1), 100)
      .option('--checkpoint-every <n>', 'checkpoint every n steps (0 = only at the end)', int('--checkpoint-every', 0), 1000)
      .option('--skip-nonfinite <n>', 'skip up to n steps whose loss or gradient is NaN/Inf (their batches dropped) before stopping', int('--skip-nonfinite', 0), 0)
      .option('--docs <n>', 'arithmetic documents to generate', int('--docs', 1), 400000)
      .option('--word-problems <x>', 'fraction of arithmetic documents that are word problems (the UNDO paper: 0.5)', float('--word-problems', 0, 1), 0.25)
      .option('--val-fraction <x>', 'documents held out for validation loss', float('--val-fraction', 0, 0.5), 0.01)
      .option('--target-accuracy <x>', 'stop early once every op reaches this equation accuracy', float('--target-accuracy', 0, 1))
      .option('--stop-when <cond>', 'stop early once an evaluated metric meets this, e.g. val_loss<=1.1 or mul/equation>=0.95', (v: string) => parseStopCondition(v))
      .addOption(new Option('--init <scheme>', 'weight init').choices(['normal', 'xavier']).default('normal'))
      .option('--init-std <x>', 'std of the normal init', float('--init-std', 0), 0.02)
      .option('--resume', 'continue the run saved in --out')
      .option('--no-progress', 'no progress bar'),
  ).action((opts: PretrainOpts) => pretrain(opts));

  runtimeOptions(
    program.command('eval')
      .description('evaluate a model: arithmetic accuracy, or the loss of a text file')
      .requiredOption('--model <dir>', 'model directory')
      .option('--task <name>', 'built-in task: arithmetic or biographies')
      .option('--ops <list>', 'arithmetic operations', parseOps, [...ALL_OPS] as Op[])
      .option('--per-form <n>', 'problems per operation and form', int('--per-form', 1), 100)
      .option('--text-file <file>', 'report the mean per-token cross-entropy of this text')
      .option('--json', 'print JSON'),
  ).action(async (o: { model: string; task?: string; ops: Op[]; perForm: number; textFile?: string; json?: boolean; threads?: number; isa?: string }) => {
    applyRuntime(o);
    if (!o.textFile && !o.task) o.task = 'arithmetic';
    if (o.task && o.task !== 'arithmetic' && o.task !== 'biographies') throw new Err(`unknown task "${o.task}"`, 'built-in tasks: arithmetic, biographies');
    const model = Model.load(o.model);
    if (o.textFile) {
      let text: string;
      try {
        text = fs.readFileSync(o.textFile, 'utf8');
      } catch (e) {
        throw new Err(`cannot read --text-file ${o.textFile}: ${describeError(e)}`);
      }
      const r = await evalTextLoss(model, text);
      if (o.json) console.log(JSON.stringify(r));
      else console.log(`loss ${r.loss.toFixed(6)} nats/token over ${r.tokens} tokens`);
      return;
    }
    if (o.task === 'biographies') {
      const b = await biographyMetrics(model);
      console.log(o.json ? JSON.stringify(b) : Object.entries(b).map(([k, v]) => `${k}: ${v.toFixed(3)}`).join('\n'));
      return;
    }
    const metrics = arithmeticMetrics(await evalArithmetic(model, { ops: o.ops, perForm: o.perForm }));
    if (o.json) console.log(JSON.stringify(metrics));
    else printArithmeticTable(metrics);
  });

  runtimeOptions(
    program.command('generate')
      .description('continue a prompt')
      .requiredOption('--model <dir>', 'model directory')
      .requiredOption('--prompt <text>', 'prompt text (BOS is prepended)')
      .option('--max-new-tokens <n>', 'tokens to generate', int('--max-new-tokens', 1), 32)
      .option('--temperature <x>', 'sampling temperature (0 = greedy)', float('--temperature', 0), 0)
      .option('--top-k <n>', 'sample among the k most likely tokens (0 = all)', int('--top-k', 0), 0)
      .option('--top-p <x>', 'nucleus sampling mass', float('--top-p', 0, 1), 1)
      .option('--seed <n>', 'sampling seed', int('--seed', 0), 0),
  ).action(async (o: { model: string; prompt: string; maxNewTokens: number; temperature: number; topK: number; topP: number; seed: number; threads?: number; isa?: string }) => {
    applyRuntime(o);
    const model = Model.load(o.model);
    const [text] = await generateText(model, [o.prompt], { maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed });
    console.log(o.prompt + text);
  });

  const kit = { int, float, runtimeOptions, applyRuntime, trainingUi, printArithmeticTable, arithmeticMetrics };
  registerUnlearningCommands(program, kit);
  registerDistillCommand(program, kit);
  registerUndoCommand(program, kit);
  registerTeacherCommands(program, kit);
  registerKnnCommands(program, kit);
  registerPateCommands(program, kit);

  registerInfoCommand(program);
  registerExportCommand(program);
  registerPlanCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    for (const bar of liveBars) bar.stop();
    liveBars.clear();
    const status = exitStatus(e);
    if (e instanceof UndoError) {
      console.error(`error: ${e.message}`);
      if (e.hint) console.error(`hint: ${e.hint}`);
      console.error(`code: ${e.code} (exit ${status})`);
      if (process.env.UNDO_DEBUG) console.error(e.stack);
    } else if (e instanceof CommanderError) {
      // commander's own exits: --help / --version (status 0) and usage errors, which it has printed already
      if (e.exitCode !== 0) console.error('code: ERR_ARGUMENT (exit 1)');
      process.exitCode = e.exitCode === 0 ? 0 : 1;
      return;
    } else {
      console.error(`error: ${describeError(e)}`);
      console.error(`this is a bug in undo-native (exit ${status}); UNDO_DEBUG=1 shows where it happened`);
      if (process.env.UNDO_DEBUG) console.error((e as Error).stack);
    }
    process.exitCode = status;
  }
}
