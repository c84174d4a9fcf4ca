"""Packaging checks: pinned requirements and the vendored MNIST digits."""

import os
import re
import shutil

import numpy as np
import pytest

from experiments import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*$')


def _requirement_lines(name):
  with open(os.path.join(ROOT, name)) as f:
    lines = (line.split('#', 1)[0].strip() for line in f)
    return [line for line in lines if line]


@pytest.mark.parametrize('name', ['requirements.txt', 'requirements-test.txt'])
def test_every_requirement_is_pinned(name):
  lines = _requirement_lines(name)
  assert lines, f'{name} is empty'
  unpinned = [line for line in lines if not PIN.match(line)]
  assert not unpinned, f'{name}: not pinned with ==: {unpinned}'


def test_torch_pinned_to_local_cpu_build():
  # Any other torch pulls a multi-GB CUDA build on the project's machines.
  assert 'torch==2.13.0' in _requirement_lines('requirements-test.txt')


def test_requirement_files_do_not_overlap():
  def names(file):
    return {
      line.split('==')[0].lower().replace('_', '-')
      for line in _requirement_lines(file)
    }

  both = names('requirements.txt') & names('requirements-test.txt')
  assert not both, f'listed in both requirement files: {both}'


def test_load_mnist_10k_shapes_dtypes_classes():
  images, labels = data.load_mnist_10k()
  assert images.dtype == np.uint8
  assert images.shape == (data.MNIST_10K_SIZE, 28, 28)
  assert labels.dtype == np.int32
  assert labels.shape == (data.MNIST_10K_SIZE,)
  counts = np.bincount(labels, minlength=10)
  assert counts.shape == (10,)
  # Roughly balanced: ~1000 per class (MNIST itself ranges 863..1127 here).
  assert counts.min() > 800 and counts.max() < 1200, counts
  # Real digits: mostly background with some full-ink pixels.
  assert images.max() == 255
  assert 0.1 < (images > 0).mean() < 0.3


def test_load_mnist_10k_prefix_is_balanced():
  # The file is shuffled, so a train/test split by prefix has every class.
  _, labels = data.load_mnist_10k()
  assert np.bincount(labels[8000:], minlength=10).min() > 120


def test_load_mnist_10k_missing_file(tmp_path):
  with pytest.raises(data.DataError, match='not found'):
    data.load_mnist_10k(str(tmp_path / 'absent.npz'))


@pytest.mark.parametrize(
  'content',
  [
    b'',
    b'version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n',
  ],
)
def test_load_mnist_10k_damaged_file(tmp_path, content):
  path = tmp_path / 'mnist.npz'
  path.write_bytes(content)
  with pytest.raises(data.DataError, match='damaged'):
    data.load_mnist_10k(str(path))


def test_load_mnist_10k_truncated_copy(tmp_path):
  path = tmp_path / 'mnist.npz'
  with open(data.MNIST_10K_PATH, 'rb') as f:
    path.write_bytes(f.read()[:100_000])
  with pytest.raises(data.DataError, match='damaged'):
    data.load_mnist_10k(str(path))


def test_load_mnist_10k_wrong_shape(tmp_path):
  path = tmp_path / 'mnist.npz'
  np.savez(
    path, images=np.zeros((5, 8, 8), np.uint8), labels=np.zeros(5, np.uint8)
  )
  with pytest.raises(data.DataError, match=r'uint8 \[N, 28, 28\]'):
    data.load_mnist_10k(str(path))


def test_load_mnist_10k_checks_sha_of_default_file(tmp_path, monkeypatch):
  copy = tmp_path / 'mnist_10k.npz'
  shutil.copy(data.MNIST_10K_PATH, copy)
  with open(copy, 'ab') as f:
    f.write(b'\0')
  monkeypatch.setattr(data, 'MNIST_10K_PATH', str(copy))
  with pytest.raises(data.DataError, match='sha256'):
    data.load_mnist_10k()
