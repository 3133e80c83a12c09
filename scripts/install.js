#!/usr/bin/env node
/*
 * npm install: build the CPU addon (node-gyp, as before; a failure fails the install), then the CUDA addon when
 * it can and should be built, which never fails the install.
 *
 *   node scripts/install.js           the `install` script: `node-gyp rebuild`, then CUDA only when nvcc is found
 *                                     and (UNDO_CUDA=1 or nvidia-smi lists a GPU); UNDO_CUDA=0 never builds it.
 *                                     Prints exactly one line about CUDA: built, skipped (why), or failed (why and
 *                                     the log).
 *   node scripts/install.js --cuda    `npm run build:cuda`: the CUDA addon only, forced (as UNDO_CUDA=1), with the
 *                                     build output on the terminal; exits non-zero when it fails.
 *
 * The CUDA addon is CMakeLists.txt built by cmake-js into build-cuda/ (build-cuda/Release/undo_cuda.node); cmake-js
 * downloads no headers because package.json has binary.napi_versions (it uses node-api-headers). Environment:
 * UNDO_CUDA=0|1, CUDACXX (the nvcc to use), UNDO_CUDA_JOBS (parallel compile jobs, default min(cores, 4)),
 * UNDO_CUDA_CMAKE_ARGS (extra -D options, space separated, e.g. "-DUNDO_CUDA_NO_CUBLAS=ON").
 */
'use strict';
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const ROOT = path.join(__dirname, '..');
const OUT = path.join(ROOT, 'build-cuda');
const LOG = path.join(OUT, 'build.log');
const ADDON = path.join(OUT, 'Release', 'undo_cuda.node');
const TAG = 'undo-native:';

