/**
 * Small filesystem helpers: crash-safe ("atomic") writes and JSON reading with
 * error messages that name the file.
 *
 * Atomic write protocol (POSIX):
 *   1. write everything to `<path>.tmp-<pid>-<random>` in the *same* directory
 *      (so the final rename never crosses a filesystem boundary),
 *   2. fsync the temporary file so its bytes are on disk,
 *   3. rename it over `<path>` (atomic: readers see the old or the new file,
 *      never a half-written one),
 *   4. fsync the directory so the rename itself survives a power loss.
 * If anything fails the temporary file is removed and an UndoError naming the
 * destination is thrown.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as crypto from 'crypto';
import { UndoError, UndoErrorCode, describeError, errorClass } from './errors';

/** Errors of this module: code ERR_IO unless one names another. */
const Err = errorClass('ERR_IO');
const DiskFullError = errorClass('ERR_DISK_FULL');
const NotFoundError = errorClass('ERR_NOT_FOUND');
const ArgumentError = errorClass('ERR_ARGUMENT');

/**
 * Crash injection for the kill tests (test/kill.test.ts), as SQLite's crash tests do: with
 * UNDO_CRASH_AT=POINT:N the process kills itself with SIGKILL the Nth time it reaches POINT, where POINT is
 * `write` (an atomic file's temporary half written, before fsync and rename) or `swap` (saveDirAtomic between
 * moving the old directory aside and moving the new one in). Without the variable this is one comparison.
 */
const CRASH_AT = /^(write|swap):(\d+)$/.exec(process.env.UNDO_CRASH_AT ?? '');
let crashCount = 0;
function crashPoint(point: 'write' | 'swap'): void {
  if (CRASH_AT && CRASH_AT[1] === point && ++crashCount === Number(CRASH_AT[2])) process.kill(process.pid, 'SIGKILL');
}

/** ENOSPC or EDQUOT, on the error or the error it wraps (UndoError's cause). */
export function diskFullCode(e: unknown): string | undefined {
  for (let x = e, i = 0; x && i < 4; x = (x as { cause?: unknown }).cause, i++) {
    const code = (x as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return code;
  }
  return undefined;
}

/** The UndoError of a failed write: a full disk says so, and that what was saved before is untouched. */
function writeError(filePath: string, e: unknown): UndoError {
  const code = diskFullCode(e);
  if (code) {
    return new DiskFullError(`cannot write ${filePath}: the disk is full (${code})`,
      { hint: 'free some space or choose an --out on another disk; files saved before are intact (nothing was replaced)', cause: e });
  }
  return new Err(`cannot write ${filePath}: ${describeError(e)}`, { cause: e });
}

/** Append to a log file (e.g. metrics.jsonl); a failure (a full disk included) is an UndoError naming the file. */
export function appendFileOrThrow(filePath: string, data: string): void {
  try {
    fs.appendFileSync(filePath, data);
  } catch (e) {
    throw writeError(filePath, e);
  }
}

/** Data accepted by {@link writeFileAtomic}: one buffer/string, or a list of chunks written back to back. */
export type AtomicData = Buffer | Uint8Array | string | ReadonlyArray<Uint8Array>;

/** Write `buf` fully at the current file position (writeSync may write less than asked). */
function writeAll(fd: number, buf: Uint8Array): void {
  // Large chunks are written in slices: some platforms reject single writes > 2 GiB.
  const MAX_CHUNK = 1 << 30;
  let off = 0;
  while (off < buf.byteLength) {
    const len = Math.min(MAX_CHUNK, buf.byteLength - off);
    const n = fs.writeSync(fd, buf, off, len);
    if (n <= 0) throw new Error(`write returned ${n}`);
    off += n;
  }
}

/** fsync a directory; silently skipped where the platform cannot do it (e.g. Windows). */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EACCES' && code !== 'EBADF') {
      throw e;
    }
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Atomically replace `filePath` with `data`. The parent directory is created if
 * needed. A list of chunks is written sequentially without concatenating it,
 * so very large payloads (e.g. safetensors files) are never copied in memory.
 */
export function writeFileAtomic(filePath: string, data: AtomicData, opts: { mode?: number } = {}): void {
  const chunks: ReadonlyArray<Uint8Array> =
    typeof data === 'string' ? [Buffer.from(data, 'utf8')] : data instanceof Uint8Array ? [data] : data;
  writeFileAtomicStream(filePath, (write) => {
    for (const chunk of chunks) write(chunk);
  }, opts);
}

/**
 * Atomically replace `filePath` with what `fill` writes, chunk by chunk (`write` may be called any number of
 * times; each chunk is on its way to the file when it returns, so the caller may reuse its buffer). Same
 * protocol as {@link writeFileAtomic}: a temporary sibling, fsynced, renamed over `filePath`, the directory
 * fsynced; if `fill` throws, the temporary file is removed and nothing is left behind. An UndoError from
 * `fill` is rethrown as it is; other errors are wrapped in one naming the destination.
 */
