/**
 * The optional CUDA addon (CMakeLists.txt → build-cuda/Release/undo_cuda.node, built by `npm run build:cuda` or by
 * `npm install` on a machine with a GPU) and the choice of device.
 *
 * Nothing here is loaded eagerly: `loadCuda()` first loads the addon in a child process (a broken binary can abort
 * a process, which no try/catch survives), then in this one inside try/catch, and asks it for a device. Every
 * outcome is cached and reported with its reason, never thrown; `resolveDevice()` turns it into the device a
 * command runs on (`--device cpu|cuda|auto`).
 *
 * The addon's kernel functions take host typed arrays with the same signatures as the CPU addon's (lib/core/native.ts),
 * copy them to the GPU, run and copy back: they are for parity tests and benchmarks, not for training loops.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { UndoError, errorClass } from './errors';
import type { AdamWHyper, NativeKdOptions } from './native';
import { guarded, nativeError } from './native';

/** Errors of this module: code ERR_CUDA unless one names another. */
const Err = errorClass('ERR_CUDA');
const ArgumentError = errorClass('ERR_ARGUMENT');

const ROOT = path.join(__dirname, '..', '..', '..');

export interface CudaDeviceInfo {
  /** Devices visible to the CUDA runtime (0 on any error). */
  count: number;
  /** Why count is 0, or why the kernels cannot run ('' when all is well). */
  reason: string;
  driverVersion: number;
  runtimeVersion: number;
  /** 'cublas' or 'tiled' (the build's GEMM backend). */
  gemm: string;
  device?: number;
  name?: string;
  computeCapability?: string;
  multiprocessors?: number;
  totalMemory?: number;
  freeMemory?: number;
  /** A tiny kernel ran and returned the right values (false: e.g. no kernel image for this GPU). */
  kernelsRun?: boolean;
}

/** What undo_cuda.node exports. Kernel functions mirror the CPU addon's; `bf16`/`tiled` options are GPU-only. */
export interface CudaBinding {
  deviceCount(): number;
  deviceInfo(): CudaDeviceInfo;
  gemmBackend(): string;
  /** Losses the CUDA kd kernels implement (dkd and deltakd are not there yet). */
  kdKinds: string[];
  fillRandom(out: Float32Array, seed: number, stream: string, kind: 'normal' | 'uniform', a: number, b: number): void;
  /** w = fround(keep·w + scale·noise) with noise as fillRandom draws it (the fused UNDO noise step). */
  noiseMix(w: Float32Array, seed: number, stream: string, kind: 'normal' | 'uniform', a: number, b: number,
    keep: number, scale: number): void;
  adamwUpdate(param: Float32Array, grad: Float32Array, m: Float32Array, v: Float32Array,
    h: AdamWHyper & { step: number }): void;
  sumSquares(x: Float32Array): number;
  rmsnormForward(rows: number, dim: number, x: Float32Array, w: Float32Array, eps: number, unitOffset: boolean,
    y: Float32Array, rstd: Float32Array | null): void;
  rmsnormBackward(rows: number, dim: number, x: Float32Array, w: Float32Array, rstd: Float32Array,
    unitOffset: boolean, dy: Float32Array, dx: Float32Array, accumulate: boolean, dw: Float32Array | null): void;
  crossEntropy(rows: number, vocab: number, logits: Float32Array, targets: Int32Array, ignoreIndex: number,
    softcap: number, weights: Float32Array | null, loss: Float32Array, dlogits: Float32Array | null,
    opts?: { bf16?: boolean }): void;
  gemm(ta: boolean, tb: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, lda: number,
    B: Float32Array, ldb: number, beta: number, C: Float32Array, ldc: number, opts?: { tiled?: boolean }): void;
  kdLoss(name: string, opts: NativeKdOptions & { bf16?: boolean }): { loss: number; count: number };
}

export interface CudaStatus {
  /** The loaded addon when a device answers and runs its kernels, else null. */
  binding: CudaBinding | null;
  /** The addon loaded (even if no device answers). */
  loaded: boolean;
  /** The addon file that was tried ('' when none exists). */
  file: string;
  info: CudaDeviceInfo | null;
  /** Why binding is null ('' when it is not). */
  reason: string;
}

/** Candidate addon files, in order: UNDO_CUDA_ADDON, then the cmake-js output, then build/Release. */
export function cudaAddonCandidates(): string[] {
  const env = process.env.UNDO_CUDA_ADDON;
  if (env) return [path.resolve(env)];
  return [path.join(ROOT, 'build-cuda', 'Release', 'undo_cuda.node'), path.join(ROOT, 'build', 'Release', 'undo_cuda.node')];
}

