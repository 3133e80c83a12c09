/**
 * Hot PATE's per-query aggregation in TypeScript: the shared Gumbels (V draws), n coordinated votes over the
 * teachers' logits, the histogram and Confident-GNMax (V normals), against a memcpy of the same n·V logits
 * (the floor of any pass over them) and against the accountant's budget check.
 */
import { aggregateVotes, castVotes, sharedGumbels, voteHistogram } from '../lib/distill/pate';
import { GaussianAccountant } from '../lib/distill/privacy';
import { Rng } from '../lib/core/rng';
import { randomArray, timeIt } from './common';

export async function benchPate(): Promise<object> {
  const rows: object[] = [];
  for (const [n, V] of [[20, 260], [40, 260], [20, 32000], [40, 151936]]) {
    const logits = randomArray(n * V, 1);
    const dst = new Float32Array(n * V);
    const rng = new Rng(2);
    const cfg = { sigma: 0.15 * n, thresholdSigma: 0.3 * n, threshold: 0.6 * n };
    const reps = V > 10000 ? 5 : 200;
    const query = await timeIt(() => {
      for (let r = 0; r < reps; r++) {
        const votes = castVotes('hot', logits, n, V, 1, sharedGumbels(V, rng));
        aggregateVotes(voteHistogram(votes, V), cfg, rng);
      }
    });
    const copy = await timeIt(() => { for (let r = 0; r < reps; r++) dst.set(logits); });
    rows.push({ teachers: n, vocab: V, query_ms: (1e3 * query) / reps, memcpy_ms: (1e3 * copy) / reps, ratio_to_memcpy: query / copy });
  }
  const acc = new GaussianAccountant({ epsilon: 1e9, delta: 1e-5 });
  acc.charge(3);
  const fits = await timeIt(() => { for (let r = 0; r < 100; r++) acc.fits(0.01); });
  return { per_query: rows, budget_check_us: (1e6 * fits) / 100 };
}
