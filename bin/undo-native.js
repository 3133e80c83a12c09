#!/usr/bin/env node
'use strict';
let cli;
try {
  cli = require('../dist/lib/cli/main.js');
} catch (e) {
  console.error(`error: ${e && e.message ? e.message.split('\n')[0] : e}`);
  if (e && e.hint) console.error(`hint: ${e.hint}`);
  else console.error('hint: run `npm install` (it builds the native addon and compiles the TypeScript)');
  process.exit(1);
}
cli.main(process.argv);
