/**
 * The CLI's Ctrl-C. The library's jobs take an AbortSignal and never listen to SIGINT (lib/core/progress.ts); the
 * CLI gives every job this one signal: the first Ctrl-C aborts it (the job saves its checkpoint and the command
 * exits 130 with a "continue with --resume" line), a second one exits at once.
 */
let controller: AbortController | undefined;

export function interruptSignal(): AbortSignal {
  if (!controller) {
    const c = new AbortController();
    controller = c;
    process.on('SIGINT', () => {
      if (c.signal.aborted) process.exit(130);
      c.abort();
    });
  }
  return controller.signal;
}
