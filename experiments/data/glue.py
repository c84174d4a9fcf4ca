"""GLUE as distributed (Wang et al. 2019) for byte-level fine-tuning (App. F.4).

Shapes: L sequence length in bytes, P prefix tokens (0, 1 or 8; the multitask
variants of Table 2), N examples.

Layout read (the `download_glue_data.py` layout): `DIR/<TASK>/train.tsv` and
`dev.tsv`, for MNLI `dev_matched.tsv` / `dev_mismatched.tsv`; a `.tsv.gz`
beside or instead of a `.tsv` is read too. Files are UTF-8, tab-separated,
one example per line, with no quoting (sentences contain bare quotes, so
the csv module's quoting must stay off). Columns per task (0-based):

  task   header  text columns                label column (values)
  CoLA   none    3 (sentence)                1 ('0'/'1')
  SST-2  yes     'sentence'                  'label' ('0'/'1')
  MRPC   yes     '#1 String', '#2 String'    'Quality' ('0'/'1')
  STS-B  yes     'sentence1', 'sentence2'    'score' (0.0-5.0, regression)
  QQP    yes     'question1', 'question2'    'is_duplicate' ('0'/'1')
  MNLI   yes     'sentence1', 'sentence2'    'gold_label' (3 classes)
  QNLI   yes     'question', 'sentence'      'label' (entailment/not_)
  RTE    yes     'sentence1', 'sentence2'    'label' (entailment/not_)

A pair is joined with the tokenizer's SEP id: `text1 SEP text2`; the ids are
right-padded with PAD to L. Pairs longer than L - P raise an error unless
`truncate=True`, which cuts the longer text of the pair byte by byte and
counts the examples cut (`GlueSource.num_truncated`). Malformed lines (wrong
column count, bad label) raise an error naming the file and line unless
`skip_malformed=True`, which skips and counts them (`num_skipped`).

Metrics (`task_metrics`, `glue_score`) follow the paper (Table 14, App. F.4):
Matthews correlation for CoLA, Pearson and Spearman correlation for STS-B,
accuracy and F1 for MRPC and QQP, accuracy for the rest; the GLUE average
averages MNLI-m and MNLI-mm first and counts the result as one of 8 tasks,
with Pearson for STS-B, Matthews for CoLA and accuracy elsewhere; all x100.
"""

import gzip
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from perceiver.bytes_tokenizer import BytesTokenizer

TOKENIZER = BytesTokenizer()


class TaskSpec(NamedTuple):
  """How one GLUE task is stored and scored."""

  name: str
  header: bool
  text_columns: Tuple  # header names, or indices where there is no header
  label_column: object
  labels: Optional[Tuple[str, ...]]  # None: regression
  dev_splits: Tuple[str, ...]


TASKS: Dict[str, TaskSpec] = {
  t.name: t
  for t in (
    TaskSpec('CoLA', False, (3,), 1, ('0', '1'), ('dev',)),
    TaskSpec('SST-2', True, ('sentence',), 'label', ('0', '1'), ('dev',)),
    TaskSpec(
      'MRPC', True, ('#1 String', '#2 String'), 'Quality', ('0', '1'), ('dev',)
    ),
    TaskSpec(
      'STS-B', True, ('sentence1', 'sentence2'), 'score', None, ('dev',)
    ),
    TaskSpec(
      'QQP',
      True,
      ('question1', 'question2'),
      'is_duplicate',
      ('0', '1'),
      ('dev',),
    ),
    TaskSpec(
      'MNLI',
      True,
      ('sentence1', 'sentence2'),
      'gold_label',
      ('contradiction', 'entailment', 'neutral'),
      ('dev_matched', 'dev_mismatched'),
    ),
    TaskSpec(
      'QNLI',
      True,
      ('question', 'sentence'),
      'label',
      ('entailment', 'not_entailment'),
      ('dev',),
    ),
    TaskSpec(
      'RTE',
      True,
      ('sentence1', 'sentence2'),
      'label',
      ('entailment', 'not_entailment'),
      ('dev',),
    ),
  )
}
TASK_NAMES = tuple(TASKS)  # the order of task ids in multitask batches
MAX_CLASSES = max(len(t.labels or ()) for t in TASKS.values())


