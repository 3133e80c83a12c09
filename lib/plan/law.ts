/**
 * The distillation scaling law of Busbridge et al., "Distillation Scaling Laws" (ICML 2025, arXiv 2502.08606v2):
 * the supervised law (their eq. 1), the distillation law (eq. 8), the FLOPs per token (App. H) and the compute
 * of each teacher scenario (eq. 9, Table 2). The coefficients are the paper's Table 6 (checked against a second
 * copy of the text and a third-party refit in shared/research/scaling_laws.md). Pure functions: the planner
 * (planner.ts) and the calibration (calibrate.ts) are built on them.
 */
import { ModelConfig, decoderSpec } from '../models/config';
import { nativeParamCount } from '../models/info';

/** L(N, D) = E + (A / N^α + B / D^β)^γ, N non-embedding parameters, D tokens (raw units). */
export interface SupervisedCoefficients {
  E: number; A: number; B: number; alpha: number; beta: number; gamma: number;
}

/**
 * L_S = L_T + L_T^(−c0) · (1 + (L_T / (d1 · L̃_S))^(1/f1))^(−c1·f1) · (A / N_S^α + B / D_S^β)^γ,
 * with L̃_S the student's supervised loss L(N_S, D_S).
 */
export interface DistillationCoefficients {
  c0: number; c1: number; f1: number; d1: number; A: number; B: number; alpha: number; beta: number; gamma: number;
}

export interface ScalingLaw {
  supervised: SupervisedCoefficients;
  distillation: DistillationCoefficients;
  /** where the coefficients come from (printed by the planner) */
  source: string;
}

/**
 * The paper's fitted coefficients: Table 6 of arXiv 2502.08606v2 (supervised: 73 runs, distillation: 697 runs,
 * C4 English, 32k vocabulary, context 4096). The losses they predict are cross-entropies in nats on that data.
 */
export const PAPER_LAW: ScalingLaw = Object.freeze({
  supervised: Object.freeze({ E: 1.220, A: 3355, B: 18186, alpha: 0.408, beta: 0.431, gamma: 0.452 }),
  distillation: Object.freeze({ c0: 2.549, c1: 522.6, f1: 0.090, d1: 1.315, A: 2243, B: 24181, alpha: 0.321, beta: 0.637, gamma: 0.764 }),
  source: 'Busbridge et al. 2025, Distillation Scaling Laws (arXiv 2502.08606v2), Table 6',
}) as ScalingLaw;

export const SUPERVISED_KEYS = ['E', 'A', 'B', 'alpha', 'beta', 'gamma'] as const;
export const DISTILLATION_KEYS = ['c0', 'c1', 'f1', 'd1', 'A', 'B', 'alpha', 'beta', 'gamma'] as const;

/** The supervised law L(N, D). */
export function supervisedLoss(N: number, D: number, c: SupervisedCoefficients = PAPER_LAW.supervised): number {
  return c.E + Math.pow(c.A / Math.pow(N, c.alpha) + c.B / Math.pow(D, c.beta), c.gamma);
}

/** log(1 + e^x) without overflow */
function softplus(x: number): number {
  return x > 30 ? x : Math.log1p(Math.exp(x));
}

/**
 * The middle factor of the distillation law, (1 + (L_T / (d1 · L̃_S))^(1/f1))^(−c1·f1): about 1 while the
 * teacher is stronger than d1 × the student's own capacity, collapsing to 0 once it is weaker (the student
 * then copies the teacher: L_S → L_T).
 */
export function capacitySwitch(LT: number, LsSup: number, d: DistillationCoefficients = PAPER_LAW.distillation): number {
  const x = Math.log(LT / (d.d1 * LsSup)) / d.f1;
  return Math.exp(-d.c1 * d.f1 * softplus(x));
}

