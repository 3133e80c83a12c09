/**
 * The UNDO study's report: report.json (everything), report.md (the table) and pareto.svg (the attacker's
 * forget score against compute, like the paper's Pareto figure), rendered with Vega-Lite. A study over
 * several seeds gets the same three files for the aggregate: mean ± sample standard deviation per model, and
 * error bars (± 1 sd, both axes) on the plot.
 */
import * as path from 'path';
import { writeFileAtomic } from '../core/fsutil';
import type { AggregateReport, MeanSd, StudyReport } from './study';

type Unit = 'accuracy' | 'loss';

const unitOf = (r: { task?: StudyReport['task'] }): Unit => r.task?.unit ?? 'accuracy';

function fmt(unit: Unit, x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return 'n/a';
  return unit === 'accuracy' ? `${(100 * x).toFixed(1)}%` : x.toFixed(3);
}

function fmtSd(unit: Unit, m: MeanSd): string {
  if (!m.n) return 'n/a';
  return unit === 'accuracy' ? `${(100 * m.mean).toFixed(1)} ± ${(100 * m.sd).toFixed(1)}%` : `${m.mean.toFixed(3)} ± ${m.sd.toFixed(3)}`;
}

const fmtNum = (m: MeanSd, digits = 2) => (m.n ? `${m.mean.toFixed(digits)} ± ${m.sd.toFixed(digits)}` : 'n/a');

function compute(row: { computeFraction: number; tokens?: number }): string {
  if (Number.isFinite(row.computeFraction)) return row.computeFraction.toFixed(2);
  if (row.tokens === undefined) return 'n/a';
  return row.tokens ? `${(row.tokens / 1e6).toFixed(2)}M tok` : '0';
}

/** Data tasks also report next-token accuracies: retain, forget, and forget at the attacker's best point within the largest budget. */
function accuracyHeader(unit: Unit): [string, string] {
  return unit === 'loss' ? [' retain acc | forget acc | forget acc after attack |', '---|---|---|'] : ['', ''];
}

function explain(r: StudyReport | AggregateReport): string[] {
  const unit = unitOf(r);
  const what = unit === 'accuracy'
    ? 'Accuracies are greedy exact match on arithmetic equations (retain: +, −; forget: ×, ÷).'
    : 'Scores are held-out cross-entropies in nats per token (retain: the retain data, forget: the forget data; lower = kept / relearned).';
  return [
    what,
    `"After attack" is the attacker's best forget score over the learning-rate sweep (${r.study.relearn.lrs.join(', ')}) within the step budget.`,
    'Robustness = (P_unlearn − P_model) / (P_unlearn − P_oracle), P at the largest budget (1 = as hard to relearn as the oracle, 0 = as easy as unlearn-only);',
    'compute = distillation tokens ÷ the oracle\'s pretraining tokens (or the tokens themselves where there is no oracle).',
  ];
}

export function reportMarkdown(r: StudyReport): string {
  const unit = unitOf(r);
  const budgets = r.study.relearn.budgets;
  const top = Math.max(...budgets);
  const lines = [
    `# UNDO study: ${r.study.name}`,
    '',
    `${r.task ? `Task ${r.task.name}, ` : ''}preset ${r.study.preset}, seed ${r.study.seed} (attack seed ${r.study.relearn.seed ?? r.study.seed}); ${r.rows.length} models; ${(r.elapsedSec / 60).toFixed(1)} min.`,
    ...explain(r),
    '',
    `| model | retain | forget | ${budgets.map((b) => `forget after ${b}-step attack`).join(' | ')} | compute | robustness |${accuracyHeader(unit)[0]}`,
    `|---|---|---|${budgets.map(() => '---|').join('')}---|---|${accuracyHeader(unit)[1]}`,
  ];
  for (const row of r.rows) {
    const acc = unit === 'loss'
      ? ` ${fmt('accuracy', row.metrics.retain_accuracy)} | ${fmt('accuracy', row.metrics.forget_accuracy)} | ${fmt('accuracy', row.relearnedMetrics?.[top]?.forget_accuracy)} |` : '';
    lines.push(`| ${row.name} | ${fmt(unit, row.retain)} | ${fmt(unit, row.forget)} | ${budgets.map((b) => fmt(unit, row.relearned[b])).join(' | ')} | ${compute(row)} | ${row.robustness === undefined ? 'n/a' : row.robustness.toFixed(2)} |${acc}`);
  }
  lines.push('', timeLine(r), '', 'Plot: pareto.svg. Every number above is what this run produced.');
  return lines.join('\n') + '\n';
}

