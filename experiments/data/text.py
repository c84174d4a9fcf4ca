"""Byte-level masked-language-model data (Perceiver IO, Sec. 4.1, App. F.3).

Shapes: L sequence length in bytes (2,048 in the paper), V = 262 byte ids of
`perceiver.bytes_tokenizer.BytesTokenizer` (256 byte values + 6 specials).

Corpus on disk. A *source* is a set of files, each either

* plain text (`.txt`, `.txt.gz`): the whole file is one document (how books
  and speeches are stored), or
* JSON lines (`.jsonl`, `.json`, `.jsonl.gz`, `.json.gz`): one JSON object per
  line whose `text` field is one document (how C4 and Wikipedia dumps are
  commonly stored); blank lines are allowed.

Files larger than memory. The engine's contract is a random-access source
(grain's `__len__` / `__getitem__`), so instead of a stream each file is
indexed once: one sequential pass records where every document starts, how
many bytes it takes in the file and how many UTF-8 bytes its text has (and
validates every JSON line, so a corrupt line is reported with its file and
line number before training starts). Reading a document is then one
`os.pread` of its bytes. A gzip file cannot be read at random, so its
indexing pass also writes the decompressed bytes once into the cache
directory (disk use: the decompressed size) and documents are read from that
copy. Index files are cached under `cache_dir`, keyed by the file's path,
size and modification time; a source holds them in memory (24 bytes per
document, plus 8 per document for the grouping table), and a source pickled
to a grain worker carries only paths and settings and reloads them there.

Sequences (App. F.3: "10 documents concatenated before cropping"). The
documents of a split are put in a fixed random order (seeded) and taken ten
at a time; each group's documents are concatenated, joined by one EOS id, and
the result is cut into consecutive windows of L bytes (a source whose
documents are too few to split between training and evaluation, e.g. one
`.txt` file, splits each document's bytes instead: see `MlmSource`).
Record `i` of the source is one window: every byte of a split is in exactly
one record, the last window of a group is right-padded with PAD
(`input_mask` 0 there), and no record shares a byte with another. The
engine's sampler hands each record index of an epoch to exactly one process,
so processes never read the same bytes in an epoch; records of one group are
consecutive indices, so a sampler that shards indices into contiguous ranges
per process also gives each process its own documents (except for the two
groups at its range's ends).

Mixing. `MixedSource` mixes several sources with weights (the paper's 70% C4
/ 30% Wikipedia). Unlike grain's `MapDataset.mix`, whose length stops at the
first exhausted source so that the rest of a large source is never read, one
epoch of `MixedSource` reads every record of every source at least once and
repeats the records of the up-weighted ones.

Masking (`mask_whole_words`): 15% whole-word masking, words being maximal runs
of non-white-space bytes. Words are taken in a random order as long as the
masked bytes stay within 15% of the real bytes. Each chosen word, as a whole,
is replaced by MASK ids (80%), by random byte ids (10%) or left unchanged
(10%), BERT's recipe (Devlin et al. 2019, Sec. 3.1): the paper does not give
its replacement rule, and BERT's keeps pre-training inputs close to what
fine-tuning sees (real bytes, no MASK), so the model cannot learn that only
MASK positions matter. The loss is computed at every chosen byte.
"""

import glob
import gzip
import hashlib
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from perceiver.bytes_tokenizer import BytesTokenizer

Record = Dict[str, np.ndarray]

TOKENIZER = BytesTokenizer()
# Python's bytes.split() white space: space, \t, \n, \v, \f, \r.
WHITESPACE_BYTES = (0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D)
_TEXT_SUFFIXES = ('.txt', '.txt.gz')
_JSONL_SUFFIXES = ('.jsonl', '.json', '.jsonl.gz', '.json.gz')
_INDEX_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join(
  os.path.expanduser('~'), '.cache', 'perceiver_io', 'text_index'
)


def file_kind(path: str) -> str:
  """'txt' or 'jsonl' from the file name; ValueError for anything else."""
  name = path.lower()
  if name.endswith(_TEXT_SUFFIXES):
    return 'txt'
  if name.endswith(_JSONL_SUFFIXES):
    return 'jsonl'
  raise ValueError(
    f'path: expected a file ending in one of '
    f'{list(_TEXT_SUFFIXES + _JSONL_SUFFIXES)}, got {path!r}.'
  )


