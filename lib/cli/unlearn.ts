/**
 * CLI commands for the unlearning side: noise, unlearn, relearn, undo (distill is in lib/cli/distill.ts). Registered on the program by
 * lib/cli/main.ts; each is a thin shell over lib/unlearn/noise.ts, lib/unlearn/unlearn.ts, lib/distill/distill.ts and lib/unlearn/relearn.ts.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { Batcher, Document, documentText, packDocuments, PackedDataset } from '../data/datasets';
import { loadDataFile } from '../data/chat';
import type { Tokenizer } from '../data/tokenizer';
import { distill } from '../distill/distill';
import { UndoError, errorClass } from '../core/errors';
import { evalArithmetic } from '../train/evaluate';
import { Model } from '../models/model';
import { noiseModel, projectToDistribution } from '../unlearn/noise';
import { PAPER_RELEARN_LRS, relearn } from '../unlearn/relearn';
import { ALL_OPS, FORGET_OPS, generateArithmeticCorpus, Op } from '../tasks/arithmetic';
import { languageDocs, parseLanguageSpec } from '../tasks/languages';
import { biographyMetrics, builtinBiographyDocs, builtinBiographyNames, pateBiographyDocs } from '../tasks/biographies';
import { TrainConfig, TrainOptions } from '../train/train';
import { CAUSAL_DEFAULT_REPLACEMENTS, CausalOptions, isWordChar, parseMethod, unlearn, UNLEARN_DEFAULTS, UNLEARN_METHODS } from '../unlearn/unlearn';
import { arithmeticScores, defaultStudyOut, retainStop, runArms, runSeeds, runStudy, StudyConfig, StudyInterrupted, StudyOptions, StudyReport, STUDIES } from '../undo/study';
import { dataTask } from '../undo/tasks';
import { aggregateMarkdown, reportMarkdown } from '../undo/report';
import { checkCompatible } from '../distill/distill';
import { teacherHashFromDir } from '../distill/teacher_store';
import * as path from 'path';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export interface CliKit {
  int: (name: string, min?: number) => (v: string) => number;
  float: (name: string, min?: number, max?: number) => (v: string) => number;
  runtimeOptions: (cmd: Command) => Command;
  applyRuntime: (o: { threads?: number; isa?: string; bf16?: boolean }) => void;
  trainingUi: (steps: number, enabled: boolean) => { hooks: Pick<TrainOptions, 'onStep' | 'onEval' | 'signal'>; stop: () => void };
  printArithmeticTable: (m: Record<string, number>) => void;
  arithmeticMetrics: (s: Awaited<ReturnType<typeof evalArithmetic>>) => Record<string, number>;
}

/** Options of {@link documentsFrom}. */
export interface DataSpecOptions {
  /** The model's tokenizer: chat and prompt/completion files are rendered and tokenised with it. */
  tokenizer?: Tokenizer;
  /** Fraction of word problems in generated arithmetic (default 0.25). */
  wordProblems?: number;
}

/**
 * Documents from a data spec: `arithmetic:add,sub` (the built-in task with those operations),
 * `biographies:forget|retain|all`, `language:velan|kyrish|all` (the generated languages), or a file: .txt paragraphs, or JSONL whose lines are chat
 * ({"messages"}), prompt/completion or text records (lib/data/chat.ts loadDataFile; chat and
 * prompt/completion need `opts.tokenizer` and become loss-masked TokenDocuments).
 */
export function documentsFrom(spec: string, what: string, count: number, seed: number, opts: DataSpecOptions = {}): Document[] {
  if (spec.startsWith('biographies')) {
    const part = spec.includes(':') ? spec.slice(spec.indexOf(':') + 1) : 'all';
    if (part !== 'all' && part !== 'forget' && part !== 'retain') throw new Err(`${what} "${spec}": choose biographies:all, biographies:forget or biographies:retain`);
    return builtinBiographyDocs(part, seed);
  }
  if (spec.startsWith('pate-bios')) {
    const part = spec.slice('pate-bios'.length + 1);
    if (part !== 'public' && part !== 'private') throw new Err(`${what} "${spec}": choose pate-bios:public or pate-bios:private`);
    return pateBiographyDocs(part, seed);
  }
  if (spec === 'language' || spec.startsWith('language:')) return languageDocs(parseLanguageSpec(spec, what), count, seed);
  if (spec.startsWith('arithmetic')) {
    const list = spec.includes(':') ? spec.slice(spec.indexOf(':') + 1).split(',').filter(Boolean) : [...ALL_OPS];
    for (const op of list) if (!(ALL_OPS as readonly string[]).includes(op)) throw new Err(`${what} "${spec}": unknown operation "${op}"`, `operations: ${ALL_OPS.join(',')}`);
    return generateArithmeticCorpus({ ops: list as Op[], count, seed, wordProblemFraction: opts.wordProblems ?? 0.25 });
  }
  const docs = loadDataFile(spec, opts.tokenizer);
  if (!docs.length) throw new Err(`${what} ${spec} holds no documents`);
  return docs;
}

