/**
 * Chat and prompt/completion training data, rendered with the model's chat template and masked so
 * that only the assistant's tokens carry loss.
 *
 * Data files (JSONL, one object per line, kind decided per line by its fields):
 *   {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}
 *   {"prompt": "...", "completion": "..."}
 *   {"text": "..."}
 * Other files (.txt) are paragraphs of plain text (lib/data/datasets.ts loadDocuments).
 *
 * Rendering. The template (tokenizer_config.json chat_template, or chat_template.jinja) is run by
 * @huggingface/jinja with messages, bos_token, eos_token, pad_token, unk_token,
 * add_generation_prompt = false (raise_exception() and strftime_now() are the library's own), as
 * transformers' apply_chat_template does. The rendered text is tokenised as is (no specials added: the template
 * writes its own, e.g. bos_token), like apply_chat_template(tokenize=True). The library's
 * str.strip/lstrip/rstrip ignore their argument; patchJinjaStrip() restores Python's behaviour.
 *
 * Assistant spans, by incremental rendering and diffing. For assistant message i:
 *   start       = length of render(messages[0..i), add_generation_prompt = true), which must be a
 *                 prefix of the full render (it is for the usual templates: the generation prompt is
 *                 exactly what precedes an assistant turn);
 *   content end = where the full render and a render with message i's content replaced by a sentinel
 *                 stop agreeing from the back (the common suffix of the two). This holds for templates
 *                 that render a turn differently depending on what follows (Qwen3 writes the reasoning
 *                 of the last turns only, and an empty <think></think> block; Llama 3's template always
 *                 ends with an assistant header), since only message i differs between the two renders.
 * In tokens the turn runs from start through the content to the first special token after it: the
 * turn's end marker (<|im_end|>, <|eot_id|>, <end_of_turn>) is trained on, so the model learns to stop,
 * and nothing after it is. {% generation %} markers are not needed (the jinja library renders their
 * body like any text).
 *
 * Characters to tokens. @huggingface/tokenizers gives no offsets, so a character boundary b is
 * mapped to a token index by tokenising text[0..b): the boundary token index is the length of the
 * common prefix of those ids and the ids of the whole text. At a boundary that falls inside a token
 * (rare: the boundaries sit next to special tokens and newlines) that token goes to the later part.
 *
 * Prompt/completion: with a chat template a user/assistant pair; without one, the plain document
 * encodeDocument(prompt + completion) (EOS appended if the tokenizer adds none), loss on the
 * completion's tokens and the EOS.
 */
import * as path from 'path';
import { Environment, Template } from '@huggingface/jinja';
import { describeError, UndoError, errorClass } from '../core/errors';
import { readFileOrThrow } from '../core/fsutil';
import { loadDocuments, TokenDocument, Document } from './datasets';
import { HFTokenizer } from './hf_tokenizer';
import type { Tokenizer } from './tokenizer';

/** Errors of this module: code ERR_DATA unless one names another. */
const Err = errorClass('ERR_DATA');

/** One chat message. Fields other than role and content (tool_calls, reasoning_content ...) reach the template as they are. */
export interface ChatMessage {
  role: string;
  content: unknown;
  [field: string]: unknown;
}

/** Where one assistant turn lies in a rendered conversation (character offsets). */
export interface AssistantSpan {
  /** End of the generation prompt before the turn: the first character the assistant writes. */
  start: number;
  /** End of the message content; the turn runs on to the first special token after it (its end marker). */
  contentEnd: number;
}

/** A rendered conversation and the character spans of its assistant turns. */
export interface RenderedChat {
  text: string;
  assistant: AssistantSpan[];
}

const templates = new Map<string, Template>();

/** Python's str.strip / lstrip / rstrip: `chars` (a string) or, when null/undefined, whitespace. */
export function pyStrip(s: string, chars: unknown, left: boolean, right: boolean): string {
  if (typeof chars !== 'string') return left && right ? s.trim() : left ? s.trimStart() : s.trimEnd();
  let a = 0;
  let b = s.length;
  if (left) while (a < b && chars.includes(s[a])) a++;
  if (right) while (b > a && chars.includes(s[b - 1])) b--;
  return s.slice(a, b);
}

