/**
 * `undo-native plan`: the distillation scaling-law planner (lib/plan). Given a compute budget (FLOPs, or hours
 * of this machine measured by the engine's own training speed), the teacher situation and candidate students,
 * it prints each allocation's predicted student cross-entropy against supervised pretraining, the budget where
 * supervised pretraining catches up, and the compute-optimal recipe. `--calibrate RUN...` first fits the law
 * to the user's own runs (and `--save` keeps it for `--law`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { UndoError, errorClass } from '../core/errors';
import { readJson } from '../core/fsutil';
import { native } from '../core/native';
import { configFromHF, ModelConfig, presetConfig, PRESETS, setDefaultComputeDtype } from '../models/model';
import { calibrate, CalibrationData, CalibrationResult, FitReport, loadLaw, readPointsFile, readRunPoints, saveLaw } from '../plan/calibrate';
import {
  configForwardFlops, DISTILLATION_KEYS, FITTED_RANGE, formatCount, nonEmbeddingParams, PAPER_LAW, PAPER_SHAPE, parseCount, ScalingLaw,
  SUPERVISED_KEYS, TEACHER_SITUATIONS, TeacherSituation,
} from '../plan/law';
import { plan, Plan, StudentCandidate } from '../plan/planner';
import { measureThroughput, PROBE_CONFIG, Throughput } from '../plan/throughput';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

interface PlanOpts {
  flops?: number; hours?: number; flopsPerSec?: number; probeModel?: string; students?: number[]; student?: string[];
  teacher?: TeacherSituation; teacherParams?: number; teacherTokens?: number; teacherLoss?: number; teacherModel?: string;
  ctx: number; vocab: number; law?: string; calibrate?: string[]; allEvals?: boolean;
  fitSupervised?: Array<typeof SUPERVISED_KEYS[number]>; fitDistillation?: Array<typeof DISTILLATION_KEYS[number]>;
  save?: string; json?: boolean; threads?: number; bf16?: boolean;
}

function count(name: string) {
  return (v: string): number => {
    const n = parseCount(v);
    if (!(n > 0)) throw new InvalidArgumentError(`${name} must be a positive count like 1e21, 7.75B or 512B, got "${v}"`);
    return n;
  };
}
function positive(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a positive number, got "${v}"`);
    return n;
  };
}
function keyList<K extends string>(name: string, keys: readonly K[]) {
  return (v: string): K[] => {
    const ks = v.split(',').map((s) => s.trim()).filter(Boolean);
    for (const k of ks) if (!(keys as readonly string[]).includes(k)) throw new InvalidArgumentError(`${name}: unknown coefficient "${k}" (choose from ${keys.join(', ')})`);
    return ks as K[];
  };
}
const collect = (v: string, prev: string[] = []) => [...prev, v];

/** A model config from a model directory, a config.json or a preset name (no weights are read). */
function configOf(spec: string, what: string): ModelConfig {
  if (PRESETS[spec]) return presetConfig(spec);
  const file = fs.existsSync(spec) && fs.statSync(spec).isDirectory() ? path.join(spec, 'config.json') : spec;
  if (!fs.existsSync(file)) throw new Err(`${what} ${spec}: no such model directory, config.json or preset`, `presets: ${Object.keys(PRESETS).join(', ')}`);
  return configFromHF(readJson<Record<string, unknown>>(file, `${what} config`, 'ERR_MODEL_CONFIG'), file);
}

const e = (x: number) => x.toExponential(2);
const pctOf = (x: number, t: number) => `${Math.round(100 * x / t)}%`;

function printFit(what: string, r: FitReport): void {
  console.log(`${what} law: ${r.points} points, fitted ${r.free.join(', ')}: RMSE ${r.rmse.toFixed(4)} nats, MAPE ${(100 * r.mape).toFixed(2)}%, ` +
    `max error ${r.maxError.toFixed(4)} nats${r.looMape !== null ? `, leave-one-out MAPE ${(100 * r.looMape).toFixed(2)}%` : ''}`);
}

function printLaw(law: ScalingLaw): void {
  const f = (o: object) => Object.entries(o).map(([k, v]) => `${k}=${Number(v).toPrecision(4)}`).join(' ');
  console.log(`  supervised:   ${f(law.supervised)}`);
  console.log(`  distillation: ${f(law.distillation)}`);
}

