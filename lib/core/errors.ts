/**
 * Error type shared by the whole undo-native toolkit.
 *
 * Anything that goes wrong because of *user input* (a missing or corrupt file,
 * a bad option value, an unsupported model layout, ...) is reported as an
 * `UndoError`. The CLI catches these, prints `error: <message>` (plus the hint,
 * when there is one) and exits with status 1 instead of dumping a stack trace.
 * Any other exception is treated as a bug and shown in full.
 *
 * Messages should name the offending file, field or value so that the user can
 * act on them without reading the source.
 */

/** Extra information that may accompany an {@link UndoError}. */
export interface UndoErrorOptions {
  /** A short suggestion telling the user how to fix the problem. */
  hint?: string;
  /** The underlying error, if this one wraps another. */
  cause?: unknown;
}

export class UndoError extends Error {
  /** Optional suggestion for fixing the problem (printed by the CLI as `hint: ...`). */
  readonly hint?: string;

  /**
   * @param message what went wrong, naming the file / field / value involved.
   * @param hintOrOptions either the hint string itself or `{ hint, cause }`.
   */
  constructor(message: string, hintOrOptions?: string | UndoErrorOptions) {
    const opts: UndoErrorOptions =
      typeof hintOrOptions === 'string' ? { hint: hintOrOptions } : hintOrOptions ?? {};
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'UndoError';
    if (opts.hint !== undefined) this.hint = opts.hint;
    // Keep `instanceof` working even when compiled to older targets.
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

/** Type guard: `true` when `e` is an {@link UndoError}. */
export function isUndoError(e: unknown): e is UndoError {
  return e instanceof UndoError;
}

/**
 * Short human-readable description of an arbitrary thrown value, for embedding
 * into an UndoError message (e.g. the reason a file could not be read).
 */
export function describeError(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    return code && !e.message.includes(code) ? `${code}: ${e.message}` : e.message;
  }
  return String(e);
}
