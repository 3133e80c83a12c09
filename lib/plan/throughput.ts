/**
 * This machine's training speed, for budgets in hours (`plan --hours H`): a few training steps (forward,
 * backward, AdamW) of a probe model with random weights, timed, converted to FLOP/s with the planner's own
 * FLOP count (3 × configForwardFlops per token). A small probe runs at a lower FLOP rate than a large model
 * would, so budgets from it are on the safe side; --probe-model measures the student itself.
 */
import { Rng } from '../core/rng';
import { Model, ModelConfig } from '../models/model';
import { configForwardFlops } from './law';

/** The default probe: a Llama-style model of about 25M non-embedding parameters and a 32k vocabulary. */
export const PROBE_CONFIG: ModelConfig = {
  family: 'llama', hiddenSize: 512, numLayers: 8, numHeads: 8, numKvHeads: 8, headDim: 64, intermediateSize: 1376,
  maxPositions: 2048, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, attnLogitSoftcapping: 0,
  finalLogitSoftcapping: 0, queryPreAttnScalar: 0, slidingWindow: 0, activation: 'silu',
  vocabSize: 32768, bosTokenId: 1, eosTokenId: 2, padTokenId: -1,
};

export interface Throughput {
  /** training tokens per second */
  tokensPerSec: number;
  /** FLOPs per training token (3 × the forward count at the probe's sequence length) */
  flopsPerToken: number;
  flopsPerSec: number;
  seq: number;
  batch: number;
  steps: number;
  params: number;
}

/** Time `steps` training steps (after one untimed warm-up step) of a model of `config` at batch × seq tokens. */
export async function measureThroughput(opts: { config?: ModelConfig; seq?: number; batch?: number; steps?: number; seed?: number } = {}): Promise<Throughput> {
  const config = opts.config ?? PROBE_CONFIG;
  const seq = Math.min(opts.seq ?? 256, config.maxPositions);
  const B = opts.batch ?? 2, steps = opts.steps ?? 3;
  const model = Model.create(config, { seed: opts.seed ?? 0 });
  const ids = new Int32Array(B * seq), targets = new Int32Array(B * seq);
  const rng = new Rng(opts.seed ?? 0);
  for (let i = 0; i < ids.length; i++) {
    ids[i] = rng.int(0, config.vocabSize - 1);
    targets[i] = rng.int(0, config.vocabSize - 1);
  }
  const step = async () => {
    await model.native.zeroGrad();
    await model.native.trainStep(ids, targets, B, seq, null, B * seq, -100);
    await model.native.adamw({ lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0, gradScale: 1 });
  };
  await step();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < steps; i++) await step();
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  const tokensPerSec = (steps * B * seq) / sec;
  const flopsPerToken = 3 * configForwardFlops(config, seq);
  return { tokensPerSec, flopsPerToken, flopsPerSec: tokensPerSec * flopsPerToken, seq, batch: B, steps, params: model.numParams() };
}