/** Packs documents for a model; too little text for one window is a clear error naming the option. */
export function packed(docs: readonly Document[], model: Model, seqLen: number, seed: number, what: string): PackedDataset {
  const p = packDocuments(model.tokenizer, docs, seqLen, { seed });
  if (p.count === 0) throw new Err(`${what}: not enough text for one window of ${seqLen + 1} tokens`);
  return p;
}

function optimCfg(o: { steps: number; lr: number; warmup: number; clip: number; weightDecay?: number; evalEvery?: number; schedule?: string; minLr?: number }): TrainConfig {
  return {
    steps: o.steps, gradAccum: 1, lr: o.lr, minLr: o.minLr, warmup: o.warmup, schedule: (o.schedule ?? 'constant') as TrainConfig['schedule'],
    weightDecay: o.weightDecay ?? 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: o.clip, evalEvery: o.evalEvery ?? 0, checkpointEvery: 0,
  };
}

/** The part of a biographies data spec ('biographies' alone is 'all'), or null for other data. */
function biographiesPart(spec: string): 'all' | 'forget' | 'retain' | null {
  if (!spec.startsWith('biographies')) return null;
  const part = spec.includes(':') ? spec.slice(spec.indexOf(':') + 1) : 'all';
  return part === 'forget' || part === 'retain' || part === 'all' ? part : null;
}

/**
 * The target entities of --method causal: --entity names (repeatable, comma-separated), or for the built-in
 * biographies data the people of the forget split. Every name must occur in some forget document.
 */
export function causalEntities(forgetSpec: string, entity: readonly string[], fdocs: readonly string[]): string[] {
  const part = biographiesPart(forgetSpec);
  const names = entity.length ? [...entity] : part ? builtinBiographyNames(part) : [];
  if (!names.length) {
    throw new Err('--method causal needs the target entity: --entity NAME (repeatable or comma-separated)',
      'the built-in biographies data (--forget biographies:forget) derives the names from its forget split');
  }
  // the boundary rule of findMentions (lib/unlearn/causal.ts)
  const wordAt = (d: string, i: number) => i >= 0 && i < d.length && isWordChar(d[i]);
  const occurs = (name: string) => fdocs.some((d) => {
    for (let i = d.indexOf(name); i >= 0; i = d.indexOf(name, i + 1)) if (!wordAt(d, i - 1) && !wordAt(d, i + name.length)) return true;
    return false;
  });
  const missing = names.filter((n) => !occurs(n));
  if (missing.length) {
    throw new Err(`--entity ${missing.map((m) => JSON.stringify(m)).join(', ')}: not found in any --forget text (${forgetSpec})`,
      'names are matched exactly: case-sensitive, as whole words');
  }
  return names;
}

function checkUnit(name: string, v: number): number {
  if (!(v >= 0 && v <= 1)) throw new Err(`${name} must be in [0, 1], got ${v}`);
  return v;
}