type RuntimeValue = { value: unknown };
let stripPatched = false;

/**
 * @huggingface/jinja 0.5.13 ignores the argument of str.strip/lstrip/rstrip (`content.lstrip('\n')`
 * strips spaces too), which changes what e.g. Qwen3's template renders compared with transformers. This
 * replaces those three string methods with Python's behaviour, on the library's string value class (found
 * through a value of a jinja Environment); if the library's internals differ, it changes nothing.
 */
function patchJinjaStrip(): void {
  if (stripPatched) return;
  stripPatched = true;
  const env = new Environment();
  env.set('s', 'x');
  const sample = env.lookupVariable('s') as unknown as { builtins?: Map<string, unknown> };
  const proto = Object.getPrototypeOf(sample) as object;
  const desc = Object.getOwnPropertyDescriptor(proto, 'builtins');
  const strip = sample.builtins?.get('strip');
  if (!desc?.get || !strip || typeof (sample as RuntimeValue).value !== 'string') return;
  const StringValue = sample.constructor as new (v: string) => unknown;
  const FunctionValue = (strip as object).constructor as new (f: (args: RuntimeValue[]) => unknown) => unknown;
  const original = desc.get;
  const done = new WeakSet<object>();
  Object.defineProperty(proto, 'builtins', {
    configurable: true,
    get(this: RuntimeValue) {
      const map = original.call(this) as Map<string, unknown>;
      if (!done.has(map)) {
        done.add(map);
        const value = this.value as string;
        const method = (left: boolean, right: boolean) => new FunctionValue((args) => new StringValue(pyStrip(value, args[0]?.value, left, right)));
        map.set('strip', method(true, true));
        map.set('lstrip', method(true, false));
        map.set('rstrip', method(false, true));
      }
      return map;
    },
  });
}

/** The chat template of the tokenizer, or an UndoError naming the file that lacks it. */
export function chatTemplateOf(tok: Tokenizer, where: string): string {
  if (tok.chatTemplate) return tok.chatTemplate;
  const file = tok instanceof HFTokenizer ? path.join(path.dirname(tok.source), 'tokenizer_config.json') : undefined;
  throw new Err(`${where}: chat data needs a chat template, but the model's tokenizer has none`,
    file ? `${file} has no "chat_template" (nor is there a chat_template.jinja next to it)`
      : 'the built-in byte tokenizer has no chat template: use a model (or pretrain --tokenizer DIR) whose tokenizer_config.json has a "chat_template"');
}

function compile(template: string, where: string): Template {
  patchJinjaStrip();
  let t = templates.get(template);
  if (!t) {
    try {
      t = new Template(template);
    } catch (e) {
      throw new Err(`${where}: the chat template does not parse: ${describeError(e)}`);
    }
    templates.set(template, t);
  }
  return t;
}

/**
 * Render messages with a chat template (variables as in the module comment). A template that fails
 * raises an UndoError naming `where` and carrying the jinja error.
 */
export function renderChat(template: string, messages: readonly ChatMessage[], tok: Tokenizer, addGenerationPrompt: boolean, where: string): string {
  const t = compile(template, where);
  const s = tok.specialTokens;
  try {
    return t.render({
      messages, add_generation_prompt: addGenerationPrompt,
      bos_token: s.bos ?? '', eos_token: s.eos ?? '', pad_token: s.pad ?? '', unk_token: s.unk ?? '',
    });
  } catch (e) {
    throw new Err(`${where}: the chat template failed to render: ${describeError(e)}`);
  }
}

/** Check a message list: an array of {role: string, content}, with at least one assistant turn. */
export function checkMessages(messages: unknown, where: string): ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) throw new Err(`${where}: "messages" must be a non-empty array of {"role", "content"}`);
  messages.forEach((m, i) => {
    if (!m || typeof m !== 'object' || Array.isArray(m)) throw new Err(`${where}: messages[${i}] is not an object`);
    const role = (m as ChatMessage).role;
    if (typeof role !== 'string' || !role) throw new Err(`${where}: messages[${i}] has no "role"`, 'each message needs "role" ("system", "user", "assistant", ...) and "content"');
    if (!('content' in m)) throw new Err(`${where}: messages[${i}] (${role}) has no "content"`);
  });
  if (!messages.some((m: ChatMessage) => m.role === 'assistant')) {
    throw new Err(`${where}: the conversation has no assistant message, so nothing to train on`, 'chat data is trained on the assistant turns only');
  }
  return messages as ChatMessage[];
}

