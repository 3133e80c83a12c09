/**
 * One full training step (forward, backward, AdamW with clipping) of the `small` preset (6 layers, d = 256,
 * T = 256) in undo-native vs the same model and batch in PyTorch eager (bench/torch_step.py), tokens/s.
 */
import * as path from 'path';
import { presetConfig, Model } from '../lib/models/model';
import { native } from '../lib/core/native';
import { runTorch, timeIt } from './common';

export async function benchTrainStep(opts: { B?: number; T?: number } = {}): Promise<object> {
  const B = opts.B ?? 8;
  const T = opts.T ?? 256;
  const cfg = presetConfig('small');
  const model = Model.create(cfg, { seed: 1 });
  const ids = new Int32Array(B * T).map((_, i) => (i * 7919) % cfg.vocabSize);
  const targets = new Int32Array(B * T).map((_, i) => (i * 104729 + 3) % cfg.vocabSize);
  const step = async () => {
    model.native.zeroGradSync();
    await model.native.trainStep(ids, targets, B, T, null, 0, -100);
    const norm = model.native.gradNormSync();
    await model.native.adamw({ lr: 1e-3, beta1: 0.9, beta2: 0.95, weightDecay: 0, gradScale: Math.min(1, 1 / (norm + 1e-6)) });
  };
  const sec = await timeIt(step, 5);
  const ours = { ms_per_step: sec * 1e3, tokens_per_sec: (B * T) / sec };
  const torch = runTorch([path.join(__dirname, '..', '..', 'bench', 'torch_step.py'),
    JSON.stringify({ config: cfg, B, T, threads: native.getThreads(), warmup: 1, steps: 5 })]) as { tokens_per_sec?: number } | null;
  return {
    preset: 'small', params: model.numParams(), B, T, threads: native.getThreads(), isa: native.getIsa(),
    undo_native: ours,
    pytorch_eager: torch,
    ratio_vs_pytorch: torch && torch.tokens_per_sec ? ours.tokens_per_sec / torch.tokens_per_sec : null,
  };
}