/** Load `file` in a child process and return its deviceInfo, or the reason it failed (a crash included). */
function probe(file: string): { info: CudaDeviceInfo | null; reason: string } {
  const script = `const m = require(${JSON.stringify(file)}); process.stdout.write(JSON.stringify(m.deviceInfo()));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return { info: null, reason: `could not probe the CUDA addon: ${r.error.message}` };
  if (r.status !== 0) {
    const last = (r.stderr || '').trim().split('\n').filter(Boolean).pop() ?? '';
    const how = r.signal ? `was killed by ${r.signal}` : `exited with ${r.status}`;
    return { info: null, reason: `loading the CUDA addon ${file} ${how}${last ? `: ${last}` : ''}` };
  }
  try {
    return { info: JSON.parse(r.stdout) as CudaDeviceInfo, reason: '' };
  } catch {
    return { info: null, reason: `the CUDA addon probe printed no device info` };
  }
}

let cached: CudaStatus | null = null;

/**
 * Load the CUDA addon once (cached). Never throws: the status says why there is no binding. Set UNDO_CUDA_PROBE=0 to
 * skip the child-process check (it costs one node start, ~50 ms).
 */
/**
 * The CUDA addon's exceptions as UndoErrors: a CUDA / cuBLAS runtime failure is ERR_CUDA (an allocation failure
 * ERR_OUT_OF_MEMORY), a bad argument ERR_SHAPE / ERR_ARGUMENT as for the CPU addon (nativeError); cause kept.
 */
export function cudaError(e: unknown): unknown {
  if (e instanceof UndoError || !(e instanceof Error)) return e;
  if (/out of memory|cudaErrorMemoryAllocation|bad_alloc/i.test(e.message)) return new UndoError(e.message, { code: 'ERR_OUT_OF_MEMORY', cause: e });
  if (/\bcuda|cublas|device|kernel launch|driver/i.test(e.message) && !(e instanceof TypeError)) return new UndoError(e.message, { code: 'ERR_CUDA', cause: e });
  return nativeError(e);
}

function cudaErrors(b: CudaBinding): CudaBinding {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(b)) out[k] = typeof v === 'function' ? guarded(v as (...a: never[]) => unknown, false, cudaError) : v;
  return out as unknown as CudaBinding;
}

export function loadCuda(): CudaStatus {
  if (cached) return cached;
  const file = cudaAddonCandidates().find((f) => fs.existsSync(f)) ?? '';
  const status: CudaStatus = { binding: null, loaded: false, file, info: null, reason: '' };
  cached = status;
  if (!file) {
    status.reason = 'the CUDA addon is not built (npm run build:cuda; it needs nvcc and cmake)';
    return status;
  }
  if (process.env.UNDO_CUDA_PROBE !== '0') {
    const p = probe(file);
    if (!p.info) {
      status.reason = p.reason;
      return status;
    }
  }
  let binding: CudaBinding;
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    binding = cudaErrors(require(file) as CudaBinding);
  } catch (e) {
    status.reason = `could not load the CUDA addon ${file}: ${(e as Error).message}`;
    return status;
  }
  status.loaded = true;
  let info: CudaDeviceInfo;
  try {
    info = binding.deviceInfo();
  } catch (e) {
    status.reason = `the CUDA addon failed to query devices: ${(e as Error).message}`;
    return status;
  }
  status.info = info;
  if (!(info.count > 0)) {
    status.reason = `no CUDA device (${info.reason || 'none visible'})`;
    return status;
  }
  if (info.kernelsRun === false) {
    status.reason = `the CUDA kernels do not run on ${info.name ?? 'this device'} (${info.reason}); this build targets sm_90`;
    return status;
  }
  status.binding = binding;
  return status;
}

/** Forget the cached load (tests). */
export function resetCudaForTests(): void {
  cached = null;
}

export type DeviceName = 'cpu' | 'cuda' | 'auto';
export const DEVICE_NAMES: readonly DeviceName[] = ['cpu', 'cuda', 'auto'];

export interface ResolvedDevice {
  /** Where the work runs. */
  kind: 'cpu' | 'cuda';
  /** What was asked for. */
  requested: DeviceName;
  /** The CUDA binding when kind is 'cuda'. */
  cuda: CudaBinding | null;
  info: CudaDeviceInfo | null;
  /** For 'auto' falling back to the CPU: the one-line notice (also passed to `notice`). */
  notice?: string;
}

/**
 * The device for `--device cpu|cuda|auto` (default 'auto'). 'cpu' never touches CUDA. 'auto' uses the GPU when the
 * CUDA addon loads and a device answers, else the CPU, with a one-line notice (to `notice`, default: stderr).
 * 'cuda' when it is unavailable throws an UndoError saying why.
 */
export function resolveDevice(name: string | undefined = 'auto',
  notice: ((line: string) => void) | null = (line) => process.stderr.write(line + '\n')): ResolvedDevice {
  const requested = (name ?? 'auto').toLowerCase();
  if (!DEVICE_NAMES.includes(requested as DeviceName)) {
    throw new ArgumentError(`unknown device "${name}"`, 'use --device cpu, cuda or auto');
  }
  if (requested === 'cpu') return { kind: 'cpu', requested: 'cpu', cuda: null, info: null };
  const st = loadCuda();
  if (st.binding) return { kind: 'cuda', requested: requested as DeviceName, cuda: st.binding, info: st.info };
  if (requested === 'cuda') {
    throw new Err(`--device cuda: ${st.reason}`,
      'build the CUDA addon on a machine with an NVIDIA GPU (npm run build:cuda), or use --device cpu|auto');
  }
  const line = `undo-native: using the CPU (${st.reason})`;
  if (notice) notice(line);
  return { kind: 'cpu', requested: 'auto', cuda: null, info: st.info, notice: line };
}