def _cache_key(path: str) -> str:
  st = os.stat(path)
  what = (
    f'{_INDEX_VERSION}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}'
  )
  return hashlib.sha256(what.encode()).hexdigest()[:32]


def _scan_jsonl(stream, path: str, sink=None):
  """Offsets, sizes and text lengths of the documents of a JSON-lines stream.

  Lines with an empty `text` are not documents; they are counted.
  """
  offsets, sizes, lengths = [], [], []
  offset, empty = 0, 0
  for number, line in enumerate(stream, start=1):
    if sink is not None:
      sink.write(line)
    if line.strip():
      try:
        obj = json.loads(line)
        text = obj['text']
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
          f'{path}: line {number} is not a JSON object with a string '
          f'"text" field ({type(e).__name__}: {e}).'
        ) from e
      if not isinstance(text, str):
        raise ValueError(
          f'{path}: line {number}: "text" must be a string, got '
          f'{type(text).__name__}.'
        )
      n = len(text.encode('utf-8'))
      if n:
        offsets.append(offset)
        sizes.append(len(line))
        lengths.append(n)
      else:
        empty += 1
    offset += len(line)
  return offsets, sizes, lengths, empty


def index_file(path: str, cache_dir: str) -> Dict[str, object]:
  """Indexes the documents of one corpus file (cached; one pass when new).

  Args:
    path: a .txt / .jsonl / .json file, optionally gzip-compressed (.gz).
    cache_dir: where the index (and, for gzip files, the decompressed copy)
      is written.

  Returns:
    A dict with 'kind' ('txt' | 'jsonl'), 'read_path' (the file documents
    are read from: `path`, or the decompressed copy of a .gz), 'offsets' and
    'sizes' (int64 [n]: where each document starts in `read_path` and how
    many bytes it takes there), 'lengths' (int64 [n]: UTF-8 bytes of each
    document's text) and 'empty' (documents without text, not indexed).

  Raises:
    ValueError: an unknown file type, a missing file, a corrupt JSON line
      (naming the file and the line number) or a bad gzip stream.
  """
  kind = file_kind(path)
  if not os.path.isfile(path):
    raise ValueError(f'path: expected an existing file, got {path!r}.')
  os.makedirs(cache_dir, exist_ok=True)
  key = _cache_key(path)
  index_path = os.path.join(cache_dir, f'{key}.npz')
  compressed = path.lower().endswith('.gz')
  read_path = os.path.join(cache_dir, f'{key}.raw') if compressed else path
  if os.path.isfile(index_path) and os.path.isfile(read_path):
    with np.load(index_path) as z:
      arrays = {k: z[k] for k in ('offsets', 'sizes', 'lengths', 'empty')}
    return dict(kind=kind, read_path=read_path, **arrays)

  tmp_raw = f'{read_path}.tmp{os.getpid()}'
  sink = open(tmp_raw, 'wb') if compressed else None
  try:
    opener = gzip.open if compressed else open
    with opener(path, 'rb') as stream:
      if kind == 'jsonl':
        offsets, sizes, lengths, empty = _scan_jsonl(stream, path, sink)
      else:
        size = 0 if compressed else os.path.getsize(path)
        while compressed and (chunk := stream.read(1 << 20)):
          size += len(chunk)
          sink.write(chunk)
        offsets, sizes, lengths = (
          ([0], [size], [size]) if size else ([], [], [])
        )
        empty = 0 if size else 1
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'{path}: cannot be read ({e}).') from e
  finally:
    if sink is not None:
      sink.close()
  if compressed:
    os.replace(tmp_raw, read_path)
  arrays = dict(
    offsets=np.asarray(offsets, np.int64),
    sizes=np.asarray(sizes, np.int64),
    lengths=np.asarray(lengths, np.int64),
    empty=np.asarray(empty, np.int64),
  )
  tmp_index = f'{index_path}.tmp{os.getpid()}.npz'
  np.savez(tmp_index, **arrays)
  os.replace(tmp_index, index_path)
  return dict(kind=kind, read_path=read_path, **arrays)


