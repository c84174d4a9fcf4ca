"""Evaluators: what a task measures, declared by the experiment, run by the engine.

Shapes: B global evaluation batch, b = B/P rows per process, N real
examples in all.

An experiment lists its evaluations as `Task.evaluators`, each a named
`Evaluator` of one of three kinds:

- batches (`data` and `predict`): the engine jits `predict(outputs, batch)
  -> {name: [B, ...]}` after the model's forward pass (`is_training=False`,
  the run's precision), with the parameter and batch shardings of the train
  step, runs it on every batch of `data()` (this process's rows, padded with
  the engine's `data.EVAL_MASK`), gathers every process's rows (`gather`),
  drops the padding rows and hands the whole set's rows, host numpy
  [N, ...], to `reduce`;
- custom (`run`): `run(params, state) -> rows`, with the parameters copied
  to this process (each process runs the same computation), for
  evaluations that are not a pass over batches (flow's tiled full-frame
  evaluation); the rows are whatever `reduce`, `report` and `artifacts`
  take;
- combined (`combine`): `combine(metrics)` from the metrics of the
  evaluators listed before it (GLUE's average over its tasks).

Then `reduce(rows) -> {metric: float}` (every process), `report(metrics,
rows) -> str` (printed by process 0) and `artifacts(metrics, rows,
workdir)` (files written by process 0). The metrics are logged by the loop
(metrics.jsonl, TensorBoard, result.json) as `eval/<name>/<metric>`, or
`eval/<metric>` for an evaluator named ''. They run every `eval_every`
steps and at the end, in the order listed. Big_vision's `evaluators/`
(one object per evaluation, `run(train_state)` yielding (name, value)) is
the model; here the engine, not each evaluator, does the jit, the
sharding, the padding and the gather.

Where metrics live: a metric whose definition is a benchmark's own (GLUE's
accuracy / F1 / MCC / Pearson in `experiments/data/glue.py`, flow's EPE and
KITTI's Fl-all in `experiments/data/flow_metrics.py`) sits beside that
benchmark's reader; a metric any task may use sits here: `mean_rows` (the
default `reduce`), `psnr` (per example, in a `predict`) and
`mean_average_precision` (a multi-label `reduce` over the whole set).
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import haiku as hk
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from perceiver.train import distributed
from perceiver.train import mesh as mesh_lib
from perceiver.train import step as step_lib
from perceiver.train.data import EVAL_MASK

Rows = Dict[str, np.ndarray]
Metrics = Dict[str, float]


def mean_rows(rows: Mapping[str, np.ndarray]) -> Metrics:
  """{name: mean over the examples} of rows {name: [N]} (the default
  `Evaluator.reduce`)."""
  return {k: float(np.mean(v)) for k, v in rows.items()}


def psnr(mse: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio in dB of a mean squared error, peak value 1.

  10 log10(1 / MSE), for signals whose peak is 1: pixels in [0, 1], audio
  in [-1, 1] full scale (Perceiver IO Sec. 4.3, Table 4). The MSE is
  floored at 1e-10, so a perfect reconstruction scores 100 dB, not inf.
  Elementwise, jittable (a `predict` computes it per example).

  Args:
    mse: float array of mean squared errors, any shape.

  Returns:
    float array of the same shape (dB).
  """
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Mean over classes of average precision (multi-label; AudioSet's mAP).

  Per class, AP = sum over thresholds of precision x the gain in recall,
  the thresholds being the distinct scores, high to low (examples with
  tied scores are counted together): sklearn's `average_precision_score`,
  the AudioSet metric of Perceiver IO App. C. Host numpy, for a `reduce`
  over the whole evaluation set.

  Args:
    scores: float [N, C] (higher = more likely).
    labels: {0, 1} (or bool) [N, C].

  Returns:
    The mean AP over the classes with at least one positive (classes without
    positives have no AP and are left out).

  Raises:
    ValueError: shapes differ or are not [N, C], or no class has a positive.
  """
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
  if scores.shape != labels.shape or scores.ndim != 2:
    raise ValueError(
      f'scores, labels: expected equal [N, C] shapes, got '
      f'{scores.shape} and {labels.shape}.'
    )
  has = labels.any(axis=0)
  if not has.any():
    raise ValueError('labels: expected a class with a positive, got none.')
  aps = []
  for c in np.flatnonzero(has):
    order = np.argsort(-scores[:, c], kind='stable')
    s, y = scores[order, c], labels[order, c]
    # Tied scores form one threshold: count them together.
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1
    precision = tp / seen
    recall_gain = np.diff(np.r_[0, tp]) / y.sum()
    aps.append(np.sum(precision * recall_gain))
  return float(np.mean(aps))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
  """One named evaluation of a task (see the module docstring).

  Attributes:
    name: the evaluator's name: its metrics are logged as
      `eval/<name>/<metric>` ('': `eval/<metric>`).
    data: batches kind: `() -> iterable` of a fresh pass over this
      process's rows [b, ...] of the evaluation batches, each with the
      engine's float32 `data.EVAL_MASK` entry (`data.eval_batches`).
    predict: batches kind: `(outputs, batch) -> {name: [B, ...] array}`,
      jittable; `outputs` is the model's `forward.apply(...)[0]` on the
      batch (without `EVAL_MASK`).
    samples: entries of `predict` kept for the first batch only (its real
      rows): large outputs that only `report` and `artifacts` see (a
      reconstruction); `reduce` gets the other entries. Later batches do
      not compute, transfer or gather them.
    run: custom kind: `(params, state) -> rows`, the parameters and model
      state copied to this process.
    combine: combined kind: `({'<name>/<metric>' or '<metric>': float}) ->
      {metric: float}` from the evaluators listed before this one; its
      `reduce` is not used.
    reduce: `(rows) -> {metric: float}` over the whole set (host numpy),
      on every process. Default: `mean_rows`.
    report: `(metrics, rows) -> str`, printed by process 0. Default: one
      line `<name>: <metric> <value>, ...`.
    artifacts: `(metrics, rows, workdir) -> None`, files process 0 writes
      (the workdir exists). None: no files.

  Raises:
    ValueError: no name string, or not exactly one kind (`data` with
      `predict`, `run`, or `combine`).
  """

  name: str
  data: Optional[Callable[[], Iterable[Dict[str, np.ndarray]]]] = None
  predict: Optional[Callable[[Any, Any], Dict[str, jax.Array]]] = None
  samples: Sequence[str] = ()
  run: Optional[Callable[[Any, Any], Any]] = None
  combine: Optional[Callable[[Metrics], Metrics]] = None
  reduce: Callable[[Any], Metrics] = mean_rows
  report: Optional[Callable[[Metrics, Any], str]] = None
  artifacts: Optional[Callable[[Metrics, Any, str], None]] = None

  def __post_init__(self):
    if not isinstance(self.name, str):
      raise ValueError(f'Evaluator.name: expected a string, got {self.name!r}.')
    kinds = [
      kind
      for kind, given in (
        ('data and predict', self.data is not None or self.predict is not None),
        ('run', self.run is not None),
        ('combine', self.combine is not None),
      )
      if given
    ]
    if len(kinds) != 1 or (
      kinds == ['data and predict']
      and (self.data is None or self.predict is None)
    ):
      raise ValueError(
        f'Evaluator {self.name!r}: expected exactly one of data and '
        f'predict (both), run, or combine; got {kinds or "none"} '
        f'(data {"set" if self.data else "None"}, predict '
        f'{"set" if self.predict else "None"}).'
      )
    if self.samples and self.predict is None:
      raise ValueError(
        f'Evaluator {self.name!r}: samples {list(self.samples)} need the '
        'batches kind (data and predict).'
      )


def metric_name(evaluator: Evaluator, metric: str) -> str:
  """The logged name of `evaluator`'s `metric`: 'eval/<name>/<metric>', or
  'eval/<metric>' for the evaluator named ''."""
  return (
    f'eval/{evaluator.name}/{metric}' if evaluator.name else f'eval/{metric}'
  )


def gather(tree: Any) -> Any:
  """Host numpy copy of every (global) array of `tree`, on every process.

  The one multi-host gather of the engine: a batch-sharded array becomes
  its global value [B, ...] (process 0's rows first), a sharded parameter
  its full value. With one process, `jax.device_get`.
  """
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _default_report(evaluator: Evaluator, metrics: Metrics, rows) -> str:
  del rows
  shown = ', '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
  return f'{evaluator.name or "eval"}: {shown}'


def predict_step(
  forward: hk.TransformedWithState,
  predict: Callable[[Any, Any], Dict[str, jax.Array]],
  precision: Optional[str] = None,
  drop: Sequence[str] = (),
) -> Callable:
  """The evaluation step of a batches-kind evaluator, un-jitted.

  `(params, state, batch) -> (rows, mask)`: the model's forward pass
  (`is_training=False`, no rng) in the run's precision on the batch without
  its `data.EVAL_MASK` entry, then `predict(outputs, batch)` less the
  entries named in `drop`; `mask` is the batch's float32 [B] padding mask
  (1 real, 0 padding). `Runner` jits it with the train step's shardings and
  `aot.compile_report` compiles it for a TPU slice.

  Raises:
    KeyError: (when traced) a batch without the `EVAL_MASK` entry.
  """
  policy = step_lib.make_policy(precision)

  def step(params, model_state, batch):
    batch = dict(batch)
    mask = batch.pop(EVAL_MASK)
    outputs, _ = forward.apply(
      policy.cast_to_compute(params),
      model_state,
      None,
      policy.cast_to_compute(batch),
      is_training=False,
    )
    rows = predict(policy.cast_to_output(outputs), batch)
    return {k: v for k, v in rows.items() if k not in drop}, mask

  return step


class Runner:
  """Runs a task's evaluators for the loop (or on its own).

  Args:
    evaluators: the task's `Evaluator`s, in order.
    forward: the task's model (`forward.apply(params, state, rng, batch,
      is_training=False) -> (outputs, state)`).
    precision: the run's mixed-precision policy (`step.make_policy`).
    mesh: the run's ('data', 'fsdp') mesh; batches are split over every
      device of it.
    param_shardings, state_shardings: the trees of `NamedSharding`s of the
      parameters and model state (the train step's); None: replicated.

  Raises:
    ValueError: two evaluators with one name.
  """

  def __init__(
    self,
    evaluators: Sequence[Evaluator],
    forward: hk.TransformedWithState,
    *,
    precision: Optional[str],
    mesh,
    param_shardings: Any = None,
    state_shardings: Any = None,
  ):
    names = [e.name for e in evaluators]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
      raise ValueError(
        f'task.evaluators: expected distinct names, got {repeated} more '
        'than once.'
      )
    self.evaluators = tuple(evaluators)
    self._forward = forward
    self._precision = precision
    self._mesh = mesh
    replicated = mesh_lib.replicated(mesh)
    self._in_shardings = (
      replicated if param_shardings is None else param_shardings,
      replicated if state_shardings is None else state_shardings,
      mesh_lib.batch_sharding(mesh),
    )
    self._jitted: Dict[tuple, Callable] = {}
    self._checked: set = set()

  def _step(self, evaluator: Evaluator, drop: Sequence[str]) -> Callable:
    """The jitted `predict_step` of `evaluator`, less `drop` (its
    un-jitted function is its `__wrapped__`). Keyed by the `predict`
    function, so evaluators sharing one (GLUE's nine dev splits) share one
    compiled step per batch shape."""
    key = (evaluator.predict, tuple(drop))
    if key not in self._jitted:
      self._jitted[key] = jax.jit(
        predict_step(
          self._forward, evaluator.predict, self._precision, drop=drop
        ),
        in_shardings=self._in_shardings,
        out_shardings=mesh_lib.batch_sharding(self._mesh),
      )
    return self._jitted[key]

  def rows(self, evaluator: Evaluator, params, state) -> Rows:
    """The whole set's rows of a batches-kind evaluator, every process's
    rows in batch order (within a batch process 0's first), padding rows
    removed; `samples` entries of the first batch only.

    Raises:
      ValueError: a batch without the `EVAL_MASK` entry, no batches, or a
        `predict` entry without the batch's leading size.
    """
    pieces: Dict[str, list] = {}
    first = True
    for local in evaluator.data():
      if EVAL_MASK not in local:
        raise ValueError(
          f"Evaluator {evaluator.name!r}: data: expected the engine's "
          f'{EVAL_MASK!r} entry (padding mask) in every batch, got keys '
          f'{sorted(local)}.'
        )
      batch = mesh_lib.global_batch(local, self._mesh)
      step = self._step(evaluator, () if first else evaluator.samples)
      if first:  # once per `predict` and batch shapes
        leaves, tree = jax.tree.flatten(batch)
        signature = (
          evaluator.predict,
          tree,
          tuple((x.shape, x.dtype) for x in leaves),
        )
        if signature not in self._checked:
          self._check_shapes(evaluator, step, params, state, batch)
          self._checked.add(signature)
      out, mask = gather(step(params, state, batch))
      keep = np.asarray(mask) > 0
      for k, v in out.items():
        pieces.setdefault(k, []).append(np.asarray(v)[keep])
      first = False
    if first:
      raise ValueError(
        f'Evaluator {evaluator.name!r}: data: expected at least one batch, '
        'got none.'
      )
    return {k: np.concatenate(v) for k, v in pieces.items()}

  def _check_shapes(self, evaluator, step, params, state, batch) -> None:
    rows, mask = jax.eval_shape(step.__wrapped__, params, state, batch)
    for k, v in rows.items():
      if v.shape[:1] != mask.shape:
        raise ValueError(
          f'Evaluator {evaluator.name!r}: predict: expected [B, ...] '
          f'arrays (B = {mask.shape[0]}, the global batch), got {k!r} of '
          f'shape {list(v.shape)}.'
        )

  def __call__(self, params, state, workdir: Optional[str]) -> Metrics:
    """Runs every evaluator; reports, writes artifacts (process 0).

    Args:
      params, state: the model's (global, possibly sharded) parameters and
        state.
      workdir: where `artifacts` write (None: no files).

    Returns:
      {'eval/<name>/<metric>' or 'eval/<metric>': float}.

    Raises:
      ValueError: an evaluator returned a name already logged, or a value
        that is not a real scalar.
    """
    results: Metrics = {}
    local = None
    for evaluator in self.evaluators:
      if evaluator.combine is not None:
        rows = None
        metrics = evaluator.combine(
          {k[len('eval/') :]: v for k, v in results.items()}
        )
      elif evaluator.run is not None:
        if local is None:  # one copy for every custom evaluator
          local = (
            jax.device_put(gather((params, state)))
            if jax.process_count() > 1
            else (params, state)
          )
        rows = evaluator.run(*local)
        metrics = evaluator.reduce(rows)
      else:
        rows = self.rows(evaluator, params, state)
        metrics = evaluator.reduce(
          {k: v for k, v in rows.items() if k not in evaluator.samples}
        )
      for k, v in metrics.items():
        name = metric_name(evaluator, k)
        if name in results:
          raise ValueError(
            f'Evaluator {evaluator.name!r}: returned {k!r}, logged as '
            f'{name!r}, a name another evaluation already has.'
          )
        if np.ndim(v) or not np.isrealobj(v):
          raise ValueError(
            f'Evaluator {evaluator.name!r}: expected real scalars, got '
            f'{k}={v!r}.'
          )
        results[name] = float(v)
      metrics = {k: float(v) for k, v in metrics.items()}
      report = evaluator.report or (
        lambda m, r, e=evaluator: _default_report(e, m, r)
      )
      text = report(metrics, rows)
      if text:
        distributed.say(text)
      if (
        evaluator.artifacts is not None and workdir and jax.process_index() == 0
      ):
        os.makedirs(workdir, exist_ok=True)
        evaluator.artifacts(metrics, rows, workdir)
    return results
