/**
 * CLI commands for the unlearning side: noise, unlearn, distill, relearn. Registered on the program by
 * lib/cli.ts; each is a thin shell over lib/noise.ts, lib/unlearn.ts, lib/distill.ts and lib/relearn.ts.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { Batcher, loadDocuments, packDocuments, PackedDataset } from './data';
import { checkCompatible, distill } from './distill';
import { UndoError } from './errors';
import { evalArithmetic } from './evaluate';
import { LOSS_NAMES, LossName } from './losses';
import { Model, presetConfig, PRESETS } from './model';
import { noiseModel, projectToDistribution } from './noise';
import { expectationFor, openTeacherStore } from './teacher_store';
import { ByteTokenizer } from './tokenizer';
import { relearn } from './relearn';
import { ALL_OPS, FORGET_OPS, generateArithmeticCorpus, Op } from './tasks/arithmetic';
import { biographyMetrics, builtinBiographyDocs } from './tasks/biographies';
import { TrainConfig, TrainOptions } from './train';
import { parseMethod, unlearn, UNLEARN_DEFAULTS, UNLEARN_METHODS } from './unlearn';
import { arithmeticScores, defaultStudyOut, pretrained, runStudy, STUDIES } from './undo';
import { reportMarkdown } from './report';

export interface CliKit {
  int: (name: string, min?: number) => (v: string) => number;
  float: (name: string, min?: number, max?: number) => (v: string) => number;
  runtimeOptions: (cmd: Command) => Command;
  applyRuntime: (o: { threads?: number; isa?: string }) => void;
  trainingUi: (steps: number, enabled: boolean) => { hooks: Pick<TrainOptions, 'onStep' | 'onEval'>; stop: () => void };
  printArithmeticTable: (m: Record<string, number>) => void;
  arithmeticMetrics: (s: Awaited<ReturnType<typeof evalArithmetic>>) => Record<string, number>;
}

/**
 * Documents from a data spec: `arithmetic:add,sub` (the built-in task with those operations) or a file
 * (.txt paragraphs or JSONL).
 */
export function documentsFrom(spec: string, what: string, count: number, seed: number, wordProblems = 0.25): string[] {
  if (spec.startsWith('biographies')) {
    const part = spec.includes(':') ? spec.slice(spec.indexOf(':') + 1) : 'all';
    if (part !== 'all' && part !== 'forget' && part !== 'retain') throw new UndoError(`${what} "${spec}": choose biographies:all, biographies:forget or biographies:retain`);
    return builtinBiographyDocs(part, seed);
  }
  if (spec.startsWith('arithmetic')) {
    const list = spec.includes(':') ? spec.slice(spec.indexOf(':') + 1).split(',').filter(Boolean) : [...ALL_OPS];
    for (const op of list) if (!(ALL_OPS as readonly string[]).includes(op)) throw new UndoError(`${what} "${spec}": unknown operation "${op}"`, `operations: ${ALL_OPS.join(',')}`);
    return generateArithmeticCorpus({ ops: list as Op[], count, seed, wordProblemFraction: wordProblems });
  }
  const docs = loadDocuments(spec);
  if (!docs.length) throw new UndoError(`${what} ${spec} holds no documents`);
  return docs;
}

function packed(docs: string[], model: Model, seqLen: number, seed: number, what: string): PackedDataset {
  const p = packDocuments(model.tokenizer, docs, seqLen, { seed });
  if (p.count === 0) throw new UndoError(`${what}: not enough text for one window of ${seqLen + 1} tokens`);
  return p;
}

function optimCfg(o: { steps: number; lr: number; warmup: number; clip: number; weightDecay?: number; evalEvery?: number; schedule?: string; minLr?: number }): TrainConfig {
  return {
    steps: o.steps, gradAccum: 1, lr: o.lr, minLr: o.minLr, warmup: o.warmup, schedule: (o.schedule ?? 'constant') as TrainConfig['schedule'],
    weightDecay: o.weightDecay ?? 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: o.clip, evalEvery: o.evalEvery ?? 0, checkpointEvery: 0,
  };
}