/** The distillation law: the student's cross-entropy after distilling on D_S tokens from a teacher of loss L_T. */
export function distilledLoss(NS: number, DS: number, LT: number, law: ScalingLaw = PAPER_LAW): number {
  const LsSup = supervisedLoss(NS, DS, law.supervised);
  const d = law.distillation;
  const K = Math.pow(d.A / Math.pow(NS, d.alpha) + d.B / Math.pow(DS, d.beta), d.gamma);
  return LT + Math.pow(LT, -d.c0) * capacitySwitch(LT, LsSup, d) * K;
}

/** Model shape assumed by the paper's F(N) (App. H): ρ = d_model / n_layers, ω = 2 + 2/g_size + n_ffn·ρ_ffn. */
export interface FlopShape {
  nCtx: number;
  nVocab: number;
  rho: number;
  omega: number;
}

/** The paper's models: ρ = 128, ω = 12, context 4096, vocabulary 32768. */
export const PAPER_SHAPE: FlopShape = Object.freeze({ nCtx: 4096, nVocab: 32768, rho: 128, omega: 12 });

/** σ1 = (ρ·ω²)^(−1/3) and σ2 = (ρ/ω)^(1/3) of the paper's F(N) */
export function flopSigmas(shape: FlopShape = PAPER_SHAPE): { sigma1: number; sigma2: number } {
  return { sigma1: Math.pow(shape.rho * shape.omega * shape.omega, -1 / 3), sigma2: Math.cbrt(shape.rho / shape.omega) };
}

/**
 * Forward FLOPs per token of a model of N non-embedding parameters in the paper's shape:
 * F(N) = 2N·(1 + σ1·n_ctx / N^(1/3) + σ2·n_vocab / N^(2/3)), i.e. 2N + 2·n_layers·n_ctx·d_model (attention)
 * + 2·n_vocab·d_model (the head) with d_model = (ρN/ω)^(1/3). Training costs 3F per token.
 */
export function forwardFlopsPerToken(N: number, shape: FlopShape = PAPER_SHAPE): number {
  const { sigma1, sigma2 } = flopSigmas(shape);
  return 2 * N * (1 + sigma1 * shape.nCtx / Math.cbrt(N) + sigma2 * shape.nVocab / Math.pow(N, 2 / 3));
}

/** Non-embedding parameters of a model: everything but the token (and learned position) embeddings and an untied head. */
export function nonEmbeddingParams(cfg: ModelConfig): number {
  const sp = decoderSpec(cfg);
  const emb = sp.vocabSize * sp.hiddenSize * (sp.tieWordEmbeddings ? 1 : 2) + (sp.learnedPositions ? sp.maxPositions * sp.hiddenSize : 0);
  return nativeParamCount(cfg) - emb;
}

/**
 * Forward FLOPs per token of an actual model at context nCtx, counted the way F(N) counts them: two per
 * multiply-add of every non-embedding weight, 2·n_ctx·(heads·head_dim) per layer for the attention scores and
 * their weighted sum, and 2·vocab·d for the LM head. For a model in the paper's shape it equals F(N).
 */
export function configForwardFlops(cfg: ModelConfig, nCtx: number): number {
  const sp = decoderSpec(cfg);
  return 2 * nonEmbeddingParams(cfg) + 2 * sp.numLayers * nCtx * sp.numHeads * sp.headDim + 2 * sp.vocabSize * sp.hiddenSize;
}

/** The paper's compute scenarios (Table 2): which teacher costs the budget pays. */
export type TeacherSituation = 'free' | 'exists' | 'train-cached' | 'train';

export const TEACHER_SITUATIONS: Record<TeacherSituation, { inference: 0 | 1; pretraining: 0 | 1; paper: string; meaning: string }> = {
  free: { inference: 0, pretraining: 0, paper: 'best case (fully amortised teacher)', meaning: 'the teacher and its logits cost nothing; its loss is chosen freely' },
  exists: { inference: 1, pretraining: 0, paper: 'teacher inference', meaning: 'the teacher exists; the budget pays for its logits' },
  'train-cached': { inference: 0, pretraining: 1, paper: 'teacher pretraining', meaning: 'the teacher is trained within the budget; its logits are stored and shared by many students' },
  train: { inference: 1, pretraining: 1, paper: 'teacher pretraining + inference', meaning: 'one teacher is trained for this one student, and its logits are paid for' },
};

