"""Tests of experiments/data/text.py on corpora the tests write."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest

from experiments.data import text
from perceiver.train import data as data_lib

EOS = text.TOKENIZER.eos_token


def _docs(n, seed=0):
  """n distinct documents of random words (letters only, varied lengths)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    words = [
      ''.join(rng.choice(list('abcdefghij'), rng.integers(1, 8)))
      for _ in range(rng.integers(1, 12))
    ]
    out.append(f'doc{i} ' + ' '.join(words))
  return out


def _write_jsonl(path, docs, extra_lines=()):
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wt', encoding='utf-8') as f:
    for d in docs:
      f.write(json.dumps({'text': d, 'url': 'x'}) + '\n')
    for line in extra_lines:
      f.write(line + '\n')


def _stream(source):
  """All records' real ids joined; EOS shown as '|'; records split by '#'."""
  out = []
  for i in range(len(source)):
    r = source[i]
    ids = r['ids'][r['input_mask'] == 1]
    assert np.all(r['ids'][r['input_mask'] == 0] == text.TOKENIZER.pad_token)
    out.append(''.join('|' if t == EOS else chr(t - 6) for t in ids.tolist()))
  return out


def test_index_file_txt_and_jsonl(tmp_path):
  docs = ['héllo world', '', 'second doc']
  plain = str(tmp_path / 'a.jsonl')
  _write_jsonl(plain, docs, extra_lines=('',))
  ix = text.index_file(plain, str(tmp_path / 'cache'))
  lines = open(plain, 'rb').read().split(b'\n')
  assert ix['kind'] == 'jsonl' and int(ix['empty']) == 1
  np.testing.assert_array_equal(ix['lengths'], [12, 10])  # é is 2 bytes
  np.testing.assert_array_equal(
    ix['offsets'], [0, len(lines[0]) + len(lines[1]) + 2]
  )
  book = tmp_path / 'book.txt'
  book.write_bytes(b'Call me Ishmael.\n')
  ix = text.index_file(str(book), str(tmp_path / 'cache'))
  assert ix['kind'] == 'txt' and ix['lengths'].tolist() == [17]


@pytest.mark.parametrize(
  'line, what',
  [('{"text": "a"', 'line 2'), ('{"body": "a"}', 'line 2'), ('[1]', 'line 2')],
)
def test_corrupt_json_line_names_file_and_line(tmp_path, line, what):
  path = str(tmp_path / 'bad.jsonl')
  _write_jsonl(path, ['fine'], extra_lines=(line,))
  with pytest.raises(ValueError, match=rf'bad\.jsonl: {what}'):
    text.index_file(path, str(tmp_path / 'cache'))


@pytest.mark.parametrize('seq_len, k', [(16, 3), (7, 1), (64, 10)])
def test_every_document_byte_in_exactly_one_record(tmp_path, seq_len, k):
  docs = _docs(40)
  path = str(tmp_path / 'c.jsonl')
  _write_jsonl(path, docs)
  kw = dict(
    cache_dir=str(tmp_path / 'cache'),
    seq_len=seq_len,
    docs_per_sequence=k,
    eval_fraction=0.2,
  )
  train = text.MlmSource([path], split='train', **kw)
  held = text.MlmSource([path], split='eval', **kw)
  counts = {d: 0 for d in docs}
  real, separators = 0, 0
  for source in (train, held):
    records = _stream(source)
    assert all(len(r) <= seq_len for r in records)
    joined = ''.join(records)
    for d in docs:
      counts[d] += joined.count(d)
    n_docs = sum(joined.count(d) for d in docs)
    # EOS separates the documents of a group only: k per group, one file.
    assert joined.count('|') == n_docs - (-(-n_docs // k))
    real += len(joined)
    separators += joined.count('|')
  assert set(counts.values()) == {1}, counts  # no document lost or repeated
  assert real == sum(len(d) for d in docs) + separators  # nothing else read
  assert 0 < len(held) < len(train)


def test_held_out_documents_do_not_overlap_train(tmp_path):
  docs = _docs(60, seed=1)
  path = str(tmp_path / 'c.jsonl')
  _write_jsonl(path, docs)
  kw = dict(cache_dir=str(tmp_path / 'cache'), seq_len=32, eval_fraction=0.3)
  train = ''.join(_stream(text.MlmSource([path], split='train', **kw)))
  held = ''.join(_stream(text.MlmSource([path], split='eval', **kw)))
  in_train = {d for d in docs if d in train}
  in_held = {d for d in docs if d in held}
  assert in_train.isdisjoint(in_held) and in_train | in_held == set(docs)


def test_gzip_and_txt_read_like_plain(tmp_path):
  docs = _docs(25, seed=2)
  plain, packed = str(tmp_path / 'p.jsonl'), str(tmp_path / 'p.jsonl.gz')
  _write_jsonl(plain, docs)
  _write_jsonl(packed, docs)
  kw = dict(cache_dir=str(tmp_path / 'cache'), seq_len=20, eval_fraction=0.1)
  a = text.MlmSource([plain], **kw)
  b = text.MlmSource([packed], **kw)
  assert len(a) == len(b)
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]['ids'], b[i]['ids'])
  # One .txt file is one document, read in windows of L bytes; its last
  # byte (0.01 x 45 rounds to 0, at least 1) is held out.
  body = 'x' * 44 + 'y'
  (tmp_path / 'book.txt').write_text(body)
  src = text.MlmSource(
    [str(tmp_path / 'book.txt')],
    cache_dir=str(tmp_path / 'cache'),
    seq_len=20,
    eval_fraction=0.01,
    seed=3,
  )
  assert ''.join(_stream(src)) == body[:44] and len(src) == 3