def num_outputs(task: str) -> int:
  """Logits of a classification task, 1 for the STS-B regression."""
  return len(TASKS[task].labels or ('score',))


def split_path(glue_dir: str, task: str, split: str) -> str:
  """`DIR/<TASK>/<split>.tsv` (or `.tsv.gz`); ValueError when absent."""
  if task not in TASKS:
    raise ValueError(f'task: expected one of {list(TASKS)}, got {task!r}.')
  if not os.path.isdir(glue_dir):
    raise ValueError(
      f'data.dir: expected an existing directory, got {glue_dir!r}.'
    )
  base = os.path.join(glue_dir, task, f'{split}.tsv')
  for path in (base, base + '.gz'):
    if os.path.isfile(path):
      return path
  raise ValueError(
    f'data.dir: expected {base} (or .tsv.gz) for task {task} split '
    f'{split!r}, got no such file.'
  )


class Example(NamedTuple):
  texts: Tuple[str, ...]
  label: int  # class id; 0 for regression
  score: float  # regression target; 0.0 for classification


def read_split(
  glue_dir: str, task: str, split: str, *, skip_malformed: bool = False
) -> Tuple[List[Example], int]:
  """Reads one split of one task.

  Args:
    glue_dir: the GLUE root (`DIR` above).
    task: a key of TASKS.
    split: 'train', 'dev', or for MNLI 'dev_matched' / 'dev_mismatched'.
    skip_malformed: skip (and count) malformed lines instead of raising.

  Returns:
    (examples, number of malformed lines skipped).

  Raises:
    ValueError: a missing file, a header without the expected columns, or a
      malformed line (file and line number named) when not skipping.
  """
  path = split_path(glue_dir, task, split)
  spec = TASKS[task]
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt', encoding='utf-8', newline='') as f:
    lines = [line.rstrip('\r\n') for line in f]
  if spec.header:
    if not lines:
      raise ValueError(f'{path}: expected a header line, got an empty file.')
    header = lines[0].split('\t')
    names = spec.text_columns + (spec.label_column,)
    missing = [n for n in names if n not in header]
    if missing:
      raise ValueError(
        f'{path}: expected columns {list(names)} in the header, missing '
        f'{missing} (header: {header}).'
      )
    text_idx = [header.index(n) for n in spec.text_columns]
    label_idx = header.index(spec.label_column)
    width, first = len(header), 2
    lines = lines[1:]
  else:
    text_idx, label_idx = list(spec.text_columns), spec.label_column
    width, first = max(text_idx + [label_idx]) + 1, 1
  examples, skipped = [], 0
  for number, line in enumerate(lines, start=first):
    if not line:
      continue
    fields = line.split('\t')
    problem = None
    if len(fields) != width:
      problem = f'{len(fields)} tab-separated fields, expected {width}'
    else:
      raw = fields[label_idx]
      if spec.labels is None:
        try:
          label, score = 0, float(raw)
        except ValueError:
          problem = f'score {raw!r} is not a number'
      elif raw in spec.labels:
        label, score = spec.labels.index(raw), 0.0
      else:
        problem = f'label {raw!r} is not one of {list(spec.labels)}'
    if problem is not None:
      if skip_malformed:
        skipped += 1
        continue
      raise ValueError(
        f'{path}: line {number}: {problem} (set data.skip_malformed=True to '
        f'skip and count such lines).'
      )
    examples.append(Example(tuple(fields[i] for i in text_idx), label, score))
  if not examples:
    raise ValueError(f'{path}: expected at least one example, got none.')
  return examples, skipped