export function writeFileAtomicStream(filePath: string, fill: (write: (chunk: Uint8Array) => void) => void, opts: { mode?: number } = {}): void {
  const dir = path.dirname(path.resolve(filePath));
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new Err(`cannot create directory ${dir} for ${filePath}: ${describeError(e)}`);
  }
  const tmp = path.join(
    dir,
    `${path.basename(filePath)}.tmp-${process.pid}-${crypto.randomBytes(6).toString('hex')}`,
  );

  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'wx', opts.mode ?? 0o644);
    const out = fd;
    let chunks = 0;
    fill((chunk) => {
      if (chunks++ === 0 && CRASH_AT && chunk.byteLength > 1) {
        writeAll(out, chunk.subarray(0, chunk.byteLength >> 1));
        crashPoint('write');
        writeAll(out, chunk.subarray(chunk.byteLength >> 1));
      } else writeAll(out, chunk);
    });
    if (chunks === 0) crashPoint('write');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, filePath);
  } catch (e) {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing; keep the original error */
      }
    }
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* the temp file may not exist */
    }
    if (e instanceof UndoError) throw e;
    throw writeError(filePath, e);
  }
  try {
    fsyncDir(dir);
  } catch (e) {
    throw new Err(`wrote ${filePath} but could not fsync its directory ${dir}: ${describeError(e)}`, {
      cause: e,
    });
  }
}

/**
 * {@link writeFileAtomic} without blocking the event loop: the same protocol (temporary sibling, fsync, rename,
 * directory fsync) through fs.promises; the chunks must not change until the Promise settles.
 */
export async function writeFileAtomicAsync(filePath: string, data: AtomicData, opts: { mode?: number } = {}): Promise<void> {
  const chunks: ReadonlyArray<Uint8Array> =
    typeof data === 'string' ? [Buffer.from(data, 'utf8')] : data instanceof Uint8Array ? [data] : data;
  const dir = path.dirname(path.resolve(filePath));
  try {
    await fs.promises.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new Err(`cannot create directory ${dir} for ${filePath}: ${describeError(e)}`);
  }
  const tmp = path.join(dir, `${path.basename(filePath)}.tmp-${process.pid}-${crypto.randomBytes(6).toString('hex')}`);
  let fh: fs.promises.FileHandle | undefined;
  try {
    fh = await fs.promises.open(tmp, 'wx', opts.mode ?? 0o644);
    const write = async (buf: Uint8Array) => {
      for (let off = 0; off < buf.byteLength;) {
        const { bytesWritten } = await fh!.write(buf, off, Math.min(1 << 30, buf.byteLength - off));
        if (bytesWritten <= 0) throw new Error(`write returned ${bytesWritten}`);
        off += bytesWritten;
      }
    };
    let n = 0;
    for (const chunk of chunks) {
      if (n++ === 0 && CRASH_AT && chunk.byteLength > 1) {
        await write(chunk.subarray(0, chunk.byteLength >> 1));
        crashPoint('write');
        await write(chunk.subarray(chunk.byteLength >> 1));
      } else await write(chunk);
    }
    if (n === 0) crashPoint('write');
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fs.promises.rename(tmp, filePath);
  } catch (e) {
    if (fh !== undefined) await fh.close().catch(() => undefined);
    await fs.promises.unlink(tmp).catch(() => undefined);
    if (e instanceof UndoError) throw e;
    throw writeError(filePath, e);
  }
  try {
    fsyncDir(dir);
  } catch (e) {
    throw new Err(`wrote ${filePath} but could not fsync its directory ${dir}: ${describeError(e)}`, { cause: e });
  }
}

/** {@link sha256Fd} without blocking the event loop (reads through fs.read on the libuv pool). */
export async function sha256FdAsync(fd: number, size: number, buf: Buffer = Buffer.allocUnsafe(1 << 22)): Promise<string> {
  const h = crypto.createHash('sha256');
  let pos = 0;
  while (pos < size) {
    const n = await readAt(fd, buf, 0, Math.min(buf.length, size - pos), pos);
    if (n <= 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
  }
  return h.digest('hex');
}

/** fs.read as a Promise of the bytes read. */
export function readAt(fd: number, buf: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

/** Atomically write `value` as JSON (pretty-printed with `indent` spaces, trailing newline). */
export function writeJsonAtomic(filePath: string, value: unknown, opts: { indent?: number } = {}): void {
  let text: string;
  try {
    text = JSON.stringify(value, null, opts.indent ?? 2);
  } catch (e) {
    throw new ArgumentError(`cannot serialise JSON for ${filePath}: ${describeError(e)}`, { cause: e });
  }
  if (text === undefined) throw new ArgumentError(`cannot serialise JSON for ${filePath}: value is not JSON-serialisable`);
  writeFileAtomic(filePath, text + '\n');
}

/**
 * Read a whole file, turning filesystem errors into an UndoError that names
 * the file. `what` describes the file for the message (e.g. "model config").
 */
export function readFileOrThrow(filePath: string, what = 'file'): Buffer {
  try {
    return fs.readFileSync(filePath);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`${what} not found: ${filePath}`);
    if (code === 'EISDIR') throw new Err(`${what} ${filePath} is a directory, expected a file`);
    throw new Err(`cannot read ${what} ${filePath}: ${describeError(e)}`, { cause: e });
  }
}

/**
 * Read and parse a JSON file. `what` describes the file for error messages
 * (e.g. "tokenizer.json", "checkpoint state"). A missing file, an unreadable
 * file or invalid JSON each raise an UndoError naming the file (invalid JSON: code `code`).
 */
export function readJson<T = unknown>(filePath: string, what = 'JSON file', code: UndoErrorCode = 'ERR_DATA'): T {
  const text = readFileOrThrow(filePath, what).toString('utf8');
  try {
    // Tolerate a UTF-8 byte-order mark written by some editors.
    return JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text) as T;
  } catch (e) {
    throw new UndoError(`${what} ${filePath} is not valid JSON: ${describeError(e)}`, { code, file: filePath });
  }
}

