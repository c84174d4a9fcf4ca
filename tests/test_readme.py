"""Every Python block of the README and the user guides runs as written.

The documents are README.md and every docs/guide/*.md. Blocks run in order,
each in a fresh namespace, from the repository root (as the documents'
commands are). A block whose first line is `# <name>.py` is an experiment
file: it is also written to that name and trained for its `:debug` steps
through the engine, then restored and used for a prediction. The README keeps
one section per user path, links every guide, and its Layout names every
file of the repository.
"""

import glob
import os
import re
import subprocess

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
README = os.path.join(ROOT, 'README.md')
GUIDES = sorted(glob.glob(os.path.join(ROOT, 'docs', 'guide', '*.md')))
DOCS = [README] + GUIDES


def read(path):
  with open(path) as f:
    return f.read()


def python_blocks(path):
  """[(document, line, code)] of each ```python block of `path`.

  `document` is the path relative to the repository root; `line` is the
  1-based line of the block's first code line.
  """
  text = read(path)
  name = os.path.relpath(path, ROOT)
  blocks = []
  for match in re.finditer(r'```python\n(.*?)```', text, re.S):
    line = text.count('\n', 0, match.start()) + 2
    blocks.append((name, line, match.group(1)))
  return blocks


BLOCKS = [block for path in DOCS for block in python_blocks(path)]
EXPERIMENT_FILES = [
  (doc, line, m.group(1), code)
  for doc, line, code in BLOCKS
  for m in [re.match(r'# (\w+\.py)\n', code)]
  if m
]


def test_readme_has_the_user_paths():
  text = read(README)
  for heading in (
    '## Install',
    '## Quick start',
    '## Released checkpoints',
    '## Train on your own data',
    '## Use a trained model',
    '## The modules',
    '## Command line',
    '### Will it fit my TPU slice?',
    '## Experiments',
    '## Layout',
  ):
    assert f'\n{heading}\n' in text, heading
  # The two commands of a fresh machine.
  assert 'make train ' in text and 'make test ' in text
  assert 'storage.googleapis.com/perceiver_io/' in text
  # The runnable examples of the modules and of restoring a trained model.
  readme_code = [code for doc, _, code in BLOCKS if doc == 'README.md']
  for call in ('perceiver.Perceiver(', 'restore.restore(workdir)'):
    assert any(call in code for code in readme_code), call
  assert EXPERIMENT_FILES, 'no document shows an experiment file'


def test_readme_links_every_guide_and_results_page():
  text = read(README)
  assert GUIDES, 'docs/guide/ holds no guide'
  pages = GUIDES + glob.glob(os.path.join(ROOT, 'docs', 'results', '*.md'))
  for path in pages:
    assert f'({os.path.relpath(path, ROOT)}' in text, path


@pytest.mark.parametrize(
  'path', DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS]
)
def test_docs_relative_links_resolve(path):
  links = re.findall(r'\]\(([^)#:]+)[)#]', read(path))
  assert links, path
  for link in links:
    target = os.path.join(os.path.dirname(path), link)
    assert os.path.exists(target), f'{os.path.relpath(path, ROOT)}: {link}'


def layout_paths(text):
  """(files, leaf_dirs) named by the README's Layout block.

  A line is `<indent><name> [<name> ...]  <description>`; a name ending in
  '/' is a folder, and the lines indented below it name its contents. A
  folder with no lines below it stands for everything in it. Lines indented
  8 or more spaces past their entry's column continue a description.
  """
  block = re.search(r'\n## Layout\n\n```\n(.*?)```', text, re.S).group(1)
  files, leaf_dirs, stack = set(), set(), []  # stack: [(indent, folder)]
  for raw in block.splitlines():
    indent = len(raw) - len(raw.lstrip(' '))
    if not raw.strip() or (stack and indent >= stack[-1][0] + 8):
      continue
    while stack and stack[-1][0] >= indent:
      stack.pop()
    prefix = ''.join(folder for _, folder in stack)
    names = re.split(r' {2,}', raw.strip())[0].split(' ')
    for name in names:
      if name.endswith('/'):
        leaf_dirs.add(prefix + name)
      else:
        files.add(prefix + name)
    if names[-1].endswith('/'):
      stack.append((indent, names[-1]))
  # A folder with named contents is not a leaf.
  leaf_dirs = {
    d for d in leaf_dirs if not any(f.startswith(d) and f != d for f in files)
  }
  return files, leaf_dirs


def test_readme_layout_names_every_file():
  try:
    tracked = subprocess.run(
      ['git', 'ls-files'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout: no list of tracked files')
  files, leaf_dirs = layout_paths(read(README))
  missing = [
    path
    for path in tracked
    if path not in files and not any(path.startswith(d) for d in leaf_dirs)
  ]
  assert not missing, f'README Layout omits {missing}'
  stale = sorted(f for f in files if not os.path.exists(os.path.join(ROOT, f)))
  assert not stale, f'README Layout names missing files {stale}'


@pytest.mark.parametrize(
  'doc, line, code',
  BLOCKS,
  ids=[f'{doc}:{line}' for doc, line, _ in BLOCKS],
)
def test_docs_python_block_runs(doc, line, code, monkeypatch):
  monkeypatch.chdir(ROOT)
  # Prints from training go to the captured output; a fresh namespace.
  exec(compile(code, f'{doc}:{line}', 'exec'), {'__name__': 'readme'})  # pylint: disable=exec-used


@pytest.mark.parametrize(
  'doc, line, name, code',
  EXPERIMENT_FILES,
  ids=[f'{doc}:{line}:{name}' for doc, line, name, _ in EXPERIMENT_FILES],
)
def test_docs_experiment_file_trains_and_restores(
  doc, line, name, code, tmp_path
):
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top
  from perceiver.train import restore  # pylint: disable=g-import-not-at-top

  del doc, line  # in the test id
  path = tmp_path / name
  path.write_text(code)
  experiment = restore.load_experiment(str(path))
  config = experiment.get_config('debug')
  config.progress_bar = False
  config.plot_curves = False
  workdir = str(tmp_path / f'run_{name}')
  result = loop.train(config, experiment.build_task, workdir)
  assert np.isfinite(list(result['losses'].values())).all()
  model = restore.restore(workdir, str(path))
  example = experiment.build_task(config, 0, 1).example_batch
  outputs = model.predict(example)
  want, _ = model.forward.apply(
    result['train_state'].params,
    result['train_state'].state,
    None,
    example,
    is_training=False,
  )
  np.testing.assert_allclose(outputs, want, rtol=1e-5, atol=1e-5)
