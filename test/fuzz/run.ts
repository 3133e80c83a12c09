/**
 * `npm run fuzz -- --seconds N [--seed S] [--target NAME]`: the parsers' fuzz harness (test/fuzz/harness.ts) for N seconds;
 * prints the counts as JSON and writes each failing input to fuzz-failures/<target>-<i>.bin. Exit 1 on a failure.
 */
import * as fs from 'fs';
import * as path from 'path';
import { cleanupFuzz, fuzzTargets, runFuzz } from './harness';

async function main(): Promise<void> {
  const arg = (name: string, dflt: number) => {
    const i = process.argv.indexOf(name);
    const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
    if (!Number.isFinite(v) || v < 0) {
      console.error(`error: ${name} needs a non-negative number`);
      process.exit(2);
    }
    return v;
  };
  const seconds = arg('--seconds', 60), seed = arg('--seed', Date.now() % 1e9);
  const t0 = Date.now();
  const only = process.argv.includes('--target') ? process.argv[process.argv.indexOf('--target') + 1] : '';
  const r = await runFuzz({ seed, seconds, targets: (await fuzzTargets()).filter((t) => t.name.includes(only)) });
  const out = 'fuzz-failures';
  r.failures.forEach((f, i) => {
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, `${f.target.replace(/[^a-z0-9]+/gi, '_')}-${i}.bin`), Buffer.from(f.input, 'base64'));
  });
  console.log(JSON.stringify({ seed, seconds: (Date.now() - t0) / 1000, tried: r.tried, ok: r.ok, refused: r.refused, failures: r.failures.length,
    perTarget: r.perTarget, firstFailures: r.failures.slice(0, 5).map((f) => ({ target: f.target, error: f.error })) }, null, 2));
  cleanupFuzz();
  process.exitCode = r.failures.length ? 1 : 0;
}

main();