def fit_pair(
  texts: Sequence[str], max_bytes: int, truncate: bool
) -> Tuple[List[bytes], bool]:
  """UTF-8 texts that fit `max_bytes` once joined by SEP; whether cut.

  Cutting removes the last byte of the longer text until the pair fits.

  Raises:
    ValueError: the pair does not fit and `truncate` is False.
  """
  parts = [t.encode('utf-8') for t in texts]
  need = sum(len(p) for p in parts) + len(parts) - 1
  cut = need > max_bytes
  if cut and not truncate:
    raise ValueError(
      f'example of {need} bytes does not fit in {max_bytes} (seq_len minus '
      f'prefix tokens); raise data.seq_len or set data.truncate=True.'
    )
  lengths = [len(p) for p in parts]
  while sum(lengths) + len(parts) - 1 > max_bytes:
    lengths[lengths.index(max(lengths))] -= 1
  parts = [p[:n] for p, n in zip(parts, lengths)]
  return parts, cut


class GlueSource:
  """One split of one GLUE task as fixed-size records (random access).

  `source[i]` is {'inputs': int32 [L] (P prefix CLS ids, the pair, PAD),
  'input_mask': int32 [L], 'label': int32 [], 'score': float32 [],
  'task': int32 [] (index in TASK_NAMES)}. The encoded pairs are kept in
  memory as one uint8 buffer (GLUE's largest split, MNLI train, is ~75 MB).

  Args:
    glue_dir: the GLUE root.
    task: a key of TASKS.
    split: see `read_split`.
    seq_len: L.
    num_prefix_tokens: P placeholder ids (CLS) before the text, read by the
      multitask variants (a) P=1 and (b) P=8.
    truncate: cut pairs longer than L - P (counted) instead of raising.
    skip_malformed: skip malformed lines (counted) instead of raising.
  """

  def __init__(
    self,
    glue_dir: str,
    task: str,
    split: str,
    *,
    seq_len: int = 2048,
    num_prefix_tokens: int = 0,
    truncate: bool = False,
    skip_malformed: bool = False,
  ):
    if not 0 <= num_prefix_tokens < seq_len:
      raise ValueError(
        f'num_prefix_tokens: expected an integer in [0, seq_len={seq_len}), '
        f'got {num_prefix_tokens!r}.'
      )
    examples, self.num_skipped = read_split(
      glue_dir, task, split, skip_malformed=skip_malformed
    )
    self.task, self.split = task, split
    self.seq_len, self.num_prefix_tokens = seq_len, num_prefix_tokens
    pieces, self.num_truncated = [], 0
    for i, ex in enumerate(examples):
      try:
        parts, cut = fit_pair(ex.texts, seq_len - num_prefix_tokens, truncate)
      except ValueError as e:
        raise ValueError(f'{task} {split} example {i}: {e}') from e
      pieces.extend(parts)
      self.num_truncated += cut
    self._num_parts = len(TASKS[task].text_columns)
    self._bytes = np.frombuffer(b''.join(pieces), np.uint8)
    self._starts = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
    self.labels = np.asarray([ex.label for ex in examples], np.int32)
    self.scores = np.asarray([ex.score for ex in examples], np.float32)
    self._task_id = TASK_NAMES.index(task)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    n = len(self)
    if not 0 <= index < n:
      raise IndexError(f'index: expected an integer in [0, {n}), got {index}.')
    pieces = [np.full(self.num_prefix_tokens, TOKENIZER.cls_token, np.int32)]
    for j in range(index * self._num_parts, (index + 1) * self._num_parts):
      if j > index * self._num_parts:
        pieces.append(np.asarray([TOKENIZER.sep_token], np.int32))
      raw = self._bytes[self._starts[j] : self._starts[j + 1]]
      pieces.append(raw.astype(np.int32) + TOKENIZER.num_reserved_tokens)
    ids = np.concatenate(pieces)
    inputs_L = np.full(self.seq_len, TOKENIZER.pad_token, np.int32)
    inputs_L[: len(ids)] = ids
    return {
      'inputs': inputs_L,
      'input_mask': (np.arange(self.seq_len) < len(ids)).astype(np.int32),
      'label': np.asarray(self.labels[index], np.int32),
      'score': np.asarray(self.scores[index], np.float32),
      'task': np.asarray(self._task_id, np.int32),
    }


