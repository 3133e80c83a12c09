/**
 * The UNDO study's report: report.json (everything), report.md (the table) and pareto.svg (relearned
 * forget accuracy against compute, like the paper's Pareto figure), rendered with Vega-Lite.
 */
import * as path from 'path';
import { writeFileAtomic } from '../core/fsutil';
import { StudyReport } from './study';

const pct = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);

export function reportMarkdown(r: StudyReport): string {
  const budgets = r.study.relearn.budgets;
  const lines = [
    `# UNDO study: ${r.study.name}`,
    '',
    `Preset ${r.study.preset}, seed ${r.study.seed}; ${r.rows.length} models; ${(r.elapsedSec / 60).toFixed(1)} min.`,
    'Accuracies are greedy exact match on arithmetic equations (retain: +, −; forget: ×, ÷). "After attack" is the',
    `attacker's best forget accuracy over the learning-rate sweep (${r.study.relearn.lrs.join(', ')}) within the step budget.`,
    'Robustness = (P_unlearn − P_model) / (P_unlearn − P_oracle), P at the largest budget; compute = distillation tokens ÷ the oracle\'s pretraining tokens.',
    '',
    `| model | retain | forget | ${budgets.map((b) => `forget after ${b}-step attack`).join(' | ')} | compute | robustness |`,
    `|---|---|---|${budgets.map(() => '---|').join('')}---|---|`,
  ];
  for (const row of r.rows) {
    lines.push(`| ${row.name} | ${pct(row.retain)} | ${pct(row.forget)} | ${budgets.map((b) => pct(row.relearned[b])).join(' | ')} | ${row.computeFraction.toFixed(2)} | ${row.robustness === undefined ? 'n/a' : row.robustness.toFixed(2)} |`);
  }
  lines.push('', 'Plot: pareto.svg. Every number above is what this run produced.');
  return lines.join('\n') + '\n';
}

export async function paretoSvg(r: StudyReport): Promise<string> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const vega = require('vega');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const vl = require('vega-lite');
  const budget = Math.max(...r.study.relearn.budgets);
  const values = r.rows.map((row) => ({ model: row.name, kind: row.kind, compute: row.computeFraction, relearned: row.relearned[budget] }));
  // one label per point: models at the same spot (the unlearn-only baselines often are) share it
  const labels = new Map<string, { compute: number; relearned: number; model: string }>();
  for (const v of values) {
    const key = `${v.compute.toFixed(4)}|${v.relearned.toFixed(4)}`;
    const l = labels.get(key);
    if (l) l.model += `, ${v.model.replace(/^unlearn-only \((.*)\)$/, '$1')}`;
    else labels.set(key, { compute: v.compute, relearned: v.relearned, model: v.model });
  }
  const spec = vl.compile({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    width: 480,
    height: 320,
    title: `Relearned forget accuracy after a ${budget}-step attack vs compute`,
    data: { values },
    layer: [
      { mark: { type: 'point', filled: true, size: 90 }, encoding: {
        x: { field: 'compute', type: 'quantitative', title: 'compute (fraction of oracle pretraining)' },
        y: { field: 'relearned', type: 'quantitative', title: 'forget accuracy after attack', scale: { domain: [0, 1] } },
        color: { field: 'kind', type: 'nominal' },
      } },
      { data: { values: [...labels.values()] }, mark: { type: 'text', dx: 6, align: 'left', fontSize: 10 }, encoding: {
        x: { field: 'compute', type: 'quantitative' }, y: { field: 'relearned', type: 'quantitative' }, text: { field: 'model' },
      } },
    ],
  }).spec;
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  return view.toSVG();
}

export async function writeReport(r: StudyReport, dir: string): Promise<void> {
  writeFileAtomic(path.join(dir, 'report.json'), JSON.stringify(r, null, 2) + '\n');
  writeFileAtomic(path.join(dir, 'report.md'), reportMarkdown(r));
  writeFileAtomic(path.join(dir, 'pareto.svg'), await paretoSvg(r));
}