export function registerUnlearningCommands(program: Command, k: CliKit): void {
  const { int, float } = k;

  k.runtimeOptions(
    program.command('noise')
      .description('UNDO\'s noise step: θ ← (1−α)θ + αβN for every matrix (N Xavier-uniform), vectors shrunk by (1−α)')
      .requiredOption('--model <dir>', 'model directory')
      .requiredOption('--alpha <a>', 'interpolation weight α in [0, 1]', float('--alpha'))
      .option('--beta <b>', 'noise scale β in [0, 1]', float('--beta'), 0.1)
      .addOption(new Option('--dist <d>', 'noise distribution').choices(['xavier', 'normal']).default('xavier'))
      .option('--seed <n>', 'noise seed (Philox, keyed by tensor name)', int('--seed', 0), 0)
      .requiredOption('--out <dir>', 'output model directory'),
  ).action(async (o: { model: string; alpha: number; beta: number; dist: 'xavier' | 'normal'; seed: number; out: string; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    checkUnit('--alpha', o.alpha);
    checkUnit('--beta', o.beta);
    const m = Model.load(o.model);
    await noiseModel(m, { alpha: o.alpha, beta: o.beta, seed: o.seed, dist: o.dist });
    m.save(o.out);
    console.log(`noised (α=${o.alpha}, β=${o.beta}, ${o.dist}, seed ${o.seed}) → ${o.out}`);
  });

  k.runtimeOptions(
    program.command('project')
      .description('distribution-constrained projection: move every weight matrix toward a target distribution by rank/quantile matching with step η')
      .requiredOption('--model <dir>', 'model directory')
      .requiredOption('--eta <x>', 'step η in [0, 1] (1 = exactly the target quantiles, rank order kept)', float('--eta'))
      .addOption(new Option('--target <dist>', 'target distribution').choices(['normal', 'uniform']).default('uniform'))
      .option('--std <x>', 'target std (default: each matrix\'s Xavier std)', float('--std', 0))
      .requiredOption('--out <dir>', 'output model directory'),
  ).action(async (o: { model: string; eta: number; target: 'normal' | 'uniform'; std?: number; out: string; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    checkUnit('--eta', o.eta);
    const m = Model.load(o.model);
    await projectToDistribution(m, { eta: o.eta, target: o.target, std: o.std });
    m.save(o.out);
    console.log(`projected (η=${o.eta}, ${o.target}) → ${o.out}`);
  });

  k.runtimeOptions(
    program.command('unlearn')
      .description('unlearn the forget data: gradascent, graddiff, npo, simnpo, maxent (UNDO\'s default teacher), repnoise (MaxEnt + representation noising), rmu, whp (Who\'s Harry Potter) or causal (causal intervention, Revisiting WHP: distil the original model averaged over counterfactual rewrites that rename the target)')
      .addOption(new Option('--method <m>', 'unlearning method').choices([...UNLEARN_METHODS]).default('maxent'))
      .requiredOption('--model <dir>', 'model to unlearn')
      .option('--forget <data>', 'forget data: a .txt/.jsonl file, arithmetic:OPS or biographies:forget|retain|all', 'arithmetic:mul,div')
      .option('--retain <data>', 'retain data: a .txt/.jsonl file, arithmetic:OPS or biographies:forget|retain|all', 'arithmetic:add,sub')
      .requiredOption('--out <dir>', 'output model directory')
      .option('--steps <n>', 'optimizer steps (default: tuned per method for the tiny preset)', int('--steps', 1))
      .option('--lr <x>', 'learning rate, constant (default: tuned per method)', float('--lr', 0))
      .option('--batch-size <n>', 'sequences per forget (and retain) batch', int('--batch-size', 1), 16)
      .option('--seq-len <n>', 'tokens per sequence', int('--seq-len', 2), 128)
      .option('--retain-weight <x>', 'weight of the retain loss (default: tuned per method)', float('--retain-weight', 0))
      .option('--beta <x>', 'NPO / SimNPO β', float('--beta', 0))
      .option('--rmu-layer <n>', 'RMU: steered layer (default 2/3 of depth)', int('--rmu-layer', 0))
      .option('--rmu-c <x>', 'RMU: steering coefficient c', float('--rmu-c', 0), 6)
      .option('--rep-alpha <x>', 'RepNoise: weight α of −log(1 + forget CE)', float('--rep-alpha', 0))
      .option('--rep-beta <x>', 'RepNoise: weight β of the noise (MMD to N(0, I)) term on every layer\'s forget representations', float('--rep-beta', 0))
      .option('--entity <name>', 'causal: a target entity to forget, matched as a whole word (repeatable or comma-separated; default for biographies data: the people of the forget split)',
        (v: string, prev: string[] | undefined) => [...(prev ?? []), ...v.split(',').map((x) => x.trim()).filter(Boolean)])
      .option('--replacements <n>', `causal: N counterfactual rewrites averaged by the teacher (paper: 20; default ${CAUSAL_DEFAULT_REPLACEMENTS})`, int('--replacements', 1))
      .option('--counterfactual-prompt', 'causal: start each rewrite with "Complete the following passage about {replacement}."')
      .option('--name-back', 'causal: where most teachers predict their replacement name, move that mass back onto the target\'s own name')
      .option('--clip <x>', 'gradient clipping', float('--clip', 0), 1)
      .option('--sam <rho>', 'wrap the method in SAM with radius ρ (0 = off)', float('--sam', 0), 0)
      .option('--docs <n>', 'documents generated per built-in data set', int('--docs', 1), 20000)
      .option('--seed <n>', 'seed', int('--seed', 0), 0)
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: { method: string; model: string; forget: string; retain: string; out: string; steps?: number; lr?: number; batchSize: number; seqLen: number; retainWeight?: number; beta?: number; rmuLayer?: number; rmuC: number; repAlpha?: number; repBeta?: number; entity?: string[]; replacements?: number; counterfactualPrompt?: boolean; nameBack?: boolean; clip: number; sam: number; docs: number; seed: number; progress: boolean; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    const method = parseMethod(o.method);
    o.entity = o.entity ?? [];
    if (method !== 'causal') {
      const stray = [o.entity.length ? '--entity' : '', o.replacements !== undefined ? '--replacements' : '', o.counterfactualPrompt ? '--counterfactual-prompt' : '', o.nameBack ? '--name-back' : ''].filter(Boolean);
      if (stray.length) throw new Err(`${stray.join(', ')} only ${stray.length === 1 ? 'applies' : 'apply'} to --method causal (got --method ${method})`);
    }
    const tuned = UNLEARN_DEFAULTS[method];
    o.steps = o.steps ?? tuned.steps;
    o.lr = o.lr ?? tuned.lr;
    o.retainWeight = o.retainWeight ?? tuned.retainWeight;
    if (o.forget === o.retain) throw new Err(`--forget and --retain are the same data (${o.forget})`);
    const model = Model.load(o.model);
    const fdocs = documentsFrom(o.forget, '--forget', o.docs, o.seed + 1, { tokenizer: model.tokenizer });
    const rdocs = documentsFrom(o.retain, '--retain', o.docs, o.seed + 2, { tokenizer: model.tokenizer });
    const fset = new Set(fdocs.map(documentText));
    if (rdocs.length === fdocs.length && rdocs.every((d) => fset.has(documentText(d)))) throw new Err('--forget and --retain hold the same documents');
    let causal: CausalOptions | undefined;
    if (method === 'causal') causal = { entities: causalEntities(o.forget, o.entity, fdocs.map(documentText)), replacements: o.replacements, counterfactualPrompt: !!o.counterfactualPrompt, nameBack: !!o.nameBack };
    const forget = new Batcher(packed(fdocs, model, o.seqLen, o.seed, '--forget'), { batchSize: o.batchSize, seed: o.seed });
    const retain = new Batcher(packed(rdocs, model, o.seqLen, o.seed, '--retain'), { batchSize: o.batchSize, seed: o.seed + 1 });
    const params: Record<string, number> = { seed: o.seed, rmuC: o.rmuC };
    if (o.retainWeight !== undefined) params.retainWeight = o.retainWeight;
    if (o.beta !== undefined) params.beta = o.beta;
    if (o.rmuLayer !== undefined) params.rmuLayer = o.rmuLayer;
    if (o.repAlpha !== undefined) params.repAlpha = o.repAlpha;
    if (o.repBeta !== undefined) params.repBeta = o.repBeta;
    const ui = k.trainingUi(o.steps, o.progress);
    if (causal) console.log(`causal: forgetting ${causal.entities.map((e) => JSON.stringify(e)).join(', ')} with ${causal.replacements ?? CAUSAL_DEFAULT_REPLACEMENTS} counterfactual rewrites` +
      `${causal.counterfactualPrompt ? ', counterfactual prompt' : ''}${causal.nameBack ? ', name-back' : ''}`);
    const r = await unlearn(model, forget, retain, optimCfg({ ...o, steps: o.steps, lr: o.lr, warmup: 0 }), { method, params, sam: o.sam, causal, ...ui.hooks, outDir: o.out });
    ui.stop();
    console.log(`${method}: ${r.state.step} steps; model saved in ${o.out}`);
    if (o.forget.startsWith('arithmetic') || o.retain.startsWith('arithmetic')) k.printArithmeticTable(k.arithmeticMetrics(await evalArithmetic(model)));
    if (o.forget.startsWith('biographies')) console.log(JSON.stringify(await biographyMetrics(model)));
  });

  k.runtimeOptions(
    program.command('relearn')
      .description('relearning attack: fine-tune with cross-entropy over a learning-rate sweep, report the attacker\'s best curve')
      .requiredOption('--model <dir>', 'model to attack')
      .option('--data <data>', 'attack data: a .txt/.jsonl file or arithmetic:OPS', 'arithmetic:mul,div')
      .option('--lrs <list>', 'learning rates, comma-separated, or "paper" for the UNDO paper\'s 10 (1e-3 … 1e-6)', lrList('--lrs'), [3e-3, 1e-3, 3e-4, 1e-4])
      .option('--steps <n>', 'fine-tuning steps per learning rate', int('--steps', 1), 100)
      .option('--eval-every <n>', 'evaluate every n steps', int('--eval-every', 1), 20)
      .option('--batch-size <n>', 'sequences per batch', int('--batch-size', 1), 16)
      .option('--seq-len <n>', 'tokens per sequence', int('--seq-len', 2), 128)
      .option('--docs <n>', 'documents generated for built-in data', int('--docs', 1), 20000)
      .option('--seed <n>', 'seed', int('--seed', 0), 42)
      .option('--json', 'print JSON'),
  ).action(async (o: { model: string; data: string; lrs: number[]; steps: number; evalEvery: number; batchSize: number; seqLen: number; docs: number; seed: number; json?: boolean; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    const model = Model.load(o.model);
    const docs = documentsFrom(o.data, '--data', o.docs, o.seed, { tokenizer: model.tokenizer });
    const ops = o.data.startsWith('arithmetic:') ? (o.data.slice(11).split(',') as Op[]) : [...FORGET_OPS];
    const metric = async (m: Model) => {
      const s = await evalArithmetic(m, { ops, perForm: 50 });
      const vals = ops.map((op) => s.perOp[op].all);
      return vals.reduce((a, b) => a + b, 0) / vals.length;
    };
    const r = await relearn(model, packed(docs, model, o.seqLen, o.seed, '--data'), {
      lrs: o.lrs, steps: o.steps, evalEvery: o.evalEvery, batchSize: o.batchSize, seed: o.seed, metric,
      onCurve: o.json ? undefined : (lr, pts) => console.log(`lr ${lr}: ` + pts.map((p) => `${p.step}:${(100 * p.value).toFixed(1)}%`).join(' ')),
    });
    if (o.json) console.log(JSON.stringify(r));
    else console.log('attacker best: ' + r.best.map((p) => `${p.step}:${(100 * p.value).toFixed(1)}%`).join(' '));
  });
}

/** A comma-separated list of numbers, each checked by `check` (an InvalidArgumentError naming the option otherwise). */
function numberList(name: string, check: (n: number) => boolean, what: string) {
  return (v: string) => {
    const xs = v.split(',').map((x) => x.trim()).filter(Boolean).map((x) => {
      const n = Number(x);
      if (!check(n)) throw new InvalidArgumentError(`${name}: "${x}" is not ${what}`);
      return n;
    });
    if (!xs.length) throw new InvalidArgumentError(`${name}: give at least one value`);
    return xs;
  };
}

/** Learning rates for an attack: a comma-separated list of positive numbers, or "paper" for the UNDO paper's sweep. */
function lrList(name: string) {
  const list = numberList(name, (n) => n > 0, 'a positive number');
  return (v: string) => (v.trim() === 'paper' ? [...PAPER_RELEARN_LRS] : list(v));
}

interface UndoCliOptions {
  preset: string; teacher?: string; model?: string; forget?: string; retain?: string; method: string; sam: number; oracle?: string;
  distillData: string; fullDistill?: boolean; data: string; alpha: number[]; beta: number; steps?: number; lr?: number; evalEvery: number;
  unlearnSteps?: number; unlearnLr?: number; retainWeight?: number; attackLrs: number[]; attackSteps: number; attackEvalEvery: number; attackSeed?: number;
  seqLen: number; batchSize: number; docs: number; tolerance: number; seed: number; seeds?: number[]; out?: string; cache?: string; progress: boolean;
  threads?: number; isa?: string;
}

export function registerUndoCommand(program: Command, k: CliKit): void {
  const { int, float } = k;
  k.runtimeOptions(
    program.command('undo')
      .description('UNDO: unlearn → noise → distill, then the relearning attack on every model. With no arguments, a quick study on the built-in arithmetic task; ' +
        '--preset arithmetic runs the whole study; --model DIR --forget F --retain R runs it on your own model and data; --teacher DIR distills an unlearned model into its noised copy')
      .addOption(new Option('--preset <name>', 'built-in study to run').choices(Object.keys(STUDIES)).default('quick'))
      .option('--model <dir>', 'your model: unlearn --forget (keeping --retain), noise, distill, attack, and report against unlearn-only')
      .option('--forget <data>', 'with --model: the forget data (.txt, .jsonl text / prompt-completion / chat, or a built-in spec)')
      .option('--retain <data>', 'with --model: the retain data (same forms)')
      .addOption(new Option('--method <m>', 'with --model: the unlearning method (the UNDO teacher)').choices([...UNLEARN_METHODS].filter((m) => m !== 'causal')).default('maxent'))
      .option('--sam <rho>', 'with --model: wrap the unlearning in SAM with radius ρ (0 = off)', float('--sam', 0), 0)
      .option('--oracle <dir>', 'with --model: a model trained without the forget data (adds the oracle row and robustness)')
      .option('--distill-data <data>', 'with --model: what UNDO distills on: mixture (forget + retain, the paper), retain, or a data file / spec', 'mixture')
      .option('--full-distill', 'with --model: also distill the unlearned model into a random-init student (the paper\'s unlearn-and-distill arm)')
      .option('--teacher <dir>', 'an unlearned model: run only noise → distill on it')
      .option('--data <data>', 'with --teacher: the pretraining mixture (file or arithmetic:OPS)', 'arithmetic')
      .option('--alpha <list>', 'noise α (with --model: comma-separated, one UNDO arm each)', numberList('--alpha', (n) => n >= 0 && n <= 1, 'in [0, 1]'), [0.6])
      .option('--beta <b>', 'noise β', float('--beta', 0, 1), 0.1)
      .option('--steps <n>', 'with --teacher / --model: maximum distillation steps (default 2000 / 1000)', int('--steps', 1))
      .option('--lr <x>', 'with --teacher / --model: peak distillation learning rate (cosine)', float('--lr', 0))
      .option('--eval-every <n>', 'with --model: evaluate the retain loss (and maybe stop) every n distillation steps', int('--eval-every', 1), 50)
      .option('--unlearn-steps <n>', 'with --model: unlearning steps (default: the method\'s tuned default)', int('--unlearn-steps', 1))
      .option('--unlearn-lr <x>', 'with --model: unlearning learning rate (default: the method\'s tuned default)', float('--unlearn-lr', 0))
      .option('--retain-weight <x>', 'with --model: the method\'s retain-loss weight (default: tuned)', float('--retain-weight', 0))
      .option('--attack-lrs <list>', 'the attacker\'s learning-rate sweep, or "paper" for the paper\'s 10 (1e-3 … 1e-6); overrides a preset\'s',
        lrList('--attack-lrs'), [1e-3, 3e-4, 1e-4])
      .option('--attack-steps <n>', 'fine-tuning steps per attack learning rate (the paper: 500); overrides a preset\'s', int('--attack-steps', 1), 100)
      .option('--attack-eval-every <n>', 'evaluate the forget score every n attack steps; overrides a preset\'s', int('--attack-eval-every', 1), 20)
      .option('--attack-seed <n>', 'the attack\'s own seed (default: the study seed)', int('--attack-seed', 0))
      .option('--seq-len <n>', 'with --model: tokens per sequence', int('--seq-len', 2), 128)
      .option('--batch-size <n>', 'with --model: sequences per batch', int('--batch-size', 1), 16)
      .option('--docs <n>', 'with --model: documents generated for built-in data specs', int('--docs', 1), 20000)
      .option('--tolerance <x>', 'stop distilling when retain is back within this of the teacher\'s (accuracy: absolute; loss: relative)', float('--tolerance', 0, 1), 0.05)
      .option('--seed <n>', 'seed', int('--seed', 0), 42)
      .option('--seeds <list>', 'run the study once per seed (each arm reruns; pretraining is shared) and report mean ± sd with error bars',
        numberList('--seeds', (n) => Number.isSafeInteger(n) && n >= 0, 'a non-negative integer'))
      .option('--out <dir>', 'output directory (default runs/undo-<preset>, runs/undo-model with --model)')
      .option('--cache <dir>', 'where pretrained models are cached (default .undo-cache or UNDO_CACHE)')
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: UndoCliOptions, cmd: Command) => {
    k.applyRuntime(o);
    const given = (name: string) => cmd.getOptionValueSource(name) === 'cli';
    if (o.teacher) return undoTeacher(o, k);
    const ac = new AbortController();
    const onSigint = () => ac.abort();
    process.on('SIGINT', onSigint);
    const seeds = o.seeds ?? [o.seed];
    const hooks = (_stage: string, steps: number) => k.trainingUi(steps, o.progress);
    try {
      let out: string;
      let run: (seed: number, dir: string) => Promise<StudyReport>;
      if (o.model) {
        out = o.out ?? defaultStudyOut('model');
        run = userStudy(o, hooks, ac.signal);
      } else {
        const stray = ['forget', 'retain', 'oracle', 'fullDistill'].filter((f) => (o as unknown as Record<string, unknown>)[f] !== undefined);
        if (stray.length) throw new Err(`--${stray.map((f) => f.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())).join(', --')} need${stray.length === 1 ? 's' : ''} --model (your own model and data)`);
        const preset = STUDIES[o.preset];
        // attack options given on the command line replace the preset's attack (budgets: the preset's that fit, and the last step)
        const steps = given('attackSteps') ? o.attackSteps : preset.relearn.steps;
        const study: StudyConfig = { ...preset, relearn: {
          ...preset.relearn, steps, lrs: given('attackLrs') ? o.attackLrs : preset.relearn.lrs, evalEvery: given('attackEvalEvery') ? o.attackEvalEvery : preset.relearn.evalEvery,
          budgets: [...new Set([...preset.relearn.budgets.filter((b) => b < steps), steps])],
        } };
        out = o.out ?? defaultStudyOut(study.name);
        run = (seed, dir) => runStudy({ ...study, seed, relearn: { ...study.relearn, seed: o.attackSeed ?? seed } },
          { outDir: dir, cacheDir: o.cache, log: (m) => console.log(m), hooks, signal: ac.signal });
      }
      const { reports, aggregate } = await runSeeds(seeds, { outDir: out, log: (m) => console.log(m) }, run);
      if (reports[reports.length - 1]?.interrupted) {
        process.exitCode = 130; // runStudy logged where it stopped and that the same command continues there
        return;
      }
      console.log('');
      console.log(aggregate ? aggregateMarkdown(aggregate) : reportMarkdown(reports[0]));
      console.log(`report: ${out}/report.md, ${out}/report.json, ${out}/pareto.svg${aggregate ? ` (each seed's in ${out}/seed-N/)` : ''}`);
    } catch (e) {
      if (!(e instanceof StudyInterrupted)) throw e;
      console.log(e.message);
      process.exitCode = 130;
    } finally {
      process.off('SIGINT', onSigint);
    }
  });
}

/** `undo --model DIR --forget F --retain R`: the study's arms on the user's model, scored by held-out cross-entropy. */
function userStudy(o: UndoCliOptions, hooks: StudyOptions['hooks'], signal: AbortSignal): (seed: number, dir: string) => Promise<StudyReport> {
  if (!o.forget || !o.retain) throw new Err('--model needs --forget and --retain (the data to unlearn and the data to keep)');
  if (o.forget === o.retain) throw new Err(`--forget and --retain are the same data (${o.forget})`);
  const method = parseMethod(o.method);
  const base = Model.load(o.model!);
  const oracle = o.oracle ? Model.load(o.oracle) : null;
  if (oracle) {
    try {
      checkCompatible(oracle, base);
    } catch (e) {
      throw new Err(`--oracle ${o.oracle} does not match --model ${o.model}: ${(e as Error).message}`);
    }
  }
  const tuned = UNLEARN_DEFAULTS[method];
  const stage = { steps: o.unlearnSteps ?? tuned.steps, lr: o.unlearnLr ?? tuned.lr, retainWeight: o.retainWeight ?? tuned.retainWeight };
  const identity = {
    model: { dir: path.resolve(o.model!), sha256: teacherHashFromDir(o.model!) },
    oracle: o.oracle ? { dir: path.resolve(o.oracle), sha256: teacherHashFromDir(o.oracle) } : null,
    data: { forget: o.forget, retain: o.retain, distill: o.distillData },
  };
  return async (seed, dir) => {
    const tok = { tokenizer: base.tokenizer };
    const forget = documentsFrom(o.forget!, '--forget', o.docs, seed + 1, tok);
    const retain = documentsFrom(o.retain!, '--retain', o.docs, seed + 2, tok);
    const mixture = o.distillData === 'mixture' ? undefined : o.distillData === 'retain' ? retain : documentsFrom(o.distillData, '--distill-data', o.docs, seed + 3, tok);
    const task = dataTask(base.tokenizer, { name: path.basename(path.resolve(o.model!)), forget, retain, mixture, seqLen: o.seqLen, seed, batchSize: o.batchSize });
    const budgets = [...new Set([Math.min(o.attackEvalEvery, o.attackSteps), o.attackSteps])];
    const c: StudyConfig = {
      name: 'model', preset: path.basename(path.resolve(o.model!)), seed, seqLen: o.seqLen, batchSize: o.batchSize, pretrainSteps: 0, pretrainLr: 0,
      docs: o.docs, wordProblems: 0.25, methods: [{ method, ...(o.sam ? { sam: o.sam } : {}) }], unlearn: { [method]: stage },
      alphas: o.alpha, beta: o.beta, fullDistill: !!o.fullDistill, oracle: !!oracle, distillLr: o.lr ?? 2e-4, distillMaxSteps: o.steps ?? 1000,
      distillEvalEvery: o.evalEvery, tolerance: o.tolerance,
      relearn: { lrs: o.attackLrs, steps: o.attackSteps, evalEvery: o.attackEvalEvery, budgets, seed: o.attackSeed ?? seed }, evalPerForm: 0,
    };
    return runArms(c, task, { base, oracle, identity }, { outDir: dir, log: (m) => console.log(m), hooks, signal });
  };
}

/** `undo --teacher DIR`: noise a copy of an unlearned model and distill the teacher into it. */
async function undoTeacher(o: UndoCliOptions, k: CliKit): Promise<void> {
  if (o.alpha.length !== 1) throw new Err(`--teacher takes one --alpha, got ${o.alpha.join(',')}`);
  const alpha = o.alpha[0];
  const steps = o.steps ?? 2000, lr = o.lr ?? 2e-3;
  const out = o.out ?? 'runs/undo';
  const teacher = Model.load(o.teacher!);
  const student = teacher.clone();
  await noiseModel(student, { alpha, beta: o.beta, seed: o.seed });
  const docs = documentsFrom(o.data, '--data', 200000, o.seed, { tokenizer: teacher.tokenizer });
  const batcher = new Batcher(packed(docs, student, 128, o.seed, '--data'), { batchSize: 16, seed: o.seed });
  const arith = o.data.startsWith('arithmetic');
  const t = arith ? await arithmeticScores(teacher, 50) : undefined;
  const ui = k.trainingUi(steps, o.progress);
  const r = await distill(student, teacher, batcher, { ...optimCfg({ steps, lr, warmup: 50, clip: 1, schedule: 'cosine' }), evalEvery: arith ? 100 : 0 }, {
    loss: 'fkl', outDir: out, ...ui.hooks,
    ...(t ? retainStop(student, t, o.tolerance, 25) : {}),
  });
  ui.stop();
  console.log(`UNDO (α=${alpha}, β=${o.beta}): ${r.state.step} distillation steps, ${r.state.tokens} tokens; saved in ${out}`);
}
