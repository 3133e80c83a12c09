/**
 * One contract for the long jobs (train / pretrain, distill, unlearn, the UNDO study, relearn, cache-teacher):
 *
 * - progress: `onProgress(p)` receives a {@link JobProgress} after every step (every batch for cache-teacher) and
 *   after every evaluation. Its metric fields are those of the job's metrics.jsonl line (snake_case), beside the
 *   job's name, the stage within it and how far it is (`done` of `total`).
 * - cancelling: `signal` (an AbortSignal) stops the job at the next step boundary. The job then saves what a
 *   resumed run needs (its checkpoint in outDir, the teacher store's finished shards, the study's finished arms)
 *   and RESOLVES with `interrupted: true`; it does not reject. Rerunning it with `resume` (the study and
 *   cache-teacher: the same call) continues where it stopped. A signal already aborted when the job starts makes
 *   it resolve at once, interrupted, after its argument checks.
 * - the library never listens to SIGINT itself: the CLI turns Ctrl-C into the signal (lib/cli/interrupt.ts).
 */

/** The jobs that report progress. */
export type JobName = 'train' | 'distill' | 'unlearn' | 'undo' | 'relearn' | 'cache-teacher';

/** A progress event of a long job. Metric fields are present when the job has them at that point. */
export interface JobProgress {
  job: JobName;
  /** where in the job: the study's arm (e.g. "UNDO α=0.5"), relearn's learning rate ("lr=1e-3"); absent for one-stage jobs */
  stage?: string;
  /** units finished in this stage (optimizer steps; windows for cache-teacher) and the stage's total */
  done: number;
  total: number;
  /** the metrics.jsonl fields */
  step?: number;
  loss?: number;
  lr?: number;
  grad_norm?: number;
  tokens?: number;
  tokens_per_sec?: number;
  elapsed_sec: number;
  /** the evaluation just run (an eval event: the metrics.jsonl line {step, eval}) */
  eval?: Record<string, number>;
}

/** A progress callback that tags every event of an inner job with the outer job's name and stage. */
export function retag(onProgress: ((p: JobProgress) => void) | undefined, job: JobName, stage?: string): ((p: JobProgress) => void) | undefined {
  if (!onProgress) return undefined;
  return (p) => onProgress({ ...p, job, ...(stage !== undefined ? { stage } : {}) });
}