/** Where the study's time went: unlearning, distillation and attacks (minutes; arms done in an earlier run count their own time). */
function timeLine(r: StudyReport): string {
  const sum = (f: (row: StudyReport['rows'][number]) => number | undefined) => r.rows.reduce((a, row) => a + (f(row) ?? 0), 0) / 60;
  const un = sum((row) => (row.kind === 'unlearn' ? row.seconds?.train : 0));
  const di = sum((row) => (row.kind === 'distill' || row.kind === 'undo' ? row.seconds?.train : 0));
  const at = sum((row) => row.seconds?.attack);
  return `Time: unlearning ${un.toFixed(1)} min, distillation ${di.toFixed(1)} min, attacks ${at.toFixed(1)} min (pretraining, when not cached, comes on top).`;
}

export function aggregateMarkdown(a: AggregateReport): string {
  const unit = unitOf(a);
  const budgets = a.study.relearn.budgets;
  const top = Math.max(...budgets);
  const lines = [
    `# UNDO study: ${a.study.name}, ${a.seeds.length} seeds`,
    '',
    `${a.task ? `Task ${a.task.name}, ` : ''}preset ${a.study.preset}; seeds ${a.seeds.join(', ')} (attack seeds ${a.perSeed.map((r) => r.study.relearn.seed ?? r.study.seed).join(', ')}; each row: mean ± sample standard deviation over the seeds); ${(a.elapsedSec / 60).toFixed(1)} min in all.`,
    ...explain(a),
    'Each seed\'s own table is in seed-N/report.md.',
    '',
    `| model | retain | forget | ${budgets.map((b) => `forget after ${b}-step attack`).join(' | ')} | compute | robustness |${accuracyHeader(unit)[0]}`,
    `|---|---|---|${budgets.map(() => '---|').join('')}---|---|${accuracyHeader(unit)[1]}`,
  ];
  for (const row of a.rows) {
    const acc = unit === 'loss' && row.accuracy
      ? ` ${fmtSd('accuracy', row.accuracy.retain)} | ${fmtSd('accuracy', row.accuracy.forget)} | ${fmtSd('accuracy', row.accuracy.relearned)} |` : '';
    const comp = row.computeFraction.n ? fmtNum(row.computeFraction)
      : row.tokens.n ? `${fmtNum({ ...row.tokens, mean: row.tokens.mean / 1e6, sd: row.tokens.sd / 1e6 })}M tok` : 'n/a';
    lines.push(`| ${row.name} | ${fmtSd(unit, row.retain)} | ${fmtSd(unit, row.forget)} | ${budgets.map((b) => fmtSd(unit, row.relearned[b])).join(' | ')} | ${comp} | ${fmtNum(row.robustness)} |${acc}`);
  }
  lines.push('', ...a.perSeed.map((r) => `Seed ${r.study.seed}: ${timeLine(r).replace(/^Time: /, '')}`), '', 'Plot: pareto.svg (error bars ± 1 sd). Every number above is what these runs produced.');
  return lines.join('\n') + '\n';
}

interface PlotPoint {
  model: string;
  kind: string;
  x: number;
  xsd: number;
  y: number;
  ysd: number;
}

