import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ByteTokenizer, saveTokenizer, loadTokenizer, byteTokenString } from '../lib/data/tokenizer';
import { throwsUndo } from './helpers';

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

test.run();
