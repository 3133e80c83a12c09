/**
 * `undo-native export --model DIR --gguf OUT.gguf [--type f32|f16|bf16|q8_0]`: a model directory as a GGUF
 * file for llama.cpp, ollama, LM Studio and node-llama-cpp (lib/formats/gguf_model.ts), with its tokenizer
 * and chat template. Bad input fails before anything is written, and the file appears only when complete.
 */
import * as fs from 'fs';
import { Command, Option } from 'commander';
import { UndoError, errorClass } from '../core/errors';
import { GGUF_TYPES } from '../formats/gguf';
import { exportGguf, parseGgufType } from '../formats/gguf_model';
import { Model } from '../models/model';

/** Errors of this module: code ERR_ARGUMENT unless one names another. */
const Err = errorClass('ERR_ARGUMENT');

interface ExportOpts {
  model: string;
  gguf: string;
  type: string;
  name?: string;
  ggufPre?: string;
  json?: boolean;
}

/** Register `export` on the program. */
export function registerExportCommand(program: Command): void {
  program.command('export')
    .description('write a model directory as a GGUF file llama.cpp runs (weights, tokenizer, chat template)')
    .requiredOption('--model <dir>', 'model directory (Hugging Face layout)')
    .requiredOption('--gguf <file>', 'the .gguf file to write')
    .addOption(new Option('--type <type>', `weight encoding of the matrices (${GGUF_TYPES.join(', ')}); norms and biases stay f32`).default('f16'))
    .option('--name <name>', 'general.name in the file (default: the model directory\'s name)')
    .option('--gguf-pre <name>', 'llama.cpp pre-tokenizer name (tokenizer.ggml.pre) for a BPE tokenizer undo-native does not recognise')
    .option('--json', 'print the result as JSON')
    .action((o: ExportOpts) => {
      const type = parseGgufType(o.type);
      if (fs.existsSync(o.gguf) && fs.statSync(o.gguf).isDirectory()) throw new Err(`--gguf ${o.gguf} is a directory; give a file name`);
      const model = Model.load(o.model);
      const r = exportGguf(model, o.gguf, { type, name: o.name, pre: o.ggufPre });
      if (o.json) {
        console.log(JSON.stringify(r, null, 2));
        return;
      }
      console.log(`wrote ${r.file}: ${(r.bytes / 1e6).toFixed(1)} MB, llama.cpp architecture ${r.arch}, ${r.type}, ${r.tensors} tensors, ` +
        `tokenizer ${r.tokenizer.model}${r.tokenizer.pre ? ` (pre ${r.tokenizer.pre})` : ''}`);
      if (r.fallbacks.length) console.log(`  written as f16 (q8_0 needs rows of a multiple of 32): ${r.fallbacks.join(', ')}`);
      for (const n of r.notes) console.log(`  note: ${n}`);
    });
}
