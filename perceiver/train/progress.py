"""A one-line terminal progress bar: step, loss, steps/s, ETA, utilisation,
data wait."""

import sys
import time
from typing import Optional, TextIO


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h:d}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


INPUT_BOUND = 0.5  # fraction of the wall time spent waiting for batches


class ProgressBar:
  """Redraws `[####....] step 120/1000 loss 0.4321 12.3 steps/s ETA 01:11`.

  After `perf(tflops, mfu)` the line also shows the achieved TFLOP/s per
  device and, where the chip's peak is known, the MFU (e.g. `41.2 TFLOP/s
  MFU 21%`).

  When the loop spends at least `INPUT_BOUND` of its time waiting for
  batches, the line ends with e.g. `data wait 63% (input-bound)`: the input
  pipeline, not the model, sets the pace (more `data.worker_count` helps).

  On a terminal the line is redrawn in place; otherwise (logs, CI) a full
  line is printed at most every `min_interval_s` seconds. The rate is
  measured from the first reported step on, so compilation time does not
  distort it.
  """

  def __init__(
    self,
    total_steps: int,
    *,
    enabled: bool = True,
    stream: Optional[TextIO] = None,
    width: int = 24,
    min_interval_s: float = 0.2,
  ):
    self.total = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self.width = width
    self._tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self._min_interval = min_interval_s if self._tty else 10.0
    self._ref: Optional[tuple] = None  # (step, time) of the first update
    self._last_draw = 0.0
    self._perf = ''

  def perf(self, tflops: Optional[float], mfu: Optional[float]) -> None:
    """Sets the utilisation shown from now on (None: not shown)."""
    self._perf = '' if tflops is None else f' {tflops:.3g} TFLOP/s'
    if tflops is not None and mfu is not None:
      self._perf += f' MFU {mfu:.0%}'

  def line(
    self,
    step: int,
    loss: Optional[float],
    now: float,
    data_wait: Optional[float] = None,
  ) -> str:
    if self._ref is None:
      self._ref = (step, now)
    done = step - self._ref[0]
    rate = done / (now - self._ref[1]) if done > 0 else float('nan')
    eta = (self.total - step) / rate if rate > 0 else float('nan')
    filled = int(self.width * step / max(self.total, 1))
    bar = '#' * filled + '.' * (self.width - filled)
    loss_str = 'loss n/a' if loss is None else f'loss {loss:.4f}'
    eta_str = _duration(eta) if eta == eta else '--:--'
    rate_str = f'{rate:.2f}' if rate == rate else '--'
    wait_str = ''
    if data_wait is not None and data_wait >= INPUT_BOUND:
      wait_str = f' data wait {data_wait:.0%} (input-bound)'
    return (
      f'[{bar}] step {step}/{self.total} {loss_str} '
      f'{rate_str} steps/s ETA {eta_str}{self._perf}{wait_str}'
    )

  def update(
    self,
    step: int,
    loss: Optional[float],
    force: bool = False,
    data_wait: Optional[float] = None,
  ):
    """Redraws the line; `data_wait` is the fraction of time spent waiting
    for batches (see `metrics.InputTimer`)."""
    if not self.enabled:
      return
    now = time.time()
    if self._ref is None:
      self._ref = (step, now)
    if not force and now - self._last_draw < self._min_interval:
      return
    self._last_draw = now
    text = self.line(step, loss, now, data_wait)
    if self._tty:
      self.stream.write('\r' + text + '\x1b[K')
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def close(self):
    if self.enabled and self._tty:
      self.stream.write('\n')
      self.stream.flush()
