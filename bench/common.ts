/** Shared benchmark helpers: timing, and running the PyTorch side when Debian's python3-torch is present. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';

/** Median seconds of `repeats` runs of fn (after one warm-up run). */
export async function timeIt(fn: () => unknown | Promise<unknown>, repeats = 5): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

/** The python3 that has torch (Debian's /usr/bin/python3 first), or null. */
export function torchPython(): string | null {
  for (const py of ['/usr/bin/python3', 'python3']) {
    if (py.startsWith('/') && !fs.existsSync(py)) continue;
    const r = spawnSync(py, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
    if (r.status === 0) return py;
  }
  return null;
}

/** Run a python script/code with torch and parse its last stdout line as JSON. */
export function runTorch(args: string[], timeoutMs = 600000): unknown {
  const py = torchPython();
  if (!py) return null;
  const r = spawnSync(py, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').slice(-3).join(' ') };
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

/**
 * Which BLAS Debian's torch will call (it links libblas.so.3 through update-alternatives): the reference
 * BLAS is ~10× slower than OpenBLAS, so ratios against it mean little. `apt-get install libopenblas0-pthread`
 * switches it.
 */
export function torchBlas(): string {
  try {
    return fs.realpathSync('/usr/lib/x86_64-linux-gnu/libblas.so.3');
  } catch {
    return 'unknown';
  }
}

/** Deterministic uniform(−1, 1) test data (xorshift32), cheap enough for large benchmark buffers. */
export function randomArray(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    a[i] = (s / 4294967296) * 2 - 1;
  }
  return a;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