function printPlan(p: Plan, tp?: Throughput): void {
  console.log(`budget ${e(p.budget)} FLOPs${tp ? ` (${(p.budget / tp.flopsPerSec / 3600).toPrecision(3)} h at ${(tp.flopsPerSec / 1e9).toFixed(1)} GFLOP/s measured)` : ''}; ` +
    `teacher: ${p.situation} (the paper's "${p.scenario}"); law: ${p.source}`);
  const head = ['student', 'tokens', 'teacher', 'teacher tok', 'L_T', 'L_S distil', 'L supervised', 'better', 'split S/Tinf/Ttrain'];
  const rows = p.students.map((s) => {
    const d = s.distill;
    const tot = d ? d.flops.student + d.flops.teacherInference + d.flops.teacherTraining : 1;
    return [
      s.student.name, d ? formatCount(d.studentTokens) : '-', d?.teacherParams ? formatCount(d.teacherParams) : '-',
      d?.teacherTokens ? formatCount(d.teacherTokens) : '-', d ? d.teacherLoss.toFixed(3) : '-', d ? d.loss.toFixed(4) : 'n/a',
      s.supervised.loss.toFixed(4), s.better, d ? `${pctOf(d.flops.student, tot)}/${pctOf(d.flops.teacherInference, tot)}/${pctOf(d.flops.teacherTraining, tot)}` : '-',
    ];
  });
  const w = head.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j].length)));
  console.log('\n' + head.map((h, j) => h.padStart(w[j])).join('  '));
  for (const r of rows) console.log(r.map((c, j) => c.padStart(w[j])).join('  '));
  console.log('');
  for (const s of p.students) if (s.crossover) console.log(`${s.student.name}: ${s.crossover.note}`);
  const best = p.students.find((s) => s.student.name === p.best.student)!;
  console.log(`\nrecipe at this budget: ${p.best.method === 'distillation'
    ? `distil the ${best.student.name} student on ${formatCount(best.distill!.studentTokens)} tokens from a teacher of loss ${best.distill!.teacherLoss.toFixed(3)}` +
      `${best.distill!.teacherParams ? ` (${formatCount(best.distill!.teacherParams)} parameters${best.distill!.teacherTokens ? ` on ${formatCount(best.distill!.teacherTokens)} tokens` : ''})` : ''}`
    : `pretrain the ${best.student.name} student on ${formatCount(best.supervised.tokens)} tokens without a teacher (supervised beats distillation for every candidate here)`}` +
    `: predicted cross-entropy ${p.best.loss.toFixed(4)}`);
  if (p.optimal) {
    const o = p.optimal;
    console.log(`compute-optimal sizes (${formatCount(FITTED_RANGE.studentParams[0])}–${formatCount(FITTED_RANGE.studentParams[1])}): ` +
      `${o.distill ? `distillation ${formatCount(o.distill.params)} on ${formatCount(o.distill.allocation.studentTokens)} tokens → ${o.distill.allocation.loss.toFixed(4)}` : 'distillation: none fits the budget'}; ` +
      `supervised ${formatCount(o.supervised.params)} on ${formatCount(o.supervised.tokens)} tokens → ${o.supervised.loss.toFixed(4)}`);
  }
  for (const wn of p.warnings) console.log(`warning: ${wn} (the prediction is an extrapolation)`);
}

