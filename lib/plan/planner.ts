/**
 * The compute-optimal distillation planner (`undo-native plan`): for a compute budget, a teacher situation
 * and candidate student sizes, the predicted student cross-entropy of the best allocation of the budget under
 * the distillation scaling law (law.ts), against supervised pretraining of the same student with the same
 * compute, the budget above which supervised pretraining wins, and the compute-optimal student size.
 * The allocation is the paper's eq. 10 problem (minimise L_S over D_S, N_T, D_T at total FLOPs = C), solved
 * here by a grid with golden-section refinement (deterministic, well under a second).
 */
import { UndoError, errorClass } from '../core/errors';
import { minimize1D, minimizeBox } from '../core/optimize';
import {
  distillationFlops, distilledLoss, FITTED_RANGE, FlopShape, formatCount, forwardFlopsPerToken, PAPER_LAW, PAPER_SHAPE, rangeWarnings,
  ScalingLaw, supervisedLoss, TEACHER_SITUATIONS, TeacherSituation,
} from './law';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

export interface StudentCandidate {
  /** how it is printed: "1.82B", or a model directory */
  name: string;
  /** non-embedding parameters */
  params: number;
  /** forward FLOPs per token; default F(params) in the paper's shape */
  flopsPerToken?: number;
}

export interface TeacherSpec {
  situation: TeacherSituation;
  /** non-embedding parameters (exists: its inference cost; train: a fixed size, else it is chosen) */
  params?: number;
  /** training tokens (exists: gives its loss through the supervised law; train: fixed, else chosen) */
  tokens?: number;
  /** its cross-entropy (exists, free); default: the supervised law at params, tokens (exists) or the optimum (free) */
  loss?: number;
  /** forward FLOPs per token; default F(params) */
  flopsPerToken?: number;
}

export interface PlanOptions {
  /** total FLOPs */
  budget: number;
  students: StudentCandidate[];
  teacher: TeacherSpec;
  law?: ScalingLaw;
  /** shape for F(N) where a size is given as a count */
  shape?: FlopShape;
  /** search the compute-optimal student size too (default true) */
  searchStudent?: boolean;
  /** find the budget where supervised pretraining catches up (default true) */
  crossover?: boolean;
}

export interface DistillAllocation {
  studentTokens: number;
  teacherParams?: number;
  teacherTokens?: number;
  teacherLoss: number;
  /** predicted student cross-entropy */
  loss: number;
  flops: { student: number; teacherInference: number; teacherTraining: number };
}

export interface StudentPlan {
  student: Required<StudentCandidate>;
  /** null where the budget cannot pay for it (a fixed teacher's training costs more than the budget) */
  distill: DistillAllocation | null;
  supervised: { tokens: number; loss: number };
  better: 'distillation' | 'supervised';
  /** supervised loss − distilled loss (positive: distillation is better) */
  advantage: number;
  /** budget where the two trade places within 1e15–1e28 FLOPs (the note says which wins below it; null: neither overtakes) */
  crossover: { flops: number | null; note: string } | null;
  warnings: string[];
}

export interface Plan {
  budget: number;
  situation: TeacherSituation;
  scenario: string;
  source: string;
  students: StudentPlan[];
  /** the candidate and method of the lowest predicted loss */
  best: { student: string; method: 'distillation' | 'supervised'; loss: number };
  /** the compute-optimal student sizes, searched over the fitted student range (143M–7.75B) in the paper's shape */
  optimal?: { distill: { params: number; allocation: DistillAllocation } | null; supervised: { params: number; tokens: number; loss: number } };
  warnings: string[];
}

const LOG_NT = [Math.log(1e7), Math.log(1e13)];
const logit = (p: number) => Math.log(p / (1 - p));
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

function teacherFlops(t: TeacherSpec, shape: FlopShape, params = t.params): number {
  if (t.flopsPerToken !== undefined && params === t.params) return t.flopsPerToken;
  return forwardFlopsPerToken(params!, shape);
}

/** Check a plan's inputs; throws an UndoError naming the field. */
export function validatePlan(o: PlanOptions): void {
  if (!(o.budget > 0) || !Number.isFinite(o.budget)) throw new Err(`budget must be a positive number of FLOPs, got ${o.budget}`);
  if (!o.students.length) throw new Err('plan needs at least one candidate student size');
  for (const s of o.students) if (!(s.params > 0)) throw new Err(`student ${s.name}: parameters must be positive, got ${s.params}`);
  const t = o.teacher;
  if (!(t.situation in TEACHER_SITUATIONS)) throw new Err(`unknown teacher situation "${t.situation}"`, `choose one of: ${Object.keys(TEACHER_SITUATIONS).join(', ')}`);
  const E = (o.law ?? PAPER_LAW).supervised.E;
  if (t.loss !== undefined && !(t.loss > 0)) throw new Err(`teacher loss must be positive, got ${t.loss}`);
  if (t.loss !== undefined && t.loss <= E) throw new Err(`teacher loss ${t.loss} is at or below the law's irreducible loss E = ${E}`);
  if (t.params !== undefined && !(t.params > 0)) throw new Err(`teacher parameters must be positive, got ${t.params}`);
  if (t.tokens !== undefined && !(t.tokens > 0)) throw new Err(`teacher tokens must be positive, got ${t.tokens}`);
  if (t.situation === 'exists') {
    if (t.params === undefined && t.flopsPerToken === undefined) throw new Err('an existing teacher needs its size (--teacher-params or --teacher-model): the budget pays for its logits');
    if (t.loss === undefined && t.tokens === undefined) throw new Err('an existing teacher needs its loss (--teacher-loss) or its training tokens (--teacher-tokens) to predict it');
  }
  if ((t.situation === 'train' || t.situation === 'train-cached') && t.loss !== undefined) {
    throw new Err(`a teacher that is trained within the budget gets its loss from the supervised law; --teacher-loss does not apply to "${t.situation}"`);
  }
}