async function renderPareto(points: PlotPoint[], opts: { title: string; xTitle: string; unit: Unit; errorBars: boolean }): Promise<string> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const vega = require('vega');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const vl = require('vega-lite');
  const values = points.map((p) => ({ ...p, xlo: p.x - p.xsd, xhi: p.x + p.xsd, ylo: p.y - p.ysd, yhi: p.y + p.ysd }));
  // one label per point: models at the same spot (the unlearn-only baselines often are) share it
  const labels = new Map<string, { x: number; y: number; model: string }>();
  for (const v of values) {
    const key = `${v.x.toFixed(4)}|${v.y.toFixed(4)}`;
    const l = labels.get(key);
    if (l) l.model += `, ${v.model.replace(/^unlearn-only \((.*)\)$/, '$1')}`;
    else labels.set(key, { x: v.x, y: v.y, model: v.model });
  }
  const yTitle = opts.unit === 'accuracy' ? 'forget accuracy after attack' : 'forget cross-entropy after attack (nats)';
  const y = { field: 'y', type: 'quantitative', title: yTitle, ...(opts.unit === 'accuracy' ? { scale: { domain: [0, 1] } } : { scale: { zero: false } }) };
  const x = { field: 'x', type: 'quantitative', title: opts.xTitle };
  const layer: unknown[] = [];
  if (opts.errorBars) {
    layer.push({ mark: { type: 'rule' }, encoding: { x, y: { field: 'ylo', type: 'quantitative' }, y2: { field: 'yhi' }, color: { field: 'kind', type: 'nominal' } } });
    layer.push({ mark: { type: 'rule' }, encoding: { y, x: { field: 'xlo', type: 'quantitative' }, x2: { field: 'xhi' }, color: { field: 'kind', type: 'nominal' } } });
  }
  layer.push({ mark: { type: 'point', filled: true, size: 90 }, encoding: { x, y, color: { field: 'kind', type: 'nominal' } } });
  layer.push({ data: { values: [...labels.values()] }, mark: { type: 'text', dx: 6, align: 'left', fontSize: 10 }, encoding: {
    x: { field: 'x', type: 'quantitative' }, y: { field: 'y', type: 'quantitative' }, text: { field: 'model' },
  } });
  const spec = vl.compile({ $schema: 'https://vega.github.io/schema/vega-lite/v5.json', width: 480, height: 320, title: opts.title, data: { values }, layer }).spec;
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  return view.toSVG();
}

function xAxis(fractions: number[]): { useTokens: boolean; title: string } {
  const useTokens = fractions.some((f) => !Number.isFinite(f));
  return { useTokens, title: useTokens ? 'distillation tokens (millions)' : 'compute (fraction of oracle pretraining)' };
}

export async function paretoSvg(r: StudyReport): Promise<string> {
  const budget = Math.max(...r.study.relearn.budgets);
  const ax = xAxis(r.rows.map((row) => row.computeFraction));
  const points = r.rows.map((row) => ({
    model: row.name, kind: row.kind, x: ax.useTokens ? (row.tokens ?? 0) / 1e6 : row.computeFraction, xsd: 0, y: row.relearned[budget], ysd: 0,
  }));
  return renderPareto(points, { title: `The attacker's forget score after a ${budget}-step attack vs compute`, xTitle: ax.title, unit: unitOf(r), errorBars: false });
}

export async function aggregateParetoSvg(a: AggregateReport): Promise<string> {
  const budget = Math.max(...a.study.relearn.budgets);
  const ax = xAxis(a.rows.map((row) => (row.computeFraction.n ? row.computeFraction.mean : NaN)));
  const points = a.rows.map((row) => {
    const xs = ax.useTokens ? { mean: row.tokens.n ? row.tokens.mean / 1e6 : 0, sd: row.tokens.n ? row.tokens.sd / 1e6 : 0 } : row.computeFraction;
    return { model: row.name, kind: row.kind, x: xs.mean, xsd: xs.sd, y: row.relearned[budget].mean, ysd: row.relearned[budget].sd };
  });
  return renderPareto(points, {
    title: `The attacker's forget score after a ${budget}-step attack vs compute (${a.seeds.length} seeds, ± 1 sd)`, xTitle: ax.title, unit: unitOf(a), errorBars: true,
  });
}

export async function writeReport(r: StudyReport, dir: string): Promise<void> {
  writeFileAtomic(path.join(dir, 'report.json'), JSON.stringify(r, null, 2) + '\n');
  writeFileAtomic(path.join(dir, 'report.md'), reportMarkdown(r));
  writeFileAtomic(path.join(dir, 'pareto.svg'), await paretoSvg(r));
}

export async function writeAggregate(a: AggregateReport, dir: string): Promise<void> {
  writeFileAtomic(path.join(dir, 'report.json'), JSON.stringify(a, null, 2) + '\n');
  writeFileAtomic(path.join(dir, 'report.md'), aggregateMarkdown(a));
  writeFileAtomic(path.join(dir, 'pareto.svg'), await aggregateParetoSvg(a));
}
