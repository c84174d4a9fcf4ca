"""Packaging checks: pinned requirements and the vendored MNIST digits."""

import os
import shutil

import numpy as np
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

from experiments import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORTED_PYTHONS = ('3.11', '3.12', '3.13')


def _requirements(name):
  """The requirement lines of `name`, parsed (PEP 508, markers included)."""
  with open(os.path.join(ROOT, name)) as f:
    lines = (line.split('#', 1)[0].strip() for line in f)
    return [Requirement(line) for line in lines if line]


def _pins_for(name, python_version):
  """{package: version} that pip installs from `name` on `python_version`."""
  env = {
    'python_version': python_version,
    'python_full_version': python_version + '.0',
  }
  pins = {}
  for req in _requirements(name):
    if req.marker is not None and not req.marker.evaluate(env):
      continue
    key = canonicalize_name(req.name)
    assert key not in pins, f'{name}: {key} pinned twice for {python_version}'
    pins[key] = req.specifier
  return pins


@pytest.mark.parametrize('python_version', SUPPORTED_PYTHONS)
@pytest.mark.parametrize('name', ['requirements.txt', 'requirements-test.txt'])
def test_every_requirement_is_pinned(name, python_version):
  pins = _pins_for(name, python_version)
  assert pins, f'{name} is empty'
  unpinned = {
    k: str(s)
    for k, s in pins.items()
    if len(s) != 1 or next(iter(s)).operator != '=='
  }
  assert not unpinned, (
    f'{name}: not pinned with == on {python_version}: {unpinned}'
  )


@pytest.mark.parametrize('python_version', SUPPORTED_PYTHONS)
def test_jax_and_jaxlib_pinned_together(python_version):
  pins = _pins_for('requirements.txt', python_version)
  assert str(pins['jax']) == str(pins['jaxlib'])
  # jax 0.11+ needs Python 3.12; 3.11 keeps the last release for it.
  expected = '==0.10.2' if python_version == '3.11' else '==0.12.0.1'
  assert str(pins['jax']) == expected


def test_torch_only_where_its_cpu_build_exists():
  # Any other torch pulls a multi-GB CUDA build on the project's machines.
  assert str(_pins_for('requirements-test.txt', '3.11')['torch']) == '==2.13.0'
  for version in SUPPORTED_PYTHONS[1:]:
    assert 'torch' not in _pins_for('requirements-test.txt', version)


def test_requirement_files_do_not_overlap():
  names = lambda f: {canonicalize_name(r.name) for r in _requirements(f)}
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
