"""A toy task shared by the training-engine tests (no tests of its own).

A small Haiku MLP (optionally with BatchNorm and dropout) classifying
synthetic Gaussian blobs: deterministic, tiny, and fast on a CPU. It is also
an experiment file for `experiments.main`
(`--config=tests/test_train_common.py`), for tests that need a real job.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from perceiver.train import config as config_lib
from perceiver.train import data as data_lib
from perceiver.train.evaluation import Evaluator
from perceiver.train.task import Task

NUM_CLASSES = 4
DIM = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What every result.json holds besides the final metrics: the step, the
# training time and where the run's wall time went (perceiver/train/loop.py).
RESULT_KEYS = {
  'step',
  'train_time_s',
  'time/compile_s',
  'time/checkpoint_s',
  'time/eval_s',
  'time/data_wait_s',
  'time/wall_s',
  'time/steps_s',
  'perf/goodput',
}


def toy_arrays(n=256, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(NUM_CLASSES, DIM)).astype(np.float32) * 2
  labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
  x = centres[labels] + rng.normal(size=(n, DIM)).astype(np.float32)
  return {'x': x, 'label': labels}


def toy_config(**overrides):
  c = config_lib.base_config()
  c.seed = 3
  c.batch_size = 16
  c.total_steps = 6
  c.log_every = 1
  c.checkpoint_every = 3
  c.eval_batch_size = 32
  c.progress_bar = False
  c.tensorboard = False
  c.plot_curves = False
  c.optimizer.name = 'adamw'
  c.optimizer.base_lr = 1e-2
  c.optimizer.scale_by_batch = False
  c.optimizer.schedule = 'constant'
  c.optimizer.weight_decay = 1e-2
  c.optimizer.clip_norm = 1.0
  c.model = ml_collections.ConfigDict(
    dict(
      width=16,
      batchnorm=False,
      dropout=0.0,
      nan_at_step=-1,
      interrupt_at_step=-1,
      kill_at_step=-1,  # SIGKILL when the batch of this step is asked for
      sigterm_at_step=-1,  # SIGTERM then, on process `sigterm_process`
      sigterm_process=0,
    )
  )
  for k, v in overrides.items():
    target = c
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  return c


def get_config(arg=''):
  """The toy config, for `experiments.main`."""
  del arg
  return toy_config()


def build_toy_task(config, process_index, process_count):
  m = config.model

  def forward_fn(batch, *, is_training):
    x = batch['x']
    # No bias before BatchNorm (it would be cancelled; Adam would then
    # amplify rounding noise in its zero gradient), as in the conv stem.
    x = hk.Linear(m.width, with_bias=not m.batchnorm, name='linear_1')(x)
    if m.batchnorm:
      x = hk.BatchNorm(True, True, 0.9, name='batchnorm')(
        x, is_training=is_training
      )
    x = jax.nn.gelu(x)
    if is_training and m.dropout > 0:
      x = hk.dropout(hk.next_rng_key(), m.dropout, x)
    x = hk.LayerNorm(-1, True, True, name='layer_norm')(x)
    return hk.Linear(NUM_CLASSES, name='head')(x)

  def per_example(logits, batch):
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['label']
    )
    if 'poison' in batch:  # NaN injection for the non-finite tests.
      loss = loss * batch['poison']
    return {
      'loss': loss,
      'accuracy': (jnp.argmax(logits, -1) == batch['label']).astype(
        jnp.float32
      ),
    }

  arrays = toy_arrays()
  train = {k: v[:192] for k, v in arrays.items()}
  held = {k: v[192:] for k, v in arrays.items()}
  it = data_lib.train_iterator(
    data_lib.ArraySource(train),
    global_batch=config.batch_size,
    seed=config.seed,
    process_index=process_index,
    process_count=process_count,
    worker_count=config.data.worker_count,
  )
  # Always wrapped, so that checkpoints of faulty and clean runs match.
  signals = {m.kill_at_step: signal.SIGKILL}
  if process_index == m.sigterm_process:
    signals[m.sigterm_at_step] = signal.SIGTERM
  it = _Faulty(it, m.nan_at_step, m.interrupt_at_step, signals)
  eval_data = lambda: data_lib.eval_batches(
    data_lib.ArraySource(held),
    global_batch=config.eval_batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  return Task(
    forward=hk.transform_with_state(forward_fn),
    per_example=per_example,
    train_data=it,
    example_batch={k: v[:2] for k, v in train.items()},
    evaluators=[Evaluator(name='', data=eval_data, predict=per_example)],
  )


class Interrupted(Exception):
  """Raised by the toy data to simulate a preempted job."""


build_task = build_toy_task  # The name `experiments.main` looks for.


class _Faulty:
  """Toy data with faults: a NaN 'poison' factor at one step (0-based), an
  interruption or a signal to this process when the batch of a given step
  is requested."""

  def __init__(self, inner, bad_step, interrupt_step, signals):
    self.inner, self.bad_step, self.step = inner, bad_step, 0
    self.interrupt_step = interrupt_step
    self.signals = signals

  def __next__(self):
    if self.step == self.interrupt_step:
      raise Interrupted(f'interrupted before step {self.step}')
    if self.step in self.signals:
      os.kill(os.getpid(), self.signals[self.step])
    b = dict(next(self.inner))
    n = len(b['label'])
    b['poison'] = np.full(
      (n,), np.nan if self.step == self.bad_step else 1.0, np.float32
    )
    self.step += 1
    return b

  def get_state(self):
    inner = self.inner.get_state().decode()
    return json.dumps({'inner': inner, 'step': self.step}).encode()

  def set_state(self, state):
    state = json.loads(state)
    self.step = state['step']
    self.inner.set_state(state['inner'].encode())

  def start_prefetch(self):
    self.inner.start_prefetch()


def params_close(a, b, rtol=1e-5, atol=1e-6):
  leaves = jax.tree.leaves(
    jax.tree.map(
      lambda x, y: np.allclose(
        np.asarray(x), np.asarray(y), rtol=rtol, atol=atol
      ),
      a,
      b,
    )
  )
  return all(leaves)


def cpu_env(devices=None):
  """The environment of a subprocess on CPU: this process's, plus
  `devices` fake CPU devices when given (XLA fixes the count at start-up).
  The other flags in XLA_FLAGS (tests/conftest.py's) are kept; a device
  count there is replaced."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if devices is not None:
    count = '--xla_force_host_platform_device_count'
    flags = [f for f in env.get('XLA_FLAGS', '').split() if count not in f]
    env['XLA_FLAGS'] = ' '.join(flags + [f'{count}={devices}'])
  return env


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch_main(args, *, num_processes=1, devices=1, timeout=400):
  """Runs `python -m experiments.main ARGS` as a job of `num_processes`
  processes on 127.0.0.1 with `devices` CPU devices each.

  Each process gets its own session; once it has exited, whatever it left
  behind (loader workers orphaned by a SIGKILL) is killed with the session.

  Returns:
    [(return code, stdout + stderr)] per process.
  """
  env = cpu_env(devices)
  multi = []
  if num_processes > 1:
    multi = [
      f'--coordinator_address=127.0.0.1:{free_port()}',
      f'--num_processes={num_processes}',
    ]
  with tempfile.TemporaryDirectory() as logs:
    files = [
      open(os.path.join(logs, str(i)), 'w+') for i in range(num_processes)
    ]
    procs = [
      subprocess.Popen(
        [sys.executable, '-m', 'experiments.main', *args, *multi]
        + ([f'--process_id={i}'] if multi else []),
        env=env,
        cwd=ROOT,
        stdout=f,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
      )
      for i, f in enumerate(files)
    ]
    results = []
    for p, f in zip(procs, files):
      try:
        p.wait(timeout=timeout)
      finally:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      f.seek(0)
      results.append((p.returncode, f.read()))
      f.close()
  return results


def run_python(args, *, devices=None, timeout=600):
  """`python ARGS` from the repository root on CPU, with `devices` fake CPU
  devices when given (XLA fixes the count at start-up, hence a process):
  the CompletedProcess, with stdout and stderr apart."""
  return subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=cpu_env(devices),
  )


def run_main(*args, timeout=600):
  """`python -m experiments.main ARGS` on CPU (`run_python`), for exit
  statuses and messages."""
  return run_python(['-m', 'experiments.main', *args], timeout=timeout)


def snapshot(workdir):
  """{relative path: bytes} of every file under `workdir`."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


def train_losses(workdir):
  """{step: loss} of the training records in `<workdir>/metrics.jsonl`."""
  from perceiver.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  return {
    r['step']: r['loss'] for r in metrics_lib.read_metrics(path) if 'loss' in r
  }