/** Total FLOPs (eq. 9): 3·F(N_S)·D_S + F(N_T)·(δ_Lgt·D_S + δ_Pre·3·D_T). */
export function distillationFlops(o: { studentFlops: number; studentTokens: number; teacherFlops: number; teacherTokens: number; situation: TeacherSituation }): { total: number; student: number; teacherInference: number; teacherTraining: number } {
  const s = TEACHER_SITUATIONS[o.situation];
  const student = 3 * o.studentFlops * o.studentTokens;
  const teacherInference = s.inference * o.teacherFlops * o.studentTokens;
  const teacherTraining = s.pretraining * 3 * o.teacherFlops * o.teacherTokens;
  return { total: student + teacherInference + teacherTraining, student, teacherInference, teacherTraining };
}

/**
 * The region the paper fitted: students 143M–7.75B, teachers to 12.6B, teacher losses about 1.9–2.8, and
 * "data of a few billion to 512B tokens" (its §1); minTokens takes "a few" as 2B.
 */
export const FITTED_RANGE = Object.freeze({
  studentParams: [143e6, 7.75e9] as const,
  teacherParams: [143e6, 12.6e9] as const,
  teacherLoss: [1.9, 2.8] as const,
  minTokens: 2e9,
  maxTokens: 512e9,
});

const fmt = (x: number) => formatCount(x);

/** Warnings for inputs outside the fitted region (predictions there are extrapolations). */
export function rangeWarnings(o: { studentParams?: number; studentTokens?: number; teacherParams?: number; teacherLoss?: number; teacherTokens?: number }): string[] {
  const w: string[] = [];
  const R = FITTED_RANGE;
  const out = (x: number | undefined, [lo, hi]: readonly [number, number]) => x !== undefined && (x < lo * 0.999 || x > hi * 1.001);
  if (out(o.studentParams, R.studentParams)) w.push(`student ${fmt(o.studentParams!)} parameters is outside the fitted ${fmt(R.studentParams[0])}–${fmt(R.studentParams[1])}`);
  if (out(o.teacherParams, R.teacherParams)) w.push(`teacher ${fmt(o.teacherParams!)} parameters is outside the fitted ${fmt(R.teacherParams[0])}–${fmt(R.teacherParams[1])}`);
  if (out(o.teacherLoss, R.teacherLoss)) w.push(`teacher loss ${o.teacherLoss!.toFixed(3)} is outside the fitted ${R.teacherLoss[0]}–${R.teacherLoss[1]}`);
  if (o.studentTokens !== undefined && o.studentTokens < R.minTokens) w.push(`${fmt(o.studentTokens)} student tokens is below the fitted runs' few billion`);
  if (o.studentTokens !== undefined && o.studentTokens > R.maxTokens) w.push(`${fmt(o.studentTokens)} student tokens is past the fitted ${fmt(R.maxTokens)}`);
  if (o.teacherTokens !== undefined && o.teacherTokens > R.maxTokens) w.push(`${fmt(o.teacherTokens)} teacher tokens is past the fitted ${fmt(R.maxTokens)}`);
  return w;
}

/** 1.23e9 → "1.23B", 143e6 → "143M", 2.5e12 → "2.50T" */
export function formatCount(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const units: Array<[number, string]> = [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']];
  for (const [u, s] of units) if (Math.abs(x) >= u * 0.9995) return `${Number((x / u).toPrecision(3))}${s}`;
  return x.toPrecision(3);
}

/** "143M", "1.5B", "2e9", "7.75b", "512B" → a number (K, M, B/G, T suffixes); NaN when it is not one */
export function parseCount(s: string): number {
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*$/i.exec(s);
  if (!m) return NaN;
  const mult: Record<string, number> = { '': 1, k: 1e3, m: 1e6, b: 1e9, g: 1e9, t: 1e12 };
  return Number(m[1]) * mult[m[2].toLowerCase()];
}
