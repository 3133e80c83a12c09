/**
 * CLI command `distill`: a thin shell over lib/distill/distill.ts. Teacher online (a model directory) or offline (a
 * top-k store from cache-teacher); student from a preset or a directory; held-out evaluation every N steps
 * (validation CE, the teacher–student divergence, the task's own metrics) and early stopping on any of them.
 */
import { interruptSignal } from './interrupt';
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { Batcher, Document, packDocuments, splitTrainVal } from '../data/datasets';
import { checkCompatible, distill } from '../distill/distill';
import { UndoError, errorClass } from '../core/errors';
import { evalArithmetic, evalDivergence, evalPackedLoss } from '../train/evaluate';
import { LOSS_NAMES, LossName } from '../train/losses';
import { configFromHF, loadModelTokenizer, Model, presetConfig, PRESETS } from '../models/model';
import { readJson } from '../core/fsutil';
import { expectationFor, openTeacherStore, teacherHashFromDir, tokenizerHash } from '../distill/teacher_store';
import { KnnStore, KnnTeacher } from '../distill/knn_store';
import { ByteTokenizer, Tokenizer } from '../data/tokenizer';
import { ALL_OPS } from '../tasks/arithmetic';
import { biographyMetrics } from '../tasks/biographies';
import { checkpointToResume, parseStopCondition, skipLine, StopCondition, stopTest, TrainConfig } from '../train/train';
import { pretrained, STUDIES } from '../undo/study';
import type { CliKit } from './unlearn';
import { documentsFrom, packed } from './unlearn';
import { runFeatureDistill } from './features';
import { STANDARDIZATIONS, Standardization } from '../distill/standardize';
import { FEATURE_LOSSES, FeatureLoss } from '../distill/features';
import type { AdaptorKind } from '../distill/adaptor';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');
const NotFoundError = errorClass('ERR_NOT_FOUND');

export interface DistillOpts {
  teacher?: string[];
  features?: string[]; standardize: Standardization; adaptor: AdaptorKind; adaptorHidden?: number; featureLoss: FeatureLoss;
  featureWeights?: number[]; logitWeight: number; statsTokens: number; knnTeacher?: string; knnK?: number; knnTemperature?: number; knnLambda: number; knnExact?: boolean;
  cache?: string; tail: 'renorm' | 'bucket'; onPolicy: number; student: string; data: string;
  evalData?: string; valFraction: number; loss: LossSpec; topk?: number; temperature: number; beta: number; alpha: number;
  hardWeight: number; out: string; steps: number; lr: number; warmup: number; batchSize: number; seqLen: number;
  evalEvery: number; checkpointEvery: number; resume?: boolean; skipNonfinite: number; target?: number; stopWhen?: StopCondition; docs: number; seed: number; progress: boolean;
  threads?: number; isa?: string;
}

export interface LossSpec {
  name: LossName | 'minillm';
  /** jsd:β, skl:α, srkl:α */
  param?: number;
  /** dkd:α,β (the TCKD and NCKD weights) */
  dkd?: { alpha: number; beta: number };
}

/** `--loss NAME`, `--loss NAME:X` for the losses with one parameter (jsd β, skl α, srkl α), or `--loss dkd:α,β`. */
export function parseLossSpec(v: string): LossSpec {
  const [name, arg, ...rest] = v.split(':');
  const names: readonly string[] = [...LOSS_NAMES, 'minillm'];
  if (!names.includes(name)) throw new InvalidArgumentError(`unknown loss "${name}" (one of: ${names.join(', ')})`);
  if (arg === undefined) return { name: name as LossSpec['name'] };
  if (name === 'dkd' && !rest.length) {
    const parts = arg.split(',');
    const [a, b] = parts.map(Number);
    if (parts.length !== 2 || parts.some((x) => x.trim() === '') || !(a >= 0 && Number.isFinite(a)) || !(b >= 0 && Number.isFinite(b))) {
      throw new InvalidArgumentError(`"${v}": dkd takes α,β (the TCKD and NCKD weights, numbers ≥ 0), e.g. dkd:1,8`);
    }
    return { name: 'dkd', dkd: { alpha: a, beta: b } };
  }
  if (rest.length || !['jsd', 'skl', 'srkl'].includes(name)) throw new InvalidArgumentError(`"${v}": only jsd:β, skl:α and srkl:α take a parameter`);
  const x = Number(arg);
  if (arg.trim() === '' || !(x >= 0 && x <= 1)) throw new InvalidArgumentError(`"${v}": the parameter must be a number in [0, 1]`);
  return { name: name as LossSpec['name'], param: x };
}

