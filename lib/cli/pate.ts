/**
 * CLI of Hot PATE (lib/distill/pate.ts): `pate-teachers` partitions private data and trains one teacher per
 * part; `pate` generates private responses to public prompts with the teacher ensemble under an (ε, δ)
 * budget, writes them with the privacy record, and trains a student on them. Registered by lib/cli/main.ts.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import * as cliProgress from 'cli-progress';
import { UndoError, errorClass } from '../core/errors';
import { readFileOrThrow, writeFileAtomic, writeJsonAtomic } from '../core/fsutil';
import { Model, presetConfig, PRESETS } from '../models/model';
import { ByteTokenizer } from '../data/tokenizer';
import { chatPromptIds } from '../data/chat';
import {
  ABSTAIN_POLICIES, AbstainPolicy, PateConfig, pateGenerate, releasedDocuments, resolveTeacherDirs, trainOnReleased, trainTeachers,
  VOTE_SCHEMES, VoteScheme,
} from '../distill/pate';
import { GaussianAccountant, PRIVACY_CONVERSIONS, PrivacyConversion } from '../distill/privacy';
import { pateBiographyCoverage, pateBiographyMetrics, pateBiographyPrompts } from '../tasks/biographies';
import type { CliKit } from './unlearn';
import { documentsFrom } from './unlearn';
import { TrainConfig } from '../train/train';
import { loadDocuments } from '../data/datasets';
import { teacherHashFromDir } from '../distill/teacher_store';
import { optimCfg } from './distill';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

interface TeachersOpts {
  base?: string;
  preset: string;
  data: string;
  teachers: number;
  out: string;
  steps: number;
  lr: number;
  warmup: number;
  batchSize: number;
  seqLen: number;
  seed: number;
  progress: boolean;
  threads?: number;
  isa?: string;
  bf16?: boolean;
}

interface PateOpts {
  teachers: string[];
  prompts: string;
  epsilon: number;
  delta: number;
  out: string;
  scheme: VoteScheme;
  temperature: number;
  sigma?: number;
  thresholdSigma?: number;
  threshold?: number;
  onAbstain: AbstainPolicy;
  retries: number;
  public?: string;
  publicConfidence: number;
  samples: number;
  maxNewTokens: number;
  conversion: PrivacyConversion;
  seed: number;
  batchSize: number;
  student?: string;
  studentSteps: number;
  studentLr: number;
  seqLen: number;
  includeIncomplete?: boolean;
  chat?: boolean;
  eval?: string;
  progress: boolean;
  threads?: number;
  isa?: string;
  bf16?: boolean;
}

const optim = (steps: number, lr: number, warmup: number): TrainConfig => ({ ...optimCfg({ steps, lr, warmup }), evalEvery: 0 });

/** Prompts: the built-in `pate-bios`, a .txt file (one per non-empty line) or .jsonl with a "prompt" field. */
export function loadPrompts(spec: string): string[] {
  if (spec === 'pate-bios') return pateBiographyPrompts();
  const out = /\.(jsonl|ndjson)$/i.test(spec)
    ? loadDocuments(spec, { field: 'prompt', format: 'jsonl' })
    : readFileOrThrow(spec, 'prompts file').toString('utf8').replace(/^\uFEFF/, '').split(/\r?\n/).filter((l) => l.trim());
  if (!out.length) throw new Err(`${spec} holds no prompts`);
  return out;
}

