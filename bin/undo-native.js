#!/usr/bin/env node
'use strict';
let cli;
try {
  cli = require('../dist/lib/cli/main.js');
} catch (e) {
  console.error(`error: ${e && e.message ? e.message.split('\n')[0] : e}`);
  if (e && e.hint) console.error(`hint: ${e.hint}`);
  else console.error('hint: run `npm install` (it builds the native addon and compiles the TypeScript)');
  // the addon or the compiled TypeScript is missing: the environment, not the input (see exitStatus in lib/core/errors.ts)
  console.error('code: ERR_NATIVE (exit 3)');
  process.exit(3);
}
cli.main(process.argv);