function checkUnit(name: string, v: number): number {
  if (!(v >= 0 && v <= 1)) throw new UndoError(`${name} must be in [0, 1], got ${v}`);
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
  ).action((o: { model: string; alpha: number; beta: number; dist: 'xavier' | 'normal'; seed: number; out: string; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    checkUnit('--alpha', o.alpha);
    checkUnit('--beta', o.beta);
    const m = Model.load(o.model);
    noiseModel(m, { alpha: o.alpha, beta: o.beta, seed: o.seed, dist: o.dist });
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
  ).action((o: { model: string; eta: number; target: 'normal' | 'uniform'; std?: number; out: string; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    checkUnit('--eta', o.eta);
    const m = Model.load(o.model);
    projectToDistribution(m, { eta: o.eta, target: o.target, std: o.std });
    m.save(o.out);
    console.log(`projected (η=${o.eta}, ${o.target}) → ${o.out}`);
  });

  k.runtimeOptions(
    program.command('unlearn')
      .description('unlearn the forget data: gradascent, graddiff, npo, simnpo, maxent (UNDO\'s default teacher) or rmu')
      .addOption(new Option('--method <m>', 'unlearning method').choices([...UNLEARN_METHODS]).default('maxent'))
      .requiredOption('--model <dir>', 'model to unlearn')
      .option('--forget <data>', 'forget data: a .txt/.jsonl file or arithmetic:OPS', 'arithmetic:mul,div')
      .option('--retain <data>', 'retain data: a .txt/.jsonl file or arithmetic:OPS', 'arithmetic:add,sub')
      .requiredOption('--out <dir>', 'output model directory')
      .option('--steps <n>', 'optimizer steps (default: tuned per method for the tiny arithmetic model)', int('--steps', 1))
      .option('--lr <x>', 'learning rate, constant (default: tuned per method)', float('--lr', 0))
      .option('--batch-size <n>', 'sequences per forget (and retain) batch', int('--batch-size', 1), 16)
      .option('--seq-len <n>', 'tokens per sequence', int('--seq-len', 2), 128)
      .option('--retain-weight <x>', 'weight of the retain loss (default: tuned per method)', float('--retain-weight', 0))
      .option('--beta <x>', 'NPO / SimNPO β', float('--beta', 0))
      .option('--rmu-layer <n>', 'RMU: steered layer (default 2/3 of depth)', int('--rmu-layer', 0))
      .option('--rmu-c <x>', 'RMU: steering coefficient c', float('--rmu-c', 0), 6)
      .option('--clip <x>', 'gradient clipping', float('--clip', 0), 1)
      .option('--sam <rho>', 'wrap the method in SAM with radius ρ (0 = off)', float('--sam', 0), 0)
      .option('--docs <n>', 'documents generated per built-in data set', int('--docs', 1), 20000)
      .option('--seed <n>', 'seed', int('--seed', 0), 0)
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: { method: string; model: string; forget: string; retain: string; out: string; steps?: number; lr?: number; batchSize: number; seqLen: number; retainWeight?: number; beta?: number; rmuLayer?: number; rmuC: number; clip: number; sam: number; docs: number; seed: number; progress: boolean; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    const method = parseMethod(o.method);
    const tuned = UNLEARN_DEFAULTS[method];
    o.steps = o.steps ?? tuned.steps;
    o.lr = o.lr ?? tuned.lr;
    o.retainWeight = o.retainWeight ?? tuned.retainWeight;
    if (o.forget === o.retain) throw new UndoError(`--forget and --retain are the same data (${o.forget})`);
    const fdocs = documentsFrom(o.forget, '--forget', o.docs, o.seed + 1);
    const rdocs = documentsFrom(o.retain, '--retain', o.docs, o.seed + 2);
    const fset = new Set(fdocs);
    if (rdocs.length === fdocs.length && rdocs.every((d) => fset.has(d))) throw new UndoError('--forget and --retain hold the same documents');
    const model = Model.load(o.model);
    const forget = new Batcher(packed(fdocs, model, o.seqLen, o.seed, '--forget'), { batchSize: o.batchSize, seed: o.seed });
    const retain = new Batcher(packed(rdocs, model, o.seqLen, o.seed, '--retain'), { batchSize: o.batchSize, seed: o.seed + 1 });
    const params: Record<string, number> = { seed: o.seed, rmuC: o.rmuC };
    if (o.retainWeight !== undefined) params.retainWeight = o.retainWeight;
    if (o.beta !== undefined) params.beta = o.beta;
    if (o.rmuLayer !== undefined) params.rmuLayer = o.rmuLayer;
    const ui = k.trainingUi(o.steps, o.progress);
    const r = await unlearn(model, forget, retain, optimCfg({ ...o, steps: o.steps, lr: o.lr, warmup: 0 }), { method, params, sam: o.sam, ...ui.hooks, outDir: o.out });
    ui.stop();
    console.log(`${method}: ${r.state.step} steps; model saved in ${o.out}`);
    if (o.forget.startsWith('arithmetic') || o.retain.startsWith('arithmetic')) k.printArithmeticTable(k.arithmeticMetrics(await evalArithmetic(model)));
    if (o.forget.startsWith('biographies')) console.log(JSON.stringify(await biographyMetrics(model)));
  });

  k.runtimeOptions(
    program.command('distill')
      .description('distill a teacher into a student (a preset, a config, or an existing model)')
      .option('--teacher <dir>', 'teacher: a model directory (online) or a top-k store from cache-teacher (offline); default: an arithmetic teacher trained once and cached')
      .addOption(new Option('--tail <mode>', 'offline teacher: mass outside the top-k ids').choices(['renorm', 'bucket']).default('bucket'))
      .option('--student <dir|preset>', `student: a model directory, or a preset (${Object.keys(PRESETS).join(', ')}) for a random init`, 'micro')
      .option('--data <data>', 'data: a .txt/.jsonl file or arithmetic:OPS', 'arithmetic')
      .addOption(new Option('--loss <name>', 'distillation loss (minillm: sequence-level reverse-KL policy gradient)').choices([...LOSS_NAMES, 'minillm']).default('fkl'))
      .option('--temperature <t>', 'temperature', float('--temperature', 0), 1)
      .option('--beta <x>', 'JSD β', float('--beta', 0, 1), 0.5)
      .option('--alpha <x>', 'skew KL α', float('--alpha', 0, 1), 0.1)
      .option('--hard-weight <x>', 'weight of the hard-label CE in the mix', float('--hard-weight', 0, 1), 0)
      .option('--on-policy <lambda>', 'fraction of batches sampled from the student and scored by the teacher (GKD)', float('--on-policy', 0, 1), 0)
      .option('--out <dir>', 'output model directory', 'runs/distill')
      .option('--cache <dir>', 'where the default teacher is cached (default .undo-cache or UNDO_CACHE)')
      .option('--steps <n>', 'optimizer steps', int('--steps', 1), 8000)
      .option('--lr <x>', 'peak learning rate', float('--lr', 0), 3e-3)
      .option('--warmup <n>', 'warm-up steps', int('--warmup', 0), 50)
      .option('--batch-size <n>', 'sequences per batch', int('--batch-size', 1), 16)
      .option('--seq-len <n>', 'tokens per sequence', int('--seq-len', 2), 128)
      .option('--eval-every <n>', 'evaluate every n steps', int('--eval-every', 0), 1000)
      .option('--target <x>', 'stop when the student\'s retain accuracy is within this of the teacher\'s', float('--target', 0, 1))
      .option('--docs <n>', 'documents generated for built-in data', int('--docs', 1), 200000)
      .option('--seed <n>', 'seed', int('--seed', 0), 0)
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: { teacher?: string; cache?: string; tail: 'renorm' | 'bucket'; onPolicy: number; student: string; data: string; loss: LossName | 'minillm'; temperature: number; beta: number; alpha: number; hardWeight: number; out: string; steps: number; lr: number; warmup: number; batchSize: number; seqLen: number; evalEvery: number; target?: number; docs: number; seed: number; progress: boolean; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    let teacherModel: Model | undefined;
    let offline = false;
    if (!o.teacher) {
      console.log('no --teacher: using the built-in arithmetic teacher (tiny preset; trained once, then cached)');
      const q = STUDIES.quick;
      teacherModel = await pretrained(q, ALL_OPS, { outDir: o.out, cacheDir: o.cache, log: (m) => console.log(m), hooks: (_s, steps) => (o.progress ? k.trainingUi(steps, true) : { hooks: {}, stop: () => undefined }) });
    } else {
      offline = fs.existsSync(path.join(o.teacher, 'manifest.json'));
      if (!offline) teacherModel = Model.load(o.teacher);
    }
    const tok = teacherModel?.tokenizer ?? new ByteTokenizer();
    const student = PRESETS[o.student] ? Model.create(presetConfig(o.student, tok), { seed: o.seed }, tok) : Model.load(o.student);
    if (teacherModel) checkCompatible(student, teacherModel);
    const docs = documentsFrom(o.data, '--data', o.docs, o.seed);
    const data = packed(docs, student, o.seqLen, o.seed, '--data');
    const batcher = new Batcher(data, { batchSize: o.batchSize, seed: o.seed });
    const teacher = teacherModel ?? openTeacherStore(o.teacher!, { expect: expectationFor(student, data) });
    const arith = o.data.startsWith('arithmetic');
    const teacherMetrics = arith && teacherModel ? k.arithmeticMetrics(await evalArithmetic(teacherModel, { perForm: 50 })) : undefined;
    const ui = k.trainingUi(o.steps, o.progress);
    const r = await distill(student, teacher, batcher, { ...optimCfg({ ...o, clip: 1, schedule: 'cosine' }), evalEvery: o.evalEvery }, {
      loss: o.loss === 'minillm' ? 'rkl' : o.loss, miniLlm: o.loss === 'minillm' ? {} : undefined, temperature: o.temperature, params: { beta: o.beta, alpha: o.alpha }, hardWeight: o.hardWeight, tail: o.tail, onPolicy: o.onPolicy, seed: o.seed, outDir: o.out,
      ...ui.hooks,
      evaluate: arith ? async () => k.arithmeticMetrics(await evalArithmetic(student, { perForm: 50 })) : undefined,
      stopWhen: o.target !== undefined && teacherMetrics?.retain !== undefined ? (m) => (m.retain ?? 0) >= teacherMetrics.retain - o.target! : undefined,
    });
    ui.stop();
    console.log(`distilled ${r.state.step} steps (${o.loss}); teacher ${teacherModel ? (teacherModel.numParams() / 1e6).toFixed(2) + 'M' : 'store ' + o.teacher} → student ${(student.numParams() / 1e6).toFixed(2)}M parameters; saved in ${o.out}`);
    if (teacherMetrics && r.lastEval) {
      const s = r.lastEval;
      const cell = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`).padStart(8);
      console.log(`\n${'metric'.padEnd(22)} ${'teacher'.padStart(8)} ${'student'.padStart(8)}`);
      console.log(`${'parameters'.padEnd(22)} ${(teacherModel!.numParams() / 1e6).toFixed(2).padStart(7)}M ${(student.numParams() / 1e6).toFixed(2).padStart(7)}M`);
      for (const key of Object.keys(teacherMetrics)) console.log(`${key.padEnd(22)} ${cell(teacherMetrics[key])} ${cell(s[key])}`);
    }
  });

  k.runtimeOptions(
    program.command('relearn')
      .description('relearning attack: fine-tune with cross-entropy over a learning-rate sweep, report the attacker\'s best curve')
      .requiredOption('--model <dir>', 'model to attack')
      .option('--data <data>', 'attack data: a .txt/.jsonl file or arithmetic:OPS', 'arithmetic:mul,div')
      .option('--lrs <list>', 'learning rates, comma-separated', (v: string) => v.split(',').map((x) => {
        const n = Number(x);
        if (!(n > 0)) throw new InvalidArgumentError(`--lrs: "${x}" is not a positive number`);
        return n;
      }), [3e-3, 1e-3, 3e-4, 1e-4])
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
    const docs = documentsFrom(o.data, '--data', o.docs, o.seed);
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

export function registerUndoCommand(program: Command, k: CliKit): void {
  const { int, float } = k;
  k.runtimeOptions(
    program.command('undo')
      .description('UNDO: unlearn → noise → distill. With no arguments, a quick study on the built-in arithmetic task; --preset arithmetic runs the whole study; --teacher DIR distills an unlearned model into its noised copy')
      .addOption(new Option('--preset <name>', 'study to run').choices(Object.keys(STUDIES)).default('quick'))
      .option('--teacher <dir>', 'an unlearned model: run only noise → distill on it')
      .option('--data <data>', 'with --teacher: the pretraining mixture (file or arithmetic:OPS)', 'arithmetic')
      .option('--alpha <a>', 'with --teacher: noise α', float('--alpha', 0, 1), 0.6)
      .option('--beta <b>', 'with --teacher: noise β', float('--beta', 0, 1), 0.1)
      .option('--steps <n>', 'with --teacher: maximum distillation steps', int('--steps', 1), 2000)
      .option('--lr <x>', 'with --teacher: distillation learning rate', float('--lr', 0), 2e-3)
      .option('--tolerance <x>', 'stop when retain accuracy is within this of the teacher\'s', float('--tolerance', 0, 1), 0.05)
      .option('--seed <n>', 'seed', int('--seed', 0), 42)
      .option('--out <dir>', 'output directory (default runs/undo-<preset>)')
      .option('--cache <dir>', 'where pretrained models are cached (default .undo-cache or UNDO_CACHE)')
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: { preset: string; teacher?: string; data: string; alpha: number; beta: number; steps: number; lr: number; tolerance: number; seed: number; out?: string; cache?: string; progress: boolean; threads?: number; isa?: string }) => {
    k.applyRuntime(o);
    if (o.teacher) {
      const out = o.out ?? 'runs/undo';
      const teacher = Model.load(o.teacher);
      const student = teacher.clone();
      noiseModel(student, { alpha: o.alpha, beta: o.beta, seed: o.seed });
      const docs = documentsFrom(o.data, '--data', 200000, o.seed);
      const batcher = new Batcher(packed(docs, student, 128, o.seed, '--data'), { batchSize: 16, seed: o.seed });
      const arith = o.data.startsWith('arithmetic');
      const t = arith ? await arithmeticScores(teacher, 50) : undefined;
      const ui = k.trainingUi(o.steps, o.progress);
      const r = await distill(student, teacher, batcher, { ...optimCfg({ steps: o.steps, lr: o.lr, warmup: 50, clip: 1, schedule: 'cosine' }), evalEvery: arith ? 100 : 0 }, {
        loss: 'fkl', outDir: out, ...ui.hooks,
        evaluate: arith ? async () => { const s = await arithmeticScores(student, 25); return { retain: s.retain, forget: s.forget }; } : undefined,
        stopWhen: t ? (m) => m.retain >= t.retain - o.tolerance : undefined,
      });
      ui.stop();
      console.log(`UNDO (α=${o.alpha}, β=${o.beta}): ${r.state.step} distillation steps, ${r.state.tokens} tokens; saved in ${out}`);
      return;
    }
    const study = STUDIES[o.preset];
    const out = o.out ?? defaultStudyOut(study.name);
    const report = await runStudy({ ...study, seed: o.seed }, {
      outDir: out, cacheDir: o.cache, log: (m) => console.log(m),
      hooks: (stage, steps) => (o.progress ? k.trainingUi(steps, true) : { hooks: {}, stop: () => undefined }),
    });
    console.log('');
    console.log(reportMarkdown(report));
    console.log(`report: ${out}/report.md, ${out}/report.json, ${out}/pareto.svg`);
  });
}
