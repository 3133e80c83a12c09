/**
 * `distill --teacher A --teacher B --features L:L' ...`: multi-teacher feature distillation (PHI-S / RADIO), a thin
 * shell over lib/distill/features.ts. Per teacher: statistics of its layer L' over the training data (one streaming
 * float64 pass, stored in the run directory as feature-stats-teacher-N.json/.f64 and reused), the standardization
 * fitted to them, an adaptor head from the student's width; then training, with each teacher's held-out feature
 * error (FVU in the teacher's own space, cosine) evaluated every --eval-every steps and reported at the end.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Batcher, Document, packDocuments, splitTrainVal } from '../data/datasets';
import { UndoError, errorClass } from '../core/errors';
import { Model } from '../models/model';
import { Adaptor } from '../distill/adaptor';
import { distillFeatures, featureErrors, FeatureTeacher, parseFeaturePair, teacherFeatureStats } from '../distill/features';
import { resolveLayer } from '../distill/knn_store';
import { Standardizer } from '../distill/standardize';
import { evalPackedLoss } from '../train/evaluate';
import { stopTest } from '../train/train';
import type { CliKit } from './unlearn';
import { documentsFrom, packed } from './unlearn';
import { DistillOpts, lossParams, makeStudent, optimCfg, resumedStudent } from './distill';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');
const NotFoundError = errorClass('ERR_NOT_FOUND');

export async function runFeatureDistill(o: DistillOpts, k: CliKit): Promise<void> {
  const dirs = o.teacher ?? [];
  if (!dirs.length) throw new Err('--features needs --teacher: one or more teacher model directories (repeat --teacher)');
  if (o.knnTeacher) throw new Err('--features takes model teachers (--teacher), not a kNN store');
  if (o.topk || o.onPolicy || o.loss.name === 'minillm' || o.loss.name === 'deltakd') throw new Err('--features combines with an online logit loss only (no --topk, --on-policy, minillm or deltakd)');
  const pairs = o.features!.map(parseFeaturePair);
  if (pairs.length !== 1 && pairs.length !== dirs.length) throw new Err(`${pairs.length} --features for ${dirs.length} --teacher: give one pair per teacher, in order (or one for all)`);
  if (o.featureWeights && o.featureWeights.length !== dirs.length) throw new Err(`--feature-weights has ${o.featureWeights.length} weights for ${dirs.length} teachers`);
  const models = dirs.map((d, i) => {
    if (!fs.existsSync(d)) throw new NotFoundError(`--teacher ${d}: no such directory`);
    if (fs.existsSync(path.join(d, 'manifest.json'))) throw new Err(`--teacher ${d}: a top-k store holds logits, not features; feature distillation needs the teacher model (teacher ${i + 1})`);
    return Model.load(d);
  });
  const tok = models[0].tokenizer;
  const student = o.resume ? resumedStudent(o.out) : makeStudent(o.student, tok, o.seed);
  const layers = models.map((m, i) => {
    const p = pairs.length === 1 ? pairs[0] : pairs[i];
    const what = `--features ${p.student}:${p.teacher} (teacher ${i + 1}, ${dirs[i]})`;
    const wrap = (f: () => number, side: string) => {
      try {
        return f();
      } catch (e) {
        throw new Err(`${what}: ${side} ${(e as Error).message}`);
      }
    };
    return { student: wrap(() => resolveLayer(p.student, student.config.numLayers), 'student'), teacher: wrap(() => resolveLayer(p.teacher, m.config.numLayers), 'teacher') };
  });
  const allDocs = documentsFrom(o.data, '--data', o.docs, o.seed, { tokenizer: student.tokenizer });
  const split = o.evalData ? { train: allDocs, val: [] as Document[] } : splitTrainVal(allDocs, o.valFraction, o.seed);
  const evalDocs = o.evalData ? documentsFrom(o.evalData, '--eval-data', Math.max(200, Math.round(o.docs * o.valFraction)), o.seed + 1, { tokenizer: student.tokenizer }) : split.val;
  const data = packed(split.train, student, o.seqLen, o.seed, '--data');
  const evalSet = evalDocs.length ? packDocuments(student.tokenizer, evalDocs.slice(0, 400), o.seqLen, { seed: o.seed }) : undefined;
  const teachers: FeatureTeacher[] = [];
  const statsFiles: string[] = [];
  for (const [i, m] of models.entries()) {
    const name = `feature-stats-teacher-${i + 1}`;
    const { stats, reused } = await teacherFeatureStats(m, layers[i].teacher, data, o.out, name, { maxTokens: o.statsTokens, log: (s) => console.log(s) });
    if (reused) console.log(`${name}: statistics reused from ${path.join(o.out, name)}.json (${stats.count} positions)`);
    statsFiles.push(path.join(o.out, `${name}.json`), path.join(o.out, `${name}.f64`));
    const standardizer = Standardizer.fit(o.standardize, stats, `teacher ${i + 1} (${dirs[i]}) layer ${layers[i].teacher}`);
    teachers.push({
      model: m, studentLayer: layers[i].student, teacherLayer: layers[i].teacher, standardizer, name: dirs[i], weight: o.featureWeights?.[i] ?? 1,
      adaptor: new Adaptor(o.adaptor, student.config.hiddenSize, m.config.hiddenSize, { hidden: o.adaptorHidden, seed: o.seed + 1 + i }),
    });
  }
  const evaluate = async (): Promise<Record<string, number>> => {
    const m: Record<string, number> = {};
    if (!evalSet || evalSet.count === 0) return m;
    m.val_loss = (await evalPackedLoss(student, evalSet)).loss;
    const errs = await featureErrors(student, teachers, evalSet, { featureLoss: o.featureLoss, maxWindows: 128 });
    errs.forEach((e, i) => {
      m[`feat${i + 1}_fvu`] = e.fvu;
      m[`feat${i + 1}_cos`] = e.cosine;
      m[`feat${i + 1}_loss`] = e.loss;
    });
    return m;
  };
  const ui = k.trainingUi(o.steps, o.progress);
  const r = await distillFeatures(student, new Batcher(data, { batchSize: o.batchSize, seed: o.seed }), { ...optimCfg(o), evalEvery: o.evalEvery }, {
    teachers, featureLoss: o.featureLoss, logitLoss: o.loss.name as Exclude<DistillOpts['loss']['name'], 'minillm'>, logitWeight: o.logitWeight, hardWeight: o.hardWeight,
    temperature: o.temperature, params: lossParams(o), carryFiles: statsFiles, outDir: o.out, resume: o.resume,
    meta: { kind: 'distill-features', teachers: dirs, standardize: o.standardize, features: o.features, loss: o.logitWeight > 0 ? o.loss.name : null },
    ...ui.hooks,
    evaluate,
    stopWhen: o.stopWhen ? stopTest(o.stopWhen) : undefined,
  });
  ui.stop();
  if (r.interrupted) {
    console.log(`interrupted at step ${r.state.step}: checkpoint saved in ${o.out}; continue with --resume`);
    process.exitCode = 130;
    return;
  }
  console.log(`feature-distilled ${r.state.step} steps (${o.standardize}, ${o.adaptor} adaptors, ${o.featureLoss}${o.logitWeight > 0 ? `, + ${o.logitWeight}·${o.loss.name}` : ''}${o.hardWeight > 0 ? `, + ${o.hardWeight}·CE` : ''}); ` +
    `${dirs.length} teacher${dirs.length > 1 ? 's' : ''} → student ${(student.numParams() / 1e6).toFixed(2)}M parameters; saved in ${o.out} (adaptors.safetensors, feature_distill.json)`);
  const ev = r.lastEval ?? {};
  if (ev.val_loss !== undefined) console.log(`student val_loss ${ev.val_loss.toFixed(4)}`);
  for (const [i, t] of teachers.entries()) {
    const fvu = ev[`feat${i + 1}_fvu`], cos = ev[`feat${i + 1}_cos`];
    console.log(`teacher ${i + 1} (${dirs[i]}, width ${t.model.config.hiddenSize}, student block ${t.studentLayer} → teacher block ${t.teacherLayer}): ` +
      (fvu === undefined ? 'no held-out data' : `held-out FVU ${fvu.toFixed(4)}, cosine ${cos.toFixed(4)}`) +
      (t.standardizer.alpha !== null ? `; α = ${t.standardizer.alpha.toPrecision(4)}` : ''));
  }
}