/**
 * The best distillation allocation of budget C for one student: the student's tokens and, where the teacher
 * is trained within the budget, the teacher's size and tokens. null where nothing is left for the student.
 */
export function bestDistillation(NS: number, FS: number, C: number, t: TeacherSpec, law: ScalingLaw = PAPER_LAW, shape: FlopShape = PAPER_SHAPE): DistillAllocation | null {
  const sit = TEACHER_SITUATIONS[t.situation];
  const mk = (DS: number, LT: number, NT?: number, DT?: number, FT = 0): DistillAllocation => {
    const f = distillationFlops({ studentFlops: FS, studentTokens: DS, teacherFlops: FT, teacherTokens: DT ?? 0, situation: t.situation });
    return { studentTokens: DS, teacherParams: NT, teacherTokens: DT, teacherLoss: LT, loss: distilledLoss(NS, DS, LT, law), flops: { student: f.student, teacherInference: f.teacherInference, teacherTraining: f.teacherTraining } };
  };
  if (t.situation === 'free') {
    const DS = C / (3 * FS);
    if (t.loss !== undefined) return mk(DS, t.loss, t.params, t.tokens);
    const E = law.supervised.E;
    const r = minimize1D((LT) => distilledLoss(NS, DS, LT, law), E + 1e-4, Math.max(E + 1, 3 * supervisedLoss(NS, DS, law.supervised)), { grid: 400 });
    return mk(DS, r.x);
  }
  if (t.situation === 'exists') {
    const FT = teacherFlops(t, shape);
    const LT = t.loss ?? supervisedLoss(t.params!, t.tokens!, law.supervised);
    return mk(C / (3 * FS + FT), LT, t.params, t.tokens, FT);
  }
  // the teacher is trained within the budget: choose its size and its share φ of the compute
  const perStudentToken = (FT: number) => 3 * FS + sit.inference * FT;
  if (t.params !== undefined && t.tokens !== undefined) {
    const FT = teacherFlops(t, shape);
    const left = C - 3 * FT * t.tokens;
    if (!(left > 0)) return null;
    return mk(left / perStudentToken(FT), supervisedLoss(t.params, t.tokens, law.supervised), t.params, t.tokens, FT);
  }
  const evalAt = (NT: number, phi: number) => {
    const FT = teacherFlops(t, shape, NT);
    const DT = t.tokens ?? phi * C / (3 * FT);
    const left = C - 3 * FT * DT;
    if (!(left > 0)) return null;
    return { NT, DT, FT, DS: left / perStudentToken(FT) };
  };
  const loss = (NT: number, phi: number) => {
    const a = evalAt(NT, phi);
    return a ? distilledLoss(NS, a.DS, supervisedLoss(NT, a.DT, law.supervised), law) : Infinity;
  };
  let NT: number, phi: number;
  if (t.params !== undefined) {
    NT = t.params;
    phi = sigmoid(minimize1D((u) => loss(NT, sigmoid(u)), logit(1e-6), logit(1 - 1e-6), { grid: 200 }).x);
  } else if (t.tokens !== undefined) {
    NT = Math.exp(minimize1D((v) => loss(Math.exp(v), 0), LOG_NT[0], LOG_NT[1], { grid: 200 }).x);
    phi = 0;
  } else {
    const r = minimizeBox(([v, u]) => loss(Math.exp(v), sigmoid(u)), [LOG_NT[0], logit(1e-6)], [LOG_NT[1], logit(1 - 1e-6)], { grid: 36 });
    NT = Math.exp(r.x[0]);
    phi = sigmoid(r.x[1]);
  }
  const a = evalAt(NT, phi);
  if (!a) return null;
  return mk(a.DS, supervisedLoss(a.NT, a.DT, law.supervised), a.NT, a.DT, a.FT);
}

/** Supervised pretraining of the student with the whole budget: D = C / 3F(N). */
export function bestSupervised(NS: number, FS: number, C: number, law: ScalingLaw = PAPER_LAW): { tokens: number; loss: number } {
  const D = C / (3 * FS);
  return { tokens: D, loss: supervisedLoss(NS, D, law.supervised) };
}

/**
 * The budget where supervised pretraining and distillation trade places for this student, by a scan of
 * 1e15–1e28 FLOPs (10 points per decade) and bisection of the first change of sign.
 */