export function registerDistillCommand(program: Command, k: CliKit): void {
  const { int, float } = k;
  k.runtimeOptions(
    program.command('distill')
      .description('distill a teacher into a student (a preset, a config, or an existing model)')
      .option('--teacher <dir>', 'teacher: a model directory (online) or a top-k store from cache-teacher (offline); default: an arithmetic teacher trained once and cached. Repeat it with --features for multi-teacher feature distillation', (v: string, prev?: string[]) => [...(prev ?? []), v])
      .option('--features <L:L\'>', 'feature distillation (PHI-S / RADIO): match the student\'s block-L output, through an adaptor head, to the teacher\'s block-L\' output (negative: from the end); once per --teacher, in order (one pair: every teacher)', (v: string, prev?: string[]) => [...(prev ?? []), v])
      .addOption(new Option('--standardize <kind>', 'features: per-teacher standardization of the teacher features').choices([...STANDARDIZATIONS]).default('phi-s'))
      .addOption(new Option('--adaptor <kind>', 'features: adaptor head per teacher').choices(['linear', 'mlp']).default('mlp'))
      .option('--adaptor-hidden <n>', 'features: hidden width of the mlp adaptor (default: the larger of the two widths)', int('--adaptor-hidden', 1))
      .addOption(new Option('--feature-loss <name>', 'features: loss between adaptor output and standardized teacher feature').choices([...FEATURE_LOSSES]).default('mse'))
      .option('--feature-weights <w,...>', 'features: weight of each teacher\'s feature loss (default 1 each)', (v: string) => v.split(',').map((x) => {
        const w = Number(x);
        if (x.trim() === '' || !(w >= 0) || !Number.isFinite(w)) throw new InvalidArgumentError(`"${v}": weights are numbers ≥ 0, comma separated`);
        return w;
      }))
      .option('--logit-weight <x>', 'features: weight of the logit KD (--loss) against the first teacher, added to the feature losses (0 = label-free features only)', float('--logit-weight', 0), 0)
      .option('--stats-tokens <n>', 'features: positions of the training data used for each teacher\'s statistics (one streaming pass)', int('--stats-tokens', 2), 65536)
      .option('--knn-teacher <store>', 'DNKD: a kNN datastore from `knn-store build` as the teacher (its key model runs forward; use with --loss dkd)')
      .option('--knn-k <n>', 'kNN teacher: neighbours (default: the store\'s)', int('--knn-k', 1))
      .option('--knn-temperature <tau>', 'kNN teacher: τ of exp(−d/τ) (default: the store\'s, its median neighbour gap)', float('--knn-temperature', 0))
      .option('--knn-lambda <x>', 'kNN teacher: p = λ·p_kNN + (1 − λ)·p_keymodel', float('--knn-lambda', 0, 1), 1)
      .option('--knn-exact', 'kNN teacher: exact search even where the store has an HNSW index')
      .addOption(new Option('--tail <mode>', 'top-k teacher (a store, or --topk): the mass outside the k ids').choices(['renorm', 'bucket']).default('bucket'))
      .option('--student <dir|preset|config>', `student: a model directory, or a preset (${Object.keys(PRESETS).join(', ')}) or a Hugging Face config.json for a random init`, 'micro')
      .option('--data <data>', 'data: a .txt/.jsonl file, arithmetic:OPS or biographies:all|forget|retain', 'arithmetic')
      .option('--eval-data <data>', 'held-out evaluation data (same forms as --data); default: --val-fraction of --data held out')
      .option('--val-fraction <x>', 'documents of --data held out for evaluation when --eval-data is not given', float('--val-fraction', 0, 0.5), 0.01)
      .option('--loss <name>', `distillation loss: ${[...LOSS_NAMES, 'minillm'].join('|')}; jsd:β, skl:α, srkl:α and dkd:α,β (default 1,8) set the parameters inline (minillm: sequence-level reverse-KL policy gradient)`, parseLossSpec, { name: 'fkl' })
      .option('--topk <k>', 'online teacher: distill from its top-k log-probabilities only (with --tail), as a store would hold them', int('--topk', 1))
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
      .option('--eval-every <n>', 'evaluate every n steps (0 = only at the end)', int('--eval-every', 0), 1000)
      .option('--checkpoint-every <n>', 'checkpoint the student with its optimizer state every n steps (0 = only at the end)', int('--checkpoint-every', 0), 1000)
      .option('--resume', 'continue the interrupted run saved in --out (same options; ends bit-identical to an uninterrupted run)')
      .option('--skip-nonfinite <n>', 'skip up to n steps whose loss or gradient is NaN/Inf (their batches dropped) before stopping', int('--skip-nonfinite', 0), 0)
      .option('--stop-when <cond>', 'stop early once an evaluated metric meets this, e.g. val_kl<=0.02, val_loss<=1.1, retain>=0.95 (metrics: val_loss, val_kl with an online teacher, the task\'s own)',
        (v: string) => parseStopCondition(v))
      .option('--target <x>', 'arithmetic: stop when the student\'s retain accuracy is within this of the teacher\'s', float('--target', 0, 1))
      .option('--docs <n>', 'documents generated for built-in data', int('--docs', 1), 200000)
      .option('--seed <n>', 'seed', int('--seed', 0), 0)
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: DistillOpts) => {
    k.applyRuntime(o);
    if (o.features) return runFeatureDistill(o, k);
    if ((o.teacher?.length ?? 0) > 1) throw new Err(`${o.teacher!.length} --teacher given without --features: several teachers are for feature distillation`, 'add --features L:L\' (one per teacher), or give one --teacher');
    const teacherDir = o.teacher?.[0];
    let teacherModel: Model | undefined;
    let offline = false;
    let knn: { store: KnnStore; keyModel: Model } | undefined;
    if (o.knnTeacher) {
      if (teacherDir) throw new Err('give --teacher or --knn-teacher, not both');
      const store = KnnStore.open(o.knnTeacher);
      const src = store.manifest.keyModel.source;
      if (!src || !fs.existsSync(src)) throw new Err(`kNN store ${o.knnTeacher}: its key model ${src ?? '(built in memory)'} is not there`, 'the key model must stay where the store was built from (knn-store build --model)');
      if (teacherHashFromDir(src) !== store.manifest.keyModel.sha256) throw new Err(`kNN store ${o.knnTeacher}: the key model ${src} has changed since the store was built`, 'rebuild the store');
      knn = { store, keyModel: Model.load(src) };
    } else if (!teacherDir) {
      console.log('no --teacher: using the built-in arithmetic teacher (tiny preset; trained once, then cached)');
      const q = STUDIES.quick;
      teacherModel = await pretrained(q, ALL_OPS, { outDir: o.out, cacheDir: o.cache, log: (m) => console.log(m), hooks: (_s, steps) => k.trainingUi(steps, o.progress), signal: interruptSignal() });
    } else {
      if (!fs.existsSync(teacherDir)) throw new NotFoundError(`--teacher ${teacherDir}: no such directory`);
      offline = fs.existsSync(path.join(teacherDir, 'manifest.json'));
      if (!offline) teacherModel = Model.load(teacherDir);
    }
    const tok = knn?.keyModel.tokenizer ?? teacherModel?.tokenizer ?? (offline ? storeTokenizer(teacherDir!) : new ByteTokenizer());
    const student = o.resume ? resumedStudent(o.out) : makeStudent(o.student, tok, o.seed);
    if (teacherModel) checkCompatible(student, teacherModel);
    if (knn) checkCompatible(student, knn.keyModel);
    const allDocs = documentsFrom(o.data, '--data', o.docs, o.seed, { tokenizer: student.tokenizer });
    // held-out evaluation documents: --eval-data, or a slice of --data (an offline store was made over all
    // of --data, so its windows must stay as they are: then nothing is held out unless --eval-data is given)
    const split = o.evalData || offline ? { train: allDocs, val: [] as Document[] } : splitTrainVal(allDocs, o.valFraction, o.seed);
    const evalDocs = o.evalData ? documentsFrom(o.evalData, '--eval-data', Math.max(200, Math.round(o.docs * o.valFraction)), o.seed + 1, { tokenizer: student.tokenizer }) : split.val;
    const data = packed(split.train, student, o.seqLen, o.seed, '--data');
    const evalSet = evalDocs.length ? packDocuments(student.tokenizer, evalDocs.slice(0, 400), o.seqLen, { seed: o.seed }) : undefined;
    const batcher = new Batcher(data, { batchSize: o.batchSize, seed: o.seed });
    const teacher = knn ? new KnnTeacher(knn.store, knn.keyModel, { k: o.knnK, temperature: o.knnTemperature, lambda: o.knnLambda, exact: o.knnExact })
      : teacherModel ?? openTeacherStore(teacherDir!, { expect: expectationFor(student, data) });
    if (teacher instanceof KnnTeacher) {
      console.log(`kNN teacher: ${teacher.store.entries} entries, k = ${teacher.k}, τ = ${teacher.temperature.toPrecision(4)}, λ = ${teacher.lambda}, ${teacher.store.hasIndex && !teacher.exact ? 'HNSW' : 'exact'} search; ` +
        (teacher.sameData(data) ? 'the store holds this training data: each row leaves its own entry out' : 'the store was built on other data (no leave-one-out; build it with the same --data, --val-fraction, --seq-len and --seed to have it)'));
    }
    const arith = o.data.startsWith('arithmetic');
    const bios = o.data.startsWith('biographies');
    const taskMetrics = async (m: Model): Promise<Record<string, number>> => {
      if (arith) return k.arithmeticMetrics(await evalArithmetic(m, { perForm: 50 }));
      if (bios) return { ...(await biographyMetrics(m)) };
      return {};
    };
    const evaluate = async (): Promise<Record<string, number>> => {
      const m: Record<string, number> = {};
      if (evalSet && evalSet.count > 0) {
        m.val_loss = (await evalPackedLoss(student, evalSet)).loss;
        if (teacherModel) m.val_kl = (await evalDivergence(student, teacherModel, evalSet, { temperature: o.temperature })).value;
      }
      return Object.assign(m, await taskMetrics(student));
    };
    const teacherMetrics = teacherModel ? await taskMetrics(teacherModel) : undefined;
    if (teacherModel && evalSet && evalSet.count > 0) teacherMetrics!.val_loss = (await evalPackedLoss(teacherModel, evalSet)).loss;
    const stops: ((m: Record<string, number>) => boolean)[] = [];
    if (o.stopWhen) {
      // checked before any training against the metrics evaluate() produces: the teacher's task metrics name
      // them (without an online teacher and with a built-in task, at the first evaluation instead)
      const held = evalSet !== undefined && evalSet.count > 0;
      const known = teacherMetrics || !(arith || bios)
        ? [...Object.keys(teacherMetrics ?? {}).filter((k) => k !== 'val_loss'), ...(held ? ['val_loss'] : []), ...(held && teacherModel ? ['val_kl'] : [])]
        : undefined;
      stops.push(stopTest(o.stopWhen, known));
    }
    if (o.target !== undefined) {
      if (teacherMetrics?.retain === undefined) throw new Err('--target needs an online teacher and arithmetic data (it compares retain accuracy); use --stop-when for other data');
      stops.push((m) => (m.retain ?? 0) >= teacherMetrics.retain - o.target!);
    }
    const ui = k.trainingUi(o.steps, o.progress);
    const r = await distill(student, teacher, batcher, { ...optimCfg(o), evalEvery: o.evalEvery, skipNonfinite: o.skipNonfinite }, {
      onSkip: (x) => console.log(skipLine(x, o.skipNonfinite)),
      loss: o.loss.name === 'minillm' ? 'rkl' : o.loss.name, miniLlm: o.loss.name === 'minillm' ? {} : undefined, temperature: o.temperature,
      params: lossParams(o),
      hardWeight: o.hardWeight, tail: o.tail, topk: o.topk, onPolicy: o.onPolicy, seed: o.seed, outDir: o.out, resume: o.resume,
      // the teacher's held-out loss on the same split: `plan --calibrate` reads it as L_T of this run
      meta: { kind: 'distill', teacher: teacherDir ?? o.knnTeacher ?? null, ...(knn ? { knn_teacher: o.knnTeacher } : {}), teacher_val_loss: teacherMetrics?.val_loss ?? null, loss: o.loss.name },
      ...ui.hooks,
      evaluate,
      stopWhen: stops.length ? (m) => stops.some((f) => f(m)) : undefined,
    });
    ui.stop();
    if (r.interrupted) {
      console.log(`interrupted at step ${r.state.step}: checkpoint saved in ${o.out}; continue with --resume`);
      process.exitCode = 130;
      return;
    }
    const stopped = r.state.step < o.steps && !r.interrupted ? ` (stopped early: ${[o.stopWhen?.text, o.target !== undefined ? `retain within ${o.target} of the teacher` : undefined].filter(Boolean).join(' or ')})` : '';
    console.log(`distilled ${r.state.step} steps (${o.hardWeight === 1 ? 'hard-label CE only' : o.loss.name}${o.loss.param !== undefined ? ':' + o.loss.param : ''}${o.loss.dkd ? `:${o.loss.dkd.alpha},${o.loss.dkd.beta}` : ''}${o.topk ? `, teacher top-${o.topk}` : ''})${stopped}; teacher ${teacherModel ? (teacherModel.numParams() / 1e6).toFixed(2) + 'M' : knn ? 'kNN store ' + o.knnTeacher : 'store ' + teacherDir} → student ${(student.numParams() / 1e6).toFixed(2)}M parameters; saved in ${o.out}`);
    if (r.lastEval) {
      const s = r.lastEval;
      const pct = (key: string) => !key.startsWith('val_') && !key.includes('mia') && !key.includes('extraction');
      const cell = (key: string, x: number | undefined) => (x === undefined || !Number.isFinite(x) ? 'n/a' : pct(key) ? `${(100 * x).toFixed(1)}%` : x.toFixed(4)).padStart(9);
      console.log(`\n${'metric'.padEnd(24)} ${'teacher'.padStart(9)} ${'student'.padStart(9)}`);
      if (teacherModel) console.log(`${'parameters'.padEnd(24)} ${((teacherModel.numParams() / 1e6).toFixed(2) + 'M').padStart(9)} ${((student.numParams() / 1e6).toFixed(2) + 'M').padStart(9)}`);
      for (const key of Object.keys(s)) console.log(`${key.padEnd(24)} ${cell(key, teacherMetrics?.[key])} ${cell(key, s[key])}`);
    }
  });
}