def resolve_sources(data_dir: str, spec: str) -> List[Tuple[List[str], float]]:
  """Parses `data.sources`: 'GLOB=WEIGHT,GLOB=WEIGHT' relative to `data_dir`.

  Args:
    data_dir: the corpus root (`data.dir`).
    spec: comma-separated `pattern=weight` pairs, e.g.
      'c4/*.json.gz=0.7,wikipedia/*.jsonl=0.3'; `=weight` may be left out
      (weight 1).

  Returns:
    [(sorted file paths, weight)] per source.

  Raises:
    ValueError: a missing directory, an empty spec, a non-positive weight or
      a pattern matching no file.
  """
  if not os.path.isdir(data_dir):
    raise ValueError(
      f'data.dir: expected an existing directory, got {data_dir!r}.'
    )
  out = []
  for item in (s.strip() for s in spec.split(',')):
    if not item:
      continue
    pattern, _, weight = item.partition('=')
    try:
      w = float(weight) if weight else 1.0
    except ValueError:
      w = -1.0
    if not w > 0:
      raise ValueError(
        f'data.sources: expected a positive weight after "=" in '
        f'{item!r}, got {weight!r}.'
      )
    files = sorted(
      p
      for p in glob.glob(os.path.join(data_dir, pattern), recursive=True)
      if os.path.isfile(p)
    )
    if not files:
      raise ValueError(
        f'data.sources: pattern {pattern!r} matches no file in '
        f'data.dir={data_dir!r}.'
      )
    out.append((files, w))
  if not out:
    raise ValueError(
      f'data.sources: expected "GLOB=WEIGHT[,GLOB=WEIGHT...]", got {spec!r}.'
    )
  return out


