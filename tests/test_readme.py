"""Every Python block of the README runs as written.

Blocks run in order, each in a fresh namespace, from the repository root (as
the README's commands are). A block whose first line is `# <name>.py` is an
experiment file: it is also written to that name and trained for its
`:debug` steps through the engine, then restored and used for a prediction.
"""

import os
import re

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
README = os.path.join(ROOT, 'README.md')


def python_blocks():
  with open(README) as f:
    text = f.read()
  blocks = []
  for match in re.finditer(r'```python\n(.*?)```', text, re.S):
    line = text.count('\n', 0, match.start()) + 2  # the block's first line
    blocks.append((line, match.group(1)))
  return blocks


BLOCKS = python_blocks()


def test_readme_has_the_user_paths():
  with open(README) as f:
    text = f.read()
  for heading in (
    '## Usage',
    '## Released checkpoints',
    '## Train on your own data',
    '## Use a trained model',
    '## Experiments',
  ):
    assert f'\n{heading}\n' in text, heading
  assert len(BLOCKS) >= 5
  assert 'storage.googleapis.com/perceiver_io/' in text


@pytest.mark.parametrize(
  'line, code', BLOCKS, ids=[f'line{line}' for line, _ in BLOCKS]
)
def test_readme_python_block_runs(line, code, monkeypatch):
  monkeypatch.chdir(ROOT)
  # Prints from training go to the captured output; a fresh namespace.
  exec(compile(code, f'README.md:{line}', 'exec'), {'__name__': 'readme'})  # pylint: disable=exec-used


def test_readme_experiment_file_trains_and_restores(tmp_path, monkeypatch):
  from perceiver.train import loop  # pylint: disable=g-import-not-at-top
  from perceiver.train import restore  # pylint: disable=g-import-not-at-top

  files = [
    (m.group(1), code)
    for _, code in BLOCKS
    for m in [re.match(r'# (\w+\.py)\n', code)]
    if m
  ]
  assert files, 'the README shows no experiment file'
  for name, code in files:
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