function run(cmd, args, opts = {}) {
  return spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', ...opts });
}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function which(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

function findNvcc() {
  if (process.env.CUDACXX) return isExecutable(process.env.CUDACXX) ? process.env.CUDACXX : null;
  const inPath = which('nvcc');
  if (inPath) return inPath;
  for (const dir of [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda']) {
    if (dir && isExecutable(path.join(dir, 'bin', 'nvcc'))) return path.join(dir, 'bin', 'nvcc');
  }
  return null;
}

/** Number of GPUs nvidia-smi lists, or null (with why) when it cannot tell. */
function visibleGpus() {
  const smi = which('nvidia-smi');
  if (!smi) return { n: 0, why: 'no GPU visible (nvidia-smi not found)' };
  const r = run(smi, ['-L'], { timeout: 15000 });
  if (r.error || r.status !== 0) return { n: 0, why: 'no GPU visible (nvidia-smi failed)' };
  const n = (r.stdout || '').split('\n').filter((l) => /^GPU \d+/.test(l)).length;
  return { n, why: n ? '' : 'no GPU visible (nvidia-smi lists none)' };
}

function cmakeJsBin() {
  try {
    return require.resolve('cmake-js/bin/cmake-js', { paths: [ROOT] });
  } catch {
    return null;
  }
}

/** Runs cmd, writing its output to the log (and to the terminal when `show`); resolves { status, signal, error }. */
function runLogged(cmd, args, env, show) {
  return new Promise((resolve) => {
    const log = fs.createWriteStream(LOG);
    log.write(`$ ${cmd} ${args.join(' ')}\n`);
    let child;
    try {
      child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      log.end();
      resolve({ error });
      return;
    }
    for (const [src, dst] of [[child.stdout, process.stdout], [child.stderr, process.stderr]]) {
      src.on('data', (b) => {
        log.write(b);
        if (show) dst.write(b);
      });
    }
    child.on('error', (error) => log.end(() => resolve({ error })));
    child.on('close', (status, signal) => log.end(() => resolve({ status, signal })));
  });
}

/** Build the CUDA addon with cmake-js; resolves { ok, why }. `show`: the build output on the terminal too. */
async function buildCuda(nvcc, show) {
  const cmakeJs = cmakeJsBin();
  if (!cmakeJs) return { ok: false, why: 'cmake-js is not installed (npm install cmake-js)' };
  if (!which('cmake')) return { ok: false, why: 'cmake not found in PATH' };
  fs.mkdirSync(OUT, { recursive: true });
  const jobs = String(Number(process.env.UNDO_CUDA_JOBS) > 0 ? Number(process.env.UNDO_CUDA_JOBS)
    : Math.max(1, Math.min(os.cpus().length, 4)));
  const extra = (process.env.UNDO_CUDA_CMAKE_ARGS || '').split(/\s+/).filter(Boolean)
    .map((a) => (a.startsWith('-D') ? `--CD${a.slice(2)}` : a));
  const args = [cmakeJs, 'build', '--out', OUT, '--parallel', jobs, `--CDCMAKE_CUDA_COMPILER=${nvcc}`, ...extra];
  const r = await runLogged(process.execPath, args, { ...process.env, CUDACXX: nvcc }, show);
  if (r.error) return { ok: false, why: `cmake-js did not run (${r.error.message})` };
  if (r.status !== 0) return { ok: false, why: `cmake-js exited with ${r.status ?? r.signal}` };
  if (!fs.existsSync(ADDON)) return { ok: false, why: `the build finished but ${path.relative(ROOT, ADDON)} is missing` };
  // a broken binary must not crash anyone later: load it in a child process first
  const probe = run(process.execPath, ['-e',
    `const m = require(${JSON.stringify(ADDON)}); const i = m.deviceInfo();` +
    `process.stdout.write(JSON.stringify({count: i.count, name: i.name || '', reason: i.reason || '', gemm: i.gemm}))`],
  { timeout: 60000 });
  if (probe.status !== 0) {
    return { ok: false, why: `the built addon failed to load (${(probe.stderr || '').trim().split('\n').pop() || probe.signal})` };
  }
  let info = {};
  try {
    info = JSON.parse(probe.stdout);
  } catch { /* keep {} */ }
  const dev = info.count > 0 ? `${info.name}` : `no usable device here: ${info.reason || 'unknown'}`;
  return { ok: true, why: `${path.relative(ROOT, ADDON)} (gemm: ${info.gemm || '?'}; ${dev})` };
}

async function cudaOnly() {
  const nvcc = findNvcc();
  if (!nvcc) {
    console.error(`${TAG} cannot build CUDA: nvcc not found (set CUDACXX or put CUDA's bin in PATH)`);
    process.exit(1);
  }
  const r = await buildCuda(nvcc, true);
  if (!r.ok) {
    console.error(`${TAG} CUDA addon build failed: ${r.why}; log: ${path.relative(ROOT, LOG)}`);
    process.exit(1);
  }
  console.log(`${TAG} CUDA addon built: ${r.why}`);
}

async function install() {
  // 1. the CPU addon, exactly as the old "install": "node-gyp rebuild" (npm's PATH resolves node-gyp)
  const gyp = spawnSync('node-gyp rebuild', { cwd: ROOT, stdio: 'inherit', shell: true });
  if (gyp.error || gyp.status !== 0) {
    console.error(`${TAG} building the CPU addon (node-gyp rebuild) failed`);
    process.exit(gyp.status || 1);
  }
  // 2. CUDA, only when asked for or useful, and never fatal
  const want = process.env.UNDO_CUDA;
  if (want === '0') return console.log(`${TAG} CUDA addon skipped: UNDO_CUDA=0`);
  const nvcc = findNvcc();
  if (!nvcc) return console.log(`${TAG} CUDA addon skipped: nvcc not found (CPU only; set CUDACXX or PATH to build it)`);
  if (want !== '1') {
    const gpus = visibleGpus();
    if (!gpus.n) return console.log(`${TAG} CUDA addon skipped: ${gpus.why}; UNDO_CUDA=1 builds it anyway`);
  }
  let r;
  try {
    r = await buildCuda(nvcc, false);
  } catch (e) {
    r = { ok: false, why: e.message };
  }
  if (r.ok) console.log(`${TAG} CUDA addon built: ${r.why}`);
  else console.log(`${TAG} CUDA addon build failed (CPU addon is fine): ${r.why}; log: ${path.relative(ROOT, LOG)}`);
}

(process.argv.includes('--cuda') ? cudaOnly() : install()).catch((e) => {
  console.error(`${TAG} ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