/**
 * The tokenizer of an offline teacher store, for the student: the store's teacher directory (manifest
 * teacher.source) when it still holds a tokenizer.json of the store's tokenizer hash, else the byte tokenizer
 * (a store of another tokenizer is then refused by the store's expectation check).
 */
function storeTokenizer(dir: string): Tokenizer {
  const m = readJson<{ teacher?: { source?: unknown }; tokenizer?: { sha256?: unknown } }>(path.join(dir, 'manifest.json'), 'teacher store manifest', 'ERR_TEACHER_STORE');
  const source = m.teacher?.source;
  if (typeof source === 'string' && fs.existsSync(path.join(source, 'tokenizer.json'))) {
    const tok = loadModelTokenizer(source);
    if (tokenizerHash(tok) === m.tokenizer?.sha256) return tok;
  }
  return new ByteTokenizer();
}

/** The loss parameters of --loss (dkd:α,β, jsd:β, skl:α, srkl:α) and --beta/--alpha. */
export function lossParams(o: Pick<DistillOpts, 'loss' | 'beta' | 'alpha'>): Record<string, number> {
  return o.loss.name === 'dkd' ? { alpha: o.loss.dkd?.alpha ?? 1, beta: o.loss.dkd?.beta ?? 8 }
    : { beta: o.loss.name === 'jsd' && o.loss.param !== undefined ? o.loss.param : o.beta, alpha: o.loss.param !== undefined && o.loss.name !== 'jsd' ? o.loss.param : o.alpha };
}

/** The student of --student: a preset or a config.json (random init with the teacher's tokenizer), or a model directory. */
export function makeStudent(spec: string, tok: Tokenizer, seed: number): Model {
  return PRESETS[spec] ? Model.create(presetConfig(spec, tok), { seed }, tok)
    : spec.endsWith('.json') && fs.existsSync(spec) && fs.statSync(spec).isFile()
      ? Model.create(configFromHF(readJson<Record<string, unknown>>(spec, 'student config', 'ERR_MODEL_CONFIG'), spec), { seed }, tok)
      : Model.load(spec);
}

export function optimCfg(o: { steps: number; lr: number; warmup: number; checkpointEvery?: number }): Omit<TrainConfig, 'evalEvery'> {
  return {
    steps: o.steps, gradAccum: 1, lr: o.lr, warmup: o.warmup, schedule: 'cosine', weightDecay: 0,
    beta1: 0.9, beta2: 0.95, eps: 1e-8, clip: 1, checkpointEvery: o.checkpointEvery ?? 0,
  };
}

/** The student of `distill --resume`: the checkpoint in --out (its weights; the optimizer state follows in train). */
export function resumedStudent(out: string): Model {
  checkpointToResume(out, 'a distillation');
  return Model.load(out);
}