# ---------------------------------------------------------------------------
# Metrics (x100, as the paper reports them).
# ---------------------------------------------------------------------------


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
  """Share of equal entries, x100."""
  labels, preds = np.asarray(labels), np.asarray(preds)
  return 100.0 * float(np.mean(labels == preds))


def f1_binary(labels: np.ndarray, preds: np.ndarray) -> float:
  """F1 of the positive class 1, x100 (0 when nothing is predicted/true)."""
  labels, preds = np.asarray(labels) == 1, np.asarray(preds) == 1
  tp = float(np.sum(labels & preds))
  fp = float(np.sum(~labels & preds))
  fn = float(np.sum(labels & ~preds))
  return 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(labels: np.ndarray, preds: np.ndarray) -> float:
  """Matthews correlation of binary labels, x100 (0 for a constant column)."""
  labels, preds = np.asarray(labels) == 1, np.asarray(preds) == 1
  tp = float(np.sum(labels & preds))
  tn = float(np.sum(~labels & ~preds))
  fp = float(np.sum(~labels & preds))
  fn = float(np.sum(labels & ~preds))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return 100.0 * (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation, x100 (0 when either is constant)."""
  x = np.asarray(x, np.float64) - np.mean(x)
  y = np.asarray(y, np.float64) - np.mean(y)
  denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return 100.0 * float(np.sum(x * y) / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank."""
  x = np.asarray(x)
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(1, len(x) + 1)
  values, inverse = np.unique(x, return_inverse=True)
  sums = np.bincount(inverse, weights=ranks, minlength=len(values))
  counts = np.bincount(inverse, minlength=len(values))
  return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman correlation (Pearson of tie-averaged ranks), x100."""
  return pearson(_ranks(x), _ranks(y))


def task_metrics(task: str, labels, preds) -> Dict[str, float]:
  """The paper's metrics of one task (one dev split), x100.

  Args:
    task: a key of TASKS.
    labels: [N] class ids, or float scores for STS-B.
    preds: [N] predicted class ids, or predicted scores for STS-B.

  Returns:
    CoLA {'matthews', 'accuracy'}; STS-B {'pearson', 'spearman'}; MRPC and
    QQP {'accuracy', 'f1'}; the others {'accuracy'}.
  """
  if task == 'STS-B':
    return {
      'pearson': pearson(labels, preds),
      'spearman': spearman(labels, preds),
    }
  out = {'accuracy': accuracy(labels, preds)}
  if task == 'CoLA':
    out['matthews'] = matthews_corrcoef(labels, preds)
  if task in ('MRPC', 'QQP'):
    out['f1'] = f1_binary(labels, preds)
  return out


def main_metric(task: str, metrics: Dict[str, float]) -> float:
  """The number the paper's GLUE average uses for a task (`task_metrics`)."""
  return metrics[{'CoLA': 'matthews', 'STS-B': 'pearson'}.get(task, 'accuracy')]


def glue_score(scores: Dict[str, float]) -> float:
  """The paper's GLUE average over the 8 tasks (Table 14).

  Args:
    scores: {task: main metric} for every task except MNLI, plus
      'MNLI-m' and 'MNLI-mm' (matched / mismatched accuracy).

  Returns:
    The mean over 8 tasks, MNLI counted once as (MNLI-m + MNLI-mm) / 2.

  Raises:
    ValueError: a task missing.
  """
  want = [t for t in TASKS if t != 'MNLI'] + ['MNLI-m', 'MNLI-mm']
  missing = [t for t in want if t not in scores]
  if missing:
    raise ValueError(f'scores: expected entries {want}, missing {missing}.')
  per_task = [scores[t] for t in TASKS if t != 'MNLI']
  per_task.append((scores['MNLI-m'] + scores['MNLI-mm']) / 2)
  return float(np.mean(per_task))
