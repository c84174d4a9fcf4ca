"""Metric logs in the workdir: JSONL, TensorBoard events and a PNG plot.

`metrics.jsonl` holds one JSON object per logged step, with at least 'step'
and 'loss' for training records and 'eval/...' entries for evaluations.
Training records also have the input timings of `InputTimer` ('data_wait_s',
'data_wait_fraction', 'examples_per_s'), the utilisation ('perf/step_flops'
per device, 'perf/tflops_per_device' and, on a chip of known peak,
'perf/mfu'; see `loop.train`), the totals of `RunTimer` ('time/compile_s',
'time/checkpoint_s', 'time/eval_s', 'time/data_wait_s', 'time/steps_s',
'time/wall_s', 'perf/goodput') and, with `data.skip_corrupt`,
'skipped_records'.
Only process 0 writes; on the other processes the writer does nothing.
Records are appended, so a resumed run continues the same file (records at
steps past the restored checkpoint, left by the crashed run, are dropped on
open so every step appears once).
"""

import contextlib
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'training_curves.png'


def _to_float(v) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard."""

  def __init__(
    self,
    workdir: str,
    *,
    enabled: bool = True,
    resume_step: Optional[int] = None,
    drop_eval_at_resume: bool = False,
    tensorboard: bool = True,
  ):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self.plot_path = os.path.join(workdir, PLOT_FILE)
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step or 0, drop_eval_at_resume)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(
        os.path.join(workdir, 'tensorboard'), purge_step=resume_step or None
      )

  def _truncate_after(self, step: int, drop_eval_at_step: bool) -> None:
    """Keeps only the records with step <= `step` (all of them if 0 and new),
    less the evaluation records at `step` if `drop_eval_at_step`."""
    if not os.path.exists(self.path):
      return

    def keep(r) -> bool:
      at = r.get('step', 0)
      if drop_eval_at_step and at == step:
        return not any(k.startswith('eval/') for k in r)
      return at <= step

    kept = [r for r in read_metrics(self.path) if keep(r)]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      for r in kept:
        f.write(json.dumps(r) + '\n')
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: _to_float(v) for k, v in scalars.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in record.items():
        if k != 'step' and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def plot(self) -> None:
    """Saves the training curves to `<workdir>/training_curves.png`."""
    if not self.enabled or not os.path.exists(self.path):
      return
    plot_metrics(read_metrics(self.path), self.plot_path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class InputTimer:
  """How long the loop waited for its batches, and the input throughput.

  The loop calls `waited(seconds)` with the time it blocked on each batch
  (reading it and placing it on the devices) and `read(step)` at each logged
  step, which covers the steps since the previous `read` (the first interval
  starts at construction, so it includes compilation).
  """

  def __init__(
    self,
    global_batch: int,
    step: int,
    clock: Callable[[], float] = time.perf_counter,
  ):
    self._batch = global_batch
    self._clock = clock
    self._since = (step, clock())
    self._wait = 0.0
    self.fraction: Optional[float] = None  # of the last interval read

  def waited(self, seconds: float) -> None:
    self._wait += seconds

  def restart(self, step: int) -> None:
    """Starts a new interval at `step` (e.g. after an evaluation)."""
    self._since = (step, self._clock())
    self._wait = 0.0

  def read(self, step: int) -> Dict[str, float]:
    """Timings of the steps since the previous read, up to `step`.

    Returns:
      'data_wait_s': mean seconds per step spent waiting for the batch;
      'data_wait_fraction': that waiting over the wall time, in [0, 1];
      'examples_per_s': training examples consumed per second.
    """
    now = self._clock()
    first, start = self._since
    steps = max(step - first, 1)
    elapsed = max(now - start, 1e-9)
    self.fraction = min(self._wait / elapsed, 1.0)
    out = {
      'data_wait_s': self._wait / steps,
      'data_wait_fraction': self.fraction,
      'examples_per_s': steps * self._batch / elapsed,
    }
    self._since = (step, now)
    self._wait = 0.0
    return out


class RunTimer:
  """Where a run's wall time went, for its goodput.

  The loop adds the seconds it spends compiling, checkpointing, evaluating
  and waiting for batches (`add`), and marks when its steps begin and end
  (`start_steps`, `end_steps`). `read()` gives the totals so far as 'time/<name>_s',
  'time/wall_s' (since construction: set-up, restore and initialisation
  included), 'time/steps_s' (the time since `start_steps` less the other
  activities: running training steps) and 'perf/goodput' (steps over
  wall, in [0, 1]).
  """

  ACTIVITIES = ('compile', 'checkpoint', 'eval', 'data_wait')

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._start = clock()
    self._steps_start: Optional[float] = None
    self._steps_end: Optional[float] = None
    self._before_steps = 0.0  # activity time before start_steps
    self._steps_inside = 0.0  # activity time from start to end_steps
    self.totals = {name: 0.0 for name in self.ACTIVITIES}

  def start_steps(self) -> None:
    self._steps_start = self._clock()
    self._before_steps = sum(self.totals.values())

  def end_steps(self) -> None:
    """Freezes the step time: what follows (final evaluation, plots) is
    not training. The activities inside [start, end] are subtracted."""
    if self._steps_start is None:
      raise ValueError('end_steps: expected a start_steps() first.')
    self._steps_end = self._clock()
    self._steps_inside = sum(self.totals.values()) - self._before_steps

  def add(self, name: str, seconds: float) -> None:
    if name not in self.totals:
      raise ValueError(
        f'name: expected one of {self.ACTIVITIES}, got {name!r}.'
      )
    self.totals[name] += seconds

  @contextlib.contextmanager
  def timing(self, name: str):
    """Adds the time spent in the `with` block to `name`."""
    start = self._clock()
    try:
      yield
    finally:
      self.add(name, self._clock() - start)

  def read(self) -> Dict[str, float]:
    now = self._clock()
    wall = max(now - self._start, 1e-9)
    steps = 0.0
    if self._steps_end is not None:
      steps = self._steps_end - self._steps_start - self._steps_inside
    elif self._steps_start is not None:
      inside = sum(self.totals.values()) - self._before_steps
      steps = now - self._steps_start - inside
    steps = max(steps, 0.0)
    out = {f'time/{k}_s': v for k, v in self.totals.items()}
    out.update(
      {
        'time/wall_s': wall,
        'time/steps_s': steps,
        'perf/goodput': min(steps / wall, 1.0),
      }
    )
    return out


def read_metrics(path: str) -> List[dict]:
  """The records of a metrics.jsonl file (a torn last line is skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def plot_metrics(records: List[dict], path: str) -> None:
  """One panel per metric name, value against step; written atomically."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = sorted({k for r in records for k in r if k != 'step'})
  names = [n for n in names if n not in ('finite',)]
  if not names:
    return
  cols = min(3, len(names))
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(
    rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False
  )
  for ax, name in zip(axes.flat, names):
    pts = [(r['step'], r[name]) for r in records if name in r]
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker='.' if len(xs) < 30 else None)
    ax.set_title(name)
    ax.set_xlabel('step')
    if name == 'loss' and all(y > 0 for y in ys):
      ax.set_yscale('log')
  for ax in list(axes.flat)[len(names) :]:
    ax.axis('off')
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=80)
  plt.close(fig)
  os.replace(tmp, path)