class MlmSource:
  """Records of L bytes cut from groups of documents (random access).

  `source[i]` is {'ids': int32 [L] byte ids (PAD after the end of the
  group), 'input_mask': int32 [L] (1 real, 0 padding), 'index': int64 []}.

  Args:
    files: corpus files (see the module docstring for the formats).
    cache_dir: where indexes and decompressed copies of .gz files go.
    seq_len: L.
    docs_per_sequence: documents concatenated per group (10 in the paper).
    split: 'train' or 'eval'.
    eval_fraction: the share of documents held out for 'eval' (each
      document is assigned by a seeded draw, independently of the others).
      When that draw leaves a split without documents (always so for one
      document, e.g. a single .txt file), the source is split by bytes
      instead (`split_by` = 'bytes'): the last floor(eval_fraction x n +
      0.5) bytes of each document of n bytes (at least 1, at most n - 1)
      are held out, and the bytes before them are 'train'.
    seed: fixes the held-out documents and the document order.

  Raises:
    ValueError: no files, bad sizes, a split without documents (a source
      whose documents have a byte each), or any error of `index_file`.
  """

  def __init__(
    self,
    files: Sequence[str],
    *,
    cache_dir: str = DEFAULT_CACHE_DIR,
    seq_len: int = 2048,
    docs_per_sequence: int = 10,
    split: str = 'train',
    eval_fraction: float = 0.01,
    seed: int = 0,
  ):
    if not files:
      raise ValueError('files: expected at least one corpus file, got none.')
    if split not in ('train', 'eval'):
      raise ValueError(f"split: expected 'train' or 'eval', got {split!r}.")
    for name, value in (
      ('seq_len', seq_len),
      ('docs_per_sequence', docs_per_sequence),
    ):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name}: expected a positive integer, got {value!r}.')
    if not 0.0 < eval_fraction < 1.0:
      raise ValueError(
        f'eval_fraction: expected a number in (0, 1), got {eval_fraction!r}.'
      )
    self.files = [os.fspath(f) for f in files]
    self.cache_dir = cache_dir
    self.seq_len = seq_len
    self.docs_per_sequence = docs_per_sequence
    self.split = split
    self.eval_fraction = eval_fraction
    self.seed = seed
    self._load()
    if not len(self):
      raise ValueError(
        f'split {split!r} of {len(self.files)} file(s) holds no document '
        f'(first file {self.files[0]!r}); use more data or another '
        f'eval_fraction.'
      )

  def _load(self) -> None:
    """Indexes (or loads the indexes of) the files; builds the record table."""
    self._indexes = [index_file(f, self.cache_dir) for f in self.files]
    self.num_empty_documents = int(sum(ix['empty'] for ix in self._indexes))
    held_out = [
      np.random.default_rng([self.seed, f, 0]).random(len(ix['lengths']))
      < self.eval_fraction
      for f, ix in enumerate(self._indexes)
    ]
    drawn = np.concatenate(held_out)
    by_bytes = drawn.size > 0 and (drawn.all() or not drawn.any())
    self.split_by = 'bytes' if by_bytes else 'documents'
    evaluation = self.split == 'eval'
    # Per file: where each document's bytes of this split start in its
    # text, and how many there are (0: not in this split).
    self._begin, self._size = [], []
    group_file, group_docs, group_len = [], [], []
    k = self.docs_per_sequence
    for f, ix in enumerate(self._indexes):
      full = ix['lengths']
      if by_bytes:
        tail = np.floor(full * self.eval_fraction + 0.5).astype(np.int64)
        tail = np.minimum(np.maximum(tail, 1), full - 1)
        begin = full - tail if evaluation else np.zeros_like(full)
        size = tail if evaluation else full - tail
      else:
        begin = np.zeros_like(full)
        size = np.where(held_out[f] == evaluation, full, 0)
      self._begin.append(begin)
      self._size.append(size)
      docs = np.flatnonzero(size > 0)
      docs = np.random.default_rng([self.seed, f, 1]).permutation(docs)
      pad = (-len(docs)) % k
      table = np.concatenate([docs, np.full(pad, -1, np.int64)]).reshape(-1, k)
      lengths = np.where(table >= 0, size[np.maximum(table, 0)], 0)
      separators = np.maximum((table >= 0).sum(1) - 1, 0)
      group_file.append(np.full(len(table), f, np.int32))
      group_docs.append(table)
      group_len.append(lengths.sum(1) + separators)
    self._group_file = np.concatenate(group_file)
    self._group_docs = np.concatenate(group_docs).reshape(-1, k)
    self._group_len = np.concatenate(group_len).astype(np.int64)
    windows = -(-self._group_len // self.seq_len)
    self._first_record = np.concatenate([[0], np.cumsum(windows)])
    self._fds = {}
    self._last_doc = (None, None)

  def __getstate__(self):
    return {
      k: getattr(self, k)
      for k in (
        'files',
        'cache_dir',
        'seq_len',
        'docs_per_sequence',
        'split',
        'eval_fraction',
        'seed',
      )
    }

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()

  def __len__(self) -> int:
    return int(self._first_record[-1])

  def _read(self, f: int, doc: int, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the text of document `doc` of file `f`."""
    ix = self._indexes[f]
    offset = int(ix['offsets'][doc])
    if ix['kind'] == 'txt':
      data = os.pread(self._fd(f), stop - start, offset + start)
    else:
      if self._last_doc[0] != (f, doc):
        line = os.pread(self._fd(f), int(ix['sizes'][doc]), offset)
        try:
          text = json.loads(line)['text'].encode('utf-8')
        except (ValueError, KeyError, TypeError) as e:
          raise ValueError(
            f'{self.files[f]}: document {doc} (byte {offset}) is no longer '
            f'a JSON object with a "text" field; the file changed after it '
            f'was indexed ({e}).'
          ) from e
        self._last_doc = ((f, doc), text)
      data = self._last_doc[1][start:stop]
    if len(data) != stop - start:
      raise ValueError(
        f'{self.files[f]}: document {doc} is shorter than indexed; the file '
        f'changed after it was indexed (delete {self.cache_dir} to re-index).'
      )
    return data

  def _fd(self, f: int) -> int:
    if f not in self._fds:
      self._fds[f] = os.open(self._indexes[f]['read_path'], os.O_RDONLY)
    return self._fds[f]

  def __getitem__(self, index: int) -> Record:
    n = len(self)
    if not 0 <= index < n:
      raise IndexError(f'index: expected an integer in [0, {n}), got {index}.')
    g = int(np.searchsorted(self._first_record, index, side='right') - 1)
    f = int(self._group_file[g])
    lengths, begins = self._size[f], self._begin[f]
    a = (index - int(self._first_record[g])) * self.seq_len
    b = min(a + self.seq_len, int(self._group_len[g]))
    ids_L = np.full(self.seq_len, TOKENIZER.pad_token, np.int32)
    start = 0  # where the current document starts in the group's stream
    for doc in self._group_docs[g]:
      if doc < 0:
        break
      stop = start + int(lengths[doc])
      lo, hi = max(a, start), min(b, stop)
      if lo < hi:
        skip = int(begins[doc]) - start
        text = self._read(f, int(doc), lo + skip, hi + skip)
        ids_L[lo - a : hi - a] = TOKENIZER.to_int(text)
      if a <= stop < b:  # the separator after this document
        ids_L[stop - a] = TOKENIZER.eos_token
      start = stop + 1
      if start >= b:
        break
    input_mask_L = (np.arange(self.seq_len) < b - a).astype(np.int32)
    return {
      'ids': ids_L,
      'input_mask': input_mask_L,
      'index': np.asarray(index, np.int64),
    }


class MixedSource:
  """Records of several sources mixed with weights (random access).

  Each period of `resolution` records holds round(weight share x
  resolution) consecutive records of each source; the engine's sampler
  shuffles them. The length is the smallest number of whole periods in which
  every record of every source is read at least once; a source whose share
  is larger than its size share wraps around (its records repeat within an
  epoch). `record['index']` is replaced by the index in the mixture.

  Args:
    sources: random-access sources with the same record structure.
    weights: positive numbers, one per source (normalised here).
    resolution: records per period; each source needs at least one.

  Raises:
    ValueError: mismatched lengths, non-positive weights, an empty source,
      or a weight too small for `resolution`.
  """

  def __init__(
    self, sources: Sequence, weights: Sequence[float], resolution: int = 1000
  ):
    if len(sources) != len(weights) or not sources:
      raise ValueError(
        f'weights: expected one weight per source ({len(sources)}), got '
        f'{len(weights)}.'
      )
    w = np.asarray(weights, np.float64)
    if not np.all(w > 0):
      raise ValueError(f'weights: expected positive numbers, got {weights}.')
    sizes = [len(s) for s in sources]
    if min(sizes) == 0:
      raise ValueError(f'sources: expected non-empty sources, got {sizes}.')
    exact = w / w.sum() * resolution
    counts = np.floor(exact).astype(np.int64)
    # Largest remainders get the records left over by rounding down.
    extra = np.argsort(-(exact - counts), kind='stable')
    counts[extra[: resolution - counts.sum()]] += 1
    if counts.min() < 1:
      raise ValueError(
        f'weights: {list(weights)} gives a source less than one record in '
        f'{resolution}; raise resolution or the weight.'
      )
    self.sources = list(sources)
    self.counts = counts
    self.resolution = resolution
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    periods = max(-(-size // c) for size, c in zip(sizes, counts))
    self._len = int(periods * resolution)

  def __len__(self) -> int:
    return self._len

  def locate(self, index: int) -> Tuple[int, int]:
    """(source, record of that source) of mixture record `index`."""
    if not 0 <= index < self._len:
      raise IndexError(
        f'index: expected an integer in [0, {self._len}), got {index}.'
      )
    period, r = divmod(index, self.resolution)
    k = int(np.searchsorted(self._starts, r, side='right') - 1)
    inner = period * int(self.counts[k]) + r - int(self._starts[k])
    return k, inner % len(self.sources[k])

  def __getitem__(self, index: int) -> Record:
    k, inner = self.locate(index)
    record = dict(self.sources[k][inner])
    record['index'] = np.asarray(index, np.int64)
    return record


def check_length_curriculum(
  lengths: Sequence[int], reach: Sequence[float], seq_len: int
) -> None:
  """Raises ValueError naming `data.lengths` / `data.length_reach` unless
  they are a valid schedule for records of `seq_len` bytes (see
  `shorten_records`)."""
  lengths, reach = tuple(lengths), tuple(reach)
  if len(lengths) != len(reach):
    raise ValueError(
      f'data.length_reach: expected one fraction per entry of data.lengths '
      f'{lengths}, got {reach}.'
    )
  if any(
    isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= seq_len
    for n in lengths
  ):
    raise ValueError(
      f'data.lengths: expected integers in [1, data.seq_len={seq_len}], got '
      f'{lengths}.'
    )
  if reach and (
    reach[0] != 0.0
    or any(not b > a for a, b in zip(reach, reach[1:]))
    or reach[-1] >= 1.0
  ):
    raise ValueError(
      f'data.length_reach: expected increasing fractions starting at 0.0, '
      f'below 1.0, got {reach}.'
    )


def shorten_records(
  record: Record,
  *,
  lengths: Sequence[int],
  reach: Sequence[float],
  progress,
) -> Record:
  """A curriculum on the record length: the first `lengths[i]` bytes stay,
  the rest become padding, from the training fraction `reach[i]` on.

  The batch shape stays [B, data.seq_len] (one compiled step); bytes past
  the current length are PAD with `input_mask` 0, so the model neither reads
  nor predicts them (masking runs after this op). Not from the paper: a
  measure for the CPU-sized runs (docs/results/mlm.md), where short records
  are what lets the byte Perceiver learn where to read early.

  Args:
    record: {'ids': int32 [L], 'input_mask': int32 [L], ...}.
    lengths: bytes kept per stage (checked by `check_length_curriculum`).
    reach: the training fraction at which each stage starts (0.0 first).
    progress: the engine's `perceiver.train.data.Progress` of the record.

  Returns:
    The record with 'ids' and 'input_mask' cut to the stage's length.
  """
  stage = int(np.searchsorted(np.asarray(reach), progress.fraction, 'right'))
  keep = lengths[max(stage - 1, 0)]
  out = dict(record)
  out['ids'] = record['ids'].copy()
  out['ids'][keep:] = TOKENIZER.pad_token
  out['input_mask'] = record['input_mask'].copy()
  out['input_mask'][keep:] = 0
  return out


def mask_whole_words(
  record: Record,
  rng: np.random.Generator,
  *,
  mask_fraction: float = 0.15,
  mask_token_fraction: float = 0.8,
  random_token_fraction: float = 0.1,
) -> Record:
  """15% whole-word masking of one record (see the module docstring).

  Args:
    record: {'ids': int32 [L], 'input_mask': int32 [L], ...}.
    rng: all randomness (the engine derives it from seed, epoch, index).
    mask_fraction: the share of real bytes (input_mask 1) to predict.
    mask_token_fraction: the share of chosen words replaced by MASK ids.
    random_token_fraction: the share of chosen words replaced by random byte
      ids (uniform over the 256 byte values); the rest stay unchanged.

  Returns:
    {'inputs': int32 [L] (what the model reads), 'input_mask': int32 [L],
    'targets': int32 [L] (the original ids), 'target_mask': float32 [L] (1 at
    the bytes to predict)}; other keys of `record` are dropped.

  Raises:
    ValueError: fractions outside [0, 1] or summing to more than 1.
  """
  if not 0.0 <= mask_fraction <= 1.0:
    raise ValueError(
      f'mask_fraction: expected a number in [0, 1], got {mask_fraction!r}.'
    )
  if (
    min(mask_token_fraction, random_token_fraction) < 0
    or mask_token_fraction + random_token_fraction > 1
  ):
    raise ValueError(
      f'mask_token_fraction + random_token_fraction: expected non-negative '
      f'shares summing to at most 1, got {mask_token_fraction!r} + '
      f'{random_token_fraction!r}.'
    )
  ids_L = record['ids']
  real_L = record['input_mask'].astype(bool)
  space_L = np.isin(
    ids_L, np.asarray(WHITESPACE_BYTES) + TOKENIZER.num_reserved_tokens
  )
  in_word_L = real_L & ~space_L & (ids_L >= TOKENIZER.num_reserved_tokens)
  starts_L = in_word_L & ~np.concatenate([[False], in_word_L[:-1]])
  word_L = np.where(in_word_L, np.cumsum(starts_L) - 1, -1)  # word of a byte
  num_words = int(starts_L.sum())
  word_len = np.bincount(word_L[in_word_L], minlength=num_words)
  budget = int(round(mask_fraction * int(real_L.sum())))
  order = rng.permutation(num_words)
  taken = np.cumsum(word_len[order]) <= budget
  fate = rng.random(num_words)  # < m: MASK, < m + r: random, else keep
  # One slot past the words for bytes outside any word (word_L = -1), so a
  # record without a word (white space or padding only) masks nothing.
  chosen = np.zeros(num_words + 1, bool)
  chosen[order[taken]] = True
  target_L = in_word_L & chosen[word_L]
  fate_L = np.append(fate, 1.0)[word_L]
  inputs_L = ids_L.copy()
  to_mask_L = target_L & (fate_L < mask_token_fraction)
  to_random_L = (
    target_L
    & ~to_mask_L
    & (fate_L < mask_token_fraction + random_token_fraction)
  )
  inputs_L[to_mask_L] = TOKENIZER.mask_token
  random_ids = rng.integers(
    TOKENIZER.num_reserved_tokens, TOKENIZER.vocab_size, size=ids_L.shape
  )
  inputs_L[to_random_L] = random_ids[to_random_L]
  return {
    'inputs': inputs_L.astype(np.int32),
    'input_mask': record['input_mask'].astype(np.int32),
    'targets': ids_L.astype(np.int32),
    'target_mask': target_L.astype(np.float32),
  }


def mask_whole_words_fixed(record: Record, *, seed: int, **kwargs) -> Record:
  """`mask_whole_words` with rng from (seed, record['index']): fixed masks.

  For held-out data, whose masks must not change between evaluations.
  """
  rng = np.random.default_rng([seed, int(record['index'])])
  return mask_whole_words(record, rng, **kwargs)


def unigram_log_probs(source, num_records: int) -> np.ndarray:
  """Log-probabilities of a unigram model of the maskable bytes.

  Counted over the non-white-space byte ids (the ones masking can choose)
  of the first `num_records` records of `source` (a training split), with
  add-one smoothing over the 256 byte values; the special ids get -inf.

  Args:
    source: a random-access source of {'ids', 'input_mask'} records.
    num_records: how many records to count (all if larger than the source).

  Returns:
    float64 [V] natural-log probabilities.
  """
  counts_V = np.zeros(TOKENIZER.vocab_size, np.int64)
  white = np.asarray(WHITESPACE_BYTES) + TOKENIZER.num_reserved_tokens
  for i in range(min(num_records, len(source))):
    r = source[i]
    ids = r['ids'][r['input_mask'].astype(bool)]
    ids = ids[(ids >= TOKENIZER.num_reserved_tokens) & ~np.isin(ids, white)]
    counts_V += np.bincount(ids, minlength=TOKENIZER.vocab_size)
  counts_V[TOKENIZER.num_reserved_tokens :] += 1
  with np.errstate(divide='ignore'):
    return np.log(counts_V / counts_V.sum())


def build_sources(
  data_dir: str,
  spec: str,
  *,
  split: str,
  cache_dir: str,
  seq_len: int,
  docs_per_sequence: int,
  eval_fraction: float,
  seed: int,
  resolution: int = 1000,
) -> MixedSource:
  """`MixedSource` of the `MlmSource`s named by `data.sources` (one split).

  The 'train' split mixes the sources with their weights; the 'eval' split
  holds every held-out record of every source exactly once (the weights
  only matter for training).
  """
  parts = resolve_sources(data_dir, spec)
  sources = [
    MlmSource(
      files,
      cache_dir=cache_dir,
      seq_len=seq_len,
      docs_per_sequence=docs_per_sequence,
      split=split,
      eval_fraction=eval_fraction,
      seed=seed,
    )
    for files, _ in parts
  ]
  if split == 'eval':
    sizes = [len(s) for s in sources]
    return MixedSource(sources, sizes, resolution=sum(sizes))
  return MixedSource(sources, [w for _, w in parts], resolution=resolution)


def describe(source: MixedSource) -> str:
  """A one-line summary: records per source, empty documents skipped and
  whether a source is held out by bytes (`MlmSource.split_by`)."""
  parts = []
  for s, c in zip(source.sources, source.counts):
    parts.append(
      f'{len(s)} records from {len(s.files)} file(s) '
      f'({c}/{source.resolution} of each period'
      + (
        f', {s.num_empty_documents} empty documents not used'
        if s.num_empty_documents
        else ''
      )
      + (', held out by bytes' if s.split_by == 'bytes' else '')
      + ')'
    )
  return f'{len(source)} records: ' + '; '.join(parts)
