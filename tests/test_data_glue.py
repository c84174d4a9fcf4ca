"""Tests of experiments/data/glue.py on files in GLUE's published layout."""

import gzip
import math

import numpy as np
import pytest

from experiments.data import glue

SEP, CLS = glue.TOKENIZER.sep_token, glue.TOKENIZER.cls_token

# (task, split file, header or None, rows, expected (texts, label/score)).
_MNLI_DEV_HEADER = (
  'index promptID pairID genre sentence1_binary_parse sentence2_binary_parse '
  'sentence1_parse sentence2_parse sentence1 sentence2 label1 label2 label3 '
  'label4 label5 gold_label'
).split()
_MNLI_TRAIN_HEADER = _MNLI_DEV_HEADER[:11] + ['gold_label']
_CASES = {
  'CoLA': (
    'train',
    None,
    [
      ['gj04', '1', '', 'Our friends won\'t buy this "analysis".'],
      ['gj04', '0', '*', 'They drank the pub.'],
    ],
    [
      (('Our friends won\'t buy this "analysis".',), 1),
      (('They drank the pub.',), 0),
    ],
  ),
  'SST-2': (
    'dev',
    ['sentence', 'label'],
    [["it 's a charming journey . ", '1']],
    [(("it 's a charming journey . ",), 1)],
  ),
  'MRPC': (
    'train',
    ['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'],
    [['1', '702876', '702977', 'He said "no".', 'He declined.']],
    [(('He said "no".', 'He declined.'), 1)],
  ),
  'STS-B': (
    'dev',
    'index genre filename year old_index source1 source2 sentence1 sentence2 '
    'score'.split(),
    [
      [
        '0',
        'main-captions',
        'MSRvid',
        '2012test',
        '0000',
        'none',
        'none',
        'A man plays.',
        'A man is playing.',
        '4.750',
      ]
    ],
    [(('A man plays.', 'A man is playing.'), 4.75)],
  ),
  'QQP': (
    'train',
    ['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'],
    [['1', '2', '3', 'Why?', 'Why not?', '0']],
    [(('Why?', 'Why not?'), 0)],
  ),
  'MNLI': (
    'dev_mismatched',
    _MNLI_DEV_HEADER,
    [
      [
        '0',
        '1',
        '1n',
        'fiction',
        '( a )',
        '( b )',
        '(ROOT a)',
        '(ROOT b)',
        'Café is open.',
        'It is closed.',
        'contradiction',
        'contradiction',
        'neutral',
        'contradiction',
        'contradiction',
        'contradiction',
      ]
    ],
    [(('Café is open.', 'It is closed.'), 0)],
  ),
  'QNLI': (
    'dev',
    ['index', 'question', 'sentence', 'label'],
    [['0', 'Who?', 'Nobody.', 'not_entailment']],
    [(('Who?', 'Nobody.'), 1)],
  ),
  'RTE': (
    'train',
    ['index', 'sentence1', 'sentence2', 'label'],
    [['0', 'A dog barks.', 'An animal makes noise.', 'entailment']],
    [(('A dog barks.', 'An animal makes noise.'), 0)],
  ),
}


def _write(root, task, split, header, rows, gz=False):
  d = root / task
  d.mkdir(parents=True, exist_ok=True)
  lines = ([header] if header else []) + rows
  body = ''.join('\t'.join(r) + '\n' for r in lines)
  if gz:
    with gzip.open(d / f'{split}.tsv.gz', 'wt', encoding='utf-8') as f:
      f.write(body)
  else:
    (d / f'{split}.tsv').write_text(body, encoding='utf-8')


def _expected_ids(texts, seq_len, prefix=0):
  ids = [CLS] * prefix
  for i, t in enumerate(texts):
    if i:
      ids.append(SEP)
    ids.extend(b + 6 for b in t.encode('utf-8'))
  out = np.zeros(seq_len, np.int32)
  out[: len(ids)] = ids
  return out, len(ids)