/** Register `plan` on the program. */
export function registerPlanCommand(program: Command): void {
  program.command('plan')
    .description('distillation scaling-law planner: predicted student loss per allocation of a compute budget, distillation vs supervised pretraining, the compute-optimal recipe')
    .option('--flops <C>', 'compute budget in FLOPs (e.g. 1e21)', count('--flops'))
    .option('--hours <h>', 'compute budget in hours of this machine (its FLOP/s measured on a probe model)', positive('--hours'))
    .option('--flops-per-sec <r>', 'this machine\'s training FLOP/s for --hours, instead of measuring it', count('--flops-per-sec'))
    .option('--probe-model <spec>', 'model directory, config.json or preset to measure --hours on (default: a 25M-parameter, 32k-vocabulary probe)')
    .option('--students <list>', 'candidate student sizes in non-embedding parameters, e.g. 143M,546M,1.82B (default: the paper\'s student sizes)',
      (v: string) => v.split(',').map((s) => count('--students')(s.trim())))
    .option('--student <spec>', 'a candidate student model directory, config.json or preset (size and FLOPs from its config; repeatable)', collect)
    .addOption(new Option('--teacher <situation>', Object.entries(TEACHER_SITUATIONS).map(([k, v]) => `${k}: ${v.meaning}`).join('; ')).choices(Object.keys(TEACHER_SITUATIONS)))
    .option('--teacher-params <n>', 'teacher non-embedding parameters (exists: its inference cost; train: fix its size)', count('--teacher-params'))
    .option('--teacher-tokens <d>', 'teacher training tokens (exists: predicts its loss; train: fix them)', count('--teacher-tokens'))
    .option('--teacher-loss <l>', 'teacher cross-entropy in nats (exists, free)', positive('--teacher-loss'))
    .option('--teacher-model <spec>', 'the teacher model directory or config.json: its size and FLOPs')
    .option('--ctx <n>', 'context length for the FLOPs per token', (v: string) => Math.round(positive('--ctx')(v)), PAPER_SHAPE.nCtx)
    .option('--vocab <n>', 'vocabulary size for the FLOPs of sizes given as counts', (v: string) => Math.round(positive('--vocab')(v)), PAPER_SHAPE.nVocab)
    .option('--law <file>', 'a law file written by --calibrate --save (default: the paper\'s Table 6)')
    .option('--calibrate <runs...>', 'fit the law to these run directories (pretrain/distill --out) or points .jsonl files first')
    .option('--all-evals', 'calibrate on every evaluation of each run, not only the last')
    .option('--fit-supervised <keys>', `supervised coefficients to fit (default all: ${SUPERVISED_KEYS.join(',')})`, keyList('--fit-supervised', SUPERVISED_KEYS))
    .option('--fit-distillation <keys>', `distillation coefficients to fit (default all but c1: ${DISTILLATION_KEYS.filter((k) => k !== 'c1').join(',')})`, keyList('--fit-distillation', DISTILLATION_KEYS))
    .option('--save <file>', 'write the calibrated law here (for --law)')
    .option('--threads <n>', 'kernel threads for the --hours measurement', (v: string) => Math.round(positive('--threads')(v)))
    .option('--bf16', 'measure --hours with bf16 matmuls')
    .option('--json', 'print JSON')
    .action(async (o: PlanOpts) => {
      if (o.flops !== undefined && o.hours !== undefined) throw new Err('give the budget once: --flops or --hours');
      if (o.save && !o.calibrate) throw new Err('--save writes a calibrated law; it needs --calibrate');
      let law: ScalingLaw = o.law ? loadLaw(o.law) : PAPER_LAW;
      let cal: CalibrationResult | undefined;
      if (o.calibrate) {
        const data: CalibrationData = { supervised: [], distill: [] };
        const dirs = o.calibrate.filter((p) => fs.existsSync(p) && fs.statSync(p).isDirectory());
        for (const f of o.calibrate.filter((p) => !dirs.includes(p))) {
          const d = readPointsFile(f);
          data.supervised.push(...d.supervised);
          data.distill.push(...d.distill);
        }
        if (dirs.length) {
          const d = readRunPoints(dirs, { allEvals: o.allEvals });
          data.supervised.push(...d.supervised);
          data.distill.push(...d.distill);
        }
        cal = calibrate(data, { start: law, freeSupervised: o.fitSupervised, freeDistillation: o.fitDistillation });
        law = cal.law;
        if (o.save) saveLaw(o.save, cal);
        if (!o.json) {
          console.log(`calibrated: ${law.source}`);
          if (cal.supervised) printFit('supervised', cal.supervised);
          if (cal.distillation) printFit('distillation', cal.distillation);
          printLaw(law);
          if (o.save) console.log(`saved ${o.save}`);
        }
      }
      const budgetGiven = o.flops !== undefined || o.hours !== undefined;
      if (!budgetGiven) {
        if (cal) {
          if (o.json) console.log(JSON.stringify({ calibration: cal }, null, 2));
          return;
        }
        throw new Err('plan needs a compute budget: --flops C or --hours H (or --calibrate RUN... to fit the law)');
      }
      if (!o.teacher) throw new Err('plan needs the teacher situation: --teacher exists|train|train-cached|free', Object.entries(TEACHER_SITUATIONS).map(([k, v]) => `${k}: ${v.meaning}`).join('; '));
      let tp: Throughput | undefined;
      let budget = o.flops ?? 0;
      if (o.hours !== undefined) {
        if (o.threads) native.setThreads(o.threads);
        if (o.bf16) setDefaultComputeDtype('bf16');
        const rate = o.flopsPerSec;
        tp = rate ? { tokensPerSec: NaN, flopsPerToken: NaN, flopsPerSec: rate, seq: 0, batch: 0, steps: 0, params: 0 }
          : await measureThroughput({ config: o.probeModel ? configOf(o.probeModel, '--probe-model') : PROBE_CONFIG });
        budget = o.hours * 3600 * tp.flopsPerSec;
        if (!o.json && !rate) console.log(`measured: ${tp.tokensPerSec.toFixed(0)} training tokens/s on the ${formatCount(tp.params)}-parameter probe at seq ${tp.seq} = ${(tp.flopsPerSec / 1e9).toFixed(1)} GFLOP/s`);
      }
      const shape = { ...PAPER_SHAPE, nCtx: o.ctx, nVocab: o.vocab };
      const students: StudentCandidate[] = [];
      for (const n of o.students ?? []) students.push({ name: formatCount(n), params: n });
      for (const s of o.student ?? []) {
        const cfg = configOf(s, '--student');
        students.push({ name: s, params: nonEmbeddingParams(cfg), flopsPerToken: configForwardFlops(cfg, o.ctx) });
      }
      if (!students.length) for (const n of [143e6, 198e6, 266e6, 340e6, 546e6, 975e6, 1.82e9, 2.72e9, 4.82e9, 7.75e9]) students.push({ name: formatCount(n), params: n });
      let teacherParams = o.teacherParams, teacherFlops: number | undefined;
      if (o.teacherModel) {
        const cfg = configOf(o.teacherModel, '--teacher-model');
        teacherParams = nonEmbeddingParams(cfg);
        teacherFlops = configForwardFlops(cfg, o.ctx);
      }
      const p = plan({
        budget, students, shape, law,
        teacher: { situation: o.teacher, params: teacherParams, tokens: o.teacherTokens, loss: o.teacherLoss, flopsPerToken: teacherFlops },
      });
      if (o.json) {
        console.log(JSON.stringify({ ...(cal ? { calibration: cal } : {}), ...(tp ? { throughput: tp } : {}), plan: p }, null, 2));
        return;
      }
      printPlan(p, tp);
    });
}