export function crossoverBudget(NS: number, FS: number, t: TeacherSpec, law: ScalingLaw = PAPER_LAW, shape: FlopShape = PAPER_SHAPE): { flops: number | null; note: string } {
  const gap = (lc: number) => {
    const C = Math.pow(10, lc);
    const d = bestDistillation(NS, FS, C, t, law, shape);
    return d ? bestSupervised(NS, FS, C, law).loss - d.loss : -Infinity;  // > 0: distillation better
  };
  const lo = 15, hi = 28, step = 0.1;
  const grid: number[] = [];
  for (let lc = lo; lc <= hi + 1e-9; lc += step) grid.push(lc);
  const better = grid.map((lc) => gap(lc) > 0);
  const k = better.findIndex((b, i) => i > 0 && b !== better[i - 1]);
  if (k < 0) {
    return { flops: null, note: better[0] ? 'distillation is better at every budget from 1e15 to 1e28 FLOPs' : 'supervised pretraining is better at every budget from 1e15 to 1e28 FLOPs' };
  }
  // bisect the first change of sign; distillation better below it (better[0]) or above it
  let a = grid[k - 1], b = grid[k];
  for (let i = 0; i < 40; i++) {
    const m = (a + b) / 2;
    if ((gap(m) > 0) === better[0]) a = m; else b = m;
  }
  const C = Math.pow(10, (a + b) / 2);
  const later = better.slice(k).some((x) => x === better[0]) ? ' (the order changes again higher up)' : '';
  return {
    flops: C,
    note: (better[0] ? `distillation wins below ${C.toExponential(2)} FLOPs, supervised pretraining above` : `supervised pretraining wins below ${C.toExponential(2)} FLOPs, distillation above`) + later,
  };
}

/** The plan: every candidate's best distillation and supervised loss at the budget, the best of all, the optimum. */
export function plan(o: PlanOptions): Plan {
  validatePlan(o);
  const law = o.law ?? PAPER_LAW;
  const shape = o.shape ?? PAPER_SHAPE;
  const t = o.teacher;
  const warnings: string[] = [];
  const students: StudentPlan[] = o.students.map((s) => {
    const FS = s.flopsPerToken ?? forwardFlopsPerToken(s.params, shape);
    const d = bestDistillation(s.params, FS, o.budget, t, law, shape);
    const sup = bestSupervised(s.params, FS, o.budget, law);
    const adv = d ? sup.loss - d.loss : -Infinity;
    const w = rangeWarnings({ studentParams: s.params, studentTokens: d?.studentTokens ?? sup.tokens, teacherParams: d?.teacherParams, teacherLoss: d?.teacherLoss, teacherTokens: d?.teacherTokens });
    if (!d) w.push(`the budget does not cover training the fixed teacher (${formatCount(t.params!)} on ${formatCount(t.tokens!)} tokens)`);
    return {
      student: { name: s.name, params: s.params, flopsPerToken: FS },
      distill: d, supervised: sup, better: adv > 0 ? 'distillation' : 'supervised', advantage: adv,
      crossover: o.crossover === false ? null : crossoverBudget(s.params, FS, t, law, shape),
      warnings: w,
    };
  });
  let best: Plan['best'] = { student: '', method: 'supervised', loss: Infinity };
  for (const s of students) {
    if (s.distill && s.distill.loss < best.loss) best = { student: s.student.name, method: 'distillation', loss: s.distill.loss };
    if (s.supervised.loss < best.loss) best = { student: s.student.name, method: 'supervised', loss: s.supervised.loss };
  }
  let optimal: Plan['optimal'];
  if (o.searchStudent !== false) {
    const lnRange: [number, number] = [Math.log(FITTED_RANGE.studentParams[0]), Math.log(FITTED_RANGE.studentParams[1])];
    const rd = minimize1D((v) => bestDistillation(Math.exp(v), forwardFlopsPerToken(Math.exp(v), shape), o.budget, t, law, shape)?.loss ?? Infinity, lnRange[0], lnRange[1], { grid: 60, tol: 1e-6 });
    const rs = minimize1D((v) => bestSupervised(Math.exp(v), forwardFlopsPerToken(Math.exp(v), shape), o.budget, law).loss, lnRange[0], lnRange[1], { grid: 60, tol: 1e-8 });
    const NSd = Math.exp(rd.x), NSs = Math.exp(rs.x);
    const alloc = Number.isFinite(rd.f) ? bestDistillation(NSd, forwardFlopsPerToken(NSd, shape), o.budget, t, law, shape) : null;
    optimal = {
      distill: alloc ? { params: NSd, allocation: alloc } : null,
      supervised: { params: NSs, ...bestSupervised(NSs, forwardFlopsPerToken(NSs, shape), o.budget, law) },
    };
  }
  for (const s of students) for (const w of s.warnings) warnings.push(`${s.student.name}: ${w}`);
  return { budget: o.budget, situation: t.situation, scenario: TEACHER_SITUATIONS[t.situation].paper, source: law.source, students, best, optimal, warnings };
}
