"""Fixtures shared by several test files."""

import json
import os

import pytest

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