/** `true` if `p` exists (file, directory or anything else). */
export function pathExists(p: string): boolean {
  try {
    fs.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** sha256 (hex) of the first `size` bytes of an open file, read through `buf`. */
export function sha256Fd(fd: number, size: number, buf: Buffer = Buffer.allocUnsafe(1 << 22)): string {
  const h = crypto.createHash('sha256');
  let pos = 0;
  while (pos < size) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
    if (n <= 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
  }
  return h.digest('hex');
}

/** sha256 (hex) of a whole file, streamed. */
export function sha256File(file: string): string {
  const fd = fs.openSync(file, 'r');
  try {
    return sha256Fd(fd, fs.fstatSync(fd).size);
  } finally {
    fs.closeSync(fd);
  }
}

/** Siblings of `dir` left by saveDirAtomic: `.NAME.tmp-PID-MS` (being built) and `.NAME.old-PID-MS` (being replaced). */
function swapLeftovers(dir: string): { tmp: string[]; old: string[] } {
  const parent = path.dirname(path.resolve(dir));
  const base = path.basename(dir);
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return { tmp: [], old: [] };
  }
  const pick = (kind: string) => names.filter((n) => n.startsWith(`.${base}.${kind}-`) && /^\d+-\d+$/.test(n.slice(base.length + kind.length + 3)))
    .sort((a, b) => Number(a.split('-').pop()) - Number(b.split('-').pop())).map((n) => path.join(parent, n));
  return { tmp: pick('tmp'), old: pick('old') };
}

/** Whether the process that named a leftover (`.NAME.kind-PID-MS`) is another one still running. */
function ownerAlive(file: string): boolean {
  const pid = Number(path.basename(file).split('-').slice(-2)[0]);
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Repairs what a process killed inside saveDirAtomic left (a hot-journal rollback, as SQLite does on open):
 * killed between its two renames, `dir` is missing and its previous contents sit whole in `.NAME.old-*`, which
 * is renamed back; temporaries of killed saves (`.NAME.tmp-*`, never swapped in, so possibly partial) and
 * replaced directories not yet removed are deleted. Leftovers of a save still running in another process are
 * left alone. Called by saveDirAtomic before it writes and by Model.load before it reads, so a directory is
 * always either its previous complete save or its new one. Returns true when `dir` was restored.
 */
export function recoverDir(dir: string): boolean {
  const { tmp, old } = swapLeftovers(dir);
  if (!tmp.length && !old.length) return false;
  let restored = false;
  const stale = (f: string) => !ownerAlive(f);
  if (!fs.existsSync(dir)) {
    const prev = old.filter(stale).pop();
    if (prev) {
      fs.renameSync(prev, dir);
      fsyncDir(path.dirname(path.resolve(dir)));
      restored = true;
    }
  }
  for (const f of [...tmp, ...old]) if (stale(f) && fs.existsSync(f)) fs.rmSync(f, { recursive: true, force: true });
  return restored;
}

/**
 * Build a directory in a temporary sibling (`fill(tmp)`), then swap it into place by rename: readers see the
 * previous directory or the new one, and a process killed between the two renames leaves the previous one
 * whole beside it, which recoverDir (run by the next save or Model.load) puts back.
 */
export function saveDirAtomic(dir: string, fill: (tmp: string) => void): void {
  recoverDir(dir);
  const parent = path.dirname(path.resolve(dir));
  fs.mkdirSync(parent, { recursive: true });
  const base = path.basename(dir);
  const stamp = `${process.pid}-${Date.now()}`;
  const tmp = path.join(parent, `.${base}.tmp-${stamp}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  try {
    fill(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    const full = diskFullCode(e);
    if (full) {
      throw new DiskFullError(`cannot save ${dir}: the disk is full (${full}; ${(e as Error).message})`,
        { hint: `${dir} still holds its previous save, unchanged; free some space (or choose another --out) and run again${fs.existsSync(dir) ? ' (with --resume where the command has it)' : ''}`, cause: e });
    }
    throw e;
  }
  fsyncDir(tmp);
  const old = path.join(parent, `.${base}.old-${stamp}`);
  const had = fs.existsSync(dir);
  if (had) fs.renameSync(dir, old);
  crashPoint('swap');
  fs.renameSync(tmp, dir);
  fsyncDir(parent);
  if (had) fs.rmSync(old, { recursive: true, force: true });
}