@pytest.mark.parametrize('task', list(_CASES))
def test_reads_each_task_in_its_published_format(tmp_path, task):
  split, header, rows, expected = _CASES[task]
  _write(tmp_path, task, split, header, rows)
  src = glue.GlueSource(str(tmp_path), task, split, seq_len=96)
  assert len(src) == len(expected)
  for i, (texts, target) in enumerate(expected):
    r = src[i]
    ids, n = _expected_ids(texts, 96)
    np.testing.assert_array_equal(r['inputs'], ids)
    np.testing.assert_array_equal(r['input_mask'], np.arange(96) < n)
    if task == 'STS-B':
      assert r['score'] == pytest.approx(target) and r['label'] == 0
    else:
      assert r['label'] == target and r['score'] == 0.0
    assert r['task'] == glue.TASK_NAMES.index(task)


def test_mnli_train_header_and_gzip(tmp_path):
  row = [
    '0',
    '1',
    '1e',
    'gov',
    '(a)',
    '(b)',
    '(a)',
    '(b)',
    'P.',
    'H.',
    'neutral',
    'neutral',
  ]
  _write(tmp_path, 'MNLI', 'train', _MNLI_TRAIN_HEADER, [row], gz=True)
  src = glue.GlueSource(str(tmp_path), 'MNLI', 'train', seq_len=8)
  assert src[0]['label'] == 2
  np.testing.assert_array_equal(
    src[0]['inputs'], _expected_ids(('P.', 'H.'), 8)[0]
  )


@pytest.mark.parametrize('prefix', [1, 8])
def test_prefix_tokens(tmp_path, prefix):
  _write(tmp_path, 'RTE', 'dev', *_CASES['RTE'][1:3])
  src = glue.GlueSource(
    str(tmp_path), 'RTE', 'dev', seq_len=64, num_prefix_tokens=prefix
  )
  ids, n = _expected_ids(_CASES['RTE'][3][0][0], 64, prefix)
  np.testing.assert_array_equal(src[0]['inputs'], ids)
  assert src[0]['input_mask'].sum() == n


def test_truncation_raises_or_cuts_the_longer_text(tmp_path):
  _write(
    tmp_path,
    'RTE',
    'dev',
    ['index', 'sentence1', 'sentence2', 'label'],
    [['0', 'abcdefghij', 'xyz', 'entailment'], ['1', 'ab', 'cd', 'entailment']],
  )
  with pytest.raises(ValueError, match='RTE dev example 0.*data.truncate'):
    glue.GlueSource(str(tmp_path), 'RTE', 'dev', seq_len=8)
  src = glue.GlueSource(str(tmp_path), 'RTE', 'dev', seq_len=8, truncate=True)
  assert src.num_truncated == 1
  # 8 = 4 + SEP + 3: the longer text is cut first, down to the other's size.
  np.testing.assert_array_equal(
    src[0]['inputs'], _expected_ids(('abcd', 'xyz'), 8)[0]
  )
  np.testing.assert_array_equal(
    src[1]['inputs'], _expected_ids(('ab', 'cd'), 8)[0]
  )


def test_malformed_lines_raise_with_file_and_line_or_are_counted(tmp_path):
  _write(
    tmp_path,
    'QQP',
    'train',
    _CASES['QQP'][1],
    [
      ['1', '2', '3', 'a', 'b', '1'],
      ['2', '3', 'only five', 'x', '0'],
      ['3', '4', '5', 'c', 'd', 'yes'],
    ],
  )
  with pytest.raises(ValueError, match=r'QQP/train.tsv: line 3: 5 tab'):
    glue.GlueSource(str(tmp_path), 'QQP', 'train')
  src = glue.GlueSource(str(tmp_path), 'QQP', 'train', skip_malformed=True)
  assert len(src) == 1 and src.num_skipped == 2


def test_missing_files_and_columns(tmp_path):
  with pytest.raises(ValueError, match='data.dir: expected an existing'):
    glue.GlueSource(str(tmp_path / 'none'), 'RTE', 'dev')
  with pytest.raises(ValueError, match=r'RTE/dev.tsv \(or .tsv.gz\)'):
    glue.GlueSource(str(tmp_path), 'RTE', 'dev')
  _write(
    tmp_path,
    'RTE',
    'dev',
    ['index', 'premise', 'label'],
    [['0', 'a', 'entailment']],
  )
  with pytest.raises(ValueError, match=r"missing \['sentence1', 'sentence2'\]"):
    glue.GlueSource(str(tmp_path), 'RTE', 'dev')
  with pytest.raises(ValueError, match='task: expected one of'):
    glue.GlueSource(str(tmp_path), 'WNLI', 'dev')