export function registerPateCommands(program: Command, k: CliKit): void {
  const { int, float } = k;

  k.runtimeOptions(
    program.command('pate-teachers')
      .description('Hot PATE: split private data into disjoint partitions and train one teacher on each (resumable: a rerun skips finished teachers)')
      .option('--base <dir>', 'model each teacher is fine-tuned from (default: a fresh --preset model per teacher)')
      .option('--preset <name>', `preset of fresh teachers (${Object.keys(PRESETS).join(', ')})`, 'micro')
      .requiredOption('--data <data>', 'private data: a .txt/.jsonl file or the built-in pate-bios:private')
      .requiredOption('--teachers <n>', 'number of partitions and teachers', int('--teachers', 1))
      .requiredOption('--out <dir>', 'directory of teacher-NNN models and partitions.json')
      .option('--steps <n>', 'optimizer steps per teacher', int('--steps', 1), 200)
      .option('--lr <x>', 'peak learning rate', float('--lr', 0), 2e-3)
      .option('--warmup <n>', 'warm-up steps', int('--warmup', 0), 10)
      .option('--batch-size <n>', 'sequences per step', int('--batch-size', 1), 8)
      .option('--seq-len <n>', 'tokens per sequence (long enough to hold whole records: packing cuts across windows)', int('--seq-len', 2), 128)
      .option('--seed <n>', 'seed of the partition, data order and fresh models', int('--seed', 0), 0)
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: TeachersOpts) => {
    k.applyRuntime(o);
    const tok = o.base ? Model.load(o.base).tokenizer : new ByteTokenizer();
    const docs = documentsFrom(o.data, '--data', 0, o.seed, { tokenizer: tok });
    const t0 = Date.now();
    let ui: ReturnType<CliKit['trainingUi']> | undefined;
    const r = await trainTeachers({
      base: o.base ?? ((i) => Model.create(presetConfig(o.preset, tok), { seed: o.seed * 1000 + i }, tok)),
      docs, teachers: o.teachers, out: o.out, seqLen: o.seqLen, batchSize: o.batchSize, cfg: optim(o.steps, o.lr, o.warmup), seed: o.seed, dataName: o.data,
      onTeacher: (i, n, skipped) => {
        ui?.stop();
        console.log(`teacher ${i + 1}/${n}${skipped ? ': already trained, kept' : ''}`);
      },
      trainHooks: () => {
        ui = k.trainingUi(o.steps, o.progress);
        return ui.hooks;
      },
    });
    ui?.stop();
    console.log(`${r.dirs.length} teachers in ${o.out} (partitions of ${Math.min(...r.sizes)}–${Math.max(...r.sizes)} documents), ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  });

  k.runtimeOptions(
    program.command('pate')
      .description('Hot PATE: generate responses to public prompts with a private teacher ensemble under an (ε, δ) budget, then train a student on them')
      .requiredOption('--teachers <dirs...>', 'teacher model directories, or a directory of teacher-NNN models (pate-teachers --out)')
      .requiredOption('--prompts <file>', 'prompts: a .txt file (one per line), .jsonl with "prompt", or the built-in pate-bios')
      .requiredOption('--epsilon <x>', 'privacy budget ε', float('--epsilon', 0))
      .requiredOption('--delta <x>', 'privacy budget δ, in (0, 1)', (v: string) => {
        const d = Number(v);
        if (!(d > 0 && d < 1)) throw new InvalidArgumentError(`--delta must be a number in (0, 1), got "${v}"`);
        return d;
      })
      .requiredOption('--out <dir>', 'output: released.jsonl, privacy.json, report.json and student/')
      .addOption(new Option('--scheme <s>', 'votes: hot (coordinated sampling), independent, cold (argmax, classic PATE)').choices([...VOTE_SCHEMES]).default('hot'))
      .option('--temperature <x>', 'teachers\' sampling temperature', float('--temperature', 1e-6), 1)
      .option('--sigma <x>', 'σ of the noisy argmax (default 0.15 × teachers; 0 with --threshold-sigma 0: no privacy)', float('--sigma', 0))
      .option('--threshold-sigma <x>', 'σ of the threshold check (default 2 × σ; 0: no check)', float('--threshold-sigma', 0))
      .option('--threshold <x>', 'votes needed (noisy) to answer (default 0.6 × teachers)', float('--threshold'))
      .addOption(new Option('--on-abstain <p>', 'on ⊥: stop the response, take the public model\'s token, or resample with fresh randomness').choices([...ABSTAIN_POLICIES]).default('stop'))
      .option('--retries <n>', 'extra tries after ⊥ with --on-abstain resample', int('--retries', 0), 3)
      .option('--public <dir>', 'public model (same tokenizer): fallback and confident tokens, free of privacy cost')
      .option('--public-confidence <x>', 'release the public model\'s token without a query when its probability is at least this', float('--public-confidence', 0, 1), 1)
      .option('--samples <n>', 'responses per prompt', int('--samples', 1), 1)
      .option('--max-new-tokens <n>', 'tokens per response', int('--max-new-tokens', 1), 48)
      .addOption(new Option('--conversion <c>', 'RDP→(ε, δ) conversion (gdp: exact for Gaussian compositions)').choices([...PRIVACY_CONVERSIONS]).default('rdp'))
      .option('--seed <n>', 'seed of the shared randomness and the noise', int('--seed', 0), 0)
      .option('--batch-size <n>', 'responses decoded in lockstep', int('--batch-size', 1), 16)
      .option('--student <dir>', 'train this model on the released responses into OUT/student')
      .option('--student-steps <n>', 'student optimizer steps', int('--student-steps', 1), 300)
      .option('--student-lr <x>', 'student peak learning rate', float('--student-lr', 0), 1e-3)
      .option('--seq-len <n>', 'student tokens per sequence (long enough to hold whole responses)', int('--seq-len', 2), 128)
      .option('--include-incomplete', 'train on responses cut by ⊥ or the token limit too')
      .option('--chat', 'send each prompt as a user turn through the tokenizer\'s chat template (the student learns the same turns)')
      .option('--eval <task>', 'report the student\'s utility on a built-in task (pate-bios; the default with --prompts pate-bios)')
      .option('--no-progress', 'no progress bar'),
  ).action(async (o: PateOpts) => {
    k.applyRuntime(o);
    const dirs = resolveTeacherDirs(o.teachers);
    const teachers = dirs.map((d) => Model.load(d));
    const n = teachers.length;
    const pub = o.public ? Model.load(o.public) : undefined;
    const promptTexts = loadPrompts(o.prompts);
    const tok = teachers[0].tokenizer;
    const prompts = promptTexts.map((p) => (o.chat ? chatPromptIds(tok, p, '--chat') : tok.encode(p, { bos: true })));
    const sigma = o.sigma ?? Math.max(0.5, 0.15 * n);
    const thresholdSigma = o.thresholdSigma ?? (o.sigma === 0 ? 0 : 2 * sigma);
    const cfg: PateConfig = {
      scheme: o.scheme, temperature: o.temperature, sigma, thresholdSigma, threshold: o.threshold ?? 0.6 * n, onAbstain: o.onAbstain,
      retries: o.retries, publicConfidence: o.publicConfidence, samples: o.samples, maxNewTokens: o.maxNewTokens, seed: o.seed, batchSize: o.batchSize,
    };
    const accountant = sigma === 0 && thresholdSigma === 0 ? undefined : new GaussianAccountant({ epsilon: o.epsilon, delta: o.delta, conversion: o.conversion });
    console.log(`${n} teachers, ${promptTexts.length} prompts × ${o.samples}; ${o.scheme} votes, σ = ${sigma}, threshold ${cfg.threshold} (σ₁ = ${thresholdSigma}); budget ε = ${o.epsilon}, δ = ${o.delta}`);
    const bar = o.progress
      ? new cliProgress.SingleBar({ format: 'responses {value}/{total} |{bar}| ETA {eta_formatted}', hideCursor: true, stream: process.stderr, noTTYOutput: !process.stderr.isTTY, notTTYSchedule: 10000 }, cliProgress.Presets.shades_classic)
      : undefined;
    bar?.start(promptTexts.length * o.samples, 0);
    const t0 = Date.now();
    const controller = new AbortController();
    const onSigint = () => controller.abort();
    process.on('SIGINT', onSigint);
    let r;
    try {
      r = await pateGenerate(teachers, prompts, cfg, { publicModel: pub, accountant, names: [...dirs, ...(o.public ? [o.public] : [])], onProgress: (d) => bar?.update(d), signal: controller.signal });
    } finally {
      process.off('SIGINT', onSigint);
      bar?.stop();
    }
    const genSec = (Date.now() - t0) / 1000;
    fs.mkdirSync(o.out, { recursive: true });
    const texts = r.sequences.map((s) => tok.decode(s.ids, { skipSpecial: true }));
    writeFileAtomic(path.join(o.out, 'released.jsonl'), r.sequences.map((s, i) => JSON.stringify({
      prompt: promptTexts[s.prompt], completion: texts[i], ...(o.chat ? { chat: true } : {}), complete: s.complete, private_tokens: s.privateTokens, public_tokens: s.publicTokens, abstains: s.abstains,
    }) + '\n').join(''));
    const privacy = {
      ...(r.privacy ?? { epsilon: Infinity, delta: o.delta, note: 'σ = σ₁ = 0: not private' }),
      stopped_by_budget: r.stoppedByBudget, interrupted: r.interrupted, mechanism: { ...cfg }, teachers: dirs.map((d, i) => ({ dir: path.resolve(d), sha256: teacherHashFromDir(d), index: i })),
      public_model: o.public ? path.resolve(o.public) : null,
    };
    writeJsonAtomic(path.join(o.out, 'privacy.json'), privacy);
    const complete = r.sequences.filter((s) => s.complete).length;
    const eps = r.privacy ? (r.privacy.epsilon as number) : Infinity;
    console.log(`released ${r.sequences.length} responses (${complete} complete) in ${genSec.toFixed(1)} s: ${r.stats.answered} private tokens, ${r.stats.abstained} ⊥, ` +
      `${r.stats.publicTokens} public tokens; mean top vote ${r.stats.meanTopVotes.toFixed(2)}/${n}; ε = ${eps.toFixed(3)} of ${o.epsilon} (δ = ${o.delta}, ${o.conversion})` +
      (r.stoppedByBudget ? '; the budget ran out' : ''));
    if (r.interrupted) {
      // the privacy already spent is recorded; a rerun would spend it again
      console.log(`interrupted: the responses released so far and the privacy spent are saved in ${o.out}`);
      process.exitCode = 130;
      return;
    }
    const report: Record<string, unknown> = { scheme: o.scheme, teachers: n, epsilon: eps, delta: o.delta, ...r.stats, complete, responses: r.sequences.length, stopped_by_budget: r.stoppedByBudget };
    const evalTask = o.eval ?? (o.prompts === 'pate-bios' ? 'pate-bios' : undefined);
    if (evalTask && evalTask !== 'pate-bios') throw new Err(`--eval ${evalTask}: unknown task`, 'built-in: pate-bios');
    const releasedTexts = r.sequences.flatMap((s, i) => (s.complete || o.includeIncomplete ? [promptTexts[s.prompt] + texts[i]] : []));
    if (evalTask) report.coverage = pateBiographyCoverage(releasedTexts);
    writeJsonAtomic(path.join(o.out, 'report.json'), report);
    if (o.student) {
      const student = Model.load(o.student);
      if (student.config.vocabSize !== teachers[0].config.vocabSize) throw new Err(`--student ${o.student}: vocabulary ${student.config.vocabSize} differs from the teachers' ${teachers[0].config.vocabSize}`);
      const docs = releasedDocuments(student, prompts, r.sequences, o.includeIncomplete);
      const ui = k.trainingUi(o.studentSteps, o.progress);
      const studentDir = path.join(o.out, 'student');
      const tr = await trainOnReleased(student, docs, optim(o.studentSteps, o.studentLr, Math.min(20, o.studentSteps >> 3)), { seqLen: o.seqLen, batchSize: 16, seed: o.seed, outDir: studentDir, ...ui.hooks });
      ui.stop();
      if (tr.interrupted) { process.exitCode = 130; return; }
      console.log(`student trained on ${docs.length} released responses: ${studentDir}`);
      if (evalTask) {
        const m = await pateBiographyMetrics(student, releasedTexts);
        report.student_accuracy = m.accuracy;
        report.student_per_attribute = m.perAttribute;
        console.log(`student fact accuracy ${(100 * m.accuracy).toFixed(1)}%, coverage of released facts ${(100 * m.coverage).toFixed(1)}%`);
      }
    } else if (evalTask) {
      console.log(`coverage of released facts ${(100 * (report.coverage as number)).toFixed(1)}%`);
    }
    writeJsonAtomic(path.join(o.out, 'report.json'), report);
  });
}
