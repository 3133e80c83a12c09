/**
 * Error type shared by the whole undo-native toolkit.
 *
 * Anything that goes wrong because of *user input* (a missing or corrupt file,
 * a bad option value, an unsupported model layout, ...) is reported as an
 * `UndoError` with a stable `code` (ERROR_CODES). The CLI catches these, prints
 * `error: <message>`, the hint when there is one, and `code: ERR_...`, and exits
 * with exitStatus(code) instead of dumping a stack trace. Any other exception is
 * treated as a bug (exit 70; UNDO_DEBUG=1 shows its stack).
 *
 * Messages should name the offending file, field or value so that the user can
 * act on them without reading the source.
 */

/**
 * The stable codes of {@link UndoError} (`err.code`): what kind of input or condition went wrong. Code on them,
 * not on message text; messages may be reworded, codes are part of the API. The CLI prints the code on the last
 * line of an error and exits with {@link exitStatus}.
 */
export const ERROR_CODES = {
  ERR_ARGUMENT: 'an option or argument has a bad value or type (a CLI flag, an API option, a method name)',
  ERR_SHAPE: 'arrays given to the API have the wrong length or shape for the dimensions given with them',
  ERR_NOT_FOUND: 'a file or directory the call names does not exist',
  ERR_IO: 'a file could not be read or written (permissions, a directory where a file should be, an I/O error)',
  ERR_DISK_FULL: 'the disk is full (ENOSPC); the previous save is kept',
  ERR_MODEL_CONFIG: 'config.json or a model config is invalid, unsupported or inconsistent with the weights',
  ERR_SAFETENSORS: 'a safetensors file or its index is malformed, truncated, or holds the wrong tensors, shapes or dtypes',
  ERR_TOKENIZER: 'tokenizer.json / tokenizer_config.json cannot be read, or two tokenizers differ where they must agree',
  ERR_DATA: 'a data file (text, JSONL, chat messages, a chat template) is malformed or cannot be used',
  ERR_CHECKPOINT: 'a training checkpoint (trainer_state.json, optimizer.safetensors) is missing, malformed, or from another run',
  ERR_TEACHER_STORE: 'a teacher store or kNN store (manifest, shards, checksums) is malformed or does not fit the run',
  ERR_GGUF: 'a GGUF export cannot be made for this model or tokenizer',
  ERR_NONFINITE: 'a loss or gradient became NaN or infinite',
  ERR_NATIVE: 'the native addon cannot be loaded or this CPU lacks the instruction set asked for',
  ERR_CUDA: 'the CUDA backend is not built, finds no GPU, or a CUDA call failed',
  ERR_OUT_OF_MEMORY: 'an allocation larger than this machine can give was asked for',
} as const;

/** One of {@link ERROR_CODES}. */
export type UndoErrorCode = keyof typeof ERROR_CODES;

/** Extra information that may accompany an {@link UndoError}. */
export interface UndoErrorOptions {
  /** A short suggestion telling the user how to fix the problem. */
  hint?: string;
  /** The underlying error, if this one wraps another. */
  cause?: unknown;
  /** The error's code (default: the class's {@link UndoError.defaultCode}, ERR_ARGUMENT for UndoError itself). */
  code?: UndoErrorCode;
  /** The file the error is about, where there is one. */
  file?: string;
  /** The field (JSON key, tensor name, option) the error is about, where there is one. */
  field?: string;
}

export class UndoError extends Error {
  /** The code of errors of this class that name none (subclasses made by {@link errorClass} set their own). */
  static readonly defaultCode: UndoErrorCode = 'ERR_ARGUMENT';
  /** What kind of problem this is: one of {@link ERROR_CODES}, stable across releases. */
  readonly code: UndoErrorCode;
  /** Optional suggestion for fixing the problem (printed by the CLI as `hint: ...`). */
  readonly hint?: string;
  /** The file the error is about, if any. */
  readonly file?: string;
  /** The field the error is about, if any. */
  readonly field?: string;

  /**
   * @param message what went wrong, naming the file / field / value involved.
   * @param hintOrOptions either the hint string itself or `{ hint, cause, code, file, field }`.
   */
  constructor(message: string, hintOrOptions?: string | UndoErrorOptions) {
    const opts: UndoErrorOptions =
      typeof hintOrOptions === 'string' ? { hint: hintOrOptions } : hintOrOptions ?? {};
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'UndoError';
    this.code = opts.code ?? (new.target as typeof UndoError).defaultCode ?? 'ERR_ARGUMENT';
    if (opts.hint !== undefined) this.hint = opts.hint;
    if (opts.file !== undefined) this.file = opts.file;
    if (opts.field !== undefined) this.field = opts.field;
    // Keep `instanceof` working even when compiled to older targets.
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

/**
 * An UndoError class whose errors have `code` unless they name another: each module throws through one
 * (`const Err = errorClass('ERR_SAFETENSORS')`), so every error it raises has its module's code by default.
 */
export function errorClass(code: UndoErrorCode): typeof UndoError {
  return class extends UndoError {
    static override readonly defaultCode: UndoErrorCode = code;
  };
}

/**
 * The CLI's exit status for an error: 1 for bad input (every code about what the user gave), 3 when the
 * environment lacks something (ERR_NATIVE, ERR_CUDA), 4 for the system's I/O (ERR_IO, ERR_DISK_FULL,
 * ERR_OUT_OF_MEMORY), 70 for anything that is not an UndoError (a bug: please report it). 130 (Ctrl-C) is
 * set by the commands themselves.
 */
export function exitStatus(e: unknown): number {
  if (!(e instanceof UndoError)) return 70;
  switch (e.code) {
    case 'ERR_NATIVE':
    case 'ERR_CUDA':
      return 3;
    case 'ERR_IO':
    case 'ERR_DISK_FULL':
    case 'ERR_OUT_OF_MEMORY':
      return 4;
    default:
      return 1;
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
