"""Fixtures shared by several test files."""

import json
import os

import pytest

# libtpu (installed for the compile-only tests, tests/test_aot.py) takes a
# machine-wide lock when it loads; the tests compile for TPU slices without
# a TPU, in several processes at once (pytest-xdist, subprocesses).
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

# The released checkpoints' parameter trees (names, shapes, dtypes, counts),
# shipped in the repository.
RELEASED_CHECKPOINTS = os.path.join(
  os.path.dirname(__file__), 'data', 'released_checkpoints.json'
)


@pytest.fixture(scope='session')
def official():
  """{model name: {'params': tree, 'state': tree, ...}} of the six files."""
  with open(RELEASED_CHECKPOINTS) as f:
    return json.load(f)