def test_classification_metrics_hand_computed():
  # Confusion: tp=3, tn=2, fp=1, fn=2 (8 examples).
  labels = np.array([1, 1, 1, 1, 1, 0, 0, 0])
  preds = np.array([1, 1, 1, 0, 0, 1, 0, 0])
  assert glue.accuracy(labels, preds) == pytest.approx(500 / 8)
  assert glue.f1_binary(labels, preds) == pytest.approx(100 * 6 / 9)
  mcc = (3 * 2 - 1 * 2) / math.sqrt(4 * 5 * 3 * 4)
  assert glue.matthews_corrcoef(labels, preds) == pytest.approx(100 * mcc)
  assert glue.matthews_corrcoef(labels, np.ones(8)) == 0.0
  assert glue.f1_binary(labels, np.zeros(8)) == 0.0


def test_correlations_against_naive_references():
  x = np.array([1.0, 2.0, 2.0, 4.0, 5.0])
  y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
  # Pearson by hand: means 2.8 and 3; sum dx*dy = 7; sum dx^2 = 10.8; dy^2 10.
  assert glue.pearson(x, y) == pytest.approx(100 * 7 / math.sqrt(108))
  # Spearman: ranks of x with the tie averaged are 1, 2.5, 2.5, 4, 5; of y
  # 2, 1, 4, 3, 5; deviations -2 -.5 -.5 1 2 and -1 -2 1 0 2: Pearson
  # 6.5 / sqrt(9.5 * 10).
  assert glue.spearman(x, y) == pytest.approx(100 * 6.5 / math.sqrt(95))
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=50), rng.normal(size=50)
  naive = sum((p - a.mean()) * (q - b.mean()) for p, q in zip(a, b)) / (
    math.sqrt(sum((p - a.mean()) ** 2 for p in a))
    * math.sqrt(sum((q - b.mean()) ** 2 for q in b))
  )
  assert glue.pearson(a, b) == pytest.approx(100 * naive)
  # Without ties Spearman is 1 - 6 sum d^2 / (n (n^2 - 1)).
  ra = np.argsort(np.argsort(a)) + 1
  rb = np.argsort(np.argsort(b)) + 1
  rho = 1 - 6 * np.sum((ra - rb) ** 2) / (50 * (50**2 - 1))
  assert glue.spearman(a, b) == pytest.approx(100 * rho)


def test_task_metrics_keys():
  y = np.array([0, 1, 1])
  assert set(glue.task_metrics('CoLA', y, y)) == {'matthews', 'accuracy'}
  assert set(glue.task_metrics('QQP', y, y)) == {'accuracy', 'f1'}
  assert set(glue.task_metrics('STS-B', y, y)) == {'pearson', 'spearman'}
  assert glue.main_metric('CoLA', {'matthews': 5.0, 'accuracy': 9.0}) == 5.0


@pytest.mark.parametrize(
  'row, average',
  [
    # Perceiver IO (bytes) and the multitask-query rows of Table 14.
    ((50.19, 83.22, 83.89, 87.24, 91.71, 90.12, 64.84, 93.17, 86.81), 80.95),
    ((47.88, 82.05, 82.77, 90.36, 90.37, 89.49, 80.08, 93.75, 79.95), 81.79),
  ],
)
def test_glue_average_reproduces_table_14(row, average):
  cola, m, mm, mrpc, qnli, qqp, rte, sst2, stsb = row
  scores = {
    'CoLA': cola,
    'MNLI-m': m,
    'MNLI-mm': mm,
    'MRPC': mrpc,
    'QNLI': qnli,
    'QQP': qqp,
    'RTE': rte,
    'SST-2': sst2,
    'STS-B': stsb,
  }
  assert glue.glue_score(scores) == pytest.approx(average, abs=0.005)
  with pytest.raises(ValueError, match='MNLI-mm'):
    glue.glue_score({k: v for k, v in scores.items() if k != 'MNLI-mm'})