/** Stands in for an assistant message's content when diffing renders (private-use characters no text starts or ends with). */
const SENTINEL = '\uE000undo-native:assistant-content\uE001';

/** Length of the common prefix of a and b. */
function commonPrefix(a: string, b: string): number {
  let n = 0;
  while (n < a.length && n < b.length && a.charCodeAt(n) === b.charCodeAt(n)) n++;
  return n;
}

/** Length of the common suffix of a and b, at most `max`. */
function commonSuffix(a: string, b: string, max: number): number {
  let n = 0;
  while (n < max && a.charCodeAt(a.length - 1 - n) === b.charCodeAt(b.length - 1 - n)) n++;
  return n;
}

/** Render a conversation and find its assistant spans (see the module comment). */
export function renderWithSpans(template: string, messages: readonly ChatMessage[], tok: Tokenizer, where: string): RenderedChat {
  const text = renderChat(template, messages, tok, false, where);
  const assistant: AssistantSpan[] = [];
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const before = renderChat(template, messages.slice(0, i), tok, true, `${where} (messages[0..${i}) with the generation prompt)`);
    if (!text.startsWith(before)) {
      throw new Err(`${where}: cannot find assistant messages[${i}] in the rendered conversation: the template renders the messages before it differently once more follow`,
        'the chat template must render a conversation prefix (plus the generation prompt) as a prefix of the whole');
    }
    const swapped = messages.map((x, j) => (j === i ? { ...x, content: SENTINEL } : x));
    const other = renderChat(template, swapped, tok, false, `${where} (messages[${i}] content replaced)`);
    const p = commonPrefix(text, other);
    if (p < before.length || !other.includes(SENTINEL)) {
      throw new Err(`${where}: cannot find the content of assistant messages[${i}] in the rendered conversation`,
        'the chat template must write an assistant message\'s content into the text');
    }
    const contentEnd = text.length - commonSuffix(text, other, Math.min(text.length, other.length) - p);
    assistant.push({ start: before.length, contentEnd });
  });
  return { text, assistant };
}

/** Token index of character boundary `b` of `text`, whose ids are `ids` (see the module comment). */
function tokenBoundary(tok: Tokenizer, text: string, ids: Int32Array, b: number): number {
  if (b <= 0) return 0;
  if (b >= text.length) return ids.length;
  const prefix = tok.encode(text.slice(0, b));
  let k = 0;
  while (k < prefix.length && k < ids.length && prefix[k] === ids[k]) k++;
  return k;
}

/**
 * Tokenise text (no specials added) and mark the tokens of the assistant turns for loss: from the turn's
 * start through its content and on to the first special token after the content (the end-of-turn marker:
 * <|eot_id|>, <|im_end|>, <end_of_turn>), but not into the next turn.
 */
export function maskedDocument(tok: Tokenizer, text: string, spans: readonly AssistantSpan[]): TokenDocument {
  const ids = tok.encode(text);
  const loss = new Uint8Array(ids.length);
  const starts = spans.map((sp) => tokenBoundary(tok, text, ids, sp.start));
  spans.forEach((sp, k) => {
    const limit = k + 1 < spans.length ? starts[k + 1] : ids.length;
    let e = tokenBoundary(tok, text, ids, sp.contentEnd);
    for (let j = e; j < limit; j++) {
      if (tok.isSpecial(ids[j])) {
        e = j + 1;
        break;
      }
    }
    loss.fill(1, starts[k], e);
  });
  return { ids, loss, text };
}

/** A conversation as a training document: rendered with the tokenizer's chat template, loss on the assistant turns. */
export function chatDocument(messages: unknown, tok: Tokenizer, where: string): TokenDocument {
  const template = chatTemplateOf(tok, where);
  const r = renderWithSpans(template, checkMessages(messages, where), tok, where);
  return maskedDocument(tok, r.text, r.assistant);
}

