"""Fixtures shared by several test files."""

import json
import os

import pytest

# libtpu (installed for the compile-only tests, tests/test_aot.py) takes a
# machine-wide lock when it loads; the tests compile for TPU slices without
# a TPU, in several processes at once (pytest-xdist, subprocesses).
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

# The suite compiles thousands of small programs and runs each a few times:
# compiling dominates, so XLA's CPU backend compiles them at LLVM
# optimisation level 0, which compiles faster.
# This changes the generated machine code, not the computation (XLA's CPU
# fast-math stays off). Subprocesses inherit it (test_train_common.cpu_env).
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']
  ).strip()

# One persistent XLA compilation cache for every process of a test run (the
# pytest-xdist workers and the training processes the tests launch inherit
# the environment): dozens of tests compile the same debug-sized steps, and
# each launched process would otherwise compile them again. Only programs
# that took at least jax's default 1 s to compile are stored, and no size
# bound is set (jax's bound rescans the whole directory at every write).
# Keys are the compiled programs (HLO, options, devices, jax and XLA
# versions), so a stale entry is never used; `make clean` removes it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(_ROOT, '.pytest_cache', 'jax_compilation_cache'),
)

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