def test_source_pickles_small_and_reads_the_same(tmp_path):
  path = str(tmp_path / 'c.jsonl.gz')
  _write_jsonl(path, _docs(200, seed=4))
  src = text.MlmSource([path], cache_dir=str(tmp_path / 'cache'), seq_len=32)
  blob = pickle.dumps(src)
  assert len(blob) < 2000  # paths and settings, not the index arrays
  copy = pickle.loads(blob)
  for i in (0, len(src) // 2, len(src) - 1):
    np.testing.assert_array_equal(copy[i]['ids'], src[i]['ids'])
  with pytest.raises(IndexError, match='index'):
    src[len(src)]


class _ListSource:
  def __init__(self, name, n):
    self.records = [
      {'src': np.asarray(name), 'i': np.asarray(i)} for i in range(n)
    ]

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


@pytest.mark.parametrize(
  'sizes, weights, resolution', [((70, 5), (0.7, 0.3), 10), ((3, 9), (1, 1), 4)]
)
def test_mixed_source_against_naive_enumeration(sizes, weights, resolution):
  sources = [_ListSource(k, n) for k, n in enumerate(sizes)]
  mix = text.MixedSource(sources, weights, resolution=resolution)
  seen = [set(), set()]
  per_period = np.zeros((len(mix) // resolution, 2), int)
  for index in range(len(mix)):
    r = mix[index]
    k, i = int(r['src']), int(r['i'])
    seen[k].add(i)
    per_period[index // resolution, k] += 1
    assert int(r['index']) == index
  assert [len(s) for s in seen] == list(sizes)  # every record read
  share = np.asarray(weights) / np.sum(weights) * resolution
  assert np.all(np.abs(per_period - share) <= 0.5)
  # The smallest length that covers every record.
  periods = max(-(-n // round(s)) for n, s in zip(sizes, share))
  assert len(mix) == periods * resolution


def test_mixed_source_rejects_bad_weights():
  s = [_ListSource(0, 3), _ListSource(1, 3)]
  with pytest.raises(ValueError, match='weights'):
    text.MixedSource(s, [1.0, 0.0])
  with pytest.raises(ValueError, match='weights'):
    text.MixedSource(s, [1.0])
  with pytest.raises(ValueError, match='less than one record'):
    text.MixedSource(s, [1.0, 1e-6], resolution=10)


def _record(s, seq_len=None):
  ids = text.TOKENIZER.to_int(s)
  n = seq_len or len(ids)
  out = np.zeros(n, np.int32)
  out[: len(ids)] = ids
  return {'ids': out, 'input_mask': (np.arange(n) < len(ids)).astype(np.int32)}


def test_whole_word_masking_masks_whole_words_within_budget():
  words = ' '.join(_docs(30, seed=5))
  record = _record(words + '\n\tend', seq_len=len(words) + 20)
  ids = record['ids']
  real = int(record['input_mask'].sum())
  lengths = [len(w) for w in (words + '\n\tend').split()]
  for seed in range(20):
    out = text.mask_whole_words(record, np.random.default_rng(seed))
    t = out['target_mask'].astype(bool)
    np.testing.assert_array_equal(out['targets'], ids)
    # Never white space, never padding; only whole words.
    assert not np.any(t & np.isin(ids, [0, 6 + 32, 6 + 9, 6 + 10]))
    s = bytes((ids - 6).clip(0).astype(np.uint8)).decode()
    for start, word in _words_with_starts(s[:real]):
      chosen = t[start : start + len(word)]
      assert chosen.all() or not chosen.any(), word
    budget = round(0.15 * real)
    assert budget - max(lengths) < t.sum() <= budget
    # Outside the targets the input is untouched.
    np.testing.assert_array_equal(out['inputs'][~t], ids[~t])


@pytest.mark.parametrize('s, seq_len', [(' \n\t  ', 8), ('\n', 6), ('', 4)])
def test_whole_word_masking_without_words_masks_nothing(s, seq_len):
  # White space or padding only (the :local corpus has a 512-byte window
  # holding just a group's last newline): nothing to predict, input as is.
  record = _record(s, seq_len=seq_len)
  out = text.mask_whole_words(record, np.random.default_rng(0))
  assert not out['target_mask'].any()
  np.testing.assert_array_equal(out['inputs'], record['ids'])


def _words_with_starts(s):
  i = 0
  for w in s.split():
    i = s.index(w, i)
    yield i, w
    i += len(w)


def test_whole_word_masking_replacement_shares():
  record = _record(' '.join(['abcd'] * 400))
  fates = {'mask': 0, 'random': 0, 'keep': 0}
  for seed in range(30):
    out = text.mask_whole_words(record, np.random.default_rng(seed))
    t = out['target_mask'].astype(bool)
    chosen = out['inputs'][t].reshape(-1, 4)  # every word has 4 bytes
    original = out['targets'][t].reshape(-1, 4)
    is_mask = np.all(chosen == text.TOKENIZER.mask_token, axis=1)
    is_keep = np.all(chosen == original, axis=1)
    # A word is replaced as a whole: all MASK, or no MASK at all.
    assert not np.any(np.any(chosen == 3, axis=1) & ~is_mask)
    fates['mask'] += int(is_mask.sum())
    fates['keep'] += int((is_keep & ~is_mask).sum())
    fates['random'] += int((~is_keep & ~is_mask).sum())
  total = sum(fates.values())
  assert abs(fates['mask'] / total - 0.8) < 0.03
  assert abs(fates['random'] / total - 0.1) < 0.03
  assert abs(fates['keep'] / total - 0.1) < 0.03


def test_fixed_masking_depends_on_index_only():
  r = dict(_record('one two three four five six seven'), index=np.asarray(5))
  a = text.mask_whole_words_fixed(r, seed=1)
  b = text.mask_whole_words_fixed(r, seed=1)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert any(
    not np.array_equal(
      text.mask_whole_words_fixed(dict(r, index=np.asarray(i)), seed=1)[
        'target_mask'
      ],
      a['target_mask'],
    )
    for i in range(6, 12)
  )


def test_unigram_log_probs_hand_computed():
  source = [_record('aab b\n', seq_len=8), _record('c', seq_len=4)]
  logp = text.unigram_log_probs(source, num_records=10)
  # Maskable bytes: a a b b c -> counts a2 b2 c1, +1 for each of 256 bytes.
  total = 5 + 256
  assert np.isclose(np.exp(logp[6 + ord('a')]), 3 / total)
  assert np.isclose(np.exp(logp[6 + ord('c')]), 2 / total)
  assert np.isclose(np.exp(logp[6 + ord(' ')]), 1 / total)
  assert np.all(np.isneginf(logp[:6]))
  assert np.isclose(np.exp(logp).sum(), 1.0)


def test_resolve_sources_errors(tmp_path):
  (tmp_path / 'c4').mkdir()
  (tmp_path / 'c4' / 'a.json.gz').write_bytes(b'')
  (tmp_path / 'wiki.jsonl').write_text('')
  got = text.resolve_sources(str(tmp_path), 'c4/*.json.gz=0.7, wiki.jsonl=0.3')
  assert got == [
    ([str(tmp_path / 'c4' / 'a.json.gz')], 0.7),
    ([str(tmp_path / 'wiki.jsonl')], 0.3),
  ]
  with pytest.raises(ValueError, match='data.dir'):
    text.resolve_sources(str(tmp_path / 'nope'), 'x')
  with pytest.raises(ValueError, match='matches no file'):
    text.resolve_sources(str(tmp_path), 'c4/*.txt=1')
  with pytest.raises(ValueError, match='positive weight'):
    text.resolve_sources(str(tmp_path), 'wiki.jsonl=-1')


def test_single_txt_holds_out_the_end_of_its_bytes(tmp_path):
  # One document: a draw of documents leaves a split empty, so the last
  # floor(0.25 x 41 + 0.5) = 10 bytes are held out, the first 31 train.
  body = ''.join(chr(ord('a') + i % 26) for i in range(41))
  path = tmp_path / 'book.txt'
  path.write_text(body)
  kw = dict(cache_dir=str(tmp_path / 'cache'), seq_len=8, eval_fraction=0.25)
  train = text.MlmSource([str(path)], split='train', **kw)
  held = text.MlmSource([str(path)], split='eval', **kw)
  assert train.split_by == held.split_by == 'bytes'
  assert _stream(train) == [body[0:8], body[8:16], body[16:24], body[24:31]]
  assert _stream(held) == [body[31:39], body[39:41]]
  clone = pickle.loads(pickle.dumps(held))  # as a grain worker reads it
  np.testing.assert_array_equal(clone[1]['ids'], held[1]['ids'])
  assert 'held out by bytes' in text.describe(
    text.MixedSource([held], [1], resolution=1)
  )
  # Also a JSON-lines source of one document: its last byte (0.01 x 17
  # rounds to 0, at least 1) is held out.
  one = str(tmp_path / 'one.jsonl')
  _write_jsonl(one, ['only one document'])
  kw['eval_fraction'] = 0.01
  assert _stream(text.MlmSource([one], split='eval', **kw)) == ['t']
  assert ''.join(_stream(text.MlmSource([one], **kw))) == 'only one documen'


def test_split_without_documents_raises(tmp_path):
  # A document of one byte cannot be split by bytes: it stays in 'train'.
  path = str(tmp_path / 'one.jsonl')
  _write_jsonl(path, ['x'])
  assert len(text.MlmSource([path], cache_dir=str(tmp_path / 'c'))) == 1
  with pytest.raises(ValueError, match="split 'eval'"):
    text.MlmSource(
      [path], cache_dir=str(tmp_path / 'c'), split='eval', eval_fraction=0.01
    )
  os.remove(path)
  with pytest.raises(ValueError, match='existing file'):
    text.index_file(path, str(tmp_path / 'c'))


def test_shorten_records_follows_the_length_schedule():
  ids = np.arange(10, 26, dtype=np.int32)  # 16 real bytes
  record = {
    'ids': ids,
    'input_mask': np.ones(16, np.int32),
    'index': np.int64(3),
  }
  schedule = dict(lengths=(4, 8, 16), reach=(0.0, 0.5, 0.75))
  for fraction, keep in ((0.0, 4), (0.49, 4), (0.5, 8), (0.8, 16), (1.0, 16)):
    out = text.shorten_records(
      record, progress=data_lib.Progress(0, fraction), **schedule
    )
    expected = np.where(np.arange(16) < keep, ids, text.TOKENIZER.pad_token)
    np.testing.assert_array_equal(out['ids'], expected)
    np.testing.assert_array_equal(out['input_mask'], np.arange(16) < keep)
    assert out['index'] == 3
  assert (record['ids'] == ids).all() and record['input_mask'].all()
  # Masking after it chooses bytes among the kept ones only.
  short = text.shorten_records(
    record, progress=data_lib.Progress(0, 0.0), **schedule
  )
  masked = text.mask_whole_words(
    short, np.random.default_rng(0), mask_fraction=1.0
  )
  assert masked['target_mask'][:4].all() and not masked['target_mask'][4:].any()


@pytest.mark.parametrize(
  'lengths, reach, match',
  [
    ((8, 16), (0.0,), 'data.length_reach: expected one fraction per'),
    ((8, 17), (0.0, 0.5), r'data.lengths: expected integers in \[1, '),
    ((0,), (0.0,), r'data.lengths: expected integers in \[1, '),
    ((8, 16), (0.1, 0.5), 'data.length_reach: expected increasing'),
    ((8, 16), (0.0, 0.0), 'data.length_reach: expected increasing'),
    ((8, 16), (0.0, 1.0), 'data.length_reach: expected increasing'),
  ],
)
def test_length_curriculum_errors_name_the_field(lengths, reach, match):
  with pytest.raises(ValueError, match=match):
    text.check_length_curriculum(lengths, reach, seq_len=16)
  text.check_length_curriculum((8, 16), (0.0, 0.5), seq_len=16)
  text.check_length_curriculum((), (), seq_len=16)