/**
 * A prompt/completion pair: with a chat template, the conversation [user: prompt, assistant: completion];
 * without one, encodeDocument(prompt + completion) with EOS, loss on the completion and EOS.
 */
export function promptCompletionDocument(prompt: string, completion: string, tok: Tokenizer, where: string): TokenDocument {
  if (tok.chatTemplate) return chatDocument([{ role: 'user', content: prompt }, { role: 'assistant', content: completion }], tok, where);
  const text = prompt + completion;
  let ids = tok.encodeDocument(text);
  if (ids[ids.length - 1] !== tok.eos) {
    const withEos = new Int32Array(ids.length + 1);
    withEos.set(ids);
    withEos[ids.length] = tok.eos;
    ids = withEos;
  }
  const promptIds = tok.encodeDocument(prompt);
  let k = 0;
  while (k < promptIds.length && k < ids.length && promptIds[k] === ids[k]) k++;
  const loss = new Uint8Array(ids.length);
  loss.fill(1, k);
  return { ids, loss, text };
}

/** The kind of a JSONL record, by its fields. */
export type RecordKind = 'chat' | 'prompt_completion' | 'text';

/** chat ("messages"), prompt_completion ("prompt" + "completion") or text ("text"); an UndoError otherwise. */
export function recordKind(obj: Record<string, unknown>, where: string): RecordKind {
  if ('messages' in obj) return 'chat';
  if ('prompt' in obj || 'completion' in obj) {
    for (const f of ['prompt', 'completion']) if (typeof obj[f] !== 'string') throw new Err(`${where}: field "${f}" must be a string${obj[f] === undefined ? ' (it is missing)' : ''}`);
    return 'prompt_completion';
  }
  if (typeof obj.text === 'string') return 'text';
  throw new Err(`${where}: the line has none of the fields "messages", "prompt" + "completion" or "text"`,
    'each line is {"messages": [...]}, {"prompt": "...", "completion": "..."} or {"text": "..."}');
}

/** One JSONL record as a document: text stays a string (tokenised at packing), the others become TokenDocuments. */
export function recordDocument(obj: Record<string, unknown>, tok: Tokenizer | undefined, where: string): Document {
  const kind = recordKind(obj, where);
  if (kind === 'text') return obj.text as string;
  if (!tok) throw new Err(`${where}: ${kind === 'chat' ? 'chat' : 'prompt/completion'} data needs the model's tokenizer here`);
  return kind === 'chat' ? chatDocument(obj.messages, tok, where) : promptCompletionDocument(obj.prompt as string, obj.completion as string, tok, where);
}

/**
 * Load training documents from a file, deciding the kind by content: a .jsonl/.ndjson line with
 * "messages" is a conversation, with "prompt" and "completion" a prompt/completion pair, with "text" a
 * plain document; other files are plain-text paragraphs. Chat and prompt/completion lines are rendered
 * and tokenised with `tok` (the model's tokenizer). Errors name the file and line.
 */
export function loadDataFile(file: string, tok?: Tokenizer): Document[] {
  const ext = path.extname(file).toLowerCase();
  if (ext !== '.jsonl' && ext !== '.ndjson') return loadDocuments(file);
  const text = loadDocumentsText(file);
  const docs: Document[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    const where = `${file}:${i + 1}`;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new Err(`${where}: line ${i + 1} is not valid JSON (${describeError(e)})`,
        'each line of a .jsonl dataset is an object: {"messages": [...]}, {"prompt", "completion"} or {"text"}');
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new Err(`${where}: line ${i + 1} is not a JSON object`);
    docs.push(recordDocument(obj as Record<string, unknown>, tok, where));
  }
  return docs;
}

/** The file's text, byte-order mark removed; a missing or unreadable file is an UndoError naming it. */
function loadDocumentsText(file: string): string {
  const text = readFileOrThrow(file, 'dataset file').toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * A prompt for generation with a chat model: the user turn rendered with the tokenizer's chat template and the
 * generation prompt (the assistant turn's opening), tokenised with no specials added (the template writes them).
 */
export function chatPromptIds(tok: Tokenizer, userText: string, where: string): Int32Array {
  return tok.encode(renderChat(chatTemplateOf(tok, where), [{ role: 'user', content: userText }], tok, true, where));
}
